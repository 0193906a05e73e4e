"""Named attack suites, run as AutoAttack runs its versions (Croce & Hein 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks"): the attacks in order, each on
the examples that the earlier ones left standing (`andor_jax.evaluators.robustness.run` with
``sequential=True``), so that a suite costs little more than its first attack on an undefended model.

- ``standard``: APGD-CE, APGD-T (targeted DLR over the top 9 classes), FAB-T (top 9 classes) and Square with
  5,000 queries, one restart each: AutoAttack's standard version, which the field compares against.
- ``plus``: more restarts: APGD-CE and APGD-DLR with 5 restarts each, FAB-T with 5 restarts (standing in for
  AutoAttack's untargeted FAB with 5 restarts and its FAB-T), Square with 5,000 queries, then APGD-T.
- ``rand``: for randomised models: APGD-CE and APGD-DLR with EOT over 20 draws per query
  (`andor_jax.attacks.eot`), every verdict the worst case over independent draws.
- ``paper``: the attacks and settings of the architecture's own paper, as its config's ``evaluate`` block
  lists them (``evaluate.attacks``, ``evaluate.attack_settings``), in that order.

For a model with pseudo-gradients every gradient attack of a suite also runs on them (``NAME[psd]``, right
after the attack on true gradients).  A model that declares another ``attack_surface`` (`andor_jax.models`;
CARSO, whose vote has no useful gradient) has every untagged gradient attack, of a suite or of a list,
differentiate that surface instead (``NAME[mean_logits]``, `through_surface`).
"""
from __future__ import annotations

import types
from typing import Callable, Mapping, NamedTuple, Sequence

SUITE_NAMES = ("standard", "plus", "rand", "paper")
RAND_EOT_DRAWS = 20


class Suite(NamedTuple):
    """Attack names in the order they run and their settings, ``{name: {setting: value}}``."""

    attacks: tuple[str, ...]
    settings: Mapping[str, Mapping[str, object]]
    randomised_only: bool = False


SUITES: dict[str, Suite] = {
    "standard": Suite(("apgd-ce", "apgd-t", "fab-t", "square"),
                      types.MappingProxyType({"square": {"n_queries": 5000}})),
    "plus": Suite(("apgd-ce", "apgd-dlr", "fab-t", "square", "apgd-t"),
                  types.MappingProxyType({"apgd-ce": {"restarts": 5}, "apgd-dlr": {"restarts": 5},
                                          "fab-t": {"restarts": 5}, "square": {"n_queries": 5000}})),
    "rand": Suite(("apgd-ce", "apgd-dlr"), types.MappingProxyType({}), randomised_only=True),
}


def resolve(name: str, *, randomised: bool, paper_attacks: Sequence[str] = (),
            paper_settings: Mapping[str, Mapping] | None = None) -> tuple[list[str], dict[str, dict]]:
    """The attack labels and per-attack settings of the suite ``name``.

    Args:
      name: one of `SUITE_NAMES`.
      randomised: whether the evaluated model is randomised (``rand`` needs one).
      paper_attacks, paper_settings: the config's ``evaluate.attacks`` and ``evaluate.attack_settings``, the
        ``paper`` suite.

    Raises:
      ValueError: an unknown suite, ``rand`` for a deterministic model, or ``paper`` without attacks.
    """
    if name not in SUITE_NAMES:
        raise ValueError(f"unknown suite {name!r}; suites: {', '.join(SUITE_NAMES)}")
    if name == "paper":
        if not paper_attacks:
            raise ValueError("suite 'paper' takes the config's evaluate.attacks, which lists none")
        return list(paper_attacks), {attack: dict(values) for attack, values in (paper_settings or {}).items()}
    suite = SUITES[name]
    if suite.randomised_only and not randomised:
        raise ValueError(f"suite {name!r} is for randomised models (EOT over {RAND_EOT_DRAWS} draws); this model is "
                         "deterministic: use 'standard' or 'plus'")
    return list(suite.attacks), {attack: dict(values) for attack, values in suite.settings.items()}


def through_surface(labels: Sequence[str], surface: str, uses_gradients: Callable[[str], bool]) -> list[str]:
    """``labels`` with every untagged gradient attack (``uses_gradients(name)``) differentiating the model's
    attack surface, ``NAME[surface]``; unchanged when the surface is the true gradient."""
    if surface == "true":
        return list(labels)
    return [f"{label}[{surface}]" if "[" not in label and uses_gradients(label) else label for label in labels]
