"""Tests of the targeted attacks (`andor_jax.attacks.targeted`, `andor_jax.attacks.fab`), the named suites
(`andor_jax.attacks.suites`, sequential runs of `andor_jax.evaluators.robustness.run`) and the convergence
check: against hand computations on linear models and against the untargeted attacks on a small trained net."""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from andor_jax import attacks
from andor_jax import report as report_lib
from andor_jax.attacks import AttackResult, AttackSpec, common, fab, losses, registry, suites
from andor_jax.evaluators import robustness
from conftest import trained_blob_mlp

DIM, CLASSES = 16, 4

_KERNEL = jax.random.normal(jax.random.PRNGKey(0), (DIM, CLASSES))
LINEAR = lambda x: x @ _KERNEL  # noqa: E731


def _linear_distances(x, y):
    """The least L-inf distance from each input to the region where some class beats its label, for
    `LINEAR` away from the domain's faces: ``min_{t != y} (z_y - z_t) / ||w_y - w_t||_1``."""
    z, kernel = np.asarray(LINEAR(x)), np.asarray(_KERNEL)
    return np.array([min((z[i, y[i]] - z[i, t]) / np.abs(kernel[:, y[i]] - kernel[:, t]).sum()
                         for t in range(CLASSES) if t != y[i]) for i in range(len(y))])


def _interior(n=6, seed=1):
    x = 0.5 + jax.random.uniform(jax.random.PRNGKey(seed), (n, DIM), minval=-0.05, maxval=0.05)
    return x, jnp.argmax(LINEAR(x), axis=-1)


@pytest.fixture(scope="module")
def trained_net():
    """A 16-32-4 tanh MLP trained with Adam on four overlapping blobs in [0, 1]^16, and 48 of its training
    points."""
    fn, x, y = trained_blob_mlp(CLASSES, 400, 0.06, (0.35, 0.65), DIM)
    assert float(jnp.mean(jnp.argmax(fn(x), -1) == y)) > 0.9
    return fn, x[:48], y[:48]


# ---------------------------------------------------------------------------------------------------------
# Targeted losses and attacks.

def test_targeted_losses_on_hand_computed_logits():
    logits = jnp.array([[3.0, 1.0, 2.0, -1.0]])
    y = jnp.array([0])
    for target, margin in ((1, -2.0), (2, -1.0), (3, -4.0)):
        t = jnp.array([target])
        np.testing.assert_allclose(losses.targeted_margin(logits, y, t), [margin])
        # z_pi1 - (z_pi3 + z_pi4) / 2 = 3 - (1 - 1) / 2 = 3
        np.testing.assert_allclose(losses.targeted_difference_of_logits_ratio(logits, y, t), [margin / 3.0], rtol=1e-6)
        log_z = np.log(np.exp([3.0, 1.0, 2.0, -1.0]).sum())
        np.testing.assert_allclose(losses.targeted_cross_entropy(logits, y, t), [logits[0, target] - log_z], rtol=1e-6)
    np.testing.assert_array_equal(losses.top_targets(logits, jnp.array([2]), 3), [[0, 1, 3]])
    np.testing.assert_array_equal(losses.top_targets(logits, y, 2), [[2, 1]])


def test_apgd_t_breaks_at_least_what_apgd_ce_breaks_and_stays_in_the_ball(trained_net):
    fn, x, y = trained_net
    eps = 0.05
    budget = {"steps": 20, "compact_every": None}
    ce = attacks.run_attack("apgd-ce", fn, x, y, jax.random.PRNGKey(0), eps, (0.0, 1.0), **budget)
    targeted = attacks.run_attack("apgd-t", fn, x, y, jax.random.PRNGKey(0), eps, (0.0, 1.0), targets=3, **budget)
    ce_broken, t_broken = np.asarray(ce.broken), np.asarray(targeted.broken)
    assert 0 < ce_broken.sum() < len(y), "APGD-CE must be partly successful for the test to mean anything"
    assert t_broken.sum() >= ce_broken.sum() and np.all(t_broken[ce_broken]), (ce_broken.sum(), t_broken.sum())
    assert np.all(np.asarray(common.per_example_norm(targeted.x_adv - x, "linf")) <= eps + 1e-6)
    np.testing.assert_array_equal(np.asarray(jnp.argmax(fn(targeted.x_adv), -1) != y), t_broken)


