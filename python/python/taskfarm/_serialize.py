"""How Python objects become task payloads and values come back.

* A function is pickled with cloudpickle once per client (cached by
  identity) and named by a content hash, so executors unpickle it once.
* Arguments are pickled as ``(args, kwargs)``: plain pickle first (fast),
  cloudpickle when plain pickle cannot (lambdas, ``__main__`` objects), as
  Dask does. A :class:`~taskfarm.Future` inside the arguments becomes a
  pickle *persistent id*: the task's dependency number ``i``. The worker's
  executor replaces it by the dependency's value while unpickling, so the
  data never goes through the client.
* Values come back with a tag: ``J`` JSON text, ``B`` raw bytes, ``P`` a
  pickle (protocol 5).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
import struct
from typing import Any, Callable

import cloudpickle

TAG_JSON = ord("J")
TAG_BYTES = ord("B")
TAG_PICKLE = ord("P")


class _HasFuture(Exception):
    """Raised while pickling when the arguments hold a future."""


def _code_of(fn: Any) -> bytes:
    """The bytecode (and constants, names, nested code) of a function, also
    of one cloudpickle sends by reference (from an importable module): a
    changed function then has another hash, so result caches and pure keys
    do not mix its old and new results."""
    import marshal

    fn = getattr(fn, "func", fn)  # functools.partial
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__call__", None), "__code__", None)
    if code is None:
        return b""
    try:
        return marshal.dumps(code.replace(co_filename="", co_firstlineno=1))
    except (ValueError, TypeError):
        return b""


def function_payload(fn: Callable) -> tuple[bytes, bytes]:
    """(content hash, cloudpickle bytes) of a callable. The hash covers the
    pickle and the function's code."""
    data = cloudpickle.dumps(fn, protocol=5)
    h = hashlib.blake2b(data, digest_size=16)
    h.update(_code_of(fn))
    return h.digest(), data


class _DepPickler(cloudpickle.CloudPickler):
    def __init__(self, file, is_future):
        super().__init__(file, protocol=5)
        self._is_future = is_future
        self.deps: list[str] = []
        self._index: dict[str, int] = {}

    def persistent_id(self, obj):
        if self._is_future(obj):
            key = obj.key
            i = self._index.get(key)
            if i is None:
                i = self._index[key] = len(self.deps)
                self.deps.append(key)
            return i
        return None


def args_payload(args: tuple, kwargs: dict, is_future: Callable[[Any], bool]) -> tuple[bytes, list[str]]:
    """Pickle ``(args, kwargs)``; return the bytes and the keys of the futures
    found in them (the task's dependencies, by persistent id)."""
    try:
        return pickle.dumps((args, kwargs), protocol=5), []
    except _HasFuture:
        pass
    except Exception:
        try:
            return cloudpickle.dumps((args, kwargs), protocol=5), []
        except _HasFuture:
            pass
    buf = io.BytesIO()
    p = _DepPickler(buf, is_future)
    p.dump((args, kwargs))
    return buf.getvalue(), p.deps


def dataset_payload(obj: Any, is_future: Callable[[Any], bool]) -> tuple[bytes, list[str]]:
    """Pickle a published object with each future in it as a persistent id
    (its position in the returned keys)."""
    buf = io.BytesIO()
    p = _DepPickler(buf, is_future)
    p.dump(obj)
    return buf.getvalue(), p.deps


class _DatasetUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, futures: list):
        super().__init__(io.BytesIO(data))
        self._futures = futures

    def persistent_load(self, pid):
        return self._futures[pid]


def dataset_value(data: bytes, futures: list) -> Any:
    """The published object back, its futures replaced by ``futures``."""
    return _DatasetUnpickler(data, futures).load()


def value_payload(obj: Any) -> bytes:
    """A pickled value (for scatter)."""
    try:
        return pickle.dumps(obj, protocol=5)
    except Exception:
        return cloudpickle.dumps(obj, protocol=5)


def token(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


OOB_MAGIC = b"\x00tfoob5"


def _pad64(n: int) -> int:
    return -n % 64


def loads(body: Any) -> Any:
    """A pickled value's bytes back: a pickle, or the framed pickle-5 form
    the executors write for values with buffers (see the worker's
    executor.py), whose buffers (numpy arrays' data) become views of
    ``body`` instead of copies."""
    mv = memoryview(body)
    if mv[: len(OOB_MAGIC)] != OOB_MAGIC:
        return pickle.loads(mv)
    at = len(OOB_MAGIC)
    n, plen = struct.unpack_from("<IQ", mv, at)
    lens = struct.unpack_from(f"<{n}Q", mv, at + 12)
    at += 12 + 8 * n
    at += _pad64(at)
    data = mv[at : at + plen]
    at += plen + _pad64(plen)
    bufs = []
    for ln in lens:
        bufs.append(mv[at : at + ln])
        at += ln + _pad64(ln)
    return pickle.loads(data, buffers=bufs)


def decode(tag: int, body: Any) -> Any:
    """A value from its tag and bytes (a bytearray for pickles: arrays
    that are views of it are writable)."""
    if tag == TAG_JSON:
        # the common small results without the JSON decoder's overhead
        if type(body) is bytes and 0 < len(body) < 19 and (body.isdigit() or (body[:1] == b"-" and body[1:].isdigit())):
            return int(body)
        if body == b"null":
            return None
        return json.loads(body)
    if tag == TAG_BYTES:
        return bytes(body)
    if tag == TAG_PICKLE:
        return loads(body)
    raise ValueError(f"unknown value tag {tag!r}")


class TaskError(Exception):
    """A task failed with an error that is not a Python exception (a command
    task's exit status, a built-in's error, a lost worker), or whose
    exception could not be unpickled here."""


def exception_from(error: str, error_parts: Callable[[str], tuple[str, str | None]]) -> BaseException:
    """The exception to raise for a task's error text: the task's own
    exception (same type) with the remote traceback as a note, when the task
    was Python; else a :class:`TaskError`."""
    text, detail = error_parts(error)
    if detail:
        try:
            exc = pickle.loads(base64.b64decode(detail))
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            exc.add_note("\nRemote traceback (on the taskfarm worker):\n" + text)
            exc.__taskfarm_traceback__ = text
            return exc
    exc = TaskError(text)
    exc.__taskfarm_traceback__ = text
    return exc
