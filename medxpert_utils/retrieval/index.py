"""FAISS indexes over a run's corpus embeddings: ``index/<model>/``.

Two indexes per model, both inner product over L2-normalised vectors (= cosine similarity):
``image.faiss`` over the corpus images (text->image and image->image search) and ``text.faiss``
over the corpus's *distinct report groups* (one vector per group, that of the group's first row:
image->report search returns each distinct report once). The type comes from params ``index``:
``flat`` (exact, ``IndexFlatIP``, the default), ``hnsw`` (``IndexHNSWFlat``) or ``ivf``
(``IndexIVFFlat`` trained on the vectors). ``index_meta.json`` records count, dim, type, params
and the cache key of the embeddings the index was built from; :func:`load_index` refuses an
index that does not match the embeddings beside it instead of returning wrong answers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medxpert_utils.core import io, stages
from medxpert_utils.core.errors import UserError

if TYPE_CHECKING:
    import faiss

    from medxpert_utils.core.config import Config, IndexParams

META_FILE = "index_meta.json"
KINDS = ("image", "text")
IVF_MIN_POINTS_PER_LIST = 39  # FAISS's k-means warns below 39 training points per centroid
IVF_TRAIN_POINTS_PER_LIST = 64  # train IVF on a seeded sample of this many points per list (enough, and fast)


def _params(params: "IndexParams | Mapping[str, Any] | None") -> dict[str, Any]:
    from medxpert_utils.core.config import IndexParams

    if params is None:
        return IndexParams().model_dump()
    if isinstance(params, Mapping):
        from pydantic import ValidationError

        try:
            return IndexParams(**params).model_dump()
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise UserError(f"bad value for 'index.{key}': {err['msg']} (got {err.get('input')!r}) - "
                            "fix params index") from None
    return params.model_dump()


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2:
        raise ValueError(f"expected a (n, dim) matrix of vectors, got shape {vectors.shape}")
    return vectors


def build_index(vectors: np.ndarray, params: "IndexParams | Mapping[str, Any] | None" = None,
                seed: int = 0) -> "faiss.Index":
    """An inner-product FAISS index holding ``vectors`` (row i gets id i), of the type in ``params``.

    IVF: ``nlist`` is clamped to ``n // 39`` (at least 1) so small corpora still train, and the
    quantizer is trained on a seeded sample of at most 64 points per list.
    """
    import faiss

    p = _params(params)
    vectors = _as_matrix(vectors)
    n, dim = vectors.shape
    kind = p["type"]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, p["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p["hnsw_ef_construction"]
    elif kind == "ivf":
        nlist = max(1, min(p["ivf_nlist"], n // IVF_MIN_POINTS_PER_LIST))
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        sample = vectors
        if n > nlist * IVF_TRAIN_POINTS_PER_LIST:
            rows = np.sort(np.random.default_rng(seed).choice(n, nlist * IVF_TRAIN_POINTS_PER_LIST, replace=False))
            sample = vectors[rows]
        index.train(sample)
    else:  # pragma: no cover - IndexParams only admits the three types
        raise UserError(f"index.type '{kind}' is not one of flat, hnsw, ivf - fix params index.type")
    index.add(vectors)
    configure(index, p)
    return index


def configure(index: "faiss.Index", params: "IndexParams | Mapping[str, Any] | None") -> "faiss.Index":
    """Apply the query-time knobs (HNSW ``efSearch``, IVF ``nprobe``); FAISS files do not keep them all."""
    import faiss

    p = _params(params)
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = p["hnsw_ef_search"]
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(p["ivf_nprobe"], ivf.nlist)
    return index


def search(index: "faiss.Index", queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) per query row; ``k`` is clamped to the index size.

    Approximate indexes may return fewer than ``k`` hits for a query: missing ids are -1.
    """
    queries = _as_matrix(queries)
    k = max(1, min(int(k), index.ntotal))
    return index.search(queries, k)


def _write_index(index: "faiss.Index", path: Path) -> None:
    import faiss

    with io.atomic_path(path, suffix=".faiss") as tmp:
        faiss.write_index(index, str(tmp))


def save_index(index_dir: str | Path, indexes: Mapping[str, "faiss.Index"], cache_key: str,
               params: "IndexParams | Mapping[str, Any] | None" = None, **extra: Any) -> Path:
    """Write ``{kind: index}`` as ``<kind>.faiss`` and ``index_meta.json`` (meta last, so it names whole files)."""
    index_dir = Path(index_dir)
    p = _params(params)
    meta: dict[str, Any] = {"type": p["type"], "params": p, "cache_key": cache_key, "indexes": {}, **extra}
    for kind, index in indexes.items():
        _write_index(index, index_dir / f"{kind}.faiss")
        meta["indexes"][kind] = {"file": f"{kind}.faiss", "count": int(index.ntotal), "dim": int(index.d)}
    first = meta["indexes"].get("image") or next(iter(meta["indexes"].values()))
    meta["count"], meta["dim"] = first["count"], first["dim"]
    io.write_json(index_dir / META_FILE, meta)
    return index_dir


