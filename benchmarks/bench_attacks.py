"""PGD throughput: our jit-compiled, restart-vmapped `andor_jax.attacks.pgd` against a plain PyTorch eager loop.

The attack is L-inf PGD (Madry et al. 2018) as the MWD paper evaluates it, on a ReLU MLP 784-512-512-512-10:
``--restarts`` uniform random starts in the eps-ball, ``--steps`` signed steps of ``--step-size`` on the
cross-entropy, each followed by the projection onto the eps-ball ∩ [0, 1]; an input is broken if the clean
point or any point of any restart is misclassified.  Both sides use the same weights (random He-initialised
ones, or a trained `mlp` work directory via ``--checkpoint``) and the same inputs (uniform random, labelled
by the network itself, or the first MNIST test images via ``--data-dir``).  The PyTorch side is the usual
eager code: a Python loop over restarts and steps on the whole batch, ``torch.set_num_threads`` set to the
cores XLA uses.

Variants: every step of every restart (equal work), the restarts vmapped or one after the other; and stopping as soon as every input is broken
(``stop_when_all_broken``, our default), with the restarts all vmapped at once or one after the other
(``parallel_restarts=1``), so that a batch broken by the first restart skips the others (the PyTorch loop
checks ``broken.all()`` before each step).  Reported: every time; ``speedup`` = plain PyTorch loop / our
stopping sequential run; ``speedup_equal_work`` = plain PyTorch loop / our faster run of every step (the
arithmetic alone); ``speedup_both_stopping`` = stopping PyTorch loop / our stopping sequential run;
examples per second; and the robust accuracy of each run (a check that they run the same attack: they
draw different random starts, so the figures agree only roughly).

Times are minimums over ``--rounds`` interleaved rounds after one warm-up run each (compilation excluded).
``fraction_of_peak``: the attack's matmul FLOPs (every step of every restart) per second of the faster
equal-arithmetic variant, over the rate of one ``(n, 512) @ (512, 512)`` product measured in the same run
(``common.matmul_rate``).
``--json PATH`` writes the figures.  Nothing is asserted; on a shared machine, read the load average printed with the figures.

    python benchmarks/bench_attacks.py [--n 1000] [--steps 40] [--restarts 10] [--eps 0.3] [--step-size 0.01]
        [--rounds 3] [--checkpoint WORKDIR] [--data-dir DIR] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from andor_jax import attacks  # noqa: E402
from common import (configure_torch_threads, fraction_of_peak, interleaved_minimums, machine, matmul_rate,  # noqa: E402
                    summary_row, write_json)

SIZES = (784, 512, 512, 512, 10)


def random_weights(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """He-initialised ``(kernel (in, out), bias)`` per layer of the 784-512-512-512-10 MLP."""
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((m, n)) * np.sqrt(2.0 / m)).astype(np.float32), np.zeros(n, np.float32))
            for m, n in zip(SIZES, SIZES[1:])]


def trained_weights(workdir: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The dense layers of a trained ReLU `mlp` work directory, in order."""
    from andor_jax import experiment as experiment_lib

    experiment, variables = experiment_lib.load_trained(workdir, with_data=False)  # the inputs come from --data-dir
    model = experiment.config.model
    if model.name != "mlp" or model.get("activation", "relu") != "relu":
        raise ValueError(f"{workdir} holds a {model.name!r} network with {model.get('activation')!r} units; "
                         "this benchmark attacks a ReLU mlp")
    params = variables["params"]
    layers = sorted((name for name in params if "kernel" in params[name]), key=lambda name: int(name.split("_")[1]))
    weights = [(np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])) for name in layers]
    shapes = tuple([weights[0][0].shape[0]] + [kernel.shape[1] for kernel, _ in weights])
    if shapes != SIZES:
        raise ValueError(f"{workdir} holds an mlp of sizes {shapes}; this benchmark attacks {SIZES}")
    return weights


def jax_mlp(weights):
    params = [(jnp.asarray(kernel), jnp.asarray(bias)) for kernel, bias in weights]

    def logits_fn(x):
        for kernel, bias in params[:-1]:
            x = jax.nn.relu(x @ kernel + bias)
        kernel, bias = params[-1]
        return x @ kernel + bias

    return jax.jit(logits_fn)


def inputs(n: int, data_dir: str | None, logits_fn) -> tuple[np.ndarray, np.ndarray, str]:
    """``(x, y, description)``: MNIST test images in [0, 1] from ``data_dir``, or uniform noise labelled by the
    network (so every input starts correctly classified)."""
    if data_dir:
        from andor_jax import data

        dataset = data.load_dataset("mnist", data_dir, source="dir")
        return dataset.x_test[:n], dataset.y_test[:n], f"first {n} MNIST test images"
    x = np.random.default_rng(1).uniform(size=(n, SIZES[0])).astype(np.float32)
    return x, np.asarray(jnp.argmax(logits_fn(x), axis=-1)).astype(np.int32), f"{n} uniform random inputs"


def variant_name(stop: bool, parallel_restarts: int | None) -> str:
    return ("stopping" if stop else "every_step") + ("_sequential" if parallel_restarts == 1 else "_vmapped")


