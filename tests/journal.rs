//! The scheduler's journal (`--journal FILE`) with real processes: kill -9
//! of the scheduler mid-graph, a restart with the same journal and
//! scheduler file, workers that come back with their values (counted: the
//! restarted scheduler runs only what had not finished), and a waiting
//! `taskfarm submit` that reconnects and gets the right result.

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const LEAVES: u64 = 200;
const PARTS: u64 = 4;

/// 200 leaves, 4 partial sums, their total, and a command that blocks
/// until the test writes to the named pipe `fifo`.
fn graph(fifo: &std::path::Path) -> String {
    let mut g = serde_json::Map::new();
    for i in 0..LEAVES {
        g.insert(format!("leaf-{i}"), serde_json::json!(["inc", i]));
    }
    let per = LEAVES / PARTS;
    for p in 0..PARTS {
        let leaves: Vec<String> = (p * per..(p + 1) * per).map(|i| format!("leaf-{i}")).collect();
        g.insert(format!("part-{p}"), serde_json::json!(["sum", leaves]));
    }
    let parts: Vec<String> = (0..PARTS).map(|p| format!("part-{p}")).collect();
    g.insert("total".into(), serde_json::json!(["sum", parts]));
    g.insert("gate".into(), serde_json::json!({"cmd": ["sh", "-c", format!("cat '{}'", fifo.display())]}));
    serde_json::Value::Object(g).to_string()
}

/// The processes reading the gate's pipe (`cat FIFO`).
fn gate_readers(fifo: &std::path::Path) -> Vec<u32> {
    let needle = fifo.to_str().unwrap().as_bytes();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"cat")) && args.iter().skip(1).any(|a| *a == needle) {
            out.push(pid);
        }
    }
    out
}

/// Open the gate once its run under the new scheduler reads the pipe (and
/// the old run, killed, does not: it would take the word instead).
fn open_gate(fifo: &std::path::Path, old: Vec<u32>) -> std::thread::JoinHandle<()> {
    wait_for("the gate's new run to read the pipe, alone", Duration::from_secs(120), || {
        let r = gate_readers(fifo);
        r.len() == 1 && !old.contains(&r[0])
    });
    let fifo = fifo.to_path_buf();
    std::thread::spawn(move || std::fs::OpenOptions::new().write(true).open(&fifo).unwrap().write_all(b"open\n").unwrap())
}

/// Distinct keys the journal records as finished.
fn finished_in_journal(path: &std::path::Path) -> usize {
    let Ok(Some(l)) = taskfarm::journal::load(path) else { return 0 };
    let keys: std::collections::HashSet<&str> = l.records.iter().filter_map(|r| if let taskfarm::journal::Record::Finished { key, .. } = r { Some(key.as_str()) } else { None }).collect();
    keys.len()
}

