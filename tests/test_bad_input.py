"""Bad input through the command line: every one is a one-line error naming the problem, exit status 2, no
traceback, and the work directory's files stay as they were.  Most go through `cli.main` in-process (fast);
those where the process matters (a signal, a user without write permission) run `python -m andor_jax.cli`.

One small trained work directory (a 16-unit MLP, one epoch on the synthetic IDX files) serves every test.
"""
import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import synthetic_digits, write_idx
from andor_jax import cli

TINY = ["--config.model.hidden=(16,)", "--config.train.epochs=1", "--config.train.batch_size=100",
        "--config.evaluate.limit=20", "--config.evaluate.batch_size=10", "--config.evaluate.attacks=fgsm,pgd",
        "--config.evaluate.eps=0.1,0.2", "--no-progress"]
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_mnist_dir):
    workdir = tmp_path_factory.mktemp("bad_input") / "trained"
    assert cli.main(["train", "--config", "relu_mlp_mnist", "--workdir", str(workdir), "--data-dir",
                     str(synthetic_mnist_dir), *TINY]) == 0
    return workdir


def snapshot(directory: pathlib.Path) -> dict:
    """Every path under ``directory`` with the SHA-256 of its content (None for a directory)."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*"))}


def idx_dir(directory: pathlib.Path, seed: int = 5, train=None, test=None) -> pathlib.Path:
    """Four IDX files in MNIST's layout: synthetic digits, or the (images, labels) given per split."""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, split, count in (("train", train, 200), ("t10k", test, 50)):
        images, labels = split if split is not None else synthetic_digits(count, seed + (prefix == "t10k"))
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


def assert_refused(capsys, argv, expected: str, workdir: pathlib.Path | None = None):
    """``argv`` exits with status 2 and one stderr line ``andor-jax CMD: error: ...`` holding ``expected``,
    without a traceback, leaving ``workdir`` as it was."""
    before = snapshot(workdir) if workdir is not None else None
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"andor-jax {argv[0]}: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    if workdir is not None:
        assert snapshot(workdir) == before
    return lines[0]


def train_argv(workdir, data_dir, *extra):
    return ["train", "--config", "relu_mlp_mnist", "--workdir", workdir, "--data-dir", data_dir, *TINY, *extra]


# ------------------------------------------------------------------------------------------------- train

TRAIN_SETTINGS = [
    ("--config.train.epochs=-1", "train.epochs must be an integer >= 1, got -1"),
    ("--config.train.epochs=0", "train.epochs must be an integer >= 1, got 0"),
    ("--config.train.epochs=abc", "train.epochs"),
    ("--config.train.batch_size=0", "train.batch_size must be an integer >= 1"),
    ("--config.train.batch_size=-8", "train.batch_size must be an integer >= 1"),
    ("--config.train.learning_rate=-1.0", "train.learning_rate must lie in (0, inf]"),
    ("--config.train.learning_rate=0.0", "train.learning_rate must lie in (0, inf]"),
    ("--config.train.learning_rate=1e999", "train.learning_rate must be a finite number"),
    ("--config.train.momentum=1.5", "train.momentum must lie in [0, 1)"),
    ("--config.train.psd_mix=2.0", "train.psd_mix must lie in [0, 1]"),
    ("--config.train.checkpoint_every_steps=0", "train.checkpoint_every_steps must be an integer >= 1"),
    ("--config.train.keep_checkpoints=0", "train.keep_checkpoints must be an integer >= 1"),
    ("--config.train.log_every_steps=-1", "train.log_every_steps must be an integer >= 1"),
    ("--config.data.limit_train=-10", "data.limit_train must be an integer >= 0"),
    ("--config.data.limit_test=-1", "data.limit_test must be an integer >= 0"),
    ("--config.seed=-3", "seed must be an integer >= 0"),
    ("--config.data.domain=(0,255)", "domain (0, 255) is not supported"),
    ("--config.data.source=web", "unknown source 'web'"),
    ("--config.data.dataset=cifar10", "unknown dataset 'cifar10'"),
    ("--config.evaluate.eps=0.3:0.1:0.1", "evaluate.eps"),
    ("--config.evaluate.eps=0.1,0.7,1.5", "eps 1.5 exceeds the linf diameter 1"),
    ("--config.evaluate.attacks=fgsm,nosuch", "unknown attack 'nosuch'"),
    ("--config.evaluate.limit=-5", "evaluate.limit must be an integer >= 0"),
    ("--config.evaluate.batch_size=0", "evaluate.batch_size must be an integer >= 1"),
    ("--config.train.epochz=3", "unknown config key 'train.epochz'"),
    ("--config.model.hidden=(16,0)", "config key model.hidden holds 0: the sizes of a model are integers >= 1"),
    ("--config.model.hidden=(-4,)", "config key model.hidden holds -4"),
    ("--config.model.name=nosuch", "unknown architecture 'nosuch'"),
    ("--config.train.optimizer=nadam", "unknown optimizer 'nadam'"),
]


