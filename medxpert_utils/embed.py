"""CLIP embeddings of a run's manifest: ``embeddings/<model>/`` for model in {zero_shot, fine_tuned}.

Layout (DESIGN.md "Embeddings"):

* ``image.npy``, ``text.npy`` - float32, L2-normalised, one row per manifest row of the evaluated
  split (params ``embed.eval_split``), in manifest order; ``ids.parquet`` - ``study_id``,
  ``report_group`` (same normalised report text -> same group, ids 0..G-1 within the split).
* ``corpus/`` - the same three files for the search corpus (params ``embed.corpus_splits``).
* ``rows.parquet`` (in both folders) - what hits show: manifest ``row``, ``study_id``, ``image_path``,
  ``report``, ``split``, ``report_group`` and the 14 label columns.
* ``cache_key.json`` - hash of the model files, the manifest content and the preprocessing params,
  written last: a rerun with the same inputs reuses the files, any change recomputes them.

The eval split and the corpus are embedded once, as one set of rows, and sliced. Each distinct
report text is embedded once and broadcast to its rows.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from medxpert_utils import io
from medxpert_utils.errors import ImageLoadError, RunNotReadyError, UserError

if TYPE_CHECKING:
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from medxpert_utils.config import Config

EMBED_VERSION = "embed-v1"  # bump when the embedding code changes what it produces
CACHE_KEY_FILE = "cache_key.json"
IDS_FILE = "ids.parquet"
ROWS_FILE = "rows.parquet"
CORPUS_DIR = "corpus"
META_COLUMNS = ("study_id", "image_path", "report", "split")
_HASH_CHUNK = 1 << 22


# --- loading ------------------------------------------------------------------------------------------------

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
    root = Path(folder)
    where = root / CORPUS_DIR if corpus else root
    needed = [where / "image.npy", where / "text.npy", where / IDS_FILE, where / ROWS_FILE, root / CACHE_KEY_FILE]
    missing = [p for p in needed if not p.is_file()]
    if missing:
        raise RunNotReadyError(f"embeddings missing at {where} ({missing[0].name}) - run notebook 02 "
                               "(02_embed_index) first")
    mode = "r" if mmap else None
    return Embeddings(path=where, image=np.load(where / "image.npy", mmap_mode=mode),
                      text=np.load(where / "text.npy", mmap_mode=mode), ids=pd.read_parquet(where / IDS_FILE),
                      rows=pd.read_parquet(where / ROWS_FILE), cache_key=io.read_json(root / CACHE_KEY_FILE))


# --- cache key ----------------------------------------------------------------------------------------------

def _hash_folder(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    stamp = tuple((p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _hash_files(str(folder.resolve()), stamp)


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
    """sha256 of every file of the model folder (weights, config, tokenizer, image processor)."""
    folder = _local_model_folder(spec)
    return _hash_folder(folder) if folder is not None else f"unresolved:{spec}"


def cache_key(cfg: "Config", model: str, spec: str, frame: pd.DataFrame) -> dict[str, Any]:
    """Inputs that decide the embeddings: model files, manifest content, preprocessing and splits."""
    from medxpert_utils.data.manifest import content_hash

    components = {
        "version": EMBED_VERSION,
        "model": model,
        "weights_sha256": weights_fingerprint(spec),
        "manifest_sha256": content_hash(frame),
        "max_length": cfg.clip.max_length,
        "eval_split": cfg.embed.eval_split,
        "corpus_splits": sorted(cfg.embed.corpus_splits),
    }
    blob = json.dumps(components, sort_keys=True).encode()
    # The spec (a folder path) is recorded but not hashed: a copied run with the same files reuses its vectors.
    return {"key": hashlib.sha256(blob).hexdigest()[:20], **components, "model_spec": spec}


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


# --- embedding ----------------------------------------------------------------------------------------------

def _autocast(device: "torch.device", mixed_precision: str = "auto"):
    import torch

    from medxpert_utils.runtime import autocast_dtype

    dtype = autocast_dtype(device, mixed_precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _progress(total: int, desc: str, unit: str, show: bool):
    from medxpert_utils.progress import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not show, dynamic_ncols=True)


def image_transform(processor: "CLIPProcessor"):
    """The evaluation transform (PIL image -> (3, H, W) tensor) matching training's validation."""
    from medxpert_utils.data.transforms import eval_image_transform

    return eval_image_transform(processor)


