import pytest
import torch
import torchvision

from training.models import (ARCHS, CIFAR_PAPER_DEPTHS, IMAGENET_DEPTHS, build_model,
                             model_summary, resolve_spec)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# [P1] Table 6 (CIFAR-10, option A), [P2] (bottlenecks with projections), in millions.
CIFAR_PARAMS = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}


@pytest.mark.parametrize("depth,millions", CIFAR_PARAMS.items())
def test_cifar_parameter_counts_match_the_paper(depth, millions):
    counts = {arch: n_params(build_model(arch, depth, dataset="cifar")) for arch in ("plain", "residual")}
    # Option A shortcuts have no parameters: plain nets and their residual twins are equal.
    assert counts["plain"] == counts["residual"]
    assert counts["residual"] / 1e6 == pytest.approx(millions, abs=0.035 if depth < 1000 else 0.05)


@pytest.mark.parametrize("depth,millions", [(164, 1.7), (1001, 10.2)])
def test_preact_bottleneck_cifar_counts_match_p2(depth, millions):
    model = build_model("preact", depth, dataset="cifar")
    assert model.spec.block == "bottleneck"
    assert n_params(model) / 1e6 == pytest.approx(millions, abs=0.15)


# [P1] Table 1 multiply-adds at 224x224 (v1 bottleneck: stride in the first 1x1 conv).
IMAGENET_MACS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}


@pytest.mark.parametrize("depth,gmacs", IMAGENET_MACS.items())
def test_imagenet_multiply_adds_match_table1(depth, gmacs):
    model = build_model("residual", depth, stride_in_1x1=True)
    assert model_summary(model)["macs"] / 1e9 == pytest.approx(gmacs, rel=0.03)


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_residual_b_v15_loads_torchvision_weights(depth):
    reference = getattr(torchvision.models, f"resnet{depth}")()
    model = build_model("residual", depth)
    model.load_state_dict(reference.state_dict(), strict=True)
    assert n_params(model) == n_params(reference)
    if depth == 18:
        x = torch.randn(2, 3, 64, 64)
        model.eval(), reference.eval()
        torch.testing.assert_close(model(x), reference(x))


SMALL = [(arch, "cifar", d) for arch in ARCHS for d in (8, 11, 14)] + \
        [(arch, "imagenet", d) for arch in ARCHS for d in (18, 50)]


@pytest.mark.parametrize("arch,dataset,depth", SMALL)
def test_forward_shape_and_backward_reaches_every_parameter(arch, dataset, depth):
    torch.manual_seed(0)
    model = build_model(arch, depth, dataset=dataset, num_classes=7)
    size = 16 if dataset == "cifar" else 64
    x = torch.randn(3, 3, size, size)
    out = model(x)
    assert out.shape == (3, 7)
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


REGISTRY = [(arch, "imagenet", d) for arch in ARCHS for d in IMAGENET_DEPTHS] + \
           [(arch, "cifar", d) for arch in ARCHS for d in CIFAR_PAPER_DEPTHS]


@pytest.mark.parametrize("arch,dataset,depth", REGISTRY)
def test_every_network_of_the_papers_runs_forward_and_backward(arch, dataset, depth):
    # Tiny inputs keep the 1001- and 1202-layer nets at about two seconds each.
    model = build_model(arch, depth, dataset=dataset, num_classes=5)
    out = model(torch.randn(2, 3, *(2 * (32 if dataset == "imagenet" else 8,))))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("shortcut", ["A", "B", "C"])
def test_shortcut_options_order_parameter_counts(shortcut):
    counts = {s: n_params(build_model("residual", 20, dataset="cifar", shortcut=s)) for s in "ABC"}
    assert counts["A"] < counts["B"] < counts["C"]


def test_stride_in_1x1_moves_the_stride():
    v1 = build_model("residual", 50, stride_in_1x1=True)
    v15 = build_model("residual", 50)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)


def test_preact_structure_follows_p2():
    model = build_model("preact", 20, dataset="cifar")
    first = model.layer1[0]
    # The first unit takes the stem's activation; a unit where dimensions grow pre-activates
    # its projection's input too; the others only their residual path.
    assert first.pre == () and not hasattr(first, "bn1")
    assert model.layer2[0].pre == ("bn1", "relu") and model.layer2[0].project_preactivated
    assert model.layer1[1].pre == ("bn1", "relu") and not model.layer1[1].project_preactivated
    assert model.final_bn is not None and model.final_relu


def test_channels_last_and_bf16_autocast():
    model = build_model("preact", 14, dataset="cifar").to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(arch="dense", depth=20, dataset="cifar"),
     "plain, residual, bn_after_add, relu_before_add, relu_preact, preact"),
    (dict(arch="plain", depth=19), "18, 34, 50, 101, 152, 200"),
    (dict(arch="plain", depth=18, dataset="cifar"), "6n\\+2"),
    (dict(arch="plain", depth=20, dataset="mnist"), "imagenet, cifar"),
    (dict(arch="plain", depth=20, dataset="cifar", shortcut="D"), "A, B, C"),
    (dict(arch="plain", depth=20, dataset="cifar", width=2), "valid options"),
])
def test_bad_arguments_name_the_valid_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_spec(**kwargs)


def test_depth_tables_are_complete():
    assert sorted(IMAGENET_DEPTHS) == [18, 34, 50, 101, 152, 200]
    assert resolve_spec("plain", 20, dataset="cifar").block == "basic"
    assert resolve_spec("plain", 164, dataset="cifar").block == "bottleneck"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["residual", "preact"])
def test_torch_compile_matches_eager(arch):
    torch.manual_seed(0)
    model = build_model(arch, 8, dataset="cifar").eval()
    x = torch.randn(4, 3, 16, 16)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_cifar_summary_counts_multiply_adds_at_32px():
    s = model_summary(build_model("residual", 20, dataset="cifar"))
    # ResNet-20: about 41M multiply-adds per 32x32 image (the usual figure, e.g. in pytorch_resnet_cifar10).
    assert s["image_size"] == 32 and s["macs"] / 1e6 == pytest.approx(41, rel=0.03)


@pytest.mark.parametrize("depth", [18, 34])
def test_imagenet_plain_nets_have_the_parameters_of_their_option_a_twins(depth):
    # [P1] Table 2 compares plain-18/34 with ResNet-18/34 using option A: "no extra parameter".
    plain = build_model("plain", depth)
    residual = build_model("residual", depth, shortcut="A")
    assert n_params(plain) == n_params(residual)
