"""UCI Census-Income (KDD) as a two-task dataset (`data.source: census_income`), as in the
MMoE paper's census experiment (Ma et al., KDD 2018): task `income` (label `income_50k`,
total person income above $50K) and task `marital` (label `never_married`).

Raw files (https://archive.ics.uci.edu/dataset/117/census+income+kdd), plain or gzipped:
census-income.data (199,523 rows, the train split; valid is carved from it at random) and
census-income.test (99,762 rows, the test split). No header; 42 fields separated by ", ";
field 25 is the instance weight (a sampling weight, not a feature), field 42 the class
("- 50000." or "50000+."). They are read from `data.path`, else
$RECSMITH_DATA/census-income, else downloaded once from UCI into the cache.

    data:
      source: census_income
      path: ~/data/census-income        # optional
      options: {valid_fraction: 0.1, download: true}
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from recsmith.data.download import fetch, sha256_problem
from recsmith.data.prepare import LINE, Chunk, RejectLog, SplitRule, TabularSpec, prepare_cached, prepare_tabular
from recsmith.data.readers import find_file, read_delimited
from recsmith.data.sources import SOURCES, Progress, cache_dir, cache_root, extends_vocab, raw_data_dir, \
    source_options, vocab_base
from recsmith.errors import DataError
from recsmith.features.definitions import FeatureSet, FeatureSpec, Transformation
from recsmith.tasks import TaskSpec

SOURCE = "census_income"
FORMAT_VERSION = 1  # bump when the prepared output changes, so caches are rebuilt
TRAIN_FILE, TEST_FILE = "census-income.data", "census-income.test"
UCI_PAGE = "https://archive.ics.uci.edu/dataset/117/census+income+kdd"
UCI_FILES = "https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld"

# The 42 fields in file order, named after the attribute list of census-income.names.
COLUMNS = (
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode",
    "education", "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat",
    "major_industry_code", "major_occupation_code", "race", "hispanic_origin", "sex",
    "member_of_a_labor_union", "reason_for_unemployment", "full_or_part_time_employment_stat",
    "capital_gains", "capital_losses", "dividends_from_stocks", "tax_filer_stat",
    "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household",
    "instance_weight", "migration_code_change_in_msa", "migration_code_change_in_reg",
    "migration_code_move_within_reg", "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother",
    "country_of_birth_self", "citizenship", "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin", "veterans_benefits", "weeks_worked_in_year",
    "year", "income",
)

# The 7 continuous attributes -> log1p before standardizing (money amounts are heavy-tailed:
# mostly 0, a few up to 99,999); counts and ages are standardized as they are.
NUMERIC = {
    "age": False, "wage_per_hour": True, "capital_gains": True, "capital_losses": True,
    "dividends_from_stocks": True, "num_persons_worked_for_employer": False,
    "weeks_worked_in_year": False,
}
INCOME, MARITAL = "income", "marital_stat"
NOT_FEATURES = ("instance_weight", MARITAL, INCOME)  # a sampling weight and the two labels' sources
INCOME_CLASSES, HIGH_INCOME = ("- 50000.", "50000+."), "50000+."
MARITAL_STATUSES = ("Never married", "Married-civilian spouse present", "Married-spouse absent",
                    "Separated", "Divorced", "Widowed", "Married-A F spouse present")
LABELS = {"income_50k": "income_50k", "never_married": "never_married"}  # derived columns
TASKS = [TaskSpec("income", label="income_50k"), TaskSpec("marital", label="never_married")]


@dataclass(frozen=True)
class RemoteFile:
    name: str  # the file's name once downloaded
    url: str
    rows: int  # data lines it must hold
    # the official file's digest; None: UCI publishes none (and none could be checked here),
    # so the digest of the first download is recorded beside it and later copies must match
    sha256: str | None = None


REMOTE_FILES = (
    RemoteFile(f"{TRAIN_FILE}.gz", f"{UCI_FILES}/{TRAIN_FILE}.gz", 199_523),
    RemoteFile(f"{TEST_FILE}.gz", f"{UCI_FILES}/{TEST_FILE}.gz", 99_762),
)
HINT = (f"download {TRAIN_FILE} and {TEST_FILE} (plain or .gz) from {UCI_PAGE} "
        f"(direct links: {UCI_FILES}/{TRAIN_FILE}.gz and .../{TEST_FILE}.gz) into "
        "$RECSMITH_DATA/census-income/, or pass --set data.path=DIR")


class CensusOptions(BaseModel):
    """`data.options` of the census_income source."""

    model_config = ConfigDict(extra="forbid", strict=True)
    valid_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # of census-income.data, at random
    download: bool = True  # fetch the files from UCI when no local copy is configured


def features() -> FeatureSet:
    """Every column but the instance weight and the labels' sources: the 7 continuous ones
    standardized, the other 32 as vocabularies fitted on the training split."""
    specs = []
    for column in COLUMNS:
        if column in NOT_FEATURES:
            continue
        if column in NUMERIC:
            transformation = Transformation(kind="standardize", log1p=NUMERIC[column])
            specs.append(FeatureSpec(name=column, type="numeric", entity="user", transformation=transformation))
        else:
            specs.append(FeatureSpec(name=column, type="categorical", entity="user",
                                     transformation=Transformation(kind="vocab")))
    return FeatureSet(features=specs)


def tabular_spec(options: CensusOptions, seed: int, raw_dir: Path) -> TabularSpec:
    return TabularSpec(
        name=SOURCE, source=SOURCE, features=features(), labels=dict(LABELS), tasks=list(TASKS),
        split=SplitRule(kind="provided", valid_fraction=options.valid_fraction, seed=seed),
        meta={"raw_dir": str(raw_dir), "train_file": TRAIN_FILE, "test_file": TEST_FILE,
              "format_version": FORMAT_VERSION},
    )


def with_labels(chunk: Chunk, rejects: RejectLog, file: str) -> pa.Table:
    """Derive income_50k and never_married, reject rows whose class or marital status is
    unknown, and keep only the feature, label and bookkeeping columns."""
    table = chunk.table
    income, marital = table[INCOME], table[MARITAL]
    known_income = pc.fill_null(pc.is_in(income, value_set=pa.array(INCOME_CLASSES)), False)
    known_marital = pc.fill_null(pc.is_in(marital, value_set=pa.array(MARITAL_STATUSES)), False)
    known_income = known_income.to_numpy(zero_copy_only=False)
    known_marital = known_marital.to_numpy(zero_copy_only=False)
    lines = table[LINE].to_numpy()
    for i in np.flatnonzero(~(known_income & known_marital)):
        if not known_income[i]:
            reason = f"{INCOME}: {income[int(i)].as_py()!r} is not an income class ('- 50000.' or '50000+.')"
        else:
            reason = f"{MARITAL}: {marital[int(i)].as_py()!r} is not a marital status"
        rejects.add(file, lines[i], reason)
    table = table.filter(pa.array(known_income & known_marital))
    high = pc.equal(table[INCOME], HIGH_INCOME).to_numpy(zero_copy_only=False)
    never = pc.equal(table[MARITAL], "Never married").to_numpy(zero_copy_only=False)
    kept = [c for c in table.column_names if c not in NOT_FEATURES]
    table = table.select(kept)
    table = table.append_column("income_50k", pa.array(high.astype(np.int8)))
    return table.append_column("never_married", pa.array(never.astype(np.int8)))


def reader(raw_dir: Path):
    """`read(rejects)` for prepare_tabular: census-income.data as train, .test as test."""
    try:
        files = [(find_file(raw_dir, name), name, split)
                 for name, split in ((TRAIN_FILE, "train"), (TEST_FILE, "test"))]
    except DataError as exc:
        raise DataError(f"{exc.args[0]}; {HINT}") from None

    def read(rejects: RejectLog) -> Iterator[Chunk]:
        for path, canonical, split in files:
            for chunk in read_delimited(path, rejects, delimiter=",", strip=True, columns=COLUMNS,
                                        numeric=list(NUMERIC), split=split):
                # split by the plain file name, so a gzipped copy yields the same valid rows
                yield Chunk(with_labels(chunk, rejects, path.name), canonical)

    return read, [path for path, _, _ in files]


# --------------------------------------------------------------------------- download
def download_dir() -> Path:
    return cache_root() / SOURCE / "download"


def download(directory: Path, files=REMOTE_FILES, progress: Progress = None, timeout: float = 60.0) -> Path:
    """Fetch `files` into `directory` (skipping those already there), each checked against
    its Content-Length, its number of rows and its SHA-256 (pinned, else the one recorded at
    the first download: recsmith.data.download.sha256_problem) before it is kept."""
    directory.mkdir(parents=True, exist_ok=True)
    for remote in files:
        target = directory / remote.name
        if target.is_file():
            continue
        fetch(remote.url, target, HINT, progress, timeout)
        rows = _count_rows(target, remote)
        if rows != remote.rows:
            target.unlink()
            raise DataError(f"{remote.url}: the downloaded file holds {rows:,} rows, expected "
                            f"{remote.rows:,}; {HINT}")
        problem = sha256_problem(target, remote.sha256)  # after the row count: a bad file is never recorded
        if problem:
            target.unlink()
            raise DataError(f"{remote.url}: the downloaded file's {problem}; it was not kept: {HINT}")
    return directory


def check_cached(directory: Path, files=REMOTE_FILES) -> Path:
    """The downloaded copies in `directory`, each checked against its SHA-256 again."""
    for remote in files:
        path = directory / remote.name
        problem = sha256_problem(path, remote.sha256)
        if problem:
            raise DataError(f"{path}: {problem}; the file changed after it was downloaded: delete it to "
                            "download it again")
    return directory


def _count_rows(path: Path, remote: RemoteFile) -> int:
    """Non-blank lines, through gzip when the file is gzipped; a corrupt file is a DataError."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as handle:
            return sum(1 for line in handle if line.strip())
    except (OSError, EOFError) as exc:
        path.unlink()
        raise DataError(f"{remote.url}: the downloaded file is corrupt ({exc}); {HINT}") from None


