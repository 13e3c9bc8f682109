//! Wire protocol: message types, framing, handshake and authentication.
//!
//! Every connection starts with a handshake (see [`client_handshake`]) that
//! checks magic, protocol version and role, and proves on both sides that the
//! peer knows the secret from the scheduler file (HMAC-SHA256 over fresh
//! nonces: the secret itself never crosses the network).
//!
//! After it, a connection carries frames `[u64 LE length][u8 kind][body]`.
//! A control frame (kind 0) holds `[u32 LE payload count][bincode Vec<Msg>]`,
//! a batch of messages, and is followed by that many payload frames (kind 1)
//! whose bodies are raw value bytes, never re-encoded.

use serde::{Deserialize, Serialize};
use std::time::Duration;

mod framing;
mod handshake;
pub use framing::*;
pub use handshake::*;

/// Per-task annotations, as given in the long form.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Annotations {
    /// Higher runs earlier among ready tasks.
    pub priority: i32,
    /// How many times an erred task is run again.
    pub retries: u32,
    /// Abstract resources needed while running, e.g. `cpus`, `gpus`.
    pub resources: Vec<(String, f64)>,
    /// Names or addresses of the workers allowed to run it (empty: any).
    pub workers: Vec<String>,
    /// Seconds after which a running task fails.
    pub timeout: Option<f64>,
    /// Functions it calls that are not built in (registered by a program of
    /// one's own): only workers that announce them all may run it.
    pub functions: Vec<String>,
    /// `Some(false)`: never cache its value (impure); `Some(true)`: cache it
    /// even though it is a command; `None`: cache it unless it is a command
    /// (with `--cache`; see `cache.rs`).
    pub cache: Option<bool>,
}

/// One task as sent by a client to the scheduler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskDef {
    pub key: String,
    /// Keys this task needs, in the order `Expr::Ref` indexes them.
    pub deps: Vec<String>,
    /// `bincode` encoding of the `Expr`.
    pub spec: Vec<u8>,
    pub annotations: Annotations,
    /// Position in the memory-friendly execution order (lower first).
    pub order: u32,
}

/// The encoding of a task's `Expr` in [`TaskDef::spec`].
pub fn encode_spec(e: &crate::graph::Expr) -> Vec<u8> {
    bincode::serialize(e).expect("expressions always encode")
}

pub type TaskId = u32;
/// A value payload as it travels: tag byte and body.
pub type Payload = (u8, Vec<u8>);
pub type WorkerId = u32;

pub const MAGIC: &[u8; 8] = b"TASKFARM";
/// Separates a task error's text from machine-readable detail after it (a
/// Python task's pickled exception, base64): people see the text before
/// it ([`error_text`]), Python clients re-raise the exception.
pub const ERROR_DETAIL: &str = "\u{1e}taskfarm-python-exception:";

/// The human part of a task error (without any [`ERROR_DETAIL`]).
pub fn error_text(error: &str) -> &str {
    error.split_once(ERROR_DETAIL).map_or(error, |(text, _)| text)
}
pub const PROTOCOL_VERSION: u16 = 6;
/// Results up to this size (in their wire form) travel with the task's
/// completion, through the scheduler, to the clients waiting for them, so
/// they need no fetch from the worker.
pub const INLINE_RESULT_MAX: usize = 64 << 10;
/// Largest control frame accepted (a graph of millions of tasks fits).
pub const MAX_CONTROL_FRAME: u64 = 512 << 20;
/// Largest value payload accepted.
pub const MAX_PAYLOAD_FRAME: u64 = 64 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    Worker = 1,
    Client = 2,
    /// A worker or client fetching values from a worker's data server.
    Peer = 3,
}

impl Role {
    fn from_u8(b: u8) -> Option<Role> {
        match b {
            1 => Some(Role::Worker),
            2 => Some(Role::Client),
            3 => Some(Role::Peer),
            _ => None,
        }
    }
}

