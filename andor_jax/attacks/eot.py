"""Expectation over Transformation (Athalye, Engstrom, Ilyas & Kwok 2018, "Synthesizing robust adversarial
examples"; Athalye, Carlini & Wagner 2018): attacking a randomised model ``f(x, k)`` through the gradient
of the expected loss,

    grad_x E_k[L(f(x, k), y)] ≈ (1/n) sum_{i=1..n} grad_x L(f(x, k_i), y),

with ``n`` fresh draws ``k_i`` at every query (vmapped).  Within the attack, misclassification is judged on
one draw of the model (the first of the query's), as AutoAttack's EOT does; the evaluation judges the
returned points apart, by the worst case over independent forward passes (`andor_jax.evaluators.robustness`).
The averaging lives in `andor_jax.attacks.oracle.Oracle`; this module wraps an attack around it, and
``registry.run_attack(..., eot_draws=n)`` runs a registered attack so.
"""
from __future__ import annotations

from typing import Callable

import jax

from andor_jax.attacks.common import AttackResult, check_positive_int
from andor_jax.attacks.oracle import RandomisedLogitsFn, randomised


def eot(attack: Callable[..., AttackResult], n_draws: int) -> Callable[..., AttackResult]:
    """Turns ``attack`` (any attack of this package) into one against a randomised model.

    Args:
      attack: e.g. `andor_jax.attacks.pgd`, with the usual signature ``attack(logits_fn, x, y, key, *, eps,
        ...)``.
      n_draws: draws of the model's randomness averaged in every gradient.

    Returns:
      ``eot_attack(logits_fn, x, y, key, *, gradient_logits_fn=None, **settings)`` where ``logits_fn(x, key)``
      and ``gradient_logits_fn(x, key)`` take a PRNG key for their randomness, and ``settings`` are the
      attack's own.  With ``n_draws = 1`` and a model that ignores its key this equals ``attack`` on the
      deterministic model, key for key.
    """
    check_positive_int("n_draws", n_draws)

    def eot_attack(logits_fn: RandomisedLogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
                   gradient_logits_fn: RandomisedLogitsFn | None = None, **settings) -> AttackResult:
        if not callable(logits_fn):
            raise ValueError(f"logits_fn must be callable as logits_fn(x, key), got {type(logits_fn).__name__}")
        return attack(randomised(logits_fn, n_draws, gradient_logits_fn), x, y, key, **settings)

    eot_attack.__name__ = f"eot_{getattr(attack, '__name__', 'attack')}"
    eot_attack.__doc__ = f"`{getattr(attack, '__name__', 'attack')}` with EOT over {n_draws} draws; see `eot`."
    return eot_attack
