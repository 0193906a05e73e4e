"""The ``andor-jax`` command line: train, evaluate, certify, run.

    andor-jax train --config relu_mlp_mnist --workdir runs/relu [--data-dir DIR] [--config.train.epochs=3]
    andor-jax evaluate --workdir runs/relu [--attacks fgsm,pgd] [--eps 0.05:0.5:0.05] [--limit N] [--certify]
    andor-jax certify --workdir runs/relu [--eps ...]
    andor-jax run            # the main job: train `quickstart`, evaluate it, write runs/quickstart/report.md
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from andor_jax import config as config_lib
from andor_jax.config import parse_eps


def parse_attack_settings(items: list[str]) -> dict[str, dict]:
    """``["pgd.restarts=1", "pgd.steps=100"]`` -> ``{"pgd": {"restarts": 1, "steps": 100}}``."""
    settings: dict[str, dict] = {}
    for item in items:
        key, sep, text = item.partition("=")
        attack, dot, setting = key.partition(".")
        if not (sep and dot and attack and setting):
            raise ValueError(f"attack setting {item!r} must look like ATTACK.SETTING=VALUE, e.g. pgd.restarts=1")
        settings.setdefault(attack, {})[setting] = config_lib.parse_value(text)
    return settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="andor-jax", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub):
        sub.add_argument("--data-dir", default=None,
                         help="directory with the IDX files (else $ANDOR_JAX_DATA_DIR, the cache, a download, "
                              "or the embedded 5,000-image MNIST sample)")
        sub.add_argument("--no-progress", action="store_true", help="no progress bars")

    sub = commands.add_parser("train", help="train a config in a work directory (resumes if interrupted)")
    sub.add_argument("--config", required=True,
                     help=f"bundled config name ({', '.join(config_lib.bundled_configs())}) or a .py file; "
                          "override fields with --config.train.epochs=3")
    sub.add_argument("--workdir", required=True)
    common(sub)

    for name, text in (("evaluate", "clean accuracy and the attack suite; writes report.json/.md/.png"),
                       ("certify", "certified accuracy by interval bound propagation")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--workdir", required=True)
        sub.add_argument("--eps", default=None, help="eps grid, start:stop:step or a,b,c (L-inf)")
        sub.add_argument("--limit", type=int, default=None, help="evaluate the first N test examples (0: all)")
        sub.add_argument("--output", default=None, help="write the report here instead of the work directory")
        common(sub)
        if name == "evaluate":
            sub.add_argument("--attacks", default=None,
                             help="comma-separated attack names; NAME[psd] runs one on pseudo-gradients only")
            sub.add_argument("--set", action="append", default=[], metavar="ATTACK.SETTING=VALUE",
                             help="change an attack's setting, e.g. --set pgd.restarts=1 (repeatable)")
            sub.add_argument("--certify", action="store_true", help="also compute certified accuracy")
            sub.add_argument("--psd", action="store_true",
                             help="also run every attack with pseudo-gradients (models that have them)")

    sub = commands.add_parser("run", help="the main job: train quickstart, evaluate, write runs/quickstart/")
    sub.add_argument("--workdir", default="runs/quickstart")
    common(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
    args = build_parser().parse_args([a for a in argv if not a.startswith("--config.")])
    try:
        return run_command(args, overrides)
    except KeyboardInterrupt:
        if args.command == "evaluate":
            print("\nevaluate interrupted: the chunks attacked so far are saved; run the same command again to "
                  "resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:
        print(f"andor-jax {args.command}: error: {err}", file=sys.stderr)
        return 2


def run_command(args: argparse.Namespace, overrides: list[str]) -> int:
    from andor_jax import experiment  # imported here so that `--help` stays fast

    if args.command == "train":
        config = config_lib.apply_overrides(config_lib.load_config(args.config), overrides)
        experiment.fit(config, args.workdir, data_dir=args.data_dir, progress=not args.no_progress)
        print(f"trained; checkpoints in {pathlib.Path(args.workdir) / 'checkpoints'}")
        return 0
    from andor_jax import evaluation

    if args.command == "evaluate":
        paths = evaluation.evaluate(args.workdir, data_dir=args.data_dir, attacks=args.attacks,
                                    eps=parse_eps(args.eps) if args.eps else None, limit=args.limit,
                                    certify=args.certify, pseudo_gradient_attacks=args.psd,
                                    attack_settings=parse_attack_settings(args.set),
                                    progress=not args.no_progress, output_dir=args.output)
        print(f"report: {paths['md']}")
    elif args.command == "certify":
        paths = evaluation.certify(args.workdir, data_dir=args.data_dir,
                                   eps=parse_eps(args.eps) if args.eps else None, limit=args.limit,
                                   output_dir=args.output)
        print(f"report: {paths['md']}")
    elif args.command == "run":
        config = config_lib.apply_overrides(config_lib.load_config("quickstart"), overrides)
        experiment.fit(config, args.workdir, data_dir=args.data_dir, progress=not args.no_progress)
        paths = evaluation.evaluate(args.workdir, data_dir=args.data_dir, progress=not args.no_progress)
        print(f"\nDone. Report: {paths['md']}\n")
        print(pathlib.Path(paths["md"]).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
