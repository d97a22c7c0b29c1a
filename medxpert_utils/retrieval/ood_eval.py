"""How well the query check (:mod:`.ood`) tells the run's radiographs from other images: an out-of-distribution set
assembled offline, and AUROC / FPR at 95% TPR of the scores (benchmarks/bench_ood.py, notebook 03).

The out-of-distribution set, from what is installed with the project's dependencies (nothing is downloaded):
natural photos shipped with matplotlib (colour, and turned grey), matplotlib's MR slice and terrain maps, the
pydicom test files (as DICOM with their tags, and their pixels alone as PNG), noise, rendered text documents, and
the run's own test radiographs flipped, rotated, cropped to a corner and colour-tinted. scikit-image's sample
photos join when it is installed. The in-distribution set is the run's test split.
"""

from __future__ import annotations

import gzip
import io as _io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageOps

from medxpert_utils.core.errors import UserError

#: groups whose images the score alone must catch (no colour, no DICOM tags to help)
GREY_GROUPS = ("photo_grey", "mr_slice", "terrain", "dicom_pixels", "noise", "document", "hflip", "vflip",
               "rot90", "crop")


@dataclass
class Item:
    group: str
    name: str
    content: bytes  # a file: PNG, JPEG or DICOM bytes

    def source(self) -> bytes:
        return self.content


def _png(img: Image.Image) -> bytes:
    buffer = _io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _grey(arr: np.ndarray) -> Image.Image:
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = np.nanpercentile(arr, 1), np.nanpercentile(arr, 99)
    scaled = np.clip((np.nan_to_num(arr) - lo) / max(hi - lo, 1e-9), 0, 1) * 255
    return Image.fromarray(scaled.astype(np.uint8), "L")


def natural_images() -> list[tuple[str, Image.Image]]:
    """Photos shipped with matplotlib (and scikit-image when installed), in colour."""
    import matplotlib.cbook as cbook

    out = []
    for name in ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png"):
        try:
            with Image.open(cbook.get_sample_data(name, asfileobj=False)) as img:
                out.append((name, img.convert("RGB")))
        except (OSError, ValueError):
            continue
    try:  # optional: never a dependency of the project
        from skimage import data as skdata

        for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "text"):
            try:
                out.append((f"skimage_{name}", Image.fromarray(getattr(skdata, name)()).convert("RGB")))
            except Exception:  # a sample missing from this scikit-image build
                continue
    except ImportError:
        pass
    return out


