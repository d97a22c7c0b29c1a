"""Figures for the notebooks, drawn with seaborn/matplotlib and saved under the run's ``figures/``.

Each function takes data (not a Config), draws one figure, saves it when ``path`` is given and
returns the matplotlib Figure so the notebook shows it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend().lower() == "agg" else None  # keep inline backends in Jupyter
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, path: str | Path | None, dpi: int = 110):
    """Save ``fig`` atomically-enough for figures (write then rename) and return it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        tmp.replace(path)
    return fig


# --- comparison of runs (notebook 07, medxpert sweep) ---------------------------------------------


def _param_label(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or (isinstance(value, float) and value != value):
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _param_order(values) -> list:
    """Distinct values sorted numerically when they are numbers, else as text."""
    def key(value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            return (0, float(value), "")
        return (1, 0.0, str(value))
    return sorted(set(values), key=key)


def metrics_vs_params(table, params: list[str], metrics: list[str], path: str | Path | None = None):
    """One panel per (metric, param): the metric against the param's values, coloured by the other param
    when exactly two params vary. Points are means over runs sharing a value, bars their 95% CI."""
    import seaborn as sns

    data = table.copy()
    orders = {}
    for param in params:
        orders[param] = [_param_label(v) for v in _param_order(data[param].tolist())]
        data[param] = data[param].map(_param_label)
    fig, axes = plt.subplots(len(metrics), len(params), figsize=(4.2 * len(params), 3.2 * len(metrics)),
                             squeeze=False)
    for i, metric in enumerate(metrics):
        for j, param in enumerate(params):
            ax = axes[i][j]
            hue = next(p for p in params if p != param) if len(params) == 2 else None
            sns.pointplot(data=data, x=param, y=metric, hue=hue, order=orders[param],
                          hue_order=orders.get(hue), dodge=0.25 if hue else False, errorbar=("ci", 95),
                          n_boot=200, seed=0, ax=ax)
            ax.set_title(f"{metric} vs {param}", fontsize=10)
            ax.set_xlabel(param)
            ax.set_ylabel(metric if j == 0 else "")
            ax.grid(alpha=0.3)
            if hue and i > 0 and ax.get_legend() is not None:  # one legend per column: its hue differs
                ax.get_legend().remove()
    fig.tight_layout()
    return save(fig, path)


def metric_by_run(table, metric: str, path: str | Path | None = None):
    """Horizontal bars of ``metric`` per run (best first), with CI whiskers from ``<metric>_lo/_hi`` when
    present and the zero-shot value as a dashed line when the table has it."""
    import numpy as np

    data = table[table[metric].notna()].sort_values(metric, ascending=False)
    names = data["run"].astype(str).tolist()
    prefix = names[0].split("__", 1)[0] + "__" if names and all("__" in n for n in names) else ""
    labels = [n[len(prefix):] if prefix and n.startswith(prefix) else n for n in names]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * max(len(data), 2) + 1.2))
    y = np.arange(len(data))
    values = data[metric].to_numpy(dtype=float)
    xerr = None
    if f"{metric}_lo" in data.columns and f"{metric}_hi" in data.columns:
        lo = data[f"{metric}_lo"].to_numpy(dtype=float)
        hi = data[f"{metric}_hi"].to_numpy(dtype=float)
        xerr = np.nan_to_num(np.vstack([values - lo, hi - values]).clip(min=0))
    ax.barh(y, values, xerr=xerr, color="#4C72B0", alpha=0.85, capsize=3)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    reference = "zs_" + metric[3:] if metric.startswith("ft_") else None
    if reference and reference in data.columns and data[reference].notna().any():
        ax.axvline(float(data[reference].mean()), color="grey", linestyle="--", label="zero-shot (mean)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(metric)
    ax.set_title(f"{metric} per run" + (f" ({prefix[:-2]})" if prefix else ""), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


# --- retrieval (notebook 03) ------------------------------------------------------------------------

_RETRIEVAL_MODELS = {"zero_shot": "Zero-Shot", "fine_tuned": "Fine-Tuned"}
_DIRECTIONS = {"image_to_text": "image → report", "text_to_image": "report → image"}


def _model_label(result: dict, model: str) -> str:
    label = _RETRIEVAL_MODELS.get(model, model)
    if result["models"].get(model, {}).get("untrained_base"):
        label += " (untrained: random weights)"
    return label


def recall_curves(result: dict, path: str | Path | None = None):
    """Recall@K against K (1 .. eval.curve_max_k) for both models, one panel per direction,
    with a random ranking's recall dotted for scale (image -> report: min(K, groups) / groups)."""
    import numpy as np
    import pandas as pd
    import seaborn as sns

    rows = [{"K": k, "Recall@K (%)": 100 * r, "model": _model_label(result, model), "direction": direction}
            for model, block in result["models"].items()
            for direction in _DIRECTIONS
            for k, r in enumerate(block[direction]["curve"], start=1)]
    data = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (direction, title) in zip(axes, _DIRECTIONS.items()):
        part = data[data["direction"] == direction]
        sns.lineplot(data=part, x="K", y="Recall@K (%)", hue="model", ax=ax, marker="o", markersize=3)
        if direction == "image_to_text":
            ks = np.arange(1, part["K"].max() + 1)
            ax.plot(ks, 100 * np.minimum(ks, result["n_reports"]) / result["n_reports"], ":", color="grey",
                    label="random ranking")
            ax.legend(fontsize=8)
        ax.set_title(f"{title} ({result['split']} split)", fontsize=10)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def per_label_recall(result: dict, metric: str = "R@10", path: str | Path | None = None):
    """``metric`` per positive CheXpert label of the query, both models, one panel per direction
    (labels without a positive query are left out; n = queries with the label)."""
    import pandas as pd
    import seaborn as sns

    rows = []
    for model, block in result["models"].items():
        for direction in _DIRECTIONS:
            for label, row in block[direction]["per_label"].items():
                if row["n"] and row.get(metric) is not None:
                    rows.append({"label": f"{label} (n={row['n']})", "value": 100 * row[metric],
                                 "model": _model_label(result, model), "direction": direction})
    data = pd.DataFrame(rows)
    n_labels = data["label"].nunique() if len(data) else 1
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * n_labels + 1.8), sharex=True)
    for ax, (direction, title) in zip(axes, _DIRECTIONS.items()):
        part = data[data["direction"] == direction] if len(data) else data
        if len(part):
            sns.barplot(data=part, y="label", x="value", hue="model", ax=ax, orient="h")
            handles, names = ax.get_legend_handles_labels()
            ax.get_legend().remove()
        ax.set_xlabel(f"{metric.replace('R@', 'Recall@').replace('P@', 'Precision@')} (%)")
        ax.set_ylabel("")
        ax.set_xlim(0, 100)
        ax.set_title(f"{title}: by positive label of the query", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    if len(data):  # one legend below both panels, clear of the bars
        fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(names), fontsize=8)
    return save(fig, path)


