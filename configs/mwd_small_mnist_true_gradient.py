"""Ablation of `mwd_small_mnist` trained with true gradients (``train.psd_mix = 0``).  Paper: 82.40 %."""
from andor_jax.configs.mwd_small_mnist import get_config as small_config


def get_config():
    config = small_config()
    config.train.psd_mix = 0.0
    return config
