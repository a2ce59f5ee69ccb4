"""The text_classifier family's TF-IDF + logistic-regression floor (model.architecture
tfidf_logreg): fitted through `recsmith train` without the Trainer on a toy sentiment table,
the run dir's files, determinism, and the transformer keys it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, run_cli
from test_text_classifier import toy_table

from recsmith.config.loader import load_experiment
from recsmith.errors import ConfigError
from recsmith.run_dir import RunDir
from recsmith.train.run import valid_at_best

CONFIG = REPO / "configs" / "experiments" / "sentiment_rt" / "tfidf_logreg.yaml"


def toy_settings(path: Path) -> list[str]:
    return ["--set", "data.source=text_table", "--set", f"data.path={path}",
            "--set", "data.options={group_column: group, valid_fraction: 0.2, test_fraction: 0.2}"]


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    """One `recsmith train` of the floor on the toy table: (run dir, eval.json)."""
    tmp = tmp_path_factory.mktemp("tfidf")
    toy_table(tmp / "toy.parquet")
    done = run_cli("train", CONFIG, "--run-dir", tmp / "run", *toy_settings(tmp / "toy.parquet"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return RunDir(tmp / "run"), json.loads((tmp / "run" / "eval.json").read_text())


def test_the_floor_learns_the_toy_task_without_the_trainer(fitted_run):
    run, result = fitted_run
    assert result["test"]["accuracy"] > 0.9, result["test"]  # chance is about 0.5
    assert result["name"] == "sentiment_rt_tfidf" and result["best_step"] == 0
    assert result["classes"] == ["neg", "pos"] and result["test_rows"] > 20
    assert result["parameters"] == result["trainable_parameters"] == result["vocabulary"] + 1  # binary: one row
    assert result["test"]["auc_primary"] == result["test"]["accuracy"]
    assert result["test"]["loss"] == result["test"]["logloss"]
    assert not run.ckpt_best.exists() and not run.ckpt_last.exists()
    for name in ("classification_report.txt", "confusion_matrix.png", "predictions_text_test.npz", "config.yaml"):
        assert (run.path / name).is_file(), name
    assert "accuracy" in (run.path / "classification_report.txt").read_text()
    assert valid_at_best(run, result["best_step"]) == result["valid"]  # metrics.jsonl's valid record


def test_the_saved_probabilities_are_a_refit_s(fitted_run):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    run, result = fitted_run
    config = yaml.safe_load(run.config.read_text())
    tfidf = config["model"]["tfidf"]
    split = {name: pq.read_table(Path(result["dataset"]) / f"{name}.parquet") for name in ("train", "test")}
    vectorizer = TfidfVectorizer(ngram_range=(1, tfidf["ngram_max"]), min_df=tfidf["min_df"],
                                 max_features=tfidf["max_features"], sublinear_tf=tfidf["sublinear_tf"])
    model = LogisticRegression(C=tfidf["C"], max_iter=1000, random_state=config["runtime"]["seed"])
    model.fit(vectorizer.fit_transform(split["train"]["text"].to_pylist()), split["train"]["label"].to_numpy())
    expected = model.predict_proba(vectorizer.transform(split["test"]["text"].to_pylist())).astype(np.float32)
    with np.load(run.path / "predictions_text_test.npz") as saved:
        assert np.array_equal(saved["probabilities"], expected)  # column i = class i, bit for bit
        assert np.array_equal(saved["labels"], split["test"]["label"].to_numpy())
    assert len(vectorizer.vocabulary_) == result["vocabulary"]


@pytest.mark.parametrize("key, value", [("freeze", "all_but_classifier"), ("freeze_layers", 2), ("dropout", 0.1)])
def test_transformer_keys_with_the_floor_are_one_line_errors(key, value):
    with pytest.raises(ConfigError) as caught:
        load_experiment(CONFIG, {f"model.{key}": value})
    message = str(caught.value)
    assert "\n" not in message and f"model.{key}:" in message and "tfidf_logreg" in message


def test_the_cli_says_so_in_one_line(tmp_path):
    done = run_cli("train", CONFIG, "--run-dir", tmp_path / "run", "--set", "model.freeze=all_but_classifier")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.freeze:" in lines[0], done.stderr
    assert not (tmp_path / "run").exists()
