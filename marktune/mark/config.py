"""The typed configuration of one MARK sequence.

Defaults are the paper's for 20-Split CIFAR-100 (``docs/method.md``). A config
comes from YAML and ``key=value`` overrides; every key and value is checked here,
before any data is loaded, so that a typo costs seconds rather than a trial.

Example:
    >>> cfg = MarkConfig.from_sources(overrides=["benchmark=digits", "epochs=2"])
    >>> cfg.epochs, cfg.phase_epochs("mask")
    (2, 2)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

# the benchmarks and what is known of each without reading data (tasks, image size, classes),
# so that a bad split is refused at once; torch-free. BENCHMARKS is re-exported for the CLI.
from marktune.data.registry import BENCHMARKS, FACTS
from marktune.mark.yaml_io import load_yaml_file

META_UPDATES = ("reptile", "seed", "none", "finetune")


class ConfigError(ValueError):
    """A configuration key or value that is not allowed; the message says how to fix it."""


@dataclass
class MarkConfig:
    # --- data ---------------------------------------------------------------
    benchmark: str = "cifar100"
    num_tasks: int | None = None  # None: the benchmark's (20 for cifar100)
    seed: int = 0  # initialisation, shuffling, dropout
    # class order and validation split; None: ``seed`` (the authors' code uses one seed for both)
    data_seed: int | None = None
    # an explicit class order (a permutation of the benchmark's class ids), as some papers
    # publish theirs; None: ``numpy.random.RandomState(data_seed).permutation(classes)``
    class_order: list[int] | None = None
    val_fraction: float = 0.15
    max_train_per_task: int | None = None  # cut images per task for quick runs (train+val pool)
    max_test_per_task: int | None = None
    synthetic_classes_per_task: int = 2  # synthetic only
    synthetic_images_per_class: int = 60  # synthetic only
    synthetic_image_size: int = 32  # synthetic only

    # --- model --------------------------------------------------------------
    kb_depth: int = 3
    kb_width: int = 64  # channels of the first KB block, doubling per block
    latent_dim: int = 128
    fe_channels: int = 32
    feature_extractor: str = "conv"  # conv | resnet18
    resnet_weights: str | None = None  # local file for the frozen ResNet-18 trunk
    mask_hidden: int = 0  # 0: Linear(latent -> C_b), the paper's form
    mask_activation: str = "relu"  # relu | sigmoid
    # M_t's starting weights. default: PyTorch's nn.Linear init, as the released code.
    # identity: zero weights and bias 1 (4 for sigmoid), so every mask starts at ~1, the state
    # the KB was warmed up in (ReLU masks cannot start dead; marktune's rule before issue 10)
    mask_init: str = "default"
    # False: the released ``use_mask: False`` ablation, every mask all ones (phases 3/5 train C_t only)
    use_masks: bool = True
    kb_dropout: float = 0.5

    # --- optimisation ---------------------------------------------------------
    lr_task: float = 0.1
    lr_mask: float | None = None  # None: lr_task
    lr_meta: float = 0.01
    meta_step: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.01
    meta_weight_decay: float = 0.1
    grad_clip: float = 0.5  # phase 1 only
    # Phase 2 gradient-norm clip; None: none, as the paper. An easy first task is learned in a
    # few steps, after which one large gradient with momentum 0.9 can blow the KB up (to NaN,
    # or to finite weights whose ReLUs are all dead).
    kb_grad_clip: float | None = None
    batch_size: int = 128
    epochs: int = 50  # every epoch-based phase, unless overridden below
    fe_epochs: int | None = None  # phase 1
    kb_epochs: int | None = None  # phase 2
    mask_epochs: int | None = None  # phase 3
    consolidation_epochs: int | None = None  # phase 5

    # --- metalearning (phase 4) ---------------------------------------------
    # reptile | seed (the released rule) | none (ablation: phase 4 skipped, phase 5 kept)
    # | finetune (ablation, the released ``use_meta: False``: KB and C_t trained on each task)
    meta_update: str = "reptile"
    meta_epochs: int = 10
    mini_tasks: int = 10
    inner_steps: int = 40
    # Departure (off by default), proposed for ``reptile``: the inner loop's weight decay acts on
    # the fresh head only, not on the KB copies, so delta_k carries no pull towards 0 (with decay
    # 0.1 over 40 steps a Reptile step shrinks the KB by a fixed fraction every outer step)
    meta_decay_head_only: bool = False
    # Released code: F_t stays in train mode (batch statistics, running statistics updated) in
    # phases 3-5 of its task. The method (docs/method.md) overrides that (eval mode after phase 1); true restores
    # the released behaviour for reproductions (no feature cache then: slower)
    fe_bn_train: bool = False

    # --- execution ------------------------------------------------------------
    precision: str = "fp32"  # fp32 | bf16 (autocast; changes numerics, off by default)
    # phase 4 vectorised over mini-tasks with torch.func; None: on where the device is CUDA (the
    # loop is launch-bound there), off on the CPU (2.4x slower there, bench/sequence.py)
    meta_vmap: bool | None = None
    channels_last: bool = True  # conv tensors in channels-last layout (round-off only; faster on CPU here)
    # denormal floats (below 1.2e-38) flushed to zero on the CPU (round-off below 1.2e-38 per value):
    # phases 3 and 5 ran 1.4x faster with it on an Intel Xeon (docs/performance.md)
    flush_denormals: bool = True
    # deterministic algorithms, no cuDNN autotuning, no TF32 (marktune.mark.devices.deterministic_mode):
    # a task run again on CUDA then gives the same rows exactly, at some speed
    deterministic: bool = False
    nan_check: bool = True  # stop with a clear error when a loss becomes NaN/inf

    # ------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    @property
    def tasks(self) -> int:
        return self.num_tasks if self.num_tasks is not None else FACTS[self.benchmark].num_tasks

    @property
    def split_seed(self) -> int:
        """The seed of the class order and validation split (``data_seed``, else ``seed``)."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def num_classes(self) -> int:
        """Classes of the whole benchmark, known without reading any data."""
        if self.benchmark == "synthetic":
            return self.tasks * self.synthetic_classes_per_task
        return FACTS[self.benchmark].classes

    @property
    def classes_per_task(self) -> int:
        """Classes of each task (the benchmark's classes cut into equal tasks: marktune.data.base)."""
        return self.num_classes // self.tasks

    @property
    def image_size(self) -> int:
        if self.benchmark == "synthetic":
            return self.synthetic_image_size
        return FACTS[self.benchmark].image_size

    @property
    def mask_lr(self) -> float:
        return self.lr_task if self.lr_mask is None else self.lr_mask

    def phase_epochs(self, phase: str) -> int:
        """Epochs of an epoch-based phase: ``feature``, ``kb``, ``mask``, ``consolidation`` or
        ``finetune`` (phase 4 of the ``finetune`` ablation: ``epochs``, the released count)."""
        own = {"feature": self.fe_epochs, "kb": self.kb_epochs, "mask": self.mask_epochs,
               "consolidation": self.consolidation_epochs, "finetune": None}[phase]
        return self.epochs if own is None else own

    # ------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad key and its allowed range."""
        from marktune.mark.geometry import kb_geometry  # torch-free: a bad depth is refused in a blink

        _choice("benchmark", self.benchmark, BENCHMARKS)
        _choice("feature_extractor", self.feature_extractor, ("conv", "resnet18"))
        _choice("mask_activation", self.mask_activation, ("relu", "sigmoid"))
        _choice("meta_update", self.meta_update, META_UPDATES)
        _choice("mask_init", self.mask_init, ("default", "identity"))
        _choice("precision", self.precision, ("fp32", "bf16"))
        if self.num_tasks is not None:
            _at_least("num_tasks", self.num_tasks, 1)
        _at_least("seed", self.seed, 0)
        if self.data_seed is not None:
            _at_least("data_seed", self.data_seed, 0)
        for key in ("kb_depth", "kb_width", "latent_dim", "fe_channels", "batch_size",
                    "mini_tasks", "inner_steps", "synthetic_classes_per_task",
                    "synthetic_images_per_class", "synthetic_image_size"):
            _at_least(key, getattr(self, key), 1)
        if self.synthetic_classes_per_task < 2:
            raise ConfigError("synthetic_classes_per_task must be >= 2 (got "
                              f"{self.synthetic_classes_per_task}): a task needs two classes")
        for key in ("mask_hidden", "epochs", "meta_epochs"):
            _at_least(key, getattr(self, key), 0)
        for key in ("fe_epochs", "kb_epochs", "mask_epochs", "consolidation_epochs",
                    "max_train_per_task", "max_test_per_task"):
            if getattr(self, key) is not None:
                _at_least(key, getattr(self, key), 0 if key.endswith("epochs") else 1)
        for key in ("lr_task", "lr_meta", "meta_step"):
            _positive(key, getattr(self, key))
        if self.lr_mask is not None:
            _positive("lr_mask", self.lr_mask)
        for key in ("weight_decay", "meta_weight_decay", "grad_clip"):
            _non_negative(key, getattr(self, key))
        if self.kb_grad_clip is not None:
            _positive("kb_grad_clip", self.kb_grad_clip)
        for key, low, high in (("momentum", 0.0, 1.0), ("kb_dropout", 0.0, 1.0),
                               ("val_fraction", 0.0, 1.0)):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and low <= value < high):
                raise ConfigError(f"{key} must be in [{low}, {high}) (got {value!r})")
        if self.val_fraction <= 0:
            raise ConfigError(f"val_fraction must be in (0, 1) (got {self.val_fraction}): "
                              "the search needs a validation split")
        if self.feature_extractor == "resnet18" and self.resnet_weights is not None \
                and not Path(self.resnet_weights).is_file():
            raise ConfigError(f"resnet_weights: no file at {self.resnet_weights!r}; give a local "
                              "ResNet-18 state_dict (.pth) or leave it empty for random weights")
        self._validate_split()
        try:
            kb_geometry(self.image_size, self.kb_depth)
        except ValueError as err:
            raise ConfigError(f"kb_depth={self.kb_depth}: {err}") from None

    def _validate_split(self) -> None:
        """The benchmark's classes must cut into ``tasks`` equal tasks of >= 2 classes."""
        classes, tasks = self.num_classes, self.tasks
        if self.benchmark != "synthetic":
            if classes % tasks:
                divisors = [d for d in range(1, classes // 2 + 1) if classes % d == 0]
                raise ConfigError(f"num_tasks={tasks}: the {classes} classes of {self.benchmark} cannot be "
                                  f"cut into {tasks} tasks of equal size; choose one of "
                                  f"{', '.join(map(str, divisors))}")
            if classes // tasks < 2:
                raise ConfigError(f"num_tasks={tasks}: {classes} classes in {tasks} tasks leaves "
                                  f"{classes // tasks} class per task; a task needs at least two "
                                  f"(num_tasks <= {classes // 2})")
        if self.class_order is not None:
            order = self.class_order
            if not isinstance(order, (list, tuple)) or not all(
                    isinstance(c, int) and not isinstance(c, bool) for c in order):
                raise ConfigError(f"class_order must be a list of class ids (got {order!r})")
            if sorted(order) != list(range(classes)):
                raise ConfigError(f"class_order must be a permutation of the {classes} class ids "
                                  f"0..{classes - 1} of {self.benchmark} (got {len(order)} ids"
                                  + (", with repeats or ids out of range)" if len(order) == classes else ")"))

    # ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def settings_of(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """The learner's settings among ``values`` (a trial's config also holds Tune's and marktune's keys)."""
        known = set(cls.field_names())
        return {k: v for k, v in values.items() if k in known}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "MarkConfig":
        """Build from a mapping; unknown keys and wrongly typed values are errors."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}. Known keys: "
                              f"{', '.join(known)}")
        coerced = {k: _coerce(k, v, known[k].type) for k, v in values.items()}
        return cls(**coerced)

    @classmethod
    def from_sources(cls, *, path: str | Path | None = None, overrides: Iterable[str] = (),
                     base: Mapping[str, Any] | None = None) -> "MarkConfig":
        """Defaults, then ``base``, then a YAML file, then ``key=value`` overrides."""
        values: dict[str, Any] = dict(base or {})
        if path is not None:
            values.update(load_yaml_mapping(path))
        values.update(parse_overrides(overrides))
        return cls.from_dict(values)

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = load_yaml_file(path, error=ConfigError) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, not {type(data).__name__}")
    # best_config.yaml written by a search nests the learner settings under "config"
    if "config" in data and isinstance(data["config"], dict):
        data = data["config"]
    # a search space file: its benchmark and fixed settings are a runnable config
    elif "fixed" in data and isinstance(data["fixed"], dict):
        data = {"benchmark": data["benchmark"], **data["fixed"]} if "benchmark" in data else dict(data["fixed"])
    return data


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["epochs=3", "lr_meta=1e-3"]`` -> ``{"epochs": 3, "lr_meta": 0.001}`` (YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml_scalar(raw)
    return out


def yaml_scalar(raw: str) -> Any:
    if not raw.strip():
        return None
    value = yaml.safe_load(raw)
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    text = str(annotation)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{key} may not be empty")
    if text.startswith("bool"):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false (got {value!r})")
    if text.startswith("int"):
        if isinstance(value, bool) or not (isinstance(value, int)
                                           or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key} must be a whole number (got {value!r})")
        return int(value)
    if text.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{key} must be a number (got {value!r})") from None
        if not math.isfinite(float(value)):
            raise ConfigError(f"{key} must be finite (got {value!r})")
        return float(value)
    if text.startswith("list"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list (got {value!r})")
        return list(value)
    if text.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string (got {value!r})")
        return value
    return value


def _choice(key: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)} (got {value!r})")


def _at_least(key: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{key} must be a whole number >= {low} (got {value!r})")


def _positive(key: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key} must be a number > 0 (got {value!r})")


def _non_negative(key: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key} must be a number >= 0 (got {value!r})")
