//! The worker's decisions as a pure state machine, as the scheduler's are:
//! the scheduler's messages in through [`WorkerState::message`], everything
//! else ([`Input`]: tasks done, values fetched, fetches failed, ticks of the
//! clock) through [`WorkerState::handle`]; out come messages for the
//! scheduler ([`WorkerState::take_messages_into`]) and [`Instruction`]s
//! (fetch from a peer, execute, drop a value, forget a peer, exit). No
//! sockets, threads or clocks it is not handed; what the store holds is
//! asked through [`Held`]. The IO around it is `worker::run`.
//!
//! Invariants ([`WorkerState::check_invariants`], checked after every input
//! in the tests):
//! * `executing` is the number of tasks marked running; a running task has
//!   handed its expression to an executor, a waiting one still has it;
//! * a task waiting for `n` dependencies appears `n` times in the waiting
//!   lists of the fetches under way, and every task on such a list exists
//!   and waits;
//! * every task with nothing missing that is not running is in the ready heap;
//! * the fetches in flight are counted exactly (number and bytes) and stay
//!   within [`MAX_FETCHES_IN_FLIGHT`] and [`MAX_FETCH_BYTES_IN_FLIGHT`] (one
//!   larger value may go alone); a fetch is queued exactly when it is in the
//!   fetch queue, and never while in flight;
//! * the resources in use are the sum of the running tasks' resources.

use super::WorkerExit;
use crate::graph::Expr;
use crate::protocol::{ComputeTask, TaskId, ToScheduler, ToWorker};
use std::cmp::Reverse;
use crate::idmap::IdMap;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// At most this many values are being fetched from peers at once...
pub const MAX_FETCHES_IN_FLIGHT: usize = 64;
/// ...and at most this many bytes (one larger value may always go alone).
pub const MAX_FETCH_BYTES_IN_FLIGHT: u64 = 512 << 20;
/// Tasks shorter than this on average (microseconds) get one more queued
/// behind each running one, so the thread starts it without waiting for a
/// round trip through the worker's loop.
const QUEUE_AHEAD_BELOW_US: f64 = 20_000.0;
/// How long a retiring worker waits for the scheduler before leaving anyway.
pub const RETIRE_TIMEOUT: Duration = Duration::from_secs(120);

/// The scheduler's order for a task (lower first), as it sends it.
type Priority = (u32, u32, u32);

/// What the worker's store holds, as far as decisions need to know.
pub trait Held {
    fn contains(&self, id: TaskId) -> bool;
    /// Held in memory (not spilled, not absent).
    fn in_memory(&self, id: TaskId) -> bool;
    /// Size of a held value.
    fn nbytes(&self, id: TaskId) -> Option<u64>;
}

/// What happens to the worker.
#[derive(Debug)]
pub enum Input {
    /// A task ran and its value is now in the store.
    Finished {
        id: TaskId,
        nbytes: u64,
        inline: Option<(u8, Vec<u8>)>,
        duration: Duration,
        /// Start (Unix time, microseconds) and executor thread, passed on
        /// for the task stream.
        start_us: u64,
        thread: u32,
    },
    Erred {
        id: TaskId,
        error: String,
        duration: Duration,
        start_us: u64,
        thread: u32,
    },
    /// A fetched value is now in the store.
    Fetched {
        dep: TaskId,
        nbytes: u64,
        transfer: Option<crate::protocol::Transfer>,
    },
    /// These fetches from peer `from` got no value.
    FetchFailed {
        deps: Vec<TaskId>,
        from: String,
    },
    /// An [`Execute`]'s dependency `dep` could not be loaded (freed meanwhile,
    /// or its spill file is unreadable).
    ArgsMissing {
        id: TaskId,
        dep: TaskId,
    },
    /// Asked to leave gracefully (a signal; the scheduler moves the data).
    RetireRequested,
    /// The memory policy paused or resumed the worker.
    Paused(bool),
    /// Time passed: start ready tasks, check the lifetime and the retirement.
    Tick,
}