def test_fab_t_finds_the_nearest_boundary_of_a_linear_model_inside_the_ball():
    """Below the least distance to the boundary nothing breaks; at twice it, FAB-T (a minimal-perturbation
    attack) returns adversarial points nearer than eps, close to the least distance, where a PGD-type attack
    goes to the ball's edge."""
    x, y = _interior()
    distance = _linear_distances(x, y)
    below = attacks.run_attack("fab-t", LINEAR, x, y, jax.random.PRNGKey(0), 0.9 * distance.min(), (0.0, 1.0),
                               steps=20)
    assert not np.asarray(below.broken).any()
    eps = 2.0 * distance.max()
    result = attacks.run_attack("fab-t", LINEAR, x, y, jax.random.PRNGKey(0), eps, (0.0, 1.0), steps=20)
    found = np.asarray(common.per_example_norm(result.x_adv - x, "linf"))
    assert np.asarray(result.broken).all()
    assert np.all(found <= 1.25 * distance) and np.all(found >= distance * (1 - 1e-4)), found / distance
    assert np.all(np.asarray(result.x_adv) >= 0.0) and np.all(np.asarray(result.x_adv) <= 1.0)
    np.testing.assert_array_equal(np.asarray(jnp.argmax(LINEAR(result.x_adv), -1) != y), True)


def test_the_hyperplane_step_is_the_least_linf_step_within_the_box():
    """On the box [0, 1]^3 from p = (0.5, 0.9, 0.5) towards <w, z> = b with w = (1, 1, 0): coordinate 2 can
    move 0.1 at most, so delta solves 0.1 + delta = r; an unreachable plane gives the box's far corner."""
    p, w = jnp.array([[0.5, 0.9, 0.5]]), jnp.array([[1.0, 1.0, 0.0]])
    step = fab.hyperplane_step(p, w, jnp.array([1.4 + 0.3]), (0.0, 1.0))     # r = 0.3
    np.testing.assert_allclose(step, [[0.2, 0.1, 0.0]], atol=1e-6)
    step = fab.hyperplane_step(p, w, jnp.array([1.4 - 0.3]), (0.0, 1.0))     # r = -0.3: both move down 0.15
    np.testing.assert_allclose(step, [[-0.15, -0.15, 0.0]], atol=1e-6)
    step = fab.hyperplane_step(p, w, jnp.array([5.0]), (0.0, 1.0))
    np.testing.assert_allclose(step, [[0.5, 0.1, 0.0]], atol=1e-6)


def test_the_hyperplane_step_matches_the_sorted_solution_on_random_planes():
    """Against the textbook solution (numpy, float64): g(delta) = sum |w_i| min(delta, room_i) is linear
    between the sorted rooms, so the least delta with g(delta) = |r| interpolates g's values there."""
    rng = np.random.default_rng(0)
    batch, dim, domain = 64, 50, (-1.0, 2.0)
    p = rng.uniform(*domain, (batch, dim))
    w = rng.normal(size=(batch, dim))
    b = np.sum(w * p, 1) + rng.normal(scale=3.0, size=batch)
    step = np.asarray(fab.hyperplane_step(jnp.asarray(p, jnp.float32), jnp.asarray(w, jnp.float32),
                                          jnp.asarray(b, jnp.float32), domain))
    r = b - np.sum(w * p, 1)
    direction = np.sign(w) * np.sign(r)[:, None]
    room = np.where(direction > 0, domain[1] - p, p - domain[0])
    for i in range(batch):
        rooms = np.sort(room[i])
        reach = np.array([np.sum(np.abs(w[i]) * np.minimum(t, room[i])) for t in rooms])
        delta = rooms[-1] if reach[-1] < abs(r[i]) else np.interp(abs(r[i]), np.r_[0.0, reach], np.r_[0.0, rooms])
        np.testing.assert_allclose(step[i], direction[i] * np.minimum(delta, room[i]), atol=2e-5)


# ---------------------------------------------------------------------------------------------------------
# Suites: later attacks on survivors only.

def _recording(seen, broken_ids):
    """A stand-in attack that records the ids (x[:, 0] * 10) of the examples it is aimed at, those whose label
    the model (always class 0) gets right, and breaks ``broken_ids``."""
    def attack(logits_fn, x, y, key, *, eps, domain, steps=1, restarts=1):
        ids = np.rint(np.asarray(x)[:, 0] * 10).astype(int)
        seen.append(ids[np.asarray(jnp.argmax(logits_fn(x), -1) == y)])
        return AttackResult(x, jnp.asarray(np.isin(ids, list(broken_ids))))
    return attack


