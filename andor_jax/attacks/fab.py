"""The targeted fast adaptive boundary attack, FAB-T, L-inf (Croce & Hein 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"): a minimal-perturbation attack, as AutoAttack runs it.

For the target class ``t``, ``f(x) = z_t(x) - z_y(x)`` (negative while ``x`` is not pushed over to ``t``) is
linearised at the iterate ``x_k``: the boundary is the hyperplane ``{z : <w, z> = b}`` with ``w = grad f(x_k)``
and ``b = <w, x_k> - f(x_k)``.  With ``P`` the minimal L-inf step from a point onto that hyperplane within the
input box (`hyperplane_step`), ``d_1 = P(x_k)`` and ``d_2 = P(x_0)`` (from the original input ``x_0``), and

    alpha   = min(max(||d_1|| / (||d_1|| + ||d_2||), 0), alpha_max)
    x_{k+1} = clip((x_k + eta d_1)(1 - alpha) + (x_0 + eta d_2) alpha),

a step onto the boundary, biased towards the original input (the adaptive part), with extrapolation
``eta > 1``.  Whenever ``x_{k+1}`` is misclassified it is recorded if it is the nearest adversarial point so
far, and the iterate is pulled back towards ``x_0``: ``x_{k+1} <- x_0 + beta (x_{k+1} - x_0)``.  Restarts
after the first start at ``x_0 + (eps / 2) u / ||u||_inf`` with ``u`` uniform in ``[-1, 1]^d``.

As the reference implementation does under a threat model, an input is broken when the attack finds an
adversarial point within eps; here, like DeepFool (`andor_jax.attacks.deepfool`), the nearest point found
(or the last iterate) is clipped to the eps-ball ∩ domain and judged there, which counts every point the
reference counts.  An input is finished once a point within eps is found, and finished inputs leave the
batch every ``compact_every`` iterations (`andor_jax.attacks.compaction`).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from andor_jax.attacks import common, compaction
from andor_jax.attacks.losses import loss_function
from andor_jax.attacks.oracle import LogitsFn, Oracle


BISECTION_STEPS = 40  # halvings of [0, largest room]: past float32's resolution on any box


def hyperplane_step(p: jax.Array, w: jax.Array, b: jax.Array, domain) -> jax.Array:
    """The step ``d`` of least L-inf norm with ``<w, p + d> = b`` and ``p + d`` in the box ``[lo, hi]``, for
    (batch, d) points ``p`` and normals ``w`` and (batch,) offsets ``b``.

    With ``r = b - <w, p>``, each coordinate moves by ``d_i = s_i min(delta, room_i)`` in the direction
    ``s_i = sign(r w_i)`` up to the box's face ``room_i`` away, and ``g(delta) = sum_i |w_i| min(delta, room_i)``
    is what a radius ``delta`` achieves.  ``g`` is increasing and piecewise linear with its breakpoints at
    the rooms, so the least ``delta`` with ``g(delta) = |r|`` is bracketed by bisection on ``[0, max room]``
    (one pass over the coordinates per halving: sorting the rooms, the textbook way, is several times
    slower on a CPU) and then solved on the linear piece at the bracket's lower end ``t``:
    ``delta = (|r| - sum_{room_i <= t} |w_i| room_i) / sum_{room_i > t} |w_i|``.  Where the box does not
    reach the hyperplane the step goes to the box's farthest corner along ``w``."""
    lo, hi = domain
    r = b - jnp.sum(w * p, axis=1)
    direction = jnp.sign(w) * jnp.sign(r)[:, None]
    room = jnp.where(direction > 0, hi - p, jnp.where(direction < 0, p - lo, 0.0))
    weight, need = jnp.abs(w), jnp.abs(r)

    def reach(delta):  # g(delta), (batch,)
        return jnp.sum(weight * jnp.minimum(delta[:, None], room), axis=1)

    def halve(_, bracket):
        low, high = bracket
        middle = 0.5 * (low + high)
        short = reach(middle) < need
        return jnp.where(short, middle, low), jnp.where(short, high, middle)

    farthest = jnp.max(room, axis=1)
    low, high = jax.lax.fori_loop(0, BISECTION_STEPS, halve, (jnp.zeros_like(farthest), farthest))
    below = room <= low[:, None]
    covered = jnp.sum(jnp.where(below, weight * room, 0.0), axis=1)
    slope = jnp.sum(jnp.where(below, 0.0, weight), axis=1)
    delta = jnp.clip((need - covered) / jnp.maximum(slope, 1e-30), low, high)
    delta = jnp.where(reach(farthest) >= need, delta, farthest)
    return direction * jnp.minimum(delta[:, None], room)


