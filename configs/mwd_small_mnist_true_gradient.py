"""Ablation of `mwd_small_mnist` trained with true gradients (``train.psd_mix = 0``).  Paper: 82.40 %.

Variant ``small``: that of `mwd_small_mnist`, with true gradients."""
from andor_jax.configs import mwd_small_mnist

VARIANTS = mwd_small_mnist.VARIANTS


def get_config(arg=None):
    config = mwd_small_mnist.get_config(arg)
    config.train.psd_mix = 0.0
    return config
