"""Chain comparisons of text classifiers: run dirs built by hand as the text_classifier
family writes them (eval.json + predictions_text_test.npz), compared the way `chain run`
and `chain summarize` compare them, against classification_metrics, McNemar, DeLong and
an explicit paired row bootstrap."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from recsmith.experiments.comparisons import (RESAMPLES, UNIT_SEED, DeltaStat, RunArrays, comparison_stats,
                                              run_intervals)
from recsmith.metrics.classification import classification_metrics, mcnemar, paired_bootstrap_delta
from recsmith.metrics.significance import delong
from recsmith.run_dir import RunDir
from recsmith.tasks import FUNNEL_TASKS
from recsmith.train.predictions import load_text_predictions, save_predictions, text_predictions_path

ROWS = 1500
CLASSES = ["negative", "positive"]
METRICS = ["accuracy", "macro_f1", "auc", "logloss"]


def softmax_rows(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def classifier(labels, strength, rng, classes=2):
    """float32 probability rows whose true class gets `strength` more logit, plus noise."""
    logits = rng.normal(0.0, 1.0, (labels.size, classes))
    logits[np.arange(labels.size), labels] += strength
    return softmax_rows(logits)


def flipped(probs, rows):
    """A copy with these rows' two class probabilities swapped (their prediction flipped)."""
    out = probs.copy()
    out[rows] = out[rows, ::-1]
    return out


def write_text_run(path, probs, labels, classes=CLASSES):
    """A finished text run dir, as the text family writes it: eval.json's test metrics from
    classification_metrics and the probabilities and labels they came from."""
    run = RunDir(path).create()
    test = classification_metrics(labels, probs, classes)
    test.update(loss=test["logloss"], auc_primary=test["accuracy"])
    (run.path / "eval.json").write_text(json.dumps({"primary_key": "accuracy", "best_step": 10, "test": test,
                                                    "classes": classes, "trainable_parameters": 770}))
    (run.path / "config.yaml").write_text("name: handmade\n")
    np.savez(text_predictions_path(run.path), probabilities=probs, labels=labels)
    return run


def compare(baseline, candidate, metrics):
    return SimpleNamespace(title=f"{candidate} vs {baseline}", question="", baseline=baseline, candidate=candidate,
                           metrics=metrics)


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("text")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, ROWS)
    tfidf = classifier(labels, 1.5, rng)  # accuracy about 0.85
    base = classifier(labels, 2.5, rng)  # clearly better, short of a "perfect" AUC (the leak alarm)
    right = tfidf.argmax(1) == labels
    near = flipped(tfidf, np.r_[np.flatnonzero(right)[:3], np.flatnonzero(~right)[:2]])  # a delta within noise
    worse = flipped(tfidf, np.flatnonzero(right)[:4])  # four right rows made wrong, none the other way
    probs = {"TFIDF": tfidf, "BASE": base, "NEAR": near, "WORSE": worse}
    runs = {e: write_text_run(out / e, p, labels) for e, p in probs.items()}
    labels3 = rng.integers(0, 3, ROWS)
    three = ["neg", "neu", "pos"]
    runs["TFIDF3"] = write_text_run(out / "TFIDF3", classifier(labels3, 1.5, rng, 3), labels3, three)
    runs["BASE3"] = write_text_run(out / "BASE3", classifier(labels3, 3.0, rng, 3), labels3, three)
    other = rng.permutation(labels)  # another split's rows
    runs["OTHER"] = write_text_run(out / "OTHER", classifier(other, 3.0, rng), other)
    runs["GHOST"] = RunDir(out / "GHOST").create()  # finished nothing
    ranking = RunDir(out / "RANKING").create()
    y = (rng.random(ROWS) < 0.3).astype(np.float32)
    save_predictions(ranking.predictions, {"ctr": rng.random(ROWS)}, {"click": y}, {"user": rng.integers(0, 50, ROWS)},
                     {t.name: t for t in FUNNEL_TASKS[:1]}, dataset="d")
    runs["RANKING"] = ranking
    comparisons = [compare("TFIDF", "BASE", METRICS), compare("TFIDF", "NEAR", METRICS),
                   compare("TFIDF", "WORSE", ["accuracy"])]
    return SimpleNamespace(out=out, runs=runs, labels=labels, probs=probs, comparisons=comparisons,
                           stats=comparison_stats(runs, comparisons))