/// `taskfarm submit` of `graph` for `keys` in the background: results in
/// `submit.out`, its log in `submit.err`.
fn spawn_submit(dir: &TempDir, graph: &std::path::Path, c: &Cluster, keys: &str) -> std::process::Child {
    Command::new(bin())
        .args(["submit", graph.to_str().unwrap(), "--scheduler-file", c.file_arg(), "--keys", keys, "--quiet"])
        .env_remove("TASKFARM_SCHEDULER_FILE")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("submit.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("submit.err")).unwrap())
        .spawn()
        .unwrap()
}

/// Wait for the client's exit (bounded); on a timeout, fail with every log.
fn wait_client(submit: &mut std::process::Child, dir: &TempDir, c: &Cluster) -> Option<i32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(s) = submit.try_wait().unwrap() {
            return s.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = submit.kill();
            let mut logs = vec![std::fs::read_to_string(dir.join("submit.err")).unwrap_or_default(), c.scheduler.log_text()];
            logs.extend(c.workers.iter().map(|w| w.log_text()));
            panic!("the client did not finish: {:?}\n{}", status(&c.file), logs.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stat(s: &serde_json::Value, n: &str) -> u64 {
    s["stats"][n].as_u64().unwrap_or_else(|| panic!("no counter {n} in {s}"))
}

#[test]
fn kill_9_of_the_scheduler_then_a_restart_with_the_journal_keeps_the_workers_values_and_the_waiting_client() {
    let dir = TempDir::new("journal-kill");
    let journal = dir.join("journal");
    let fifo = dir.join("gate");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let sched_args = ["--journal", journal.to_str().unwrap()];
    let mut c = Cluster::start_with("journal-kill", &[("w0", 2), ("w1", 2)], &[], &sched_args);
    let graph_file = dir.write("g.json", &graph(&fifo));
    let keys = "part-0,part-1,part-2,part-3,total,gate";
    let out = dir.join("submit.out");
    let mut submit = spawn_submit(&dir, &graph_file, &c, keys);

    // Everything but the gate has finished, and the journal has it on disk.
    let before = LEAVES + PARTS + 1;
    wait_for("the journal to record every task but the gate", Duration::from_secs(60), || finished_in_journal(&journal) as u64 >= before);
    wait_for("the gate to read its pipe", Duration::from_secs(60), || !gate_readers(&fifo).is_empty());
    let old = gate_readers(&fifo);
    c.scheduler.child.kill().unwrap(); // SIGKILL
    c.scheduler.child.wait().unwrap();
    // A torn last write, as a kill in the middle of one leaves.
    std::fs::OpenOptions::new().append(true).open(&journal).unwrap().write_all(&[9, 0, 0, 0, 1, 2, 3]).unwrap();

    let mut args = vec!["scheduler", "--scheduler-file", c.file_arg(), "--host", "127.0.0.1"];
    args.extend_from_slice(&sched_args);
    c.scheduler = Proc::spawn(&args, dir.join("scheduler-2.log"));
    let back = || status(&c.file).is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(2) && stat(&s, "values_adopted") > PARTS);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !back() {
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = std::iter::once(dir.join("scheduler-2.log")).chain(c.workers.iter().map(|w| w.log.clone())).map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect();
            panic!("the workers did not come back with their values: {:?}\n{}", status(&c.file), logs.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let opener = open_gate(&fifo, old);
    let code = wait_client(&mut submit, &dir, &c);
    opener.join().unwrap();
    let err = std::fs::read_to_string(dir.join("submit.err")).unwrap();
    assert_eq!(code, Some(0), "submit failed: {err}");
    assert!(err.contains("submitting the graph again"), "the client reconnected: {err}");
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let per = LEAVES / PARTS;
    for p in 0..PARTS {
        assert_eq!(results[format!("part-{p}")], (p * per + 1..=(p + 1) * per).sum::<u64>(), "{results}");
    }
    assert_eq!(results["total"], (1..=LEAVES).sum::<u64>());
    assert_eq!(results["gate"], "open\n");

    // The restarted scheduler ran the gate and nothing else: the values
    // the workers held (the partial sums and the total) were taken over.
    let s = status(&c.file).unwrap();
    let log = std::fs::read_to_string(dir.join("scheduler-2.log")).unwrap();
    assert_eq!(stat(&s, "tasks_finished"), 1, "only the gate ran again: {s}\n{log}");
    assert!(stat(&s, "values_adopted") > PARTS, "{s}");
    assert!(log.contains("dropped the last 7 bytes of the journal"), "the torn write is reported: {log}");
    for w in &c.workers {
        let text = w.log_text();
        assert!(text.contains("reached a scheduler again"), "{text}");
    }
}

#[test]
fn a_journal_in_use_by_another_scheduler_or_open_to_others_is_refused() {
    let dir = TempDir::new("journal-lock");
    let journal = dir.join("journal");
    let c = Cluster::start_with("journal-lock", &[], &[], &["--journal", journal.to_str().unwrap()]);
    let second = taskfarm(&["scheduler", "--scheduler-file", dir.join("other.json").to_str().unwrap(), "--host", "127.0.0.1", "--journal", journal.to_str().unwrap()]);
    assert!(!second.status.success());
    assert!(stderr(&second).contains("in use by another scheduler"), "{}", stderr(&second));
    drop(c);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o644)).unwrap();
    let third = taskfarm(&["scheduler", "--scheduler-file", dir.join("third.json").to_str().unwrap(), "--host", "127.0.0.1", "--journal", journal.to_str().unwrap()]);
    assert!(!third.status.success());
    assert!(stderr(&third).contains("chmod 600"), "{}", stderr(&third));
}

#[test]
fn a_new_scheduler_resumes_from_the_journal_and_the_cache_when_every_worker_is_new() {
    let dir = TempDir::new("journal-new");
    let journal = dir.join("journal");
    let cache = dir.join("cache");
    let fifo = dir.join("gate");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // 50 cacheable commands, a gate, and the words of all of them.
    let mut g = serde_json::Map::new();
    let cmds: Vec<String> = (0..50).map(|i| format!("cmd-{i}")).collect();
    for (i, k) in cmds.iter().enumerate() {
        g.insert(k.clone(), serde_json::json!({"cmd": ["echo", format!("w{i}")], "cache": true}));
    }
    g.insert("gate".into(), serde_json::json!({"cmd": ["sh", "-c", format!("cat '{}'", fifo.display())]}));
    let mut all = cmds.clone();
    all.push("gate".into());
    g.insert("words".into(), serde_json::json!(["concat", all]));
    let sched_args = ["--journal", journal.to_str().unwrap(), "--cache", cache.to_str().unwrap(), "--reattach-timeout", "1s"];
    let mut c = Cluster::start_with("journal-new", &[("old", 2)], &[], &sched_args);
    let graph_file = dir.write("g.json", &serde_json::Value::Object(g).to_string());
    let out = dir.join("submit.out");
    let mut submit = spawn_submit(&dir, &graph_file, &c, "words");
    wait_for("the 50 commands to be journaled as finished", Duration::from_secs(60), || finished_in_journal(&journal) >= 50);
    wait_for("the gate to read its pipe", Duration::from_secs(60), || !gate_readers(&fifo).is_empty());
    let old = gate_readers(&fifo);
    // The allocation ends: the scheduler and its worker are gone for good.
    for p in std::iter::once(&mut c.scheduler).chain(c.workers.iter_mut()) {
        p.child.kill().unwrap();
        p.child.wait().unwrap();
    }
    c.workers.clear();
    let mut args = vec!["scheduler", "--scheduler-file", c.file_arg(), "--host", "127.0.0.1"];
    args.extend_from_slice(&sched_args);
    c.scheduler = Proc::spawn(&args, dir.join("scheduler-2.log"));
    c.add_worker("new", 2);
    let opener = open_gate(&fifo, old);
    let code = wait_client(&mut submit, &dir, &c);
    opener.join().unwrap();
    let err = std::fs::read_to_string(dir.join("submit.err")).unwrap();
    assert_eq!(code, Some(0), "submit failed: {err}");
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let words: String = (0..50).map(|i| format!("w{i}\n")).collect::<String>() + "open\n";
    assert_eq!(results["words"], words.as_str());
    // The new scheduler loaded the 50 commands from the cache and ran only
    // the gate and the words.
    let s = status(&c.file).unwrap();
    let log = std::fs::read_to_string(dir.join("scheduler-2.log")).unwrap();
    assert_eq!(stat(&s, "cache_loads"), 50, "{s}\n{log}");
    assert_eq!(stat(&s, "tasks_finished") - stat(&s, "cache_loads"), 2, "{s}\n{log}");
    assert!(log.contains("resuming without 1 of the journal's workers") && log.contains("old"), "{log}");
}
