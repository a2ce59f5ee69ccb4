"""Ali-CCP, the Alibaba Click and Conversion Prediction dataset of the ESMM paper
(`data.source: ali_ccp`, https://tianchi.aliyun.com/dataset/408).

The download needs a (free) Alibaba Tianchi login, so recsmith never fetches it: extract
the train and test archives into one folder and pass it as `data.path` (or put it at
$RECSMITH_DATA/ali-ccp). The folder holds four files, plain or gzipped (`.csv.gz`):

    sample_skeleton_train.csv   sample_skeleton_test.csv    one sample per line
    common_features_train.csv   common_features_test.csv    features shared by many samples

Raw format (no header lines, comma-separated):

    skeleton:  sample_id,click,conversion,common_feature_index,feature_num,feature_list
    common:    common_feature_index,feature_num,feature_list

`click` and `conversion` are 0/1, `common_feature_index` is an md5 (32 hex digits),
`feature_num` counts the features in `feature_list`. A feature list packs its features
separated by \\x01; each feature is `field_id \\x02 feature_id \\x03 value` (value a float).
A sample's features are its own list joined with the common features of its
`common_feature_index` (the user side), train skeleton with train common features, test
with test. Fields are named by their ids: user 101 (user id), 121, 122, 124-129 (profile),
109_14, 110_14, 127_14, 150_14 (14-day behaviour: categories, shops, brands, intentions);
item 205, 206, 207, 210, 216 (item, category, shop, intention, brand); crosses 508, 509,
702, 853; context 301 (position).

Rules:
- one categorical feature per field id, named `f<id>` (`f101`, `f109_14`), vocab-encoded
  on the training split (`data.options.min_count`, default 1); `data.options.fields`
  picks the field ids (default: all 23);
- a field that occurs several times in one sample (the multi-valued behaviour fields)
  keeps the occurrence with the largest value, the first of those in list order on a tie;
  a field in both the sample's own list and its common features takes the sample's own;
- labels click and conversion, tasks ctr and cvr (post-click); the test files are the test
  split and a random `data.options.valid_fraction` (default 0.1) of the train skeleton,
  by a hash of (file, line), is the valid split;
- malformed lines (wrong field count, invalid UTF-8, a non-integer sample_id, a
  non-numeric label, a label that is not 0/1, a conversion without a click, a
  common_feature_index that is not an md5, a feature_num that does not match the list, a
  packed feature without its \\x02/\\x03 separators or with a non-numeric value, a sample
  whose common_feature_index has no common features, a repeated common_feature_index)
  are logged to rejects.jsonl with file, line number and reason; common-features lines
  count there too. If a file's first line is malformed, the file is taken to be in the
  wrong format and preparing stops with one error.

Memory: every file is streamed in blocks of BLOCK_BYTES (a block and its parsed columns
take ~150 MB at the default). The common features of the selected fields are held in
memory for both splits, built in one streamed pass over each file: a 16-byte key plus an
Arrow string (id bytes + 4-byte offset) per present field, about 200 bytes per
common-features line with all 23 fields (measured by bench/ali_ccp_prepare.py with
10-digit ids), i.e. ~0.2 GB per million lines.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator

from recsmith.data.prepare import LINE, SPLIT, Chunk, RejectLog, SplitRule, TabularSpec, prepare_cached, \
    prepare_tabular
from recsmith.data.readers import NUMBER
from recsmith.data.sources import SOURCES, Progress, cache_dir, extends_vocab, raw_data_dir, source_options, \
    vocab_base
from recsmith.errors import DataError, did_you_mean
from recsmith.features.definitions import FeatureSet, FeatureSpec
from recsmith.tasks import FUNNEL_TASKS

# field id -> (entity, meaning), in the order the features are laid out
FIELDS: dict[str, tuple[str, str]] = {
    "101": ("user", "user id"),
    "109_14": ("user", "categories the user acted on in 14 days"),
    "110_14": ("user", "shops the user acted on in 14 days"),
    "127_14": ("user", "brands the user acted on in 14 days"),
    "150_14": ("user", "intention nodes the user acted on in 14 days"),
    "121": ("user", "user profile: categorical id"),
    "122": ("user", "user profile: group id"),
    "124": ("user", "user profile: gender"),
    "125": ("user", "user profile: age"),
    "126": ("user", "user profile: consumption level 1"),
    "127": ("user", "user profile: consumption level 2"),
    "128": ("user", "user profile: occupation"),
    "129": ("user", "user profile: geography"),
    "205": ("item", "item id"),
    "206": ("item", "item category"),
    "207": ("item", "item shop"),
    "210": ("item", "item intention node"),
    "216": ("item", "item brand"),
    "508": ("context", "cross of 109_14 and 206"),
    "509": ("context", "cross of 110_14 and 207"),
    "702": ("context", "cross of 127_14 and 216"),
    "853": ("context", "cross of 150_14 and 210"),
    "301": ("context", "display position"),
}
SKELETON_COLUMNS = ("sample_id", "click", "conversion", "common_feature_index", "feature_num", "feature_list")
COMMON_COLUMNS = ("common_feature_index", "feature_num", "feature_list")
SPLIT_FILES = {"train": ("sample_skeleton_train.csv", "common_features_train.csv"),
               "test": ("sample_skeleton_test.csv", "common_features_test.csv")}
BLOCK_BYTES = 16 << 20  # raw bytes per block of lines (a skeleton block is ~50k samples)
FORMAT_VERSION = 1  # part of the cache key: bump when parsing rules change

DOWNLOAD_HINT = ("Ali-CCP needs a (free) Alibaba Tianchi login, so recsmith cannot download it: get "
                 "sample_train.tar.gz and sample_test.tar.gz from https://tianchi.aliyun.com/dataset/408, "
                 "extract both into one folder and pass it as data.path (or put it at $RECSMITH_DATA/ali-ccp); "
                 "the folder must hold " + ", ".join(name for pair in SPLIT_FILES.values() for name in pair)
                 + " (plain or .gz)")

MD5 = r"^[0-9a-fA-F]{32}$"
SAMPLE_ID = r"^[0-9]+$"
FEATURE_NUM = r"^[0-9]{1,9}$"
PACKED = (r"^(?P<field>[^\x02\x03]+)\x02(?P<feature>[^\x02\x03]+)\x03"
          r"(?P<value>[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)$")


def feature_name(field_id: str) -> str:
    return f"f{field_id}"


def logical_name(path: Path) -> str:
    """The file's name without .gz: rejects and the valid split do not depend on compression."""
    return path.name.removesuffix(".gz")


