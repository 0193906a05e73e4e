"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks"), L-inf and L2, with the CE or DLR loss.

With ``P_S`` the projection onto the eps-ball ∩ domain, ``d(g)`` the steepest-ascent direction of the norm
and momentum ``alpha = 0.75``:

    x_1     = P_S(x_0 + eta d(g_0))
    z_{k+1} = P_S(x_k + eta d(g_k))
    x_{k+1} = P_S(x_k + alpha (z_{k+1} - x_k) + (1 - alpha)(x_k - x_{k-1})).

The step size starts at ``eta_0 = 2 eps`` and is halved, per example, at checkpoints ``w_j = ceil(p_j N)``
(``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``) when either
  1. fewer than ``improving_fraction (w_j - w_{j-1})`` steps since the last checkpoint increased the loss
     (the paper's rho = 0.75; named apart from the pseudo-gradient mix rho and AdaDelta's rho), or
  2. the step size was not halved at the last checkpoint and the best loss has not improved since;
after a halving the iterate restarts from the best point found (here without momentum).  The returned point
is a misclassified one if any was seen, otherwise the best-loss point.

Given (batch, k) ``target`` classes, the loss is the targeted one towards them (`TARGETED_LOSSES` of
`andor_jax.attacks.losses`), ``restarts`` runs per target, all k x restarts runs vmapped: APGD-T
(`andor_jax.attacks.targeted`).

Every quantity above is per input, so the inputs already broken by some restart leave the batch every
``compact_every`` iterations (`andor_jax.attacks.compaction`) without changing the others' iterations.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from andor_jax.attacks import common, compaction
from andor_jax.attacks.losses import TARGETED_LOSSES, loss_function
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


class SearchState(NamedTuple):
    """Per input and restart, leaves of shape (batch, restarts, ...): the iterate and the one before it, the
    step size, the first misclassified point and whether there is one, the best point, its gradient and
    loss, the last loss, the steps that raised the loss since the last checkpoint, and the best loss and
    whether the step size was halved at the last checkpoint."""

    x_t: jax.Array
    x_prev: jax.Array
    eta: jax.Array
    found: jax.Array
    broken: jax.Array
    best_x: jax.Array
    best_grad: jax.Array
    best_loss: jax.Array
    previous_loss: jax.Array
    successes: jax.Array
    best_at_check: jax.Array
    halved_at_check: jax.Array


def _over_restarts(fn):
    """``fn(x, y, target, state, key)`` vmapped over the restart axis 1 of the targets and the state and axis 0
    of the keys."""
    return jax.vmap(fn, in_axes=(None, None, 1, 1, 0), out_axes=1)


@functools.partial(jax.jit, static_argnames=("oracle", "norm", "restarts", "random_start"))
def _start(oracle: Oracle, x, y, key, eps, domain, *, norm, restarts, random_start) -> SearchState:
    clean_key, start_key = jax.random.split(key)
    clean_broken = common.misclassified(oracle.logits(x, clean_key), y)
    x_start = jnp.moveaxis(common.starting_points(start_key, x, eps, domain, norm, restarts, random_start), 0, 1)
    batch = x.shape[0]

    def per_restart(value):
        return jnp.broadcast_to(value[:, None], (batch, restarts) + value.shape[1:])

    minus_inf = per_restart(jnp.full((batch,), -jnp.inf, x.dtype))
    return SearchState(x_start, x_start, per_restart(jnp.full((batch,), 2.0, x.dtype) * eps), per_restart(x),
                       per_restart(clean_broken), x_start, jnp.zeros_like(x_start), minus_inf, minus_inf,
                       per_restart(jnp.zeros((batch,), jnp.int32)), minus_inf, per_restart(jnp.zeros((batch,), bool)))


@functools.partial(jax.jit, static_argnames=("oracle", "norm", "steps", "loss"))
def _iterate(oracle: Oracle, x, y, target, state: SearchState, step_keys, first, stop, eps, domain, momentum,
             improving_fraction, *, norm, steps, loss) -> SearchState:
    """Iterations ``first, ..., stop - 1`` of every restart (fewer once every input is broken)."""
    is_checkpoint, window = (jnp.asarray(a) for a in _schedule(steps))

    def step(x, y, target, state: SearchState, step_key, t):
        logits, losses, grads = oracle.loss_and_grad(loss_function(loss, target), state.x_t, y, step_key)
        found, broken = common.record_misclassified(state.found, state.broken, state.x_t, logits, y)
        successes = state.successes + ((t > 0) & (losses > state.previous_loss))
        improved = losses > state.best_loss
        best_x = jnp.where(common.per_example(improved, x), state.x_t, state.best_x)
        best_grad = jnp.where(common.per_example(improved, x), grads, state.best_grad)
        best_loss = jnp.where(improved, losses, state.best_loss)

        checkpoint = is_checkpoint[t]
        oscillating = successes < improving_fraction * window[t]
        stalled = ~state.halved_at_check & (best_loss <= state.best_at_check)
        halve = checkpoint & (oscillating | stalled)
        eta = jnp.where(halve, state.eta / 2, state.eta)
        back = common.per_example(halve, x)
        x_t = jnp.where(back, best_x, state.x_t)
        x_prev = jnp.where(back, best_x, state.x_prev)
        grads = jnp.where(back, best_grad, grads)

        z = common.project(x_t + common.per_example(eta, x) * common.steepest_direction(grads, norm),
                           x, eps, domain, norm)
        weight = jnp.where(t == 0, 1.0, momentum)
        x_next = common.project(x_t + weight * (z - x_t) + (1 - weight) * (x_t - x_prev), x, eps, domain, norm)
        return SearchState(x_next, x_t, eta, found, broken, best_x, best_grad, best_loss,
                           jnp.where(halve, best_loss, losses), jnp.where(checkpoint, 0, successes),
                           jnp.where(checkpoint, best_loss, state.best_at_check),
                           jnp.where(checkpoint, halve, state.halved_at_check))

    def unfinished(carry):
        t, state = carry
        return (t < stop) & ~jnp.all(jnp.any(state.broken, axis=1))

    def one_step(carry):
        t, state = carry
        return t + 1, _over_restarts(lambda *args: step(*args, t))(x, y, target, state, step_keys[:, t])

    _, state = jax.lax.while_loop(unfinished, one_step, (first, state))
    return state


