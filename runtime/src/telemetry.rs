//! What the scheduler saw run, for people: counters per key prefix (the
//! progress bars, the dashboard, `/metrics`), and the recent task stream and
//! transfers (the dashboard, `--performance-report`, `--trace`).
//!
//! Kept by the scheduler's IO thread beside the pure state machine (nothing
//! here decides anything), bounded: the stream keeps the last
//! [`STREAM_CAPACITY`] task runs and transfers; the per-prefix counters count
//! everything.

use crate::protocol::PrefixProgress;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// Task runs (and, separately, transfers) the stream keeps.
pub const STREAM_CAPACITY: usize = 200_000;

/// A task's prefix, as Dask groups keys: the key up to its first `-`, `_`
/// or `(` (the whole key if it has none; `(` first for tuple-like keys such
/// as `('x', 1)`, whose prefix is then `x`).
pub fn prefix_of(key: &str) -> &str {
    let k = key.trim_start_matches(['(', '\'', '"', ' ']);
    let end = k.find(['-', '_', '(', '\'', '"', ',']).unwrap_or(k.len());
    if end == 0 {
        key
    } else {
        &k[..end]
    }
}

/// One run of a task, as its worker timed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRun {
    pub key: String,
    /// Index into [`TelemetryReport::prefixes`].
    pub prefix: u32,
    pub worker: u32,
    pub thread: u32,
    pub start_us: u64,
    pub duration_us: u64,
    pub ok: bool,
}

/// One value fetched by worker `worker` from the peer at `from`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferRun {
    pub worker: u32,
    pub from: String,
    pub nbytes: u64,
    pub start_us: u64,
    pub duration_us: u64,
}

/// A worker the stream refers to (it may have left since).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerName {
    pub id: u32,
    pub name: String,
    pub address: String,
    pub nthreads: u32,
}

/// The answer to a telemetry request: what ran since a sequence number.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryReport {
    /// Ask with this next time to get only what is newer.
    pub next: u64,
    /// Runs asked for that had already left the stream.
    pub dropped: u64,
    pub prefixes: Vec<PrefixProgress>,
    pub tasks: Vec<TaskRun>,
    pub transfers: Vec<TransferRun>,
    pub workers: Vec<WorkerName>,
}

#[derive(Default)]
pub struct Telemetry {
    prefixes: Vec<PrefixProgress>,
    by_name: HashMap<Box<str>, u32>,
    /// Task runs; the first has sequence number `first`.
    tasks: VecDeque<TaskRun>,
    first: u64,
    /// Transfers, paired with the task sequence number current when they
    /// were recorded (so one `since` selects both).
    transfers: VecDeque<(u64, TransferRun)>,
    workers: Vec<WorkerName>,
}

impl Telemetry {
    pub fn new() -> Telemetry {
        Telemetry::default()
    }

    /// The index of `key`'s prefix (made on first sight, with zero counts).
    pub fn prefix_index(&mut self, key: &str) -> u32 {
        let p = prefix_of(key);
        if let Some(&i) = self.by_name.get(p) {
            return i;
        }
        let i = self.prefixes.len() as u32;
        self.prefixes.push(PrefixProgress { prefix: p.to_string(), ..Default::default() });
        self.by_name.insert(p.into(), i);
        i
    }

    /// New tasks of these prefixes (from [`Telemetry::prefix_index`]) were accepted.
    pub fn submitted(&mut self, prefixes: &[u32]) {
        for &i in prefixes {
            self.prefixes[i as usize].total += 1;
        }
    }

    /// Worker `worker` joined.
    pub fn worker(&mut self, id: u32, name: &str, address: &str, nthreads: u32) {
        self.workers.push(WorkerName { id, name: name.to_string(), address: address.to_string(), nthreads });
    }

    /// A run of `key` ended (`ok`: it has a value; else it failed).
    pub fn ran(&mut self, key: &str, worker: u32, thread: u32, start_us: u64, duration_us: u64, ok: bool) {
        let prefix = self.prefix_index(key);
        let p = &mut self.prefixes[prefix as usize];
        if ok {
            p.done += 1;
            p.total_us += duration_us;
            p.max_us = p.max_us.max(duration_us);
        } else {
            p.erred += 1;
        }
        if self.tasks.len() == STREAM_CAPACITY {
            self.tasks.pop_front();
            self.first += 1;
        }
        self.tasks.push_back(TaskRun { key: key.to_string(), prefix, worker, thread, start_us, duration_us, ok });
    }

    pub fn transferred(&mut self, t: TransferRun) {
        if self.transfers.len() == STREAM_CAPACITY {
            self.transfers.pop_front();
        }
        self.transfers.push_back((self.next(), t));
    }

    /// The sequence number the next task run will get.
    pub fn next(&self) -> u64 {
        self.first + self.tasks.len() as u64
    }

    pub fn progress(&self) -> Vec<PrefixProgress> {
        self.prefixes.clone()
    }