def test_the_loader_gives_back_what_the_run_saved(text_runs):
    text = load_text_predictions(text_predictions_path(text_runs.runs["BASE"].path))
    assert text.rows == ROWS and text.classes == 2 and text.labels.dtype == np.int64
    assert np.array_equal(text.labels, text_runs.labels)
    assert np.array_equal(text.probabilities, text_runs.probs["BASE"].astype(np.float64))


def test_values_are_the_runs_classification_metrics(text_runs):
    y = text_runs.labels
    for cand in ("BASE", "NEAR"):
        want_a = classification_metrics(y, text_runs.probs["TFIDF"], CLASSES)
        want_b = classification_metrics(y, text_runs.probs[cand], CLASSES)
        for metric in METRICS:
            stat = text_runs.stats[("TFIDF", cand, metric)]
            assert isinstance(stat, DeltaStat), stat
            assert (stat.baseline, stat.candidate) == (want_a[metric], want_b[metric])  # eval.json's numbers
            assert stat.delta == want_b[metric] - want_a[metric]
            assert stat.ci_low <= stat.delta <= stat.ci_high


def test_a_clear_gain_is_significant_with_mcnemar_and_delong_p_values(text_runs):
    y, a, b = text_runs.labels, text_runs.probs["TFIDF"], text_runs.probs["BASE"]
    stats = {m: text_runs.stats[("TFIDF", "BASE", m)] for m in METRICS}
    assert all(s.verdict == "significant" for s in stats.values()), stats
    test = mcnemar(a.argmax(1) == y, b.argmax(1) == y)
    assert stats["accuracy"].p_value == test["p_value"] < 0.05 and test["b_only"] > test["a_only"]
    assert stats["auc"].p_value == delong(y, a[:, 1], b[:, 1]).p_value < 0.05
    assert stats["macro_f1"].p_value is None and stats["logloss"].p_value is None
    assert stats["accuracy"].ci_low > 0 and stats["logloss"].ci_high < 0


def test_a_near_copy_is_within_noise(text_runs):
    for metric in METRICS:
        stat = text_runs.stats[("TFIDF", "NEAR", metric)]
        assert stat.ci_low <= 0 <= stat.ci_high and stat.verdict == "within noise", stat
    assert text_runs.stats[("TFIDF", "NEAR", "accuracy")].p_value > 0.05


def test_an_accuracy_interval_without_mcnemar_behind_it_is_within_noise(text_runs):
    # four discordant rows, all one way: every resample's delta is ≤ 0 and the interval
    # excludes 0, but four coin flips all landing one way happen with p = 2 / 2**4
    stat = text_runs.stats[("TFIDF", "WORSE", "accuracy")]
    assert stat.ci_high < 0 and stat.p_value == pytest.approx(0.125) and stat.verdict == "within noise"


def test_accuracy_and_macro_f1_intervals_are_the_paired_bootstrap_of_the_metrics_module(text_runs):
    y, a = text_runs.labels, text_runs.probs["TFIDF"].argmax(1)
    for cand in ("BASE", "NEAR"):
        b = text_runs.probs[cand].argmax(1)
        for metric in ("accuracy", "macro_f1"):
            want = paired_bootstrap_delta(y, a, b, metric, samples=RESAMPLES, seed=UNIT_SEED["rows"], num_classes=2)
            stat = text_runs.stats[("TFIDF", cand, metric)]
            assert (stat.ci_low, stat.ci_high) == (pytest.approx(want["low"], abs=1e-12),
                                                   pytest.approx(want["high"], abs=1e-12))
            assert stat.delta == pytest.approx(want["delta"], abs=1e-12)


