//! The one entry point: [`SchedulerState::handle`] takes an [`Event`] and
//! the time, so that a run is a sequence of `(now, event)` that can be
//! recorded ([`Recorder`], switched on by `TASKFARM_RECORD=FILE` on the
//! scheduler) and replayed exactly ([`replay`]): a bug seen in production
//! becomes a test.

use super::*;
use serde::{Deserialize, Serialize};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

/// Everything that happens to the scheduler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    AddWorker(WorkerInfo),
    RemoveWorker { worker: WorkerId, reason: String },
    AddClient { name: String },
    RemoveClient { client: ClientId },
    UpdateGraph { client: ClientId, tasks: Vec<TaskDef>, wanted: Vec<String> },
    /// A graph resumed from the journal, some of whose values workers that
    /// came back still hold (`(key, worker, nbytes)`).
    Resume { client: ClientId, tasks: Vec<TaskDef>, wanted: Vec<String>, held: Vec<(String, WorkerId, u64)> },
    ReleaseKeys { client: ClientId, keys: Vec<String> },
    RetireWorkers { names: Vec<String>, all_idle: bool },
    TaskFinished { worker: WorkerId, id: TaskId, nbytes: u64, duration: f64, value: Option<Payload> },
    TaskErred { worker: WorkerId, id: TaskId, error: String },
    MissingData { worker: WorkerId, id: TaskId, dep: TaskId, tried: Vec<String> },
    Heartbeat { worker: WorkerId, metrics: WorkerMetrics },
    RetireMe { worker: WorkerId },
    Started { worker: WorkerId, ids: Vec<TaskId> },
    Replicated { worker: WorkerId, id: TaskId, nbytes: u64 },
    ReplicateFailed { worker: WorkerId, id: TaskId },
    Stolen { worker: WorkerId, ids: Vec<TaskId>, kept: Vec<TaskId> },
    /// The periodic tick: workers silent for too long are lost.
    CheckTimeouts,
    /// The periodic tick: steal work for idle workers.
    Balance,
    PublishDataset { name: String, keys: Vec<String>, data: Vec<u8>, replace: bool },
    UnpublishDataset { name: String },
    RegisterPlugin { name: String, data: Vec<u8> },
}

/// What an event returns to the caller, where it returns anything.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    None,
    Worker(WorkerId),
    Client(ClientId),
    /// The graph was accepted, or why not.
    Graph(Result<(), String>),
    /// Workers now retiring.
    Retiring(Vec<String>),
    /// The dataset was published, or why not.
    Published(Result<(), String>),
    /// Workers found silent for too long (already removed from the state).
    TimedOut(Vec<WorkerId>),
}

impl SchedulerState {
    /// Apply one event at time `now` (seconds). Messages it produces are
    /// taken with [`SchedulerState::take_outgoing`].
    pub fn handle(&mut self, event: Event, now: f64) -> Outcome {
        self.now = now;
        match event {
            Event::AddWorker(info) => return Outcome::Worker(self.add_worker(info, now)),
            Event::RemoveWorker { worker, reason } => self.remove_worker(worker, &reason),
            Event::AddClient { name } => return Outcome::Client(self.add_client(name)),
            Event::RemoveClient { client } => self.remove_client(client),
            Event::UpdateGraph { client, tasks, wanted } => return Outcome::Graph(self.update_graph(client, tasks, &wanted)),
            Event::Resume { client, tasks, wanted, held } => return Outcome::Graph(self.update_graph_holding(client, tasks, &wanted, &held)),
            Event::ReleaseKeys { client, keys } => self.release_keys(client, &keys),
            Event::RetireWorkers { names, all_idle } => return Outcome::Retiring(self.retire_workers(&names, all_idle)),
            Event::TaskFinished { worker, id, nbytes, duration, value } => self.task_finished_with(worker, id, nbytes, duration, value, now),
            Event::TaskErred { worker, id, error } => self.task_erred(worker, id, error, now),
            Event::MissingData { worker, id, dep, tried } => self.missing_data(worker, id, dep, &tried, now),
            Event::Heartbeat { worker, metrics } => self.heartbeat(worker, metrics, now),
            Event::RetireMe { worker } => self.retire_me(worker, now),
            Event::Started { worker, ids } => self.started(worker, &ids, now),
            Event::Replicated { worker, id, nbytes } => self.replicated(worker, id, nbytes, now),
            Event::ReplicateFailed { worker, id } => self.replicate_failed(worker, id, now),
            Event::Stolen { worker, ids, kept } => self.stolen(worker, &ids, &kept, now),
            Event::CheckTimeouts => return Outcome::TimedOut(self.check_timeouts(now)),
            Event::Balance => self.balance(),
            Event::PublishDataset { name, keys, data, replace } => return Outcome::Published(self.publish_dataset(&name, keys, data, replace)),
            Event::RegisterPlugin { name, data } => self.register_plugin(&name, data),
            Event::UnpublishDataset { name } => {
                self.unpublish_dataset(&name);
            }
        }
        Outcome::None
    }

