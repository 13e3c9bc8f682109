//! `taskfarm visualize`: a graph as a picture (Graphviz DOT; SVG or PNG
//! through Graphviz's `dot`), optionally coloured by prefix or by the state
//! its tasks have on a running scheduler, as Dask's `visualize`.

use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use taskfarm::Graph;
use crate::*;
use crate::args::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Colour {
    /// No colours.
    None,
    /// A colour per key prefix (as the dashboard and the performance report).
    Prefix,
    /// The state of each task: from a trace the graph's run wrote (--trace FILE: done, failed, not run), else
    /// live from the scheduler (--scheduler-file: waiting, processing, memory, erred, ...).
    State,
}

#[derive(Args)]
pub(crate) struct VisualizeArgs {
    /// The graph file (JSON; see docs/graph-format.md). `-` reads standard input.
    pub(crate) graph: PathBuf,
    /// Output file; its extension picks the format: .dot (always works), .svg or .png (need Graphviz's `dot`,
    /// e.g. apt-get install graphviz). `-` writes DOT to standard output.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: PathBuf,
    /// Colour the nodes.
    #[arg(long, value_enum, default_value = "none")]
    pub(crate) color: Colour,
    /// Layout direction, as Graphviz's rankdir: BT (dependencies below what needs them, as Dask draws), TB, LR or RL.
    #[arg(long, default_value = "BT", value_parser = ["TB", "BT", "LR", "RL"])]
    pub(crate) rankdir: String,
    /// With --color state: take the states from this trace (written by `run`/`submit --trace`) of a run that ended.
    #[arg(long, value_name = "FILE")]
    pub(crate) trace: Option<PathBuf>,
    /// With --color state and no --trace: the scheduler to ask.
    #[command(flatten)]
    pub(crate) file: SchedulerFileArg,
    /// With --color state: how long to wait for the scheduler.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

/// Fill colours of task states (Dask's dashboard palette in spirit: grey
/// waiting, green running, red in memory, black erred).
fn state_colour(state: &str) -> &'static str {
    match state {
        "memory" => "#e74c3c",
        "processing" => "#2ecc71",
        "queued" | "waiting" | "no-worker" => "#bbbbbb",
        "erred" | "failed" => "#222222",
        "done" => "#e74c3c",
        "released" | "forgotten" => "#ffffff",
        _ => "#f3f3f3",
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The graph in DOT: a node per task (labelled by key), an edge from each
/// dependency to the task that needs it. `fill`: a fill colour per task.
pub(crate) fn to_dot(graph: &Graph, rankdir: &str, fill: &dyn Fn(usize, &str) -> Option<String>) -> String {
    let mut s = format!("digraph taskfarm {{\n  rankdir={rankdir};\n  node [shape=box, style=\"rounded,filled\", fillcolor=\"#ffffff\", fontname=\"sans-serif\", fontsize=10];\n");
    for (i, t) in graph.tasks.iter().enumerate() {
        match fill(i, &t.key) {
            Some(c) => s.push_str(&format!("  {} [fillcolor={}];\n", quote(&t.key), quote(&c))),
            None => s.push_str(&format!("  {};\n", quote(&t.key))),
        }
    }
    for t in &graph.tasks {
        let mut seen = std::collections::HashSet::new();
        for d in &t.deps {
            if seen.insert(d) {
                s.push_str(&format!("  {} -> {};\n", quote(d), quote(&t.key)));
            }
        }
    }
    s.push_str("}\n");
    s
}

/// "done", "failed" or "not run" for each task, from a trace's complete
/// events (the last run of a key counts).
fn states_from_trace(path: &std::path::Path, graph: &Graph) -> Result<Vec<String>, Fail> {
    let bad = |m: String| Fail(EXIT_USAGE, format!("--trace {}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let events = doc.get("traceEvents").and_then(|e| e.as_array()).ok_or_else(|| bad("no traceEvents list; expected a file written by --trace".into()))?;
    let mut ran: std::collections::HashMap<&str, bool> = std::collections::HashMap::new();
    for e in events {
        if e["ph"] == "X" && e["cat"] != "transfer" {
            if let Some(k) = e["name"].as_str() {
                ran.insert(k, e["args"]["ok"].as_bool().unwrap_or(true));
            }
        }
    }
    Ok(graph.tasks.iter().map(|t| match ran.get(t.key.as_str()) {
        Some(true) => "done".to_string(),
        Some(false) => "failed".to_string(),
        None => "not run".to_string(),
    }).collect())
}

pub(crate) fn cmd_visualize(a: VisualizeArgs) -> Result<u8, Fail> {
    let (graph, _) = load_graph(&a.graph, Vec::new())?;
    let states: Vec<String> = if let (Colour::State, Some(path)) = (a.color, &a.trace) {
        states_from_trace(path, &graph)?
    } else if a.color == Colour::State {
        let keys: Vec<String> = graph.tasks.iter().map(|t| t.key.clone()).collect();
        let mut client = client_from(a.file, a.timeout).map_err(|Fail(c, m)| Fail(c, format!("--color state asks the scheduler for the tasks' states: {m}")))?;
        client.key_states(&keys)?
    } else {
        Vec::new()
    };
    let dot = to_dot(&graph, &a.rankdir, &|i, key| match a.color {
        Colour::None => None,
        // Graphviz takes HSV as three fractions.
        Colour::Prefix => Some(format!("{:.3} 0.55 0.90", taskfarm::report::prefix_hue(taskfarm::telemetry::prefix_of(key)) as f64 / 360.0)),
        Colour::State => Some(state_colour(&states[i]).to_string()),
    });
    if a.output.as_os_str() == "-" {
        out!("{dot}");
        return Ok(0);
    }
    let ext = a.output.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "dot" | "gv" => {
            std::fs::write(&a.output, dot).map_err(|e| Fail::env(format!("cannot write {}: {e}", a.output.display())))?;
        }
        "svg" | "png" | "pdf" => {
            let mut child = std::process::Command::new("dot")
                .arg(format!("-T{ext}"))
                .arg("-o")
                .arg(&a.output)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| {
                    Fail::env(format!("cannot run Graphviz's `dot` for {} output ({e}): install Graphviz (e.g. apt-get install graphviz), or write DOT with -o FILE.dot", ext))
                })?;
            let written = child.stdin.take().expect("piped").write_all(dot.as_bytes());
            let status = child.wait().map_err(|e| Fail::env(format!("dot failed: {e}")))?;
            if written.is_err() || !status.success() {
                return Err(Fail::env(format!("dot could not draw {} ({status})", a.output.display())));
            }
        }
        other => {
            return Err(Fail(EXIT_USAGE, format!("-o {}: unknown format {other:?}; use a .dot, .svg or .png file name (or - for DOT on standard output)", a.output.display())));
        }
    }
    note!("taskfarm: {} tasks drawn to {}", graph.len(), a.output.display());
    Ok(0)
}
