"""`recsmith monitor`: drift and health of a current sample against a reference sample.

Reference: a split of a prepared dataset (by default `train`: what the model learnt from).
Current: a split of a prepared dataset (by default `test`), or raw rows, a Parquet file or a
directory of Parquet files such as a serving request log (raw feature columns as served,
`prob_<task>` columns, labels where joined). Raw rows are encoded with the reference
dataset's own encoders (`features.json` + `vocab.json`), the code path training and serving
share, so both sides are compared as the model sees them.

Each side is sampled to at most `max_rows` rows (seeded, uniform). The report holds:
  * per feature: PSI and its status, KS (dense) or JS divergence (categorical), missing rates;
  * per task, when predictions exist (a model given with `run_dir`, or a log's `prob_<task>`
    columns): mean predicted, observed rate and calibration (predicted / observed = Σp / Σy,
    over the rows where the task's label is observed) on both sides, the shift between them
    (for information), the PSI of the predicted probabilities;
  * with a model and labels on the current side: AUC and GAUC, and their relative drop
    against the run's test metrics (eval.json → test).
Level: P1 if any AUC / GAUC drops by more than 1%, any feature has major drift (PSI ≥ 0.25:
an input moved that far makes every prediction suspect before labels arrive to measure the
damage), or a task's calibration on the current side is off 1.0 by more than 10%
(|Σp / Σy − 1| > 0.10; the reference side's calibration is not the yardstick); P2 for
moderate drift, a drop of more than 0.5% or a missing rate up by more than 5 points; OK
otherwise.
Calibration noise guard (`calibration_off`): the calibration alert also needs the two-sided
test of the observed positives Σy against the expected Σp, variance Σp(1 − p) (the
predictions taken as true probabilities; recsmith.metrics.ab.calibration_test), at p < 0.01,
so a handful of rows whose ratio happens to be off does not page anyone.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from recsmith.data.schema import SCHEMA_FILE, SPLITS, VOCAB_FILE, DatasetSchema
from recsmith.errors import DataError
from recsmith.metrics import calibration
from recsmith.metrics.ab import CalibrationResult, calibration_test
from recsmith.metrics.funnel import funnel_metrics
from recsmith.monitor import drift

MAX_ROWS = 200_000
SCORE_BATCH_ROWS = 65_536
LEVELS = ("OK", "P2", "P1")  # in rising severity
CALIBRATION_ERROR_P1 = 0.10  # |Σp / Σy − 1| on the current side: P1 beyond (predicted / observed vs 1.0)
CALIBRATION_ALPHA = 0.01  # noise guard: two-sided z-test of Σy against Σp must give p below this


@dataclass
class Side:
    """One side's sample, encoded as the model sees it."""

    description: str
    rows_total: int
    sparse: np.ndarray  # [N, F] int32, the reference schema's sparse fields in order
    dense: np.ndarray  # [N, D] float32
    labels: dict[str, np.ndarray]  # label name -> [N] float64 (only labels the side has)
    probs: dict[str, np.ndarray]  # task -> [N] logged or model probabilities
    missing: dict[str, float | None]  # feature -> missing rate (None: not observable)
    invalid_rows: int = 0  # raw rows with a value the encoders reject (scored as unknown)

    @property
    def rows(self) -> int:
        return self.sparse.shape[0]


@dataclass
class FeatureDrift:
    name: str
    kind: str  # categorical | dense
    psi: float
    status: str  # ok | moderate | major
    ks_statistic: float | None
    ks_pvalue: float | None
    js_divergence: float | None
    missing_reference: float | None
    missing_current: float | None
    top_bins: list[dict]  # the bins contributing most to the PSI: bin, reference share, current share


