"""A couple of minutes of `andor_lenet_mnist` (3 epochs of 2,000 training images; the embedded MNIST
sample works offline): a check that AND/OR training, evaluation and the report run end to end, not a
trained model.  At the paper's learning rate the AND/OR LeNet stays near chance for far longer than this:
its neurons start on the floor of the AND activation, and the paper trains 400 epochs."""
from andor_jax.configs.andor_lenet_mnist import get_config as full_config


def get_config():
    config = full_config()
    config.data.limit_train = 2000
    config.data.limit_test = 500
    config.train.epochs = 3
    config.train.checkpoint_every_steps = 50
    config.train.log_every_steps = 5
    config.evaluate.attacks = ["fgsm", "pgd"]
    config.evaluate.eps = [0.1, 0.2, 0.3]
    config.evaluate.limit = 200
    return config
