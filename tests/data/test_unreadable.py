"""Unreadable images: found once by the data stage (full decode), kept in the manifest with their reason and
left out downstream; an image that goes bad after the data stage stops every loader with one line."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from medxpert_utils.core import config
from medxpert_utils.core import io as core_io
from medxpert_utils.core.config import TinyClipParams
from medxpert_utils.data import assemble
from medxpert_utils.data import manifest as mf
from medxpert_utils.data.images import ImageChangedError, load_image, load_manifest_image, verify_image
from medxpert_utils.data.loading import datasets as torchdata
from medxpert_utils.data.loading.transforms import eval_image_transform

REPORTS = ["No acute cardiopulmonary process.", "Small left pleural effusion.", "Mild cardiomegaly.",
           "Right upper lobe pneumonia.", "Moderate right pneumothorax.", "Lungs are clear."]
TINY = TinyClipParams(image_size=32, patch_size=8, hidden_size=32, vision_layers=1, text_layers=1, heads=2,
                      projection_dim=32, vocab_size=300, max_length=32, logit_scale_init=20.0)


def png(seed: int, size: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size)).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def garbage_jpeg() -> bytes:
    """A JPEG whose headers and end-of-image marker are intact but whose entropy-coded data is random bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    noise = np.random.default_rng(7).integers(0, 256, len(data) - start - 2, dtype=np.uint8).tobytes()
    return data[:start] + noise + b"\xff\xd9"


def age(path: Path, seconds: float = 60.0) -> None:
    """Date a file back, as a dataset on disk is (fresh files are not cached: see core.hashing)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def dataset(tmp_path) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Raw rows of 8 images over 5 patients: 6 readable PNGs, a truncated PNG and a garbage JPEG."""
    folder = tmp_path / "images"
    folder.mkdir()
    files = {f"ok{i}.png": png(i) for i in range(6)}
    files["truncated.png"] = png(99)[:-40]
    files["garbage.jpg"] = garbage_jpeg()
    paths = {}
    for name, data in files.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
        age(paths[name])
    patients = {"ok0.png": "P0", "ok1.png": "P0", "ok2.png": "P1", "ok3.png": "P2", "ok4.png": "P3",
                "ok5.png": "P3", "truncated.png": "P1", "garbage.jpg": "P9"}  # P9 has no readable image
    frame = pd.DataFrame({
        "study_id": [f"s{i}" for i in range(len(files))],
        "patient_id": [patients[name] for name in files],
        "findings": [REPORTS[i % len(REPORTS)] for i in range(len(files))],
        "impression": "",
        "image_path": [str(paths[name]) for name in files],
    })
    return frame, paths


def build(frame: pd.DataFrame, tmp_path: Path) -> tuple[pd.DataFrame, dict]:
    cfg = config.load("params/demo.yaml", run=str(tmp_path / "run"),
                      overrides={"data.split": {"train": 0.5, "val": 0.25, "test": 0.25}})
    return assemble.finish(frame, cfg, assemble.BuildStats("csv"), progress=False)


