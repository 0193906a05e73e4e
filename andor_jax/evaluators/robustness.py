"""Running the attack suite on a set of examples, resumably, and returning every example's outcome.

For every chunk of examples, every attack of the suite and every eps, an example's outcome is whether the
model still classifies it correctly at the attack's point: attacks give upper bounds on robust accuracy
(Carlini et al. 2019, "On evaluating adversarial robustness"), and the per-example worst case over the suite
(`andor_jax.report.robustness_summary`) is the tightest of them.

Who is attacked, and who judges.  ``logits_fn`` is the model's real forward: it alone decides whether a point
is misclassified (the verdict).  The attacks query ``attack_logits_fn`` (by default the model itself; a
sub-network in the transfer setting, e.g. CARSO's classifier without its purifier) and differentiate it, or
the function of a gradient tag (``'pgd[psd]'``: pseudo-gradients, BPDA surrogates), which has the same
forward values.

Randomised models (`Randomness`).  Every function then takes a PRNG key, ``fn(x, key) -> logits``.  With
``mode='fresh'`` the attacks run with Expectation over Transformation (Athalye, Engstrom, Ilyas & Kwok 2018):
every gradient averages ``eot_draws`` fresh draws and every decision is one draw (`andor_jax.attacks.oracle`).
With ``mode='fixed'`` the attacks see one deterministic network, the model with its key held fixed for the
whole evaluation.  Either way the verdict on each point (the clean input and every attack's point) is the
worst case over ``verdict_draws`` independent forward passes: an example counts as correct only if every draw
classifies it correctly, so a defence that is right on some draws and wrong on others is broken (Athalye,
Carlini & Wagner 2018: one fresh draw would credit it with its luck).

Sequential suites (``sequential=True``, `andor_jax.attacks.suites`).  The attacks run in their order, and
each attacks only the examples that the clean check and every earlier attack left standing (AutoAttack's
order: Croce & Hein 2020), so that a later, costlier attack spends its budget on the hard examples alone.
Then ``correct[label]`` is cumulative: still standing after that attack and every earlier one.  Otherwise
every attack attacks every example and ``correct[label]`` is that attack's own verdict.

Nested balls (``nested_eps=True``).  The eps-balls around an input are nested, so a point that breaks it at
eps e breaks it at every larger eps too.  Each attack then runs over the eps grid in increasing order, and
an example that the attack (in a sequential suite: the attack or any before it) broke at the next smaller
eps is not attacked again: it counts as broken there, by the point already found, and is recorded as
*inherited* (`Outcomes.inherited`), so that the report can say which cells were not attacked.  The
convergence check inherits in the same way.

The convergence check (`Convergence`; Carlini et al. 2019: "more steps and restarts change nothing").  After
the attacks, the examples still standing at each eps are attacked once more by the strongest attack (by
default the one with restarts of the largest budget, steps x restarts x targets), with twice its steps and
restarts and a fresh key; ``check`` holds who is still standing after that, and the report's robust
accuracy is counted after it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from andor_jax.attacks import common, registry
from andor_jax.attacks.pgd import STEP_SIZE_FACTOR
from andor_jax.evaluators.examples import digest

LogitsFn = Callable[..., jax.Array]  # x -> logits, or (x, key) -> logits for a randomised model

RANDOMNESS_MODES = ("fresh", "fixed")
# streams of the evaluation key that no attack uses: the clean verdict of a chunk, the verdict draws of an
# attack's point, and the key a 'fixed' model is held at
CLEAN_STREAM, VERDICT_STREAM, FIXED_STREAM = 2**31 - 1, 2**31 - 2, 2**31 - 3
CHECK_STREAM = 2**31 - 4  # the convergence check's attack of a chunk
BUDGET_SETTINGS = ("steps", "restarts", "n_queries", "max_iter")  # scaled by the convergence check
CHECK_LABEL = "convergence check"  # the convergence check's entry of `Outcomes.inherited`


def eps_key(eps: float) -> str:
    """The string under which an eps is stored in a report: ``0.3 -> "0.3"``, ``0.1 + 0.2 -> "0.3"``."""
    return f"{float(eps):g}"


class Randomness(NamedTuple):
    """How a randomised model is evaluated (see the module docstring); the defaults are the library's.

    Attributes:
      eot_draws: draws averaged in every gradient of an attack (``mode='fresh'``); decisions take one.
      verdict_draws: independent forward passes that judge each point; one wrong draw breaks it.
      mode: ``'fresh'`` (attacks see fresh draws, EOT) or ``'fixed'`` (attacks see the model with its key held
        fixed; verdicts still use fresh draws).
    """

    eot_draws: int = 20
    verdict_draws: int = 10
    mode: str = "fresh"

    def check(self) -> None:
        common.check_positive_int("eot_draws", self.eot_draws)
        common.check_positive_int("verdict_draws", self.verdict_draws)
        common.check_choice("randomness", self.mode, RANDOMNESS_MODES)

    def record(self) -> dict:
        return {"randomised": True, "mode": self.mode,
                "eot_draws": self.eot_draws if self.mode == "fresh" else None,
                "verdict_draws": self.verdict_draws}


DETERMINISTIC = {"randomised": False, "mode": None, "eot_draws": None, "verdict_draws": 1}


class Convergence(NamedTuple):
    """The convergence check (see the module docstring).

    Attributes:
      threshold: the fraction of all examples that the check may break at an eps before the evaluation is
        flagged "not converged" (0.5%).
      attack: the label of the attack to repeat (``'apgd-t'``, ``'apgd-ce[psd]'``); ``''``: the attack of the
        run chosen by `check_run` (the largest budget among those with restarts).
      factor: the factor on that attack's steps and restarts (iterations, queries: `BUDGET_SETTINGS`).
    """

    threshold: float = 0.005
    attack: str = ""
    factor: int = 2

    def check(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"convergence threshold must be a fraction in [0, 1], got {self.threshold!r}")
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 2:
            raise ValueError(f"convergence factor must be an integer >= 2, got {self.factor!r}")


def budget(settings: Mapping) -> int | None:
    """An attack's budget per example: the product of its `BUDGET_SETTINGS` and its targets; None for an
    attack without any (single-step attacks), which the convergence check cannot scale."""
    present = [int(settings[name]) for name in BUDGET_SETTINGS if name in settings]
    return int(np.prod(present)) * int(settings.get("targets", 1)) if present else None


def scaled(settings: Mapping, factor: int) -> dict:
    """``settings`` with every `BUDGET_SETTINGS` entry multiplied by ``factor``."""
    return {name: value * factor for name, value in settings.items() if name in BUDGET_SETTINGS}


def check_run(runs, settings: Mapping[str, Mapping], convergence: Convergence) -> tuple[str, str, str | None] | None:
    """``(label, name, tag)`` the convergence check repeats: ``convergence.attack``, or the run of the largest
    `budget` among those with restarts (APGD, PGD, FAB and their targeted forms), else among all (None when
    no run has a budget); the first of equals."""
    if convergence.attack:
        return (convergence.attack, *split_label(convergence.attack))
    ranked = [(("restarts" in settings[name], budget(settings[name])), -index)
              for index, (_, name, _) in enumerate(runs) if budget(settings[name]) is not None]
    return runs[-max(ranked)[1]] if ranked else None


class Outcomes(NamedTuple):
    """Every example's outcome.

    Attributes:
      clean: (n,) bool, classified correctly (on every verdict draw, for a randomised model).
      correct: ``{label: {eps key: (n,) bool}}``, still classified correctly at that attack's point.
      settings: JSON-able record of how they were computed: threat model, every attack's settings,
        randomness, the attack model, batch size, key, seconds per attack.
      clean_per_draw: (n,) fraction of the verdict draws that classify the clean input correctly (randomised
        models), else None.
      check: ``{eps key: (n,) bool}``, still standing after every attack and the convergence check, or None
        when no check ran.
      inherited: with ``nested_eps``, ``{label or CHECK_LABEL: {eps key: (n,) bool}}``: counted broken at
        that eps, without being attacked there, by a point found at a smaller eps; else None.
    """

    clean: np.ndarray
    correct: dict[str, dict[str, np.ndarray]]
    settings: dict
    clean_per_draw: np.ndarray | None = None
    check: dict[str, np.ndarray] | None = None
    inherited: dict[str, dict[str, np.ndarray]] | None = None


def split_label(label: str) -> tuple[str, str | None]:
    """``'pgd[psd]' -> ('pgd', 'psd')``, ``'pgd' -> ('pgd', None)``."""
    if label.endswith("]") and "[" in label:
        name, tag = label[:-1].split("[", 1)
        return name, tag
    return label, None


def runs_of(attacks: Sequence[str], doubled_tags: Sequence[str],
            interleaved: bool = False) -> list[tuple[str, str, str | None]]:
    """``(label, attack name, gradient tag)`` for every entry of ``attacks`` (``'pgd[psd]'`` runs PGD on the
    ``'psd'`` gradient only), plus ``name[tag]`` for every plain gradient attack and every tag of
    ``doubled_tags`` (unless listed already): after all of ``attacks``, or, ``interleaved`` (a sequential
    suite), right after the attack they double."""
    def doubles(name):
        return [(f"{name}[{tag}]", name, tag) for tag in doubled_tags
                if "[" not in name and registry.get_spec(name).uses_gradients and f"{name}[{tag}]" not in attacks]

    if interleaved:
        return [run for label in attacks for run in [(label, *split_label(label)), *doubles(label)]]
    runs = [(label, *split_label(label)) for label in attacks]
    return runs + [run for tag in doubled_tags for label in attacks for run in doubles(label) if run[2] == tag]


def _settings_record(name: str, settings: Mapping, tag: str | None) -> dict:
    """Everything about one run, JSON-able: the attack, its threat model and every setting."""
    spec = registry.get_spec(name)
    record = {"attack": name, "description": spec.description, "norm": settings.get("norm", spec.norm),
              "kind": spec.kind, "gradient": "none" if not spec.uses_gradients else (tag or "true"),
              **settings}
    if "step_size" in record and record["step_size"] is None:  # PGD's default is relative to eps
        record["step_size"] = f"{STEP_SIZE_FACTOR} * eps / steps" if record["step_rule"] == "sign" else 1.0
    return record


def _validate(logits_fn, x, y, key, attacks, eps_grid, domain, batch_size, gradient_logits_fns, overrides,
              randomness):
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
    if randomness is not None:
        randomness.check()
    for tag, fn in gradient_logits_fns.items():
        if not isinstance(tag, str) or not tag or any(c in tag for c in "[]") or not callable(fn):
            raise ValueError(f"gradient_logits_fns must map plain names to callables, got {tag!r}: {fn!r}")
    for label in attacks:
        name, tag = split_label(label)
        if tag is not None and tag not in gradient_logits_fns:
            raise ValueError(f"attack {label!r} differentiates {tag!r}, which is not a gradient mode of the "
                             f"attacked model (its modes: {sorted(gradient_logits_fns) or 'none besides its own'})")
        if tag is not None and not registry.get_spec(name).uses_gradients:
            raise ValueError(f"attack {label!r}: {name!r} is gradient-free and takes no gradient tag")
    for name in overrides:
        registry.get_spec(name)  # a typo in an override's attack name is an error, not a silent no-op
    domain = common.check_domain(domain)
    common.check_batch(x, y, domain)
    if len(y) == 0:
        raise ValueError("x and y hold no examples")
    inputs = jax.ShapeDtypeStruct(x[:1].shape, x.dtype)
    shape = (jax.eval_shape(logits_fn, inputs) if randomness is None else jax.eval_shape(logits_fn, inputs, key)).shape
    common.check_labels(y, shape[-1])
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


def _fingerprint(model_digest, x, y, runs, keys, settings, overrides, domain, chunk, key, randomness,
                 attack_model, order) -> str:
    """What decides the outcome of every chunk: the model, the inputs and labels, and every setting."""
    described = {"model": model_digest, "data": digest((x, y)), "runs": runs, "eps": keys, "settings": settings,
                 "overrides": overrides, "domain": list(domain), "chunk": chunk,
                 "key": np.asarray(jax.random.key_data(key)).ravel().tolist(),
                 "randomness": None if randomness is None else list(randomness), "attack_model": attack_model,
                 "order": order}
    return digest(np.frombuffer(json.dumps(described, sort_keys=True, default=str).encode(), np.uint8))


def _judges(logits_fn: LogitsFn, randomness: Randomness | None):
    """``judge(x, y, key) -> (correct, fraction)``, jit-compiled: per example, whether every verdict draw
    classifies it correctly, and the fraction of draws that do (one forward pass for a deterministic model,
    `Randomness.verdict_draws` vmapped ones for a randomised model)."""
    if randomness is None:
        def judge(x, y, key):
            correct = jnp.argmax(logits_fn(x), axis=-1) == y
            return correct, correct.astype(jnp.float32)
    else:
        def judge(x, y, key):
            draws = jax.random.split(key, randomness.verdict_draws)
            correct = jax.vmap(lambda k: jnp.argmax(logits_fn(x, k), axis=-1) == y)(draws)
            return jnp.all(correct, axis=0), jnp.mean(correct, axis=0, dtype=jnp.float32)
    return jax.jit(judge)


def run(logits_fn: LogitsFn, x, y, *, attacks: Sequence[str], eps_grid: Sequence[float],
        domain=(0.0, 1.0), key: jax.Array, batch_size: int = 500,
        gradient_logits_fns: Mapping[str, LogitsFn] | None = None, doubled_tags: Sequence[str] | None = None,
        overrides: Mapping[str, Mapping] | None = None, progress: bool = True,
        progress_path: str | os.PathLike | None = None, model_digest: str | None = None,
        randomness: Randomness | None = None, attack_logits_fn: LogitsFn | None = None,
        attack_model: str = "", share=None, sequential: bool = False,
        convergence: Convergence | None = None, nested_eps: bool = False) -> Outcomes:
    """Attacks ``(x, y)`` with every attack at every eps and returns every example's outcome.

    Args:
      logits_fn: the model's real forward, ``x -> logits`` (batch, classes), or ``(x, key) -> logits`` when
        ``randomness`` is given; it alone judges.
      x: (n, ...) inputs inside ``domain``.
      y: (n,) integer labels.
      attacks: names from `andor_jax.attacks.ATTACKS`, e.g. ``['fgsm', 'pgd', 'apgd-ce', 'square']``; a name
        with a tag of ``gradient_logits_fns``, e.g. ``'apgd-dlr[psd]'``, runs on that gradient only.
      eps_grid: the radii to attack at.
      domain: the input box ``(lo, hi)``.
      key: PRNG key; each (chunk, attack, eps) gets its own key folded from it.
      batch_size: examples per chunk (memory: restarts x batch_size inputs, times the EOT draws, at once).
      gradient_logits_fns: functions to differentiate instead of the attacked one, by tag (same signature as
        ``logits_fn``, same forward values as the attacked function).
      doubled_tags: the tags whose doubling of every plain gradient attack is wanted (default: all of
        ``gradient_logits_fns``; ``()`` runs the tagged entries of ``attacks`` only).
      overrides: per-attack setting overrides, e.g. ``{'pgd': {'steps': 100, 'step_rule': 'adadelta'}}``.
      progress: show a progress bar over the chunks.
      progress_path: an ``.npz`` file that keeps the outcomes of the chunks done (`ChunkProgress`): an
        interrupted call with the same arguments resumes after the last chunk saved.  None keeps nothing.
      model_digest: what identifies the model (`digest` of its variables); required with ``progress_path``.
      randomness: None for a deterministic model, else how its randomness is handled (`Randomness`).
      attack_logits_fn: what the attacks query, same signature as ``logits_fn`` (transfer setting: a
        sub-network); None: ``logits_fn``.
      attack_model: the name of that sub-network, for the record.
      share: this process's `andor_jax.distributed.Share` of a multi-process run (None: one process): it
        attacks its own chunks (with their one-process keys, progress in its own file) and every process's
        outcomes are gathered before returning.
      sequential: run the attacks as a suite: in order, each on the examples still standing, the doubles
        of ``doubled_tags`` right after their attack (see the module docstring).
      convergence: run the convergence check so (`Convergence`); None: no check.
      nested_eps: an example broken at a smaller eps is not attacked again at a larger one (module
        docstring); which cells were inherited is in `Outcomes.inherited`.

    Returns:
      The `Outcomes`.
    """
    gradient_logits_fns = dict(gradient_logits_fns or {})
    overrides = {name: dict(values) for name, values in (overrides or {}).items()}
    x, y = np.asarray(x), np.asarray(y)
    domain, settings = _validate(logits_fn, x, y, key, list(attacks), list(eps_grid), domain, batch_size,
                                 gradient_logits_fns, overrides, randomness)
    runs = runs_of(attacks, list(gradient_logits_fns) if doubled_tags is None else list(doubled_tags),
                   interleaved=sequential)
    checked = _check_request(convergence, runs, settings, gradient_logits_fns, overrides)
    keys = [eps_key(eps) for eps in eps_grid]
    n = len(y)
    chunk = min(batch_size, n)
    clean_correct, clean_per_draw = np.zeros(n, bool), np.zeros(n, np.float32)
    correct = {label: {k: np.zeros(n, bool) for k in keys} for label, _, _ in runs}
    check = None if checked is None else {k: np.zeros(n, bool) for k in keys}
    inherited = None
    if nested_eps:
        inherited = {label: {k: np.zeros(n, bool) for k in keys}
                     for label in [label for label, _, _ in runs] + ([CHECK_LABEL] if checked else [])}
    eps_order = np.argsort(np.asarray(eps_grid, float), kind="stable") if nested_eps else np.arange(len(keys))
    attack_seconds = np.zeros(len(runs) + 1)  # the last: the convergence check
    if progress_path is not None and not model_digest:
        raise ValueError("progress_path needs model_digest (e.g. examples.digest(variables)), so that the saved "
                         "progress of another model is never resumed")
    fingerprint = _fingerprint(model_digest, x, y, runs, keys, settings, overrides, domain, chunk, key, randomness,
                               attack_model, [sequential, None if checked is None else list(checked), bool(nested_eps)])
    saved = ChunkProgress(progress_path if share is None else share.progress_path(progress_path), fingerprint,
                          {"clean": clean_correct, "clean_per_draw": clean_per_draw, "seconds": attack_seconds,
                           **{f"{label}@{k}": correct[label][k] for label, _, _ in runs for k in keys},
                           **{f"check@{k}": table for k, table in (check or {}).items()},
                           **{f"inherited:{label}@{k}": table for label, tables in (inherited or {}).items()
                              for k, table in tables.items()}})
    judge = _judges(logits_fn, randomness)
    attack, decoy = _attacker(logits_fn, attack_logits_fn, gradient_logits_fns, randomness, key, judge)

    batches = _batches(n, chunk)
    bar = tqdm(total=len(batches), initial=saved.chunks_done, desc="robustness", unit="batch", disable=not progress)
    for batch_index, (start, stop) in enumerate(batches[saved.chunks_done:], start=saved.chunks_done):
        if share is not None and not share.owns(batch_index):
            continue
        xb, yb = jnp.asarray(_padded(x[start:stop], chunk)), jnp.asarray(_padded(y[start:stop], chunk))
        size = stop - start
        batch_key = jax.random.fold_in(key, batch_index)
        clean, fraction = judge(xb, yb, jax.random.fold_in(batch_key, CLEAN_STREAM))
        clean_correct[start:stop], clean_per_draw[start:stop] = np.asarray(clean)[:size], np.asarray(fraction)[:size]
        clean_rows = np.asarray(clean) & (np.arange(chunk) < size)
        decoys = decoy(xb, jax.random.fold_in(batch_key, CLEAN_STREAM))
        standing = {k: clean_rows.copy() for k in keys}  # after the attacks so far
        for run_index, (label, name, tag) in enumerate(runs):
            bar.set_postfix_str(label)
            run_key = jax.random.fold_in(batch_key, run_index)
            below = None  # nested_eps: who stands after this attack at the next smaller eps
            for eps_index in eps_order:
                eps, k = eps_grid[eps_index], keys[eps_index]
                started = time.perf_counter()
                rows = standing[k] if sequential else np.ones(chunk, bool)
                handed_down = _handed_down(rows & clean_rows, below)
                still_correct = _attack_rows(attack, name, tag, xb, yb, rows & ~handed_down, decoys,
                                             jax.random.fold_in(run_key, eps_index), eps, domain,
                                             overrides.get(name, {})) & ~handed_down
                standing[k] &= still_correct
                correct[label][k][start:stop] = (standing[k] if sequential else still_correct)[:size]
                if inherited is not None:
                    inherited[label][k][start:stop] = handed_down[:size]
                    below = standing[k] if sequential else still_correct
                attack_seconds[run_index] += time.perf_counter() - started
        if checked is not None:
            label, name, tag, check_settings = checked
            bar.set_postfix_str(f"convergence check: {label}")
            below = None
            for eps_index in eps_order:
                eps, k = eps_grid[eps_index], keys[eps_index]
                started = time.perf_counter()
                check_key = jax.random.fold_in(jax.random.fold_in(batch_key, CHECK_STREAM), eps_index)
                handed_down = _handed_down(standing[k], below)
                standing[k] &= _attack_rows(attack, name, tag, xb, yb, standing[k] & ~handed_down, decoys, check_key,
                                            eps, domain, check_settings) & ~handed_down
                check[k][start:stop] = standing[k][:size]
                if inherited is not None:
                    inherited[CHECK_LABEL][k][start:stop] = handed_down[:size]
                    below = standing[k]
                attack_seconds[-1] += time.perf_counter() - started
        saved.save(batch_index + 1)
        bar.update()
    bar.close()
    if share is not None:
        share.finish(saved, progress_path, chunks=len(batches), chunk=chunk)
    norms = {settings[name].get("norm", registry.get_spec(name).norm) for _, name, _ in runs}
    record = {
        "threat_model": {
            # an L2 ball of radius eps lies inside the L-inf ball of radius eps, so L2 attacks are valid
            # (weaker) attacks under an L-inf threat model
            "norm": "linf" if "linf" in norms else "l2",
            "eps_grid": [float(eps) for eps in eps_grid],
            "domain": list(domain),
            "knowledge": ("white-box: the attacker knows the model and differentiates it end to end"
                          if attack_logits_fn is None else
                          f"transfer: the attacker differentiates the sub-network {attack_model!r} alone; "
                          "the whole model judges"),
        },
        "attacks": {label: _settings_record(name, settings[name], tag) for label, name, tag in runs},
        "randomness": dict(DETERMINISTIC) if randomness is None else randomness.record(),
        "attack_model": attack_model,
        "batch_size": int(chunk),
        # wall time of each attack over all chunks and eps, compilation included, summed over resumed runs
        "attack_seconds": {label: round(float(value), 1) for (label, _, _), value in zip(runs, attack_seconds)},
        "key": np.asarray(jax.random.key_data(key)).ravel().tolist(),
        "sequential": bool(sequential),
        "nested_eps": bool(nested_eps),
        "convergence": None if checked is None else {
            "attack": checked[0], "threshold": convergence.threshold, "factor": convergence.factor,
            "settings": _settings_record(checked[1], registry.settings_of(checked[1], **checked[3]), checked[2]),
            "seconds": round(float(attack_seconds[-1]), 1)},
    }
    return Outcomes(clean_correct, correct, record, None if randomness is None else clean_per_draw, check, inherited)


def _handed_down(rows: np.ndarray, below: np.ndarray | None) -> np.ndarray:
    """The ``rows`` already broken at the next smaller eps (``below``: who stood there; None: no smaller
    eps, or no nesting): broken here by the same point, without an attack."""
    return np.zeros_like(rows) if below is None else rows & ~below


def _check_request(convergence: Convergence | None, runs, settings, gradient_logits_fns, overrides):
    """``(label, name, tag, settings overrides)`` of the convergence check, or None (no check asked, or no
    attack with a budget to scale); ValueError for a bad request."""
    if convergence is None:
        return None
    convergence.check()
    if convergence.attack:
        name, tag = split_label(convergence.attack)
        registry.get_spec(name)
        if tag is not None and tag not in gradient_logits_fns:
            raise ValueError(f"the convergence check's attack {convergence.attack!r} differentiates {tag!r}, which is "
                             f"not a gradient mode of the attacked model ({sorted(gradient_logits_fns) or 'none'})")
        settings = {**settings, name: registry.settings_of(name, **overrides.get(name, {}))}
    chosen = check_run(runs, settings, convergence)
    if chosen is None:
        return None
    label, name, tag = chosen
    if budget(settings[name]) is None:
        raise ValueError(f"the convergence check's attack {label!r} has no steps, restarts or queries to scale")
    return label, name, tag, {**overrides.get(name, {}), **scaled(settings[name], convergence.factor)}


def _attack_rows(attack, name, tag, xb, yb, rows: np.ndarray, decoys, key, eps, domain, settings) -> np.ndarray:
    """(chunk,) bool: per row of the chunk, still correct at the attack's point, the attack aimed at the
    ``rows`` alone; rows not attacked count as correct (nothing broke them).

    The chunk keeps its shape, so that each attack compiles for the batch sizes of its own compaction only:
    the rows not attacked carry their ``decoys`` label (the attacked model's least likely class), so that the
    attack counts them broken at its clean check and drops them before its first iteration; their results
    are not read."""
    still = np.ones(len(rows), bool)
    if not rows.any():
        return still
    labels = yb if rows.all() else jnp.where(jnp.asarray(rows), yb, decoys)
    still[rows] = np.asarray(attack(name, tag, xb, labels, key, eps, domain, settings))[rows]
    return still


def _attacker(logits_fn, attack_logits_fn, gradient_logits_fns, randomness: Randomness | None, key, judge):
    """``attack(name, tag, x, y, key, eps, domain, overrides) -> (batch,) still correct``: runs one attack
    on one chunk and judges its points (see the module docstring); and ``decoy(x, key) -> (batch,)``, the
    least likely class of each input under the attacked function (`_attack_rows`).

    A deterministic model attacked directly keeps the attack's own verdict (a point it evaluated was
    misclassified: the same forward pass); otherwise the returned points are judged by ``judge``.  The
    functions handed to the attacks are built once here, so that every chunk reuses the compiled attacks.
    """
    attacked = logits_fn if attack_logits_fn is None else attack_logits_fn
    eot_draws = None
    if randomness is not None and randomness.mode == "fixed":
        fixed_key = jax.random.fold_in(key, FIXED_STREAM)
        attacked = _held_at(attacked, fixed_key)
        gradient_logits_fns = {tag: _held_at(fn, fixed_key) for tag, fn in gradient_logits_fns.items()}
    elif randomness is not None:
        eot_draws = randomness.eot_draws
    own_verdict = randomness is None and attack_logits_fn is None

    def attack(name, tag, xb, yb, attack_key, eps, domain, settings):
        result = registry.run_attack(name, attacked, xb, yb, attack_key, eps, domain,
                                     gradient_logits_fn=gradient_logits_fns.get(tag), eot_draws=eot_draws,
                                     **settings)
        if own_verdict:
            return ~np.asarray(result.broken)
        return np.asarray(judge(result.x_adv, yb, jax.random.fold_in(attack_key, VERDICT_STREAM))[0])

    if eot_draws is None:
        decoy = jax.jit(lambda x, key: jnp.argmin(attacked(x), axis=-1))
    else:
        decoy = jax.jit(lambda x, key: jnp.argmin(attacked(x, key), axis=-1))
    return attack, decoy


def _held_at(fn: LogitsFn, key: jax.Array) -> LogitsFn:
    """``fn(x, key)`` with its key held at ``key``: a deterministic ``x -> logits`` (built once per
    evaluation, so that the attacks' jit caches, keyed on the function, hold across chunks)."""
    return lambda x: fn(x, key)
