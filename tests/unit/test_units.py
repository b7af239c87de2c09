"""[P2]'s ablations in the model zoo: the five residual units of Fig. 4 / Table 2 and the
shortcut variants of Fig. 2 / Table 1, each checked against the paper's description."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from training.models import ARCHS, build_model

# [P2] Table 2, as the paper spells each unit (basic block; a bottleneck has one more conv).
PAPER_ORDER = {
    "residual": "conv-BN-ReLU-conv-BN, add, ReLU",
    "bn_after_add": "conv-BN-ReLU-conv, add, BN-ReLU",
    "relu_before_add": "conv-BN-ReLU-conv-BN-ReLU, add",
    "relu_preact": "ReLU-conv-BN-ReLU-conv-BN, add",
    "preact": "BN-ReLU-conv-BN-ReLU-conv, add",
}
UNIT_KINDS = tuple(PAPER_ORDER)


def traced_order(unit: nn.Module) -> str:
    """The unit's operations in execution order, read from its traced graph."""
    graph = fx.symbolic_trace(unit).graph
    names = []
    for node in graph.nodes:
        if node.op == "call_module":
            kind = type(unit.get_submodule(node.target)).__name__
            names.append({"Conv2d": "conv", "BatchNorm2d": "BN", "ReLU": "ReLU"}[kind])
        elif node.op in ("call_function", "call_method"):
            target = getattr(node.target, "__name__", node.target)
            names.append({"relu": "ReLU", "add": "add"}.get(target, target))
    text = "-".join(names)
    return text.replace("-add-", ", add, ").replace("-add", ", add")


@pytest.mark.parametrize("arch", UNIT_KINDS)
def test_each_unit_runs_its_operations_in_the_papers_order(arch):
    model = build_model(arch, 20, dataset="cifar")
    unit = model.layer1[1]  # an identity unit inside a stage
    assert traced_order(unit) == PAPER_ORDER[arch]


@pytest.mark.parametrize("arch", UNIT_KINDS)
def test_bottleneck_units_have_one_more_conv_in_the_same_pattern(arch):
    model = build_model(arch, 20, dataset="cifar", block="bottleneck")
    unit = model.layer2[1]
    conv_group = {"residual": "conv-BN-ReLU-", "bn_after_add": "conv-BN-ReLU-",
                  "relu_before_add": "conv-BN-ReLU-", "relu_preact": "ReLU-conv-BN-",
                  "preact": "BN-ReLU-conv-"}[arch]
    assert traced_order(unit) == conv_group + PAPER_ORDER[arch]


@pytest.mark.parametrize("arch", UNIT_KINDS)
@pytest.mark.parametrize("depth,dataset", [(20, "cifar"), (110, "cifar"), (164, "cifar"),
                                           (50, "imagenet")])
def test_every_unit_has_the_original_units_parameters(arch, depth, dataset):
    count = lambda a: sum(p.numel() for p in build_model(a, depth, dataset=dataset).parameters())  # noqa: E731
    # The same convs; only a few BN channels move (a pre-activation BN normalises a unit's
    # input, which is wider than its first conv's output where a stage starts).
    assert count(arch) == pytest.approx(count("residual"), rel=0.005)


@pytest.mark.parametrize("arch", ["relu_preact", "preact"])
def test_pre_activation_units_follow_the_first_and_last_unit_rules(arch):
    model = build_model(arch, 20, dataset="cifar").eval()
    # The first unit splits right after the stem's conv-BN-ReLU: nothing before its first conv.
    assert traced_order(model.layer1[0]).startswith("conv")
    # The last unit's sum is activated before pooling (BN-ReLU, or ReLU alone for (d)).
    x = torch.randn(2, 3, 16, 16)
    seen = {}
    model.layer3.register_forward_hook(lambda m, i, o: seen.update(out=o))
    model.avgpool.register_forward_hook(lambda m, i, o: seen.update(pooled_in=i[0]))
    model(x)
    assert (seen["pooled_in"] >= 0).all() and (seen["out"] < 0).any()
    assert (model.final_bn is not None) == (arch == "preact")


def test_projection_shortcuts_are_pre_activated_too():
    model = build_model("preact", 20, dataset="cifar", shortcut="B").eval()
    unit = model.layer2[0]
    x = torch.randn(2, 16, 8, 8)
    taken = {}
    unit.downsample.register_forward_hook(lambda m, i, o: taken.update(x=i[0]))
    unit(x)
    torch.testing.assert_close(taken["x"], torch.relu(unit.bn1(x)))


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in ("plain", "relu_before_add")])
def test_zero_init_starts_every_branch_at_zero_and_every_conv_still_learns(arch):
    torch.manual_seed(0)
    model = build_model(arch, 14, dataset="cifar", zero_init_residual=True, shortcut="B")
    # At the start each unit passes its (pre-activated, projected) input through unchanged.
    for unit in (u for layer in (model.layer1, model.layer2, model.layer3) for u in layer):
        seen = {}
        handle = unit.register_forward_hook(lambda m, i, o: seen.update(x=i[0], out=o))
        model.eval()(torch.randn(2, 3, 16, 16))
        handle.remove()
        with torch.no_grad():  # the unit's output without its residual path
            a = seen["x"]
            for name in unit.pre:
                a = torch.relu(a) if name == "relu" else getattr(unit, name)(a)
            skip_in = a if unit.project_preactivated else seen["x"]
            h = skip_in if unit.downsample is None else unit.downsample(skip_in)
            for name in unit.post:
                h = getattr(unit, name)(h)
        torch.testing.assert_close(seen["out"], h)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() == 4}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 3, 16, 16)),
                                    torch.randint(0, 10, (8,))).backward()
        opt.step()
    frozen = [n for n, p in model.named_parameters() if p.dim() == 4 and torch.equal(p, before[n])]
    assert not frozen


