"""Batch mode under real Open MPI: `mpirun -np 4 taskfarm mpi -- python
script.py` runs the scheduler on rank 0, the script (a taskfarm Client of the
scheduler file) on rank 1 and workers on ranks 2 and 3; the job exits with
the script's status."""

import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import taskfarm_bin

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import taskfarm
    client = taskfarm.Client(scheduler_file=os.environ["TASKFARM_SCHEDULER_FILE"])
    client.wait_for_workers(2, timeout=60)
    out = client.gather(client.map(lambda x: (x * x, os.getppid()), range(200)))
    assert [v for v, _ in out] == [x * x for x in range(200)]
    print("workers used:", len({p for _, p in out}))
    print("sum", sum(v for v, _ in out))
    sys.exit(int(sys.argv[1]))
    """
)


def mpirun(tmp_path, status):
    launcher = shutil.which("mpirun")
    if launcher is None:
        pytest.fail("mpirun is not installed: apt-get install openmpi-bin (tests/run-all.sh does)")
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    return subprocess.run(
        [launcher, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "4",
         taskfarm_bin(), "mpi", "--scheduler-file", str(tmp_path / "s.json"), "--nthreads", "1",
         "--local-directory", str(tmp_path), "--python", sys.executable,
         "--", sys.executable, str(script), str(status)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )


def test_the_batch_script_runs_on_the_workers_and_the_job_exits_0(tmp_path):
    out = mpirun(tmp_path, 0)
    assert out.returncode == 0, out.stderr
    assert f"sum {sum(x * x for x in range(200))}" in out.stdout
    assert "workers used: 2" in out.stdout


def test_the_job_exits_with_the_scripts_status(tmp_path):
    out = mpirun(tmp_path, 3)
    assert out.returncode == 3, (out.returncode, out.stderr)
    assert "sum" in out.stdout


INIT_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import taskfarm, taskfarm.mpi
    taskfarm.mpi.initialize(nthreads=1, local_directory=sys.argv[1])
    client = taskfarm.Client()          # the job's scheduler, not a local cluster
    client.wait_for_workers(2, timeout=60)
    print("sum", sum(client.gather(client.map(lambda x: x * x, range(100)))))
    print("workers", len(client.scheduler_info()["workers"]))
    sys.exit(int(sys.argv[2]))
    """
)


def test_initialize_turns_a_script_under_mpirun_into_a_cluster(tmp_path):
    # dask_mpi.initialize()'s pattern: `mpirun -np 4 python script.py`; rank 0
    # schedules, ranks 2-3 work, rank 1 runs the client part of the script,
    # and the job exits with the script's status.
    launcher = shutil.which("mpirun")
    if launcher is None:
        pytest.fail("mpirun is not installed: apt-get install openmpi-bin (tests/run-all.sh does)")
    script = tmp_path / "script.py"
    script.write_text(INIT_SCRIPT)
    out = subprocess.run(
        [launcher, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "4",
         sys.executable, str(script), str(tmp_path), "5"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env=dict(__import__("os").environ, TASKFARM_BIN=taskfarm_bin()),
    )
    assert out.returncode == 5, (out.returncode, out.stderr)
    assert out.stdout.count("sum ") == 1 and f"sum {sum(x * x for x in range(100))}" in out.stdout, out.stdout
    assert "workers 2" in out.stdout


def test_initialize_without_the_binary_says_what_to_do(monkeypatch):
    import taskfarm.mpi

    monkeypatch.delenv("TASKFARM_MPI_INITIALIZED", raising=False)
    with pytest.raises(RuntimeError, match="needs the taskfarm binary"):
        taskfarm.mpi.initialize(binary="/nonexistent/taskfarm")
