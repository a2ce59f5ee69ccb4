"""MovieLens-100K and MovieLens-1M (GroupLens; cite Harper & Konstan 2015, ACM TiiS 5(4):19;
research use only, no redistribution: the files stay on the user's disk).

`data.source: movielens_100k` or `movielens_1m`; the raw folder is `data.path`, else
$RECSMITH_DATA/ml-100k (ml-1m), else it is downloaded from GroupLens into the cache and
checked against the MD5 GroupLens publishes beside the zip.

Views (`data.options.view`), all stated in the prepared schema's meta:
  funnel        watched = click, rating ≥ positive_rating = conversion; for every rating,
                `negatives_per_positive` movies the user never rated are sampled (uniformly,
                seeded) as unclicked impressions at the same time. Tasks ctr and cvr, so the
                multi-task chain runs on it.
  ctr_rating    one row per rating, click = rating ≥ positive_rating. Task ctr.
  ctr_implicit  every rating is a positive, plus sampled unrated movies as negatives. Task ctr.
Split by time, no leakage: the latest `test_fraction` of ratings (by timestamp) are test,
the `valid_fraction` before them valid; sampled impressions follow their rating.
Features: user_id, item_id, gender, age group, occupation, zip3, release year (by decade),
first genre, number of genres, hour and weekday of the rating.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from recsmith.data.download import fetch
from recsmith.data.prepare import LINE, SPLIT, Chunk, RejectLog, SplitRule, TabularSpec, prepare_cached, prepare_tabular
from recsmith.data.readers import find_file, read_delimited
from recsmith.data.sequence_dataset import write_sequence_dataset
from recsmith.data.sources import SOURCES, Progress, cache_dir, cache_root, extends_vocab, source_options, vocab_base
from recsmith.errors import ConfigError, DataError
from recsmith.features.definitions import FeatureSet
from recsmith.tasks import FUNNEL_TASKS, TaskSpec

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western")

ML1M_GENRES = ML100K_GENRES[1:]  # ML-1M has no "unknown" genre


class MovieLensOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    view: Literal["funnel", "ctr_rating", "ctr_implicit", "sequence"] = "funnel"
    history: Literal["strict_time", "order"] = "strict_time"  # view sequence: what a prediction sees
    positive_rating: int = Field(4, ge=1, le=5)
    negatives_per_positive: int = Field(4, ge=1, le=100)
    valid_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5)


@dataclass
class Ratings:
    """The parsed raw files."""

    ratings: pa.Table  # user, item, rating, ts, __line__
    users: pa.Table  # user, gender, age, occupation, zip3
    items: pa.Table  # item, year, genre, genre_count
    genre_flags: np.ndarray  # [items, genres] bool, rows aligned with `items`


# --------------------------------------------------------------------- raw files
def read_ml100k(folder: Path, rejects: RejectLog) -> Ratings:
    ratings = _concat(read_delimited(find_file(folder, "u.data"), rejects, delimiter="\t",
                                     columns=["user", "item", "rating", "ts"], numeric=["user", "item", "rating", "ts"]))
    users = _concat(read_delimited(find_file(folder, "u.user"), rejects, delimiter="|", quoted=False,
                                   columns=["user", "age", "gender", "occupation", "zip"], numeric=["user", "age"]))
    items = _concat(read_delimited(find_file(folder, "u.item"), rejects, delimiter="|", quoted=False,
                                   encoding="latin-1", numeric=["item"],
                                   columns=["item", "title", "release", "video_release", "url", *ML100K_GENRES]))
    flags = np.stack([np.asarray(items[g].to_pylist()) == "1" for g in ML100K_GENRES], axis=1)
    first = np.where(flags.any(1), np.array(ML100K_GENRES, dtype=object)[flags.argmax(1)], None)
    years = [float(d[-4:]) if d and d[-4:].isdigit() else None for d in items["release"].to_pylist()]
    return Ratings(
        ratings.select(["user", "item", "rating", "ts", LINE]),
        pa.table({"user": users["user"], "gender": users["gender"], "age": users["age"],
                  "occupation": users["occupation"], "zip3": pc.utf8_slice_codeunits(users["zip"], 0, 3)}),
        pa.table({"item": items["item"], "year": pa.array(years, pa.float64()),
                  "genre": pa.array(first, pa.string()), "genre_count": pa.array(flags.sum(1).astype(np.float64))}),
        flags,
    )


def read_ml1m(folder: Path, rejects: RejectLog) -> Ratings:
    def dat(name: str, columns: list[str], numeric: list[str]) -> pa.Table:
        return _concat(read_delimited(find_file(folder, name), rejects, delimiter="::", quoted=False,
                                      encoding="latin-1", columns=columns, numeric=numeric))

    ratings = dat("ratings.dat", ["user", "item", "rating", "ts"], ["user", "item", "rating", "ts"])
    users = dat("users.dat", ["user", "gender", "age", "occupation", "zip"], ["user"])
    movies = dat("movies.dat", ["item", "title", "genres"], ["item"])
    genres = [g.split("|") if g else [] for g in movies["genres"].to_pylist()]
    years = [float(t[-5:-1]) if t and t.endswith(")") and t[-5:-1].isdigit() else None
             for t in movies["title"].to_pylist()]
    return Ratings(
        ratings.select(["user", "item", "rating", "ts", LINE]),
        pa.table({"user": users["user"], "gender": users["gender"], "age": users["age"],
                  "occupation": users["occupation"], "zip3": pc.utf8_slice_codeunits(users["zip"], 0, 3)}),
        pa.table({"item": movies["item"], "year": pa.array(years, pa.float64()),
                  "genre": pa.array([g[0] if g else None for g in genres], pa.string()),
                  "genre_count": pa.array([float(len(g)) for g in genres])}),
        np.array([[name in g for name in ML1M_GENRES] for g in genres], dtype=bool).reshape(len(genres), len(ML1M_GENRES)),
    )


def _concat(chunks: Iterator[Chunk]) -> pa.Table:
    """One table of a file's rows; the id, rating and time columns as int64."""
    tables = [c.table for c in chunks]
    if not tables:
        raise DataError("a MovieLens file has no readable rows")
    table = pa.concat_tables(tables)
    for name in ("user", "item", "rating", "ts", "age"):
        if name in table.column_names and pa.types.is_floating(table[name].type):
            table = table.set_column(table.column_names.index(name), name, pc.cast(table[name], pa.int64()))
    return table


