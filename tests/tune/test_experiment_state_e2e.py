"""A real tiny search (slow): a disk that fills up mid-search is one message, and --resume goes on once
there is room. (A copied experiment resuming on its own files shares the interrupted search of
tests/cli/test_search.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# a Ray of its own even where another program runs one on this machine (address="local")
OWN_RAY = ["--address", "local"]
TINY = ["--space", "digits", "--samples", "2", "--set", "epochs=1", "--set", "kb_epochs=1", *OWN_RAY, "-q"]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _tasks(trial_dir: Path) -> int:
    done = 0
    for line in ((trial_dir / "result.json").read_text().splitlines() if (trial_dir / "result.json").is_file() else []):
        try:
            done = max(done, int(json.loads(line).get("tasks_done", 0)))
        except ValueError:
            break
    return done


def _mount_tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def test_a_disk_that_fills_up_mid_search_is_one_message_and_resumes_once_there_is_room(tmp_path):
    disk = tmp_path / "small"
    _mount_tmpfs(disk, "72m")
    try:
        experiment = disk / "full"
        log = tmp_path / "first.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "marktune.search", *TINY, "--storage", str(disk),
                                     "--name", "full"], cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT)
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None and not any(
                    _tasks(d) >= 1 for d in experiment.glob("trial_*")):
                time.sleep(0.2)
            # fill the disk to the brim, then give back 300 KiB: measuring the free space and then
            # allocating it raced the search's own writes (fallocate failed with ENOSPC once)
            with open(disk / "filler", "wb", buffering=0) as filler:  # unbuffered: close has nothing left
                try:
                    while filler.write(b"\0" * 2**16):
                        pass
                except OSError:
                    pass
            size = (disk / "filler").stat().st_size
            os.truncate(disk / "filler", max(0, size - 300 * 1024))
            code = proc.wait(timeout=400)
        text = log.read_text()
        assert code == 1, text[-3000:]
        assert "error: the disk holding" in text and str(experiment) in text and "free" in text, text[-3000:]
        assert "--resume --name full" in text
        assert "Traceback" not in text and text.count("\n") < 40, text[-3000:]
        (disk / "filler").unlink()
        resumed = subprocess.run([sys.executable, "-m", "marktune.search", "--resume", "--name", "full", "--storage",
                                  str(disk), *OWN_RAY, "-q"], cwd=ROOT, env=_env(), capture_output=True,
                                 text=True, timeout=900)
        assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
        assert (experiment / "trials.csv").is_file()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
