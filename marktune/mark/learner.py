"""MARK, one task at a time: the five phases of ``../shared/MARK.md`` and evaluation.

Read it top to bottom: :meth:`MarkLearner.train_next_task` runs the phases of one task
in order; each phase is one method below it, and every epoch-based phase (and the
``finetune`` ablation) is the same epoch loop, :meth:`MarkLearner.train_epochs`.
Phase 4's rules (``reptile``, ``seed``, ``none``, ``finetune``) are one small class each
in :mod:`marktune.mark.meta_rules`. Where MARK.md is silent the released code decides (its
section "Where the authors' code decides"); the comments say where that happens.

What runs is the fast path (:class:`_FastPath`: caches what frozen modules compute, no
autograd where nothing trains). ``fast: false`` swaps in :class:`_ReferencePath`, the
plain reading of the spec: a test oracle only, which tests/mark/test_fast_path.py holds the fast
path to.

The learner is driven by whoever owns the loop (``marktune.run``, a Ray trial):
``train_next_task()`` trains the next task and evaluates every task seen so far;
``state_dict()`` / ``load_state_dict()`` save and restore everything between tasks,
so a restored learner continues exactly as an uninterrupted one would (each task
reseeds its own random streams from the run's seed and the task index).

Example:
    >>> from marktune.mark.config import MarkConfig
    >>> from marktune.data.benchmarks import load_benchmark_for
    >>> cfg = MarkConfig(benchmark="synthetic", epochs=1, kb_epochs=4, kb_grad_clip=1.0, meta_epochs=1,
    ...                  mini_tasks=2, inner_steps=2, kb_width=8, latent_dim=16, fe_channels=8, batch_size=16)
    >>> learner = MarkLearner(cfg, load_benchmark_for(cfg), verbose=0)
    >>> report = learner.train_next_task()
    >>> report.task, len(report.val_row), len(report.mask_means) == cfg.kb_depth
    (0, 1, True)
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from marktune.mark import metrics
from marktune.mark.config import MarkConfig
from marktune.data.benchmarks import Benchmark, Split, Task
from marktune.mark.devices import deterministic_mode
from marktune.mark.hardware import check_precision
from marktune.mark.inner_optim import DevicePlateau, sgd_step_
from marktune.mark.meta_rules import MetaRule, meta_rule
from marktune.mark.model import (FeatureExtractor, KnowledgeBase, MaskGenerator,
                            ResNetFeatureExtractor, TaskHead, ones_masks)

STATE_FORMAT = 2  # 2: per-task diagnostics (KB norms, mask means)
# Images per forward pass when nothing is trained (F_t features, masks, evaluation).
# Small chunks are faster per image on CPU (the conv activations stay in cache) and
# keep peak memory low; measured with bench/sequence.py.
EVAL_CHUNK = 128
# On a GPU, bigger chunks: its memory is not a cache to stay inside, and fewer launches pay
EVAL_CHUNK_CUDA = 2048

Masks = list[torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the phase and what to lower."""


@dataclass
class TaskReport:
    """What the learner knows after training task ``task`` (rows of both matrices, diagnostics)."""

    task: int
    num_tasks: int
    val_row: list[float]
    test_row: list[float]
    mean_val_acc: float
    mean_test_acc: float
    bwt_val: float
    bwt_test: float
    seconds: dict[str, float]
    # the KB's weight norm after this task: all of it, each conv block, its final Linear
    kb_weight_norm: float = math.nan
    kb_block_norms: list[float] = field(default_factory=list)
    kb_fc_norm: float = math.nan
    # mean of M_t's mask over this task's validation images, per KB block
    mask_means: list[float] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.task + 1 == self.num_tasks


@dataclass
class MetaStepRecord:
    """One outer step of phase 4, kept only when ``record_meta=True`` (tests, analysis)."""

    theta_before: list[torch.Tensor]
    theta_after: list[torch.Tensor]
    deltas: list[list[torch.Tensor]] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)


@dataclass
class TaskData:
    """What the phases of task ``t`` share: its training images and its F_t, M_t, C_t."""

    t: int
    x: torch.Tensor  # uint8 training images, on the device
    y: torch.Tensor
    num_classes: int
    extractor: nn.Module
    mask_gen: MaskGenerator
    head: TaskHead
    generator: torch.Generator  # this task's batch order
    # F_t(x[idx]) once phase 1 is done; ``features_cached``: computed once for the whole task
    features: Callable[[torch.Tensor], torch.Tensor] | None = None
    features_cached: bool = False


