"""MovieLens-100K from ../shared/data, the ML-1M reader on fixtures in its exact format,
the three views, and the checked download."""

import gzip
import hashlib
import http.server
import io
import os
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsmith.config.schema import DataConfig
from recsmith.data.prepare import SPLIT, RejectLog
from recsmith.data.schema import DatasetSchema
from recsmith.data.sources import resolve_dataset
from recsmith.data.sources.movielens import MovieLensOptions, build_view, download, read_ml1m, read_ml100k
from recsmith.errors import ConfigError, DataError

# the real files: $RECSMITH_DATA, else the workplace's shared/data (beside the checkout, or
# at its fixed place for clones elsewhere)
SHARED = next((p for p in (Path(os.environ.get("RECSMITH_DATA", "/nonexistent")),
                           Path(__file__).resolve().parents[2] / "shared" / "data",
                           Path("/work/shared/data")) if (p / "ml-100k").is_dir()), Path("/nonexistent"))
ML100K, ML1M = SHARED / "ml-100k", SHARED / "ml-1m"
needs_ml100k = pytest.mark.skipif(not (ML100K / "u.data.gz").is_file(), reason="../shared/data/ml-100k is absent")


@pytest.fixture(scope="module")
def ml100k():
    return read_ml100k(ML100K, RejectLog(None))


@needs_ml100k
def test_ml100k_has_the_published_counts(ml100k):
    assert ml100k.ratings.num_rows == 100_000
    assert ml100k.users.num_rows == 943 and ml100k.items.num_rows == 1682
    assert np.unique(ml100k.ratings["user"].to_numpy()).size == 943
    assert np.unique(ml100k.ratings["item"].to_numpy()).size == 1682
    assert ml100k.ratings["rating"].to_numpy().mean() == pytest.approx(3.52986)  # u.info / SOURCES.md
    titles = dict(zip(ml100k.items["item"].to_pylist(), ml100k.items["year"].to_pylist()))
    assert titles[1] == 1995.0  # Toy Story (1995), read as latin-1


@needs_ml100k
def test_funnel_view_labels_sampling_and_time_split(ml100k):
    options = MovieLensOptions(view="funnel", negatives_per_positive=3)
    view = build_view(ml100k, options, seed=7)
    assert view.num_rows == 400_000
    click, conversion = view["click"].to_numpy(), view["conversion"].to_numpy()
    ratings = ml100k.ratings["rating"].to_numpy()
    assert click.sum() == 100_000 and conversion.sum() == (ratings >= 4).sum()
    assert not (conversion > click).any()
    # sampled impressions are movies the user never rated
    rated = set(zip(ml100k.ratings["user"].to_pylist(), ml100k.ratings["item"].to_pylist()))
    unseen = view.filter(view["click"].to_numpy() == 0)
    assert not any(pair in rated for pair in zip(unseen["user"].to_pylist(), unseen["item"].to_pylist()))
    # no leakage: every test rating is at least as late as every training rating
    watched = view.filter(click == 1)
    split, ts = np.array(watched[SPLIT].to_pylist()), watched["ts"].to_numpy()
    assert ts[split == "train"].max() <= ts[split == "test"].min()
    assert (split == "test").mean() == pytest.approx(0.1, abs=1e-3)
    # impressions carry their rating's time and split
    assert set(unseen[SPLIT].to_pylist()) == {"train", "valid", "test"}
    again = build_view(ml100k, options, seed=7)
    assert again.equals(view)  # deterministic for a seed


@needs_ml100k
def test_prepared_views_record_rule_and_counts():
    funnel = DatasetSchema.load(resolve_dataset(DataConfig(source="movielens_100k", path=str(ML100K))))
    assert funnel.meta["raw_counts"] == {"ratings": 100_000, "users": 943, "items": 1682}
    assert [t.name for t in funnel.tasks] == ["ctr", "cvr"] and sum(funnel.split_rows.values()) == 500_000
    assert funnel.meta["view"]["view"] == "funnel" and funnel.meta["seed"] == 20260127
    assert "unrated movies" in funnel.meta["sampling"]
    ctr = DatasetSchema.load(resolve_dataset(DataConfig(source="movielens_100k", path=str(ML100K),
                                                        options={"view": "ctr_rating"})))
    assert [t.name for t in ctr.tasks] == ["ctr"] and sum(ctr.split_rows.values()) == 100_000
    path = resolve_dataset(DataConfig(source="movielens_100k", path=str(ML100K), options={"view": "ctr_rating"}))
    labels = pq.read_table(path / "train.parquet", columns=["click"])["click"].to_numpy()
    assert 0.5 < labels.mean() < 0.6  # ratings of 4 or 5


