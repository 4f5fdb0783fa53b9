"""Where the study lives: malformed, unreachable and clashing storages are clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from marktune.tune.folders.study import StorageError, StudyStorage, open_study


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


# ---------------------------------------------------------------- a torn journal (issue 19)
def _journal_with_trials(tmp_path, n=3):
    import optuna

    storage = StudyStorage(journal=tmp_path / "exp" / "optuna_journal.log")
    study = optuna.create_study(study_name="exp", storage=storage.open(), direction="maximize")
    for i in range(n):
        study.add_trial(optuna.trial.create_trial(value=0.1 * i, params={}, distributions={}))
    return storage


@pytest.mark.parametrize("cut", [20, 1])
def test_a_torn_last_line_is_set_aside_before_ray_and_the_journal_works_again(tmp_path, capsys, cut):
    """A crash or a full disk mid-append leaves a last line without its newline. Optuna skips it on
    read, but the next append glues onto it and every read after that fails. The pre-flight
    check sets the torn bytes aside in a named file and cuts the journal back to its whole lines."""
    import optuna

    storage = _journal_with_trials(tmp_path)
    journal = storage.journal
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-cut])  # `truncate -s -20`: the last record torn
    torn = whole[whole.rstrip(b"\n").rfind(b"\n") + 1:-cut]
    storage.check(study_name="exp", resume=True)
    err = capsys.readouterr().err
    assert "torn record" in err and f"{len(torn)} bytes" in err and "full disk" in err and "is lost" in err
    aside = list(journal.parent.glob("optuna_journal.log.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == torn and str(aside[0]) in err
    assert journal.read_bytes() == whole[:len(whole) - len(torn) - cut]
    assert journal.read_bytes().endswith(b"\n")
    # the journal takes appends again, and reads back whole
    study = optuna.load_study(study_name="exp", storage=storage.open())
    study.add_trial(optuna.trial.create_trial(value=0.9, params={}, distributions={}))
    assert 0.9 in [t.value for t in open_study(storage, "exp").trials]
    storage.check(study_name="exp", resume=True)  # whole now: nothing more is set aside
    assert "torn" not in capsys.readouterr().err and len(list(journal.parent.glob("*.torn-*"))) == 1


def test_a_last_line_that_is_not_json_is_set_aside_too(tmp_path, capsys):
    storage = _journal_with_trials(tmp_path, n=1)
    good = storage.journal.read_bytes()
    storage.journal.write_bytes(good + b'{"op_code": 5, "glued{"op_code": 6}\n')
    storage.check(study_name="exp", resume=True)
    assert "not a JSON record" in capsys.readouterr().err
    assert storage.journal.read_bytes() == good


def test_a_damaged_line_in_the_middle_stops_before_ray_and_changes_nothing(tmp_path):
    from marktune.tune.folders.study import JournalError

    storage = _journal_with_trials(tmp_path)
    lines = storage.journal.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:10] + b"\n"
    damaged = b"".join(lines)
    storage.journal.write_bytes(damaged)
    with pytest.raises(JournalError, match=f"damaged at line 2 of {len(lines)}"):
        storage.check(study_name="exp", resume=True)
    assert storage.journal.read_bytes() == damaged
    assert sorted(p.name for p in storage.journal.parent.iterdir()) == ["optuna_journal.log"]


def test_the_search_s_preflight_repairs_the_journal_of_a_resumed_experiment(tmp_path, capsys):
    """`marktune.search --resume` checks the journal before Ray starts: Ray is never reached here."""
    from marktune.cli import search
    from marktune.tune.folders.search_settings import save_settings

    argv = ["--space", "digits", "--storage", str(tmp_path), "--name", "exp"]
    save_settings(search.plan_from_args(search.build_parser().parse_args(argv)), str(tmp_path / "exp"))
    storage = _journal_with_trials(tmp_path)
    storage.journal.write_bytes(storage.journal.read_bytes()[:-20])
    import marktune.cli.search as cli

    def no_ray(*a, **k):
        raise SystemExit("ray reached")
    cli.start_ray, saved = no_ray, cli.start_ray
    try:
        with pytest.raises(SystemExit, match="ray reached"):
            cli.main(["--resume", "--name", "exp", "--storage", str(tmp_path)])
    finally:
        cli.start_ray = saved
    assert "torn record" in capsys.readouterr().err
    assert storage.journal.read_bytes().endswith(b"\n")


def test_a_second_repair_in_the_same_second_keeps_the_first_torn_record_and_a_folder_is_refused(tmp_path):
    from marktune.tune.folders.study import repair_journal

    storage = _journal_with_trials(tmp_path)
    whole = storage.journal.read_bytes()
    storage.journal.write_bytes(whole + b'{"torn": 1')
    assert repair_journal(storage.journal)
    storage.journal.write_bytes(whole + b'{"torn": 2')
    assert repair_journal(storage.journal)
    aside = sorted(p.read_bytes() for p in storage.journal.parent.glob("*.torn-*"))
    assert aside == [b'{"torn": 1', b'{"torn": 2']
    folder = StudyStorage(journal=tmp_path / "d" / "optuna_journal.log")
    folder.journal.mkdir(parents=True)
    with pytest.raises(StorageError, match="is not a file"):
        folder.check(study_name="d", resume=True)


def test_dashboard_line_says_how_to_install_it_with_the_pinned_version():
    import doctest
    import re
    import tomllib

    from marktune.cli.search import build_parser
    from marktune.tune.folders import study

    assert doctest.testmod(study).failed == 0
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    (pin,) = pyproject["project"]["optional-dependencies"]["dashboard"]
    assert study.DASHBOARD_INSTALL == f"pip install {pin}"
    line = StudyStorage(journal=Path("/x/optuna_journal.log")).dashboard_command()
    assert re.fullmatch(r"optuna-dashboard /x/optuna_journal\.log  \(not installed\? pip install "
                        r"optuna-dashboard==\d+\.\d+\.\d+\)", line), line
    assert f"pip install {pin}" in build_parser().format_help()
