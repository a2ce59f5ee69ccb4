"""Export (ONNX, TorchScript) with parity on the test split, and batch inference."""

import json
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from conftest import raw_synthetic_rows, run_cli

from recsmith.data.batches import load_split
from recsmith.serve.export import export_run
from recsmith.serve.scorer import Scorer
from recsmith.train.predictions import load_predictions


def dataset_of(run: Path) -> Path:
    return Path(json.loads((run / "eval.json").read_text())["dataset"])


def test_onnx_export_matches_pytorch_on_the_test_split(ranking_runs, tmp_path):
    import onnxruntime

    report = export_run(ranking_runs[0], "onnx", tmp_path / "bundle")
    assert report["outputs"] == ["ctr", "cvr", "ctcvr"] and max(report["max_abs_diff"].values()) <= 1e-5
    bundle = Scorer.load(tmp_path / "bundle")  # the bundle scores on its own, without the run dir
    test = load_split(dataset_of(ranking_runs[0]), bundle.schema, "test", with_columns=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "bundle" / "model.onnx"))
    sparse, dense = test.sparse.numpy(), test.dense.numpy()
    exported = session.run(None, {"sparse": sparse, "dense": dense})
    offline = load_predictions(ranking_runs[0] / "predictions_test.npz")
    assert exported[0].shape == (len(test),)
    np.testing.assert_allclose(exported[0], offline.probs["ctr"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(exported[1], offline.probs["cvr"], atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "bundle" / "export.json").read_text())["parity_rows"] == len(test)
    served_by_onnx_runtime(tmp_path / "bundle", ranking_runs[0], offline.probs)


def served_by_onnx_runtime(bundle: Path, run: Path, offline: dict) -> None:
    """`serve --backend onnx`: the bundle's graph on ONNX Runtime answers the offline scores;
    a run dir (no ONNX export) is refused, saying what to do."""
    import httpx

    from recsmith.errors import ConfigError
    from recsmith.serve.app import ServeSettings
    from recsmith.serve.server import make_app, start_background

    server = start_background(make_app(str(bundle), ServeSettings(), backend="onnx"))
    rows = raw_synthetic_rows(dataset_of(run)).slice(0, 300).to_pylist()
    try:
        with httpx.Client() as client:
            answer = client.post(f"{server.url}/predict", json={"rows": rows}).json()["predictions"]
    finally:
        server.stop()
    for name in ("ctr", "cvr"):
        np.testing.assert_allclose(answer[name], offline[name][:300], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="recsmith export"):
        Scorer.load(run, backend="onnx")


def test_torchscript_export_matches_pytorch(ranking_runs, tmp_path):
    report = export_run(ranking_runs[0], "torchscript", tmp_path / "ts", parity_rows=500)
    assert max(report["max_abs_diff"].values()) <= 1e-5
    loaded = torch.jit.load(str(tmp_path / "ts" / report["file"]))
    scorer = Scorer.load(tmp_path / "ts")
    sparse, dense = scorer.encode(raw_synthetic_rows(dataset_of(ranking_runs[0])).slice(0, 64))
    with torch.no_grad():
        ctr = loaded(torch.from_numpy(sparse), torch.from_numpy(dense))[0].numpy()
    np.testing.assert_allclose(ctr, scorer.predict_encoded(sparse, dense)["ctr"], atol=1e-6, rtol=0)


def test_export_refuses_an_existing_output_and_an_unknown_format(ranking_runs, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    failed = run_cli("export", ranking_runs[0], "--out", tmp_path / "taken")
    assert failed.returncode != 0 and "not empty" in failed.stdout + failed.stderr
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    unknown = run_cli("export", ranking_runs[0], "--format", "tflite", "--out", tmp_path / "x")
    assert unknown.returncode != 0 and "tflite" in unknown.stdout + unknown.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_batch_predict_streams_a_file_and_matches_offline_scores(ranking_runs, tmp_path, suffix):
    rows = raw_synthetic_rows(dataset_of(ranking_runs[0]))
    pq.write_table(rows, tmp_path / "in.parquet")
    out = tmp_path / f"scored{suffix}"
    done = run_cli("predict", ranking_runs[0], "--input", tmp_path / "in.parquet", "--output", out,
                   "--chunk-rows", "300")
    assert done.returncode == 0, done.stderr
    scored = pq.read_table(out) if suffix == ".parquet" else pacsv.read_csv(out)
    assert scored.num_rows == rows.num_rows and scored["user_id"].to_pylist() == rows["user_id"].to_pylist()
    offline = load_predictions(ranking_runs[0] / "predictions_test.npz")
    np.testing.assert_allclose(scored["prob_ctr"].to_numpy(), offline.probs["ctr"], atol=1e-6, rtol=0)


def test_batch_predict_names_missing_columns_and_keeps_existing_output(ranking_runs, tmp_path):
    rows = raw_synthetic_rows(dataset_of(ranking_runs[0])).drop_columns(["hour"])
    pq.write_table(rows, tmp_path / "in.parquet")
    (tmp_path / "out.parquet").write_text("previous results")
    failed = run_cli("predict", ranking_runs[0], "--input", tmp_path / "in.parquet", "--output", tmp_path / "out.parquet")
    assert failed.returncode != 0 and "hour" in failed.stdout + failed.stderr
    assert (tmp_path / "out.parquet").read_text() == "previous results"
