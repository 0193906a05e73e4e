"""PGD's compaction (`andor_jax.attacks.pgd`): inputs already broken leave the batch, between restart groups
and between segments of steps, and the outcome (verdict and points) is exactly that of the whole batch.

One small linear model and one batch shape, so that the few compilations are cheap.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from andor_jax import attacks

DIM, CLASSES = 16, 4
_KERNEL = jax.random.normal(jax.random.PRNGKey(0), (DIM, CLASSES)) * jnp.array([0.0, 2.0, 0.5, 0.5])
_BIAS = -(0.5 * _KERNEL.sum(axis=0)) - jnp.array([0.0, 1.0, 4.0, 4.0])
SETTINGS = {"eps": 0.12, "steps": 12, "restarts": 2, "parallel_restarts": 1}


def _net(x):
    return x @ _KERNEL + _BIAS


def _inputs():
    """24 inputs at distances to the class-1 boundary spread from easy to impossible at eps 0.12."""
    x = 0.5 + jax.random.uniform(jax.random.PRNGKey(5), (24, DIM), minval=-0.3, maxval=0.3)
    return x, jnp.argmax(_net(x), axis=-1)


def test_pgd_compaction_keeps_the_outcome_and_evaluates_only_unbroken_inputs():
    """Compacted (every 4 steps, and the second restart only on the inputs the first left unbroken) and
    every step of every restart run on the whole batch: the same verdict and the same points (so stopping,
    compaction and the restart groups change nothing), and the compacted run evaluates fewer rows.  The
    model counts the rows it evaluates through a host callback."""
    rows_evaluated = []

    def counting_net(x):
        jax.debug.callback(lambda n: rows_evaluated.append(int(n)), x.shape[0])
        return _net(x)

    x, y = _inputs()
    key = jax.random.PRNGKey(4)
    outcomes = {}
    for variant, extra in (("compacted", {"compact_every": 4}), ("whole", {"stop_when_all_broken": False})):
        rows_evaluated.clear()
        outcomes[variant] = attacks.pgd(counting_net, x, y, key, **SETTINGS, **extra), sum(rows_evaluated)
    (compacted, compacted_rows), (whole, whole_rows) = outcomes["compacted"], outcomes["whole"]
    assert 0 < int(whole.broken.sum()) < len(y), "the test needs inputs that break and inputs that resist"
    np.testing.assert_array_equal(compacted.broken, whole.broken)
    np.testing.assert_array_equal(compacted.x_adv, whole.x_adv)
    assert compacted_rows < whole_rows, outcomes
