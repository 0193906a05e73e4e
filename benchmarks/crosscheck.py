"""Cross-check against the field's reference implementations (issue #16, item 4): the same weights in
PyTorch, attacked by torchattacks' AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square 5,000; Croce & Hein
2020), and bounded by auto_LiRPA's interval bound propagation (Xu et al. 2020), against this library's
``standard`` suite (`andor_jax.attacks.suites`) and `andor_jax.bounds.propagate` on the same examples and eps.

Reported: both robust accuracies, the rate at which the per-example verdicts agree and the examples where
they differ (each side's extra breaks: an attack that breaks an example the other misses is the stronger
there; a difference in both directions on many examples would be a bug), the largest difference between the
logits of the two networks (which must be float rounding), and the largest difference between the two
libraries' interval bounds on the logits, absolute and relative to the bound (equal to float tolerance).
A reference package that is not installed (``pip install 'andor-jax[crosscheck]'``) is named and its part
skipped.

Networks: a trained ``mlp`` work directory (``--workdir``, the ReLU or sigmoid baseline), or with
``--small`` a random 784-32-10 ReLU network on uniform noise labelled by itself (a quick run of the
script's plumbing).  Nothing is asserted; on a shared machine the times are loaded.

    python benchmarks/crosscheck.py --workdir runs/relu --data-dir DIR [--limit 1000] [--eps 0.1] [--json PATH]
    python benchmarks/crosscheck.py --small
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from common import configure_torch_threads, write_json  # noqa: E402

from andor_jax import bounds, models  # noqa: E402
from andor_jax.attacks import suites  # noqa: E402
from andor_jax.evaluators import robustness  # noqa: E402

ACTIVATIONS = ("relu", "sigmoid")


def optional(module: str, install: str):
    """The module, or None (with a line saying what is skipped and how to install it) when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        print(f"{module} is not installed ({err}): its part of the cross-check is skipped ({install})")
        return None


def trained(workdir: str, data_dir: str | None, limit: int):
    """``(model, variables, weights, activation, x, y)`` of a trained ``mlp`` work directory: its dense
    layers ``(kernel (in, out), bias)`` in order and its first ``limit`` test examples."""
    from andor_jax import experiment as experiment_lib

    experiment, variables = experiment_lib.load_trained(workdir, data_dir=data_dir)
    config = experiment.config.model
    activation = config.get("activation", "relu")
    if config.name != "mlp" or activation not in ACTIVATIONS or config.get("output_activation"):
        raise ValueError(f"{workdir} holds a {config.name!r} network ({activation!r} units): the cross-check "
                         f"takes the mlp baselines with units {ACTIVATIONS} and plain logits")
    params = variables["params"]
    dense = sorted((name for name in params if "kernel" in params[name]), key=lambda name: int(name.split("_")[1]))
    weights = [(np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])) for name in dense]
    ds = experiment.dataset
    return (experiment.model, variables, weights, activation, np.asarray(ds.x_test[:limit], np.float32),
            np.asarray(ds.y_test[:limit]))


def small(limit: int):
    """A random 784-32-10 ReLU mlp of the library and uniform noise labelled by it."""
    model = models.build_model(ml_collections.ConfigDict({"name": "mlp", "hidden": (32,), "activation": "relu"}))
    x = np.random.default_rng(1).uniform(size=(limit, 784)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x[:1]))
    params = variables["params"]
    dense = sorted((name for name in params if "kernel" in params[name]), key=lambda name: int(name.split("_")[1]))
    weights = [(np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])) for name in dense]
    y = np.asarray(jnp.argmax(models.logits(model, variables, jnp.asarray(x)), axis=-1))
    return model, variables, weights, "relu", x, y


