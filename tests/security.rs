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