class MarkLearner:
    """A whole MARK continual sequence on one benchmark, one task per call.

    Args:
        config: the learner settings (a validated :class:`MarkConfig`).
        benchmark: the tasks, as loaded by :mod:`marktune.data.benchmarks`.
        device: where to train; whatever Ray (or the user) assigned, CPU included.
        verbose: 0 silent, 1 one line per phase, 2 one line per epoch.
        log: where progress lines go.
        record_meta: keep every outer step of phase 4 in ``meta_records`` (tests, analysis).
    """

    def __init__(self, config: MarkConfig, benchmark: Benchmark, *, device: str | torch.device = "cpu",
                 verbose: int = 1, log: Callable[[str], None] = print, record_meta: bool = False) -> None:
        if benchmark.num_tasks < config.tasks:
            raise ValueError(f"the benchmark has {benchmark.num_tasks} tasks, the config asks for {config.tasks}")
        self.config = config
        self.benchmark = benchmark
        self.device = torch.device(device)
        self.verbose = verbose
        self.log = log
        self.record_meta = record_meta
        check_precision(config.precision, self.device)  # bf16 on a CPU without it would crawl
        self.meta_records: list[MetaStepRecord] = []
        self.meta_rule: MetaRule = meta_rule(config.meta_update)
        # meta_vmap None: batched mini-tasks where the loop is launch-bound (CUDA), the loop elsewhere
        self.meta_vmap = config.meta_vmap if config.meta_vmap is not None else self.device.type == "cuda"
        self.eval_chunk = EVAL_CHUNK_CUDA if self.device.type == "cuda" else EVAL_CHUNK
        self.num_tasks = config.tasks
        self.tasks_done = 0
        T = self.num_tasks
        self.val_matrix = [[math.nan] * T for _ in range(T)]
        self.test_matrix = [[math.nan] * T for _ in range(T)]
        self.seconds: list[dict[str, float]] = []
        self.diagnostics: list[dict] = []
        self._path: _FastPath | _ReferencePath = _FastPath(self) if config.fast else _ReferencePath(self)
        with self._seeded(-1):
            self.kb = KnowledgeBase(image_size=benchmark.image_size, in_channels=benchmark.channels,
                                    depth=config.kb_depth, width=config.kb_width,
                                    latent_dim=config.latent_dim, dropout=config.kb_dropout).to(self.device)
        self.kb.pool_first = self._path.pool_first
        self.kb.to(memory_format=self._path.memory_format)
        self.extractors = nn.ModuleList()
        self.mask_generators = nn.ModuleList()
        self.heads = nn.ModuleList()

    # ------------------------------------------------------------------ driving
    def train_next_task(self) -> TaskReport:
        """Train task ``tasks_done`` (phases 1-5), then evaluate every task seen so far."""
        with deterministic_mode(self.config.deterministic):
            return self._train_next_task()

    def _train_next_task(self) -> TaskReport:
        t = self.tasks_done
        if t >= self.num_tasks:
            raise RuntimeError(f"all {self.num_tasks} tasks are trained already")
        seconds: dict[str, float] = {}
        with self._seeded(t):
            task = self._start_task(self.benchmark.tasks[t])
            with _timed(seconds, "feature"):
                self.phase_feature_extraction(task)
            if t == 0:
                with _timed(seconds, "kb"):
                    self.phase_kb_warmup(task)
            with _timed(seconds, "mask"):
                self.phase_masks_and_head(task, "mask")
            with _timed(seconds, "meta"):
                self.meta_rule.update_kb(self, task)  # phase 4: reptile, seed, none or finetune
            with _timed(seconds, "consolidation"):
                self.phase_masks_and_head(task, "consolidation")
            for module in (task.extractor, task.mask_gen, task.head):
                module.eval().requires_grad_(False)  # frozen for good
            self.tasks_done = t + 1
        with _timed(seconds, "eval"):
            self._evaluate(t)
        self.diagnostics.append(self._diagnostics(t))
        diag = self.diagnostics[-1]
        self._log(1, f"task {t + 1}/{self.num_tasks} KB weight norm {diag['kb_weight_norm']:.4f} (blocks "
                     f"{_fmt_row(diag['kb_block_norms'])}, fc {diag['kb_fc_norm']:.3f}), mean mask per block "
                     f"{_fmt_row(diag['mask_means'])}")
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
        val = [row[: r + 1] for r, row in enumerate(self.val_matrix[: t + 1])]
        test = [row[: r + 1] for r, row in enumerate(self.test_matrix[: t + 1])]
        diag = self.diagnostics[t] if t < len(self.diagnostics) else {}
        return TaskReport(
            task=t, num_tasks=self.num_tasks, val_row=val[-1], test_row=test[-1],
            mean_val_acc=metrics.mean_accuracy_per_task(val)[-1],
            mean_test_acc=metrics.mean_accuracy_per_task(test)[-1],
            bwt_val=metrics.backward_transfer(val), bwt_test=metrics.backward_transfer(test),
            seconds=dict(self.seconds[t]) if t < len(self.seconds) else {},
            kb_weight_norm=diag.get("kb_weight_norm", math.nan),
            kb_block_norms=list(diag.get("kb_block_norms", [])),
            kb_fc_norm=diag.get("kb_fc_norm", math.nan),
            mask_means=list(diag.get("mask_means", [])),
        )

    def matrices(self) -> tuple[list[list[float]], list[list[float]]]:
        """(validation, test) lower triangles of the tasks trained so far."""
        n = self.tasks_done
        tri = lambda M: [row[: r + 1] for r, row in enumerate(M[:n])]  # noqa: E731
        return tri(self.val_matrix), tri(self.test_matrix)

    # ------------------------------------------------------------------ the phases
    def phase_feature_extraction(self, task: TaskData) -> None:
        """Phase 1: F_t with a throw-away head; then F_t is frozen for good."""
        cfg = self.config
        probe = TaskHead(cfg.latent_dim, task.num_classes).to(self.device)
        fe_params = [p for p in task.extractor.parameters() if p.requires_grad]
        task.extractor.train()
        self.train_epochs(task, "feature", params=fe_params + list(probe.parameters()),
                          lr=cfg.lr_task, weight_decay=cfg.weight_decay,
                          forward=lambda idx: probe(task.extractor(self.images(task.x[idx]))),
                          # as the released code: F_t and the head clipped separately
                          clip=[(fe_params, cfg.grad_clip), (list(probe.parameters()), cfg.grad_clip)])
        task.extractor.requires_grad_(False)
        if cfg.fe_bn_train:
            # the released code: batch statistics until the task ends, so no cache either
            task.features, task.features_cached = self._live_features(task, train_mode=True), False
        else:
            task.extractor.eval()  # MARK.md: running statistics from here on
            task.features, task.features_cached = self._path.feature_source(task)

    def phase_kb_warmup(self, task: TaskData) -> None:
        """Phase 2 (task 0 only): the KB and C_0, no masks (all ones); clipped if ``kb_grad_clip``."""
        cfg = self.config
        params = list(self.kb.parameters()) + list(task.head.parameters())
        self.kb.train()
        stats = self.train_epochs(
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
                self._log(0, f"warning: the KB warm-up (task {task.t + 1}) ended at train acc {acc:.3f}, no "
                             f"better than always answering the most common class ({majority:.3f}): it learned "
                             "nothing. If it diverged, set kb_grad_clip (e.g. 1.0) or lower lr_task; with "
                             "few epochs, raise kb_epochs")

    def phase_masks_and_head(self, task: TaskData, phase: str) -> None:
        """Phases 3 (``mask``) and 5 (``consolidation``): M_t and C_t on the frozen KB.

        With ``use_masks: false`` every mask is one and only C_t is trained.
        """
        cfg = self.config
        trained = ([*task.mask_gen.parameters()] if cfg.use_masks else []) + [*task.head.parameters()]
        self.kb.train()  # dropout on; its weights do not move
        task.mask_gen.train()
        with self._path.kb_frozen():
            self.train_epochs(task, phase, params=trained, lr=cfg.mask_lr, weight_decay=cfg.weight_decay,
                              forward=lambda idx: task.head(self.kb(self.images(task.x[idx]),
                                                                    self.task_masks(task, idx))))

    # Phase 4 is ``self.meta_rule.update_kb(self, task)``: see marktune/mark/meta_rules.py.

    # ------------------------------------------------------------------ the shared epoch loop
    def train_epochs(self, task: TaskData, phase: str, *, params: list[nn.Parameter], lr: float,
                     weight_decay: float, forward: Callable[[torch.Tensor], torch.Tensor],
                     momentum: float | None = None,
                     clip: Sequence[tuple[list[nn.Parameter], float]] = ()) -> "_EpochStats | None":
        """``phase_epochs(phase)`` epochs of SGD over shuffled batches of task t's images.

        ``forward(idx)`` gives the logits of the batch ``task.x[idx]``; each ``(params,
        max_norm)`` of ``clip`` is clipped on its own. Returns the last epoch's statistics
        (None when there were no epochs).
        """
        epochs = self.config.phase_epochs(phase)
        opt = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay,
                              momentum=self.config.momentum if momentum is None else momentum)
        stats = None
        for epoch in range(epochs):
            stats = _EpochStats()
            for idx in self.batches(task):
                with self._autocast():
                    logits = forward(idx)
                    loss = F.cross_entropy(logits.float(), task.y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for group, max_norm in clip:
                    torch.nn.utils.clip_grad_norm_(group, max_norm)
                opt.step()
                stats.add(loss, logits, task.y[idx])
            self._end_epoch(task.t, phase, epoch, epochs, stats)
        return stats

    # ------------------------------------------------------------------ what the phase-4 rules use
    def batches(self, task: TaskData) -> Iterator[torch.Tensor]:
        """One shuffled pass over task t's training images, in batches of ``batch_size``."""
        order = torch.randperm(len(task.y), generator=task.generator).to(self.device)
        for start in range(0, len(task.y), self.config.batch_size):
            yield order[start:start + self.config.batch_size]

    def first_batches(self, task: TaskData, k: int) -> list[torch.Tensor]:
        """Phase 4's mini-task batches: a fresh shuffled pass, its first ``k`` batches (as the
        released code; fewer when one pass has fewer)."""
        return list(itertools.islice(self.batches(task), k))

    def task_masks(self, task: TaskData, idx: torch.Tensor) -> Masks:
        """M_t(F_t(x[idx])), or all ones with ``use_masks: false``."""
        if not self.config.use_masks:
            return ones_masks(self.kb, len(idx), self.device)
        return task.mask_gen(task.features(idx))

    def fixed_masks(self, task: TaskData) -> Callable[[torch.Tensor], Masks]:
        """``masks(idx)`` while M_t and F_t do not change (phase 4): constants, no autograd."""
        task.mask_gen.eval()
        return self._path.fixed_masks(task)

    def adapt_mini_tasks(self, task: TaskData, chosen: list[torch.Tensor],
                         masks_for: Callable[[torch.Tensor], Masks]) -> Iterable[tuple[list[torch.Tensor], float]]:
        """``(delta_k, a_k)`` of each mini-task: a copy of the KB and a fresh head trained on one batch."""
        if self.meta_vmap:
            return self._adapt_mini_tasks_vmap(task.t, task.x, task.y, chosen, masks_for, task.num_classes)
        return (self._adapt_mini_task(task.t, self.images(task.x[idx]), task.y[idx], masks_for(idx),
                                      task.num_classes) for idx in chosen)

    def images(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """A uint8 batch as the network's input (layout, then normalisation)."""
        return self.benchmark.normalize(x_uint8.contiguous(memory_format=self._path.memory_format))

    def check_kb_finite(self, t: int, outer: int) -> None:
        if not torch.stack([torch.isfinite(p).all() for p in self.kb.parameters()]).all():  # one read-back
            raise NonFiniteLossError(f"the KB became NaN/inf in phase meta of task {t} (step {outer + 1}); "
                                     "lower meta_step or lr_meta")

    def _inner_kb_decay(self) -> float:
        """Weight decay of the KB copies in phase 4's inner loop: ``meta_weight_decay``, or 0 with
        ``meta_decay_head_only`` (then delta_k holds no decay towards 0, only what the batch taught)."""
        return 0.0 if self.config.meta_decay_head_only else self.config.meta_weight_decay

    def _adapt_mini_task(self, t: int, xb: torch.Tensor, yb: torch.Tensor, masks: Masks,
                         num_classes: int) -> tuple[list[torch.Tensor], float]:
        """Train a copy of the KB and a fresh head on one batch; return (delta, accuracy)."""
        cfg = self.config
        kb_copy = self._path.kb_copy()  # only the KB: F_t and M_t are not trained here
        kb_copy.requires_grad_(True)
        head = TaskHead(cfg.latent_dim, num_classes).to(self.device)
        kb_params, head_params = list(kb_copy.parameters()), list(head.parameters())
        params = kb_params + head_params
        decays = [self._inner_kb_decay()] * len(kb_params) + [cfg.meta_weight_decay] * len(head_params)
        momentum: list[torch.Tensor | None] = [None] * len(params)
        # SGD under the released ReduceLROnPlateau, with its state on the device: no host sync per step
        plateau = DevicePlateau(lr=cfg.lr_meta, shape=(), device=self.device)
        kb_copy.train()
        loss = None
        for _ in range(cfg.inner_steps):
            with self._autocast():
                loss = F.cross_entropy(head(kb_copy(xb, masks)).float(), yb)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                sgd_step_(params, list(grads), momentum, lr=cfg.lr_meta, scale=plateau.scale,
                          momentum=cfg.momentum, weight_decays=decays)
            plateau.step(loss)
        if loss is not None and cfg.nan_check and not torch.isfinite(loss):
            raise NonFiniteLossError(f"the loss became {loss.item()} in phase meta of task {t} "
                                     f"(inner steps); lower lr_meta (now {cfg.lr_meta})")
        # a_k as the released code: one more forward pass on the same batch, in train mode
        # (dropout on), no update
        with self._path.no_autograd(), self._autocast():
            acc = (head(kb_copy(xb, masks)).argmax(1) == yb).float().mean().item()
        delta = [pc.detach() - p.detach() for pc, p in zip(kb_copy.parameters(), self.kb.parameters())]
        return delta, acc

    def _adapt_mini_tasks_vmap(self, t: int, x: torch.Tensor, y: torch.Tensor, chosen: list[torch.Tensor],
                               masks_for: Callable[[torch.Tensor], Masks],
                               num_classes: int) -> list[tuple[list[torch.Tensor], float]]:
        """``_adapt_mini_task`` for all K mini-tasks at once (``meta_vmap``), with ``torch.func``.

        Every copy has its own KB weights, head, SGD momentum and plateau rule (one
        :class:`DevicePlateau` over K copies, so each learning rate follows its own copy's
        loss); ``vmap`` runs them together (``randomness="different"``: each copy
        draws its own dropout). The heads are drawn up front, in mini-task order, so
        without dropout the copies start exactly as the loop's do. Mini-tasks whose
        batches differ in size (the last batch of a pass) run in separate groups.
        """
        from torch.func import functional_call, grad_and_value, vmap

        cfg = self.config
        names = [n for n, _ in self.kb.named_parameters()]
        theta = {n: p.detach() for n, p in self.kb.named_parameters()}
        heads = [TaskHead(cfg.latent_dim, num_classes).to(self.device) for _ in chosen]

        def logits_of(params: dict[str, torch.Tensor], xk: torch.Tensor, mk: Masks) -> torch.Tensor:
            h = functional_call(self.kb, {n: params["kb." + n] for n in names}, (xk, mk))
            return F.linear(h, params["head.weight"], params["head.bias"])

        def loss_of(params, xk, yk, mk):
            return F.cross_entropy(logits_of(params, xk, mk).float(), yk)

        step = vmap(grad_and_value(loss_of), randomness="different")
        groups: dict[int, list[int]] = {}
        for k, idx in enumerate(chosen):
            groups.setdefault(len(idx), []).append(k)
        results: list[tuple[list[torch.Tensor], float]] = [([], 0.0)] * len(chosen)
        for ks in groups.values():
            xb = torch.stack([self.images(x[chosen[k]]) for k in ks])
            yb = torch.stack([y[chosen[k]] for k in ks])
            mb = [torch.stack(parts) for parts in zip(*(masks_for(chosen[k]) for k in ks))]
            params = {"kb." + n: torch.stack([theta[n]] * len(ks)) for n in names}
            params["head.weight"] = torch.stack([heads[k].weight.detach() for k in ks])
            params["head.bias"] = torch.stack([heads[k].bias.detach() for k in ks])
            keys = list(params)
            decays = [self._inner_kb_decay() if n.startswith("kb.") else cfg.meta_weight_decay for n in keys]
            momentum: list[torch.Tensor | None] = [None] * len(keys)
            plateau = DevicePlateau(lr=cfg.lr_meta, shape=(len(ks),), device=self.device)
            self.kb.train()
            loss = None
            for _ in range(cfg.inner_steps):
                with self._autocast():
                    grads, loss = step(params, xb, yb, mb)
                with torch.no_grad():  # torch.optim.SGD's update, each copy at its own rate
                    sgd_step_([params[n] for n in keys], [grads[n] for n in keys], momentum, lr=cfg.lr_meta,
                              scale=plateau.scale, momentum=cfg.momentum, weight_decays=decays)
                plateau.step(loss)
            if loss is not None and cfg.nan_check and not torch.isfinite(loss).all():
                raise NonFiniteLossError(f"the loss became {loss.max().item()} in phase meta of task {t} "
                                         f"(inner steps); lower lr_meta (now {cfg.lr_meta})")
            # a_k: train mode, each copy its own dropout, as the loop
            with self._path.no_autograd(), self._autocast():
                acc = (vmap(logits_of, randomness="different")(params, xb, mb).argmax(-1) == yb
                       ).float().mean(1).tolist()
            for i, k in enumerate(ks):
                results[k] = ([params["kb." + n][i] - theta[n] for n in names], acc[i])
        return results

    # ------------------------------------------------------------------ evaluation and diagnostics
    def _evaluate(self, t: int) -> None:
        """Fill row t of both matrices: each task u <= t with its own F_u, M_u, C_u."""
        self.kb.eval()
        for u in range(t + 1):
            task = self.benchmark.tasks[u]
            self.val_matrix[t][u] = self._path.accuracy(u, "val", task.val)
            self.test_matrix[t][u] = self._path.accuracy(u, "test", task.test)
        self._log(1, f"task {t + 1}/{self.num_tasks} done: val acc "
                     f"{_fmt_row(self.val_matrix[t][: t + 1])}, mean {self.report_mean(t, self.val_matrix):.4f}, "
                     f"test mean {self.report_mean(t, self.test_matrix):.4f}")

    def accuracy(self, u: int, split: Split) -> float:
        """Accuracy of task ``u``'s path through the model on ``split`` (computed from scratch)."""
        with self._path.no_autograd():
            self.kb.eval()
            head = self.heads[u].eval()
            correct, n = 0, self.eval_chunk
            x, y = split.x.to(self.device), split.y.to(self.device)  # one copy per split, not per chunk
            for start in range(0, len(y), n):
                xb = self.images(x[start:start + n])
                yb = y[start:start + n]
                with self._autocast():
                    logits = head(self.kb(xb, self._masks_of(u, xb)))
                correct += int((logits.argmax(1) == yb).sum())
            return correct / max(1, len(split.y))

    def split_masks(self, u: int, split: Split) -> Masks:
        """Task u's masks for every image of ``split`` (F_u, M_u in eval mode)."""
        with torch.inference_mode():
            chunks, n = [], self.eval_chunk
            x = split.x.to(self.device)
            for start in range(0, len(x), n):
                xb = self.images(x[start:start + n])
                with self._autocast():
                    chunks.append(self._masks_of(u, xb))
            return [torch.cat(parts) for parts in zip(*chunks)] if chunks else []

    def _masks_of(self, u: int, xb: torch.Tensor) -> Masks:
        if not self.config.use_masks:
            return ones_masks(self.kb, len(xb), self.device)
        return self.mask_generators[u].eval()(self.extractors[u].eval()(xb))

    def _diagnostics(self, t: int) -> dict:
        """After task t: the KB's weight norm (total, per conv block, its Linear) and the mean
        mask of task t per block on its validation images (a dead ReLU mask shows as 0)."""
        def norm(params: Iterable[torch.Tensor]) -> float:
            return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in params))

        masks = self._path.split_masks(t, "val", self.benchmark.tasks[t].val)
        return {"task": t,
                "kb_weight_norm": norm(self.kb.parameters()),
                "kb_block_norms": [norm(conv.parameters()) for conv in self.kb.convs],
                "kb_fc_norm": norm(self.kb.fc.parameters()),
                "mask_means": [float(m.float().mean()) for m in masks]}

    def report_mean(self, t: int, matrix: list[list[float]]) -> float:
        return sum(matrix[t][: t + 1]) / (t + 1)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to continue with the next task (no optimiser: none outlives a phase)."""
        return {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "benchmark": self.benchmark.name,
            "tasks_done": self.tasks_done,
            "kb": _cpu(self.kb.state_dict()),
            "extractors": [_cpu(m.state_dict()) for m in self.extractors],
            "mask_generators": [_cpu(m.state_dict()) for m in self.mask_generators],
            "heads": [_cpu(m.state_dict()) for m in self.heads],
            "val_matrix": [list(r) for r in self.val_matrix],
            "test_matrix": [list(r) for r in self.test_matrix],
            "seconds": [dict(s) for s in self.seconds],
            "diagnostics": [dict(d) for d in self.diagnostics],
            "rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown learner state format {state.get('format')!r} (this version writes "
                             f"{STATE_FORMAT}); start the run again")
        if state["config"] != self.config.to_dict():
            diff = sorted(k for k, v in state["config"].items() if self.config.to_dict().get(k) != v)
            raise ValueError(f"the saved state was made with another config (differs in: {', '.join(diff)})")
        self.kb.load_state_dict(state["kb"])
        self._path.forget_cache()
        self.extractors = nn.ModuleList()
        self.mask_generators = nn.ModuleList()
        self.heads = nn.ModuleList()
        for u in range(state["tasks_done"]):
            extractor, mask_gen, head = self._new_task_modules(self.benchmark.tasks[u])
            extractor.load_state_dict(state["extractors"][u])
            mask_gen.load_state_dict(state["mask_generators"][u])
            head.load_state_dict(state["heads"][u])
            for m in (extractor, mask_gen, head):
                m.eval().requires_grad_(False)
        self.tasks_done = state["tasks_done"]
        self.val_matrix = [list(r) for r in state["val_matrix"]]
        self.test_matrix = [list(r) for r in state["test_matrix"]]
        self.seconds = [dict(s) for s in state["seconds"]]
        self.diagnostics = [dict(d) for d in state["diagnostics"]]
        torch.set_rng_state(state["rng"])

    def save(self, path) -> None:
        torch.save(self.state_dict(), path)

    def load(self, path) -> None:
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))

    # ------------------------------------------------------------------ helpers
    def _start_task(self, task: Task) -> TaskData:
        extractor, mask_gen, head = self._new_task_modules(task)
        return TaskData(t=task.index, x=task.train.x.to(self.device), y=task.train.y.to(self.device),
                        num_classes=task.num_classes, extractor=extractor, mask_gen=mask_gen, head=head,
                        generator=torch.Generator().manual_seed(self._task_seed(task.index)))

    def _new_task_modules(self, task: Task) -> tuple[nn.Module, MaskGenerator, TaskHead]:
        cfg = self.config
        with self._seeded(task.index, stream=1):
            if cfg.feature_extractor == "resnet18":
                extractor: nn.Module = ResNetFeatureExtractor(latent_dim=cfg.latent_dim,
                                                              weights_path=cfg.resnet_weights)
            else:
                extractor = FeatureExtractor(image_size=self.benchmark.image_size,
                                             in_channels=self.benchmark.channels,
                                             channels=cfg.fe_channels, latent_dim=cfg.latent_dim)
            mask_gen = MaskGenerator(latent_dim=cfg.latent_dim, block_channels=self.kb.channels,
                                     hidden=cfg.mask_hidden, activation=cfg.mask_activation, init=cfg.mask_init)
            head = TaskHead(cfg.latent_dim, task.num_classes)
        modules = tuple(m.to(self.device) for m in (extractor, mask_gen, head))
        modules[0].to(memory_format=self._path.memory_format)
        self.extractors.append(modules[0])
        self.mask_generators.append(modules[1])
        self.heads.append(modules[2])
        return modules  # type: ignore[return-value]

    def _live_features(self, task: TaskData, *, train_mode: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        """``features(idx)`` computed on every call (F_t frozen; its BatchNorm in train or eval mode)."""
        def compute(idx: torch.Tensor) -> torch.Tensor:
            task.extractor.train(train_mode)
            with torch.no_grad(), self._autocast():
                return task.extractor(self.images(task.x[idx])).float()
        return compute

    def _task_seed(self, t: int, stream: int = 0) -> int:
        return (self.config.seed * 1_000_003 + (t + 1) * 7919 + stream * 104_729) % (2 ** 63)

    @contextlib.contextmanager
    def _seeded(self, t: int, stream: int = 0) -> Iterator[None]:
        """Seed torch for task t without disturbing the caller's random state."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self._task_seed(t, stream))
            yield

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.config.precision == "bf16")

    def _end_epoch(self, t: int, phase: str, epoch: int, epochs: int, stats: "_EpochStats") -> None:
        loss, acc = stats.result()
        if self.config.nan_check and not math.isfinite(loss):
            hint = {"feature": "lr_task", "kb": "lr_task or set kb_grad_clip (e.g. 1.0)",
                    "mask": "lr_mask (or lr_task)", "consolidation": "lr_mask (or lr_task)",
                    "finetune": "lr_meta"}[phase]
            raise NonFiniteLossError(f"the loss became {loss} in phase {phase} of task {t} "
                                     f"(epoch {epoch + 1}); lower {hint}")
        level = 1 if epoch + 1 == epochs else 2
        self._log(level, f"task {t + 1}/{self.num_tasks} {phase:<13} epoch {epoch + 1}/{epochs} "
                         f"loss {loss:.4f} train acc {acc:.3f}")

    def _log(self, level: int, message: str) -> None:
        if self.verbose >= level:
            self.log(message)


