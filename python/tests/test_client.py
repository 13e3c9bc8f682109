"""The client API against a real scheduler and workers (stock binary)."""

import os
import subprocess
import sys
import time

import pytest

import taskfarm
from conftest import Cluster, eventually


def test_the_one_liner_prints_2_in_a_fresh_interpreter(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", "import taskfarm; c = taskfarm.Client(); print(c.submit(lambda x: x + 1, 1).result())"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "2\n"


def test_map_of_1000_python_calls_on_two_stock_workers(cluster):
    with cluster.client(2) as c:
        futures = c.map(lambda x: (x * x, os.getppid()), range(1000))
        results = c.gather(futures)
        assert [r[0] for r in results] == [x * x for x in range(1000)]
        # the executors are children of the worker processes; the scheduler
        # spread the 1000 ready tasks over both
        assert {r[1] for r in results} == {p.pid for p in cluster.workers.values()}
        assert len(c.scheduler_info()["workers"]) == 2


def test_a_python_value_crosses_between_workers_peer_to_peer(cluster):
    import numpy as np

    with cluster.client(2) as c:
        made = c.submit(lambda: (np.arange(100_000, dtype="float64"), os.getppid()), workers="w0")
        used = c.submit(lambda v: (float(v[0].sum()), v[1], os.getppid()), made, workers="w1")
        total, maker_worker, user_worker = used.result()
        assert total == float(np.arange(100_000).sum())
        assert maker_worker == cluster.workers["w0"].pid
        assert user_worker == cluster.workers["w1"].pid

        # the counters come with the workers' heartbeats
        def counted():
            by_name = {w["name"]: w for w in c.scheduler_info()["workers"]}
            return by_name["w1"]["fetched_from_peers"] >= 1 and by_name["w0"]["served_to_peers"] >= 1

        eventually(counted, "w1 fetched the value from w0 (scheduler_info counters)")


def test_futures_as_arguments_build_a_three_level_tree(cluster):
    def inc(x):
        return x + 1

    def add(a, b):
        return a + b

    with cluster.client(2) as c:
        leaves = c.map(inc, range(4))
        middle = [c.submit(add, leaves[0], leaves[1]), c.submit(add, leaves[2], leaves[3])]
        top = c.submit(add, middle[0], b=middle[1])
        assert top.result() == sum(x + 1 for x in range(4))
        nested = c.submit(lambda d: d["a"][0] + d["b"], {"a": [leaves[0]], "b": top})
        assert nested.result() == 1 + 10


def test_an_exception_comes_back_with_its_type_and_the_remote_traceback(cluster):
    def user_function_that_fails(x):
        raise KeyError(f"missing {x}")

    with cluster.client(2) as c:
        f = c.submit(user_function_that_fails, 7)
        with pytest.raises(KeyError) as info:
            f.result()
        assert "missing 7" in str(info.value)
        notes = "".join(getattr(info.value, "__notes__", []))
        assert "user_function_that_fails" in notes
        assert "user_function_that_fails" in f.traceback()
        assert isinstance(f.exception(), KeyError)
        assert f.status == "error"


def test_a_task_that_kills_its_executor_fails_and_the_next_task_runs(cluster):
    with cluster.client(2) as c:
        f = c.submit(lambda: os._exit(1), pure=False, workers="w0")
        with pytest.raises(taskfarm.TaskError, match="executor process .* died") as info:
            f.result()
        assert "exited with status 1" in str(info.value)
        assert c.submit(lambda: 41 + 1, workers="w0").result() == 42


def test_a_crash_inside_a_batch_of_short_tasks_fails_only_the_task_that_crashed(cluster):
    # Short tasks reach an executor in batches; when its process dies with
    # several of them unanswered, they run again one at a time, so exactly
    # the culprit fails and every other call returns its value.
    def f(x):
        if x == 1500:
            os._exit(3)
        return x + 1

    with cluster.client(2) as c:
        futures = c.map(f, range(2000), workers="w0")
        taskfarm.wait(futures)
        failed = [i for i, fu in enumerate(futures) if fu.status == "error"]
        assert failed == [1500]
        with pytest.raises(taskfarm.TaskError, match="exited with status 3"):
            futures[1500].result()
        del futures[1500]
        assert c.gather(futures) == [x + 1 for x in range(2000) if x != 1500]


def test_kill_9_of_a_worker_during_a_map_loses_nothing(cluster):
    import time

    def slow(x):
        time.sleep(0.01)
        return x * 3

    with cluster.client(2) as c:
        futures = c.map(slow, range(2000))
        seen = 0
        for _ in taskfarm.as_completed(futures):
            seen += 1
            if seen == 100:
                cluster.workers["w1"].kill()
                break
        assert c.gather(futures) == [x * 3 for x in range(2000)]


def test_values_of_every_kind_round_trip(local_client):
    c = local_client
    for v in [None, True, 3, -2**70, 2.5, float("inf"), "text", b"\x00bytes", (1, 2), [1, [2, "x"]], {"a": 1}, {1: "int key"}, {1, 2}]:
        assert c.submit(lambda x: x, v).result() == v
        assert type(c.submit(lambda x: x, v).result()) is type(v)


def test_scatter_gather_structures_and_pure_keys(local_client):
    c = local_client
    data = c.scatter({"a": 1, "b": [1, 2]})
    assert c.gather(data) == {"a": 1, "b": [1, 2]}
    assert c.submit(len, data["b"]).result() == 2
    assert c.submit(abs, -3).key == c.submit(abs, -3).key
    assert c.submit(abs, -3, pure=False).key != c.submit(abs, -3, pure=False).key
    assert c.gather([c.submit(abs, -1), (c.submit(abs, -2),)]) == [1, (2,)]


def test_wait_as_completed_callbacks_and_timeouts(local_client):
    import threading

    c = local_client
    fs = c.map(lambda x: x + 1, range(20))
    done, not_done = taskfarm.wait(fs)
    assert len(done) == 20 and not not_done
    results = sorted(r for _, r in taskfarm.as_completed(c.map(lambda x: -x, range(10)), with_results=True))
    assert results == sorted(-x for x in range(10))
    called = threading.Event()
    f = c.submit(lambda: "cb")
    f.add_done_callback(lambda fut: called.set() if fut.result() == "cb" else None)
    assert called.wait(60)
    gate = c.submit(lambda: __import__("time").sleep(3600), pure=False, timeout=None)
    with pytest.raises(TimeoutError):
        gate.result(timeout=0.2)
    with pytest.raises(TimeoutError):
        taskfarm.wait([gate], timeout=0.1)
    c.cancel(gate)
    assert gate.cancelled()
    with pytest.raises(taskfarm.CancelledError):
        gate.result()


def test_mixed_graph_python_consumes_a_command_and_a_builtin(local_client):
    # A scattered pickle is a value without Python; JSON-like results of
    # Python tasks are JSON values that built-ins and commands can read.
    c = local_client
    f = c.submit(lambda: {"n": [1, 2, 3]})
    assert c.submit(lambda d: sum(d["n"]), f).result() == 6


def test_connecting_by_address_needs_the_secret(cluster):
    import json

    eventually(cluster.file.exists, "the scheduler wrote its scheduler file")
    info = json.loads(cluster.file.read_text())
    with pytest.raises(ValueError, match="secret"):
        env = os.environ.pop("TASKFARM_SECRET", None)
        try:
            taskfarm.Client(info["address"])
        finally:
            if env is not None:
                os.environ["TASKFARM_SECRET"] = env
    with pytest.raises(OSError):
        taskfarm.Client(info["address"], secret="00" * 32)
    with taskfarm.Client(info["address"], secret=info["secret"]) as c:
        assert c.submit(lambda: 5).result() == 5


def test_futures_collected_while_the_client_lock_is_held_do_not_deadlock(local_client):
    # The garbage collector runs Future.__del__ at any allocation, also in a
    # thread holding the client's lock (seen: a hang inside map). Dropping a
    # future must never wait for that lock.
    import gc
    import threading

    c = local_client

    class Cycle:
        pass

    holder = Cycle()
    holder.self, holder.future = holder, c.submit(abs, -5, pure=False)
    del holder  # now only a reference cycle keeps the future

    def drop_under_lock():
        with c._lock:
            gc.collect()

    t = threading.Thread(target=drop_under_lock, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "dropping a future while the client lock was held deadlocked"
    assert c.submit(abs, -6).result() == 6


def test_a_published_dataset_is_found_by_a_second_client_after_the_first_left(cluster):
    # The job-step pattern: one client computes and publishes, leaves; a
    # later client gets the data by name without recomputing it.
    with cluster.client(2) as c:
        parts = c.map(lambda x: x * 10, range(5))
        total = c.submit(sum, parts)
        c.publish_dataset(result={"parts": parts, "total": total}, note=c.scatter("kept"))
        assert set(c.list_datasets()) == {"result", "note"}
        with pytest.raises(KeyError, match="already published"):
            c.publish_dataset(result=total)
        c.publish_dataset(total, name="result2")
    with cluster.client(2) as c2:
        got = c2.get_dataset("result")
        assert c2.gather(got["total"]) == 100
        assert c2.gather(got["parts"]) == [0, 10, 20, 30, 40]
        assert c2.get_dataset("note").result() == "kept"
        assert c2.submit(lambda t: t + 1, c2.get_dataset("result2")).result() == 101
        assert c2.get_dataset("missing", default=None) is None
        with pytest.raises(KeyError, match="missing"):
            c2.get_dataset("missing")
        c2.unpublish_dataset("result")
        assert "result" not in c2.list_datasets()
        # this client still holds the futures it got: the data is still there
        assert c2.gather(got["total"]) == 100


def test_large_numpy_values_arrive_as_aligned_writable_arrays_and_stay_unchanged(local_client):
    # Values with large buffers travel in the framed pickle-5 form: arrays
    # are views of the received bytes (no copy), and must still be aligned
    # and writable, and a task changing its input must not change the value.
    import numpy as np

    c = local_client
    n = 1 << 20
    big = c.submit(lambda n: np.arange(n, dtype=np.float64), n)

    def bump(a):
        a += 1
        return a

    def flags(a):
        return bool(a.flags.aligned), bool(a.flags.writeable), a.dtype.str, a.shape

    assert c.submit(flags, big).result() == (True, True, "<f8", (n,))
    bumped = c.submit(bump, big).result()
    assert bumped[0] == 1.0 and bumped[-1] == float(n)
    assert bumped.flags.writeable and bumped.flags.aligned
    bumped[0] = 5.0  # writable on the client too
    assert c.submit(lambda a: float(a[0]), big).result() == 0.0
    # several arrays with other objects, and a non-contiguous array (in-band)
    mixed = c.submit(lambda a: {"head": a[:10], "tail": a[-3:], "s": "t", "strided": np.arange(100.0)[::3]}, big).result()
    np.testing.assert_array_equal(mixed["head"], np.arange(10.0))
    np.testing.assert_array_equal(mixed["tail"], np.arange(n - 3, n, dtype=np.float64))
    np.testing.assert_array_equal(mixed["strided"], np.arange(100.0)[::3])
    assert mixed["s"] == "t"


def test_large_values_stay_in_shared_memory_between_the_tasks_of_a_worker(cluster):
    # A large result is written once into a memory file by the executor
    # that made it; the worker keeps that file, and an executor using the
    # value maps it copy-on-write instead of receiving it through a pipe.
    import numpy as np

    # (defined here: cloudpickle sends it by value, not by module)
    def mapping_of(a):
        """The name of the mapping of this process that holds array `a`'s data."""
        addr = a.__array_interface__["data"][0]
        with open("/proc/self/maps") as maps:
            for line in maps:
                f = line.split()
                lo, hi = (int(x, 16) for x in f[0].split("-"))
                if lo <= addr < hi:
                    return " ".join(f[5:])
        return None

    n = 1 << 20  # 8 MiB of float64: above the 1 MiB threshold
    with cluster.client(2) as c:
        big = c.submit(lambda: np.arange(n, dtype=np.float64), workers="w0")
        small = c.submit(lambda: np.arange(1000, dtype=np.float64), workers="w0")

        def use(a):
            name = mapping_of(a)
            a[0] = -1.0  # writable: the page touched becomes a private copy
            return name, float(a.sum())

        name, total = c.submit(use, big, workers="w0").result()
        assert "memfd:taskfarm-value" in name, name
        assert total == n * (n - 1) / 2 - 1
        name, _ = c.submit(use, small, workers="w0").result()
        assert "memfd:" not in (name or ""), name
        # the stored value did not change; the client and a peer get it whole
        got = big.result()
        assert got[0] == 0.0 and float(got.sum()) == n * (n - 1) / 2
        assert c.submit(lambda a: (float(a[0]), float(a.sum())), big, workers="w1").result() == (0.0, n * (n - 1) / 2)
        # many large values in one batch of tasks, then all of them at once
        parts = [c.submit(lambda i: np.full(n // 4, float(i)), i, workers="w0", pure=False) for i in range(12)]
        assert c.submit(lambda *a: float(sum(x.sum() for x in a)), *parts, workers="w0").result() == float(sum(range(12)) * (n // 4))


def test_result_files_are_reused_but_never_under_an_array_a_task_kept(tmp_path, monkeypatch):
    # Files of dropped results go back to the executor that wrote them and
    # take later results (pages already allocated); mappings of values are
    # kept for later values in the same files unless a task wrote to them;
    # a file an executor still maps (an array a task kept) is never reused
    # under it; an idle worker lets its executors drop the spare files.
    import numpy as np

    def result_files():
        return dict(__import__("__main__").taskfarm_result_files)

    def memory_files():
        """The memory files this executor has open (its results, held by
        the worker or spare, and the values it maps), counted once each."""
        files = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:taskfarm-value"):
                    files.add(os.stat(f"/proc/self/fd/{fd}").st_ino)
            except FileNotFoundError:  # the directory's own descriptor, closed
                pass
        return len(files)

    def keep(a):
        import builtins

        builtins.taskfarm_test_kept = a
        return float(a[0])

    def kept_is_intact():
        import builtins

        a = builtins.taskfarm_test_kept
        return float(a.min()), float(a.max())

    n = 1 << 19  # 4 MiB arrays
    # spare files dropped at the first idle check (2 s), not after 30 s
    monkeypatch.setenv("TASKFARM_SHARED_IDLE", "0")
    c = Cluster(tmp_path, workers=1, threads=1)  # one executor
    try:
        with c.client(1) as cl:
            first = cl.submit(lambda: np.full(n, 1.0), pure=False)
            assert cl.submit(keep, first, pure=False).result() == 1.0
            del first  # the worker drops it; the executor still maps it
            def ends(a, scribble):
                got = (float(a[0]), float(a[-1]))
                if scribble:  # its own copy of those pages: never kept
                    a[0] = a[-1] = -5.0
                return got

            deadline = time.monotonic() + 60
            i = 2
            while min(result_files_reused(cl, result_files)) < 3:
                assert time.monotonic() < deadline, f"no result file reused after {i - 2} results: {cl.submit(result_files, pure=False).result()}"
                f = cl.submit(lambda i: np.full(n, float(i)), i, pure=False)
                # read through a new mapping or a kept one (of a recycled file)
                assert cl.submit(ends, f, i % 2 == 0, pure=False).result() == (float(i), float(i))
                assert cl.submit(ends, f, False, pure=False).result() == (float(i), float(i))
                del f
                assert cl.submit(kept_is_intact, pure=False).result() == (1.0, 1.0)
                i += 1
            # idle: the spare files are dropped; the kept array's stays open
            # (the worker keeps it for the executor that maps it)
            eventually_slowly(lambda: cl.submit(memory_files, pure=False).result() == 1, "the executor dropped its spare result files")
            assert cl.submit(kept_is_intact, pure=False).result() == (1.0, 1.0)
    finally:
        c.stop()


def result_files_reused(cl, result_files):
    """Results written into reused files, and values read through kept mappings."""
    files = cl.submit(result_files, pure=False).result()
    return files["reused"], files["mapped again"]


def eventually_slowly(condition, what, timeout=60.0):
    """As conftest.eventually, for a condition that needs the worker idle
    for a while (checked every 3 s, not in a busy loop)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not seen within {timeout:.0f} s: {what}"
        time.sleep(3)


def test_run_and_plugins_reach_every_executor_of_current_and_later_workers(cluster):
    import os as _os

    class SetMarker:
        name = "marker"

        def __init__(self, value):
            self.value = value

        def setup(self, worker):
            _os.environ["TASKFARM_TEST_MARKER"] = self.value

    def marker(_=None):
        return _os.environ.get("TASKFARM_TEST_MARKER"), _os.getpid()

    with cluster.client(2) as c:
        # run: once per worker, keyed by address
        pids = c.run(_os.getpid)
        addresses = {w["address"] for w in c.scheduler_info()["workers"]}
        assert set(pids) == addresses and len(set(pids.values())) == 2
        assert list(c.run(_os.getpid, workers=["w0"])) == [w["address"] for w in c.scheduler_info()["workers"] if w["name"] == "w0"]
        c.register_plugin(SetMarker("first"))
        # every executor (2 threads per worker) of both workers runs it
        seen = c.gather(c.map(marker, range(200), pure=False))
        assert {m for m, _ in seen} == {"first"}
        # replaced by name; and a worker that joins later runs it too
        c.register_plugin(SetMarker("second"))
        cluster.add_worker("w2", 1)
        c.wait_for_workers(3, timeout=60)
        late = c.submit(marker, workers="w2", pure=False).result()
        assert late[0] == "second"
        assert {m for m, _ in c.gather(c.map(marker, range(100), pure=False))} == {"second"}


def test_a_failing_plugin_fails_the_next_tasks_with_its_traceback(local_client):
    c = local_client

    def broken_setup():
        raise RuntimeError("no scratch space here")

    c.register_plugin(broken_setup, name="broken")
    # the plugin's own exception, saying it came from the plugin
    with pytest.raises(RuntimeError, match="no scratch space here") as info:
        c.submit(abs, -1, pure=False).result()
    assert "worker plugin 'broken' failed" in info.value.__taskfarm_traceback__
    # replaced by a working one of the same name: tasks run again
    c.register_plugin(lambda: None, name="broken")
    assert c.submit(abs, -3, pure=False).result() == 3


def _process_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_cancel_stops_a_running_python_task(cluster, tmp_path):
    marker = tmp_path / "started"

    def long(path):
        import os
        import time

        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
        time.sleep(600)
        return "not cancelled"

    with cluster.client(2) as c:
        f = c.submit(long, str(marker), pure=False, workers="w0")
        eventually(marker.exists, "the long task started")
        pid = int(marker.read_text())
        c.cancel(f)
        eventually(lambda: _process_gone(pid), "the cancelled task's executor process was stopped")
        with pytest.raises(taskfarm.CancelledError):
            f.result()
        # the worker goes on: its next task runs in a new executor
        assert c.submit(lambda: 7, pure=False, workers="w0").result() == 7


def test_progress_draws_a_bar_to_the_end_and_returns(local_client):
    import io

    c = local_client
    out = io.StringIO()
    futures = c.map(lambda x: x + 1, range(50), pure=False)
    taskfarm.progress(futures, file=out)
    assert all(f.done() for f in futures)
    text = out.getvalue()
    assert "50/50" in text, text
    assert text.rstrip().endswith("50/50") or "100%" in text, text


def test_progress_in_jupyter_is_a_live_widget(tmp_path):
    # A real notebook through a real IPython kernel (nbclient): in Jupyter,
    # taskfarm.progress shows tqdm's widget, not text.
    import nbclient
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import taskfarm\n"
        "c = taskfarm.Client(n_workers=1, threads_per_worker=1)\n"
        "fs = c.map(lambda x: x * 2, range(30), pure=False)\n"
        "taskfarm.progress(fs)\n"
        "print('last', c.gather(fs)[-1])\n"
        "c.close()\n"
    )]
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    widgets = [o for o in outputs if o.get("output_type") == "display_data" and "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, outputs
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "last 58" in text, outputs


def test_closing_one_local_cluster_leaves_another_clusters_running_tasks_alone(tmp_path):
    # Each worker's reaper kills what carries its own token when the worker
    # ends; two Client() clusters live in this one process, and the end of
    # the first must not kill the second's executors (it did when the token
    # was the process's: a joblib run failed after a Dask test's client closed).
    started = tmp_path / "started"

    def slow(path):
        import pathlib
        import time

        pathlib.Path(path).write_text("x")
        time.sleep(3)
        return os.getpid()

    first = taskfarm.Client(n_workers=1, threads_per_worker=1, set_as_default=False)
    assert first.submit(lambda: 1).result(timeout=60) == 1  # its executor and reaper are up
    second = taskfarm.Client(n_workers=1, threads_per_worker=1, set_as_default=False)
    try:
        running = second.submit(slow, str(started), pure=False)
        eventually(started.exists, "the second cluster's task started")
        first.close()
        pid = running.result(timeout=60)
        assert pid != os.getpid()
    finally:
        first.close()
        second.close()


def test_a_frozen_scheduler_is_given_up_on_instead_of_waited_for_forever(cluster):
    import signal
    import time

    c = taskfarm.Client(scheduler_file=cluster.file, timeout=60, scheduler_timeout=3, set_as_default=False)
    try:
        c.wait_for_workers(2, timeout=60)
        assert c.submit(lambda: 5).result(timeout=60) == 5
        cluster.scheduler.send_signal(signal.SIGSTOP)
        try:
            pending = c.submit(time.sleep, 600, pure=False)
            with pytest.raises(Exception, match="said nothing for longer than the scheduler timeout"):
                pending.result(timeout=120)
        finally:
            cluster.scheduler.send_signal(signal.SIGCONT)
    finally:
        c.close()
