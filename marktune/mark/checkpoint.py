"""The learner's saved state between tasks: what it holds, its format, and restoring it.

:func:`state_of` is everything needed to continue with the next task (no optimiser: none
outlives a phase), on the CPU; after :func:`restore` a learner continues exactly as an
uninterrupted one would (``MarkLearner.state_dict`` / ``load_state_dict`` call these).

Example:
    >>> check_state({"format": STATE_FORMAT, "config": {"seed": 0}}, config={"seed": 0})
    >>> check_state({"format": STATE_FORMAT, "config": {"seed": 1}}, config={"seed": 0})
    Traceback (most recent call last):
    ...
    ValueError: the saved state was made with another config (differs in: seed)
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol

import torch
from torch import nn

from marktune.data.base import Benchmark, Task
from marktune.mark.config import MarkConfig
from marktune.mark.flops import TrainingFlops

STATE_FORMAT = 2  # 2: per-task diagnostics (KB norms, mask means)


class CheckpointError(ValueError):
    """A checkpoint file that is not one marktune wrote (or is damaged): refused, never unpickled."""
TASK_MODULES = ("extractors", "mask_generators", "heads")  # F_t, M_t, C_t of every finished task


class LearnerState(Protocol):
    """The part of the learner that is saved and restored."""

    config: MarkConfig
    benchmark: Benchmark
    tasks_done: int
    kb: nn.Module
    extractors: nn.ModuleList
    mask_generators: nn.ModuleList
    heads: nn.ModuleList
    val_matrix: list[list[float]]
    test_matrix: list[list[float]]
    seconds: list[dict[str, float]]
    diagnostics: list[dict]
    flops: TrainingFlops  # marktune.mark.flops

    def new_task_modules(self, task: Task) -> tuple[nn.Module, nn.Module, nn.Module]: ...

    def forget_cache(self) -> None: ...


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` detached and copied to the CPU."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def check_state(state: Mapping[str, Any], *, config: Mapping[str, Any]) -> None:
    """Refuse a state of another format, or one made with another config (``config``: its dict)."""
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"unknown learner state format {state.get('format')!r} (this version writes "
                         f"{STATE_FORMAT}); start the run again")
    if state["config"] != config:
        diff = sorted(k for k, v in state["config"].items() if config.get(k) != v)
        raise ValueError(f"the saved state was made with another config (differs in: {', '.join(diff)})")


def state_of(learner: LearnerState) -> dict:
    """Everything needed to continue ``learner`` with its next task."""
    return {
        "format": STATE_FORMAT, "config": learner.config.to_dict(), "benchmark": learner.benchmark.name,
        "tasks_done": learner.tasks_done, "kb": cpu_state(learner.kb),
        **{name: [cpu_state(m) for m in getattr(learner, name)] for name in TASK_MODULES},
        "val_matrix": [list(r) for r in learner.val_matrix], "test_matrix": [list(r) for r in learner.test_matrix],
        "seconds": [dict(s) for s in learner.seconds], "diagnostics": [dict(d) for d in learner.diagnostics],
        "rng": torch.get_rng_state(),
    }


def restore(learner: LearnerState, state: Mapping[str, Any]) -> None:
    """Put ``state`` (of :func:`state_of`) back into a learner built with the same config."""
    check_state(state, config=learner.config.to_dict())
    learner.kb.load_state_dict(state["kb"])
    learner.forget_cache()
    learner.extractors, learner.mask_generators, learner.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
    for u in range(state["tasks_done"]):
        modules = learner.new_task_modules(learner.benchmark.tasks[u])  # appended to the learner's lists
        for module, name in zip(modules, TASK_MODULES):
            module.load_state_dict(state[name][u])
            module.eval().requires_grad_(False)
    learner.tasks_done = state["tasks_done"]
    learner.val_matrix = [list(r) for r in state["val_matrix"]]
    learner.test_matrix = [list(r) for r in state["test_matrix"]]
    learner.seconds = [dict(s) for s in state["seconds"]]
    learner.diagnostics = [dict(d) for d in state["diagnostics"]]
    # the training FLOPs so far (marktune.mark.flops); a state saved before they were counted has none
    counted = learner.diagnostics[-1].get("train_flops") if learner.diagnostics else 0
    known = isinstance(counted, int) and not isinstance(counted, bool)
    learner.flops.total, learner.flops.known = (counted if known else 0), known
    torch.set_rng_state(state["rng"])


def save(state: Mapping[str, Any], path) -> None:
    """Write a learner's state (:func:`state_of`) with ``torch.save``: tensors and plain values only."""
    torch.save(dict(state), path)


def load(path) -> dict:
    """Read a checkpoint :func:`save` wrote, on the CPU, with ``weights_only=True``: a file that holds
    anything but tensors and plain values (a crafted pickle that would run code) is refused with
    :class:`CheckpointError` before any of it runs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever a foreign or cut file makes the unpickler raise
        raise CheckpointError(
            f"{path}: not a checkpoint marktune wrote, or a damaged one ({_why_refused(err)}); it was not loaded, "
            "since unpickling anything but tensors and plain values can run code. Remove the file to "
            "start the run over, or resume from a checkpoint you trust") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path}: not a checkpoint marktune wrote (no 'format' entry); remove it to "
                              "start the run over")
    return state


def _why_refused(err: BaseException) -> str:
    """torch's reason in a few words, without its advice to turn the protection off."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsupported:
        return f"it asks to build {unsupported.group(1)}, which is no tensor or plain value"
    if text.startswith("Weights only load failed"):
        return "it holds more than tensors and plain values"
    lines = text.strip().splitlines()
    return lines[0] if lines else type(err).__name__
