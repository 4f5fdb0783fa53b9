"""MARK, one task at a time: the five phases of ``../shared/MARK.md`` and evaluation.

The learner is driven by whoever owns the loop (``marktune.run``, a Ray trial):
``train_next_task()`` trains the next task and evaluates every task seen so far;
``state_dict()`` / ``load_state_dict()`` save and restore everything between tasks,
so a restored learner continues exactly as an uninterrupted one would (each task
reseeds its own random streams from the run's seed and the task index).

Example:
    >>> from marktune.config import MarkConfig
    >>> from marktune.data import load_benchmark_for
    >>> cfg = MarkConfig(benchmark="synthetic", epochs=1, meta_epochs=1, mini_tasks=2,
    ...                  inner_steps=2, kb_width=8, latent_dim=16, fe_channels=8)
    >>> learner = MarkLearner(cfg, load_benchmark_for(cfg), verbose=0)
    >>> report = learner.train_next_task()
    >>> report.task, len(report.val_row)
    (0, 1)
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from marktune import metrics
from marktune.config import MarkConfig
from marktune.data import Benchmark, Split, Task
from marktune.model import (FeatureExtractor, KnowledgeBase, MaskGenerator,
                            ResNetFeatureExtractor, TaskHead, ones_masks)

STATE_FORMAT = 1
# Images per forward pass when nothing is trained (F_t features, masks, evaluation).
# Small chunks are faster per image on CPU (the conv activations stay in cache) and
# keep peak memory low; measured with bench/sequence.py.
EVAL_CHUNK = 128


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the phase and what to lower."""


@dataclass
class TaskReport:
    """What the learner knows after training task ``task`` (rows of both matrices)."""

    task: int
    num_tasks: int
    val_row: list[float]
    test_row: list[float]
    mean_val_acc: float
    mean_test_acc: float
    bwt_val: float
    bwt_test: float
    seconds: dict[str, float]

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