/// What the worker's IO is to do.
#[derive(Debug, PartialEq)]
pub enum Instruction {
    /// Ask the peer at `peer` for the value of `dep` (answered by
    /// `Fetched` or `FetchFailed`).
    Fetch {
        peer: String,
        dep: TaskId,
    },
    /// Load the dependencies' values ([`WorkerState::inputs`]) and run the
    /// task (answered by `Finished`, `Erred` or `ArgsMissing`).
    Execute(Execute),
    /// Remove a value from the store.
    DropValue(TaskId),
    /// Close the connection to this peer (it failed).
    ForgetPeer(String),
    /// Stop this running task (nobody wants it any more): its process is
    /// killed; its result, if it still comes, is dropped.
    Cancel(TaskId),
    Exit(WorkerExit),
}

#[derive(Debug, PartialEq)]
pub struct Execute {
    pub id: TaskId,
    pub key: String,
    pub expr: Expr,
    pub timeout: Option<f64>,
    /// Store the value in the result cache here (`--cache`).
    pub cache: Option<std::path::PathBuf>,
}

struct LocalTask {
    /// As received, but for `spec` (decoded into `expr`) and for the
    /// dependencies that pass no data (dropped: nothing to fetch or load).
    compute: ComputeTask,
    /// Taken when the task starts.
    expr: Option<Expr>,
    /// Where to store its value in the result cache, if anywhere.
    cache: Option<std::path::PathBuf>,
    missing: u32,
    running: bool,
}

struct Fetching {
    /// Holders not tried yet.
    candidates: Vec<String>,
    tried: Vec<String>,
    waiting: Vec<TaskId>,
    /// The scheduler asked for a copy (retirement of the holder).
    replicate: bool,
    /// Size as the scheduler knows it (0 if unknown).
    nbytes: u64,
    /// A request is out to a peer.
    in_flight: bool,
    /// Waiting in the fetch queue.
    queued: bool,
}

impl Fetching {
    fn new(candidates: Vec<String>, waiting: Vec<TaskId>, replicate: bool, nbytes: u64) -> Fetching {
        Fetching { candidates, tried: Vec::new(), waiting, replicate, nbytes, in_flight: false, queued: false }
    }
}

/// The worker's fixed shape: what decisions depend on.
#[derive(Clone, Debug)]
pub struct Shape {
    pub nthreads: u32,
    /// Resources it offers besides `cpus` (which counts threads).
    pub resources: Vec<(String, f64)>,
    /// Retire gracefully at this time (`--lifetime`).
    pub retire_at: Option<Instant>,
}

pub struct WorkerState {
    shape: Shape,
    tasks: IdMap<LocalTask>,
    ready: BinaryHeap<Reverse<(Priority, TaskId)>>,
    executing: u32,
    fetching: IdMap<Fetching>,
    /// Fetches waiting for room under the transfer limits.
    fetch_queue: VecDeque<TaskId>,
    fetches_in_flight: usize,
    fetch_bytes_in_flight: u64,
    /// Resources held by dispatched tasks.
    resources_in_use: HashMap<String, f64>,
    /// Moving average of task run time, microseconds.
    mean_task_us: f64,
    /// Over the pause threshold of the memory limit: start nothing new.
    paused: bool,
    /// Asked to retire: leave by then even if the scheduler does not answer.
    retire_deadline: Option<Instant>,
    out: Vec<Instruction>,
    /// Messages for the scheduler, in order.
    sent: Vec<ToScheduler>,
}

impl WorkerState {
    /// When the worker retires by its lifetime, if it has one.
    pub fn retire_at(&self) -> Option<Instant> {
        self.shape.retire_at
    }

