"""MARK, one task at a time: the order of the tasks, the learner's state, and the five phases.

Read it top to bottom: :meth:`MarkLearner.train_next_task` runs the phases of one task in
order (``docs/method.md``), each phase one method below it. They share one epoch loop
(:mod:`marktune.mark.training`); phase 4's rules get a context of their own
(:mod:`marktune.mark.phase4`); evaluation is :mod:`marktune.mark.evaluation`. Where the method (docs/method.md)
is silent the released code decides (its section "Where the authors' code decides"); the
comments say where. What does not train is computed by the fast path
(:mod:`marktune.mark.compute`); tests hand in another (``compute=``) to check it against.

Whoever owns the loop (``marktune.run``, a Ray trial) calls ``train_next_task()`` (trains the
next task, evaluates every task seen so far); ``state_dict()`` / ``load_state_dict()`` save and
restore everything between tasks, so a restored learner continues exactly as an uninterrupted
one would (each task reseeds its own random streams from the run's seed and the task index).

Example:
    >>> from marktune.mark.config import MarkConfig
    >>> from marktune.data import load_benchmark_for
    >>> cfg = MarkConfig(benchmark="synthetic", epochs=1, kb_epochs=4, kb_grad_clip=1.0, meta_epochs=1,
    ...                  mini_tasks=2, inner_steps=2, kb_width=8, latent_dim=16, fe_channels=8, batch_size=16)
    >>> learner = MarkLearner(cfg, load_benchmark_for(cfg), verbose=0)
    >>> report = learner.train_next_task()
    >>> report.task, len(report.val_row), len(report.mask_means) == cfg.kb_depth
    (0, 1, True)
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
from torch import nn

from marktune.data.base import Benchmark, Split, Task
from marktune.mark import checkpoint, evaluation, model
from marktune.mark.compute import ComputePath, FastPath, LearnerView
from marktune.mark.config import MarkConfig
from marktune.mark.devices import deterministic_mode
from marktune.mark.evaluation import Masks, TaskReport
from marktune.mark.flops import TrainingFlops
from marktune.mark.hardware import check_precision, flush_denormals
from marktune.mark.model import KnowledgeBase, MaskGenerator, TaskHead, ones_masks
from marktune.mark.phase4 import InnerLoop, MetaRule, MetaStepRecord, Phase4Context, Phase4Settings, meta_rule
from marktune.mark.runtime import Runtime
from marktune.mark.training import EpochLoop, NonFiniteLossError, Progress, TaskData, live_features, timed

__all__ = ["MarkLearner", "MetaStepRecord", "NonFiniteLossError", "TaskData", "TaskReport"]


class MarkLearner:
    """A whole MARK continual sequence on one benchmark, one task per call.

    Args:
        config: the learner settings (a validated :class:`MarkConfig`).
        benchmark: the tasks, as loaded by :mod:`marktune.data`.
        device: where to train; whatever Ray (or the user) assigned, CPU included.
        verbose: 0 silent, 1 one line per phase, 2 one line per epoch.
        log: where progress lines go.
        record_meta: keep every outer step of phase 4 in ``meta_records`` (tests, analysis).
        compute: the compute path, built with the learner (tests give the reference path).
    """

    def __init__(self, config: MarkConfig, benchmark: Benchmark, *, device: str | torch.device = "cpu",
                 verbose: int = 1, log: Callable[[str], None] = print, record_meta: bool = False,
                 compute: Callable[[LearnerView], ComputePath] = FastPath) -> None:
        if benchmark.num_tasks < config.tasks:
            raise ValueError(f"the benchmark has {benchmark.num_tasks} tasks, the config asks for {config.tasks}")
        self.config = config
        self.benchmark = benchmark
        self.device = torch.device(device)
        self.record_meta = record_meta
        check_precision(config.precision, self.device)  # bf16 on a CPU without it would crawl
        flush_denormals(config.flush_denormals)  # process-wide, as torch's threads are
        self.meta_records: list[MetaStepRecord] = []
        self.meta_rule: MetaRule = meta_rule(config.meta_update)
        # meta_vmap None: batched mini-tasks where the loop is launch-bound (CUDA), the loop elsewhere
        self.meta_vmap = config.meta_vmap if config.meta_vmap is not None else self.device.type == "cuda"
        self.num_tasks = config.tasks
        self.tasks_done = 0
        T = self.num_tasks
        self.val_matrix = [[math.nan] * T for _ in range(T)]
        self.test_matrix = [[math.nan] * T for _ in range(T)]
        self.seconds: list[dict[str, float]] = []
        self.diagnostics: list[dict] = []
        self.compute: ComputePath = compute(self)
        self.runtime = Runtime(device=self.device, memory_format=self.compute.memory_format,
                               precision=config.precision, normalize=benchmark.normalize)
        self.progress = Progress(verbose, log)
        self.flops = TrainingFlops()  # every training step's FLOPs, from shapes (marktune.mark.flops)
        self.epochs = EpochLoop(config, self.runtime, self.progress, self.flops)
        with self._seeded(-1):
            self.kb = KnowledgeBase(image_size=benchmark.image_size, in_channels=benchmark.channels,
                                    depth=config.kb_depth, width=config.kb_width,
                                    latent_dim=config.latent_dim, dropout=config.kb_dropout).to(self.device)
        self.kb.pool_first = self.compute.pool_first
        self.kb.to(memory_format=self.compute.memory_format)
        self.extractors = nn.ModuleList()
        self.mask_generators = nn.ModuleList()
        self.heads = nn.ModuleList()

    # ------------------------------------------------------------------ driving
    def train_next_task(self) -> TaskReport:
        """Train task ``tasks_done`` (phases 1-5), then evaluate every task seen so far."""
        t = self.tasks_done
        if t >= self.num_tasks:
            raise RuntimeError(f"all {self.num_tasks} tasks are trained already")
        seconds: dict[str, float] = {}
        with deterministic_mode(self.config.deterministic):
            with self._seeded(t):
                task = self.start_task(self.benchmark.tasks[t])
                with timed(seconds, "feature"):
                    self.phase_feature_extraction(task)
                if t == 0:
                    with timed(seconds, "kb"):
                        self.phase_kb_warmup(task)
                with timed(seconds, "mask"):
                    self.phase_masks_and_head(task, "mask")
                with timed(seconds, "meta"):
                    self.meta_rule.update_kb(self.phase4_context(task))  # phase 4: reptile, seed, none, finetune
                with timed(seconds, "consolidation"):
                    self.phase_masks_and_head(task, "consolidation")
                for module in (task.extractor, task.mask_gen, task.head):
                    module.eval().requires_grad_(False)  # frozen for good
                self.tasks_done = t + 1
            with timed(seconds, "eval"):
                self.evaluate(t)
            self.diagnostics.append(evaluation.diagnostics(
                t, kb=self.kb, masks=self.compute.split_masks(t, "val", self.benchmark.tasks[t].val)))
            # the training FLOPs of tasks 0..t (kept with the diagnostics, so a checkpoint carries them)
            self.diagnostics[-1]["train_flops"] = self.flops.total if self.flops.known else math.nan
        diag = self.diagnostics[-1]
        self.progress(1, f"task {t + 1}/{self.num_tasks} KB weight norm {diag['kb_weight_norm']:.4f} (blocks "
                         f"{evaluation.fmt_row(diag['kb_block_norms'])}, fc {diag['kb_fc_norm']:.3f}), mean mask "
                         f"per block {evaluation.fmt_row(diag['mask_means'])}")
        self.seconds.append(seconds)
        return self.report(t)

    def run(self) -> TaskReport:
        """Train all remaining tasks; returns the last report."""
        report = None
        while self.tasks_done < self.num_tasks:
            report = self.train_next_task()
        assert report is not None or self.tasks_done == self.num_tasks
        return report if report is not None else self.report(self.tasks_done - 1)

    def report(self, t: int) -> TaskReport:
        return evaluation.task_report(t, num_tasks=self.num_tasks, val_matrix=self.val_matrix,
                                      test_matrix=self.test_matrix, seconds=self.seconds,
                                      diagnostics=self.diagnostics, val_counts=self.val_counts(t + 1))

    def val_counts(self, tasks: int) -> list[int]:
        """The validation images each of the first ``tasks`` tasks is scored on."""
        return [len(task.val) for task in self.benchmark.tasks[:tasks]]

    def matrices(self) -> tuple[list[list[float]], list[list[float]]]:
        """(validation, test) lower triangles of the tasks trained so far."""
        n = self.tasks_done
        return evaluation.lower_triangle(self.val_matrix, n), evaluation.lower_triangle(self.test_matrix, n)

    # ------------------------------------------------------------------ the phases
    def phase_feature_extraction(self, task: TaskData) -> None:
        """Phase 1: F_t with a throw-away head; then F_t is frozen for good."""
        cfg = self.config
        probe = TaskHead(cfg.latent_dim, task.num_classes).to(self.device)
        fe_params = [p for p in task.extractor.parameters() if p.requires_grad]
        task.extractor.train()
        self.epochs.train(task, "feature", params=fe_params + list(probe.parameters()),
                          lr=cfg.lr_task, weight_decay=cfg.weight_decay,
                          forward=lambda idx: probe(task.extractor(self.images(task.x[idx]))),
                          # as the released code: F_t and the head clipped separately
                          clip=[(fe_params, cfg.grad_clip), (list(probe.parameters()), cfg.grad_clip)])
        task.extractor.requires_grad_(False)
        if cfg.fe_bn_train:
            # the released code: batch statistics until the task ends, so no cache either
            task.features, task.features_cached = live_features(task, self.runtime, train_mode=True), False
        else:
            task.extractor.eval()  # the method (docs/method.md): running statistics from here on
            task.features, task.features_cached = self.compute.feature_source(task)

    def phase_kb_warmup(self, task: TaskData) -> None:
        """Phase 2 (task 0 only): the KB and C_0, no masks (all ones); clipped if ``kb_grad_clip``."""
        cfg = self.config
        params = list(self.kb.parameters()) + list(task.head.parameters())
        self.kb.train()
        stats = self.epochs.train(
            task, "kb", params=params, lr=cfg.lr_task, weight_decay=cfg.weight_decay,
            forward=lambda idx: task.head(self.kb(self.images(task.x[idx]),
                                                  ones_masks(self.kb, len(idx), self.device))),
            clip=[(params, cfg.kb_grad_clip)] if cfg.kb_grad_clip is not None else [])
        if stats is not None:
            # A KB blown up to finite but dead weights raises no NaN; it answers one class
            # for every image, and every later task sits at chance. Say so where it starts.
            _, acc = stats.result()
            majority = torch.bincount(task.y).max().item() / max(1, len(task.y))
            if acc <= majority + 0.02:
                self.progress(0, f"warning: the KB warm-up (task {task.t + 1}) ended at train acc {acc:.3f}, no "
                                 f"better than always answering the most common class ({majority:.3f}): it "
                                 "learned nothing. If it diverged, set kb_grad_clip (e.g. 1.0) or lower lr_task; "
                                 "with few epochs, raise kb_epochs")

    def phase_masks_and_head(self, task: TaskData, phase: str) -> None:
        """Phases 3 (``mask``) and 5 (``consolidation``): M_t and C_t on the frozen KB.

        With ``use_masks: false`` every mask is one and only C_t is trained.
        """
        cfg = self.config
        trained = ([*task.mask_gen.parameters()] if cfg.use_masks else []) + [*task.head.parameters()]
        self.kb.train()  # dropout on; its weights do not move
        task.mask_gen.train()
        with self.compute.kb_frozen():
            self.epochs.train(task, phase, params=trained, lr=cfg.mask_lr, weight_decay=cfg.weight_decay,
                              forward=lambda idx: task.head(self.kb(self.images(task.x[idx]),
                                                                    self.task_masks(task, idx))))

    def phase4_context(self, task: TaskData) -> Phase4Context:
        """What phase 4's rule gets for ``task`` (it never sees the learner)."""
        return Phase4Context(
            t=task.t, num_tasks=self.num_tasks, inner=self.inner_loop(), x=task.x, y=task.y,
            num_classes=task.num_classes, head=task.head, fixed_masks=lambda: self.fixed_masks(task),
            mini_task_batches=lambda k: self.epochs.first_batches(task, k),
            train_epochs=lambda phase, **settings: self.epochs.train(task, phase, **settings),
            progress=self.progress, records=self.meta_records if self.record_meta else None)

    def inner_loop(self) -> InnerLoop:
        """What phase 4's mini-tasks run on: the KB, the phase-4 settings, this learner's compute path."""
        return InnerLoop(kb=self.kb, settings=Phase4Settings.from_config(self.config, vmap=self.meta_vmap),
                         device=self.device, kb_copy=self.compute.kb_copy, images=self.images,
                         autocast=self.runtime.autocast, no_autograd=self.compute.no_autograd, flops=self.flops)

    def evaluate(self, t: int) -> None:
        """Fill row t of both matrices: each task u <= t with its own F_u, M_u, C_u."""
        self.kb.eval()
        for u in range(t + 1):
            task = self.benchmark.tasks[u]
            self.val_matrix[t][u] = self.compute.accuracy(u, "val", task.val)
            self.test_matrix[t][u] = self.compute.accuracy(u, "test", task.test)
        mean = lambda matrix: sum(matrix[t][: t + 1]) / (t + 1)  # noqa: E731
        self.progress(1, f"task {t + 1}/{self.num_tasks} done: val acc "
                         f"{evaluation.fmt_row(self.val_matrix[t][: t + 1])}, mean {mean(self.val_matrix):.4f}, "
                         f"test mean {mean(self.test_matrix):.4f}")

    # ------------------------------------------------------------------ masks, images, accuracy
    def task_masks(self, task: TaskData, idx: torch.Tensor) -> Masks:
        """M_t(F_t(x[idx])), or all ones with ``use_masks: false``."""
        if not self.config.use_masks:
            return ones_masks(self.kb, len(idx), self.device)
        return task.mask_gen(task.features(idx))

    def fixed_masks(self, task: TaskData) -> Callable[[torch.Tensor], Masks]:
        """``masks(idx)`` while M_t and F_t do not change (phase 4): constants, no autograd."""
        task.mask_gen.eval()
        return self.compute.fixed_masks(task)

    def images(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """A uint8 batch as the network's input (layout, then normalisation)."""
        return self.runtime.images(x_uint8)

    def split_masks(self, u: int, split: Split) -> Masks:
        """Task u's masks for every image of ``split`` (F_u, M_u in eval mode)."""
        return evaluation.split_masks(split, runtime=self.runtime, masks_for=lambda xb: self._masks_of(u, xb))

    def accuracy(self, u: int, split: Split) -> float:
        """Accuracy of task ``u``'s path through the model on ``split`` (computed from scratch)."""
        return evaluation.accuracy(split, kb=self.kb, head=self.heads[u], runtime=self.runtime,
                                   masks_for=lambda start, xb: self._masks_of(u, xb),
                                   no_autograd=self.compute.no_autograd)

    def _masks_of(self, u: int, xb: torch.Tensor) -> Masks:
        return evaluation.masks_of(xb, kb=self.kb, extractor=self.extractors[u], mask_gen=self.mask_generators[u],
                                   use_masks=self.config.use_masks)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to continue with the next task (:func:`marktune.mark.checkpoint.state_of`)."""
        return checkpoint.state_of(self)

    def load_state_dict(self, state: dict) -> None:
        checkpoint.restore(self, state)

    def forget_cache(self) -> None:
        """Drop what the compute path cached of the modules (they are about to be replaced)."""
        self.compute.forget_cache()

    def save(self, path) -> None:
        checkpoint.save(self.state_dict(), path)

    def load(self, path) -> None:
        """Continue from a saved state; a file that is not one (a crafted pickle among them) is
        refused with :class:`marktune.mark.checkpoint.CheckpointError` before any of it runs."""
        self.load_state_dict(checkpoint.load(path))

    # ------------------------------------------------------------------ a task's modules and seeds
    def start_task(self, task: Task) -> TaskData:
        """Task ``task``'s new F_t, M_t, C_t (appended to the learner's) and its images on the device."""
        extractor, mask_gen, head = self.new_task_modules(task)
        return TaskData(t=task.index, x=task.train.x.to(self.device), y=task.train.y.to(self.device),
                        num_classes=task.num_classes, extractor=extractor, mask_gen=mask_gen, head=head,
                        generator=torch.Generator().manual_seed(self._task_seed(task.index)))

    def new_task_modules(self, task: Task) -> tuple[nn.Module, MaskGenerator, TaskHead]:
        """F_t, M_t and C_t of ``task``, freshly initialised from its seed, appended to the learner's lists."""
        with self._seeded(task.index, stream=1):
            made = model.new_task_modules(self.config, image_size=self.benchmark.image_size,
                                          in_channels=self.benchmark.channels, block_channels=self.kb.channels,
                                          num_classes=task.num_classes)
        modules = tuple(m.to(self.device) for m in made)
        modules[0].to(memory_format=self.compute.memory_format)
        self.extractors.append(modules[0])
        self.mask_generators.append(modules[1])
        self.heads.append(modules[2])
        return modules  # type: ignore[return-value]

    def _task_seed(self, t: int, stream: int = 0) -> int:
        return (self.config.seed * 1_000_003 + (t + 1) * 7919 + stream * 104_729) % (2 ** 63)

    @contextlib.contextmanager
    def _seeded(self, t: int, stream: int = 0) -> Iterator[None]:
        """Seed torch for task t without disturbing the caller's random state."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self._task_seed(t, stream))
            yield
