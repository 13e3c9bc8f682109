//! The scheduler as a pure state machine.
//!
//! Calls in (a worker joined, a task finished, a client submitted a graph,
//! ...), messages out (queued in [`SchedulerState::take_outgoing`]). Nothing in
//! here touches a socket, a thread or the clock: time is passed in as `now`
//! (seconds). Every public method leaves the state satisfying
//! [`SchedulerState::check_invariants`], which the tests call after every event.
//!
//! Task states follow Dask's: `Released` (known, not needed or not started),
//! `Waiting` (needed, some dependency not in memory), `Queued` (ready root
//! task waiting for a free worker slot), `NoWorker` (ready, but no connected
//! worker satisfies its restrictions), `Processing` (sent to a worker),
//! `Memory` (result held by one or more workers), `Erred`, and `Forgotten`
//! (nobody wants it any more; its id is never reused).

use crate::graph::TaskDef;
use crate::protocol::{ComputeTask, Payload, StatusReport, TaskId, ToClient, ToWorker, WorkerId, WorkerMetrics, WorkerStatus};
use super::ids::{Ids, KeyIndex, ReadyQueue};
use std::collections::{BTreeMap, HashMap, HashSet};

pub type ClientId = u32;

/// Up to this many workers, placing a task looks at every one of them.
const SCAN_ALL_WORKERS: usize = 32;
/// With more, a task with dependencies considers their holders and this
/// many other workers, taken in turn.
const OTHER_CANDIDATES: usize = 4;

/// Encoded expressions up to this size are shared between tasks.
const MAX_SHARED_SPEC: usize = 256;

/// Seconds between work-stealing passes triggered by finished tasks.
const BALANCE_INTERVAL: f64 = 0.005;

/// Sets and maps keyed by task id. Ids are handed out by the scheduler
/// itself (no one else chooses them), so a fast fixed hash is safe here;
/// keys chosen by clients keep the randomly seeded default hasher.
type IdSet = HashSet<TaskId, IdHash>;
type IdMap<V> = HashMap<TaskId, V, IdHash>;

/// Multiplicative (Fibonacci) hashing of a 32-bit id.
#[derive(Clone, Copy, Default)]
struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

#[derive(Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

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

#[derive(Clone, Debug)]
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