# -------------------------------------------------------------------------- views
def build_view(data: Ratings, options: MovieLensOptions, seed: int) -> pa.Table:
    """Rows of the chosen view: user, item, ts, labels, LINE and SPLIT, joined with the
    user and movie attributes, in a deterministic order."""
    r = data.ratings
    split = _time_split(r["ts"].to_numpy(), r[LINE].to_numpy(), options)
    positive = (r["rating"].to_numpy() >= options.positive_rating).astype(np.int8)
    events = r.select(["user", "item", "ts", LINE])
    if options.view == "ctr_rating":
        return _attach(events, split, {"click": positive}, data)
    watched = {"click": np.ones(r.num_rows, np.int8)}
    if options.view == "funnel":
        watched["conversion"] = positive
    k = options.negatives_per_positive
    source_row = np.repeat(np.arange(r.num_rows), k)  # every rating brings k unwatched impressions
    unseen = r.select(["user", "ts", LINE]).take(pa.array(source_row))
    unseen = unseen.append_column("item", pa.array(_sample_negatives(r, data.items, k, seed)))
    events = pa.concat_tables([events, unseen.select(events.column_names)])
    labels = {name: np.concatenate([values, np.zeros(len(source_row), np.int8)]) for name, values in watched.items()}
    return _attach(events, np.concatenate([split, split[source_row]]), labels, data)


def _attach(events: pa.Table, split: np.ndarray, labels: dict[str, np.ndarray], data: Ratings) -> pa.Table:
    events = events.append_column("__row__", pa.array(np.arange(events.num_rows)))
    events = events.append_column(SPLIT, pa.array(np.array(["train", "valid", "test"], dtype=object)[split], pa.string()))
    for name, values in labels.items():
        events = events.append_column(name, pa.array(values))
    joined = events.join(data.users, "user", join_type="left outer").join(data.items, "item", join_type="left outer")
    return joined.sort_by([("__row__", "ascending")]).drop_columns(["__row__"])  # joins reorder rows


