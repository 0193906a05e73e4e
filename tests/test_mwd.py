"""MWD layers (Agrawal, de Alfaro & Helmbold): fused pseudo-gradient, interval rule, projection, training."""
from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.ad_checkpoint import print_saved_residuals

from andor_jax.interval import Interval
from andor_jax.layers.mwd import MWD, mwd_composed, mwd_interval, mwd_network, mwd_unit
from andor_jax.layers.standard import Flatten
from andor_jax.models import ARCHITECTURES, Sequential, build_model, project

BATCH, IN, OUT = 6, 37, 5


def draw(seed=0, batch=BATCH, n_in=IN, out=OUT):
    kx, ku, kw, kg = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = jax.random.uniform(kx, (batch, n_in))
    u = jax.random.uniform(ku, (out, n_in), minval=0.2, maxval=3.0)
    w = jax.random.uniform(kw, (out, n_in))
    g = jax.random.normal(kg, (batch, out))
    return x, u, w, g


@jax.jit
def plain(x, u, w):
    """The unit written naively; plain autodiff gives its true gradient."""
    return jnp.exp(-jnp.max((u[None] * (x[:, None, :] - w[None])) ** 2, axis=-1))


@jax.jit
def plain_cotangents(x, u, w, g):
    return jax.vjp(plain, x, u, w)[1](g)


@partial(jax.jit, static_argnums=0)
def cotangents(fn, x, u, w, g, rho):
    return jax.vjp(lambda *p: fn(*p, rho), x, u, w)[1](g)


def assert_close(actual, expected, rtol=1e-5):
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(e))))


# The fused unit with the default chunking (one chunk at these sizes) and with tiny chunks (many, the last
# one padded).  Module-level objects, so that jit caches the traces of `cotangents` across tests.
FUSED = {"one-chunk": mwd_unit, "many-chunks": partial(mwd_unit, chunk_elements=50)}
CHUNKINGS = pytest.mark.parametrize("chunking", list(FUSED))


@CHUNKINGS
@pytest.mark.parametrize("rho", [1.0, 0.4, 0.0])
def test_fused_gradient_equals_composed_primitives(chunking, rho):
    x, u, w, g = draw()
    assert_close(cotangents(FUSED[chunking], x, u, w, g, rho),
                 cotangents(mwd_composed, x, u, w, g, rho))


@CHUNKINGS
def test_true_mode_equals_autodiff(chunking):
    x, u, w, g = draw(1)
    expected = plain_cotangents(x, u, w, g)
    assert_close(cotangents(FUSED[chunking], x, u, w, g, 0.0), expected)
    assert_close(cotangents(FUSED[chunking], x, u, w, g, None), expected)


@CHUNKINGS
def test_true_mode_splits_ties_like_autodiff(chunking):
    x, u, w, g = draw(2, n_in=4)
    # Inputs 0 and 2 give every unit the largest possible term (3 (1 - 0))^2: a tie for the maximum.
    x = x.at[:, 0].set(1.0).at[:, 2].set(1.0)
    u = u.at[:, 0].set(3.0).at[:, 2].set(3.0)
    w = w.at[:, 0].set(0.0).at[:, 2].set(0.0)
    dx, du, dw = cotangents(FUSED[chunking], x, u, w, g, 0.0)
    assert_close((dx, du, dw), plain_cotangents(x, u, w, g))
    np.testing.assert_allclose(du[:, 0], du[:, 2])
    assert float(jnp.max(jnp.abs(du[:, 1]))) == 0.0


def test_forward_is_the_formula_for_every_rho():
    x, u, w, _ = draw(3)
    for rho in (None, 0.0, 0.5, 1.0):
        np.testing.assert_allclose(mwd_unit(x, u, w, rho), plain(x, u, w), rtol=1e-6)


def test_leading_axes_and_vmap():
    x, u, w, g = draw(4)
    stacked = jnp.stack([x, 1 - x])
    np.testing.assert_allclose(mwd_unit(stacked, u, w), jnp.stack([plain(x, u, w), plain(1 - x, u, w)]),
                               rtol=1e-6)

    def grad_x(xs, rho):
        return jax.grad(lambda t: jnp.sum(mwd_unit(t, u, w, rho) * g))(xs)

    batched = jax.jit(jax.vmap(grad_x, in_axes=(0, None)))(stacked, 1.0)
    assert_close([batched[1]], [cotangents(mwd_composed, 1 - x, u, w, g, 1.0)[0]])
    rhos = jax.jit(jax.vmap(grad_x))(stacked, jnp.array([1.0, 0.0]))
    assert_close([rhos[1]], [plain_cotangents(1 - x, u, w, g)[0]])


