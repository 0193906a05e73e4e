"""The supervised objective (``train.objective = "supervised"``): gradients of ``train.loss(model(x), y)``."""
from __future__ import annotations

import jax

from andor_jax.objectives import Objective, apply_model, stateless
from andor_jax.objectives.losses import accuracy, get_loss


def supervised_objective(model, loss) -> Objective:
    """Gradients of ``loss(model(x; train, rho), y)`` with respect to the parameters; no state.  Metrics:
    ``loss`` and ``accuracy`` of the batch (training mode: dropout on, batch statistics updated)."""

    def update(params, model_state, x, y, key, rho, step):
        def loss_fn(p):
            outputs, new_state = apply_model(model, p, model_state, x, train=True, rho=rho, key=key)
            return loss(outputs, y), (outputs, new_state)

        (value, (outputs, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, new_state, {"loss": value, "accuracy": accuracy(outputs, y)}

    return stateless(update)


def get_objective(model, train_config, steps_per_epoch: int = 1) -> Objective:
    return supervised_objective(model, get_loss(train_config.loss))
