//! Data plane and resilience with real processes: spilling, lost workers,
//! retries, timeouts, graceful retirement.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn stat(file: &std::path::Path, name: &str) -> u64 {
    status(file).unwrap()["stats"][name].as_u64().unwrap()
}

fn json_graph(m: serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::Value::Object(m).to_string()
}

/// A task that waits until the test creates `path` (an event, not a sleep).
fn gate(path: &std::path::Path) -> serde_json::Value {
    serde_json::json!({"cmd": ["sh", "-c", format!("while [ ! -e '{}' ]; do sleep 0.02; done", path.display())]})
}

fn spill_files(scratch: &std::path::Path) -> usize {
    let mut n = 0;
    for w in std::fs::read_dir(scratch).unwrap().flatten() {
        if let Ok(files) = std::fs::read_dir(w.path().join("spill")) {
            n += files.count();
        }
    }
    n
}

/// Peak resident memory (VmHWM) of a running process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = s.lines().find_map(|l| l.strip_prefix("VmHWM:")).expect("VmHWM in /proc/PID/status");
    kb.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
}

#[test]
fn three_times_memory_spills_to_local_directory_and_cleans_up() {
    let mut c = Cluster::start("spill", &[]);
    let scratch = c.dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    c.workers.push(Proc::spawn(
        &["worker", "--scheduler-file", c.file_arg(), "--name", "small", "--nthreads", "2", "--memory-limit", "400MB", "--local-directory", scratch.to_str().unwrap()],
        c.dir.join("worker-small.log"),
    ));
    wait_for("worker", Duration::from_secs(20), || status(&c.file).is_some_and(|s| s["workers"].as_array().unwrap().len() == 1));
    // 60 values of 20 MB = 1.2 GB, 3x the limit; all are made before any is used.
    let open = c.dir.join("open");
    let mut g = serde_json::Map::new();
    let producers: Vec<String> = (0..60).map(|i| format!("p{i}")).collect();
    for p in &producers {
        g.insert(p.clone(), serde_json::json!(["zeros", 20_000_000]));
    }
    g.insert("gate".into(), serde_json::json!({"task": ["noop"], "deps": producers}));
    g.insert("open".into(), gate(&open));
    let mut sizes = vec![serde_json::json!("list")];
    for (i, p) in producers.iter().enumerate() {
        g.insert(format!("n{i}"), serde_json::json!({"task": ["len", p], "deps": ["gate", "open"]}));
        sizes.push(serde_json::json!(format!("n{i}")));
    }
    g.insert("total".into(), serde_json::json!(["sum", sizes]));
    let graph = c.dir.write("g.json", &json_graph(g));
    let file = c.file.clone();
    let submit = std::thread::spawn(move || taskfarm(&["submit", graph.to_str().unwrap(), "--scheduler-file", file.to_str().unwrap(), "--keys", "total"]));
    // 60 values, and the gate's result once it ran
    wait_for("all 60 values made, most of them spilled", Duration::from_secs(120), || {
        let s = status(&c.file).unwrap();
        let w = &s["workers"][0];
        w["in_memory"].as_u64() >= Some(60) && w["spilled_count"].as_u64() >= Some(30)
    });
    assert!(spill_files(&scratch) >= 30, "spill files in the worker's local directory during the run");
    std::fs::write(&open, "").unwrap();
    let o = submit.join().unwrap();
    assert_eq!(stdout(&o), "{\"total\": 1200000000}\n", "{}", stderr(&o));
    // the counters reach the scheduler with the worker's next report
    wait_for("the spilled values read back (30 or more)", Duration::from_secs(20), || c.worker_status("small")["unspilled_total"].as_u64() >= Some(30));
    let w = c.worker_status("small");
    assert!(w["memory"].as_u64().unwrap() < 400_000_000, "stayed under its limit: {w}");
    // At its peak too: the gate's dependencies pass no data, so they are not
    // read back from disk for it, and freed values leave the process.
    let peak = peak_rss(c.workers[0].child.id());
    assert!(peak < 400_000_000, "the worker's peak resident memory {peak} B stayed under its 400 MB limit");
    wait_for("results released", Duration::from_secs(20), || spill_files(&scratch) == 0 && c.worker_status("small")["spilled_count"] == 0);
    assert_eq!(stat(&c.file, "tasks_recomputed"), 0);
}