def test_a_suite_attacks_only_the_examples_still_standing(monkeypatch):
    """The chunk keeps its shape; the examples not standing carry a label the model gets wrong, so that an
    attack counts them broken before its first step."""
    ids = np.arange(8)
    x = np.stack([ids / 10, np.full(8, 0.5)], axis=1).astype(np.float32)
    y = np.where(ids == 7, 1, 0)  # the model below always predicts 0: example 7 is a clean error
    constant_net = lambda inputs: jnp.stack([jnp.ones(len(inputs)), jnp.zeros(len(inputs))], axis=1)  # noqa: E731
    seen = {"fake-a": [], "fake-b": [], "fake-c": []}
    breaks = {"fake-a": {0, 1}, "fake-b": {1, 2, 3}, "fake-c": {4}}
    for name in seen:
        monkeypatch.setitem(registry.ATTACKS, name, AttackSpec(_recording(seen[name], breaks[name]), {}, name, "linf",
                                                               "iterative"))
    outcomes = robustness.run(constant_net, x, y, attacks=list(seen), eps_grid=[0.1], key=jax.random.PRNGKey(0),
                              batch_size=8, progress=False, sequential=True)
    assert set(np.concatenate(seen["fake-a"])) == set(range(7))              # the clean error is not attacked
    assert set(np.concatenate(seen["fake-b"])) == {2, 3, 4, 5, 6}            # 0 and 1 fell to fake-a
    assert set(np.concatenate(seen["fake-c"])) == {4, 5, 6}
    summary = report_lib.robustness_summary(outcomes)
    assert summary["broken_by"] == {"fake-a": {"0.1": 2}, "fake-b": {"0.1": 2}, "fake-c": {"0.1": 1}}
    assert summary["attacks"] == {"fake-a": {"0.1": 5 / 8}, "fake-b": {"0.1": 3 / 8}, "fake-c": {"0.1": 2 / 8}}
    assert summary["robust_accuracy"] == {"0.1": 2 / 8}
    assert "convergence" not in summary
    markdown = report_lib.format_markdown({"example_sets": {"a": {
        "examples": {"id": "a", "description": "d", "count": 8, "indices_digest": "i", "data_digest": "j"},
        "robustness": summary}}})
    assert "Examples broken by each attack" in markdown and "No convergence check ran" in markdown


def test_suites_resolve_and_refuse_bad_requests():
    labels, settings = suites.resolve("standard", randomised=False)
    assert labels == ["apgd-ce", "apgd-t", "fab-t", "square"] and settings == {"square": {"n_queries": 5000}}
    assert suites.resolve("rand", randomised=True)[0] == ["apgd-ce", "apgd-dlr"]
    assert suites.resolve("paper", randomised=False, paper_attacks=["pgd-adadelta"],
                          paper_settings={"pgd-adadelta": {"steps": 5}}) == (["pgd-adadelta"],
                                                                            {"pgd-adadelta": {"steps": 5}})
    for attack in suites.SUITES["plus"].attacks:
        registry.get_spec(attack)
    with pytest.raises(ValueError, match="unknown suite 'strong'; suites: standard, plus, rand, paper"):
        suites.resolve("strong", randomised=False)
    with pytest.raises(ValueError, match="suite 'rand' is for randomised models"):
        suites.resolve("rand", randomised=False)


def test_a_suite_goes_through_the_models_attack_surface():
    uses_gradients = lambda name: registry.get_spec(name).uses_gradients  # noqa: E731
    labels = ["apgd-ce", "square", "fab-t", "pgd[psd]"]
    assert suites.through_surface(labels, "true", uses_gradients) == labels
    assert suites.through_surface(labels, "mean_logits", uses_gradients) == [
        "apgd-ce[mean_logits]", "square", "fab-t[mean_logits]", "pgd[psd]"]


def test_runs_of_a_suite_put_each_pseudo_gradient_double_right_after_its_attack():
    runs = robustness.runs_of(["apgd-ce", "square", "apgd-t"], ["psd"], interleaved=True)
    assert [label for label, _, _ in runs] == ["apgd-ce", "apgd-ce[psd]", "square", "apgd-t", "apgd-t[psd]"]


# ---------------------------------------------------------------------------------------------------------
# The convergence check.

def test_the_convergence_check_flags_a_weak_attack_and_passes_a_converged_one(trained_net):
    fn, x, y = trained_net
    weak = robustness.run(fn, x, y, attacks=["pgd"], eps_grid=[0.05], key=jax.random.PRNGKey(0),
                          batch_size=48, progress=False, overrides={"pgd": {"steps": 1, "restarts": 1}},
                          convergence=robustness.Convergence())
    summary = report_lib.robustness_summary(weak)
    convergence = summary["convergence"]
    assert convergence["attack"] == "pgd"
    assert (convergence["settings"]["steps"], convergence["settings"]["restarts"]) == (2, 2)
    assert convergence["broken"]["0.05"] > 0.005 * len(y) and not convergence["converged"]
    assert summary["robust_accuracy"]["0.05"] < summary["robust_accuracy_before_check"]["0.05"]
    assert summary["robust_accuracy_before_check"]["0.05"] - summary["robust_accuracy"]["0.05"] == pytest.approx(
        convergence["broken"]["0.05"] / len(y))
    check = next(c for c in summary["sanity"] if c["name"].startswith("converged"))
    assert not check["passed"] and "not converged" in check["message"]

    # on a linear model PGD reaches the worst case: the check (PGD with 2 x 3 steps, 2 x 2 restarts) adds nothing
    xl, yl = _interior(8)
    converged = robustness.run(LINEAR, xl, yl, attacks=["pgd"], eps_grid=[np.median(_linear_distances(xl, yl))],
                               key=jax.random.PRNGKey(0), batch_size=8, progress=False,
                               overrides={"pgd": {"steps": 3, "restarts": 2}}, convergence=robustness.Convergence())
    summary = report_lib.robustness_summary(converged)
    assert summary["settings"]["convergence"]["attack"] == "pgd"
    assert summary["settings"]["convergence"]["settings"]["steps"] == 6
    standing = next(iter(summary["convergence"]["standing"].values()))
    assert summary["convergence"]["converged"] and 0 < standing < 8
    assert "### Convergence check" in "\n".join(report_lib._format_robustness(summary, None))


