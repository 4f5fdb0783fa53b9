"""The confirmation stage's bookkeeping: which trials are re-run, at which seeds, and who wins.

A search sees each configuration at one seed, and its best one-seed validation ACC follows the
seed noise: on the dense digits table that pick stays about 2 points from the table's best
however many trials run (``docs/replay.md``, "The pick through the noise"). After the budget is
spent, the confirmation stage re-runs the ``top`` complete trials by validation ACC at ``seeds``
more seeds each (the first integers after the search's seed), and names the winner on the mean
validation ACC over all its seeds, the search's own included. The idea is SMAC3's
intensification and irace's racing, in their simplest form: one round, a fixed set of finalists.

This module is plain data and arithmetic; the runs themselves are Ray trials
(:mod:`marktune.tune.runs.confirmation_run`). The replay scores the same rule
(:meth:`marktune.replay.search.ReplayOutcome.confirm` calls :func:`best_by_mean`).

Example:
    >>> plan = ConfirmationPlan(finalists=(Finalist("a", {"seed": 0}, 0.99, 0.98),
    ...                                    Finalist("b", {"seed": 0}, 0.98, 0.97)), seeds=(1, 2))
    >>> verdict = plan.decide({("a", 1): (0.95, 0.94), ("a", 2): (0.96, 0.95),
    ...                        ("b", 1): (0.98, 0.97), ("b", 2): (0.97, 0.96)})
    >>> verdict.winner, verdict.search_pick, round(verdict.finalists[0].mean, 4)
    ('b', 'a', 0.9667)
"""
from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

CONFIRMATION_FILE = "confirmation.json"  # in the experiment directory: the finalists, seeds and verdict
# the confirmation runs' own Tune experiment, inside the search's (it moves and syncs with it)
CONFIRMATION_RUNS = "confirmation"
WINNER, FINALIST = "winner", "finalist"  # trials.csv's `confirmed` column


def best_by_mean(candidates: Sequence[tuple[Hashable, Sequence[float]]]) -> Hashable | None:
    """The key of the candidate with the best mean value; the first one on a tie (callers list
    them best one-seed value first). A candidate with a non-finite value never wins (a run that
    failed at another seed); None when none is left.

    >>> best_by_mean([("a", [0.9, 0.78]), ("b", [0.85, 0.85]), ("c", [1.0, math.nan])])
    'b'
    """
    best, best_mean = None, -math.inf
    for key, values in candidates:
        mean = _mean(values)
        if math.isfinite(mean) and mean > best_mean:
            best, best_mean = key, mean
    return best


def unused_seeds(start: int, count: int, *, used: Sequence[int] | set[int] = ()) -> tuple[int, ...]:
    """The ``count`` first integers from ``start`` on that are not in ``used``: the one rule by
    which the confirmation stage and ``marktune.evaluate`` choose fresh seeds.

    >>> unused_seeds(1000, 3, used={1001})
    (1000, 1002, 1003)
    """
    used = set(used)
    seeds: list[int] = []
    s = start
    while len(seeds) < count:
        if s not in used:
            seeds.append(s)
        s += 1
    return tuple(seeds)


def confirmation_seeds(search_seed: int, count: int, *, used: Sequence[int] = ()) -> tuple[int, ...]:
    """The ``count`` first integers after ``search_seed`` that no search trial used.

    >>> confirmation_seeds(0, 2), confirmation_seeds(0, 2, used=[0, 1])
    ((1, 2), (2, 3))
    """
    return unused_seeds(search_seed + 1, count, used=used)


@dataclass(frozen=True)
class Finalist:
    """A complete trial re-run by the confirmation stage, with what the search saw of it."""

    trial_id: str
    config: dict[str, Any]  # the trial's whole learner config (its search seed included)
    search_val: float
    search_test: float


@dataclass(frozen=True)
class ConfirmedTrial:
    """One finalist's values over its seeds (the search's first)."""

    trial_id: str
    seeds: tuple[int, ...]
    vals: tuple[float, ...]
    tests: tuple[float, ...]

    @property
    def mean(self) -> float:
        return _mean(self.vals)

    @property
    def se(self) -> float:
        """Standard error of the mean over seeds (NaN with fewer than 2 finite values)."""
        finite = [v for v in self.vals if math.isfinite(v)]
        if len(finite) < 2 or len(finite) < len(self.vals):
            return math.nan
        m = sum(finite) / len(finite)
        return math.sqrt(sum((v - m) ** 2 for v in finite) / (len(finite) - 1) / len(finite))

    @property
    def test_mean(self) -> float:
        return _mean(self.tests)