def test_residuals_exclude_batch_out_in_tensor(capsys):
    x, u, w, _ = draw()
    big = f"f32[{BATCH},{OUT},{IN}]"
    print_saved_residuals(lambda *p: jnp.sum(mwd_composed(*p, 1.0)), x, u, w)
    assert big in capsys.readouterr().out  # the composition keeps it ...
    print_saved_residuals(lambda *p: jnp.sum(mwd_unit(*p, 1.0)), x, u, w)
    saved = capsys.readouterr().out
    assert big not in saved and f"f32[{BATCH},{OUT}]" in saved  # ... the fused unit keeps only m


def test_changing_rho_compiles_once():
    x, u, w, g = draw()
    traces = []

    @jax.jit
    def grads(rho):
        traces.append(None)
        return cotangents(mwd_unit, x, u, w, g, rho)

    results = [grads(rho) for rho in (1.0, 0.7, 0.0, 0.3)]
    assert len(traces) == 1
    assert_close(results[2], plain_cotangents(x, u, w, g))


def test_shape_errors_are_clear():
    x, u, w, _ = draw()
    with pytest.raises(ValueError, match="x .* and u, w"):
        mwd_unit(x[:, :-1], u, w)


# ------------------------------------------------------------------------------------------------ intervals


def random_box(seed, batch=BATCH, n_in=IN, radius=0.2):
    kc, kr = jax.random.split(jax.random.PRNGKey(seed))
    centre = jax.random.uniform(kc, (batch, n_in))
    r = jax.random.uniform(kr, (batch, n_in), maxval=radius)
    return Interval.around(centre, r, 0.0, 1.0)


@partial(jax.jit, static_argnums=2)
def points_in(box, seed, count=200):
    """``count`` uniform points and ``count`` random corners of ``box``."""
    keys = jax.random.split(jax.random.PRNGKey(seed), count)
    shape = box.lower.shape
    samples = jax.vmap(lambda k: jax.random.uniform(k, shape, minval=box.lower, maxval=box.upper))(keys)
    corners = jax.vmap(lambda k: jnp.where(jax.random.bernoulli(k, 0.5, shape), box.upper, box.lower))(keys)
    return jnp.concatenate([samples, corners])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interval_contains_sampled_points(seed):
    _, u, w, _ = draw(seed)
    box = random_box(seed)
    out = jax.jit(mwd_interval)(box, u, w)
    values = jax.jit(jax.vmap(plain, in_axes=(0, None, None)))(points_in(box, seed), u, w)
    # Sound up to the rounding of exp, which XLA may evaluate an ulp apart in two programs.
    slack = 4 * jnp.finfo(jnp.float32).eps * out.upper
    assert bool(jnp.all((out.lower - slack <= values) & (values <= out.upper + slack)))
    # Per unit, the box point nearest to its centre w attains the upper bound.
    nearest = jnp.clip(w[None], box.lower[:, None, :], box.upper[:, None, :])
    np.testing.assert_allclose(jnp.exp(-jnp.max((u * (nearest - w)) ** 2, axis=-1)), out.upper, rtol=1e-6)
    assert bool(jnp.all(out.lower <= out.upper))


def test_interval_bounds_are_attained():
    _, u, w, _ = draw(5)
    out = jax.jit(mwd_interval)(Interval(jnp.zeros((1, IN)), jnp.ones((1, IN))), u, w)
    np.testing.assert_allclose(out.upper, 1.0)  # the unit box holds every centre w
    u, w = np.asarray(u, np.float64), np.asarray(w, np.float64)
    farthest = np.where(w < 0.5, 1.0, 0.0)  # per unit, the corner farthest from w in every coordinate
    np.testing.assert_allclose(out.lower[0], np.exp(-np.max((u * (farthest - w)) ** 2, axis=1)), rtol=1e-5)


@pytest.mark.parametrize("kind", ["u", "neg", "mixed"])
def test_interval_of_degenerate_box_is_the_forward_value(kind):
    x, _, _, _ = draw(6)
    layer = MWD(OUT, kind)
    variables = layer.init(jax.random.PRNGKey(0), x)
    out = layer.apply(variables, Interval(x, x), method=MWD.interval)
    y = layer.apply(variables, x)
    np.testing.assert_array_equal(out.lower, y)
    np.testing.assert_array_equal(out.upper, y)