// ---- messages ---------------------------------------------------------------

/// Counters a worker reports with heartbeats and results.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerMetrics {
    pub rss: u64,
    /// CPU time the worker process (and its Python executors) used so far, microseconds.
    pub cpu_us: u64,
    /// When it will retire by its lifetime (the job's walltime), Unix
    /// seconds; 0: no lifetime.
    pub leaves_at: f64,
    /// Values held in memory.
    pub stored_bytes: u64,
    pub stored_count: u64,
    /// Values spilled to the local directory.
    pub spilled_bytes: u64,
    pub spilled_count: u64,
    /// Values written to disk / read back since the worker started.
    pub spilled_total: u64,
    pub unspilled_total: u64,
    /// Bytes spilled / read back so far, and microseconds spent doing it.
    pub spilled_bytes_total: u64,
    pub unspilled_bytes_total: u64,
    pub spill_us: u64,
    pub unspill_us: u64,
    /// Microseconds spent fetching from peers (request to last byte).
    pub fetch_us: u64,
    /// Over the pause threshold: the scheduler sends it nothing new.
    pub paused: bool,
    /// 0: none.
    pub memory_limit: u64,
    pub executing: u32,
    /// Values this worker fetched from other workers' data servers.
    pub fetched_from_peers: u64,
    pub fetched_bytes: u64,
    /// Values this worker's data server sent to other workers.
    pub served_to_peers: u64,
    pub served_bytes: u64,
    /// Distinct remote addresses that connected to this worker's data
    /// server (as the socket saw them), at most 64.
    pub data_connections_from: Vec<String>,
    /// Why the worker cannot spill values to its local directory now (e.g.
    /// "No space left on device"); None while spilling works.
    pub storage_error: Option<String>,
}

/// Worker and client messages to the scheduler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToScheduler {
    RegisterWorker {
        name: String,
        data_address: String,
        nthreads: u32,
        resources: Vec<(String, f64)>,
        host: String,
        pid: u32,
        local_directory: String,
        /// The batch job this worker runs in ("" outside a job).
        job: String,
        /// The functions it has beyond the built-ins.
        functions: Vec<String>,
        /// A worker coming back after its scheduler went away: the values
        /// it still holds (task id and size, as that scheduler numbered
        /// them) and that scheduler's run ([`ToWorker::SchedulerRun`]).
        /// Empty and 0 for a new worker.
        held: Vec<(TaskId, u64)>,
        run: u64,
    },
    RegisterClient {
        name: String,
    },
    TaskFinished {
        id: TaskId,
        nbytes: u64,
        duration_us: u64,
        /// When it began (Unix time, microseconds) and on which executor
        /// thread of the worker: the task stream.
        start_us: u64,
        thread: u32,
        /// The value itself, when the scheduler asked for it
        /// (`ComputeTask::inline_result`) and it is small.
        value: Option<Payload>,
    },
    TaskErred {
        id: TaskId,
        error: String,
        duration_us: u64,
        start_us: u64,
        thread: u32,
    },
    /// The worker could not get dependency `dep` of task `id` from any holder.
    MissingData {
        id: TaskId,
        dep: TaskId,
        tried: Vec<String>,
    },
    Heartbeat(WorkerMetrics),
    UpdateGraph {
        tasks: Vec<TaskDef>,
        wanted: Vec<String>,
    },
    ReleaseKeys {
        keys: Vec<String>,
    },
    StatusRequest,
    Shutdown,
    /// Client: retire these workers (names or addresses), or every idle one.
    RetireWorkers {
        names: Vec<String>,
        all_idle: bool,
    },
    /// Worker: please retire me (it got SIGTERM or is near its end).
    RetireMe,
    /// Worker: its executor threads began running these tasks (sent ahead
    /// of other messages of the same batch). Only tasks that had started
    /// count against `--allowed-failures` when a worker dies.
    Started {
        ids: Vec<TaskId>,
    },
    /// Worker: it now holds a copy of `id` (asked by `Replicate`, or
    /// fetched from a peer for its own tasks: every fetch is reported).
    Replicated {
        id: TaskId,
        nbytes: u64,
        /// The transfer that brought it, if one did (for the task stream).
        transfer: Option<Transfer>,
    },
    /// Worker: it could not copy `id` from any holder.
    ReplicateFailed {
        id: TaskId,
    },
    /// Worker: answer to `Steal`: the tasks it gave up (not started) and
    /// those it kept (started, or no longer there).
    Stolen {
        ids: Vec<TaskId>,
        kept: Vec<TaskId>,
    },
    /// Client: keep `keys` under `name` until unpublished (answered by
    /// `Published`); `data` is the client's opaque description of them.
    PublishDataset {
        name: String,
        keys: Vec<String>,
        data: Vec<u8>,
        replace: bool,
    },
    /// Client: forget the dataset `name` (its keys stay while wanted).
    UnpublishDataset {
        name: String,
    },
    /// Client: the dataset `name` (answered by `Dataset`).
    GetDataset {
        name: String,
    },
    /// Client: the names of the published datasets (answered by `Datasets`).
    ListDatasets,
    /// Client: task counts per key prefix (answered by `Progress`).
    ProgressRequest,
    /// Client: what ran since sequence number `since` (answered by
    /// `Telemetry`): the task stream, transfers, per-prefix statistics.
    TelemetryRequest {
        since: u64,
    },
    /// Client: the states of these keys (answered by `KeyStates`).
    KeyStatesRequest {
        keys: Vec<String>,
    },
    /// Client: a worker plugin for every current and future worker (see
    /// `ToWorker::PythonPlugin`); one of the same name is replaced.
    RegisterPlugin {
        name: String,
        data: Vec<u8>,
    },
}

