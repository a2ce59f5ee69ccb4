"""`recsmith loop simulate` end to end on a tiny world, as a user runs it: killed with SIGKILL
in the middle of a day, rerun, it finishes with every step done once; the timeline renders in
Chromium. (The shipped seven-day run, with its injected failures, is in docs/loop.md.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import console_messages, open_in_chromium, run_cli

from recsmith.errors import ConfigError
from recsmith.loop.config import LoopConfig
from recsmith.loop.simulate import Loop

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TINY_LOOP = {
    "name": "tiny_loop", "days": 2,
    "training": {"config": str(REPO / "configs" / "loop" / "model.yaml"), "bootstrap_steps": 120,
                 "daily_steps": 30, "window_days": 2, "freeze_days": 0},
    # not about the models: on 200 held-out rows a candidate's AUC can fall below 0.5 (it did), and then no release runs
    "gate": {"min": {"auc_ctr": 0.05}, "calibration_tolerance": 5.0, "regression_alpha": 1e-9},
    "release": {"stages": [{"share": 0.2, "min_canary_requests": 40},
                           {"share": 0.4, "min_canary_requests": 80, "rule": "noninferior", "margin": 0.5}]},
    "world": {"requests_per_day": 600, "candidates": 4, "windows_per_day": 3, "bootstrap_impressions": 6000,
              "clients": 2},
    "monitor": {"rules": [{"metric": "missing_rate_increase", "above": 0.05, "level": "P1", "min_rows": 20},
                          {"metric": "calibration", "above": 0.10, "level": "P1", "min_rows": 100}]},
    "inject": {"feature_failure": {"day": 2, "feature": "user_hist_ctr", "slice_field": "device_os",
                                   "slice_value": 1}},
}


def test_a_killed_loop_resumes_and_finishes_every_step_once(tmp_path):
    config, out = tmp_path / "loop.yaml", tmp_path / "loop"
    config.write_text(yaml.safe_dump(TINY_LOOP))
    child = subprocess.Popen([sys.executable, "-m", "recsmith", "loop", "simulate", str(config), "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    state_file, deadline = out / "loop_state.json", time.time() + 300
    while not (state_file.is_file() and "day01:serve:w0" in json.loads(state_file.read_text())["done"]):
        assert child.poll() is None and time.time() < deadline, child.stdout.read() if child.poll() is not None else ""
        time.sleep(0.1)
    time.sleep(0.5)  # into the next window: its requests are in the request log, its step is not recorded
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    killed = json.loads(state_file.read_text())["done"]
    assert "day02:monitor" not in killed

    resumed = run_cli("loop", "simulate", config, "--out", out, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    state = json.loads(state_file.read_text())
    done = state["done"]
    for day in (1, 2):
        assert all(f"day{day:02d}:serve:w{w}" in done for w in range(3)) and f"day{day:02d}:monitor" in done
    assert done["day01:serve:w0"] == killed["day01:serve:w0"]  # a done step is not run again
    # the window the kill interrupted was served twice: the join kept each impression once
    joined = pq.read_table(out / "days" / "day_01" / "window_1" / "joined.parquet")
    ids = joined["impression_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 200
    versions = json.loads((out / "registry" / "tiny_loop" / "registry.json").read_text())["versions"]
    runs = [v["run_dir"] for v in versions]
    assert len(runs) == len(set(runs))  # no run registered twice
    assert versions[0]["stage"] in ("production", "archived") and done["day00:gate"]["passed"]
    # the feature failure on day 2: a P1 on exactly that slice and feature
    failures = [a for a in state["alerts"] if a["day"] == 2 and a["metric"] == "missing_rate_increase"]
    # (slices of other fields made mostly of device_os=1 rows are as far off: explained away)
    assert [(a["level"], a["slice"], a["feature"]) for a in failures] == [("P1", "device_os=1", "user_hist_ctr")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decisions"] >= 1 and 0 <= summary["decisions_agreeing_with_oracle"] <= summary["decisions"]
    # a scheduler's unit of work: a step already done answers its recorded result and changes nothing
    before = state_file.read_bytes()
    step = run_cli("loop", "step", "monitor", "--day", "2", "--out", out)
    assert step.returncode == 0 and json.loads(step.stdout)["alerts"] == done["day02:monitor"]["alerts"]
    assert state_file.read_bytes() == before
    loop = Loop(LoopConfig.model_validate(state["config"]), Path(state["base"]), out)  # as `loop step` builds it
    with pytest.raises(ConfigError, match="'monitr' is not one of monitor, train, gate, register"):
        loop.step("monitr", 2)
    with pytest.raises(ConfigError, match="'day03:train' is not done yet"):
        loop.step("gate", 3)
    assert state_file.read_bytes() == before
    status = run_cli("loop", "status", out)
    assert status.returncode == 0 and "production: v" in status.stdout and "device_os=1" in status.stdout
    dom, log = open_in_chromium(out / "timeline.html")
    assert dom.count("<tr>") >= 4 and "<svg" in dom and "device_os=1" in dom and not console_messages(log)


def test_a_bad_loop_config_is_one_clear_error(tmp_path):
    config = tmp_path / "loop.yaml"
    config.write_text(yaml.safe_dump({**TINY_LOOP, "release": {"stages": [{"share": 0.2, "min_canary_requests": 40},
                                                                          {"share": 0.1, "min_canary_requests": 80}]}}))
    result = run_cli("loop", "simulate", config, "--out", tmp_path / "out")
    assert result.returncode == 2 and "config error: release.stages: shares must rise, got [0.2, 0.1]" in result.stderr
    assert not (tmp_path / "out").exists()
