"""`recsmith report DIR`: EXPERIMENT_REPORT.md and a self-contained report.html, built from
the run dirs under DIR (a chain's output dir, a `--seeds` output dir, a sweep's output dir
(with its hyperparameter-impact chart), or any dir of run dirs) and the summaries written beside them. Failed and partial runs are listed with their
status and left out of the charts they have no numbers for. Columns come from the metrics
the runs report (recsmith.experiments.columns); sanity alarms are marked beside the numbers
they apply to and listed in their own section.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
from pathlib import Path

import numpy as np

from recsmith.atomic import write_text_atomic
from recsmith.errors import ConfigError
from recsmith.experiments import plots
from recsmith.experiments.alarms import applying
from recsmith.experiments.columns import TEXT_HEADLINE, headline_metrics, informative, is_topk, ordered_metrics
from recsmith.experiments.comparisons import TEXT_KINDS, p_value_test
from recsmith.experiments.summary import INTERVAL_RESAMPLES, metric_columns, oracle_values, summary_row
from recsmith.metrics.funnel import target_rows
from recsmith.run_dir import RunDir
from recsmith.train.predictions import load_predictions
from recsmith.train.text import CONFUSION_FILE

TABLE_FAMILIES = ("auc", "gauc", "logloss", "ndcg", "hr", "mrr")  # the summary table's metrics (and TEXT_KINDS')
CHART_FAMILIES = ("auc", "ndcg")  # the bar chart's and learning curves' panels
CALIBRATION_BINS = 10


def load_results(directory: Path) -> dict:
    """Rows, comparisons and where the run dirs are, for a chain dir, a seeds dir or run dirs."""
    seeds_file, summary_file = directory / "seeds_summary.json", directory / "summary.json"
    if seeds_file.is_file():
        seeds = json.loads(seeds_file.read_text(encoding="utf-8"))
        first = directory / f"seed_{seeds['seeds_found'][0]}" if seeds["seeds_found"] else None
        chain = json.loads((first / "summary.json").read_text(encoding="utf-8")) if first else {"experiments": []}
        return {"title": f"chain {seeds['chain']}, seeds {seeds['seeds']}", "rows": chain["experiments"],
                "seeds": seeds, "comparisons": chain.get("comparisons", []), "run_root": first}
    if summary_file.is_file():
        chain = json.loads(summary_file.read_text(encoding="utf-8"))
        return {"title": f"chain {chain['chain']}", "rows": chain["experiments"], "seeds": None,
                "comparisons": chain.get("comparisons", []), "run_root": directory}
    runs = sorted(p for p in directory.iterdir() if p.is_dir() and (RunDir(p).config.exists()))
    if not runs:
        raise ConfigError(f"{directory}: no summary.json, seeds_summary.json or run dirs to report on")
    sweep_file = directory / "sweep_summary.json"  # a sweep's output dir: its points are the run dirs
    sweep = json.loads(sweep_file.read_text(encoding="utf-8")) if sweep_file.is_file() else None
    return {"title": f"sweep {sweep['sweep']}" if sweep else directory.name,
            "rows": [summary_row(p.name, "", RunDir(p)) for p in runs], "seeds": None, "comparisons": [],
            "run_root": directory, "sweep": sweep}


def build_report(directory: str | Path) -> tuple[Path, Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"report: {directory} is not a directory")
    results = load_results(directory)
    rows = results["rows"]
    runs = {r["exp_id"]: RunDir(r["run_dir"]) if r.get("run_dir") else RunDir(results["run_root"] / r["exp_id"])
            for r in rows}
    images = directory / "report"
    images.mkdir(exist_ok=True)
    oracle = oracle_values(rows)
    successful = [r for r in rows if r["status"] == "success"]
    if results["seeds"]:  # bars and table show the mean over seeds
        means = {e["exp_id"]: {m: s["mean"] for m, s in e["metrics"].items()} for e in results["seeds"]["experiments"]}
        successful = [{**r, **means.get(r["exp_id"], {})} for r in successful]
    errors, error_label = _errors(results, successful)
    charts = []
    columns = metric_columns(successful)
    bars = informative(successful, [m for m in TEXT_HEADLINE if m in columns] + headline_metrics(columns, CHART_FAMILIES))
    if bars:
        charts.append(("Test metrics per experiment", plots.metric_bars(successful, bars, errors, oracle, error_label,
                                                                    images / "primary_metrics.png")))
    sweep = results.get("sweep")
    if sweep and any(p["valid"] is not None for points in sweep.get("impact", {}).values() for p in points):
        charts.append(("Hyperparameter impact", plots.hyperparameter_impact(sweep["impact"], sweep["primary_key"],
                                                                            images / "hyperparameter_impact.png")))
    curves = {e: _curves(run) for e, run in runs.items() if run.metrics.is_file()}
    if any(curves.values()):
        valid_oracle = next((v for v in (_valid_oracle(run) for run in runs.values()) if v), {})
        charts.append(("Learning curves", plots.learning_curves(curves, _curve_metrics(curves), valid_oracle,
                                                                images / "learning_curves.png")))
    for exp_id, run in runs.items():
        gates = _last_gates(run)
        if gates:
            charts.append((f"{exp_id}: gates and expert utilisation",
                           plots.gate_heatmap(exp_id, gates, images / f"gates_{exp_id}.png")))
    for exp_id, run in runs.items():  # a classifier's test confusion matrix (recsmith.train.text)
        matrix = run.path / CONFUSION_FILE
        if matrix.is_file():
            shutil.copyfile(matrix, images / f"confusion_{exp_id}.png")
            charts.append((f"{exp_id}: confusion matrix (test)", images / f"confusion_{exp_id}.png"))
    calibration = {e: c for e, c in ((e, _calibration(run)) for e, run in runs.items()) if c}
    if calibration:
        charts.append(("Calibration", plots.calibration(calibration, images / "calibration.png")))
    tables = {"summary": _summary_table(rows, errors, error_label, results["seeds"]),
              "deltas": _delta_table(results), "protocols": _protocols(runs), "alarms": _alarm_table(rows)}
    md_path, html_path = directory / "EXPERIMENT_REPORT.md", directory / "report.html"
    write_text_atomic(md_path, _markdown(results["title"], tables, charts, directory, oracle))
    write_text_atomic(html_path, _html(results["title"], tables, charts, oracle))
    return md_path, html_path


def _protocols(runs: dict) -> dict:
    """How the sequential runs' metrics were computed (from their eval.json), one row per
    distinct protocol: the labels the summary table's (top-K) / (CTR-style) columns refer to."""
    seen: dict[tuple, list[str]] = {}
    for exp_id, run in runs.items():
        protocol = (run.read_json(run.eval) or {}).get("protocol")
        if protocol:
            seen.setdefault((protocol["topk"], protocol["ctr_style"], protocol["split"]), []).append(exp_id)
    rows = [[", ".join(ids), topk, ctr, split] for (topk, ctr, split), ids in seen.items()]
    return {"header": ["experiments", "top-K protocol", "CTR-style protocol", "split"], "rows": rows,
            "note": "from each run's eval.json"}


