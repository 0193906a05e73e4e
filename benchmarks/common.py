"""Helpers shared by the benchmark scripts: timing, JSON output, torch thread settings."""
from __future__ import annotations

import json
import os
import pathlib
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


def interleaved_medians(runs: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each ``run_once`` in ``runs``, timing them in alternation for ``rounds`` rounds, so
    that a load that comes and goes on the machine weighs on every contender alike."""
    for run_once in runs.values():
        for _ in range(warmup):
            run_once()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run_once in runs.items():
            start = time.perf_counter()
            run_once()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def configure_torch_threads():
    """PyTorch with as many intra-op threads as XLA uses (all cores), so the comparison is like for like."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def write_json(path: str | None, figures: dict) -> None:
    if path:
        pathlib.Path(path).write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {path}")
