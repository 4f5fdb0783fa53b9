"""Each test's wall time and the machine's CPU-seconds over it: a pytest plugin.

How much of the cores a test keeps busy decides where the whole-suite run of
``scripts/test.sh`` puts it (``docs/testing.md``): under about half of 2 cores, ``-m
mostly_waiting``, beside the three-node test; both cores all along, ``-m cpu_bound``, last.
Measure with nothing else running: the CPU-seconds are the machine's (``/proc/stat``, every
process, Ray's daemons and the trial processes a test starts included), not pytest's own.
Linux only. Prints the tests by CPU-seconds, then the sums for the groups the markers make.

    PYTHONPATH=bench .venv/bin/python -m pytest -p suite_cpu -m slow --ignore tests/cluster/test_three_node_cluster.py
    PYTHONPATH=bench .venv/bin/python -m pytest -p suite_cpu -m slow ... --suite-cpu-tsv /tmp/cpu.tsv
"""
from __future__ import annotations

import os
import time

import pytest

_ROWS: list[tuple[str, str, float, float]] = []  # nodeid, group, wall s, CPU s


def _busy_seconds() -> float:
    """CPU-seconds every core has spent outside idle and I/O wait since boot."""
    with open("/proc/stat") as f:
        jiffies = [int(v) for v in f.readline().split()[1:]]
    return (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")


def _group(item) -> str:
    if item.get_closest_marker("slow") is None:
        return "quick"
    for marker in ("mostly_waiting", "cpu_bound"):
        if item.get_closest_marker(marker) is not None:
            return marker
    return "other slow"


def pytest_addoption(parser):
    parser.addoption("--suite-cpu-tsv", default=None, help="also write nodeid, group, wall s, CPU s here")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    busy, started = _busy_seconds(), time.perf_counter()
    yield
    _ROWS.append((item.nodeid, _group(item), time.perf_counter() - started, _busy_seconds() - busy))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from marktune.mark.hardware import cpu_model_name

    cores = os.cpu_count() or 1
    write = terminalreporter.write_line
    terminalreporter.section(f"CPU-seconds per test ({cpu_model_name()}, {cores} CPUs)")
    for nodeid, group, wall, cpu in sorted(_ROWS, key=lambda r: -r[3])[:40]:
        write(f"{wall:7.1f} s wall {cpu:7.1f} CPU-s {cpu / cores / max(wall, 1e-9):4.0%}  [{group}] {nodeid}")
    for group in ("quick", "cpu_bound", "other slow", "mostly_waiting"):
        rows = [r for r in _ROWS if r[1] == group]
        if rows:
            wall, cpu = sum(r[2] for r in rows), sum(r[3] for r in rows)
            write(f"{group:15s} {len(rows):4d} tests {wall:7.1f} s wall {cpu:7.1f} CPU-s, "
                  f"{cpu / cores / wall:.0%} of the cores")
    path = config.getoption("--suite-cpu-tsv")
    if path:
        with open(path, "w") as f:
            f.writelines(f"{n}\t{g}\t{w:.2f}\t{c:.2f}\n" for n, g, w, c in _ROWS)
