"""The prepared GPU check: what one GPU does with depthlab's code, in a few minutes.

    python bench/gpu_check.py                      # on a GPU machine: one call, under 8 minutes
    python bench/gpu_check.py --device cpu --quick # the same code paths on a CPU (CI, tests)

Uses only the project's training code, torch and torchvision (a GPU machine may have no Ray,
MLflow or webdataset). Three measurements:
(a) ResNet-50 v1.5 at batch 256, bf16 autocast, channels_last, synthetic data on the device,
    through depthlab's training step: images/s eager and with torch.compile, and the fraction
    of the card's measured bf16 matmul rate (6 FLOPs per multiply-add, forward and backward);
(b) the loader on ImageNet-sized JPEGs (500x375) from local shards this script builds:
    images/s of one loader process at 224 with the RandomResizedCrop recipe, and so the loader
    processes one GPU needs at (a)'s rate;
(c) the real training loop (``training.loop.train``) for ``--steps`` steps from those shards:
    images/s end to end against (a)'s eager rate, and the loop's own perf/data_wait_fraction.
Targets on an H100/H200: ResNet-50 >= 3,000 images/s; end to end >= 90% of synthetic.
Writes ``gpu_check-<device>.md`` and ``.json`` to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from training.config import TrainConfig  # noqa: E402
from training.context import NullTracker, WorkerContext  # noqa: E402
from training.data import build_loader  # noqa: E402
from training.loop import train, train_step  # noqa: E402
from training.metrics import Accumulator  # noqa: E402
from training.models import build_model, model_summary  # noqa: E402

TARGET_IMAGES_PER_S, TARGET_END_TO_END = 3000.0, 0.90


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: torch.device, quick: bool) -> float:
    """The card's bf16 matrix-product rate (FLOP/s), measured."""
    n = 1024 if quick else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 5 if quick else 50
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def synthetic(cfg: TrainConfig, device: torch.device, steps: int, compile_: bool) -> float:
    """(a): images/s of depthlab's training step on a batch already on the device."""
    torch.manual_seed(0)
    model = build_model(cfg.arch, cfg.depth, dataset=cfg.family).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    net = torch.compile(model) if compile_ else model
    images = torch.randint(0, 256, (cfg.global_batch_size, 3, cfg.image_size, cfg.image_size),
                           dtype=torch.uint8, device=device)
    labels = torch.randint(0, 1000, (cfg.global_batch_size,), device=device)
    ctx, acc = WorkerContext(device=device), Accumulator(device)
    for _ in range(3 if compile_ else 2):  # warm-up (and compilation)
        train_step(net, optimizer, images, labels, cfg, ctx, acc)
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        train_step(net, optimizer, images, labels, cfg, ctx, acc)
    acc.result(False)  # waits for the device, as the loop's log points do
    sync(device)
    return steps * cfg.global_batch_size / (time.perf_counter() - t)


def _jpeg(args) -> tuple[str, bytes]:
    """One 500x375 photo-like JPEG: smooth colour fields, edges and noise (a few KB of
    entropy per block, as natural images have)."""
    index, width, height = args
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(30, 200)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        img += blob * rng.uniform(-120, 120, 3)
    img += 128 + rng.normal(0, 12, img.shape)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return f"c{index % 10:03d}", buf.getvalue()


