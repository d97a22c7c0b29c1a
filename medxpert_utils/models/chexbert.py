"""CheXbert F1 of generated text against reference reports: the metric report-generation papers report, computed
by the ``f1chexbert`` package (the CheXbert labeler of Smit et al., 2020, with its published weights).

It needs the package (``pip install -e '.[chexbert]'``) and its weights from the Hugging Face hub, so it runs in
the real profiles (``eval.chexbert: true``). Wherever it cannot run, the result says so and why, and no other
metric is put under its name; the project's own rule labeler gives the separate "label F1" figures.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

METRIC = "CheXbert F1 (f1chexbert)"
DEFINITION = ("f1chexbert: CheXbert labels of each generated text and its reference report, positive = present; "
              "micro and macro F1 over the 14 observations and over the 5 most common (atelectasis, cardiomegaly, "
              "consolidation, edema, pleural effusion), as report-generation papers give them")


def unavailable(reason: str) -> dict[str, Any]:
    """The record of a CheXbert score that could not be computed, with the reason."""
    return {"metric": METRIC, "available": False, "reason": reason}


def chexbert_f1(hypotheses: Sequence[str], references: Sequence[str], enabled: bool,
                device: Any = None) -> dict[str, Any]:
    """CheXbert F1 of ``hypotheses`` against ``references`` (same length), or :func:`unavailable` with the reason."""
    if not enabled:
        return unavailable("off in this profile (eval.chexbert: false): the offline profiles cannot download "
                           "CheXbert's weights")
    if len(hypotheses) != len(references) or not hypotheses:
        return unavailable(f"{len(hypotheses)} generated texts for {len(references)} references")
    try:
        from f1chexbert import F1CheXbert
    except ImportError:
        return unavailable("the f1chexbert package is not installed - pip install -e '.[chexbert]'")
    try:
        scorer = F1CheXbert(device=device)
        accuracy, _, report_14, report_5 = scorer(hyps=[str(h or "") for h in hypotheses],
                                                  refs=[str(r or "") for r in references])
    except Exception as exc:  # weights or tokenizer unreachable, hub errors: record why, never substitute
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        log.warning("CheXbert F1 unavailable: %s: %s", type(exc).__name__, text)
        return unavailable(f"CheXbert could not run ({type(exc).__name__}: {text[:200]}) - it needs network "
                           "access to the Hugging Face hub or its weights in the f1chexbert cache")
    return {"metric": METRIC, "available": True, "n": len(hypotheses), "definition": DEFINITION,
            "accuracy": float(accuracy),
            "micro_f1_14": float(report_14["micro avg"]["f1-score"]),
            "macro_f1_14": float(report_14["macro avg"]["f1-score"]),
            "micro_f1_5": float(report_5["micro avg"]["f1-score"]),
            "macro_f1_5": float(report_5["macro avg"]["f1-score"])}
