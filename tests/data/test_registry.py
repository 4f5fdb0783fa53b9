"""marktune.data.registry: the one list of benchmarks, torch-free, and facts that loading confirms."""
from __future__ import annotations

import subprocess
import sys

from marktune.data import BENCHMARKS, load_benchmark
from marktune.data.benchmarks import FILE_BENCHMARKS
from marktune.data.registry import FACTS


def test_config_validation_imports_no_torch():
    # MarkConfig checks a benchmark and its split from the registry alone, in a blink
    code = ("import sys; from marktune.mark.config import BENCHMARKS, MarkConfig; "
            "MarkConfig(benchmark='fmnist', num_tasks=5); assert 'torch' not in sys.modules, 'torch imported'; "
            "print(','.join(BENCHMARKS))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ",".join(BENCHMARKS)


def test_every_benchmark_has_its_facts_and_a_loader():
    assert BENCHMARKS == tuple(FACTS) == ("cifar100", "miniimagenet", "fmnist", "digits", "synthetic")
    for name, facts in FACTS.items():
        assert facts.name == name
        assert (name in FILE_BENCHMARKS) == facts.files
        assert not facts.downloadable or facts.files


def test_the_facts_are_what_loading_gives():
    digits = load_benchmark("digits")
    facts = FACTS["digits"]
    assert digits.num_tasks == facts.num_tasks and digits.image_size == facts.image_size
    assert sum(task.num_classes for task in digits.tasks) == facts.classes
    assert load_benchmark("synthetic", synthetic_images_per_class=4).num_tasks == FACTS["synthetic"].num_tasks
