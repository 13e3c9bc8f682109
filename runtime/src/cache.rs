//! The result cache (`--cache DIR`): joblib Memory's idea for whole graphs,
//! on storage that many jobs and nodes share.
//!
//! A task's cache key is a content hash of what determines its value: the
//! expression (the built-in's or Rust function's name with taskfarm's
//! version, a command's argv, environment, working directory and stdin, a
//! Python callable's content hash and its pickled arguments, literals) and
//! the cache keys of its dependencies, never the key's name. A task marked
//! `"cache": false` (Python: `pure=False`) is never cached, nor is anything
//! that depends on it; a command is cached only when marked `"cache": true`.
//!
//! The scheduler computes the keys of a submitted graph ([`plan`]); a task
//! whose entry is present becomes a load of that entry with no
//! dependencies, so everything only it needed is culled and never runs.
//! Every other cacheable task runs with a note to store its value
//! ([`wrap_store`]); its worker writes the entry when it finishes.
//!
//! Entries are files `DIR/v1/xx/<64 hex digits>`: the 8 bytes `TFCACHE1`,
//! the value's tag byte, 7 zero bytes, the body length (u64 LE), the
//! SHA-256 of the body, then the body (the value's wire form). Writers
//! write a temporary file beside it and rename it into place (atomic on
//! one file system; no lock a killed job leaves behind; two writers of one
//! key write the same bytes). Readers check the length and the checksum: a
//! truncated or corrupt entry is removed and treated as missing, never
//! returned. The directory must belong to the user and be writable by
//! nobody else (a planted entry would be a planted result, and for Python
//! values, planted code).

use crate::graph::Expr;
use crate::protocol::TaskDef;
use crate::value::Data;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A task's cache key: SHA-256 of what determines its value.
pub type CacheKey = [u8; 32];

const MAGIC: &[u8; 8] = b"TFCACHE1";
const HEADER: usize = 8 + 1 + 7 + 8 + 32;
/// Entries up to this size are read whole (checksum included) when a graph
/// is planned; larger ones are checked by length there and by checksum
/// when a worker loads them.
const VERIFY_AT_PLAN: u64 = 64 << 10;
/// The built-in that loads an entry (argument: its path).
pub const LOAD: &str = "__cache_load";
/// The wrapper that tells a worker to store a task's value (arguments: the
/// entry's path, the task's expression).
pub const STORE: &str = "__cache_store";

/// A cache directory.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

