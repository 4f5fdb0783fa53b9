"""marktune.data.files: the default data directory and ensure_dataset's file lock."""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from marktune.data import DatasetMissingError, default_data_dir, ensure_dataset


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MARKTUNE_DATA", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("MARKTUNE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache" / "marktune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "marktune"


def _slow_fetch_worker(directory: str, barrier) -> None:
    """Runs in a spawned process: fetch a fake data set that takes a second to write."""
    folder = Path(directory)

    def fetch() -> None:
        with open(folder / "fetch_log", "a") as f:
            f.write(f"{os.getpid()}\n")
        (folder / "part1").write_text("half")
        time.sleep(1.0)
        (folder / "done").write_text("whole")

    barrier.wait()  # both processes reach ensure_dataset together
    ensure_dataset(folder, "fake", is_complete=lambda: (folder / "done").is_file(), fetch=fetch)
    assert (folder / "done").read_text() == "whole"


def test_two_processes_fetch_once(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    folder = tmp_path / "shared"
    procs = [ctx.Process(target=_slow_fetch_worker, args=(str(folder), barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len((folder / "fetch_log").read_text().split()) == 1
    assert (folder / "done").read_text() == "whole"


def test_half_written_data_set_is_redone(tmp_path):
    (tmp_path / "part1").write_text("left by a killed run")
    calls = []

    def fetch() -> None:
        calls.append(1)
        # The first fetch is torn as well; the second one completes.
        if len(calls) == 2:
            (tmp_path / "done").write_text("whole")

    ensure_dataset(tmp_path, "fake", is_complete=lambda: (tmp_path / "done").is_file(), fetch=fetch)
    assert len(calls) == 2
    ensure_dataset(tmp_path, "fake", is_complete=lambda: (tmp_path / "done").is_file(), fetch=fetch)
    assert len(calls) == 2  # complete: not fetched again


def test_fetch_that_never_completes_is_an_error(tmp_path):
    calls = []
    with pytest.raises(DatasetMissingError, match="fetched 2 times"):
        ensure_dataset(tmp_path, "fake", is_complete=lambda: False, fetch=lambda: calls.append(1))
    assert len(calls) == 2
