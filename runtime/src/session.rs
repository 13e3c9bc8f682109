//! An asynchronous client session, for clients that keep many computations
//! in flight (the Python client's futures): submissions return at once; a
//! reader thread follows the scheduler's messages and keeps, per wanted key,
//! where it stands; callers wait for keys or for events, and fetch values
//! (inline with the completion when small, else from a holder's data server).
//!
//! The synchronous [`crate::Client`] (submit one graph, wait for all of it)
//! stays what the CLI uses.

use crate::protocol::{FrameReader, FrameWriter, Payload, Role, StatusReport, TaskDef, TaskId, ToClient, ToScheduler};
use crate::schedfile::{self, ConnectError};
use std::collections::{HashMap, VecDeque};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where a wanted key stands.
#[derive(Clone, Debug)]
enum KeyState {
    Pending,
    At { id: TaskId, holders: Vec<String> },
    /// The value in its wire form.
    Value(u8, Arc<Vec<u8>>),
    Failed(String),
}

/// What happened to a wanted key (or to the session), in arrival order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Finished(String),
    Erred(String, String),
    /// The key cannot run on any connected worker now.
    Stuck(String, String),
    /// The connection is gone; every pending key failed with this reason.
    Lost(String),
}

#[derive(Default)]
struct State {
    keys: HashMap<String, KeyState>,
    events: Vec<Event>,
    /// Wanted keys of each submission not yet accepted or rejected.
    submissions: VecDeque<Vec<String>>,
    status: Option<StatusReport>,
    /// Answers to dataset requests, in order.
    replies: VecDeque<ToClient>,
    lost: Option<String>,
    /// Bumped when the connection is lost: fetches started before do not
    /// count (a restarted scheduler numbers tasks anew, and its workers
    /// their values).
    generation: u64,
    /// Keys that had a value on the cluster when the connection was lost:
    /// pending again until the scheduler that came back says where they
    /// are, without a second `Finished` event.
    relocating: std::collections::HashSet<String>,
    /// `close` was called: a lost connection is not looked for again.
    closing: bool,
    /// How long the scheduler may say nothing (and, with a scheduler file,
    /// how long a lost one has to come back).
    scheduler_timeout: Duration,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A published dataset's keys and opaque data.
pub type DatasetParts = (Vec<String>, Vec<u8>);

/// How long a request (publish, get, list) waits for the scheduler's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A value or why there is none.
pub type Outcome = Result<(u8, Arc<Vec<u8>>), String>;

pub struct Session {
    shared: Arc<Shared>,
    /// Shared with the reader thread, which replaces it (holding it, so
    /// senders wait) when it connects again to a scheduler that came back.
    writer: Arc<Mutex<FrameWriter<crate::seal::LinkWriter>>>,
    /// Held while a request waits for its reply, so replies pair with requests.
    requests: Mutex<()>,
    stream: Arc<Mutex<TcpStream>>,
    secret: Vec<u8>,
    pub address: String,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Session {
    /// Connect to the scheduler at `address` (tcp://HOST:PORT) with `secret`.
    pub fn connect(address: &str, secret: &[u8]) -> Result<Session, String> {
        let stream = schedfile::connect(address, secret, Role::Client).map_err(|e| match e {
            ConnectError::Fatal(m) => m,
            ConnectError::Unreachable(e) => format!("cannot reach the scheduler at {address}: {e}"),
        })?;
        Session::start(stream, address, secret, None)
    }

    /// Find the scheduler through its file, waiting up to `timeout` for it.
    /// Find the scheduler through its file, waiting up to `timeout` for it.
    /// When the connection breaks, the session looks for the scheduler
    /// through the file again (for the scheduler timeout): a scheduler
    /// restarted with its journal still has this client's keys, which are
    /// asked for again; until then, waits for values go on waiting.
    pub fn from_scheduler_file(path: &Path, timeout: Duration) -> Result<Session, String> {
        let (file, stream) = schedfile::wait_and_connect(path, timeout, Role::Client).map_err(|e| e.to_string())?;
        let secret = file.secret_bytes()?;
        Session::start(stream, &file.address, &secret, Some(path.to_path_buf()))
    }

    fn start(link: crate::seal::Link, address: &str, secret: &[u8], file: Option<std::path::PathBuf>) -> Result<Session, String> {
        let (reader, writer, stream) = register(link, address)?;
        let shared = Arc::new(Shared { state: Mutex::new(State { scheduler_timeout: crate::protocol::SCHEDULER_TIMEOUT, ..State::default() }), cv: Condvar::new() });
        let (writer, stream) = (Arc::new(Mutex::new(writer)), Arc::new(Mutex::new(stream)));
        let again = file.map(|path| Again { path, secret: secret.to_vec(), writer: writer.clone(), stream: stream.clone() });
        let s2 = shared.clone();
        let reader = std::thread::Builder::new().name("tf-session".into()).spawn(move || read_loop(reader, &s2, again)).map_err(|e| e.to_string())?;
        Ok(Session { shared, writer, requests: Mutex::new(()), stream, secret: secret.to_vec(), address: address.to_string(), reader: Some(reader) })
    }

    /// Give up on the scheduler (failing every pending key) after this long
    /// without a word from it (default 60 s; it pings every 5 s); a session
    /// from a scheduler file also gives a lost scheduler this long to come back.
    pub fn set_scheduler_timeout(&self, d: Duration) -> Result<(), String> {
        let d = d.max(Duration::from_millis(100));
        self.shared.lock().scheduler_timeout = d;
        lock(&self.stream).set_read_timeout(Some(d)).map_err(|e| e.to_string())
    }

    fn send(&self, msgs: &[ToScheduler]) -> Result<(), String> {
        if let Some(l) = &self.shared.lock().lost {
            return Err(l.clone());
        }
        let mut w = lock(&self.writer);
        w.send(msgs, &[]).map_err(|e| format!("lost the scheduler at {}: {e}", self.address))
    }

    /// Submit tasks and want `wanted`; returns at once. A rejected
    /// submission fails its wanted keys (an `Erred` event each).
    pub fn submit(&self, tasks: Vec<TaskDef>, wanted: Vec<String>) -> Result<(), String> {
        {
            let mut st = self.shared.lock();
            for k in &wanted {
                let entry = st.keys.entry(k.clone()).or_insert(KeyState::Pending);
                if matches!(entry, KeyState::Failed(_)) {
                    *entry = KeyState::Pending;
                }
            }
            st.submissions.push_back(wanted.clone());
        }
        self.send(&[ToScheduler::UpdateGraph { tasks, wanted }])
    }

    /// Stop wanting these keys (the cluster may forget them).
    pub fn release(&self, keys: Vec<String>) -> Result<(), String> {
        {
            let mut st = self.shared.lock();
            for k in &keys {
                st.keys.remove(k);
            }
        }
        self.send(&[ToScheduler::ReleaseKeys { keys }])
    }

    /// Events since the last call, waiting up to `timeout` for one.
    pub fn events(&self, timeout: Duration) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while st.events.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self.shared.cv.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        std::mem::take(&mut st.events)
    }

