"""`recsmith sweep`: grid points in parallel, resume without repeats, top-k checkpoints, bad input."""

import json

import pytest
import yaml

from conftest import REPO, TINY, run_cli

pytestmark = pytest.mark.slow
BASE = REPO / "configs" / "experiments" / "mtl_funnel" / "E0a_deepfm_st_ctr.yaml"


def sweep_file(tmp_path, **fields):
    spec = {"name": "tiny_sweep", "base": str(BASE), "set": dict(TINY), "output_dir": str(tmp_path / "out"),
            "grid": {"optim.dense.lr": [0.0003, 0.003]}, "points": [{"optim.sparse.lr": 0.01}],
            "parallel": 2, "save_model": {"top_k": 1}, **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    path = sweep_file(tmp)
    result = run_cli("sweep", path)
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp, path


def test_every_point_runs_with_its_share_of_the_threads(finished_sweep):
    tmp, _ = finished_sweep
    summary = json.loads((tmp / "out" / "sweep_summary.json").read_text())
    points = summary["points"]
    assert len(points) == 3 and all(p["status"] == "success" for p in points)
    assert summary["ranked_by"] == "valid_auc_ctr"
    assert sorted(p["rank"] for p in points) == [1, 2, 3]
    ranked = sorted(points, key=lambda p: p["rank"])
    assert ranked[0]["valid_auc_ctr"] >= ranked[1]["valid_auc_ctr"] >= ranked[2]["valid_auc_ctr"]
    for p in points:  # 2 workers on this machine's cores
        config = yaml.safe_load((tmp / "out" / "configs" / f"{p['point']}.yaml").read_text())
        assert p["threads"] == config["runtime"]["num_threads"] >= 1 and p["machine_shared"] is True
    lrs = sorted(yaml.safe_load((tmp / "out" / "configs" / f"{p['point']}.yaml").read_text())["optim"]["dense"]["lr"]
                 for p in points)
    assert lrs == [0.0003, 0.0006, 0.003]  # the grid, and the listed point on the base value


def test_only_the_top_k_keep_checkpoints(finished_sweep):
    tmp, _ = finished_sweep
    points = json.loads((tmp / "out" / "sweep_summary.json").read_text())["points"]
    for p in points:
        kept = (tmp / "out" / p["point"] / "ckpt_best.pt").exists()
        assert kept == (p["rank"] == 1)
        assert (tmp / "out" / p["point"] / "eval.json").exists()


def test_resume_repeats_no_finished_point(finished_sweep):
    tmp, path = finished_sweep
    evals = {p: p.stat().st_mtime_ns for p in (tmp / "out").glob("p*/eval.json")}
    again = run_cli("sweep", path)
    assert again.returncode != 0 and "--resume" in again.stdout + again.stderr
    resumed = run_cli("sweep", path, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "3 already done" in resumed.stdout
    assert {p: p.stat().st_mtime_ns for p in (tmp / "out").glob("p*/eval.json")} == evals


@pytest.mark.parametrize("fields, message", [
    ({"grids": {"optim.dense.lr": [0.1]}}, "grids: unknown key"),
    ({"grid": {"optim.dense.lrr": [0.1]}}, "optim.dense.lrr"),
    ({"grid": {"optim.dense.lr": [-1.0]}}, "optim.dense.lr"),
])
def test_a_bad_sweep_fails_before_running_anything(tmp_path, fields, message):
    result = run_cli("sweep", sweep_file(tmp_path, **fields))
    assert result.returncode != 0 and message in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_the_impact_chart_shows_each_swept_key_with_the_base_point(tmp_path):
    from recsmith.experiments.sweep import IMPACT_CHART, Sweep

    path = sweep_file(tmp_path, grid={}, points=[{}, {"optim.dense.lr": 0.003}, {"optim.dense.lr": 0.0001},
                                                 {"model.dropout": 0.2}])
    plan = Sweep(path)
    rows = [{"valid_auc_ctr": v, "test_auc_ctr": v and v - 0.01} for v in (0.70, 0.72, 0.65, None)]
    impact = plan.impact(rows)
    assert list(impact) == ["optim.dense.lr", "model.dropout"]
    base_lr = plan.points[0].config.optim.dense.lr
    assert [(p["value"], p["base"], p["valid"]) for p in impact["optim.dense.lr"]] == [
        (base_lr, True, 0.70), (0.003, False, 0.72), (0.0001, False, 0.65)]
    assert [(p["base"], p["test"]) for p in impact["model.dropout"]] == [(True, pytest.approx(0.69)), (False, None)]
    from recsmith.experiments.plots import hyperparameter_impact
    chart = hyperparameter_impact(impact, "auc_ctr", tmp_path / IMPACT_CHART)
    assert chart.stat().st_size > 10_000


def test_the_sweep_report_has_the_impact_chart(finished_sweep):
    tmp, _ = finished_sweep
    assert (tmp / "out" / "sweep_impact.png").is_file()
    result = run_cli("report", tmp / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    report = (tmp / "out" / "EXPERIMENT_REPORT.md").read_text()
    assert report.startswith("# Experiment report: sweep tiny_sweep") and "## Hyperparameter impact" in report
    assert (tmp / "out" / "report" / "hyperparameter_impact.png").is_file()
