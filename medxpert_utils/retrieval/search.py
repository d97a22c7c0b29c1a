"""Search a run's corpus by text or image: the engine behind the dashboard, the CLI and notebook 05.

:class:`SearchEngine` reads ``embeddings/<model>/corpus/rows.parquet`` and the FAISS indexes of
``index/<model>/`` (checked against the embeddings); it never re-embeds the corpus. The CLIP model
is loaded on the first query only, and checked against the weights the corpus was embedded with.

Targets: ``images`` ranks the corpus images (one hit per corpus row); ``reports`` ranks the
corpus's distinct report groups (one hit per distinct normalised report, shown with the group's
first row, so a gallery is not five copies of the same normal report). ``search_text`` defaults to
images, ``search_image`` to reports. ``k`` larger than the number of candidates is clamped to it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medxpert_utils.core import io, stages
from medxpert_utils.core.errors import ImageLoadError, UserError

if TYPE_CHECKING:  # pandas loads for tables (notebooks, exports); a query reads its corpus rows without it
    import faiss
    import pandas as pd
    import torch
    from PIL import Image

EMPTY_QUERY = "empty query - type a question or finding, e.g. 'signs of pneumonia'"
TARGETS = ("images", "reports")
_NA = -2  # label code for "unmentioned" in the int8 label matrix


@dataclass(slots=True)
class Hit:
    """One ranked search result (a corpus row). ``labels``: the 14 CheXpert labels -> 1/0/-1/None."""

    rank: int
    score: float
    study_id: str
    report: str
    image_path: str
    labels: dict[str, int | None]
    row: int = -1  # row of the run's manifest
    report_group: int = -1
    n_same_report: int = 1  # corpus rows sharing this report (reports target)
    split: str = ""

    def to_dict(self, extra: bool = False) -> dict[str, Any]:
        """JSON-safe dict with the contract keys (rank, score, study_id, report, image_path, labels)."""
        out = {"rank": int(self.rank), "score": float(self.score), "study_id": str(self.study_id),
               "report": str(self.report), "image_path": str(self.image_path), "labels": dict(self.labels)}
        if extra:
            out.update(row=int(self.row), report_group=int(self.report_group), n_same_report=int(self.n_same_report),
                       split=self.split)
        return out


def check_k(k: Any) -> int:
    """``k`` as a positive int, else a one-line :class:`UserError`."""
    try:
        value = int(k)
    except (TypeError, ValueError):
        raise UserError(f"k must be a positive whole number of hits, got {k!r}") from None
    if value <= 0 or value != k:
        raise UserError(f"k must be a positive whole number of hits, got {k!r}")
    return value


def to_image(image: Any, name: str | None = None) -> "Image.Image":
    """A query image as PIL mode "L": from a path, bytes, a PIL image or a numpy array (H, W[, C]).

    Files are decoded by :func:`~medxpert_utils.data.images.load_image`, images and arrays turned grey by the same
    :func:`~medxpert_utils.data.pixels.to_grey`, so one picture gives one grey image whatever form it came in.
    """
    from PIL import Image

    from medxpert_utils.data.images import load_image
    from medxpert_utils.data.pixels import to_grey

    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(image, "read"):
        return load_image(image, name=name)
    if isinstance(image, (Image.Image, np.ndarray)):
        return to_grey(image, name)
    raise ImageLoadError(f"cannot read image of type {type(image).__name__} - pass a path, bytes, a PIL image "
                         "or an array")


class SearchEngine:
    """Top-K search over one model's corpus; build it with :meth:`from_run`."""

    def __init__(self, rows: "pd.DataFrame | Mapping[str, np.ndarray]", image_index: "faiss.Index",
                 text_index: "faiss.Index",
                 model_spec: str | None = None, device: Any = "cpu", max_length: int = 77,
                 weights_sha256: str | None = None, name: str = "fine_tuned",
                 label_names: Sequence[str] | None = None, mixed_precision: str = "auto"):
        from medxpert_utils.retrieval.metrics import dense_groups

        if label_names is None:
            from medxpert_utils.data.labels import CHEXPERT_LABELS as label_names
        self.name = name
        self.label_names = tuple(label_names)
        self.image_index, self.text_index = image_index, text_index
        self.model_spec, self.device, self.max_length = model_spec, device, max_length
        self.weights_sha256, self.mixed_precision = weights_sha256, mixed_precision
        self._model = self._processor = self._transform = None
        self._lock = threading.Lock()  # a page may warm up in the background while a query arrives
        self._study, self._report, self._path = (_texts(rows[name]) for name in ("study_id", "report", "image_path"))
        n = len(self._study)
        self._split = _texts(rows["split"]) if "split" in rows else np.full(n, "", object)
        self._row = np.asarray(rows["row"], dtype=np.int64) if "row" in rows else np.arange(n)
        self._labels = np.full((n, len(self.label_names)), _NA, dtype=np.int8)
        for j, label in enumerate(self.label_names):
            if label in rows:
                self._labels[:, j] = _label_codes(rows[label])
        self._group, self._group_first = dense_groups(np.asarray(rows["report_group"]))
        self._group_size = np.bincount(self._group)
        if image_index.ntotal != n or text_index.ntotal != len(self._group_first):
            raise UserError(f"index/{name} does not match its corpus ({image_index.ntotal} images and "
                            f"{text_index.ntotal} reports indexed, corpus has {n} and "
                            f"{len(self._group_first)}) - {stages.hint('02', force=True)}")

    # --- construction ----------------------------------------------------------------------------------------

    @classmethod
    def from_run(cls, run: str | os.PathLike, model: str = "fine_tuned") -> "SearchEngine":
        """Engine over a run's saved corpus and indexes (fast: nothing is embedded here)."""
        from medxpert_utils.core import config, runtime
        from medxpert_utils.models import clip
        from medxpert_utils.retrieval.index import load_index
        from medxpert_utils.retrieval.store import CACHE_KEY_FILE, CORPUS_DIR, ROWS_FILE, read_columns

        if model not in ("fine_tuned", "zero_shot"):
            raise UserError(f"unknown model '{model}' - choose fine_tuned or zero_shot")
        cfg = config.from_run(run)
        emb_dir, index_dir = cfg.paths.embeddings(model), cfg.paths.index(model)
        rows_file = emb_dir / CORPUS_DIR / ROWS_FILE
        if not rows_file.is_file() or not (emb_dir / CACHE_KEY_FILE).is_file():
            raise stages.missing(f"run '{cfg.run_name}' has no {model} embeddings", "02", cfg.run_name)
        key = io.read_json(emb_dir / CACHE_KEY_FILE)
        rows = read_columns(rows_file)
        return cls(rows, load_index(index_dir, emb_dir, "image"), load_index(index_dir, emb_dir, "text"),
                   model_spec=clip.model_specs(cfg)[model], device=runtime.get_device(cfg.device),
                   max_length=int(key.get("max_length", cfg.clip.max_length)),
                   weights_sha256=key.get("weights_sha256"), name=model, mixed_precision=cfg.train.mixed_precision)

    def __len__(self) -> int:
        return len(self._study)

    def warm_up(self) -> "SearchEngine":
        """Load the CLIP model now (e.g. in the background when a page opens) instead of on the first query."""
        self._load_model()
        return self

    def _load_model(self) -> None:
        if self._model is not None:
            return
        from medxpert_utils.models import clip
        from medxpert_utils.retrieval.encoders import image_transform
        from medxpert_utils.retrieval.store import weights_fingerprint

        with self._lock:
            if self._model is not None:
                return
            if self.model_spec is None:
                raise UserError("this search engine has no CLIP model - build it with SearchEngine.from_run(run)")
            if self.weights_sha256 and weights_fingerprint(self.model_spec) != self.weights_sha256:
                raise UserError(f"the {self.name} CLIP at {self.model_spec} changed after the corpus was embedded - "
                                f"{stages.hint('02', force=True)}")
            model, self._processor = clip.load_clip(self.model_spec, self.device)
            self._transform = image_transform(self._processor)
            self._model = model

    def clip_model(self) -> tuple[Any, Any]:
        """The engine's CLIP model and processor (loaded and checked on first use), e.g. to share with a heatmap."""
        self._load_model()
        return self._model, self._processor

    # --- embedding queries -----------------------------------------------------------------------------------

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings (n, dim) of ``texts`` with the engine's model."""
        from medxpert_utils.retrieval.encoders import embed_texts

        self._load_model()
        if isinstance(texts, str):
            texts = [texts]
        return embed_texts(self._model, self._processor, list(texts), max_length=self.max_length,
                           mixed_precision=self.mixed_precision, progress=False)

    def pixel_values(self, images: "Sequence[Image.Image]") -> "torch.Tensor":
        """The CLIP input of grey images: (n, 3, H, W) float32 on the CPU, the evaluation transform's resize,
        crop and normalisation (what :meth:`embed_pixels` and a heatmap of the same model take)."""
        import torch

        self._load_model()
        return torch.stack([self._transform(img) for img in images])

    def embed_pixels(self, pixels: "torch.Tensor") -> np.ndarray:
        """L2-normalised embeddings (n, dim) of CLIP inputs from :meth:`pixel_values`."""
        import torch

        from medxpert_utils.core.runtime import autocast, autocast_dtype
        from medxpert_utils.models.clip import image_features

        self._load_model()
        device = next(self._model.parameters()).device
        with torch.inference_mode(), autocast(device, autocast_dtype(device, self.mixed_precision)):
            feats = image_features(self._model, pixels.to(device))
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()

    def embed_image(self, image: Any) -> np.ndarray:
        """L2-normalised embedding (1, dim) of one image (path, bytes, PIL or array); a list gives (n, dim)."""
        images = [to_image(img) for img in (image if isinstance(image, list) else [image])]  # bad files fail fast
        return self.embed_pixels(self.pixel_values(images))

    # --- searching -------------------------------------------------------------------------------------------

    def search_text(self, query: str, k: int = 5, target: str = "images") -> list[Hit]:
        """Text -> corpus images (default) or distinct corpus reports (``target="reports"``)."""
        if not isinstance(query, str) or not query.strip():
            raise UserError(EMPTY_QUERY)
        k = check_k(k)
        return self.search_vectors(self.embed_text([query.strip()]), k, target)[0]

    def search_image(self, image: Any, k: int = 5, target: str = "reports") -> list[Hit]:
        """Image -> distinct corpus reports (default) or corpus images (``target="images"``).

        ``image``: a path, bytes, PIL image or numpy array; an unreadable file raises ImageLoadError.
        """
        k = check_k(k)
        return self.search_vectors(self.embed_image(image), k, target)[0]

    def search_vectors(self, vectors: np.ndarray, k: int, target: str = "images") -> list[list[Hit]]:
        """Ranked hits for each row of ``vectors`` (already normalised query embeddings)."""
        from medxpert_utils.retrieval.index import search

        if target not in TARGETS:
            raise UserError(f"unknown search target '{target}' - choose images or reports")
        k = check_k(k)
        index = self.image_index if target == "images" else self.text_index
        scores, ids = search(index, vectors, k)
        return self.assemble(scores, ids, target)

    def assemble(self, scores: np.ndarray, ids: np.ndarray, target: str = "images") -> list[list[Hit]]:
        """Hits from raw FAISS output (ids of the target index; -1 = no hit).

        Gathers every field for the whole batch with numpy first, so a hit costs a few
        microseconds of Python (the search path stays within a few percent of bare FAISS).
        """
        ids = np.asarray(ids)
        rows = ids if target == "images" else np.where(ids >= 0, self._group_first[np.maximum(ids, 0)], -1)
        n_q, k = rows.shape
        flat = rows.ravel()
        valid = (flat >= 0).tolist()
        safe = np.maximum(flat, 0)
        codes = self._labels[safe]
        labels = codes.astype(object)
        labels[codes == _NA] = None
        labels = labels.tolist()
        group = self._group[safe]
        study, report, path, split = (a[safe].tolist() for a in (self._study, self._report, self._path, self._split))
        row_id, group_size, group = self._row[safe].tolist(), self._group_size[group].tolist(), group.tolist()
        score = np.asarray(scores, dtype=np.float64).ravel().tolist()
        names = self.label_names
        out = []
        for q in range(n_q):
            hits = []
            for p in range(q * k, q * k + k):
                if not valid[p]:
                    break
                hits.append(Hit(p - q * k + 1, score[p], study[p], report[p], path[p], dict(zip(names, labels[p])),
                                row_id[p], group[p], group_size[p], split[p]))
            out.append(hits)
        return out


