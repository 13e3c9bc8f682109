"""taskfarm: run Python task graphs on HPC machines with Dask's and joblib's APIs.

>>> import taskfarm
>>> client = taskfarm.Client()            # a local cluster in the background
>>> client.submit(lambda x: x + 1, 1).result()
2

``Client(scheduler_file=...)`` joins a cluster started by ``taskfarm mpi``,
``taskfarm scheduler`` or a job queue. See docs/python.md.
"""

from ._client import CancelledError, Client, Future, TaskError, default_client
from ._memory import Memory, MemorizedFunc
from ._native import VERSION as __version__
from ._progress import progress
from ._waiting import as_completed, futures_of, wait

__all__ = ["Client", "Future", "Memory", "MemorizedFunc", "as_completed", "wait", "futures_of", "progress", "default_client", "TaskError", "CancelledError", "__version__"]
