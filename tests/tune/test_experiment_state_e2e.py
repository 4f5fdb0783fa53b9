"""Real tiny searches (slow): a copied experiment resumes on its own files; a full disk is one message."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
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


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _interrupted_search(storage: Path, name: str, log: Path, *, until) -> int:
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "marktune.search", *TINY, "--max-concurrent", "1",
                                 "--storage", str(storage), "--name", name], cwd=ROOT, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 600
            while time.time() < deadline and proc.poll() is None and not until():
                time.sleep(0.2)
            assert proc.poll() is None, log.read_text()[-3000:]
            os.kill(proc.pid, signal.SIGINT)
            return proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)


def test_a_copied_experiment_resumes_on_its_own_files_and_never_touches_the_original(tmp_path):
    """cp -a st/base moved/base; --resume --storage moved: the copy's journal grows, the original
    stays byte for byte as it was (every file hashed before and after)."""
    original = tmp_path / "st" / "base"
    code = _interrupted_search(tmp_path / "st", "base", tmp_path / "first.log",
                               until=lambda: any(_tasks(d) >= 1 for d in original.glob("trial_*")))
    assert code == 130, (tmp_path / "first.log").read_text()[-3000:]
    moved = tmp_path / "moved" / "base"
    moved.parent.mkdir()
    shutil.copytree(original, moved, symlinks=True)
    before = _hashes(original)
    journal_before = (moved / "optuna_journal.log").stat().st_size
    resumed = subprocess.run([sys.executable, "-m", "marktune.search", "--resume", "--name", "base", "--storage",
                              str(tmp_path / "moved"), *OWN_RAY, "-q"], cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert _hashes(original) == before
    assert (moved / "optuna_journal.log").stat().st_size > journal_before
    assert (moved / "trials.csv").stat().st_mtime > (original / "trials.csv").stat().st_mtime
    assert str(original) not in resumed.stdout


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
