"""Search spaces: one declarative YAML file per benchmark (``search_spaces/NAME.yaml``).

A space file holds::

    benchmark: fmnist
    fixed:          # learner settings every trial shares (MarkConfig keys); a searched
      epochs: 3     # key here is the space's default configuration (run --config), not a trial's
    search:         # searched learner settings and their distributions
      lr_meta:   {type: loguniform, low: 1.0e-3, high: 1.0e-1}
      kb_depth:  {type: int, low: 2, high: 4}
      mask_activation: {type: choice, values: [relu, sigmoid]}
    defaults:       # the search's own defaults (command-line flags override them)
      samples: 12
      searcher: tpe         # an Optuna sampler (marktune.tune.strategy.strategies.SAMPLERS): tpe, random, qmc, gp, ...
      n_startup_trials: 10  # TPE's random trials before it models (Optuna's default)
      constant_liar: true   # TPE: running trials count as bad results while others are proposed
      scheduler: asha       # asha (stops weak trials), hyperband (ASHA over brackets: brackets: 3) or none
      grace_period: 1       # ASHA, in tasks
      reduction_factor: 2
      eval_seeds: 3         # marktune.evaluate: initialisation seeds x class orders
      eval_orders: 1
    noise:          # optional: the seed-to-seed SD of mean validation ACC, where it was measured
      seed_sd: 0.011            # (the search's summary marks trials within the noise as tied)
      measured: docs/results/....md

Everything is checked here, before Ray starts: unknown names, a key given twice (at any level,
with its line), ``low >= high``, a distribution that does not suit the setting's type, and every
value a search can propose that the learner would refuse (``marktune.tune.space_checks`` says
which values and combinations are tried).

A finished search's space is recognised here too (:func:`recognise_space`): when the search left
``marktune_search.json`` (its space and ``--set`` overrides), that file says. Otherwise a space
file matches when its benchmark is the trials' and its searched settings are the trials'.
Candidates are the experiment name's prefix (``digits-20261123-...`` -> ``digits``), then the
benchmark's name, then every other space file.

Example:
    >>> space = load_space("fmnist")
    >>> space.benchmark, "lr_meta" in space.params
    ('fmnist', True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from marktune.mark.config import ConfigError, MarkConfig, parse_overrides, yaml_scalar
from marktune.mark.yaml_io import load_yaml_file
from marktune.results.experiment import Experiment, same_setting
from marktune.results.experiment_reader import load_experiment
from marktune.results.files import read_settings
from marktune.results.noise import SeedNoise
from marktune.results.objectives import ObjectiveError, parse_objectives
from marktune.tune.strategy.strategies import SAMPLERS, SCHEDULERS, SearchStrategy, StrategyError
from marktune.tune.space_checks import (SpaceError, check_choice_values, check_combinations, check_kind,
                                        check_values, seed_refusal, setting_type)

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
SEARCHERS = tuple(SAMPLERS)  # which trials run, and which stop early: marktune.tune.strategy.strategies
KINDS = ("loguniform", "uniform", "int", "logint", "choice")
DEFAULTS = {"samples": 12, "max_concurrent": None,
            # which trials run, which stop early (the --searcher, --n-startup-trials, --scheduler flags)
            "searcher": "tpe", "n_startup_trials": 10, "constant_liar": True, "scheduler": "asha",
            "grace_period": 1, "reduction_factor": 2, "brackets": 3, "population": None,  # tune.strategies
            # the confirmation stage (--confirm-top, --confirm-seeds; marktune.results.confirmation):
            # off unless a space turns it on from its own evidence
            "confirm_top": 0, "confirm_seeds": 2,
            # one line of why these defaults, printed as the search starts (the evidence is cited above it)
            "why": None,
            # what the search optimises (--objectives; marktune.results.objectives): null is val_acc alone
            "objectives": None,
            "cpus_per_trial": 1.0, "gpus_per_trial": None,
            # marktune.evaluate's grid: initialisation seeds x class orders per configuration
            "eval_seeds": 3, "eval_orders": 1}

SPEC_KEYS = {"choice": ("type", "values"), "range": ("type", "low", "high")}
__all__ = ["SEARCHERS", "SCHEDULERS", "SpaceError", "Param", "SearchSpace", "available_spaces", "load_space",
           "parse_space", "load_experiment_with_space", "recognise_space"]


@dataclass(frozen=True)
class Param:
    """One searched learner setting and its distribution."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    values: tuple | None = None

    def tune_domain(self):
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.kind == "uniform":
            return tune.uniform(self.low, self.high)
        if self.kind == "int":  # both ends included
            return tune.randint(int(self.low), int(self.high) + 1)
        if self.kind == "logint":
            return tune.lograndint(int(self.low), int(self.high) + 1)
        return tune.choice(list(self.values))

    def extremes(self) -> list[Any]:
        """Values that must all be acceptable to the learner."""
        if self.kind == "choice":
            return list(self.values)
        if self.kind in ("int", "logint"):
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name}: choice {list(self.values)}"
        return f"{self.name}: {self.kind} [{self.low:g}, {self.high:g}]"


