"""Zero-shot classification, the linear probe and image->image retrieval: definitions checked independently."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medxpert_utils.core import config
from medxpert_utils.data.labels import CHEXPERT_LABELS
from medxpert_utils.retrieval import classification, metrics


def test_auroc_matches_scikit_learn_on_a_hand_built_case_with_ties():
    scores = np.array([0.9, 0.8, 0.8, 0.4, 0.4, 0.3, 0.1])
    positive = np.array([1, 1, 0, 1, 0, 0, 0], dtype=bool)
    # by hand: 3 positives x 4 negatives = 12 pairs; 0.9 beats all 4, 0.8 beats 3 and ties 1 (3.5),
    # 0.4 beats 2 and ties 1 (2.5) -> (4 + 3.5 + 2.5) / 12
    assert classification.auroc(scores, positive) == pytest.approx(10 / 12)
    assert classification.auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores))
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, 200).astype(float), rng.random(200) < 0.3  # many ties
    assert classification.auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(classification.auroc(scores, np.zeros(7, dtype=bool)))


def test_bootstrap_auroc_equals_auroc_on_each_resample_leaving_out_invalid_rows():
    rng = np.random.default_rng(5)
    scores, positive = rng.integers(0, 6, 80).astype(float), rng.random(80) < 0.3
    valid = rng.random(80) > 0.2
    resamples = rng.integers(0, 80, size=(40, 80))
    fast = classification.bootstrap_auroc(scores, positive, resamples, valid=valid)
    for b, idx in enumerate(resamples):
        keep = idx[valid[idx]]
        assert fast[b] == pytest.approx(roc_auc_score(positive[keep], scores[keep]))
    assert np.isnan(classification.bootstrap_auroc(scores, np.zeros(80, dtype=bool), resamples[:2])).all()


def test_label_targets_positive_is_one_uncertain_is_left_out():
    rows = pd.DataFrame({"Edema": pd.array([1, 0, None, -1], dtype="Int8"),
                         "Pneumonia": pd.array([None, 1, 1, 0], dtype="Int8")})
    pos, usable = classification.label_targets(rows, ["Edema", "Pneumonia"])
    assert pos.tolist() == [[True, False], [False, True], [False, True], [False, False]]
    assert usable.tolist() == [[True, True], [True, True], [True, True], [False, True]]


def _cfg(**classification_params):
    cfg = config.load("params/smoke.yaml", "prompts")
    for key, value in classification_params.items():
        setattr(cfg.params.eval.classification, key, value)
    return cfg


def test_prompt_pairs_from_templates_phrases_and_explicit_pairs():
    cfg = _cfg(phrases={"Pleural Effusion": "effusion", "Edema": ["pulmonary edema", "edema"]},
               pairs={"No Finding": ["normal chest", "abnormal chest"]})
    pairs = {label: options[0] for label, options in classification.prompt_candidates(cfg).items()}
    assert set(pairs) == set(CHEXPERT_LABELS)
    assert pairs["Pleural Effusion"] == ("effusion", "no effusion")
    assert pairs["No Finding"] == ("normal chest", "abnormal chest")
    assert pairs["Cardiomegaly"] == ("cardiomegaly", "no cardiomegaly")
    assert classification.prompt_candidates(cfg)["Edema"] == [("pulmonary edema", "no pulmonary edema"),
                                                             ("edema", "no edema")]
    fixed = classification.prompt_candidates(_cfg(negative="normal chest radiograph"))
    assert fixed["Edema"] == [("edema", "normal chest radiograph")]


def test_location_slots_expand_and_need_locations():
    cfg = _cfg(phrases={"Pneumonia": ["pneumonia", "{location} pneumonia"]}, negative="no {finding}",
               locations=["right lower lobe", "left upper lobe"])
    assert classification.prompt_candidates(cfg)["Pneumonia"] == [("pneumonia", "no pneumonia"),
                                                                  ("{location} pneumonia", "no {location} pneumonia")]
    assert classification.expand_locations("{location} pneumonia", ["right lower lobe", "left upper lobe"]) == [
        "right lower lobe pneumonia", "left upper lobe pneumonia"]
    assert classification.expand_locations("pneumonia", ["right lower lobe"]) == ["pneumonia"]
    with pytest.raises(config.ConfigError, match="locations is empty"):
        classification.prompt_candidates(_cfg(phrases={"Pneumonia": "{location} pneumonia"}, locations=[]))


def test_a_location_prompt_is_the_normalised_mean_of_its_expansions(smoke_run):
    from medxpert_utils.models import clip
    from medxpert_utils.retrieval.encoders import embed_texts

    cfg = config.from_run(smoke_run)
    cfg.params.eval.classification.locations = ["right lower lobe", "left upper lobe", "right middle lobe"]
    vectors = classification.embed_prompts(cfg, "fine_tuned", ["{location} pneumonia", "pneumonia"])
    net, processor = clip.load_clip(clip.model_specs(cfg)["fine_tuned"], device="cpu")
    texts = ["right lower lobe pneumonia", "left upper lobe pneumonia", "right middle lobe pneumonia", "pneumonia"]
    direct = embed_texts(net, processor, texts, max_length=cfg.clip.max_length, device="cpu", progress=False)
    mean = direct[:3].mean(0)
    assert np.allclose(vectors["{location} pneumonia"], mean / np.linalg.norm(mean), atol=1e-6)
    assert np.array_equal(vectors["pneumonia"], direct[3])  # a plain prompt is its own embedding
    assert not np.allclose(vectors["{location} pneumonia"], direct[0], atol=1e-3)  # an ensemble, not one wording


def test_prompt_phrase_for_an_unknown_observation_is_one_line_error():
    with pytest.raises(config.ConfigError, match="'Effusion' is not one of the 14 observations"):
        classification.prompt_candidates(_cfg(phrases={"Effusion": "effusion"}))


def test_positive_template_without_slot_is_refused():
    with pytest.raises(config.ConfigError, match="finding"):
        config.load("params/smoke.yaml", "x", {"eval.classification.positive": "nothing"})


def test_candidate_prompts_are_chosen_on_validation_not_test():
    candidates = {label: [("a", "n")] for label in CHEXPERT_LABELS}
    candidates["Edema"] = [("wrong", "n"), ("right", "n")]
    vectors = {"a": np.array([1.0, 0.0]), "n": np.array([0.0, 0.0]), "wrong": np.array([-1.0, 0.0]),
               "right": np.array([1.0, 0.0])}
    x = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [-0.5, 0.5]])
    pos = np.zeros((4, len(CHEXPERT_LABELS)), dtype=bool)
    pos[:2, CHEXPERT_LABELS.index("Edema")] = True
    chosen = classification.choose_prompts(candidates, vectors, (x, pos, np.ones_like(pos)))
    assert chosen["Edema"]["positive"] == "right" and chosen["Edema"]["val_auroc"] == 1.0
    assert chosen["Edema"]["candidates"] == {"wrong": 0.0, "right": 1.0}
    assert chosen["Cardiomegaly"]["positive"] == "a" and chosen["Cardiomegaly"]["val_auroc"] is None
    assert classification.choose_prompts(candidates, vectors, None)["Edema"]["positive"] == "wrong"


def test_prompt_scores_rank_images_by_positive_minus_negative_similarity():
    image = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    pos, neg = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    assert classification.prompt_scores(image, pos, neg)[:, 0].tolist() == pytest.approx([1.0, -1.0, -0.2])


def test_score_block_mean_covers_observations_with_enough_positives():
    rng = np.random.default_rng(1)
    n = 60
    positive = np.zeros((n, len(CHEXPERT_LABELS)), dtype=bool)
    positive[:20, 0] = True   # 20 positives: perfectly separated below
    positive[:3, 1] = True    # 3 positives: reported, not in the mean
    usable = np.ones_like(positive)
    usable[50:, 0] = False    # uncertain rows left out
    scores = rng.random((n, len(CHEXPERT_LABELS)))
    scores[:, 0] = positive[:, 0] * 2.0 + rng.random(n)
    scores[50:, 0] = 100.0    # would break separation if uncertain rows counted
    resamples = rng.integers(0, n, size=(50, n))
    block = classification.score_block(scores, positive, usable, resamples, min_positives=10)
    first = block["per_observation"][CHEXPERT_LABELS[0]]
    assert first["auroc"] == 1.0 and first["n_uncertain"] == 10 and first["ci95"] == [1.0, 1.0]
    assert block["mean_over"] == [CHEXPERT_LABELS[0]] and block["mean_auroc"] == 1.0
    assert block["per_observation"][CHEXPERT_LABELS[1]]["n_positive"] == 3


def test_linear_probe_learns_a_separable_observation_and_picks_c_on_validation():
    rng = np.random.default_rng(2)

    def make(n):
        x = rng.normal(size=(n, 8))
        y = np.zeros((n, 2), dtype=bool)
        y[:, 0] = x[:, 0] > 0.3
        return x, y, np.ones_like(y)

    (tx, ty, tok), (vx, vy, vok), (sx, sy, _) = make(300), make(100), make(100)
    scores, c, search = classification.linear_probe_scores(tx, ty, tok, sx, (vx, vy, vok), cs=(0.001, 1.0))
    assert classification.auroc(scores[:, 0], sy[:, 0]) > 0.95
    assert np.isnan(scores[:, 1]).all()  # no positives in training -> no model
    assert set(search) == {"0.001", "1"} and c == 1.0 and search["1"] >= search["0.001"]


def test_image_to_image_leaves_out_own_study_and_patient():
    q = np.array([[1.0, 0.0]])
    corpus = np.array([[1.0, 0.0], [0.99, 0.141], [0.8, 0.6], [0.0, 1.0]])
    q_pos = np.array([[True, False]])
    c_pos = np.array([[True, False], [True, False], [False, True], [True, False]])
    out = metrics.image_to_image_precision(q, q_pos, [np.array(["s1"]), np.array(["p1"])], corpus, c_pos,
                                           [np.array(["s1", "s2", "s3", "s4"]), np.array(["p1", "p1", "p2", "p3"])],
                                           k=1, n_boot=0)
    # row 0 is the query's study and row 1 its patient: the nearest allowed image is row 2 (no shared label)
    assert out["P@1"] == 0.0 and out["n_precision_queries"] == 1
    kept = metrics.image_to_image_precision(q, q_pos, [np.array(["s1"])], corpus, c_pos,
                                            [np.array(["s1", "s2", "s3", "s4"])], k=1, n_boot=0)
    assert kept["P@1"] == 1.0  # same patient allowed: row 1 answers


def test_smoke_run_writes_classification_and_image_to_image(smoke_run):
    from medxpert_utils.core import io

    result = io.read_json(smoke_run / "metrics" / "classification.json")
    for model in ("zero_shot", "fine_tuned"):
        for method in classification.METHODS:
            block = result["models"][model][method]
            assert set(block["per_observation"]) == set(CHEXPERT_LABELS)
            for row in block["per_observation"].values():
                assert row["auroc"] is None or 0.0 <= row["auroc"] <= 1.0
    assert "zero_shot_prompts" in classification.format_summary(result)
    retrieval = io.read_json(smoke_run / "metrics" / "retrieval.json")
    i2i = retrieval["models"]["fine_tuned"]["image_to_image"]
    name = f"P@{retrieval['precision_k']}"
    assert 0.0 <= i2i[name] <= 1.0 and i2i["n_queries"] == retrieval["n_images"]


def test_cli_eval_prints_both_tables_and_json_carries_classification(smoke_run, capsys):
    import json

    from medxpert_utils.app import cli

    assert cli.main(["eval", "--run", str(smoke_run)]) == 0
    text = capsys.readouterr().out
    assert "Recall@10" in text and "image->image label P@" in text and "linear_probe" in text
    assert cli.main(["eval", "--run", str(smoke_run), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["models"]["fine_tuned"]["image_to_text"]["R@10"] >= 0.0
    assert set(payload["classification"]["models"]) == {"zero_shot", "fine_tuned"}
