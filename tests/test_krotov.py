"""Krotov-Hopfield local learning: the update rule by hand, convergence to unit p-norm, interval rules."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from andor_jax.interval import Interval
from andor_jax.layers import krotov
from conftest import synthetic_digits

KERNEL = np.array([[1.0, 0.0, -1.0, 0.5],
                   [0.5, 1.0, 0.0, 0.0],
                   [0.0, -0.5, 1.0, 1.0]], np.float32)
BATCH = np.array([[1.0, 0.0, 1.0, 0.0],
                  [0.0, 1.0, 0.0, 0.0]], np.float32)


def test_local_update_matches_a_hand_computation():
    # p = 3: effective weights sgn(W)|W|^2 = [[1, 0, -1, .25], [.25, 1, 0, 0], [0, -.25, 1, 1]].
    # Example 1: currents (0, .25, 1): unit 2 wins (+1), unit 1 is 2nd (-0.4).
    # Example 2: currents (0, 1, -.25): unit 1 wins, unit 0 is 2nd.
    # sum_b g I = (0, -.4 * .25 + 1, 1) = (0, .9, 1); g^T v rows: (0,-.4,0,0), (-.4,1,-.4,0), (1,0,1,0).
    expected = np.array([[0.0, -0.4, 0.0, 0.0],
                         [-0.4 - 0.9 * 0.5, 1.0 - 0.9, -0.4, 0.0],
                         [1.0, 0.5, 0.0, -1.0]], np.float32)  # max |dW| = 1
    np.testing.assert_allclose(krotov.currents(KERNEL, BATCH, 3.0), [[0, .25, 1], [0, 1, -.25]], atol=1e-6)
    np.testing.assert_allclose(krotov.winner_gains(krotov.currents(KERNEL, BATCH, 3.0), 2, 0.4),
                               [[0, -.4, 1], [-.4, 1, 0]], atol=1e-6)
    update = krotov.local_update(KERNEL, BATCH, p=3.0, k=2, delta=0.4)
    np.testing.assert_allclose(update, expected, atol=1e-6)
    # doubling the inputs doubles dW, which the division by max|dW| (then 2) undoes
    np.testing.assert_allclose(krotov.local_update(KERNEL, 2 * BATCH, p=3.0, k=2, delta=0.4), expected, atol=1e-6)


def test_radius_scales_the_hebbian_term():
    # R^p v - I W: with R = 2 and p = 3 the Hebbian term is 8 g^T v
    gains = krotov.winner_gains(krotov.currents(KERNEL, BATCH, 3.0), 2, 0.4)
    drive = np.sum(gains * krotov.currents(KERNEL, BATCH, 3.0), axis=0)
    change = 8 * gains.T @ BATCH - drive[:, None] * KERNEL
    np.testing.assert_allclose(krotov.local_update(KERNEL, BATCH, p=3.0, k=2, delta=0.4, radius=2.0),
                               change / np.abs(change).max(), atol=1e-6)


def test_layer_outputs_currents_of_normalised_inputs():
    layer = krotov.KrotovHopfield(units=3, p=3.0)
    variables = {"params": {"kernel": jnp.asarray(KERNEL)}}
    x = 5.0 * BATCH
    unit = BATCH / np.array([[2 ** (1 / 3)], [1.0]], np.float32)  # rows scaled to unit L3 norm
    np.testing.assert_allclose(layer.apply(variables, x), krotov.currents(KERNEL, unit, 3.0), atol=1e-6)
    assert layer.init(jax.random.PRNGKey(0), x)["params"]["kernel"].shape == (3, 4)


def test_training_on_a_tiny_data_set_converges_to_unit_p_norm():
    images, _ = synthetic_digits(300, 0)
    v = krotov.lp_normalise(jnp.asarray(images.reshape(300, -1) / 255.0, jnp.float32), 3.0)
    kernel = jax.random.normal(jax.random.PRNGKey(0), (5, 784))  # N(0, 1): ||W_mu||_3 ~ 11
    steps = 100 * 6

    @jax.jit
    def step(kernel, batch, t):
        return kernel + 0.1 * (1 - t / steps) * krotov.local_update(kernel, batch, p=3.0, k=2, delta=0.4)

    before = krotov.convergence(kernel, 3.0)
    for t in range(steps):
        kernel = step(kernel, v[(t % 6) * 50:(t % 6 + 1) * 50], t)
    after = krotov.convergence(kernel, 3.0)
    assert float(before["off_norm_fraction"]) == 1.0 and not krotov.accepted(before)
    assert float(after["off_norm_fraction"]) == 0.0 and krotov.accepted(after)
    np.testing.assert_allclose(krotov.lp_norm(kernel, 3.0), 1.0, atol=0.01)


def test_convergence_counts_negative_units():
    kernel = np.ones((4, 8), np.float32) / 8 ** (1 / 3)  # unit L3 norm, mean > 0
    kernel[1] = -0.6
    kernel[2, :5] *= -1  # sum of sgn(w) w^2 over 8 equal weights: 3 - 5 < 0
    diagnostic = krotov.convergence(kernel, 3.0)
    assert float(diagnostic["negative_units"]) == 1.0
    assert float(diagnostic["inhibitory_fraction"]) == 0.5  # rows 1 and 2
    assert float(diagnostic["off_norm_fraction"]) == 0.25
    assert not krotov.accepted(diagnostic)


@pytest.mark.parametrize("normalise", [True, False])
def test_layer_interval_contains_sampled_points(normalise):
    key = jax.random.PRNGKey(1)
    layer = krotov.KrotovHopfield(units=5, p=3.0, normalise_inputs=normalise)
    x = jax.random.uniform(key, (6, 12))
    variables = layer.init(key, x)
    eps = 0.2
    lower, upper = jnp.clip(x - eps, 0, 1), jnp.clip(x + eps, 0, 1)
    bounds = layer.apply(variables, Interval(lower, upper), method=krotov.KrotovHopfield.interval)
    samples = lower + (upper - lower) * jax.random.uniform(jax.random.PRNGKey(2), (200, *x.shape))
    outputs = jax.vmap(lambda s: layer.apply(variables, s))(samples)
    assert bool(jnp.all(outputs >= bounds.lower - 1e-5)) and bool(jnp.all(outputs <= bounds.upper + 1e-5))
    point = layer.apply(variables, Interval(x, x), method=krotov.KrotovHopfield.interval)
    np.testing.assert_allclose(point.lower, layer.apply(variables, x), rtol=1e-5, atol=1e-5)  # exact at eps 0
    np.testing.assert_allclose(point.upper, layer.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_lp_normalise_interval_handles_signs_and_zero():
    lower = jnp.array([[-1.0, 0.5, -0.2], [0.0, 0.0, 0.0]])
    upper = jnp.array([[-0.5, 1.0, 0.3], [0.1, 0.2, 0.0]])
    bounds = krotov.lp_normalise_interval(Interval(lower, upper), 3.0)
    samples = lower + (upper - lower) * jax.random.uniform(jax.random.PRNGKey(0), (500, 2, 3))
    outputs = krotov.lp_normalise(samples, 3.0)
    assert bool(jnp.all(outputs >= bounds.lower - 1e-6)) and bool(jnp.all(outputs <= bounds.upper + 1e-6))
    np.testing.assert_allclose(bounds.lower[1], -1.0)  # the box reaches the zero row


def test_power_activation_interval_contains_sampled_points():
    layer = krotov.Power(4.5)
    lower = jnp.array([-1.0, -0.3, 0.2, 0.0])
    upper = jnp.array([-0.5, 0.4, 0.9, 1.5])
    bounds = layer.apply({}, Interval(lower, upper), method=krotov.Power.interval)
    samples = lower + (upper - lower) * jax.random.uniform(jax.random.PRNGKey(0), (300, 4))
    outputs = layer.apply({}, samples)
    assert bool(jnp.all(outputs >= bounds.lower)) and bool(jnp.all(outputs <= bounds.upper))
    np.testing.assert_allclose(bounds.upper, [0.0, 0.4 ** 4.5, 0.9 ** 4.5, 1.5 ** 4.5], rtol=1e-6)
    np.testing.assert_allclose(layer.apply({}, jnp.array([-2.0, 2.0])), [0.0, 2.0 ** 4.5], rtol=1e-6)


# ------------------------------------------------------------------------- through the training engine

def test_local_phase_then_readout_through_the_engine(tmp_path, synthetic_mnist_dir, capsys):
    from andor_jax import config as config_lib, experiment

    data_dir = str(synthetic_mnist_dir)
    local = config_lib.apply_overrides(config_lib.load_config("krotov_mnist:small"),
                                       ["model.units=12", "train.krotov.k=3"])
    before = experiment.Experiment(local, data_dir=data_dir).init_state().params
    state = experiment.fit(local, tmp_path / "local", data_dir=data_dir, progress=False)
    kernel = np.asarray(state.params["layers_1"]["kernel"])
    # exactly Krotov's step: SGD at lr 1 applies eps_t dW/max|dW| with eps_t <= eps_0, so no entry moves further
    steps, eps_0 = int(state.step), local.train.krotov.learning_rate
    assert 0 < np.abs(kernel - before["layers_1"]["kernel"]).max() <= eps_0 * steps + 1e-5
    np.testing.assert_array_equal(state.params["layers_3"]["kernel"], before["layers_3"]["kernel"])
    norms_before, norms_after = krotov.lp_norm(before["layers_1"]["kernel"], 3.0), krotov.lp_norm(kernel, 3.0)
    assert float(jnp.mean(norms_after)) < float(jnp.mean(norms_before))  # N(0, 1) norms ~11 shrink toward R = 1
    record = [json.loads(line) for line in (tmp_path / "local" / "metrics.jsonl").read_text().splitlines()][-1]
    assert 0.0 < record["train_learning_rate"] < eps_0  # decaying linearly to 0
    printed = capsys.readouterr().err  # the diagnostic at the start of every epoch
    assert "epoch 2 start: layers_1: " in printed and "of units off ||W||_3 = 1 by > 0.01" in printed

    readout = config_lib.apply_overrides(config_lib.load_config("krotov_readout_mnist:small"),
                                         ["model.units=12", f"train.init_from={tmp_path / 'local'}"])
    state = experiment.fit(readout, tmp_path / "readout", data_dir=data_dir, progress=False)
    np.testing.assert_array_equal(state.params["layers_1"]["kernel"], kernel)  # the local layer stays frozen
    assert np.abs(np.asarray(state.params["layers_3"]["kernel"]) - before["layers_3"]["kernel"]).max() > 0

    from andor_jax import evaluation

    evaluation.evaluate(tmp_path / "readout", data_dir=data_dir, attacks=["fgsm"], eps=[0.05], limit=40,
                        convergence_check=False, progress=False)
    (section,) = json.loads((tmp_path / "readout" / "report.json").read_text())["example_sets"].values()
    [diagnostic] = section["spectrum"]["local_layers"]
    assert diagnostic["layer"] == "layers_1" and 0.0 <= diagnostic["inhibitory_fraction"] <= 1.0
    assert (tmp_path / "readout" / section["spectrum"]["receptive_fields"]).stat().st_size > 1000
    assert "inhibitory" in (tmp_path / "readout" / "report.md").read_text()


def test_local_layer_diagnostic_and_receptive_fields(tmp_path):
    from andor_jax.evaluators import local
    from andor_jax.models import krotov as krotov_model

    model = krotov_model.get_model(units=6)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))
    kernel = np.array(variables["params"]["layers_1"]["kernel"])
    kernel[:5] /= np.asarray(krotov.lp_norm(kernel[:5], 3.0))[:, None]  # 5 of 6 units on the unit L3 sphere
    variables = {"params": {**variables["params"], "layers_1": {"kernel": jnp.asarray(kernel)}}}
    [record] = local.local_layers(model, variables)
    assert record["layer"] == "layers_1" and record["units"] == 6
    assert record["off_norm_fraction"] == pytest.approx(1 / 6) and not record["accepted"]
    local.plot_receptive_fields(kernel, tmp_path / "fields.png")
    assert (tmp_path / "fields.png").stat().st_size > 1000
