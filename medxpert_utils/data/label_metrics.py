"""Label-based scores of generated text: CheXpert-label F1 of predicted vs reference positive-label sets."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from medxpert_utils.data.labels import CHEXPERT_LABELS


def label_f1(predicted: Sequence[Iterable[str]], reference: Sequence[Iterable[str]]) -> dict[str, Any]:
    """CheXpert-label F1 of predicted vs reference positive-label sets (sklearn ``f1_score``).

    ``micro`` pools all 14 observations; ``macro`` averages the per-observation F1 over observations
    that occur (in the references or predictions) - one absent from both is undefined and left out
    rather than counted as 0. Returns micro, macro, per_label (None where undefined) and n.
    """
    from sklearn.metrics import f1_score

    names = list(CHEXPERT_LABELS)
    pred = np.array([[name in set(p) for name in names] for p in predicted], dtype=int).reshape(-1, len(names))
    ref = np.array([[name in set(r) for name in names] for r in reference], dtype=int).reshape(-1, len(names))
    if len(pred) != len(ref):
        raise ValueError(f"{len(pred)} predictions for {len(ref)} references")
    if len(ref) == 0:
        return {"micro": None, "macro": None, "per_label": {n: None for n in names}, "n": 0}
    micro = f1_score(ref, pred, average="micro", zero_division=0.0) if (ref.any() or pred.any()) else None
    per = f1_score(ref, pred, average=None, zero_division=np.nan)
    defined = [float(v) for v in per if not np.isnan(v)]
    return {"micro": None if micro is None else float(micro), "macro": float(np.mean(defined)) if defined else None,
            "per_label": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, per)}, "n": int(len(ref))}