@dataclass
class TaskHealth:
    task: str
    predictions_from: str  # model | log
    mean_predicted_reference: float | None
    mean_predicted_current: float | None
    observed_rate_reference: float | None  # where the task's label is observed
    observed_rate_current: float | None
    calibration_reference: float | None  # mean predicted / observed, where observed
    calibration_current: float | None
    calibration_shift: float | None  # current / reference − 1 (reference 1.0 when unknown), for information
    calibration_error: float | None  # current calibration − 1: the alert compares it with ±CALIBRATION_ERROR_P1
    expected_positives_current: float | None  # Σp over the current rows where the label is observed
    observed_positives_current: float | None  # Σy over those rows
    calibration_pvalue: float | None  # two-sided z-test of Σy against Σp (the noise guard)
    score_psi: float | None  # PSI of the predicted probabilities, reference vs current
    status: str  # OK | P1


@dataclass
class MetricDrop:
    metric: str  # auc_ctr, gauc_ctr, ...
    baseline: float  # the run's eval.json → test
    current: float
    relative_drop: float  # (baseline − current) / baseline
    level: str  # OK | P2 | P1


@dataclass
class MonitorReport:
    reference: str
    current: str
    model: str | None
    rows_reference: int
    rows_current: int
    rows_reference_total: int
    rows_current_total: int
    invalid_rows_current: int
    features: list[FeatureDrift]
    tasks: list[TaskHealth]
    metrics: dict[str, float]  # current-side metrics (model and labels)
    drops: list[MetricDrop]
    level: str  # OK | P2 | P1
    reasons: list[str]  # why the level is what it is
    notes: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=lambda: {
        "psi_moderate": drift.PSI_MODERATE, "psi_major": drift.PSI_MAJOR, "psi_epsilon": drift.PSI_EPSILON,
        "auc_drop_p2": drift.AUC_DROP_P2, "auc_drop_p1": drift.AUC_DROP_P1,
        "calibration_error_p1": CALIBRATION_ERROR_P1, "calibration_alpha": CALIBRATION_ALPHA,
        "missing_rate_rise_p2": drift.MISSING_RATE_RISE_P2})

    @property
    def drifted(self) -> list[FeatureDrift]:
        """Features with moderate or major drift, largest PSI first."""
        return sorted((f for f in self.features if f.status != drift.OK), key=lambda f: -f.psi)

    def to_json(self) -> dict:
        return _finite(asdict(self))


def monitor(reference: str | Path, current: str | Path, run_dir: str | Path | None = None,
            reference_split: str = "train", current_split: str = "test", max_rows: int = MAX_ROWS,
            seed: int = 0, top_k: int = drift.TOP_K_CATEGORIES) -> MonitorReport:
    """Compare `current` (a dataset dir's `current_split`, or raw-row Parquet) with the
    reference dataset's `reference_split`; with `run_dir` (a run dir or a bundle), also
    score both sides and measure the AUC / GAUC drop against the run's test metrics."""
    if max_rows < 1:
        raise DataError(f"--max-rows must be positive, got {max_rows}")
    reference, current = Path(reference), Path(current)
    schema = _reference_schema(reference)
    notes: list[str] = []
    ref = read_dataset_side(reference, reference_split, schema, max_rows, seed)
    if (current / SCHEMA_FILE).is_file():
        cur = read_dataset_side(current, current_split, schema, max_rows, seed + 1)
        _check_same_encoding(reference, current, notes)
    else:
        cur = read_log_side(current, reference, schema, max_rows, seed + 1, notes)
    if cur.rows == 0:
        raise DataError(f"{current}: no rows to compare")

    features = feature_drift(schema, ref, cur, top_k)
    metrics: dict[str, float] = {}
    drops: list[MetricDrop] = []
    sources = dict.fromkeys(cur.probs, "log")
    if run_dir is not None:
        scorer = load_scorer(run_dir)
        _check_model_fields(scorer, schema, run_dir)
        logged = cur.probs
        ref.probs, cur.probs = score(scorer, ref), score(scorer, cur)
        for task in sorted(set(logged) & set(cur.probs)):  # training/serving skew, if the log was this model's
            gap = float(np.abs(logged[task] - cur.probs[task]).max())
            notes.append(f"{task}: the log's prob_{task} and the model's re-scored probabilities differ by up to "
                         f"{gap:.2e} (the model's are used)")
        sources = dict.fromkeys(cur.probs, "model")
        metrics = side_metrics(schema, cur)
        drops = metric_drops(metrics, _baseline(Path(run_dir), notes))
        if not metrics:
            notes.append("the current side has no labels: AUC / GAUC and their drop are not computed")
    elif cur.probs:
        metrics = side_metrics(schema, cur)
        notes.append("no --model: predictions are the log's prob_<task> columns; no AUC baseline to compare with")
    else:
        notes.append("no --model and no prob_<task> columns: prediction and AUC checks skipped")
    tasks = task_health(schema, ref, cur, sources, notes)
    level, reasons = overall_level(features, tasks, drops)
    return MonitorReport(
        reference=ref.description, current=cur.description, model=str(run_dir) if run_dir else None,
        rows_reference=ref.rows, rows_current=cur.rows, rows_reference_total=ref.rows_total,
        rows_current_total=cur.rows_total, invalid_rows_current=cur.invalid_rows, features=features,
        tasks=tasks, metrics=metrics, drops=drops, level=level, reasons=reasons, notes=notes)


