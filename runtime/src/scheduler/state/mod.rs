//! The scheduler as a pure state machine.
//!
//! Events in through one entry point, [`SchedulerState::handle`] (a worker
//! joined, a task finished, a client submitted a graph, ...; see
//! [`events`]), messages out (queued in [`SchedulerState::take_outgoing`]).
//! Nothing in here touches a socket, a thread or the clock: time is passed
//! in as `now` (seconds). Every event leaves the state satisfying
//! [`SchedulerState::check_invariants`], which the tests call after every
//! event. A run's events can be recorded and replayed ([`Recorder`], [`replay`]).
//!
//! Task states follow Dask's: `Released` (known, not needed or not started),
//! `Waiting` (needed, some dependency not in memory), `Queued` (ready root
//! task waiting for a free worker slot), `NoWorker` (ready, but no connected
//! worker satisfies its restrictions), `Processing` (sent to a worker),
//! `Memory` (result held by one or more workers), `Erred`, and `Forgotten`
//! (nobody wants it any more; its id is never reused).

use crate::graph::TaskDef;
use crate::protocol::{ComputeTask, Payload, StatusReport, TaskId, ToClient, ToWorker, WorkerId, WorkerMetrics, WorkerStatus};
use super::ids::{Ids, ReadyQueue};
use crate::keys::KeyIndex;
use std::collections::BTreeMap;

pub use datasets::{Dataset, DATASETS};
pub use events::{replay, Event, Outcome, Record, Recorder, Replay};

pub type ClientId = u32;

/// Messages taken from the state: to workers, then to clients.
pub type Outgoing = (Vec<(WorkerId, ToWorker)>, Vec<(ClientId, ToClient)>);

/// Up to this many workers, placing a task looks at every one of them.
const SCAN_ALL_WORKERS: usize = 32;
/// With more, a task with dependencies considers their holders and this
/// many other workers, taken in turn.
const OTHER_CANDIDATES: usize = 4;

/// Encoded expressions up to this size are shared between tasks.
const MAX_SHARED_SPEC: usize = 256;

/// Seconds between work-stealing passes triggered by finished tasks.
const BALANCE_INTERVAL: f64 = 0.005;

use crate::idmap::{IdMap, IdSet};

/// Lower runs first: (rank of the user priority, highest first; submission
/// generation; graph order).
pub type Priority = (u32, u32, u32);