def test_bad_options_name_the_key():
    with pytest.raises(ConfigError, match="data.options.view: .*'funnel', 'ctr_rating', 'ctr_implicit' or 'sequence'"):
        resolve_dataset(DataConfig(source="movielens_100k", path=str(ML100K), options={"view": "clicks"}))
    with pytest.raises(ConfigError, match="data.options.negatives: unknown key"):
        resolve_dataset(DataConfig(source="movielens_100k", path=str(ML100K), options={"negatives": 3}))


def write_ml1m_fixture(folder: Path) -> None:
    """ratings.dat in the exact `::` format (latin-1), with the real movies.dat / users.dat."""
    folder.mkdir()
    shutil.copy(ML1M / "movies.dat.gz", folder / "movies.dat.gz")
    shutil.copy(ML1M / "users.dat.gz", folder / "users.dat.gz")
    rng = np.random.default_rng(0)
    lines = [f"{u}::{m}::{r}::{978300760 + i * 60}" for i, (u, m, r) in
             enumerate(zip(rng.integers(1, 200, 3000), rng.choice([1, 2, 3, 6, 10, 11, 32, 34], 3000),
                           rng.integers(1, 6, 3000)))]
    lines[10:10] = ["5::3::4", "6::x::4::978300760"]  # a missing field; a non-numeric id
    (folder / "ratings.dat").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))


@pytest.mark.skipif(not (ML1M / "movies.dat.gz").is_file(), reason="../shared/data/ml-1m is absent")
def test_ml1m_reader_on_its_exact_format(tmp_path):
    write_ml1m_fixture(tmp_path / "ml-1m")
    rejects = RejectLog(tmp_path / "rejects.jsonl")
    data = read_ml1m(tmp_path / "ml-1m", rejects)
    rejects.close()
    assert data.ratings.num_rows == 3000 and data.users.num_rows == 6040 and data.items.num_rows == 3883
    assert rejects.count == 2
    log = (tmp_path / "rejects.jsonl").read_text()
    assert '"line": 11' in log and "expected 4 fields, found 3" in log
    assert '"line": 12' in log and "item: 'x' is not a number" in log
    titles = dict(zip(data.items["item"].to_pylist(), data.items["genre"].to_pylist()))
    assert titles[1] == "Animation"  # Toy Story: Animation|Children's|Comedy
    non_ascii = [t for t in gzip.open(ML1M / "movies.dat.gz", "rt", encoding="latin-1") if not t.isascii()]
    assert non_ascii  # latin-1 titles exist and were read without error
    dataset = DatasetSchema.load(resolve_dataset(DataConfig(source="movielens_1m", path=str(tmp_path / "ml-1m"),
                                                            max_bad_rows=0.01)))
    assert dataset.meta["raw_counts"]["ratings"] == 3000 and dataset.meta["rows_rejected"] == 2


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def grouplens(tmp_path):
    """A local stand-in for files.grouplens.org serving a tiny ml-100k.zip and its MD5."""
    served = tmp_path / "served"
    served.mkdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-100k/u.data", "1\t1\t5\t881250949\n")
    (served / "ml-100k.zip").write_bytes(buffer.getvalue())
    (served / "ml-100k.zip.md5").write_text(hashlib.md5(buffer.getvalue()).hexdigest() + "  ml-100k.zip\n")
    handler = lambda *a, **k: _Files(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_checks_the_published_md5(tmp_path, grouplens):
    served, url = grouplens
    seen = []
    folder = download("ml-100k", tmp_path / "raw", progress=lambda done, total: seen.append(done), base_url=url)
    assert (folder / "u.data").read_text().startswith("1\t1\t5") and seen
    (served / "ml-100k.zip.md5").write_text("0" * 32 + "  ml-100k.zip\n")
    with pytest.raises(DataError, match="MD5 .* differs from the published 0000"):
        download("ml-100k", tmp_path / "raw2", base_url=url)
    with pytest.raises(DataError, match="could not download .*ml-100k.zip.md5 .* pass --set data.path=DIR"):
        download("ml-100k", tmp_path / "raw3", base_url="http://127.0.0.1:9")
