"""Sanity alarms, each triggered on predictions built by hand in run dirs (eval.json +
predictions_test.npz) for a two-task dataset whose tasks are not ctr/cvr, and shown in
summary.csv/json, the delta analysis, the chain's table, the report and FINDINGS.md."""

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from recsmith.metrics.auc import auc, gauc
from recsmith.metrics.classification import calibration, logloss
from recsmith.run_dir import RunDir
from recsmith.tasks import TaskSpec
from recsmith.train.predictions import save_predictions

TASKS = {"income": TaskSpec("income", "income"), "marital": TaskSpec("marital", "marital")}
ROWS, USERS = 3000, 150


def labels_and_users(seed=0):
    rng = np.random.default_rng(seed)
    return {"income": (rng.random(ROWS) < 0.2).astype(np.float32),
            "marital": (rng.random(ROWS) < 0.4).astype(np.float32)}, rng.integers(0, USERS, ROWS)


def informative(y, rng, strength=1.5):
    """Calibrated-looking probabilities that rank positives higher (AUC about 0.8)."""
    logit = np.log(y.mean() / (1 - y.mean())) + strength * (y - y.mean()) + rng.normal(0, 1.0, y.size)
    return 1 / (1 + np.exp(-logit))


def write_run(path, probs, labels, users):
    """A finished run dir: eval.json with each task's AUC, GAUC, LogLoss and calibration (as
    the evaluation computes them), and the predictions they came from."""
    run = RunDir(path).create()
    test = {}
    for task, p in probs.items():
        y = labels[task]
        test.update({f"auc_{task}": auc(y, p), f"gauc_{task}": gauc(y, p, users),
                     f"logloss_{task}": logloss(y, p), f"calibration_{task}": calibration(y, p)})
    test["loss"] = test["logloss_income"] + test["logloss_marital"]
    test["auc_primary"] = test["auc_income"]
    (run.path / "eval.json").write_text(json.dumps({"primary_key": "auc_income", "best_step": 10, "test": test}))
    (run.path / "config.yaml").write_text("name: handmade\n")
    save_predictions(run.predictions, probs, labels, {"user": users}, TASKS, dataset="handmade")
    return run


def unrelated(p, y):
    """Scores with the same distribution for positives and negatives (AUC 0.5 up to ties)."""
    out = np.empty_like(p)
    for rows in (np.flatnonzero(y > 0), np.flatnonzero(y == 0)):
        out[rows] = np.quantile(p, (np.arange(rows.size) + 0.5) / rows.size)
    return out


def reversed_order(p):
    """The same values, the highest where the lowest was: calibration kept, ranking inverted."""
    return np.sort(p)[::-1][np.argsort(np.argsort(p))]


@pytest.fixture(scope="module")
def alarmed(tmp_path_factory):
    """Run dirs that each trip one alarm (CLEAN trips none), a chain summary over them, the
    report and the findings."""
    from recsmith.experiments.findings import build_findings
    from recsmith.experiments.report import build_report
    from recsmith.experiments.summary import build_summary, write_summary

    out = tmp_path_factory.mktemp("alarms")
    labels, users = labels_and_users()
    rng = np.random.default_rng(1)
    good = {t: informative(labels[t], rng) for t in TASKS}
    runs = {
        "CLEAN": good,
        "CHANCE": {**good, "income": unrelated(good["income"], labels["income"])},
        "INVERTED": {**good, "income": reversed_order(good["income"])},
        "LEAK": {**good, "marital": 0.05 + 0.9 * labels["marital"]},  # the label itself
        # one output served as both heads (torch-rechub #50): marital's scores are income's
        "SAME_OUTPUT": {"income": good["income"], "marital": np.clip(good["income"] + rng.normal(0, 1e-4, ROWS), 0, 1)},
        "MISCALIBRATED": {**good, "marital": good["marital"] / 3},  # the ranking unchanged
    }
    for exp_id, probs in runs.items():
        write_run(out / exp_id, probs, labels, users)
    comparison = SimpleNamespace(title="LEAK vs CLEAN", question="", baseline="CLEAN", candidate="LEAK",
                                 metrics=["auc_marital", "auc_income"])
    chain = SimpleNamespace(spec=SimpleNamespace(name="alarms", comparisons=[comparison]), path=out / "chain.yaml",
                            output_dir=out, experiments=[SimpleNamespace(id=e, description="") for e in runs])
    rows = build_summary(chain)
    write_summary(chain, rows)
    build_report(out)
    build_findings(out)
    return SimpleNamespace(out=out, chain=chain, rows={r["exp_id"]: r for r in rows})


