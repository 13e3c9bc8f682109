//! The worker: runs tasks on a pool of threads, keeps their results, serves
//! them to other workers and clients from its own data server, and fetches
//! the dependencies it lacks directly from the workers that hold them.
//!
//! One thread (the caller of [`run`]) owns the worker's task table; the
//! scheduler connection's reader, the executor threads and the peer fetchers
//! talk to it over one channel.

use crate::functions::{evaluate, Registry, TaskContext};
use crate::graph::Expr;
use crate::log_at;
use crate::protocol::{
    server_handshake, ComputeTask, FrameReader, FrameWriter, PeerReply, PeerRequest, Role, TaskId, ToScheduler, ToWorker, WorkerMetrics,
};
use crate::util;
use crate::value::Data;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use crate::store::{Store, Value};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct WorkerConfig {
    pub name: String,
    pub nthreads: u32,
    /// Parent of this worker's own scratch directory.
    pub local_directory: PathBuf,
    /// Address the data server listens on; default: the local address of
    /// the connection to the scheduler (the interface that reaches it).
    pub listen_ip: Option<IpAddr>,
    /// Address to advertise for the data server, if it differs.
    pub contact_ip: Option<IpAddr>,
    pub resources: Vec<(String, f64)>,
    pub secret: Vec<u8>,
    pub heartbeat: Duration,
    pub registry: Registry,
    pub memory: MemoryPolicy,
    /// Each message asks the worker to retire gracefully (e.g. on SIGTERM):
    /// the scheduler copies its unique values elsewhere and tells it to go.
    pub retire_requests: Option<Receiver<()>>,
    /// Retire gracefully this long after starting (e.g. before a batch
    /// job's walltime ends); `None`: no limit.
    pub lifetime: Option<Duration>,
    /// The batch job this worker runs in ("" outside a job); adaptive
    /// scaling retires and cancels whole jobs.
    pub job: String,
}

/// How long a retiring worker waits for the scheduler before leaving anyway.
pub const RETIRE_TIMEOUT: Duration = Duration::from_secs(120);

/// Pooled receive buffers not reused for this long are freed.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// What a worker does as its memory fills up; fractions of `limit`, as in
/// Dask (`distributed.worker.memory.*`). `None` disables a step.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPolicy {
    /// Bytes the worker process may use; `None`: no limit, no management.
    pub limit: Option<u64>,
    /// Spill least recently used values to disk when the values held in
    /// memory exceed this fraction.
    pub target: Option<f64>,
    /// Spill when the process's memory (RSS) exceeds this fraction.
    pub spill: Option<f64>,
    /// Start no new tasks (and take none from the scheduler) above this.
    pub pause: Option<f64>,
    /// Exit above this; the scheduler reschedules the work elsewhere.
    pub terminate: Option<f64>,
}

impl Default for MemoryPolicy {
    fn default() -> Self {
        MemoryPolicy { limit: None, target: Some(0.60), spill: Some(0.70), pause: Some(0.80), terminate: Some(0.95) }
    }
}

impl MemoryPolicy {
    pub fn with_limit(limit: Option<u64>) -> MemoryPolicy {
        MemoryPolicy { limit, ..Default::default() }
    }
}

/// Why the worker stopped.
#[derive(Debug, PartialEq)]
pub enum WorkerExit {
    /// The scheduler told it to.
    Shutdown(String),
    /// The connection to the scheduler broke.
    SchedulerLost(String),
    /// It went over its memory limit (bytes in use).
    MemoryLimit(u64),
}

#[derive(Default)]
struct Counters {
    fetched: AtomicU64,
    fetched_bytes: AtomicU64,
    served: AtomicU64,
    served_bytes: AtomicU64,
    fetch_us: AtomicU64,
    connections_from: std::sync::Mutex<std::collections::BTreeSet<IpAddr>>,
}


enum Event {
    Scheduler(Vec<ToWorker>),
    SchedulerClosed(String),
    /// Executor `exec` is about to run task `id`; a non-zero `ticket` means
    /// it waits until the scheduler has been told (see `StartAcks`).
    Started { id: TaskId, exec: usize, ticket: u64 },
    Done { id: TaskId, result: Result<Data, String>, duration: Duration },
    Fetched { dep: TaskId, from: String, value: Arc<Value> },
    FetchFailed { deps: Vec<TaskId>, from: String, error: String },
    RetireRequested,
}

struct Job {
    id: TaskId,
    key: String,
    expr: Expr,
    args: Vec<Arc<Value>>,
    timeout: Option<f64>,
}

