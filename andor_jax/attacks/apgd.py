"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks"), L-inf and L2, with the CE or DLR loss.

With ``P_S`` the projection onto the eps-ball ∩ domain, ``d(g)`` the steepest-ascent direction of the norm
and momentum ``alpha = 0.75``:

    x_1     = P_S(x_0 + eta d(g_0))
    z_{k+1} = P_S(x_k + eta d(g_k))
    x_{k+1} = P_S(x_k + alpha (z_{k+1} - x_k) + (1 - alpha)(x_k - x_{k-1})).

The step size starts at ``eta_0 = 2 eps`` and is halved, per example, at checkpoints ``w_j = ceil(p_j N)``
(``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``) when either
  1. fewer than ``rho (w_j - w_{j-1})`` steps since the last checkpoint increased the loss (rho = 0.75), or
  2. the step size was not halved at the last checkpoint and the best loss has not improved since;
after a halving the iterate restarts from the best point found (here without momentum).  The returned point
is a misclassified one if any was seen, otherwise the best-loss point.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from andor_jax.attacks import common
from andor_jax.attacks.losses import LOSSES
from andor_jax.attacks.oracle import LogitsFn, Oracle


def checkpoints(steps: int) -> tuple[int, ...]:
    """The iterations ``w_1 < w_2 < ...`` (all below ``steps``) at which the step size may be halved."""
    fractions = [0.0, 0.22]
    while True:
        step = max(fractions[-1] - fractions[-2] - 0.03, 0.06)
        if fractions[-1] + step > 1.0:
            break
        fractions.append(fractions[-1] + step)
    ceilings = (math.ceil(round(p * steps, 9)) for p in fractions[1:])  # round: 0.22 + 0.19 is not 0.41 in floats
    return tuple(sorted({w for w in ceilings if 0 < w < steps}))


