"""SIGTERM handled as Ctrl-C: a driver stopped by a scheduler, ``kill`` or a closing terminal
writes its summary and says how to continue, as after Ctrl-C, and exits 143 (128 + SIGTERM).

``ray.init`` sets its own SIGTERM handler in the driver (``sys.exit``, which cut the search short
mid-loop with rc 134 and Ray's C++ dump), so :func:`sigterm_as_interrupt` is installed after Ray
starts: it raises SIGINT in this process, which Tune's own handler turns into a graceful stop (or,
outside Tune's loop, Python into KeyboardInterrupt), and remembers that SIGTERM came.
"""
from __future__ import annotations

import signal
import threading

INTERRUPTED = 130  # 128 + SIGINT: what a search returns after Ctrl-C
TERMINATED = 143  # 128 + SIGTERM


class SigtermAsInterrupt:
    """Installed by :func:`sigterm_as_interrupt`; :meth:`exit_code` maps 130 to 143 once SIGTERM came."""

    def __init__(self) -> None:
        self.received = False

    def _handle(self, signum, frame) -> None:
        self.received = True
        signal.raise_signal(signal.SIGINT)

    def exit_code(self, code: int) -> int:
        return TERMINATED if self.received and code == INTERRUPTED else code


def sigterm_as_interrupt() -> SigtermAsInterrupt:
    handler = SigtermAsInterrupt()
    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        signal.signal(signal.SIGTERM, handler._handle)
    return handler
