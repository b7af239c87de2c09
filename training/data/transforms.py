"""Decoding and augmentation: the encoded image bytes in, uint8 CHW tensor(s) out.

Each transform decodes the bytes itself, the way that suits its images:
- the ImageNet recipes crop, then resize: they decode only the box they keep (``decode_box``).
  With the ``depthlab_jpegroi`` extension (built at install time against the system's
  libjpeg-turbo) the decoder skips the rows above the box, works only on its columns and stops
  at its last row; without it PIL decodes the whole image. Either way libjpeg scales the DCT by
  1/2, 1/4 or 1/8 whenever the box holds twice the pixels the output needs, and the pixels are
  the same (the extension's are checked bit for bit against PIL's in the tests);
- the CIFAR recipe decodes the whole image with the extension straight into a tensor (PIL
  without it) and shifts and flips the tensor: on 16-32 pixel images the per-image overhead,
  not the pixels, sets the rate (`bench/small_images.py`).
Normalisation (mean subtraction) happens on the device, in the loop.

Recipes (``augment`` in the config):
- ``cifar`` [P1 4.2]: pad (4 at 32 pixels, scaled with the image), random crop, flip.
- ``imagenet``: RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) + flip, the common recipe.
- ``imagenet_paper`` [P1 3.4]: shorter side resized to a random size in [256, 480] (scaled
  by size/224), random crop, flip, AlexNet PCA colour lighting (std 0.1).
Evaluation: ``cifar`` uses the image as is; the ImageNet recipes use the single center crop of
the image resized to 256/224 of the crop, or with ``eval_crops=10`` the paper's 10-crop (the
four corners and the center, and their mirror images) stacked as a (10, 3, H, W) tensor.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

try:  # training/data/_jpegroi.c, an optional extension (see pyproject.toml). A top-level module:
    # a Ray job's working_dir copy of `training/` leaves out built files (they are
    # git-ignored), so the workers find it where the project was installed.
    import depthlab_jpegroi as _jpegroi
except ImportError:  # pragma: no cover - a build without libjpeg's headers
    _jpegroi = None

AUGMENTS = ("cifar", "imagenet", "imagenet_paper")

# Per-channel statistics of ImageNet, in 0..255; used for every dataset (the papers subtract a
# per-pixel mean; per-channel is the standard simplification).
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# AlexNet's PCA lighting: eigenvalues and eigenvectors of ImageNet's RGB covariance (0..1 scale),
# as used by fb.resnet.torch.
_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                    [-0.5808, -0.0045, -0.8140],
                    [-0.5836, -0.6948, 0.4203]])


def jpeg_decoder() -> str:
    """What decodes the ImageNet recipes' JPEGs in this process."""
    if _jpegroi is None:
        return "PIL (whole images; depthlab_jpegroi not built)"
    return "depthlab_jpegroi (libjpeg-turbo, region of interest)"


def open_image(data: bytes) -> Image.Image:
    """A lazily opened PIL image: nothing is decoded until a transform asks for pixels."""
    return Image.open(io.BytesIO(data))


def decode_rgb(data: bytes) -> torch.Tensor:
    """CHW uint8 RGB of a whole JPEG (the extension; PIL without it) or of any format PIL reads.

    Raises on a corrupt or truncated file, like PIL; the loader skips and counts those.
    """
    if _jpegroi is not None and is_jpeg(data):
        width, height = image_size(data)  # refuses a decompression bomb before decoding
        pixels = _native_decode(data, 0, 0, width, height, 1)
        if pixels is not None:
            return pixels
    return to_tensor(open_image(data))


def _native_decode(data: bytes, x0: int, y0: int, x1: int, y1: int, denom: int):
    """CHW uint8 (a view of HWC memory) of that region by the extension, or None for a CMYK
    JPEG, which PIL converts. Raises on a corrupt or truncated file."""
    try:
        pixels, width, height = _jpegroi.decode(data, x0, y0, x1, y1, denom)
    except NotImplementedError:
        return None
    return torch.frombuffer(pixels, dtype=torch.uint8).view(height, width, 3).permute(2, 0, 1)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """CHW uint8, as a view of HWC memory (the loader stacks those into channels_last batches)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8"


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone. Refuses what PIL refuses as a decompression bomb
    (over twice ``Image.MAX_IMAGE_PIXELS``), whichever decoder is used."""
    if _jpegroi is not None and is_jpeg(data):
        width, height = _jpegroi.size(data)
        if Image.MAX_IMAGE_PIXELS and width * height > 2 * Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(
                f"{width}x{height} pixels: over twice the limit of {Image.MAX_IMAGE_PIXELS}")
        return width, height
    return open_image(data).size