def scientific_images() -> list[tuple[str, str, Image.Image]]:
    """(group, name, grey image): matplotlib's MR slice and terrain maps."""
    import matplotlib.cbook as cbook

    out = []
    try:
        with gzip.open(cbook.get_sample_data("s1045.ima.gz", asfileobj=False)) as handle:
            mr = np.frombuffer(handle.read(), np.uint16).reshape(256, 256)
        out.append(("mr_slice", "s1045.ima", _grey(mr.astype(np.float64))))
    except (OSError, ValueError):
        pass
    for name, key in (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo")):
        try:
            with np.load(cbook.get_sample_data(name, asfileobj=False)) as data:
                out.append(("terrain", name, _grey(data[key])))
        except (OSError, ValueError, KeyError):
            continue
    return out


def dicom_files() -> list[tuple[str, bytes]]:
    """pydicom's bundled test files (read from the wheel, never downloaded) that hold decodable pixel data (CT, MR,
    US, ... with their tags). pydicom's warnings about these deliberately odd files are silenced."""
    import pydicom.data

    from medxpert_utils.core.errors import ImageLoadError
    from medxpert_utils.data.images import load_image

    out = []
    for path in sorted(str(p) for p in (Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm")):
        try:
            content = Path(path).read_bytes()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                img = load_image(content, name=os.path.basename(path))
        except (ImageLoadError, OSError, ValueError, NotImplementedError, RuntimeError):
            continue  # compressed without a decoder plugin, or not an image
        if min(img.size) >= 32 and np.asarray(img).std() > 1:
            out.append((os.path.basename(path), content))
    return out


def documents(n: int, seed: int = 0) -> list[Image.Image]:
    """Rendered text pages: lines of words, black on white, in PIL's default font."""
    rng = np.random.default_rng(seed)
    words = ("patient", "report", "invoice", "dear", "sincerely", "total", "date", "the", "of", "and", "results",
             "page", "account", "number", "signature", "summary", "please", "contact", "meeting", "agenda")
    pages = []
    for i in range(n):
        page = Image.new("L", (256, 320), 255)
        draw = ImageDraw.Draw(page)
        y = 12
        if i % 3 == 0:
            draw.rectangle((10, 8, 246, 30), fill=60)
            y = 40
        while y < 300:
            line = " ".join(rng.choice(words, size=rng.integers(3, 7)))
            draw.text((12, y), line, fill=int(rng.integers(0, 60)))
            y += int(rng.integers(12, 20))
        pages.append(page)
    return pages


def noise_images(n: int, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Uniform, smoothed and structured noise, flat and gradient images."""
    rng = np.random.default_rng(seed)
    out = []
    kinds = ("uniform", "gaussian_blur", "flat", "gradient", "stripes", "checker")
    for i in range(n):
        kind = kinds[i % len(kinds)]
        size = 128
        if kind == "uniform":
            arr = rng.integers(0, 256, (size, size))
        elif kind == "gaussian_blur":
            from PIL import ImageFilter

            img = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8))
            arr = np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(1, 6))), dtype=np.float64)
        elif kind == "flat":
            arr = np.full((size, size), rng.integers(0, 256))
        elif kind == "gradient":
            arr = np.add.outer(np.arange(size), np.arange(size) * rng.uniform(0, 2))
        elif kind == "stripes":
            arr = (np.sin(np.arange(size) / rng.uniform(2, 10))[None, :] * np.ones((size, 1))) * 127 + 128
        else:
            cell = int(rng.integers(4, 32))
            grid = (np.arange(size) // cell) % 2
            arr = np.logical_xor.outer(grid, grid) * 255.0
        out.append((f"{kind}_{i}", _grey(arr) if kind not in ("flat",) else Image.fromarray(arr.astype(np.uint8))))
    return out


def radiograph_variants(paths: list[str], n: int, seed: int = 0) -> list[Item]:
    """The run's own radiographs made wrong: flipped left-right and upside down, rotated 90 degrees, a corner
    cropped and enlarged, and tinted (a colour cast)."""
    from medxpert_utils.data.images import load_image

    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in rng.choice(len(paths), size=min(n, len(paths)), replace=False)]
    items = []
    for i, path in enumerate(chosen):
        img = load_image(path)
        name = os.path.basename(path)
        w, h = img.size
        corner = ((0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2))[i % 4]
        tint = ((255, 120, 120), (120, 200, 255), (140, 255, 140))[i % 3]
        items += [
            Item("hflip", name, _png(ImageOps.mirror(img))),
            Item("vflip", name, _png(ImageOps.flip(img))),
            Item("rot90", name, _png(img.rotate(90 if i % 2 else 270, expand=True))),
            Item("crop", name, _png(img.crop((*corner, corner[0] + w // 2, corner[1] + h // 2)).resize((w, h)))),
            Item("tinted", name, _png(ImageOps.colorize(img, black=(0, 0, 0), white=tint))),
        ]
    return items


def ood_set(test_paths: list[str], n_per_group: int = 30, seed: int = 0) -> list[Item]:
    """The out-of-distribution images as files (bytes), by group."""
    items: list[Item] = []
    for name, img in natural_images():
        items.append(Item("photo", name, _png(img)))
        items.append(Item("photo_grey", name, _png(img.convert("L"))))
        # a few crops of each photo: more samples of the same kind of picture
        w, h = img.size
        for j, box in enumerate(((0, 0, w // 2, h // 2), (w // 4, h // 4, 3 * w // 4, 3 * h // 4))):
            items.append(Item("photo", f"{name}#{j}", _png(img.crop(box))))
            items.append(Item("photo_grey", f"{name}#{j}", _png(img.crop(box).convert("L"))))
    for group, name, img in scientific_images():
        items.append(Item(group, name, _png(img)))
        w, h = img.size
        for j, box in enumerate(((0, 0, w // 2, h // 2), (w // 2, h // 2, w, h))):
            items.append(Item(group, f"{name}#{j}", _png(img.crop(box))))
    from medxpert_utils.data.images import load_image

    for name, content in dicom_files():
        items.append(Item("dicom", name, content))
        items.append(Item("dicom_pixels", f"{name}.png", _png(load_image(content, name=name))))
    items += [Item("noise", name, _png(img)) for name, img in noise_images(n_per_group, seed)]
    items += [Item("document", f"page_{i}", _png(img)) for i, img in enumerate(documents(n_per_group, seed))]
    items += radiograph_variants(test_paths, n_per_group, seed)
    return items


# --- metrics --------------------------------------------------------------------------------------------------

def auroc_fpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> dict[str, float]:
    """AUROC (out-of-distribution as the positive class, higher score = more out) and the share of
    out-of-distribution images accepted at the threshold that accepts ``tpr`` of the in-distribution ones."""
    from sklearn.metrics import roc_auc_score, roc_curve

    id_scores, ood_scores = np.asarray(id_scores, float), np.asarray(ood_scores, float)
    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    s = np.r_[id_scores, ood_scores]
    s = np.where(np.isfinite(s), s, np.nanmax(s[np.isfinite(s)]) + 1.0)
    auroc = float(roc_auc_score(y, s))
    # in-distribution as positives (Sun et al.): FPR at the first threshold with TPR >= tpr
    fpr_curve, tpr_curve, _ = roc_curve(1 - y, -s)
    fpr = float(fpr_curve[np.searchsorted(tpr_curve, tpr, side="left")])
    return {"auroc": auroc, f"fpr@{int(tpr * 100)}tpr": fpr}


def evaluate(run: Any, model: str = "fine_tuned", n_per_group: int = 30, seed: int = 0,
             ks: tuple[int, ...] = (1, 5, 10, 20, 50), progress: bool = False) -> tuple[dict[str, Any], pd.DataFrame]:
    """Score the run's test images and the out-of-distribution set with every method; returns (summary, table).

    Every image goes the way a query goes: decoded from its file, embedded with the engine's CLIP, gated by its
    facts. ``summary``: per method/k the AUROC and FPR@95TPR of the score alone and of the whole check (gates
    first), the share of test images the calibrated threshold accepts, and per group the share flagged.
    ``table``: one row per image (group, name, facts, every score, the check's verdict).
    """
    from medxpert_utils.core import config
    from medxpert_utils.data.images import read_query_image
    from medxpert_utils.retrieval import ood
    from medxpert_utils.retrieval.search import SearchEngine
    from medxpert_utils.retrieval.store import load_embeddings

    cfg = run if hasattr(run, "paths") else config.from_run(run)
    engine = SearchEngine.from_run(cfg.run_dir, model=model)
    corpus = load_embeddings(cfg.paths.embeddings(model), corpus=True)
    test_paths = corpus.rows.loc[corpus.rows["split"] == cfg.embed.eval_split, "image_path"].astype(str).tolist()
    if not test_paths:
        raise UserError(f"no {cfg.embed.eval_split} images in the corpus of {model} to evaluate the query check on")
    items = [Item("in_distribution", os.path.basename(p), Path(p).read_bytes()) for p in test_paths]
    vectors, facts = [], []
    with warnings.catch_warnings():  # pydicom's test files are odd on purpose; its warnings about them are noise here
        warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
        items += ood_set(test_paths, n_per_group, seed)
        for start in range(0, len(items), 64):
            chunk = items[start:start + 64]
            decoded = [read_query_image(it.content, name=it.name) for it in chunk]  # pixels and facts, one decode
            vectors.append(engine.embed_image([image for image, _ in decoded]))
            facts += [image_facts for _, image_facts in decoded]
    vectors = np.concatenate(vectors)
    bank_rows, val_rows, _ = ood.split_bank(corpus.rows["split"].to_numpy(), cfg.seed)
    bank, val = np.asarray(corpus.image)[bank_rows], np.asarray(corpus.image)[val_rows]
    qc = cfg.query_check
    gated = np.array([ood.gate_reason(f, qc.colour_limit) is not None for f in facts])
    table = pd.DataFrame({"group": [it.group for it in items], "name": [it.name for it in items],
                          "colourfulness": [f.colourfulness for f in facts], "gated": gated})
    is_id = (table["group"] == "in_distribution").to_numpy()
    methods = [("knn", k) for k in ks] + [("mahalanobis", 0)]
    results: dict[str, Any] = {}
    for method, k in methods:
        label = f"knn_k{k}" if method == "knn" else "mahalanobis"
        threshold, _ = ood.calibrate(bank, val, method, max(k, 1), qc.accept)
        score = ood.scores(method, bank, vectors, max(k, 1))
        table[label] = score
        check = np.where(gated, np.inf, score)
        flagged = check > threshold
        results[label] = {
            "threshold": threshold,
            "score_only": auroc_fpr(score[is_id], score[~is_id]),
            "with_gates": auroc_fpr(check[is_id], check[~is_id]),
            "test_accepted": float(np.mean(~flagged[is_id])),
            "ood_flagged": float(np.mean(flagged[~is_id])),
            "flagged_by_group": {g: float(np.mean(flagged[(table["group"] == g).to_numpy()]))
                                 for g in table["group"].unique() if g != "in_distribution"},
        }
        table[f"{label}_flagged"] = flagged
    groups = table[~is_id].groupby("group").size().to_dict()
    summary = {"run": cfg.run_name, "model": model, "params": qc.model_dump(mode="json"),
               "n_in_distribution": int(is_id.sum()), "n_out_of_distribution": int((~is_id).sum()),
               "groups": {g: int(n) for g, n in groups.items()}, "n_reference": int(len(bank)),
               "n_calibration": int(len(val)), "methods": results,
               "chosen": f"knn_k{qc.k}" if qc.method == "knn" else "mahalanobis"}
    return summary, table


def summary_frame(summary: dict[str, Any]) -> pd.DataFrame:
    """One row per score: AUROC and FPR@95TPR alone and with the gates, test images accepted, groups missed."""
    rows = []
    for name, r in summary["methods"].items():
        rows.append({"score": name + (" (the run's check)" if name == summary.get("chosen") else ""),
                     "AUROC": round(r["score_only"]["auroc"], 4), "FPR@95TPR": round(r["score_only"]["fpr@95tpr"], 4),
                     "AUROC with gates": round(r["with_gates"]["auroc"], 4),
                     "FPR@95TPR with gates": round(r["with_gates"]["fpr@95tpr"], 4),
                     "test accepted": round(r["test_accepted"], 4),
                     "groups not all flagged": ", ".join(f"{g} {v:.0%}" for g, v in r["flagged_by_group"].items()
                                                         if v < 1) or "-"})
    return pd.DataFrame(rows)
