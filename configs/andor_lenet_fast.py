"""The AND/OR LeNet of `andor_lenet_mnist`, trained so that it learns within a CPU session instead of the
paper's 400 epochs.  What defines the network and the defence is the author's: L1-projected AND/OR
layers with the AND activation, inputs in [-1, 1], cross-entropy mixed with loss2 (type B scrambles) by
the author's per-layer max-normalised rule.  Three choices differ; each was measured on 10,000 training
images (600 steps, test accuracy on 2,000 images):

* ``model.scale = 1`` instead of 10.  The L1 budget bounds the effective weights ``W / scale``, so the
  function class is the same; what changes is where training starts.  With the author's scale the
  PyTorch-style initialisation leaves every nics near 0, every neuron on the floor of the AND activation,
  and nothing learns in 600 steps (11.7%, also at 10x and 100x the learning rate); with scale 1 the
  projection at init puts each neuron at the budget and the first layer spans the activation's sensitive
  range.
* Adam (lr 1e-3) instead of SGD lr 5e-4 momentum 0.9: with scale 1, SGD at lr 5e-3 reached 21% with weight
  concentration and 51% without; Adam 58%, still rising.
* No weight concentration (Adam divides each gradient by its own running scale, which cancels the factor
  |w| but for its slow drift) and no loss2-only warm-up.  loss2 itself stays: without it (loss2 weight 0)
  the same 600 steps reach 38% instead of 58%.

Measured on full MNIST (2-core CPU, shared with other jobs): 30 epochs in 34 min, test accuracy 69.4%
(peak 71.5% at epoch 27), far from the paper's 96.4% after 400 epochs.
"""
from andor_jax.configs.andor_lenet_mnist import get_config as faithful_config


def get_config():
    config = faithful_config()
    config.model.scale = 1.0
    config.train.optimizer = "adam"
    config.train.learning_rate = 1e-3
    config.train.gradient_transforms = []
    config.train.andor.loss2_only_epochs = 0
    config.train.epochs = 30
    config.train.checkpoint_every_steps = 600
    return config