/// The first element of a task's priority: higher user priorities sort
/// first, in 4 bytes (the order of `-(p as i64)`).
fn priority_rank(p: i32) -> u32 {
    !((p as u32) ^ 0x8000_0000)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskState {
    Released,
    Waiting,
    Queued,
    NoWorker,
    Processing,
    Memory,
    Erred,
    Forgotten,
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::Released,
        TaskState::Waiting,
        TaskState::Queued,
        TaskState::NoWorker,
        TaskState::Processing,
        TaskState::Memory,
        TaskState::Erred,
        TaskState::Forgotten,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TaskState::Released => "released",
            TaskState::Waiting => "waiting",
            TaskState::Queued => "queued",
            TaskState::NoWorker => "no-worker",
            TaskState::Processing => "processing",
            TaskState::Memory => "memory",
            TaskState::Erred => "erred",
            TaskState::Forgotten => "forgotten",
        }
    }

    /// States in which a task still needs its dependencies' values.
    fn is_active(self) -> bool {
        matches!(self, TaskState::Waiting | TaskState::Queued | TaskState::NoWorker | TaskState::Processing)
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SchedulerConfig {
    /// A task that was running on this many workers when they died is erred.
    pub allowed_failures: u32,
    /// Seconds without a message after which a worker is considered lost.
    pub worker_timeout: f64,
    /// Seconds of work to keep queued on each worker beyond its threads, so
    /// short tasks do not wait for a scheduler round trip.
    pub pipeline_seconds: f64,
    /// Upper bound on extra queued tasks per worker thread.
    pub max_pipeline_per_thread: u32,
    /// Assumed worker-to-worker bandwidth (bytes/s) for placement.
    pub bandwidth: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            allowed_failures: 3,
            worker_timeout: 60.0,
            pipeline_seconds: 0.02,
            max_pipeline_per_thread: 512,
            bandwidth: 100e6,
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerInfo {
    pub name: String,
    pub address: String,
    pub nthreads: u32,
    pub resources: Vec<(String, f64)>,
    pub host: String,
    pub pid: u32,
    /// The batch job the worker runs in ("" outside a job).
    pub job: String,
    /// Functions it has beyond the built-ins.
    pub functions: Vec<String>,
}

#[derive(Debug)]
struct Worker {
    info: WorkerInfo,
    processing: IdSet,
    has_what: IdSet,
    last_seen: f64,
    metrics: WorkerMetrics,
    /// Leaving gracefully: no new tasks; unique values are being copied away.
    retiring: bool,
    /// Told to shut down after retiring.
    retired: bool,
}

impl Worker {
    /// May get new tasks.
    fn accepts_work(&self) -> bool {
        !self.retiring && !self.metrics.paused
    }
}

/// What few tasks have, kept out of line so most tasks need none of it.
#[derive(Debug, Default)]
struct Extra {
    /// Names or addresses of the workers allowed to run it (empty: any).
    workers: Vec<String>,
    resources: Vec<(String, f64)>,
    /// Functions it needs beyond the built-ins.
    functions: Vec<String>,
    timeout: Option<f64>,
    error: Option<Box<str>>,
}

#[derive(Debug)]
struct Task {
    /// Where its key is in `SchedulerState::key_bytes`.
    key: KeyRef,
    state: TaskState,
    /// Shared between tasks with the same encoded expression (see `specs`);
    /// a one-word pointer (the length is in the allocation).
    spec: Spec,
    deps: Ids,
    dependents: Ids,
    /// Dependencies not in memory (meaningful while `Waiting`).
    waiting_on: u32,
    /// Dependents in an active state, i.e. still needing this value.
    waiters: u32,
    /// Dependents not yet forgotten.
    live_dependents: u32,
    who_has: Ids,
    /// The worker running it, 0 for none (worker ids start at 1): 4 bytes
    /// where an `Option<u32>` takes 8. Read and set through `on`/`set_on`.
    processing_on: u32,
    wanted_by: Ids,
    priority: Priority,
    retries_left: u32,
    suspicious: u32,
    /// Its worker reported that it began running (since it was last sent):
    /// only started tasks are suspected when that worker dies.
    started: bool,
    nbytes: u64,
    extra: Option<Box<Extra>>,
}

impl Task {
    fn on(&self) -> Option<WorkerId> {
        (self.processing_on != 0).then_some(self.processing_on)
    }
    fn set_on(&mut self, w: Option<WorkerId>) {
        debug_assert_ne!(w, Some(0), "worker ids start at 1");
        self.processing_on = w.unwrap_or(0);
    }
    fn take_on(&mut self) -> Option<WorkerId> {
        let w = self.on();
        self.processing_on = 0;
        w
    }
    /// Restricted to some workers or needing resources.
    fn restricted(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| !e.workers.is_empty() || !e.resources.is_empty() || !e.functions.is_empty())
    }
    fn timeout(&self) -> Option<f64> {
        self.extra.as_ref().and_then(|e| e.timeout)
    }
    fn error(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.error.as_deref())
    }
    fn set_error(&mut self, error: Option<Box<str>>) {
        match (&mut self.extra, error) {
            (Some(e), err) => e.error = err,
            (None, Some(err)) => self.extra = Some(Box::new(Extra { error: Some(err), ..Default::default() })),
            (None, None) => {}
        }
    }
}

