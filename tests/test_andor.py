"""AND/OR networks (Fontana, arXiv 2102.07389; issue 14): L1 projection, AND-type activation, interval
rules, initialisations, logits, the LeNet with the author's skip connection, the 'andor' objective (the
author's per-neuron directions, the warm-up in steps, training health) and weight concentration.

Compilation dominates: the AND/OR LeNet's training step is compiled once (the ``lenet_run`` fixture) and
the tests about learning, the skip connection and health read its results."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from andor_jax import bounds, models, train
from andor_jax.config import load_config
from andor_jax.layers.andor import (AndActivation, AndOrConv, AndOrDense, and_activation, l1_project, on_ceiling,
                                    on_floor, sparse_init)
from andor_jax.layers.base import get_path, walk
from andor_jax.layers.standard import Activation, BatchNorm, Dense, Flatten, MaxPool
from andor_jax.models import Sequential
from andor_jax.objectives import andor
from andor_jax.objectives.supervised import supervised_objective
from conftest import optimised, synthetic_digits

def norms(kernel):
    """(P, N) per neuron (last axis)."""
    axes = tuple(range(kernel.ndim - 1))
    return np.maximum(kernel, 0).sum(axes), -np.minimum(kernel, 0).sum(axes)


def tiny_andor(scale=1.0):
    """8x8x1 -> conv 3 k3 -> pool -> and -> flatten (27) -> dense 6 -> and -> dense 3."""
    return Sequential((AndOrConv(3, kernel_size=(3, 3), scale=scale), MaxPool((2, 2)), AndActivation(), Flatten(),
                       AndOrDense(6, scale=scale), AndActivation(), AndOrDense(3, scale=scale)))


def block_data(n, seed):
    """Three classes: a bright band at one of three heights on a dark background, inputs in [-1, 1]."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.uniform(-1, -0.6, (n, 8, 8, 1)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 2 * c: 2 * c + 3, 1:7, 0] = 1.0
    return jnp.asarray(x), jnp.asarray(y)


# ------------------------------------------------------------------------------------------- projection

KERNELS = {"dense": (20, 7), "conv": (3, 3, 4, 5)}


@pytest.mark.parametrize("rule", ["author", "paper"])
@pytest.mark.parametrize("shape", KERNELS.values(), ids=KERNELS.keys())
@pytest.mark.parametrize("spread", [0.05, 1.0])
def test_projection_bounds_norms_and_is_idempotent(rule, shape, spread):
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, spread, shape).astype(np.float32)
    kernel[..., 0] = np.abs(kernel[..., 0])            # a neuron with no negative weights
    kernel[..., 1] = -np.abs(kernel[..., 1])           # and one with no positive weights
    project = jax.jit(lambda k: l1_project(k, 1.0, rule))
    projected = np.asarray(project(jnp.asarray(kernel)))
    p, n = norms(projected)
    assert np.all(p <= 1 + 1e-5) and np.all(n <= 1 + 1e-5)
    if rule == "author":
        assert np.all(n <= p + 1e-5)
        assert np.all(projected[..., 1] == 0)           # no excitation: no inhibition either
    assert np.all(np.sign(projected) * np.sign(kernel) >= 0)   # parts are only shrunk
    np.testing.assert_allclose(project(jnp.asarray(projected)), projected, rtol=1e-5, atol=1e-7)


def test_projection_is_the_identity_inside_the_set_and_matches_the_rules():
    kernel = jnp.array([[0.2, 3.0, 0.5], [-0.1, -1.0, -2.0], [0.3, 1.0, 0.5]])   # (in 3, out 3)
    # neuron 0: P = 0.5, N = 0.1: inside both sets.  neuron 1: P = 4, N = 1.  neuron 2: P = 1, N = 2.
    for rule in ("author", "paper"):
        np.testing.assert_allclose(l1_project(kernel, 1.0, rule)[:, 0], kernel[:, 0])
    author = l1_project(kernel, 1.0, "author")
    np.testing.assert_allclose(author[:, 1], [0.75, -1.0, 0.25])      # p / 4, then N = 1 <= P' = 1
    np.testing.assert_allclose(author[:, 2], [0.5, -1.0, 0.5])        # P = 1 kept, n scaled to N = P = 1
    paper = l1_project(kernel, 1.0, "paper")
    np.testing.assert_allclose(paper[:, 2], [0.5, -1.0, 0.5])         # N = 2 > 1: n / 2