struct LocalTask {
    /// As received, but for `spec` (decoded into `expr`) and for the
    /// dependencies that pass no data (dropped: nothing to fetch or load).
    compute: ComputeTask,
    /// Taken when the task starts.
    expr: Option<Expr>,
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

/// At most this many values are being fetched from peers at once...
pub const MAX_FETCHES_IN_FLIGHT: usize = 64;
/// ...and at most this many bytes (one larger value may always go alone).
pub const MAX_FETCH_BYTES_IN_FLIGHT: u64 = 512 << 20;

/// Connect-and-run, on the calling thread, until the scheduler says stop or
/// goes away. `scheduler` must be an authenticated connection (role Worker).
pub fn run(cfg: WorkerConfig, scheduler: TcpStream) -> io::Result<WorkerExit> {
    util::release_large_frees();
    let local_ip = scheduler.local_addr()?.ip();
    let listen_ip = cfg.listen_ip.unwrap_or(local_ip);
    let listener = TcpListener::bind(SocketAddr::new(listen_ip, 0))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen for peers on {listen_ip}: {e}")))?;
    let port = listener.local_addr()?.port();
    let data_address = util::format_address(&SocketAddr::new(cfg.contact_ip.unwrap_or(listen_ip), port));
    let scratch_dir = crate::node::create_scratch(&cfg.local_directory, &cfg.name)?;
    let scratch = scratch_dir.path().to_path_buf();

    let store = Arc::new(Store::new(scratch.join("spill")));
    let counters = Arc::new(Counters::default());
    {
        let store = store.clone();
        let counters = counters.clone();
        let secret = cfg.secret.clone();
        std::thread::Builder::new().name("tf-data-server".into()).spawn(move || data_server(listener, secret, store, counters))?;
    }

    let (tx, rx) = unbounded::<Event>();
    let read_half = scheduler.try_clone()?;
    let mut to_sched = FrameWriter::new(scheduler.try_clone()?);
    to_sched.send(
        &[ToScheduler::RegisterWorker {
            name: cfg.name.clone(),
            data_address: data_address.clone(),
            nthreads: cfg.nthreads,
            resources: cfg.resources.clone(),
            host: util::hostname(),
            pid: std::process::id(),
            local_directory: scratch.display().to_string(),
            job: cfg.job.clone(),
        }],
        &[],
    )?;
    {
        let tx = tx.clone();
        std::thread::Builder::new().name("tf-sched-reader".into()).spawn(move || {
            let mut r = FrameReader::new(read_half);
            loop {
                match r.read_batch::<ToWorker>() {
                    Ok(Some((msgs, _))) => {
                        if tx.send(Event::Scheduler(msgs)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(Event::SchedulerClosed("the scheduler closed the connection".into()));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Event::SchedulerClosed(format!("connection to the scheduler failed: {e}")));
                        return;
                    }
                }
            }
        })?;
    }
    if let Some(requests) = cfg.retire_requests.clone() {
        let tx = tx.clone();
        std::thread::Builder::new().name("tf-retire".into()).spawn(move || {
            while requests.recv().is_ok() {
                if tx.send(Event::RetireRequested).is_err() {
                    return;
                }
            }
        })?;
    }
    let (job_tx, job_rx) = unbounded::<Job>();
    let acks = Arc::new(StartAcks { acked: (0..cfg.nthreads.max(1)).map(|_| AtomicU64::new(0)).collect(), lock: Mutex::new(()), cv: Condvar::new() });
    for i in 0..cfg.nthreads.max(1) {
        let rx = job_rx.clone();
        let tx = tx.clone();
        let reg = cfg.registry.clone();
        let dir = scratch.clone();
        let acks = acks.clone();
        std::thread::Builder::new().name(format!("tf-exec-{i}")).spawn(move || executor(i as usize, rx, tx, reg, dir, acks))?;
    }
    log_at!(2, "worker", "worker '{}' serving data on {data_address} with {} threads, scratch {}", cfg.name, cfg.nthreads, scratch.display());

    let retire_at = cfg.lifetime.map(|l| Instant::now() + l);
    if let Some(l) = cfg.lifetime {
        log_at!(2, "worker", "worker '{}' will retire gracefully after {:.0} s", cfg.name, l.as_secs_f64());
    }
    let mut w = WorkerLoop {
        cfg,
        store,
        counters,
        tx,
        job_tx,
        tasks: HashMap::new(),
        ready: BinaryHeap::new(),
        executing: 0,
        fetching: HashMap::new(),
        peers: HashMap::new(),
        out: Vec::new(),
        mean_task_us: 0.0,
        paused: false,
        last_memory_check: None,
        report_now: false,
        retire_deadline: None,
        resources_in_use: HashMap::new(),
        fetch_queue: std::collections::VecDeque::new(),
        fetches_in_flight: 0,
        fetch_bytes_in_flight: 0,
        started: Vec::new(),
        start_acks: Vec::new(),
        acks,
        retire_at,
    };
    // Large receive buffers kept for reuse: an eighth of the memory limit.
    crate::bufpool::set_limit(w.cfg.memory.limit.unwrap_or_else(util::node_memory) / 8);
    let exit = w.run(rx, &mut to_sched);
    let _ = scheduler.shutdown(std::net::Shutdown::Both);
    drop(scratch_dir);
    exit
}

struct WorkerLoop {
    cfg: WorkerConfig,
    store: Arc<Store>,
    counters: Arc<Counters>,
    tx: Sender<Event>,
    job_tx: Sender<Job>,
    tasks: HashMap<TaskId, LocalTask>,
    ready: BinaryHeap<std::cmp::Reverse<((u32, u32, u32), TaskId)>>,
    executing: u32,
    fetching: HashMap<TaskId, Fetching>,
    peers: HashMap<String, Sender<Vec<TaskId>>>,
    out: Vec<ToScheduler>,
    /// Moving average of task run time, microseconds.
    mean_task_us: f64,
    /// Over the pause threshold of the memory limit: start nothing new.
    paused: bool,
    last_memory_check: Option<Instant>,
    /// Send metrics with the next batch (e.g. paused state changed).
    report_now: bool,
    /// Asked to retire: leave by then even if the scheduler does not answer.
    retire_deadline: Option<Instant>,
    /// Resources held by dispatched tasks.
    resources_in_use: HashMap<String, f64>,
    /// Fetches waiting for room under the transfer limits.
    fetch_queue: std::collections::VecDeque<TaskId>,
    fetches_in_flight: usize,
    fetch_bytes_in_flight: u64,
    /// Tasks the executors began since the last batch to the scheduler.
    started: Vec<TaskId>,
    /// Executors waiting to hear that their start was sent: (executor, ticket).
    start_acks: Vec<(usize, u64)>,
    acks: Arc<StartAcks>,
    /// When `--lifetime` runs out.
    retire_at: Option<Instant>,
}

impl WorkerLoop {
    fn run(&mut self, rx: Receiver<Event>, to_sched: &mut FrameWriter<TcpStream>) -> io::Result<WorkerExit> {
        let mut last_beat = Instant::now();
        let mut last_transfers = 0u64;
        loop {
            let first = match rx.recv_timeout(self.cfg.heartbeat) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(WorkerExit::SchedulerLost("internal channel closed".into())),
            };
            let mut batch: Vec<Event> = first.into_iter().collect();
            while batch.len() < 10_000 {
                match rx.try_recv() {
                    Ok(ev) => batch.push(ev),
                    Err(_) => break,
                }
            }
            for ev in batch {
                if let Some(exit) = self.handle(ev) {
                    let _ = to_sched.send(&self.out, &[]);
                    if let WorkerExit::Shutdown(r) | WorkerExit::SchedulerLost(r) = &exit {
                        log_at!(2, "worker", "worker '{}' stopping: {r}", self.cfg.name);
                    }
                    return Ok(exit);
                }
            }
            self.dispatch();
            if self.retire_at.is_some_and(|t| Instant::now() >= t) {
                self.retire_at = None;
                log_at!(2, "worker", "worker '{}' reached its lifetime", self.cfg.name);
                self.handle(Event::RetireRequested);
            }
            if self.retire_deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(WorkerExit::SchedulerLost(format!("the scheduler did not complete the retirement within {} s", RETIRE_TIMEOUT.as_secs())));
            }
            if let Some(exit) = self.manage_memory(false) {
                let _ = to_sched.send(&self.out, &[]);
                return Ok(exit);
            }
            // Report at the heartbeat interval, and at once when transfer
            // counters moved, so status reflects peer traffic promptly.
            let transfers = self.counters.fetched.load(Ordering::Relaxed) + self.counters.served.load(Ordering::Relaxed);
            if last_beat.elapsed() >= self.cfg.heartbeat || transfers != last_transfers || self.report_now {
                self.report_now = false;
                last_beat = Instant::now();
                crate::bufpool::trim(POOL_IDLE);
                last_transfers = transfers;
                self.out.push(ToScheduler::Heartbeat(self.metrics()));
            }
            if !self.started.is_empty() {
                // A frame of its own ahead of the batch (one write with it):
                // the scheduler learns a task started before it learns the
                // task finished.
                let started = [ToScheduler::Started { ids: std::mem::take(&mut self.started) }];
                if let Err(e) = to_sched.write_batch(&started, &[]) {
                    return Ok(WorkerExit::SchedulerLost(format!("cannot write to the scheduler: {e}")));
                }
            }
            if let Err(e) = if self.out.is_empty() { to_sched.flush() } else { to_sched.send(&self.out, &[]) } {
                return Ok(WorkerExit::SchedulerLost(format!("cannot write to the scheduler: {e}")));
            }
            self.out.clear();
            if !self.start_acks.is_empty() {
                // Those starts (and every earlier result) are with the
                // scheduler now: let the waiting executors run their tasks.
                for (exec, ticket) in self.start_acks.drain(..) {
                    self.acks.acked[exec].store(ticket, Ordering::Release);
                }
                let _guard = self.acks.lock.lock().expect("ack lock");
                self.acks.cv.notify_all();
            }
        }
    }

    /// Apply the memory policy: spill to get below the target (values held)
    /// and spill threshold (process memory), pause above the pause
    /// threshold, leave above the terminate threshold. Reads the process's
    /// memory at most every 10 ms unless `force`.
    fn manage_memory(&mut self, force: bool) -> Option<WorkerExit> {
        let m = self.cfg.memory.clone();
        let limit = m.limit? as f64;
        if let Some(target) = m.target {
            let held = self.store.stats().memory_bytes;
            if held as f64 > target * limit {
                self.spill((target * limit) as u64);
            }
        }
        if !force && self.last_memory_check.is_some_and(|t| t.elapsed() < Duration::from_millis(10)) {
            return None;
        }
        self.last_memory_check = Some(Instant::now());
        let mut rss = util::rss_bytes() as f64;
        // Pooled receive buffers are the first memory to give back.
        if m.spill.or(m.pause).or(m.terminate).is_some_and(|f| rss > f * limit) && crate::bufpool::clear() > 0 {
            rss = util::rss_bytes() as f64;
        }
        if let Some(spill) = m.spill {
            if rss > spill * limit {
                let held = self.store.stats().memory_bytes as f64;
                let excess = rss - m.target.unwrap_or(spill) * limit;
                self.spill((held - excess).max(0.0) as u64);
                rss = util::rss_bytes() as f64;
            }
        }
        if let Some(terminate) = m.terminate {
            if rss > terminate * limit {
                log_at!(0, "worker", "worker '{}' uses {} of its {} memory limit (over {:.0} %): exiting so the node does not run out of memory",
                    self.cfg.name, util::format_bytes(rss as u64), util::format_bytes(limit as u64), terminate * 100.0);
                return Some(WorkerExit::MemoryLimit(rss as u64));
            }
        }
        let paused = m.pause.is_some_and(|p| rss > p * limit);
        if paused != self.paused {
            log_at!(1, "worker", "worker '{}' {} at {} of its {} memory limit", self.cfg.name,
                if paused { "paused (starting no new tasks)" } else { "resumed" }, util::format_bytes(rss as u64), util::format_bytes(limit as u64));
            self.paused = paused;
            self.report_now = true;
        }
        None
    }

    fn spill(&mut self, target: u64) {
        match self.store.spill_until(target) {
            Ok(0) => {}
            Ok(n) => log_at!(3, "worker", "spilled {} to disk", util::format_bytes(n)),
            Err(e) => log_at!(0, "worker", "cannot spill to disk: {e}"),
        }
    }

    fn metrics(&self) -> WorkerMetrics {
        let st = self.store.stats();
        WorkerMetrics {
            rss: util::rss_bytes(),
            stored_bytes: st.memory_bytes,
            stored_count: st.memory_count,
            spilled_bytes: st.disk_bytes,
            spilled_count: st.disk_count,
            spilled_total: st.spilled,
            unspilled_total: st.unspilled,
            spilled_bytes_total: st.spilled_bytes,
            unspilled_bytes_total: st.unspilled_bytes,
            spill_us: (st.spill_seconds * 1e6) as u64,
            unspill_us: (st.unspill_seconds * 1e6) as u64,
            fetch_us: self.counters.fetch_us.load(Ordering::Relaxed),
            paused: self.paused,
            memory_limit: self.cfg.memory.limit.unwrap_or(0),
            executing: self.executing,
            fetched_from_peers: self.counters.fetched.load(Ordering::Relaxed),
            fetched_bytes: self.counters.fetched_bytes.load(Ordering::Relaxed),
            served_to_peers: self.counters.served.load(Ordering::Relaxed),
            served_bytes: self.counters.served_bytes.load(Ordering::Relaxed),
            data_connections_from: self.counters.connections_from.lock().expect("lock").iter().map(|a| a.to_string()).collect(),
        }
    }

    fn handle(&mut self, ev: Event) -> Option<WorkerExit> {
        match ev {
            Event::Scheduler(msgs) => {
                for m in msgs {
                    match m {
                        ToWorker::Welcome { worker_id } => log_at!(3, "worker", "registered as worker {worker_id}"),
                        ToWorker::Compute(ct) => self.compute(ct),
                        ToWorker::Free { ids } => self.free(&ids),
                        ToWorker::Replicate { id, holders } => self.replicate(id, holders),
                        ToWorker::Steal { ids } => {
                            // Give up what has not started; the ready heap
                            // skips ids no longer in the table.
                            let (stolen, kept): (Vec<TaskId>, Vec<TaskId>) = ids.into_iter().partition(|id| self.tasks.get(id).is_some_and(|t| !t.running));
                            for id in &stolen {
                                self.forget_task(*id);
                            }
                            self.out.push(ToScheduler::Stolen { ids: stolen, kept });
                        }
                        ToWorker::Shutdown { reason } => return Some(WorkerExit::Shutdown(reason)),
                    }
                }
            }
            Event::SchedulerClosed(reason) => return Some(WorkerExit::SchedulerLost(reason)),
            Event::Started { id, exec, ticket } => {
                self.started.push(id);
                if ticket > 0 {
                    self.start_acks.push((exec, ticket));
                }
            }
            Event::Done { id, result, duration } => {
                self.executing -= 1;
                let Some(task) = self.tasks.remove(&id) else { return None };
                for (name, amount) in &task.compute.resources {
                    if let Some(u) = self.resources_in_use.get_mut(name) {
                        *u = (*u - amount).max(0.0);
                    }
                }
                let duration_us = duration.as_micros() as u64;
                self.mean_task_us = if self.mean_task_us == 0.0 { duration_us as f64 + 0.5 } else { 0.95 * self.mean_task_us + 0.05 * duration_us as f64 };
                match result {
                    Ok(data) => {
                        let nbytes = data.nbytes();
                        let value = Arc::new(Value::new(data));
                        let inline = if task.compute.inline_result {
                            let (tag, body) = value.wire();
                            (body.len() <= crate::protocol::INLINE_RESULT_MAX).then(|| (tag, body.to_vec()))
                        } else {
                            None
                        };
                        self.store.insert(id, value);
                        self.manage_memory(false);
                        self.out.push(ToScheduler::TaskFinished { id, nbytes, duration_us, value: inline });
                    }
                    Err(error) => {
                        log_at!(3, "worker", "task '{}' failed: {error}", task.compute.key);
                        self.out.push(ToScheduler::TaskErred { id, error, duration_us });
                    }
                }
            }
            Event::Fetched { dep, from, value } => {
                log_at!(3, "worker", "fetched value of task {dep} from peer {from}");
                // Every copy is reported: the scheduler counts it as a holder
                // (for placement and for surviving the loss of the first
                // holder) and frees it with the value.
                self.out.push(ToScheduler::Replicated { id: dep, nbytes: value.nbytes() });
                self.store.insert(dep, value);
                self.manage_memory(false);
                if let Some(f) = self.fetching.remove(&dep) {
                    if f.in_flight {
                        self.fetches_in_flight -= 1;
                        self.fetch_bytes_in_flight -= f.nbytes;
                    }
                    for t in f.waiting {
                        if let Some(task) = self.tasks.get_mut(&t) {
                            task.missing -= 1;
                            if task.missing == 0 {
                                self.ready.push(std::cmp::Reverse((task.compute.priority, t)));
                            }
                        }
                    }
                }
                self.pump_fetches();
            }
            Event::RetireRequested => {
                if self.retire_deadline.is_none() {
                    log_at!(2, "worker", "worker '{}' retiring: asking the scheduler to move its data and let it go", self.cfg.name);
                    self.retire_deadline = Some(Instant::now() + RETIRE_TIMEOUT);
                    self.out.push(ToScheduler::RetireMe);
                }
            }
            Event::FetchFailed { deps, from, error } => {
                log_at!(1, "worker", "fetch from {from} failed: {error}");
                self.peers.remove(&from);
                for dep in deps {
                    self.retry_fetch(dep);
                }
            }
        }
        None
    }

    fn compute(&mut self, mut ct: ComputeTask) {
        let id = ct.id;
        if self.tasks.contains_key(&id) {
            return;
        }
        let mut expr: Expr = match bincode::deserialize(&std::mem::take(&mut ct.spec)) {
            Ok(e) => e,
            Err(e) => {
                self.out.push(ToScheduler::TaskErred { id, error: format!("undecodable task spec: {e}"), duration_us: 0 });
                return;
            }
        };
        drop_dataless_deps(&mut ct, &mut expr);
        let mut missing = 0;
        {
            for (i, (dep, holders)) in ct.deps.iter().enumerate() {
                if self.store.contains(*dep) {
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
                        self.fetching.insert(*dep, Fetching { candidates: holders.clone(), tried: Vec::new(), waiting: vec![id], replicate: false, nbytes, in_flight: false, queued: false });
                    }
                }
            }
        }
        let priority = ct.priority;
        let deps: Vec<TaskId> = ct.deps.iter().map(|(d, _)| *d).collect();
        self.tasks.insert(id, LocalTask { compute: ct, expr: Some(expr), missing, running: false });
        if missing == 0 {
            self.ready.push(std::cmp::Reverse((priority, id)));
        } else {
            for d in deps {
                if self.fetching.get(&d).is_some_and(|f| f.tried.is_empty() && !f.queued) {
                    self.retry_fetch(d);
                }
            }
        }
    }

    /// Ask the next untried holder for `dep`; if none is left, tell the
    /// scheduler and drop the tasks that needed it (it will reschedule them).
    fn retry_fetch(&mut self, dep: TaskId) {
        let Some(f) = self.fetching.get_mut(&dep) else { return };
        if f.in_flight {
            f.in_flight = false;
            self.fetches_in_flight -= 1;
            self.fetch_bytes_in_flight -= f.nbytes;
        }
        if f.candidates.is_empty() {
            let f = self.fetching.remove(&dep).expect("present");
            if f.replicate {
                self.out.push(ToScheduler::ReplicateFailed { id: dep });
            }
            for t in f.waiting {
                if let Some(task) = self.forget_task(t) {
                    self.out.push(ToScheduler::MissingData { id: task.compute.id, dep, tried: f.tried.clone() });
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
                && (self.fetches_in_flight >= MAX_FETCHES_IN_FLIGHT || self.fetch_bytes_in_flight + f.nbytes > MAX_FETCH_BYTES_IN_FLIGHT);
            if busy {
                return;
            }
            self.fetch_queue.pop_front();
            f.queued = false;
            let Some(next) = f.candidates.first().cloned() else {
                // Nobody left to ask and nothing under way: report it (the
                // scheduler recomputes or reschedules) instead of leaving
                // the tasks that need it waiting for ever.
                if !f.in_flight {
                    self.retry_fetch(dep);
                }
                continue;
            };
            f.candidates.remove(0);
            f.tried.push(next.clone());
            f.in_flight = true;
            self.fetches_in_flight += 1;
            self.fetch_bytes_in_flight += f.nbytes;
            let sender = self.peers.entry(next.clone()).or_insert_with(|| spawn_fetcher(next.clone(), self.cfg.secret.clone(), self.tx.clone(), self.counters.clone()));
            if sender.send(vec![dep]).is_err() {
                self.peers.remove(&next);
                self.retry_fetch(dep);
            }
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
    fn replicate(&mut self, id: TaskId, holders: Vec<String>) {
        if self.store.contains(id) {
            let nbytes = self.store.get(id).ok().flatten().map(|v| v.nbytes()).unwrap_or(0);
            self.out.push(ToScheduler::Replicated { id, nbytes });
            return;
        }
        match self.fetching.get_mut(&id) {
            Some(f) => f.replicate = true,
            None => {
                self.fetching.insert(id, Fetching { candidates: holders, tried: Vec::new(), waiting: Vec::new(), replicate: true, nbytes: 0, in_flight: false, queued: false });
                self.retry_fetch(id);
            }
        }
    }

    fn free(&mut self, ids: &[TaskId]) {
        for id in ids {
            self.store.remove(*id);
            if self.tasks.get(id).is_some_and(|t| !t.running) {
                self.forget_task(*id);
            }
        }
    }

    /// How many tasks may sit in the executors' queue at once: one per
    /// thread for long tasks (so priorities and the scheduler's placement
    /// keep control), a deeper window when tasks are short so threads never
    /// wait for this loop between tasks.
    fn window(&self) -> u32 {
        let n = self.cfg.nthreads.max(1);
        if self.mean_task_us > 0.0 && self.mean_task_us < 1000.0 {
            n * 64
        } else {
            n
        }
    }

    /// Whether `needs` fits in what is free now (`cpus` against threads).
    fn fits(&self, needs: &[(String, f64)]) -> bool {
        needs.iter().all(|(name, amount)| {
            let total = if name == "cpus" {
                self.cfg.nthreads as f64
            } else {
                self.cfg.resources.iter().find(|(n, _)| n == name).map(|(_, a)| *a).unwrap_or(0.0)
            };
            let used = self.resources_in_use.get(name).copied().unwrap_or(0.0);
            // A task asking for more than the worker has runs alone.
            used + amount <= total + 1e-9 || used == 0.0
        })
    }

    /// Hand ready tasks to the executor threads, highest priority first;
    /// tasks that declare resources start only when those are free.
    fn dispatch(&mut self) {
        let window = if self.paused { 0 } else { self.window() };
        let mut waiting_for_resources = Vec::new();
        while self.executing < window {
            let Some(std::cmp::Reverse((prio, id))) = self.ready.pop() else { break };
            let Some(task) = self.tasks.get_mut(&id) else { continue };
            if task.running {
                continue;
            }
            // Beyond one job per thread, a job is queued ahead only if its
            // inputs are in memory: reading spilled values back for tasks
            // that would wait anyway fills the memory that spilling freed.
            if self.executing >= self.cfg.nthreads.max(1) && !task.compute.deps.iter().all(|(d, _)| self.store.in_memory(*d)) {
                self.ready.push(std::cmp::Reverse((prio, id)));
                break;
            }
            if !task.compute.resources.is_empty() {
                let needs = task.compute.resources.clone();
                if !self.fits(&needs) {
                    waiting_for_resources.push(std::cmp::Reverse((prio, id)));
                    continue;
                }
                for (name, amount) in &needs {
                    *self.resources_in_use.entry(name.clone()).or_insert(0.0) += amount;
                }
            }
            let Some(task) = self.tasks.get_mut(&id) else { continue };
            let mut args = Vec::with_capacity(task.compute.deps.len());
            let mut missing = None;
            for (d, _) in &task.compute.deps {
                match self.store.get(*d) {
                    Ok(Some(v)) => args.push(v),
                    Ok(None) => missing = Some(*d),
                    Err(e) => {
                        log_at!(0, "worker", "cannot read back spilled value of task {d}: {e}");
                        missing = Some(*d);
                    }
                }
                if missing.is_some() {
                    break;
                }
            }
            if let Some(dep) = missing {
                // A dependency vanished (freed meanwhile, or its spill file is
                // unreadable): let the scheduler decide.
                self.tasks.remove(&id);
                self.out.push(ToScheduler::MissingData { id, dep, tried: Vec::new() });
                continue;
            }
            let Some(expr) = task.expr.take() else { continue };
            task.running = true;
            self.executing += 1;
            let job = Job { id, key: task.compute.key.clone(), expr, args, timeout: task.compute.timeout };
            if self.job_tx.send(job).is_err() {
                self.executing -= 1;
            }
        }
        self.ready.extend(waiting_for_resources);
    }
}

/// Drop the dependencies a task's expression does not reference (listed in
/// the graph's `"deps"`: they only order the task, and the scheduler sends it
/// only once they finished), renumbering the references to the rest. Their
/// values are then neither fetched nor read back from disk for it.
fn drop_dataless_deps(ct: &mut ComputeTask, expr: &mut Expr) {
    let mut used = vec![false; ct.deps.len()];
    expr.for_each_ref(&mut |i| {
        if let Some(u) = used.get_mut(*i as usize) {
            *u = true;
        }
    });
    if used.iter().all(|&u| u) {
        return;
    }
    let mut renumber = vec![u32::MAX; used.len()];
    let mut next = 0;
    for (i, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        renumber[i] = next;
        next += 1;
    }
    expr.for_each_ref(&mut |i| {
        if let Some(&n) = renumber.get(*i as usize) {
            *i = n;
        }
    });
    let mut keep = used.iter().copied();
    ct.deps.retain(|_| keep.next().unwrap_or(true));
    if ct.dep_nbytes.len() == used.len() {
        let mut keep = used.iter().copied();
        ct.dep_nbytes.retain(|_| keep.next().unwrap_or(true));
    }
}

/// Where executors learn that the scheduler was told a task started.
/// Before running a command, an executor waits (up to `START_ACK_WAIT`)
/// until the worker has sent its start to the scheduler, together with the
/// results of the tasks it ran before: if the command kills the worker, the
/// scheduler suspects that command, not a task that had just finished
/// without the worker getting to report it. Commands take milliseconds to
/// start anyway; functions do not wait.
struct StartAcks {
    /// Per executor: the last ticket whose start was sent.
    acked: Vec<AtomicU64>,
    lock: Mutex<()>,
    cv: Condvar,
}

const START_ACK_WAIT: Duration = Duration::from_millis(200);

fn executor(index: usize, rx: Receiver<Job>, tx: Sender<Event>, reg: Registry, dir: PathBuf, acks: Arc<StartAcks>) {
    let mut tickets = 0u64;
    while let Ok(job) = rx.recv() {
        let wait = matches!(job.expr, Expr::Cmd(_));
        let ticket = if wait {
            tickets += 1;
            tickets
        } else {
            0
        };
        if tx.send(Event::Started { id: job.id, exec: index, ticket }).is_err() {
            return;
        }
        if wait {
            let guard = acks.lock.lock().expect("ack lock");
            let _ = acks.cv.wait_timeout_while(guard, START_ACK_WAIT, |_| acks.acked[index].load(Ordering::Acquire) < ticket);
        }
        let start = Instant::now();
        let deadline = job.timeout.map(|t| start + Duration::from_secs_f64(t));
        let ctx = TaskContext { key: &job.key, local_directory: &dir, deadline };
        let refs: Vec<&Data> = job.args.iter().map(|s| &s.data).collect();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| evaluate(&job.expr, &refs, &reg, &ctx).map(|v| v.into_owned())))
            .unwrap_or_else(|p| {
                let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
                Err(format!("the task's function panicked: {msg}"))
            });
        let result = match (result, deadline) {
            (Ok(_), Some(d)) if Instant::now() > d => Err(format!("timed out: ran {:.1} s, longer than its timeout", start.elapsed().as_secs_f64())),
            (r, _) => r,
        };
        if tx.send(Event::Done { id: job.id, result, duration: start.elapsed() }).is_err() {
            return;
        }
    }
}

/// One thread per peer: keeps a connection, batches requests, reports back.
fn spawn_fetcher(addr: String, secret: Vec<u8>, tx: Sender<Event>, counters: Arc<Counters>) -> Sender<Vec<TaskId>> {
    let (req_tx, req_rx) = unbounded::<Vec<TaskId>>();
    let _ = std::thread::Builder::new().name("tf-fetch".into()).spawn(move || {
        let mut conn: Option<(FrameReader<TcpStream>, FrameWriter<TcpStream>)> = None;
        while let Ok(mut ids) = req_rx.recv() {
            while let Ok(more) = req_rx.try_recv() {
                ids.extend(more);
            }
            let started = Instant::now();
            let result = (|| -> io::Result<Vec<(TaskId, Arc<Value>)>> {
                if conn.is_none() {
                    let s = crate::schedfile::connect(&addr, &secret, Role::Peer).map_err(|e| match e {
                        crate::schedfile::ConnectError::Unreachable(e) => e,
                        crate::schedfile::ConnectError::Fatal(m) => io::Error::other(m),
                    })?;
                    conn = Some((FrameReader::new(s.try_clone()?), FrameWriter::new(s)));
                }
                let (r, w) = conn.as_mut().expect("just set");
                fetch_values(r, w, &ids)
            })();
            counters.fetch_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            match result {
                Ok(values) => {
                    let mut got = std::collections::HashSet::new();
                    for (id, v) in values {
                        counters.fetched.fetch_add(1, Ordering::Relaxed);
                        counters.fetched_bytes.fetch_add(v.wire().1.len() as u64 + 1, Ordering::Relaxed);
                        got.insert(id);
                        if tx.send(Event::Fetched { dep: id, from: addr.clone(), value: v }).is_err() {
                            return;
                        }
                    }
                    let missing: Vec<TaskId> = ids.into_iter().filter(|i| !got.contains(i)).collect();
                    if !missing.is_empty() {
                        let _ = tx.send(Event::FetchFailed { deps: missing, from: addr.clone(), error: "the peer does not hold these values".into() });
                    }
                }
                Err(e) => {
                    // Report and keep serving the queue: every request sent
                    // here gets an answer (a dead peer fails fast on
                    // reconnect), so none is lost; the thread ends when the
                    // worker drops this peer's channel.
                    conn = None;
                    if tx.send(Event::FetchFailed { deps: ids, from: addr.clone(), error: e.to_string() }).is_err() {
                        return;
                    }
                }
            }
        }
    });
    req_tx
}

/// Ask a data server for values; returns those it had.
pub fn fetch_values(r: &mut FrameReader<TcpStream>, w: &mut FrameWriter<TcpStream>, ids: &[TaskId]) -> io::Result<Vec<(TaskId, Arc<Value>)>> {
    w.send(&[PeerRequest::GetData { ids: ids.to_vec() }], &[])?;
    let (msgs, payloads) = r.read_batch::<PeerReply>()?.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed the connection"))?;
    let Some(PeerReply::Data { found }) = msgs.into_iter().next() else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "peer sent no data reply"));
    };
    let mut payloads = payloads.into_iter();
    let mut out = Vec::new();
    for (id, ok) in found {
        if ok {
            let (tag, body) = payloads.next().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "peer sent fewer payloads than promised"))?;
            out.push((id, Arc::new(Value::from_wire(tag, body)?)));
        }
    }
    Ok(out)
}