/// Counters reported in status and asserted by tests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SchedulerStats {
    pub tasks_finished: u64,
    pub tasks_erred: u64,
    /// Tasks run again because their result was lost with a worker.
    pub tasks_recomputed: u64,
    /// Values workers still held when they came back to a scheduler
    /// restarted from its journal, taken over instead of recomputed.
    pub values_adopted: u64,
    /// Tasks put back because the worker running them was lost.
    pub tasks_rescheduled: u64,
    pub workers_lost: u64,
    pub retries: u64,
    /// Workers that left gracefully, their unique values moved first.
    pub workers_retired: u64,
    /// Values copied to another worker (retirement).
    pub values_replicated: u64,
    /// Queued tasks moved from a busy worker to an idle one.
    pub tasks_stolen: u64,
}

/// A task's key: a range of `SchedulerState::key_bytes`.
#[derive(Clone, Copy, Debug)]
struct KeyRef {
    off: u32,
    len: u32,
}

/// The scheduler's whole state.
/// Workers lost within this many seconds of each other count as churn.
const CHURN_WINDOW: f64 = 30.0;
/// This many losses within the window: keep second copies (see `update_churn`).
const CHURN_LOSSES: usize = 2;

pub struct SchedulerState {
    config: SchedulerConfig,
    tasks: Vec<Task>,
    /// Every task's key, back to back: no allocation (and its overhead) per
    /// key. Like the task slots, the keys of forgotten tasks stay (task ids
    /// are never reused).
    key_bytes: String,
    keys: KeyIndex,
    /// Encoded expressions shared between tasks: most graphs repeat a few
    /// (the same call with references to different dependencies).
    specs: hashbrown::HashTable<Spec>,
    spec_seed: hashbrown::DefaultHashBuilder,
    /// What forgotten tasks point to instead of their expression.
    empty_spec: Spec,
    workers: BTreeMap<WorkerId, Worker>,
    clients: BTreeMap<ClientId, String>,
    /// Published datasets by name (see [`datasets`]).
    datasets: BTreeMap<String, Dataset>,
    /// Worker plugins, in registration order: (name, pickled callable).
    plugins: Vec<(String, Vec<u8>)>,
    queued: ReadyQueue<Priority>,
    no_worker: Vec<TaskId>,
    counts: [u64; 8],
    next_worker: WorkerId,
    next_client: ClientId,
    generation: u32,
    avg_duration: f64,
    to_worker: Vec<(WorkerId, ToWorker)>,
    frees: BTreeMap<WorkerId, Vec<TaskId>>,
    to_client: Vec<(ClientId, ToClient)>,
    logs: Vec<String>,
    debug_logs: Vec<String>,
    /// Tasks whose need may have dropped; examined by `settle`.
    check: Vec<TaskId>,
    /// Copies under way for retiring workers: value -> worker copying it.
    replicating: IdMap<WorkerId>,
    /// Workers retiring and not yet told to go (so `settle` need not scan).
    retiring_count: usize,
    /// Steal requests under way: task -> (worker asked to give it up, thief).
    stealing: IdMap<(WorkerId, WorkerId)>,
    /// When work stealing last ran after a task finished (`now` seconds).
    last_balance: f64,
    /// Where the next placement starts looking among the workers.
    placement_cursor: WorkerId,
    /// Tasks suspected of crashing workers: the count of workers lost when
    /// the first of their workers died (to tell a crashing task from a
    /// machine where workers die anyway).
    first_suspicion: IdMap<u64>,
    /// The last look at progress: (time, finished, recomputed, lost) then.
    progress_mark: (f64, u64, u64, u64),
    /// The time of the event being handled.
    now: f64,
    /// When workers were lost (not retired), the last [`CHURN_WINDOW`] s.
    losses: std::collections::VecDeque<f64>,
    /// Workers are being lost often: results others still need get a
    /// second copy as they are made.
    churn: bool,
    pub stats: SchedulerStats,
}

