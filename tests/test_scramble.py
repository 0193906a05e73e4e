"""Scrambled propagation (Fontana): EDS, SDS of types A and B, hypersat, participation factor, loss2,
gradients, and the diagnostics built on them.

Compilation dominates the cost of these tests, so everything about the tiny network is computed by one
jit-compiled function (the ``walked`` fixture) and the tests check its parts.
"""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from andor_jax import diagnostics, scramble
from andor_jax.layers.andor import AndActivation, AndOrConv, AndOrDense
from andor_jax.layers.standard import Activation, BatchNorm, Concat, Dense, Flatten, MaxPool
from andor_jax.models import Sequential, project

BATCH, SCRAMBLES, SDS_SIZE = 16, 3, 5


def tiny_andor():
    """8x8x1 -> conv 3 k3 (layer 0) -> pool -> and -> flatten (27) -> dense 6 (layer 4) -> and -> dense 3."""
    return Sequential((AndOrConv(3, kernel_size=(3, 3), scale=1.0), MaxPool((2, 2)), AndActivation(), Flatten(),
                       AndOrDense(6, scale=1.0), AndActivation(), AndOrDense(3, scale=1.0)))


L0, L4, L6 = ("layers_0",), ("layers_4",), ("layers_6",)


def walk(model, variables, x, keys):
    """Everything the tests check about one network, in one function to compile."""
    params = variables["params"]
    eds = scramble.extended_dataset(model, variables, x)
    partfs = scramble.participation(model, variables, x)

    def loss2(p, kind):
        nics = scramble.layer_nics(model, {"params": p}, eds, keys, list(partfs), kind=kind)
        return scramble.loss2({i: scramble.hypersat(*nics[i]) for i in partfs}, partfs)

    def type_b_of_layer_4(p):
        eds_p = scramble.extended_dataset(model, {"params": p}, x)
        return jnp.sum(scramble.sds_layer(model, {"params": p}, L4, eds_p.inputs[L4], keys))

    return {
        "eds": eds,
        "outputs": model.apply(variables, x, method=Sequential.outputs),
        "type_a": scramble.sds_type_a(model, variables, x, keys, size=SDS_SIZE),
        "type_b": scramble.sds_type_b(model, variables, eds, keys, size=SDS_SIZE),
        "type_a_input_grad": jax.grad(lambda x: jnp.sum(scramble.sds_type_a(model, variables, x, keys).outputs[()]))(x),
        "type_b_param_grads": jax.grad(type_b_of_layer_4)(params),
        "partfs": partfs,
        "magnitude_grads": jax.grad(lambda p: jnp.mean(jnp.abs(model.apply({"params": p}, x))))(params),
        "loss2_grads": {kind: jax.grad(loss2)(params, kind) for kind in scramble.SCRAMBLE_KINDS},
    }


@pytest.fixture(scope="module")
def net():
    model = tiny_andor()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (BATCH, 8, 8, 1)), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(1), x)["params"]
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.05, 0.3, s.shape), jnp.float32), shapes)
    return model, {"params": jax.jit(lambda p: project(model, p))(params)}, x


@pytest.fixture(scope="module")
def walked(net):
    model, variables, x = net
    keys = jax.random.split(jax.random.PRNGKey(3), SCRAMBLES)
    return jax.jit(lambda v, x, k: walk(model, v, x, k))(variables, x, keys)


def coded(shape):
    """values[b, n] = 1000 b + n: an entry tells which example and which neuron it came from."""
    batch, neurons = shape[0], int(np.prod(shape[1:]))
    return (1000.0 * np.arange(batch)[:, None] + np.arange(neurons)[None]).reshape(shape)


def drawn_from(scrambled, real) -> bool:
    """Whether every scrambled value equals the real value of some example at the same neuron."""
    real = np.asarray(real).reshape(real.shape[0], -1)
    flat = np.asarray(scrambled).reshape(-1, real.shape[1])
    return bool(np.all(np.any(np.isclose(flat[:, None, :], real[None], rtol=0, atol=1e-6), axis=1)))


