"""The model protocol (`andor_jax.models`): declarations, logits by gradient mode, representations,
architectures by name, projection into composites, the AND/OR LeNet with the author's skip connection."""
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from andor_jax import bounds, models
from andor_jax.layers import Activation, Concat, Dense
from andor_jax.layers.andor import AndActivation, AndOrDense

ARCHITECTURES = ["andor_lenet", "cnn", "lenet", "mlp", "mwd"]


def build(name, **kwargs):
    return models.build_model(ml_collections.ConfigDict({"name": name, **kwargs}))


def digits(batch=4, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(batch, 28, 28, 1)), jnp.float32)


def test_gradient_modes_are_declared_by_the_layers():
    assert build("mlp").gradient_modes == ("true",)
    assert build("andor_lenet").gradient_modes == ("true",)
    assert build("mwd").gradient_modes == ("true", "psd")
    mwd = build("mwd", hidden=[2], num_classes=2, kinds=["u", "neg"])
    nested_mwd = models.Sequential((Dense(3), Concat(((), (mwd,)))))
    assert models.gradient_modes(nested_mwd) == ("true", "psd")
    assert not models.randomised(build("mlp")) and models.submodels(build("mlp")) == ()


def test_asking_for_a_missing_gradient_mode_is_a_clear_error():
    model = build("mlp", hidden=[8])
    x = digits()
    variables = model.init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match=r"no gradient mode 'psd'.*\['true'\]"):
        models.logits(model, variables, x, gradient="psd")
    np.testing.assert_array_equal(models.logits(model, variables, x, gradient="true"), model.apply(variables, x))


def test_true_and_psd_logits_have_the_same_values_and_different_gradients():
    model = build("mwd", hidden=[16], num_classes=3, kinds=["u", "neg"])
    x = digits()
    variables = model.init(jax.random.PRNGKey(1), x)
    values = {mode: models.logits(model, variables, x, gradient=mode) for mode in (None, "true", "psd")}
    np.testing.assert_array_equal(values["true"], values[None])
    np.testing.assert_array_equal(values["psd"], values[None])
    grads = {mode: jax.grad(lambda z: jnp.sum(models.logits(model, variables, z, gradient=mode)[:, 0]))(x)
             for mode in ("true", "psd")}
    assert not np.allclose(grads["true"], grads["psd"])
    np.testing.assert_allclose(grads["true"], jax.grad(lambda z: jnp.sum(model.apply(variables, z, rho=0.0)[:, 0]))(x))


class Noisy(models.Model):
    """A randomised toy model: logits plus noise from the ``"sample"`` stream."""

    randomised = True
    gradient_modes = ("true", "smooth")

    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(x) + jax.random.normal(self.make_rng("sample"), (x.shape[0], 2))

    def logits(self, x, *, gradient=None):
        return jnp.tanh(self(x)) if gradient == "smooth" else self(x)


