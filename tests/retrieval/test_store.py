"""The model folder's fingerprint: one definition of the digest, remembered in the folder so that a cold query does
not read every weight again."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from medxpert_utils.core import io
from medxpert_utils.retrieval import store


def _model_folder(root: Path, age_s: float = 60) -> Path:
    """A model-like folder (weights, config, a tokenizer in a subfolder, a dot file that is not hashed), its files
    last written ``age_s`` ago."""
    folder = root / "clip"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(3 << 20))
    (folder / "config.json").write_text('{"hidden": 32}')
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (folder / ".gitattributes").write_text("*.safetensors lfs\n")
    _age(folder, age_s)
    return folder


def _age(folder: Path, age_s: float) -> None:
    then = time.time_ns() - int(age_s * 1e9)
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(then, then))


def _expected(folder: Path) -> str:
    """The digest as recorded keys have always had it: name, NUL, content, 0x01 per non-dot file, sorted by path."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes() + b"\1")
    return digest.hexdigest()


@pytest.fixture()
def counted(monkeypatch):
    """Counts the folders :func:`store._hash_files` reads (its in-process memo cleared, so each call is cold)."""
    reads: list[str] = []
    real = store._hash_files

    def counting(folder: str, stamp: tuple) -> str:
        reads.append(folder)
        return real.__wrapped__(folder, stamp)

    monkeypatch.setattr(store, "_hash_files", counting)
    return reads


def test_the_digest_is_remembered_in_the_folder_and_not_read_again(tmp_path, counted):
    folder = _model_folder(tmp_path)
    first = store.weights_fingerprint(str(folder))
    assert first == _expected(folder) and counted == [str(folder.resolve())]
    saved = io.read_json(folder / store.FINGERPRINT_FILE)
    assert saved["sha256"] == first
    assert [f[0] for f in saved["files"]] == ["config.json", "model.safetensors", "tokenizer/vocab.txt"]

    assert store.weights_fingerprint(str(folder)) == first  # a second (cold) call: no weight read
    assert len(counted) == 1
    # without the stored file: the same digest, read again and stored again
    (folder / store.FINGERPRINT_FILE).unlink()
    assert store.weights_fingerprint(str(folder)) == first and len(counted) == 2
    assert (folder / store.FINGERPRINT_FILE).is_file()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # written atomically, nothing left over


def test_a_changed_file_changes_the_digest(tmp_path, counted):
    folder = _model_folder(tmp_path)
    before = store.weights_fingerprint(str(folder))
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size: only the mtime tells
    weights.write_bytes(bytes(data))
    after = store.weights_fingerprint(str(folder))
    assert after != before and after == _expected(folder) and len(counted) == 2
    # written just now: returned, but not remembered until its files are older than the hash (a same-size rewrite
    # in the same clock tick would otherwise keep a stale digest)
    assert io.read_json(folder / store.FINGERPRINT_FILE)["sha256"] == before
    _age(folder, 30)
    assert store.weights_fingerprint(str(folder)) == after and len(counted) == 3
    assert io.read_json(folder / store.FINGERPRINT_FILE)["sha256"] == after
    assert store.weights_fingerprint(str(folder)) == after and len(counted) == 3
    # a file added or removed changes the stamp too
    (folder / "extra.bin").write_bytes(b"x")
    _age(folder, 20)
    assert store.weights_fingerprint(str(folder)) == _expected(folder) != after
    (folder / "extra.bin").unlink()
    assert store.weights_fingerprint(str(folder)) == after and len(counted) == 5


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": 1, "sha256": "00", "files": []}',
                                     '{"format": 1, "sha256": 5, "files": [["a", 1]]}'])
def test_a_corrupt_file_is_ignored_and_rewritten(tmp_path, counted, content):
    folder = _model_folder(tmp_path)
    (folder / store.FINGERPRINT_FILE).write_text(content)
    assert store.weights_fingerprint(str(folder)) == _expected(folder) and len(counted) == 1
    assert io.read_json(folder / store.FINGERPRINT_FILE)["sha256"] == _expected(folder)


def test_a_stored_digest_for_other_files_is_not_trusted(tmp_path, counted):
    folder = _model_folder(tmp_path)
    digest = store.weights_fingerprint(str(folder))
    saved = io.read_json(folder / store.FINGERPRINT_FILE)
    saved["sha256"] = "f" * 64
    saved["files"][1][1] += 1  # another size of the weights
    (folder / store.FINGERPRINT_FILE).write_text(json.dumps(saved))
    assert store.weights_fingerprint(str(folder)) == digest and len(counted) == 2


def test_a_read_only_folder_still_works(tmp_path, monkeypatch):
    folder = _model_folder(tmp_path)
    expected = _expected(folder)
    store._hash_files.cache_clear()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root writes anyway: make the write fail as it would for anyone else
            def refuse(*args, **kwargs):
                raise PermissionError(13, "Permission denied", str(folder / store.FINGERPRINT_FILE))

            monkeypatch.setattr(store.io, "write_json", refuse)
        assert store.weights_fingerprint(str(folder)) == expected
        assert not (folder / store.FINGERPRINT_FILE).exists()
        # nothing remembered on disk: the in-process memo still spares a second reading
        assert store.weights_fingerprint(str(folder)) == expected
        assert store._hash_files.cache_info().hits == 1
    finally:
        folder.chmod(0o755)


def test_an_unresolved_spec_is_named(tmp_path):
    assert store.weights_fingerprint(str(tmp_path / "nowhere")) == f"unresolved:{tmp_path / 'nowhere'}"
