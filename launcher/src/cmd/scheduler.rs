//! `taskfarm scheduler`.

use clap::Args;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use taskfarm::scheduler::{self, SchedulerConfig, ServerConfig};
use taskfarm::{log_at, schedfile, util};
use crate::*;
use crate::args::*;

#[derive(Args)]
pub(crate) struct SchedulerArgs {
    #[command(flatten)]
    pub(crate) file: SchedulerFileArg,
    /// Address to listen on [default: the --interface address, else this host's address on the default route, else loopback]. Only this address is listened on.
    #[arg(long, value_name = "HOST", conflicts_with_all = ["interface", "listen_address"])]
    pub(crate) host: Option<IpAddr>,
    #[command(flatten)]
    pub(crate) net: NetArgs,
    #[command(flatten)]
    pub(crate) encryption: EncryptionArg,
    #[command(flatten)]
    pub(crate) dashboard: DashboardArgs,
    #[command(flatten)]
    pub(crate) cache: CacheArg,
    #[command(flatten)]
    pub(crate) journal: JournalArg,
    /// Port to listen on; 0 picks a free one (the scheduler file tells clients which).
    #[arg(long, default_value_t = 0, value_name = "P")]
    pub(crate) port: u16,
    /// Exit after being idle (no clients, no tasks) this long, e.g. 30m. [default: never]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) idle_timeout: Option<Duration>,
    /// Write this process's id to FILE (removed at exit).
    #[arg(long, value_name = "FILE")]
    pub(crate) pid_file: Option<PathBuf>,
    /// Consider a worker lost after this long without a message.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) worker_timeout: Duration,
    /// A task that had started on more than N workers that died is marked erred
    /// (tasks only queued on them are run elsewhere).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub(crate) allowed_failures: u32,
    /// Adaptive scaling: submit worker jobs to this batch system (slurm, pbs, torque, lsf, sge, condor) as work queues up, retire idle ones.
    /// Job options (--cores, --memory, --walltime, ...) as for `taskfarm jobqueue submit`.
    #[arg(long, value_name = "SYSTEM")]
    pub(crate) adapt: Option<taskfarm::jobqueue::System>,
    /// With --adapt: never fewer jobs than this.
    #[arg(long, default_value_t = 0, value_name = "N", requires = "adapt")]
    pub(crate) minimum_jobs: u32,
    /// With --adapt: never more jobs than this (jobs near their walltime are replaced ahead of time, briefly exceeding it).
    #[arg(long, default_value_t = 10, value_name = "N", requires = "adapt")]
    pub(crate) maximum_jobs: u32,
    /// With --adapt: submit jobs until the queued work would take at most this long on the workers.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration, requires = "adapt")]
    pub(crate) target_duration: Duration,
    /// With --adapt: how often to check.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_duration, requires = "adapt")]
    pub(crate) adapt_interval: Duration,
    /// With --adapt: retire a job once idle at this many consecutive checks.
    #[arg(long, default_value_t = 3, value_name = "N", requires = "adapt")]
    pub(crate) wait_count: u32,
    /// With --adapt: interface the workers use [default: the scheduler's --interface].
    #[arg(long, value_name = "NAME", requires = "adapt")]
    pub(crate) worker_interface: Option<String>,
    #[command(flatten)]
    pub(crate) job: JobArgs,
}

pub(crate) struct PidFile(pub(crate) Option<PathBuf>);

impl PidFile {
    pub(crate) fn create(path: Option<PathBuf>) -> Result<PidFile, Fail> {
        if let Some(p) = &path {
            std::fs::write(p, format!("{}\n", std::process::id())).map_err(|e| Fail::env(format!("cannot write pid file {}: {e}", p.display())))?;
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

pub(crate) fn cmd_scheduler(a: SchedulerArgs) -> Result<u8, Fail> {
    a.encryption.apply();
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
            cfg.lifetime = opts.earliest_worker_leave().map(|l| l as f64);
            Some((opts, cfg))
        }
        None => None,
    };
    let host = a.host.or(listen).unwrap_or_else(util::default_ip);
    let dashboard = a.dashboard.spec()?;
    let cache = a.cache.open()?;
    let sched = scheduler::start(ServerConfig {
        listen: SocketAddr::new(host, a.port),
        contact: contact.map(|c| c.to_string()),
        secret: util::random_bytes(32),
        scheduler_file: Some(path.clone()),
        job: None,
        idle_timeout: a.idle_timeout,
        state: SchedulerConfig { worker_timeout: a.worker_timeout.as_secs_f64(), allowed_failures: a.allowed_failures, ..Default::default() },
        dashboard,
        cache,
        journal: a.journal.journal.clone(),
        reattach_timeout: a.journal.reattach_timeout,
    })
    .map_err(|e| Fail::env(e.to_string()))?;
    let adapt = match adapt_plan {
        Some((opts, cfg)) => Some(taskfarm::jobqueue::adapt::spawn(sched.controller(), opts, cfg).map_err(|e| {
            sched.stop("adaptive scaling could not start");
            Fail::env(e)
        })?),
        None => None,
    };
    let stop = sched.stopper();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .map_err(|e| Fail::env(format!("cannot install signal handlers: {e}")))?;
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
