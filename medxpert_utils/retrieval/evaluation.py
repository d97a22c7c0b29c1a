"""Retrieval evaluation of a run: ``metrics/retrieval.json`` from its saved embeddings of both models, the
tables notebook 03 and ``medxpert eval`` show, and a gallery of example queries. The metric definitions
are those of :mod:`medxpert_utils.retrieval.metrics`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medxpert_utils.core import config, io, stages
from medxpert_utils.core.errors import RunNotReadyError
from medxpert_utils.data.labels import CHEXPERT_LABELS
from medxpert_utils.models import clip
from medxpert_utils.retrieval.metrics import (
    CONTRACT_KS,
    DEFINITIONS,
    DIRECTIONS,
    MODELS,
    chance_recall,
    dense_groups,
    evaluate_embeddings,
    group_stats,
    image_to_image_precision,
    rank_queries,
)
from medxpert_utils.retrieval.store import load_embeddings

# The reference project's published table (MIMIC-CXR, 3,062 test cases): context, not our results.
REFERENCE = {
    "source": "reference project as published (CLIP on 3,062 MIMIC-CXR test cases)",
    "zero_shot": {"R@1": 0.124, "R@5": 0.281, "R@10": 0.415},
    "fine_tuned": {"R@1": 0.347, "R@5": 0.612, "R@10": 0.759},
}


# --- a run ----------------------------------------------------------------------------------------------------

def _positives(rows: pd.DataFrame, label_names: Sequence[str]) -> np.ndarray:
    return np.stack([(rows[name] == 1).fillna(False).to_numpy(dtype=bool) for name in label_names], axis=1)


def evaluate_run(run: str | Path, write: bool = False) -> dict[str, Any]:
    """The retrieval.json payload for a run, from its saved split embeddings of both models.

    With ``write`` also writes ``metrics/retrieval.json`` and ``metrics/retrieval_table.csv``.
    Raises :class:`RunNotReadyError` naming stage 02 when embeddings are missing.
    """
    cfg = config.from_run(run)
    ev = cfg.eval
    loaded = {m: load_embeddings(cfg.paths.embeddings(m)) for m in MODELS}
    first = loaded[MODELS[0]]
    for name, emb in loaded.items():
        if not np.array_equal(emb.ids["study_id"].to_numpy(), first.ids["study_id"].to_numpy()):
            raise RunNotReadyError(f"embeddings/{name} cover other rows than embeddings/{MODELS[0]} - "
                                   f"{stages.hint('02', cfg.run_name, force=True)}")
    groups = first.ids["report_group"].to_numpy()
    positives = _positives(first.rows, CHEXPERT_LABELS)
    ks = sorted(set(ev.ks) | set(CONTRACT_KS))
    result: dict[str, Any] = {
        "split": str(first.cache_key.get("eval_split", cfg.embed.eval_split)),
        "n_images": int(len(groups)),
        "n_reports": int(len(np.unique(groups))),
        "models": {},
        "ks": ks,
        "precision_k": ev.precision_k,
        "bootstrap": ev.bootstrap,
        "seed": cfg.seed,
        "chance": {d: chance_recall(d, groups, ks) for d in DIRECTIONS},
        "report_groups": group_stats(groups),
        "definitions": DEFINITIONS,
        "reference": REFERENCE,
    }
    for name, emb in loaded.items():
        block = evaluate_embeddings(emb.image, emb.text, groups, positives, CHEXPERT_LABELS, ks=ks,
                                    curve_max_k=ev.curve_max_k, precision_k=ev.precision_k,
                                    n_boot=ev.bootstrap, seed=cfg.seed)
        block["model_spec"] = emb.cache_key.get("model_spec")
        if name == "zero_shot":
            block["untrained_base"] = bool(clip.is_untrained_base(cfg))
        block["image_to_image"] = image_to_image(cfg, emb, ev.precision_k)
        result["models"][name] = block
    if write:
        io.write_json(cfg.paths.metrics / "retrieval.json", result)
        table = retrieval_table(result)
        with io.atomic_path(cfg.paths.metrics / "retrieval_table.csv", suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)
    return result


def image_to_image(cfg: config.Config, emb: Any, k: int) -> dict[str, Any]:
    """Label Precision@K of the split's images as queries against the corpus images, leaving out the query's own
    study and every study of its patient (so a near-copy cannot answer)."""
    from medxpert_utils.data.manifest import read as read_manifest

    corpus = load_embeddings(emb.path, corpus=True)
    patients = read_manifest(cfg.run_dir)["patient_id"].astype(str).to_numpy()
    q_rows, c_rows = emb.rows["row"].to_numpy(), corpus.rows["row"].to_numpy()
    block = image_to_image_precision(
        emb.image, _positives(emb.rows, CHEXPERT_LABELS),
        [emb.rows["study_id"].astype(str).to_numpy(), patients[q_rows]],
        corpus.image, _positives(corpus.rows, CHEXPERT_LABELS),
        [corpus.rows["study_id"].astype(str).to_numpy(), patients[c_rows]],
        k=k, n_boot=cfg.eval.bootstrap, seed=cfg.seed)
    block["per_label"] = {CHEXPERT_LABELS[j]: v for j, v in block["per_label"].items()}
    block["excluded"] = "the query's own study and every study of its patient"
    return block


def image_to_image_table(result: dict[str, Any]) -> pd.DataFrame:
    """Image->image label Precision@K (percent, 95% CI) per model."""
    rows = {}
    for model, column in _COLUMN.items():
        block = result["models"].get(model, {}).get("image_to_image")
        if not block:
            continue
        name = next(key for key in block if key.startswith("P@"))
        ci = block["ci95"].get(name)
        value = block[name]
        rows[column] = "-" if value is None else f"{100 * value:.1f}" + (
            f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")
    return pd.DataFrame(rows, index=pd.Index(["image->image label " + name], name="metric"))


_COLUMN = {"zero_shot": "Zero-Shot", "fine_tuned": "Fine-Tuned"}


def retrieval_table(result: dict[str, Any], metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The published-style table in percent: rows Recall@K per direction, a column (+ CI) per model."""
    metrics = list(metrics or [f"R@{k}" for k in CONTRACT_KS])
    rows = []
    for direction in DIRECTIONS:
        for metric in metrics:
            label = metric.replace("R@", "Recall@").replace("P@", "Precision@")
            row: dict[str, Any] = {"direction": direction, "metric": label}
            for model, column in _COLUMN.items():
                block = result["models"].get(model)
                if block is None:
                    continue
                value = block[direction].get(metric)
                ci = block[direction].get("ci95", {}).get(metric)
                row[column] = None if value is None else round(100 * value, 1)
                row[f"{column} CI low"] = None if not ci else round(100 * ci[0], 1)
                row[f"{column} CI high"] = None if not ci else round(100 * ci[1], 1)
            rows.append(row)
    return pd.DataFrame(rows)


