"""The experiment spec: a YAML file (plus ``--set`` overrides) -> one validated, frozen object.

    experiment: depthlab-demo          # the MLflow experiment
    data_name: synthetic-shapes        # what the data is (the report shows paper figures for
                                       # cifar10 and imagenet only)
    grid: {arch: [...], depth: [...], seed: [...],
           variant: [...]}                 # optional: model options varied like arch and depth,
                                       # e.g. [identity, {shortcut_variant: exclusive_gating,
                                       # gate_bias: -6}, {shortcut: B}]
    train: {...}                       # training.config.TrainConfig fields shared by every run
    cluster: {workers_per_run: 2, cpus_per_worker: 1, use_gpu: false, ...}
    tune: {lr: [0.02, 0.05, 0.1], split: holdout, seeds: [100]}   # optional: each net's lr,
                                       # chosen on a held-out split first (orchestrator.tuning)

``SweepSpec.runs()`` expands the grid into one ``TrainConfig`` per (arch, depth, variant, seed);
those configs are what the workers receive, what MLflow records and what the checkpoints store.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from training.config import TrainConfig, check_types, renamed_keys
from training.recipes import recipe_values

TOP_KEYS = ("experiment", "data_name", "grid", "train", "cluster", "tune", "report")
TUNE_KEYS = ("lr", "split", "seeds", "train")
GRID_KEYS = ("arch", "depth", "seed", "exclude", "variant")
# The model options a grid variant may set (training.config.TrainConfig fields).
VARIANT_KEYS = ("shortcut", "stride_in_1x1", "zero_init_residual", "shortcut_variant",
                "shortcut_scale", "branch_scale", "gate_bias", "shortcut_dropout")


def variant_name(options: dict) -> str:
    """A grid variant as the run names and the report show it: ``""`` for no options,
    ``shortcut=B``, ``exclusive_gating gate_bias=-6``, ``scaling shortcut_scale=0.5 ...``."""
    words = []
    for key in VARIANT_KEYS:
        if key not in options:
            continue
        value = options[key]
        if key == "shortcut_variant":
            if value != "identity" or len(options) == 1:
                words.insert(0, str(value))
        else:
            words.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(words)


def net_key(cfg: TrainConfig) -> str:
    """The net a run trains, whatever its seed: ``arch-depth[-variant]``."""
    return run_key(cfg.arch, cfg.depth, cfg.variant)


def run_key(arch: str, depth: int, variant: str) -> str:
    """``arch-depth`` and, with a variant, its name without spaces: the run's name before the
    seed, and what ``grid.exclude`` matches."""
    return f"{arch}-{depth}" + (f"-{variant.replace(' ', '-')}" if variant else "")


class SpecError(ValueError):
    """A spec a user wrote that cannot run: the message says what and where."""


@dataclass(frozen=True)
class ClusterSpec:
    workers_per_run: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    gpus_per_worker: float = 1.0
    max_concurrent_runs: int = 1
    max_failures: int = 1  # Ray Train restarts of a run from its last checkpoint
    storage_path: str = "s3://depthlab/ray-results"
    # Custom Ray resources each worker also takes: an accelerator type to pin a node kind
    # ({"accelerator_type:H100": 0.001}) or the local autoscaling demo's {"gpu_slot": 1}.
    resources_per_worker: dict = field(default_factory=dict)
    # What a node-hour costs, for the sweep's ledger (orchestrator.ledger): {node_type,
    # devices_per_node, on_demand_per_hour, spot_per_hour, market: on_demand | spot}.
    cost: dict = field(default_factory=dict)

    def __post_init__(self):
        try:
            check_types(self, "cluster.")
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        for name in ("workers_per_run", "max_concurrent_runs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"cluster.{name} must be a positive integer, got {value!r}")
        if self.use_gpu and not self.gpus_per_worker > 0:
            raise SpecError("cluster.gpus_per_worker must be > 0 when cluster.use_gpu is true")
        if self.cpus_per_worker <= 0 or self.max_failures < 0:
            raise SpecError("cluster.cpus_per_worker must be > 0 and cluster.max_failures >= 0")
        if not self.storage_path:
            raise SpecError("cluster.storage_path is empty: give s3://bucket/prefix or a folder")
        extra = self.resources_per_worker
        if not isinstance(extra, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                and v > 0 for k, v in extra.items()):
            raise SpecError("cluster.resources_per_worker must map resource names to positive "
                            f"numbers, got {extra!r}")
        if {"CPU", "GPU"} & set(extra):
            raise SpecError("cluster.resources_per_worker: set CPUs and GPUs with "
                            "cluster.cpus_per_worker and cluster.gpus_per_worker")
        if self.cost:
            from orchestrator.ledger import check_cost

            try:
                check_cost(self.cost)
            except ValueError as exc:
                raise SpecError(f"cluster.cost: {exc}") from None

    @property
    def devices_per_run(self) -> float:
        """What a run occupies in the ledger's unit: its GPUs, or its workers without GPUs."""
        return self.workers_per_run * (self.gpus_per_worker if self.use_gpu else 1)