def _texts(values: "pd.Series | np.ndarray") -> np.ndarray:
    """A text column as an object array of str (a missing value as "")."""
    if isinstance(values, np.ndarray):
        if values.dtype != object:  # numbers stored as text elsewhere (e.g. numeric study ids)
            return values.astype(str).astype(object)
        missing = np.equal(values, None)
        return np.where(missing, "", values) if missing.any() else values
    return values.fillna("").astype(str).to_numpy(dtype=object)


def _label_codes(values: "pd.Series | np.ndarray") -> np.ndarray:
    """A label column (1, 0, -1 or missing; integers or floats) as int8 codes, missing as ``_NA``."""
    if not isinstance(values, np.ndarray):
        values = values.to_numpy(dtype=np.float64, na_value=np.nan)
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(values), _NA, values).astype(np.int8)


def format_hits(hits: Sequence[Hit], width: int = 72) -> str:
    """Readable table: rank, score, study, positive labels, report snippet."""
    if not hits:
        return "no hits"
    lines = [f"{'rank':>4}  {'score':>6}  {'study_id':<14} {'positive labels':<28} report",
             "-" * (4 + 2 + 6 + 2 + 15 + 29 + width)]
    for hit in hits:
        positive = ", ".join(n for n, v in hit.labels.items() if v == 1) or "-"
        text = " ".join(str(hit.report).split())
        text = text if len(text) <= width else text[: width - 3] + "..."
        more = f" (x{hit.n_same_report})" if hit.n_same_report > 1 else ""
        lines.append(f"{hit.rank:>4}  {hit.score:>6.3f}  {str(hit.study_id):<14} {positive[:28]:<28} {text}{more}")
    return "\n".join(lines)


