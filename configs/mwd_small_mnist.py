"""Small MWD network of the paper's pseudo- vs true-gradient comparison: 784-128-128-10 (paper: 95.00 %
with pseudo-gradients, 82.40 % with true gradients).  The paper does not give this net's layer kinds; we
alternate them and end with NEG, as in the 512x3 pattern: NEG, U, NEG."""
from andor_jax.configs.mwd_mnist import get_config as mwd_config


def get_config():
    config = mwd_config()
    config.model.hidden = (128, 128)
    config.model.kinds = ("neg", "u", "neg")
    return config
