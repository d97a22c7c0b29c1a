"""Stage 00's package function: the manifest written, its content hash recorded in run.json, the same hash again."""

import pandas as pd

from medxpert_utils.core import config, runs
from medxpert_utils.data import manifest as mf
from medxpert_utils.data import stage as data_stage


def test_data_stage_writes_the_manifest_and_records_its_hash(tmp_path):
    cfg = runs.prepare(config.load("params/demo.yaml", run=str(tmp_path / "run"),
                                   overrides={"data.n_studies": 12, "data.image_size": 32}))
    result = data_stage.run(cfg)
    written = pd.read_parquet(cfg.paths.manifest)
    assert result.content_hash == mf.content_hash(written) == mf.content_hash(result.manifest)
    assert runs.read(cfg.run_dir)["data"] == {"source": "demo", "n_rows": result.stats["n_rows"],
                                              "hash": result.content_hash, "skipped": result.stats["n_skipped"],
                                              "unreadable": 0}
    assert len(mf.read(cfg.run_dir)) == len(result.readable) == result.stats["n_rows"] > 0
    assert data_stage.run(cfg).content_hash == result.content_hash  # same params, same data
