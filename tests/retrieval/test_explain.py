"""Heatmaps of a text over an image (retrieval.explain) and the grounding evaluation (retrieval.grounding)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxpert_utils.core import config, io, runs
from medxpert_utils.core.config import TinyClipParams
from medxpert_utils.core.errors import UserError
from medxpert_utils.data import manifest as mf
from medxpert_utils.data.synthetic import dataset as synthetic
from medxpert_utils.models import clip
from medxpert_utils.retrieval import explain as ex
from medxpert_utils.retrieval import grounding as gr

TINY = TinyClipParams(image_size=32, patch_size=8, hidden_size=32, vision_layers=2, text_layers=1, heads=2,
                      projection_dim=16, vocab_size=300, max_length=32, logit_scale_init=14.3)
REPORTS = ["Small left pleural effusion.", "Right upper lobe consolidation.", "No acute cardiopulmonary process.",
           "Large right pneumothorax.", "Left 6th rib fracture."]


@pytest.fixture(scope="module")
def explainer(tmp_path_factory) -> ex.Explainer:
    folder = clip.build_tiny_clip(TINY, REPORTS * 4, tmp_path_factory.mktemp("clip") / "tiny", seed=0)
    model, processor = clip.load_clip(folder)
    return ex.Explainer(model, processor, max_length=32)


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8), "L")


@pytest.mark.parametrize("method", ex.METHODS)
def test_maps_have_the_image_size_and_are_deterministic(explainer, method, torch_one_thread):
    img = _image(48, 48)
    first = explainer.explain(img, "left pleural effusion", method)
    assert first.shape == (48, 48) and first.dtype == np.float32 and np.isfinite(first).all()
    assert np.array_equal(first, explainer.explain(np.asarray(img), "left pleural effusion", method))
    assert first.std() > 0  # a map, not a constant
    other = explainer.explain(img, "right upper lobe consolidation", method)
    assert not np.allclose(first, other)  # the text matters


def test_a_wide_image_gets_its_map_on_the_centre_crop_only(explainer, torch_one_thread):
    """The model sees the centre square of a wide film: the strips beside it hold the map's minimum."""
    heat = explainer.explain(_image(96, 48, seed=1), "large right pneumothorax", "grad_x_input")
    assert heat.shape == (48, 96)
    assert np.all(heat[:, :20] == heat.min()) and np.all(heat[:, -20:] == heat.min())
    assert heat[:, 28:68].max() > heat.min()


