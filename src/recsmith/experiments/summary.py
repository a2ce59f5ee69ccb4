"""Chain summary and delta analysis: pure functions of the chain file and its run dirs,
so they can be regenerated at any time (`recsmith chain summarize`).

A row holds a run's fields (status, primary key, best step, precision, ...), every test
metric its eval.json reports (whatever the tasks are called), each metric's 95% bootstrap
interval from the run's saved predictions (`intervals`), and its sanity alarms
(`alarms`, recsmith.experiments.alarms). Metric columns follow recsmith.experiments.columns.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from recsmith.atomic import write_json_atomic, write_text_atomic
from recsmith.experiments.alarms import applying, run_alarms
from recsmith.experiments.columns import ORACLE, ordered_metrics
from recsmith.experiments.comparisons import (RESAMPLES, TEXT_KINDS, DeltaStat, RunArrays, comparison_stats,
                                              run_intervals)
from recsmith.run_dir import RunDir

FIRST_FIELDS = ("exp_id", "description", "status", "alarms", "primary_key", "best_step", "max_train_steps")
LAST_FIELDS = ("valid_auc_primary", "train_precision", "score_precision", "budget", "parameters",
               "trainable_parameters", "train_seconds",
               "epochs", "stop_reason", "wall_seconds", "run_dir")
ROW_FIELDS = (*FIRST_FIELDS, *LAST_FIELDS, "intervals")
INTERVAL_RESAMPLES = 300  # per-run intervals; the deltas get RESAMPLES
TEXT_NOTE = ("Text classifiers: CI over test rows for accuracy, macro_f1, logloss and auc; p: McNemar's",
             "exact test for accuracy (its verdict also needs p < 0.05), DeLong's for auc, n/a for the others.")


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
    row = {c: None for c in ROW_FIELDS}
    row.update(exp_id=exp_id, description=description, status=run_status(run), run_dir=str(run.path),
               alarms=[], intervals={})
    status = run.read_json(run.status) or {}
    row["wall_seconds"] = round(status["wall_seconds"], 1) if status.get("wall_seconds") else None
    result = run.read_json(run.eval) if row["status"] == "success" else None
    if result:
        test, valid = result.get("test", {}), result.get("valid", {})
        row.update(primary_key=result.get("primary_key"), best_step=result.get("best_step"),
                   max_train_steps=result.get("max_train_steps"),
                   valid_auc_primary=valid.get("auc_primary"), parameters=result.get("parameters"))
        row.update({k: v for k, v in test.items() if k not in ROW_FIELDS})  # every metric, any task name
        row.update({c: result.get(c) for c in ("trainable_parameters", "train_seconds", "epochs", "stop_reason",
                                               "budget")})
        precision = result.get("precision", {})
        row.update(train_precision=precision.get("train"), score_precision=precision.get("score"))
        arrays = RunArrays.load(run)
        finite = [m for m, v in test.items() if isinstance(v, (int, float)) and math.isfinite(v)]
        row["intervals"] = {m: list(ci) for m, ci in run_intervals(arrays, finite, INTERVAL_RESAMPLES).items()}
        row["alarms"] = [a.to_json() for a in run_alarms(test, row["intervals"], arrays.preds)]
    return row


def build_summary(chain) -> list[dict]:
    return [summary_row(e.id, e.description, RunDir(chain.output_dir / e.id)) for e in chain.experiments]


def metric_names(row: dict) -> list[str]:
    """The metrics of one summary row, as its run's eval.json listed them."""
    return [k for k in row if k not in ROW_FIELDS]


def metric_columns(rows: list[dict]) -> list[str]:
    """Every metric any of the rows has, in the summary's column order."""
    return ordered_metrics(k for r in rows for k in metric_names(r))


def columns_of(rows: list[dict]) -> list[str]:
    """summary.csv's columns: the run fields, each metric followed by its interval (when
    some run has one), the remaining run fields."""
    columns = list(FIRST_FIELDS)
    for metric in metric_columns(rows):
        columns.append(metric)
        if any(metric in (r.get("intervals") or {}) for r in rows):
            columns += [f"{metric}_ci_low", f"{metric}_ci_high"]
    return columns + list(LAST_FIELDS)


def _csv_row(row: dict) -> dict:
    flat = {**row, "alarms": "; ".join(a["message"] for a in row.get("alarms") or [])}
    for metric, (low, high) in (row.get("intervals") or {}).items():
        flat[f"{metric}_ci_low"], flat[f"{metric}_ci_high"] = low, high
    return flat


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
    writer.writerows({k: _cell(k, flat.get(k)) for k in columns} for flat in map(_csv_row, rows))
    stats = comparison_stats({e.id: RunDir(out / e.id) for e in chain.experiments}, chain.spec.comparisons)
    paths = out / "summary.csv", out / "summary.json", out / "delta_analysis.txt"
    write_text_atomic(paths[0], buffer.getvalue())
    by_id = {r["exp_id"]: r for r in rows}
    comparisons = [{"title": c.title, "baseline": c.baseline, "candidate": c.candidate,
                    "metrics": [{**_stat_json(stats.get((c.baseline, c.candidate, m)), m),
                                 "alarms": delta_alarms(by_id, c.baseline, c.candidate, m)} for m in c.metrics]}
                   for c in chain.spec.comparisons]
    write_json_atomic(paths[1], {"chain": chain.spec.name, "chain_file": str(chain.path), "experiments": rows,
                                 "comparisons": comparisons})
    write_text_atomic(paths[2], delta_analysis(chain, rows, stats))
    return paths


