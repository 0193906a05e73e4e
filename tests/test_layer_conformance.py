"""The layer protocol (`andor_jax.layers.base`) checked on every layer type of the package.

Layer types are discovered, not listed: every concrete subclass of `Layer` in the modules of
``andor_jax.layers`` (and `Sequential`), each with the small instances its ``conformance_examples()``
declares.  A new layer type is covered by these tests once it subclasses `Layer` and declares examples.

Checks per example: the interval rule contains the outputs of sampled points and of points found by
gradient ascent inside the box, and a degenerate box gives the forward value; the projection is
idempotent; the context (``train``, ``rho``) reaches the layer nested in composites; forward and interval
rule agree under ``jit`` and ``vmap``.
"""
import functools
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import andor_jax.layers
from andor_jax import models
from andor_jax.interval import Interval
from andor_jax.layers import Concat, Layer

for module in pkgutil.iter_modules(andor_jax.layers.__path__):
    importlib.import_module(f"andor_jax.layers.{module.name}")


def layer_types() -> list[type]:
    """Every subclass of `Layer` defined in the package that no other subclass extends (the others are
    shared bases, such as `AndOrNeurons`)."""
    found, stack = [], [Layer]
    while stack:
        cls = stack.pop()
        subclasses = [c for c in cls.__subclasses__() if c.__module__.startswith("andor_jax.")]
        stack += subclasses
        if cls is not Layer and not subclasses:
            found.append(cls)
    return sorted(set(found), key=lambda c: (c.__module__, c.__name__))


TYPES = layer_types()
EXAMPLE_LIST = [example for cls in TYPES for example in cls.conformance_examples()]
INDICES = [pytest.param(index, id=f"{type(example.layer).__name__}-{index}")
           for index, example in enumerate(EXAMPLE_LIST)]
TOLERANCE = 1e-5


def test_every_layer_type_declares_examples():
    assert {"Dense", "Conv", "Concat", "MWD", "AndOrDense", "Sequential"} <= {cls.__name__ for cls in TYPES}
    missing = [cls.__name__ for cls in TYPES if not cls.conformance_examples()]
    assert not missing, f"layer types without conformance_examples(): {missing}"
    for cls in TYPES:
        assert all(type(example.layer) is cls for example in cls.conformance_examples()), cls.__name__