class AliCcpOptions(BaseModel):
    """`data.options` of the ali_ccp source."""

    model_config = ConfigDict(extra="forbid", strict=True)
    fields: list[str] = Field(default_factory=lambda: list(FIELDS), min_length=1)
    min_count: int = Field(1, ge=1)
    valid_fraction: float = Field(0.1, gt=0.0, lt=1.0)

    @field_validator("fields", mode="before")
    @classmethod
    def _ids_as_text(cls, value):  # YAML reads `fields: [101, 205]` as integers
        if isinstance(value, list):
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    @field_validator("fields")
    @classmethod
    def _known_ids(cls, value: list[str]) -> list[str]:
        for field_id in value:
            if field_id not in FIELDS:
                raise ValueError(f"unknown Ali-CCP field id '{field_id}' (choose from {', '.join(FIELDS)})"
                                 f"{did_you_mean(field_id, FIELDS)}")
        twice = sorted({f for f in value if value.count(f) > 1})
        if twice:
            raise ValueError(f"field ids listed twice: {', '.join(twice)}")
        return value


# ------------------------------------------------------------------------- lines
@dataclass
class LineBlock:
    lines: pa.StringArray  # non-blank lines, without their line ends
    numbers: np.ndarray  # their 1-based physical line numbers (int64)
    position: int  # raw (possibly compressed) bytes of the file read so far


