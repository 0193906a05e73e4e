"""The spectral regulariser of Nassar et al. ("On 1/n neural representation and robustness", NeurIPS 2020)
as an objective (``train.objective = "spectral"``): ``train.loss`` plus a penalty pulling the covariance
spectrum of one layer's outputs toward a power law ``n^-alpha``.

Once per epoch (``on_epoch``, on the host, float64) the eigenvectors ``V`` of the covariance of the layer's
outputs over the whole training set are computed, in descending order of their eigenvalues.  Each batch
then estimates the spectrum in that fixed basis, ``lambda = diag(V^T C_batch V)`` (`batch_eigenvalues`),
which is differentiable without differentiating an eigendecomposition, and adds (`penalty`)

    (beta / N) sum_{n > tau} [(lambda_n / gamma_n - 1)^2 + relu(lambda_n / gamma_n - 1)],
    gamma_n = lambda_tau (tau + 1)^alpha / (n + 1)^alpha

(0-based n, N the number of eigenvalues; the anchor ``lambda_tau`` enters as a constant, so the gradient
moves each ``lambda_n`` toward its target).  ``anchored = False`` is Holzhausen et al.'s variant,
``gamma_n = (n + 1)^-alpha`` (tau = 1 in their runs).

Settings, in the config's own block ``train.spectral``: ``layer`` (a path such as ``"layers_1"``; ``""``:
the first hidden layer, `andor_jax.spectrum.default_layer`), ``features`` (the layer's output width; 0:
read from its kernel), ``alpha`` (1.0 in every experiment of Nassar et al.), ``tau`` (10), ``beta`` (1, 2
or 5 there), ``anchored`` (True).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from andor_jax import models, spectrum
from andor_jax.layers.base import get_path, trace, walk
from andor_jax.layers.krotov import KrotovHopfield
from andor_jax.objectives import Objective, apply_model
from andor_jax.objectives.losses import accuracy, get_loss


def targets(eigenvalues: jax.Array, alpha: float, tau: int, anchored: bool = True) -> jax.Array:
    """``gamma_n = lambda_tau (tau + 1)^alpha / (n + 1)^alpha`` (0-based n), or ``(n + 1)^-alpha`` when not
    ``anchored``; a constant for differentiation."""
    n = jnp.arange(eigenvalues.shape[-1], dtype=eigenvalues.dtype)
    law = (n + 1) ** -alpha
    if not anchored:
        return law
    return jax.lax.stop_gradient(eigenvalues[tau]) * (tau + 1) ** alpha * law


def penalty(eigenvalues: jax.Array, *, alpha: float, tau: int, beta: float, anchored: bool = True) -> jax.Array:
    """``(beta / N) sum_{n > tau} [(lambda_n / gamma_n - 1)^2 + relu(lambda_n / gamma_n - 1)]`` (module
    docstring): zero exactly on the target spectrum, larger for a spectrum above it than below."""
    ratio = eigenvalues / targets(eigenvalues, alpha, tau, anchored) - 1.0
    beyond = jnp.arange(eigenvalues.shape[-1]) > tau
    return beta / eigenvalues.shape[-1] * jnp.sum(jnp.where(beyond, ratio ** 2 + jax.nn.relu(ratio), 0.0))


def batch_eigenvalues(features: jax.Array, basis: jax.Array) -> jax.Array:
    """``diag(V^T C V)`` for the batch covariance ``C`` of ``features`` (batch, d): the variance of the batch
    along each column of ``basis`` (d, d)."""
    centred = features - jnp.mean(features, axis=0)
    return jnp.sum((centred @ basis) ** 2, axis=0) / (features.shape[0] - 1)


def eigenbasis(cov: np.ndarray) -> np.ndarray:
    """The eigenvectors of a covariance matrix as columns, in descending order of eigenvalue (float64)."""
    _, vectors = np.linalg.eigh(np.asarray(cov, np.float64))
    return vectors[:, ::-1]


def layer_width(model, params, path) -> int:
    """The output width of the layer at ``path``, from its kernel: Krotov-Hopfield kernels are (units, in),
    the others (..., out)."""
    kernel = get_path(params, path)["kernel"]
    layer = {p: layer for p, layer, _ in walk(model)}.get(path)
    return int(kernel.shape[0] if isinstance(layer, KrotovHopfield) else kernel.shape[-1])


def get_objective(model, train_config, steps_per_epoch: int = 1) -> Objective:
    settings = train_config.spectral
    loss_fn = get_loss(train_config.loss)
    alpha, tau, beta, anchored = float(settings.alpha), int(settings.tau), float(settings.beta), bool(settings.anchored)
    layer_name = settings.layer

    def resolve(params) -> tuple[str, ...]:
        name = layer_name or spectrum.default_layer(model, {"params": params})
        if name == spectrum.INPUT:
            raise ValueError("objective 'spectral': the model has no hidden layer; set train.spectral.layer")
        return models.base.as_path(name)

    def width(params) -> int:
        return int(settings.features) or layer_width(model, params, resolve(params))

    def init(params, model_state):
        return {"basis": jnp.eye(width(params), dtype=jnp.float32)}

    def update(params, model_state, objective_state, x, y, key, rho, step):
        path = resolve(params)

        def total_loss(p):
            seen, new_state = apply_model(model, p, model_state, x, train=True, rho=rho, key=key,
                                          method=lambda module, x, **kw: trace(module, "__call__", x, paths=[path],
                                                                               **kw).outputs)
            features = seen[path].reshape(x.shape[0], -1)
            reg = penalty(batch_eigenvalues(features, objective_state["basis"]), alpha=alpha, tau=tau, beta=beta,
                          anchored=anchored)
            task = loss_fn(seen[()], y)
            return task + reg, (task, reg, seen[()], new_state)

        (value, (task, reg, outputs, new_state)), grads = jax.value_and_grad(total_loss, has_aux=True)(params)
        metrics = {"loss": value, "task_loss": task, "spectral_penalty": reg, "accuracy": accuracy(outputs, y)}
        return grads, new_state, objective_state, metrics

    def on_epoch(params, model_state, objective_state, dataset, epoch):
        path = resolve(params)
        variables = {"params": params, **model_state}
        cov = spectrum.covariance(spectrum.layer_batches(model, variables, dataset.x_train, "/".join(path)))
        if cov.shape[0] != objective_state["basis"].shape[0]:
            raise ValueError(f"objective 'spectral': layer {'/'.join(path)} has {cov.shape[0]} outputs, not "
                             f"{objective_state['basis'].shape[0]}: set train.spectral.features={cov.shape[0]}")
        return {"basis": jnp.asarray(eigenbasis(cov), jnp.float32)}

    return Objective(init, update, on_epoch)
