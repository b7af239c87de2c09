"""Plain and residual networks of the two ResNet papers, with every unit and shortcut they test.

[P1] He et al., Deep Residual Learning for Image Recognition, CVPR 2016.
[P2] He et al., Identity Mappings in Deep Residual Networks, ECCV 2016.

One trunk (stem, stages of units, pool, classifier) for every architecture; the architectures
differ only in their unit, described as data (``UNITS``): where BN and ReLU sit around each
convolution, which of them come after the addition, and whether there is a shortcut at all.
[P2] Fig. 4 / Table 2 names five units:
- ``residual`` (a), the original unit [P1]: conv-BN-ReLU-conv-BN, add, ReLU;
- ``bn_after_add`` (b): conv-BN-ReLU-conv, add, BN-ReLU;
- ``relu_before_add`` (c): conv-BN-ReLU-conv-BN-ReLU, add;
- ``relu_preact`` (d), ReLU-only pre-activation: ReLU-conv-BN-ReLU-conv-BN, add;
- ``preact`` (e), full pre-activation: BN-ReLU-conv-BN-ReLU-conv, add;
and ``plain`` is (a) without its shortcut [P1]. [P2] Fig. 2 / Table 1's shortcut variants
(``shortcut_variant``) change how the original unit adds its two paths.

Module names follow torchvision (``conv1, bn1, layer1.., fc``, ``downsample`` for a projection
shortcut) so that ``residual`` ImageNet nets with shortcut B load torchvision's state dicts.
Importing this module pulls in torch only: no Ray, MLflow or S3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Unit:
    """A residual unit's order of operations.

    ``conv``: one convolution with its BN (b) and ReLU (r), in branch order: "cbr" normalises
    and activates each conv's output, "rcb" activates its input and normalises its output,
    "brc" normalises and activates its input (pre-activation). ``after_add``: how many of the
    last conv's trailing operations come after the addition instead.
    """

    conv: str
    after_add: int = 0
    shortcut: bool = True

    @property
    def preactivated(self) -> bool:
        """Whether operations precede the first conv: [P2]'s first- and last-unit rules apply."""
        return self.conv[0] != "c"

    @property
    def projection_norm(self) -> bool:
        """A projection shortcut gets a BN where the unit's convs are followed by one."""
        return self.conv.index("b") > self.conv.index("c")


UNITS = {
    "plain": Unit("cbr", after_add=1, shortcut=False),
    "residual": Unit("cbr", after_add=1),
    "bn_after_add": Unit("cbr", after_add=2),
    "relu_before_add": Unit("cbr"),
    "relu_preact": Unit("rcb"),
    "preact": Unit("brc"),
}
ARCHS = tuple(UNITS)
DATASETS = ("imagenet", "cifar")
SHORTCUTS = ("A", "B", "C")
SHORTCUT_VARIANTS = ("identity", "scaling", "exclusive_gating", "shortcut_gating", "conv1x1",
                     "dropout")
# The options each variant reads (all others are refused with it): [P2] Table 1's scales and
# gate bias, and the dropout ratio it used.
VARIANT_OPTIONS = {"scaling": ("shortcut_scale", "branch_scale"),
                   "exclusive_gating": ("gate_bias",), "shortcut_gating": ("gate_bias",),
                   "dropout": ("shortcut_dropout",)}
VARIANT_DEFAULTS = {"shortcut_scale": 0.5, "branch_scale": 1.0, "gate_bias": -6.0,
                    "shortcut_dropout": 0.5}

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

_OPTIONS = ("shortcut", "stride_in_1x1", "block", "zero_init_residual", "shortcut_variant",
            *VARIANT_DEFAULTS)


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
        if norm:
            return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
        return conv1x1(cin, cout, stride)
    return None


# ---------------------------------------------------------------- [P2] Fig. 2: shortcut variants

class ScaledSum(nn.Module):
    """Constant scaling: ``branch_scale * F(x) + shortcut_scale * h(x)``."""

    def __init__(self, shortcut_scale: float, branch_scale: float):
        super().__init__()
        self.shortcut_scale, self.branch_scale = shortcut_scale, branch_scale

    def forward(self, f, h, x):
        return self.branch_scale * f + self.shortcut_scale * h


