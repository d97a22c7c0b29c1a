"""Caption scores: BLEU (sacrebleu), ROUGE-L (rouge-score) and CheXpert-label F1 (sklearn)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medxpert_utils.core import io
from medxpert_utils.data.label_metrics import label_f1
from medxpert_utils.models import published
from medxpert_utils.models.blip import model_specs
from medxpert_utils.models.chexbert import chexbert_f1

if TYPE_CHECKING:
    import pandas as pd

    from medxpert_utils.core.config import Config

def positive_labels(text: str) -> frozenset[str]:
    """CheXpert observations the labeler marks positive (1) in ``text``."""
    from medxpert_utils.data.labels import label_report

    return frozenset(name for name, value in label_report(text or "").items() if value == 1)


def score_captions(captions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """BLEU-4 (fraction), ROUGE-L F and CheXpert-label F1 (micro/macro) of captions against references."""
    import sacrebleu
    from rouge_score import rouge_scorer

    captions = [str(c or "") for c in captions]
    references = [str(r or "") for r in references]
    if len(captions) != len(references):
        raise ValueError(f"{len(captions)} captions for {len(references)} references")
    if not captions:
        return {"n": 0, "BLEU": None, "ROUGE-L": None, "label_f1_micro": None, "label_f1_macro": None}
    bleu = sacrebleu.corpus_bleu(captions, [references]).score / 100.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = float(np.mean([scorer.score(ref, cap)["rougeL"].fmeasure for cap, ref in zip(captions, references)]))
    f1 = label_f1([positive_labels(c) for c in captions], [positive_labels(r) for r in references])
    return {"n": len(captions), "BLEU": bleu, "ROUGE-L": rouge, "label_f1_micro": f1["micro"],
            "label_f1_macro": f1["macro"], "label_f1_per_label": f1["per_label"]}


def score_run(cfg: "Config", frame: "pd.DataFrame", training: dict | None = None,
              split: str = "test", seconds: float | None = None) -> dict[str, Any]:
    """Score each captioner in ``frame`` (from :func:`caption_split`) and write ``metrics/captions.json``;
    ``seconds``: the wall time captioning took (loading the captioners included), kept as ``caption_seconds``."""
    result: dict[str, Any] = {
        "split": split,
        "n_images": int(frame["image_path"].nunique()) if len(frame) else 0,
        "definitions": {"BLEU": "sacrebleu corpus BLEU-4 / 100", "ROUGE-L": "rouge-score ROUGE-L F-measure, mean",
                        "label_f1": "CheXpert-label F1 (positive = 1) of caption vs reference, micro and macro over "
                                    "the 14 observations (macro over observations that occur)"},
        "models": {},
    }
    specs = model_specs(cfg)
    for name, group in frame.groupby("model", sort=False):
        scores = score_captions(group["caption"].tolist(), group["reference"].tolist())
        scores["model"] = specs.get(name, name)
        scores["untrained"] = name == "base" and published.builds_in_run(cfg.captions.model)
        scores["chexbert"] = chexbert_f1(group["caption"].tolist(), group["reference"].tolist(), cfg.eval.chexbert,
                                         cfg.device if cfg.device != "auto" else None)
        result["models"][name] = scores
    if seconds is not None:
        result["caption_seconds"] = round(float(seconds), 2)
        result["n_captions"] = len(frame)
    if training:
        result["training"] = training
    io.write_json(cfg.paths.metrics / "captions.json", result)
    return result


def scores_table(result: dict[str, Any]) -> "pd.DataFrame":
    """The scores of :func:`score_run` as one row per captioner."""
    import pandas as pd

    rows = []
    for name, scores in result.get("models", {}).items():
        label = f"{name} (untrained)" if scores.get("untrained") else name
        rows.append({"captioner": label, "n": scores["n"], "BLEU": scores["BLEU"], "ROUGE-L": scores["ROUGE-L"],
                     "label F1 (micro)": scores["label_f1_micro"], "label F1 (macro)": scores["label_f1_macro"]})
    return pd.DataFrame(rows).set_index("captioner") if rows else pd.DataFrame()


def examples_html(frame: "pd.DataFrame", n: int = 6, side: int = 96) -> str:
    """The first ``n`` test images side by side with the reference report and each captioner's caption."""
    import html

    from medxpert_utils.viz.html import thumbnail_uri

    if frame.empty:
        return "<p>No captions.</p>"
    models = list(dict.fromkeys(frame["model"]))
    images = list(dict.fromkeys(frame["image_path"]))[:n]
    by_key = {(r.image_path, r.model): r for r in frame.itertuples(index=False)}
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    rows = []
    for path in images:
        first = by_key[(path, models[0])] if (path, models[0]) in by_key else next(
            r for (p, _), r in by_key.items() if p == path)
        uri = thumbnail_uri(path, side)
        img = f"<img src='{uri}' width='{side}' style='image-rendering:pixelated'>" if uri else ""
        cells = "".join(f"<td>{html.escape(by_key[(path, m)].caption) if (path, m) in by_key else ''}</td>"
                        for m in models)
        rows.append(f"<tr><td>{img}<br><small>{html.escape(str(first.study_id))}</small></td>"
                    f"<td>{html.escape(str(first.reference))}</td>{cells}</tr>")
    css = ("<style>.mx-captions{border-collapse:collapse}.mx-captions td,.mx-captions th{border:1px solid #ccc;"
           "padding:4px 6px;text-align:left;vertical-align:top;max-width:320px}</style>")
    return (f"{css}<table class='mx-captions'><tr><th>image</th><th>reference report</th>{head}</tr>"
            f"{''.join(rows)}</table>")
