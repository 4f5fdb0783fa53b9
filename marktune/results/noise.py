"""The noise floor of the search's metric, and which trials are tied with the best.

The search selects on ``mean_val_acc``: the mean over the T tasks seen of each task's validation
accuracy p_u, scored on n_u images. Two figures say how far apart two trials must be before the
difference means anything:

* the **binomial standard error** of that mean, from the validation counts:
  ``SE = sqrt(sum_u p_u (1 - p_u) / n_u) / T`` (:func:`binomial_se`); a trial reports its counts
  (``val_counts``, ``val_images``) since this module exists, older ones do not: unknown, then;
* the **seed-to-seed standard deviation**, when a space declares one it measured
  (``noise: {seed_sd: 0.011, measured: docs/results/....md}``, :class:`SeedNoise`): the same
  configuration on another seed moves by about that much.

**The tie rule.** A complete trial i is tied with the best b when
``val_b - val_i < 2 * sqrt(SE_b**2 + SE_i**2 + 2 * seed_sd**2)`` (:func:`tie_margin`): twice the
standard deviation of the difference of two noisy measurements. An unknown SE or seed SD counts
as 0 there (the rule uses what is known); when neither is known for the best, no tie is marked
and the sentence says the noise is unknown.

Example:
    >>> round(binomial_se([0.9, 0.8], [100, 100]), 4)
    0.025
    >>> round(tie_margin(se_best=0.01, se_other=0.01, seed_sd=0.0), 4)
    0.0283
    >>> ties = find_ties([Scored("a", 0.95, 0.01, 200), Scored("b", 0.94, 0.01, 200),
    ...                   Scored("c", 0.80, 0.01, 200)], seed_sd=None)
    >>> ties.best, ties.tied
    ('a', ('b',))
    >>> print(ties.sentence("results/x"))  # doctest: +NORMALIZE_WHITESPACE
    1 trial is within the noise of the best, a (binomial SE 0.0100 on 200 validation images;
    seed-to-seed SD unknown): b. Tell them apart on fresh seeds:
    python -m marktune.evaluate results/x --top 2 --seeds 3
"""
from __future__ import annotations

import shlex

import math
from dataclasses import dataclass
from typing import Any, Sequence

TIED, BEST, NOT_TIED = "tied", "best", "no"  # the `tied` column; "" for trials not complete


def binomial_se(accuracies: Sequence[float], counts: Sequence[int] | None) -> float:
    """Standard error of the mean over tasks of per-task accuracies, each a binomial proportion.

    ``SE = sqrt(sum_u p_u (1 - p_u) / n_u) / T``; NaN when the counts are unknown (None, empty,
    another length than the accuracies, or a count below 1).

    >>> round(binomial_se([0.5], [100]), 4)
    0.05
    >>> math.isnan(binomial_se([0.5, 0.6], None)), math.isnan(binomial_se([0.5, 0.6], [100]))
    (True, True)
    """
    if not counts or len(counts) != len(accuracies) or not accuracies:
        return math.nan
    try:
        if any(float(n) < 1 for n in counts) or not all(math.isfinite(float(p)) for p in accuracies):
            return math.nan
        variance = sum(float(p) * (1 - float(p)) / float(n) for p, n in zip(accuracies, counts))
    except (TypeError, ValueError):
        return math.nan
    return math.sqrt(variance) / len(accuracies)