class _FastPath:
    """What runs (``fast: true``): the same results as :class:`_ReferencePath` up to float
    round-off, faster. F_t's features and M_t's phase-4 masks are computed once per task
    (both are frozen then), evaluation reuses each finished task's masks, nothing that is
    not trained gets gradients, phase 4 refills one copy of the KB, each KB block pools
    before its ReLU (they commute), conv tensors are channels-last (``channels_last``)."""

    pool_first = True

    def __init__(self, learner: MarkLearner) -> None:
        self.learner = learner
        self.memory_format = (torch.channels_last if learner.config.channels_last
                              else torch.contiguous_format)
        self._kb_work: KnowledgeBase | None = None
        # masks M_u(F_u(x)) of each finished task's val/test images: both are frozen, so only
        # the KB part of evaluation has to run again after later tasks
        self._eval_masks: dict[tuple[int, str], Masks] = {}

    def no_autograd(self):
        return torch.inference_mode()

    def feature_source(self, task: TaskData) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
        """F_t(x) for the whole task, once (F_t frozen, eval mode): ``features(idx)`` indexes it."""
        learner = self.learner
        chunks = []
        with torch.inference_mode():
            n = learner.eval_chunk
            for start in range(0, len(task.x), n):
                with learner._autocast():
                    chunks.append(task.extractor(learner.images(task.x[start:start + n])).float())
        features = torch.cat(chunks).clone()  # outside inference mode: usable in autograd later
        return (lambda idx: features[idx]), True

    def fixed_masks(self, task: TaskData) -> Callable[[torch.Tensor], Masks]:
        if not task.features_cached:  # F_t in train mode: masks depend on the batch
            def live(idx: torch.Tensor) -> Masks:
                with torch.no_grad():
                    return [m.detach() for m in self.learner.task_masks(task, idx)]
            return live
        with torch.inference_mode():
            every = torch.arange(len(task.y), device=self.learner.device)
            masks_all = self.learner.task_masks(task, every)
        masks_all = [m.clone() for m in masks_all]
        return lambda idx: [m[idx] for m in masks_all]

    @contextlib.contextmanager
    def kb_frozen(self) -> Iterator[None]:
        kb = self.learner.kb
        kb.requires_grad_(False)
        try:
            yield
        finally:
            kb.requires_grad_(True)

    def kb_copy(self) -> KnowledgeBase:
        kb = self.learner.kb
        if self._kb_work is None:
            self._kb_work = copy.deepcopy(kb)
        with torch.no_grad():
            for pc, p in zip(self._kb_work.parameters(), kb.parameters()):
                pc.copy_(p)
                pc.grad = None
        return self._kb_work

    def split_masks(self, u: int, name: str, split: Split) -> Masks:
        if (u, name) not in self._eval_masks:
            self._eval_masks[(u, name)] = self.learner.split_masks(u, split)
        return self._eval_masks[(u, name)]

    @torch.inference_mode()
    def accuracy(self, u: int, name: str, split: Split) -> float:
        learner = self.learner
        learner.kb.eval()
        head = learner.heads[u].eval()
        masks = self.split_masks(u, name, split)
        correct = torch.zeros((), dtype=torch.long, device=learner.device)
        x, y, n = split.x.to(learner.device), split.y.to(learner.device), learner.eval_chunk
        for start in range(0, len(y), n):
            xb = learner.images(x[start:start + n])
            with learner._autocast():
                logits = head(learner.kb(xb, [m[start:start + n] for m in masks]))
            correct += (logits.argmax(1) == y[start:start + n]).sum()
        return int(correct) / max(1, len(split.y))

    def forget_cache(self) -> None:
        self._eval_masks.clear()


