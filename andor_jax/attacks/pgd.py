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
Restarts run in groups of ``parallel_restarts`` (vmapped within a group, the groups in sequence), and the
attack stops once every input of the batch is broken (``stop_when_all_broken``): a batch fully broken after
a few steps costs those few steps only.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from andor_jax.attacks import common
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


@functools.partial(jax.jit, static_argnames=("oracle", "norm", "steps", "restarts", "parallel_restarts",
                                             "random_start", "loss", "step_rule", "stop_when_all_broken"))
def _pgd(oracle: Oracle, x, y, key, eps, step_size, domain, target, *, norm, steps, restarts, parallel_restarts,
         random_start, loss, step_rule, stop_when_all_broken) -> common.AttackResult:
    loss_fn = loss_function(loss, target)
    rule = ascent_rule(step_rule, norm, step_size)
    clean_key, start_key, steps_key, final_key = jax.random.split(key, 4)
    groups = restarts // parallel_restarts
    step_keys = jax.random.split(steps_key, (groups, steps, parallel_restarts))
    final_keys = jax.random.split(final_key, (groups, parallel_restarts))

    def all_broken(broken):
        return stop_when_all_broken & jnp.all(broken)

    def step_one_restart(x_t, rule_state, found, broken, step_key):
        logits, _, grads = oracle.loss_and_grad(loss_fn, x_t, y, step_key)
        found, broken = common.record_misclassified(found, broken, x_t, logits, y)
        updates, rule_state = rule.update(grads, rule_state, x_t)
        return common.project(x_t + updates, x, eps, domain, norm), rule_state, found, broken

    def finish_one_restart(x_last, found, broken, final_key):
        logits = oracle.logits(x_last, final_key)
        found, broken = common.record_misclassified(found, broken, x_last, logits, y)
        return jnp.where(common.per_example(broken, x), found, x_last), broken, loss_fn(logits, y)

    def run_group(g, broken_before):
        """``parallel_restarts`` restarts, vmapped; each input's best point, whether one broke it, its loss."""
        def unfinished(state):
            t, *_, broken = state
            return (t < steps) & ~all_broken(jnp.any(broken, axis=0))

        def iterate(state):
            t, *carry = state
            return (t + 1, *jax.vmap(step_one_restart)(*carry, step_keys[g, t]))

        x_start = common.starting_points(jax.random.fold_in(start_key, g), x, eps, domain, norm, parallel_restarts,
                                         random_start)
        state = (0, x_start, jax.vmap(rule.init)(x_start), jnp.broadcast_to(x, x_start.shape),
                 jnp.broadcast_to(broken_before, x_start.shape[:1] + broken_before.shape))
        _, x_last, _, found, broken = jax.lax.while_loop(unfinished, iterate, state)
        x_adv, broken, final_loss = jax.vmap(finish_one_restart)(x_last, found, broken, final_keys[g])
        best = common.best_of_restarts(x_adv, broken, final_loss)
        return best.x_adv, best.broken, jnp.max(final_loss, axis=0)

    def groups_left(state):
        g, _, broken, _ = state
        return (g < groups) & ~all_broken(broken)

    def next_group(state):
        """Merges a group: a point found before is kept; a new one replaces the running best; otherwise the
        point of higher loss wins."""
        g, x_best, broken, best_loss = state
        x_group, broken_group, loss_group = run_group(g, broken)
        newly = broken_group & ~broken
        replace = newly | (~broken_group & (loss_group > best_loss))
        x_best = jnp.where(common.per_example(replace, x), x_group, x_best)
        return g + 1, x_best, broken | broken_group, jnp.where(replace, loss_group, best_loss)

    clean_broken = common.misclassified(oracle.logits(x, clean_key), y)
    state = (0, x, clean_broken, jnp.full(y.shape, -jnp.inf, x.dtype))
    _, x_adv, broken, _ = jax.lax.while_loop(groups_left, next_group, state)
    return common.AttackResult(x_adv, broken)


def pgd(logits_fn: LogitsFn | Oracle, x: jax.Array, y: jax.Array, key: jax.Array, *, eps,
        domain=(0.0, 1.0), norm: str = "linf", steps: int = 40, restarts: int = 1, step_size=None,
        random_start: bool = True, loss: str = "ce", step_rule: str = "sign",
        gradient_logits_fn: LogitsFn | None = None, stop_when_all_broken: bool = True,
        parallel_restarts: int | None = None, target: jax.Array | None = None) -> common.AttackResult:
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
      restarts: independent random starts, run in parallel.
      step_size: ``alpha`` (the sign rule's step length, AdaDelta's learning rate); None picks
        `default_step_size`.
      random_start: start at a uniform point of the ball rather than at ``x``.
      loss: ``'ce'``, ``'margin'``, ``'squared'`` or ``'dlr'`` (`andor_jax.attacks.losses`).
      step_rule: ``'sign'`` or ``'adadelta'`` (see the module docstring).
      gradient_logits_fn: differentiated instead of ``logits_fn`` (same forward values; BPDA,
        pseudo-gradients).
      stop_when_all_broken: stop as soon as each input of the batch is broken by some restart.  ``broken``
        is the same as with every step run (an input once broken stays broken); the steps skipped could
        only have found other misclassified points.  False runs every step of every restart.
      parallel_restarts: restarts run at once (vmapped), a divisor of ``restarts``; the groups run one after
        the other, so that a batch broken by the first group skips the rest.  None: all at once (the
        fastest when inputs resist, e.g. on an accelerator); 1: one restart at a time (the least work
        when most inputs break early).
      target: (batch,) classes to aim at with the targeted form of ``loss``
        (`andor_jax.attacks.losses.TARGETED_LOSSES`; PGD-T, `andor_jax.attacks.targeted`); None: untargeted.

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
    if step_size is None:
        step_size = default_step_size(step_rule, eps, steps)
    common.check_non_negative("step_size", step_size)
    return _pgd(oracle, x, y, key, eps, common.as_scalar(step_size, x), domain, target, norm=norm, steps=steps,
                restarts=restarts, parallel_restarts=parallel_restarts, random_start=bool(random_start), loss=loss,
                step_rule=step_rule, stop_when_all_broken=bool(stop_when_all_broken))