def dct_scale(width: int, height: int, box_w: float, box_h: float, keep: int) -> int:
    """The JPEG decode denominator (1, 2, 4 or 8) that keeps at least ``keep`` pixels across a
    ``box_w x box_h`` box: the one PIL's ``Image.draft`` picks for the same request."""
    need_w, need_h = max(1, math.ceil(width * keep / box_w)), max(1, math.ceil(height * keep / box_h))
    scale = min(width // need_w, height // need_h)
    return next((d for d in (8, 4, 2) if scale >= d), 1)


def decode_box(data: bytes, whole: tuple[int, int], box: tuple[float, float, float, float],
               keep: int) -> torch.Tensor:
    """CHW uint8 pixels of ``box`` = (x, y, w, h) of the ``whole`` = (width, height) image,
    decoded at the smallest JPEG scale that keeps ``keep`` pixels across it (so the box comes
    back up to 2x larger than ``keep``, never smaller unless the image is). Raises on a corrupt
    or truncated file."""
    (width, height), (x, y, w, h) = whole, box
    denom = dct_scale(width, height, w, h, keep) if is_jpeg(data) else 1
    x0, y0 = int(x / denom), int(y / denom)
    x1, y1 = max(x0 + 1, round((x + w) / denom)), max(y0 + 1, round((y + h) / denom))
    if _jpegroi is not None and is_jpeg(data):
        pixels = _native_decode(data, x0, y0, x1, y1, denom)
        if pixels is not None:
            return pixels
    image = open_image(data)
    if denom > 1:
        # Asking for exactly W/d x H/d (rounded down) makes PIL pick d itself.
        image.draft("RGB", (width // denom, height // denom))
    return to_tensor(image)[:, y0:y1, x0:x1]


def _resized(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """A CHW uint8 image at ``size x size`` (or ``(height, width)``): bilinear, antialiased
    when shrinking, by torch's vectorised uint8 kernel."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == hw:
        return x
    return F.interpolate(_batch_of_one(x), size=hw, mode="bilinear", antialias=True,
                         align_corners=False)[0]


def _batch_of_one(x: torch.Tensor) -> torch.Tensor:
    """``x[None]``, but a CHW view of HWC memory keeps a batch stride of H*W*C. ``x[None]`` gives
    it a stride of 3, and torch then no longer treats the batch as channels_last: the resize
    falls back from its vectorised channels_last uint8 kernel to a slower one
    (`bench/results/loader.md`, "resize")."""
    if x.stride(0) == 1:  # HWC memory
        return x.permute(1, 2, 0)[None].permute(0, 3, 1, 2)
    return x[None]


def shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """``x`` (CHW) moved right by ``dx`` and down by ``dy``, zeros filling in: a zero-padded
    random crop [P1 4.2] without building the padded image. The result is a CHW view of HWC
    memory, like ``to_tensor``'s."""
    c, h, w = x.shape
    out = torch.zeros(h, w, c, dtype=x.dtype).permute(2, 0, 1)
    if abs(dx) < w and abs(dy) < h:
        out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


class CifarTrain:
    def __init__(self, size: int):
        self.size, self.pad = size, max(1, round(size / 8))

    def __call__(self, data: bytes) -> torch.Tensor:
        x = _resized(decode_rgb(data), self.size)
        # Zero padding then a random crop = a random shift with zeros filling in [P1 4.2].
        dx, dy = (random.randint(-self.pad, self.pad) for _ in range(2))
        if random.random() < 0.5:
            x = x.flip(-1)
        return shift(x, dx, dy)


class CifarEval:
    def __init__(self, size: int):
        self.size = size

    def __call__(self, data: bytes) -> torch.Tensor:
        return _resized(decode_rgb(data), self.size)


class RandomResizedCrop:
    """Inception-style crop, decoded at the smallest scale that still covers the output."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.log_ratio = size, scale, (math.log(ratio[0]), math.log(ratio[1]))

    def params(self, width: int, height: int) -> tuple[float, float, float, float]:
        area = width * height
        for _ in range(10):
            target = area * random.uniform(*self.scale)
            aspect = math.exp(random.uniform(*self.log_ratio))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                x, y = random.randint(0, width - w), random.randint(0, height - h)
                return x, y, w, h
        side = min(width, height)  # fallback: the central square
        return (width - side) / 2, (height - side) / 2, side, side

    def __call__(self, data: bytes) -> torch.Tensor:
        whole = image_size(data)
        image = _resized(decode_box(data, whole, self.params(*whole), self.size), self.size)
        return image.flip(-1) if random.random() < 0.5 else image


class Lighting:
    """AlexNet PCA colour augmentation on a uint8 CHW tensor."""

    def __init__(self, std: float = 0.1):
        self.std = std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # From `random`, like every draw of the augmentations: the loader seeds only that
        # generator per sample, instead of numpy's as well for these three numbers.
        alpha = np.array([random.gauss(0, self.std) for _ in range(3)])
        shift = torch.tensor(_EIGVEC @ (alpha * _EIGVAL) * 255.0, dtype=torch.float32).view(3, 1, 1)
        return (x.float() + shift).clamp_(0, 255).to(torch.uint8)  # truncates, like AlexNet's


class PaperScaleAugment:
    """[P1 3.4]: shorter side to a random size in [256, 480] (for 224 crops), crop, flip, PCA."""

    def __init__(self, size: int):
        self.size = size
        self.range = (round(256 * size / 224), round(480 * size / 224))
        self.lighting = Lighting()

    def __call__(self, data: bytes) -> torch.Tensor:
        width, height = image_size(data)
        w, h = resized_to_shorter(width, height, random.randint(*self.range), self.size)
        x, y = random.randint(0, w - self.size), random.randint(0, h - self.size)
        # That crop of the resized image is this box of the original: only it is decoded.
        box = (x * width / w, y * height / h, self.size * width / w, self.size * height / h)
        image = _resized(decode_box(data, (width, height), box, self.size), self.size)
        if random.random() < 0.5:
            image = image.flip(-1)
        return self.lighting(image)


def resized_to_shorter(width: int, height: int, shorter: int, at_least: int) -> tuple[int, int]:
    """The size of a ``width x height`` image resized so that its shorter side is ``shorter``
    (each side at least ``at_least``, the crop to come)."""
    k = shorter / min(width, height)
    return max(at_least, round(width * k)), max(at_least, round(height * k))


class ResizeCenterCrop:
    """Shorter side to ``size * 256 / 224``, then the center ``size`` crop (or the 10 crops)."""

    def __init__(self, size: int, crops: int = 1):
        if crops not in (1, 10):
            raise ValueError(f"eval crops must be 1 or 10, got {crops}")
        self.size, self.crops, self.resize = size, crops, round(size * 256 / 224)

    def __call__(self, data: bytes) -> torch.Tensor:
        s = self.size
        if self.crops == 1:  # crop first: only the center box is decoded and resized
            width, height = image_size(data)
            w, h = resized_to_shorter(width, height, self.resize, self.resize)
            x, y = (w - s) // 2, (h - s) // 2
            box = (x * width / w, y * height / h, s * width / w, s * height / h)
            return _resized(decode_box(data, (width, height), box, s), s)
        # The paper's 10 crops cover the whole resized image: decode it all (at the DCT scale
        # that keeps the shorter side at least self.resize), resize, cut.
        width, height = image_size(data)
        w, h = resized_to_shorter(width, height, self.resize, self.resize)
        image = _resized(decode_box(data, (width, height), (0, 0, width, height), self.resize),
                         (h, w))
        center = ((w - s) // 2, (h - s) // 2)
        corners = [(0, 0), (w - s, 0), (0, h - s), (w - s, h - s), center]
        crops = [image[:, y:y + s, x:x + s] for x, y in corners]
        return torch.stack(crops + [c.flip(-1) for c in crops])


def build_transform(augment: str, image_size: int, *, train: bool, eval_crops: int = 1):
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}: choose one of {', '.join(AUGMENTS)}")
    if augment == "cifar":
        return CifarTrain(image_size) if train else CifarEval(image_size)
    if not train:
        return ResizeCenterCrop(image_size, eval_crops)
    return RandomResizedCrop(image_size) if augment == "imagenet" else PaperScaleAugment(image_size)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW on any device -> float, mean-subtracted and scaled."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() - mean) / std