    /// Everything recorded from sequence number `since` on (runs older than
    /// the stream's window are counted in `dropped`).
    pub fn since(&self, since: u64) -> TelemetryReport {
        self.since_at_most(since, usize::MAX)
    }

    /// As [`Telemetry::since`], but at most the newest `max` runs and
    /// transfers (the older ones are counted in `dropped`): what a live page
    /// can draw, copied on the scheduler's thread without copying more.
    pub fn since_at_most(&self, since: u64, max: usize) -> TelemetryReport {
        let from = since.max(self.first).max(self.next().saturating_sub(max as u64));
        let skip = (from - self.first) as usize;
        TelemetryReport {
            next: self.next(),
            dropped: from.saturating_sub(since).min(self.next().saturating_sub(since)),
            prefixes: self.prefixes.clone(),
            tasks: self.tasks.iter().skip(skip).cloned().collect(),
            transfers: {
                let newer = self.transfers.iter().rev().take_while(|(seq, _)| *seq >= since).take(max).count();
                self.transfers.iter().skip(self.transfers.len() - newer).map(|(_, t)| t.clone()).collect()
            },
            workers: self.workers.clone(),
        }
    }
}

/// Progress since a baseline: `now` minus `base`, prefix by prefix (the
/// prefixes that gained nothing are left out).
pub fn progress_since(base: &[PrefixProgress], now: &[PrefixProgress]) -> Vec<PrefixProgress> {
    let before: HashMap<&str, &PrefixProgress> = base.iter().map(|p| (p.prefix.as_str(), p)).collect();
    now.iter()
        .filter_map(|p| {
            let z = PrefixProgress::default();
            let b = before.get(p.prefix.as_str()).copied().unwrap_or(&z);
            let d = PrefixProgress {
                prefix: p.prefix.clone(),
                total: p.total - b.total,
                done: p.done - b.done,
                erred: p.erred - b.erred,
                total_us: p.total_us - b.total_us,
                max_us: p.max_us,
            };
            (d.total + d.done + d.erred > 0).then_some(d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_follow_dask() {
        assert_eq!(prefix_of("inc-17"), "inc");
        assert_eq!(prefix_of("sum_of_squares"), "sum");
        assert_eq!(prefix_of("load(3)"), "load");
        assert_eq!(prefix_of("('x', 1)"), "x");
        assert_eq!(prefix_of("plain"), "plain");
        assert_eq!(prefix_of("-odd"), "-odd");
    }

    #[test]
    fn counters_and_a_bounded_stream() {
        let mut t = Telemetry::new();
        let new: Vec<u32> = ["a-0", "a-1", "a-2", "b-0"].iter().map(|k| t.prefix_index(k)).collect();
        t.submitted(&new);
        t.ran("a-0", 1, 0, 10, 5, true);
        t.ran("a-1", 1, 1, 12, 7, true);
        t.ran("b-0", 2, 0, 13, 1, false);
        let p = t.progress();
        assert_eq!((p[0].prefix.as_str(), p[0].total, p[0].done, p[0].erred, p[0].total_us, p[0].max_us), ("a", 3, 2, 0, 12, 7));
        assert_eq!((p[1].prefix.as_str(), p[1].total, p[1].done, p[1].erred), ("b", 1, 0, 1));
        let r = t.since(1);
        assert_eq!((r.next, r.dropped, r.tasks.len()), (3, 0, 2));
        assert_eq!(r.tasks[0].key, "a-1");
        for i in 0..STREAM_CAPACITY {
            t.ran(&format!("c-{i}"), 1, 0, 0, 0, true);
        }
        let r = t.since(0);
        assert_eq!(r.tasks.len(), STREAM_CAPACITY);
        assert_eq!(r.dropped, 3);
        assert_eq!(r.next, 3 + STREAM_CAPACITY as u64);
        assert_eq!(t.since(r.next).tasks.len(), 0);
        let r = t.since_at_most(5, 10);
        assert_eq!((r.tasks.len(), r.dropped), (10, STREAM_CAPACITY as u64 + 3 - 10 - 5));
        assert_eq!(r.tasks.last().unwrap().key, format!("c-{}", STREAM_CAPACITY - 1));
    }

    #[test]
    fn progress_since_a_baseline() {
        let base = vec![PrefixProgress { prefix: "a".into(), total: 5, done: 5, ..Default::default() }];
        let now = vec![
            PrefixProgress { prefix: "a".into(), total: 8, done: 6, ..Default::default() },
            PrefixProgress { prefix: "z".into(), total: 0, done: 0, ..Default::default() },
            PrefixProgress { prefix: "b".into(), total: 2, done: 0, erred: 1, ..Default::default() },
        ];
        let d = progress_since(&base, &now);
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].total, d[0].done), (3, 1));
        assert_eq!((d[1].prefix.as_str(), d[1].erred), ("b", 1));
    }
}
