#!/usr/bin/env python3
"""Stand-ins for batch systems that cannot run here: PBS Pro and Torque
(qsub, qstat, qdel, qsig), IBM Spectrum LSF (bsub, bjobs, bkill) and
HTCondor (condor_submit, condor_q, condor_rm, condor_history).

They take the real tools' options (the subset taskfarm and its users use),
print the real tools' documented output formats, and really run the jobs:
each job is a local process started by a detached runner, with the
environment variables, working directory, output files, walltime and memory
enforcement and the signals the real system uses. What they do not model is
listed in docs/hpc-jobqueue.md ("Stand-ins for PBS, LSF and HTCondor").

Installed by tests/infra/standins-up.sh as symlinks ROOT/FLAVOUR/bin/CMD to
this file (FLAVOUR: pbs, torque, lsf or condor); the flavour and the spool
(ROOT/FLAVOUR/spool) come from the path the command was run by, so one copy
serves every flavour and the tests put ROOT/FLAVOUR/bin first on PATH.
"""

import fcntl
import json
import os
import pwd
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

PROG = os.path.basename(sys.argv[0])
COMMANDS = {
    "pbs": {"qsub", "qstat", "qdel", "qsig"},
    "torque": {"qsub", "qstat", "qdel", "qsig"},
    "lsf": {"bsub", "bjobs", "bkill"},
    "condor": {"condor_submit", "condor_q", "condor_rm", "condor_history"},
}
HOST = socket.gethostname().split(".")[0]
USER = pwd.getpwuid(os.getuid()).pw_name

# --------------------------------------------------------------------------
# spool: one JSON file per job, a sequence counter, one lock


