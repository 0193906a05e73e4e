"""The robustness report: accuracy under every attack on an eps grid, the per-example worst case, the threat
model and every hyperparameter, and the sanity checks of an honest evaluation.

The checks follow Carlini et al. 2019 ("On evaluating adversarial robustness") and Tramer et al. 2020 ("On
adaptive attacks to adversarial example defenses"): accuracy must not rise with eps; iterative attacks must
be at least as strong as single-step ones; at a large enough eps accuracy must reach chance; and a
gradient-free attack beating the gradient attacks means the gradients are masked.

`robustness_report` computes the report (a JSON-able dict); `write_report` writes ``report.json`` (merged
into an existing one, so that e.g. ``certified_accuracy`` from the certifier survives), ``report.md``
(`format_markdown`) and ``robustness.png`` (`plot_report`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from andor_jax.attacks import common, registry
from andor_jax.attacks.pgd import STEP_SIZE_FACTOR

LogitsFn = Callable[[jax.Array], jax.Array]

MASKING_MARGIN = 0.01       # a gradient-free attack ahead of every gradient attack by more flags masking
CHANCE_CEILING = 0.2        # robust accuracy allowed at the largest eps when that eps is half the domain,
CHANCE_EPS_FRACTION = 0.5   # i.e. eps >= 0.5 (hi - lo), e.g. 0.5 on [0, 1] (L-inf)


def eps_key(eps: float) -> str:
    """The string under which an eps is stored in a report: ``0.3 -> "0.3"``, ``0.1 + 0.2 -> "0.3"``."""
    return f"{float(eps):g}"


# ---------------------------------------------------------------------------------------------------------
# Computing the report.

def split_label(label: str) -> tuple[str, str | None]:
    """``'pgd[psd]' -> ('pgd', 'psd')``, ``'pgd' -> ('pgd', None)``."""
    if label.endswith("]") and "[" in label:
        name, tag = label[:-1].split("[", 1)
        return name, tag
    return label, None


def _runs(attacks: Sequence[str], gradient_logits_fns: Mapping[str, LogitsFn],
          doubled_tags: Sequence[str]) -> list[tuple[str, str, str | None]]:
    """``(label, attack name, gradient tag)`` for every entry of ``attacks`` (``'pgd[psd]'`` runs PGD on the
    ``'psd'`` gradient only), plus ``name[tag]`` for every plain gradient attack and every tag of
    ``doubled_tags`` (unless listed already)."""
    runs = [(label, *split_label(label)) for label in attacks]
    for tag in doubled_tags:
        runs += [(f"{name}[{tag}]", name, tag) for name in attacks
                 if "[" not in name and registry.get_spec(name).uses_gradients and f"{name}[{tag}]" not in attacks]
    return runs


def _settings_record(name: str, settings: Mapping, tag: str | None) -> dict:
    """Everything about one run, JSON-able: the attack, its threat model and every setting."""
    spec = registry.get_spec(name)
    record = {"attack": name, "description": spec.description, "norm": settings.get("norm", spec.norm),
              "kind": spec.kind, "gradient": "none" if not spec.uses_gradients else (tag or "true"),
              **settings}
    if "step_size" in record and record["step_size"] is None:  # PGD's default is relative to eps
        record["step_size"] = f"{STEP_SIZE_FACTOR} * eps / steps" if record["step_rule"] == "sign" else 1.0
    return record


def _validate(logits_fn, x, y, attacks, eps_grid, domain, batch_size, gradient_logits_fns, overrides):
    """Every error a caller can make, raised before any attack runs."""
    if not attacks:
        raise ValueError("attacks must name at least one attack; known: " + ", ".join(sorted(registry.ATTACKS)))
    if len(set(attacks)) != len(attacks):
        raise ValueError(f"attacks contains duplicates: {list(attacks)}")
    if not eps_grid:
        raise ValueError("eps_grid must hold at least one eps")
    keys = [eps_key(eps) for eps in eps_grid]
    if len(set(keys)) != len(keys):
        raise ValueError(f"eps_grid holds values that coincide once formatted: {keys}")
    common.check_positive_int("batch_size", batch_size)
    for tag, fn in gradient_logits_fns.items():
        if not isinstance(tag, str) or not tag or any(c in tag for c in "[]") or not callable(fn):
            raise ValueError(f"gradient_logits_fns must map plain names to callables, got {tag!r}: {fn!r}")
    for label in attacks:
        name, tag = split_label(label)
        if tag is not None and tag not in gradient_logits_fns:
            raise ValueError(f"attack {label!r} differentiates {tag!r}, which is not among the gradient functions "
                             f"given ({sorted(gradient_logits_fns)}); for [psd], pass --psd or use an MWD model")
        if tag is not None and not registry.get_spec(name).uses_gradients:
            raise ValueError(f"attack {label!r}: {name!r} is gradient-free and takes no gradient tag")
    for name in overrides:
        registry.get_spec(name)  # a typo in an override's attack name is an error, not a silent no-op
    domain = common.check_domain(domain)
    common.check_batch(x, y, domain)
    if len(y) == 0:
        raise ValueError("x and y hold no examples")
    num_classes = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(x[:1].shape, x.dtype)).shape[-1]
    common.check_labels(y, num_classes)
    names = list(dict.fromkeys(split_label(label)[0] for label in attacks))
    settings = {name: registry.settings_of(name, **overrides.get(name, {})) for name in names}
    for name in names:
        norm = settings[name].get("norm", registry.get_spec(name).norm)
        for eps in eps_grid:
            common.check_eps(eps, domain, norm, x.shape[1:])
    return domain, settings


def _batches(n: int, batch_size: int):
    """``(start, stop)`` of every chunk of at most ``batch_size`` examples."""
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _padded(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` with its first row repeated up to ``size`` rows, so that every chunk has one shape and each
    attack compiles once (the padding's results are dropped)."""
    return np.concatenate([array, np.repeat(array[:1], size - len(array), axis=0)]) if len(array) < size else array