def kinds(row):
    return {(a["kind"], m) for a in row["alarms"] for m in a["metrics"]}


def test_each_alarm_fires_on_its_run_and_nowhere_else(alarmed):
    rows = alarmed.rows
    assert rows["CLEAN"]["alarms"] == []
    assert ("at_chance", "auc_income") in kinds(rows["CHANCE"])
    low, high = rows["CHANCE"]["intervals"]["auc_income"]
    assert low <= 0.5 <= high
    assert ("below_chance", "auc_income") in kinds(rows["INVERTED"])
    assert rows["INVERTED"]["intervals"]["auc_income"][1] < 0.5
    assert rows["LEAK"]["auc_marital"] == 1.0
    assert {("leak", m) for m in ("auc_marital", "gauc_marital", "logloss_marital")} <= kinds(rows["LEAK"])
    assert {("correlated_tasks", m) for m in ("auc_income", "auc_marital")} <= kinds(rows["SAME_OUTPUT"])
    assert rows["MISCALIBRATED"]["calibration_marital"] == pytest.approx(rows["CLEAN"]["calibration_marital"] / 3)
    assert rows["MISCALIBRATED"]["auc_marital"] == rows["CLEAN"]["auc_marital"]
    assert kinds(rows["MISCALIBRATED"]) == {("calibration", "calibration_marital"), ("calibration", "logloss_marital")}
    # each alarmed run trips only its own kind (one output for both heads also leaves marital at chance)
    for exp_id, expected in (("CHANCE", {"at_chance"}), ("INVERTED", {"below_chance"}), ("LEAK", {"leak"}),
                             ("SAME_OUTPUT", {"correlated_tasks", "at_chance"})):
        assert {k for k, _ in kinds(rows[exp_id])} == expected, (exp_id, rows[exp_id]["alarms"])


def test_thresholds_are_the_documented_ones():
    from recsmith.experiments.alarms import calibration_alarms, correlation_alarms, leak_alarms
    from recsmith.train.predictions import Predictions

    assert [a.kind for a in calibration_alarms({"calibration_x": 2.01, "calibration_y": 2.0, "calibration_z": 0.49})] \
        == ["calibration", "calibration"]
    assert leak_alarms({"auc_x": 0.9989}) == [] and len(leak_alarms({"auc_x": 0.999})) == 1
    rng = np.random.default_rng(3)
    a = rng.random(5000)

    def correlated(noise):
        b = a + rng.normal(0, noise, a.size)
        preds = Predictions({"x": a, "y": b}, {}, {}, {}, "d")
        return correlation_alarms(preds, {"auc_x": 0.7, "auc_y": 0.7}), np.corrcoef(a, b)[0, 1]

    (fired, r_high), (quiet, r_low) = correlated(0.003), correlated(0.02)
    assert r_high > 0.999 and len(fired) == 1 and r_low < 0.999 and quiet == []


def test_summary_files_list_the_alarms_beside_the_numbers(alarmed):
    with open(alarmed.out / "summary.csv") as handle:
        rows = {r["exp_id"]: r for r in csv.DictReader(handle)}
    assert rows["CLEAN"]["alarms"] == ""
    assert "auc_income at chance: 95% CI [" in rows["CHANCE"]["alarms"]
    assert "auc_marital, gauc_marital = 1.0000" in rows["LEAK"]["alarms"] and "label leak" in rows["LEAK"]["alarms"]
    correlation = float(rows["SAME_OUTPUT"]["alarms"].split("income and marital predictions correlate ")[1].split()[0])
    assert correlation > 0.999
    assert "calibration_marital = 0.3" in rows["MISCALIBRATED"]["alarms"]
    assert float(rows["CHANCE"]["auc_income_ci_low"]) <= 0.5 <= float(rows["CHANCE"]["auc_income_ci_high"])
    summary = json.loads((alarmed.out / "summary.json").read_text())
    leak = next(r for r in summary["experiments"] if r["exp_id"] == "LEAK")
    assert {a["kind"] for a in leak["alarms"]} == {"leak"}


