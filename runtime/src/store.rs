//! A worker's values: in memory, or spilled to its local directory when
//! memory runs short (least recently used first), and brought back
//! transparently when a task or a peer needs them.
//!
//! Values keep their wire form: a tag byte and a body. A bytes value's body
//! is the value itself, so it goes from socket to store to socket (or disk)
//! without being copied or re-encoded; a JSON value's body is serialised once,
//! on first need, and cached.

use crate::protocol::TaskId;
use crate::value::Data;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// One stored value.
pub struct Value {
    pub data: Data,
    json: OnceLock<Vec<u8>>,
}

impl Value {
    pub fn new(data: Data) -> Value {
        Value { data, json: OnceLock::new() }
    }

    /// From a payload received off the wire (or read from disk).
    pub fn from_wire(tag: u8, body: Vec<u8>) -> io::Result<Value> {
        let data = Data::from_parts(tag, &body)?;
        Ok(match data {
            Some(d) => {
                let v = Value::new(d);
                let _ = v.json.set(body);
                v
            }
            None => Value::new(Data::opaque(tag, body)),
        })
    }

    /// Tag byte and body, as sent on the wire and written to disk.
    pub fn wire(&self) -> (u8, &[u8]) {
        match &self.data {
            Data::Bytes(b) => (Data::TAG_BYTES, b),
            Data::Pickle(b) => (Data::TAG_PICKLE, b),
            Data::Json(j) => (Data::TAG_JSON, self.json.get_or_init(|| serde_json::to_vec(j).expect("JSON values serialise"))),
        }
    }

    pub fn nbytes(&self) -> u64 {
        self.data.nbytes()
    }
}

struct Entry {
    value: Arc<Value>,
    nbytes: u64,
    tick: u64,
}

#[derive(Default)]
struct Inner {
    memory: HashMap<TaskId, Entry>,
    /// Uses in order, least recent first: `(tick, id)` pushed on every
    /// insert and read. An item is current only while its tick equals the
    /// entry's; stale ones are skipped when spilling and dropped in bulk by
    /// `used`. Cheaper per access than an ordered map (reads of small
    /// values are on every task's path).
    lru: VecDeque<(u64, TaskId)>,
    tick: u64,
    memory_bytes: u64,
    disk: HashMap<TaskId, u64>,
    disk_bytes: u64,
    spilled: u64,
    unspilled: u64,
    spilled_bytes: u64,
    unspilled_bytes: u64,
    spill_seconds: f64,
    unspill_seconds: f64,
    /// Why the last attempt to spill failed (cleared by a spill that works).
    spill_error: Option<String>,
}

impl Inner {
    /// Record a use of `id` at `tick`, dropping stale records once they
    /// outnumber the values (amortised O(1) per use).
    fn used(&mut self, tick: u64, id: TaskId) {
        self.lru.push_back((tick, id));
        if self.lru.len() > 2 * self.memory.len() + 1024 {
            let memory = &self.memory;
            self.lru.retain(|(t, i)| memory.get(i).is_some_and(|e| e.tick == *t));
        }
    }
}

/// Counters for status and tests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreStats {
    pub memory_bytes: u64,
    pub memory_count: u64,
    pub disk_bytes: u64,
    pub disk_count: u64,
    /// Values written to disk so far.
    pub spilled: u64,
    /// Values read back from disk so far.
    pub unspilled: u64,
    /// Bytes written and read back so far, and the time it took.
    pub spilled_bytes: u64,
    pub unspilled_bytes: u64,
    pub spill_seconds: f64,
    pub unspill_seconds: f64,
    /// Why the last attempt to spill failed, if it did (e.g. the disk is full).
    pub spill_error: Option<String>,
}

/// The values a worker holds. Shared by its loop, executors and data server.
pub struct Store {
    inner: Mutex<Inner>,
    spill_dir: PathBuf,
}

impl Store {
    /// A store spilling into `spill_dir` (created on first spill).
    pub fn new(spill_dir: PathBuf) -> Store {
        Store { inner: Mutex::new(Inner::default()), spill_dir }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("store lock")
    }