def initialised(example, seed=0):
    """``(model, variables, x)``: the example in a `Sequential`, its variables (parameters projected onto
    the layer's constraint set, running statistics drawn away from their initial values) and a batch in
    its domain."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(*example.domain, size=example.shape), jnp.float32)
    model = models.Sequential((example.layer,))
    variables = dict(model.init({"params": jax.random.PRNGKey(seed), "dropout": jax.random.PRNGKey(seed + 1)}, x))
    if "params" in variables:
        variables["params"] = models.project(model, variables["params"])
    if "batch_stats" in variables:
        variables["batch_stats"] = jax.tree.map(
            lambda s: jnp.asarray(rng.uniform(0.2, 2.0, s.shape), s.dtype), variables["batch_stats"])
    return model, variables, x


def random_box(example, x, seed):
    """A box around ``x`` of random radii up to a third of the domain, inside the domain."""
    lo, hi = example.domain
    radius = np.random.default_rng(seed).uniform(0, (hi - lo) / 3, size=x.shape).astype(np.float32)
    return Interval(jnp.clip(x - radius, lo, hi), jnp.clip(x + radius, lo, hi))


def nested(variables):
    """The variables of ``Sequential((layer,))`` moved to where they sit in `in_composites`."""
    return {collection: {"layers_0": {"branches_0_0": tree}} for collection, tree in variables.items()}


def in_composites(layer):
    """``layer`` inside a nested `Sequential` inside the only branch of a `Concat`."""
    return models.Sequential((Concat(((models.Sequential((layer,)),),)),))


POINTS, ASCENTS, ASCENT_STEPS = 32, 4, 15
CONTEXTS = [(False, 0.0), (False, 1.0), (True, 1.0)]   # rho changes gradients only, train the forward


def probes(x, box, out_shape, seed):
    """Sampled points and corners of ``box``, and random signs and starting points for the ascent
    (drawn with numpy: random numbers drawn inside the compiled program cost seconds of compilation)."""
    rng = np.random.default_rng(seed)
    lower, upper = np.asarray(box.lower), np.asarray(box.upper)
    uniform = np.clip(lower + rng.uniform(size=(POINTS, *x.shape)) * (upper - lower), lower, upper)
    corners = np.where(rng.uniform(size=(POINTS, *x.shape)) < 0.5, upper, lower)
    signs = np.sign(rng.normal(size=(ASCENTS, *out_shape)))
    starts = lower + rng.uniform(size=(ASCENTS, *x.shape)) * (upper - lower)
    return tuple(jnp.asarray(a, jnp.float32) for a in (np.concatenate([uniform, corners]), signs, starts))


def interval_checks(model, variables, x, box, points, signs, starts):
    """Everything the interval checks need, in one program to compile: the box's image, the outputs at
    sampled points and corners, at points found by sign-gradient ascent of ``sum(s * f(z))`` from
    ``starts`` for the ``signs`` (z kept in the box), the image of the degenerate box, and per-example
    (vmapped) forward values and boxes."""
    forward = lambda z: model.apply(variables, z)  # noqa: E731
    interval = lambda b: model.apply(variables, b, method="interval")  # noqa: E731
    width = box.upper - box.lower

    def ascend(z, s):
        def step(_, z):
            g = jax.grad(lambda z: jnp.sum(s * forward(z)))(z)
            return jnp.clip(z + width / 8 * jnp.sign(g), box.lower, box.upper)

        return forward(jax.lax.fori_loop(0, ASCENT_STEPS, step, z))

    one = lambda f, *a: jax.tree.map(lambda v: v[0], f(*(jax.tree.map(lambda v: v[None], t) for t in a)))  # noqa: E731
    return {"box": interval(box), "sampled": jax.vmap(forward)(points), "ascended": jax.vmap(ascend)(starts, signs),
            "degenerate": interval(Interval(x, x)), "forward": forward(x),
            "per_example": jax.vmap(lambda z: one(forward, z))(x),
            "per_example_box": jax.vmap(lambda b: one(interval, b))(box)}


def context_checks(alone, deep, variables, deep_variables, x):
    """Outputs and gradients (input and parameters) of the layer alone and inside composites for every
    context, with two dropout keys: one program."""
    def run(model, variables, train, rho, key):
        def loss(p, z):
            out, _ = model.apply({**variables, "params": p}, z, train=train, rho=rho, rngs={"dropout": key},
                                 mutable=["batch_stats"])
            return jnp.sum(jnp.sin(3 * out)), out

        (_, out), (dp, dx) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(variables.get("params", {}), x)
        return out, dx, jax.tree.leaves(dp)

    keys = jax.random.PRNGKey(10), jax.random.PRNGKey(11)
    return {(train, rho): {"alone": run(alone, variables, train, rho, keys[0]),
                           "other_key": run(alone, variables, train, rho, keys[1])[0] if train else None,
                           "deep": run(deep, deep_variables, train, rho, keys[0])}
            for train, rho in CONTEXTS}


@functools.cache
def checked(index: int):
    """The example's model, variables, batch and box, and the results of both programs (jit-compiled)."""
    example = EXAMPLE_LIST[index]
    model, variables, x = initialised(example)
    box = random_box(example, x, 1)
    inputs = probes(x, box, jax.eval_shape(model.apply, variables, x).shape, 2)
    intervals = jax.jit(lambda v, x, b, p: interval_checks(model, v, x, b, *p))(variables, x, box, inputs)
    deep = in_composites(example.layer)
    contexts = jax.jit(lambda v, dv, x: context_checks(model, deep, v, dv, x))(variables, nested(variables), x)
    return example, model, variables, x, box, jax.tree.map(np.asarray, intervals), jax.tree.map(np.asarray, contexts)


def assert_inside(box: Interval, values, what: str):
    lower, upper, values = np.asarray(box.lower), np.asarray(box.upper), np.asarray(values)
    slack = TOLERANCE * (1 + np.abs(values))
    assert np.all(lower <= upper + slack), f"{what}: empty box"
    assert np.all(lower <= values + slack), f"{what}: below the lower bound by {np.max(lower - values)}"
    assert np.all(values <= upper + slack), f"{what}: above the upper bound by {np.max(values - upper)}"


