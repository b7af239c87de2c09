"""Region-of-interest JPEG decoding (training/data/_jpegroi.c) against PIL's full decode.

The extension must give exactly PIL's pixels for any box, at any DCT scale, for baseline and
progressive files, 4:4:4 and 4:2:0 chroma, colour and grayscale; reject what PIL rejects; and
leave CMYK to PIL. The transforms built on it must not depend on whether it is there.
"""

import io
import math
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import transforms
from training.data.transforms import (PaperScaleAugment, RandomResizedCrop, ResizeCenterCrop,
                                 dct_scale, decode_box, decode_rgb)


def textured(w=500, h=375, mode="RGB", seed=0, **save) -> bytes:
    """Gradients plus noise: chroma changes from pixel to pixel, which shows any edge error of
    the upsampling at a crop's border."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 0.5, yy * 0.6, (xx + yy) * 0.3], -1) + rng.normal(0, 30, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).convert(mode).save(buf, "JPEG", **save)
    return buf.getvalue()


def pil_pixels(data: bytes, denom: int) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (image.size[0] // denom, image.size[1] // denom))
    return np.asarray(image.convert("RGB"))


def roi(data: bytes, box, denom: int) -> np.ndarray:
    pixels, w, h = transforms._jpegroi.decode(data, *box, denom)
    return np.frombuffer(pixels, np.uint8).reshape(h, w, 3)


# The extension is optional: without a compiler or libjpeg's headers the install goes on and the
# loader decodes with PIL; the tests of the extension itself are then skipped, with the reason.
needs_extension = pytest.mark.skipif(
    transforms._jpegroi is None,
    reason="depthlab_jpegroi is not built here (it needs gcc and libjpeg-dev); the loader decodes with PIL")


@pytest.mark.skipif(not os.environ.get("DEPTHLAB_REQUIRE_JPEGROI"),
                    reason="only where the extension must be there (CI sets DEPTHLAB_REQUIRE_JPEGROI)")
def test_the_extension_is_built():
    # Built by `make setup` (pip install -e .) against the system's libjpeg-turbo headers
    # (Debian/Ubuntu: libjpeg-dev).
    assert transforms._jpegroi is not None, "training/data/_jpegroi.c was not built: install libjpeg-dev"


FILES = {
    "baseline 4:2:0": dict(quality=90, subsampling=2),
    "baseline 4:4:4": dict(quality=90, subsampling=0),
    "progressive 4:2:0": dict(quality=85, subsampling=2, progressive=True),
    "grayscale": dict(quality=90, mode="L"),
    "odd size": dict(quality=90, subsampling=2, w=333, h=201),
}


@needs_extension
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("denom", [1, 2, 8])
def test_any_box_has_exactly_pils_pixels(name, denom):
    save = dict(FILES[name])
    data = textured(save.pop("w", 500), save.pop("h", 375), save.pop("mode", "RGB"), **save)
    full = pil_pixels(data, denom)
    height, width = full.shape[:2]
    rng = random.Random(denom)
    boxes = [(0, 0, width, height), (width - 1, height - 1, width, height)]
    for _ in range(40):
        left, top = rng.randrange(width - 1), rng.randrange(height - 1)
        boxes.append((left, top, rng.randrange(left + 1, width + 1), rng.randrange(top + 1, height + 1)))
    for left, top, right, bottom in boxes:
        np.testing.assert_array_equal(roi(data, (left, top, right, bottom), denom),
                                      full[top:bottom, left:right], err_msg=str((left, top, right, bottom)))


@needs_extension
def test_a_box_past_the_edge_is_clipped_and_an_empty_one_refused():
    data = textured()
    assert roi(data, (400, 300, 9999, 9999), 1).shape == (75, 100, 3)
    with pytest.raises(ValueError, match="empty region"):
        roi(data, (600, 0, 700, 10), 1)
    with pytest.raises(ValueError, match="denominator"):
        roi(data, (0, 0, 10, 10), 3)


@needs_extension
@pytest.mark.parametrize("bad", [b"", b"\xff\xd8 not a jpeg", b"GIF89a"])
def test_bad_bytes_raise_value_error(bad):
    with pytest.raises(ValueError, match="bad JPEG"):
        transforms._jpegroi.decode(bad, 0, 0, 10, 10, 1)
    with pytest.raises(ValueError, match="bad JPEG"):
        transforms._jpegroi.size(bad)


@needs_extension
def test_a_truncated_file_fails_where_its_pixels_are_missing():
    data = textured()
    cut = data[: len(data) // 2]
    with pytest.raises(ValueError, match="bad JPEG"):  # PIL raises too ("truncated")
        roi(cut, (0, 0, 500, 375), 1)
    with pytest.raises(OSError):
        pil_pixels(cut, 1)
    # The rows the file still holds are intact: a box above the cut decodes like the full file.
    np.testing.assert_array_equal(roi(cut, (0, 0, 500, 40), 1), pil_pixels(data, 1)[:40])


@needs_extension
def test_cmyk_is_left_to_pil():
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 80, 3), 90, np.uint8)).convert("CMYK").save(buf, "JPEG")
    with pytest.raises(NotImplementedError):
        transforms._jpegroi.decode(buf.getvalue(), 0, 0, 10, 10, 1)
    out = decode_box(buf.getvalue(), (80, 64), (8, 4, 40, 30), 16)
    whole = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), whole[4:34, 8:48])
    # The CIFAR recipe's whole-image decode takes the same way round.
    np.testing.assert_array_equal(decode_rgb(buf.getvalue()).permute(1, 2, 0).numpy(), whole)


@pytest.mark.parametrize("box", [(0, 0, 500, 375), (10, 20, 300, 200), (100, 50, 60, 60)])
@pytest.mark.parametrize("keep", [16, 56, 112, 224])
def test_dct_scale_is_the_one_pil_draft_picks(box, keep):
    """The largest reduction that still keeps ``keep`` pixels across the box: PIL's own choice
    when asked for the image at that many pixels."""
    x, y, w, h = box
    image = Image.open(io.BytesIO(textured()))
    image.draft("RGB", (math.ceil(500 * keep / w), math.ceil(375 * keep / h)))
    assert dct_scale(500, 375, w, h, keep) == round(500 / image.size[0])


@pytest.mark.parametrize("make", [lambda: RandomResizedCrop(224), lambda: RandomResizedCrop(56),
                                  lambda: PaperScaleAugment(224), lambda: ResizeCenterCrop(224),
                                  lambda: ResizeCenterCrop(64)])
def test_transforms_give_the_same_tensors_without_the_extension(make, monkeypatch):
    data, t = textured(), make()
    outs = []
    for ext in (transforms._jpegroi, None):
        monkeypatch.setattr(transforms, "_jpegroi", ext)
        random.seed(7)
        outs.append(torch.stack([t(data) for _ in range(5)]))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_a_decompression_bomb_is_refused_as_pil_refuses_it(monkeypatch):
    data = textured(64, 48)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for ext in (transforms._jpegroi, None):
        monkeypatch.setattr(transforms, "_jpegroi", ext)
        with pytest.raises(Image.DecompressionBombError):
            RandomResizedCrop(16)(data)
