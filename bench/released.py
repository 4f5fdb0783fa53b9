"""The authors' released MARK code, run on marktune's data and settings (issues 29 and 41).

The released code (JuliousHurtado/meta-training-setup) is not a dependency: give its checkout
(``git clone``, or the ``fetch`` tool's mirror checked out) as ``checkout``. Only its
``approach.py``, ``models/conv.py`` and ``utils.py`` are imported; its data loaders read
CIFAR-100 / miniImageNet and its ``main.py`` needs omegaconf, so this module stands in for both:

* :func:`released_args` - its ``args`` (a namespace of the keys its code reads) from a
  :class:`~marktune.mark.config.MarkConfig`: every epoch-based phase runs ``epochs``
  (its ``feats_epochs``), ``inner_steps`` is its ``inner_loop``, its network is the
  ``cifar100`` one (32 px, 3 channels, KB widths 64-128-256), which is marktune's at its defaults.
* :func:`released_loaders` - its ``dataset[t]`` dicts (``train``/``valid``/``test`` loaders of
  ``(x, y, x)`` batches, shuffled, validation batches of ``int(batch * pc_valid)``, as its
  ``DatasetGen``) over marktune's own task split, so both sides see the same images.
* :func:`run_released` - its ``main.run`` loop (seeding, ``training_procedure``, the test rows),
  timing each phase and watching every loss; returns a :class:`ReleasedRun`.

    >>> run = run_released("/path/to/meta-training-setup", MarkConfig(benchmark="fmnist", ...))  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import importlib
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from marktune.mark.config import MarkConfig  # noqa: E402
from marktune.mark.training import PHASES  # noqa: E402  (the released phases are timed under marktune's names)

RELEASED_FILES = ("approach.py", "models/conv.py", "utils.py")


class ReleasedCodeMissing(FileNotFoundError):
    """The checkout given is not the released code."""


class NonFiniteLoss(FloatingPointError):
    """A loss of the released code became NaN or infinite (it has no check of its own)."""


@dataclass
class ReleasedRun:
    test: np.ndarray  # [tasks, tasks]: row t after task t, as its main.run's ``acc``
    phase_seconds: dict[str, float]
    wall_seconds: float
    nonfinite: str | None = None  # "task T, phase P" of the first non-finite loss, else None
    tasks_done: int = 0

    @property
    def acc(self) -> float:
        return float(self.test[self.tasks_done - 1, :self.tasks_done].mean()) if self.tasks_done else float("nan")


def check_checkout(checkout: str | Path) -> Path:
    path = Path(checkout).expanduser().resolve()
    missing = [f for f in RELEASED_FILES if not (path / f).is_file()]
    if missing:
        raise ReleasedCodeMissing(
            f"{path} is not a checkout of the released MARK code (missing {', '.join(missing)}). "
            "Clone it: git clone https://github.com/JuliousHurtado/meta-training-setup, and give its folder.")
    return path


def released_args(cfg: MarkConfig) -> SimpleNamespace:
    """The released code's ``args`` for ``cfg``; refuses what it cannot express."""
    cannot = {key: value for key, value, theirs in (
        ("kb_depth", cfg.kb_depth, 3), ("kb_width", cfg.kb_width, 64), ("fe_channels", cfg.fe_channels, 32),
        ("mask_hidden", cfg.mask_hidden, 0), ("feature_extractor", cfg.feature_extractor, "conv"),
        ("meta_update", cfg.meta_update, "seed"), ("kb_grad_clip", cfg.kb_grad_clip, None),
        ("lr_mask", cfg.lr_mask, None), ("image_size", cfg.image_size, 32),
        ("momentum", cfg.momentum, 0.9), ("weight_decay", cfg.weight_decay, 0.01),
        ("meta_weight_decay", cfg.meta_weight_decay, 0.1), ("meta_step", cfg.meta_step, 0.1),
        ("grad_clip", cfg.grad_clip, 0.5), ("kb_dropout", cfg.kb_dropout, 0.5),
    ) if value != theirs}
    epochs = {cfg.phase_epochs(p) for p in ("feature", "kb", "mask", "consolidation")}
    if len(epochs) > 1:
        cannot["*_epochs"] = sorted(epochs)
    if cannot:
        raise ValueError(f"the released code has no setting for {cannot}: it runs the paper's KB "
                         "(3 blocks from 64 channels), one epoch count for every phase and the seed rule")
    return SimpleNamespace(
        experiment="cifar100", ntasks=cfg.tasks, seed=cfg.seed, batch_size=cfg.batch_size,
        pc_valid=cfg.val_fraction, feats_epochs=epochs.pop(), meta_epochs=cfg.meta_epochs,
        mini_tasks=cfg.mini_tasks, inner_loop=cfg.inner_steps, lr_task=cfg.lr_task, lr_meta=cfg.lr_meta,
        latent_dim=cfg.latent_dim, head_units=64, resnet18=False, resnet_pre_trained=False,
        use_relu=cfg.mask_activation == "relu", use_share=True, use_mask=cfg.use_masks,
        only_shared=False, use_meta=True, use_last_pri=False, use_one_representation=False,
        pre_train_shared=True, train_f_representation=True, random_f=False, use_pca=False,
        inputsize=[3, cfg.image_size, cfg.image_size])