class _ReferencePath:
    """TEST ORACLE ONLY (``fast: false``): the plain reading of MARK.md, kept so that
    tests/mark/test_fast_path.py can hold :class:`_FastPath` to it. Autograd everywhere, nothing
    cached (F_t and M_t run again for every batch), a deep copy of the KB per mini-task,
    ReLU before max-pool, contiguous tensors. Never the faster choice."""

    pool_first = False
    memory_format = torch.contiguous_format

    def __init__(self, learner: MarkLearner) -> None:
        self.learner = learner

    def no_autograd(self):
        return contextlib.nullcontext()

    def feature_source(self, task: TaskData) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
        return self.learner._live_features(task, train_mode=False), False

    def fixed_masks(self, task: TaskData) -> Callable[[torch.Tensor], Masks]:
        return lambda idx: [m.detach() for m in self.learner.task_masks(task, idx)]

    @contextlib.contextmanager
    def kb_frozen(self) -> Iterator[None]:
        try:
            yield  # the KB's gradients are computed and dropped: only M_t and C_t are stepped
        finally:
            for p in self.learner.kb.parameters():
                p.grad = None

    def kb_copy(self) -> KnowledgeBase:
        return copy.deepcopy(self.learner.kb)

    def split_masks(self, u: int, name: str, split: Split) -> Masks:
        return self.learner.split_masks(u, split)

    def accuracy(self, u: int, name: str, split: Split) -> float:
        return self.learner.accuracy(u, split)

    def forget_cache(self) -> None:
        pass


class _EpochStats:
    """Running loss/accuracy of an epoch, kept on the device (one sync per epoch)."""

    def __init__(self) -> None:
        self.loss = 0.0
        self.correct = 0.0
        self.count = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        n = len(y)
        self.loss = self.loss + loss.detach() * n
        self.correct = self.correct + (logits.detach().argmax(1) == y).sum()
        self.count += n

    def result(self) -> tuple[float, float]:
        if self.count == 0:
            return 0.0, 0.0
        return float(self.loss) / self.count, float(self.correct) / self.count


@contextlib.contextmanager
def _timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _fmt_row(row: list[float]) -> str:
    return "[" + " ".join(f"{a:.3f}" for a in row) + "]"