def torch_pgd(torch, weights, x, y, *, eps, step_size, steps, restarts, seed=0, stop_when_all_broken=False):
    """The plain eager loop: restarts and steps in Python, the whole batch at once; returns ``broken``.
    With ``stop_when_all_broken`` it leaves both loops as soon as every input is broken (what our PGD does
    by default)."""
    generator = torch.Generator().manual_seed(seed)
    layers = [(torch.tensor(kernel), torch.tensor(bias)) for kernel, bias in weights]

    def logits_of(v):
        for kernel, bias in layers[:-1]:
            v = torch.relu(v @ kernel + bias)
        kernel, bias = layers[-1]
        return v @ kernel + bias

    lower, upper = torch.clamp(x - eps, min=0.0), torch.clamp(x + eps, max=1.0)
    with torch.no_grad():
        broken = logits_of(x).argmax(-1) != y
    for _ in range(restarts):
        x_adv = torch.clamp(x + (torch.rand(x.shape, generator=generator) * 2 - 1) * eps, 0.0, 1.0)
        for _ in range(steps):
            if stop_when_all_broken and bool(broken.all()):
                break
            x_adv.requires_grad_(True)
            logits = logits_of(x_adv)
            loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                broken |= logits.argmax(-1) != y
                x_adv = torch.minimum(torch.maximum(x_adv + step_size * grad.sign(), lower), upper)
        with torch.no_grad():
            broken |= logits_of(x_adv).argmax(-1) != y
    return broken


def attack_flops(n: int, steps: int, restarts: int) -> float:
    """Matmul FLOPs of the attack with every step run: per example and step a forward pass and the input
    gradient's backward pass (``2 m n`` each per layer of size m x n), per restart a last forward check,
    and the clean check."""
    per_forward = 2 * sum(m * k for m, k in zip(SIZES, SIZES[1:]))
    return n * (restarts * (steps * 2 * per_forward + per_forward) + per_forward)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="inputs attacked")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--checkpoint", default=None, help="work directory of a trained ReLU mlp")
    parser.add_argument("--data-dir", default=None, help="directory with the MNIST IDX files")
    parser.add_argument("--json", default=None, help="write the figures to this path")
    args = parser.parse_args(argv)

    weights = trained_weights(args.checkpoint) if args.checkpoint else random_weights()
    logits_fn = jax_mlp(weights)
    x, y, data_description = inputs(args.n, args.data_dir, logits_fn)
    settings = dict(eps=args.eps, steps=args.steps, restarts=args.restarts, step_size=args.step_size)
    key = jax.random.PRNGKey(0)
    x_jax, y_jax = jnp.asarray(x), jnp.asarray(y)
    torch = configure_torch_threads()
    x_torch, y_torch = torch.tensor(x), torch.tensor(y, dtype=torch.long)
    outcome = {}

    def jax_run(stop, parallel_restarts):
        def run():
            outcome[f"jax_{variant_name(stop, parallel_restarts)}"] = attacks.pgd(
                logits_fn, x_jax, y_jax, key, **settings, stop_when_all_broken=stop,
                parallel_restarts=parallel_restarts).broken.block_until_ready()
        return run

    def torch_run(stop):
        def run():
            outcome[f"torch_{variant_name(stop, 1)}"] = torch_pgd(torch, weights, x_torch, y_torch, **settings,
                                                                 stop_when_all_broken=stop)
        return run

    runs = {"jax_every_step_vmapped": jax_run(False, None), "jax_every_step_sequential": jax_run(False, 1),
            "jax_stopping_vmapped": jax_run(True, None), "jax_stopping_sequential": jax_run(True, 1),
            "torch_every_step_sequential": torch_run(False), "torch_stopping_sequential": torch_run(True)}
    start_machine = machine()
    seconds = interleaved_minimums(runs, rounds=args.rounds)
    equal_work = min(seconds["jax_every_step_vmapped"], seconds["jax_every_step_sequential"])
    peak = matmul_rate(args.n, 512, 512)
    achieved = attack_flops(args.n, args.steps, args.restarts) / equal_work
    figures = {
        "attack": f"PGD L-inf, {args.steps} steps of {args.step_size}, {args.restarts} restarts, eps {args.eps}",
        "model": "ReLU MLP 784-512-512-512-10, " + (f"trained ({args.checkpoint})" if args.checkpoint else
                                                     "random He-initialised weights"),
        "data": data_description,
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": start_machine["load_average"],
        "load_average": list(os.getloadavg()),
        **{f"{name}_seconds": value for name, value in seconds.items()},
        "jax_examples_per_second": args.n / seconds["jax_stopping_sequential"],
        "torch_examples_per_second": args.n / seconds["torch_every_step_sequential"],
        "speedup": seconds["torch_every_step_sequential"] / seconds["jax_stopping_sequential"],
        "speedup_equal_work": seconds["torch_every_step_sequential"] / equal_work,
        "speedup_both_stopping": seconds["torch_stopping_sequential"] / seconds["jax_stopping_sequential"],
        **{f"{name}_robust_accuracy": float(1 - np.mean(np.asarray(broken, dtype=float)))
           for name, broken in outcome.items()},
        "matmul_flops_per_second": peak,
        "achieved_flops_per_second": achieved,
        "fraction_of_peak": fraction_of_peak(achieved, peak),
    }
    figures["summary"] = [
        summary_row("PGD, equal arithmetic (ReLU MLP)", ours_s=equal_work,
                    reference_s=seconds["torch_every_step_sequential"], reference="PyTorch eager loop",
                    primitive=f"matmul ({args.n}x512 @ 512x512)", fraction=figures["fraction_of_peak"]),
        summary_row("PGD, both stopping once broken (ReLU MLP)", ours_s=seconds["jax_stopping_sequential"],
                    reference_s=seconds["torch_stopping_sequential"], reference="PyTorch loop, broken.all()",
                    primitive="matmul", fraction=None),
    ]
    for name, value in figures.items():
        if name != "summary":
            print(f"{name:>26}: {value:.4g}" if isinstance(value, float) else f"{name:>26}: {value}")
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