    /// Whether every key has a value or an error (false if one is unknown).
    pub fn done(&self, keys: &[String]) -> bool {
        let st = self.shared.lock();
        keys.iter().all(|k| matches!(st.keys.get(k), Some(KeyState::At { .. } | KeyState::Value(..) | KeyState::Failed(_))))
    }

    /// The values of `keys` (or why not), waiting up to `timeout` (`None`:
    /// for ever) for them to be computed and fetching them as needed.
    /// `Err` when the time ran out first; `interrupted` is asked between
    /// waits (e.g. for Ctrl-C) and stops the wait when it answers true.
    pub fn values(&self, keys: &[String], timeout: Option<Duration>, interrupted: &mut dyn FnMut() -> bool) -> Result<Vec<Outcome>, String> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let fetch = {
                let mut st = self.shared.lock();
                loop {
                    let mut to_fetch: HashMap<String, Vec<(String, TaskId)>> = HashMap::new();
                    let mut waiting = false;
                    for k in keys {
                        match st.keys.get(k) {
                            Some(KeyState::Pending) => waiting = true,
                            Some(KeyState::At { id, holders }) => match holders.first() {
                                Some(h) => to_fetch.entry(h.clone()).or_default().push((k.clone(), *id)),
                                None => waiting = true,
                            },
                            Some(_) => {}
                            None => return Err(format!("key '{k}' is not wanted by this client (it was released or never submitted)")),
                        }
                    }
                    if !to_fetch.is_empty() {
                        break to_fetch;
                    }
                    if !waiting {
                        let out = keys
                            .iter()
                            .map(|k| match &st.keys[k] {
                                KeyState::Value(tag, body) => Ok((*tag, body.clone())),
                                KeyState::Failed(e) => Err(e.clone()),
                                _ => unreachable!("only finished keys are left"),
                            })
                            .collect();
                        return Ok(out);
                    }
                    if let Some(l) = &st.lost {
                        return Err(l.clone());
                    }
                    let step = Duration::from_millis(100);
                    let wait = match deadline {
                        Some(d) => {
                            let left = d.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                return Err("timed out waiting for results".into());
                            }
                            left.min(step)
                        }
                        None => step,
                    };
                    st = self.shared.cv.wait_timeout(st, wait).unwrap_or_else(|p| p.into_inner()).0;
                    drop(st);
                    if interrupted() {
                        return Err("interrupted".into());
                    }
                    st = self.shared.lock();
                }
            };
            for (holder, items) in fetch {
                self.fetch_from(&holder, &items);
            }
        }
    }

    /// Fetch `items` from `holder` into the key table; what it does not
    /// have waits for the scheduler to say where it is now.
    fn fetch_from(&self, holder: &str, items: &[(String, TaskId)]) {
        let generation = self.shared.lock().generation;
        let ids: Vec<TaskId> = items.iter().map(|(_, id)| *id).collect();
        let got = fetch_values(holder, &self.secret, &ids).unwrap_or_else(|e| {
            crate::log_at!(1, "client", "cannot fetch results from {holder}: {e}; waiting for the scheduler to recompute them");
            Vec::new()
        });
        let mut got: HashMap<TaskId, Payload> = got.into_iter().collect();
        let mut st = self.shared.lock();
        if st.generation != generation {
            return; // the scheduler was lost meanwhile: the ids may mean other values now
        }
        for (k, id) in items {
            let Some(state) = st.keys.get_mut(k) else { continue };
            match got.remove(id) {
                Some((tag, body)) => *state = KeyState::Value(tag, Arc::new(body)),
                None => {
                    if let KeyState::At { holders, .. } = state {
                        holders.retain(|h| h != holder);
                        if holders.is_empty() {
                            *state = KeyState::Pending;
                        }
                    }
                }
            }
        }
    }

    /// The scheduler's status report.
    pub fn status(&self, timeout: Duration) -> Result<StatusReport, String> {
        self.shared.lock().status = None;
        self.send(&[ToScheduler::StatusRequest])?;
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(s) = st.status.take() {
                return Ok(s);
            }
            if let Some(l) = &st.lost {
                return Err(l.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("the scheduler did not answer a status request".into());
            }
            st = self.shared.cv.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Send a request the scheduler answers with one reply, and wait for it.
    fn request(&self, msg: ToScheduler, timeout: Duration) -> Result<ToClient, String> {
        let _turn = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        self.shared.lock().replies.clear();
        self.send(&[msg])?;
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(r) = st.replies.pop_front() {
                return Ok(r);
            }
            if let Some(l) = &st.lost {
                return Err(l.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("the scheduler did not answer within {} s", timeout.as_secs()));
            }
            st = self.shared.cv.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Keep `keys` on the cluster under `name`, for any client to find
    /// (`replace`: replace a dataset of that name).
    pub fn publish_dataset(&self, name: &str, keys: Vec<String>, data: Vec<u8>, replace: bool) -> Result<(), String> {
        match self.request(ToScheduler::PublishDataset { name: name.to_string(), keys, data, replace }, REQUEST_TIMEOUT)? {
            ToClient::Published { error: None, .. } => Ok(()),
            ToClient::Published { error: Some(e), .. } => Err(e),
            other => Err(format!("the scheduler answered a publish with {other:?}")),
        }
    }

    /// The keys and data of the dataset `name`, if there is one.
    pub fn get_dataset(&self, name: &str) -> Result<Option<DatasetParts>, String> {
        match self.request(ToScheduler::GetDataset { name: name.to_string() }, REQUEST_TIMEOUT)? {
            ToClient::Dataset { found, .. } => Ok(found),
            other => Err(format!("the scheduler answered a dataset request with {other:?}")),
        }
    }

    /// A worker plugin for every current and future worker's executors.
    pub fn register_plugin(&self, name: &str, data: Vec<u8>) -> Result<(), String> {
        self.send(&[ToScheduler::RegisterPlugin { name: name.to_string(), data }])
    }

    pub fn unpublish_dataset(&self, name: &str) -> Result<(), String> {
        self.send(&[ToScheduler::UnpublishDataset { name: name.to_string() }])
    }

    pub fn list_datasets(&self) -> Result<Vec<String>, String> {
        match self.request(ToScheduler::ListDatasets, REQUEST_TIMEOUT)? {
            ToClient::Datasets { names } => Ok(names),
            other => Err(format!("the scheduler answered a list request with {other:?}")),
        }
    }

    /// Ask the scheduler and its workers to exit.
    pub fn shutdown(&self) -> Result<(), String> {
        self.send(&[ToScheduler::Shutdown])
    }

    /// Close the connection (the scheduler releases what only this client wanted).
    pub fn close(&mut self) {
        self.shared.lock().closing = true;
        let _ = lock(&self.stream).shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

fn fetch_values(holder: &str, secret: &[u8], ids: &[TaskId]) -> std::io::Result<Vec<(TaskId, Payload)>> {
    let s = schedfile::connect(holder, secret, Role::Peer).map_err(|e| match e {
        ConnectError::Unreachable(e) => e,
        ConnectError::Fatal(m) => std::io::Error::other(m),
    })?;
    let mut r = FrameReader::new(s.reader()?);
    let mut w = FrameWriter::new(s.writer()?);
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(50_000) {
        for (id, stored) in crate::dataplane::fetch_values(&mut r, &mut w, chunk)? {
            let (tag, body) = stored.wire();
            out.push((id, (tag, body.to_vec())));
        }
    }
    Ok(out)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Reader = FrameReader<crate::seal::LinkReader>;
type Writer = FrameWriter<crate::seal::LinkWriter>;

/// Register as a client on an authenticated connection.
fn register(link: crate::seal::Link, address: &str) -> Result<(Reader, Writer, TcpStream), String> {
    let lost = |e: std::io::Error| format!("lost the scheduler at {address}: {e}");
    let _ = link.set_nodelay(true);
    let stream = link.stream().map_err(lost)?;
    let mut writer = FrameWriter::new(link.writer().map_err(lost)?);
    let name = format!("{}-{}-py", crate::util::hostname(), std::process::id());
    writer.send(&[ToScheduler::RegisterClient { name }], &[]).map_err(lost)?;
    let mut reader = FrameReader::new(link.reader().map_err(lost)?);
    match reader.read_batch::<ToClient>().map_err(lost)? {
        Some((msgs, _)) if matches!(msgs.first(), Some(ToClient::Welcome { .. })) => {}
        _ => return Err(format!("the scheduler at {address} did not welcome this client")),
    }
    // The scheduler pings every 5 s: silence this long means it is
    // frozen or cut off, and the reader gives up (see `read_loop`).
    stream.set_read_timeout(Some(crate::protocol::SCHEDULER_TIMEOUT)).map_err(lost)?;
    Ok((reader, writer, stream))
}

/// What the reader needs to connect again to a scheduler that came back.
struct Again {
    path: std::path::PathBuf,
    secret: Vec<u8>,
    writer: Arc<Mutex<Writer>>,
    stream: Arc<Mutex<TcpStream>>,
}

fn read_loop(mut reader: Reader, shared: &Shared, again: Option<Again>) {
    loop {
        let reason = read_until_lost(&mut reader, shared);
        let wait = {
            let mut st = shared.lock();
            if st.closing || again.is_none() {
                drop(st);
                return fail_all(shared, reason);
            }
            st.generation += 1;
            let st = &mut *st;
            for (k, state) in st.keys.iter_mut() {
                if matches!(state, KeyState::At { .. }) {
                    *state = KeyState::Pending;
                    st.relocating.insert(k.clone());
                }
            }
            st.scheduler_timeout
        };
        let a = again.as_ref().expect("checked");
        crate::log_at!(1, "client", "{reason}; looking for the scheduler through {} for up to {:.0} s", a.path.display(), wait.as_secs_f64());
        // Senders wait for the new connection (or for the failure).
        let mut w = lock(&a.writer);
        match connect_again(a, shared, wait) {
            Ok((r, new_writer, stream)) => {
                // `close` sets `closing`, then shuts the stream it finds
                // under this lock: the new one, or (closed meanwhile) none.
                let mut current = lock(&a.stream);
                if shared.lock().closing {
                    let _ = stream.shutdown(Shutdown::Both);
                    drop((current, w));
                    return fail_all(shared, "the client was closed".into());
                }
                *current = stream;
                drop(current);
                *w = new_writer;
                drop(w);
                reader = r;
            }
            Err(e) => {
                drop(w);
                return fail_all(shared, format!("{reason}; it did not come back: {e}"));
            }
        }
    }
}

/// Reach the scheduler through its file again, and want again every key
/// this client wants that it knows (a scheduler restarted with its journal
/// knows them); the others fail, saying why.
fn connect_again(a: &Again, shared: &Shared, wait: Duration) -> Result<(Reader, Writer, TcpStream), String> {
    let (file, link) = schedfile::wait_and_connect(&a.path, wait, Role::Client).map_err(|e| e.to_string())?;
    if file.secret_bytes().ok().as_deref() != Some(a.secret.as_slice()) {
        return Err(format!("the scheduler in {} now has another secret: a new cluster, which does not have this client's work", a.path.display()));
    }
    let (mut reader, mut writer, stream) = register(link, &file.address)?;
    stream.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
    let keys: Vec<String> = shared.lock().keys.keys().cloned().collect();
    let lost = |e: std::io::Error| format!("lost the scheduler at {} again: {e}", file.address);
    writer.send(&[ToScheduler::KeyStatesRequest { keys: keys.clone() }], &[]).map_err(lost)?;
    let states = loop {
        let Some((msgs, _)) = reader.read_batch::<ToClient>().map_err(lost)? else {
            return Err("the scheduler closed the connection".into());
        };
        let mut st = shared.lock();
        let mut found = None;
        for m in msgs {
            match m {
                ToClient::KeyStates(s) if found.is_none() => found = Some(s),
                m => message(&mut st, m),
            }
        }
        if let Some(s) = found {
            break s;
        }
    };
    let mut known = Vec::new();
    {
        let mut st = shared.lock();
        let st = &mut *st;
        for (k, state) in keys.into_iter().zip(states) {
            if state != "unknown" {
                known.push(k);
                continue;
            }
            st.relocating.remove(&k);
            if let Some(s) = st.keys.get_mut(&k) {
                if matches!(s, KeyState::Pending) {
                    let why = format!("the scheduler at {} came back without '{k}' (it was not started again with the --journal that had it)", file.address);
                    *s = KeyState::Failed(why.clone());
                    st.events.push(Event::Erred(k, why));
                }
            }
        }
        st.submissions.push_back(known.clone());
    }
    shared.cv.notify_all();
    writer.send(&[ToScheduler::UpdateGraph { tasks: Vec::new(), wanted: known }], &[]).map_err(lost)?;
    crate::log_at!(1, "client", "reached the scheduler at {} again; asked again for this client's keys", file.address);
    Ok((reader, writer, stream))
}

/// Every key still waiting fails with `reason`, and the session is lost.
fn fail_all(shared: &Shared, reason: String) {
    let mut st = shared.lock();
    let st = &mut *st;
    for state in st.keys.values_mut() {
        if matches!(state, KeyState::Pending | KeyState::At { .. }) {
            *state = KeyState::Failed(reason.clone());
        }
    }
    st.events.push(Event::Lost(reason.clone()));
    st.lost = Some(reason);
    shared.cv.notify_all();
}

/// Read the scheduler's messages into the state until the connection ends;
/// returns why.
fn read_until_lost(reader: &mut Reader, shared: &Shared) -> String {
    loop {
        match reader.read_batch::<ToClient>() {
            Ok(Some((msgs, _))) => {
                let mut st = shared.lock();
                for m in msgs {
                    message(&mut st, m);
                }
                drop(st);
                shared.cv.notify_all();
            }
            Ok(None) => break "the scheduler closed the connection".to_string(),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                break "the scheduler has said nothing for longer than the scheduler timeout (it pings every 5 s): it is frozen (stopped, swapping) or cut off; giving up on it".to_string()
            }
            Err(e) => break format!("lost the scheduler: {e}"),
        }
    }
}

/// One scheduler message into the key table and the events.
fn message(st: &mut State, m: ToClient) {
    match m {
        ToClient::GraphAccepted { .. } => {
            st.submissions.pop_front();
        }
        ToClient::GraphRejected { error } => {
            for k in st.submissions.pop_front().unwrap_or_default() {
                if let Some(s) = st.keys.get_mut(&k) {
                    if matches!(s, KeyState::Pending) {
                        *s = KeyState::Failed(format!("the graph was rejected: {error}"));
                        st.events.push(Event::Erred(k, format!("the graph was rejected: {error}")));
                    }
                }
            }
        }
        ToClient::KeyInMemory { key, id, holders, value } => {
            let Some(s) = st.keys.get_mut(&key) else { return };
            if matches!(s, KeyState::Value(..)) {
                return;
            }
            let was_pending = matches!(s, KeyState::Pending | KeyState::Failed(_)) && !st.relocating.remove(&key);
            *s = match value {
                Some((tag, body)) => KeyState::Value(tag, Arc::new(body)),
                None => KeyState::At { id, holders },
            };
            if was_pending {
                st.events.push(Event::Finished(key));
            }
        }
        ToClient::KeyErred { key, error } => {
            let Some(s) = st.keys.get_mut(&key) else { return };
            if matches!(s, KeyState::Value(..) | KeyState::Failed(_)) {
                return;
            }
            *s = KeyState::Failed(error.clone());
            st.events.push(Event::Erred(key, error));
        }
        ToClient::KeyStuck { key, reason } => st.events.push(Event::Stuck(key, reason)),
        ToClient::Status(r) => st.status = Some(r),
        r @ (ToClient::Published { .. } | ToClient::Dataset { .. } | ToClient::Datasets { .. }) => st.replies.push_back(r),
        ToClient::ShuttingDown { .. } | ToClient::Welcome { .. } | ToClient::Retiring { .. } | ToClient::Ping | ToClient::Progress(_) | ToClient::Telemetry(_) | ToClient::KeyStates(_) => {}
    }
}
