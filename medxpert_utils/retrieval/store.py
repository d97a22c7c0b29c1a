"""The embedding store of a run (the leaf the index, metrics and search read): ``embeddings/<model>/`` for model in
{zero_shot, fine_tuned}.

Layout (docs/contracts.md, "Embeddings"):

* ``image.npy``, ``text.npy`` - float32, L2-normalised, one row per manifest row of the evaluated
  split (params ``embed.eval_split``), in manifest order; ``ids.parquet`` - ``study_id``,
  ``report_group`` (same normalised report text -> same group, ids 0..G-1 within the split).
* ``corpus/`` - the same three files for the search corpus (params ``embed.corpus_splits``).
* ``rows.parquet`` (in both folders) - what hits show: manifest ``row``, ``study_id``, ``image_path``,
  ``report``, ``split``, ``report_group`` and the 14 label columns.
* ``cache_key.json`` - the key of the model files, the manifest content and the embedding stage's params
  (:func:`cache_key`), written last: a rerun with the same inputs reuses the files, any change recomputes them.

The eval split and the corpus are embedded once, as one set of rows, and sliced. Each distinct
report text is embedded once and broadcast to its rows.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medxpert_utils.core import hashing, io
from medxpert_utils.core.errors import RunNotReadyError

if TYPE_CHECKING:  # pandas loads where tables are built or read whole; a query reads its rows with read_columns
    import pandas as pd
    import pyarrow as pa

    from medxpert_utils.core.config import Config

CACHE_KEY_FILE = "cache_key.json"
IDS_FILE = "ids.parquet"
ROWS_FILE = "rows.parquet"
CORPUS_DIR = "corpus"
META_COLUMNS = ("study_id", "image_path", "report", "split")
_HASH_CHUNK = 1 << 22
# The model folder's digest and the stamp of its files, kept in the folder (a dot file: not hashed itself)
FINGERPRINT_FILE = ".medxpert-fingerprint.json"


# --- reading ------------------------------------------------------------------------------------------------

@dataclass
class Embeddings:
    """One saved embedding folder: vectors, ids and per-row metadata, plus its cache key."""

    path: Path
    image: np.ndarray
    text: np.ndarray
    ids: pd.DataFrame
    rows: pd.DataFrame
    cache_key: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def load_embeddings(folder: str | os.PathLike, corpus: bool = False, mmap: bool = False) -> Embeddings:
    """Load ``embeddings/<model>/`` (or its ``corpus/`` with ``corpus=True``).

    Raises :class:`RunNotReadyError` naming notebook 02 when the folder is incomplete.
    """
    import pandas as pd

    root = Path(folder)
    where = root / CORPUS_DIR if corpus else root
    needed = [where / "image.npy", where / "text.npy", where / IDS_FILE, where / ROWS_FILE, root / CACHE_KEY_FILE]
    missing = [p for p in needed if not p.is_file()]
    if missing:
        from medxpert_utils.core import stages

        run = root.parent.parent.name if root.parent.name == "embeddings" else None
        raise RunNotReadyError(f"embeddings missing at {where} ({missing[0].name}) - {stages.hint('02', run)}")
    mode: Literal["r"] | None = "r" if mmap else None
    return Embeddings(path=where, image=np.load(where / "image.npy", mmap_mode=mode),
                      text=np.load(where / "text.npy", mmap_mode=mode), ids=pd.read_parquet(where / IDS_FILE),
                      rows=pd.read_parquet(where / ROWS_FILE), cache_key=io.read_json(root / CACHE_KEY_FILE))


def read_columns(path: str | os.PathLike, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    """Columns of a parquet file (``rows.parquet``, ``ids.parquet``) as numpy arrays, without pandas: numbers in
    their own type (float64 with NaN where a value is missing), anything else as an object array (text as str,
    missing as None).

    For a query's corpus rows: pyarrow's own ``to_numpy`` goes through its pandas bridge, which imports pandas
    (a few tenths of a second of a cold ``medxpert search``), so numbers are read from the Arrow buffers.
    """
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read(columns=columns)  # not read_table: its dataset layer imports pandas
    return {name: _to_numpy(table.column(name).combine_chunks()) for name in table.column_names}


def _to_numpy(array: "pa.Array") -> np.ndarray:
    import pyarrow as pa

    kind = array.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)) or len(array) == 0:
        return np.array(array.to_pylist(), dtype=object)
    letter = "float" if pa.types.is_floating(kind) else "uint" if pa.types.is_unsigned_integer(kind) else "int"
    end = array.offset + len(array)
    validity, data = array.buffers()[:2]
    values = np.frombuffer(data, dtype=np.dtype(f"{letter}{kind.bit_width}"), count=end)[array.offset:]
    if not array.null_count:
        return values.copy()
    present = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), count=end, bitorder="little")[array.offset:]
    return np.where(present.astype(bool), values, np.nan)


# --- cache key ----------------------------------------------------------------------------------------------

def _hash_folder(folder: Path) -> str:
    """The content hash of ``folder``'s files (dot files excluded), remembered in :data:`FINGERPRINT_FILE`.

    A cold ``medxpert search`` checks the model it loads against the one its corpus was embedded with; reading a
    full-size CLIP (~600 MB) for that on every query would cost more than the query. So the digest is written
    into the folder beside a stamp of its files (name, size, mtime in ns) and trusted while the stamp is unchanged.
    The digest itself is exactly :func:`_hash_files`' (recorded keys compare against it). A folder that cannot be
    written (a read-only cache) is hashed as before, once per process.
    """
    started = time.time_ns()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    stamp = _stamp(folder, files)
    stored = _stored_digest(folder, stamp)
    if stored is not None:
        return stored
    digest = _hash_files(str(folder.resolve()), stamp)
    # Remember it only for files settled before the hashing began (core.hashing's rule): a file rewritten within
    # the same clock tick as its stamp, with the same size, would otherwise keep the old digest for good.
    if all(mtime < started - hashing.SETTLE_NS for _, _, mtime in stamp) and _stamp(folder, files) == stamp:
        _store_digest(folder, stamp, digest)
    return digest


def _stamp(folder: Path, files: list[Path]) -> tuple[tuple[str, int, int], ...]:
    stats = [(p, p.stat()) for p in files]
    return tuple((p.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns) for p, st in stats)


def _stored_digest(folder: Path, stamp: tuple[tuple[str, int, int], ...]) -> str | None:
    """The digest :data:`FINGERPRINT_FILE` holds when its stamp is ``stamp``; None when absent, unreadable or
    stale."""
    try:
        saved = io.read_json(folder / FINGERPRINT_FILE)
        files = tuple((str(name), int(size), int(mtime)) for name, size, mtime in saved["files"])
        digest = saved["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = saved.get("format") == 1 and files == stamp and isinstance(digest, str) and len(digest) == 64
    return digest if ok else None


def _store_digest(folder: Path, stamp: tuple[tuple[str, int, int], ...], digest: str) -> None:
    try:
        io.write_json(folder / FINGERPRINT_FILE, {"format": 1, "sha256": digest, "files": [list(f) for f in stamp]})
    except OSError:  # a read-only folder (e.g. a shared Hugging Face cache): hash it once per process instead
        pass


@functools.lru_cache(maxsize=16)
def _hash_files(folder: str, stamp: tuple) -> str:
    """Content hash of the files in ``stamp``; memoised on (name, size, mtime) so a big model is read once."""
    digest = hashlib.sha256()
    for relative, _, _ in stamp:
        digest.update(relative.encode() + b"\0")
        with open(Path(folder) / relative, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
        digest.update(b"\1")
    return digest.hexdigest()


def _local_model_folder(spec: str) -> Path | None:
    """The folder a spec loads from: itself, or the Hugging Face cache snapshot of a hub id."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:  # not cached / not a hub id: loading will say what is missing
        return None