@pytest.mark.parametrize("override, expected", TRAIN_SETTINGS, ids=[o.split("=")[0][9:] + "=" + o.split("=")[1]
                                                                    for o, _ in TRAIN_SETTINGS])
def test_train_setting_refused_before_anything_is_done(capsys, trained, synthetic_mnist_dir, tmp_path, override,
                                                       expected):
    # a work directory that holds a trained run keeps its files; a new one is not created
    assert_refused(capsys, train_argv(trained, synthetic_mnist_dir, override), expected, trained)
    assert_refused(capsys, train_argv(tmp_path / "new", synthetic_mnist_dir, override), expected)
    assert not (tmp_path / "new").exists()


def test_unknown_config_and_missing_config_file(capsys, tmp_path):
    assert_refused(capsys, ["train", "--config", "nonexistent", "--workdir", tmp_path / "w"], "no config named")
    assert_refused(capsys, ["train", "--config", tmp_path / "none.py", "--workdir", tmp_path / "w"], "does not exist")
    assert not (tmp_path / "w").exists()


def test_train_workdir_that_is_a_file(capsys, tmp_path, synthetic_mnist_dir):
    (tmp_path / "file").write_text("not a directory")
    assert_refused(capsys, train_argv(tmp_path / "file", synthetic_mnist_dir), "is a file, not a directory", tmp_path)
    assert_refused(capsys, train_argv(tmp_path / "file" / "sub", synthetic_mnist_dir), "cannot be created", tmp_path)


@pytest.mark.parametrize("make, expected", [
    (lambda d: (d / "f").write_text("x") and d / "f", "is a file, not a directory of IDX files"),
    (lambda d: d / "missing", "does not exist"),
])
def test_train_data_dir_that_is_no_directory(capsys, tmp_path, make, expected):
    data_dir = make(tmp_path)
    assert_refused(capsys, train_argv(tmp_path / "w", data_dir), expected)
    assert not (tmp_path / "w").exists()


def bad_label_dir(d):
    images, labels = synthetic_digits(50, 3)
    labels[7] = 12
    return idx_dir(d, test=(images, labels))


def empty_test_dir(d):
    return idx_dir(d, test=(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8)))


def missing_file_dir(d):
    idx_dir(d)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    return d


@pytest.mark.parametrize("make, expected", [
    (bad_label_dir, "t10k-labels-idx1-ubyte.gz: label 12 (example 7) is outside 0..9"),
    (empty_test_dir, "t10k-images-idx3-ubyte.gz: holds no images"),
    (missing_file_dir, "files missing: t10k-labels-idx1-ubyte.gz"),
], ids=["bad-label", "empty-test-split", "missing-file"])
def test_bad_data_leaves_no_work_directory(capsys, tmp_path, make, expected):
    data_dir = make(tmp_path / "data")
    assert_refused(capsys, train_argv(tmp_path / "w", data_dir), expected)
    assert not (tmp_path / "w").exists()


