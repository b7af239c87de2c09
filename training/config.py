"""The configuration of one training run: built once on the driver, rebuilt from a plain dict
as the first line of every worker, logged as MLflow params and stored in every checkpoint."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from training.models import VARIANT_DEFAULTS, resolve_spec
from training.data.transforms import AUGMENTS

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    # What is trained.
    arch: str = "residual"
    depth: int = 20
    family: str = "cifar"  # the model family: "cifar" or "imagenet" ([P1] Sec. 4.2 / 3.4)
    shortcut: str | None = None  # None: the family's default (A for cifar, B for imagenet)
    # None: the family's default (imagenet: stride on the 3x3 conv, torchvision's v1.5; cifar
    # bottlenecks: on the first 1x1 conv, as [P2]'s code).
    stride_in_1x1: bool | None = None
    zero_init_residual: bool = False
    # [P2] Fig. 2 / Table 1 on the original unit; each variant reads only its own options
    # (None: training.models.VARIANT_DEFAULTS).
    shortcut_variant: str = "identity"
    shortcut_scale: float | None = None  # scaling: the factor on the shortcut
    branch_scale: float | None = None  # scaling: the factor on the residual branch
    gate_bias: float | None = None  # exclusive_gating, shortcut_gating: b_g's initial value
    shortcut_dropout: float | None = None  # dropout: the ratio on the shortcut's output
    num_classes: int | None = None  # None: the number of classes in the data's manifest
    seed: int = 0
    # Data.
    data_url: str = "s3://depthlab/demo-data"
    image_size: int = 32
    augment: str = "cifar"
    eval_crops: int = 1  # 1: single center crop; 10: the paper's 10-crop testing
    eval_split: str = "val"  # the split each evaluation reads ("holdout" for a tune run)
    loader_workers: int = 0  # DataLoader worker processes per training worker
    # Optimisation ([P1] 3.4 / 4.2: SGD, momentum 0.9, weight decay 1e-4, lr 0.1 with step decay).
    recipe: str = ""  # a preset of training.recipes that filled these values (a record)
    epochs: int = 10
    max_steps: int = 0  # stop after this many iterations (0: epochs x steps per epoch)
    global_batch_size: int = 128
    world_size: int = 1  # DDP workers of the run (the cluster's workers_per_run)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "step"  # "step": drops at lr_milestones; "plateau": when val error stalls
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the run where lr drops
    lr_gamma: float = 0.1
    plateau_patience: int = 5  # evaluations without improvement before a plateau drop
    lr_reference_batch: int = 0  # linear scaling: lr x global_batch / this (0: no scaling)
    warmup_steps: int = 0
    warmup_lr: float = 0.01  # [P1]/[P2]: a constant 0.01 before the first step at full lr
    warmup: str = "constant"  # "constant" (the papers) or "linear" (Goyal et al., large batches)
    no_bn_weight_decay: bool = False  # no weight decay on BN parameters and biases
    # Execution.
    use_gpu: bool = False
    precision: str = "fp32"
    channels_last: bool | None = None  # None: the faster layout for the device (below)
    compile: bool = False  # torch.compile the model
    ddp_bucket_cap_mb: int = 25
    log_every_steps: int = 10
    checkpoint_every_steps: int = 0  # extra checkpoints inside an epoch (0: at epoch ends only)
    log_model: bool = False  # log the final model to MLflow (with its signature)
    # [P1] Fig. 7's layer responses, measured during an evaluation: "end" (the last one),
    # "every_eval" or "off" (training.responses).
    layer_responses: str = "end"
    system_metrics: bool = True  # CPU, GPU and memory of rank 0's node, in MLflow
    # Tracking (filled by the orchestrator; empty in a plain single process).
    mlflow_run_id: str = ""
    run_name: str = ""
    variant: str = ""  # the sweep grid's variant this run belongs to ("" when none), a record

    def __post_init__(self):
        # Lists from YAML become tuples so the config stays hashable and immutable.
        try:
            milestones = tuple(float(m) for m in self.lr_milestones)
        except (TypeError, ValueError):
            raise ValueError(f"lr_milestones must be a list of fractions, got {self.lr_milestones!r}") from None
        object.__setattr__(self, "lr_milestones", milestones)
        check_types(self)
        validate(self)

    @property
    def per_worker_batch_size(self) -> int:
        return self.global_batch_size // self.world_size

    def model_options(self) -> dict:
        """The options of ``training.models.build_model`` this config sets."""
        opts = {"zero_init_residual": self.zero_init_residual}
        if self.shortcut:
            opts["shortcut"] = self.shortcut
        if self.stride_in_1x1 is not None:
            opts["stride_in_1x1"] = self.stride_in_1x1
        if self.shortcut_variant != "identity":
            opts["shortcut_variant"] = self.shortcut_variant
        for name in VARIANT_DEFAULTS:
            if getattr(self, name) is not None:
                opts[name] = getattr(self, name)
        return opts

    def resolved_net(self):
        """The network's structure (``training.models.NetSpec``), defaults filled in."""
        return resolve_spec(self.arch, self.depth, dataset=self.family, **self.model_options())

    def resolved_shortcut(self) -> str:
        return self.resolved_net().shortcut

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = renamed_keys(d)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(
                f"unknown training setting(s) {unknown}; valid: "
                f"{', '.join(f.name for f in dataclasses.fields(cls))}"
            )
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# The memory layout each device trains faster in, as bench/train_step.py measures it
# (depthlab's step with each layout, same model and batch): CUDA convolutions want
# channels_last, and on x86 CPUs it is faster for both CIFAR and ImageNet-family nets.
CHANNELS_LAST_BY_DEVICE = {"cuda": True, "cpu": True}


