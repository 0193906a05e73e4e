"""Speed of certification: interval bound propagation of a whole test set at every eps of a grid, against
one plain forward pass over the same data (the MWD paper estimates IBP at 2-3 forward passes).

    python benchmarks/bench_bounds.py --checkpoint runs/mwd_mnist --data-dir ../shared/data/mnist [--json out.json]

Without ``--checkpoint`` a freshly initialised ``mwd_mnist`` network and uniform random inputs are used.
Prints the seconds of the full certification (``seconds``), of one forward pass, and their ratio per eps.
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
from andor_jax.config import parse_eps  # noqa: E402
from common import write_json  # noqa: E402


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
    grid = parse_eps(args.eps)
    bounds.certified_accuracy(model, variables, x[:args.batch_size], y[:args.batch_size], grid[:1],
                              domain=(0.0, 1.0), batch_size=args.batch_size)  # compile once, untimed
    start = time.perf_counter()
    accuracy = bounds.certified_accuracy(model, variables, x, y, grid, domain=(0.0, 1.0),
                                         batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    forward = forward_seconds(model, variables, x, args.batch_size)
    per_eps_ratio = seconds / len(grid) / forward
    figures = {"benchmark": "certification", "n": len(x), "eps": grid, "seconds": seconds,
               "forward_seconds": forward, "ratio_per_eps_to_forward": per_eps_ratio,
               "certified_accuracy": {str(k): v for k, v in accuracy.items()}}
    print(f"certification of {len(x)} examples at {len(grid)} eps: {seconds:.1f} s")
    print(f"one forward pass over the same data: {forward:.2f} s; ratio per eps: {per_eps_ratio:.2f}x")
    print("certified accuracy:", {k: round(v, 4) for k, v in accuracy.items()})
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
