"""SearchEngine on a tiny fabricated run, plus the pure helpers (image coercion, k checks, formatting)."""

from __future__ import annotations

import io as _io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxpert_utils.core import config, io, runs
from medxpert_utils.core.errors import ImageLoadError, RunNotReadyError, UserError
from medxpert_utils.models import clip
from medxpert_utils.retrieval import search, store
from tests.retrieval.test_embed import make_indexed_run

LABEL_VALUES = {1, 0, -1, None}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_indexed_run(tmp_path_factory.mktemp("search") / "run")


@pytest.fixture(scope="module")
def engine(run):
    return search.SearchEngine.from_run(run.run_dir, model="fine_tuned")


# --- helpers (fast) -----------------------------------------------------------------------------------------

def test_check_k():
    assert search.check_k(3) == 3
    for bad in (0, -1, 2.5, "x", None):
        with pytest.raises(UserError, match="k must be a positive"):
            search.check_k(bad)


def test_to_image_accepts_path_bytes_pil_and_arrays(tmp_path):
    pixels = (np.arange(64 * 48).reshape(48, 64) % 251).astype(np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)
    for source in (path, str(path), path.read_bytes(), Image.fromarray(pixels), Image.fromarray(pixels).convert("RGB"),
                   pixels, np.stack([pixels] * 3, axis=-1)):
        img = search.to_image(source)
        assert img.mode == "L" and np.array_equal(np.asarray(img), pixels)
    wide = search.to_image(pixels.astype(np.uint16) * 200)  # 16-bit range is rescaled to 8 bits
    assert np.asarray(wide).max() == 255
    deep = search.to_image(Image.fromarray(pixels.astype(np.int32) * 200, mode="I"))
    assert deep.mode == "L" and np.array_equal(np.asarray(deep), np.asarray(wide))
    with pytest.raises(ImageLoadError, match="expected a 2-D"):
        search.to_image(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ImageLoadError):
        search.to_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError):
        search.to_image(b"not an image")


def test_read_columns_gives_what_pandas_reads(tmp_path):
    """The corpus rows a query reads without pandas: numbers (nulls as NaN), text (nulls as None), several row
    groups; and the engine built from them gives the hits a DataFrame gives."""
    frame = pd.DataFrame({"row": np.arange(5, dtype=np.int64), "small": np.array([1, 2, 3, 4, 250], np.uint8),
                          "score": np.array([0.5, np.nan, 1.5, 2.0, -1.0], np.float32),
                          "label": pd.array([1, None, 0, -1, None], dtype="Int8"),
                          "text": ["a", None, "c", "d", "é"]})
    path = tmp_path / "rows.parquet"
    frame.to_parquet(path, row_group_size=2)
    columns = store.read_columns(path)
    assert list(columns) == list(frame.columns)
    assert columns["row"].dtype == np.int64 and columns["row"].tolist() == [0, 1, 2, 3, 4]
    assert columns["small"].dtype == np.uint8 and columns["small"].tolist() == [1, 2, 3, 4, 250]
    assert np.array_equal(columns["score"], frame["score"].to_numpy(), equal_nan=True)
    assert np.array_equal(columns["label"], [1, np.nan, 0, -1, np.nan], equal_nan=True)
    assert columns["text"].tolist() == ["a", None, "c", "d", "é"]
    assert list(store.read_columns(path, ["text"])) == ["text"]


def test_hit_to_dict_and_format():
    labels = {"No Finding": 1, "Edema": None, "Cardiomegaly": -1}
    hit = search.Hit(1, np.float32(0.5), "s1", "Normal chest.", "/x.png", labels, row=3, report_group=0,
                     n_same_report=4)
    d = hit.to_dict()
    assert list(d) == ["rank", "score", "study_id", "report", "image_path", "labels"]
    assert json.loads(json.dumps(d)) == d and isinstance(d["score"], float)
    assert hit.to_dict(extra=True)["n_same_report"] == 4
    text = search.format_hits([hit])
    assert "s1" in text and "No Finding" in text and "(x4)" in text
    assert search.format_hits([]) == "no hits"


# --- engine on a fabricated run (slow: builds tiny CLIPs) ---------------------------------------------------

