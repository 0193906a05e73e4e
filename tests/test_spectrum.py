"""Covariance spectra, the power-law fit, and the spectral regulariser of Nassar et al."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from andor_jax import models, spectrum


def data_with_spectrum(eigenvalues: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` rows whose sample covariance is exactly ``Q diag(eigenvalues) Q^T`` for a random rotation Q:
    whitened Gaussian rows (zero mean, identity sample covariance), scaled, then rotated."""
    rng = np.random.default_rng(seed)
    d = len(eigenvalues)
    z = rng.standard_normal((count, d))
    z -= z.mean(axis=0)
    u, _, vt = np.linalg.svd(z, full_matrices=False)
    white = u @ vt * np.sqrt(count - 1)  # white.T @ white / (count - 1) = I
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (white * np.sqrt(eigenvalues)) @ rotation.T + 3.0  # an offset, removed by the covariance


@pytest.mark.parametrize("alpha", [1.0, 1.47, 2.8])
def test_alpha_of_a_synthetic_power_law_is_recovered(alpha):
    n = np.arange(1, 601, dtype=np.float64)
    x = data_with_spectrum(5.0 * n ** -alpha, count=1500, seed=int(alpha * 100))
    batches = (x[i:i + 256] for i in range(0, len(x), 256))
    values = spectrum.eigenspectrum(spectrum.covariance(batches))
    fit = spectrum.fit_alpha(values)
    assert abs(fit.alpha - alpha) < 0.01
    assert (fit.start, fit.stop) == (11, 500)
    np.testing.assert_allclose(values[:3], 5.0 * n[:3] ** -alpha, rtol=1e-8)


def test_fit_range_is_configurable_and_cut_to_the_spectrum():
    n = np.arange(1, 201, dtype=np.float64)
    values = np.where(n <= 50, n ** -1.0, 50.0 ** -1.0 * (n / 50) ** -3.0)  # a knee at n = 50
    assert abs(spectrum.fit_alpha(values, (2, 50)).alpha - 1.0) < 1e-9
    fit = spectrum.fit_alpha(values, (60, 500))
    assert abs(fit.alpha - 3.0) < 1e-9 and fit.stop == 200
    with pytest.raises(ValueError, match="not positive"):
        spectrum.fit_alpha(np.concatenate([values, np.zeros(400)]))


def test_spectrum_of_the_inputs_and_of_a_layer():
    model = models.build_model(_mlp_config())
    x = jax.random.uniform(jax.random.PRNGKey(0), (300, 8))
    variables = model.init(jax.random.PRNGKey(1), x)
    assert spectrum.default_layer(model, variables) == "layers_1"
    np.testing.assert_allclose(spectrum.spectrum(model, variables, np.asarray(x), "input", batch_size=64),
                               np.linalg.eigvalsh(np.cov(np.asarray(x, np.float64), rowvar=False))[::-1], rtol=1e-6)
    hidden = np.asarray(x, np.float64) @ np.asarray(variables["params"]["layers_1"]["kernel"], np.float64)
    np.testing.assert_allclose(spectrum.spectrum(model, variables, np.asarray(x), "layers_1", batch_size=64)[:5],
                               np.linalg.eigvalsh(np.cov(hidden, rowvar=False))[::-1][:5], rtol=1e-4)


def _mlp_config():
    import ml_collections

    return ml_collections.ConfigDict({"name": "mlp", "hidden": (16,), "activation": "relu"})


def test_plot_writes_a_figure(tmp_path):
    n = np.arange(1, 101, dtype=np.float64)
    records = [spectrum.summary(name, n ** -a, (2, 100)) for name, a in (("a", 1.0), ("b", 2.0))]
    spectrum.plot(records, tmp_path / "spectra.png")
    assert (tmp_path / "spectra.png").stat().st_size > 1000
    assert abs(records[1]["alpha"] - 2.0) < 1e-9


# ----------------------------------------------------------------------- the spectral regulariser

