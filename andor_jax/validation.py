"""Checks of everything a user gives, made before any work is done (before data or a model is loaded).

A bad value found after a minute of loading, or never found (``--limit -5`` slicing ``x[:-5]``, ``epochs=-1``
leaving an untrained checkpoint), is a silently wrong result or a late traceback.  Every check here raises
`InvalidInput` (a ValueError) with one line naming the setting, its value and what it must be.

What is checked:

- numeric settings of a config (`check_config`): counts (epochs, batch sizes, steps, limits) are integers in
  their range, rates and mixes finite numbers in theirs; every other number of the config is finite, and a
  count-like integer (its name says steps, epochs, size, limit, ...) is never negative;
- eps grids (`parse_eps_grid`, `check_eps_grid`): finite, >= 0, increasing ranges, and within the input
  domain's diameter in the attack's norm (a larger ball holds every input);
- attack names and attack settings (`check_attacks`, `check_attack_settings`) against the registry;
- the model's definition, built without parameters or data (`check_config`, `check_model_sizes`,
  `check_model_arguments`): sizes >= 1, known architecture and optimiser, gradient tags (``pgd[psd]``) among
  the model's gradient modes, EOT draws only for randomised models;
- a training split that makes at least one batch (`check_batches`, once the data is read);
- paths (`check_writable_dir`, `check_trained_dir`, `check_data_dir`): what must be a directory is not a file,
  and what will be written is writable (tried, not guessed from permission bits).
"""
from __future__ import annotations

import math
import pathlib
import tempfile
from typing import Callable, Iterable, Mapping, Sequence

import ml_collections
import numpy as np


class InvalidInput(ValueError):
    """A value given by the user (flag, config key, path) that cannot be used; the message names it."""


# ------------------------------------------------------------------------------------------------- numbers

