"""Attacks by name, with the settings a robustness evaluation runs them at.

Each entry records what the report needs to reason about it: the norm of its threat model and its kind
(``'single-step'``, ``'iterative'``, ``'minimal'`` for minimal-perturbation attacks, ``'gradient-free'``).
"""
from __future__ import annotations

import inspect
import types
from typing import Callable, Mapping, NamedTuple

import jax

from andor_jax.attacks.apgd import apgd
from andor_jax.attacks.common import AttackResult, check_positive_int
from andor_jax.attacks.deepfool import deepfool
from andor_jax.attacks.fgsm import fgm, fgsm, ifgsm
from andor_jax.attacks.oracle import randomised
from andor_jax.attacks.pgd import pgd
from andor_jax.attacks.square import square
from andor_jax.attacks.targeted import apgd_targeted, fab_targeted, pgd_targeted

KINDS = ("single-step", "iterative", "minimal", "gradient-free")
# passed by run_attack itself (or, the target, by the targeted wrapper), never a setting
_CALL_ARGUMENTS = ("eps", "domain", "gradient_logits_fn", "target")


class AttackSpec(NamedTuple):
    """A registered attack ``fn(logits_fn, x, y, key, *, eps, domain, **settings)``.

    ``settings`` are only those that differ from the defaults of ``fn``'s signature, where every default is
    stated once (e.g. ``'pgd'`` is `andor_jax.attacks.pgd.pgd` with ``restarts=10``); `settings_of` gives all
    of them.
    """

    fn: Callable[..., AttackResult]
    settings: Mapping[str, object]
    description: str
    norm: str
    kind: str

    @property
    def uses_gradients(self) -> bool:
        return self.kind != "gradient-free"


def _spec(fn, description, norm, kind, /, **settings) -> AttackSpec:
    return AttackSpec(fn, types.MappingProxyType(settings), description, norm, kind)


ATTACKS: dict[str, AttackSpec] = {
    "fgsm": _spec(fgsm, "FGSM: one signed gradient step of length eps (Goodfellow et al. 2015)", "linf",
                  "single-step"),
    "fgm": _spec(fgm, "FGM: one L2-normalised gradient step of length eps", "l2", "single-step"),
    "ifgsm": _spec(ifgsm, "I-FGSM: signed steps of eps/steps from x, no random start (Kurakin et al. 2017)",
                   "linf", "iterative"),
    "pgd": _spec(pgd, "PGD L-inf: sign steps from uniform random starts, restarts (Madry et al. 2018)", "linf",
                 "iterative", restarts=10),
    "pgd-l2": _spec(pgd, "PGD L2: normalised gradient steps from uniform random starts, restarts", "l2",
                    "iterative", norm="l2", restarts=10),
    "pgd-margin": _spec(pgd, "PGD L-inf on the CW margin loss (Carlini & Wagner 2017)", "linf", "iterative",
                        restarts=10, loss="margin"),
    "pgd-adadelta": _spec(pgd, "PGD L-inf with AdaDelta steps (lr 1, rho 0.9, eps 1e-6) from uniform random "
                          "starts: the MWD paper's attack (Agrawal, de Alfaro & Helmbold)", "linf", "iterative",
                          steps=100, restarts=10, step_size=1.0, step_rule="adadelta"),
    "pgd-fontana": _spec(pgd, "PGD L-inf as the AND/OR paper's code evaluates: 20 sign steps of 0.03 from x, no "
                         "random start, no restarts (Fontana)", "linf", "iterative", steps=20, step_size=0.03,
                         random_start=False),
    "apgd-ce": _spec(apgd, "APGD L-inf on cross-entropy (Croce & Hein 2020)", "linf", "iterative"),
    "apgd-dlr": _spec(apgd, "APGD L-inf on the DLR loss (Croce & Hein 2020)", "linf", "iterative", loss="dlr"),
    "apgd-t": _spec(apgd_targeted, "APGD-T L-inf: APGD on the targeted DLR loss, one run per top class (Croce & "
                    "Hein 2020)", "linf", "iterative", loss="dlr"),
    "pgd-t": _spec(pgd_targeted, "PGD-T L-inf: PGD on the targeted margin z_t - z_y, one run per top class",
                   "linf", "iterative", steps=100, loss="margin"),
    "deepfool": _spec(deepfool, "DeepFool L-inf, clipped to the ball (Moosavi-Dezfooli et al. 2016)", "linf",
                      "minimal"),
    "deepfool-l2": _spec(deepfool, "DeepFool L2, clipped to the ball (Moosavi-Dezfooli et al. 2016)", "l2",
                         "minimal", norm="l2"),
    "fab-t": _spec(fab_targeted, "FAB-T L-inf: targeted fast adaptive boundary attack, one run per top class, "
                   "clipped to the ball (Croce & Hein 2020)", "linf", "minimal"),
    "square": _spec(square, "Square attack L-inf, gradient-free random search (Andriushchenko et al. 2020)",
                    "linf", "gradient-free"),
}