def test_penalty_is_zero_on_the_target_and_its_gradient_points_toward_it():
    from andor_jax.objectives import spectral

    n = jnp.arange(60, dtype=jnp.float32)
    target = 0.7 * (11.0 / (n + 1)) ** 1.0  # lambda_tau = 0.7 at tau = 10, alpha = 1
    settings = dict(alpha=1.0, tau=10, beta=2.0)
    assert float(spectral.penalty(target, **settings)) == pytest.approx(0.0, abs=1e-6)
    off = target * (1 + 0.3 * jnp.sin(n))  # above the target at some n, below at others; lambda_10 moved too
    value, grad = jax.value_and_grad(lambda s: spectral.penalty(s, **settings))(off)
    gamma = spectral.targets(off, 1.0, 10)
    assert float(value) > 0
    beyond = np.arange(60) > 10
    assert np.all(np.sign(grad)[beyond] == np.sign(off - gamma)[beyond])  # descent moves lambda_n toward gamma_n
    assert np.all(np.asarray(grad)[~beyond] == 0)  # the head (and the anchor) are free
    assert float(spectral.penalty(off - 1e-3 * grad, **settings)) < float(value)
    # overshooting the target costs more than undershooting it by as much (the relu term)
    above = target.at[30].multiply(1.2)
    below = target.at[30].multiply(0.8)
    assert float(spectral.penalty(above, **settings)) > float(spectral.penalty(below, **settings)) > 0
    # Holzhausen et al.'s variant: gamma_n = (n + 1)^-alpha without the anchor
    assert float(spectral.penalty((n + 1) ** -1.5, alpha=1.5, tau=1, beta=1.0, anchored=False)) == pytest.approx(0.0, abs=1e-6)


def test_batch_eigenvalues_in_the_eigenbasis_are_the_spectrum():
    from andor_jax.objectives import spectral

    n = np.arange(1, 31, dtype=np.float64)
    x = data_with_spectrum(n ** -1.2, count=400)
    basis = spectral.eigenbasis(spectrum.covariance([x]))
    np.testing.assert_allclose(spectral.batch_eigenvalues(jnp.asarray(x), jnp.asarray(basis)), n ** -1.2, rtol=1e-3)


def test_spectral_objective_trains_through_the_engine(tmp_path, synthetic_mnist_dir):
    import json

    from andor_jax import config as config_lib, experiment

    config = config_lib.load_config("specreg_2000_mnist:small")
    state = experiment.fit(config, tmp_path, data_dir=str(synthetic_mnist_dir), progress=False)
    basis = np.asarray(state.objective_state["basis"])
    assert basis.shape == (64, 64) and not np.allclose(basis, np.eye(64))  # set by on_epoch
    np.testing.assert_allclose(basis.T @ basis, np.eye(64), atol=1e-4)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[-1]["train_spectral_penalty"] > 0
    assert records[-1]["train_loss"] == pytest.approx(records[-1]["train_task_loss"]
                                                      + records[-1]["train_spectral_penalty"], rel=1e-4)


def test_spectrum_command_writes_json_and_png(tmp_path, synthetic_mnist_dir):
    import json

    from andor_jax import cli, config as config_lib, experiment

    config = config_lib.apply_overrides(config_lib.load_config("backprop_2000_mnist:small"), ["train.epochs=1"])
    experiment.fit(config, tmp_path / "run", data_dir=str(synthetic_mnist_dir), progress=False)
    assert cli.main(["spectrum", "--workdir", str(tmp_path / "run"), "--fit", "2:30", "--random-init",
                     "--data-dir", str(synthetic_mnist_dir)]) == 0
    records = json.loads((tmp_path / "run" / "spectrum.json").read_text())["records"]
    assert [r["name"] for r in records] == ["run layers_1", "run layers_1 (random init)", "pixels"]
    assert all(r["fit_range"] == [2, 30] and np.isfinite(r["alpha"]) for r in records)
    assert records[0]["dimension"] == 64 and records[2]["dimension"] == 784
    assert (tmp_path / "run" / "spectrum.png").stat().st_size > 1000
    assert cli.main(["spectrum", "--workdir", str(tmp_path / "run"), "--fit", "30:2"]) == 2
    # two data sets in one figure: the pixels of each, named (the synthetic files stand in for Fashion-MNIST's)
    other = config_lib.apply_overrides(config, ["data.dataset=fashion_mnist"])
    experiment.fit(other, tmp_path / "other", data_dir=str(synthetic_mnist_dir), progress=False)
    assert cli.main(["spectrum", "--workdir", str(tmp_path / "run"), "--workdir", str(tmp_path / "other"),
                     "--fit", "2:30", "--output", str(tmp_path / "both")]) == 0
    names = [r["name"] for r in json.loads((tmp_path / "both" / "spectrum.json").read_text())["records"]]
    assert names == ["run layers_1", "other layers_1", "pixels (mnist)", "pixels (fashion_mnist)"]