def retrieval_gallery(examples: list[dict], path: str | Path | None = None, snippet: int = 70):
    """Query images (left) and their top hits (report groups, shown with one of their images):
    green frame = the query's own report, grey = another report. Examples from
    ``retrieval.evaluation.gallery_examples``."""
    import textwrap

    import numpy as np

    from medxpert_utils.data.images import load_image

    def thumb(image_path: str):
        try:
            img = load_image(image_path)
            img.thumbnail((160, 160))
            return np.asarray(img)
        except Exception:  # a missing file leaves the cell blank rather than failing the figure
            return np.zeros((8, 8), dtype=np.uint8)

    def short(text: str) -> str:
        text = " ".join(str(text).split())
        text = text if len(text) <= snippet else text[: snippet - 1] + "…"
        return "\n".join(textwrap.wrap(text, 24)[:4])

    n_cols = 1 + max((len(e["hits"]) for e in examples), default=0)
    fig, axes = plt.subplots(max(len(examples), 1), n_cols, figsize=(2.3 * n_cols, 3.1 * max(len(examples), 1)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, example in enumerate(examples):
        query = example["query"]
        axes[i, 0].imshow(thumb(query["image_path"]), cmap="gray")
        axes[i, 0].set_title(f"query {query['study_id']}", fontsize=8, fontweight="bold")
        axes[i, 0].text(0.5, -0.04, short(query["report"]), transform=axes[i, 0].transAxes, ha="center", va="top",
                        fontsize=6.5)
        for j, hit in enumerate(example["hits"], start=1):
            ax = axes[i, j]
            ax.imshow(thumb(hit["image_path"]), cmap="gray")
            colour = "#2ca02c" if hit["is_hit"] else "#999999"
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3 if hit["is_hit"] else 1)
            ax.set_title(f"#{hit['rank']}  {hit['score']:.2f}" + ("  ✓" if hit["is_hit"] else ""), fontsize=8,
                         color=colour if hit["is_hit"] else "black")
            ax.text(0.5, -0.04, short(hit["report"]), transform=ax.transAxes, ha="center", va="top", fontsize=6.5)
    fig.tight_layout()
    return save(fig, path)


def training_curves(history, path: str | Path | None = None):
    """Loss and validation top-1 accuracy against optimiser step for one CLIP training run.

    ``history`` is the per-epoch list of ``metrics/train.json`` or the whole payload; with the
    payload the zero-shot (before training) validation accuracies are drawn as dotted lines.
    """
    import pandas as pd

    zero_shot, label = {}, "zero-shot"
    if isinstance(history, dict):
        zero_shot = history.get("zero_shot") or {}
        label = "untrained" if history.get("zero_shot_untrained") else "zero-shot"
        history = history.get("history", [])
    frame = pd.DataFrame(list(history))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    if frame.empty:
        for ax in (ax_loss, ax_acc):
            ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes)
        return save(fig, path)
    ax_loss.plot(frame["step"], frame["train_loss"], marker="o", label="train")
    if frame["val_loss"].notna().any():
        steps, losses = frame["step"].tolist(), frame["val_loss"].tolist()
        if zero_shot.get("val_loss") is not None:  # before training, at step 0
            steps, losses = [0, *steps], [zero_shot["val_loss"], *losses]
        ax_loss.plot(steps, losses, marker="o", label="validation")
    ax_loss.set(xlabel="optimiser step", ylabel="contrastive loss", title="Loss")
    ax_loss.legend()
    for column, name, colour in (("val_i2t_acc", "image→text", "C0"), ("val_t2i_acc", "text→image", "C1")):
        if column in frame and frame[column].notna().any():
            ax_acc.plot(frame["step"], frame[column], marker="o", color=colour, label=name)
            if zero_shot.get(column) is not None:
                ax_acc.axhline(zero_shot[column], color=colour, linestyle=":", label=f"{name} ({label})")
    ax_acc.set(xlabel="optimiser step", ylabel="top-1 accuracy (report groups)", title="Validation retrieval")
    ax_acc.set_ylim(bottom=0)
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)


