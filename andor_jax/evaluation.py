"""Evaluating a trained work directory: the attack suite and certified accuracy on a set of test examples,
written as a report.

The numbers bracket the truth from both sides: attacks give upper bounds on robust accuracy (the
per-example worst case over every attack run, `andor_jax.evaluators.robustness`), interval bound
propagation gives lower bounds (certified accuracy, `andor_jax.evaluators.certify`).  This module turns any
model of the model protocol (`andor_jax.models`) into the functions the evaluators need, runs them, and
enters their results into the work directory's report (`andor_jax.report`) under the exact example set
they were computed on.
"""
from __future__ import annotations

import datetime
import json
import pathlib
import sys
from typing import Callable, NamedTuple, Sequence

import jax

import andor_jax
from andor_jax import distributed
from andor_jax import experiment as experiment_lib
from andor_jax import models
from andor_jax import report as report_lib
from andor_jax import spectrum as spectrum_lib
from andor_jax.attacks import registry, suites
from andor_jax.evaluators import certify as certify_lib
from andor_jax.evaluators import examples as examples_lib
from andor_jax.evaluators import robustness

PROGRESS_FILE = "report_progress.npz"  # the attacked chunks of an unfinished evaluation (resumed on the next call)
OUTCOMES_FILE = "report_outcomes.npz"  # the same file once the evaluation is complete: every example's outcome
ANDNESS_EXAMPLES = 1000  # test examples for the EDS / SDS statistics of the AND-ness summary


class Target(NamedTuple):
    """A model as `robustness.run` takes it (see `andor_jax.evaluators.robustness`): the judging forward,
    what the attacks query and differentiate, and how randomness is handled (None: deterministic)."""

    logits_fn: Callable
    attack_logits_fn: Callable | None
    gradient_logits_fns: dict[str, Callable]
    randomness: robustness.Randomness | None


def _attacked(model, attack_model: str):
    """The network the attacks see: ``model``, or its sub-network ``attack_model`` (a field of the module)."""
    if not attack_model:
        return model
    if attack_model not in models.submodels(model):
        raise ValueError(f"evaluate.attack_model {attack_model!r} is not a sub-network of {type(model).__name__} "
                         f"(its sub-networks: {list(models.submodels(model)) or 'none'})")
    return getattr(model, attack_model)


def check_request(model, *, tags: Sequence[str], attack_model: str = "") -> None:
    """ValueError, before any work, for gradient modes the attacked network lacks (``--psd`` or ``[psd]`` on
    a model without pseudo-gradients), an unknown sub-network, or a randomised sub-network of a
    deterministic model.  Needs the model's declarations only, not its parameters."""
    attacked = _attacked(model, attack_model)
    modes = models.gradient_modes(attacked)
    for tag in tags:
        if tag not in modes:
            raise ValueError(f"the attacks ask for the gradient mode {tag!r}, which {type(attacked).__name__} "
                             f"does not have (its gradient modes: {', '.join(modes)}); "
                             + ("--psd and [psd] need a model with pseudo-gradients (MWD layers)" if tag == "psd"
                                else "name one of its modes"))
    if models.randomised(attacked) and not models.randomised(model):
        raise ValueError(f"the sub-network {attack_model!r} is randomised but the whole model is not")


def target_of(model, variables, *, tags: Sequence[str], attack_model: str = "", eot_draws: int = 0,
              verdict_draws: int = 10, randomness: str = "fresh") -> Target:
    """The functions of ``model`` that an evaluation needs, through `models.logits`.

    Args:
      model, variables: the trained model.
      tags: the gradient modes the attacks use (``'psd'`` of ``'pgd[psd]'``); each must be a mode of the
        attacked network (ValueError naming its modes otherwise).
      attack_model: ``''`` attacks the whole model; a sub-network's name attacks it alone (transfer), the
        whole model still judging.
      eot_draws: draws per attack query for a randomised attacked network; 0: `Randomness`'s default.
      verdict_draws: forward passes judging each point, for a randomised model.
      randomness: ``'fresh'`` or ``'fixed'`` (`Randomness.mode`).
    """
    check_request(model, tags=tags, attack_model=attack_model)
    attacked = _attacked(model, attack_model)
    attacked_variables = variables if not attack_model else {
        collection: tree[attack_model] for collection, tree in variables.items() if attack_model in tree}
    whole_random, attacked_random = models.randomised(model), models.randomised(attacked)
    if not whole_random:
        def forward(m, v, gradient=None):
            return lambda x: models.logits(m, v, x, gradient=gradient)
        gradients = {tag: forward(attacked, attacked_variables, tag) for tag in tags}
        return Target(forward(model, variables), forward(attacked, attacked_variables) if attack_model else None,
                      gradients, None)

    def forward(m, v, gradient=None):
        if models.randomised(m):
            return lambda x, key: models.logits(m, v, x, key=key, gradient=gradient)
        return lambda x, key: models.logits(m, v, x, gradient=gradient)  # a deterministic sub-network

    draws = (eot_draws or robustness.Randomness().eot_draws) if attacked_random else 1
    return Target(forward(model, variables), forward(attacked, attacked_variables) if attack_model else None,
                  {tag: forward(attacked, attacked_variables, tag) for tag in tags},
                  robustness.Randomness(draws, verdict_draws, randomness))


