"""Embeddings contract (shapes, float32, L2 norm, ids.parquet, corpus) and the cache key.

``make_tiny_run`` fabricates a run (manifest of small PNGs + two tiny CLIPs saved with
save_pretrained) that the search and CLI tests reuse.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxpert_utils.core import config, io, runs
from medxpert_utils.core.errors import ImageLoadError, RunNotReadyError
from medxpert_utils.data import labels as labelling
from medxpert_utils.data.manifest import validate
from medxpert_utils.models import clip
from medxpert_utils.retrieval import embedding, encoders, store

pytestmark = pytest.mark.slow  # builds and runs tiny CLIP models (seconds)

REPORTS = (
    "No acute cardiopulmonary process.",
    "Small left pleural effusion.",
    "Mild pulmonary edema.",
    "Right lower lobe pneumonia.",
    "Cardiomegaly without edema.",
)


def write_manifest(cfg: config.Config, n: int, image_dir: Path, reports=REPORTS) -> pd.DataFrame:
    """``n`` studies (one image each) with repeating reports; split by patient (every third is test)."""
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        report = reports[i % len(reports)]
        pixels = np.clip(40 * (i % len(reports)) + rng.normal(60, 20, size=(40, 40)), 0, 255).astype(np.uint8)
        path = image_dir / f"s{i:03d}.png"
        Image.fromarray(pixels, mode="L").save(path)
        rows.append({"study_id": f"s{i:03d}", "patient_id": f"p{i:03d}", "image_path": str(path), "findings": "",
                     "impression": report, "report": report, "split": ("train", "val", "test")[i % 3]})
    frame = pd.DataFrame(rows)
    frame = pd.concat([frame, labelling.label_frame(frame["report"])], axis=1)
    frame = validate(frame)
    io.write_parquet(cfg.paths.manifest, frame)
    return frame


def make_tiny_run(run_dir: Path, n: int = 24) -> config.Config:
    """A run through notebook 01's outputs: manifest, untrained tiny base CLIP and a 'fine-tuned' one."""
    cfg = config.load("smoke", run=str(run_dir), overrides={"embed.batch_size": 8, "embed.num_workers": 0})
    runs.prepare(cfg)
    frame = write_manifest(cfg, n, run_dir / "images")
    train_reports = frame.loc[frame["split"] == "train", "report"].tolist()
    clip.build_tiny_clip(cfg.clip.tiny, train_reports, cfg.paths.clip_base, seed=0)
    clip.build_tiny_clip(cfg.clip.tiny, train_reports, cfg.paths.clip_finetuned, seed=1)
    return cfg


def make_indexed_run(run_dir: Path, n: int = 24) -> config.Config:
    """``make_tiny_run`` plus notebook 02's outputs: both models embedded and indexed."""
    from medxpert_utils.retrieval import index

    cfg = make_tiny_run(run_dir, n)
    for model in ("zero_shot", "fine_tuned"):
        embedding.embed_run(cfg, model, progress=False)
        index.build_run_index(cfg, model)
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> config.Config:
    cfg = make_tiny_run(tmp_path_factory.mktemp("embed") / "run")
    embedding.embed_run(cfg, "fine_tuned", progress=False)
    return cfg