    pub fn new(shape: Shape) -> WorkerState {
        WorkerState {
            shape,
            tasks: IdMap::default(),
            ready: BinaryHeap::new(),
            executing: 0,
            fetching: IdMap::default(),
            fetch_queue: VecDeque::new(),
            fetches_in_flight: 0,
            fetch_bytes_in_flight: 0,
            resources_in_use: HashMap::new(),
            mean_task_us: 0.0,
            paused: false,
            retire_deadline: None,
            out: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// The one entry point: apply `input` at time `now`; the instructions
    /// it produced are taken with [`WorkerState::take_instructions`].
    pub fn handle(&mut self, input: Input, now: Instant, held: &dyn Held) {
        match input {
            Input::Finished {
                id,
                nbytes,
                inline,
                duration,
                start_us,
                thread,
            } => {
                if self.finish(id, duration).is_some() {
                    self.send(ToScheduler::TaskFinished {
                        id,
                        nbytes,
                        duration_us: duration.as_micros() as u64,
                        start_us,
                        thread,
                        value: inline,
                    });
                }
            }
            Input::Erred {
                id,
                error,
                duration,
                start_us,
                thread,
            } => {
                if self.finish(id, duration).is_some() {
                    self.send(ToScheduler::TaskErred {
                        id,
                        error,
                        duration_us: duration.as_micros() as u64,
                        start_us,
                        thread,
                    });
                }
            }
            Input::Fetched { dep, nbytes, transfer } => self.fetched(dep, nbytes, transfer),
            Input::FetchFailed { deps, from } => {
                self.out.push(Instruction::ForgetPeer(from));
                for dep in deps {
                    self.retry_fetch(dep);
                }
            }
            Input::ArgsMissing { id, dep } => {
                if let Some(task) = self.tasks.remove(&id) {
                    if task.running {
                        self.executing -= 1;
                        self.release_resources(&task.compute.resources);
                    }
                    self.send(ToScheduler::MissingData {
                        id,
                        dep,
                        tried: Vec::new(),
                    });
                    // Its thread is free again now, not at the next tick.
                    self.dispatch(held);
                }
            }
            Input::RetireRequested => {
                if self.retire_deadline.is_none() {
                    self.retire_deadline = Some(now + RETIRE_TIMEOUT);
                    self.send(ToScheduler::RetireMe);
                }
            }
            Input::Paused(p) => self.paused = p,
            Input::Tick => {
                self.dispatch(held);
                if self.shape.retire_at.is_some_and(|t| now >= t) {
                    self.shape.retire_at = None;
                    self.handle(Input::RetireRequested, now, held);
                }
                if self.retire_deadline.is_some_and(|d| now >= d) {
                    self.out
                        .push(Instruction::Exit(WorkerExit::SchedulerLost(format!(
                            "the scheduler did not complete the retirement within {} s",
                            RETIRE_TIMEOUT.as_secs()
                        ))));
                }
            }
        }
    }

    #[cfg(test)]
    pub fn take_instructions(&mut self) -> std::vec::Drain<'_, Instruction> {
        self.out.drain(..)
    }

    /// Move the messages for the scheduler produced so far to the end of
    /// `buf` (which keeps its allocation from one input to the next).
    pub fn take_messages_into(&mut self, buf: &mut Vec<ToScheduler>) {
        buf.append(&mut self.sent);
    }

    /// A message from the scheduler (the other entry point, beside [`handle`](Self::handle)).
    pub fn message(&mut self, m: ToWorker, held: &dyn Held) {
        self.scheduler_message(m, held);
    }

    pub fn take_instructions_into(&mut self, buf: &mut Vec<Instruction>) {
        buf.append(&mut self.out);
    }

    /// Whether the task is running here, and if so whether a client waits
    /// for its (small) result to come back with `TaskFinished`.
    pub fn wants_inline(&self, id: TaskId) -> Option<bool> {
        self.tasks
            .get(&id)
            .filter(|t| t.running)
            .map(|t| t.compute.inline_result)
    }

    /// The values task `id`'s expression references, in order ([`Input::ArgsMissing`]
    /// answers an `Execute` whose inputs cannot all be loaded).
    pub fn inputs(&self, id: TaskId) -> impl ExactSizeIterator<Item = &TaskId> + '_ {
        let deps: &[(TaskId, Vec<String>)] = self.tasks.get(&id).map(|t| &t.compute.deps[..]).unwrap_or(&[]);
        deps.iter().map(|(d, _)| d)
    }

