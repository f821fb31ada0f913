"""Worker process pools for the library's parallel kernels.

Work that holds the GIL (big-integer exponentiation) runs in processes. Pools start with the
``forkserver`` method where available (``spawn`` elsewhere): unlike ``fork`` it is safe in a
process that already runs threads (gRPC servers do). The fork server preloads the given kernels
module once; every worker forked from it inherits it.

Workers exit on their own once the process that started the pool is gone, even one killed with
SIGKILL: a worker blocks on its task queue, whose write end it holds itself, so without the
watch it (and the fork server, which waits for every worker) would stay behind for good.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext

__all__ = ["process_pool"]

_PARENT_CHECK_SECONDS = 1.0


def process_pool(workers: int, preload: str) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes that import ``preload`` once (through the fork server)."""
    context: BaseContext
    if "forkserver" in multiprocessing.get_all_start_methods():
        forkserver = multiprocessing.get_context("forkserver")
        # The fork server imports these once and every worker forked from it inherits them
        # (``__main__`` is the default); it has no effect once the server runs.
        forkserver.set_forkserver_preload(["__main__", preload])
        context = forkserver
    else:
        context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    )


def _exit_with_parent(parent: int) -> None:
    """In a worker: exit once ``parent`` (the process that started the pool) is gone."""

    def watch() -> None:
        while True:
            time.sleep(_PARENT_CHECK_SECONDS)
            if not _alive(parent):
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
