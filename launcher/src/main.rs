//! `taskfarm`: the command-line front end. Each subcommand is a thin layer
//! over the `taskfarm` library crate.

use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use taskfarm::protocol::Role;
use taskfarm::scheduler::{self, SchedulerConfig, ServerConfig};
use taskfarm::worker::{self, WorkerConfig, WorkerExit};
use taskfarm::{log_at, schedfile, util, Client, ClientError, Graph, Registry, Results};

// mimalloc for the small blocks of schedulers and clients, glibc for the
// rest (runtime/src/alloc.rs).
#[global_allocator]
static ALLOC: taskfarm::alloc::TaskfarmAlloc = taskfarm::alloc::TaskfarmAlloc;

const EXIT_TASK_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

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
        (bad flags, malformed graph, unreachable scheduler).",
    after_help = "Logging: set TASKFARM_LOG=error|warn|info|debug (default info). Docs: docs/guide.md, docs/cli.md."
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
    /// List the built-in task functions.
    Functions,
}

#[derive(Subcommand)]
enum JobqueueCommand {
    /// Print the worker job script that `submit` would submit (nothing is submitted).
    Script(JobScriptArgs),
    /// Submit worker jobs that join the scheduler named by --scheduler-file.
    Submit(JobSubmitArgs),
    /// List the worker jobs submitted for this scheduler (by `submit` or by `scheduler --adapt`), with their states.
    List(JobListArgs),
    /// Cancel the worker jobs submitted for this scheduler (all, or those given with --job).
    Cancel(JobCancelArgs),
}

/// What each worker job asks the batch system for, and how its workers start.
#[derive(Args, Clone)]
struct JobArgs {
    /// Cores per job; the job's worker processes share them.
    #[arg(long, default_value_t = 1, value_name = "N")]
    cores: u32,
    /// Memory per job, with a unit: 16GB (10^9 bytes), 16GiB (2^30), 16000M (2^20). Directives are written in MiB, rounded down;
    /// each worker gets its share as --memory-limit. [default: no memory request, no worker limit]
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Worker processes per job (threads per worker = cores / processes).
    #[arg(long, default_value_t = 1, value_name = "N")]
    processes: u32,
    /// Queue (SLURM partition).
    #[arg(long, value_name = "NAME")]
    queue: Option<String>,
    /// Account to charge (SLURM, PBS) or project (LSF, SGE).
    #[arg(long, alias = "project", value_name = "NAME")]
    account: Option<String>,
    /// Walltime of each job: HH:MM:SS, D-HH:MM:SS or a duration such as 90m. Workers retire gracefully before it ends
    /// (see --walltime-margin) and, with --adapt, replacement jobs are submitted ahead of time.
    #[arg(long, value_name = "TIME")]
    walltime: Option<String>,
    /// How long before the walltime the workers start retiring [default: 10% of the walltime, between 5 s and 5 min].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    walltime_margin: Option<Duration>,
    /// Job name.
    #[arg(long, default_value = "taskfarm-worker", value_name = "NAME")]
    job_name: String,
    /// An extra directive line, e.g. "--exclusive" or "-l select=1:ncpus=4:mpiprocs=1" (the #SBATCH/#PBS/#BSUB/#$ prefix is added). Repeatable.
    #[arg(long, value_name = "DIRECTIVE")]
    job_extra_directive: Vec<String>,
    /// Leave out generated directive lines containing this text, e.g. "--mem" where the site rejects it. Repeatable.
    #[arg(long, value_name = "TEXT")]
    skip_directive: Vec<String>,
    /// A shell line to run before the workers start, e.g. "module load gcc". Repeatable.
    #[arg(long, value_name = "LINE")]
    prologue: Vec<String>,
    /// Directory for the jobs' output files [default: the batch system's default, usually the submit directory].
    #[arg(long, value_name = "DIR")]
    log_directory: Option<PathBuf>,
    /// Parent of each worker's scratch directory on the compute node, e.g. '$TMPDIR' (expanded in the job).
    #[arg(long, value_name = "DIR")]
    local_directory: Option<String>,
    /// The taskfarm executable the jobs run [default: this executable's absolute path].
    #[arg(long, value_name = "PATH")]
    taskfarm: Option<String>,
    /// Job script template with {{directives}}, {{prologue}}, {{command}} and {{system}} placeholders [default: jobscripts/templates/worker-job.sh, built in].
    #[arg(long, value_name = "FILE")]
    template: Option<PathBuf>,
    /// An extra argument for `taskfarm worker`, e.g. --worker-arg=--resources --worker-arg="GPU=1". Repeatable.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    worker_arg: Vec<String>,
}

#[derive(Args)]
struct JobScriptArgs {
    /// Batch system: slurm, pbs (PBS Pro/OpenPBS), torque, lsf or sge.
    #[arg(long, value_name = "SYSTEM")]
    system: taskfarm::jobqueue::System,
    #[command(flatten)]
    file: SchedulerFileArg,
    /// Network interface the workers listen on and advertise, e.g. ib0.
    #[arg(long, value_name = "NAME")]
    interface: Option<String>,
    #[command(flatten)]
    job: JobArgs,
}

#[derive(Args)]
struct JobSubmitArgs {
    #[command(flatten)]
    script: JobScriptArgs,
    /// Number of jobs to submit.
    #[arg(long, default_value_t = 1, value_name = "N")]
    jobs: u32,
}