def pretty_table(result: dict[str, Any], metrics: Sequence[str] | None = None, chance: bool = False) -> pd.DataFrame:
    """Display table: rows (direction, metric), one column per model as "value [CI]" in percent.

    The zero-shot column says "(untrained: random weights)" when the base was never trained;
    ``chance`` adds a random ranking's Recall@K.
    """
    metrics = list(metrics or [f"R@{k}" for k in CONTRACT_KS])
    table = retrieval_table(result, metrics)
    out = pd.DataFrame({"direction": table["direction"], "metric": table["metric"]})
    for model, column in _COLUMN.items():
        if column not in table:
            continue
        note = " (untrained: random weights)" if result["models"][model].get("untrained_base") else ""
        out[column + note] = [
            "-" if pd.isna(v) else f"{v:.1f}" + ("" if pd.isna(lo) else f" [{lo:.1f}, {hi:.1f}]")
            for v, lo, hi in zip(table[column], table[f"{column} CI low"], table[f"{column} CI high"])]
    if chance and "chance" in result:
        out["Random ranking"] = [
            f"{100 * result['chance'][d][m]:.1f}" if m in result["chance"].get(d, {}) else "-"
            for d, m in zip(table["direction"], metrics * len(DIRECTIONS))]
    return out.set_index(["direction", "metric"])


def format_table(result: dict[str, Any]) -> str:
    """Readable text table of Recall@1/5/10, MRR and Precision@K in percent with 95% CIs, both directions."""
    pk = f"P@{result.get('precision_k', 10)}"
    head = (f"Retrieval on split '{result['split']}': {result['n_images']} images, {result['n_reports']} distinct "
            f"reports (percent, 95% CI)")
    return head + "\n" + pretty_table(result, [f"R@{k}" for k in CONTRACT_KS] + ["MRR", pk]).to_string()


def reference_table() -> pd.DataFrame:
    """The reference project's published image->text table (percent) - context, not this run's results."""
    return pd.DataFrame({"Zero-Shot": [100 * REFERENCE["zero_shot"][m] for m in ("R@1", "R@5", "R@10")],
                         "Fine-Tuned": [100 * REFERENCE["fine_tuned"][m] for m in ("R@1", "R@5", "R@10")]},
                        index=pd.Index(["Recall@1", "Recall@5", "Recall@10"], name="reference (not this run)"))


