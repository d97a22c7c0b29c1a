"""Phrase grounding on the demo data: does a text's similarity map fall where the generator drew the finding?

The ``demo`` source's generator records where it drew every finding (``regions.jsonl`` beside the
dataset card, see :mod:`medxpert_utils.data.synthetic.dataset`). Each drawn, positive finding of a
split's images is one case: its report phrase ("left pleural effusion") and its boxes (one per side).
For each case and map (:mod:`.explain`):

- pointing game: the map's maximum falls inside one of the finding's boxes;
- CNR (BioViL, MS-CXR): ``|mean_in - mean_out| / sqrt(var_in + var_out)`` of the map scaled to [0, 1],
  inside vs outside the boxes;
- side: for findings in one image half, the map's maximum is in that half (laterality, coarser than pointing).

Baseline: a centre prior (a Gaussian bump at the image centre, the best guess that knows nothing).
:func:`evaluate_grounding` picks the map method on the validation split (fine-tuned model's
pointing accuracy on the local findings, CNR breaking ties), scores the zero-shot and fine-tuned
models and the prior on the test split with bootstrap 95 % CIs (cases resampled by patient), and
writes ``metrics/grounding.json``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medxpert_utils.core import io, stages
from medxpert_utils.core.errors import RunNotReadyError, UserError
from medxpert_utils.retrieval.explain import GROUNDING_FILE, METHODS, Explainer, check_method, normalise

if TYPE_CHECKING:
    import matplotlib.figure

# Findings the demo draws in one place (the observations the grounding claim is about), by generator kind.
LOCAL_KINDS = {"effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax", "lesion": "Lung Lesion",
               "consolidation": "Consolidation", "fracture": "Fracture", "device": "Support Devices"}
LOCAL = "local findings"
PRIOR = "centre_prior"
CNR_EPS = 1e-6  # variance floor of the CNR's denominator (a perfect two-valued map scores 1000, not infinity)


# --- cases --------------------------------------------------------------------------------------------------

def grounding_cases(frame: pd.DataFrame, split: str | None = None, positive_only: bool = True) -> pd.DataFrame:
    """One row per drawn finding of the manifest rows (of ``split``): the finding's phrase and boxes.

    Columns: ``image_path``, ``study_id``, ``patient_id``, ``kind``, ``observation``, ``phrase``,
    ``certainty``, ``local`` (a kind of :data:`LOCAL_KINDS`), ``boxes`` (list of ``[x0, y0, x1, y1]``
    pixel boxes of the saved image) and ``image_size``. Raises a one-line error for a source
    without regions (only the ``demo`` source records them).
    """
    from medxpert_utils.data.synthetic.dataset import REGIONS_FILE, read_regions

    if "source" in frame and not (frame["source"] == "demo").all():
        raise UserError("grounding needs the demo source: only its generator records where each finding is drawn "
                        "(data.source: demo)")
    rows = frame if split is None else frame.loc[frame["split"] == split]
    if rows.empty:
        raise UserError(f"no manifest rows in split '{split}' to ground")
    out = []
    for folder, group in rows.groupby(rows["image_path"].map(lambda p: str(Path(p).parent.parent.parent))):
        if not (Path(folder) / REGIONS_FILE).is_file():
            raise RunNotReadyError(f"no {REGIONS_FILE} in {folder} - grounding needs the demo source's finding "
                                   f"regions: {stages.hint('00', force=True)}")
        regions = read_regions(folder)
        regions = regions.loc[regions["box"].notna()]
        if positive_only:
            regions = regions.loc[regions["certainty"] == "positive"]
        by_image = {name: g for name, g in regions.groupby("image")}
        for _, row in group.iterrows():
            found = by_image.get(Path(row["image_path"]).name)
            if found is None:
                continue
            for _, f in found.groupby("finding", sort=True):
                first = f.iloc[0]
                out.append({"image_path": row["image_path"], "study_id": row["study_id"],
                            "patient_id": row.get("patient_id", row["study_id"]), "kind": first["kind"],
                            "observation": first["observation"], "phrase": first["phrase"],
                            "certainty": first["certainty"], "local": first["kind"] in LOCAL_KINDS,
                            "boxes": [list(b) for b in f["box"]], "image_size": int(first["image_size"])})
    columns = ["image_path", "study_id", "patient_id", "kind", "observation", "phrase", "certainty", "local", "boxes",
               "image_size"]
    return pd.DataFrame(out, columns=columns)


# --- scores -------------------------------------------------------------------------------------------------

def box_mask(shape: tuple[int, int], boxes: Sequence[Sequence[int]]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(0, y0):y1, max(0, x0):x1] = True
    return mask


def pointing_hit(heatmap: np.ndarray, boxes: Sequence[Sequence[int]]) -> bool:
    """The map's maximum (first one in row-major order on ties) lies inside one of ``boxes``."""
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in boxes)