# --------------------------------------------------------------------- reading
def _reference_schema(reference: Path) -> DatasetSchema:
    if not reference.exists():
        raise DataError(f"--reference: {reference} not found")
    if not reference.is_dir() or not (reference / SCHEMA_FILE).is_file():
        raise DataError(f"--reference: not a prepared dataset (no {SCHEMA_FILE}): {reference}")
    return DatasetSchema.load(reference)


def _sampled(table: pa.Table, max_rows: int, seed: int) -> pa.Table:
    """A seeded uniform sample of at most `max_rows` rows, in their order."""
    if table.num_rows <= max_rows:
        return table
    return table.take(np.sort(np.random.default_rng(seed).choice(table.num_rows, max_rows, replace=False)))


def read_dataset_side(directory: Path, split: str, schema: DatasetSchema, max_rows: int, seed: int) -> Side:
    """A sample of a prepared dataset's split, with the reference schema's fields."""
    if split not in SPLITS:
        raise DataError(f"split '{split}' is not one of {', '.join(SPLITS)}")
    own = DatasetSchema.load(directory)
    lacking = [n for n in schema.sparse_names + schema.dense_names if n not in own.sparse_names + own.dense_names]
    if lacking:
        raise DataError(f"{directory}: lacks the reference's fields {', '.join(lacking)}")
    path = directory / f"{split}.parquet"
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    labels = [name for name in schema.labels if name in own.labels]
    try:
        table = pq.read_table(path, columns=schema.sparse_names + schema.dense_names + labels)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read the fields the schema names ({exc})") from None
    total = table.num_rows
    table = _sampled(table, max_rows, seed)
    sparse = _stack(table, schema.sparse_names, np.int32)
    dense = _stack(table, schema.dense_names, np.float32, nan_for_null=True)
    missing: dict[str, float | None] = {n: drift.missing_rate(sparse[:, j], categorical=True)
                                        for j, n in enumerate(schema.sparse_names)}
    for j, name in enumerate(schema.dense_names):
        # encoding fills missing dense values, so they are only visible if the file kept NaN
        rate = drift.missing_rate(dense[:, j], categorical=False)
        missing[name] = rate if rate > 0 else None
    return Side(f"{directory} [{split}]", total, sparse, dense,
                {n: _column(table, n, np.float64) for n in labels}, {}, missing)


