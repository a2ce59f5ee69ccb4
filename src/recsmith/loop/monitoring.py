"""The loop's daily monitoring step: the day's joined impressions against the day before's,
by slice (recsmith.monitor.slices), with the loop's alert rules.

Two looks, because the two kinds of measure need different rows:
  * inputs (missing rates, PSI) on every impression the production model served: a broken
    feature pipeline shows there, whatever was shown;
  * quality (calibration against 1.0, AUC) on production's exploration impressions only (a
    random candidate shown): on the ads a model chose, its predictions are biased upwards
    (it won on them), so calibration there would be off for a perfect model.
Then the production model's permutation importance on both days' exploration impressions,
and its drift (not measured, with a note, when a day's sample holds only one label). Day 1's
reference is the bootstrap day (a random policy, no predictions): its inputs are compared,
its quality is only measured against 1.0.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsmith.atomic import write_json_atomic
from recsmith.data.synthetic import DENSE, FIELDS
from recsmith.monitor.slices import importance_drift, monitor_slices, permutation_importance

FEATURES = [f.name for f in FIELDS] + list(DENSE)
INPUT_METRICS = ("missing_rate_increase", "psi")
QUALITY_METRICS = ("calibration", "auc_drop")
TASKS = {"ctr": "label_click"}


def day_table(loop, day: int) -> pa.Table:
    files = [loop.joined(day, w) for w in range(loop.cfg.world.windows_per_day)]
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")


def production_rows(table: pa.Table, production: str | None) -> pa.Table:
    """The rows the production model served (all of them on the bootstrap day)."""
    if production is None or "prob_ctr" not in table.column_names:
        return table
    return table.filter(pc.equal(table["model"], production))


def explored(table: pa.Table) -> pa.Table:
    return table.filter(table["explore"])


def monitor_day(loop, day: int) -> dict:
    cfg = loop.cfg.monitor
    rules = cfg.rules
    production = loop.registry.resolve(f"{loop.cfg.name}@production").ref
    before = loop.state["days"].get(str(day - 1), {}).get("production")
    current = production_rows(day_table(loop, day), production)
    reference = production_rows(day_table(loop, day - 1), before)
    inputs = monitor_slices(reference, current, cfg.slice_fields, FEATURES,
                            [r for r in rules if r.metric in INPUT_METRICS], day=day, tasks={})
    quality = monitor_slices(explored(reference), explored(current), cfg.slice_fields, FEATURES,
                             [r for r in rules if r.metric in QUALITY_METRICS], day=day, tasks=TASKS)
    scorer = loop.scorer(production)
    score = lambda table: scorer.predict_table(table)["ctr"]  # noqa: E731
    importance = {name: _importance(score, explored(side), cfg.importance_rows, day)
                  for name, side in (("reference", reference), ("current", current))}
    drifted = [] if None in importance.values() else \
        importance_drift(importance["reference"], importance["current"], rules, day=day)
    alerts = [a for report in (inputs, quality) for a in report.alerts] + drifted
    folder = loop.day_dir(day)
    write_json_atomic(folder / "monitor.json", {"inputs": inputs.to_dict(), "quality": quality.to_dict(),
                                                "importance": importance})
    loop.state["days"][str(day)] = {"production": production}
    overall = quality.slice("all").tasks.get("ctr")
    unmeasured = [name for name, values in importance.items() if values is None]
    return {"level": max((a.level for a in alerts), key=("OK", "P2", "P1").index, default="OK"),
            "alerts": [json.loads(json.dumps(_alert(a), default=str)) for a in alerts],
            "suppressed": len(inputs.suppressed) + len(quality.suppressed),
            "calibration_all": None if overall is None else overall.calibration,
            "explored_rows": int(explored(current).num_rows),
            "importance_top": sorted((importance["current"] or {}).items(), key=lambda kv: -kv[1])[:5],
            "notes": [f"permutation importance not measured on the {name} day: its exploration impressions hold "
                      "no click or no non-click" for name in unmeasured]}


def _importance(score, table: pa.Table, rows: int, seed: int) -> dict | None:
    """Production's permutation importance on a day's exploration impressions; None when they
    hold only one label (a small day), where AUC, and so importance, is undefined."""
    labels = table["label_click"].to_numpy(zero_copy_only=False)
    if labels.size == 0 or labels.min() == labels.max():
        return None
    return permutation_importance(score, table, "label_click", FEATURES, rows=rows, seed=seed)


def _alert(alert) -> dict:
    keep = ("level", "metric", "slice", "slice_field", "slice_value", "feature", "task", "value", "threshold", "message")
    out = {k: getattr(alert, k) for k in keep}
    out["value"] = float(out["value"]) if np.isfinite(out["value"]) else None
    return out
