//! The scheduler file: how workers and clients find and authenticate to a
//! scheduler. JSON with Dask's fields plus ours; written atomically with mode
//! 0600; removed on clean shutdown.

use crate::protocol::{client_handshake, HandshakeError, Role};
use crate::util;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
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
    /// The launch that started this scheduler (`taskfarm mpi`): the ranks of
    /// one job accept only their own job's file ([`crate::mpi::launch_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// How the cluster's connections are protected after the handshake:
    /// "aes-256-gcm" (the default, also when absent) or "none" (the
    /// scheduler runs with `--insecure-plaintext`).
    #[serde(default = "default_encryption")]
    pub encryption: String,
}

fn default_encryption() -> String {
    ENCRYPTION_ON.into()
}

/// The scheduler file's `encryption` values.
pub const ENCRYPTION_ON: &str = "aes-256-gcm";
pub const ENCRYPTION_OFF: &str = "none";

impl SchedulerFile {
    /// Make this process's connections follow the file's encryption mode.
    pub fn adopt_encryption(&self) -> Result<(), String> {
        match self.encryption.as_str() {
            ENCRYPTION_ON => crate::seal::set_plaintext(false),
            ENCRYPTION_OFF => crate::seal::set_plaintext(true),
            other => return Err(format!("unknown \"encryption\": \"{other}\" (this taskfarm knows \"{ENCRYPTION_ON}\" and \"{ENCRYPTION_OFF}\"); use the same release everywhere")),
        }
        Ok(())
    }

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
            job: None,
            encryption: if crate::seal::plaintext() { ENCRYPTION_OFF } else { ENCRYPTION_ON }.into(),
        }
    }

    pub fn secret_bytes(&self) -> Result<Vec<u8>, String> {
        util::unhex(&self.secret).filter(|s| !s.is_empty()).ok_or_else(|| "the \"secret\" field is not a hex string".to_string())
    }

    /// Write atomically (temporary file in the same directory, then rename)
    /// with mode 0600.
    ///
    /// Refuses a directory that every user may write to without the sticky
    /// bit (anyone could replace the file), and warns about one that other
    /// users may write to or that belongs to someone else.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        check_directory(path)?;
        let mut text = serde_json::to_vec_pretty(self).expect("serialisable");
        text.push(b'\n');
        util::write_file_atomic(path, &text, 0o600)
    }

    /// Read and check a scheduler file. A file that another user owns or may
    /// write to is refused: whoever wrote it would get our workers (and run
    /// their commands as us) or our graphs.
    pub fn read(path: &Path) -> Result<SchedulerFile, String> {
        read_file(path).map_err(|e| e.to_string())
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

/// Why a scheduler file could not be used.
#[derive(Debug)]
pub enum FileError {
    /// No such file (yet).
    Missing(PathBuf),
    /// Unreadable, not JSON, or not a scheduler file (permanent: files are
    /// replaced atomically, never seen half written).
    Invalid(String),
    /// Owned by another user or writable by others: never trusted, however long one waits.
    Untrusted(String),
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::Missing(p) => write!(f, "scheduler file {} does not exist yet", p.display()),
            FileError::Invalid(m) | FileError::Untrusted(m) => f.write_str(m),
        }
    }
}