def test_conv_projection_is_per_filter():
    rng = np.random.default_rng(1)
    kernel = rng.normal(0, 1, (5, 5, 2, 4)).astype(np.float32)
    projected = AndOrConv(4, scale=10.0, budget=0.5).project({"kernel": jnp.asarray(kernel), "bias": jnp.zeros(4)})
    for f in range(4):   # each filter alone, flattened to a one-neuron dense kernel, gives the same
        alone = l1_project(jnp.asarray(kernel[..., f].reshape(-1, 1)), 5.0, "author")
        np.testing.assert_allclose(projected["kernel"][..., f].reshape(-1, 1), alone, rtol=1e-6)
    bigger = kernel.copy()
    bigger[..., 0] *= 100
    again = AndOrConv(4, scale=10.0, budget=0.5).project({"kernel": jnp.asarray(bigger), "bias": jnp.zeros(4)})
    np.testing.assert_allclose(again["kernel"][..., 1:], projected["kernel"][..., 1:])


def test_project_clamps_the_bias_and_the_engine_projects_every_andor_layer():
    layer = AndOrDense(3, bias_bound=0.5)
    out = layer.project({"kernel": jnp.zeros((2, 3)), "bias": jnp.array([-2.0, 0.1, 3.0])})
    np.testing.assert_allclose(out["bias"], [-0.5, 0.1, 0.5])
    model = tiny_andor()
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"]
    rng = np.random.default_rng(2)
    big = jax.tree.map(lambda s: jnp.asarray(rng.normal(5.0, 50.0, s.shape), jnp.float32), shapes)
    projected = jax.jit(lambda p: models.project(model, p))(big)
    for name in ("layers_0", "layers_4", "layers_6"):
        p, n = norms(np.asarray(projected[name]["kernel"]))
        assert np.all(p <= 1 + 1e-5) and np.all(n <= p + 1e-5)


def test_the_budget_schedule_is_projected_at_the_steps_epoch():
    """The author's budget 10 (2 - tanh(2 epoch / 100)) raw: with budget 2, final 1 and a decay over 2 epochs
    the bound at epoch 1 is 1 + (1 - tanh(1)) = 1.2384; the engine projects at step / steps per epoch, so
    weights pushed up by every step sit on the bound of the step's epoch."""
    layer = AndOrDense(2, scale=1.0, budget=2.0, budget_final=1.0, budget_decay_epochs=2.0)
    np.testing.assert_allclose([layer.budget_at(e) for e in (0.0, 1.0, 1e4)], [2.0, 2.0 - math.tanh(1.0), 1.0],
                               rtol=1e-6)
    assert AndOrDense(2, budget=2.0).budget_at(50.0) == 2.0  # no schedule: constant
    model, steps_per_epoch = Sequential((layer,)), 4
    x, y = np.ones((4, 3), np.float32), np.zeros(4, np.int32)
    objective = supervised_objective(model, lambda logits, labels: -jnp.mean(logits))  # every weight up
    projection = lambda p, step: models.project(model, p, step / steps_per_epoch)  # noqa: E731
    optimizer = optax.sgd(10.0)
    state = train.init_state(model, optimizer, objective, x[:1], 0, projection)
    step = jax.jit(train.make_train_step(optimizer, objective, projection=projection))
    for reached in range(1, 9):
        state, _ = step(state, x, y)
        p, _ = norms(np.asarray(state.params["layers_0"]["kernel"]))
        np.testing.assert_allclose(p, 1.0 + 1.0 - math.tanh(2 * reached / steps_per_epoch / 2.0), rtol=1e-5)
    with pytest.raises(ValueError, match="budget_final"):
        AndOrDense(2, budget_final=0.0)


