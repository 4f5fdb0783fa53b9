"""Phase 4 of MARK: how task t changes the Knowledge Base, one class per ``meta_update``.

A rule sees a :class:`Phase4Context` (the KB, task t's images and C_t, the mini-task
batches, the epoch loop, its :class:`Phase4Settings`, a progress callable) and never the
learner; it has one method, ``update_kb(context)``, called between phase 3 and phase 5
of each task (``docs/method.md``; like Optuna's samplers over ``BaseSampler``):

* :class:`Reptile` (``reptile``, the method's rule, docs/method.md): K mini-tasks per outer step, then
  ``theta += meta_step * sum_k (a_k / sum_j a_j) * delta_k``.
* :class:`SeedRule` (``seed``, the released code's rule, exactly): the same weighted
  delta, divided by K, handed to a fresh momentum-free ``SGD(lr=0.1*lr_meta,
  weight_decay=meta_weight_decay)`` as a gradient, one ``step()`` per outer step.
* :class:`NoMetaUpdate` (``none``, ablation): the KB is left alone; phase 5 still runs,
  so this removes the metalearning and nothing else.
* :class:`Finetune` (``finetune``, ablation, the released ``use_meta: False``): the KB
  and C_t trained conventionally on task t (``epochs`` epochs, ``SGD(lr=0.1*lr_meta,
  weight_decay=meta_weight_decay)``, no momentum), masks of M_t applied.

A mini-task (a copy of the KB and a fresh head trained on one batch) is adapted by
:func:`adapt_mini_task`, or all K at once by :func:`adapt_mini_tasks_vmap` (``meta_vmap``);
both run the same inner loop, :func:`inner_steps`, on the optimiser of
:mod:`marktune.mark.inner_optim`.

Example:
    >>> meta_rule("seed").name, sorted(RULES)
    ('seed', ['finetune', 'none', 'reptile', 'seed'])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, ContextManager, Iterable

import torch
import torch.nn.functional as F

from marktune.mark.config import MarkConfig
from marktune.mark.flops import TrainingFlops
from marktune.mark.inner_optim import DevicePlateau, sgd_step_
from marktune.mark.model import KnowledgeBase, TaskHead
from marktune.mark.training import NonFiniteLossError

Masks = list[torch.Tensor]
MaskSource = Callable[[torch.Tensor], Masks]  # masks(idx) of a batch of task t's images


@dataclass(frozen=True)
class Phase4Settings:
    """The config values phase 4 reads (``inner_kb_decay``: the KB copies' inner weight decay)."""

    meta_epochs: int
    mini_tasks: int
    inner_steps: int
    meta_step: float
    lr_meta: float
    momentum: float
    meta_weight_decay: float
    inner_kb_decay: float
    latent_dim: int
    nan_check: bool
    vmap: bool  # all K mini-tasks at once (torch.func) instead of one after another

    @classmethod
    def from_config(cls, config: MarkConfig, *, vmap: bool) -> "Phase4Settings":
        # meta_decay_head_only: the KB copies get no weight decay, so delta_k holds only what
        # the batch taught, no pull towards 0
        return cls(meta_epochs=config.meta_epochs, mini_tasks=config.mini_tasks, inner_steps=config.inner_steps,
                   meta_step=config.meta_step, lr_meta=config.lr_meta, momentum=config.momentum,
                   meta_weight_decay=config.meta_weight_decay,
                   inner_kb_decay=0.0 if config.meta_decay_head_only else config.meta_weight_decay,
                   latent_dim=config.latent_dim, nan_check=config.nan_check, vmap=vmap)


@dataclass(frozen=True)
class InnerLoop:
    """What a mini-task's adaptation runs on: the KB, the settings and how tensors run."""

    kb: KnowledgeBase
    settings: Phase4Settings
    device: torch.device
    kb_copy: Callable[[], KnowledgeBase]  # a copy of the KB with its current weights
    images: Callable[[torch.Tensor], torch.Tensor]  # uint8 batch -> network input
    autocast: Callable[[], ContextManager]
    no_autograd: Callable[[], ContextManager]
    flops: TrainingFlops = field(default_factory=TrainingFlops)  # the learner's count (marktune.mark.flops)


@dataclass
class MetaStepRecord:
    """One outer step of phase 4, kept only when the learner records them (tests, analysis)."""

    theta_before: list[torch.Tensor]
    theta_after: list[torch.Tensor]
    deltas: list[list[torch.Tensor]] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Phase4Context:
    """Everything a rule may use for task ``t``."""

    t: int
    num_tasks: int
    inner: InnerLoop
    x: torch.Tensor  # task t's uint8 training images, on the device
    y: torch.Tensor
    num_classes: int
    head: TaskHead  # C_t
    fixed_masks: Callable[[], MaskSource]  # M_t's masks while M_t and F_t are frozen
    mini_task_batches: Callable[[int], list[torch.Tensor]]  # the first k batches of a fresh pass
    train_epochs: Callable[..., Any]  # the epoch loop on task t: (phase, *, params, lr, ...)
    progress: Callable[[int, str], None]
    records: list[MetaStepRecord] | None = None  # where outer steps go, if kept

    @property
    def kb(self) -> KnowledgeBase:
        return self.inner.kb

    @property
    def settings(self) -> Phase4Settings:
        return self.inner.settings


class MetaRule:
    """Phase 4: how the KB learns from task t. Subclasses implement :meth:`update_kb`."""

    name: ClassVar[str]

    def update_kb(self, context: Phase4Context) -> None:
        raise NotImplementedError


class NoMetaUpdate(MetaRule):
    """``none``: phase 4 skipped; the KB keeps what the warm-up of task 0 gave it."""

    name = "none"

    def update_kb(self, context: Phase4Context) -> None:
        return None


class Finetune(MetaRule):
    """``finetune``: the KB and C_t trained on task t like any network (no metalearning)."""

    name = "finetune"

    def update_kb(self, context: Phase4Context) -> None:
        ctx, s = context, context.settings
        masks_for = ctx.fixed_masks()  # M_t and F_t are not trained here
        ctx.kb.train()
        ctx.train_epochs(
            "finetune", params=[*ctx.kb.parameters(), *ctx.head.parameters()],
            lr=0.1 * s.lr_meta, weight_decay=s.meta_weight_decay, momentum=0.0,
            forward=lambda idx: ctx.head(ctx.kb(ctx.inner.images(ctx.x[idx]), masks_for(idx))))


class WeightedMiniTasks(MetaRule):
    """``meta_epochs`` outer steps; each adapts K copies of the KB to K batches (mini-tasks)
    and moves the KB along the accuracy-weighted mean of their deltas (:meth:`move`)."""

    def update_kb(self, context: Phase4Context) -> None:
        ctx, s = context, context.settings
        kb_params = list(ctx.kb.parameters())
        masks_for = ctx.fixed_masks()
        for outer in range(s.meta_epochs):
            chosen = ctx.mini_task_batches(s.mini_tasks)  # a fresh pass per outer step
            theta = [p.detach().clone() for p in kb_params]
            record = MetaStepRecord(theta_before=theta, theta_after=[]) if ctx.records is not None else None
            weighted = [torch.zeros_like(p) for p in theta]
            acc_sum = 0.0
            for delta, acc in adapt_mini_tasks(ctx, chosen, masks_for):
                for w, d in zip(weighted, delta):
                    w.add_(d, alpha=acc)
                acc_sum += acc
                if record is not None:
                    record.deltas.append(delta)
                    record.accuracies.append(acc)
            # no mini-task learned anything (all a_k = 0): no direction worth following
            direction = weighted if acc_sum == 0.0 else [w / acc_sum for w in weighted]
            with torch.no_grad():
                self.move(kb_params, direction, mini_tasks=len(chosen), settings=s)
            check_kb_finite(ctx.kb, t=ctx.t, outer=outer)
            if record is not None and ctx.records is not None:
                record.theta_after = [p.detach().clone() for p in kb_params]
                ctx.records.append(record)
            ctx.progress(2, f"task {ctx.t + 1}/{ctx.num_tasks} meta step {outer + 1}/{s.meta_epochs} "
                            f"mean mini-task acc {acc_sum / max(1, len(chosen)):.3f}")

    def move(self, kb_params: list[torch.nn.Parameter], direction: list[torch.Tensor], *,
             mini_tasks: int, settings: Phase4Settings) -> None:
        raise NotImplementedError


class Reptile(WeightedMiniTasks):
    """``reptile``: ``theta += meta_step * direction`` (towards what the mini-tasks learned)."""

    name = "reptile"

    def move(self, kb_params, direction, *, mini_tasks, settings) -> None:
        for p, d in zip(kb_params, direction):
            p.add_(d, alpha=settings.meta_step)


class SeedRule(WeightedMiniTasks):
    """``seed``: the released code's step. A new SGD for every outer step (so no momentum
    carries over), ``.grad = direction / K``, one ``step()``: a step *away* from the
    adapted weights, plus weight decay."""

    name = "seed"

    def move(self, kb_params, direction, *, mini_tasks, settings) -> None:
        opt = torch.optim.SGD(kb_params, lr=0.1 * settings.lr_meta, weight_decay=settings.meta_weight_decay)
        for p, d in zip(kb_params, direction):
            p.grad = d / mini_tasks
        opt.step()
        opt.zero_grad(set_to_none=True)


RULES: dict[str, type[MetaRule]] = {rule.name: rule for rule in (Reptile, SeedRule, NoMetaUpdate, Finetune)}


def meta_rule(name: str) -> MetaRule:
    """The phase-4 rule called ``name`` (a ``meta_update`` value)."""
    try:
        return RULES[name]()
    except KeyError:
        raise ValueError(f"meta_update must be one of {', '.join(RULES)} (got {name!r})") from None


def check_kb_finite(kb: KnowledgeBase, *, t: int, outer: int) -> None:
    if not torch.stack([torch.isfinite(p).all() for p in kb.parameters()]).all():  # one read-back
        raise NonFiniteLossError(f"the KB became NaN/inf in phase meta of task {t} (step {outer + 1}); "
                                 "lower meta_step or lr_meta")


# ---------------------------------------------------------------------------------------------- mini-tasks
def adapt_mini_tasks(ctx: Phase4Context, chosen: list[torch.Tensor],
                     masks_for: MaskSource) -> Iterable[tuple[list[torch.Tensor], float]]:
    """``(delta_k, a_k)`` of each mini-task: a copy of the KB and a fresh head trained on one batch."""
    if ctx.settings.vmap:
        return adapt_mini_tasks_vmap(ctx.inner, t=ctx.t, x=ctx.x, y=ctx.y, chosen=chosen, masks_for=masks_for,
                                     num_classes=ctx.num_classes)
    # one at a time, as the loop consumes them (only one adapted copy alive)
    return (adapt_mini_task(ctx.inner, t=ctx.t, xb=ctx.inner.images(ctx.x[idx]), yb=ctx.y[idx],
                            masks=masks_for(idx), num_classes=ctx.num_classes) for idx in chosen)


def inner_steps(params: list[torch.Tensor], grads_and_loss: Callable[[], tuple[Any, torch.Tensor]], *, t: int,
                settings: Phase4Settings, weight_decays: list[float], plateau: DevicePlateau,
                flops: TrainingFlops, samples: int, num_classes: int) -> torch.Tensor | None:
    """The inner loop of one copy or of K stacked copies: ``inner_steps`` times, the gradient
    (``grads_and_loss()``), ``torch.optim.SGD``'s update at the plateau rule's rate, then the
    rule stepped with the loss. All on the device: no host sync per step. The last loss
    (one per copy); a loss that is not finite is an error naming task ``t``."""
    momentum: list[torch.Tensor | None] = [None] * len(params)
    loss = None
    for _ in range(settings.inner_steps):
        with flops.step(("meta", num_classes), samples=samples):  # the copies' forward and backward, ``samples`` in all
            grads, loss = grads_and_loss()
        with torch.no_grad():
            sgd_step_(params, list(grads), momentum, lr=settings.lr_meta, scale=plateau.scale,
                      momentum=settings.momentum, weight_decays=weight_decays)
        plateau.step(loss)
    if loss is not None and settings.nan_check and not torch.isfinite(loss).all():
        raise NonFiniteLossError(f"the loss became {loss.max().item()} in phase meta of task {t} "
                                 f"(inner steps); lower lr_meta (now {settings.lr_meta})")
    return loss


def adapt_mini_task(inner: InnerLoop, *, t: int, xb: torch.Tensor, yb: torch.Tensor, masks: Masks,
                    num_classes: int) -> tuple[list[torch.Tensor], float]:
    """Train a copy of the KB and a fresh head on one batch (``xb``, network input) of task ``t``;
    return (delta, accuracy)."""
    s = inner.settings
    kb_copy = inner.kb_copy()  # only the KB: F_t and M_t are not trained here
    kb_copy.requires_grad_(True)
    head = TaskHead(s.latent_dim, num_classes).to(inner.device)
    kb_params, head_params = list(kb_copy.parameters()), list(head.parameters())
    params = kb_params + head_params
    decays = [s.inner_kb_decay] * len(kb_params) + [s.meta_weight_decay] * len(head_params)
    # SGD under the released ReduceLROnPlateau, with its state on the device: no host sync per step
    plateau = DevicePlateau(lr=s.lr_meta, shape=(), device=inner.device)
    kb_copy.train()

    def grads_and_loss():
        with inner.autocast():
            loss = F.cross_entropy(head(kb_copy(xb, masks)).float(), yb)
        return torch.autograd.grad(loss, params), loss
    inner_steps(params, grads_and_loss, t=t, settings=s, weight_decays=decays, plateau=plateau,
                flops=inner.flops, samples=len(yb), num_classes=num_classes)
    # a_k as the released code: one more forward pass on the same batch, in train mode
    # (dropout on), no update
    with inner.flops.step(("meta a_k", num_classes), samples=len(yb)), inner.no_autograd(), inner.autocast():
        acc = (head(kb_copy(xb, masks)).argmax(1) == yb).float().mean().item()
    delta = [pc.detach() - p.detach() for pc, p in zip(kb_copy.parameters(), inner.kb.parameters())]
    return delta, acc


def count_one_mini_task(inner: InnerLoop, *, t: int, xb: torch.Tensor, yb: torch.Tensor, masks: Masks,
                        num_classes: int) -> None:
    """The FLOPs of one inner step and one a_k pass of :func:`adapt_mini_task` on this batch, on
    throw-away copies and with the random streams put back: nothing the learner keeps changes."""
    devices = [inner.device] if inner.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        kb_copy = inner.kb_copy()
        kb_copy.requires_grad_(True)
        head = TaskHead(inner.settings.latent_dim, num_classes).to(inner.device)
        params = list(kb_copy.parameters()) + list(head.parameters())
        kb_copy.train()

        def inner_step():
            with inner.autocast():
                loss = F.cross_entropy(head(kb_copy(xb, masks)).float(), yb)
            torch.autograd.grad(loss, params)

        def a_k():
            with inner.no_autograd(), inner.autocast():
                head(kb_copy(xb, masks)).argmax(1)
        inner.flops.measure(("meta", num_classes), samples=len(yb), fn=inner_step)
        inner.flops.measure(("meta a_k", num_classes), samples=len(yb), fn=a_k)


def adapt_mini_tasks_vmap(inner: InnerLoop, *, t: int, x: torch.Tensor, y: torch.Tensor, chosen: list[torch.Tensor],
                          masks_for: MaskSource, num_classes: int) -> list[tuple[list[torch.Tensor], float]]:
    """:func:`adapt_mini_task` for all K mini-tasks at once (``meta_vmap``), with ``torch.func``:
    the batches ``x[chosen[k]]`` (uint8 images) and ``y[chosen[k]]``.

    Every copy has its own KB weights, head, SGD momentum and plateau rule (one
    :class:`DevicePlateau` over K copies, so each learning rate follows its own copy's
    loss); ``vmap`` runs them together (``randomness="different"``: each copy
    draws its own dropout). The heads are drawn up front, in mini-task order, so
    without dropout the copies start exactly as the loop's do. Mini-tasks whose
    batches differ in size (the last batch of a pass) run in separate groups.
    """
    from torch.func import functional_call, grad_and_value, vmap

    s, kb = inner.settings, inner.kb
    names = [n for n, _ in kb.named_parameters()]
    theta = {n: p.detach() for n, p in kb.named_parameters()}
    heads = [TaskHead(s.latent_dim, num_classes).to(inner.device) for _ in chosen]

    def logits_of(params: dict[str, torch.Tensor], xk: torch.Tensor, mk: Masks) -> torch.Tensor:
        h = functional_call(kb, {n: params["kb." + n] for n in names}, (xk, mk))
        return F.linear(h, params["head.weight"], params["head.bias"])

    def loss_of(params, xk, yk, mk):
        return F.cross_entropy(logits_of(params, xk, mk).float(), yk)

    step = vmap(grad_and_value(loss_of), randomness="different")
    groups: dict[int, list[int]] = {}
    for k, idx in enumerate(chosen):
        groups.setdefault(len(idx), []).append(k)
    results: list[tuple[list[torch.Tensor], float]] = [([], 0.0)] * len(chosen)
    if not inner.flops.knows(("meta", num_classes)):  # counted as one mini-task at a time (marktune.mark.flops)
        count_one_mini_task(inner, t=t, xb=inner.images(x[chosen[0]]), yb=y[chosen[0]], masks=masks_for(chosen[0]),
                            num_classes=num_classes)
    for ks in groups.values():
        xb = torch.stack([inner.images(x[chosen[k]]) for k in ks])
        yb = torch.stack([y[chosen[k]] for k in ks])
        mb = [torch.stack(parts) for parts in zip(*(masks_for(chosen[k]) for k in ks))]
        params = {"kb." + n: torch.stack([theta[n]] * len(ks)) for n in names}
        params["head.weight"] = torch.stack([heads[k].weight.detach() for k in ks])
        params["head.bias"] = torch.stack([heads[k].bias.detach() for k in ks])
        keys = list(params)
        decays = [s.inner_kb_decay if n.startswith("kb.") else s.meta_weight_decay for n in keys]
        plateau = DevicePlateau(lr=s.lr_meta, shape=(len(ks),), device=inner.device)
        kb.train()

        def grads_and_loss(params=params, xb=xb, yb=yb, mb=mb):
            with inner.autocast():
                grads, loss = step(params, xb, yb, mb)
            return [grads[n] for n in params], loss
        # torch.optim.SGD's update, each copy at its own rate
        inner_steps([params[n] for n in keys], grads_and_loss, t=t, settings=s, weight_decays=decays,
                    plateau=plateau, flops=inner.flops, samples=yb.numel(), num_classes=num_classes)
        # a_k: train mode, each copy its own dropout, as the loop
        with inner.flops.step(("meta a_k", num_classes), samples=yb.numel()), inner.no_autograd(), inner.autocast():
            acc = (vmap(logits_of, randomness="different")(params, xb, mb).argmax(-1) == yb).float().mean(1).tolist()
        for i, k in enumerate(ks):
            results[k] = ([params["kb." + n][i] - theta[n] for n in names], acc[i])
    return results