def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return _is_int(value) or (isinstance(value, (float, np.floating)))


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int, if it is an integer >= ``minimum``; InvalidInput otherwise."""
    if not _is_int(value) or value < minimum:
        raise InvalidInput(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_number(name: str, value, low: float = -math.inf, high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float, if it is a finite number in the interval ``low .. high`` (ends open as told)."""
    if not _is_number(value) or not math.isfinite(value):
        raise InvalidInput(f"{name} must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise InvalidInput(f"{name} must lie in {interval}, got {value!r}")
    return float(value)


def _optional(check: Callable) -> Callable:
    return lambda name, value: None if value is None else check(name, value)


def _count(minimum: int) -> Callable:
    return lambda name, value: check_int(name, value, minimum)


def _fraction(name, value):
    return check_number(name, value, 0.0, 1.0)


def _positive(name, value):
    return check_number(name, value, 0.0, low_open=True)


# key path -> check; keys a config does not have are skipped (configs differ in what they declare)
RULES: Mapping[str, Callable] = {
    "seed": _count(0),
    "data.limit_train": _count(0),
    "data.limit_test": _count(0),
    "train.epochs": _count(1),
    "train.batch_size": _count(1),
    "train.learning_rate": _positive,
    "train.momentum": lambda name, value: check_number(name, value, 0.0, 1.0, high_open=True),
    "train.max_grad_norm": _positive,
    "train.adadelta_rho": lambda name, value: check_number(name, value, 0.0, 1.0, high_open=True),
    "train.adadelta_eps": _positive,
    "train.rho": _fraction,
    "train.psd_mix": _fraction,
    "train.rho_final": _optional(_fraction),
    "train.psd_mix_final": _optional(_fraction),
    "train.num_devices": _optional(_count(1)),
    "train.checkpoint_every_steps": _count(1),
    "train.keep_checkpoints": _count(1),
    "train.log_every_steps": _count(1),
    "evaluate.limit": _count(0),
    "evaluate.batch_size": _count(1),
    "evaluate.eot_draws": _optional(_count(0)),  # 0: the model's default
    "evaluate.verdict_draws": _optional(_count(1)),
}

# an integer whose name holds one of these counts something: it is never negative
COUNT_WORDS = ("epoch", "step", "size", "limit", "draws", "every", "keep", "num_", "restarts", "queries", "iter")


def _leaves(config: ml_collections.ConfigDict, prefix: str = "") -> Iterable[tuple[str, object]]:
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def check_numbers(config: ml_collections.ConfigDict, prefix: str = "") -> None:
    """Applies `RULES` to the keys of ``config`` it has, then the generic checks to every other number:
    finite, and not negative if it counts something (`COUNT_WORDS`).  ``prefix`` is the path of ``config``
    inside the full config (``'evaluate.'`` for the evaluation block alone)."""
    for path, value in _leaves(config, prefix):
        name = f"config key {path}"
        if path in RULES:
            RULES[path](name, value)
        elif isinstance(value, (float, np.floating)) and not math.isfinite(value):
            raise InvalidInput(f"{name} must be a finite number, got {value!r}")
        elif _is_int(value) and value < 0 and any(word in path.rsplit(".", 1)[-1] for word in COUNT_WORDS):
            raise InvalidInput(f"{name} counts something and must be >= 0, got {value!r}")


# ---------------------------------------------------------------------------------------------------- eps

def number_range(start: float, stop: float, step: float) -> list[float]:
    """``start, start + step, ...`` up to ``stop`` included, never past it (``0.1:0.25:0.1`` is 0.1, 0.2),
    rounded to 10 decimals; InvalidInput for a non-finite value, a step <= 0 or a reversed range."""
    if not all(map(math.isfinite, (start, stop, step))):
        raise InvalidInput("start, stop and step must be finite")
    if step <= 0:
        raise InvalidInput(f"step must be > 0, got {step:g}")
    if stop < start:
        raise InvalidInput(f"the range is reversed: stop {stop:g} < start {start:g}")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    return [round(start + i * step, 10) for i in range(count)]


def parse_eps_grid(text: str, name: str = "--eps") -> list[float]:
    """``start:stop:step`` (stop included, step > 0, start <= stop) or ``a,b,c``; values finite and >= 0.

    Every error says what is wrong with the text: a reversed range is named as one, not as an empty grid.
    """
    text = str(text).strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise InvalidInput("a range has three parts, start:stop:step")
            values = number_range(*(float(part) for part in parts))
        else:
            values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise InvalidInput(f"cannot read eps grid {name} {text!r} (use start:stop:step or a,b,c): {err}") from None
    if not values:
        raise InvalidInput(f"eps grid {name} {text!r} lists no value")
    return check_eps_grid(values, name=name)


def check_eps_grid(values: Sequence[float], domain: Sequence[float] | None = None, norms: Iterable[str] = ("linf",),
                   input_size: int = 1, name: str = "eps") -> list[float]:
    """The grid as floats if every value is finite, >= 0, unique and, given ``domain``, at most the domain's
    diameter in each of ``norms`` (``hi - lo`` in L-inf, ``(hi - lo) sqrt(input_size)`` in L2)."""
    try:
        grid = [float(v) for v in values]
    except (TypeError, ValueError):
        raise InvalidInput(f"eps grid {name} must hold numbers, got {values!r}") from None
    if not grid:
        raise InvalidInput(f"eps grid {name} lists no value")
    for eps in grid:
        if not math.isfinite(eps) or eps < 0:
            raise InvalidInput(f"eps grid {name}: every eps must be a finite number >= 0, got {eps:g}")
    if len({f"{eps:g}" for eps in grid}) != len(grid):
        raise InvalidInput(f"eps grid {name} lists a value twice: {grid}")
    if domain is not None:
        low, high = (float(v) for v in domain)
        for norm in set(norms):
            diameter = (high - low) * (math.sqrt(input_size) if norm == "l2" else 1.0)
            if max(grid) > diameter:
                raise InvalidInput(f"eps grid {name}: eps {max(grid):g} exceeds the {norm} diameter {diameter:g} "
                                   f"of the input domain [{low:g}, {high:g}]: that ball holds every input")
    return grid


def eps_values(value, name: str) -> list[float]:
    """An eps grid given as text (``'0.1:0.3:0.1'``) or as a sequence of numbers."""
    if isinstance(value, str):
        return parse_eps_grid(value, name)
    if isinstance(value, (int, float)):
        return check_eps_grid([value], name=name)
    return check_eps_grid(list(value), name=name)


# ------------------------------------------------------------------------------------------------ attacks

def attack_names(value, name: str = "--attacks") -> list[str]:
    """Attack labels from ``'fgsm,pgd[psd]'`` or a sequence of them."""
    labels = [a.strip() for a in value.split(",")] if isinstance(value, str) else [str(a).strip() for a in value]
    labels = [a for a in labels if a]
    if not labels:
        raise InvalidInput(f"{name} names no attack")
    if len(set(labels)) != len(labels):
        raise InvalidInput(f"{name} names an attack twice: {labels}")
    return labels


def check_attacks(labels: Sequence[str], name: str = "--attacks") -> list[str]:
    """The norms of the attacks ``labels`` (``NAME`` or ``NAME[tag]``), if every name is registered."""
    from andor_jax.attacks import registry

    norms = []
    for label in labels:
        attack, tag = label, None
        if label.endswith("]") and "[" in label:
            attack, tag = label[:-1].split("[", 1)
            if not tag or "[" in tag:
                raise InvalidInput(f"{name}: {label!r} must look like NAME or NAME[gradient], e.g. pgd[psd]")
        if attack not in registry.ATTACKS:
            raise InvalidInput(f"{name}: unknown attack {attack!r}; known attacks: {', '.join(sorted(registry.ATTACKS))}")
        norms.append(registry.ATTACKS[attack].norm)
    return norms


def check_attack_settings(settings: Mapping[str, Mapping]) -> None:
    """Every ``{attack: {setting: value}}`` names a registered attack and one of its settings; integer
    settings (steps, restarts, queries, ...) are >= 1 and numbers are finite and >= 0."""
    from andor_jax.attacks import registry

    for attack, values in settings.items():
        if attack not in registry.ATTACKS:
            raise InvalidInput(f"attack setting {attack}.*: unknown attack {attack!r}; known attacks: "
                               f"{', '.join(sorted(registry.ATTACKS))}")
        try:
            registry.settings_of(attack, **dict(values))
        except ValueError as err:
            raise InvalidInput(f"attack setting: {err}") from None
        for setting, value in dict(values).items():
            label = f"attack setting {attack}.{setting}"
            if _is_int(value):
                check_int(label, value, 1)
            elif _is_number(value):
                check_number(label, value, 0.0)


# -------------------------------------------------------------------------------------------------- paths

def _probe_writable(directory: pathlib.Path, what: str) -> None:
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".andor-jax-write-test-"):
            pass
    except OSError as err:
        raise InvalidInput(f"{what} {directory} is not writable ({err.strerror or err})") from None