def _time_split(ts: np.ndarray, line: np.ndarray, options: MovieLensOptions) -> np.ndarray:
    """0 train, 1 valid, 2 test: the latest ratings (ties broken by line) are test."""
    order = np.lexsort((line, ts))
    rank = np.empty(len(ts), np.float64)
    rank[order] = np.arange(len(ts)) / max(len(ts), 1)
    return np.where(rank >= 1 - options.test_fraction, 2,
                    np.where(rank >= 1 - options.test_fraction - options.valid_fraction, 1, 0))


def _sample_negatives(ratings: pa.Table, items: pa.Table, k: int, seed: int) -> np.ndarray:
    """k movies per rating that its user never rated, drawn uniformly (seeded)."""
    rng = np.random.default_rng(seed)
    catalogue = np.unique(items["item"].to_numpy().astype(np.int64))
    users = ratings["user"].to_numpy().astype(np.int64)
    span = int(max(catalogue.max(), ratings["item"].to_numpy().max())) + 1
    rated = np.unique(users * span + ratings["item"].to_numpy().astype(np.int64))
    owner = np.repeat(users, k)
    candidates = catalogue[rng.integers(0, len(catalogue), len(owner))]
    for _ in range(100):
        taken = np.isin(owner * span + candidates, rated)
        if not taken.any():
            return candidates
        candidates[taken] = catalogue[rng.integers(0, len(catalogue), int(taken.sum()))]
    raise DataError("could not sample unrated movies: some user rated (almost) every movie")


def feature_set(variant: str) -> FeatureSet:
    age = ({"kind": "bucketize", "boundaries": [18, 25, 35, 45, 50, 56]} if variant == "movielens_100k"
           else {"kind": "vocab"})
    vocab = {"kind": "vocab"}
    features = [
        {"name": "user_id", "type": "categorical", "entity": "user", "source": "user", "transformation": vocab},
        {"name": "item_id", "type": "categorical", "entity": "item", "source": "item", "transformation": vocab},
        {"name": "gender", "type": "categorical", "entity": "user", "transformation": vocab},
        {"name": "age_group", "type": "categorical", "entity": "user", "source": "age", "transformation": age},
        {"name": "occupation", "type": "categorical", "entity": "user", "transformation": vocab},
        {"name": "zip3", "type": "categorical", "entity": "user", "transformation": vocab},
        {"name": "release_decade", "type": "categorical", "entity": "item", "source": "year",
         "transformation": {"kind": "bucketize", "boundaries": [1930.0, 1950, 1960, 1970, 1980, 1990, 1995]}},
        {"name": "genre", "type": "categorical", "entity": "item", "transformation": vocab},
        {"name": "hour", "type": "categorical", "transformation": {"kind": "identity", "size": 24}},
        {"name": "weekday", "type": "categorical", "transformation": {"kind": "identity", "size": 7}},
        {"name": "genre_count", "type": "numeric", "entity": "item", "transformation": {"kind": "standardize"}},
    ]
    return FeatureSet.model_validate({"features": features})


