"""Benchmark: peak resident memory of one MARK trial on CIFAR-100 (issue 5: under 2 GB).

Without ``--data-dir`` it writes stand-in CIFAR-100 files of the real sizes (50,000
training and 10,000 test images of 3x32x32, random pixels, 100 classes) to a
temporary folder, so the figure needs no download; the learner cannot tell them from
the real files, and memory does not depend on pixel values. All 20 tasks run, with
cut epochs (memory depends on image counts, not on epochs), and the peak resident
set size of the process is printed after every task.

    .venv/bin/python bench/memory.py                         # stand-in files, 20 tasks
    .venv/bin/python bench/memory.py --data-dir ~/.cache/marktune --set epochs=2
"""
from __future__ import annotations

import argparse
import pickle
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marktune.mark.config import MarkConfig  # noqa: E402
from marktune.data import load_benchmark_for  # noqa: E402
from marktune.mark.learner import MarkLearner  # noqa: E402

QUICK = dict(benchmark="cifar100", epochs=1, meta_epochs=1, mini_tasks=2, inner_steps=2)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_standin_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", 50_000), ("test", 10_000)):
        entry = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                 "fine_labels": (np.arange(n) % 100).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = MarkConfig.from_sources(base=QUICK, overrides=args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = Path(tmp)
            write_standin_cifar100(data_dir)
        print(f"peak RSS after imports: {peak_rss_mb():.0f} MB")
        benchmark = load_benchmark_for(cfg, data_dir=data_dir)
        data_mb = sum(s.x.numel() * s.x.element_size() for t in benchmark.tasks
                      for s in (t.train, t.val, t.test)) / 2 ** 20
        print(f"peak RSS after loading: {peak_rss_mb():.0f} MB (the images themselves: {data_mb:.0f} MB "
              f"uint8, {data_mb * 4:.0f} MB if they were float32)")
        learner = MarkLearner(cfg, benchmark, verbose=0)
        start = time.perf_counter()
        while learner.tasks_done < learner.num_tasks:
            learner.train_next_task()
            print(f"task {learner.tasks_done}/{learner.num_tasks}: peak RSS {peak_rss_mb():.0f} MB "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"peak RSS of the trial: {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
