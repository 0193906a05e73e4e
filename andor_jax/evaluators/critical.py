"""The robustness protocol of Holzhausen et al. (arXiv 2405.00679): relative accuracy over a log grid of eps
and the median critical perturbation size.

Only the test images the model classifies correctly are attacked.  For each eps of a logarithmic grid the
*relative accuracy* is the fraction of them that an attack (default: PGD L-inf, 20 steps, one random
start, `andor_jax.attacks.run_attack`) does not break.  The *critical perturbation* of an image is the
smallest eps that breaks it: the first grid eps that does brackets it, and bisection on a log scale
(geometric midpoints; the arithmetic one below the first grid point) narrows the bracket
``bisection_steps`` times; the upper end of the final bracket is reported (``inf`` for an image no grid eps
breaks).  Bisection takes "broken at eps" to be monotone in eps, which an attack's verdict only
approximately is.  The per-model summary is the median over the attacked images.

Each attack call runs at one scalar eps, so the images sharing a bracket are attacked together; batches
are padded to powers of two (`padded_size`) so that a few compilations serve every call.
"""
from __future__ import annotations

import json
import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from andor_jax.attacks import run_attack

PROTOCOL = {"attack": "pgd", "settings": {"steps": 20, "restarts": 1, "random_start": True}}
DEFAULT_GRID = tuple(float(v) for v in np.geomspace(0.01, 0.5, 10))


def log_grid(low: float, high: float, count: int) -> tuple[float, ...]:
    """``count`` eps values spaced evenly on a log scale from ``low`` to ``high``."""
    return tuple(float(v) for v in np.geomspace(low, high, count))


def padded_size(n: int, chunk: int) -> int:
    """The smallest power of two >= ``n``, at most ``chunk``."""
    return min(chunk, 1 << max(n - 1, 0).bit_length())


