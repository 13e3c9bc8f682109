//! The result cache (`--cache DIR`) with a real scheduler, workers and
//! `taskfarm submit`: a second run executes nothing, a changed leaf reruns
//! only its path to the outputs, two runs at once share one cache, and a
//! truncated or corrupt entry is recomputed. Counts come from the
//! scheduler's counters (`status --json`).

mod common;
use common::*;
use std::path::Path;

/// At least 10,000 tasks: `leaf-*` built-ins, `pair-*` sums of two leaves,
/// `group-*` sums of 50 pairs, a `total`, 100 cacheable commands and their
/// `words`. `bump` changes the value of leaf 17 (to one no other leaf has:
/// keys follow content, so a leaf equal to another one is a hit).
fn campaign(bump: bool) -> String {
    let mut g = serde_json::Map::new();
    for i in 0..6800 {
        let v = if bump && i == 17 { 100_017 } else { i };
        g.insert(format!("leaf-{i}"), serde_json::json!(["inc", v]));
    }
    for i in 0..3400 {
        g.insert(format!("pair-{i}"), serde_json::json!(["add", format!("leaf-{}", 2 * i), format!("leaf-{}", 2 * i + 1)]));
    }
    for j in 0..68 {
        let pairs: Vec<String> = (50 * j..50 * j + 50).map(|i| format!("pair-{i}")).collect();
        g.insert(format!("group-{j}"), serde_json::json!(["sum", pairs]));
    }
    let groups: Vec<String> = (0..68).map(|j| format!("group-{j}")).collect();
    g.insert("total".into(), serde_json::json!(["sum", groups]));
    for c in 0..100 {
        g.insert(format!("cmd-{c}"), serde_json::json!({"cmd": ["echo", format!("w{c}")], "cache": true}));
    }
    let cmds: Vec<String> = (0..100).map(|c| format!("cmd-{c}")).collect();
    g.insert("words".into(), serde_json::json!(["concat", cmds]));
    serde_json::Value::Object(g).to_string()
}

const TASKS: u64 = 6800 + 3400 + 68 + 1 + 100 + 1;

fn expected_total(bump: bool) -> u64 {
    (1..=6800u64).sum::<u64>() + if bump { 100_000 } else { 0 }
}

/// (tasks finished, of which loaded from the cache) so far.
fn counters(c: &Cluster) -> (u64, u64) {
    let s = status(&c.file).expect("status");
    let stat = |n: &str| s["stats"][n].as_u64().unwrap_or_else(|| panic!("no counter {n} in {s}"));
    (stat("tasks_finished"), stat("cache_loads"))
}

