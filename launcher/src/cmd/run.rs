//! `taskfarm run`: a graph on this machine, with an in-process cluster.

use clap::Args;
use std::path::{Path, PathBuf};
use taskfarm::{ClientError, Graph, Registry, Results};
use crate::*;
use crate::args::*;

#[derive(Args)]
pub(crate) struct RunArgs {
    /// The graph file (JSON; see docs/graph-format.md). `-` reads standard input.
    pub(crate) graph: PathBuf,
    /// Number of in-process workers.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) workers: u32,
    /// Threads per worker [default: the CPUs available divided among the workers].
    #[arg(long, value_name = "T")]
    pub(crate) nthreads: Option<u32>,
    #[command(flatten)]
    pub(crate) keys: KeysArg,
    /// Parent directory for the workers' scratch directories [default: $TMPDIR or /tmp].
    #[arg(long, value_name = "DIR")]
    pub(crate) local_directory: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) observe: super::observe::ObserveArgs,
    /// Serve the live dashboard and /metrics on this address (e.g. 127.0.0.1:8787) while the graph runs [default: none].
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) dashboard_address: Option<String>,
    #[command(flatten)]
    pub(crate) cache: CacheArg,
}

pub(crate) fn available_cpus() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

/// Read and validate a graph and the keys to compute; exit 2 on any problem.
pub(crate) fn load_graph(path: &Path, keys: Vec<String>) -> Result<(Graph, Vec<String>), Fail> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| Fail(EXIT_USAGE, format!("cannot read the graph from standard input: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| Fail(EXIT_USAGE, format!("cannot read graph file {}: {e}", path.display())))?
    };
    let reg = Registry::with_builtins();
    let graph = Graph::from_json(&text, &|f| reg.contains(f)).map_err(|e| Fail(EXIT_USAGE, format!("{}: {e}", path.display())))?;
    if graph.is_empty() {
        return Err(Fail(EXIT_USAGE, format!("{}: the graph has no tasks", path.display())));
    }
    if keys.is_empty() {
        let outputs = graph.output_keys();
        return Ok((graph, outputs));
    }
    graph.check_keys(&keys).map_err(|e| Fail(EXIT_USAGE, format!("{e} (see --keys)")))?;
    // Only what the keys need is sent (and counted by the progress bar).
    Ok((graph.cull(&keys), keys))
}

/// Print results as one JSON object and report errors; exit 1 if any task failed.
pub(crate) fn report(results: Results, keys: &[String]) -> Result<u8, Fail> {
    let printed: Vec<(&str, &taskfarm::Data)> = results.values.iter().map(|(k, v)| (k.as_str(), v)).collect();
    outln!("{}", taskfarm::value::format_results(printed));
    if results.errors.is_empty() {
        // The process ends right after: freeing every result one by one
        // would only delay the exit.
        std::mem::forget(results);
        return Ok(0);
    }
    for (key, error) in &results.errors {
        note!("taskfarm: task '{key}' failed: {error}");
    }
    note!("taskfarm: {} of {} requested keys failed", results.errors.len(), keys.len());
    Ok(EXIT_TASK_FAILED)
}

pub(crate) fn cmd_run(a: RunArgs) -> Result<u8, Fail> {
    let (graph, keys) = load_graph(&a.graph, a.keys.keys)?;
    if a.workers == 0 {
        return Err(Fail(EXIT_USAGE, "--workers must be at least 1".into()));
    }
    let nthreads = a.nthreads.unwrap_or_else(|| (available_cpus() / a.workers).max(1));
    if nthreads == 0 {
        return Err(Fail(EXIT_USAGE, "--nthreads must be at least 1".into()));
    }
    let dir = taskfarm::node::choose_local_directory(a.local_directory.as_deref());
    let dashboard = match &a.dashboard_address {
        Some(text) => Some(taskfarm::dashboard::DashboardSpec {
            address: taskfarm::dashboard::parse_address(text).map_err(|e| Fail(EXIT_USAGE, format!("--dashboard-address: {e}")))?,
            fallback: false,
        }),
        None => None,
    };
    let cache = a.cache.open()?;
    let cached = cache.is_some();
    let cluster = taskfarm::local::LocalCluster::start_observed(a.workers, nthreads, dir, Registry::with_builtins(), Default::default(), dashboard, cache)
        .map_err(|e| Fail::env(format!("cannot start the local cluster: {e}")))?;
    if let Some(url) = &cluster.dashboard_url {
        note!("taskfarm: dashboard at {url}");
    }
    let mut client = cluster.client()?;
    super::observe::install_progress(&mut client, &a.observe);
    let recording = super::observe::start_recording(&mut client, &a.observe)?;
    let results = client.compute(graph, &keys).map_err(|e| match e {
        ClientError::Stuck(m) => Fail(EXIT_TASK_FAILED, format!("{m} (taskfarm run's workers offer only cpus; use scheduler + workers with --resources)")),
        other => Fail::from(other),
    })?;
    if cached {
        if let Ok(s) = client.status() {
            let stat = |name: &str| s.stats.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v);
            let finished = stat("tasks_finished");
            let loads = stat("cache_loads");
            note!(
                "taskfarm: result cache: {loads} tasks loaded from it, {} run ({} stored, {} not cacheable)",
                finished.saturating_sub(loads),
                stat("cache_stores"),
                stat("cache_uncacheable")
            );
        }
    }
    let code = report(results, &keys)?;
    super::observe::finish_recording(&mut client, &a.observe, recording, &a.graph.display().to_string())?;
    drop(client);
    cluster.shutdown();
    Ok(code)
}

