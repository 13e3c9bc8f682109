"""The client: Dask's ``distributed.Client`` names and semantics on taskfarm."""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import itertools
import os
import sys
import threading
import weakref
from typing import Any, Callable, Iterable, Sequence

from . import _native
from . import _serialize as ser

__all__ = ["Client", "Future", "default_client", "TaskError", "CancelledError"]

TaskError = ser.TaskError
CancelledError = concurrent.futures.CancelledError

_NO_DEFAULT = object()

_PENDING, _FINISHED, _ERROR, _CANCELLED, _LOST = "pending", "finished", "error", "cancelled", "lost"

_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()
_default: list["Client"] = []


def default_client() -> "Client":
    """The most recently created client that is still open."""
    for c in reversed(_default):
        if not c._closed:
            return c
    raise ValueError("no taskfarm client: create one with taskfarm.Client()")


class _Key:
    """What the client knows of one key, shared by all its futures."""

    __slots__ = ("refs", "status", "error", "event", "callbacks")

    def __init__(self) -> None:
        self.refs = 0
        self.status = _PENDING
        self.error: str | None = None
        # made only when someone waits on this key alone (most never are:
        # 10,000 Events cost more than the tasks of a map of no-ops)
        self.event: threading.Event | None = None
        self.callbacks: list[Callable[["Future"], Any]] = []


class Future:
    """A remote computation's result, as ``distributed.Future``.

    Futures passed as arguments to ``submit``/``map`` become dependencies:
    the value goes from worker to worker, never through the client. When no
    future of a key is left (in this client), the cluster may forget it.
    """

    __slots__ = ("key", "client", "_info", "__weakref__")
    # Dask may embed it in graphs (dask._task_spec treats it as a reference).
    __dask_future__ = True

    def __init__(self, key: str, client: "Client"):
        self.key = key
        self.client = client
        self._info = client._ref(key)

    @property
    def status(self) -> str:
        """``pending``, ``finished``, ``error``, ``cancelled`` or ``lost``."""
        return self._info.status

    def done(self) -> bool:
        """Whether it finished, failed or was cancelled."""
        return self._info.status != _PENDING

    def cancelled(self) -> bool:
        return self._info.status == _CANCELLED

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the value (up to ``timeout`` seconds) and return it; raise
        the task's exception (same type, remote traceback in its notes)."""
        return self.client._values([self.key], timeout)[0]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's exception, or None if it succeeded."""
        self._wait(timeout)
        if self._info.status == _FINISHED:
            return None
        try:
            self.client._values([self.key], timeout)
        except BaseException as e:  # noqa: BLE001 - that is the point
            return e
        return None

    def traceback(self, timeout: float | None = None) -> str | None:
        """The remote traceback as text (taskfarm keeps it as text: there are
        no frame objects of another process to give)."""
        e = self.exception(timeout)
        return None if e is None else getattr(e, "__taskfarm_traceback__", None)

    def _wait(self, timeout: float | None) -> None:
        if not self.client._wait_key(self._info, timeout):
            raise TimeoutError(f"future {self.key} did not finish within {timeout} s")

    def add_done_callback(self, fn: Callable[["Future"], Any]) -> None:
        """Call ``fn(future)`` (in the client's event thread) once it is done."""
        self.client._add_callback(self, fn)

    def cancel(self) -> None:
        """Cancel it (see :meth:`Client.cancel`)."""
        self.client.cancel([self])

    def release(self) -> None:
        if self._info is not None:
            self._info = None  # type: ignore[assignment]
            self.client._dropped.append(self.key)

    def __del__(self) -> None:
        # No lock here: the garbage collector may run this in any thread at
        # any allocation, also one made while this thread holds the client's
        # lock. deque.append is atomic; the client counts drops later.
        try:
            if self._info is not None:
                self.client._dropped.append(self.key)
        except Exception:
            pass

    def __reduce__(self):
        # Futures inside task arguments are dependencies (see _serialize);
        # anywhere else they cannot be pickled.
        raise ser._HasFuture()

    def __repr__(self) -> str:
        return f"<Future: {self.status}, key: {self.key}>"

    def __await__(self):
        raise TypeError("taskfarm futures are not awaitable; use .result() or taskfarm.as_completed")


def _is_future(o: Any) -> bool:
    return type(o) is Future


