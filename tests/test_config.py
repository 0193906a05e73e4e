"""Configs: every bundled config and variant builds and trains one step; every key a run reads is declared
(so it can be overridden); variants; lists on the command line."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from andor_jax import config as config_lib, data, experiment, train, validation

BATCH = 8
# The step of `experiment.fit`, compiled without XLA's expensive CPU optimisations: half the compile time.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def bundled_specs() -> list[str]:
    """Every bundled config, and each of its variants as ``NAME:VARIANT``."""
    return [spec for name in config_lib.bundled_configs()
            for spec in (name, *(f"{name}:{variant}" for variant in config_lib.variants(name)))]


def training_key(spec: str) -> str:
    """What decides the training step of a config: two specs with the same key (e.g. variants that differ
    in their evaluation only) compile the same step."""
    config = config_lib.load_config(spec)
    ignored = ("epochs", "checkpoint_every_steps", "keep_checkpoints", "log_every_steps", "batch_size",
               "num_devices", "init_from", "init_from_into")
    return json.dumps({"model": config.model.to_dict(), "data": [config.data.flatten, list(config.data.domain)],
                       "train": {k: v for k, v in config.train.to_dict().items() if k not in ignored}},
                      sort_keys=True, default=str)


def family_key(spec: str) -> tuple:
    """The code paths of a config's step: architecture, objective, gradient transforms, freezing, loss."""
    train_config = config_lib.load_config(spec).train
    return (config_lib.load_config(spec).model.name, train_config.objective, tuple(train_config.gradient_transforms),
            bool(train_config.trainable), train_config.loss)


def representatives(key, specs: list[str]) -> list[str]:
    """One spec per value of ``key``: the first ``small`` variant, else the shortest name."""
    chosen: dict = {}
    for spec in sorted(specs, key=lambda s: ("small" not in s.partition(":")[2], len(s), s)):
        chosen.setdefault(key(spec), spec)
    return sorted(chosen.values())


SPECS = bundled_specs()
DISTINCT_STEPS = representatives(training_key, SPECS)
FAMILIES = representatives(family_key, SPECS)


def tiny_dataset(config) -> data.Dataset:
    """``BATCH`` random training images in the config's domain and shape, random labels."""
    blank = data.blank(config.data.dataset, domain=tuple(config.data.domain), flatten=config.data.flatten,
                       count=BATCH)
    rng = np.random.default_rng(0)
    low, high = config.data.domain
    x = rng.uniform(low, high, blank.x_train.shape).astype(np.float32)
    y = rng.integers(0, blank.num_classes, BATCH).astype(np.int32)
    return dataclasses.replace(blank, x_train=x, y_train=y, x_test=x, y_test=y)


def experiment_of(spec: str):
    """The `experiment.Experiment` of ``spec`` on `tiny_dataset`, its one-device step and batch."""
    config = config_lib.load_config(spec)
    config.train.batch_size = BATCH
    exp = experiment.Experiment(config, dataset=tiny_dataset(config))
    parallel = train.DataParallel.create(1, BATCH)
    return exp, exp.train_step(parallel), parallel.shard_batch(exp.dataset.x_train, exp.dataset.y_train)


def test_every_bundled_config_has_a_training_step_tested():
    assert set(map(training_key, DISTINCT_STEPS)) == set(map(training_key, SPECS))
    assert set(map(family_key, FAMILIES)) == set(map(family_key, SPECS))
    assert {"quickstart", "relu_mlp_mnist", "mwd_mnist:small"} <= set(SPECS)


@pytest.mark.parametrize("spec", DISTINCT_STEPS)
def test_every_bundled_config_and_variant_builds_its_step(spec):
    """Every distinct training step of the bundled configs and variants (model, optimiser with its gradient
    transforms and frozen parts, objective), traced abstractly on a tiny batch: the step maps the state to
    a state of the same structure, shapes and dtypes (else the jitted step would recompile, or the
    checkpoint would not restore), and its metrics are scalars."""
    exp, step, (x, y) = experiment_of(spec)
    state = jax.eval_shape(exp.init_state)
    new_state, metrics = jax.eval_shape(step, state, x, y)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert [(a.shape, a.dtype) for a in jax.tree.leaves(new_state)] == [(a.shape, a.dtype)
                                                                       for a in jax.tree.leaves(state)]
    assert metrics and all(value.shape == () for value in metrics.values()), metrics


@pytest.mark.parametrize("spec", FAMILIES)
def test_one_real_step_of_every_kind_of_bundled_config(spec):
    """One real step, as `experiment.fit` runs it (``on_epoch`` first where the objective has one), of
    the smallest config of every kind (architecture, objective, gradient transforms, freezing, loss):
    finite metrics, and parameters that move."""
    exp, step, (x, y) = experiment_of(spec)
    parallel = train.DataParallel.create(1, BATCH)
    state = parallel.replicate(exp.init_state())
    if exp.objective.on_epoch is not None:
        state = parallel.replicate(state._replace(objective_state=exp.objective.on_epoch(
            state.params, state.model_state, state.objective_state, exp.dataset, 0)))
    before = jax.device_get(state.params)
    state, metrics = step.lower(state, x, y).compile(FAST_COMPILE)(state, x, y)
    assert int(state.step) == 1
    assert all(np.isfinite(value) for value in jax.device_get(metrics).values()), metrics
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params))]
    assert any(changed), f"{spec}: one step changed no parameter"


