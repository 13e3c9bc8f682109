"""Fixtures: the stock `taskfarm` binary, a real scheduler with two real
workers (separate processes), and the embedded local cluster."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import taskfarm

ROOT = Path(__file__).resolve().parents[2]


def taskfarm_bin() -> str:
    """The binary under test: $TASKFARM_BIN, else the workspace's debug build."""
    path = os.environ.get("TASKFARM_BIN") or str(ROOT / "target" / "debug" / "taskfarm")
    if not Path(path).is_file():
        pytest.fail(f"the taskfarm binary is not at {path}: run `cargo build` first or set TASKFARM_BIN")
    return path


def eventually(condition, what, timeout=60.0):
    """Waits until condition() is true (state that arrives with periodic
    reports, such as the workers' heartbeats); fails naming what after
    timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not seen within {timeout:.0f} s: {what}")
        time.sleep(0.05)


class Cluster:
    """`taskfarm scheduler` + `taskfarm worker` processes on loopback."""

    def __init__(self, tmp: Path, workers: int, threads: int, scheduler_args=()):
        self.tmp = tmp
        self.file = tmp / "scheduler.json"
        self.logs = []
        self.scheduler_args = list(scheduler_args)
        self.scheduler = self.start_scheduler("scheduler")
        self.workers = {}
        for i in range(workers):
            self.add_worker(f"w{i}", threads)

    def start_scheduler(self, log_name):
        return self._spawn(log_name, ["scheduler", "--scheduler-file", str(self.file), "--host", "127.0.0.1", *self.scheduler_args])

    def _spawn(self, name, args):
        log = open(self.tmp / f"{name}.log", "wb")
        self.logs.append(log)
        env = dict(os.environ, TASKFARM_PYTHON=sys.executable)
        return subprocess.Popen([taskfarm_bin(), *args], stdout=log, stderr=subprocess.STDOUT, env=env)

    def add_worker(self, name, threads):
        scratch = self.tmp / "scratch"
        scratch.mkdir(exist_ok=True)
        self.workers[name] = self._spawn(
            f"worker-{name}",
            ["worker", "--scheduler-file", str(self.file), "--name", name, "--nthreads", str(threads), "--local-directory", str(scratch)],
        )

    def client(self, n_workers):
        c = taskfarm.Client(scheduler_file=self.file, timeout=60)
        c.wait_for_workers(n_workers, timeout=60)
        return c

    def log(self, name):
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop(self):
        for p in [*self.workers.values(), self.scheduler]:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
        for log in self.logs:
            log.close()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, workers=2, threads=2)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def local_client():
    c = taskfarm.Client()
    yield c
    c.close()


@pytest.fixture(scope="module")
def client():
    """An embedded local cluster: two workers of one thread each."""
    c = taskfarm.Client(n_workers=2, threads_per_worker=1)
    yield c
    c.close()