def embed_images(model: "CLIPModel", processor: "CLIPProcessor", paths: Sequence[str], batch_size: int = 64,
                 num_workers: int = 0, device: Any = None, mixed_precision: str = "auto", progress: bool = True,
                 transform: Any = None) -> np.ndarray:
    """L2-normalised image embeddings (n, dim) float32 of the image files, decoded by DataLoader workers.

    Every file must be readable (the contract is one row per manifest row): an unreadable one
    raises :class:`ImageLoadError` naming it after the pass, with the count of bad files.
    """
    import torch
    from torch.utils.data import DataLoader

    from medxpert_utils.clip import image_features
    from medxpert_utils.data.torchdata import ImageDataset, collate_images

    device = torch.device(device) if device is not None else next(model.parameters()).device
    paths = [os.fspath(p) for p in paths]
    dataset = ImageDataset(paths, transform or image_transform(processor))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_images, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if num_workers else None)
    out = np.empty((len(dataset), model.config.projection_dim), dtype=np.float32)
    done = np.zeros(len(dataset), dtype=bool)
    with torch.inference_mode(), _autocast(device, mixed_precision), \
            _progress(len(dataset), "images", "img", progress) as bar:
        for batch in loader:
            if batch["n"]:
                feats = image_features(model, batch["pixel_values"].to(device, non_blocking=True))
                index = batch["index"].numpy()
                out[index] = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
                done[index] = True
            bar.update(batch["n"] + batch["n_skipped"])
    if not done.all():
        bad = np.flatnonzero(~done)
        raise ImageLoadError(f"{len(bad)} image(s) could not be read, first '{paths[bad[0]]}' - fix or remove them "
                             "and rebuild the manifest (notebook 00)")
    return out


def text_token_limit(model: "CLIPModel", max_length: int) -> int:
    """Tokens kept per report: params ``clip.max_length`` capped by the text tower's positions."""
    return min(int(max_length), int(model.config.text_config.max_position_embeddings))