def iter_line_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[LineBlock]:
    """Blocks of whole lines of a text file (plain or .gz), about `block_bytes` raw bytes
    each, never the whole file. Blank lines are skipped but keep their numbers; invalid
    UTF-8 becomes U+FFFD (which the parsers reject)."""
    with open(path, "rb") as raw:
        handle = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
        carry, line_no = b"", 0
        while True:
            try:
                data = handle.read(block_bytes)
            except (OSError, EOFError, zlib.error) as exc:
                raise DataError(f"{path}: not a readable gzip file ({exc})") from None
            if data:
                data = carry + data
                cut = data.rfind(b"\n")
                if cut < 0:  # a line longer than the block: read on
                    carry = data
                    continue
                text, carry = data[:cut], data[cut + 1:]
            elif carry:
                text, carry = carry, b""
            else:
                return
            lines = pc.list_flatten(pc.split_pattern(pa.array([text.decode("utf-8", "replace")]), "\n"))
            numbers = np.arange(line_no + 1, line_no + 1 + len(lines), dtype=np.int64)
            line_no += len(lines)
            lines = pc.utf8_rtrim(lines, characters="\r")
            present = pc.not_equal(pc.utf8_trim_whitespace(lines), "").to_numpy(zero_copy_only=False)
            yield LineBlock(lines.filter(pa.array(present)), numbers[present], raw.tell())


class _Block:
    """The comma-separated columns of a block of lines, and a reason per malformed line
    (the first problem found wins). Columns hold only the lines with the right field count;
    `rows` maps them back to the block."""

    def __init__(self, lines: LineBlock, names: tuple[str, ...]):
        self.lines, self.numbers, self.names = lines.lines, lines.numbers, names
        self.reason = np.full(len(lines.lines), None, dtype=object)
        for i in np.flatnonzero(pc.match_substring(lines.lines, "\ufffd").to_numpy(zero_copy_only=False)):
            self.reason[i] = "not valid UTF-8"
        parts = pc.split_pattern(lines.lines, ",")
        found = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(found != len(names)):
            self.reason[i] = self.reason[i] or f"expected {len(names)} comma-separated fields, found {found[i]}"
        shaped = found == len(names)
        self.rows = np.flatnonzero(shaped)
        parts = parts.filter(pa.array(shaped))
        self.columns = {name: pc.list_element(parts, k) for k, name in enumerate(names)}

    def flag(self, mask: np.ndarray, describe: Callable[[int], str]) -> None:
        """Mark the column rows in `mask` malformed, with `describe(column_row)`."""
        for j in np.flatnonzero(mask):
            i = self.rows[j]
            if self.reason[i] is None:
                self.reason[i] = describe(j)

    def check(self, name: str, pattern: str, what: str) -> np.ndarray:
        """Flag values of column `name` that do not match `pattern`; the mask of good values."""
        column = self.columns[name]
        good = pc.match_substring_regex(column, pattern).to_numpy(zero_copy_only=False)
        self.flag(~good, lambda j: f"{name}: {column[int(j)].as_py()!r} {what}")
        return good

    def good(self) -> np.ndarray:
        """Mask over the column rows: no problem found."""
        return np.equal(self.reason[self.rows], None)

    def sniff(self, path: Path) -> None:
        """A malformed first line means the file is not in this format at all: one error."""
        if len(self.reason) and self.reason[0] is not None:
            raise DataError(f"{path}: line {self.numbers[0]} is not in the Ali-CCP format ({self.reason[0]}); "
                            f"is this the right file? Expected lines of {','.join(self.names)}")

    def log(self, rejects: RejectLog, file: str) -> None:
        for i in np.flatnonzero(np.not_equal(self.reason, None)):
            rejects.add(file, self.numbers[i], self.reason[i], self.lines[int(i)].as_py())