def test_every_interval_is_the_metric_on_explicitly_resampled_rows(text_runs):
    """The reference: draw rows with the comparisons' generator, recompute each metric with
    classification_metrics on both runs' drawn rows, take the percentiles of the difference."""
    resamples = 100
    y, a, b = text_runs.labels, text_runs.probs["TFIDF"], text_runs.probs["BASE"]
    stats = comparison_stats(text_runs.runs, text_runs.comparisons[:1], resamples=resamples, seed=5)
    rng = np.random.default_rng(5 + UNIT_SEED["rows"])
    deltas = {m: [] for m in METRICS}
    for _ in range(resamples):
        rows = rng.integers(0, ROWS, ROWS)
        on_a, on_b = (classification_metrics(y[rows], p[rows], CLASSES) for p in (a, b))
        for m in METRICS:
            deltas[m].append(on_b[m] - on_a[m])
    for m in METRICS:
        low, high = np.percentile(deltas[m], [2.5, 97.5])
        stat = stats[("TFIDF", "BASE", m)]
        assert (stat.ci_low, stat.ci_high) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9)), m


def test_what_cannot_be_compared_is_named_not_raised(text_runs):
    comparisons = [compare("TFIDF", "BASE", ["ece", "f1_positive", "precision_positive", "loss", "auc_ctr"]),
                   compare("TFIDF3", "BASE3", ["auc", "accuracy"]), compare("TFIDF", "GHOST", ["accuracy"]),
                   compare("RANKING", "BASE", ["accuracy", "auc_ctr"]), compare("TFIDF", "OTHER", ["accuracy"]),
                   compare("TFIDF", "NOWHERE", ["macro_f1"])]
    stats = comparison_stats(text_runs.runs, comparisons, resamples=50)
    supported = "(supported: accuracy, macro_f1, auc, logloss)"
    for metric in ("ece", "f1_positive", "precision_positive", "loss", "auc_ctr"):
        assert stats[("TFIDF", "BASE", metric)] == f"no interval for metric '{metric}' of a text classifier {supported}"
    assert stats[("TFIDF3", "BASE3", "auc")] == "no interval for 'auc': it exists for 2 classes only, these runs have 3"
    assert stats[("TFIDF3", "BASE3", "accuracy")].verdict == "significant"
    assert stats[("TFIDF", "GHOST", "accuracy")] == "no saved text predictions for GHOST"
    assert stats[("TFIDF", "NOWHERE", "macro_f1")] == "no saved text predictions for NOWHERE"
    assert stats[("RANKING", "BASE", "accuracy")] == "no saved text predictions for RANKING"
    assert stats[("RANKING", "BASE", "auc_ctr")].startswith("no interval for metric 'auc_ctr' of a text classifier")
    assert stats[("TFIDF", "OTHER", "accuracy")] == "TFIDF and OTHER were tested on different rows"


def test_each_text_run_gets_intervals_of_its_own_metrics(text_runs):
    run = text_runs.runs["BASE"]
    test = json.loads(run.eval.read_text())["test"]
    intervals = run_intervals(RunArrays.load(run), list(test), resamples=300)
    assert sorted(intervals) == sorted(METRICS)  # not ece, loss, per-class scores or auc_primary
    for metric, (low, high) in intervals.items():
        assert low <= test[metric] <= high, metric
    three = run_intervals(RunArrays.load(text_runs.runs["TFIDF3"]), METRICS, resamples=50)
    assert sorted(three) == ["accuracy", "logloss", "macro_f1"]  # no AUC for three classes


