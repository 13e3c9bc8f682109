"""Waiting on many futures: ``wait``, ``as_completed`` and ``futures_of``,
with ``distributed``'s names and semantics."""

from __future__ import annotations

import collections
import queue
import threading
from typing import Any, Iterable, Iterator

from ._client import Future

__all__ = ["wait", "as_completed", "futures_of"]


class _DoneAndNotDone(collections.namedtuple("DoneAndNotDoneFutures", ["done", "not_done"])):
    pass


def futures_of(x: Any) -> list[Future]:
    """The futures in x: a future, lists/tuples/sets/dicts of them, or Dask
    collections (persisted ones hold futures in their graphs), as
    ``distributed.futures_of``."""
    found: dict[int, Future] = {}
    stack = [x]
    while stack:
        o = stack.pop()
        if type(o) is Future:
            found.setdefault(id(o), o)
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif hasattr(o, "__dask_graph__") and not isinstance(o, type):
            for v in o.__dask_graph__().values():
                stack.append(getattr(v, "value", v) if type(v) is not Future else v)
    return list(found.values())


def wait(fs: Any, timeout: float | None = None, return_when: str = "ALL_COMPLETED") -> _DoneAndNotDone:
    """Wait for futures (or what holds them: lists, persisted Dask
    collections), as ``distributed.wait``: ``return_when`` is
    ``ALL_COMPLETED`` or ``FIRST_COMPLETED``; raises ``TimeoutError`` when
    ``timeout`` passes first. Returns ``(done, not_done)`` sets."""
    fs = futures_of(fs)
    if return_when not in ("ALL_COMPLETED", "FIRST_COMPLETED"):
        raise ValueError(f"return_when must be ALL_COMPLETED or FIRST_COMPLETED, not {return_when!r}")
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    if return_when == "ALL_COMPLETED":
        for f in fs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not f.client._wait_key(f._info, left):
                raise TimeoutError(f"not every future finished within {timeout} s")
    elif fs and not any(f.done() for f in fs):
        first = threading.Event()
        for f in fs:
            f.add_done_callback(lambda _f: first.set())
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not first.wait(left):
            raise TimeoutError(f"no future finished within {timeout} s")
    done = {f for f in fs if f.done()}
    return _DoneAndNotDone(done, {f for f in fs if f not in done})


class as_completed(Iterator):
    """Iterate over futures in the order they finish, as
    ``distributed.as_completed``; ``with_results=True`` yields
    ``(future, result)``. More futures can be added while iterating."""

    def __init__(self, futures: Iterable[Future] = (), with_results: bool = False, raise_errors: bool = True):
        self._queue: "queue.Queue[Future]" = queue.Queue()
        self._count = 0
        self._with_results = with_results
        self._raise_errors = raise_errors
        self._lock = threading.Lock()
        for f in futures:
            self.add(f)

    def add(self, future: Future) -> None:
        with self._lock:
            self._count += 1
        future.add_done_callback(lambda _f, f=future: self._queue.put(f))

    def update(self, futures: Iterable[Future]) -> None:
        for f in futures:
            self.add(f)

    def count(self) -> int:
        return self._count

    def is_empty(self) -> bool:
        return self._count == 0

    def __iter__(self) -> "as_completed":
        return self

    def __next__(self):
        with self._lock:
            if self._count == 0:
                raise StopIteration
            self._count -= 1
        f = self._queue.get()
        if self._with_results:
            try:
                return f, f.result()
            except BaseException as e:
                if self._raise_errors:
                    raise
                return f, e
        return f

    def next_batch(self, block: bool = True) -> list:
        out = [next(self)] if block and self._count else []
        while self._count:
            try:
                f = self._queue.get_nowait()
            except queue.Empty:
                break
            with self._lock:
                self._count -= 1
            out.append((f, f.result()) if self._with_results else f)
        return out
