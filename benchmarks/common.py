"""Helpers shared by the benchmark scripts: timing, the machine's own rate for a benchmark's dominant
primitive (its "peak" at the benchmark's sizes), the summary rows that `run_all.py` tabulates, JSON output
and torch thread settings.

Fraction of peak.  A ratio to PyTorch says nothing about how far both are from what the machine can do, so
every benchmark also measures, in the same run, the rate of its dominant primitive on its own:

- `matmul_rate`: FLOP/s of one jit-compiled ``(m, k) @ (k, n)`` float32 product at the benchmark's sizes;
- `exp_rate`: exponentials per second of ``sum(exp(v))`` over as many elements as the benchmark evaluates;
- `max_reduction_rate`: elements per second of the MWD unit's fused max-reduction (interval propagation);

and reports ``fraction_of_peak`` = the benchmark's achieved rate of that primitive (its FLOPs, exponentials
or reduced elements per second of wall time) / the primitive's rate alone.  1 means that the benchmark runs
at the speed of its primitive with nothing else to do; the rest is everything else (elementwise work,
memory traffic, loop overhead).
"""
from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time
from typing import Callable


def median_seconds(run_once: Callable[[], object], *, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``run_once()`` over ``repeats`` calls after ``warmup`` untimed ones.
    ``run_once`` must block until its work is done (``block_until_ready`` for JAX)."""
    for _ in range(warmup):
        run_once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_times(runs: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each ``run_once`` in ``runs`` over ``rounds`` rounds, timed in alternation so that a
    load that comes and goes on the machine weighs on every contender alike."""
    for run_once in runs.values():
        for _ in range(warmup):
            run_once()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run_once in runs.items():
            start = time.perf_counter()
            run_once()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_medians(runs: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each run of `interleaved_times`."""
    return {name: statistics.median(values) for name, values in interleaved_times(runs, rounds=rounds,
                                                                                 warmup=warmup).items()}


def interleaved_minimums(runs: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Minimum seconds of each run of `interleaved_times`: on a shared machine the least disturbed run is the
    closest to the program's own cost."""
    return {name: min(values) for name, values in interleaved_times(runs, rounds=rounds, warmup=warmup).items()}


# ---------------------------------------------------------------------------------------------------------
# The machine's rate for a primitive.

def _best_seconds(fn, *args, repeats: int) -> float:
    """Minimum wall seconds of the jit-compiled ``fn(*args)`` over ``repeats`` calls after one warm-up."""
    import jax

    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def matmul_rate(m: int, k: int, n: int, *, repeats: int = 5) -> float:
    """FLOP/s (``2 m k n`` per product) of a float32 ``(m, k) @ (k, n)`` product, best of ``repeats``; a loop
    of products inside one program when one is too short to time."""
    import jax
    import jax.numpy as jnp

    a = jax.random.uniform(jax.random.PRNGKey(0), (m, k))
    b = jax.random.uniform(jax.random.PRNGKey(1), (k, n))
    count = max(1, int(2e9 // (2 * m * k * n)))  # about 2 GFLOP per timed call

    @jax.jit
    def products(a, b):
        return jax.lax.fori_loop(0, count, lambda i, acc: acc + (a * (1 + i * 1e-7)) @ b, jnp.zeros((m, n)))

    return 2 * m * k * n * count / _best_seconds(products, a, b, repeats=repeats)


def exp_rate(elements: int, *, repeats: int = 5) -> float:
    """Exponentials per second of ``sum(exp(v))`` over ``elements`` float32 values in [-9, 0] (the range of
    the MWD pseudo-derivative's ``z - max z``), best of ``repeats``."""
    import jax
    import jax.numpy as jnp

    values = -9 * jax.random.uniform(jax.random.PRNGKey(0), (elements,))
    return elements / _best_seconds(jax.jit(lambda v: jnp.sum(jnp.exp(v))), values, repeats=repeats)


def max_reduction_rate(batch: int, out: int, inputs: int, *, repeats: int = 5) -> float:
    """Elements per second of the MWD forward reduction ``max_i |u_oi (x_bi - w_oi)|`` over a (batch, out,
    inputs) float32 expression (one fused reduction, nothing stored), best of ``repeats``: the primitive of
    interval propagation through MWD layers (two such reductions per layer)."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.uniform(keys[0], (batch, inputs))
    u, w = (jax.random.uniform(key, (out, inputs)) for key in keys[1:])
    reduce = jax.jit(lambda x, u, w: jnp.max(jnp.abs(u * (x[:, None, :] - w)), axis=-1))
    return batch * out * inputs / _best_seconds(reduce, x, u, w, repeats=repeats)


def clipped_sum_rate(rows: int, cols: int, *, repeats: int = 5) -> float:
    """Elements per second of ``t <- t + c sum_i w_i min(t, r_i)`` over (rows, cols) float32 values, one
    fused reduction per pass, each pass depending on the last (a loop inside one program), best of
    ``repeats``: the primitive of FAB's hyperplane step (`andor_jax.attacks.fab`), one pass per halving."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    w, r = (jax.random.uniform(key, (rows, cols)) for key in keys)
    count = max(1, int(2e8 // (rows * cols)))

    @jax.jit
    def passes(w, r):
        return jax.lax.fori_loop(0, count, lambda i, t: t + 1e-3 * jnp.sum(w * jnp.minimum(t[:, None], r), axis=1),
                                 jnp.zeros(rows))

    return rows * cols * count / _best_seconds(passes, w, r, repeats=repeats)


def compiled_flops(compiled) -> float:
    """FLOPs of one call of a compiled program, by XLA's cost analysis (a loop's body is counted once)."""
    return float(compiled.cost_analysis()["flops"])


def fraction_of_peak(achieved_rate: float, peak_rate: float) -> float:
    """``achieved_rate / peak_rate``: how much of the primitive's own rate the benchmark reaches."""
    return achieved_rate / peak_rate


# ---------------------------------------------------------------------------------------------------------
# Reporting.

def machine() -> dict:
    """The machine a figure was measured on: processor, cores, JAX backend and the load average now."""
    import jax

    processor = platform.processor()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"processor": processor, "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
            "load_average": list(os.getloadavg())}


def summary_row(benchmark: str, *, ours_s: float, reference_s: float | None, reference: str | None,
                primitive: str, fraction: float) -> dict:
    """One row of the table of `run_all.py`: our seconds, the reference's (None when there is none), their
    ratio (reference / ours: above 1 means we are faster) and the fraction of the primitive's peak."""
    return {"benchmark": benchmark, "ours_s": ours_s, "reference_s": reference_s, "reference": reference,
            "ratio": None if reference_s is None else reference_s / ours_s, "primitive": primitive,
            "fraction_of_peak": fraction}


def configure_torch_threads():
    """PyTorch with as many intra-op threads as XLA uses (all cores), so the comparison is like for like."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def write_json(path: str | None, figures: dict) -> None:
    """Writes ``figures`` with the `machine` it ran on (load average at the end) to ``path`` (if given)."""
    if path:
        figures = {**figures, "machine": figures.get("machine", machine())}
        pathlib.Path(path).write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {path}")
