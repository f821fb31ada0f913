"""Worker processes for Paillier encryption and decryption: plain integers in, plain integers out.

Big-integer exponentiation holds the GIL, so threads would not help; :class:`PaillierWorkers`
runs the batch functions of :mod:`secagg.paillier.arithmetic` in a
``concurrent.futures.ProcessPoolExecutor``. What crosses the process boundary is only what
this process produced itself: lists of ``int`` (plaintexts, ciphertexts, exponents, key
numbers) in, lists of ``int`` out (the executor serializes them). Nothing received from the
network is ever deserialized by it: received ciphertexts are decoded and validated into ints by
:class:`~secagg.paillier.ciphertexts.PaillierCiphertexts` first.

Decryption sends ``p`` and ``q`` to the workers, child processes of this one, over the
executor's pipes. Processes start with the ``forkserver`` method where available (``spawn``
elsewhere): unlike ``fork`` it is safe in a process that already runs threads (gRPC servers
do). A pool is reusable: keep one open across calls to pay the start-up (about 0.1-0.3 s:
process start, imports, and the fixed-base table each worker builds once per key) only once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from secagg.errors import InvalidInput
from secagg.processes import process_pool

__all__ = ["PaillierWorkers", "run_batch"]

_CHUNKS_PER_WORKER = 4
"""Chunks per worker: small enough to balance uneven workers, large enough to amortize IPC."""
_KERNELS_MODULE = "secagg.paillier.arithmetic"

BatchFunction = Callable[..., list[int]]


class PaillierWorkers:
    """A lazily started pool of ``workers`` processes (default ``os.cpu_count()``).

    ``PaillierWorkers(1)`` never starts a process. Use it as a context manager, or call
    :meth:`close`. Not thread-safe: one caller at a time.
    """

    def __init__(self, workers: int | None = None) -> None:
        count = (os.cpu_count() or 1) if workers is None else workers
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidInput(f"workers must be a positive integer, got {workers!r}")
        self._workers = count
        self._executor: ProcessPoolExecutor | None = None

    @property
    def workers(self) -> int:
        return self._workers

    def __enter__(self) -> PaillierWorkers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: object,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (if any were started); the pool can be used again later."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _executor_started(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = process_pool(self._workers, _KERNELS_MODULE)
        return self._executor

    def map(
        self, function: BatchFunction, shared: Sequence[int], columns: Sequence[Sequence[int]]
    ) -> list[int]:
        """``function(*shared, *columns)`` with the columns cut into chunks run in parallel.

        ``columns`` are equally long lists (e.g. plaintexts and their exponents); results come
        back in order. With one worker, or fewer than two items per worker, it runs here.
        """
        total = len(columns[0])
        if any(len(column) != total for column in columns):
            raise InvalidInput("batch columns must have equal lengths")
        if self._workers == 1 or total < 2 * self._workers:
            return function(*shared, *columns)
        chunks = min(total, self._workers * _CHUNKS_PER_WORKER)
        bounds = [total * index // chunks for index in range(chunks + 1)]
        executor = self._executor_started()
        futures: list[Future[list[int]]] = [
            executor.submit(function, *shared, *(list(column[start:stop]) for column in columns))
            for start, stop in zip(bounds, bounds[1:], strict=False)
        ]
        out: list[int] = []
        try:
            for future in futures:
                out.extend(future.result())
        except BrokenProcessPool:
            self.close()  # a dead worker breaks the executor for good; start afresh next time
            raise
        return out


def run_batch(
    workers: PaillierWorkers | None,
    function: BatchFunction,
    shared: Sequence[int],
    columns: Sequence[Sequence[int]],
    *,
    serial_below: int,
) -> list[int]:
    """Run on ``workers``; with ``None``, on a temporary pool of all cores if the batch is large.

    Without a pool, batches of fewer than ``serial_below`` items (the caller's estimate of about
    half a second of work, the order of a pool's start-up) run in this process; larger ones on
    a temporary pool that is closed afterwards.
    """
    if workers is not None:
        return workers.map(function, shared, columns)
    if len(columns[0]) < serial_below:
        return function(*shared, *columns)
    with PaillierWorkers() as temporary:
        return temporary.map(function, shared, columns)