def embed_texts(model: "CLIPModel", processor: "CLIPProcessor", texts: Sequence[str], batch_size: int = 64,
                max_length: int = 77, device: Any = None, mixed_precision: str = "auto",
                progress: bool = True) -> np.ndarray:
    """L2-normalised text embeddings (n, dim) float32; each distinct text is embedded once, truncated
    to ``max_length`` tokens (capped by the model), in length-sorted batches to limit padding."""
    import torch

    from medxpert_utils.clip import text_features

    device = torch.device(device) if device is not None else next(model.parameters()).device
    texts = ["" if t is None else str(t) for t in texts]
    distinct, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    order = np.argsort([len(t) for t in distinct], kind="stable")
    limit = text_token_limit(model, max_length)
    unique_out = np.empty((len(distinct), model.config.projection_dim), dtype=np.float32)
    with torch.inference_mode(), _autocast(device, mixed_precision), \
            _progress(len(distinct), "reports", "report", progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            tokens = processor.tokenizer([distinct[i] for i in idx], padding=True, truncation=True,
                                         max_length=limit, return_tensors="pt")
            feats = text_features(model, tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
            unique_out[idx] = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
            bar.update(len(idx))
    return unique_out[np.asarray(inverse).reshape(-1)]


# --- a run --------------------------------------------------------------------------------------------------

def _row_table(frame: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
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


def _write_set(folder: Path, image: np.ndarray, text: np.ndarray, rows: pd.DataFrame) -> None:
    io.write_npy(folder / "image.npy", np.ascontiguousarray(image, dtype=np.float32))
    io.write_npy(folder / "text.npy", np.ascontiguousarray(text, dtype=np.float32))
    io.write_parquet(folder / IDS_FILE, rows[["study_id", "report_group"]])
    io.write_parquet(folder / ROWS_FILE, rows)


def _model_spec(cfg: "Config", model: str) -> str:
    from medxpert_utils import clip

    specs = clip.model_specs(cfg)
    if model not in specs:
        raise UserError(f"unknown model '{model}' - choose one of {', '.join(specs)}")
    spec = specs[model]
    local = Path(spec)
    looks_local = local.is_absolute() or spec.startswith((".", "~"))
    if looks_local and not (local / "config.json").is_file():
        raise RunNotReadyError(f"{model} CLIP not found at {local} - run notebook 01 (01_clip_finetune) first")
    return spec


def embed_run(cfg: "Config", model_name: str, force: bool = False, progress: bool = True) -> Path:
    """Embed the eval split and the search corpus of ``cfg``'s run with one model; returns the folder.

    Reuses the saved files when their cache key matches (same model files, manifest and
    preprocessing params) unless ``force``. The run summary (rows, dim, seconds) is kept
    in ``cache_key.json`` under ``stats``. Under ``accelerate launch`` / ``torchrun`` with several
    processes each embeds its contiguous share of the rows on its own device and the main process
    assembles and writes the files (a folder all processes can read, as on one machine).
    """
    from medxpert_utils import clip, runtime
    from medxpert_utils.data import manifest
    from medxpert_utils.distributed import Distributed

    frame = manifest.read(cfg.run_dir)
    spec = _model_spec(cfg, model_name)
    key = cache_key(cfg, model_name, spec, frame)
    out = cfg.paths.embeddings(model_name)
    dist = Distributed.create(cfg.device)
    is_main = dist is None or dist.is_main
    if not force and is_cached(out, key):
        if is_main:
            _refresh_paths(out, frame)
            for folder in (out, out / CORPUS_DIR):  # a copied run: record where its model lives now
                saved = io.read_json(folder / CACHE_KEY_FILE)
                if saved.get("model_spec") != spec:
                    io.write_json(folder / CACHE_KEY_FILE, {**saved, "model_spec": spec})
        if dist:
            dist.barrier()
        return out

    eval_mask = (frame["split"] == cfg.embed.eval_split).to_numpy()
    corpus_mask = frame["split"].isin(cfg.embed.corpus_splits).to_numpy()
    if not eval_mask.any():
        raise UserError(f"the manifest has no '{cfg.embed.eval_split}' rows to evaluate - check embed.eval_split "
                        "and data.split")
    if not corpus_mask.any():
        raise UserError(f"the manifest has no rows in embed.corpus_splits {cfg.embed.corpus_splits} - fix params")
    positions = np.flatnonzero(eval_mask | corpus_mask)
    mine = np.array_split(positions, dist.world)[dist.rank] if dist else positions
    t0 = time.perf_counter()
    device = dist.acc.device if dist else runtime.get_device(cfg.device)
    model, processor = clip.load_clip(spec, device)
    mixed = cfg.train.mixed_precision
    workers = runtime.default_num_workers(cfg.embed.num_workers)
    image = embed_images(model, processor, frame["image_path"].to_numpy()[mine].tolist(),
                         cfg.embed.batch_size, workers, device, mixed, progress and is_main)
    text = embed_texts(model, processor, frame["report"].to_numpy()[mine].tolist(), cfg.embed.batch_size,
                       cfg.clip.max_length, device, mixed, progress and is_main)
    if dist:
        image, text = _gather_shares(dist, out, image, text)
        if not is_main:
            dist.barrier()  # returns once the main process has written the files
            return out
    seconds = time.perf_counter() - t0

    (out / CACHE_KEY_FILE).unlink(missing_ok=True)  # no key while files are being replaced
    in_eval, in_corpus = eval_mask[positions], corpus_mask[positions]
    _write_set(out, image[in_eval], text[in_eval], _row_table(frame, positions[in_eval]))
    _write_set(out / CORPUS_DIR, image[in_corpus], text[in_corpus], _row_table(frame, positions[in_corpus]))
    stats = {"eval_rows": int(in_eval.sum()), "corpus_rows": int(in_corpus.sum()), "dim": int(image.shape[1]),
             "distinct_reports": int(len(set(frame["report"].to_numpy()[positions]))),
             "seconds": round(seconds, 2), "device": str(device), "processes": dist.world if dist else 1}
    io.write_json(out / CORPUS_DIR / CACHE_KEY_FILE, {**key, "stats": stats})
    io.write_json(out / CACHE_KEY_FILE, {**key, "stats": stats})
    if dist:
        dist.barrier()
    return out


def _gather_shares(dist: Any, out: Path, image: np.ndarray, text: np.ndarray) -> tuple[np.ndarray | None, ...]:
    """Every process's embeddings, in rank order, on the main process (None elsewhere), through files in
    ``out/.shares/`` -- a few hundred MB for MIMIC-CXR, which collective pickling would hold several times."""
    shares = out / ".shares"
    shares.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(shares / f"rank{dist.rank}.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, image=image, text=text)  # a handle: given a path without ".npz", numpy adds one
    dist.barrier()
    if not dist.is_main:
        return None, None
    images, texts = [], []
    for rank in range(dist.world):
        with np.load(shares / f"rank{rank}.npz") as part:
            images.append(part["image"])
            texts.append(part["text"])
    shutil.rmtree(shares, ignore_errors=True)
    return np.concatenate(images), np.concatenate(texts)


def _refresh_paths(out: Path, frame: pd.DataFrame) -> None:
    """Point saved rows at the manifest's current image paths (same content, data folder moved)."""
    for folder in (out, out / CORPUS_DIR):
        rows = pd.read_parquet(folder / ROWS_FILE)
        current = frame["image_path"].to_numpy()[rows["row"].to_numpy()]
        if not np.array_equal(rows["image_path"].to_numpy(), current):
            rows["image_path"] = current
            io.write_parquet(folder / ROWS_FILE, rows)


def summary(cfg: "Config", model_name: str) -> dict[str, Any]:
    """One table row for notebook 02: rows, dim, seconds of the last computation."""
    info = io.read_json(cfg.paths.embeddings(model_name) / CACHE_KEY_FILE)
    stats = info.get("stats", {})
    return {"model": model_name, "spec": info.get("model_spec"), "eval_rows": stats.get("eval_rows"),
            "corpus_rows": stats.get("corpus_rows"), "dim": stats.get("dim"),
            "embed_seconds": stats.get("seconds"), "cache_key": info.get("key")}


def needs_embedding(cfg: "Config", model_name: str) -> bool:
    """True when :func:`embed_run` would compute (no files, or inputs changed since)."""
    from medxpert_utils.data import manifest

    spec = _model_spec(cfg, model_name)
    key = cache_key(cfg, model_name, spec, manifest.read(cfg.run_dir))
    return not is_cached(cfg.paths.embeddings(model_name), key)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medxpert_utils.embed --params P --run R [--model M]`` (also under ``accelerate launch -m``)."""
    from medxpert_utils import clip
    from medxpert_utils.cli import stage_main
    from medxpert_utils.distributed import is_main_process

    def add_arguments(parser: Any) -> None:
        parser.add_argument("--model", action="append", choices=["zero_shot", "fine_tuned"],
                            help="model to embed with (repeatable; default: both)")
        parser.add_argument("--force", action="store_true", help="recompute even when the saved files match")

    def run(cfg: "Config", args: Any) -> None:
        for name in args.model or list(clip.model_specs(cfg)):
            out = embed_run(cfg, name, force=args.force, progress=not args.no_progress)
            if is_main_process():
                stats = io.read_json(out / CACHE_KEY_FILE).get("stats", {})
                print(f"{name}: {stats.get('eval_rows')} evaluated + {stats.get('corpus_rows')} corpus rows in "
                      f"{stats.get('seconds')} s on {stats.get('processes', 1)} process(es) -> {out}")

    return stage_main("embed", "Embed a run's evaluated split and search corpus (notebook 02's embedding step); "
                      "under `accelerate launch -m` every process embeds its share.", argv, run, add_arguments)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