def test_embeddings_contract(tiny_run):
    cfg = tiny_run
    frame = pd.read_parquet(cfg.paths.manifest)
    out = cfg.paths.embeddings("fine_tuned")
    image, text = np.load(out / "image.npy"), np.load(out / "text.npy")
    ids = pd.read_parquet(out / "ids.parquet")
    test_rows = frame[frame["split"] == "test"]
    assert list(ids.columns) == ["study_id", "report_group"]
    assert ids["study_id"].tolist() == test_rows["study_id"].tolist()  # manifest order
    assert image.dtype == text.dtype == np.float32 and image.shape == text.shape == (len(test_rows), 32)
    assert np.allclose(np.linalg.norm(image, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)
    # same report -> same group and the same text embedding; different reports -> different groups
    reports = test_rows["report"].to_numpy()
    same = reports[:, None] == reports[None, :]
    groups = ids["report_group"].to_numpy()
    assert np.array_equal(groups[:, None] == groups[None, :], same)
    assert np.allclose(text[0], text[np.flatnonzero(same[0])[-1]])
    assert not np.allclose(image[0], image[1])
    corpus = store.load_embeddings(out, corpus=True)
    assert len(corpus) == len(frame) and corpus.image.shape == (len(frame), 32)
    assert corpus.rows["row"].tolist() == list(range(len(frame)))
    assert {"image_path", "report", "split", "No Finding"} <= set(corpus.rows.columns)
    # the eval split is a slice of the corpus: identical vectors
    in_test = (corpus.rows["split"] == "test").to_numpy()
    assert np.allclose(corpus.image[in_test], image) and np.allclose(corpus.text[in_test], text)
    key = io.read_json(out / "cache_key.json")
    assert key["stats"]["eval_rows"] == len(test_rows) and key["model_spec"] == str(cfg.paths.clip_finetuned)


def test_cache_hit_and_misses_on_changed_inputs(tiny_run, tmp_path):
    cfg = tiny_run
    out = cfg.paths.embeddings("fine_tuned")
    stamp = (out / "image.npy").stat().st_mtime_ns
    assert not embedding.needs_embedding(cfg, "fine_tuned")
    embedding.embed_run(cfg, "fine_tuned", progress=False)
    assert (out / "image.npy").stat().st_mtime_ns == stamp  # reused

    longer = config.load("smoke", run=str(cfg.run_dir), overrides={"clip.max_length": 16})
    assert embedding.needs_embedding(longer, "fine_tuned")  # preprocessing param changed
    assert embedding.needs_embedding(cfg, "zero_shot")  # never embedded

    # a copied run with its images moved reuses the vectors and points hits at the new paths
    copy = tmp_path / "run"
    shutil.copytree(cfg.run_dir, copy)
    moved = config.load("smoke", run=str(copy), overrides={"embed.batch_size": 8, "embed.num_workers": 0})
    frame = pd.read_parquet(moved.paths.manifest)
    frame["image_path"] = [p.replace(str(cfg.run_dir), str(copy)) for p in frame["image_path"]]
    io.write_parquet(moved.paths.manifest, frame)
    assert not embedding.needs_embedding(moved, "fine_tuned")
    embedding.embed_run(moved, "fine_tuned", progress=False)
    rows = store.load_embeddings(moved.paths.embeddings("fine_tuned"), corpus=True).rows
    assert rows["image_path"].str.startswith(str(copy)).all()
    # other weights in the model folder -> recompute
    clip.build_tiny_clip(moved.clip.tiny, ["other words entirely"] * 3, moved.paths.clip_finetuned, seed=5)
    assert embedding.needs_embedding(moved, "fine_tuned")

    frame.loc[0, "report"] = "Large right pneumothorax."
    io.write_parquet(moved.paths.manifest, frame)
    embedding.embed_run(moved, "fine_tuned", progress=False)
    rows = store.load_embeddings(moved.paths.embeddings("fine_tuned"), corpus=True).rows
    assert rows.loc[0, "report"] == "Large right pneumothorax."


def test_texts_are_embedded_once_each_and_truncated(tiny_run):
    model, processor = clip.load_clip(str(tiny_run.paths.clip_finetuned), "cpu")
    calls = []
    tokenizer = processor.tokenizer

    class Counting:
        def __call__(self, texts, **kwargs):
            calls.extend(texts)
            return tokenizer(texts, **kwargs)

    processor.tokenizer = Counting()
    long = "effusion " * 100
    texts = ["a", "b", "a", long, long + "pneumothorax", "a"]
    out = encoders.embed_texts(model, processor, texts, batch_size=2, max_length=8, progress=False)
    assert sorted(calls) == sorted({"a", "b", long, long + "pneumothorax"})
    assert np.array_equal(out[0], out[2]) and np.array_equal(out[0], out[5])
    assert np.allclose(out[3], out[4], atol=1e-6)  # the difference lies past the 8-token limit
    assert encoders.text_token_limit(model, 500) == model.config.text_config.max_position_embeddings


def test_unreadable_image_and_missing_model_are_clear(tiny_run, tmp_path):
    model, processor = clip.load_clip(str(tiny_run.paths.clip_base), "cpu")
    good = pd.read_parquet(tiny_run.paths.manifest)["image_path"].iloc[0]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match="bad.png: .*changed after the data stage.*--force 00"):
        encoders.embed_images(model, processor, [good, str(bad)], batch_size=2, progress=False)
    vectors = encoders.embed_images(model, processor, [good, good], batch_size=1, progress=False)
    assert np.allclose(vectors[0], vectors[1])

    cfg = config.load("smoke", run=str(tmp_path / "empty"))
    runs.prepare(cfg)
    write_manifest(cfg, 6, tmp_path / "img")
    with pytest.raises(RunNotReadyError, match="run 01_clip_finetune first .*--run empty --until 01"):
        embedding.embed_run(cfg, "fine_tuned", progress=False)
    with pytest.raises(RunNotReadyError, match="run 02_embed_index first .*--run empty --until 02"):
        store.load_embeddings(cfg.paths.embeddings("fine_tuned"))


def test_several_processes_embed_their_shares_into_the_same_files(tiny_run, tmp_path):
    import os
    import subprocess
    import sys

    copy = tmp_path / "run_copy"
    shutil.copytree(tiny_run.run_dir, copy)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "-m", "medxpert_utils.retrieval.embedding",
               "--", "--params", "smoke", "--run", str(copy), "--model", "fine_tuned", "--force", "--no-progress",
               "--set", "embed.batch_size=8", "--set", "embed.num_workers=0"]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, "\n".join(line for line in done.stderr.splitlines() if "[rank0]" in line)[-3000:]
    assert "on 2 process(es)" in done.stdout
    one, two = tiny_run.paths.embeddings("fine_tuned"), copy / "embeddings" / "fine_tuned"
    for folder in ("", "corpus"):
        for name in ("image.npy", "text.npy"):
            a, b = np.load(one / folder / name), np.load(two / folder / name)
            assert a.shape == b.shape and np.allclose(a, b, atol=1e-6)
        assert pd.read_parquet(one / folder / "rows.parquet")["row"].tolist() == \
            pd.read_parquet(two / folder / "rows.parquet")["row"].tolist()
    assert io.read_json(two / "cache_key.json")["stats"]["processes"] == 2
    assert not (two / ".shares").exists()
