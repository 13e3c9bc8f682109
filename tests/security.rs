//! Shared machines: another user on the same node and file system. These
//! tests run a second, real user (uid 65534 through `setpriv`), so they need
//! root, as tests/run-all.sh has.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const OTHER_UID: &str = "65534";

fn require_root() {
    assert_eq!(taskfarm::util::effective_uid(), 0, "this test runs a second user with setpriv and needs root (tests/run-all.sh runs it as root)");
    assert!(Command::new("setpriv").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success()), "setpriv (util-linux) is missing");
}

/// `taskfarm ARGS` as the other user; the binary is copied where that user may run it.
fn as_other_user(bin: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", OTHER_UID, "--regid", OTHER_UID, "--clear-groups", "--"]).arg(bin).args(args).env_remove("TASKFARM_SCHEDULER_FILE");
    c
}

/// A directory every user may enter, with a copy of the binary the other
/// user may run.
fn scratch_with_binary(tag: &str) -> (TempDir, std::path::PathBuf) {
    let d = TempDir::new(tag);
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = d.join("taskfarm");
    std::fs::copy(common::bin(), &bin).unwrap();
    (d, bin)
}

/// Run to completion, but at most `timeout` (then killed): (exit code, stderr).
fn run_bounded(mut c: Command, dir: &TempDir, tag: &str, timeout: Duration) -> (Option<i32>, String) {
    let log = dir.join(&format!("{tag}.log"));
    let child = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let mut p = Proc { child, log };
    let code = p.wait_exit(timeout);
    (code, p.log_text())
}