# --- data figures (notebook 00) -------------------------------------------------------------------


def label_prevalence(manifest, path: str | Path | None = None):
    """Bars of the share of images labelled positive (1) for each CheXpert observation, per split.

    Uncertain (-1) and unmentioned labels do not count as positive.
    """
    import pandas as pd
    import seaborn as sns
    from matplotlib.ticker import PercentFormatter

    from medxpert_utils.data.labels import CHEXPERT_LABELS

    labels = [c for c in CHEXPERT_LABELS if c in manifest.columns]
    splits = [s for s in ("train", "val", "test") if s in set(manifest["split"])]
    rows = []
    for split in splits:
        group = manifest[manifest["split"] == split]
        for label in labels:
            positive = pd.to_numeric(group[label], errors="coerce").eq(1).sum()
            rows.append({"split": split, "observation": label, "prevalence": positive / max(len(group), 1)})
    data = pd.DataFrame(rows, columns=["split", "observation", "prevalence"])
    fig, ax = plt.subplots(figsize=(8.5, 0.38 * max(len(labels), 1) * max(len(splits), 1) / 2 + 1.8))
    if not data.empty:
        sns.barplot(data=data, y="observation", x="prevalence", hue="split", order=labels, hue_order=splits,
                    orient="h", ax=ax)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set(xlabel="images labelled positive", ylabel="", title="Label prevalence by split")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def report_lengths(manifest, path: str | Path | None = None):
    """Histogram of report lengths in words (the ``report`` column: impression, else findings), by split."""
    import pandas as pd
    import seaborn as sns

    data = pd.DataFrame({
        "words": manifest["report"].fillna("").astype(str).str.split().str.len(),
        "split": manifest["split"],
    })
    splits = [s for s in ("train", "val", "test") if s in set(data["split"])]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    if not data.empty:
        sns.histplot(data=data, x="words", hue="split", hue_order=splits, element="step", stat="density",
                     common_norm=False, discrete=data["words"].max() <= 60, ax=ax)
    ax.set(xlabel="words per report", ylabel="share of images", title="Report length by split")
    fig.tight_layout()
    return save(fig, path)