# ------------------------------------------------- Holzhausen et al.'s protocol: critical perturbations

def test_critical_perturbation_of_a_linear_model_is_found_by_bisection():
    from andor_jax.evaluators import critical

    # logits (x.w, -x.w): class 0 while x.w > 0; the smallest L-inf change flipping it is eps* = x.w / ||w||_1
    rng = np.random.default_rng(0)
    w = rng.standard_normal(16)
    w = (w - w.mean()).astype(np.float32)  # sum 0: the grey image 0.5 lies on the boundary
    x = (0.5 + np.linspace(0.02, 0.3, 12)[:, None] * np.sign(w)).astype(np.float32)  # eps* = 0.02 .. 0.3
    y = np.zeros(12, np.int32)
    logits_fn = jax.jit(lambda v: jnp.stack([v @ w, -(v @ w)], axis=-1))
    exact = (x @ w) / np.abs(w).sum()
    assert np.all(exact > 0.015) and np.all(x > 0.05) and np.all(x < 0.95)  # no clipping at the domain's edge
    assert len(critical.correctly_classified(logits_fn, x, y)) == 12
    grid = critical.log_grid(0.01, 0.5, 10)
    result = critical.critical_perturbations(logits_fn, x, y, jax.random.PRNGKey(0), grid=grid, bisection_steps=4)
    found = np.asarray(result["critical_eps"])
    ratio = (0.5 / 0.01) ** (1 / 9 / 2 ** 4)  # the bracket's ratio after 4 log-bisections of a grid step
    assert np.all(found >= exact * (1 - 1e-4)) and np.all(found <= exact * ratio * (1 + 1e-4))
    np.testing.assert_allclose(result["relative_accuracy"], [(exact > e).mean() for e in grid], atol=1 / 12 + 1e-9)
    assert result["median_critical_eps"] == pytest.approx(np.median(found))
    assert critical.padded_size(5, 256) == 8 and critical.padded_size(300, 256) == 256
    with pytest.raises(ValueError, match="log scale"):
        critical.critical_perturbations(logits_fn, x, y, jax.random.PRNGKey(0), grid=[0.0, 0.1])


def test_report_entry_names_the_hidden_layer_and_its_alpha():
    import ml_collections

    from andor_jax.models import krotov as krotov_model

    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (120, 784)))
    model = krotov_model.get_model(units=40)
    variables = model.init(jax.random.PRNGKey(1), x[:1])
    entry = spectrum.report_entry(model, variables, x)
    assert entry["layer"] == "layers_1" and entry["fit_range"] == [11, 40] and np.isfinite(entry["alpha"])
    assert entry["local_layers"][0]["units"] == 40
    linear = models.build_model(ml_collections.ConfigDict({"name": "mlp", "hidden": ()}))
    assert spectrum.report_entry(linear, linear.init(jax.random.PRNGKey(0), x[:1]), x) is None


def test_report_shows_alpha_and_the_local_layer_diagnostic():
    from andor_jax import report

    entry = {"examples": {"description": "first 100 test examples", "count": 100, "indices_digest": "a",
                          "data_digest": "b"},
             "spectrum": {"layer": "layers_1", "alpha": 1.234, "fit_range": [11, 99], "examples": 100,
                          "local_layers": [{"layer": "layers_1", "units": 2000, "p": 3.0, "radius": 1.0,
                                            "off_norm_fraction": 0.05, "negative_units": 0.0, "accepted": True}]}}
    text = "\n".join(report.format_entry(entry))
    assert "alpha **1.234**" in text and "n = 11..99" in text and "accepted" in text