class ChunkProgress:
    """The per-example outcomes of the chunks attacked so far, saved to ``path`` (``.npz``) after every chunk,
    so that an interrupted evaluation resumes at the first chunk not done.  A file written for other inputs,
    attacks, settings or key (``fingerprint``) is refused rather than mixed in."""

    def __init__(self, path: str | os.PathLike | None, fingerprint: str, arrays: dict[str, np.ndarray]):
        self.path = None if path is None else Path(path)
        self.fingerprint = fingerprint
        self.arrays = arrays
        self.chunks_done = 0
        if self.path is not None and self.path.exists():
            with np.load(self.path, allow_pickle=False) as saved:
                if str(saved["fingerprint"]) != fingerprint:
                    raise ValueError(f"{self.path} holds the progress of a different evaluation (other inputs, "
                                     "attacks, settings or key); delete it to start afresh")
                self.chunks_done = int(saved["chunks_done"])
                for name in arrays:
                    arrays[name][...] = saved[name]

    def save(self, chunks_done: int) -> None:
        self.chunks_done = chunks_done
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(temporary, fingerprint=self.fingerprint, chunks_done=chunks_done, **self.arrays)
        temporary.replace(self.path)


def digest(tree) -> str:
    """A SHA-256 digest of the arrays of a pytree (e.g. a model's variables, or inputs and labels)."""
    hasher = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        hasher.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return hasher.hexdigest()


def _fingerprint(model_digest, x, y, runs, keys, settings, overrides, domain, chunk, key) -> str:
    """What decides the outcome of every chunk: the model, the inputs and labels, and every setting."""
    described = {"model": model_digest, "data": digest((x, y)), "runs": runs, "eps": keys, "settings": settings,
                 "overrides": overrides,
                 "domain": list(domain), "chunk": chunk, "key": np.asarray(jax.random.key_data(key)).tolist()}
    return json.dumps(described, sort_keys=True, default=str)


