"""Typed plans: everything a command decided before Ray starts, and what rides in each trial.

The command line (``marktune.cli``) parses its flags, builds one of these frozen records and
hands it to the library (``marktune.tune.runs.launch`` checks it and starts Ray,
``marktune.tune.runs.search_run`` / ``marktune.tune.runs.evaluation_run`` run it). No function below the
command line sees an argparse namespace.

* what rides in each trial, :class:`runners.runtime.TrialRuntime` (data, threads, GPU use, where
  a first-k trial stops), lives with the trial runner; the plans below hold one.
* :class:`RaySettings`: which Ray to join or start.
* :class:`SearchPlan` and :class:`EvalPlan`: one search, one evaluation.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marktune.results.files import RUNTIME_KEY, is_remote
from marktune.results.objectives import SINGLE, Objective
from marktune.results.protocols import DEFAULT_TUNING_TASKS, SearchProtocol
from runners.runtime import TrialRuntime

if TYPE_CHECKING:
    from marktune.mark.config import MarkConfig
    from marktune.results.experiment import Experiment
    from marktune.tune.spaces import SearchSpace
    from marktune.tune.strategy.strategies import SearchStrategy
    from marktune.tune.folders.study import StudyStorage

__all__ = ["RUNTIME_KEY", "DEFAULT_STORAGE", "PlanError", "RaySettings", "SearchPlan", "EvalConfig",
           "EvalPlan", "check_trial_resources", "check_protocol", "check_name", "check_seed", "check_stage_size",
           "MAX_STAGE_RUNS", "check_config_seeds", "MAX_SEED",
           "local_experiment_dir", "trial_threads"]

DEFAULT_STORAGE = "results"


class PlanError(ValueError):
    """A flag or an environment problem found before any trial starts."""


def trial_threads(cpus_per_trial: float) -> int:
    """Torch threads of a trial: its whole CPUs, at least one."""
    return max(1, int(cpus_per_trial)) if cpus_per_trial else 1


@dataclass(frozen=True, kw_only=True)
class RaySettings:
    """The Ray a command runs on: a cluster at ``address``, else one started on this machine."""

    address: str | None = None  # 'auto', HOST:PORT or ray://HOST:PORT; None: a local Ray
    num_cpus: int | None = None  # of the local Ray (None: all)
    num_gpus: float | None = None  # declared to the local Ray (None: detected; set: fake GPUs pass the checks)


# ---------------------------------------------------------------- checks shared by the commands
def check_trial_resources(*, cpus_per_trial: float | None, gpus_per_trial: float | None,
                          max_concurrent: int | None, max_failures: int | None) -> None:
    """What a trial (or an evaluation run) may ask for; ``None`` is "not given" and passes."""
    if cpus_per_trial is not None and (cpus_per_trial < 0 or not math.isfinite(cpus_per_trial)):
        raise PlanError(f"--cpus-per-trial must be >= 0 (got {cpus_per_trial})")
    gpus = gpus_per_trial
    if gpus is not None and (gpus < 0 or (gpus > 1 and not float(gpus).is_integer())):
        raise PlanError(f"--gpus-per-trial must be a fraction in [0, 1] or a whole number (got {gpus})")
    if max_concurrent is not None and max_concurrent < 1:
        raise PlanError(f"--max-concurrent must be >= 1 (got {max_concurrent})")
    if max_failures is not None and max_failures < 0:
        raise PlanError(f"--max-failures must be >= 0 (got {max_failures})")


_NAME = re.compile(r"[A-Za-z0-9._-]+")
MAX_SEED = 2**32 - 1  # numpy's seeds are 0 .. 2**32 - 1


def check_name(name: str, *, flag: str = "--name") -> None:
    """An experiment's name is one path component: letters, digits, '.', '_' and '-' (not '.' or
    '..'), so it stays inside --storage.

    >>> check_name("fmnist-2026.v2_a")
    >>> check_name("../x")
    Traceback (most recent call last):
    ...
    marktune.tune.plan.PlanError: --name '../x': a name is one folder name of letters, digits, '.', '_' and '-' (it goes inside --storage); e.g. --name fmnist-lr-sweep
    """
    if not _NAME.fullmatch(name or "") or name in (".", ".."):
        raise PlanError(f"{flag} {name!r}: a name is one folder name of letters, digits, '.', '_' and '-' "
                        f"(it goes inside --storage); e.g. {flag} fmnist-lr-sweep")


# The most runs one stage may plan (a search's trials; its confirmation's finalists x seeds; an
# evaluation's rows x seeds x orders). Every run is a whole MARK sequence and the driver keeps a
# record of each: a stage past this never finishes, and planning it alone fills the driver's memory.
MAX_STAGE_RUNS = 100_000


def check_stage_size(runs: int, *, what: str) -> None:
    """Refuse a stage of more than :data:`MAX_STAGE_RUNS` runs before any work starts.

    >>> check_stage_size(3 * 2, what="--confirm-top 3 x --confirm-seeds 2")
    >>> check_stage_size(3 * 10**11, what="--confirm-top 3 x --confirm-seeds 100000000000")
    Traceback (most recent call last):
    ...
    marktune.tune.plan.PlanError: --confirm-top 3 x --confirm-seeds 100000000000 is 300,000,000,000 runs, each a whole MARK sequence; one stage runs at most 100,000: ask for fewer
    """
    if runs > MAX_STAGE_RUNS:
        raise PlanError(f"{what} is {runs:,} runs, each a whole MARK sequence; one stage runs at most "
                        f"{MAX_STAGE_RUNS:,}: ask for fewer")


def check_seed(seed: int, *, flag: str) -> None:
    """Seeds reach numpy, whose seeds are 0 .. 2**32 - 1."""
    if not 0 <= seed <= MAX_SEED:
        raise PlanError(f"{flag} {seed}: a seed must be in 0..{MAX_SEED} (numpy's range)")


def check_config_seeds(config: MarkConfig, *, where: str = "") -> None:
    """A learner configuration's ``seed`` and ``data_seed`` in numpy's range (``where``: what set them)."""
    check_seed(config.seed, flag=f"{where}seed")
    if config.data_seed is not None:
        check_seed(config.data_seed, flag=f"{where}data_seed")


def check_protocol(protocol: str | None, tuning_tasks: int | None, *, stream_tasks: int) -> tuple[str, int | None]:
    """(protocol, k for first-k else None); a bad combination is a PlanError."""
    protocol = protocol or "full"
    k = tuning_tasks
    if protocol != "first-k":
        if k is not None:
            raise PlanError(f"--tuning-tasks {k} needs --protocol first-k (got --protocol {protocol})")
        return protocol, None
    k = DEFAULT_TUNING_TASKS if k is None else k
    if not 1 <= k < stream_tasks:
        raise PlanError(f"--tuning-tasks must be in 1..{stream_tasks - 1} for a stream of {stream_tasks} tasks "
                        f"(got {k}): first-k keeps at least one task the search never sees; "
                        "--protocol full searches on every task")
    return protocol, k


def local_experiment_dir(storage: str, name: str) -> Path:
    """The experiment directory, or ./results/<name> on this machine for an s3:// storage (its
    trials.csv, best_config.yaml and default Optuna journal live there)."""
    if is_remote(storage):
        return Path(DEFAULT_STORAGE).resolve() / name
    return Path(storage) / name


# ---------------------------------------------------------------- a search
@dataclass(frozen=True, kw_only=True)
class SearchPlan:
    """Everything a search decided before Ray starts."""

    space: SearchSpace
    space_given: str  # --space as given: a shipped space's name, or a file path
    overrides: dict[str, Any]  # --set, parsed
    override_flags: tuple[str, ...]  # --set as given (KEY=VALUE), recorded for --resume
    base_config: MarkConfig
    samples: int
    seed: int  # of the sampler (trials use the space's seed)
    # which sampler proposes, which scheduler stops, with their options: each flag, else the space's
    # default (marktune.tune.strategy.strategies)
    search_strategy: SearchStrategy
    max_concurrent: int | None
    cpus_per_trial: float
    gpus_per_trial: float | None  # None: 0.25 where the cluster has GPUs, else 0
    max_failures: int
    reuse_actors: bool  # Tune's reuse_actors: a new trial runs in a finished trial's process
    storage: str
    name: str
    num_tasks: int  # tasks each trial runs (ASHA's max_t): the stream's, or k under first-k
    study_storage: StudyStorage  # where the Optuna study (named after the experiment) lives
    runtime: TrialRuntime
    ray: RaySettings = field(default_factory=RaySettings)
    resume: bool = False
    protocol: str = "full"
    tuning_tasks: int | None = None  # first-k only
    stream_tasks: int = 0  # tasks of the whole stream
    # the confirmation stage: the top confirm_top complete trials re-run at confirm_seeds more seeds
    confirm_top: int = 0
    confirm_seeds: int = 2
    # what it optimises (marktune.results.objectives): val_acc alone, or val_acc against size, time or forgetting
    objectives: tuple[Objective, ...] = SINGLE
    verbose: bool = False  # Ray's trial tables too
    quiet: bool = False  # no status lines

    @property
    def experiment(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    def local_dir(self) -> Path:
        return local_experiment_dir(self.storage, self.name)

    @property
    def searcher(self) -> str:
        return self.search_strategy.searcher

    @property
    def scheduler(self) -> str:
        return self.search_strategy.scheduler

    @property
    def n_startup_trials(self) -> int:
        return self.search_strategy.n_startup_trials

    @property
    def constant_liar(self) -> bool:
        return self.search_strategy.constant_liar

    def strategy(self) -> str:
        """Which trials run and which stop, and who wins, in words (the search prints it as it starts)."""
        text = self.search_strategy.words(samples=self.samples, num_tasks=self.num_tasks, objectives=self.objectives)
        if self.multiobjective:
            return text + "; the result is the Pareto set of the complete trials"
        if self.confirm_top:
            s = "s" if self.confirm_seeds != 1 else ""
            return text + (f"; then the top {self.confirm_top} complete trials run at {self.confirm_seeds} more "
                           f"seed{s} and the best mean validation ACC wins")
        return text + "; the best one-seed validation ACC wins (no confirmation stage)"

    @property
    def multiobjective(self) -> bool:
        return len(self.objectives) > 1

    def why(self) -> str:
        """Why this strategy, in one line: the space's reason when the strategy is the space's own,
        else which flags changed it."""
        d = self.space.defaults
        mine = {"samples": self.samples, "searcher": self.searcher, "scheduler": self.scheduler,
                "n_startup_trials": self.n_startup_trials, "confirm_top": self.confirm_top,
                "confirm_seeds": self.confirm_seeds,
                "objectives": ",".join(o.name for o in self.objectives)}
        d = {**d, "objectives": d.get("objectives") or "val_acc"}
        changed = [k for k, v in mine.items() if v != d[k] and not (
                   k == "n_startup_trials" and self.search_strategy.sampler_kind.random_start != "n_startup_trials")
                   and not (self.multiobjective and k.startswith("confirm_"))]  # off with several objectives
        if changed:
            return ("your flags (" + ", ".join(f"--{k.replace('_', '-')} {mine[k]}" for k in changed)
                    + f"; the space's default is {', '.join(f'{d[k]}' for k in changed)})")
        return d["why"] or "the space's defaults (it gives no reason)"

    def search_protocol(self) -> SearchProtocol:
        """The protocol as ``marktune_search.json`` records it (read by ``marktune.results.protocols``)."""
        return SearchProtocol(name=self.protocol, tuning_tasks=self.tuning_tasks, stream_tasks=self.stream_tasks,
                              searched_data_seed=self.base_config.split_seed,
                              searched_class_order=self.base_config.class_order)


# ---------------------------------------------------------------- an evaluation
@dataclass(frozen=True)
class EvalConfig:
    """One configuration an evaluation re-runs, and the row it makes."""

    label: str
    kind: str  # best, default, ablation
    source_trial: str
    config: MarkConfig


@dataclass(frozen=True, kw_only=True)
class EvalPlan:
    """Everything an evaluation decided before Ray starts."""

    experiment: Experiment
    configs: list[EvalConfig]
    seeds: list[int]
    cpus_per_trial: float
    gpus_per_trial: float | None
    storage: str
    name: str
    default_rule: str
    reuse_actors: bool  # Tune's reuse_actors: a new run runs in a finished run's process
    runtime: TrialRuntime  # every run's: the search's data settings, this command's threads, every task
    # paired design (marktune.results.protocols, marktune.results.conclusions): every configuration runs every
    # (data_seed, seed) pair
    data_seeds: list[int] = field(default_factory=list)
    protocol: SearchProtocol = field(default_factory=SearchProtocol)
    benchmark: str = ""  # evaluated on: the search's, or --benchmark
    max_concurrent: int | None = None
    max_failures: int = 2
    ray: RaySettings = field(default_factory=RaySettings)
    quiet: bool = False  # no Ray trial table
    # the non-inferiority margin (a fraction of ACC; marktune.results.cost) and where it comes from
    margin: float | None = None
    margin_source: str = ""

    @property
    def runs(self) -> int:
        return len(self.configs) * len(self.seeds) * len(self.data_seeds)

    @property
    def tune_experiment(self) -> str:
        """Where the runs' own Tune directories go."""
        return f"{self.storage.rstrip('/')}/{self.name}"
