"""Plain, residual and pre-activation networks of the two ResNet papers.

[P1] He et al., Deep Residual Learning for Image Recognition, CVPR 2016.
[P2] He et al., Identity Mappings in Deep Residual Networks, ECCV 2016.

The three architectures share one trunk; they differ only in the unit a stage is built from:
- ``plain``: the residual unit with its shortcut removed, ``y = relu(F(x))``;
- ``residual``: the original unit [P1], ``y = relu(F(x) + h(x))``;
- ``preact``: the full pre-activation unit [P2], ``y = x + F'(x)`` with BN and ReLU moved
  in front of each convolution.

Module names follow torchvision (``conv1, bn1, layer1.., fc``, ``downsample`` for a projection
shortcut) so that ``residual`` ImageNet nets with shortcut B load torchvision's state dicts.
Importing this module pulls in torch only: no Ray, MLflow or S3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("plain", "residual", "preact")
DATASETS = ("imagenet", "cifar")
SHORTCUTS = ("A", "B", "C")

# [P1] Table 1 and [P2]: depth -> (block, units per stage).
IMAGENET_DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
# The CIFAR nets named in the papers; any 6n+2 (basic) or 9n+2 (bottleneck) depth is accepted.
CIFAR_PAPER_DEPTHS = (20, 32, 44, 56, 110, 1202, 164, 1001)
# Depths that fit both 6n+2 and 9n+2 are basic-block nets, except [P2]'s bottleneck ResNet-164.
_CIFAR_BOTTLENECK_BY_DEFAULT = (164, 1001)

_OPTIONS = ("shortcut", "stride_in_1x1", "block", "zero_init_residual")


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A [P1 3.3]: identity with strided subsampling and zero-padded extra channels.

    Parameter-free, so a residual net with option A has exactly the parameters of its plain twin.
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.extra, self.stride = cout - cin, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # Pad the channel dimension at the end (F.pad pads the last dims first: W, H, then C).
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def _shortcut(option: str, cin: int, cout: int, stride: int, *, norm: bool) -> nn.Module | None:
    """The skip path ``h(x)`` of a unit, or None for the identity."""
    changes = stride != 1 or cin != cout
    if option == "A" and changes:
        return PadShortcut(cin, cout, stride)
    if (option == "B" and changes) or option == "C":
        # [P2]: a pre-activation projection takes the already normalised input, so no BN after it.
        if norm:
            return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
        return conv1x1(cin, cout, stride)
    return None


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; ``residual=False`` drops the shortcut (the plain net's unit)."""

    expansion = 1

    def __init__(self, cin, planes, stride=1, *, residual=True, shortcut="B", stride_in_1x1=False):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = _shortcut(shortcut, cin, planes, stride, norm=True) if residual else None

    def branch(self, x):
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x):
        if not self.residual:
            return self.relu(self.branch(x))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.branch(x) + identity)


class Bottleneck(BasicBlock):
    """1x1 reduce, 3x3, 1x1 expand (x4).

    [P1] (v1) puts the stride of a downsampling unit on the first 1x1 conv (3.8e9 multiply-adds
    for depth 50); torchvision ("v1.5") puts it on the 3x3 conv (4.1e9, slightly more accurate).
    ``stride_in_1x1`` picks v1.
    """

    expansion = 4

    def __init__(self, cin, planes, stride=1, *, residual=True, shortcut="B", stride_in_1x1=False):
        nn.Module.__init__(self)
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        cout = planes * self.expansion
        self.conv1 = conv1x1(cin, planes, s1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = _shortcut(shortcut, cin, cout, stride, norm=True) if residual else None

    def branch(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


class PreActBasicBlock(nn.Module):
    """Full pre-activation unit [P2 Fig. 4e]: ``x + conv(relu(bn(conv(relu(bn(x))))))``.

    ``preact_input``: ``"branch"`` normalises only the residual path (identity units);
    ``"both"`` feeds the normalised input to the projection too (units where dimensions grow);
    ``"none"`` for the first unit, whose input is already the stem's activation [P2 Sec. 4.1].
    """

    expansion = 1

    def __init__(self, cin, planes, stride=1, *, shortcut="B", preact_input="branch",
                 stride_in_1x1=False):
        super().__init__()
        self.preact_input = preact_input
        if preact_input != "none":
            self.bn1 = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=False)
        self._build(cin, planes, stride, stride_in_1x1)
        self.downsample = _shortcut(shortcut, cin, planes * self.expansion, stride, norm=False)

    def _build(self, cin, planes, stride, stride_in_1x1):
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)

    def branch(self, a):
        return self.conv2(self.relu(self.bn2(self.conv1(a))))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x):
        a = x if self.preact_input == "none" else self.relu(self.bn1(x))
        skip_in = x if self.preact_input == "branch" else a
        identity = skip_in if self.downsample is None else self.downsample(skip_in)
        return self.branch(a) + identity


