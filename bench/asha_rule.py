"""Why does Ray's ASHA stop more than Syne Tune's? The two stopping rules replayed side by side.

Ray's ``_Bracket.on_result`` (``ray/tune/schedulers/async_hyperband.py``) stops a trial reaching a
rung when its value is below ``np.nanpercentile`` of the values the rung holds *from other
trials*, at (1 - 1/eta) x 100; Syne Tune's ``Bracket.on_result``
(``syne_tune/optimizer/schedulers/asha.py``) ranks the trial among those values *and its own*
(ties in its favour) and stops it when more than 1/eta of them are better. With few values in a
rung (early in a search, and at the late rungs of a 5-task sequence) Ray's rule is the stricter:
the second trial to reach a rung is stopped by Ray whenever it is worse than the first, never by
Syne Tune. This bench replays random search drawn from a table with ASHA under each rule (the
rest of ResumableASHA as it is) and prints regret and task-trainings used.

    PYTHONPATH=. .venv/bin/python bench/asha_rule.py bench/curves/digits.csv --space digits
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marktune.replay.repeats import Interval  # noqa: E402
from marktune.replay.search import Strategy, replay  # noqa: E402
from marktune.replay.table import ReplayTable  # noqa: E402
from marktune.results.curves import read_curves  # noqa: E402
from marktune.tune.spaces import load_space  # noqa: E402


def rank_rule_on_result(self, trial, cur_iter: int, cur_rew):
    """Syne Tune's rule in Ray's bracket: continue when in the top 1/eta of the rung's values, its own included."""
    from ray.tune.schedulers.trial_scheduler import TrialScheduler

    action = TrialScheduler.CONTINUE
    for milestone, recorded in self._rungs:
        if cur_iter < milestone or trial.trial_id in recorded:
            continue
        if recorded and cur_rew is not None:
            values = np.array([*recorded.values(), cur_rew])
            better = int((values > cur_rew).sum())  # max mode: larger is better; ties count for it
            if better / len(values) > 1 / self.rf:
                action = TrialScheduler.STOP
        if cur_rew is not None:
            recorded[trial.trial_id] = cur_rew
        break
    return action


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("curves", type=Path)
    parser.add_argument("--space", required=True)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--replay-seeds", type=int, default=30)
    parser.add_argument("--grace", type=int, default=1)
    parser.add_argument("--eta", type=int, default=2)
    args = parser.parse_args(argv)
    from ray.tune.schedulers import async_hyperband

    table = ReplayTable.from_curves(read_curves(args.curves))
    space = load_space(args.space)
    strategy = Strategy(name="asha", proposals="table", grace_period=args.grace, reduction_factor=args.eta)
    ray_rule = async_hyperband._Bracket.on_result
    print(f"asha rule bench: {args.curves}, random search drawn from the table + ASHA grace {args.grace} eta "
          f"{args.eta}, {args.samples} samples, {args.workers} workers, {args.replay_seeds} replay seeds")
    for name, rule in (("Ray's (percentile of the others)", ray_rule),
                       ("Syne Tune's (rank among all, its own included)", rank_rule_on_result)):
        async_hyperband._Bracket.on_result = rule
        try:
            outcomes = [replay(table=table, space=space, strategy=strategy, samples=args.samples,
                               workers=args.workers, seed=s) for s in range(args.replay_seeds)]
        finally:
            async_hyperband._Bracket.on_result = ray_rule
        regret = Interval.of([o.regret(1.0) for o in outcomes])
        used = np.mean([o.task_trainings / o.budget for o in outcomes])
        print(f"  {name:48s} regret {100 * regret.mean:.2f} [{100 * regret.low:.2f}, {100 * regret.high:.2f}]; "
              f"task-trainings {100 * used:.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