@dataclass(frozen=True)
class TuneSpec:
    """Each net's learning rate, chosen among ``lr`` by the final error on ``split`` of runs
    with the tuning ``seeds`` (``train``: settings for those runs only, e.g. fewer epochs)."""

    lr: tuple[float, ...]
    split: str = "holdout"
    seeds: tuple[int, ...] = (1000,)
    train: dict = field(default_factory=dict)


def _target(raw) -> float | None:
    if raw is None:
        return None
    _check_keys(raw, ("target_error",), "report")
    value = raw.get("target_error")
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                              or not 0 < value < 100):
        raise SpecError(f"report.target_error must be an error in percent, got {value!r}")
    return None if value is None else float(value)


def _tune(raw) -> TuneSpec | None:
    if raw is None:
        return None
    _check_keys(raw, TUNE_KEYS, "tune")
    lrs = raw.get("lr") if isinstance(raw.get("lr"), list) else [raw.get("lr")]
    if not lrs or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                          for v in lrs):
        raise SpecError(f"tune.lr must list positive learning rates, got {raw.get('lr')!r}")
    seeds = raw.get("seeds", [1000])
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if not seeds or not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds):
        raise SpecError(f"tune.seeds must be integers, got {seeds}")
    try:
        train = renamed_keys(dict(raw.get("train") or {}))
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    _check_keys(train, [f.name for f in dataclasses.fields(TrainConfig)
                        if f.name not in ("arch", "depth", "seed", "lr", "eval_split",
                                          "world_size", "use_gpu", "mlflow_run_id",
                                          "run_name", "variant")], "tune.train")
    return TuneSpec(tuple(float(v) for v in dict.fromkeys(lrs)), str(raw.get("split", "holdout")),
                    tuple(seeds), train)


@dataclass(frozen=True)
class SweepSpec:
    experiment: str
    archs: tuple[str, ...]
    depths: tuple[int, ...]
    seeds: tuple[int, ...]
    train: dict = field(default_factory=dict)
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    data_name: str = ""
    # Run keys ("arch-depth", or "arch-depth-variant") of the grid that are not trained.
    exclude: tuple[str, ...] = ()
    # The grid's variants: each a tuple of (model option, value) pairs; () is "as train says".
    variants: tuple[tuple[tuple[str, object], ...], ...] = ((),)
    tune: TuneSpec | None = None
    # The validation error whose time-to-reach the report's cost table gives (None: the
    # paper's figure for each net, where the report has one).
    target_error: float | None = None

    def tune_runs(self) -> list[TrainConfig]:
        """The tune stage's runs: every net of the grid at each candidate rate and tuning seed,
        evaluated on the tuning split; none without a ``tune`` section."""
        if self.tune is None:
            return []
        nets = {}
        for cfg in self.runs():
            nets.setdefault(net_key(cfg), cfg)
        out = []
        for key, cfg in nets.items():
            for lr in self.tune.lr:
                for seed in self.tune.seeds:
                    try:
                        out.append(cfg.replace(**self.tune.train, lr=lr, seed=seed,
                                               eval_split=self.tune.split,
                                               run_name=f"tune-{key}-lr{lr:g}-s{seed}"))
                    except (ValueError, TypeError) as exc:
                        raise SpecError(f"tune run {key} lr {lr:g}: {exc}") from None
        return out

    def runs(self) -> list[TrainConfig]:
        """One config per (arch, depth, variant, seed), in the order they are launched."""
        out = []
        try:
            preset = recipe_values(self.train["recipe"]) if self.train.get("recipe") else {}
        except ValueError as exc:
            raise SpecError(f"train.recipe: {exc}") from None
        for arch, depth, variant, seed in itertools.product(self.archs, self.depths,
                                                            self.variants, self.seeds):
            name = variant_name(dict(variant))
            key = run_key(arch, depth, name)
            if key in self.exclude or f"{arch}-{depth}" in self.exclude:
                continue
            values = dict(preset, **self.train, **dict(variant), arch=arch, depth=depth,
                          seed=seed, world_size=self.cluster.workers_per_run,
                          use_gpu=self.cluster.use_gpu, run_name=f"{key}-s{seed}", variant=name)
            try:
                out.append(TrainConfig.from_dict(values))
            except (ValueError, TypeError) as exc:
                raise SpecError(f"run {key} (seed {seed}): {exc}") from None
        return out

    def to_dict(self) -> dict:
        return {
            "experiment": self.experiment, "data_name": self.data_name,
            "grid": {"arch": list(self.archs), "depth": list(self.depths), "seed": list(self.seeds),
                     "exclude": list(self.exclude),
                     **({"variant": [dict(v) for v in self.variants]}
                        if self.variants != ((),) else {})},
            "train": dict(self.train), "cluster": dataclasses.asdict(self.cluster),
            **({"tune": {"lr": list(self.tune.lr), "split": self.tune.split,
                         "seeds": list(self.tune.seeds), "train": dict(self.tune.train)}}
               if self.tune else {}),
            **({"report": {"target_error": self.target_error}}
               if self.target_error is not None else {}),
        }


