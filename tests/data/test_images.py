"""Image loading: PNG/JPEG 8/16-bit, RGB, DICOM (LUTs, MONOCHROME1, no patient tags) and bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from medxpert_utils.core.errors import ImageLoadError, UserError
from medxpert_utils.data.images import (
    ImageChangedError,
    image_problem,
    is_dicom,
    load_image,
    load_manifest_image,
    read_dicom_pixels,
    to_rgb,
    verify_image,
)

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "SECRET-4711"


def png_bytes(arr: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return buffer.getvalue()


def make_dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", window: tuple[float, float] | None = None,
               rescale: tuple[float, float] | None = None, preamble: bool = True, with_pixels: bool = True) -> bytes:
    """A minimal DX DICOM with a fake patient, built with pydicom's Dataset and FileMetaDataset."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if with_pixels:
        ds.PixelData = pixels.astype("<u2").tobytes()
    buffer = io.BytesIO()
    if preamble:
        ds.save_as(buffer, enforce_file_format=True)
    else:
        ds.save_as(buffer, enforce_file_format=False, implicit_vr=False, little_endian=True)
    data = buffer.getvalue()
    assert (data[128:132] == b"DICM") == preamble
    return data


RAMP = np.tile(np.linspace(0, 4095, 64).round().astype(np.uint16), (8, 1))


def test_png_8bit_roundtrip_and_sources(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    data = png_bytes(arr)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    for source in (path, str(path), data, io.BytesIO(data)):
        img = load_image(source)
        assert img.mode == "L" and img.size == (30, 20)
        assert np.array_equal(np.asarray(img), arr)


def test_png_16bit_scaled_by_range_not_clipped():
    arr = np.tile(np.linspace(1000, 5000, 50).astype(np.uint16), (4, 1))
    data = png_bytes(arr)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(load_image(data)).astype(int)
    assert out.min() == 0 and out.max() == 255
    assert (np.diff(out[0]) >= 0).all()  # order kept
    assert (out == 255).mean() < 0.05  # not clipped to white
    expected = np.rint((arr.astype(float) - 1000) / 4000 * 255)
    assert np.abs(out - expected).max() <= 1


def test_jpeg_and_rgb_to_gray():
    arr = np.full((16, 16, 3), 0, np.uint8)
    arr[:8] = (255, 0, 0)
    arr[8:] = (0, 0, 255)
    red_blue = np.asarray(load_image(png_bytes(arr)))
    assert red_blue.dtype == np.uint8 and red_blue.ndim == 2
    assert abs(int(red_blue[0, 0]) - 76) <= 1 and abs(int(red_blue[-1, 0]) - 29) <= 1  # ITU-R 601 luma

    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="JPEG", quality=95)
    img = load_image(buffer.getvalue(), name="x.jpg")
    assert img.mode == "L"
    assert np.abs(np.asarray(img).astype(int) - gray).mean() < 3


def test_to_rgb_replicates_gray():
    img = to_rgb(Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)))
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (3, 4, 3)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_dicom_monochrome1_is_inverted_and_no_patient_tags(tmp_path):
    mono2 = make_dicom(RAMP, "MONOCHROME2")
    mono1 = make_dicom(RAMP, "MONOCHROME1")
    path = tmp_path / "scan.bin"  # detected by the preamble, whatever the suffix
    path.write_bytes(mono1)
    assert is_dicom(mono2) and is_dicom(path) and not is_dicom(png_bytes(RAMP[:, :4].astype(np.uint8)))
    a2 = np.asarray(load_image(mono2))
    a1 = np.asarray(load_image(path))
    assert a2[0, 0] == 0 and a2[0, -1] == 255  # low values dark in MONOCHROME2
    assert np.array_equal(a1, 255 - a2)  # MONOCHROME1: low values are white, so inverted

    img = load_image(mono2)
    pixels = read_dicom_pixels(mono2)
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.shape == RAMP.shape
    leaked = repr(img.info) + repr(getattr(img, "text", {})) + repr(vars(img))
    for secret in (PATIENT_NAME, "Doe", PATIENT_ID, "19700101"):
        assert secret not in leaked
    saved = io.BytesIO()
    img.save(saved, format="PNG")
    assert PATIENT_ID.encode() not in saved.getvalue() and b"Doe" not in saved.getvalue()