#[derive(Clone, Debug)]
pub struct WorkerInfo {
    pub name: String,
    pub address: String,
    pub nthreads: u32,
    pub resources: Vec<(String, f64)>,
    pub host: String,
    pub pid: u32,
    /// The batch job the worker runs in ("" outside a job).
    pub job: String,
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
        self.extra.as_ref().is_some_and(|e| !e.workers.is_empty() || !e.resources.is_empty())
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
    pub fn take_outgoing(&mut self) -> (Vec<(WorkerId, ToWorker)>, Vec<(ClientId, ToClient)>) {
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

    // ---- workers ---------------------------------------------------------

    pub fn add_worker(&mut self, info: WorkerInfo, now: f64) -> WorkerId {
        let id = self.next_worker;
        self.next_worker += 1;
        self.logs.push(format!("worker '{}' joined from {} with {} threads", info.name, info.address, info.nthreads));
        self.workers.insert(
            id,
            Worker {
                info,
                processing: IdSet::default(),
                has_what: IdSet::default(),
                last_seen: now,
                metrics: WorkerMetrics::default(),
                retiring: false,
                retired: false,
            },
        );
        self.to_worker.push((id, ToWorker::Welcome { worker_id: id }));
        // Tasks no worker could run may fit the newcomer.
        let stuck = std::mem::take(&mut self.no_worker);
        for t in stuck {
            if self.tasks[t as usize].state == TaskState::NoWorker {
                self.make_ready(t);
            }
        }
        self.settle();
        self.fill_worker(id);
        id
    }

    pub fn heartbeat(&mut self, w: WorkerId, metrics: WorkerMetrics, now: f64) {
        let Some(worker) = self.workers.get_mut(&w) else { return };
        worker.last_seen = now;
        let resumed = worker.metrics.paused && !metrics.paused;
        if metrics.paused && !worker.metrics.paused {
            self.logs.push(format!("worker '{}' paused: over its memory pause threshold; sending it no new tasks", worker.info.name));
        }
        worker.metrics = metrics;
        if resumed {
            self.logs.push(format!("worker '{}' resumed", self.workers[&w].info.name));
            self.fill_worker(w);
        }
    }

    /// Any message from a worker proves it alive.
    pub fn touch(&mut self, w: WorkerId, now: f64) {
        if let Some(worker) = self.workers.get_mut(&w) {
            worker.last_seen = now;
        }
    }

    /// Remove workers that have been silent for longer than the timeout.
    /// Returns the ids removed.
    pub fn check_timeouts(&mut self, now: f64) -> Vec<WorkerId> {
        let timeout = self.config.worker_timeout;
        let silent: Vec<WorkerId> = self.workers.iter().filter(|(_, w)| now - w.last_seen > timeout).map(|(&id, _)| id).collect();
        for &w in &silent {
            self.remove_worker(w, &format!("no message for {timeout:.0} s"));
        }
        silent
    }

    /// A worker left or was lost: reschedule what it was running, recompute
    /// what only it held and is still needed.
    pub fn remove_worker(&mut self, w: WorkerId, reason: &str) {
        let Some(worker) = self.workers.remove(&w) else { return };
        let name = worker.info.name.clone();
        if worker.retiring && !worker.retired {
            self.retiring_count -= 1;
        }
        if worker.retired {
            self.stats.workers_retired += 1;
            self.logs.push(format!("worker '{name}' ({}) retired", worker.info.address));
        } else {
            self.stats.workers_lost += 1;
            self.logs.push(format!("worker '{name}' ({}) removed: {reason}", worker.info.address));
        }
        // Copies this worker was making are retried elsewhere.
        self.replicating.retain(|_, target| *target != w);
        self.stealing.retain(|_, (victim, thief)| *victim != w && *thief != w);
        self.frees.remove(&w);
        self.to_worker.retain(|(id, _)| *id != w);

        let mut held: Vec<TaskId> = worker.has_what.into_iter().collect();
        held.sort_unstable();
        let mut lost = Vec::new();
        for t in held {
            let task = &mut self.tasks[t as usize];
            task.who_has.retain(|&h| h != w);
            if task.who_has.is_empty() && task.state == TaskState::Memory {
                self.lose_value(t);
                lost.push(t);
            }
        }
        let mut processing: Vec<TaskId> = worker.processing.into_iter().collect();
        processing.sort_unstable();
        // Suspect the tasks it had begun running, not those queued behind
        // them; if it reported none (it died before it could say), all.
        let any_started = processing.iter().any(|&t| self.tasks[t as usize].started);
        let mut suspected = Vec::new();
        for t in processing {
            let task = &mut self.tasks[t as usize];
            task.set_on(None);
            if task.started || !any_started {
                task.suspicious += 1;
                suspected.push(key_at(&self.key_bytes, task.key).to_string());
            }
            if task.suspicious > self.config.allowed_failures {
                let msg = format!(
                    "task was running on {} workers that died (last: '{name}'); it may be crashing its worker (allowed failures: {})",
                    task.suspicious, self.config.allowed_failures
                );
                self.logs.push(format!("task '{}' marked erred: {msg}", key_at(&self.key_bytes, task.key)));
                self.mark_erred(t, msg);
            } else {
                self.stats.tasks_rescheduled += 1;
                self.back_to_waiting(t);
            }
        }

        if !suspected.is_empty() {
            self.debug_logs.push(format!("tasks running on '{name}' when it was lost: {}", suspected.join(", ")));
        }
        let mut recomputed = Vec::new();
        for t in lost {
            if self.is_needed(t) {
                recomputed.push(self.key(t).to_string());
                self.stats.tasks_recomputed += 1;
                self.ensure_computing(t);
            } else {
                self.check.push(t);
            }
        }
        if !recomputed.is_empty() {
            let shown: Vec<&str> = recomputed.iter().take(20).map(String::as_str).collect();
            let more = if recomputed.len() > 20 { format!(" and {} more", recomputed.len() - 20) } else { String::new() };
            self.logs.push(format!("recomputing {} lost keys held only by '{name}': {}{more}", recomputed.len(), shown.join(", ")));
            if recomputed.len() > 20 {
                self.debug_logs.push(format!("all lost keys recomputed after '{name}' left: {}", recomputed.join(", ")));
            }
        }
        self.settle();
        self.fill_all();
        self.progress_retirements();
    }

    // ---- work stealing -----------------------------------------------------

    /// Move tasks waiting on busy workers to workers with idle threads, when
    /// nothing is queued at the scheduler. A task moves only if fetching its
    /// inputs on the idle worker costs less than twice a typical task's run
    /// time. The busy worker is asked to give up tasks it has not started
    /// (those it would run last); see `stolen`.
    pub fn balance(&mut self) {
        if self.count(TaskState::Queued) > 0 {
            return;
        }
        let mut idle: Vec<(WorkerId, usize)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.accepts_work() && w.processing.len() < w.info.nthreads as usize)
            .map(|(&id, w)| (id, w.info.nthreads as usize - w.processing.len()))
            .collect();
        if idle.is_empty() {
            return;
        }
        let mut busy: Vec<(usize, WorkerId)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.processing.len() > w.info.nthreads as usize)
            .map(|(&id, w)| (w.processing.len() - w.info.nthreads as usize, id))
            .collect();
        busy.sort_unstable_by(|a, b| b.cmp(a));
        let budget = 2.0 * self.avg_duration.max(1e-3);
        for (excess, victim) in busy {
            let mut candidates: Vec<(Priority, TaskId)> = self.workers[&victim]
                .processing
                .iter()
                .filter(|t| !self.stealing.contains_key(t))
                .map(|&t| (self.tasks[t as usize].priority, t))
                .collect();
            // The tasks it would run last first.
            candidates.sort_unstable_by(|a, b| b.cmp(a));
            let mut requests = Vec::new();
            let mut quota = excess.div_ceil(2);
            for (_, t) in candidates {
                if quota == 0 || idle.is_empty() {
                    break;
                }
                let task = &self.tasks[t as usize];
                let thief = idle.iter().position(|(thief, _)| {
                    let w = &self.workers[thief];
                    let missing: u64 = task.deps.iter().map(|&d| &self.tasks[d as usize]).filter(|d| !d.who_has.contains(thief)).map(|d| d.nbytes).sum();
                    self.eligible(t, w) && (missing as f64 / self.config.bandwidth) < budget
                });
                let Some(i) = thief else { continue };
                requests.push((t, idle[i].0));
                quota -= 1;
                idle[i].1 -= 1;
                if idle[i].1 == 0 {
                    idle.remove(i);
                }
            }
            if requests.is_empty() {
                continue;
            }
            for &(t, thief) in &requests {
                self.stealing.insert(t, (victim, thief));
            }
            self.to_worker.push((victim, ToWorker::Steal { ids: requests.into_iter().map(|(t, _)| t).collect() }));
        }
    }

    /// Worker `victim` gave up `ids` (they had not started) and kept `kept`
    /// (they had): hand each given-up task to the thief chosen for it (or
    /// place it afresh if that one is gone). Only these requests are
    /// settled: others to the same worker may still be under way.
    pub fn stolen(&mut self, victim: WorkerId, ids: &[TaskId], kept: &[TaskId], now: f64) {
        self.touch(victim, now);
        for t in kept {
            if self.stealing.get(t).is_some_and(|(v, _)| *v == victim) {
                self.stealing.remove(t);
            }
        }
        for &t in ids {
            let thief = match self.stealing.get(&t) {
                Some(&(v, thief)) if v == victim => {
                    self.stealing.remove(&t);
                    Some(thief)
                }
                _ => None,
            };
            let Some(task) = self.tasks.get_mut(t as usize) else { continue };
            // The victim no longer has the task, even when the request is
            // no longer on record (the thief left meanwhile): place it again,
            // else it would stay "processing" there for ever.
            if task.state != TaskState::Processing || task.on() != Some(victim) {
                continue;
            }
            task.set_on(None);
            if let Some(w) = self.workers.get_mut(&victim) {
                w.processing.remove(&t);
            }
            self.stats.tasks_stolen += 1;
            let deps_ready = self.tasks[t as usize].deps.iter().all(|&d| self.tasks[d as usize].state == TaskState::Memory);
            match thief.filter(|th| self.workers.get(th).is_some_and(|w| w.accepts_work())) {
                Some(thief) if deps_ready => self.send_to_worker(t, thief),
                _ => self.back_to_waiting(t),
            }
        }
        self.settle();
        self.fill_all();
    }

    // ---- retirement --------------------------------------------------------

    /// Retire workers by name or address, or every idle one (`all_idle`,
    /// keeping the one holding the most values if all are idle and any
    /// value is held). Returns the names now retiring.
    pub fn retire_workers(&mut self, names: &[String], all_idle: bool) -> Vec<String> {
        let mut chosen: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.retiring)
            .filter(|(_, w)| names.iter().any(|n| *n == w.info.name || *n == w.info.address) || (all_idle && w.processing.is_empty()))
            .map(|(&id, _)| id)
            .collect();
        let staying = self.workers.values().filter(|w| !w.retiring).count() - chosen.len();
        if all_idle && staying == 0 && names.is_empty() && self.workers.values().any(|w| !w.has_what.is_empty()) {
            if let Some(keep) = chosen.iter().copied().max_by_key(|id| (self.workers[id].has_what.len(), std::cmp::Reverse(*id))) {
                chosen.retain(|&id| id != keep);
            }
        }
        let mut out = Vec::new();
        for id in chosen {
            let w = self.workers.get_mut(&id).expect("chosen from workers");
            w.retiring = true;
            self.retiring_count += 1;
            out.push(w.info.name.clone());
            let unique = w.has_what.iter().filter(|t| self.tasks[**t as usize].who_has.len() == 1).count();
            self.logs.push(format!("worker '{}' retiring: no new tasks; {unique} values only it holds will be copied to other workers", w.info.name));
        }
        self.progress_retirements();
        out
    }

    /// Worker `w` began running `ids`.
    pub fn started(&mut self, w: WorkerId, ids: &[TaskId], now: f64) {
        self.touch(w, now);
        for &t in ids {
            if let Some(task) = self.tasks.get_mut(t as usize) {
                if task.state == TaskState::Processing && task.on() == Some(w) {
                    task.started = true;
                }
            }
        }
    }

    /// A worker asks to leave (e.g. it got SIGTERM).
    pub fn retire_me(&mut self, w: WorkerId, now: f64) {
        self.touch(w, now);
        if let Some(name) = self.workers.get(&w).map(|x| x.info.name.clone()) {
            self.retire_workers(&[name], false);
        }
    }

    /// Move retiring workers along: once one runs nothing, copy each value
    /// only it holds to a worker that stays; when none is left, tell it to go.
    fn progress_retirements(&mut self) {
        let retiring: Vec<WorkerId> = self.workers.iter().filter(|(_, w)| w.retiring && !w.retired && w.processing.is_empty()).map(|(&id, _)| id).collect();
        for w in retiring {
            let mut unique: Vec<TaskId> = self.workers[&w].has_what.iter().copied().filter(|t| *self.tasks[*t as usize].who_has == [w]).collect();
            unique.sort_unstable();
            let targets: Vec<WorkerId> = self.workers.iter().filter(|(_, x)| !x.retiring).map(|(&id, _)| id).collect();
            if !unique.is_empty() && targets.is_empty() {
                self.logs.push(format!(
                    "worker '{}' retires with {} values no other worker can take; they will be recomputed if needed",
                    self.workers[&w].info.name,
                    unique.len()
                ));
                unique.clear();
            }
            let pending = unique.iter().filter(|t| self.replicating.contains_key(t)).count();
            // Spread copies: each goes to the staying worker holding the least.
            let mut load: Vec<(usize, WorkerId)> = targets.iter().map(|id| (self.workers[id].has_what.len(), *id)).collect();
            let to_copy: Vec<TaskId> = unique.iter().copied().filter(|t| !self.replicating.contains_key(t)).collect();
            for t in to_copy {
                let slot = load.iter_mut().min().expect("targets not empty");
                slot.0 += 1;
                let target = slot.1;
                self.replicating.insert(t, target);
                let holders = vec![self.workers[&w].info.address.clone()];
                self.to_worker.push((target, ToWorker::Replicate { id: t, holders }));
            }
            if unique.is_empty() && pending == 0 {
                let worker = self.workers.get_mut(&w).expect("retiring worker");
                worker.retired = true;
                self.retiring_count -= 1;
                self.to_worker.push((w, ToWorker::Shutdown { reason: "retired".into() }));
            }
        }
    }

    /// Worker `w` now holds a copy of `t`: one it was asked for (`Replicate`,
    /// retirement; counted) or one it fetched for its own tasks (workers
    /// report every fetch). Either way it is a holder, freed with the value.
    pub fn replicated(&mut self, w: WorkerId, t: TaskId, nbytes: u64, now: f64) {
        self.touch(w, now);
        let asked = self.replicating.get(&t) == Some(&w);
        if asked {
            self.replicating.remove(&t);
        }
        let alive = self.workers.contains_key(&w);
        match self.tasks.get(t as usize) {
            Some(task) if task.state == TaskState::Memory && alive
                && !task.who_has.contains(&w) => {
                    self.tasks[t as usize].who_has.push(w);
                    self.tasks[t as usize].nbytes = self.tasks[t as usize].nbytes.max(nbytes);
                    self.workers.get_mut(&w).expect("alive").has_what.insert(t);
                    if asked {
                        self.stats.values_replicated += 1;
                    }
                }
            _ if alive => self.frees.entry(w).or_default().push(t),
            _ => {}
        }
        self.progress_retirements();
    }

    pub fn replicate_failed(&mut self, w: WorkerId, t: TaskId, now: f64) {
        self.touch(w, now);
        if self.replicating.get(&t) == Some(&w) {
            self.replicating.remove(&t);
        }
        self.progress_retirements();
    }

    // ---- clients ---------------------------------------------------------

    pub fn add_client(&mut self, name: String) -> ClientId {
        let id = self.next_client;
        self.next_client += 1;
        self.clients.insert(id, name);
        self.to_client.push((id, ToClient::Welcome { client_id: id }));
        id
    }

    /// A client left: everything only it wanted is released.
    pub fn remove_client(&mut self, c: ClientId) {
        if self.clients.remove(&c).is_none() {
            return;
        }
        let wanted: Vec<TaskId> =
            self.tasks.iter().enumerate().filter(|(_, t)| t.wanted_by.contains(&c)).map(|(i, _)| i as TaskId).collect();
        for t in wanted {
            self.tasks[t as usize].wanted_by.retain(|&x| x != c);
            self.check.push(t);
        }
        self.settle();
    }

    pub fn release_keys(&mut self, c: ClientId, keys: &[String]) {
        for k in keys {
            if let Some(t) = self.task_id(k) {
                self.tasks[t as usize].wanted_by.retain(|&x| x != c);
                self.check.push(t);
            }
        }
        self.settle();
    }

    /// Add tasks and mark `wanted` keys as wanted by client `c`. The whole
    /// update is rejected (nothing changes) if it refers to unknown keys or
    /// contains a cycle. Keys that already exist keep their existing task.
    pub fn update_graph(&mut self, c: ClientId, defs: Vec<TaskDef>, wanted: &[String]) -> Result<(), String> {
        if !self.clients.contains_key(&c) {
            return Err("unknown client".into());
        }
        // Validate first, change nothing until the update is known good.
        // Every key is looked up once: as a position among `defs` (a new
        // task) or as an existing task.
        let mut new_index: hashbrown::HashMap<&str, usize> = hashbrown::HashMap::with_capacity(defs.len());
        let mut existing: Vec<Option<TaskId>> = Vec::with_capacity(defs.len());
        for (i, d) in defs.iter().enumerate() {
            let e = self.task_id(&d.key);
            if e.is_none() && new_index.insert(d.key.as_str(), i).is_some() {
                return Err(format!("task '{}' is defined twice", d.key));
            }
            existing.push(e);
        }
        let locate = |k: &str| new_index.get(k).map(|&j| Loc::New(j as u32)).or_else(|| self.task_id(k).map(Loc::Old));
        // The dependencies of new tasks, flat: those of defs[i] are
        // dep_locs[dep_start[i]..dep_start[i + 1]] (none for existing keys).
        let mut dep_locs: Vec<Loc> = Vec::new();
        let mut dep_start: Vec<u32> = Vec::with_capacity(defs.len() + 1);
        for (d, e) in defs.iter().zip(&existing) {
            dep_start.push(dep_locs.len() as u32);
            if e.is_some() {
                continue;
            }
            for dep in &d.deps {
                let Some(loc) = locate(dep) else {
                    return Err(format!("task '{}' depends on '{dep}', which is neither in the graph nor known to the scheduler", d.key));
                };
                dep_locs.push(loc);
            }
        }
        dep_start.push(dep_locs.len() as u32);
        let mut wanted_locs = Vec::with_capacity(wanted.len());
        for k in wanted {
            let Some(loc) = locate(k) else {
                return Err(format!("requested key '{k}' is not in the graph"));
            };
            wanted_locs.push(loc);
        }
        if let Some(cycle) = find_cycle(&defs, &dep_start, &dep_locs) {
            return Err(format!("the graph has a cycle: {}", cycle.join(" -> ")));
        }

        let n_new = new_index.len();
        drop(new_index);
        let new_key_bytes: usize = defs.iter().zip(&existing).filter(|(_, e)| e.is_none()).map(|(d, _)| d.key.len()).sum();
        if self.key_bytes.len() + new_key_bytes > u32::MAX as usize {
            return Err("the scheduler has stored 4 GiB of task keys since it started and cannot take more; restart it".into());
        }
        self.generation += 1;
        let generation = self.generation;
        // The task id of every def, new or existing.
        let mut def_id: Vec<TaskId> = Vec::with_capacity(defs.len());
        let mut added = Vec::with_capacity(n_new);
        self.tasks.reserve(n_new);
        {
            let (tasks, bytes) = (&self.tasks, &self.key_bytes);
            self.keys.reserve(n_new, |x| key_at(bytes, tasks[x as usize].key));
        }
        self.key_bytes.reserve(new_key_bytes);
        for (i, (d, e)) in defs.into_iter().zip(existing).enumerate() {
            if let Some(t) = e {
                def_id.push(t);
                continue;
            }
            let id = self.tasks.len() as TaskId;
            def_id.push(id);
            let a = d.annotations;
            let extra = if a.workers.is_empty() && a.resources.is_empty() && a.timeout.is_none() {
                None
            } else {
                Some(Box::new(Extra { workers: a.workers, resources: a.resources, timeout: a.timeout, error: None }))
            };
            let spec = self.intern_spec(d.spec);
            let key = KeyRef { off: self.key_bytes.len() as u32, len: d.key.len() as u32 };
            self.key_bytes.push_str(&d.key);
            self.tasks.push(Task {
                key,
                state: TaskState::Released,
                spec,
                deps: Ids::EMPTY,
                dependents: Ids::EMPTY,
                waiting_on: 0,
                waiters: 0,
                live_dependents: 0,
                who_has: Ids::EMPTY,
                processing_on: 0,
                wanted_by: Ids::EMPTY,
                priority: (priority_rank(a.priority), generation, d.order),
                retries_left: a.retries,
                suspicious: 0,
                started: false,
                nbytes: 0,
                extra,
            });
            let (tasks, bytes) = (&self.tasks, &self.key_bytes);
            self.keys.insert(key_at(bytes, key), id, |x| key_at(bytes, tasks[x as usize].key));
            self.counts[TaskState::Released as usize] += 1;
            added.push((id, i));
        }
        let resolve = |l: Loc| match l {
            Loc::New(j) => def_id[j as usize],
            Loc::Old(t) => t,
        };
        for &(id, i) in &added {
            let dep_ids: Vec<TaskId> = dep_locs[dep_start[i] as usize..dep_start[i + 1] as usize].iter().map(|&l| resolve(l)).collect();
            for &d in &dep_ids {
                let dt = &mut self.tasks[d as usize];
                dt.dependents.push(id);
                dt.live_dependents += 1;
            }
            self.tasks[id as usize].deps = dep_ids.into();
        }
        for (k, loc) in wanted.iter().zip(wanted_locs) {
            let t = resolve(loc);
            let task = &mut self.tasks[t as usize];
            if !task.wanted_by.contains(&c) {
                task.wanted_by.push(c);
            }
            match task.state {
                TaskState::Memory => {
                    let msg = self.key_in_memory_msg(t, None);
                    self.to_client.push((c, msg));
                }
                TaskState::Erred => {
                    let error = task.error().unwrap_or("failed").to_string();
                    self.to_client.push((c, ToClient::KeyErred { key: k.clone(), error }));
                }
                _ => self.ensure_computing(t),
            }
        }
        // New tasks nobody needs are culled right away.
        for (id, _) in added {
            self.check.push(id);
        }
        self.to_client.push((c, ToClient::GraphAccepted { total: wanted.len() as u64 }));
        self.settle();
        self.fill_all();
        Ok(())
    }

    // ---- results from workers ----------------------------------------------

    pub fn task_finished(&mut self, w: WorkerId, t: TaskId, nbytes: u64, duration: f64, now: f64) {
        self.task_finished_with(w, t, nbytes, duration, None, now);
    }

    /// A task finished on `w`; `value` is its result when it came inline
    /// (small, and asked for because a client waits for it): it is passed on
    /// to those clients, not kept.
    pub fn task_finished_with(&mut self, w: WorkerId, t: TaskId, nbytes: u64, duration: f64, value: Option<Payload>, now: f64) {
        self.touch(w, now);
        if !self.workers.contains_key(&w) {
            return;
        }
        let Some(task) = self.tasks.get(t as usize) else {
            self.logs.push(format!("worker {w} reported unknown task id {t}; ignored"));
            return;
        };
        match task.state {
            TaskState::Processing => {}
            TaskState::Memory => {
                // A second copy (e.g. the task was also run elsewhere): keep it.
                if !task.who_has.contains(&w) {
                    self.tasks[t as usize].who_has.push(w);
                    self.workers.get_mut(&w).expect("checked").has_what.insert(t);
                }
                return;
            }
            _ => {
                self.frees.entry(w).or_default().push(t);
                return;
            }
        }
        self.avg_duration = if self.stats.tasks_finished == 0 { duration } else { 0.9 * self.avg_duration + 0.1 * duration };
        self.stats.tasks_finished += 1;
        if let Some(p) = self.tasks[t as usize].take_on() {
            if let Some(pw) = self.workers.get_mut(&p) {
                pw.processing.remove(&t);
            }
        }
        let task = &mut self.tasks[t as usize];
        task.nbytes = nbytes;
        task.who_has.push(w);
        self.workers.get_mut(&w).expect("checked").has_what.insert(t);
        self.set_state(t, TaskState::Memory);
        self.value_arrived(t, value);
        self.check.push(t);
        self.settle();
        self.fill_worker(w);
        // Work stealing after a finish frees threads, at most every
        // BALANCE_INTERVAL: its cost grows with the workers and their queues,
        // and the server also runs it on its periodic tick.
        if now - self.last_balance >= BALANCE_INTERVAL && self.workers.get(&w).is_some_and(|x| x.processing.len() < x.info.nthreads as usize) {
            self.last_balance = now;
            self.balance();
        }
    }

    pub fn task_erred(&mut self, w: WorkerId, t: TaskId, error: String, now: f64) {
        self.touch(w, now);
        let Some(task) = self.tasks.get_mut(t as usize) else { return };
        if task.state != TaskState::Processing || task.on() != Some(w) {
            return;
        }
        task.set_on(None);
        if let Some(pw) = self.workers.get_mut(&w) {
            pw.processing.remove(&t);
        }
        let task = &mut self.tasks[t as usize];
        if task.retries_left > 0 {
            task.retries_left -= 1;
            self.stats.retries += 1;
            self.logs.push(format!("task '{}' failed, retrying ({} retries left): {error}", key_at(&self.key_bytes, task.key), task.retries_left));
            self.back_to_waiting(t);
        } else {
            self.stats.tasks_erred += 1;
            self.mark_erred(t, error);
        }
        self.settle();
        self.fill_worker(w);
    }

    /// Worker `w` could not fetch dependency `dep` of task `t` from the
    /// holders it tried.
    pub fn missing_data(&mut self, w: WorkerId, t: TaskId, dep: TaskId, tried: &[String], now: f64) {
        self.touch(w, now);
        let (Some(task), Some(_)) = (self.tasks.get(t as usize), self.tasks.get(dep as usize)) else { return };
        if task.state != TaskState::Processing || task.on() != Some(w) {
            return;
        }
        let stale: Vec<WorkerId> = self.tasks[dep as usize]
            .who_has
            .iter()
            .copied()
            .filter(|h| self.workers.get(h).is_some_and(|hw| tried.contains(&hw.info.address)))
            .collect();
        for h in stale {
            self.tasks[dep as usize].who_has.retain(|&x| x != h);
            if let Some(hw) = self.workers.get_mut(&h) {
                hw.has_what.remove(&dep);
            }
        }
        self.tasks[t as usize].set_on(None);
        self.workers.get_mut(&w).expect("checked").processing.remove(&t);
        if self.tasks[dep as usize].state == TaskState::Memory && self.tasks[dep as usize].who_has.is_empty() {
            self.logs.push(format!("value of '{}' is gone from every holder; recomputing it", self.key(dep)));
            self.lose_value(dep);
            self.stats.tasks_recomputed += 1;
        }
        self.back_to_waiting(t);
        self.settle();
        self.fill_worker(w);
    }

    // ---- transitions -----------------------------------------------------------

    fn set_state(&mut self, t: TaskId, new: TaskState) {
        let old = self.tasks[t as usize].state;
        if old == new {
            return;
        }
        self.counts[old as usize] -= 1;
        self.counts[new as usize] += 1;
        self.tasks[t as usize].state = new;
        match (old.is_active(), new.is_active()) {
            (false, true) => {
                for i in 0..self.tasks[t as usize].deps.len() {
                    let d = self.tasks[t as usize].deps[i];
                    self.tasks[d as usize].waiters += 1;
                }
            }
            (true, false) => {
                for i in 0..self.tasks[t as usize].deps.len() {
                    let d = self.tasks[t as usize].deps[i];
                    self.tasks[d as usize].waiters -= 1;
                    if self.tasks[d as usize].waiters == 0 {
                        self.check.push(d);
                    }
                }
            }
            _ => {}
        }
    }

    fn is_needed(&self, t: TaskId) -> bool {
        let task = &self.tasks[t as usize];
        !task.wanted_by.is_empty() || task.waiters > 0
    }

    /// Make sure a needed task will (again) have a value: start it and,
    /// recursively, whatever it waits for.
    fn ensure_computing(&mut self, root: TaskId) {
        let mut stack = vec![root];
        while let Some(t) = stack.pop() {
            if self.tasks[t as usize].state == TaskState::Released {
                self.wait_for_dependencies(t, &mut stack);
            }
        }
    }

    /// Put an active task back to waiting for whatever of its dependencies
    /// is not in memory (after a lost worker, a retry or missing data).
    fn back_to_waiting(&mut self, t: TaskId) {
        if self.tasks[t as usize].state == TaskState::Erred {
            return;
        }
        let mut released = Vec::new();
        self.wait_for_dependencies(t, &mut released);
        for d in released {
            self.ensure_computing(d);
        }
    }

    /// Make `t` wait for its dependencies not in memory: released ones are
    /// pushed on `released` for the caller to start; an erred one errs `t`;
    /// none missing makes `t` ready.
    fn wait_for_dependencies(&mut self, t: TaskId, released: &mut Vec<TaskId>) {
        self.set_state(t, TaskState::Waiting);
        let mut missing = 0;
        for i in 0..self.tasks[t as usize].deps.len() {
            let d = self.tasks[t as usize].deps[i];
            match self.tasks[d as usize].state {
                TaskState::Memory => {}
                TaskState::Released => {
                    missing += 1;
                    released.push(d);
                }
                TaskState::Erred => {
                    let dep = &self.tasks[d as usize];
                    let err = dependency_error(key_at(&self.key_bytes, dep.key), dep.error().unwrap_or("failed"));
                    self.tasks[t as usize].waiting_on = 0;
                    self.mark_erred(t, err);
                    return;
                }
                _ => missing += 1,
            }
        }
        self.tasks[t as usize].waiting_on = missing;
        if missing == 0 {
            self.make_ready(t);
        }
    }

    /// A value held nowhere any more: back to released, and dependents that
    /// were counting on it wait again.
    fn lose_value(&mut self, t: TaskId) {
        self.set_state(t, TaskState::Released);
        for i in 0..self.tasks[t as usize].dependents.len() {
            let d = self.tasks[t as usize].dependents[i];
            match self.tasks[d as usize].state {
                TaskState::Waiting => self.tasks[d as usize].waiting_on += 1,
                TaskState::NoWorker => {
                    self.set_state(d, TaskState::Waiting);
                    self.tasks[d as usize].waiting_on = 1;
                }
                _ => {}
            }
        }
    }

    /// A task's value is now in memory: wake dependents, tell clients.
    fn value_arrived(&mut self, t: TaskId, value: Option<Payload>) {
        for i in 0..self.tasks[t as usize].dependents.len() {
            let d = self.tasks[t as usize].dependents[i];
            let dt = &mut self.tasks[d as usize];
            if dt.state == TaskState::Waiting {
                dt.waiting_on -= 1;
                if dt.waiting_on == 0 {
                    self.make_ready(d);
                }
            }
        }
        let n = self.tasks[t as usize].wanted_by.len();
        if n > 0 {
            let mut msg = Some(self.key_in_memory_msg(t, value));
            for i in 0..n {
                let c = self.tasks[t as usize].wanted_by[i];
                let m = if i + 1 == n { msg.take() } else { msg.clone() };
                self.to_client.push((c, m.expect("taken by the last client only")));
            }
        }
    }

    fn key_in_memory_msg(&self, t: TaskId, value: Option<Payload>) -> ToClient {
        let task = &self.tasks[t as usize];
        ToClient::KeyInMemory {
            key: self.key(t).to_string(),
            id: t,
            // With the value inline the client needs no holder.
            holders: if value.is_some() { Vec::new() } else { task.who_has.iter().filter_map(|w| self.workers.get(w)).map(|w| w.info.address.clone()).collect() },
            value,
        }
    }

    fn mark_erred(&mut self, root: TaskId, error: String) {
        let mut stack = vec![(root, error)];
        while let Some((t, err)) = stack.pop() {
            let task = &self.tasks[t as usize];
            if matches!(task.state, TaskState::Erred | TaskState::Memory | TaskState::Forgotten) {
                continue;
            }
            if let Some(p) = task.on() {
                if let Some(pw) = self.workers.get_mut(&p) {
                    pw.processing.remove(&t);
                }
                self.frees.entry(p).or_default().push(t);
            }
            let key = self.key(t).to_string();
            let task = &mut self.tasks[t as usize];
            task.set_on(None);
            task.set_error(Some(err.clone().into_boxed_str()));
            let wanted = task.wanted_by.clone();
            self.set_state(t, TaskState::Erred);
            for c in wanted {
                self.to_client.push((c, ToClient::KeyErred { key: key.clone(), error: err.clone() }));
            }
            let dep_err = dependency_error(&key, &err);
            for i in 0..self.tasks[t as usize].dependents.len() {
                let d = self.tasks[t as usize].dependents[i];
                if self.tasks[d as usize].state.is_active() {
                    stack.push((d, dep_err.clone()));
                }
            }
            self.check.push(t);
        }
    }

    /// All dependencies are in memory: queue it or send it to a worker.
    fn make_ready(&mut self, t: TaskId) {
        let task = &self.tasks[t as usize];
        if task.deps.is_empty() && !task.restricted() {
            self.set_state(t, TaskState::Queued);
            let p = self.tasks[t as usize].priority;
            self.queued.push(p, t);
            return;
        }
        match self.decide_worker(t) {
            Some(w) => self.send_to_worker(t, w),
            None => {
                self.set_state(t, TaskState::NoWorker);
                self.no_worker.push(t);
                let reason = self.why_no_worker(t);
                let key = self.key(t).to_string();
                self.logs.push(format!("task '{key}' cannot run on any connected worker: {reason}; it waits for one that can"));
                for &c in self.clients.keys() {
                    self.to_client.push((c, ToClient::KeyStuck { key: key.clone(), reason: reason.clone() }));
                }
            }
        }
    }

    fn eligible(&self, t: TaskId, w: &Worker) -> bool {
        match &self.tasks[t as usize].extra {
            None => true,
            Some(r) => {
                (r.workers.is_empty() || r.workers.iter().any(|n| *n == w.info.name || *n == w.info.address))
                    && r.resources.iter().all(|(name, amount)| {
                        let have = if name == "cpus" {
                            w.info.nthreads as f64
                        } else {
                            w.info.resources.iter().find(|(n, _)| n == name).map(|(_, a)| *a).unwrap_or(0.0)
                        };
                        have >= *amount
                    })
            }
        }
    }

    /// Why no connected worker can run `t`: its restrictions against what
    /// the workers offer.
    fn why_no_worker(&self, t: TaskId) -> String {
        let task = &self.tasks[t as usize];
        let Some(r) = task.extra.as_ref().filter(|_| task.restricted()) else { return "no worker is connected".into() };
        let mut needs = Vec::new();
        if !r.workers.is_empty() {
            needs.push(format!("one of the workers {}", r.workers.join(", ")));
        }
        if !r.resources.is_empty() {
            needs.push(r.resources.iter().map(|(n, a)| format!("{n}={a}")).collect::<Vec<_>>().join(" "));
        }
        let offers: Vec<String> = self
            .workers
            .values()
            .map(|w| {
                let mut res = vec![format!("cpus={}", w.info.nthreads)];
                res.extend(w.info.resources.iter().map(|(n, a)| format!("{n}={a}")));
                format!("{} ({})", w.info.name, res.join(" "))
            })
            .collect();
        format!(
            "it needs {}; connected workers: {}",
            needs.join(" and "),
            if offers.is_empty() { "none".to_string() } else { offers.join(", ") }
        )
    }

    /// The worker where `t` would start soonest: data it must fetch plus the
    /// work queued there. With many workers, an unrestricted task with
    /// dependencies considers only the holders of its dependencies and a few
    /// others in turn (as Dask does), so placing it costs O(dependencies),
    /// not O(workers).
    fn decide_worker(&mut self, t: TaskId) -> Option<WorkerId> {
        let task = &self.tasks[t as usize];
        if self.workers.len() <= SCAN_ALL_WORKERS || task.deps.is_empty() || task.restricted() {
            return self.best_worker(t, self.workers.keys().copied());
        }
        let mut candidates: Vec<WorkerId> = Vec::with_capacity(task.deps.len() + OTHER_CANDIDATES);
        for &d in task.deps.iter() {
            candidates.extend(self.tasks[d as usize].who_has.iter().copied());
        }
        let start = self.placement_cursor;
        candidates.extend(self.workers.range(start..).chain(self.workers.range(..start)).take(OTHER_CANDIDATES).map(|(&id, _)| id));
        self.placement_cursor = candidates.last().map_or(0, |&w| w + 1);
        candidates.sort_unstable();
        candidates.dedup();
        self.best_worker(t, candidates.into_iter())
    }

    fn best_worker(&self, t: TaskId, candidates: impl Iterator<Item = WorkerId>) -> Option<WorkerId> {
        let task = &self.tasks[t as usize];
        let per_task = self.avg_duration.max(1e-6);
        let mut best: Option<(bool, f64, WorkerId)> = None;
        for id in candidates {
            let Some(w) = self.workers.get(&id) else { continue };
            if !self.eligible(t, w) {
                continue;
            }
            // A paused or retiring worker is chosen only if every eligible one is.
            let paused = !w.accepts_work();
            let missing: u64 = task
                .deps
                .iter()
                .map(|&d| &self.tasks[d as usize])
                .filter(|dt| !dt.who_has.contains(&id))
                .map(|dt| dt.nbytes.max(1))
                .sum();
            let occupancy = w.processing.len() as f64 / w.info.nthreads.max(1) as f64 * per_task;
            let cost = missing as f64 / self.config.bandwidth + occupancy;
            if best.is_none_or(|(p, c, _)| (paused, cost) < (p, c)) {
                best = Some((paused, cost, id));
            }
        }
        best.map(|(_, _, w)| w)
    }

    fn send_to_worker(&mut self, t: TaskId, w: WorkerId) {
        self.set_state(t, TaskState::Processing);
        self.tasks[t as usize].started = false;
        self.tasks[t as usize].set_on(Some(w));
        self.workers.get_mut(&w).expect("chosen worker exists").processing.insert(t);
        let task = &self.tasks[t as usize];
        let deps = task
            .deps
            .iter()
            .map(|&d| {
                let holders = self.tasks[d as usize].who_has.iter().filter_map(|h| self.workers.get(h)).map(|h| h.info.address.clone()).collect();
                (d, holders)
            })
            .collect();
        let dep_nbytes = task.deps.iter().map(|&d| self.tasks[d as usize].nbytes).collect();
        let resources = task.extra.as_ref().map(|r| r.resources.clone()).unwrap_or_default();
        let msg = ComputeTask {
            id: t,
            key: self.key(t).to_string(),
            spec: task.spec.slice.to_vec(),
            deps,
            dep_nbytes,
            priority: task.priority,
            timeout: task.timeout(),
            resources,
            inline_result: !task.wanted_by.is_empty(),
        };
        self.to_worker.push((w, ToWorker::Compute(msg)));
    }

    /// How many tasks a worker may hold (running plus queued on it).
    fn slots(&self, w: &Worker) -> usize {
        let n = w.info.nthreads.max(1) as f64;
        let extra_per_thread = if self.avg_duration <= 0.0 {
            1.0
        } else {
            (self.config.pipeline_seconds / self.avg_duration).clamp(1.0, self.config.max_pipeline_per_thread as f64)
        };
        (n + n * extra_per_thread) as usize
    }

    fn fill_worker(&mut self, w: WorkerId) {
        let Some(worker) = self.workers.get(&w) else { return };
        if !worker.accepts_work() {
            return;
        }
        let slots = self.slots(worker);
        let mut free = slots.saturating_sub(worker.processing.len());
        while free > 0 {
            let Some((_, t)) = self.queued.pop() else { break };
            if self.tasks[t as usize].state != TaskState::Queued {
                continue; // stale heap entry
            }
            self.send_to_worker(t, w);
            free -= 1;
        }
    }

    fn fill_all(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        // Least loaded first, so a burst spreads over the workers.
        let mut order: Vec<(usize, WorkerId)> =
            self.workers.iter().filter(|(_, w)| w.accepts_work()).map(|(&id, w)| (w.processing.len(), id)).collect();
        order.sort_unstable();
        // Hand out in rounds of one thread's worth so workers share the queue.
        loop {
            let before = self.queued.len();
            for &(_, w) in &order {
                let worker = &self.workers[&w];
                let free = self.slots(worker).saturating_sub(worker.processing.len());
                let step = free.min(worker.info.nthreads.max(1) as usize);
                for _ in 0..step {
                    let Some((_, t)) = self.queued.pop() else { break };
                    if self.tasks[t as usize].state == TaskState::Queued {
                        self.send_to_worker(t, w);
                    }
                }
            }
            if self.queued.is_empty() || self.queued.len() == before {
                break;
            }
        }
    }

    /// Release values nobody needs and forget tasks nobody will ever need.
    fn settle(&mut self) {
        while let Some(t) = self.check.pop() {
            let task = &self.tasks[t as usize];
            if task.state == TaskState::Forgotten || !task.wanted_by.is_empty() || task.waiters > 0 {
                continue;
            }
            match task.state {
                TaskState::Memory => {
                    let holders = std::mem::take(&mut self.tasks[t as usize].who_has);
                    for h in holders {
                        if let Some(hw) = self.workers.get_mut(&h) {
                            hw.has_what.remove(&t);
                        }
                        self.frees.entry(h).or_default().push(t);
                    }
                    self.set_state(t, TaskState::Released);
                }
                TaskState::Waiting | TaskState::Queued | TaskState::NoWorker => self.set_state(t, TaskState::Released),
                TaskState::Processing => {
                    if let Some(p) = self.tasks[t as usize].take_on() {
                        if let Some(pw) = self.workers.get_mut(&p) {
                            pw.processing.remove(&t);
                        }
                        self.frees.entry(p).or_default().push(t);
                    }
                    self.set_state(t, TaskState::Released);
                }
                _ => {}
            }
            let task = &self.tasks[t as usize];
            if task.live_dependents == 0 && matches!(task.state, TaskState::Released | TaskState::Erred) {
                self.forget(t);
            }
        }
        if self.retiring_count > 0 {
            self.progress_retirements();
        }
    }

    fn forget(&mut self, t: TaskId) {
        self.set_state(t, TaskState::Forgotten);
        let task = &mut self.tasks[t as usize];
        self.keys.remove(key_at(&self.key_bytes, task.key), t);
        task.spec = self.empty_spec.clone();
        task.extra = None;
        let deps = std::mem::take(&mut task.deps);
        task.dependents = Ids::EMPTY;
        for &d in deps.iter() {
            let dt = &mut self.tasks[d as usize];
            dt.live_dependents -= 1;
            if dt.live_dependents == 0 {
                self.check.push(d);
            }
        }
    }

    // ---- invariants -------------------------------------------------------------

    /// Check every structural invariant; returns a description of the first
    /// violation. O(size of the state): for tests and debug builds.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut counts = [0u64; 8];
        for (i, task) in self.tasks.iter().enumerate() {
            let t = i as TaskId;
            counts[task.state as usize] += 1;
            let k = key_at(&self.key_bytes, task.key);
            if task.state == TaskState::Forgotten {
                if self.task_id(k) == Some(t) {
                    return Err(format!("forgotten task '{k}' still in the key map"));
                }
                continue;
            }
            if self.task_id(k) != Some(t) {
                return Err(format!("task '{k}' missing from the key map"));
            }
            let waiters = task.dependents.iter().filter(|&&d| self.tasks[d as usize].state.is_active()).count() as u32;
            if waiters != task.waiters {
                return Err(format!("task '{k}': waiters {} but {waiters} active dependents", task.waiters));
            }
            let live = task.dependents.iter().filter(|&&d| self.tasks[d as usize].state != TaskState::Forgotten).count() as u32;
            if live != task.live_dependents {
                return Err(format!("task '{k}': live_dependents {} but {live}", task.live_dependents));
            }
            for &d in &task.deps {
                if self.tasks[d as usize].state == TaskState::Forgotten {
                    return Err(format!("task '{k}' depends on forgotten '{}'", self.key(d)));
                }
                if !self.tasks[d as usize].dependents.contains(&t) {
                    return Err(format!("task '{k}' not among its dependency's dependents"));
                }
            }
            if (task.state == TaskState::Memory) == task.who_has.is_empty() {
                return Err(format!("task '{k}' in state {} with {} holders", task.state.name(), task.who_has.len()));
            }
            for h in &task.who_has {
                match self.workers.get(h) {
                    Some(w) if w.has_what.contains(&t) => {}
                    _ => return Err(format!("task '{k}' held by worker {h}, which does not know it")),
                }
            }
            if (task.state == TaskState::Processing) != task.on().is_some() {
                return Err(format!("task '{k}' in state {} with processing_on {:?}", task.state.name(), task.on()));
            }
            if let Some(p) = task.on() {
                match self.workers.get(&p) {
                    Some(w) if w.processing.contains(&t) => {}
                    _ => return Err(format!("task '{k}' processing on worker {p}, which does not know it")),
                }
            }
            let not_in_memory = task.deps.iter().filter(|&&d| self.tasks[d as usize].state != TaskState::Memory).count() as u32;
            match task.state {
                TaskState::Waiting => {
                    if task.waiting_on != not_in_memory || not_in_memory == 0 {
                        return Err(format!("waiting task '{k}': waiting_on {} but {not_in_memory} deps not in memory", task.waiting_on));
                    }
                    for &d in &task.deps {
                        let ds = self.tasks[d as usize].state;
                        if !(ds == TaskState::Memory || ds.is_active()) {
                            return Err(format!("waiting task '{k}' waits on '{}' which is {}", self.key(d), ds.name()));
                        }
                    }
                }
                TaskState::Queued | TaskState::NoWorker if not_in_memory != 0 => {
                    return Err(format!("ready task '{k}' has {not_in_memory} deps not in memory"));
                }
                TaskState::Released | TaskState::Memory | TaskState::Erred if task.wanted_by.is_empty() && task.waiters == 0 && task.live_dependents == 0 => {
                    return Err(format!("task '{k}' ({}) is needed by nothing but not forgotten", task.state.name()));
                }
                TaskState::Memory if task.wanted_by.is_empty() && task.waiters == 0 => {
                    return Err(format!("task '{k}' held in memory though nothing needs it"));
                }
                TaskState::Released if !task.wanted_by.is_empty() => return Err(format!("wanted task '{k}' is released")),
                TaskState::Erred if task.error().is_none() => return Err(format!("erred task '{k}' has no error")),
                _ => {}
            }
            for c in &task.wanted_by {
                if !self.clients.contains_key(c) {
                    return Err(format!("task '{k}' wanted by gone client {c}"));
                }
            }
        }
        let live = self.tasks.len() as u64 - counts[TaskState::Forgotten as usize];
        if self.keys.len() as u64 != live {
            return Err(format!("{} keys indexed for {live} tasks not forgotten", self.keys.len()));
        }
        if counts != self.counts {
            return Err(format!("state counts {:?} but recount {:?}", self.counts, counts));
        }
        let queued_live = self.queued.ids().filter(|&t| self.tasks[t as usize].state == TaskState::Queued).count() as u64;
        if queued_live != self.count(TaskState::Queued) {
            return Err(format!("{queued_live} live heap entries but {} queued tasks", self.count(TaskState::Queued)));
        }
        let retiring = self.workers.values().filter(|w| w.retiring && !w.retired).count();
        if retiring != self.retiring_count {
            return Err(format!("retiring_count {} but {retiring} workers retiring", self.retiring_count));
        }
        for (id, w) in &self.workers {
            for &t in &w.processing {
                if self.tasks[t as usize].on() != Some(*id) {
                    return Err(format!("worker {id} thinks it processes '{}'", self.key(t)));
                }
            }
            for &t in &w.has_what {
                if !self.tasks[t as usize].who_has.contains(id) {
                    return Err(format!("worker {id} thinks it holds '{}'", self.key(t)));
                }
            }
        }
        Ok(())
    }
}

