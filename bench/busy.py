"""How busy the cores are while a command runs, from /proc/stat, and its trials per hour (issue 29).

    PYTHONPATH=. .venv/bin/python bench/busy.py -- .venv/bin/python -m marktune.search --space fmnist
    PYTHONPATH=. .venv/bin/python bench/busy.py -- .venv/bin/python -m marktune.search --space fmnist \\
        --cpus-per-trial 2

Runs the command (its output passes through), reads the machine's CPU counters before, every
``--every`` seconds and after, and prints: the wall time, the share of all cores' time that was
busy (not idle, not waiting on I/O; time stolen by the hypervisor left out of both sides), the
same share per interval (its lowest, median and highest), and, from the search's summary line
(``[marktune] N trials: ...``), the search's trials per hour of the command's wall time. The
share counts every process on the machine: run it on an otherwise idle one.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import threading
import time


def cpu_times() -> tuple[int, int]:
    """(busy, available) jiffies of all cores since boot: the first line of /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    available = user + nice + system + idle + iowait + irq + softirq
    return available - idle - iowait, available  # steal: time the hypervisor gave elsewhere, on neither side


def share(before: tuple[int, int], after: tuple[int, int]) -> float:
    busy, available = after[0] - before[0], after[1] - before[1]
    return busy / available if available else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    samples = [cpu_times()]
    started = time.monotonic()
    output: list[str] = []
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def relay() -> None:
        for line in proc.stdout:
            sys.stdout.write(line)
            output.append(line)
    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    while proc.poll() is None:
        time.sleep(min(args.every, 1.0))
        if time.monotonic() - started >= args.every * len(samples):
            samples.append(cpu_times())
    reader.join(timeout=10)
    samples.append(cpu_times())
    wall = time.monotonic() - started
    intervals = [share(a, b) for a, b in zip(samples, samples[1:])]
    text = "".join(output)
    trials = sum(int(m) for m in re.findall(r"\[marktune\] (\d+) trials: ", text))
    print(f"\nbusy: {wall:.0f} s wall, exit {proc.returncode}; cores busy {100 * share(samples[0], samples[-1]):.0f} % "
          f"over the whole run (per {args.every:g} s: lowest {100 * min(intervals):.0f} %, median "
          f"{100 * statistics.median(intervals):.0f} %, highest {100 * max(intervals):.0f} %)"
          + (f"; {trials} search trials, {3600 * trials / wall:.1f} per hour of the whole command's wall time "
             f"(its confirmation runs included)" if trials else ""))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
