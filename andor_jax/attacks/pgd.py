"""Projected gradient descent (Madry et al. 2018, "Towards deep learning models resistant to adversarial
attacks"), L-inf and L2.

Each restart starts at a uniform random point of the eps-ball (optional) and repeats

    x_{t+1} = P_S(x_t + u_t),

where ``u_t`` comes from the loss gradient ``g_t = grad_x L(f(x_t), y)`` by a step rule and ``P_S`` projects
onto the eps-ball ∩ domain (`andor_jax.attacks.common.project`):

- ``'sign'``: ``u_t = alpha * d_t`` with ``d_t`` the steepest-ascent direction of the norm
  (``sign(g_t)`` for L-inf, ``g_t / ||g_t||_2`` for L2);
- ``'adadelta'``: AdaDelta (Zeiler 2012; rho 0.9, eps 1e-6, learning rate ``alpha``) ascending the loss, the
  rule of the MWD paper's PGD (Agrawal, de Alfaro & Helmbold).

An input counts as broken if any evaluated point of any restart (the clean input included) is misclassified.
Its returned point is the first misclassified one: the earliest group of restarts, the earliest step, the
lowest restart of the group.  Once an input is broken its iterates are frozen, so that no later step changes
its outcome.  Otherwise the returned point is the final iterate of highest loss over all restarts.

Restarts run in groups of ``parallel_restarts`` (vmapped within a group, the groups in sequence).  Inputs
already broken leave the batch: a group runs on the inputs that no earlier group broke, and within a group
the broken inputs leave every ``compact_every`` steps (`andor_jax.attacks.compaction`).  Every input draws
its random starts from its own PRNG stream (its key folded with the restart number), so neither the batch it
shares nor the compaction changes its iterations: the verdict and the points are those of the whole batch.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from andor_jax.attacks import common, compaction
from andor_jax.attacks.losses import loss_function
from andor_jax.attacks.oracle import LogitsFn, Oracle

STEP_RULES = ("sign", "adadelta")
STEP_SIZE_FACTOR = 2.5  # default alpha = 2.5 eps / steps for the sign rule (Madry et al. 2018)


def ascent_rule(step_rule: str, norm: str, step_size) -> optax.GradientTransformation:
    """The step rule as an optax transformation mapping loss gradients to the update ``u_t`` that is added
    to the iterate (ascent, not descent)."""
    if step_rule == "sign":
        return optax.stateless(lambda grads, params: step_size * common.steepest_direction(grads, norm))
    return optax.chain(optax.scale(-1.0), optax.adadelta(step_size, rho=0.9, eps=1e-6))


def default_step_size(step_rule: str, eps, steps: int):
    """``2.5 eps / steps`` for the sign rule, so that a restart can cross the ball; 1 (the MWD paper's
    learning rate) for AdaDelta."""
    return STEP_SIZE_FACTOR * eps / steps if step_rule == "sign" else 1.0


class GroupState(NamedTuple):
    """One group of restarts, per input (leading axis): the iterates (batch, restarts, ...), the step rule's
    state (leaves of the same layout), whether the input is broken and, if a restart of this group broke
    it, which one (its iterate is frozen at the misclassified point)."""

    x_t: jax.Array
    rule_state: Any
    broken: jax.Array
    first: jax.Array


@dataclasses.dataclass(frozen=True)
class Static:
    """The settings that shape the compiled program (hashable: a static argument of `jax.jit`)."""

    oracle: Oracle
    norm: str
    loss: str
    step_rule: str
    steps: int
    parallel_restarts: int
    random_start: bool
    stop_when_all_broken: bool


class Traced(NamedTuple):
    """The scalars and keys that every piece takes as traced arguments (no recompilation when they change):
    eps, the step size, the domain's bounds, and the keys of a randomised model's draws in the steps and in
    the last checks (unused, and compiled away, for a deterministic model)."""

    eps: jax.Array
    step_size: jax.Array
    domain: tuple
    steps_key: jax.Array
    final_key: jax.Array


def _over_restarts(fn, in_axes):
    """``fn`` vmapped over the restart axis 1 of the batch-leading arrays (``in_axes`` for the others)."""
    return jax.vmap(fn, in_axes=in_axes, out_axes=1)


@functools.partial(jax.jit, static_argnames=("oracle",))
def _clean(oracle: Oracle, x, y, key):
    """The running result before any restart (the clean points, whether they are misclassified, loss -inf)
    and the keys: one per input (its random starts), one for a randomised model's draws in the steps and
    one for those of the last checks (folded with the group and step where they are used)."""
    clean_key, examples_key, steps_key, final_key = jax.random.split(key, 4)
    result = x, common.misclassified(oracle.logits(x, clean_key), y), jnp.full(y.shape, -jnp.inf, x.dtype)
    return result, jax.random.split(examples_key, x.shape[0]), steps_key, final_key


def start_group(static: Static, traced: Traced, x, example_keys, broken, group) -> GroupState:
    """The starting points of the restarts of ``group`` (numbers ``group P, ..., group P + P - 1``), each
    input's drawn from its own key folded with the restart number."""
    batch, count = x.shape[0], static.parallel_restarts
    if static.random_start:
        numbers = group * count + jnp.arange(count)
        keys = jax.vmap(lambda key: jax.vmap(lambda r: jax.random.fold_in(key, r))(numbers))(example_keys)
        keys = keys.reshape((batch * count,) + keys.shape[2:])
        x_start = jax.vmap(lambda key, xi: common.random_start(key, xi[None], traced.eps, traced.domain,
                                                               static.norm)[0])(keys, jnp.repeat(x, count, axis=0))
        x_start = x_start.reshape((batch, count) + x.shape[1:])
    else:
        x_start = jnp.broadcast_to(x[:, None], (batch, count) + x.shape[1:])
    rule_state = _over_restarts(ascent_rule(static.step_rule, static.norm, traced.step_size).init, 1)(x_start)
    return GroupState(x_start, rule_state, broken, jnp.zeros(broken.shape, jnp.int32))


