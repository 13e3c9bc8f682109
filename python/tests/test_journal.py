"""A Python client waiting on futures while its scheduler is killed -9 and
started again with the same --journal: the client finds it again through
the scheduler file, asks again for its keys, and every future gets the
right result; the values the workers kept are taken over, not recomputed."""

import json
import signal
import subprocess

import taskfarm

from conftest import Cluster, eventually, taskfarm_bin


def status(file):
    out = subprocess.run([taskfarm_bin(), "status", "--scheduler-file", str(file), "--json", "--timeout", "5s"], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None


def test_a_waiting_client_gets_its_results_from_a_scheduler_restarted_from_its_journal(tmp_path):
    journal = tmp_path / "journal"
    # The gate task waits for this file: a run killed with its scheduler
    # cannot take the word from the run after the restart (a pipe could).
    word = tmp_path / "word"
    cluster = Cluster(tmp_path, workers=2, threads=2, scheduler_args=["--journal", str(journal)])
    try:
        c = taskfarm.Client(scheduler_file=cluster.file, timeout=60, scheduler_timeout=60, set_as_default=False)
        try:
            c.wait_for_workers(2, timeout=60)
            squares = c.map(lambda x: x * x, range(20))
            taskfarm.wait(squares, timeout=120)
            def wait_for_file(path):  # nested: pickled by value
                import os
                import time

                while not os.path.exists(path):
                    time.sleep(0.01)
                with open(path) as f:
                    return f.read()

            gate = c.submit(wait_for_file, str(word), pure=False)
            eventually(lambda: (s := status(cluster.file)) is not None and s["tasks"]["processing"] == 1, "the gate to start")
            cluster.scheduler.send_signal(signal.SIGKILL)
            cluster.scheduler.wait()
            cluster.scheduler = cluster.start_scheduler("scheduler-2")
            eventually(lambda: (s := status(cluster.file)) is not None and len(s["workers"]) == 2, "both workers to come back")

            tmp = tmp_path / "word.tmp"
            tmp.write_text("open")
            tmp.rename(word)
            assert gate.result(timeout=120) == "open"
            assert c.gather(squares) == [x * x for x in range(20)]
            s = status(cluster.file)
            assert s["stats"]["values_adopted"] > 0, s
            assert "came back" in cluster.log("scheduler-2")
        finally:
            c.close()
    finally:
        cluster.stop()
