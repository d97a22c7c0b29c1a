"""Retrieval metrics against hand-computed examples (ties, duplicate reports, label precision, CIs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medxpert_utils.retrieval import evaluation, metrics

LABELS = ("No Finding", "Edema")


def test_pessimistic_ranks_count_tied_wrong_candidates_ahead():
    scores = np.array([[0.9, 0.9, 0.1],    # relevant 1 ties with wrong 0 -> rank 2
                       [0.5, 0.2, 0.8],    # relevant 0 behind wrong 2 -> rank 2
                       [0.3, 0.7, 0.7]])   # two relevant tied at the top -> rank 1
    relevant = np.array([[0, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=bool)
    ranks = metrics.first_relevant_ranks(scores, relevant)
    assert ranks.tolist() == [2, 2, 1]
    assert metrics.recall_at_k(ranks, [1, 2]) == {"R@1": pytest.approx(1 / 3), "R@2": 1.0}
    assert metrics.mean_reciprocal_rank(ranks) == pytest.approx((0.5 + 0.5 + 1) / 3)
    order = metrics.ranked_order(scores, relevant, 3)
    assert order.tolist() == [[0, 1, 2], [2, 0, 1], [1, 2, 0]]  # wrong before right on a tie, then index
    with pytest.raises(ValueError):
        metrics.first_relevant_ranks(scores, np.zeros_like(relevant))


def _toy():
    """4 images; rows 1 and 2 share one report (group 'b'); image 2 is a copy of image 0."""
    image = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)
    text = np.array([[1, 0], [0.6, 0.8], [0.6, 0.8], [0, 1]], dtype=np.float32)
    groups = np.array([7, 3, 3, 9])  # arbitrary ids: densified in order of first appearance
    positives = np.array([[1, 0], [0, 1], [0, 1], [0, 0]], dtype=bool)
    return image, text, groups, positives


def test_evaluate_embeddings_matches_hand_computation():
    image, text, groups, positives = _toy()
    out = metrics.evaluate_embeddings(image, text, groups, positives, LABELS, ks=[1, 5, 10], curve_max_k=3,
                                      precision_k=1, n_boot=0)
    # image->text over 3 distinct reports: ranks [1, 2, 2, 2] (image 2 scores report 'a' 1.0 > its own 0.6)
    i2t = out["image_to_text"]
    assert i2t["R@1"] == pytest.approx(0.25) and i2t["R@5"] == 1.0 and i2t["MRR"] == pytest.approx(0.625)
    # text->image, one query per group: 'a' ties with image 2 (score 1.0, wrong group) -> pessimistic rank 2
    t2i = out["text_to_image"]
    assert t2i["R@1"] == 0.0 and t2i["MRR"] == pytest.approx(0.5)
    assert (i2t["n_queries"], t2i["n_queries"]) == (4, 3)
    # precision@1: image queries -> hits a(NF), c(-), a(NF); image 3 has no positive label (excluded)
    assert i2t["P@1"] == pytest.approx(1 / 3) and i2t["n_precision_queries"] == 3
    assert t2i["P@1"] == 0.0 and t2i["n_precision_queries"] == 2
    assert i2t["curve"] == pytest.approx([0.25, 1.0, 1.0])
    assert i2t["per_label"]["Edema"] == {"n": 2, "R@1": 0.0, "R@5": 1.0, "R@10": 1.0, "P@1": 0.0}
    assert i2t["ci95"]["R@1"] is None  # no bootstrap requested
    with_ci = metrics.evaluate_embeddings(image, text, groups, positives, LABELS, n_boot=200, seed=3)
    lo, hi = with_ci["image_to_text"]["ci95"]["MRR"]
    assert lo <= with_ci["image_to_text"]["MRR"] <= hi


def test_duplicate_reports_are_one_candidate():
    """Five images share one report: it is one candidate, so copies cannot tie each other out of the top 1."""
    angles = np.radians([0, 10, 20, 30, 40])
    image = np.vstack([np.column_stack([np.cos(angles), np.sin(angles)]), [[0, 1]]]).astype(np.float32)
    text = np.array([[1, 0]] * 5 + [[0, 1]], dtype=np.float32)
    groups = np.array([0, 0, 0, 0, 0, 1])
    out = metrics.evaluate_embeddings(image, text, groups, np.zeros((6, 2), bool), LABELS, precision_k=2, n_boot=0)
    assert (out["image_to_text"]["n_queries"], out["text_to_image"]["n_queries"]) == (6, 2)
    assert out["image_to_text"]["R@1"] == 1.0 and out["text_to_image"]["R@1"] == 1.0
    assert out["text_to_image"]["P@2"] is None  # no positive labels at all: precision undefined
    # had the five copies been separate candidates, the pessimistic rule would rank each 5th
    copies = metrics.first_relevant_ranks(image[:5] @ text[:5].T, np.eye(5, dtype=bool))
    assert copies.tolist() == [5] * 5


def test_chunked_ranking_equals_brute_force(monkeypatch):
    rng = np.random.default_rng(1)
    # coarse values make many exact ties
    queries = rng.integers(-2, 3, size=(40, 4)).astype(np.float32)
    cands = rng.integers(-2, 3, size=(25, 4)).astype(np.float32)
    q_group, c_group = rng.integers(0, 5, 40), np.arange(25) % 5
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 60)  # 2 queries per chunk
    res = metrics.rank_queries(queries, q_group, cands, c_group, top_k=25)
    for i in range(40):
        s = queries[i] @ cands.T
        rel = c_group == q_group[i]
        best = s[rel].max()
        assert res["ranks"][i] == 1 + np.sum((s >= best) & ~rel)
        order = sorted(range(25), key=lambda j: (-s[j], rel[j], j))
        assert res["top"][i].tolist() == order
        first_rel = next(pos for pos, j in enumerate(order) if rel[j])
        assert first_rel + 1 == res["ranks"][i]


def test_chance_recall():
    groups = np.array([0, 1, 1, 2])
    assert metrics.chance_recall("image_to_text", groups, [1, 5])["R@1"] == pytest.approx(1 / 3)
    t2i = metrics.chance_recall("text_to_image", groups, [1, 2, 4])
    assert t2i["R@1"] == pytest.approx(1 / 3)
    assert t2i["R@2"] == pytest.approx((0.5 + 5 / 6 + 0.5) / 3)
    assert t2i["R@4"] == pytest.approx(1.0)


def test_bootstrap_ci_is_seeded_brackets_the_mean_and_skips_nan():
    values = np.column_stack([np.r_[np.ones(30), np.zeros(70)], np.r_[np.full(50, np.nan), np.ones(50)]])
    a = metrics.bootstrap_ci(values, 400, np.random.default_rng(5))
    b = metrics.bootstrap_ci(values, 400, np.random.default_rng(5))
    assert np.array_equal(a, b)
    assert a[0, 0] < 0.3 < a[0, 1] and 0.15 < a[0, 0] and a[0, 1] < 0.45
    assert a[1].tolist() == [1.0, 1.0]  # NaN rows excluded; the rest are all 1
    assert np.isnan(metrics.bootstrap_ci(values, 0, np.random.default_rng(0))).all()


def _result(untrained: bool = True) -> dict:
    ci = {"ci95": {m: [0.0, 0.9] for m in ("R@1", "R@5", "R@10", "MRR", "P@10")}}
    block = {"image_to_text": {"R@1": 0.1, "R@5": 0.3, "R@10": 0.5, "MRR": 0.2, "P@10": 0.4, **ci},
             "text_to_image": {"R@1": 0.2, "R@5": 0.4, "R@10": 0.6, "MRR": 0.3, "P@10": 0.5, **ci}}
    return {"split": "test", "n_images": 10, "n_reports": 8, "precision_k": 10,
            "models": {"zero_shot": {**block, "untrained_base": untrained}, "fine_tuned": block}}


def test_retrieval_table_and_format():
    table = evaluation.retrieval_table(_result())
    assert table["metric"].tolist() == ["Recall@1", "Recall@5", "Recall@10"] * 2
    assert table["direction"].tolist() == ["image_to_text"] * 3 + ["text_to_image"] * 3
    assert table["Zero-Shot"].tolist() == [10.0, 30.0, 50.0, 20.0, 40.0, 60.0]
    assert table["Fine-Tuned CI high"].tolist() == [90.0] * 6
    text = evaluation.format_table(_result())
    assert "untrained: random weights" in text and "MRR" in text and "Precision@10" in text
    assert "untrained" not in evaluation.format_table(_result(untrained=False))


@pytest.mark.slow
def test_evaluate_run_writes_contract_files_and_figures(tmp_path):
    import pandas as pd

    from medxpert_utils.core import io
    from medxpert_utils.core.errors import RunNotReadyError
    from medxpert_utils.retrieval.store import load_embeddings
    from medxpert_utils.viz import plots
    from tests.retrieval.test_embed import make_indexed_run

    cfg = make_indexed_run(tmp_path / "run")
    result = evaluation.evaluate_run(cfg.run_dir, write=True)
    test = pd.read_parquet(cfg.paths.manifest).query("split == 'test'")
    assert (result["split"], result["n_images"], result["n_reports"]) == ("test", len(test), test["report"].nunique())
    for model in ("zero_shot", "fine_tuned"):
        for direction in ("image_to_text", "text_to_image"):
            scores = result["models"][model][direction]
            assert 0 <= scores["R@1"] <= scores["R@5"] <= scores["R@10"] <= 1 and 0 < scores["MRR"] <= 1
            lo, hi = scores["ci95"]["R@5"]
            assert lo <= scores["R@5"] <= hi
    assert result["models"]["zero_shot"]["untrained_base"] is True
    assert io.read_json(cfg.paths.metrics / "retrieval.json") == json.loads(json.dumps(result))
    table = pd.read_csv(cfg.paths.metrics / "retrieval_table.csv")
    assert {"direction", "metric", "Zero-Shot", "Fine-Tuned", "Zero-Shot CI low",
            "Fine-Tuned CI high"} <= set(table.columns)

    # brute force: zero-shot image->text R@1 over distinct reports with the pessimistic tie rule
    emb = load_embeddings(cfg.paths.embeddings("zero_shot"))
    dense, first = metrics.dense_groups(emb.ids["report_group"].to_numpy())
    scores = np.round(emb.image @ emb.text[first].T, 6)
    own = scores[np.arange(len(dense)), dense]
    ahead = (scores >= own[:, None]).sum(axis=1) - 1
    assert result["models"]["zero_shot"]["image_to_text"]["R@1"] == pytest.approx(np.mean(ahead == 0))

    examples = evaluation.gallery_examples(cfg.run_dir, "fine_tuned", n=2, k=3)
    assert len(examples) == 2 and all(len(e["hits"]) == 3 for e in examples)
    for name, fig in (("curves", plots.recall_curves(result, tmp_path / "curves.png")),
                      ("labels", plots.per_label_recall(result, path=tmp_path / "labels.png")),
                      ("gallery", plots.retrieval_gallery(examples, tmp_path / "gallery.png"))):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000 and fig is not None

    (cfg.paths.embeddings("fine_tuned") / "cache_key.json").unlink()
    with pytest.raises(RunNotReadyError, match="run 02_embed_index first .*--until 02"):
        evaluation.evaluate_run(cfg.run_dir)