def released_loaders(benchmark, args: SimpleNamespace) -> list[dict]:
    """Its ``dataset[t]`` for every task, over marktune's split (same images, labels, order)."""
    from torch.utils.data import DataLoader, TensorDataset

    def loader(split, batch: int) -> DataLoader:
        x = benchmark.normalize(split.x)
        return DataLoader(TensorDataset(x, split.y, x), batch_size=batch, shuffle=True)

    return [{"train": loader(task.train, args.batch_size),
             "valid": loader(task.val, int(args.batch_size * args.pc_valid)),
             "test": loader(task.test, args.batch_size),
             "name": f"{benchmark.name}-{task.index}-{task.classes}"} for task in benchmark.tasks]


@contextlib.contextmanager
def _released_modules(checkout: Path):
    """Import its ``approach`` and ``models.conv`` from ``checkout``, leaving sys.modules as found."""
    names = ("approach", "utils", "models", "models.conv")
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, str(checkout))
    try:
        yield importlib.import_module("approach"), importlib.import_module("models.conv")
    finally:
        sys.path.remove(str(checkout))
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


class _Watch:
    """Phase clock and loss watcher wrapped around the released functions."""

    def __init__(self, stop_on_nonfinite: bool) -> None:
        self.seconds = {p: 0.0 for p in PHASES}
        self.phase, self.task, self.meta_done = "feature", 0, False
        self.nonfinite: str | None = None
        self.stop = stop_on_nonfinite

    def timed(self, fn, phase_of):
        def wrapper(*a, **k):
            before, self.phase = self.phase, phase_of(*a, **k)
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds[self.phase] += time.perf_counter() - start
                self.phase = before
        return wrapper

    def criterion(self) -> torch.nn.Module:
        watch = self

        class WatchedLoss(torch.nn.CrossEntropyLoss):
            def forward(self, outs, labels):
                loss = super().forward(outs, labels)
                if watch.nonfinite is None and not math.isfinite(loss.item()):
                    watch.nonfinite = f"task {watch.task}, phase {watch.phase}"
                    if watch.stop:
                        raise NonFiniteLoss(watch.nonfinite)
                return loss
        return WatchedLoss()


def run_released(checkout: str | Path, cfg: MarkConfig, *, benchmark=None, tasks: int | None = None,
                 stop_on_nonfinite: bool = True, verbose: bool = False) -> ReleasedRun:
    """One continual sequence of the released code, as its ``main.run`` (CPU, this process's threads).

    ``cfg.mask_init == "identity"`` sets its mask layers to zero weights and bias 1 after it built them
    (marktune's ``mask_init: identity``; no random draw is added or removed). With
    ``stop_on_nonfinite`` the run stops at the first non-finite loss, else it goes on as the
    released code does (NaN losses, chance accuracy).
    """
    from marktune.data import load_benchmark_for

    checkout = check_checkout(checkout)
    args = released_args(cfg)
    benchmark = benchmark if benchmark is not None else load_benchmark_for(cfg)
    dataset = released_loaders(benchmark, args)
    args.taskcla = [[t, task.num_classes] for t, task in enumerate(benchmark.tasks)]
    watch = _Watch(stop_on_nonfinite)
    with _released_modules(checkout) as (approach, conv), \
            contextlib.redirect_stdout(sys.stdout if verbose else io.StringIO()):
        def new_task(*a, **k):
            watch.meta_done = False
            return "feature"

        def after_meta(*a, **k):
            watch.meta_done = True
            return "meta"
        approach.train_representation = watch.timed(approach.train_representation, new_task)
        approach.meta_training = watch.timed(approach.meta_training, after_meta)
        approach.traditional_training = watch.timed(
            approach.traditional_training,
            lambda args, net, *a, **k: "kb" if net.only_shared else ("consolidation" if watch.meta_done else "mask"))
        approach.test = watch.timed(approach.test, lambda *a, **k: "eval")

        # main.run: seeds, model, criterion, then each task and its test row
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        net = conv.Net(args, "cpu")
        if cfg.mask_init == "identity":
            with torch.no_grad():
                for per_task in net.private.linear:
                    for layer in per_task:
                        layer[0].weight.zero_()
                        layer[0].bias.fill_(1.0 if args.use_relu else 4.0)
        criterion = watch.criterion()
        acc = np.zeros((len(args.taskcla),) * 2, dtype=np.float64)
        done = 0
        start = time.perf_counter()
        try:
            for t, _ in args.taskcla[:tasks]:
                watch.task = t
                approach.training_procedure(args, net, t, dataset[t], criterion, "cpu")
                for u in range(t + 1):
                    acc[t, u] = approach.test(net, u, dataset[u]["test"], criterion, "cpu")[0]
                done = t + 1
        except NonFiniteLoss:
            pass
        wall = time.perf_counter() - start
    return ReleasedRun(test=acc, phase_seconds=watch.seconds, wall_seconds=wall,
                       nonfinite=watch.nonfinite, tasks_done=done)