/// Open, check who may have written it (on the opened file, so a rename in
/// between cannot swap it), then parse.
pub fn read_file(path: &Path) -> Result<SchedulerFile, FileError> {
    use std::io::Read;
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(FileError::Missing(path.to_path_buf())),
        Err(e) => return Err(FileError::Invalid(format!("cannot read scheduler file {}: {e}", path.display()))),
    };
    let meta = file.metadata().map_err(|e| FileError::Invalid(format!("cannot read scheduler file {}: {e}", path.display())))?;
    check_trusted(path, &meta, util::effective_uid()).map_err(FileError::Untrusted)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| FileError::Invalid(format!("cannot read scheduler file {}: {e}", path.display())))?;
    let f: SchedulerFile = serde_json::from_str(&text).map_err(|e| {
        FileError::Invalid(format!(
            "scheduler file {} is not valid (line {}, column {}): {e}; was it written by taskfarm?",
            path.display(),
            e.line(),
            e.column()
        ))
    })?;
    if f.format_version > FORMAT_VERSION {
        return Err(FileError::Invalid(format!(
            "scheduler file {} has format version {}, newer than this taskfarm understands ({FORMAT_VERSION}); use the same release everywhere",
            path.display(),
            f.format_version
        )));
    }
    if meta.mode() & 0o044 != 0 {
        crate::log_at!(1, "schedfile", "{} is readable by other users (mode {:o}); its secret should be private: chmod 600 it", path.display(), meta.mode() & 0o777);
    }
    Ok(f)
}

/// A scheduler file is believed only if it is a regular file that the
/// reading user owns (root too reads only its own) and nobody else may write.
fn check_trusted(path: &Path, meta: &fs::Metadata, me: u32) -> Result<(), String> {
    if !meta.is_file() {
        return Err(format!("scheduler file {} is not a regular file; remove it and restart the scheduler", path.display()));
    }
    if meta.uid() != me {
        return Err(format!(
            "refusing scheduler file {}: it belongs to {}, not to you ({}). Whoever wrote it could make your workers run \
             their tasks as you, or receive your graphs. Keep scheduler files in a directory only you can write to \
             (e.g. $HOME/.taskfarm, mode 700), or remove this file if you know where it came from, and restart your scheduler",
            path.display(),
            util::user_name(meta.uid()),
            util::user_name(me)
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "refusing scheduler file {}: other users may write to it (mode {:o}), so anyone could point your workers at \
             their scheduler. taskfarm writes it with mode 600: if you made it writable, restart the scheduler (or chmod 600 it)",
            path.display(),
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

/// Before writing into `path`'s directory: in one that others may write to
/// without the sticky bit, another user can replace the file (readers would
/// then refuse it, but the scheduler would be unreachable). Every user: refuse;
/// a group, or another owner: warn.
fn check_directory(path: &Path) -> io::Result<()> {
    if let Some((dir, mode)) = util::replaceable_by_anyone(path) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "directory {} may be written by every user (mode {mode:o}, no sticky bit): anyone could replace the scheduler file. \
                 Use a directory only you can write to, e.g. $HOME/.taskfarm (mkdir -m 700)",
                dir.display()
            ),
        ));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(meta) = fs::metadata(dir) else { return Ok(()) }; // the write reports a missing directory
    let mode = meta.mode();
    let sticky = mode & 0o1000 != 0;
    if !sticky && (mode & 0o020 != 0 || (meta.uid() != util::effective_uid() && meta.uid() != 0)) {
        crate::log_at!(
            1,
            "schedfile",
            "WARNING: directory {} (owner {}, mode {:o}) may be written by other users, who could replace the scheduler file; \
             readers refuse a file they do not own, but prefer a directory only you can write to",
            dir.display(),
            util::user_name(meta.uid()),
            mode & 0o7777
        );
    }
    Ok(())
}

/// A file next to the scheduler file: its name plus `suffix`.
pub fn beside(scheduler_file: &Path, suffix: &str) -> PathBuf {
    let mut name = scheduler_file.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| DEFAULT_FILE.into());
    name.push(suffix);
    scheduler_file.with_file_name(name)
}

/// The copy of the scheduler file that only the ranks of launch `job` read
/// (`s.json.job-<id>`): another job on the same path cannot replace it.
pub fn job_path(scheduler_file: &Path, job: &str) -> PathBuf {
    beside(scheduler_file, &format!(".job-{job}"))
}

/// Set by `taskfarm mpi` for its batch command: the launch whose scheduler
/// the command's clients want ([`wait_and_connect`] prefers its job copy).
pub const JOB_ENV: &str = "TASKFARM_MPI_JOB";

