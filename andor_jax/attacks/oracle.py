"""The model as an attack queries it: forward logits, loss gradients and logit Jacobians.

Every attack talks to an `Oracle`, never to ``logits_fn`` directly, so that two hooks apply to all of them:

- ``gradient_logits_fn``: the function that is differentiated.  Usually its forward values equal the
  model's and only its backward pass differs: BPDA (Athalye, Carlini & Wagner 2018, "Obfuscated gradients
  give a false sense of security": a differentiable approximation in the backward pass only) and the switch
  to the pseudo-gradients of MWD networks (Agrawal, de Alfaro & Helmbold).  It may also be a loss surface
  of its own (CARSO's mean logits over a few draws, where the model votes): the losses an attack compares
  are then the surface's, whose gradient it follows.  Decisions (is this point misclassified?) always use
  ``logits_fn`` itself.
- ``n_draws``: for a randomised model ``logits_fn(x, key)``, every gradient averages over ``n_draws`` fresh
  draws of its randomness (vmapped).  This is Expectation over Transformation (Athalye et al. 2018,
  "Synthesizing robust adversarial examples"): ``grad E_k[L(f(x, k), y)] = E_k[grad L(f(x, k), y)]``.
  A *decision* (the logits an attack judges a point by) is one draw of the real forward, the first of the
  query's draws, as AutoAttack's EOT judges by its last draw (Croce & Hein 2020): that is what the defended
  system answers on one query, and a point it misclassifies once is what the evaluation's worst case over
  verdict draws looks for.  With a separate ``gradient_logits_fn`` (CARSO's differentiable surfaces, each
  decision a vote of 1,500 draws) the real forward thus runs once per query, not ``n_draws`` times.

A deterministic model is the special case that ignores its key, so one attack implementation serves both.
Per-example gradients come from differentiating the batch's summed loss, which assumes that the model treats
examples independently (inference mode: no batch statistics).
Oracles are frozen dataclasses of functions: hashable, hence usable as static arguments of `jax.jit`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from andor_jax.attacks.losses import LossFn

LogitsFn = Callable[[jax.Array], jax.Array]
RandomisedLogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class _IgnoringKey:
    """``fn(x)`` seen as a randomised model ``(x, key) -> fn(x)``; equal wrappers of one ``fn`` compare
    equal, so jit caches keyed on an oracle survive re-wrapping."""

    fn: LogitsFn

    def __call__(self, x, key):
        del key
        return self.fn(x)


@dataclasses.dataclass(frozen=True)
class Oracle:
    """Answers an attack's queries about a (possibly randomised) model.

    Attributes:
      logits_fn: ``(x, key) -> logits`` of shape (batch, classes); decides misclassification.
      gradient_logits_fn: ``(x, key) -> logits`` differentiated instead of ``logits_fn`` (usually with the
        same forward values); None differentiates ``logits_fn``.
      n_draws: draws of the model's randomness averaged in every gradient (decisions take the first).
    """

    logits_fn: RandomisedLogitsFn
    gradient_logits_fn: RandomisedLogitsFn | None = None
    n_draws: int = 1

    def _draws(self, key: jax.Array) -> jax.Array:
        """The ``n_draws`` keys of a query (``key`` itself when n_draws = 1); the first one decides."""
        return key[None] if self.n_draws == 1 else jax.random.split(key, self.n_draws)

    @staticmethod
    def _per_draw(query, keys: jax.Array):
        """``query(k)`` for each of ``keys``, stacked on a leading axis (vmapped; one key: called directly)."""
        if keys.shape[0] == 1:
            return jax.tree.map(lambda answer: answer[None], query(keys[0]))
        return jax.vmap(query)(keys)

    def logits(self, x: jax.Array, key: jax.Array) -> jax.Array:
        """The decision at the batch ``x``: the logits of one draw of ``logits_fn``."""
        return self.logits_fn(x, self._draws(key)[0])

    def loss_and_grad(self, loss_fn: LossFn, x: jax.Array, y: jax.Array,
                      key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(logits, losses, grads)``: the decision's logits (batch, classes), and the per-example losses
        (batch,) of the differentiated function (``gradient_logits_fn`` when given) with the gradient of each
        with respect to its own input (batch, ...), both averaged over the draws.  The losses are the value
        of what the gradient ascends, which APGD's step-size rule and FAB's linearisation compare; for a
        surrogate with the model's forward values they are the model's."""
        keys = self._draws(key)
        differentiated = self.gradient_logits_fn or self.logits_fn

        def one_draw(k):
            def total_loss(inputs):
                logits = differentiated(inputs, k)
                losses = loss_fn(logits, y)
                return jnp.sum(losses), (logits, losses)

            (_, (logits, losses)), grads = jax.value_and_grad(total_loss, has_aux=True)(x)
            return logits, losses, grads

        logits, losses, grads = self._per_draw(one_draw, keys)
        decision = self.logits_fn(x, keys[0]) if self.gradient_logits_fn is not None else logits[0]
        return decision, jnp.mean(losses, axis=0), jnp.mean(grads, axis=0)

    def logits_and_jacobian(self, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(decision, logits, jacobian)``: the decision's logits (batch, classes), and the logits of the
        differentiated function with their Jacobian ``d z_c / d x`` of each example with respect to its own
        input, shape (classes, batch, ...), both averaged over the draws (one forward pass and a vmapped
        backward pass per class and draw): a linearisation, as DeepFool takes it, and the decision apart."""
        keys = self._draws(key)
        differentiated = self.gradient_logits_fn or self.logits_fn

        def one_draw(k):
            logits, pullback = jax.vjp(lambda inputs: differentiated(inputs, k), x)
            num_classes = logits.shape[-1]
            cotangents = jnp.broadcast_to(jnp.eye(num_classes, dtype=logits.dtype)[:, None, :],
                                          (num_classes,) + logits.shape)
            (jacobian,) = jax.vmap(pullback)(cotangents)
            return logits, jacobian

        logits, jacobian = self._per_draw(one_draw, keys)
        decision = self.logits_fn(x, keys[0]) if self.gradient_logits_fn is not None else logits[0]
        return decision, jnp.mean(logits, axis=0), jnp.mean(jacobian, axis=0)

    def num_classes(self, x: jax.Array, key: jax.Array) -> int:
        """The number of logits the model gives for the batch ``x`` (from shapes alone, nothing computed)."""
        shape = jax.eval_shape(self.logits_fn, x, key).shape
        if len(shape) != 2 or shape[0] != jnp.shape(x)[0]:
            raise ValueError(f"logits_fn must map a batch of {jnp.shape(x)[0]} inputs to logits of shape "
                             f"(batch, classes), got shape {shape}")
        return shape[1]


def deterministic(logits_fn: LogitsFn, gradient_logits_fn: LogitsFn | None = None) -> Oracle:
    """The oracle of a deterministic model ``logits_fn(x) -> logits``."""
    return Oracle(_IgnoringKey(logits_fn), None if gradient_logits_fn is None else _IgnoringKey(gradient_logits_fn))


def randomised(logits_fn: RandomisedLogitsFn, n_draws: int,
               gradient_logits_fn: RandomisedLogitsFn | None = None) -> Oracle:
    """The EOT oracle of a randomised model ``logits_fn(x, key) -> logits``: gradients averaged over
    ``n_draws`` draws, decisions by one draw."""
    return Oracle(logits_fn, gradient_logits_fn, n_draws)


def as_oracle(logits_fn: LogitsFn | Oracle, gradient_logits_fn: LogitsFn | None = None) -> Oracle:
    """``logits_fn`` as an oracle: an `Oracle` passes through (then ``gradient_logits_fn`` must be None)."""
    if isinstance(logits_fn, Oracle):
        if gradient_logits_fn is not None:
            raise ValueError("pass gradient_logits_fn to the Oracle itself, not beside it")
        return logits_fn
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable, got {type(logits_fn).__name__}")
    return deterministic(logits_fn, gradient_logits_fn)
