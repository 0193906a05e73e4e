"""``specreg_2000_mnist`` on Fashion-MNIST (``--data-dir /usr/share/datasets/fashion-mnist``).

Variant ``small``: as ``specreg_2000_mnist:small``.
"""
from andor_jax.config import check_variant
from andor_jax.configs import specreg_2000_mnist

VARIANTS = specreg_2000_mnist.VARIANTS


def get_config(arg=None):
    check_variant(arg, VARIANTS)
    config = specreg_2000_mnist.get_config(arg)
    config.data.dataset = "fashion_mnist"
    return config
