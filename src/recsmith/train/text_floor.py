"""The text_classifier family's floor (model.architecture tfidf_logreg): scikit-learn's
TF-IDF word n-grams and a logistic regression, fitted on the train split without the Trainer,
evaluated on valid and test like a fine-tuned run, and leaving the same files in the run dir
(the classification report, the confusion matrix, the test probabilities, a valid record in
metrics.jsonl). Nothing is saved to serve from: the family is not servable."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from recsmith.data.schema import DatasetSchema
from recsmith.errors import ConfigError, DataError
from recsmith.metrics.classification import (
    classification_metrics,
)
from recsmith.run_dir import RunDir
from recsmith.train.text import write_test_artefacts
from recsmith.train.text_data import read_split

log = logging.getLogger("recsmith.train")
MAX_ITER = 1000


class TfidfLogReg:
    """TfidfVectorizer + LogisticRegression over `num_classes` classes: probability column i
    is class i (a class without training texts gets probability 0)."""

    def __init__(self, section, seed: int, num_classes: int):
        try:
            from sklearn.feature_extraction.text import TfidfVectorizer
            from sklearn.linear_model import LogisticRegression
        except ImportError:
            raise ConfigError("model.architecture: tfidf_logreg needs scikit-learn: pip install -e '.[text]'") from None
        self.vectorizer = TfidfVectorizer(ngram_range=(1, section.ngram_max), min_df=section.min_df,
                                          max_features=section.max_features, sublinear_tf=section.sublinear_tf)
        self.classifier = LogisticRegression(C=section.C, max_iter=MAX_ITER, random_state=seed)
        self.num_classes = num_classes

    def fit(self, texts: list[str], labels: np.ndarray) -> TfidfLogReg:
        try:
            features = self.vectorizer.fit_transform(texts)
        except ValueError as exc:  # no term left after min_df / max_features
            raise DataError(f"the training texts leave TF-IDF no vocabulary ({exc}): lower model.tfidf.min_df, or "
                            "check the text column") from None
        present = np.unique(labels)
        if len(present) < 2:
            raise DataError(f"the training split has texts of {len(present)} class only: a classifier needs two")
        if len(present) < self.num_classes:
            log.warning("classes %s have no training texts: their probability is 0",
                        sorted(set(range(self.num_classes)) - set(present.tolist())))
        self.classifier.fit(features, labels)
        return self

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """[N, C] float32 class probabilities, in the texts' order."""
        out = np.zeros((len(texts), self.num_classes), np.float32)
        out[:, self.classifier.classes_] = self.classifier.predict_proba(self.vectorizer.transform(texts))
        return out

    @property
    def vocabulary(self) -> int:
        return len(self.vectorizer.vocabulary_)

    @property
    def parameters(self) -> int:
        return int(self.classifier.coef_.size + self.classifier.intercept_.size)


def fit_tfidf(cfg, run: RunDir, dataset_dir: Path) -> dict:
    """Fit on train, evaluate valid and test; eval.json's family part (recsmith.train.run)."""
    classes = list(DatasetSchema.load(dataset_dir).meta["classes"])
    key = cfg.runtime.best_selection.primary_key
    splits = {name: read_split(Path(dataset_dir) / f"{name}.parquet") for name in ("train", "valid", "test")}
    model = TfidfLogReg(cfg.model.tfidf, cfg.runtime.seed, len(classes)).fit(*splits["train"])
    log.info("TF-IDF + logistic regression: %d train texts, %d terms, %d classes, %d parameters",
             len(splits["train"][1]), model.vocabulary, len(classes), model.parameters)
    metrics, probs = {}, {}
    for name in ("valid", "test"):
        texts, labels = splits[name]
        probs[name] = model.probabilities(texts)
        metrics[name] = classification_metrics(labels, probs[name], classes)
        metrics[name]["loss"] = metrics[name]["logloss"]
        metrics[name]["auc_primary"] = metrics[name][key]  # the selection metric, under the summary's column name
    run.metrics.unlink(missing_ok=True)  # a refit after a failed attempt replaces its record
    RunDir.append(run.metrics, {"type": "valid", "step": 0, **metrics["valid"]})
    labels, test = splits["test"][1], probs["test"]
    write_test_artefacts(run, cfg.name, labels, test, classes, dataset_dir)
    return {"best_step": 0, "valid": metrics["valid"], "test": metrics["test"], "test_rows": len(labels),
            "classes": classes, "parameters": model.parameters, "trainable_parameters": model.parameters,
            "vocabulary": model.vocabulary}
