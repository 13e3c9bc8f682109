//! `taskfarm`: the command-line front end. Each subcommand is a thin layer
//! over the `taskfarm` library crate.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use taskfarm::{ClientError, Registry};

/// Write a line to standard output; a failed write (a full disk, a closed
/// pipe) ends the command with an error instead of silently losing output.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_out(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// Like [`outln!`] without the newline.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_out(format_args!($($arg)*))?
    };
}

/// A note on standard error; if it cannot be written it is dropped (a
/// closed stderr must never stop or crash the command).
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod args;
mod cmd;

/// Standard output, written through and flushed; errors become [`Fail`].
fn write_out(args: std::fmt::Arguments<'_>) -> Result<(), Fail> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).and_then(|_| out.flush()).map_err(|e| Fail::env(format!("cannot write to standard output: {e}")))
}

use cmd::{client::*, jobqueue::*, mpi::*, run::*, scheduler::*, visualize::*, worker::*};

// mimalloc for the small blocks of schedulers and clients, glibc for the
// rest (runtime/src/alloc.rs).
#[global_allocator]
static ALLOC: taskfarm::alloc::TaskfarmAlloc = taskfarm::alloc::TaskfarmAlloc;

const EXIT_TASK_FAILED: u8 = 1;

const EXIT_USAGE: u8 = 2;
/// The environment failed: the scheduler is unreachable, stale or not this
/// one's, a port is in use, a file cannot be written (3 is a worker's exit
/// over its memory limit).
const EXIT_ENVIRONMENT: u8 = 4;

#[derive(Parser)]
#[command(
    name = "taskfarm",
    version,
    about = "Run task graphs on one machine or across an HPC allocation",
    long_about = "Run task graphs on one machine or across an HPC allocation.\n\n\
        One machine, no setup:      taskfarm run graph.json\n\
        Scheduler + workers:        taskfarm scheduler --scheduler-file S &\n\
        \x20                           taskfarm worker --scheduler-file S &\n\
        \x20                           taskfarm submit graph.json --scheduler-file S\n\n\
        Exit status: 0 all requested keys computed; 1 a task failed; 2 usage or validation error \
        (bad flags, malformed graph); 3 a worker over its memory limit; 4 the environment failed \
        (scheduler unreachable or stale, port in use, file not writable).",
    after_help = "Logging: TASKFARM_LOG=error|warn|info|debug (default info; `run`: warn), optionally per component, e.g. \
        TASKFARM_LOG=info,taskfarm::worker=debug. Docs: docs/guide.md, docs/cli.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a graph on this machine with an in-process scheduler and workers; print the results as JSON.
    Run(RunArgs),
    /// Start a scheduler that workers and clients find through the scheduler file.
    Scheduler(SchedulerArgs),
    /// Start a worker that joins a scheduler and runs its tasks.
    Worker(WorkerArgs),
    /// Submit a graph to a running scheduler; print the results as JSON.
    Submit(SubmitArgs),
    /// Show a running scheduler's workers and task counts.
    Status(StatusArgs),
    /// Make a running scheduler and all its workers exit cleanly.
    Shutdown(ShutdownArgs),
    /// Retire workers gracefully: no new tasks, their unique results copied to other workers, then they exit.
    Retire(RetireArgs),
    /// Under mpirun/mpiexec/srun: rank 0 runs the scheduler, the other ranks run workers
    /// (with `-- CMD ...`, rank 1 runs CMD and the job ends when it does).
    Mpi(MpiArgs),
    /// Worker jobs on a batch system (SLURM, PBS, Torque, LSF, SGE): print a job script, submit, list, cancel.
    #[command(subcommand)]
    Jobqueue(JobqueueCommand),
    /// Show the node's topology (cores, NUMA nodes, allowed CPUs) and the binding plan.
    Topology(TopologyArgs),
    /// Draw a graph: DOT, or SVG/PNG through Graphviz; coloured by prefix or by the tasks' states on a scheduler.
    Visualize(VisualizeArgs),
    /// List the built-in task functions.
    Functions,
    /// Look after a result cache directory (--cache DIR): info, clear, prune.
    #[command(subcommand)]
    Cache(cmd::cache::CacheCommand),
}

