"""CLIP loading/building, freezing, EOS pooling and the image/text data pipeline (tiny sizes, seconds)."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medxpert_utils.core.config import AugmentParams, TinyClipParams
from medxpert_utils.core.errors import MissingModelError, UserError
from medxpert_utils.data.loading import datasets as torchdata
from medxpert_utils.data.loading import prefetch, transforms
from medxpert_utils.models import clip, pretrained

REPORTS = [
    "No acute cardiopulmonary process.",
    "Small left pleural effusion. Mild cardiomegaly.",
    "Right upper lobe consolidation concerning for pneumonia.",
    "Moderate right pneumothorax. No pleural effusion.",
    "Endotracheal tube terminates 4 cm above the carina.",
] * 8
TINY = TinyClipParams(image_size=32, patch_size=8, hidden_size=32, vision_layers=2, text_layers=1, heads=2,
                      projection_dim=32, vocab_size=300, max_length=32, logit_scale_init=20.0)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return clip.build_tiny_clip(TINY, REPORTS, tmp_path_factory.mktemp("clip") / "tiny", seed=0)


@pytest.fixture
def tiny(tiny_dir):
    return clip.load_clip(tiny_dir, "cpu")


def _write_png(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array.astype(np.uint8), "L").save(path)
    return str(path)


# ------------------------------------------------------------------------------------ building


def test_tiny_clip_config_follows_params_and_tokenizer(tiny):
    model, processor = tiny
    tok = processor.tokenizer
    text_cfg = model.config.text_config
    assert text_cfg.eos_token_id == tok.eos_token_id != 2  # 2 would switch CLIP to legacy argmax pooling
    assert text_cfg.vocab_size == len(tok)
    assert text_cfg.max_position_embeddings == TINY.max_length
    assert model.config.vision_config.image_size == TINY.image_size
    assert len(model.vision_model.encoder.layers) == TINY.vision_layers
    assert math.isclose(model.logit_scale.exp().item(), TINY.logit_scale_init, rel_tol=1e-5)
    assert not model.training
    pixels = processor(images=Image.new("RGB", (50, 40)), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 32, 32)


def test_build_is_deterministic(tiny_dir, tmp_path):
    again = clip.build_tiny_clip(TINY, REPORTS, tmp_path / "again", seed=0)
    other = clip.build_tiny_clip(TINY, REPORTS, tmp_path / "other", seed=1)
    (a, pa), (b, pb), (c, _) = clip.load_clip(tiny_dir), clip.load_clip(again), clip.load_clip(other)
    assert pa.tokenizer.get_vocab() == pb.tokenizer.get_vocab()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_unseen_characters_never_become_eos(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    ids = tok(["Pneumoperitoneum? Ödem, 5 mm; naïve 🙂 xyz"])["input_ids"][0]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert ids.count(tok.eos_token_id) == 1


def test_eos_pooling_takes_the_eos_position(tiny):
    model, processor = tiny
    enc = processor.tokenizer(["Small left pleural effusion.", "No acute cardiopulmonary process, heart normal."],
                              padding=True, truncation=True, max_length=TINY.max_length, return_tensors="pt")
    with torch.no_grad():
        out = model.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        eos_pos = (enc["input_ids"] == processor.tokenizer.eos_token_id).int().argmax(dim=1)
        assert eos_pos[0] < enc["input_ids"].shape[1] - 1  # the short text is padded after its EOS
        expected = out.last_hidden_state[torch.arange(2), eos_pos]
        torch.testing.assert_close(out.pooler_output, expected)
        # Padding must not change a text's embedding: pooled alone == pooled in a padded batch.
        alone = processor.tokenizer(["Small left pleural effusion."], return_tensors="pt")
        single = clip.text_features(model, alone["input_ids"], alone["attention_mask"])
        batched = clip.text_features(model, enc["input_ids"], enc["attention_mask"])
        torch.testing.assert_close(single[0], batched[0], atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_gives_identical_embeddings(tiny, tmp_path):
    model, processor = tiny
    pretrained.save_pretrained(model, processor, tmp_path / "copy")
    again, processor2 = clip.load_clip(tmp_path / "copy")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    enc = processor.tokenizer(REPORTS[:2], padding=True, truncation=True, return_tensors="pt")
    enc2 = processor2.tokenizer(REPORTS[:2], padding=True, truncation=True, return_tensors="pt")
    assert torch.equal(enc["input_ids"], enc2["input_ids"])
    with torch.no_grad():
        assert torch.equal(clip.image_features(model, pixels), clip.image_features(again, pixels))
        assert torch.equal(clip.text_features(model, **enc), clip.text_features(again, **enc2))


# ------------------------------------------------------------------------------------- loading


def test_missing_weights_offline_is_one_clear_line(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))

    def no_network(*args, **kwargs):
        raise AssertionError("load_clip touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(MissingModelError) as info:
        clip.load_clip("openai/clip-vit-base-patch32")
    message = str(info.value)
    assert message == ("cannot load CLIP model 'openai/clip-vit-base-patch32': no network and not in the Hugging "
                       "Face cache - download it once with network (or set HF_HOME to a cache that has it), set "
                       "clip.model to a local folder, or use the demo profile (offline tiny CLIP)")
    assert "\n" not in message


def test_connection_error_maps_to_missing_model(monkeypatch):
    from transformers import CLIPModel

    def refuse(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(CLIPModel, "from_pretrained", refuse)
    with pytest.raises(MissingModelError, match="no network and not in the Hugging Face cache"):
        clip.load_clip("someone/some-clip")


def test_tiny_spec_and_missing_folder_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="prepare_base_model"):
        clip.load_clip("tiny")
    with pytest.raises(MissingModelError, match="folder not found"):
        clip.load_clip(tmp_path / "no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingModelError, match="not a complete save_pretrained folder"):
        clip.load_clip(tmp_path / "empty")


# ------------------------------------------------------------------------------------- freezing


def test_freezing_keeps_frozen_params_fixed_and_trains_the_rest(tiny):
    model, processor = tiny
    model.train()
    clip.freeze_vision_layers(model, 1)
    counts = clip.count_parameters(model)
    assert counts["frozen"] > 0 and counts["trainable"] > 0
    assert counts["frozen"] + counts["trainable"] == sum(p.numel() for p in model.parameters())
    frozen_names = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("vision_model.embeddings") for n in frozen_names)
    assert any("pre_layrnorm" in n for n in frozen_names)
    assert any(n.startswith("vision_model.encoder.layers.0.") for n in frozen_names)
    assert not any(n.startswith("vision_model.encoder.layers.1.") for n in frozen_names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    enc = processor.tokenizer(REPORTS[:4], padding=True, truncation=True, return_tensors="pt")
    out = model(**enc, pixel_values=torch.randn(4, 3, 32, 32))
    out.logits_per_image.logsumexp(1).mean().backward()
    optimizer.step()
    for name, param in model.named_parameters():
        assert torch.equal(before[name], param.detach()) == (name in frozen_names), name
    with pytest.raises(UserError, match="only 2 blocks"):
        clip.freeze_vision_layers(model, 3)


# ----------------------------------------------------------------------------- base model prep


def test_prepare_base_model_builds_once_and_rebuilds_on_change(tmp_path):
    from medxpert_utils.core import config, io
    from medxpert_utils.data.labels import CHEXPERT_LABELS

    cfg = config.load("smoke", str(tmp_path / "run"))
    cfg.paths.ensure()
    frame = pd.DataFrame({"study_id": [f"s{i}" for i in range(8)], "patient_id": [f"p{i}" for i in range(8)],
                          "image_path": [str(tmp_path / f"{i}.png") for i in range(8)],
                          "findings": "", "impression": REPORTS[:8], "report": REPORTS[:8],
                          "split": ["train"] * 6 + ["val", "test"]})
    for name in CHEXPERT_LABELS:
        frame[name] = pd.array([pd.NA] * 8, dtype="Int8")
    io.write_parquet(cfg.paths.manifest, frame)
    spec = clip.prepare_base_model(cfg)
    assert spec == str(cfg.paths.clip_base) and (cfg.paths.clip_base / "config.json").is_file()
    stamp = (cfg.paths.clip_base / "model.safetensors").stat().st_mtime_ns
    assert clip.prepare_base_model(cfg) == spec
    assert (cfg.paths.clip_base / "model.safetensors").stat().st_mtime_ns == stamp  # reused
    assert clip.model_specs(cfg) == {"zero_shot": spec, "fine_tuned": str(cfg.paths.clip_finetuned)}
    assert clip.is_untrained_base(cfg)
    changed = config.load("smoke", str(tmp_path / "run"), {"clip.tiny.logit_scale_init": 30.0})
    clip.prepare_base_model(changed)
    model, _ = clip.load_clip(spec)
    assert math.isclose(model.logit_scale.exp().item(), 30.0, rel_tol=1e-5)
    hub = config.load("smoke", str(tmp_path / "run"), {"clip.model": "openai/clip-vit-base-patch32"})
    assert clip.prepare_base_model(hub) == "openai/clip-vit-base-patch32"
    assert not clip.is_untrained_base(hub)


# ---------------------------------------------------------------------------- image transforms


@pytest.mark.parametrize("shape", [(64, 64), (90, 60), (50, 120), (20, 24)])
def test_eval_transform_matches_the_processor(shape):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), "L")
    for processor in (clip.tiny_image_processor(32), CLIPImageProcessorPil()):
        expected = processor(images=img.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        got = transforms.eval_image_transform(processor)(img)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_raw_pixels_normalised_on_the_device_equal_the_eval_transform():
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8), "L") for _ in range(3)]
    for processor in (clip.tiny_image_processor(32), __import__("transformers").models.clip.image_processing_pil_clip
                      .CLIPImageProcessorPil()):
        transform = transforms.eval_image_transform(processor)
        raw = torch.stack([transform.raw(img) for img in images])
        assert raw.dtype == torch.uint8 and raw.shape[1] == 1
        assert torch.equal(transform.normalise_batch(raw), torch.stack([transform(img) for img in images]))


def test_augmentation_is_seeded_and_keeps_laterality():
    processor = clip.tiny_image_processor(32)
    transform = transforms.train_image_transform(processor, AugmentParams(rotation_deg=10, scale_min=0.8,
                                                                         brightness=0.2, contrast=0.2))
    eval_transform = transforms.eval_image_transform(processor)
    arr = np.zeros((64, 64), dtype=np.uint8)
    arr[16:48, 4:24] = 255  # bright block on the image's left
    img = Image.fromarray(arr, "L")
    first = transform(img, np.random.default_rng([0, 1, 2]))
    assert torch.equal(first, transform(img, np.random.default_rng([0, 1, 2])))
    assert not torch.equal(first, transform(img, np.random.default_rng([0, 1, 3])))
    assert not torch.equal(first, eval_transform(img))
    assert torch.equal(transform(img), eval_transform(img))  # no rng: the eval transform
    for seed in range(20):
        out = transform(img, np.random.default_rng(seed))[0]
        assert out[:, :16].mean() > out[:, 16:].mean()  # never mirrored
    assert transforms.train_image_transform(processor, AugmentParams(enabled=False)) == eval_transform


def test_batched_augmentation_matches_the_per_image_path():
    processor = clip.tiny_image_processor(32)
    transform = transforms.train_image_transform(processor, AugmentParams(rotation_deg=10, scale_min=0.8,
                                                                         brightness=0.2, contrast=0.2))
    yy, xx = np.mgrid[0:64, 0:64]
    images = [Image.fromarray((127 + 100 * np.sin(xx / (5 + i)) * np.cos(yy / (4 + i))).astype(np.uint8), "L")
              for i in range(6)]
    images.append(Image.fromarray(np.full((48, 80), 200, dtype=np.uint8), "L"))  # another size: its own group
    draws = [np.random.default_rng([0, 3, i]) for i in range(len(images))]
    batch = transform.augment_batch([transform.augment_spec(img, rng) for img, rng in zip(images, draws)])
    single = torch.stack([transform.raw(img, np.random.default_rng([0, 3, i])) for i, img in enumerate(images)])
    assert batch.dtype == torch.uint8 and batch.shape == single.shape == (7, 1, 32, 32)
    diff = (batch.float() - single.float()).abs()
    assert diff[:, :, 4:-4, 4:-4].max() <= 4  # same geometry and jitter; kernels differ slightly
    assert diff.mean() < 2
    other = transform.augment_batch([transform.augment_spec(images[0], np.random.default_rng([0, 4, 0]))])
    assert not torch.equal(other[0], batch[0])  # the draws decide the view


def test_augmentation_draws_depend_on_seed_epoch_and_row_alone(tmp_path, tiny):
    _, processor = tiny
    frame = _frame(tmp_path, n=6)
    transform = transforms.train_image_transform(processor, AugmentParams())
    a, b = (torchdata.ImageTextDataset(frame, transform, seed=3) for _ in range(2))
    first = a.draws(4, 1).copy()
    a.draws(0, 2)  # another epoch in between (a worker moves on) changes nothing
    assert np.array_equal(a.draws(4, 1), first) and np.array_equal(b.draws(4, 1), first)
    assert not np.array_equal(a.draws(4, 2), first) and not np.array_equal(a.draws(3, 1), first)
    assert not np.array_equal(torchdata.ImageTextDataset(frame, transform, seed=4).draws(4, 1), first)
    assert first.shape == (transforms.N_DRAWS,) and ((first >= 0) & (first < 1)).all()
    with pytest.raises(ValueError, match="draws must be 7 numbers"):
        transform(Image.new("L", (40, 40)), np.zeros(3))


def test_training_loader_augments_in_the_collate(tmp_path, tiny):
    _, processor = tiny
    frame = _frame(tmp_path, n=6)
    raw = torchdata.make_loader(frame, processor, 3, True, AugmentParams(), 0, 0, raw_pixels=True)
    per_item = torchdata.make_loader(frame, processor, 3, True, AugmentParams(), 0, 0)
    raw.batch_sampler.set_epoch(1)
    per_item.batch_sampler.set_epoch(1)
    for a, b in zip(raw, per_item):
        assert a["pixel_values"].dtype == torch.uint8
        got = raw.dataset.transform.normalise_batch(a["pixel_values"])
        assert got.shape == b["pixel_values"].shape
        levels = (got - b["pixel_values"]).abs() * min(raw.dataset.transform.std) * 255  # grey levels
        assert levels[:, :, 4:-4, 4:-4].mean() < 6  # the same views of white-noise images, kernels aside


# ------------------------------------------------------------------------- datasets and loaders


def _frame(tmp_path: Path, n: int = 10, bad: tuple[int, ...] = ()) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        if i in bad:
            path = tmp_path / f"bad{i}.png"
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken")
            paths.append(str(path))
        else:
            paths.append(_write_png(tmp_path / f"img{i}.png", rng.integers(0, 256, (40, 40))))
    frame = pd.DataFrame({"image_path": paths, "report": [REPORTS[i % 3] for i in range(n)]})
    frame["Pleural Effusion"] = pd.array([1 if i % 3 == 1 else pd.NA for i in range(n)], dtype="Int8")
    return frame


def test_loader_batches_tokens_groups_and_labels(tmp_path, tiny):
    _, processor = tiny
    loader = torchdata.make_loader(_frame(tmp_path), processor, batch_size=4, shuffle=False, augment=None,
                                   num_workers=0, seed=0, max_length=8)
    batches = list(loader)
    assert [b["n"] for b in batches] == [4, 4, 2]
    first = batches[0]
    assert first["pixel_values"].shape == (4, 3, 32, 32)
    assert first["input_ids"].shape[1] <= 8
    assert (first["input_ids"][:, 0] == processor.tokenizer.bos_token_id).all()
    assert first["report_group"].tolist() == [0, 1, 2, 0]
    effusion = __import__("medxpert_utils.data.labels", fromlist=["x"]).CHEXPERT_LABELS.index("Pleural Effusion")
    assert first["labels"][:, effusion].tolist() == [0, 1, 0, 0]
    assert first["index"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_kept_token_ids_equal_the_tokenizers_padded_call(tiny, side, monkeypatch):
    _, processor = tiny
    tokenizer = processor.tokenizer
    monkeypatch.setattr(tokenizer, "padding_side", side)
    collate = torchdata.ClipCollate(tokenizer, max_length=9, max_cached_texts=3)
    batches = [REPORTS[:5], ["", REPORTS[1] * 4, REPORTS[1], REPORTS[0]], [REPORTS[4]], REPORTS[2:4] * 2]
    for texts in batches:  # repeats, an empty report, one truncated at max_length, more texts than kept
        got = collate.encode(texts)
        want = tokenizer(texts, padding="longest", truncation=True, max_length=9, return_tensors="pt")
        assert got["input_ids"].dtype == want["input_ids"].dtype
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(got["attention_mask"], want["attention_mask"])
    assert len(collate._ids) == 3  # the cap holds


def test_affine_grid_by_broadcasting_equals_torchs():
    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    for height, width in ((32, 32), (24, 40), (1, 3)):
        want = torch.nn.functional.affine_grid(theta, [5, 1, height, width], align_corners=False)
        got = transforms._affine_grid(theta, height, width)
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_gone_bad_after_the_data_stage_is_one_line_naming_it(tmp_path, tiny, workers):
    from medxpert_utils.data.images import ImageChangedError

    _, processor = tiny
    frame = _frame(tmp_path, n=6, bad=(4,))
    loader = torchdata.make_loader(frame, processor, batch_size=3, shuffle=False, augment=AugmentParams(),
                                   num_workers=workers, seed=0)
    with pytest.raises(ImageChangedError) as info:
        list(loader)
    message = str(info.value)
    assert "\n" not in message and frame["image_path"].iloc[4] in message and "--force 00" in message
    with pytest.raises(ImageChangedError):
        list(torchdata.make_image_loader(frame["image_path"], processor, 2, workers))


def test_epoch_sampler_is_reproducible_resumable_and_sharded():
    sampler = torchdata.EpochBatchSampler(10, 3, shuffle=True, seed=5, drop_last=True)
    sampler.set_epoch(2)
    full = list(sampler)
    assert len(full) == 3 and all(len(b) == 3 for b in full)
    assert all(epoch == 2 for batch in full for _, epoch in batch)
    sampler.set_epoch(2, start_batch=1)
    assert list(sampler) == full[1:]
    sampler.set_epoch(3)
    assert list(sampler) != full
    shards = []
    for rank in range(2):
        shard = torchdata.EpochBatchSampler(12, 3, shuffle=True, seed=5, drop_last=True, rank=rank, world_size=2)
        shard.set_epoch(0)
        shards.append([row for batch in shard for row, _ in batch])
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1]) == 6


@pytest.mark.parametrize("raw", [False, True])  # decoded images / batch augmentation's source tensors
def test_image_cache_keeps_decoded_images_within_its_budget(tmp_path, tiny, monkeypatch, raw):
    _, processor = tiny
    frame = _frame(tmp_path, n=6, bad=())  # 40 x 40 grey PNGs: 1,600 bytes decoded
    decoded = []
    real_load = __import__("medxpert_utils.data.images", fromlist=["x"]).load_image
    monkeypatch.setattr("medxpert_utils.data.images.load_image", lambda path: decoded.append(path) or real_load(path))
    augment = AugmentParams()
    cached = torchdata.make_loader(frame, processor, 3, True, augment, 0, 0, cache_mb=3 * 1600 / 2**20, raw_pixels=raw)
    plain = torchdata.make_loader(frame, processor, 3, True, augment, 0, 0, raw_pixels=raw)
    for epoch in range(2):
        for loader in (cached, plain):
            loader.batch_sampler.set_epoch(epoch)
        got, want = list(cached), list(plain)
        for a, b in zip(got, want):  # same pixels, augmentation included
            assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["index"], b["index"])
    assert len(cached.dataset._cache) == 3 and cached.dataset._cached_bytes == 3 * 1600  # the budget holds 3
    # plain: 6 decodes per epoch; cached: 6, then the 3 images over budget
    assert len(decoded) == 2 * 6 + (6 + 3)


def test_prefetch_yields_in_order_raises_and_stops_early():
    done = prefetch.Prefetch(range(50), depth=3)
    assert list(done) == list(range(50))
    assert next(done, "end") == "end"  # asking again after the end does not hang

    def failing():
        yield 1
        raise ValueError("bad batch")

    it = prefetch.Prefetch(failing())
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad batch"):
        next(it)
    produced = []

    def counting():
        for i in range(1000):
            produced.append(i)
            yield i

    with prefetch.Prefetch(counting(), depth=2) as early:
        assert next(early) == 0
    assert len(produced) <= 4 and not early._thread.is_alive()  # stopped soon after close


def test_prefetch_thread_runs_torch_ops_on_one_thread_and_leaves_the_callers_alone():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = list(prefetch.Prefetch(torch.get_num_threads() for _ in range(3)))
        assert seen == [1, 1, 1]  # no second OpenMP team beside the model's
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
