//! Argument types shared by several commands, and their parsers.

use clap::Args;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use taskfarm::util;
use crate::*;

/// What each worker job asks the batch system for, and how its workers start.
#[derive(Args, Clone)]
pub(crate) struct JobArgs {
    /// Cores per job; the job's worker processes share them.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) cores: u32,
    /// Memory per job, with a unit: 16GB (10^9 bytes), 16GiB (2^30), 16000M (2^20). Directives are written in MiB, rounded down;
    /// each worker gets its share as --memory-limit. [default: no memory request, no worker limit]
    #[arg(long, value_name = "SIZE")]
    pub(crate) memory: Option<String>,
    /// Worker processes per job (threads per worker = cores / processes).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) processes: u32,
    /// Queue (SLURM partition; not for HTCondor, which has none).
    #[arg(long, value_name = "NAME")]
    pub(crate) queue: Option<String>,
    /// Account to charge (SLURM, PBS), project (LSF, SGE) or accounting group (HTCondor).
    #[arg(long, alias = "project", value_name = "NAME")]
    pub(crate) account: Option<String>,
    /// Walltime of each job: HH:MM:SS, D-HH:MM:SS or a duration such as 90m. Workers retire gracefully before it ends
    /// (see --walltime-margin) and, with --adapt, replacement jobs are submitted ahead of time.
    #[arg(long, value_name = "TIME")]
    pub(crate) walltime: Option<String>,
    /// How long before the walltime the workers start retiring [default: 10% of the walltime, between 5 s and 5 min].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) walltime_margin: Option<Duration>,
    /// Job name.
    #[arg(long, default_value = "taskfarm-worker", value_name = "NAME")]
    pub(crate) job_name: String,
    /// An extra directive line, e.g. "--exclusive" or "-l select=1:ncpus=4:mpiprocs=1" (the #SBATCH/#PBS/#BSUB/#$/#CONDOR prefix is added; for HTCondor a submit command such as "requirements = ..."). Repeatable.
    #[arg(long, value_name = "DIRECTIVE")]
    pub(crate) job_extra_directive: Vec<String>,
    /// Leave out generated directive lines containing this text, e.g. "--mem" where the site rejects it. Repeatable.
    #[arg(long, value_name = "TEXT")]
    pub(crate) skip_directive: Vec<String>,
    /// A shell line to run before the workers start, e.g. "module load gcc". Repeatable.
    #[arg(long, value_name = "LINE")]
    pub(crate) prologue: Vec<String>,
    /// Directory for the jobs' output files [default: the batch system's default, usually the submit directory].
    #[arg(long, value_name = "DIR")]
    pub(crate) log_directory: Option<PathBuf>,
    /// Parent of each worker's scratch directory on the compute node, e.g. '$TMPDIR' (expanded in the job).
    #[arg(long, value_name = "DIR")]
    pub(crate) local_directory: Option<String>,
    /// The taskfarm executable the jobs run [default: this executable's absolute path].
    #[arg(long, value_name = "PATH")]
    pub(crate) taskfarm: Option<String>,
    /// Job script template with {{directives}}, {{prologue}}, {{command}} and {{system}} placeholders [default: jobscripts/templates/worker-job.sh, built in].
    #[arg(long, value_name = "FILE")]
    pub(crate) template: Option<PathBuf>,
    /// An extra argument for `taskfarm worker`, e.g. --worker-arg=--resources --worker-arg="GPU=1". Repeatable.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub(crate) worker_arg: Vec<String>,
}

#[derive(Args)]
pub(crate) struct KeysArg {
    /// Keys to compute and print, comma-separated [default: the graph's outputs, i.e. keys nothing depends on].
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    pub(crate) keys: Vec<String>,
}