@dataclass(frozen=True)
class Verdict:
    """Who won the confirmation stage, and how each finalist did over its seeds."""

    finalists: tuple[ConfirmedTrial, ...]  # in the search's order (best one-seed val first)
    winner: str | None  # None: every finalist failed at some seed
    search_pick: str  # the search's one-seed pick (the first finalist)
    extra_seeds: tuple[int, ...]

    def of(self, trial_id: str) -> ConfirmedTrial | None:
        return next((f for f in self.finalists if f.trial_id == trial_id), None)

    def ranked(self) -> list[ConfirmedTrial]:
        """The finalists by mean val over their seeds, best first (failed ones last)."""
        return sorted(self.finalists, key=lambda f: -(f.mean if math.isfinite(f.mean) else -math.inf))

    def table(self) -> str:
        """The finalists, best mean first: each one's value at the search's seed, its mean and SE
        over its seeds, and its mean test ACC (reported, never used)."""
        head = ["trial", "val ACC (search)", "mean val ACC", "SE", "seeds", "mean test ACC", ""]
        body = [[c.trial_id, _fmt(c.vals[0]), _fmt(c.mean), _fmt(c.se), str(sum(map(math.isfinite, c.vals))),
                 _fmt(c.test_mean), "winner" if c.trial_id == self.winner else ""] for c in self.ranked()]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
        fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        return "\n".join([fmt(head), fmt(["-" * w for w in widths[:-1]] + [""]), *map(fmt, body)])

    def sentence(self) -> str:
        """The verdict in one sentence, for the summary."""
        n = len(self.extra_seeds) + 1
        seeds = ", ".join(map(str, self.extra_seeds))
        head = (f"confirmation: the top {len(self.finalists)} trials re-run at {len(self.extra_seeds)} more "
                f"seed{'s' if len(self.extra_seeds) != 1 else ''} ({seeds}); ")
        if self.winner is None:
            return head + "every finalist failed at some seed, so none is confirmed"
        w = self.of(self.winner)
        pick = self.of(self.search_pick)
        text = head + (f"the winner is {w.trial_id}, mean val ACC {w.mean:.4f} (SE {_fmt(w.se)}) over "
                       f"{n} seeds")
        if self.winner == self.search_pick:
            return text + ", the search's own pick"
        return text + (f"; the search's one-seed pick {pick.trial_id} ({pick.vals[0]:.4f} at its seed) "
                       f"averaged {_fmt(pick.mean)}")