    pub fn executing(&self) -> u32 {
        self.executing
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Retiring (a signal, `--lifetime` or the scheduler's request).
    pub fn retiring(&self) -> bool {
        self.retire_deadline.is_some()
    }

    /// The `--lifetime` runs out at this tick (the next `Tick` retires).
    pub fn lifetime_reached(&self, now: Instant) -> bool {
        self.shape.retire_at.is_some_and(|t| now >= t)
    }

    fn send(&mut self, m: ToScheduler) {
        self.sent.push(m);
    }

    fn scheduler_message(&mut self, m: ToWorker, held: &dyn Held) {
        match m {
            // the IO layer hands plugins to the Python executors
            ToWorker::Welcome { .. } | ToWorker::PythonPlugin { .. } | ToWorker::Ping | ToWorker::SchedulerRun { .. } | ToWorker::Renumber { .. } => {}
            ToWorker::Compute(ct) => self.compute(ct, held),
            ToWorker::Free { ids } => self.free(&ids),
            ToWorker::Replicate { id, holders } => self.replicate(id, holders, held),
            ToWorker::Steal { ids } => {
                // Give up what has not started; the ready heap skips ids no
                // longer in the table.
                let (stolen, kept): (Vec<TaskId>, Vec<TaskId>) = ids
                    .into_iter()
                    .partition(|id| self.tasks.get(id).is_some_and(|t| !t.running));
                for id in &stolen {
                    self.forget_task(*id);
                }
                self.send(ToScheduler::Stolen { ids: stolen, kept });
            }
            ToWorker::Shutdown { reason } => self
                .out
                .push(Instruction::Exit(WorkerExit::Shutdown(reason))),
        }
    }

    /// A running task ended: free its thread and resources.
    fn finish(&mut self, id: TaskId, duration: Duration) -> Option<LocalTask> {
        let task = self.tasks.remove(&id)?;
        if !task.running {
            // Not ours to finish (cannot happen with a real executor): keep it.
            self.tasks.insert(id, task);
            return None;
        }
        self.executing -= 1;
        self.release_resources(&task.compute.resources);
        let duration_us = duration.as_micros() as u64;
        self.mean_task_us = if self.mean_task_us == 0.0 {
            duration_us as f64 + 0.5
        } else {
            0.95 * self.mean_task_us + 0.05 * duration_us as f64
        };
        Some(task)
    }

    fn release_resources(&mut self, resources: &[(String, f64)]) {
        for (name, amount) in resources {
            if let Some(u) = self.resources_in_use.get_mut(name) {
                *u = (*u - amount).max(0.0);
            }
        }
    }

    fn fetched(&mut self, dep: TaskId, nbytes: u64, transfer: Option<crate::protocol::Transfer>) {
        // Every copy is reported: the scheduler counts it as a holder (for
        // placement and for surviving the loss of the first holder) and
        // frees it with the value.
        self.send(ToScheduler::Replicated { id: dep, nbytes, transfer });
        if let Some(f) = self.fetching.remove(&dep) {
            if f.in_flight {
                self.fetches_in_flight -= 1;
                self.fetch_bytes_in_flight -= f.nbytes;
            }
            for t in f.waiting {
                if let Some(task) = self.tasks.get_mut(&t) {
                    task.missing -= 1;
                    if task.missing == 0 {
                        self.ready.push(Reverse((task.compute.priority, t)));
                    }
                }
            }
        }
        self.pump_fetches();
    }

    fn compute(&mut self, mut ct: ComputeTask, held: &dyn Held) {
        let id = ct.id;
        if self.tasks.contains_key(&id) {
            return;
        }
        let mut expr: Expr = match bincode::deserialize(&std::mem::take(&mut ct.spec)) {
            Ok(e) => e,
            Err(e) => {
                self.send(ToScheduler::TaskErred {
                    id,
                    error: format!("undecodable task spec: {e}"),
                    duration_us: 0,
                    start_us: crate::util::unix_micros(),
                    thread: 0,
                });
                return;
            }
        };
        let (inner, cache) = crate::cache::unwrap_store(expr);
        expr = inner;
        super::deps::drop_dataless_deps(&mut ct, &mut expr);
        let mut missing = 0;
        for (i, (dep, holders)) in ct.deps.iter().enumerate() {
            if held.contains(*dep) {
                continue;
            }
            missing += 1;
            match self.fetching.get_mut(dep) {
                Some(f) => {
                    f.waiting.push(id);
                    for h in holders {
                        if !f.candidates.contains(h) && !f.tried.contains(h) {
                            f.candidates.push(h.clone());
                        }
                    }
                }
                None => {
                    let nbytes = ct.dep_nbytes.get(i).copied().unwrap_or(0);
                    self.fetching.insert(
                        *dep,
                        Fetching::new(holders.clone(), vec![id], false, nbytes),
                    );
                }
            }
        }
        let priority = ct.priority;
        let deps: Vec<TaskId> = ct.deps.iter().map(|(d, _)| *d).collect();
        self.tasks.insert(
            id,
            LocalTask {
                compute: ct,
                expr: Some(expr),
                cache,
                missing,
                running: false,
            },
        );
        if missing == 0 {
            self.ready.push(Reverse((priority, id)));
        } else {
            for d in deps {
                if self
                    .fetching
                    .get(&d)
                    .is_some_and(|f| f.tried.is_empty() && !f.queued && !f.in_flight)
                {
                    self.retry_fetch(d);
                }
            }
        }
    }

    /// Ask the next untried holder for `dep`; if none is left, tell the
    /// scheduler and drop the tasks that needed it (it will reschedule them).
    fn retry_fetch(&mut self, dep: TaskId) {
        let Some(f) = self.fetching.get_mut(&dep) else {
            return;
        };
        if f.in_flight {
            f.in_flight = false;
            self.fetches_in_flight -= 1;
            self.fetch_bytes_in_flight -= f.nbytes;
        }
        if f.candidates.is_empty() {
            if f.queued {
                // Still in the queue: the queue reports it when its turn comes.
                return;
            }
            let f = self.fetching.remove(&dep).expect("present");
            if f.replicate {
                self.send(ToScheduler::ReplicateFailed { id: dep });
            }
            for t in f.waiting {
                if let Some(task) = self.forget_task(t) {
                    self.send(ToScheduler::MissingData {
                        id: task.compute.id,
                        dep,
                        tried: f.tried.clone(),
                    });
                }
            }
            self.pump_fetches();
            return;
        }
        if !f.queued {
            f.queued = true;
            self.fetch_queue.push_back(dep);
        }
        self.pump_fetches();
    }

    /// Start queued fetches while the limits on values and bytes in flight allow.
    fn pump_fetches(&mut self) {
        while let Some(&dep) = self.fetch_queue.front() {
            let Some(f) = self.fetching.get_mut(&dep) else {
                self.fetch_queue.pop_front();
                continue;
            };
            let busy = self.fetches_in_flight > 0
                && (self.fetches_in_flight >= MAX_FETCHES_IN_FLIGHT
                    || self.fetch_bytes_in_flight + f.nbytes > MAX_FETCH_BYTES_IN_FLIGHT);
            if busy {
                return;
            }
            self.fetch_queue.pop_front();
            f.queued = false;
            if f.candidates.is_empty() {
                // Nobody left to ask and nothing under way: report it (the
                // scheduler recomputes or reschedules) instead of leaving
                // the tasks that need it waiting for ever.
                self.retry_fetch(dep);
                continue;
            }
            let next = f.candidates.remove(0);
            f.tried.push(next.clone());
            f.in_flight = true;
            self.fetches_in_flight += 1;
            self.fetch_bytes_in_flight += f.nbytes;
            self.out.push(Instruction::Fetch { peer: next, dep });
        }
    }

    /// Drop a task that has not started, and take it off the waiting lists
    /// of the fetches it needs: a later incarnation of the same task (sent
    /// again by the scheduler) must not be woken or dropped by them.
    fn forget_task(&mut self, id: TaskId) -> Option<LocalTask> {
        let task = self.tasks.remove(&id)?;
        if task.missing > 0 {
            for (d, _) in &task.compute.deps {
                if let Some(f) = self.fetching.get_mut(d) {
                    f.waiting.retain(|t| *t != id);
                }
            }
        }
        Some(task)
    }

    /// Keep a copy of `id`, fetched from one of `holders`.
    fn replicate(&mut self, id: TaskId, holders: Vec<String>, held: &dyn Held) {
        if held.contains(id) {
            let nbytes = held.nbytes(id).unwrap_or(0);
            self.send(ToScheduler::Replicated { id, nbytes, transfer: None });
            return;
        }
        match self.fetching.get_mut(&id) {
            Some(f) => f.replicate = true,
            None => {
                self.fetching
                    .insert(id, Fetching::new(holders, Vec::new(), true, 0));
                self.retry_fetch(id);
            }
        }
    }

    fn free(&mut self, ids: &[TaskId]) {
        for id in ids {
            self.out.push(Instruction::DropValue(*id));
            match self.tasks.get(id) {
                Some(t) if t.running => self.out.push(Instruction::Cancel(*id)),
                Some(_) => {
                    self.forget_task(*id);
                }
                None => {}
            }
        }
    }

    /// How many tasks may sit in the executors' queue at once: one per
    /// thread for long tasks (so priorities and the scheduler's placement
    /// keep control), a deeper window when tasks are short so threads never
    /// wait for this loop between tasks: one more per thread below
    /// [`QUEUE_AHEAD_BELOW_US`], many more below a millisecond.
    fn window(&self) -> u32 {
        let n = self.shape.nthreads.max(1);
        match self.mean_task_us {
            m if m > 0.0 && m < 1000.0 => n * 64,
            m if m > 0.0 && m < QUEUE_AHEAD_BELOW_US => n * 2,
            _ => n,
        }
    }

    /// Whether `needs` fits in what is free now (`cpus` against threads).
    fn fits(&self, needs: &[(String, f64)]) -> bool {
        needs.iter().all(|(name, amount)| {
            let total = if name == "cpus" {
                self.shape.nthreads as f64
            } else {
                self.shape
                    .resources
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, a)| *a)
                    .unwrap_or(0.0)
            };
            let used = self.resources_in_use.get(name).copied().unwrap_or(0.0);
            // A task asking for more than the worker has runs alone.
            used + amount <= total + 1e-9 || used == 0.0
        })
    }

