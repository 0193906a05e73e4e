"""The training engine: optimisers, determinism, resumption, data parallelism, projections, freezing,
starting from another run, compilation count, progress output."""
import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from andor_jax import checkpoint, config as config_lib, experiment, models, train
from andor_jax.layers import Dense
from andor_jax.objectives.losses import cross_entropy
from andor_jax.objectives.supervised import supervised_objective
from conftest import small_mlp_config, subprocess_environment


def params_of(workdir, config, data_dir):
    _, variables = experiment.load_trained(workdir, data_dir=str(data_dir))
    return variables["params"]


@pytest.mark.parametrize("name", ["adadelta", "adam", "radam", "sgd"])
def test_every_optimizer_reduces_the_loss(name):
    config = small_mlp_config(optimizer=name, learning_rate={"adadelta": 1.0, "sgd": 0.1}.get(name, 1e-2))
    model = models.build_model(config.model)
    optimizer = train.make_optimizer(config.train)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 10)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    objective = supervised_objective(model, cross_entropy)
    state = train.init_state(model, optimizer, objective, x[:1], seed=0)
    step = jax.jit(train.make_train_step(optimizer, objective))
    losses = []
    for _ in range(60):  # RAdam's rectification keeps its first steps small
        state, metrics = step(state, x, y)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_learning_rate_schedules_decay_to_zero_over_the_run(schedule):
    config = small_mlp_config(optimizer="sgd", momentum=0.0, learning_rate=0.5, learning_rate_schedule=schedule)
    optimizer = train.make_optimizer(config.train, total_steps=4)
    params = {"w": jnp.zeros(())}
    state = optimizer.init(params)
    steps = []
    for _ in range(5):
        updates, state = optimizer.update({"w": jnp.ones(())}, state, params)
        steps.append(-float(updates["w"]))
    fraction = np.arange(5) / 4
    want = {"constant": np.ones(5), "linear": 1 - fraction,
            "cosine": (1 + np.cos(np.pi * fraction)) / 2}[schedule]  # past the last step the rate stays 0
    np.testing.assert_allclose(steps, 0.5 * want, atol=1e-7)


def test_unknown_optimizer_and_loss_are_clear_errors():
    config = small_mlp_config(optimizer="adagradx")
    with pytest.raises(ValueError, match="unknown optimizer 'adagradx'"):
        train.make_optimizer(config.train)
    with pytest.raises(ValueError, match="unknown train.learning_rate_schedule 'cosin'"):
        train.make_optimizer(small_mlp_config(learning_rate_schedule="cosin").train)
    config = small_mlp_config(gradient_transforms=["clip_by_norm_typo"])
    with pytest.raises(ValueError, match="unknown gradient transform 'clip_by_norm_typo'"):
        train.make_optimizer(config.train)


def test_projection_hook_runs_after_every_update():
    model = models.Sequential((Dense(3),))
    optimizer = optax.sgd(10.0)
    clip = lambda params, step: jax.tree.map(lambda p: jnp.clip(p, -0.1, 0.1), params)  # noqa: E731
    x = np.ones((8, 4), np.float32)
    y = np.zeros(8, np.int32)
    objective = supervised_objective(model, cross_entropy)
    state = train.init_state(model, optimizer, objective, x[:1], seed=0, projection=clip)
    step = jax.jit(train.make_train_step(optimizer, objective, projection=clip))
    for _ in range(3):
        state, _ = step(state, x, y)
        assert max(float(jnp.abs(p).max()) for p in jax.tree.leaves(state.params)) <= 0.1 + 1e-7


def test_psd_mix_schedule_compiles_the_step_once(synthetic_mnist_dir):
    """A schedule of the pseudo-gradient mix changes rho every step without recompiling the jitted step."""
    config = small_mlp_config(psd_mix=1.0, psd_mix_final=0.0, batch_size=20, epochs=1)
    config.model = config_lib.load_config("mwd_small_mnist:small").model
    config.data.limit_train = 80
    exp = experiment.Experiment(config, data_dir=str(synthetic_mnist_dir))
    parallel = train.DataParallel.create(1, config.train.batch_size)
    step_fn = exp.train_step(parallel)
    state = parallel.replicate(exp.init_state())
    mixes = []
    for index in range(4):
        x, y = exp.dataset.x_train[20 * index: 20 * (index + 1)], exp.dataset.y_train[20 * index: 20 * (index + 1)]
        state, metrics = step_fn(state, *parallel.shard_batch(x, y))
        mixes.append(float(metrics["psd_mix"]))
    assert mixes == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert step_fn._cache_size() == 1