def _existing_ancestor(path: pathlib.Path) -> pathlib.Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_writable_dir(path, what: str = "work directory") -> pathlib.Path:
    """``path`` if it is a writable directory, or does not exist and can be created (its nearest existing
    ancestor is a writable directory).  Nothing is created."""
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidInput(f"{what} {path} is a file, not a directory")
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise InvalidInput(f"{what} {path} cannot be created: {ancestor} is a file")
    _probe_writable(ancestor, what if ancestor == path.absolute() else f"{what} {path}: its parent")
    return path


def check_trained_dir(path) -> pathlib.Path:
    """``path`` if it is a trained work directory (a directory holding ``config.json``)."""
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidInput(f"work directory {path} is a file, not a directory")
    if not (path / "config.json").is_file():
        raise InvalidInput(f"{path / 'config.json'} not found: train first with "
                           f"`andor-jax train --config NAME --workdir {path}`")
    return path


def check_data_dir(path) -> pathlib.Path:
    """``path`` if it is an existing directory (``--data-dir``)."""
    path = pathlib.Path(path).expanduser()
    if path.is_file():
        raise InvalidInput(f"--data-dir {path} is a file, not a directory of IDX files")
    if not path.is_dir():
        raise InvalidInput(f"--data-dir {path} does not exist")
    return path


