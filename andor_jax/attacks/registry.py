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
from andor_jax.attacks.common import AttackResult
from andor_jax.attacks.deepfool import deepfool
from andor_jax.attacks.fgsm import fgm, fgsm, ifgsm
from andor_jax.attacks.oracle import LogitsFn
from andor_jax.attacks.pgd import pgd
from andor_jax.attacks.square import square

KINDS = ("single-step", "iterative", "minimal", "gradient-free")
_CALL_ARGUMENTS = ("eps", "domain", "gradient_logits_fn")  # passed by run_attack itself, never a setting


class AttackSpec(NamedTuple):
    """A registered attack: ``fn(logits_fn, x, y, key, *, eps, domain, **defaults)``."""

    fn: Callable[..., AttackResult]
    defaults: Mapping[str, object]
    description: str
    norm: str
    kind: str

    @property
    def uses_gradients(self) -> bool:
        return self.kind != "gradient-free"


def _spec(fn, description, norm, kind, /, **defaults) -> AttackSpec:
    return AttackSpec(fn, types.MappingProxyType(defaults), description, norm, kind)


# how PGD spends its steps (the verdict does not depend on them): see `andor_jax.attacks.pgd.pgd`
PGD_SCHEDULING = {"parallel_restarts": None, "stop_when_all_broken": True}

ATTACKS: dict[str, AttackSpec] = {
    "fgsm": _spec(fgsm, "FGSM: one signed gradient step of length eps (Goodfellow et al. 2015)", "linf",
                  "single-step", loss="ce"),
    "fgm": _spec(fgm, "FGM: one L2-normalised gradient step of length eps", "l2", "single-step", norm="l2",
                 loss="ce"),
    "ifgsm": _spec(ifgsm, "I-FGSM: signed steps of eps/steps from x, no random start (Kurakin et al. 2017)",
                   "linf", "iterative", steps=10, loss="ce"),
    "pgd": _spec(pgd, "PGD L-inf: sign steps from uniform random starts, restarts (Madry et al. 2018)", "linf",
                 "iterative", norm="linf", steps=40, restarts=10, step_size=None, random_start=True, loss="ce",
                 step_rule="sign", **PGD_SCHEDULING),
    "pgd-l2": _spec(pgd, "PGD L2: normalised gradient steps from uniform random starts, restarts", "l2",
                    "iterative", norm="l2", steps=40, restarts=10, step_size=None, random_start=True, loss="ce",
                    step_rule="sign", **PGD_SCHEDULING),
    "pgd-margin": _spec(pgd, "PGD L-inf on the CW margin loss (Carlini & Wagner 2017)", "linf", "iterative",
                        norm="linf", steps=40, restarts=10, step_size=None, random_start=True, loss="margin",
                        step_rule="sign", **PGD_SCHEDULING),
    "pgd-adadelta": _spec(pgd, "PGD L-inf with AdaDelta steps (lr 1, rho 0.9, eps 1e-6) from uniform random "
                          "starts: the MWD paper's attack (Agrawal, de Alfaro & Helmbold)", "linf", "iterative",
                          norm="linf", steps=100, restarts=10, step_size=1.0, random_start=True, loss="ce",
                          step_rule="adadelta", **PGD_SCHEDULING),
    "pgd-fontana": _spec(pgd, "PGD L-inf as the AND/OR paper's code evaluates: 20 sign steps of 0.03 from x, no "
                         "random start, no restarts (Fontana)", "linf", "iterative", norm="linf", steps=20,
                         restarts=1, step_size=0.03, random_start=False, loss="ce", step_rule="sign", **PGD_SCHEDULING),
    "apgd-ce": _spec(apgd, "APGD L-inf on cross-entropy (Croce & Hein 2020)", "linf", "iterative", norm="linf",
                     steps=100, restarts=1, loss="ce", random_start=True, momentum=0.75, rho=0.75,
                     compact_every=10),
    "apgd-dlr": _spec(apgd, "APGD L-inf on the DLR loss (Croce & Hein 2020)", "linf", "iterative", norm="linf",
                      steps=100, restarts=1, loss="dlr", random_start=True, momentum=0.75, rho=0.75,
                      compact_every=10),
    "deepfool": _spec(deepfool, "DeepFool L-inf, clipped to the ball (Moosavi-Dezfooli et al. 2016)", "linf",
                      "minimal", norm="linf", max_iter=50, overshoot=0.02),
    "deepfool-l2": _spec(deepfool, "DeepFool L2, clipped to the ball (Moosavi-Dezfooli et al. 2016)", "l2",
                         "minimal", norm="l2", max_iter=50, overshoot=0.02),
    "square": _spec(square, "Square attack L-inf, gradient-free random search (Andriushchenko et al. 2020)",
                    "linf", "gradient-free", n_queries=1000, p_init=0.8, image_shape=None, compact_every=25),
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


def settings_of(name: str, **overrides) -> dict:
    """The settings ``name`` runs with: its defaults updated by ``overrides``, which must be settings the
    attack function takes (ValueError naming the known ones otherwise)."""
    spec = get_spec(name)
    parameters = inspect.signature(spec.fn).parameters
    known = sorted(p.name for p in parameters.values()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _CALL_ARGUMENTS)
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"attack {name!r} has no setting(s) {unknown}; its settings: {known}")
    return {**spec.defaults, **overrides}


def run_attack(name: str, logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, eps,
               domain=(0.0, 1.0), gradient_logits_fn: LogitsFn | None = None, **overrides) -> AttackResult:
    """Runs the registered attack ``name`` at radius ``eps``; ``overrides`` replace its default settings.

    ``gradient_logits_fn`` (BPDA, pseudo-gradients) is refused by gradient-free attacks.
    """
    spec = get_spec(name)
    settings = settings_of(name, **overrides)
    if gradient_logits_fn is not None:
        if not spec.uses_gradients:
            raise ValueError(f"attack {name!r} is gradient-free: it takes no gradient_logits_fn")
        settings["gradient_logits_fn"] = gradient_logits_fn
    return spec.fn(logits_fn, x, y, key, eps=eps, domain=domain, **settings)