def register(name: str, spec: AttackSpec) -> None:
    """Makes ``spec`` available to `run_attack` and the report as ``name``."""
    if spec.norm not in ("linf", "l2") or spec.kind not in KINDS:
        raise ValueError(f"attack {name!r}: norm must be 'linf' or 'l2' and kind one of {KINDS}, "
                         f"got {spec.norm!r} and {spec.kind!r}")
    ATTACKS[name] = spec


def get_spec(name: str) -> AttackSpec:
    """The registered attack ``name``; ValueError listing the known names otherwise."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known attacks: {sorted(ATTACKS)}")
    return ATTACKS[name]


def _signature_settings(fn) -> dict:
    """The keyword-only settings of an attack function with their defaults (the call's own arguments
    excluded)."""
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _CALL_ARGUMENTS}


def settings_of(name: str, **overrides) -> dict:
    """Every setting ``name`` runs with: its function's defaults, updated by the registered settings, updated
    by ``overrides``, which must be settings the attack function takes (ValueError naming them otherwise)."""
    spec = get_spec(name)
    defaults = _signature_settings(spec.fn)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"attack {name!r} has no setting(s) {unknown}; its settings: {sorted(defaults)}")
    return {**defaults, **spec.settings, **overrides}


def run_attack(name: str, logits_fn, x: jax.Array, y: jax.Array, key: jax.Array, eps, domain=(0.0, 1.0),
               gradient_logits_fn=None, eot_draws: int | None = None, **overrides) -> AttackResult:
    """Runs the registered attack ``name`` at radius ``eps``; ``overrides`` replace its settings.

    ``gradient_logits_fn`` (BPDA, pseudo-gradients) is refused by gradient-free attacks.  With ``eot_draws``
    the model is randomised: ``logits_fn(x, key)`` and ``gradient_logits_fn(x, key)`` take a PRNG key, and
    every gradient of the attack averages ``eot_draws`` fresh draws, every decision takes one (Expectation
    over Transformation, `andor_jax.attacks.eot`).
    """
    spec = get_spec(name)
    settings = settings_of(name, **overrides)
    if gradient_logits_fn is not None and not spec.uses_gradients:
        raise ValueError(f"attack {name!r} is gradient-free: it takes no gradient_logits_fn")
    if eot_draws is not None:
        check_positive_int("eot_draws", eot_draws)
        if not callable(logits_fn):
            raise ValueError(f"logits_fn must be callable as logits_fn(x, key), got {type(logits_fn).__name__}")
        return spec.fn(randomised(logits_fn, eot_draws, gradient_logits_fn), x, y, key, eps=eps, domain=domain,
                       **settings)
    if gradient_logits_fn is not None:
        settings["gradient_logits_fn"] = gradient_logits_fn
    return spec.fn(logits_fn, x, y, key, eps=eps, domain=domain, **settings)