/// One task for a worker to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComputeTask {
    pub id: TaskId,
    pub key: String,
    pub spec: Vec<u8>,
    /// Dependencies in the order the spec's references index them, each with
    /// the data addresses of the workers holding it.
    pub deps: Vec<(TaskId, Vec<String>)>,
    /// Size in bytes of each dependency, same order (to limit transfers).
    pub dep_nbytes: Vec<u64>,
    /// Lower runs first: the scheduler's own order (rank of the user
    /// priority, submission generation, graph order).
    pub priority: (u32, u32, u32),
    pub timeout: Option<f64>,
    /// Resources held while it runs (`cpus` counts threads; default 1 cpu).
    pub resources: Vec<(String, f64)>,
    /// A client waits for this result: send it back with `TaskFinished` if
    /// it is at most `INLINE_RESULT_MAX` bytes.
    pub inline_result: bool,
}

/// Scheduler messages to a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    Welcome { worker_id: WorkerId },
    Compute(ComputeTask),
    /// Forget these values.
    Free { ids: Vec<TaskId> },
    /// Fetch a copy of `id` from one of `holders` and keep it.
    Replicate { id: TaskId, holders: Vec<String> },
    /// Give up these tasks if they have not started; answer with `Stolen`.
    Steal { ids: Vec<TaskId> },
    /// Stop: finish nothing more, exit cleanly.
    Shutdown { reason: String },
    /// A worker plugin: a pickled callable every Python executor of the
    /// worker runs once, before its next task (and each new one at start).
    PythonPlugin { name: String, data: Vec<u8> },
    /// The scheduler is alive (sent every [`PING_INTERVAL`]): a worker that
    /// hears nothing for its scheduler timeout knows it is frozen or cut off.
    Ping,
    /// Sent on registration: the scheduler's run (a random number per
    /// start), which a worker names when it comes back with its values.
    SchedulerRun { run: u64 },
    /// A scheduler restarted from its journal took over values this
    /// worker held: each `(old, new)` keeps the value under its new id;
    /// every held value not listed is dropped. Sent before any other work.
    Renumber { pairs: Vec<(TaskId, TaskId)> },
}