# ------------------------------------------------------------------------------------------------ EDS/SDS

def test_eds_is_every_layer_input_and_output(net, walked):
    model, variables, x = net
    eds = walked["eds"]
    paths = [(f"layers_{i}",) for i in range(len(model.layers))]
    assert set(eds.outputs) == set(eds.inputs) == {(), *paths}
    jax.tree.map(np.testing.assert_array_equal, eds, walked["outputs"])
    np.testing.assert_array_equal(eds.inputs[()], x)
    np.testing.assert_array_equal(eds.inputs[paths[0]], x)
    for before, after in zip(paths, paths[1:]):
        np.testing.assert_array_equal(eds.inputs[after], eds.outputs[before])
    np.testing.assert_allclose(eds.outputs[()], model.apply(variables, x), rtol=1e-6)
    np.testing.assert_array_equal(eds.outputs[()], eds.outputs[paths[-1]])


@pytest.mark.parametrize("unit", scramble.SCRAMBLE_UNITS)
def test_scramble_draws_each_unit_from_some_example(unit):
    values = jnp.asarray(coded((BATCH, 4, 5, 3)))
    out = np.asarray(scramble.scramble(jax.random.PRNGKey(2), values, size=40, unit=unit))
    assert out.shape == (40, 4, 5, 3)
    example, neuron = np.divmod(out, 1000)
    np.testing.assert_array_equal(neuron, np.broadcast_to(np.arange(60).reshape(4, 5, 3), out.shape))
    assert example.min() >= 0 and example.max() < BATCH
    shared_over = {"element": (), "location": (3,), "channel": (1, 2)}[unit]   # axes drawn from one example
    if shared_over:
        assert np.all(np.ptp(example, axis=shared_over) == 0)
    if unit != "channel":
        assert np.ptp(example, axis=(1, 2)).max() > 0
    if unit != "location":
        assert np.ptp(example, axis=3).max() > 0
    with pytest.raises(ValueError, match="unknown scrambling unit"):
        scramble.scramble(jax.random.PRNGKey(2), values, unit="pixel")


def test_random_indices_are_exact_and_uniform():
    key = jax.random.PRNGKey(3)
    draws = np.asarray(scramble.random_indices(key, (200_000,), 200))
    bits = np.asarray(jax.random.bits(scramble.bit_generator_key(key), (200_000,), jnp.uint32))
    np.testing.assert_array_equal(draws, (bits.astype(np.uint64) * 200) >> 32)   # floor(r n / 2^32), exactly
    counts = np.bincount(draws, minlength=200)
    assert counts.size == 200 and np.all(np.abs(counts - 1000) < 6 * np.sqrt(1000))
    with pytest.raises(ValueError, match="65535"):
        scramble.random_indices(key, (3,), 2**16)


def test_sds_shapes_and_provenance(net, walked):
    model, _, _ = net
    eds = walked["eds"]
    shapes = {p: (SCRAMBLES, SDS_SIZE, *e.shape[1:]) for p, e in eds.outputs.items()}
    assert {p: s.shape for p, s in walked["type_a"].outputs.items()} == shapes
    assert {p: s.shape for p, s in walked["type_b"].items()} == {p: s for p, s in shapes.items() if p}
    assert drawn_from(walked["type_a"].inputs[()], eds.inputs[()])
    for index, layer in enumerate(model.layers):   # type B through elementwise layers: real values too
        if isinstance(layer, AndActivation):
            assert drawn_from(walked["type_b"][(f"layers_{index}",)], eds.outputs[(f"layers_{index}",)])


def test_scrambled_values_carry_no_gradient(walked):
    assert np.all(walked["type_a_input_grad"] == 0)
    grads = walked["type_b_param_grads"]                 # type B SDS of layer 4, EDS recomputed from params
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads["layers_0"]))
    assert np.any(grads["layers_4"]["kernel"] != 0)


# ------------------------------------------------------------------------------------------------ statistics