def _expected(embeddings_dir: Path) -> dict[str, Any]:
    """Cache key and per-kind (count, dim) that indexes built from ``embeddings_dir``'s corpus must have."""
    from medxpert_utils.retrieval.store import CACHE_KEY_FILE, CORPUS_DIR, IDS_FILE, read_columns

    key_file = embeddings_dir / CACHE_KEY_FILE
    corpus = embeddings_dir / CORPUS_DIR
    if not key_file.is_file() or not (corpus / "image.npy").is_file():
        raise stages.missing(f"no embeddings at {embeddings_dir}", "02", _run_name(embeddings_dir))
    image = np.load(corpus / "image.npy", mmap_mode="r")
    groups = read_columns(corpus / IDS_FILE, ["report_group"])["report_group"]
    return {"cache_key": io.read_json(key_file)["key"],
            "image": (image.shape[0], image.shape[1]), "text": (len(np.unique(groups)), image.shape[1])}


def _run_name(folder: Path) -> str | None:
    """The run of ``<run>/embeddings/<model>`` or ``<run>/index/<model>``, for hints; None elsewhere."""
    return folder.parent.parent.name if folder.parent.name in ("embeddings", "index") else None


def _label(index_dir: Path) -> str:
    return f"{index_dir.parent.name}/{index_dir.name}"


def load_index(index_dir: str | Path, embeddings_dir: str | Path, kind: str = "image") -> "faiss.Index":
    """Load ``<kind>.faiss`` after checking it against the embeddings it must have been built from.

    Raises :class:`RunNotReadyError` when missing and :class:`UserError` ("index/fine_tuned was built
    from other embeddings - rerun 02_embed_index ...") when count, dim or cache key disagree.
    """
    import faiss

    index_dir, embeddings_dir = Path(index_dir), Path(embeddings_dir)
    meta_path = index_dir / META_FILE
    if not meta_path.is_file() or kind not in (entry := io.read_json(meta_path)).get("indexes", {}):
        raise stages.missing(f"no {kind} index at {index_dir}", "02", _run_name(index_dir))
    expected = _expected(embeddings_dir)
    info = entry["indexes"][kind]
    problem = None
    if entry.get("cache_key") != expected["cache_key"]:
        problem = "cache key differs"
    elif (info["count"], info["dim"]) != expected[kind]:
        problem = f"{info['count']}x{info['dim']} vectors, embeddings have {expected[kind][0]}x{expected[kind][1]}"
    if problem:
        raise UserError(f"{_label(index_dir)} was built from other embeddings ({problem}) - "
                        f"{stages.hint('02', _run_name(index_dir), force=True)}")
    index = faiss.read_index(str(index_dir / info["file"]))
    if (index.ntotal, index.d) != expected[kind]:
        raise UserError(f"{_label(index_dir)}/{info['file']} does not match its index_meta.json - "
                        f"{stages.hint('02', _run_name(index_dir), force=True)}")
    return configure(index, entry.get("params"))


def is_current(index_dir: str | Path, embeddings_dir: str | Path,
               params: "IndexParams | Mapping[str, Any] | None") -> bool:
    """True when ``index_dir`` holds both indexes, built with ``params`` from these embeddings."""
    meta_path = Path(index_dir) / META_FILE
    if not meta_path.is_file():
        return False
    try:
        meta = io.read_json(meta_path)
        expected = _expected(Path(embeddings_dir))
    except (ValueError, OSError, KeyError):
        return False
    build_keys = ("type", "hnsw_m", "hnsw_ef_construction", "ivf_nlist")
    same_params = all(meta.get("params", {}).get(k) == _params(params)[k] for k in build_keys)
    return (same_params and meta.get("cache_key") == expected["cache_key"]
            and all((meta["indexes"].get(k, {}).get("count"), meta["indexes"].get(k, {}).get("dim")) == expected[k]
                    for k in KINDS)
            and all((Path(index_dir) / f"{k}.faiss").is_file() for k in KINDS))


def build_run_index(cfg: "Config", model: str, force: bool = False) -> dict[str, Any]:
    """Build and save ``index/<model>/`` from ``embeddings/<model>/corpus/``; reused when current.

    Returns a summary (type, counts, dim, seconds, reused) for notebook 02's table.
    """
    from medxpert_utils.retrieval.metrics import dense_groups
    from medxpert_utils.retrieval.store import load_embeddings

    emb_dir, index_dir = cfg.paths.embeddings(model), cfg.paths.index(model)
    params = cfg.index
    if not (force or stages.forced()) and is_current(index_dir, emb_dir, params):
        meta = io.read_json(index_dir / META_FILE)
        if meta.get("params") != _params(params):  # only query-time knobs (efSearch, nprobe) changed
            io.write_json(index_dir / META_FILE, {**meta, "params": _params(params)})
        return {"model": model, "type": meta["type"], "image_vectors": meta["indexes"]["image"]["count"],
                "report_vectors": meta["indexes"]["text"]["count"], "dim": meta["dim"], "seconds": 0.0,
                "reused": True}
    t0 = time.perf_counter()
    corpus = load_embeddings(emb_dir, corpus=True)
    _, first = dense_groups(corpus.ids["report_group"].to_numpy())
    indexes = {"image": build_index(corpus.image, params, seed=cfg.seed),
               "text": build_index(corpus.text[first], params, seed=cfg.seed)}
    seconds = time.perf_counter() - t0
    save_index(index_dir, indexes, corpus.cache_key["key"], params, built_s=round(seconds, 2))
    return {"model": model, "type": params.type, "image_vectors": int(indexes["image"].ntotal),
            "report_vectors": int(indexes["text"].ntotal), "dim": int(indexes["image"].d),
            "seconds": round(seconds, 2), "reused": False}


# One-word names used in docs/internals.md.
save = save_index
load = load_index
