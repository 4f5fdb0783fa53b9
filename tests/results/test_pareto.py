"""The Pareto front of (cost, accuracy) points."""
from __future__ import annotations

import doctest
import math

from marktune.results import pareto


def test_docstring_examples_run():
    failures, tried = doctest.testmod(pareto)
    assert tried > 0 and failures == 0


def test_pareto_front_of_hand_made_points():
    from marktune.results.pareto import pareto_front, total_parameters

    # (cost, accuracy): c beats b (cheaper, as accurate); d is beaten by a; e ties a exactly;
    # f is the most accurate; g has no cost; h is the cheapest, least accurate
    points = {"a": (100, 0.80), "b": (250, 0.85), "c": (200, 0.85), "d": (120, 0.79), "e": (100, 0.80),
              "f": (400, 0.90), "g": (math.nan, 0.99), "h": (10, 0.10), "i": (400, 0.89)}
    names = list(points)
    front = [names[i] for i in pareto_front(list(points.values()))]
    assert front[0] == "h" and front[-1] == "f"  # cheapest first
    assert sorted(front) == ["a", "c", "e", "f", "h"]
    assert pareto_front([]) == []
    assert total_parameters(1000, 10, 5) == 1050


def _front_by_every_pair(points):
    """The definition, pair by pair: what pareto_front must agree with."""
    from marktune.results.objectives import dominates

    finite = [i for i, (c, a) in enumerate(points) if math.isfinite(c) and math.isfinite(a)]
    return sorted((i for i in finite if not any(dominates((points[j][0], -points[j][1]), (points[i][0], -points[i][1]))
                                                for j in finite if j != i)),
                  key=lambda i: (points[i][0], -points[i][1]))


def test_pareto_front_agrees_with_every_pair_compared_on_random_points_with_ties():
    import random

    from marktune.results.pareto import pareto_front

    rng = random.Random(0)
    for n in (1, 2, 5, 30, 200):
        for _ in range(20):
            # few distinct values: equal costs, equal accuracies and identical points are common
            points = [(rng.choice([1.0, 2.0, 3.0, 5.0, math.nan]), rng.choice([0.1, 0.5, 0.5, 0.9, math.nan]))
                      for _ in range(n)]
            assert pareto_front(points) == _front_by_every_pair(points), points
            points = [(rng.random(), rng.random()) for _ in range(n)]
            assert pareto_front(points) == _front_by_every_pair(points)


def test_pareto_front_s_comparisons_grow_as_n_log_n_not_as_n_squared():
    """report.html draws fronts over every complete trial. Comparing every pair cost N^2 where most
    points are on the front (accuracy rising with cost: here every point is); counted, not timed:
    4x the points may cost about 5x the comparisons, not 16x."""
    import random

    from marktune.results.pareto import pareto_front

    class Counted(float):
        comparisons = 0

        def _count(self, other, op):
            Counted.comparisons += 1
            return op(float(self), float(other))

        def __lt__(self, other): return self._count(other, float.__lt__)  # noqa: E704
        def __le__(self, other): return self._count(other, float.__le__)  # noqa: E704
        def __gt__(self, other): return self._count(other, float.__gt__)  # noqa: E704
        def __ge__(self, other): return self._count(other, float.__ge__)  # noqa: E704
        def __eq__(self, other): return self._count(other, float.__eq__)  # noqa: E704
        __hash__ = float.__hash__

    def comparisons(n: int) -> int:
        rng = random.Random(n)
        Counted.comparisons = 0
        xs = [rng.random() for _ in range(n)]
        assert len(pareto_front([(Counted(x), Counted(x)) for x in xs])) == n

        return Counted.comparisons

    small, large = comparisons(500), comparisons(2000)
    assert large < 8 * small, (small, large)
