"""Tests of `andor_jax.attacks`: the threat model is respected, the analytic optimum is reached on linear
classifiers, EOT reduces to the plain attack, iterative attacks dominate FGSM, and bad inputs are refused.

Compilation dominates the run time, so the tests share a few models, one batch shape and the `FAST`
settings: most attacks compile once for the whole file (eps and the domain are traced, not static).
"""
from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from andor_jax import attacks
from andor_jax.attacks import common, compaction, losses, oracle
from conftest import trained_blob_mlp

# the package exports the attack functions under their modules' names, so reach the modules explicitly
apgd_module = importlib.import_module("andor_jax.attacks.apgd")
square_module = importlib.import_module("andor_jax.attacks.square")

DIM, CLASSES, BATCH = 16, 4, 6
DOMAINS = ((0.0, 1.0), (-1.0, 1.0))

# Cheap settings; on a linear model they still reach the optimum (3 sign steps of 2.5 eps / 3 cross the ball).
FAST = {
    "ifgsm": {"steps": 3},
    "pgd": {"steps": 3, "restarts": 2},
    "pgd-l2": {"steps": 3, "restarts": 2},
    "pgd-margin": {"steps": 3, "restarts": 2},
    "pgd-adadelta": {"steps": 3, "restarts": 2, "loss": "squared"},
    "pgd-fontana": {"steps": 3},
    "apgd-ce": {"steps": 6, "restarts": 2},
    "apgd-dlr": {"steps": 6},
    "deepfool": {"max_iter": 4},
    "deepfool-l2": {"max_iter": 4},
    "square": {"n_queries": 12},
    "apgd-t": {"steps": 6, "targets": 2},
    "pgd-t": {"steps": 3, "targets": 2},
    "fab-t": {"steps": 4, "targets": 2},
}
VARIANTS = [(name, FAST.get(name, {})) for name in attacks.ATTACKS] + [("apgd-ce", {"steps": 6, "norm": "l2"})]


def _linear(kernel, bias):
    return lambda x: x @ kernel + bias


def _margins(logits, y):
    """``z_y - z_k`` for every class k, (batch, classes)."""
    return jnp.take_along_axis(logits, y[:, None], axis=-1) - logits


def _distance(x_adv, x, norm):
    return np.asarray(common.per_example_norm(x_adv - x, norm))


def _interior_inputs(seed=1, jitter=0.01):
    return 0.5 + jax.random.uniform(jax.random.PRNGKey(seed), (BATCH, DIM), minval=-jitter, maxval=jitter)


# A multi-class linear model built so that, for label 0 at inputs near 0.5, the runner-up class 1 also has
# the largest ||w_0 - w_k||_1: attacking class 1 is then the L-inf worst case, min_k margin - eps ||w_0 - w_k||_1.
_MULTI_KERNEL = jax.random.normal(jax.random.PRNGKey(0), (DIM, CLASSES)) * jnp.array([0.0, 2.0, 0.5, 0.5])
_MULTI_BIAS = -(0.5 * _MULTI_KERNEL.sum(axis=0)) - jnp.array([0.0, 1.0, 4.0, 4.0])  # margins 1, 4, 4 at x = 0.5
MULTI_NET = _linear(_MULTI_KERNEL, _MULTI_BIAS)
MULTI_L1 = np.abs(np.asarray(_MULTI_KERNEL[:, :1] - _MULTI_KERNEL)).sum(axis=0)

# A two-class linear model: z_0 - z_1 = x . BINARY_DIRECTION.
_BINARY_KERNEL = jax.random.normal(jax.random.PRNGKey(2), (DIM, 2))
BINARY_NET = _linear(_BINARY_KERNEL, jnp.zeros(2))
BINARY_DIRECTION = _BINARY_KERNEL[:, 0] - _BINARY_KERNEL[:, 1]


def _binary_inputs(margin):
    """Interior inputs of `BINARY_NET` at ``z_y - z_other = margin``, and their labels."""
    y = jnp.arange(BATCH) % 2
    x = _interior_inputs()
    d = BINARY_DIRECTION
    x = x + ((jnp.where(y == 0, margin, -margin) - x @ d) / jnp.dot(d, d))[:, None] * d[None]
    assert np.all((x > 0.2) & (x < 0.8)), "test inputs must stay interior"
    return x, y