class Gate(nn.Module):
    """``g(x) = sigmoid(W_g x + b_g)``, a 1x1 conv of the unit's input (as wide as the unit's
    output, strided like it, no BN: [P2] does not say either), multiplied element-wise.
    Exclusive gating: ``(1 - g) h(x) + g F(x)``; shortcut-only gating: ``(1 - g) h(x) + F(x)``.
    """

    def __init__(self, cin: int, cout: int, stride: int, bias: float, exclusive: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=True)
        self.bias_init, self.exclusive = bias, exclusive

    def forward(self, f, h, x):
        g = torch.sigmoid(self.conv(x))
        return (1 - g) * h + (g * f if self.exclusive else f)


class DropoutSum(nn.Module):
    """Dropout on the shortcut's output (in training only): ``F(x) + dropout(h(x))``."""

    def __init__(self, p: float):
        super().__init__()
        self.dropout = nn.Dropout(p)

    def forward(self, f, h, x):
        return f + self.dropout(h)


def _merge(variant: str, options: dict, cin: int, cout: int, stride: int) -> nn.Module | None:
    if variant == "scaling":
        return ScaledSum(options["shortcut_scale"], options["branch_scale"])
    if variant in ("exclusive_gating", "shortcut_gating"):
        return Gate(cin, cout, stride, options["gate_bias"], variant == "exclusive_gating")
    if variant == "dropout":
        return DropoutSum(options["shortcut_dropout"])
    return None  # identity, conv1x1 (a shortcut option): a plain sum


# ---------------------------------------------------------------- the unit

class ResidualUnit(nn.Module):
    """One unit of any kind in ``UNITS``, basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1 x4).

    The operations run in the order the kind says, named after the conv they belong to:
    ``conv1, bn1, relu, conv2, bn2, ...``. With a post-activation kind ``bn_i`` normalises
    ``conv_i``'s output, with full pre-activation its input (so ``bn1`` normalises the unit's
    input, as in [P2]'s code). ``preact_input`` (pre-activation kinds only): ``"branch"``
    pre-activates the residual path alone (identity units), ``"both"`` feeds the pre-activated
    input to the projection too (units where dimensions grow), ``"none"`` skips it (the first
    unit, whose input is the stem's activation) [P2 Sec. 4.1].
    """

    def __init__(self, kind: str, cin: int, planes: int, stride: int = 1, *, bottleneck=False,
                 shortcut="B", stride_in_1x1=False, preact_input="branch",
                 shortcut_variant="identity", variant_options=None):
        super().__init__()
        self.kind, unit = kind, UNITS[kind]
        self.has_shortcut = unit.shortcut
        self.expansion = 4 if bottleneck else 1
        cout = planes * self.expansion
        if bottleneck:
            s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
            shapes = [(conv1x1, cin, planes, s1), (conv3x3, planes, planes, s3),
                      (conv1x1, planes, cout, 1)]
        else:
            shapes = [(conv3x3, cin, planes, stride), (conv3x3, planes, planes, 1)]
        ops = []
        for i, (make, c_in, c_out, s) in enumerate(shapes, 1):
            # Convs first, in order: their construction draws from the RNG, so the order fixes
            # a seed's initial weights.
            setattr(self, f"conv{i}", make(c_in, c_out, s))
            ops += [{"c": f"conv{i}", "b": f"bn{i}", "r": "relu"}[op] for op in unit.conv]
        for i, (_, c_in, c_out, _) in enumerate(shapes, 1):
            width = c_in if unit.conv.index("b") < unit.conv.index("c") else c_out
            if f"bn{i}" in ops and not (i == 1 and unit.conv[0] == "b" and preact_input == "none"):
                setattr(self, f"bn{i}", nn.BatchNorm2d(width))
        self.relu = nn.ReLU(inplace=True)
        first_conv = ops.index("conv1")
        self.pre = tuple(ops[:first_conv]) if preact_input != "none" else ()
        self.body = tuple(ops[first_conv:len(ops) - unit.after_add])
        self.post = tuple(ops[len(ops) - unit.after_add:])
        self.project_preactivated = unit.preactivated and preact_input == "both"
        option = "C" if shortcut_variant == "conv1x1" else shortcut
        self.downsample = (_shortcut(option, cin, cout, stride, norm=unit.projection_norm)
                           if unit.shortcut else None)
        self.merge = _merge(shortcut_variant, variant_options or {}, cin, cout, stride)

    def _run(self, names: tuple[str, ...], x: torch.Tensor) -> torch.Tensor:
        for name in names:
            x = getattr(self, name)(x)
        return x

    def branch_end(self) -> nn.Module:
        """The last conv or BN of the residual path: what zero-init zeroes."""
        return getattr(self, next(n for n in reversed(self.body) if n != "relu"))

    def forward(self, x):
        # Pre-activation: out of place, since x itself may still be the identity shortcut.
        a = x
        for name in self.pre:
            a = F.relu(a) if name == "relu" else getattr(self, name)(a)
        out = self._run(self.body, a)
        if self.has_shortcut:
            skip_in = a if self.project_preactivated else x
            h = skip_in if self.downsample is None else self.downsample(skip_in)
            out = out + h if self.merge is None else self.merge(out, h, x)
        return self._run(self.post, out)


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
    shortcut_variant: str = "identity"
    variant_options: tuple[tuple[str, float], ...] = ()


