"""Tests of `andor_jax.evaluation` on models of the model protocol: randomised models (the key reaches the
logits, EOT, the worst case over verdict draws), gradient modes as attack tags and the error for a mode a
model lacks, the transfer setting, and a trained work directory evaluated and certified on different example
sets without their numbers being combined."""
from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from andor_jax import cli, evaluation, models
from andor_jax.attacks import AttackResult, AttackSpec, registry
from andor_jax.evaluators import robustness

DIM, CLASSES = 8, 3


class NoisyLinear(nn.Module):
    """A randomised model: a linear classifier of ``x + sigma * noise``, the noise drawn from the
    ``"sample"`` stream; its mode ``"smooth"`` has the same forward values (a stand-in for a differentiable
    surrogate)."""

    sigma: float = 0.1
    randomised = True
    gradient_modes = ("true", "smooth")
    submodels = ()

    @nn.compact
    def __call__(self, x, *, train: bool = False, rho=None, gradient=None):
        kernel = self.param("kernel", nn.initializers.normal(1.0), (x.shape[-1], CLASSES))
        return (x + self.sigma * jax.random.normal(self.make_rng("sample"), x.shape)) @ kernel

    def logits(self, x, *, gradient=None):
        return self(x, gradient=gradient)


class Coin(nn.Module):
    """Two logits ``(x_0 + noise, 0)``: label 0 is always right for x_0 = 5, always wrong for x_0 = -5,
    and right on about half the draws for x_0 = 0."""

    randomised = True
    gradient_modes = ("true",)
    submodels = ()

    def __call__(self, x, *, train: bool = False, rho=None):
        noise = jax.random.normal(self.make_rng("sample"), x.shape[:1])
        return jnp.stack([x[:, 0] + noise, jnp.zeros(x.shape[0])], axis=1)


class Quantised(nn.Module):
    """A deterministic defence: ``classifier`` applied to the input rounded to eighths behind a
    stop_gradient, so that its own gradient is zero; the classifier alone has useful gradients."""

    classifier: nn.Module
    submodels = ("classifier",)

    def __call__(self, x, *, train: bool = False, rho=None):
        return self.classifier(jax.lax.stop_gradient(jnp.round(x * 8) / 8) + 0 * x)


def _inputs(n=6, seed=1):
    return 0.5 + jax.random.uniform(jax.random.PRNGKey(seed), (n, DIM), minval=-0.2, maxval=0.2)


