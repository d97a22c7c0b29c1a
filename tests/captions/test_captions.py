"""BLIP captioning: tiny model round trip, fine-tuning, captioning a split, scores."""

import json

import pandas as pd
import pytest
from PIL import Image, ImageDraw

from medxpert_utils import captions
from medxpert_utils.core import config, io, runs
from medxpert_utils.core.errors import MissingModelError
from medxpert_utils.data import manifest
from medxpert_utils.data.label_metrics import label_f1
from medxpert_utils.data.labels import CHEXPERT_LABELS
from medxpert_utils.models import blip

EFFUSION = "Large right pleural effusion."
NORMAL = "No acute cardiopulmonary process."
TINY = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "vision_layers": 1, "text_layers": 1, "heads": 2,
        "vocab_size": 120}


# --- scores --------------------------------------------------------------------------------------

def test_identical_and_disjoint_strings_score_one_and_zero():
    same = captions.score_captions([EFFUSION, NORMAL], [EFFUSION, NORMAL])
    assert same["BLEU"] == pytest.approx(1.0) and same["ROUGE-L"] == pytest.approx(1.0)
    assert same["label_f1_micro"] == pytest.approx(1.0) and same["label_f1_macro"] == pytest.approx(1.0)
    apart = captions.score_captions(["alpha beta gamma delta"], ["one two three four"])
    assert apart["BLEU"] == pytest.approx(0.0) and apart["ROUGE-L"] == pytest.approx(0.0)


def test_label_f1_on_hand_made_pairs():
    result = label_f1([{"Edema"}, {"Atelectasis"}], [{"Edema"}, {"Edema"}])
    # Edema: tp 1, fn 1 -> P 1, R 0.5, F1 2/3; Atelectasis: fp 1 -> F1 0; pooled: tp 1, fp 1, fn 1 -> 0.5
    assert result["micro"] == pytest.approx(0.5)
    assert result["per_label"]["Edema"] == pytest.approx(2 / 3)
    assert result["per_label"]["Atelectasis"] == 0.0
    assert result["per_label"]["Pneumothorax"] is None  # in neither: undefined, left out of the macro mean
    assert result["macro"] == pytest.approx(1 / 3)
    assert label_f1([], [])["micro"] is None


def test_caption_labels_come_from_the_labeler():
    assert captions.positive_labels(EFFUSION) == {"Pleural Effusion"}
    assert "Pleural Effusion" not in captions.positive_labels("No pleural effusion.")


# --- tiny model ----------------------------------------------------------------------------------

def test_wordpiece_tokenizer_is_deterministic_with_fixed_specials():
    a = blip.train_wordpiece([EFFUSION, NORMAL] * 5, 80, 32)
    b = blip.train_wordpiece([NORMAL, EFFUSION] * 5, 80, 32)
    assert a.get_vocab() == b.get_vocab()
    assert [a.pad_token_id, a.unk_token_id, a.cls_token_id, a.sep_token_id] == [0, 1, 2, 3]
    ids = a(EFFUSION)["input_ids"]
    assert ids[0] == a.cls_token_id and ids[-1] == a.sep_token_id and a.unk_token_id not in ids


def test_tiny_blip_save_load_round_trip(tmp_path):
    import torch

    params = config.TinyBlipParams(**TINY)
    out = blip.build_tiny_blip(params, [EFFUSION, NORMAL] * 5, tmp_path / "blip_base", seed=3)
    model, processor = blip.load_blip(out, "cpu")
    again = blip.build_tiny_blip(params, [EFFUSION, NORMAL] * 5, tmp_path / "again", seed=3)
    model2, _ = blip.load_blip(again, "cpu")
    for (name, p), (_, q) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(p, q), name  # same seed, same weights
    assert model.config.text_config.bos_token_id == processor.tokenizer.cls_token_id
    assert model.config.text_config.sep_token_id == processor.tokenizer.sep_token_id
    captioner = captions.Captioner(model, processor, max_new_tokens=5)
    texts = captioner.caption([Image.new("L", (40, 40), 100), Image.new("RGB", (20, 30))], batch_size=1)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_missing_hub_weights_offline_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(MissingModelError) as info:
        blip.load_blip("Salesforce/blip-image-captioning-base")
    message = str(info.value)
    assert "\n" not in message and "Salesforce/blip-image-captioning-base" in message and "demo profile" in message
    with pytest.raises(MissingModelError, match="folder not found"):
        blip.load_blip(str(tmp_path / "nowhere" / "blip"))


def test_hub_id_loads_from_a_cache_in_the_real_layout(tmp_path, monkeypatch):
    """from_pretrained with the hub id, offline, from a Hugging Face cache laid out like a real download."""
    import huggingface_hub.constants as hub

    cache = tmp_path / "hub"
    repo = cache / "models--Salesforce--blip-image-captioning-base"
    commit = "0" * 40
    blip.build_tiny_blip(config.TinyBlipParams(**TINY), [EFFUSION, NORMAL] * 5, repo / "snapshots" / commit, seed=0)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    model, processor = blip.load_blip("Salesforce/blip-image-captioning-base", "cpu")
    assert model.config.vision_config.image_size == 32 and processor.tokenizer.cls_token_id == 2


# --- a small run ---------------------------------------------------------------------------------

