"""The result cache from Python: joblib-style Memory, Client(cache=...),
pure=False, and entries shared between Memory and a cluster."""

import datetime
import os
import subprocess
import sys

import numpy as np
import pytest

import taskfarm
from taskfarm import Memory


def counted(tmp_path):
    """A function that counts its real calls in a file (calls may happen in
    executor processes)."""
    log = tmp_path / "calls"

    def f(x, y=1):
        with open(log, "a") as fh:
            fh.write("x\n")
        return {"x": x, "y": y, "arr": np.arange(3) * x} if x >= 100 else x * 10 + y

    return f, (lambda: len(log.read_text().splitlines()) if log.exists() else 0)


def test_memory_computes_once_and_loads_after_also_in_a_new_process(tmp_path):
    f, calls = counted(tmp_path)
    memory = Memory(tmp_path / "cache")
    g = memory.cache(f)
    assert g(3) == 31 and g(3) == 31 and g(3, y=2) == 32
    assert calls() == 2
    big = g(100)
    again = g(100)
    assert calls() == 3
    np.testing.assert_array_equal(again["arr"], big["arr"])
    assert g.check_call_in_cache(3) and not g.check_call_in_cache(4)


def test_entries_of_a_module_function_are_found_by_another_process_until_its_code_changes(tmp_path):
    cache = tmp_path / "cache"
    (tmp_path / "mod_tf_cache.py").write_text("def triple(x):\n    return 3 * x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import mod_tf_cache

        assert Memory(cache).cache(mod_tf_cache.triple)(4) == 12
    finally:
        sys.path.remove(str(tmp_path))

    def in_new_process():
        code = (
            f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
            "import taskfarm, mod_tf_cache\n"
            f"print(taskfarm.Memory({str(cache)!r}).cache(mod_tf_cache.triple).check_call_in_cache(4))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert in_new_process() == "True", "the next job finds the entry"
    (tmp_path / "mod_tf_cache.py").write_text("def triple(x):\n    return 3 * x + 0.5\n")
    assert in_new_process() == "False", "the function's code changed: its old results are not used"


def test_a_changed_function_is_not_answered_by_the_old_entries(tmp_path):
    memory = Memory(tmp_path / "cache")

    def f(x):
        return x + 1

    assert memory.cache(f)(1) == 2

    def f(x):  # noqa: F811  (same name, new code)
        return x + 2

    assert memory.cache(f)(1) == 3


def test_clear_reduce_size_and_ignore(tmp_path):
    f, calls = counted(tmp_path)
    memory = Memory(tmp_path / "cache")
    g = memory.cache(f, ignore=["y"])
    assert g(1, y=5) == 15 and g(1, y=6) == 15, "y is not part of the key"
    assert calls() == 1
    memory.reduce_size(age_limit=datetime.timedelta(days=1))
    assert g.check_call_in_cache(1)
    memory.reduce_size(bytes_limit="1K")
    assert g.check_call_in_cache(1), "one small entry fits in 1 KiB"
    memory.clear()
    assert not g.check_call_in_cache(1)
    with pytest.raises(ValueError, match="no such parameters"):
        memory.cache(f, ignore=["z"])
    assert Memory(None).cache(f)(2) == 21 and Memory(None).cache(f)(2) == 21
    assert calls() == 3, "Memory(None) caches nothing"


def test_a_cache_others_can_write_is_refused(tmp_path):
    d = tmp_path / "shared"
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)
    with pytest.raises(ValueError, match="writable by other users"):
        Memory(d)


def test_client_cache_loads_a_cluster_computation_and_shares_entries_with_memory(tmp_path):
    f, calls = counted(tmp_path)
    cache = tmp_path / "cache"
    with taskfarm.Client(n_workers=1, threads_per_worker=2, cache=cache, set_as_default=False) as c:
        assert c.gather(c.map(f, range(20))) == [x * 10 + 1 for x in range(20)]
        assert calls() == 20
        impure = [c.submit(f, 7, pure=False) for _ in range(2)]
        assert [i.result() for i in impure] == [71, 71]
        assert calls() == 22, "pure=False is never taken from the cache"
    # a new cluster on the same cache: nothing runs again
    with taskfarm.Client(n_workers=1, threads_per_worker=1, cache=cache, set_as_default=False) as c:
        assert c.gather(c.map(f, range(20))) == [x * 10 + 1 for x in range(20)]
        stats = c.scheduler_info()["stats"]
        assert stats["cache_loads"] == 20 and stats["tasks_finished"] == 20
    assert calls() == 22
    # Memory finds what the cluster stored: the same keys
    assert Memory(cache).cache(f)(5) == 51
    assert calls() == 22
    with pytest.raises(ValueError, match="local cluster"):
        taskfarm.Client("tcp://127.0.0.1:1", secret="00", cache=cache)