def cnr(heatmap: np.ndarray, boxes: Sequence[Sequence[int]]) -> float:
    """BioViL's contrast-to-noise ratio of the [0, 1]-scaled map inside vs outside the boxes."""
    mask = box_mask(heatmap.shape, boxes)
    if mask.all() or not mask.any():
        return float("nan")
    scaled = normalise(heatmap)
    inside, outside = scaled[mask], scaled[~mask]
    spread = float(np.sqrt(inside.var() + outside.var() + CNR_EPS))  # eps: a flat map scores 0, not nan
    return float(abs(inside.mean() - outside.mean()) / spread)


def centre_prior(shape: tuple[int, int]) -> np.ndarray:
    """A Gaussian bump at the image centre (sigma a quarter of the size): the map of a model that knows nothing."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    return np.exp(-(((x - (w - 1) / 2) / (w / 4)) ** 2 + ((y - (h - 1) / 2) / (h / 4)) ** 2) / 2).astype(np.float32)


def side_hit(heatmap: np.ndarray, boxes: Sequence[Sequence[int]]) -> float:
    """For a finding in one image half (one box not crossing the midline): 1.0 when the map's maximum is in
    that half, else 0.0; nan for findings on both sides or across the midline."""
    width = heatmap.shape[1]
    if len(boxes) != 1 or (boxes[0][0] < width / 2 < boxes[0][2]):
        return float("nan")
    _, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return float((x < width / 2) == (boxes[0][2] <= width / 2))


def score_maps(cases: pd.DataFrame, maps: Sequence[np.ndarray]) -> pd.DataFrame:
    """``cases`` with ``hit`` (pointing game), ``cnr`` and ``side`` (:func:`side_hit`) of each case's map."""
    out = cases.copy()
    out["hit"] = [pointing_hit(m, b) for m, b in zip(maps, cases["boxes"])]
    out["cnr"] = [cnr(m, b) for m, b in zip(maps, cases["boxes"])]
    out["side"] = [side_hit(m, b) for m, b in zip(maps, cases["boxes"])]
    return out


