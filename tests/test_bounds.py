"""Interval bound propagation through networks: exactness for one affine layer, composites, certification.
Each layer type's own rule is checked by `tests/test_layer_conformance.py`."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from andor_jax import bounds, models
from andor_jax.interval import Interval
from andor_jax.layers import Activation, Concat, Dense, Layer

def assert_contains(boxes, outputs, tol=1e-5):
    """Every layer's output inside its box (both keyed by path)."""
    assert set(boxes) == set(outputs)
    for path, box in boxes.items():
        out = np.asarray(outputs[path])
        assert np.all(np.asarray(box.lower) <= out + tol), f"{path}: below the lower bound"
        assert np.all(out <= np.asarray(box.upper) + tol), f"{path}: above the upper bound"


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
    class NoRule(Layer):
        def __call__(self, x, *, train=False, rho=None):
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


def test_certified_accuracy_over_a_grid_equals_certifying_each_eps_alone():
    """`certified_accuracy` walks the grid upwards and re-propagates only the examples still certified;
    certifying every eps on its own, with every example, must give the same fractions."""
    rng = np.random.default_rng(4)
    model = models.Sequential((Dense(16), Activation("relu"), Dense(3)))
    x = rng.uniform(size=(64, 6)).astype(np.float32)
    variables = model.init(jax.random.key(5), x)
    y = rng.integers(0, 3, 64)
    grid = [0.03, 0.0, 0.001, 0.01, 0.1]
    accuracy = bounds.certified_accuracy(model, variables, x, y, grid, domain=(0.0, 1.0), batch_size=20)
    alone = {e: float(np.mean(np.asarray(bounds.certified(model, variables, x, y, e, (0.0, 1.0))))) for e in grid}
    assert list(accuracy) == grid and accuracy == alone
    clean = np.asarray(jnp.argmax(model.apply(variables, x), -1)) == y
    assert accuracy[0.0] == clean.mean() and 0 < accuracy[0.0] < 1
    assert len(set(alone.values())) >= 3   # the grid separates examples
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


@pytest.mark.parametrize("architecture", ["relu", "mwd", "skip"])
def test_attacked_points_stay_inside_the_bounds_and_certified_examples_are_never_broken(architecture):
    from andor_jax.attacks import pgd
    from andor_jax.models import mwd

    rng = np.random.default_rng(8)
    model = {"relu": models.Sequential((Dense(24), Activation("relu"), Dense(4))),
             "mwd": mwd.get_model(hidden=(12,), num_classes=4, kinds=("u", "neg")),
             "skip": models.Sequential((Dense(24), Activation("tanh"), Concat(((), (Dense(12), Activation("relu")))),
                                        Dense(4)))}[architecture]
    x = rng.uniform(size=(64, 10)).astype(np.float32)
    variables = model.init(jax.random.key(9), x)
    y = np.asarray(jnp.argmax(model.apply(variables, x), -1))  # every example correct when clean
    logits_fn = lambda inputs: model.apply(variables, inputs)  # noqa: E731
    eps = {"relu": 0.1, "mwd": 0.3, "skip": 0.05}[architecture]  # some examples certified, some broken
    attacked = pgd(logits_fn, x, y, jax.random.PRNGKey(0), eps=eps, domain=(0.0, 1.0), steps=20, restarts=2,
                   loss="margin")
    boxes = bounds.layer_intervals(model, variables, bounds.input_box(jnp.asarray(x), eps, (0.0, 1.0)))
    assert_contains(boxes, model.apply(variables, attacked.x_adv, method=models.Sequential.outputs).outputs)
    certified = np.asarray(bounds.certified(model, variables, x, y, eps, (0.0, 1.0),
                                            "plain" if architecture == "mwd" else "affine"))
    assert not np.any(certified & np.asarray(attacked.broken))
    assert 0 < certified.mean() <= 1 - np.asarray(attacked.broken).mean() < 1  # both sides non-trivial