def _funcname(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if name == "<lambda>":
        return "lambda"
    return str(name)


def _local_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Client:
    """Connect to a taskfarm scheduler, or start a local cluster.

    * ``Client()``: a scheduler and workers in this process (the embedded
      default), Python tasks in executor processes of this interpreter.
    * ``Client(scheduler_file="s.json")``: the scheduler that file names
      (waiting up to ``timeout`` seconds for it to appear).
    * ``Client("tcp://host:port")``: that scheduler, with the secret from
      ``secret=`` or ``$TASKFARM_SECRET`` (hex, as in the scheduler file).

    With no address, ``$TASKFARM_SCHEDULER_FILE`` (set by ``taskfarm mpi``
    for its batch command, and so after :func:`taskfarm.mpi.initialize`)
    counts as ``scheduler_file=``, as ``distributed.Client()`` joins the
    scheduler that dask-mpi set up.

    ``scheduler_timeout`` (seconds, default 60): a scheduler that says
    nothing for this long (it pings every 5 s) is given up on, and every
    pending future fails saying so, instead of waiting forever.

    ``cache=DIR`` gives the local cluster a result cache (``--cache``,
    docs/campaigns.md): tasks whose values are there are loaded instead of
    run. A cluster started elsewhere has the cache its scheduler was
    started with; passing ``cache=`` to it is an error.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        scheduler_file: str | os.PathLike | None = None,
        secret: bytes | str | None = None,
        n_workers: int = 1,
        threads_per_worker: int | None = None,
        local_directory: str | os.PathLike | None = None,
        python: str | os.PathLike | None = None,
        preload: Sequence[str] = (),
        timeout: float = 30.0,
        set_as_default: bool = True,
        cache: str | os.PathLike | None = None,
        scheduler_timeout: float | None = None,
    ):
        self._cluster = None
        self._closed = False
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        self._to_release: list[str] = []
        # keys of futures dropped (garbage-collected or released), not yet counted
        self._dropped: "collections.deque[str]" = collections.deque()
        self._functions: "collections.OrderedDict[int, tuple[Any, bytes, bytes]]" = collections.OrderedDict()
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()
        if address is None and scheduler_file is None:
            scheduler_file = os.environ.get("TASKFARM_SCHEDULER_FILE") or None
        if address is None and scheduler_file is None:
            import tempfile

            threads = threads_per_worker or _local_threads()
            directory = local_directory or tempfile.gettempdir()
            self._cluster = _native.Cluster(n_workers, threads, os.fspath(directory), os.fspath(python or sys.executable), list(preload),
                                            None if cache is None else os.fspath(cache))
            self._session = _native.Session.connect(self._cluster.address, bytes(self._cluster.secret))
        elif cache is not None:
            raise ValueError("cache= is for the local cluster Client() starts; a scheduler started elsewhere takes --cache DIR itself")
        elif scheduler_file is not None:
            self._session = _native.Session.from_scheduler_file(os.fspath(scheduler_file), float(timeout))
        else:
            if secret is None:
                secret = os.environ.get("TASKFARM_SECRET")
            if secret is None:
                raise ValueError(f"connecting to {address} needs the scheduler's secret: pass secret= or set $TASKFARM_SECRET (hex, as in the scheduler file); or use scheduler_file=")
            if isinstance(secret, str):
                secret = bytes.fromhex(secret)
            self._session = _native.Session.connect(str(address), bytes(secret))
        if scheduler_timeout is not None:
            self._session.set_scheduler_timeout(float(scheduler_timeout))
        self._events = threading.Thread(target=self._event_loop, name="taskfarm-client-events", daemon=True)
        self._events.start()
        _clients.add(self)
        if set_as_default:
            _default.append(self)
            _dask_scheduler(self)

    # ---- context manager, closing ---------------------------------------

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect (the scheduler forgets what only this client wanted);
        a local cluster is stopped, its executors with it."""
        if self._closed:
            return
        self._closed = True
        self._events.join(timeout=5)
        self._session.close()
        if self._cluster is not None:
            self._cluster.close()
        if self in _default:
            _default.remove(self)
            _dask_scheduler(_default[-1] if _default else None, leaving=self)

    def shutdown(self) -> None:
        """Stop the scheduler and all its workers, then close."""
        if not self._closed:
            try:
                self._session.shutdown()
            finally:
                self.close()

    @property
    def scheduler_address(self) -> str:
        return self._session.address

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._session.address
        return f"<taskfarm.Client: {state}{' (local cluster)' if self._cluster else ''}>"

    # ---- keys and references -------------------------------------------------

    def _ref(self, key: str) -> _Key:
        with self._lock:
            info = self._keys.get(key)
            if info is None:
                info = self._keys[key] = _Key()
            info.refs += 1
            return info

    def _count_drops(self) -> None:
        """Count the dropped futures: a key none refers to any more is
        released on the cluster (by the event thread, every 0.2 s at most)."""
        dropped = self._dropped
        with self._lock:
            while dropped:
                key = dropped.popleft()
                info = self._keys.get(key)
                if info is None:
                    continue
                info.refs -= 1
                if info.refs <= 0:
                    del self._keys[key]
                    self._to_release.append(key)

    def _flush_releases(self) -> None:
        self._count_drops()
        with self._lock:
            # A key wanted again since (a new future of it) stays. Sent under
            # the lock, so a new submission of a released key goes after it.
            keys = [k for k in self._to_release if k not in self._keys]
            self._to_release = []
            if keys and not self._closed:
                try:
                    self._session.release(keys)
                except OSError:
                    pass

    def _event_loop(self) -> None:
        while not self._closed:
            try:
                events = self._session.events(0.2)
            except Exception:
                return
            self._flush_releases()
            for kind, key, text in events:
                if kind == "lost":
                    with self._lock:
                        infos = [(k, i) for k, i in self._keys.items() if i.status == _PENDING]
                    for k, i in infos:
                        self._settle(k, i, _LOST, text)
                    continue
                if kind == "stuck":
                    print(f"taskfarm: task {key} cannot run on any connected worker yet: {text}", file=sys.stderr)
                    continue
                with self._lock:
                    info = self._keys.get(key)
                if info is not None and info.status == _PENDING:
                    self._settle(key, info, _FINISHED if kind == "finished" else _ERROR, text or None)

    def _settle(self, key: str, info: _Key, status: str, error: str | None) -> None:
        # under the lock: a waiter or a callback added meanwhile is not missed
        with self._lock:
            info.status, info.error = status, error
            event = info.event
            callbacks, info.callbacks = info.callbacks, []
        if event is not None:
            event.set()
        for cb in callbacks:
            self._call_back(cb, key)

    def _wait_key(self, info: _Key, timeout: float | None) -> bool:
        """Wait until the key is settled; False if ``timeout`` ran out."""
        if info.status != _PENDING:
            return True
        with self._lock:
            if info.status != _PENDING:
                return True
            if info.event is None:
                info.event = threading.Event()
            event = info.event
        return event.wait(timeout)

    def _unique(self, name: str) -> str:
        """A key of its own for an impure call (as uuid4, but cheaper): this
        client's random prefix and a counter."""
        return f"{name}-{self._prefix}{next(self._counter):x}"

    def _call_back(self, cb: Callable[[Future], Any], key: str) -> None:
        try:
            cb(Future(key, self))
        except Exception as e:  # a callback's error must not stop the client
            print(f"taskfarm: a done-callback of {key} raised {e!r}", file=sys.stderr)

    def _add_callback(self, future: Future, fn: Callable[[Future], Any]) -> None:
        info = future._info
        with self._lock:
            if info.status == _PENDING:
                info.callbacks.append(fn)
                return
        self._call_back(fn, future.key)

    # ---- submitting ------------------------------------------------------------

    def _function(self, fn: Callable) -> tuple[bytes, bytes]:
        entry = self._functions.get(id(fn))
        if entry is not None and entry[0] is fn:
            return entry[1], entry[2]
        h, data = ser.function_payload(fn)
        self._functions[id(fn)] = (fn, h, data)
        if len(self._functions) > 100:
            self._functions.popitem(last=False)
        return h, data

    def _task(self, fn, args, kwargs, key, pure, fh, fb, priority, resources, workers, retries, timeout, order):
        payload, deps = ser.args_payload(args, kwargs, _is_future)
        if key is None:
            name = _funcname(fn)
            if pure:
                key = f"{name}-{ser.token(fh, payload, chr(0).join(deps).encode())}"
            else:
                key = self._unique(name)
        res = sorted((str(k), float(v)) for k, v in (resources or {}).items())
        if workers is None:
            ws = []
        elif isinstance(workers, str):
            ws = [workers]
        else:
            ws = [str(w) for w in workers]
        return (key, deps, "call", fh, fb, payload, sys.executable,
                (int(priority), int(retries or 0), res, ws, None if timeout is None else float(timeout), order,
                 None if pure else False))

    def _send(self, tasks: list, keys: list[str]) -> None:
        if self._closed:
            raise RuntimeError("the client is closed")
        self._session.submit(tasks, keys)

    def submit(self, fn: Callable, *args, key: str | None = None, pure: bool = True, priority: int = 0,
               resources: dict[str, float] | None = None, workers: str | Sequence[str] | None = None,
               retries: int = 0, timeout: float | None = None, **kwargs) -> Future:
        """Run ``fn(*args, **kwargs)`` on the cluster; return its :class:`Future`.

        ``pure=True`` (the default, as Dask) names the task by a hash of the
        function and arguments, so the same call twice is computed once;
        ``pure=False`` gives every call its own key. ``resources`` (e.g.
        ``{"gpus": 1}``) must be offered by a worker; ``workers`` restricts
        it to workers by name or address; ``retries`` reruns a failed task;
        ``timeout`` (s) fails it when it runs longer.
        """
        if not callable(fn):
            raise TypeError(f"submit needs a callable, got {type(fn).__name__}")
        fh, fb = self._function(fn)
        task = self._task(fn, args, kwargs, key, pure, fh, fb, priority, resources, workers, retries, timeout, 0)
        k = task[0]
        future = Future(k, self)
        self._send([task], [k])
        return future

    def map(self, fn: Callable, *iterables: Iterable, key: str | Sequence[str] | None = None, pure: bool = True,
            batch_size: int | None = None, priority: int = 0, resources: dict[str, float] | None = None,
            workers: str | Sequence[str] | None = None, retries: int = 0, timeout: float | None = None,
            **kwargs) -> list[Future]:
        """``submit`` for each element of the iterables, as ``Client.map``:
        one future per call, in order. ``key`` may be a list of keys or a
        prefix; ``batch_size`` submits the tasks in batches of that many
        (default: all in one message per 10,000)."""
        if not callable(fn):
            raise TypeError(f"map needs a callable, got {type(fn).__name__}")
        items = list(zip(*iterables))
        if isinstance(key, (list, tuple)) and len(key) != len(items):
            raise ValueError(f"map got {len(key)} keys for {len(items)} calls")
        fh, fb = self._function(fn)
        futures: list[Future] = []
        batch = max(1, batch_size or 10_000)
        tasks, keys = [], []
        for i, args in enumerate(items):
            if isinstance(key, (list, tuple)):
                k = key[i]
            elif isinstance(key, str):
                k = f"{key}-{i}" if not pure else None
            else:
                k = None
            t = self._task(fn, args, kwargs, k, pure, fh, fb, priority, resources, workers, retries, timeout, i)
            if isinstance(key, str) and pure:
                t = (f"{key}-{t[0].rsplit('-', 1)[-1]}",) + t[1:]
            futures.append(Future(t[0], self))
            tasks.append(t)
            keys.append(t[0])
            if len(tasks) >= batch:
                self._send(tasks, keys)
                tasks, keys = [], []
        if tasks:
            self._send(tasks, keys)
        return futures

    def scatter(self, data: Any, broadcast: bool = False, hash: bool = True) -> Any:
        """Put data on the cluster: a list, tuple or dict gives futures in
        the same shape, anything else one future. ``broadcast`` is accepted
        for Dask compatibility: taskfarm copies a value to each worker that
        needs it, when it needs it."""
        if isinstance(data, dict):
            keys = list(data)
            futures = self.scatter([data[k] for k in keys], broadcast=broadcast, hash=hash)
            return dict(zip(keys, futures))
        if isinstance(data, (list, tuple)):
            items = list(data)
            single = False
        else:
            items, single = [data], True
        tasks, keys, futures = [], [], []
        for x in items:
            payload = ser.value_payload(x)
            k = f"{type(x).__name__}-{ser.token(payload)}" if hash else self._unique(type(x).__name__)
            tasks.append((k, [], "value", b"", b"", payload, "", (0, 0, [], [], None, 0, None)))
            keys.append(k)
            futures.append(Future(k, self))
        self._send(tasks, keys)
        if single:
            return futures[0]
        return type(data)(futures) if isinstance(data, tuple) else futures

    # ---- results ---------------------------------------------------------------

    def _values(self, keys: list[str], timeout: float | None, errors: str = "raise") -> list[Any]:
        out = []
        cancelled = [k for k in keys if (i := self._keys.get(k)) is not None and i.status == _CANCELLED]
        if cancelled:
            # the scheduler forgot them: asking would only say "not wanted"
            if errors == "raise":
                raise CancelledError(cancelled[0])
            live = [k for k in keys if k not in cancelled]
            values = iter(self._values(live, timeout, errors) if live else [])
            return [
                (CancelledError(k) if errors == "return" else _SKIP) if k in cancelled else next(values)
                for k in keys
            ]
        got = self._session.values(keys, timeout)
        for k, (ok, tag, body) in zip(keys, got):
            if ok:
                out.append(ser.decode(tag, body))
                continue
            info = self._keys.get(k)
            if info is not None and info.status == _CANCELLED:
                exc: BaseException = CancelledError(k)
            else:
                exc = ser.exception_from(body, _native.error_parts)
            if errors == "raise":
                raise exc
            out.append(exc if errors == "return" else _SKIP)
        return out

    def gather(self, futures: Any, errors: str = "raise") -> Any:
        """The values of futures, in the same structure (a future, or lists,
        tuples, sets and dicts of them). ``errors="raise"`` raises the first
        failure; ``"skip"`` leaves failed ones out of lists."""
        found: list[Future] = []

        def collect(x):
            if type(x) is Future:
                found.append(x)
            elif isinstance(x, (list, tuple, set, frozenset)):
                for y in x:
                    collect(y)
            elif isinstance(x, dict):
                for y in x.values():
                    collect(y)

        collect(futures)
        distinct = list(dict.fromkeys(f.key for f in found))
        values = dict(zip(distinct, self._values(distinct, None, "raise" if errors == "raise" else "skip")))

        def build(x):
            if type(x) is Future:
                return values[x.key]
            if isinstance(x, (list, tuple, set, frozenset)):
                items = [build(y) for y in x]
                items = [y for y in items if y is not _SKIP]
                return type(x)(items) if not isinstance(x, list) else items
            if isinstance(x, dict):
                return {k: v for k, v in ((k, build(y)) for k, y in x.items()) if v is not _SKIP}
            return x

        return build(futures)

    def cancel(self, futures: Iterable[Future] | Future, force: bool = False) -> None:
        """Cancel futures: their results are not kept and waiting on them
        raises ``CancelledError``. A task no client wants any more is
        stopped: not started if it has not, and if it is running its process
        (a command, or the Python executor running it) is killed."""
        if isinstance(futures, Future):
            futures = [futures]
        keys = []
        for f in futures:
            info = f._info
            if info is not None and info.status == _PENDING:
                self._settle(f.key, info, _CANCELLED, "cancelled")
                keys.append(f.key)
        if keys:
            self._session.release(keys)

    # ---- cluster ---------------------------------------------------------------

    def scheduler_info(self) -> dict:
        """The scheduler's status (the fields of ``taskfarm status --json``)."""
        import json

        return json.loads(self._session.status_json())

    @property
    def dashboard_link(self) -> str | None:
        """The scheduler's dashboard URL, token included, as Dask's
        ``Client.dashboard_link`` (None when it serves none, e.g. the local
        cluster of ``Client()``). See docs/observability.md."""
        return self.scheduler_info().get("dashboard") or None

    def nthreads(self) -> dict[str, int]:
        """Threads per worker, by worker name."""
        return {w["name"]: w["nthreads"] for w in self.scheduler_info()["workers"]}

    def wait_for_workers(self, n_workers: int = 1, timeout: float | None = None) -> None:
        """Wait until at least ``n_workers`` workers are connected."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.01
        while len(self.scheduler_info()["workers"]) < n_workers:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {n_workers} workers after {timeout} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    # ---- running code on every worker ----------------------------------------------

    def register_plugin(self, plugin: Any, name: str | None = None) -> None:
        """Run ``plugin`` once in every Python executor of every worker, now
        (before each executor's next task) and in every executor started
        later, also on workers that join later, as Dask's worker plugins:
        ``plugin`` is a callable, or an object with a ``setup()`` method
        (Dask's ``WorkerPlugin``; ``setup(worker)`` gets ``worker=None``).
        A plugin of the same ``name`` (default: its ``name`` attribute, else
        its type's name) is replaced. A plugin that raises fails the tasks
        that were to run after it in that executor, with its traceback."""
        if not callable(plugin) and not callable(getattr(plugin, "setup", None)):
            raise TypeError(f"a plugin is a callable or has a setup() method; got {type(plugin).__name__}")
        if name is None:
            name = getattr(plugin, "name", None) or (_funcname(plugin) if callable(plugin) and not hasattr(plugin, "setup") else type(plugin).__name__)
        import cloudpickle

        self._session.register_plugin(str(name), cloudpickle.dumps(plugin, protocol=5))

    def run(self, function: Callable, *args: Any, workers: Sequence[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Run ``function(*args, **kwargs)`` once on each worker (in one of
        its Python executors) and return ``{worker address: result}``, as
        ``distributed.Client.run``; ``workers`` limits it to those names or
        addresses. (For code every executor must run, use
        :meth:`register_plugin`.)"""
        targets = [w for w in self.scheduler_info()["workers"]
                   if workers is None or w["name"] in workers or w["address"] in workers]
        futures = {w["address"]: self.submit(function, *args, workers=[w["address"]], pure=False, **kwargs) for w in targets}
        return self.gather(futures)

    # ---- datasets ------------------------------------------------------------------

    def publish_dataset(self, *args: Any, name: str | None = None, override: bool = False, **kwargs: Any) -> None:
        """Keep futures (or what holds them: lists, dicts, persisted Dask
        collections) on the cluster under a name, for any client to find with
        :meth:`get_dataset`, as ``distributed.Client.publish_dataset``:
        ``publish_dataset(result=x)`` or ``publish_dataset(x, name="result")``.
        The data stays until :meth:`unpublish_dataset`, also after this
        client leaves. A name already published raises ``KeyError`` unless
        ``override=True``."""
        if args:
            if name is None or len(args) != 1:
                raise TypeError("publish_dataset takes name=value keywords, or one value and name=")
            kwargs = {name: args[0]}
        for n, value in kwargs.items():
            data, keys = ser.dataset_payload(value, _is_future)
            try:
                self._session.publish_dataset(str(n), keys, data, bool(override))
            except ValueError as e:
                raise (KeyError if "already published" in str(e) else ValueError)(str(e)) from None

    def get_dataset(self, name: str, default: Any = _NO_DEFAULT) -> Any:
        """The object published under ``name``, with live futures in it (this
        client now holds its data too). Raises ``KeyError`` if there is none
        and no ``default`` is given."""
        found = self._session.get_dataset(str(name))
        if found is None:
            if default is _NO_DEFAULT:
                raise KeyError(f"no dataset named {name!r} is published on {self.scheduler_address} (published: {', '.join(self.list_datasets()) or 'none'})")
            return default
        keys, data = found
        futures = [Future(k, self) for k in keys]
        if keys:
            self._send([], list(keys))
        return ser.dataset_value(bytes(data), futures)

    def unpublish_dataset(self, name: str) -> None:
        """Forget the dataset ``name`` (its data stays while futures of it are held)."""
        self._session.unpublish_dataset(str(name))

    def list_datasets(self) -> tuple[str, ...]:
        """The names of the published datasets."""
        return tuple(self._session.list_datasets())

    # ---- dask ----------------------------------------------------------------------

    def get(self, dsk: Any, keys: Any, **kwargs) -> Any:
        """A Dask scheduler ``get``: ``dask.compute(x, scheduler=client.get)``."""
        from ._dask import get

        return get(self, dsk, keys, **kwargs)

    def compute(self, collections: Any, sync: bool = False, **kwargs) -> Any:
        """Futures of Dask collections (one per collection, or a list)."""
        from ._dask import compute

        return compute(self, collections, sync=sync, **kwargs)

    def persist(self, collections: Any, **kwargs) -> Any:
        """Dask collections whose data stays on the cluster, for later computations."""
        from ._dask import persist

        return persist(self, collections, **kwargs)


_SKIP = object()


def _dask_scheduler(client: "Client | None", leaving: "Client | None" = None) -> None:
    """As ``distributed.Client`` does, the default client is Dask's default
    scheduler: ``x.compute()`` and ``dask.compute(x)`` run on it. Only when
    Dask is installed; a scheduler set by the user is left alone (and
    ``with dask.config.set(scheduler=...)`` still wins inside its block)."""
    import importlib.util

    if "dask" not in sys.modules and importlib.util.find_spec("dask") is None:
        return
    import dask

    current = dask.config.get("scheduler", None)
    ours = getattr(current, "__self__", None)
    if current is not None and not (type(ours) is Client and (ours is leaving or ours in _default)):
        return  # the user's choice
    dask.config.set(scheduler=client.get if client is not None else None)


@atexit.register
def _close_all() -> None:
    for c in list(_clients):
        try:
            c.close()
        except Exception:
            pass