@pytest.mark.parametrize("field, value", [("scale", 0.0), ("budget", -1.0), ("bias_bound", -0.1),
                                          ("l1_rule", "l2")])
def test_bad_layer_settings_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        AndOrDense(3, **{field: value})


# ------------------------------------------------------------------------------------------- activation

def test_and_activation_at_hand_picked_points():
    sigmoid = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    expected = {
        -1.0: 0.03 * 0.1,                                   # sigmoid(-30) ~ 1e-13 is under the floor 0.003
        -0.2: 0.03 * 0.9,                                   # floor
        0.0: 0.033,                                         # floor 0.03 * 1.1 above sigmoid(-10) = 4.5e-5
        0.4: sigmoid(-2.0),                                 # 0.1192, between floor 0.045 and ceiling 0.964
        0.5: 0.5,
        0.6: sigmoid((20 + 14 * 0.6**6) * 0.1),             # steeper branch: s = 20.653
        0.9: 1 + 0.06 * (0.9 - 1),                          # ceiling 0.994 below sigmoid(10.98)
        1.0: sigmoid(17.0),                                 # s = 34; ceiling 1
    }
    xs = jnp.array(list(expected), jnp.float32)
    np.testing.assert_allclose(and_activation(xs), list(expected.values()), rtol=1e-5)
    np.testing.assert_allclose(AndActivation("sigmoid").apply({}, xs), jax.nn.sigmoid(xs))


def test_and_activation_is_non_decreasing_everywhere():
    xs = jnp.linspace(-60.0, 60.0, 200_001)    # includes x < -30.2, where the floor exceeds the ceiling
    assert float(jnp.min(jnp.diff(and_activation(xs)))) >= 0.0


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="unknown AND/OR activation 'relu'"):
        AndActivation("relu")


# ------------------------------------------------------------------------------------------- intervals

def test_certification_affine_view_of_the_last_layer():
    layer = AndOrDense(3, scale=4.0)
    rng = np.random.default_rng(4)
    variables = {"params": {"kernel": rng.normal(size=(5, 3)), "bias": rng.normal(size=3)}}
    kernel, bias = layer.apply(variables, method="affine")
    x = rng.normal(size=(2, 5))
    np.testing.assert_allclose(x @ kernel + bias, layer.apply(variables, x), rtol=1e-6)


# ------------------------------------------------------------------------------------------- builders and init

def andor_kernels(model, params):
    """Every AND/OR layer's (path, kernel), nested layers included."""
    return [(path, np.asarray(p["kernel"])) for path, layer, p in walk(model, params) if isinstance(layer, AndOrDense)
            or isinstance(layer, AndOrConv)]