class PreActBottleneck(PreActBasicBlock):
    expansion = 4

    def _build(self, cin, planes, stride, stride_in_1x1):
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(cin, planes, s1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)

    def branch(self, a):
        out = self.conv1(a)
        out = self.conv2(self.relu(self.bn2(out)))
        return self.conv3(self.relu(self.bn3(out)))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


@dataclass(frozen=True)
class NetSpec:
    """Everything that determines a network's structure."""

    arch: str
    depth: int
    dataset: str
    block: str  # "basic" | "bottleneck"
    stages: tuple[int, ...]  # units per stage
    widths: tuple[int, ...]  # planes per stage (before the bottleneck expansion)
    num_classes: int
    shortcut: str
    stride_in_1x1: bool
    zero_init_residual: bool


class ResNet(nn.Module):
    """One trunk for every (arch, dataset): the stem, the stages of units, pool, classifier."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec = spec
        preact = spec.arch == "preact"
        stem_width = spec.widths[0]
        if spec.dataset == "imagenet":
            self.conv1 = nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(3, stem_width)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)

        cin = stem_width
        for i, (units, planes) in enumerate(zip(spec.stages, spec.widths)):
            stride = 1 if i == 0 else 2
            layer, cin = self._make_layer(spec, cin, planes, units, stride, first_stage=i == 0)
            self.add_module(f"layer{i + 1}", layer)
        self.num_stages = len(spec.stages)
        # [P2]: with pre-activation units the last unit's output is not normalised; add BN+ReLU.
        self.final_bn = nn.BatchNorm2d(cin) if preact else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, spec.num_classes)
        self._init_weights()

    @staticmethod
    def _make_layer(spec, cin, planes, units, stride, first_stage):
        block = {
            ("basic", False): BasicBlock, ("bottleneck", False): Bottleneck,
            ("basic", True): PreActBasicBlock, ("bottleneck", True): PreActBottleneck,
        }[(spec.block, spec.arch == "preact")]
        layers = []
        for u in range(units):
            s = stride if u == 0 else 1
            common = dict(shortcut=spec.shortcut, stride_in_1x1=spec.stride_in_1x1)
            if spec.arch == "preact":
                changes = s != 1 or cin != planes * block.expansion
                mode = "none" if (first_stage and u == 0) else ("both" if changes else "branch")
                layers.append(block(cin, planes, s, preact_input=mode, **common))
            else:
                layers.append(block(cin, planes, s, residual=spec.arch == "residual", **common))
            cin = planes * block.expansion
        return nn.Sequential(*layers), cin

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He initialisation [P1 3.4], as torchvision's ResNet.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.spec.zero_init_residual and self.spec.arch != "plain":
            # Goyal et al. 2017: each residual branch starts as zero, so the net starts shallow.
            for m in self.modules():
                if hasattr(m, "last_bn"):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        if self.final_bn is not None:
            x = self.relu(self.final_bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _cifar_layout(depth: int, block: str | None) -> tuple[str, tuple[int, ...]]:
    basic_ok = depth >= 8 and (depth - 2) % 6 == 0
    bottleneck_ok = depth >= 11 and (depth - 2) % 9 == 0
    if block is None:
        block = "bottleneck" if (depth in _CIFAR_BOTTLENECK_BY_DEFAULT or not basic_ok) else "basic"
    if block == "basic" and basic_ok:
        return block, ((depth - 2) // 6,) * 3
    if block == "bottleneck" and bottleneck_ok:
        return block, ((depth - 2) // 9,) * 3
    raise ValueError(
        f"cifar depth {depth} with block={block!r} is not valid: depths are 6n+2 with basic "
        f"blocks (e.g. 8, 14, 20, 32, 44, 56, 110, 1202) or 9n+2 with bottlenecks "
        f"(e.g. 164, 1001)"
    )


def resolve_spec(arch: str, depth: int, *, dataset: str = "imagenet",
                 num_classes: int | None = None, **options) -> NetSpec:
    """Validate the arguments of :func:`build_model` and return the network's structure."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}: valid options are {', '.join(_OPTIONS)}")
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise ValueError(f"depth must be an integer, got {depth!r}")

    block = options.get("block")
    if block not in (None, "basic", "bottleneck"):
        raise ValueError(f"unknown block {block!r}: choose basic or bottleneck")
    if dataset == "imagenet":
        if depth not in IMAGENET_DEPTHS:
            raise ValueError(
                f"imagenet depth {depth} is not valid: choose one of "
                f"{', '.join(map(str, IMAGENET_DEPTHS))}"
            )
        table_block, stages = IMAGENET_DEPTHS[depth]
        if block not in (None, table_block):
            raise ValueError(f"imagenet depth {depth} uses {table_block} blocks, not {block}")
        block, widths, default_shortcut, classes = table_block, (64, 128, 256, 512), "B", 1000
    else:
        block, stages = _cifar_layout(depth, block)
        widths, classes = (16, 32, 64), 10
        # [P1 4.2]: option A for the basic CIFAR nets; [P2]: projections for the bottleneck ones.
        default_shortcut = "A" if block == "basic" else "B"

    shortcut = options.get("shortcut", default_shortcut)
    if shortcut not in SHORTCUTS:
        raise ValueError(f"unknown shortcut {shortcut!r}: choose one of {', '.join(SHORTCUTS)}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return NetSpec(
        arch=arch, depth=depth, dataset=dataset, block=block, stages=stages, widths=widths,
        num_classes=num_classes or classes, shortcut=shortcut,
        stride_in_1x1=bool(options.get("stride_in_1x1", False)),
        zero_init_residual=bool(options.get("zero_init_residual", False)),
    )