def per_label_table(result: dict[str, Any], model: str = "fine_tuned",
                    direction: str = "image_to_text") -> pd.DataFrame:
    """Per positive label of the query: number of queries and Recall@K / Precision@K in percent."""
    table = pd.DataFrame(result["models"][model][direction]["per_label"]).T
    table = table[table["n"] > 0]
    for column in table.columns.drop("n"):
        table[column] = (100 * table[column].astype(float)).round(1)
    return table.astype({"n": int}).sort_values("n", ascending=False)



def gallery_examples(run: str | Path, model: str = "fine_tuned", n: int = 4, k: int = 5,
                     seed: int = 0) -> list[dict[str, Any]]:
    """A few seeded image->text queries of the evaluated split with their top-``k`` report groups.

    Each item: ``query`` (study_id, image_path, report) and ``hits`` (rank, score, report, image_path
    of the group's first image, is_hit), ranked as in the metrics.
    """
    cfg = config.from_run(run)
    emb = load_embeddings(cfg.paths.embeddings(model))
    dense, first = dense_groups(emb.ids["report_group"].to_numpy())
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(dense), size=min(n, len(dense)), replace=False))
    res = rank_queries(emb.image[picks], dense[picks], emb.text[first], np.arange(len(first)), top_k=k)
    rows = emb.rows
    out = []
    for qi, row_index in enumerate(picks):
        q = rows.iloc[row_index]
        hits = []
        for rank, (g, score) in enumerate(zip(res["top"][qi], res["top_scores"][qi]), start=1):
            h = rows.iloc[first[g]]
            hits.append({"rank": rank, "score": float(score), "report": h["report"], "image_path": h["image_path"],
                         "is_hit": bool(g == dense[row_index])})
        out.append({"query": {"study_id": q["study_id"], "image_path": q["image_path"], "report": q["report"]},
                    "hits": hits})
    return out


# --- stage 03 -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvaluationStageResult:
    """What :func:`run_stage` computed and wrote, for notebook 03 to show."""

    retrieval: dict[str, Any]  # metrics/retrieval.json
    classification: dict[str, Any]  # metrics/classification.json
    ood_summary: dict[str, Any]  # the query check against out-of-distribution images (retrieval.ood_eval)
    ood_table: pd.DataFrame  # one row per image of that check
    grounding: dict[str, Any] | None  # metrics/grounding.json (demo source only), else None
    figures: dict[str, Path]  # name -> PNG under figures/


def run_stage(cfg: config.Config) -> EvaluationStageResult:
    """Stage 03 (notebook ``03_retrieval_eval``): retrieval metrics of both models, zero-shot and linear-probe
    classification, the query check against out-of-distribution images, phrase grounding (demo source only),
    an example gallery, and their figures under ``figures/``. Everything is computed from stage 02's vectors."""
    import matplotlib.pyplot as plt

    from medxpert_utils.retrieval import classification, grounding, ood_eval
    from medxpert_utils.viz import plots

    figures: dict[str, Path] = {}

    def keep(name: str, draw: Callable[[Path], Any]) -> None:
        path = cfg.paths.figures / f"{name}.png"
        plt.close(draw(path))
        figures[name] = path

    retrieval = evaluate_run(cfg.run_dir, write=True)
    keep("retrieval_recall_curves", lambda path: plots.recall_curves(retrieval, path))
    keep("retrieval_per_label", lambda path: plots.per_label_recall(retrieval, "R@10", path))
    classes = classification.evaluate_classification(cfg, write=True)
    keep("classification_auroc", lambda path: plots.classification_auroc(classes, path))
    ood_summary, ood_table = ood_eval.evaluate(cfg, n_per_group=10)
    chosen = ood_summary["chosen"]
    keep("ood_scores", lambda path: plots.ood_scores(ood_table, chosen, ood_summary["methods"][chosen]["threshold"],
                                                     path=path))
    ground = None
    if cfg.data.source == "demo":  # only the demo generator knows where it drew each finding
        ground = grounding.evaluate_grounding(cfg.run_dir)
        keep("grounding_examples", lambda path: grounding.grounding_figure(cfg.run_dir, n=6, path=path))
    examples = gallery_examples(cfg.run_dir, "fine_tuned", n=cfg.eval.gallery_queries, k=5, seed=cfg.seed)
    keep("retrieval_gallery", lambda path: plots.retrieval_gallery(examples, path))
    return EvaluationStageResult(retrieval, classes, ood_summary, ood_table, ground, figures)
