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
from andor_jax.layers.mwd import MWD, mwd_composed, mwd_interval, mwd_unit
from andor_jax.layers.standard import Concat, Dense, Flatten
from andor_jax.models import Sequential, build_model, project
from andor_jax.models.mwd import get_model as mwd_network

BATCH, IN, OUT = 6, 37, 5


def draw(seed=0):
    """Inputs (BATCH, IN) in [0, 1], parameters (OUT, IN) and an output cotangent, as float32 numpy arrays
    (test data made with numpy, so that only the code under test is compiled)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(BATCH, IN))
    u = rng.uniform(0.2, 3.0, size=(OUT, IN))
    w = rng.uniform(size=(OUT, IN))
    g = rng.normal(size=(BATCH, OUT))
    return tuple(a.astype(np.float32) for a in (x, u, w, g))


def plain_values(x, u, w):
    """The unit's formula in numpy."""
    return np.exp(-np.max((u[None] * (x[:, None, :] - w[None])) ** 2, axis=-1))


@jax.jit
def plain(x, u, w):
    """The unit written naively in JAX; plain autodiff gives its true gradient."""
    return jnp.exp(-jnp.max((u[None] * (x[:, None, :] - w[None])) ** 2, axis=-1))


@jax.jit
def plain_cotangents(x, u, w, g):
    return jax.vjp(plain, x, u, w)[1](g)


@partial(jax.jit, static_argnums=0)
def cotangents(fn, x, u, w, g, rho):
    return jax.vjp(lambda *p: fn(*p, rho), x, u, w)[1](g)


def assert_close(actual, expected, rtol=1e-5):
    """Equal to ``rtol`` relative, entries near zero (cancellations) measured against the largest one."""
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * float(np.max(np.abs(e))))


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
    assert_close(cotangents(FUSED[chunking], x, u, w, g, 0.0), plain_cotangents(x, u, w, g))


def test_rho_none_is_the_true_gradient():
    x, u, w, g = draw(1)
    assert_close(cotangents(mwd_unit, x, u, w, g, None), plain_cotangents(x, u, w, g))


@CHUNKINGS
def test_true_mode_splits_ties_like_autodiff(chunking):
    x, u, w, g = draw(2)
    # Inputs 0 and 2 give every unit the largest possible term (3 (1 - 0))^2: a tie for the maximum.
    x[:, [0, 2]], u[:, [0, 2]], w[:, [0, 2]] = 1.0, 3.0, 0.0
    dx, du, dw = cotangents(FUSED[chunking], x, u, w, g, 0.0)
    assert_close((dx, du, dw), plain_cotangents(x, u, w, g))
    np.testing.assert_allclose(du[:, 0], du[:, 2])
    assert not np.any(du[:, 1:2]) and not np.any(du[:, 3:])


def test_forward_is_the_formula_for_every_rho():
    x, u, w, _ = draw(3)
    for rho in (None, 0.0, 0.5, 1.0):
        np.testing.assert_allclose(mwd_unit(x, u, w, rho), plain_values(x, u, w), rtol=1e-6)


def test_leading_axes_and_vmap():
    x, u, w, g = draw(4)
    stacked = np.stack([x, 1 - x])
    np.testing.assert_allclose(mwd_unit(stacked, u, w), [plain_values(x, u, w), plain_values(1 - x, u, w)],
                               rtol=1e-6)

    def grad_x(xs, rho):
        return jax.grad(lambda t: jnp.sum(mwd_unit(t, u, w, rho) * g))(xs)

    batched = jax.jit(jax.vmap(grad_x, in_axes=(0, None)))(stacked, 1.0)
    assert_close([batched[1]], [cotangents(mwd_composed, 1 - x, u, w, g, 1.0)[0]])
    rhos = jax.jit(jax.vmap(grad_x))(stacked, np.array([1.0, 0.0], np.float32))
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


def random_box(seed, radius=0.2):
    """Boxes (BATCH, IN) of random centres and radii up to ``radius``, clipped to [0, 1] (numpy)."""
    rng = np.random.default_rng(seed)
    centre, r = rng.uniform(size=(BATCH, IN)), rng.uniform(0, radius, size=(BATCH, IN))
    return Interval(np.clip(centre - r, 0, 1).astype(np.float32), np.clip(centre + r, 0, 1).astype(np.float32))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interval_upper_bound_is_attained_nearest_each_centre(seed):
    """Per unit, the box point nearest to its centre w attains the upper bound (soundness of the rule is
    checked by tests/test_layer_conformance.py)."""
    _, u, w, _ = draw(seed)
    box = random_box(seed)
    out = jax.tree.map(np.asarray, jax.jit(mwd_interval)(box, u, w))
    nearest = np.clip(w[None], box.lower[:, None, :], box.upper[:, None, :])
    np.testing.assert_allclose(np.exp(-np.max((u * (nearest - w)) ** 2, axis=-1)), out.upper, rtol=1e-6)
    assert np.all(out.lower <= out.upper)


