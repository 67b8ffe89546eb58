"""Decode worker processes: ``task(0)``, ``task(1)``, ... run in ``workers`` processes, results in order.

What a folder run needs of torch's DataLoader, without importing torch (about a second of a CPU
run's start-up): processes started once per segment (forked where safe, see
:func:`gpustats.sources.reduce_tasks._start_method`), two tasks in flight per worker, results yielded in
task order, a worker that dies raising ``BrokenProcessPool`` (the engine reports it in one line),
and Ctrl-C left to the main process. The task is given to each worker once, when it starts (a
forked worker inherits it; a spawned one receives it pickled), never with every task.

>>> list(ordered_results(abs, [-3, 1, -2], workers=0))
[3, 1, 2]
"""

from __future__ import annotations

import collections
import multiprocessing
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterator, Sequence

__all__ = ["ordered_results"]

_task: Callable[[Any], Any] | None = None  # this worker's task (set when it starts)


def _start(task: Callable[[Any], Any]) -> None:
    """A worker's start: its task, Ctrl-C ignored (the main process handles it and stops the pool), and
    one torch thread when torch came along with a fork (the workers are the parallelism)."""
    global _task
    _task = task
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _run(arg: Any) -> Any:
    assert _task is not None, "worker started without its task"
    return _task(arg)


def ordered_results(task: Callable[[Any], Any], args: Sequence[Any], *, workers: int,
                    method: str | None = None, in_flight: int = 2) -> Iterator[Any]:
    """``task(a)`` for each ``a`` of ``args``, in order: in this process (``workers=0``), or in ``workers``
    processes started with ``method`` (a multiprocessing start method; None: the platform's), at most
    ``in_flight`` tasks a worker queued ahead. A worker that dies raises ``BrokenProcessPool``."""
    if workers == 0:
        for arg in args:
            yield task(arg)
        return
    context = multiprocessing.get_context(method)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start, initargs=(task,))
    pending: collections.deque = collections.deque()
    todo = iter(args)
    try:
        for arg in todo:
            pending.append(pool.submit(_run, arg))
            if len(pending) >= in_flight * workers:
                break
        while pending:
            result = pending.popleft().result()
            for arg in todo:  # one more task for the one that finished
                pending.append(pool.submit(_run, arg))
                break
            yield result
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
