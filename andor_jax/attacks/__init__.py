"""Adversarial attacks: pure, jit-compiled functions ``attack(logits_fn, x, y, key, *, eps, domain, ...,
gradient_logits_fn=None) -> AttackResult(x_adv, broken)``.

Every returned point lies in the eps-ball around its input intersected with the input domain; restarts and
EOT draws are vmapped; ``gradient_logits_fn`` is what gets differentiated (BPDA, pseudo-gradients).
"""
from andor_jax.attacks.apgd import apgd
from andor_jax.attacks.common import AttackResult
from andor_jax.attacks.deepfool import deepfool
from andor_jax.attacks.eot import eot
from andor_jax.attacks.fgsm import fgm, fgsm, ifgsm
from andor_jax.attacks.losses import LOSSES
from andor_jax.attacks.oracle import Oracle, deterministic, randomised
from andor_jax.attacks.pgd import pgd
from andor_jax.attacks.registry import ATTACKS, AttackSpec, register, run_attack, settings_of
from andor_jax.attacks.square import square

__all__ = [
    "ATTACKS", "AttackResult", "AttackSpec", "LOSSES", "Oracle", "apgd", "deepfool", "deterministic", "eot",
    "fgm", "fgsm", "ifgsm", "pgd", "randomised", "register", "run_attack", "settings_of", "square",
]
