//! The worker: runs tasks on a pool of executors, keeps their results,
//! serves them to other workers and clients from its data server, and
//! fetches the dependencies it lacks directly from the workers that hold them.
//!
//! Decisions are in the pure [`state::WorkerState`] (events in,
//! instructions out) and the memory policy in [`memory`]; this module is the
//! IO around them. One thread (the caller of [`run`]) owns the state; the
//! scheduler connection's reader, the executors ([`executor`]) and the peer
//! fetchers ([`crate::dataplane`]) talk to it over one channel.

mod deps;
pub(crate) mod executor;
pub mod lifetime;
pub mod memory;
pub mod python;
pub(crate) mod state;

use crate::dataplane::{self, Counters, FetchOutcome};
use crate::functions::Registry;
use crate::log_at;
use crate::protocol::{FrameReader, FrameWriter, TaskId, ToScheduler, ToWorker, WorkerMetrics};
use crate::store::{Store, Value};
use crate::util;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use executor::{Job, Pool, Report};
pub use python::PythonSettings;
use state::{Input, Instruction, WorkerState};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use memory::MemoryPolicy;
pub use state::{MAX_FETCHES_IN_FLIGHT, MAX_FETCH_BYTES_IN_FLIGHT, RETIRE_TIMEOUT};

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
    /// How Python tasks' executor processes are started.
    pub python: Arc<PythonSettings>,
    /// Give up on a scheduler that says nothing (not even its ping every
    /// 5 s) for this long: it is frozen, overloaded or cut off.
    pub scheduler_timeout: Duration,
    /// How to find the scheduler again when the connection is lost (the
    /// scheduler file or address, retried for `--death-timeout`): the
    /// worker keeps its values and offers them to the scheduler that comes
    /// back (one restarted from its journal takes them over). `None`: leave.
    pub reattach: Option<Reattach>,
}

/// Connects to the scheduler again (an authenticated worker connection),
/// or says why it could not.
pub type Reattach = Arc<dyn Fn() -> Result<crate::seal::Link, String> + Send + Sync>;

impl WorkerConfig {
    /// A worker called `name` with `nthreads` threads that authenticates
    /// with `secret`, with the defaults of `taskfarm worker`: the built-in
    /// functions, scratch under [`crate::node::choose_local_directory`]
    /// (`$TMPDIR`, the job's scratch, else `/tmp`), the data server on the
    /// interface that reaches the scheduler, a heartbeat every second, Dask's
    /// memory thresholds without a limit, no resources besides its threads,
    /// no lifetime, no signals, the batch job it runs in (if any).
    pub fn new(name: impl Into<String>, nthreads: u32, secret: Vec<u8>) -> WorkerConfig {
        WorkerConfig {
            name: name.into(),
            nthreads,
            local_directory: crate::node::choose_local_directory(None),
            listen_ip: None,
            contact_ip: None,
            resources: Vec::new(),
            secret,
            heartbeat: Duration::from_secs(1),
            registry: Registry::with_builtins(),
            memory: MemoryPolicy::default(),
            retire_requests: None,
            lifetime: None,
            job: crate::jobqueue::detect_job().map(|(_, id)| id).unwrap_or_default(),
            python: Arc::new(PythonSettings::default()),
            scheduler_timeout: crate::protocol::SCHEDULER_TIMEOUT,
            reattach: None,
        }
    }
}

/// Pooled receive buffers not reused for this long are freed.
const POOL_IDLE: Duration = Duration::from_secs(30);

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

enum Event {
    Scheduler(Vec<ToWorker>),
    SchedulerClosed(String),
    Exec(Report),
    Fetch(FetchOutcome),
    RetireRequested,
}