@pytest.fixture(scope="module")
def noisy():
    model = NoisyLinear()
    variables = model.init({"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)}, _inputs())
    x = _inputs()
    y = jnp.argmax(x @ variables["params"]["kernel"], axis=-1)
    return model, variables, x, y


def test_the_key_reaches_the_logits_of_a_randomised_model(noisy):
    model, variables, x, _ = noisy
    target = evaluation.target_of(model, variables, tags=[])
    assert target.randomness == robustness.Randomness(20, 10, "fresh")
    one, other = jax.random.PRNGKey(5), jax.random.PRNGKey(6)
    np.testing.assert_array_equal(target.logits_fn(x, one), target.logits_fn(x, one))
    assert not np.allclose(target.logits_fn(x, one), target.logits_fn(x, other))
    np.testing.assert_array_equal(target.logits_fn(x, one), model.apply(variables, x, rngs={"sample": one}))


@pytest.mark.parametrize("name, settings", [("pgd", {"steps": 4, "restarts": 2}), ("deepfool", {"max_iter": 3})])
def test_eot_with_one_draw_and_a_fixed_key_equals_the_plain_attack(noisy, name, settings):
    """Through the registry: EOT over one draw of the model held at a fixed key is, point for point, the
    attack on that deterministic network."""
    model, variables, x, y = noisy
    fixed = jax.random.PRNGKey(3)
    held = jax.jit(lambda inputs: models.logits(model, variables, inputs, key=fixed))
    key = jax.random.PRNGKey(4)
    plain = registry.run_attack(name, held, x, y, key, 0.1, **settings)
    eot = registry.run_attack(name, lambda inputs, draw: held(inputs), x, y, key, 0.1, eot_draws=1, **settings)
    np.testing.assert_array_equal(eot.x_adv, plain.x_adv)
    np.testing.assert_array_equal(eot.broken, plain.broken)


def test_the_verdict_is_the_worst_case_over_verdict_draws(monkeypatch):
    """An example right on some draws and wrong on others counts as broken, clean and under attack; the
    fraction of right draws is what one fresh draw would have credited it with on average."""
    monkeypatch.setitem(registry.ATTACKS, "identity", AttackSpec(
        lambda logits_fn, x, y, key, *, eps, domain: AttackResult(x, jnp.zeros(len(y), bool)), {}, "x itself",
        "linf", "iterative"))
    model = Coin()
    x = jnp.zeros((12, 2)).at[:, 0].set(jnp.repeat(jnp.array([5.0, 0.0, -5.0]), 4))
    y = jnp.zeros(12, jnp.int32)
    target = evaluation.target_of(model, {}, tags=[], verdict_draws=10)
    outcomes = robustness.run(target.logits_fn, x, y, attacks=["identity"], eps_grid=[0.1], domain=(-6.0, 6.0),
                              key=jax.random.PRNGKey(0), randomness=target.randomness, progress=False)
    coins = slice(4, 8)
    assert np.all(outcomes.clean_per_draw[:4] == 1.0) and np.all(outcomes.clean_per_draw[8:] == 0.0)
    assert np.all((outcomes.clean_per_draw[coins] > 0) & (outcomes.clean_per_draw[coins] < 1))
    np.testing.assert_array_equal(outcomes.clean, np.arange(12) < 4)
    np.testing.assert_array_equal(outcomes.correct["identity"]["0.1"], np.arange(12) < 4)
    # what the per-draw mean would say for the coins, recomputed from ten draws made here
    draws = [np.asarray(target.logits_fn(x, k)[:, 0] > 0) for k in jax.random.split(jax.random.PRNGKey(9), 10)]
    assert 0 < np.mean(np.array(draws)[:, coins]) < 1
    assert outcomes.settings["randomness"] == {"randomised": True, "mode": "fresh", "eot_draws": 20,
                                               "verdict_draws": 10}


def test_fixed_randomness_attacks_one_deterministic_network(noisy, monkeypatch):
    """With randomness 'fixed' every attack query sees the same draw (the model is a deterministic network
    to the attack), and the verdicts still draw afresh."""
    model, variables, x, y = noisy
    keys_seen = []
    run_attack = registry.run_attack

    def spying(name, logits_fn, xb, yb, key, eps, domain, **kwargs):
        assert kwargs["eot_draws"] is None, "a held model needs no EOT"
        keys_seen.append(np.asarray(logits_fn(xb)))
        keys_seen.append(np.asarray(logits_fn(xb)))
        return run_attack(name, logits_fn, xb, yb, key, eps, domain, **kwargs)

    monkeypatch.setattr(registry, "run_attack", spying)
    target = evaluation.target_of(model, variables, tags=[], randomness="fixed", verdict_draws=4)
    outcomes = robustness.run(target.logits_fn, x, y, attacks=["fgsm", "ifgsm"], eps_grid=[0.05, 0.1],
                              key=jax.random.PRNGKey(0), overrides={"ifgsm": {"steps": 2}},
                              randomness=target.randomness, progress=False)
    for seen in keys_seen[1:]:
        np.testing.assert_array_equal(seen, keys_seen[0])
    assert outcomes.settings["randomness"]["mode"] == "fixed" and outcomes.settings["randomness"]["eot_draws"] is None


def test_a_named_gradient_mode_is_an_attack_tag_and_a_missing_one_a_clear_error(noisy):
    model, variables, x, y = noisy
    target = evaluation.target_of(model, variables, tags=["smooth"], eot_draws=2, verdict_draws=2)
    outcomes = robustness.run(target.logits_fn, x, y, attacks=["fgsm[smooth]"], eps_grid=[0.1],
                              key=jax.random.PRNGKey(0), gradient_logits_fns=target.gradient_logits_fns,
                              randomness=target.randomness, progress=False)
    assert outcomes.settings["attacks"]["fgsm[smooth]"]["gradient"] == "smooth"
    with pytest.raises(ValueError, match=r"gradient mode 'psd', which NoisyLinear does not have \(its gradient "
                                         r"modes: true, smooth\)"):
        evaluation.target_of(model, variables, tags=["psd"])
    relu = models.build_model(ml_collections.ConfigDict({"name": "mlp", "hidden": (4,)}))
    relu_variables = relu.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))
    with pytest.raises(ValueError, match="--psd and \\[psd\\] need a model with pseudo-gradients"):
        evaluation.target_of(relu, relu_variables, tags=["psd"])


