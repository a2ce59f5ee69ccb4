"""The online store: versioned key → bytes, one interface, two backends.

    sqlite:///path/store.db   embedded, no server (the default; WAL, one connection per thread)
    redis://127.0.0.1:6379/0  Redis (`pip install 'recsmith[online]'`); ?prefix=NAME namespaces keys

A materialization writes a whole new version beside the one being served and then switches
to it in one step (SQLite: one transaction; Redis: one SET of the pointer), so a reader sees
the old version or the new one, never a mix; the version before it is kept (a reader that
resolved it a moment ago still finds its keys), older ones are deleted. Events write into the
current version (`put_many`). Values are recsmith.online.codec records.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import parse_qs, urlparse

from recsmith.errors import ConfigError, DataError
from recsmith.registry import Registry

BACKENDS: Registry[Callable[[str], "OnlineStore"]] = Registry("online store backend")
MANIFEST = "__manifest__"  # the key of a version's manifest (what materialize wrote)
DEFAULT_URI = "sqlite:///runs/feature_store.db"


class OnlineStore:
    """What every backend offers. `version` is an int; None before the first commit."""

    uri: str

    def current(self) -> int | None:
        raise NotImplementedError

    def get_many(self, keys: list[str], version: int | None = None) -> list[bytes | None]:
        raise NotImplementedError

    def put_many(self, items: dict[str, bytes], version: int | None = None) -> None:
        raise NotImplementedError

    def update(self, keys: list[str], change: Callable[[list[bytes | None]], dict[str, bytes]],
               version: int | None = None) -> dict[str, bytes]:
        """Read `keys`, write what `change(values)` returns, atomically (no write from another
        process lands between the read and the write); what was written."""
        raise NotImplementedError

    def new_version(self) -> int:
        """An empty version to fill with `put_many(..., version)`; `commit` switches to it."""
        raise NotImplementedError

    def commit(self, version: int, manifest: dict) -> None:
        raise NotImplementedError

    def manifest(self, version: int | None = None) -> dict | None:
        value = self.get_many([MANIFEST], version)[0]
        return json.loads(value) if value is not None else None

    def close(self) -> None:
        pass

    def _version(self, version: int | None) -> int:
        version = self.current() if version is None else version
        if version is None:
            raise DataError(f"online store {self.uri} is empty: run `recsmith features materialize RUN --store "
                            f"{self.uri}` first")
        return version


def open_store(uri: str) -> OnlineStore:
    """The store a URI names (sqlite:///PATH, a path ending .db, or redis://...)."""
    scheme = urlparse(uri).scheme if "://" in uri else ("sqlite" if uri.endswith((".db", ".sqlite")) else "")
    if scheme not in BACKENDS:
        raise ConfigError(f"--store {uri}: not a store URI (sqlite:///PATH.db or redis://HOST:PORT/DB)")
    return BACKENDS.get(scheme)(uri)


# ------------------------------------------------------------------------- SQLite
@BACKENDS.register("sqlite")
class SQLiteStore(OnlineStore):
    def __init__(self, uri: str):
        self.uri = uri
        if "://" in uri and not uri.startswith("sqlite:///"):
            raise ConfigError(f"--store {uri}: write sqlite:///relative/path.db or sqlite:////absolute/path.db")
        self.path = Path(uri.removeprefix("sqlite:///")) if "://" in uri else Path(uri)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as db:
            db.executescript("""
                CREATE TABLE IF NOT EXISTS versions (version INTEGER PRIMARY KEY, created REAL);
                CREATE TABLE IF NOT EXISTS pointer (name TEXT PRIMARY KEY, version INTEGER);
                CREATE TABLE IF NOT EXISTS kv (version INTEGER, key TEXT, value BLOB,
                                               PRIMARY KEY (version, key)) WITHOUT ROWID;""")

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def current(self) -> int | None:
        row = self._connection().execute("SELECT version FROM pointer WHERE name = 'current'").fetchone()
        return row[0] if row else None

    def get_many(self, keys: list[str], version: int | None = None) -> list[bytes | None]:
        version = self._version(version)
        found: dict[str, bytes] = {}
        db = self._connection()
        for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(db.execute(f"SELECT key, value FROM kv WHERE version = ? AND key IN ({marks})",
                                    [version, *chunk]))
        return [found.get(k) for k in keys]

    def put_many(self, items: dict[str, bytes], version: int | None = None) -> None:
        version = self._version(version)
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO kv (version, key, value) VALUES (?, ?, ?)",
                           ((version, k, v) for k, v in items.items()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def update(self, keys: list[str], change, version: int | None = None) -> dict[str, bytes]:
        version = self._version(version)
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")  # the write lock first: the read below is the one the write follows
        try:
            found = dict(db.execute(f"SELECT key, value FROM kv WHERE version = ? AND key IN "
                                    f"({','.join('?' * len(keys))})", [version, *keys]))
            written = change([found.get(k) for k in keys])
            db.executemany("INSERT OR REPLACE INTO kv (version, key, value) VALUES (?, ?, ?)",
                           ((version, k, v) for k, v in written.items()))
            db.execute("COMMIT")
            return written
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def new_version(self) -> int:
        db = self._connection()
        cursor = db.execute("INSERT INTO versions (created) VALUES (?)", (time.time(),))
        return cursor.lastrowid

    def commit(self, version: int, manifest: dict) -> None:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            previous = self.current()
            db.execute("INSERT OR REPLACE INTO kv (version, key, value) VALUES (?, ?, ?)",
                       (version, MANIFEST, json.dumps(manifest).encode()))
            db.execute("INSERT OR REPLACE INTO pointer (name, version) VALUES ('current', ?)", (version,))
            keep = [v for v in (version, previous) if v is not None]
            marks = ",".join("?" * len(keep))
            db.execute(f"DELETE FROM kv WHERE version NOT IN ({marks})", keep)
            db.execute(f"DELETE FROM versions WHERE version NOT IN ({marks})", keep)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


# -------------------------------------------------------------------------- Redis
@BACKENDS.register("redis")
class RedisStore(OnlineStore):
    def __init__(self, uri: str):
        try:
            import redis
        except ImportError:
            raise ConfigError(f"--store {uri}: the Redis backend needs the redis client: "
                              "pip install 'recsmith[online]'") from None
        self.uri = uri
        self.prefix = parse_qs(urlparse(uri).query).get("prefix", ["recsmith"])[0]
        self.client = redis.Redis.from_url(uri.split("?", 1)[0])
        try:
            self.client.ping()
        except redis.exceptions.ConnectionError as exc:
            raise DataError(f"--store {uri}: cannot reach Redis ({exc})") from None

    def _key(self, version: int, key: str) -> str:
        return f"{self.prefix}:v{version}:{key}"

    def current(self) -> int | None:
        value = self.client.get(f"{self.prefix}:current")
        return int(value) if value is not None else None

    def get_many(self, keys: list[str], version: int | None = None) -> list[bytes | None]:
        version = self._version(version)
        return self.client.mget([self._key(version, k) for k in keys]) if keys else []

    def put_many(self, items: dict[str, bytes], version: int | None = None) -> None:
        version = self._version(version)
        pipe = self.client.pipeline(transaction=True)
        for chunk in _chunks(items.items(), 1000):
            pipe.mset({self._key(version, k): v for k, v in chunk})
        pipe.execute()

    def update(self, keys: list[str], change, version: int | None = None) -> dict[str, bytes]:
        import redis

        version = self._version(version)
        names = [self._key(version, k) for k in keys]
        while True:  # optimistic: WATCH the keys, write in MULTI, retry if one changed meanwhile
            with self.client.pipeline() as pipe:
                try:
                    pipe.watch(*names)
                    written = change(pipe.mget(names))
                    pipe.multi()
                    if written:
                        pipe.mset({self._key(version, k): v for k, v in written.items()})
                    pipe.execute()
                    return written
                except redis.WatchError:
                    continue

    def new_version(self) -> int:
        return int(self.client.incr(f"{self.prefix}:next_version"))

    def commit(self, version: int, manifest: dict) -> None:
        previous = self.current()
        self.client.set(self._key(version, MANIFEST), json.dumps(manifest).encode())
        self.client.set(f"{self.prefix}:current", version)
        keep = {v for v in (version, previous) if v is not None}
        for key in self.client.scan_iter(match=f"{self.prefix}:v*", count=1000):
            tag = key.decode().removeprefix(f"{self.prefix}:v").split(":", 1)[0]
            if tag.isdigit() and int(tag) not in keep:
                self.client.unlink(key)

    def close(self) -> None:
        self.client.close()


def _chunks(items: Iterable, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
