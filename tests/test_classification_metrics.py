"""Multi-class classification metrics against scikit-learn and hand-computed values; the
confusion-matrix report and PNG; McNemar's test and the paired bootstrap."""

import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, classification_report, f1_score, log_loss,
                             precision_recall_fscore_support, roc_auc_score)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from recsmith.metrics.classification import (class_key, classification_metrics, classification_report_text,
                                             confusion_matrix, expected_calibration_error, mcnemar,
                                             paired_bootstrap_delta, per_class_scores, plot_confusion_matrix)
from recsmith.metrics.significance import bootstrap_chunks

CLASSES = {2: ["Negative", "Positive"], 3: ["negative", "neutral", "positive"]}


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def dataset(case: str, seed: int = 0, n: int = 400):
    """(labels, probabilities, classes) for a named case."""
    rng = np.random.default_rng(seed)
    if case == "binary_ties":  # coarse probabilities: many tied scores, some rows 0.5 / 0.5
        y = rng.integers(0, 2, n)
        p1 = np.round(np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(scale=0.25, size=n), 0.1, 0.9), 1)
        return y, np.column_stack([1 - p1, p1]), CLASSES[2]
    size = 2 if case == "binary" else 3
    y = rng.integers(0, size, n)
    logits = rng.normal(size=(n, size)) + 1.5 * np.eye(size)[y]
    if case == "never_predicted":  # class 2 is true for a third of the rows, never the argmax
        logits[:, 2] -= 10.0
    if case == "never_true":  # class 1 is predicted now and then, never the true class
        y = np.where(y == 1, 0, y)
    return y, softmax(logits), CLASSES[size]


CASES = ["binary", "binary_ties", "multiclass", "never_predicted", "never_true"]


def sk_log_loss(y, p, labels):
    """scikit-learn's log loss (1.9 renamed its y_pred to y_proba and warns on the old name)."""
    try:
        return log_loss(y, y_proba=p, labels=labels)
    except TypeError:
        return log_loss(y, p, labels=labels)


@pytest.mark.parametrize("case", CASES)
def test_metrics_match_sklearn(case):
    y, p, classes = dataset(case)
    size = len(classes)
    labels = list(range(size))
    predicted = p.argmax(axis=1)
    got = classification_metrics(y, p, classes)

    assert got["accuracy"] == pytest.approx(accuracy_score(y, predicted), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(
        f1_score(y, predicted, labels=labels, average="macro", zero_division=0), abs=1e-12)
    assert got["logloss"] == pytest.approx(sk_log_loss(y, p, labels), abs=1e-12)
    precision, recall, f1, _ = precision_recall_fscore_support(y, predicted, labels=labels, zero_division=0)
    for k, name in enumerate(classes):
        key = class_key(name)
        assert got[f"precision_{key}"] == pytest.approx(precision[k], abs=1e-12)
        assert got[f"recall_{key}"] == pytest.approx(recall[k], abs=1e-12)
        assert got[f"f1_{key}"] == pytest.approx(f1[k], abs=1e-12)
    if size == 2:
        assert got["auc"] == pytest.approx(roc_auc_score(y, p[:, 1]), abs=1e-12)
    else:
        assert "auc" not in got
    assert all(type(v) is float for v in got.values())
    assert len(got) == 4 + (size == 2) + 3 * size


def test_the_edge_cases_are_there():
    """The cases above exercise what they are named for."""
    y, p, _ = dataset("binary_ties")
    assert np.unique(p[:, 1]).size <= 11 and (p[:, 0] == p[:, 1]).any()
    y, p, _ = dataset("never_predicted")
    assert (y == 2).any() and not (p.argmax(axis=1) == 2).any()
    y, p, _ = dataset("never_true")
    assert not (y == 1).any() and (p.argmax(axis=1) == 1).any()


@pytest.mark.parametrize("case", CASES)
def test_confusion_matrix_matches_sklearn(case):
    y, p, classes = dataset(case)
    predicted = p.argmax(axis=1)
    matrix = confusion_matrix(y, predicted, len(classes))
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, sk_confusion_matrix(y, predicted, labels=list(range(len(classes)))))


