"""``dask_mpi.initialize()`` for taskfarm: a script started by ``mpirun``
(or ``srun``) directly becomes a whole cluster::

    # mpirun -np 4 python script.py
    import taskfarm, taskfarm.mpi
    taskfarm.mpi.initialize()             # rank 0: scheduler, 2..: workers
    client = taskfarm.Client()            # rank 1 goes on: the client
    ...

Every rank replaces itself (``exec``) with ``taskfarm mpi ... -- python
script.py ...``, which gives the ranks their roles as in batch mode: rank 0
schedules, ranks 2 and up are workers, and rank 1 runs the script again, in
which ``initialize()`` returns at once and ``Client()`` connects to the job's
scheduler (through ``$TASKFARM_SCHEDULER_FILE``). When the script ends, the
cluster shuts down and the job exits with the script's status. The script's
lines before ``initialize()`` run twice on rank 1: keep them to imports.
It needs the ``taskfarm`` binary: on ``PATH``, or ``binary=`` /
``$TASKFARM_BIN``.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Sequence

__all__ = ["initialize"]

_MARK = "TASKFARM_MPI_INITIALIZED"


def initialize(
    scheduler_file: str | os.PathLike | None = None,
    *,
    nthreads: int | None = None,
    local_directory: str | os.PathLike | None = None,
    interface: str | None = None,
    memory_limit: str | None = None,
    binary: str | os.PathLike | None = None,
    extra_args: Sequence[str] = (),
) -> None:
    """Turn this MPI job into a taskfarm cluster (see the module docs).
    ``scheduler_file``, ``nthreads``, ``local_directory``, ``interface``
    and ``memory_limit`` are ``taskfarm mpi``'s ``--scheduler-file``,
    ``--nthreads``, ``--local-directory``, ``--interface`` and
    ``--memory-limit``; ``extra_args`` are more of its flags. Returns only on
    rank 1 (in the script that ``taskfarm mpi`` runs there)."""
    if os.environ.get(_MARK) == "1":
        return
    exe = os.fspath(binary) if binary is not None else os.environ.get("TASKFARM_BIN") or shutil.which("taskfarm")
    if not exe or not os.access(exe, os.X_OK):
        raise RuntimeError(
            "taskfarm.mpi.initialize() needs the taskfarm binary: put it on PATH, or pass binary= or set $TASKFARM_BIN"
            + (f" ({exe} is not executable)" if exe else "")
        )
    argv = [exe, "mpi"]
    for flag, value in (("--scheduler-file", scheduler_file), ("--nthreads", nthreads),
                        ("--local-directory", local_directory), ("--interface", interface),
                        ("--memory-limit", memory_limit)):
        if value is not None:
            argv += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    argv += [*extra_args, "--python", sys.executable, "--", sys.executable, *sys.orig_argv[1:]]
    env = dict(os.environ, **{_MARK: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(exe, argv, env)
