"""Scoring raw rows with a trained model: the entry point batch inference, the HTTP
service, export parity checks and monitoring share. `Scorer.load(path)` reads a bundle
(`recsmith export`, a registry version) or a finished run dir and asks the model's family
(recsmith.plugins) for its scorer; how raw rows become probabilities is the family's.

Every scorer has `tasks` (its heads), `outputs` (the probabilities it returns, by name),
`meta` (bundle.json, or a run's description), `predict_table(table) -> {output: [N]}` and
`describe()` (what a client sends and gets). One `recsmith export` can trace also has
`export_graph()` (a module from named inputs to the outputs, in order, with `.inputs`),
`export_inputs(dataset_dir, rows)` (those inputs for the first test rows, as arrays) and
`predict_encoded(*inputs)` (the reference the export is checked against). Such a scorer can
also run an exported bundle's graph on ONNX Runtime instead of PyTorch (`backend="onnx"`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from recsmith.config.loader import load_experiment
from recsmith.errors import ConfigError
from recsmith.plugins import family_of
from recsmith.run_dir import RunDir
from recsmith.serve.bundle import BUNDLE_FILE, MODEL_FILE, check_bundlable, served_precision


BACKENDS = ("torch", "onnx")


class Scorer:
    """The interface (see the module docstring); `Scorer.load` returns the family's own."""

    tasks: list[str]
    outputs: list[str]
    meta: dict

    @staticmethod
    def load(path: str | Path, backend: str = "torch") -> "Scorer":
        """From a bundle directory (registry version, `recsmith export`) or a finished run dir;
        `backend` "onnx" runs an ONNX export bundle's graph on ONNX Runtime."""
        if backend not in BACKENDS:
            raise ConfigError(f"--backend: '{backend}' is not one of {', '.join(BACKENDS)}")
        path = Path(path)
        if (path / BUNDLE_FILE).is_file():
            meta = json.loads((path / BUNDLE_FILE).read_text())
            config_path, data_dir, weights = path / "config.yaml", path, path / MODEL_FILE
        else:
            run = RunDir(path)
            _, report, data_dir = check_bundlable(run)
            meta = {"run_dir": str(path.resolve()), "name": report.get("name"),
                    "primary_key": report.get("primary_key"), "precision": served_precision(report),
                    "metrics": {"test": report.get("test", {})}}
            config_path, weights = run.config, run.ckpt_best
        cfg = load_experiment(config_path)
        scorer = family_of(cfg).load_scorer(cfg, meta, data_dir, weights)
        if backend == "onnx":
            from recsmith.serve.export import onnx_runner

            if not hasattr(scorer, "runner"):
                raise ConfigError(f"{path}: --backend onnx: this model family has no exported graph to run")
            scorer.runner = onnx_runner(path)
        return scorer

    def predict_table(self, table: pa.Table) -> dict:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError
