"""Monitoring by slice and over time: a day of served impressions against a reference day,
per value of chosen slice fields (`slot`, `device_os`, `ad_format`, ...) and for all traffic.

Input: two tables of served rows, the reference (the traffic the model was validated on, or
an earlier healthy day) and the current day, each a pyarrow Table or a mapping of column
name → numpy array: the feature columns, `prob_<task>` (the served predicted probability) and
the task's label column (`tasks`, by default {"ctr": "click"}, labels over every row).
Missing values: null in a pyarrow column, masked in a numpy masked array, NaN in a float
column (as `drift.raw_missing_rate` counts raw rows); with `zero_is_missing=True` (columns
already encoded, where id 0 is missing or unknown) a categorical 0 as well (as
`drift.missing_rate`). Float columns are dense features, every other type categorical.

Per slice (each value of each slice field, and all traffic: field and value "all"):
  * rows on both sides;
  * per feature: missing rate on both sides and its increase (absolute), PSI against the
    reference's same slice (`drift.psi` over `drift.CategoryBins` / `drift.QuantileBins`
    fitted on that reference slice; categorical values are given ids shared by both sides,
    0 for missing, so PSI's id-0 bin is the missing bin);
  * per task, on the rows whose prediction and label are both present: calibration Σp / Σy
    compared with 1.0, with `check.calibration_off`'s noise guard (a two-sided z-test of Σy
    against Σp, variance Σp(1 − p)); the reference's calibration for information; AUC on both
    sides and its relative drop (reference − current) / reference, with a one-sided
    Hanley–McNeil z-test of the drop.

Alert rules (`AlertRule`, YAML-able; `load_rules`) say which measure crosses what:
  * calibration: |Σp / Σy − 1| > above, and the z-test's p < max_pvalue;
  * missing_rate_increase: current − reference missing rate > above (absolute: 0.05 is 5 points),
    and a one-sided pooled two-proportion z-test of the rise gives p < max_pvalue;
  * psi: PSI ≥ above (as `drift.psi_status`);
  * auc_drop: relative AUC drop > above, and the Hanley–McNeil p < max_pvalue;
  * importance_change: |Δ permutation importance| > above (`importance_drift`, all traffic).
A rule applies to a slice with at least `min_rows` rows on each side it reads (labelled rows
for the task measures). Defaults (`DEFAULT_RULES`), the house rules: calibration off by more
than 10% → P1 (1,000 rows); a feature's missing rate up by more than 5 points → P1 (on one
slice: a feature pipeline failed for that traffic; 200 rows, as the test guards the noise);
PSI ≥ 0.25 → P2; AUC relative drop > 1% → P2; permutation importance changed by more than
0.05 (AUC) → P2 (on 2,000 rows one estimate varies by about 0.015–0.02 from sample to
sample, so a smaller change is mostly noise).

Localisation (a rule's `localize`, on by default): a problem on one slice shows, diluted, in
every slice of the other fields and in all traffic (a feature nulled on slot 3 raises the
missing rate of every device_os). So a crossing slice raises an alert when the rest of its
field's traffic does not cross the threshold (by size: a smaller rest has less power, so
its z-test is not asked), or when the slice is worse than that rest by more than the
threshold (for calibration: its ratio differs from the rest's by more than `above`); all
traffic raises one when no slice did, or when the traffic outside the slices that did
still crosses the threshold. Of slices of different fields that pass, the worst (on a tie the
largest) is kept first, and a slice whose rows outside the kept slices of other fields no
longer cross is explained by them (a slot made mostly of a failing device_os's rows).
Crossings explained either way are kept in `SliceReport.suppressed`, each with why; every
measure of every slice is in `SliceReport.slices` either way.

Over time: `trend` turns per-day reports into per-(slice, metric) series, and `plot_trends`
draws them (matplotlib, Agg) into a PNG or an SVG string.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field

from recsmith.errors import ConfigError, DataError
from recsmith.metrics.auc import auc
from recsmith.monitor import drift
from recsmith.metrics.ab import calibration_test, compare_proportions
from recsmith.monitor.check import CALIBRATION_ALPHA, CALIBRATION_ERROR_P1, LEVELS, calibration_ratio

ALL = "all"  # the slice field and value of all traffic
DEFAULT_TASKS = {"ctr": "click"}  # task → label column; predictions in prob_<task>
Table = pa.Table | Mapping[str, np.ndarray]
Metric = Literal["calibration", "missing_rate_increase", "psi", "auc_drop", "importance_change"]
FEATURE_METRICS = ("missing_rate_increase", "psi")
TASK_METRICS = ("calibration", "auc_drop")
TESTED_METRICS = ("calibration", "auc_drop", "missing_rate_increase")  # behind a noise test (max_pvalue)


# ------------------------------------------------------------------------ rules
class AlertRule(BaseModel):
    """One alert rule: `metric` crossing `above` on a slice raises an alert at `level`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    metric: Metric
    above: float = Field(ge=0)  # the threshold (calibration: |ratio − 1|; PSI alerts at ≥, the others above)
    level: Literal["P1", "P2"]
    min_rows: int = Field(default=1000, ge=0)  # rows each side needs (labelled rows for task measures)
    max_pvalue: Optional[float] = Field(default=CALIBRATION_ALPHA, gt=0, le=1)  # TESTED_METRICS; None: no test
    localize: bool = True  # name the slice a problem comes from, not every slice it leaks into

    def crosses(self, value: float | None) -> bool:
        if value is None or math.isnan(value):
            return False
        return value >= self.above if self.metric == "psi" else value > self.above

    def describe(self) -> str:
        sign = "≥" if self.metric == "psi" else ">"
        test = f", p < {self.max_pvalue}" if self.max_pvalue is not None and self.metric in TESTED_METRICS else ""
        rows = f", min_rows {self.min_rows}" if self.metric != "importance_change" else ""
        return f"{self.metric} {sign} {self.above:g} → {self.level}{rows}{test}"


class AlertRules(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    rules: list[AlertRule]


DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule(metric="calibration", above=CALIBRATION_ERROR_P1, level="P1", min_rows=1000),
    AlertRule(metric="missing_rate_increase", above=0.05, level="P1", min_rows=200),
    AlertRule(metric="psi", above=drift.PSI_MAJOR, level="P2", min_rows=2000),
    AlertRule(metric="auc_drop", above=drift.AUC_DROP_P1, level="P2", min_rows=5000),
    AlertRule(metric="importance_change", above=0.05, level="P2"),
)


def load_rules(source: str | Mapping | Sequence, where: str = "") -> list[AlertRule]:
    """Rules from YAML text (or its parsed value): `rules: [{metric: ..., above: ..., level: ...}]`
    or the bare list. A wrong rule is a ConfigError naming its key (`rules.0.metric: ...`)."""
    from recsmith.config.loader import validate_model

    if isinstance(source, str):
        try:
            source = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where or 'alert rules'}: invalid YAML: {exc}") from None
    if isinstance(source, Sequence) and not isinstance(source, str):
        source = {"rules": list(source)}
    return validate_model(AlertRules, source, where=where).rules


def _rules(rules) -> list[AlertRule]:
    if rules is None:
        return list(DEFAULT_RULES)
    if isinstance(rules, AlertRules):
        return list(rules.rules)
    return [r if isinstance(r, AlertRule) else AlertRule.model_validate(r) for r in rules]


# ------------------------------------------------------------------------ results
@dataclass
class FeatureStats:
    feature: str
    kind: str  # categorical | dense
    missing_reference: float | None  # None: no reference rows in the slice
    missing_current: float | None
    missing_increase: float | None  # current − reference (absolute)
    missing_increase_pvalue: float | None  # one-sided pooled two-proportion z-test of the rise
    psi: float | None  # against the reference's same slice


@dataclass
class TaskStats:
    task: str
    rows: int  # current rows with a prediction and a label
    rows_reference: int
    expected_positives: float  # Σp
    observed_positives: float  # Σy
    calibration: float | None  # Σp / Σy (inf when Σy = 0 < Σp)
    calibration_pvalue: float | None  # two-sided z-test of Σy against Σp
    calibration_reference: float | None
    auc: float | None
    auc_reference: float | None
    auc_drop: float | None  # (reference − current) / reference
    auc_drop_pvalue: float | None  # one-sided Hanley–McNeil z-test of the drop


@dataclass
class SliceStats:
    field: str  # a slice field, or "all"
    value: Any  # its value (None: the field is missing), or "all"
    rows: int
    rows_reference: int
    features: dict[str, FeatureStats]
    tasks: dict[str, TaskStats]

    @property
    def label(self) -> str:
        return "all traffic" if self.field == ALL else f"{self.field}={self.value}"


@dataclass
class Alert:
    level: str  # P1 | P2
    metric: str
    slice: str  # "all" (all traffic) or "field=value"
    slice_field: str
    slice_value: Any
    feature: str | None
    task: str | None
    value: float  # the measured value the rule compares (calibration: |ratio − 1|)
    threshold: float
    rule: str  # AlertRule.describe()
    message: str
    day: str | None = None
    why_not_raised: str | None = None  # only for SliceReport.suppressed


@dataclass
class SliceReport:
    day: str | None
    slice_fields: list[str]
    features: list[str]
    tasks: list[str]
    rows_reference: int
    rows_current: int
    slices: list[SliceStats]
    alerts: list[Alert]  # raised, worst first
    suppressed: list[Alert]  # crossings explained by another slice's alert (localisation)
    rules: list[dict]
    notes: list[str] = field(default_factory=list)

    @property
    def level(self) -> str:
        """The worst level of the alerts: P1, P2 or OK."""
        return max((a.level for a in self.alerts), key=LEVELS.index, default="OK")

    def slice(self, field_name: str, value: Any = ALL) -> SliceStats:
        for s in self.slices:
            if s.field == field_name and s.value == value:
                return s
        raise KeyError(f"no slice {field_name}={value}")

    def to_dict(self) -> dict:
        """Every number, JSON-able (NaN and infinities as null)."""
        return _jsonable({**asdict(self), "level": self.level})


# ------------------------------------------------------------------------ reading
@dataclass
class _Side:
    rows: int
    features: dict[str, np.ndarray]  # categorical: int64 ids shared with the other side, 0 missing; dense: float64, NaN missing
    slices: dict[str, tuple[np.ndarray, np.ndarray]]  # field → (values, missing)
    tasks: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # task → (probs, labels, usable rows)


def _num_rows(table: Table) -> int:
    if isinstance(table, pa.Table):
        return table.num_rows
    return len(next(iter(table.values()))) if table else 0


def _has(table: Table, name: str) -> bool:
    return name in (table.column_names if isinstance(table, pa.Table) else table)


def _read(table: Table, name: str, side: str, zero_is_missing: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """(values, missing mask, kind) of a column; values at missing rows are placeholders."""
    if not _has(table, name):
        raise DataError(f"the {side} table has no column '{name}'")
    if isinstance(table, pa.Table):
        column = table.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        missing = np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool)
        if pa.types.is_floating(column.type):
            values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        elif pa.types.is_integer(column.type) or pa.types.is_boolean(column.type):
            values = column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        else:
            values = column.cast(pa.string()).fill_null("").to_numpy(zero_copy_only=False)
    else:
        array = table[name]
        missing = np.ma.getmaskarray(array) if np.ma.isMaskedArray(array) else np.zeros(len(array), bool)
        values = np.asarray(np.ma.getdata(array))
        if values.dtype == object:
            missing = missing | np.array([v is None for v in values], bool)
            values = np.where(missing, "", values).astype(str)
        missing = missing.copy()
    kind = "dense" if values.dtype.kind == "f" else "categorical"
    if kind == "dense":
        values = values.astype(np.float64)
        missing |= np.isnan(values)
    elif zero_is_missing and values.dtype.kind in "iub":
        missing |= values == 0
    return values, missing, kind


def _encode(values: np.ndarray, missing: np.ndarray, known: np.ndarray, kind: str) -> np.ndarray:
    if kind == "dense":
        return np.where(missing, np.nan, values)
    ids = np.searchsorted(known, values).astype(np.int64) + 1 if known.size else np.ones(values.size, np.int64)
    ids[missing] = 0
    return ids


def _sides(reference: Table, current: Table, slice_fields: Sequence[str], features: Sequence[str],
           tasks: Mapping[str, str], zero_is_missing: bool, notes: list[str]) -> tuple[_Side, _Side, dict[str, str]]:
    sides = {"reference": (reference, _Side(_num_rows(reference), {}, {}, {})),
             "current": (current, _Side(_num_rows(current), {}, {}, {}))}
    kinds: dict[str, str] = {}
    for name in features:
        read = {s: _read(t, name, s, zero_is_missing) for s, (t, _) in sides.items()}
        kind = kinds[name] = read["reference"][2]
        if read["current"][2] != kind:
            raise DataError(f"feature '{name}' is {kind} in the reference table but {read['current'][2]} in the current one")
        known = np.unique(np.concatenate([v[~m] for v, m, _ in read.values()])) if kind == "categorical" else np.empty(0)
        for s, (_, side) in sides.items():
            values, missing, _ = read[s]
            side.features[name] = _encode(values, missing, known, kind)
    for name in slice_fields:
        for s, (table, side) in sides.items():
            values, missing, _ = _read(table, name, s, zero_is_missing)
            side.slices[name] = (values, missing)
    for task, label in tasks.items():
        for s, (table, side) in sides.items():
            lacking = [c for c in (f"prob_{task}", label) if not _has(table, c)]
            if lacking:
                notes.append(f"{task}: the {s} table lacks {', '.join(lacking)}: its {s} calibration and AUC are not measured")
                continue
            probs, p_missing, _ = _read(table, f"prob_{task}", s)
            labels, y_missing, _ = _read(table, label, s)
            usable = ~(p_missing | y_missing)
            if (~usable).any():
                notes.append(f"{task}: {int((~usable).sum()):,} {s} rows lack a prediction or a label (not joined yet?): "
                             "left out of its calibration and AUC")
            side.tasks[task] = (probs.astype(np.float64), labels.astype(np.float64), usable)
    return sides["reference"][1], sides["current"][1], kinds


# ------------------------------------------------------------------------ measures
def hanley_mcneil_se(value: float, positives: int, negatives: int) -> float:
    """Standard error of an AUC (Hanley & McNeil, 1982)."""
    q1, q2 = value / (2.0 - value), 2.0 * value * value / (1.0 + value)
    variance = (value * (1 - value) + (positives - 1) * (q1 - value * value)
                + (negatives - 1) * (q2 - value * value)) / (positives * negatives)
    return math.sqrt(max(variance, 0.0))


def auc_drop_pvalue(reference: float, ref_pos: int, ref_neg: int, current: float, cur_pos: int, cur_neg: int) -> float:
    """One-sided p-value of the drop reference → current (independent samples, Hanley–McNeil SEs)."""
    se = math.hypot(hanley_mcneil_se(reference, ref_pos, ref_neg), hanley_mcneil_se(current, cur_pos, cur_neg))
    if se == 0:
        return 0.0 if reference > current else 1.0
    return 0.5 * math.erfc((reference - current) / se / math.sqrt(2.0))


def _auc(probs: np.ndarray, labels: np.ndarray) -> tuple[float | None, int, int]:
    positives = int((labels > 0).sum())
    value = auc(labels, probs) if probs.size else float("nan")
    return (value if np.isfinite(value) else None), positives, int(probs.size - positives)


class _Measure:
    """The measures of any pair of row masks (reference, current)."""

    def __init__(self, ref: _Side, cur: _Side, kinds: dict[str, str], top_k: int):
        self.ref, self.cur, self.kinds, self.top_k = ref, cur, kinds, top_k

    def stats(self, field_name: str, value: Any, r: np.ndarray, c: np.ndarray) -> SliceStats:
        features = {name: self._feature(name, r, c) for name in self.kinds}
        tasks = {task: self._task(task, r, c) for task in dict.fromkeys([*self.cur.tasks, *self.ref.tasks])}
        return SliceStats(field_name, value, int(c.sum()), int(r.sum()), features, tasks)

    def _feature(self, name: str, r: np.ndarray, c: np.ndarray) -> FeatureStats:
        kind = self.kinds[name]
        categorical = kind == "categorical"
        ref, cur = self.ref.features[name][r], self.cur.features[name][c]
        miss_r = drift.missing_rate(ref, categorical) if ref.size else None
        miss_c = drift.missing_rate(cur, categorical) if cur.size else None
        psi = None
        if ref.size and cur.size:
            bins = drift.CategoryBins.fit(ref, self.top_k) if categorical else drift.QuantileBins.fit(ref)
            psi = drift.psi(ref, cur, bins)
        increase = pvalue = None
        if miss_c is not None and miss_r is not None:
            increase = miss_c - miss_r
            rise = compare_proportions(round(miss_r * ref.size), ref.size, round(miss_c * cur.size), cur.size)
            pvalue = 0.5 * math.erfc(rise.z / math.sqrt(2.0))  # one-sided: P(Z ≥ z)
        return FeatureStats(name, kind, miss_r, miss_c, increase, pvalue, psi)

    def _task(self, task: str, r: np.ndarray, c: np.ndarray) -> TaskStats:
        empty = (np.empty(0), np.empty(0))
        p_c, y_c = self._rows(self.cur, task, c) if task in self.cur.tasks else empty
        p_r, y_r = self._rows(self.ref, task, r) if task in self.ref.tasks else empty
        test = calibration_test(p_c, y_c)
        auc_c, pos_c, neg_c = _auc(p_c, y_c)
        auc_r, pos_r, neg_r = _auc(p_r, y_r)
        drop = pvalue = None
        if auc_c is not None and auc_r is not None and auc_r > 0:
            drop = drift.relative_drop(auc_r, auc_c)
            pvalue = auc_drop_pvalue(auc_r, pos_r, neg_r, auc_c, pos_c, neg_c)
        return TaskStats(
            task=task, rows=int(p_c.size), rows_reference=int(p_r.size), expected_positives=test.expected,
            observed_positives=test.observed, calibration=calibration_ratio(test) if p_c.size else None,
            calibration_pvalue=test.p_value if p_c.size else None,
            calibration_reference=calibration_ratio(calibration_test(p_r, y_r)) if p_r.size else None,
            auc=auc_c, auc_reference=auc_r, auc_drop=drop, auc_drop_pvalue=pvalue)

    @staticmethod
    def _rows(side: _Side, task: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, labels, usable = side.tasks[task]
        keep = rows & usable
        return probs[keep], labels[keep]


# ------------------------------------------------------------------------ rule evaluation
def _keys(rule: AlertRule, stats: SliceStats) -> list[str]:
    return list(stats.features) if rule.metric in FEATURE_METRICS else list(stats.tasks)


def _value(rule: AlertRule, stats: SliceStats, key: str) -> float | None:
    """The measure the rule compares, None where it does not apply (too few rows, no data)."""
    if rule.metric in FEATURE_METRICS:
        f = stats.features[key]
        if min(stats.rows, stats.rows_reference) < rule.min_rows:
            return None
        return f.missing_increase if rule.metric == "missing_rate_increase" else f.psi
    t = stats.tasks[key]
    if rule.metric == "calibration":
        if t.rows < rule.min_rows or t.calibration is None:
            return None
        return abs(t.calibration - 1.0)
    if min(t.rows, t.rows_reference) < rule.min_rows:
        return None
    return t.auc_drop


def _significant(rule: AlertRule, stats: SliceStats, key: str) -> bool:
    if rule.max_pvalue is None or rule.metric not in TESTED_METRICS:
        return True
    if rule.metric == "missing_rate_increase":
        pvalue = stats.features[key].missing_increase_pvalue
    else:
        t = stats.tasks[key]
        pvalue = t.calibration_pvalue if rule.metric == "calibration" else t.auc_drop_pvalue
    return pvalue is not None and pvalue < rule.max_pvalue


def _crosses(rule: AlertRule, stats: SliceStats, key: str) -> bool:
    return rule.crosses(_value(rule, stats, key)) and _significant(rule, stats, key)


def _too_large(rule: AlertRule, stats: SliceStats, key: str) -> bool:
    """Whether the rest of the traffic crosses the threshold, significant or not: a rest with
    fewer rows has less power, and its failing the test does not make a problem local."""
    return rule.crosses(_value(rule, stats, key))


def _worse(rule: AlertRule, stats: SliceStats, rest: SliceStats, key: str) -> bool:
    """Whether the slice is worse than the rest of the traffic by more than the threshold."""
    if rule.metric == "calibration":
        mine, theirs = stats.tasks[key].calibration, rest.tasks[key].calibration
        if mine is None or theirs is None or not 0 < theirs < math.inf:
            return False
        return abs(mine / theirs - 1.0) > rule.above
    mine, theirs = _value(rule, stats, key), _value(rule, rest, key)
    return mine is not None and theirs is not None and mine - theirs > rule.above


def _describe(rule: AlertRule, stats: SliceStats, key: str) -> str:
    """What was measured, in words."""
    if rule.metric in FEATURE_METRICS:
        f = stats.features[key]
        if rule.metric == "psi":
            return f"feature {key}: PSI {f.psi:.3f} against the reference's same slice ≥ {rule.above:g}"
        return (f"feature {key}: missing rate {100 * f.missing_reference:.1f}% → {100 * f.missing_current:.1f}% "
                f"({100 * f.missing_increase:+.1f} points) > {100 * rule.above:g} points")
    t = stats.tasks[key]
    if rule.metric == "calibration":
        return (f"task {key}: calibration (predicted / observed) {t.calibration:.3f}, off 1.0 by "
                f"{100 * (t.calibration - 1):+.1f}% > {100 * rule.above:g}% ({t.expected_positives:,.1f} positives "
                f"expected, {t.observed_positives:,.0f} observed over {t.rows:,} rows; z-test p = "
                f"{t.calibration_pvalue:.1e})")
    return (f"task {key}: AUC {t.auc_reference:.4f} → {t.auc:.4f}, a relative drop of {100 * t.auc_drop:.2f}% > "
            f"{100 * rule.above:g}% (Hanley–McNeil p = {t.auc_drop_pvalue:.1e})")


def _when(day: str | None) -> str:
    return "" if day is None else f"day {day} " if day.isdigit() else f"{day} "


def _alert(rule: AlertRule, stats: SliceStats, key: str, day: str | None, why_not: str | None = None) -> Alert:
    when = _when(day)
    return Alert(level=rule.level, metric=rule.metric, slice=_slice_key(stats), slice_field=stats.field,
                 slice_value=stats.value,
                 feature=key if rule.metric in FEATURE_METRICS else None,
                 task=key if rule.metric in TASK_METRICS else None, value=float(_value(rule, stats, key)),
                 threshold=rule.above, rule=rule.describe(),
                 message=f"{rule.level} {when}{stats.label}: {_describe(rule, stats, key)} [rule {rule.describe()}]",
                 day=day, why_not_raised=why_not)


def _evaluate(rules: list[AlertRule], slices: list[SliceStats], masks: dict, measure: _Measure,
              day: str | None) -> tuple[list[Alert], list[Alert]]:
    raised: list[Alert] = []
    suppressed: list[Alert] = []
    whole = next(s for s in slices if s.field == ALL)
    parts = [s for s in slices if s.field != ALL]
    rests: dict[tuple, SliceStats] = {}

    def rest_of(s: SliceStats) -> SliceStats:
        key = (s.field, s.value)
        if key not in rests:
            r, c = masks[key]
            rests[key] = measure.stats(s.field, f"not {s.value}", ~r, ~c)
        return rests[key]

    for rule in (r for r in rules if r.metric != "importance_change"):
        for key in _keys(rule, whole):
            named: list[SliceStats] = []
            for s in parts:
                if not _crosses(rule, s, key):
                    continue
                if not rule.localize:
                    named.append(s)
                    continue
                rest = rest_of(s)
                if not _too_large(rule, rest, key) or _worse(rule, s, rest, key):
                    named.append(s)
                else:
                    suppressed.append(_alert(rule, s, key, day, f"the rest of {s.field} crosses the rule as well "
                                                                f"(value {_value(rule, rest, key):.4g}), "
                                                                f"and {s.label} is not worse by more than {rule.above:g}"))
            named = _explain_away(rule, key, named, masks, measure, day, suppressed)
            raised += [_alert(rule, s, key, day) for s in named]
            if not _crosses(rule, whole, key):
                continue
            if named and rule.localize:
                r = ~np.logical_or.reduce([masks[(s.field, s.value)][0] for s in named])
                c = ~np.logical_or.reduce([masks[(s.field, s.value)][1] for s in named])
                outside = measure.stats(ALL, "outside the alerted slices", r, c)
                if not _too_large(rule, outside, key):
                    suppressed.append(_alert(rule, whole, key, day, "explained by the alert on "
                                             + ", ".join(s.label for s in named)))
                    continue
            raised.append(_alert(rule, whole, key, day))
    return _worst(raised), suppressed


def _explain_away(rule: AlertRule, key: str, named: list[SliceStats], masks: dict, measure: _Measure,
                  day: str | None, suppressed: list[Alert]) -> list[SliceStats]:
    """Of slices of different fields that all cross, keep the ones the others do not explain:
    in order of the measure (worst first; on a tie, the larger slice first), a slice whose rows
    outside the slices of other fields already kept no longer cross is explained by them (a
    slot made mostly of the failing device_os's traffic is not a second problem)."""
    if not rule.localize or len({s.field for s in named}) < 2:
        return named
    kept: list[SliceStats] = []
    for s in sorted(named, key=lambda s: (-_value(rule, s, key), -s.rows)):
        others = [k for k in kept if k.field != s.field]
        if others:
            r, c = masks[(s.field, s.value)]
            r = r & ~np.logical_or.reduce([masks[(k.field, k.value)][0] for k in others])
            c = c & ~np.logical_or.reduce([masks[(k.field, k.value)][1] for k in others])
            if not _too_large(rule, measure.stats(s.field, s.value, r, c), key):
                suppressed.append(_alert(rule, s, key, day, "explained by the alert on "
                                         + ", ".join(k.label for k in others)))
                continue
        kept.append(s)
    return [s for s in named if s in kept]


def _worst(alerts: list[Alert]) -> list[Alert]:
    """One alert per (slice, feature or task, metric): the highest level; worst first."""
    best: dict[tuple, Alert] = {}
    for a in alerts:
        key = (a.slice_field, repr(a.slice_value), a.feature, a.task, a.metric)
        if key not in best or LEVELS.index(a.level) > LEVELS.index(best[key].level):
            best[key] = a
    return sorted(best.values(), key=lambda a: -LEVELS.index(a.level))


# ------------------------------------------------------------------------ entry point
def _day(day) -> str | None:
    """A day as text: ISO for a date, as given otherwise (an int day n reads "day n" in messages)."""
    return None if day is None else day.isoformat() if isinstance(day, date) else str(day)


def _slice_values(ref: tuple[np.ndarray, np.ndarray], cur: tuple[np.ndarray, np.ndarray]) -> list:
    present = np.unique(np.concatenate([values[~missing] for values, missing in (ref, cur)]))
    out = [v.item() if isinstance(v, np.generic) else v for v in present]
    return out + ([None] if ref[1].any() or cur[1].any() else [])


def monitor_slices(reference: Table, current: Table, slice_fields: Sequence[str], features: Sequence[str],
                   rules: Sequence[AlertRule] | AlertRules | None = None, day: str | int | date | None = None,
                   tasks: Mapping[str, str] | None = None, zero_is_missing: bool = False,
                   top_k: int = drift.TOP_K_CATEGORIES) -> SliceReport:
    """Measure `current` against `reference` for all traffic and each value of each slice
    field, and apply the alert rules (default `DEFAULT_RULES`), as the module docstring says."""
    slice_fields, features = list(slice_fields), list(features)
    if ALL in slice_fields:
        raise ValueError(f"'{ALL}' names all traffic and cannot be a slice field")
    tasks = dict(DEFAULT_TASKS if tasks is None else tasks)
    rules, day, notes = _rules(rules), _day(day), []
    ref, cur, kinds = _sides(reference, current, slice_fields, features, tasks, zero_is_missing, notes)
    measure = _Measure(ref, cur, kinds, top_k)
    everything = (np.ones(ref.rows, bool), np.ones(cur.rows, bool))
    masks: dict[tuple, tuple[np.ndarray, np.ndarray]] = {(ALL, ALL): everything}
    slices = [measure.stats(ALL, ALL, *everything)]
    for name in slice_fields:
        for value in _slice_values(ref.slices[name], cur.slices[name]):
            pair = []
            for side in (ref, cur):
                values, missing = side.slices[name]
                pair.append(missing.copy() if value is None else ~missing & (values == value))
            masks[(name, value)] = (pair[0], pair[1])
            stats = measure.stats(name, value, pair[0], pair[1])
            if stats.rows_reference == 0:
                notes.append(f"{stats.label}: not in the reference table, so only its calibration is measured")
            elif stats.rows == 0:
                notes.append(f"{stats.label}: no current rows (in the reference: {stats.rows_reference:,})")
            slices.append(stats)
    alerts, suppressed = _evaluate(rules, slices, masks, measure, day)
    return SliceReport(day=day, slice_fields=slice_fields, features=features, tasks=list(tasks),
                       rows_reference=ref.rows, rows_current=cur.rows, slices=slices, alerts=alerts,
                       suppressed=suppressed, rules=[r.model_dump() for r in rules], notes=notes)


# ------------------------------------------------------------------------ importance
def _take(table: Table, rows: np.ndarray) -> Table:
    if isinstance(table, pa.Table):
        return table.take(rows)
    return {name: np.asarray(values)[rows] for name, values in table.items()}


def _with_column(table: Table, name: str, order: np.ndarray) -> Table:
    if isinstance(table, pa.Table):
        return table.set_column(table.schema.get_field_index(name), name, table.column(name).take(order))
    return {**table, name: np.asarray(table[name])[order]}


def permutation_importance(score_fn: Callable[[Table], np.ndarray], table: Table, labels, features: Sequence[str],
                           rows: int = 2000, seed: int = 0) -> dict[str, float]:
    """Each feature's permutation importance: AUC(original) − AUC(that column permuted), on a
    seeded uniform sample of at most `rows` rows; `score_fn` maps a table to probabilities,
    `labels` is an array aligned with `table` or the name of its label column. One seeded
    permutation of the sample is applied to one column at a time, so a feature the score
    ignores gets exactly 0."""
    n = _num_rows(table)
    y = np.asarray(_read(table, labels, "scored")[0] if isinstance(labels, str) else labels, np.float64).ravel()
    if y.size != n:
        raise ValueError(f"labels have {y.size} rows, the table {n}")
    for name in features:
        if not _has(table, name):
            raise DataError(f"the scored table has no column '{name}'")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, rows, replace=False)) if n > rows else np.arange(n)
    sample, y = _take(table, chosen), y[chosen]
    base = auc(y, np.asarray(score_fn(sample), np.float64))
    if not np.isfinite(base):
        raise ValueError("permutation importance needs positive and negative labels among the sampled rows")
    order = rng.permutation(chosen.size)
    return {name: float(base - auc(y, np.asarray(score_fn(_with_column(sample, name, order)), np.float64)))
            for name in features}


def importance_drift(reference_importance: Mapping[str, float], current_importance: Mapping[str, float],
                     rules: Sequence[AlertRule] | AlertRules | None = None, day: str | int | date | None = None) -> list[Alert]:
    """Alerts for features whose permutation importance changed (current − reference) by more
    than an `importance_change` rule's `above`, worst first (default: 0.05 AUC → P2)."""
    day = _day(day)
    alerts = []
    for rule in (r for r in _rules(rules) if r.metric == "importance_change"):
        for name in (n for n in reference_importance if n in current_importance):
            before, after = float(reference_importance[name]), float(current_importance[name])
            change = after - before
            if rule.crosses(abs(change)):
                when = _when(day)
                alerts.append(Alert(
                    level=rule.level, metric=rule.metric, slice=ALL, slice_field=ALL, slice_value=ALL, feature=name,
                    task=None,
                    value=change, threshold=rule.above, rule=rule.describe(), day=day,
                    message=(f"{rule.level} {when}all traffic: feature {name}: permutation importance (AUC drop) "
                             f"{before:.4f} → {after:.4f} ({change:+.4f}), changed by more than {rule.above:g} "
                             f"[rule {rule.describe()}]")))
    return _worst(alerts)


# ------------------------------------------------------------------------ over time
@dataclass
class Trend:
    days: list[str]
    series: dict[str, dict[str, list[float | None]]]  # slice label ("all", "slot=3") → metric → a value per day

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


def _slice_key(stats: SliceStats) -> str:
    return ALL if stats.field == ALL else f"{stats.field}={stats.value}"


def _metrics(stats: SliceStats) -> dict[str, float | None]:
    out: dict[str, float | None] = {"rows": float(stats.rows)}
    for name, f in stats.features.items():
        out[f"missing_rate.{name}"] = f.missing_current
        out[f"missing_rate_increase.{name}"] = f.missing_increase
        out[f"psi.{name}"] = f.psi
    for name, t in stats.tasks.items():
        out[f"calibration.{name}"] = t.calibration
        out[f"auc.{name}"] = t.auc
        out[f"auc_drop.{name}"] = t.auc_drop
    return out


def trend(reports: Sequence[SliceReport]) -> Trend:
    """Per-day series per (slice, metric), days in the reports' order: rows, and
    `missing_rate.<f>`, `missing_rate_increase.<f>`, `psi.<f>`, `calibration.<task>`,
    `auc.<task>`, `auc_drop.<task>`; None where a day lacks the slice or the value."""
    days = [r.day if r.day is not None else f"#{i}" for i, r in enumerate(reports)]
    series: dict[str, dict[str, list[float | None]]] = {}
    for i, report in enumerate(reports):
        for stats in report.slices:
            by_metric = series.setdefault(_slice_key(stats), {})
            for metric, value in _metrics(stats).items():
                line = by_metric.setdefault(metric, [None] * len(reports))
                line[i] = None if value is None or not math.isfinite(value) else float(value)
    return Trend(days, series)


def plot_trends(trends: Trend, metrics: Sequence[str], slices: Sequence[str] | None = None,
                path: str | Path | None = None, rules: Sequence[AlertRule] | None = None) -> Path | str:
    """One panel per metric (`trend` names), one line per slice (default: every slice that
    has the metric), the rules' thresholds dashed. Writes a PNG to `path`, or returns an SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds: dict[str, list[float]] = {}
    for rule in _rules(rules):
        lines = [1 - rule.above, 1 + rule.above] if rule.metric == "calibration" else [rule.above]
        thresholds.setdefault("calibration" if rule.metric == "calibration" else rule.metric, []).extend(lines)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.6), squeeze=False)
    x = np.arange(len(trends.days))
    for ax, metric in zip(axes[0], metrics):
        shown = [s for s in (slices or trends.series) if metric in trends.series.get(s, {})]
        for i, name in enumerate(shown):
            values = np.array([np.nan if v is None else v for v in trends.series[name][metric]], np.float64)
            ax.plot(x, values, marker="o", markersize=3, linewidth=1.2 if name != ALL else 2.0, label=name,
                    color="black" if name == ALL else plt.cm.tab10(i % 10))
        for level in thresholds.get(metric.split(".")[0], []):
            ax.axhline(level, color="#C44E52", linestyle="--", linewidth=1)
        ax.set_xticks(x, trends.days, rotation=30, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
        if shown:
            ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    return buffer.getvalue()


def _jsonable(value):
    """NaN and infinities as null, numpy scalars as Python ones."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