def uses_channels_last(cfg: "TrainConfig", device_type: str) -> bool:
    """The config's layout, or the device's faster one when the config leaves it open."""
    if cfg.channels_last is not None:
        return cfg.channels_last
    return CHANNELS_LAST_BY_DEVICE.get(device_type, False)


# Settings that do not change what a run computes: how often it logs and checkpoints, what it
# records, how its data is fed and laid out in memory. A resumed run or a resubmitted sweep may
# change them; any other change would mix two computations in one result.
RESULT_NEUTRAL = frozenset({
    "log_every_steps", "checkpoint_every_steps", "log_model", "system_metrics",
    "layer_responses", "loader_workers", "ddp_bucket_cap_mb", "channels_last", "compile",
    "mlflow_run_id", "run_name", "variant", "recipe"})


def config_changes(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """``(key, old value, new value)`` for each setting that changes what the run computes."""
    old, new = renamed_keys(old, quiet=True), renamed_keys(new, quiet=True)
    out = []
    for key in sorted(set(old) | set(new)):
        if key in RESULT_NEUTRAL:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            a, b = list(a or []), list(b or [])
        if a != b:
            out.append((key, old.get(key), new.get(key)))
    return out


# Keys that changed name: the old one still works for a version, with a one-line message.
RENAMED = {"dataset": "family", "num_workers": "world_size"}
_told: set[str] = set()


def renamed_keys(d: dict, where: str = "train.", quiet: bool = False) -> dict:
    """``d`` with renamed keys under their new names (an old checkpoint's config, a spec)."""
    out = dict(d)
    for old, new in RENAMED.items():
        if old in out:
            if new in out:
                raise ValueError(f"{where}{old} is the old name of {where}{new}: give only {new}")
            out[new] = out.pop(old)
            if not quiet and old not in _told:
                _told.add(old)
                print(f"note: {where}{old} is now {where}{new}; the old name will stop working "
                      "in the next version", file=sys.stderr)
    return out


_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def check_types(obj, where: str = "") -> None:
    """Each field of the dataclass ``obj`` has the type it declares (YAML and ``--set`` give
    strings for typos such as ``lr=1e-1x``): a clear message instead of a TypeError deep in the
    arithmetic. ``where`` prefixes the field's name in the message."""
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), str(f.type)
        if kind.endswith(" | None"):
            if value is None:
                continue
            kind = kind[: -len(" | None")]
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool),
              "bool": isinstance(value, bool),
              "str": isinstance(value, str)}.get(kind, True)
        if not ok:
            raise ValueError(f"{where}{f.name} must be {_KINDS[kind]}, got {value!r}")


def validate(cfg: TrainConfig) -> None:
    """Raise ValueError with one clear message for an impossible configuration."""
    resolve_spec(cfg.arch, cfg.depth, dataset=cfg.family, **cfg.model_options())
    if cfg.augment not in AUGMENTS:
        raise ValueError(f"unknown augment {cfg.augment!r}: choose one of {', '.join(AUGMENTS)}")
    if cfg.lr_schedule not in ("step", "plateau"):
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}: choose step or plateau")
    if cfg.layer_responses not in ("off", "end", "every_eval"):
        raise ValueError(f"unknown layer_responses {cfg.layer_responses!r}: choose off, end or "
                         "every_eval")
    if cfg.warmup not in ("constant", "linear"):
        raise ValueError(f"unknown warmup {cfg.warmup!r}: choose constant or linear")
    if min(cfg.max_steps, cfg.checkpoint_every_steps, cfg.lr_reference_batch) < 0:
        raise ValueError("max_steps, checkpoint_every_steps and lr_reference_batch must be >= 0")
    if cfg.eval_crops not in (1, 10):
        raise ValueError(f"eval_crops must be 1 or 10, got {cfg.eval_crops!r}")
    if cfg.eval_crops == 10 and cfg.augment == "cifar":
        raise ValueError("eval_crops=10 needs an imagenet augment (the crops come from a resize)")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {cfg.precision!r}: choose one of {PRECISIONS}")
    positive = ("epochs", "global_batch_size", "world_size", "image_size", "log_every_steps")
    for name in positive:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if cfg.global_batch_size % cfg.world_size:
        raise ValueError(
            f"global_batch_size {cfg.global_batch_size} is not divisible by the world size "
            f"{cfg.world_size} (cluster.workers_per_run)"
        )
    if cfg.lr <= 0 or cfg.warmup_lr < 0 or cfg.warmup_steps < 0 or cfg.loader_workers < 0:
        raise ValueError("lr must be positive; warmup_lr, warmup_steps, loader_workers >= 0")
    if any(not 0 < m < 1 for m in cfg.lr_milestones) or list(cfg.lr_milestones) != sorted(cfg.lr_milestones):
        raise ValueError(f"lr_milestones must be increasing fractions in (0, 1), got {cfg.lr_milestones}")
    if not cfg.eval_split or cfg.eval_split == "train":
        raise ValueError(f"eval_split must name a held-out split, got {cfg.eval_split!r}")
    if not cfg.data_url:
        raise ValueError("data_url is empty: give a local folder or s3://bucket/prefix")