/// Where the scheduler file is: the flag, else `TASKFARM_SCHEDULER_FILE`,
/// else `taskfarm-scheduler.json` in the current directory.
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("TASKFARM_SCHEDULER_FILE").filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FILE))
}

/// Connect to `address` and authenticate with `secret` as `role`.
pub fn connect(address: &str, secret: &[u8], role: Role) -> Result<crate::seal::Link, ConnectError> {
    let addr = util::parse_address(address).map_err(ConnectError::Fatal)?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(ConnectError::Unreachable)?;
    let keys = client_handshake(&mut s, secret, role).map_err(|e| match e {
        HandshakeError::Io(io) => ConnectError::Unreachable(io),
        other => ConnectError::Fatal(format!("scheduler at {address}: {other}")),
    })?;
    Ok(crate::seal::Link::new(s, keys))
}

/// Connect to `address` (no scheduler file), retrying while nothing answers,
/// for up to `timeout`; an authentication or version failure ends at once.
pub fn connect_with_retry(address: &str, secret: &[u8], role: Role, timeout: Duration) -> Result<crate::seal::Link, crate::Error> {
    connect_with_retry_inner(address, secret, role, timeout).map_err(crate::Error::Environment)
}

fn connect_with_retry_inner(address: &str, secret: &[u8], role: Role, timeout: Duration) -> Result<crate::seal::Link, String> {
    let start = Instant::now();
    loop {
        match connect(address, secret, role) {
            Ok(s) => return Ok(s),
            Err(ConnectError::Fatal(m)) => return Err(m),
            Err(ConnectError::Unreachable(e)) if start.elapsed() >= timeout => {
                return Err(format!("scheduler at {address} did not answer within {:.0} s: {e}", timeout.as_secs_f64()))
            }
            Err(ConnectError::Unreachable(_)) => std::thread::sleep(Duration::from_millis(200).min(timeout.saturating_sub(start.elapsed()))),
        }
    }
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
///
/// Inside the batch command of `taskfarm mpi` (where [`JOB_ENV`] is set), the
/// job's own copy of the file is read when it exists, so that another job
/// writing the same path cannot capture this one's clients.
pub fn wait_and_connect(path: &Path, timeout: Duration, role: Role) -> Result<(SchedulerFile, crate::seal::Link), crate::Error> {
    if let Some(job) = std::env::var(JOB_ENV).ok().filter(|j| !j.is_empty()) {
        let own = job_path(path, &job);
        if own.exists() {
            return wait_and_connect_with(&own, timeout, role, &WaitPolicy { job: Some(job), ..WaitPolicy::default() });
        }
    }
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
    /// Accept only the file of this launch ([`SchedulerFile::job`]).
    pub job: Option<String>,
}

pub fn wait_and_connect_with(path: &Path, timeout: Duration, role: Role, policy: &WaitPolicy) -> Result<(SchedulerFile, crate::seal::Link), crate::Error> {
    wait_and_connect_inner(path, timeout, role, policy).map_err(crate::Error::Environment)
}

fn wait_and_connect_inner(path: &Path, timeout: Duration, role: Role, policy: &WaitPolicy) -> Result<(SchedulerFile, crate::seal::Link), String> {
    let start = Instant::now();
    let mut last_note = Instant::now();
    let mut pause = Duration::from_millis(5);
    let mut last_problem: Option<String> = None;
    loop {
        let waited = start.elapsed();
        let problem = match read_file(path) {
            Err(FileError::Untrusted(e)) => return Err(e),
            // Files are replaced atomically, so an invalid one is not half
            // written: waiting will not mend it (unless this job's rank 0 is
            // about to replace a leftover, as `not_before` says).
            Err(FileError::Invalid(e)) if policy.not_before.is_none() => {
                return Err(format!("{e}; remove it, or start the scheduler that writes it"))
            }
            Err(e) => e.to_string(),
            Ok(file) if policy.not_before.is_some_and(|t| file.started < t) => format!(
                "scheduler file {} is from an earlier run (its scheduler, pid {} on {}, started {}); waiting for this job's scheduler to replace it",
                path.display(),
                file.pid,
                file.host,
                format_age(file.started)
            ),
            Ok(file) if policy.job.is_some() && file.job != policy.job => format!(
                "scheduler file {} belongs to another launch (job {}, pid {} on {}); waiting for this job's scheduler (job {})",
                path.display(),
                file.job.as_deref().unwrap_or("unknown"),
                file.pid,
                file.host,
                policy.job.as_deref().unwrap_or_default()
            ),
            Ok(file) => match file.secret_bytes().and_then(|s| file.adopt_encryption().map(|()| s)) {
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

    use std::os::unix::fs::PermissionsExt;

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
        // Waiting will not mend it: refused at once, not at the timeout.
        let start = Instant::now();
        let e = wait_and_connect(&p, Duration::from_secs(60), Role::Client).unwrap_err().to_string();
        assert!(e.contains("is not valid") && e.contains("remove it") && start.elapsed() < Duration::from_secs(10), "{e}");
        let e = wait_and_connect(&d.join("absent.json"), Duration::from_millis(50), Role::Client).unwrap_err().to_string();
        assert!(e.contains("does not exist yet") && e.contains("gave up"), "{e}");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn files_others_wrote_or_may_write_are_refused_at_once() {
        let d = tmpdir();
        let p = d.join("s.json");
        SchedulerFile::new("tcp://127.0.0.1:1", b"abc").write(&p).unwrap();
        let meta = fs::metadata(&p).unwrap();
        // Owned by someone else (as the file would look to another uid).
        let e = check_trusted(&p, &meta, meta.uid() + 1).unwrap_err();
        assert!(e.contains("refusing scheduler file") && e.contains("not to you"), "{e}");
        // Writable by others: refused by read and at once by the wait loop.
        fs::set_permissions(&p, fs::Permissions::from_mode(0o622)).unwrap();
        let e = SchedulerFile::read(&p).unwrap_err();
        assert!(e.contains("other users may write to it (mode 622)"), "{e}");
        let start = Instant::now();
        let e = wait_and_connect(&p, Duration::from_secs(30), Role::Client).unwrap_err().to_string();
        assert!(e.contains("mode 622") && start.elapsed() < Duration::from_secs(10), "{e}");
        // A directory: not a regular file.
        let e = SchedulerFile::read(&d).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_directory_everyone_may_write_without_sticky_bit_is_refused_for_writing() {
        let d = tmpdir();
        let f = SchedulerFile::new("tcp://127.0.0.1:1", b"abc");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        let e = f.write(&d.join("s.json")).unwrap_err();
        assert!(e.to_string().contains("may be written by every user (mode 777"), "{e}");
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "nothing written");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).unwrap();
        f.write(&d.join("s.json")).unwrap();
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_launch_accepts_only_its_own_file() {
        let d = tmpdir();
        let p = d.join("s.json");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut f = SchedulerFile::new(&format!("tcp://{}", listener.local_addr().unwrap()), b"abc");
        f.job = Some("aaaa".into());
        f.write(&p).unwrap();
        let policy = WaitPolicy { job: Some("bbbb".into()), ..WaitPolicy::default() };
        let e = wait_and_connect_with(&p, Duration::from_millis(100), Role::Client, &policy).unwrap_err().to_string();
        assert!(e.contains("belongs to another launch (job aaaa") && e.contains("this job's scheduler (job bbbb)"), "{e}");
        assert_eq!(job_path(&p, "bbbb"), d.join("s.json.job-bbbb"));
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
        let e = wait_and_connect(&p, Duration::from_millis(100), Role::Client).unwrap_err().to_string();
        assert!(e.contains("is stale") && e.contains("24.0 h ago"), "{e}");
        fs::remove_dir_all(d).unwrap();
    }
}
