"""AND/OR LeNet of Fontana, "AND/OR trade-off in artificial neurons: impact on adversarial robustness"
(arXiv 2102.07389, sec. 5), trained as in the author's code: inputs rescaled to [-1, 1], L1-projected
AND/OR layers with nics = (W x + b) / 10 and the AND-type activation, cross-entropy mixed with loss2 (type B
scrambled datasets, author's per-layer gradient scaling), the first 20 epochs on loss2 alone, weight
concentration, SGD lr 5e-4 momentum 0.9, batch 200.

The paper trains 400 epochs (about 5 hours here at some 45 s per epoch on a 2-core CPU); this config runs
100.  Training is slow to start: at initialisation every nics is near 0, on the floor of the AND
activation, and weight concentration makes the updates multiplicative, so in 600 steps on 10,000 images
the network stays at chance (11.7%).  `andor_lenet_fast` trains the same network and defence to about 70%
in 30 epochs; its docstring lists the differences.

Paper (Table 1, MNIST test): clean .964; PGD at eps 0.1 / 0.2 / 0.3: .804 / .698 / .530 with the author's
weak PGD (20 steps, no restarts: the attack `pgd-fontana`); the project's attack suite is the measure
that counts.
"""
from andor_jax.andor_training import default_settings
from andor_jax.config import base_config


def get_config():
    config = base_config()
    config.data.domain = (-1.0, 1.0)
    config.data.flatten = False
    config.model.name = "andor_lenet"
    config.model.activation = "and"
    config.model.l1_rule = "author"
    config.model.scale = 10.0
    config.model.budget = 1.0
    config.train.epochs = 100
    config.train.batch_size = 200
    config.train.loss = "cross_entropy"
    config.train.objective = "andor"
    config.train.andor = default_settings()
    config.train.gradient_transforms = ["weight_concentration"]
    config.train.optimizer = "sgd"
    config.train.learning_rate = 5e-4
    config.train.momentum = 0.9
    config.train.checkpoint_every_steps = 600
    config.evaluate.eps = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    return config