#[derive(Args)]
struct JobListArgs {
    #[command(flatten)]
    file: SchedulerFileArg,
    /// Also show jobs that have ended (kept for a day).
    #[arg(long)]
    all: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct JobCancelArgs {
    #[command(flatten)]
    file: SchedulerFileArg,
    /// Cancel only this job (repeatable) [default: every job of this scheduler that has not ended].
    #[arg(long = "job", value_name = "ID")]
    jobs: Vec<String>,
}

#[derive(Args)]
struct KeysArg {
    /// Keys to compute and print, comma-separated [default: the graph's outputs, i.e. keys nothing depends on].
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    keys: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    /// The graph file (JSON; see docs/graph-format.md). `-` reads standard input.
    graph: PathBuf,
    /// Number of in-process workers.
    #[arg(long, default_value_t = 1, value_name = "N")]
    workers: u32,
    /// Threads per worker [default: the CPUs available divided among the workers].
    #[arg(long, value_name = "T")]
    nthreads: Option<u32>,
    #[command(flatten)]
    keys: KeysArg,
    /// Parent directory for the workers' scratch directories [default: $TMPDIR or /tmp].
    #[arg(long, value_name = "DIR")]
    local_directory: Option<PathBuf>,
}

#[derive(Args)]
struct SchedulerFileArg {
    /// The scheduler file (address and secret of the scheduler) [default: $TASKFARM_SCHEDULER_FILE, else ./taskfarm-scheduler.json].
    #[arg(long, value_name = "FILE")]
    scheduler_file: Option<PathBuf>,
}

#[derive(Args)]
struct NetArgs {
    /// Listen on and advertise the address of this network interface, e.g. ib0 (the names can differ between login and compute nodes).
    #[arg(long, value_name = "NAME")]
    interface: Option<String>,
    /// Address to listen on, when it differs from the address others should use (e.g. behind NAT).
    #[arg(long, value_name = "IP")]
    listen_address: Option<IpAddr>,
    /// Address to advertise to others (in the scheduler file, or to peers), when it differs from the listening one.
    #[arg(long, value_name = "IP")]
    contact_address: Option<IpAddr>,
}

impl NetArgs {
    /// (listen, contact) addresses from --interface/--listen-address/--contact-address.
    fn resolve(&self) -> Result<(Option<IpAddr>, Option<IpAddr>), Fail> {
        let iface = self.interface.as_deref().map(taskfarm::node::interface_address).transpose().map_err(|e| Fail(EXIT_USAGE, e))?;
        Ok((self.listen_address.or(iface), self.contact_address.or(iface)))
    }
}

#[derive(Args)]
struct SchedulerArgs {
    #[command(flatten)]
    file: SchedulerFileArg,
    /// Address to listen on [default: the --interface address, else this host's address on the default route, else loopback]. Only this address is listened on.
    #[arg(long, value_name = "HOST", conflicts_with_all = ["interface", "listen_address"])]
    host: Option<IpAddr>,
    #[command(flatten)]
    net: NetArgs,
    /// Port to listen on; 0 picks a free one (the scheduler file tells clients which).
    #[arg(long, default_value_t = 0, value_name = "P")]
    port: u16,
    /// Exit after being idle (no clients, no tasks) this long, e.g. 30m. [default: never]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// Write this process's id to FILE (removed at exit).
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Consider a worker lost after this long without a message.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    worker_timeout: Duration,
    /// A task that had started on more than N workers that died is marked erred
    /// (tasks only queued on them are run elsewhere).
    #[arg(long, default_value_t = 3, value_name = "N")]
    allowed_failures: u32,
    /// Adaptive scaling: submit worker jobs to this batch system (slurm, pbs, torque, lsf, sge) as work queues up, retire idle ones.
    /// Job options (--cores, --memory, --walltime, ...) as for `taskfarm jobqueue submit`.
    #[arg(long, value_name = "SYSTEM")]
    adapt: Option<taskfarm::jobqueue::System>,
    /// With --adapt: never fewer jobs than this.
    #[arg(long, default_value_t = 0, value_name = "N", requires = "adapt")]
    minimum_jobs: u32,
    /// With --adapt: never more jobs than this (jobs near their walltime are replaced ahead of time, briefly exceeding it).
    #[arg(long, default_value_t = 10, value_name = "N", requires = "adapt")]
    maximum_jobs: u32,
    /// With --adapt: submit jobs until the queued work would take at most this long on the workers.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration, requires = "adapt")]
    target_duration: Duration,
    /// With --adapt: how often to check.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_duration, requires = "adapt")]
    adapt_interval: Duration,
    /// With --adapt: retire a job once idle at this many consecutive checks.
    #[arg(long, default_value_t = 3, value_name = "N", requires = "adapt")]
    wait_count: u32,
    /// With --adapt: interface the workers use [default: the scheduler's --interface].
    #[arg(long, value_name = "NAME", requires = "adapt")]
    worker_interface: Option<String>,
    #[command(flatten)]
    job: JobArgs,
}

#[derive(Args)]
struct WorkerArgs {
    /// Scheduler address tcp://HOST:PORT; needs the secret in $TASKFARM_SECRET. Prefer --scheduler-file.
    address: Option<String>,
    #[command(flatten)]
    file: SchedulerFileArg,
    /// Number of threads running tasks [default: the CPUs available to this process].
    #[arg(long, value_name = "T")]
    nthreads: Option<u32>,
    /// Worker name, shown in status and usable in a task's "workers" restriction [default: HOST-PID].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Where the worker's scratch directory (cwd of command tasks; removed at exit) goes [default: $TMPDIR or /tmp].
    #[arg(long, value_name = "DIR")]
    local_directory: Option<PathBuf>,
    /// How long to wait for the scheduler (file to appear and answer) before giving up.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    death_timeout: Duration,
    /// Write this process's id to FILE (removed at exit).
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Abstract resources this worker offers, e.g. "GPU=2 MEM=10e9" (cpus = threads).
    #[arg(long, value_name = "\"NAME=AMOUNT ...\"")]
    resources: Option<String>,
    /// Memory limit of the worker process: 5GB, 5GiB, 5000M, 0.5 (of the node), auto (the node's memory or cgroup limit), 0 (none).
    #[arg(long, default_value = "0", value_name = "SIZE")]
    memory_limit: String,
    #[command(flatten)]
    memory: MemoryArgs,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    leave: LeaveArgs,
    /// The batch job this worker belongs to (adaptive scaling retires whole jobs) [default: from $SLURM_JOB_ID, $PBS_JOBID, $LSB_JOBID or Grid Engine's $JOB_ID].
    #[arg(long, value_name = "ID")]
    job_id: Option<String>,
}

/// When a worker leaves gracefully (`taskfarm worker` and `taskfarm mpi`).
#[derive(Args)]
struct LeaveArgs {
    /// Retire gracefully (unique results moved to other workers, then exit 0) this long after starting, e.g. a few minutes less than the job's walltime.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    lifetime: Option<Duration>,
    /// Leave up to this much earlier, at random, so workers started together do not all leave at once
    /// [default: 0 with --lifetime; half the margin when the end comes from the walltime].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    lifetime_stagger: Option<Duration>,
    /// The job's walltime (HH:MM:SS or e.g. 90m), counted from this worker's start: it retires --walltime-margin before the end.
    /// Without --lifetime or --walltime, a `taskfarm worker` inside a SLURM or Torque job asks the batch system for the time left.
    #[arg(long, value_name = "TIME", conflicts_with = "lifetime")]
    walltime: Option<String>,
    /// How long before the walltime to retire [default: 10% of the walltime, between 5 s and 5 min].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    walltime_margin: Option<Duration>,
}

impl LeaveArgs {
    fn request(&self, ask_batch_system: bool) -> taskfarm::worker::lifetime::LifetimeRequest {
        taskfarm::worker::lifetime::LifetimeRequest {
            lifetime: self.lifetime,
            stagger: self.lifetime_stagger,
            walltime: self.walltime.clone(),
            walltime_margin: self.walltime_margin,
            ask_batch_system,
        }
    }
}

/// Thresholds as fractions of --memory-limit (Dask's defaults); `off` disables one.
#[derive(Args)]
struct MemoryArgs {
    /// Spill least recently used values to the local directory when values held in memory exceed this fraction of the limit.
    #[arg(long, default_value = "0.6", value_name = "FRACTION", value_parser = parse_fraction)]
    memory_target: Fraction,
    /// Spill when the process's memory exceeds this fraction.
    #[arg(long, default_value = "0.7", value_name = "FRACTION", value_parser = parse_fraction)]
    memory_spill: Fraction,
    /// Start no new tasks (the scheduler sends none) above this fraction.
    #[arg(long, default_value = "0.8", value_name = "FRACTION", value_parser = parse_fraction)]
    memory_pause: Fraction,
    /// Exit above this fraction; the scheduler reschedules the work.
    #[arg(long, default_value = "0.95", value_name = "FRACTION", value_parser = parse_fraction)]
    memory_terminate: Fraction,
}

impl MemoryArgs {
    fn policy(&self, limit: Option<u64>) -> taskfarm::worker::MemoryPolicy {
        taskfarm::worker::MemoryPolicy {
            limit,
            target: self.memory_target.0,
            spill: self.memory_spill.0,
            pause: self.memory_pause.0,
            terminate: self.memory_terminate.0,
        }
    }
}

/// A fraction in (0, 1], or none (`off`).
#[derive(Clone, Copy, Debug)]
struct Fraction(Option<f64>);

fn parse_fraction(s: &str) -> Result<Fraction, String> {
    if matches!(s, "off" | "false" | "none") {
        return Ok(Fraction(None));
    }
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(Fraction(Some(x))),
        _ => Err(format!("'{s}' is not a fraction in (0, 1] or 'off'")),
    }
}