/// Connect-and-run, on the calling thread, until the scheduler says stop or
/// goes away (and, with [`WorkerConfig::reattach`], does not come back).
/// `scheduler` must be an authenticated connection (role Worker).
pub fn run(cfg: WorkerConfig, scheduler: crate::seal::Link) -> io::Result<WorkerExit> {
    util::release_large_frees();
    let local_ip = scheduler.local_addr()?.ip();
    let listen_ip = cfg.listen_ip.unwrap_or(local_ip);
    // Many peers, many connections: the usual soft limit of 1,024 files is low.
    crate::gate::raise_fd_limit();
    let listener = TcpListener::bind(SocketAddr::new(listen_ip, 0)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen for peers on {listen_ip}: {e}"),
        )
    })?;
    let port = listener.local_addr()?.port();
    let data_address =
        util::format_address(&SocketAddr::new(cfg.contact_ip.unwrap_or(listen_ip), port));
    let scratch_dir = crate::node::create_scratch(&cfg.local_directory, &cfg.name)?;
    let scratch = scratch_dir.path().to_path_buf();

    let store = Arc::new(Store::new(scratch.join("spill")));
    let counters = Arc::new(Counters::default());
    {
        let (store, counters, secret) = (store.clone(), counters.clone(), cfg.secret.clone());
        std::thread::Builder::new()
            .name("tf-data-server".into())
            .spawn(move || dataplane::data_server(listener, secret, store, counters))?;
    }
    // Signals go to whichever connection's loop runs now.
    let retire_to: Arc<std::sync::Mutex<Option<Sender<Event>>>> = Arc::default();
    if let Some(requests) = cfg.retire_requests.clone() {
        spawn_retire_forwarder(requests, retire_to.clone(), scratch.clone())?;
    }
    log_at!(
        2,
        "worker",
        "worker '{}' serving data on {data_address} with {} threads, scratch {}",
        cfg.name,
        cfg.nthreads,
        scratch.display()
    );
    if let Some(l) = cfg.lifetime {
        log_at!(
            2,
            "worker",
            "worker '{}' will retire gracefully after {:.0} s",
            cfg.name,
            l.as_secs_f64()
        );
    }
    let shape = state::Shape {
        nthreads: cfg.nthreads,
        resources: cfg.resources.clone(),
        retire_at: cfg.lifetime.map(|l| Instant::now() + l),
    };
    // Large receive buffers kept for reuse: an eighth of the memory limit.
    crate::bufpool::set_limit(cfg.memory.limit.unwrap_or_else(util::node_memory) / 8);
    let mut scheduler = scheduler;
    let (mut held, mut run_id) = (Vec::new(), 0u64);
    let exit = loop {
        let (tx, rx) = unbounded::<Event>();
        let mut to_sched = FrameWriter::new(scheduler.writer()?);
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
                functions: cfg.registry.user_functions(),
                held: std::mem::take(&mut held),
                run: run_id,
            }],
            &[],
        )?;
        spawn_scheduler_reader(scheduler.reader()?, tx.clone())?;
        *retire_to.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        let pool = {
            let tx = tx.clone();
            Pool::start(
                cfg.nthreads,
                cfg.registry.clone(),
                scratch.clone(),
                cfg.python.clone(),
                cfg.memory.limit.unwrap_or(0),
                move |r| tx.send(Event::Exec(r)).is_ok(),
            )?
        };
        let mut w = WorkerLoop {
            state: WorkerState::new(shape.clone()),
            cfg: cfg.clone(),
            store: store.clone(),
            counters: counters.clone(),
            tx,
            pool,
            peers: HashMap::new(),
            out: Vec::new(),
            started: Vec::new(),
            start_acks: Vec::new(),
            last_memory_check: None,
            report_now: false,
            instructions: Vec::new(),
            pending: Vec::new(),
            now: Instant::now(),
            last_word: Instant::now(),
            warned_silence: false,
            run_id: 0,
        };
        let exit = w.run(rx, &mut to_sched);
        let _ = scheduler.shutdown(std::net::Shutdown::Both);
        let (Ok(WorkerExit::SchedulerLost(reason)), Some(reattach)) = (&exit, &cfg.reattach) else { break exit };
        if w.state.retiring() || w.run_id == 0 {
            break exit;
        }
        // Nothing started under the lost scheduler may finish under the
        // next one (it numbers tasks anew): stop what runs, drop the rest.
        w.pool.cancel_all();
        run_id = w.run_id;
        drop(w);
        *retire_to.lock().unwrap_or_else(|p| p.into_inner()) = None;
        held = store.held();
        log_at!(1, "worker", "worker '{}' lost its scheduler ({reason}); keeping its {} values and looking for the scheduler again (--death-timeout)", cfg.name, held.len());
        match reattach() {
            Ok(link) => {
                log_at!(1, "worker", "worker '{}' reached a scheduler again; offering it {} values", cfg.name, held.len());
                scheduler = link;
            }
            Err(e) => break Ok(WorkerExit::SchedulerLost(format!("{reason}; it did not come back: {e}"))),
        }
    };
    drop(scratch_dir);
    exit
}

