"""Tuning protocols: what a search selected on, and what an evaluation may report as unseen.

``python -m marktune.search --protocol NAME`` records the protocol in the experiment's
``marktune_search.json``; ``marktune.evaluate`` and ``marktune.report`` read it back here.

* ``full`` (the default): trials run the whole stream and are selected on validation ACC over
  all of it. The evaluation's figures are on the tasks the configuration was selected on.
* ``first-k`` (A-GEM's protocol, Chaudhry et al., ICLR 2019): trials run only the first
  ``k = --tuning-tasks`` tasks of the stream (ASHA's ``max_t`` = k). The evaluation re-runs the
  whole stream and reports ACC and BWT over tasks k..T-1, which no selection ever saw.
* ``other-order``: the search runs on one class order (its ``data_seed``); the evaluation runs
  on other class orders only.

Example:
    >>> p = SearchProtocol(name="first-k", tuning_tasks=3, stream_tasks=5, searched_data_seed=0)
    >>> p.heldout_tasks, p.label()
    ([3, 4], 'first-k: selected on tasks 1-3 of 5; held-out tasks 4-5 were never used for selection')
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from marktune.results.files import SETTINGS_FILE, read_settings

PROTOCOLS = ("full", "first-k", "other-order")
DEFAULT_TUNING_TASKS = 3
STOP_AFTER_KEY = "stop_after_tasks"  # runtime setting: a trial runs the first k tasks of its stream
FIRST_OTHER_DATA_SEED = 2000  # class orders an evaluation adds are the first data seeds >= this
# settings a target benchmark brings itself (evaluate --benchmark) unless the search searched them
BENCHMARK_SETTINGS = ("num_tasks", "class_order", "synthetic_classes_per_task", "synthetic_images_per_class",
                      "synthetic_image_size")


class ProtocolError(ValueError):
    """A protocol setting that cannot work; the message says what to change."""


@dataclass(frozen=True)
class SearchProtocol:
    """The protocol a search ran under, as recorded in its ``marktune_search.json``."""

    name: str = "full"
    tuning_tasks: int | None = None  # first-k only
    stream_tasks: int = 0  # T: tasks of the whole stream
    searched_data_seed: int = 0  # the class order (and validation split) the search ran on
    searched_class_order: list[int] | None = field(default=None)  # an explicit order, if the search had one

    @property
    def heldout_tasks(self) -> list[int]:
        """0-based tasks no selection saw (first-k only; empty otherwise)."""
        if self.name != "first-k" or not self.tuning_tasks:
            return []
        return list(range(self.tuning_tasks, self.stream_tasks))

    def label(self) -> str:
        """One line saying what the search selected on, for every output."""
        if self.name == "first-k":
            k, T = self.tuning_tasks, self.stream_tasks
            return (f"first-k: selected on tasks 1-{k} of {T}; held-out tasks {k + 1}-{T} were never used "
                    "for selection")
        if self.name == "other-order":
            return (f"other-order: selected on the class order of data_seed {self.searched_data_seed}; "
                    "evaluated on other class orders only")
        return "full: selected on validation ACC over the same tasks these figures report (optimistic)"

    def to_settings(self) -> dict[str, Any]:
        return {"protocol": self.name, "tuning_tasks": self.tuning_tasks, "stream_tasks": self.stream_tasks,
                "searched_data_seed": self.searched_data_seed, "searched_class_order": self.searched_class_order}


def protocol_from_settings(settings: Mapping[str, Any] | None, *, stream_tasks: int,
                           searched_data_seed: int, searched_class_order: list[int] | None = None) -> SearchProtocol:
    """The protocol in a search's settings; a search that recorded none ran ``full``.

    Example:
        >>> protocol_from_settings({}, stream_tasks=5, searched_data_seed=0).name
        'full'
    """
    s = dict(settings or {})
    name = s.get("protocol") or "full"
    if name not in PROTOCOLS:
        raise ProtocolError(f"{SETTINGS_FILE}: unknown protocol {name!r} (known: {', '.join(PROTOCOLS)})")
    seed = s.get("searched_data_seed")
    return SearchProtocol(name=name, tuning_tasks=s.get("tuning_tasks") if name == "first-k" else None,
                          stream_tasks=int(s.get("stream_tasks") or stream_tasks),
                          searched_data_seed=int(seed) if seed is not None else searched_data_seed,
                          searched_class_order=s.get("searched_class_order", searched_class_order))


def read_protocol(experiment: Any) -> SearchProtocol:
    """The protocol of a loaded ``marktune.results.experiment.Experiment``."""
    from marktune.mark.config import MarkConfig

    settings = read_settings(experiment.path) or {}
    seed, order = 0, None
    for trial in experiment.trials:
        if trial.config:
            config = MarkConfig.from_dict(trial.config)
            seed, order = config.split_seed, config.class_order
            break
    return protocol_from_settings(settings, stream_tasks=experiment.num_tasks, searched_data_seed=seed,
                                  searched_class_order=order)


def task_sequence(config: Any) -> tuple[tuple[int, ...], ...]:
    """The classes of each task, in stream order, as the data loader builds them.

    Two configurations run "the same class order" when their task sequences are equal (the
    order of classes inside a task does not matter). Example:

        >>> from marktune.mark.config import MarkConfig
        >>> task_sequence(MarkConfig(benchmark="digits", data_seed=0))
        ((2, 8), (4, 9), (1, 6), (3, 7), (0, 5))
    """
    classes = config.num_classes
    if config.class_order is not None:
        order = list(config.class_order)
    else:  # the rule of marktune.data.base.split_into_tasks (the authors')
        order = np.arange(classes)[np.random.RandomState(config.split_seed).permutation(classes)].tolist()
    per = classes // config.tasks
    return tuple(tuple(sorted(int(c) for c in order[t * per:(t + 1) * per])) for t in range(config.tasks))


def evaluation_data_seeds(*, protocol: SearchProtocol, orders: int, searched: Any,
                          target: Any | None = None) -> list[int]:
    """The data seeds (class orders) an evaluation runs on.

    ``full`` and ``first-k``: the searched order first, then fresh orders. ``other-order``:
    ``orders`` fresh orders whose task sequence differs from the searched one (on the target
    benchmark, when given, the searched seed's order there). ``searched`` and ``target`` are
    MarkConfigs: the search's and the one evaluated.
    """
    if orders < 1:
        raise ProtocolError(f"--orders must be >= 1 (got {orders})")
    base = target if target is not None else searched
    avoid = {task_sequence(_with_data(base, protocol.searched_data_seed, protocol.searched_class_order))}
    seeds = [] if protocol.name == "other-order" else [protocol.searched_data_seed]
    candidate = FIRST_OTHER_DATA_SEED
    while len(seeds) < orders:
        sequence = task_sequence(_with_data(base, candidate, None))
        if sequence not in avoid:
            seeds.append(candidate)
            avoid.add(sequence)
        candidate += 1
        if candidate > FIRST_OTHER_DATA_SEED + 10_000:
            raise ProtocolError(f"--orders {orders}: the benchmark has too few distinct class orders")
    return seeds


def retarget(config: Mapping[str, Any], *, benchmark: str, searched: Sequence[str]):
    """A configuration moved to another benchmark (``evaluate --benchmark``).

    The target brings its own tasks, class order and image size (the settings in
    ``BENCHMARK_SETTINGS``, unless the search searched them); every other setting, searched or
    fixed, is kept. Raises ``ProtocolError`` when the target cannot take a setting.
    """
    from marktune.mark.config import ConfigError, MarkConfig

    values = {k: v for k, v in config.items() if k not in BENCHMARK_SETTINGS or k in searched}
    values["benchmark"] = benchmark
    try:
        return MarkConfig.from_dict(values)
    except ConfigError as err:
        raise ProtocolError(str(err)) from None


def _with_data(config: Any, data_seed: int, class_order: list[int] | None):
    import dataclasses

    return dataclasses.replace(config, data_seed=data_seed, class_order=class_order)