#[derive(Args)]
struct MpiArgs {
    #[command(flatten)]
    file: SchedulerFileArg,
    #[command(flatten)]
    net: NetArgs,
    /// Transport; only tcp is supported.
    #[arg(long, default_value = "tcp", value_parser = ["tcp"])]
    protocol: String,
    /// Threads per worker [default: the CPUs of the worker's core share].
    #[arg(long, value_name = "T")]
    nthreads: Option<u32>,
    /// Memory limit per worker: 5GB, 5GiB, 5000M, a fraction of the node, auto (the node's memory divided among its ranks), 0 (none).
    #[arg(long, default_value = "auto", value_name = "SIZE")]
    memory_limit: String,
    #[command(flatten)]
    memory: MemoryArgs,
    /// Parent of the workers' scratch directories: use node-local disk [default: $TMPDIR, else the job's scratch, else /tmp].
    #[arg(long, value_name = "DIR")]
    local_directory: Option<PathBuf>,
    /// Prefix of worker names; worker names are PREFIX-RANK.
    #[arg(long, default_value = "worker", value_name = "PREFIX")]
    name: String,
    /// Abstract resources each worker offers, e.g. "GPU=1 MEM=10e9" (cpus = threads).
    #[arg(long, value_name = "\"NAME=AMOUNT ...\"")]
    resources: Option<String>,
    #[command(flatten)]
    leave: LeaveArgs,
    /// Port of the scheduler on rank 0; 0 picks a free one.
    #[arg(long, default_value_t = 0, value_name = "P")]
    scheduler_port: u16,
    /// How long each rank waits for the others (the scheduler file; all workers registering in batch mode) before the job fails.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    death_timeout: Duration,
    /// Pin each rank's threads to a disjoint share of its node: cores, numa, or none (leave as the launcher set it) [default: cores when several ranks share a node].
    #[arg(long, value_name = "POLICY")]
    bind: Option<taskfarm::node::BindPolicy>,
    /// Batch mode: rank 1 runs this command (with TASKFARM_SCHEDULER_FILE set) instead of a worker; when it exits, the cluster shuts down and the job exits with its status.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Args)]
struct TopologyArgs {
    /// Show the plan for this many processes on the node.
    #[arg(long, default_value_t = 1, value_name = "N")]
    local_size: u32,
    /// Binding policy to plan for: cores, numa or none.
    #[arg(long, default_value = "cores", value_name = "POLICY")]
    bind: taskfarm::node::BindPolicy,
}

#[derive(Args)]
struct SubmitArgs {
    /// The graph file (JSON; see docs/graph-format.md). `-` reads standard input.
    graph: PathBuf,
    #[command(flatten)]
    file: SchedulerFileArg,
    #[command(flatten)]
    keys: KeysArg,
    /// How long to wait for the scheduler to be reachable.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    file: SchedulerFileArg,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// How long to wait for the scheduler to be reachable.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
struct RetireArgs {
    #[command(flatten)]
    file: SchedulerFileArg,
    /// Worker to retire, by name or address (repeatable).
    #[arg(long = "worker", value_name = "NAME", required_unless_present = "all_idle")]
    workers: Vec<String>,
    /// Retire every worker that is running nothing (keeping one if all are idle and results are held).
    #[arg(long, conflicts_with = "workers")]
    all_idle: bool,
    /// How long to wait for the scheduler, and for the workers to leave.
    #[arg(long, default_value = "120s", value_name = "DURATION", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
struct ShutdownArgs {
    #[command(flatten)]
    file: SchedulerFileArg,
    /// How long to wait for the scheduler to be reachable.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    util::parse_duration(s)
}

/// A failure that ends the command with a message and an exit status.
struct Fail(u8, String);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Fail {
        Fail(EXIT_USAGE, e.to_string())
    }
}

fn main() -> ExitCode {
    util::init_log_from_env();
    let cli = Cli::parse();
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
        Command::Functions => {
            for (name, help) in Registry::with_builtins().describe() {
                println!("{name:10} {help}");
            }
            Ok(0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Fail(code, msg)) => {
            eprintln!("taskfarm: error: {msg}");
            ExitCode::from(code)
        }
    }
}

fn available_cpus() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

fn default_local_directory() -> PathBuf {
    std::env::var_os("TMPDIR").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// Read and validate a graph and the keys to compute; exit 2 on any problem.
fn load_graph(path: &Path, keys: Vec<String>) -> Result<(Graph, Vec<String>), Fail> {
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
    Ok((graph, keys))
}

/// Print results as one JSON object and report errors; exit 1 if any task failed.
fn report(results: Results, keys: &[String]) -> Result<u8, Fail> {
    let printed: Vec<(&str, &taskfarm::Data)> = results.values.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", taskfarm::value::format_results(printed));
    let _ = out.flush();
    if results.errors.is_empty() {
        // The process ends right after: freeing every result one by one
        // would only delay the exit.
        std::mem::forget(results);
        return Ok(0);
    }
    for (key, error) in &results.errors {
        eprintln!("taskfarm: task '{key}' failed: {error}");
    }
    eprintln!("taskfarm: {} of {} requested keys failed", results.errors.len(), keys.len());
    Ok(EXIT_TASK_FAILED)
}

fn cmd_run(a: RunArgs) -> Result<u8, Fail> {
    let (graph, keys) = load_graph(&a.graph, a.keys.keys)?;
    if a.workers == 0 {
        return Err(Fail(EXIT_USAGE, "--workers must be at least 1".into()));
    }
    let nthreads = a.nthreads.unwrap_or_else(|| (available_cpus() / a.workers).max(1));
    if nthreads == 0 {
        return Err(Fail(EXIT_USAGE, "--nthreads must be at least 1".into()));
    }
    if !log_enabled_info_requested() {
        util::set_log_level(1);
    }
    let dir = a.local_directory.unwrap_or_else(default_local_directory);
    let cluster = taskfarm::local::LocalCluster::start(a.workers, nthreads, dir, Registry::with_builtins())
        .map_err(|e| Fail(EXIT_USAGE, format!("cannot start the local cluster: {e}")))?;
    let mut client = cluster.client()?;
    let results = client.compute(graph, &keys).map_err(|e| match e {
        ClientError::Stuck(m) => Fail(EXIT_TASK_FAILED, format!("{m} (taskfarm run's workers offer only cpus; use scheduler + workers with --resources)")),
        other => Fail::from(other),
    })?;
    drop(client);
    cluster.shutdown();
    report(results, &keys)
}

/// `run` is quiet unless the user asked for logs.
fn log_enabled_info_requested() -> bool {
    std::env::var_os("TASKFARM_LOG").is_some()
}

struct PidFile(Option<PathBuf>);

impl PidFile {
    fn create(path: Option<PathBuf>) -> Result<PidFile, Fail> {
        if let Some(p) = &path {
            std::fs::write(p, format!("{}\n", std::process::id())).map_err(|e| Fail(EXIT_USAGE, format!("cannot write pid file {}: {e}", p.display())))?;
        }
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn cmd_scheduler(a: SchedulerArgs) -> Result<u8, Fail> {
    let path = schedfile::resolve_path(a.file.scheduler_file.as_deref());
    let _pid = PidFile::create(a.pid_file)?;
    let (listen, contact) = a.net.resolve()?;
    let adapt_plan = match a.adapt {
        Some(system) => {
            if a.maximum_jobs == 0 || a.minimum_jobs > a.maximum_jobs {
                return Err(Fail(EXIT_USAGE, format!("--minimum-jobs {} and --maximum-jobs {} must satisfy 0 <= min <= max, max >= 1", a.minimum_jobs, a.maximum_jobs)));
            }
            let opts = a.job.options(system, &path, a.worker_interface.clone().or(a.net.interface.clone()))?;
            if opts.walltime.is_none() {
                log_at!(2, "adapt", "no --walltime: worker jobs get the batch system's default time limit and are not replaced ahead of it");
            }
            opts.validate().map_err(|e| Fail(EXIT_USAGE, e))?;
            let mut cfg = taskfarm::jobqueue::adapt::AdaptConfig::new(a.minimum_jobs, a.maximum_jobs, opts.cores);
            cfg.interval = a.adapt_interval.max(Duration::from_millis(100));
            cfg.target_duration = a.target_duration.as_secs_f64().max(0.001);
            cfg.wait_count = a.wait_count.max(1);
            cfg.lifetime = opts.worker_lifetime().map(|l| l as f64);
            Some((opts, cfg))
        }
        None => None,
    };
    let host = a.host.or(listen).unwrap_or_else(util::default_ip);
    let sched = scheduler::start(ServerConfig {
        listen: SocketAddr::new(host, a.port),
        contact: contact.map(|c| c.to_string()),
        secret: util::random_bytes(32),
        scheduler_file: Some(path.clone()),
        job: None,
        idle_timeout: a.idle_timeout,
        state: SchedulerConfig { worker_timeout: a.worker_timeout.as_secs_f64(), allowed_failures: a.allowed_failures, ..Default::default() },
    })
    .map_err(|e| Fail(EXIT_USAGE, e.to_string()))?;
    let adapt = match adapt_plan {
        Some((opts, cfg)) => Some(taskfarm::jobqueue::adapt::spawn(sched.controller(), opts, cfg).map_err(|e| {
            sched.stop("adaptive scaling could not start");
            Fail(EXIT_USAGE, e)
        })?),
        None => None,
    };
    let stop = sched.stopper();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .map_err(|e| Fail(EXIT_USAGE, format!("cannot install signal handlers: {e}")))?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            stop(&format!("received signal {sig}"));
        }
    });
    sched.join();
    if let Some(a) = adapt {
        a.shutdown();
    }
    Ok(0)
}

fn cmd_worker(a: WorkerArgs) -> Result<u8, Fail> {
    let leave = a.leave.request(true);
    leave.validate().map_err(|e| Fail(EXIT_USAGE, e))?;
    let nthreads = a.nthreads.unwrap_or_else(available_cpus);
    if nthreads == 0 {
        return Err(Fail(EXIT_USAGE, "--nthreads must be at least 1".into()));
    }
    let lifetime = leave.plan().map_err(|e| Fail(EXIT_USAGE, e))?;
    let _pid = PidFile::create(a.pid_file)?;
    let resources = a.resources.as_deref().map(util::parse_resources).transpose().map_err(|e| Fail(EXIT_USAGE, e))?.unwrap_or_default();
    let memory_limit = util::parse_memory(&a.memory_limit, util::node_memory()).map_err(|e| Fail(EXIT_USAGE, format!("--memory-limit: {e}")))?;
    let (listen_ip, contact_ip) = a.net.resolve()?;
    let (secret, stream) = match &a.address {
        Some(addr) => {
            let secret = std::env::var("TASKFARM_SECRET")
                .ok()
                .and_then(|s| util::unhex(s.trim()))
                .filter(|s| !s.is_empty())
                .ok_or_else(|| Fail(EXIT_USAGE, format!("connecting to {addr} needs the scheduler's secret in $TASKFARM_SECRET (hex); or use --scheduler-file")))?;
            let stream = connect_with_retry(addr, &secret, a.death_timeout)?;
            (secret, stream)
        }
        None => {
            let path = schedfile::resolve_path(a.file.scheduler_file.as_deref());
            let (file, stream) = schedfile::wait_and_connect(&path, a.death_timeout, Role::Worker).map_err(|e| Fail(EXIT_USAGE, e))?;
            (file.secret_bytes().map_err(|e| Fail(EXIT_USAGE, e))?, stream)
        }
    };
    // Until connected, a signal ends the worker at once; from now on the first
    // SIGTERM/SIGINT retires it gracefully and a second one ends it.
    let retire = taskfarm::mpi::retire_on_signals();
    let cfg = WorkerConfig {
        name: a.name.unwrap_or_else(|| format!("{}-{}", util::hostname(), std::process::id())),
        nthreads,
        local_directory: taskfarm::node::choose_local_directory(a.local_directory.as_deref()),
        listen_ip,
        contact_ip,
        resources,
        secret,
        heartbeat: Duration::from_secs(1),
        registry: Registry::with_builtins(),
        memory: a.memory.policy(memory_limit),
        retire_requests: Some(retire),
        lifetime,
        job: a.job_id.clone().or_else(|| taskfarm::jobqueue::detect_job().map(|(_, id)| id)).unwrap_or_default(),
    };
    match worker::run(cfg, stream) {
        Ok(WorkerExit::Shutdown(_)) => Ok(0),
        Ok(WorkerExit::SchedulerLost(reason)) => {
            log_at!(1, "worker", "exiting: {reason}");
            Ok(1)
        }
        Ok(WorkerExit::MemoryLimit(_)) => Ok(3),
        Err(e) => Err(Fail(EXIT_USAGE, e.to_string())),
    }
}

fn connect_with_retry(addr: &str, secret: &[u8], timeout: Duration) -> Result<std::net::TcpStream, Fail> {
    let start = std::time::Instant::now();
    loop {
        match schedfile::connect(addr, secret, Role::Worker) {
            Ok(s) => return Ok(s),
            Err(schedfile::ConnectError::Fatal(m)) => return Err(Fail(EXIT_USAGE, m)),
            Err(schedfile::ConnectError::Unreachable(e)) if start.elapsed() >= timeout => {
                return Err(Fail(EXIT_USAGE, format!("scheduler at {addr} did not answer within {:.0} s: {e}", timeout.as_secs_f64())))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn client_from(file: SchedulerFileArg, timeout: Duration) -> Result<Client, Fail> {
    let path = schedfile::resolve_path(file.scheduler_file.as_deref());
    Ok(Client::from_scheduler_file(&path, timeout)?)
}

fn cmd_submit(a: SubmitArgs) -> Result<u8, Fail> {
    let (graph, keys) = load_graph(&a.graph, a.keys.keys)?;
    let mut client = client_from(a.file, a.timeout)?;
    let results = client.compute(graph, &keys).map_err(|e| match e {
        ClientError::Rejected(m) => Fail(EXIT_USAGE, format!("the scheduler rejected the graph: {m}")),
        other => Fail(EXIT_TASK_FAILED, other.to_string()),
    })?;
    report(results, &keys)
}

fn cmd_status(a: StatusArgs) -> Result<u8, Fail> {
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

fn cmd_shutdown(a: ShutdownArgs) -> Result<u8, Fail> {
    let mut client = client_from(a.file, a.timeout)?;
    client.shutdown()?;
    eprintln!("taskfarm: scheduler at {} is shutting down", client.address);
    Ok(0)
}

fn cmd_mpi(a: MpiArgs) -> Result<u8, Fail> {
    let (info, handle) = taskfarm::mpi::discover().map_err(|e| Fail(EXIT_USAGE, e))?;
    let batch = if a.command.is_empty() { None } else { Some(a.command.as_slice()) };
    let per_rank_total = util::node_memory() / info.local_size.unwrap_or(1).max(1) as u64;
    let memory_limit = util::parse_memory(&a.memory_limit, per_rank_total).map_err(|e| Fail(EXIT_USAGE, format!("--memory-limit: {e}")))?;
    let mut opts = taskfarm::mpi::MpiOptions::new(schedfile::resolve_path(a.file.scheduler_file.as_deref()));
    opts.interface = a.net.interface;
    opts.listen_address = a.net.listen_address;
    opts.contact_address = a.net.contact_address;
    opts.scheduler_port = a.scheduler_port;
    opts.nthreads = a.nthreads;
    opts.memory = a.memory.policy(memory_limit);
    opts.local_directory = a.local_directory;
    opts.name = a.name;
    opts.death_timeout = a.death_timeout;
    opts.bind = a.bind;
    opts.resources = a.resources.as_deref().map(util::parse_resources).transpose().map_err(|e| Fail(EXIT_USAGE, e))?.unwrap_or_default();
    opts.lifetime = a.leave.request(false);
    opts.lifetime.validate().map_err(|e| Fail(EXIT_USAGE, e))?;
    let code = taskfarm::mpi::run(&opts, &info, handle.as_ref(), batch, Registry::with_builtins())
        .map_err(|e| Fail(EXIT_USAGE, format!("rank {}: {e}", info.rank)))?;
    drop(handle);
    Ok(code.clamp(0, 255) as u8)
}

fn cmd_topology(a: TopologyArgs) -> Result<u8, Fail> {
    use taskfarm::node::{format_cpu_list, Topology};
    let t = Topology::detect().map_err(|e| Fail(EXIT_USAGE, e))?;
    println!("source: {}", t.source);
    println!("cores: {}", t.cores.len());
    for (i, c) in t.cores.iter().enumerate() {
        println!("  core {i}: CPUs {}", format_cpu_list(c));
    }
    println!("NUMA nodes: {}", t.numa.len());
    for (i, n) in t.numa.iter().enumerate() {
        println!("  node {i}: CPUs {}", format_cpu_list(n));
    }
    println!("allowed for this job: CPUs {}", format_cpu_list(&t.allowed));
    if let Ok(now) = taskfarm::node::current_affinity() {
        println!("this process is bound to: CPUs {}", format_cpu_list(&now));
    }
    println!("plan for {} processes on this node with --bind {}:", a.local_size, a.bind);
    for r in 0..a.local_size.max(1) {
        match t.plan(a.bind, r, a.local_size.max(1)) {
            Some(p) => println!("  local rank {r}: CPUs {} ({} threads)", format_cpu_list(&p), p.len()),
            None => println!("  local rank {r}: not bound"),
        }
    }
    Ok(0)
}

fn cmd_retire(a: RetireArgs) -> Result<u8, Fail> {
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

impl JobArgs {
    /// Job options for `system`, with the scheduler file made absolute (jobs run elsewhere).
    fn options(&self, system: taskfarm::jobqueue::System, scheduler_file: &Path, interface: Option<String>) -> Result<taskfarm::jobqueue::JobOptions, Fail> {
        use taskfarm::jobqueue;
        let usage = |e: String| Fail(EXIT_USAGE, e);
        let sched = std::path::absolute(scheduler_file).map_err(|e| usage(format!("--scheduler-file {}: {e}", scheduler_file.display())))?;
        let mut o = jobqueue::JobOptions::new(system, sched);
        o.cores = self.cores;
        o.processes = self.processes;
        o.memory = self.memory.as_deref().map(parse_job_memory).transpose()?;
        o.queue = self.queue.clone();
        o.account = self.account.clone();
        o.walltime = self.walltime.as_deref().map(jobqueue::parse_walltime).transpose().map_err(|e| usage(format!("--walltime: {e}")))?;
        o.walltime_margin = self.walltime_margin.map(|d| d.as_secs_f64().ceil() as u64);
        o.job_name = self.job_name.clone();
        o.extra_directives = self.job_extra_directive.clone();
        o.skip_directives = self.skip_directive.clone();
        o.prologue = self.prologue.clone();
        o.log_directory = self.log_directory.as_deref().map(std::path::absolute).transpose().map_err(|e| usage(format!("--log-directory: {e}")))?;
        o.interface = interface;
        o.local_directory = self.local_directory.clone();
        o.taskfarm = match &self.taskfarm {
            Some(t) => t.clone(),
            None => std::env::current_exe().map_err(|e| usage(format!("cannot find this executable's path ({e}); give --taskfarm")))?.display().to_string(),
        };
        o.worker_args = self.worker_arg.clone();
        if let Some(t) = &self.template {
            o.template = Some(std::fs::read_to_string(t).map_err(|e| usage(format!("--template {}: {e}", t.display())))?);
        }
        if let (Some(w), Some(m)) = (o.walltime, o.walltime_margin) {
            if m >= w {
                return Err(usage(format!("--walltime-margin ({m} s) must be shorter than --walltime ({w} s)")));
            }
        }
        o.validate().map_err(usage)?;
        Ok(o)
    }
}

/// A job's memory: an absolute size with a unit (no fractions of "the node").
fn parse_job_memory(s: &str) -> Result<u64, Fail> {
    let t = s.trim();
    if t.chars().all(|c| c.is_ascii_digit() || c == '.') || t.eq_ignore_ascii_case("auto") {
        return Err(Fail(EXIT_USAGE, format!("--memory '{s}': give a size with a unit: 16GB (10^9 bytes), 16GiB (2^30 bytes) or 16000M (2^20 bytes)")));
    }
    match util::parse_memory(t, 0) {
        Ok(Some(b)) if b > 0 => Ok(b),
        Ok(_) => Err(Fail(EXIT_USAGE, format!("--memory '{s}' must be positive"))),
        Err(e) => Err(Fail(EXIT_USAGE, format!("--memory: {e}"))),
    }
}

fn cmd_jobqueue(c: JobqueueCommand) -> Result<u8, Fail> {
    use taskfarm::jobqueue::{self, adapt, record::Record};
    match c {
        JobqueueCommand::Script(a) => {
            let path = schedfile::resolve_path(a.file.scheduler_file.as_deref());
            let opts = a.job.options(a.system, &path, a.interface.clone())?;
            print!("{}", opts.render());
            Ok(0)
        }
        JobqueueCommand::Submit(a) => {
            if a.jobs == 0 {
                return Err(Fail(EXIT_USAGE, "--jobs must be at least 1".into()));
            }
            let s = &a.script;
            let path = schedfile::resolve_path(s.file.scheduler_file.as_deref());
            let opts = s.job.options(s.system, &path, s.interface.clone())?;
            let script = adapt::script_path(&opts.scheduler_file, "submit");
            adapt::write_script(&script, &opts.render()).map_err(|e| Fail(EXIT_USAGE, e))?;
            let record = Record::for_scheduler_file(&opts.scheduler_file);
            let mut ids = Vec::new();
            for i in 0..a.jobs {
                match jobqueue::submit(s.system, &script) {
                    Ok(id) => {
                        record.add(s.system.name(), std::slice::from_ref(&id), "submit", opts.processes).map_err(|e| Fail(EXIT_USAGE, e))?;
                        println!("{id}");
                        ids.push(id);
                    }
                    Err(e) => {
                        let done = if i == 0 { String::new() } else { format!(" ({i} of {} submitted: {})", a.jobs, ids.join(" ")) };
                        return Err(Fail(EXIT_TASK_FAILED, format!("{e}{done}; job script: {}", script.display())));
                    }
                }
            }
            eprintln!("taskfarm: submitted {} {} job(s) (script {}; record {})", ids.len(), s.system, script.display(), record.path().display());
            Ok(0)
        }
        JobqueueCommand::List(a) => {
            let (path, record) = job_record(&a.file)?;
            refresh_states(&record)?;
            let jobs: Vec<_> = record.load().map_err(|e| Fail(EXIT_USAGE, e))?.into_iter().filter(|j| a.all || j.ended.is_none()).collect();
            // Workers per job, if the scheduler answers.
            let joined: std::collections::HashMap<String, u32> = (if path.exists() { Client::from_scheduler_file(&path, Duration::from_secs(2)).ok() } else { None })
                .and_then(|mut c| c.status().ok())
                .map(|r| r.workers.iter().fold(std::collections::HashMap::new(), |mut m, w| {
                    *m.entry(w.job.clone()).or_insert(0) += 1;
                    m
                }))
                .unwrap_or_default();
            let now = util::unix_time();
            if a.json {
                let list: Vec<serde_json::Value> = jobs
                    .iter()
                    .map(|j| serde_json::json!({"id": j.id, "system": j.system, "state": j.state, "submitted": j.submitted, "by": j.by,
                        "workers": j.workers, "workers_joined": joined.get(&j.id).copied().unwrap_or(0), "ended": j.ended}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list).expect("serialisable"));
                return Ok(0);
            }
            if jobs.is_empty() {
                eprintln!("taskfarm: no {}jobs recorded in {}", if a.all { "" } else { "live " }, record.path().display());
                return Ok(0);
            }
            println!("{:<16} {:<7} {:<11} {:>8} {:<7} WORKERS", "JOB", "SYSTEM", "STATE", "AGE", "BY");
            for j in &jobs {
                println!("{:<16} {:<7} {:<11} {:>8} {:<7} {}/{}", j.id, j.system, j.state, format_age(now - j.submitted), j.by, joined.get(&j.id).copied().unwrap_or(0), j.workers);
            }
            Ok(0)
        }
        JobqueueCommand::Cancel(a) => {
            let (_, record) = job_record(&a.file)?;
            let jobs = record.load().map_err(|e| Fail(EXIT_USAGE, e))?;
            if let Some(unknown) = a.jobs.iter().find(|id| !jobs.iter().any(|j| &j.id == *id)) {
                return Err(Fail(EXIT_USAGE, format!("job {unknown} is not in {} (see taskfarm jobqueue list --all)", record.path().display())));
            }
            let chosen: Vec<_> = jobs.into_iter().filter(|j| if a.jobs.is_empty() { j.ended.is_none() } else { a.jobs.contains(&j.id) }).collect();
            if chosen.is_empty() {
                eprintln!("taskfarm: no live jobs to cancel");
                return Ok(0);
            }
            for (system, ids) in by_system(&chosen)? {
                jobqueue::cancel(system, &ids).map_err(|e| Fail(EXIT_TASK_FAILED, e))?;
                let states = ids.iter().map(|id| (id.clone(), jobqueue::JobState::Gone("cancelled".into()))).collect();
                record.set_states(&states).map_err(|e| Fail(EXIT_USAGE, e))?;
                eprintln!("taskfarm: cancelled {} job(s): {}", ids.len(), ids.join(" "));
            }
            Ok(0)
        }
    }
}

/// The absolute scheduler file path and the job record beside it.
fn job_record(file: &SchedulerFileArg) -> Result<(PathBuf, taskfarm::jobqueue::record::Record), Fail> {
    let path = std::path::absolute(schedfile::resolve_path(file.scheduler_file.as_deref())).map_err(|e| Fail(EXIT_USAGE, format!("--scheduler-file: {e}")))?;
    let record = taskfarm::jobqueue::record::Record::for_scheduler_file(&path);
    Ok((path, record))
}

/// Recorded jobs' ids grouped by batch system, in the record's order.
fn by_system(jobs: &[taskfarm::jobqueue::record::JobRecord]) -> Result<Vec<(taskfarm::jobqueue::System, Vec<String>)>, Fail> {
    let mut groups: Vec<(taskfarm::jobqueue::System, Vec<String>)> = Vec::new();
    for j in jobs {
        let system = j.system.parse().map_err(|e: String| Fail(EXIT_USAGE, format!("job {} in the record: {e}", j.id)))?;
        match groups.iter_mut().find(|(s, _)| *s == system) {
            Some((_, ids)) => ids.push(j.id.clone()),
            None => groups.push((system, vec![j.id.clone()])),
        }
    }
    Ok(groups)
}

/// Ask the batch system(s) for the states of the recorded live jobs.
fn refresh_states(record: &taskfarm::jobqueue::record::Record) -> Result<(), Fail> {
    let live: Vec<_> = record.load().map_err(|e| Fail(EXIT_USAGE, e))?.into_iter().filter(|j| j.ended.is_none()).collect();
    for (system, ids) in by_system(&live)? {
        match taskfarm::jobqueue::query(system, &ids) {
            Ok(states) => record.set_states(&states).map_err(|e| Fail(EXIT_USAGE, e))?,
            Err(e) => eprintln!("taskfarm: warning: cannot query {system} job states: {e}"),
        }
    }
    Ok(())
}

fn format_age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}