def test_hypersat_is_zero_without_correlations_and_positive_with_them():
    """Neurons of one input each (a diagonal kernel) see the same distribution under EDS and SDS; a
    neuron averaging 10 copies of one Bernoulli input sees nics in {0, 1} (K = 0.96) under EDS and
    Binomial(10, 1/2) / 10 under SDS (E[K] about 0.4)."""
    rng = np.random.default_rng(6)
    x = rng.uniform(size=(4000, 10)).astype(np.float32)
    bits = rng.integers(0, 2, (4000, 1))
    copies = np.clip(bits + 0.01 * rng.normal(size=(4000, 10)), 0, 1).astype(np.float32)
    layer = Sequential((AndOrDense(11, scale=1.0),))
    kernel = jnp.concatenate([jnp.eye(10), jnp.full((10, 1), 0.1)], axis=1)   # 10 diagonal, 1 averaging
    variables = {"params": {"layers_0": {"kernel": kernel, "bias": jnp.zeros(11)}}}

    def nics(x, keys):
        eds = scramble.extended_dataset(layer, variables, x)
        (result,) = scramble.layer_nics(layer, variables, eds, keys, [L0]).values()
        return result

    @jax.jit
    def hypersats(x, copies, keys):
        independent, correlated = nics(x, keys), nics(copies, keys)
        return scramble.hypersat(*independent)[:10], scramble.hypersat(*correlated)[10]

    independent, correlated = hypersats(x, copies, jax.random.split(jax.random.PRNGKey(6), 4))
    assert np.all(np.abs(independent) < 0.02)
    assert float(correlated) > 0.4


def test_neuron_layers_and_their_consumers(net):
    model, variables, x = net
    assert scramble.neuron_layers(model, variables, x) == {L0: (L4,), L4: (L6,), L6: ()}
    with_norm = Sequential((Dense(4), BatchNorm(), Activation("relu"), Dense(2)))
    x = jnp.zeros((2, 3))
    norm_variables = jax.eval_shape(with_norm.init, jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="no connection weights"):
        scramble.neuron_layers(with_norm, norm_variables, x)


def test_participation_sums_absolute_gradients_of_outgoing_connections(walked):
    partf, grads = walked["partfs"], walked["magnitude_grads"]
    assert sorted(partf) == [L0, L4]
    dense = np.abs(np.asarray(grads["layers_6"]["kernel"]))                    # (6, 3): neuron i's row
    np.testing.assert_allclose(partf[L4], dense.sum(axis=1), rtol=1e-5)
    flat = np.abs(np.asarray(grads["layers_4"]["kernel"])).reshape(3, 3, 3, 6)  # (h, w, channel, out)
    np.testing.assert_allclose(partf[L0], flat.sum(axis=(0, 1, 3)), rtol=1e-5)


def test_loss2_by_hand():
    loss = scramble.loss2({0: jnp.array([0.5, 0.1]), 3: jnp.array([0.2])},
                          {0: jnp.array([1.0, 2.0]), 3: jnp.array([3.0])})
    assert float(loss) == pytest.approx(1 - (0.5 + 0.2 + 0.6) / 3)


@pytest.mark.parametrize("kind", scramble.SCRAMBLE_KINDS)
def test_loss2_gradient_reaches_every_scored_layer(walked, kind):
    grads = walked["loss2_grads"][kind]
    for (name,) in walked["partfs"]:
        assert np.any(grads[name]["kernel"] != 0), name
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads["layers_6"]))   # no outgoing connections


@pytest.mark.skipif(importlib.util.find_spec("andor_jax.layers.mwd") is None, reason="no MWD layers")
def test_scrambling_works_on_mwd_networks():
    from andor_jax.models.mwd import get_model

    model = get_model(hidden=(6,), kinds=("u", "neg"))
    x = jnp.zeros((BATCH, 3, 3))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(9), x)   # tracing checks the walk, cheaply

    def mwd_walk(variables, x, keys):
        eds = scramble.extended_dataset(model, variables, x)
        return eds, scramble.sds_type_b(model, variables, eds, keys), scramble.participation(model, variables, x)

    eds, sds, partfs = jax.eval_shape(mwd_walk, variables, x, jax.random.split(jax.random.PRNGKey(10), 2))
    assert {p: s.shape[2:] for p, s in sds.items()} == {p: e.shape[1:] for p, e in eds.outputs.items() if p}
    assert partfs[("layers_1",)].shape == (6,)