def test_fewer_training_examples_than_a_batch(capsys, trained, synthetic_mnist_dir, tmp_path):
    expected = "the training split holds 50 examples, fewer than one batch (train.batch_size = 100)"
    for workdir in (trained, tmp_path / "new"):
        assert_refused(capsys, train_argv(workdir, synthetic_mnist_dir, "--config.data.limit_train=50"), expected,
                       trained)
    assert not (tmp_path / "new").exists()


def test_resumed_training_on_other_data_is_refused(capsys, trained, tmp_path):
    assert_refused(capsys, ["train", "--config", "relu_mlp_mnist", "--workdir", trained, "--data-dir",
                            idx_dir(tmp_path / "other"), *TINY], "was trained on mnist from dir", trained)


# ---------------------------------------------------------------------------------------------- evaluate

EVALUATE_ARGS = [
    (["--limit", "-5"], "--limit must be an integer >= 0, got -5"),
    (["--config.evaluate.limit=-5"], "evaluate.limit must be an integer >= 0"),
    (["--limit", "5", "--config.evaluate.limit=7"], "give --limit or --config.evaluate.limit, not both"),
    (["--config.train.epochs=3"], "takes --config.evaluate.KEY=VALUE overrides, --config.model.KEY=VALUE for "
                                  "inference settings only"),
    (["--config.model.hidden=(3,)"], "--config.model.hidden cannot change after training: architecture 'mlp' has "
                                     "no inference settings"),
    (["--config.evaluate.nosuch=1"], "cannot be applied to evaluate"),
    (["--config.evaluate.convergence_attack=apgd-nosuch"], "--config.evaluate.convergence_attack: unknown attack"),
    (["--config.evaluate.batch_size=0"], "evaluate.batch_size must be an integer >= 1"),
    (["--config.evaluate.eps=[2.0]"], "exceeds the linf diameter"),
    (["--eps", "0.3:0.1:0.1"], "the range is reversed: stop 0.1 < start 0.3"),
    (["--eps", "-0.1"], "every eps must be a finite number >= 0"),
    (["--eps", "1.5"], "eps 1.5 exceeds the linf diameter 1 of the input domain"),
    (["--eps", "a:b:c"], "cannot read eps grid"),
    (["--eps", "0.1:0.3:0"], "step must be > 0"),
    (["--eps", "0.1,0.1"], "lists a value twice"),
    (["--eps", "0.1:0.3"], "a range has three parts"),
    (["--attacks", "fgsm,nosuch"], "unknown attack 'nosuch'"),
    (["--attacks", ","], "--attacks names no attack"),
    (["--attacks", "fgsm,fgsm"], "names an attack twice"),
    (["--attacks", "pgd[]"], "must look like NAME or NAME[gradient]"),
    (["--eot", "-1"], "--eot must be an integer >= 0"),
    (["--verdict-draws", "0"], "--verdict-draws must be an integer >= 1"),
    (["--eot", "2", "--config.evaluate.eot_draws=3"], "give --eot or --config.evaluate.eot_draws, not both"),
    (["--config.evaluate.verdict_draws=-2"], "evaluate.verdict_draws must be an integer >= 1"),
    (["--psd"], "gradient mode 'psd', which Sequential does not have"),
    (["--attacks", "fgsm,pgd[psd]"], "gradient mode 'psd'"),
    (["--eot", "5"], "--eot apply to randomised models; Sequential is deterministic"),
    (["--config.evaluate.attack_model=classifier"], "is not a sub-network of Sequential"),
    (["--set", "pgd.steps=-3"], "attack setting pgd.steps must be an integer >= 1"),
    (["--set", "restarts=1"], "must look like ATTACK.SETTING=VALUE"),
    (["--set", "pgd.nosuch=1"], "has no setting"),
    (["--set", "nosuch.steps=1"], "unknown attack 'nosuch'"),
]


@pytest.mark.parametrize("extra, expected", EVALUATE_ARGS, ids=[" ".join(e) for e, _ in EVALUATE_ARGS])
def test_evaluate_argument_refused_before_loading(capsys, trained, extra, expected):
    assert_refused(capsys, ["evaluate", "--workdir", trained, *extra], expected, trained)