fn data_server(listener: TcpListener, secret: Vec<u8>, store: Arc<Store>, counters: Arc<Counters>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let store = store.clone();
        let counters = counters.clone();
        let secret = secret.clone();
        if let Ok(a) = stream.peer_addr() {
            let mut seen = counters.connections_from.lock().expect("lock");
            if seen.len() < 64 {
                seen.insert(a.ip());
            }
        }
        let _ = std::thread::Builder::new().name("tf-data-conn".into()).spawn(move || {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            match server_handshake(&mut stream, &secret) {
                Ok(Role::Peer) => {}
                Ok(role) => {
                    log_at!(1, "worker", "data server: {peer} connected as {role:?}, not as a peer; closed");
                    return;
                }
                Err(e) => {
                    log_at!(1, "worker", "data server: rejected connection from {peer}: {e}");
                    return;
                }
            }
            let Ok(read_half) = stream.try_clone() else { return };
            let mut r = FrameReader::new(read_half);
            let mut w = FrameWriter::new(stream);
            while let Ok(Some((reqs, _))) = r.read_batch::<PeerRequest>() {
                for PeerRequest::GetData { ids } in reqs {
                    let values: Vec<(TaskId, Option<Arc<Value>>)> = ids.iter().map(|id| (*id, store.get(*id).ok().flatten())).collect();
                    let found: Vec<(TaskId, bool)> = values.iter().map(|(id, v)| (*id, v.is_some())).collect();
                    let payloads: Vec<(u8, &[u8])> = values.iter().filter_map(|(_, v)| v.as_ref().map(|v| v.wire())).collect();
                    counters.served.fetch_add(payloads.len() as u64, Ordering::Relaxed);
                    counters.served_bytes.fetch_add(payloads.iter().map(|(_, p)| p.len() as u64 + 1).sum(), Ordering::Relaxed);
                    if w.send(&[PeerReply::Data { found }], &payloads).is_err() {
                        return;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(deps: &[TaskId], expr: &Expr) -> ComputeTask {
        ComputeTask {
            id: 99,
            key: "t".into(),
            spec: bincode::serialize(expr).unwrap(),
            deps: deps.iter().map(|&d| (d, vec![format!("tcp://h:{d}")])).collect(),
            dep_nbytes: deps.iter().map(|&d| d as u64 * 10).collect(),
            priority: (0, 0, 0),
            timeout: None,
            resources: Vec::new(),
            inline_result: false,
        }
    }

    #[test]
    fn dependencies_that_pass_no_data_are_dropped_and_references_renumbered() {
        // refs to deps 1 and 3 (of 0..4) inside a call, a list and a command
        let mut expr = Expr::List(vec![
            Expr::Call("inc".into(), vec![Expr::Ref(3)]),
            Expr::Cmd(Box::new(crate::graph::CmdSpec { argv: vec![Expr::Lit("\"cat\"".into())], cwd: None, env: vec![("X".into(), Expr::Ref(1))], stdin: Some(Expr::Ref(3)) })),
        ]);
        let mut ct = task(&[10, 11, 12, 13], &expr);
        drop_dataless_deps(&mut ct, &mut expr);
        assert_eq!(ct.deps.iter().map(|d| d.0).collect::<Vec<_>>(), vec![11, 13]);
        assert_eq!(ct.dep_nbytes, vec![110, 130]);
        let mut refs = Vec::new();
        expr.for_each_ref(&mut |i| refs.push(*i));
        assert_eq!(refs, vec![1, 0, 1], "3 -> 1, 1 -> 0 in visiting order (call, env, stdin)");
    }

    #[test]
    fn a_task_using_every_dependency_is_unchanged() {
        let mut expr = Expr::Call("add".into(), vec![Expr::Ref(1), Expr::Ref(0)]);
        let before = expr.clone();
        let mut ct = task(&[5, 6], &expr);
        drop_dataless_deps(&mut ct, &mut expr);
        assert_eq!(expr, before);
        assert_eq!(ct.deps.len(), 2);
        let mut noop = Expr::Call("noop".into(), vec![]);
        let mut ct = task(&[5, 6], &noop);
        drop_dataless_deps(&mut ct, &mut noop);
        assert!(ct.deps.is_empty() && ct.dep_nbytes.is_empty(), "a gate needs none of its dependencies' values");
    }
}
