"""One grey conversion and one 16-bit scaling for every way an image comes in (data.pixels)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from medxpert_utils.assistant import QueryImage
from medxpert_utils.data import images, pixels
from medxpert_utils.retrieval.search import to_image
from medxpert_utils.viz.html import png_bytes
from tests.data.test_images import RAMP, make_dicom


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_colour_pixel_is_the_same_grey_from_a_file_an_image_and_an_array():
    """(200, 40, 10): 84 by ITU-R 601-2 luma (PIL's "L"), the way files always went; a plain channel mean
    would give 83."""
    arr = np.zeros((4, 6, 3), np.uint8)
    arr[...] = (200, 40, 10)
    arr[0, 0] = (10, 200, 40)
    rgba = np.concatenate([arr, np.full((4, 6, 1), 255, np.uint8)], axis=-1)
    from_file = np.asarray(images.load_image(_png(Image.fromarray(arr, "RGB"))))
    assert from_file[1, 1] == 84
    for source in (arr, rgba, Image.fromarray(arr, "RGB"), Image.fromarray(rgba, "RGBA")):
        assert np.array_equal(np.asarray(to_image(source)), from_file)
        assert np.array_equal(np.asarray(QueryImage.of(source).image), from_file)
    assert np.array_equal(np.asarray(QueryImage.of(_png(Image.fromarray(arr, "RGB"))).image), from_file)


def test_transparency_is_flattened_on_white_for_arrays_files_and_images():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(images.load_image(_png(rgba))).min() == 255
    assert np.asarray(to_image(rgba)).min() == 255


def test_sixteen_bit_pixels_go_through_one_scaling_whatever_the_path(monkeypatch):
    """DICOM, a 16-bit PNG, a 16-bit PIL image or array handed to the search and the display PNG all scale
    with data.pixels.scale_to_uint8 (the same function object wherever it is imported)."""
    assert images.scale_to_uint8 is pixels.scale_to_uint8
    calls = []
    real = pixels.scale_to_uint8

    def counting(arr, lo=None, hi=None):
        calls.append(np.shape(arr))
        return real(arr, lo, hi)

    monkeypatch.setattr(pixels, "scale_to_uint8", counting)
    monkeypatch.setattr(images, "scale_to_uint8", counting)
    wide = np.tile(np.linspace(1000, 5000, 50).astype(np.uint16), (4, 1))
    paths = {
        "dicom": lambda: images.load_image(make_dicom(RAMP)),
        "png16": lambda: images.load_image(_png(Image.fromarray(wide))),
        "array": lambda: to_image(wide),
        "pil16": lambda: to_image(Image.fromarray(wide.astype(np.int32), mode="I")),
        "display": lambda: Image.open(io.BytesIO(png_bytes(Image.fromarray(wide)))),
    }
    results = {}
    for name, load in paths.items():
        before = len(calls)
        results[name] = np.asarray(load())
        assert len(calls) == before + 1, f"{name} did not scale with scale_to_uint8"
    assert results["png16"].max() == 255 and results["png16"].min() == 0
    for name in ("array", "pil16", "display"):
        assert np.array_equal(results[name], results["png16"]), name


@pytest.mark.parametrize("arr, expected", [
    (np.array([[0, 2048, 4095]], np.uint16), [[0, 128, 255]]),
    (np.array([[0.0, np.nan, 1.0]]), [[0, 0, 255]]),  # NaN is black, not undefined
    (np.full((2, 2), 1000, np.uint16), [[249, 249], [249, 249]]),  # flat: grey by its bit depth (1000/1023)
])
def test_scale_to_uint8(arr, expected):
    assert pixels.scale_to_uint8(arr).tolist() == expected
