"""Every private attribute of Ray and Optuna that marktune uses is still there.

marktune.tune.ray_internals is the one package that touches them; an upgrade that renames one
fails here, naming it, instead of silently in a search.
"""
from __future__ import annotations

import pytest

from marktune.tune import ray_internals
from marktune.tune.ray_internals import LibraryChanged, check_library_internals


def test_installed_ray_and_optuna_have_what_marktune_uses():
    problems = ray_internals.library_internals_problems()
    assert not problems, "\n".join(problems)
    check_library_internals()


def test_a_missing_asha_attribute_is_named(monkeypatch):
    from ray.tune.schedulers import AsyncHyperBandScheduler

    init = AsyncHyperBandScheduler.__init__

    def without_brackets(self, *args, **kwargs):  # a Ray that renamed _brackets
        init(self, *args, **kwargs)
        self._bracket_list = self.__dict__.pop("_brackets")

    monkeypatch.setattr(AsyncHyperBandScheduler, "__init__", without_brackets)
    with pytest.raises(LibraryChanged, match=r"Ray changed AsyncHyperBandScheduler\._brackets; "
                                             r"see marktune/tune/ray_internals/"):
        check_library_internals()


def test_a_missing_optuna_search_method_is_named(monkeypatch):
    from ray.tune.search.optuna import OptunaSearch

    monkeypatch.delattr(OptunaSearch, "_setup_study")
    with pytest.raises(LibraryChanged, match=r"Ray changed OptunaSearch\._setup_study; "
                                             r"see marktune/tune/ray_internals/"):
        check_library_internals()


def test_a_changed_signature_is_named(monkeypatch):
    from ray.tune.schedulers import async_hyperband

    def on_result(self, trial, iteration, reward):  # parameters renamed
        return "CONTINUE"

    monkeypatch.setattr(async_hyperband._Bracket, "on_result", on_result)
    with pytest.raises(LibraryChanged, match=r"Ray changed _Bracket\.on_result\(cur_iter=\.\.\.\)"):
        check_library_internals()
