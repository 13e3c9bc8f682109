//! Scheduler, workers and clients as separate real processes over TCP.

mod common;
use common::*;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const SEED: &str = r#"{"x": 1, "y": ["inc", "x"], "z": ["add", "y", 10]}"#;

#[test]
fn seed_graph_through_scheduler_and_two_workers_then_clean_shutdown() {
    let mut c = Cluster::start("seed", &[("w1", 1), ("w2", 1)]);
    let mode = std::fs::metadata(&c.file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "scheduler file holds the secret: private");
    let o = c.submit(SEED, &[]);
    assert_eq!(stdout(&o), "{\"z\": 12}\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0));

    let s = status(&c.file).unwrap();
    assert_eq!(s["workers"].as_array().unwrap().len(), 2);
    assert_eq!(s["tasks"]["processing"], 0);
    // Results were released once fetched: nothing is left held.
    wait_for("tasks to be forgotten", Duration::from_secs(10), || status(&c.file).unwrap()["tasks"]["memory"] == 0);

    let o = taskfarm(&["shutdown", "--scheduler-file", c.file_arg()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(c.scheduler.wait_exit(Duration::from_secs(20)), Some(0), "{}", c.scheduler.log_text());
    for w in &mut c.workers {
        assert_eq!(w.wait_exit(Duration::from_secs(20)), Some(0), "worker exits 0: {}", w.log_text());
    }
    assert!(!c.file.exists(), "scheduler file removed on clean shutdown");
    let scratch: Vec<_> = std::fs::read_dir(c.dir.join("scratch")).unwrap().collect();
    assert!(scratch.is_empty(), "worker scratch directories removed: {scratch:?}");
}

#[test]
fn command_graph_moves_dependencies_peer_to_peer() {
    let c = Cluster::start("p2p", &[("w1", 2), ("w2", 2)]);
    // Restrictions force the data of "words" (made on w1) to be needed on w2.
    let g = r#"{
        "words": {"cmd": ["sh", "-c", "printf 'alpha beta gamma'"], "workers": "w1"},
        "count": {"cmd": ["wc", "-w"], "stdin": "words", "workers": "w2"},
        "shout": {"cmd": ["tr", "a-z", "A-Z"], "stdin": "words", "workers": "w2"},
        "n": {"cmd": ["sh", "-c", "echo $(( $1 * 2 ))", "sh", "count"], "workers": "w1"},
        "out": ["list", "shout", "n"]
    }"#;
    let o = c.submit(g, &[]);
    assert_eq!(stdout(&o), "{\"out\": [\"ALPHA BETA GAMMA\", \"6\\n\"]}\n", "{}", stderr(&o));
    // w2 fetched "words" from w1's data server, and w1 fetched "count" from w2:
    // values between workers never go through the scheduler, so these
    // counters prove peer-to-peer transfer.
    wait_for("transfer counters to reach the scheduler", Duration::from_secs(10), || {
        let w1 = c.worker_status("w1");
        let w2 = c.worker_status("w2");
        w2["fetched_from_peers"].as_u64() >= Some(1)
            && w1["served_to_peers"].as_u64() >= Some(1)
            && w1["fetched_from_peers"].as_u64() >= Some(1)
    });
}

#[test]
fn small_results_come_with_the_completion_and_large_ones_from_the_worker() {
    let c = Cluster::start("inline", &[("w1", 1)]);
    // "small" is a few bytes; "big" (100,000 bytes) is over the inline limit.
    let o = c.submit(r#"{"small": ["inc", 1], "big": ["zeros", 100000]}"#, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("\"small\": 2"), "{}", stdout(&o));
    // The client fetched only "big" from the worker's data server.
    wait_for("the fetch counter to reach the scheduler", Duration::from_secs(10), || c.worker_status("w1")["served_to_peers"].as_u64() >= Some(1));
    assert_eq!(c.worker_status("w1")["served_to_peers"].as_u64(), Some(1), "only the large result was fetched");
}

#[test]
fn wrong_secret_is_refused_with_authentication_error() {
    let c = Cluster::start("auth", &[("w1", 1)]);
    let mut j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&c.file).unwrap()).unwrap();
    j["secret"] = serde_json::Value::String("00".repeat(32));
    let forged = c.dir.write("forged.json", &j.to_string());
    let g = c.dir.write("g.json", SEED);
    let o = taskfarm(&["submit", g.to_str().unwrap(), "--scheduler-file", forged.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(4), "an environment failure");
    assert!(stderr(&o).contains("authentication failed"), "{}", stderr(&o));
    let o = taskfarm(&["status", "--scheduler-file", forged.to_str().unwrap()]);
    assert!(stderr(&o).contains("authentication failed"));
    // The real secret still works.
    assert_eq!(stdout(&c.submit(SEED, &[])), "{\"z\": 12}\n");
}

#[test]
fn garbage_and_broken_connections_do_not_disturb_a_running_graph() {
    let c = Cluster::start("garbage", &[("w1", 2), ("w2", 2)]);
    let addr = taskfarm::util::parse_address(status(&c.file).unwrap()["address"].as_str().unwrap()).unwrap();
    // A graph that runs for a while: 20 sleeps, then a sum that waits for them.
    let sleeps: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    let mut graph = serde_json::Map::new();
    for k in &sleeps {
        graph.insert(k.clone(), serde_json::json!(["sleep", 0.1]));
    }
    let incs: Vec<serde_json::Value> = (0..20).map(|i| serde_json::json!(["inc", i])).collect();
    let mut list = vec![serde_json::json!("list")];
    list.extend(incs);
    graph.insert("total".into(), serde_json::json!({"task": ["sum", list], "deps": sleeps}));
    let g = c.dir.write("long.json", &serde_json::Value::Object(graph).to_string());
    let submit = std::thread::spawn({
        let g = g.clone();
        let file = c.file.clone();
        move || taskfarm(&["submit", g.to_str().unwrap(), "--scheduler-file", file.to_str().unwrap(), "--keys", "total"])
    });
    let attack = std::thread::spawn(move || {
        // 1. random bytes
        let mut s = TcpStream::connect(addr).unwrap();
        write_all(&mut s, &taskfarm::util::random_bytes(4096));
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf); // the scheduler closes it
        // 2. right magic, wrong proof
        let mut s = TcpStream::connect(addr).unwrap();
        let mut hello = b"TASKFARM".to_vec();
        hello.extend_from_slice(&taskfarm::protocol::PROTOCOL_VERSION.to_le_bytes());
        hello.push(2);
        hello.push(0); // encrypted, as the scheduler is
        hello.extend_from_slice(&[1u8; 32]);
        write_all(&mut s, &hello);
        let mut reply = [0u8; 75];
        let _ = s.read_exact(&mut reply);
        write_all(&mut s, &[0u8; 32]);
        let _ = s.read_to_end(&mut buf);
        // 3. connect and drop at once
        drop(TcpStream::connect(addr).unwrap());
    });
    attack.join().unwrap();
    // 4. authenticated, then an oversized frame, then undecodable garbage.
    let file = taskfarm::schedfile::SchedulerFile::read(&c.file).unwrap();
    let secret = file.secret_bytes().unwrap();
    for payload in [
        {
            let mut v = (1u64 << 40).to_le_bytes().to_vec();
            v.push(0);
            v
        },
        {
            let mut v = 12u64.to_le_bytes().to_vec();
            v.push(0);
            v.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
            v
        },
    ] {
        // Through the connection's own (encrypted) writer: the frames are bad, not the records.
        use std::io::Write;
        let link = taskfarm::schedfile::connect(&file.address, &secret, taskfarm::protocol::Role::Client).unwrap();
        let mut w = link.writer().unwrap();
        let _ = w.write_all(&payload).and_then(|()| w.flush());
        let mut buf = Vec::new();
        let _ = link.reader().unwrap().read_to_end(&mut buf);
    }
    let o = submit.join().unwrap();
    assert_eq!(stdout(&o), "{\"total\": 210}\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0));
    let log = c.scheduler.log_text();
    assert!(log.contains("not a taskfarm process"), "{log}");
    assert!(log.contains("authentication failed"), "{log}");
    assert!(log.contains("outside the allowed"), "{log}");
    assert!(log.contains("undecodable"), "{log}");
    assert_eq!(status(&c.file).unwrap()["workers"].as_array().unwrap().len(), 2, "workers unaffected");
}

#[test]
fn stale_scheduler_file_is_reported_as_stale() {
    let d = TempDir::new("stale");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let f = taskfarm::schedfile::SchedulerFile::new(&format!("tcp://127.0.0.1:{port}"), b"secret");
    let p = d.join("s.json");
    f.write(&p).unwrap();
    let g = d.write("g.json", SEED);
    let o = taskfarm(&["submit", g.to_str().unwrap(), "--scheduler-file", p.to_str().unwrap(), "--timeout", "1s"]);
    assert_eq!(o.status.code(), Some(4), "an environment failure");
    assert!(stderr(&o).contains("is stale") && stderr(&o).contains("does not answer"), "{}", stderr(&o));
    let o = taskfarm(&["worker", "--scheduler-file", d.join("never.json").to_str().unwrap(), "--death-timeout", "300ms"]);
    assert_eq!(o.status.code(), Some(4), "an environment failure");
    assert!(stderr(&o).contains("does not exist yet") && stderr(&o).contains("gave up"), "{}", stderr(&o));
}

#[test]
fn killed_worker_does_not_lose_the_graph() {
    let mut c = Cluster::start("kill", &[("w1", 1), ("w2", 1)]);
    // Chains of sleeps so both workers hold results and run tasks when one dies.
    let mut text = String::from("{");
    for i in 0..6 {
        text.push_str(&format!("\"a{i}\": [\"sleep\", 0.05], \"b{i}\": [\"add\", {i}, [\"sum\", [\"list\"]]], \"c{i}\": [\"list\", \"a{i}\", \"b{i}\"], "));
    }
    text.push_str("\"out\": [\"list\", ");
    text.push_str(&(0..6).map(|i| format!("\"c{i}\"")).collect::<Vec<_>>().join(", "));
    text.push_str("]}");
    let g = c.dir.write("g.json", &text);
    let expected = {
        let o = taskfarm(&["run", g.to_str().unwrap()]);
        stdout(&o)
    };
    let submit = std::process::Command::new(bin())
        .args(["submit", g.to_str().unwrap(), "--scheduler-file", c.file_arg()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("w1 to be running tasks", Duration::from_secs(10), || c.worker_status("w1")["processing"].as_u64() >= Some(1));
    c.workers[0].child.kill().unwrap();
    let o = submit.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), expected);
    assert!(expected.starts_with("{\"out\": [[null, 0], [null, 1]"), "{expected}");
    let again = c.submit(&text, &[]);
    assert_eq!(stdout(&again), expected);
    let log = c.scheduler.log_text();
    assert!(log.contains("worker 'w1'") && log.contains("removed"), "{log}");
    assert_eq!(status(&c.file).unwrap()["workers"].as_array().unwrap().len(), 1);
}

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(st.success());
}

#[test]
fn idle_timeout_and_pid_file() {
    let d = TempDir::new("idle");
    let file = d.join("s.json");
    let pid = d.join("s.pid");
    let mut s = Proc::spawn(
        &["scheduler", "--scheduler-file", file.to_str().unwrap(), "--host", "127.0.0.1", "--idle-timeout", "1s", "--pid-file", pid.to_str().unwrap()],
        d.join("s.log"),
    );
    wait_for("pid file", Duration::from_secs(10), || pid.exists());
    assert_eq!(std::fs::read_to_string(&pid).unwrap().trim(), s.child.id().to_string());
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(0), "{}", s.log_text());
    assert!(s.log_text().contains("idle for 1 s"), "{}", s.log_text());
    assert!(!file.exists() && !pid.exists(), "scheduler file and pid file removed");
}