def locate_raw(data_cfg, options: CensusOptions, progress: Progress) -> Path:
    """data.path, else $RECSMITH_DATA/census-income, else a download into the cache."""
    env = os.environ.get("RECSMITH_DATA")
    configured = data_cfg.path or (env and (Path(env).expanduser() / "census-income").exists())
    cached = download_dir()
    if not configured and all((cached / f.name).is_file() for f in REMOTE_FILES):
        return check_cached(cached, REMOTE_FILES)
    if configured or not options.download:
        return raw_data_dir(data_cfg, "census-income", "the Census-Income (KDD) files", HINT)
    return download(cached, REMOTE_FILES, progress)


@SOURCES.register(SOURCE)
@extends_vocab
def census_income(data_cfg, progress: Progress = None) -> Path:
    """The prepared Census-Income (KDD) dataset, built once per raw files and options."""
    options = source_options(CensusOptions, data_cfg)
    raw_dir = locate_raw(data_cfg, options, progress).resolve()
    read, paths = reader(raw_dir)
    base, base_key = vocab_base(data_cfg)
    payload = {"format_version": FORMAT_VERSION, "valid_fraction": options.valid_fraction, "seed": data_cfg.seed,
               "max_bad_rows": data_cfg.max_bad_rows,
               "files": [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths], **base_key}
    spec = tabular_spec(options, data_cfg.seed, raw_dir)

    def build(staging: Path, rejects: Path) -> None:
        prepare_tabular(spec, read, staging, data_cfg.max_bad_rows, progress,
                        expected_rows=sum(f.rows for f in REMOTE_FILES), rejects_path=rejects, base=base)

    return prepare_cached(cache_dir(SOURCE, payload), build)
