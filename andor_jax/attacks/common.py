"""What every attack shares: the result type, the threat-model geometry and input validation.

Threat model.  An attack may move an input ``x`` anywhere in the set

    S(x) = {x' : ||x' - x||_p <= eps} ∩ [lo, hi]^d,      p in {inf, 2},

the eps-ball intersected with the input domain (Madry et al. 2018, "Towards deep learning models resistant
to adversarial attacks").  For p = inf, S(x) is a box and clipping is its exact Euclidean projection.  For
p = 2, `project` rescales onto the ball and then clips to the domain: since x itself lies in the domain,
clipping moves every coordinate towards x, so the result stays in the ball; it is a feasible point of S(x),
not always the nearest one (the exact projection onto a ball ∩ box needs an iterative solver).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from andor_jax.attacks.losses import LOSSES
from andor_jax.attacks.oracle import LogitsFn, Oracle, as_oracle

NORMS = ("linf", "l2")
DOMAIN_TOLERANCE = 1e-6  # how far outside its domain an input may lie (float rounding) before it is refused

Domain = tuple[float, float]


class AttackResult(NamedTuple):
    """The outcome of an attack on a batch.

    Attributes:
      x_adv: (batch, ...) points inside the eps-ball ∩ domain of their inputs: a misclassified point where
        the attack found one, otherwise its final (or, for APGD, best-loss) point.
      broken: (batch,) bool, whether some point the attack evaluated (the clean input included) was
        misclassified.  DeepFool, a minimal-perturbation attack, reports only its final clipped point.
    """

    x_adv: jax.Array
    broken: jax.Array


# ---------------------------------------------------------------------------------------------------------
# Geometry.

def per_example_norm(v: jax.Array, norm: str) -> jax.Array:
    """``||v_i||_p`` for every example ``i`` of a batch, as a (batch,) array; ``norm`` is ``'linf'``,
    ``'l1'`` or ``'l2'``."""
    flat = v.reshape(v.shape[0], -1)
    if norm == "linf":
        return jnp.max(jnp.abs(flat), axis=1)
    if norm == "l1":
        return jnp.sum(jnp.abs(flat), axis=1)
    return jnp.sqrt(jnp.sum(flat * flat, axis=1))


def per_example(scalars: jax.Array, like: jax.Array) -> jax.Array:
    """Reshapes (batch,) ``scalars`` to broadcast against the batch ``like``."""
    return scalars.reshape((-1,) + (1,) * (like.ndim - 1))


def steepest_direction(grad: jax.Array, norm: str) -> jax.Array:
    """The unit-norm direction of steepest ascent for the norm: ``argmax_{||d||_p <= 1} <grad, d>``.

    ``sign(grad)`` for L-inf, ``grad / ||grad||_2`` for L2; a zero gradient gives a zero direction.
    """
    if norm == "linf":
        return jnp.sign(grad)
    length = per_example_norm(grad, "l2")
    return grad / per_example(jnp.where(length > 0, length, 1.0), grad)


def clip_to_domain(x: jax.Array, domain: Domain) -> jax.Array:
    """Clips ``x`` to the input domain box ``[lo, hi]``."""
    lo, hi = domain
    return jnp.clip(x, lo, hi)


def project(x_adv: jax.Array, x: jax.Array, eps, domain: Domain, norm: str) -> jax.Array:
    """Maps ``x_adv`` into the eps-ball around ``x`` intersected with the domain (see the module docstring)."""
    delta = x_adv - x
    if norm == "linf":
        delta = jnp.clip(delta, -eps, eps)
    else:
        length = per_example_norm(delta, "l2")
        delta = delta * per_example(jnp.minimum(1.0, eps / jnp.where(length > 0, length, 1.0)), delta)
    return clip_to_domain(x + delta, domain)


def random_start(key: jax.Array, x: jax.Array, eps, domain: Domain, norm: str) -> jax.Array:
    """A point drawn uniformly from the eps-ball around ``x``, then clipped to the domain.

    L-inf: ``x + U(-eps, eps)^d``.  L2: a uniform direction (a normalised Gaussian) at radius
    ``eps * U^(1/d)``, which makes the point uniform in the ball's volume.
    """
    if norm == "linf":
        delta = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps
    else:
        direction_key, radius_key = jax.random.split(key)
        direction = steepest_direction(jax.random.normal(direction_key, x.shape, x.dtype), "l2")
        dimension = np.prod(x.shape[1:])
        radius = eps * jax.random.uniform(radius_key, (x.shape[0],), x.dtype) ** (1.0 / dimension)
        delta = direction * per_example(radius, x)
    return project(x + delta, x, eps, domain, norm)


def starting_points(key: jax.Array, x: jax.Array, eps, domain: Domain, norm: str, restarts: int,
                    random: bool) -> jax.Array:
    """(restarts, batch, ...) starting points: `random_start` draws (in one call, not vmapped: vmapping the
    PRNG multiplies its compile time) or copies of ``x``."""
    if not random:
        return jnp.broadcast_to(x, (restarts,) + x.shape)
    tiled = jnp.broadcast_to(x, (restarts,) + x.shape).reshape((restarts * x.shape[0],) + x.shape[1:])
    return random_start(key, tiled, eps, domain, norm).reshape((restarts,) + x.shape)


# ---------------------------------------------------------------------------------------------------------
# Bookkeeping shared by the iterative attacks.

def misclassified(logits: jax.Array, y: jax.Array) -> jax.Array:
    """(batch,) bool: the top logit is not the label's."""
    return jnp.argmax(logits, axis=-1) != y


