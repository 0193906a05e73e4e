"""CARSO (`andor_jax.models.carso`, `andor_jax.objectives.cvae`, `andor_jax.objectives.adversarial`):
aggregations against hand computations, the vote against the mode of the draws' predictions, chunking,
gradients through the draws, freezing and starting from another run."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from andor_jax import bounds, checkpoint, cli, evaluation, experiment, models, train
from andor_jax import config as config_lib
from andor_jax.configs import carso_classifier_mnist, carso_mnist
from andor_jax.interval import Interval
from andor_jax.models import carso
from andor_jax.models.carso_classifier import Standardise
from andor_jax.objectives import adversarial, cvae

TINY_PURIFIER = {"input_widths": (12, 6), "representation_widths": (8, 4), "encoder_widths": (8, 6), "latent": 3,
                 "decoder_widths": (10, 12)}


def tiny_carso(**settings):
    return carso.get_model(classifier={"hidden": (8, 6)}, purifier=TINY_PURIFIER, **settings)


@pytest.fixture(scope="module")
def tiny():
    """A tiny CARSO with random parameters and non-trivial BatchNorm statistics, and a batch in [0, 1]."""
    model = tiny_carso(n_draws=7, draws_per_chunk=3, examples_per_chunk=2)
    x = jax.random.uniform(jax.random.PRNGKey(0), (5, 784))
    variables = jax.jit(model.init)({"params": jax.random.PRNGKey(1)}, x[:1])
    stats = jax.tree.map(lambda v: v + 0.1 * jax.random.uniform(jax.random.PRNGKey(2), v.shape), variables["batch_stats"])
    return model, {"params": variables["params"], "batch_stats": stats}, x


def sub(variables, name):
    return {collection: tree[name] for collection, tree in variables.items()}


def predict(model, variables, x, key, aggregation="vote", **settings):
    """`carso.predict` with the model's settings (the key used as given; the module derives its own from
    the "sample" stream)."""
    settings = {"n_draws": model.n_draws, "draws_per_chunk": model.draws_per_chunk,
                "examples_per_chunk": model.examples_per_chunk, **settings}
    return carso.predict(model.classifier, sub(variables, "classifier"), model.purifier, sub(variables, "purifier"),
                         x, key, paths=model.representation_paths, aggregation=aggregation, **settings)


def hand_draw_logits(model, variables, x, key):
    """(n_draws, batch, classes): every draw decoded and classified one example at a time, with the key
    scheme of `carso.predict` (example j, chunk c: ``fold_in(fold_in(key, j), c)``)."""
    classifier_vars, purifier_vars = sub(variables, "classifier"), sub(variables, "purifier")
    sizes = [model.draws_per_chunk] * (model.n_draws // model.draws_per_chunk)
    sizes += [model.n_draws % model.draws_per_chunk] if model.n_draws % model.draws_per_chunk else []

    @jax.jit
    def draw_logits(example, z):  # the draws z (size, latent) of one example (1, 784), decoded row by row
        r = models.representation(model.classifier, classifier_vars, example, model.representation_paths)
        condition = model.purifier.apply(purifier_vars, r, method=carso.Purifier.condition)
        pixels = model.purifier.apply(purifier_vars, z, jnp.repeat(condition, z.shape[0], 0),
                                      method=carso.Purifier.decode)
        return model.classifier.apply(classifier_vars, jax.nn.sigmoid(pixels))

    per_example = []
    for j in range(x.shape[0]):
        draws = [draw_logits(x[j:j + 1], jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, j), c),
                                                           (size, model.purifier.latent)))
                 for c, size in enumerate(sizes)]
        per_example.append(np.concatenate(draws))
    return np.stack(per_example, axis=1)


def test_aggregations_match_hand_computations():
    logits = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (7, 4, 5)) * 0.5, np.float64)
    logits[:, 0, 2] += 2.0  # example 0: class 2 wins every vote, so the other classes get no votes
    expected_votes = np.stack([np.bincount(np.argmax(logits[:, b], -1), minlength=5) for b in range(4)])
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    total = np.exp(logits).sum(0)
    others = np.stack([np.exp(np.delete(total, c, -1)).sum(-1) for c in range(5)], -1)
    odds = np.exp(total) / others  # p / (1 - p) with p = softmax(total)
    expected = {
        "vote": np.log(np.maximum(expected_votes, 0.5) / 7),
        "mean_logits": logits.mean(0),
        "mean_softmax": np.log(softmax.mean(0)),
        "doubly_exponential": np.log(odds),
    }
    for name, rule in carso.AGGREGATIONS.items():
        state = rule.init((4, 5))
        for chunk in (logits[:4], logits[4:]):  # two chunks of draws
            state = rule.add(state, jnp.asarray(chunk, jnp.float32))
        np.testing.assert_allclose(rule.finish(state, 7), expected[name], rtol=1e-4, atol=1e-4, err_msg=name)
    assert np.argmax(expected["vote"][0]) == 2 and expected_votes[0, 2] == 7
    extreme = carso.AGGREGATIONS["doubly_exponential"]  # exp(S) would overflow; the stable form does not
    state = extreme.add(extreme.init((1, 3)), jnp.array([[[30.0, 29.0, 0.0]]] * 5))
    out = extreme.finish(state, 5)
    assert np.all(np.isfinite(out)) and np.argmax(out) == 0


def test_vote_is_the_mode_of_the_draws_predictions(tiny):
    model, variables, x = tiny
    key = jax.random.PRNGKey(4)
    draws = hand_draw_logits(model, variables, x, key)
    counts = np.stack([np.bincount(np.argmax(draws[:, b], -1), minlength=10) for b in range(x.shape[0])])
    assert (counts.max(-1) < model.n_draws).any()  # some draws disagree: the vote is not trivial
    vote = np.asarray(predict(model, variables, x, key))
    np.testing.assert_array_equal(np.argmax(vote, -1), np.argmax(counts, -1))  # ties: the lowest class
    np.testing.assert_allclose(np.exp(vote), np.maximum(counts, 0.5) / model.n_draws, rtol=1e-5)
    np.testing.assert_allclose(predict(model, variables, x, key, "mean_logits"), draws.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(models.logits(model, variables, x, key=key), models.logits(model, variables, x, key=key))


def test_an_examples_prediction_does_not_depend_on_chunks_or_batch(tiny):
    model, variables, x = tiny
    key = jax.random.PRNGKey(5)
    reference = predict(model, variables, x, key, "mean_logits")
    for examples_per_chunk in (1, 3, 8):
        chunked = predict(model, variables, x, key, "mean_logits", examples_per_chunk=examples_per_chunk)
        np.testing.assert_allclose(chunked, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict(model, variables, x[:2], key, "mean_logits"), reference[:2], rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_input_through_the_draws(tiny):
    model, variables, x = tiny
    y = jnp.arange(x.shape[0]) % 10

    @functools.partial(jax.jit, static_argnames="mode")
    def input_gradient(key, mode):
        def loss(inputs):
            logits = models.logits(model, variables, inputs, key=key, gradient=mode)
            return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])
        return jax.grad(loss)(x)

    def gradient(key, mode="mean_logits"):
        return np.asarray(input_gradient(key, mode))

    first, again, other = gradient(jax.random.PRNGKey(6)), gradient(jax.random.PRNGKey(6)), gradient(jax.random.PRNGKey(7))
    assert np.all(np.isfinite(first)) and np.all(np.abs(first).sum(-1) > 0)  # every example's input gets a gradient
    np.testing.assert_array_equal(first, again)  # a fixed key: a deterministic network
    assert np.abs(first - other).max() > 1e-4 * np.abs(first).max()  # other draws, another gradient
    for mode in ("mean_softmax", "doubly_exponential"):
        assert np.all(np.isfinite(gradient(jax.random.PRNGKey(6), mode)))


def test_protocol_declarations_and_errors(tiny):
    model, variables, x = tiny
    assert models.randomised(model) and models.submodels(model) == ("classifier", "purifier")
    assert set(carso.DIFFERENTIABLE) <= set(models.gradient_modes(model))
    with pytest.raises(ValueError, match="PRNG key"):
        models.logits(model, variables, x)
    with pytest.raises(ValueError, match="'sample' RNG stream"):  # no silent deterministic stand-in
        model.apply(variables, x)
    assert models.monitor_metric(model) == "test_monitor_accuracy"
    with pytest.raises(ValueError, match="mean_logits"):
        models.logits(model, variables, x, key=jax.random.PRNGKey(0), gradient="psd")
    with pytest.raises(ValueError, match="unknown aggregation"):
        tiny_carso(aggregation="median")
    assert models.logits(model, variables, x, key=jax.random.PRNGKey(0), gradient="mean_logits").shape == (5, 10)


def test_elbo_against_hand_computation():
    rng = np.random.default_rng(0)
    logits, target = rng.normal(size=(3, 6)), rng.uniform(size=(3, 6))
    mu, log_variance = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    bce, kl = cvae.negative_elbo(jnp.asarray(logits), jnp.asarray(target), jnp.asarray(mu), jnp.asarray(log_variance), 1.0)
    q = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(bce, -(target * np.log(q) + (1 - target) * np.log(1 - q)).sum(-1), rtol=1e-5)
    variance = np.exp(log_variance)
    np.testing.assert_allclose(kl, 0.5 * (variance + mu ** 2 - 1 - log_variance).sum(-1), rtol=1e-5)


def test_adversarial_variants_are_parsed_and_checked():
    assert adversarial.parse_variants(adversarial.THESIS_VARIANTS) == (
        ("clean", 0.0), ("pgd", 0.15), ("pgd", 0.3), ("fgsm", 0.15), ("fgsm", 0.3))
    for bad in ("pgd", "cw:0.1", "fgsm:-1", ""):
        with pytest.raises(ValueError):
            adversarial.parse_variants(bad)


def test_adversarial_objective_averages_the_variants_losses(synthetic_mnist_dir):
    config = carso_classifier_mnist.get_config("adversarial_small")
    config.data.limit_train, config.train.adversarial.pgd_steps = 100, 5
    config.model.dropout = 0.0  # the variants' losses then differ by their inputs, not by dropout noise
    exp = experiment.Experiment(config, data_dir=str(synthetic_mnist_dir))
    state = exp.init_state()
    x = exp.dataset.x_train[:50]
    # labels the network's own predictions: every clean input is correct, so every attack has to move it
    y = jnp.argmax(exp.model.apply({"params": state.params, **state.model_state}, x, train=False), -1)
    _, _, _, metrics = jax.jit(exp.objective.update)(state.params, state.model_state, state.objective_state, x, y,
                                                    jax.random.PRNGKey(0), 0.0, 0)
    names = ["clean", "pgd_0.15", "pgd_0.3", "fgsm_0.15", "fgsm_0.3"]
    np.testing.assert_allclose(metrics["loss"], np.mean([metrics[f"loss_{n}"] for n in names]), rtol=1e-5)
    assert metrics["loss_pgd_0.3"] > metrics["loss_clean"] and metrics["loss_fgsm_0.3"] > metrics["loss_clean"]


def test_classifier_is_certifiable_and_standardisation_is_sound():
    model = models.build_model(carso_classifier_mnist.get_config("small").model)
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 784))
    variables = model.init(jax.random.PRNGKey(1), x)
    box = bounds.propagate(model, variables, Interval(x, x))  # a degenerate box is the forward pass
    np.testing.assert_allclose(box.lower, model.apply(variables, x), rtol=1e-4, atol=1e-5)
    y = jnp.argmax(model.apply(variables, x), -1)
    certified = bounds.certified_accuracy(model, variables, x, y, [0.0, 0.1], domain=(0.0, 1.0))
    assert certified[0.0] == 1.0 and 0.0 <= certified[0.1] <= 1.0  # every layer has an interval rule
    layer, box = Standardise(), Interval(jnp.zeros((1, 3)), jnp.ones((1, 3)))
    out = layer.apply({}, box, method=Standardise.interval)
    np.testing.assert_allclose(out.lower, -0.1307 / 0.3081, rtol=1e-6)
    np.testing.assert_allclose(out.upper, (1 - 0.1307) / 0.3081, rtol=1e-6)


def test_every_config_variant_loads():
    for module in (carso_classifier_mnist, carso_mnist):
        for variant in (None, *module.VARIANTS):
            config = module.get_config(variant)
            models.build_model(config.model)
        with pytest.raises(ValueError, match="variant"):
            module.get_config("huge")
    assert carso_mnist.get_config("transfer").evaluate.attack_model == "classifier"
    assert carso_mnist.get_config("fixed_randomness").evaluate.randomness == "fixed"
    assert carso_mnist.get_config("end_to_end").evaluate.eot_draws == 20


@pytest.fixture(scope="module")
def classifier_workdir(synthetic_mnist_dir, tmp_path_factory):
    """A small CARSO classifier trained for one epoch on the synthetic digits."""
    config = carso_classifier_mnist.get_config("small")
    config.train.epochs, config.data.limit_train = 1, 200
    workdir = tmp_path_factory.mktemp("carso_classifier")
    experiment.fit(config, workdir, data_dir=str(synthetic_mnist_dir), progress=False)
    return workdir


def purifier_config(classifier_workdir):
    config = carso_mnist.get_config("small")
    config.train.epochs, config.data.limit_train = 1, 200
    config.train.cvae.variants, config.train.cvae.pgd_steps = "clean,pgd:0.3", 2  # an attack on the classifier
    config.train.init_from = str(classifier_workdir)
    return config


def test_purifier_training_leaves_the_classifier_bit_identical(classifier_workdir, synthetic_mnist_dir, tmp_path):
    _, source = experiment.load_trained(classifier_workdir, data_dir=str(synthetic_mnist_dir))
    config = purifier_config(classifier_workdir)
    start = experiment.Experiment(config, data_dir=str(synthetic_mnist_dir)).init_state()
    state = experiment.fit(config, tmp_path, data_dir=str(synthetic_mnist_dir), progress=False)
    assert int(state.step) == 5
    for collection in ("params", "batch_stats"):
        trained = state.params if collection == "params" else state.model_state["batch_stats"]
        for a, b in zip(jax.tree.leaves(source[collection]), jax.tree.leaves(trained["classifier"])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(start.params["purifier"]),
                                                        jax.tree.leaves(state.params["purifier"]))]
    assert all(changed)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["train_loss"]) and record["train_bce"] > 0 and 0 <= record["train_accuracy"] <= 1
    assert "test_accuracy" not in record and 0 <= record["test_monitor_accuracy"] <= 1  # z = 0, not the vote


def test_init_from_another_architecture_is_a_clear_error(classifier_workdir, synthetic_mnist_dir, tmp_path):
    config = purifier_config(classifier_workdir)
    config.model.classifier.hidden = (8, 6)  # not the classifier that was trained (32-16)
    with pytest.raises(ValueError, match=r"classifier/layers_\d+/\w+ has shape"):
        experiment.fit(config, tmp_path / "wrong_width", data_dir=str(synthetic_mnist_dir), progress=False)
    config = purifier_config(classifier_workdir)
    config.train.init_from_into = ""  # the classifier's variables into the whole CARSO tree
    with pytest.raises(ValueError, match="purifier|classifier"):
        experiment.fit(config, tmp_path / "wrong_tree", data_dir=str(synthetic_mnist_dir), progress=False)


def test_the_purifiers_first_optimiser_steps_stay_finite(synthetic_mnist_dir):
    """RAdam's first steps (rho_t < 5, steps 1-5) are momentum SGD on the raw gradient of the summed loss:
    without the config's gradient clipping the loss tripled at step 3, was 1e11 at step 5 and NaN at step 6
    (the full-MNIST run: NaN at step 5)."""
    config = carso_mnist.get_config("small")
    config.data.limit_train, config.train.batch_size, config.train.cvae.variants = 256, 256, "clean"
    exp = experiment.Experiment(config, data_dir=str(synthetic_mnist_dir))
    parallel = train.DataParallel.create(None, config.train.batch_size)
    state, step = parallel.replicate(exp.init_state()), exp.train_step(parallel)
    x, y = parallel.shard_batch(exp.dataset.x_train, exp.dataset.y_train)
    losses = []
    for _ in range(4):  # unclipped: 554, 504, 1391, 39150, then 1e11 and NaN
        state, metrics = step(state, x, y)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)) and max(losses) < 1.1 * losses[0], losses


@pytest.fixture(scope="module")
def carso_workdir(classifier_workdir, synthetic_mnist_dir, tmp_path_factory):
    """A small CARSO whose purifier trained one epoch on the classifier of ``classifier_workdir``."""
    workdir = tmp_path_factory.mktemp("carso")
    experiment.fit(purifier_config(classifier_workdir), workdir, data_dir=str(synthetic_mnist_dir), progress=False)
    return workdir


def test_inference_settings_are_set_at_evaluation_and_nothing_else(carso_workdir, synthetic_mnist_dir, tmp_path,
                                                                     capsys):
    """``--config.model.n_draws`` and ``aggregation`` change how the trained CARSO infers (the report's header
    says so); an architecture key stays fixed by training, and a bad value is refused before any work."""
    def evaluate(*settings):
        return cli.main(["evaluate", "--workdir", str(carso_workdir), "--data-dir", str(synthetic_mnist_dir),
                         "--attacks", "fgsm", "--eps", "0.1", "--limit", "6", "--verdict-draws", "1", "--output",
                         str(tmp_path), "--no-progress", *settings])

    assert evaluate("--config.model.n_draws=3", "--config.model.aggregation=mean_logits") == 0
    header = json.loads((tmp_path / "report.json").read_text())["header"]["model"]
    assert header["settings"]["n_draws"] == 3 and header["settings"]["aggregation"] == "mean_logits"
    capsys.readouterr()
    assert evaluate("--config.model.n_draws=4") == 0
    assert "other settings (aggregation, n_draws)" in capsys.readouterr().err  # the first report is not mixed in
    assert json.loads((tmp_path / "report.json").read_text())["header"]["model"]["settings"]["n_draws"] == 4
    for setting, message in (("--config.model.representation_paths=layers_2", "cannot change after training"),
                             ("--config.model.n_draws=0", "integer >= 1"),
                             ("--config.model.aggregation=median", "unknown aggregation"),
                             ("--config.train.epochs=3", "--config.model.KEY=VALUE for inference settings")):
        assert evaluate(setting) == 2
        assert message in capsys.readouterr().err, setting


def test_a_suite_attacks_carso_through_its_differentiable_surface(carso_workdir, synthetic_mnist_dir, tmp_path):
    """The vote's own gradient is zero almost everywhere: ``--suite rand`` and an untagged ``--attacks`` entry
    must differentiate the mean logits of a few draws (or the aggregation itself when it is differentiable),
    never the vote; ``[true]`` still asks for the vote's gradient."""
    assert carso.Carso(None, None, (), aggregation="vote").attack_surface == "mean_logits"
    assert carso.Carso(None, None, (), aggregation="mean_softmax").attack_surface == "mean_softmax"
    for run, (request, expected) in enumerate(((["--suite", "rand"], ["apgd-ce[mean_logits]", "apgd-dlr[mean_logits]"]),
                              (["--attacks", "apgd-ce,apgd-dlr[true],square"],
                               ["apgd-ce[mean_logits]", "apgd-dlr[true]", "square"]))):
        assert cli.main(["evaluate", "--workdir", str(carso_workdir), "--data-dir", str(synthetic_mnist_dir),
                         *request, "--eot", "1", "--verdict-draws", "1", "--eps", "0.1", "--limit", "4",
                         "--no-convergence-check", "--set", "apgd-ce.steps=2", "--set", "apgd-dlr.steps=2",
                         "--set", "square.n_queries=2", "--config.evaluate.attack_model=", "--output",
                         str(tmp_path / str(run)), "--no-progress"]) == 0
        report = json.loads((tmp_path / str(run) / "report.json").read_text())
        (entry,) = report["example_sets"].values()
        assert list(entry["robustness"]["settings"]["attack_seconds"]) == expected
    assert cli.main(["evaluate", "--workdir", str(carso_workdir), "--data-dir", str(synthetic_mnist_dir), "--attacks",
                     "square", "--config.evaluate.convergence_attack=apgd-ce", "--set", "apgd-ce.steps=1",
                     "--set", "square.n_queries=2", "--eot", "1", "--verdict-draws", "1", "--eps", "0.1", "--limit",
                     "4", "--config.evaluate.attack_model=", "--output", str(tmp_path / "check"),
                     "--no-progress"]) == 0  # the convergence check's attack goes through the surface too
    (entry,) = json.loads((tmp_path / "check" / "report.json").read_text())["example_sets"].values()
    assert entry["robustness"]["convergence"]["attack"] == "apgd-ce[mean_logits]"