def sample_grid(manifest, n: int = 12, seed: int = 0, path: str | Path | None = None, cols: int = 4,
                width: int = 34):
    """A grid of ``n`` randomly chosen images (seeded) titled with their wrapped impression (else report)."""
    import textwrap

    import numpy as np

    from medxpert_utils.core.errors import ImageLoadError
    from medxpert_utils.data.images import load_image

    n = min(n, len(manifest))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.9 * rows), squeeze=False)
    picks = np.random.default_rng(seed).choice(len(manifest), size=n, replace=False) if n else []
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picks):
        row = manifest.iloc[int(i)]
        try:
            ax.imshow(np.asarray(load_image(row["image_path"])), cmap="gray", vmin=0, vmax=255)
        except ImageLoadError as exc:
            ax.text(0.5, 0.5, textwrap.fill(str(exc), 30), ha="center", va="center", fontsize=7,
                    transform=ax.transAxes)
        text = str(row.get("impression") or "").strip() or str(row.get("report") or "")
        lines = textwrap.wrap(text, width)
        if len(lines) > 5:
            lines = lines[:5]
            lines[-1] = lines[-1][: width - 1] + "…"
        ax.set_title("\n".join([f"{row['study_id']} ({row.get('split', '')})", *lines]), fontsize=7.5, loc="left")
    fig.tight_layout()
    return save(fig, path)


# --- captions and reports (notebooks 04 and 05) ---------------------------------------------------