# ----------------------------------------------------------------------- numbers
def _errors(results: dict, rows: list[dict]) -> tuple[dict, str]:
    """Per (experiment, metric): (low, high) around the value; mean ± std over seeds, or the
    95% bootstrap interval of the run's own test rows (the summary's `intervals`)."""
    out = {}
    if results["seeds"]:
        for e in results["seeds"]["experiments"]:
            for metric, s in e["metrics"].items():
                row = next((r for r in rows if r["exp_id"] == e["exp_id"]), None)
                if row is not None and row.get(metric) is not None and s["std"] is not None:
                    out[(e["exp_id"], metric)] = (row[metric] - s["std"], row[metric] + s["std"])
        return out, "± std over seeds"
    for row in rows:
        for metric, (low, high) in (row.get("intervals") or {}).items():
            out[(row["exp_id"], metric)] = (low, high)
    return out, (f"95% bootstrap interval, {INTERVAL_RESAMPLES} resamples of the test rows "
                 "(users for GAUC and top-K metrics)")


def _curves(run: RunDir) -> dict[str, list[tuple[int, float]]]:
    """Train loss ("loss") and every finite validation metric but the loss, per step."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in RunDir.read_jsonl(run.metrics):
        if record.get("type") == "train":
            series.setdefault("loss", []).append((record["step"], record["loss"]))
        elif record.get("type") == "valid":
            for metric, value in record.items():
                if metric not in ("type", "step", "loss") and isinstance(value, float) and np.isfinite(value):
                    series.setdefault(metric, []).append((record["step"], value))
    return series


def _curve_metrics(curves: dict[str, dict[str, list[tuple[int, float]]]]) -> list[str]:
    """The validation metrics worth a learning-curve panel: each task's AUC and NDCG at the
    headline cutoff, less any that repeat another at every evaluation of every run."""
    evaluations: dict[tuple[str, int], dict[str, float]] = {}
    for exp_id, series in curves.items():
        for metric, points in series.items():
            for step, value in points:
                evaluations.setdefault((exp_id, step), {})[metric] = value
    names = ordered_metrics(m for series in curves.values() for m in series if m != "loss")
    return informative(list(evaluations.values()),
                       [m for m in TEXT_HEADLINE if m in names] + headline_metrics(names, CHART_FAMILIES))


def _valid_oracle(run: RunDir) -> dict[str, float]:
    """The valid split's oracle AUCs, as its evaluations recorded them."""
    record = next((r for r in RunDir.read_jsonl(run.metrics) if r.get("type") == "valid"), {})
    return {k.removeprefix("oracle_"): v for k, v in record.items() if k.startswith("oracle_")}


