//! The scheduler's journal (`--journal FILE`): what a scheduler started
//! again needs to resume where the last one stopped.
//!
//! The file is append-only: a header, then frames, each one batch of
//! records (everything one turn of the scheduler's loop produced):
//!
//! ```text
//! "TFJOURN1"
//! frame: u32 LE payload length | first 8 bytes of SHA-256(payload) | payload
//! payload: bincode records (variable-length integers), back to back
//! ```
//!
//! Records: the run that writes the file and the cluster's secret
//! (`Start`, first), submitted graphs as the clients sent them (before the
//! result cache rewrote them), keys released, clients gone, workers joining
//! and leaving, and every value finished or copied (which worker holds it,
//! under which task id). A writer thread appends the batches as they come
//! and syncs them to disk at most every 20 ms (group commit), so the
//! scheduler's loop never waits for the disk. A kill -9 mid-write leaves a
//! torn last frame: [`load`] stops at the first frame whose length or
//! checksum does not hold, says how many bytes it dropped, and the rest is
//! used. At every start from a journal, and whenever no client is left and
//! nothing is wanted, the file is rewritten (temporary file, synced,
//! renamed) with only what is still live: the journal is compacted.
//!
//! [`resume`] turns a loaded journal into what the restarted scheduler
//! submits (pure, tested without IO): the tasks of every graph, the keys
//! some client still waited for, the workers that were connected, and the
//! old task ids of finished values (so workers that come back can name
//! what they hold). The file holds the secret: it is created 0600, and
//! one owned by another user or open to others is refused.

use crate::protocol::TaskDef;
use crossbeam_channel::{unbounded, Sender};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"TFJOURN1";
/// A frame larger than this is taken for garbage (a torn length).
const MAX_FRAME: usize = 1 << 34;

/// One record as read back.
#[derive(Debug, PartialEq, Deserialize)]
pub enum Record {
    Start { run: u64, secret: Vec<u8>, started: f64 },
    Graph { client: u32, tasks: Vec<TaskDef>, wanted: Vec<String> },
    Released { client: u32, keys: Vec<String> },
    ClientGone { client: u32 },
    WorkerJoined { worker: u32, name: String },
    WorkerGone { worker: u32 },
    /// Worker `worker` holds the value of task `id` (`key`): it ran it or
    /// received a copy.
    Finished { worker: u32, id: u32, key: String },
}

/// One record as written: [`Record`]'s variants in the same order, borrowing
/// what it writes (bincode encodes a slice as it does a vector).
#[derive(Serialize)]
pub enum RecordRef<'a> {
    Start { run: u64, secret: &'a [u8], started: f64 },
    Graph { client: u32, tasks: &'a [TaskDef], wanted: &'a [String] },
    Released { client: u32, keys: &'a [String] },
    ClientGone { client: u32 },
    WorkerJoined { worker: u32, name: &'a str },
    WorkerGone { worker: u32 },
    Finished { worker: u32, id: u32, key: &'a str },
}

/// Records are bincode with variable-length integers (lengths, ids and
/// counts are mostly small: half the bytes of the fixed-width encoding).
fn codec() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new().with_no_limit()
}

/// Append one record's encoding to `buf`.
pub fn encode(buf: &mut Vec<u8>, r: &RecordRef<'_>) {
    use bincode::Options;
    codec().serialize_into(&mut *buf, r).expect("records always encode");
}

/// Take the lock of the journal at `path` (`FILE.lock`, flock: released
/// by the kernel when the process ends, however it ends): two schedulers
/// writing one journal would corrupt it. `Ok(None)` where the file system
/// has no locks (some network file systems): a warning, no lock.
pub fn lock(path: &Path) -> Result<Option<File>, String> {
    check_directory(path)?;
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    let lock_path = path.with_file_name(name);
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|e| format!("cannot open the journal's lock {}: {e}", lock_path.display()))?;
    let meta = f.metadata().map_err(|e| format!("journal lock {}: {e}", lock_path.display()))?;
    if meta.uid() != crate::util::effective_uid() {
        return Err(format!("refusing journal lock {}: it belongs to {}, not to you", lock_path.display(), crate::util::user_name(meta.uid())));
    }
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(format!("journal {} is in use by another scheduler (its lock {} is held); stop that scheduler first, or give this one another --journal", path.display(), lock_path.display()));
        }
        crate::log_at!(1, "scheduler", "cannot lock the journal {} ({e}): make sure no other scheduler uses it", path.display());
        return Ok(None);
    }
    Ok(Some(f))
}