def test_a_checkpoint_fingerprinted_with_its_draws_restores_with_other_draws(synthetic_mnist_dir, tmp_path):
    """Checkpoints written before CARSO declared its inference settings kept them in the fingerprint; they
    restore under other settings, while another architecture is still refused."""
    config = carso_mnist.get_config("small")
    state = experiment.Experiment(config, data_dir=str(synthetic_mnist_dir)).init_state()
    written_before = json.loads(json.dumps({"model": config.model.to_dict(),
                                            "shapes": checkpoint.fingerprint(config.model, state)["shapes"]}))
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
    ckpt.save(state, written_before, force=True)
    ckpt.wait()
    redrawn = models.with_inference_settings(config.model, {"n_draws": 3, "aggregation": "mean_softmax"})
    assert "n_draws" not in checkpoint.fingerprint(redrawn, state)["model"]
    variables = ckpt.restore_latest_variables(state, checkpoint.fingerprint(redrawn, state))
    for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rewired = models.with_inference_settings(config.model, {})
    rewired.representation_paths = tuple(reversed(rewired.representation_paths))  # same shapes, other model
    with pytest.raises(checkpoint.CheckpointMismatchError, match="model config differs"):
        ckpt.restore_latest_variables(state, checkpoint.fingerprint(rewired, state))
    ckpt.close()
    assert evaluation.model_identity(redrawn, variables) != evaluation.model_identity(config.model, variables)
    with pytest.raises(ValueError, match="relu_mlp|inference settings are|declares none"):
        models.with_inference_settings(config_lib.load_config("relu_mlp_mnist").model, {"hidden": (3,)})
