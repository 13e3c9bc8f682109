"""HyperQueue side of bench/commands.sh: N tasks each running `true`, on a
HyperQueue LocalCluster (its server and one worker with CORES cores, started
by the `hyperqueue` PyPI wheel, which carries HyperQueue's Rust server and
worker). Prints the seconds from submitting the job to its completion; the
cluster is started, and a one-task job run, before the clock starts. Task
output goes nowhere (no stdout/stderr files), as with taskfarm and xargs.

    python hq_commands.py N CORES
"""
import sys
import tempfile
import time

from hyperqueue import Job, LocalCluster
from hyperqueue.cluster import WorkerConfig

n, cores = int(sys.argv[1]), int(sys.argv[2])
with tempfile.TemporaryDirectory() as d, LocalCluster(d, WorkerConfig(cores=cores)) as cluster:
    client = cluster.client()
    warm = Job()
    warm.program(["true"], stdout=None, stderr=None)
    client.wait_for_jobs([client.submit(warm)])
    job = Job()
    for _ in range(n):
        job.program(["true"], stdout=None, stderr=None)
    start = time.perf_counter()
    submitted = client.submit(job)
    client.wait_for_jobs([submitted])
    print(f"{time.perf_counter() - start:.4f}")
