//! Helpers for tests that start real `taskfarm` processes.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_taskfarm")
}

/// A fresh directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("tf-test-{tag}-{}-{}", std::process::id(), taskfarm::util::hex(&taskfarm::util::random_bytes(4))));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run `taskfarm ARGS` to completion.
pub fn taskfarm(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env_remove("TASKFARM_SCHEDULER_FILE").stdin(Stdio::null()).output().expect("taskfarm runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A background process killed (if still running) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(args: &[&str], log: PathBuf) -> Proc {
        Proc::spawn_env(args, log, &[])
    }
    pub fn spawn_env(args: &[&str], log: PathBuf, env: &[(&str, &str)]) -> Proc {
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin())
            .args(args)
            .envs(env.iter().copied())
            .env_remove("TASKFARM_SCHEDULER_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("taskfarm starts");
        Proc { child, log }
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Wait for exit (bounded); returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `cond` until it holds or `timeout` passes (for events in other
/// processes that cannot be awaited directly). Panics with `what` on timeout.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    while !cond() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// `taskfarm status --json` as parsed JSON (None if it failed).
pub fn status(file: &Path) -> Option<serde_json::Value> {
    let o = taskfarm(&["status", "--scheduler-file", file.to_str().unwrap(), "--json", "--timeout", "5s"]);
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

/// A scheduler and named workers, all real processes, in a temp dir.
pub struct Cluster {
    pub dir: TempDir,
    pub file: PathBuf,
    pub scheduler: Proc,
    pub workers: Vec<Proc>,
}

impl Cluster {
    pub fn start(tag: &str, workers: &[(&str, u32)]) -> Cluster {
        Cluster::start_env(tag, workers, &[])
    }

    /// As `start`, with extra environment variables for the scheduler.
    pub fn start_env(tag: &str, workers: &[(&str, u32)], scheduler_env: &[(&str, &str)]) -> Cluster {
        Cluster::start_with(tag, workers, scheduler_env, &[])
    }

    /// As `start_env`, with extra arguments for the scheduler.
    pub fn start_with(tag: &str, workers: &[(&str, u32)], scheduler_env: &[(&str, &str)], scheduler_args: &[&str]) -> Cluster {
        let dir = TempDir::new(tag);
        let file = dir.join("sched.json");
        let mut args = vec!["scheduler", "--scheduler-file", file.to_str().unwrap(), "--host", "127.0.0.1"];
        args.extend_from_slice(scheduler_args);
        let scheduler = Proc::spawn_env(&args, dir.join("scheduler.log"), scheduler_env);
        let mut c = Cluster { dir, file, scheduler, workers: Vec::new() };
        for (name, threads) in workers {
            c.add_worker(name, *threads);
        }
        let n = workers.len();
        wait_for(&format!("{n} workers to register"), Duration::from_secs(30), || {
            status(&c.file).is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(n))
        });
        c
    }

    pub fn add_worker(&mut self, name: &str, threads: u32) {
        let log = self.dir.join(&format!("worker-{name}.log"));
        let scratch = self.dir.join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        self.workers.push(Proc::spawn(
            &[
                "worker",
                "--scheduler-file",
                self.file.to_str().unwrap(),
                "--name",
                name,
                "--nthreads",
                &threads.to_string(),
                "--local-directory",
                scratch.to_str().unwrap(),
            ],
            log,
        ));
    }

    pub fn file_arg(&self) -> &str {
        self.file.to_str().unwrap()
    }

    pub fn submit(&self, graph_text: &str, extra: &[&str]) -> Output {
        let g = self.dir.write(&format!("g-{}.json", taskfarm::util::hex(&taskfarm::util::random_bytes(3))), graph_text);
        let mut args = vec!["submit", g.to_str().unwrap(), "--scheduler-file", self.file_arg()];
        args.extend_from_slice(extra);
        taskfarm(&args)
    }

    pub fn worker_status(&self, name: &str) -> serde_json::Value {
        let s = status(&self.file).expect("status works");
        s["workers"].as_array().unwrap().iter().find(|w| w["name"] == name).cloned().unwrap_or_else(|| panic!("no worker {name} in {s}"))
    }
}

pub fn write_all(stream: &mut std::net::TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes);
}