def _names(attacks) -> list[str]:
    """Attack names from a list or a comma-separated string (the command line's syntax)."""
    return [a.strip() for a in (attacks.split(",") if isinstance(attacks, str) else attacks) if a.strip()]


def _checkpoint_step(workdir: pathlib.Path) -> int | None:
    from andor_jax import checkpoint

    checkpointer = checkpoint.Checkpointer(workdir / "checkpoints")
    try:
        return checkpointer.latest_step
    finally:
        checkpointer.close()


def model_identity(model_config, variables) -> str:
    """What identifies the model an evaluation attacks: its parameters' digest and, for an architecture
    with inference settings (`models.inference_settings`), their values, so that an evaluation saved with
    other draws is not resumed."""
    inference = {key: model_config[key] for key in models.inference_settings(model_config) if key in model_config}
    digest = examples_lib.digest(variables)
    return f"{digest} {json.dumps(inference, sort_keys=True)}" if inference else digest


def header_of(experiment, variables, workdir: pathlib.Path) -> dict:
    """What a report describes: the model (config name, architecture and its settings, checkpoint step,
    parameter digest), the data set and its source (with the embedded sample's warning), the library
    version and the date."""
    config, dataset = experiment.config, experiment.dataset
    settings = config.model.to_dict()
    architecture = settings.pop("name")
    provenance = getattr(dataset, "provenance", None)
    data = {"dataset": config.data.dataset, "source": dataset.source,
            "kind": provenance.source if provenance else None,
            "directory": provenance.directory if provenance else None,
            "digest": provenance.digest if provenance else None, "domain": list(config.data.domain),
            "warning": dataset.notice if (provenance and provenance.source == "embedded") or
            "embedded" in dataset.source else None}
    return {"model": {"config": config.get("name") or "unrecorded",
                      "architecture": architecture,
                      "settings": settings, "checkpoint_step": _checkpoint_step(workdir),
                      "digest": examples_lib.digest(variables), "randomised": models.randomised(experiment.model)},
            "data": data, "library": f"andor_jax {andor_jax.__version__}",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _enter(output_dir: pathlib.Path, header: dict, entries: list[tuple[dict, dict]], command: str):
    """Merges ``entries`` ((examples, results) pairs) into the report of ``output_dir`` and writes it; the
    notes of what was kept apart go to stderr."""
    report = report_lib.read_report(output_dir / "report.json")
    for examples, results in entries:
        report, notes = report_lib.merge(report, header, examples, results)
        for note in notes:
            print(f"andor-jax {command}: {note}", file=sys.stderr)
    return report_lib.write_report(report, output_dir)


def evaluate(workdir, *, data_dir=None, attacks: Sequence[str] | str | None = None, eps: list[float] | None = None,
             limit: int | None = None, certify: bool | None = None, pseudo_gradient_attacks: bool | None = None,
             progress: bool = True, output_dir=None, attack_settings: dict[str, dict] | None = None,
             eot_draws: int | None = None, verdict_draws: int | None = None, randomness: str | None = None,
             attack_model: str | None = None, batch_size: int | None = None, suite: str | None = None,
             convergence_check: bool | None = None, convergence_threshold: float | None = None,
             convergence_attack: str | None = None, nested_eps: bool | None = None,
             model_settings: dict | None = None) -> dict[str, pathlib.Path]:
    """Runs the robustness evaluation of ``workdir`` and writes ``report.json``, ``report.md`` and the plot
    there (or in ``output_dir``).  Every argument named like a key of the run's ``evaluate`` config block
    defaults to it (the command line's ``--config.evaluate.KEY=VALUE`` sets it).  ``eot_draws`` and
    ``verdict_draws`` given for a deterministic model are an error (they would mean nothing).

    ``suite`` (`andor_jax.attacks.suites`: ``standard``, ``plus``, ``rand``, ``paper``) replaces the attack
    list: its attacks run in order, each on the examples still standing, and every gradient attack also on
    pseudo-gradients where the model has them; the config's ``attack_settings`` apply to its own attack list
    (and the ``paper`` suite), ``attack_settings`` given here to either.  The convergence check
    (`robustness.Convergence`, on unless ``convergence_check`` is False) attacks the examples still standing
    again with twice the budget of the strongest attack (or of ``convergence_attack``) and flags the report
    "not converged" when it breaks more than ``convergence_threshold`` of the examples.  With ``nested_eps`` an
    example broken at one eps is not attacked at the larger ones (the balls are nested: the same point breaks it
    there), and the report counts those inherited cells.  ``model_settings`` sets the model's inference settings
    (`models.with_inference_settings`: CARSO's ``n_draws``, ``aggregation``, ...; the command line's
    ``--config.model.KEY=VALUE``); the report's header gives the settings it was computed with.

    The outcomes of every chunk of examples are kept in `PROGRESS_FILE` in the output directory until the
    report is written: an interrupted evaluation, run again with the same arguments, resumes where it stopped.
    The file then becomes `OUTCOMES_FILE`: per example, ``clean`` (classified correctly), ``LABEL@EPS``
    (still correct under that attack; in a suite, still standing after it and every earlier one) and
    ``check@EPS`` (still standing after the convergence check, when it ran) and, with ``nested_eps``,
    ``inherited:LABEL@EPS`` (counted broken there by a point found at a smaller eps, not attacked).
    """
    workdir = pathlib.Path(workdir)
    config = experiment_lib.read_config(workdir)
    config.model = models.with_inference_settings(config.model, model_settings)
    settings = config.evaluate
    if suite is not None and attacks is not None:
        raise ValueError(f"give an attack list or a suite, not both (attacks {attacks!r}, suite {suite!r})")
    suite = ("" if attacks is not None else settings.get("suite", "")) if suite is None else suite
    declared = models.build_model(config.model)  # its declarations decide what may be asked, before any loading
    attack_model = settings.attack_model if attack_model is None else attack_model
    suite_settings = {}
    attacked = _attacked(declared, attack_model)
    if suite:
        attack_names, suite_settings = suites.resolve(
            suite, randomised=models.randomised(attacked), paper_attacks=_names(settings.attacks),
            paper_settings=_merged_settings(settings.get("attack_settings"), None))
    else:
        attack_names = _names(settings.attacks if attacks is None else attacks)

    def through_surface(labels):  # untagged gradient attacks differentiate the attacked network's surface
        return suites.through_surface(labels, models.attack_surface(attacked),
                                      lambda name: registry.get_spec(name).uses_gradients)

    attack_names = through_surface(attack_names)
    eps_grid = list(eps if eps is not None else settings.eps)
    psd_requested = settings.pseudo_gradient_attacks if pseudo_gradient_attacks is None else pseudo_gradient_attacks
    double_with_psd = (psd_requested
                       or (bool(suite) and "psd" in models.gradient_modes(_attacked(declared, attack_model))))
    check = settings.get("convergence_check", True) if convergence_check is None else convergence_check
    check_attack = settings.get("convergence_attack", "") if convergence_attack is None else convergence_attack
    convergence = robustness.Convergence(
        settings.get("convergence_threshold", 0.005) if convergence_threshold is None else convergence_threshold,
        through_surface([check_attack])[0] if check_attack else "",
    ) if check else None
    if convergence is not None:
        convergence.check()
    checked = [convergence.attack] if convergence is not None and convergence.attack else []
    tags = sorted({tag for tag in (robustness.split_label(label)[1] for label in [*attack_names, *checked]) if tag}
                  | ({"psd"} if double_with_psd else set()))
    check_request(declared, tags=tags, attack_model=attack_model)
    if not models.randomised(declared) and (eot_draws or verdict_draws):
        raise ValueError(f"--eot and --verdict-draws apply to randomised models; {type(declared).__name__} is "
                         "deterministic")
    certify = settings.certify if certify is None else certify
    if certify and models.randomised(declared):
        raise ValueError(f"{type(declared).__name__} is randomised: interval bound propagation certifies "
                         "deterministic networks only; evaluate without --certify")
    experiment, variables = experiment_lib.load_trained(workdir, data_dir=data_dir, model_settings=model_settings)
    model = experiment.model
    target = target_of(model, variables, tags=tags, attack_model=attack_model,
                       eot_draws=settings.eot_draws if eot_draws is None else eot_draws,
                       verdict_draws=settings.verdict_draws if verdict_draws is None else verdict_draws,
                       randomness=settings.randomness if randomness is None else randomness)
    ds = experiment.dataset
    x, y, examples = examples_lib.first_examples(ds.x_test, ds.y_test, settings.limit if limit is None else limit)
    domain = tuple(experiment.config.data.domain)
    output_dir = pathlib.Path(output_dir or workdir)
    outcomes = robustness.run(
        jax.jit(target.logits_fn), x, y, attacks=attack_names, eps_grid=eps_grid, domain=domain,
        key=jax.random.PRNGKey(experiment.config.seed),
        batch_size=settings.batch_size if batch_size is None else batch_size,
        gradient_logits_fns=target.gradient_logits_fns, doubled_tags=["psd"] if double_with_psd else [],
        overrides=_merged_settings(suite_settings if suite else settings.get("attack_settings"), attack_settings),
        progress=progress and distributed.is_main(),
        progress_path=output_dir / PROGRESS_FILE, model_digest=model_identity(experiment.config.model, variables),
        randomness=target.randomness,
        attack_logits_fn=None if target.attack_logits_fn is None else jax.jit(target.attack_logits_fn),
        attack_model=attack_model, share=distributed.share(), sequential=bool(suite), convergence=convergence,
        nested_eps=bool(settings.get("nested_eps", False) if nested_eps is None else nested_eps))
    header = header_of(experiment, variables, workdir)  # on every process: orbax reads the step collectively
    if not distributed.is_main():  # of several processes, process 0 alone has the report written
        return {}
    results = {"robustness": report_lib.robustness_summary(outcomes)}
    if certify:
        results["certified"] = certify_lib.run(model, variables, x, y, eps_grid, domain=domain)
    hidden = spectrum_lib.report_entry(model, variables, x)
    if hidden is not None:
        results["spectrum"] = hidden
        if hidden.get("local_layers"):
            from andor_jax.evaluators import local

            output_dir.mkdir(parents=True, exist_ok=True)
            hidden["receptive_fields"] = local.write_receptive_fields(
                variables, hidden["local_layers"][0], output_dir / "receptive_fields.png").name
    entries = [(examples, results)]
    if experiment.config.train.get("objective") == "andor":
        andness_x, andness_y, andness_examples = examples_lib.first_examples(x, y, ANDNESS_EXAMPLES)
        entries.append((andness_examples, {"andness": _andness(experiment, variables, andness_x, output_dir)}))
    paths = _enter(output_dir, header, entries, "evaluate")
    (output_dir / PROGRESS_FILE).replace(output_dir / OUTCOMES_FILE)
    return paths


def _andness(experiment, variables, inputs, output_dir: pathlib.Path) -> dict:
    """The per-layer hyper-saturation summary of an AND/OR-trained network (`diagnostics.andness_summary`,
    one type-B scramble of ``inputs``) and its nics histograms (the paper's Figure 7) as
    ``nics_histograms.png``."""
    from andor_jax import diagnostics
    from andor_jax.objectives.andor import settings_of

    andor = settings_of(experiment.config.train)
    samples = diagnostics.nics_samples(experiment.model, variables, inputs, jax.random.PRNGKey(experiment.config.seed),
                                       kind=andor.scramble, unit=andor.unit)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = diagnostics.plot_nics_histograms(experiment.model, samples, output_dir / "nics_histograms.png")
    return {**diagnostics.andness_summary(experiment.model, samples), "scramble": andor.scramble,
            "histograms": path.name}


def _merged_settings(configured, given: dict[str, dict] | None) -> dict[str, dict]:
    """Attack settings of the run's config (or suite), overridden per setting by those given on the command
    line."""
    configured = configured.to_dict() if hasattr(configured, "to_dict") else dict(configured or {})
    merged = {name: dict(values) for name, values in configured.items()}
    for name, values in (given or {}).items():
        merged.setdefault(name, {}).update(values)
    return merged


def certify(workdir, *, data_dir=None, eps: list[float] | None = None, limit: int | None = None,
            output_dir=None) -> dict[str, pathlib.Path]:
    """Certified accuracy (interval bound propagation) of the first ``limit`` test examples (0 or None: all),
    entered into the work directory's report under its example set: combined with attack results only when
    those were computed on exactly the same examples, otherwise a section of its own (a note says so)."""
    workdir = pathlib.Path(workdir)
    experiment, variables = experiment_lib.load_trained(workdir, data_dir=data_dir)
    eps_grid = list(eps if eps is not None else experiment.config.evaluate.eps)
    ds = experiment.dataset
    x, y, examples = examples_lib.first_examples(ds.x_test, ds.y_test, limit or 0)
    result = certify_lib.run(experiment.model, variables, x, y, eps_grid, domain=tuple(experiment.config.data.domain))
    return _enter(pathlib.Path(output_dir or workdir), header_of(experiment, variables, workdir),
                  [(examples, {"certified": result})], "certify")