def read_log_side(path: Path, reference: Path, schema: DatasetSchema, max_rows: int, seed: int,
                  notes: list[str]) -> Side:
    """A sample of raw rows (a Parquet file or a directory of them), encoded with the
    reference dataset's encoders; out-of-range values count as invalid and become unknown."""
    from recsmith.features.pipeline import FEATURES_FILE, FeaturePipeline

    if not path.exists():
        raise DataError(f"--current: {path} not found")
    if path.is_dir() and not any(path.glob("*.parquet")):
        raise DataError(f"--current: {path} is neither a prepared dataset (no {SCHEMA_FILE}) "
                        "nor a directory of Parquet files")
    if not (reference / FEATURES_FILE).is_file():
        raise DataError(f"{reference}: no {FEATURES_FILE}, so raw rows cannot be encoded; prepare the "
                        "reference dataset again with this version of recsmith")
    pipeline = FeaturePipeline.load(reference)
    try:
        source = pads.dataset(str(path), format="parquet")
        available = set(source.schema.names)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"--current: {path} is not readable Parquet ({exc})") from None
    needed = pipeline.features.columns
    lacking = [c for c in needed if c not in available]
    if lacking:
        raise DataError(f"--current: the rows in {path} lack the raw feature columns {', '.join(lacking)} "
                        f"(the reference's features.json reads {len(needed)} columns)")
    prob_columns = [f"prob_{t.name}" for t in schema.tasks if f"prob_{t.name}" in available]
    labels = [name for name in schema.labels if name in available]
    try:
        table = source.to_table(columns=needed + prob_columns + labels)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"--current: cannot read {path} ({exc})") from None
    total = table.num_rows
    table = _sampled(table, max_rows, seed)
    try:
        bad, _ = pipeline.invalid_rows(table)
        encoded = pipeline.transform(table)
    except DataError as exc:
        raise DataError(f"--current: {exc}") from None
    absent = [n for n in schema.sparse_names + schema.dense_names if n not in encoded]
    if absent:
        raise DataError(f"{reference}: {FEATURES_FILE} does not define the schema's fields {', '.join(absent)}")
    n = table.num_rows
    sparse = np.stack([encoded[name] for name in schema.sparse_names], axis=1) if schema.sparse \
        else np.zeros((n, 0), np.int32)
    sizes = np.asarray(schema.vocab_sizes)
    sparse[(sparse < 0) | (sparse >= sizes)] = 0  # a rejected value is scored as unknown
    dense = np.stack([encoded[name] for name in schema.dense_names], axis=1).astype(np.float32) if schema.dense \
        else np.zeros((n, 0), np.float32)
    specs = {f.name: f for f in pipeline.features.features}
    missing = {name: drift.raw_missing_rate(table.column(specs[name].column))
               for name in schema.sparse_names + schema.dense_names}
    label_values = {}
    for name in labels:
        if table.column(name).null_count:
            notes.append(f"label '{name}' has nulls in the log (not joined yet?): not used")
        else:
            label_values[name] = _column(table, name, np.float64)
    if bad.any():
        notes.append(f"{int(bad.sum()):,} current rows have values the encoders reject; they count as unknown (id 0)")
    return Side(f"{path} (raw rows)", total, sparse, dense, label_values,
                {c.removeprefix("prob_"): _probabilities(table, c, path) for c in prob_columns}, missing,
                int(bad.sum()))


def _probabilities(table: pa.Table, name: str, path) -> np.ndarray:
    values = _column(table, name, np.float64)
    bad = ~((values >= 0.0) & (values <= 1.0))  # NaN and null included
    if bad.any():
        raise DataError(f"{path}: column {name} holds {int(bad.sum()):,} value(s) that are no probability "
                        f"(first: {values[bad][0]!r}, row {int(np.flatnonzero(bad)[0])})")
    return values


def _column(table: pa.Table, name: str, dtype) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(dtype)


