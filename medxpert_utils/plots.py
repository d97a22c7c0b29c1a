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
