"""``backprop_2000_mnist`` on Fashion-MNIST (Xiao et al. 2017; `apt-get install dataset-fashion-mnist` puts the
files in /usr/share/datasets/fashion-mnist: `--data-dir /usr/share/datasets/fashion-mnist`).

Variant ``small``: as ``backprop_2000_mnist:small``.
"""
from andor_jax.config import check_variant
from andor_jax.configs import backprop_2000_mnist

VARIANTS = backprop_2000_mnist.VARIANTS


def get_config(arg=None):
    check_variant(arg, VARIANTS)
    config = backprop_2000_mnist.get_config(arg)
    config.data.dataset = "fashion_mnist"
    return config