def test_interval_bounds_are_attained():
    _, u, w, _ = draw(5)
    out = jax.jit(mwd_interval)(Interval(np.zeros((1, IN), np.float32), np.ones((1, IN), np.float32)), u, w)
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
    params = MWD(64).init(jax.random.PRNGKey(0), np.zeros((1, IN), np.float32))["params"]
    assert params["u"].shape == params["w"].shape == (64, IN)
    assert 0.2 <= float(params["u"].min()) and float(params["u"].max()) < 0.7
    assert 0.0 <= float(params["w"].min()) and float(params["w"].max()) < 1.0
    wild = {"u": jnp.array([[-1.0, 0.005, 1.0, 5.0]]), "w": jnp.array([[-0.5, 0.3, 1.0, 2.0]])}
    clipped = MWD.project(wild)
    np.testing.assert_allclose(clipped["u"], [[0.01, 0.01, 1.0, 3.0]])
    np.testing.assert_allclose(clipped["w"], [[0.0, 0.3, 1.0, 1.0]])


def test_mixed_layer_negates_its_stored_units():
    x = draw(8)[0]
    layer = MWD(64, "mixed")
    variables = layer.init(jax.random.PRNGKey(0), x)
    bits = np.asarray(variables["constants"]["negate"])
    assert bits.shape == (64,) and "negate" not in variables["params"]
    assert 0 < bits.sum() < 64
    y = plain_values(x, np.asarray(variables["params"]["u"]), np.asarray(variables["params"]["w"]))
    np.testing.assert_allclose(layer.apply(variables, x), y + bits * (1 - 2 * y), rtol=1e-6, atol=1e-7)
    assert not np.array_equal(bits, layer.init(jax.random.PRNGKey(1), x)["constants"]["negate"])
    with pytest.raises(ValueError, match="'constants' collection"):
        layer.apply({"params": variables["params"]}, x)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown MWD kind"):
        MWD(OUT, "nand").init(jax.random.PRNGKey(0), np.zeros((1, IN), np.float32))
    with pytest.raises(ValueError, match="unknown MWD kind"):
        mwd_network((4,), 2, ("u", "nor"))
    with pytest.raises(ValueError, match="one kind per layer"):
        mwd_network((4, 4), 2, ("u", "neg"))


def test_network_built_by_name():
    model = build_model(ml_collections.ConfigDict({"name": "mwd", "hidden": [16], "num_classes": 2,
                                                   "kinds": ["mixed", "neg"]}))
    assert model == mwd_network((16,), 2, ("mixed", "neg"))
    assert isinstance(model.layers[0], Flatten) and model.gradient_modes == ("true", "psd")
    assert [(layer.features, layer.kind) for layer in model.layers[1:]] == [(16, "mixed"), (2, "neg")]
    variables = model.init(jax.random.PRNGKey(0), np.zeros((3, 2, 4), np.float32))
    assert set(variables) == {"params", "constants"}
    assert model.apply(variables, np.ones((3, 2, 4), np.float32), rho=1.0).shape == (3, 2)


def test_tiny_network_learns_with_pseudo_gradients():
    """Two classes told apart by the first two inputs; squared loss on one-hot targets, AdaDelta (lr 5,
    the paper's recipe), projection after every step."""
    x = np.random.default_rng(0).uniform(size=(128, 8)).astype(np.float32)
    targets = np.eye(2, dtype=np.float32)[(x[:, 0] > x[:, 1]).astype(int)]
    model = mwd_network(hidden=(16,), num_classes=2, kinds=("u", "neg"))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
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


def test_rho_reaches_mwd_layers_inside_a_concat_branch():
    """Issue 11: `Concat` called its branches without ``rho``, so an MWD layer in a branch trained on true
    gradients whatever rho said."""
    x, *_ = draw(9)
    model = Sequential((Concat(((), (MWD(OUT, "neg"),))), Dense(2)))
    variables = model.init(jax.random.PRNGKey(0), x)

    @jax.jit
    def mwd_grads(rho):
        return jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x, rho=rho) ** 2))(
            variables["params"])["layers_0"]["branches_1_0"]

    pseudo, true = mwd_grads(1.0), mwd_grads(0.0)
    assert not np.allclose(pseudo["u"], true["u"])
    dense = variables["params"]["layers_1"]

    def by_hand(p, rho):
        hidden = jnp.concatenate([x, 1 - mwd_unit(x, p["u"], p["w"], rho)], axis=-1)
        return jnp.sum((hidden @ dense["kernel"] + dense["bias"]) ** 2)

    for rho, grads in ((1.0, pseudo), (0.0, true)):
        assert_close(jax.tree.leaves(grads), jax.tree.leaves(
            jax.grad(by_hand)(variables["params"]["layers_0"]["branches_1_0"], rho)))


@pytest.mark.parametrize("rho", [0.0, 0.3, 1.0])
def test_a_constant_rho_compiles_only_its_backward_and_equals_the_traced_switch(rho):
    """A mix known when tracing selects its backward pass statically (no conditional in the program, so
    no data-parallel all-reduce inside one); its gradients are those of the same rho passed traced."""
    rng = np.random.default_rng(0)
    x, u, w = (jnp.asarray(rng.uniform(0.0, 1.0, shape), jnp.float32) for shape in ((5, 6), (4, 6), (4, 6)))

    def loss(x, u, w, rho):
        return jnp.sum(jnp.sin(mwd_unit(x, u, w, rho)))

    grads = jax.grad(loss, argnums=(0, 1, 2))
    constant = jax.make_jaxpr(lambda x, u, w: grads(x, u, w, rho))(x, u, w)
    traced = jax.make_jaxpr(grads)(x, u, w, jnp.float32(rho))
    assert "cond" not in str(constant) and "cond" in str(traced)
    for a, b in zip(grads(x, u, w, rho), jax.jit(grads)(x, u, w, jnp.float32(rho))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