/// How often the scheduler tells every worker and client it is alive.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long workers and clients wait without a word from the scheduler
/// before giving up on it, by default (`--scheduler-timeout`).
pub const SCHEDULER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: WorkerId,
    pub name: String,
    pub address: String,
    pub host: String,
    pub pid: u32,
    /// The batch job the worker runs in ("" outside a job).
    pub job: String,
    pub nthreads: u32,
    pub processing: u32,
    pub in_memory: u64,
    pub metrics: WorkerMetrics,
    pub last_seen_secs: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub address: String,
    pub started: f64,
    /// The dashboard's URL, token included ("": none).
    pub dashboard: String,
    pub workers: Vec<WorkerStatus>,
    /// Task counts by state name.
    pub tasks: Vec<(String, u64)>,
    pub clients: u32,
    /// Scheduler counters by name (tasks finished, recomputed, ...).
    pub stats: Vec<(String, u64)>,
}

/// Scheduler messages to a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToClient {
    Welcome { client_id: u32 },
    /// The graph was accepted; `total` tasks are now known for this client.
    GraphAccepted { total: u64 },
    GraphRejected { error: String },
    /// `value` is the result itself when it came inline with the task's
    /// completion; otherwise the client fetches it from a holder.
    KeyInMemory { key: String, id: TaskId, holders: Vec<String>, value: Option<Payload> },
    KeyErred { key: String, error: String },
    Status(StatusReport),
    ShuttingDown { reason: String },
    /// Answer to `RetireWorkers`: the workers now retiring.
    Retiring { names: Vec<String> },
    /// A wanted key cannot run on any connected worker (yet).
    KeyStuck { key: String, reason: String },
    /// Answer to `PublishDataset`: done, or why not.
    Published { name: String, error: Option<String> },
    /// Answer to `GetDataset`: its keys and data, or none of that name.
    Dataset { name: String, found: Option<(Vec<String>, Vec<u8>)> },
    /// Answer to `ListDatasets`.
    Datasets { names: Vec<String> },
    /// The scheduler is alive (every [`PING_INTERVAL`]).
    Ping,
    /// Answer to `ProgressRequest`: counters per key prefix since the
    /// scheduler started.
    Progress(Vec<PrefixProgress>),
    /// Answer to `TelemetryRequest`.
    Telemetry(Box<crate::telemetry::TelemetryReport>),
    /// Answer to `KeyStatesRequest`: each key's state name, same order
    /// ("unknown" for keys the scheduler does not know).
    KeyStates(Vec<String>),
}

/// A fetch of a value from a peer, as a worker timed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    /// The peer's data address.
    pub from: String,
    pub start_us: u64,
    pub duration_us: u64,
}

/// Task counters of one key prefix (the key up to its first `-`, `_` or
/// `(`), all monotonic since the scheduler started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrefixProgress {
    pub prefix: String,
    /// Tasks submitted (new keys only).
    pub total: u64,
    /// Runs that finished (a recomputed task counts again).
    pub done: u64,
    pub erred: u64,
    /// Sum and maximum of the finished runs' durations.
    pub total_us: u64,
    pub max_us: u64,
}

/// Requests to a worker's data server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    GetData { ids: Vec<TaskId> },
}