def check_model_sizes(model: ml_collections.ConfigDict) -> None:
    """Every integer of a ``model`` block (widths, channels, kernel sizes, depths; inside tuples too) is
    >= 1: a layer of width 0 builds no network (its initialisation divides by its fan-in)."""
    for path, value in _leaves(model, "model."):
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if _is_int(item) and item < 1:
                raise InvalidInput(f"config key {path} holds {item!r}: the sizes of a model are integers >= 1")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every check of a config that trains: its numbers, model sizes, data domain and source, and its
    evaluation block (limit, eps grid against the domain, attack names and settings), which `andor-jax run`
    uses."""
    from andor_jax import data

    check_numbers(config)
    check_model_sizes(config.model)
    from andor_jax import models, train  # the definitions only (no parameters): unknown names fail here

    models.build_model(config.model)
    train.make_optimizer(config.train)
    domain = data.check_domain(config.data.domain)
    if config.data.get("source", "auto") not in data.SOURCES:
        raise InvalidInput(f"config key data.source: unknown source {config.data.source!r}; use one of "
                           f"{', '.join(data.SOURCES)}")
    if config.data.get("dataset") not in data.DATASETS:
        raise InvalidInput(f"config key data.dataset: unknown dataset {config.data.get('dataset')!r}; use one of "
                           f"{', '.join(sorted(data.DATASETS))}")
    evaluate = config.get("evaluate")
    if evaluate is not None:
        check_evaluate_block(evaluate, domain, input_size(config))


def input_size(config: ml_collections.ConfigDict) -> int:
    """Pixels per input of the config's data set (the L2 diameter of the domain grows with its root)."""
    from andor_jax import data

    spec = data.DATASETS.get(config.data.get("dataset"), data.MNIST)
    return int(np.prod(spec.image_shape))


def check_evaluate_block(evaluate: ml_collections.ConfigDict, domain, size: int) -> tuple[list[str], list[float]]:
    """The attack labels and eps grid of an ``evaluate`` block, after checking them and its numbers."""
    check_numbers(evaluate, "evaluate.")
    labels = attack_names(evaluate.attacks, "config key evaluate.attacks") if evaluate.get("attacks") else []
    norms = check_attacks(labels, "config key evaluate.attacks")
    grid = check_eps_grid(eps_values(evaluate.eps, "config key evaluate.eps"), domain, norms or ("linf",), size,
                          name="config key evaluate.eps")
    settings = evaluate.get("attack_settings")
    if settings:
        check_attack_settings(settings.to_dict() if hasattr(settings, "to_dict") else dict(settings))
    return labels, grid


def check_batches(examples: int, batch_size: int) -> None:
    """Raises unless ``examples`` training examples make at least one batch (batches of a training epoch are
    full ones): otherwise a training would run no step and leave an untrained checkpoint."""
    if examples < batch_size:
        raise InvalidInput(f"the training split holds {examples} examples, fewer than one batch "
                           f"(train.batch_size = {batch_size}): no training step would run")


def check_model_arguments(model_config: ml_collections.ConfigDict, labels: Sequence[str], *, psd: bool,
                          attack_model: str, draws: Mapping[str, int]) -> None:
    """What an evaluation asks of the model, checked on the model's definition (no parameters, no data):
    ``attack_model`` names one of its sub-networks, every gradient tag (``pgd[psd]``, ``psd`` for ``--psd``)
    is a gradient mode of the attacked network, and ``draws`` (flag -> value: EOT and verdict draws) are
    given only for a randomised model."""
    from andor_jax import models

    model = models.build_model(model_config)
    attacked = model
    if attack_model:
        if attack_model not in models.submodels(model):
            raise InvalidInput(f"evaluate.attack_model {attack_model!r} is not a sub-network of {type(model).__name__} "
                               f"(its sub-networks: {', '.join(models.submodels(model)) or 'none'})")
        attacked = getattr(model, attack_model)
    modes = models.gradient_modes(attacked)
    tags = {label[:-1].split("[", 1)[1] for label in labels if label.endswith("]") and "[" in label}
    for tag in sorted(tags | ({"psd"} if psd else set())):
        if tag not in modes:
            hint = "--psd and [psd] need a model with pseudo-gradients (MWD layers)" if tag == "psd" else ""
            raise InvalidInput(f"the attacks ask for the gradient mode {tag!r}, which {type(attacked).__name__} does "
                               f"not have (its gradient modes: {', '.join(modes)}){'; ' + hint if hint else ''}")
    given = {flag: value for flag, value in draws.items() if value}
    if given and not models.randomised(model):
        raise InvalidInput(f"{' and '.join(given)} apply to randomised models; {type(model).__name__} is deterministic")
