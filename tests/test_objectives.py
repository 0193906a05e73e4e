"""The objective protocol: losses, lookup by name, objective state carried through training, checkpointed
and resumed, ``on_epoch`` on the host, gradient transforms found by dotted name."""
import json
import logging
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from andor_jax import experiment, objectives, train
from andor_jax.objectives import losses
from conftest import small_mlp_config

# A stateful objective outside the package, found by its dotted module name.  Its state counts steps and
# epoch starts and keeps a statistic of the whole training set computed on the host at every epoch start;
# its update direction depends on that state, so a wrongly resumed state changes the parameters.
STATEFUL = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np, optax
    from andor_jax.objectives import Objective, apply_model
    from andor_jax.objectives.losses import cross_entropy

    def get_objective(model, train_config, steps_per_epoch):
        def init(params, model_state):
            return {"steps": jnp.zeros((), jnp.int32), "epochs": jnp.zeros((), jnp.int32),
                    "anchor": jnp.zeros((), jnp.float32), "last_epoch": -jnp.ones((), jnp.int32)}

        def update(params, model_state, state, x, y, key, rho, step):
            def loss_fn(p):
                outputs, new_state = apply_model(model, p, model_state, x, train=True, rho=rho, key=key)
                return cross_entropy(outputs, y), new_state
            (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            scale = state["anchor"] / (1.0 + 0.1 * state["steps"])
            grads = jax.tree.map(lambda g: g * scale, grads)
            return grads, new_model_state, {**state, "steps": state["steps"] + 1}, {"loss": loss, "scale": scale}

        def on_epoch(params, model_state, state, dataset, epoch):
            first = jax.tree.leaves(params)[0]
            anchor = np.float32(dataset.x_train.mean() + np.abs(np.asarray(first)).mean())
            return {**state, "epochs": state["epochs"] + 1, "anchor": jnp.asarray(anchor),
                    "last_epoch": jnp.asarray(epoch, jnp.int32)}

        return Objective(init, update, on_epoch)

    def halve(train_config):
        return optax.scale(0.5)
''')


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    package = tmp_path / "toyobj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "stateful.py").write_text(STATEFUL)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "toyobj.stateful"


def test_squared_error_matches_hand_computation():
    outputs = jnp.array([[0.2, 0.9], [0.6, 0.1]])
    labels = jnp.array([1, 1])
    # example 1: 0.2^2 + 0.1^2 = 0.05; example 2: 0.6^2 + 0.9^2 = 1.17
    assert float(losses.squared_error(outputs, labels)) == pytest.approx((0.05 + 1.17) / 2)


def test_cross_entropy_is_mean_negative_log_softmax():
    logits = jnp.array([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    labels = jnp.array([1, 2])
    expected = -np.mean([jax.nn.log_softmax(logits[0])[1], np.log(1 / 3)])
    assert float(losses.cross_entropy(logits, labels)) == pytest.approx(float(expected), rel=1e-6)


def test_unknown_loss_and_objective_are_clear_errors():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        losses.get_loss("hinge")
    config = small_mlp_config(objective="nonesuch")
    with pytest.raises(ValueError, match="unknown objective 'nonesuch'.*supervised"):
        objectives.get_objective(None, config.train)
    config = small_mlp_config(objective="andor_jax.objectives.losses")
    with pytest.raises(ValueError, match="defines no get_objective"):
        objectives.get_objective(None, config.train)


def test_supervised_objective_is_found_by_name_and_gives_the_loss_gradient():
    from andor_jax import models

    config = small_mlp_config()
    model = models.build_model(config.model)
    objective = objectives.get_objective(model, config.train)
    x = np.random.default_rng(0).normal(size=(8, 12)).astype(np.float32)
    y = np.arange(8, dtype=np.int32) % 10
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    state = objective.init(params, {})
    grads, model_state, new_state, metrics = objective.update(params, {}, state, x, y, jax.random.PRNGKey(1),
                                                              1.0, 0)
    expected = jax.grad(lambda p: losses.cross_entropy(model.apply({"params": p}, x), y))(params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert new_state == {} and model_state == {} and set(metrics) == {"loss", "accuracy"}


def test_objective_state_and_on_epoch_run_through_training(tmp_path, synthetic_mnist_dir, toy_package):
    config = small_mlp_config(objective=toy_package)
    state = experiment.fit(config, tmp_path, data_dir=str(synthetic_mnist_dir), progress=False)
    assert int(state.objective_state["steps"]) == 50  # 2 epochs of 25 steps
    assert int(state.objective_state["epochs"]) == 2 and int(state.objective_state["last_epoch"]) == 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(record["train_scale"] > 0 for record in records)  # objective metrics reach the log


@pytest.mark.parametrize("stop_at_step", [25, 32])  # an epoch end and the middle of the next epoch
def test_resumed_run_with_objective_state_is_bit_identical(tmp_path, synthetic_mnist_dir, toy_package,
                                                           stop_at_step):
    config = small_mlp_config(objective=toy_package)
    data_dir = str(synthetic_mnist_dir)
    whole = experiment.fit(config, tmp_path / "whole", data_dir=data_dir, progress=False)
    experiment.fit(config, tmp_path / "parts", data_dir=data_dir, progress=False, stop_at_step=stop_at_step)
    parts = experiment.fit(config, tmp_path / "parts", data_dir=data_dir, progress=False)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(parts)):
        np.testing.assert_array_equal(a, b)
    assert int(parts.objective_state["epochs"]) == 2  # on_epoch is not run again for a resumed epoch


def test_gradient_transform_found_by_dotted_name(toy_package):
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([1.0, -2.0, 4.0])}
    plain = small_mlp_config(optimizer="sgd", learning_rate=1.0, momentum=0.0)
    halved = small_mlp_config(optimizer="sgd", learning_rate=1.0, momentum=0.0,
                          gradient_transforms=[f"{toy_package}:halve"])
    updates = [train.make_optimizer(c.train).update(grads, train.make_optimizer(c.train).init(params), params)[0]
               for c in (plain, halved)]
    np.testing.assert_array_equal(updates[1]["w"], 0.5 * updates[0]["w"])
    missing = small_mlp_config(gradient_transforms=[f"{toy_package}:nonesuch"])
    with pytest.raises(ValueError, match="gradient transform 'toyobj.stateful:nonesuch' not found"):
        train.make_optimizer(missing.train)
    assert isinstance(train.make_optimizer(plain.train), optax.GradientTransformation)


def test_a_whole_run_compiles_its_step_once(tmp_path, synthetic_mnist_dir, toy_package, caplog):
    """Over two epochs, with ``on_epoch`` replacing the objective state at each epoch start, checkpoints
    and a pseudo-gradient mix that changes every step, the train step is compiled exactly once."""
    config = small_mlp_config(objective=toy_package, psd_mix=1.0, psd_mix_final=0.0)
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        experiment.fit(config, tmp_path, data_dir=str(synthetic_mnist_dir), progress=False)
    compiles = [r for r in caplog.records if "Compiling jit(train_step)" in r.getMessage()]
    assert len(compiles) == 1, [r.getMessage()[:200] for r in compiles]