@pytest.mark.parametrize("index", INDICES)
def test_interval_contains_sampled_points_and_corners(index):
    *_, results, _ = checked(index)
    box = results["box"]
    assert_inside(Interval(box.lower[None], box.upper[None]), results["sampled"], "sampled points")


@pytest.mark.parametrize("index", INDICES)
def test_interval_contains_points_found_by_gradient_ascent(index):
    *_, results, _ = checked(index)
    box = results["box"]
    assert_inside(Interval(box.lower[None], box.upper[None]), results["ascended"], "ascended points")


@pytest.mark.parametrize("index", INDICES)
def test_degenerate_box_gives_the_forward_value(index):
    *_, results, _ = checked(index)
    for bound in results["degenerate"]:
        np.testing.assert_allclose(bound, results["forward"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("index", INDICES)
def test_projection_is_idempotent(index):
    _, model, variables, *_ = checked(index)
    params = variables.get("params", {})
    rng = np.random.default_rng(8)
    wild = jax.tree.map(lambda p: jnp.asarray(3 * p + rng.normal(size=p.shape), p.dtype), params)
    project = jax.jit(lambda p: models.project(model, p))
    once = project(wild)
    assert jax.tree.structure(once) == jax.tree.structure(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), once, project(once))


@pytest.mark.parametrize("index", INDICES)
def test_context_reaches_the_layer_inside_composites(index):
    """Inside composites the layer computes what it computes alone, for every ``train`` and ``rho``:
    values and gradients; a random layer (dropout, whose masks depend on its path) must still see
    training mode; for a layer with a pseudo-gradient, rho 1 and 0 must give different gradients."""
    example, *_, contexts = checked(index)
    for (train, rho), result in contexts.items():
        (y, dx, dp), (deep_y, deep_dx, deep_dp) = result["alone"], result["deep"]
        if not train or np.allclose(result["other_key"], y, rtol=1e-6, atol=1e-6):
            np.testing.assert_allclose(deep_y, y, rtol=1e-6, atol=1e-6)
            for a, b in zip([deep_dx, *deep_dp], [dx, *dp]):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert not np.allclose(deep_y, contexts[(False, rho)]["deep"][0]), "training mode did not reach it"
    if getattr(example.layer, "has_pseudo_gradient", False):
        pseudo, true = contexts[(False, 1.0)]["deep"][2], contexts[(False, 0.0)]["deep"][2]
        assert not all(np.allclose(a, b) for a, b in zip(pseudo, true))


@pytest.mark.parametrize("index", INDICES)
def test_jit_and_vmap_agree_with_eager(index):
    """Forward and interval rule eagerly equal their jit-compiled values, and vmapped over the batch (each
    example alone) too: nothing depends on Python-side state or couples the examples at inference."""
    _, model, variables, x, box, results, _ = checked(index)
    np.testing.assert_allclose(model.apply(variables, x), results["forward"], rtol=1e-6, atol=1e-6)
    eager_box = model.apply(variables, box, method="interval")
    for eager, compiled, per_example in zip(eager_box, results["box"], results["per_example_box"]):
        np.testing.assert_allclose(compiled, eager, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(per_example, eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results["per_example"], results["forward"], rtol=1e-5, atol=1e-6)


class Probe(Layer):
    """Adds ``10 train + rho`` to its input: its output shows which context reached it."""

    def __call__(self, x, *, train=False, rho=None):
        return x + 10.0 * train + (0.0 if rho is None else rho)


def test_context_reaches_every_depth_of_composites():
    model = models.Sequential((Probe(), Concat(((), (models.Sequential((Concat(((Probe(),), ())), Probe())),)))))
    x = jnp.zeros((1, 1))
    for train, rho in ((False, None), (True, None), (False, 0.5), (True, 1.0)):
        r = 0.0 if rho is None else rho
        first = 10.0 * train + r
        expected = [first, 3 * first, 2 * first]   # skip | ((probe | skip) -> probe)
        np.testing.assert_allclose(model.apply({}, x, train=train, rho=rho)[0], expected)
