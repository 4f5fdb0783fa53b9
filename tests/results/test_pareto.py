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