def build_model(arch: str, depth: int, *, dataset: str = "imagenet",
                num_classes: int | None = None, **options) -> ResNet:
    """Build a plain, residual or pre-activation network.

    ``arch``: "plain" | "residual" | "preact". ``dataset``: "imagenet" (depths 18, 34, 50, 101,
    152, 200) or "cifar" (6n+2 basic, 9n+2 bottleneck). Options: ``shortcut`` ("A", "B", "C";
    default B for imagenet, A for basic cifar nets), ``stride_in_1x1`` (True = [P1]'s v1
    bottleneck, default False = torchvision's v1.5), ``block`` (cifar only: "basic" or
    "bottleneck"), ``zero_init_residual``. Raises ValueError naming the valid choices.
    """
    return ResNet(resolve_spec(arch, depth, dataset=dataset, num_classes=num_classes, **options))


def input_size(dataset: str) -> int:
    return 224 if dataset == "imagenet" else 32


def model_summary(model: nn.Module, image_size: int | None = None) -> dict:
    """Parameters and multiply-adds of one forward pass on one image (convs and the fc)."""
    spec = getattr(model, "spec", None)
    size = image_size or input_size(spec.dataset if spec else "imagenet")
    macs = 0

    def hook(m, inp, out):
        nonlocal macs
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            macs += out.numel() * k
        elif isinstance(m, nn.Linear):
            macs += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {"params": sum(p.numel() for p in model.parameters()), "macs": macs,
            "image_size": size}
