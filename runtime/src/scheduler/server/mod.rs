//! IO around the scheduler state machine: accept connections, authenticate,
//! decode batches into calls on [`SchedulerState`], and flush the messages it
//! produces, batched per connection. One thread owns the state; one more
//! runs every connection on an event loop (`io.rs`).

use super::state::{ClientId, Event as StateEvent, Outcome, Recorder, SchedulerConfig, SchedulerState, WorkerInfo};
use crate::log_at;
use crate::journal::{self, RecordRef, Resume};
use crate::protocol::{StatusReport, TaskDef, TaskId, ToClient, ToScheduler, ToWorker, WorkerId};
use crate::schedfile::SchedulerFile;
use crate::telemetry::{Telemetry, TelemetryReport, TransferRun};
use crate::util;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::thread::JoinHandle;

mod io;
mod resume;
use io::{Io, Out};
use resume::{open_journal, Resuming};
use std::time::{Duration, Instant};

/// How to run a scheduler.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Address to advertise, if different from the listening one.
    pub contact: Option<String>,
    pub secret: Vec<u8>,
    pub scheduler_file: Option<PathBuf>,
    /// The launch this scheduler belongs to (`taskfarm mpi`): written in the
    /// file, and a second copy only that launch's ranks read
    /// ([`crate::schedfile::job_path`]).
    pub job: Option<String>,
    /// Exit after this long with no clients and no work.
    pub idle_timeout: Option<Duration>,
    pub state: SchedulerConfig,
    /// Serve the dashboard and `/metrics` here.
    pub dashboard: Option<crate::dashboard::DashboardSpec>,
    /// The result cache (`--cache DIR`).
    pub cache: Option<crate::cache::Cache>,
    /// The journal (`--journal FILE`): resumed from at start, kept since.
    pub journal: Option<PathBuf>,
    /// Resuming from the journal: wait at most this long for the workers it
    /// names to come back with their values before resuming without them.
    pub reattach_timeout: Duration,
}

/// The default of [`ServerConfig::reattach_timeout`].
pub const REATTACH_TIMEOUT: Duration = Duration::from_secs(30);

type ConnId = u64;

enum Event {
    /// A worker registered; `held` and `run`: the values it offers from a
    /// scheduler run before this one (a worker that came back).
    Worker { conn: ConnId, info: WorkerInfo, held: Vec<(TaskId, u64)>, run: u64 },
    Client { conn: ConnId, name: String },
    Messages { conn: ConnId, msgs: Vec<ToScheduler> },
    Closed { conn: ConnId, reason: String },
    Stop { reason: String },
    /// From a [`Controller`] in the same process.
    Status { reply: Sender<StatusReport> },
    Retire { names: Vec<String>, reply: Sender<Vec<String>> },
    /// Status and telemetry since a sequence number (the dashboard).
    Observe { since: u64, max: usize, reply: Sender<Box<Observation>> },
}

/// What the dashboard shows: the status and what ran since it last asked.
pub struct Observation {
    pub status: StatusReport,
    pub telemetry: TelemetryReport,
}

/// A running scheduler.
pub struct Scheduler {
    pub address: String,
    /// The cluster's secret (from the journal, when resuming from one).
    pub secret: Vec<u8>,
    /// The dashboard's URL with its token, if it serves one.
    pub dashboard_url: Option<String>,
    events: Sender<Event>,
    core: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Ask the scheduler to shut down (workers are told to exit).
    pub fn stop(&self, reason: &str) {
        let _ = self.events.send(Event::Stop { reason: reason.to_string() });
    }

    /// Wait until the scheduler has shut down.
    pub fn join(mut self) {
        if let Some(h) = self.core.take() {
            let _ = h.join();
        }
    }

    /// A handle that can stop the scheduler from another thread (e.g. a
    /// signal handler thread).
    pub fn stopper(&self) -> impl Fn(&str) + Send + 'static {
        let tx = self.events.clone();
        move |reason: &str| {
            let _ = tx.send(Event::Stop { reason: reason.to_string() });
        }
    }

    /// A handle for in-process components (adaptive scaling) to query and
    /// steer the scheduler without a network connection.
    pub fn controller(&self) -> Controller {
        Controller { events: self.events.clone() }
    }
}