def test_zero_init_is_refused_where_it_would_kill_the_branch():
    with pytest.raises(ValueError, match="ends with a ReLU"):
        build_model("relu_before_add", 14, dataset="cifar", zero_init_residual=True)


# ---------------------------------------------------------------- [P2] Fig. 2 / Table 1

def unit_of(variant: str, **options) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("residual", 20, dataset="cifar", shortcut_variant=variant, **options)
    return model.layer1[1]


def branch_and_shortcut(unit, x):
    return unit._run(unit.body, x), x


@pytest.mark.parametrize("shortcut_scale,branch_scale", [(0.0, 1.0), (0.5, 1.0), (0.5, 0.5)])
def test_constant_scaling_weights_the_two_paths(shortcut_scale, branch_scale):
    unit = unit_of("scaling", shortcut_scale=shortcut_scale, branch_scale=branch_scale).eval()
    x = torch.randn(2, 16, 8, 8)
    f, h = branch_and_shortcut(unit, x)
    torch.testing.assert_close(unit(x), torch.relu(branch_scale * f + shortcut_scale * h))


@pytest.mark.parametrize("variant,gate_bias", [("exclusive_gating", 0.0),
                                                ("exclusive_gating", -6.0),
                                                ("shortcut_gating", -6.0)])
def test_gates_start_at_the_asked_bias_and_gate_as_the_paper_writes(variant, gate_bias):
    unit = unit_of(variant, gate_bias=gate_bias).eval()
    assert torch.all(unit.merge.conv.bias == gate_bias) and unit.merge.conv.kernel_size == (1, 1)
    x = torch.randn(2, 16, 8, 8)
    f, h = branch_and_shortcut(unit, x)
    g = torch.sigmoid(unit.merge.conv(x))
    expected = (1 - g) * h + (g * f if variant == "exclusive_gating" else f)
    torch.testing.assert_close(unit(x), torch.relu(expected))


def test_the_conv1x1_variant_puts_a_projection_on_every_shortcut():
    model = build_model("residual", 20, dataset="cifar", shortcut_variant="conv1x1")
    units = [u for layer in (model.layer1, model.layer2, model.layer3) for u in layer]
    assert all(isinstance(u.downsample[0], nn.Conv2d) and u.downsample[0].kernel_size == (1, 1)
               for u in units)


def test_the_dropout_shortcut_is_random_in_training_and_not_in_evaluation():
    unit = unit_of("dropout")
    x = torch.randn(2, 16, 8, 8)
    unit.train()
    torch.manual_seed(1)
    a = unit(x)
    torch.manual_seed(2)
    assert not torch.equal(a, unit(x))
    unit.eval()
    f, h = branch_and_shortcut(unit, x)
    torch.testing.assert_close(unit(x), torch.relu(f + h))


def test_identity_is_the_default_and_adds_no_module():
    assert unit_of("identity").merge is None


@pytest.mark.parametrize("kwargs,match", [
    (dict(arch="preact", shortcut_variant="dropout"), "original unit"),
    (dict(arch="residual", shortcut_variant="gating"), "exclusive_gating, shortcut_gating"),
    (dict(arch="residual", shortcut_variant="scaling", gate_bias=-6), "gate_bias applies to"),
    (dict(arch="residual", shortcut_variant="conv1x1", shortcut="A"), "option C"),
    (dict(arch="residual", shortcut_variant="dropout", shortcut_dropout=1.0), r"\[0, 1\)"),
])
def test_bad_variant_arguments_say_what_is_valid(kwargs, match):
    arch = kwargs.pop("arch")
    with pytest.raises(ValueError, match=match):
        build_model(arch, 20, dataset="cifar", **kwargs)


def test_cifar_bottlenecks_stride_their_first_1x1_conv_as_p2s_code_unless_asked():
    default = build_model("preact", 164, dataset="cifar")
    assert default.layer2[0].conv1.stride == (2, 2) and default.layer2[0].conv2.stride == (1, 1)
    other = build_model("preact", 164, dataset="cifar", stride_in_1x1=False)
    assert other.layer2[0].conv1.stride == (1, 1) and other.layer2[0].conv2.stride == (2, 2)
    assert build_model("residual", 50).layer2[0].conv2.stride == (2, 2)  # imagenet: v1.5
