"""Content hashes of files, computed once and kept in a SQLite cache keyed by (path, size, mtime).

The cache (``data/.file_hashes.sqlite`` under :func:`~medxpert_utils.core.paths.data_dir`, or the ``db``
argument) holds one row per absolute path: the size and ``st_mtime_ns`` the file had when it was read,
the sha256 of its bytes and an optional ``note``, a verdict the caller stores with the hash (the data
stage stores ``""`` for an image it decoded and the reason for one it could not decode; ``None`` means no
verdict). A row counts only while the file's size and mtime are still the ones recorded, so a rewritten
file is read again. Rows for files modified in the last two seconds are not kept: a filesystem with
coarse timestamps could give a second write within the same tick the same mtime.

Several processes may use the cache at once (SQLite locking, with a wait); the cache is only an
optimisation, so a cache that cannot be opened or written (a read-only data folder) gives a warning and
everything is hashed from the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from medxpert_utils.core.paths import data_dir
from medxpert_utils.core.progress import tqdm

CACHE_NAME = ".file_hashes.sqlite"
SETTLE_NS = 2_000_000_000  # files modified more recently than this are hashed but not cached (see the docstring)
DEFAULT_WORKERS = max(1, min(8, os.cpu_count() or 1))
_SCHEMA_VERSION = 1
_CHUNK = 1 << 20
_STAT_BATCH = 2048
_LOCK_WAIT_S = 60.0

PathLike = str | os.PathLike


class FileRecord(NamedTuple):
    """What the cache knows of one file: the sha256 (hex) of its bytes and the caller's verdict, if any."""

    sha256: str
    note: str | None = None


class FileStamp(NamedTuple):
    """The size and modification time a file had when it was read: a cached row is valid while they match."""

    size: int
    mtime_ns: int


class FileContent(NamedTuple):
    """The bytes of a file, their sha256 and the file's stamp (None when the file changed while it was read)."""

    data: bytes
    sha256: str
    stamp: FileStamp | None


def cache_path() -> Path:
    """The default cache file, in the data folder (``MEDXPERT_DATA``); read at each call."""
    return data_dir() / CACHE_NAME


def stamp(path: PathLike) -> FileStamp | None:
    """The file's current size and mtime; None when it is gone or is not a regular file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileStamp(st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def stamp_all(paths: Sequence[PathLike], workers: int = DEFAULT_WORKERS) -> list[FileStamp | None]:
    """:func:`stamp` of every path, in order; threads help where ``stat`` is slow (network storage)."""
    items = list(paths)
    if workers <= 1 or len(items) <= _STAT_BATCH:
        return [stamp(p) for p in items]
    chunks = [items[i:i + _STAT_BATCH] for i in range(0, len(items), _STAT_BATCH)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [s for chunk in pool.map(lambda c: [stamp(p) for p in c], chunks) for s in chunk]


def _unchanged(before: os.stat_result, after: os.stat_result, size: int) -> FileStamp | None:
    """The stamp of a file read from ``before`` to ``after``, None when it changed while it was read."""
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or size != after.st_size:
        return None
    return FileStamp(size, after.st_mtime_ns)


def read_file(path: PathLike) -> FileContent:
    """Read a whole file and hash it in the same pass; raises ``OSError`` when it cannot be read."""
    with open(path, "rb") as handle:
        before = os.fstat(handle.fileno())
        data = handle.read()
        after = os.fstat(handle.fileno())
    return FileContent(data, hashlib.sha256(data).hexdigest(), _unchanged(before, after, len(data)))


def _hash_file(path: PathLike) -> tuple[str, FileStamp | None]:
    """sha256 of a file read in chunks (never whole in memory) and its stamp (see :func:`_unchanged`)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        before = os.fstat(handle.fileno())
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        after = os.fstat(handle.fileno())
    return digest.hexdigest(), _unchanged(before, after, size)


def _key(path: PathLike) -> str:
    return os.path.abspath(os.fspath(path))


Row = tuple[str, int, int, str, str | None]  # path, size, mtime_ns, sha256, note