def test_transfer_attacks_the_sub_network_and_the_whole_model_judges():
    """The defence's own gradients are zero; I-FGSM through its classifier alone finds points that the whole
    model then misclassifies.  The outcome equals I-FGSM on the classifier judged by the whole model."""
    model = Quantised(classifier=nn.Dense(CLASSES, use_bias=False))
    x = _inputs(n=16, seed=2)
    variables = model.init(jax.random.PRNGKey(0), x)
    y = jnp.argmax(models.logits(model, variables, x), axis=-1)
    settings = {"steps": 5}
    key = jax.random.PRNGKey(0)
    whole = robustness.run(jax.jit(lambda v: models.logits(model, variables, v)), x, y, attacks=["ifgsm"],
                           eps_grid=[0.15], key=key, overrides={"ifgsm": settings}, progress=False)
    target = evaluation.target_of(model, variables, tags=[], attack_model="classifier")
    transfer = robustness.run(target.logits_fn, x, y, attacks=["ifgsm"], eps_grid=[0.15], key=key,
                              overrides={"ifgsm": settings}, attack_logits_fn=target.attack_logits_fn,
                              attack_model="classifier", progress=False)
    classifier, classifier_variables = model.classifier, {"params": variables["params"]["classifier"]}
    points = registry.run_attack("ifgsm", lambda v: classifier.apply(classifier_variables, v), x, y,
                                 jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, 0), 0), 0), 0.15,
                                 **settings).x_adv
    expected = np.asarray(jnp.argmax(models.logits(model, variables, points), axis=-1) == y)
    np.testing.assert_array_equal(transfer.correct["ifgsm"]["0.15"], expected)
    assert transfer.correct["ifgsm"]["0.15"].sum() < whole.correct["ifgsm"]["0.15"].sum() == len(y)
    assert "transfer" in transfer.settings["threat_model"]["knowledge"]
    with pytest.raises(ValueError, match="not a sub-network of Quantised"):
        evaluation.target_of(model, variables, tags=[], attack_model="purifier")


# ---------------------------------------------------------------------------------------------------------
# A trained work directory: evaluated on N examples, certified on M != N.

SMALL = ["--config.model.hidden=(32,)", "--config.train.epochs=1", "--config.train.batch_size=40",
         "--config.evaluate.batch_size=40"]


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, synthetic_mnist_dir):
    workdir = tmp_path_factory.mktemp("evaluation_run")
    assert cli.main(["train", "--config", "relu_mlp_mnist", "--workdir", str(workdir), "--data-dir",
                     str(synthetic_mnist_dir), "--no-progress", *SMALL]) == 0
    return workdir


def test_certify_on_other_examples_never_combines_with_the_evaluation(trained_workdir, synthetic_mnist_dir, capsys):
    data = ["--data-dir", str(synthetic_mnist_dir), "--no-progress"]
    assert cli.main(["evaluate", "--workdir", str(trained_workdir), "--attacks", "fgsm,pgd", "--eps", "0.05,0.2",
                     "--limit", "40", "--set", "pgd.restarts=1", "--set", "pgd.steps=5", *data]) == 0
    assert (trained_workdir / evaluation.OUTCOMES_FILE).exists()
    assert cli.main(["certify", "--workdir", str(trained_workdir), "--eps", "0.05,0.1", "--limit", "100", *data]) == 0
    assert "not combined" in capsys.readouterr().err
    report = json.loads((trained_workdir / "report.json").read_text())
    sets = {entry["examples"]["count"]: entry for entry in report["example_sets"].values()}
    assert set(sets) == {40, 100}
    attacked, certified = sets[40], sets[100]
    assert "robustness" in attacked and "certified" not in attacked
    assert set(certified) == {"examples", "certified"}
    with np.load(trained_workdir / evaluation.OUTCOMES_FILE) as outcomes:  # the report's numbers, per example
        clean = outcomes["clean"]
        assert len(clean) == 40 and attacked["robustness"]["clean_accuracy"] == np.mean(clean)
        assert attacked["robustness"]["attacks"]["pgd"]["0.2"] == np.mean(clean & outcomes["pgd@0.2"])
    markdown = (trained_workdir / "report.md").read_text()
    assert "| gap |" not in markdown and "robust (upper bound)" not in markdown
    assert "on these 40 examples" in markdown and "on these 100 examples" in markdown
    assert "config `relu_mlp_mnist`" in markdown and "architecture `mlp`" in markdown
    assert "checkpoint step 25" in markdown and "andor_jax 0.1.0" in markdown and "UTC" in markdown
    # certified on the attacked examples: now, and only there, the gap
    assert cli.main(["certify", "--workdir", str(trained_workdir), "--eps", "0.05,0.2", "--limit", "40", *data]) == 0
    report = json.loads((trained_workdir / "report.json").read_text())
    entry = next(e for e in report["example_sets"].values() if e["examples"]["count"] == 40)
    assert set(entry["certified"]["certified_accuracy"]) == {"0.05", "0.2"}
    markdown = (trained_workdir / "report.md").read_text()
    assert "| robust (upper bound) | certified (lower bound) | gap |" in markdown
    assert len(report["example_sets"]) == 2


