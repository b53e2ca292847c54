"""Typed run configuration: dataclasses, YAML files, ``--set a.b=c`` overrides, validation.

Every key is checked: an unknown key, a value of the wrong type or an impossible value
raises :class:`ConfigError` naming the key and what is allowed. The official I-JEPA YAML
files (sections ``meta``, ``data``, ``mask``, ``optimization``, ``logging``) are accepted
too and translated key by key (see :mod:`imagejepa.official_config`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class ModelConfig:
    arch: str = "vit_tiny"
    patch_size: int = 16
    img_size: int = 224
    in_chans: int = 3
    depth: int | None = None  # override the arch's encoder depth (small models)
    pred_depth: int = 6
    pred_dim: int = 384
    pred_heads: int | None = None  # default: the encoder's heads


@dataclass
class MaskConfig:
    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_keep: int = 10
    official_compat: bool = False


@dataclass
class MethodConfig:
    """What is trained (``name``) and each baseline's own settings (``methods/``)."""

    # ijepa (the paper) | mae (masked autoencoder) | dino (self-distillation, multi-crop) |
    # ijepa_pixels (the paper's ablation: I-JEPA predicting the target blocks' pixels)
    name: str = "ijepa"
    # MAE (He et al. 2022): the share of patches masked at random; the decoder's width and depth.
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    # DINO (Caron et al. 2021): the head's width, bottleneck and outputs (the normalised last
    # layer); the local crops; the temperatures and the centre's momentum.
    head_hidden: int = 512
    head_bottleneck: int = 128
    head_out: int = 1024
    local_crops: int = 2  # 2 and 6 tied at equal FLOPs in the search (benchmarks/README.md)
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    student_temp: float = 0.1
    teacher_temp: float = 0.04  # reached at the end of the learning-rate warm-up
    warmup_teacher_temp: float = 0.04
    center_momentum: float = 0.9
    # The head's input (pooled patch tokens) standardised over the global batch, as a batch
    # norm without affine (DINO's head has one as an option): without it, every run tried
    # here collapsed to a uniform output within 50 steps (benchmarks/README.md).
    standardise_head_input: bool = True


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"  # a data spec: fashion-mnist[:DIR], imagefolder:PATH, synthetic
    batch_size: int = 256  # global batch per optimiser step
    num_workers: int = 0
    crop_scale: tuple[float, float] = (0.3, 1.0)
    on_error: str = "skip"  # unreadable image files: skip (with a warning) | raise
    max_bad_fraction: float = 0.01  # stop once more than this fraction of the files was unreadable


@dataclass
class OptimConfig:
    epochs: float = 100  # may be fractional: a run of 2.5 epochs stops mid-way through the third
    warmup_epochs: float = 15.0
    lr: float = 1e-3
    start_lr: float = 2e-4
    final_lr: float = 1e-6
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    ema: tuple[float, float] = (0.996, 1.0)
    grad_accum: int = 1
    loss: str = "smooth_l1"  # smooth_l1 (official code) | l2 (paper)
    # A term against collapse added to the loss: none | vc (VICReg's variance-covariance term
    # on the context encoder's layer-normed patch features; see anti_collapse.py), and its weight.
    anti_collapse: str = "none"
    anti_collapse_weight: float = 1.0
    ipe_scale: float = 1.0  # schedules span ipe_scale x the training steps (official option)
    # The schedules' length in steps, replacing epochs x steps per epoch.
    total_steps: int | None = None