@pytest.mark.slow
def test_text_search_returns_ranked_hits_matching_brute_force(run, engine):
    assert engine._model is None  # nothing loaded until the first query
    corpus = store.load_embeddings(run.paths.embeddings("fine_tuned"), corpus=True)
    hits = engine.search_text("small left pleural effusion", 5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    expected = corpus.image @ engine.embed_text(["small left pleural effusion"])[0]
    top = np.argsort(-expected, kind="stable")[:5]
    assert np.allclose([h.score for h in hits], expected[top], atol=1e-5)
    assert [h.row for h in hits] == corpus.rows["row"].to_numpy()[top].tolist()
    model = engine._model
    for hit in hits:
        d = hit.to_dict()
        assert set(d["labels"]) == set(engine.label_names) and set(d["labels"].values()) <= LABEL_VALUES
        assert d["report"] == corpus.rows.loc[hit.row, "report"] and d["image_path"].endswith(".png")
    engine.search_text("edema", 2)
    assert engine._model is model  # loaded once


@pytest.mark.slow
def test_an_engine_from_a_dataframe_gives_the_same_hits(run, engine):
    from medxpert_utils.retrieval.store import CORPUS_DIR, ROWS_FILE

    rows = pd.read_parquet(run.paths.embeddings("fine_tuned") / CORPUS_DIR / ROWS_FILE)
    same = search.SearchEngine(rows, engine.image_index, engine.text_index, model_spec=engine.model_spec,
                               max_length=engine.max_length)
    vectors = engine.embed_text(["small left pleural effusion", "mild pulmonary edema"])
    for target in search.TARGETS:
        ours, theirs = engine.search_vectors(vectors, 6, target), same.search_vectors(vectors, 6, target)
        assert [[h.to_dict(extra=True) for h in q] for q in ours] == \
            [[h.to_dict(extra=True) for h in q] for q in theirs]


@pytest.mark.slow
def test_targets_dedupe_reports_and_k_is_clamped(run, engine):
    frame = pd.read_parquet(run.paths.manifest)
    reports = engine.search_text("edema", 100, target="reports")
    assert len(reports) == frame["report"].nunique()  # one hit per distinct report, k clamped
    assert len({h.report for h in reports}) == len(reports)
    assert all(h.n_same_report == (frame["report"] == h.report).sum() for h in reports)
    images = engine.search_text("edema", 10_000)
    assert len(images) == len(frame) and len({h.study_id for h in images}) == len(frame)
    assert all(a.score >= b.score - 1e-6 for a, b in zip(images, images[1:]))


@pytest.mark.slow
def test_image_search_accepts_every_input_form(run, engine):
    path = pd.read_parquet(run.paths.manifest)["image_path"].iloc[4]
    pil = Image.open(path)
    buffer = _io.BytesIO()
    pil.save(buffer, format="PNG")
    results = [engine.search_image(src, 3) for src in (path, buffer.getvalue(), pil, np.asarray(pil))]
    for hits in results[1:]:
        assert [h.study_id for h in hits] == [h.study_id for h in results[0]]
        assert np.allclose([h.score for h in hits], [h.score for h in results[0]], atol=1e-5)
    assert len({h.report_group for h in results[0]}) == 3  # distinct reports by default
    same = engine.search_image(path, 1, target="images")[0]
    assert same.image_path == path and same.score == pytest.approx(1.0, abs=1e-4)  # the image finds itself
    assert engine.embed_image([path, path]).shape == (2, 32)


@pytest.mark.slow
def test_user_errors(run, engine, tmp_path):
    for query in ("", "   \n"):
        with pytest.raises(UserError, match="^empty query - type a question or finding, e.g. 'signs of pneumonia'$"):
            engine.search_text(query, 3)
    for k in (0, -2):
        with pytest.raises(UserError, match="positive"):
            engine.search_text("edema", k)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(ImageLoadError) as err:
        engine.search_image(bad, 3)
    assert "broken.png" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="target"):
        engine.search_text("edema", 3, target="captions")
    with pytest.raises(UserError, match="no run at .*nothing-here"):
        search.SearchEngine.from_run(tmp_path / "nothing-here")
    bare = config.load("smoke", run=str(tmp_path / "bare"))
    runs.prepare(bare)
    with pytest.raises(RunNotReadyError, match="no zero_shot embeddings - run 02_embed_index first"):
        search.SearchEngine.from_run(bare.run_dir, model="zero_shot")


@pytest.mark.slow
def test_changed_model_after_embedding_is_refused(tmp_path):
    cfg = make_indexed_run(tmp_path / "run", n=12)
    clip.build_tiny_clip(cfg.clip.tiny, ["retrained on other words"] * 4, cfg.paths.clip_finetuned, seed=9)
    fresh = search.SearchEngine.from_run(cfg.run_dir)  # loading is fine: it reads files only
    with pytest.raises(UserError, match="changed after the corpus was embedded - rerun 02_embed_index"):
        fresh.search_text("edema", 3)


@pytest.mark.slow
def test_export_csv_matches_the_metrics(run):
    from medxpert_utils.retrieval import evaluation

    path = search.export_csv(run.run_dir, split="test", k=3, model="fine_tuned")
    assert path == run.run_dir / "exports" / "test_top3_fine_tuned.csv"
    table = pd.read_csv(path)
    assert list(table.columns) == ["query_study_id", "query_report", "direction", "rank", "hit_study_id", "score",
                                   "hit_report", "hit_image_path", "is_hit"]
    result = evaluation.evaluate_run(run.run_dir)
    for direction in ("image_to_text", "text_to_image"):
        part = table[table["direction"] == direction]
        firsts = part[part["rank"] == 1]
        assert len(firsts) == result["models"]["fine_tuned"][direction]["n_queries"]
        assert firsts["is_hit"].mean() == pytest.approx(result["models"]["fine_tuned"][direction]["R@1"])
    train = search.export_csv(run.run_dir, split="train", k=2, out=run.run_dir / "x.csv")
    assert len(pd.read_csv(train)) > 0


@pytest.mark.slow
def test_run_index_is_reused_rebuilt_on_type_change_and_searchable(run):
    from medxpert_utils.retrieval import index

    assert index.build_run_index(run, "fine_tuned")["reused"]
    knob = config.load("smoke", run=str(run.run_dir), overrides={"index.hnsw_ef_search": 99})
    assert index.build_run_index(knob, "fine_tuned")["reused"]  # a query-time knob only updates the meta
    hnsw = config.load("smoke", run=str(run.run_dir), overrides={"index.type": "hnsw", "index.hnsw_ef_search": 99})
    built = index.build_run_index(hnsw, "fine_tuned")
    try:
        assert not built["reused"] and built["type"] == "hnsw"
        engine = search.SearchEngine.from_run(run.run_dir)
        assert engine.image_index.hnsw.efSearch == 99
        assert len(engine.search_text("edema", 4)) == 4
    finally:
        index.build_run_index(run, "fine_tuned")  # back to flat for the other tests
    assert io.read_json(run.paths.index("fine_tuned") / "index_meta.json")["type"] == "flat"