def _last_gates(run: RunDir) -> dict[str, dict]:
    records = RunDir.read_jsonl(run.health)
    if not records:
        return {}
    last = max(r["step"] for r in records)
    return {r["gate"]: r for r in records if r["step"] == last}


def _calibration(run: RunDir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per head: (mean prediction, observed rate) in each prediction decile, on the rows
    the head's label is observed; only heads whose scores are probabilities (their log loss
    is reported: a softmax model's kept scores are ranks)."""
    if not run.predictions.is_file():
        return {}
    preds = load_predictions(run.predictions)
    test = (run.read_json(run.eval) or {}).get("test", {})
    out = {}
    for target in (t for t in preds.probs if isinstance(test.get(f"logloss_{t}"), float)
                   and np.isfinite(test[f"logloss_{t}"])):
        y, p, mask = target_rows(target, preds.probs, preds.labels, preds.columns, preds.tasks)
        if mask is not None:
            y, p = y[mask], p[mask]
        edges = np.quantile(p, np.linspace(0, 1, CALIBRATION_BINS + 1))
        which = np.clip(np.searchsorted(edges, p, "right") - 1, 0, CALIBRATION_BINS - 1)
        filled = np.bincount(which, minlength=CALIBRATION_BINS) > 0
        predicted = np.bincount(which, p, CALIBRATION_BINS)[filled] / np.bincount(which, minlength=CALIBRATION_BINS)[filled]
        observed = np.bincount(which, y, CALIBRATION_BINS)[filled] / np.bincount(which, minlength=CALIBRATION_BINS)[filled]
        out[target] = (predicted, observed)
    return out


# ------------------------------------------------------------------------ tables
def _summary_table(rows: list[dict], errors: dict, error_label: str, seeds: dict | None) -> dict:
    columns = metric_columns(rows)  # a text classifier's metrics have no family: `accuracy`, `auc`, ...
    metrics = informative(rows, headline_metrics(columns, TABLE_FAMILIES) + [m for m in columns if m in TEXT_KINDS])
    labelled = any(is_topk(m) for m in metrics)  # both families: say which protocol each column is
    header = ["exp", "status", "best step",
              *(f"{m} ({'top-K' if is_topk(m) else 'CTR-style'})" if labelled else m for m in metrics),
              "precision (trained → scored)", "budget", "wall (s)"]
    trainable = any(r.get("trainable_parameters") is not None for r in rows)  # a text classifier's
    if trainable:
        header.insert(-1, "trainable params")
    body = []
    seed_stats = {e["exp_id"]: e["metrics"] for e in seeds["experiments"]} if seeds else {}
    for r in rows:
        cells = [r["exp_id"], r["status"], str(r.get("best_step") or "")]
        for m in metrics:
            value = r.get(m)
            if seeds and seed_stats.get(r["exp_id"], {}).get(m, {}).get("mean") is not None:
                s = seed_stats[r["exp_id"]][m]
                cell = f"{s['mean']:.4f} ± {s['std']:.4f}"
            elif value is None or np.isnan(value):
                cell = ""
            elif (r["exp_id"], m) in errors:
                low, high = errors[(r["exp_id"], m)]
                cell = f"{value:.4f} [{low:.4f}, {high:.4f}]"
            else:
                cell = f"{value:.4f}"
            cells.append(cell + (" !" if cell and applying(r.get("alarms") or [], m) else ""))
        cells.append(f"{r['train_precision']} → {r['score_precision']}" if r.get("train_precision") else "")
        cells.append(r.get("budget") or "")
        if trainable:
            cells.append(f"{r['trainable_parameters']:,}" if r.get("trainable_parameters") is not None else "")
        cells.append(str(r.get("wall_seconds") or ""))
        body.append(cells)
    note = ("mean ± std over seeds" if seeds else f"test value [{error_label}]") + "; ! = a sanity alarm applies"
    return {"header": header, "rows": body, "note": note}


def _alarm_table(rows: list[dict]) -> dict:
    body = [[r["exp_id"], a["kind"], ", ".join(a["metrics"]), a["message"]] for r in rows for a in r.get("alarms") or []]
    return {"header": ["exp", "alarm", "applies to", "what"], "rows": body,
            "note": "numbers that usually mean a bug, not a result (thresholds: docs/experiments.md)"}


def _delta_table(results: dict) -> dict:
    header = ["comparison", "metric", "Δ", "95% interval", "p (DeLong)", "verdict", "alarms"]
    body = []
    if results["seeds"]:
        header = ["comparison", "metric", "Δ mean ± std", "95% t-interval", "seeds significant", "verdict"]
        for c in results["seeds"]["comparisons"]:
            for m in c["metrics"]:
                interval = "n/a" if not m["t_interval"] else f"[{m['t_interval'][0]:+.4f}, {m['t_interval'][1]:+.4f}]"
                mean = "n/a" if m["delta_mean"] is None else f"{m['delta_mean']:+.4f} ± {m['delta_std']:.4f}"
                body.append([c["title"], m["metric"], mean, interval, f"{m['bootstrap_significant']}/{m['delta_n']}",
                             m["verdict"]])
        return {"header": header, "rows": body, "note": "over seeds; each seed's own paired bootstrap counted"}
    for c in results["comparisons"]:
        for m in c["metrics"]:
            if m.get("verdict") in ("significant", "within noise"):
                p = "n/a" if m["p_value"] is None else (f"{m['p_value']:.4f}" if m["p_value"] >= 1e-4 else "<1e-4")
                if m["p_value"] is not None and p_value_test(m["metric"]) != "DeLong":
                    p += f" ({p_value_test(m['metric'])})"  # a text classifier's accuracy
                body.append([c["title"], m["metric"], f"{m['delta']:+.4f}",
                             f"[{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]", p, m["verdict"], _alarms_cell(m)])
            else:
                body.append([c["title"], m["metric"], "n/a", "n/a", "n/a", m.get("reason", "n/a"), _alarms_cell(m)])
    marked = any(cell.endswith("(McNemar)") for row in body for cell in row[4:5])
    return {"header": header, "rows": body,
            "note": "paired bootstrap over the test rows (users for GAUC and top-K metrics); DeLong's test for "
                    "AUCs only" + ("; McNemar's exact test where marked (a text classifier's accuracy)" if marked
                                   else "") + "; a delta with an alarm is not a finding until the alarm is explained"}


def _alarms_cell(stat: dict) -> str:
    return "; ".join(f"! {a}" for a in stat.get("alarms") or [])


# ------------------------------------------------------------------------ output
def _markdown(title: str, tables: dict, charts: list, directory: Path, oracle: dict) -> str:
    def table(t):
        lines = ["| " + " | ".join(t["header"]) + " |", "|" + "---|" * len(t["header"])]
        lines += ["| " + " | ".join(row) + " |" for row in t["rows"]]
        return "\n".join(lines)

    parts = [f"# Experiment report: {title}", "", "Generated by `recsmith report` from the run dirs; every number "
             "comes from them.", "", "## Summary (test split, best checkpoint)", "", f"_{tables['summary']['note']}_",
             "", table(tables["summary"]), ""]
    if tables["alarms"]["rows"]:
        parts += ["## Sanity alarms", "", f"_{tables['alarms']['note']}_", "", table(tables["alarms"]), ""]
    if oracle:
        parts += ["Oracle AUC (true probabilities): " + ", ".join(f"{k} {v:.4f}" for k, v in oracle.items()), ""]
    if tables["protocols"]["rows"]:
        parts += ["## Evaluation protocols", "", table(tables["protocols"]), ""]
    if tables["deltas"]["rows"]:
        parts += ["## Deltas", "", f"_{tables['deltas']['note']}_", "", table(tables["deltas"]), ""]
    for caption, path in charts:
        parts += [f"## {caption}", "", f"![{caption}]({path.relative_to(directory).as_posix()})", ""]
    return "\n".join(parts)


def _html(title: str, tables: dict, charts: list, oracle: dict) -> str:
    def table(t):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in t["header"])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in t["rows"])
        return f"<p class='note'>{html.escape(t['note'])}</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    sections = [f"<h2>Summary (test split, best checkpoint)</h2>{table(tables['summary'])}"]
    if tables["alarms"]["rows"]:
        sections.append(f"<h2>Sanity alarms</h2>{table(tables['alarms'])}")
    if oracle:
        sections.append("<p>Oracle AUC (true probabilities): " + html.escape(
            ", ".join(f"{k} {v:.4f}" for k, v in oracle.items())) + "</p>")
    if tables["protocols"]["rows"]:
        sections.append(f"<h2>Evaluation protocols</h2>{table(tables['protocols'])}")
    if tables["deltas"]["rows"]:
        sections.append(f"<h2>Deltas</h2>{table(tables['deltas'])}")
    for caption, path in charts:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        sections.append(f"<h2>{html.escape(caption)}</h2><img class='chart' alt='{html.escape(caption)}' "
                        f"src='data:image/png;base64,{data}'>")
    script = ("window.addEventListener('load', function () {"
              " var images = Array.prototype.slice.call(document.querySelectorAll('img.chart'));"
              " var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;"
              " document.body.setAttribute('data-charts-loaded', ok + '/' + images.length); });")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}.note{color:#555;font-style:italic}"
             "img.chart{max-width:100%;border:1px solid #eee}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<link rel='icon' href='data:,'><style>{style}</style></head><body>"
            f"<h1>Experiment report: {html.escape(title)}</h1>{''.join(sections)}"
            f"<script>{script}</script></body></html>\n")
