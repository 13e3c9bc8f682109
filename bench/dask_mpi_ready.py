"""dask-mpi side of bench/mpi_ready.sh: rank 1 writes the time at which two
workers are registered to the file given as argument, then shuts down."""
import sys
import time

import dask_mpi
from distributed import Client


def main():
    # dask-mpi 2026.x needs the worker class named explicitly (see shared lab notes).
    dask_mpi.initialize(worker_class="distributed.Worker", interface="lo", dashboard=False)
    with Client() as client:
        client.wait_for_workers(2)
        with open(sys.argv[1], "w") as f:
            f.write(f"{time.time():.6f}\n")


if __name__ == "__main__":
    main()
