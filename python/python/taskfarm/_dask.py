"""Dask collections on taskfarm: a scheduler ``get``, ``compute`` and ``persist``.

Each node of the (materialised) Dask graph becomes one taskfarm task whose
callable is the node itself (``dask._task_spec`` nodes are callables of a
mapping of their dependencies' values); dependencies travel worker to
worker. Keys keep Dask's names (tuple keys as their ``str``), so a
collection computed twice, or persisted and computed again, reuses what is
on the cluster.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

from . import _serialize as ser
from ._client import Client, Future


class _Dep:
    """Marks where a dependency's value goes in a node's argument mapping."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key

    def __reduce__(self):
        # Only the dependency pickler (a persistent id) may take it.
        raise ser._HasFuture()


def _is_dep_or_future(o: Any) -> bool:
    return type(o) is _Dep or type(o) is Future


_CALL = ser.function_payload(operator.call)


def _name(key: Any) -> str:
    return key if isinstance(key, str) else str(key)


def _flatten(keys: Any) -> list:
    out = []

    def walk(x):
        if isinstance(x, list):
            for y in x:
                walk(y)
        else:
            out.append(x)

    walk(keys)
    return out


def _graph(dsk: Any) -> dict:
    from dask._task_spec import convert_legacy_graph

    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    return convert_legacy_graph(dict(dsk))


def _submit_graph(client: Client, dsk: Any, wanted: list) -> list[Future]:
    """Submit every node of the graph; return futures of the wanted keys."""
    from dask._task_spec import Alias

    graph = _graph(dsk)
    try:
        from dask.order import order

        priorities = order(graph)
    except Exception:
        priorities = {}
    tasks = []
    fh, fb = _CALL
    python = _python()
    for key, node in graph.items():
        name = _name(key)
        if isinstance(node, Alias) and node.target == key:
            continue  # a persisted key already on the cluster
        deps = sorted(node.dependencies, key=_name)
        values = {d: _Dep(_name(d)) for d in deps}
        # The task is operator.call(node, values): one function for every
        # node (unpickled once per executor); the node travels with its
        # arguments, and client futures inside it become dependencies too.
        payload, dep_names = ser.args_payload((node, values), {}, _is_dep_or_future)
        tasks.append((name, dep_names, "call", fh, fb, payload, python, (0, 0, [], [], None, int(priorities.get(key, 0)), None)))
    futures = [Future(_name(k), client) for k in wanted]
    client._send(tasks, [f.key for f in futures])
    return futures


def _python() -> str:
    import sys

    return sys.executable


def get(client: Client, dsk: Any, keys: Any, **kwargs) -> Any:
    """Compute ``keys`` of a Dask graph (a Mapping, or what ``dask.compute``
    passes: an object with ``__dask_graph__``) on the cluster and return
    their values in the structure of ``keys``."""
    flat = _flatten(keys) if isinstance(keys, list) else [keys]
    futures = _submit_graph(client, dsk, flat)
    distinct = list(dict.fromkeys(f.key for f in futures))
    values = dict(zip(distinct, client._values(distinct, None)))

    def build(k):
        if isinstance(k, list):
            return [build(x) for x in k]
        return values[_name(k)]

    return build(keys)


def persist(client: Client, collections: Any, **kwargs) -> Any:
    """Collections whose data stays on the cluster (as futures in their
    graphs): computing them later runs none of their tasks again."""
    single = not isinstance(collections, (list, tuple))
    colls = [collections] if single else list(collections)
    out = []
    for c in colls:
        keys = _flatten(c.__dask_keys__())
        futures = _submit_graph(client, c.__dask_graph__(), keys)
        rebuild, args = c.__dask_postpersist__()
        out.append(rebuild({k: f for k, f in zip(keys, futures)}, *args))
    return out[0] if single else type(collections)(out)


def _finalizer(finalize, extra):
    return lambda parts: finalize(parts, *extra)


def compute(client: Client, collections: Any, sync: bool = False, **kwargs) -> Any:
    """A future per collection (its final value), or the values if ``sync``."""
    single = not isinstance(collections, (list, tuple))
    colls = [collections] if single else list(collections)
    out = []
    for c in colls:
        keys = c.__dask_keys__()
        flat = _flatten(keys) if isinstance(keys, list) else [keys]
        futures = dict(zip(map(_name, flat), _submit_graph(client, c.__dask_graph__(), flat)))

        def nest(k):
            return [nest(x) for x in k] if isinstance(k, list) else futures[_name(k)]

        finalize, extra = c.__dask_postcompute__()
        out.append(client.submit(_finalizer(finalize, extra), nest(keys), pure=False))
    if sync:
        out = client.gather(out)
    return out[0] if single else out