def test_training_is_deterministic_and_learns(tmp_path, synthetic_mnist_dir):
    config = small_mlp_config()
    finals = []
    for run in ("a", "b"):
        experiment.fit(config, tmp_path / run, data_dir=str(synthetic_mnist_dir), progress=False)
        finals.append(params_of(tmp_path / run, config, synthetic_mnist_dir))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])))
    log = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(log) == 2
    assert '"test_accuracy"' in log[-1]
    assert json.loads(log[-1])["test_accuracy"] > 0.8  # the synthetic digits are easy


@pytest.mark.parametrize("stop_at_step", [25, 32])  # one epoch is 25 steps: an epoch end and mid-epoch
def test_resumed_run_equals_uninterrupted_run(tmp_path, synthetic_mnist_dir, stop_at_step):
    config = small_mlp_config(learning_rate_schedule="cosine")  # the resumed run continues the schedule
    data_dir = str(synthetic_mnist_dir)
    experiment.fit(config, tmp_path / "whole", data_dir=data_dir, progress=False)
    state = experiment.fit(config, tmp_path / "parts", data_dir=data_dir, progress=False, stop_at_step=stop_at_step)
    assert int(state.step) == stop_at_step
    experiment.fit(config, tmp_path / "parts", data_dir=data_dir, progress=False)
    whole = params_of(tmp_path / "whole", config, synthetic_mnist_dir)
    parts = params_of(tmp_path / "parts", config, synthetic_mnist_dir)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(parts)):
        np.testing.assert_array_equal(a, b)
    for line in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)  # averages over the steps of the epoch that ran, also after a resume
        assert 0.0 <= record["train_accuracy"] <= 1.0 and record["train_loss"] > 0, record


def test_checkpoint_of_another_architecture_is_refused(tmp_path, synthetic_mnist_dir):
    config = small_mlp_config(epochs=1)
    experiment.fit(config, tmp_path, data_dir=str(synthetic_mnist_dir), progress=False)
    other = small_mlp_config(epochs=2)
    other.model.hidden = (16,)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="model config differs"):
        experiment.fit(other, tmp_path, data_dir=str(synthetic_mnist_dir), progress=False)


@pytest.mark.skipif(jax.local_device_count() < 4, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=4")
def test_four_devices_give_the_parameters_of_one(tmp_path, synthetic_mnist_dir):
    results = []
    for devices in (1, 4):
        config = small_mlp_config(epochs=1, num_devices=devices)
        experiment.fit(config, tmp_path / str(devices), data_dir=str(synthetic_mnist_dir), progress=False)
        results.append(params_of(tmp_path / str(devices), config, synthetic_mnist_dir))
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs at least 2 devices")
def test_batch_not_divisible_by_devices_is_a_clear_error():
    with pytest.raises(ValueError, match="batch size 7 is not divisible by the 2 devices"):
        train.DataParallel.create(num_devices=2, batch_size=7)


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path, synthetic_mnist_dir):
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
                               env=subprocess_environment())
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


# ------------------------------------------------------------------------------------- freezing, init_from

def fresh_params(config, data_dir):
    return experiment.Experiment(config, data_dir=str(data_dir)).init_state().params


def test_frozen_parameters_stay_bit_identical(tmp_path, synthetic_mnist_dir):
    config = small_mlp_config(epochs=1, trainable=["layers_3"])  # the output layer; the hidden layer is frozen
    experiment.fit(config, tmp_path, data_dir=str(synthetic_mnist_dir), progress=False)
    before, after = fresh_params(config, synthetic_mnist_dir), params_of(tmp_path, config, synthetic_mnist_dir)
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(after["layers_1"][name], before["layers_1"][name])
        assert not np.array_equal(after["layers_3"][name], before["layers_3"][name])


def test_frozen_parameters_get_no_optimizer_state():
    config = small_mlp_config(trainable=["layers_3"])
    params = {"layers_1": {"kernel": jnp.ones((3, 2))}, "layers_3": {"kernel": jnp.ones((2, 2))}}
    state = train.make_optimizer(config.train).init(params)
    sizes = sum(leaf.size for leaf in jax.tree.leaves(state))
    assert sizes == 2 * 4  # AdaDelta's two accumulators of layers_3 only


def test_trainable_prefix_matches_whole_names_and_unknown_prefix_is_an_error():
    params = {"layers_1": {"kernel": 0}, "layers_10": {"kernel": 0}, "purifier": {"layers_1": {"bias": 0}}}
    labels = train.trainable_labels(params, ["layers_1", "purifier/layers_1"])
    assert labels == {"layers_1": {"kernel": "trainable"}, "layers_10": {"kernel": "frozen"},
                      "purifier": {"layers_1": {"bias": "trainable"}}}
    with pytest.raises(ValueError, match=r"\['classifier'\] match no parameter.*'layers_1', 'layers_10', 'purifier'"):
        train.trainable_labels(params, ["classifier"])