class Spool:
    def __init__(self, root):
        self.root = root
        self.dir = os.path.join(root, "spool")
        self.jobs = os.path.join(self.dir, "jobs")
        with open(os.path.join(root, "config.json")) as f:
            self.config = json.load(f)
        self._lock = None

    def __enter__(self):
        self._lock = open(os.path.join(self.dir, "lock"), "a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    def next_seq(self):
        path = os.path.join(self.dir, "seq")
        n = int(open(path).read().strip() or "0") + 1 if os.path.exists(path) else 1
        write_atomic(path, str(n))
        return n

    def load(self, seq):
        try:
            with open(os.path.join(self.jobs, f"{seq}.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def save(self, job):
        write_atomic(os.path.join(self.jobs, f"{job['seq']}.json"), json.dumps(job))

    def all(self):
        out = []
        for name in os.listdir(self.jobs):
            if name.endswith(".json"):
                j = self.load(name[:-5])
                if j:
                    out.append(j)
        return sorted(out, key=lambda j: j["seq"])


def write_atomic(path, text):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def die(msg, code):
    print(msg, file=sys.stderr)
    sys.exit(code)


def parse_hms(text):
    """[[HH:]MM:]SS -> seconds."""
    parts = [int(p) for p in text.split(":")]
    secs = 0
    for p in parts:
        secs = secs * 60 + p
    return secs


def hms(secs):
    secs = int(secs)
    return f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"


def parse_size_mb(text, default_unit="mb"):
    m = re.fullmatch(r"(\d+)\s*([kmgt]?)(b|w)?", text.strip().lower())
    if not m:
        return None
    n = int(m.group(1))
    unit = (m.group(2) or default_unit[0]) if (m.group(2) or m.group(3)) else default_unit[0]
    return {"k": n / 1024, "m": n, "g": n * 1024, "t": n * 1024 * 1024, "b": n / 1048576}.get(unit, n)


def directives(text, prefix):
    """Directive lines: after the #! line, up to the first command."""
    out = []
    for i, line in enumerate(text.splitlines()):
        s = line.strip()
        if i == 0 and s.startswith("#!"):
            continue
        if not s or (s.startswith("#") and not s.startswith(prefix)):
            continue
        if not s.startswith(prefix):
            break
        out.append(s[len(prefix):].strip())
    return out


def spawn_runner(spool, seq):
    subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--run-job", spool.root, str(seq)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )


def new_job(spool, flavour, finalize=None, **fields):
    """Record a queued job and start its runner; returns it (seq and id
    set). `finalize(job)` fills in what depends on the id (file names)."""
    with spool:
        seq = spool.next_seq()
        job = {
            "seq": seq, "flavour": flavour, "user": USER, "state": "queued", "submitted": time.time(),
            "started": None, "ended": None, "exit": None, "pgid": None, "delete_at": None,
            "limit_at": None, "end_note": None, "ncpus": 1, "mem_mb": None, "walltime": None,
        }
        job.update(fields)
        job["id"] = job_id(flavour, seq)
        if finalize:
            finalize(job)
        spool.save(job)
    spawn_runner(spool, seq)
    return job


def job_id(flavour, seq):
    if flavour in ("pbs", "torque"):
        return f"{seq}.{HOST}"
    if flavour == "condor":
        return f"{seq}.0"
    return str(seq)


def seq_of(flavour, text):
    """The sequence number an id names, or None (also for another server's id)."""
    if flavour in ("pbs", "torque"):
        m = re.fullmatch(r"(\d+)(\.(.+))?", text)
        if not m or (m.group(3) and not HOST.startswith(m.group(3)) and m.group(3) != HOST):
            return None
        return int(m.group(1))
    if flavour == "condor":
        m = re.fullmatch(r"(\d+)(\.0)?", text)
        return int(m.group(1)) if m else None
    return int(text) if text.isdigit() else None


def signal_job(job, sig):
    if job.get("pgid"):
        try:
            os.killpg(job["pgid"], sig)
        except ProcessLookupError:
            pass


def request_delete(spool, seq, note, first_signals):
    """Delete a job: a queued one ends at once; a running one gets
    `first_signals` now and SIGKILL after the kill delay (by its runner).
    Returns the state the job was in."""
    with spool:
        job = spool.load(seq)
        state = job["state"]
        if state == "queued":
            job.update(state="ended", ended=time.time(), exit=None, end_note=note, deleted=True)
        elif state == "running" and not job["delete_at"]:
            job.update(delete_at=time.time(), end_note=note, deleted=True)
        spool.save(job)
    if state == "running":
        for s in first_signals:
            signal_job(job, s)
    return state


# --------------------------------------------------------------------------
# the runner: waits for CPUs, runs the job, enforces its limits


def run_job(root, seq):
    spool = Spool(root)
    cfg = spool.config
    while True:
        with spool:
            job = spool.load(seq)
            if job["state"] != "queued":
                return  # deleted while queued
            jobs = spool.all()
            busy = sum(j["ncpus"] for j in jobs if j["state"] == "running")
            first = min(j["seq"] for j in jobs if j["state"] == "queued")
            if first == seq and busy + job["ncpus"] <= cfg["cpus"]:
                job.update(state="running", started=time.time())
                spool.save(job)
                break
        time.sleep(0.2)
    flavour = job["flavour"]
    scratch = os.path.join(spool.dir, "tmp", job["id"])
    os.makedirs(scratch, mode=0o700, exist_ok=True)
    env, cwd, argv = job_environment(job, scratch, cfg)
    out_spool = os.path.join(spool.dir, "output", f"{job['id']}.out")
    err_spool = os.path.join(spool.dir, "output", f"{job['id']}.err")
    direct = flavour == "condor"  # HTCondor writes where asked; PBS and LSF deliver at the end
    out_path = job.get("stdout") if direct else out_spool
    err_path = job.get("stderr") if direct else (out_spool if job.get("join") else err_spool)
    out = open(out_path or os.devnull, "ab")
    err = out if err_path == out_path else open(err_path or os.devnull, "ab")
    condor_event(job, "001", "Job executing on host: <127.0.0.1>")
    try:
        child = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
    except OSError as e:
        err.write(f"cannot start the job: {e}\n".encode())
        finish(spool, seq, 127 if flavour != "pbs" else -1, f"cannot start the job: {e}", out_spool, err_spool)
        return
    with spool:
        job = spool.load(seq)
        job["pgid"] = child.pid
        spool.save(job)
    kill_at = None
    limit_note = None
    while child.poll() is None:
        now = time.time()
        with spool:
            job = spool.load(seq)
        if job["delete_at"] and kill_at is None:
            kill_at = job["delete_at"] + cfg["kill_delay"]
        wall = job["walltime"]
        if wall and limit_note is None and now - job["started"] >= wall:
            limit_note, sigs, grace = limit_action(job, "walltime", now - job["started"], wall, cfg)
            record_limit(spool, seq, limit_note, err)
            for s in sigs:
                signal_job(job, s)
            kill_at = min(kill_at or now + grace, now + grace)
        if job["mem_mb"] and limit_note is None:
            used = rss_mb(child.pid)
            if used > job["mem_mb"]:
                limit_note, sigs, grace = limit_action(job, "mem", used, job["mem_mb"], cfg)
                record_limit(spool, seq, limit_note, err)
                for s in sigs:
                    signal_job(job, s)
                kill_at = min(kill_at or now + grace, now + grace)
        if kill_at is not None and now >= kill_at:
            signal_job(job, signal.SIGKILL)
        time.sleep(0.1)
    # The job's shell is done: whatever it left running goes too.
    signal_job(job, signal.SIGKILL)
    rc = child.returncode
    status = rc if rc >= 0 else 256 - rc if flavour in ("pbs", "torque") else 128 - rc
    for f in {out, err}:
        f.close()
    finish(spool, seq, status, limit_note, out_spool, err_spool)
    subprocess.run(["rm", "-rf", scratch])


def limit_action(job, what, used, limit, cfg):
    """(note, signals now, seconds until SIGKILL) when a job exceeds a limit."""
    fl = job["flavour"]
    if fl in ("pbs", "torque"):
        if what == "walltime":
            return f"job killed: walltime {int(used)} exceeded limit {int(limit)}", [signal.SIGTERM], cfg["kill_delay"]
        return f"job killed: mem {int(used * 1024)}kb exceeded limit {int(limit * 1024)}kb", [signal.SIGTERM], cfg["kill_delay"]
    if fl == "lsf":
        if what == "walltime":
            # bsub -W: SIGUSR2 at the run limit, killed if still running ten minutes later.
            return "TERM_RUNLIMIT: job killed after reaching LSF run time limit", [signal.SIGUSR2], cfg["lsf_runlimit_grace"]
        return "TERM_MEMLIMIT: job killed after reaching LSF memory usage limit", [signal.SIGINT, signal.SIGTERM], cfg["kill_delay"]
    # HTCondor: allowed_job_duration puts the job on hold (evicted: kill signal, then SIGKILL).
    return f"The job exceeded allowed job duration of {int(limit)}", [signal.SIGTERM], cfg["kill_delay"]


def record_limit(spool, seq, note, err):
    with spool:
        job = spool.load(seq)
        job["limit_note"] = note
        spool.save(job)
    if job["flavour"] in ("pbs", "torque"):
        err.write(f"=>> PBS: {note}\n".encode())
        err.flush()


def rss_mb(pgid):
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5, pgrp
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # field 24, rss pages
        except (OSError, IndexError, ValueError):
            continue
    return total / 1048576


def finish(spool, seq, status, limit_note, out_spool, err_spool):
    with spool:
        job = spool.load(seq)
        fl = job["flavour"]
        note = job.get("end_note") or job.get("limit_note") or limit_note
        job.update(state="ended", ended=time.time(), exit=status, end_note=note)
        if fl in ("pbs", "torque") and job.get("limit_note") and "walltime" in job["limit_note"]:
            job["exit"] = -29  # JOB_EXEC_KILL_WALLTIME
        if fl == "condor" and job.get("limit_note") and not job.get("deleted"):
            job["state"] = "held"  # stays in the queue until condor_rm
        spool.save(job)
    deliver_output(job, out_spool, err_spool)
    if fl == "condor":
        if job["state"] == "held":
            condor_event(job, "012", f"Job was held.\n\t{note}")
        elif job.get("deleted"):
            condor_event(job, "009", "Job was aborted.\n\tvia condor_rm (by user %s)" % USER)
        else:
            condor_event(job, "005", f"Job terminated.\n\t(1) Normal termination (return value {status})")


def deliver_output(job, out_spool, err_spool):
    """PBS and LSF copy the spooled output to its destination at the end."""
    fl = job["flavour"]
    if fl == "condor":
        return
    if fl == "lsf":
        if not job.get("stdout"):
            return  # no -o: LSF mails the output (not modelled: dropped)
        text = open(out_spool, "rb").read() if os.path.exists(out_spool) else b""
        how = "Done" if job["exit"] == 0 else "Exited"
        report = (
            f"Sender: LSF System <lsfadmin@{HOST}>\nSubject: Job {job['id']}: <{job['name']}> in cluster <standin> {how}\n\n"
            f"Job <{job['name']}> was submitted from host <{HOST}> by user <{USER}> in cluster <standin>.\n"
            f"Job was executed on host(s) <{job['ncpus']}*{HOST}>, in queue <{job['queue']}>, as user <{USER}> in cluster <standin>.\n"
            "------------------------------------------------------------\n\n"
            + ("Successfully completed.\n" if job["exit"] == 0 else f"Exited with exit code {job['exit']}.\n")
            + "\nThe output (if any) follows:\n\n"
        ).encode()
        mode = "wb" if job.get("stdout_overwrite") else "ab"
        with open(job["stdout"], mode) as f:
            f.write(report + text)
        if job.get("stderr") and os.path.exists(err_spool):
            with open(job["stderr"], "wb" if job.get("stderr_overwrite") else "ab") as f:
                f.write(open(err_spool, "rb").read())
        return
    # PBS: -o / -e name a file or a directory (then JOBNAME.oSEQ / .eSEQ).
    for kind, spooled in (("o", out_spool), ("e", err_spool)):
        if kind == "e" and job.get("join"):
            continue
        dest = job.get("stdout" if kind == "o" else "stderr") or os.path.join(job["workdir"], "")
        if dest.endswith("/") or os.path.isdir(dest):
            dest = os.path.join(dest, f"{job['name']}.{kind}{job['seq']}")
        try:
            data = open(spooled, "rb").read() if os.path.exists(spooled) else b""
            with open(dest, "wb") as f:
                f.write(data)
        except OSError as e:
            with Spool(os.path.dirname(os.path.dirname(os.path.dirname(spooled)))) as sp:
                j = sp.load(job["seq"])
                j["end_note"] = (j.get("end_note") or "") + f" (output could not be delivered to {dest}: {e.strerror})"
                sp.save(j)


def job_environment(job, scratch, cfg):
    """(environment, working directory, argv) the real system gives a job."""
    fl = job["flavour"]
    sub_env = job["submit_env"]
    home = pwd.getpwuid(os.getuid()).pw_dir
    nodefile = os.path.join(scratch, "nodefile")
    with open(nodefile, "w") as f:
        f.write(f"{HOST}\n" * job["ncpus"])
    if fl in ("pbs", "torque"):
        env = dict(sub_env) if job.get("export_all") else {}
        env.update(job.get("export_vars", {}))
        env.update({
            "HOME": home, "USER": USER, "LOGNAME": USER, "SHELL": "/bin/bash",
            "PATH": sub_env.get("PATH", "/usr/bin:/bin") if job.get("export_all") else "/usr/local/bin:/usr/bin:/bin",
            "PBS_JOBID": job["id"], "PBS_JOBNAME": job["name"], "PBS_QUEUE": job["queue"], "PBS_O_QUEUE": job["queue"],
            "PBS_O_WORKDIR": job["workdir"], "PBS_O_HOME": sub_env.get("HOME", home), "PBS_O_PATH": sub_env.get("PATH", ""),
            "PBS_O_LOGNAME": USER, "PBS_O_SHELL": sub_env.get("SHELL", "/bin/sh"), "PBS_O_HOST": HOST, "PBS_O_SYSTEM": "Linux",
            "PBS_ENVIRONMENT": "PBS_BATCH", "PBS_NODEFILE": nodefile, "PBS_TASKNUM": "1", "PBS_NODENUM": "0",
            "PBS_JOBDIR": home, "TMPDIR": scratch, "NCPUS": str(job["ncpus"]), "OMP_NUM_THREADS": str(job["ncpus"]),
        })
        if fl == "torque":
            env.update({"PBS_NUM_NODES": "1", "PBS_NUM_PPN": str(job["ncpus"]), "PBS_NP": str(job["ncpus"]), "PBS_VERSION": "TORQUE-6.1.3"})
            if job["walltime"]:
                env["PBS_WALLTIME"] = str(job["walltime"])
            del env["NCPUS"]
        # PBS runs the job in the user's home directory, with the login shell.
        return env, home, [job["script"]]
    if fl == "lsf":
        env = dict(sub_env)  # LSF passes the submission environment on
        hosts = " ".join([HOST] * job["ncpus"])
        env.update({
            "LSB_JOBID": job["id"], "LSB_JOBNAME": job["name"], "LSB_QUEUE": job["queue"], "LSB_HOSTS": hosts,
            "LSB_MCPU_HOSTS": f"{HOST} {job['ncpus']}", "LSB_DJOB_NUMPROC": str(job["ncpus"]),
            "LSB_MAX_NUM_PROCESSORS": str(job["ncpus"]), "LSB_JOBINDEX": "0", "LSB_SUB_HOST": HOST,
            "LS_SUBCWD": job["workdir"], "LSB_DJOB_HOSTFILE": nodefile, "LSB_EXEC_CLUSTER": "standin",
            "LSB_JOBFILENAME": job["script"], "LSFUSER": USER, "TMPDIR": scratch,
        })
        if job.get("stdout"):
            env["LSB_OUTPUTFILE"] = job["stdout"]
        return env, job["workdir"], [job["script"]]
    # HTCondor: only what the description asks for, plus the job's own files.
    env = dict(sub_env) if job.get("getenv") else {}
    env.update(job.get("environment", {}))
    ad = os.path.join(scratch, ".job.ad")
    with open(ad, "w") as f:
        f.write(
            f'MyType = "Job"\nClusterId = {job["seq"]}\nProcId = 0\nOwner = "{USER}"\nJobStatus = 2\n'
            f'RequestCpus = {job["ncpus"]}\nRequestMemory = {job["mem_mb"] or 128}\nIwd = "{job["workdir"]}"\n'
            f'JobBatchName = "{job["name"]}"\nCmd = "{job["script"]}"\n'
        )
    machine = os.path.join(scratch, ".machine.ad")
    with open(machine, "w") as f:
        f.write(f'MyType = "Machine"\nMachine = "{HOST}"\nCpus = {job["ncpus"]}\n')
    env.update({
        "_CONDOR_SCRATCH_DIR": scratch, "_CONDOR_JOB_AD": ad, "_CONDOR_MACHINE_AD": machine,
        "_CONDOR_JOB_IWD": job["workdir"], "TMPDIR": scratch, "TMP": scratch, "TEMP": scratch,
        "BATCH_SYSTEM": "HTCondor", "OMP_NUM_THREADS": str(job["ncpus"]),
    })
    return env, job["workdir"], [job["script"]] + job.get("arguments", [])


def condor_event(job, code, text):
    if job["flavour"] != "condor" or not job.get("eventlog"):
        return
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        with open(job["eventlog"], "a") as f:
            f.write(f"{code} ({job['seq']:03d}.000.000) {stamp} {text}\n...\n")
    except OSError:
        pass


# --------------------------------------------------------------------------
# PBS Pro and Torque


def pbs_qsub(flavour, spool, args):
    opts = {"N": None, "q": "workq" if flavour == "pbs" else "batch", "o": None, "e": None, "j": None, "l": [], "V": False, "v": {}, "A": None}
    script_path = None
    cli = list(args)

    def take(tokens, from_cli):
        nonlocal script_path
        i = 0
        while i < len(tokens):
            t = tokens[i]
            if t == "-V":
                opts["V"] = True
                i += 1
                continue
            if len(t) == 2 and t[0] == "-" and t[1] in "NqoejlvAWm":
                if i + 1 >= len(tokens):
                    die(f"qsub: option requires an argument -- '{t[1]}'\nusage: qsub [-a date_time] [-A account_string] ... [script]", 2)
                val = tokens[i + 1]
                k = t[1]
                if k == "l":
                    opts["l"].extend(val.split(",") if not val.startswith("select=") else [val])
                elif k == "v":
                    for kv in val.split(","):
                        name, _, value = kv.partition("=")
                        opts["v"][name] = value if _ else os.environ.get(name, "")
                elif k in "Wm":
                    pass  # accepted: dependencies and mail are not modelled
                else:
                    opts[k] = val
                i += 2
                continue
            if t.startswith("-"):
                die(f"qsub: invalid option -- '{t.lstrip('-')[:1]}'\nusage: qsub [-a date_time] [-A account_string] ... [script]", 2)
            if from_cli:
                script_path = t
                i += 1
                continue
            die(f"qsub: directive error: {t}", 2)

    take(cli, True)
    text = open(script_path).read() if script_path else sys.stdin.read()
    cli_opts = json.loads(json.dumps(opts))
    for d in directives(text, "#PBS"):
        take(shlex.split(d), False)
    # Command-line options override the script's directives.
    for k in ("N", "q", "o", "e", "j", "A"):
        if cli_opts[k] is not None:
            opts[k] = cli_opts[k]
    ncpus, mem, wall = 1, None, None
    for res in opts["l"]:
        if res.startswith("select="):
            chunk = res[len("select="):]
            parts = chunk.split(":")
            if parts and parts[0].isdigit() and parts[0] != "1":
                die("qsub: stand-in: only select=1 (one node) is modelled", 2)
            for p in parts[1:] if parts and parts[0].isdigit() else parts:
                k, _, v = p.partition("=")
                if k == "ncpus":
                    ncpus = int(v)
                elif k == "mem":
                    mem = parse_size_mb(v, "b")
        elif res.startswith("nodes="):
            m = re.search(r"ppn=(\d+)", res)
            ncpus = int(m.group(1)) if m else 1
        elif res.startswith("ncpus="):
            ncpus = int(res.split("=")[1])
        elif res.startswith("mem="):
            mem = parse_size_mb(res.split("=")[1], "b")
        elif res.startswith("walltime="):
            wall = parse_hms(res.split("=")[1])
        elif res.split("=")[0] in ("place", "host", "software"):
            pass
        else:
            die(f"qsub: Unknown resource Resource_List.{res.split('=')[0]}", 188 if flavour == "pbs" else 1)
    if ncpus > spool.config["cpus"]:
        die("qsub: Job exceeds queue resource limits" if flavour == "pbs" else "qsub: submit error (Job exceeds queue resource limits MSG=cannot locate feasible nodes)", 188)
    name = opts["N"] or (os.path.basename(script_path) if script_path else "STDIN")
    seq_script = save_script(spool, text)
    join = opts["j"] in ("oe", "eo")
    job = new_job(
        spool, flavour, name=name[:236], queue=opts["q"], ncpus=ncpus, mem_mb=mem, walltime=wall, script=seq_script,
        workdir=os.getcwd(), stdout=abs_or_none(opts["o"]), stderr=abs_or_none(opts["e"]), join=join,
        export_all=opts["V"], export_vars=opts["v"], submit_env=dict(os.environ), account=opts["A"],
    )
    print(job["id"])


def save_script(spool, text):
    """PBS and LSF copy the job script at submission (later edits do not
    matter); it runs by its #! line."""
    path = os.path.join(spool.dir, "scripts", f"{time.time_ns()}-{os.getpid()}.sh")
    write_atomic(path, text)
    os.chmod(path, 0o700)
    return path


def abs_or_none(path):
    if not path:
        return None
    if ":" in path and not path.startswith("/"):
        path = path.split(":", 1)[1]  # host:path
    trailing = path.endswith("/")
    p = os.path.abspath(path)
    return p + "/" if trailing else p


PBS_STATE = {"queued": "Q", "running": "R", "ended": "F"}


def pbs_state(flavour, job):
    if job["state"] == "running" and job["delete_at"]:
        return "E"
    s = PBS_STATE[job["state"]]
    return "C" if flavour == "torque" and s == "F" else s


def visible(flavour, job, history):
    if job["state"] != "ended":
        return True
    if flavour == "torque":
        return time.time() - job["ended"] < 300  # keep_completed
    if flavour == "lsf":
        return time.time() - job["ended"] < 3600  # CLEAN_PERIOD
    return history


def pbs_qstat(flavour, spool, args):
    full = "-f" in args
    history = "-x" in args
    if history and flavour == "torque":
        die("qstat: invalid option -- 'x'\nusage: qstat [-f [-1]] [-W site_specific] [-x] [ job_identifier... | destination... ]", 2)
    ids = [a for a in args if not a.startswith("-")]
    for a in args:
        if a.startswith("-") and a not in ("-f", "-x", "-w"):
            if a == "-u":
                continue
            die(f"qstat: invalid option -- '{a[1:]}'", 2)
    with spool:
        jobs = spool.all()
    rc = 0
    chosen = []
    if "-u" in args:
        chosen = [j for j in jobs if visible(flavour, j, history)]
    for i in ids:
        seq = seq_of(flavour, i)
        job = spool.load(seq) if seq else None
        if not job or (flavour == "torque" and not visible(flavour, job, False)):
            print(f"qstat: Unknown Job Id {i}", file=sys.stderr)
            rc = 153
        elif not visible(flavour, job, history):
            print(f"qstat: {job['id']} Job has finished, use -x or -H to obtain historical job information", file=sys.stderr)
            rc = 35
        else:
            chosen.append(job)
    if not ids and "-u" not in args:
        chosen = [j for j in jobs if visible(flavour, j, history)]
    if full:
        for j in chosen:
            print(f"Job Id: {j['id']}")
            fields = [
                ("Job_Name", j["name"]), ("Job_Owner", f"{USER}@{HOST}"), ("job_state", pbs_state(flavour, j)), ("queue", j["queue"]),
                ("Resource_List.ncpus", j["ncpus"]), ("Resource_List.walltime", hms(j["walltime"]) if j["walltime"] else None),
                ("Resource_List.mem", f"{int(j['mem_mb'])}mb" if j["mem_mb"] else None), ("comment", pbs_comment(j)),
                ("Exit_status", j["exit"] if j["state"] == "ended" else None), ("Output_Path", f"{HOST}:{j['stdout'] or j['workdir']}"),
            ]
            for k, v in fields:
                if v is not None:
                    print(f"    {k} = {v}")
            print()
        return rc
    if chosen:
        if flavour == "pbs":
            print("Job id            Name             User              Time Use S Queue")
            print("----------------  ---------------- ----------------  -------- - -----")
            w = 16
        else:
            print("Job ID                    Name             User            Time Use S Queue")
            print("------------------------- ---------------- --------------- -------- - -----")
            w = 25
        for j in chosen:
            jid = j["id"] if len(j["id"]) <= w else j["id"][: w - 1] + "*"
            used = hms(((j["ended"] or time.time()) - j["started"])) if j["started"] else "0"
            print(f"{jid:<{w}}  {j['name'][:16]:<16} {USER[:16]:<16}  {used:>8} {pbs_state(flavour, j)} {j['queue']}")
    return rc


def pbs_comment(j):
    if j["state"] == "queued":
        return "Not Running: Insufficient amount of resource: ncpus"
    if j["state"] == "running":
        return f"Job run at {time.strftime('%a %b %d at %H:%M', time.localtime(j['started']))} on ({HOST}:ncpus={j['ncpus']})"
    note = j.get("end_note")
    if j.get("deleted") and not j["started"]:
        return "Job deleted before it ran"
    if note:
        return f"Job run at {time.strftime('%a %b %d at %H:%M', time.localtime(j['started']))} on ({HOST}:ncpus={j['ncpus']}) and {note}"
    how = "finished" if j["exit"] == 0 else "failed"
    return f"Job run at {time.strftime('%a %b %d at %H:%M', time.localtime(j['started']))} on ({HOST}:ncpus={j['ncpus']}) and {how}"


def pbs_qdel(flavour, spool, args):
    rc = 0
    ids = [a for a in args if not a.startswith("-")]
    if not ids:
        die("usage: qdel [-W force|suppress_email=X] [-x] job_identifier...", 2)
    for i in ids:
        seq = seq_of(flavour, i)
        job = spool.load(seq) if seq else None
        if not job:
            print(f"qdel: Unknown Job Id {i}", file=sys.stderr)
            rc = 153
        elif job["state"] == "ended":
            print(f"qdel: Job has finished {job['id']}", file=sys.stderr)
            rc = 35
        else:
            # PBS: SIGTERM, then SIGKILL after the queue's kill_delay.
            request_delete(spool, seq, "deleted by qdel", [signal.SIGTERM])
    return rc


def pbs_qsig(flavour, spool, args):
    sig = signal.SIGTERM
    ids = []
    it = iter(args)
    for a in it:
        if a == "-s":
            name = next(it, "TERM").upper()
            sig = int(name) if name.isdigit() else getattr(signal, name if name.startswith("SIG") else "SIG" + name)
        else:
            ids.append(a)
    rc = 0
    for i in ids:
        seq = seq_of(flavour, i)
        job = spool.load(seq) if seq else None
        if not job:
            print(f"qsig: Unknown Job Id {i}", file=sys.stderr)
            rc = 153
        elif job["state"] != "running":
            print(f"qsig: Request invalid for state of job {job['id']}", file=sys.stderr)
            rc = 168
        else:
            signal_job(job, sig)
    return rc


# --------------------------------------------------------------------------
# LSF


def lsf_bsub(spool, args):
    opts = {"J": None, "n": "1", "q": "normal", "o": None, "e": None, "oo": None, "eo": None, "W": None, "M": None, "P": None, "cwd": None, "R": []}
    known = {"-J", "-n", "-q", "-o", "-e", "-oo", "-eo", "-W", "-M", "-P", "-cwd", "-R", "-x", "-B", "-N", "-u", "-G", "-app", "-m"}

    def take(tokens, from_cli):
        i = 0
        while i < len(tokens):
            t = tokens[i]
            if t in ("-x", "-B", "-N"):
                i += 1
                continue
            if t in known:
                if i + 1 >= len(tokens):
                    die(f"bsub: option requires an argument -- {t[1:]}", 255)
                k = t[1:]
                if k == "R":
                    opts["R"].append(tokens[i + 1])
                elif k in opts:
                    opts[k] = tokens[i + 1]
                i += 2
                continue
            if t.startswith("-"):
                die(f"bsub: illegal option -- {t[1:]}\nUsage: bsub [-h] [-V] [-x] [-N] [-B] [-J job_name] ... [command [argument ...]]", 255)
            return tokens[i:] if from_cli else die(f"bsub: #BSUB line not understood: {' '.join(tokens)}", 255)
        return []

    command = take(list(args), True)
    if command:
        text = "#!/bin/sh\n" + " ".join(shlex.quote(c) for c in command) + "\n"
    else:
        text = sys.stdin.read()
        cli = dict(opts, R=list(opts["R"]))
        for d in directives(text, "#BSUB"):
            take(shlex.split(d), False)
        for k, v in cli.items():
            if k != "R" and v is not None and v != {"n": "1", "q": "normal"}.get(k):
                opts[k] = v
    ncpus = int(opts["n"])
    if ncpus > spool.config["cpus"]:
        die(f"Processor number requested exceeds the available processors. Job not submitted.", 255)
    wall = None
    if opts["W"]:
        w = opts["W"].split("/")[0]
        h, _, m = w.rpartition(":")
        wall = (int(h or 0) * 60 + int(m)) * 60
    mem = parse_size_mb(opts["M"], "kb") if opts["M"] else None  # LSF_UNIT_FOR_LIMITS default KB
    seq_script = save_script(spool, text)
    workdir = os.path.abspath(opts["cwd"] or os.getcwd())
    out = opts["oo"] or opts["o"]
    err = opts["eo"] or opts["e"]

    def files(job):  # %J is the job id, %I the array index
        for key, p in (("stdout", out), ("stderr", err)):
            job[key] = os.path.join(workdir, p.replace("%J", job["id"]).replace("%I", "0")) if p else None

    job = new_job(
        spool, "lsf", finalize=files, name=opts["J"] or (command[0] if command else "sh"), queue=opts["q"], ncpus=ncpus, mem_mb=mem, walltime=wall,
        script=seq_script, workdir=workdir, stdout_overwrite=bool(opts["oo"]), stderr_overwrite=bool(opts["eo"]), join=not err,
        submit_env=dict(os.environ), project=opts["P"],
    )
    print(f"Job <{job['id']}> is submitted to queue <{job['queue']}>.")


def lsf_stat(j):
    if j["state"] == "queued":
        return "PEND"
    if j["state"] == "running":
        return "RUN"
    return "DONE" if j["exit"] == 0 and not j.get("deleted") and not j.get("limit_note") else "EXIT"


def lsf_bjobs(spool, args):
    long = "-l" in args
    ids = [a for a in args if not a.startswith("-")]
    for a in args:
        if a.startswith("-") and a not in ("-l", "-a", "-w"):
            die(f"bjobs: illegal option -- {a[1:]}", 255)
    rc = 0
    chosen = []
    with spool:
        jobs = spool.all()
    if not ids:
        chosen = [j for j in jobs if j["state"] != "ended" or "-a" in args]
        if not chosen:
            print("No unfinished job found", file=sys.stderr)
            return 0
    for i in ids:
        seq = seq_of("lsf", i)
        job = spool.load(seq) if seq else None
        if not job or not visible("lsf", job, False):
            print(f"Job <{i}> is not found", file=sys.stderr)
            rc = 255
        else:
            chosen.append(job)
    if long:
        for j in chosen:
            print(lsf_long(j))
        return rc
    if chosen:
        print("JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME")
        for j in chosen:
            ex = f"{j['ncpus']}*{HOST}" if j["started"] else ""
            print(f"{j['id']:<7} {USER[:7]:<7} {lsf_stat(j):<5} {j['queue'][:10]:<10} {HOST[:11]:<11} {ex[:11]:<11} {j['name'][:10]:<10} {time.strftime('%b %d %H:%M', time.localtime(j['submitted']))}")
    return rc


def lsf_long(j):
    def stamp(t):
        return time.strftime("%a %b %d %H:%M:%S", time.localtime(t))

    lines = [f"Job <{j['id']}>, Job Name <{j['name']}>, User <{USER}>, Project <{j.get('project') or 'default'}>, Status <{lsf_stat(j)}>, Queue <{j['queue']}>, Command <{j['name']}>"]
    lines.append(f"{stamp(j['submitted'])}: Submitted from host <{HOST}>, CWD <{j['workdir']}>, {j['ncpus']} Task(s);")
    if j["state"] == "queued":
        lines.append("")
        lines.append(" PENDING REASONS:")
        lines.append(" Job slot limit reached;")
        lines.append("")
    if j["started"]:
        lines.append(f"{stamp(j['started'])}: Started {j['ncpus']} Task(s) on Host(s) <{HOST}>, Allocated {j['ncpus']} Slot(s) on Host(s) <{HOST}>, Execution Home <{os.path.expanduser('~')}>, Execution CWD <{j['workdir']}>;")
    if j["state"] == "ended":
        t = stamp(j["ended"])
        note = j.get("limit_note") or (("TERM_OWNER: job killed by owner" if j["started"] else "TERM_OWNER: job killed by owner before it started") if j.get("deleted") else None)
        if lsf_stat(j) == "DONE":
            lines.append(f"{t}: Done successfully. The CPU time used is 0.0 seconds.")
        else:
            if j["started"]:
                lines.append(f"{t}: Exited with exit code {j['exit']}. The CPU time used is 0.0 seconds.")
            lines.append(f"{t}: Completed <exit>" + (f"; {note}." if note else "."))
    # bjobs -l wraps at 80 columns, continuing with 21 spaces.
    out = []
    for line in lines:
        first = True
        while len(line) > 80:
            out.append(line[:80] if first else line[:80])
            line = " " * 21 + line[80:]
            first = False
        out.append(line)
    return "\n".join(out) + "\n"


def lsf_bkill(spool, args):
    sig = None
    ids = []
    it = iter(args)
    for a in it:
        if a == "-s":
            name = next(it, "KILL").upper()
            sig = int(name) if name.isdigit() else getattr(signal, name if name.startswith("SIG") else "SIG" + name)
        elif a.startswith("-"):
            die(f"bkill: illegal option -- {a[1:]}", 255)
        else:
            ids.append(a)
    rc = 0
    for i in ids:
        seq = seq_of("lsf", i)
        job = spool.load(seq) if seq else None
        if not job:
            print(f"Job <{i}>: No matching job found", file=sys.stderr)
            rc = 255
        elif job["state"] == "ended":
            print(f"Job <{job['id']}>: Job has already finished", file=sys.stderr)
            rc = 255
        elif sig is not None:
            if job["state"] != "running":
                print(f"Job <{job['id']}>: Job has not started yet", file=sys.stderr)
                rc = 255
            else:
                signal_job(job, sig)
                print(f"Job <{job['id']}> is being signaled")
        else:
            # SIGINT and SIGTERM, then SIGKILL after JOB_TERMINATE_INTERVAL.
            request_delete(spool, seq, "TERM_OWNER: job killed by owner", [signal.SIGINT, signal.SIGTERM])
            print(f"Job <{job['id']}> is being terminated")
    return rc


# --------------------------------------------------------------------------
# HTCondor


CONDOR_STATUS = {"queued": 1, "running": 2, "ended": 4, "held": 5}


def condor_status(j):
    if j.get("deleted"):
        return 3
    return CONDOR_STATUS[j["state"]]


def condor_submit(spool, args):
    files = [a for a in args if not a.startswith("-")]
    if any(a.startswith("-") and a not in ("-terse",) for a in args) or len(files) != 1:
        die("Usage: condor_submit [options] [submit description file]\n(stand-in: one description file, optionally -terse)", 1)
    try:
        text = open(files[0]).read()
    except OSError as e:
        die(f"ERROR: Can't open \"{files[0]}\"  with flags 00 ({e.strerror})", 1)
    sub = {}
    count = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"(?i)^queue(\s+\d+)?$", line):
            count = int(line.split()[1]) if len(line.split()) > 1 else 1
            continue
        m = re.match(r"^(\+?[A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*)$", line)
        if not m:
            die(f"ERROR: on Line {n} of submit file: \nERROR: Parse error in expression: \n\t{line}", 1)
        sub[m.group(1).lower()] = m.group(2).strip()
    if count is None:
        die("ERROR: no queue statement in submit file", 1)
    if count != 1:
        die("condor_submit: stand-in: only 'queue 1' is modelled", 1)
    if sub.get("universe", "vanilla").lower() != "vanilla":
        die(f"ERROR: universe '{sub['universe']}' is not modelled by the stand-in (vanilla only)", 1)
    if "executable" not in sub:
        die("ERROR: No 'executable' parameter was provided", 1)
    used = {"universe", "executable", "arguments", "output", "error", "log", "request_cpus", "request_memory", "request_disk", "batch_name",
            "allowed_job_duration", "accounting_group", "environment", "getenv", "initialdir", "requirements", "should_transfer_files",
            "when_to_transfer_output", "notification", "kill_sig", "rank"}
    for k in sub:
        if k not in used and not k.startswith("+"):
            print(f"WARNING: the line '{k} = {sub[k]}' was unused by condor_submit. Is it a typo?", file=sys.stderr)
    iwd = os.path.abspath(sub.get("initialdir", os.getcwd()))
    ncpus = int(sub.get("request_cpus", "1"))
    if ncpus > spool.config["cpus"]:
        print(f"WARNING: request_cpus = {ncpus} matches no machine in the pool; the job will stay idle", file=sys.stderr)
    mem = parse_size_mb(sub["request_memory"], "mb") if "request_memory" in sub else None
    exe = sub["executable"]
    exe = exe if exe.startswith("/") else os.path.join(iwd, exe)
    if not os.access(exe, os.X_OK):
        die(f"\nERROR: Executable file {exe} does not exist or is not executable", 1)
    def expand(job):  # $(ClusterId) and $(ProcId) macros, known once the job is queued
        def macro(v):
            v = re.sub(r"\$ENV\((\w+)\)", lambda m: os.environ.get(m.group(1), ""), v)
            for name in ("ClusterId", "Cluster"):
                v = v.replace(f"$({name})", str(job["seq"]))
            for name in ("ProcId", "Process"):
                v = v.replace(f"$({name})", "0")
            return v

        for key, cmd in (("stdout", "output"), ("stderr", "error"), ("eventlog", "log")):
            job[key] = os.path.join(iwd, macro(sub[cmd])) if cmd in sub else None
        job["arguments"] = shlex.split(macro(sub.get("arguments", "").strip('"')))
        job["name"] = sub.get("batch_name", f"ID: {job['seq']}")
        env_text = sub.get("environment", "").strip()
        job["environment"] = {}
        if env_text.startswith('"') and env_text.endswith('"'):
            for kv in shlex.split(env_text[1:-1]):
                k, _, v = kv.partition("=")
                job["environment"][k] = macro(v)

    job = new_job(
        spool, "condor", finalize=expand, queue="", ncpus=ncpus, mem_mb=None, request_mb=mem, script=exe, workdir=iwd,
        walltime=int(sub["allowed_job_duration"]) if "allowed_job_duration" in sub else None,
        getenv=sub.get("getenv", "false").lower() in ("true", "1", "yes"), submit_env=dict(os.environ),
    )
    condor_event(job, "000", f"Job submitted from host: <127.0.0.1:9618?addrs=127.0.0.1-9618&alias={HOST}>")
    if "-terse" in args:
        print(f"{job['id']} - {job['id']}")
    else:
        print("Submitting job(s).")
        print(f"1 job(s) submitted to cluster {job['seq']}.")


def condor_attrs(j):
    s = condor_status(j)
    a = {
        "ClusterId": j["seq"], "ProcId": 0, "JobStatus": s, "Owner": USER, "RequestCpus": j["ncpus"], "Iwd": j["workdir"],
        "JobBatchName": j["name"], "Cmd": j["script"], "QDate": int(j["submitted"]),
        "EnteredCurrentStatus": int(j["ended"] or j["started"] or j["submitted"]),
    }
    if s == 5:
        a["HoldReason"] = j.get("end_note") or j.get("limit_note")
    if s == 3:
        a["RemoveReason"] = f"via condor_rm (by user {USER})"
    if s == 4:
        a["ExitCode"] = j["exit"]
    return a


def condor_print(jobs, args):
    """-af[:jln] ATTRS (autoformat), or the default one-line-per-job view."""
    af = next((a for a in args if a.startswith("-af") or a.startswith("-autoformat")), None)
    if af is None:
        print(f"\n-- Schedd: {HOST} : <127.0.0.1:9618?...\n OWNER BATCH_NAME    SUBMITTED   DONE   RUN    IDLE   HOLD  TOTAL JOB_IDS")
        for j in jobs:
            s = condor_status(j)
            print(f"{USER} {j['name']} {time.strftime('%m/%d %H:%M', time.localtime(j['submitted']))} _ {1 if s == 2 else '_'} {1 if s == 1 else '_'} {1 if s == 5 else '_'} 1 {j['id']}")
        return
    opts = af.split(":", 1)[1] if ":" in af else ""
    attrs = args[args.index(af) + 1:]
    attrs = [a for a in attrs if not a.startswith("-")]
    for j in jobs:
        a = condor_attrs(j)
        vals = [str(a.get(k, "undefined")) if a.get(k) is not None else "undefined" for k in attrs]
        if "l" in opts:
            fields = [f"{k} = {v}" for k, v in zip(attrs, vals)]
            if "j" in opts:
                fields.insert(0, f"ID = {j['id']}")
            print(("\n" if "n" in opts else " ").join(fields))
            if "n" in opts:
                print()
        else:
            print(" ".join(([j["id"]] if "j" in opts else []) + vals))


def condor_select(spool, args, in_queue):
    known = ("-af", "-autoformat", "-limit", "-nobatch", "-all")
    ids, skip = [], False
    af_seen = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "-limit":
            skip = True
            continue
        if a.startswith("-af") or a.startswith("-autoformat"):
            af_seen = True
            continue
        if a.startswith("-"):
            if not a.startswith(known):
                die(f"Error: unknown option {a}", 1)
            continue
        if not af_seen:
            ids.append(a)
    with spool:
        jobs = spool.all()
    live = [j for j in jobs if (j["state"] != "ended") == in_queue]
    if ids:
        wanted = {seq_of("condor", i) for i in ids}
        live = [j for j in live if j["seq"] in wanted]
    return live


def condor_q(spool, args):
    condor_print(condor_select(spool, args, True), args)
    return 0


def condor_history(spool, args):
    jobs = condor_select(spool, args, False)[::-1]
    if "-limit" in args:
        jobs = jobs[: int(args[args.index("-limit") + 1])]
    condor_print(jobs, args)
    return 0


def condor_rm(spool, args):
    ids = [a for a in args if not a.startswith("-")]
    if not ids:
        die("Usage: condor_rm [options] [cluster.proc ...]", 1)
    rc = 0
    for i in ids:
        seq = seq_of("condor", i)
        job = spool.load(seq) if seq else None
        if not job or job["state"] == "ended" or job.get("deleted"):
            print(f"Job {i} not found", file=sys.stderr)
            rc = 1
            continue
        if job["state"] == "held":
            with spool:
                j = spool.load(seq)
                j.update(state="ended", deleted=True)
                spool.save(j)
        else:
            # The job's kill signal (SIGTERM) now, SIGKILL after the vacate time.
            request_delete(spool, seq, None, [signal.SIGTERM])
        print(f"Job {job['id']} marked for removal")
    return rc


# --------------------------------------------------------------------------


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "--run-job":
        run_job(sys.argv[2], int(sys.argv[3]))
        return 0
    bindir = os.path.dirname(os.path.abspath(sys.argv[0]))
    root = os.path.dirname(bindir)
    flavour = os.path.basename(root)
    if flavour not in COMMANDS or PROG not in COMMANDS[flavour]:
        die(f"{PROG}: run me as one of ROOT/{{pbs,torque,lsf,condor}}/bin/COMMAND (tests/infra/standins-up.sh installs them)", 2)
    spool = Spool(root)
    args = sys.argv[1:]
    if flavour in ("pbs", "torque"):
        return {"qsub": pbs_qsub, "qstat": pbs_qstat, "qdel": pbs_qdel, "qsig": pbs_qsig}[PROG](flavour, spool, args) or 0
    if flavour == "lsf":
        return {"bsub": lsf_bsub, "bjobs": lsf_bjobs, "bkill": lsf_bkill}[PROG](spool, args) or 0
    return {"condor_submit": condor_submit, "condor_q": condor_q, "condor_rm": condor_rm, "condor_history": condor_history}[PROG](spool, args) or 0


if __name__ == "__main__":
    sys.exit(main())