#[test]
fn sigterm_shuts_the_scheduler_down_cleanly_and_workers_follow() {
    let mut c = Cluster::start("sigterm", &[("w1", 1)]);
    signal(c.scheduler.child.id(), "-TERM");
    assert_eq!(c.scheduler.wait_exit(Duration::from_secs(20)), Some(0), "{}", c.scheduler.log_text());
    assert!(c.scheduler.log_text().contains("received signal"), "{}", c.scheduler.log_text());
    assert!(!c.file.exists());
    assert_eq!(c.workers[0].wait_exit(Duration::from_secs(20)), Some(0), "told to shut down: {}", c.workers[0].log_text());
}

#[test]
fn workers_exit_nonzero_when_the_scheduler_dies_and_does_not_come_back() {
    let mut c = Cluster::start("schedkill", &[]);
    let log = c.dir.join("worker-w1.log");
    c.workers.push(Proc::spawn(&["worker", "--scheduler-file", c.file_arg(), "--name", "w1", "--death-timeout", "2s"], log));
    wait_for("the worker to register", Duration::from_secs(30), || status(&c.file).is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(1)));
    c.scheduler.child.kill().unwrap();
    // It looks for the scheduler again for --death-timeout, then gives up.
    assert_eq!(c.workers[0].wait_exit(Duration::from_secs(60)), Some(1), "{}", c.workers[0].log_text());
    let text = c.workers[0].log_text();
    assert!(text.contains("looking for the scheduler again") && text.contains("it did not come back"), "{text}");
}

