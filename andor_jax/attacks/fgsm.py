"""Single-step attacks and their iterated form.

- FGSM (Goodfellow, Shlens & Szegedy 2015, "Explaining and harnessing adversarial examples"), L-inf:
  ``x' = clip(x + eps sign(g))`` with ``g = grad_x L(f(x), y)``.
- FGM (the fast gradient method, L2): ``x' = clip(x + eps g / ||g||_2)``.
- I-FGSM / BIM (Kurakin, Goodfellow & Bengio 2017, "Adversarial examples in the physical world"): M signed
  steps of ``eps / M`` from ``x`` itself, clipped to the domain and the ball after every step; this is PGD
  without a random start, so it is implemented as `andor_jax.attacks.pgd.pgd`.

Here ``clip`` is the domain clip; a step of length exactly eps stays inside the ball.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from andor_jax.attacks import common
from andor_jax.attacks.losses import LOSSES
from andor_jax.attacks.oracle import LogitsFn, Oracle
from andor_jax.attacks.pgd import pgd


@functools.partial(jax.jit, static_argnames=("oracle", "norm", "loss"))
def _fgm(oracle: Oracle, x, y, key, eps, domain, *, norm, loss) -> common.AttackResult:
    gradient_key, adversarial_key = jax.random.split(key)
    clean_logits, _, grads = oracle.loss_and_grad(LOSSES[loss], x, y, gradient_key)
    x_step = common.project(x + eps * common.steepest_direction(grads, norm), x, eps, domain, norm)
    clean_broken = common.misclassified(clean_logits, y)
    step_broken = common.misclassified(oracle.logits(x_step, adversarial_key), y)
    keep_clean = common.per_example(clean_broken & ~step_broken, x)
    return common.AttackResult(jnp.where(keep_clean, x, x_step), clean_broken | step_broken)


def fgm(logits_fn: LogitsFn | Oracle, x: jax.Array, y: jax.Array, key: jax.Array, *, eps, domain=(0.0, 1.0),
        norm: str = "l2", loss: str = "ce", gradient_logits_fn: LogitsFn | None = None) -> common.AttackResult:
    """One step of length ``eps`` along the steepest-ascent direction of ``norm`` (L2 by default: FGM).

    Args:
      logits_fn: the model, ``x -> logits`` (batch, classes), or an `Oracle`.
      x: (batch, ...) inputs inside ``domain``.
      y: (batch,) integer labels.
      key: PRNG key (used only by randomised models).
      eps: radius of the ball.
      domain: the input box ``(lo, hi)``.
      norm: ``'l2'`` or ``'linf'``.
      loss: the loss whose gradient is followed (`andor_jax.attacks.losses`).
      gradient_logits_fn: differentiated instead of ``logits_fn`` (same forward values).
    """
    oracle, eps, domain = common.prepare(logits_fn, x, y, key, eps=eps, domain=domain, norm=norm, loss=loss,
                                         gradient_logits_fn=gradient_logits_fn)
    return _fgm(oracle, x, y, key, eps, domain, norm=norm, loss=loss)


def fgsm(logits_fn: LogitsFn | Oracle, x: jax.Array, y: jax.Array, key: jax.Array, *, eps,
         domain=(0.0, 1.0), loss: str = "ce", gradient_logits_fn: LogitsFn | None = None) -> common.AttackResult:
    """FGSM: ``clip(x + eps sign(grad_x L))``, the L-inf `fgm`."""
    return fgm(logits_fn, x, y, key, eps=eps, domain=domain, norm="linf", loss=loss,
               gradient_logits_fn=gradient_logits_fn)


def ifgsm(logits_fn: LogitsFn | Oracle, x: jax.Array, y: jax.Array, key: jax.Array, *, eps,
          domain=(0.0, 1.0), steps: int = 10, loss: str = "ce",
          gradient_logits_fn: LogitsFn | None = None) -> common.AttackResult:
    """I-FGSM: ``steps`` signed steps of ``eps / steps`` from ``x`` (no random start), each followed by the
    projection onto the L-inf ball ∩ domain; broken if any step misclassifies."""
    common.check_positive_int("steps", steps)
    return pgd(logits_fn, x, y, key, eps=eps, domain=domain, norm="linf", steps=steps, restarts=1,
               step_size=eps / steps, random_start=False, loss=loss, step_rule="sign",
               gradient_logits_fn=gradient_logits_fn)
