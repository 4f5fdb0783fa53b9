"""Shared fixtures: tiny configurations that train in well under a second per task on CPU."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from marktune.mark.config import MarkConfig

# A synthetic sequence small enough for unit tests, but with every phase exercised.
TINY = dict(benchmark="synthetic", num_tasks=3, synthetic_classes_per_task=2,
            synthetic_images_per_class=80, epochs=2, meta_epochs=2, mini_tasks=3, inner_steps=3,
            kb_width=8, latent_dim=16, fe_channels=8, batch_size=32)


@pytest.fixture(autouse=True)
def _few_threads():
    # 2-core CI machines: oversubscribing threads makes every test slower
    torch.set_num_threads(2)


def load_bench(name: str):
    """``bench/<name>.py`` as a module (the benches are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).resolve().parents[1] / "bench"
                                                  / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def tiny_config(**overrides) -> MarkConfig:
    return MarkConfig(**{**TINY, **overrides})


def tiny_digits_space(path, *, fixed=None, search=None, defaults):
    """Write a search space for a real but tiny digits search (the slow end-to-end tests):
    a small KB and one short epoch per phase, ``lr_meta`` and ``meta_step`` searched."""
    import yaml

    path.write_text(yaml.safe_dump({
        "benchmark": "digits",
        "fixed": {"epochs": 1, "kb_epochs": 2, "batch_size": 64, "meta_epochs": 1, "mini_tasks": 2,
                  "inner_steps": 2, "kb_width": 8, "kb_depth": 2, "latent_dim": 16, "fe_channels": 8,
                  **(fixed or {})},
        "search": {"lr_meta": {"type": "loguniform", "low": 1.0e-3, "high": 1.0e-1},
                   "meta_step": {"type": "loguniform", "low": 1.0e-2, "high": 1.0}, **(search or {})},
        "defaults": defaults,
    }))
    return path


def headless_chromium(page, tmp_path, *flags: str) -> str:
    """Open ``page`` (a file) in headless Chromium with ``flags`` (``--dump-dom``,
    ``--screenshot=...``); its stdout. Skips the test where Chromium is not installed."""
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; scripts/test.sh does it as root)")
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", *flags, page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def search_in_process(argv: list[str], *, top: int = 10):
    """``python -m marktune.search ARGV`` in this process, on a Ray of its own (``start_ray``,
    as the command: even when another program or test runs one on this machine), then its
    summary; Ray is shut down whatever happens. The search's outcome, summary rows and plan."""
    import ray

    from marktune.cli import search
    from marktune.tune.runs.launch import start_ray
    from marktune.tune.runs.search_run import run_search

    args = search.build_parser().parse_args(argv)
    plan = search.plan_from_args(args)
    start_ray(plan.ray)
    try:
        outcome = run_search(plan)
        rows = search.summarize(outcome, plan, top=top)
    finally:
        ray.shutdown()
    return outcome, rows, plan


def run_search(argv: list[str], *, top: int):
    """:func:`search_in_process`; the experiment directory."""
    from pathlib import Path

    return Path(search_in_process(argv, top=top)[0].experiment)


# ---------------------------------------------------------------- the order of the whole-suite run
def pytest_collection_modifyitems(config, items):
    """The front run of ``scripts/test.sh`` (``MARKTUNE_TEST_CPU_BOUND_LAST=1``) runs the
    slow tests that leave the cores idle at times (Ray starting and stopping, one driver
    waiting on its trials) while the tests beside it run, and the ones that keep both cores
    busy on their own (the quick part, and the slow tests marked ``cpu_bound``) after those:
    beside the three-node test, they competed with it for the cores. A stable sort: the
    order within each group, and within each file, stays."""
    if os.environ.get("MARKTUNE_TEST_CPU_BOUND_LAST") != "1":
        return

    def keeps_cores_busy(item) -> bool:
        return item.get_closest_marker("slow") is None or item.get_closest_marker("cpu_bound") is not None

    items.sort(key=keeps_cores_busy)


# ---------------------------------------------------------------- the end of the session
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    # a test that left Ray up in this process: shut it down while the interpreter is whole
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave with pytest's own exit status once everything is reported, skipping the
    interpreter's teardown: a full run on a 2-core AMD EPYC (2026-12-01) passed every test and
    then died of SIGSEGV inside libstdc++ while native threads (Ray's, gRPC's) were torn down
    with the interpreter, which turned a green run into exit code 139. Nothing of the tests'
    is lost: their results are printed and their files closed by then."""
    if _EXIT_STATUS and os.environ.get("MARKTUNE_TEST_FULL_TEARDOWN") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