@dataclass
class TrainConfig:
    seed: int = 0
    max_steps: int | None = None  # stop early (schedules still span optim.epochs)
    max_minutes: float | None = None  # a hard stop, wherever the schedules are
    # Fit the whole schedule (warm-up, cosine, EMA and weight-decay ramps) into this many
    # minutes of training: its length follows the measured speed (at most optim.epochs).
    budget_minutes: float | None = None
    # Or fit it into this many training FLOPs (forward and backward of the global batch, counted
    # on the config's model, not timed): the same steps on any machine, busy or idle.
    budget_flops: float | None = None
    checkpoint_every_steps: int | None = 1000
    checkpoint_every_minutes: float | None = 30.0
    keep_last: int = 3  # complete checkpoints kept on disk (older ones are deleted)
    keep_every: int | None = None  # also keep every checkpoint whose step is a multiple of this
    # Write checkpoints in the background while training goes on (at most one in flight; the
    # state is copied to the CPU first). The run's end and a stop signal wait for it.
    async_checkpoint: bool = False
    on_nan: str = "stop"  # a non-finite loss or gradient: stop | skip_step
    collapse_std: float | None = 0.15  # warn when the target features' per-dim std falls below
    precision: str = "auto"  # auto | fp32 | bf16
    log_every: int = 10
    # torch.compile the model (dynamic shapes: the context length changes from step to step):
    # true, false, or auto: where it was measured to pay (see imagejepa.runtime.compile_pays).
    compile: bool | typing.Literal["auto"] = "auto"
    # Recompute each block's activations in the backward pass instead of keeping them: less
    # memory (large models on small GPUs) for about one more forward pass of compute.
    activation_checkpointing: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class DistConfig:
    # With several processes: ddp (every rank holds the whole model) | fsdp (FSDP2: parameters,
    # gradients and optimiser state sharded over ranks, per block; for models too big for one GPU)
    # | hsdp (sharded within groups of dist.shard_size ranks, replicated across the groups: the
    # way torchtitan trains across nodes, shards inside a node, replicas between nodes).
    strategy: str = "ddp"
    shard_size: int | None = None  # hsdp: ranks per shard group (null: the ranks of one node)
    # After the first step, a collective that waits this long for another rank fails (until
    # then 30 min: nodes start apart, the first step may compile). Rank 0 writes whole
    # checkpoints while the others wait: keep it above the time of a save.
    timeout_minutes: float = 10.0


@dataclass
class EvalConfig:
    last_layers: int = 1  # pooled layers concatenated by `imagejepa eval` (the paper: 1 or 4)


@dataclass
class MonitorConfig:
    # Representation health (RankMe, cosine of predictions to targets, loss per target block)
    # on the current batch every this many steps; 0: off (per-dim std is logged every step).
    every: int = 50
    # Online kNN top-1 of the target encoder on a fixed held-out subset of the training split
    # against a fixed bank of it, every this many steps; 0: off. Only for labelled data.
    knn_every: int = 500
    knn_bank: int = 2000  # images in the bank
    knn_queries: int = 500  # held-out images classified against it
    knn_k: int = 20
    # Warn when RankMe falls below this fraction of the highest value the run has seen.
    rankme_drop: float | None = 0.25
    # Partial collapse: warn when RankMe is below this fraction of its best while the loss
    # (mean of 20 steps) is below loss_floor x its highest; when the target std's mean over
    # 200 steps stays below std_hover x train.collapse_std; when the online kNN falls more
    # than knn_drop points (or two standard errors of its held-out set) below its best.
    rankme_partial: float | None = 0.5
    loss_floor: float = 0.1
    std_hover: float | None = 1.6
    knn_drop: float | None = 5.0
    tensorboard: bool = False  # scalars and pictures under RUN_DIR/tensorboard (pip install tensorboard)
    wandb: bool = False  # Weights & Biases (pip install wandb); offline unless wandb_mode: online
    wandb_mode: str = "offline"
    wandb_project: str = "imagejepa"


RECIPES = ("none", "auto")


