"""A couple of minutes of `andor_lenet_fast` (3 epochs of 2,000 training images; the embedded MNIST sample
works offline): a check that AND/OR training, evaluation and the report run end to end, not a trained
model.  The health line printed at the start of every epoch shows the neurons in range (floor and
ceiling shares near 0), which `andor_lenet_mnist`'s PyTorch initialisation does not give.

Variant ``small`` (`andor_jax.config.small_variant`): 2 epochs of 500 images."""
from andor_jax.config import check_variant, small_variant
from andor_jax.configs.andor_lenet_fast import get_config as fast_config

VARIANTS = ("small",)


def get_config(arg=None):
    check_variant(arg, VARIANTS)
    config = fast_config()
    config.data.limit_train = 2000
    config.data.limit_test = 500
    config.train.epochs = 3
    config.train.checkpoint_every_steps = 50
    config.train.log_every_steps = 5
    config.train.andor.health_examples = 200
    config.evaluate.attacks = ["fgsm", "pgd"]
    config.evaluate.eps = [0.1, 0.2, 0.3]
    config.evaluate.limit = 200
    if arg == "small":
        small_variant(config)
        config.train.andor.health_examples = 100
    return config