/// Queries and commands from the scheduler's own process; each call returns
/// `None` once the scheduler has stopped.
#[derive(Clone)]
pub struct Controller {
    events: Sender<Event>,
}

impl Controller {
    pub fn status(&self) -> Option<StatusReport> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.events.send(Event::Status { reply }).ok()?;
        rx.recv().ok()
    }

    /// The status, and the task stream from sequence number `since` on
    /// (at most the newest `max` runs and transfers).
    pub fn observe(&self, since: u64, max: usize) -> Option<Box<Observation>> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.events.send(Event::Observe { since, max, reply }).ok()?;
        rx.recv().ok()
    }

    /// Retire these workers gracefully; returns the names now retiring.
    pub fn retire(&self, names: Vec<String>) -> Option<Vec<String>> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.events.send(Event::Retire { names, reply }).ok()?;
        rx.recv().ok()
    }
}

/// Bind, write the scheduler file, and start serving in background threads.
pub fn start(mut cfg: ServerConfig) -> std::io::Result<Scheduler> {
    let (resume, journal_lock) = match &cfg.journal {
        Some(path) => open_journal(path)?,
        None => (None, None),
    };
    if let Some(r) = &resume {
        // Workers that come back, and the values they serve each other,
        // authenticate with the cluster's secret: it stays.
        cfg.secret = r.secret.clone();
    }
    // Many peers, many connections: the usual soft limit of 1,024 files is low.
    crate::gate::raise_fd_limit();
    let listener = TcpListener::bind(cfg.listen).map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.listen)))?;
    let local = listener.local_addr()?;
    let address = match &cfg.contact {
        Some(c) => {
            let c = c.strip_prefix("tcp://").unwrap_or(c);
            if c.contains(':') { util::format_address(&util::parse_address(c).map_err(std::io::Error::other)?) } else { format!("tcp://{c}:{}", local.port()) }
        }
        None => util::format_address(&local),
    };
    let (tx, rx) = unbounded();
    let dashboard = match &cfg.dashboard {
        Some(spec) => {
            let d = crate::dashboard::start(spec, &cfg.secret, Controller { events: tx.clone() })?;
            log_at!(2, "scheduler", "dashboard at {}", d.url);
            Some(d)
        }
        None => None,
    };
    let mut file = SchedulerFile::new(&address, &cfg.secret);
    file.job = cfg.job.clone();
    let paths: Vec<PathBuf> = match (&cfg.scheduler_file, &cfg.job) {
        (Some(p), Some(job)) => vec![crate::schedfile::job_path(p, job), p.clone()],
        (Some(p), None) => vec![p.clone()],
        (None, _) => Vec::new(),
    };
    for path in &paths {
        file.write(path).map_err(|e| std::io::Error::new(e.kind(), format!("cannot write scheduler file {}: {e}", path.display())))?;
        log_at!(2, "scheduler", "scheduler file written to {}", path.display());
    }
    log_at!(2, "scheduler", "listening on {address}");
    let io = io::start(listener, cfg.secret.clone(), tx.clone())?;
    let dashboard_url = dashboard.as_ref().map(|d| d.url.clone()).unwrap_or_default();
    let dashboard_url_out = dashboard_url.clone();
    let secret_out = cfg.secret.clone();
    let core_tx = tx.clone();
    let addr = address.clone();
    let core = std::thread::Builder::new().name("tf-scheduler".into()).spawn(move || {
        let mut core = Core::new(cfg, addr, core_tx, dashboard_url, resume, io);
        core.run(rx);
        drop(core);
        drop(journal_lock);
        drop(dashboard);
        for path in &paths {
            file.remove_if_ours(path);
        }
    })?;
    Ok(Scheduler { address, secret: secret_out, dashboard_url: (!dashboard_url_out.is_empty()).then_some(dashboard_url_out), events: tx, core: Some(core) })
}

enum Peer {
    Worker { id: WorkerId },
    Client { id: ClientId },
}

