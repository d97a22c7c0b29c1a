"""The embedding run (notebook 02, ``python -m medxpert_utils.retrieval.embedding``): CLIP embeddings of a run's
evaluated split and search corpus with one model, written into the store of :mod:`.store` under
``embeddings/<model>/`` for model in {zero_shot, fine_tuned}.

The eval split and the corpus are embedded once, as one set of rows, and sliced. Each distinct report text is
embedded once and broadcast to its rows. A rerun whose cache key matches (same model files, manifest and
preprocessing params) reuses the saved files.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medxpert_utils.core import io, stages
from medxpert_utils.core.errors import UserError
from medxpert_utils.retrieval.encoders import embed_images, embed_texts
from medxpert_utils.retrieval.ood import calibrate_run, read_calibration
from medxpert_utils.retrieval.store import (
    CACHE_KEY_FILE,
    CORPUS_DIR,
    ROWS_FILE,
    cache_key,
    is_cached,
    row_table,
    write_set,
)

if TYPE_CHECKING:
    from medxpert_utils.core.config import Config



# --- a run --------------------------------------------------------------------------------------------------

def _model_spec(cfg: "Config", model: str) -> str:
    from medxpert_utils.models import clip

    specs = clip.model_specs(cfg)
    if model not in specs:
        raise UserError(f"unknown model '{model}' - choose one of {', '.join(specs)}")
    spec = specs[model]
    local = Path(spec)
    looks_local = local.is_absolute() or spec.startswith((".", "~"))
    if looks_local and not (local / "config.json").is_file():
        raise stages.missing(f"{model} CLIP not found at {local}", "01", cfg.run_name)
    return spec


def embed_run(cfg: "Config", model_name: str, force: bool = False, progress: bool = True) -> Path:
    """Embed the eval split and the search corpus of ``cfg``'s run with one model; returns the folder.

    Reuses the saved files when their cache key matches (same model files, manifest and
    preprocessing params) unless ``force`` (or the chain's ``--force``, :func:`stages.forced`). The run
    summary (rows, dim, seconds) is kept in ``cache_key.json`` under ``stats``. Under ``accelerate launch`` /
    ``torchrun`` with several processes each embeds its contiguous share of the rows on its own device and the
    main process assembles and writes the files (a folder all processes can read, as on one machine).
    """
    from medxpert_utils.core import runtime
    from medxpert_utils.core.distributed import Distributed
    from medxpert_utils.data import manifest
    from medxpert_utils.models import clip

    frame = manifest.read(cfg.run_dir)
    spec = _model_spec(cfg, model_name)
    key = cache_key(cfg, model_name, spec, frame)
    out = cfg.paths.embeddings(model_name)
    dist = Distributed.create(cfg.device)
    is_main = dist is None or dist.is_main
    if not (force or stages.forced()) and is_cached(out, key):
        if is_main:
            _refresh_paths(out, frame)
            for folder in (out, out / CORPUS_DIR):  # a copied run: record where its model lives now
                saved = io.read_json(folder / CACHE_KEY_FILE)
                if saved.get("model_spec") != spec:
                    io.write_json(folder / CACHE_KEY_FILE, {**saved, "model_spec": spec})
            if read_calibration(cfg, model_name) is None:  # params query_check changed, or an older run
                calibrate_run(cfg, model_name)
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
    write_set(out, image[in_eval], text[in_eval], row_table(frame, positions[in_eval]))
    write_set(out / CORPUS_DIR, image[in_corpus], text[in_corpus], row_table(frame, positions[in_corpus]))
    stats = {"eval_rows": int(in_eval.sum()), "corpus_rows": int(in_corpus.sum()), "dim": int(image.shape[1]),
             "distinct_reports": int(len(set(frame["report"].to_numpy()[positions]))),
             "seconds": round(seconds, 2), "device": str(device), "processes": dist.world if dist else 1}
    io.write_json(out / CORPUS_DIR / CACHE_KEY_FILE, {**key, "stats": stats})
    io.write_json(out / CACHE_KEY_FILE, {**key, "stats": stats})
    calibrate_run(cfg, model_name)  # the query check's threshold, on the validation images (retrieval.ood)
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
    """``python -m medxpert_utils.retrieval.embedding --params P --run R [--model M]`` (also under
    ``accelerate launch -m``)."""
    from medxpert_utils.core.distributed import is_main_process
    from medxpert_utils.core.stage import stage_main
    from medxpert_utils.models import clip

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

    return stage_main("retrieval.embedding", "Embed a run's evaluated split and search corpus "
                      "(notebook 02's embedding step); under `accelerate launch -m` every process embeds its share.",
                      argv, run, add_arguments)


# --- stage 02 -----------------------------------------------------------------------------------------------

MODELS = ("zero_shot", "fine_tuned")


@dataclass(frozen=True)
class EmbedStageResult:
    """What :func:`run_stage` did, as notebook 02 shows it (tables indexed by model)."""

    splits: pd.DataFrame  # images and distinct reports per split of the manifest
    embeddings: pd.DataFrame  # embedding.summary per model, with cache_hit and wall_s
    indexes: pd.DataFrame  # index.build_run_index's summary per model


def run_stage(cfg: Config) -> EmbedStageResult:
    """Stage 02 (notebook ``02_embed_index``): embed the evaluated split and the search corpus with both models
    (reusing saved vectors whose cache key matches) and build their FAISS indexes."""
    from medxpert_utils.data import manifest
    from medxpert_utils.retrieval.index import build_run_index

    frame = manifest.read(cfg.run_dir)
    splits = frame.groupby("split").agg(images=("study_id", "size"), distinct_reports=("report", "nunique"))
    rows = []
    for model in MODELS:
        cache_hit = not needs_embedding(cfg, model)
        t0 = time.perf_counter()
        embed_run(cfg, model)
        rows.append({**summary(cfg, model), "cache_hit": cache_hit, "wall_s": round(time.perf_counter() - t0, 1)})
    indexes = [build_run_index(cfg, model) for model in MODELS]
    return EmbedStageResult(splits, pd.DataFrame(rows).set_index("model"), pd.DataFrame(indexes).set_index("model"))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
