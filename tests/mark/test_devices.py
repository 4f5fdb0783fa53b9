"""GPU-ready trials (issue 9): the device a trial runs on, its memory cap, loud failures, determinism."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import tiny_config
from marktune.data.benchmarks import load_benchmark_for
from marktune.mark.devices import (GpuUnusableError, cap_gpu_memory, choose_device, deterministic_mode,
                              out_of_memory_message)
from marktune.mark.learner import MarkLearner
from marktune.cli.search import SearchError
from marktune.tune.runs.preflight import check_local_gpus


def test_a_cpu_trial_runs_on_the_cpu_and_a_gpu_trial_on_its_gpu():
    assert choose_device(gpu_ids=[], cpu_fallback=False) == torch.device("cpu")
    # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU: it is always cuda:0 inside the trial
    assert choose_device(gpu_ids=["3"], cpu_fallback=False, cuda_available=lambda: True) == torch.device("cuda", 0)


def test_a_gpu_trial_without_usable_cuda_fails_loudly_unless_it_opted_out():
    with pytest.raises(GpuUnusableError) as info:
        choose_device(gpu_ids=["0"], cpu_fallback=False, cuda_available=lambda: False)
    message = str(info.value)
    for needed in ("given GPU 0", "torch.cuda.is_available() = ", "CUDA_VISIBLE_DEVICES", "CUDA ",
                   "--gpus-per-trial 0", "nvidia-smi"):
        assert needed in message, needed
    assert choose_device(gpu_ids=["0"], cpu_fallback=True, cuda_available=lambda: False) == torch.device("cpu")


def test_the_memory_cap_is_requested_with_the_trials_fraction():
    calls = []
    cuda = torch.device("cuda", 0)
    assert cap_gpu_memory(cuda, 0.25, set_fraction=lambda f, d: calls.append((f, d))) == 0.25
    assert calls == [(0.25, 0)]
    # nothing to cap: a CPU trial, no fraction, or the whole GPU
    assert cap_gpu_memory(torch.device("cpu"), 0.25, set_fraction=lambda f, d: calls.append((f, d))) is None
    assert cap_gpu_memory(cuda, None, set_fraction=lambda f, d: calls.append((f, d))) is None
    assert cap_gpu_memory(cuda, 1.0, set_fraction=lambda f, d: calls.append((f, d))) is None
    assert calls == [(0.25, 0)]
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        cap_gpu_memory(cuda, -0.5, set_fraction=lambda f, d: None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the real cap needs a CUDA device")
def test_the_real_memory_cap_on_a_cuda_host():
    try:
        assert cap_gpu_memory(torch.device("cuda", 0), 0.5) == 0.5
        total = torch.cuda.get_device_properties(0).total_memory
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(0.6 * total), dtype=torch.uint8, device="cuda")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()


def test_out_of_memory_message_names_the_settings_and_the_levers():
    message = out_of_memory_message(trial_settings=tiny_config(kb_width=96).to_dict(), fraction=None,
                                    device=torch.device("cpu"), error=RuntimeError("CUDA out of memory. Tried"))
    assert "kb_width=96" in message and "batch_size=32" in message
    assert "--gpus-per-trial" in message and "--max-concurrent" in message and "CUDA out of memory" in message


def test_gpu_trials_on_a_local_ray_without_a_gpu_are_refused_before_ray_starts():
    with pytest.raises(SearchError, match="--gpus-per-trial 0.5: no GPU is visible.*--gpus-per-trial 0"):
        check_local_gpus(0.5, address=None, num_gpus=None, cpu_fallback=False, cuda_available=lambda: False)
    # CPU trials, a cluster, or declared (fake) GPUs: nothing to refuse here
    check_local_gpus(0, address=None, num_gpus=None, cpu_fallback=False, cuda_available=lambda: False)
    check_local_gpus(0.5, address="10.0.0.1:6379", num_gpus=None, cpu_fallback=False, cuda_available=lambda: False)
    check_local_gpus(0.5, address=None, num_gpus=1, cpu_fallback=True, cuda_available=lambda: False)
    check_local_gpus(0.5, address=None, num_gpus=None, cpu_fallback=False, cuda_available=lambda: True)
    check_local_gpus(0.5, address=None, num_gpus=1, cpu_fallback=False, cuda_available=lambda: True)
    # fake GPUs without --cpu-fallback: every trial would fail after Ray started (issue 48)
    with pytest.raises(SearchError, match="--num-gpus 1 declares GPUs this machine does not have.*--cpu-fallback"):
        check_local_gpus(0.5, address=None, num_gpus=1, cpu_fallback=False, cuda_available=lambda: False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA host a GPU is visible: nothing to refuse")
def test_search_with_gpus_per_trial_and_no_gpu_exits_before_ray(tmp_path, monkeypatch, capsys):
    from marktune.cli import search

    monkeypatch.setattr(search, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    code = search.main(["--space", "digits", "--gpus-per-trial", "0.5", "--storage", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "no GPU is visible" in err and "Traceback" not in err
    assert "Started a local Ray instance" not in err + out


def test_deterministic_runs_give_identical_matrices_and_leave_torch_as_it_was():
    before = torch.are_deterministic_algorithms_enabled()
    runs = []
    for _ in range(2):
        cfg = tiny_config(num_tasks=2, deterministic=True)
        learner = MarkLearner(cfg, load_benchmark_for(cfg), verbose=0)
        seen = []  # the mode the KB's forward passes actually ran in
        learner.kb.register_forward_hook(lambda *a: seen.append(torch.are_deterministic_algorithms_enabled()))
        learner.run()
        assert seen and all(seen)
        runs.append(learner.matrices())
    assert runs[0] == runs[1]
    assert torch.are_deterministic_algorithms_enabled() == before
    with deterministic_mode(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.slow
@pytest.mark.cpu_bound
def test_gpu_benchmark_runs_end_to_end_on_the_cpu(tmp_path):
    """The smoke test of bench/gpu.py: every section runs, without Ray (plain processes)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    # the GPU machine has no Ray and no Optuna: here they are importable, so block them
    # (first on PYTHONPATH, which the packed workers inherit)
    for name in ("ray", "optuna"):
        (tmp_path / "blocked" / name).mkdir(parents=True)
        (tmp_path / "blocked" / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "blocked")}
    # 5 images a class instead of the CPU default of 20: every section still runs, in half the time
    proc = subprocess.run([sys.executable, str(root / "bench" / "gpu.py"), "--tasks", "2", "--epochs", "1",
                           "--images-per-class", "5", "--device", "cpu", "--json", str(tmp_path / "gpu.json")],
                          capture_output=True, text=True, timeout=900, cwd=root, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for section in ("1. one trial", "meta_vmap off", "meta_vmap on", "2. phase 4 alone", "fp32",
                    "3. trials packed", "1 at once", "2 at once", "4. device", "5. phase 4's inner loop"):
        assert section in proc.stdout, section
    assert "extrapolated from 2 measured tasks" in proc.stdout
    import json

    figures = json.loads((tmp_path / "gpu.json").read_text())
    assert set(figures["packing"]) == {"1", "2"} and figures["trial"]["meta_vmap=False"]["full_trial_s"] > 0