def test_init_from_starts_from_the_other_runs_latest_parameters(tmp_path, synthetic_mnist_dir):
    source = small_mlp_config(epochs=1)
    experiment.fit(source, tmp_path / "source", data_dir=str(synthetic_mnist_dir), progress=False)
    config = small_mlp_config(epochs=1, init_from=str(tmp_path / "source"), optimizer="sgd", learning_rate=0.0)
    experiment.fit(config, tmp_path / "run", data_dir=str(synthetic_mnist_dir), progress=False)  # lr 0: no change
    expected = params_of(tmp_path / "source", source, synthetic_mnist_dir)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(params_of(tmp_path / "run", config, synthetic_mnist_dir))):
        np.testing.assert_array_equal(a, b)


def test_init_from_into_a_sub_tree(tmp_path):
    layer = {"kernel": jnp.full((4, 3), 2.0), "bias": jnp.full((3,), -1.0)}
    ckpt = checkpoint.Checkpointer(tmp_path / "source" / "checkpoints")
    saved = train.TrainState(jnp.zeros((), jnp.int32), layer, {}, {}, {}, jax.random.PRNGKey(0))
    ckpt.save(saved, checkpoint.fingerprint(config_lib.base_config().model, saved), force=True)
    ckpt.close()
    params = {"layers_1": {"kernel": jnp.zeros((5, 4)), "bias": jnp.zeros(4)},
              "layers_3": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}}
    new_params, new_state = checkpoint.init_from(tmp_path / "source", params, {}, into="layers_3")
    np.testing.assert_array_equal(new_params["layers_3"]["kernel"], layer["kernel"])
    np.testing.assert_array_equal(new_params["layers_3"]["bias"], layer["bias"])
    np.testing.assert_array_equal(new_params["layers_1"]["kernel"], params["layers_1"]["kernel"])
    assert new_state == {}
    with pytest.raises(ValueError, match="no parameter sub-tree 'classifier'"):
        checkpoint.init_from(tmp_path / "source", params, {}, into="classifier")
    with pytest.raises(ValueError, match=r"parameter params/layers_1/kernel has shape \(4, 3\) float32 in .* "
                                         r"but \(5, 4\) float32"):
        checkpoint.init_from(tmp_path / "source", {"layers_1": {"kernel": jnp.zeros((5, 4)), "bias": jnp.zeros(3)}},
                             {}, into="layers_1")


def test_init_from_errors_name_the_problem(tmp_path, synthetic_mnist_dir):
    source = small_mlp_config(epochs=1)
    experiment.fit(source, tmp_path / "source", data_dir=str(synthetic_mnist_dir), progress=False)
    data_dir = str(synthetic_mnist_dir)
    missing = small_mlp_config(init_from=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="nowhere is not a work directory with checkpoints"):
        experiment.fit(missing, tmp_path / "a", data_dir=data_dir, progress=False)
    deeper = small_mlp_config(init_from=str(tmp_path / "source"))
    deeper.model.hidden = (32, 32)  # another architecture: one more dense layer
    with pytest.raises(ValueError, match="checkpoint in .* has no parameter params/layers_5/bias"):
        experiment.fit(deeper, tmp_path / "b", data_dir=data_dir, progress=False)
    wider = small_mlp_config(init_from=str(tmp_path / "source"))
    wider.model.hidden = (16,)
    with pytest.raises(ValueError, match=r"parameter params/layers_1/bias has shape \(32,\) float32 in .* "
                                         r"but \(16,\) float32 in this model"):
        experiment.fit(wider, tmp_path / "c", data_dir=data_dir, progress=False)


# ----------------------------------------------------------------------------------------------- logs

def test_progress_to_a_file_is_one_line_per_epoch(tmp_path, synthetic_mnist_dir):
    stream = io.StringIO()
    with contextlib.redirect_stderr(stream):
        experiment.fit(small_mlp_config(), tmp_path, data_dir=str(synthetic_mnist_dir), progress=True)
    text = stream.getvalue()
    assert "\r" not in text
    epoch_lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"]
    assert "train loss" in epoch_lines[0] and "test accuracy" in epoch_lines[0]


def test_progress_bars_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert experiment.interactive(Terminal()) and not experiment.interactive(io.StringIO())