class MarkLearner:
    """A whole MARK continual sequence on one benchmark, one task per call.

    Args:
        config: the learner settings (a validated :class:`MarkConfig`).
        benchmark: the tasks, as loaded by :mod:`marktune.data`.
        device: where to train; whatever Ray (or the user) assigned, CPU included.
        verbose: 0 silent, 1 one line per phase, 2 one line per epoch.
        log: where progress lines go.
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
        self.meta_records: list[MetaStepRecord] = []
        self.num_tasks = config.tasks
        self.tasks_done = 0
        T = self.num_tasks
        self.val_matrix = [[math.nan] * T for _ in range(T)]
        self.test_matrix = [[math.nan] * T for _ in range(T)]
        self.seconds: list[dict[str, float]] = []
        with self._seeded(-1):
            self.kb = KnowledgeBase(image_size=benchmark.image_size, in_channels=benchmark.channels,
                                    depth=config.kb_depth, width=config.kb_width,
                                    latent_dim=config.latent_dim, dropout=config.kb_dropout).to(self.device)
        # The fast path (default) and the plain reference path (``fast: false``): same
        # results up to float round-off, which tests/test_speed.py checks.
        self._fast = config.fast
        self._memory_format = (torch.channels_last if config.fast and config.channels_last
                               else torch.contiguous_format)
        self.kb.pool_first = config.fast
        self.kb.to(memory_format=self._memory_format)
        self._kb_work: KnowledgeBase | None = None  # phase 4's reusable copy (fast path)
        # masks M_u(F_u(x)) of each finished task's val/test images: both are frozen,
        # so only the KB part of evaluation has to run again after later tasks
        self._eval_masks: dict[tuple[int, str], list[torch.Tensor]] = {}
        self.extractors = nn.ModuleList()
        self.mask_generators = nn.ModuleList()
        self.heads = nn.ModuleList()

    # ------------------------------------------------------------------ driving
    def train_next_task(self) -> TaskReport:
        """Train task ``tasks_done`` (phases 1-5), then evaluate every task seen so far."""
        t = self.tasks_done
        if t >= self.num_tasks:
            raise RuntimeError(f"all {self.num_tasks} tasks are trained already")
        task = self.benchmark.tasks[t]
        seconds: dict[str, float] = {}
        with self._seeded(t):
            generator = torch.Generator().manual_seed(self._task_seed(t))
            x, y = task.train.x.to(self.device), task.train.y.to(self.device)
            extractor, mask_gen, head = self._new_task_modules(task)

            with _timed(seconds, "feature"):
                self._phase_feature_extraction(t, extractor, x, y, task.num_classes, generator)
            features = self._feature_source(extractor, x)
            if t == 0:
                with _timed(seconds, "kb"):
                    self._phase_kb_warmup(t, head, x, y, generator)
            with _timed(seconds, "mask"):
                self._phase_masks(t, "mask", mask_gen, head, x, y, features, generator)
            if self.config.meta_update != "none":
                with _timed(seconds, "meta"):
                    self._phase_meta(t, mask_gen, x, y, features, task.num_classes, generator)
                with _timed(seconds, "consolidation"):
                    self._phase_masks(t, "consolidation", mask_gen, head, x, y, features, generator)
            for module in (mask_gen, head):
                module.requires_grad_(False)
            self.tasks_done = t + 1
        with _timed(seconds, "eval"):
            self._evaluate(t)
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
        return TaskReport(
            task=t, num_tasks=self.num_tasks, val_row=val[-1], test_row=test[-1],
            mean_val_acc=metrics.mean_accuracy_per_task(val)[-1],
            mean_test_acc=metrics.mean_accuracy_per_task(test)[-1],
            bwt_val=metrics.backward_transfer(val), bwt_test=metrics.backward_transfer(test),
            seconds=dict(self.seconds[t]) if t < len(self.seconds) else {},
        )

    def matrices(self) -> tuple[list[list[float]], list[list[float]]]:
        """(validation, test) lower triangles of the tasks trained so far."""
        n = self.tasks_done
        tri = lambda M: [row[: r + 1] for r, row in enumerate(M[:n])]  # noqa: E731
        return tri(self.val_matrix), tri(self.test_matrix)

    # ------------------------------------------------------------------ phases
    def _phase_feature_extraction(self, t: int, extractor: nn.Module, x: torch.Tensor, y: torch.Tensor,
                                  num_classes: int, generator: torch.Generator) -> None:
        """Phase 1: F_t with a throw-away head; then F_t is frozen for good."""
        cfg = self.config
        probe = TaskHead(cfg.latent_dim, num_classes).to(self.device)
        params = [p for p in extractor.parameters() if p.requires_grad] + list(probe.parameters())
        opt = self._sgd(params, cfg.lr_task, cfg.weight_decay)
        extractor.train()
        for epoch in range(cfg.phase_epochs("feature")):
            stats = _EpochStats()
            for idx in self._batches(len(y), generator):
                with self._autocast():
                    logits = probe(extractor(self._input(x[idx])))
                    loss = F.cross_entropy(logits.float(), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                stats.add(loss, logits, y[idx])
            self._end_epoch(t, "feature", epoch, cfg.phase_epochs("feature"), stats)
        extractor.eval()
        extractor.requires_grad_(False)

    def _phase_kb_warmup(self, t: int, head: TaskHead, x: torch.Tensor, y: torch.Tensor,
                         generator: torch.Generator) -> None:
        """Phase 2 (task 0 only): the KB and C_0, no masks (all ones); clipped if ``kb_grad_clip``."""
        cfg = self.config
        params = list(self.kb.parameters()) + list(head.parameters())
        opt = self._sgd(params, cfg.lr_task, cfg.weight_decay)
        self.kb.train()
        for epoch in range(cfg.phase_epochs("kb")):
            stats = _EpochStats()
            for idx in self._batches(len(y), generator):
                with self._autocast():
                    logits = head(self.kb(self._input(x[idx]), ones_masks(self.kb, len(idx), self.device)))
                    loss = F.cross_entropy(logits.float(), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.kb_grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.kb_grad_clip)
                opt.step()
                stats.add(loss, logits, y[idx])
            self._end_epoch(t, "kb", epoch, cfg.phase_epochs("kb"), stats)
        if cfg.phase_epochs("kb") > 0:
            # A KB blown up to finite but dead weights raises no NaN; it answers one class
            # for every image, and every later task sits at chance. Say so where it starts.
            _, acc = stats.result()
            majority = torch.bincount(y).max().item() / max(1, len(y))
            if acc <= majority + 0.02:
                self._log(0, f"warning: the KB warm-up (task {t + 1}) ended at train acc {acc:.3f}, no "
                             f"better than always answering the most common class ({majority:.3f}): it learned "
                             "nothing. If it diverged, set kb_grad_clip (e.g. 1.0) or lower lr_task; with "
                             "few epochs, raise kb_epochs")

    def _phase_masks(self, t: int, phase: str, mask_gen: MaskGenerator, head: TaskHead, x: torch.Tensor,
                     y: torch.Tensor, features: Callable[[torch.Tensor], torch.Tensor],
                     generator: torch.Generator) -> None:
        """Phases 3 and 5: M_t and C_t on the frozen KB (no weight gradients for the KB)."""
        cfg = self.config
        opt = self._sgd(list(mask_gen.parameters()) + list(head.parameters()), cfg.mask_lr, cfg.weight_decay)
        self.kb.train()  # dropout on; its weights do not move
        if self._fast:
            self.kb.requires_grad_(False)  # the reference path computes (and drops) their gradients
        mask_gen.train()
        epochs = cfg.phase_epochs(phase)
        try:
            for epoch in range(epochs):
                stats = _EpochStats()
                for idx in self._batches(len(y), generator):
                    with self._autocast():
                        logits = head(self.kb(self._input(x[idx]), mask_gen(features(idx))))
                        loss = F.cross_entropy(logits.float(), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    stats.add(loss, logits, y[idx])
                self._end_epoch(t, phase, epoch, epochs, stats)
        finally:
            self.kb.requires_grad_(True)
            for p in self.kb.parameters():
                p.grad = None

    def _phase_meta(self, t: int, mask_gen: MaskGenerator, x: torch.Tensor, y: torch.Tensor,
                    features: Callable[[torch.Tensor], torch.Tensor], num_classes: int,
                    generator: torch.Generator) -> None:
        """Phase 4: move the KB towards what K mini-tasks learned, weighted by their accuracy.

        ``reptile``: ``theta += meta_step * sum_k (a_k / sum_j a_j) * delta_k``.
        ``seed``: the released code's rule, the same weighted delta divided by K handed
        to SGD(lr=0.1*lr_meta, weight decay 0.1) as a gradient, i.e. a step away from it.
        """
        cfg = self.config
        mask_gen.eval()
        if self._fast:
            with torch.inference_mode():  # M_t is frozen here: its masks are computed once
                every = torch.arange(len(y), device=self.device)
                masks_all = [m.clone() for m in mask_gen(features(every))]

            def masks_for(idx: torch.Tensor) -> list[torch.Tensor]:
                return [m[idx] for m in masks_all]
        else:
            def masks_for(idx: torch.Tensor) -> list[torch.Tensor]:
                return [m.detach() for m in mask_gen(features(idx))]
        kb_params = list(self.kb.parameters())
        seed_opt = (self._sgd(kb_params, 0.1 * cfg.lr_meta, cfg.meta_weight_decay)
                    if cfg.meta_update == "seed" else None)
        batches = self._endless_batches(len(y), generator)
        for outer in range(cfg.meta_epochs):
            theta = [p.detach().clone() for p in kb_params]
            weighted = [torch.zeros_like(p) for p in theta]
            record = MetaStepRecord(theta_before=theta, theta_after=[]) if self.record_meta else None
            acc_sum = 0.0
            chosen = [next(batches) for _ in range(cfg.mini_tasks)]
            if cfg.meta_vmap:
                adapted = self._adapt_mini_tasks_vmap(t, x, y, chosen, masks_for, num_classes)
            else:
                adapted = (self._adapt_mini_task(t, self._input(x[idx]), y[idx], masks_for(idx), num_classes)
                           for idx in chosen)
            for delta, acc in adapted:
                for w, d in zip(weighted, delta):
                    w.add_(d, alpha=acc)
                acc_sum += acc
                if record is not None:
                    record.deltas.append(delta)
                    record.accuracies.append(acc)
            if acc_sum == 0.0:
                # no mini-task learned anything: there is no direction worth following
                self._log(2, f"task {t}: meta step {outer + 1}: every mini-task at accuracy 0, KB unchanged")
                combined = weighted
            else:
                combined = [w / acc_sum for w in weighted]
            with torch.no_grad():
                if cfg.meta_update == "reptile":
                    for p, c in zip(kb_params, combined):
                        p.add_(c, alpha=cfg.meta_step)
                else:
                    assert seed_opt is not None
                    for p, c in zip(kb_params, combined):
                        p.grad = c / cfg.mini_tasks
                    seed_opt.step()
                    seed_opt.zero_grad(set_to_none=True)
            if not all(torch.isfinite(p).all() for p in kb_params):
                raise NonFiniteLossError(f"the KB became NaN/inf in phase meta of task {t} (step {outer + 1}); "
                                         "lower meta_step or lr_meta")
            if record is not None:
                record.theta_after = [p.detach().clone() for p in kb_params]
                self.meta_records.append(record)
            self._log(2, f"task {t + 1}/{self.num_tasks} meta step {outer + 1}/{cfg.meta_epochs} "
                         f"mean mini-task acc {acc_sum / cfg.mini_tasks:.3f}")

    def _adapt_mini_task(self, t: int, xb: torch.Tensor, yb: torch.Tensor, masks: list[torch.Tensor],
                         num_classes: int) -> tuple[list[torch.Tensor], float]:
        """Train a copy of the KB and a fresh head on one batch; return (delta, accuracy)."""
        cfg = self.config
        if self._fast:  # one reusable copy of the KB, refilled per mini-task
            if self._kb_work is None:
                self._kb_work = copy.deepcopy(self.kb)
            kb_copy = self._kb_work
            with torch.no_grad():
                for pc, p in zip(kb_copy.parameters(), self.kb.parameters()):
                    pc.copy_(p)
                    pc.grad = None
        else:
            kb_copy = copy.deepcopy(self.kb)  # only the KB: F_t and M_t are not trained here
        kb_copy.requires_grad_(True)
        head = TaskHead(cfg.latent_dim, num_classes).to(self.device)
        opt = self._sgd(list(kb_copy.parameters()) + list(head.parameters()), cfg.lr_meta,
                        cfg.meta_weight_decay)
        kb_copy.train()
        loss = None
        for _ in range(cfg.inner_steps):
            with self._autocast():
                loss = F.cross_entropy(head(kb_copy(xb, masks)).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if loss is not None and cfg.nan_check and not torch.isfinite(loss):
            raise NonFiniteLossError(f"the loss became {loss.item()} in phase meta of task {t} "
                                     f"(inner steps); lower lr_meta (now {cfg.lr_meta})")
        kb_copy.eval()
        with self._frozen(), self._autocast():
            acc = (head(kb_copy(xb, masks)).argmax(1) == yb).float().mean().item()
        delta = [pc.detach() - p.detach() for pc, p in zip(kb_copy.parameters(), self.kb.parameters())]
        return delta, acc

    def _adapt_mini_tasks_vmap(self, t: int, x: torch.Tensor, y: torch.Tensor, chosen: list[torch.Tensor],
                               masks_for: Callable[[torch.Tensor], list[torch.Tensor]],
                               num_classes: int) -> list[tuple[list[torch.Tensor], float]]:
        """``_adapt_mini_task`` for all K mini-tasks at once (``meta_vmap``), with ``torch.func``.

        Every copy has its own KB weights, head and SGD momentum; ``vmap`` runs them
        together (``randomness="different"``: each copy draws its own dropout). The
        heads are drawn up front, in mini-task order, so without dropout the copies
        start exactly as the loop's do. Mini-tasks whose batches differ in size (the
        last batch of a pass) run in separate groups.
        """
        from torch.func import functional_call, grad_and_value, vmap

        cfg = self.config
        names = [n for n, _ in self.kb.named_parameters()]
        theta = {n: p.detach() for n, p in self.kb.named_parameters()}
        heads = [TaskHead(cfg.latent_dim, num_classes).to(self.device) for _ in chosen]

        def logits_of(params: dict[str, torch.Tensor], xk: torch.Tensor, mk: list[torch.Tensor]) -> torch.Tensor:
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
            xb = torch.stack([self._input(x[chosen[k]]) for k in ks])
            yb = torch.stack([y[chosen[k]] for k in ks])
            mb = [torch.stack(parts) for parts in zip(*(masks_for(chosen[k]) for k in ks))]
            params = {"kb." + n: torch.stack([theta[n]] * len(ks)) for n in names}
            params["head.weight"] = torch.stack([heads[k].weight.detach() for k in ks])
            params["head.bias"] = torch.stack([heads[k].bias.detach() for k in ks])
            momentum: dict[str, torch.Tensor] = {}
            self.kb.train()
            loss = None
            for _ in range(cfg.inner_steps):
                with self._autocast():
                    grads, loss = step(params, xb, yb, mb)
                with torch.no_grad():  # torch.optim.SGD's update, per copy
                    for n, p in params.items():
                        d = grads[n].add(p, alpha=cfg.meta_weight_decay)
                        if n in momentum:
                            d = momentum[n].mul_(cfg.momentum).add_(d)
                        else:
                            momentum[n] = d = d.clone()
                        params[n] = p.add(d, alpha=-cfg.lr_meta)
            if loss is not None and cfg.nan_check and not torch.isfinite(loss).all():
                raise NonFiniteLossError(f"the loss became {loss.max().item()} in phase meta of task {t} "
                                         f"(inner steps); lower lr_meta (now {cfg.lr_meta})")
            self.kb.eval()
            with self._frozen(), self._autocast():
                acc = (vmap(logits_of)(params, xb, mb).argmax(-1) == yb).float().mean(1).tolist()
            self.kb.train()
            for i, k in enumerate(ks):
                results[k] = ([params["kb." + n][i] - theta[n] for n in names], acc[i])
        return results

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, t: int) -> None:
        """Fill row t of both matrices: each task u <= t with its own F_u, M_u, C_u."""
        self.kb.eval()
        for u in range(t + 1):
            task = self.benchmark.tasks[u]
            if self._fast:
                self.val_matrix[t][u] = self._cached_accuracy(u, "val", task.val)
                self.test_matrix[t][u] = self._cached_accuracy(u, "test", task.test)
            else:
                self.val_matrix[t][u] = self.accuracy(u, task.val)
                self.test_matrix[t][u] = self.accuracy(u, task.test)
        self._log(1, f"task {t + 1}/{self.num_tasks} done: val acc "
                     f"{_fmt_row(self.val_matrix[t][: t + 1])}, mean {self.report_mean(t, self.val_matrix):.4f}")

    def accuracy(self, u: int, split: Split) -> float:
        """Accuracy of task ``u``'s path through the model on ``split``."""
        with self._frozen():
            self.kb.eval()
            extractor, mask_gen, head = (self.extractors[u].eval(), self.mask_generators[u].eval(),
                                         self.heads[u].eval())
            correct = 0
            for start in range(0, len(split.y), EVAL_CHUNK):
                xb = self._input(split.x[start:start + EVAL_CHUNK].to(self.device))
                yb = split.y[start:start + EVAL_CHUNK].to(self.device)
                with self._autocast():
                    logits = head(self.kb(xb, mask_gen(extractor(xb))))
                correct += int((logits.argmax(1) == yb).sum())
            return correct / max(1, len(split.y))

    @torch.inference_mode()
    def _cached_accuracy(self, u: int, name: str, split: Split) -> float:
        """``accuracy`` with task u's masks for this split computed once (F_u, M_u are frozen)."""
        self.kb.eval()
        head = self.heads[u].eval()
        masks = self._eval_masks.get((u, name))
        if masks is None:
            extractor, mask_gen = self.extractors[u].eval(), self.mask_generators[u].eval()
            chunks = []
            for start in range(0, len(split.y), EVAL_CHUNK):
                xb = self._input(split.x[start:start + EVAL_CHUNK].to(self.device))
                with self._autocast():
                    chunks.append(mask_gen(extractor(xb)))
            masks = [torch.cat(parts) for parts in zip(*chunks)] if chunks else []
            self._eval_masks[(u, name)] = masks
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        y = split.y.to(self.device)
        for start in range(0, len(split.y), EVAL_CHUNK):
            xb = self._input(split.x[start:start + EVAL_CHUNK].to(self.device))
            with self._autocast():
                logits = head(self.kb(xb, [m[start:start + EVAL_CHUNK] for m in masks]))
            correct += (logits.argmax(1) == y[start:start + EVAL_CHUNK]).sum()
        return int(correct) / max(1, len(split.y))

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
            "rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown learner state format {state.get('format')!r}")
        if state["config"] != self.config.to_dict():
            diff = sorted(k for k, v in state["config"].items() if self.config.to_dict().get(k) != v)
            raise ValueError(f"the saved state was made with another config (differs in: {', '.join(diff)})")
        self.kb.load_state_dict(state["kb"])
        self._eval_masks.clear()
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
        torch.set_rng_state(state["rng"])

    def save(self, path) -> None:
        torch.save(self.state_dict(), path)

    def load(self, path) -> None:
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))

    # ------------------------------------------------------------------ helpers
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
                                     hidden=cfg.mask_hidden, activation=cfg.mask_activation)
            head = TaskHead(cfg.latent_dim, task.num_classes)
        modules = tuple(m.to(self.device) for m in (extractor, mask_gen, head))
        modules[0].to(memory_format=self._memory_format)
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

    def _sgd(self, params, lr: float, weight_decay: float) -> torch.optim.SGD:
        return torch.optim.SGD(params, lr=lr, momentum=self.config.momentum, weight_decay=weight_decay)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.config.precision == "bf16")

    def _input(self, x_uint8: torch.Tensor) -> torch.Tensor:
        # the layout change happens on the uint8 batch; normalising keeps it
        return self.benchmark.normalize(x_uint8.contiguous(memory_format=self._memory_format))

    def _frozen(self):
        """No autograd where nothing is trained (the reference path keeps autograd on)."""
        return torch.inference_mode() if self._fast else contextlib.nullcontext()

    def _batches(self, n: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        order = torch.randperm(n, generator=generator).to(self.device)
        for start in range(0, n, self.config.batch_size):
            yield order[start:start + self.config.batch_size]

    def _endless_batches(self, n: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Successive training batches, reshuffled each pass (phase 4's mini-tasks)."""
        while True:
            yield from self._batches(n, generator)

    def _feature_source(self, extractor: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``features(idx)`` = F_t(x[idx]): from a cache made once (fast path), or computed each time."""
        if self._fast:
            features = self._features(extractor, x)
            return lambda idx: features[idx]

        def compute(idx: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                return extractor.eval()(self._input(x[idx])).float()
        return compute

    @torch.inference_mode()
    def _features(self, extractor: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """F_t(x) for the whole task, once: F_t is frozen and in eval mode from here on."""
        extractor.eval()
        chunks = []
        for start in range(0, len(x), EVAL_CHUNK):
            with self._autocast():
                chunks.append(extractor(self._input(x[start:start + EVAL_CHUNK])).float())
        return torch.cat(chunks).clone()  # clone: a normal tensor, usable in autograd later

    def _end_epoch(self, t: int, phase: str, epoch: int, epochs: int, stats: "_EpochStats") -> None:
        loss, acc = stats.result()
        if self.config.nan_check and not math.isfinite(loss):
            hint = {"feature": "lr_task", "kb": "lr_task or set kb_grad_clip (e.g. 1.0)",
                    "mask": "lr_mask (or lr_task)", "consolidation": "lr_mask (or lr_task)"}[phase]
            raise NonFiniteLossError(f"the loss became {loss} in phase {phase} of task {t} "
                                     f"(epoch {epoch + 1}); lower {hint}")
        level = 1 if epoch + 1 == epochs else 2
        self._log(level, f"task {t + 1}/{self.num_tasks} {phase:<13} epoch {epoch + 1}/{epochs} "
                         f"loss {loss:.4f} train acc {acc:.3f}")

    def _log(self, level: int, message: str) -> None:
        if self.verbose >= level:
            self.log(message)


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
