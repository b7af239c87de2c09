"""What a run's numbers depend on besides its config, seed and data: the libraries and the
processor. A seed gives the same numbers on the same software and hardware; elsewhere float
rounding (another instruction set, another torch build) can part two runs within an epoch. The
worker records these as tags of its MLflow run, so two runs that differ can be told apart.
"""

from __future__ import annotations

import platform
from importlib import metadata

import torch


def cpu_model() -> str:
    """The processor's model name (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def environment_tags(device: torch.device) -> dict[str, str]:
    """MLflow tags (``depthlab.env.*``) of the software and hardware a run trains on."""
    accelerator = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "depthlab.env.python": platform.python_version(),
        "depthlab.env.torch": torch.__version__,
        "depthlab.env.numpy": _version("numpy"),
        "depthlab.env.pillow": _version("pillow"),
        "depthlab.env.cpu": cpu_model(),
        "depthlab.env.device": accelerator,
        "depthlab.env.threads": str(torch.get_num_threads()),
    }
