"""A bad --optuna-storage on the command line exits 2 before Ray starts.

(The study's storage: tests/tune/test_study.py; the searcher: test_searcher.py; ASHA's rungs:
test_scheduler.py.)
"""
from __future__ import annotations

import time

import pytest


def test_bad_optuna_storage_on_the_command_line_exits_2_before_ray(tmp_path, monkeypatch, capsys):
    from marktune.cli import search

    monkeypatch.setattr(search, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    for url, message in [("::not a url", "not a database URL"),
                         ("postgresql://me:secret@127.0.0.1:1/studies", "cannot reach 127.0.0.1:1")]:
        started = time.monotonic()
        code = search.main(["--space", "digits", "--storage", str(tmp_path / "s"), "--optuna-storage", url])
        took = time.monotonic() - started  # reported, not asserted: this machine may be loaded
        stdout, stderr = capsys.readouterr()
        out = stdout + stderr
        assert code == 2, out
        assert message in stderr and "--optuna-storage" in stderr, out
        assert "secret" not in out  # the password is not printed
        assert "Traceback" not in out and "Ray" not in out, out  # Ray never started
        assert not (tmp_path / "s").exists()  # nothing written
        print(f"{url}: exit 2 after {took:.1f} s")