def test_negated_interval_flips_bounds():
    box = random_box(7)
    layer = MWD(OUT, "neg")
    variables = layer.init(jax.random.PRNGKey(0), box.lower)
    plain_box = mwd_interval(box, variables["params"]["u"], variables["params"]["w"])
    out = layer.apply(variables, box, method=MWD.interval)
    np.testing.assert_array_equal(out.lower, 1 - plain_box.upper)
    np.testing.assert_array_equal(out.upper, 1 - plain_box.lower)


# --------------------------------------------------------------------------------------- layer and network


def test_init_ranges_and_projection():
    params = MWD(64).init(jax.random.PRNGKey(0), jnp.zeros((1, 30)))["params"]
    assert params["u"].shape == params["w"].shape == (64, 30)
    assert 0.2 <= float(params["u"].min()) and float(params["u"].max()) < 0.7
    assert 0.0 <= float(params["w"].min()) and float(params["w"].max()) < 1.0
    wild = {"u": jnp.array([[-1.0, 0.005, 1.0, 5.0]]), "w": jnp.array([[-0.5, 0.3, 1.0, 2.0]])}
    clipped = MWD.project(wild)
    np.testing.assert_allclose(clipped["u"], [[0.01, 0.01, 1.0, 3.0]])
    np.testing.assert_allclose(clipped["w"], [[0.0, 0.3, 1.0, 1.0]])


def test_mixed_layer_negates_its_stored_units():
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 9))
    layer = MWD(64, "mixed")
    variables = jax.jit(layer.init)(jax.random.PRNGKey(0), x)
    bits = variables["constants"]["negate"]
    assert bits.shape == (64,) and "negate" not in variables["params"]
    assert 0 < int(bits.sum()) < 64
    y = plain(x, variables["params"]["u"], variables["params"]["w"])
    np.testing.assert_allclose(jax.jit(layer.apply)(variables, x), y + bits * (1 - 2 * y), rtol=1e-6, atol=1e-7)
    other = jax.jit(layer.init)(jax.random.PRNGKey(1), x)["constants"]["negate"]
    assert not np.array_equal(bits, other)
    with pytest.raises(ValueError, match="'constants' collection"):
        layer.apply({"params": variables["params"]}, x)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown MWD kind"):
        MWD(3, "nand").init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match="unknown MWD kind"):
        mwd_network((4,), 2, ("u", "nor"))
    with pytest.raises(ValueError, match="one kind per layer"):
        mwd_network((4, 4), 2, ("u", "neg"))


def test_network_builder_and_registry():
    assert ARCHITECTURES["mwd"] is mwd_network
    model = build_model(ml_collections.ConfigDict({"name": "mwd", "hidden": (6, 5), "num_classes": 3,
                                                   "kinds": ("u", "mixed", "neg")}))
    assert isinstance(model.layers[0], Flatten)
    assert [(layer.features, layer.kind) for layer in model.layers[1:]] == [(6, "u"), (5, "mixed"), (3, "neg")]
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((2, 4, 4)))
    assert set(variables) == {"params", "constants"}
    assert jax.jit(model.apply)(variables, jnp.ones((2, 4, 4)), rho=1.0).shape == (2, 3)


def test_tiny_network_learns_with_pseudo_gradients():
    """Two classes told apart by the first two inputs; squared loss on one-hot targets, AdaDelta (lr 5,
    the paper's recipe), projection after every step."""
    key_x, key_init = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.uniform(key_x, (128, 8))
    labels = (x[:, 0] > x[:, 1]).astype(jnp.int32)
    targets = jax.nn.one_hot(labels, 2)
    model = Sequential(mwd_network(hidden=(16,), num_classes=2, kinds=("u", "neg")))
    params = model.init(key_init, x)["params"]
    optimiser = optax.adadelta(5.0, rho=0.9, eps=1e-6)

    def loss_fn(p):
        return jnp.mean(jnp.sum((model.apply({"params": p}, x, rho=1.0) - targets) ** 2, axis=-1))

    @jax.jit
    def step(p, state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, state = optimiser.update(grads, state, p)
        return project(model, optax.apply_updates(p, updates)), state, loss

    state = optimiser.init(params)
    losses = []
    for _ in range(40):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]
    for layer_params in (params["layers_1"], params["layers_2"]):
        assert float(layer_params["u"].min()) >= 0.01 and float(layer_params["w"].max()) <= 1.0