def _schedule(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per iteration: whether it is a checkpoint, and the length of the window it closes."""
    is_checkpoint = np.zeros(steps, bool)
    window = np.ones(steps, np.float32)
    previous = 0
    for w in checkpoints(steps):
        is_checkpoint[w], window[w] = True, w - previous
        previous = w
    return is_checkpoint, window


@functools.partial(jax.jit, static_argnames=("oracle", "norm", "steps", "restarts", "random_start", "loss"))
def _apgd(oracle: Oracle, x, y, key, eps, domain, momentum, rho, *, norm, steps, restarts, random_start,
          loss) -> common.AttackResult:
    loss_fn = LOSSES[loss]
    is_checkpoint, window = _schedule(steps)
    clean_key, start_key, steps_key, final_key = jax.random.split(key, 4)
    clean_broken = common.misclassified(oracle.logits(x, clean_key), y)
    batch = x.shape[0]

    def one_restart(x_start, step_keys, final_key):
        def step(state, inputs):
            t, step_key, checkpoint, window_length = inputs
            (x_t, x_prev, eta, found, broken, best_x, best_grad, best_loss, previous_loss, successes,
             best_at_check, halved_at_check) = state
            logits, losses, grads = oracle.loss_and_grad(loss_fn, x_t, y, step_key)
            found, broken = common.record_misclassified(found, broken, x_t, logits, y)
            successes = successes + ((t > 0) & (losses > previous_loss))
            improved = losses > best_loss
            best_x = jnp.where(common.per_example(improved, x), x_t, best_x)
            best_grad = jnp.where(common.per_example(improved, x), grads, best_grad)
            best_loss = jnp.where(improved, losses, best_loss)
            previous_loss = losses

            oscillating = successes < rho * window_length
            stalled = ~halved_at_check & (best_loss <= best_at_check)
            halve = checkpoint & (oscillating | stalled)
            eta = jnp.where(halve, eta / 2, eta)
            back = common.per_example(halve, x)
            x_t = jnp.where(back, best_x, x_t)
            x_prev = jnp.where(back, best_x, x_prev)
            grads = jnp.where(back, best_grad, grads)
            previous_loss = jnp.where(halve, best_loss, previous_loss)
            successes = jnp.where(checkpoint, 0, successes)
            best_at_check = jnp.where(checkpoint, best_loss, best_at_check)
            halved_at_check = jnp.where(checkpoint, halve, halved_at_check)

            z = common.project(x_t + common.per_example(eta, x) * common.steepest_direction(grads, norm),
                               x, eps, domain, norm)
            weight = jnp.where(t == 0, 1.0, momentum)
            x_next = common.project(x_t + weight * (z - x_t) + (1 - weight) * (x_t - x_prev), x, eps, domain, norm)
            return (x_next, x_t, eta, found, broken, best_x, best_grad, best_loss, previous_loss, successes,
                    best_at_check, halved_at_check), None

        minus_inf = jnp.full((batch,), -jnp.inf, x.dtype)
        state = (x_start, x_start, jnp.full((batch,), 2.0, x.dtype) * eps, x, clean_broken, x_start,
                 jnp.zeros_like(x), minus_inf, minus_inf, jnp.zeros((batch,), jnp.int32), minus_inf,
                 jnp.zeros((batch,), bool))
        inputs = (jnp.arange(steps), step_keys, jnp.asarray(is_checkpoint), jnp.asarray(window))
        state, _ = jax.lax.scan(step, state, inputs)
        x_last, _, _, found, broken, best_x, _, best_loss, *_ = state
        logits = oracle.logits(x_last, final_key)
        found, broken = common.record_misclassified(found, broken, x_last, logits, y)
        last_loss = loss_fn(logits, y)
        improved = common.per_example(last_loss > best_loss, x)
        best_x = jnp.where(improved, x_last, best_x)
        best_loss = jnp.maximum(best_loss, last_loss)
        return jnp.where(common.per_example(broken, x), found, best_x), broken, best_loss

    x_adv, broken, best_loss = jax.vmap(one_restart)(
        common.starting_points(start_key, x, eps, domain, norm, restarts, random_start),
        jax.random.split(steps_key, (restarts, steps)), jax.random.split(final_key, restarts))
    return common.best_of_restarts(x_adv, broken, best_loss)


def apgd(logits_fn: LogitsFn | Oracle, x: jax.Array, y: jax.Array, key: jax.Array, *, eps,
         domain=(0.0, 1.0), norm: str = "linf", steps: int = 100, restarts: int = 1, loss: str = "ce",
         random_start: bool = True, momentum: float = 0.75, rho: float = 0.75,
         gradient_logits_fn: LogitsFn | None = None) -> common.AttackResult:
    """APGD against ``logits_fn`` (see the module docstring).

    Args:
      logits_fn: the model, ``x -> logits`` (batch, classes), or an `Oracle`.
      x: (batch, ...) inputs inside ``domain``.
      y: (batch,) integer labels.
      key: PRNG key for the random starts (and the draws of a randomised model).
      eps: radius of the ball in the ``norm``.
      domain: the input box ``(lo, hi)``.
      norm: ``'linf'`` or ``'l2'``.
      steps: iterations ``N`` per restart (one gradient each).
      restarts: independent runs, in parallel.
      loss: ``'ce'`` or ``'dlr'`` (any loss of `andor_jax.attacks.losses` is accepted).
      random_start: start at a uniform point of the ball rather than at ``x``.
      momentum: ``alpha``, the weight of the new step against the previous one.
      rho: the fraction of improving steps below which the step size is halved.
      gradient_logits_fn: differentiated instead of ``logits_fn`` (same forward values).
    """
    oracle, eps, domain = common.prepare(logits_fn, x, y, key, eps=eps, domain=domain, norm=norm, loss=loss,
                                         gradient_logits_fn=gradient_logits_fn)
    common.check_positive_int("steps", steps)
    common.check_positive_int("restarts", restarts)
    for setting, value in (("momentum", momentum), ("rho", rho)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{setting} must lie in [0, 1], got {value}")
    return _apgd(oracle, x, y, key, eps, domain, common.as_scalar(momentum, x), common.as_scalar(rho, x),
                 norm=norm, steps=steps, restarts=restarts, random_start=bool(random_start), loss=loss)