def test_the_strongest_attack_is_the_one_of_the_largest_budget():
    settings = {name: registry.settings_of(name) for name in ("fgsm", "apgd-ce", "apgd-t", "square")}
    runs = [(name, name, None) for name in settings]
    assert robustness.check_run(runs, settings, robustness.Convergence())[0] == "apgd-t"      # 100 x 1 x 9 targets
    assert robustness.check_run(runs[:1], settings, robustness.Convergence()) is None
    assert robustness.scaled(settings["apgd-t"], 2) == {"steps": 200, "restarts": 2}
    with pytest.raises(ValueError, match="convergence threshold must be a fraction"):
        robustness.Convergence(threshold=2.0).check()


# ---------------------------------------------------------------------------------------------------------
# Nested balls: an example broken at a smaller eps is not attacked at a larger one.

def test_nested_eps_inherits_exactly_the_examples_broken_at_a_smaller_eps(trained_net):
    fn, x, y = trained_net
    grid = [0.3, 0.05, 0.12]  # out of order: the attacks still go up the grid
    common_args = dict(attacks=["fgsm", "pgd"], eps_grid=grid, key=jax.random.PRNGKey(3), batch_size=24,
                       overrides={"pgd": {"steps": 10, "restarts": 2}}, progress=False)
    plain = robustness.run(fn, x, y, **common_args)
    nested = robustness.run(fn, x, y, nested_eps=True, **common_args)
    clean = plain.clean
    keys = [robustness.eps_key(eps) for eps in sorted(grid)]
    for label in ("fgsm", "pgd"):
        # every input draws its own random stream, so an example attacked in both runs meets the same attack:
        # nested at eps_i is plain at eps_i and nested at eps_(i-1), and the inherited ones are those broken below
        below = clean
        for k in keys:
            want = clean & plain.correct[label][k] & below
            np.testing.assert_array_equal(clean & nested.correct[label][k], want, err_msg=f"{label}@{k}")
            np.testing.assert_array_equal(nested.inherited[label][k], clean & ~below, err_msg=f"{label}@{k}")
            below = want
    inherited = report_lib.robustness_summary(nested)["inherited"]
    assert inherited["pgd"][keys[0]] == 0 and inherited["pgd"][keys[-1]] > 0
    assert nested.settings["nested_eps"] and not plain.settings["nested_eps"] and plain.inherited is None


def test_nested_eps_in_a_suite_with_the_convergence_check(trained_net):
    fn, x, y = trained_net
    outcomes = robustness.run(fn, x, y, attacks=["fgsm", "pgd"], eps_grid=[0.05, 0.12, 0.3], key=jax.random.PRNGKey(4),
                              overrides={"pgd": {"steps": 10}}, progress=False, sequential=True, nested_eps=True,
                              convergence=robustness.Convergence(0.005, ""))
    keys = [robustness.eps_key(eps) for eps in (0.05, 0.12, 0.3)]
    for smaller, larger in zip(keys, keys[1:]):
        for label in ("fgsm", "pgd"):
            # standing at a larger eps only if standing at the smaller one: broken below is broken above
            assert not np.any(outcomes.correct[label][larger] & ~outcomes.correct[label][smaller])
        assert not np.any(outcomes.check[larger] & ~outcomes.check[smaller])
    # FGSM is first: what it broke at 0.05 it hands down to 0.12; PGD after it only adds its own breaks
    assert np.array_equal(outcomes.inherited["fgsm"][keys[1]], outcomes.clean & ~outcomes.correct["fgsm"][keys[0]])
    summary = report_lib.robustness_summary(outcomes)
    assert set(summary["inherited"]) == {"fgsm", "pgd", robustness.CHECK_LABEL}
    text = "\n".join(report_lib.format_entry({"examples": {"description": "x", "count": len(y), "indices_digest": "a",
                                                           "data_digest": "b"}, "robustness": summary}))
    assert "Nested balls" in text and "fgsm at 0.12" in text
