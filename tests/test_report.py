"""Tests of `andor_jax.report`: the per-example worst case, the sanity checks, and the files written."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from andor_jax import report as report_lib
from andor_jax.attacks import AttackResult, AttackSpec, registry

DIM = 16
KERNEL = jax.random.normal(jax.random.PRNGKey(0), (DIM, 3))


def linear_net(x):
    return x @ KERNEL


def masked_net(x):
    """`linear_net` of a quantised input behind stop_gradient: the forward pass is a classifier, the
    gradient is exactly zero, so gradient attacks cannot move while a random search can."""
    return linear_net(jax.lax.stop_gradient(jnp.round(x * 8) / 8) + 0 * x)


def _data(n=24, seed=1):
    x = jax.random.uniform(jax.random.PRNGKey(seed), (n, DIM), minval=0.3, maxval=0.7)
    return x, jnp.argmax(linear_net(x), axis=-1)


FAST = {"pgd": {"steps": 3, "restarts": 2}, "ifgsm": {"steps": 3}, "square": {"n_queries": 60}}


@pytest.fixture(scope="module")
def small_report():
    x, y = _data()
    y = y.at[0].set((y[0] + 1) % 3)  # one clean error
    return report_lib.robustness_report(
        linear_net, x, y, attacks=["fgsm", "pgd", "square"], eps_grid=[0.02, 0.05, 0.1], domain=(0.0, 1.0),
        key=jax.random.PRNGKey(0), batch_size=10, gradient_logits_fns={"psd": linear_net}, overrides=FAST,
        progress=False)


def test_report_contents(small_report):
    report = small_report
    assert report["n_examples"] == 24
    assert report["clean_accuracy"] == pytest.approx(23 / 24)
    assert set(report["attacks"]) == {"fgsm", "pgd", "square", "fgsm[psd]", "pgd[psd]"}
    for label, accuracies in report["attacks"].items():
        assert list(accuracies) == ["0.02", "0.05", "0.1"]
        for eps, accuracy in accuracies.items():
            assert report["robust_accuracy"][eps] <= accuracy <= report["clean_accuracy"]
    threat = report["settings"]["threat_model"]
    assert threat["norm"] == "linf" and threat["domain"] == [0.0, 1.0] and threat["eps_grid"] == [0.02, 0.05, 0.1]
    pgd = report["settings"]["attacks"]["pgd[psd]"]
    assert pgd["steps"] == 3 and pgd["restarts"] == 2 and pgd["gradient"] == "psd"
    assert pgd["step_size"] == "2.5 * eps / steps"
    assert report["settings"]["attacks"]["square"]["gradient"] == "none"
    names = [check["name"] for check in report["sanity"]]
    assert "non-increasing in eps: pgd" in names
    assert "iterative at least as strong as single-step: pgd[psd] vs fgsm[psd]" in names
    assert "no gradient masking: square vs true-gradient attacks" in names
    json.dumps(report)  # JSON-able



def test_an_interrupted_report_resumes_after_the_last_saved_chunk(small_report, tmp_path, monkeypatch):
    """The chunk outcomes saved after each chunk let a second call finish the work of an interrupted one with
    the result of an uninterrupted run; progress saved for another model is refused."""
    x, y = _data()
    y = y.at[0].set((y[0] + 1) % 3)
    arguments = dict(attacks=["fgsm", "pgd", "square"], eps_grid=[0.02, 0.05, 0.1], domain=(0.0, 1.0),
                     key=jax.random.PRNGKey(0), batch_size=10, gradient_logits_fns={"psd": linear_net},
                     overrides=FAST, progress=False, progress_path=tmp_path / "progress.npz", model_digest="model-a")
    run_attack, calls = registry.run_attack, []

    def interrupted_after_two_chunks(name, *args, **kwargs):
        calls.append(name)
        if len(calls) > 2 * 5 * 3:  # 5 runs x 3 eps per chunk
            raise KeyboardInterrupt
        return run_attack(name, *args, **kwargs)

    monkeypatch.setattr(registry, "run_attack", interrupted_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        report_lib.robustness_report(linear_net, x, y, **arguments)
    monkeypatch.setattr(registry, "run_attack", run_attack)
    with np.load(tmp_path / "progress.npz") as saved:
        assert int(saved["chunks_done"]) == 2
    counted = []
    monkeypatch.setattr(registry, "run_attack", lambda *a, **k: counted.append(1) or run_attack(*a, **k))
    resumed = report_lib.robustness_report(linear_net, x, y, **arguments)
    assert len(counted) == 5 * 3, "only the last of the three chunks is attacked again"
    for field in ("clean_accuracy", "attacks", "robust_accuracy", "sanity"):
        assert resumed[field] == small_report[field], field
    with pytest.raises(ValueError, match="progress of a different evaluation"):
        report_lib.robustness_report(linear_net, x, y, **(arguments | {"model_digest": "model-b"}))
    with pytest.raises(ValueError, match="needs model_digest"):
        report_lib.robustness_report(linear_net, x, y, **(arguments | {"model_digest": None}))
    assert report_lib.digest({"w": jnp.ones(3)}) != report_lib.digest({"w": jnp.zeros(3)})

def test_a_tagged_attack_runs_on_that_gradient_only():
    x, y = _data()
    report = report_lib.robustness_report(
        linear_net, x, y, attacks=["fgsm", "pgd[psd]"], eps_grid=[0.05], key=jax.random.PRNGKey(0),
        batch_size=24, gradient_logits_fns={"psd": linear_net}, doubled_tags=(), overrides=FAST, progress=False)
    assert set(report["attacks"]) == {"fgsm", "pgd[psd]"}
    assert report["settings"]["attacks"]["pgd[psd]"]["gradient"] == "psd"
    assert report["settings"]["attacks"]["pgd[psd]"]["steps"] == 3
    with pytest.raises(ValueError, match=r"'pgd\[bpda\]' differentiates 'bpda'"):
        report_lib.robustness_report(linear_net, x, y, attacks=["pgd[bpda]"], eps_grid=[0.05],
                                     key=jax.random.PRNGKey(0), progress=False)
    with pytest.raises(ValueError, match="gradient-free"):
        report_lib.robustness_report(linear_net, x, y, attacks=["square[psd]"], eps_grid=[0.05],
                                     key=jax.random.PRNGKey(0), gradient_logits_fns={"psd": linear_net},
                                     progress=False)


def test_per_example_worst_case_on_a_hand_made_case(monkeypatch):
    """Two stand-in attacks break known examples (ids in x[:, 0]); one example is a clean error."""
    ids = np.arange(8)
    x = np.stack([ids / 10, np.full(8, 0.5)], axis=1).astype(np.float32)
    y = np.where(ids == 7, 1, 0)  # the model below always predicts 0: example 7 is a clean error
    constant_net = lambda inputs: jnp.stack([jnp.ones(len(inputs)), jnp.zeros(len(inputs))], axis=1)
    breaks = {"fake-a": {0.1: {0, 1}, 0.2: {0, 1, 2}}, "fake-b": {0.1: {3}, 0.2: {3}}}

    def stand_in(table):
        def attack(logits_fn, x, y, key, *, eps, domain, strength=1.0):
            example = np.rint(np.asarray(x)[:, 0] * 10).astype(int)
            return AttackResult(x, jnp.asarray(np.isin(example, list(table[round(float(eps), 6)]))))
        return attack

    for name, table in breaks.items():
        monkeypatch.setitem(registry.ATTACKS, name, AttackSpec(stand_in(table), {}, name, "linf", "iterative"))
    report = report_lib.robustness_report(constant_net, x, y, attacks=["fake-a", "fake-b"], eps_grid=[0.1, 0.2],
                                          key=jax.random.PRNGKey(0), batch_size=3, progress=False)
    assert report["clean_accuracy"] == 7 / 8
    assert report["attacks"] == {"fake-a": {"0.1": 5 / 8, "0.2": 4 / 8}, "fake-b": {"0.1": 6 / 8, "0.2": 6 / 8}}
    assert report["robust_accuracy"] == {"0.1": 4 / 8, "0.2": 3 / 8}


def test_masking_is_flagged():
    x, y = _data(n=12, seed=2)
    y = jnp.argmax(masked_net(x), axis=-1)
    report = report_lib.robustness_report(masked_net, x, y, attacks=["fgsm", "ifgsm", "square"], eps_grid=[0.2],
                                          key=jax.random.PRNGKey(0), overrides=FAST, progress=False)
    assert report["attacks"]["fgsm"]["0.2"] == 1.0 and report["attacks"]["ifgsm"]["0.2"] == 1.0
    assert report["attacks"]["square"]["0.2"] < 0.9
    masking = next(check for check in report["sanity"]
                   if check["name"] == "no gradient masking: square vs true-gradient attacks")
    assert not masking["passed"] and "likely masked" in masking["message"]


def _hand_report(**extra):
    record = lambda kind, gradient="true": {"attack": kind, "description": "d", "norm": "linf", "kind": kind,
                                            "gradient": gradient}
    report = {
        "clean_accuracy": 0.9, "n_examples": 8,
        "attacks": {"fgsm": {"0.1": 0.5, "0.3": 0.25}, "pgd": {"0.1": 0.625, "0.3": 0.125},
                    "square": {"0.1": 0.375, "0.3": 0.5}},
        "robust_accuracy": {"0.1": 0.375, "0.3": 0.125},
        "settings": {"threat_model": {"norm": "linf", "eps_grid": [0.1, 0.3], "domain": [0.0, 1.0],
                                      "knowledge": "white-box"},
                     "attacks": {"fgsm": record("single-step"), "pgd": record("iterative"),
                                 "square": record("gradient-free", "none")}},
    }
    return report | extra


def test_sanity_checks_on_a_hand_made_report():
    checks = {check["name"]: check for check in report_lib.sanity_checks(_hand_report())}
    assert checks["non-increasing in eps: pgd"]["passed"]
    assert not checks["non-increasing in eps: square"]["passed"]
    assert not checks["iterative at least as strong as single-step: pgd vs fgsm"]["passed"]
    assert "0.1" in checks["iterative at least as strong as single-step: pgd vs fgsm"]["message"]
    assert not checks["no gradient masking: square vs true-gradient attacks"]["passed"]
    assert "near chance at large eps" not in checks  # the largest eps, 0.3, is below half the domain
    wide = _hand_report()
    wide["settings"]["threat_model"]["eps_grid"] = [0.1, 0.5]
    wide["attacks"] = {label: {"0.1": a["0.1"], "0.5": a["0.3"]} for label, a in wide["attacks"].items()}
    wide["robust_accuracy"] = {"0.1": 0.375, "0.5": 0.125}
    chance = {check["name"]: check for check in report_lib.sanity_checks(wide)}["near chance at large eps"]
    assert chance["passed"]


def test_format_markdown_table():
    text = report_lib.format_markdown(_hand_report(sanity=report_lib.sanity_checks(_hand_report())))
    assert "Clean accuracy: **90.00%** on 8 examples." in text
    assert "| eps | fgsm | pgd | square | robust (worst case) |" in text
    assert "| 0.1 | 50.00 | 62.50 | 37.50 | 37.50 |" in text
    assert "| 0.3 | 25.00 | 12.50 | 50.00 | 12.50 |" in text
    assert "## Threat model" in text and "- input domain: [0, 1]" in text
    assert "**FAIL** no gradient masking: square vs true-gradient attacks" in text
    certified = report_lib.format_markdown(_hand_report(certified_accuracy={"0.1": 0.25, "0.30": 0.0}))
    assert "| eps | fgsm | pgd | square | robust (upper bound) | certified (lower bound) | gap |" in certified
    assert "| 0.1 | 50.00 | 62.50 | 37.50 | 37.50 | 25.00 | 12.50 |" in certified
    assert "| 0.3 | 25.00 | 12.50 | 50.00 | 12.50 | 0.00 | 12.50 |" in certified


def test_write_report_merges_and_writes_every_file(small_report, tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"certified_accuracy": {"0.05": 0.5, "0.1": 0.25},
                                                      "clean_accuracy": 0.0}))
    paths = report_lib.write_report(small_report, tmp_path)
    merged = json.loads(paths["json"].read_text())
    assert merged["certified_accuracy"] == {"0.05": 0.5, "0.1": 0.25}
    assert merged["clean_accuracy"] == small_report["clean_accuracy"]
    assert merged["robust_accuracy"] == small_report["robust_accuracy"]
    markdown = paths["md"].read_text()
    assert "| eps | fgsm | pgd | square | fgsm[psd] | pgd[psd] | robust (upper bound) | certified (lower bound) | gap |" \
        in markdown
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_refuses_a_corrupt_report(tmp_path):
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(ValueError, match="report.json is not valid JSON"):
        report_lib.write_report(_hand_report(), tmp_path)


@pytest.mark.parametrize("change, message", [
    (dict(attacks=["pgd", "cw"]), r"unknown attack 'cw'; known attacks: \["),
    (dict(attacks=[]), "at least one attack"),
    (dict(eps_grid=[0.1, 1.5]), "exceeds the linf diameter"),
    (dict(eps_grid=[-0.1]), "eps must be a finite number >= 0"),
    (dict(eps_grid=[0.3, 0.30000000001]), "coincide once formatted"),
    (dict(overrides={"pgdd": {"steps": 3}}), r"unknown attack 'pgdd'"),
    (dict(overrides={"pgd": {"stepz": 3}}), r"no setting\(s\) \['stepz'\]"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(domain=(-1.0, 0.5)), "outside the domain"),
])
def test_bad_report_requests_are_refused(change, message):
    x, y = _data(n=4)
    arguments = dict(attacks=["pgd"], eps_grid=[0.1], domain=(0.0, 1.0), key=jax.random.PRNGKey(0),
                     progress=False) | change
    with pytest.raises(ValueError, match=message):
        report_lib.robustness_report(linear_net, x, y, **arguments)


def test_masking_is_judged_per_gradient_mode():
    report = _hand_report()
    report["attacks"]["pgd[psd]"] = {"0.1": 0.25, "0.3": 0.125}
    report["settings"]["attacks"]["pgd[psd]"] = {**report["settings"]["attacks"]["pgd"], "gradient": "psd"}
    checks = {check["name"]: check for check in report_lib.sanity_checks(report)}
    assert not checks["no gradient masking: square vs true-gradient attacks"]["passed"]
    assert checks["no gradient masking: square vs psd-gradient attacks"]["passed"]