fn hex(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// The directory must be ours and writable by nobody else.
fn check_private_dir(path: &Path) -> Result<(), String> {
    let m = fs::metadata(path).map_err(|e| format!("cache directory {}: {e}", path.display()))?;
    if !m.is_dir() {
        return Err(format!("cache directory {} is not a directory", path.display()));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return Err(format!(
            "cache directory {} belongs to user {}, not to you ({me}): its entries could be another user's results; use a directory of your own",
            path.display(),
            m.uid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!(
            "cache directory {} is writable by other users (mode {:o}): they could plant results; run chmod go-w on it or use another",
            path.display(),
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

impl Cache {
    /// Open (creating it, mode 0700) the cache in `dir`.
    pub fn open(dir: &Path) -> Result<Cache, String> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("v1"))
            .map_err(|e| format!("cannot create the cache directory {}: {e}", dir.display()))?;
        check_private_dir(dir)?;
        check_private_dir(&dir.join("v1"))?;
        Ok(Cache { root: dir.to_path_buf() })
    }

    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Where the entry of `k` lives.
    pub fn path_of(&self, k: &CacheKey) -> PathBuf {
        let h = hex(k);
        self.root.join("v1").join(&h[..2]).join(h)
    }

    /// The value of `k`, if a sound entry is there (a broken one is
    /// removed and counts as absent).
    pub fn get(&self, k: &CacheKey) -> Option<Data> {
        let path = self.path_of(k);
        if !path.exists() {
            return None;
        }
        load(&path).ok()
    }

    /// Store the value of `k`.
    pub fn put(&self, k: &CacheKey, d: &Data) -> io::Result<()> {
        store(&self.path_of(k), d)
    }

    /// Whether a sound entry of `k` is there (see [`VERIFY_AT_PLAN`]); a
    /// broken one is removed.
    pub fn present(&self, k: &CacheKey) -> bool {
        let path = self.path_of(k);
        let Ok(mut f) = File::open(&path) else { return false };
        let verdict = (|| -> Result<(), String> {
            let m = f.metadata().map_err(|e| e.to_string())?;
            let (_, len, _) = read_header(&mut f, &m)?;
            if len <= VERIFY_AT_PLAN {
                read_body(&mut f, len)?;
            }
            Ok(())
        })();
        match verdict {
            Ok(()) => true,
            Err(why) => {
                discard(&path, &why);
                false
            }
        }
    }

    /// Entries, bytes, and the oldest and newest use.
    pub fn info(&self) -> io::Result<Info> {
        let mut info = Info::default();
        for (_, size, used) in self.entries()? {
            info.entries += 1;
            info.bytes += size;
            info.oldest = Some(info.oldest.map_or(used, |o: SystemTime| o.min(used)));
            info.newest = Some(info.newest.map_or(used, |n: SystemTime| n.max(used)));
        }
        Ok(info)
    }

    /// Remove every entry; returns (entries, bytes) removed.
    pub fn clear(&self) -> io::Result<(u64, u64)> {
        self.prune(Some(0), None)
    }

    /// Remove entries not used for `older_than`, then the least recently
    /// used until at most `max_size` bytes are left; (entries, bytes) removed.
    pub fn prune(&self, max_size: Option<u64>, older_than: Option<Duration>) -> io::Result<(u64, u64)> {
        let mut all = self.entries()?;
        all.sort_by_key(|e| e.2);
        let now = SystemTime::now();
        let mut total: u64 = all.iter().map(|e| e.1).sum();
        let (mut n, mut bytes) = (0, 0);
        for (path, size, used) in all {
            let old = older_than.is_some_and(|d| now.duration_since(used).unwrap_or_default() > d);
            let over = max_size.is_some_and(|m| total > m);
            if !(old || over) {
                continue;
            }
            if fs::remove_file(&path).is_ok() {
                n += 1;
                bytes += size;
                total -= size;
            }
        }
        Ok((n, bytes))
    }

    /// (path, size, last use) of every entry (temporary files of writers
    /// that died are entries too, so they get pruned).
    fn entries(&self) -> io::Result<Vec<(PathBuf, u64, SystemTime)>> {
        let mut out = Vec::new();
        for sub in fs::read_dir(self.root.join("v1"))? {
            let sub = sub?;
            if !sub.file_type()?.is_dir() {
                continue;
            }
            for e in fs::read_dir(sub.path())? {
                let e = e?;
                let m = e.metadata()?;
                if m.is_file() {
                    out.push((e.path(), m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
                }
            }
        }
        Ok(out)
    }
}

/// What `taskfarm cache info` shows.
#[derive(Debug, Default)]
pub struct Info {
    pub entries: u64,
    pub bytes: u64,
    pub oldest: Option<SystemTime>,
    pub newest: Option<SystemTime>,
}

fn discard(path: &Path, why: &str) {
    crate::log_at!(1, "cache", "cache entry {} is broken ({why}): removed, the task runs again", path.display());
    let _ = fs::remove_file(path);
}

/// Tag and body length from an entry's header; the file must be ours, and
/// exactly as long as its header says.
fn read_header(f: &mut File, m: &fs::Metadata) -> Result<(u8, u64, [u8; 32]), String> {
    // SAFETY: geteuid has no preconditions.
    if m.uid() != unsafe { libc::geteuid() } {
        return Err(format!("it belongs to user {}, not to you", m.uid()));
    }
    let mut h = [0u8; HEADER];
    f.read_exact(&mut h).map_err(|_| "shorter than its header".to_string())?;
    if &h[..8] != MAGIC {
        return Err("not a taskfarm cache entry".into());
    }
    let len = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    if m.len() != HEADER as u64 + len {
        return Err(format!("{} bytes long, its header says {}", m.len(), HEADER as u64 + len));
    }
    Ok((h[8], len, h[24..].try_into().expect("32 bytes")))
}

fn read_body(f: &mut File, len: u64) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    body.try_reserve_exact(len as usize).map_err(|_| format!("cannot hold its {len} bytes"))?;
    f.take(len).read_to_end(&mut body).map_err(|e| e.to_string())?;
    if body.len() as u64 != len {
        return Err("truncated".into());
    }
    Ok(body)
}

/// Load an entry (a worker running a [`LOAD`] task). A broken entry is
/// removed and reported, never returned.
pub fn load(path: &Path) -> Result<Data, String> {
    let verdict = (|| -> Result<Data, String> {
        let mut f = File::open(path).map_err(|e| e.to_string())?;
        let m = f.metadata().map_err(|e| e.to_string())?;
        let (tag, len, sum) = read_header(&mut f, &m)?;
        let body = read_body(&mut f, len)?;
        if Sha256::digest(&body)[..] != sum[..] {
            return Err("its checksum does not match its bytes".into());
        }
        let value = crate::store::Value::from_wire(tag, body).map_err(|e| e.to_string())?;
        Ok(value.data)
    })();
    match verdict {
        Ok(d) => {
            // its time of last use, for `taskfarm cache prune --older-than`
            let _ = File::options().append(true).open(path).and_then(|f| f.set_modified(SystemTime::now()));
            Ok(d)
        }
        Err(why) => {
            discard(path, &why);
            Err(format!(
                "the cache entry {} is broken ({why}); it was removed: submit the graph again to compute the value",
                path.display()
            ))
        }
    }
}

/// Store a value as the entry at `path`: a temporary file in the same
/// directory, renamed into place.
pub fn store(path: &Path, data: &Data) -> io::Result<()> {
    let dir = path.parent().expect("entries live in a directory");
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let value = crate::store::Value::new(data.clone());
    let (tag, body) = value.wire();
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), hex(&crate::util::random_bytes(8))));
    let write = || -> io::Result<()> {
        let mut f = File::options().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let mut h = Vec::with_capacity(HEADER);
        h.extend_from_slice(MAGIC);
        h.push(tag);
        h.extend_from_slice(&[0; 7]);
        h.extend_from_slice(&(body.len() as u64).to_le_bytes());
        h.extend_from_slice(&Sha256::digest(body));
        f.write_all(&h)?;
        f.write_all(body)?;
        // No fsync: a reader checks length and checksum, so an entry that a
        // crash of the node left short or empty is found and recomputed,
        // and 100,000 small entries do not cost 100,000 waits for the disk.
        fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Everything a task's value depends on, hashed; `None` when the task may
/// not be cached.
fn key_of(def: &TaskDef, expr: &Expr, deps: &[Option<CacheKey>]) -> Option<CacheKey> {
    let mut cmd = false;
    walk(expr, &mut |e| cmd |= matches!(e, Expr::Cmd(_)));
    match def.annotations.cache {
        Some(false) => return None,
        None if cmd => return None,
        _ => {}
    }
    hash_expr(expr, deps)
}

/// The key of a Python call without dependencies: `func_hash` and the
/// pickled `(args, kwargs)`, as a cluster task of the same call has
/// (Python's `Memory` uses it, so its entries and a cluster's are shared).
pub fn python_call_key(func_hash: &[u8], args: &[u8]) -> CacheKey {
    let call = crate::graph::PyCall { func_hash: func_hash.to_vec(), func: Vec::new(), args: args.to_vec(), python: String::new() };
    hash_expr(&Expr::Py(Box::new(call)), &[]).expect("no dependencies")
}

/// Parse a key written as 64 hex digits.
pub fn parse_key(text: &str) -> Option<CacheKey> {
    if text.len() != 64 {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

/// The hex form of a key.
pub fn key_hex(k: &CacheKey) -> String {
    hex(k)
}

fn hash_expr(expr: &Expr, deps: &[Option<CacheKey>]) -> Option<CacheKey> {
    let mut h = Sha256::new();
    h.update(b"taskfarm-cache-v1\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update([0]);
    let canonical = match expr {
        // the client's interpreter path does not change the value
        Expr::Py(call) => {
            let mut c = (**call).clone();
            c.python.clear();
            c.func.clear(); // func_hash is its content hash
            crate::protocol::encode_spec(&Expr::Py(Box::new(c)))
        }
        e => crate::protocol::encode_spec(e),
    };
    h.update((canonical.len() as u64).to_le_bytes());
    h.update(&canonical);
    for d in deps {
        h.update(d.as_ref()?);
    }
    Some(h.finalize().into())
}

fn walk(e: &Expr, f: &mut impl FnMut(&Expr)) {
    f(e);
    match e {
        Expr::Call(_, args) | Expr::List(args) => args.iter().for_each(|a| walk(a, f)),
        _ => {}
    }
}

/// What planning a graph against the cache did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Tasks answered by an entry: they become loads, and what only they
    /// needed is never run.
    pub loads: u64,
    /// Cacheable tasks that run and store their value.
    pub stores: u64,
    /// Tasks that run and may not be cached.
    pub uncacheable: u64,
}

/// Plan a submitted graph against the cache. From the wanted keys down:
/// a task with an entry becomes a load without dependencies (what only it
/// needed is then culled by the scheduler), another cacheable one stores
/// its value when it has run. `known` holds the cache keys of tasks
/// submitted earlier (they may be dependencies here) and gains this graph's.
pub fn plan(cache: &Cache, tasks: &mut [TaskDef], wanted: &[String], known: &mut HashMap<String, CacheKey>) -> Plan {
    let mut out = Plan::default();
    let index: HashMap<&str, usize> = tasks.iter().enumerate().map(|(i, t)| (t.key.as_str(), i)).collect();
    // dependencies among `tasks` (positions), or outside them (None)
    let dep_idx: Vec<Vec<Option<usize>>> = tasks.iter().map(|t| t.deps.iter().map(|d| index.get(d.as_str()).copied()).collect()).collect();
    let mut stack: Vec<usize> = wanted.iter().filter_map(|k| index.get(k.as_str()).copied()).collect();
    drop(index);
    let order = dependency_order(&dep_idx);
    let mut keys: Vec<Option<CacheKey>> = vec![None; tasks.len()];
    let mut exprs: Vec<Option<Expr>> = vec![None; tasks.len()];
    for &i in &order {
        let t = &tasks[i];
        let deps: Vec<Option<CacheKey>> = t
            .deps
            .iter()
            .zip(&dep_idx[i])
            .map(|(d, j)| match j {
                Some(j) => keys[*j],
                None => known.get(d).copied(),
            })
            .collect();
        let Ok(expr) = bincode::deserialize::<Expr>(&t.spec) else { continue };
        keys[i] = key_of(t, &expr, &deps);
        exprs[i] = Some(expr);
    }
    let mut reached = vec![false; tasks.len()];
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut reached[i], true) {
            continue;
        }
        let Some(k) = keys[i] else {
            out.uncacheable += 1;
            stack.extend(dep_idx[i].iter().flatten());
            continue;
        };
        let path = cache.path_of(&k).to_string_lossy().into_owned();
        let t = &mut tasks[i];
        if cache.present(&k) {
            out.loads += 1;
            t.deps.clear();
            t.spec = crate::protocol::encode_spec(&Expr::Call(LOAD.into(), vec![Expr::Lit(json_string(&path))]));
            t.annotations.functions.clear();
        } else if let Some(expr) = exprs[i].take() {
            out.stores += 1;
            t.spec = crate::protocol::encode_spec(&wrap_store(&path, expr));
            stack.extend(dep_idx[i].iter().flatten());
        }
    }
    for (t, k) in tasks.iter().zip(&keys) {
        if let Some(k) = k {
            known.insert(t.key.clone(), *k);
        }
    }
    out
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// A task's expression with the note to store its value at `path`.
pub fn wrap_store(path: &str, expr: Expr) -> Expr {
    Expr::Call(STORE.into(), vec![Expr::Lit(json_string(path)), expr])
}

/// The expression inside a [`STORE`] note and where to store its value.
pub fn unwrap_store(expr: Expr) -> (Expr, Option<PathBuf>) {
    match expr {
        Expr::Call(name, mut args) if name == STORE && args.len() == 2 => {
            let inner = args.pop().expect("two arguments");
            match args.pop() {
                Some(Expr::Lit(p)) => match serde_json::from_str::<String>(&p) {
                    Ok(p) => (inner, Some(PathBuf::from(p))),
                    Err(_) => (inner, None),
                },
                _ => (inner, None),
            }
        }
        e => (e, None),
    }
}

/// Tasks in an order where every task comes after its dependencies among
/// `tasks` (the graph was checked for cycles; any left over come last).
fn dependency_order(dep_idx: &[Vec<Option<usize>>]) -> Vec<usize> {
    let n = dep_idx.len();
    let mut missing = vec![0u32; n];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, deps) in dep_idx.iter().enumerate() {
        for &j in deps.iter().flatten() {
            missing[i] += 1;
            users[j].push(i);
        }
    }
    let mut order: Vec<usize> = (0..n).filter(|&i| missing[i] == 0).collect();
    let mut at = 0;
    while at < order.len() {
        let i = order[at];
        at += 1;
        for &u in &users[i] {
            missing[u] -= 1;
            if missing[u] == 0 {
                order.push(u);
            }
        }
    }
    if order.len() < n {
        let seen: std::collections::HashSet<usize> = order.iter().copied().collect();
        order.extend((0..n).filter(|i| !seen.contains(i)));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tf-cache-{tag}-{}", hex(&crate::util::random_bytes(4))));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn tasks(json: &str) -> Vec<TaskDef> {
        let reg = crate::functions::Registry::with_builtins();
        Graph::from_json(json, &|f| reg.contains(f)).unwrap().tasks
    }

    fn keys_of(json: &str) -> HashMap<String, CacheKey> {
        let cache = Cache::open(&dir("keys")).unwrap();
        let mut t = tasks(json);
        let mut known = HashMap::new();
        let all: Vec<String> = t.iter().map(|d| d.key.clone()).collect();
        plan(&cache, &mut t, &all, &mut known);
        let _ = fs::remove_dir_all(cache.dir());
        known
    }

    #[test]
    fn keys_follow_content_not_names_and_a_changed_leaf_changes_only_its_path() {
        let a = keys_of(r#"{"x": ["inc", 1], "y": ["inc", 2], "s": ["add", "x", "y"], "t": ["inc", "y"]}"#);
        let renamed = keys_of(r#"{"p": ["inc", 1], "q": ["inc", 2], "r": ["add", "p", "q"], "u": ["inc", "q"]}"#);
        assert_eq!(a["x"], renamed["p"]);
        assert_eq!(a["s"], renamed["r"]);
        let changed = keys_of(r#"{"x": ["inc", 5], "y": ["inc", 2], "s": ["add", "x", "y"], "t": ["inc", "y"]}"#);
        assert_ne!(a["x"], changed["x"]);
        assert_ne!(a["s"], changed["s"]);
        assert_eq!(a["y"], changed["y"]);
        assert_eq!(a["t"], changed["t"]);
        // the same call with other arguments, or another function, differs
        assert_ne!(a["x"], a["y"]);
        let other = keys_of(r#"{"x": ["identity", 1]}"#);
        assert_ne!(a["x"], other["x"]);
    }

    #[test]
    fn commands_need_cache_true_and_cache_false_spreads_to_dependents() {
        let k = keys_of(
            r#"{"c": {"cmd": ["echo", "hi"]}, "d": {"cmd": ["echo", "hi"], "cache": true},
                "i": {"task": ["inc", 1], "cache": false}, "j": ["inc", "i"], "e": ["concat", "c", "d"], "f": ["concat", "d", "d"]}"#,
        );
        assert!(!k.contains_key("c"), "a command is not cached unless marked");
        assert!(k.contains_key("d"));
        assert!(!k.contains_key("i") && !k.contains_key("j"), "impure, and what depends on it");
        assert!(!k.contains_key("e"));
        assert!(k.contains_key("f"));
        let env = keys_of(r#"{"d": {"cmd": ["echo", "hi"], "env": {"A": "1"}, "cache": true}}"#);
        assert_ne!(env["d"], k["d"], "the environment is part of a command's key");
    }

    #[test]
    fn a_hit_becomes_a_load_and_what_only_it_needed_is_left_unreached() {
        let cache = Cache::open(&dir("plan")).unwrap();
        let g = r#"{"a": ["inc", 1], "b": ["inc", "a"], "c": ["inc", "b"], "o": ["inc", 7]}"#;
        let wanted = vec!["c".to_string(), "o".to_string()];
        let mut first = tasks(g);
        let mut known = HashMap::new();
        assert_eq!(plan(&cache, &mut first, &wanted, &mut known), Plan { loads: 0, stores: 4, uncacheable: 0 });
        // as the workers would: every task's value stored
        for (name, v) in [("a", 2), ("b", 3), ("c", 4)] {
            store(&cache.path_of(&known[name]), &Data::Json(serde_json::json!(v))).unwrap();
        }
        let mut second = tasks(g);
        assert_eq!(plan(&cache, &mut second, &wanted, &mut HashMap::new()), Plan { loads: 1, stores: 1, uncacheable: 0 });
        let c = second.iter().find(|t| t.key == "c").unwrap();
        assert!(c.deps.is_empty());
        let Expr::Call(f, args) = bincode::deserialize::<Expr>(&c.spec).unwrap() else { panic!("a call") };
        assert_eq!(f, LOAD);
        let Expr::Lit(path) = &args[0] else { panic!("a path") };
        assert_eq!(load(Path::new(&serde_json::from_str::<String>(path).unwrap())).unwrap(), Data::Json(serde_json::json!(4)));
        // a store note unwraps to the task's own expression
        let o = second.iter().find(|t| t.key == "o").unwrap();
        let (inner, at) = unwrap_store(bincode::deserialize(&o.spec).unwrap());
        assert_eq!(inner, Expr::Call("inc".into(), vec![Expr::Lit("7".into())]));
        assert_eq!(at, Some(cache.path_of(&known["o"])));
        let _ = fs::remove_dir_all(cache.dir());
    }

    #[test]
    fn truncated_or_corrupt_entries_are_removed_never_returned() {
        let cache = Cache::open(&dir("broken")).unwrap();
        let small = [1u8; 32];
        let big = [2u8; 32];
        let p = cache.path_of(&small);
        store(&p, &Data::Json(serde_json::json!("a value"))).unwrap();
        assert!(cache.present(&small));
        let len = fs::metadata(&p).unwrap().len();
        File::options().write(true).open(&p).unwrap().set_len(len - 3).unwrap();
        assert!(!cache.present(&small), "truncated");
        assert!(!p.exists(), "and removed");
        // a large entry: checked by length when planning, by checksum when loaded
        let q = cache.path_of(&big);
        store(&q, &Data::Bytes(vec![7u8; 200_000])).unwrap();
        let mut bytes = fs::read(&q).unwrap();
        bytes[HEADER + 1000] ^= 1;
        fs::write(&q, &bytes).unwrap();
        assert!(cache.present(&big));
        let e = load(&q).unwrap_err();
        assert!(e.contains("checksum does not match") && e.contains("removed"), "{e}");
        assert!(!q.exists());
        // round trip of every kind of value
        for d in [Data::Json(serde_json::json!({"a": [1, 2.5, null]})), Data::Bytes(vec![0, 1, 2]), Data::Pickle(vec![9; 10].into())] {
            store(&p, &d).unwrap();
            assert_eq!(load(&p).unwrap(), d);
        }
        let _ = fs::remove_dir_all(cache.dir());
    }

    #[test]
    fn a_directory_others_can_write_is_refused_and_prune_keeps_the_newest() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("perm");
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        let e = Cache::open(&d).unwrap_err();
        assert!(e.contains("writable by other users") && e.contains("chmod go-w"), "{e}");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        let cache = Cache::open(&d).unwrap();
        for i in 0..5u8 {
            let p = cache.path_of(&[i; 32]);
            store(&p, &Data::Bytes(vec![i; 1000])).unwrap();
            let when = SystemTime::now() - Duration::from_secs(3600 * (5 - i as u64));
            File::options().append(true).open(&p).unwrap().set_modified(when).unwrap();
        }
        assert_eq!(cache.info().unwrap().entries, 5);
        let (n, _) = cache.prune(None, Some(Duration::from_secs(3 * 3600 + 60))).unwrap();
        assert_eq!(n, 2, "the two used more than 3 h ago");
        let (n, _) = cache.prune(Some(2 * (HEADER as u64 + 1000)), None).unwrap();
        assert_eq!(n, 1);
        assert!(cache.path_of(&[4; 32]).exists() && cache.path_of(&[3; 32]).exists());
        assert_eq!(cache.clear().unwrap().0, 2);
        let _ = fs::remove_dir_all(&d);
    }
}