#[derive(Args)]
pub(crate) struct SchedulerFileArg {
    /// The scheduler file (address and secret of the scheduler) [default: $TASKFARM_SCHEDULER_FILE, else ./taskfarm-scheduler.json].
    #[arg(long, value_name = "FILE")]
    pub(crate) scheduler_file: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct NetArgs {
    /// Listen on and advertise the address of this network interface, e.g. ib0 (the names can differ between login and compute nodes).
    #[arg(long, value_name = "NAME")]
    pub(crate) interface: Option<String>,
    /// Address to listen on, when it differs from the address others should use (e.g. behind NAT).
    #[arg(long, value_name = "IP")]
    pub(crate) listen_address: Option<IpAddr>,
    /// Address to advertise to others (in the scheduler file, or to peers), when it differs from the listening one.
    #[arg(long, value_name = "IP")]
    pub(crate) contact_address: Option<IpAddr>,
}

impl NetArgs {
    /// (listen, contact) addresses from --interface/--listen-address/--contact-address.
    pub(crate) fn resolve(&self) -> Result<(Option<IpAddr>, Option<IpAddr>), Fail> {
        let iface = self.interface.as_deref().map(taskfarm::node::interface_address).transpose().map_err(|e| Fail(EXIT_USAGE, e))?;
        Ok((self.listen_address.or(iface), self.contact_address.or(iface)))
    }
}

/// When a worker leaves gracefully (`taskfarm worker` and `taskfarm mpi`).
#[derive(Args)]
pub(crate) struct LeaveArgs {
    /// Retire gracefully (unique results moved to other workers, then exit 0) this long after starting, e.g. a few minutes less than the job's walltime.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) lifetime: Option<Duration>,
    /// Leave up to this much earlier, at random, so workers started together do not all leave at once
    /// [default: 0 with --lifetime; half the margin when the end comes from the walltime].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) lifetime_stagger: Option<Duration>,
    /// The job's walltime (HH:MM:SS or e.g. 90m), counted from this worker's start: it retires --walltime-margin before the end.
    /// Without --lifetime or --walltime, a `taskfarm worker` inside a SLURM or Torque job asks the batch system for the time left.
    #[arg(long, value_name = "TIME", conflicts_with = "lifetime")]
    pub(crate) walltime: Option<String>,
    /// How long before the walltime to retire [default: 10% of the walltime, between 5 s and 5 min].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) walltime_margin: Option<Duration>,
}

impl LeaveArgs {
    pub(crate) fn request(&self, ask_batch_system: bool) -> taskfarm::worker::lifetime::LifetimeRequest {
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
pub(crate) struct MemoryArgs {
    /// Spill least recently used values to the local directory when values held in memory exceed this fraction of the limit.
    #[arg(long, default_value = "0.6", value_name = "FRACTION", value_parser = parse_fraction)]
    pub(crate) memory_target: Fraction,
    /// Spill when the process's memory exceeds this fraction.
    #[arg(long, default_value = "0.7", value_name = "FRACTION", value_parser = parse_fraction)]
    pub(crate) memory_spill: Fraction,
    /// Start no new tasks (the scheduler sends none) above this fraction.
    #[arg(long, default_value = "0.8", value_name = "FRACTION", value_parser = parse_fraction)]
    pub(crate) memory_pause: Fraction,
    /// Exit above this fraction; the scheduler reschedules the work.
    #[arg(long, default_value = "0.95", value_name = "FRACTION", value_parser = parse_fraction)]
    pub(crate) memory_terminate: Fraction,
}

impl MemoryArgs {
    pub(crate) fn policy(&self, limit: Option<u64>) -> taskfarm::worker::MemoryPolicy {
        taskfarm::worker::MemoryPolicy {
            limit,
            target: self.memory_target.0,
            spill: self.memory_spill.0,
            pause: self.memory_pause.0,
            terminate: self.memory_terminate.0,
        }
    }
}

/// A memory limit this small is almost surely a mistake (a missing unit):
/// say so, but honour it (tests and experiments use tiny limits).
pub(crate) fn warn_tiny_memory_limit(limit: Option<u64>) {
    if let Some(l) = limit.filter(|&l| l < 16 << 20) {
        taskfarm::log_at!(1, "worker", "--memory-limit is only {} ({l} bytes): the worker will spill and pause almost at once; did you mean MB or GB?", taskfarm::util::format_bytes(l));
    }
}

/// A fraction in (0, 1], or none (`off`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fraction(pub(crate) Option<f64>);

pub(crate) fn parse_fraction(s: &str) -> Result<Fraction, String> {
    if matches!(s, "off" | "false" | "none") {
        return Ok(Fraction(None));
    }
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(Fraction(Some(x))),
        _ => Err(format!("'{s}' is not a fraction in (0, 1] or 'off'")),
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    util::parse_duration(s)
}

impl JobArgs {
    /// Job options for `system`, with the scheduler file made absolute (jobs run elsewhere).
    pub(crate) fn options(&self, system: taskfarm::jobqueue::System, scheduler_file: &Path, interface: Option<String>) -> Result<taskfarm::jobqueue::JobOptions, Fail> {
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
pub(crate) fn parse_job_memory(s: &str) -> Result<u64, Fail> {
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

/// How the worker runs Python tasks, and what it sets up first.
#[derive(Args)]
pub(crate) struct PythonArgs {
    /// Python interpreter for Python tasks (one persistent executor process per thread, started on the first Python task) [default: $TASKFARM_PYTHON, else the client's interpreter if that path exists here, else python3].
    #[arg(long, value_name = "PATH")]
    pub(crate) python: Option<PathBuf>,
    /// Import MODULE in every Python executor when it starts (calling its taskfarm_setup() if it has one); repeat for several.
    #[arg(long, value_name = "MODULE")]
    pub(crate) preload: Vec<String>,
    /// Run this shell command once before the worker starts (module loads, staging data to local scratch); the worker does not start if it fails.
    #[arg(long, value_name = "CMD")]
    pub(crate) setup_command: Option<String>,
}

impl PythonArgs {
    /// The settings of the Python executors (the setup command is run by
    /// [`taskfarm::worker::python::run_setup_command`] where a worker starts).
    pub(crate) fn settings(&self) -> Result<std::sync::Arc<taskfarm::worker::PythonSettings>, crate::Fail> {
        for m in &self.preload {
            if m.is_empty() || m.contains(',') || m.contains(char::is_whitespace) {
                return Err(crate::Fail(crate::EXIT_USAGE, format!("--preload {m:?}: give one module name per --preload, e.g. --preload mypackage.setup")));
            }
        }
        Ok(std::sync::Arc::new(taskfarm::worker::PythonSettings::new(self.python.clone(), self.preload.clone())))
    }
}

/// `--insecure-plaintext`, for the scheduler, `taskfarm mpi` and workers
/// given an address.
#[derive(Args, Clone)]
pub(crate) struct EncryptionArg {
    /// Do not encrypt connections after the handshake (which still authenticates both sides): only for a private,
    /// trusted network where the cost matters. The scheduler writes it in its file and every worker and client of the
    /// cluster follows; a worker given an ADDRESS needs it too. Logged as a warning.
    #[arg(long)]
    pub(crate) insecure_plaintext: bool,
}

impl EncryptionArg {
    pub(crate) fn apply(&self) {
        if self.insecure_plaintext {
            taskfarm::seal::set_plaintext(true);
            taskfarm::log_at!(1, "net", "--insecure-plaintext: connections are NOT encrypted; anyone who can capture this network's traffic can read graphs, values and results");
        }
    }
}

#[derive(Args, Clone)]
pub(crate) struct DashboardArgs {
    /// Serve the live dashboard and Prometheus /metrics on HOST:PORT (a port alone means loopback). Only this
    /// address is listened on; every request needs the token in the URL the scheduler logs (`taskfarm status`
    /// shows it too). From a login node: ssh -L 8787:localhost:8787 NODE, then open the URL. When the default
    /// port is taken another is used [default: 127.0.0.1:8787].
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "no_dashboard")]
    pub(crate) dashboard_address: Option<String>,
    /// Serve no dashboard.
    #[arg(long)]
    pub(crate) no_dashboard: bool,
}

impl DashboardArgs {
    pub(crate) fn spec(&self) -> Result<Option<taskfarm::dashboard::DashboardSpec>, Fail> {
        if self.no_dashboard {
            return Ok(None);
        }
        let (text, fallback) = match &self.dashboard_address {
            Some(a) => (a.as_str(), false),
            None => (taskfarm::dashboard::DEFAULT_ADDRESS, true),
        };
        let address = taskfarm::dashboard::parse_address(text).map_err(|e| Fail(EXIT_USAGE, format!("--dashboard-address: {e}")))?;
        Ok(Some(taskfarm::dashboard::DashboardSpec { address, fallback }))
    }
}

#[derive(Args, Clone)]
pub(crate) struct CacheArg {
    /// Keep task results in this result cache, shared by runs, jobs and nodes (joblib Memory's idea for
    /// whole graphs): a task whose result is there is not run, nor is anything only it needed. Keys are
    /// content hashes of what determines a value (function, arguments, dependencies' keys), never key names.
    /// Commands are cached only when marked "cache": true; "cache": false (Python: pure=False) never is.
    /// The directory is created (mode 0700) and must belong to you and be writable by nobody else.
    /// See `taskfarm cache` and docs/campaigns.md [default: no cache].
    #[arg(long, value_name = "DIR")]
    pub(crate) cache: Option<PathBuf>,
}

impl CacheArg {
    pub(crate) fn open(&self) -> Result<Option<taskfarm::cache::Cache>, Fail> {
        self.cache.as_deref().map(|d| taskfarm::cache::Cache::open(d).map_err(|e| Fail(EXIT_USAGE, format!("--cache: {e}")))).transpose()
    }
}

#[derive(Args, Clone)]
pub(crate) struct JournalArg {
    /// Record submitted graphs, finished results and where they are in FILE (append-only, synced in batches,
    /// mode 0600), and resume from it when started again with the same FILE: workers still alive come back
    /// with their values, clients still waiting get their results, finished work is not run again. With
    /// --cache, a new allocation's scheduler resumes even when every worker is new. Not on by default: a
    /// restart should never resume old graphs by surprise. See docs/campaigns.md [default: no journal].
    #[arg(long, value_name = "FILE")]
    pub(crate) journal: Option<PathBuf>,
    /// When resuming from --journal: wait at most this long for the workers it names to come back with their
    /// values before resuming without them (their values are then loaded from the cache or computed again).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration, requires = "journal")]
    pub(crate) reattach_timeout: std::time::Duration,
}
