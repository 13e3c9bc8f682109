//! A scheduler's status for programs (`taskfarm status --json`: [`StatusJson`])
//! and for people ([`table`]).

use crate::protocol::{StatusReport, WorkerStatus};
use crate::util;
use serde::Serialize;

/// One worker, as `taskfarm status --json` prints it (times in seconds).
#[derive(Serialize)]
pub struct WorkerJson<'a> {
    pub id: u32,
    pub name: &'a str,
    pub address: &'a str,
    pub host: &'a str,
    pub pid: u32,
    pub job: &'a str,
    pub nthreads: u32,
    pub processing: u32,
    pub in_memory: u64,
    /// Resident memory of the worker process.
    pub memory: u64,
    /// CPU time of the worker and its executors so far.
    pub cpu_seconds: f64,
    /// When it retires by its lifetime (Unix seconds; 0: no lifetime).
    pub leaves_at: f64,
    pub stored_bytes: u64,
    pub stored_count: u64,
    pub executing: u32,
    pub fetched_from_peers: u64,
    pub fetched_bytes: u64,
    pub served_to_peers: u64,
    pub served_bytes: u64,
    pub data_connections_from: &'a [String],
    pub spilled_bytes: u64,
    pub spilled_count: u64,
    pub paused: bool,
    pub memory_limit: u64,
    pub spilled_total: u64,
    pub unspilled_total: u64,
    pub spilled_bytes_total: u64,
    pub unspilled_bytes_total: u64,
    pub spill_seconds: f64,
    pub unspill_seconds: f64,
    pub fetch_seconds: f64,
    pub last_seen_seconds: f64,
}

impl<'a> From<&'a WorkerStatus> for WorkerJson<'a> {
    fn from(w: &'a WorkerStatus) -> Self {
        let m = &w.metrics;
        WorkerJson {
            id: w.id,
            name: &w.name,
            address: &w.address,
            host: &w.host,
            pid: w.pid,
            job: &w.job,
            nthreads: w.nthreads,
            processing: w.processing,
            in_memory: w.in_memory,
            memory: m.rss,
            cpu_seconds: m.cpu_us as f64 * 1e-6,
            leaves_at: m.leaves_at,
            stored_bytes: m.stored_bytes,
            stored_count: m.stored_count,
            executing: m.executing,
            fetched_from_peers: m.fetched_from_peers,
            fetched_bytes: m.fetched_bytes,
            served_to_peers: m.served_to_peers,
            served_bytes: m.served_bytes,
            data_connections_from: &m.data_connections_from,
            spilled_bytes: m.spilled_bytes,
            spilled_count: m.spilled_count,
            paused: m.paused,
            memory_limit: m.memory_limit,
            spilled_total: m.spilled_total,
            unspilled_total: m.unspilled_total,
            spilled_bytes_total: m.spilled_bytes_total,
            unspilled_bytes_total: m.unspilled_bytes_total,
            spill_seconds: m.spill_us as f64 * 1e-6,
            unspill_seconds: m.unspill_us as f64 * 1e-6,
            fetch_seconds: m.fetch_us as f64 * 1e-6,
            last_seen_seconds: w.last_seen_secs,
        }
    }
}

/// The whole report for `taskfarm status --json` (docs/cli.md lists the fields).
#[derive(Serialize)]
pub struct StatusJson<'a> {
    pub address: &'a str,
    pub started: f64,
    /// The dashboard's URL, token included ("": none).
    pub dashboard: &'a str,
    pub clients: u32,
    pub workers: Vec<WorkerJson<'a>>,
    /// Task counts by state name.
    pub tasks: serde_json::Map<String, serde_json::Value>,
    /// Scheduler counters by name.
    pub stats: serde_json::Map<String, serde_json::Value>,
}

impl<'a> From<&'a StatusReport> for StatusJson<'a> {
    fn from(r: &'a StatusReport) -> Self {
        let counts = |v: &[(String, u64)]| v.iter().map(|(s, n)| (s.clone(), (*n).into())).collect();
        StatusJson { address: &r.address, started: r.started, dashboard: &r.dashboard, clients: r.clients, workers: r.workers.iter().map(WorkerJson::from).collect(), tasks: counts(&r.tasks), stats: counts(&r.stats) }
    }
}

/// The report as the JSON text of `taskfarm status --json`.
pub fn to_json_text(r: &StatusReport) -> Result<String, serde_json::Error> {
    serde_json::to_string(&StatusJson::from(r))
}

/// The report as a table for a terminal; `now` is Unix time.
pub fn table(r: &StatusReport, now: f64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "scheduler {}  up {:.0} s  clients {}", r.address, now - r.started, r.clients);
    if !r.dashboard.is_empty() {
        let _ = writeln!(out, "dashboard: {}", r.dashboard);
    }
    let _ = writeln!(out, "workers: {}", r.workers.len());
    if !r.workers.is_empty() {
        let _ = writeln!(out, "  {:<20} {:<24} {:>7} {:>6} {:>7} {:>10} {:>10} {:>10}  STATE", "NAME", "ADDRESS", "THREADS", "TASKS", "HELD", "MEMORY", "LIMIT", "SPILLED");
        for w in &r.workers {
            let limit = if w.metrics.memory_limit == 0 { "-".to_string() } else { util::format_bytes(w.metrics.memory_limit) };
            let _ = writeln!(
                out,
                "  {:<20} {:<24} {:>7} {:>6} {:>7} {:>10} {:>10} {:>10}  {}",
                w.name,
                w.address,
                w.nthreads,
                w.processing,
                w.in_memory,
                util::format_bytes(w.metrics.rss),
                limit,
                util::format_bytes(w.metrics.spilled_bytes),
                if w.metrics.paused { "paused" } else { "running" }
            );
        }
    }
    let counts: Vec<String> = r.tasks.iter().map(|(s, n)| format!("{s} {n}")).collect();
    let _ = writeln!(out, "tasks: {}", counts.join(", "));
    out
}
