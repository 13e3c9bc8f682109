//! The scheduler file: how workers and clients find and authenticate to a
//! scheduler. JSON with Dask's fields plus ours; written atomically with mode
//! 0600; removed on clean shutdown.

use crate::protocol::{client_handshake, HandshakeError, Role};
use crate::util;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const FORMAT_VERSION: u32 = 1;
/// Used when neither `--scheduler-file` nor `TASKFARM_SCHEDULER_FILE` is set.
pub const DEFAULT_FILE: &str = "taskfarm-scheduler.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedulerFile {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub address: String,
    #[serde(default)]
    pub services: serde_json::Map<String, serde_json::Value>,
    pub started: f64,
    #[serde(default)]
    pub workers: serde_json::Map<String, serde_json::Value>,
    pub format_version: u32,
    pub host: String,
    pub pid: u32,
    /// Hex-encoded shared secret; never share this file.
    pub secret: String,
}

impl SchedulerFile {
    pub fn new(address: &str, secret: &[u8]) -> SchedulerFile {
        SchedulerFile {
            kind: "Scheduler".into(),
            id: format!("Scheduler-{}", util::hex(&util::random_bytes(8))),
            address: address.to_string(),
            services: Default::default(),
            started: util::unix_time(),
            workers: Default::default(),
            format_version: FORMAT_VERSION,
            host: util::hostname(),
            pid: std::process::id(),
            secret: util::hex(secret),
        }
    }

    pub fn secret_bytes(&self) -> Result<Vec<u8>, String> {
        util::unhex(&self.secret).filter(|s| !s.is_empty()).ok_or_else(|| "the \"secret\" field is not a hex string".to_string())
    }

    /// Write atomically (temporary file in the same directory, then rename)
    /// with mode 0600.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let mut text = serde_json::to_vec_pretty(self).expect("serialisable");
        text.push(b'\n');
        util::write_file_atomic(path, &text, 0o600)
    }

    pub fn read(path: &Path) -> Result<SchedulerFile, String> {
        let text = fs::read_to_string(path).map_err(|e| format!("cannot read scheduler file {}: {e}", path.display()))?;
        let f: SchedulerFile = serde_json::from_str(&text).map_err(|e| {
            format!("scheduler file {} is not valid (line {}, column {}): {e}; was it written by taskfarm?", path.display(), e.line(), e.column())
        })?;
        if f.format_version > FORMAT_VERSION {
            return Err(format!(
                "scheduler file {} has format version {}, newer than this taskfarm understands ({FORMAT_VERSION}); use the same release everywhere",
                path.display(),
                f.format_version
            ));
        }
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                crate::log_at!(1, "schedfile", "{} is readable by other users (mode {:o}); its secret should be private: chmod 600 it", path.display(), meta.permissions().mode() & 0o777);
            }
        }
        Ok(f)
    }

    /// Remove the file if it is still ours (a newer scheduler may have
    /// replaced it).
    pub fn remove_if_ours(&self, path: &Path) {
        if let Ok(current) = SchedulerFile::read(path) {
            if current.id == self.id {
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// Where the scheduler file is: the flag, else `TASKFARM_SCHEDULER_FILE`,
/// else `taskfarm-scheduler.json` in the current directory.
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("TASKFARM_SCHEDULER_FILE").filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FILE))
}

/// Connect to `address` and authenticate with `secret` as `role`.
pub fn connect(address: &str, secret: &[u8], role: Role) -> Result<TcpStream, ConnectError> {
    let addr = util::parse_address(address).map_err(ConnectError::Fatal)?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(ConnectError::Unreachable)?;
    client_handshake(&mut s, secret, role).map_err(|e| match e {
        HandshakeError::Io(io) => ConnectError::Unreachable(io),
        other => ConnectError::Fatal(format!("scheduler at {address}: {other}")),
    })?;
    Ok(s)
}

#[derive(Debug)]
pub enum ConnectError {
    /// Nothing answered (yet): worth retrying.
    Unreachable(io::Error),
    /// Retrying will not help (authentication, version, bad address).
    Fatal(String),
}

/// Wait up to `timeout` for the scheduler file to appear and its scheduler
/// to answer; returns the file and an authenticated connection. A file whose
/// scheduler does not answer is treated as stale: keep waiting (it is often
/// yesterday's file about to be replaced), then fail saying so.
pub fn wait_and_connect(path: &Path, timeout: Duration, role: Role) -> Result<(SchedulerFile, TcpStream), String> {
    wait_and_connect_with(path, timeout, role, &WaitPolicy::default())
}

/// How strict [`wait_and_connect_with`] is about old files.
#[derive(Clone, Debug, Default)]
pub struct WaitPolicy {
    /// Files whose scheduler started before this Unix time are stale.
    pub not_before: Option<f64>,
    /// Treat a scheduler that rejects the file's secret as stale (a leftover
    /// file whose port another scheduler now uses) instead of failing.
    pub auth_failure_is_stale: bool,
}