class SearchState(NamedTuple):
    """Per input and restart, leaves of shape (batch, restarts, ...): the iterate, the nearest misclassified
    point found and its L-inf distance (inf while none)."""

    x_t: jax.Array
    best_x: jax.Array
    best_norm: jax.Array


def _over_restarts(fn):
    """``fn(x, y, target, state, keys)`` vmapped over the restart axis 1 of the targets and the state and axis
    0 of the keys."""
    return jax.vmap(fn, in_axes=(None, None, 1, 1, 0), out_axes=1)


@functools.partial(jax.jit, static_argnames=("oracle", "restarts", "per_target"))
def _start(oracle: Oracle, x, y, key, eps, domain, *, restarts, per_target) -> SearchState:
    """The first restart of each target at ``x``, the others at random points at L-inf distance eps / 2;
    clean errors are found at distance 0."""
    clean_key, start_key = jax.random.split(key)
    clean_broken = common.misclassified(oracle.logits(x, clean_key), y)
    u = jax.random.uniform(start_key, (restarts,) + x.shape, x.dtype, -1.0, 1.0)
    scale = jnp.max(jnp.abs(u.reshape(restarts, x.shape[0], -1)), axis=2).reshape((restarts, -1) + (1,) * (x.ndim - 1))
    first = (jnp.arange(restarts) % per_target == 0).reshape((restarts,) + (1,) * x.ndim)
    starts = jnp.where(first, x, common.clip_to_domain(x + 0.5 * eps * u / jnp.maximum(scale, 1e-12), domain))
    batch = x.shape[0]
    best_norm = jnp.where(clean_broken, 0.0, jnp.inf).astype(x.dtype)
    return SearchState(jnp.moveaxis(starts, 0, 1), jnp.broadcast_to(x[:, None], (batch, restarts) + x.shape[1:]),
                       jnp.broadcast_to(best_norm[:, None], (batch, restarts)))


@functools.partial(jax.jit, static_argnames=("oracle",))
def _iterate(oracle: Oracle, x, y, target, state: SearchState, step_keys, first, stop, eps, domain, alpha_max, eta,
             beta) -> SearchState:
    """Iterations ``first, ..., stop - 1`` of every restart (fewer once every input has a point within eps)."""
    flat = (x.shape[0], -1)

    def step(x, y, target, state: SearchState, keys):
        gradient_key, check_key = keys
        _, f, grads = oracle.loss_and_grad(loss_function("margin", target), state.x_t, y, gradient_key)  # z_t - z_y
        w = grads.reshape(flat)
        b = jnp.sum(w * state.x_t.reshape(flat), axis=1) - f
        d1 = hyperplane_step(state.x_t.reshape(flat), w, b, domain)
        d2 = hyperplane_step(x.reshape(flat), w, b, domain)
        a1 = jnp.maximum(jnp.max(jnp.abs(d1), axis=1), 1e-8)
        a2 = jnp.maximum(jnp.max(jnp.abs(d2), axis=1), 1e-8)
        alpha = common.per_example(jnp.clip(a1 / (a1 + a2), 0.0, alpha_max), x)
        x_next = common.clip_to_domain((state.x_t + eta * d1.reshape(x.shape)) * (1 - alpha)
                                       + (x + eta * d2.reshape(x.shape)) * alpha, domain)
        adversarial = common.misclassified(oracle.logits(x_next, check_key), y)
        distance = common.per_example_norm(x_next - x, "linf")
        nearer = adversarial & (distance < state.best_norm)
        back = common.per_example(adversarial, x)
        return SearchState(jnp.where(back, x + beta * (x_next - x), x_next),
                           jnp.where(common.per_example(nearer, x), x_next, state.best_x),
                           jnp.where(nearer, distance, state.best_norm))

    def unfinished(carry):
        t, state = carry
        return (t < stop) & ~jnp.all(jnp.any(state.best_norm <= eps, axis=1))

    def one_step(carry):
        t, state = carry
        return t + 1, _over_restarts(step)(x, y, target, state, step_keys[:, t])

    _, state = jax.lax.while_loop(unfinished, one_step, (first, state))
    return state