def _stack(table: pa.Table, names: list[str], dtype, nan_for_null: bool = False) -> np.ndarray:
    out = np.empty((table.num_rows, len(names)), dtype=dtype)
    for j, name in enumerate(names):
        column = table.column(name)
        if nan_for_null and column.null_count:
            column = column.cast(pa.float64()).fill_null(float("nan"))
        out[:, j] = column.to_numpy(zero_copy_only=False)
    return out


def _check_same_encoding(reference: Path, current: Path, notes: list[str]) -> None:
    """Two prepared datasets compare id by id only if the same encoders made them."""
    try:
        same = json.loads((reference / VOCAB_FILE).read_text()) == json.loads((current / VOCAB_FILE).read_text())
    except (OSError, ValueError):
        notes.append(f"could not compare {VOCAB_FILE} of the two datasets: ids are assumed to mean the same")
        return
    if not same:
        raise DataError(f"{current} was encoded with other vocabularies than {reference} ({VOCAB_FILE} "
                        "differs), so their ids mean different values; pass the current rows raw (Parquet) "
                        "to encode them with the reference's encoders")


# --------------------------------------------------------------------- drift
def feature_drift(schema: DatasetSchema, ref: Side, cur: Side, top_k: int = drift.TOP_K_CATEGORIES) -> list[FeatureDrift]:
    """PSI, KS (dense) or JS (categorical) and missing rates of every feature."""
    out = []
    columns = [(name, "categorical", ref.sparse[:, j], cur.sparse[:, j]) for j, name in enumerate(schema.sparse_names)]
    columns += [(name, "dense", ref.dense[:, j], cur.dense[:, j]) for j, name in enumerate(schema.dense_names)]
    for name, kind, r, c in columns:
        bins = drift.CategoryBins.fit(r, top_k) if kind == "categorical" else drift.QuantileBins.fit(r)
        value = drift.psi(r, c, bins)
        test = drift.ks(r, c) if kind == "dense" else None
        out.append(FeatureDrift(
            name=name, kind=kind, psi=value, status=drift.psi_status(value),
            ks_statistic=test.statistic if test else None, ks_pvalue=test.pvalue if test else None,
            js_divergence=drift.js_divergence(r, c, bins) if kind == "categorical" else None,
            missing_reference=ref.missing.get(name), missing_current=cur.missing.get(name),
            top_bins=_top_bins(r, c, bins)))
    return out


def _top_bins(reference: np.ndarray, current: np.ndarray, bins, count: int = 3) -> list[dict]:
    r = drift.bin_shares(reference, bins, drift.PSI_EPSILON)
    c = drift.bin_shares(current, bins, drift.PSI_EPSILON)
    terms = drift.psi_terms(r, c)
    raw_r, raw_c = drift.bin_shares(reference, bins), drift.bin_shares(current, bins)
    return [{"bin": bins.label(int(i)), "reference_share": float(raw_r[i]), "current_share": float(raw_c[i]),
             "psi_term": float(terms[i])} for i in np.argsort(-terms)[:count] if terms[i] > 0]


# ---------------------------------------------------------------- predictions
def load_scorer(run_dir: str | Path):
    """The model to score with: `recsmith.serve.scorer.Scorer` (a run dir or a bundle)."""
    from recsmith.serve.scorer import Scorer

    return Scorer.load(run_dir)


def _check_model_fields(scorer, schema: DatasetSchema, run_dir) -> None:
    model_schema = getattr(scorer, "schema", None)
    if model_schema is not None and (model_schema.sparse_names != schema.sparse_names
                                     or model_schema.vocab_sizes != schema.vocab_sizes
                                     or model_schema.dense_names != schema.dense_names):
        raise DataError(f"--model {run_dir} was trained on other fields or vocabularies than the reference "
                        "dataset; monitor against the dataset the model was trained on")


def score(scorer, side: Side) -> dict[str, np.ndarray]:
    """The scorer's probabilities for every row of a side, per head (in batches)."""
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, side.rows, SCORE_BATCH_ROWS):
        stop = start + SCORE_BATCH_ROWS
        for task, values in scorer.predict_encoded(side.sparse[start:stop], side.dense[start:stop]).items():
            chunks.setdefault(task, []).append(np.asarray(values, np.float64))
    return {task: np.concatenate(parts) for task, parts in chunks.items() if task in scorer.tasks}


