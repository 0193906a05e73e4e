"""MWD network of Agrawal, de Alfaro & Helmbold (Table 1): 784-512-512-512-10 with layers U, NEG, U, NEG,
squared error on one-hot targets, pseudo-gradients (``train.psd_mix = 1``), AdaDelta lr 5 (its rho 0.9 and
eps 1e-6), batch 100, 30 epochs, seed 1, inputs in [0, 1]; after every step w is clipped to [0, 1] and u to
[0.01, 3].
Paper: 96.96 +- 0.14 % clean; certified above 80 % at eps 0.2.

Variant ``small`` (``mwd_mnist:small``): 784-32-32-32-10 for tests and notebooks (`config.small_variant`)."""
from andor_jax.config import base_config, check_variant, small_variant

VARIANTS = ("small",)


def get_config(arg=None):
    check_variant(arg, VARIANTS)
    config = base_config()
    config.model.name = "mwd"
    config.model.hidden = (512, 512, 512)
    config.model.kinds = ("u", "neg", "u", "neg")
    config.train.loss = "squared_error"
    config.train.optimizer = "adadelta"
    config.train.learning_rate = 5.0
    config.train.psd_mix = 1.0
    config.train.checkpoint_every_steps = 300
    config.evaluate.attacks = ["fgsm", "ifgsm", "pgd", "pgd-margin", "apgd-ce", "apgd-dlr", "square"]
    config.evaluate.pseudo_gradient_attacks = True
    config.evaluate.certify = True
    if arg == "small":
        config.model.hidden = (32, 32, 32)
        small_variant(config)
    return config
