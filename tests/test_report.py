"""`recsmith report`: the Markdown and HTML report from run dirs, checked in headless Chromium."""

import json
import re
import shutil

import pytest

from conftest import console_messages, open_in_chromium, run_cli, tiny_chain_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reported_chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    chain = tiny_chain_file(tmp)
    assert run_cli("chain", "run", chain, "--only", "E1,E2,E3").returncode == 0
    result = run_cli("report", tmp / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp / "out"


def test_report_files_and_charts(reported_chain):
    out = reported_chain
    text = (out / "EXPERIMENT_REPORT.md").read_text()
    for chart in ("primary_metrics.png", "learning_curves.png", "gates_E3.png", "calibration.png"):
        assert (out / "report" / chart).stat().st_size > 5000
        assert f"report/{chart}" in text
    summary = json.loads((out / "summary.json").read_text())
    e2 = next(r for r in summary["experiments"] if r["exp_id"] == "E2")
    assert f"{e2['auc_ctcvr']:.4f} [" in text  # the value with its interval
    assert "E2 vs E1 (ESMM)" in text and ("within noise" in text or "significant" in text)
    assert "not_run" in text  # E4, E5 were not run and are listed as such


def test_report_renders_in_headless_chromium(reported_chain):
    page = reported_chain / "report.html"
    dom, log = open_in_chromium(page)
    match = re.search(r'data-charts-loaded="(\d+)/(\d+)"', dom)
    assert match, dom[:500]
    loaded, total = map(int, match.groups())
    assert total == 4 and loaded == total  # every chart decoded in the browser
    assert not console_messages(log), console_messages(log)
    broken = reported_chain / "broken.html"  # the check itself can fail
    broken.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    assert any("Uncaught ReferenceError" in line for line in console_messages(open_in_chromium(broken)[1]))
    assert "Experiment report" in dom and "<table>" in dom
    shot = reported_chain / "report.png"
    open_in_chromium(page, screenshot=shot)
    assert shot.stat().st_size > 10000


def test_report_shows_a_failed_run_and_still_renders(reported_chain, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reported_chain, out)
    (out / "E3" / "eval.json").unlink()  # E3 now ended without its final evaluation
    status = json.loads((out / "E3" / "status.json").read_text())
    (out / "E3" / "status.json").write_text(json.dumps({**status, "status": "failed"}))
    (out / "summary.json").unlink()  # rebuild from the run dirs alone
    result = run_cli("report", out)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (out / "EXPERIMENT_REPORT.md").read_text()
    assert re.search(r"\| E3 \| failed \|", text)
    dom, _ = open_in_chromium(out / "report.html")
    loaded, total = map(int, re.search(r'data-charts-loaded="(\d+)/(\d+)"', dom).groups())
    assert loaded == total >= 3


def test_report_on_a_dir_without_runs_fails_clearly(tmp_path):
    result = run_cli("report", tmp_path)
    assert result.returncode != 0
    assert "no summary.json, seeds_summary.json or run dirs" in result.stdout + result.stderr


def test_findings_are_read_from_the_tracked_numbers(reported_chain):
    result = run_cli("findings", reported_chain)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (reported_chain / "FINDINGS.md").read_text()
    summary = json.loads((reported_chain / "summary.json").read_text())
    rows = {r["exp_id"]: r for r in summary["experiments"] if r["status"] == "success"}
    best = max((r for r in rows.values() if r.get("auc_ctcvr") is not None), key=lambda r: r["auc_ctcvr"])
    assert f"**{best['exp_id']}**" in text and f"auc_ctcvr = {best['auc_ctcvr']:.4f}" in text
    esmm = next(c for c in summary["comparisons"] if c["title"] == "E2 vs E1 (ESMM)")
    ctcvr = next(m for m in esmm["metrics"] if m["metric"] == "auc_ctcvr")
    assert f"{ctcvr['delta']:+.4f} (95% CI [{ctcvr['ci_low']:+.4f}, {ctcvr['ci_high']:+.4f}]" in text
    assert f"{rows['E3']['parameters']:,} parameters" in text
    assert "E5 (not_run)" in text