def _scorable(schema: DatasetSchema, side: Side) -> dict[str, np.ndarray]:
    """The side's probabilities of heads whose label (and where it is observed) the side has."""
    specs = schema.task_specs
    return {t: p for t, p in side.probs.items() if t in specs and specs[t].label in side.labels
            and (specs[t].observed_when is None or specs[t].observed_when in side.labels)}


def side_metrics(schema: DatasetSchema, side: Side) -> dict[str, float]:
    """AUC, GAUC, logloss and calibration per target (funnel_metrics), where labels exist."""
    probs = _scorable(schema, side)
    if not probs:
        return {}
    columns = {}
    if schema.user_field is not None:
        columns["user"] = side.sparse[:, schema.sparse_names.index(schema.user_field)]
    return funnel_metrics(probs, side.labels, columns, schema.task_specs)


def _observed_rows(schema: DatasetSchema, side: Side, task: str) -> np.ndarray | None:
    """Mask of the rows where a task's label is observed; None when the side lacks the labels."""
    spec = schema.task_specs[task]
    if spec.label not in side.labels or (spec.observed_when and spec.observed_when not in side.labels):
        return None
    return side.labels[spec.observed_when] > 0 if spec.observed_when else np.ones(side.rows, bool)


def calibration_ratio(test: CalibrationResult) -> float:
    """Σp / Σy of a calibration test, inf when no positive was observed but some were expected."""
    if test.observed > 0:
        return test.ratio
    return math.inf if test.expected > 0 else math.nan


def calibration_off(test: CalibrationResult, limit: float = CALIBRATION_ERROR_P1,
                    alpha: float = CALIBRATION_ALPHA) -> bool:
    """The calibration alert: |Σp / Σy − 1| > limit and the test of Σy against Σp (recsmith.metrics.ab,
    variance Σp(1 − p), continuity-corrected) gives p < alpha. Never on NaN."""
    return bool(abs(calibration_ratio(test) - 1.0) > limit and test.p_value < alpha)


def task_health(schema: DatasetSchema, ref: Side, cur: Side, sources: dict[str, str], notes: list[str]) -> list[TaskHealth]:
    """Calibration per task: mean predicted / observed rate on both sides; the current side's
    is compared with 1.0 (P1 beyond ±10%, when the z-test says it is not noise)."""
    out = []
    for task in [t.name for t in schema.tasks if t.name in cur.probs]:
        label = schema.task_specs[task].label
        r_rows, c_rows = _observed_rows(schema, ref, task), _observed_rows(schema, cur, task)
        cal_r = calibration(ref.labels[label][r_rows], ref.probs[task][r_rows]) \
            if r_rows is not None and task in ref.probs else None
        test = calibration_test(cur.probs[task][c_rows], cur.labels[label][c_rows]) if c_rows is not None else None
        cal_c = calibration_ratio(test) if test is not None else None
        if c_rows is None:
            notes.append(f"{task}: the current side has no labels, so its calibration is not measured")
        shift = None
        if cal_c is not None and np.isfinite(cal_c):
            base = cal_r if cal_r is not None and np.isfinite(cal_r) else 1.0
            shift = cal_c / base - 1.0
        score_psi = None
        if task in ref.probs:
            score_psi = drift.psi(ref.probs[task], cur.probs[task], drift.QuantileBins.fit(ref.probs[task]))
        out.append(TaskHealth(
            task=task, predictions_from=sources.get(task, "log"),
            mean_predicted_reference=float(ref.probs[task].mean()) if task in ref.probs else None,
            mean_predicted_current=float(cur.probs[task].mean()),
            observed_rate_reference=_rate(ref.labels[label], r_rows) if r_rows is not None else None,
            observed_rate_current=_rate(cur.labels[label], c_rows) if c_rows is not None else None,
            calibration_reference=cal_r, calibration_current=cal_c, calibration_shift=shift,
            calibration_error=cal_c - 1.0 if test else None, expected_positives_current=test.expected if test else None,
            observed_positives_current=test.observed if test else None,
            calibration_pvalue=test.p_value if test else None, score_psi=score_psi,
            status="P1" if test is not None and calibration_off(test) else "OK"))
    return out


