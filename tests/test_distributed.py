"""Multi-process data parallelism (`andor_jax.distributed`): two processes on 127.0.0.1, two CPU devices each,
train and evaluate through the command line as one run; the parameters and every example's outcome must be
those of one process with the same four devices."""
import json
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from andor_jax import distributed
from conftest import subprocess_environment

PROCESS_TIMEOUT_S = 150  # both processes together; a hang (a missed collective) fails, it does not wait

CONFIG = textwrap.dedent("""
    from andor_jax.config import base_config

    def get_config():
        config = base_config()
        config.model.name = "mlp"
        config.model.hidden = (16,)
        config.data.source = "dir"
        config.data.limit_train = 200
        config.data.limit_test = 60
        config.train.epochs = 1
        config.train.batch_size = 40          # 5 steps, 10 examples per device
        config.train.checkpoint_every_steps = 5     # one save, at the end: orbax's barriers cost time
        config.evaluate.attacks = ["fgsm", "pgd"]   # PGD's random start: each chunk needs its own key
        config.evaluate.eps = [0.02]
        config.evaluate.limit = 60
        config.evaluate.batch_size = 20       # 3 chunks: process 0 attacks chunks 0 and 2, process 1 chunk 1
        config.evaluate.attack_settings = {"pgd": {"steps": 3, "restarts": 1}}
        config.evaluate.convergence_check = False
        return config
""")

# One interpreter per process runs both commands, so that start-up (the slow part) is paid once.
DRIVER = ("import sys; from andor_jax import cli; workdir, data, config = sys.argv[1:4]; flags = sys.argv[4:]; "
          "sys.exit(cli.main(['train', '--config', config, '--workdir', workdir, '--data-dir', data, '--no-progress', "
          "*flags]) or cli.main(['evaluate', '--workdir', workdir, '--no-progress', *flags]))")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_processes(count: int, workdir, data_dir, config_path) -> None:
    """Runs ``count`` processes of one run; any failure or a timeout kills them all and shows their output."""
    port = free_port()
    env = subprocess_environment(devices=2)
    processes = [subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(workdir), str(data_dir), str(config_path),
         "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(count), "--process-id", str(index)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for index in range(count)]
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=max(deadline - time.monotonic(), 1))[0])
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in processes:  # a process that failed leaves the others waiting for it: end them all
            if process.poll() is None:
                process.kill()
    outputs = [process.communicate()[0] if index >= len(outputs) else outputs[index]
               for index, process in enumerate(processes)]
    failed = [i for i, process in enumerate(processes) if process.returncode != 0]
    assert not failed, "\n".join(f"--- process {i} (exit {processes[i].returncode}):\n{outputs[i][-3000:]}"
                                  for i in failed)
    return outputs


def test_settings_from_flags_and_environment():
    assert distributed.settings_from(environ={}) == distributed.Settings()
    assert distributed.settings_from(environ={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4",
                                              "JAX_PROCESS_ID": "3"}) == ("h:1", 4, 3)
    assert distributed.settings_from("h:2", "4", None, environ={"JAX_PROCESS_ID": "1"}) == ("h:2", 4, 1)
    assert distributed.settings_from("auto", environ={}) == ("auto", None, None)
    for args, message in ((("h:1", 2, None), "missing: --process-id"), (("h:1", 2, 2), "--process-id must be in 0..1"),
                          (("h", 2, 0), "HOST:PORT"), (("h:1", "two", 0), "--num-processes"),
                          (("auto", 2, None), "give neither")):
        with pytest.raises(ValueError, match=message):
            distributed.settings_from(*args, environ={})


def test_partial_flags_are_a_one_line_error_before_anything_is_done(tmp_path, capsys, monkeypatch):
    from andor_jax import cli

    for variable in distributed.ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)
    workdir = tmp_path / "never"
    code = cli.main(["train", "--config", "quickstart:small", "--workdir", str(workdir), "--coordinator", "127.0.0.1:1"])
    assert code == 2 and "missing: --num-processes, --process-id" in capsys.readouterr().err
    assert not workdir.exists()


def test_share_owns_every_count_th_chunk():
    share = distributed.Share(1, 3)
    assert [c for c in range(7) if share.owns(c)] == [1, 4]
    assert share.progress_path("out/report_progress.npz").name == "report_progress.1of3.npz"


def test_two_processes_train_and_evaluate_as_one(tmp_path, synthetic_mnist_dir):
    from andor_jax import config as config_lib, evaluation, experiment

    config_path = tmp_path / "tiny.py"
    config_path.write_text(CONFIG)
    multi = tmp_path / "multi"
    outputs = run_processes(2, multi, synthetic_mnist_dir, config_path)
    assert "trained; checkpoints" in outputs[0] and "trained; checkpoints" not in outputs[1]  # process 0 speaks

    config = config_lib.load_config(str(config_path))
    config.train.num_devices = 4  # one process with the same four devices (conftest forces four)
    single = tmp_path / "single"
    state = experiment.fit(config, single, data_dir=str(synthetic_mnist_dir), progress=False)
    evaluation.evaluate(multi, progress=False, output_dir=single)  # the two-process run's model, by one process

    _, variables = experiment.load_trained(multi)
    assert int(np.asarray(state.step)) == 5
    for got, want in zip(jax_leaves(variables["params"]), jax_leaves(state.params)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert len((multi / "metrics.jsonl").read_text().splitlines()) == 1  # written once, by process 0
    with np.load(multi / evaluation.OUTCOMES_FILE) as got, np.load(single / evaluation.OUTCOMES_FILE) as want:
        assert sorted(got.files) == sorted(want.files)
        for name in set(got.files) - {"seconds"}:  # the fingerprint too: the same model, inputs and settings
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert 0 < got["pgd@0.02"].sum() < got["clean"].sum()  # the attack breaks some examples, not all
    assert not list(multi.glob("report_progress*"))  # the per-process files are gone
    report = lambda d: json.loads((d / "report.json").read_text())["example_sets"]  # noqa: E731
    assert [s["robustness"]["robust_accuracy"] for s in report(multi).values()] == \
           [s["robustness"]["robust_accuracy"] for s in report(single).values()]


def jax_leaves(tree):
    import jax

    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]
