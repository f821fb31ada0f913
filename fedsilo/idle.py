"""A watchdog that acts when a stream stops moving: no message for ``idle_seconds``."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["IdleWatchdog"]


class IdleWatchdog:
    """Calls ``on_idle`` once when ``moved`` has not been called for ``idle_seconds``.

    Both ends of a streaming call use it: the coordinator cancels an upload that stalls (it
    must not hold a worker thread until its client's deadline), a participant cancels a
    transfer that stalls (a slow but moving one goes on). ``stop`` ends it without acting.
    """

    def __init__(self, idle_seconds: float, on_idle: Callable[[], None], name: str) -> None:
        self.idle_seconds = idle_seconds
        self._on_idle = on_idle
        self._name = name
        self._moved = threading.Event()
        self._done = threading.Event()
        self.fired = False

    def start(self) -> None:
        threading.Thread(target=self._run, name=self._name, daemon=True).start()

    def _run(self) -> None:
        while not self._done.is_set():
            if not self._moved.wait(self.idle_seconds):
                if not self._done.is_set():
                    self.fired = True
                    self._on_idle()
                return
            self._moved.clear()

    def moved(self) -> None:
        self._moved.set()

    def stop(self) -> None:
        self._done.set()
        self._moved.set()