def test_per_class_scores_are_zero_where_undefined():
    precision, recall, f1, support = per_class_scores(np.array([[3, 0, 0], [1, 0, 0], [0, 0, 0]]))
    np.testing.assert_allclose(precision, [0.75, 0.0, 0.0])
    np.testing.assert_allclose(recall, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(f1, [6 / 7, 0.0, 0.0])
    assert support.tolist() == [3, 1, 0]


def test_logloss_clips_at_1e_15():
    """A true class given probability 0 costs −log(1e-15), not infinity (recent
    scikit-learn clips at float64's epsilon instead, so it is not the reference here)."""
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    got = classification_metrics(np.array([1, 0]), p, ["a", "b"])["logloss"]
    assert got == pytest.approx((-math.log(1e-15) + math.log(2)) / 2, rel=1e-12)


def test_auc_is_nan_with_one_class_present():
    p = softmax(np.random.default_rng(0).normal(size=(20, 2)))
    assert np.isnan(classification_metrics(np.zeros(20, dtype=int), p, ["a", "b"])["auc"])


def test_ece_by_hand():
    # one row per bin: ECE is the mean |correct − confidence|
    p = np.array([[0.9, 0.1], [0.75, 0.25], [0.3, 0.7], [0.45, 0.55]])
    y = np.array([0, 1, 1, 0])  # right (0.9), wrong (0.75), right (0.7), wrong (0.55)
    assert expected_calibration_error(y, p) == pytest.approx((0.1 + 0.75 + 0.3 + 0.55) / 4, abs=1e-12)
    # 0.90 and 0.92 share the bin (13/15, 14/15]: accuracy 0.5, confidence 0.91; 0.62 is alone
    p = np.array([[0.9, 0.1], [0.92, 0.08], [0.38, 0.62]])
    y = np.array([0, 1, 1])
    ece = 2 / 3 * abs(0.5 - 0.91) + 1 / 3 * abs(1.0 - 0.62)
    assert ece == pytest.approx(0.4)
    assert expected_calibration_error(y, p) == pytest.approx(ece, abs=1e-12)
    assert classification_metrics(y, p, ["a", "b"])["ece"] == pytest.approx(ece, abs=1e-12)
    # perfectly confident and right
    assert expected_calibration_error(np.array([0, 1]), np.eye(2)) == 0.0


def test_class_keys():
    assert class_key("Very Positive!") == "very_positive"
    assert class_key("4-stars") == "4_stars"
    assert set(classification_metrics(np.array([0, 1]), np.eye(2), ["Not OK", "OK"])) >= {"f1_not_ok", "f1_ok"}
    with pytest.raises(ValueError, match="same metric key"):
        classification_metrics(np.array([0, 1]), np.eye(2), ["ok", "OK"])
    with pytest.raises(ValueError, match="no letter or digit"):
        class_key("?!")


def test_bad_inputs_are_one_line_errors():
    p = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="summing to 1"):
        classification_metrics(np.array([0, 1, 0]), np.array([[2.0, -1.0]] * 3), ["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        classification_metrics(np.array([0, 2, 0]), p, ["a", "b"])
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        classification_metrics(np.array([0, 1, 0]), p, ["a", "b", "c"])
    with pytest.raises(ValueError, match="no rows"):
        classification_metrics(np.zeros(0, dtype=int), np.zeros((0, 2)), ["a", "b"])


def test_report_text():
    y, p, classes = dataset("never_predicted")
    text = classification_report_text(y, p, classes)
    reference = classification_report(y, p.argmax(axis=1), labels=[0, 1, 2], target_names=classes,
                                      output_dict=True, zero_division=0)
    lines = text.splitlines()
    for name in classes:
        row = next(line.split() for line in lines if line.split()[:1] == [name])  # the report row comes first
        expected = reference[name]
        assert [float(v) for v in row[1:4]] == pytest.approx(
            [expected["precision"], expected["recall"], expected["f1-score"]], abs=5e-5)
        assert int(row[4]) == expected["support"] == (y == classes.index(name)).sum()
    for avg in ("macro avg", "weighted avg"):
        row = next(line for line in lines if line.strip().startswith(avg)).split()[2:]
        assert [float(v) for v in row[:3]] == pytest.approx(
            [reference[avg][k] for k in ("precision", "recall", "f1-score")], abs=5e-5)
        assert int(row[3]) == y.size
    accuracy = next(line for line in lines if line.strip().startswith("accuracy")).split()
    assert float(accuracy[1]) == pytest.approx(reference["accuracy"], abs=5e-5) and int(accuracy[2]) == y.size
    # the confusion matrix: a header of the names, then one row of counts per true class
    matrix = confusion_matrix(y, p.argmax(axis=1), 3)
    start = lines.index(next(line for line in lines if line.startswith("confusion matrix")))
    assert lines[start + 1].split() == classes
    for i, name in enumerate(classes):
        assert lines[start + 2 + i].split() == [name, *map(str, matrix[i])]


def test_plot_confusion_matrix_writes_a_png_atomically(tmp_path):
    path = tmp_path / "confusion_test.png"
    matrix = np.array([[50, 3, 0], [4, 20, 6], [0, 0, 0]])  # an empty true class: no division by 0
    plot_confusion_matrix(matrix, CLASSES[3], path, "test confusion")
    first = path.read_bytes()
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    plot_confusion_matrix(matrix * 2, CLASSES[3], path, "again, over the old one")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and path.read_bytes() != first
    assert [f.name for f in tmp_path.iterdir()] == [path.name]  # no temp file left
    with pytest.raises(ValueError, match="3×3"):
        plot_confusion_matrix(np.eye(2, dtype=int), CLASSES[3], path, "wrong size")


def test_import_needs_neither_sklearn_nor_matplotlib():
    code = ("import sys, recsmith.metrics.classification; "
            "assert not {'sklearn', 'matplotlib', 'scipy', 'torch'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def exact_two_sided(b, c):
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)


def test_mcnemar_by_hand():
    correct_a = np.array([True] * 10 + [False] * 2 + [True] * 30 + [False] * 8)
    correct_b = np.array([False] * 10 + [True] * 2 + [True] * 30 + [False] * 8)
    result = mcnemar(correct_a, correct_b)
    assert result["a_only"] == 10 and result["b_only"] == 2
    assert result["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 2**12, rel=1e-12)  # 0.0386
    assert result["p_value"] == pytest.approx(0.0386, abs=1e-4)
    assert result["statistic"] == pytest.approx((10 - 2 - 1) ** 2 / 12)
    swapped = mcnemar(correct_b, correct_a)
    assert (swapped["a_only"], swapped["b_only"], swapped["p_value"]) == (2, 10, result["p_value"])
    assert mcnemar(correct_a, correct_a) == {"a_only": 0, "b_only": 0, "p_value": 1.0, "statistic": 0.0}


@pytest.mark.parametrize("b, c", [(10, 2), (0, 5), (7, 7), (7, 8), (40, 25), (150, 120)])
def test_mcnemar_matches_exact_binomial(b, c):
    correct_a = np.r_[np.ones(b, bool), np.zeros(c, bool), np.ones(3, bool)]
    correct_b = np.r_[np.zeros(b, bool), np.ones(c, bool), np.ones(3, bool)]
    assert mcnemar(correct_a, correct_b)["p_value"] == pytest.approx(exact_two_sided(b, c), rel=1e-9)


def test_mcnemar_matches_scipy_large_counts():
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(10, 2), (7, 7), (3000, 2900), (52000, 51000)]:
        correct_a = np.r_[np.ones(b, bool), np.zeros(c, bool)]
        result = mcnemar(correct_a, ~correct_a)
        assert result["p_value"] == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-8)


def two_models(seed=0, n=600):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    wrong = (y + rng.integers(1, 3, n)) % 3
    pred_a = np.where(rng.random(n) < 0.65, y, wrong)
    pred_b = np.where(rng.random(n) < 0.85, y, wrong)
    return y, pred_a, pred_b


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_bootstrap_brackets_a_clear_difference(metric):
    y, pred_a, pred_b = two_models()
    reference = {"accuracy": accuracy_score, "macro_f1": lambda t, q: f1_score(t, q, average="macro")}[metric]
    result = paired_bootstrap_delta(y, pred_a, pred_b, metric)
    true_delta = reference(y, pred_b) - reference(y, pred_a)
    assert result["delta"] == pytest.approx(true_delta, abs=1e-12)
    assert 0.0 < result["low"] < true_delta < result["high"]
    assert paired_bootstrap_delta(y, pred_a, pred_b, metric) == result  # same seed, same resamples
    flipped = paired_bootstrap_delta(y, pred_b, pred_a, metric)
    assert flipped["delta"] == pytest.approx(-result["delta"])
    assert (flipped["low"], flipped["high"]) == pytest.approx((-result["high"], -result["low"]))


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_bootstrap_of_identical_predictions_is_zero(metric):
    y, pred_a, _ = two_models()
    assert paired_bootstrap_delta(y, pred_a, pred_a.copy(), metric) == {"delta": 0.0, "low": 0.0, "high": 0.0}


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_bootstrap_interval_matches_resampling_rows_one_by_one(metric):
    """The count-weighted resamples equal the metric on the drawn rows themselves (100
    resamples: two chunks of bootstrap_chunks)."""
    y, pred_a, pred_b = two_models(seed=1, n=200)
    reference = {"accuracy": accuracy_score,
                 "macro_f1": lambda t, q: f1_score(t, q, labels=[0, 1, 2], average="macro", zero_division=0)}[metric]
    deltas = []
    for counts in bootstrap_chunks(y.size, 100, seed=3):
        for row_counts in counts:
            rows = np.repeat(np.arange(y.size), row_counts)
            deltas.append(reference(y[rows], pred_b[rows]) - reference(y[rows], pred_a[rows]))
    result = paired_bootstrap_delta(y, pred_a, pred_b, metric, samples=100, seed=3)
    assert (result["low"], result["high"]) == pytest.approx(tuple(np.percentile(deltas, [2.5, 97.5])), abs=1e-12)


def test_bootstrap_macro_f1_counts_every_class():
    """Class 2 is never true nor predicted: with num_classes=3 its F1 of 0 is in the average."""
    y = np.array([0, 1, 0, 1, 0, 1])
    a, b = np.array([0, 0, 0, 1, 0, 1]), y.copy()
    two = paired_bootstrap_delta(y, a, b, "macro_f1", samples=20)["delta"]
    three = paired_bootstrap_delta(y, a, b, "macro_f1", samples=20, num_classes=3)["delta"]
    assert three == pytest.approx(two * 2 / 3)
    with pytest.raises(ValueError, match="accuracy' or 'macro_f1"):
        paired_bootstrap_delta(y, a, b, "auc")
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap_delta(y, a[:-1], b)
