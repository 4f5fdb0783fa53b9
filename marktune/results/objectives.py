"""What a multi-objective search optimises, and how trials are ranked on several objectives.

``--objectives val_acc,params`` (or ``seconds``, ``forgetting``) makes the search a trade-off:
accuracy against size, compute or forgetting, each objective's direction fixed by its meaning
(:data:`OBJECTIVES`). Every trial reports each objective after every task
(``runners/mark_sequence.py``): ``total_params`` is a function of the settings (the shared KB
plus T x what each task adds, counted on the meta device before the trial trains), the others
are measured as accuracy is. All of them are scored on validation data or on no data at all:
forgetting is ``-bwt_val``, never the test split.

Ranking (:func:`nondominated_order`): fronts of non-dominated points one after the other, and
inside a front an epsilon-net order (Clarkson 2005, as Schmucker et al. 2021 use it for MO-ASHA):
the best point on the first objective first, then each time the point farthest from those
already taken. Distances are measured on each objective scaled to [0, 1] over the points
ranked, so that a parameter count in the 10^5 does not alone decide them. The multi-objective
ASHA (:mod:`marktune.tune.strategy.mo_asha`) keeps a trial at a rung when its position in that order is
within the top 1/eta, as Syne Tune's MOASHA does.

Example:
    >>> objs = parse_objectives("val_acc,params")
    >>> [o.name for o in objs], [o.direction for o in objs]
    (['val_acc', 'params'], ['max', 'min'])
    >>> points = [(0.90, 1000), (0.95, 5000), (0.80, 2000), (0.94, 900)]
    >>> nondominated_ranks(minimised(points, objs))
    [1, 0, 2, 0]
    >>> nondominated_order(minimised(points, objs))
    [1, 3, 0, 2]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from marktune.mark.metrics import METRIC


class ObjectiveError(ValueError):
    """An ``--objectives`` list that cannot be searched."""


@dataclass(frozen=True)
class Objective:
    name: str  # what --objectives says
    metric: str  # the key each trial reports after every task
    direction: str  # max or min
    words: str  # for the summary's column and messages

    @property
    def sign(self) -> float:
        """+1 to turn the reported value into one to minimise (min), -1 for max."""
        return 1.0 if self.direction == "min" else -1.0


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("val_acc", METRIC, "max", "mean val ACC"),
    Objective("params", "total_params", "min", "parameters (KB + T x per task)"),
    Objective("seconds", "sequence_seconds", "min", "seconds (all tasks so far)"),
    # counted from shapes (marktune.mark.flops): unlike seconds, the same on every machine and load
    Objective("flops", "train_flops", "min", "training FLOPs (all tasks so far)"),
    Objective("forgetting", "forgetting_val", "min", "forgetting (-BWT on val)"),
)}
SINGLE = (OBJECTIVES["val_acc"],)  # a search without --objectives


def parse_objectives(text: str | Sequence[str] | None) -> tuple[Objective, ...]:
    """``val_acc,params`` -> the objectives, val_acc first; None or ``val_acc`` alone: the
    single-objective search. Unknown, repeated, or without ``val_acc``: an :class:`ObjectiveError`
    saying how to fix it."""
    if text is None:
        return SINGLE
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    allowed = ", ".join(OBJECTIVES)
    for n in names:
        if n not in OBJECTIVES:
            raise ObjectiveError(f"--objectives: unknown objective {n!r}; choose from {allowed} "
                                 "(e.g. --objectives val_acc,params)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ObjectiveError(f"--objectives: {', '.join(repeated)} given twice; name each objective once")
    if "val_acc" not in names:
        raise ObjectiveError("--objectives must include val_acc (the search trades accuracy against "
                             f"{', '.join(n for n in OBJECTIVES if n != 'val_acc')}), e.g. val_acc,params")
    # val_acc first, whatever the order given: the epsilon-net starts from the most accurate point
    return tuple(OBJECTIVES[n] for n in ["val_acc", *[n for n in names if n != "val_acc"]])


def objective_values(result: Mapping[str, float], objectives: Sequence[Objective]) -> tuple[float, ...] | None:
    """The objectives' values in a reported result, as reported; None when one is missing or not finite."""
    out = []
    for o in objectives:
        value = result.get(o.metric)
        if value is None or not math.isfinite(float(value)):
            return None
        out.append(float(value))
    return tuple(out)


