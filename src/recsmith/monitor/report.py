"""The monitor's output: MONITOR_REPORT.md, a self-contained monitor_report.html and
monitor.json (every number), each written atomically into one directory."""

from __future__ import annotations

import html
from pathlib import Path

from recsmith.atomic import write_json_atomic, write_text_atomic
from recsmith.monitor import drift
from recsmith.monitor.check import CALIBRATION_ALPHA, CALIBRATION_ERROR_P1, MonitorReport

MD_FILE, HTML_FILE, JSON_FILE = "MONITOR_REPORT.md", "monitor_report.html", "monitor.json"


def write_monitor_report(report: MonitorReport, out: str | Path) -> list[Path]:
    """Write the three files into `out` (created); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = _tables(report)
    paths = [out / MD_FILE, out / HTML_FILE, out / JSON_FILE]
    write_text_atomic(paths[0], _markdown(report, tables))
    write_text_atomic(paths[1], _html(report, tables))
    write_json_atomic(paths[2], report.to_json())
    return paths


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _tables(report: MonitorReport) -> dict[str, dict]:
    features = {
        "header": ["feature", "kind", "PSI", "status", "KS D (p)", "JS div.", "missing ref", "missing cur",
                   "largest moves (bin: ref → cur share)"],
        "rows": [[f.name, f.kind, _num(f.psi), f.status,
                  "" if f.ks_statistic is None else f"{_num(f.ks_statistic)} ({_num(f.ks_pvalue, 3)})",
                  "" if f.js_divergence is None else _num(f.js_divergence), _pct(f.missing_reference),
                  _pct(f.missing_current),
                  "; ".join(f"{b['bin']}: {_pct(b['reference_share'])} → {_pct(b['current_share'])}"
                            for b in f.top_bins)]
                 for f in sorted(report.features, key=lambda f: -f.psi)],
        "note": (f"PSI over ε-smoothed shares (ε = {drift.PSI_EPSILON}): dense features in 10 bins at the "
                 f"reference's deciles, categorical ones in a bin for id 0, the top {drift.TOP_K_CATEGORIES} "
                 f"reference ids and one for the rest; moderate ≥ {drift.PSI_MODERATE}, major ≥ "
                 f"{drift.PSI_MAJOR}. KS for dense features (its p-value is informational: with this many "
                 "rows it flags negligible shifts), JS divergence (base 2, in [0, 1]) for categorical "
                 "ones. Missing: id 0 (missing or unknown) in an encoded dataset, null/NaN in raw rows; "
                 "n/a for dense features of an encoded dataset, whose missing values were filled."),
    }
    tasks = {
        "header": ["task", "predictions", "mean predicted ref", "mean predicted cur", "observed rate ref", "observed rate cur",
                   "calibration ref", "calibration cur", "calibration shift", "score PSI", "status"],
        "rows": [[t.task, t.predictions_from, _num(t.mean_predicted_reference), _num(t.mean_predicted_current),
                  _num(t.observed_rate_reference), _num(t.observed_rate_current), _num(t.calibration_reference),
                  _num(t.calibration_current),
                  "n/a" if t.calibration_shift is None else f"{100 * t.calibration_shift:+.1f}%",
                  _num(t.score_psi), t.status] for t in report.tasks],
        "note": ("mean predicted: over every row; observed rate: over the rows where the task's label is observed "
                 "(for a post-click task, the clicked rows); calibration = mean predicted / observed rate on those rows; "
                 f"current calibration vs 1.0: P1 beyond ±{100 * CALIBRATION_ERROR_P1:.0f}% when the test of observed "
                 f"against expected positives gives p < {CALIBRATION_ALPHA}; shift = current / reference − 1, "
                 "for information"),
    }
    drops = {
        "header": ["metric", "baseline (run test)", "current", "relative drop", "level"],
        "rows": [[d.metric, _num(d.baseline), _num(d.current), _pct(d.relative_drop), d.level] for d in report.drops],
        "note": (f"relative drop = (baseline − current) / baseline; > {100 * drift.AUC_DROP_P2:.1f}% is P2, "
                 f"> {100 * drift.AUC_DROP_P1:.1f}% is P1"),
    }
    return {"features": features, "tasks": tasks, "drops": drops}


def _inputs(report: MonitorReport) -> list[str]:
    return [f"reference: {report.reference}, {report.rows_reference:,} of {report.rows_reference_total:,} rows",
            f"current: {report.current}, {report.rows_current:,} of {report.rows_current_total:,} rows"
            + (f" ({report.invalid_rows_current:,} with rejected values)" if report.invalid_rows_current else ""),
            f"model: {report.model or 'none'}"]


def _markdown(report: MonitorReport, tables: dict) -> str:
    def table(t):
        lines = ["| " + " | ".join(t["header"]) + " |", "|" + "---|" * len(t["header"])]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in t["rows"]]
        return "\n".join(lines)

    parts = [f"# Monitor report: {report.level}", "", "Generated by `recsmith monitor`; every number is in "
             "monitor.json.", ""]
    parts += [f"- {line}" for line in _inputs(report)] + [""]
    parts += ["## Level", ""] + ([f"- {r}" for r in report.reasons] or ["- OK: nothing crossed a threshold"]) + [""]
    parts += ["## Feature drift", "", f"_{tables['features']['note']}_", "", table(tables["features"]), ""]
    if report.tasks:
        parts += ["## Predictions and calibration", "", f"_{tables['tasks']['note']}_", "", table(tables["tasks"]), ""]
    if report.metrics:
        parts += ["## Current metrics", "", ", ".join(f"{k} {_num(v)}" for k, v in report.metrics.items()), ""]
    if report.drops:
        parts += ["## AUC / GAUC drop", "", f"_{tables['drops']['note']}_", "", table(tables["drops"]), ""]
    if report.notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    return "\n".join(parts)


STATUS_COLOURS = {"ok": "#e8f5e9", "OK": "#e8f5e9", "moderate": "#fff3cd", "P2": "#fff3cd", "major": "#f8d7da",
                  "P1": "#f8d7da"}


def _html(report: MonitorReport, tables: dict) -> str:
    def table(t, status_column: int | None = None, bar_column: int | None = None):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in t["header"])
        body = []
        for row in t["rows"]:
            colour = STATUS_COLOURS.get(row[status_column], "") if status_column is not None else ""
            cells = []
            for j, cell in enumerate(row):
                text = html.escape(cell)
                if j == bar_column and cell != "n/a":  # PSI as a bar, full width at twice the major threshold
                    width = min(100.0, 100.0 * float(cell) / (2 * drift.PSI_MAJOR))
                    text = f"<span class='bar' style='width:{width:.0f}px'></span> {text}"
                cells.append(f"<td>{text}</td>")
            body.append(f"<tr style='background:{colour}'>" + "".join(cells) + "</tr>" if colour
                        else "<tr>" + "".join(cells) + "</tr>")
        return (f"<p class='note'>{html.escape(t['note'])}</p><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>")

    reasons = report.reasons or ["OK: nothing crossed a threshold"]
    sections = ["<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in _inputs(report)) + "</ul>",
                f"<h2>Level <span class='level' style='background:{STATUS_COLOURS[report.level]}'>"
                f"{report.level}</span></h2><ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in reasons) + "</ul>",
                f"<h2>Feature drift</h2>{table(tables['features'], status_column=3, bar_column=2)}"]
    if report.tasks:
        sections.append(f"<h2>Predictions and calibration</h2>{table(tables['tasks'], status_column=10)}")
    if report.metrics:
        sections.append("<h2>Current metrics</h2><p>" + html.escape(
            ", ".join(f"{k} {_num(v)}" for k, v in report.metrics.items())) + "</p>")
    if report.drops:
        sections.append(f"<h2>AUC / GAUC drop</h2>{table(tables['drops'], status_column=4)}")
    if report.notes:
        sections.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1500px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}"
             "td:first-child,th:first-child,td:last-child{text-align:left}td:not(:last-child){white-space:nowrap}.note{color:#555;font-style:italic}"
             ".bar{display:inline-block;height:9px;background:#c0392b;vertical-align:middle}"
             ".level{padding:2px 10px;border-radius:4px}")
    title = f"Monitor report: {report.level}"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<link rel='icon' href='data:,'><style>{style}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n")