CERTIFY_ARGS = [
    (["--limit", "-5"], "--limit must be an integer >= 0, got -5"),
    (["--eps", "0.3:0.1:0.1"], "the range is reversed"),
    (["--eps", "2"], "exceeds the linf diameter"),
    (["--config.evaluate.attacks=fgsm"], "cannot be applied to certify"),
    (["--config.evaluate.limit=-1"], "evaluate.limit must be an integer >= 0"),
]


@pytest.mark.parametrize("extra, expected", CERTIFY_ARGS, ids=[" ".join(e) for e, _ in CERTIFY_ARGS])
def test_certify_argument_refused_before_loading(capsys, trained, extra, expected):
    assert_refused(capsys, ["certify", "--workdir", trained, *extra], expected, trained)


@pytest.mark.parametrize("command", ["evaluate", "certify"])
def test_paths_that_are_files_or_missing(capsys, trained, tmp_path, command):
    (tmp_path / "file").write_text("x")
    assert_refused(capsys, [command, "--workdir", tmp_path / "none"], "train first")
    assert_refused(capsys, [command, "--workdir", tmp_path / "file"], "is a file, not a directory")
    assert_refused(capsys, [command, "--workdir", trained, "--output", tmp_path / "file"],
                   f"--output {tmp_path / 'file'} is a file", trained)
    assert_refused(capsys, [command, "--workdir", trained, "--data-dir", tmp_path / "file"],
                   "is a file, not a directory of IDX files", trained)
    assert_refused(capsys, [command, "--workdir", trained, "--data-dir", tmp_path / "none"], "does not exist", trained)


def test_evaluate_on_other_data_is_refused_naming_what_was_trained_on(capsys, trained, synthetic_mnist_dir, tmp_path):
    message = assert_refused(capsys, ["evaluate", "--workdir", trained, "--data-dir", idx_dir(tmp_path / "other")],
                             "this model was trained on mnist from dir", trained)
    assert str(synthetic_mnist_dir) in message and "--data-dir PATH" in message


def copy_of(trained, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(trained, tmp_path / "copy"))


def test_vanished_training_data_is_refused_before_loading(capsys, trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    record = json.loads((workdir / "data.json").read_text())
    (workdir / "data.json").write_text(json.dumps({**record, "directory": str(tmp_path / "gone")}))
    for command in ("evaluate", "certify"):
        assert_refused(capsys, [command, "--workdir", workdir], "no longer exists; pass --data-dir PATH", workdir)


def test_embedded_sample_is_refused_for_a_model_trained_on_files(capsys, trained, tmp_path):
    """The silent fallback of issue 15, the other way round: a record of the embedded sample and files."""
    workdir = copy_of(trained, tmp_path)
    record = json.loads((workdir / "data.json").read_text())
    (workdir / "data.json").write_text(json.dumps({**record, "source": "embedded", "directory": None}))
    message = assert_refused(capsys, ["certify", "--workdir", workdir], "not on mnist from embedded", workdir)
    assert "pass no --data-dir" in message


def test_moved_training_data_is_accepted_and_evaluate_overrides_are_applied(capsys, trained, tmp_path):
    """The same files elsewhere are the same data; --config.evaluate.limit=7 reaches the evaluation."""
    workdir = copy_of(trained, tmp_path)
    record = json.loads((workdir / "data.json").read_text())
    moved = shutil.copytree(record["directory"], tmp_path / "moved")
    (workdir / "data.json").write_text(json.dumps({**record, "directory": str(tmp_path / "gone")}))
    assert cli.main(["evaluate", "--workdir", str(workdir), "--data-dir", str(moved), "--attacks", "fgsm", "--eps",
                     "0.1", "--config.evaluate.limit=7", "--no-progress", "--no-convergence-check"]) == 0
    report = json.loads((workdir / "report.json").read_text())
    assert [section["examples"]["count"] for section in report["example_sets"].values()] == [7]


def test_unrecorded_work_directory_is_not_evaluated_on_the_fallback_sample(capsys, trained, tmp_path, monkeypatch):
    """A work directory of an older version (no data.json), offline, no --data-dir: the embedded sample would
    stand in for the data it was trained on; that is refused, naming the flag."""
    import dataclasses
    import socket

    from andor_jax import data, experiment

    with socket.socket() as s:  # a loopback port nobody listens on: every download fails at once
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    monkeypatch.setitem(data.DATASETS, "mnist", dataclasses.replace(data.MNIST, mirrors=(closed,)))
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "empty-cache"))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(experiment, "_NOTICES_SHOWN", {data.EMBEDDED_SOURCE})  # the notice is tested elsewhere
    workdir = copy_of(trained, tmp_path)
    (workdir / "data.json").unlink()
    assert_refused(capsys, ["certify", "--workdir", workdir], "does not record the data it was trained on", workdir)