@dataclass
class Config:
    # How the file was read, for the start-up line (an official file's per-process batch);
    # not a setting, so not saved.
    source_note: typing.ClassVar[str | None] = None
    # The keys the file and the overrides set ("optim.lr", ...): the recipe leaves them alone.
    explicit: typing.ClassVar[frozenset[str]] = frozenset()
    # What recipe: auto saw and chose (train/recipe.py), once it has been applied.
    resolved: typing.ClassVar[Any] = None

    # auto: the keys not set explicitly are chosen from the data and the budget (recipe.py);
    # none: they keep the defaults below.
    recipe: str = "none"
    method: MethodConfig = field(default_factory=MethodConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


METHODS = ("ijepa", "mae", "dino", "ijepa_pixels")

ALLOWED = {
    "method.name": METHODS,
    "optim.loss": ("smooth_l1", "l2"),
    "optim.anti_collapse": ("none", "vc"),
    "recipe": RECIPES,
    "train.precision": ("auto", "fp32", "bf16"),
    "train.on_nan": ("stop", "skip_step"),
    "data.on_error": ("skip", "raise"),
    "dist.strategy": ("ddp", "fsdp", "hsdp"),
    "monitor.wandb_mode": ("offline", "online"),
}


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a field's type hint, converting only where lossless."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for inner in (a for a in args if a is not type(None)):  # the first that takes it
            with contextlib.suppress(ConfigError):
                return _coerce(value, inner, key)
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}")
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}")
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}")


def _apply(section_obj: Any, values: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(section_obj))
    for name, value in values.items():
        key = f"{prefix}.{name}"
        if name not in hints:
            allowed = ", ".join(hints)
            raise ConfigError(f"unknown config key {key!r}; allowed in {prefix}: {allowed}")
        setattr(section_obj, name, _coerce(value, hints[name], key))


