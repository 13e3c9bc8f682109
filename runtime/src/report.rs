//! After the fact: what a computation did, as a Chrome trace-event file
//! (`--trace`, opened by Perfetto and chrome://tracing) and as one
//! self-contained HTML page (`--performance-report`). Both are built from a
//! [`Recording`] (the scheduler's telemetry over the computation's window
//! and the workers' counters before and after); nothing here does IO.

use crate::protocol::{PrefixProgress, StatusReport};
use crate::telemetry::TelemetryReport;
use crate::util::format_bytes;
use std::collections::HashMap;
use std::fmt::Write;

/// Task runs drawn in the report's task stream at most (the table of
/// prefixes counts every run whatever this cap).
pub const REPORT_MAX_RECTS: usize = 100_000;

/// What happened between the start and the end of a computation.
pub struct Recording {
    /// What the graph was (the file name), for the title.
    pub title: String,
    /// Unix microseconds.
    pub started_us: u64,
    pub ended_us: u64,
    /// Task counts per prefix over the window ([`crate::telemetry::progress_since`]).
    pub progress: Vec<PrefixProgress>,
    /// Task runs and transfers over the window.
    pub telemetry: TelemetryReport,
    pub before: StatusReport,
    pub after: StatusReport,
}

fn worker_label(t: &TelemetryReport, id: u32) -> String {
    t.workers.iter().find(|w| w.id == id).map(|w| w.name.clone()).unwrap_or_else(|| format!("worker {id}"))
}

