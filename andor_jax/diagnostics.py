"""How AND-like a trained network is: histograms of nics under EDS and SDS (Fontana, arXiv 2102.07389,
Figure 7) and a per-layer summary of hyper-saturation for the robustness report.

Both work on any tree of layers: the neuron layers are those of `andor_jax.scramble.connections`, nested
ones included, named by their paths (for the baselines their "nics" are pre-activations).  In the paper,
after AND/OR training the EDS histograms are bimodal and the SDS ones close to a normal distribution.
"""
from __future__ import annotations

import pathlib

import flax.linen as nn
import jax
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from andor_jax import scramble
from andor_jax.layers.base import Path, format_path, layer_at

Samples = dict[Path, tuple[np.ndarray, np.ndarray]]


def nics_samples(model: nn.Module, variables: dict, x: jax.Array, key: jax.Array, *, kind: str = "B",
                 num_scrambles: int = 1, unit: str = "element") -> Samples:
    """Every neuron layer's outputs for the batch ``x`` under EDS and under ``num_scrambles`` scrambled
    datasets of ``kind`` of the batch's size: ``{layer path: (real, scrambled)}`` as NumPy arrays."""
    layers = list(scramble.connections(model, variables, x).channels)
    keys = jax.random.split(key, num_scrambles)
    nics = jax.jit(lambda v, x, k: scramble.layer_nics(model, v, scramble.extended_dataset(model, v, x), k, layers,
                                                       kind=kind, unit=unit))(variables, x, keys)
    return {i: (np.asarray(real), np.asarray(scrambled)) for i, (real, scrambled) in nics.items()}


def andness_summary(model: nn.Module, samples: Samples) -> dict:
    """Per neuron layer: its type, number of neurons and the mean, min and max of hypersat over its
    neurons; and ``mean_hypersat`` over every neuron of the network.  Plain floats (JSON-ready)."""
    layers, values = {}, []
    for path, (real, scrambled) in samples.items():
        h = np.asarray(jax.jit(scramble.hypersat)(real, scrambled))
        values.append(h)
        layers[format_path(path)] = {"type": type(layer_at(model, path)).__name__, "neurons": int(h.size),
                                     "mean_hypersat": float(h.mean()), "min_hypersat": float(h.min()),
                                     "max_hypersat": float(h.max())}
    return {"layers": layers, "mean_hypersat": float(np.concatenate(values).mean())}


def plot_nics_histograms(model: nn.Module, samples: Samples,
                         path: str | pathlib.Path, *, bins: int = 60) -> pathlib.Path:
    """One panel per neuron layer: the density of nics over all its neurons (the average of the
    neurons' distributions) under EDS (blue) and SDS (orange).  Writes a PNG to ``path``."""
    path = pathlib.Path(path)
    figure = Figure(figsize=(3.2 * len(samples), 2.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(samples), squeeze=False)[0]
    for ax, (layer_path, (real, scrambled)) in zip(axes, samples.items()):
        real, scrambled = real.ravel(), scrambled.ravel()
        edges = np.linspace(min(real.min(), scrambled.min()), max(real.max(), scrambled.max()) + 1e-6, bins + 1)
        for values, colour, label in ((real, "tab:blue", "EDS"), (scrambled, "tab:orange", "SDS")):
            ax.stairs(np.histogram(values, edges, density=True)[0], edges, fill=True, alpha=0.6, color=colour,
                      label=label)
        ax.set_title(f"{format_path(layer_path)}: {type(layer_at(model, layer_path)).__name__}", fontsize=9)
        ax.set_xlabel("nics")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=8)
    figure.savefig(path, dpi=100)
    return path