def from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Build a config from nested dicts over ``base`` (defaults when None), then validate."""
    cfg = copy.deepcopy(base) if base else Config()
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    sections = {f.name for f in dataclasses.fields(Config)} - set(TOP_LEVEL)
    explicit = set(cfg.explicit)
    for section, values in data.items():
        if section in TOP_LEVEL:
            setattr(cfg, section, _coerce(values, TOP_LEVEL[section], section))
            continue
        if section not in sections:
            raise ConfigError(
                f"unknown config section {section!r}; allowed: {', '.join(sorted(sections | set(TOP_LEVEL)))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping of keys")
        values = {k: v for k, v in values.items() if f"{section}.{k}" not in RETIRED}
        _apply(getattr(cfg, section), values, section)
        explicit |= {f"{section}.{name}" for name in values}
    cfg.explicit = frozenset(explicit)
    validate(cfg)
    return cfg


TOP_LEVEL = {"recipe": str}  # keys outside any section
# Keys earlier versions wrote into a run's config.yaml that are no longer settings: read and
# left out, so such runs still resume. optim.schedule_fits: a time budget's fits, now kept in
# the checkpoints (train/budget.py).
RETIRED = {"optim.schedule_fits"}


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=5e-4"`` -> ``("optim.lr", 5e-4)``; values are read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key.count(".") != 1 and key not in TOP_LEVEL:
        raise ConfigError(f"override key {key!r} must look like section.key, e.g. optim.lr")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: cannot read value {raw!r}: {e}") from None
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] = (), world_size: int = 1) -> Config:
    """Read a YAML file (ours or official I-JEPA) and apply ``section.key=value`` overrides.

    ``world_size``: the processes the run is launched on; an official file's ``batch_size`` is
    per process, so the global batch is that times ``world_size``."""
    data: dict[str, Any] = {}
    note = None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        from .official_config import is_official, translate_official

        if is_official(data):
            from .official_config import batch_note

            note = batch_note(data, world_size)
            data = translate_official(data, world_size)
    for text in overrides:
        key, value = parse_override(text)
        if key in TOP_LEVEL:
            data[key] = value
            continue
        section, name = key.split(".")
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"config section {section!r} must be a mapping of keys")
        data[section][name] = value
        if key == "data.batch_size":
            note = None  # the batch given on the command line is the global batch
    cfg = from_dict(data)
    cfg.source_note = note
    return cfg


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Reject impossible values before any heavy work; messages name the key."""
    from .masking import MaskError, MultiBlockMaskSampler
    from .models.vit import ARCHS

    m, d, o, t = cfg.model, cfg.data, cfg.optim, cfg.train
    _require(m.arch in ARCHS, f"model.arch: unknown {m.arch!r}; allowed: {', '.join(ARCHS)}")
    for key in ("patch_size", "img_size", "in_chans", "pred_depth", "pred_dim"):
        _require(getattr(m, key) >= 1, f"model.{key} must be >= 1, got {getattr(m, key)}")
    _require(
        m.img_size % m.patch_size == 0,
        f"model.img_size={m.img_size} is not divisible by model.patch_size={m.patch_size}",
    )
    heads = m.pred_heads or ARCHS[m.arch].num_heads
    _require(
        m.pred_dim % 4 == 0 and m.pred_dim % heads == 0,
        f"model.pred_dim={m.pred_dim} must be divisible by 4 and by the predictor's {heads} heads",
    )
    _require(m.depth is None or m.depth >= 1, f"model.depth must be >= 1, got {m.depth}")
    depth = m.depth or ARCHS[m.arch].depth
    _require(
        1 <= cfg.eval.last_layers <= depth,
        f"eval.last_layers must be within [1, the encoder's depth {depth}], got {cfg.eval.last_layers}",
    )
    _require(
        m.pred_heads is None or m.pred_heads >= 1, f"model.pred_heads must be >= 1, got {m.pred_heads}"
    )
    _require(d.batch_size >= 1, f"data.batch_size must be >= 1, got {d.batch_size}")
    _require(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")
    _require(o.grad_accum >= 1, f"optim.grad_accum must be >= 1, got {o.grad_accum}")
    _require(
        d.batch_size % o.grad_accum == 0,
        f"data.batch_size={d.batch_size} is not divisible by optim.grad_accum={o.grad_accum}",
    )
    lo, hi = d.crop_scale
    _require(0 < lo <= hi <= 1, f"data.crop_scale must satisfy 0 < low <= high <= 1, got {d.crop_scale}")
    _require(o.epochs > 0, f"optim.epochs must be > 0, got {o.epochs}")
    _require(
        0 <= o.warmup_epochs <= o.epochs,
        f"optim.warmup_epochs must be within [0, optim.epochs={o.epochs}], got {o.warmup_epochs}",
    )
    for key in ("lr", "start_lr", "final_lr", "weight_decay", "final_weight_decay", "anti_collapse_weight"):
        value = getattr(o, key)
        _require(0 <= value < math.inf, f"optim.{key} must be a finite number >= 0, got {value}")
    _require(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _require(
        1 <= o.ipe_scale < math.inf, f"optim.ipe_scale must be a finite number >= 1, got {o.ipe_scale}"
    )
    _require(
        0 <= o.ema[0] <= o.ema[1] <= 1,
        f"optim.ema must satisfy 0 <= start <= end <= 1, got {list(o.ema)}",
    )
    for key, allowed in ALLOWED.items():
        section, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, section), name) if section else getattr(cfg, name)
        _require(value in allowed, f"{key}: got {value!r}; allowed: {', '.join(allowed)}")
    _require(t.max_steps is None or t.max_steps >= 1, f"train.max_steps must be >= 1, got {t.max_steps}")
    _require(
        t.max_minutes is None or t.max_minutes > 0, f"train.max_minutes must be > 0, got {t.max_minutes}"
    )
    _require(
        t.budget_minutes is None or 0 < t.budget_minutes < math.inf,
        f"train.budget_minutes must be a finite number > 0, got {t.budget_minutes}",
    )
    _require(
        t.budget_flops is None or 0 < t.budget_flops < math.inf,
        f"train.budget_flops must be a finite number > 0, got {t.budget_flops}",
    )
    _require(
        t.budget_flops is None or (t.budget_minutes is None and o.total_steps is None),
        "train.budget_flops sets the schedule's length, as do train.budget_minutes and "
        "optim.total_steps; set one of them",
    )
    _validate_method(cfg.method)
    _require(
        o.total_steps is None or o.total_steps >= 1, f"optim.total_steps must be >= 1, got {o.total_steps}"
    )
    _require(
        t.budget_minutes is None or o.total_steps is None,
        "optim.total_steps and train.budget_minutes both set the schedule's length; set one of them",
    )
    _require(
        t.checkpoint_every_steps is None or t.checkpoint_every_steps >= 1,
        f"train.checkpoint_every_steps must be >= 1, got {t.checkpoint_every_steps}",
    )
    _require(t.keep_last >= 1, f"train.keep_last must be >= 1, got {t.keep_last}")
    _require(t.keep_every is None or t.keep_every >= 1, f"train.keep_every must be >= 1, got {t.keep_every}")
    _require(
        t.collapse_std is None or 0 <= t.collapse_std < math.inf,
        f"train.collapse_std must be a finite number >= 0 or null, got {t.collapse_std}",
    )
    _require(
        0 <= d.max_bad_fraction <= 1, f"data.max_bad_fraction must be within [0, 1], got {d.max_bad_fraction}"
    )
    _require(t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}")
    _require(0 < cfg.dist.timeout_minutes < math.inf,
             f"dist.timeout_minutes must be a number of minutes > 0, got {cfg.dist.timeout_minutes}")
    mon = cfg.monitor
    for key in ("every", "knn_every"):
        _require(getattr(mon, key) >= 0, f"monitor.{key} must be >= 0 (0: off), got {getattr(mon, key)}")
    for key in ("knn_bank", "knn_queries", "knn_k"):
        _require(getattr(mon, key) >= 1, f"monitor.{key} must be >= 1, got {getattr(mon, key)}")
    _require(
        mon.rankme_drop is None or 0 < mon.rankme_drop < 1,
        f"monitor.rankme_drop must be within (0, 1) or null, got {mon.rankme_drop}",
    )
    _require(
        t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"),
        f"train.device: got {t.device!r}; allowed: auto, cpu, cuda, cuda:N",
    )
    from .data import parse_data_spec

    parse_data_spec(d.dataset)
    grid = (m.img_size // m.patch_size,) * 2
    try:
        MultiBlockMaskSampler(grid, mask_settings(cfg))
    except MaskError as e:
        raise ConfigError(str(e)) from None


def _validate_method(me: MethodConfig) -> None:
    _require(0 < me.mask_ratio < 1, f"method.mask_ratio must be within (0, 1), got {me.mask_ratio}")
    sizes = ("decoder_dim", "decoder_depth", "decoder_heads", "head_hidden", "head_bottleneck", "head_out")
    for key in sizes:
        _require(getattr(me, key) >= 1, f"method.{key} must be >= 1, got {getattr(me, key)}")
    _require(me.decoder_dim % 4 == 0 and me.decoder_dim % me.decoder_heads == 0,
             f"method.decoder_dim={me.decoder_dim} must be divisible by 4 and by method.decoder_heads="
             f"{me.decoder_heads}")
    _require(me.local_crops >= 0, f"method.local_crops must be >= 0, got {me.local_crops}")
    for key in ("global_scale", "local_scale"):
        lo, hi = getattr(me, key)
        _require(0 < lo <= hi <= 1, f"method.{key} must satisfy 0 < low <= high <= 1, got {[lo, hi]}")
    for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
        _require(0 < getattr(me, key) < math.inf, f"method.{key} must be > 0, got {getattr(me, key)}")
    _require(0 <= me.center_momentum < 1,
             f"method.center_momentum must be within [0, 1), got {me.center_momentum}")


def check_batch_split(cfg: Config, world_size: int) -> None:
    """The global batch must split evenly over processes and accumulation chunks; HSDP's shard
    groups must split the processes."""
    parts = world_size * cfg.optim.grad_accum
    _require(
        cfg.data.batch_size % parts == 0,
        f"data.batch_size={cfg.data.batch_size} is not divisible by world size {world_size} x "
        f"optim.grad_accum {cfg.optim.grad_accum} = {parts}",
    )
    shard = cfg.dist.shard_size
    if cfg.dist.strategy == "hsdp" and shard is not None:
        _require(shard >= 1 and world_size % shard == 0,
                 f"dist.shard_size={shard} does not divide the {world_size} processes into shard groups")


def mask_settings(cfg: Config):
    from .masking import MaskSettings

    k = cfg.mask
    return MaskSettings(
        num_targets=k.num_targets,
        target_scale=k.target_scale,
        target_aspect=k.target_aspect,
        context_scale=k.context_scale,
        min_keep=k.min_keep,
        official_compat=k.official_compat,
    )
