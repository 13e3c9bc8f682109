//! Many workers on one scheduler over real sockets (issue 16), bounded to
//! what a 2-core test machine does in seconds: the simulated workers of
//! runtime/examples/many_workers.rs (bench/many_workers.sh goes further).

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The harness, built beside the binary (`cargo build --all-targets`, or
/// `cargo test`, which builds the examples).
fn harness() -> PathBuf {
    let p = std::path::Path::new(bin()).parent().expect("target dir").join("examples").join("many_workers");
    assert!(p.is_file(), "{} is missing: cargo build -p taskfarm --example many_workers", p.display());
    p
}

#[test]
fn three_hundred_simulated_workers_register_at_once_and_share_a_graph() {
    let c = Cluster::start("scale", &[]);
    let n = 300;
    let mut sim = Command::new(harness())
        .args(["--scheduler-file", c.file_arg(), "--workers", &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the harness starts");
    let mut out = BufReader::new(sim.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // all of them, from one address at once: none lost to the handshake gate
    assert!(line.starts_with(&format!("registered {n} workers in ")) && line.contains("(0 failed)"), "{line}");
    let s = status(&c.file).expect("status");
    assert_eq!(s["workers"].as_array().unwrap().len(), n);
    // one descriptor per connection, and a fixed number of threads (the
    // event loop), not one or two per connection
    let pid = c.scheduler.child.id();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    assert!(fds <= n + 64, "the scheduler holds {fds} descriptors for {n} workers");
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count();
    assert!(threads < 32, "the scheduler runs {threads} threads for {n} workers");

    let tasks = 3000;
    let graph: serde_json::Map<String, serde_json::Value> = (0..tasks).map(|i| (format!("t{i}"), serde_json::json!(["noop"]))).collect();
    let o = c.submit(&serde_json::Value::Object(graph).to_string(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let results: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON results");
    assert_eq!(results.as_object().unwrap().len(), tasks);
    assert!(results.as_object().unwrap().values().all(|v| v.is_null()));

    drop(sim.stdin.take()); // the harness stops when its input closes
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("finished {tasks} tasks"), "every task ran on a simulated worker, once");
    let code = wait_child(&mut sim, Duration::from_secs(30));
    assert_eq!(code, Some(0));
}

fn wait_child(child: &mut std::process::Child, timeout: Duration) -> Option<i32> {
    let mut code = None;
    wait_for("the harness to exit", timeout, || match child.try_wait() {
        Ok(Some(s)) => {
            code = s.code();
            true
        }
        _ => false,
    });
    code
}