def robustness_report(logits_fn: LogitsFn, x, y, *, attacks: Sequence[str], eps_grid: Sequence[float],
                      domain=(0.0, 1.0), key: jax.Array, batch_size: int = 500,
                      gradient_logits_fns: Mapping[str, LogitsFn] | None = None,
                      overrides: Mapping[str, Mapping] | None = None, progress: bool = True,
                      doubled_tags: Sequence[str] | None = None,
                      progress_path: str | os.PathLike | None = None, model_digest: str | None = None) -> dict:
    """Attacks ``logits_fn`` on ``(x, y)`` with every attack at every eps and summarises the outcome.

    Args:
      logits_fn: the model, ``x -> logits`` (batch, classes), deterministic.
      x: (n, ...) inputs inside ``domain``.
      y: (n,) integer labels.
      attacks: names from `andor_jax.attacks.ATTACKS`, e.g. ``['fgsm', 'pgd', 'apgd-ce', 'square']``; a name
        with a tag of ``gradient_logits_fns``, e.g. ``'apgd-dlr[psd]'``, runs on that gradient only.
      eps_grid: the radii to attack at.
      domain: the input box ``(lo, hi)``.
      key: PRNG key; each (chunk, attack, eps) gets its own key folded from it.
      batch_size: examples per chunk (memory: restarts x batch_size inputs are attacked at once).
      gradient_logits_fns: alternative functions to differentiate, by tag: ``{'psd': fn}`` also runs every
        plain gradient attack as ``'name[psd]'`` with ``gradient_logits_fn=fn``.
      doubled_tags: the tags whose doubling of every plain gradient attack is wanted (default: all of
        ``gradient_logits_fns``; ``()`` runs the tagged entries of ``attacks`` only).
      overrides: per-attack setting overrides, e.g. ``{'pgd': {'steps': 100, 'step_rule': 'adadelta'}}``;
        entries for registered attacks that are not run are ignored.
      progress: show a progress bar over the chunks.
      progress_path: an ``.npz`` file that keeps the outcomes of the chunks done (`ChunkProgress`): an
        interrupted call with the same arguments resumes after the last chunk saved.  None keeps nothing.
      model_digest: what identifies the model (`digest` of its variables); required with ``progress_path``,
        so that the progress of another model is never resumed.

    Returns:
      A JSON-able dict with ``clean_accuracy``, ``n_examples``, ``attacks`` ({label: {eps: accuracy}}),
      ``robust_accuracy`` ({eps: accuracy under the per-example worst case over all attacks, clean errors
      included}), ``settings`` (threat model and every attack's settings) and ``sanity`` (list of checks).
    """
    gradient_logits_fns = dict(gradient_logits_fns or {})
    overrides = dict(overrides or {})
    x, y = np.asarray(x), np.asarray(y)
    domain, settings = _validate(logits_fn, x, y, list(attacks), list(eps_grid), domain, batch_size,
                                 gradient_logits_fns, overrides)
    runs = _runs(attacks, gradient_logits_fns,
                 list(gradient_logits_fns) if doubled_tags is None else list(doubled_tags))
    keys = [eps_key(eps) for eps in eps_grid]
    n = len(y)
    chunk = min(batch_size, n)
    clean_correct = np.zeros(n, bool)
    correct = {label: {k: np.zeros(n, bool) for k in keys} for label, _, _ in runs}
    attack_seconds = np.zeros(len(runs))
    if progress_path is not None and not model_digest:
        raise ValueError("progress_path needs model_digest (e.g. report.digest(variables)), so that the saved "
                         "progress of another model is never resumed")
    fingerprint = _fingerprint(model_digest, x, y, runs, keys, settings, overrides, domain, chunk, key)
    saved = ChunkProgress(progress_path, fingerprint,
                          {"clean": clean_correct, "seconds": attack_seconds,
                           **{f"{label}@{k}": correct[label][k] for label, _, _ in runs for k in keys}})
    predict = jax.jit(lambda inputs: jnp.argmax(logits_fn(inputs), axis=-1))

    batches = _batches(n, chunk)
    bar = tqdm(total=len(batches), initial=saved.chunks_done, desc="robustness report", unit="batch",
               disable=not progress)
    for batch_index, (start, stop) in enumerate(batches[saved.chunks_done:], start=saved.chunks_done):
        xb, yb = jnp.asarray(_padded(x[start:stop], chunk)), jnp.asarray(_padded(y[start:stop], chunk))
        size = stop - start
        clean_correct[start:stop] = np.asarray(predict(xb) == yb)[:size]
        batch_key = jax.random.fold_in(key, batch_index)
        for run_index, (label, name, tag) in enumerate(runs):
            bar.set_postfix_str(label)
            run_key = jax.random.fold_in(batch_key, run_index)
            for eps_index, (eps, k) in enumerate(zip(eps_grid, keys)):
                started = time.perf_counter()
                result = registry.run_attack(name, logits_fn, xb, yb, jax.random.fold_in(run_key, eps_index), eps,
                                             domain, gradient_logits_fn=gradient_logits_fns.get(tag),
                                             **overrides.get(name, {}))
                correct[label][k][start:stop] = ~np.asarray(result.broken)[:size]
                attack_seconds[run_index] += time.perf_counter() - started
        saved.save(batch_index + 1)
        bar.update()
    bar.close()
    seconds = {label: float(value) for (label, _, _), value in zip(runs, attack_seconds)}

    def accuracy(mask):
        return float(np.mean(mask))

    attack_accuracy = {label: {k: accuracy(clean_correct & correct[label][k]) for k in keys} for label, _, _ in runs}
    robust = {k: accuracy(clean_correct & np.all([correct[label][k] for label, _, _ in runs], axis=0)) for k in keys}
    norms = {settings[name].get("norm", registry.get_spec(name).norm) for _, name, _ in runs}
    report = {
        "clean_accuracy": accuracy(clean_correct),
        "n_examples": int(n),
        "attacks": attack_accuracy,
        "robust_accuracy": robust,
        "settings": {
            "threat_model": {
                # an L2 ball of radius eps lies inside the L-inf ball of radius eps, so L2 attacks are valid
                # (weaker) attacks under an L-inf threat model
                "norm": "linf" if "linf" in norms else "l2",
                "eps_grid": [float(eps) for eps in eps_grid],
                "domain": list(domain),
                "knowledge": "white-box: the attacker knows the model and differentiates it end to end",
            },
            "attacks": {label: _settings_record(name, settings[name], tag) for label, name, tag in runs},
            "n_examples": int(n),
            "batch_size": int(chunk),
            # wall time of each attack over all chunks and eps, compilation included
            "attack_seconds": {label: round(value, 1) for label, value in seconds.items()},
            "key": np.asarray(jax.random.key_data(key)).ravel().tolist(),
        },
    }
    report["sanity"] = sanity_checks(report)
    return report


