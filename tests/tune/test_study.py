"""Where the study lives: malformed, unreachable and clashing storages are clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from marktune.tune.study import StorageError, StudyStorage, open_study


def test_bad_storage_urls_are_clear_errors(tmp_path):
    with pytest.raises(StorageError, match="not a database URL"):
        StudyStorage(url="::not a url").check(study_name="x", resume=False)
    with pytest.raises(StorageError, match="does not exist"):
        StudyStorage(url=f"sqlite:///{tmp_path}/no/such/folder/db.sqlite").check(study_name="x", resume=False)
    # nothing listens on port 1: refused at once
    with pytest.raises(StorageError, match="cannot reach 127.0.0.1:1"):
        StudyStorage(url="postgresql://me:secret@127.0.0.1:1/studies").check(study_name="x", resume=False)


def test_a_new_search_refuses_a_study_that_exists_and_resume_needs_it(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    optuna.create_study(study_name="taken", storage=url)
    storage = StudyStorage(url=url)
    with pytest.raises(StorageError, match="already holds a study 'taken'"):
        storage.check(study_name="taken", resume=False)
    storage.check(study_name="taken", resume=True)
    storage.check(study_name="free", resume=False)
    with pytest.raises(StorageError, match="no study 'free' to resume"):
        storage.check(study_name="free", resume=True)
    assert open_study(storage, "taken").study_name == "taken"
    # a relative SQLite path is made absolute: --resume from another folder finds the same file
    relative = StudyStorage.for_experiment(experiment_dir=tmp_path, url="sqlite:///rel.db")
    assert relative.url == f"sqlite:///{Path('rel.db').resolve()}"
    default = StudyStorage.for_experiment(experiment_dir=tmp_path / "exp", url=None)
    assert default.journal == (tmp_path / "exp" / "optuna_journal.log").resolve()