def _norm_of(name, overrides):
    spec = attacks.ATTACKS[name]
    return overrides.get("norm", attacks.settings_of(name).get("norm", spec.norm))


# ---------------------------------------------------------------------------------------------------------
# Every point stays inside the eps-ball intersected with the domain.

@pytest.mark.parametrize("name, overrides", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
@settings(max_examples=3, deadline=None)
@given(domain_index=st.integers(0, 1), eps_fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_attacks_stay_in_ball_and_domain(name, overrides, domain_index, eps_fraction, seed):
    lo, hi = DOMAINS[domain_index]
    norm = _norm_of(name, overrides)
    eps = eps_fraction * (hi - lo) * (1.0 if norm == "linf" else 2.0)
    x_key, y_key, attack_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.uniform(x_key, (BATCH, DIM), minval=lo, maxval=hi)
    x = x.at[0].set(lo).at[1].set(hi)  # inputs on the domain's faces, where clipping matters
    y = jax.random.randint(y_key, (BATCH,), 0, CLASSES)
    result = attacks.run_attack(name, MULTI_NET, x, y, attack_key, eps, (lo, hi), **overrides)
    x_adv = np.asarray(result.x_adv)
    assert x_adv.shape == x.shape and result.broken.shape == (BATCH,) and result.broken.dtype == bool
    assert np.all(x_adv >= lo) and np.all(x_adv <= hi)
    assert np.all(_distance(result.x_adv, x, norm) <= eps * (1 + 1e-5) + 1e-6)
    misclassified = np.asarray(jnp.argmax(MULTI_NET(result.x_adv), -1) != y)
    assert np.all(misclassified[np.asarray(result.broken)]), "a broken example's x_adv must be misclassified"


# ---------------------------------------------------------------------------------------------------------
# Linear classifiers: the analytic worst case.

@pytest.mark.parametrize("name, overrides, norm", [
    ("fgsm", {}, "linf"),
    ("pgd", FAST["pgd"], "linf"),
    ("pgd", {"steps": 100, "restarts": 1, "step_rule": "adadelta", "random_start": False}, "linf"),
    ("fgm", {}, "l2"),
    ("pgd-l2", {**FAST["pgd-l2"], "random_start": False}, "l2"),
])
def test_binary_linear_worst_case(name, overrides, norm):
    """The margin falls by exactly eps ||w_0 - w_1||_1 (L-inf) or eps ||w_0 - w_1||_2 (L2)."""
    x, y = _binary_inputs(margin=1.0)
    dual = float(common.per_example_norm(BINARY_DIRECTION[None], "l1" if norm == "linf" else "l2")[0])
    eps = 0.5 / dual  # the worst case stays correctly classified, so x_adv is the attack's final point
    result = attacks.run_attack(name, BINARY_NET, x, y, jax.random.PRNGKey(3), eps, (0.0, 1.0), **overrides)
    margin = np.asarray(_margins(BINARY_NET(result.x_adv), y).sum(axis=1))  # z_y - z_other
    np.testing.assert_allclose(margin, 0.5, atol=1e-4)
    assert not result.broken.any()


@pytest.mark.parametrize("name, overrides", [
    ("fgsm", {"loss": "margin"}),
    ("pgd-margin", FAST["pgd-margin"]),
    ("apgd-dlr", FAST["apgd-dlr"]),
])
def test_multiclass_linear_worst_case(name, overrides):
    x, y = _interior_inputs(jitter=0.02), jnp.zeros(BATCH, jnp.int32)
    eps = 0.5 / MULTI_L1[1]
    clean = np.asarray(_margins(MULTI_NET(x), y))[:, 1:]
    analytic = clean - eps * MULTI_L1[1:]
    assert np.all(analytic > 0) and np.all(np.argmin(analytic, axis=1) == 0), "class 1 must be the worst case"
    result = attacks.run_attack(name, MULTI_NET, x, y, jax.random.PRNGKey(5), eps, (0.0, 1.0), **overrides)
    reached = np.asarray(_margins(MULTI_NET(result.x_adv), y))[:, 1:].min(axis=1)
    np.testing.assert_allclose(reached, analytic.min(axis=1), atol=1e-4)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_deepfool_lands_just_beyond_the_nearest_boundary(norm):
    """One linearisation is exact on a linear model: DeepFool steps to the nearest boundary, at distance
    min_k margin_k / ||w_0 - w_k||_q (q the dual norm), overshoots it by 2%, and stops."""
    x, y = _interior_inputs(jitter=0.02), jnp.zeros(BATCH, jnp.int32)
    clean = np.asarray(_margins(MULTI_NET(x), y))[:, 1:]
    w = np.asarray(_MULTI_KERNEL[:, :1] - _MULTI_KERNEL)[:, 1:]
    dual = np.abs(w).sum(axis=0) if norm == "linf" else np.linalg.norm(w, axis=0)
    distance = np.min(clean / dual, axis=1)
    name = "deepfool" if norm == "linf" else "deepfool-l2"
    result = attacks.run_attack(name, MULTI_NET, x, y, jax.random.PRNGKey(0), 1.0, (0.0, 1.0), **FAST[name])
    assert result.broken.all()
    np.testing.assert_allclose(_distance(result.x_adv, x, norm), 1.02 * (distance + 1e-4), rtol=1e-3)
    margin = np.asarray(_margins(MULTI_NET(result.x_adv), y))[:, 1:].min(axis=1)
    assert np.all(margin < 0) and np.all(margin > -0.03 * clean.min(axis=1) - 1e-3), "just beyond the boundary"


def test_deepfool_clips_to_the_ball_and_leaves_misclassified_inputs_alone():
    x, y = _interior_inputs(jitter=0.02), jnp.zeros(BATCH, jnp.int32)
    small = attacks.run_attack("deepfool", MULTI_NET, x, y, jax.random.PRNGKey(0), 0.001, (0.0, 1.0),
                               **FAST["deepfool"])
    assert not small.broken.any()
    np.testing.assert_allclose(_distance(small.x_adv, x, "linf"), 0.001, rtol=1e-3)
    wrong = attacks.run_attack("deepfool", MULTI_NET, x, y + 1, jax.random.PRNGKey(0), 0.3, (0.0, 1.0),
                               **FAST["deepfool"])
    assert wrong.broken.all()
    np.testing.assert_array_equal(wrong.x_adv, x)


def test_clean_errors_count_as_broken():
    x, y = _interior_inputs(jitter=0.02), jnp.ones(BATCH, jnp.int32)
    for name in ("fgsm", "pgd", "apgd-ce", "square"):
        result = attacks.run_attack(name, MULTI_NET, x, y, jax.random.PRNGKey(0), 0.0, (0.0, 1.0),
                                    **FAST.get(name, {}))
        assert result.broken.all(), name


# ---------------------------------------------------------------------------------------------------------
# EOT.

@pytest.mark.parametrize("name", ["pgd", "deepfool"])
def test_eot_with_one_draw_equals_the_plain_attack(name):
    x, y = _interior_inputs(jitter=0.3), jnp.arange(BATCH) % CLASSES
    key = jax.random.PRNGKey(7)
    spec = attacks.ATTACKS[name]
    settings_ = attacks.settings_of(name, **FAST[name])
    plain = spec.fn(MULTI_NET, x, y, key, eps=0.2, **settings_)
    fixed = attacks.eot(spec.fn, n_draws=1)(lambda inputs, draw_key: MULTI_NET(inputs), x, y, key, eps=0.2,
                                            **settings_)
    np.testing.assert_allclose(fixed.x_adv, plain.x_adv, atol=1e-6)
    np.testing.assert_array_equal(fixed.broken, plain.broken)


def _noisy_net(x, key):
    return MULTI_NET(x + 0.1 * jax.random.normal(key, x.shape))


def test_eot_averages_per_draw_gradients():
    x, y = _interior_inputs(jitter=0.3), jnp.arange(BATCH) % CLASSES
    key = jax.random.PRNGKey(2)
    query = jax.jit(lambda x, key: oracle.randomised(_noisy_net, 4).loss_and_grad(losses.cross_entropy, x, y, key))
    _, mean_loss, mean_grad = query(x, key)
    one_draw = jax.jit(jax.grad(lambda v, k: losses.cross_entropy(_noisy_net(v, k), y).sum()))
    per_draw = [one_draw(x, k) for k in jax.random.split(key, 4)]
    np.testing.assert_allclose(mean_grad, np.mean(per_draw, axis=0), rtol=1e-5, atol=1e-6)
    assert mean_loss.shape == (BATCH,)


def test_eot_decides_by_the_first_draw_of_the_real_forward():
    x, y = _interior_inputs(jitter=0.3), jnp.arange(BATCH) % CLASSES
    key = jax.random.PRNGKey(4)
    first = jax.random.split(key, 5)[0]
    smooth = lambda inputs, k: MULTI_NET(inputs)  # a surrogate gradient: the noiseless network
    for gradient_fn in (None, smooth):
        eot_oracle = oracle.randomised(_noisy_net, 5, gradient_fn)
        expected = _noisy_net(x, first)
        np.testing.assert_allclose(eot_oracle.logits(x, key), expected, rtol=1e-6)
        logits, losses_, _ = eot_oracle.loss_and_grad(losses.cross_entropy, x, y, key)
        np.testing.assert_allclose(logits, expected, rtol=1e-6)
        decision, linearised, _ = eot_oracle.logits_and_jacobian(x, key)
        np.testing.assert_allclose(decision, expected, rtol=1e-6)
        if gradient_fn is not None:  # the losses and the linearisation are the surrogate's, which is followed
            np.testing.assert_allclose(losses_, losses.cross_entropy(MULTI_NET(x), y), rtol=1e-6)
            np.testing.assert_allclose(linearised, MULTI_NET(x), rtol=1e-6)


def test_eot_with_a_surrogate_runs_the_real_forward_once_per_query():
    """The decision's forward (CARSO: a vote of 1,500 draws) must not be repeated for every EOT draw: the
    compiled query's FLOPs grow with the draws by the surrogate's gradient only."""
    width = 256
    kernels = jax.random.normal(jax.random.PRNGKey(0), (8, width, width)) / width ** 0.5
    head = jax.random.normal(jax.random.PRNGKey(1), (width, CLASSES))

    def expensive(inputs, k):  # eight 256 x 256 layers per forward
        h = jnp.tile(inputs, width // DIM) + 0.1 * jax.random.normal(k, (inputs.shape[0], width))
        for kernel in kernels:
            h = jnp.tanh(h @ kernel)
        return h @ head

    x, y = _interior_inputs(jitter=0.3), jnp.arange(BATCH) % CLASSES

    def flops(n_draws):
        query = oracle.randomised(expensive, n_draws, lambda inputs, k: MULTI_NET(inputs))
        compiled = jax.jit(lambda v, k: query.loss_and_grad(losses.cross_entropy, v, y, k)).lower(
            x, jax.random.PRNGKey(0)).compile()
        analysis = compiled.cost_analysis()
        return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]

    forward = 2 * BATCH * width * width * len(kernels)
    assert flops(1) >= forward
    assert flops(16) - flops(1) < 0.1 * forward


def test_eot_attack_on_a_randomised_model_stays_in_the_ball():
    x, y = _interior_inputs(jitter=0.3), jnp.arange(BATCH) % CLASSES
    result = attacks.eot(attacks.pgd, n_draws=3)(_noisy_net, x, y, jax.random.PRNGKey(0), eps=0.1, **FAST["pgd"])
    assert np.all(_distance(result.x_adv, x, "linf") <= 0.1 + 1e-6)


# ---------------------------------------------------------------------------------------------------------
# A small trained network: iterative attacks dominate FGSM.

TRAINED_EPS = 0.08
TRAINED_RUNS = {  # label: (attack, overrides)
    "fgsm": ("fgsm", {}),
    "pgd": ("pgd", {"steps": 20, "restarts": 3}),
    "apgd-ce": ("apgd-ce", {"steps": 20, "restarts": 3}),
}


@pytest.fixture(scope="module")
def trained_net():
    """A 16-32-3 tanh MLP trained with Adam on three separable blobs in [0, 1]^16, and the results of
    `TRAINED_RUNS` on 60 of its training points."""
    fn, x, y = trained_blob_mlp(3, 300, 0.08, (0.3, 0.7), DIM)
    assert float(jnp.mean(jnp.argmax(fn(x), -1) == y)) > 0.95
    x, y = x[:60], y[:60]
    results = {label: attacks.run_attack(name, fn, x, y, jax.random.PRNGKey(0), TRAINED_EPS, (0.0, 1.0), **overrides)
               for label, (name, overrides) in TRAINED_RUNS.items()}
    return fn, x, y, results


def test_iterative_attacks_are_at_least_as_strong_as_fgsm(trained_net):
    *_, results = trained_net
    fgsm_broken = np.asarray(results["fgsm"].broken)
    assert 0 < fgsm_broken.sum() < fgsm_broken.size, "FGSM must be partly successful for the test to mean anything"
    for label in ("pgd", "apgd-ce"):
        broken = np.asarray(results[label].broken)
        assert np.all(broken >= fgsm_broken), f"{label} misses examples that FGSM breaks"


def test_an_attack_on_a_vote_with_a_smooth_surrogate_follows_the_surrogate(trained_net):
    """A model whose logits are a vote (piecewise constant, CARSO's kind) attacked through a smooth surrogate
    that decides alike: the losses APGD compares are the surrogate's, so the attack is exactly APGD on the
    surrogate.  (Comparing the vote's flat losses, APGD would halve its step at every checkpoint.)"""
    fn, x, y, results = trained_net
    vote = lambda inputs: jnp.log(jax.nn.one_hot(jnp.argmax(fn(inputs), -1), 3) * 0.98 + 0.01)  # noqa: E731
    name, overrides = TRAINED_RUNS["apgd-ce"]
    through_surrogate = attacks.run_attack(name, vote, x, y, jax.random.PRNGKey(0), TRAINED_EPS, (0.0, 1.0),
                                           gradient_logits_fn=fn, **overrides)
    np.testing.assert_array_equal(through_surrogate.broken, results["apgd-ce"].broken)
    np.testing.assert_allclose(through_surrogate.x_adv, results["apgd-ce"].x_adv, atol=1e-6)


def test_the_verdict_of_a_nonlinear_net_is_that_of_a_separate_forward_pass_on_the_points(trained_net):
    """``broken`` is exactly the misclassification of the returned points by the model run here: a broken
    input's point is misclassified, an unbroken input's point (its last or best-loss point) is not."""
    fn, x, y, results = trained_net
    for label, result in results.items():
        wrong = np.asarray(jnp.argmax(fn(result.x_adv), -1) != y)
        np.testing.assert_array_equal(wrong, np.asarray(result.broken), err_msg=label)
        assert np.all(_distance(result.x_adv, x, "linf") <= TRAINED_EPS + 1e-6), label


def test_attacks_compose_with_a_callers_jit():
    x, y = _interior_inputs(jitter=0.3), jnp.arange(BATCH) % CLASSES
    run = jax.jit(lambda x, y, key, eps: attacks.pgd(MULTI_NET, x, y, key, eps=eps, **FAST["pgd"]))
    jitted = run(x, y, jax.random.PRNGKey(0), 0.1)
    eager = attacks.pgd(MULTI_NET, x, y, jax.random.PRNGKey(0), eps=0.1, **FAST["pgd"])
    np.testing.assert_allclose(jitted.x_adv, eager.x_adv, atol=1e-6)
    np.testing.assert_array_equal(jitted.broken, eager.broken)


def test_pgd_stops_once_the_whole_batch_is_broken_with_the_same_verdict():
    """With ``stop_when_all_broken`` a batch broken after one step costs about one step, not ``steps``; the
    verdict is that of the full run.  The model counts its own evaluations through a host callback."""
    evaluations = []

    def counting_net(x):
        jax.debug.callback(lambda: evaluations.append(1))
        return MULTI_NET(x)

    x, y = _interior_inputs(jitter=0.3), jnp.arange(BATCH) % CLASSES
    outcomes = {}
    for stop, parallel in ((True, None), (True, 1), (False, None), (False, 1)):
        evaluations.clear()
        result = attacks.pgd(counting_net, x, y, jax.random.PRNGKey(0), eps=0.5, steps=30, restarts=4,
                             stop_when_all_broken=stop, parallel_restarts=parallel)
        outcomes[stop, parallel] = (np.asarray(result.broken), len(evaluations))
    assert outcomes[True, None][0].all(), "eps 0.5 must break every input of the linear model"
    for verdict, _ in outcomes.values():
        np.testing.assert_array_equal(verdict, outcomes[True, None][0])
    assert outcomes[True, None][1] * 5 < outcomes[False, None][1], outcomes
    # one restart at a time: the three later restarts are skipped altogether (a vmapped call counts once)
    assert outcomes[True, 1][1] < outcomes[True, None][1] + 2 and outcomes[False, 1][1] > 3 * 30, outcomes


def test_pgd_restart_groups_reach_the_analytic_verdict():
    """Restarts one at a time, in pairs or all at once: on the linear model an input with label 0 near 0.5
    breaks iff eps exceeds margin / ||w_0 - w_1||_1 (the class-1 worst case), whichever group finds it."""
    x, y = _interior_inputs(), jnp.zeros(BATCH, jnp.int32)
    threshold = 1.0 / MULTI_L1[1]
    for parallel in (1, 2, 4):
        for factor, expected in ((0.8, False), (1.25, True)):
            result = attacks.pgd(MULTI_NET, x, y, jax.random.PRNGKey(3), eps=factor * threshold, steps=5, restarts=4,
                                 parallel_restarts=parallel)
            assert np.all(np.asarray(result.broken) == expected), (parallel, factor)
    with pytest.raises(ValueError, match="parallel_restarts"):
        attacks.pgd(MULTI_NET, x, y, jax.random.PRNGKey(0), eps=0.1, restarts=4, parallel_restarts=3)



@pytest.mark.parametrize("name, budget", [("square", {"n_queries": 30}), ("apgd-ce", {"steps": 20, "restarts": 2})])
def test_compaction_keeps_the_verdict_and_evaluates_only_unbroken_inputs(name, budget):
    """Dropping broken inputs from the batch between segments of iterations changes neither the verdict nor
    the points (every input's iterations depend on it alone), and evaluates fewer rows; inside a caller's jit
    the batch is left whole.  The model counts the rows it evaluates through a host callback."""
    rows_evaluated = []

    def counting_net(x):
        jax.debug.callback(lambda n: rows_evaluated.append(int(n)), x.shape[0])
        return MULTI_NET(x)

    # 32 inputs with label 0 at distances to the class-1 boundary spread from easy to impossible at eps 0.12
    x = 0.5 + jax.random.uniform(jax.random.PRNGKey(5), (32, DIM), minval=-0.3, maxval=0.3)
    y = jnp.argmax(MULTI_NET(x), axis=-1)
    attack, key = attacks.ATTACKS[name].fn, jax.random.PRNGKey(4)
    settings_ = attacks.settings_of(name, **budget)
    outcomes = {}
    for compact_every in (None, 3, 10):
        rows_evaluated.clear()
        result = attack(counting_net, x, y, key, eps=0.12, **(settings_ | {"compact_every": compact_every}))
        outcomes[compact_every] = result, sum(rows_evaluated)
    whole, whole_rows = outcomes[None]
    assert 0 < int(whole.broken.sum()) < 32, "the test needs inputs that break and inputs that resist"
    for compact_every in (3, 10):
        result, rows = outcomes[compact_every]
        np.testing.assert_array_equal(result.broken, whole.broken)
        np.testing.assert_array_equal(result.x_adv, whole.x_adv)
        assert rows < whole_rows, (compact_every, rows, whole_rows)
    assert outcomes[3][1] <= outcomes[10][1]
    jitted = jax.jit(lambda x, y: attack(MULTI_NET, x, y, key, eps=0.12, **settings_))
    np.testing.assert_array_equal(jitted(x, y).broken, whole.broken)
    with pytest.raises(ValueError, match="compact_every must be an integer >= 1"):
        attack(MULTI_NET, x, y, key, eps=0.12, **(settings_ | {"compact_every": 0}))


def test_compacted_batch_sizes_are_multiples_of_an_eighth():
    # multiples of ceil(500 / 8) = 63, capped at the batch
    assert [compaction.compacted_size(n, 500) for n in (5, 63, 64, 400, 500)] == [63, 63, 126, 441, 500]

# ---------------------------------------------------------------------------------------------------------
# Pieces with known values.

def test_losses_on_hand_computed_logits():
    logits = jnp.array([[3.0, 1.0, 0.0, -1.0]])
    y = jnp.array([1])
    np.testing.assert_allclose(losses.margin(logits, y), [2.0])
    np.testing.assert_allclose(losses.difference_of_logits_ratio(logits, y), [2.0 / 3.0], rtol=1e-6)
    np.testing.assert_allclose(losses.squared_error(logits, y), [9.0 + 0.0 + 0.0 + 1.0])
    np.testing.assert_allclose(losses.cross_entropy(logits, y), -jax.nn.log_softmax(logits)[:, 1], rtol=1e-6)


def test_apgd_checkpoints_follow_the_schedule():
    assert apgd_module.checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)


def test_square_schedule_and_layout():
    assert square_module.image_shape_of((784,)) == (28, 28, 1)
    assert square_module.image_shape_of((10,)) == (1, 10, 1)
    assert square_module.image_shape_of((32, 32, 3)) == (32, 32, 3)
    # on the 10,000-query scale these queries are 10, 20, 50, 200 and 9990
    fractions = [float(square_module.square_fraction(q, 1000, 0.8)) for q in (1, 2, 5, 20, 999)]
    np.testing.assert_allclose(fractions, [0.8, 0.4, 0.4, 0.2, 0.8 / 2**9], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Errors a user can make.

@pytest.mark.parametrize("change, message", [
    (dict(eps=-0.1), "eps must be a finite number >= 0"),
    (dict(eps=1.5), "exceeds the linf diameter"),
    (dict(domain=(-1.0, 1.0), eps=2.5), "exceeds the linf diameter 2"),
    (dict(x=jnp.full((BATCH, DIM), 1.1)), "outside the domain"),
    (dict(y=jnp.arange(BATCH + 1) % CLASSES), "batch sizes differ"),
    (dict(y=jnp.zeros(BATCH)), "labels must be integers"),
    (dict(y=jnp.full(BATCH, CLASSES)), r"labels must lie in \[0, 4\)"),
    (dict(y=jnp.full(BATCH, -1)), r"labels must lie in \[0, 4\)"),
    (dict(domain=(1.0, 0.0)), "lo < hi"),
    (dict(loss="hinge"), "unknown loss 'hinge'"),
    (dict(norm="l1"), "unknown norm 'l1'"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(step_rule="adam"), "unknown step_rule"),
])
def test_bad_inputs_are_refused(change, message):
    arguments = dict(x=_interior_inputs(), y=jnp.zeros(BATCH, jnp.int32), eps=0.1, domain=(0.0, 1.0)) | change
    x, y = arguments.pop("x"), arguments.pop("y")
    with pytest.raises(ValueError, match=message):
        attacks.pgd(MULTI_NET, x, y, jax.random.PRNGKey(0), **arguments)


def test_registry_errors_name_the_known_choices():
    x, y = _interior_inputs(), jnp.zeros(BATCH, jnp.int32)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"unknown attack 'cw'; known attacks: \[.*'pgd'.*\]"):
        attacks.run_attack("cw", MULTI_NET, x, y, key, 0.1, (0.0, 1.0))
    with pytest.raises(ValueError, match=r"no setting\(s\) \['stepz'\]; its settings: \[.*'steps'.*\]"):
        attacks.run_attack("pgd", MULTI_NET, x, y, key, 0.1, (0.0, 1.0), stepz=3)
    with pytest.raises(ValueError, match="gradient-free"):
        attacks.run_attack("square", MULTI_NET, x, y, key, 0.1, (0.0, 1.0), gradient_logits_fn=MULTI_NET)
    with pytest.raises(ValueError, match="DLR loss needs at least 3 classes"):
        attacks.run_attack("apgd-dlr", BINARY_NET, x, y, key, 0.1, (0.0, 1.0))


def test_l2_eps_may_exceed_the_domain_width():
    x, y = _interior_inputs(), jnp.zeros(BATCH, jnp.int32)
    with pytest.raises(ValueError, match="exceeds the l2 diameter 4"):  # the L2 diameter of [0, 1]^16 is 4
        attacks.fgm(MULTI_NET, x, y, jax.random.PRNGKey(0), eps=4.5)
    attacks.fgm(MULTI_NET, x, y, jax.random.PRNGKey(0), eps=2.0)
