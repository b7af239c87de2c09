import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from training.data.transforms import (CifarEval, CifarTrain, PaperScaleAugment, RandomResizedCrop,
                                 ResizeCenterCrop, build_transform, dct_scale, decode_rgb,
                                 normalize, shift)
from training.data.transforms import _resized


def photo(w=500, h=375, fmt="JPEG") -> bytes:
    """A smooth gradient photo-like JPEG (so a center crop is checkable by colour)."""
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), 128.0)], axis=2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, quality=90)
    return buf.getvalue()


def lazy(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize("t", [RandomResizedCrop(224), PaperScaleAugment(224),
                               ResizeCenterCrop(224), CifarTrain(32)])
def test_outputs_are_uint8_chw_of_the_crop_size(t):
    random.seed(0)
    out = t(photo())
    size = 32 if isinstance(t, CifarTrain) else 224
    assert out.dtype == torch.uint8 and out.shape == (3, size, size)


def test_center_crop_is_centered():
    out = ResizeCenterCrop(224)(photo())
    # Red grows left to right, green top to bottom: the center pixel is mid-range in both.
    r, g = out[0, 112, 112].item(), out[1, 112, 112].item()
    assert abs(r - 128) < 12 and abs(g - 128) < 12


def test_ten_crop_stacks_corners_center_and_mirrors():
    out = ResizeCenterCrop(224, crops=10)(photo())
    assert out.shape == (10, 3, 224, 224)
    torch.testing.assert_close(out[5], out[0].flip(-1))
    assert out[0][0].float().mean() < out[1][0].float().mean()  # left corner redder less
    data = photo()
    out = ResizeCenterCrop(224, crops=10)(data)
    for i, (x, y) in enumerate([(0, 0), (341 - 224, 0), (0, 256 - 224), (341 - 224, 256 - 224)]):
        assert (out[i].int() - resize_then_crop(data, 256, x, y, 224).int()).abs().float().mean() < 1.5
    assert (out[4].int() - ResizeCenterCrop(224)(data).int()).abs().float().mean() < 1.5


def test_paper_scale_augment_is_reproducible_under_a_seed_of_random_alone():
    # The loader seeds only the `random` module per sample; numpy's state must not matter.
    def run(numpy_seed):
        random.seed(3)
        np.random.seed(numpy_seed)
        return PaperScaleAugment(224)(photo())

    torch.testing.assert_close(run(1), run(2), rtol=0, atol=0)
    random.seed(4)
    assert not torch.equal(PaperScaleAugment(224)(photo()), run(1))


def resize_then_crop(data, shorter, x, y, size):
    """The recipes' reference: PIL resizes the whole image, then crops."""
    img = lazy(data).convert("RGB")
    k = shorter / min(img.size)
    w, h = max(size, round(img.size[0] * k)), max(size, round(img.size[1] * k))
    crop = img.resize((w, h), Image.Resampling.BILINEAR).crop((x, y, x + size, y + size))
    return torch.from_numpy(np.array(crop)).permute(2, 0, 1)


@pytest.mark.parametrize("seed", range(4))
def test_paper_scale_augment_crops_the_resized_image(seed, monkeypatch):
    """Cropping first, then resizing only the box, gives the crop of the resized image."""
    t = PaperScaleAugment(224)
    monkeypatch.setattr(t, "lighting", lambda x: x)
    data = photo()
    random.seed(seed)
    out = t(data)
    random.seed(seed)
    shorter = random.randint(*t.range)
    k = shorter / 375
    w, h = round(500 * k), round(375 * k)
    x, y = random.randint(0, w - 224), random.randint(0, h - 224)
    ref = resize_then_crop(data, shorter, x, y, 224)
    ref = ref.flip(-1) if random.random() < 0.5 else ref
    assert (out.int() - ref.int()).abs().float().mean() < 1.5


def test_center_crop_is_the_crop_of_the_resized_image():
    data = photo()
    ref = resize_then_crop(data, 256, (341 - 224) // 2, (256 - 224) // 2, 224)
    assert (ResizeCenterCrop(224)(data).int() - ref.int()).abs().float().mean() < 1.5


def test_build_transform_rejects_unknown_recipes():
    with pytest.raises(ValueError, match="cifar, imagenet, imagenet_paper"):
        build_transform("autoaugment", 224, train=True)
    with pytest.raises(ValueError, match="1 or 10"):
        build_transform("imagenet", 224, train=False, eval_crops=5)


def test_normalize_subtracts_the_mean():
    x = torch.full((1, 3, 2, 2), 124, dtype=torch.uint8)
    assert normalize(x)[0, 0].abs().max() < 0.02


def small_jpeg(size=16, seed=0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_decode_rgb_matches_pil_and_reads_other_formats():
    data = small_jpeg()
    pil = torch.from_numpy(np.array(lazy(data).convert("RGB"))).permute(2, 0, 1)
    # Two libjpeg builds may differ by a rounding step in the colour conversion.
    assert (decode_rgb(data).int() - pil.int()).abs().max() <= 2
    gray = io.BytesIO()
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(gray, "PNG")
    out = decode_rgb(gray.getvalue())
    assert out.shape == (3, 8, 8) and out.unique().tolist() == [200]


def test_decode_rgb_gives_torchvisions_pixels_with_the_extension_and_pils_without(monkeypatch):
    from torchvision.io import ImageReadMode, decode_jpeg

    from training.data import transforms

    samples = (small_jpeg(16, 1), small_jpeg(32, 2), photo(333, 201))
    if transforms._jpegroi is not None:
        for data in samples:
            want = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                               mode=ImageReadMode.RGB)
            assert decode_rgb(data).equal(want)
    monkeypatch.setattr(transforms, "_jpegroi", None)
    for data in samples:
        pil = torch.from_numpy(np.array(lazy(data).convert("RGB"))).permute(2, 0, 1)
        assert decode_rgb(data).equal(pil)


def test_workers_start_without_importing_torchvision():
    # torchvision's import pulls in torch._dynamo: seconds of start-up in every Ray Train
    # worker, for a decoder the extension replaces.
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, training.ray_worker, training.loop; "
            "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("data", [small_jpeg()[:100], b"\xff\xd8garbage", b"not an image"])
def test_decode_rgb_raises_on_bad_bytes(data):
    with pytest.raises(Exception):
        decode_rgb(data)


@pytest.mark.parametrize("dx,dy", [(0, 0), (2, -1), (-2, 2), (4, 4), (-4, -4), (9, 0)])
def test_shift_is_pad_then_crop(dx, dy):
    x = torch.randint(1, 255, (3, 8, 8), dtype=torch.uint8)
    # Reference: zero-pad by 9 and take the window that moves the image by (dx, dy).
    padded = torch.zeros(3, 26, 26, dtype=torch.uint8)
    padded[:, 9:17, 9:17] = x
    want = padded[:, 9 - dy:17 - dy, 9 - dx:17 - dx]
    torch.testing.assert_close(shift(x, dx, dy), want)


def test_cifar_train_shifts_and_flips_under_the_seed():
    data = small_jpeg()
    random.seed(5)
    out = CifarTrain(16)(data)
    random.seed(5)
    dx, dy = random.randint(-2, 2), random.randint(-2, 2)
    flipped = random.random() < 0.5
    base = decode_rgb(data)
    want = shift(base.flip(-1) if flipped else base, dx, dy)
    torch.testing.assert_close(out, want)
    assert CifarEval(16)(data).equal(base) and CifarEval(8)(data).shape == (3, 8, 8)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_resized_crop_matches_pils_resize_of_the_same_box(seed):
    data = photo()
    random.seed(seed)
    out = RandomResizedCrop(224)(data)
    random.seed(seed)
    x, y, w, h = RandomResizedCrop(224).params(500, 375)
    flipped = random.random() < 0.5
    img = lazy(data)
    denom = dct_scale(500, 375, w, h, 224)
    img.draft("RGB", (500 // denom, 375 // denom))
    s = 1 / denom
    box = (int(x * s), int(y * s), round((x + w) * s), round((y + h) * s))
    ref = torch.from_numpy(np.array(img.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR,
                                                              box=box))).permute(2, 0, 1)
    ref = ref.flip(-1) if flipped else ref
    assert (out.int() - ref.int()).abs().float().mean() < 1.0


def test_resize_of_hwc_memory_keeps_it_channels_last_and_matches_a_copy():
    # A CHW view of HWC memory, as the decoders return: resized through torch's channels_last
    # uint8 kernel (twice as fast), with the same pixels as a contiguous copy's resize.
    hwc = torch.randint(0, 256, (75, 90, 3), dtype=torch.uint8)
    view = hwc.permute(2, 0, 1)
    out = _resized(view, 224)
    assert out.shape == (3, 224, 224) and out.stride() == (1, 224 * 3, 3)
    ref = torch.nn.functional.interpolate(view.contiguous()[None].float(), size=(224, 224),
                                          mode="bilinear", antialias=True)[0]
    assert (out.float() - ref).abs().max() <= 1
    assert _resized(view.contiguous(), 224).equal(out)


@pytest.mark.parametrize("size", [(224, 224), (60, 80)])
def test_the_resize_is_f_interpolates(size):
    hwc = torch.randint(0, 256, (75, 90, 3), dtype=torch.uint8)
    ref = torch.nn.functional.interpolate(hwc.permute(2, 0, 1)[None], size=size, mode="bilinear",
                                          antialias=True, align_corners=False)[0]
    assert _resized(hwc.permute(2, 0, 1), size).equal(ref)
