//! `taskfarm mpi` and `taskfarm topology`.

use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use taskfarm::{schedfile, util, Registry};
use crate::*;
use crate::args::*;

#[derive(Args)]
pub(crate) struct MpiArgs {
    #[command(flatten)]
    pub(crate) file: SchedulerFileArg,
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
    /// Transport; only tcp is supported.
    #[arg(long, default_value = "tcp", value_parser = ["tcp"])]
    pub(crate) protocol: String,
    /// Threads per worker [default: the CPUs of the worker's core share].
    #[arg(long, value_name = "T")]
    pub(crate) nthreads: Option<u32>,
    /// Memory limit per worker: 5GB, 5GiB, 5000M, a fraction of the node, auto (the node's memory divided among its ranks), 0 (none).
    #[arg(long, default_value = "auto", value_name = "SIZE")]
    pub(crate) memory_limit: String,
    #[command(flatten)]
    pub(crate) memory: MemoryArgs,
    /// Parent of the workers' scratch directories: use node-local disk [default: $TMPDIR, else the job's scratch, else /tmp].
    #[arg(long, value_name = "DIR")]
    pub(crate) local_directory: Option<PathBuf>,
    /// Prefix of worker names; worker names are PREFIX-RANK.
    #[arg(long, default_value = "worker", value_name = "PREFIX")]
    pub(crate) name: String,
    /// Abstract resources each worker offers, e.g. "GPU=1 MEM=10e9" (cpus = threads).
    #[arg(long, value_name = "\"NAME=AMOUNT ...\"")]
    pub(crate) resources: Option<String>,
    #[command(flatten)]
    pub(crate) leave: LeaveArgs,
    #[command(flatten)]
    pub(crate) python: PythonArgs,
    /// Port of the scheduler on rank 0; 0 picks a free one.
    #[arg(long, default_value_t = 0, value_name = "P")]
    pub(crate) scheduler_port: u16,
    /// How long each rank waits for the others (the scheduler file; all workers registering in batch mode) before the job fails.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) death_timeout: Duration,
    /// Pin each rank's threads to a disjoint share of its node: cores, numa, or none (leave as the launcher set it) [default: cores when several ranks share a node].
    #[arg(long, value_name = "POLICY")]
    pub(crate) bind: Option<taskfarm::node::BindPolicy>,
    /// Batch mode: rank 1 runs this command (with TASKFARM_SCHEDULER_FILE set) instead of a worker; when it exits, the cluster shuts down and the job exits with its status.
    #[arg(last = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

#[derive(Args)]
pub(crate) struct TopologyArgs {
    /// Show the plan for this many processes on the node.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) local_size: u32,
    /// Binding policy to plan for: cores, numa or none.
    #[arg(long, default_value = "cores", value_name = "POLICY")]
    pub(crate) bind: taskfarm::node::BindPolicy,
}

pub(crate) fn cmd_mpi(a: MpiArgs) -> Result<u8, Fail> {
    a.encryption.apply();
    let (info, handle) = taskfarm::mpi::discover().map_err(|e| Fail(EXIT_USAGE, e))?;
    let batch = if a.command.is_empty() { None } else { Some(a.command.as_slice()) };
    let per_rank_total = util::node_memory() / info.local_size.unwrap_or(1).max(1) as u64;
    let memory_limit = util::parse_memory(&a.memory_limit, per_rank_total).map_err(|e| Fail(EXIT_USAGE, format!("--memory-limit: {e}")))?;
    warn_tiny_memory_limit(memory_limit);
    let mut opts = taskfarm::mpi::MpiOptions::new(schedfile::resolve_path(a.file.scheduler_file.as_deref()));
    opts.dashboard = a.dashboard.spec()?;
    opts.cache = a.cache.open()?;
    opts.journal = a.journal.journal;
    opts.reattach_timeout = a.journal.reattach_timeout;
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
    opts.python = a.python.settings()?;
    opts.setup_command = a.python.setup_command;
    opts.lifetime.validate().map_err(|e| Fail(EXIT_USAGE, e))?;
    let code = taskfarm::mpi::run(&opts, &info, handle.as_ref(), batch, Registry::with_builtins()).map_err(|e| Fail::from(e.context(format!("rank {}", info.rank))))?;
    // Finalises MPI in the build with the `mpi` feature (a no-op without).
    #[allow(clippy::drop_non_drop)]
    drop(handle);
    Ok(code.clamp(0, 255) as u8)
}

pub(crate) fn cmd_topology(a: TopologyArgs) -> Result<u8, Fail> {
    use taskfarm::node::{format_cpu_list, Topology};
    let t = Topology::detect().map_err(Fail::env)?;
    outln!("source: {}", t.source);
    outln!("cores: {}", t.cores.len());
    for (i, c) in t.cores.iter().enumerate() {
        outln!("  core {i}: CPUs {}", format_cpu_list(c));
    }
    outln!("NUMA nodes: {}", t.numa.len());
    for (i, n) in t.numa.iter().enumerate() {
        outln!("  node {i}: CPUs {}", format_cpu_list(n));
    }
    outln!("allowed for this job: CPUs {}", format_cpu_list(&t.allowed));
    if let Ok(now) = taskfarm::node::current_affinity() {
        outln!("this process is bound to: CPUs {}", format_cpu_list(&now));
    }
    outln!("plan for {} processes on this node with --bind {}:", a.local_size, a.bind);
    for r in 0..a.local_size.max(1) {
        match t.plan(a.bind, r, a.local_size.max(1)) {
            Some(p) => outln!("  local rank {r}: CPUs {} ({} threads)", format_cpu_list(&p), p.len()),
            None => outln!("  local rank {r}: not bound"),
        }
    }
    Ok(0)
}