# ---------------------------------------------------------------------------------------------------------
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

    for iterative in (label for label in results if records[label]["kind"] == "iterative"):
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

    for free in (label for label in results if records[label]["kind"] == "gradient-free"):
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
    return checks


# ---------------------------------------------------------------------------------------------------------
# Writing it out.

def _percent(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _lookup(accuracies: Mapping[str, float] | None, eps: float):
    """The accuracy at ``eps`` from an {eps string: accuracy} table whose keys may be formatted otherwise."""
    for k, v in (accuracies or {}).items():
        if math.isclose(float(k), eps, rel_tol=1e-9, abs_tol=1e-12):
            return v
    return None


def format_markdown(report: Mapping) -> str:
    """``report`` as readable markdown: clean accuracy, a table eps x attack with the robust accuracy (and,
    when ``certified_accuracy`` is present, the certified lower bound, the robust upper bound and their gap),
    the threat model, every attack's settings, the AND-ness summary when present and the sanity checks."""
    attacks = report.get("attacks", {})
    robust = report.get("robust_accuracy")
    certified = report.get("certified_accuracy")
    eps_values = sorted({float(k) for table in (*attacks.values(), robust or {}, certified or {}) for k in table})
    lines = ["# Robustness report", ""]
    if "clean_accuracy" in report:
        lines += [f"Clean accuracy: **{_percent(report['clean_accuracy'])}%**"
                  + (f" on {report['n_examples']} examples." if "n_examples" in report else "."), ""]

    if eps_values:
        header = ["eps", *attacks]
        if robust is not None:
            header.append("robust (upper bound)" if certified is not None else "robust (worst case)")
        if certified is not None:
            header += ["certified (lower bound)", "gap"]
        lines += ["## Accuracy (%)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for eps in eps_values:
            row = [f"{eps:g}", *(_percent(_lookup(table, eps)) for table in attacks.values())]
            upper, lower = _lookup(robust, eps), _lookup(certified, eps)
            if robust is not None:
                row.append(_percent(upper))
            if certified is not None:
                row += [_percent(lower), _percent(None if upper is None or lower is None else upper - lower)]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        if robust is not None:
            lines += ["Robust accuracy counts an example correct only if it is classified correctly clean and "
                      "under every attack (the per-example worst case).", ""]
        if certified is not None:
            lines += ["Certified accuracy is a proven lower bound (interval bound propagation); robust accuracy "
                      "under attack is an upper bound; the true robust accuracy lies in the gap.", ""]

    settings = report.get("settings", {})
    threat = settings.get("threat_model")
    if threat:
        lo, hi = threat["domain"]
        lines += ["## Threat model", "",
                  f"- norm: {'L-inf' if threat['norm'] == 'linf' else 'L2'}",
                  f"- eps grid: {', '.join(f'{eps:g}' for eps in threat['eps_grid'])}",
                  f"- input domain: [{lo:g}, {hi:g}]",
                  f"- attacker: {threat['knowledge']}", ""]
    if settings.get("attacks"):
        timings = settings.get("attack_seconds", {})
        lines += ["## Attack settings", "", "| attack | description | settings | seconds |", "|---|---|---|---|"]
        for label, record in settings["attacks"].items():
            values = ", ".join(f"{name}={value}" for name, value in record.items()
                               if name not in ("attack", "description"))
            lines.append(f"| {label} | {record['description']} | {values} | {timings.get(label, '')} |")
        lines.append("")
        extra = {k: v for k, v in settings.items() if k not in ("threat_model", "attacks", "attack_seconds")}
        if extra:
            lines += [", ".join(f"{k}: {v}" for k, v in extra.items()), ""]
    andness = report.get("andness")
    if andness:
        lines += ["## AND-ness (hyper-saturation)", "",
                  f"hypersat = E[K(nics) | EDS] - E[K(nics) | SDS], K(x) = |tanh(4 (x - 0.5))| (Fontana, sec. 4), "
                  f"over {andness.get('n_examples', '?')} test examples, type {andness.get('scramble', '?')} "
                  f"scrambles; mean over all neurons **{andness['mean_hypersat']:.4f}**.", "",
                  "| layer | type | neurons | mean | min | max |", "|---|---|---|---|---|---|"]
        for name, layer in andness["layers"].items():
            lines.append(f"| {name} | {layer['type']} | {layer['neurons']} | {layer['mean_hypersat']:.4f} | "
                         f"{layer['min_hypersat']:.4f} | {layer['max_hypersat']:.4f} |")
        lines.append("")
        if andness.get("histograms"):
            lines += [f"Histograms of nics under EDS and SDS per layer: `{andness['histograms']}`.", ""]
    if report.get("sanity"):
        lines += ["## Sanity checks", ""]
        lines += [f"- {'PASS' if check['passed'] else '**FAIL**'} {check['name']}: {check['message']}"
                  for check in report["sanity"]]
        lines.append("")
    return "\n".join(lines)


def plot_report(report: Mapping, path: str | os.PathLike) -> None:
    """Accuracy against eps: one line per attack, the robust accuracy and, when present, the certified
    accuracy with the gap between the two shaded (as in the MWD paper's Figures 1 and 2)."""
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, accuracies in report.get("attacks", {}).items():
        eps, acc = zip(*_by_eps(accuracies))
        axes.plot(eps, acc, marker="o", markersize=3, linewidth=1, alpha=0.8, label=label,
                  linestyle=":" if "[" in label else "-")  # attacks through an alternative gradient dotted
    robust, certified = report.get("robust_accuracy"), report.get("certified_accuracy")
    if robust:
        eps, acc = zip(*_by_eps(robust))
        axes.plot(eps, acc, color="black", linewidth=2.5,
                  label="robust (upper bound)" if certified else "robust (worst case)")
    if certified:
        eps, acc = zip(*_by_eps(certified))
        axes.plot(eps, acc, color="tab:green", linewidth=2.5, linestyle="--", label="certified (lower bound)")
        if robust:
            shared = sorted({float(k) for k in certified} & {float(k) for k in robust})
            axes.fill_between(shared, [_lookup(certified, e) for e in shared], [_lookup(robust, e) for e in shared],
                              color="tab:green", alpha=0.12, label="gap")
    threat = report.get("settings", {}).get("threat_model", {})
    axes.set_xlabel(f"eps ({'L-inf' if threat.get('norm', 'linf') == 'linf' else 'L2'})")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0.0, 1.02)
    axes.grid(alpha=0.3)
    if "clean_accuracy" in report:
        axes.set_title(f"clean accuracy {_percent(report['clean_accuracy'])}%")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.savefig(path, dpi=120)


def write_report(report: Mapping, workdir: str | os.PathLike) -> dict[str, Path]:
    """Writes ``report.json``, ``report.md`` and ``robustness.png`` into ``workdir``.

    ``report`` is merged into an existing ``report.json`` (its top-level keys replace the old ones; others,
    e.g. ``certified_accuracy``, survive), and the markdown and plot show the merged report.

    Returns:
      ``{'json': path, 'md': path, 'png': path}``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {"json": workdir / "report.json", "md": workdir / "report.md", "png": workdir / "robustness.png"}
    merged = {}
    if paths["json"].exists():
        try:
            merged = json.loads(paths["json"].read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{paths['json']} is not valid JSON ({err}); move it away to write a new report") from err
        if not isinstance(merged, dict):
            raise ValueError(f"{paths['json']} does not hold a JSON object; move it away to write a new report")
    merged.update(report)
    temporary = paths["json"].with_suffix(".json.tmp")
    temporary.write_text(json.dumps(merged, indent=2, sort_keys=False) + "\n")
    temporary.replace(paths["json"])
    paths["md"].write_text(format_markdown(merged))
    plot_report(merged, paths["png"])
    return paths
