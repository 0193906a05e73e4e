"""FAB-T's step onto the linearised boundary: bisection (the library) against sorting (the textbook).

Every FAB iteration projects two points onto the hyperplane ``<w, z> = b`` within the input box, the least
L-inf step (`andor_jax.attacks.fab.hyperplane_step`).  Croce & Hein's reference code sorts each row's
``room`` to the box's faces (``torch.sort``); on a CPU, XLA's sort of a (batch x targets, 784) array costs
several times the network's own gradient.  The library brackets the same solution by bisection (one pass
over the coordinates per halving) and solves it exactly on its linear piece.  This script times, in the same
process and interleaved, (a) the step itself at FAB-T's sizes and (b) FAB-T (9 targets) on a ReLU MLP, once
with the library's step and once with the sorted reference below, checks that both give the same verdict,
and prints ``speedup`` = sorted / bisection.  Times are medians over ``--rounds`` rounds after a warm-up run
(compilation excluded); nothing is asserted.

    python benchmarks/bench_fab.py [--checkpoint runs/relu --data-dir DIR] [--n 200] [--eps 0.1]
        [--steps 100] [--rounds 3] [--json PATH]

Without ``--checkpoint`` the network is a random 784-512-512-512-10 ReLU MLP and the inputs are uniform
(a timing of the same arithmetic; the verdicts mean nothing there).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from andor_jax import experiment as experiment_lib  # noqa: E402
from andor_jax import models  # noqa: E402
from andor_jax.attacks import fab, registry  # noqa: E402
from common import clipped_sum_rate, fraction_of_peak, interleaved_medians, summary_row, write_json  # noqa: E402

TARGETS = 9


def sorted_hyperplane_step(p, w, b, domain):
    """The reference: the same least L-inf step, with the rooms sorted (the piecewise-linear reach ``g`` at
    the sorted breakpoints, then the first breakpoint that reaches ``|r|``)."""
    lo, hi = domain
    r = b - jnp.sum(w * p, axis=1)
    direction = jnp.sign(w) * jnp.sign(r)[:, None]
    room = jnp.where(direction > 0, hi - p, jnp.where(direction < 0, p - lo, 0.0))
    order = jnp.argsort(room, axis=1)
    room_sorted = jnp.take_along_axis(room, order, axis=1)
    weight_sorted = jnp.take_along_axis(jnp.abs(w), order, axis=1)
    covered = jnp.cumsum(weight_sorted * room_sorted, axis=1)
    weight_before = jnp.cumsum(weight_sorted, axis=1) - weight_sorted
    weight_after = jnp.sum(weight_sorted, axis=1, keepdims=True) - weight_before
    reach = covered + room_sorted * (weight_after - weight_sorted)
    need = jnp.abs(r)
    reached = reach >= need[:, None]
    k = jnp.argmax(reached, axis=1)[:, None]
    below = jnp.take_along_axis(covered - weight_sorted * room_sorted, k, axis=1)[:, 0]
    after = jnp.take_along_axis(weight_after, k, axis=1)[:, 0]
    delta = jnp.where(jnp.any(reached, axis=1), (need - below) / jnp.maximum(after, 1e-30), room_sorted[:, -1])
    return direction * jnp.minimum(jnp.maximum(delta, 0.0)[:, None], room)


def random_mlp(key, widths=(784, 512, 512, 512, 10)):
    keys = jax.random.split(key, len(widths) - 1)
    kernels = [jax.random.normal(k, (a, b)) * (2.0 / a) ** 0.5 for k, a, b in zip(keys, widths[:-1], widths[1:])]

    def logits(x):
        for kernel in kernels[:-1]:
            x = jax.nn.relu(x @ kernel)
        return x @ kernels[-1]

    return logits


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a trained work directory (default: a random ReLU MLP)")
    parser.add_argument("--data-dir", default=None, help="directory with the MNIST IDX files")
    parser.add_argument("--n", type=int, default=200, help="images attacked (one batch)")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=100, help="FAB iterations per target")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--json", default=None, help="write the figures to this path")
    args = parser.parse_args(argv)

    if args.checkpoint:
        experiment, variables = experiment_lib.load_trained(args.checkpoint, data_dir=args.data_dir)
        x = jnp.asarray(experiment.dataset.x_test[:args.n]).reshape(args.n, -1)
        y = jnp.asarray(experiment.dataset.y_test[:args.n])
        shape = experiment.dataset.x_test.shape[1:]
        network = lambda inputs: models.logits(experiment.model, variables, inputs.reshape(-1, *shape))  # noqa: E731
    else:
        x = jax.random.uniform(jax.random.PRNGKey(1), (args.n, 784))
        network = random_mlp(jax.random.PRNGKey(0))
        y = jnp.argmax(network(x), -1)
    library_step = fab.hyperplane_step
    steps = {"bisection": library_step, "sorted": sorted_hyperplane_step}
    key = jax.random.PRNGKey(0)

    rows = args.n * TARGETS
    p = jax.random.uniform(jax.random.PRNGKey(2), (rows, x.shape[1]))
    w = jax.random.normal(jax.random.PRNGKey(3), (rows, x.shape[1]))
    b = jnp.sum(w * p, 1) + jax.random.normal(jax.random.PRNGKey(4), (rows,))
    compiled = {name: jax.jit(lambda p, w, b, step=step: step(p, w, b, (0.0, 1.0))) for name, step in steps.items()}
    step_times = interleaved_medians({name: (lambda fn=fn: jax.block_until_ready(fn(p, w, b)))
                                      for name, fn in compiled.items()}, rounds=max(args.rounds, 5))
    gap = float(jnp.max(jnp.abs(compiled["bisection"](p, w, b) - compiled["sorted"](p, w, b))))
    # the bisection's passes over the (rows, inputs) coordinates, each a fused reduction of w min(t, room):
    # their rate is the step's limit
    passes = fab.BISECTION_STEPS + 2
    fraction = fraction_of_peak(passes * p.size / step_times["bisection"], clipped_sum_rate(rows, p.shape[1]))

    verdicts = {}

    def attack(name):
        logits_fn = jax.jit(lambda inputs: network(inputs))  # one function per variant: its own compiled FAB

        def once():
            fab.hyperplane_step = steps[name]
            try:
                result = registry.run_attack("fab-t", logits_fn, x, y, key, args.eps, (0.0, 1.0), steps=args.steps,
                                             targets=TARGETS)
                verdicts[name] = np.asarray(result.broken)
            finally:
                fab.hyperplane_step = library_step
        return once

    fab_times = interleaved_medians({name: attack(name) for name in steps}, rounds=args.rounds)
    figures = {
        "checkpoint": args.checkpoint, "n": args.n, "eps": args.eps, "steps": args.steps, "targets": TARGETS,
        "backend": jax.default_backend(), "load_average": list(os.getloadavg()),
        "hyperplane_step": {"rows": rows, "bisection_s": step_times["bisection"], "sorted_s": step_times["sorted"],
                            "speedup": step_times["sorted"] / step_times["bisection"], "largest_difference": gap,
                            "fraction_of_peak": fraction},
        "fab_t": {"bisection_s": fab_times["bisection"], "sorted_s": fab_times["sorted"],
                  "speedup": fab_times["sorted"] / fab_times["bisection"],
                  "same_verdict": bool(np.array_equal(verdicts["bisection"], verdicts["sorted"])),
                  "accuracy": float(np.mean(~verdicts["bisection"]))},
        "speedup": fab_times["sorted"] / fab_times["bisection"], "fraction_of_peak": fraction,
    }
    figures["summary"] = [
        summary_row(f"FAB hyperplane step ({rows} x {p.shape[1]})", ours_s=step_times["bisection"],
                    reference_s=step_times["sorted"], reference="sorted step (textbook)",
                    primitive=f"fused reduction over {rows} x {p.shape[1]}", fraction=fraction),
        summary_row(f"FAB-T ({TARGETS} targets x {args.steps} steps, {args.n} images)", ours_s=fab_times["bisection"],
                    reference_s=fab_times["sorted"], reference="FAB-T with the sorted step", primitive="",
                    fraction=None)]
    print(f"hyperplane step, {rows} x {x.shape[1]}: bisection {1e3 * step_times['bisection']:.1f} ms, sorted "
          f"{1e3 * step_times['sorted']:.1f} ms: {figures['hyperplane_step']['speedup']:.2f}x (largest difference "
          f"{gap:.1e}); {passes} passes at {fraction:.2f} of the rate of such a pass")
    print(f"FAB-T ({TARGETS} targets x {args.steps} steps, {args.n} images, eps {args.eps}): bisection "
          f"{fab_times['bisection']:.2f} s, sorted {fab_times['sorted']:.2f} s: {figures['speedup']:.2f}x; same "
          f"verdict: {figures['fab_t']['same_verdict']}; accuracy under attack {100 * figures['fab_t']['accuracy']:.1f}%")
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
