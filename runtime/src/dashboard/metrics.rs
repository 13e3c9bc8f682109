//! `/metrics`: the scheduler's state in Prometheus' text format (0.0.4),
//! named in the style of Dask's `dask_scheduler_*` / `dask_worker_*`
//! metrics, with the prefix `taskfarm_`.

use crate::protocol::{PrefixProgress, StatusReport};
use std::fmt::Write;

/// A label value, escaped as the text format asks (`\`, `"`, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
        if l.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", l.join(","));
        }
    }
}

pub fn render(s: &StatusReport, prefixes: &[PrefixProgress]) -> String {
    let mut o = Out(String::new());
    o.family("taskfarm_scheduler_workers", "gauge", "Workers connected to the scheduler.");
    o.sample("taskfarm_scheduler_workers", &[], s.workers.len() as f64);
    o.family("taskfarm_scheduler_clients", "gauge", "Clients connected to the scheduler.");
    o.sample("taskfarm_scheduler_clients", &[], s.clients as f64);
    o.family("taskfarm_scheduler_tasks", "gauge", "Tasks the scheduler knows, by state (as `taskfarm status --json` counts them).");
    for (state, n) in &s.tasks {
        o.sample("taskfarm_scheduler_tasks", &[("state", state)], *n as f64);
    }
    for (name, n) in &s.stats {
        let metric = format!("taskfarm_scheduler_{name}_total");
        o.family(&metric, "counter", &format!("Scheduler counter {name} since it started."));
        o.sample(&metric, &[], *n as f64);
    }
    o.family("taskfarm_scheduler_prefix_state_totals_total", "counter", "Task runs per key prefix: submitted, done, erred.");
    for p in prefixes {
        for (state, n) in [("submitted", p.total), ("done", p.done), ("erred", p.erred)] {
            o.sample("taskfarm_scheduler_prefix_state_totals_total", &[("task_prefix_name", &p.prefix), ("state", state)], n as f64);
        }
    }
    o.family("taskfarm_scheduler_prefix_compute_seconds_total", "counter", "Time spent running the finished tasks of each key prefix.");
    for p in prefixes {
        o.sample("taskfarm_scheduler_prefix_compute_seconds_total", &[("task_prefix_name", &p.prefix)], p.total_us as f64 * 1e-6);
    }
    type Get = fn(&crate::protocol::WorkerStatus) -> f64;
    let per_worker: [(&str, &str, &str, Get); 9] = [
        ("taskfarm_worker_threads", "gauge", "Threads of each worker.", |w| w.nthreads as f64),
        ("taskfarm_worker_tasks_processing", "gauge", "Tasks assigned to each worker and not finished.", |w| w.processing as f64),
        ("taskfarm_worker_tasks_executing", "gauge", "Tasks running on each worker.", |w| w.metrics.executing as f64),
        ("taskfarm_worker_memory_bytes", "gauge", "Resident memory of each worker process.", |w| w.metrics.rss as f64),
        ("taskfarm_worker_memory_limit_bytes", "gauge", "Memory limit of each worker (0: none).", |w| w.metrics.memory_limit as f64),
        ("taskfarm_worker_stored_bytes", "gauge", "Bytes of values each worker holds in memory.", |w| w.metrics.stored_bytes as f64),
        ("taskfarm_worker_spilled_bytes", "gauge", "Bytes of values each worker holds on its local disk.", |w| w.metrics.spilled_bytes as f64),
        ("taskfarm_worker_cpu_seconds_total", "counter", "CPU time of each worker and its executors.", |w| w.metrics.cpu_us as f64 * 1e-6),
        ("taskfarm_worker_transfer_incoming_bytes_total", "counter", "Bytes each worker fetched from peers.", |w| w.metrics.fetched_bytes as f64),
    ];
    for (name, kind, help, get) in per_worker {
        o.family(name, kind, help);
        for w in &s.workers {
            o.sample(name, &[("worker", &w.name), ("job", &w.job)], get(w));
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_with_escaped_labels() {
        let s = StatusReport { tasks: vec![("memory".into(), 3)], stats: vec![("tasks_finished".into(), 7)], ..Default::default() };
        let p = vec![PrefixProgress { prefix: "we\"ird\\".into(), total: 2, done: 1, ..Default::default() }];
        let text = render(&s, &p);
        assert!(text.contains("taskfarm_scheduler_tasks{state=\"memory\"} 3\n"), "{text}");
        assert!(text.contains("taskfarm_scheduler_tasks_finished_total 7\n"));
        assert!(text.contains("task_prefix_name=\"we\\\"ird\\\\\",state=\"done\"} 1\n"), "{text}");
        assert!(text.lines().all(|l| l.starts_with('#') || l.starts_with("taskfarm_")));
    }
}