    /// Hand ready tasks to the executors, highest priority first; tasks
    /// that declare resources start only when those are free.
    fn dispatch(&mut self, held: &dyn Held) {
        let window = if self.paused { 0 } else { self.window() };
        let mut waiting_for_resources = Vec::new();
        while self.executing < window {
            let Some(Reverse((prio, id))) = self.ready.pop() else {
                break;
            };
            let Some(task) = self.tasks.get(&id) else {
                continue;
            };
            if task.running || task.missing > 0 {
                continue;
            }
            // Beyond one job per thread, a job is queued ahead only if its
            // inputs are in memory: reading spilled values back for tasks
            // that would wait anyway fills the memory that spilling freed.
            if self.executing >= self.shape.nthreads.max(1)
                && !task.compute.deps.iter().all(|(d, _)| held.in_memory(*d))
            {
                self.ready.push(Reverse((prio, id)));
                break;
            }
            if !task.compute.resources.is_empty() {
                let needs = task.compute.resources.clone();
                if !self.fits(&needs) {
                    waiting_for_resources.push(Reverse((prio, id)));
                    continue;
                }
                for (name, amount) in &needs {
                    *self.resources_in_use.entry(name.clone()).or_insert(0.0) += amount;
                }
            }
            let task = self.tasks.get_mut(&id).expect("looked up above");
            let Some(expr) = task.expr.take() else {
                continue;
            };
            task.running = true;
            self.executing += 1;
            let exec = Execute { id, key: task.compute.key.clone(), expr, timeout: task.compute.timeout, cache: task.cache.take() };
            self.out.push(Instruction::Execute(exec));
        }
        self.ready.extend(waiting_for_resources);
    }

