"""What a replayed trial costs: the second objective of a multi-objective replay, from its settings.

A replayed trial reports, beside its val ACC, its cost after each task, as a live trial does:
``total_params`` (the same after every task: a function of the settings, counted on the meta
device) or ``train_flops`` (cumulative over the tasks so far). A dense table holds neither. The
parameters are counted here; the FLOPs are read from a table of counted runs
(``bench/flops_table.py``: one run for every combination of the settings that change the count,
:data:`marktune.mark.flops.COUNT_FREE` being those that do not), so any settings a sampler
proposes have their own count, not a recorded neighbour's.

Example:
    >>> from marktune.tune.spaces import load_space
    >>> space = load_space("digits")
    >>> ParameterCounts(space).curve({"kb_depth": 1, "kb_width": 8, "mask_hidden": 0}, tasks=2)  # 5 tasks in all
    (304538.0, 304538.0)
    >>> counted_settings(space)
    ['inner_steps', 'kb_depth', 'kb_width', 'mask_hidden', 'mini_tasks']
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping, Protocol

from marktune.mark.flops import COUNT_FREE, count_key
from marktune.tune.spaces import SearchSpace

# bench/flops_table.py's columns (the counted settings go between the first and the rest)
FLOPS_COLUMNS = ["source", "task", "train_flops", "status", "seconds"]


class Costs(Protocol):
    def curve(self, settings: Mapping[str, Any], *, tasks: int) -> tuple[float, ...]:
        """The cost reported after each of ``tasks`` tasks (the last: the whole sequence's)."""


def counted_settings(space: SearchSpace) -> list[str]:
    """The space's searched settings that change the count, sorted; each must take finitely many
    values (an ``int`` or a ``choice``) for a table to hold every combination."""
    names = sorted(n for n in space.params if n not in COUNT_FREE)
    continuous = [n for n in names if space.params[n].kind not in ("int", "choice")]
    if continuous:
        raise ValueError(f"{', '.join(continuous)} change(s) the training FLOPs and take(s) continuous values: "
                         "no table can hold every setting's count; search them as int or choice")
    return names


class ParameterCounts:
    """Total parameters (KB + tasks x per task) of settings, cached: the same after every task."""

    def __init__(self, space: SearchSpace) -> None:
        self._space, self._seen = space, {}

    def curve(self, settings: Mapping[str, Any], *, tasks: int) -> tuple[float, ...]:
        from marktune.results.pareto import parameter_counts, total_parameters

        key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
        if key not in self._seen:
            config = self._space.default_trial_config(dict(settings))
            kb, task = parameter_counts(config)
            self._seen[key] = float(total_parameters(kb, task, config.tasks))
        return (self._seen[key],) * tasks


class FlopsTable:
    """Cumulative training FLOPs after each task, for every combination of a space's counted
    settings, read from ``bench/flops_table.py``'s CSV (its ``grid`` rows of complete runs)."""

    def __init__(self, path: Path, space: SearchSpace) -> None:
        self._space, self._names, self._path = space, counted_settings(space), path
        self._counts: dict[tuple, dict[int, float]] = {}
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row["source"] != "grid" or row["status"] != "COMPLETE":
                    continue
                self._counts.setdefault(self._key(row), {})[int(row["task"])] = float(row["train_flops"])

    def _key(self, settings: Mapping[str, Any]) -> tuple:
        # every counted setting is searched, so every proposal and every table row has it
        return count_key({n: self._cast(n, settings[n]) for n in self._names})

    def _cast(self, name: str, value: Any) -> Any:
        p = self._space.params[name]
        if p.kind == "int":
            return int(value)
        return next((v for v in p.values if str(v) == str(value)), value)

    def curve(self, settings: Mapping[str, Any], *, tasks: int) -> tuple[float, ...]:
        counts = self._counts.get(self._key(settings))
        if counts is None or any(t not in counts for t in range(1, tasks + 1)):
            shown = ", ".join(f"{n}={settings.get(n)}" for n in self._names)
            raise KeyError(f"{self._path} holds no complete counted run of {shown}: "
                           f"run bench/flops_table.py --space ... --resume to add it")
        return tuple(counts[t] for t in range(1, tasks + 1))

    def __len__(self) -> int:
        return len(self._counts)


def final_costs(costs: Costs, configs: list[Mapping[str, Any]], *, tasks: int) -> list[float]:
    """Each configuration's whole-sequence cost (NaN where it has none)."""
    out = []
    for settings in configs:
        try:
            out.append(costs.curve(settings, tasks=tasks)[-1])
        except KeyError:
            out.append(math.nan)
    return out
