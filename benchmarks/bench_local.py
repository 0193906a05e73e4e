"""One epoch of Krotov-Hopfield local learning (2000 units, p = 3, k = 7, Delta = 0.4, MNIST, batch 100):
andor_jax's train step (objective ``krotov`` through the engine: the rule, its convergence metrics and the
SGD update) against a PyTorch eager implementation of the same rule, and the achieved GFLOP/s against a
plain matrix multiplication of the same sizes, all measured in the same run.

    python benchmarks/bench_local.py [--data-dir /work/shared/data/mnist] [--steps 600] [--json out.json]

A step costs two (batch x inputs x units) products: the currents ``v W_eff^T`` and the Hebbian term
``g^T v``: 4 * 100 * 784 * 2000 = 0.63 GFLOP.  ``fraction_of_peak`` = (that / our step time) / (the same
FLOPs / the time of the two bare jit-compiled matmuls).  ``speedup`` = PyTorch time / ours.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from andor_jax import config as config_lib, data, experiment, train  # noqa: E402
from common import configure_torch_threads, interleaved_medians, summary_row, write_json  # noqa: E402

BATCH, UNITS, INPUTS, P, K, DELTA, LR = 100, 2000, 784, 3.0, 7, 0.4, 0.04


def jax_epoch(dataset: data.Dataset, steps: int):
    run = experiment.Experiment(config_lib.load_config("krotov_mnist"), dataset=dataset)
    parallel = train.DataParallel.create(1, BATCH)
    state = parallel.replicate(run.init_state())
    step = run.train_step(parallel)
    x, y = dataset.x_train, dataset.y_train
    batches = [parallel.shard_batch(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]) for i in range(steps)]

    def once():
        nonlocal state
        for xb, yb in batches:
            state, metrics = step(state, xb, yb)
        jax.block_until_ready(state.params)

    return once


def torch_epoch(x: np.ndarray, steps: int):
    torch = configure_torch_threads()
    generator = torch.Generator().manual_seed(0)
    kernel = torch.randn(UNITS, INPUTS, generator=generator)
    inputs = torch.from_numpy(x)
    inputs = inputs / inputs.abs().pow(P).sum(1, keepdim=True).pow(1 / P).clamp_min(1e-30)
    batches = [inputs[i * BATCH:(i + 1) * BATCH] for i in range(steps)]
    total = steps

    def once():
        nonlocal kernel
        with torch.no_grad():
            for t, v in enumerate(batches):
                current = v @ (kernel.sign() * kernel.abs().pow(P - 1)).T       # (batch, units)
                ranked = torch.topk(current, K, dim=1).indices
                gains = torch.zeros_like(current)
                rows = torch.arange(len(v))
                gains[rows, ranked[:, 0]] = 1.0
                gains[rows, ranked[:, K - 1]] = -DELTA
                drive = (gains * current).sum(0)
                change = gains.T @ v - drive[:, None] * kernel
                kernel = kernel + LR * (1 - t / total) * change / change.abs().max().clamp_min(1e-30)

    return once


def matmul_pair(steps: int):
    """The two products of a step, bare and jit-compiled, ``steps`` times."""
    key = jax.random.PRNGKey(0)
    v = jax.random.uniform(key, (BATCH, INPUTS))
    w = jax.random.normal(key, (UNITS, INPUTS))
    g = jax.random.normal(key, (BATCH, UNITS))
    products = jax.jit(lambda v, w, g: (v @ w.T, g.T @ v))

    def once():
        for _ in range(steps):
            out = products(v, w, g)
        jax.block_until_ready(out)

    return once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=600, help="steps per epoch (600: all 60,000 images)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    dataset = data.load_dataset("mnist", args.data_dir, domain=(0.0, 1.0), flatten=True)
    x = np.asarray(dataset.x_train[:args.steps * BATCH], np.float32)
    seconds = interleaved_medians({"andor_jax": jax_epoch(dataset, args.steps), "pytorch": torch_epoch(x, args.steps),
                                   "matmul": matmul_pair(args.steps)}, rounds=args.rounds)
    flops = 4.0 * BATCH * INPUTS * UNITS * args.steps
    figures = {
        "steps": args.steps, "batch": BATCH, "units": UNITS,
        "seconds_andor_jax": seconds["andor_jax"], "seconds_pytorch": seconds["pytorch"],
        "seconds_matmul": seconds["matmul"],
        "gflops_andor_jax": flops / seconds["andor_jax"] / 1e9, "gflops_matmul": flops / seconds["matmul"] / 1e9,
        "speedup": seconds["pytorch"] / seconds["andor_jax"],
        "fraction_of_peak": seconds["matmul"] / seconds["andor_jax"],
        "devices": [str(d) for d in jax.devices()],
    }
    figures["summary"] = [summary_row("Krotov local-learning epoch", ours_s=seconds["andor_jax"],
                                      reference_s=seconds["pytorch"], reference="PyTorch eager",
                                      primitive="its two matmuls alone", fraction=figures["fraction_of_peak"])]
    for name, value in figures.items():
        if name != "summary":
            print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