def _image(path, effusion: bool):
    img = Image.new("L", (48, 48), 30)
    draw = ImageDraw.Draw(img)
    draw.ellipse((8, 8, 40, 40), fill=120)
    if effusion:
        draw.rectangle((4, 28, 24, 46), fill=240)
    img.save(path)
    return str(path)


@pytest.fixture
def caption_run(tmp_path):
    """A run with a 60-image manifest of two kinds of image and report (and one test image the data stage could
    not decode, flagged as unreadable)."""
    cfg = runs.prepare(config.load("params/smoke.yaml", run=str(tmp_path / "outputs" / "cap"), overrides={
        "captions.tiny": TINY, "captions.epochs": 6, "captions.batch_size": 8, "captions.lr": 2e-3,
        "captions.max_new_tokens": 10, "captions.max_images": 20}))
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(60):
        effusion = i % 2 == 0
        split = "train" if i < 40 else "val" if i < 50 else "test"
        labels = {name: None for name in CHEXPERT_LABELS}
        labels["Pleural Effusion" if effusion else "No Finding"] = 1
        report = EFFUSION if effusion else NORMAL
        rows.append({"study_id": f"s{i:02d}", "patient_id": f"p{i:02d}",
                     "image_path": _image(images / f"{i}.png", effusion),
                     "findings": "", "impression": report, "report": report, "split": split, **labels})
    bad = images / "bad.png"
    bad.write_bytes(b"not an image")
    rows.append({**rows[-1], "study_id": "s99", "patient_id": "p99", "image_path": str(bad),
                 "unreadable": "not an image"})
    io.write_parquet(cfg.paths.manifest, manifest.validate(pd.DataFrame(rows)))
    return cfg


@pytest.mark.slow
def test_finetune_lowers_the_loss_and_captions_are_scored(caption_run):
    cfg = caption_run
    history = captions.finetune(cfg, progress=False)
    assert history["best_val_loss"] < 0.7 * history["initial_val_loss"]
    assert history["n_train"] == 40 and len(history["history"]) == 6
    assert (cfg.paths.blip / "config.json").is_file() and (cfg.paths.blip_base / "config.json").is_file()
    assert captions.available_models(cfg) == ["base", "fine_tuned"]
    stamp = (cfg.paths.blip / "model.safetensors").stat().st_mtime_ns
    assert captions.finetune(cfg, progress=False) == history  # a rerun reuses the finished fine-tuning...
    assert (cfg.paths.blip / "model.safetensors").stat().st_mtime_ns == stamp
    shorter = captions.finetune(cfg, progress=False, max_steps=2)  # ...but not one with other settings
    assert shorter["steps"] == 2 and (cfg.paths.blip / "model.safetensors").stat().st_mtime_ns != stamp
    history = captions.finetune(cfg, progress=False)  # back to the full run for the checks below

    frame = captions.caption_split(cfg, progress=False)
    assert list(frame.columns) == ["study_id", "image_path", "caption", "reference", "model"]
    assert set(frame["model"]) == {"base", "fine_tuned"} and "s99" not in set(frame["study_id"])  # flagged: left out
    assert len(frame) == 2 * 10
    assert pd.read_parquet(cfg.paths.captions).equals(frame)

    result = captions.score_run(cfg, frame, training=history)
    saved = json.loads((cfg.paths.metrics / "captions.json").read_text())
    assert saved["models"]["fine_tuned"]["n"] == 10 and saved["training"]["steps"] > 0
    tuned, base = result["models"]["fine_tuned"], result["models"]["base"]
    assert tuned["label_f1_micro"] is not None and tuned["ROUGE-L"] > base["ROUGE-L"]
    assert base["untrained"] is True and tuned["untrained"] is False
    assert saved["models"]["fine_tuned"]["chexbert"]["available"] is False  # offline: said, not substituted
    table = captions.scores_table(result)
    assert list(table.index) == ["base (untrained)", "fine_tuned"]

    captioner = captions.Captioner.from_run(cfg.run_dir)
    assert captioner.name == "fine_tuned"
    test = frame[frame["model"] == "fine_tuned"]
    assert captioner.caption(test["image_path"].tolist()) == test["caption"].tolist()  # deterministic


def test_prepare_base_model_reuses_the_tiny_model(caption_run):
    first = blip.prepare_base_model(caption_run)
    stamp = (caption_run.paths.blip_base / "model.safetensors").stat().st_mtime_ns
    assert blip.prepare_base_model(caption_run) == first
    assert (caption_run.paths.blip_base / "model.safetensors").stat().st_mtime_ns == stamp
    assert blip.model_specs(caption_run)["base"] == first


def test_time_aware_schedule_decays_by_the_time_limit():
    now = [0.0]
    schedule = captions.TimeAwareCosine(total_steps=1000, warmup_steps=10, budget_s=100, clock=lambda: now[0])
    assert schedule(0) < schedule(5) < schedule(9) <= 1.0  # warm-up
    assert schedule(10) == pytest.approx(1.0, abs=1e-3)
    now[0] = 50.0  # half the time gone after only 20 of 1000 steps: halfway through the decay
    assert schedule(20) == pytest.approx(0.5, abs=1e-6)
    now[0] = 100.0
    assert schedule(30) == pytest.approx(0.0, abs=1e-9)
    steps_only = captions.TimeAwareCosine(total_steps=100, warmup_steps=0)
    assert steps_only(50) == pytest.approx(0.5) and steps_only(100) == pytest.approx(0.0)