def test_a_ranking_comparison_is_the_same_beside_text_ones(text_runs, tmp_path):
    rng = np.random.default_rng(3)
    y = (rng.random(800) < 0.3).astype(np.float32)
    ranking = {}
    for name, noise in (("A", 1.0), ("B", 0.5)):
        run = RunDir(tmp_path / name).create()
        save_predictions(run.predictions, {"ctr": 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, noise, y.size))))},
                         {"click": y}, {"user": rng.integers(0, 40, y.size)}, {t.name: t for t in FUNNEL_TASKS[:1]},
                         dataset="d")
        ranking[name] = run
    alone = comparison_stats(ranking, [compare("A", "B", ["auc_ctr", "gauc_ctr", "logloss_ctr"])])
    mixed = comparison_stats({**ranking, **text_runs.runs},
                             [compare("A", "B", ["auc_ctr", "gauc_ctr", "logloss_ctr"]), *text_runs.comparisons])
    assert all(mixed[key] == stat for key, stat in alone.items())
    assert all(mixed[key] == text_runs.stats[key] for key in text_runs.stats)


def test_summary_delta_analysis_findings_and_report_show_text_deltas(text_runs):
    from recsmith.experiments.findings import build_findings
    from recsmith.experiments.report import build_report
    from recsmith.experiments.summary import build_summary, write_summary

    out = text_runs.out
    ids = ["TFIDF", "BASE", "NEAR", "WORSE"]
    chain = SimpleNamespace(spec=SimpleNamespace(name="text", comparisons=text_runs.comparisons),
                            path=out / "chain.yaml", output_dir=out,
                            experiments=[SimpleNamespace(id=e, description="") for e in ids])
    write_summary(chain, build_summary(chain))
    summary = json.loads((out / "summary.json").read_text())
    for c in summary["comparisons"]:
        for m in c["metrics"]:
            assert m == {**text_runs.stats[(c["baseline"], c["candidate"], m["metric"])].to_json(), "alarms": []}
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"accuracy_ci_low", "macro_f1_ci_high", "auc_ci_low", "logloss_ci_high"} <= set(header)
    assert "ece_ci_low" not in header
    text = (out / "delta_analysis.txt").read_text()
    assert "p: McNemar's" in text
    section = text.split("BASE vs TFIDF")[1].split("\n\n")[0]
    line = next(row for row in section.splitlines() if row.strip().startswith("accuracy"))
    stat = text_runs.stats[("TFIDF", "BASE", "accuracy")]
    assert f"[{stat.ci_low:+.6f}, {stat.ci_high:+.6f}]" in line and line.endswith("significant")
    near = text.split("NEAR vs TFIDF")[1].split("\n\n")[0].splitlines()[2:]
    assert len(near) == len(METRICS) and all(row.endswith("within noise") for row in near)
    findings = build_findings(out).read_text()
    assert "BASE vs TFIDF, accuracy" in findings and "McNemar p =" in findings and "DeLong p =" in findings
    from recsmith.metrics.classification import confusion_matrix, plot_confusion_matrix

    base_probs = text_runs.probs["BASE"]
    plot_confusion_matrix(confusion_matrix(text_runs.labels, base_probs.argmax(1), 2), ["neg", "pos"],
                          text_runs.runs["BASE"].path / "confusion_matrix.png", "BASE (test)")
    report = build_report(out)[0].read_text()
    assert " (McNemar) | significant" in report and "McNemar's exact test where marked" in report
    assert "## BASE: confusion matrix (test)" in report and (out / "report" / "confusion_BASE.png").is_file()
    table = report.split("## Summary")[1].split("\n\n")[2].splitlines()
    assert table[0].startswith("| exp | status | best step | accuracy | macro_f1 | logloss | auc | precision")
    base = summary["experiments"][1]
    low, high = base["intervals"]["accuracy"]
    assert table[3].startswith(f"| BASE | success | 10 | {base['accuracy']:.4f} [{low:.4f}, {high:.4f}] |")
    assert table[0].endswith("| budget | trainable params | wall (s) |") and table[3].endswith("|  | 770 |  |")
    assert base["trainable_parameters"] == 770 and "trainable_parameters" in header
