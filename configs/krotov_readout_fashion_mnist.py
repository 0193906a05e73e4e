"""``krotov_readout_mnist`` on Fashion-MNIST (Xiao et al. 2017; `apt-get install dataset-fashion-mnist` puts the
files in /usr/share/datasets/fashion-mnist: `--data-dir /usr/share/datasets/fashion-mnist`).

Variant ``small``: as ``krotov_readout_mnist:small``.
"""
from andor_jax.config import check_variant
from andor_jax.configs import krotov_readout_mnist

VARIANTS = krotov_readout_mnist.VARIANTS


def get_config(arg=None):
    check_variant(arg, VARIANTS)
    config = krotov_readout_mnist.get_config(arg)
    config.data.dataset = "fashion_mnist"
    config.train.init_from = "runs/krotov_fashion_mnist_small" if arg == "small" else "runs/krotov_fashion_mnist"
    return config
