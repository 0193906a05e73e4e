"""Training throughput of the ReLU MLP baseline (784-512-512-512-10, AdaDelta lr 1, batch 100):
andor_jax's jit-compiled step against a plain PyTorch eager loop, same model, optimiser and batch.

    python benchmarks/bench_train.py [--steps 200] [--json out.json]

Prints examples per second of both and the ratio ``speedup`` = PyTorch time / andor_jax time (minimums over
interleaved rounds), and ``fraction_of_peak``: the step's FLOPs (XLA's cost analysis) per second over the rate of
one (100, 512) @ (512, 512) product measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from andor_jax import config as config_lib, models, train  # noqa: E402
from andor_jax.objectives.losses import cross_entropy  # noqa: E402
from andor_jax.objectives.supervised import supervised_objective  # noqa: E402
from common import (compiled_flops, configure_torch_threads, fraction_of_peak, interleaved_minimums,  # noqa: E402
                    machine, matmul_rate, summary_row, write_json)

BATCH, HIDDEN, CLASSES, FEATURES = 100, (512, 512, 512), 10, 784


def jax_epoch(x, y, steps: int):
    model = models.build_model(ml_collections.ConfigDict({"name": "mlp", "hidden": HIDDEN}))
    optimizer = train.make_optimizer(config_lib.base_config().train)  # AdaDelta lr 1, rho 0.9, eps 1e-6
    objective = supervised_objective(model, cross_entropy)
    state = train.init_state(model, optimizer, objective, x[:1], seed=0)
    step = jax.jit(train.make_train_step(optimizer, objective), donate_argnums=0)
    batches = [(jax.device_put(x[i * BATCH:(i + 1) * BATCH]), jax.device_put(y[i * BATCH:(i + 1) * BATCH]))
               for i in range(steps)]
    step = step.lower(state, *batches[0]).compile()

    def run():
        nonlocal state
        for xb, yb in batches:
            state, metrics = step(state, xb, yb)
        jax.block_until_ready(state.params)

    run.step_flops = compiled_flops(step)
    return run


def torch_epoch(x, y, steps: int):
    torch = configure_torch_threads()
    layers, width = [], FEATURES
    for hidden in HIDDEN:
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        width = hidden
    net = torch.nn.Sequential(*layers, torch.nn.Linear(width, CLASSES))
    optimizer = torch.optim.Adadelta(net.parameters(), lr=1.0, rho=0.9, eps=1e-6)
    batches = [(torch.from_numpy(x[i * BATCH:(i + 1) * BATCH]), torch.from_numpy(y[i * BATCH:(i + 1) * BATCH]).long())
               for i in range(steps)]

    def run():
        for xb, yb in batches:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xb), yb)
            loss.backward()
            optimizer.step()

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per timed run")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs of each, in alternation")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.steps * BATCH, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, args.steps * BATCH).astype(np.int32)
    start_machine = machine()
    ours_run = jax_epoch(x, y, args.steps)
    seconds = interleaved_minimums({"ours": ours_run, "torch": torch_epoch(x, y, args.steps)}, rounds=args.rounds)
    peak = matmul_rate(BATCH, 512, 512)
    ours, reference = seconds["ours"], seconds["torch"]
    examples = args.steps * BATCH
    figures = {"benchmark": "relu_mlp_train_step", "batch": BATCH, "steps": args.steps,
               "devices": [str(d) for d in jax.local_devices()],
               "andor_jax_examples_per_s": examples / ours, "pytorch_examples_per_s": examples / reference,
               "speedup": reference / ours, "matmul_flops_per_second": peak,
               "fraction_of_peak": fraction_of_peak(ours_run.step_flops * args.steps / ours, peak),
               "load_average_start": start_machine["load_average"]}
    figures["summary"] = [summary_row(f"ReLU MLP training step (batch {BATCH})", ours_s=ours / args.steps,
                                      reference_s=reference / args.steps, reference="PyTorch eager",
                                      primitive=f"matmul ({BATCH}x512 @ 512x512)",
                                      fraction=figures["fraction_of_peak"])]
    print(f"andor_jax : {figures['andor_jax_examples_per_s']:10.0f} examples/s ({ours / args.steps * 1e3:.2f} ms/step)")
    print(f"PyTorch   : {figures['pytorch_examples_per_s']:10.0f} examples/s ({reference / args.steps * 1e3:.2f} ms/step)")
    print(f"speedup (PyTorch time / andor_jax time): {figures['speedup']:.2f}x; fraction of the matmul rate "
          f"({peak / 1e9:.1f} GFLOP/s): {figures['fraction_of_peak']:.2f}")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
