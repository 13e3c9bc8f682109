//! The client: connect to a scheduler (by address + secret, or through the
//! scheduler file), submit graphs, collect results and errors, query status,
//! shut the cluster down. Results are fetched straight from the workers'
//! data servers, never relayed through the scheduler.

use crate::graph::Graph;
use crate::seal::Link;
use crate::protocol::{FrameReader, FrameWriter, PrefixProgress, Role, StatusReport, TaskId, ToClient, ToScheduler};
use crate::telemetry::{progress_since, TelemetryReport};
use crate::schedfile::{self, ConnectError};
use crate::value::Data;
use crate::log_at;
use std::collections::HashMap;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// What a computation produced: values of the keys that finished, errors of
/// those that failed, each in the order requested.
#[derive(Debug, Default)]
pub struct Results {
    pub values: Vec<(String, Data)>,
    pub errors: Vec<(String, String)>,
}

impl Results {
    pub fn get(&self, key: &str) -> Option<&Data> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

#[derive(Debug)]
pub enum ClientError {
    /// Could not connect or authenticate.
    Connect(String),
    /// The scheduler refused the graph.
    Rejected(String),
    /// The connection broke or the scheduler went away.
    Lost(String),
    /// A task cannot run on any worker (with `fail_when_stuck`).
    Stuck(String),
    /// The computation was not done by the client's deadline.
    TimedOut(String),
}

/// Why [`Client::retire_and_wait`] failed.
#[derive(Debug)]
pub enum RetireError {
    NoSuchWorker { asked: Vec<String>, known: Vec<String> },
    NoIdleWorker,
    /// These workers had not left when the timeout ran out.
    StillRetiring { after: Duration, names: Vec<String> },
    Client(ClientError),
}

impl From<ClientError> for RetireError {
    fn from(e: ClientError) -> Self {
        RetireError::Client(e)
    }
}

impl std::fmt::Display for RetireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetireError::NoSuchWorker { asked, known } => write!(f, "no such worker: {} (workers: {})", asked.join(", "), known.join(", ")),
            RetireError::NoIdleWorker => f.write_str("no idle worker to retire"),
            RetireError::StillRetiring { after, names } => write!(f, "still retiring after {:.0} s: {}", after.as_secs_f64(), names.join(", ")),
            RetireError::Client(e) => write!(f, "{e}"),
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(m) => write!(f, "{m}"),
            ClientError::Rejected(m) => write!(f, "the scheduler rejected the graph: {m}"),
            ClientError::Lost(m) => write!(f, "lost the scheduler: {m}"),
            ClientError::Stuck(m) => write!(f, "{m}"),
            ClientError::TimedOut(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// See [`Client::progress`].
pub type ProgressHook = dyn FnMut(&[PrefixProgress], bool) + Send;

pub struct Client {
    /// Fail a computation when a task cannot run on any connected worker
    /// (for clusters no worker can join, like `taskfarm run`'s), instead of
    /// warning and waiting for one.
    pub fail_when_stuck: bool,
    /// Give up on a scheduler that says nothing for this long (it pings
    /// every [`crate::protocol::PING_INTERVAL`]).
    pub scheduler_timeout: Duration,
    /// Give up on a computation not done by then (`submit --timeout`).
    pub deadline: Option<std::time::Instant>,
    /// While waiting for results, say what is awaited this often (on the log).
    pub note_every: Duration,
    /// Told, every [`Client::progress_every`] while a computation runs and
    /// once at its end (`true`), the task counts per key prefix since it
    /// was submitted (progress bars).
    pub progress: Option<Box<ProgressHook>>,
    pub progress_every: Duration,
    /// When the connection breaks during [`Client::compute`]: find the
    /// scheduler again through this scheduler file, waiting up to this long,
    /// and submit the graph again (a scheduler restarted from its journal
    /// has kept it, and what finished). `None`: fail.
    pub reconnect: Option<(std::path::PathBuf, Duration)>,
    progress_outstanding: u32,
    /// Batches from the scheduler, read by a thread of their own so that
    /// waiting can be bounded without breaking a frame.
    inbox: crossbeam_channel::Receiver<Result<Vec<ToClient>, String>>,
    /// The connection, to close it (and so end the reading thread) on drop.
    stream: TcpStream,
    last_word: std::time::Instant,
    writer: FrameWriter<crate::seal::LinkWriter>,
    secret: Vec<u8>,
    pending: std::collections::VecDeque<ToClient>,
    pub address: String,
}

impl Drop for Client {
    fn drop(&mut self) {
        // Ends the reading thread too.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Client {
    /// Connect to a scheduler at `address` (tcp://HOST:PORT) with `secret`.
    pub fn connect(address: &str, secret: &[u8]) -> Result<Client, ClientError> {
        let stream = schedfile::connect(address, secret, Role::Client).map_err(|e| match e {
            ConnectError::Fatal(m) => ClientError::Connect(m),
            ConnectError::Unreachable(e) => ClientError::Connect(format!("cannot reach the scheduler at {address}: {e}")),
        })?;
        Client::from_stream(stream, address, secret)
    }

    /// Find the scheduler through its file, waiting up to `timeout` for it.
    pub fn from_scheduler_file(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let (file, stream) = schedfile::wait_and_connect(path, timeout, Role::Client).map_err(|e| ClientError::Connect(e.to_string()))?;
        let secret = file.secret_bytes().map_err(ClientError::Connect)?;
        Client::from_stream(stream, &file.address, &secret)
    }

    /// Use a connection already authenticated as a client.
    pub fn from_connected(link: Link, address: &str, secret: &[u8]) -> Result<Client, ClientError> {
        Client::from_stream(link, address, secret)
    }

    fn from_stream(link: Link, address: &str, secret: &[u8]) -> Result<Client, ClientError> {
        let lost = |e: std::io::Error| ClientError::Lost(e.to_string());
        let mut writer = FrameWriter::new(link.writer().map_err(lost)?);
        writer.send(&[ToScheduler::RegisterClient { name: format!("{}-{}", crate::util::hostname(), std::process::id()) }], &[]).map_err(lost)?;
        let (tx, inbox) = crossbeam_channel::unbounded();
        let mut reader = FrameReader::new(link.reader().map_err(lost)?);
        let stream = link.stream().map_err(lost)?;
        std::thread::Builder::new()
            .name("tf-client-reader".into())
            .spawn(move || loop {
                let batch = match reader.read_batch::<ToClient>() {
                    Ok(Some((msgs, _))) => Ok(msgs),
                    Ok(None) => Err("the scheduler closed the connection".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let end = batch.is_err();
                if tx.send(batch).is_err() || end {
                    return;
                }
            })
            .map_err(lost)?;
        let mut c = Client {
            fail_when_stuck: false,
            scheduler_timeout: crate::protocol::SCHEDULER_TIMEOUT,
            deadline: None,
            note_every: Duration::from_secs(10),
            progress: None,
            progress_every: Duration::from_millis(200),
            reconnect: None,
            progress_outstanding: 0,
            inbox,
            stream,
            last_word: std::time::Instant::now(),
            writer,
            secret: secret.to_vec(),
            pending: std::collections::VecDeque::new(),
            address: address.to_string(),
        };
        match c.next()? {
            ToClient::Welcome { .. } => Ok(c),
            other => Err(ClientError::Lost(format!("unexpected first message {other:?}"))),
        }
    }

    fn next(&mut self) -> Result<ToClient, ClientError> {
        loop {
            if let Some(m) = self.next_until(None)? {
                return Ok(m);
            }
        }
    }

    /// The next message, or None once `wake` has passed without one. Fails
    /// when the scheduler has been silent for `scheduler_timeout` or the
    /// computation's `deadline` has passed.
    fn next_until(&mut self, wake: Option<std::time::Instant>) -> Result<Option<ToClient>, ClientError> {
        use crossbeam_channel::RecvTimeoutError;
        loop {
            if let Some(m) = self.pending.pop_front() {
                if m == ToClient::Ping {
                    continue;
                }
                return Ok(Some(m));
            }
            let silent_limit = self.last_word + self.scheduler_timeout;
            let until = [Some(silent_limit), self.deadline, wake].into_iter().flatten().min().expect("one limit at least");
            match self.inbox.recv_deadline(until) {
                Ok(Ok(msgs)) => {
                    self.last_word = std::time::Instant::now();
                    self.pending.extend(msgs);
                }
                Ok(Err(e)) => return Err(ClientError::Lost(e)),
                Err(RecvTimeoutError::Disconnected) => return Err(ClientError::Lost("the connection's reader stopped".into())),
                Err(RecvTimeoutError::Timeout) => {
                    let now = std::time::Instant::now();
                    if now >= silent_limit {
                        return Err(ClientError::Lost(format!(
                            "the scheduler at {} has said nothing for {:.0} s (it pings every {} s): it is frozen, overloaded or cut off (--scheduler-timeout)",
                            self.address,
                            now.duration_since(self.last_word).as_secs_f64(),
                            crate::protocol::PING_INTERVAL.as_secs()
                        )));
                    }
                    if self.deadline.is_some_and(|d| now >= d) {
                        return Err(ClientError::TimedOut("the computation did not finish in time".into()));
                    }
                    if wake.is_some_and(|w| now >= w) {
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn send(&mut self, m: ToScheduler) -> Result<(), ClientError> {
        self.send_all(std::slice::from_ref(&m))
    }

    fn send_all(&mut self, msgs: &[ToScheduler]) -> Result<(), ClientError> {
        self.writer.send(msgs, &[]).map_err(|e| ClientError::Lost(e.to_string()))
    }

    /// Submit `graph`, wait for `keys`, fetch their values. The graph is
    /// consumed: its tasks are sent as they are, not copied.
    pub fn compute(&mut self, graph: Graph, keys: &[String]) -> Result<Results, ClientError> {
        let mut baseline = if self.progress.is_some() { Some(self.progress_now()?) } else { None };
        // Sent by reference, and kept only when it may be sent again: no copy.
        let update = [ToScheduler::UpdateGraph { tasks: graph.tasks, wanted: keys.to_vec() }];
        self.send_all(&update)?;
        let again = self.reconnect.is_some().then_some(update);
        let results = loop {
            match self.gather(keys, baseline.as_deref()) {
                Err(ClientError::Lost(why)) if again.is_some() => {
                    let (path, wait) = self.reconnect.clone().expect("checked with `again`");
                    log_at!(1, "client", "lost the scheduler ({why}); looking for it through {} for up to {:.0} s", path.display(), wait.as_secs_f64());
                    let fresh = Client::from_scheduler_file(&path, wait).map_err(|e| ClientError::Lost(format!("{why}; it did not come back: {e}")))?;
                    self.take_connection(fresh);
                    log_at!(1, "client", "reached the scheduler at {} again; submitting the graph again (a scheduler resumed from its journal keeps what finished)", self.address);
                    if baseline.is_some() {
                        baseline = Some(self.progress_now()?);
                    }
                    self.send_all(again.as_ref().expect("checked"))?;
                }
                r => break r,
            }
        };
        if let (Some(base), Ok(_)) = (&baseline, &results) {
            let now = self.progress_now()?;
            if let Some(hook) = &mut self.progress {
                hook(&progress_since(base, &now), true);
            }
        }
        results
    }

    /// Use `fresh`'s connection from now on (the old one closes with it).
    fn take_connection(&mut self, mut fresh: Client) {
        std::mem::swap(&mut self.inbox, &mut fresh.inbox);
        std::mem::swap(&mut self.stream, &mut fresh.stream);
        std::mem::swap(&mut self.writer, &mut fresh.writer);
        std::mem::swap(&mut self.secret, &mut fresh.secret);
        std::mem::swap(&mut self.address, &mut fresh.address);
        self.pending = std::mem::take(&mut fresh.pending);
        self.last_word = fresh.last_word;
        self.progress_outstanding = 0;
    }

    /// The scheduler's task counters per key prefix (the answer to this
    /// request, not to an earlier one still on its way).
    pub fn progress_now(&mut self) -> Result<Vec<PrefixProgress>, ClientError> {
        self.send(ToScheduler::ProgressRequest)?;
        self.progress_outstanding += 1;
        let mut kept = std::collections::VecDeque::new();
        let got = loop {
            match self.next() {
                Ok(ToClient::Progress(p)) => {
                    self.progress_outstanding -= 1;
                    if self.progress_outstanding == 0 {
                        break Ok(p);
                    }
                }
                Ok(other) => kept.push_back(other),
                Err(e) => break Err(e),
            }
        };
        kept.extend(self.pending.drain(..));
        self.pending = kept;
        got
    }

    /// What ran from sequence number `since` on (0: everything the
    /// scheduler still has; see [`crate::telemetry`]).
    pub fn telemetry(&mut self, since: u64) -> Result<TelemetryReport, ClientError> {
        self.send(ToScheduler::TelemetryRequest { since })?;
        loop {
            if let ToClient::Telemetry(t) = self.next()? {
                return Ok(*t);
            }
        }
    }

    /// The state names of `keys` ("unknown" for keys the scheduler does not know).
    pub fn key_states(&mut self, keys: &[String]) -> Result<Vec<String>, ClientError> {
        self.send(ToScheduler::KeyStatesRequest { keys: keys.to_vec() })?;
        loop {
            if let ToClient::KeyStates(s) = self.next()? {
                return Ok(s);
            }
        }
    }

    /// Wait for keys already submitted, then fetch their values and release them.
    fn gather(&mut self, keys: &[String], baseline: Option<&[PrefixProgress]>) -> Result<Results, ClientError> {
        let mut g = Gather::new(keys);
        let started = std::time::Instant::now();
        let mut next_note = started + self.note_every;
        let mut next_progress = started + self.progress_every;
        while g.unresolved > 0 {
            // Wait until every key is located or failed, saying now and
            // then what is still awaited (and asking for progress).
            while g.pending > 0 {
                let wake = if baseline.is_some() { next_note.min(next_progress) } else { next_note };
                match self.next_until(Some(wake)) {
                    Ok(Some(ToClient::Progress(now))) => {
                        self.progress_outstanding = self.progress_outstanding.saturating_sub(1);
                        if let (Some(base), Some(hook)) = (baseline, &mut self.progress) {
                            hook(&progress_since(base, &now), false);
                        }
                    }
                    Ok(Some(m)) => g.message(m, self.fail_when_stuck)?,
                    Ok(None) if baseline.is_some() && std::time::Instant::now() >= next_progress => {
                        next_progress = std::time::Instant::now() + self.progress_every;
                        if self.progress_outstanding == 0 {
                            self.send(ToScheduler::ProgressRequest)?;
                            self.progress_outstanding += 1;
                        }
                    }
                    Ok(None) => {
                        next_note += self.note_every;
                        log_at!(1, "client", "still waiting after {:.0} s for {}", started.elapsed().as_secs_f64(), g.describe_pending());
                    }
                    Err(ClientError::TimedOut(_)) => {
                        return Err(ClientError::TimedOut(format!("gave up after {:.0} s (--timeout) waiting for {}", started.elapsed().as_secs_f64(), g.describe_pending())));
                    }
                    Err(e) => return Err(e),
                }
            }
            // Fetch from the holders, one request per holder.
            for (holder, items) in g.by_holder() {
                let ids: Vec<TaskId> = items.iter().map(|&(_, id)| id).collect();
                let got = self.fetch_from(&holder, &ids).unwrap_or_else(|e| {
                    log_at!(1, "client", "cannot fetch results from {holder}: {e}; waiting for the scheduler to recompute them");
                    Vec::new()
                });
                g.fetched(&holder, items, got);
            }
            if g.fetch_failures > 100 {
                return Err(ClientError::Lost("results could not be fetched from any worker after many attempts".into()));
            }
        }
        let results = g.results(keys);
        self.send(ToScheduler::ReleaseKeys { keys: keys.to_vec() })?;
        Ok(results)
    }

    fn fetch_from(&self, holder: &str, ids: &[TaskId]) -> std::io::Result<Vec<(TaskId, Data)>> {
        let s = schedfile::connect(holder, &self.secret, Role::Peer).map_err(|e| match e {
            ConnectError::Unreachable(e) => e,
            ConnectError::Fatal(m) => std::io::Error::other(m),
        })?;
        let mut r = FrameReader::new(s.reader()?);
        let mut w = FrameWriter::new(s.writer()?);
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(50_000) {
            for (id, stored) in crate::dataplane::fetch_values(&mut r, &mut w, chunk)? {
                let data = std::sync::Arc::try_unwrap(stored).map(|s| s.data).unwrap_or_else(|a| a.data.clone());
                out.push((id, data));
            }
        }
        Ok(out)
    }

    pub fn status(&mut self) -> Result<StatusReport, ClientError> {
        self.send(ToScheduler::StatusRequest)?;
        loop {
            if let ToClient::Status(r) = self.next()? {
                return Ok(r);
            }
        }
    }

    /// Retire workers gracefully (by name or address, or every idle one):
    /// they take no new tasks, their unique values are copied to other
    /// workers, then they exit. Returns the names of the workers retiring.
    pub fn retire(&mut self, names: &[String], all_idle: bool) -> Result<Vec<String>, ClientError> {
        self.send(ToScheduler::RetireWorkers { names: names.to_vec(), all_idle })?;
        loop {
            if let ToClient::Retiring { names } = self.next()? {
                return Ok(names);
            }
        }
    }

    /// Retire workers (by name or address, or every idle one) and wait,
    /// up to `timeout`, until they have left; `retiring` is told the names
    /// once the scheduler accepted them. Returns the names.
    pub fn retire_and_wait(&mut self, names: &[String], all_idle: bool, timeout: Duration, retiring: impl FnOnce(&[String])) -> Result<Vec<String>, RetireError> {
        let known: Vec<String> = self.status()?.workers.iter().map(|w| w.name.clone()).collect();
        let names_now = self.retire(names, all_idle)?;
        if names_now.is_empty() {
            return Err(if all_idle { RetireError::NoIdleWorker } else { RetireError::NoSuchWorker { asked: names.to_vec(), known } });
        }
        retiring(&names_now);
        let start = std::time::Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let present: Vec<String> = self.status()?.workers.iter().map(|w| w.name.clone()).filter(|n| names_now.contains(n)).collect();
            if present.is_empty() {
                return Ok(names_now);
            }
            if start.elapsed() >= timeout {
                return Err(RetireError::StillRetiring { after: timeout, names: present });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Ask the scheduler and all its workers to exit cleanly.
    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        self.send(ToScheduler::Shutdown)?;
        // Wait for the scheduler to acknowledge by closing or saying goodbye.
        loop {
            match self.next() {
                Ok(ToClient::ShuttingDown { .. }) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
    }
}

/// Where each wanted key stands while results come in ([`Client::gather`]).
/// Each distinct key once, by position: messages are matched by key once,
/// everything after works on positions.
struct Gather<'k> {
    position: hashbrown::HashMap<&'k str, u32>,
    distinct: Vec<&'k str>,
    /// Results mostly come in the order asked (the scheduler runs tasks by
    /// priority, then graph order): the key after the last one matched is
    /// tried before looking it up.
    cursor: usize,
    slots: Vec<Slot>,
    /// Keys without a value or an error yet.
    unresolved: usize,
    /// Keys not located (or failed) yet.
    pending: usize,
    fetch_failures: u32,
    /// Why keys cannot run now, as the scheduler said (the latest few).
    stuck: Vec<(String, String)>,
}

enum Slot {
    Pending,
    At(TaskId, Vec<String>),
    Value(Data),
    Failed(String),
}

impl<'k> Gather<'k> {
    fn new(keys: &'k [String]) -> Gather<'k> {
        let mut position: hashbrown::HashMap<&str, u32> = hashbrown::HashMap::with_capacity(keys.len());
        let mut distinct: Vec<&str> = Vec::with_capacity(keys.len());
        for k in keys {
            if let hashbrown::hash_map::Entry::Vacant(v) = position.entry(k.as_str()) {
                v.insert(distinct.len() as u32);
                distinct.push(k);
            }
        }
        let n = distinct.len();
        Gather { position, distinct, cursor: 0, slots: (0..n).map(|_| Slot::Pending).collect(), unresolved: n, pending: n, fetch_failures: 0, stuck: Vec::new() }
    }

    /// "3 of 10 keys: a, b, c" (the first few not done), and why some
    /// cannot run, when the scheduler said.
    fn describe_pending(&self) -> String {
        let waiting: Vec<&str> = self.slots.iter().zip(&self.distinct).filter(|(s, _)| matches!(s, Slot::Pending)).map(|(_, k)| *k).collect();
        let shown: Vec<&str> = waiting.iter().take(5).copied().collect();
        let more = if waiting.len() > shown.len() { format!(" and {} more", waiting.len() - shown.len()) } else { String::new() };
        let mut text = format!("{} of {} key(s): {}{more}", waiting.len(), self.distinct.len(), shown.join(", "));
        let stuck: Vec<String> = self.stuck.iter().filter(|(k, _)| waiting.contains(&k.as_str())).map(|(k, r)| format!("'{k}' cannot run: {r}")).collect();
        if !stuck.is_empty() {
            text.push_str(&format!(" ({})", stuck.join("; ")));
        }
        text
    }

    fn locate(&mut self, key: &str) -> Option<usize> {
        let i = if self.distinct.get(self.cursor) == Some(&key) { self.cursor } else { *self.position.get(key)? as usize };
        self.cursor = i + 1;
        Some(i)
    }

    /// One message from the scheduler.
    fn message(&mut self, m: ToClient, fail_when_stuck: bool) -> Result<(), ClientError> {
        match m {
            ToClient::GraphRejected { error } => return Err(ClientError::Rejected(error)),
            ToClient::KeyInMemory { key, id, holders, value } => {
                let Some(i) = self.locate(&key) else { return Ok(()) };
                let s = &mut self.slots[i];
                let was_pending = matches!(s, Slot::Pending);
                if was_pending || matches!(s, Slot::At(..)) {
                    // A small result comes inline (then without holders); a
                    // larger one is fetched.
                    match value.map(|(tag, body)| crate::store::Value::from_wire(tag, body)) {
                        Some(Ok(v)) => {
                            *s = Slot::Value(v.data);
                            self.unresolved -= 1;
                        }
                        Some(Err(e)) => {
                            *s = Slot::Failed(format!("its result arrived but cannot be decoded: {e}"));
                            self.unresolved -= 1;
                        }
                        None => *s = Slot::At(id, holders),
                    }
                    if was_pending {
                        self.pending -= 1;
                    }
                }
            }
            ToClient::KeyErred { key, error } => {
                let Some(i) = self.locate(&key) else { return Ok(()) };
                let s = &mut self.slots[i];
                if matches!(s, Slot::Pending | Slot::At(..)) {
                    if matches!(s, Slot::Pending) {
                        self.pending -= 1;
                    }
                    *s = Slot::Failed(error);
                    self.unresolved -= 1;
                }
            }
            ToClient::ShuttingDown { reason } => return Err(ClientError::Lost(format!("the scheduler is shutting down: {reason}"))),
            ToClient::KeyStuck { key, reason } => {
                if fail_when_stuck {
                    return Err(ClientError::Stuck(format!("task '{key}' cannot run: {reason}")));
                }
                log_at!(1, "client", "task '{key}' cannot run on any connected worker yet: {reason}; waiting for one to join");
                if self.stuck.len() >= 5 {
                    self.stuck.remove(0);
                }
                self.stuck.push((key, reason));
            }
            _ => {}
        }
        Ok(())
    }

    /// The located keys to fetch, grouped by the holder to ask: (position, task).
    fn by_holder(&self) -> Vec<(String, Vec<(u32, TaskId)>)> {
        let mut by_holder: HashMap<&str, Vec<(u32, TaskId)>> = HashMap::new();
        for (i, s) in self.slots.iter().enumerate() {
            if let Slot::At(id, holders) = s {
                if let Some(h) = holders.first() {
                    by_holder.entry(h.as_str()).or_default().push((i as u32, *id));
                }
            }
        }
        by_holder.into_iter().map(|(h, items)| (h.to_string(), items)).collect()
    }

    /// What `holder` answered for `items`: in the order asked, leaving out
    /// what it does not have (those wait for a new location).
    fn fetched(&mut self, holder: &str, items: Vec<(u32, TaskId)>, got: Vec<(TaskId, Data)>) {
        let mut got = got.into_iter().peekable();
        for (i, id) in items {
            let slot = &mut self.slots[i as usize];
            match got.next_if(|(g, _)| *g == id) {
                Some((_, v)) => {
                    *slot = Slot::Value(v);
                    self.unresolved -= 1;
                }
                None => {
                    if let Slot::At(_, hs) = slot {
                        hs.retain(|h| h != holder);
                        if hs.is_empty() {
                            *slot = Slot::Pending;
                            self.pending += 1;
                            self.fetch_failures += 1;
                        }
                    }
                }
            }
        }
    }

    /// The values and errors, in the order of `keys` (a key asked twice is
    /// answered once, like a map).
    fn results(mut self, keys: &[String]) -> Results {
        let mut results = Results::default();
        for k in keys {
            let i = self.position[k.as_str()] as usize;
            match std::mem::replace(&mut self.slots[i], Slot::Pending) {
                Slot::Value(v) => results.values.push((k.clone(), v)),
                Slot::Failed(e) => results.errors.push((k.clone(), e)),
                _ => {}
            }
        }
        results
    }
}
