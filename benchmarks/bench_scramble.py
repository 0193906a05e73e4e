"""Cost of AND/OR training: one step of the ``'andor'`` objective (cross-entropy and loss2 with type B
scrambled datasets, vmapped over scrambles) against one plain cross-entropy step of the same network, in
the same run: the AND/OR LeNet, batch 200, random 28x28x1 inputs in [-1, 1], SGD with momentum.

    python benchmarks/bench_scramble.py [--scrambles 8] [--sds-size 0] [--repeats 10] [--json out.json]

Prints both step times and ``overhead`` = loss2 step time / plain step time (goal: at most 3), and
``fraction_of_peak``: the loss2 step's FLOPs (XLA's cost analysis) per second over the rate of one
(200, 512) @ (512, 512) product measured in the same run.
``--sds-size`` is the number of examples per scrambled dataset (0: batch / scrambles, the default).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import ml_collections  # noqa: E402

from andor_jax import config as config_lib, models, objectives, train  # noqa: E402
from andor_jax.objectives.andor import default_settings  # noqa: E402
from common import compiled_flops, fraction_of_peak, matmul_rate, median_seconds, summary_row, write_json  # noqa: E402

BATCH = 200


def train_config(objective: str, scrambles: int, sds_size: int) -> ml_collections.ConfigDict:
    config = config_lib.base_config().train
    config.update({"optimizer": "sgd", "learning_rate": 5e-4, "momentum": 0.9, "loss": "cross_entropy",
                   "objective": objective})
    config.andor = default_settings()
    config.andor.num_scrambles = scrambles
    config.andor.sds_size = sds_size
    return config


def step_seconds(model, config, x, y, repeats: int) -> tuple[float, float, float]:
    """(compile seconds, median seconds of one step, FLOPs of one step) of the jitted training step."""
    optimizer = train.make_optimizer(config)
    projection = lambda params, step: models.project(model, params)  # noqa: E731
    objective = objectives.get_objective(model, config)
    state = train.init_state(model, optimizer, objective, x[:1], seed=0, projection=projection)
    step = jax.jit(train.make_train_step(optimizer, objective, projection=projection), donate_argnums=0)
    started = time.perf_counter()
    compiled = step.lower(state, x, y).compile()
    compile_seconds = time.perf_counter() - started

    def run():
        nonlocal state
        state, metrics = compiled(state, x, y)
        jax.block_until_ready(state.params)

    return compile_seconds, median_seconds(run, repeats=repeats, warmup=2), compiled_flops(compiled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scrambles", type=int, default=8)
    parser.add_argument("--sds-size", type=int, default=0,
                        help="examples per scrambled dataset; 0: batch / scrambles (the default of train.andor)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    model = models.build_model(ml_collections.ConfigDict({"name": "andor_lenet"}))
    kx, ky = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.uniform(kx, (BATCH, 28, 28, 1), minval=-1.0, maxval=1.0)
    y = jax.random.randint(ky, (BATCH,), 0, 10)
    plain_compile, plain, _ = step_seconds(model, train_config("supervised", args.scrambles, args.sds_size), x, y,
                                        args.repeats)
    andor_compile, andor, andor_flops = step_seconds(model, train_config("andor", args.scrambles, args.sds_size), x, y,
                                        args.repeats)
    figures = {"batch": BATCH, "scrambles": args.scrambles, "sds_size": args.sds_size or BATCH // args.scrambles,
               "plain_step_seconds": plain, "loss2_step_seconds": andor, "overhead": andor / plain,
               "plain_compile_seconds": plain_compile, "loss2_compile_seconds": andor_compile,
               "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
               "matmul_flops_per_second": matmul_rate(BATCH, 512, 512), "load_average": list(os.getloadavg())}
    figures["fraction_of_peak"] = fraction_of_peak(andor_flops / andor, figures["matmul_flops_per_second"])
    figures["summary"] = [summary_row("AND/OR LeNet step with loss2 (type B) vs plain CE step", ours_s=andor,
                                      reference_s=plain, reference="our plain CE step",
                                      primitive=f"matmul ({BATCH}x512 @ 512x512)",
                                      fraction=figures["fraction_of_peak"])]
    print(f"plain cross-entropy step: {plain * 1e3:8.1f} ms   (compile {plain_compile:.1f} s)")
    print(f"cross-entropy + loss2:    {andor * 1e3:8.1f} ms   (compile {andor_compile:.1f} s; type B, "
          f"{args.scrambles} scrambles of {args.sds_size or BATCH // args.scrambles} examples)")
    print(f"overhead (loss2 step / plain step): {andor / plain:.2f}x   (goal: at most 3x); loss2 step at "
          f"{figures['fraction_of_peak']:.2f} of the matmul rate "
          f"({figures['matmul_flops_per_second'] / 1e9:.1f} GFLOP/s)")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
