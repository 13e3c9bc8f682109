"""``Memory``: joblib's ``Memory`` API on taskfarm's result cache.

>>> from taskfarm import Memory
>>> memory = Memory("/scratch/me/tf-cache")
>>> @memory.cache
... def simulate(n):
...     return n * 2
>>> simulate(21)      # computed and stored
42
>>> simulate(21)      # loaded
42

The entries are those of ``--cache DIR`` (docs/campaigns.md): a call's key
is the content hash of the function (its code, also for a function of an
importable module) and of its pickled arguments, the same key a cluster task
of the same call has, so a cache filled by ``taskfarm mpi --cache DIR`` answers
``Memory(DIR)`` calls and the other way round. Entries are written
atomically, checksummed, and must belong to you.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import json
import os
from typing import Any, Callable

from . import _native
from . import _serialize as ser

__all__ = ["Memory", "MemorizedFunc"]

_PLAIN = (str, bool, float, type(None))


def _is_plain(v: Any, budget: list[int]) -> bool:
    """Exactly JSON (and back), as the executors decide: such values are
    stored as JSON so built-in and command tasks can use them too. (The
    same rule as ``is_plain`` in the worker's executor.py, which runs
    without this package and so keeps its own copy.)"""
    stack = [v]
    while stack:
        budget[0] -= 1
        if budget[0] < 0:
            return False
        x = stack.pop()
        t = type(x)
        if t is int:
            if not -(1 << 63) <= x < (1 << 63):
                return False
        elif t is float:
            if x != x or x in (float("inf"), float("-inf")):
                return False
        elif t in _PLAIN:
            pass
        elif t is list:
            stack.extend(x)
        elif t is dict:
            if any(type(k) is not str for k in x):
                return False
            stack.extend(x.values())
        else:
            return False
    return True


def _encode(value: Any) -> tuple[int, bytes]:
    if type(value) is bytes:
        return ser.TAG_BYTES, value
    if _is_plain(value, [10000]):
        return ser.TAG_JSON, json.dumps(value, separators=(",", ":")).encode()
    return ser.TAG_PICKLE, ser.value_payload(value)


def _bytes_limit(limit: int | str | None) -> int | None:
    if limit is None or isinstance(limit, int):
        return limit
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = limit.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


class Memory:
    """A result cache in ``location`` (created with mode 0700; it must be
    yours and writable by nobody else). ``location=None`` caches nothing,
    as joblib's. ``verbose`` > 0 prints a line per computed call."""

    def __init__(self, location: str | os.PathLike | None = None, verbose: int = 0):
        self.location = None if location is None else os.fspath(location)
        self.verbose = verbose
        if self.location is not None:
            _native.cache_info(self.location)  # creates and checks it

    def cache(self, func: Callable | None = None, *, ignore: list[str] | None = None, verbose: int | None = None) -> Any:
        """Decorate ``func`` so calls with the same arguments are computed once."""
        if func is None:
            return functools.partial(self.cache, ignore=ignore, verbose=verbose)
        return MemorizedFunc(func, self, ignore=ignore, verbose=self.verbose if verbose is None else verbose)

    def eval(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        """``func(*args, **kwargs)``, through the cache."""
        return self.cache(func)(*args, **kwargs)

    def clear(self, warn: bool = True) -> None:
        """Remove every entry of the cache."""
        if self.location is not None:
            _native.cache_prune(self.location, 0, None)

    def reduce_size(self, bytes_limit: int | str | None = None, items_limit: int | None = None,
                    age_limit: datetime.timedelta | None = None) -> None:
        """Remove the entries not used for ``age_limit``, then the least
        recently used until at most ``bytes_limit`` (e.g. ``"10G"``) is left.
        ``items_limit`` is not supported (the cache counts bytes)."""
        if self.location is None:
            return
        if items_limit is not None:
            raise NotImplementedError("taskfarm's cache is limited by bytes and age: use bytes_limit= or age_limit=")
        age = None if age_limit is None else age_limit.total_seconds()
        _native.cache_prune(self.location, _bytes_limit(bytes_limit), age)

    def __repr__(self) -> str:
        return f"Memory(location={self.location!r})"


class MemorizedFunc:
    """A function whose results are kept in a :class:`Memory`."""

    def __init__(self, func: Callable, memory: Memory, ignore: list[str] | None = None, verbose: int = 0):
        self.func = func
        self.memory = memory
        self.ignore = list(ignore or [])
        self.verbose = verbose
        self._hash = ser.function_payload(func)[0]
        functools.update_wrapper(self, func)
        if self.ignore:
            self._signature = inspect.signature(func)
            unknown = set(self.ignore) - set(self._signature.parameters)
            if unknown:
                raise ValueError(f"ignore={sorted(unknown)}: {func.__name__} has no such parameters")

    def _key(self, args: tuple, kwargs: dict) -> str:
        if self.ignore:
            bound = self._signature.bind(*args, **kwargs)
            bound.apply_defaults()
            kept = {k: v for k, v in bound.arguments.items() if k not in self.ignore}
            args, kwargs = (), kept
        payload, _ = ser.args_payload(args, kwargs, lambda o: False)
        return _native.cache_call_key(self._hash, payload)

    def check_call_in_cache(self, *args: Any, **kwargs: Any) -> bool:
        """Whether this call's result is in the cache."""
        return self.memory.location is not None and _native.cache_contains(self.memory.location, self._key(args, kwargs))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        location = self.memory.location
        if location is None:
            return self.func(*args, **kwargs)
        key = self._key(args, kwargs)
        hit = _native.cache_get(location, key)
        if hit is not None:
            return ser.decode(hit[0], hit[1])
        if self.verbose:
            print(f"[Memory] calling {getattr(self.func, '__qualname__', self.func)} (not in {location})")
        value = self.func(*args, **kwargs)
        tag, body = _encode(value)
        _native.cache_put(location, key, tag, body)
        return value

    def __repr__(self) -> str:
        return f"MemorizedFunc(func={self.func!r}, location={self.memory.location!r})"
