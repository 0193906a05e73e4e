"""Small MWD network of the paper's pseudo- vs true-gradient comparison: 784-128-128-10 (paper: 95.00 %
with pseudo-gradients, 82.40 % with true gradients).  The paper does not give this net's layer kinds; we
alternate them and end with NEG, as in the 512x3 pattern: NEG, U, NEG.

Variant ``small``: 784-32-32-10 for tests and notebooks (`config.small_variant`)."""
from andor_jax.config import check_variant, small_variant
from andor_jax.configs.mwd_mnist import get_config as mwd_config

VARIANTS = ("small",)


def get_config(arg=None):
    check_variant(arg, VARIANTS)
    config = mwd_config()
    config.model.hidden = (128, 128)
    config.model.kinds = ("neg", "u", "neg")
    if arg == "small":
        config.model.hidden = (32, 32)
        small_variant(config)
    return config