def _add_time(table: pa.Table) -> pa.Table:
    ts = table["ts"].to_numpy().astype(np.int64)
    hour = (ts // 3600) % 24
    weekday = (ts // 86400 + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    return table.append_column("hour", pa.array(hour)).append_column("weekday", pa.array(weekday))


# ------------------------------------------------------------------------ download
def download(name: str, target: Path, progress: Progress = None, base_url: str = GROUPLENS) -> Path:
    """Fetch `name`.zip and the MD5 GroupLens publishes beside it, check, unpack into `target`."""
    hint = f"download {name}.zip by hand, unzip it and pass --set data.path=DIR or set RECSMITH_DATA"
    checksum = fetch(f"{base_url}/{name}.zip.md5", target / f"{name}.zip.md5", hint)
    archive = fetch(f"{base_url}/{name}.zip", target / f"{name}.zip", hint, progress)
    expected = checksum.read_text().split()[0].lower()
    actual = hashlib.md5(archive.read_bytes()).hexdigest()
    checksum.unlink()
    if actual != expected:
        archive.unlink()
        raise DataError(f"{name}.zip: MD5 {actual} differs from the published {expected}; not used")
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(target)
    archive.unlink()
    return target / name


@dataclass(frozen=True)
class Variant:
    folder: str
    read: Callable[[Path, RejectLog], Ratings]


VARIANTS = {"movielens_100k": Variant("ml-100k", read_ml100k), "movielens_1m": Variant("ml-1m", read_ml1m)}


def locate(data_cfg, variant: Variant, progress: Progress) -> Path:
    """data.path, else $RECSMITH_DATA/<folder>, else a download into the cache."""
    import os

    if data_cfg.path:
        path = Path(data_cfg.path).expanduser()
        if not path.is_dir():
            raise DataError(f"data.path: MovieLens folder not found: {path}")
        return path
    if os.environ.get("RECSMITH_DATA"):
        path = Path(os.environ["RECSMITH_DATA"]).expanduser() / variant.folder
        if path.is_dir():
            return path
    downloaded = cache_root() / "raw" / variant.folder
    if downloaded.is_dir():
        return downloaded
    return download(variant.folder, downloaded.parent, progress)


def _source(name: str):
    variant = VARIANTS[name]

    def movielens(data_cfg, progress: Progress = None) -> Path:
        options = source_options(MovieLensOptions, data_cfg)
        folder = locate(data_cfg, variant, progress)
        files = sorted(p for p in folder.iterdir() if p.is_file())
        base, base_key = vocab_base(data_cfg)
        if base and options.view == "sequence":
            raise ConfigError("data.extend_vocab_from: the sequence view cannot extend vocabularies "
                              "(a ranking view can)")
        payload = {"source": name, "folder": str(folder.resolve()), "options": options.model_dump(),
                   "seed": data_cfg.seed, "max_bad_rows": data_cfg.max_bad_rows,
                   "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files], **base_key}
        tasks = list(FUNNEL_TASKS) if options.view == "funnel" else [TaskSpec("ctr", "click")]
        labels = {t.label: t.label for t in tasks}
        built: dict[str, pa.Table] = {}

        def read(rejects: RejectLog) -> Iterator[Chunk]:
            if "view" not in built:  # parse once; the second pass reuses the rows
                raw = variant.read(folder, rejects)
                built["view"] = _add_time(build_view(raw, options, data_cfg.seed))
                built["counts"] = {"ratings": raw.ratings.num_rows, "users": raw.users.num_rows,
                                   "items": raw.items.num_rows}
            view = built["view"]
            for start in range(0, view.num_rows, 500_000):
                yield Chunk(view.slice(start, 500_000), variant.folder)

        def build_sequences(staging: Path, rejects: Path) -> None:
            log = RejectLog(rejects)
            try:
                raw = variant.read(folder, log)
            finally:
                log.close()
            bad = log.count / max(raw.ratings.num_rows + log.count, 1)
            if bad > data_cfg.max_bad_rows:
                raise DataError(f"{folder}: {log.count} malformed rows ({bad:.2%}) exceed data.max_bad_rows; "
                                f"see {rejects}")
            schema = write_sequence_dataset(name, raw.ratings, raw.users, raw.items, raw.genre_flags, options.history,
                                            options.negatives_per_positive, options.positive_rating,
                                            data_cfg.seed, staging)
            schema.meta["raw_counts"] = {"ratings": raw.ratings.num_rows, "users": raw.users.num_rows,
                                         "items": raw.items.num_rows}
            schema.save(staging)

        def build(staging: Path, rejects: Path) -> None:
            spec = TabularSpec(
                name=name, source=name, features=feature_set(name), labels=labels, tasks=tasks,
                user_field="user_id", split=SplitRule(kind="column", column=SPLIT),
                meta={"view": options.model_dump(), "seed": data_cfg.seed,
                      "sampling": "unrated movies drawn uniformly per rating" if options.view != "ctr_rating" else None,
                      "split_rule": "by rating time: latest test_fraction test, the valid_fraction before it valid"},
            )
            schema = prepare_tabular(spec, read, staging, data_cfg.max_bad_rows, progress, rejects_path=rejects,
                                     base=base)
            schema.meta["raw_counts"] = built["counts"]
            schema.save(staging)

        return prepare_cached(cache_dir(name, payload), build_sequences if options.view == "sequence" else build)

    movielens.__doc__ = f"MovieLens ({variant.folder}), prepared in the chosen view and cached."
    return extends_vocab(movielens)


for _name in VARIANTS:
    SOURCES.register(_name)(_source(_name))
