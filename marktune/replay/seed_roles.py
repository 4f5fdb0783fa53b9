"""Which recorded seeds a replayed search runs at, confirms at and is scored on.

A pick scored at a seed it was selected at carries a winner's curse: its val and test ACC at
that seed come from one trained model, so a configuration that was lucky there looks better
than it is. Held-out scoring gives each seed of a table one role per replay:

* ``search``: every trial of the replayed search runs at this seed (as a live search's trials all
  run at the space's one seed);
* ``confirm``: the confirmation stage re-runs its finalists at these;
* ``score``: a pick is worth its configuration's mean final test ACC at these, which neither the
  search nor the confirmation saw; the regret's reference is the best such mean in the table.

Over replays the roles rotate through every assignment (:func:`assignments`), so no seed's class
order or luck decides the result alone.

Example:
    >>> [str(r) for r in assignments([0, 1, 2], confirm=1)][:2]
    ['search 0, confirm 1, score 2', 'search 0, confirm 2, score 1']
    >>> len(assignments([0, 1, 2, 3, 4], confirm=2))  # 5 search seeds x 6 confirm pairs
    30
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence


class TooFewSeedsError(ValueError):
    """A table holds too few seeds for held-out scoring."""


@dataclass(frozen=True)
class SeedRoles:
    """One assignment of a table's seeds to the search, the confirmation and the score."""

    search: int
    confirm: tuple[int, ...]
    score: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.score:
            raise ValueError("held-out scoring needs at least one seed to score on")
        used = [self.search, *self.confirm]
        if len(set(used)) != len(used) or set(used) & set(self.score):
            raise ValueError(f"a seed has two roles in {self}: a pick would be scored at a seed it was "
                             "selected at")

    @property
    def seeds(self) -> tuple[int, ...]:
        return (self.search, *self.confirm, *self.score)

    def __str__(self) -> str:
        confirm = f", confirm {' '.join(map(str, self.confirm))}" if self.confirm else ""
        return f"search {self.search}{confirm}, score {' '.join(map(str, self.score))}"


def assignments(seeds: Sequence[int], *, confirm: int) -> list[SeedRoles]:
    """Every assignment of ``seeds``: one to search at, ``confirm`` to confirm at, the rest to
    score on (in a fixed order). Fewer than ``confirm + 2`` seeds is refused in words."""
    seeds = sorted(set(seeds))
    need = confirm + 2
    if len(seeds) < need:
        raise TooFewSeedsError(
            f"held-out scoring needs at least {need} recorded seeds per configuration (1 to search at"
            + (f", {confirm} to confirm at" if confirm else "") + f", 1 or more to score on); the table has "
            f"{len(seeds)} ({', '.join(map(str, seeds)) or 'no seed column'}). Record more seeds "
            "(bench/separation.py --seeds ... --resume) or score on seen seeds with --score seen (biased: "
            "a pick is then scored at a seed it was selected at)")
    out = []
    for search in seeds:
        rest = [s for s in seeds if s != search]
        for chosen in itertools.combinations(rest, confirm):
            out.append(SeedRoles(search=search, confirm=chosen,
                                 score=tuple(s for s in rest if s not in chosen)))
    return out


def table_seeds(configs) -> list[int]:
    """The seeds a table's configurations were recorded at (RecordedConfig.curves' seeds)."""
    return sorted({c.seed for cfg in configs for c in cfg.curves if c.seed is not None})


SEEN_WARNING = ("scored on seen seeds (--score seen): a pick is worth its configuration's mean over every "
                "recorded seed, the one it was selected at included, so the one-seed pick's regret is biased low "
                "and what a confirmation stage gains is biased high")
