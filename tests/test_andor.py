"""AND/OR layers (Fontana): L1 projection, AND-type activation, interval rules, LeNet builders, the
'andor' objective and weight concentration."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from andor_jax import andor_training, models, train
from andor_jax.interval import Interval
from andor_jax.layers.andor import (AndActivation, AndOrConv, AndOrDense, and_activation, andor_lenet, l1_project,
                                    lenet)
from andor_jax.layers.standard import Activation, BatchNorm, Conv, Dense, Flatten, MaxPool
from andor_jax.models import Sequential


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

LAYERS = {
    "dense": (AndOrDense(4, scale=2.0, bias_bound=0.5), (3, 6)),
    "conv": (AndOrConv(3, kernel_size=(3, 3), scale=2.0, padding="SAME"), (2, 5, 5, 2)),
    "and": (AndActivation("and"), (3, 40)),
    "sigmoid": (AndActivation("sigmoid"), (3, 40)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_interval_rules_are_sound_by_sampling(name):
    layer, shape = LAYERS[name]
    rng = np.random.default_rng(3)
    shapes = jax.eval_shape(layer.init, jax.random.PRNGKey(0), jnp.zeros(shape))
    variables = jax.tree.map(lambda s: rng.uniform(-1, 1, s.shape).astype(np.float32), shapes)
    centre = rng.uniform(-1.5, 1.5, shape).astype(np.float32)
    radius = rng.uniform(0, 0.6, shape).astype(np.float32)
    corners = rng.choice([-1.0, 1.0], (200, *shape))
    points = (np.concatenate([corners, rng.uniform(-1, 1, (200, *shape))]) * radius + centre).astype(np.float32)

    @jax.jit
    def bounds_and_outputs(variables, centre, radius, points):
        bounds = layer.apply(variables, Interval.from_centre_radius(centre, radius), method="interval")
        return bounds, jax.vmap(lambda p: layer.apply(variables, p))(points)

    bounds, outputs = bounds_and_outputs(variables, centre, radius, points)
    assert np.all(outputs >= bounds.lower - 1e-5) and np.all(outputs <= bounds.upper + 1e-5)
    assert np.all(bounds.lower <= bounds.upper)


def test_certification_affine_view_of_the_last_layer():
    layer = AndOrDense(3, scale=4.0)
    rng = np.random.default_rng(4)
    variables = {"params": {"kernel": rng.normal(size=(5, 3)), "bias": rng.normal(size=3)}}
    kernel, bias = layer.apply(variables, method="affine")
    x = rng.normal(size=(2, 5))
    np.testing.assert_allclose(x @ kernel + bias, layer.apply(variables, x), rtol=1e-6)


# ------------------------------------------------------------------------------------------- builders

def test_lenet_builders_share_the_architecture():
    x = jnp.zeros((2, 28, 28, 1))
    defended, control = Sequential(andor_lenet()), Sequential(lenet())
    shapes = [jax.tree.map(jnp.shape, jax.eval_shape(m.init, jax.random.PRNGKey(0), x)["params"])
              for m in (defended, control)]
    assert shapes[0] == shapes[1]
    assert shapes[0]["layers_7"]["kernel"] == (256, 120)        # 4 x 4 x 16 flattened
    assert [type(l) for l in defended.layers if hasattr(l, "project")] == [AndOrConv, AndOrConv] + [AndOrDense] * 3
    assert [type(l) for l in control.layers if isinstance(l, (Conv, Dense))] == [Conv, Conv] + [Dense] * 3
    assert [l.bias_bound for l in defended.layers if hasattr(l, "project")] == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert models.build_model(ml_collections.ConfigDict({"name": "andor_lenet"})).layers[-1].features == 10
    with pytest.raises(ValueError, match="one bias bound per affine layer"):
        andor_lenet(bias_bounds=(1.0,))


# ------------------------------------------------------------------------------------------- training

def test_author_mix_by_hand():
    mixed = andor_training.author_mix({"w": jnp.array([2.0, -4.0])}, {"w": jnp.array([1.0, 0.5])}, 1.0, 0.7)
    np.testing.assert_allclose(mixed["w"], [1.0, -0.65])           # clip(0.5 + 0.7, -1 + 0.35)
    zero = andor_training.author_mix({"w": jnp.array([0.0])}, {"w": jnp.array([0.0])}, 1.0, 0.7)
    np.testing.assert_allclose(zero["w"], [0.0])


def test_weight_concentration_scales_kernels_and_leaves_biases():
    params = {"kernel": jnp.array([[0.5, -2.0], [-0.25, 1.0]]), "bias": jnp.array([0.0, 3.0])}
    grads = jax.tree.map(jnp.ones_like, params)
    config = ml_collections.ConfigDict({"gradient_transforms": "weight_concentration"})
    plain = train.GRADIENT_TRANSFORMS["weight_concentration"](config)
    updates, _ = plain.update(grads, plain.init(params), params)
    np.testing.assert_allclose(updates["kernel"], [[0.5, 2.0], [0.25, 1.0]])
    np.testing.assert_allclose(updates["bias"], [1.0, 1.0])
    per_neuron = andor_training.weight_concentration(per_neuron=True)
    updates, _ = per_neuron.update(grads, per_neuron.init(params), params)
    np.testing.assert_allclose(updates["kernel"], [[1.0, 1.0], [0.5, 0.5]])
    with pytest.raises(ValueError, match="needs the parameters"):
        per_neuron.update(grads, per_neuron.init(params))


def test_unknown_andor_setting_is_named():
    config = ml_collections.ConfigDict({"loss": "cross_entropy", "andor": {"scrambles": 3}})
    with pytest.raises(ValueError, match="train.andor.scrambles"):
        andor_training.settings_of(config)


def test_andor_objective_steps_reduce_both_losses():
    model = tiny_andor()
    config = ml_collections.ConfigDict({"loss": "cross_entropy", "objective": "andor", "optimizer": "sgd",
                                        "learning_rate": 0.05, "momentum": 0.9,
                                        "gradient_transforms": "weight_concentration"})
    config.andor = andor_training.default_settings()
    config.andor.num_scrambles = 2
    config.andor.loss2_only_epochs = 0
    optimizer = train.make_optimizer(config)
    x, y = block_data(64, 0)
    projection = lambda p: models.project(model, p)  # noqa: E731
    state = train.init_state(model, optimizer, x[:1], 0, projection)
    step = jax.jit(train.make_train_step(optimizer, train.make_objective(model, config), projection=projection))
    history = []
    for _ in range(20):
        state, metrics = step(state, x, y)
        history.append((float(metrics["loss"]), float(metrics["loss2"])))
    first, last = np.mean(history[:3], axis=0), np.mean(history[-3:], axis=0)
    assert np.all(last < first), history
    p, n = norms(np.asarray(state.params["layers_4"]["kernel"]))
    assert np.all(p <= 1 + 1e-5) and np.all(n <= p + 1e-5)


def test_andor_objective_updates_batch_statistics_and_works_on_baselines():
    model = Sequential((BatchNorm(), Flatten(), Dense(5), Activation("sigmoid"), Dense(3)))
    config = ml_collections.ConfigDict({"loss": "cross_entropy"})
    x, y = block_data(32, 1)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    params, model_state = variables["params"], {"batch_stats": variables["batch_stats"]}
    objective = andor_training.andor_objective(model, config)
    grads, new_state, metrics = jax.jit(objective)(params, model_state, x, y, jax.random.PRNGKey(1), 0.0, 0)
    assert not np.allclose(new_state["batch_stats"]["layers_0"]["mean"], model_state["batch_stats"]["layers_0"]["mean"])
    assert np.any(grads["layers_2"]["kernel"] != 0) and np.isfinite(float(metrics["loss2"]))


def test_first_epochs_train_on_loss2_alone():
    """During ``loss2_only_epochs`` the mix gets the cross-entropy gradient with weight 0 (the author's
    warm-up), then the configured weight, within one compiled objective."""
    model = tiny_andor()
    config = ml_collections.ConfigDict({"loss": "cross_entropy"})
    config.andor = andor_training.default_settings()
    config.andor.num_scrambles = 2
    config.andor.loss2_only_epochs = 2
    x, y = block_data(32, 0)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
    objective = jax.jit(andor_training.andor_objective(model, config, steps_per_epoch=3))
    key = jax.random.PRNGKey(1)
    warm, _, warm_metrics = objective(params, {}, x, y, key, 1.0, 5)
    full, _, full_metrics = objective(params, {}, x, y, key, 1.0, 6)
    assert float(warm_metrics["ce_weight"]) == 0.0 and float(full_metrics["ce_weight"]) == 1.0
    config.andor.ce_weight = 0.0
    loss2_only, _, _ = jax.jit(andor_training.andor_objective(model, config))(params, {}, x, y, key, 1.0, 0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), warm, loss2_only)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(warm), jax.tree.leaves(full)))