    /// Check every invariant in the module documentation; `Err` names the
    /// first one broken. O(size of the state): for tests.
    #[cfg(test)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let running = self.tasks.values().filter(|t| t.running).count() as u32;
        if running != self.executing {
            return Err(format!(
                "executing is {} but {running} tasks are running",
                self.executing
            ));
        }
        let mut on_lists: HashMap<TaskId, u32> = HashMap::new();
        for (dep, f) in &self.fetching {
            for t in &f.waiting {
                *on_lists.entry(*t).or_default() += 1;
                match self.tasks.get(t) {
                    Some(task) if task.missing > 0 && !task.running => {}
                    _ => {
                        return Err(format!(
                            "task {t} waits for the fetch of {dep} but is not a waiting task"
                        ))
                    }
                }
            }
            if f.in_flight && f.queued {
                return Err(format!("fetch of {dep} is both in flight and queued"));
            }
            if f.queued && !self.fetch_queue.contains(dep) {
                return Err(format!(
                    "fetch of {dep} is marked queued but is not in the queue"
                ));
            }
        }
        let in_ready: std::collections::HashSet<TaskId> =
            self.ready.iter().map(|Reverse((_, id))| *id).collect();
        for (id, t) in &self.tasks {
            if t.running == t.expr.is_some() {
                return Err(format!(
                    "task {id}: running {} but expression {}",
                    t.running,
                    if t.expr.is_some() { "kept" } else { "taken" }
                ));
            }
            let listed = on_lists.get(id).copied().unwrap_or(0);
            if listed != t.missing {
                return Err(format!(
                    "task {id} misses {} values but waits on {listed} fetches",
                    t.missing
                ));
            }
            if t.missing == 0 && !t.running && !in_ready.contains(id) {
                return Err(format!("task {id} is ready but not in the ready heap"));
            }
        }
        let (n, bytes) = self
            .fetching
            .values()
            .filter(|f| f.in_flight)
            .fold((0, 0), |(n, b), f| (n + 1, b + f.nbytes));
        if n != self.fetches_in_flight || bytes != self.fetch_bytes_in_flight {
            return Err(format!(
                "{n} fetches ({bytes} B) in flight, counted {} ({} B)",
                self.fetches_in_flight, self.fetch_bytes_in_flight
            ));
        }
        if n > MAX_FETCHES_IN_FLIGHT || (bytes > MAX_FETCH_BYTES_IN_FLIGHT && n > 1) {
            return Err(format!(
                "{n} fetches ({bytes} B) in flight exceed the limits"
            ));
        }
        let mut used: HashMap<&str, f64> = HashMap::new();
        for t in self.tasks.values().filter(|t| t.running) {
            for (name, amount) in &t.compute.resources {
                *used.entry(name).or_default() += amount;
            }
        }
        for (name, amount) in &self.resources_in_use {
            let want = used.get(name.as_str()).copied().unwrap_or(0.0);
            if (amount - want).abs() > 1e-6 {
                return Err(format!(
                    "resource {name}: {amount} in use, running tasks hold {want}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
