"""The training engine: losses, optimisers, determinism, resumption, data parallelism, projections."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from andor_jax import checkpoint, config as config_lib, experiment, models, train
from andor_jax.layers import Dense


def small_config(**train_overrides) -> ml_collections.ConfigDict:
    config = config_lib.base_config()
    config.model.name = "mlp"
    config.model.hidden = (32,)
    config.train.epochs = 2
    config.train.batch_size = 40
    config.train.checkpoint_every_steps = 10
    config.train.log_every_steps = 5
    config.data.source = "dir"
    for key, value in train_overrides.items():
        config.train[key] = value
    return config


def params_of(workdir, config, data_dir):
    _, variables = experiment.load_trained(workdir, data_dir=str(data_dir))
    return variables["params"]


def test_squared_error_matches_hand_computation():
    outputs = jnp.array([[0.2, 0.9], [0.6, 0.1]])
    labels = jnp.array([1, 1])
    # example 1: 0.2^2 + 0.1^2 = 0.05; example 2: 0.6^2 + 0.9^2 = 1.17
    assert float(train.squared_error(outputs, labels)) == pytest.approx((0.05 + 1.17) / 2)


def test_cross_entropy_is_mean_negative_log_softmax():
    logits = jnp.array([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    labels = jnp.array([1, 2])
    expected = -np.mean([jax.nn.log_softmax(logits[0])[1], np.log(1 / 3)])
    assert float(train.cross_entropy(logits, labels)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("name", ["adadelta", "adam", "radam", "sgd"])
def test_every_optimizer_reduces_the_loss(name):
    config = small_config(optimizer=name, learning_rate={"adadelta": 1.0, "sgd": 0.1}.get(name, 1e-2))
    model = models.build_model(config.model)
    optimizer = train.make_optimizer(config.train)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 10)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    state = train.init_state(model, optimizer, x[:1], seed=0)
    step = jax.jit(train.make_train_step(optimizer, train.supervised_objective(model, train.cross_entropy)))
    losses = []
    for _ in range(60):  # RAdam's rectification keeps its first steps small
        state, metrics = step(state, x, y)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.7 * losses[0]


def test_unknown_optimizer_and_loss_are_clear_errors():
    config = small_config(optimizer="adagradx")
    with pytest.raises(ValueError, match="unknown optimizer 'adagradx'"):
        train.make_optimizer(config.train)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        train.get_loss("hinge")


def test_projection_hook_runs_after_every_update():
    model = models.Sequential((Dense(3),))
    optimizer = optax.sgd(10.0)
    clip = lambda params: jax.tree.map(lambda p: jnp.clip(p, -0.1, 0.1), params)  # noqa: E731
    x = np.ones((8, 4), np.float32)
    y = np.zeros(8, np.int32)
    state = train.init_state(model, optimizer, x[:1], seed=0, projection=clip)
    step = jax.jit(train.make_train_step(optimizer, train.supervised_objective(model, train.cross_entropy),
                                         projection=clip))
    for _ in range(3):
        state, _ = step(state, x, y)
        assert max(float(jnp.abs(p).max()) for p in jax.tree.leaves(state.params)) <= 0.1 + 1e-7


def test_rho_schedule_is_traced_not_recompiled():
    config = small_config(rho=1.0, rho_final=0.0)
    schedule = train.make_rho_schedule(config.train, total_steps=10)
    assert float(schedule(0)) == 1.0 and float(schedule(5)) == pytest.approx(0.5) and float(schedule(10)) == 0.0


def test_training_is_deterministic_and_learns(tmp_path, synthetic_mnist_dir):
    config = small_config()
    finals = []
    for run in ("a", "b"):
        experiment.fit(config, tmp_path / run, data_dir=str(synthetic_mnist_dir), progress=False)
        finals.append(params_of(tmp_path / run, config, synthetic_mnist_dir))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])))
    log = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(log) == 2
    assert '"test_accuracy"' in log[-1]
    import json

    assert json.loads(log[-1])["test_accuracy"] > 0.8  # the synthetic digits are easy


@pytest.mark.parametrize("stop_at_step", [25, 32])  # one epoch is 25 steps: an epoch end and mid-epoch
def test_resumed_run_equals_uninterrupted_run(tmp_path, synthetic_mnist_dir, stop_at_step):
    config = small_config()
    data_dir = str(synthetic_mnist_dir)
    experiment.fit(config, tmp_path / "whole", data_dir=data_dir, progress=False)
    state = experiment.fit(config, tmp_path / "parts", data_dir=data_dir, progress=False, stop_at_step=stop_at_step)
    assert int(state.step) == stop_at_step
    experiment.fit(config, tmp_path / "parts", data_dir=data_dir, progress=False)
    whole = params_of(tmp_path / "whole", config, synthetic_mnist_dir)
    parts = params_of(tmp_path / "parts", config, synthetic_mnist_dir)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(parts)):
        np.testing.assert_array_equal(a, b)
    import json

    for line in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)  # averages over the steps of the epoch that ran, also after a resume
        assert 0.0 <= record["train_accuracy"] <= 1.0 and record["train_loss"] > 0, record


def test_checkpoint_of_another_architecture_is_refused(tmp_path, synthetic_mnist_dir):
    config = small_config(epochs=1)
    experiment.fit(config, tmp_path, data_dir=str(synthetic_mnist_dir), progress=False)
    other = small_config(epochs=2)
    other.model.hidden = (16,)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="model config differs"):
        experiment.fit(other, tmp_path, data_dir=str(synthetic_mnist_dir), progress=False)


@pytest.mark.skipif(jax.local_device_count() < 4, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=4")
def test_four_devices_give_the_parameters_of_one(tmp_path, synthetic_mnist_dir):
    results = []
    for devices in (1, 4):
        config = small_config(epochs=1, num_devices=devices)
        experiment.fit(config, tmp_path / str(devices), data_dir=str(synthetic_mnist_dir), progress=False)
        results.append(params_of(tmp_path / str(devices), config, synthetic_mnist_dir))
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs at least 2 devices")
def test_batch_not_divisible_by_devices_is_a_clear_error():
    with pytest.raises(ValueError, match="batch size 7 is not divisible by the 2 devices"):
        train.DataParallel.create(num_devices=2, batch_size=7)


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path, synthetic_mnist_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys\n"
        "from andor_jax import config as c, experiment\n"
        "cfg = c.apply_overrides(c.load_config('relu_mlp_mnist'), ['model.hidden=(32,)', 'train.epochs=500',\n"
        "    'train.batch_size=40', 'train.checkpoint_every_steps=100000', 'data.source=dir'])\n"
        f"experiment.fit(cfg, {str(tmp_path)!r}, data_dir={str(synthetic_mnist_dir)!r}, progress=False)\n")
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "XLA_FLAGS": ""})
    deadline = time.time() + 120
    while not (tmp_path / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    import re

    found = re.search(r"interrupted at step (\d+): checkpoint saved", stderr)
    assert found, stderr
    interrupted_at = int(found.group(1))
    steps = {int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()}
    assert interrupted_at >= 25 and interrupted_at in steps  # the step it stopped at is on disk
