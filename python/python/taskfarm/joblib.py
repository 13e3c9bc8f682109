"""A joblib backend: ``import taskfarm.joblib`` registers ``"taskfarm"``.

>>> import joblib, taskfarm, taskfarm.joblib
>>> client = taskfarm.Client()
>>> with joblib.parallel_config(backend="taskfarm"):
...     joblib.Parallel(n_jobs=-1)(joblib.delayed(abs)(-i) for i in range(3))
[0, 1, 2]

Each joblib batch is one taskfarm task; ``batch_size="auto"`` (joblib's
auto-batching) sizes the batches so each runs 0.2-1 s. Results come back
through the client's event thread (``supports_retrieve_callback``), so
``return_as="generator"``, ``timeout`` and ``verbose`` work as with loky.
The backend uses ``client=`` if given, else the default client (the last
``taskfarm.Client`` created), else starts a local one.
"""

from __future__ import annotations

import threading
from typing import Any

from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase, SequentialBackend
from joblib.parallel import register_parallel_backend

from ._client import Client, Future, default_client

__all__ = ["TaskfarmBackend"]


class TaskfarmBackend(AutoBatchingMixin, ParallelBackendBase):
    """Run joblib batches as taskfarm tasks."""

    MIN_IDEAL_BATCH_DURATION = 0.2
    MAX_IDEAL_BATCH_DURATION = 1.0
    supports_retrieve_callback = True
    default_n_jobs = -1

    def __init__(self, client: Client | None = None, **submit_kwargs: Any):
        super().__init__()
        self.client = client
        self.submit_kwargs = submit_kwargs
        self._futures: set[Future] = set()
        self._lock = threading.Lock()

    def _get_client(self) -> Client:
        if self.client is None:
            try:
                self.client = default_client()
            except ValueError:
                self.client = Client()
        return self.client

    def configure(self, n_jobs: int = 1, parallel: Any = None, **backend_args: Any) -> int:
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        client = self._get_client()
        client.wait_for_workers(1, timeout=60)
        total = sum(client.nthreads().values())
        if n_jobs is None or n_jobs < 0:
            return max(1, total)
        return max(1, min(n_jobs, total)) if total else max(1, n_jobs)

    def get_nested_backend(self):
        # joblib inside a taskfarm task runs sequentially in its executor.
        return SequentialBackend(nesting_level=1), None

    def submit(self, func, callback=None):
        future = self._get_client().submit(func, pure=False, **self.submit_kwargs)
        with self._lock:
            self._futures.add(future)

        def done(f: Future) -> None:
            with self._lock:
                self._futures.discard(future)
            if callback is not None:
                callback(future)

        future.add_done_callback(done)
        return future

    def retrieve_result_callback(self, out: Future) -> Any:
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        with self._lock:
            pending, self._futures = list(self._futures), set()
        if pending and self.client is not None:
            self.client.cancel(pending)

    def __reduce__(self):
        return (TaskfarmBackend, ())


register_parallel_backend("taskfarm", TaskfarmBackend)