def bootstrap_ci(values: np.ndarray, groups: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile CI of the mean of ``values``, resampling whole ``groups`` (patients) with replacement."""
    values = np.asarray(values, dtype=float)
    keep = ~np.isnan(values)
    values, groups = values[keep], np.asarray(groups)[keep]
    if not len(values):
        return float("nan"), float("nan")
    codes, _ = pd.factorize(groups)
    sums = np.bincount(codes, weights=values)
    counts = np.bincount(codes).astype(float)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    means = sums[pick].sum(1) / counts[pick].sum(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(scored: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per observation (and ``local findings`` pooled): n, pointing accuracy, mean CNR and side accuracy (on the
    ``n_one_side`` findings in one image half) with their CIs."""
    groups = {LOCAL: scored.loc[scored["local"]]}
    groups.update({obs: g for obs, g in scored.groupby("observation", sort=True)})
    out = {}
    for name, g in groups.items():
        if g.empty:
            continue
        entry: dict[str, Any] = {"n": int(len(g)), "local": bool(g["local"].all())}
        entry["n_one_side"] = int(g["side"].notna().sum())
        for metric, column in (("pointing", "hit"), ("cnr", "cnr"), ("side", "side")):
            values = g[column].to_numpy(dtype=float)
            if not np.isfinite(values).any():  # JSON has no NaN: a metric with no case is null
                entry[metric], entry[f"{metric}_ci95"] = None, [None, None]
                continue
            entry[metric] = float(np.nanmean(values))
            entry[f"{metric}_ci95"] = list(bootstrap_ci(values, g["patient_id"].to_numpy(), n_boot, seed))
        out[name] = entry
    return out


def _prior_maps(cases: pd.DataFrame) -> list[np.ndarray]:
    return [centre_prior((int(s), int(s))) for s in cases["image_size"]]


def _local_score(summary: dict[str, dict[str, Any]]) -> tuple[float, float]:
    entry = summary.get(LOCAL, {})
    return tuple(float("nan") if entry.get(k) is None else float(entry[k]) for k in ("pointing", "cnr"))


# --- the run ------------------------------------------------------------------------------------------------

def evaluate_grounding(run: str | os.PathLike, methods: Sequence[str] = METHODS, n_boot: int | None = None,
                       write: bool = True, progress: bool = True, compare_on_test: bool = False) -> dict[str, Any]:
    """Grounding of the run's zero-shot and fine-tuned CLIP on the demo's drawn findings; writes
    ``metrics/grounding.json`` (atomic) and returns it.

    The map method is chosen on the validation split (fine-tuned pointing accuracy on the local
    findings, then CNR); the test split is scored with it for both models and the centre prior.
    ``methods`` holds the test figures of every (model, method) scored: the chosen method's, or with
    ``compare_on_test`` every method's (three times the work), to check the choice.
    """
    from medxpert_utils.core import config
    from medxpert_utils.core.progress import tqdm
    from medxpert_utils.data import manifest
    from medxpert_utils.models.clip import is_untrained_base

    for m in methods:
        check_method(m)
    cfg = config.from_run(run)
    n_boot = int(n_boot or cfg.eval.bootstrap)
    frame = manifest.read(cfg.run_dir)
    cases = {split: grounding_cases(frame, split) for split in ("val", "test")}
    if cases["test"].empty or not cases["test"]["local"].any():
        raise UserError("the test split has no drawn local findings to ground - use the demo source with more "
                        "studies (data.n_studies)")
    started = time.perf_counter()
    explainers = {name: Explainer.from_run(cfg.run_dir, name) for name in ("zero_shot", "fine_tuned")}
    summaries: dict[str, dict[str, dict[str, Any]]] = {"val": {}, "test": {}}

    def score(split: str, name: str, method: str) -> None:
        c = cases[split]
        maps = explainers[name].maps(c["image_path"].tolist(), c["phrase"].tolist(), method)
        summaries[split][f"{name}/{method}"] = summarise(score_maps(c, maps), n_boot, cfg.seed)

    with tqdm(total=len(methods) * (3 if compare_on_test else 1) + (0 if compare_on_test else 2), desc="grounding",
              unit="map set", disable=not progress) as bar:
        for method in methods:  # the choice: the fine-tuned model on the validation split
            score("val", "fine_tuned", method)
            bar.update()
        val_scores = {m: _local_score(summaries["val"][f"fine_tuned/{m}"]) for m in methods}
        chosen = max(methods, key=lambda m: (np.nan_to_num(val_scores[m][0], nan=-1),
                                             np.nan_to_num(val_scores[m][1], nan=-1)))
        for name in explainers:
            for method in (methods if compare_on_test else [chosen]):
                score("test", name, method)
                bar.update()
    summaries["test"][PRIOR] = summarise(score_maps(cases["test"], _prior_maps(cases["test"])), n_boot, cfg.seed)
    test = {"zero_shot": summaries["test"][f"zero_shot/{chosen}"],
            "fine_tuned": summaries["test"][f"fine_tuned/{chosen}"], PRIOR: summaries["test"][PRIOR]}
    ft, zs, prior = (test[k].get(LOCAL, {}) for k in ("fine_tuned", "zero_shot", PRIOR))
    beats = {other: bool(ft and o and ft["pointing_ci95"][0] > o["pointing_ci95"][1])
             for other, o in (("zero_shot", zs), (PRIOR, prior))}
    result = {
        "split": "test",
        "n_cases": int(len(cases["test"])),
        "n_local_cases": int(cases["test"]["local"].sum()),
        "local_observations": sorted(set(LOCAL_KINDS.values())),
        "selection": {"split": "val", "criterion": "fine-tuned pointing accuracy on the local findings, then CNR",
                      "method": chosen,
                      "val_local": {m: {"pointing": val_scores[m][0], "cnr": val_scores[m][1]} for m in methods}},
        "models": test,
        "methods": {key: value for key, value in summaries["test"].items() if key != PRIOR},
        "fine_tuned_beats_ci": beats,
        "bootstrap": {"n": n_boot, "unit": "patient", "level": 0.95},
        "zero_shot_is_untrained": is_untrained_base(cfg),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if write:
        io.write_json(cfg.paths.metrics / GROUNDING_FILE, result)
    return result


def grounding_table(result: dict[str, Any]) -> pd.DataFrame:
    """``metrics/grounding.json`` as a table: one row per observation and model (pointing, CNR, CIs)."""
    rows = []
    for model, per_obs in result["models"].items():
        for obs, e in per_obs.items():
            rows.append({"observation": obs, "model": model, "n": e["n"],
                         "pointing": e["pointing"], "pointing 95% CI": tuple(round(v, 3) for v in e["pointing_ci95"]),
                         "CNR": e["cnr"], "CNR 95% CI": tuple(round(v, 3) for v in e["cnr_ci95"]),
                         "side": e.get("side"),
                         "side 95% CI": tuple(None if v is None else round(v, 3) for v in e.get("side_ci95", []))})
    table = pd.DataFrame(rows)
    order = {name: i for i, name in enumerate([LOCAL, *sorted(set(table["observation"]) - {LOCAL})])}
    return table.sort_values(["observation", "model"], key=lambda s: s.map(order) if s.name == "observation"
                             else s).set_index(["observation", "model"])


def grounding_figure(run: str | os.PathLike, n: int = 6, model: str = "fine_tuned", method: str | None = None,
                     split: str = "test", seed: int = 0,
                     path: str | os.PathLike | None = None) -> "matplotlib.figure.Figure":
    """Test images with the map of their finding's phrase, the finding's boxes and the map's maximum:
    one local finding per observation where possible (the first ``n``); saved to ``path`` when given."""
    from medxpert_utils.core import config
    from medxpert_utils.data import manifest
    from medxpert_utils.data.images import load_manifest_image
    from medxpert_utils.retrieval.explain import selected_method
    from medxpert_utils.viz.plots import heatmap_grid

    cfg = config.from_run(run)
    cases = grounding_cases(manifest.read(cfg.run_dir), split)
    cases = cases.loc[cases["local"]]
    if cases.empty:
        raise UserError(f"no drawn local findings in split '{split}' to show")
    picked = cases.groupby("observation", sort=True).head(1)
    rest = cases.drop(picked.index).sample(frac=1.0, random_state=seed)
    chosen = pd.concat([picked, rest]).head(n)
    method = method or selected_method(cfg.run_dir)
    maps = Explainer.from_run(cfg.run_dir, model).maps(chosen["image_path"].tolist(), chosen["phrase"].tolist(), method)
    images = [np.asarray(load_manifest_image(p)) for p in chosen["image_path"]]
    titles = [f"'{p}'\n{'hit' if pointing_hit(m, b) else 'miss'}"
              for p, m, b in zip(chosen["phrase"], maps, chosen["boxes"])]
    return heatmap_grid(images, [normalise(m) for m in maps], list(chosen["boxes"]), titles,
                        suptitle=f"{model} CLIP, {method} maps (box: where the finding is drawn, x: map maximum)",
                        path=path)
