"""Training-step throughput: depthlab's step beside a torchvision-reference-style step.

    .venv/bin/python bench/train_step.py [--device cpu|cuda] [--model cifar:20 imagenet:18@64 ...]
                                         [--batch 128] [--precision fp32|bf16] [--steps 30]

Synthetic data already on the device, single process, the same model, batch and precision for
both loops; rounds alternate between the two so drift in the machine hits both alike.
- depthlab: ``training.loop.train_step``: uint8 batch normalised on the device, channels_last,
  bf16 autocast when asked, ``zero_grad(set_to_none=True)``, metrics accumulated on the device.
- reference: written the way torchvision's references/classification/train.py does it: a float
  batch already normalised, NCHW contiguous, ``loss.item()`` and a top-1/top-5 accuracy on the
  host every step (its MetricLogger), autocast when asked.
On a GPU it also reports the achieved fraction of the card's measured bf16 matmul rate.
depthlab's step runs twice, with channels_last and with contiguous memory: which layout is
faster on a device is what ``training.config.CHANNELS_LAST_BY_DEVICE`` records (a model is
``family:depth`` or ``family:depth@pixels``: ``imagenet:18@64`` is an ImageNet-family net at
64 pixels, the size a CPU can train).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from training.config import TrainConfig  # noqa: E402
from training.context import WorkerContext  # noqa: E402
from training.metrics import Accumulator  # noqa: E402
from training.models import build_model, model_summary  # noqa: E402
from training.loop import train_step  # noqa: E402
from training.data.transforms import normalize  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_step(model, optimizer, x, y, autocast):
    with autocast:
        output = model(x)
        loss = F.cross_entropy(output, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    # torchvision's utils.accuracy + MetricLogger.update(loss=loss.item(), acc1=..., acc5=...)
    with torch.no_grad():
        _, pred = output.topk(5, 1, True, True)
        correct = pred.t().eq(y.view(1, -1).expand_as(pred.t()))
        acc1 = correct[:1].reshape(-1).float().sum() * 100.0 / len(y)
        acc5 = correct[:5].reshape(-1).float().sum() * 100.0 / len(y)
    return loss.item(), acc1.item(), acc5.item()


def matmul_rate(device, dtype) -> float:
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 5
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def bench(spec: str, args, device) -> dict:
    family, rest = spec.split(":")
    depth, _, pixels = rest.partition("@")
    dataset = "cifar" if family == "cifar" else "imagenet"
    size = int(pixels) if pixels else (32 if dataset == "cifar" else 224)
    cfgs = {layout: TrainConfig(arch="residual", depth=int(depth), family=dataset, image_size=size,
                                precision=args.precision, global_batch_size=args.batch,
                                augment="cifar" if dataset == "cifar" else "imagenet",
                                channels_last=layout == "channels_last", data_url="unused")
            for layout in ("channels_last", "contiguous")}
    torch.manual_seed(0)
    ours = {"channels_last": build_model("residual", int(depth), dataset=dataset).to(device)
            .to(memory_format=torch.channels_last)}
    ours["contiguous"] = build_model("residual", int(depth), dataset=dataset).to(device)
    ref = build_model("residual", int(depth), dataset=dataset).to(device)
    ours["contiguous"].load_state_dict(ours["channels_last"].state_dict())
    ref.load_state_dict(ours["channels_last"].state_dict())
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
            for k, m in ours.items()}
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    classes = ref.fc.out_features
    images = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, classes, (args.batch,), device=device)
    x_ref = normalize(images).contiguous()
    ctx = WorkerContext(device=device)
    acc = Accumulator(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def ours_with(layout):
        def run(n):
            for _ in range(n):
                train_step(ours[layout], opts[layout], images, labels, cfgs[layout], ctx, acc)
            acc.result(distributed=False)  # what a log point costs, once per round
        return run

    def run_ref(n):
        for _ in range(n):
            reference_step(ref, opt_ref, x_ref, labels, autocast)

    paths = {"channels_last": ours_with("channels_last"), "contiguous": ours_with("contiguous"),
             "reference": run_ref}
    for fn in paths.values():  # warm-up
        fn(3)
    rates = {k: [] for k in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            sync(device)
            t = time.perf_counter()
            fn(args.steps)
            sync(device)
            rates[name].append(args.steps * args.batch / (time.perf_counter() - t))
    out = {k: statistics.median(v) for k, v in rates.items()}
    out["depthlab"] = max(out["channels_last"], out["contiguous"])
    out["faster_layout"] = "channels_last" if out["channels_last"] >= out["contiguous"] else "contiguous"
    out["layout_ratio"] = out["channels_last"] / out["contiguous"]
    out["ratio"] = out["depthlab"] / out["reference"]
    macs = model_summary(build_model("residual", int(depth), dataset=dataset), size)["macs"]
    # A training step costs about 3x the forward multiply-adds, 2 FLOPs each.
    out["achieved_tflops"] = out["depthlab"] * 6 * macs / 1e12
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", action="append", help="family:depth, e.g. cifar:20 or imagenet:50")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--tag", default="", help="suffix of the result files")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    models = args.model or ["cifar:20", "cifar:56", "imagenet:18@64"]
    results = {m: bench(m, args, device) for m in models}
    peak = matmul_rate(device, torch.bfloat16 if args.precision == "bf16" else torch.float32)
    for r in results.values():
        r["fraction_of_matmul_rate"] = r["achieved_tflops"] * 1e12 / peak
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    record = {"device": f"{device.type}: {name}", "threads": torch.get_num_threads(),
              "batch": args.batch, "precision": args.precision, "steps_per_round": args.steps,
              "rounds": args.rounds, "matmul_tflops": peak / 1e12, "results": results,
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"{device.type}-{args.precision}"
    (args.out / f"train_step-{tag}.json").write_text(json.dumps(record, indent=1))
    lines = [f"# Training step throughput ({record['device']}, {args.precision}, batch {args.batch})", "",
             f"`.venv/bin/python bench/train_step.py {' '.join(sys.argv[1:])}`, torch {torch.__version__}, "
             f"{record['threads']} threads, {record['date']}; median of {args.rounds} alternating rounds "
             f"of {args.steps} steps. Measured {args.precision} matmul rate: {peak / 1e12:.2f} TFLOP/s.", "",
             "| model | depthlab, channels_last | depthlab, contiguous | faster | reference img/s | depthlab / reference | fraction of matmul rate |",
             "|---|---|---|---|---|---|---|"]
    for m, r in results.items():
        lines.append(f"| {m} | {r['channels_last']:.0f} | {r['contiguous']:.0f} | "
                     f"{r['faster_layout']} ({r['layout_ratio']:.2f}) | {r['reference']:.0f} | "
                     f"{r['ratio']:.2f} | {r['fraction_of_matmul_rate']:.0%} |")
    (args.out / f"train_step-{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