/// Replies from a worker's data server: one payload frame follows for each
/// id that is `true` (found), in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerReply {
    Data { found: Vec<(TaskId, bool)> },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn handshake_accepts_shared_secret() {
        let (mut c, mut s) = pair();
        let t = std::thread::spawn(move || server_handshake(&mut s, b"sekrit").map_err(|e| e.to_string()));
        client_handshake(&mut c, b"sekrit", Role::Client).unwrap();
        assert_eq!(t.join().unwrap().unwrap().0, Role::Client);
    }

    /// The gate's pending slot must be freed before the peer is told it is
    /// in: else a burst of newcomers could close a connection whose client
    /// already sent its registration (seen with 300 workers at once).
    #[test]
    fn a_verified_peer_stops_counting_as_pending_before_it_is_told() {
        let (mut c, mut s) = pair();
        let released = Arc::new(AtomicBool::new(false));
        let flag = released.clone();
        let t = std::thread::spawn(move || {
            server_handshake_verified(&mut s, b"sekrit", move || flag.store(true, Ordering::SeqCst)).map(|r| r.0).map_err(|e| e.to_string())
        });
        client_handshake(&mut c, b"sekrit", Role::Worker).unwrap();
        assert!(released.load(Ordering::SeqCst), "released only after the client was told");
        assert_eq!(t.join().unwrap().unwrap(), Role::Worker);
        // a peer that fails to prove the secret is never released
        let (mut c, mut s) = pair();
        let released = Arc::new(AtomicBool::new(false));
        let flag = released.clone();
        let t = std::thread::spawn(move || server_handshake_verified(&mut s, b"right", move || flag.store(true, Ordering::SeqCst)).is_ok());
        assert!(client_handshake(&mut c, b"wrong", Role::Worker).is_err());
        drop(c);
        assert!(!t.join().unwrap());
        assert!(!released.load(Ordering::SeqCst));
    }

    #[test]
    fn handshake_rejects_wrong_secret_on_both_sides() {
        let (mut c, mut s) = pair();
        let t = std::thread::spawn(move || server_handshake(&mut s, b"right"));
        let e = client_handshake(&mut c, b"wrong", Role::Worker).unwrap_err();
        assert!(e.to_string().contains("authentication failed"), "{e}");
        drop(c);
        // The client gave up before proving anything: the server sees a closed connection.
        assert!(t.join().unwrap().is_err());
    }

    #[test]
    fn server_rejects_wrong_client_proof() {
        let (mut c, mut s) = pair();
        let t = std::thread::spawn(move || server_handshake(&mut s, b"right"));
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        hello.push(Role::Client as u8);
        hello.push(mode_byte());
        hello.extend_from_slice(&[7u8; 32]);
        c.write_all(&hello).unwrap();
        let mut reply = [0u8; 75];
        c.read_exact(&mut reply).unwrap();
        c.write_all(&[0u8; 32]).unwrap();
        let mut status = [9u8; 1];
        c.read_exact(&mut status).unwrap();
        assert_eq!(status[0], STATUS_AUTH);
        assert!(matches!(t.join().unwrap(), Err(HandshakeError::AuthFailed)));
    }

    #[test]
    fn handshake_rejects_garbage_and_versions() {
        let (mut c, mut s) = pair();
        let t = std::thread::spawn(move || server_handshake(&mut s, b"x"));
        c.write_all(&[0x42; 44]).unwrap();
        assert!(matches!(t.join().unwrap(), Err(HandshakeError::BadMagic)));

        let (mut c, mut s) = pair();
        let t = std::thread::spawn(move || server_handshake(&mut s, b"x"));
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&99u16.to_le_bytes());
        hello.push(2);
        hello.push(0);
        hello.extend_from_slice(&[0; 32]);
        c.write_all(&hello).unwrap();
        assert!(matches!(t.join().unwrap(), Err(HandshakeError::Version { theirs: 99, .. })));
    }

    #[test]
    fn a_peer_of_the_other_encryption_mode_is_told_so() {
        let (mut c, mut s) = pair();
        let t = std::thread::spawn(move || server_handshake(&mut s, b"x"));
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        hello.push(Role::Worker as u8);
        hello.push(1 - mode_byte()); // the other mode
        hello.extend_from_slice(&[3; 32]);
        c.write_all(&hello).unwrap();
        let mut reply = [0u8; 75];
        c.read_exact(&mut reply).unwrap();
        assert_eq!(reply[10], STATUS_MODE);
        let e = t.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("--insecure-plaintext"), "{e}");
    }
}