def test_every_bundled_config_has_a_small_variant():
    for name in config_lib.bundled_configs():
        small = config_lib.load_config(f"{name}:small")
        assert small.train.epochs <= 2 and 0 < small.data.limit_train <= 1000, name


def test_bundled_variants_are_small():
    for name in ("quickstart", "relu_mlp_mnist", "sigmoid_mlp_mnist", "mwd_small_mnist", "mwd_mnist",
                 "mwd_mnist_true_gradient"):
        assert "small" in config_lib.variants(name)
        small, full = config_lib.load_config(f"{name}:small"), config_lib.load_config(name)
        assert max(small.model.hidden) <= 32 < max(full.model.hidden)
        assert small.train.epochs <= 2 and 0 < small.data.limit_train <= 1000 and small.evaluate.limit <= 100


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown config variant 'huge'; variants of this config: small"):
        config_lib.load_config("quickstart:huge")


def test_variant_of_a_config_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from andor_jax.config import base_config\n\n"
                    "def get_config(arg=None):\n"
                    "    config = base_config()\n"
                    "    config.train.epochs = 1 if arg == 'quick' else 9\n"
                    "    return config\n")
    assert config_lib.load_config(f"{path}:quick").train.epochs == 1
    assert config_lib.load_config(str(path)).train.epochs == 9


@pytest.mark.parametrize("override", ["train.max_grad_norm=5.0", "train.adadelta_rho=0.95", "train.adadelta_eps=1e-8",
                                      "train.nesterov=True", "train.psd_mix_final=0.0", "train.init_from=/tmp/x",
                                      "evaluate.eot_draws=5", "evaluate.verdict_draws=3",
                                      "evaluate.randomness=fixed", "evaluate.attack_model=classifier"])
def test_every_key_a_run_reads_can_be_overridden(override):
    key, value = override.split("=")
    config = config_lib.apply_overrides(config_lib.base_config(), [override])
    section, leaf = key.split(".")
    assert config[section][leaf] == config_lib.parse_value(value)


def test_optimizer_reads_its_declared_settings():
    config = config_lib.apply_overrides(config_lib.base_config(), ["train.optimizer=sgd", "train.momentum=0.5",
                                                                   "train.nesterov=True", "train.learning_rate=1.0"])
    params, grads = {"w": np.zeros(2, np.float32)}, {"w": np.ones(2, np.float32)}
    optimizer = train.make_optimizer(config.train)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    np.testing.assert_allclose(updates["w"], -1.5)  # Nesterov's first step: -(g + momentum g)
    clipped = config_lib.apply_overrides(config, ["train.gradient_transforms=clip_by_global_norm",
                                                  "train.max_grad_norm=0.5", "train.nesterov=False",
                                                  "train.momentum=0"])
    optimizer = train.make_optimizer(clipped.train)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    np.testing.assert_allclose(np.linalg.norm(updates["w"]), 0.5, rtol=1e-6)


def test_the_three_rhos_and_two_eps_have_distinct_names():
    config = config_lib.base_config()
    assert {"psd_mix", "psd_mix_final", "adadelta_rho", "adadelta_eps"} <= set(config.train)
    assert "rho" not in config.train and "eps" not in config.train


@pytest.mark.parametrize("text, expected", [
    ("fgsm,pgd", ["fgsm", "pgd"]), ("['fgsm']", ["fgsm"]), ("", []), ("0.1:0.3:0.1", [0.1, 0.2, 0.3]),
    ("0.1,0.3", [0.1, 0.3]), ("[0.5]", [0.5]),
    ("andor_jax.objectives.andor:weight_concentration", ["andor_jax.objectives.andor:weight_concentration"])])
def test_list_keys_take_lists_on_the_command_line(text, expected):
    assert config_lib.parse_list(text) == pytest.approx(expected) if expected and isinstance(expected[0], float) \
        else config_lib.parse_list(text) == expected


def test_list_overrides_keep_lists():
    config = config_lib.apply_overrides(config_lib.base_config(), ["evaluate.attacks=fgsm,pgd[psd]",
                                                                   "evaluate.eps=0.1:0.3:0.1",
                                                                   "train.trainable=purifier"])
    assert config.evaluate.attacks == ["fgsm", "pgd[psd]"] and config.train.trainable == ["purifier"]
    assert config.evaluate.eps == pytest.approx([0.1, 0.2, 0.3]) and isinstance(config.evaluate.eps, list)


def test_a_list_range_never_passes_its_stop_and_reads_like_the_eps_option():
    """``evaluate.eps=0.1:0.25:0.1`` is 0.1, 0.2 (a rounding count would give 0.3, past the stop), the
    same grid as ``--eps 0.1:0.25:0.1``; a reversed range is an error naming it."""
    assert config_lib.parse_list("0.1:0.25:0.1") == validation.parse_eps_grid("0.1:0.25:0.1") == [0.1, 0.2]
    with pytest.raises(validation.InvalidInput, match="reversed"):
        config_lib.parse_list("0.3:0.1:0.1")


def test_a_folder_named_like_a_bundled_config_does_not_hide_it(tmp_path, monkeypatch):
    """``--config relu_mlp_mnist`` run from a directory holding a folder ``relu_mlp_mnist`` (a work directory
    named after its config, say) still loads the bundled config, not "config file does not exist"."""
    (tmp_path / "relu_mlp_mnist").mkdir()
    monkeypatch.chdir(tmp_path)
    assert config_lib.load_config("relu_mlp_mnist").model.name == "mlp"