def test_patch_map_is_the_projected_token_cosine(explainer, torch_one_thread):
    """Without shifts or contrast the patch map is the patch tokens' cosines with the text, upsampled bilinearly."""
    import torch
    import torch.nn.functional as F

    plain = ex.Explainer(explainer.model, explainer.processor, 32, shifts=1, contrast=None)
    img = _image(32, 32, seed=2)  # the tiny model's own input size: no resizing
    heat = plain.explain(img, "small left pleural effusion", "patch")
    vision = plain.model.vision_model
    with torch.no_grad():
        pixels = plain.transform(img)[None]
        tokens = vision(pixel_values=pixels).last_hidden_state[0, 1:]
        projected = F.normalize(plain.model.visual_projection(vision.post_layernorm(tokens)), dim=-1)
        cosine = projected @ plain.text_embeddings(["small left pleural effusion"])[0]
        expected = F.interpolate(cosine.reshape(1, 1, 4, 4), size=(32, 32), mode="bilinear", align_corners=False)
    assert np.allclose(heat, expected[0, 0].numpy(), atol=1e-5)
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert int(np.argmax(cosine.numpy())) == (y // 8) * 4 + x // 8  # the hottest pixel is in the best patch


def test_gradient_map_is_the_smoothed_input_gradient_magnitude(explainer, torch_one_thread):
    """The saliency map: |d cos(image, text) / d pixel| summed over channels, Gaussian-smoothed (sigma a quarter
    patch, zero outside the image), checked against scipy's filter and a finite difference."""
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import gaussian_filter

    from medxpert_utils.models.clip import image_features

    plain = ex.Explainer(explainer.model, explainer.processor, 32, shifts=1, contrast=None)
    img = _image(32, 32, seed=3)
    heat = plain.explain(img, "large right pneumothorax", "gradient")
    text = plain.text_embeddings(["large right pneumothorax"])[0]
    pixels = plain.transform(img)[None].clone().requires_grad_(True)

    def cosine(x):
        return (F.normalize(image_features(plain.model, x).float(), dim=-1) * text).sum()

    grad = torch.autograd.grad(cosine(pixels), pixels)[0][0]
    expected = gaussian_filter(grad.abs().sum(0).numpy(), sigma=8 / 4, mode="constant", truncate=3.0)
    assert np.allclose(heat, expected, atol=1e-6)
    y, x = 16, 10  # the autograd gradient is the cosine's slope: a central difference agrees
    with torch.no_grad():
        bump = torch.zeros_like(pixels)
        bump[0, :, y, x] = 1e-2
        slope = (cosine(pixels + bump) - cosine(pixels - bump)) / 2e-2
    assert float(slope) == pytest.approx(float(grad[:, y, x].sum()), rel=0.05, abs=1e-5)


def test_contrast_subtracts_the_normal_impression(explainer):
    with_contrast = explainer.text_embeddings(["left pleural effusion"]).numpy()
    plain = ex.Explainer(explainer.model, explainer.processor, 32, contrast=None)
    both = plain.text_embeddings(["left pleural effusion", ex.NEUTRAL_TEXT]).numpy()
    assert np.allclose(with_contrast[0], both[0] - both[1], atol=1e-6)


def test_bad_text_and_method_are_one_line_errors(explainer):
    with pytest.raises(UserError, match="empty text"):
        explainer.explain(_image(32, 32), "  ")
    with pytest.raises(UserError, match="unknown heatmap method 'cam'"):
        explainer.explain(_image(32, 32), "effusion", "cam")
    with pytest.raises(UserError, match="2 images but 1 texts"):
        explainer.maps([_image(32, 32)] * 2, ["effusion"])


def test_selected_method_reads_the_grounding_file(tmp_path):
    assert ex.selected_method(tmp_path) == ex.DEFAULT_METHOD
    io.write_json(tmp_path / "metrics" / ex.GROUNDING_FILE, {"selection": {"method": "patch"}})
    assert ex.selected_method(tmp_path) == "patch"
    io.write_json(tmp_path / "metrics" / ex.GROUNDING_FILE, {"selection": {"method": "nonsense"}})
    assert ex.selected_method(tmp_path) == ex.DEFAULT_METHOD


# --- scores ------------------------------------------------------------------------------------------------

def test_pointing_game_and_cnr():
    heat = np.zeros((10, 10), dtype=np.float32)
    heat[2, 7] = 1.0
    assert gr.pointing_hit(heat, [[6, 1, 9, 4]]) and not gr.pointing_hit(heat, [[0, 0, 6, 10]])
    assert gr.pointing_hit(heat, [[0, 0, 2, 2], [7, 2, 8, 3]])  # any of a finding's boxes
    assert not gr.pointing_hit(heat, [[0, 0, 7, 2]])  # x1 and y1 are exclusive
    box = [[0, 0, 5, 10]]
    perfect = np.zeros((10, 10), dtype=np.float32)
    perfect[:, :5] = 1
    assert gr.cnr(perfect, box) == pytest.approx(1 / np.sqrt(gr.CNR_EPS))
    assert gr.cnr(np.ones((10, 10), dtype=np.float32), box) == 0
    noisy = perfect + np.random.default_rng(0).normal(0, 0.3, perfect.shape).astype(np.float32)
    inverted = 1 - noisy
    assert gr.cnr(noisy, box) == pytest.approx(gr.cnr(inverted, box))  # |contrast|, as BioViL defines it
    flat = np.random.default_rng(1).normal(0, 1, (10, 10)).astype(np.float32)
    assert gr.cnr(noisy, box) > 1 > gr.cnr(flat, box)
    assert np.isnan(gr.cnr(flat, [[0, 0, 10, 10]]))


def test_side_hit_needs_a_finding_in_one_half():
    heat = np.zeros((10, 10), dtype=np.float32)
    heat[5, 2] = 1.0  # maximum in the left image half
    assert gr.side_hit(heat, [[0, 0, 4, 4]]) == 1.0 and gr.side_hit(heat, [[6, 6, 9, 9]]) == 0.0
    assert np.isnan(gr.side_hit(heat, [[3, 0, 7, 4]]))  # across the midline
    assert np.isnan(gr.side_hit(heat, [[0, 0, 4, 4], [6, 0, 9, 4]]))  # bilateral


def test_centre_prior_peaks_at_the_centre():
    prior = gr.centre_prior((64, 64))
    y, x = np.unravel_index(int(np.argmax(prior)), prior.shape)
    assert (y, x) in {(31, 31), (31, 32), (32, 31), (32, 32)}
    assert gr.pointing_hit(prior, [[24, 24, 40, 40]]) and not gr.pointing_hit(prior, [[0, 0, 20, 64]])


def test_bootstrap_ci_resamples_patients():
    rng = np.random.default_rng(0)
    values = rng.random(400) < 0.6
    lo, hi = gr.bootstrap_ci(values, np.arange(400), n_boot=500)
    assert lo < values.mean() < hi and 0.05 < hi - lo < 0.15
    # the same cases in 20 patients of 20 correlated cases each: a wider interval
    clustered = np.repeat(rng.random(20) < 0.6, 20)
    lo_c, hi_c = gr.bootstrap_ci(clustered, np.repeat(np.arange(20), 20), n_boot=500)
    lo_i, hi_i = gr.bootstrap_ci(clustered, np.arange(400), n_boot=500)
    assert hi_c - lo_c > 2 * (hi_i - lo_i)


# --- a run ---------------------------------------------------------------------------------------------------

def _grounding_run(run_dir: Path, data_dir: Path) -> config.Config:
    """A run with the demo generator's manifest (regions beside it) and untrained tiny base / 'fine-tuned' CLIPs."""
    cfg = config.load("smoke", run=str(run_dir), overrides={"clip.tiny.vision_layers": 2})
    runs.prepare(cfg)
    frame = synthetic.generate(90, 64, 3, data_dir, progress=False, workers=1)
    frame["report"] = (frame["findings"] + " " + frame["impression"]).str.strip()
    patients = pd.factorize(frame["patient_id"])[0]
    frame["split"] = np.array(["train", "val", "test"])[patients % 3]
    for label in mf.LABEL_COLUMNS:
        frame[label] = frame[f"truth_{label}"]
    io.write_parquet(cfg.paths.manifest, mf.validate(frame))
    train = frame.loc[frame["split"] == "train", "report"].tolist()
    clip.build_tiny_clip(cfg.clip.tiny, train, cfg.paths.clip_base, seed=0)
    clip.build_tiny_clip(cfg.clip.tiny, train, cfg.paths.clip_finetuned, seed=1)
    return cfg


@pytest.fixture(scope="module")
def grounding_run(tmp_path_factory) -> config.Config:
    return _grounding_run(tmp_path_factory.mktemp("outputs") / "ground", tmp_path_factory.mktemp("synthetic"))


def test_grounding_cases_come_from_the_generator_regions(grounding_run):
    frame = mf.read(grounding_run.run_dir)
    cases = gr.grounding_cases(frame, "test")
    assert len(cases) and cases["local"].any()
    assert set(cases["study_id"]) <= set(frame.loc[frame["split"] == "test", "study_id"])
    assert (cases["certainty"] == "positive").all()
    for _, case in cases.iterrows():
        assert case["boxes"] and all(0 <= b[0] < b[2] <= 64 and 0 <= b[1] < b[3] <= 64 for b in case["boxes"])
        assert (case["kind"] in gr.LOCAL_KINDS) == case["local"]
    bilateral = cases.loc[cases["phrase"].str.contains("bilateral")]
    assert all(len(b) == 2 for b in bilateral["boxes"])


def test_grounding_cases_need_the_demo_regions(tmp_path):
    frame = pd.DataFrame({"image_path": [str(tmp_path / "images" / "p1" / "s1_1.png")], "study_id": ["s1"],
                          "split": ["test"]})
    with pytest.raises(UserError, match="rerun 00_data_prep"):
        gr.grounding_cases(frame, "test")
    with pytest.raises(UserError, match="needs the demo source"):
        gr.grounding_cases(frame.assign(source="openi"), "test")


def test_evaluate_grounding_writes_the_metrics(grounding_run, torch_one_thread):
    result = gr.evaluate_grounding(grounding_run.run_dir, n_boot=100, progress=False, compare_on_test=True)
    saved = json.loads((grounding_run.paths.metrics / "grounding.json").read_text())
    assert saved["selection"]["method"] == result["selection"]["method"] in ex.METHODS
    assert set(saved["models"]) == {"zero_shot", "fine_tuned", gr.PRIOR}
    assert set(saved["selection"]["val_local"]) == set(ex.METHODS)
    assert set(saved["methods"]) == {f"{m}/{x}" for m in ("zero_shot", "fine_tuned") for x in ex.METHODS}
    assert saved["n_local_cases"] == saved["models"]["fine_tuned"][gr.LOCAL]["n"]
    for model in saved["models"].values():
        for entry in model.values():
            assert 0 <= entry["pointing"] <= 1
            lo, hi = entry["pointing_ci95"]
            assert lo <= entry["pointing"] + 1e-9 and entry["pointing"] <= hi + 1e-9
            assert entry["n_one_side"] <= entry["n"] and (entry["n_one_side"] == 0 or 0 <= entry["side"] <= 1)
    # the prior's figures are the recomputed ones
    cases = gr.grounding_cases(mf.read(grounding_run.run_dir), "test")
    prior_hits = [gr.pointing_hit(gr.centre_prior((64, 64)), b) for b in cases.loc[cases["local"], "boxes"]]
    assert saved["models"][gr.PRIOR][gr.LOCAL]["pointing"] == pytest.approx(np.mean(prior_hits))
    assert set(saved["fine_tuned_beats_ci"]) == {"zero_shot", gr.PRIOR}
    assert ex.selected_method(grounding_run.run_dir) == saved["selection"]["method"]
    table = gr.grounding_table(saved)
    assert table.index[0][0] == gr.LOCAL and {"pointing", "CNR"} <= set(table.columns)


def test_grounding_scores_only_the_chosen_method_on_test_by_default(grounding_run, torch_one_thread):
    result = gr.evaluate_grounding(grounding_run.run_dir, n_boot=50, progress=False, write=False)
    chosen = result["selection"]["method"]
    assert set(result["methods"]) == {f"zero_shot/{chosen}", f"fine_tuned/{chosen}"}
    assert result["models"]["fine_tuned"] == result["methods"][f"fine_tuned/{chosen}"]


def test_grounding_figure(grounding_run, torch_one_thread, tmp_path):
    fig = gr.grounding_figure(grounding_run.run_dir, n=3, path=tmp_path / "grounding.png")
    assert (tmp_path / "grounding.png").stat().st_size > 1000
    assert len([ax for ax in fig.axes if ax.images]) == 3
    assert all("hit" in ax.get_title() or "miss" in ax.get_title() for ax in fig.axes if ax.images)
