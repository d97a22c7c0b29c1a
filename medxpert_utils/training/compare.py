"""Notebook 01's comparisons: the base model next to the fine-tuned one, and InfoNCE against the label-aware loss."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medxpert_utils.core import io
from medxpert_utils.training.schedule import plan_steps
from medxpert_utils.training.trainer import SELECT_BY, VAL_METRICS, TrainOutputs, fit, selection_score

if TYPE_CHECKING:
    import pandas as pd

    from medxpert_utils.core.config import Config


def accuracy_table(result: dict[str, Any], untrained_base: bool | None = None) -> "pd.DataFrame":
    """Validation retrieval of the base model before training next to the fine-tuned best checkpoint.

    Two reference rows: a random ranking, and ranking the most frequent report first for every
    image -- a collapsed model scores that image->text top-1 without having learnt anything.
    """
    import pandas as pd

    untrained = result.get("zero_shot_untrained") if untrained_base is None else untrained_base
    best = result.get("best") or {}
    columns = {"val_i2t_acc": "image→text top-1", "val_t2i_acc": "text→image top-1",
               "val_i2t_r10": "image→text R@10", "val_t2i_r10": "text→image R@10"}
    before = "untrained (random init)" if untrained else f"zero-shot ({result.get('base_model')})"
    after = f"fine-tuned (best: epoch {result.get('best_epoch')}, step {best.get('step')})"
    chance = {"val_i2t_acc": result.get("val_chance_i2t"), "val_i2t_r10": result.get("val_chance_i2t_r10")}
    majority = {"val_i2t_acc": result.get("val_majority_i2t")}
    rows = {before: result["zero_shot"], after: best, "chance (random ranking)": chance,
            "most frequent report for every image": majority}
    return pd.DataFrame([{label: metrics.get(key) for key, label in columns.items()} for metrics in rows.values()],
                        index=pd.Index(list(rows), name="model"))


def history_table(result: dict[str, Any]) -> "pd.DataFrame":
    """The training's record per epoch, figures to 4 decimals; the learning rate as it was (the reference recipe's
    5e-6 would round to 0)."""
    import pandas as pd

    table = pd.DataFrame(result["history"]).set_index("epoch")
    return table.round({c: 4 for c in table.columns if c != "lr"})


def selection_table(result: dict[str, Any]) -> "pd.DataFrame":
    """Per ``train.select_by`` criterion: the epoch it would keep and that epoch's validation figures; the row of
    the criterion this run used is marked. Recomputed from the recorded history, so no retraining is needed."""
    import pandas as pd

    history = result.get("history", [])  # every validation, as the trainer compared them
    rows = []
    for criterion in SELECT_BY:
        if not history:
            break
        # the trainer keeps the first epoch that reaches the best score, so ties go to the earlier one
        pick = max(history, key=lambda h: (selection_score(h, criterion), -h["step"]))
        figures = {key: pick.get(key) for key in VAL_METRICS}
        rows.append({"select_by": criterion, "used": criterion == result.get("select_by"), "epoch": pick["epoch"],
                     "step": pick["step"], **figures})
    return pd.DataFrame(rows).set_index("select_by") if rows else pd.DataFrame()


def derived_config(cfg: "Config", overrides: dict[str, Any]) -> "Config":
    """The same run's Config with dotted ``overrides`` applied (validated like params files)."""
    from medxpert_utils.core.config import Config, apply_overrides, parse_params

    params = parse_params(apply_overrides(cfg.to_dict(), overrides), source="overrides")
    return Config(params, cfg.run_dir, cfg.params_path, {**cfg.overrides, **overrides})


def compare_losses(cfg: "Config", minutes: float, progress: bool = True) -> "pd.DataFrame":
    """Train InfoNCE and the label-aware loss from the same base for the same steps; compare on val.

    ``minutes`` (per loss) becomes a number of optimiser steps from the pace the run's main
    training recorded in ``metrics/train.json`` (validation passes included); without it the
    first loss trains for ``minutes`` and the second gets as many steps. Both start from the
    run's base model and skip its zero-shot validation. Outputs go to
    ``<run>/compare_losses/<loss>/`` (the run's own model is untouched); the table also to
    ``metrics/compare_losses.json``.
    """
    import pandas as pd

    steps = steps_for_minutes(cfg, minutes)
    rows = []
    for loss in ("infonce", "label_aware"):
        overrides: dict[str, Any] = {"train.loss": loss}
        if steps is None:
            overrides["train.max_minutes"] = float(minutes)
        else:
            overrides.update({"train.max_minutes": None, "train.max_steps": steps})
        result = fit(derived_config(cfg, overrides), progress=progress, evaluate_base=False,
                     outputs=TrainOutputs.under(cfg.run_dir / "compare_losses" / loss))
        steps = steps or result["steps"]
        best = result["best"] or {}
        la = cfg.train.label_aware
        targets = ("own pair only" if loss == "infonce" else "same report" + (
            f" + same labels x{la.label_weight:g}" if la.same_labels and la.label_weight > 0 else ""))
        rows.append({"loss": loss, "positives": targets, "steps": result["steps"],
                     "val_i2t_acc": best.get("val_i2t_acc"), "val_t2i_acc": best.get("val_t2i_acc"),
                     "val_i2t_r10": best.get("val_i2t_r10"), "val_t2i_r10": best.get("val_t2i_r10"),
                     "train_s": round(result["wall_s"], 1)})
    table = pd.DataFrame(rows)
    io.write_json(cfg.paths.metrics / "compare_losses.json",
                  {"minutes": minutes, "label_aware": cfg.train.label_aware.model_dump(mode="json"), "rows": rows})
    return table


def steps_for_minutes(cfg: "Config", minutes: float) -> int | None:
    """Optimiser steps (with their validations) that fit ``minutes`` at the pace the main training recorded."""
    path = cfg.paths.metrics / "train.json"
    if not path.is_file():
        return None
    recorded = io.read_json(path)
    step_s, spe = recorded.get("step_seconds"), recorded.get("steps_per_epoch")
    if not step_s or not spe:
        return None
    steps = plan_steps(minutes * 60, spe, cfg.train.epochs, step_s, recorded.get("val_seconds") or 0.0)
    return steps if cfg.train.max_steps is None else min(steps, cfg.train.max_steps)
