"""Retrieval metrics on embedding matrices (pure numpy): Recall@K, MRR, label Precision@K, CIs, curves.

Definitions (also written into ``metrics/retrieval.json`` under ``definitions``):

* **Candidates.** Image->text ranks the split's *distinct report groups* (rows whose normalised
  report text is the same form one group; the group's text embedding is that of its first row), so
  copies of one report cannot compete with each other. Text->image queries each report group once
  (same embedding) against every image of the split.
* **Relevant.** For image->text the query image's own report group; for text->image every image of
  the query's group.
* **Ties.** Scores are cosine similarities rounded to 6 decimals (so summation-order noise of the
  matrix product cannot split a true tie). Ties are broken *pessimistically*: the rank of the first
  relevant candidate is ``1 + the number of irrelevant candidates scoring >= the best relevant one``.
  Ranked lists (top-K, exports, the gallery) use the same order: score descending, then irrelevant
  before relevant, then candidate index.
* **Recall@K** is the fraction of queries whose first relevant candidate has rank <= K;
  **MRR** the mean of 1/rank.
* **Precision@K (labels)** is, per query, the fraction of its top-K candidates (K clipped to the
  number of candidates) sharing at least one *positive* (value 1) CheXpert label with the query;
  "No Finding" is one of the 14 labels, so a normal study matches other normal studies. Queries
  with no positive label at all are excluded from Precision@K (their count is reported).
  A report group's labels are those of its first row.
* **95% CIs** are percentile bootstrap intervals over queries (``eval.bootstrap`` resamples, numpy
  Generator seeded from params ``seed``; both models share the resamples, so they are paired).

``retrieval.json``: ``split``, ``n_images``, ``n_reports`` and ``models.<model>.<direction>`` holding
``R@1``, ``R@5``, ``R@10``, ``MRR`` (fractions; the contract) plus ``P@K``, ``ci95``, ``n_queries``,
``curve`` and ``per_label``; ``models.zero_shot.untrained_base``; top level ``chance``,
``report_groups``, ``definitions`` and the reference project's published table (``reference``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MODELS = ("zero_shot", "fine_tuned")
DIRECTIONS = ("image_to_text", "text_to_image")
CONTRACT_KS = (1, 5, 10)
SCORE_DECIMALS = 6
_CHUNK_ELEMENTS = 1 << 24  # query chunk size: at most ~16M scores (64 MB) in memory at once

DEFINITIONS = (
    "Image->text ranks distinct report groups; text->image queries each group once and counts a hit when any "
    "image of the group is in the top K. Ties (scores rounded to 6 decimals) are pessimistic: rank = 1 + number "
    "of irrelevant candidates scoring >= the best relevant one. Precision@K: fraction of the top K sharing a "
    "positive CheXpert label with the query (queries without positive labels excluded). 95% CIs: percentile "
    "bootstrap over queries."
)


# --- ranking --------------------------------------------------------------------------------------------------

def _scores(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    return np.round(queries @ candidates.T, SCORE_DECIMALS)


def first_relevant_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of each query's best relevant candidate, ties pessimistic (see module docstring).

    ``scores`` and ``relevant`` are (queries, candidates); every query needs one relevant candidate.
    """
    relevant = np.asarray(relevant, dtype=bool)
    if not relevant.any(axis=1).all():
        raise ValueError("every query needs at least one relevant candidate")
    best = np.where(relevant, scores, -np.inf).max(axis=1)
    return 1 + ((scores >= best[:, None]) & ~relevant).sum(axis=1)


def ranked_order(scores: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """Indices of the top ``k`` candidates per query: score desc, irrelevant first on ties, then index."""
    k = min(k, scores.shape[1])
    index = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.lexsort((index, np.asarray(relevant, dtype=bool), -scores), axis=-1)
    return order[:, :k]


def rank_queries(queries: np.ndarray, query_group: np.ndarray, candidates: np.ndarray,
                 candidate_group: np.ndarray, top_k: int = 0) -> dict[str, np.ndarray]:
    """Score, rank and (optionally) list the top ``top_k`` candidates of every query, in chunks.

    A candidate is relevant to a query when their groups are equal. Returns ``ranks`` (n_queries,)
    and, when ``top_k`` > 0, ``top`` (indices) and ``top_scores``, both (n_queries, min(top_k, n)).
    """
    n_q, n_c = len(queries), len(candidates)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_c))
    ranks = np.empty(n_q, dtype=np.int64)
    k = min(top_k, n_c)
    top = np.empty((n_q, k), dtype=np.int64)
    top_scores = np.empty((n_q, k), dtype=np.float32)
    candidate_group = np.asarray(candidate_group)
    for start in range(0, n_q, chunk):
        stop = min(n_q, start + chunk)
        scores = _scores(queries[start:stop], candidates)
        relevant = candidate_group[None, :] == np.asarray(query_group[start:stop])[:, None]
        ranks[start:stop] = first_relevant_ranks(scores, relevant)
        if k:
            idx = ranked_order(scores, relevant, k)
            top[start:stop] = idx
            top_scores[start:stop] = np.take_along_axis(scores, idx, axis=1)
    out = {"ranks": ranks}
    if k:
        out.update(top=top, top_scores=top_scores)
    return out