#[test]
fn a_worker_looking_for_its_lost_scheduler_leaves_at_once_on_sigterm_and_cleans_up() {
    let mut c = Cluster::start("schedlost-term", &[]);
    let scratch = c.dir.join("scratch-w");
    std::fs::create_dir_all(&scratch).unwrap();
    let log = c.dir.join("worker-w.log");
    c.workers.push(Proc::spawn(&["worker", "--scheduler-file", c.file_arg(), "--name", "w", "--death-timeout", "600s", "--local-directory", scratch.to_str().unwrap()], log));
    wait_for("the worker to register", Duration::from_secs(30), || status(&c.file).is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(1)));
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 1, "the worker's scratch directory");
    c.scheduler.child.kill().unwrap();
    wait_for("the worker to look for its scheduler", Duration::from_secs(30), || c.workers[0].log_text().contains("looking for the scheduler again"));
    signal(c.workers[0].child.id(), "-TERM");
    assert_eq!(c.workers[0].wait_exit(Duration::from_secs(30)), Some(1), "{}", c.workers[0].log_text());
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "scratch removed: {}", c.workers[0].log_text());
}

#[test]
fn worker_by_address_needs_the_secret_from_the_environment() {
    let mut c = Cluster::start("byaddr", &[]);
    let f = taskfarm::schedfile::SchedulerFile::read(&c.file).unwrap();
    let o = taskfarm(&["worker", &f.address, "--death-timeout", "1s"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("TASKFARM_SECRET"), "{}", stderr(&o));
    let log = c.dir.join("byaddr.log");
    let child = std::process::Command::new(bin())
        .args(["worker", &f.address, "--name", "envw", "--nthreads", "1"])
        .env("TASKFARM_SECRET", &f.secret)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    c.workers.push(Proc { child, log });
    wait_for("worker to join by address", Duration::from_secs(20), || status(&c.file).is_some_and(|s| s["workers"][0]["name"] == "envw"));
    assert_eq!(stdout(&c.submit(SEED, &[])), "{\"z\": 12}\n");
}

#[test]
fn worker_over_its_memory_limit_leaves_and_its_work_is_rescheduled() {
    let mut c = Cluster::start("memlimit", &[("healthy", 1)]);
    let scratch = c.dir.join("scratch");
    let log = c.dir.join("greedy.log");
    // 1 MB is far below any process's RSS: the worker leaves at its first check.
    c.workers.push(Proc::spawn(
        &["worker", "--scheduler-file", c.file_arg(), "--name", "greedy", "--memory-limit", "1MB", "--local-directory", scratch.to_str().unwrap()],
        log,
    ));
    let greedy = c.workers.last_mut().unwrap();
    assert_eq!(greedy.wait_exit(Duration::from_secs(30)), Some(3), "{}", greedy.log_text());
    assert!(greedy.log_text().contains("memory limit"), "{}", greedy.log_text());
    assert_eq!(stdout(&c.submit(SEED, &[])), "{\"z\": 12}\n");
    let o = taskfarm(&["worker", "--scheduler-file", c.file_arg(), "--memory-limit", "lots"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--memory-limit"), "{}", stderr(&o));
}

/// A client that goes away stops what only it wanted, also a command that
/// is running: its process is killed, not left to run to its end.
#[test]
fn a_command_and_what_it_started_die_with_a_worker_killed_by_sigkill() {
    let mut c = Cluster::start("orphans", &[("w1", 1)]);
    // A shell that starts a background sleeper and waits: two processes.
    let pids = c.dir.join("pids");
    let graph = format!(r#"{{"long": {{"cmd": ["sh", "-c", "sleep 600 & echo $$ $! > {0}.tmp && mv {0}.tmp {0}; wait"]}}}}"#, pids.display());
    let g = c.dir.write("long.json", &graph);
    let _submit = Proc::spawn(&["submit", g.to_str().unwrap(), "--scheduler-file", c.file_arg(), "--timeout", "10m"], c.dir.join("submit.log"));
    wait_for("the command to start", Duration::from_secs(60), || pids.exists());
    let procs: Vec<u32> = std::fs::read_to_string(&pids).unwrap().split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(procs.len(), 2);
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
    };
    assert!(procs.iter().all(|&p| alive(p)));
    let mut worker = c.workers.remove(0);
    worker.child.kill().unwrap(); // SIGKILL: the worker cannot clean up itself
    worker.child.wait().unwrap();
    wait_for("the command and its child to be killed", Duration::from_secs(10), || procs.iter().all(|&p| !alive(p)));
}

#[test]
fn a_running_command_is_killed_when_its_client_leaves() {
    let c = Cluster::start("cancel-cmd", &[("w1", 1)]);
    let pidfile = c.dir.join("sleeper.pid");
    let graph = format!(r#"{{"long": {{"cmd": ["sh", "-c", "echo $$ > {0}.tmp && mv {0}.tmp {0} && exec sleep 600"]}}}}"#, pidfile.display());
    let g = c.dir.write("long.json", &graph);
    let mut submit = Proc::spawn(&["submit", g.to_str().unwrap(), "--scheduler-file", c.file_arg()], c.dir.join("submit.log"));
    wait_for("the command to start", Duration::from_secs(60), || pidfile.exists());
    let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
    };
    assert!(alive(pid));
    submit.child.kill().unwrap();
    submit.child.wait().unwrap();
    wait_for("the command's process to be killed", Duration::from_secs(60), || !alive(pid));
    // the worker goes on
    let out = c.submit(r#"{"after": {"cmd": ["echo", "next"]}}"#, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("next"), "{}", stdout(&out));
}

#[test]
fn a_frozen_scheduler_is_noticed_by_its_clients_and_workers() {
    let mut c = Cluster::start("frozen", &[]);
    let log = c.dir.join("worker-w.log");
    c.workers.push(Proc::spawn(&["worker", "--scheduler-file", c.file_arg(), "--name", "w", "--scheduler-timeout", "10s", "--death-timeout", "3s"], log));
    wait_for("the worker to register", Duration::from_secs(30), || status(&c.file).is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(1)));
    let g = c.dir.write("slow.json", r#"{"slow": ["sleep", 30]}"#);
    let mut submit = Proc::spawn(&["submit", g.to_str().unwrap(), "--scheduler-file", c.file_arg(), "--scheduler-timeout", "10s"], c.dir.join("submit.log"));
    wait_for("the task to start", Duration::from_secs(30), || status(&c.file).is_some_and(|s| s["tasks"]["processing"] == 1));
    let sched = c.scheduler.child.id().to_string();
    let signal = |sig: &str| assert!(std::process::Command::new("kill").args([sig, &sched]).status().unwrap().success());
    signal("-STOP");
    let client_code = submit.wait_exit(Duration::from_secs(60));
    let worker_code = c.workers[0].wait_exit(Duration::from_secs(60));
    signal("-CONT");
    assert_eq!(client_code, Some(1), "{}", submit.log_text());
    assert!(submit.log_text().contains("has said nothing for 10 s") && submit.log_text().contains("--scheduler-timeout"), "{}", submit.log_text());
    assert_eq!(worker_code, Some(1), "{}", c.workers[0].log_text());
    assert!(c.workers[0].log_text().contains("no word from the scheduler for 10 s"), "{}", c.workers[0].log_text());
}

#[test]
fn submit_timeout_names_what_it_waited_for_and_long_waits_say_so() {
    let c = Cluster::start("submit-timeout", &[("w1", 2)]);
    // A task no connected worker may run: --timeout ends the wait with why.
    let o = c.submit(r#"{"x": {"task": ["inc", 1], "workers": ["gone"]}}"#, &["--timeout", "3s"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("gave up after 3 s (--timeout) waiting for 1 of 1 key(s): x") && e.contains("'x' cannot run:") && e.contains("gone"), "{e}");
    // A long wait says every 10 s what it still waits for.
    let o = c.submit(r#"{"slow": ["sleep", 11], "quick": ["inc", 1]}"#, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("still waiting after 10 s for 1 of 2 key(s): slow"), "{}", stderr(&o));
    let o = c.submit(r#"{"a": 1}"#, &["--scheduler-timeout", "2s"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("must be longer than the scheduler's ping interval"), "{}", stderr(&o));
}

/// 1,000 chains of 5 command tasks (each appends a dot to its input) and
/// their total length: 5,001 tasks, values spread over the workers, so a
/// killed worker takes results that others still need.
fn chains_graph(gate: &std::path::Path) -> (String, u64) {
    let mut g = serde_json::Map::new();
    // The total waits for this file too: the test decides when it may end.
    g.insert("open".into(), serde_json::json!({"cmd": ["sh", "-c", format!("while [ ! -e '{}' ]; do sleep 0.02; done", gate.display())]}));
    let mut lens = vec![serde_json::json!("list")];
    for i in 0..1000 {
        g.insert(format!("c{i}-0"), serde_json::json!({"cmd": ["printf", "x"]}));
        for j in 1..5 {
            g.insert(format!("c{i}-{j}"), serde_json::json!({"cmd": ["sh", "-c", "printf '%s.' \"$1\"", "sh", format!("c{i}-{}", j - 1)]}));
        }
        lens.push(serde_json::json!(["len", format!("c{i}-4")]));
    }
    g.insert("total".into(), serde_json::json!({"task": ["sum", lens], "deps": ["open"]}));
    (serde_json::Value::Object(g).to_string(), 5000)
}

/// Kill -9 one of the 4 workers every `every` and start a replacement, until
/// the graph is done (bounded): it must finish, with the right result.
fn soak(tag: &str, every: Duration, pick: impl Fn(usize, usize) -> usize) {
    let mut c = Cluster::start(tag, &[("w0", 1), ("w1", 1), ("w2", 1), ("w3", 1)]);
    let gate = c.dir.join("open");
    let (graph, want) = chains_graph(&gate);
    let g = c.dir.write("chains.json", &graph);
    let out = c.dir.join("submit.out");
    let child = std::process::Command::new(bin())
        .args(["submit", g.to_str().unwrap(), "--scheduler-file", c.file_arg(), "--keys", "total", "--timeout", "10m"])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(c.dir.join("submit.log")).unwrap())
        .spawn()
        .unwrap();
    let mut submit = Proc { child, log: c.dir.join("submit.log") };
    let mut kills = 0;
    let mut next_name = 4;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let mut finished_at_kill = 0;
    let code = loop {
        if let Some(code) = submit.wait_exit(every) {
            break Some(code);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        // Kill at this pace, but only once some work was done since the last
        // kill (200 tasks, a fraction of a second here when idle): on a busy
        // machine the pace follows the progress instead of outrunning it.
        let st = status(&c.file).unwrap_or_default();
        let finished = st["stats"]["tasks_finished"].as_u64().unwrap_or(0);
        let only_gate_left = st["tasks"]["waiting"] == 1 && st["tasks"]["queued"] == 0 && st["tasks"]["processing"] == 1;
        if finished < finished_at_kill + 200 && !only_gate_left {
            continue;
        }
        finished_at_kill = finished;
        let victim = pick(kills, c.workers.len());
        let mut w = c.workers.remove(victim);
        let _ = w.child.kill();
        let _ = w.child.wait();
        kills += 1;
        c.add_worker(&format!("w{next_name}"), 1);
        next_name += 1;
        // After 5 kills the graph may finish (the kills go on until it does).
        if kills == 5 {
            std::fs::write(&gate, "").unwrap();
        }
    };
    let log = submit.log_text();
    assert_eq!(code, Some(0), "after {kills} kills: {log}");
    let s = status(&c.file).unwrap();
    eprintln!("{tag}: {kills} workers killed; stats {}", s["stats"]);
    assert!(kills >= 5, "the graph outlived at least 5 kills ({kills})");
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), format!("{{\"total\": {want}}}"));
}

#[test]
fn soak_a_worker_killed_every_two_seconds_and_replaced() {
    soak("soak-2s", Duration::from_secs(2), |k, n| k * 7 % n);
}

#[test]
fn soak_workers_killed_every_second_young_and_old_in_turn() {
    // Every second kill takes the youngest worker (1 s old), the others the oldest.
    soak("soak-1s", Duration::from_secs(1), |k, n| if k % 2 == 0 { n - 1 } else { 0 });
}

/// A task calling a function that only some workers' programs register runs
/// on those: a stock worker never gets it (it would fail "unknown function").
#[test]
fn a_task_calling_a_registered_function_runs_only_where_it_is_registered() {
    let c = Cluster::start("functions", &[("plain", 4)]);
    // A worker of "our own program": the library, with one more function.
    let file = c.file.clone();
    std::thread::spawn(move || {
        let (sf, link) = taskfarm::schedfile::wait_and_connect(&file, Duration::from_secs(30), taskfarm::protocol::Role::Worker).unwrap();
        let mut registry = taskfarm::functions::Registry::with_builtins();
        registry.register("double", |a, _| match a {
            [taskfarm::value::Data::Json(serde_json::Value::Number(n))] => Ok(taskfarm::value::Data::Json(serde_json::json!(n.as_i64().unwrap() * 2))),
            _ => Err("double(n)".into()),
        });
        let cfg = taskfarm::worker::WorkerConfig { registry, ..taskfarm::worker::WorkerConfig::new("custom", 1, sf.secret_bytes().unwrap()) };
        let _ = taskfarm::worker::run(cfg, link);
    });
    wait_for("both workers", Duration::from_secs(30), || status(&c.file).is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(2)));
    let has = |f: &str| taskfarm::functions::Registry::with_builtins().contains(f) || f == "double";
    let mut text = String::from("{");
    for i in 0..20 {
        text.push_str(&format!(r#""d{i}": ["double", {i}], "#));
    }
    text.push_str(r#""total": ["sum", ["list", "d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8", "d9", "d10", "d11", "d12", "d13", "d14", "d15", "d16", "d17", "d18", "d19"]]}"#);
    let graph = taskfarm::graph::Graph::from_json(&text, &has).unwrap();
    let mut client = taskfarm::Client::from_scheduler_file(&c.file, Duration::from_secs(10)).unwrap();
    let results = client.compute(graph, &["total".to_string()]).unwrap();
    assert_eq!(results.get("total"), Some(&taskfarm::value::Data::Json(serde_json::json!(380))));
    assert_eq!(stat_of(&c, "tasks_erred"), 0, "no task went to the worker without 'double'");
}

fn stat_of(c: &Cluster, name: &str) -> u64 {
    status(&c.file).unwrap()["stats"][name].as_u64().unwrap()
}

/// --memory-terminate holds while a task runs: a command whose output grows
/// the worker past its limit (and then never ends) does not keep it alive;
/// the worker exits with status 3 and says why.
#[test]
fn a_worker_over_its_memory_limit_leaves_while_its_task_still_runs() {
    let mut c = Cluster::start("memterm", &[]);
    let log = c.dir.join("greedy.log");
    c.workers.push(Proc::spawn(&["worker", "--scheduler-file", c.file_arg(), "--name", "greedy", "--memory-limit", "200MB", "--memory-target", "false", "--memory-spill", "false", "--memory-pause", "false"], log));
    wait_for("the worker to register", Duration::from_secs(30), || status(&c.file).is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(1)));
    let g = c.dir.write("grow.json", r#"{"grow": {"cmd": ["sh", "-c", "head -c 300000000 /dev/zero; sleep 600"], "workers": ["greedy"]}}"#);
    let _submit = Proc::spawn(&["submit", g.to_str().unwrap(), "--scheduler-file", c.file_arg()], c.dir.join("submit.log"));
    let greedy = c.workers.last_mut().unwrap();
    assert_eq!(greedy.wait_exit(Duration::from_secs(120)), Some(3), "{}", greedy.log_text());
    assert!(greedy.log_text().contains("exiting so the node does not run out of memory"), "{}", greedy.log_text());
}
