"""Covariance spectra of representations and their power-law exponent.

Stringer et al. (Nature 2019) found that the variance of mouse V1 responses along the n-th principal
component decays as ``n^-alpha`` with ``alpha`` just above 1, and that a smooth (hence robust) code of
d-dimensional inputs needs ``alpha >= 1 + 2/d``.  Holzhausen et al. (arXiv 2405.00679) measure alpha of
network layers: the covariance of a layer's outputs over a data set, its eigenvalues in descending order
divided by the first, and ``alpha`` = minus the slope of the least-squares line of ``log(lambda_n / lambda_1)``
on ``log(n)`` over ``n = 11..500``.  Everything here is computed in float64 (their code uses float32),
from batches of float32 outputs.

Layers are named by their path (``"layers_1"``, `andor_jax.models.representation`); ``"input"`` names the
inputs themselves (the raw pixels).
"""
from __future__ import annotations

import json
import pathlib
from typing import Iterable, NamedTuple, Sequence

import jax
import numpy as np

from andor_jax import models
from andor_jax.layers.base import format_path, leaves

INPUT = "input"
DEFAULT_FIT_RANGE = (11, 500)
RANK_TOLERANCE = 1e-12  # lambda_n / lambda_1 below this counts as zero (the representation's rank is lower)


class PowerLaw(NamedTuple):
    """``log(lambda_n / lambda_1) ~ intercept - alpha log(n)`` fitted over ``start <= n <= stop`` (1-based)."""

    alpha: float
    intercept: float
    start: int
    stop: int


def covariance(batches: Iterable[np.ndarray]) -> np.ndarray:
    """The (unbiased) covariance of the rows of all ``batches`` (each (batch, features)), accumulated in float64:
    ``(sum x x^T - n mu mu^T) / (n - 1)`` about the mean of every row seen."""
    count, total, outer = 0, None, None
    for batch in batches:
        x = np.asarray(batch, np.float64).reshape(len(batch), -1)
        if total is None:
            total, outer = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        count += len(x)
        total += x.sum(axis=0)
        outer += x.T @ x
    if count < 2:
        raise ValueError(f"a covariance needs at least 2 examples, got {count}")
    mean = total / count
    return (outer - count * np.outer(mean, mean)) / (count - 1)


def eigenspectrum(cov: np.ndarray) -> np.ndarray:
    """Eigenvalues of a covariance matrix in descending order (float64)."""
    return np.linalg.eigvalsh(np.asarray(cov, np.float64))[::-1]


def fit_alpha(eigenvalues: np.ndarray, fit_range: tuple[int, int] = DEFAULT_FIT_RANGE) -> PowerLaw:
    """Least squares of ``log(lambda_n / lambda_1)`` on ``log(n)`` over the 1-based ``fit_range`` (inclusive;
    its end is cut to the number of eigenvalues); ``alpha`` is minus the slope.  The eigenvalues in the
    range must be positive (a rank-deficient representation has fewer usable components: shorten the range).
    """
    values = np.asarray(eigenvalues, np.float64)
    start, stop = int(fit_range[0]), min(int(fit_range[1]), len(values))
    if not 1 <= start < stop:
        raise ValueError(f"fit range {fit_range} leaves fewer than 2 of the {len(values)} eigenvalues")
    window = values[start - 1:stop]
    if values[0] <= 0 or np.any(window <= 0):
        bad = start + int(np.argmax(window <= 0))
        raise ValueError(f"eigenvalue {bad} is not positive ({values[bad - 1]:.3g}): the representation has rank "
                         f"below {stop}; fit over a shorter range")
    n = np.arange(start, stop + 1, dtype=np.float64)
    slope, intercept = np.polyfit(np.log(n), np.log(window / values[0]), 1)
    return PowerLaw(float(-slope), float(intercept), start, stop)


def default_layer(model, variables) -> str:
    """The first hidden layer: the output of the first layer with parameters, unless it is the only one
    (then the inputs).  For ``mlp`` and ``krotov`` models this is ``layers_1`` (pre-activations, the
    Krotov-Hopfield currents), what Holzhausen et al. analyse."""
    with_params = [path for path, _, layer_params in leaves(model, variables["params"]) if layer_params]
    return format_path(with_params[0]) if len(with_params) > 1 else INPUT


def layer_batches(model, variables, x: np.ndarray, layer: str, batch_size: int = 1000):
    """The flattened outputs (batch, features) of ``layer`` (a path, or ``"input"``) for ``x``, batch by batch."""
    if layer == INPUT:
        for start in range(0, len(x), batch_size):
            yield np.asarray(x[start:start + batch_size]).reshape(len(x[start:start + batch_size]), -1)
        return
    features = jax.jit(lambda v, xb: models.representation(model, v, xb, [layer]))
    for start in range(0, len(x), batch_size):
        yield np.asarray(features(variables, x[start:start + batch_size]))


def spectrum(model, variables, x: np.ndarray, layer: str, batch_size: int = 1000) -> np.ndarray:
    """The descending covariance eigenvalues of ``layer``'s outputs over ``x`` (float64)."""
    return eigenspectrum(covariance(layer_batches(model, variables, x, layer, batch_size)))


