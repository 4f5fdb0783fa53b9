"""tune/ grouped into strategy/, runs/, display/ and folders/ (2026-12-08): an experiment that Tune
pickled before (its searcher, scheduler and callbacks by their old module names) still resumes."""
import importlib
import pickle

from marktune.tune import MOVED


def test_every_old_module_name_imports_the_module_now_in_its_place():
    assert len(MOVED) == 15
    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old


def test_a_class_pickled_under_its_old_module_name_unpickles_as_the_same_class():
    from marktune.tune.strategy.scheduler import ResumableASHA
    from marktune.tune.strategy.searcher import MarkOptunaSearch

    for cls in (ResumableASHA, MarkOptunaSearch):
        old = cls.__module__.replace(".strategy.", ".").encode()
        data = pickle.dumps(cls, protocol=0).replace(cls.__module__.encode(), old)
        assert old in data and pickle.loads(data) is cls