def caption_training_curve(training: dict, path: str | Path | None = None):
    """BLIP fine-tuning: train and validation loss per epoch, the untrained validation loss as epoch 0."""
    history = training.get("history") or []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [0] + [row["epoch"] for row in history]
    ax.plot(epochs, [training["initial_val_loss"]] + [row["val_loss"] for row in history], marker="o",
            label="validation")
    ax.plot([row["epoch"] for row in history], [row["train_loss"] for row in history], marker=".", label="train")
    ax.axhline(training["best_val_loss"], color="grey", linestyle=":", label="best (kept)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("token cross-entropy")
    ax.set_title("BLIP fine-tuning (image -> report)")
    ax.legend()
    fig.tight_layout()
    return save(fig, path)


def label_f1_bars(per_label: dict[str, dict[str, float | None]], path: str | Path | None = None,
                  title: str = "CheXpert-label F1 per observation"):
    """Grouped bars of per-observation F1, one group per observation and one bar per system
    (``{system: {observation: f1 or None}}``); undefined F1 (observation absent) is left blank."""
    import pandas as pd
    import seaborn as sns

    rows = [{"system": system, "observation": name, "F1": value}
            for system, scores in per_label.items() for name, value in scores.items() if value is not None]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    if rows:
        sns.barplot(data=pd.DataFrame(rows), x="observation", y="F1", hue="system", ax=ax)
        ax.tick_params(axis="x", rotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    ax.set_ylim(0, 1)
    ax.set_xlabel("")
    ax.set_title(title)
    fig.tight_layout()
    return save(fig, path)


_METHODS = {"zero_shot_prompts": "Zero-shot prompts (positive vs negative)", "linear_probe": "Linear probe"}


def classification_auroc(result: dict, path: str | Path | None = None):
    """AUROC per observation with its 95% CI, both models, one panel per method (classification.json); the dashed
    line is chance (0.5). Observations without a score (too few positives) are left out."""
    observations = list(next(iter(result["models"].values()))["zero_shot_prompts"]["per_observation"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.38 * len(observations) + 1.8), sharey=True)
    models = list(result["models"])
    height = 0.8 / max(1, len(models))
    handles = []
    for ax, (method, title) in zip(axes, _METHODS.items()):
        for m_index, model in enumerate(models):
            block = result["models"][model].get(method, {})
            per = block.get("per_observation", {})
            ys, xs, lo, hi = [], [], [], []
            for i, label in enumerate(observations):
                row = per.get(label) or {}
                if row.get("auroc") is None:
                    continue
                ci = row.get("ci95") or [row["auroc"], row["auroc"]]
                ys.append(i + (m_index - (len(models) - 1) / 2) * height)
                xs.append(row["auroc"])
                lo.append(row["auroc"] - ci[0])
                hi.append(ci[1] - row["auroc"])
            name = _RETRIEVAL_MODELS.get(model, model) + (
                " (untrained: random weights)" if model == "zero_shot" and result.get("untrained_base") else "")
            mean = block.get("mean_auroc")
            bars = ax.barh(ys, xs, height=height, xerr=[lo, hi], capsize=2,
                           label=f"{name}: mean {mean:.3f}" if mean is not None else name)
            if method == "zero_shot_prompts":
                handles.append(bars)
        ax.axvline(0.5, color="grey", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("AUROC (95% CI)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=1, frameon=False)
        ax.grid(axis="x", alpha=0.3)
    n_pos = {label: row["n_positive"] for label, row in
             next(iter(result["models"].values()))["zero_shot_prompts"]["per_observation"].items()}
    axes[0].set_yticks(range(len(observations)), [f"{o} (n+={n_pos[o]})" for o in observations])
    axes[0].invert_yaxis()
    fig.tight_layout()
    return save(fig, path)


def ood_scores(table, score: str, threshold: float, path: str | Path | None = None):
    """The query check's score of every image by group (in-distribution first), with the calibrated threshold;
    images a gate refused (colour, DICOM tags) are drawn as crosses. ``table``: rows with ``group``, ``gated``
    and the ``score`` column (retrieval.ood_eval.evaluate)."""
    import numpy as np

    groups = ["in_distribution"] + sorted(g for g in table["group"].unique() if g != "in_distribution")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(groups) + 2), 4.2))
    rng = np.random.default_rng(0)
    for i, group in enumerate(groups):
        part = table[table["group"] == group]
        x = i + rng.uniform(-0.25, 0.25, len(part))
        gated = part["gated"].to_numpy(bool)
        values = part[score].to_numpy(float)
        colour = "tab:blue" if group == "in_distribution" else "tab:red"
        ax.scatter(x[~gated], values[~gated], s=9, alpha=0.6, color=colour)
        ax.scatter(x[gated], values[gated], s=14, alpha=0.7, color=colour, marker="x")
    ax.axhline(threshold, color="k", lw=1, ls="--", label=f"threshold {threshold:.3g} (95% of val accepted)")
    ax.set_xticks(range(len(groups)), [g.replace("_", " ") for g in groups], rotation=40, ha="right")
    ax.set_yscale("symlog", linthresh=max(threshold / 10, 1e-4))
    ax.set_ylabel(f"{score} (higher: less like the corpus)")
    ax.set_title("Query check: test images vs out-of-distribution images (x: refused by a gate)")
    ax.legend(loc="upper left", fontsize=8)
    return save(fig, path)


def heatmap_overlay(image, heatmap, alpha: float = 0.45, cmap: str = "jet", boxes=None):
    """RGB uint8 picture of a grey ``image`` (H x W) with a [0, 1] ``heatmap`` of the same size blended on top
    (weight ``alpha`` times the map's value, so cold areas stay readable); ``boxes`` (``[x0, y0, x1, y1]``
    pixels) are outlined in white."""
    import numpy as np

    grey = np.asarray(image, dtype=np.float32)
    if grey.ndim == 3:
        grey = grey[..., :3].mean(axis=-1)
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0, 1)
    if heat.shape != grey.shape:
        raise ValueError(f"heatmap shape {heat.shape} differs from the image's {grey.shape}")
    colours = matplotlib.colormaps[cmap](heat)[..., :3] * 255
    weight = (alpha * heat)[..., None]
    out = (1 - weight) * grey[..., None] + weight * colours
    for x0, y0, x1, y1 in boxes or []:
        x1, y1 = min(x1, grey.shape[1]) - 1, min(y1, grey.shape[0]) - 1
        out[y0:y1 + 1, [x0, x1]] = 255
        out[[y0, y1], x0:x1 + 1] = 255
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def heatmap_grid(images, heatmaps, boxes, titles, suptitle: str | None = None, path: str | Path | None = None,
                 cols: int = 3):
    """Images with their [0, 1] heatmaps blended on top, the finding's boxes (white) and each map's maximum
    (cyan x); one panel per image."""
    import numpy as np

    n = max(len(images), 1)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, heat, box, title in zip(axes.ravel(), images, heatmaps, boxes, titles):
        ax.imshow(heatmap_overlay(image, heat, boxes=box))
        y, x = np.unravel_index(int(np.argmax(heat)), np.shape(heat))
        ax.plot([x], [y], marker="x", color="cyan", markersize=9, mew=2)
        ax.set_title(title, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return save(fig, path)
