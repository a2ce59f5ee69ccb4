"""One numeric contract from training to serving: whatever precision trains a model (fp32,
bf16 autocast, fp16 autocast with a grad scaler), every metric recsmith reports and every
probability it serves is computed in fp32, so they agree to 1e-5; and `runtime.amp: auto`
picks a reduced precision only on a hardware class where it was measured faster. Every
hardware path is forced here, so one machine of either kind proves all of them."""

import json
import math
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnxruntime
import pyarrow.parquet as pq
import pytest
import torch
from conftest import RUN_PRECISIONS, TINY, raw_synthetic_rows, run_cli, tiny_experiment

from recsmith.config.loader import validate_experiment
from recsmith.config.schema import RuntimeConfig
from recsmith.data.batches import load_split
from recsmith.data.schema import DatasetSchema
from recsmith.metrics.funnel import funnel_metrics
from recsmith.serve.app import ServeSettings, build_app
from recsmith.serve.export import export_run
from recsmith.serve.routing import Deployment
from recsmith.serve.scorer import Scorer
from recsmith.serve.server import start_background
from recsmith.serve.sources import ModelSource
from recsmith.train import precision
from recsmith.train.predictions import load_predictions
from recsmith.train.precision import resolve_precision
from recsmith.train.run import train_run

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