fn submit_ok(c: &Cluster, graph: &str) -> serde_json::Value {
    let o = c.submit(graph, &["--keys", "total,words", "--quiet"]);
    assert!(o.status.success(), "submit failed: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

fn start(tag: &str, cache: &Path) -> Cluster {
    Cluster::start_with(tag, &[("w0", 2)], &[], &["--cache", cache.to_str().unwrap()])
}

#[test]
fn a_second_run_executes_nothing_and_a_changed_leaf_reruns_only_its_path() {
    let dir = TempDir::new("cache-campaign");
    let cache = dir.join("cache");
    let c = start("cache-a", &cache);
    let words: String = (0..100).map(|i| format!("w{i}\n")).collect();

    let r1 = submit_ok(&c, &campaign(false));
    assert_eq!(r1["total"], expected_total(false));
    assert_eq!(r1["words"], words.as_str());
    let (f1, l1) = counters(&c);
    assert_eq!((f1, l1), (TASKS, 0), "the first run runs every task");

    let r2 = submit_ok(&c, &campaign(false));
    assert_eq!(r2, r1);
    let (f2, l2) = counters(&c);
    assert_eq!(f2 - f1, l2 - l1, "the second run executes 0 tasks: all it finished were loads");
    assert_eq!(l2 - l1, 2, "the two requested keys came from the cache, and nothing below them ran");

    // A new scheduler on the same cache (the next allocation) does the same.
    drop(c);
    let c = start("cache-b", &cache);
    assert_eq!(submit_ok(&c, &campaign(false)), r1);
    assert_eq!(counters(&c), (2, 2));

    // One leaf changed: it, its pair, its group and the total run again;
    // every other value they need is loaded.
    let r3 = submit_ok(&c, &campaign(true));
    assert_eq!(r3["total"], expected_total(true));
    let (f3, l3) = counters(&c);
    assert_eq!((f3 - 2) - (l3 - 2), 4, "executed: leaf-17, pair-8, group-0, total");
    assert_eq!(l3 - 2, 1 + 49 + 67 + 1, "loaded: leaf-16, 49 pairs, 67 groups, words");
}

/// The entry file whose value is `body` (a JSON text).
fn entry_holding(cache: &Path, body: &str) -> std::path::PathBuf {
    let mut found = Vec::new();
    for sub in std::fs::read_dir(cache.join("v1")).unwrap() {
        for e in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            if bytes.len() > 56 && &bytes[56..] == body.as_bytes() {
                found.push(p);
            }
        }
    }
    assert_eq!(found.len(), 1, "one entry holds {body}");
    found.pop().unwrap()
}

#[test]
fn two_runs_at_once_share_one_cache_and_broken_entries_are_recomputed() {
    let dir = TempDir::new("cache-shared");
    let cache = dir.join("cache");
    // two schedulers with a worker each (think: two jobs on other nodes)
    let a = start("cache-s1", &cache);
    let b = start("cache-s2", &cache);
    let graph = campaign(false);
    let ga = a.dir.write("g.json", &graph);
    let gb = b.dir.write("g.json", &graph);
    let spawn = |c: &Cluster, g: &Path| {
        std::process::Command::new(bin())
            .args(["submit", g.to_str().unwrap(), "--scheduler-file", c.file_arg(), "--keys", "total,words", "--quiet"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (spawn(&a, &ga), spawn(&b, &gb));
    for p in [pa, pb] {
        let o = p.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["total"], expected_total(false));
    }

    // A truncated entry (the total's) and a corrupt one (group 3's): both
    // are found broken, removed, recomputed and written again.
    let total = entry_holding(&cache, &expected_total(false).to_string());
    let len = std::fs::metadata(&total).unwrap().len();
    std::fs::File::options().write(true).open(&total).unwrap().set_len(len - 2).unwrap();
    let group3: u64 = (300..400u64).map(|i| i + 1).sum();
    let g3 = entry_holding(&cache, &group3.to_string());
    let mut bytes = std::fs::read(&g3).unwrap();
    bytes[20] ^= 0x40; // its header's length field: no longer matches the file
    bytes[56] = b'9';
    std::fs::write(&g3, &bytes).unwrap();

    let (f0, l0) = counters(&a);
    let r = submit_ok(&a, &graph);
    assert_eq!(r["total"], expected_total(false));
    let (f1, l1) = counters(&a);
    assert_eq!((f1 - f0) - (l1 - l0), 2, "executed: the total and group-3");
    assert_eq!(l1 - l0, 67 + 50 + 1, "loaded: the other groups, group-3's pairs, words");
    assert!(a.scheduler.log_text().contains("is broken"), "the scheduler said so");
    assert_eq!(std::fs::metadata(&total).unwrap().len(), len, "written again whole");
}

#[test]
fn run_says_what_came_from_the_cache_and_the_cache_command_looks_after_it() {
    let dir = TempDir::new("cache-run");
    let cache = dir.join("cache");
    let c = cache.to_str().unwrap();
    let g = dir.write("g.json", r#"{"a": ["inc", 1], "b": ["inc", "a"], "t": ["add", "a", "b"], "d": {"cmd": ["echo", "x"]}}"#);
    let g = g.to_str().unwrap();
    let first = taskfarm(&["run", g, "--cache", c, "--keys", "t,d"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stderr(&first).contains("0 tasks loaded from it, 4 run (3 stored, 1 not cacheable)"), "{}", stderr(&first));
    let second = taskfarm(&["run", g, "--cache", c, "--keys", "t,d"]);
    assert_eq!(stdout(&second), stdout(&first));
    assert!(stderr(&second).contains("1 tasks loaded from it, 1 run (0 stored, 1 not cacheable)"), "{}", stderr(&second));

    let info = taskfarm(&["cache", "info", c]);
    assert!(stdout(&info).contains("entries    3"), "{}", stdout(&info));
    let pruned = taskfarm(&["cache", "prune", "--max-size", "100B", c]);
    assert!(stdout(&pruned).starts_with("removed 2 entries"), "{}", stdout(&pruned));
    let cleared = taskfarm(&["cache", "clear", c]);
    assert!(stdout(&cleared).starts_with("removed 1 entries"), "{}", stdout(&cleared));

    // a cache others could write to is refused before anything runs
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = taskfarm(&["run", g, "--cache", c]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("writable by other users"), "{}", stderr(&refused));
    let bad = taskfarm(&["cache", "prune", "--max-size", "lots", c]);
    assert_eq!(bad.status.code(), Some(2));
}