/// The runs as Chrome trace-event JSON: one complete (`"ph": "X"`) event per
/// task run (category: its prefix; process: its worker; thread: the
/// worker's thread), transfers as complete events of category `transfer` on
/// a `transfers` thread of the fetching worker, and metadata events naming
/// the processes and threads. Times are microseconds since the start.
pub fn trace_json(r: &Recording) -> String {
    let t = &r.telemetry;
    let base = r.started_us.min(t.tasks.iter().map(|x| x.start_us).min().unwrap_or(u64::MAX));
    let mut events = Vec::with_capacity(t.tasks.len() + t.transfers.len() + 2 * t.workers.len());
    let mut threads: HashMap<(u32, u32), ()> = HashMap::new();
    for run in &t.tasks {
        let prefix = t.prefixes.get(run.prefix as usize).map(|p| p.prefix.as_str()).unwrap_or("");
        threads.insert((run.worker, run.thread), ());
        events.push(serde_json::json!({
            "name": run.key, "cat": prefix, "ph": "X", "ts": run.start_us.saturating_sub(base), "dur": run.duration_us,
            "pid": run.worker, "tid": run.thread, "args": {"ok": run.ok},
        }));
    }
    let transfer_tid = 1_000_000u32;
    for x in &t.transfers {
        threads.insert((x.worker, transfer_tid), ());
        events.push(serde_json::json!({
            "name": format!("fetch from {}", x.from), "cat": "transfer", "ph": "X", "ts": x.start_us.saturating_sub(base),
            "dur": x.duration_us, "pid": x.worker, "tid": transfer_tid, "args": {"bytes": x.nbytes, "from": x.from},
        }));
    }
    let mut pids: Vec<u32> = threads.keys().map(|k| k.0).collect();
    pids.sort_unstable();
    pids.dedup();
    for pid in pids {
        events.push(serde_json::json!({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": worker_label(t, pid)}}));
    }
    let mut tids: Vec<(u32, u32)> = threads.into_keys().collect();
    tids.sort_unstable();
    for (pid, tid) in tids {
        let name = if tid == transfer_tid { "transfers".to_string() } else { format!("thread {tid}") };
        events.push(serde_json::json!({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}));
    }
    let doc = serde_json::json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"title": r.title, "dropped_task_runs": t.dropped},
    });
    serde_json::to_string(&doc).expect("JSON values serialise")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A colour per prefix, stable for a name (the dashboard uses the same
/// hash in JavaScript: FNV-1a over UTF-16 code units, hue = hash mod 360).
pub fn prefix_colour(prefix: &str) -> String {
    format!("hsl({}, 65%, 55%)", prefix_hue(prefix))
}

/// The hue (0..360) of [`prefix_colour`].
pub fn prefix_hue(prefix: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for u in prefix.encode_utf16() {
        h ^= u as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h % 360
}

fn secs(us: u64) -> String {
    let s = us as f64 * 1e-6;
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

/// The report as one HTML page with everything inline (styles and an SVG
/// task stream; no scripts, no links to fetch).
pub fn performance_report_html(r: &Recording) -> String {
    let t = &r.telemetry;
    let mut h = String::new();
    let wall = r.ended_us.saturating_sub(r.started_us).max(1);
    let runs = t.tasks.len();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>taskfarm performance report: {title}</title>\n<style>\n\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:1em 0}}\n\
         td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:right}} th{{background:#eee}} td:first-child,th:first-child{{text-align:left}}\n\
         .swatch{{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:middle}} svg{{border:1px solid #ccc}}\n\
         </style></head><body>\n<h1>taskfarm performance report</h1>\n\
         <p id=\"summary\">{title}: {runs} task runs in {wall} of wall time, on {nworkers} workers (scheduler {address}).</p>\n",
        title = esc(&r.title),
        wall = secs(wall),
        nworkers = r.after.workers.len().max(t.workers.len()),
        address = esc(&r.after.address),
    );
    if t.dropped > 0 {
        let _ = writeln!(h, "<p><b>Note:</b> {} task runs had left the scheduler's stream window ({} runs) before the report was made; the stream below misses them, the counts do not.</p>", t.dropped, crate::telemetry::STREAM_CAPACITY);
    }

    // Per-prefix durations.
    h.push_str("<h2>Task prefixes</h2>\n<table id=\"prefixes\"><tr><th>prefix</th><th>tasks</th><th>done</th><th>failed</th><th>total time</th><th>mean</th><th>max</th></tr>\n");
    for p in &r.progress {
        let mean = p.total_us.checked_div(p.done).unwrap_or(0);
        let _ = writeln!(
            h,
            "<tr data-prefix=\"{name}\"><td><span class=\"swatch\" style=\"background:{c}\"></span>{name}</td><td class=\"total\">{}</td><td class=\"done\">{}</td><td class=\"erred\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p.total,
            p.done,
            p.erred,
            secs(p.total_us),
            secs(mean),
            secs(p.max_us),
            name = esc(&p.prefix),
            c = prefix_colour(&p.prefix),
        );
    }
    h.push_str("</table>\n");

    // Task stream: one row per worker thread, plus a transfer row per worker.
    let mut rows: Vec<(u32, u32)> = t.tasks.iter().map(|x| (x.worker, x.thread)).collect();
    rows.extend(t.transfers.iter().map(|x| (x.worker, u32::MAX)));
    rows.sort_unstable();
    rows.dedup();
    let row_of: HashMap<(u32, u32), usize> = rows.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let (width, row_h, label_w) = (1200.0f64, 16.0f64, 170.0f64);
    let t0 = t.tasks.iter().map(|x| x.start_us).chain(t.transfers.iter().map(|x| x.start_us)).min().unwrap_or(r.started_us).min(r.started_us);
    let t1 = t.tasks.iter().map(|x| x.start_us + x.duration_us).chain(t.transfers.iter().map(|x| x.start_us + x.duration_us)).max().unwrap_or(r.ended_us).max(r.ended_us);
    let span = (t1 - t0).max(1) as f64;
    let x_of = |us: u64| label_w + (us.saturating_sub(t0)) as f64 / span * (width - label_w);
    let height = row_h * rows.len().max(1) as f64 + 20.0;
    let _ = writeln!(h, "<h2>Task stream</h2>\n<p>Each row is a worker thread (red rows: values fetched from peers); time runs left to right over {}.</p>", secs(t1 - t0));
    let _ = writeln!(h, "<svg id=\"stream\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\">");
    for (i, (w, th)) in rows.iter().enumerate() {
        let label = if *th == u32::MAX { format!("{} transfers", worker_label(t, *w)) } else { format!("{} #{th}", worker_label(t, *w)) };
        let _ = writeln!(h, "<text x=\"2\" y=\"{:.0}\" font-size=\"11\">{}</text>", i as f64 * row_h + 12.0, esc(&label));
    }
    for run in t.tasks.iter().take(REPORT_MAX_RECTS) {
        let y = row_of[&(run.worker, run.thread)] as f64 * row_h + 1.0;
        let x = x_of(run.start_us);
        let w = (x_of(run.start_us + run.duration_us) - x).max(0.5);
        let prefix = t.prefixes.get(run.prefix as usize).map(|p| p.prefix.as_str()).unwrap_or("");
        let fill = if run.ok { prefix_colour(prefix) } else { "black".to_string() };
        let _ = writeln!(h, "<rect x=\"{x:.1}\" y=\"{y:.0}\" width=\"{w:.1}\" height=\"{:.0}\" fill=\"{fill}\"><title>{} ({})</title></rect>", row_h - 2.0, esc(&run.key), secs(run.duration_us));
    }
    for x in t.transfers.iter().take(REPORT_MAX_RECTS) {
        let y = row_of[&(x.worker, u32::MAX)] as f64 * row_h + 1.0;
        let x0 = x_of(x.start_us);
        let w = (x_of(x.start_us + x.duration_us) - x0).max(0.5);
        let _ = writeln!(h, "<rect x=\"{x0:.1}\" y=\"{y:.0}\" width=\"{w:.1}\" height=\"{:.0}\" fill=\"#d33\" opacity=\"0.7\"><title>{} from {}</title></rect>", row_h - 2.0, format_bytes(x.nbytes), esc(&x.from));
    }
    h.push_str("</svg>\n");
    if runs > REPORT_MAX_RECTS {
        let _ = writeln!(h, "<p>The stream draws the first {REPORT_MAX_RECTS} of {runs} runs.</p>");
    }

    // Transfers by peer pair.
    let mut pairs: HashMap<(String, String), (u64, u64, u64)> = HashMap::new();
    for x in &t.transfers {
        let e = pairs.entry((x.from.clone(), worker_label(t, x.worker))).or_default();
        e.0 += 1;
        e.1 += x.nbytes;
        e.2 += x.duration_us;
    }
    let mut pairs: Vec<_> = pairs.into_iter().collect();
    pairs.sort_by_key(|p| std::cmp::Reverse(p.1 .1));
    let total_bytes: u64 = pairs.iter().map(|p| p.1 .1).sum();
    let _ = writeln!(h, "<h2>Transfers</h2>\n<p>{} values fetched peer to peer, {} in all.</p>", t.transfers.len(), format_bytes(total_bytes));
    if !pairs.is_empty() {
        h.push_str("<table id=\"transfers\"><tr><th>from</th><th>to</th><th>values</th><th>bytes</th><th>time</th></tr>\n");
        for ((from, to), (n, bytes, us)) in &pairs {
            let _ = writeln!(h, "<tr><td>{}</td><td>{}</td><td>{n}</td><td>{}</td><td>{}</td></tr>", esc(from), esc(to), format_bytes(*bytes), secs(*us));
        }
        h.push_str("</table>\n");
    }

    // Workers: busy time and spills over the window.
    h.push_str("<h2>Workers</h2>\n<table id=\"workers\"><tr><th>worker</th><th>threads</th><th>task runs</th><th>busy</th><th>first start</th><th>last end</th><th>spilled</th><th>read back</th><th>memory now</th></tr>\n");
    let before: HashMap<&str, &crate::protocol::WorkerStatus> = r.before.workers.iter().map(|w| (w.name.as_str(), w)).collect();
    for w in &r.after.workers {
        let mine: Vec<_> = t.tasks.iter().filter(|x| t.workers.iter().any(|n| n.id == x.worker && n.name == w.name)).collect();
        let busy: u64 = mine.iter().map(|x| x.duration_us).sum();
        let first = mine.iter().map(|x| x.start_us).min();
        let last = mine.iter().map(|x| x.start_us + x.duration_us).max();
        let b = before.get(w.name.as_str());
        let spilled = w.metrics.spilled_bytes_total - b.map(|b| b.metrics.spilled_bytes_total).unwrap_or(0).min(w.metrics.spilled_bytes_total);
        let unspilled = w.metrics.unspilled_bytes_total - b.map(|b| b.metrics.unspilled_bytes_total).unwrap_or(0).min(w.metrics.unspilled_bytes_total);
        let util = busy as f64 / (wall as f64 * w.nthreads.max(1) as f64) * 100.0;
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ({util:.0} %)</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&w.name),
            w.nthreads,
            mine.len(),
            secs(busy),
            first.map(|f| secs(f.saturating_sub(r.started_us))).unwrap_or_else(|| "-".into()),
            last.map(|l| secs(l.saturating_sub(r.started_us))).unwrap_or_else(|| "-".into()),
            format_bytes(spilled),
            format_bytes(unspilled),
            format_bytes(w.metrics.rss),
        );
    }
    h.push_str("</table>\n</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Telemetry;

    fn recording() -> Recording {
        let mut t = Telemetry::new();
        t.worker(1, "w-1", "tcp://127.0.0.1:1", 2);
        let ids: Vec<u32> = ["a-0", "a-1", "<b>-0"].iter().map(|k| t.prefix_index(k)).collect();
        t.submitted(&ids);
        t.ran("a-0", 1, 0, 1_000_000, 500, true);
        t.ran("a-1", 1, 1, 1_000_100, 700, true);
        t.ran("<b>-0", 1, 0, 1_001_000, 10, false);
        t.transferred(crate::telemetry::TransferRun { worker: 1, from: "tcp://127.0.0.1:2".into(), nbytes: 4096, start_us: 1_000_900, duration_us: 50 });
        let telemetry = t.since(0);
        Recording { title: "g.json".into(), started_us: 999_000, ended_us: 1_002_000, progress: telemetry.prefixes.clone(), telemetry, before: Default::default(), after: Default::default() }
    }

    #[test]
    fn trace_has_one_complete_event_per_run() {
        let r = recording();
        let v: serde_json::Value = serde_json::from_str(&trace_json(&r)).unwrap();
        let ev = v["traceEvents"].as_array().unwrap();
        let tasks: Vec<_> = ev.iter().filter(|e| e["ph"] == "X" && e["cat"] != "transfer").collect();
        assert_eq!(tasks.len(), 3);
        assert_eq!(tasks[0]["name"], "a-0");
        assert_eq!(tasks[0]["ts"], 1000);
        assert_eq!(tasks[1]["dur"], 700);
        assert_eq!(ev.iter().filter(|e| e["cat"] == "transfer").count(), 1);
        assert!(ev.iter().any(|e| e["ph"] == "M" && e["args"]["name"] == "w-1"));
    }

    #[test]
    fn report_lists_prefixes_escaped_with_counts() {
        let html = performance_report_html(&recording());
        assert!(html.contains("<tr data-prefix=\"a\">"));
        assert!(html.contains("<td class=\"total\">2</td><td class=\"done\">2</td><td class=\"erred\">0</td>"));
        assert!(html.contains("&lt;b&gt;"), "keys are escaped");
        assert!(!html.contains("<b>-0"));
        assert!(!html.contains("<script"), "the report runs no scripts");
        assert_eq!(html.matches("<rect").count(), 4);
    }

    #[test]
    fn colours_are_stable() {
        assert_eq!(prefix_colour("inc"), prefix_colour("inc"));
        assert_ne!(prefix_colour("inc"), prefix_colour("sum"));
    }
}