@pytest.mark.parametrize("name, content, expected", [
    ("config.json", "{not json", "config.json: not valid JSON"),
    ("data.json", "[1, 2", "data.json: not valid JSON"),
    ("data.json", '{"dataset": "mnist"}', "a data record must hold"),
    ("report_progress.npz", "not an npz", "cannot read the saved progress"),
])
def test_corrupt_work_directory_files(capsys, trained, tmp_path, name, content, expected):
    workdir = copy_of(trained, tmp_path)
    (workdir / name).write_text(content)
    assert_refused(capsys, ["evaluate", "--workdir", workdir], expected, workdir)


# --------------------------------------------------------------------------------------------- processes

def run_cli(*argv, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "andor_jax.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@contextlib.contextmanager
def read_only(directory: pathlib.Path):
    """``directory`` made read-only for this process: permission bits for a user, the immutable attribute for
    root (who ignores permission bits); skips the test where neither can be set."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(directory)]).returncode != 0:
        pytest.skip("root cannot make a directory read-only here (no chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_read_only_work_directory(capsys, trained, tmp_path, synthetic_mnist_dir):
    workdir = copy_of(trained, tmp_path)
    with read_only(workdir):
        assert_refused(capsys, ["evaluate", "--workdir", workdir], "is not writable", workdir)
        assert_refused(capsys, ["certify", "--workdir", workdir], "is not writable", workdir)
        assert_refused(capsys, train_argv(workdir, synthetic_mnist_dir), "is not writable", workdir)
        assert_refused(capsys, train_argv(workdir / "new", synthetic_mnist_dir), "its parent", workdir)
        # reading is enough when the report goes elsewhere: the checks let it through (the run is not made here)
        assert_refused(capsys, ["evaluate", "--workdir", workdir, "--output", tmp_path, "--limit", "-1"],
                       "--limit must be", workdir)


def test_sigterm_during_evaluate_says_how_to_resume_and_the_resumed_run_says_from_where(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    argv = ["evaluate", "--workdir", workdir, "--attacks", "pgd", "--eps", "0.1,0.3", "--limit", "150",
            "--config.evaluate.batch_size=10", "--no-progress", "--no-convergence-check"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen([sys.executable, "-m", "andor_jax.cli", *map(str, argv)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    progress = workdir / "report_progress.npz"
    deadline = time.time() + 240
    while not progress.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "evaluate stopped by SIGTERM" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    with np.load(progress) as saved:
        done = int(saved["chunks_done"])
    assert 1 <= done < 15
    resumed = run_cli(*argv, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done} chunk(s) done, continuing with chunk {done + 1}" in resumed.stderr
    assert "add up both runs" in resumed.stderr
    assert not progress.exists() and (workdir / "report.json").is_file()


def test_version_and_help_texts(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("andor-jax 0.")
    for command in ("evaluate", "certify"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--workdir DIR a trained work directory" in text
        assert "default: evaluate.eps of the work directory's config" in text
        assert "default: evaluate.limit of the work directory's config" in text
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    assert "default: evaluate.attacks of the work directory's config" in " ".join(capsys.readouterr().out.split())