def even_counts(total: int | None, tasks: int) -> list[int] | None:
    """Per-task counts when only the total is known: split evenly (the benchmarks' tasks are).

    >>> even_counts(1500, 5), even_counts(None, 5)
    ([300, 300, 300, 300, 300], None)
    """
    if not total or tasks < 1:
        return None
    return [int(total) // tasks] * tasks


def tie_margin(*, se_best: float, se_other: float, seed_sd: float | None) -> float:
    """``2 * sqrt(SE_b**2 + SE_i**2 + 2 * seed_sd**2)``, an unknown (NaN or None) part counted as 0."""
    known = lambda v: float(v) if v is not None and math.isfinite(float(v)) else 0.0  # noqa: E731
    return 2 * math.sqrt(known(se_best) ** 2 + known(se_other) ** 2 + 2 * known(seed_sd) ** 2)


@dataclass(frozen=True)
class SeedNoise:
    """A space's measured seed-to-seed standard deviation of ``mean_val_acc`` (None: unknown)."""

    seed_sd: float | None = None
    measured: str | None = None  # where the measurement is written up (a docs/results/ file)

    def describe(self) -> str:
        """``seed-to-seed SD 0.011 (measured: docs/...)`` or ``seed-to-seed SD unknown``."""
        if self.seed_sd is None:
            return "seed-to-seed SD unknown"
        return f"seed-to-seed SD {self.seed_sd:.4f}" + (f" (measured: {self.measured})" if self.measured else "")

    @classmethod
    def parse(cls, value: Any, *, where: str) -> "SeedNoise":
        """A space file's ``noise:`` mapping; raises ValueError naming ``where`` for a bad one.

        >>> SeedNoise.parse({"seed_sd": 0.011, "measured": "docs/results/x.md"}, where="s.yaml").seed_sd
        0.011
        >>> SeedNoise.parse(None, where="s.yaml")
        SeedNoise(seed_sd=None, measured=None)
        """
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(f"{where}: noise must be a mapping like {{seed_sd: 0.011, measured: docs/results/"
                             f"....md}} (got {value!r})")
        unknown = sorted(set(map(str, value)) - {"seed_sd", "measured"})
        if unknown:
            raise ValueError(f"{where}: noise: unknown key(s) {', '.join(unknown)}; allowed: seed_sd, measured")
        sd = value.get("seed_sd")
        if sd is not None and (isinstance(sd, bool) or not isinstance(sd, (int, float))
                               or not math.isfinite(sd) or not 0 <= sd < 1):
            raise ValueError(f"{where}: noise.seed_sd must be a number in [0, 1), the standard deviation of "
                             f"mean validation ACC between seeds (got {sd!r}); leave it out when unmeasured")
        measured = value.get("measured")
        if measured is not None and not isinstance(measured, str):
            raise ValueError(f"{where}: noise.measured must name where it was measured (got {measured!r})")
        if sd is not None and not measured:
            raise ValueError(f"{where}: noise.seed_sd needs measured: the file where it was measured")
        return cls(seed_sd=None if sd is None else float(sd), measured=measured)


@dataclass(frozen=True)
class Scored:
    """A complete trial as the tie rule sees it: its metric, that metric's SE, its images."""

    trial_id: str
    val_acc: float
    se: float  # binomial SE of val_acc (NaN: counts unknown)
    images: int | None  # validation images it was scored on (None: unknown)


@dataclass(frozen=True)
class Ties:
    """The best trial, those tied with it (best first), and the noise figures used."""

    best: str
    tied: tuple[str, ...]
    se: float  # the best's binomial SE (NaN: unknown)
    images: int | None
    seed_sd: float | None
    measured: str | None = None
    others: int = 0  # the other complete trials it was compared with
    reach: int = 0  # how many of the best-ranked trials (by val_acc) hold the best and every tied one

    @property
    def known(self) -> bool:
        """Whether any noise figure is known (else no tie is marked)."""
        return math.isfinite(self.se) or self.seed_sd is not None

    def mark(self, trial_id: str) -> str:
        """The ``tied`` column of a complete trial: best, tied, no, or "" when the noise is unknown."""
        if trial_id == self.best:
            return BEST
        if not self.known:
            return ""
        return TIED if trial_id in self.tied else NOT_TIED

    def noise_words(self) -> str:
        on = f" on {self.images:,} validation images" if self.images else ""
        binomial = (f"binomial SE {self.se:.4f}{on}" if math.isfinite(self.se)
                    else "binomial SE unknown: the trials did not record their validation counts")
        return f"{binomial}; {SeedNoise(self.seed_sd, self.measured).describe()}"

    def sentence(self, experiment: str) -> str:
        """What the summary and the report say under the table."""
        if self.others == 0:
            return f"The best, {self.best}, is the only complete trial ({self.noise_words()})."
        if not self.known:
            return (f"The noise of the best, {self.best}, is unknown ({self.noise_words()}; no seed_sd in the "
                    "space), so no trial is marked as tied with it. Check the best on fresh seeds: "
                    f"python -m marktune.evaluate {shlex.quote(str(experiment))} --top {min(3, self.others + 1)} --seeds 3")
        n = len(self.tied)
        if n == 0:
            return f"No trial is within the noise of the best, {self.best} ({self.noise_words()})."
        return (f"{n} trial{' is' if n == 1 else 's are'} within the noise of the best, {self.best} "
                f"({self.noise_words()}): {', '.join(self.tied)}. Tell them apart on fresh seeds: "
                f"python -m marktune.evaluate {shlex.quote(str(experiment))} --top {max(self.reach, n + 1)} --seeds 3")


def find_ties(trials: Sequence[Scored], *, seed_sd: float | None, measured: str | None = None,
              best: str | None = None) -> Ties | None:
    """The trials tied with the best under the module's rule; None without a finite trial.

    ``trials``: the complete trials; ``best``: the best's id (default: the highest val_acc, the
    first of equals), so that it is the trial ``best_config.yaml`` holds.
    """
    scored = [t for t in trials if math.isfinite(t.val_acc)]
    if not scored:
        return None
    top = next((t for t in scored if t.trial_id == best), None) or max(scored, key=lambda t: t.val_acc)
    tied, reach = [], 1
    if math.isfinite(top.se) or seed_sd is not None:
        ranked = [top] + sorted((t for t in scored if t is not top), key=lambda t: -t.val_acc)
        for rank, t in enumerate(ranked[1:], start=2):
            if top.val_acc - t.val_acc < tie_margin(se_best=top.se, se_other=t.se, seed_sd=seed_sd):
                tied.append(t.trial_id)
                reach = rank  # evaluate --top takes the best-ranked: as far as the last tied one
    return Ties(best=top.trial_id, tied=tuple(tied), se=top.se, images=top.images, seed_sd=seed_sd,
                measured=measured, others=len(scored) - 1, reach=reach)


def scored_from_result(trial_id: str, result: dict[str, Any] | None) -> Scored:
    """A trial's last reported result (Tune's metrics or a ``result.json`` line) as :class:`Scored`.

    Uses ``val_row`` with ``val_counts`` (per task), else ``val_images`` split evenly; either
    absent (an experiment from before they were reported): SE and images unknown, no error.

    >>> scored_from_result("a", {"mean_val_acc": 0.5, "val_row": [0.5], "val_counts": [100]}).se
    0.05
    >>> s = scored_from_result("b", {"mean_val_acc": 0.5, "val_row": [0.5]})
    >>> math.isnan(s.se), s.images
    (True, None)
    """
    result = result or {}
    value = result.get("mean_val_acc")
    val = float(value) if isinstance(value, (int, float)) else math.nan
    row = result.get("val_row")
    row = list(row) if isinstance(row, (list, tuple)) else []
    counts = result.get("val_counts")
    counts = list(counts) if isinstance(counts, (list, tuple)) else None
    total = result.get("val_images")
    if counts is None and isinstance(total, (int, float)) and math.isfinite(total) and row:
        counts = even_counts(int(total), len(row))
    images = (int(total) if isinstance(total, (int, float)) and math.isfinite(total)
              else (sum(counts) if counts else None))
    se = binomial_se(row, counts)
    return Scored(trial_id=trial_id, val_acc=val, se=se, images=images if math.isfinite(se) else None)
