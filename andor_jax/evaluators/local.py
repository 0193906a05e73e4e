"""Diagnostics of layers learnt by a local rule (Krotov & Hopfield, PNAS 2019): the acceptance test of
their convergence and a picture of their receptive fields.

A Krotov-Hopfield layer is accepted when fewer than 10 % of its units have ``| ||W_mu||_p - R | > 0.01``
and no unit has a mean weight below ``-R/2`` (`andor_jax.layers.krotov.convergence`).  Its receptive
fields are the rows of its kernel drawn as images, each on a symmetric colour scale (red positive, blue
negative), as in the papers' figures.
"""
from __future__ import annotations

import math
import pathlib

import numpy as np

from andor_jax.layers.base import format_path, get_path, walk
from andor_jax.layers.krotov import KrotovHopfield, accepted, convergence


def local_layers(model, variables) -> list[dict]:
    """For every Krotov-Hopfield layer of ``model``: its path, settings and convergence diagnostic."""
    records = []
    for path, layer, _ in walk(model):
        if isinstance(layer, KrotovHopfield):
            kernel = get_path(variables["params"], path)["kernel"]
            diagnostic = {k: float(v) for k, v in convergence(kernel, layer.p, layer.radius).items()}
            records.append({"layer": format_path(path), "units": int(kernel.shape[0]), "p": layer.p,
                            "radius": layer.radius, **diagnostic, "accepted": accepted(diagnostic)})
    return records


def plot_receptive_fields(kernel: np.ndarray, path: str | pathlib.Path, *, count: int = 100,
                          image_shape: tuple[int, int] = (28, 28), title: str = "") -> None:
    """The first ``count`` rows of ``kernel`` (units, inputs) as a square-ish grid of ``image_shape`` images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = np.asarray(kernel)[:count]
    columns = math.ceil(math.sqrt(len(weights)))
    rows = math.ceil(len(weights) / columns)
    height, width = image_shape
    canvas = np.full((rows * (height + 1) - 1, columns * (width + 1) - 1), np.nan)
    for index, unit in enumerate(weights):
        row, col = divmod(index, columns)
        scale = np.abs(unit).max() or 1.0
        canvas[row * (height + 1):row * (height + 1) + height, col * (width + 1):col * (width + 1) + width] = \
            unit.reshape(image_shape) / scale
    figure, axes = plt.subplots(figsize=(columns * 0.6 + 0.5, rows * 0.6 + 0.6))
    axes.imshow(canvas, cmap="bwr", vmin=-1, vmax=1, interpolation="nearest")
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_receptive_fields(variables, record: dict, path: str | pathlib.Path, *, count: int = 100) -> pathlib.Path:
    """`plot_receptive_fields` of the local layer of ``record`` (an entry of `local_layers`): square images
    when its inputs are, a strip otherwise, titled with its diagnostic."""
    kernel = get_path(variables["params"], tuple(record["layer"].split("/")))["kernel"]
    side = int(round(math.sqrt(kernel.shape[1])))
    shape = (side, side) if side * side == kernel.shape[1] else (1, kernel.shape[1])
    plot_receptive_fields(np.asarray(kernel), path, count=count, image_shape=shape,
                          title=f"{record['layer']}: {record['off_norm_fraction']:.1%} of units off norm, "
                                f"{record['inhibitory_fraction']:.1%} inhibitory")
    return pathlib.Path(path)


def analyse(workdir: str | pathlib.Path, *, count: int = 100) -> dict:
    """The diagnostic of every local layer of a trained run, and ``receptive_fields.png`` (the first local
    layer's first ``count`` units) in its work directory."""
    import json

    from andor_jax import experiment

    workdir = pathlib.Path(workdir)
    run, variables = experiment.load_trained(workdir, with_data=False)
    records = local_layers(run.model, variables)
    if records:
        write_receptive_fields(variables, records[0], workdir / "receptive_fields.png", count=count)
    result = {"workdir": str(workdir), "local_layers": records}
    (workdir / "local_layers.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