impl SchedulerState {
    pub fn new(config: SchedulerConfig) -> Self {
        SchedulerState {
            config,
            tasks: Vec::new(),
            key_bytes: String::new(),
            keys: KeyIndex::default(),
            specs: hashbrown::HashTable::new(),
            spec_seed: Default::default(),
            empty_spec: Spec::from_header_and_slice((), &[]),
            workers: BTreeMap::new(),
            clients: BTreeMap::new(),
            datasets: BTreeMap::new(),
            plugins: Vec::new(),
            queued: ReadyQueue::default(),
            no_worker: Vec::new(),
            counts: [0; 8],
            next_worker: 1,
            next_client: 1,
            generation: 0,
            avg_duration: 0.0,
            to_worker: Vec::new(),
            frees: BTreeMap::new(),
            to_client: Vec::new(),
            logs: Vec::new(),
            debug_logs: Vec::new(),
            first_suspicion: IdMap::default(),
            progress_mark: (0.0, 0, 0, 0),
            now: 0.0,
            losses: std::collections::VecDeque::new(),
            churn: false,
            check: Vec::new(),
            replicating: IdMap::default(),
            stealing: IdMap::default(),
            last_balance: f64::NEG_INFINITY,
            placement_cursor: 0,
            retiring_count: 0,
            stats: SchedulerStats::default(),
        }
    }

    /// The shared copy of an encoded expression. Only small ones are shared
    /// (large ones, e.g. a command with a long literal input, are rarely
    /// repeated), and the table is emptied when it grows large (tasks keep
    /// their copies; later ones start sharing again): it never holds more
    /// than a bounded amount of specs no task uses any more.
    fn intern_spec(&mut self, spec: Vec<u8>) -> Spec {
        if spec.len() > MAX_SHARED_SPEC {
            return Spec::from_header_and_slice((), &spec);
        }
        use std::hash::BuildHasher;
        let seed = &self.spec_seed;
        let h = seed.hash_one(&spec[..]);
        if let Some(s) = self.specs.find(h, |s| s.slice == spec[..]) {
            return s.clone();
        }
        if self.specs.len() >= 1 << 16 {
            self.specs.clear();
        }
        let s = Spec::from_header_and_slice((), &spec);
        self.specs.insert_unique(h, s.clone(), |s| seed.hash_one(&s.slice));
        s
    }

    // ---- queries ---------------------------------------------------------

    pub fn count(&self, s: TaskState) -> u64 {
        self.counts[s as usize]
    }

    pub fn task_id(&self, key: &str) -> Option<TaskId> {
        let (tasks, bytes) = (&self.tasks, &self.key_bytes);
        self.keys.get(key, |id| key_at(bytes, tasks[id as usize].key))
    }

    /// The key of task `t`, if there is such a task.
    /// The name worker `w` registered with.
    pub fn worker_name(&self, w: WorkerId) -> Option<&str> {
        self.workers.get(&w).map(|x| x.info.name.as_str())
    }

    /// Whether worker `w` holds the value of task `t`.
    pub fn held_by(&self, t: TaskId, w: WorkerId) -> bool {
        self.tasks.get(t as usize).is_some_and(|task| task.who_has.contains(&w))
    }

    pub fn key_of(&self, t: TaskId) -> Option<&str> {
        self.tasks.get(t as usize).map(|task| key_at(&self.key_bytes, task.key))
    }

    /// The key of task `t`.
    pub fn key(&self, t: TaskId) -> &str {
        key_at(&self.key_bytes, self.tasks[t as usize].key)
    }

    pub fn state_of(&self, key: &str) -> Option<TaskState> {
        self.task_id(key).map(|t| self.tasks[t as usize].state)
    }

    pub fn who_has(&self, key: &str) -> Vec<WorkerId> {
        self.task_id(key).map(|t| self.tasks[t as usize].who_has.to_vec()).unwrap_or_default()
    }

