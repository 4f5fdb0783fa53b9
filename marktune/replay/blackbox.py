"""A recorded table in the shape of Syne Tune's tabular blackbox, without Syne Tune: arrays in a ``.npz``.

Syne Tune's ``BlackboxTabular`` (``syne_tune.blackbox_repository``) takes per configuration,
seed, fidelity and objective one value: ``objectives_evaluations`` of shape (configurations,
seeds, fidelities, objectives), here (configurations, seeds, tasks, 3) with the objectives
:data:`OBJECTIVES`: the val ACC after task k (the search's metric), the test ACC after task k and
the cumulative seconds up to task k (Syne Tune's simulator clock); ``fidelity_values`` are the
tasks 1 .. T. A blackbox has no missing values, so only the configurations with a whole curve at
every seed of the table go in (the others are listed in ``dropped``). Each kept configuration's
settings travel with it, and, given the space, each searched setting's distribution: a searcher
that proposes settings rather than ids (BOHB, ASHA-BORE, DEHB) is then answered by the table's
nearest configuration (``bench/syne_tune_check.py``).

:func:`to_blackbox_arrays` builds them from a :class:`~marktune.replay.table.ReplayTable`;
:func:`save_blackbox` writes them to one ``.npz`` that a bench run with Syne Tune installed reads
(``bench/syne_tune_check.py``), so marktune itself never imports Syne Tune (a bench dependency only).

Example:
    >>> from marktune.tune.spaces import load_space
    >>> from marktune.replay.table import ReplayTable, synthetic_curves
    >>> table = ReplayTable.from_curves(synthetic_curves(space=load_space("fmnist"), configs=4, seed=0))
    >>> arrays = to_blackbox_arrays(table)
    >>> arrays.objectives.shape, arrays.fidelities.tolist(), arrays.dropped
    ((4, 1, 5, 3), [1, 2, 3, 4, 5], [])
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from marktune.replay.table import ReplayTable

if TYPE_CHECKING:
    from marktune.tune.spaces import SearchSpace

OBJECTIVES = ("val_acc", "test_acc", "elapsed_time")


@dataclass(frozen=True)
class BlackboxArrays:
    """What ``BlackboxTabular`` is built from: the configuration ids (its one searched
    hyperparameter), the objectives array, the fidelities, and the configurations left out."""

    config_ids: list[str]
    objectives: np.ndarray  # configurations x seeds x tasks x OBJECTIVES
    fidelities: np.ndarray  # 1 .. tasks
    seeds: list[int | None]
    dropped: list[str]  # configurations without a whole curve at every seed
    settings: list[dict]  # each kept configuration's searched settings, in config_ids' order


def to_blackbox_arrays(table: ReplayTable) -> BlackboxArrays:
    """The table's configurations with a whole curve at each of the table's seeds, in table order."""
    seeds = sorted({c.seed for config in table.configs for c in config.curves}, key=lambda s: (s is None, s))
    kept, dropped, blocks, settings = [], [], [], []
    for config in table.configs:
        by_seed = {c.seed: c for c in config.curves}
        if set(by_seed) != set(seeds):
            dropped.append(config.key)
            continue
        kept.append(config.key)
        settings.append(dict(config.params))
        blocks.append([np.stack([c.val, c.test, np.cumsum(c.seconds)], axis=1)
                       for c in (by_seed[s] for s in seeds)])
    objectives = np.array(blocks, dtype=float).reshape(len(kept), len(seeds), table.num_tasks, len(OBJECTIVES))
    return BlackboxArrays(config_ids=kept, objectives=objectives, fidelities=np.arange(1, table.num_tasks + 1),
                          seeds=list(seeds), dropped=dropped, settings=settings)


def save_blackbox(arrays: BlackboxArrays, path: str | Path, *, space: SearchSpace | None = None) -> None:
    """One ``.npz`` with the arrays, the ids, the objective names and the settings (JSON, one string
    per configuration); with ``space``, also ``space`` (JSON: per searched setting its kind, low,
    high and values, as the space file gives them)."""
    extra = {}
    if space is not None:
        extra["space"] = np.array(json.dumps([{"name": p.name, "kind": p.kind, "low": p.low, "high": p.high,
                                               "values": None if p.values is None else list(p.values)}
                                              for p in space.params.values()]))
    np.savez_compressed(path, config_ids=np.array(arrays.config_ids), objectives=arrays.objectives,
                        fidelities=arrays.fidelities, objectives_names=np.array(OBJECTIVES),
                        seeds=np.array([-1 if s is None else s for s in arrays.seeds]),
                        dropped=np.array(arrays.dropped, dtype=str),
                        settings=np.array([json.dumps(s) for s in arrays.settings]), **extra)


__all__ = ["OBJECTIVES", "BlackboxArrays", "to_blackbox_arrays", "save_blackbox"]
