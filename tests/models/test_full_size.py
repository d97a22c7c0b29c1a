"""The rehearsal's models at full size: CLIP ViT-B/32, BLIP base and Whisper small built from their published
configurations with random weights, then one training step, one embedding batch, one caption and one transcription
through the same functions the real profiles use (``params/rehearsal.yaml`` with a 20-study run)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medxpert_utils.core import config, runs
from medxpert_utils.core.errors import UserError
from medxpert_utils.models import blip, clip, published


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, session_data_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDXPERT_DATA", str(session_data_dir))
        run_dir = tmp_path_factory.mktemp("rehearsal") / "run"
        cfg = runs.prepare(config.load("rehearsal", run=str(run_dir), overrides={
            "data.n_studies": 20, "train.max_steps": 1, "train.batch_size": 4, "train.num_workers": 0,
            "train.val_max_pairs": 4, "embed.batch_size": 8, "embed.num_workers": 0, "captions.max_images": 1,
            "captions.num_beams": 1, "captions.max_new_tokens": 4, "asr.max_new_tokens": 4}))
        from medxpert_utils.data import stage

        stage.run(cfg)
        yield cfg


def test_run_json_names_the_random_weights(cfg):
    recorded = runs.read(cfg.run_dir)["random_weights"]
    assert recorded == {"clip.model": "random:openai/clip-vit-base-patch32",
                        "captions.model": "random:Salesforce/blip-image-captioning-base",
                        "asr.model": "random:openai/whisper-small.en"}


def test_clip_vit_b32_trains_one_step_and_embeds_a_batch(cfg):
    from medxpert_utils.retrieval import embedding, store
    from medxpert_utils.training.trainer import fit

    base = clip.prepare_base_model(cfg)
    model, processor = clip.load_clip(base, "cpu")
    vision, text = model.config.vision_config, model.config.text_config
    assert (vision.image_size, vision.patch_size, vision.num_hidden_layers, vision.hidden_size) == (224, 32, 12, 768)
    assert (text.vocab_size, text.max_position_embeddings, text.hidden_size) == (49408, 77, 512)
    assert 150e6 < sum(p.numel() for p in model.parameters()) < 152e6
    assert processor.image_processor.crop_size == {"height": 224, "width": 224}
    assert len(processor.tokenizer) < text.vocab_size  # the stand-in tokenizer fits the published vocabulary
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    result = fit(cfg, progress=False)
    assert result["steps"] == 1
    tuned, _ = clip.load_clip(cfg.paths.clip_finetuned, "cpu")
    after = dict(tuned.named_parameters())
    frozen = "vision_model.encoder.layers.3.mlp.fc1.weight"  # train.freeze_vision_layers: 4
    trained = "vision_model.encoder.layers.4.mlp.fc1.weight"
    assert bool((after[frozen] == before[frozen]).all())
    assert not bool((after[trained] == before[trained]).all())
    patch = "vision_model.embeddings.patch_embedding.weight"
    assert bool((after[patch] == before[patch]).all())

    out = embedding.embed_run(cfg, "fine_tuned", progress=False)
    vectors = store.load_embeddings(out, corpus=True)
    assert vectors.image.shape == vectors.text.shape == (20, 512)  # the whole 20-study corpus, 512-d projections
    assert np.allclose(np.linalg.norm(vectors.image, axis=1), 1.0, atol=1e-4)
    assert embedding.summary(cfg, "fine_tuned")["dim"] == 512


def test_blip_base_captions_at_384_px(cfg):
    from medxpert_utils.captions.model import caption_split

    base = blip.prepare_base_model(cfg)
    model, processor = blip.load_blip(base, "cpu")
    vision, text = model.config.vision_config, model.config.text_config
    assert (vision.image_size, vision.patch_size, vision.num_hidden_layers, vision.hidden_size) == (384, 16, 12, 768)
    assert (text.vocab_size, text.num_hidden_layers) == (30524, 12)
    assert 220e6 < sum(p.numel() for p in model.parameters()) < 230e6
    assert processor.image_processor.size == {"height": 384, "width": 384}

    frame = caption_split(cfg, models=["base"])
    assert len(frame) == 1
    words = frame["caption"].iloc[0].split()
    assert words, "a random decoder still writes words of the stand-in vocabulary"
    vocab = set(processor.tokenizer.get_vocab())
    assert all(token in vocab for token in processor.tokenizer.tokenize(frame["caption"].iloc[0]))


def test_whisper_small_transcribes(cfg, tmp_path):
    from medxpert_utils.speech import Transcriber
    from medxpert_utils.speech.synth import synthesise

    spoken = synthesise("left pleural effusion", tmp_path / "q.wav", voice="en-us+klatt4", speed=150,
                        lead_seconds=0.3)
    transcriber = Transcriber(cfg)
    heard = transcriber.transcribe(spoken)
    assert heard.backend == "whisper" and heard.model == "random:openai/whisper-small.en"
    assert heard.text.strip() and heard.elapsed_s > 0
    folder = cfg.paths.whisper_base
    saved = json.loads((folder / "config.json").read_text())
    assert (saved["d_model"], saved["encoder_layers"], saved["decoder_layers"], saved["vocab_size"]) == (
        768, 12, 12, 51864)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["is_multilingual"] is False and generation["no_timestamps_token_id"] is not None


def test_random_spec_is_never_loaded_as_a_hub_model():
    with pytest.raises(UserError, match="is not a model to load: it is built from the training reports"):
        clip.load_clip("random:openai/clip-vit-base-patch32")
    with pytest.raises(UserError, match="no published CLIP configuration is held for 'openai/clip-vit-large'"):
        published.hub_id("random:openai/clip-vit-large", "clip", "clip.model")
    with pytest.raises(UserError, match="no published BLIP configuration .* use random:Salesforce/blip-image-"):
        published.hub_id("random:openai/clip-vit-base-patch32", "blip", "captions.model")  # held, but not a BLIP
    assert published.hub_id(" random:openai/whisper-small.en ", "whisper", "asr.model") == "openai/whisper-small.en"