struct Core {
    cfg: ServerConfig,
    address: String,
    started: f64,
    t0: Instant,
    state: SchedulerState,
    /// Every connection's IO.
    io: Io,
    conns: HashMap<ConnId, Peer>,
    worker_conn: HashMap<WorkerId, ConnId>,
    client_conn: HashMap<ClientId, ConnId>,
    idle_since: Instant,
    stop: Option<String>,
    _self_tx: Sender<Event>,
    /// `TASKFARM_RECORD=FILE`: every event given to the state, for replay.
    recorder: Option<Recorder>,
    /// Per-prefix counters and the task stream.
    telemetry: Telemetry,
    /// The dashboard's URL with its token ("": none), for status reports.
    dashboard_url: String,
    /// Cache keys of the tasks submitted so far (with `--cache`).
    cache_keys: HashMap<String, crate::cache::CacheKey>,
    /// What planning graphs against the cache did, summed.
    cache_plans: crate::cache::Plan,
    /// This scheduler's run: a random number workers name when they come
    /// back with values.
    run: u64,
    /// The journal being written (none while resuming: the old file stays
    /// as it is until the resumed graphs are in).
    journal: Option<journal::Writer>,
    /// Resuming from the journal, waiting for its workers to come back.
    resuming: Option<Resuming>,
    /// The client that holds the resumed graphs' wanted keys, and those keys
    /// no client has asked for again yet.
    journal_client: Option<ClientId>,
    journal_wants: HashSet<String>,
}


impl Core {
    fn status(&self, now: f64) -> StatusReport {
        let mut s = self.state.status(now, &self.address, self.started);
        s.dashboard = self.dashboard_url.clone();
        if self.cfg.cache.is_some() {
            let p = self.cache_plans;
            s.stats.extend([("cache_loads".into(), p.loads), ("cache_stores".into(), p.stores), ("cache_uncacheable".into(), p.uncacheable)]);
        }
        s
    }

    fn new(cfg: ServerConfig, address: String, self_tx: Sender<Event>, dashboard_url: String, resume: Option<Resume>, io: Io) -> Core {
        let state = SchedulerState::new(cfg.state.clone());
        let recorder = std::env::var_os("TASKFARM_RECORD").filter(|p| !p.is_empty()).and_then(|p| {
            let path = std::path::PathBuf::from(p);
            match Recorder::create(&path, &cfg.state) {
                Ok(r) => {
                    log_at!(2, "scheduler", "recording every event to {} (TASKFARM_RECORD)", path.display());
                    Some(r)
                }
                Err(e) => {
                    log_at!(0, "scheduler", "cannot record events to {} (TASKFARM_RECORD): {e}", path.display());
                    None
                }
            }
        });
        Core {
            cfg,
            address,
            started: util::unix_time(),
            t0: Instant::now(),
            state,
            io,
            conns: HashMap::new(),
            worker_conn: HashMap::new(),
            client_conn: HashMap::new(),
            idle_since: Instant::now(),
            stop: None,
            _self_tx: self_tx,
            recorder,
            telemetry: Telemetry::new(),
            dashboard_url,
            cache_keys: HashMap::new(),
            cache_plans: Default::default(),
            run: u64::from_le_bytes(util::random_bytes(8).try_into().expect("8 bytes")) | 1,
            journal: None,
            resuming: None,
            journal_client: None,
            journal_wants: HashSet::new(),
        }
        .with_journal(resume)
    }