def test_a_randomised_model_draws_from_the_sample_stream():
    model, x = Noisy(), jnp.ones((3, 4))
    variables = model.init({"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)}, x)
    with pytest.raises(ValueError, match="randomised"):
        models.logits(model, variables, x)
    a, b = (models.logits(model, variables, x, key=jax.random.PRNGKey(k)) for k in (2, 3))
    np.testing.assert_array_equal(a, models.logits(model, variables, x, key=jax.random.PRNGKey(2)))
    assert not np.allclose(a, b)
    np.testing.assert_allclose(models.logits(model, variables, x, key=jax.random.PRNGKey(2), gradient="smooth"),
                               np.tanh(a), rtol=1e-6)


def test_representation_returns_the_tapped_layers_in_order():
    model = build("andor_lenet", skip=True)
    x = digits()
    variables = model.init(jax.random.PRNGKey(2), x)
    eds = model.apply(variables, x, method=models.Sequential.outputs).outputs
    paths = ["layers_8", "layers_9/branches_1_0", "layers_3"]
    tapped = models.representation(model, variables, x, paths)
    expected = np.concatenate([np.asarray(eds[("layers_8",)]), np.asarray(eds[("layers_9", "branches_1_0")]),
                               np.asarray(eds[("layers_3",)]).reshape(4, -1)], axis=1)
    np.testing.assert_array_equal(tapped, expected)
    assert tapped.shape == (4, 120 + 84 + 8 * 8 * 16)
    with pytest.raises(ValueError, match=r"no layer at \['layers_99'\].*layers_9/branches_1_0"):
        models.representation(model, variables, x, ["layers_99"])


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_is_built_by_name(name):
    assert name in models.known_architectures()
    model = build(name)
    assert isinstance(model, models.Sequential) and model == models.architecture(name).get_model()
    x = digits(2)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 10)


def test_unknown_architecture_and_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet'; known: \[.*'andor_lenet'.*'mlp'.*'mwd'"):
        build("resnet")
    with pytest.raises(ValueError, match="unknown architecture 'base'"):
        build("base")
    with pytest.raises(ValueError, match="bad options for architecture 'mlp'.*widths"):
        build("mlp", widths=[3])


def test_layers_import_no_models():
    """The import graph is a DAG: the layer families (and bounds) load without the models package."""
    code = ("import sys; import andor_jax.layers.mwd, andor_jax.layers.andor, andor_jax.bounds, andor_jax.scramble; "
            "print([m for m in sys.modules if m.startswith('andor_jax.models')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_projection_reaches_an_andor_layer_inside_a_concat():
    """Issue 11: `models.project` walked the top level only, so an AND/OR layer in a branch was never
    L1-projected."""
    model = models.Sequential((AndOrDense(6, scale=1.0), AndActivation(),
                               Concat(((), (AndOrDense(4, scale=1.0, budget=0.5), AndActivation()))), Dense(3)))
    x = jnp.ones((2, 5))
    params = model.init(jax.random.PRNGKey(3), x)["params"]
    wild = jax.tree.map(lambda p: 5 * p + 1, params)
    projected = models.project(model, wild)
    inner = np.asarray(projected["layers_2"]["branches_1_0"]["kernel"])
    assert np.all(np.maximum(inner, 0).sum(axis=0) <= 0.5 + 1e-6)
    assert np.all(np.maximum(np.asarray(projected["layers_0"]["kernel"]), 0).sum(axis=0) <= 1 + 1e-6)
    np.testing.assert_array_equal(projected["layers_3"]["kernel"], wild["layers_3"]["kernel"])   # no constraint
    assert not np.allclose(inner, wild["layers_2"]["branches_1_0"]["kernel"])


def test_andor_lenet_with_the_authors_skip_connection():
    plain, skip = build("andor_lenet"), build("andor_lenet", skip=True)
    x = digits(6)
    variables = skip.init(jax.random.PRNGKey(4), x)
    variables = {**variables, "params": models.project(skip, variables["params"])}
    shapes = jax.tree.map(jnp.shape, variables["params"])
    assert shapes["layers_9"]["branches_1_0"]["kernel"] == (120, 84)
    assert shapes["layers_10"]["kernel"] == (120 + 84, 10)
    assert len(skip.layers) == len(plain.layers) - 1
    y = np.asarray(jnp.argmax(skip.apply(variables, x), -1))
    assert bounds.last_affine_layer(skip) == len(skip.layers) - 1
    margins = bounds.margin_lower_bounds(skip, variables, x, y, 0.0, (0.0, 1.0))
    logits = np.asarray(skip.apply(variables, x))
    exact = logits[np.arange(6), y][:, None] - logits
    mask = np.arange(10)[None] != y[:, None]
    np.testing.assert_allclose(np.asarray(margins)[mask], exact[mask], rtol=1e-4, atol=1e-5)
    boxes = bounds.layer_intervals(skip, variables, bounds.input_box(x, 0.01, (0.0, 1.0)))
    assert ("layers_9", "branches_1_1") in boxes and boxes[()].lower.shape == (6, 10)


def test_walk_names_are_the_parameter_keys():
    model = models.Sequential((Dense(3), Activation("relu"), Concat(((), (Dense(2), models.Sequential((Dense(2),)))))))
    params = model.init(jax.random.PRNGKey(5), jnp.ones((1, 4)))["params"]
    from andor_jax.layers.base import walk

    with_params = [path for path, _, p in walk(model, params) if p and not isinstance(p, dict) or
                   (p and all(not isinstance(v, dict) for v in p.values()))]
    assert with_params == [("layers_0",), ("layers_2", "branches_1_0"), ("layers_2", "branches_1_1", "layers_0")]
    leaves = {jax.tree_util.keystr(k[:-1]) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert leaves == {"".join(f"['{n}']" for n in path) for path in with_params}


def test_the_single_channel_convolution_has_xlas_values_and_gradients():
    """`conv2d` of a one-channel input takes its own input gradient (an overlap-add); values, input and kernel
    gradients must be those of XLA's convolution, also inside jit and vmap."""
    from andor_jax.layers import standard

    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 12, 11, 1))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (5, 4, 1, 6))
    reference = lambda inputs, k: jax.lax.conv_general_dilated(  # noqa: E731
        inputs, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(standard.conv2d(x, kernel, (1, 1), "VALID"), reference(x, kernel), rtol=1e-6, atol=1e-6)

    def loss(conv):
        return lambda inputs, k: jnp.sum(jnp.sin(conv(inputs, k)) * jnp.arange(6.0))

    ours = jax.jit(jax.grad(loss(lambda inputs, k: standard.conv2d(inputs, k, (1, 1), "VALID")), argnums=(0, 1)))
    expected = jax.grad(loss(reference), argnums=(0, 1))(x, kernel)
    for got, want in zip(ours(x, kernel), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    per_example = jax.vmap(jax.grad(lambda inputs: loss(lambda v, k: standard.conv2d(v, k, (1, 1), "VALID"))(
        inputs[None], kernel)))(x)
    np.testing.assert_allclose(per_example, expected[0], rtol=1e-5, atol=1e-5)
