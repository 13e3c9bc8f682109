"""The Python client beside its peers, in the same run, repetitions
alternating, as issue 18 measures them:
  (a) N no-op calls by map + gather, 1 worker x 2 threads (each its own task
      and result), beside Dask distributed, Ray and ProcessPoolExecutor(2)
      with chunksize=1;
  (b) ARRAYS tasks each returning a MB-megabyte numpy array, then one task
      summing them, beside Dask distributed, Ray and a plain loop;
  (c) (x + x.T).mean() of a SIDE x SIDE dask.array in CHUNK x CHUNK chunks
      through client.get, beside distributed, Dask's threads and Ray's
      dask scheduler;
  (d) joblib Parallel of JOBS calls of math.sqrt (batch_size="auto") beside
      loky and joblib's dask backend.
Prints per-system medians and the ratios to taskfarm. Ray is measured when
it is installed (bench/python.sh installs it). SMOKE=1 runs taskfarm only
at tiny sizes."""

import concurrent.futures
import math
import os
import statistics
import sys
import time

import taskfarm

SMOKE = os.environ.get("SMOKE") == "1"
N = int(os.environ.get("N", 200 if SMOKE else 10_000))
ARRAYS = int(os.environ.get("ARRAYS", 3 if SMOKE else 20))
MB = int(os.environ.get("MB", 1 if SMOKE else 50))
SIDE = int(os.environ.get("SIDE", 400 if SMOKE else 8000))
CHUNK = int(os.environ.get("CHUNK", 100 if SMOKE else 500))
JOBS = int(os.environ.get("JOBS", 500 if SMOKE else 10_000))
REPS = int(os.environ.get("REPS", 1 if SMOKE else 3))
THREADS = 2


def noop(x):
    return x


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def report(name, results, unit_count, unit):
    tf = statistics.median(results["taskfarm"])
    print(f"{name}")
    for system, times in results.items():
        med = statistics.median(times)
        rate = f", {unit_count / med:,.0f} {unit}/s" if unit_count else ""
        ratio = "" if system == "taskfarm" else f"  (taskfarm is {med / tf:.1f}x faster)" if med >= tf else f"  (taskfarm takes {tf / med:.2f}x as long)"
        print(f"  {system:<28} median {med:8.3f} s{rate}{ratio}")
    sys.stdout.flush()


