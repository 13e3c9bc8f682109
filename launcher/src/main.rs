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
    /// Show the node's topology (cores, NUMA nodes, allowed CPUs) and the binding plan.
    Topology(TopologyArgs),
    /// List the built-in task functions.
    Functions,
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
    /// A task running on this many workers that died is marked erred.
    #[arg(long, default_value_t = 3, value_name = "N")]
    allowed_failures: u32,
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
    /// Retire gracefully (unique results moved to other workers, then exit 0) this long after starting, e.g. a few minutes less than the job's walltime.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    lifetime: Option<Duration>,
    /// Leave up to this much earlier than --lifetime, at random, so workers started together do not all leave at once.
    #[arg(long, default_value = "0s", value_name = "DURATION", value_parser = parse_duration, requires = "lifetime")]
    lifetime_stagger: Duration,
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
    let keys = if keys.is_empty() { graph.output_keys() } else { keys };
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
    let results = client.compute(&graph, &keys).map_err(|e| match e {
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
    let host = a.host.or(listen).unwrap_or_else(util::default_ip);
    let sched = scheduler::start(ServerConfig {
        listen: SocketAddr::new(host, a.port),
        contact: contact.map(|c| c.to_string()),
        secret: util::random_bytes(32),
        scheduler_file: Some(path),
        idle_timeout: a.idle_timeout,
        state: SchedulerConfig { worker_timeout: a.worker_timeout.as_secs_f64(), allowed_failures: a.allowed_failures, ..Default::default() },
    })
    .map_err(|e| Fail(EXIT_USAGE, e.to_string()))?;
    let stop = sched.stopper();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .map_err(|e| Fail(EXIT_USAGE, format!("cannot install signal handlers: {e}")))?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            stop(&format!("received signal {sig}"));
        }
    });
    sched.join();
    Ok(0)
}

fn parse_resources(s: &str) -> Result<Vec<(String, f64)>, Fail> {
    s.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, amount) = p.split_once('=').ok_or_else(|| Fail(EXIT_USAGE, format!("--resources: '{p}' is not NAME=AMOUNT")))?;
            let x: f64 = amount.parse().map_err(|_| Fail(EXIT_USAGE, format!("--resources: amount '{amount}' of '{name}' is not a number")))?;
            if !(x >= 0.0 && x.is_finite()) {
                return Err(Fail(EXIT_USAGE, format!("--resources: amount of '{name}' must be a non-negative number")));
            }
            Ok((name.to_string(), x))
        })
        .collect()
}

fn cmd_worker(a: WorkerArgs) -> Result<u8, Fail> {
    let _pid = PidFile::create(a.pid_file)?;
    let resources = a.resources.as_deref().map(parse_resources).transpose()?.unwrap_or_default();
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
    let nthreads = a.nthreads.unwrap_or_else(available_cpus);
    if nthreads == 0 {
        return Err(Fail(EXIT_USAGE, "--nthreads must be at least 1".into()));
    }
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
        lifetime: a.lifetime.map(|l| {
            let stagger = a.lifetime_stagger.min(l).as_secs_f64();
            let r = u64::from_le_bytes(util::random_bytes(8).try_into().expect("8 bytes")) as f64 / u64::MAX as f64;
            l - Duration::from_secs_f64(stagger * r)
        }),
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
    let results = client.compute(&graph, &keys).map_err(|e| match e {
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
                    "id": w.id, "name": w.name, "address": w.address, "host": w.host, "pid": w.pid,
                    "nthreads": w.nthreads, "processing": w.processing, "in_memory": w.in_memory,
                    "memory": w.metrics.rss, "stored_bytes": w.metrics.stored_bytes,
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
