"""Compaction: Square and APGD on the inputs still unbroken only, against the same attacks on the whole batch.

`andor_jax.attacks.compaction` runs an attack's iterations in segments and drops the inputs already broken
between two segments; the verdict and the points are unchanged, and the work shrinks to the inputs that
resist.  The gain depends on the model: on a robust one about half the inputs resist to the end, on an
undefended one nearly all break within a few iterations.  This script attacks the first ``--n`` test images
of a trained work directory with each attack twice in the same process, whole batch (``compact_every=None``)
and compacted (the registered default), checks that both give the same verdict, and prints the times,
``speedup`` = whole / compacted, and the accuracy under attack.  Times are medians over ``--rounds``
interleaved rounds after one warm-up run each (compilation excluded); nothing is asserted.

    python benchmarks/bench_compaction.py --checkpoint runs/mwd [--data-dir DIR] [--n 500] [--eps 0.3]
        [--attacks "square,apgd-dlr[psd],pgd[psd]"] [--rounds 1] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from andor_jax import experiment as experiment_lib  # noqa: E402
from andor_jax import models  # noqa: E402
from andor_jax.attacks import registry  # noqa: E402
from andor_jax.evaluators.robustness import split_label  # noqa: E402
from common import interleaved_medians, summary_row, write_json  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a trained work directory")
    parser.add_argument("--data-dir", default=None, help="directory with the MNIST IDX files")
    parser.add_argument("--n", type=int, default=500, help="test images attacked (one batch)")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--attacks", default="square,apgd-dlr[psd],pgd[psd]",
                        help="attacks that compact (square, apgd-ce, apgd-dlr, pgd, ...); NAME[psd] differentiates the "
                             "pseudo-gradient")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved timed rounds")
    parser.add_argument("--json", default=None, help="write the figures to this path")
    args = parser.parse_args(argv)

    experiment, variables = experiment_lib.load_trained(args.checkpoint, data_dir=args.data_dir)
    x = np.asarray(experiment.dataset.x_test[:args.n])
    y = np.asarray(experiment.dataset.y_test[:args.n])
    domain = tuple(experiment.config.data.domain)
    logits_fn = jax.jit(lambda inputs: models.logits(experiment.model, variables, inputs))
    gradient_fns = {None: None, **{mode: lambda inputs, mode=mode: models.logits(experiment.model, variables, inputs,
                                                                                  gradient=mode)
                                   for mode in models.gradient_modes(experiment.model)}}
    key = jax.random.PRNGKey(0)

    figures = {"checkpoint": args.checkpoint, "n": len(y), "eps": args.eps, "backend": jax.default_backend(),
               "load_average": list(os.getloadavg()), "attacks": {}}
    for label in args.attacks.split(","):
        name, tag = split_label(label)
        if tag not in gradient_fns:
            raise ValueError(f"{label!r}: the model has no gradient mode {tag!r} "
                             f"(its modes: {models.gradient_modes(experiment.model)})")
        if "compact_every" not in registry.settings_of(name):
            raise ValueError(f"attack {name!r} does not compact; choose among those with a compact_every setting")
        outcomes = {}

        def run(compact_every, variant):
            def once():
                result = registry.run_attack(name, logits_fn, x, y, key, args.eps, domain,
                                             gradient_logits_fn=gradient_fns[tag], compact_every=compact_every)
                outcomes[variant] = np.asarray(result.broken)
            return once

        times = interleaved_medians({"whole": run(None, "whole"),
                                     "compacted": run(registry.settings_of(name)["compact_every"],
                                                      "compacted")}, rounds=args.rounds)
        same = bool(np.array_equal(outcomes["whole"], outcomes["compacted"]))
        figures["attacks"][label] = {"whole_s": times["whole"], "compacted_s": times["compacted"],
                                     "speedup": times["whole"] / times["compacted"], "same_verdict": same,
                                     "accuracy": float(np.mean(~outcomes["compacted"]))}
        print(f"{label:16s} whole batch {times['whole']:8.2f} s   compacted {times['compacted']:8.2f} s   "
              f"speedup {times['whole'] / times['compacted']:5.2f}x   accuracy under attack "
              f"{100 * np.mean(~outcomes['compacted']):.2f}%   same verdict: {same}")
    figures["summary"] = [summary_row(f"{label} compacted ({args.n} images, eps {args.eps})", ours_s=row["compacted_s"],
                                      reference_s=row["whole_s"], reference="our whole batch", primitive="n/a",
                                      fraction=None) for label, row in figures["attacks"].items()]
    print(f"load average {figures['load_average']}")
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