# ------------------------------------------------------------------------------------------------ diagnostics

def test_histograms_and_andness_summary(net, tmp_path):
    model, variables, x = net
    samples = diagnostics.nics_samples(model, variables, x, jax.random.PRNGKey(11), num_scrambles=2)
    assert sorted(samples) == [L0, L4, L6] and samples[L4][1].shape == (2, BATCH, 6)
    summary = diagnostics.andness_summary(model, samples)
    assert summary["layers"]["layers_4"]["type"] == "AndOrDense" and summary["layers"]["layers_4"]["neurons"] == 6
    assert isinstance(summary["mean_hypersat"], float)
    path = diagnostics.plot_nics_histograms(model, samples, tmp_path / "nics.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------ composites

def test_scrambling_and_participation_reach_into_a_skip_connection():
    """Issue 11: the author's fc3 + fc4 skip into the last layer.  fc3 (layer 0) feeds fc4 inside the
    branch and the last layer through the skip; its participation sums both sets of outgoing connections."""
    branch = ("layers_2", "branches_1_0")
    model = Sequential((AndOrDense(6, scale=1.0), AndActivation(),
                        Concat(((), (AndOrDense(4, scale=1.0), AndActivation()))), AndOrDense(3, scale=1.0)))
    rng = np.random.default_rng(12)
    x = jnp.asarray(rng.uniform(size=(BATCH, 5)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(12), x)
    keys = jax.random.split(jax.random.PRNGKey(13), SCRAMBLES)
    assert scramble.neuron_layers(model, variables, x) == {L0: (branch, ("layers_3",)), branch: (("layers_3",),),
                                                           ("layers_3",): ()}

    @jax.jit
    def everything(variables, x, keys):
        eds = scramble.extended_dataset(model, variables, x)
        partfs = scramble.participation(model, variables, x)
        grads = jax.grad(lambda p: jnp.mean(jnp.abs(model.apply({"params": p}, x))))(variables["params"])

        def loss2(p, kind):
            nics = scramble.layer_nics(model, {"params": p}, eds, keys, list(partfs), kind=kind)
            return scramble.loss2({i: scramble.hypersat(*nics[i]) for i in partfs}, partfs)

        return (eds, scramble.sds_type_b(model, variables, eds, keys), partfs, grads,
                {kind: jax.grad(loss2)(variables["params"], kind) for kind in scramble.SCRAMBLE_KINDS})

    eds, sds, partfs, grads, loss2_grads = everything(variables, x, keys)
    np.testing.assert_array_equal(eds.inputs[branch], eds.outputs[("layers_1",)])
    np.testing.assert_array_equal(eds.outputs[("layers_2",)][:, 6:], eds.outputs[("layers_2", "branches_1_1")])
    assert drawn_from(sds[("layers_2", "branches_1_1")], eds.outputs[("layers_2", "branches_1_1")])
    assert sds[branch].shape == (SCRAMBLES, BATCH, 4)
    last = np.abs(np.asarray(grads["layers_3"]["kernel"]))                 # (6 + 4, 3)
    inner = np.abs(np.asarray(grads["layers_2"]["branches_1_0"]["kernel"]))  # (6, 4)
    assert sorted(partfs) == [L0, branch]
    np.testing.assert_allclose(partfs[L0], inner.sum(axis=1) + last[:6].sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(partfs[branch], last[6:].sum(axis=1), rtol=1e-5)
    for kind, g in loss2_grads.items():
        assert np.any(g["layers_2"]["branches_1_0"]["kernel"] != 0) and np.any(g["layers_0"]["kernel"] != 0), kind