/// A failure that ends the command with a message and an exit status.
struct Fail(u8, String);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Fail {
        let code = match &e {
            ClientError::Rejected(_) => EXIT_USAGE,
            ClientError::Stuck(_) | ClientError::TimedOut(_) => EXIT_TASK_FAILED,
            ClientError::Connect(_) | ClientError::Lost(_) => EXIT_ENVIRONMENT,
        };
        Fail(code, e.to_string())
    }
}

impl From<taskfarm::Error> for Fail {
    fn from(e: taskfarm::Error) -> Fail {
        Fail(e.exit_code(), e.to_string())
    }
}

impl Fail {
    /// The environment failed (see [`EXIT_ENVIRONMENT`]).
    pub(crate) fn env(msg: impl Into<String>) -> Fail {
        Fail(EXIT_ENVIRONMENT, msg.into())
    }
}

/// Print the library's log events on stderr, with the date and time (UTC),
/// level and component. `TASKFARM_LOG` filters them: a level (error, warn,
/// info, debug, trace), optionally followed by per-component levels, e.g.
/// `info,taskfarm::worker=debug` [default: info; `run` is quieter: warn, with
/// its progress lines]. A log line that cannot be written (stderr closed) is
/// dropped; it never stops the process.
fn init_logging(quiet: bool) {
    use tracing_subscriber::prelude::*;
    let default = if quiet { "warn,taskfarm::progress=info" } else { "info" };
    let (filter, problem) = match std::env::var("TASKFARM_LOG").ok().filter(|v| !v.trim().is_empty()) {
        None => (default.parse().expect("the default filter parses"), None),
        Some(spec) => match log_filter(&spec) {
            Ok(f) => (f, None),
            Err(e) => (default.parse().expect("the default filter parses"), Some(format!("TASKFARM_LOG={spec:?} is not a log filter ({e}); expected e.g. info or warn,taskfarm::worker=debug; using {default}"))),
        },
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false).log_internal_errors(false);
    tracing_subscriber::registry().with(fmt.with_filter(filter)).init();
    if let Some(p) = problem {
        tracing::warn!(target: "taskfarm::log", "{p}");
    }
}

/// Parse a `TASKFARM_LOG` value (also taking `warning` for warn).
pub(crate) fn log_filter(spec: &str) -> Result<tracing_subscriber::filter::Targets, String> {
    let spec = spec.to_ascii_lowercase().replace("warning", "warn");
    spec.parse::<tracing_subscriber::filter::Targets>().map_err(|e| e.to_string())
}

fn cmd_functions() -> Result<u8, Fail> {
    // `__` names are the runtime's own (the result cache's loads)
    for (name, help) in Registry::with_builtins().describe().into_iter().filter(|(n, _)| !n.starts_with("__")) {
        outln!("{name:10} {help}");
    }
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Run(_)));
    // Workers keep glibc for everything (their memory limit relies on it);
    // `taskfarm mpi` switches on its scheduler rank only.
    if !matches!(cli.command, Command::Worker(_) | Command::Mpi(_)) {
        taskfarm::alloc::small_blocks_from_mimalloc();
    }
    let result = match cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Scheduler(a) => cmd_scheduler(a),
        Command::Worker(a) => cmd_worker(a),
        Command::Submit(a) => cmd_submit(a),
        Command::Status(a) => cmd_status(a),
        Command::Shutdown(a) => cmd_shutdown(a),
        Command::Retire(a) => cmd_retire(a),
        Command::Mpi(a) => cmd_mpi(a),
        Command::Topology(a) => cmd_topology(a),
        Command::Jobqueue(c) => cmd_jobqueue(c),
        Command::Visualize(a) => cmd_visualize(a),
        Command::Functions => cmd_functions(),
        Command::Cache(c) => cmd::cache::cmd_cache(c),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Fail(code, msg)) => {
            note!("taskfarm: error: {msg}");
            ExitCode::from(code)
        }
    }
}
