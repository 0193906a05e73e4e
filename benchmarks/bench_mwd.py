"""One MWD training step three ways: fused JAX layer, naive JAX composition, PyTorch eager (the authors' way).

The step is the paper's recipe (Agrawal, de Alfaro & Helmbold, sec. 6): a 784-512-512-512-10 network of
U/NEG/U/NEG MWD layers, forward pass, pseudo-gradient backward pass (rho = 1), squared error against one-hot
targets (summed over classes, averaged over the batch), an AdaDelta update (lr 5, rho 0.9, eps 1e-6) and the
clip of ``w`` to [0, 1] and ``u`` to [0.01, 3].  The three variants start from the same parameters and
batch (uniform random inputs; only the arithmetic matters here):

* ``fused``: `andor_jax.layers.mwd.MWD` layers in a `Sequential`: one custom_vjp per layer that keeps only
  O(batch in + out in + batch out) residuals and recomputes the (batch, out, in) tensor in cache-sized chunks;
* ``naive``: `mwd_composed`, the custom_vjp primitives of `andor_jax.pseudograd` composed as in the paper,
  which materialises and stores (batch, out, in) per layer;
* ``torch``: PyTorch eager with two autograd Functions for the pseudo-derivatives, as the authors' code
  does (run in a child process with ``torch.set_num_threads(cpu_count)``).

Times are medians over ``--steps`` steps after ``--warmup`` steps.  Memory: XLA's compiled temporaries for
one step (``memory_analysis().temp_size_in_bytes``) for the JAX variants, and the rise of the child
process's peak RSS during its first step for PyTorch (Linux only: the peak is reset through
``/proc/self/clear_refs``).  ``--json PATH`` writes the figures, with
``speedup`` = PyTorch time / fused time, and ``fraction_of_peak`` = the step's exponentials (one per
(batch, out, in) element of the backward pass) per second over the machine's exp rate measured alone
(``common.exp_rate``); ``exp_bound_seconds`` is the step's floor at that rate.  Nothing is asserted: on a shared machine, read the load average
printed with the figures.

    python benchmarks/bench_mwd.py [--steps 7] [--warmup 2] [--batch 100] [--json PATH] [--no-torch]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from andor_jax.layers.mwd import U_CLIP, W_CLIP, mwd_composed
from andor_jax.models import Sequential, project
from andor_jax.models.mwd import get_model as mwd_network

sys.path.insert(0, os.path.dirname(__file__))
from common import exp_rate, fraction_of_peak, summary_row  # noqa: E402

HIDDEN, NUM_CLASSES, KINDS = (512, 512, 512), 10, ("u", "neg", "u", "neg")
IN_FEATURES = 784
LEARNING_RATE, ADADELTA_RHO, ADADELTA_EPS = 5.0, 0.9, 1e-6


def make_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform inputs in [0, 1] and one-hot targets of random labels."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(batch, IN_FEATURES)).astype(np.float32)
    targets = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, batch)]
    return x, targets


def squared_error(outputs, targets):
    """Squared error summed over classes, averaged over the batch (the authors' loss)."""
    return ((outputs - targets) ** 2).sum(-1).mean()


def timed(step, state, steps: int, warmup: int) -> tuple[float, object]:
    """Median seconds of ``state = step(state)`` after ``warmup`` calls, and the final state."""
    for _ in range(warmup):
        state = step(state)
    durations = []
    for _ in range(steps):
        start = time.perf_counter()
        state = step(state)
        durations.append(time.perf_counter() - start)
    return statistics.median(durations), state


# ------------------------------------------------------------------------------------------------- JAX


def naive_apply(params: dict, x: jax.Array, rho) -> jax.Array:
    """The network with every layer written as `mwd_composed` (layer ``k`` holds ``layers_{k+1}``)."""
    for index, kind in enumerate(KINDS, start=1):
        layer = params[f"layers_{index}"]
        y = mwd_composed(x, layer["u"], layer["w"], rho)
        x = 1 - y if kind == "neg" else y
    return x


def jax_step(apply_fn, model: Sequential, optimiser):
    """A jitted training step ``(params, opt_state, x, targets) -> (params, opt_state, loss)``."""

    def step(params, opt_state, x, targets):
        loss, grads = jax.value_and_grad(lambda p: squared_error(apply_fn(p, x, 1.0), targets))(params)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return project(model, optax.apply_updates(params, updates)), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def bench_jax(params, x, targets, steps: int, warmup: int) -> dict:
    """Times and compiled temporaries of the fused and naive JAX steps from the same parameters."""
    model = mwd_network(HIDDEN, NUM_CLASSES, KINDS)
    optimiser = optax.adadelta(LEARNING_RATE, rho=ADADELTA_RHO, eps=ADADELTA_EPS)
    variants = {"fused": lambda p, x, rho: model.apply({"params": p}, x, rho=rho), "naive": naive_apply}
    figures = {}
    for name, apply_fn in variants.items():
        step = jax_step(apply_fn, model, optimiser)
        fresh = jax.tree.map(jnp.array, params)
        state = (fresh, optimiser.init(fresh))
        compiled = step.lower(*state, x, targets).compile()
        first_loss = None

        def run(state):
            nonlocal first_loss
            params, opt_state, loss = compiled(*state, x, targets)
            loss.block_until_ready()
            first_loss = float(loss) if first_loss is None else first_loss
            return params, opt_state

        seconds, _ = timed(run, state, steps, warmup)
        figures[name] = {"seconds": seconds, "temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
                         "first_loss": first_loss}
    return figures


# --------------------------------------------------------------------------------------------- PyTorch


def proc_status_bytes(field: str) -> int:
    """A memory figure (``VmRSS``, ``VmHWM``) of this process from ``/proc/self/status``, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss() -> int | None:
    """Resets this process's peak RSS (Linux: ``/proc/self/clear_refs``) and returns the current RSS, or
    None where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return proc_status_bytes("VmRSS")
    except OSError:
        return None


def bench_torch(params: dict, x: np.ndarray, targets: np.ndarray, steps: int, warmup: int) -> dict:
    """The authors' formulation in PyTorch eager: two autograd Functions for the pseudo-derivatives."""
    import torch

    torch.set_num_threads(os.cpu_count())

    class LargeAttractorExp(torch.autograd.Function):
        """Forward ``exp(-z)``; backward ``-g / sqrt(1 + z)``."""

        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return torch.exp(-z)

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            return -g / torch.sqrt(1 + z)

    class SharedFeedbackMax(torch.autograd.Function):
        """Forward ``max`` over the last axis; backward ``g * exp(z_i - max z)`` to every ``z_i``."""

        @staticmethod
        def forward(ctx, z):
            z_max = z.max(dim=-1).values
            ctx.save_for_backward(z, z_max)
            return z_max

        @staticmethod
        def backward(ctx, g):
            z, z_max = ctx.saved_tensors
            return g.unsqueeze(-1) * torch.exp(z - z_max.unsqueeze(-1))

    layers = [(torch.nn.Parameter(torch.tensor(np.asarray(params[f"layers_{k}"]["u"]))),
               torch.nn.Parameter(torch.tensor(np.asarray(params[f"layers_{k}"]["w"]))), kind)
              for k, kind in enumerate(KINDS, start=1)]
    optimiser = torch.optim.Adadelta([p for u, w, _ in layers for p in (u, w)], lr=LEARNING_RATE,
                                     rho=ADADELTA_RHO, eps=ADADELTA_EPS)
    inputs, labels = torch.tensor(x), torch.tensor(targets)

    def run(first_loss):
        h = inputs
        for u, w, kind in layers:
            y = LargeAttractorExp.apply(SharedFeedbackMax.apply((u * (h.unsqueeze(1) - w)) ** 2))
            h = 1 - y if kind == "neg" else y
        loss = squared_error(h, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            for u, w, _ in layers:
                u.clamp_(*U_CLIP)
                w.clamp_(*W_CLIP)
        return loss.item() if first_loss is None else first_loss

    rss_before = reset_peak_rss()
    first_loss = run(None)
    peak_rise = None if rss_before is None else proc_status_bytes("VmHWM") - rss_before
    seconds, _ = timed(run, first_loss, steps, max(0, warmup - 1))
    return {"seconds": seconds, "peak_rss_rise_bytes": peak_rise, "first_loss": first_loss,
            "threads": torch.get_num_threads(), "version": torch.__version__}


def bench_torch_in_child(params: dict, x, targets, steps: int, warmup: int) -> dict:
    """`bench_torch` in a fresh process, so that its memory and thread pool are its own."""
    host_params = jax.tree.map(np.asarray, params)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(bench_torch, (host_params, x, targets, steps, warmup))


# ------------------------------------------------------------------------------------------------ main


def step_exponentials(batch: int) -> int:
    """Exponentials of one pseudo-gradient step: one per (batch, out, in) element in the backward pass (the
    shared-feedback weights ``exp(z_i - max z)``); the forward pass's (batch, out) ones are negligible."""
    widths = (IN_FEATURES, *HIDDEN, NUM_CLASSES)
    return batch * sum(m * n for m, n in zip(widths, widths[1:]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=7, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--json", metavar="PATH", help="write the figures to PATH")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    x, targets = make_batch(args.batch)
    model = mwd_network(HIDDEN, NUM_CLASSES, KINDS)
    params = model.init(jax.random.PRNGKey(1), jnp.asarray(x))["params"]

    figures = {"network": f"{IN_FEATURES}-{'-'.join(map(str, HIDDEN))}-{NUM_CLASSES} {'/'.join(KINDS)}",
               "batch": args.batch, "steps": args.steps, "cpu_count": os.cpu_count(),
               "jax_backend": jax.default_backend(), "jax_version": jax.__version__,
               "load_average_before": load_before}
    figures.update(bench_jax(params, jnp.asarray(x), jnp.asarray(targets), args.steps, args.warmup))
    if not args.no_torch:
        figures["torch"] = bench_torch_in_child(params, x, targets, args.steps, args.warmup)
        figures["speedup"] = figures["torch"]["seconds"] / figures["fused"]["seconds"]
        figures["naive_speedup"] = figures["torch"]["seconds"] / figures["naive"]["seconds"]
    figures["fused_vs_naive"] = figures["naive"]["seconds"] / figures["fused"]["seconds"]
    exponentials = step_exponentials(args.batch)
    figures["exp_per_second"] = exp_rate(exponentials)
    figures["exp_bound_seconds"] = exponentials / figures["exp_per_second"]
    figures["fraction_of_peak"] = fraction_of_peak(exponentials / figures["fused"]["seconds"],
                                                   figures["exp_per_second"])
    figures["load_average_after"] = os.getloadavg()
    figures["summary"] = [summary_row(f"MWD training step (batch {args.batch})", ours_s=figures["fused"]["seconds"],
                                      reference_s=figures["torch"]["seconds"] if "torch" in figures else None,
                                      reference="PyTorch eager" if "torch" in figures else None,
                                      primitive=f"exp ({exponentials:,} per step)",
                                      fraction=figures["fraction_of_peak"])]

    mib = 2**20
    print(f"MWD training step, {figures['network']}, batch {args.batch}, {os.cpu_count()} CPUs "
          f"({jax.default_backend()}), load average {load_before[0]:.1f} -> {figures['load_average_after'][0]:.1f}")
    for name in ("fused", "naive"):
        f = figures[name]
        print(f"  jax {name:5s}  {1e3 * f['seconds']:8.1f} ms   temporaries {f['temp_bytes'] / mib:8.1f} MiB"
              f"   first loss {f['first_loss']:.6f}")
    if "torch" in figures:
        t = figures["torch"]
        rise = "n/a" if t["peak_rss_rise_bytes"] is None else f"{t['peak_rss_rise_bytes'] / mib:.1f} MiB"
        print(f"  torch       {1e3 * t['seconds']:8.1f} ms   peak RSS rise {rise:>12s}"
              f"   first loss {t['first_loss']:.6f}   ({t['threads']} threads, torch {t['version']})")
        print(f"  speedup torch/fused {figures['speedup']:.1f}x, torch/naive {figures['naive_speedup']:.1f}x")
    print(f"  naive/fused {figures['fused_vs_naive']:.1f}x")
    print(f"  exp-bound floor {1e3 * figures['exp_bound_seconds']:.1f} ms ({figures['exp_per_second']:.3g} exp/s); "
          f"fraction of peak {figures['fraction_of_peak']:.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    return figures


if __name__ == "__main__":
    main()