    fn path(&self, id: TaskId) -> PathBuf {
        self.spill_dir.join(id.to_string())
    }

    pub fn insert(&self, id: TaskId, value: Arc<Value>) {
        let mut s = self.lock();
        if s.disk.contains_key(&id) {
            let n = s.disk.remove(&id).unwrap_or(0);
            s.disk_bytes -= n;
            let _ = std::fs::remove_file(self.path(id));
        }
        let nbytes = value.nbytes();
        s.tick += 1;
        let tick = s.tick;
        if let Some(old) = s.memory.insert(id, Entry { value, nbytes, tick }) {
            s.memory_bytes -= old.nbytes;
        }
        s.used(tick, id);
        s.memory_bytes += nbytes;
    }

    pub fn contains(&self, id: TaskId) -> bool {
        let s = self.lock();
        s.memory.contains_key(&id) || s.disk.contains_key(&id)
    }

    /// Whether the value is held in memory (not spilled, not absent).
    pub fn in_memory(&self, id: TaskId) -> bool {
        self.lock().memory.contains_key(&id)
    }

    /// Size of a held value (in memory or spilled), without reading it back.
    pub fn nbytes(&self, id: TaskId) -> Option<u64> {
        let s = self.lock();
        s.memory.get(&id).map(|e| e.nbytes).or_else(|| s.disk.get(&id).copied())
    }

    /// The value, read back from disk if it was spilled.
    pub fn get(&self, id: TaskId) -> io::Result<Option<Arc<Value>>> {
        let mut s = self.lock();
        s.tick += 1;
        let tick = s.tick;
        if let Some(e) = s.memory.get_mut(&id) {
            e.tick = tick;
            let value = e.value.clone();
            s.used(tick, id);
            return Ok(Some(value));
        }
        let Some(&nbytes) = s.disk.get(&id) else { return Ok(None) };
        let path = self.path(id);
        let start = std::time::Instant::now();
        let value = Arc::new(read_spilled(&path)?);
        s.unspill_seconds += start.elapsed().as_secs_f64();
        s.unspilled_bytes += value.wire().1.len() as u64 + 1;
        s.disk.remove(&id);
        s.disk_bytes -= nbytes;
        s.unspilled += 1;
        let _ = std::fs::remove_file(&path);
        let nbytes = value.nbytes();
        s.memory.insert(id, Entry { value: value.clone(), nbytes, tick });
        s.used(tick, id);
        s.memory_bytes += nbytes;
        Ok(Some(value))
    }

    pub fn remove(&self, id: TaskId) {
        let mut s = self.lock();
        let freed = s.memory.remove(&id).map(|e| {
            s.memory_bytes -= e.nbytes;
            e.value
        });
        if let Some(n) = s.disk.remove(&id) {
            s.disk_bytes -= n;
            let _ = std::fs::remove_file(self.path(id));
        }
        drop(s);
        // The buffer of a large bytes value nobody else holds is reused for
        // the next large value received (see bufpool).
        if let Some(Ok(Value { data: Data::Bytes(b) | Data::Pickle(crate::value::Blob::Heap(b)), .. })) = freed.map(Arc::try_unwrap) {
            crate::bufpool::give(b);
        }
    }

    /// Every value held (in memory or spilled) with its size.
    pub fn held(&self) -> Vec<(TaskId, u64)> {
        let s = self.lock();
        let mut v: Vec<(TaskId, u64)> = s.memory.iter().map(|(&id, e)| (id, e.nbytes)).chain(s.disk.iter().map(|(&id, &n)| (id, n))).collect();
        v.sort_unstable();
        v
    }