fn dependency_error(key: &str, err: &str) -> String {
    if err.starts_with("dependency '") {
        err.to_string()
    } else {
        format!("dependency '{key}' failed: {err}")
    }
}

/// A cycle among the new tasks of an update (existing tasks cannot depend
/// on new ones, so cycles can only be among the new ones).
/// Where a key of an update is: a new task (position among the update's
/// definitions) or a task the scheduler already has.
#[derive(Clone, Copy)]
enum Loc {
    New(u32),
    Old(TaskId),
}

/// A cycle among the new tasks of an update (existing tasks cannot depend
/// on new ones), as keys; the dependencies of `defs[i]` are
/// `dep_locs[dep_start[i]..dep_start[i + 1]]`.
/// A task's encoded expression, reference counted, one word.
type Spec = triomphe::ThinArc<(), u8>;

fn key_at(bytes: &str, k: KeyRef) -> &str {
    &bytes[k.off as usize..(k.off + k.len) as usize]
}

fn find_cycle(defs: &[TaskDef], dep_start: &[u32], dep_locs: &[Loc]) -> Option<Vec<String>> {
    let deps_of = |i: usize| &dep_locs[dep_start[i] as usize..dep_start[i + 1] as usize];
    let mut colour = vec![0u8; defs.len()];
    for root in 0..defs.len() {
        if colour[root] != 0 || deps_of(root).is_empty() {
            continue;
        }
        colour[root] = 1;
        let mut stack = vec![(root, 0usize)];
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let deps = deps_of(node);
            if *next < deps.len() {
                let dep = deps[*next];
                *next += 1;
                let Loc::New(d) = dep else { continue };
                let d = d as usize;
                match colour[d] {
                    0 => {
                        colour[d] = 1;
                        stack.push((d, 0));
                    }
                    1 => {
                        let start = stack.iter().position(|&(x, _)| x == d).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[start..].iter().map(|&(x, _)| defs[x].key.clone()).collect();
                        cycle.push(defs[d].key.clone());
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                colour[node] = 2;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