def weights_fingerprint(spec: str) -> str:
    """sha256 of every file of the model folder (weights, config, tokenizer, image processor), read once per
    version of its files: remembered in the folder's ``.medxpert-fingerprint.json`` (see :func:`_hash_folder`)."""
    folder = _local_model_folder(spec)
    return _hash_folder(folder) if folder is not None else f"unresolved:{spec}"


def cache_key(cfg: "Config", model: str, spec: str, frame: "pd.DataFrame") -> dict[str, Any]:
    """Inputs that decide one model's embeddings, as one key (:func:`medxpert_utils.core.keys.digest`): the
    embedding stage's declared params and version, the manifest's content and the model's files.

    Finer than the stage's key: a retrained CLIP changes the fine-tuned vectors' key but not the zero-shot ones'.
    """
    from medxpert_utils.core import keys, stages
    from medxpert_utils.data.manifest import content_hash

    stage = stages.get("02")
    inputs = {"model": model, "weights_sha256": weights_fingerprint(spec), "manifest_sha256": content_hash(frame)}
    values = keys.declared_values(stage, keys.flatten(cfg.to_dict()), without=("index", "query_check"))
    # The spec (a folder path) is recorded but not hashed: a copied run with the same files reuses its vectors.
    return {"key": keys.digest(stage.version, values, inputs), "version": stage.version, **inputs,
            "model_spec": spec}


def is_cached(folder: str | os.PathLike, key: dict[str, Any]) -> bool:
    """True when ``folder`` holds complete embeddings written under ``key``."""
    root = Path(folder)
    try:
        saved = io.read_json(root / CACHE_KEY_FILE)
    except (OSError, ValueError):
        return False
    files = [root / n for n in ("image.npy", "text.npy", IDS_FILE, ROWS_FILE)]
    files += [root / CORPUS_DIR / n for n in ("image.npy", "text.npy", IDS_FILE, ROWS_FILE)]
    return saved.get("key") == key["key"] and all(p.is_file() for p in files)


# --- writing ------------------------------------------------------------------------------------------------

def row_table(frame: "pd.DataFrame", positions: np.ndarray) -> "pd.DataFrame":
    import pandas as pd

    from medxpert_utils.data.labels import CHEXPERT_LABELS
    from medxpert_utils.data.manifest import report_groups

    part = frame.iloc[positions]
    rows = pd.DataFrame({"row": positions.astype(np.int64)})
    for col in META_COLUMNS:
        rows[col] = part[col].astype(str).to_numpy()
    rows["report_group"] = report_groups(rows["report"].tolist())
    for label in CHEXPERT_LABELS:
        rows[label] = part[label].astype("Int8").to_numpy()
    return rows


def write_set(folder: Path, image: np.ndarray, text: np.ndarray, rows: "pd.DataFrame") -> None:
    io.write_npy(folder / "image.npy", np.ascontiguousarray(image, dtype=np.float32))
    io.write_npy(folder / "text.npy", np.ascontiguousarray(text, dtype=np.float32))
    io.write_parquet(folder / IDS_FILE, rows[["study_id", "report_group"]])
    io.write_parquet(folder / ROWS_FILE, rows)