    pub fn processing_on(&self, key: &str) -> Option<WorkerId> {
        self.task_id(key).and_then(|t| self.tasks[t as usize].on())
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    pub fn worker_ids(&self) -> Vec<WorkerId> {
        self.workers.keys().copied().collect()
    }

    /// True when no task is waiting, queued, processing or held.
    pub fn is_idle(&self) -> bool {
        TaskState::ALL.iter().all(|&s| matches!(s, TaskState::Released | TaskState::Forgotten | TaskState::Erred) || self.count(s) == 0)
    }

    pub fn status(&self, now: f64, address: &str, started: f64) -> StatusReport {
        StatusReport {
            address: address.to_string(),
            dashboard: String::new(),
            started,
            workers: self
                .workers
                .iter()
                .map(|(&id, w)| WorkerStatus {
                    id,
                    name: w.info.name.clone(),
                    address: w.info.address.clone(),
                    host: w.info.host.clone(),
                    pid: w.info.pid,
                    job: w.info.job.clone(),
                    nthreads: w.info.nthreads,
                    processing: w.processing.len() as u32,
                    in_memory: w.has_what.len() as u64,
                    metrics: w.metrics.clone(),
                    last_seen_secs: (now - w.last_seen).max(0.0),
                })
                .collect(),
            tasks: TaskState::ALL.iter().filter(|&&s| s != TaskState::Forgotten).map(|&s| (s.name().to_string(), self.count(s))).collect(),
            clients: self.clients.len() as u32,
            stats: vec![
                ("tasks_finished".into(), self.stats.tasks_finished),
                ("tasks_erred".into(), self.stats.tasks_erred),
                ("tasks_recomputed".into(), self.stats.tasks_recomputed),
                ("values_adopted".into(), self.stats.values_adopted),
                ("tasks_rescheduled".into(), self.stats.tasks_rescheduled),
                ("retries".into(), self.stats.retries),
                ("workers_lost".into(), self.stats.workers_lost),
                ("workers_retired".into(), self.stats.workers_retired),
                ("values_replicated".into(), self.stats.values_replicated),
                ("tasks_stolen".into(), self.stats.tasks_stolen),
                ("mean_task_us".into(), (self.avg_duration * 1e6) as u64),
            ],
        }
    }

    /// Messages produced since the last call: to workers, then to clients.
    pub fn take_outgoing(&mut self) -> Outgoing {
        let mut w = std::mem::take(&mut self.to_worker);
        for (wid, mut ids) in std::mem::take(&mut self.frees) {
            // Frees go out after this round's other messages, and a worker
            // that gets `Free` for a task queued on it drops that task too.
            // So never free a value on the worker now asked to compute it
            // (e.g. an old copy released in the same round the value was
            // lost and sent there to be recomputed): its result replaces it.
            ids.retain(|&t| self.tasks.get(t as usize).is_none_or(|x| !(x.state == TaskState::Processing && x.on() == Some(wid))));
            if self.workers.contains_key(&wid) && !ids.is_empty() {
                w.push((wid, ToWorker::Free { ids }));
            }
        }
        (w, std::mem::take(&mut self.to_client))
    }

    /// Log lines produced since the last call.
    pub fn take_logs(&mut self) -> Vec<String> {
        std::mem::take(&mut self.logs)
    }

    /// Debug-level log lines produced since the last call.
    pub fn take_debug_logs(&mut self) -> Vec<String> {
        std::mem::take(&mut self.debug_logs)
    }
}

/// A task's encoded expression, reference counted, one word.
type Spec = triomphe::ThinArc<(), u8>;

fn key_at(bytes: &str, k: KeyRef) -> &str {
    &bytes[k.off as usize..(k.off + k.len) as usize]
}

mod datasets;
mod events;
mod intake;
mod invariants;
mod placement;
mod retirement;
mod stealing;
mod transitions;
mod workers;

#[cfg(test)]
mod tests;