def hits_frame(hits: Sequence[Hit]) -> "pd.DataFrame":
    """Hits as a table for notebooks: rank, score, study, positive labels, report, image path."""
    import pandas as pd

    return pd.DataFrame([{"rank": h.rank, "score": round(h.score, 4), "study_id": h.study_id,
                          "positive labels": ", ".join(n for n, v in h.labels.items() if v == 1),
                          "same report": h.n_same_report, "report": h.report, "image_path": h.image_path}
                         for h in hits])


def export_csv(run: str | os.PathLike, split: str = "test", k: int = 10, model: str = "fine_tuned",
               out: str | os.PathLike | None = None) -> Path:
    """Every query of ``split`` with its top-``k`` candidates in both directions, as one CSV.

    Ranked exactly as in the metrics (within the split, distinct report groups as text candidates,
    pessimistic ties): image_to_text queries each image against the split's distinct reports;
    text_to_image queries each distinct report (shown with its group's first study) against the
    split's images. ``is_hit`` marks the query's own report group. Default path:
    ``<run>/exports/<split>_top<k>_<model>.csv``.
    """
    import pandas as pd

    from medxpert_utils.core import config
    from medxpert_utils.retrieval.metrics import dense_groups, rank_queries
    from medxpert_utils.retrieval.store import load_embeddings

    k = check_k(k)
    cfg = config.from_run(run)
    emb_dir = cfg.paths.embeddings(model)
    emb = load_embeddings(emb_dir)
    if emb.cache_key.get("eval_split") == split:
        image, text, rows = np.asarray(emb.image), np.asarray(emb.text), emb.rows
    else:
        corpus = load_embeddings(emb_dir, corpus=True)
        keep = (corpus.rows["split"] == split).to_numpy()
        if not keep.any():
            raise UserError(f"split '{split}' was not embedded for {model} - add it to embed.corpus_splits "
                            f"and {stages.hint('02', cfg.run_name, force=True)}")
        image, text, rows = corpus.image[keep], corpus.text[keep], corpus.rows[keep].reset_index(drop=True)
    dense, first = dense_groups(rows["report_group"].to_numpy())
    n_groups = len(first)
    study, report, path = (rows[c].astype(str).to_numpy(dtype=object) for c in ("study_id", "report", "image_path"))
    frames = []
    for direction, q_rows, q_group, cands, c_group, c_rows in (
        ("image_to_text", np.arange(len(rows)), dense, text[first], np.arange(n_groups), first),
        ("text_to_image", first, np.arange(n_groups), image, dense, np.arange(len(rows))),
    ):
        queries = image[q_rows] if direction == "image_to_text" else text[q_rows]
        res = rank_queries(queries, q_group, cands, c_group, top_k=k)
        top, kk = res["top"], res["top"].shape[1]
        hit_rows = c_rows[top].ravel()
        query_rows = np.repeat(q_rows, kk)
        frames.append(pd.DataFrame({
            "query_study_id": study[query_rows], "query_report": report[query_rows], "direction": direction,
            "rank": np.tile(np.arange(1, kk + 1), len(q_rows)), "hit_study_id": study[hit_rows],
            "score": res["top_scores"].ravel(), "hit_report": report[hit_rows], "hit_image_path": path[hit_rows],
            "is_hit": (c_group[top] == np.asarray(q_group)[:, None]).ravel(),
        }))
    table = pd.concat(frames, ignore_index=True)
    target = Path(out) if out else cfg.run_dir / "exports" / f"{split}_top{k}_{model}.csv"
    with io.atomic_path(target, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    return target
