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


class _Payload:
    """A crafted pickle's payload: unpickling it would create ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.mark.parametrize("benchmark,file", [("cifar100", "cifar-100-python/train"),
                                            ("miniimagenet", "miniimagenet/train.pkl")])
def test_a_crafted_data_pickle_is_refused_and_never_runs(tmp_path, benchmark, file):
    import pickle

    from marktune.data import load_benchmark
    from tests.data.layouts import write_cifar100, write_miniimagenet

    (write_cifar100 if benchmark == "cifar100" else write_miniimagenet)(tmp_path)
    ran = tmp_path / "payload-ran"
    with open(tmp_path / file, "wb") as f:
        pickle.dump({"data": _Payload(ran), "images": _Payload(ran), "labels": [0]}, f)
    with pytest.raises(DatasetMissingError, match="only numpy arrays, lists and dicts are read"):
        load_benchmark(benchmark, data_dir=tmp_path, seed=0)
    assert not ran.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_data_sets_own_pickle_loads_at_every_protocol(protocol):
    import io
    import pickle

    import numpy as np

    from marktune.data.files import load_data_pickle

    entry = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "fine_labels": [1, 2, 3], "name": "x"}
    back = load_data_pickle(io.BytesIO(pickle.dumps(entry, protocol=protocol)))
    assert back["fine_labels"] == [1, 2, 3] and back["name"] == "x"
    assert back[b"data"].tolist() == entry[b"data"].tolist()