def record_misclassified(found: jax.Array, broken: jax.Array, x: jax.Array, logits: jax.Array,
                         y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keeps, per example, the first misclassified point seen so far: returns ``(found, broken)`` updated
    with the batch of points ``x`` and their ``logits``."""
    newly = misclassified(logits, y) & ~broken
    return jnp.where(per_example(newly, x), x, found), broken | newly


def best_of_restarts(x_adv: jax.Array, broken: jax.Array, score: jax.Array) -> AttackResult:
    """Merges (restarts, batch, ...) results: per example, a restart that broke it, otherwise the restart
    with the highest ``score`` (the attack's loss)."""
    choice = jnp.argmax(jnp.where(broken, jnp.inf, score), axis=0)
    pick = jax.vmap(lambda per_restart, index: per_restart[index], in_axes=(1, 0))
    return AttackResult(pick(x_adv, choice), jnp.any(broken, axis=0))


# ---------------------------------------------------------------------------------------------------------
# Validation: errors a user can make, named before anything is compiled.

def _concrete(value) -> np.ndarray | None:
    """``value`` as a NumPy array, or None when it is a tracer (validation inside someone else's jit)."""
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def traced(*values) -> bool:
    """Whether any of ``values`` is a tracer (the attack runs inside a caller's transformation), so that
    host-side decisions on its values are impossible."""
    return any(isinstance(value, jax.core.Tracer) for value in values)


def check_choice(setting: str, value, known) -> None:
    """Raises ValueError unless ``value`` is one of ``known``."""
    if value not in known:
        raise ValueError(f"unknown {setting} {value!r}; known: {sorted(known)}")


def check_positive_int(setting: str, value) -> None:
    """Raises ValueError unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{setting} must be an integer >= 1, got {value!r}")


def check_domain(domain) -> Domain:
    """Returns ``domain`` as a ``(lo, hi)`` pair of floats, or raises ValueError."""
    try:
        lo, hi = (float(bound) for bound in domain)
    except (TypeError, ValueError) as err:
        raise ValueError(f"domain must be a pair (lo, hi) of numbers, got {domain!r}") from err
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"domain must satisfy lo < hi with finite bounds, got {domain!r}")
    return lo, hi


def check_eps(eps, domain: Domain, norm: str, input_shape: tuple[int, ...]) -> None:
    """Raises ValueError if ``eps`` is negative, not finite, or larger than the domain's diameter in the
    attack's norm (``hi - lo`` for L-inf, ``(hi - lo) sqrt(d)`` for L2): such a ball covers the whole domain."""
    value = _concrete(eps)
    if value is None:
        return
    if value.shape != ():
        raise ValueError(f"eps must be a scalar, got shape {value.shape}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {float(value)}")
    width = domain[1] - domain[0]
    diameter = width if norm == "linf" else width * float(np.sqrt(np.prod(input_shape)))
    if value > diameter:
        raise ValueError(f"eps = {float(value)} exceeds the {norm} diameter {diameter:g} of the domain "
                         f"{list(domain)}: the ball would cover every input")


def check_batch(x: jax.Array, y: jax.Array, domain: Domain) -> None:
    """Raises ValueError for a batch that an attack cannot take: mismatched batch sizes, non-integer labels,
    or inputs outside the domain (beyond `DOMAIN_TOLERANCE`).

    Value checks are skipped for tracers, so that an attack can still run inside a caller's `jax.jit`.
    """
    if jnp.ndim(x) < 2:
        raise ValueError(f"x must be a batch (batch, features...), got shape {jnp.shape(x)}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(f"x must be floating point, got dtype {jnp.result_type(x)}")
    if jnp.ndim(y) != 1:
        raise ValueError(f"y must be a vector of labels (batch,), got shape {jnp.shape(y)}")
    if jnp.shape(x)[0] != jnp.shape(y)[0]:
        raise ValueError(f"batch sizes differ: x has {jnp.shape(x)[0]} examples, y has {jnp.shape(y)[0]} labels")
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {jnp.result_type(y)}")
    inputs = _concrete(x)
    if inputs is None or not inputs.size:
        return
    if not np.isfinite(inputs).all():
        raise ValueError("x contains NaN or infinite values")
    lo, hi = domain
    if max(lo - inputs.min(), inputs.max() - hi) > DOMAIN_TOLERANCE:
        raise ValueError(f"inputs lie outside the domain [{lo:g}, {hi:g}]: found values in "
                         f"[{inputs.min():g}, {inputs.max():g}]; rescale the data or pass its domain")


def check_labels(y: jax.Array, num_classes: int) -> None:
    """Raises ValueError unless every label lies in ``[0, num_classes)`` (skipped for tracers)."""
    labels = _concrete(y)
    if labels is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) (the model has {num_classes} logits), "
                         f"got values in [{labels.min()}, {labels.max()}]")


def check_non_negative(setting: str, value) -> None:
    """Raises ValueError unless ``value`` is a finite scalar >= 0 (skipped for tracers)."""
    concrete = _concrete(value)
    if concrete is not None and (concrete.shape != () or not np.isfinite(concrete) or concrete < 0):
        raise ValueError(f"{setting} must be a finite number >= 0, got {value!r}")


def prepare(logits_fn: LogitsFn | Oracle, x: jax.Array, y: jax.Array, key: jax.Array, *, eps, domain,
            norm: str, loss: str | None = None,
            gradient_logits_fn: LogitsFn | None = None) -> tuple[Oracle, jax.Array, Domain]:
    """What every public attack does before compiling: builds the oracle and validates the threat model
    (norm, domain, eps), the loss (if the attack takes one) and the batch.

    Returns:
      ``(oracle, eps, (lo, hi))`` with eps as a scalar array of the inputs' dtype, so that every eps reuses
      one compiled attack.
    """
    check_choice("norm", norm, NORMS)
    if loss is not None:
        check_choice("loss", loss, LOSSES)
    domain = check_domain(domain)
    oracle = as_oracle(logits_fn, gradient_logits_fn)
    check_batch(x, y, domain)
    num_classes = oracle.num_classes(x, key)
    check_labels(y, num_classes)
    if loss == "dlr" and num_classes < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, the model has {num_classes}")
    check_eps(eps, domain, norm, jnp.shape(x)[1:])
    return oracle, as_scalar(eps, x), domain


def as_scalar(value, x: jax.Array) -> jax.Array:
    """``value`` as a scalar array of ``x``'s dtype: a traced argument whose type never changes, so that a
    compiled attack is reused whatever Python or NumPy type the value came in."""
    return jnp.asarray(value, jnp.result_type(x))