#[test]
#[ignore = "needs root and setpriv to act as a second user: tests/run-all.sh runs this"]
fn a_scheduler_file_planted_by_another_user_is_refused() {
    require_root();
    let (d, bin) = scratch_with_binary("planted");
    // The attacker's own private directory, and a shared one anyone may write (no sticky bit).
    let theirs = d.join("attacker");
    std::fs::create_dir(&theirs).unwrap();
    assert!(Command::new("chown").args([&format!("{OTHER_UID}:{OTHER_UID}"), theirs.to_str().unwrap()]).status().unwrap().success());
    let shared = d.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();

    // The attacker runs a scheduler and moves its file over the victim's path.
    let attacker_file = theirs.join("s.json");
    let log = d.join("attacker.log");
    let child = as_other_user(&bin, &["scheduler", "--scheduler-file", attacker_file.to_str().unwrap(), "--host", "127.0.0.1"])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _attacker = Proc { child, log };
    wait_for("the attacker's scheduler file", Duration::from_secs(30), || attacker_file.exists());
    let victim_path = shared.join("s.json");
    let mv = Command::new("setpriv")
        .args(["--reuid", OTHER_UID, "--regid", OTHER_UID, "--clear-groups", "mv", "-f", attacker_file.to_str().unwrap(), victim_path.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(mv.success());

    // The victim's worker refuses the file at once, saying why.
    let start = Instant::now();
    let mut worker = Command::new(&bin);
    worker
        .args(["worker", "--scheduler-file", victim_path.to_str().unwrap(), "--death-timeout", "60s", "--local-directory", d.path().to_str().unwrap()])
        .env_remove("TASKFARM_SCHEDULER_FILE");
    let (code, err) = run_bounded(worker, &d, "victim-worker", Duration::from_secs(30));
    assert!(code.is_some_and(|c| c != 0), "the worker must not join (exit {code:?}): {err}");
    assert!(err.contains("refusing scheduler file") && err.contains("uid 65534"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30), "refused at once, not after the timeout ({:?})", start.elapsed());
    // The victim's client refuses it too, and the attacker's scheduler never saw a worker.
    let o = Command::new(&bin).args(["status", "--scheduler-file", victim_path.to_str().unwrap(), "--timeout", "60s"]).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("refusing scheduler file"), "{}", stderr(&o));
    let o = as_other_user(&bin, &["status", "--scheduler-file", victim_path.to_str().unwrap(), "--json", "--timeout", "10s"]).output().unwrap();
    assert!(o.status.success(), "the attacker can read their own file: {}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["workers"].as_array().unwrap().len(), 0, "{s}");
}

#[test]
#[ignore = "needs root and setpriv to act as a second user: tests/run-all.sh runs this"]
fn the_other_user_refuses_our_file_too_and_a_shared_directory_is_refused_for_writing() {
    require_root();
    let (d, bin) = scratch_with_binary("notmine");
    // A scheduler (root's) in a directory that every user may write to: refused.
    let shared = d.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = Command::new(&bin).args(["scheduler", "--scheduler-file", shared.join("s.json").to_str().unwrap(), "--host", "127.0.0.1"]).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("may be written by every user"), "{}", stderr(&o));
    // With the sticky bit it is fine; the other user then refuses root's file.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let file = shared.join("s.json");
    let _sched = Proc::spawn(&["scheduler", "--scheduler-file", file.to_str().unwrap(), "--host", "127.0.0.1"], d.join("sched.log"));
    wait_for("the scheduler file", Duration::from_secs(30), || file.exists());
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap(); // so the other user can read it at all
    let worker = as_other_user(&bin, &["worker", "--scheduler-file", file.to_str().unwrap(), "--death-timeout", "60s", "--local-directory", "/tmp"]);
    let (code, err) = run_bounded(worker, &d, "other-worker", Duration::from_secs(30));
    assert!(code.is_some_and(|c| c != 0) && err.contains("refusing scheduler file") && err.contains("belongs to user root (uid 0)"), "{err}");
}

/// A worker started as `sh -c 'ulimit -n FILES; exec taskfarm worker ...'`.
fn limited_worker(c: &Cluster, name: &str, files: u32) -> Proc {
    let scratch = c.dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let script = format!("ulimit -n {files} && exec \"$0\" worker --scheduler-file \"$1\" --name {name} --nthreads 1 --local-directory \"$2\"");
    let log = c.dir.join(&format!("worker-{name}.log"));
    let child = Command::new("sh")
        .args(["-c", &script, common::bin(), c.file_arg(), scratch.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let p = Proc { child, log };
    wait_for(&format!("worker {name} to register"), Duration::from_secs(30), || {
        status(&c.file).is_some_and(|s| s["workers"].as_array().is_some_and(|w| w.iter().any(|w| w["name"] == name)))
    });
    p
}

/// Connections that send one byte of a hello every 2 s (the attack's pace)
/// until stopped.
struct Trickler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Trickler {
    fn start(conns: &[std::net::TcpStream]) -> Trickler {
        let mut conns: Vec<_> = conns.iter().map(|s| s.try_clone().unwrap()).collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::Write;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                for s in &mut conns {
                    let _ = s.write(b"t");
                }
                std::thread::sleep(Duration::from_secs(2)); // the attack's pace, not synchronisation
            }
        });
        Trickler { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap();
    }
}

/// The other side closed this connection (EOF or reset).
fn is_closed(s: &std::net::TcpStream) -> bool {
    use std::io::Read;
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    match (&*s).read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

fn data_address(c: &Cluster, name: &str) -> String {
    c.worker_status(name)["address"].as_str().unwrap().trim_start_matches("tcp://").to_string()
}

#[test]
fn stalling_connections_without_the_secret_cannot_starve_a_worker() {
    let c = Cluster::start("stallers", &[]);
    let worker = limited_worker(&c, "w1", 256);
    let addr = data_address(&c, "w1");
    // 300 connections that trickle one byte of a 43-byte hello every 2 s.
    let conns: Vec<std::net::TcpStream> = (0..300).filter_map(|_| std::net::TcpStream::connect(&addr).ok()).collect();
    assert!(conns.len() >= 250, "connected {}", conns.len());
    let trickler = Trickler::start(&conns);
    // The worker still runs a command (pipes, a process: file descriptors).
    let out = c.submit(r#"{"x": {"cmd": ["echo", "still working"], "workers": ["w1"]}}"#, &["--timeout", "60s"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), worker.log_text());
    assert!(stdout(&out).contains("still working"));
    // Every staller is closed: the oldest over the cap at once, the rest at
    // the handshake's 10 s deadline, however slowly they send.
    wait_for("every stalling connection to be closed", Duration::from_secs(60), || conns.iter().all(is_closed));
    trickler.stop();
    let log = worker.log_text();
    assert!(log.contains("too many connections that have not authenticated"), "{log}");
    assert!(log.contains("handshake not done within 10 s"), "{log}");
    // And it still works afterwards.
    let out = c.submit(r#"{"y": {"cmd": ["echo", "after"], "workers": ["w1"]}}"#, &[]);
    assert!(out.status.success() && stdout(&out).contains("after"), "{}", stderr(&out));
}

#[test]
fn stalling_connections_cost_the_scheduler_no_threads_and_are_closed_at_the_deadline() {
    let c = Cluster::start("sched-stallers", &[("w1", 1)]);
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&c.file).unwrap()).unwrap();
    let addr = file["address"].as_str().unwrap().trim_start_matches("tcp://").to_string();
    // 600 connections that trickle one byte of a hello every 2 s: more
    // than the per-address cap of pending ones.
    let conns: Vec<std::net::TcpStream> = (0..600).filter_map(|_| std::net::TcpStream::connect(&addr).ok()).collect();
    assert!(conns.len() >= 550, "connected {}", conns.len());
    let trickler = Trickler::start(&conns);
    // Graphs still run, and the stallers hold no thread of the scheduler.
    let out = c.submit(r#"{"x": ["add", 1, 2]}"#, &["--timeout", "60s"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), c.scheduler.log_text());
    let threads = std::fs::read_dir(format!("/proc/{}/task", c.scheduler.child.id())).unwrap().count();
    assert!(threads < 32, "the scheduler runs {threads} threads with 600 connections pending");
    wait_for("every stalling connection to be closed", Duration::from_secs(60), || conns.iter().all(is_closed));
    trickler.stop();
    let log = c.scheduler.log_text();
    assert!(log.contains("handshake not done within 10 s"), "{log}");
    let out = c.submit(r#"{"y": ["add", 2, 2]}"#, &[]);
    assert!(out.status.success() && stdout(&out).contains('4'), "{}", stderr(&out));
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap()
}

/// Bytes waiting in the kernel for the worker to read on the connection
/// from `client` (the server side's receive queue, from /proc/net/tcp).
fn unread_by_worker(client: &std::net::TcpStream) -> Option<u64> {
    let (me, them) = (client.local_addr().unwrap().port(), client.peer_addr().unwrap().port());
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
        (port(f[1])? == them && port(f[2])? == me).then(|| u64::from_str_radix(f[4].split(':').nth(1)?, 16).ok()).flatten()
    })
}

#[test]
fn a_huge_frame_header_followed_by_silence_allocates_nothing_much() {
    let mut c = Cluster::start("huge-header", &[("w1", 1)]);
    let pid = c.workers[0].child.id();
    let addr = data_address(&c, "w1");
    let file = taskfarm::schedfile::SchedulerFile::read(&c.file).unwrap();
    let secret = file.secret_bytes().unwrap();
    let link = taskfarm::schedfile::connect(&addr, &secret, taskfarm::protocol::Role::Peer).unwrap();
    let mut w = link.writer().unwrap();
    let s = link.stream().unwrap();
    let before = rss_kib(pid);
    // A control frame announced as 512 MiB (the largest allowed), then 4 KiB, then nothing.
    use std::io::Write;
    let mut frame = (512u64 << 20).to_le_bytes().to_vec();
    frame.push(0);
    frame.extend_from_slice(&[0u8; 4096]);
    w.write_all(&frame).unwrap();
    w.flush().unwrap();
    wait_for("the worker to read what was sent", Duration::from_secs(30), || unread_by_worker(&s) == Some(0));
    // More of the body: once it is read too, the worker is past allocating
    // for the frame.
    w.write_all(&[0u8; 4096]).unwrap();
    w.flush().unwrap();
    wait_for("the worker to read the rest", Duration::from_secs(30), || unread_by_worker(&s) == Some(0));
    let grew = rss_kib(pid).saturating_sub(before);
    assert!(grew < 64 << 10, "the worker's memory grew by {grew} KiB for 4 KiB received");
    drop((w, s, link));
    // The worker is fine.
    let out = c.submit(r#"{"z": ["inc", 1]}"#, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    c.workers.clear();
}

/// A relay between a client and the scheduler that keeps every byte.
fn recording_relay(upstream: std::net::SocketAddr) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = seen.clone();
    std::thread::spawn(move || {
        for down in l.incoming().flatten() {
            let up = std::net::TcpStream::connect(upstream).unwrap();
            for (mut from, mut to) in [(down.try_clone().unwrap(), up.try_clone().unwrap()), (up, down)] {
                let keep = keep.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        keep.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (addr, seen)
}

/// What crosses the network between a client and the scheduler when a
/// graph with a recognisable value runs: (the result, the bytes seen).
fn wire_bytes(c: &Cluster) -> (String, Vec<u8>) {
    let mut file = taskfarm::schedfile::SchedulerFile::read(&c.file).unwrap();
    let upstream: std::net::SocketAddr = file.address.trim_start_matches("tcp://").parse().unwrap();
    let (relay, seen) = recording_relay(upstream);
    file.address = format!("tcp://{relay}");
    let via = c.dir.join("via-relay.json");
    file.write(&via).unwrap();
    let g = c.dir.write("canary.json", r#"{"v": {"value": "CANARY-7f3a-PLAINTEXT"}, "w": ["concat", "v", "-more"]}"#);
    let o = taskfarm(&["submit", g.to_str().unwrap(), "--scheduler-file", via.to_str().unwrap(), "--keys", "w"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = seen.lock().unwrap().clone();
    (stdout(&o), bytes)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_wire_carries_no_plaintext_of_a_task_value_unless_told_to() {
    let c = Cluster::start("wire", &[("w1", 1)]);
    let (out, bytes) = wire_bytes(&c);
    assert_eq!(out.trim(), r#"{"w": "CANARY-7f3a-PLAINTEXT-more"}"#);
    assert!(bytes.len() > 200, "the relay saw the traffic ({} bytes)", bytes.len());
    assert!(!contains(&bytes, b"CANARY-7f3a"), "plaintext of a value on the wire");
    assert!(!contains(&bytes, b"concat"), "plaintext of the graph on the wire");
    // The same cluster with --insecure-plaintext: the check can fail.
    let d = TempDir::new("wire-plain");
    let file = d.join("sched.json");
    let _s = Proc::spawn(&["scheduler", "--scheduler-file", file.to_str().unwrap(), "--host", "127.0.0.1", "--insecure-plaintext"], d.join("s.log"));
    let _w = Proc::spawn(&["worker", "--scheduler-file", file.to_str().unwrap(), "--name", "p1"], d.join("w.log"));
    wait_for("the plaintext cluster", Duration::from_secs(30), || status(&file).is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(1)));
    let plain = Cluster { dir: d, file, scheduler: _s, workers: vec![_w] };
    let (out, bytes) = wire_bytes(&plain);
    assert_eq!(out.trim(), r#"{"w": "CANARY-7f3a-PLAINTEXT-more"}"#);
    assert!(contains(&bytes, b"CANARY-7f3a"), "without encryption the value is readable on the wire");
    assert!(plain.scheduler.log_text().contains("NOT encrypted"), "{}", plain.scheduler.log_text());
    let f = std::fs::read_to_string(&plain.file).unwrap();
    assert!(f.contains("\"encryption\": \"none\""), "{f}");
}