@dataclass
class SearchSpace:
    name: str
    path: Path
    benchmark: str
    fixed: dict[str, Any]
    params: dict[str, Param]
    defaults: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS))
    noise: SeedNoise = field(default_factory=SeedNoise)  # its measured seed-to-seed SD, else unknown

    def base_config(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The learner settings all trials share: benchmark, fixed, then overrides."""
        return {"benchmark": self.benchmark, **self.fixed, **dict(overrides or {})}

    def learner_config(self, trial_config: Mapping[str, Any]) -> MarkConfig:
        """The MarkConfig of one trial (its config holds fixed and sampled settings)."""
        return MarkConfig.from_dict(MarkConfig.settings_of(trial_config))

    def param_space(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Tune's ``param_space``: fixed values plus a Tune domain per searched setting."""
        space: dict[str, Any] = self.base_config(overrides)
        for name, param in self.params.items():
            space[name] = param.tune_domain()
        return space

    def precisions(self, overrides: Mapping[str, Any] | None = None) -> list[str]:
        """Every ``precision`` a trial of this space can have (fixed, or each searched choice)."""
        if "precision" in self.params and "precision" not in (overrides or {}):
            return [str(v) for v in self.params["precision"].extremes()]
        return [self.default_trial_config(overrides).precision]

    def strategy(self, **flags: Any) -> SearchStrategy:
        """The search's strategy (:class:`marktune.tune.strategy.strategies.SearchStrategy`): each flag
        given (not None), else this space's default."""
        try:
            return SearchStrategy.chosen(self.defaults, **flags)
        except StrategyError as err:
            raise SpaceError(f"{err} (the flags, else {self.path}'s defaults)") from None

    def check_tasks_searched(self, tasks: int, *, tuning: bool, scheduler: str = "asha") -> None:
        """The scheduler's grace period must fit in the tasks a trial runs (``--tuning-tasks`` under
        first-k); Ray's scheduler otherwise fails with an assertion after Ray has started.
        Without early stopping (``scheduler`` none) the grace period is not used."""
        grace = self.defaults["grace_period"]
        if SCHEDULERS[scheduler].stops and grace > tasks:
            raise SpaceError(f"{self.path}: defaults.grace_period ({grace}) exceeds the {tasks} tasks a "
                             f"trial runs{' (--tuning-tasks)' if tuning else ''}; lower grace_period to "
                             f"at most {tasks}" + (" or raise --tuning-tasks" if tuning else ""))

    def default_trial_config(self, overrides: Mapping[str, Any] | None = None) -> MarkConfig:
        """Fixed settings with the learner's defaults for the searched ones."""
        return MarkConfig.from_dict(self.base_config(overrides))


def available_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str | Path, *, overrides: Mapping[str, Any] | None = None) -> SearchSpace:
    """Load and validate a space by name (``search_spaces/NAME.yaml``) or path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        path = Path(text)
        if not path.is_file():
            raise SpaceError(f"no search space file at {path}")
    else:
        path = SPACES_DIR / f"{text}.yaml"
        if not path.is_file():
            raise SpaceError(f"unknown search space {text!r}; available: {', '.join(available_spaces())} "
                             "(or give a path to your own .yaml)")
    data = load_yaml_file(path, error=SpaceError) or {}
    return parse_space(data, name=path.stem, path=path, overrides=overrides)


def parse_space(data: Mapping[str, Any], *, name: str, path: Path,
                overrides: Mapping[str, Any] | None = None) -> SearchSpace:
    where = str(path)
    if not isinstance(data, Mapping):
        raise SpaceError(f"{where}: a space is a mapping with benchmark, fixed, search, defaults")
    unknown = set(data) - {"benchmark", "fixed", "search", "defaults", "description", "noise"}
    if unknown:
        raise SpaceError(f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                         "allowed: benchmark, fixed, search, defaults, description, noise")
    if "benchmark" not in data:
        raise SpaceError(f"{where}: missing 'benchmark'")
    if not isinstance(data["benchmark"], str):
        raise SpaceError(f"{where}: benchmark must be a name (got {data['benchmark']!r})")
    for key in ("fixed", "search", "defaults"):
        if not isinstance(data.get(key) or {}, Mapping):
            raise SpaceError(f"{where}: {key} must be a mapping of key: value lines "
                             f"(got {type(data[key]).__name__} {data[key]!r})")
    fixed = dict(data.get("fixed") or {})
    known = set(MarkConfig.field_names())
    for key in fixed:
        if key not in known:
            raise SpaceError(f"{where}: fixed setting {key!r} is not a learner setting "
                             f"(known: {', '.join(sorted(known))})")
    params = {}
    for pname, spec in (data.get("search") or {}).items():
        params[pname] = _parse_param(where, pname, spec, known)
    if not params:
        raise SpaceError(f"{where}: search: names no setting; a search needs at least one (one run of the "
                         f"fixed settings is `python -m marktune.run --config {where}`)")
    defaults = dict(DEFAULTS)
    for key, value in (data.get("defaults") or {}).items():
        if key not in DEFAULTS:
            raise SpaceError(f"{where}: unknown default {key!r}; allowed: {', '.join(DEFAULTS)}")
        defaults[key] = value
    _check_defaults(where, defaults)
    try:
        noise = SeedNoise.parse(data.get("noise"), where=where)
    except ValueError as err:
        raise SpaceError(str(err)) from None
    space = SearchSpace(name=name, path=path, benchmark=str(data["benchmark"]), fixed=fixed,
                        params=params, defaults=defaults, noise=noise)
    _check_against_learner(where, space, overrides)
    return space


def _parse_param(where: str, name: str, spec: Any, known: set[str]) -> Param:
    if name not in known:
        raise SpaceError(f"{where}: searched parameter {name!r} is not a learner setting "
                         f"(known: {', '.join(sorted(known))})")
    if name == "benchmark":
        raise SpaceError(f"{where}: benchmark cannot be searched: a space is one benchmark's (its "
                         "top-level benchmark:); write one space file per benchmark")
    if name == "num_tasks":  # the scheduler's time unit, the summary's "tasks each" and a COMPLETE trial
        raise SpaceError(f"{where}: num_tasks cannot be searched: every trial of a search runs the same tasks "
                         "(ASHA's rungs, the status COMPLETE and the ranking count them); fix it under fixed:, "
                         "or write one space per task count")
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise SpaceError(f"{where}: {name} needs a mapping with 'type' (one of {', '.join(KINDS)})")
    kind = spec["type"]
    if kind not in KINDS:
        raise SpaceError(f"{where}: {name}: unknown type {kind!r}; use one of {', '.join(KINDS)}")
    allowed = SPEC_KEYS["choice" if kind == "choice" else "range"]
    extra = [str(k) for k in spec if k not in allowed]
    if extra:
        raise SpaceError(f"{where}: {name}: {kind} takes only {', '.join(allowed)}, not {', '.join(extra)}"
                         + ("; for a stepped range list the values: `type: choice, values: [...]`"
                            if "step" in extra or "q" in extra else ""))
    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or len(values) < 1:
            raise SpaceError(f"{where}: {name}: choice needs a non-empty list 'values'")
        check_kind(where, name, kind)
        if setting_type(name)[0] != "str":  # YAML 1.1 reads 1e-3 as a string; a string setting keeps it
            values = [_num(v) for v in values]
        return Param(name, kind, values=check_choice_values(where, name, values))
    try:
        low, high = float(_num(spec["low"])), float(_num(spec["high"]))
    except (KeyError, TypeError, ValueError):
        raise SpaceError(f"{where}: {name}: {kind} needs numeric 'low' and 'high'") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise SpaceError(f"{where}: {name}: low must be < high (got low={low:g}, high={high:g})")
    if kind in ("loguniform", "logint") and low <= 0:
        raise SpaceError(f"{where}: {name}: {kind} needs low > 0 (got {low:g})")
    if kind in ("int", "logint") and not (low.is_integer() and high.is_integer()):
        raise SpaceError(f"{where}: {name}: {kind} bounds must be whole numbers")
    check_kind(where, name, kind, low, high)
    return Param(name, kind, low=low, high=high)


def _num(value: Any) -> Any:
    return yaml_scalar(value) if isinstance(value, str) else value


def _check_defaults(where: str, d: dict[str, Any]) -> None:
    def whole(key: str, low: int, allow_none: bool = False) -> None:
        v = d[key]
        if v is None and allow_none:
            return
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise SpaceError(f"{where}: defaults.{key} must be a whole number >= {low} (got {v!r})")

    for key, allowed in (("searcher", SAMPLERS), ("scheduler", SCHEDULERS)):
        if d[key] not in allowed:
            raise SpaceError(f"{where}: defaults.{key} must be one of {', '.join(allowed)} (got {d[key]!r})")
    whole("brackets", 1)
    whole("population", 2, allow_none=True)
    whole("samples", 1)
    whole("n_startup_trials", 0)
    if not isinstance(d["constant_liar"], bool):
        raise SpaceError(f"{where}: defaults.constant_liar must be true or false (got {d['constant_liar']!r})")
    whole("max_concurrent", 1, allow_none=True)
    whole("grace_period", 1)
    whole("reduction_factor", 2)
    whole("eval_seeds", 1)
    whole("confirm_top", 0)
    if d["objectives"] is not None:
        try:
            parse_objectives(d["objectives"])
        except ObjectiveError as err:
            raise SpaceError(f"{where}: defaults.objectives: {err}") from None
    whole("confirm_seeds", 1)
    if d["why"] is not None and not (isinstance(d["why"], str) and d["why"].strip()):
        raise SpaceError(f"{where}: defaults.why must be one line of text (got {d['why']!r})")
    whole("eval_orders", 1)
    for key in ("cpus_per_trial", "gpus_per_trial"):
        v = d[key]
        if v is None and key == "gpus_per_trial":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise SpaceError(f"{where}: defaults.{key} must be a number >= 0 (got {v!r})"
                             + (f"; leave it out for the default ({DEFAULTS[key]})" if v is None else ""))
    gpus = d["gpus_per_trial"]
    if gpus is not None and gpus > 1 and not float(gpus).is_integer():
        raise SpaceError(f"{where}: defaults.gpus_per_trial must be a fraction in [0, 1] or a whole "
                         f"number (got {gpus!r})")


def _check_against_learner(where: str, space: SearchSpace, overrides: Mapping[str, Any] | None) -> None:
    """Every value a trial can be given must make a config the learner accepts
    (``marktune.tune.space_checks``: each value alone, then combinations)."""
    searched = [key for key in (overrides or {}) if key in space.params]
    if searched:
        key = searched[0]
        raise SpaceError(f"--set {key}={overrides[key]!r}: {key} is searched by {where} "
                         f"({space.params[key].describe()}), and a search overwrites it in every trial; "
                         f"drop the --set, or copy the space file and move {key} from search: to fixed:")
    try:
        base = space.default_trial_config(overrides)
    except ConfigError as err:
        raise SpaceError(f"{where}: fixed settings: {err}") from None
    bad_seed = seed_refusal(space.base_config(overrides))
    if bad_seed:
        raise SpaceError(f"{where}: fixed settings and --set: {bad_seed}")
    check_values(where, space.base_config(overrides), space.params.values())
    check_combinations(where, space.base_config(overrides), list(space.params.values()))
    if SCHEDULERS[space.defaults["scheduler"]].stops and space.defaults["grace_period"] > base.tasks:
        raise SpaceError(f"{where}: defaults.grace_period ({space.defaults['grace_period']}) exceeds "
                         f"the number of tasks ({base.tasks})")


# ---------------------------------------------------------------- a finished search's space
def load_experiment_with_space(path) -> Experiment:
    """``marktune.results.experiment_reader.load_experiment`` with its space recognised
    (:func:`recognise_space`): what ``evaluate`` and ``report`` read."""
    return recognise_space(load_experiment(path))


def recognise_space(exp: Experiment) -> Experiment:
    """Set ``exp.space``, ``space_name`` and ``overrides`` to the space the search ran, when one
    is recognised (else they stay unset); returns ``exp``."""
    saved = read_settings(exp.path)
    if saved and saved.get("space"):
        try:  # the search's own record (marktune_search.json): its space file and --set
            overrides = parse_overrides(saved.get("overrides") or [])
            space = load_space(saved["space"], overrides=overrides)
            if space.benchmark == exp.benchmark:
                exp.space, exp.space_name, exp.overrides = space, space.name, overrides
                return exp
        except (SpaceError, ConfigError, TypeError):
            pass  # moved or changed since: recognise it from the trials instead
    names = []
    prefix = exp.name.rsplit("-", 2)[0] if exp.name.count("-") >= 2 else exp.name
    for cand in (prefix, exp.benchmark, *available_spaces()):
        if cand in available_spaces() and cand not in names:
            names.append(cand)
    shared = exp.shared_settings()
    for name in names:
        try:
            space = load_space(name)
        except SpaceError:
            continue
        if space.benchmark != exp.benchmark or sorted(space.params) != sorted(exp.searched):
            continue
        fixed = {k: v for k, v in space.fixed.items() if k not in space.params}
        # shared settings differing from the file's: the search's --set overrides
        overrides = {k: v for k, v in shared.items()
                     if k != "benchmark" and not (k in fixed and same_setting(fixed[k], v))}
        missing = [k for k in fixed if k not in shared]
        if missing:
            continue
        try:
            space.default_trial_config(overrides)
        except ConfigError:
            continue
        exp.space, exp.space_name, exp.overrides = space, name, overrides
        return exp
    return exp