# ------------------------------------------------------------------ the auto rule
@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_picks_bf16_only_on_the_cpu_class_where_it_was_measured_faster(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    chosen = resolve_precision("auto", CPU)
    assert chosen.name == expected and chosen.grad_scaler() is None
    assert chosen.reason.endswith("cpu-native-bf16" if native else "cpu-no-bf16")
    assert chosen.record()["score"] == "fp32"


def test_a_cpu_whose_onednn_is_capped_below_bf16_counts_as_one_without_it(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 (with ATEN_CPU_CAPABILITY=avx2) turns a bf16 CPU into an AVX2
    one for PyTorch: bf16 emulated, so `auto` must train in fp32 there."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not precision.cpu_has_native_bf16() and resolve_precision("auto", CPU).name == "fp32"


def test_auto_keeps_fp32_on_cuda_until_measured_and_the_settings_force_each_path():
    assert resolve_precision("auto", CUDA).name == "fp32"
    on_cuda = resolve_precision(True, CUDA)
    assert (on_cuda.name, on_cuda.dtype, on_cuda.device_type) == ("fp16", torch.float16, "cuda")
    assert resolve_precision(True, CPU).name == "bf16" and resolve_precision(False, CUDA).name == "fp32"
    fp16_on_cpu = resolve_precision("fp16", CPU)  # the CUDA recipe, simulated where there is no GPU
    assert fp16_on_cpu.dtype == torch.float16 and fp16_on_cpu.grad_scaler().is_enabled()
    with fp16_on_cpu.autocast():
        assert torch.nn.Linear(4, 2)(torch.ones(3, 4)).dtype == torch.float16


def tiny_run(tmp_path: Path, name: str, **overrides) -> tuple[Path, dict]:
    cfg = validate_experiment(tiny_experiment(**{"model.mtl": "sharedbottom", "use_esmm": True,
                                                 "runtime.best_selection.primary_key": "auc_ctcvr", **overrides}))
    result = train_run(cfg, tmp_path / name)
    return tmp_path / name, result


def assert_scorer_reproduces_the_saved_predictions(run: Path, atol: float = 1e-6) -> None:
    """The serving path (Scorer, fp32) scores the test split as the run's evaluation did."""
    scorer = Scorer.load(run)
    test = load_split(json.loads((run / "eval.json").read_text())["dataset"], scorer.schema, "test",
                      with_columns=False)
    served = scorer.predict_encoded(test.sparse.numpy(), test.dense.numpy())
    offline = load_predictions(run / "predictions_test.npz")
    for head in scorer.tasks:
        np.testing.assert_allclose(served[head], offline.probs[head], atol=atol, rtol=0)


@pytest.mark.parametrize("native", [True, False])
def test_a_run_trains_in_what_the_hardware_probe_allows_and_scores_in_fp32(monkeypatch, tmp_path, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    run, result = tiny_run(tmp_path, "run", **{"runtime.max_train_steps": 20, "lr_scheduler.total_steps": 20})
    assert result["precision"]["train"] == ("bf16" if native else "fp32") and result["precision"]["score"] == "fp32"
    assert ("bf16 autocast" if native else "fp32") in json.loads((run / "env.json").read_text())["precision"]
    assert_scorer_reproduces_the_saved_predictions(run)


def test_fp16_with_a_grad_scaler_as_on_cuda_simulated_on_the_cpu(tmp_path):
    run, result = tiny_run(tmp_path, "fp16", **{"runtime.amp": "fp16", "model.mtl": "mmoe"})
    assert result["precision"]["train"] == "fp16"
    assert all(math.isfinite(result["test"][k]) for k in ("auc_ctr", "auc_cvr", "auc_ctcvr", "loss"))
    state = torch.load(run / "ckpt_last.pt", weights_only=True)
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0  # the scaler really ran
    assert_scorer_reproduces_the_saved_predictions(run)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the fp16 path is simulated on "
                                                           "the CPU in the test above)")
def test_fp16_on_a_real_gpu_scores_like_the_cpu_scorer(tmp_path):
    run, result = tiny_run(tmp_path, "cuda", **{"runtime.device": "cuda", "runtime.amp": True})
    assert result["precision"] == {**result["precision"], "train": "fp16", "score": "fp32", "device": "cuda"}
    assert_scorer_reproduces_the_saved_predictions(run, atol=1e-5)  # GPU fp32 vs CPU fp32 kernels


def test_a_run_resumed_on_another_machine_class_records_both_precisions(monkeypatch, tmp_path):
    """Trained to step 20 in bf16, resumed in fp32 (a machine without native bf16)."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    saved = tmp_path / "ckpt_step20.pt"

    def keep_first_checkpoint(step, record):
        if step == 30:  # the checkpoint of step 20 is the last one written
            shutil.copyfile(tmp_path / "run" / "ckpt_last.pt", saved)

    cfg = validate_experiment(tiny_experiment())
    train_run(cfg, tmp_path / "run", on_step=keep_first_checkpoint)
    shutil.copyfile(saved, tmp_path / "run" / "ckpt_last.pt")
    (tmp_path / "run" / "eval.json").unlink()
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    result = train_run(cfg, tmp_path / "run", resume=True)
    assert result["precision"]["train"] == "bf16 then fp32" and result["steps"] == TINY["runtime.max_train_steps"]
    assert "trained in bf16 before and continues in fp32" in (tmp_path / "run" / "train.log").read_text()


# ------------------------------------------------------ offline = served, to 1e-5
@pytest.mark.parametrize("index", range(len(RUN_PRECISIONS)))
def test_eval_json_predict_http_and_onnx_agree_on_the_test_split(ranking_runs, tmp_path, index):
    """eval.json's test metrics, recomputed from the probabilities `recsmith predict`, the
    HTTP service and the ONNX export give for the raw test rows, agree to 1e-5."""
    run = ranking_runs[index]
    report = json.loads((run / "eval.json").read_text())
    trained = {"bf16": "bf16", False: "fp32"}[RUN_PRECISIONS[index]]
    assert (report["precision"]["train"], report["precision"]["score"]) == (trained, "fp32")
    offline = load_predictions(run / "predictions_test.npz")
    rows = raw_synthetic_rows(Path(report["dataset"]))
    scored = {"predict": _batch_predict(run, rows, tmp_path), "http": _http(run, rows.to_pylist()),
              "onnx": _onnx(run, tmp_path)}
    for path, probs in scored.items():
        for head in ("ctr", "cvr"):
            np.testing.assert_allclose(probs[head], offline.probs[head], atol=1e-5, rtol=0, err_msg=f"{path} {head}")
        metrics = funnel_metrics({h: np.asarray(probs[h], np.float64) for h in ("ctr", "cvr")}, offline.labels,
                                 offline.columns, offline.tasks)
        for name, value in metrics.items():
            assert value == pytest.approx(report["test"][name], abs=1e-5, nan_ok=True), (path, name)
    bundle = json.loads((tmp_path / "onnx" / "bundle.json").read_text())
    assert bundle["precision"] == {"train": trained, "score": "fp32"}


def _batch_predict(run: Path, rows, tmp_path: Path) -> dict:
    pq.write_table(rows, tmp_path / "rows.parquet")
    done = run_cli("predict", run, "--input", tmp_path / "rows.parquet", "--output", tmp_path / "scored.parquet")
    assert done.returncode == 0, done.stderr
    scored = pq.read_table(tmp_path / "scored.parquet")
    return {head: scored[f"prob_{head}"].to_numpy() for head in ("ctr", "cvr")}


def _http(run: Path, rows: list[dict]) -> dict:
    source = ModelSource()
    server = start_background(build_app(Deployment(source.load(str(run))), source, ServeSettings(max_batch=600)))
    served = {"ctr": [], "cvr": []}
    try:
        with httpx.Client() as client:
            for start in range(0, len(rows), 500):
                response = client.post(f"{server.url}/predict", json={"rows": rows[start:start + 500]}, timeout=30)
                assert response.status_code == 200, response.text
                for head in served:
                    served[head].extend(response.json()["predictions"][head])
    finally:
        server.stop()
    return served


def _onnx(run: Path, tmp_path: Path) -> dict:
    export_run(run, "onnx", tmp_path / "onnx")
    scorer = Scorer.load(tmp_path / "onnx")
    test = load_split(json.loads((run / "eval.json").read_text())["dataset"], scorer.schema, "test", with_columns=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    ctr, cvr, _ = session.run(None, {"sparse": test.sparse.numpy(), "dense": test.dense.numpy()})
    return {"ctr": ctr, "cvr": cvr}


# ------------------------------------------------------------------- budgets
def test_an_epoch_budget_ends_training_at_the_same_step_on_every_machine(tmp_path):
    _, result = tiny_run(tmp_path, "epochs", **{"runtime.max_train_epochs": 0.2})
    train_rows = DatasetSchema.load(result["dataset"]).split_rows["train"]
    assert result["steps"] == math.ceil(0.2 * train_rows / TINY["data.batch_size"]) < TINY["runtime.max_train_steps"]
    assert result["stop_reason"] == "max_train_epochs" and result["budget"] == "40 steps, 0.2 epochs"


def test_a_wall_clock_budget_is_labelled_machine_dependent():
    assert RuntimeConfig(max_train_steps=3000).budget() == "3000 steps"
    assert RuntimeConfig(max_train_steps=20000, max_train_seconds=120).budget() == \
        "20000 steps, 120 s wall clock (machine-dependent)"