@functools.partial(jax.jit, static_argnames=("oracle", "loss"))
def _finish(oracle: Oracle, x, y, target, state: SearchState, final_keys, *, loss) -> common.AttackResult:
    """The last iterate is checked too; per input, a misclassified point of some restart, otherwise the
    best-loss point over the restarts."""
    def one_restart(x, y, target, state: SearchState, final_key):
        logits, last_loss, _ = oracle.loss_and_grad(loss_function(loss, target), state.x_t, y, final_key)
        found, broken = common.record_misclassified(state.found, state.broken, state.x_t, logits, y)
        best_x = jnp.where(common.per_example(last_loss > state.best_loss, x), state.x_t, state.best_x)
        return jnp.where(common.per_example(broken, x), found, best_x), broken, jnp.maximum(state.best_loss, last_loss)

    x_adv, broken, best_loss = _over_restarts(one_restart)(x, y, target, state, final_keys)
    return common.best_of_restarts(*(jnp.moveaxis(a, 1, 0) for a in (x_adv, broken, best_loss)))


def apgd(logits_fn: LogitsFn | Oracle, x: jax.Array, y: jax.Array, key: jax.Array, *, eps,
         domain=(0.0, 1.0), norm: str = "linf", steps: int = 100, restarts: int = 1, loss: str = "ce",
         random_start: bool = True, momentum: float = 0.75, improving_fraction: float = 0.75,
         gradient_logits_fn: LogitsFn | None = None, compact_every: int | None = 10,
         target: jax.Array | None = None) -> common.AttackResult:
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
      improving_fraction: the fraction of loss-raising steps between two checkpoints below which the step
        size is halved (the paper's rho).
      gradient_logits_fn: differentiated instead of ``logits_fn`` (same forward values).
      compact_every: iterations between two compactions of the batch (inputs broken by some restart leave
        it, `andor_jax.attacks.compaction`); None keeps the whole batch.  Inside a caller's ``jax.jit`` the
        batch is never compacted.  The verdict and the points are the same either way for a deterministic
        model; the iterations stop once every input is broken.
      target: (batch, k) classes to aim at with the targeted form of ``loss`` (``'ce'``, ``'margin'`` or
        ``'dlr'``), ``restarts`` runs for each of the k (vmapped together); None: untargeted.
    """
    oracle, eps, domain = common.prepare(logits_fn, x, y, key, eps=eps, domain=domain, norm=norm, loss=loss,
                                         gradient_logits_fn=gradient_logits_fn)
    common.check_positive_int("steps", steps)
    common.check_positive_int("restarts", restarts)
    if compact_every is not None:
        common.check_positive_int("compact_every", compact_every)
    if target is not None:
        common.check_choice("targeted loss", loss, TARGETED_LOSSES)
        target = jnp.repeat(jnp.asarray(target).reshape(jnp.shape(y)[0], -1), restarts, axis=1)
        restarts = target.shape[1]
    for setting, value in (("momentum", momentum), ("improving_fraction", improving_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{setting} must lie in [0, 1], got {value}")
    start_key, steps_key, final_key = jax.random.split(key, 3)
    state = _start(oracle, x, y, start_key, eps, domain, norm=norm, restarts=restarts, random_start=bool(random_start))
    step_keys = jax.random.split(steps_key, (restarts, steps))
    momentum, improving_fraction = common.as_scalar(momentum, x), common.as_scalar(improving_fraction, x)

    def iterate(operands, state, first, stop):
        return _iterate(oracle, *operands, state, step_keys, first, stop, eps, domain, momentum, improving_fraction,
                        norm=norm, steps=steps, loss=loss)

    operands = (x, y, target)
    if compact_every is None or common.traced(x, y, key, eps):
        state = iterate(operands, state, 0, steps)
    else:
        state = compaction.run_compacting(iterate, operands, state, start=0, stop=steps, every=compact_every,
                                          finished=lambda state: jnp.any(state.broken, axis=1))
    return _finish(oracle, x, y, target, state, jax.random.split(final_key, restarts), loss=loss)
