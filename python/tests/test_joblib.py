"""joblib's Parallel on the taskfarm backend gives what a sequential run gives."""

import math
import os

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_config

import taskfarm
import taskfarm.joblib  # noqa: F401  (registers the "taskfarm" backend)


def test_parallel_n_jobs_minus_1_equals_the_sequential_run(client):
    expected = [math.sqrt(i) for i in range(2000)]
    with parallel_config(backend="taskfarm"):
        got = Parallel(n_jobs=-1)(delayed(math.sqrt)(i) for i in range(2000))
    assert got == expected


def test_return_as_generator_keeps_order_and_runs_in_executors(client):
    def where(i):
        return i * 2, os.getpid()

    with parallel_config(backend="taskfarm"):
        out = list(Parallel(n_jobs=-1, return_as="generator")(delayed(where)(i) for i in range(300)))
    assert [v for v, _ in out] == [2 * i for i in range(300)]
    assert os.getpid() not in {pid for _, pid in out}


def test_numpy_arguments_and_results(client):
    arrays = [np.full(1000, i, dtype="float64") for i in range(20)]
    with parallel_config(backend="taskfarm", n_jobs=-1):
        sums = Parallel()(delayed(np.sum)(a) for a in arrays)
    assert sums == [1000.0 * i for i in range(20)]


def test_an_exception_in_a_task_reaches_the_caller_with_its_type(client):
    def boom(i):
        if i == 7:
            raise ZeroDivisionError(f"task {i}")
        return i

    with parallel_config(backend="taskfarm"), pytest.raises(ZeroDivisionError, match="task 7"):
        Parallel(n_jobs=-1)(delayed(boom)(i) for i in range(20))


def test_the_backend_reports_the_clusters_threads(client):
    from joblib.parallel import get_active_backend

    with parallel_config(backend="taskfarm"):
        backend, n_jobs = get_active_backend()
        assert backend.effective_n_jobs(-1) == sum(client.nthreads().values()) == 2
    assert joblib.__version__


def test_timeout_raises_and_stops_the_running_calls_and_verbose_reports(client, capsys):
    import multiprocessing
    import time

    with parallel_config(backend="taskfarm"):
        # joblib raises multiprocessing's TimeoutError, with loky too
        with pytest.raises(multiprocessing.TimeoutError):
            Parallel(n_jobs=-1, timeout=1)(delayed(time.sleep)(120) for _ in range(2))
        # The sleeping calls were stopped (cancel kills running tasks): the
        # next computation gets both threads at once, well within its own timeout.
        got = Parallel(n_jobs=-1, timeout=60, verbose=10)(delayed(math.sqrt)(i) for i in range(100))
    assert got == [math.sqrt(i) for i in range(100)]
    err = capsys.readouterr().err
    assert "Using backend TaskfarmBackend with 2 concurrent workers" in err, err
    assert "Done 100 out of 100" in err or "Done 100 tasks" in err, err