class ResNet(nn.Module):
    """One trunk for every (arch, dataset): the stem, the stages of units, pool, classifier."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec = spec
        unit = UNITS[spec.arch]
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
        # [P2]: the last pre-activated unit's sum is not activated yet: its activation (BN and
        # ReLU, or ReLU alone for ReLU-only pre-activation) comes before the pooling.
        self.final_bn = nn.BatchNorm2d(cin) if "b" in unit.conv[:unit.conv.index("c")] else None
        self.final_relu = unit.preactivated
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, spec.num_classes)
        self._init_weights()

    @staticmethod
    def _make_layer(spec, cin, planes, units, stride, first_stage):
        bottleneck = spec.block == "bottleneck"
        expansion = 4 if bottleneck else 1
        layers = []
        for u in range(units):
            s = stride if u == 0 else 1
            changes = s != 1 or cin != planes * expansion
            mode = "none" if (first_stage and u == 0) else ("both" if changes else "branch")
            layers.append(ResidualUnit(
                spec.arch, cin, planes, s, bottleneck=bottleneck, shortcut=spec.shortcut,
                stride_in_1x1=spec.stride_in_1x1, preact_input=mode,
                shortcut_variant=spec.shortcut_variant,
                variant_options=dict(spec.variant_options)))
            cin = planes * expansion
        return nn.Sequential(*layers), cin

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He initialisation [P1 3.4], as torchvision's ResNet.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            if isinstance(m, Gate):
                nn.init.constant_(m.conv.bias, m.bias_init)
        if self.spec.zero_init_residual and UNITS[self.spec.arch].shortcut:
            # Goyal et al. 2017: each residual branch starts as zero, so the net starts shallow.
            # What ends the branch is zeroed: its last BN, or its last conv where no BN follows
            # it (bn_after_add, full pre-activation); a BN inside the branch would block every
            # gradient behind it (the ReLU after it outputs zero).
            for m in self.modules():
                if isinstance(m, ResidualUnit):
                    nn.init.zeros_(m.branch_end().weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        if self.final_bn is not None:
            x = self.final_bn(x)
        if self.final_relu:  # out of place: without a final BN, x is the last unit's output
            x = F.relu(x)
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


def _variant_options(arch: str, variant: str, options: dict) -> tuple[tuple[str, float], ...]:
    if variant not in SHORTCUT_VARIANTS:
        raise ValueError(f"unknown shortcut_variant {variant!r}: choose one of "
                         f"{', '.join(SHORTCUT_VARIANTS)}")
    if variant != "identity" and arch != "residual":
        raise ValueError(f"shortcut_variant {variant!r} applies to the original unit ([P2] "
                         f"Table 1): arch 'residual', not {arch!r}")
    wanted = VARIANT_OPTIONS.get(variant, ())
    for name in VARIANT_DEFAULTS:
        if name in options and name not in wanted:
            users = [v for v, names in VARIANT_OPTIONS.items() if name in names]
            raise ValueError(f"option {name} applies to shortcut_variant {' or '.join(users)}, "
                             f"not {variant!r}")
    values = {name: options.get(name, VARIANT_DEFAULTS[name]) for name in wanted}
    for name, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{name} must be a number, got {value!r}")
    if not 0 <= values.get("shortcut_dropout", 0) < 1:
        raise ValueError(f"shortcut_dropout must be in [0, 1), got {values['shortcut_dropout']}")
    return tuple((k, float(v)) for k, v in values.items())


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
        # torchvision's v1.5 (stride on the 3x3 conv); [P1]'s v1 is stride_in_1x1=True.
        default_stride_in_1x1 = False
    else:
        block, stages = _cifar_layout(depth, block)
        widths, classes = (16, 32, 64), 10
        # [P1 4.2]: option A for the basic CIFAR nets; [P2]: projections for the bottleneck ones.
        default_shortcut = "A" if block == "basic" else "B"
        # [P2]'s code (resnet-pre-act.lua) strides the first 1x1 conv of a CIFAR bottleneck.
        default_stride_in_1x1 = True

    shortcut = options.get("shortcut", default_shortcut)
    if shortcut not in SHORTCUTS:
        raise ValueError(f"unknown shortcut {shortcut!r}: choose one of {', '.join(SHORTCUTS)}")
    variant = options.get("shortcut_variant", "identity")
    variant_options = _variant_options(arch, variant, options)
    if variant == "conv1x1" and options.get("shortcut", "C") != "C":
        raise ValueError("shortcut_variant 'conv1x1' puts a 1x1 conv on every shortcut "
                         f"(option C): shortcut {shortcut!r} contradicts it")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    zero_init = bool(options.get("zero_init_residual", False))
    if zero_init and arch == "relu_before_add":
        raise ValueError("zero_init_residual cannot start a relu_before_add branch at zero: it "
                         "ends with a ReLU, which passes no gradient at zero, so the branch "
                         "would never train")
    stride_in_1x1 = options.get("stride_in_1x1")
    return NetSpec(
        arch=arch, depth=depth, dataset=dataset, block=block, stages=stages, widths=widths,
        num_classes=num_classes or classes, shortcut="C" if variant == "conv1x1" else shortcut,
        stride_in_1x1=default_stride_in_1x1 if stride_in_1x1 is None else bool(stride_in_1x1),
        zero_init_residual=zero_init, shortcut_variant=variant, variant_options=variant_options,
    )


def variant_label(spec: NetSpec) -> str:
    """The shortcut variant of a net as the report names it ("" for the identity shortcut):
    its name and the options it resolved to, e.g. ``exclusive_gating gate_bias=-6``."""
    if spec.shortcut_variant == "identity":
        return ""
    return " ".join([spec.shortcut_variant, *(f"{k}={v:g}" for k, v in spec.variant_options)])


def build_model(arch: str, depth: int, *, dataset: str = "imagenet",
                num_classes: int | None = None, **options) -> ResNet:
    """Build a plain or residual network with any unit of [P2] Fig. 4.

    ``arch``: one of ``ARCHS`` ("plain", "residual", "bn_after_add", "relu_before_add",
    "relu_preact", "preact"). ``dataset``: "imagenet" (depths 18, 34, 50, 101, 152, 200) or
    "cifar" (6n+2 basic, 9n+2 bottleneck). Options: ``shortcut`` ("A", "B", "C"; default B for
    imagenet, A for basic cifar nets), ``stride_in_1x1`` (where a downsampling bottleneck puts
    its stride: True on the first 1x1 conv, as [P1]'s v1 and [P2]'s CIFAR code, the default
    for cifar; False on the 3x3, torchvision's v1.5, the default for imagenet), ``block`` (cifar
    only: "basic" or "bottleneck"), ``zero_init_residual``, and on the original unit
    ``shortcut_variant`` ([P2] Fig. 2: "identity", "scaling" with ``shortcut_scale`` and
    ``branch_scale``, "exclusive_gating" / "shortcut_gating" with ``gate_bias``, "conv1x1",
    "dropout" with ``shortcut_dropout``). Raises ValueError naming the valid choices.
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
