"""The file hash cache: hits are not read again, changed files are, missing files give None, two processes share it."""

from __future__ import annotations

import builtins
import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from medxpert_utils.core import hashing


def write(path: Path, data: bytes, age_s: float = 60.0) -> Path:
    """Write ``data`` with an mtime ``age_s`` in the past (old enough to be cached, see ``SETTLE_NS``)."""
    path.write_bytes(data)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Every file the code under test opens (by ``open``), in order."""
    names: list[str] = []
    real = builtins.open

    def counting(file, *args, **kwargs):
        names.append(os.fspath(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting)
    return names


def test_default_cache_lives_in_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDXPERT_DATA", str(tmp_path / "cache"))
    path = write(tmp_path / "a.bin", b"abc")
    assert hashing.sha256_file(path) == sha(b"abc")
    assert hashing.cache_path() == tmp_path / "cache" / hashing.CACHE_NAME and hashing.cache_path().is_file()


def test_a_hit_is_not_read_again(tmp_path, opened):
    db = tmp_path / "hashes.sqlite"
    paths = [write(tmp_path / f"{i}.bin", bytes([i]) * 100) for i in range(5)]
    assert hashing.current_sha256(paths, db=db) == [sha(bytes([i]) * 100) for i in range(5)]
    assert sorted(opened) == sorted(str(p) for p in paths)
    opened.clear()
    assert hashing.current_sha256(paths, workers=1, db=db) == [sha(bytes([i]) * 100) for i in range(5)]
    assert hashing.sha256_file(paths[0], db=db) == sha(bytes([0]) * 100)
    assert opened == []  # only stat-ed and looked up


def test_rewritten_file_gets_its_new_hash(tmp_path, opened):
    db = tmp_path / "hashes.sqlite"
    path = write(tmp_path / "a.bin", b"first", age_s=120)
    assert hashing.current_sha256([path], db=db) == [sha(b"first")]
    write(path, b"second version", age_s=60)  # new bytes, new size, new mtime
    opened.clear()
    assert hashing.current_sha256([path], db=db) == [sha(b"second version")]
    assert opened == [str(path)]
    assert hashing.lookup([path], db=db) == [hashing.FileRecord(sha(b"second version"), None)]


def test_same_size_new_mtime_is_hashed_again(tmp_path, opened):
    db = tmp_path / "hashes.sqlite"
    path = write(tmp_path / "a.bin", b"AAAA", age_s=120)
    assert hashing.sha256_file(path, db=db) == sha(b"AAAA")
    write(path, b"BBBB", age_s=60)  # same size, only the mtime tells
    opened.clear()
    assert hashing.sha256_file(path, db=db) == sha(b"BBBB")
    assert opened == [str(path)]


def test_missing_file_gives_none(tmp_path):
    db = tmp_path / "hashes.sqlite"
    path = write(tmp_path / "a.bin", b"abc")
    assert hashing.current_sha256([path], db=db) == [sha(b"abc")]
    path.unlink()
    assert hashing.current_sha256([path, tmp_path / "never.bin", tmp_path], db=db) == [None, None, None]
    assert hashing.lookup([path], db=db) == [None]
    with pytest.raises(FileNotFoundError):
        hashing.sha256_file(path, db=db)


def test_store_and_lookup_keep_the_callers_note(tmp_path):
    db = tmp_path / "hashes.sqlite"
    good, bad = write(tmp_path / "good.png", b"good"), write(tmp_path / "bad.png", b"bad")
    read = [hashing.read_file(good), hashing.read_file(bad)]
    assert read[0].data == b"good" and read[0].sha256 == sha(b"good") and read[0].stamp == hashing.stamp(good)
    hashing.store([(good, hashing.FileRecord(read[0].sha256, "")),
                   (bad, hashing.FileRecord(read[1].sha256, "truncated or corrupt PNG"))],
                  stamps=[r.stamp for r in read], db=db)
    assert hashing.lookup([bad, good, tmp_path / "other.png"], db=db) == [
        hashing.FileRecord(sha(b"bad"), "truncated or corrupt PNG"), hashing.FileRecord(sha(b"good"), ""), None]
    later = time.time() - 10
    os.utime(bad, (later, later))  # touched: same bytes, so the note survives re-hashing
    assert hashing.current_sha256([bad], db=db) == [sha(b"bad")]
    assert hashing.lookup([bad], db=db) == [hashing.FileRecord(sha(b"bad"), "truncated or corrupt PNG")]


def test_recently_modified_files_are_hashed_but_not_cached(tmp_path, opened):
    db = tmp_path / "hashes.sqlite"
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"just written")
    assert hashing.current_sha256([path], db=db) == [sha(b"just written")]
    assert hashing.lookup([path], db=db) == [None]
    opened.clear()
    assert hashing.current_sha256([path], db=db) == [sha(b"just written")]
    assert opened == [str(path)]


def test_unusable_cache_warns_and_still_hashes(tmp_path):
    db = tmp_path / "hashes.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    path = write(tmp_path / "a.bin", b"abc")
    with pytest.warns(RuntimeWarning, match="hash cache .*hashes.sqlite is not usable"):
        assert hashing.current_sha256([path], db=db) == [sha(b"abc")]


def _hash_in_child(paths: list[str], db: str) -> list[str | None]:
    return hashing.current_sha256(paths, workers=2, db=db)


def test_two_processes_share_the_cache(tmp_path):
    db = tmp_path / "hashes.sqlite"
    paths = [str(write(tmp_path / f"{i}.bin", os.urandom(1000))) for i in range(200)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_hash_in_child, [(paths, str(db)), (paths[::-1], str(db))])
    want = [sha(Path(p).read_bytes()) for p in paths]
    assert results[0] == want and results[1] == want[::-1]
    assert [r.sha256 if r else None for r in hashing.lookup(paths, db=db)] == want


def test_many_files_cached_in_one_query(tmp_path, monkeypatch):
    db = tmp_path / "hashes.sqlite"
    folder = tmp_path / "many"
    folder.mkdir()
    paths = [write(folder / f"{i}.bin", str(i).encode()) for i in range(3000)]
    want = hashing.current_sha256(paths, db=db)
    statements: list[str] = []
    real_cache = hashing._Cache

    class Counting(real_cache):
        def __init__(self, db):
            super().__init__(db)
            self.conn.set_trace_callback(statements.append)

    monkeypatch.setattr(hashing, "_Cache", Counting)
    assert hashing.current_sha256(paths, db=db) == want
    assert [s.split()[0].upper() for s in statements] == ["SELECT"]  # one query; no write, no transaction
