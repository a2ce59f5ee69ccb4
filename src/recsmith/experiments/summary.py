"""Chain summary and delta analysis: pure functions of the chain file and its run dirs,
so they can be regenerated at any time (`recsmith chain summarize`)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from recsmith.atomic import write_json_atomic, write_text_atomic
from recsmith.experiments.comparisons import RESAMPLES, DeltaStat, comparison_stats
from recsmith.metrics.ranking import sequential_metric_names
from recsmith.run_dir import RunDir

METRIC_COLUMNS = ("auc_primary", "auc_ctr", "auc_cvr", "auc_cvr_masked", "auc_ctcvr", "auc_cvr_entire",
                  "gauc_ctr", "logloss_ctr", "logloss_cvr", "logloss_ctcvr", "calibration_ctr",
                  "calibration_cvr", "loss")
ORACLE_COLUMNS = ("oracle_auc_ctr", "oracle_auc_cvr", "oracle_auc_ctcvr", "oracle_auc_cvr_entire")
COLUMNS = ("exp_id", "description", "status", "primary_key", "best_step", "max_train_steps",
           *METRIC_COLUMNS, "valid_auc_primary", *ORACLE_COLUMNS, "train_precision", "score_precision", "budget",
           "parameters", "wall_seconds", "run_dir")
# sequential runs (both metric families) add these, when a chain has any
SEQUENTIAL_COLUMNS = (*sequential_metric_names([5, 10, 20]), "train_seconds", "epochs", "stop_reason")


def columns_of(rows: list[dict]) -> list[str]:
    """The summary's columns: the sequential ones only when some run has them."""
    sequential = [c for c in SEQUENTIAL_COLUMNS if any(r.get(c) is not None for r in rows)]
    return list(COLUMNS[:6]) + sequential + list(COLUMNS[6:])


def run_status(run: RunDir) -> str:
    recorded = (run.read_json(run.status) or {}).get("status")
    if run.eval.exists():
        return "success"
    if recorded in ("failed", "timeout", "interrupted", "running"):
        return recorded if recorded != "running" else "partial"
    if run.ckpt_last.exists():
        return "partial"
    return "not_run"


def summary_row(exp_id: str, description: str, run: RunDir) -> dict:
    row = {c: None for c in (*COLUMNS, *SEQUENTIAL_COLUMNS)}
    row.update(exp_id=exp_id, description=description, status=run_status(run), run_dir=str(run.path))
    status = run.read_json(run.status) or {}
    row["wall_seconds"] = round(status["wall_seconds"], 1) if status.get("wall_seconds") else None
    result = run.read_json(run.eval) if row["status"] == "success" else None
    if result:
        test, valid = result.get("test", {}), result.get("valid", {})
        row.update(primary_key=result.get("primary_key"), best_step=result.get("best_step"),
                   max_train_steps=result.get("max_train_steps"),
                   valid_auc_primary=valid.get("auc_primary"), parameters=result.get("parameters"))
        row.update({c: test.get(c) for c in (*METRIC_COLUMNS, *ORACLE_COLUMNS, *SEQUENTIAL_COLUMNS) if c in test})
        row.update({c: result.get(c) for c in ("train_seconds", "epochs", "stop_reason", "budget")})
        precision = result.get("precision", {})
        row.update(train_precision=precision.get("train"), score_precision=precision.get("score"))
    return row


def build_summary(chain) -> list[dict]:
    return [summary_row(e.id, e.description, RunDir(chain.output_dir / e.id)) for e in chain.experiments]


def _cell(key: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and key != "wall_seconds":
        return f"{value:.6f}"
    return str(value)


def write_summary(chain, rows: list[dict]) -> tuple[Path, Path, Path]:
    """summary.csv, summary.json and delta_analysis.txt in the chain's output dir."""
    out = chain.output_dir
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    columns = columns_of(rows)
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: _cell(k, row.get(k)) for k in columns} for row in rows)
    stats = comparison_stats({e.id: RunDir(out / e.id) for e in chain.experiments}, chain.spec.comparisons)
    paths = out / "summary.csv", out / "summary.json", out / "delta_analysis.txt"
    write_text_atomic(paths[0], buffer.getvalue())
    comparisons = [{"title": c.title, "baseline": c.baseline, "candidate": c.candidate,
                    "metrics": [_stat_json(stats.get((c.baseline, c.candidate, m)), m) for m in c.metrics]}
                   for c in chain.spec.comparisons]
    write_json_atomic(paths[1], {"chain": chain.spec.name, "chain_file": str(chain.path), "experiments": rows,
                                 "comparisons": comparisons})
    write_text_atomic(paths[2], delta_analysis(chain, rows, stats))
    return paths


