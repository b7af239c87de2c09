"""What the benchmarks share: interleaved timing, the decoders they compare against, and the
results files (JSON for machines, Markdown with the command that made them for people)."""

from __future__ import annotations

import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from PIL import Image


def rounds(paths: dict, repeats: int, warmup: int = 0,
           clock=time.perf_counter) -> dict[str, list[float]]:
    """The rate (items/s) of each path in each of ``repeats`` rounds, each round running every
    path once: interleaved, so that a slow spell of this shared machine hits all paths alike. A
    path is a function returning how many items it processed. ``warmup`` untimed rounds go
    first, to leave out what a process pays once (imports, caches, first allocations).

    ``clock``: wall time, or ``time.process_time`` (this process's CPU seconds, all its threads)
    for in-process work on a machine other jobs share: a core taken away for a while stretches
    the wall time of a path but not the CPU time it needs."""
    for _ in range(warmup):
        for fn in paths.values():
            fn()
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            t = clock()
            n = fn()
            rates[name].append(n / (clock() - t))
    return rates


def timed(paths: dict, repeats: int) -> dict[str, float]:
    """Best rate of each path over interleaved ``rounds``."""
    return {name: max(r) for name, r in rounds(paths, repeats).items()}


def paired_ratio(a: list[float], b: list[float]) -> dict[str, float]:
    """``a / b`` round by round: median, lowest and highest. Two paths run seconds apart in the
    same round share that moment's speed of the machine, which drifts by 20-30% over minutes
    here; a ratio of each path's best rate pairs figures from different moments instead."""
    r = sorted(x / y for x, y in zip(a, b))
    mid = len(r) // 2
    median = r[mid] if len(r) % 2 else (r[mid - 1] + r[mid]) / 2
    return {"median": median, "low": r[0], "high": r[-1]}


def decode_pil(files: list[bytes]) -> int:
    """Decode only: ``Image.open(...).convert("RGB")``, pixels loaded."""
    for data in files:
        Image.open(io.BytesIO(data)).convert("RGB").load()
    return len(files)


def decode_torchvision(files: list[bytes]) -> int:
    """Decode only: torchvision's libjpeg-turbo binding into a tensor."""
    from torchvision.io import decode_jpeg

    for data in files:
        decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return len(files)


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
            f"torch {torch.__version__}")


def command(script: str) -> str:
    """The command line that ran this benchmark, for its results file."""
    return " ".join([".venv/bin/python", script] + sys.argv[1:])


def write_results(out: Path, name: str, result: dict, lines: list[str]) -> None:
    """``out/name.json`` and ``out/name.md``, and the Markdown printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
