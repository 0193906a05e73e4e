"""CARSO (Ballarin 2022, "CARSO: Counter-Adversarial Recall of Synthetic Observations", MSc thesis; facts
of the author's code in ``shared/notes/carso.md``): a classifier and a conditional VAE purifier.

Purifier (``Purifier``), with the sizes of the author's code for MNIST:

- input compressor ``784 -> 490 -> 196`` and representation compressor ``290 -> 174 -> 58``, each layer
  ``Dense -> BatchNorm -> LeakyReLU(0.01)`` and a final ``Dense -> BatchNorm -> sigmoid``;
- encoder on ``[196 + 58]``: ``Dense(199) -> LeakyReLU -> Dropout(0.0375) -> Dense(145) -> tanh``, then two
  heads of 36, the mean ``mu`` and the log-variance ``log s^2`` of ``q(z | x, r)``;
- decoder on ``[36 + 58]``: ``Dense(1244) -> LeakyReLU -> Dropout(0.075) -> Dense(1014) -> LeakyReLU ->
  Dropout(0.0375) -> Dense(784)``, the pixel logits (the image is their sigmoid).

Here ``r`` is the *representation* of the input: the post-Mish outputs of the classifier's three layers
(290 values), taken at ``representation_paths``.  Training (`andor_jax.objectives.cvae`) reconstructs the
clean image from a clean or attacked input, ``z = mu + s * e`` with ``e ~ N(0, I)`` (reparameterisation).

Inference (`Carso.__call__`) never uses the encoder: for an input ``x`` it draws ``n`` latents
``z_i ~ N(0, I)`` (the ``"sample"`` RNG stream), decodes each with the compressed representation of ``x``,
classifies every decoded image ``x_i`` with the same classifier (inference mode) and aggregates the
``n`` logit vectors ``l_i = f(x_i)`` into one (`AGGREGATIONS`):

- ``vote`` (the thesis, n = 1500): the mode of ``argmax l_i``, returned as logits ``log(v_c / n)`` with
  ``v_c`` the votes of class ``c`` (a class without votes gets half a vote, so the logits stay finite; the
  argmax, ties to the lowest class, is the mode);
- ``mean_logits``: ``(1/n) sum_i l_i``;
- ``mean_softmax``: ``log((1/n) sum_i softmax(l_i))``, whose softmax is the mean probability;
- ``doubly_exponential`` (the 2025 code's default): ``p = softmax_c(S)``, ``S_c = sum_i exp(l_ic)``,
  returned as ``log(p_c / (1 - p_c)) = S_c - log sum_{k != c} exp(S_k)`` (computed in that stable form).

Draws and examples are processed in chunks (``draws_per_chunk`` latents of ``examples_per_chunk``
inputs at a time, the draws vmapped inside a chunk, running sums across chunks), so memory is bounded by
one chunk whatever ``n`` and the batch.

Gradient modes (``models.logits(..., gradient=mode)``): ``true`` differentiates the model's own forward
(for ``vote`` its gradient is zero almost everywhere); a differentiable aggregation's name
(``mean_logits``, ``mean_softmax``, ``doubly_exponential``) is that aggregation over ``gradient_draws``
draws: its values differ from the vote's, it is the loss surface of an end-to-end attack (gradients through
the representation, the compressor, the decoder and the classifier; the draws are reparameterised, so a
fixed key gives a deterministic network), and decisions always use the real forward.  Unlike a
Sequential's ``psd`` mode, these surfaces do not share the vote's forward values (a straight-through vote
would give the cross-entropy a gradient of ``votes/n - onehot``, zero once every draw votes for the label).

The engine's per-epoch metric (``test_monitor_accuracy``) is `Carso.monitor`, one decode at ``z = 0``: a
cheap, deterministic monitor of the purifier, not CARSO's prediction; calling the model without a
``"sample"`` stream is an error.  Inputs are flattened images (``data.flatten = True``).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from andor_jax.layers import Activation, BatchNorm, Dense, Dropout
from andor_jax.models.base import Model, Sequential, representation

LEAKY_SLOPE = 0.01  # the code's LeakyReLU (the thesis text says 0.1); jax.nn.leaky_relu's default
BATCH_NORM_MOMENTUM = 0.9  # PyTorch's default momentum 0.1


def vote(counts: jax.Array, n: int) -> jax.Array:
    """Logits ``log(v_c / n)`` of vote counts (a class without votes counts half a vote)."""
    return jnp.log(jnp.maximum(counts, 0.5) / n)


def doubly_exponential(log_sum_exp: jax.Array) -> jax.Array:
    """``log(p / (1 - p))`` with ``p = softmax(S)``, ``S = exp(log_sum_exp)``, from ``a = log_sum_exp``
    (``a_c = log sum_i exp(l_ic)``): ``S_c - logsumexp_{k != c} S_k``."""
    total = jnp.exp(log_sum_exp)
    classes = total.shape[-1]
    others = jnp.where(jnp.eye(classes, dtype=bool), -jnp.inf, total[..., None, :])  # (..., c, k)
    return total - jax.nn.logsumexp(others, axis=-1)


class _Aggregation:
    """A running statistic of the draws' logits: ``init(shape)``, ``add(state, logits)`` for a chunk of
    draws (draws, batch, classes), ``finish(state, n) -> logits`` (batch, classes)."""

    def __init__(self, init, add, finish):
        self.init, self.add, self.finish = init, add, finish


def _zeros(shape):
    return jnp.zeros(shape)


AGGREGATIONS: dict[str, _Aggregation] = {
    "vote": _Aggregation(
        _zeros,
        lambda s, l: s + jnp.sum(jax.nn.one_hot(jnp.argmax(l, -1), l.shape[-1], dtype=l.dtype), 0),
        vote),
    "mean_logits": _Aggregation(_zeros, lambda s, l: s + jnp.sum(l, 0), lambda s, n: s / n),
    "mean_softmax": _Aggregation(_zeros, lambda s, l: s + jnp.sum(jax.nn.softmax(l, -1), 0),
                                 lambda s, n: jnp.log(s / n)),
    "doubly_exponential": _Aggregation(
        lambda shape: jnp.full(shape, -jnp.inf),
        lambda s, l: jnp.logaddexp(s, jax.nn.logsumexp(l, 0)),
        lambda s, n: doubly_exponential(s)),
}
DIFFERENTIABLE = ("mean_logits", "mean_softmax", "doubly_exponential")


def _stack(widths: Sequence[int], *, hidden: str, final: str | None, batch_norm: bool,
           dropouts: Sequence[float] = ()) -> tuple:
    """``Dense -> [BatchNorm] -> hidden activation -> [Dropout]`` per width but the last, then the last
    ``Dense -> [BatchNorm] -> final activation`` (None: the last Dense alone)."""
    layers: list[nn.Module] = []
    for index, width in enumerate(widths):
        last = index == len(widths) - 1
        layers.append(Dense(width))
        if batch_norm and not (last and final is None):
            layers.append(BatchNorm(momentum=BATCH_NORM_MOMENTUM))
        if not last:
            layers.append(Activation(hidden))
            if index < len(dropouts) and dropouts[index]:
                layers.append(Dropout(dropouts[index]))
        elif final is not None:
            layers.append(Activation(final))
    return tuple(layers)


def representation_compressor_layers(purifier: "Purifier") -> tuple:
    """The layers of the representation compressor of ``purifier`` (its settings only)."""
    return _stack(purifier.representation_widths, hidden="leaky_relu", final="sigmoid", batch_norm=True)


def decoder_layers(purifier: "Purifier") -> tuple:
    """The layers of the decoder of ``purifier`` (its settings only): pixel logits, no final activation."""
    return _stack((*purifier.decoder_widths, purifier.image_size), hidden="leaky_relu", final=None,
                  batch_norm=False, dropouts=purifier.decoder_dropouts)


class Purifier(nn.Module):
    """The conditional VAE of CARSO with its two compressors (sizes in the module docstring)."""

    input_widths: Sequence[int] = (490, 196)
    representation_widths: Sequence[int] = (174, 58)
    encoder_widths: Sequence[int] = (199, 145)
    latent: int = 36
    decoder_widths: Sequence[int] = (1244, 1014)
    image_size: int = 784
    encoder_dropout: float = 0.0375
    decoder_dropouts: Sequence[float] = (0.075, 0.0375)

    def setup(self):
        self.input_compressor = Sequential(_stack(self.input_widths, hidden="leaky_relu", final="sigmoid",
                                                  batch_norm=True))
        self.representation_compressor = Sequential(representation_compressor_layers(self))
        self.encoder = Sequential(_stack(self.encoder_widths, hidden="leaky_relu", final="tanh", batch_norm=False,
                                         dropouts=(self.encoder_dropout,)))
        self.mean_head = Dense(self.latent)
        self.log_variance_head = Dense(self.latent)
        self.decoder = Sequential(decoder_layers(self))

    def condition(self, representation: jax.Array, *, train: bool = False) -> jax.Array:
        """The compressed representation (batch, 58)."""
        return self.representation_compressor(representation, train=train)

    def encode(self, x: jax.Array, condition: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """``(mu, log s^2)`` of ``q(z | x, r)``, each (batch, latent)."""
        h = self.encoder(jnp.concatenate([self.input_compressor(x, train=train), condition], -1), train=train)
        return self.mean_head(h), self.log_variance_head(h)

    def decode(self, z: jax.Array, condition: jax.Array, *, train: bool = False) -> jax.Array:
        """Pixel logits (batch, 784) of the image decoded from ``z`` under ``condition``."""
        return self.decoder(jnp.concatenate([z, condition], -1), train=train)

    def __call__(self, x: jax.Array, representation: jax.Array, *, train: bool = False):
        """Reconstruction of ``x``: ``(pixel logits, mu, log s^2)`` with ``z = mu + s e``, ``e`` from the
        ``"sample"`` stream."""
        condition = self.condition(representation, train=train)
        mu, log_variance = self.encode(x, condition, train=train)
        if self.is_initializing():  # parameters only: no "sample" stream is needed to create them
            noise = jnp.zeros_like(mu)
        else:
            noise = jax.random.normal(self.make_rng("sample"), mu.shape, mu.dtype)
        return self.decode(mu + jnp.exp(0.5 * log_variance) * noise, condition, train=train), mu, log_variance


class Carso(Model):
    """Classifier + purifier; params ``{"classifier": ..., "purifier": ...}`` (see the module docstring).

    The classifier always runs in inference mode (running BatchNorm statistics, no dropout), in training
    too: only the purifier trains (``train.trainable = ["purifier"]``).
    """

    classifier: nn.Module
    purifier: nn.Module
    representation_paths: Sequence[str]
    n_draws: int = 1500
    aggregation: str = "vote"
    gradient_draws: int = 8
    draws_per_chunk: int = 250
    examples_per_chunk: int = 100

    randomised = True
    submodels = ("classifier", "purifier")
    gradient_modes = ("true", *DIFFERENTIABLE)

    @property
    def attack_surface(self) -> str:
        """The surface untagged gradient attacks differentiate: the aggregation itself over ``gradient_draws``
        draws when it is differentiable, else ``mean_logits`` (the vote's gradient is zero almost everywhere)."""
        return self.aggregation if self.aggregation in DIFFERENTIABLE else "mean_logits"

    def _initialise(self, x: jax.Array) -> jax.Array:
        """Creates every parameter (Flax creates them on first use); returns the classifier's logits of
        ``x`` (the shape of the model's output)."""
        logits = self.classifier(x)
        self.purifier(x, self._representation(x))
        return logits

    def _representation(self, x: jax.Array) -> jax.Array:
        classifier, variables = self.classifier.unbind()
        return representation(classifier, variables, x, self.representation_paths)

    def reconstruct(self, x: jax.Array, *, train: bool = False):
        """``(pixel logits, mu, log s^2)``: the purifier's reconstruction of ``x`` conditioned on the
        classifier's representation of ``x`` (the training forward of `andor_jax.objectives.cvae`)."""
        if self.is_initializing():
            self._initialise(x)
        return self.purifier(x, self._representation(x), train=train)

    def monitor(self, x: jax.Array) -> jax.Array:
        """The classifier's logits of the image decoded from ``z = 0`` (the prior's mode): a cheap,
        deterministic monitor of the purifier for the engine's per-epoch metric (`models.monitor_logits`).
        Not CARSO's prediction, which votes over ``n_draws`` draws."""
        condition = self.purifier.condition(self._representation(x))
        pixels = self.purifier.decode(jnp.zeros((x.shape[0], self.purifier.latent), x.dtype), condition)
        return self.classifier(jax.nn.sigmoid(pixels).reshape(x.shape))

    def logits(self, x: jax.Array, *, gradient: str | None = None) -> jax.Array:
        """The model protocol's forward (`andor_jax.models.logits`): the same as calling the model."""
        return self(x, gradient=gradient)

    def __call__(self, x: jax.Array, *, train: bool = False, rho=None, gradient: str | None = None) -> jax.Array:
        """Aggregated logits (batch, classes) over the draws: ``aggregation`` over ``n_draws`` draws, or for
        a differentiable gradient mode that aggregation over ``gradient_draws`` (see the module docstring).
        ``train`` and ``rho`` are accepted for the layer protocol; inference never trains."""
        if self.is_initializing():
            return self._initialise(x)
        if not self.has_rng("sample"):
            raise ValueError("CARSO draws latents: call it with a 'sample' RNG stream "
                             "(andor_jax.models.logits(model, variables, x, key=...))")
        aggregation, draws = self.aggregation, self.n_draws
        if gradient not in (None, "true"):
            if gradient not in DIFFERENTIABLE:
                raise ValueError(f"unknown gradient mode {gradient!r} for CARSO; modes: {self.gradient_modes}")
            aggregation, draws = gradient, self.gradient_draws
        classifier, classifier_variables = self.classifier.unbind()
        purifier, purifier_variables = self.purifier.unbind()
        return predict(classifier, classifier_variables, purifier, purifier_variables, x, self.make_rng("sample"),
                       paths=tuple(self.representation_paths), n_draws=draws, aggregation=aggregation,
                       draws_per_chunk=self.draws_per_chunk, examples_per_chunk=self.examples_per_chunk)


def predict(classifier: nn.Module, classifier_variables, purifier: nn.Module, purifier_variables, x: jax.Array,
            key: jax.Array, *, paths: Sequence[str], n_draws: int, aggregation: str, draws_per_chunk: int,
            examples_per_chunk: int) -> jax.Array:
    """CARSO's aggregated logits for the batch ``x`` (see the module docstring), chunked.

    The batch is padded to a multiple of ``examples_per_chunk`` and mapped over chunks of examples
    (`jax.lax.map`); in each, ``n_draws`` latents are drawn in chunks of ``draws_per_chunk`` (the draws of
    a chunk vmapped; `jax.lax.scan` over chunks, a last smaller chunk for the remainder), and the running
    statistic of the aggregation is updated.  Draw ``i`` of example ``j`` uses ``fold_in(fold_in(key, j), i
    // draws_per_chunk)``, so an example's draws do not depend on the rest of the batch.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {sorted(AGGREGATIONS)}")
    if n_draws < 1 or draws_per_chunk < 1 or examples_per_chunk < 1:
        raise ValueError(f"n_draws ({n_draws}), draws_per_chunk ({draws_per_chunk}) and examples_per_chunk "
                         f"({examples_per_chunk}) must be >= 1")
    rule = AGGREGATIONS[aggregation]
    batch = x.shape[0]
    chunk = min(examples_per_chunk, batch)
    padded = -(-batch // chunk) * chunk
    x_padded = jnp.concatenate([x, jnp.zeros((padded - batch, *x.shape[1:]), x.dtype)]) if padded > batch else x
    example_keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(padded))
    draws_chunk = min(draws_per_chunk, n_draws)
    full_chunks, remainder = divmod(n_draws, draws_chunk)

    def classify(images):
        return classifier.apply(classifier_variables, images, train=False)

    def one_chunk_of_examples(inputs):
        xs, keys = inputs
        condition = purifier.apply(purifier_variables, representation(classifier, classifier_variables, xs, paths),
                                   method=Purifier.condition)
        latent = purifier.latent

        def logits_of_draws(chunk_index, count):
            z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, chunk_index), (count, latent)))(keys)
            z = jnp.swapaxes(z, 0, 1)  # (count, examples, latent)

            def one_draw(z_draw):
                pixels = purifier.apply(purifier_variables, z_draw, condition, method=Purifier.decode)
                return classify(jax.nn.sigmoid(pixels))

            return jax.vmap(one_draw)(z)  # (count, examples, classes)

        num_classes = jax.eval_shape(classify, xs).shape[-1]
        state = rule.init((xs.shape[0], num_classes))

        def scan_step(state, chunk_index):
            return rule.add(state, logits_of_draws(chunk_index, draws_chunk)), None

        state, _ = jax.lax.scan(scan_step, state, jnp.arange(full_chunks))
        if remainder:
            state = rule.add(state, logits_of_draws(full_chunks, remainder))
        return rule.finish(state, n_draws)

    chunks = (x_padded.reshape(padded // chunk, chunk, *x.shape[1:]),
              example_keys.reshape(padded // chunk, chunk, *example_keys.shape[1:]))
    logits = jax.lax.map(one_chunk_of_examples, chunks)
    return logits.reshape(padded, -1)[:batch]


# How the trained model infers, not what it trained: outside the checkpoint's fingerprint, and settable by
# ``andor-jax evaluate --config.model.n_draws=100`` (`andor_jax.models.base`).
INFERENCE_SETTINGS = ("n_draws", "aggregation", "gradient_draws", "draws_per_chunk", "examples_per_chunk")


def get_model(classifier: dict | None = None, purifier: dict | None = None,
              representation_paths: Sequence[str] | None = None, **settings) -> Carso:
    """CARSO on the thesis's classifier (`andor_jax.models.carso_classifier`, keyword arguments
    ``classifier``) and purifier (`Purifier`, keyword arguments ``purifier``; its representation width is
    inferred).  ``settings``: ``n_draws``, ``aggregation``, ``gradient_draws``, ``draws_per_chunk``,
    ``examples_per_chunk``."""
    from andor_jax.models import carso_classifier

    classifier = dict(classifier or {})
    if "aggregation" in settings and settings["aggregation"] not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {settings['aggregation']!r}; choose one of {sorted(AGGREGATIONS)}")
    small = {k: v for k, v in settings.items() if k != "aggregation" and not (isinstance(v, int) and v >= 1)}
    if small:
        raise ValueError(f"CARSO's {', '.join(f'{k}={v!r}' for k, v in small.items())}: each must be an integer >= 1")
    paths = tuple(representation_paths or carso_classifier.representation_paths(classifier.get("hidden", (200, 80))))
    return Carso(carso_classifier.get_model(**classifier), Purifier(**dict(purifier or {})), paths, **settings)
