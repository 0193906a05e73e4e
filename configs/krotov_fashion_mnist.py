"""``krotov_mnist`` on Fashion-MNIST (Xiao et al. 2017; `apt-get install dataset-fashion-mnist` puts the
files in /usr/share/datasets/fashion-mnist: `--data-dir /usr/share/datasets/fashion-mnist`), with k = 2 (the
anti-Hebbian unit ranked second, as in Holzhausen et al.'s CIFAR-10 runs) instead of MNIST's 7.  With k = 7
(100 epochs at lr 0.1, full Fashion-MNIST, measured) the layer passed the acceptance test (2.6 % of units off
norm) but had collapsed: 99.9 % of the units were the same dark blob with a negative current on every image
(``inhibitory_fraction``), and the readout reached 51.7 %; after 10 epochs, 40 % were inhibitory at k = 7
(lr 0.04), 0.2 % at k = 2 (lr 0.1).

Variant ``small``: as ``krotov_mnist:small``.
"""
from andor_jax.config import check_variant
from andor_jax.configs import krotov_mnist

VARIANTS = krotov_mnist.VARIANTS


def get_config(arg=None):
    check_variant(arg, VARIANTS)
    config = krotov_mnist.get_config(arg)
    config.data.dataset = "fashion_mnist"
    config.train.krotov.k = 2
    return config