    /// A deterministic summary of the whole state: every task's key, state,
    /// holders and worker, the workers and the counters. Two runs given the
    /// same events have the same digest.
    pub fn digest(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (i, t) in self.tasks.iter().enumerate() {
            let mut holders: Vec<WorkerId> = t.who_has.iter().copied().collect();
            holders.sort_unstable();
            let _ = writeln!(out, "{i} {} {} on={:?} has={holders:?} err={:?}", self.key(i as TaskId), t.state.name(), t.on(), t.error());
        }
        for (id, w) in &self.workers {
            let _ = writeln!(out, "worker {id} {} processing={} holds={} retiring={}", w.info.name, w.processing.len(), w.has_what.len(), w.retiring);
        }
        let _ = writeln!(out, "clients {:?}", self.clients.keys().collect::<Vec<_>>());
        let _ = writeln!(out, "{:?}", self.stats);
        out
    }
}

/// One record of an event log.
#[derive(Debug, Serialize, Deserialize)]
pub enum Record {
    /// First: how the state was configured.
    Start(SchedulerConfig),
    Event { now: f64, event: Event },
    /// Last, on a clean stop: the state's digest then.
    Final { digest: String },
}

/// Writes an event log: length-prefixed bincode records, mode 0600 (it holds
/// graphs and small results).
pub struct Recorder {
    out: BufWriter<std::fs::File>,
}

impl Recorder {
    pub fn create(path: &Path, config: &SchedulerConfig) -> io::Result<Recorder> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)?;
        let mut r = Recorder { out: BufWriter::with_capacity(1 << 20, file) };
        r.write(&Record::Start(config.clone()))?;
        Ok(r)
    }

    pub fn event(&mut self, now: f64, event: &Event) -> io::Result<()> {
        // Serialised by reference: no copy of large graphs.
        #[derive(Serialize)]
        enum RecordRef<'a> {
            #[allow(dead_code)]
            Start(&'a SchedulerConfig),
            Event { now: f64, event: &'a Event },
        }
        self.write_raw(&RecordRef::Event { now, event })
    }

    pub fn finish(mut self, state: &SchedulerState) -> io::Result<()> {
        self.write(&Record::Final { digest: state.digest() })?;
        self.out.flush()
    }

    fn write(&mut self, r: &Record) -> io::Result<()> {
        self.write_raw(r)
    }

    fn write_raw(&mut self, r: &impl Serialize) -> io::Result<()> {
        let bytes = bincode::serialize(r).map_err(io::Error::other)?;
        self.out.write_all(&(bytes.len() as u64).to_le_bytes())?;
        self.out.write_all(&bytes)
    }
}

/// What a replay found.
pub struct Replay {
    pub state: SchedulerState,
    pub events: usize,
    /// The digest the recorded run ended with (absent if it did not stop cleanly).
    pub recorded_digest: Option<String>,
}

/// Feed a recorded event log to a fresh state, checking the invariants
/// after every event.
pub fn replay(path: &Path) -> Result<Replay, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(|e| format!("cannot read event log {}: {e}", path.display()))?;
    let mut rest = &bytes[..];
    let mut state: Option<SchedulerState> = None;
    let mut events = 0;
    let mut recorded_digest = None;
    while !rest.is_empty() {
        if rest.len() < 8 {
            return Err(format!("event log {}: truncated record header after {events} events", path.display()));
        }
        let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
        let body = rest.get(8..8 + len).ok_or_else(|| format!("event log {}: truncated record after {events} events", path.display()))?;
        rest = &rest[8 + len..];
        let record: Record = bincode::deserialize(body).map_err(|e| format!("event log {}: bad record after {events} events: {e}", path.display()))?;
        match (record, state.as_mut()) {
            (Record::Start(config), None) => state = Some(SchedulerState::new(config)),
            (Record::Event { now, event }, Some(s)) => {
                s.handle(event, now);
                s.take_outgoing();
                s.take_logs();
                s.take_debug_logs();
                s.check_invariants().map_err(|e| format!("event {events}: invariant broken: {e}"))?;
                events += 1;
            }
            (Record::Final { digest }, Some(_)) => recorded_digest = Some(digest),
            (r, _) => return Err(format!("event log {}: unexpected record {r:?} after {events} events", path.display())),
        }
    }
    let state = state.ok_or_else(|| format!("event log {} is empty", path.display()))?;
    Ok(Replay { state, events, recorded_digest })
}