@functools.partial(jax.jit, static_argnames=("oracle",))
def _finish(oracle: Oracle, x, y, state: SearchState, key, eps, domain) -> common.AttackResult:
    """Per input, the nearest point found over the restarts (the last iterate of restart 0 if none), clipped
    to the eps-ball ∩ domain and judged there."""
    choice = jnp.argmin(state.best_norm, axis=1)
    pick = jax.vmap(lambda per_restart, index: per_restart[index])
    found = jnp.isfinite(jnp.min(state.best_norm, axis=1))
    point = jnp.where(common.per_example(found, x), pick(state.best_x, choice), state.x_t[:, 0])
    x_adv = common.project(point, x, eps, domain, "linf")
    return common.AttackResult(x_adv, common.misclassified(oracle.logits(x_adv, key), y))


def fab(logits_fn: LogitsFn | Oracle, x: jax.Array, y: jax.Array, key: jax.Array, *, eps, domain=(0.0, 1.0),
        target: jax.Array, steps: int = 100, restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
        beta: float = 0.9, gradient_logits_fn: LogitsFn | None = None,
        compact_every: int | None = 10) -> common.AttackResult:
    """FAB-T, L-inf, towards ``target`` (see the module docstring); `andor_jax.attacks.targeted` runs it over
    the top classes as AutoAttack's ``fab-t``.

    Args:
      logits_fn: the model, ``x -> logits`` (batch, classes), or an `Oracle`.
      x: (batch, ...) inputs inside ``domain``.
      y: (batch,) integer labels.
      key: PRNG key for the random restarts (and the draws of a randomised model).
      eps: L-inf radius the final point is clipped to and judged at.
      domain: the input box ``(lo, hi)``.
      target: (batch, k) target classes, each different from its label.
      steps: iterations per restart (one gradient and one forward pass each).
      restarts: runs per target, the first from ``x``, the others from random points; all k x restarts
        runs in parallel (vmapped).
      alpha_max: the largest weight of the step from the original input.
      eta: extrapolation of the steps onto the linearised boundary (> 1 overshoots it).
      beta: the pull-back factor towards ``x`` after an adversarial point.
      gradient_logits_fn: differentiated instead of ``logits_fn`` (same forward values).
      compact_every: iterations between two compactions of the batch (inputs with a point within eps leave
        it); None keeps the whole batch, as does a caller's ``jax.jit``.
    """
    oracle, eps, domain = common.prepare(logits_fn, x, y, key, eps=eps, domain=domain, norm="linf",
                                         gradient_logits_fn=gradient_logits_fn)
    common.check_positive_int("steps", steps)
    common.check_positive_int("restarts", restarts)
    if compact_every is not None:
        common.check_positive_int("compact_every", compact_every)
    if not 0.0 <= alpha_max <= 1.0:
        raise ValueError(f"alpha_max must lie in [0, 1], got {alpha_max}")
    if not (eta >= 1.0 and 0.0 < beta < 1.0):
        raise ValueError(f"FAB needs eta >= 1 and 0 < beta < 1, got eta {eta} and beta {beta}")
    per_target = restarts
    target = jnp.repeat(jnp.asarray(target).reshape(jnp.shape(y)[0], -1), per_target, axis=1)
    restarts = target.shape[1]
    start_key, steps_key, final_key = jax.random.split(key, 3)
    state = _start(oracle, x, y, start_key, eps, domain, restarts=restarts, per_target=per_target)
    step_keys = jax.random.split(steps_key, (restarts, steps, 2))
    constants = tuple(common.as_scalar(value, x) for value in (alpha_max, eta, beta))

    def iterate(operands, state, first, stop):
        return _iterate(oracle, *operands, state, step_keys, first, stop, eps, domain, *constants)

    operands = (x, y, target)
    if compact_every is None or common.traced(x, y, key, eps):
        state = iterate(operands, state, 0, steps)
    else:
        state = compaction.run_compacting(iterate, operands, state, start=0, stop=steps, every=compact_every,
                                          finished=lambda state: jnp.any(state.best_norm <= eps, axis=1))
    return _finish(oracle, x, y, state, final_key, eps, domain)