    /// Keep the values named in `pairs` under their new ids (`(old, new)`)
    /// and drop every other one: a restarted scheduler numbers tasks anew.
    /// Spilled values' files are renamed in two steps, so an old id that
    /// is another value's new id is never overwritten.
    pub fn renumber(&self, pairs: &[(TaskId, TaskId)]) {
        let mut s = self.lock();
        let mut old_memory = std::mem::take(&mut s.memory);
        let mut old_disk = std::mem::take(&mut s.disk);
        s.lru.clear();
        s.memory_bytes = 0;
        s.disk_bytes = 0;
        let mut memory: HashMap<TaskId, Entry> = HashMap::with_capacity(pairs.len());
        let mut disk: HashMap<TaskId, u64> = HashMap::new();
        let mut moved_files = Vec::new();
        for &(old, new) in pairs {
            if let Some(e) = old_memory.remove(&old) {
                memory.insert(new, e);
            } else if let Some(n) = old_disk.remove(&old) {
                let tmp = self.spill_dir.join(format!("renumber-{new}"));
                if std::fs::rename(self.path(old), &tmp).is_ok() {
                    moved_files.push((tmp, new, n));
                }
            }
        }
        // Dropped values' files go before the renamed ones take their names.
        for id in old_disk.keys() {
            let _ = std::fs::remove_file(self.path(*id));
        }
        for (tmp, new, n) in moved_files {
            if std::fs::rename(&tmp, self.path(new)).is_ok() {
                disk.insert(new, n);
            }
        }
        let mut entries: Vec<(u64, TaskId)> = memory.iter().map(|(&id, e)| (e.tick, id)).collect();
        entries.sort_unstable();
        s.lru.extend(entries);
        s.memory_bytes = memory.values().map(|e| e.nbytes).sum();
        s.disk_bytes = disk.values().sum();
        s.memory = memory;
        s.disk = disk;
        drop(s);
        drop(old_memory);
    }

    /// Spill least recently used values until at most `target` bytes are
    /// held in memory. Returns the bytes written.
    pub fn spill_until(&self, target: u64) -> io::Result<u64> {
        let mut s = self.lock();
        let mut written = 0;
        while s.memory_bytes > target {
            let Some((tick, id)) = s.lru.pop_front() else { break };
            if s.memory.get(&id).is_none_or(|e| e.tick != tick) {
                continue; // stale: used again since, or gone
            }
            let entry = s.memory.get(&id).expect("checked just above");
            let (tag, body) = entry.value.wire();
            let start = std::time::Instant::now();
            let done = if written == 0 { std::fs::create_dir_all(&self.spill_dir) } else { Ok(()) }.and_then(|()| write_spilled(&self.path(id), tag, body));
            if let Err(e) = done {
                s.lru.push_front((tick, id)); // still in memory, still the oldest
                // Leave no partial file behind (a full disk stays as full as it was).
                let _ = std::fs::remove_file(self.path(id));
                s.spill_error = Some(e.to_string());
                return Err(e);
            }
            let (elapsed, size) = (start.elapsed().as_secs_f64(), body.len() as u64 + 1);
            let nbytes = entry.nbytes;
            s.spill_error = None;
            s.spill_seconds += elapsed;
            s.spilled_bytes += size;
            s.memory.remove(&id);
            s.memory_bytes -= nbytes;
            s.disk.insert(id, nbytes);
            s.disk_bytes += nbytes;
            s.spilled += 1;
            written += nbytes;
        }
        Ok(written)
    }

    pub fn stats(&self) -> StoreStats {
        let s = self.lock();
        StoreStats {
            memory_bytes: s.memory_bytes,
            memory_count: s.memory.len() as u64,
            disk_bytes: s.disk_bytes,
            disk_count: s.disk.len() as u64,
            spilled: s.spilled,
            unspilled: s.unspilled,
            spilled_bytes: s.spilled_bytes,
            unspilled_bytes: s.unspilled_bytes,
            spill_seconds: s.spill_seconds,
            unspill_seconds: s.unspill_seconds,
            spill_error: s.spill_error.clone(),
        }
    }
}

fn write_spilled(path: &Path, tag: u8, body: &[u8]) -> io::Result<()> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("cannot spill to {}: {e}", path.display()));
    let mut f = File::create(path).map_err(named)?;
    f.write_all(&[tag]).map_err(named)?;
    f.write_all(body).map_err(named)
}

