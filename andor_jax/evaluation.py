"""Evaluating a trained work directory: clean accuracy, the attack suite, certified accuracy, the report.

The numbers bracket the truth from both sides: attacks give upper bounds on robust accuracy (the
per-example worst case over every attack run), interval bound propagation gives lower bounds
(certified accuracy).
"""
from __future__ import annotations

import pathlib

import jax
import numpy as np

from andor_jax import experiment as experiment_lib
from andor_jax.config import parse_eps
from andor_jax import report as report_lib


def _test_split(experiment: experiment_lib.Experiment, limit: int | None):
    ds = experiment.dataset
    count = len(ds.x_test) if not limit else min(limit, len(ds.x_test))
    return np.asarray(ds.x_test[:count]), np.asarray(ds.y_test[:count])


PROGRESS_FILE = "report_progress.npz"  # the attacked chunks of an unfinished evaluation (resumed on the next call)
OUTCOMES_FILE = "report_outcomes.npz"  # the same file once the evaluation is complete: every example's outcome


def evaluate(workdir, *, data_dir=None, attacks: str | None = None, eps: list[float] | None = None,
             limit: int | None = None, certify: bool = False, pseudo_gradient_attacks: bool = False,
             progress: bool = True, output_dir=None,
             attack_settings: dict[str, dict] | None = None) -> dict[str, pathlib.Path]:
    """Runs the robustness evaluation of ``workdir`` and writes ``report.json``, ``report.md`` and the plot
    there (or in ``output_dir``).  Unset arguments come from the run's ``evaluate`` config block.

    The outcomes of every chunk of examples are kept in `PROGRESS_FILE` in the output directory until the
    report is written: an interrupted evaluation, run again with the same arguments, resumes where it stopped.
    The file then becomes `OUTCOMES_FILE`: per example, ``clean`` (classified correctly) and ``LABEL@EPS``
    (still correct under that attack), so that evaluations of the same inputs can be merged per example.
    """
    experiment, variables = experiment_lib.load_trained(workdir, data_dir=data_dir)
    settings = experiment.config.evaluate
    attack_names = [a for a in (settings.attacks if attacks is None else attacks).split(",") if a]
    eps_grid = eps if eps is not None else parse_eps(settings.eps)
    x, y = _test_split(experiment, settings.limit if limit is None else limit)
    domain = tuple(experiment.config.data.domain)
    logits_fn = jax.jit(experiment.logits_fn(variables, rho=0.0))
    output_dir = pathlib.Path(output_dir or workdir)
    double_with_psd = pseudo_gradient_attacks or settings.get("pseudo_gradient_attacks", False)
    psd = double_with_psd or any(report_lib.split_label(label)[1] == "psd" for label in attack_names)
    result = report_lib.robustness_report(
        logits_fn, x, y, attacks=attack_names, eps_grid=eps_grid, domain=domain,
        key=jax.random.PRNGKey(experiment.config.seed), batch_size=settings.batch_size,
        gradient_logits_fns={"psd": experiment.logits_fn(variables, rho=1.0)} if psd else None,
        doubled_tags=["psd"] if double_with_psd else [],
        overrides=_merged_settings(settings.get("attack_settings"), attack_settings), progress=progress,
        progress_path=output_dir / PROGRESS_FILE, model_digest=report_lib.digest(variables))
    result["model"] = experiment.config.model.to_dict()
    result["data"] = {"dataset": experiment.config.data.dataset, "source": experiment.dataset.source,
                      "domain": list(domain)}
    if certify or settings.get("certify", False):
        result.update(_certified(experiment, variables, x, y, eps_grid))
    if experiment.config.train.get("objective") == "andor":
        result["andness"] = _andness(experiment, variables, x, output_dir)
    paths = report_lib.write_report(result, output_dir)
    (output_dir / PROGRESS_FILE).replace(output_dir / OUTCOMES_FILE)
    return paths


ANDNESS_EXAMPLES = 1000  # test examples for the EDS / SDS statistics of the AND-ness summary


def _andness(experiment, variables, x, output_dir: pathlib.Path) -> dict:
    """The per-layer hyper-saturation summary of an AND/OR-trained network (`diagnostics.andness_summary`,
    one type-B scramble of the first `ANDNESS_EXAMPLES` test inputs) and its nics histograms (the paper's
    Figure 7) as ``nics_histograms.png``."""
    from andor_jax import diagnostics
    from andor_jax.andor_training import settings_of

    andor = settings_of(experiment.config.train)
    inputs = x[:ANDNESS_EXAMPLES]
    samples = diagnostics.nics_samples(experiment.model, variables, inputs, jax.random.PRNGKey(experiment.config.seed),
                                       kind=andor.scramble, unit=andor.unit)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = diagnostics.plot_nics_histograms(experiment.model, samples, output_dir / "nics_histograms.png")
    return {**diagnostics.andness_summary(experiment.model, samples), "n_examples": len(inputs),
            "scramble": andor.scramble, "histograms": path.name}


def _merged_settings(configured, given: dict[str, dict] | None) -> dict[str, dict]:
    """Attack settings of the run's config, overridden per setting by those given on the command line."""
    merged = {name: dict(values) for name, values in (configured.to_dict() if configured else {}).items()}
    for name, values in (given or {}).items():
        merged.setdefault(name, {}).update(values)
    return merged


def certify(workdir, *, data_dir=None, eps: list[float] | None = None, limit: int | None = None, output_dir=None):
    """Certified accuracy only (interval bound propagation), merged into the work directory's report."""
    experiment, variables = experiment_lib.load_trained(workdir, data_dir=data_dir)
    eps_grid = eps if eps is not None else parse_eps(experiment.config.evaluate.eps)
    x, y = _test_split(experiment, limit if limit is not None else 0)
    result = {"n_examples": int(len(x))}
    result.update(_certified(experiment, variables, x, y, eps_grid))
    return report_lib.write_report(result, output_dir or workdir)


def _certified(experiment, variables, x, y, eps_grid) -> dict:
    from andor_jax import bounds

    domain = tuple(experiment.config.data.domain)
    accuracy = bounds.certified_accuracy(experiment.model, variables, x, y, eps_grid, domain=domain)
    return {"certified_accuracy": {report_lib.eps_key(e): a for e, a in accuracy.items()}}