/// Pass each retirement request (a signal) on to the worker's loop.
fn spawn_retire_forwarder(requests: Receiver<()>, to: Arc<std::sync::Mutex<Option<Sender<Event>>>>, scratch: PathBuf) -> io::Result<()> {
    std::thread::Builder::new().name("tf-retire".into()).spawn(move || {
        while requests.recv().is_ok() {
            // Between two connections (looking for a lost scheduler) a
            // signal has no loop to go to; the worker runs no task then, so
            // it leaves at once, its scratch directory with it.
            let tx = to.lock().unwrap_or_else(|p| p.into_inner()).clone();
            match tx {
                Some(tx) => {
                    let _ = tx.send(Event::RetireRequested);
                }
                None => {
                    log_at!(1, "worker", "signalled while looking for its scheduler: leaving now");
                    let _ = std::fs::remove_dir_all(&scratch);
                    std::process::exit(1);
                }
            }
        }
    })?;
    Ok(())
}

fn spawn_scheduler_reader(stream: crate::seal::LinkReader, tx: Sender<Event>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("tf-sched-reader".into())
        .spawn(move || {
            let mut r = FrameReader::new(stream);
            loop {
                let event = match r.read_batch::<ToWorker>() {
                    Ok(Some((msgs, _))) => Event::Scheduler(msgs),
                    Ok(None) => {
                        Event::SchedulerClosed("the scheduler closed the connection".into())
                    }
                    Err(e) => {
                        Event::SchedulerClosed(format!("connection to the scheduler failed: {e}"))
                    }
                };
                let last = matches!(event, Event::SchedulerClosed(_));
                if tx.send(event).is_err() || last {
                    return;
                }
            }
        })?;
    Ok(())
}

/// The IO half of the worker: feeds events to the state, carries out its
/// instructions, measures memory, reports to the scheduler.
struct WorkerLoop {
    cfg: WorkerConfig,
    state: WorkerState,
    store: Arc<Store>,
    counters: Arc<Counters>,
    tx: Sender<Event>,
    pool: Pool,
    peers: HashMap<String, Sender<Vec<TaskId>>>,
    out: Vec<ToScheduler>,
    /// Tasks the executors began since the last batch to the scheduler.
    started: Vec<TaskId>,
    /// Executors waiting to hear that their start was sent: (executor, ticket).
    start_acks: Vec<(usize, u64)>,
    last_memory_check: Option<Instant>,
    /// Send metrics with the next batch (e.g. paused state changed).
    report_now: bool,
    /// The state's instructions being carried out, and the inputs they
    /// caused (both kept allocated).
    instructions: Vec<Instruction>,
    pending: Vec<Input>,
    /// The time of the batch of events being handled.
    now: Instant,
    /// When the scheduler last sent anything.
    last_word: Instant,
    warned_silence: bool,
    /// The scheduler's run ([`ToWorker::SchedulerRun`]; 0 until it says).
    run_id: u64,
}

