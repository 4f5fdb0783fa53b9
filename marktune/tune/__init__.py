"""The search service on Ray Tune, grouped by what each part is.

- ``spaces``, ``space_checks``: a search space (``search_spaces/*.yaml``) read and checked;
  ``plan``: the typed plans a command runs.
- ``strategy/``: which trials run and which stop (registries of samplers and schedulers).
- ``runs/``: pre-flight, Ray's start and the Tuners (search, confirmation, evaluation).
- ``folders/``: what a run writes and keeps (experiment folders, locks, Tune's state, the study).
- ``display/``: progress lines and TensorBoard.
- ``ray_internals/``: the one place that touches Ray's private attributes.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# Where modules moved when tune/ was grouped (2026-12-08). Tune pickles a search's searcher,
# scheduler and callbacks by their module's name (tuner.pkl): an experiment started before the
# move names the old places, and --resume must still open it.
MOVED = {f"marktune.tune.{old}": f"marktune.tune.{group}.{old}" for group, olds in {
    "strategy": ("strategies", "samplers", "searcher", "scheduler", "mo_asha", "hyperband"),
    "runs": ("launch", "preflight", "search_run", "evaluation_run", "confirmation_run", "tune_setup"),
    "display": ("progress", "tensorboard_logger"),
    "folders": ("study",),
}.items() for old in olds}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module now in its place (the same module object)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        pass  # already run under its new name


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