fn read_spilled(path: &Path) -> io::Result<Value> {
    let mut f = File::open(path).map_err(|e| io::Error::new(e.kind(), format!("cannot read spilled value {}: {e}", path.display())))?;
    let len = f.metadata()?.len();
    let mut tag = [0u8; 1];
    f.read_exact(&mut tag)?;
    let mut body = crate::bufpool::take(len.saturating_sub(1) as usize).ok_or_else(|| io::Error::other("cannot allocate memory to unspill a value"))?;
    f.read_to_end(&mut body)?;
    Value::from_wire(tag[0], body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dir() -> PathBuf {
        std::env::temp_dir().join(format!("tf-store-{}", crate::util::hex(&crate::util::random_bytes(4))))
    }

    #[test]
    fn spills_least_recently_used_and_reads_back() {
        let d = dir();
        let s = Store::new(d.clone());
        for i in 0..10u32 {
            s.insert(i, Arc::new(Value::new(Data::Bytes(vec![i as u8; 1000]))));
        }
        s.insert(10, Arc::new(Value::new(Data::Json(json!({"k": [1, 2, 3]})))));
        // touch 0 so it is recent
        s.get(0).unwrap();
        let written = s.spill_until(3000).unwrap();
        assert!(written >= 7000, "{written}");
        let st = s.stats();
        assert!(st.memory_bytes <= 3000 && st.disk_count >= 7, "{st:?}");
        assert!(d.join("1").exists() && !d.join("0").exists(), "oldest spilled, recently used kept");
        // Values come back intact, transparently.
        assert_eq!(s.get(1).unwrap().unwrap().data, Data::Bytes(vec![1; 1000]));
        assert!(!d.join("1").exists());
        assert_eq!(s.stats().unspilled, 1);
        s.spill_until(0).unwrap();
        assert_eq!(s.get(10).unwrap().unwrap().data, Data::Json(json!({"k": [1, 2, 3]})));
        for i in 0..=10 {
            s.remove(i);
        }
        assert_eq!(s.stats().disk_count, 0);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "no spill files left");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn renumbering_keeps_the_listed_values_under_new_ids_in_memory_and_on_disk() {
        let d = dir();
        let s = Store::new(d.clone());
        for i in 0..6u32 {
            s.insert(i, Arc::new(Value::new(Data::Bytes(vec![i as u8; 1000]))));
        }
        s.spill_until(3000).unwrap(); // 0, 1, 2 on disk
        assert_eq!(s.stats().disk_count, 3);
        // 1 -> 0 and 0 -> 1 swap spilled names; 4 -> 2 lands on a dropped
        // spilled value's id; 2, 3 and 5 are dropped.
        s.renumber(&[(0, 1), (1, 0), (4, 2)]);
        assert_eq!(s.held(), vec![(0, 1000), (1, 1000), (2, 1000)]);
        assert_eq!(s.get(0).unwrap().unwrap().data, Data::Bytes(vec![1; 1000]));
        assert_eq!(s.get(1).unwrap().unwrap().data, Data::Bytes(vec![0; 1000]));
        assert_eq!(s.get(2).unwrap().unwrap().data, Data::Bytes(vec![4; 1000]));
        assert!(s.get(3).unwrap().is_none() && s.get(5).unwrap().is_none());
        let st = s.stats();
        assert_eq!((st.memory_bytes, st.disk_count), (3000, 0));
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "no spill files left");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn wire_form_of_bytes_is_the_value_itself() {
        let v = Value::from_wire(Data::TAG_BYTES, vec![1, 2, 3]).unwrap();
        let (tag, body) = v.wire();
        assert_eq!((tag, body), (Data::TAG_BYTES, &[1u8, 2, 3][..]));
        assert!(std::ptr::eq(body.as_ptr(), match &v.data { Data::Bytes(b) => b.as_ptr(), _ => unreachable!() }));
        assert!(Value::from_wire(b'?', vec![]).is_err());
    }
}
