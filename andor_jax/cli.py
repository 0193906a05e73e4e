"""The ``andor-jax`` command line: train, evaluate, certify, spectrum, critical, run.

    andor-jax train --config relu_mlp_mnist --workdir runs/relu [--data-dir DIR] [--config.train.epochs=3]
    andor-jax evaluate --workdir runs/relu [--attacks fgsm,pgd] [--eps 0.05:0.5:0.05] [--limit N] [--certify]
    andor-jax certify --workdir runs/relu [--eps ...]
    andor-jax spectrum --workdir runs/relu [--workdir runs/other] [--layer layers_1] [--fit 11:500]
    andor-jax critical --workdir runs/relu [--limit 1000] [--grid 0.01,0.02,0.05]
    andor-jax run            # the main job: train `quickstart`, evaluate it, write runs/quickstart/report.md

Everything a command is given is checked before any work is done (`andor_jax.validation`): a bad value is
a one-line error and exit status 2, before data or a model is loaded.  `evaluate` and `certify` read the data
the work directory was trained on (its ``data.json``) and refuse other data; they take
``--config.evaluate.KEY=VALUE`` for the keys they have a parameter for (and `evaluate` the model's inference
settings, ``--config.model.n_draws=100`` for CARSO), and refuse every other override.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import pathlib
import shutil
import signal
import sys

from andor_jax import __version__, validation
from andor_jax import config as config_lib

EXIT_BAD_INPUT = 2
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as a shell reports it


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
    parser.add_argument("--version", action="version", version=f"andor-jax {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub, trained: bool):
        where = ("default: the data the work directory was trained on (its data.json); other data is refused"
                 if trained else "else $ANDOR_JAX_DATA_DIR, the cache, a download, or the embedded 5,000-image "
                                 "MNIST sample; resuming defaults to the data the run started on")
        sub.add_argument("--data-dir", default=None, metavar="PATH", help=f"directory with the IDX files ({where})")
        sub.add_argument("--no-progress", action="store_true",
                         help="no progress bars (train: nor its line per epoch on stderr; metrics.jsonl has them)")

    def multiprocess(sub):
        sub.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                         help="run as one of several processes (andor_jax.distributed): process 0's address, or "
                              "'auto' to read the run from the cluster (SLURM, Open MPI, TPU pod); default "
                              "$JAX_COORDINATOR_ADDRESS, else one process")
        sub.add_argument("--num-processes", default=None, metavar="N", help="processes in the run ($JAX_NUM_PROCESSES)")
        sub.add_argument("--process-id", default=None, metavar="I", help="this process, 0..N-1 ($JAX_PROCESS_ID)")

    sub = commands.add_parser("train", help="train a config in a work directory (resumes if interrupted)")
    sub.add_argument("--config", required=True,
                     help=f"bundled config name ({', '.join(config_lib.bundled_configs())}) or a .py file; "
                          "override fields with --config.train.epochs=3")
    sub.add_argument("--workdir", required=True, metavar="DIR",
                     help="work directory (created if missing): config.json, data.json (the data trained on), "
                          "checkpoints/, metrics.jsonl; run the same command again to resume")
    common(sub, trained=False)
    multiprocess(sub)

    for name, text in (("evaluate", "clean accuracy and the attack suite; writes report.json/.md/.png"),
                       ("certify", "certified accuracy by interval bound propagation")):
        sub = commands.add_parser(name, help=text, epilog=(
            "--config.evaluate.KEY=VALUE sets KEY of the work directory's evaluation block for this run (e.g. "
            "--config.evaluate.limit=100), for the keys this command takes"
            + ("; --config.model.KEY=VALUE sets a model's inference settings (CARSO's n_draws, aggregation, "
               "...)" if name == "evaluate" else "") + "; other --config overrides are refused: training fixed them."))
        sub.add_argument("--workdir", required=True, metavar="DIR",
                         help="a trained work directory (andor-jax train); the report is written there unless "
                              "--output is given")
        sub.add_argument("--eps", default=None,
                         help="eps grid, start:stop:step or a,b,c (L-inf); default: evaluate.eps of the work "
                              "directory's config")
        sub.add_argument("--limit", type=int, default=None, metavar="N",
                         help="evaluate the first N test examples (0: all); default: evaluate.limit of the work "
                              "directory's config" + (" (all for certify)" if name == "certify" else ""))
        sub.add_argument("--output", default=None, metavar="DIR",
                         help="write the report here instead of the work directory")
        common(sub, trained=True)
        if name == "evaluate":
            sub.add_argument("--attacks", default=None,
                             help="comma-separated attack names; NAME[psd] runs one on pseudo-gradients only; "
                                  "default: evaluate.attacks of the work directory's config")
            sub.add_argument("--suite", default=None, metavar="NAME",
                             help="a named suite instead of --attacks (andor_jax.attacks.suites): standard "
                                  "(AutoAttack's: APGD-CE, APGD-T, FAB-T, Square 5000), plus, rand (randomised "
                                  "models: EOT 20), paper (the config's evaluate.attacks); each attack runs on the "
                                  "examples still standing; default: evaluate.suite of the work directory's config")
            sub.add_argument("--no-convergence-check", action="store_true",
                             help="skip the convergence check (the examples still standing attacked again with "
                                  "twice the steps and restarts of the strongest attack)")
            sub.add_argument("--set", action="append", default=[], metavar="ATTACK.SETTING=VALUE",
                             help="change an attack's setting, e.g. --set pgd.restarts=1 (repeatable)")
            sub.add_argument("--nested-eps", action="store_true",
                             help="an example broken at a smaller eps is not attacked at a larger one (the same "
                                  "point breaks it there); the report counts those inherited cells")
            sub.add_argument("--certify", action="store_true", help="also compute certified accuracy")
            sub.add_argument("--psd", action="store_true",
                             help="also run every attack with pseudo-gradients (models that have them)")
            sub.add_argument("--eot", type=int, default=None, metavar="N", dest="eot_draws",
                             help="randomised models: draws averaged per attack query (EOT); default: "
                                  "evaluate.eot_draws of the work directory's config (0: 20)")
            sub.add_argument("--verdict-draws", type=int, default=None, metavar="N",
                             help="randomised models: forward passes judging each point, the worst case counts; "
                                  "default: evaluate.verdict_draws of the work directory's config")
            multiprocess(sub)

    sub = commands.add_parser("spectrum", help="covariance spectra of a layer's outputs and their power-law "
                                               "exponent alpha; writes spectrum.json/.png (andor_jax.spectrum)")
    sub.add_argument("--workdir", required=True, action="append", metavar="DIR",
                     help="a trained work directory; repeat for several models in one figure")
    sub.add_argument("--layer", default=None, metavar="PATH",
                     help="layer path, e.g. layers_1, or 'input'; default: the first hidden layer")
    sub.add_argument("--fit", default="11:500", metavar="START:STOP", help="1-based range of n fitted (default 11:500)")
    sub.add_argument("--limit", type=int, default=0, help="the first N test images (0: all)")
    sub.add_argument("--random-init", action="store_true", help="also the layer at each run's initial parameters")
    sub.add_argument("--output", default=None, metavar="DIR", help="where to write (default: the first work directory)")
    common(sub, trained=True)

    sub = commands.add_parser("critical", help="Holzhausen et al.'s protocol: relative accuracy under PGD-20 over a "
                                               "log eps grid and the median critical perturbation; writes "
                                               "critical.json (andor_jax.evaluators.critical)")
    sub.add_argument("--workdir", required=True, metavar="DIR", help="a trained work directory (a deterministic model)")
    sub.add_argument("--limit", type=int, default=1000, help="the first N test images (0: all; default 1000); only "
                                                             "those classified correctly are attacked")
    sub.add_argument("--grid", default=None, metavar="EPS",
                     help="eps grid, a,b,c or start:stop:step (default: 10 values from 0.01 to 0.5 on a log scale)")
    sub.add_argument("--bisection-steps", type=int, default=4, metavar="N",
                     help="log-scale bisections of each image's bracket (default 4)")
    sub.add_argument("--output", default=None, metavar="DIR", help="where to write (default: the work directory)")
    common(sub, trained=True)

    sub = commands.add_parser("run", help="the main job: train quickstart, evaluate, write runs/quickstart/")
    sub.add_argument("--workdir", default="runs/quickstart", metavar="DIR",
                     help="work directory (default runs/quickstart)")
    common(sub, trained=False)
    return parser


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (a path or a nested message may hold newlines)."""
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
    args = build_parser().parse_args([a for a in argv if not a.startswith("--config.")])
    try:
        with SignalsInterrupt():
            return run_command(args, overrides)
    except Interrupted as stop:
        then = {"evaluate": " the chunks attacked so far are saved; run the same command again to resume",
                "run": " run the same command again to resume", "train": " run the same command again to resume"}
        print(f"\n{args.command} stopped by {stop.signal_name}:{then.get(args.command, ' nothing was written')}",
              file=sys.stderr)
        return EXIT_SIGNAL[stop.signum]
    except KeyboardInterrupt:  # training stopped by a signal (it has said so and saved a checkpoint)
        return EXIT_SIGNAL[signal.SIGINT]
    except user_errors() as err:
        print(f"andor-jax {args.command}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def user_errors() -> tuple[type[BaseException], ...]:
    """What a bad input raises: ValueError (and its kinds: `validation.InvalidInput`, `data.DataError`, ...),
    OSError (a path), and a model that cannot do what was asked (certifying through a layer without an
    interval rule).  Called only once an exception is raised, so that ``--help`` imports nothing heavy."""
    from andor_jax.layers.base import MissingIntervalRuleError

    return ValueError, OSError, MissingIntervalRuleError


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM outside training (which stops between two steps by itself)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.signal_name = signal.Signals(signum).name


class SignalsInterrupt:
    """Within it, SIGTERM (a job scheduler, `kill`) interrupts as Ctrl-C does, so that both end an
    evaluation with the same message; training installs its own handlers on top (`experiment.StopRequest`).
    Off the main thread nothing is installed."""

    def _handle(self, signum, frame):
        raise Interrupted(signum)

    def __enter__(self):
        self._previous = {}
        for signum in EXIT_SIGNAL:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# --------------------------------------------------------------------------------------------- checks

def _trained_data_dir(workdir: pathlib.Path, data_dir: str | None) -> str | None:
    """The ``--data-dir`` a training in ``workdir`` runs on: the one given, else, when it resumes (a
    checkpoint exists), the directory its data was recorded in (an error if that is gone)."""
    from andor_jax import data, experiment

    recorded = experiment.recorded_data(workdir) if workdir.is_dir() else None
    checkpoints = workdir / "checkpoints"
    if data_dir is not None or recorded is None or not (checkpoints.is_dir() and any(checkpoints.iterdir())):
        return data_dir
    return data.recorded_location(recorded, None)[0]


def prepare_training(args: argparse.Namespace, overrides: list[str], config_name: str):
    """The config of a training, and the data directory it runs on, after every check of them."""
    workdir = validation.check_writable_dir(args.workdir)
    if args.data_dir is not None:
        validation.check_data_dir(args.data_dir)
    config = config_lib.apply_overrides(config_lib.load_config(config_name), overrides)
    validation.check_config(config)
    return config, _trained_data_dir(workdir, args.data_dir)


FLAGS = {"attacks": "--attacks", "eps": "--eps", "limit": "--limit", "eot_draws": "--eot",
         "verdict_draws": "--verdict-draws"}


def evaluate_overrides(command: str, overrides: list[str], config, parameters, args) -> tuple[dict, object]:
    """The ``--config.evaluate.KEY=VALUE`` overrides as arguments ``{KEY: value}`` of the command's function
    (whose ``parameters`` they must name), the ``--config.model.KEY=VALUE`` overrides of the model's
    inference settings (`models.inference_settings`) as its ``model_settings``, and the evaluation block
    with them applied.  Overrides of any other key are refused (training fixed them), as is a flag given
    with its override."""
    from andor_jax import models

    names, model_keys = [], []
    for item in overrides:
        key = item.partition("=")[0]
        section, _, name = key.partition(".")
        if section == "model" and "." not in name and "model_settings" in parameters:
            accepted = models.inference_settings(config.model)
            if name not in accepted:
                offer = (f"it takes --config.model.KEY for {', '.join(accepted)}" if accepted else
                         f"architecture {config.model.name!r} has no inference settings")
                raise validation.InvalidInput(f"--config.{key} cannot change after training: {offer}")
            model_keys.append(name)
            continue
        if section != "evaluate" or "." in name:
            model_offer = ", --config.model.KEY=VALUE for inference settings" if "model_settings" in parameters else ""
            raise validation.InvalidInput(
                f"{command} takes --config.evaluate.KEY=VALUE overrides{model_offer} only (the rest of the config "
                f"is fixed by training), got --config.{item}")
        if name not in parameters or name in ("workdir", "data_dir", "output_dir", "progress", "model_settings"):
            accepted = [p for p in parameters if p in config.evaluate]
            raise validation.InvalidInput(f"--config.{key} cannot be applied to {command}: it takes "
                                          f"--config.evaluate.KEY for {', '.join(accepted)}")
        if name in FLAGS and getattr(args, name, None) is not None:
            raise validation.InvalidInput(f"give {FLAGS[name]} or --config.{key}, not both")
        names.append(name)
    applied = config_lib.apply_overrides(config, overrides)
    block = applied.evaluate
    given = {name: block[name].to_dict() if hasattr(block[name], "to_dict") else block[name] for name in names}
    if model_keys:
        given["model_settings"] = {name: applied.model[name] for name in model_keys}
    return given, block


def evaluation_arguments(args: argparse.Namespace, overrides: list[str], function) -> tuple[dict, pathlib.Path]:
    """The keyword arguments of ``function`` (`evaluation.evaluate` or `evaluation.certify`) for this command
    and the directory the report goes to, after every check that needs neither data nor trained parameters.

    Flags and ``--config.evaluate.KEY=VALUE`` overrides (`evaluate_overrides`) become arguments; values left
    unset come from the work directory's config and are checked too: the eps grid against the input domain
    and the attacks' norms, attack names and settings, limits, draws, gradient tags against the model's
    definition, and the recorded training data's directory.
    """
    from andor_jax import data, experiment, models

    workdir = validation.check_trained_dir(args.workdir)
    output = validation.check_writable_dir(args.output or workdir, "--output" if args.output else "work directory")
    if args.data_dir is not None:
        validation.check_data_dir(args.data_dir)
    config = experiment.read_config(workdir)
    given, block = evaluate_overrides(args.command, overrides, config, inspect.signature(function).parameters, args)
    domain, size = data.check_domain(config.data.domain), validation.input_size(config)
    labels, _ = validation.check_evaluate_block(block, domain, size)
    if getattr(args, "attacks", None) is not None:
        labels = given["attacks"] = validation.attack_names(args.attacks)
    norms = validation.check_attacks(labels) if args.command == "evaluate" else ["linf"]  # IBP bounds L-inf balls
    if args.eps is not None:
        given["eps"] = validation.parse_eps_grid(args.eps)
    if "eps" in given:
        given["eps"] = validation.check_eps_grid(validation.eps_values(given["eps"], "--eps"), domain, norms, size,
                                                 name="--eps")
    for name, minimum in (("limit", 0), ("eot_draws", 0), ("verdict_draws", 1)):
        if getattr(args, name, None) is not None:
            given[name] = validation.check_int(FLAGS[name], getattr(args, name), minimum)
    if given.get("convergence_attack"):
        validation.check_attacks([given["convergence_attack"]], "--config.evaluate.convergence_attack")
    if getattr(args, "set", None):
        given["attack_settings"] = parse_attack_settings(args.set)
        validation.check_attack_settings(given["attack_settings"])
    if args.command == "evaluate":
        validation.check_model_arguments(
            models.with_inference_settings(config.model, given.get("model_settings")), labels,
            psd=args.psd or bool(block.get("pseudo_gradient_attacks")),
            attack_model=given.get("attack_model", block.get("attack_model", "")),
            draws={FLAGS[name] if getattr(args, name, None) is not None else f"--config.evaluate.{name}": given[name]
                   for name in ("eot_draws", "verdict_draws") if name in given})
    recorded = experiment.recorded_data(workdir)
    if recorded is not None:
        data.recorded_location(recorded, args.data_dir)  # a vanished data directory fails here, before loading
    return {"data_dir": args.data_dir, "output_dir": args.output, **given}, output


def announce_resume(output_dir: pathlib.Path) -> None:
    """Says which chunk an interrupted evaluation in ``output_dir`` resumes from (`evaluation.PROGRESS_FILE`)."""
    import numpy as np

    from andor_jax import evaluation

    path = output_dir / evaluation.PROGRESS_FILE
    if not path.is_file():
        return
    try:
        with np.load(path, allow_pickle=False) as saved:
            done = int(saved["chunks_done"])
    except (OSError, KeyError, ValueError) as err:
        raise validation.InvalidInput(f"{path}: cannot read the saved progress ({one_line(err)}); delete it to "
                                      "start afresh") from None
    print(f"resuming the evaluation saved in {path}: {done} chunk(s) done, continuing with chunk {done + 1} "
          "(if the command's settings are unchanged); the per-attack times in the report add up both runs",
          file=sys.stderr)


# ------------------------------------------------------------------------------------------- commands

@contextlib.contextmanager
def removed_if_nothing_trained(workdir: pathlib.Path):
    """A work directory this command creates is removed again if the training fails (bad data, a bad
    setting found late) before it saved a checkpoint: a failed run leaves no half-made work directory.
    An interrupted one keeps it, to resume."""
    created = not workdir.exists()
    try:
        yield
    except (ValueError, OSError):
        checkpoints = workdir / "checkpoints"
        if created and workdir.is_dir() and not (checkpoints.is_dir() and any(checkpoints.iterdir())):
            shutil.rmtree(workdir, ignore_errors=True)
        raise

def join_processes(args: argparse.Namespace) -> bool:
    """Joins a multi-process run (`andor_jax.distributed`) when the flags or the environment ask for one;
    returns whether this process writes the run's files and messages (process 0, or the only one)."""
    if args.command not in ("train", "evaluate"):
        return True
    from andor_jax import distributed

    distributed.initialize(distributed.settings_from(args.coordinator, args.num_processes, args.process_id))
    return distributed.is_main()


def run_command(args: argparse.Namespace, overrides: list[str]) -> int:
    main_process = join_processes(args)
    if args.command in ("train", "run"):
        config, data_dir = prepare_training(args, overrides, args.config if args.command == "train" else "quickstart")
        workdir = pathlib.Path(args.workdir)
        with removed_if_nothing_trained(workdir):
            from andor_jax import experiment  # imported here so that `--help` stays fast

            experiment.fit(config, workdir, data_dir=data_dir, progress=not args.no_progress)
        if args.command == "train":
            if main_process:
                print(f"trained; checkpoints in {workdir / 'checkpoints'}")
            return 0
        from andor_jax import evaluation

        paths = evaluation.evaluate(workdir, data_dir=data_dir, progress=not args.no_progress)
        print(f"\nDone. Report: {paths['md']}\n")
        print(pathlib.Path(paths["md"]).read_text())
        return 0

    if args.command == "spectrum":
        return run_spectrum(args)
    if args.command == "critical":
        return run_critical(args)

    from andor_jax import evaluation

    function = evaluation.evaluate if args.command == "evaluate" else evaluation.certify
    kwargs, output = evaluation_arguments(args, overrides, function)
    if args.command == "evaluate":
        announce_resume(output)
        # a flag given says True; otherwise a --config.evaluate override, or None: the run's config decides
        kwargs.update(certify=True if args.certify else kwargs.get("certify"),
                      pseudo_gradient_attacks=True if args.psd else kwargs.get("pseudo_gradient_attacks"),
                      progress=not args.no_progress)
        if args.suite is not None:
            kwargs["suite"] = args.suite
        if args.no_convergence_check:
            kwargs["convergence_check"] = False
        if args.nested_eps:
            kwargs["nested_eps"] = True
    paths = function(args.workdir, **kwargs)
    if main_process:
        print(f"report: {paths['md']}")
    return 0


def run_spectrum(args: argparse.Namespace) -> int:
    """``andor-jax spectrum``: `andor_jax.spectrum.analyse` of the work directories."""
    workdirs = [validation.check_trained_dir(w) for w in args.workdir]
    if args.data_dir is not None:
        validation.check_data_dir(args.data_dir)
    start, colon, stop = args.fit.partition(":")
    if not (colon and start.isdigit() and stop.isdigit() and 1 <= int(start) < int(stop)):
        raise validation.InvalidInput(f"--fit {args.fit!r} must be START:STOP with 1 <= START < STOP, e.g. 11:500")
    limit = validation.check_int("--limit", args.limit, 0)
    from andor_jax import spectrum

    paths = spectrum.analyse(workdirs, layer=args.layer, data_dir=args.data_dir, limit=limit,
                             fit_range=(int(start), int(stop)), random_init=args.random_init, output=args.output)
    for record in json.loads(paths["json"].read_text())["records"]:
        print(f"{record['name']}: alpha {record['alpha']:.3f} (n = {record['fit_range'][0]}..{record['fit_range'][1]})")
    print(f"spectrum: {paths['json']}, {paths['png']}")
    return 0


def run_critical(args: argparse.Namespace) -> int:
    """``andor-jax critical``: `andor_jax.evaluators.critical.analyse` of one work directory."""
    workdir = validation.check_trained_dir(args.workdir)
    if args.data_dir is not None:
        validation.check_data_dir(args.data_dir)
    limit = validation.check_int("--limit", args.limit, 0)
    steps = validation.check_int("--bisection-steps", args.bisection_steps, 0)
    from andor_jax.evaluators import critical

    grid = critical.DEFAULT_GRID if args.grid is None else validation.parse_eps_grid(args.grid, "--grid")
    if min(grid) <= 0:
        raise validation.InvalidInput(f"--grid: every eps must be > 0 (the bisection is on a log scale), got {grid}")
    result = critical.analyse(workdir, limit=limit, grid=grid, bisection_steps=steps, data_dir=args.data_dir,
                              output=args.output)
    print(critical.summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
