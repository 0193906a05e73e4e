"""Targeted attacks over the most promising classes, as AutoAttack runs them (Croce & Hein 2020, "Reliable
evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks"): APGD-T, PGD-T and
FAB-T.

The targets of an input are the ``targets`` classes other than its label with the largest clean logits, the
strongest rival first, and one run of the attack aims at each; an input is broken if any run breaks it.
Against the untargeted margin ``max_{k != y} z_k - z_y`` a targeted run follows one rival's margin
``z_t - z_y`` all the way, where the untargeted one may switch between rivals and stall.

APGD-T and FAB-T run every target at once, as restarts (vmapped; an input leaves the batch at the attack's
next compaction once any run has broken it).  PGD-T, whose PGD has no compaction, runs the targets in turn,
each on the inputs that no earlier run has broken (gathered, padded to a multiple of an eighth of the batch
so that it compiles for at most `andor_jax.attacks.compaction.GRANULES` batch sizes; inside a caller's
``jax.jit`` on the whole batch).
"""
from __future__ import annotations

import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from andor_jax.attacks import common, compaction
from andor_jax.attacks.apgd import apgd
from andor_jax.attacks.fab import fab
from andor_jax.attacks.losses import TARGETED_LOSSES, top_targets
from andor_jax.attacks.oracle import Oracle
from andor_jax.attacks.pgd import pgd

DEFAULT_TARGETS = 9  # AutoAttack's standard: every other class of a 10-class problem


def run_targeted(attack: Callable[..., common.AttackResult], logits_fn, x, y, key, *, eps, domain, targets: int,
                 all_at_once: bool, gradient_logits_fn=None, **settings) -> common.AttackResult:
    """``attack`` aimed at each of the top ``targets`` rival classes of every input (at most the number of
    classes less one; see the module docstring): ``all_at_once``, one call with ``target`` of shape (batch,
    targets); otherwise one call per target with ``target`` of shape (batch,), on the inputs still standing.

    Returns:
      An `AttackResult`: per input, the point of a run that broke it, otherwise (one target at a time) the
      first run's or (all at once) the attack's own choice.
    """
    common.check_positive_int("targets", targets)
    loss = settings.get("loss")
    if loss is not None:
        common.check_choice("targeted loss", loss, TARGETED_LOSSES)
    oracle, eps, domain = common.prepare(logits_fn, x, y, key, eps=eps, domain=domain,
                                         norm=settings.get("norm", "linf"), gradient_logits_fn=gradient_logits_fn)
    num_classes = oracle.num_classes(x, key)
    if loss == "dlr" and num_classes < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, the model has {num_classes}")
    order_key, runs_key = jax.random.split(key)
    clean_logits = oracle.logits(x, order_key)
    order = top_targets(clean_logits, y, min(targets, num_classes - 1))
    if all_at_once:
        return attack(oracle, x, y, runs_key, eps=eps, domain=domain, target=order, **settings)
    run_keys = jax.random.split(runs_key, order.shape[1])

    def one_run(j, rows):
        return attack(oracle, x[rows], y[rows], run_keys[j], eps=eps, domain=domain, target=order[rows, j],
                      **settings)

    if common.traced(x, y, key, eps):
        whole = jnp.arange(jnp.shape(x)[0])
        first = one_run(0, whole)
        x_adv, broken = first.x_adv, first.broken
        for j in range(1, order.shape[1]):
            result = one_run(j, whole)
            newly = result.broken & ~broken
            x_adv, broken = jnp.where(common.per_example(newly, x), result.x_adv, x_adv), broken | newly
        return common.AttackResult(x_adv, broken)
    return _on_survivors(one_run, order.shape[1], x, np.asarray(common.misclassified(clean_logits, y)))


def _on_survivors(one_run, runs: int, x, clean_broken: np.ndarray) -> common.AttackResult:
    """The runs ``one_run(j, rows)`` in turn, each on the rows not yet broken, clean errors never attacked
    (the gathered rows padded with copies of the first of them, whose results are dropped)."""
    n = jnp.shape(x)[0]
    x_adv, broken = np.array(x), clean_broken.copy()
    for j in range(runs):
        active = np.flatnonzero(~broken)
        if not active.size:
            break
        rows = np.concatenate([active, np.repeat(active[:1], compaction.compacted_size(active.size, n) - active.size)])
        result = one_run(j, jnp.asarray(rows))
        newly = np.asarray(result.broken)[:active.size]
        points = np.asarray(result.x_adv)[:active.size]
        keep = newly if j else np.ones_like(newly)
        x_adv[active[keep]] = points[keep]
        broken[active[newly]] = True
    return common.AttackResult(jnp.asarray(x_adv), jnp.asarray(broken))


def targeted(attack: Callable[..., common.AttackResult], name: str, *,
             all_at_once: bool) -> Callable[..., common.AttackResult]:
    """``attack`` (which takes ``target=``) as an attack over the top ``targets`` classes (`run_targeted`),
    with ``attack``'s own settings (its signature, ``target`` replaced by ``targets``), so that the registry
    and the report see every setting."""

    def targeted_attack(logits_fn: Callable | Oracle, x: jax.Array, y: jax.Array, key: jax.Array, *, eps,
                        domain=(0.0, 1.0), targets: int = DEFAULT_TARGETS, **settings) -> common.AttackResult:
        return run_targeted(attack, logits_fn, x, y, key, eps=eps, domain=domain, targets=targets,
                            all_at_once=all_at_once, **settings)

    parameters = [p for p in inspect.signature(attack).parameters.values() if p.name != "target"]
    position = next(i for i, p in enumerate(parameters) if p.name == "domain") + 1
    parameters.insert(position, inspect.Parameter("targets", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_TARGETS,
                                                  annotation=int))
    targeted_attack.__signature__ = inspect.Signature(parameters, return_annotation=common.AttackResult)
    targeted_attack.__name__ = targeted_attack.__qualname__ = name
    targeted_attack.__doc__ = (f"`{attack.__name__}` aimed at each of the top ``targets`` classes in turn "
                               "(`run_targeted`); every other setting is its own.")
    return targeted_attack


apgd_targeted = targeted(apgd, "apgd_targeted", all_at_once=True)
pgd_targeted = targeted(pgd, "pgd_targeted", all_at_once=False)
fab_targeted = targeted(fab, "fab_targeted", all_at_once=True)
