"""Where a trial runs, and what it may take of a shared GPU (no Ray import: bench/gpu.py uses it).

A fractional GPU in Ray is a scheduling quota, not a memory limit: four trials at 0.25 GPU
share one card, each with its own CUDA context and caching allocator. So each trial caps its
own allocator at its fraction before it builds anything, and an out-of-memory error says
which trial, which settings and which cap. A trial that Ray gave a GPU but that cannot use
CUDA fails at once (a CPU-only torch, or a driver older than torch's CUDA), instead of
holding the GPU and training a hundred times slower on the CPU. Tests with fake GPUs opt out
with ``cpu_fallback``.

Example:
    >>> choose_device(gpu_ids=[], cpu_fallback=False)
    device(type='cpu')
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch


class GpuUnusableError(RuntimeError):
    """Ray gave this trial a GPU, but torch cannot use CUDA here; the message says why and how to fix it."""


class TrialOutOfMemoryError(RuntimeError):
    """A trial ran out of GPU memory under its cap; the message names its settings and the cap."""


def cuda_diagnosis() -> str:
    """What torch sees of CUDA, for error messages."""
    return (f"torch {torch.__version__} built for CUDA {torch.version.cuda or 'none (a CPU-only build)'}, "
            f"torch.cuda.is_available() = {torch.cuda.is_available()}, "
            f"CUDA_VISIBLE_DEVICES = {os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')!r}")


def choose_device(*, gpu_ids: Sequence[Any], cpu_fallback: bool,
                  cuda_available: Callable[[], bool] = torch.cuda.is_available) -> torch.device:
    """The device of a trial that Ray gave ``gpu_ids`` (empty: a CPU trial).

    Ray sets ``CUDA_VISIBLE_DEVICES`` to the trial's GPU(s), so ours is ``cuda:0``. With GPU ids
    but no usable CUDA this raises :class:`GpuUnusableError`, unless ``cpu_fallback`` (fake
    GPUs in tests) sends the trial to the CPU.
    """
    if not gpu_ids:
        return torch.device("cpu")
    if cuda_available():
        return torch.device("cuda", 0)
    if cpu_fallback:
        return torch.device("cpu")
    raise GpuUnusableError(
        f"this trial was given GPU {', '.join(map(str, gpu_ids))} but cannot use CUDA: {cuda_diagnosis()}. "
        "Fix: install a CUDA build of torch whose CUDA version the node's driver supports "
        "(`nvidia-smi` shows the driver's), or run CPU trials with --gpus-per-trial 0. "
        "(Fake GPUs for testing: pass --cpu-fallback.)")


def cap_gpu_memory(device: torch.device, fraction: float | None, *,
                   set_fraction: Callable[[float, int], None] | None = None) -> float | None:
    """Cap this process's CUDA allocator at ``fraction`` of the device (a no-op on the CPU).

    ``set_fraction`` is ``torch.cuda.set_per_process_memory_fraction`` unless a test passes its
    own. Returns the cap applied, or None.
    """
    if device.type != "cuda" or fraction is None or fraction >= 1.0:
        return None
    if not 0.0 < fraction:
        raise ValueError(f"a GPU memory fraction must be in (0, 1] (got {fraction})")
    (set_fraction or torch.cuda.set_per_process_memory_fraction)(float(fraction), device.index or 0)
    return float(fraction)


def out_of_memory_message(*, trial_settings: Mapping[str, Any], fraction: float | None,
                          device: torch.device, error: BaseException) -> str:
    """A clear message for a trial's CUDA out-of-memory error."""
    keys = ("benchmark", "kb_depth", "kb_width", "latent_dim", "fe_channels", "mask_hidden", "batch_size",
            "mini_tasks", "meta_vmap", "precision")
    settings = ", ".join(f"{k}={trial_settings[k]}" for k in keys if k in trial_settings)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
        cap = (f"its cap of {fraction:.2f} x {total:.1f} GiB = {fraction * total:.1f} GiB" if fraction
               else f"the whole {total:.1f} GiB device (no cap)")
    else:
        cap = "no cap"
    return (f"the trial ran out of GPU memory under {cap} ({settings}). Give each trial more: raise "
            "--gpus-per-trial (fewer trials per GPU) or --gpu-memory-fraction, or lower --max-concurrent; "
            f"or make the trial smaller (kb_width, batch_size, meta_vmap=false). CUDA said: "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}")


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """``deterministic: true``: deterministic algorithms, no cuDNN autotuning, no TF32, inside.

    Without it a task run again on CUDA gives the same rows only up to round-off (cuDNN picks
    its algorithms, atomics reorder sums, TF32 rounds fp32 convolutions to 10 significand bits);
    on the CPU the learner is deterministic either way. The previous settings are restored on
    exit, so a test or a notebook is not left in deterministic mode.
    """
    if not enabled:
        yield
        return
    # cuBLAS needs a fixed workspace for deterministic matmuls (read at its first use)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved[1:]
