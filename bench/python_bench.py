"""The Python client beside its peers, in the same run, repetitions
alternating: (a) N no-op submits + gather, (b) a dask.array reduction,
(c) joblib Parallel of many tiny calls. Prints per-system medians and the
ratios to taskfarm. Sizes from the environment (N, SIDE, JOBS, REPS);
SMOKE=1 runs taskfarm only at tiny sizes."""

import concurrent.futures
import math
import os
import statistics
import sys
import time

import taskfarm

SMOKE = os.environ.get("SMOKE") == "1"
N = int(os.environ.get("N", 200 if SMOKE else 10_000))
SIDE = int(os.environ.get("SIDE", 400 if SMOKE else 4000))
JOBS = int(os.environ.get("JOBS", 500 if SMOKE else 20_000))
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


def main():
    import dask
    import dask.array as da
    import joblib
    import taskfarm.joblib  # noqa: F401

    tf = taskfarm.Client(n_workers=1, threads_per_worker=THREADS, set_as_default=False)
    systems = {"taskfarm": tf}
    if not SMOKE:
        from distributed import Client as DaskClient, LocalCluster

        cluster = LocalCluster(n_workers=1, threads_per_worker=THREADS, processes=True, dashboard_address=None)
        systems["dask distributed"] = DaskClient(cluster, set_as_default=False)
        pool = concurrent.futures.ProcessPoolExecutor(THREADS)
        list(pool.map(noop, range(THREADS * 4)))  # started

    # (a) no-op tasks
    results = {}
    for rep in range(REPS):
        for name, c in systems.items():
            def run(c=c, rep=rep):
                fs = c.map(noop, range(N), key=[f"noop-{rep}-{i}" for i in range(N)], pure=False)
                assert c.gather(fs) == list(range(N))
            results.setdefault(name, []).append(timed(run))
        if not SMOKE:
            def run_pool():
                fs = [pool.submit(noop, i) for i in range(N)]
                assert [f.result() for f in fs] == list(range(N))
            results.setdefault("ProcessPoolExecutor(2)", []).append(timed(run_pool))
    report(f"(a) {N:,} no-op submits + gather, 1 worker x {THREADS} threads", results, N, "tasks")

    # (b) dask.array
    x = da.random.RandomState(0).random_sample((SIDE, SIDE), chunks=(SIDE // 10, SIDE // 10))
    y = (x + x.T).mean()
    expected = y.compute(scheduler="threads")
    results = {}
    for _ in range(REPS):
        for name, c in systems.items():
            def run(c=c):
                got = dask.compute(y, scheduler=c.get)[0]
                assert abs(got - expected) < 1e-9
            results.setdefault(name, []).append(timed(run))
        if not SMOKE:
            results.setdefault("dask threads (local)", []).append(timed(lambda: y.compute(scheduler="threads")))
    report(f"(b) dask.array ({SIDE}x{SIDE}, 100 chunks): (x + x.T).mean()", results, 0, "")

    # (c) joblib
    expected = [math.sqrt(i) for i in range(JOBS)]
    results = {}
    for _ in range(REPS):
        with joblib.parallel_config(backend="taskfarm", client=tf):
            results.setdefault("taskfarm", []).append(
                timed(lambda: joblib.Parallel(n_jobs=-1)(joblib.delayed(math.sqrt)(i) for i in range(JOBS)) == expected or sys.exit("wrong"))
            )
        if not SMOKE:
            results.setdefault("joblib loky (2)", []).append(
                timed(lambda: joblib.Parallel(n_jobs=THREADS, backend="loky")(joblib.delayed(math.sqrt)(i) for i in range(JOBS)) == expected or sys.exit("wrong"))
            )
            with joblib.parallel_config(backend="dask", client=systems["dask distributed"]):
                results.setdefault("joblib dask backend", []).append(
                    timed(lambda: joblib.Parallel(n_jobs=-1)(joblib.delayed(math.sqrt)(i) for i in range(JOBS)) == expected or sys.exit("wrong"))
                )
    report(f"(c) joblib Parallel(n_jobs=-1), {JOBS:,} calls of math.sqrt", results, JOBS, "calls")
    tf.close()
    if not SMOKE:
        pool.shutdown()


if __name__ == "__main__":
    main()