def minimised(points: Sequence[Sequence[float]], objectives: Sequence[Objective]) -> list[tuple[float, ...]]:
    """Each point with every objective turned into one to minimise."""
    return [tuple(o.sign * float(v) for o, v in zip(objectives, p)) for p in points]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` on every objective and better on one (all minimised)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def nondominated_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Each point's front: 0 for the non-dominated, 1 for those only the first front dominates, ...
    (all objectives minimised)."""
    ranks = [-1] * len(points)
    left = list(range(len(points)))
    front = 0
    while left:
        this = [i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)]
        for i in this:
            ranks[i] = front
        left = [i for i in left if ranks[i] < 0]
        front += 1
    return ranks


def nondominated_order(points: Sequence[Sequence[float]]) -> list[int]:
    """The points' indices best first: front by front, each front in epsilon-net order (the
    best on the first objective, then the farthest from those taken; objectives scaled to [0, 1])."""
    if not points:
        return []
    dims = len(points[0])
    low = [min(p[d] for p in points) for d in range(dims)]
    span = [(max(p[d] for p in points) - low[d]) or 1.0 for d in range(dims)]
    scaled = [[(p[d] - low[d]) / span[d] for d in range(dims)] for p in points]
    ranks = nondominated_ranks(points)
    order: list[int] = []
    for front in range(max(ranks) + 1):
        members = [i for i in range(len(points)) if ranks[i] == front]
        taken = [min(members, key=lambda i: (points[i][0], i))]
        rest = [i for i in members if i != taken[0]]
        while rest:
            far = max(rest, key=lambda i: (min(math.dist(scaled[i], scaled[j]) for j in taken), -i))
            taken.append(far)
            rest.remove(far)
        order += taken
    return order


def hypervolume_2d(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The area two-objective points (both minimised) dominate inside the box up to ``reference``;
    points outside the box or dominated add nothing.

    >>> hypervolume_2d([(0, 2), (1, 1), (2, 0), (2, 2)], (3, 3))
    6.0
    """
    inside = sorted((float(a), float(b)) for a, b in points if a < reference[0] and b < reference[1])
    area, best_b = 0.0, float(reference[1])
    for i, (a, b) in enumerate(inside):
        if b >= best_b:
            continue  # dominated by a point before it
        next_a = next((x for x, y in inside[i + 1:] if y < b), float(reference[0]))
        area += (next_a - a) * (float(reference[1]) - b)
        best_b = b
    return area


@dataclass(frozen=True)
class MemberVerdict:
    """One Pareto-set member after fresh seeds: who, if anyone, now beats it on both axes."""

    label: str
    params: float
    mean: float  # its mean over the fresh pairs (test ACC)
    beaten_by: tuple[str, ...]  # members no larger and better by a paired CI above 0

    @property
    def stays(self) -> bool:
        return not self.beaten_by


def front_on_fresh_seeds(rows: Sequence[Mapping[str, object]], members: Sequence[tuple[str, float]], *,
                         rivals: Sequence[tuple[str, float]] = (), metric: str = "test_acc") -> list[MemberVerdict]:
    """Which of the Pareto set's ``members`` ((label, parameters)) stay non-dominated on fresh
    seeds: a member is beaten by another member, or one of the ``rivals`` (the space's default),
    that has no more parameters and whose paired difference on ``metric`` (evaluation.csv rows,
    paired by data seed and seed) has its 95 % interval above 0.

    >>> rows = [{"configuration": c, "data_seed": 0, "seed": s, "test_acc": v} for c, s, v in
    ...         [("a", 1, .90), ("a", 2, .91), ("a", 3, .92), ("b", 1, .95), ("b", 2, .97), ("b", 3, .96)]]
    >>> [(v.label, v.beaten_by) for v in front_on_fresh_seeds(rows, [("a", 2000), ("b", 1000)])]
    [('a', ('b',)), ('b', ())]
    """
    from marktune.results.statistics import paired_difference, paired_values

    out = []
    for label, params in members:
        beaten = []
        for other, other_params in [*members, *rivals]:
            if other == label or other_params > params:
                continue
            theirs, mine, _ = paired_values(rows, configuration=other, reference=label, metric=metric)
            if paired_difference(theirs, mine).low > 0:
                beaten.append(other)
        values = [float(r[metric]) for r in rows if r.get("configuration") == label
                  and math.isfinite(float(r.get(metric, math.nan)))]
        out.append(MemberVerdict(label, float(params), sum(values) / len(values) if values else math.nan,
                                 tuple(beaten)))
    return out


def keeps(position: int, count: int, reduction_factor: float) -> bool:
    """Whether a trial at ``position`` (0 = best) among ``count`` recorded at a rung, itself
    included, continues: its position over the count is within 1/eta (Syne Tune's MOASHA rule).

    >>> [keeps(p, 6, 3) for p in range(6)]
    [True, True, True, False, False, False]
    """
    return position / count <= 1 / reduction_factor