/// A journal read back.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<Record>,
    /// Why the tail was dropped (a torn last write), if it was.
    pub dropped: Option<String>,
}

/// Read `path`: `Ok(None)` if it does not exist. Refused: a file that is
/// not a regular file, belongs to another user or is open to others; a
/// file that is not a journal.
pub fn load(path: &Path) -> Result<Option<Loaded>, String> {
    let mut f = match File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open journal {}: {e} (a symbolic link is refused)", path.display())),
    };
    let meta = f.metadata().map_err(|e| format!("journal {}: {e}", path.display()))?;
    check_private(path, &meta)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| format!("cannot read journal {}: {e}", path.display()))?;
    if bytes.is_empty() {
        return Ok(Some(Loaded::default()));
    }
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(format!(
            "{} is not a taskfarm journal (it does not start with {}); pass another --journal path or remove the file",
            path.display(),
            String::from_utf8_lossy(MAGIC)
        ));
    }
    Ok(Some(parse(&bytes[MAGIC.len()..])))
}

/// The frames of a journal after its header; stops at the first that does
/// not hold together (and says so).
pub fn parse(mut rest: &[u8]) -> Loaded {
    let total = rest.len();
    let mut out = Loaded::default();
    while !rest.is_empty() {
        let offset = total - rest.len();
        let bad = |why: &str| Some(format!("dropped the last {} bytes of the journal (from byte {}: {why}), a write torn by a crash: the records of its last batch are lost", rest.len(), offset + MAGIC.len()));
        if rest.len() < 12 {
            out.dropped = bad("a frame header cut short");
            break;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME || rest.len() < 12 + len {
            out.dropped = bad("a frame cut short");
            break;
        }
        let payload = &rest[12..12 + len];
        if Sha256::digest(payload)[..8] != rest[4..12] {
            out.dropped = bad("a frame whose checksum does not match");
            break;
        }
        let mut cursor = io::Cursor::new(payload);
        let mut batch = Vec::new();
        while (cursor.position() as usize) < len {
            match bincode::Options::deserialize_from::<_, Record>(codec(), &mut cursor) {
                Ok(r) => batch.push(r),
                Err(e) => {
                    out.dropped = bad(&format!("a record that does not decode: {e}"));
                    return out;
                }
            }
        }
        out.records.extend(batch);
        rest = &rest[12 + len..];
    }
    out
}

/// A frame around `payload` (encoded records).
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 12);
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&Sha256::digest(payload)[..8]);
    f.extend_from_slice(payload);
    f
}

fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    if !meta.is_file() {
        return Err(format!("journal {} is not a regular file", path.display()));
    }
    let me = crate::util::effective_uid();
    if meta.uid() != me {
        return Err(format!(
            "refusing journal {}: it belongs to {}, not to you ({}); whoever wrote it could make this scheduler run their tasks. Use a journal of your own",
            path.display(),
            crate::util::user_name(meta.uid()),
            crate::util::user_name(me)
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "refusing journal {}: other users may read or write it (mode {:o}) and it holds the cluster's secret; chmod 600 it, or remove it to start afresh",
            path.display(),
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

fn check_directory(path: &Path) -> Result<(), String> {
    match crate::util::replaceable_by_anyone(path) {
        Some((dir, mode)) => Err(format!(
            "journal directory {} may be written by every user (mode {mode:o}, no sticky bit): anyone could replace the journal. Use a directory only you can write to",
            dir.display()
        )),
        None => Ok(()),
    }
}

/// What a scheduler started from a journal resumes.
#[derive(Debug, Default, PartialEq)]
pub struct Resume {
    /// The run that wrote the journal (workers that come back name it).
    pub run: u64,
    pub secret: Vec<u8>,
    /// Every task of every graph in the journal, each key once (the first
    /// definition wins, as in the scheduler). Tasks nobody needs are culled
    /// by the scheduler as usual.
    pub tasks: Vec<TaskDef>,
    /// Keys some client that had not left still waited for.
    pub wanted: Vec<String>,
    /// Names of the workers connected when the journal ends.
    pub workers: Vec<String>,
    /// Task ids (of `run`) of values finished or copied, to their keys.
    pub keys: HashMap<u32, String>,
    /// Graphs submitted by clients that had not left.
    pub graphs: usize,
}

/// What to resume from `records` (`None`: no `Start`, nothing to resume).
pub fn resume(records: Vec<Record>) -> Option<Resume> {
    let mut r = Resume::default();
    let mut started = false;
    let mut seen: HashSet<String> = HashSet::new();
    // Per client: the keys it wants, in the order it asked for them.
    let mut wants: HashMap<u32, (Vec<String>, HashSet<String>)> = HashMap::new();
    let mut live_graphs: HashMap<u32, usize> = HashMap::new();
    let mut workers: Vec<(u32, String)> = Vec::new();
    for rec in records {
        match rec {
            Record::Start { run, secret, .. } => {
                started = true;
                r.run = run;
                r.secret = secret;
            }
            Record::Graph { client, tasks, wanted } => {
                for t in tasks {
                    if seen.insert(t.key.clone()) {
                        r.tasks.push(t);
                    }
                }
                let (order, set) = wants.entry(client).or_default();
                for k in wanted {
                    if set.insert(k.clone()) {
                        order.push(k);
                    }
                }
                *live_graphs.entry(client).or_default() += 1;
            }
            Record::Released { client, keys } => {
                if let Some((_, set)) = wants.get_mut(&client) {
                    for k in &keys {
                        set.remove(k);
                    }
                }
            }
            Record::ClientGone { client } => {
                wants.remove(&client);
                live_graphs.remove(&client);
            }
            Record::WorkerJoined { worker, name } => workers.push((worker, name)),
            Record::WorkerGone { worker } => workers.retain(|(w, _)| *w != worker),
            Record::Finished { id, key, .. } => {
                r.keys.insert(id, key);
            }
        }
    }
    if !started {
        return None;
    }
    let mut clients: Vec<u32> = wants.keys().copied().collect();
    clients.sort_unstable();
    let mut wanted_seen = HashSet::new();
    for c in clients {
        let (order, set) = &wants[&c];
        for k in order {
            if set.contains(k) && wanted_seen.insert(k.clone()) {
                r.wanted.push(k.clone());
            }
        }
    }
    r.graphs = live_graphs.values().sum();
    r.workers = workers.into_iter().map(|(_, n)| n).collect();
    Some(r)
}

enum Job {
    /// Encoded records to append as one frame.
    Append(Vec<u8>),
    /// Replace the file: these encoded records become its only frame.
    Rewrite(Vec<u8>),
    /// Answer once everything before is on disk.
    Sync(Sender<()>),
}

/// The appending side, owned by the scheduler's loop: records gather in a
/// buffer ([`Writer::record`]), [`Writer::flush`] hands them to the writer
/// thread as one frame.
pub struct Writer {
    path: PathBuf,
    buf: Vec<u8>,
    tx: Sender<Job>,
    /// Frames appended since the file was last rewritten.
    pub appended: u64,
}

impl Writer {
    /// Start a fresh journal at `path` holding `first` (encoded records:
    /// at least `Start`), replacing any file there, and the thread that
    /// appends to it.
    pub fn create(path: &Path, first: Vec<u8>) -> Result<Writer, String> {
        check_directory(path)?;
        let file = rewrite(path, &first).map_err(|e| format!("cannot write journal {}: {e}", path.display()))?;
        let (tx, rx) = unbounded::<Job>();
        let thread_path = path.to_path_buf();
        std::thread::Builder::new()
            .name("tf-journal".into())
            .spawn(move || write_loop(&rx, file, &thread_path))
            .map_err(|e| format!("cannot start the journal thread: {e}"))?;
        Ok(Writer { path: path.to_path_buf(), buf: Vec::new(), tx, appended: 0 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record(&mut self, r: &RecordRef<'_>) {
        encode(&mut self.buf, r);
    }

    /// Append already encoded records.
    pub fn record_encoded(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Hand what was recorded since the last flush to the writer thread.
    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.appended += 1;
            let _ = self.tx.send(Job::Append(std::mem::take(&mut self.buf)));
        }
    }

    /// Flush, and wait until everything recorded is on disk (or the writer
    /// gave up).
    pub fn sync(&mut self) {
        self.flush();
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.tx.send(Job::Sync(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Replace the whole journal with `records` (encoded), after what was
    /// recorded before.
    pub fn compact(&mut self, records: Vec<u8>) {
        self.flush();
        self.appended = 0;
        let _ = self.tx.send(Job::Rewrite(records));
    }
}

/// The writer thread: append what comes, sync at most every [`SYNC_EVERY`]
/// (and before answering a `Sync`). Records written but not yet synced
/// survive a kill of the process (they are in the page cache), not a crash
/// of the node.
fn write_loop(rx: &crossbeam_channel::Receiver<Job>, mut file: File, path: &Path) {
    use crossbeam_channel::RecvTimeoutError;
    let mut broken = false;
    let mut dirty = false;
    let mut last_sync = std::time::Instant::now();
    loop {
        let first = if dirty {
            match rx.recv_timeout(SYNC_EVERY.saturating_sub(last_sync.elapsed())) {
                Ok(j) => Some(j),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = file.sync_data();
                    return;
                }
            }
        } else {
            match rx.recv() {
                Ok(j) => Some(j),
                Err(_) => return,
            }
        };
        let mut jobs: Vec<Job> = first.into_iter().collect();
        while let Ok(more) = rx.try_recv() {
            jobs.push(more);
        }
        let mut answers = Vec::new();
        let mut pending = Vec::new();
        let mut done = Ok(());
        for job in jobs {
            match job {
                Job::Append(payload) => pending.extend_from_slice(&frame(&payload)),
                Job::Rewrite(payload) if !broken => {
                    done = done.and_then(|()| file.write_all(&pending)).and_then(|()| rewrite(path, &payload).map(|f| file = f));
                    pending.clear();
                    dirty = false;
                }
                Job::Rewrite(_) => {}
                Job::Sync(answer) => answers.push(answer),
            }
        }
        if !broken {
            if !pending.is_empty() {
                done = done.and_then(|()| file.write_all(&pending));
                dirty = true;
            }
            if dirty && (!answers.is_empty() || last_sync.elapsed() >= SYNC_EVERY) {
                done = done.and_then(|()| file.sync_data());
                dirty = false;
                last_sync = std::time::Instant::now();
            }
            if let Err(e) = done {
                crate::log_at!(0, "scheduler", "cannot write the journal {}: {e}; journaling stops (a restart resumes from what was written)", path.display());
                broken = true;
                dirty = false;
            }
        }
        for a in answers {
            let _ = a.send(());
        }
    }
}

/// The journal is synced to disk at most this often (and at a clean stop).
const SYNC_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Write `payload` as the only frame of a new journal at `path` (temporary
/// file, synced, renamed) and return it opened for appending.
fn rewrite(path: &Path, payload: &[u8]) -> io::Result<File> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&frame(payload));
    crate::util::write_file_atomic(path, &bytes, 0o600)?;
    File::options().append(true).custom_flags(libc::O_NOFOLLOW).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Annotations;

    fn task(key: &str, deps: &[&str]) -> TaskDef {
        TaskDef { key: key.into(), deps: deps.iter().map(|d| d.to_string()).collect(), spec: vec![1, 2], annotations: Annotations::default(), order: 0 }
    }

    fn encoded(records: &[RecordRef<'_>]) -> Vec<u8> {
        let mut b = Vec::new();
        for r in records {
            encode(&mut b, r);
        }
        b
    }

    #[test]
    fn records_written_borrowed_read_back_owned() {
        let tasks = [task("a", &[]), task("b", &["a"])];
        let wanted = ["b".to_string()];
        let bytes = encoded(&[
            RecordRef::Start { run: 7, secret: b"s", started: 1.5 },
            RecordRef::Graph { client: 1, tasks: &tasks, wanted: &wanted },
            RecordRef::Released { client: 1, keys: &wanted },
            RecordRef::ClientGone { client: 1 },
            RecordRef::WorkerJoined { worker: 3, name: "w" },
            RecordRef::WorkerGone { worker: 3 },
            RecordRef::Finished { worker: 3, id: 9, key: "a" },
        ]);
        let loaded = parse(&frame(&bytes));
        assert_eq!(loaded.dropped, None);
        assert_eq!(
            loaded.records,
            vec![
                Record::Start { run: 7, secret: b"s".to_vec(), started: 1.5 },
                Record::Graph { client: 1, tasks: tasks.to_vec(), wanted: wanted.to_vec() },
                Record::Released { client: 1, keys: wanted.to_vec() },
                Record::ClientGone { client: 1 },
                Record::WorkerJoined { worker: 3, name: "w".into() },
                Record::WorkerGone { worker: 3 },
                Record::Finished { worker: 3, id: 9, key: "a".into() },
            ]
        );
    }

    #[test]
    fn a_torn_last_frame_is_dropped_and_said_and_the_rest_kept() {
        let mut file = frame(&encoded(&[RecordRef::Start { run: 1, secret: b"s", started: 0.0 }]));
        file.extend(frame(&encoded(&[RecordRef::ClientGone { client: 4 }])));
        let whole = file.len();
        file.extend(frame(&encoded(&[RecordRef::WorkerGone { worker: 5 }, RecordRef::WorkerGone { worker: 6 }])));
        for cut in whole + 1..file.len() {
            let loaded = parse(&file[..cut]);
            assert_eq!(loaded.records.len(), 2, "cut at {cut}");
            let said = loaded.dropped.expect("the torn tail is reported");
            assert!(said.contains(&format!("last {} bytes", cut - whole)), "{said}");
        }
        // A flipped byte in the last frame's payload fails its checksum.
        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let loaded = parse(&flipped);
        assert_eq!(loaded.records.len(), 2);
        assert!(loaded.dropped.unwrap().contains("checksum"));
        assert_eq!(parse(&file).records.len(), 4);
    }

    #[test]
    fn resume_keeps_what_live_clients_still_want_and_the_connected_workers() {
        let g1 = [task("a", &[]), task("b", &["a"])];
        let g2 = [task("a", &[]), task("c", &["a"])];
        let g3 = [task("d", &[])];
        let records = parse(&frame(&encoded(&[
            RecordRef::Start { run: 42, secret: b"k", started: 0.0 },
            RecordRef::WorkerJoined { worker: 1, name: "w1" },
            RecordRef::WorkerJoined { worker: 2, name: "w2" },
            RecordRef::Graph { client: 1, tasks: &g1, wanted: &["b".into()] },
            RecordRef::Graph { client: 2, tasks: &g2, wanted: &["c".into(), "a".into()] },
            RecordRef::Graph { client: 3, tasks: &g3, wanted: &["d".into()] },
            RecordRef::Finished { worker: 1, id: 0, key: "a" },
            RecordRef::Finished { worker: 2, id: 0, key: "a" },
            RecordRef::Finished { worker: 2, id: 3, key: "d" },
            RecordRef::Released { client: 2, keys: &["a".into()] },
            RecordRef::ClientGone { client: 3 },
            RecordRef::WorkerGone { worker: 1 },
        ])))
        .records;
        let r = resume(records).unwrap();
        assert_eq!((r.run, r.secret.as_slice()), (42, &b"k"[..]));
        assert_eq!(r.tasks.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!(r.wanted, ["b", "c"]);
        assert_eq!(r.workers, ["w2"]);
        assert_eq!(r.keys, HashMap::from([(0, "a".to_string()), (3, "d".to_string())]));
        assert_eq!(r.graphs, 2);
        assert_eq!(resume(vec![Record::ClientGone { client: 1 }]), None);
    }

    #[test]
    fn a_journal_open_to_others_or_not_a_journal_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tf-journal-{}", crate::util::hex(&crate::util::random_bytes(4))));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("j");
        assert!(load(&path).unwrap().is_none());
        let mut w = Writer::create(&path, encoded(&[RecordRef::Start { run: 1, secret: b"s", started: 0.0 }])).unwrap();
        w.record(&RecordRef::ClientGone { client: 2 });
        w.sync();
        assert_eq!(load(&path).unwrap().unwrap().records.len(), 2);
        w.compact(encoded(&[RecordRef::Start { run: 2, secret: b"s", started: 0.0 }]));
        w.sync();
        assert_eq!(load(&path).unwrap().unwrap().records, vec![Record::Start { run: 2, secret: b"s".to_vec(), started: 0.0 }]);
        drop(w);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(load(&path).unwrap_err().contains("chmod 600"));
        std::fs::write(dir.join("other"), b"hello").unwrap();
        std::fs::set_permissions(dir.join("other"), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(&dir.join("other")).unwrap_err().contains("not a taskfarm journal"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
