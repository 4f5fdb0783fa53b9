"""A trial's settings that are not the learner's: what the driver decided for every trial of a
command (data, threads, GPU use, where a first-k trial stops).

:class:`TrialRuntime` travels inside the Tune config as a plain dict under
:data:`~marktune.results.files.RUNTIME_KEY` (Tune writes it to each trial's ``params.json``,
where ``marktune.results.experiment`` reads it back), so :meth:`TrialRuntime.to_dict` keeps the
keys and values of the experiments written before it existed. It lives here, beside the runner
that reads it, so that a trial actor never imports the driver (``marktune.tune``).

Example:
    >>> TrialRuntime(threads=2, stop_after_tasks=3).to_dict()["stop_after_tasks"]
    3
    >>> TrialRuntime.from_dict(TrialRuntime(threads=2).to_dict()) == TrialRuntime(threads=2)
    True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from marktune.results.files import RUNTIME_KEY
from marktune.results.protocols import STOP_AFTER_KEY

__all__ = ["RUNTIME_KEY", "TrialRuntime"]


@dataclass(frozen=True, kw_only=True)
class TrialRuntime:
    """A trial's settings that are not the learner's (``runners.mark_sequence`` reads them)."""

    data_dir: str | None = None  # where the data sets are on the trial's node (None: $MARKTUNE_DATA or cache)
    download: bool = False  # let the trial download its data set
    threads: int | None = None  # torch threads of the trial (None: torch's own choice)
    cpu_fallback: bool = False  # a trial given a GPU that CUDA cannot use runs on the CPU (fake GPUs in tests)
    gpu_memory_fraction: float | None = None  # share of its GPU the trial may allocate (None: its GPUs)
    stop_after_tasks: int | None = None  # first-k protocol: run the first k tasks of the stream, then stop

    def to_dict(self) -> dict[str, Any]:
        """The plain dict under ``RUNTIME_KEY`` in the trial config, as searches have always written it
        (the first-k key only under first-k)."""
        out: dict[str, Any] = {"data_dir": self.data_dir, "download": self.download, "threads": self.threads,
                               "cpu_fallback": self.cpu_fallback, "gpu_memory_fraction": self.gpu_memory_fraction}
        if self.stop_after_tasks is not None:
            out[STOP_AFTER_KEY] = self.stop_after_tasks
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "TrialRuntime":
        """Read back what ``to_dict`` wrote, also an older experiment's dict with fewer keys."""
        data = data or {}
        fraction = data.get("gpu_memory_fraction")
        return cls(data_dir=data.get("data_dir"), download=bool(data.get("download", False)),
                   threads=int(data["threads"]) if data.get("threads") else None,
                   cpu_fallback=bool(data.get("cpu_fallback", False)),
                   gpu_memory_fraction=float(fraction) if fraction is not None else None,
                   stop_after_tasks=int(data[STOP_AFTER_KEY]) if data.get(STOP_AFTER_KEY) else None)
