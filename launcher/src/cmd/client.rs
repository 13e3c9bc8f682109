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
    /// Give up when the results are not all there this long after the start (exit 1, naming the keys still awaited);
    /// it also bounds the wait for the scheduler to be reachable [default: wait for the results as long as they take;
    /// the scheduler must be reachable within 30 s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) timeout: Option<Duration>,
    /// Give up when the scheduler says nothing for this long (it pings every 5 s): frozen (e.g. SIGSTOP), overloaded
    /// or cut off (exit 1). A scheduler whose connection breaks has this long to come back through the scheduler file;
    /// the graph is then submitted again (a scheduler restarted with its --journal kept what finished).
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) scheduler_timeout: Duration,
    #[command(flatten)]
    pub(crate) observe: super::observe::ObserveArgs,
}

#[derive(Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) file: SchedulerFileArg,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Print the report again every --interval until the scheduler goes away or Ctrl-C (on a terminal the screen is
    /// redrawn; otherwise each report follows the last, with --json one JSON object per line).
    #[arg(long)]
    pub(crate) watch: bool,
    /// With --watch: how often.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = parse_duration, requires = "watch")]
    pub(crate) interval: Duration,
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
    if a.scheduler_timeout <= taskfarm::protocol::PING_INTERVAL {
        return Err(Fail(EXIT_USAGE, format!("--scheduler-timeout must be longer than the scheduler's ping interval ({} s)", taskfarm::protocol::PING_INTERVAL.as_secs())));
    }
    let start = std::time::Instant::now();
    let path = schedfile::resolve_path(a.file.scheduler_file.as_deref());
    let mut client = Client::from_scheduler_file(&path, a.timeout.unwrap_or(Duration::from_secs(30)))?;
    client.scheduler_timeout = a.scheduler_timeout;
    client.reconnect = Some((path, a.scheduler_timeout));
    client.deadline = a.timeout.map(|t| start + t);
    super::observe::install_progress(&mut client, &a.observe);
    let recording = super::observe::start_recording(&mut client, &a.observe)?;
    let results = client.compute(graph, &keys).map_err(|e| match e {
        ClientError::Rejected(m) => Fail(EXIT_USAGE, format!("the scheduler rejected the graph: {m}")),
        e @ ClientError::Connect(_) => Fail::from(e),
        other => Fail(EXIT_TASK_FAILED, other.to_string()),
    })?;
    let code = report(results, &keys)?;
    super::observe::finish_recording(&mut client, &a.observe, recording, &a.graph.display().to_string())?;
    Ok(code)
}

pub(crate) fn cmd_status(a: StatusArgs) -> Result<u8, Fail> {
    let mut client = client_from(a.file, a.timeout)?;
    if !a.watch {
        let r = client.status()?;
        if a.json {
            let j = serde_json::to_string_pretty(&taskfarm::status::StatusJson::from(&r)).expect("serialisable");
            outln!("{j}");
        } else {
            out!("{}", taskfarm::status::table(&r, util::unix_time()));
        }
        return Ok(0);
    }
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    loop {
        let r = match client.status() {
            Ok(r) => r,
            Err(e) => {
                note!("taskfarm: the scheduler is gone ({e}); stopped watching");
                return Ok(0);
            }
        };
        if a.json {
            outln!("{}", taskfarm::status::to_json_text(&r).expect("serialisable"));
        } else {
            if tty {
                // Home, then clear the screen: a redraw in place.
                out!("\x1b[H\x1b[2J");
            }
            outln!("every {:.0} s, {}", a.interval.as_secs_f64(), util::rfc3339_now());
            out!("{}", taskfarm::status::table(&r, util::unix_time()));
            if !tty {
                outln!("");
            }
        }
        std::thread::sleep(a.interval);
    }
}

pub(crate) fn cmd_shutdown(a: ShutdownArgs) -> Result<u8, Fail> {
    let mut client = client_from(a.file, a.timeout)?;
    client.shutdown()?;
    note!("taskfarm: scheduler at {} is shutting down", client.address);
    Ok(0)
}

pub(crate) fn cmd_retire(a: RetireArgs) -> Result<u8, Fail> {
    use taskfarm::client::RetireError;
    let mut client = client_from(a.file, a.timeout)?;
    let names = client
        .retire_and_wait(&a.workers, a.all_idle, a.timeout, |names| note!("taskfarm: retiring {}", names.join(", ")))
        .map_err(|e| match e {
            RetireError::StillRetiring { .. } => Fail(EXIT_TASK_FAILED, e.to_string()),
            RetireError::Client(c) => Fail::from(c),
            other => Fail(EXIT_USAGE, other.to_string()),
        })?;
    note!("taskfarm: retired {}", names.join(", "));
    Ok(0)
}
