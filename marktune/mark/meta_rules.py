"""Phase 4 of MARK, one class per ``meta_update``: how task t changes the Knowledge Base.

Every rule has one method, ``update_kb(learner, task)``, called between phase 3 and
phase 5 of each task (``../shared/MARK.md``; like Optuna's samplers over
``BaseSampler``). What they do:

* :class:`Reptile` (``reptile``, MARK.md's rule): K mini-tasks per outer step, then
  ``theta += meta_step * sum_k (a_k / sum_j a_j) * delta_k``.
* :class:`SeedRule` (``seed``, the released code's rule, exactly): the same weighted
  delta, divided by K, handed to a fresh momentum-free ``SGD(lr=0.1*lr_meta,
  weight_decay=meta_weight_decay)`` as a gradient, one ``step()`` per outer step.
* :class:`NoMetaUpdate` (``none``, ablation): the KB is left alone; phase 5 still runs,
  so this removes the metalearning and nothing else.
* :class:`Finetune` (``finetune``, ablation, the released ``use_meta: False``): the KB
  and C_t trained conventionally on task t (``epochs`` epochs, ``SGD(lr=0.1*lr_meta,
  weight_decay=meta_weight_decay)``, no momentum), masks of M_t applied.

Example:
    >>> meta_rule("seed").name, sorted(RULES)
    ('seed', ['finetune', 'none', 'reptile', 'seed'])
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:  # the learner imports this module
    from marktune.mark.learner import MarkLearner, TaskData


class MetaRule:
    """Phase 4: how the KB learns from task t. Subclasses implement :meth:`update_kb`."""

    name: ClassVar[str]

    def update_kb(self, learner: "MarkLearner", task: "TaskData") -> None:
        raise NotImplementedError


class NoMetaUpdate(MetaRule):
    """``none``: phase 4 skipped; the KB keeps what the warm-up of task 0 gave it."""

    name = "none"

    def update_kb(self, learner: "MarkLearner", task: "TaskData") -> None:
        return None


class Finetune(MetaRule):
    """``finetune``: the KB and C_t trained on task t like any network (no metalearning)."""

    name = "finetune"

    def update_kb(self, learner: "MarkLearner", task: "TaskData") -> None:
        cfg = learner.config
        masks_for = learner.fixed_masks(task)  # M_t and F_t are not trained here
        learner.kb.train()
        learner.train_epochs(
            task, "finetune", params=[*learner.kb.parameters(), *task.head.parameters()],
            lr=0.1 * cfg.lr_meta, weight_decay=cfg.meta_weight_decay, momentum=0.0,
            forward=lambda idx: task.head(learner.kb(learner.images(task.x[idx]), masks_for(idx))))


class _WeightedMiniTasks(MetaRule):
    """``meta_epochs`` outer steps; each adapts K copies of the KB to K batches (mini-tasks)
    and moves the KB along the accuracy-weighted mean of their deltas (:meth:`move`)."""

    def update_kb(self, learner: "MarkLearner", task: "TaskData") -> None:
        from marktune.mark.learner import MetaStepRecord

        cfg = learner.config
        kb_params = list(learner.kb.parameters())
        masks_for = learner.fixed_masks(task)
        for outer in range(cfg.meta_epochs):
            chosen = learner.first_batches(task, cfg.mini_tasks)  # a fresh pass per outer step
            theta = [p.detach().clone() for p in kb_params]
            record = MetaStepRecord(theta_before=theta, theta_after=[]) if learner.record_meta else None
            weighted = [torch.zeros_like(p) for p in theta]
            acc_sum = 0.0
            for delta, acc in learner.adapt_mini_tasks(task, chosen, masks_for):
                for w, d in zip(weighted, delta):
                    w.add_(d, alpha=acc)
                acc_sum += acc
                if record is not None:
                    record.deltas.append(delta)
                    record.accuracies.append(acc)
            # no mini-task learned anything (all a_k = 0): no direction worth following
            direction = weighted if acc_sum == 0.0 else [w / acc_sum for w in weighted]
            with torch.no_grad():
                self.move(learner, kb_params, direction, len(chosen))
            learner.check_kb_finite(task.t, outer)
            if record is not None:
                record.theta_after = [p.detach().clone() for p in kb_params]
                learner.meta_records.append(record)
            learner._log(2, f"task {task.t + 1}/{learner.num_tasks} meta step {outer + 1}/{cfg.meta_epochs} "
                            f"mean mini-task acc {acc_sum / max(1, len(chosen)):.3f}")

    def move(self, learner: "MarkLearner", kb_params: list[torch.nn.Parameter],
             direction: list[torch.Tensor], mini_tasks: int) -> None:
        raise NotImplementedError


class Reptile(_WeightedMiniTasks):
    """``reptile``: ``theta += meta_step * direction`` (towards what the mini-tasks learned)."""

    name = "reptile"

    def move(self, learner, kb_params, direction, mini_tasks) -> None:
        for p, d in zip(kb_params, direction):
            p.add_(d, alpha=learner.config.meta_step)


class SeedRule(_WeightedMiniTasks):
    """``seed``: the released code's step. A new SGD for every outer step (so no momentum
    carries over), ``.grad = direction / K``, one ``step()``: a step *away* from the
    adapted weights, plus weight decay."""

    name = "seed"

    def move(self, learner, kb_params, direction, mini_tasks) -> None:
        cfg = learner.config
        opt = torch.optim.SGD(kb_params, lr=0.1 * cfg.lr_meta, weight_decay=cfg.meta_weight_decay)
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
