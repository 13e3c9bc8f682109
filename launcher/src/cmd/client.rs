//! The client commands: `submit`, `status`, `retire`, `shutdown`.

use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use taskfarm::{schedfile, util, Client, ClientError};
use crate::*;
use crate::args::*;

#[derive(Args)]
pub(crate) struct SubmitArgs {
    /// The graph file (JSON; see docs/graph-format.md). `-` reads standard input.
    pub(crate) graph: PathBuf,
    #[command(flatten)]
    pub(crate) file: SchedulerFileArg,
    #[command(flatten)]
    pub(crate) keys: KeysArg,
    /// How long to wait for the scheduler to be reachable.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

#[derive(Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) file: SchedulerFileArg,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// How long to wait for the scheduler to be reachable.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

#[derive(Args)]
pub(crate) struct RetireArgs {
    #[command(flatten)]
    pub(crate) file: SchedulerFileArg,
    /// Worker to retire, by name or address (repeatable).
    #[arg(long = "worker", value_name = "NAME", required_unless_present = "all_idle")]
    pub(crate) workers: Vec<String>,
    /// Retire every worker that is running nothing (keeping one if all are idle and results are held).
    #[arg(long, conflicts_with = "workers")]
    pub(crate) all_idle: bool,
    /// How long to wait for the scheduler, and for the workers to leave.
    #[arg(long, default_value = "120s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

#[derive(Args)]
pub(crate) struct ShutdownArgs {
    #[command(flatten)]
    pub(crate) file: SchedulerFileArg,
    /// How long to wait for the scheduler to be reachable.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

pub(crate) fn client_from(file: SchedulerFileArg, timeout: Duration) -> Result<Client, Fail> {
    let path = schedfile::resolve_path(file.scheduler_file.as_deref());
    Ok(Client::from_scheduler_file(&path, timeout)?)
}

pub(crate) fn cmd_submit(a: SubmitArgs) -> Result<u8, Fail> {
    let (graph, keys) = load_graph(&a.graph, a.keys.keys)?;
    let mut client = client_from(a.file, a.timeout)?;
    let results = client.compute(graph, &keys).map_err(|e| match e {
        ClientError::Rejected(m) => Fail(EXIT_USAGE, format!("the scheduler rejected the graph: {m}")),
        other => Fail(EXIT_TASK_FAILED, other.to_string()),
    })?;
    report(results, &keys)
}

pub(crate) fn cmd_status(a: StatusArgs) -> Result<u8, Fail> {
    let mut client = client_from(a.file, a.timeout)?;
    let r = client.status()?;
    if a.json {
        let workers: Vec<serde_json::Value> = r
            .workers
            .iter()
            .map(|w| {
                serde_json::json!({
                    "id": w.id, "name": w.name, "address": w.address, "host": w.host, "pid": w.pid, "job": w.job,
                    "nthreads": w.nthreads, "processing": w.processing, "in_memory": w.in_memory,
                    "memory": w.metrics.rss, "stored_bytes": w.metrics.stored_bytes, "stored_count": w.metrics.stored_count,
                    "executing": w.metrics.executing,
                    "fetched_from_peers": w.metrics.fetched_from_peers, "fetched_bytes": w.metrics.fetched_bytes,
                    "served_to_peers": w.metrics.served_to_peers, "served_bytes": w.metrics.served_bytes,
                    "data_connections_from": w.metrics.data_connections_from,
                    "spilled_bytes": w.metrics.spilled_bytes, "spilled_count": w.metrics.spilled_count,
                    "paused": w.metrics.paused, "memory_limit": w.metrics.memory_limit,
                    "spilled_total": w.metrics.spilled_total, "unspilled_total": w.metrics.unspilled_total,
                    "spilled_bytes_total": w.metrics.spilled_bytes_total, "unspilled_bytes_total": w.metrics.unspilled_bytes_total,
                    "spill_seconds": w.metrics.spill_us as f64 * 1e-6, "unspill_seconds": w.metrics.unspill_us as f64 * 1e-6,
                    "fetch_seconds": w.metrics.fetch_us as f64 * 1e-6,
                    "last_seen_seconds": w.last_seen_secs,
                })
            })
            .collect();
        let tasks: serde_json::Map<String, serde_json::Value> = r.tasks.iter().map(|(s, n)| (s.clone(), (*n).into())).collect();
        let stats: serde_json::Map<String, serde_json::Value> = r.stats.iter().map(|(s, n)| (s.clone(), (*n).into())).collect();
        let j = serde_json::json!({"address": r.address, "started": r.started, "clients": r.clients, "workers": workers, "tasks": tasks, "stats": stats});
        println!("{}", serde_json::to_string_pretty(&j).expect("serialisable"));
        return Ok(0);
    }
    println!("scheduler {}  up {:.0} s  clients {}", r.address, util::unix_time() - r.started, r.clients);
    println!("workers: {}", r.workers.len());
    if !r.workers.is_empty() {
        println!("  {:<20} {:<24} {:>7} {:>6} {:>7} {:>10} {:>10} {:>10}  STATE", "NAME", "ADDRESS", "THREADS", "TASKS", "HELD", "MEMORY", "LIMIT", "SPILLED");
        for w in &r.workers {
            let limit = if w.metrics.memory_limit == 0 { "-".to_string() } else { util::format_bytes(w.metrics.memory_limit) };
            println!(
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
    println!("tasks: {}", counts.join(", "));
    Ok(0)
}

pub(crate) fn cmd_shutdown(a: ShutdownArgs) -> Result<u8, Fail> {
    let mut client = client_from(a.file, a.timeout)?;
    client.shutdown()?;
    eprintln!("taskfarm: scheduler at {} is shutting down", client.address);
    Ok(0)
}

pub(crate) fn cmd_retire(a: RetireArgs) -> Result<u8, Fail> {
    let mut client = client_from(a.file, a.timeout)?;
    let known: Vec<String> = client.status()?.workers.iter().map(|w| w.name.clone()).collect();
    let names = client.retire(&a.workers, a.all_idle)?;
    if names.is_empty() {
        return Err(Fail(
            EXIT_USAGE,
            if a.all_idle { "no idle worker to retire".to_string() } else { format!("no such worker: {} (workers: {})", a.workers.join(", "), known.join(", ")) },
        ));
    }
    eprintln!("taskfarm: retiring {}", names.join(", "));
    let start = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let present: Vec<String> = client.status()?.workers.iter().map(|w| w.name.clone()).filter(|n| names.contains(n)).collect();
        if present.is_empty() {
            eprintln!("taskfarm: retired {}", names.join(", "));
            return Ok(0);
        }
        if start.elapsed() >= a.timeout {
            return Err(Fail(EXIT_TASK_FAILED, format!("still retiring after {:.0} s: {}", a.timeout.as_secs_f64(), present.join(", "))));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
