"""A Python client waiting on futures while its scheduler is killed -9 and
started again with the same --journal: the client finds it again through
the scheduler file, asks again for its keys, and every future gets the
right result; the values the workers kept are taken over, not recomputed."""

import json
import os
import signal
import subprocess
import threading

import taskfarm

from conftest import Cluster, eventually, taskfarm_bin


def status(file):
    out = subprocess.run([taskfarm_bin(), "status", "--scheduler-file", str(file), "--json", "--timeout", "5s"], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None


def test_a_waiting_client_gets_its_results_from_a_scheduler_restarted_from_its_journal(tmp_path):
    journal = tmp_path / "journal"
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    cluster = Cluster(tmp_path, workers=2, threads=2, scheduler_args=["--journal", str(journal)])
    try:
        c = taskfarm.Client(scheduler_file=cluster.file, timeout=60, scheduler_timeout=60, set_as_default=False)
        try:
            c.wait_for_workers(2, timeout=60)
            squares = c.map(lambda x: x * x, range(20))
            taskfarm.wait(squares, timeout=120)
            gate = c.submit(lambda p: open(p).read(), str(fifo), pure=False)
            eventually(lambda: (s := status(cluster.file)) is not None and s["tasks"]["processing"] == 1, "the gate to start")
            cluster.scheduler.send_signal(signal.SIGKILL)
            cluster.scheduler.wait()
            cluster.scheduler = cluster.start_scheduler("scheduler-2")
            eventually(lambda: (s := status(cluster.file)) is not None and len(s["workers"]) == 2, "both workers to come back")

            def open_gate():
                with open(fifo, "w") as f:
                    f.write("open")

            opener = threading.Thread(target=open_gate, daemon=True)
            opener.start()
            assert gate.result(timeout=120) == "open"
            assert c.gather(squares) == [x * x for x in range(20)]
            opener.join(timeout=60)
            s = status(cluster.file)
            assert s["stats"]["values_adopted"] > 0, s
            assert "came back" in cluster.log("scheduler-2")
        finally:
            c.close()
    finally:
        cluster.stop()