def _record(state: GroupState, misclassified: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(broken, first)`` after the points of ``state.x_t`` were found ``misclassified`` (batch, restarts):
    an input newly broken remembers its lowest misclassified restart."""
    newly = jnp.any(misclassified, axis=1) & ~state.broken
    return state.broken | newly, jnp.where(newly, jnp.argmax(misclassified, axis=1).astype(jnp.int32), state.first)


def iterate(static: Static, traced: Traced, x, y, target, state: GroupState, group, first, stop) -> GroupState:
    """Steps ``first, ..., stop - 1`` of every restart of ``group`` (fewer once every input is broken, if
    ``stop_when_all_broken``); a broken input's iterates stay where they are."""
    loss_fn = loss_function(static.loss, target)
    rule = ascent_rule(static.step_rule, static.norm, traced.step_size)

    def one_restart(x_t, rule_state, step_key):
        logits, _, grads = static.oracle.loss_and_grad(loss_fn, x_t, y, step_key)
        updates, rule_state = rule.update(grads, rule_state, x_t)
        x_next = common.project(x_t + updates, x, traced.eps, traced.domain, static.norm)
        return x_next, rule_state, common.misclassified(logits, y)

    def unfinished(carry):
        t, state = carry
        return (t < stop) & ~(static.stop_when_all_broken & jnp.all(state.broken))

    def step(carry):
        t, state = carry
        x_next, rule_state, misclassified = _over_restarts(one_restart, (1, 1, 0))(
            state.x_t, state.rule_state,
            jax.random.split(jax.random.fold_in(traced.steps_key, group * static.steps + t), static.parallel_restarts))
        broken, first_restart = _record(state, misclassified)
        x_next = jnp.where(common.per_example(broken, x_next), state.x_t, x_next)
        return t + 1, GroupState(x_next, rule_state, broken, first_restart)

    _, state = jax.lax.while_loop(unfinished, step, (first, state))
    return state


def finish_group(static: Static, traced: Traced, x, y, target, state: GroupState, group, x_best, broken_before,
                 best_loss):
    """Checks the last iterates and merges the group into the running result ``(x_best, broken_before,
    best_loss)``: a point found before is kept, a misclassified point of this group replaces the running
    one, otherwise the point of higher loss wins."""
    loss_fn = loss_function(static.loss, target)

    def one_restart(x_t, key):
        logits = static.oracle.logits(x_t, key)
        return common.misclassified(logits, y), loss_fn(logits, y)

    final_keys = jax.random.split(jax.random.fold_in(traced.final_key, group), static.parallel_restarts)
    misclassified, losses = _over_restarts(one_restart, (1, 0))(state.x_t, final_keys)
    broken, first_restart = _record(state, misclassified)
    choice = jnp.where(broken, first_restart, jnp.argmax(losses, axis=1))
    x_group = jnp.take_along_axis(state.x_t, choice.reshape((-1, 1) + (1,) * (x.ndim - 1)), axis=1)[:, 0]
    loss_group = jnp.max(losses, axis=1)
    replace = (broken & ~broken_before) | (~broken & (loss_group > best_loss))
    return (jnp.where(common.per_example(replace, x), x_group, x_best), broken_before | broken,
            jnp.where(replace, loss_group, best_loss))


def whole_group(static: Static, traced: Traced, x, y, example_keys, target, group, x_best, broken, best_loss):
    """`start_group`, every step (`iterate`) and `finish_group` in one program: a group run on one batch."""
    state = start_group(static, traced, x, example_keys, broken, group)
    state = iterate(static, traced, x, y, target, state, group, 0, static.steps)
    return finish_group(static, traced, x, y, target, state, group, x_best, broken, best_loss)


_start_group, _iterate, _finish_group, _whole_group = (jax.jit(fn, static_argnums=0) for fn in
                                                        (start_group, iterate, finish_group, whole_group))


def pgd(logits_fn: LogitsFn | Oracle, x: jax.Array, y: jax.Array, key: jax.Array, *, eps,
        domain=(0.0, 1.0), norm: str = "linf", steps: int = 40, restarts: int = 1, step_size=None,
        random_start: bool = True, loss: str = "ce", step_rule: str = "sign",
        gradient_logits_fn: LogitsFn | None = None, stop_when_all_broken: bool = True,
        parallel_restarts: int | None = None, target: jax.Array | None = None,
        compact_every: int | None = 10) -> common.AttackResult:
    """PGD with restarts (vmapped, in groups of ``parallel_restarts``) against ``logits_fn``.

    Args:
      logits_fn: the model, ``x -> logits`` of shape (batch, classes), or an `Oracle` (see `eot`).
      x: (batch, ...) inputs inside ``domain``.
      y: (batch,) integer labels.
      key: PRNG key for the random starts (and the draws of a randomised model).
      eps: radius of the ball in the ``norm``.
      domain: the input box ``(lo, hi)``.
      norm: ``'linf'`` or ``'l2'``.
      steps: gradient steps per restart.
      restarts: independent random starts.
      step_size: ``alpha`` (the sign rule's step length, AdaDelta's learning rate); None picks
        `default_step_size`.
      random_start: start at a uniform point of the ball rather than at ``x``.
      loss: ``'ce'``, ``'margin'``, ``'squared'`` or ``'dlr'`` (`andor_jax.attacks.losses`).
      step_rule: ``'sign'`` or ``'adadelta'`` (see the module docstring).
      gradient_logits_fn: differentiated instead of ``logits_fn`` (same forward values; BPDA,
        pseudo-gradients).
      stop_when_all_broken: skip the work that cannot change the outcome: the steps once every input of the
        batch is broken, the groups on inputs already broken, and (with ``compact_every``) the broken inputs
        within a group.  The outcome is the same either way.  False runs every step of every restart on the
        whole batch (a fixed amount of arithmetic).
      parallel_restarts: restarts run at once (vmapped), a divisor of ``restarts``; the groups run one after
        the other on the inputs still unbroken.  None: all at once (the fastest when inputs resist, e.g. on
        an accelerator); 1: one restart at a time (the least work when most inputs break early).
      target: (batch,) classes to aim at with the targeted form of ``loss``
        (`andor_jax.attacks.losses.TARGETED_LOSSES`; PGD-T, `andor_jax.attacks.targeted`); None: untargeted.
      compact_every: steps between two compactions of the batch within a group (broken inputs leave it,
        `andor_jax.attacks.compaction`); None keeps the whole batch throughout (every group runs on it).
        Inside a caller's ``jax.jit`` the batch is never compacted.  For a deterministic model the verdict
        and the points are the same either way.

    Returns:
      An `AttackResult`.
    """
    oracle, eps, domain = common.prepare(logits_fn, x, y, key, eps=eps, domain=domain, norm=norm, loss=loss,
                                         gradient_logits_fn=gradient_logits_fn)
    common.check_positive_int("steps", steps)
    common.check_positive_int("restarts", restarts)
    parallel_restarts = restarts if parallel_restarts is None else parallel_restarts
    common.check_positive_int("parallel_restarts", parallel_restarts)
    if restarts % parallel_restarts:
        raise ValueError(f"parallel_restarts ({parallel_restarts}) must divide restarts ({restarts})")
    common.check_choice("step_rule", step_rule, STEP_RULES)
    if compact_every is not None:
        common.check_positive_int("compact_every", compact_every)
    if step_size is None:
        step_size = default_step_size(step_rule, eps, steps)
    common.check_non_negative("step_size", step_size)
    step_size = common.as_scalar(step_size, x)
    stop_when_all_broken = bool(stop_when_all_broken)

    groups = restarts // parallel_restarts
    result, example_keys, steps_key, final_key = _clean(oracle, x, y, key)
    static = Static(oracle, norm, loss, step_rule, steps, parallel_restarts, bool(random_start),
                    bool(stop_when_all_broken))
    traced = Traced(eps, common.as_scalar(step_size, x), domain, steps_key, final_key)
    on_host = not common.traced(x, y, key, eps, traced.step_size, target)
    compacting = on_host and static.stop_when_all_broken and compact_every is not None and compact_every < steps

    def run_group(group, operands, x_best, broken, best_loss):
        """One group on the batch of ``operands``, merged into its running result."""
        x_, y_, keys_, target_ = operands
        if not compacting:
            return _whole_group(static, traced, *operands, group, x_best, broken, best_loss)

        def segment(operands, state, first, stop):
            return _iterate(static, traced, operands[0], operands[1], operands[3], state, group, first, stop)

        state = _start_group(static, traced, x_, keys_, broken, group)
        state = compaction.run_compacting(segment, operands, state, start=0, stop=steps, every=compact_every,
                                          finished=lambda state: state.broken)
        return _finish_group(static, traced, x_, y_, target_, state, group, x_best, broken, best_loss)

    operands = (x, y, example_keys, target)
    for group in range(groups):
        if on_host and static.stop_when_all_broken:
            unbroken = ~np.asarray(result[1])
            if not unbroken.any():
                break
            if compact_every is not None and not unbroken.all():
                rows = compaction.rows_holding(unbroken)
                merged = run_group(group, *jax.tree.map(lambda a: a[rows], (operands, *result)))
                result = compaction.scatter_rows(result, merged, rows, int(unbroken.sum()))
                continue
        result = run_group(group, operands, *result)
    return common.AttackResult(result[0], result[1])
