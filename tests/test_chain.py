"""The chain end to end through the CLI, on the shipped chain shrunk to seconds."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CHAIN, console_messages, open_in_chromium, run_cli, tiny_chain_file

from recsmith.train.precision import resolve_precision

pytestmark = pytest.mark.slow
METRICS_BY_HEADS = {
    "E0a": ["auc_ctr", "gauc_ctr", "logloss_ctr"],
    "E0b": ["auc_cvr", "auc_cvr_masked", "auc_cvr_entire", "logloss_cvr"],
}
MULTI = ["auc_ctr", "auc_cvr", "auc_cvr_masked", "auc_ctcvr", "auc_cvr_entire", "logloss_ctr", "logloss_cvr"]
ORACLE = ["oracle_auc_ctr", "oracle_auc_cvr", "oracle_auc_ctcvr", "oracle_auc_cvr_entire"]


def read_summary(out):
    with open(out / "summary.csv") as handle:
        return {row["exp_id"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def finished_chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    chain = tiny_chain_file(tmp, {"tracking.mlflow": True,
                                  "tracking.mlflow_tracking_uri": (tmp / "mlruns").as_uri()})
    result = run_cli("chain", "run", chain)
    return tmp, chain, result


def test_all_seven_succeed_with_every_metric(finished_chain):
    tmp, _, result = finished_chain
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_summary(tmp / "out")
    assert list(rows) == ["E0a", "E0b", "E1", "E2", "E3", "E4", "E5"]
    for exp_id, row in rows.items():
        assert row["status"] == "success", exp_id
        for metric in METRICS_BY_HEADS.get(exp_id, MULTI) + ORACLE + ["loss", "auc_primary", "best_step"]:
            assert row[metric] != "", f"{exp_id} lacks {metric}"
        assert row["auc_primary"] == row[row["primary_key"]]
    assert rows["E0a"]["auc_cvr"] == "" and rows["E0b"]["auc_ctr"] == ""
    assert "summary.csv" in result.stdout and "delta_analysis.txt" in result.stdout
    trained = resolve_precision("auto", torch.device("cpu")).name  # what auto picks on this machine
    assert {(r["train_precision"], r["score_precision"], r["budget"]) for r in rows.values()} == {(trained, "fp32", "40 steps")}
    assert f"precision (E0a, E0b, E1, E2, E3, E4, E5): trained in {trained}, scored in fp32" in result.stdout
    assert "budget (E0a, E0b, E1, E2, E3, E4, E5): 40 steps" in result.stdout


def test_run_dirs_hold_the_promised_files(finished_chain):
    tmp, _, _ = finished_chain
    for exp_id in ("E0a", "E3", "E5"):
        run = tmp / "out" / exp_id
        for name in ("config.yaml", "train.log", "metrics.jsonl", "eval.json", "env.json",
                     "ckpt_best.pt", "ckpt_last.pt", "status.json", "output.log"):
            assert (run / name).is_file(), f"{exp_id}/{name}"
        records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        decisions = [r for r in records if r["type"] == "valid_decision"]
        assert [d["step"] for d in decisions] == [20, 40]
        assert json.loads((run / "eval.json").read_text())["best_step"] == decisions[-1]["best_step"]
    health = [json.loads(l) for l in (tmp / "out" / "E5" / "expert_health_diag.jsonl").read_text().splitlines()]
    assert {h["gate"] for h in health} == {"level0.ctr", "level0.cvr"}
    for record in health:
        assert abs(sum(record["mean_weight"]) - 1) < 1e-4 and abs(sum(record["utilisation"]) - 1) < 1e-6
        assert len(record["experts"]) == 5 and 0 <= record["gini"] <= 1
    assert not (tmp / "out" / "E1" / "expert_health_diag.jsonl").exists()


def test_delta_analysis_compares_the_chain_steps_next_to_the_oracle(finished_chain):
    tmp, _, _ = finished_chain
    text = (tmp / "out" / "delta_analysis.txt").read_text()
    rows = read_summary(tmp / "out")
    for title in ("E1 vs E0a (CTR)", "E1 vs E0b (CVR)", "E2 vs E1 (ESMM)", "E3 vs E2 (MMoE)",
                  "E4 vs E3 (PLE)", "E5 vs E4 (heterogeneous experts)"):
        assert title in text
    assert "Oracle AUC (ceiling on this split)" in text
    line = next(l for l in text.splitlines() if l.strip().startswith("auc_ctcvr") and "E3" not in l)
    e2, e3 = float(rows["E2"]["auc_ctcvr"]), float(rows["E3"]["auc_ctcvr"])
    section = text.split("E3 vs E2 (MMoE)")[1].split("\n\n")[0]
    ctcvr = next(l for l in section.splitlines() if l.strip().startswith("auc_ctcvr")).split()
    assert float(ctcvr[1]) == pytest.approx(e2, abs=1e-6) and float(ctcvr[2]) == pytest.approx(e3, abs=1e-6)
    assert float(ctcvr[3]) == pytest.approx(e3 - e2, abs=2e-6)
    assert float(ctcvr[5]) == pytest.approx(float(rows["E3"]["oracle_auc_ctcvr"]), abs=1e-6)
    assert line


def test_every_delta_has_an_interval_a_p_value_and_a_verdict(finished_chain):
    tmp, _, _ = finished_chain
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    rows = {r["exp_id"]: r for r in summary["experiments"]}
    assert len(summary["comparisons"]) == 6
    for comparison in summary["comparisons"]:
        for stat in comparison["metrics"]:
            assert stat["verdict"] in ("significant", "within noise"), stat
            # the interval is around exactly the summary's numbers
            base, cand = rows[comparison["baseline"]], rows[comparison["candidate"]]
            assert stat["baseline"] == pytest.approx(base[stat["metric"]], abs=1e-12)
            assert stat["candidate"] == pytest.approx(cand[stat["metric"]], abs=1e-12)
            assert stat["ci_low"] <= stat["ci_high"]
            assert (stat["p_value"] is not None) == stat["metric"].startswith("auc_")
    text = (tmp / "out" / "delta_analysis.txt").read_text()
    assert "95% CI of Δabs" in text and ("within noise" in text or "significant" in text)
    assert (tmp / "out" / "E3" / "predictions_test.npz").is_file()


def test_each_run_appends_one_tracker_row(finished_chain):
    from recsmith.experiments.tracker import read_rows, tracker_path

    tmp, _, _ = finished_chain
    rows = [r for r in read_rows(tracker_path()) if r["run_dir"].startswith(str(tmp))]
    assert sorted(Path(r["run_dir"]).name for r in rows) == ["E0a", "E0b", "E1", "E2", "E3", "E4", "E5"]
    e3 = next(r for r in rows if r["run_dir"].endswith("E3"))
    assert e3["status"] == "success" and e3["model.mtl"] == "mmoe"
    assert float(e3["auc_ctcvr"]) == pytest.approx(float(read_summary(tmp / "out")["E3"]["auc_ctcvr"]), abs=1e-6)
    assert len({r["run_id"] for r in rows}) == 7 and all(len(r["config_hash"]) == 12 for r in rows)


def test_mlflow_store_lists_every_run_with_its_metrics(finished_chain, monkeypatch):
    from mlflow.tracking import MlflowClient

    tmp, _, _ = finished_chain
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((tmp / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("tiny")  # the chain's name
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["E0a", "E0b", "E1", "E2", "E3", "E4", "E5"]
    summary = read_summary(tmp / "out")
    for exp_id, run in runs.items():
        assert run.info.status == "FINISHED"
        primary = summary[exp_id]["primary_key"]
        assert run.data.metrics[f"test_{primary}"] == pytest.approx(float(summary[exp_id][primary]), abs=1e-6)
        assert run.data.params["runtime.max_train_steps"] == "40"
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in history] == [10, 20, 30, 40]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "eval.json", "metrics.jsonl", "model"} <= artifacts


def test_summarize_regenerates_the_same_summary(finished_chain):
    tmp, chain, _ = finished_chain
    before = (tmp / "out" / "summary.csv").read_text()
    (tmp / "out" / "summary.csv").unlink()
    assert run_cli("chain", "summarize", chain).returncode == 0
    assert (tmp / "out" / "summary.csv").read_text() == before


def test_resume_skips_finished_experiments_and_a_rerun_is_refused(finished_chain):
    tmp, chain, _ = finished_chain
    before = (tmp / "out" / "summary.csv").read_text()
    again = run_cli("chain", "run", chain)
    assert again.returncode == 2 and "already holds runs of E0a" in again.stderr
    resumed = run_cli("chain", "run", chain, "--resume", "--only", "E0a,E3")
    assert resumed.returncode == 0
    assert "E0a: already complete, skipped" in resumed.stdout
    assert (tmp / "out" / "summary.csv").read_text() == before


def test_kill_9_mid_chain_then_resume_gives_the_same_summary(tmp_path):
    # longer than the module's chain, so E3 is caught between checkpoints; the resumed E3 is
    # compared with a clean run of it
    longer = {"runtime.max_train_steps": 120, "lr_scheduler.total_steps": 120}
    only = ["--only", "E0a,E3"]  # finished and interrupted at the kill
    chain = tiny_chain_file(tmp_path, longer)
    (tmp_path / "clean").mkdir()
    clean = tiny_chain_file(tmp_path / "clean", longer)
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-m", "recsmith", "chain", "run", str(chain), *only],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 400
    while not (out / "E3" / "ckpt_last.pt").exists():
        assert child.poll() is None and time.time() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    time.sleep(1.0)  # the training child dies with its parent (PR_SET_PDEATHSIG)
    assert not (out / "E3" / "eval.json").exists()
    assert not (out / "summary.csv").exists()
    resumed = run_cli("chain", "run", chain, "--resume", *only)
    assert resumed.returncode == 0, resumed.stdout
    assert "E0a: already complete, skipped" in resumed.stdout
    assert run_cli("chain", "run", clean, "--only", "E3").returncode == 0  # the interrupted one (the suite's time)
    got, want = read_summary(out), read_summary(tmp_path / "clean" / "out")
    assert all(got[exp_id]["status"] == "success" for exp_id in ("E0a", "E3"))
    for column in ("best_step", "auc_ctr", "auc_cvr", "auc_ctcvr", "auc_cvr_entire", "loss"):
        a, b = got["E3"][column], want["E3"][column]
        assert (a == b == "") or abs(float(a) - float(b)) <= 1e-6, (column, a, b)
    assert "resumed from ckpt_last.pt" in (out / "E3" / "train.log").read_text()


def test_dry_run_prints_commands_and_diffs_and_writes_nothing(tmp_path):
    chain = tiny_chain_file(tmp_path)
    result = run_cli("chain", "run", chain, "--dry-run", "--skip", "E0a,E0b")
    assert result.returncode == 0, result.stderr
    assert "E1" in result.stdout and "E0a" not in result.stdout.split("\n", 1)[1]
    assert "recsmith train" in result.stdout and "model.mtl: 'sharedbottom' → 'mmoe'" in result.stdout
    assert not (tmp_path / "out").exists()


def test_a_failing_experiment_stops_the_chain_with_a_diagnosis(tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsmith.config.loader import load_experiment
    from recsmith.data.sources import resolve_dataset

    chain = tiny_chain_file(tmp_path)
    source = resolve_dataset(load_experiment(CHAIN.parent.parent / "base" / "mtl_funnel.yaml",
                                             yaml.safe_load(chain.read_text())["set"]).data)
    broken = tmp_path / "broken_dataset"
    shutil.copytree(source, broken)
    table = pq.read_table(broken / "train.parquet")
    index = table.column_names.index("user_id")
    table = table.set_column(index, "user_id", pa.array([10**6] * table.num_rows, pa.int32()))
    pq.write_table(table, broken / "train.parquet")  # ids far outside the vocabulary

    result = run_cli("chain", "run", chain, "--skip", "E0a,E0b", "--set", "data.source=dir",
                     "--set", f"data.path={broken}")
    assert result.returncode == 1
    assert "diagnosis: missing or malformed data" in result.stdout
    assert "field 'user_id' has ids outside" in result.stdout
    assert "last 200 lines of" in result.stdout and "fix:" in result.stdout
    rows = read_summary(tmp_path / "out")
    assert rows["E1"]["status"] == "failed" and rows["E2"]["status"] == "not_run"
    status = json.loads((tmp_path / "out" / "E1" / "status.json").read_text())
    assert status["pattern"] == "missing or malformed data" and status["returncode"] == 2


def test_timeout_ends_a_stuck_experiment(tmp_path):
    chain = tiny_chain_file(tmp_path, {"runtime.max_train_steps": 100000, "lr_scheduler.total_steps": 100000})
    started = time.time()
    result = run_cli("chain", "run", chain, "--only", "E0a", "--timeout", "8")
    assert time.time() - started < 60
    assert result.returncode == 1
    assert "diagnosis: timeout" in result.stdout
    assert read_summary(tmp_path / "out")["E0a"]["status"] == "timeout"


@pytest.mark.parametrize("text, returncode, pattern", [
    ("config error: model.mtl: unknown structure 'x'", 2, "config error"),
    ("data error: data.path: dataset directory not found: /x", 2, "missing or malformed data"),
    ("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", 1, "out of memory"),
    ("", -9, "out of memory"),
    ("training error: loss is nan at step 120: training diverged", 2, "NaN loss"),
    ("RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)", 1, "shape mismatch"),
    ("Error(s) in loading state_dict for RankingModel: size mismatch for towers", 1, "shape mismatch"),
    ("something else entirely", 1, "unrecognised"),
])
def test_failure_patterns_are_recognised(text, returncode, pattern):
    from recsmith.experiments.diagnosis import recognise

    assert recognise(text, returncode)[0] == pattern


def test_evaluate_reproduces_the_runs_test_metrics(finished_chain):
    tmp, _, _ = finished_chain
    run = tmp / "out" / "E3"
    result = run_cli("evaluate", run, "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    recorded = json.loads((run / "eval.json").read_text())
    assert metrics["step"] == recorded["best_step"]
    for key, value in recorded["test"].items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key
    table = run_cli("evaluate", run, "--split", "valid", "--checkpoint", "last")
    assert table.returncode == 0 and "auc_ctcvr" in table.stdout
    bad = run_cli("evaluate", run, "--split", "holdout")
    assert bad.returncode == 2 and "--split: unknown split 'holdout'" in bad.stderr


def test_seeds_repeat_the_chain_and_summarise_across_seeds(tmp_path):
    chain = tiny_chain_file(tmp_path)
    result = run_cli("chain", "run", chain, "--seeds", "2", "--only", "E1,E2")
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "out"
    base_seed = yaml.safe_load((out / "seed_20260127" / "configs" / "E2.yaml").read_text())["runtime"]["seed"]
    other_seed = yaml.safe_load((out / "seed_20260128" / "configs" / "E2.yaml").read_text())["runtime"]["seed"]
    assert (base_seed, other_seed) == (20260127, 20260128)
    per_seed = [read_summary(out / f"seed_{s}")["E2"] for s in (20260127, 20260128)]
    assert per_seed[0]["auc_ctcvr"] != per_seed[1]["auc_ctcvr"]  # another seed, another model
    summary = json.loads((out / "seeds_summary.json").read_text())
    assert summary["seeds_found"] == [20260127, 20260128]
    e2 = next(e for e in summary["experiments"] if e["exp_id"] == "E2")
    values = [float(r["auc_ctcvr"]) for r in per_seed]
    assert e2["metrics"]["auc_ctcvr"]["mean"] == pytest.approx(sum(values) / 2, abs=1e-6)
    assert e2["metrics"]["auc_ctcvr"]["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-6)
    esmm = next(c for c in summary["comparisons"] if c["baseline"] == "E1" and c["candidate"] == "E2")
    for stat in esmm["metrics"]:
        assert stat["delta_n"] == 2 and stat["verdict"] in ("significant", "within noise")
        low, high = stat["t_interval"]
        assert low <= stat["delta_mean"] <= high
    text = (out / "seeds_delta_analysis.txt").read_text()
    assert "E2 vs E1 (ESMM)" in text and "95% t-interval" in text
    before = (out / "seeds_summary.json").read_text()
    (out / "seeds_summary.json").unlink()
    assert run_cli("chain", "summarize", chain, "--seeds", "2").returncode == 0
    assert (out / "seeds_summary.json").read_text() == before
    # the report over the seeds: mean ± std in the tables, and it renders in a browser
    assert run_cli("report", out).returncode == 0
    report = (out / "EXPERIMENT_REPORT.md").read_text()
    mean = e2["metrics"]["auc_ctcvr"]
    assert f"{mean['mean']:.4f} ± {mean['std']:.4f}" in report and "seeds significant" in report
    dom, log = open_in_chromium(out / "report.html")
    loaded, total = map(int, re.search(r'data-charts-loaded="(\d+)/(\d+)"', dom).groups())
    assert loaded == total >= 3 and not console_messages(log)


@pytest.mark.parametrize("seeds", ["0", "a,b", "3,3"])
def test_bad_seeds_are_refused_before_anything_runs(tmp_path, seeds):
    result = run_cli("chain", "run", tiny_chain_file(tmp_path), "--seeds", seeds)
    assert result.returncode != 0 and "--seeds" in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()
