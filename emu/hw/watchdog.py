"""A watchdog that stops runs after a wall-clock time (docs/performance.md,
"The budget"): one daemon thread for every CPU of the process, started at
the first watched run.  Unicorn-free: the CPU layer gives the stop."""

from __future__ import annotations

import os
import threading
import time
from typing import Callable


class Watchdog:
    """Stops a CPU that has run too long without a stop: ``stop(handle)``
    from the watchdog's thread (``uc_emu_stop`` from another thread is how
    Unicorn's own timeout works).
    The lock makes arming, disarming and firing exclusive: after
    :meth:`disarm` returns, the thread can no longer stop that run (nor, by
    mistake, the next one)."""

    POLL = 0.02

    def __init__(self, stop: Callable[[object], None]):
        self._stop = stop
        self._lock = threading.Lock()
        self._runs: dict[int, list] = {}     # token -> [handle, deadline, fired]
        self._next = 0
        self._thread: threading.Thread | None = None

    def arm(self, hv, seconds: float) -> int:
        with self._lock:
            self._next += 1
            self._runs[self._next] = [hv, time.monotonic() + seconds, False]
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="isoemu-watchdog", daemon=True)
                self._thread.start()
            return self._next

    def disarm(self, token: int) -> bool:
        with self._lock:
            return self._runs.pop(token)[2]

    def _loop(self) -> None:
        while True:
            time.sleep(self.POLL)
            now = time.monotonic()
            with self._lock:
                for run in self._runs.values():
                    if not run[2] and now >= run[1]:
                        run[2] = True
                        self._stop(run[0])

    def forked(self) -> None:
        """In a child process after fork: only the forking thread lives on,
        so the watchdog thread (if there was one) is gone, and the lock may
        have been held by it.  Start afresh: a watched run in the child
        starts its own thread (``isoemu test -j`` forks its workers)."""
        self.__init__(self._stop)

    def fork_safe(self) -> "Watchdog":
        """Register :meth:`forked` to run in every forked child; returns self."""
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.forked)
        return self