def test_psd_on_a_model_without_pseudo_gradients_fails_before_any_work(trained_workdir, synthetic_mnist_dir,
                                                                       monkeypatch):
    """From the model's declarations alone: neither the checkpoint nor the data is loaded."""
    def never(*args, **kwargs):
        raise AssertionError("nothing may be loaded or attacked")

    monkeypatch.setattr(registry, "run_attack", never)
    monkeypatch.setattr(evaluation.experiment_lib, "load_trained", never)
    for extra in (["--psd"], ["--attacks", "fgsm,pgd[psd]"], ["--eot", "3"]):
        assert cli.main(["evaluate", "--workdir", str(trained_workdir), "--data-dir", str(synthetic_mnist_dir),
                         "--no-progress", "--limit", "10", *extra]) == 2, extra
    with pytest.raises(ValueError, match="gradient mode 'psd'"):
        evaluation.evaluate(trained_workdir, data_dir=str(synthetic_mnist_dir), pseudo_gradient_attacks=True,
                            progress=False, limit=10)


def test_bad_suite_requests_fail_before_any_work(trained_workdir, synthetic_mnist_dir, monkeypatch, capsys):
    """An unknown suite, the randomised models' suite on a deterministic model, a suite beside an attack
    list and a bad convergence threshold are one-line errors (exit status 2) before anything is loaded."""
    def never(*args, **kwargs):
        raise AssertionError("nothing may be loaded or attacked")

    monkeypatch.setattr(registry, "run_attack", never)
    monkeypatch.setattr(evaluation.experiment_lib, "load_trained", never)
    for extra, message in ((["--suite", "strong"], "unknown suite 'strong'; suites: standard, plus, rand, paper"),
                           (["--suite", "rand"], "suite 'rand' is for randomised models"),
                           (["--suite", "standard", "--attacks", "fgsm"], "an attack list or a suite, not both"),
                           (["--config.evaluate.convergence_threshold=2.0"], "convergence threshold must be a fraction")):
        assert cli.main(["evaluate", "--workdir", str(trained_workdir), "--data-dir", str(synthetic_mnist_dir),
                         "--no-progress", "--limit", "10", *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra


def test_the_convergence_attack_is_chosen_on_the_command_line(trained_workdir, synthetic_mnist_dir, tmp_path):
    """``--config.evaluate.convergence_attack`` replaces the largest-budget attack (PGD 6 x 2 here) as the
    one the check repeats, at twice its steps and restarts."""
    assert cli.main(["evaluate", "--workdir", str(trained_workdir), "--data-dir", str(synthetic_mnist_dir),
                     "--no-progress", "--limit", "20", "--eps", "0.1", "--attacks", "pgd,apgd-ce", "--set",
                     "pgd.steps=6", "--set", "pgd.restarts=2", "--set", "apgd-ce.steps=4", "--output", str(tmp_path),
                     "--config.evaluate.convergence_attack=apgd-ce"]) == 0
    entry = next(iter(json.loads((tmp_path / "report.json").read_text())["example_sets"].values()))
    check = entry["robustness"]["settings"]["convergence"]
    assert check["attack"] == "apgd-ce" and check["settings"]["steps"] == 8, check
