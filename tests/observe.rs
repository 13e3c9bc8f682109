//! Seeing the work: the progress bar (under a real pseudo-terminal made by
//! `script`), progress lines, `--trace`, `--performance-report`,
//! `visualize`, `status --watch`, the dashboard's token and address, and
//! the per-component log filter. The browser and Prometheus-parser checks
//! are in python/tests/test_dashboard.py.

mod common;
use common::*;
use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

/// 50 `a-*` tasks, 30 `b-*` tasks that need them, and a total: 81 tasks.
fn prefixed_graph() -> String {
    let mut g = serde_json::Map::new();
    for i in 0..50 {
        g.insert(format!("a-{i}"), serde_json::json!(["inc", i]));
    }
    for i in 0..30 {
        g.insert(format!("b-{i}"), serde_json::json!(["add", format!("a-{i}"), format!("a-{}", i + 20)]));
    }
    let all: Vec<String> = (0..30).map(|i| format!("b-{i}")).chain((0..50).map(|i| format!("a-{i}"))).collect();
    g.insert("total".into(), serde_json::json!(["sum", all]));
    serde_json::Value::Object(g).to_string()
}

/// What `taskfarm ARGS` wrote to a pseudo-terminal (stdout and stderr both).
fn under_pty(d: &TempDir, args: &[&str]) -> String {
    let quoted: Vec<String> = std::iter::once(bin()).chain(args.iter().copied()).map(|a| format!("'{a}'")).collect();
    let log = d.join("pty.log");
    let o = Command::new("script").args(["-qec", &quoted.join(" "), log.to_str().unwrap()]).stdin(Stdio::null()).stdout(Stdio::null()).output().expect("script (util-linux) runs");
    assert!(o.status.success(), "script failed: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn progress_bar_on_a_terminal_shows_the_final_count_and_nothing_without_one() {
    let d = TempDir::new("bar");
    let g = d.write("g.json", &prefixed_graph());
    let g = g.to_str().unwrap();
    let tty = under_pty(&d, &["run", g, "--workers", "2"]);
    assert!(tty.contains("81/81 tasks"), "no final count on the terminal: {tty}");
    assert!(tty.contains("a 50/50") && tty.contains("b 30/30"), "no per-prefix counts: {tty}");
    assert!(tty.contains("\"total\": "), "{tty}");
    // --quiet on a terminal: no bar.
    let quiet = under_pty(&d, &["run", g, "--quiet"]);
    assert!(!quiet.contains("tasks ("), "{quiet}");
    // No terminal: no bar, no escape codes; the results as ever.
    let o = taskfarm(&["run", g, "--workers", "2"]);
    assert!(o.status.success());
    assert!(!stderr(&o).contains("tasks (") && !stderr(&o).contains('\x1b'), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("{\"total\": "));
    // --progress forces the bar off a terminal.
    let o = taskfarm(&["run", g, "--progress"]);
    assert!(stderr(&o).contains("81/81 tasks"), "{}", stderr(&o));
    // Only what the requested keys need is run and counted.
    let culled = under_pty(&d, &["run", g, "--keys", "b-0"]);
    assert!(culled.contains("3/3 tasks"), "{culled}");
}

#[test]
fn trace_has_one_complete_event_per_task_and_the_report_counts_every_prefix() {
    let d = TempDir::new("trace");
    let g = d.write("g.json", &prefixed_graph());
    let (trace, report) = (d.join("t.json"), d.join("r.html"));
    let o = taskfarm(&["run", g.to_str().unwrap(), "--workers", "2", "--trace", trace.to_str().unwrap(), "--performance-report", report.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = t["traceEvents"].as_array().unwrap();
    let mut tasks: Vec<&str> = events.iter().filter(|e| e["ph"] == "X" && e["cat"] != "transfer").map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(tasks.len(), 81, "one complete event per task");
    tasks.sort_unstable();
    tasks.dedup();
    assert_eq!(tasks.len(), 81);
    for e in events.iter().filter(|e| e["ph"] == "X") {
        assert!(e["ts"].is_u64() && e["dur"].is_u64() && e["pid"].is_u64() && e["tid"].is_u64(), "{e}");
    }
    let html = std::fs::read_to_string(&report).unwrap();
    for (prefix, n) in [("a", 50), ("b", 30), ("total", 1)] {
        let row = format!("<tr data-prefix=\"{prefix}\">");
        let at = html.find(&row).unwrap_or_else(|| panic!("no row for prefix {prefix}"));
        let counts = format!("<td class=\"total\">{n}</td><td class=\"done\">{n}</td><td class=\"erred\">0</td>");
        assert!(html[at..].split("</tr>").next().unwrap().contains(&counts), "prefix {prefix}: {}", &html[at..at + 300]);
    }
    // An unwritable destination is an error after the results.
    let o = taskfarm(&["run", g.to_str().unwrap(), "--trace", "/nonexistent-dir/t.json"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(stdout(&o).starts_with("{\"total\""));
    assert!(stderr(&o).contains("cannot write the trace /nonexistent-dir/t.json"), "{}", stderr(&o));
}

#[test]
fn visualize_writes_dot_svg_and_colours_states_from_a_trace() {
    let d = TempDir::new("viz");
    let g = d.write("g.json", r#"{"x": 1, "y": ["inc", "x"], "z": ["add", "y", "x"], "lonely": 5}"#);
    let g = g.to_str().unwrap();
    let o = taskfarm(&["visualize", g, "-o", "-"]);
    let dot = stdout(&o);
    assert!(dot.starts_with("digraph taskfarm {"), "{dot}");
    assert_eq!(dot.matches(" -> ").count(), 3, "{dot}");
    assert!(dot.contains("\"x\" -> \"z\"") && dot.contains("\"y\" -> \"z\""));
    let svg = d.join("g.svg");
    let o = taskfarm(&["visualize", g, "-o", svg.to_str().unwrap(), "--color", "prefix"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg") && text.contains(">lonely</text>"), "{text}");
    // States of a run that ended, from its trace: z ran (done), lonely not.
    let trace = d.join("t.json");
    assert!(taskfarm(&["run", g, "--keys", "z", "--trace", trace.to_str().unwrap()]).status.success());
    let o = taskfarm(&["visualize", g, "-o", "-", "--color", "state", "--trace", trace.to_str().unwrap()]);
    let dot = stdout(&o);
    assert!(dot.contains("\"z\" [fillcolor=\"#e74c3c\"]") && dot.contains("\"lonely\" [fillcolor=\"#f3f3f3\"]"), "{dot}");
    let o = taskfarm(&["visualize", g, "-o", d.join("g.jpg").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("use a .dot, .svg or .png"), "{}", stderr(&o));
}

/// A GET over a raw socket: (status code, body).
fn http_get(addr: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default())
}

#[test]
fn dashboard_needs_its_token_and_listens_only_where_asked() {
    let c = Cluster::start("dash", &[("w1", 1)]);
    let s = status(&c.file).unwrap();
    let url = s["dashboard"].as_str().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "loopback by default: {url}");
    let (addr, token) = url.trim_start_matches("http://").split_once("/?token=").unwrap();
    assert_eq!(token.len(), 32);
    assert!(c.scheduler.log_text().contains(&url), "the scheduler logs the URL");
    assert_eq!(http_get(addr, "/", None).0, 403);
    assert_eq!(http_get(addr, "/metrics", None).0, 403);
    assert_eq!(http_get(addr, "/?token=0123456789abcdef0123456789abcdef", None).0, 403);
    let (code, body) = http_get(addr, &format!("/?token={token}"), None);
    assert_eq!(code, 200);
    assert!(body.contains("<title>taskfarm dashboard</title>"));
    let (code, body) = http_get(addr, "/metrics", Some(token));
    assert_eq!(code, 200);
    assert!(body.contains("taskfarm_scheduler_workers 1\n"), "{body}");
    assert_eq!(http_get(addr, &format!("/nothing?token={token}"), None).0, 404);
    // Not on another address of this host (listening on loopback only).
    let port = addr.rsplit_once(':').unwrap().1;
    let other = taskfarm::util::default_ip();
    if !other.is_loopback() {
        assert!(std::net::TcpStream::connect((other, port.parse::<u16>().unwrap())).is_err(), "the dashboard answers on {other}");
    }
    // An address given explicitly must be free: a clear error, exit 4.
    let d = TempDir::new("dash2");
    let f = d.join("s.json");
    let o = taskfarm(&["scheduler", "--scheduler-file", f.to_str().unwrap(), "--host", "127.0.0.1", "--dashboard-address", addr]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("cannot serve the dashboard on {addr}")), "{}", stderr(&o));
    assert!(!f.exists(), "no scheduler file is left behind");
    let o = taskfarm(&["scheduler", "--scheduler-file", f.to_str().unwrap(), "--dashboard-address", "nowhere"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--dashboard-address"), "{}", stderr(&o));
}

#[test]
fn status_watch_prints_reports_until_the_scheduler_goes() {
    let c = Cluster::start("watch", &[("w1", 1)]);
    let mut child = Command::new(bin())
        .args(["status", "--scheduler-file", c.file_arg(), "--watch", "--json", "--interval", "100ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        let line = lines.next().expect("a report").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["workers"].as_array().unwrap().len(), 1);
    }
    assert!(taskfarm(&["shutdown", "--scheduler-file", c.file_arg()]).status.success());
    for _ in lines.by_ref() {}
    let st = child.wait().unwrap();
    assert!(st.success());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("stopped watching"), "{err}");
}

#[test]
fn log_lines_have_dates_and_a_per_component_filter() {
    let d = TempDir::new("log");
    let run = |filter: &str| {
        let f = d.join(&format!("s-{}.json", filter.len()));
        let mut p = Proc::spawn_env(&["scheduler", "--scheduler-file", f.to_str().unwrap(), "--host", "127.0.0.1", "--no-dashboard"], d.join(&format!("s-{}.log", filter.len())), &[("TASKFARM_LOG", filter)]);
        wait_for("the scheduler file", Duration::from_secs(30), || f.exists());
        assert!(taskfarm(&["shutdown", "--scheduler-file", f.to_str().unwrap()]).status.success());
        assert_eq!(p.wait_exit(Duration::from_secs(30)), Some(0));
        p.log_text()
    };
    let on = run("error,taskfarm::scheduler=info");
    let line = on.lines().find(|l| l.contains("INFO taskfarm::scheduler: listening on")).unwrap_or_else(|| panic!("{on}"));
    let date = line.split_whitespace().next().unwrap();
    assert!(date.len() > 20 && date.as_bytes()[4] == b'-' && date.as_bytes()[10] == b'T' && date.ends_with('Z'), "RFC 3339 date: {line}");
    let off = run("error");
    assert!(!off.contains("INFO"), "{off}");
    let bad = run("info,taskfarm::worker=loud");
    assert!(bad.contains("TASKFARM_LOG=\"info,taskfarm::worker=loud\" is not a log filter"), "{bad}");
}
