"""The papers' numbers, each with the protocol it was measured by, for the report's paper column.

[P1] He et al., CVPR 2016; [P2] He et al., ECCV 2016; fb.resnet.torch: the independent Torch
reproduction [P2] cites. A figure is keyed by the data set, the unit (arch), the depth, the
shortcut option where it matters (ImageNet) and the shortcut variant ("" for the identity).
Protocols differ and are never mixed: [P1]'s CIFAR table is the best of 5 runs, [P2]'s the
median of 5; ImageNet figures are 10-crop ([P1]), a single 224 crop (fb.resnet.torch) or a
single 320 crop ([P2] Table 5), and a run is only set beside a figure of its own evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

BEST5, MEDIAN5 = "best of 5", "median of 5"
TEN_CROP, CROP224, CROP320 = "10-crop", "single 224 crop", "single 320 crop"


@dataclass(frozen=True)
class PaperFigure:
    top1: float | None  # None: the run failed (the paper's "fail": above 20% error)
    top5: float | None
    source: str  # "[P2] Table 2"
    protocol: str  # how the number was taken (see the constants above)

    def label(self) -> str:
        return f"{self.source}, {self.protocol}"


def _f(top1, source, protocol, top5=None) -> PaperFigure:
    return PaperFigure(top1, top5, source, protocol)


# (data, arch, depth, shortcut or None for any, variant) -> figures.
_FIGURES: dict[tuple, list[PaperFigure]] = {}


def _add(data, arch, depth, figure, shortcut=None, variant=""):
    _FIGURES.setdefault((data, arch, depth, shortcut, variant), []).append(figure)


# [P1] Table 6 (CIFAR-10, option A, best of 5; ResNet-110's mean is 6.61 +- 0.16).
for depth, err in {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}.items():
    _add("cifar10", "residual", depth, _f(err, "[P1] Table 6", BEST5))
# [P2] Table 2 (CIFAR-10, the five units, median of 5): ResNet-110 and ResNet-164.
for arch, (e110, e164) in {"residual": (6.61, 5.93), "bn_after_add": (8.17, 6.50),
                           "relu_before_add": (7.84, 6.14), "relu_preact": (6.71, 5.91),
                           "preact": (6.37, 5.46)}.items():
    _add("cifar10", arch, 110, _f(e110, "[P2] Table 2", MEDIAN5))
    _add("cifar10", arch, 164, _f(e164, "[P2] Table 2", MEDIAN5))
# [P2] Table 3 (median of 5): ResNet-1001 on CIFAR-10; CIFAR-100 at 164 and 1001 layers.
_add("cifar10", "residual", 1001, _f(7.61, "[P2] Table 3", MEDIAN5))
_add("cifar10", "preact", 1001, _f(4.92, "[P2] Table 3", MEDIAN5))
for arch, (e164, e1001) in {"residual": (25.16, 27.82), "preact": (24.33, 22.71)}.items():
    _add("cifar100", arch, 164, _f(e164, "[P2] Table 3", MEDIAN5))
    _add("cifar100", arch, 1001, _f(e1001, "[P2] Table 3", MEDIAN5))
# [P2] Table 1 (CIFAR-10 ResNet-110, the original unit, median of 5; None: "fail").
for variant, err in {
        "scaling shortcut_scale=0 branch_scale=1": None,
        "scaling shortcut_scale=0.5 branch_scale=1": None,
        "scaling shortcut_scale=0.5 branch_scale=0.5": 12.35,
        "exclusive_gating gate_bias=0": None, "exclusive_gating gate_bias=-6": 8.70,
        "exclusive_gating gate_bias=-7": 9.81,
        "shortcut_gating gate_bias=0": 12.86, "shortcut_gating gate_bias=-6": 6.91,
        "conv1x1": 12.22, "dropout shortcut_dropout=0.5": None}.items():
    _add("cifar10", "residual", 110, _f(err, "[P2] Table 1", MEDIAN5), variant=variant)

# ImageNet. [P1] Table 2 / 3 (10-crop): plain nets, and ResNets with their shortcut option.
_add("imagenet", "plain", 18, _f(27.94, "[P1] Table 2", TEN_CROP))
_add("imagenet", "plain", 34, _f(28.54, "[P1] Table 2", TEN_CROP, 10.02))
_add("imagenet", "residual", 18, _f(27.88, "[P1] Table 2", TEN_CROP), shortcut="A")
_add("imagenet", "residual", 34, _f(25.03, "[P1] Table 2", TEN_CROP, 7.76), shortcut="A")
_add("imagenet", "residual", 34, _f(24.52, "[P1] Table 3", TEN_CROP, 7.46), shortcut="B")
_add("imagenet", "residual", 34, _f(24.19, "[P1] Table 3", TEN_CROP, 7.40), shortcut="C")
for depth, (t1, t5) in {50: (22.85, 6.71), 101: (21.75, 6.05), 152: (21.43, 5.71)}.items():
    _add("imagenet", "residual", depth, _f(t1, "[P1] Table 3", TEN_CROP, t5), shortcut="B")
# fb.resnet.torch (single 224 crop of the 256-resized image, shortcut B).
for depth, (t1, t5) in {18: (30.43, 10.76), 34: (26.73, 8.74), 50: (24.01, 7.02),
                        101: (22.44, 6.21), 152: (22.16, 6.16)}.items():
    _add("imagenet", "residual", depth, _f(t1, "fb.resnet.torch", CROP224, t5), shortcut="B")
_add("imagenet", "preact", 200, _f(21.66, "fb.resnet.torch", CROP224, 5.79), shortcut="B")
# [P2] Table 5 (single 320 crop).
for arch, depth, t1, t5 in (("residual", 152, 21.3, 5.5), ("preact", 152, 21.1, 5.5),
                            ("residual", 200, 21.8, 6.0), ("preact", 200, 20.7, 5.3)):
    _add("imagenet", arch, depth, _f(t1, "[P2] Table 5", CROP320, t5), shortcut="B")


def figures(data: str, arch: str, depth: int, shortcut: str = "", variant: str = "") -> list[PaperFigure]:
    """Every figure the papers give for this net (any protocol)."""
    found = list(_FIGURES.get((data, arch, depth, None, variant), []))
    if shortcut:
        found += _FIGURES.get((data, arch, depth, shortcut, variant), [])
    return found


def evaluation_protocol(data: str, eval_crops: int) -> str | None:
    """The ImageNet protocol of a run's own evaluation (None off ImageNet: any CIFAR figure is
    a test error on the same 10,000 images)."""
    if data != "imagenet":
        return None
    return TEN_CROP if eval_crops == 10 else CROP224


def matching(data: str, arch: str, depth: int, shortcut: str = "", variant: str = "",
             eval_crops: int = 1) -> tuple[PaperFigure | None, list[PaperFigure]]:
    """The figure to set beside a run (the same evaluation; on CIFAR [P2]'s median of 5 before
    [P1]'s best of 5) and the figures of other protocols, for a note."""
    found = figures(data, arch, depth, shortcut, variant)
    wanted = evaluation_protocol(data, eval_crops)
    same = [f for f in found if wanted is None or f.protocol == wanted]
    same.sort(key=lambda f: f.protocol != MEDIAN5)
    chosen = same[0] if same else None
    return chosen, [f for f in found if f is not chosen]
