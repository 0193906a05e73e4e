"""Dropping finished inputs from an iterative attack's batch.

An attack's iterations treat the inputs of a batch independently, and an input that is broken stays broken.
On a robust model the inputs that resist take the whole budget while the others are done early, so running
the iterations in segments and, between two segments, gathering the unfinished inputs into a smaller batch
spends the work on those alone (as AutoAttack and the Square attack's reference implementation do).  The
verdict and the points of every input are the same as with the whole batch, provided that each input's
iterations depend on that input alone (its own PRNG stream, no batch statistics).

Batches shrink to multiples of ``ceil(batch / GRANULES)`` (`compacted_size`), so that an attack compiles its
segment for at most `GRANULES` batch sizes.  A shrunken batch is padded with copies of a finished input,
whose results are never read.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

GRANULES = 8


def compacted_size(active: int, batch: int) -> int:
    """The batch size that holds ``active`` inputs: the next multiple of ``ceil(batch / GRANULES)``, at most
    ``batch``."""
    granule = math.ceil(batch / GRANULES)
    return min(batch, math.ceil(active / granule) * granule)


def rows_holding(active: np.ndarray) -> np.ndarray:
    """Row indices of a batch that holds the inputs where the (batch,) mask ``active`` is set, first in
    order, then copies of the first of them up to `compacted_size`."""
    chosen = np.flatnonzero(active)
    size = compacted_size(chosen.size, len(active))
    return np.concatenate([chosen, np.repeat(chosen[:1], size - chosen.size)])


def scatter_rows(whole, part, rows: np.ndarray, count: int):
    """``whole`` (a pytree of batch-leading arrays) with its rows ``rows[:count]`` replaced by the first
    ``count`` rows of ``part`` (gathered with `rows_holding`; the padding rows after them are dropped)."""
    def scatter(kept, new):
        kept = np.array(kept)
        kept[rows[:count]] = np.asarray(new)[:count]
        return jnp.asarray(kept)

    return jax.tree.map(scatter, whole, part)


def run_compacting(segment: Callable[[Any, Any, int, int], Any], operands, state, *, start: int, stop: int,
                   every: int, finished: Callable[[Any], jax.Array]):
    """Runs the iterations ``start, ..., stop - 1`` as ``state = segment(operands, state, first, last)`` over
    segments of ``every`` iterations, dropping finished inputs from the batch between segments.

    Args:
      segment: runs iterations ``first <= t < last`` on a batch; every leaf of ``operands`` and ``state``
        has the batch on its leading axis.
      operands: per-input constants of the iterations (inputs, labels, keys), gathered with the state.
      state: per-input iteration state (arrays only: it is copied to the host).
      start, stop: the iterations to run.
      every: iterations per segment.
      finished: ``state -> (batch,) bool``, the inputs that no later iteration can change the verdict of.

    Returns:
      The state of the whole batch, each input's as it was when it finished or at the end.
    """
    whole = jax.tree.map(np.array, state)
    rows = np.arange(len(np.asarray(finished(state))))  # each running row's input; -1 for padding
    batch = len(rows)  # sizes stay multiples of an eighth of the whole batch: at most GRANULES compilations

    def write_back(mask):
        """Copies the running state of the rows in ``mask`` into the whole batch's."""
        jax.tree.map(lambda kept, new: kept.__setitem__(rows[mask], np.asarray(new)[mask]), whole, state)

    first = start
    while first < stop:  # inputs finished from the start (clean errors) leave before the first segment
        real = rows >= 0
        done = np.asarray(finished(state))
        active = np.flatnonzero(real & ~done)
        if not active.size:
            break
        size = compacted_size(active.size, batch)
        if size < len(rows):  # the finished rows leave: their state is final
            write_back(real & done)
            take = np.concatenate([active, np.repeat(np.flatnonzero(done)[:1], size - active.size)])
            operands, state = jax.tree.map(lambda a: a[take], (operands, state))
            rows = np.concatenate([rows[active], np.full(size - active.size, -1)])
        last = min(first + every, stop)
        state = segment(operands, state, first, last)
        first = last
    write_back(rows >= 0)
    return jax.tree.map(jnp.asarray, whole)
