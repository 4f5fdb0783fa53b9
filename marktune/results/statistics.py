"""Statistics of an evaluation as plain functions (paired comparisons, rank stability, held-out tasks).

Every configuration of an evaluation runs on the same (data_seed, seed) pairs, so a
configuration is compared with the default *pair by pair*: what the class order or the
initialisation makes easy or hard is the same for both and cancels in the difference. The
interval is Student's t on the paired differences (``scipy.stats.ttest_rel``), the verdict a
word read off it.

Example:
    >>> d = paired_difference([0.92, 0.94, 0.95], [0.90, 0.91, 0.92])
    >>> round(d.mean, 4), d.n, d.verdict
    (0.0267, 3, 'better')
    >>> paired_difference([0.91, 0.90], [0.90, 0.91]).verdict
    'not distinguishable'
    >>> round(rank_stability([0.9, 0.8, 0.7], [0.95, 0.85, 0.75]), 6)
    1.0
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

CONFIDENCE = 0.95
METHOD = "Student t on the paired differences (scipy.stats.ttest_rel), 95 % two-sided"
BETTER, WORSE, UNDECIDED = "better", "worse", "not distinguishable"
PAIR_KEY = ("data_seed", "seed")  # what makes two runs of different configurations a pair


@dataclass(frozen=True)
class PairedDifference:
    """``values - reference`` over matched pairs: mean, confidence interval, verdict."""

    mean: float
    low: float
    high: float
    n: int
    verdict: str


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1) of the finite values; NaN where undefined.

    Example:
        >>> [round(v, 4) for v in mean_std([0.8, 0.9, float("nan")])]
        [0.85, 0.0707]
        >>> mean_std([0.8])[1]
        nan
    """
    vals = np.asarray([v for v in values if _finite(v)], dtype=float)
    if len(vals) == 0:
        return math.nan, math.nan
    return float(vals.mean()), (float(vals.std(ddof=1)) if len(vals) > 1 else math.nan)


def verdict(low: float, high: float) -> str:
    """``better`` when the interval lies above 0, ``worse`` below 0, else ``not distinguishable``.

    Example:
        >>> verdict(0.01, 0.03), verdict(-0.03, -0.01), verdict(-0.01, 0.02)
        ('better', 'worse', 'not distinguishable')
    """
    if _finite(low) and low > 0:
        return BETTER
    if _finite(high) and high < 0:
        return WORSE
    return UNDECIDED


def paired_difference(values: Sequence[float], reference: Sequence[float], *,
                      confidence: float = CONFIDENCE) -> PairedDifference:
    """Mean of ``values[i] - reference[i]`` and its Student-t confidence interval.

    Pairs where either side is not finite (a failed run) are dropped. Fewer than two pairs
    give no interval (NaN) and ``not distinguishable``. When every difference is the same,
    the interval is that one value (t's interval has zero width there; scipy returns NaN).

    Example:
        >>> d = paired_difference([0.80, 0.85, 0.90], [0.81, 0.84, 0.92])
        >>> round(d.mean, 4), d.verdict
        (-0.0067, 'not distinguishable')
    """
    if len(values) != len(reference):
        raise ValueError(f"paired values need equal lengths (got {len(values)} and {len(reference)})")
    pairs = [(float(a), float(b)) for a, b in zip(values, reference) if _finite(a) and _finite(b)]
    n = len(pairs)
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0, UNDECIDED)
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    diff = a - b
    mean = float(diff.mean())
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, n, UNDECIDED)
    # accuracies lie in [0, 1]: differences that agree to 1e-12 are equal up to the round-off of
    # one subtraction (~1e-16); t's interval then has zero width (scipy would return NaN)
    if np.ptp(diff) <= 1e-12:
        low = high = mean
    else:
        from scipy import stats

        interval = stats.ttest_rel(a, b).confidence_interval(confidence_level=confidence)
        low, high = float(interval.low), float(interval.high)
    return PairedDifference(mean, low, high, n, verdict(low, high))


def paired_values(rows: Iterable[Mapping[str, Any]], *, configuration: str, reference: str, metric: str,
                  key: Sequence[str] = PAIR_KEY) -> tuple[list[float], list[float], list[tuple]]:
    """The two configurations' ``metric`` on the pairs both ran, in pair order.

    ``rows`` are evaluation.csv rows (dicts with ``configuration``, the ``key`` fields and the
    metric). A pair that only one configuration ran is left out.

    Example:
        >>> rows = [{"configuration": c, "data_seed": 0, "seed": s, "acc": v}
        ...         for c, s, v in (("a", 1, 0.9), ("a", 2, 0.8), ("d", 1, 0.7), ("d", 2, 0.6), ("d", 3, 0.5))]
        >>> paired_values(rows, configuration="a", reference="d", metric="acc")
        ([0.9, 0.8], [0.7, 0.6], [(0, 1), (0, 2)])
    """
    mine: dict[tuple, float] = {}
    theirs: dict[tuple, float] = {}
    for row in rows:
        pair = tuple(row.get(k) for k in key)
        if row.get("configuration") == configuration:
            mine[pair] = row.get(metric, math.nan)
        if row.get("configuration") == reference:
            theirs[pair] = row.get(metric, math.nan)
    pairs = sorted(set(mine) & set(theirs), key=lambda p: tuple(str(x) for x in p) if None in p else p)
    return [mine[p] for p in pairs], [theirs[p] for p in pairs], pairs


def rank_stability(search_scores: Sequence[float], evaluation_scores: Sequence[float]) -> float:
    """Kendall's tau (``scipy.stats.kendalltau``, tau-b) between two scorings of the same items.

    1: the evaluation ranks the configurations as the search did; -1: reversed; NaN with fewer
    than two items with finite scores on both sides.

    Example:
        >>> rank_stability([0.9, 0.8, 0.7], [0.7, 0.8, 0.9])
        -1.0
        >>> round(rank_stability([0.9, 0.8, 0.7, 0.6], [0.8, 0.9, 0.7, 0.6]), 6)
        0.666667
    """
    pairs = [(float(a), float(b)) for a, b in zip(search_scores, evaluation_scores) if _finite(a) and _finite(b)]
    if len(pairs) < 2:
        return math.nan
    from scipy import stats

    return float(stats.kendalltau([p[0] for p in pairs], [p[1] for p in pairs]).statistic)


def heldout_accuracy(R: Sequence[Sequence[float]], first: int) -> float:
    """Mean over tasks ``first..T-1`` of the last row of ``R`` (tasks never used for selection).

    Example:
        >>> heldout_accuracy([[0.9], [0.8, 0.7], [0.6, 0.5, 0.4]], 1)
        0.45
    """
    if not R:
        return math.nan
    last = [float(v) for v in R[-1]]
    if first >= len(last):
        return math.nan
    return float(np.mean(last[first:]))


def heldout_backward_transfer(R: Sequence[Sequence[float]], first: int) -> float:
    """BWT (GEM) over tasks ``first..T-2``: ``mean (R[T-1][u] - R[u][u])``; 0 when none is left.

    Example:
        >>> round(heldout_backward_transfer([[0.9], [0.8, 0.7], [0.6, 0.5, 0.4]], 1), 6)
        -0.2
    """
    T = len(R)
    if T == 0 or first >= T:
        return math.nan
    tasks = range(first, T - 1)
    if not tasks:
        return 0.0
    return float(np.mean([float(R[T - 1][u]) - float(R[u][u]) for u in tasks]))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