pub fn wait_and_connect_with(path: &Path, timeout: Duration, role: Role, policy: &WaitPolicy) -> Result<(SchedulerFile, TcpStream), String> {
    let start = Instant::now();
    let mut last_note = Instant::now();
    let mut pause = Duration::from_millis(5);
    let mut last_problem: Option<String> = None;
    loop {
        let waited = start.elapsed();
        let problem = match SchedulerFile::read(path) {
            Err(_) if !path.exists() => format!("scheduler file {} does not exist yet", path.display()),
            Err(e) => e,
            Ok(file) if policy.not_before.is_some_and(|t| file.started < t) => format!(
                "scheduler file {} is from an earlier run (its scheduler, pid {} on {}, started {}); waiting for this job's scheduler to replace it",
                path.display(),
                file.pid,
                file.host,
                format_age(file.started)
            ),
            Ok(file) => match file.secret_bytes() {
                Err(e) => return Err(format!("scheduler file {}: {e}", path.display())),
                Ok(secret) => match connect(&file.address, &secret, role) {
                    Ok(s) => return Ok((file, s)),
                    Err(ConnectError::Fatal(msg)) if policy.auth_failure_is_stale && msg.contains("authentication failed") => {
                        format!("scheduler file {} is stale: {msg}", path.display())
                    }
                    Err(ConnectError::Fatal(msg)) => return Err(msg),
                    Err(ConnectError::Unreachable(e)) => format!(
                        "scheduler file {} is stale: its scheduler at {} (pid {} on {}, started {}) does not answer ({e})",
                        path.display(),
                        file.address,
                        file.pid,
                        file.host,
                        format_age(file.started)
                    ),
                },
            },
        };
        if waited >= timeout {
            return Err(format!("{problem}; gave up after {:.0} s (raise the timeout, or check that the scheduler is running)", waited.as_secs_f64()));
        }
        if last_note.elapsed() >= Duration::from_secs(5) || (last_problem.is_none() && waited > Duration::from_secs(1)) {
            crate::log_at!(2, "connect", "waiting for the scheduler ({:.0} s of {:.0} s): {problem}", waited.as_secs_f64(), timeout.as_secs_f64());
            last_note = Instant::now();
            last_problem = Some(problem.clone());
        }
        std::thread::sleep(pause.min(timeout.saturating_sub(start.elapsed())));
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

fn format_age(started: f64) -> String {
    let age = util::unix_time() - started;
    if age < 0.0 {
        "in the future".into()
    } else if age < 120.0 {
        format!("{age:.0} s ago")
    } else if age < 7200.0 {
        format!("{:.0} min ago", age / 60.0)
    } else {
        format!("{:.1} h ago", age / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("tf-sf-{}", util::hex(&util::random_bytes(6))));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn written_atomically_private_and_has_dask_fields() {
        let d = tmpdir();
        let p = d.join("s.json");
        let f = SchedulerFile::new("tcp://127.0.0.1:1", b"abc");
        f.write(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let j: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        for field in ["type", "id", "address", "services", "started", "workers", "format_version", "host", "pid", "secret"] {
            assert!(j.get(field).is_some(), "missing {field}");
        }
        assert_eq!(j["type"], "Scheduler");
        assert_eq!(SchedulerFile::read(&p).unwrap(), f);
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1, "no temporary file left behind");
        // Not ours: left alone. Ours: removed.
        SchedulerFile::new("tcp://127.0.0.1:1", b"abc").remove_if_ours(&p);
        assert!(p.exists());
        f.remove_if_ours(&p);
        assert!(!p.exists());
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn bad_files_are_explained() {
        let d = tmpdir();
        let p = d.join("s.json");
        fs::write(&p, "{not json").unwrap();
        assert!(SchedulerFile::read(&p).unwrap_err().contains("is not valid (line 1"));
        let e = wait_and_connect(&d.join("absent.json"), Duration::from_millis(50), Role::Client).unwrap_err();
        assert!(e.contains("does not exist yet") && e.contains("gave up"), "{e}");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn stale_file_is_reported_as_stale() {
        let d = tmpdir();
        let p = d.join("s.json");
        // A port nothing listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut f = SchedulerFile::new(&format!("tcp://127.0.0.1:{port}"), b"abc");
        f.started -= 86400.0;
        f.write(&p).unwrap();
        let e = wait_and_connect(&p, Duration::from_millis(100), Role::Client).unwrap_err();
        assert!(e.contains("is stale") && e.contains("24.0 h ago"), "{e}");
        fs::remove_dir_all(d).unwrap();
    }
}