def build_data(folder: Path, images: int, size: tuple[int, int], repeats: int) -> str:
    """An ImageNet-layout folder of generated JPEGs, sharded like real data; the training
    manifest lists the shards ``repeats`` times (hard links) so one epoch outlasts the loop."""
    from orchestrator.shards import build_split

    root = folder / "images"
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        for split, count, offset in (("train", images, 0), ("val", max(images // 10, 64), 10**6)):
            for i, (cls, data) in enumerate(pool.map(_jpeg, [(offset + k, *size) for k in range(count)],
                                                     chunksize=16)):
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                (root / split / cls / f"{cls}_{offset + i}.JPEG").write_bytes(data)
    shards = folder / "shards"
    for split in ("train", "val"):
        build_split(root, str(shards), split, shard_size=500, workers=os.cpu_count() or 2)
    manifest_path = shards / "train" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entries = list(manifest["shards"])
    for r in range(1, repeats):
        for e in manifest["shards"]:
            name = e["name"].replace(".tar", f"-r{r:02d}.tar")
            os.link(shards / "train" / e["name"], shards / "train" / name)
            entries.append({**e, "name": name})
    manifest.update(shards=entries, num_samples=sum(e["num_samples"] for e in entries))
    manifest_path.write_text(json.dumps(manifest))
    return str(shards)


def loader_rate(data_url: str, batch: int, image_size: int, batches: int) -> float:
    """(b): images/s of one loader process (in this process) on the training recipe."""
    loader = build_loader(data_url, "train", batch_size=batch, image_size=image_size,
                          augment="imagenet", loader_workers=0)
    it = iter(loader)
    next(it)  # the first shard's arrival and the shuffle buffer's first fill
    t, n = time.perf_counter(), 0
    for _ in range(batches):
        images, _ = next(it)
        n += len(images)
    return n / (time.perf_counter() - t)


class Recorder(NullTracker):
    def __init__(self):
        self.points: list[dict] = []

    def log_metrics(self, metrics, step):
        self.points.append(dict(metrics))


def end_to_end(cfg: TrainConfig, device: torch.device) -> tuple[float, float]:
    """(c): images/s of the real loop from the shards (the median of its logging windows, the
    start-up window left out) and its median data-wait fraction."""
    rec = Recorder()
    train(cfg, WorkerContext(device=device, tracker=rec))
    rates = [p["throughput/images_per_sec"] for p in rec.points if "throughput/images_per_sec" in p][1:]
    waits = [p["perf/data_wait_fraction"] for p in rec.points if "perf/data_wait_fraction" in p][1:]
    return statistics.median(rates), statistics.median(waits)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes: the code paths in minutes")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile figure")
    p.add_argument("--steps", type=int, help="steps of the end-to-end loop (default 200)")
    p.add_argument("--loader-workers", type=int, help="loader processes of the end-to-end loop")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --device cpu --quick", file=sys.stderr)
        return 2
    quick = args.quick
    # Quick: ResNet-18 at 112 pixels and a handful of steps; the full check: ResNet-50 at 224.
    depth, batch, size = (18, 8, 112) if quick else (50, 256, 224)
    steps = args.steps or (6 if quick else 200)
    cpus = os.cpu_count() or 2
    started = time.perf_counter()
    base = TrainConfig(arch="residual", depth=depth, family="imagenet", image_size=size,
                       augment="imagenet", global_batch_size=batch, precision="bf16",
                       channels_last=True, use_gpu=device.type == "cuda", layer_responses="off",
                       system_metrics=False)
    print(f"gpu_check on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}), "
          f"{cpus} CPUs, torch {torch.__version__}", flush=True)
    rate = matmul_rate(device, quick)
    macs = model_summary(build_model("residual", depth, dataset="imagenet"), size)["macs"]
    eager = synthetic(base, device, 3 if quick else 30, compile_=False)
    print(f"  (a) ResNet-{depth} eager: {eager:,.0f} images/s", flush=True)
    compiled = None if args.no_compile else synthetic(base, device, 3 if quick else 30, compile_=True)
    if compiled:
        print(f"  (a) ResNet-{depth} compiled: {compiled:,.0f} images/s", flush=True)
    best = max(eager, compiled or 0)
    with tempfile.TemporaryDirectory(prefix="depthlab-gpu-check-") as tmp:
        images = 256 if quick else 4000
        img_size = (250, 188) if quick else (500, 375)
        repeats = max(1, -(-(steps + 2) * batch // images))
        data_url = build_data(Path(tmp), images, img_size, repeats)
        print(f"  data: {images} JPEGs of {img_size[0]}x{img_size[1]} in local shards", flush=True)
        per_process = loader_rate(data_url, 32 if quick else 128, size, 4 if quick else 12)
        needed = -(-best // per_process)
        print(f"  (b) one loader process: {per_process:,.0f} images/s; {needed:.0f} per GPU at "
              f"(a)'s rate", flush=True)
        workers = args.loader_workers or int(max(1, min(cpus - 2, needed + 2)))
        cfg = base.replace(data_url=data_url, max_steps=steps, loader_workers=workers,
                           log_every_steps=max(1, steps // 10), epochs=1)
        e2e, wait = end_to_end(cfg, device)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"  (c) end to end, {workers} loader processes: {e2e:,.0f} images/s, data wait "
          f"{wait:.0%}", flush=True)
    result = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpus": cpus, "torch": torch.__version__, "quick": quick, "model": f"resnet{depth} v1.5",
        "batch": batch, "image_size": size, "bf16_matmul_tflops": rate / 1e12,
        "synthetic_eager_images_per_s": eager, "synthetic_compiled_images_per_s": compiled,
        "fraction_of_matmul_rate": best * 6 * macs / rate,
        "loader_images_per_s_per_process": per_process, "loader_processes_per_gpu": needed,
        "end_to_end_images_per_s": e2e, "end_to_end_loader_processes": workers,
        "end_to_end_over_synthetic": e2e / eager, "end_to_end_data_wait_fraction": wait,
        "wall_s": time.perf_counter() - started, "date": time.strftime("%Y-%m-%d"),
    }
    lines = [f"# GPU check ({result['device_name']}{', quick' if quick else ''})", "",
             f"`python bench/gpu_check.py {' '.join(sys.argv[1:] if argv is None else argv)}`, "
             f"{result['date']}, torch {torch.__version__}, {cpus} CPUs; ResNet-{depth} v1.5, batch "
             f"{batch}, {size}x{size}, bf16, channels_last; {result['wall_s']:.0f} s in all.", "",
             "| measurement | value | target |", "|---|---|---|",
             f"| bf16 matmul rate | {rate / 1e12:,.1f} TFLOP/s | - |",
             f"| (a) synthetic, eager | {eager:,.0f} images/s | >= {TARGET_IMAGES_PER_S:,.0f} (H100/H200, ResNet-50) |",
             f"| (a) synthetic, torch.compile | {'-' if compiled is None else f'{compiled:,.0f} images/s'} | - |",
             f"| (a) fraction of the matmul rate | {result['fraction_of_matmul_rate']:.0%} | - |",
             f"| (b) one loader process, RandomResizedCrop {size} | {per_process:,.0f} images/s | - |",
             f"| (b) loader processes per GPU at (a)'s rate | {needed:.0f} | - |",
             f"| (c) end to end from shards ({workers} loader processes) | {e2e:,.0f} images/s | - |",
             f"| (c) end to end / synthetic eager | {e2e / eager:.0%} | >= {TARGET_END_TO_END:.0%} |",
             f"| (c) data wait (perf/data_wait_fraction) | {wait:.0%} | - |"]
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"gpu_check-{device.type}{'-quick' if quick else ''}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
