"""What this machine's processors can do, checked before any data is loaded or Ray starts.

bfloat16 on a CPU is only worth it where the CPU has bf16 instructions (``avx512_bf16`` or
``amx_bf16`` on x86, ``bf16`` on Arm). Elsewhere oneDNN emulates it: on an AVX2-only AMD
EPYC a 2048 x 2048 bf16 matmul did not finish in 10 minutes, where fp32 ran at 173 GFLOP/s.
A trial set to bf16 there would look hung, so it is refused instead.

Example:
    >>> check_precision("fp32", "cpu")  # always allowed
    >>> isinstance(cpu_has_native_bf16(), bool)
    True
"""
from __future__ import annotations

import ctypes
import functools
import platform
import threading
from pathlib import Path

import torch

from marktune.mark.config import ConfigError

# CPU flags (as /proc/cpuinfo spells them) that mean bf16 arithmetic in hardware
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bfloat16 in hardware (Linux: its flags; elsewhere torch's oneDNN check)."""
    cpuinfo = CPUINFO
    if cpuinfo.is_file():
        flags: set[str] = set()
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):  # x86, Arm
                flags.update(value.split())
        return bool(flags & NATIVE_BF16_FLAGS)
    try:  # not Linux: oneDNN's own test (AVX512 counts, which emulates bf16 at a usable speed)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_model_name() -> str:
    """The CPU's model name (``lscpu``'s "Model name"), for messages and benchmark figures."""
    cpuinfo = CPUINFO
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    return platform.processor() or platform.machine()


def check_precision(precision: str, device: str | torch.device) -> None:
    """Refuse ``precision: bf16`` on a CPU without native bf16 (CUDA devices are always allowed)."""
    if precision != "bf16" or torch.device(device).type != "cpu" or cpu_has_native_bf16():
        return
    raise ConfigError(
        f"precision=bf16: this CPU ({cpu_model_name()}, torch capability "
        f"{torch.backends.cpu.get_cpu_capability()}) has no native bfloat16 instructions (avx512_bf16 "
        "or amx_bf16), so bf16 would be emulated about a thousand times slower than fp32 and a run "
        "would look hung. Use precision=fp32 here, or bf16 on a GPU or a CPU that has it.")


def flush_denormals(on: bool) -> int:
    """Flush denormal floats to zero (x86 FTZ/DAZ) in this thread and in torch's CPU worker threads.

    Gradients of the frozen KB in phases 3 and 5 run into denormals (below 1.2e-38), on which
    Intel CPUs take microcode assists: a convolution's input gradient took 1.5 s instead of 8 ms
    with denormal output gradients (docs/performance.md). ``torch.set_flush_denormal`` sets only
    the calling thread's MXCSR, and OpenMP's workers inherit it only when they are created, so
    it is also run once on every thread of torch's OpenMP team (libgomp's ``GOMP_parallel``).
    Returns the number of threads set; 0 where the CPU cannot flush denormals.
    """
    if not torch.set_flush_denormal(on):
        return 0
    threads = torch.get_num_threads()
    if threads <= 1:
        return 1
    try:
        gomp = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libgomp.so.1"))
    except OSError:  # not the libgomp build of torch: only threads created from here on inherit it
        return 1
    seen: set[int] = set()

    def on_each_thread(_data) -> None:
        torch.set_flush_denormal(on)
        seen.add(threading.get_native_id())

    callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(on_each_thread)
    gomp.GOMP_parallel(callback, None, ctypes.c_uint(threads), ctypes.c_uint(0))
    return len(seen)
