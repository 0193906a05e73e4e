"""Certified accuracy by interval bound propagation: for each eps, the fraction of examples whose label's
logit provably beats every other logit on the whole eps-ball ∩ domain (Gowal et al. 2018, "On the
effectiveness of interval bound propagation"; the MWD paper's certification, Agrawal, de Alfaro & Helmbold).
It is a lower bound on robust accuracy, the attack suite (`andor_jax.evaluators.robustness`) an upper bound.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from andor_jax.evaluators.robustness import eps_key

CLEAN_BATCH = 1000  # examples per forward pass of the clean check


def run(model, variables, x: np.ndarray, y: np.ndarray, eps_grid: Sequence[float], *, domain) -> dict:
    """``{'clean_accuracy', 'certified_accuracy': {eps: fraction}}`` of ``(x, y)``, both on exactly these
    examples.  Only deterministic models have interval bounds."""
    from andor_jax import bounds, models

    if getattr(model, "randomised", False):
        raise ValueError(f"{type(model).__name__} is a randomised model: interval bound propagation certifies "
                         "deterministic networks only")
    predict = jax.jit(lambda inputs: jnp.argmax(models.logits(model, variables, inputs), axis=-1))
    correct = sum(int(np.sum(np.asarray(predict(jnp.asarray(x[i:i + CLEAN_BATCH]))) == y[i:i + CLEAN_BATCH]))
                  for i in range(0, len(x), CLEAN_BATCH))
    accuracy = bounds.certified_accuracy(model, variables, x, y, list(eps_grid), domain=tuple(domain))
    return {"clean_accuracy": correct / len(x), "certified_accuracy": {eps_key(e): a for e, a in accuracy.items()}}
