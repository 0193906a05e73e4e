"""The control of `andor_lenet_mnist` and `andor_lenet_fast`: the same LeNet (conv 12 k5, pool, conv 16 k5,
pool, fc 120, fc 84, and fc 10 on fc 120 and fc 84 side by side, ``model.skip``) with ordinary
convolutions, dense layers and ReLU, trained on cross-entropy alone (no projection, no loss2, no weight
concentration), inputs in [0, 1] as the defended configs (the author's code), SGD momentum 0.9, batch 200.
The learning rate is the usual 0.01 (the paper's 5e-4 applies to its max-normalised gradients); 20 epochs.

Until issue 14 the control had [-1, 1] inputs and no skip connection (README's first Table 1);
``--config.data.domain="(-1.0, 1.0)" --config.model.skip=False`` gives that network again.

Variant ``small`` (`andor_jax.config.small_variant`): 2 epochs of 500 images."""
from andor_jax.config import base_config, check_variant, small_variant

VARIANTS = ("small",)


def get_config(arg=None):
    check_variant(arg, VARIANTS)
    config = base_config()
    config.data.domain = (0.0, 1.0)
    config.data.flatten = False
    config.model.name = "lenet"
    config.model.activation = "relu"
    config.model.skip = True
    config.train.epochs = 20
    config.train.batch_size = 200
    config.train.loss = "cross_entropy"
    config.train.optimizer = "sgd"
    config.train.learning_rate = 0.01
    config.train.momentum = 0.9
    config.evaluate.eps = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    if arg == "small":
        small_variant(config)
    return config
