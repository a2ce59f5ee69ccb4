"""From raw logs to a trained model through the CLI: join → table source → train."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, run_cli

pytestmark = pytest.mark.slow


def write_logs(folder, n=6000, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir()
    users, items = rng.integers(0, 300, n), rng.integers(0, 200, n)
    ts = 1_700_000_000 + np.sort(rng.integers(0, 86_400 * 7, n))
    affinity = (items < 50).astype(float)  # some items are simply more attractive
    pq.write_table(pa.table({"impression_id": np.arange(n), "request_id": np.arange(n) + 10**6, "ts": ts,
                             "user": [f"u{u}" for u in users], "item": [f"i{i}" for i in items]}),
                   folder / "impressions.parquet")
    clicked = np.flatnonzero(rng.random(n) < 0.1 + 0.5 * affinity)
    pq.write_table(pa.table({"click_id": np.arange(len(clicked)), "impression_id": clicked,
                             "ts": ts[clicked] + 5}), folder / "clicks.parquet")
    converted = clicked[rng.random(len(clicked)) < 0.2 + 0.4 * affinity[clicked]]
    click_of = {imp: c for c, imp in enumerate(clicked)}
    pq.write_table(pa.table({"click_id": [click_of[i] for i in converted], "ts": ts[converted] + 3600}),
                   folder / "conversions.parquet")
    pq.write_table(pa.table({"request_id": np.arange(n) + 10**6, "price": rng.lognormal(3, 1, n)}),
                   folder / "features.parquet")


def test_logs_join_prepare_and_train(tmp_path):
    write_logs(tmp_path / "logs")
    (tmp_path / "join.yaml").write_text(yaml.safe_dump({
        "impressions": "logs/impressions.parquet", "clicks": "logs/clicks.parquet",
        "conversions": "logs/conversions.parquet", "feature_log": "logs/features.parquet",
        "output": "samples/joined.parquet", "attribution_window": "1d"}))
    joined = run_cli("data", "join", tmp_path / "join.yaml")
    assert joined.returncode == 0, joined.stderr
    assert "6,000 samples" in joined.stdout
    report = json.loads((tmp_path / "samples" / "join_report.json").read_text())
    assert report["rows_out"] == 6000 and report["clicked_impressions"] > 600

    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({
        "name": "my_ads", "input": {"path": "samples/joined.parquet"},
        "features": [
            {"name": "user_id", "type": "categorical", "entity": "user", "source": "user", "transformation": {"kind": "vocab"}},
            {"name": "item_id", "type": "categorical", "entity": "item", "source": "item", "transformation": {"kind": "vocab"}},
            {"name": "price", "type": "numeric", "entity": "item", "transformation": {"kind": "standardize", "log1p": True}},
        ],
        "labels": {"click": "label_click", "conversion": "label_convert"}, "user_field": "user_id"}))
    experiment = REPO / "configs" / "experiments" / "mtl_funnel" / "E2_deepfm_shared_esmm.yaml"
    settings = {"data.source": "table", "data.path": str(tmp_path / "dataset.yaml"), "data.batch_size": 256,
                "runtime.max_train_steps": 60, "lr_scheduler.total_steps": 60, "lr_scheduler.warmup_steps": 5,
                "runtime.eval_every_steps": 30, "optim.sparse.lr": 0.02, "optim.dense.lr": 0.005}
    args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    trained = run_cli("train", experiment, "--run-dir", tmp_path / "run", *args)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["test"]["auc_ctr"] > 0.6  # the item effect is learnable
    assert "auc_cvr_entire" not in result["test"]  # no synthetic truth in real logs