# ---------------------------------------------------------------- packed features
def unpack_features(block: _Block, fields: list[str]) -> dict[str, pa.Array]:
    """The chosen feature id per field for every column row of `block` (null where the
    field is absent), flagging lines with a bad feature_num or a malformed packed feature."""
    lists = block.columns["feature_list"]
    n = len(lists)
    nested = pc.split_pattern(lists, "\x01")
    pieces = pc.list_flatten(nested)
    parents = pc.list_parent_indices(nested).to_numpy(zero_copy_only=False)
    empty = pc.equal(lists, "").to_numpy(zero_copy_only=False)
    real = ~empty[parents]  # an empty list splits into one empty piece, which is no feature
    pieces, parents = pieces.filter(pa.array(real)), parents[real]
    found = np.bincount(parents, minlength=n)

    counted = block.check("feature_num", FEATURE_NUM, "is not a count")
    stated = np.zeros(n, np.int64)
    stated[counted] = pc.cast(block.columns["feature_num"].filter(pa.array(counted)), pa.int64()).to_numpy()
    block.flag(counted & (stated != found), lambda j: f"feature_num is {stated[j]} but feature_list "
                                                      f"holds {found[j]} features")

    unpacked = pc.extract_regex(pieces, PACKED)
    valid = unpacked.is_valid().to_numpy(zero_copy_only=False)
    if not valid.all():
        first_piece = np.r_[0, np.cumsum(found)]
        bad_piece = {}  # column row -> its first malformed piece
        for p in np.flatnonzero(~valid):
            bad_piece.setdefault(parents[p], p)
        mask = np.zeros(n, bool)
        mask[list(bad_piece)] = True
        block.flag(mask, lambda j: f"feature_list item {bad_piece[j] - first_piece[j] + 1}: "
                                   f"{pieces[int(bad_piece[j])].as_py()!r} is not field_id\\x02feature_id\\x03value")

    codes = pc.fill_null(pc.index_in(unpacked.field("field"), value_set=pa.array(fields)), -1).to_numpy()
    selected = np.flatnonzero((codes >= 0) & valid)
    values = pc.cast(unpacked.field("value").take(pa.array(selected)), pa.float64()).to_numpy()
    chosen_piece, chosen_key = _largest_per_key(parents[selected] * len(fields) + codes[selected], values)
    index = np.full(n * len(fields), -1, np.int64)
    index[chosen_key] = selected[chosen_piece]
    index = index.reshape(n, len(fields))
    ids = unpacked.field("feature")
    return {f: ids.take(pa.array(index[:, k], mask=index[:, k] < 0)) for k, f in enumerate(fields)}