def _as_list(value, name: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SpecError(f"grid.{name} is empty")
    return values


def _check_keys(section: dict, allowed, where: str) -> None:
    if not isinstance(section, dict):
        raise SpecError(f"{where} must be a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise SpecError(f"unknown key(s) {unknown} in {where}; valid: {', '.join(allowed)}")


def _variants(raw) -> tuple[tuple[tuple[str, object], ...], ...]:
    """``grid.variant``: a list of mappings of model options, or of shortcut-variant names."""
    if raw is None:
        return ((),)
    out = []
    for i, entry in enumerate(_as_list(raw, "variant")):
        if isinstance(entry, str):
            entry = {"shortcut_variant": entry}
        if not isinstance(entry, dict) or not entry:
            raise SpecError(f"grid.variant[{i}] must be a shortcut variant's name or a mapping "
                            f"of model options ({', '.join(VARIANT_KEYS)}), got {entry!r}")
        _check_keys(entry, VARIANT_KEYS, f"grid.variant[{i}]")
        out.append(tuple((k, entry[k]) for k in VARIANT_KEYS if k in entry))
    names = [variant_name(dict(v)) for v in out]
    if len(set(names)) != len(names):
        raise SpecError(f"grid.variant lists the same variant twice: {names}")
    return tuple(out)


def spec_from_dict(raw: dict) -> SweepSpec:
    _check_keys(raw, TOP_KEYS, "the spec")
    grid = raw.get("grid") or {}
    _check_keys(grid, GRID_KEYS, "grid")
    try:
        train = renamed_keys(dict(raw.get("train") or {}))
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    _check_keys(train, [f.name for f in dataclasses.fields(TrainConfig)
                        if f.name not in ("arch", "depth", "seed", "world_size", "use_gpu",
                                          "mlflow_run_id", "run_name", "variant")], "train")
    cluster_raw = raw.get("cluster") or {}
    _check_keys(cluster_raw, [f.name for f in dataclasses.fields(ClusterSpec)], "cluster")
    try:
        cluster = ClusterSpec(**cluster_raw)
    except TypeError as exc:
        raise SpecError(f"cluster: {exc}") from None
    depths = _as_list(grid.get("depth", [20]), "depth")
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in depths):
        raise SpecError(f"grid.depth must be integers, got {depths}")
    spec = SweepSpec(
        experiment=str(raw.get("experiment") or "depthlab"),
        archs=tuple(_as_list(grid.get("arch", ["plain", "residual"]), "arch")),
        depths=tuple(depths),
        seeds=tuple(int(s) for s in _as_list(grid.get("seed", [0]), "seed")),
        train=train, cluster=cluster, data_name=str(raw.get("data_name") or ""),
        exclude=tuple(str(x) for x in _as_list(grid["exclude"], "exclude")) if grid.get("exclude") else (),
        variants=_variants(grid.get("variant")),
        tune=_tune(raw.get("tune")),
        target_error=_target(raw.get("report")),
    )
    names = [variant_name(dict(v)) for v in spec.variants]
    keys = {f"{a}-{d}" for a in spec.archs for d in spec.depths} | {
        run_key(a, d, n) for a in spec.archs for d in spec.depths for n in names}
    for item in spec.exclude:
        if item not in keys:
            raise SpecError(f"grid.exclude: {item!r} is not a run of the grid "
                            f"({', '.join(sorted(keys))})")
    if not spec.runs():
        raise SpecError("grid.exclude leaves no run")
    if spec.tune and spec.tune.split in {cfg.eval_split for cfg in spec.runs()}:
        raise SpecError(f"tune.split {spec.tune.split!r} is the split the runs are evaluated on: "
                        "choosing a learning rate on it would bias the comparison; give a "
                        "held-out split (e.g. holdout)")
    spec.tune_runs()  # every tune run must be valid too
    spec.runs()  # every run must be valid before anything starts
    return spec


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``key.sub=value`` pairs (values parsed as YAML: ``grid.depth=[8,14]``) into the raw spec."""
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set expects key=value, got {item!r}")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {key}: {part} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"--set {key}: cannot parse {text!r}: {exc}") from None
    return raw


def load_spec(path: str | Path, overrides: list[str] = ()) -> SweepSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise SpecError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path} is not valid YAML: {exc}") from None
    return spec_from_dict(apply_overrides(raw, list(overrides)))