def test_a_delta_an_alarm_applies_to_is_marked_and_never_called_a_gain(alarmed):
    text = (alarmed.out / "delta_analysis.txt").read_text()
    assert "Sanity alarms" in text and "  LEAK: auc_marital, gauc_marital = 1.0000" in text
    marital = next(line for line in text.splitlines() if line.strip().startswith("auc_marital"))
    income = next(line for line in text.splitlines() if line.strip().startswith("auc_income"))
    assert "significant" in marital and marital.rstrip().endswith("!")  # on its face a gain, flagged
    assert not income.rstrip().endswith("!")  # LEAK's income head has no alarm
    assert "    ! auc_marital: LEAK: auc_marital, gauc_marital = 1.0000" in text
    stat = json.loads((alarmed.out / "summary.json").read_text())["comparisons"][0]["metrics"][0]
    assert stat["metric"] == "auc_marital" and stat["verdict"] == "significant" and stat["alarms"]

    findings = (alarmed.out / "FINDINGS.md").read_text()
    line = next(l for l in findings.splitlines() if l.startswith("- LEAK vs CLEAN, auc_marital"))
    assert "flagged, not a finding" in line and "**significant**" not in line
    assert "## Sanity alarms" in findings and "- CHANCE: auc_income at chance" in findings


def test_the_report_marks_alarmed_numbers_and_lists_the_alarms(alarmed):
    report = (alarmed.out / "EXPERIMENT_REPORT.md").read_text()
    assert "## Sanity alarms" in report
    for exp_id, kind in (("CHANCE", "at_chance"), ("INVERTED", "below_chance"), ("LEAK", "leak"),
                         ("SAME_OUTPUT", "correlated_tasks"), ("MISCALIBRATED", "calibration")):
        assert f"| {exp_id} | {kind} |" in report
    leak_row = next(l for l in report.splitlines() if l.startswith("| LEAK | success"))
    clean_row = next(l for l in report.splitlines() if l.startswith("| CLEAN | success"))
    assert "1.0000 [1.0000, 1.0000] !" in leak_row and "!" not in clean_row


def test_the_chain_table_marks_alarmed_numbers(alarmed):
    from rich.console import Console

    from recsmith.experiments.runner import ChainRunner

    console = Console(record=True, width=200)
    ChainRunner(alarmed.chain, console)._report(list(alarmed.rows.values()), [])
    text = console.export_text()
    leak = next(l for l in text.splitlines() if "LEAK" in l and "success" in l)
    assert "1.0000 !" in leak
    assert "alarm LEAK: auc_marital, gauc_marital = 1.0000" in text
    assert "alarm MISCALIBRATED: calibration_marital = 0.3" in text


def test_a_text_classifier_that_predicts_one_class_for_every_row_raises_an_alarm():
    from recsmith.experiments.alarms import run_alarms

    lazy = {"accuracy": 0.572, "macro_f1": 0.364, "auc": 0.56, "recall_rotten": 0.0, "recall_fresh": 1.0,
            "precision_rotten": 0.0, "precision_fresh": 0.572, "f1_rotten": 0.0, "f1_fresh": 0.728}
    (alarm,) = run_alarms(lazy, {}, None)
    assert alarm.kind == "one_class" and "'fresh' for every test row" in alarm.message
    assert "accuracy" in alarm.metrics and "recall_rotten" in alarm.metrics
    assert run_alarms({**lazy, "recall_rotten": 0.4, "recall_fresh": 0.9}, {}, None) == []
    # top-K recall of a ranking run is not a class
    assert run_alarms({"recall_10": 1.0, "recall_20": 0.0, "ndcg_10": 0.3}, {}, None) == []


def test_a_text_classifiers_auc_at_chance_raises_an_alarm():
    from recsmith.experiments.alarms import run_alarms

    (alarm,) = run_alarms({"auc": 0.51, "macro_f1": 0.5, "recall_a": 0.5, "recall_b": 0.5},
                          {"auc": (0.47, 0.55)}, None)
    assert alarm.kind == "at_chance" and alarm.metrics == ("auc",)