    /// Give the state an event (recording it first, when recording).
    fn apply(&mut self, event: StateEvent, now: f64) -> Outcome {
        if let Some(r) = &mut self.recorder {
            if let Err(e) = r.event(now, &event) {
                log_at!(0, "scheduler", "event recording stopped: {e}");
                self.recorder = None;
            }
        }
        self.state.handle(event, now)
    }

    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn run(&mut self, rx: Receiver<Event>) {
        if self.resuming.as_ref().is_some_and(|r| r.expected.is_empty()) {
            let now = self.now();
            self.finish_resuming(now);
            self.flush();
        }
        let tick = Duration::from_millis(500);
        let mut last_tick = Instant::now();
        let mut last_ping = Instant::now();
        while self.stop.is_none() {
            match rx.recv_timeout(tick) {
                Ok(ev) => {
                    self.handle(ev);
                    // Drain what else is queued before flushing, so replies batch.
                    let mut n = 0;
                    while let Ok(ev) = rx.try_recv() {
                        self.handle(ev);
                        n += 1;
                        if n >= 10_000 || self.stop.is_some() {
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_tick.elapsed() >= tick {
                last_tick = Instant::now();
                let now = self.now();
                if let Outcome::TimedOut(lost) = self.apply(StateEvent::CheckTimeouts, now) {
                    for w in lost {
                        self.drop_worker_conn(w);
                    }
                }
                self.apply(StateEvent::Balance, now);
                if self.resuming.as_ref().is_some_and(|r| Instant::now() >= r.deadline) {
                    self.finish_resuming(now);
                }
                self.compact_journal_if_done();
                self.check_idle();
                if last_ping.elapsed() >= crate::protocol::PING_INTERVAL {
                    last_ping = Instant::now();
                    self.ping_all();
                }
            }
            self.flush();
        }
        let reason = self.stop.clone().unwrap_or_else(|| "stopped".into());
        log_at!(2, "scheduler", "shutting down: {reason}");
        if let Some(j) = &mut self.journal {
            j.sync();
        }
        if let Some(r) = self.recorder.take() {
            if let Err(e) = r.finish(&self.state) {
                log_at!(0, "scheduler", "cannot finish the event recording: {e}");
            }
        }
        for (&conn, peer) in &self.conns {
            self.io.send(
                conn,
                match peer {
                    Peer::Worker { .. } => Out::Worker(vec![ToWorker::Shutdown { reason: reason.clone() }]),
                    Peer::Client { .. } => Out::Client(vec![ToClient::ShuttingDown { reason: reason.clone() }]),
                },
            );
        }
        // Give the goodbyes a moment to be written, then close.
        self.io.shutdown(Duration::from_secs(2));
    }

    /// Tell every worker and client the scheduler is alive.
    fn ping_all(&self) {
        for (&conn, peer) in &self.conns {
            self.io.send(
                conn,
                match peer {
                    Peer::Worker { .. } => Out::Worker(vec![ToWorker::Ping]),
                    Peer::Client { .. } => Out::Client(vec![ToClient::Ping]),
                },
            );
        }
    }

    fn check_idle(&mut self) {
        // Values held for the journal's client alone keep nobody busy.
        let busy = if self.journal_client.is_some() { self.real_clients() > 0 || !self.nothing_active() } else { self.state.client_count() > 0 || !self.state.is_idle() };
        if busy {
            self.idle_since = Instant::now();
        } else if let Some(limit) = self.cfg.idle_timeout {
            if self.idle_since.elapsed() >= limit {
                self.stop = Some(format!("idle for {:.0} s (--idle-timeout)", limit.as_secs_f64()));
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        let now = self.now();
        match ev {
            Event::Worker { conn, info, held, run } => {
                let (name, address, nthreads) = (info.name.clone(), info.address.clone(), info.nthreads);
                let Outcome::Worker(id) = self.apply(StateEvent::AddWorker(info), now) else { unreachable!("AddWorker answers with the worker") };
                self.telemetry.worker(id, &name, &address, nthreads);
                self.io.send(conn, Out::Worker(vec![ToWorker::SchedulerRun { run: self.run }]));
                self.journal(RecordRef::WorkerJoined { worker: id, name: &name });
                if !held.is_empty() {
                    match &mut self.resuming {
                        Some(r) if run == r.resume.run => {
                            log_at!(2, "scheduler", "worker '{name}' came back with {} values", held.len());
                            r.offered.push((id, held));
                        }
                        _ => {
                            log_at!(2, "scheduler", "worker '{name}' came back with {} values of a scheduler this one does not resume; it drops them", held.len());
                            self.io.send(conn, Out::Worker(vec![ToWorker::Renumber { pairs: Vec::new() }]));
                        }
                    }
                }
                self.worker_conn.insert(id, conn);
                self.conns.insert(conn, Peer::Worker { id });
                if let Some(r) = &mut self.resuming {
                    r.expected.remove(&name);
                    if r.expected.is_empty() {
                        self.finish_resuming(now);
                    }
                }
            }
            Event::Client { conn, name } => {
                let Outcome::Client(id) = self.apply(StateEvent::AddClient { name }, now) else { unreachable!("AddClient answers with the client") };
                self.client_conn.insert(id, conn);
                self.conns.insert(conn, Peer::Client { id });
            }
            Event::Closed { conn, reason } => match self.conns.remove(&conn) {
                Some(Peer::Worker { id, .. }) => {
                    self.worker_conn.remove(&id);
                    if let Some(r) = &mut self.resuming {
                        r.offered.retain(|(w, _)| *w != id);
                    }
                    self.journal(RecordRef::WorkerGone { worker: id });
                    self.apply(StateEvent::RemoveWorker { worker: id, reason }, now);
                }
                Some(Peer::Client { id, .. }) => {
                    self.client_conn.remove(&id);
                    if let Some(r) = &mut self.resuming {
                        r.held_back.retain(|(c, _)| *c != id);
                    }
                    self.journal(RecordRef::ClientGone { client: id });
                    self.apply(StateEvent::RemoveClient { client: id }, now);
                }
                None => {}
            },
            Event::Messages { conn, msgs } => match self.conns.get(&conn) {
                Some(Peer::Worker { id, .. }) => {
                    let id = *id;
                    for m in msgs {
                        self.worker_message(id, m, now);
                    }
                }
                Some(Peer::Client { id, .. }) => {
                    let id = *id;
                    for m in msgs {
                        self.client_message(id, m, now);
                    }
                }
                None => {}
            },
            Event::Stop { reason } => self.stop = Some(reason),
            Event::Status { reply } => {
                let _ = reply.send(self.status(now));
            }
            Event::Retire { names, reply } => {
                if let Outcome::Retiring(names) = self.apply(StateEvent::RetireWorkers { names, all_idle: false }, now) {
                    let _ = reply.send(names);
                }
            }
            Event::Observe { since, max, reply } => {
                let status = self.status(now);
                let _ = reply.send(Box::new(Observation { status, telemetry: self.telemetry.since_at_most(since, max) }));
            }
        }
    }

    fn worker_message(&mut self, w: WorkerId, m: ToScheduler, now: f64) {
        let event = match m {
            ToScheduler::TaskFinished { id, nbytes, duration_us, start_us, thread, value } => {
                if let Some(key) = self.state.key_of(id) {
                    self.telemetry.ran(key, w, thread, start_us, duration_us, true);
                    if let Some(j) = &mut self.journal {
                        j.record(&RecordRef::Finished { worker: w, id, key });
                    }
                }
                StateEvent::TaskFinished { worker: w, id, nbytes, duration: duration_us as f64 * 1e-6, value }
            }
            ToScheduler::TaskErred { id, error, duration_us, start_us, thread } => {
                if let Some(key) = self.state.key_of(id) {
                    self.telemetry.ran(key, w, thread, start_us, duration_us, false);
                }
                StateEvent::TaskErred { worker: w, id, error }
            }
            ToScheduler::MissingData { id, dep, tried } => StateEvent::MissingData { worker: w, id, dep, tried },
            ToScheduler::Heartbeat(metrics) => StateEvent::Heartbeat { worker: w, metrics },
            ToScheduler::RetireMe => StateEvent::RetireMe { worker: w },
            ToScheduler::Started { ids } => StateEvent::Started { worker: w, ids },
            ToScheduler::Replicated { id, nbytes, transfer } => {
                if let (Some(j), Some(key)) = (&mut self.journal, self.state.key_of(id)) {
                    j.record(&RecordRef::Finished { worker: w, id, key });
                }
                if let Some(t) = transfer {
                    self.telemetry.transferred(TransferRun { worker: w, from: t.from, nbytes, start_us: t.start_us, duration_us: t.duration_us });
                }
                StateEvent::Replicated { worker: w, id, nbytes }
            }
            ToScheduler::ReplicateFailed { id } => StateEvent::ReplicateFailed { worker: w, id },
            ToScheduler::Stolen { ids, kept } => StateEvent::Stolen { worker: w, ids, kept },
            other => {
                log_at!(1, "scheduler", "worker {w} sent a message only clients may send; ignored: {}", short(&other));
                return;
            }
        };
        self.apply(event, now);
    }

    fn client_message(&mut self, c: ClientId, m: ToScheduler, now: f64) {
        if let Some(r) = &mut self.resuming {
            // Only what does not depend on the graphs is answered now.
            if !matches!(m, ToScheduler::StatusRequest | ToScheduler::ProgressRequest | ToScheduler::TelemetryRequest { .. } | ToScheduler::Shutdown) {
                r.held_back.push((c, m));
                return;
            }
        }
        match m {
            ToScheduler::UpdateGraph { mut tasks, wanted } => {
                let (n, n_wanted) = (tasks.len(), wanted.len());
                // As the client sent it: the cache may rewrite it below.
                let record = self.journal.as_ref().map(|_| {
                    let mut b = Vec::new();
                    journal::encode(&mut b, &RecordRef::Graph { client: c, tasks: &tasks, wanted: &wanted });
                    b
                });
                // Keys the journal's client held that this client asks for
                // are this client's from now on.
                let claimed: Vec<String> = if self.journal_wants.is_empty() { Vec::new() } else { wanted.iter().filter(|k| self.journal_wants.remove(k.as_str())).cloned().collect() };
                let intake = self.prepare_graph(&mut tasks, &wanted);
                if let Outcome::Graph(Err(error)) = self.apply(StateEvent::UpdateGraph { client: c, tasks, wanted }, now) {
                    log_at!(1, "scheduler", "rejected a graph of {n} tasks from client {c}: {error}");
                    self.send_client(c, ToClient::GraphRejected { error });
                    self.journal_wants.extend(claimed);
                } else {
                    if let (Some(j), Some(b)) = (&mut self.journal, record) {
                        j.record_encoded(&b);
                    }
                    if let (Some(jc), false) = (self.journal_client, claimed.is_empty()) {
                        log_at!(2, "scheduler", "client {c} asked again for {} keys of the resumed graphs", claimed.len());
                        self.journal(RecordRef::Released { client: jc, keys: &claimed });
                        self.apply(StateEvent::ReleaseKeys { client: jc, keys: claimed }, now);
                    }
                    self.graph_accepted(intake);
                    log_at!(3, "scheduler", "client {c} submitted {n} tasks, wants {n_wanted} keys");
                }
                if n >= 10_000 {
                    crate::alloc::release_freed_memory();
                }
            }
            ToScheduler::ReleaseKeys { keys } => {
                self.journal(RecordRef::Released { client: c, keys: &keys });
                self.apply(StateEvent::ReleaseKeys { client: c, keys }, now);
            }
            ToScheduler::StatusRequest => {
                let report: StatusReport = self.status(now);
                self.send_client(c, ToClient::Status(report));
            }
            ToScheduler::Shutdown => self.stop = Some(format!("shutdown requested by client {c}")),
            ToScheduler::RetireWorkers { names, all_idle } => {
                if let Outcome::Retiring(names) = self.apply(StateEvent::RetireWorkers { names, all_idle }, now) {
                    self.send_client(c, ToClient::Retiring { names });
                }
            }
            ToScheduler::PublishDataset { name, keys, data, replace } => {
                let n = keys.len();
                let error = match self.apply(StateEvent::PublishDataset { name: name.clone(), keys, data, replace }, now) {
                    Outcome::Published(Err(e)) => Some(e),
                    _ => None,
                };
                match &error {
                    None => log_at!(2, "scheduler", "client {c} published dataset '{name}' ({n} keys)"),
                    Some(e) => log_at!(1, "scheduler", "client {c} could not publish dataset '{name}': {e}"),
                }
                self.send_client(c, ToClient::Published { name, error });
            }
            ToScheduler::UnpublishDataset { name } => {
                self.apply(StateEvent::UnpublishDataset { name }, now);
            }
            ToScheduler::GetDataset { name } => {
                let found = self.state.dataset(&name).map(|d| (d.keys.clone(), d.data.clone()));
                self.send_client(c, ToClient::Dataset { name, found });
            }
            ToScheduler::RegisterPlugin { name, data } => {
                log_at!(2, "scheduler", "client {c} registered worker plugin '{name}'");
                self.apply(StateEvent::RegisterPlugin { name, data }, now);
            }
            ToScheduler::ProgressRequest => {
                let p = self.telemetry.progress();
                self.send_client(c, ToClient::Progress(p));
            }
            ToScheduler::TelemetryRequest { since } => {
                let t = self.telemetry.since(since);
                self.send_client(c, ToClient::Telemetry(Box::new(t)));
            }
            ToScheduler::KeyStatesRequest { keys } => {
                let states = keys.iter().map(|k| self.state.state_of(k).map(|s| s.name()).unwrap_or("unknown").to_string()).collect();
                self.send_client(c, ToClient::KeyStates(states));
            }
            ToScheduler::ListDatasets => {
                let names = self.state.dataset_names();
                self.send_client(c, ToClient::Datasets { names });
            }
            other => log_at!(1, "scheduler", "client {c} sent a message only workers may send; ignored: {}", short(&other)),
        }
    }

    /// Before a graph goes to the state: with the result cache, drop the
    /// tasks the scheduler already has (they keep their task, planned when
    /// they came) and plan the rest against the cache. Returns the plan and
    /// the key prefixes of the new tasks, for [`Core::graph_accepted`].
    fn prepare_graph(&mut self, tasks: &mut Vec<TaskDef>, wanted: &[String]) -> (Option<crate::cache::Plan>, Vec<u32>) {
        let state = &self.state;
        let planned = match &self.cfg.cache {
            Some(cache) => {
                tasks.retain(|d| state.task_id(&d.key).is_none());
                Some(crate::cache::plan(cache, tasks, wanted, &mut self.cache_keys))
            }
            None => None,
        };
        // With the cache, every task left is new (and cache loads keep their keys).
        let new = tasks.iter().filter(|d| planned.is_some() || state.task_id(&d.key).is_none()).map(|d| self.telemetry.prefix_index(&d.key)).collect();
        (planned, new)
    }

    /// The state took a graph prepared by [`Core::prepare_graph`]: count it.
    fn graph_accepted(&mut self, (planned, new): (Option<crate::cache::Plan>, Vec<u32>)) {
        if let Some(p) = planned {
            log_at!(3, "scheduler", "result cache: {} tasks loaded, {} to store, {} not cacheable", p.loads, p.stores, p.uncacheable);
            self.cache_plans.loads += p.loads;
            self.cache_plans.stores += p.stores;
            self.cache_plans.uncacheable += p.uncacheable;
        }
        self.telemetry.submitted(&new);
    }

    fn send_client(&mut self, c: ClientId, m: ToClient) {
        if let Some(&conn) = self.client_conn.get(&c) {
            self.io.send(conn, Out::Client(vec![m]));
        }
    }

    fn drop_worker_conn(&mut self, w: WorkerId) {
        if let Some(conn) = self.worker_conn.remove(&w) {
            self.conns.remove(&conn);
            self.io.send(conn, Out::Close);
        }
    }

    /// Route what the state produced, one batch per connection.
    fn flush(&mut self) {
        if let Some(j) = &mut self.journal {
            j.flush();
        }
        for line in self.state.take_logs() {
            log_at!(2, "scheduler", "{line}");
        }
        for line in self.state.take_debug_logs() {
            log_at!(3, "scheduler", "{line}");
        }
        let (to_workers, to_clients) = self.state.take_outgoing();
        let mut per_worker: HashMap<WorkerId, Vec<ToWorker>> = HashMap::new();
        for (w, m) in to_workers {
            per_worker.entry(w).or_default().push(m);
        }
        for (w, batch) in per_worker {
            if let Some(&conn) = self.worker_conn.get(&w) {
                self.io.send(conn, Out::Worker(batch));
            }
        }
        let mut per_client: HashMap<ClientId, Vec<ToClient>> = HashMap::new();
        for (c, m) in to_clients {
            per_client.entry(c).or_default().push(m);
        }
        for (c, batch) in per_client {
            if let Some(&conn) = self.client_conn.get(&c) {
                self.io.send(conn, Out::Client(batch));
            }
        }
        self.io.commit();
    }
}

fn short(m: &ToScheduler) -> String {
    let s = format!("{m:?}");
    if s.len() > 80 {
        format!("{}...", &s[..s.char_indices().nth(80).map(|(i, _)| i).unwrap_or(s.len())])
    } else {
        s
    }
}

