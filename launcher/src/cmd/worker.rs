//! `taskfarm worker`.

use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use taskfarm::protocol::Role;
use taskfarm::worker::{self, WorkerConfig, WorkerExit};
use taskfarm::{log_at, schedfile, util};
use crate::*;
use crate::args::*;

#[derive(Args)]
pub(crate) struct WorkerArgs {
    /// Scheduler address tcp://HOST:PORT; needs the secret in $TASKFARM_SECRET. Prefer --scheduler-file.
    pub(crate) address: Option<String>,
    #[command(flatten)]
    pub(crate) file: SchedulerFileArg,
    /// Number of threads running tasks [default: the CPUs available to this process].
    #[arg(long, value_name = "T")]
    pub(crate) nthreads: Option<u32>,
    /// Worker name, shown in status and usable in a task's "workers" restriction [default: HOST-PID].
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// Where the worker's scratch directory (cwd of command tasks; removed at exit) goes [default: $TMPDIR or /tmp].
    #[arg(long, value_name = "DIR")]
    pub(crate) local_directory: Option<PathBuf>,
    /// How long to wait for the scheduler (file to appear and answer) before giving up: at start, and when the
    /// scheduler goes away (the worker keeps its values meanwhile, and offers them to a scheduler restarted
    /// with the same --journal).
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) death_timeout: Duration,
    /// Leave when the connected scheduler says nothing for this long (it pings every 5 s): frozen (e.g. SIGSTOP),
    /// overloaded or cut off. Exit status 1.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) scheduler_timeout: Duration,
    /// Write this process's id to FILE (removed at exit).
    #[arg(long, value_name = "FILE")]
    pub(crate) pid_file: Option<PathBuf>,
    /// Abstract resources this worker offers, e.g. "GPU=2 MEM=10e9" (cpus = threads).
    #[arg(long, value_name = "\"NAME=AMOUNT ...\"")]
    pub(crate) resources: Option<String>,
    /// Memory limit of the worker process: 5GB, 5GiB, 5000M, 0.5 (of the node), auto (the node's memory or cgroup limit), 0 (none).
    #[arg(long, default_value = "0", value_name = "SIZE")]
    pub(crate) memory_limit: String,
    #[command(flatten)]
    pub(crate) memory: MemoryArgs,
    #[command(flatten)]
    pub(crate) net: NetArgs,
    #[command(flatten)]
    pub(crate) encryption: EncryptionArg,
    #[command(flatten)]
    pub(crate) leave: LeaveArgs,
    #[command(flatten)]
    pub(crate) python: PythonArgs,
    /// The batch job this worker belongs to (adaptive scaling retires whole jobs) [default: from $SLURM_JOB_ID, $PBS_JOBID, $LSB_JOBID or Grid Engine's $JOB_ID].
    #[arg(long, value_name = "ID")]
    pub(crate) job_id: Option<String>,
}

pub(crate) fn cmd_worker(a: WorkerArgs) -> Result<u8, Fail> {
    a.encryption.apply();
    let leave = a.leave.request(true);
    leave.validate().map_err(|e| Fail(EXIT_USAGE, e))?;
    let nthreads = a.nthreads.unwrap_or_else(available_cpus);
    if nthreads == 0 {
        return Err(Fail(EXIT_USAGE, "--nthreads must be at least 1".into()));
    }
    let lifetime = leave.plan().map_err(|e| Fail(EXIT_USAGE, e))?;
    if a.scheduler_timeout <= taskfarm::protocol::PING_INTERVAL {
        return Err(Fail(EXIT_USAGE, format!("--scheduler-timeout must be longer than the scheduler's ping interval ({} s)", taskfarm::protocol::PING_INTERVAL.as_secs())));
    }
    let _pid = PidFile::create(a.pid_file)?;
    let resources = a.resources.as_deref().map(util::parse_resources).transpose().map_err(|e| Fail(EXIT_USAGE, e))?.unwrap_or_default();
    let memory_limit = util::parse_memory(&a.memory_limit, util::node_memory()).map_err(|e| Fail(EXIT_USAGE, format!("--memory-limit: {e}")))?;
    warn_tiny_memory_limit(memory_limit);
    let (listen_ip, contact_ip) = a.net.resolve()?;
    let python = a.python.settings()?;
    if let Some(cmd) = &a.python.setup_command {
        taskfarm::worker::python::run_setup_command(cmd).map_err(Fail::env)?;
    }
    let reattach: taskfarm::worker::Reattach;
    let (secret, stream) = match &a.address {
        Some(addr) => {
            let secret = std::env::var("TASKFARM_SECRET")
                .ok()
                .and_then(|s| util::unhex(s.trim()))
                .filter(|s| !s.is_empty())
                .ok_or_else(|| Fail(EXIT_USAGE, format!("connecting to {addr} needs the scheduler's secret in $TASKFARM_SECRET (hex); or use --scheduler-file")))?;
            let stream = schedfile::connect_with_retry(addr, &secret, Role::Worker, a.death_timeout)?;
            let (addr, again, wait) = (addr.clone(), secret.clone(), a.death_timeout);
            reattach = std::sync::Arc::new(move || schedfile::connect_with_retry(&addr, &again, Role::Worker, wait).map_err(|e| e.to_string()));
            (secret, stream)
        }
        None => {
            let path = schedfile::resolve_path(a.file.scheduler_file.as_deref());
            let (file, stream) = schedfile::wait_and_connect(&path, a.death_timeout, Role::Worker)?;
            let secret = file.secret_bytes().map_err(Fail::env)?;
            let (again, wait) = (secret.clone(), a.death_timeout);
            reattach = std::sync::Arc::new(move || {
                let (file, link) = schedfile::wait_and_connect(&path, wait, Role::Worker).map_err(|e| e.to_string())?;
                // Values move between workers under the cluster's secret: a
                // scheduler with another one is another cluster.
                if file.secret_bytes().ok().as_deref() != Some(again.as_slice()) {
                    return Err(format!("the scheduler in {} now has another secret: a new cluster, not the one this worker left (start it with the same --journal to resume)", path.display()));
                }
                Ok(link)
            });
            (secret, stream)
        }
    };
    // Until connected, a signal ends the worker at once; from now on the first
    // SIGTERM/SIGINT retires it gracefully and a second one ends it.
    let retire = taskfarm::mpi::retire_on_signals();
    let name = a.name.unwrap_or_else(|| format!("{}-{}", util::hostname(), std::process::id()));
    let mut cfg = WorkerConfig {
        local_directory: taskfarm::node::choose_local_directory(a.local_directory.as_deref()),
        listen_ip,
        contact_ip,
        resources,
        memory: a.memory.policy(memory_limit),
        retire_requests: Some(retire),
        lifetime,
        python,
        scheduler_timeout: a.scheduler_timeout,
        reattach: Some(reattach),
        ..WorkerConfig::new(name, nthreads, secret)
    };
    if let Some(job) = a.job_id {
        cfg.job = job;
    }
    match worker::run(cfg, stream) {
        Ok(WorkerExit::Shutdown(_)) => Ok(0),
        Ok(WorkerExit::SchedulerLost(reason)) => {
            log_at!(1, "worker", "exiting: {reason}");
            Ok(1)
        }
        Ok(WorkerExit::MemoryLimit(_)) => Ok(3),
        Err(e) => Err(Fail::env(e.to_string())),
    }
}

