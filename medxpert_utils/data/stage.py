"""Stage 00, data preparation (notebook ``00_data_prep``): the run's manifest from ``data.source``.

The figures of the data (label prevalence, report lengths, a sample grid) are drawn by the notebook with
:mod:`medxpert_utils.viz.plots`: ``viz`` reads ``data`` (images, label names), so ``data`` may not import it
(the package's acyclic-siblings contract).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from medxpert_utils.core import io, runs
from medxpert_utils.core.config import Config
from medxpert_utils.data import manifest as mf
from medxpert_utils.data import sources


@dataclass(frozen=True)
class DataStageResult:
    """What :func:`run` wrote: the manifest (every row, unreadable ones flagged), its build stats and hash."""

    manifest: pd.DataFrame
    stats: dict[str, Any]  # sources.build_manifest's stats: counts of the readable rows, skips, notes
    content_hash: str  # manifest.content_hash, recorded in run.json as data.hash

    @property
    def readable(self) -> pd.DataFrame:
        """The rows later stages use (what :func:`medxpert_utils.data.manifest.read` returns)."""
        return mf.readable(self.manifest)


def run(cfg: Config) -> DataStageResult:
    """Build the manifest of ``cfg.data.source``, write ``data/manifest.parquet`` (atomic) and record its size,
    skipped rows and content hash in ``run.json`` under ``data``."""
    manifest, stats = sources.build_manifest(cfg)
    io.write_parquet(cfg.paths.manifest, manifest)
    data_hash = mf.content_hash(manifest)
    runs.update(cfg.run_dir, data={"source": cfg.data.source, "n_rows": stats["n_rows"], "hash": data_hash,
                                   "skipped": stats["n_skipped"], "unreadable": stats.get("n_unreadable", 0)})
    return DataStageResult(manifest, stats, data_hash)
