"""Speed of certification: interval bound propagation of a whole test set at every eps of a grid, against
one plain forward pass over the same data (the MWD paper estimates IBP at 2-3 forward passes).

    python benchmarks/bench_bounds.py --checkpoint runs/mwd_mnist --data-dir ../shared/data/mnist [--json out.json]

Without ``--checkpoint`` a freshly initialised ``mwd_mnist`` network and uniform random inputs are used.
Prints the seconds of the full certification (``seconds``), of one forward pass, and their ratio per eps, and
``fraction_of_peak``: the MWD max-reductions of the certification (two per (example, out, in) element of
every MWD layer, for every example propagated) per second over the rate of one such reduction alone
(``common.max_reduction_rate``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from andor_jax import bounds, config as config_lib, data, experiment, models  # noqa: E402
from andor_jax.validation import parse_eps_grid  # noqa: E402
from common import fraction_of_peak, machine, max_reduction_rate, summary_row, write_json  # noqa: E402


def load(args):
    if args.checkpoint:
        exp, variables = experiment.load_trained(args.checkpoint, data_dir=args.data_dir)
        return exp.model, variables, exp.dataset.x_test[:args.n], exp.dataset.y_test[:args.n]
    config = config_lib.load_config("mwd_mnist")
    model = models.build_model(config.model)
    x = np.random.default_rng(0).uniform(size=(args.n, 784)).astype(np.float32)
    variables = model.init(jax.random.key(0), x[:1])
    return model, variables, x, np.zeros(args.n, np.int32)


def forward_seconds(model, variables, x, batch_size: int) -> float:
    apply = jax.jit(lambda v, xb: model.apply(v, xb))
    jax.block_until_ready(apply(variables, jnp.asarray(x[:batch_size])))
    start = time.perf_counter()
    for xb, _ in data.eval_batches(x, np.zeros(len(x), np.int32), batch_size):
        jax.block_until_ready(apply(variables, jnp.asarray(xb)))
    return time.perf_counter() - start


def mwd_elements(variables) -> int:
    """(out, in) elements per example of the network's MWD layers (parameters ``u`` and ``w``); each is
    reduced twice in interval propagation (the box's two ends)."""
    return sum(layer["u"].size for layer in variables["params"].values() if "u" in layer and "w" in layer)


def propagated_examples(accuracy: dict, n: int) -> int:
    """Examples propagated over the grid: all at the smallest eps, then those still certified (the walk of
    `andor_jax.bounds.certified_accuracy`)."""
    fractions = [accuracy[e] for e in sorted(accuracy)]
    return round(n * (1 + sum(fractions[:-1])))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="work directory of a trained run")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n", type=int, default=10_000, help="test examples certified")
    parser.add_argument("--eps", default="0.05:0.5:0.05")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model, variables, x, y = load(args)
    start_machine = machine()
    grid = parse_eps_grid(args.eps)
    bounds.certified_accuracy(model, variables, x[:args.batch_size], y[:args.batch_size], grid[:1],
                              domain=(0.0, 1.0), batch_size=args.batch_size)  # compile once, untimed
    start = time.perf_counter()
    accuracy = bounds.certified_accuracy(model, variables, x, y, grid, domain=(0.0, 1.0),
                                         batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    forward = forward_seconds(model, variables, x, args.batch_size)
    per_eps_ratio = seconds / len(grid) / forward
    reduced = 2 * mwd_elements(variables) * propagated_examples(accuracy, len(x))
    peak = max_reduction_rate(args.batch_size, 512, 512)
    figures = {"benchmark": "certification", "n": len(x), "eps": grid, "seconds": seconds,
               "forward_seconds": forward, "ratio_per_eps_to_forward": per_eps_ratio,
               "certified_accuracy": {str(k): v for k, v in accuracy.items()},
               "reduction_elements_per_second": peak, "fraction_of_peak": fraction_of_peak(reduced / seconds, peak),
               "load_average_start": start_machine["load_average"]}
    figures["summary"] = [summary_row(f"certification, {len(x)} images x {len(grid)} eps", ours_s=seconds,
                                      reference_s=None, reference=None, primitive="MWD max-reduction",
                                      fraction=figures["fraction_of_peak"])]
    print(f"certification of {len(x)} examples at {len(grid)} eps: {seconds:.1f} s")
    print(f"one forward pass over the same data: {forward:.2f} s; ratio per eps: {per_eps_ratio:.2f}x")
    print("certified accuracy:", {k: round(v, 4) for k, v in accuracy.items()})
    print(f"fraction of the max-reduction rate ({peak:.3g} elements/s): {figures['fraction_of_peak']:.2f}")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
