"""Classification from a run's embeddings, as chest X-ray CLIP papers report it: ``metrics/classification.json``.

* **Zero-shot** (CheXzero's protocol): for each of the 14 observations a positive and a negative prompt
  (params ``eval.classification``: templates ``positive``/``negative`` with ``{finding}``, per-observation
  ``phrases`` or explicit ``pairs``); an image's score is the softmax over the pair of image-prompt similarities,
  a monotone function of ``sim(positive) - sim(negative)``, which is what the AUROC sees. Where params list
  several candidate phrases, each model uses the one with the best AUROC on the validation split (recorded under
  ``prompts``); the test split never chooses. A phrase with a ``{location}`` slot ("{location} pneumonia") is a
  prompt ensemble (CLIP's): its embedding is the normalised mean over ``eval.classification.locations``
  ("right lower lobe pneumonia", "left upper lobe pneumonia", ...), for findings that reports always place.
* **Linear probe** (CLIP_benchmark's): per observation a logistic regression (scikit-learn) on the frozen image
  embeddings of the training split, its inverse regularisation ``C`` chosen on the validation split by mean AUROC.
* **Labels.** An image is positive for an observation when its label is 1; 0 and "not mentioned" (None) are
  negative; uncertain (-1) images are left out of that observation's AUROC (and of the probe's training).
* **AUROC** is the Mann-Whitney statistic (ties count one half), 95% CIs percentile bootstrap over test images
  (``eval.bootstrap`` resamples seeded from ``seed``; both models and both methods share the resamples). The mean
  is taken over observations with at least ``eval.classification.min_positives`` positives in the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medxpert_utils.core import config, io
from medxpert_utils.core.config import Config, ConfigError
from medxpert_utils.data.labels import CHEXPERT_LABELS
from medxpert_utils.models import clip
from medxpert_utils.retrieval.metrics import MODELS
from medxpert_utils.retrieval.store import load_embeddings

METHODS = ("zero_shot_prompts", "linear_probe")
LOCATION = "{location}"  # the slot a phrase fills from eval.classification.locations (a prompt ensemble)
DEFINITIONS = (
    "Zero-shot: softmax over a positive and a negative prompt per observation (CheXzero), scored as "
    "sim(positive) - sim(negative). Linear probe: logistic regression on frozen training-split image embeddings, C "
    "chosen on the validation split. Positive = label 1; 0 and not mentioned = negative; uncertain (-1) left out. "
    "AUROC = Mann-Whitney (ties one half); 95% CIs percentile bootstrap over test images; the mean covers "
    "observations with at least min_positives positives."
)


# --- AUROC --------------------------------------------------------------------------------------------------

def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive``; NaN when one class is absent.

    The Mann-Whitney U statistic from average ranks, so tied scores count one half.
    """
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auroc(scores: np.ndarray, positive: np.ndarray, resamples: np.ndarray,
                    valid: np.ndarray | None = None) -> np.ndarray:
    """AUROC on each resample (rows of indices into ``scores``), all at once; rows where ``valid`` is False are
    left out of every resample. NaN where a resample lacks a class. Same statistic as :func:`auroc`."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    valid = np.ones(len(scores), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if len(resamples) == 0:
        return np.zeros(0)
    drawn = np.where(valid, scores, np.nan)[resamples]  # (B, n); left-out rows are NaN, ranked among none
    ranks = rankdata(drawn, axis=1, nan_policy="omit")
    pos = (positive & valid)[resamples]
    n_pos = pos.sum(axis=1)
    n_neg = valid[resamples].sum(axis=1) - n_pos
    u = np.where(pos, ranks, 0.0).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _ci(values: np.ndarray) -> list[float] | None:
    values = values[np.isfinite(values)]
    return [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))] if len(values) else None


# --- labels and prompts -------------------------------------------------------------------------------------

def label_targets(rows: pd.DataFrame, labels: Sequence[str] = CHEXPERT_LABELS) -> tuple[np.ndarray, np.ndarray]:
    """(positive, usable) boolean matrices (n, L): positive = label 1, usable = label is not uncertain (-1)."""
    values = np.stack([pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=float) for name in labels], axis=1)
    return values == 1, values != -1


def prompt_candidates(cfg: Config) -> dict[str, list[tuple[str, str]]]:
    """Candidate (positive, negative) prompts per observation from params ``eval.classification``.

    ``pairs`` gives an explicit pair; else each phrase of ``phrases`` (one, or a list of candidates that the
    validation split chooses between) goes into the templates; observations in neither use their name in lower
    case. A negative template without ``{finding}`` is one fixed negative prompt for every observation.
    """
    params = cfg.eval.classification
    unknown = sorted((set(params.phrases) | set(params.pairs)) - set(CHEXPERT_LABELS))
    if unknown:
        raise ConfigError(f"eval.classification: '{unknown[0]}' is not one of the 14 observations - "
                          f"use one of: {', '.join(CHEXPERT_LABELS)}")
    out = {}
    for label in CHEXPERT_LABELS:
        if label in params.pairs:
            out[label] = [(str(params.pairs[label][0]), str(params.pairs[label][1]))]
            continue
        entry = params.phrases.get(label, label.lower())
        phrases = [entry] if isinstance(entry, str) else list(entry)
        out[label] = [(params.positive.format(finding=ph, location=LOCATION),
                       params.negative.format(finding=ph, location=LOCATION)) for ph in phrases]
    if not params.locations and any(LOCATION in t for options in out.values() for pair in options for t in pair):
        raise ConfigError("eval.classification: a prompt has a {location} slot but eval.classification.locations "
                          "is empty - list the locations, e.g. [right lower lobe, left lower lobe]")
    return out


def expand_locations(text: str, locations: Sequence[str]) -> list[str]:
    """The prompts a (possibly ``{location}``-slotted) text stands for: one per location, or the text itself."""
    return [text.replace(LOCATION, loc) for loc in locations] if LOCATION in text else [text]


def prompt_scores(image: np.ndarray, positive_text: np.ndarray, negative_text: np.ndarray) -> np.ndarray:
    """(n_images, L) zero-shot scores: sim(image, positive prompt) - sim(image, negative prompt)."""
    return image @ positive_text.T - image @ negative_text.T


def embed_prompts(cfg: Config, model: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Unit text embedding of each distinct prompt with the run's ``model``; a ``{location}`` prompt's is the
    normalised mean of its expansions' (:func:`expand_locations`)."""
    from medxpert_utils.retrieval.encoders import embed_texts

    locations = cfg.eval.classification.locations
    keys = sorted(set(texts))
    distinct = sorted({e for t in keys for e in expand_locations(t, locations)})
    net, processor = clip.load_clip(clip.model_specs(cfg)[model], device="cpu")
    vectors = dict(zip(distinct, embed_texts(net, processor, distinct, max_length=cfg.clip.max_length, device="cpu",
                                             progress=False)))
    out = {}
    for key in keys:
        expanded = expand_locations(key, locations)
        if len(expanded) == 1:
            out[key] = vectors[expanded[0]]
            continue
        mean = np.mean([vectors[e] for e in expanded], axis=0)
        out[key] = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
    return out


