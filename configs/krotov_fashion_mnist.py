"""``krotov_mnist`` on Fashion-MNIST (Xiao et al. 2017; `apt-get install dataset-fashion-mnist` puts the
files in /usr/share/datasets/fashion-mnist: `--data-dir /usr/share/datasets/fashion-mnist`).

**This setting collapses on Fashion-MNIST** (measured, full Fashion-MNIST, 100 epochs at lr 0.1): the layer
passes the acceptance test (2.6 % of units off norm) but 99.9 % of its units end as the same dark blob with
a negative current on every image (``inhibitory_fraction``), one unit wins nearly everything, and the
readout reaches 51.7 %.  k = 2 (Holzhausen et al.'s CIFAR-10 setting) only delays it: 0.2 % inhibitory after
10 epochs, 99.95 % after 57.  A fix (e.g. centring the images before the Lp scaling, a smaller Delta) is
not found yet.

Variant ``small``: as ``krotov_mnist:small``.
"""
from andor_jax.config import check_variant
from andor_jax.configs import krotov_mnist

VARIANTS = krotov_mnist.VARIANTS


def get_config(arg=None):
    check_variant(arg, VARIANTS)
    config = krotov_mnist.get_config(arg)
    config.data.dataset = "fashion_mnist"
    return config
