"""Presenting evaluations: a report is a JSON document, and everything here is a pure function of it (the
markdown, the plot) or of per-example outcomes (the summaries), apart from `write_report`.

A report holds a ``header`` (which model, data, checkpoint and library version it describes, and when it
was written) and one entry per example set (`andor_jax.evaluators.examples`) under ``example_sets``.  Each
entry carries its exact example set (count and digests) and the results computed on it: ``robustness``
(the attack suite), ``certified`` (interval bound propagation), ``andness``.  Numbers of different example
sets are never combined: a gap between certified and robust accuracy is computed only within one set, and
a certification on other examples than the attacks becomes its own entry (`merge`).

The sanity checks follow Carlini et al. 2019 ("On evaluating adversarial robustness") and Tramer et al. 2020
("On adaptive attacks to adversarial example defenses"): accuracy must not rise with eps; iterative attacks
must be at least as strong as single-step ones; at a large enough eps accuracy must reach chance; and a
gradient-free attack beating the gradient attacks means the gradients are masked; and the attacks have
converged: the convergence check (`andor_jax.evaluators.robustness.Convergence`, twice the budget of the
strongest attack on the examples still standing) breaks at most its threshold of the examples.  The headline
robust accuracy is counted after that check.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from andor_jax.evaluators.robustness import Outcomes, eps_key

MASKING_MARGIN = 0.01       # a gradient-free attack ahead of every gradient attack by more flags masking
CHANCE_CEILING = 0.2        # robust accuracy allowed at the largest eps when that eps is half the domain,
CHANCE_EPS_FRACTION = 0.5   # i.e. eps >= 0.5 (hi - lo), e.g. 0.5 on [0, 1] (L-inf)
RESULT_KINDS = ("robustness", "certified", "andness", "spectrum")


# ---------------------------------------------------------------------------------------------------------
# Summaries of per-example outcomes.

def robustness_summary(outcomes: Outcomes) -> dict:
    """The attack suite's numbers from its per-example outcomes: ``clean_accuracy``, ``attacks`` ({label:
    {eps: accuracy}}, an example counting as correct if it is clean-correct and correct at the attack's
    point; in a sequential suite, after that attack and every earlier one), ``robust_accuracy`` ({eps:
    accuracy under the per-example worst case over every attack and the convergence check}), ``settings``
    and ``sanity`` (`sanity_checks`); for a sequential suite ``broken_by`` ({label: {eps: examples that
    attack broke first}}); with a convergence check ``robust_accuracy_before_check`` and ``convergence``
    (`convergence_summary`); for a randomised model also ``clean_accuracy_per_draw`` (the mean over draws,
    where ``clean_accuracy`` needs every verdict draw right); with nested balls ``inherited`` ({label: {eps:
    examples counted broken there by a point found at a smaller eps, not attacked}})."""
    clean = np.asarray(outcomes.clean, bool)

    def accuracy(mask):
        return float(np.mean(mask))

    attacks = {label: {k: accuracy(clean & correct) for k, correct in table.items()}
               for label, table in outcomes.correct.items()}
    keys = [eps_key(eps) for eps in outcomes.settings["threat_model"]["eps_grid"]]
    standing = {k: clean & np.all([table[k] for table in outcomes.correct.values()], axis=0) for k in keys}
    robust = {k: accuracy(standing[k]) for k in keys}
    summary = {"clean_accuracy": accuracy(clean), "attacks": attacks, "robust_accuracy": robust,
               "settings": outcomes.settings}
    if outcomes.settings.get("sequential"):
        summary["broken_by"] = broken_by(clean, outcomes.correct, keys)
    if outcomes.check is not None:
        summary["robust_accuracy_before_check"] = robust
        summary["robust_accuracy"] = {k: accuracy(clean & outcomes.check[k]) for k in keys}
        summary["convergence"] = convergence_summary(standing, outcomes.check, outcomes.settings["convergence"])
    if outcomes.clean_per_draw is not None:
        summary["clean_accuracy_per_draw"] = float(np.mean(outcomes.clean_per_draw))
    if outcomes.inherited is not None:
        summary["inherited"] = {label: {k: int(np.sum(table[k])) for k in keys}
                                for label, table in outcomes.inherited.items()}
    summary["sanity"] = sanity_checks(summary)
    return summary


def broken_by(clean: np.ndarray, correct: Mapping[str, Mapping[str, np.ndarray]], keys) -> dict:
    """``{label: {eps: count}}``: the examples each attack of a sequential suite broke, of those the clean
    check and the attacks before it left standing (``correct`` holds who stands after each, in order)."""
    counts = {label: {} for label in correct}
    for k in keys:
        before = clean
        for label, table in correct.items():
            after = clean & table[k]
            counts[label][k] = int(np.sum(before & ~after))
            before = after
    return counts


def convergence_summary(standing: Mapping[str, np.ndarray], check: Mapping[str, np.ndarray], record: Mapping) -> dict:
    """What the convergence check found: ``broken`` ({eps: examples it broke of those standing}),
    ``fraction`` (of all examples), ``converged`` (at every eps at most ``threshold``), with its ``attack``,
    ``threshold`` and ``settings``."""
    broken = {k: int(np.sum(standing[k] & ~np.asarray(check[k], bool))) for k in standing}
    total = len(next(iter(standing.values())))
    fraction = {k: count / total for k, count in broken.items()}
    return {"attack": record["attack"], "threshold": record["threshold"], "factor": record["factor"],
            "settings": record["settings"], "standing": {k: int(np.sum(v)) for k, v in standing.items()},
            "broken": broken, "fraction": fraction,
            "converged": all(value <= record["threshold"] for value in fraction.values())}


# Sanity checks.

def _by_eps(accuracies: Mapping[str, float]) -> list[tuple[float, float]]:
    return sorted((float(k), v) for k, v in accuracies.items())


def _check(name: str, passed: bool, message: str) -> dict:
    return {"name": name, "passed": bool(passed), "message": message}


def sanity_checks(report: Mapping) -> list[dict]:
    """The checks of an honest evaluation, each ``{'name', 'passed', 'message'}``, from a report's
    ``attacks``, ``robust_accuracy`` and ``settings`` (see the module docstring)."""
    records = report["settings"]["attacks"]
    results = report["attacks"]
    checks = []
    for label, accuracies in results.items():
        rises = [(a, b) for (a, acc_a), (b, acc_b) in zip(_by_eps(accuracies), _by_eps(accuracies)[1:])
                 if acc_b > acc_a]
        checks.append(_check(f"non-increasing in eps: {label}", not rises,
                             "accuracy never rises with eps" if not rises else
                             f"accuracy rises between eps {rises}: the attack is not converging"))

    def same_family(a, b):  # same norm, same gradient
        return records[a]["norm"] == records[b]["norm"] and records[a]["gradient"] == records[b]["gradient"]

    sequential = bool(report["settings"].get("sequential"))
    # in a sequential suite the accuracies are cumulative, so that a later attack is never weaker
    for iterative in (label for label in results if records[label]["kind"] == "iterative" and not sequential):
        for single in (label for label in results if records[label]["kind"] == "single-step"):
            if not same_family(iterative, single):
                continue
            weaker = [k for k in results[iterative] if results[iterative][k] > results[single][k]]
            checks.append(_check(f"iterative at least as strong as single-step: {iterative} vs {single}", not weaker,
                                 f"{iterative} is at least as strong at every eps" if not weaker else
                                 f"{iterative} leaves more examples correct than {single} at eps {weaker}: "
                                 "too few steps, a bad step size, or masked gradients"))

    threat = report["settings"]["threat_model"]
    lo, hi = threat["domain"]
    largest = max(threat["eps_grid"])
    if threat["norm"] == "linf" and largest >= CHANCE_EPS_FRACTION * (hi - lo):
        robust = report["robust_accuracy"][eps_key(largest)]
        checks.append(_check("near chance at large eps", robust <= CHANCE_CEILING,
                             f"robust accuracy {robust:.2%} at eps {largest:g} (at most {CHANCE_CEILING:.0%} "
                             "expected: such a ball reaches inputs of every class)" +
                             ("" if robust <= CHANCE_CEILING else "; the attacks are failing")))

    order = list(results)
    for free in (label for label in results if records[label]["kind"] == "gradient-free" and sequential):
        index = order.index(free)
        ahead = [k for k in results[free] if (results[order[index - 1]][k] if index else report["clean_accuracy"])
                 - results[free][k] > MASKING_MARGIN]
        checks.append(_check(
            f"no gradient masking: {free} after the gradient attacks", not ahead,
            f"{free} breaks at most {MASKING_MARGIN:.0%} of the examples the attacks before it left" if not ahead else
            f"{free} breaks more than {MASKING_MARGIN:.0%} of the examples that the attacks before it left at eps "
            f"{ahead}: those gradients are likely masked; use BPDA, EOT or pseudo-gradients"))
    for free in (label for label in results if records[label]["kind"] == "gradient-free" and not sequential):
        rivals = [label for label in results
                  if records[label]["gradient"] != "none" and records[label]["norm"] == records[free]["norm"]]
        for gradient in sorted({records[label]["gradient"] for label in rivals}):
            group = [label for label in rivals if records[label]["gradient"] == gradient]
            ahead = [k for k in results[free]
                     if results[free][k] < min(results[label][k] for label in group) - MASKING_MARGIN]
            checks.append(_check(
                f"no gradient masking: {free} vs {gradient}-gradient attacks", not ahead,
                f"{free} never beats the best {gradient}-gradient attack by more than {MASKING_MARGIN:.0%}"
                if not ahead else
                f"{free} beats every {gradient}-gradient attack by more than {MASKING_MARGIN:.0%} at eps "
                f"{ahead}: those gradients are likely masked; use BPDA, EOT or pseudo-gradients"))

    convergence = report.get("convergence")
    if convergence:
        worst = max(convergence["fraction"].items(), key=lambda kv: kv[1])
        checks.append(_check(
            f"converged: {convergence['attack']} with {convergence['factor']}x steps and restarts",
            convergence["converged"],
            f"the check breaks at most {worst[1]:.2%} more of the examples (eps {worst[0]}; threshold "
            f"{convergence['threshold']:.2%})" if convergence["converged"] else
            f"not converged: the check breaks {worst[1]:.2%} more of the examples at eps {worst[0]} (threshold "
            f"{convergence['threshold']:.2%}): the suite's figure was too high; use more steps, restarts or a "
            "stronger suite"))
    return checks


# ---------------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------------
# The report document.

def merge(report: Mapping | None, header: Mapping, examples: Mapping, results: Mapping) -> tuple[dict, list[str]]:
    """``report`` with ``results`` ({kind: result}) of the example set ``examples`` entered, and notes
    saying what was not combined and why.

    Within one example set of one model a new result replaces the old one of its kind, except that
    certified accuracies at other eps are kept (each eps is its own number on the same examples).  Entries
    of other example sets stay as they are, apart; entries of another model (another ``header['model']
    ['digest']``, or other ``settings``, e.g. CARSO's draws) are dropped, since they no longer describe it.
    """
    unknown = sorted(set(results) - set(RESULT_KINDS))
    if unknown:
        raise ValueError(f"unknown result kinds {unknown}; known: {RESULT_KINDS}")
    notes = []
    sets = {name: dict(entry) for name, entry in (report or {}).get("example_sets", {}).items()}
    old_model = (report or {}).get("header", {}).get("model", {})
    new_model = header.get("model", {})
    if sets and old_model.get("digest") != new_model.get("digest"):
        notes.append(f"the existing report described another checkpoint (parameters "
                     f"{str(old_model.get('digest'))[:12]}); its results are dropped")
        sets = {}
    elif sets and old_model.get("settings") != new_model.get("settings"):
        changed = sorted(key for key in set(old_model.get("settings", {})) | set(new_model.get("settings", {}))
                         if old_model.get("settings", {}).get(key) != new_model.get("settings", {}).get(key))
        notes.append(f"the existing report described the model with other settings ({', '.join(changed)}); "
                     "its results are dropped (keep both with --output)")
        sets = {}
    entry = sets.get(examples["id"], {"examples": dict(examples)})
    if entry["examples"] != dict(examples):
        raise ValueError(f"example set {examples['id']!r} is recorded with other digests: {entry['examples']}")
    for kind, result in results.items():
        if kind == "certified" and "certified" in entry:
            result = {**result, "certified_accuracy": {**entry["certified"]["certified_accuracy"],
                                                       **result["certified_accuracy"]}}
        entry[kind] = dict(result)
    others = [other for name, other in sets.items() if name != examples["id"]]
    for other in others:
        kinds = [kind for kind in RESULT_KINDS if kind in other]
        notes.append(f"{', '.join(results)} on {examples['description']} ({examples['count']} examples) is not "
                     f"combined with the {', '.join(kinds)} on {other['examples']['description']} "
                     f"({other['examples']['count']} examples): other examples; each is its own section")
    sets[examples["id"]] = entry
    return {"header": dict(header), "example_sets": sets}, notes


def _percent(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _lookup(accuracies: Mapping[str, float] | None, eps: float):
    """The accuracy at ``eps`` from an {eps string: accuracy} table whose keys may be formatted otherwise."""
    for k, v in (accuracies or {}).items():
        if math.isclose(float(k), eps, rel_tol=1e-9, abs_tol=1e-12):
            return v
    return None


def format_header(header: Mapping) -> list[str]:
    """What the report describes, as markdown lines: model, data (with the sample's warning), checkpoint,
    library version and date."""
    lines = []
    model, data = header.get("model", {}), header.get("data", {})
    if model:
        settings = ", ".join(f"{k}={v}" for k, v in model.get("settings", {}).items())
        lines.append(f"- **Model**: config `{model.get('config', '?')}`, "
                     f"architecture `{model.get('architecture', '?')}`"
                     + (f" ({settings})" if settings else "")
                     + f"; checkpoint step {model.get('checkpoint_step', '?')}"
                     + (f"; parameters sha256 {model['digest'][:16]}" if model.get("digest") else ""))
    if data:
        lines.append(f"- **Data**: {data.get('dataset', '?')}, {data.get('source', '?')}"
                     + (f" (content digest {data['digest'][:16]})" if data.get("digest") else "")
                     + (f", domain [{data['domain'][0]:g}, {data['domain'][1]:g}]" if data.get("domain") else ""))
        if data.get("warning"):
            lines.append(f"- **Warning**: {data['warning']}")
    if header.get("library") or header.get("date"):
        lines.append(f"- **Written** by {header.get('library', '?')} on {header.get('date', '?')}")
    return lines + [""] if lines else []


def _format_robustness(robustness: Mapping, certified: Mapping | None) -> list[str]:
    attacks = robustness["attacks"]
    robust = robustness["robust_accuracy"]
    before = robustness.get("robust_accuracy_before_check")
    table = certified["certified_accuracy"] if certified else None
    eps_values = sorted({float(k) for t in (*attacks.values(), robust, table or {}) for k in t})
    header = ["eps", *attacks, *(["before check"] if before else []),
              "robust (upper bound)" if table is not None else "robust (worst case)"]
    if table is not None:
        header += ["certified (lower bound)", "gap"]
    lines = ["### Accuracy (%)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for eps in eps_values:
        upper, lower = _lookup(robust, eps), _lookup(table, eps)
        row = [f"{eps:g}", *(_percent(_lookup(t, eps)) for t in attacks.values()),
               *([_percent(_lookup(before, eps))] if before else []), _percent(upper)]
        if table is not None:
            row += [_percent(lower), _percent(None if upper is None or lower is None else upper - lower)]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Robust accuracy counts an example correct only if it is classified correctly clean and under "
              "every attack (the per-example worst case)" + (", and after the convergence check." if before else ".")]
    if robustness["settings"].get("sequential"):
        lines.append("The attacks ran as a suite, in this order, each on the examples the ones before it left "
                     "standing: an attack's column is the accuracy after it and every attack before it.")
    if robustness.get("inherited"):
        cells = [f"{label} at {k}: {count}" for label, table in robustness["inherited"].items()
                 for k, count in table.items() if count]
        lines.append("Nested balls: an example broken at a smaller eps was not attacked again at a larger one (the "
                     "same point breaks it there); examples inherited so, per attack and eps: "
                     + ("; ".join(cells) if cells else "none") + ".")
    if table is not None:
        lines.append("Certified accuracy (interval bound propagation, on the same examples) is a proven lower "
                     "bound, robust accuracy under attack an upper bound; the true robust accuracy lies in the gap.")
    lines.append("")
    lines += _format_breaks(robustness, eps_values)
    settings = robustness["settings"]
    threat = settings["threat_model"]
    lo, hi = threat["domain"]
    lines += ["### Threat model", "",
              f"- norm: {'L-inf' if threat['norm'] == 'linf' else 'L2'}",
              f"- eps grid: {', '.join(f'{eps:g}' for eps in threat['eps_grid'])}",
              f"- input domain: [{lo:g}, {hi:g}]",
              f"- attacker: {threat['knowledge']}"]
    randomness = settings.get("randomness", {})
    if randomness.get("randomised"):
        draws = randomness["eot_draws"]
        attacked = ("the model with its key held fixed (one deterministic network)" if randomness["mode"] == "fixed"
                    else f"EOT over {draws} draws per query" if draws > 1 else "one draw per query")
        lines.append(f"- randomised model: the attacks see {attacked}; every verdict is the worst case over "
                     f"{randomness['verdict_draws']} independent forward passes (one wrong draw breaks an example)")
    lines.append("")
    timings = settings.get("attack_seconds", {})
    lines += ["### Attack settings", "", "| attack | description | settings | seconds |", "|---|---|---|---|"]
    for label, record in settings["attacks"].items():
        values = ", ".join(f"{name}={value}" for name, value in record.items() if name not in ("attack", "description"))
        lines.append(f"| {label} | {record['description']} | {values} | {timings.get(label, '')} |")
    lines += ["", f"batch size {settings.get('batch_size')}, key {settings.get('key')}; seconds are wall time over "
              "all chunks and eps, compilation included, summed over resumed runs.", ""]
    if robustness.get("sanity"):
        lines += ["### Sanity checks", ""]
        lines += [f"- {'PASS' if check['passed'] else '**FAIL**'} {check['name']}: {check['message']}"
                  for check in robustness["sanity"]]
        lines.append("")
    return lines


def _format_breaks(robustness: Mapping, eps_values: list[float]) -> list[str]:
    """Which attack of a suite broke how many examples, and what the convergence check found."""
    lines = []
    counts, convergence = robustness.get("broken_by"), robustness.get("convergence")
    if counts:
        header = ["eps", *counts, *(["convergence check"] if convergence else [])]
        lines += ["### Examples broken by each attack", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for eps in eps_values:
            row = [f"{eps:g}", *(str(_lookup(table, eps)) for table in counts.values())]
            lines.append("| " + " | ".join(row + ([str(_lookup(convergence["broken"], eps))] if convergence else []))
                         + " |")
        lines.append("")
    if convergence:
        settings = convergence["settings"]
        scaled = ", ".join(f"{name}={settings[name]}" for name in ("steps", "restarts", "n_queries", "max_iter",
                                                                    "targets") if name in settings)
        verdict = "converged" if convergence["converged"] else "**NOT CONVERGED**"
        lines += ["### Convergence check", "",
                  f"The examples still standing were attacked again by {convergence['attack']} with "
                  f"{convergence['factor']}x its steps and restarts ({scaled}) and a fresh key: {verdict} (threshold "
                  f"{convergence['threshold']:.2%} of the examples).", "",
                  "| eps | standing before | broken by the check | % of the examples |", "|---|---|---|---|"]
        for eps in eps_values:
            lines.append(f"| {eps:g} | {_lookup(convergence['standing'], eps)} | {_lookup(convergence['broken'], eps)} "
                         f"| {_percent(_lookup(convergence['fraction'], eps))} |")
        lines.append("")
    elif "convergence" in robustness["settings"]:
        lines += ["No convergence check ran (switched off, or no attack with steps or restarts to scale): the "
                  "attacks' convergence is untested.", ""]
    return lines


def _format_certified(certified: Mapping) -> list[str]:
    table = certified["certified_accuracy"]
    lines = ["### Certified accuracy (%)", "", "| eps | certified (lower bound) |", "|---|---|"]
    lines += [f"| {float(k):g} | {_percent(v)} |" for k, v in sorted(table.items(), key=lambda kv: float(kv[0]))]
    return lines + ["", "Interval bound propagation: a proven lower bound on robust accuracy.  No attack ran on "
                    "these examples, so no gap is computed.", ""]


def _format_andness(andness: Mapping) -> list[str]:
    lines = ["### AND-ness (hyper-saturation)", "",
             f"hypersat = E[K(nics) | EDS] - E[K(nics) | SDS], K(x) = |tanh(4 (x - 0.5))| (Fontana, sec. 4), type "
             f"{andness.get('scramble', '?')} scrambles; mean over all neurons **{andness['mean_hypersat']:.4f}**.",
             "", "| layer | type | neurons | mean | min | max |", "|---|---|---|---|---|---|"]
    for name, layer in andness["layers"].items():
        lines.append(f"| {name} | {layer['type']} | {layer['neurons']} | {layer['mean_hypersat']:.4f} | "
                     f"{layer['min_hypersat']:.4f} | {layer['max_hypersat']:.4f} |")
    lines.append("")
    if andness.get("histograms"):
        lines += [f"Histograms of nics under EDS and SDS per layer: `{andness['histograms']}`.", ""]
    return lines


def _format_spectrum(spectrum: Mapping) -> list[str]:
    """Alpha of the first hidden layer (`andor_jax.spectrum.report_entry`) and any local layer's diagnostic."""
    start, stop = spectrum["fit_range"]
    lines = ["### Covariance spectrum", "",
             f"Layer `{spectrum['layer']}`: alpha **{spectrum['alpha']:.3f}** (least squares of log(lambda_n / "
             f"lambda_1) on log n, n = {start}..{stop}, over these {spectrum['examples']} examples, float64).", ""]
    for local in spectrum.get("local_layers", []):
        lines += [f"Local layer `{local['layer']}` ({local['units']} units, p = {local['p']:g}, R = "
                  f"{local['radius']:g}): {_percent(local['off_norm_fraction'])}% of units off norm by > 0.01, "
                  f"{int(local['negative_units'])} with mean weight < -R/2: "
                  f"{'accepted' if local['accepted'] else 'not accepted'} (< 10% and none); "
                  f"{_percent(local.get('inhibitory_fraction'))}% of units inhibitory (negative current on a "
                  "uniform input: silent on images after relu).", ""]
    if spectrum.get("receptive_fields"):
        lines += [f"Receptive fields of the first 100 units: `{spectrum['receptive_fields']}`.", ""]
    return lines


def format_entry(entry: Mapping) -> list[str]:
    """One example set's section: its examples, then every result computed on exactly them."""
    examples = entry["examples"]
    lines = [f"## Test examples: {examples['description']}", "",
             f"{examples['count']} examples (indices sha256 {examples['indices_digest']}, inputs and labels sha256 "
             f"{examples['data_digest']}); every number in this section is computed on exactly these.", ""]
    robustness, certified = entry.get("robustness"), entry.get("certified")
    for result in (robustness, certified):
        if result and "clean_accuracy" in result:
            per_draw = (f" (mean over draws {_percent(result['clean_accuracy_per_draw'])}%; an example counts "
                        "only if every verdict draw is right)" if "clean_accuracy_per_draw" in result else "")
            lines += [f"Clean accuracy: **{_percent(result['clean_accuracy'])}%** on these {examples['count']} "
                      f"examples{per_draw}.", ""]
            break
    if robustness:
        lines += _format_robustness(robustness, certified)
    elif certified:
        lines += _format_certified(certified)
    if entry.get("andness"):
        lines += _format_andness(entry["andness"])
    if entry.get("spectrum"):
        lines += _format_spectrum(entry["spectrum"])
    return lines


def _entries(report: Mapping) -> list[Mapping]:
    """The example sets of a report, those with attack results first, then by size."""
    return sorted(report.get("example_sets", {}).values(),
                  key=lambda entry: ("robustness" not in entry, "certified" not in entry, -entry["examples"]["count"]))


def format_markdown(report: Mapping) -> str:
    """``report`` as readable markdown: the header, then one section per example set (clean accuracy, the
    table eps x attack with the robust accuracy and, when certified on the same examples, the certified lower
    bound and the gap; threat model, settings, sanity checks; AND-ness)."""
    lines = ["# Robustness report", "", *format_header(report.get("header", {}))]
    for entry in _entries(report):
        lines += format_entry(entry)
    return "\n".join(lines)


def short_title(report: Mapping) -> str:
    """The header in one line, for the plot: config (architecture), data, step, library, date."""
    header = report.get("header", {})
    model, data = header.get("model", {}), header.get("data", {})
    warning = " — sample of MNIST TRAINING images" if data.get("warning") else ""
    return (f"{model.get('config', '?')} ({model.get('architecture', '?')}), step {model.get('checkpoint_step', '?')}"
            f" · {data.get('dataset', '?')} [{data.get('kind', data.get('source', '?'))}]{warning}"
            f" · {header.get('library', '?')} · {header.get('date', '?')}")


def _series(eps_values: list[float], accuracies: Mapping[str, float]) -> np.ndarray:
    """Accuracies on the common eps grid, NaN where a table has no value (a line breaks there instead of
    joining the neighbours)."""
    return np.array([np.nan if (v := _lookup(accuracies, e)) is None else v for e in eps_values], float)


def _plot_entry(axes, entry: Mapping) -> None:
    robustness, certified = entry.get("robustness"), entry.get("certified")
    attacks = robustness["attacks"] if robustness else {}
    robust = robustness["robust_accuracy"] if robustness else None
    table = certified["certified_accuracy"] if certified else None
    eps_values = sorted({float(k) for t in (*attacks.values(), robust or {}, table or {}) for k in t})
    for label, accuracies in attacks.items():
        axes.plot(eps_values, _series(eps_values, accuracies), marker="o", markersize=3, linewidth=1, alpha=0.8,
                  label=label, linestyle=":" if "[" in label else "-")  # attacks through another gradient dotted
    if robust:
        axes.plot(eps_values, _series(eps_values, robust), color="black", linewidth=2.5, marker="o", markersize=3,
                  label="robust (upper bound)" if table else "robust (worst case)")
    if table:
        lower = _series(eps_values, table)
        axes.plot(eps_values, lower, color="darkgreen", linewidth=2.5, linestyle="--", marker="s", markersize=3,
                  label="certified (lower bound)")
        if robust:
            upper = _series(eps_values, robust)
            axes.fill_between(eps_values, lower, upper, where=~(np.isnan(lower) | np.isnan(upper)),
                              color="darkgreen", alpha=0.25, label="gap", interpolate=False)
    clean = next((r["clean_accuracy"] for r in (robustness, certified) if r and "clean_accuracy" in r), None)
    if clean is not None:
        axes.plot([0.0], [clean], marker="*", markersize=10, color="crimson", linestyle="none", label="clean")
    threat = (robustness or {}).get("settings", {}).get("threat_model", {})
    axes.set_xlabel(f"eps ({'L-inf' if threat.get('norm', 'linf') == 'linf' else 'L2'})")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0.0, 1.02)
    axes.grid(alpha=0.3)
    examples = entry["examples"]
    axes.set_title(f"{examples['description']} (id {examples['id']})", fontsize="small")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plot_report(report: Mapping, path: str | os.PathLike) -> None:
    """Accuracy against eps, one panel per example set with attack or certified results: a line per attack,
    the robust accuracy, the certified accuracy of the same examples with the gap shaded (as in the MWD
    paper's Figures 1 and 2), and the clean accuracy at eps 0.  Missing values break the lines."""
    entries = [entry for entry in _entries(report) if "robustness" in entry or "certified" in entry]
    figure = Figure(figsize=(9, 4.5 * max(1, len(entries))), layout="constrained")
    FigureCanvasAgg(figure)
    for index, entry in enumerate(entries):
        _plot_entry(figure.add_subplot(len(entries), 1, index + 1), entry)
    figure.suptitle(short_title(report), fontsize="small")
    figure.savefig(path, dpi=120)


def read_report(path: str | os.PathLike) -> dict | None:
    """The report at ``path`` (``report.json``), None if there is none; ValueError for a corrupt one or
    one in an older layout."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); move it away to write a new report") from err
    if not isinstance(report, dict) or not isinstance(report.get("example_sets"), dict):
        raise ValueError(f"{path} is not a report of this version (no example_sets); move it away to write a "
                         "new report")
    return report


def write_report(report: Mapping, directory: str | os.PathLike) -> dict[str, Path]:
    """Writes ``report`` as ``report.json`` (atomically), ``report.md`` and ``robustness.png`` into
    ``directory``; returns ``{'json': path, 'md': path, 'png': path}``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "report.json", "md": directory / "report.md", "png": directory / "robustness.png"}
    temporary = paths["json"].with_suffix(".json.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    temporary.replace(paths["json"])
    paths["md"].write_text(format_markdown(report))
    plot_report(report, paths["png"])
    return paths