impl WorkerLoop {
    fn run(
        &mut self,
        rx: Receiver<Event>,
        to_sched: &mut FrameWriter<crate::seal::LinkWriter>,
    ) -> io::Result<WorkerExit> {
        let mut last_beat = Instant::now();
        let mut last_transfers = 0u64;
        loop {
            let first = match rx.recv_timeout(self.cfg.heartbeat) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    return Ok(WorkerExit::SchedulerLost("internal channel closed".into()))
                }
            };
            self.now = Instant::now();
            let mut batch: Vec<Event> = first.into_iter().collect();
            while batch.len() < 10_000 {
                match rx.try_recv() {
                    Ok(ev) => batch.push(ev),
                    Err(_) => break,
                }
            }
            let exit = batch
                .into_iter()
                .find_map(|ev| self.event(ev))
                .or_else(|| self.tick())
                .or_else(|| self.manage_memory(false));
            if let Some(exit) = exit {
                let _ = to_sched.send(&self.out, &[]);
                if let WorkerExit::Shutdown(r) | WorkerExit::SchedulerLost(r) = &exit {
                    log_at!(2, "worker", "worker '{}' stopping: {r}", self.cfg.name);
                }
                return Ok(exit);
            }
            // Report at the heartbeat interval, and at once when transfer
            // counters moved, so status reflects peer traffic promptly.
            let transfers = self.counters.transfers();
            if last_beat.elapsed() >= self.cfg.heartbeat
                || transfers != last_transfers
                || self.report_now
            {
                self.report_now = false;
                last_beat = Instant::now();
                crate::bufpool::trim(POOL_IDLE);
                last_transfers = transfers;
                self.out.push(ToScheduler::Heartbeat(self.metrics()));
            }
            if let Err(e) = self.flush(to_sched) {
                return Ok(WorkerExit::SchedulerLost(format!(
                    "cannot write to the scheduler: {e}"
                )));
            }
        }
    }

    /// Send what is queued: the starts in a frame of their own ahead of the
    /// batch (one write with it), so the scheduler learns a task started
    /// before it learns the task finished; then release the executors that
    /// waited for their starts to be sent.
    fn flush(&mut self, to_sched: &mut FrameWriter<crate::seal::LinkWriter>) -> io::Result<()> {
        if !self.started.is_empty() {
            to_sched.write_batch(
                &[ToScheduler::Started {
                    ids: std::mem::take(&mut self.started),
                }],
                &[],
            )?;
        }
        if self.out.is_empty() {
            to_sched.flush()?;
        } else {
            to_sched.send(&self.out, &[])?;
        }
        self.out.clear();
        if !self.start_acks.is_empty() {
            self.pool.acknowledge(self.start_acks.drain(..));
        }
        Ok(())
    }

    /// One event from the channel; `Some` when the worker is to stop.
    fn event(&mut self, ev: Event) -> Option<WorkerExit> {
        match ev {
            Event::Scheduler(msgs) => {
                self.last_word = self.now;
                if self.warned_silence {
                    self.warned_silence = false;
                    log_at!(1, "worker", "worker '{}': the scheduler speaks again", self.cfg.name);
                }
                msgs.into_iter().find_map(|m| {
                    if let ToWorker::Welcome { worker_id } = &m {
                        log_at!(3, "worker", "registered as worker {worker_id}");
                    }
                    self.message(m)
                })
            }
            Event::SchedulerClosed(reason) => Some(WorkerExit::SchedulerLost(reason)),
            Event::Exec(Report::Started { id, exec, ticket }) => {
                self.started.push(id);
                if ticket > 0 {
                    self.start_acks.push((exec, ticket));
                }
                None
            }
            Event::Exec(Report::Done {
                id,
                result,
                duration,
                exec,
            }) => {
                let start_us = util::unix_micros().saturating_sub(duration.as_micros() as u64);
                let thread = exec as u32;
                match result {
                Ok(data) => {
                    // A result nobody runs here any more is dropped.
                    let inline_wanted = self.state.wants_inline(id)?;
                    let nbytes = data.nbytes();
                    let value = Arc::new(Value::new(data));
                    let inline = inline_wanted
                        .then(|| value.wire())
                        .filter(|(_, body)| body.len() <= crate::protocol::INLINE_RESULT_MAX)
                        .map(|(tag, body)| (tag, body.to_vec()));
                    self.store.insert(id, value);
                    self.spill_to_target();
                    self.input(Input::Finished {
                        id,
                        nbytes,
                        inline,
                        duration,
                        start_us,
                        thread,
                    })
                }
                Err(error) => {
                    log_at!(3, "worker", "task {id} failed: {error}");
                    self.input(Input::Erred {
                        id,
                        error,
                        duration,
                        start_us,
                        thread,
                    })
                }
                }
            }
            Event::Fetch(FetchOutcome::Got { id, from, value, started_us, took }) => {
                log_at!(3, "worker", "fetched value of task {id} from peer {from}");
                let nbytes = value.nbytes();
                self.store.insert(id, value);
                self.spill_to_target();
                let transfer = Some(crate::protocol::Transfer { from, start_us: started_us, duration_us: took.as_micros() as u64 });
                self.input(Input::Fetched { dep: id, nbytes, transfer })
            }
            Event::Fetch(FetchOutcome::Failed { ids, from, error }) => {
                log_at!(1, "worker", "fetch from {from} failed: {error}");
                self.input(Input::FetchFailed { deps: ids, from })
            }
            Event::RetireRequested => self.input(Input::RetireRequested),
        }
    }

    fn tick(&mut self) -> Option<WorkerExit> {
        let now = Instant::now();
        let silent = now.saturating_duration_since(self.last_word);
        let limit = self.cfg.scheduler_timeout;
        if silent >= limit {
            return Some(WorkerExit::SchedulerLost(format!(
                "no word from the scheduler for {:.0} s (it pings every {} s): it is frozen, overloaded or cut off (--scheduler-timeout)",
                silent.as_secs_f64(),
                crate::protocol::PING_INTERVAL.as_secs()
            )));
        }
        if silent >= limit / 2 && !self.warned_silence {
            self.warned_silence = true;
            log_at!(1, "worker", "worker '{}': no word from the scheduler for {:.0} s; leaving after {:.0} s of silence (--scheduler-timeout)", self.cfg.name, silent.as_secs_f64(), limit.as_secs_f64());
        }
        if self.state.lifetime_reached(now) {
            log_at!(
                2,
                "worker",
                "worker '{}' reached its lifetime",
                self.cfg.name
            );
        }
        self.input_at(Input::Tick, now)
    }

    fn input(&mut self, input: Input) -> Option<WorkerExit> {
        self.input_at(input, self.now)
    }

    /// Feed the state and carry out its instructions (which may feed it
    /// again: a task whose inputs cannot be loaded).
    fn input_at(&mut self, input: Input, now: Instant) -> Option<WorkerExit> {
        self.state.handle(input, now, &*self.store);
        self.after_state(now)
    }

    /// A message from the scheduler, straight to the state.
    fn message(&mut self, m: ToWorker) -> Option<WorkerExit> {
        match m {
            ToWorker::PythonPlugin { name, data } => {
                crate::log_at!(2, "worker", "worker plugin '{name}' registered: each Python executor runs it before its next task");
                self.cfg.python.add_plugin(name, data);
                return None;
            }
            ToWorker::SchedulerRun { run } => {
                self.run_id = run;
                return None;
            }
            ToWorker::Renumber { pairs } => {
                log_at!(2, "worker", "worker '{}': the scheduler took over {} of its values", self.cfg.name, pairs.len());
                self.store.renumber(&pairs);
                return None;
            }
            _ => {}
        }
        self.state.message(m, &*self.store);
        self.after_state(self.now)
    }

    /// Take what the state produced: its messages go to the scheduler's
    /// batch, its instructions are carried out, and the inputs those cause
    /// (a task whose inputs cannot be loaded) are fed back until none is left.
    fn after_state(&mut self, now: Instant) -> Option<WorkerExit> {
        loop {
            let from = self.out.len();
            self.state.take_messages_into(&mut self.out);
            if self.out[from..].iter().any(|m| matches!(m, ToScheduler::RetireMe)) {
                log_at!(2, "worker", "worker '{}' retiring (signal or --lifetime): asking the scheduler to move its data and let it go", self.cfg.name);
            }
            let mut instructions = std::mem::take(&mut self.instructions);
            self.state.take_instructions_into(&mut instructions);
            let exit = self.carry_out(&mut instructions);
            self.instructions = instructions;
            if exit.is_some() {
                self.pending.clear();
                return exit;
            }
            let input = self.pending.pop()?;
            self.state.handle(input, now, &*self.store);
        }
    }

    /// Carry out (and empty) `instructions`; inputs they cause go on `pending`.
    fn carry_out(&mut self, instructions: &mut Vec<Instruction>) -> Option<WorkerExit> {
        for ins in instructions.drain(..) {
            match ins {
                Instruction::Fetch { peer, dep } => {
                    if let Some(failed) = self.fetch(peer, dep) {
                        self.pending.push(failed);
                    }
                }
                Instruction::Execute(x) => {
                    if let Some(missing) = self.execute(x) {
                        self.pending.push(missing);
                    }
                }
                Instruction::DropValue(id) => self.store.remove(id),
                Instruction::Cancel(id) => self.pool.cancel(id),
                Instruction::ForgetPeer(peer) => {
                    self.peers.remove(&peer);
                }
                Instruction::Exit(exit) => return Some(exit),
            }
        }
        None
    }

    fn fetch(&mut self, peer: String, dep: TaskId) -> Option<Input> {
        let sender = self.peers.entry(peer.clone()).or_insert_with(|| {
            let tx = self.tx.clone();
            dataplane::spawn_fetcher(
                peer.clone(),
                self.cfg.secret.clone(),
                self.counters.clone(),
                move |o| tx.send(Event::Fetch(o)).is_ok(),
            )
        });
        if sender.send(vec![dep]).is_err() {
            log_at!(1, "worker", "fetch from {peer} failed: its fetcher stopped");
            return Some(Input::FetchFailed { deps: vec![dep], from: peer });
        }
        None
    }

    /// Load the task's inputs and hand it to the executors.
    fn execute(&mut self, x: state::Execute) -> Option<Input> {
        let mut args = Vec::with_capacity(self.state.inputs(x.id).len());
        for &d in self.state.inputs(x.id) {
            match self.store.get(d) {
                Ok(Some(v)) => args.push(v),
                Ok(None) => return Some(Input::ArgsMissing { id: x.id, dep: d }),
                Err(e) => {
                    log_at!(0, "worker", "cannot read back spilled value of task {d}: {e}");
                    return Some(Input::ArgsMissing { id: x.id, dep: d });
                }
            }
        }
        if !self.pool.submit(Job {
            id: x.id,
            key: x.key,
            expr: x.expr,
            args,
            timeout: x.timeout,
            cache: x.cache,
        }) {
            log_at!(
                0,
                "worker",
                "the executors are gone; task {} cannot run",
                x.id
            );
        }
        None
    }

    fn spill_to_target(&mut self) {
        memory::spill_to_target(&self.cfg.memory, &mut StoreProbe(&self.store, &self.cfg.python));
    }

    /// Apply the memory policy ([`memory::check`]), reading the process's
    /// memory at most every 10 ms unless `force`.
    fn manage_memory(&mut self, force: bool) -> Option<WorkerExit> {
        let limit = self.cfg.memory.limit?;
        if !force
            && self
                .last_memory_check
                .is_some_and(|t| t.elapsed() < Duration::from_millis(10))
        {
            self.spill_to_target();
            return None;
        }
        self.last_memory_check = Some(Instant::now());
        match memory::check(&self.cfg.memory, &mut StoreProbe(&self.store, &self.cfg.python))? {
            memory::Verdict::Terminate { rss } => {
                log_at!(0, "worker", "worker '{}' uses {} of its {} memory limit (over {:.0} %): exiting so the node does not run out of memory",
                    self.cfg.name, util::format_bytes(rss), util::format_bytes(limit), self.cfg.memory.terminate.unwrap_or(1.0) * 100.0);
                Some(WorkerExit::MemoryLimit(rss))
            }
            memory::Verdict::Run { paused, rss } => {
                if paused != self.state.paused() {
                    log_at!(
                        1,
                        "worker",
                        "worker '{}' {} at {} of its {} memory limit",
                        self.cfg.name,
                        if paused {
                            "paused (starting no new tasks)"
                        } else {
                            "resumed"
                        },
                        util::format_bytes(rss),
                        util::format_bytes(limit)
                    );
                    self.report_now = true;
                    return self.input(Input::Paused(paused));
                }
                None
            }
        }
    }

    fn metrics(&self) -> WorkerMetrics {
        use std::sync::atomic::Ordering::Relaxed;
        let st = self.store.stats();
        let c = &self.counters;
        WorkerMetrics {
            rss: util::rss_bytes() + crate::shm::live_bytes(),
            cpu_us: util::cpu_micros() + self.cfg.python.executors_cpu_us(),
            leaves_at: self.state.retire_at().map(|t| util::unix_time() + t.saturating_duration_since(Instant::now()).as_secs_f64()).unwrap_or(0.0),
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
            fetch_us: c.fetch_us.load(Relaxed),
            paused: self.state.paused(),
            storage_error: st.spill_error.clone(),
            memory_limit: self.cfg.memory.limit.unwrap_or(0),
            executing: self.state.executing(),
            fetched_from_peers: c.fetched.load(Relaxed),
            fetched_bytes: c.fetched_bytes.load(Relaxed),
            served_to_peers: c.served.load(Relaxed),
            served_bytes: c.served_bytes.load(Relaxed),
            data_connections_from: c
                .connections_from
                .lock()
                .expect("lock")
                .iter()
                .map(|a| a.to_string())
                .collect(),
        }
    }
}