def test_the_quick_check_passed_the_garbage_jpeg_the_full_decode_does_not(tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(garbage_jpeg())
    verify_image(path)  # header and end marker intact: the old check let it through
    with pytest.raises(Exception, match="truncated or corrupt JPEG"):
        load_image(path)


def test_unreadable_rows_are_kept_with_their_reason_and_left_out_downstream(tmp_path, dataset):
    raw, paths = dataset
    frame, stats = build(raw, tmp_path)
    assert len(frame) == 8 and list(frame.columns[:len(mf.MANIFEST_COLUMNS)]) == mf.MANIFEST_COLUMNS
    by_name = frame.set_index(frame["image_path"].map(lambda p: Path(p).name))
    assert by_name.loc["truncated.png", "unreadable"].startswith("truncated or corrupt PNG")
    assert by_name.loc["garbage.jpg", "unreadable"].startswith("truncated or corrupt JPEG")
    assert (by_name.drop(index=["truncated.png", "garbage.jpg"])["unreadable"] == "").all()
    for name, path in paths.items():  # every file's bytes hashed, readable or not
        assert by_name.loc[name, "image_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    assert stats["n_rows"] == 6 and stats["n_unreadable"] == 2 and stats["n_skipped"] == 2
    assert stats["skipped_by_reason"] == {"unreadable image: truncated or corrupt PNG": 1,
                                          "unreadable image: truncated or corrupt JPEG": 1}
    assert sum(stats["splits"].values()) == 6
    assert any(e.startswith("garbage.jpg: truncated or corrupt JPEG") for e in stats["skipped_examples"])
    assert by_name.loc["truncated.png", "split"] == by_name.loc["ok2.png", "split"]  # with its patient (P1)

    run_manifest = tmp_path / "run" / "data" / "manifest.parquet"
    core_io.write_parquet(run_manifest, frame)
    usable = mf.read(run_manifest)
    assert sorted(Path(p).name for p in usable["image_path"]) == [f"ok{i}.png" for i in range(6)]
    assert len(mf.read(run_manifest, include_unreadable=True)) == 8

    # Split and labels of the readable rows are those of a dataset without the bad images.
    clean, _ = build(raw[~raw["image_path"].str.contains("truncated|garbage")].reset_index(drop=True), tmp_path)
    pd.testing.assert_frame_equal(usable.drop(columns=mf.IMAGE_COLUMNS), clean.drop(columns=mf.IMAGE_COLUMNS))


def test_a_rebuild_over_unchanged_files_decodes_only_the_unreadable_ones(tmp_path, dataset, monkeypatch):
    raw, paths = dataset
    first, _ = build(raw, tmp_path)
    decoded: list[str] = []
    real = assemble.load_image
    monkeypatch.setattr(assemble, "load_image", lambda data, name: decoded.append(Path(name).name) or real(data, name))
    again, stats = build(raw, tmp_path)
    pd.testing.assert_frame_equal(first, again)
    assert sorted(decoded) == ["garbage.jpg", "truncated.png"]  # cached verdicts: readable files are not read
    assert stats["n_unreadable"] == 2

    paths["ok3.png"].write_bytes(png(33))  # a changed file is read and decoded again
    age(paths["ok3.png"], 30)
    decoded.clear()
    third, _ = build(raw, tmp_path)
    assert sorted(decoded) == ["garbage.jpg", "ok3.png", "truncated.png"]
    row = int(np.flatnonzero(third["image_path"].str.endswith("ok3.png"))[0])
    assert third.loc[row, "image_sha256"] == hashlib.sha256(png(33)).hexdigest() != first.loc[row, "image_sha256"]
    assert mf.content_hash(third) != mf.content_hash(first)  # the pixels are part of the data hash


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from medxpert_utils.models import clip

    folder = clip.build_tiny_clip(TINY, REPORTS * 4, tmp_path_factory.mktemp("clip") / "tiny", seed=0)
    return clip.load_clip(folder, "cpu")[1]


def assert_one_line_naming(error: pytest.ExceptionInfo, path: Path) -> None:
    message = str(error.value)
    assert error.type is ImageChangedError and "\n" not in message
    assert message.startswith(f"{path}: ") and "changed after the data stage built the manifest" in message
    assert "rerun 00_data_prep (./run_all.sh --force 00)" in message


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_that_goes_bad_after_the_build_stops_every_loader_with_one_line(tmp_path, dataset, processor,
                                                                                  workers):
    raw, paths = dataset
    frame, _ = build(raw, tmp_path)
    usable = mf.readable(frame)
    broken = paths["ok4.png"]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"overwritten" * 10)

    with pytest.raises(ImageChangedError) as error:
        load_manifest_image(broken)
    assert_one_line_naming(error, broken)

    loader = torchdata.make_loader(usable, processor, batch_size=2, shuffle=False, augment=None, num_workers=workers,
                                   seed=0)
    loader.batch_sampler.set_epoch(0)
    with pytest.raises(ImageChangedError) as error:
        list(loader)
    assert_one_line_naming(error, broken)

    images = torchdata.make_image_loader(usable["image_path"], processor, batch_size=2, num_workers=workers)
    with pytest.raises(ImageChangedError) as error:
        list(images)
    assert_one_line_naming(error, broken)

    # A DataLoader built elsewhere: raise_image_error turns a worker's failure batch into the same error.
    plain = DataLoader(torchdata.ImageDataset(usable["image_path"], eval_image_transform(processor)), batch_size=2,
                       num_workers=workers, collate_fn=torchdata.collate_images)
    with pytest.raises(ImageChangedError) as error:
        for batch in plain:
            torchdata.raise_image_error(batch)
    assert_one_line_naming(error, broken)


def test_readable_images_load_and_batches_count_no_skips(tmp_path, dataset, processor):
    raw, _ = dataset
    usable = mf.readable(build(raw, tmp_path)[0])
    loader = torchdata.make_loader(usable, processor, batch_size=4, shuffle=False, augment=None, num_workers=1, seed=0)
    loader.batch_sampler.set_epoch(0)
    batches = list(loader)
    assert [b["n"] for b in batches] == [4, 2] and all(b["n_skipped"] == 0 for b in batches)
    assert batches[0]["pixel_values"].shape == (4, 3, 32, 32)