def _stat_json(stat: DeltaStat | str | None, metric: str) -> dict:
    if isinstance(stat, DeltaStat):
        return stat.to_json()
    return {"metric": metric, "verdict": "n/a", "reason": stat or "not computed"}


def delta_analysis(chain, rows: list[dict], stats: dict | None = None) -> str:
    """Each comparison of the chain: deltas with their 95% interval, DeLong's p-value and a
    verdict, the oracle beside them."""
    by_id = {r["exp_id"]: r for r in rows}
    stats = stats or {}
    lines = [f"Delta analysis: chain '{chain.spec.name}'",
             "Test split, each run's best checkpoint (selected on valid by its primary key).",
             "Δrel = Δabs / baseline. 'gap closed' = Δabs / (oracle − baseline): the share of the",
             "distance to the ceiling (AUC of the true probabilities) that the change covered.",
             f"95% CI: paired bootstrap of Δabs ({RESAMPLES} resamples of the test rows, the same for",
             "both runs; users resampled for GAUC). p: DeLong's test (AUCs). Verdict: 'significant'",
             "when the CI excludes 0 and p < 0.05, else 'within noise'.", ""]
    oracle = next((r for r in rows if r.get("oracle_auc_ctr") is not None), None)
    if oracle:
        lines.append("Oracle AUC (ceiling on this split): " + " · ".join(
            f"{c.removeprefix('oracle_auc_')} {oracle[c]:.6f}" for c in ORACLE_COLUMNS if oracle.get(c) is not None))
        lines.append("")
    for comparison in chain.spec.comparisons:
        base, cand = by_id.get(comparison.baseline), by_id.get(comparison.candidate)
        lines.append(comparison.title)
        if comparison.question:
            lines.append(f"  question: {comparison.question}")
        missing = [r["exp_id"] for r in (base, cand) if r and r["status"] != "success"]
        if missing:
            lines += [f"  n/a: {', '.join(missing)} did not finish", ""]
            continue
        lines.append(f"  {'metric':<16}{comparison.baseline:>11}{comparison.candidate:>11}"
                     f"{'Δabs':>12}{'Δrel':>10}{'oracle':>11}{'gap closed':>12}"
                     f"  {'95% CI of Δabs':<24}{'p':>9}  verdict")
        for metric in comparison.metrics:
            a, b = base.get(metric), cand.get(metric)
            ceiling = (oracle or {}).get(f"oracle_{metric}") if metric.startswith("auc_") else None
            stat = stats.get((comparison.baseline, comparison.candidate, metric))
            lines.append("  " + _delta_line(metric, a, b, ceiling) + _stat_cells(stat))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _delta_line(metric: str, a, b, ceiling) -> str:
    def fmt(v, spec=".6f"):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    if a is None or b is None or any(math.isnan(v) for v in (a, b)):
        return f"{metric:<16}{fmt(a):>11}{fmt(b):>11}{'n/a':>12}{'n/a':>10}{fmt(ceiling):>11}{'n/a':>12}"
    delta = b - a
    rel = delta / a if a else float("nan")
    closed = delta / (ceiling - a) if ceiling is not None and ceiling != a else None
    return (f"{metric:<16}{a:>11.6f}{b:>11.6f}{delta:>+12.6f}{fmt(rel * 100, '+.2f') + '%':>10}"
            f"{fmt(ceiling):>11}{(fmt(closed * 100, '+.1f') + '%') if closed is not None else 'n/a':>12}")


def _stat_cells(stat: DeltaStat | str | None) -> str:
    if not isinstance(stat, DeltaStat):
        return f"  {'n/a':<24}{'n/a':>9}  n/a" + (f" ({stat})" if stat else "")
    interval = f"[{stat.ci_low:+.6f}, {stat.ci_high:+.6f}]"
    p_value = "n/a" if stat.p_value is None else (f"{stat.p_value:.4f}" if stat.p_value >= 1e-4 else "<1e-4")
    return f"  {interval:<24}{p_value:>9}  {stat.verdict}"