/// The real process and store, for the memory policy.
/// The last spill error logged.
static LAST_SPILL_ERROR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The store, and the Python executors whose memory counts as the worker's.
struct StoreProbe<'a>(&'a Store, &'a PythonSettings);

impl memory::Probe for StoreProbe<'_> {
    fn held(&self) -> u64 {
        self.0.stats().memory_bytes
    }
    /// The worker's own pages, its values in shared memory (whose pages it
    /// may never touch itself: counted in full, so pages it did touch count
    /// twice) and its executors'.
    fn rss(&mut self) -> u64 {
        util::rss_bytes() + crate::shm::live_bytes() + self.1.executors_rss()
    }
    fn spill_until(&mut self, target: u64) {
        match self.0.spill_until(target) {
            Ok(0) => {}
            Ok(n) => log_at!(3, "worker", "spilled {} to disk", util::format_bytes(n)),
            // Said once per new error, not at every check.
            Err(e) => {
                let text = e.to_string();
                let mut last = LAST_SPILL_ERROR.lock().unwrap_or_else(|p| p.into_inner());
                if last.as_deref() != Some(text.as_str()) {
                    log_at!(0, "worker", "{text}; values held in memory cannot be moved to disk, so the worker may pause (the scheduler is told)");
                    *last = Some(text);
                }
            }
        }
    }
    fn release_pool(&mut self) -> usize {
        crate::bufpool::clear()
    }
}

/// The decisions ask the store what it holds.
impl state::Held for Store {
    fn contains(&self, id: TaskId) -> bool {
        Store::contains(self, id)
    }
    fn in_memory(&self, id: TaskId) -> bool {
        Store::in_memory(self, id)
    }
    fn nbytes(&self, id: TaskId) -> Option<u64> {
        Store::nbytes(self, id)
    }
}