def summary(name: str, eigenvalues: np.ndarray, fit_range: tuple[int, int] = DEFAULT_FIT_RANGE, **extra) -> dict:
    """A JSON-able record: the fit, and the normalised spectrum ``lambda_n / lambda_1``."""
    fit = fit_alpha(eigenvalues, fit_range)
    return {"name": name, **extra, "alpha": fit.alpha, "intercept": fit.intercept, "fit_range": [fit.start, fit.stop],
            "dimension": int(len(eigenvalues)), "normalised_eigenvalues": (eigenvalues / eigenvalues[0]).tolist()}


def plot(records: Sequence[dict], path: str | pathlib.Path, title: str = "covariance spectra") -> None:
    """Log-log plot of every record's ``lambda_n / lambda_1`` with its fitted line (dashed, over the fit
    range), alpha in the legend; one figure for several models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.5))
    for record in records:
        values = np.asarray(record["normalised_eigenvalues"])
        n = np.arange(1, len(values) + 1)
        positive = values > RANK_TOLERANCE  # numerically zero eigenvalues (beyond the rank) are not drawn
        line, = axes.loglog(n[positive], values[positive], lw=1.2, label=f"{record['name']}: alpha = {record['alpha']:.2f}")
        start, stop = record["fit_range"]
        fit_n = np.arange(start, stop + 1)
        axes.loglog(fit_n, np.exp(record["intercept"]) * fit_n ** -record["alpha"], "--", color=line.get_color(), lw=1)
    axes.set_xlabel("n (principal component)")
    axes.set_ylabel("lambda_n / lambda_1")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def analyse(workdirs: Sequence[str | pathlib.Path], *, layer: str | None = None, data_dir: str | None = None,
            limit: int = 0, fit_range: tuple[int, int] = DEFAULT_FIT_RANGE, pixels: bool = True,
            random_init: bool = False, output: str | pathlib.Path | None = None) -> dict[str, pathlib.Path]:
    """Spectra of trained models over their test sets (the first ``limit`` images; 0: all), as Holzhausen
    et al. measure them: for each work directory the outputs of ``layer`` (default: the first hidden layer,
    `default_layer`), optionally the same layer at the run's initial parameters (``random_init``), and the
    raw pixels of each distinct test set (``pixels``, named by data set when there are several).  Writes ``spectrum.json`` (alpha, fit range and the
    normalised spectrum of each) and ``spectrum.png`` (`plot`) into ``output`` (default: the first work
    directory) and returns their paths."""
    from andor_jax import experiment

    records, test_sets = [], {}  # data set name -> its test images, in order of appearance
    for workdir in map(pathlib.Path, workdirs):
        run, variables = experiment.load_trained(workdir, data_dir=data_dir)
        x = run.dataset.x_test[:limit] if limit else run.dataset.x_test
        test_sets.setdefault(run.config.data.dataset, x)
        name = layer or default_layer(run.model, variables)
        records.append(summary(f"{workdir.name} {name}", spectrum(run.model, variables, x, name), fit_range,
                               workdir=str(workdir), layer=name, examples=int(len(x))))
        if random_init:
            state = run.init_state()
            initial = {"params": state.params, **state.model_state}
            records.append(summary(f"{workdir.name} {name} (random init)", spectrum(run.model, initial, x, name),
                                   fit_range, workdir=str(workdir), layer=name, examples=int(len(x)), initial=True))
    for dataset, x in test_sets.items() if pixels else ():
        records.append(summary("pixels" if len(test_sets) == 1 else f"pixels ({dataset})",
                               spectrum(None, None, x, INPUT), fit_range, layer=INPUT, examples=int(len(x))))
    directory = pathlib.Path(output) if output else pathlib.Path(workdirs[0])
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "spectrum.json", "png": directory / "spectrum.png"}
    paths["json"].write_text(json.dumps({"fit_range": list(fit_range), "records": records}, indent=1) + "\n")
    plot(records, paths["png"])
    return paths


MAX_REPORT_FEATURES = 4096  # a wider first layer (a convolution's feature maps) is left out of reports


def report_entry(model, variables, x: np.ndarray, fit_range: tuple[int, int] = DEFAULT_FIT_RANGE) -> dict | None:
    """What a robustness report says about a model's representation: alpha of its first hidden layer
    (`default_layer`) over the examples ``x``, with the fit range actually used (cut to the rank the
    examples allow); None for a randomised model, a model without a hidden layer or one wider than
    `MAX_REPORT_FEATURES`.  Krotov-Hopfield layers add their convergence diagnostic
    (`andor_jax.evaluators.local.local_layers`)."""
    from andor_jax.evaluators.local import local_layers

    if models.randomised(model):
        return None
    layer = default_layer(model, variables)
    if layer == INPUT:
        return None
    width = jax.eval_shape(lambda v, xb: models.representation(model, v, xb, [layer]), variables, x[:1]).shape[-1]
    if width > MAX_REPORT_FEATURES:
        return None
    values = spectrum(model, variables, x, layer)
    stop = min(fit_range[1], int(np.sum(values > values[0] * RANK_TOLERANCE)), len(x) - 1)
    if stop <= fit_range[0]:
        return None
    fit = fit_alpha(values, (fit_range[0], stop))
    entry = {"layer": layer, "alpha": fit.alpha, "fit_range": [fit.start, fit.stop], "examples": int(len(x))}
    local = local_layers(model, variables)
    return {**entry, "local_layers": local} if local else entry
