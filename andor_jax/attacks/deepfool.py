"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard 2016, "DeepFool: a simple and accurate method to fool deep
neural networks"), L-inf and L2: a minimal-perturbation attack that linearises the classifier.

The reference class ``c`` is the initial top prediction.  At the current point, for every other class k,
``f_k = z_k - z_c`` and ``w_k = grad_x f_k``; the nearest linearised boundary is

    l = argmin_k |f_k| / ||w_k||_q,     q = 1 for L-inf, q = 2 for L2 (the dual norms),

and the step onto it (plus 1e-4) is ``r = (|f_l| / ||w_l||_1 + 1e-4) sign(w_l)`` for L-inf and
``r = (|f_l| / ||w_l||_2 + 1e-4) w_l / ||w_l||_2`` for L2.  Steps accumulate into ``r_total``; the iterate is
``x0 + (1 + overshoot) r_total`` clipped to the domain, and an example stops once it is misclassified.
The final point is clipped to the eps-ball ∩ domain, and the input counts as broken only if that clipped
point is misclassified.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from andor_jax.attacks import common
from andor_jax.attacks.oracle import LogitsFn, Oracle

DUAL_NORMS = {"linf": "l1", "l2": "l2"}


def _take_class(values: jax.Array, classes: jax.Array) -> jax.Array:
    """``values[classes[i], i]`` for (classes, batch, ...) ``values`` and (batch,) ``classes``."""
    return jax.vmap(lambda per_class, c: per_class[c], in_axes=(1, 0))(values, classes)


def deepfool_step(logits: jax.Array, jacobian: jax.Array, reference: jax.Array, norm: str) -> jax.Array:
    """The step ``r`` onto the nearest linearised boundary (module docstring), for logits (batch, classes)
    and their Jacobian (classes, batch, ...); zero where no boundary is reachable (zero gradients)."""
    f = logits - jnp.take_along_axis(logits, reference[:, None], axis=-1)          # (batch, classes)
    w = jacobian - _take_class(jacobian, reference)[None]                          # (classes, batch, ...)
    w_norm = jax.vmap(lambda w_k: common.per_example_norm(w_k, DUAL_NORMS[norm]))(w).T   # (batch, classes)
    is_reference = jax.nn.one_hot(reference, logits.shape[-1], dtype=bool)
    distance = jnp.where(is_reference | (w_norm == 0), jnp.inf, jnp.abs(f) / jnp.where(w_norm > 0, w_norm, 1.0))
    nearest = jnp.argmin(distance, axis=-1)
    length = jnp.take_along_axis(distance, nearest[:, None], axis=-1)[:, 0]
    length = jnp.where(jnp.isfinite(length), length + 1e-4, 0.0)
    direction = common.steepest_direction(_take_class(w, nearest), norm)
    return common.per_example(length, direction) * direction


@functools.partial(jax.jit, static_argnames=("oracle", "norm", "max_iter"))
def _deepfool(oracle: Oracle, x, y, key, eps, domain, overshoot, *, norm, max_iter) -> common.AttackResult:
    clean_key, loop_key, final_key = jax.random.split(key, 3)
    clean_logits = oracle.logits(x, clean_key)
    reference = jnp.argmax(clean_logits, axis=-1)
    query_keys = jax.random.split(loop_key, max_iter)

    def unfinished(state):
        iteration, _, _, active = state
        return (iteration < max_iter) & jnp.any(active)

    def iterate(state):
        iteration, x_t, total, active = state
        decision, logits, jacobian = oracle.logits_and_jacobian(x_t, query_keys[iteration])
        active = active & ~common.misclassified(decision, y)
        r = deepfool_step(logits, jacobian, reference, norm)
        total = total + jnp.where(common.per_example(active, r), r, 0.0)
        x_t = common.clip_to_domain(x + (1.0 + overshoot) * total, domain)
        return iteration + 1, x_t, total, active

    state = (0, x, jnp.zeros_like(x), ~common.misclassified(clean_logits, y))
    _, x_last, *_ = jax.lax.while_loop(unfinished, iterate, state)
    x_adv = common.project(x_last, x, eps, domain, norm)
    return common.AttackResult(x_adv, common.misclassified(oracle.logits(x_adv, final_key), y))


def deepfool(logits_fn: LogitsFn | Oracle, x: jax.Array, y: jax.Array, key: jax.Array, *, eps,
             domain=(0.0, 1.0), norm: str = "linf", max_iter: int = 50, overshoot: float = 0.02,
             gradient_logits_fn: LogitsFn | None = None) -> common.AttackResult:
    """DeepFool against ``logits_fn`` (see the module docstring).

    Args:
      logits_fn: the model, ``x -> logits`` (batch, classes), or an `Oracle`.
      x: (batch, ...) inputs inside ``domain``.
      y: (batch,) integer labels.
      key: PRNG key (used only by randomised models).
      eps: radius of the ball the final point is clipped to.
      domain: the input box ``(lo, hi)``.
      norm: ``'linf'`` or ``'l2'``.
      max_iter: the most linearisation steps.
      overshoot: the accumulated perturbation is scaled by ``1 + overshoot``.
      gradient_logits_fn: differentiated instead of ``logits_fn`` (same forward values).
    """
    oracle, eps, domain = common.prepare(logits_fn, x, y, key, eps=eps, domain=domain, norm=norm,
                                         gradient_logits_fn=gradient_logits_fn)
    common.check_positive_int("max_iter", max_iter)
    common.check_non_negative("overshoot", overshoot)
    return _deepfool(oracle, x, y, key, eps, domain, common.as_scalar(overshoot, x), norm=norm, max_iter=max_iter)