def delta_alarms(by_id: dict, baseline: str, candidate: str, metric: str) -> list[str]:
    """'<exp>: <message>' for each alarm of either run that applies to the metric."""
    return [f"{e}: {a['message']}" for e in (baseline, candidate)
            for a in applying((by_id.get(e) or {}).get("alarms") or [], metric)]


def _stat_json(stat: DeltaStat | str | None, metric: str) -> dict:
    if isinstance(stat, DeltaStat):
        return stat.to_json()
    return {"metric": metric, "verdict": "n/a", "reason": stat or "not computed"}


def oracle_values(rows: list[dict]) -> dict[str, float]:
    """{metric: oracle value} from the first row that has oracle metrics (synthetic data)."""
    for row in rows:
        found = {k.removeprefix(ORACLE): row[k] for k in metric_columns([row])
                 if k.startswith(ORACLE) and row[k] is not None}
        if found:
            return found
    return {}


def delta_analysis(chain, rows: list[dict], stats: dict | None = None) -> str:
    """Each comparison of the chain: deltas with their 95% interval, DeLong's p-value and a
    verdict, the oracle beside them, and the sanity alarms that apply to them."""
    by_id = {r["exp_id"]: r for r in rows}
    stats = stats or {}
    lines = [f"Delta analysis: chain '{chain.spec.name}'",
             "Test split, each run's best checkpoint (selected on valid by its primary key).",
             "Δrel = Δabs / baseline. 'gap closed' = Δabs / (oracle − baseline): the share of the",
             "distance to the ceiling (AUC of the true probabilities) that the change covered.",
             f"95% CI: paired bootstrap of Δabs ({RESAMPLES} resamples, the same for both runs: test rows",
             "for AUC and LogLoss, users for GAUC, users' targets for NDCG/HR/MRR/Precision).",
             "p: DeLong's test, for AUCs only (n/a for the others). Verdict: 'significant' when the CI",
             "excludes 0 and, for an AUC, p < 0.05; else 'within noise'. '!' marks a delta a sanity",
             "alarm applies to (listed under the comparison): not a finding until explained.", ""]
    if any(isinstance(s, DeltaStat) and s.metric in TEXT_KINDS for s in stats.values()):
        lines[-1:-1] = TEXT_NOTE
    lines += _alarm_lines(rows)
    oracle = oracle_values(rows)
    if oracle:
        lines.append("Oracle AUC (ceiling on this split): " + " · ".join(
            f"{m.removeprefix('auc_')} {v:.6f}" for m, v in oracle.items()))
        lines.append("")
    width = max([16] + [len(m) + 2 for c in chain.spec.comparisons for m in c.metrics])
    for comparison in chain.spec.comparisons:
        base, cand = by_id.get(comparison.baseline), by_id.get(comparison.candidate)
        lines.append(comparison.title)
        if comparison.question:
            lines.append(f"  question: {comparison.question}")
        missing = [r["exp_id"] for r in (base, cand) if r and r["status"] != "success"]
        if missing:
            lines += [f"  n/a: {', '.join(missing)} did not finish", ""]
            continue
        lines.append(f"  {'metric':<{width}}{comparison.baseline:>11}{comparison.candidate:>11}"
                     f"{'Δabs':>12}{'Δrel':>10}{'oracle':>11}{'gap closed':>12}"
                     f"  {'95% CI of Δabs':<24}{'p':>9}  verdict")
        flagged = []
        for metric in comparison.metrics:
            a, b = base.get(metric), cand.get(metric)
            stat = stats.get((comparison.baseline, comparison.candidate, metric))
            alarms = delta_alarms(by_id, comparison.baseline, comparison.candidate, metric)
            flagged += [f"    ! {metric}: {alarm}" for alarm in alarms]
            lines.append("  " + _delta_line(metric, a, b, oracle.get(metric), width) + _stat_cells(stat)
                         + ("  !" if alarms else ""))
        lines += flagged + [""]
    return "\n".join(lines).rstrip() + "\n"


def _alarm_lines(rows: list[dict]) -> list[str]:
    alarms = [f"  {r['exp_id']}: {a['message']}" for r in rows for a in r.get("alarms") or []]
    return ["Sanity alarms (recsmith.experiments.alarms):", *alarms, ""] if alarms else []


def _delta_line(metric: str, a, b, ceiling, width: int) -> str:
    def fmt(v, spec=".6f"):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    if a is None or b is None or any(math.isnan(v) for v in (a, b)):
        return f"{metric:<{width}}{fmt(a):>11}{fmt(b):>11}{'n/a':>12}{'n/a':>10}{fmt(ceiling):>11}{'n/a':>12}"
    delta = b - a
    rel = delta / a if a else float("nan")
    closed = delta / (ceiling - a) if ceiling is not None and ceiling != a else None
    return (f"{metric:<{width}}{a:>11.6f}{b:>11.6f}{delta:>+12.6f}{fmt(rel * 100, '+.2f') + '%':>10}"
            f"{fmt(ceiling):>11}{(fmt(closed * 100, '+.1f') + '%') if closed is not None else 'n/a':>12}")


def _stat_cells(stat: DeltaStat | str | None) -> str:
    if not isinstance(stat, DeltaStat):
        return f"  {'n/a':<24}{'n/a':>9}  n/a" + (f" ({stat})" if stat else "")
    interval = f"[{stat.ci_low:+.6f}, {stat.ci_high:+.6f}]"
    p_value = "n/a" if stat.p_value is None else (f"{stat.p_value:.4f}" if stat.p_value >= 1e-4 else "<1e-4")
    return f"  {interval:<24}{p_value:>9}  {stat.verdict}"
