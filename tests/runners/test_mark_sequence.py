"""What a trial's worker must not print into the search's output."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FINALISERS = """
import sys
from runners.mark_sequence import drop_ignored_exits
if sys.argv[1] == "drop":
    drop_ignored_exits()
    drop_ignored_exits()  # a reused actor calls it again: still one hook

class Exits:
    def __del__(self):
        raise SystemExit(1)  # what Ray's SIGTERM handler raises, landing in a finaliser

class Breaks:
    def __del__(self):
        raise ValueError("a real bug")

Exits(); Breaks()
print("went on")
"""


@pytest.mark.parametrize("mode", ["drop", "keep"])
def test_a_trial_killed_inside_a_finaliser_prints_no_traceback(mode):
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", FINALISERS, mode], capture_output=True, text=True,
                          cwd=root, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "went on"  # ignored either way
    assert "ValueError: a real bug" in proc.stderr  # other unraisable errors are still shown
    assert ("SystemExit" in proc.stderr) == (mode == "keep"), proc.stderr


def test_a_trial_actor_imports_its_runner_without_the_driver():
    """What a trial actor imports to run a trial: the runner and the layers below it, never the
    driver (marktune.tune, marktune.cli) nor Optuna."""
    root = Path(__file__).resolve().parents[2]
    probe = ("import sys, runners.mark_sequence, runners.runtime; "
             "print(sorted(m for m in sys.modules if m.startswith(('marktune.tune', 'marktune.cli', 'optuna'))))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_the_runtime_examples_run():
    import doctest

    import runners.runtime

    failures, tried = doctest.testmod(runners.runtime)
    assert tried >= 2 and failures == 0