class _Cache:
    """The open cache file; every failure turns into one warning and an empty answer."""

    def __init__(self, db: PathLike | None):
        self.target = Path(db) if db is not None else cache_path()
        self.conn: sqlite3.Connection | None = None
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(self.target), timeout=_LOCK_WAIT_S)
            if self.conn.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
                with self.conn:
                    self.conn.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT "
                                      "NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, note TEXT) WITHOUT ROWID")
                    self.conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as exc:
            self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        warnings.warn(f"file hash cache {self.target} is not usable ({exc}); hashing from the files - delete it "
                      "or make its folder writable to cache again", RuntimeWarning, stacklevel=4)
        self.close()

    def query(self, keys: Sequence[str]) -> dict[int, tuple[FileStamp, FileRecord]]:
        """Cached rows of ``keys`` by position, in one query (the keys travel as one JSON array)."""
        if self.conn is None or not keys:
            return {}
        try:
            rows = self.conn.execute("SELECT j.key, f.size, f.mtime_ns, f.sha256, f.note FROM json_each(?) AS j "
                                     "JOIN files AS f ON f.path = j.value", (json.dumps(list(keys)),)).fetchall()
        except sqlite3.Error as exc:
            self._give_up(exc)
            return {}
        return {int(i): (FileStamp(size, mtime), FileRecord(sha, note)) for i, size, mtime, sha, note in rows}

    def write(self, rows: Sequence[Row]) -> None:
        """Keep ``rows`` in one transaction."""
        if self.conn is None or not rows:
            return
        try:
            with self.conn:
                self.conn.executemany("INSERT OR REPLACE INTO files (path, size, mtime_ns, sha256, note) "
                                      "VALUES (?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            self._give_up(exc)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def __enter__(self) -> "_Cache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _settled(s: FileStamp | None, now_ns: int) -> bool:
    return s is not None and s.mtime_ns <= now_ns - SETTLE_NS


def lookup(paths: Sequence[PathLike], *, db: PathLike | None = None,
           workers: int = DEFAULT_WORKERS) -> list[FileRecord | None]:
    """The cached record of each file, None where the cache has none for its current size and mtime."""
    keys = [_key(p) for p in paths]
    current = stamp_all(keys, workers)
    with _Cache(db) as cache:
        cached = cache.query(keys)
    out: list[FileRecord | None] = [None] * len(keys)
    for i, (was, record) in cached.items():
        if current[i] is not None and current[i] == was:
            out[i] = record
    return out


def store(items: Sequence[tuple[PathLike, FileRecord]], *, stamps: Sequence[FileStamp | None] | None = None,
          db: PathLike | None = None) -> None:
    """Keep ``(path, record)`` pairs, each under the stamp the file had when it was read.

    ``stamps`` (one per item, e.g. :attr:`FileContent.stamp`) are those stamps; without them each file is
    stamped now, so call it right after reading. Items with a None stamp (the file changed while it was
    read, or is gone) and files modified in the last two seconds are not kept.
    """
    now = time.time_ns()
    given = list(stamps) if stamps is not None else [stamp(p) for p, _ in items]
    rows = [(_key(p), s.size, s.mtime_ns, r.sha256, r.note)
            for (p, r), s in zip(items, given) if s is not None and _settled(s, now)]
    with _Cache(db) as cache:
        cache.write(rows)


def sha256_file(path: PathLike, *, db: PathLike | None = None) -> str:
    """sha256 (hex) of a file's bytes, from the cache when its size and mtime are unchanged.

    Raises ``OSError`` (``FileNotFoundError`` for a missing file) when the file cannot be read.
    """
    found = current_sha256([path], workers=1, db=db)[0]
    return found if found is not None else _hash_file(path)[0]  # hashing again raises the OSError that says why


def current_sha256(paths: Sequence[PathLike], workers: int = DEFAULT_WORKERS, progress: bool = False, *,
                   db: PathLike | None = None) -> list[str | None]:
    """The sha256 (hex) of each file as it is now; None for a file that is gone or cannot be read.

    Files whose size and mtime match the cache are only ``stat``-ed (and looked up in one query); the
    others are read and hashed on ``workers`` threads and cached. A re-hashed file whose bytes did not
    change (it was only touched) keeps the note stored with it.
    """
    keys = [_key(p) for p in paths]
    current = stamp_all(keys, workers)
    out: list[str | None] = [None] * len(keys)
    with _Cache(db) as cache:
        cached = cache.query(keys)
        todo = []
        for i, s in enumerate(current):
            hit = cached.get(i)
            if s is not None and hit is not None and hit[0] == s:
                out[i] = hit[1].sha256
            elif s is not None:
                todo.append(i)
        if not todo:
            return out

        def rehash(i: int) -> tuple[str, FileStamp | None] | None:
            try:
                return _hash_file(keys[i])
            except OSError:
                return None

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = list(tqdm(pool.map(rehash, todo), total=len(todo), desc="hashing files", unit="file",
                                disable=not progress, mininterval=1.0))
        now, rows = time.time_ns(), []
        for i, result in zip(todo, results):
            if result is None:
                continue
            sha, s = result
            out[i] = sha
            if s is not None and _settled(s, now):
                old = cached.get(i)
                note = old[1].note if old is not None and old[1].sha256 == sha else None
                rows.append((keys[i], s.size, s.mtime_ns, sha, note))
        cache.write(rows)
    return out
