"""Downloading and unpacking public dataset archives into ``data/``: resumable, checksummed, safe.

A download goes to ``<file>.part`` and resumes with an HTTP Range request when interrupted. The
finished file's sha256 is checked against the expected value when one is known (a table in the
calling module), else against ``checksums.json`` beside the file, where the first completed
download records it. That record only proves later runs see the same bytes as the first one;
it cannot prove the first download was the publisher's file. Archives are extracted with
tarfile's ``data`` filter plus our own checks: no absolute paths, no ``..``, no links or devices.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import httpx

from medxpert_utils.core import io
from medxpert_utils.core.errors import MissingModelError, UserError
from medxpert_utils.core.progress import tqdm

CHECKSUMS_FILE = "checksums.json"
_CHUNK = 1 << 20


class ChecksumError(UserError, ValueError):
    """A downloaded file's sha256 differs from the expected one."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_checksum(path: Path) -> str | None:
    table = path.parent / CHECKSUMS_FILE
    if not table.is_file():
        return None
    try:
        return json.loads(table.read_text(encoding="utf-8")).get(path.name)
    except (OSError, ValueError):
        return None


def record_checksum(path: Path, sha256: str) -> None:
    table = path.parent / CHECKSUMS_FILE
    try:
        known = json.loads(table.read_text(encoding="utf-8")) if table.is_file() else {}
    except (OSError, ValueError):
        known = {}
    known[path.name] = sha256
    io.write_json(table, dict(sorted(known.items())))


def verify_checksum(path: Path, expected: str | None = None) -> str:
    """Check ``path`` against ``expected`` or its ``checksums.json`` entry (recording it when new)."""
    actual = sha256_file(path)
    wanted = expected or recorded_checksum(path)
    if wanted and actual.lower() != wanted.lower():
        raise ChecksumError(
            f"checksum mismatch for {path.name}: expected sha256 {wanted[:16]}..., got {actual[:16]}... - "
            f"delete {path} and download it again"
        )
    if not recorded_checksum(path):
        record_checksum(path, actual)
    return actual


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, progress: bool = True,
             timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``dest`` (resuming a ``.part`` file), verify its checksum, return ``dest``.

    An existing ``dest`` is verified, not fetched again. On a checksum mismatch the bad download
    is deleted and :class:`ChecksumError` raised; network failures raise
    :class:`~medxpert_utils.core.errors.MissingModelError` and keep the partial file for the next try.
    """
    dest = Path(dest)
    if dest.is_file():
        verify_checksum(dest, sha256)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        _fetch(url, part, progress, timeout)
    except (httpx.HTTPError, OSError) as exc:
        raise MissingModelError(
            f"cannot download {url} ({_reason(exc)}): connect to the internet and run again (it resumes), or "
            f"place {dest.name} in {dest.parent}; use the demo profile to run offline"
        ) from None
    actual = sha256_file(part)
    wanted = sha256 or recorded_checksum(dest)
    if wanted and actual.lower() != wanted.lower():
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"checksum mismatch for {dest.name} downloaded from {url}: expected sha256 {wanted[:16]}..., "
            f"got {actual[:16]}... - the download was deleted; run again, or check the URL"
        )
    os.replace(part, dest)
    if not recorded_checksum(dest):
        record_checksum(dest, actual)
    return dest


def _fetch(url: str, part: Path, progress: bool, timeout: float) -> None:
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Accept-Encoding": "identity"}  # the archive's bytes as stored, so sizes and checksums match
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as response:
        if response.status_code == 416 and offset:
            return  # the server has nothing past what we hold: the .part file is complete
        response.raise_for_status()
        if response.status_code != 206:
            offset = 0  # the server ignored the Range header: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        received = 0
        with open(part, "ab" if offset else "wb") as handle, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[:-5], disable=not progress,
            mininterval=1.0,
        ) as bar:
            for block in response.iter_raw():  # as received: an interruption keeps what arrived
                handle.write(block)
                received += len(block)
                bar.update(len(block))
        if length and length.isdigit() and received < int(length):
            raise OSError(f"connection closed after {offset + received} of {total} bytes")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{exc.__class__.__name__}: {text[:100]}" if text else exc.__class__.__name__


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or Path(name).is_absolute() or ".." in parts or (parts and ":" in parts[0]):
        raise UserError(f"unsafe path '{name}' in {archive.name} - refusing to extract it; the archive may be "
                        "tampered with")
    if not (member.isfile() or member.isdir()):
        raise UserError(f"archive {archive.name} holds a link or special file '{name}' - refusing to extract it")


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a tar(.gz) archive into ``dest`` atomically, refusing unsafe members.

    Everything is unpacked into a temporary folder beside ``dest`` and renamed into place, so an
    interrupted extraction never leaves a half-filled ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, archive)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Python without extraction filters; members were checked above
                    tar.extractall(tmp, members=members)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UserError(f"cannot extract {archive.name} ({_reason(exc)}) - delete it and download it "
                            "again") from None
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