def make_array(i):
    import numpy as np

    return np.full(MB * (1 << 20) // 8, float(i))


def add_arrays(*arrays):
    total = arrays[0].copy()
    for a in arrays[1:]:
        total += a
    return float(total[0]), float(total[-1])


def main():
    import dask
    import dask.array as da
    import joblib
    import taskfarm.joblib  # noqa: F401

    tf = taskfarm.Client(n_workers=1, threads_per_worker=THREADS, set_as_default=False)
    dask_client = ray = None
    if not SMOKE:
        from distributed import Client as DaskClient, LocalCluster

        cluster = LocalCluster(n_workers=1, threads_per_worker=THREADS, processes=True, dashboard_address=None)
        dask_client = DaskClient(cluster, set_as_default=False)
        pool = concurrent.futures.ProcessPoolExecutor(THREADS)
        list(pool.map(noop, range(THREADS * 4)))  # started
        try:
            import ray
        except ImportError:
            print("(ray is not installed: measured without it)")
        else:
            ray.init(num_cpus=THREADS, include_dashboard=False, log_to_driver=False)
            ray_noop, ray_make, ray_add = (ray.remote(f) for f in (noop, make_array, add_arrays))
            ray.get([ray_noop.remote(i) for i in range(THREADS * 4)])  # workers started
    clients = {"taskfarm": tf, "dask distributed": dask_client}
    clients = {k: v for k, v in clients.items() if v is not None}

    # (a) no-op tasks
    results = {}
    for rep in range(REPS):
        for name, c in clients.items():
            def run(c=c, rep=rep):
                fs = c.map(noop, range(N), key=[f"noop-{rep}-{i}" for i in range(N)], pure=False)
                assert c.gather(fs) == list(range(N))
            results.setdefault(name, []).append(timed(run))
        if ray is not None:
            results.setdefault("ray", []).append(timed(lambda: ray.get([ray_noop.remote(i) for i in range(N)]) == list(range(N)) or sys.exit("wrong")))
        if not SMOKE:
            results.setdefault("ProcessPoolExecutor(2)", []).append(
                timed(lambda: list(pool.map(noop, range(N), chunksize=1)) == list(range(N)) or sys.exit("wrong")))
    report(f"(a) {N:,} no-op calls by map + gather, 1 worker x {THREADS} threads", results, N, "tasks")

    # (b) large values
    want = (float(sum(range(ARRAYS))), float(sum(range(ARRAYS))))
    results = {}
    for rep in range(REPS):
        for name, c in clients.items():
            def run(c=c):
                parts = [c.submit(make_array, i, pure=False) for i in range(ARRAYS)]
                assert c.submit(add_arrays, *parts, pure=False).result() == want
            results.setdefault(name, []).append(timed(run))
        if ray is not None:
            results.setdefault("ray", []).append(timed(lambda: ray.get(ray_add.remote(*[ray_make.remote(i) for i in range(ARRAYS)])) == want or sys.exit("wrong")))
        if not SMOKE:
            results.setdefault("sequential (one process)", []).append(timed(lambda: add_arrays(*[make_array(i) for i in range(ARRAYS)]) == want or sys.exit("wrong")))
    report(f"(b) {ARRAYS} tasks each returning a {MB} MB numpy array, then one task summing them", results, 0, "")

    # (c) dask.array
    x = da.random.RandomState(0).random_sample((SIDE, SIDE), chunks=(CHUNK, CHUNK))
    y = (x + x.T).mean()
    expected = y.compute(scheduler="threads")
    getters = {name: c.get for name, c in clients.items()}
    if not SMOKE:
        getters["dask threads (local)"] = "threads"
    if ray is not None:
        try:
            from ray.util.dask import ray_dask_get
        except ImportError as e:  # it imports dask.dataframe: pandas, pyarrow
            print(f"(ray's dask scheduler cannot be imported: {e}; measured without it)")
        else:
            getters["ray's dask scheduler"] = ray_dask_get
    results = {}
    for _ in range(REPS):
        for name, get in getters.items():
            def run(get=get):
                got = dask.compute(y, scheduler=get)[0]
                assert abs(got - expected) < 1e-9
            results.setdefault(name, []).append(timed(run))
    nchunks = (SIDE // CHUNK) ** 2
    report(f"(c) dask.array ({SIDE}x{SIDE}, {nchunks} chunks of {CHUNK}x{CHUNK}): (x + x.T).mean()", results, 0, "")

    # (d) joblib
    expected = [math.sqrt(i) for i in range(JOBS)]

    def parallel(**kw):
        return joblib.Parallel(**kw)(joblib.delayed(math.sqrt)(i) for i in range(JOBS)) == expected or sys.exit("wrong")

    results = {}
    for _ in range(REPS):
        with joblib.parallel_config(backend="taskfarm", client=tf):
            results.setdefault("taskfarm", []).append(timed(lambda: parallel(n_jobs=-1)))
        if not SMOKE:
            results.setdefault("joblib loky (2)", []).append(timed(lambda: parallel(n_jobs=THREADS, backend="loky")))
            with joblib.parallel_config(backend="dask", client=dask_client):
                results.setdefault("joblib dask backend", []).append(timed(lambda: parallel(n_jobs=-1)))
    report(f"(d) joblib Parallel(n_jobs=-1, batch_size='auto'), {JOBS:,} calls of math.sqrt", results, JOBS, "calls")
    tf.close()
    if not SMOKE:
        pool.shutdown()
        dask_client.close()
        cluster.close()
    if ray is not None:
        ray.shutdown()


if __name__ == "__main__":
    main()