def choose_prompts(candidates: dict[str, list[tuple[str, str]]], vectors: dict[str, np.ndarray],
                   val: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> dict[str, dict[str, Any]]:
    """Per observation the candidate pair with the best validation AUROC (``val`` = images, positive, usable);
    the first candidate where there is one, or no validation split. Returns {label: positive, negative,
    val_auroc (None when not chosen on validation), candidates}."""
    out = {}
    for j, label in enumerate(CHEXPERT_LABELS):
        options = candidates[label]
        best, best_auc, tried = options[0], None, {}
        if len(options) > 1 and val is not None and len(val[0]):
            x, pos, ok = val
            for p, n in options:
                score = x[ok[:, j]] @ vectors[p] - x[ok[:, j]] @ vectors[n]
                tried[p] = auroc(score, pos[ok[:, j], j])
            finite = {p: v for p, v in tried.items() if np.isfinite(v)}
            if finite:
                chosen = max(finite, key=finite.get)
                best, best_auc = next(o for o in options if o[0] == chosen), float(finite[chosen])
        out[label] = {"positive": best[0], "negative": best[1], "val_auroc": best_auc,
                      "candidates": {p: (None if not np.isfinite(v) else float(v)) for p, v in tried.items()}}
    return out


# --- linear probe -------------------------------------------------------------------------------------------

def linear_probe_scores(train_x: np.ndarray, train_pos: np.ndarray, train_ok: np.ndarray, test_x: np.ndarray,
                        val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                        cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0), seed: int = 0,
                        min_train_positives: int = 5) -> tuple[np.ndarray, float, dict[str, float]]:
    """Test-set probabilities (n_test, L) of one logistic regression per observation, NaN columns where the
    training split has fewer than ``min_train_positives`` positives (or negatives).

    ``C`` is the value of ``cs`` with the best mean validation AUROC (``val`` = x, positive, usable), else 1.0.
    Returns (scores, chosen C, {C: mean validation AUROC}).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    def fit_predict(c: float, x_out: np.ndarray) -> np.ndarray:
        out = np.full((len(x_out), train_pos.shape[1]), np.nan)
        for j in range(train_pos.shape[1]):
            ok = train_ok[:, j]
            y = train_pos[ok, j]
            if y.sum() < min_train_positives or (~y).sum() < min_train_positives:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(train_x[ok], y)
            out[:, j] = clf.predict_proba(x_out)[:, 1]
        return out

    search: dict[str, float] = {}
    best_c = 1.0
    if val is not None and len(val[0]) and len(cs) > 1:
        val_x, val_pos, val_ok = val
        for c in cs:
            scores = fit_predict(float(c), val_x)
            aucs = [auroc(scores[val_ok[:, j], j], val_pos[val_ok[:, j], j]) for j in range(scores.shape[1])
                    if np.isfinite(scores[:, j]).all()]
            search[f"{c:g}"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
        finite = {c: v for c, v in search.items() if np.isfinite(v)}
        if finite:
            best_c = float(max(finite, key=finite.get))
    elif len(cs) == 1:
        best_c = float(cs[0])
    return fit_predict(best_c, test_x), best_c, search


# --- one method's scores -> the json block -------------------------------------------------------------------

def score_block(scores: np.ndarray, positive: np.ndarray, usable: np.ndarray, resamples: np.ndarray,
                min_positives: int, labels: Sequence[str] = CHEXPERT_LABELS) -> dict[str, Any]:
    """Per-observation AUROC with CI and counts, and the mean over observations with enough positives."""
    per: dict[str, dict[str, Any]] = {}
    boot = np.full((len(resamples), len(labels)), np.nan)
    included = []
    for j, label in enumerate(labels):
        ok = usable[:, j] & np.isfinite(scores[:, j])
        n_pos = int((positive[:, j] & ok).sum())
        n_neg = int((~positive[:, j] & ok).sum())
        row: dict[str, Any] = {"n_positive": n_pos, "n_negative": n_neg, "n_uncertain": int((~usable[:, j]).sum())}
        if not np.isfinite(scores[:, j]).any():
            row.update(auroc=None, ci95=None, note="no model for this observation (too few training positives)")
        else:
            col = np.where(ok, scores[:, j], np.nan)
            value = auroc(col[ok], positive[ok, j])
            if len(resamples):
                boot[:, j] = bootstrap_auroc(col, positive[:, j], resamples, valid=ok)
            row.update(auroc=None if np.isnan(value) else value, ci95=_ci(boot[:, j]))
            if n_pos >= min_positives and n_neg > 0:
                included.append(j)
        per[label] = row
    mean = float(np.mean([per[labels[j]]["auroc"] for j in included])) if included else None
    mean_ci = _ci(np.nanmean(boot[:, included], axis=1)) if included and len(resamples) else None
    return {"mean_auroc": mean, "mean_ci95": mean_ci, "mean_over": [labels[j] for j in included],
            "per_observation": per}


# --- a run --------------------------------------------------------------------------------------------------

def evaluate_classification(run: str | Path | Config, write: bool = False) -> dict[str, Any]:
    """The classification.json payload for a run: zero-shot prompts and a linear probe, both models, on the
    evaluated split. With ``write`` also writes ``metrics/classification.json``."""
    cfg = run if isinstance(run, Config) else config.from_run(run)
    params = cfg.eval.classification
    candidates = prompt_candidates(cfg)
    result: dict[str, Any] = {
        "split": cfg.embed.eval_split,
        "prompt_candidates": {label: [list(pair) for pair in options] for label, options in candidates.items()},
        "locations": list(params.locations),
        "min_positives": params.min_positives,
        "bootstrap": cfg.eval.bootstrap,
        "seed": cfg.seed,
        "definitions": DEFINITIONS,
        "models": {},
    }
    rng = np.random.default_rng(cfg.seed)
    resamples = None
    for model in MODELS:
        emb = load_embeddings(cfg.paths.embeddings(model))
        corpus = load_embeddings(cfg.paths.embeddings(model), corpus=True)
        positive, usable = label_targets(emb.rows)
        if resamples is None:
            n = len(emb.rows)
            resamples = rng.integers(0, n, size=(cfg.eval.bootstrap, n)) if n else np.zeros((0, 0), dtype=int)
            result["n_images"] = int(n)
        split = corpus.rows["split"].astype(str).to_numpy()
        train, val = split == "train", split == "val"
        val_args = None
        if val.any():
            v_pos, v_ok = label_targets(corpus.rows[val])
            val_args = (np.asarray(corpus.image[val]), v_pos, v_ok)
        vectors = embed_prompts(cfg, model, [t for options in candidates.values() for pair in options for t in pair])
        chosen = choose_prompts(candidates, vectors, val_args)
        pos_text = np.stack([vectors[chosen[label]["positive"]] for label in CHEXPERT_LABELS])
        neg_text = np.stack([vectors[chosen[label]["negative"]] for label in CHEXPERT_LABELS])
        block: dict[str, Any] = {"model_spec": clip.model_specs(cfg)[model]}
        block["zero_shot_prompts"] = score_block(prompt_scores(emb.image, pos_text, neg_text), positive, usable,
                                                 resamples, params.min_positives)
        block["zero_shot_prompts"]["prompts"] = chosen
        if not train.any():
            block["linear_probe"] = {"mean_auroc": None, "note": "the corpus (embed.corpus_splits) has no training "
                                     "split to fit the probe on"}
        else:
            tr_pos, tr_ok = label_targets(corpus.rows[train])
            scores, c, search = linear_probe_scores(np.asarray(corpus.image[train]), tr_pos, tr_ok,
                                                    np.asarray(emb.image), val_args, params.probe_c, cfg.seed)
            probe = score_block(scores, positive, usable, resamples, params.min_positives)
            probe.update(C=c, C_search=search, n_train=int(train.sum()), n_val=int(val.sum()))
            block["linear_probe"] = probe
        result["models"][model] = block
    result["untrained_base"] = bool(clip.is_untrained_base(cfg))
    if write:
        io.write_json(cfg.paths.metrics / "classification.json", result)
    return result


_COLUMN = {"zero_shot": "Zero-Shot", "fine_tuned": "Fine-Tuned"}


def _fmt(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def classification_table(result: dict[str, Any], method: str = "zero_shot_prompts") -> pd.DataFrame:
    """Per observation: positives in the split and each model's AUROC [95% CI]; the mean in the last row."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    rows = []
    for label in CHEXPERT_LABELS:
        row: dict[str, Any] = {"observation": label}
        for model, column in _COLUMN.items():
            block = result["models"].get(model, {}).get(method, {})
            per = block.get("per_observation", {}).get(label)
            if per is None:
                continue
            row["positives"] = per["n_positive"]
            row[column] = _fmt(per["auroc"], per["ci95"])
        rows.append(row)
    mean: dict[str, Any] = {"observation": f"mean (>= {result['min_positives']} positives)", "positives": None}
    for model, column in _COLUMN.items():
        block = result["models"].get(model, {}).get(method, {})
        mean[column] = _fmt(block.get("mean_auroc"), block.get("mean_ci95"))
    rows.append(mean)
    return pd.DataFrame(rows).set_index("observation")


def format_summary(result: dict[str, Any]) -> str:
    """Mean AUROC [95% CI] per method and model, one line each (``medxpert eval``)."""
    lines = [f"Classification on split '{result['split']}' ({result.get('n_images', '?')} images): mean AUROC over "
             f"observations with >= {result['min_positives']} positives [95% CI]"]
    for method in METHODS:
        for model, column in _COLUMN.items():
            block = result["models"].get(model, {}).get(method, {})
            note = " (untrained: random weights)" if model == "zero_shot" and result.get("untrained_base") else ""
            lines.append(f"  {method:<18} {column + note:<32} {_fmt(block.get('mean_auroc'), block.get('mean_ci95'))}")
    return "\n".join(lines)