def _rate(labels: np.ndarray, rows: np.ndarray) -> float | None:
    return float(labels[rows].mean()) if rows.any() else None


def _baseline(run_dir: Path, notes: list[str]) -> dict[str, float]:
    path = run_dir / "eval.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        notes.append(f"{path}: not readable, so no AUC baseline: the drop is not computed")
        return {}
    return {k: v for k, v in (report.get("test") or {}).items() if isinstance(v, (int, float))}


def metric_drops(metrics: dict[str, float], baseline: dict[str, float]) -> list[MetricDrop]:
    """Relative AUC / GAUC drop of each metric present in both, with its level."""
    out = []
    for name, value in metrics.items():
        if not name.startswith(("auc_", "gauc_")) or name in ("auc_cvr_masked", "auc_cvr_entire"):
            continue
        base = baseline.get(name)
        if base is None or not np.isfinite(base) or not np.isfinite(value) or base <= 0:
            continue
        drop = drift.relative_drop(base, value)
        out.append(MetricDrop(name, float(base), float(value), drop, drift.drop_level(drop)))
    return out


# ------------------------------------------------------------------------ level
def overall_level(features: list[FeatureDrift], tasks: list[TaskHealth],
                  drops: list[MetricDrop]) -> tuple[str, list[str]]:
    """(OK | P2 | P1, the reasons), as the module docstring says."""
    reasons: list[tuple[str, str]] = []
    for d in drops:
        if d.level != "OK":
            reasons.append((d.level, f"{d.metric} dropped {100 * d.relative_drop:.2f}% ({d.baseline:.4f} → "
                                     f"{d.current:.4f})"))
    for f in sorted(features, key=lambda f: -f.psi):
        if f.status == drift.MAJOR:
            reasons.append(("P1", f"{f.name}: PSI {f.psi:.3f} ≥ {drift.PSI_MAJOR} (major drift)"))
        elif f.status == drift.MODERATE:
            reasons.append(("P2", f"{f.name}: PSI {f.psi:.3f} ≥ {drift.PSI_MODERATE} (moderate drift)"))
        if f.missing_current is not None and \
                f.missing_current - (f.missing_reference or 0.0) > drift.MISSING_RATE_RISE_P2:
            reasons.append(("P2", f"{f.name}: missing rate {f.missing_reference or 0.0:.3f} → {f.missing_current:.3f}"))
    for t in tasks:
        if t.status != "OK":
            reference = "n/a" if t.calibration_reference is None else f"{t.calibration_reference:.3f}"
            reasons.append((t.status, f"{t.task}: calibration (predicted / observed) {t.calibration_current:.3f}, off 1.0 "
                                      f"by {100 * t.calibration_error:+.1f}% (> ±{100 * CALIBRATION_ERROR_P1:.0f}%; "
                                      f"{t.expected_positives_current:.1f} positives expected, "
                                      f"{t.observed_positives_current:.0f} observed, z-test p = "
                                      f"{t.calibration_pvalue:.1e} < {CALIBRATION_ALPHA}); reference side {reference}"))
    level = max((lv for lv, _ in reasons), key=LEVELS.index, default="OK")
    return level, [f"{lv} {text}" for lv, text in sorted(reasons, key=lambda r: -LEVELS.index(r[0]))]


def _finite(value):
    """NaN and infinities as null, so monitor.json is strict JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