def _largest_per_key(key: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each distinct key, the position of its largest value (the first on a tie), and
    the key. Keys arrive nearly sorted (row by row), which a stable sort handles fast."""
    if key.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(key, kind="stable")
    keys, vals = key[order], values[order]
    starts = np.r_[True, keys[1:] != keys[:-1]]
    run = np.cumsum(starts) - 1
    top = np.maximum.reduceat(vals, np.flatnonzero(starts))
    candidates = np.flatnonzero(vals == top[run])
    first = candidates[np.r_[True, run[candidates][1:] != run[candidates][:-1]]]
    return order[first], keys[first]


_HEX = np.zeros(256, np.uint64)
for _digit in "0123456789abcdefABCDEF":
    _HEX[ord(_digit)] = int(_digit, 16)
_SHIFTS = np.arange(60, -1, -4, dtype=np.uint64)


def md5_keys(md5: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """Two uint64 halves of md5 strings that are all 32 hex digits (vectorised, no copy
    into Python objects)."""
    n = len(md5)
    if n == 0:
        return np.empty(0, np.uint64), np.empty(0, np.uint64)
    offsets, data = md5.buffers()[1], md5.buffers()[2]
    start = int(np.frombuffer(offsets, np.int32, count=1, offset=4 * md5.offset)[0])
    digits = _HEX[np.frombuffer(data, np.uint8, count=32 * n, offset=start).reshape(n, 32)]
    return ((digits[:, :16] << _SHIFTS).sum(axis=1, dtype=np.uint64),
            (digits[:, 16:] << _SHIFTS).sum(axis=1, dtype=np.uint64))


def _checked_keys(block: _Block) -> tuple[np.ndarray, np.ndarray]:
    """md5 keys of the common_feature_index column; malformed values are flagged."""
    column = block.columns["common_feature_index"]
    good = block.check("common_feature_index", MD5, "is not an md5 (32 hex digits)")
    return md5_keys(pc.if_else(pa.array(good), column, "0" * 32))


# ---------------------------------------------------------------- common features
class CommonFeatures:
    """The common features of one split, by md5 key: sorted keys and one column of
    chosen feature ids per field that occurs in the file."""

    def __init__(self, hi: np.ndarray, lo: np.ndarray, columns: dict[str, pa.Array], file: str):
        self.hi, self.lo, self.columns, self.file = hi, lo, columns, file

    @classmethod
    def read(cls, path: Path, fields: list[str], rejects: RejectLog,
             advance: Callable[[int], None]) -> "CommonFeatures":
        """One streamed pass over a common-features file; malformed and repeated lines go
        to `rejects` (the first occurrence of a key wins)."""
        his, los, numbers, parts = [], [], [], {f: [] for f in fields}
        for k, lines in enumerate(iter_line_blocks(path, BLOCK_BYTES)):
            block = _Block(lines, COMMON_COLUMNS)
            hi, lo = _checked_keys(block)
            chosen = unpack_features(block, fields)
            if k == 0:
                block.sniff(path)
            block.log(rejects, logical_name(path))
            advance(lines.position)
            keep = block.good()
            his.append(hi[keep])
            los.append(lo[keep])
            numbers.append(block.numbers[block.rows[keep]])
            for f in fields:
                parts[f].append(chosen[f].filter(pa.array(keep)))
        if not his:
            raise DataError(f"{path}: empty file; {DOWNLOAD_HINT}")
        hi, lo, numbers = np.concatenate(his), np.concatenate(los), np.concatenate(numbers)
        order = np.lexsort((numbers, hi))  # by key, then by line: the first occurrence leads
        hi, lo, numbers = hi[order], lo[order], numbers[order]
        repeat = np.r_[False, hi[1:] == hi[:-1]]
        for i in np.flatnonzero(repeat):
            lead = i - 1
            while repeat[lead]:
                lead -= 1
            reason = (f"common_feature_index repeats line {numbers[lead]}" if lo[i] == lo[lead] else
                      f"common_feature_index shares its first 16 hex digits with line {numbers[lead]}")
            rejects.add(logical_name(path), numbers[i], reason)
        unique = pa.array(order[~repeat])
        columns = {}
        for f in fields:
            column = pa.concat_arrays(parts.pop(f)).take(unique)
            if column.null_count < len(column):  # fields absent from the file cost nothing
                columns[f] = column
        return cls(hi[~repeat], lo[~repeat], columns, logical_name(path))

    def __len__(self) -> int:
        return len(self.hi)

    @property
    def nbytes(self) -> int:
        return self.hi.nbytes + self.lo.nbytes + sum(c.nbytes for c in self.columns.values())

    def find(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """The row of each key, -1 where the key has no common features."""
        if not len(self):
            return np.full(len(hi), -1, np.int64)
        at = np.minimum(np.searchsorted(self.hi, hi), len(self) - 1)
        return np.where((self.hi[at] == hi) & (self.lo[at] == lo), at, -1)

    def take(self, field: str, rows: np.ndarray) -> pa.Array | None:
        column = self.columns.get(field)
        return None if column is None else column.take(pa.array(rows, mask=rows < 0))


# ---------------------------------------------------------------------- samples
def read_skeleton(path: Path, split: str, common: CommonFeatures, fields: list[str], rejects: RejectLog,
                  advance: Callable[[int], None]) -> Iterator[Chunk]:
    """Chunks of parsed samples joined with their common features: one raw column per
    field id, click and conversion (float), LINE and SPLIT."""
    k = -1
    for k, lines in enumerate(iter_line_blocks(path, BLOCK_BYTES)):
        block = _Block(lines, SKELETON_COLUMNS)
        block.check("sample_id", SAMPLE_ID, "is not an integer")
        labels = {}
        for label in ("click", "conversion"):
            numeric = block.check(label, NUMBER, "is not a number")
            text = pc.utf8_trim_whitespace(block.columns[label])
            labels[label] = pc.cast(pc.if_else(pa.array(numeric), text, "0"), pa.float64())
        hi, lo = _checked_keys(block)
        own = unpack_features(block, fields)
        if k == 0:
            block.sniff(path)
        rows = common.find(hi, lo)
        index = block.columns["common_feature_index"]
        block.flag(rows < 0, lambda j: f"common_feature_index {index[int(j)].as_py()} has no common "
                                       f"features in {common.file}")
        block.log(rejects, logical_name(path))
        advance(lines.position)
        keep = block.good()
        if not keep.any():
            continue
        columns = {}
        for f in fields:
            shared = common.take(f, rows)
            columns[f] = own[f] if shared is None else pc.coalesce(own[f], shared)
        columns.update(labels)
        table = pa.table(columns).filter(pa.array(keep))
        table = table.append_column(LINE, pa.array(block.numbers[block.rows[keep]], pa.int64()))
        table = table.append_column(SPLIT, pa.array(np.full(table.num_rows, split, dtype=object), pa.string()))
        yield Chunk(table, logical_name(path))
    if k < 0:
        raise DataError(f"{path}: empty file; {DOWNLOAD_HINT}")


class AliCcpReader:
    """The `read(rejects)` of `prepare_tabular`: reads the common features of a split once
    (in the first pass, so their malformed lines are logged) and keeps them for the
    second; reports progress in raw bytes over both passes."""

    def __init__(self, files: dict[str, tuple[Path, Path]], fields: list[str], progress: Progress = None):
        self.files, self.fields, self.progress = files, fields, progress
        self.common: dict[str, CommonFeatures] = {}
        self.total = sum(common.stat().st_size + 2 * skeleton.stat().st_size for skeleton, common in files.values())
        self.done = 0

    def __call__(self, rejects: RejectLog) -> Iterator[Chunk]:
        for split, (skeleton, common) in self.files.items():
            if split not in self.common:
                self.common[split] = CommonFeatures.read(common, self.fields, rejects, self._advance())
            yield from read_skeleton(skeleton, split, self.common[split], self.fields, rejects, self._advance())

    def _advance(self) -> Callable[[int], None]:
        """A progress hook for one pass over one file: takes its position, adds the delta."""
        last = 0

        def advance(position: int) -> None:
            nonlocal last
            self.done += position - last
            last = position
            if self.progress:
                self.progress(self.done, self.total)

        return advance


# ----------------------------------------------------------------------- source
def raw_files(directory: Path) -> dict[str, tuple[Path, Path]]:
    """split -> (skeleton, common features) paths, each plain or .gz."""
    if not directory.is_dir():
        raise DataError(f"{directory} is not a folder; {DOWNLOAD_HINT}")
    files, missing = {}, []
    for split, names in SPLIT_FILES.items():
        found = [next((p for p in (directory / n, directory / f"{n}.gz") if p.is_file()), None) for n in names]
        missing += [n for n, p in zip(names, found) if p is None]
        files[split] = tuple(found)
    if missing:
        raise DataError(f"{directory}: missing {', '.join(missing)}; {DOWNLOAD_HINT}")
    return files


def ali_ccp_spec(options: AliCcpOptions, seed: int) -> TabularSpec:
    """Features, labels, tasks and split rule of the prepared dataset."""
    features = FeatureSet(features=[
        FeatureSpec(name=feature_name(f), type="categorical", entity=FIELDS[f][0], source=f,
                    description=f"Ali-CCP field {f}: {FIELDS[f][1]}",
                    transformation={"kind": "vocab", "min_count": options.min_count})
        for f in options.fields])
    return TabularSpec(
        name="ali_ccp", source="ali_ccp", features=features,
        labels={"click": "click", "conversion": "conversion"}, tasks=list(FUNNEL_TASKS),
        user_field=feature_name("101") if "101" in options.fields else None,
        split=SplitRule(kind="provided", valid_fraction=options.valid_fraction, seed=seed),
        meta={"fields": options.fields, "min_count": options.min_count,
              "multi_valued": "largest value, first on a tie; a sample's own feature before its common one"})


@SOURCES.register("ali_ccp")
@extends_vocab
def ali_ccp_source(data_cfg, progress: Progress = None) -> Path:
    """Ali-CCP from its raw files in `data.path` (see the module docstring)."""
    options = source_options(AliCcpOptions, data_cfg)
    directory = raw_data_dir(data_cfg, "ali-ccp", "the Ali-CCP folder", DOWNLOAD_HINT).resolve()
    files = raw_files(directory)
    base, base_key = vocab_base(data_cfg)
    payload = {"path": str(directory), "format": FORMAT_VERSION, "options": options.model_dump(),
               "seed": data_cfg.seed, "max_bad_rows": data_cfg.max_bad_rows,
               "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for pair in files.values() for p in pair],
               **base_key}

    def build(staging: Path, rejects: Path) -> None:
        prepare_tabular(ali_ccp_spec(options, data_cfg.seed), AliCcpReader(files, options.fields, progress),
                        staging, data_cfg.max_bad_rows, rejects_path=rejects, base=base)

    return prepare_cached(cache_dir("ali_ccp", payload), build)