def recall_at_k(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """``{"R@K": fraction of ranks <= K}``."""
    ranks = np.asarray(ranks)
    return {f"R@{k}": float((ranks <= k).mean()) for k in ks}


def mean_reciprocal_rank(ranks: np.ndarray) -> float:
    return float((1.0 / np.asarray(ranks, dtype=float)).mean())


def recall_curve(ranks: np.ndarray, max_k: int) -> list[float]:
    """Recall@K for K = 1 .. max_k."""
    ks = np.arange(1, max_k + 1)
    return ((np.asarray(ranks)[:, None] <= ks[None, :]).mean(axis=0)).tolist()


def label_precision(top: np.ndarray, query_pos: np.ndarray, candidate_pos: np.ndarray) -> np.ndarray:
    """Per-query label Precision@K of the ranked ``top`` (n_q, K); NaN for queries without positives.

    ``query_pos`` (n_q, L) and ``candidate_pos`` (n_c, L) are boolean "label is positive" matrices.
    """
    query_pos = np.asarray(query_pos, dtype=bool)
    shares = (candidate_pos[top] & query_pos[:, None, :]).any(axis=-1)  # (n_q, K)
    precision = shares.mean(axis=1) if top.shape[1] else np.zeros(len(top))
    return np.where(query_pos.any(axis=1), precision, np.nan)


def chance_recall(direction: str, groups: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Expected Recall@K of a random ranking (context for tiny splits)."""
    _, sizes = np.unique(groups, return_counts=True)
    n_groups, n_images = len(sizes), int(sizes.sum())
    out = {}
    for k in ks:
        if direction == "image_to_text":
            out[f"R@{k}"] = min(k, n_groups) / n_groups
        else:  # P(at least one of a group's m images among k random picks of n)
            i = np.arange(min(k, n_images))
            miss = np.prod((n_images - sizes[:, None] - i[None, :]).clip(min=0) / (n_images - i[None, :]), axis=1)
            out[f"R@{k}"] = float((1 - miss).mean())
    return out


def bootstrap_ci(values: np.ndarray, n_boot: int, rng: np.random.Generator,
                 level: float = 0.95) -> np.ndarray:
    """Percentile bootstrap CI of column means of ``values`` (n_q, m); NaNs are excluded per column.

    Returns (m, 2) [low, high]; NaN when ``n_boot`` is 0. Resampling is done with multinomial
    weights, so all columns share the same resamples.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    n, m = values.shape
    if n_boot <= 0 or n == 0:
        return np.full((m, 2), np.nan)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)  # (B, n)
    valid = ~np.isnan(values)
    sums = weights @ np.where(valid, values, 0.0)
    counts = weights @ valid.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    alpha = (1 - level) / 2
    return np.nanquantile(means, [alpha, 1 - alpha], axis=0).T


# --- one model ------------------------------------------------------------------------------------------------

def dense_groups(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups -> dense ids 0..G-1 and the first row of each group."""
    uniques, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    order = np.argsort(first)  # number groups by first appearance
    remap = np.empty(len(uniques), dtype=np.int64)
    remap[order] = np.arange(len(uniques))
    return remap[inverse], first[order]


def evaluate_embeddings(image: np.ndarray, text: np.ndarray, groups: np.ndarray, positives: np.ndarray,
                        label_names: Sequence[str], ks: Sequence[int] = CONTRACT_KS, curve_max_k: int = 50,
                        precision_k: int = 10, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Both directions for one model's split embeddings (rows aligned: image i, report i, group i).

    ``positives`` is the (n, 14) boolean positive-label matrix of the rows. Returns the per-model
    block of retrieval.json: per direction the figures (``R@K``, ``MRR``, ``P@K``: fractions) and
    ``ci95`` (``[low, high]`` per figure), ``n_queries``, ``n_precision_queries``, ``curve``
    (Recall@1..curve_max_k) and ``per_label``.
    """
    image = np.ascontiguousarray(image, dtype=np.float32)
    text = np.ascontiguousarray(text, dtype=np.float32)
    positives = np.asarray(positives, dtype=bool)
    dense, first = dense_groups(groups)
    group_text, group_pos = text[first], positives[first]
    ks = sorted(set(ks) | set(CONTRACT_KS))
    setups = {  # queries, their groups, candidates, candidate groups, query/candidate labels
        "image_to_text": (image, dense, group_text, np.arange(len(first)), positives, group_pos),
        "text_to_image": (group_text, np.arange(len(first)), image, dense, group_pos, positives),
    }
    out: dict[str, Any] = {}
    for d_index, (direction, (q, qg, c, cg, q_pos, c_pos)) in enumerate(setups.items()):
        res = rank_queries(q, qg, c, cg, top_k=precision_k)
        ranks = res["ranks"]
        precision = label_precision(res["top"], q_pos, c_pos)
        figures = {**recall_at_k(ranks, ks), "MRR": mean_reciprocal_rank(ranks),
                   f"P@{precision_k}": float(np.nanmean(precision)) if np.isfinite(precision).any() else None}
        columns = [(ranks <= k).astype(float) for k in ks] + [1.0 / ranks, precision]
        names = [f"R@{k}" for k in ks] + ["MRR", f"P@{precision_k}"]
        ci = bootstrap_ci(np.stack(columns, axis=1), n_boot, np.random.default_rng([seed, d_index]))
        out[direction] = {
            **figures,
            "ci95": {n: (None if np.isnan(lo) else [float(lo), float(hi)]) for n, (lo, hi) in zip(names, ci)},
            "n_queries": int(len(ranks)),
            "n_precision_queries": int(np.isfinite(precision).sum()),
            "curve": recall_curve(ranks, curve_max_k),
            "per_label": per_label_breakdown(ranks, precision, q_pos, label_names, ks, precision_k),
        }
    return out


def per_label_breakdown(ranks: np.ndarray, precision: np.ndarray, query_pos: np.ndarray,
                        label_names: Sequence[str], ks: Sequence[int], precision_k: int) -> dict[str, dict]:
    """Recall@K and Precision@K over the queries that have each label positive (``n`` = how many)."""
    table = {}
    for j, name in enumerate(label_names):
        mask = query_pos[:, j]
        row: dict[str, Any] = {"n": int(mask.sum())}
        for k in ks:
            row[f"R@{k}"] = float((ranks[mask] <= k).mean()) if mask.any() else None
        row[f"P@{precision_k}"] = float(np.nanmean(precision[mask])) if mask.any() else None
        table[name] = row
    return table


def group_stats(groups: np.ndarray) -> dict[str, Any]:
    """How much the split's reports repeat: distinct groups, largest group, share of rows whose report is shared."""
    _, sizes = np.unique(np.asarray(groups), return_counts=True)
    return {"n_groups": int(len(sizes)), "largest_group": int(sizes.max()),
            "rows_with_shared_report": float(sizes[sizes > 1].sum() / sizes.sum())}


def image_to_image_precision(queries: np.ndarray, query_pos: np.ndarray, query_exclude: Sequence[np.ndarray],
                             corpus: np.ndarray, corpus_pos: np.ndarray, corpus_exclude: Sequence[np.ndarray],
                             k: int = 10, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Label Precision@K of image queries against an image corpus, leaving out candidates that share any of the
    query's keys in ``query_exclude``/``corpus_exclude`` (e.g. study and patient ids, aligned arrays per key).

    Same Precision@K definition as the cross-modal directions (shares a positive label; queries without positive
    labels excluded). Returns ``P@K``, ``ci95``, ``n_queries``, ``n_precision_queries``, ``per_label``.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    corpus = np.ascontiguousarray(corpus, dtype=np.float32)
    k = int(min(k, len(corpus)))
    top = np.empty((len(queries), k), dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // max(1, len(corpus)))
    for start in range(0, len(queries), step):
        stop = min(start + step, len(queries))
        scores = _scores(queries[start:stop], corpus)
        for q_key, c_key in zip(query_exclude, corpus_exclude):
            scores[np.asarray(q_key[start:stop])[:, None] == np.asarray(c_key)[None, :]] = -np.inf
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
        top[start:stop] = np.take_along_axis(part, order, axis=1)
    precision = label_precision(top, query_pos, np.asarray(corpus_pos, dtype=bool))
    ci = bootstrap_ci(precision, n_boot, np.random.default_rng([seed, 7]))[0]
    name = f"P@{k}"
    per_label = {}
    for j in range(query_pos.shape[1]):
        mask = np.asarray(query_pos)[:, j]
        per_label[j] = {"n": int(mask.sum()), name: float(np.nanmean(precision[mask])) if mask.any() else None}
    return {name: float(np.nanmean(precision)) if np.isfinite(precision).any() else None,
            "ci95": {name: None if np.isnan(ci[0]) else [float(ci[0]), float(ci[1])]},
            "n_queries": int(len(queries)), "n_precision_queries": int(np.isfinite(precision).sum()),
            "per_label": per_label}
