"""Pseudo-derivative primitives against hand-derived values (Agrawal, de Alfaro & Helmbold, sec. 3.1)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from andor_jax.pseudograd import pseudo_exp, shared_feedback_max

Z = jnp.array([0.0, 3.0, 8.0])


def exp_grad(z, rho):
    return jax.grad(lambda t: jnp.sum(pseudo_exp(t, rho)))(z)


def max_grad(z, rho, axis=-1):
    return jax.grad(lambda t: jnp.sum(shared_feedback_max(t, rho, axis)))(z)


def test_pseudo_exp_forward_is_exp_for_every_rho():
    for rho in (None, 0.0, 0.5, 1.0):
        np.testing.assert_allclose(pseudo_exp(Z, rho), np.exp(-np.asarray(Z)), rtol=1e-6)


@pytest.mark.parametrize("rho, expected", [
    (1.0, [-1.0, -1 / 2, -1 / 3]),                       # -1 / sqrt(1 + z)
    (0.0, [-1.0, -np.exp(-3.0), -np.exp(-8.0)]),         # -exp(-z)
    (None, [-1.0, -np.exp(-3.0), -np.exp(-8.0)]),
    (0.25, [-1.0, -(0.25 / 2 + 0.75 * np.exp(-3.0)), -(0.25 / 3 + 0.75 * np.exp(-8.0))]),
])
def test_pseudo_exp_backward(rho, expected):
    np.testing.assert_allclose(exp_grad(Z, rho), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(exp_grad)(Z, rho), expected, rtol=1e-6)


def test_pseudo_exp_scales_incoming_cotangent():
    _, vjp = jax.vjp(lambda t: pseudo_exp(t, 1.0), Z)
    np.testing.assert_allclose(vjp(jnp.array([2.0, -4.0, 3.0]))[0], [-2.0, 2.0, -1.0], rtol=1e-6)


@pytest.mark.parametrize("rho, expected", [
    (1.0, [np.exp(-2.0), 1.0, np.exp(-1.0)]),            # exp(z_i - max z), not normalised
    (0.0, [0.0, 1.0, 0.0]),                              # one-hot at the argmax
    (0.5, [0.5 * np.exp(-2.0), 1.0, 0.5 * np.exp(-1.0)]),
])
def test_shared_feedback_max_backward(rho, expected):
    z = jnp.array([1.0, 3.0, 2.0])
    assert shared_feedback_max(z, rho) == 3.0
    np.testing.assert_allclose(max_grad(z, rho), expected, rtol=1e-6)


def test_true_max_splits_ties_like_jax():
    z = jnp.array([3.0, 1.0, 3.0])
    np.testing.assert_allclose(max_grad(z, None), [0.5, 0.0, 0.5])
    np.testing.assert_allclose(max_grad(z, None), jax.grad(jnp.max)(z))
    np.testing.assert_allclose(max_grad(z, 1.0), [1.0, np.exp(-2.0), 1.0], rtol=1e-6)


def test_shared_feedback_max_other_axis():
    z = jnp.array([[1.0, 5.0], [2.0, 4.0]])
    np.testing.assert_allclose(shared_feedback_max(z, 1.0, axis=0), [2.0, 5.0])
    np.testing.assert_allclose(max_grad(z, 1.0, axis=0), [[np.exp(-1.0), 1.0], [1.0, np.exp(-1.0)]], rtol=1e-6)


def test_vmap_over_inputs_and_rho():
    z = jnp.array([[1.0, 3.0, 2.0], [0.0, -1.0, 4.0]])
    rhos = jnp.array([1.0, 0.0])
    grads = jax.jit(jax.vmap(max_grad))(z, rhos)
    np.testing.assert_allclose(grads, [[np.exp(-2.0), 1.0, np.exp(-1.0)], [0.0, 0.0, 1.0]], rtol=1e-6)
    exp_grads = jax.vmap(exp_grad)(jnp.stack([Z, Z]), rhos)
    np.testing.assert_allclose(exp_grads[0], [-1.0, -1 / 2, -1 / 3], rtol=1e-6)
    np.testing.assert_allclose(exp_grads[1], -np.exp(-np.asarray(Z)), rtol=1e-6)


def test_rho_gets_zero_cotangent():
    def loss(rho):
        return jnp.sum(pseudo_exp(shared_feedback_max(jnp.array([[1.0, 2.0]]), rho), rho))

    assert jax.grad(loss)(0.7) == 0.0


def test_changing_rho_compiles_once():
    traces = []

    def step(z, rho):
        traces.append(None)
        return jax.grad(lambda t: jnp.sum(pseudo_exp(shared_feedback_max(t, rho), rho)))(z)

    jitted = jax.jit(step)
    z = jnp.array([[1.0, 3.0, 2.0]])
    first, last = jitted(z, 1.0), None
    for rho in (0.9, 0.5, 0.1, 0.0):
        last = jitted(z, rho)
    assert len(traces) == 1
    assert jitted._cache_size() == 1
    assert not np.allclose(first, last)


def test_rho_must_be_scalar():
    with pytest.raises(ValueError, match="rho must be a scalar"):
        pseudo_exp(Z, jnp.ones(3))
    with pytest.raises(ValueError, match="at least one axis"):
        shared_feedback_max(jnp.array(1.0))


def test_rho_outside_the_unit_interval_is_clipped():
    z = jnp.array([1.0, 3.0, 2.0])
    np.testing.assert_allclose(max_grad(z, 2.0), max_grad(z, 1.0))
    np.testing.assert_allclose(exp_grad(Z, -1.0), exp_grad(Z, 0.0))