#[test]
fn copies_fetched_from_peers_are_freed_with_the_value() {
    let c = Cluster::start("copies", &[("a", 1), ("b", 1)]);
    // b fetches x from a for each of its tasks; once the client has its
    // results, no worker may keep x, the fetched copy included.
    let graph = c.dir.write("g.json", r#"{"x": {"task": ["zeros", 30000000], "workers": "a"},
        "y": {"task": ["len", "x"], "workers": "b"}, "z": {"task": ["len", "x"], "workers": "b"}}"#);
    let o = taskfarm(&["submit", graph.to_str().unwrap(), "--scheduler-file", c.file_arg()]);
    assert_eq!(stdout(&o), "{\"y\": 30000000, \"z\": 30000000}\n", "{}", stderr(&o));
    assert_eq!(c.worker_status("b")["fetched_from_peers"].as_u64(), Some(1), "x moved to b once");
    wait_for("every value freed on both workers", Duration::from_secs(20), || {
        ["a", "b"].iter().all(|w| c.worker_status(w)["stored_count"].as_u64() == Some(0))
    });
}

/// A scheduler started with TASKFARM_RECORD=FILE records every event; the
/// log of a run in which a worker is killed -9 replays to the same final
/// state, invariants holding after every event.
#[test]
fn a_recorded_run_with_a_killed_worker_replays_to_the_same_final_state() {
    let record_dir = TempDir::new("record");
    let record = record_dir.join("events.bin");
    let mut c = Cluster::start_env("recorded", &[("w1", 2), ("w2", 2)], &[("TASKFARM_RECORD", record.to_str().unwrap())]);
    let open = c.dir.join("open");
    let mut g = serde_json::Map::new();
    let mut parts = vec![serde_json::json!("list")];
    for i in 0..200 {
        g.insert(format!("leaf-{i}"), serde_json::json!(["mul", i, 2]));
        g.insert(format!("held-{i}"), serde_json::json!({"task": ["identity", format!("leaf-{i}")], "deps": ["open"]}));
        parts.push(serde_json::json!(format!("held-{i}")));
    }
    g.insert("open".into(), gate(&open));
    g.insert("total".into(), serde_json::json!(["sum", parts]));
    let graph = c.dir.write("g.json", &json_graph(g));
    let file = c.file.clone();
    let submit = std::thread::spawn(move || taskfarm(&["submit", graph.to_str().unwrap(), "--scheduler-file", file.to_str().unwrap(), "--keys", "total"]));
    wait_for("leaves held on w1", Duration::from_secs(60), || c.worker_status("w1")["in_memory"].as_u64() >= Some(1));
    c.workers[0].child.kill().unwrap(); // SIGKILL
    wait_for("w1 to be removed", Duration::from_secs(20), || status(&c.file).unwrap()["workers"].as_array().unwrap().len() == 1);
    std::fs::write(&open, "").unwrap();
    let o = submit.join().unwrap();
    assert_eq!(stdout(&o), format!("{{\"total\": {}}}\n", (0..200u64).map(|i| i * 2).sum::<u64>()), "{}", stderr(&o));
    let o = taskfarm(&["shutdown", "--scheduler-file", c.file_arg()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(c.scheduler.wait_exit(Duration::from_secs(20)), Some(0), "{}", c.scheduler.log_text());

    let replay = taskfarm::scheduler::state::replay(&record).unwrap_or_else(|e| panic!("{e}"));
    let recorded = replay.recorded_digest.expect("a clean stop records the final digest");
    assert!(replay.events > 200, "{} events", replay.events);
    assert_eq!(replay.state.digest(), recorded, "the replay ends in the recorded state");
    assert_eq!(replay.state.stats.workers_lost, 1);
    assert!(recorded.contains(" w2 processing=0") && !recorded.contains(" w1 processing="), "only w2 is left: {recorded}");
}

#[test]
fn kill_9_mid_graph_recomputes_lost_results_and_matches_a_clean_run() {
    let mut c = Cluster::start("kill9", &[("w1", 2), ("w2", 2)]);
    // 2000 leaves in 40 groups; each group sums to a partial; partials wait
    // for a gate, then are summed.
    let open = c.dir.join("open");
    let mut g = serde_json::Map::new();
    let mut partials = vec![serde_json::json!("list")];
    for grp in 0..40 {
        let mut leaves = vec![serde_json::json!("list")];
        for i in 0..50 {
            let k = format!("leaf-{grp}-{i}");
            g.insert(k.clone(), serde_json::json!(["mul", grp * 50 + i, 3]));
            leaves.push(serde_json::json!(k));
        }
        g.insert(format!("part-{grp}"), serde_json::json!(["sum", leaves]));
        g.insert(format!("held-{grp}"), serde_json::json!({"task": ["identity", format!("part-{grp}")], "deps": ["open"]}));
        partials.push(serde_json::json!(format!("held-{grp}")));
    }
    g.insert("open".into(), gate(&open));
    g.insert("total".into(), serde_json::json!(["sum", partials]));
    let text = json_graph(g);
    let graph = c.dir.write("g.json", &text);
    let file = c.file.clone();
    let submit = std::thread::spawn(move || taskfarm(&["submit", graph.to_str().unwrap(), "--scheduler-file", file.to_str().unwrap(), "--keys", "total"]));
    // Wait until every partial is computed (only the gate runs, the 40
    // "held" tasks and the total wait, the leaves are released), some of
    // them on w1 only.
    wait_for("partials held on both workers", Duration::from_secs(60), || {
        let s = status(&c.file).unwrap();
        let t = &s["tasks"];
        t["processing"] == 1 && t["waiting"] == 41 && t["queued"] == 0 && t["memory"] == 40 && c.worker_status("w1")["in_memory"].as_u64() >= Some(1)
    });
    c.workers[0].child.kill().unwrap(); // SIGKILL
    wait_for("w1 to be removed", Duration::from_secs(20), || status(&c.file).unwrap()["workers"].as_array().unwrap().len() == 1);
    std::fs::write(&open, "").unwrap();
    let o = submit.join().unwrap();
    let expected: u64 = (0..2000u64).map(|i| i * 3).sum();
    assert_eq!(stdout(&o), format!("{{\"total\": {expected}}}\n"), "{}", stderr(&o));
    let clean = taskfarm(&["run", c.dir.join("g.json").to_str().unwrap(), "--keys", "total"]);
    assert!(!open.exists() || stdout(&clean) == stdout(&o), "same result as a run without failure");
    let log = c.scheduler.log_text();
    assert!(log.contains("worker 'w1'") && log.contains("removed"), "{log}");
    // "recomputing N lost keys held only by 'w1': k1, k2, ... and M more"
    let line = log.lines().find(|l| l.contains("lost keys held only by 'w1': ")).unwrap_or_else(|| panic!("no recompute line in {log}"));
    let listed = line.split("held only by 'w1': ").nth(1).unwrap().split(" and ").next().unwrap();
    let graph: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in listed.split(", ") {
        assert!(graph.get(key).is_some(), "'{key}' in the log is a key of the graph: {line}");
    }
    assert!(stat(&c.file, "tasks_recomputed") >= 1);
}

#[test]
fn task_that_kills_its_worker_is_erred_after_allowed_failures() {
    let d = TempDir::new("killer");
    let file = d.join("s.json");
    let mut sched = Proc::spawn(&["scheduler", "--scheduler-file", file.to_str().unwrap(), "--host", "127.0.0.1", "--allowed-failures", "1"], d.join("s.log"));
    let mut workers: Vec<Proc> =
        (0..3).map(|i| Proc::spawn(&["worker", "--scheduler-file", file.to_str().unwrap(), "--name", &format!("w{i}"), "--nthreads", "1"], d.join(&format!("w{i}.log")))).collect();
    wait_for("3 workers", Duration::from_secs(20), || status(&file).is_some_and(|s| s["workers"].as_array().unwrap().len() == 3));
    let mut g = serde_json::Map::new();
    g.insert("killer".into(), serde_json::json!({"cmd": ["sh", "-c", "kill -9 $PPID; sleep 5"]}));
    for i in 0..20 {
        g.insert(format!("ok{i}"), serde_json::json!(["inc", i]));
    }
    let graph = d.write("g.json", &json_graph(g));
    let o = taskfarm(&["submit", graph.to_str().unwrap(), "--scheduler-file", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("task 'killer' failed: task was running on 2 workers that died"), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for i in 0..20 {
        assert_eq!(out[format!("ok{i}")], i + 1, "{}\n{}", stdout(&o), stderr(&o));
    }
    assert_eq!(status(&file).unwrap()["workers"].as_array().unwrap().len(), 1, "two workers died, one is left");
    drop(workers.drain(..));
    sched.child.kill().unwrap();
}

#[test]
fn retries_rerun_a_flaky_task_and_timeout_kills_a_hanging_one() {
    let c = Cluster::start("retry", &[("w1", 2)]);
    let counter = c.dir.join("attempts");
    let flaky = |retries: u32| {
        serde_json::json!({
            "cmd": ["sh", "-c", format!("n=$(cat '{0}' 2>/dev/null || echo 0); echo $((n+1)) > '{0}'; [ $n -ge 2 ] && echo ok", counter.display())],
            "retries": retries
        })
    };
    let mut g = serde_json::Map::new();
    g.insert("flaky".into(), flaky(2));
    let o = c.submit(&json_graph(g), &[]);
    assert_eq!(stdout(&o), "{\"flaky\": \"ok\\n\"}\n", "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3", "failed twice, then succeeded");
    assert_eq!(stat(&c.file, "retries"), 2);

    std::fs::remove_file(&counter).unwrap();
    let mut g = serde_json::Map::new();
    g.insert("flaky".into(), flaky(1));
    let o = c.submit(&json_graph(g), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("task 'flaky' failed: command 'sh' exited with status 1"), "{}", stderr(&o));

    let marker = c.dir.join("hung-pid");
    let mut g = serde_json::Map::new();
    g.insert("hang".into(), serde_json::json!({"cmd": ["sh", "-c", format!("echo $$ > '{}'; exec sleep 300", marker.display())], "timeout": 1}));
    g.insert("fine".into(), serde_json::json!(["add", 1, 1]));
    let start = std::time::Instant::now();
    let o = c.submit(&json_graph(g), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("task 'hang' failed: command 'sh' timed out and was killed"), "{}", stderr(&o));
    assert!(stdout(&o).contains("\"fine\": 2"));
    assert!(start.elapsed() < Duration::from_secs(60));
    let pid = std::fs::read_to_string(&marker).unwrap().trim().to_string();
    let alive = Command::new("kill").args(["-0", &pid]).stderr(Stdio::null()).status().unwrap().success();
    assert!(!alive, "the hanging process {pid} was killed");
}

#[derive(PartialEq)]
enum Leave {
    Command,
    Signals(&'static [&'static str]),
    Lifetime,
}

fn retire_scenario(how: Leave) {
    let mut c = Cluster::start("retire", &[("w2", 2)]);
    let mut args = vec!["worker", "--scheduler-file", c.file_arg(), "--name", "w1", "--nthreads", "2"];
    if how == Leave::Lifetime {
        args.extend(["--lifetime", "4s", "--lifetime-stagger", "1s"]);
    }
    let scratch = c.dir.join("scratch");
    args.extend(["--local-directory", scratch.to_str().unwrap()]);
    let w1 = Proc::spawn(&args, c.dir.join("worker-w1.log"));
    c.workers.insert(0, w1);
    wait_for("w1 to register", Duration::from_secs(30), || status(&c.file).is_some_and(|s| s["workers"].as_array().unwrap().len() == 2));
    let open = c.dir.join("open");
    let mut g = serde_json::Map::new();
    let mut vals = vec![serde_json::json!("list")];
    for i in 0..100 {
        g.insert(format!("v{i}"), serde_json::json!({"task": ["mul", i, 2], "workers": "w1"}));
        vals.push(serde_json::json!(format!("v{i}")));
    }
    g.insert("open".into(), serde_json::json!({"cmd": gate(&open)["cmd"], "workers": "w2"}));
    g.insert("total".into(), serde_json::json!({"task": ["sum", vals], "deps": ["open"]}));
    let graph = c.dir.write("g.json", &json_graph(g));
    let file = c.file.clone();
    let submit = std::thread::spawn(move || taskfarm(&["submit", graph.to_str().unwrap(), "--scheduler-file", file.to_str().unwrap(), "--keys", "total"]));
    wait_for("100 values on w1", Duration::from_secs(60), || c.worker_status("w1")["in_memory"].as_u64() == Some(100));
    match how {
        Leave::Signals(signals) => {
            for sig in signals {
                assert!(Command::new("kill").args([*sig, &c.workers[0].child.id().to_string()]).status().unwrap().success());
            }
        }
        Leave::Command => {
            let o = taskfarm(&["retire", "--scheduler-file", c.file_arg(), "--worker", "w1"]);
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            assert!(stderr(&o).contains("retired w1"), "{}", stderr(&o));
        }
        Leave::Lifetime => {} // it leaves by itself, 3 to 4 s after starting
    }
    assert_eq!(c.workers[0].wait_exit(Duration::from_secs(60)), Some(0), "{}", c.workers[0].log_text());
    assert_eq!(c.worker_status("w2")["in_memory"].as_u64(), Some(100), "all 100 values moved to w2");
    std::fs::write(&open, "").unwrap();
    let o = submit.join().unwrap();
    assert_eq!(stdout(&o), "{\"total\": 9900}\n", "{}", stderr(&o));
    assert_eq!(stat(&c.file, "tasks_recomputed"), 0, "nothing recomputed");
    assert_eq!(stat(&c.file, "values_replicated"), 100);
    assert_eq!(stat(&c.file, "tasks_finished"), 102, "every task ran exactly once");
    assert_eq!(stat(&c.file, "workers_retired"), 1);
    assert_eq!(stat(&c.file, "workers_lost"), 0);
    assert!(c.scheduler.log_text().contains("worker 'w1' retiring"), "{}", c.scheduler.log_text());
    if how == Leave::Lifetime {
        assert!(c.workers[0].log_text().contains("reached its lifetime"), "{}", c.workers[0].log_text());
    }
}

#[test]
fn retire_moves_unique_results_and_nothing_is_recomputed() {
    retire_scenario(Leave::Command);
}

#[test]
fn sigterm_retires_a_worker_gracefully() {
    retire_scenario(Leave::Signals(&["-TERM"]));
}

/// A batch system's early warning (SLURM --signal=B:USR1@T, Grid Engine's
/// s_rt) retires too; the SIGTERM that follows at the end does not cut the
/// hand-over short.
#[test]
fn sigusr1_then_sigterm_retires_a_worker_gracefully() {
    retire_scenario(Leave::Signals(&["-USR1", "-TERM"]));
}

#[test]
fn worker_leaves_gracefully_when_its_lifetime_ends() {
    retire_scenario(Leave::Lifetime);
}

#[test]
fn retire_errors_are_clear() {
    let c = Cluster::start("retire-err", &[("w1", 1)]);
    let o = taskfarm(&["retire", "--scheduler-file", c.file_arg(), "--worker", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no such worker: nope (workers: w1)"), "{}", stderr(&o));
    let o = taskfarm(&["retire", "--scheduler-file", c.file_arg()]);
    assert_eq!(o.status.code(), Some(2), "needs --worker or --all-idle");
}

#[test]
fn resources_are_accounted_while_running_and_unsatisfiable_tasks_are_reported() {
    let mut c = Cluster::start("resources", &[("cpu-only", 1)]);
    // Each task holds a lock directory while it runs: two at once would fail.
    let lock = c.dir.join("gpu-lock");
    let mut g = serde_json::Map::new();
    for i in 0..4 {
        g.insert(
            format!("g{i}"),
            serde_json::json!({"cmd": ["sh", "-c", format!("mkdir '{0}' || exit 9; sleep 0.1; rmdir '{0}'; echo {i}", lock.display())], "resources": {"gpu": 1}}),
        );
    }
    let graph = c.dir.write("g.json", &json_graph(g));
    let file = c.file.clone();
    let submit = std::thread::spawn(move || taskfarm(&["submit", graph.to_str().unwrap(), "--scheduler-file", file.to_str().unwrap()]));
    wait_for("the scheduler to report the tasks stuck", Duration::from_secs(20), || status(&c.file).unwrap()["tasks"]["no-worker"].as_u64() == Some(4));
    assert!(c.scheduler.log_text().contains("it needs gpu=1; connected workers: cpu-only (cpus=1)"), "{}", c.scheduler.log_text());
    // A worker with one GPU and 4 threads joins: the tasks run, one at a time.
    let scratch = c.dir.join("scratch");
    c.workers.push(Proc::spawn(
        &["worker", "--scheduler-file", c.file_arg(), "--name", "gpu-node", "--nthreads", "4", "--resources", "gpu=1", "--local-directory", scratch.to_str().unwrap()],
        c.dir.join("worker-gpu.log"),
    ));
    let o = submit.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "{\"g0\": \"0\\n\", \"g1\": \"1\\n\", \"g2\": \"2\\n\", \"g3\": \"3\\n\"}\n");
    assert!(stderr(&o).contains("task 'g0' cannot run on any connected worker yet: it needs gpu=1"), "{}", stderr(&o));

    // taskfarm run cannot gain workers: it fails at once, exit 1.
    let g = c.dir.write("gpu.json", r#"{"t": {"task": ["noop"], "resources": {"gpu": 1}}}"#);
    let o = taskfarm(&["run", g.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("task 't' cannot run: it needs gpu=1"), "{}", stderr(&o));
}

#[test]
fn a_straggler_does_not_hold_up_independent_tasks() {
    let c = Cluster::start("straggler", &[("w1", 1), ("w2", 1)]);
    let open = c.dir.join("open");
    let mut g = serde_json::Map::new();
    // Highest priority: the straggler is handed out first, and more tasks
    // queue behind it on its worker.
    g.insert("straggler".into(), serde_json::json!({"cmd": gate(&open)["cmd"], "priority": 10}));
    for i in 0..30 {
        g.insert(format!("t{i}"), serde_json::json!(["sleep", 0.02]));
    }
    let graph = c.dir.write("g.json", &json_graph(g));
    let file = c.file.clone();
    let submit = std::thread::spawn(move || taskfarm(&["submit", graph.to_str().unwrap(), "--scheduler-file", file.to_str().unwrap()]));
    // Every other task finishes while the straggler still runs.
    wait_for("the 30 independent tasks to finish", Duration::from_secs(60), || status(&c.file).unwrap()["tasks"]["memory"].as_u64() == Some(30));
    assert!(stat(&c.file, "tasks_stolen") >= 1, "a task queued behind the straggler was moved");
    std::fs::write(&open, "").unwrap();
    let o = submit.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// A worker whose spill disk is full (a 1 MiB tmpfs as its local directory,
/// mounted in a mount namespace of its own) and whose memory fills: the
/// scheduler is told, and the tasks only it could run fail with an error
/// naming the worker and the disk, which `submit` prints; nothing hangs.
#[test]
#[ignore = "needs root for a private tmpfs mount (unshare -m): tests/run-all.sh runs this"]
fn a_full_spill_disk_fails_the_work_it_blocks_with_a_clear_error() {
    assert_eq!(taskfarm::util::effective_uid(), 0, "this test mounts a tmpfs and needs root (tests/run-all.sh runs it as root)");
    let c = Cluster::start("enospc", &[]);
    let mnt = c.dir.join("tiny");
    std::fs::create_dir_all(&mnt).unwrap();
    let script = "mount -t tmpfs -o size=1m taskfarm-test \"$1\" && exec \"$0\" worker --scheduler-file \"$2\" --name full --nthreads 2 \
                  --memory-limit 200MB --memory-terminate false --local-directory \"$1\"";
    let log = c.dir.join("worker-full.log");
    let child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, bin(), mnt.to_str().unwrap(), c.file_arg()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let worker = Proc { child, log };
    wait_for("the worker to register", Duration::from_secs(30), || status(&c.file).is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(1)));
    // Eight 40 MB values one task needs at once: 320 MB for a 200 MB worker with a 1 MiB disk.
    let mut g = serde_json::Map::new();
    let mut lens = vec![serde_json::json!("list")];
    for i in 0..8 {
        g.insert(format!("v{i}"), serde_json::json!({"cmd": ["head", "-c", "40000000", "/dev/zero"]}));
        lens.push(serde_json::json!(["len", format!("v{i}")]));
    }
    g.insert("total".into(), serde_json::Value::Array(lens));
    let o = c.submit(&serde_json::Value::Object(g).to_string(), &["--keys", "total", "--timeout", "5m"]);
    assert_eq!(o.status.code(), Some(1), "{}\n{}", stderr(&o), worker.log_text());
    let e = stderr(&o);
    assert!(e.contains("worker 'full'") && e.contains("cannot spill to disk") && e.contains("No space left on device"), "{e}\n{}", worker.log_text());
    assert!(worker.log_text().contains("No space left on device"), "{}", worker.log_text());
}
