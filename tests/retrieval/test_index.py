"""FAISS index building (flat / HNSW / IVF), search, and the save/load check against the embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medxpert_utils.core import io
from medxpert_utils.core.errors import RunNotReadyError, UserError
from medxpert_utils.retrieval import index


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim))
    x = centres[rng.integers(0, 8, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_types_find_each_vector_itself(kind):
    x = _vectors(600)
    idx = index.build_index(x, {"type": kind, "ivf_nlist": 64, "ivf_nprobe": 8, "hnsw_ef_search": 32})
    assert idx.ntotal == 600 and idx.d == 16
    scores, ids = index.search(idx, x[:50], 5)
    assert ids.shape == (50, 5)
    assert (ids[:, 0] == np.arange(50)).mean() >= 0.95  # the query itself is its own best match
    assert np.allclose(scores[:, 0], 1.0, atol=1e-4) or kind != "flat"
    exact = x[:50] @ x.T
    assert np.allclose(np.sort(exact, axis=1)[:, ::-1][:, :5], scores, atol=1e-5) or kind != "flat"


def test_ivf_clamps_nlist_on_small_data_and_keeps_nprobe():
    import faiss

    idx = index.build_index(_vectors(100), {"type": "ivf", "ivf_nlist": 1024, "ivf_nprobe": 16})
    ivf = faiss.extract_index_ivf(idx)
    assert ivf.nlist == 100 // index.IVF_MIN_POINTS_PER_LIST and ivf.nprobe == ivf.nlist


def test_search_clamps_k_and_accepts_one_vector():
    x = _vectors(7)
    scores, ids = index.search(index.build_index(x), x[0], 50)
    assert ids.shape == (1, 7) and sorted(ids[0].tolist()) == list(range(7))
    assert np.all(np.diff(scores[0]) <= 1e-7)  # ranked by score


def test_unknown_type_is_a_user_error():
    with pytest.raises(UserError, match="index.type.*flat', 'hnsw' or 'ivf'"):
        index.build_index(_vectors(5), {"type": "lsh"})


def _embeddings_dir(root, n=40, key="abc", groups=None):
    x = _vectors(n, seed=3)
    (root / "corpus").mkdir(parents=True)
    io.write_npy(root / "corpus" / "image.npy", x)
    io.write_npy(root / "corpus" / "text.npy", x)
    g = np.arange(n) // 2 if groups is None else groups
    io.write_parquet(root / "corpus" / "ids.parquet", pd.DataFrame({"study_id": [f"s{i}" for i in range(n)],
                                                                   "report_group": g}))
    io.write_json(root / "cache_key.json", {"key": key})
    return x, g


def test_save_load_round_trip_and_mismatch_errors(tmp_path):
    emb, idx_dir = tmp_path / "embeddings" / "fine_tuned", tmp_path / "index" / "fine_tuned"
    x, g = _embeddings_dir(emb)
    params = {"type": "hnsw", "hnsw_ef_search": 40}
    index.save_index(idx_dir, {"image": index.build_index(x, params), "text": index.build_index(x[::2], params)},
                     "abc", params)
    meta = io.read_json(idx_dir / "index_meta.json")
    assert (meta["count"], meta["dim"], meta["type"], meta["cache_key"]) == (40, 16, "hnsw", "abc")
    loaded = index.load_index(idx_dir, emb, "image")
    assert loaded.ntotal == 40 and loaded.hnsw.efSearch == 40
    assert index.load_index(idx_dir, emb, "text").ntotal == 20
    assert index.is_current(idx_dir, emb, params) and not index.is_current(idx_dir, emb, {"type": "flat"})

    io.write_json(emb / "cache_key.json", {"key": "changed"})  # embeddings recomputed since
    with pytest.raises(UserError, match="index/fine_tuned was built from other embeddings .* rerun 02_embed_index"):
        index.load_index(idx_dir, emb)
    assert not index.is_current(idx_dir, emb, params)

    other = tmp_path / "other" / "fine_tuned"
    _embeddings_dir(other, n=30)  # same key, other count
    with pytest.raises(UserError, match="40x16 vectors, embeddings have 30x16"):
        index.load_index(idx_dir, other)
    with pytest.raises(RunNotReadyError, match="run 02_embed_index first"):
        index.load_index(tmp_path / "index" / "zero_shot", emb)