def broken(logits_fn: Callable, x: np.ndarray, y: np.ndarray, eps: float, key: jax.Array, *, attack: str,
           settings: dict, domain, chunk: int = 256) -> np.ndarray:
    """Per image, whether ``attack`` at radius ``eps`` changes the model's decision (chunks of at most
    ``chunk`` images, each padded to a power of two with copies of its first image)."""
    verdicts = []
    for start in range(0, len(x), chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        size = padded_size(len(xb), chunk)
        pad = size - len(xb)
        xp = np.concatenate([xb, np.repeat(xb[:1], pad, axis=0)]) if pad else xb
        yp = np.concatenate([yb, np.repeat(yb[:1], pad, axis=0)]) if pad else yb
        result = run_attack(attack, logits_fn, jnp.asarray(xp), jnp.asarray(yp), jax.random.fold_in(key, start),
                            eps, domain=domain, **settings)
        verdicts.append(np.asarray(result.broken)[:len(xb)])
    return np.concatenate(verdicts) if verdicts else np.zeros(0, bool)


def correctly_classified(logits_fn: Callable, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Indices of the images the model classifies correctly."""
    predictions = np.concatenate([np.asarray(jnp.argmax(logits_fn(jnp.asarray(x[i:i + batch_size])), -1))
                                  for i in range(0, len(x), batch_size)])
    return np.flatnonzero(predictions == np.asarray(y))


def critical_perturbations(logits_fn: Callable, x: np.ndarray, y: np.ndarray, key: jax.Array, *,
                           grid: Sequence[float] = DEFAULT_GRID, bisection_steps: int = 4,
                           attack: str = PROTOCOL["attack"], settings: dict | None = None, domain=(0.0, 1.0),
                           chunk: int = 256) -> dict:
    """Relative accuracy at every eps of ``grid`` and the critical eps of every image of ``x`` (all assumed
    correctly classified: see `correctly_classified`), by bisection (module docstring)."""
    settings = dict(PROTOCOL["settings"] if settings is None else settings)
    grid = sorted(float(e) for e in grid)
    if not grid or grid[0] <= 0:
        raise ValueError(f"critical perturbations: the eps grid must hold values > 0 (the bisection is on a log "
                         f"scale), got {grid}")
    run = lambda xs, ys, eps, k: broken(logits_fn, xs, ys, eps, k, attack=attack, settings=settings, domain=domain,
                                        chunk=chunk)
    at_grid = np.stack([run(x, y, eps, jax.random.fold_in(key, i)) for i, eps in enumerate(grid)], axis=1)
    ever = at_grid.any(axis=1)
    first = np.argmax(at_grid, axis=1)
    high = np.where(ever, np.asarray(grid)[first], np.inf)
    low = np.where(ever & (first > 0), np.asarray(grid)[np.maximum(first - 1, 0)], 0.0)
    for step in range(bisection_steps):
        middle = np.where(low > 0, np.sqrt(low * np.where(np.isfinite(high), high, 1.0)), high / 2)
        for index, eps in enumerate(np.unique(middle[ever])):
            members = np.flatnonzero(ever & (middle == eps))
            verdict = run(x[members], y[members], float(eps), jax.random.fold_in(key, 1000 * (step + 1) + index))
            high[members[verdict]] = eps
            low[members[~verdict]] = eps
    return {"attack": attack, "settings": settings, "grid": grid, "bisection_steps": bisection_steps,
            "relative_accuracy": (1.0 - at_grid.mean(axis=0)).tolist() if len(x) else [],
            "critical_eps": high.tolist(), "median_critical_eps": float(np.median(high)) if len(x) else float("nan")}


def analyse(workdir: str | pathlib.Path, *, limit: int = 1000, grid: Sequence[float] = DEFAULT_GRID,
            bisection_steps: int = 4, attack: str = PROTOCOL["attack"], settings: dict | None = None,
            seed: int = 0, data_dir: str | None = None, output: str | pathlib.Path | None = None) -> dict:
    """Holzhausen et al.'s protocol on the first ``limit`` test images (0: all) of a trained run; writes
    ``critical.json`` (into ``output``, default the work directory) and returns its content: the report's
    header (model, checkpoint, data and its digest), the example set, the clean accuracy and
    `critical_perturbations` of the correctly classified images."""
    from andor_jax import evaluation, experiment, models
    from andor_jax.evaluators import examples as examples_lib

    workdir = pathlib.Path(workdir)
    run, variables = experiment.load_trained(workdir, data_dir=data_dir)
    if models.randomised(run.model):
        raise ValueError("critical perturbations: the protocol is defined for deterministic models only")
    logits_fn = jax.jit(lambda xb: models.logits(run.model, variables, xb))
    x, y, examples = examples_lib.first_examples(run.dataset.x_test, run.dataset.y_test, limit)
    correct = correctly_classified(logits_fn, x, y)
    result = critical_perturbations(logits_fn, x[correct], y[correct], jax.random.PRNGKey(seed), grid=grid,
                                    bisection_steps=bisection_steps, attack=attack, settings=settings,
                                    domain=tuple(run.config.data.domain))
    result = {"header": evaluation.header_of(run, variables, workdir), "workdir": str(workdir),
              "examples": examples, "correct": int(len(correct)), "clean_accuracy": len(correct) / max(len(x), 1),
              **result}
    path = pathlib.Path(output or workdir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "critical.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def summary(result: dict) -> str:
    """The protocol's figures in a few lines: what was attacked, relative accuracy per eps, the median."""
    examples = result["examples"]
    lines = [f"{result['workdir']}: {examples['description']} ({result['header']['data']['dataset']}), clean accuracy "
             f"{result['clean_accuracy']:.2%}; {result['correct']} correctly classified images attacked with "
             f"{result['attack']} {result['settings']}",
             "relative accuracy: " + ", ".join(f"{eps:.3g}: {accuracy:.1%}" for eps, accuracy in
                                               zip(result["grid"], result["relative_accuracy"])),
             f"median critical eps (L-inf, {result['bisection_steps']} bisections): {result['median_critical_eps']:.4g}"]
    return "\n".join(lines)