def torch_network(torch, weights, activation: str):
    """The same network in PyTorch: flatten, ``Linear`` (weight = kernel transposed) and the units."""
    layers = [torch.nn.Flatten()]
    for index, (kernel, bias) in enumerate(weights):
        linear = torch.nn.Linear(*kernel.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
            linear.bias.copy_(torch.from_numpy(bias.copy()))
        layers.append(linear)
        if index < len(weights) - 1:
            layers.append(torch.nn.ReLU() if activation == "relu" else torch.nn.Sigmoid())
    return torch.nn.Sequential(*layers).eval()


def our_verdicts(model, variables, x, y, eps: float) -> np.ndarray:
    """Per example, still standing after this library's ``standard`` suite (no convergence check: the
    reference has none)."""
    labels, settings = suites.resolve("standard", randomised=False)
    logits_fn = jax.jit(lambda v: models.logits(model, variables, v))
    outcomes = robustness.run(logits_fn, x, y, attacks=labels, eps_grid=[eps], key=jax.random.PRNGKey(0),
                              batch_size=500, overrides=settings, progress=False, sequential=True)
    return outcomes.clean & outcomes.correct[labels[-1]][robustness.eps_key(eps)]


def reference_verdicts(torch, torchattacks, network, x, y, eps: float) -> np.ndarray:
    """Per example, still correct at torchattacks' AutoAttack (standard version) point."""
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(y.astype(np.int64))
    attack = torchattacks.AutoAttack(network, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    adversarial = torch.cat([attack(images[i:i + 500], labels[i:i + 500]) for i in range(0, len(y), 500)])
    assert float((adversarial - images).abs().max().detach()) <= eps + 1e-6, "torchattacks left the ball"
    with torch.no_grad():
        return (network(adversarial).argmax(-1) == labels).numpy()


def reference_bounds(torch, lirpa, network, x, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """auto_LiRPA's IBP bounds of the logits over the eps-ball intersected with [0, 1]."""
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28))
    bounded = lirpa.BoundedModule(network, torch.zeros_like(images[:1]))
    perturbation = lirpa.PerturbationLpNorm(norm=float("inf"), x_L=torch.clamp(images - eps, 0.0, 1.0),
                                           x_U=torch.clamp(images + eps, 0.0, 1.0))
    lower, upper = bounded.compute_bounds(x=(lirpa.BoundedTensor(images, perturbation),), method="IBP")
    return lower.detach().numpy(), upper.detach().numpy()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="a trained mlp work directory (ReLU or sigmoid baseline)")
    parser.add_argument("--data-dir", default=None, help="the MNIST IDX directory it was trained on")
    parser.add_argument("--limit", type=int, default=1000, help="first test examples")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--small", action="store_true", help="a random 784-32-10 network on 50 noise inputs")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if not (args.small or args.workdir):
        parser.error("give --workdir (a trained mlp) or --small")
    model, variables, weights, activation, x, y = small(50) if args.small else trained(args.workdir, args.data_dir,
                                                                                        args.limit)
    result = {"network": f"mlp {[w.shape[0] for w, _ in weights] + [weights[-1][0].shape[1]]} {activation}",
              "examples": int(len(y)), "eps": args.eps, "load_average": os.getloadavg()}
    torch = optional("torch", "pip install 'andor-jax[crosscheck]'")
    if torch is None:
        return result
    configure_torch_threads()
    network = torch_network(torch, weights, activation)
    with torch.no_grad():
        theirs = network(torch.from_numpy(x.reshape(-1, 1, 28, 28))).numpy()
    ours_logits = np.asarray(models.logits(model, variables, jnp.asarray(x)))
    result["logits_max_difference"] = float(np.abs(theirs - ours_logits).max())

    torchattacks = optional("torchattacks", "pip install 'andor-jax[crosscheck]'")
    if torchattacks is not None:
        started = time.perf_counter()
        ours = our_verdicts(model, variables, x, y, args.eps)
        result["ours_seconds"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        reference = reference_verdicts(torch, torchattacks, network, x, y, args.eps)
        result["reference_seconds"] = round(time.perf_counter() - started, 1)
        result.update({
            "robust_accuracy_ours": float(ours.mean()), "robust_accuracy_torchattacks": float(reference.mean()),
            "verdicts_agree": float(np.mean(ours == reference)),
            "broken_only_by_ours": np.flatnonzero(~ours & reference).tolist(),
            "broken_only_by_torchattacks": np.flatnonzero(ours & ~reference).tolist()})

    lirpa = optional("auto_LiRPA", "auto-lirpa 0.3, the newest on PyPI, needs numpy < 2 and torch < 1.13; "
                                   "0.7.1 from github.com/Verified-Intelligence/auto_LiRPA runs with torch 2 and "
                                   "numpy 2: pip install --no-deps it, plus appdirs and graphviz")
    if lirpa is not None:
        lower, upper = reference_bounds(torch, lirpa, network, x, args.eps)
        box = bounds.propagate(model, variables, bounds.input_box(jnp.asarray(x), args.eps, (0.0, 1.0)))
        difference = np.maximum(np.abs(np.asarray(box.lower) - lower), np.abs(np.asarray(box.upper) - upper))
        result["ibp_max_difference"] = float(difference.max())
        # Relative to the bound's own size: a ReLU network's logit bounds reach thousands at eps 0.1.
        result["ibp_max_relative_difference"] = float(
            (difference / np.maximum(np.maximum(np.abs(lower), np.abs(upper)), 1e-30)).max())
    for name, value in result.items():
        print(f"{name}: {value}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