def test_lenet_builders_share_the_architecture_and_the_skip_connection():
    x = jnp.zeros((2, 28, 28, 1))
    shapes = {}
    for name, skip in (("andor_lenet", False), ("lenet", False), ("andor_lenet", True), ("lenet", True)):
        model = models.build_model(ml_collections.ConfigDict({"name": name, "skip": skip}))
        shapes[name, skip] = jax.tree.map(jnp.shape, jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"])
    assert shapes["andor_lenet", False] == shapes["lenet", False]
    assert shapes["andor_lenet", True] == shapes["lenet", True]
    assert shapes["andor_lenet", False]["layers_7"]["kernel"] == (256, 120)        # 4 x 4 x 16 flattened
    assert shapes["andor_lenet", True]["layers_9"]["branches_1_0"]["kernel"] == (120, 84)
    assert shapes["andor_lenet", True]["layers_10"]["kernel"] == (120 + 84, 10)    # fc3 and fc4 side by side
    defended = models.build_model(ml_collections.ConfigDict({"name": "andor_lenet", "skip": True}))
    layers = [layer for _, layer, _ in walk(defended) if hasattr(layer, "bias_bound") and layer.bias_bound]
    assert [type(l) for l in layers] == [AndOrConv, AndOrConv] + [AndOrDense] * 3
    assert [l.bias_bound for l in layers] == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert [l.raw_output for l in layers] == [False] * 4 + [True]                  # the author's logits
    with pytest.raises(ValueError, match="one bias bound per affine layer"):
        models.build_model(ml_collections.ConfigDict({"name": "andor_lenet", "bias_bounds": (1.0,)}))


@pytest.mark.parametrize("negative", [0.0, 0.6])
def test_sparse_init_starts_every_neuron_at_its_budget(negative):
    kernel = np.asarray(sparse_init(jax.random.PRNGKey(0), (5, 5, 4, 16), 0.2, 20.0, negative))
    p, n = norms(kernel)
    np.testing.assert_allclose(p, 20.0, rtol=1e-5)
    np.testing.assert_allclose(n, negative * 20.0, rtol=1e-5, atol=1e-6)
    share = np.mean(kernel > 0, axis=(0, 1, 2))
    assert np.all((share > 0.1) & (share < 0.3))                                   # density 0.2 of 100
    np.testing.assert_allclose(l1_project(jnp.asarray(kernel), 20.0), kernel, rtol=1e-5)   # in the author's set


def test_raw_logits_are_the_pre_activation_and_the_affine_view_follows():
    rng = np.random.default_rng(5)
    variables = {"params": {"kernel": rng.normal(size=(6, 3)), "bias": rng.normal(size=3)}}
    x = rng.uniform(size=(2, 6))
    raw, nics = AndOrDense(3, scale=10.0, raw_output=True), AndOrDense(3, scale=10.0)
    np.testing.assert_allclose(raw.apply(variables, x), 10.0 * nics.apply(variables, x), rtol=1e-6)
    kernel, bias = raw.apply(variables, method="affine")
    np.testing.assert_allclose(x @ kernel + bias, raw.apply(variables, x), rtol=1e-6)


def test_floor_and_ceiling_of_the_and_activation():
    xs = jnp.array([-1.0, 0.0, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 2.0])
    np.testing.assert_array_equal(on_floor(xs), [True, True, True, False, False, False, False, False, False])
    np.testing.assert_array_equal(on_ceiling(xs), [False, False, False, False, False, False, True, True, True])


# ------------------------------------------------------------------------------------------- directions

def test_neuron_direction_by_hand():
    """``normalise(g (|w| / max|w|)^0.85 (|g| / max|g|)^0.5)`` per neuron, worked out by hand."""
    w = jnp.array([[0.5, -2.0], [-0.25, 1.0], [1.0, 0.0]])          # (in 3, out 2): neuron 0, neuron 1
    g = jnp.array([[1.0, 4.0], [-2.0, -1.0], [0.5, 2.0]])
    # neuron 0: max|w| 1, max|g| 2 -> 1 * 0.5^.85 * 0.5^.5, -2 * 0.25^.85 * 1, 0.5 * 1 * 0.25^.5
    n0 = np.array([0.5 ** 0.85 * 0.5 ** 0.5, -2 * 0.25 ** 0.85, 0.25])
    # neuron 1: max|w| 2, max|g| 4 -> 4 * 1 * 1, -1 * 0.5^.85 * 0.25^.5, 2 * 0 * ...
    n1 = np.array([4.0, -(0.5 ** 0.85) * 0.5, 0.0])
    expected = np.stack([n0 / np.max(np.abs(n0)), n1 / 4.0], axis=1)
    np.testing.assert_allclose(andor.neuron_direction(g, w, 0.85, 0.5), expected, rtol=1e-5)
    np.testing.assert_allclose(expected[:, 0], [0.6373, -1.0, 0.4061], atol=1e-4)
    guarded = andor.neuron_direction(g, w, 0.85, 0.5, floor=0.1)     # the weight at 0 moves too
    np.testing.assert_allclose(guarded[2, 1], 2 * 0.1 * 0.5 ** 0.5 / 4.0, rtol=1e-5)
    conv = andor.neuron_direction(g.reshape(3, 1, 1, 2), w.reshape(3, 1, 1, 2), 0.85, 0.5)
    np.testing.assert_allclose(conv.reshape(3, 2), expected, rtol=1e-5)          # per output filter


def test_per_neuron_mix_biases_warm_up_and_clip():
    settings = andor.default_settings()
    params = {"kernel": jnp.array([[1.0, 1.0], [1.0, 1.0]]), "bias": jnp.zeros(2)}
    ce = {"kernel": jnp.array([[2.0, 0.0], [1.0, 0.0]]), "bias": jnp.array([3.0, -4.0])}
    l2 = {"kernel": jnp.array([[1.0, 0.0], [0.0, -1.0]]), "bias": jnp.array([1.0, 0.0])}
    mixed = andor.per_neuron_mix(ce, l2, params, settings, 1.0, 0.7)
    np.testing.assert_allclose(mixed["kernel"], [[1.0, 0.0], [0.5 ** 0.5 / 2, -0.7]], rtol=1e-6)   # 1 + 0.7 clipped
    np.testing.assert_allclose(mixed["bias"], [1.0, -1.0])           # 0.5 x 3 + 0.7 x 0.5, clipped; -2 clipped
    warm = andor.per_neuron_mix(ce, l2, params, settings, 0.0, 0.07)
    np.testing.assert_allclose(warm["kernel"], [[0.07, 0.0], [0.0, -0.07]], rtol=1e-6)
    np.testing.assert_allclose(warm["bias"], [1.0, -1.0])             # biases keep their cross-entropy term
    np.testing.assert_allclose(andor.per_layer_mix({"w": jnp.array([2.0, -4.0])}, {"w": jnp.array([1.0, 0.5])},
                                                   1.0, 0.7)["w"], [1.0, -0.65])


def test_weight_concentration_transform():
    params = {"kernel": jnp.array([[0.5, -2.0], [-0.25, 1.0]]), "bias": jnp.array([0.0, 3.0])}
    grads = jax.tree.map(jnp.ones_like, params)
    config = ml_collections.ConfigDict({"andor": {"concentration_per_neuron": False}})
    plain = train.gradient_transform("andor_jax.objectives.andor:weight_concentration", config)
    updates, _ = plain.update(grads, plain.init(params), params)
    np.testing.assert_allclose(updates["kernel"], [[0.5, 2.0], [0.25, 1.0]])
    np.testing.assert_allclose(updates["bias"], [1.0, 1.0])
    per_neuron = andor.concentration(per_neuron=True)
    updates, _ = per_neuron.update(grads, per_neuron.init(params), params)
    np.testing.assert_allclose(updates["kernel"], [[1.0, 1.0], [0.5, 0.5]])
    with pytest.raises(ValueError, match="needs the parameters"):
        per_neuron.update(grads, per_neuron.init(params))


def test_unknown_andor_setting_is_named():
    config = ml_collections.ConfigDict({"loss": "cross_entropy", "andor": {"scrambles": 3}})
    with pytest.raises(ValueError, match="train.andor.scrambles"):
        andor.settings_of(config)


def test_health_metrics_and_line():
    nics = {("layers_0",): jnp.array([[0.0, 0.9, 0.5], [0.2, 1.5, 0.1]]),     # floor, ceiling, neither
            ("layers_2", "branches_1_0"): jnp.array([[0.1, 0.1], [0.2, 0.8]])}
    metrics = andor.health_metrics(nics, {("layers_0",): jnp.array([0.1, 0.2, 0.3])})
    assert float(metrics["floor/layers_0"]) == pytest.approx(1 / 3)
    assert float(metrics["ceiling/layers_0"]) == pytest.approx(1 / 3)
    assert float(metrics["floor/layers_2/branches_1_0"]) == pytest.approx(0.5)
    assert float(metrics["hypersat/layers_0"]) == pytest.approx(0.2)
    assert "hypersat/layers_2/branches_1_0" not in metrics
    line = andor.health_line(metrics, 0)
    assert line.startswith("health at the start of epoch 1: layers_0 floor 0.33 ceiling 0.33 hypersat 0.200, ")


# ------------------------------------------------------------------------------------------- the objective

def tiny_config(**andor_settings):
    config = ml_collections.ConfigDict({"loss": "cross_entropy", "objective": "andor"})
    config.andor = andor.default_settings()
    config.andor.num_scrambles = 2
    config.andor.update(andor_settings)
    return config


def test_warm_up_is_counted_in_steps():
    """Before ``loss2_only_steps`` the kernels get loss2's direction alone at the warm-up weight (the
    author's 0.07), whatever the epoch length; from that step on, the full mix."""
    model = tiny_andor()
    x, y = block_data(32, 0)
    params = models.project(model, jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"])
    key = jax.random.PRNGKey(1)
    updates = {}
    for steps_per_epoch in (1, 1000):
        objective = andor.get_objective(model, tiny_config(loss2_only_steps=3), steps_per_epoch)
        update = jax.jit(objective.update)
        for step in (2, 3):
            updates[steps_per_epoch, step] = update(params, {}, {}, x, y, key, 0.0, step)
    (warm, _, _, warm_metrics), (full, _, _, full_metrics) = updates[1, 2], updates[1, 3]
    assert float(warm_metrics["ce_weight"]) == 0.0 and float(full_metrics["ce_weight"]) == 1.0
    for step in (2, 3):
        jax.tree.map(np.testing.assert_array_equal, updates[1, step][0], updates[1000, step][0])
    for name in ("layers_0", "layers_4", "layers_6"):
        peaks = np.max(np.abs(np.asarray(warm[name]["kernel"])).reshape(-1, warm[name]["kernel"].shape[-1]), axis=0)
        np.testing.assert_allclose(peaks, 0.07, rtol=1e-5)          # loss2's per-neuron direction at 0.07
        assert not np.allclose(warm[name]["kernel"], full[name]["kernel"])


def test_andor_objective_on_a_baseline_updates_batch_statistics():
    model = Sequential((BatchNorm(), Flatten(), Dense(5), Activation("sigmoid"), Dense(3)))
    x, y = block_data(32, 1)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    params, model_state = variables["params"], {"batch_stats": variables["batch_stats"]}
    objective = andor.get_objective(model, tiny_config(mix="weighted", loss2_only_steps=0))
    grads, new_state, _, metrics = jax.jit(objective.update)(params, model_state, {}, x, y, jax.random.PRNGKey(1),
                                                               0.0, 0)
    assert not np.allclose(new_state["batch_stats"]["layers_0"]["mean"], model_state["batch_stats"]["layers_0"]["mean"])
    assert np.any(grads["layers_2"]["kernel"] != 0) and np.isfinite(float(metrics["loss2"]))


# ------------------------------------------------------------------------------------------- the LeNet, trained

STEPS, BATCH, TRAIN = 200, 50, 2000


@pytest.fixture(scope="module")
def lenet_run():
    """200 steps of `andor_lenet_fast` (the skip connection, the sensitive-range init) on 2,000 synthetic
    digits, batch 50, two scrambles: the first and last step's metrics and the trained network."""
    config = load_config("andor_lenet_fast")
    config.train.batch_size = BATCH
    config.train.andor.num_scrambles = 2
    images, labels = synthetic_digits(TRAIN + 500, 0)
    x, y = (images[..., None] / 255.0).astype(np.float32), labels.astype(np.int32)
    model = models.build_model(config.model)
    objective = andor.get_objective(model, config.train)
    optimizer = train.make_optimizer(config.train)
    projection = lambda p, step: models.project(model, p)  # noqa: E731
    state = train.init_state(model, optimizer, objective, x[:1], 0, projection)
    step = optimised(jax.jit(train.make_train_step(optimizer, objective, projection=projection)),
                     state, x[:BATCH], y[:BATCH])
    history = []
    for i in range(STEPS):
        start = (i * BATCH) % TRAIN
        state, metrics = step(state, x[start:start + BATCH], y[start:start + BATCH])
        if i in (0, STEPS - 1):
            history.append(jax.device_get(metrics))
    return {"model": model, "state": state, "first": history[0], "last": history[1],
            "x_test": x[TRAIN:], "y_test": y[TRAIN:], "x": x, "config": config}


def test_200_steps_leave_the_floor_and_beat_chance(lenet_run):
    model, state = lenet_run["model"], lenet_run["state"]
    logits = jax.jit(model.apply)({"params": state.params}, lenet_run["x_test"])
    accuracy = float(np.mean(np.argmax(logits, -1) == lenet_run["y_test"]))
    assert accuracy > 0.5, accuracy                                                # chance: 0.1
    assert lenet_run["last"]["floor/layers_0"] < 0.9
    last = {k: v for k, v in lenet_run["last"].items() if k.startswith("floor/")}
    assert sorted(last) == ["floor/layers_0", "floor/layers_10", "floor/layers_3", "floor/layers_7",
                            "floor/layers_9/branches_1_0"]
    assert all(v < 1.0 for v in last.values()), last                               # no layer stuck
    assert lenet_run["last"]["loss"] < lenet_run["first"]["loss"]


def test_the_skip_connection_is_projected_scrambled_and_bounded(lenet_run):
    model, state = lenet_run["model"], lenet_run["state"]
    branch = ("layers_9", "branches_1_0")
    # projected: every AND/OR kernel, the branch's included, within the author's set after any step
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), lenet_run["x"][:1])["params"]
    rng = np.random.default_rng(2)
    big = jax.tree.map(lambda s: jnp.asarray(rng.normal(5.0, 50.0, s.shape), jnp.float32), shapes)
    budget = lenet_run["config"].model.budget * lenet_run["config"].model.scale
    for params in (jax.jit(lambda p: models.project(model, p))(big), state.params):
        kernels = dict(andor_kernels(model, params))
        assert branch in kernels and len(kernels) == 5
        for path, kernel in kernels.items():
            p, n = norms(kernel)
            assert np.all(p <= budget * (1 + 1e-5)) and np.all(n <= p + 1e-4), path
    # scrambled: the branch has its loss2 term, and training moved it
    assert "hypersat/layers_9/branches_1_0" in lenet_run["last"]
    assert lenet_run["last"]["hypersat/layers_9/branches_1_0"] != 0.0
    initial = jax.jit(model.init)(jax.random.PRNGKey(0), lenet_run["x"][:1])["params"]
    assert not np.allclose(get_path(state.params, branch)["kernel"],
                           get_path(models.project(model, initial), branch)["kernel"])
    # bounded: sampled outputs of the network and of the branch lie within their interval bounds
    x, eps = jnp.asarray(lenet_run["x_test"][:4]), 0.05
    variables = {"params": state.params}
    boxes = jax.jit(lambda v, b: bounds.layer_intervals(model, v, b))(variables, bounds.input_box(x, eps, (0.0, 1.0)))
    noise = np.random.default_rng(3).uniform(-eps, eps, (16, *x.shape)).astype(np.float32)
    points = jnp.clip(x[None] + noise, 0.0, 1.0).reshape(-1, *x.shape[1:])
    outputs = jax.jit(lambda v, p: model.apply(v, p, method="outputs").outputs)(variables, points)
    for path in ((), branch, ("layers_9",)):
        values = np.asarray(outputs[path]).reshape(16, *boxes[path].lower.shape)
        assert np.all(values >= np.asarray(boxes[path].lower) - 1e-4), path
        assert np.all(values <= np.asarray(boxes[path].upper) + 1e-4), path