def test_dicom_voi_window_and_rescale_applied():
    plain = np.asarray(load_image(make_dicom(RAMP))).astype(int)
    windowed = np.asarray(load_image(make_dicom(RAMP, window=(2048, 1024)))).astype(int)
    row, values = windowed[0], RAMP[0].astype(float)
    assert (row[values < 1536] == 0).all() and (row[values > 2560] == 255).all()
    inside = (values > 1600) & (values < 2500)
    assert 0 < row[inside].min() and row[inside].max() < 255
    assert not np.array_equal(windowed, plain)  # the window changes contrast vs a plain range map
    # Window in rescaled units: value*2 - 1000 -> the same window at stored value 1524 +- 256.
    rescaled = np.asarray(load_image(make_dicom(RAMP, window=(2048, 1024), rescale=(2.0, -1000.0))))[0].astype(int)
    assert (rescaled[values < 1268] == 0).all() and (rescaled[values > 1780] == 255).all()


def test_dicom_by_suffix_without_preamble(tmp_path):
    data = make_dicom(RAMP, preamble=False)
    path = tmp_path / "raw.dcm"
    path.write_bytes(data)
    assert not is_dicom(data) and is_dicom(path)
    assert np.asarray(load_image(path)).max() == 255
    assert np.asarray(load_image(data, name="upload.dcm")).max() == 255
    assert np.asarray(load_image(data, name="upload.dicom")).max() == 255


def test_dicom_without_pixels_fails_without_leaking_tags():
    with pytest.raises(ImageLoadError) as info:
        load_image(make_dicom(RAMP, with_pixels=False), name="header_only.dcm")
    message = str(info.value)
    assert "header_only.dcm" in message and "no pixel data" in message
    assert "Doe" not in message and PATIENT_ID not in message


def _bad_files() -> dict[str, bytes]:
    good = png_bytes(np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8))
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2: len(corrupt) // 2 + 16] = b"\x00" * 16
    return {
        "corrupt.png": bytes(corrupt),
        "truncated.png": good[: len(good) // 2],
        "notes.png": b"patient notes, not an image\n" * 4,
        "empty.png": b"",
        "random.jpg": bytes(np.random.default_rng(2).integers(0, 256, 500, dtype=np.uint8)),
    }


@pytest.mark.parametrize("name", sorted(_bad_files()))
def test_bad_files_raise_one_line_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(_bad_files()[name])
    for call in (lambda: load_image(path), lambda: verify_image(path)):
        with pytest.raises(ImageLoadError) as info:
            call()
        message = str(info.value)
        assert name in message and "\n" not in message and message.startswith("cannot read image")
        assert isinstance(info.value, UserError)


def test_truncated_jpeg_caught_by_quick_check(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[:-40])
    with pytest.raises(ImageLoadError, match="truncated or corrupt JPEG"):
        verify_image(path)
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(path)


def test_missing_file_and_size_limit(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "nope.png")
    data = png_bytes(np.zeros((64, 64), np.uint8) + 7)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    for source in (path, data, io.BytesIO(data)):
        with pytest.raises(ImageLoadError, match="too large"):
            load_image(source, name="big.png", max_bytes=len(data) - 1)
    assert load_image(path, max_bytes=len(data)).size == (64, 64)


@pytest.mark.parametrize("name", sorted(_bad_files()))
def test_problem_is_the_message_without_name_or_fix(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(_bad_files()[name])
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    problem = image_problem(info.value)
    assert problem and str(path) not in problem and " - " not in problem
    assert str(info.value) == f"cannot read image '{path}': {problem} - " + str(info.value).split(" - ", 1)[1]
    assert image_problem(ImageLoadError("cannot read image 'x.png': empty file - fix it")) == "empty file"


def test_manifest_image_that_changed_is_one_line_saying_to_rebuild(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(np.full((8, 8), 9, np.uint8)))
    assert np.asarray(load_manifest_image(path)).max() == 9
    path.write_bytes(png_bytes(np.full((8, 8), 9, np.uint8))[:-30])
    with pytest.raises(ImageChangedError) as info:
        load_manifest_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: truncated or corrupt PNG") and "\n" not in message
    assert message.endswith("the image changed after the data stage built the manifest; "
                            "rerun 00_data_prep (./run_all.sh --force 00)")
    assert isinstance(info.value, ImageLoadError) and isinstance(info.value, UserError)
    path.unlink()
    with pytest.raises(ImageChangedError, match="x.png: file not found - the image changed"):
        load_manifest_image(path)
