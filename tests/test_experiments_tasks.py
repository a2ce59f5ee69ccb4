"""A two-task `table` dataset whose tasks are not ctr/cvr (`income`, `marital`), run as a
chain through the CLI: every task's AUC, GAUC and LogLoss, with intervals, reach
summary.csv, delta_analysis.txt, the printed table and EXPERIMENT_REPORT.md."""

import csv
import json

import numpy as np
import pytest
import yaml

from conftest import run_cli

pytestmark = pytest.mark.slow
TASKS = ("income", "marital")
METRICS = [f"{m}_{t}" for t in TASKS for m in ("auc", "gauc", "logloss")]


def write_people(folder, rows=6000, seed=0):
    """people.csv (a person id, age, education, hours; two labels) and its table spec."""
    rng = np.random.default_rng(seed)
    age, education, hours = rng.integers(16, 80, rows), rng.integers(0, 5, rows), np.round(rng.gamma(4, 10, rows), 1)
    income = rng.random(rows) < 1 / (1 + np.exp(-(1.2 * education + 0.04 * hours - 5.5)))
    marital = rng.random(rows) < 1 / (1 + np.exp(-(4.0 - 0.15 * age)))
    columns = {"person": [f"p{u}" for u in rng.integers(0, 200, rows)], "age": age, "education": education,
               "hours": hours, "label_income": income.astype(int), "label_marital": marital.astype(int)}
    lines = [",".join(columns)] + [",".join(str(columns[c][i]) for c in columns) for i in range(rows)]
    (folder / "people.csv").write_text("\n".join(lines) + "\n")
    spec = {"name": "people", "input": {"path": "people.csv"},
            "features": [
                {"name": "person_id", "type": "categorical", "source": "person", "transformation": {"kind": "vocab"}},
                {"name": "age_bucket", "type": "categorical", "source": "age",
                 "transformation": {"kind": "bucketize", "boundaries": [20, 25, 30, 40, 50, 65]}},
                {"name": "education", "type": "categorical", "transformation": {"kind": "identity", "size": 5}},
                {"name": "hours", "type": "numeric", "transformation": {"kind": "standardize"}}],
            "labels": {"income": "label_income", "marital": "label_marital"},
            "tasks": [{"name": "income", "label": "income"}, {"name": "marital", "label": "marital"}],
            "user_field": "person_id",
            "split": {"kind": "random", "valid_fraction": 0.2, "test_fraction": 0.25, "seed": 1}}
    (folder / "people.yaml").write_text(yaml.safe_dump(spec))
    return folder / "people.yaml"


@pytest.fixture(scope="module")
def people_chain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("people")
    base = {"name": "people_mtl",
            "data": {"source": "table", "path": str(write_people(folder)), "batch_size": 128, "eval_batch_size": 4096},
            "embedding": {"default_embedding_dim": 4},
            "model": {"backbone": "deepfm", "deep_hidden_dims": [16], "tower_hidden_dims": [8], "mtl": "sharedbottom",
                      "enabled_heads": list(TASKS)},
            "lr_scheduler": {"type": "cosine", "warmup_steps": 5, "total_steps": 80},
            "runtime": {"max_train_steps": 80, "eval_every_steps": 40, "log_every_steps": 20, "seed": 1,
                        "best_selection": {"primary_key": "auc_income", "mode": "max"}}}
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    chain = {"name": "people_chain", "base": "base.yaml", "output_dir": str(folder / "out"),
             "experiments": [{"id": "SB", "description": "shared bottom"},
                             {"id": "MMOE", "description": "MMoE", "set": {"model.mtl": "mmoe"}}],
             "comparisons": [{"title": "MMOE vs SB", "baseline": "SB", "candidate": "MMOE", "metrics": METRICS}]}
    (folder / "chain.yaml").write_text(yaml.safe_dump(chain))
    result = run_cli("chain", "run", folder / "chain.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = run_cli("report", folder / "out")
    assert report.returncode == 0, report.stdout + report.stderr
    return folder / "out", result.stdout


def test_summary_csv_has_every_task_metric_with_its_interval(people_chain):
    out, _ = people_chain
    with open(out / "summary.csv") as handle:
        reader = csv.DictReader(handle)
        header, rows = reader.fieldnames, list(reader)
    assert not [c for c in header if c.endswith(("_ctr", "_cvr", "_ctcvr"))]  # no empty funnel columns
    assert header.index("auc_primary") < header.index("auc_income") < header.index("auc_marital") \
        < header.index("gauc_income") < header.index("logloss_income")
    for row in rows:
        assert row["status"] == "success"
        for metric in METRICS:
            value, low, high = (float(row[f"{metric}{s}"]) for s in ("", "_ci_low", "_ci_high"))
            assert low <= value <= high, (row["exp_id"], metric)
        assert row["auc_primary"] == row["auc_income"]
    eval_json = json.loads((out / "SB" / "eval.json").read_text())["test"]
    sb = next(r for r in rows if r["exp_id"] == "SB")
    assert float(sb["gauc_marital"]) == pytest.approx(eval_json["gauc_marital"], abs=1e-6)


def test_delta_analysis_gives_each_task_metric_its_interval_and_verdict(people_chain):
    out, _ = people_chain
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["exp_id"]: r for r in summary["experiments"]}
    text = (out / "delta_analysis.txt").read_text()
    stats = {m["metric"]: m for m in summary["comparisons"][0]["metrics"]}
    for metric in METRICS:
        stat = stats[metric]
        assert stat["verdict"] in ("significant", "within noise"), stat
        assert stat["baseline"] == pytest.approx(rows["SB"][metric], abs=1e-12)
        line = next(l for l in text.splitlines() if l.strip().startswith(metric + " "))
        cells = line.split()
        assert float(cells[1]) == pytest.approx(rows["SB"][metric], abs=1e-6)
        assert float(cells[2]) == pytest.approx(rows["MMOE"][metric], abs=1e-6)
        assert f"[{stat['ci_low']:+.6f}, {stat['ci_high']:+.6f}]" in line


def test_printed_table_shows_each_task_and_no_empty_column(people_chain):
    _, stdout = people_chain
    table = stdout[stdout.index("chain people_chain (test split"):stdout.index("precision (")]
    assert "auc_income" in table and "auc_marital" in table and "auc_ctr" not in table
    header = next(l for l in table.splitlines() if "┃ exp" in l)
    for exp_id in ("SB", "MMOE"):  # a number in every column
        row = next(l for l in table.splitlines() if f"│ {exp_id} " in l)
        assert len([c for c in row.split("│") if c.strip()]) == len([c for c in header.split("┃") if c.strip()])


def test_report_shows_each_task_metric_with_its_interval(people_chain):
    out, _ = people_chain
    report = (out / "EXPERIMENT_REPORT.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    header = next(l for l in report.splitlines() if l.startswith("| exp | status"))
    for metric in METRICS:
        assert f" {metric} |" in header
    for row in summary["experiments"]:
        line = next(l for l in report.splitlines() if l.startswith(f"| {row['exp_id']} | success"))
        for metric in METRICS:
            low, high = row["intervals"][metric]
            assert f"{row[metric]:.4f} [{low:.4f}, {high:.4f}]" in line
    deltas = [l for l in report.splitlines() if l.startswith("| MMOE vs SB |")]
    assert [l.split("|")[2].strip() for l in deltas] == METRICS
    for line, stat in zip(deltas, summary["comparisons"][0]["metrics"]):
        assert f"[{stat['ci_low']:+.4f}, {stat['ci_high']:+.4f}] |" in line