@dataclass(frozen=True)
class ConfirmationPlan:
    """The finalists and the extra seeds, written to ``confirmation.json`` before any run starts,
    so that a resumed search re-runs the same ones."""

    finalists: tuple[Finalist, ...]
    seeds: tuple[int, ...]
    verdict: dict[str, Any] = field(default_factory=dict, compare=False)  # once decided

    @property
    def runs(self) -> int:
        return len(self.finalists) * len(self.seeds)

    def decide(self, values: Mapping[tuple[str, int], tuple[float, float]]) -> Verdict:
        """The verdict from each run's (val, test) ACC, keyed by (trial id, seed); a run that is
        missing (errored) counts as NaN, so its finalist cannot win."""
        confirmed = []
        for f in self.finalists:
            got = [values.get((f.trial_id, s), (math.nan, math.nan)) for s in self.seeds]
            confirmed.append(ConfirmedTrial(
                trial_id=f.trial_id, seeds=(int(f.config.get("seed", 0)), *self.seeds),
                vals=(f.search_val, *(float(v) for v, _ in got)),
                tests=(f.search_test, *(float(t) for _, t in got))))
        winner = best_by_mean([(c.trial_id, c.vals) for c in confirmed])
        return Verdict(finalists=tuple(confirmed), winner=winner, search_pick=self.finalists[0].trial_id,
                       extra_seeds=self.seeds)

    def problem(self, complete: Mapping[str, Mapping[str, Any]] | None = None) -> str:
        """What contradicts itself or the search's complete trials (``complete``: trial id ->
        config); '' when nothing does."""
        ids = [f.trial_id for f in self.finalists]
        if not ids or not self.seeds:
            return "it names no finalist or no seed"
        if len(set(ids)) != len(ids) or len(set(self.seeds)) != len(self.seeds):
            return "it names a finalist or a seed twice"
        for f in self.finalists:
            own = int(f.config.get("seed", 0))
            if own in self.seeds:
                return f"finalist {f.trial_id} ran the search at seed {own}, which is also one of its extra seeds"
            if complete is not None:
                if f.trial_id not in complete:
                    return f"finalist {f.trial_id} is not a complete trial of this search"
                if int(complete[f.trial_id].get("seed", 0)) != own:
                    return (f"finalist {f.trial_id}'s seed ({own}) is not the seed its trial ran at "
                            f"({complete[f.trial_id].get('seed', 0)})")
        winner = self.verdict.get("winner")
        if winner is not None and winner not in ids:
            return f"its winner {winner} is not one of its finalists ({', '.join(ids)})"
        if not set(self.verdict.get("ranking", [])) <= set(ids):
            return "its ranking names a trial that is not a finalist"
        for r in self.verdict.get("results", []):
            if r.get("trial_id") not in ids or list(r.get("seeds", []))[1:] != list(self.seeds):
                return f"its results for {r.get('trial_id')} do not match its finalists and seeds"
        return ""

    def to_json(self, verdict: Verdict | None = None) -> str:
        data: dict[str, Any] = {"seeds": list(self.seeds),
                                "finalists": [{"trial_id": f.trial_id, "search_val": f.search_val,
                                               "search_test": f.search_test, "config": f.config}
                                              for f in self.finalists]}
        if verdict is not None:
            data["winner"] = verdict.winner
            data["ranking"] = [c.trial_id for c in verdict.ranked()]
            data["results"] = [{"trial_id": c.trial_id, "seeds": list(c.seeds), "vals": list(c.vals),
                                "tests": list(c.tests)} for c in verdict.finalists]
        return json.dumps(data, indent=1, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> "ConfirmationPlan":
        data = json.loads(text)
        return cls(finalists=tuple(Finalist(f["trial_id"], dict(f["config"]), float(f["search_val"]),
                                            float(f["search_test"])) for f in data["finalists"]),
                   seeds=tuple(int(s) for s in data["seeds"]),
                   verdict={k: data[k] for k in ("winner", "ranking", "results") if k in data})


class ConfirmationError(ValueError):
    """``confirmation.json`` is damaged or does not match the experiment; the message names the
    file and the repair."""


def _repair(path: Path) -> str:
    command = shlex.join(["python", "-m", "marktune.search", "--resume", "--name", path.parent.name, "--storage",
                          str(path.parent.parent), "--replan-confirmation"])
    return (f"repair: `{command}` moves it aside and plans the stage again from the "
            "search's trials")


def read_confirmation(experiment_dir: Path, *,
                      complete: Mapping[str, Mapping[str, Any]] | None = None) -> ConfirmationPlan | None:
    """The experiment's ``confirmation.json``, checked; None where there is none. A file that does
    not parse, or whose finalists, seeds or verdict contradict each other (or, given ``complete``:
    trial id -> config of the search's complete trials, a finalist that is not one of them or
    whose seed differs) raises :class:`ConfirmationError`: it is never trusted, rewritten or
    skipped silently."""
    path = Path(experiment_dir) / CONFIRMATION_FILE
    if not path.exists():
        return None
    try:
        plan = ConfirmationPlan.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfirmationError(f"{path} cannot be read as the confirmation stage's record "
                                f"({type(err).__name__}: {err}); {_repair(path)}") from None
    problem = plan.problem(complete)
    if problem:
        raise ConfirmationError(f"{path}: {problem}; {_repair(path)}")
    return plan


def plan_confirmation(complete: Sequence[Any], *, top: int, seeds: int) -> ConfirmationPlan | None:
    """The top ``top`` of the complete trials (objects with ``trial_id``, ``val_acc``,
    ``test_acc`` and ``config``, best val first as the search ranks them) and ``seeds`` extra
    seeds; None when the stage is off or fewer than one trial is complete."""
    ranked = [r for r in complete if math.isfinite(r.val_acc)][:max(top, 0)]
    if not ranked or seeds < 1:
        return None
    used = sorted({int(r.config.get("seed", 0)) for r in complete})
    first = int(ranked[0].config.get("seed", 0))
    return ConfirmationPlan(finalists=tuple(Finalist(r.trial_id, dict(r.config), float(r.val_acc),
                                                     float(r.test_acc)) for r in ranked),
                            seeds=confirmation_seeds(first, seeds, used=used))


def _mean(values: Sequence[float]) -> float:
    values = [float(v) for v in values]
    if not values or not all(math.isfinite(v) for v in values):
        return math.nan
    return sum(values) / len(values)


def _fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "-"
