"""Interval bound propagation: soundness by sampling, exactness for one affine layer, certification."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from andor_jax import bounds, models
from andor_jax.interval import Interval
from andor_jax.layers import Activation, AvgPool, BatchNorm, Concat, Conv, Dense, Dropout, Flatten, MaxPool

DOMAINS = [(0.0, 1.0), (-1.0, 1.0)]


def dense_network(activation: str):
    return models.Sequential((Dense(6), Activation(activation), BatchNorm(), Dropout(0.3),
                              Concat(((), (Dense(4), Activation(activation)))), Dense(3)))


def conv_network(activation: str):
    return models.Sequential((Conv(3, (3, 3), padding="SAME"), Activation(activation), MaxPool((2, 2)),
                              Conv(4, (3, 3)), BatchNorm(), Activation(activation), AvgPool((2, 2)),
                              Flatten(), Dense(3)))


def initialised(model, x, seed):
    """Parameters plus non-trivial BatchNorm statistics, so that its affine rule is exercised."""
    variables = model.init(jax.random.key(seed), x)
    rng = np.random.default_rng(seed)
    if "batch_stats" in variables:
        variables = dict(variables)
        variables["batch_stats"] = jax.tree.map(
            lambda s: jnp.asarray(rng.uniform(0.2, 2.0, s.shape), jnp.float32), variables["batch_stats"])
    return variables


def assert_contains(boxes, outputs, tol=1e-5):
    for index, (box, out) in enumerate(zip(boxes, outputs)):
        assert np.all(np.asarray(box.lower) <= np.asarray(out) + tol), f"layer {index}: below the lower bound"
        assert np.all(np.asarray(out) <= np.asarray(box.upper) + tol), f"layer {index}: above the upper bound"


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), activation=st.sampled_from(["relu", "leaky_relu", "sigmoid", "tanh", "mish"]),
       kind=st.sampled_from(["dense", "conv"]), domain=st.sampled_from(DOMAINS),
       eps=st.floats(0.0, 0.5))
def test_sampled_points_stay_inside_every_layer_interval(seed, activation, kind, domain, eps):
    rng = np.random.default_rng(seed)
    shape = (3, 5) if kind == "dense" else (3, 8, 8, 2)
    model = dense_network(activation) if kind == "dense" else conv_network(activation)
    x = rng.uniform(*domain, size=shape).astype(np.float32)
    variables = initialised(model, x, seed)
    box = bounds.input_box(x, eps, domain)
    boxes = bounds.layer_intervals(model, variables, box)
    for _ in range(20):  # uniform samples and corners of the box
        corner = rng.integers(0, 2, size=shape).astype(bool)
        for point in (rng.uniform(box.lower, box.upper), np.where(corner, box.lower, box.upper)):
            assert_contains(boxes, model.apply(variables, jnp.asarray(point, jnp.float32),
                                               method=models.Sequential.outputs))


def test_affine_layer_bounds_are_exact():
    rng = np.random.default_rng(0)
    model = models.Sequential((Dense(4),))
    x = rng.uniform(size=(2, 3)).astype(np.float32)
    variables = model.init(jax.random.key(1), x)
    box = Interval(jnp.asarray(x - 0.1), jnp.asarray(x + 0.2))
    out = bounds.propagate(model, variables, box)
    # the extremes of an affine map over a box are at its corners: enumerate all 2^3 of them
    corners = np.stack([np.where(np.array(c, bool), box.upper, box.lower)
                        for c in itertools.product([0, 1], repeat=3)], axis=1)  # (2, 8, 3)
    values = np.asarray(model.apply(variables, jnp.asarray(corners.reshape(-1, 3)))).reshape(2, 8, 4)
    np.testing.assert_allclose(out.lower, values.min(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.upper, values.max(axis=1), rtol=1e-5, atol=1e-6)


def test_mish_interval_contains_its_minimum():
    layer = models.Sequential((Activation("mish"),))
    box = Interval(jnp.array([[-3.0, -1.0, 0.5]]), jnp.array([[0.0, 2.0, 1.0]]))
    out = bounds.propagate(layer, {}, box)
    grid = np.linspace(box.lower, box.upper, 2001)
    values = np.asarray(grid * np.tanh(np.log1p(np.exp(grid))))
    np.testing.assert_allclose(out.lower, values.min(axis=0), atol=1e-4)
    np.testing.assert_allclose(out.upper, values.max(axis=0), atol=1e-4)




def test_layer_without_rule_is_named_in_the_error():
    class NoRule(models.nn.Module):
        def __call__(self, x, *, train=False):
            return x

    model = models.Sequential((Dense(3), NoRule()))
    variables = model.init(jax.random.key(0), jnp.ones((1, 2)))
    with pytest.raises(bounds.MissingIntervalRuleError, match="NoRule"):
        bounds.propagate(model, variables, Interval(jnp.zeros((1, 2)), jnp.ones((1, 2))))


def test_margin_bound_is_tighter_than_plain_comparison_and_exact_at_eps_zero():
    rng = np.random.default_rng(3)
    model = models.Sequential((Dense(16), Activation("relu"), Dense(5)))
    x = rng.uniform(size=(50, 8)).astype(np.float32)
    y = rng.integers(0, 5, 50)
    variables = model.init(jax.random.key(2), x)
    logits = np.asarray(model.apply(variables, x))
    exact = logits[np.arange(50), y][:, None] - logits
    at_zero = np.asarray(bounds.margin_lower_bounds(model, variables, x, y, 0.0, (0.0, 1.0)))
    mask = np.arange(5)[None] != y[:, None]
    np.testing.assert_allclose(at_zero[mask], exact[mask], rtol=1e-5, atol=1e-5)
    affine = np.asarray(bounds.margin_lower_bounds(model, variables, x, y, 0.05, (0.0, 1.0), "affine"))
    plain = np.asarray(bounds.margin_lower_bounds(model, variables, x, y, 0.05, (0.0, 1.0), "plain"))
    assert np.all(affine[mask] >= plain[mask] - 1e-5)
    assert np.any(affine[mask] > plain[mask] + 1e-3)


def test_certified_accuracy_is_monotone_in_eps_and_clean_at_zero():
    rng = np.random.default_rng(4)
    model = models.Sequential((Dense(16), Activation("relu"), Dense(3)))
    x = rng.uniform(size=(64, 6)).astype(np.float32)
    variables = model.init(jax.random.key(5), x)
    y = np.asarray(jnp.argmax(model.apply(variables, x), -1))
    accuracy = bounds.certified_accuracy(model, variables, x, y, [0.0, 0.001, 0.01, 0.1], domain=(0.0, 1.0),
                                         batch_size=20)
    values = list(accuracy.values())
    assert values[0] == 1.0
    assert all(a >= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        bounds.certified_accuracy(model, variables, x, y, [-0.1], domain=(0.0, 1.0))


def test_order_preserving_output_activation_does_not_change_the_certificate():
    rng = np.random.default_rng(6)
    core = (Dense(12), Activation("tanh"), Dense(4))
    with_sigmoid = models.Sequential((*core, Activation("sigmoid")))
    without = models.Sequential(core)
    x = rng.uniform(size=(40, 5)).astype(np.float32)
    variables = without.init(jax.random.key(7), x)
    y = np.asarray(jnp.argmax(without.apply(variables, x), -1))
    grid = [0.0, 0.02, 0.05, 0.2]
    assert bounds.last_affine_layer(with_sigmoid) == 2
    assert bounds.last_affine_layer(models.Sequential((*core, Activation("relu")))) is None
    assert (bounds.certified_accuracy(with_sigmoid, variables, x, y, grid, domain=(0.0, 1.0))
            == bounds.certified_accuracy(without, variables, x, y, grid, domain=(0.0, 1.0)))


@pytest.mark.parametrize("architecture", ["relu", "mwd"])
def test_attacked_points_stay_inside_the_bounds_and_certified_examples_are_never_broken(architecture):
    from andor_jax.attacks import pgd
    from andor_jax.layers.mwd import mwd_network

    rng = np.random.default_rng(8)
    layers = ((Dense(24), Activation("relu"), Dense(4)) if architecture == "relu"
              else mwd_network(hidden=(12,), num_classes=4, kinds=("u", "neg")))
    model = models.Sequential(tuple(layers))
    x = rng.uniform(size=(64, 10)).astype(np.float32)
    variables = model.init(jax.random.key(9), x)
    y = np.asarray(jnp.argmax(model.apply(variables, x), -1))  # every example correct when clean
    logits_fn = lambda inputs: model.apply(variables, inputs)  # noqa: E731
    eps = 0.1 if architecture == "relu" else 0.3  # some examples certified, some broken
    attacked = pgd(logits_fn, x, y, jax.random.PRNGKey(0), eps=eps, domain=(0.0, 1.0), steps=20, restarts=2,
                   loss="margin")
    boxes = bounds.layer_intervals(model, variables, bounds.input_box(jnp.asarray(x), eps, (0.0, 1.0)))
    assert_contains(boxes, model.apply(variables, attacked.x_adv, method=models.Sequential.outputs))
    certified = np.asarray(bounds.certified(model, variables, x, y, eps, (0.0, 1.0),
                                            "affine" if architecture == "relu" else "plain"))
    assert not np.any(certified & np.asarray(attacked.broken))
    assert 0 < certified.mean() <= 1 - np.asarray(attacked.broken).mean() < 1  # both sides non-trivial
