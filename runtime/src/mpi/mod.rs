//! Running under an MPI launcher (`mpirun`, `mpiexec`, `srun`): rank 0 is
//! the scheduler, the other ranks are workers, and in batch mode rank 1 runs
//! the client work instead and the whole job ends when it finishes.
//!
//! Ranks are found from the launcher's environment ([`env`]); with the cargo
//! feature `mpi`, also from the MPI library, which must agree, and MPI is
//! used to broadcast the scheduler's address and to synchronise.

pub mod env;

use crate::client::Client;
use crate::functions::Registry;
use crate::node::{self, BindPolicy};
use crate::protocol::Role;
use crate::scheduler::{self, SchedulerConfig, ServerConfig};
use crate::worker::{self, WorkerConfig, WorkerExit};
use crate::error::{environment, usage, Error};
use crate::{log_at, schedfile, util};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use env::RankInfo;

/// Options of `taskfarm mpi` (mirroring dask-mpi's) and of [`initialize`].
#[derive(Clone, Debug)]
pub struct MpiOptions {
    pub scheduler_file: PathBuf,
    /// Rank 0's result cache (`--cache DIR`).
    pub cache: Option<crate::cache::Cache>,
    /// Rank 0's journal (`--journal FILE`), and how long it waits for
    /// the workers it names when it resumes.
    pub journal: Option<PathBuf>,
    pub reattach_timeout: Duration,
    /// Rank 0 serves the dashboard here.
    pub dashboard: Option<crate::dashboard::DashboardSpec>,
    /// Listen on and advertise this interface's address (scheduler and workers).
    pub interface: Option<String>,
    /// Address to listen on, when it differs from the one to advertise.
    pub listen_address: Option<IpAddr>,
    /// Address to advertise.
    pub contact_address: Option<IpAddr>,
    pub scheduler_port: u16,
    /// Threads per worker; default: the size of the worker's core share.
    pub nthreads: Option<u32>,
    /// Memory limit and thresholds per worker.
    pub memory: crate::worker::MemoryPolicy,
    pub local_directory: Option<PathBuf>,
    /// Worker names are `{name}-{rank}`.
    pub name: String,
    /// How long every rank waits for the others (scheduler file, registration).
    pub death_timeout: Duration,
    /// `None`: cores when several ranks share a node, else none.
    pub bind: Option<BindPolicy>,
    /// Resources each worker offers besides its threads (`--resources`).
    pub resources: Vec<(String, f64)>,
    /// When the workers leave gracefully (`--lifetime`, `--walltime`).
    pub lifetime: crate::worker::lifetime::LifetimeRequest,
    /// This launch's identity ([`env::launch_id`]), which its ranks use to
    /// find only their own scheduler; [`MpiOptions::new`] reads it from the
    /// environment.
    pub job: Option<String>,
    /// How the workers start Python executors.
    pub python: std::sync::Arc<crate::worker::PythonSettings>,
    /// Run on each worker rank before its worker starts (`--setup-command`).
    pub setup_command: Option<String>,
}

impl MpiOptions {
    pub fn new(scheduler_file: PathBuf) -> MpiOptions {
        MpiOptions {
            scheduler_file,
            cache: None,
            journal: None,
            reattach_timeout: crate::scheduler::server::REATTACH_TIMEOUT,
            dashboard: None,
            interface: None,
            listen_address: None,
            contact_address: None,
            scheduler_port: 0,
            nthreads: None,
            memory: crate::worker::MemoryPolicy::default(),
            local_directory: None,
            name: "worker".into(),
            death_timeout: Duration::from_secs(60),
            bind: None,
            resources: Vec::new(),
            lifetime: Default::default(),
            job: env::launch_id(&|k| std::env::var(k).ok().filter(|v| !v.is_empty()), &env::hydra_proxy_ancestor),
            python: std::sync::Arc::new(crate::worker::PythonSettings::default()),
            setup_command: None,
        }
    }

    /// The names the worker ranks of a batch-mode job of `size` ranks register with.
    pub fn worker_names(&self, size: u32) -> Vec<String> {
        (2..size).map(|r| format!("{}-{r}", self.name)).collect()
    }

    /// The scheduler file this launch's ranks read: the job's own copy when
    /// the launch is known, else the named file.
    pub fn rank_file(&self) -> PathBuf {
        match &self.job {
            Some(job) => schedfile::job_path(&self.scheduler_file, job),
            None => self.scheduler_file.clone(),
        }
    }
}

/// What this rank does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankRole {
    Scheduler,
    Client,
    Worker,
}

/// Rank 0 schedules; in batch mode rank 1 is the client; the rest work.
pub fn role_of(rank: u32, batch: bool) -> RankRole {
    match rank {
        0 => RankRole::Scheduler,
        1 if batch => RankRole::Client,
        _ => RankRole::Worker,
    }
}

/// The smallest job that makes sense: scheduler + a worker (+ the client).
pub fn check_size(size: u32, batch: bool) -> Result<(), String> {
    let need = if batch { 3 } else { 2 };
    if size < need {
        return Err(format!(
            "taskfarm mpi needs at least {need} processes ({}), got {size}: run it under mpirun -np N, mpiexec -n N or srun with N >= {need}",
            if batch { "a scheduler, the client command and a worker" } else { "a scheduler and a worker" }
        ));
    }
    Ok(())
}

/// Find this process's rank: from the launcher's environment, checked
/// against the MPI library when built with the `mpi` feature.
pub fn discover() -> Result<(RankInfo, Option<MpiHandle>), String> {
    let from_env = env::detect(&|k| std::env::var(k).ok())?;
    #[cfg(feature = "mpi")]
    {
        let handle = MpiHandle::init()?;
        let (rank, size) = (handle.rank(), handle.size());
        let info = match from_env {
            Some(e) if e.size != size || e.rank != rank => {
                return Err(format!(
                    "the launcher ({}) says rank {} of {}, but the MPI library says rank {rank} of {size}: \
                     taskfarm was built against a different MPI than the one launching it (rebuild with the \
                     matching MPI, or start it with that MPI's mpirun)",
                    e.launcher, e.rank, e.size
                ))
            }
            Some(e) => e,
            None if size > 1 => RankInfo { rank, size, local_rank: None, local_size: None, launcher: "MPI" },
            None => return Err(not_launched()),
        };
        Ok((info, Some(handle)))
    }
    #[cfg(not(feature = "mpi"))]
    {
        match from_env {
            Some(e) => Ok((e, None)),
            None => Err(not_launched()),
        }
    }
}

fn not_launched() -> String {
    "not started by an MPI launcher (no rank in the environment): run `mpirun -np N taskfarm mpi ...`, `mpiexec -n N ...` or `srun -n N ...`".into()
}

/// The MPI library, when built with the `mpi` feature.
#[cfg(feature = "mpi")]
pub struct MpiHandle {
    universe: mpi::environment::Universe,
}

#[cfg(not(feature = "mpi"))]
pub struct MpiHandle {
    _private: (),
}

#[cfg(feature = "mpi")]
impl MpiHandle {
    fn init() -> Result<MpiHandle, String> {
        let (universe, _level) = mpi::initialize_with_threading(mpi::Threading::Funneled).ok_or("MPI was already initialised")?;
        Ok(MpiHandle { universe })
    }
    fn rank(&self) -> u32 {
        use mpi::topology::Communicator;
        self.universe.world().rank() as u32
    }
    fn size(&self) -> u32 {
        use mpi::topology::Communicator;
        self.universe.world().size() as u32
    }
    /// Rank 0's bytes, on every rank.
    fn broadcast(&self, data: Option<Vec<u8>>) -> Vec<u8> {
        use mpi::collective::Root;
        use mpi::topology::Communicator;
        let world = self.universe.world();
        let root = world.process_at_rank(0);
        let mut len = data.as_ref().map(|d| d.len() as u64).unwrap_or(0);
        root.broadcast_into(&mut len);
        let mut buf = data.unwrap_or_else(|| vec![0u8; len as usize]);
        root.broadcast_into(&mut buf[..]);
        buf
    }
    pub fn library_version(&self) -> String {
        mpi::environment::library_version().unwrap_or_default().trim_end_matches('\0').lines().next().unwrap_or("").to_string()
    }
}

/// Pin this process to its share of the node (before any thread starts, so
/// every thread inherits it); returns the share.
pub fn bind(policy: Option<BindPolicy>, info: &RankInfo) -> Result<Option<Vec<u32>>, String> {
    let (Some(lr), Some(ls)) = (info.local_rank, info.local_size) else {
        if matches!(policy, Some(BindPolicy::Cores | BindPolicy::Numa)) {
            log_at!(1, "mpi", "the launcher does not say which rank this is on its node: cannot bind (--bind ignored)");
        }
        return Ok(None);
    };
    let asked = policy.is_some();
    let policy = policy.unwrap_or(if ls > 1 { BindPolicy::Cores } else { BindPolicy::None });
    if policy == BindPolicy::None {
        return Ok(None);
    }
    let topo = node::Topology::detect()?;
    let Some(share) = topo.plan(policy, lr, ls) else { return Ok(None) };
    let before = node::current_affinity().map(|a| node::format_cpu_list(&a)).unwrap_or_default();
    if let Err(e) = node::bind_process(&share) {
        let msg = format!("cannot bind to CPUs {} (allowed: {before}): {e}", node::format_cpu_list(&share));
        if asked {
            return Err(format!("{msg}; --bind {policy} was asked for (use --bind none to run unbound)"));
        }
        log_at!(1, "mpi", "rank {}: {msg}; running unbound", info.rank);
        return Ok(None);
    }
    log_at!(
        2,
        "mpi",
        "rank {} (local {lr} of {ls}) bound to CPUs {} (was {before}; topology from {})",
        info.rank,
        node::format_cpu_list(&share),
        topo.source
    );
    Ok(Some(share))
}

/// Addresses to listen on and to advertise.
fn addresses(opts: &MpiOptions) -> Result<(Option<IpAddr>, Option<IpAddr>), String> {
    let iface = opts.interface.as_deref().map(node::interface_address).transpose()?;
    let listen = opts.listen_address.or(iface);
    let contact = opts.contact_address.or(iface);
    Ok((listen, contact))
}

/// Run this rank's part. `batch` is the client command (argv) for batch
/// mode. Returns the process exit status.
pub fn run(opts: &MpiOptions, info: &RankInfo, handle: Option<&MpiHandle>, batch: Option<&[String]>, registry: Registry) -> Result<i32, Error> {
    check_size(info.size, batch.is_some()).map_err(usage)?;
    let share = bind(opts.bind, info).map_err(environment)?;
    let (listen, contact) = addresses(opts).map_err(usage)?;
    let role = role_of(info.rank, batch.is_some());
    log_at!(2, "mpi", "rank {} of {} ({}, launch {}): {:?}", info.rank, info.size, info.launcher, opts.job.as_deref().unwrap_or("unknown"), role);
    if opts.job.is_none() && info.rank == 0 {
        log_at!(
            1,
            "mpi",
            "the launcher's environment does not identify this launch: give each concurrent job its own --scheduler-file, \
             or ranks of another job started at the same time on the same path may join this one"
        );
    }
    exit_when_launcher_dies(info.rank, opts);
    match role {
        RankRole::Scheduler => {
            crate::alloc::small_blocks_from_mimalloc();
            run_scheduler(opts, listen, contact, handle).map_err(environment)
        }
        RankRole::Client => {
            crate::alloc::small_blocks_from_mimalloc();
            let (mut client, _) = connect_client(opts, handle).map_err(environment)?;
            wait_for_workers(&mut client, &opts.worker_names(info.size), opts.death_timeout).map_err(environment)?;
            let code = run_command(batch.expect("client role only in batch mode"), &opts.rank_file(), opts.job.as_deref()).map_err(usage)?;
            log_at!(2, "mpi", "batch command exited with status {code}; shutting the cluster down");
            let _ = client.shutdown();
            Ok(code)
        }
        RankRole::Worker => {
            if let Some(cmd) = &opts.setup_command {
                crate::worker::python::run_setup_command(cmd).map_err(environment)?;
            }
            let (file_secret, stream) = connect_worker(opts, handle).map_err(environment)?;
            let retire = retire_on_signals();
            let nthreads = opts.nthreads.unwrap_or_else(|| share.as_ref().map(|s| s.len() as u32).unwrap_or_else(cpus)).max(1);
            let cfg = WorkerConfig {
                local_directory: node::choose_local_directory(opts.local_directory.as_deref()),
                listen_ip: listen,
                contact_ip: contact,
                resources: opts.resources.clone(),
                registry,
                memory: opts.memory.clone(),
                retire_requests: Some(retire),
                lifetime: opts.lifetime.plan().map_err(usage)?,
                python: opts.python.clone(),
                ..WorkerConfig::new(format!("{}-{}", opts.name, info.rank), nthreads, file_secret)
            };
            match worker::run(cfg, stream).map_err(|e| environment(e.to_string()))? {
                WorkerExit::Shutdown(_) => Ok(0),
                WorkerExit::SchedulerLost(reason) => {
                    log_at!(1, "mpi", "rank {}: {reason}; exiting", info.rank);
                    Ok(1)
                }
                WorkerExit::MemoryLimit(_) => Ok(3),
            }
        }
    }
}

fn cpus() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

fn run_scheduler(opts: &MpiOptions, listen: Option<IpAddr>, contact: Option<IpAddr>, handle: Option<&MpiHandle>) -> Result<i32, String> {
    let host = listen.unwrap_or_else(util::default_ip);
    let secret = util::random_bytes(32);
    let signals = termination_signals();
    let sched = scheduler::start(ServerConfig {
        listen: SocketAddr::new(host, opts.scheduler_port),
        contact: contact.map(|c| c.to_string()),
        secret: secret.clone(),
        scheduler_file: Some(opts.scheduler_file.clone()),
        job: opts.job.clone(),
        idle_timeout: None,
        state: SchedulerConfig::default(),
        dashboard: opts.dashboard.clone(),
        cache: opts.cache.clone(),
        journal: opts.journal.clone(),
        reattach_timeout: opts.reattach_timeout,
    })
    .map_err(|e| e.to_string())?;
    // A scheduler resuming from its journal keeps the cluster's secret.
    let secret = sched.secret.clone();
    if let Some(h) = handle {
        share_address(h, Some((&sched.address, &secret)));
    }
    let stop = sched.stopper();
    std::thread::spawn(move || {
        if let Ok(sig) = signals.recv() {
            stop(&format!("received signal {sig}"));
        }
    });
    sched.join();
    Ok(0)
}

/// With MPI: rank 0 sends the scheduler's address and secret to every rank.
#[cfg(feature = "mpi")]
fn share_address(h: &MpiHandle, mine: Option<(&str, &[u8])>) -> Option<(String, Vec<u8>)> {
    let payload = mine.map(|(a, s)| format!("{a} {}", util::hex(s)).into_bytes());
    let got = String::from_utf8(h.broadcast(payload)).ok()?;
    let (addr, secret) = got.split_once(' ')?;
    Some((addr.to_string(), util::unhex(secret)?))
}

#[cfg(not(feature = "mpi"))]
fn share_address(_h: &MpiHandle, _mine: Option<(&str, &[u8])>) -> Option<(String, Vec<u8>)> {
    None
}

/// Within one job the scheduler file must be this job's. With the launch
/// known, the job's own copy is read and its `job` must match. Without it, a
/// file written well before this process started, or one whose scheduler
/// rejects our secret, is a leftover from an earlier job; keep waiting for ours.
fn job_file_policy(opts: &MpiOptions) -> schedfile::WaitPolicy {
    match &opts.job {
        Some(job) => schedfile::WaitPolicy { not_before: None, auth_failure_is_stale: true, job: Some(job.clone()) },
        None => schedfile::WaitPolicy { not_before: Some(process_start_time() - 30.0), auth_failure_is_stale: true, job: None },
    }
}

/// When this process started (Unix time), from /proc.
fn process_start_time() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19).and_then(|v| v.parse::<f64>().ok())));
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    match (ticks, boot) {
        (Some(t), Some(b)) if hz > 0.0 => b + t / hz,
        _ => util::unix_time(),
    }
}

fn connect_worker(opts: &MpiOptions, handle: Option<&MpiHandle>) -> Result<(Vec<u8>, crate::seal::Link), String> {
    if let Some((addr, secret)) = handle.and_then(|h| share_address(h, None)) {
        let s = schedfile::connect(&addr, &secret, Role::Worker).map_err(|e| format!("cannot reach the scheduler at {addr}: {e:?}"))?;
        return Ok((secret, s));
    }
    let (file, stream) = schedfile::wait_and_connect_with(&opts.rank_file(), opts.death_timeout, Role::Worker, &job_file_policy(opts)).map_err(|e| e.to_string())?;
    Ok((file.secret_bytes()?, stream))
}

fn connect_client(opts: &MpiOptions, handle: Option<&MpiHandle>) -> Result<(Client, Vec<u8>), String> {
    if let Some((addr, secret)) = handle.and_then(|h| share_address(h, None)) {
        return Ok((Client::connect(&addr, &secret).map_err(|e| e.to_string())?, secret));
    }
    let (file, stream) = schedfile::wait_and_connect_with(&opts.rank_file(), opts.death_timeout, Role::Client, &job_file_policy(opts)).map_err(|e| e.to_string())?;
    let secret = file.secret_bytes()?;
    let client = Client::from_connected(stream, &file.address, &secret).map_err(|e| e.to_string())?;
    Ok((client, secret))
}

/// Wait (bounded) until the workers of this job's ranks (`names`) have
/// registered; other workers that joined (e.g. `taskfarm worker` started by
/// hand) do not count.
fn wait_for_workers(client: &mut Client, names: &[String], timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        let status = client.status().map_err(|e| e.to_string())?;
        let have = names.iter().filter(|n| status.workers.iter().any(|w| &w.name == *n)).count();
        if have >= names.len() {
            log_at!(2, "mpi", "all {} workers registered after {:.2} s", names.len(), start.elapsed().as_secs_f64());
            return Ok(());
        }
        if start.elapsed() >= timeout {
            let _ = client.shutdown();
            let missing: Vec<&str> = names.iter().filter(|n| !status.workers.iter().any(|w| &w.name == *n)).map(String::as_str).collect();
            return Err(format!(
                "only {have} of {} workers registered within {:.0} s (--death-timeout; missing: {}): a rank failed to start or cannot reach the scheduler; see its log",
                names.len(),
                timeout.as_secs_f64(),
                missing.join(", ")
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Run the batch command with the scheduler file in its environment;
/// returns its exit status (128 + signal if killed).
/// With the launch known, that is the job's own copy of the file, and
/// [`schedfile::JOB_ENV`] makes clients given the shared path prefer it.
fn run_command(argv: &[String], scheduler_file: &std::path::Path, job: Option<&str>) -> Result<i32, String> {
    let (program, args) = argv.split_first().ok_or("no command given after --")?;
    let mut command = std::process::Command::new(program);
    if let Some(job) = job {
        command.env(schedfile::JOB_ENV, job);
    }
    let mut child = command
        .args(args)
        .env("TASKFARM_SCHEDULER_FILE", scheduler_file)
        .spawn()
        .map_err(|e| format!("cannot start the batch command '{program}': {e}"))?;
    BATCH_COMMAND.store(child.id(), std::sync::atomic::Ordering::SeqCst);
    let status = child.wait().map_err(|e| format!("cannot wait for the batch command '{program}': {e}"))?;
    BATCH_COMMAND.store(0, std::sync::atomic::Ordering::SeqCst);
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The batch command rank 1 runs (0: none), for [`exit_when_launcher_dies`].
static BATCH_COMMAND: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A rank whose launcher is killed (`kill -9 mpirun`, a lost node daemon)
/// is reparented: its parent process changes. Then nothing will ever stop
/// it, so it stops itself within a second: the batch command is ended, rank
/// 0's scheduler files are removed, and the process exits with status 1.
fn exit_when_launcher_dies(rank: u32, opts: &MpiOptions) {
    // SAFETY: getppid has no preconditions and cannot fail.
    let launcher = unsafe { libc::getppid() };
    if launcher <= 1 {
        return; // started by init: nothing to watch
    }
    let files: Vec<PathBuf> = if rank == 0 { vec![opts.scheduler_file.clone(), opts.rank_file()] } else { Vec::new() };
    let _ = std::thread::Builder::new().name("tf-launcher-watch".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_millis(250));
        // SAFETY: as above.
        if unsafe { libc::getppid() } == launcher {
            continue;
        }
        log_at!(0, "mpi", "rank {rank}: the launcher (pid {launcher}) is gone; exiting");
        let child = BATCH_COMMAND.load(std::sync::atomic::Ordering::SeqCst);
        if child != 0 {
            // SAFETY: kill with a pid we started; at worst ESRCH.
            unsafe { libc::kill(child as i32, libc::SIGTERM) };
        }
        for f in &files {
            if let Ok(file) = schedfile::SchedulerFile::read(f) {
                if file.pid == std::process::id() {
                    let _ = std::fs::remove_file(f);
                }
            }
        }
        std::process::exit(1);
    });
}

/// SIGINT and SIGTERM, reported on the returned channel (process-wide
/// handlers, so it works whatever threads a library such as MPI started).
pub fn termination_signals() -> crossbeam_channel::Receiver<i32> {
    signals_channel(&[signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
}

fn signals_channel(which: &[i32]) -> crossbeam_channel::Receiver<i32> {
    let (tx, rx) = crossbeam_channel::unbounded();
    match signal_hook::iterator::Signals::new(which) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for sig in signals.forever() {
                    if tx.send(sig).is_err() {
                        return;
                    }
                }
            });
        }
        Err(e) => log_at!(1, "mpi", "cannot install signal handlers: {e}"),
    }
    rx
}

/// First SIGINT, SIGTERM, SIGUSR1 or SIGUSR2 (LSF's signal at a job's run
/// limit): ask to retire gracefully (on the returned channel). More SIGTERM/SIGUSR1 are ignored while retiring
/// (batch systems often signal both the job's shell, which passes it on, and
/// the worker itself; SIGKILL follows their grace period anyway); a second
/// SIGINT (Ctrl-C twice) leaves at once.
pub fn retire_on_signals() -> crossbeam_channel::Receiver<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let signals = signals_channel(&[SIGINT, SIGTERM, SIGUSR1, SIGUSR2]);
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        if let Ok(sig) = signals.recv() {
            log_at!(2, "worker", "signal {sig}: retiring gracefully");
            let _ = tx.send(());
        }
        for sig in signals.iter() {
            if sig == SIGINT {
                log_at!(1, "worker", "second SIGINT: leaving at once");
                std::process::exit(1);
            }
            log_at!(2, "worker", "signal {sig} while retiring: already retiring");
        }
    });
    rx
}

/// The client half of the SPMD pattern, returned by [`initialize`] on rank 1.
/// Dropping it shuts the whole cluster down.
pub struct MpiClient {
    client: Option<Client>,
    pub info: RankInfo,
    _mpi: Option<MpiHandle>,
}

impl std::ops::Deref for MpiClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for MpiClient {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until drop")
    }
}

impl Drop for MpiClient {
    fn drop(&mut self) {
        if let Some(mut c) = self.client.take() {
            let _ = c.shutdown();
        }
    }
}

/// For Rust programs started under mpirun (like `dask_mpi.initialize`):
/// rank 0 serves as the scheduler and ranks >= 2 as workers with
/// `registry`'s functions; those ranks never return (the process exits when
/// the cluster shuts down). On rank 1 it returns a client for the rest of
/// `main`, once every worker has registered; dropping it shuts the cluster
/// down.
pub fn initialize(opts: MpiOptions, registry: Registry) -> Result<MpiClient, Error> {
    let (info, handle) = discover().map_err(usage)?;
    check_size(info.size, true).map_err(usage)?;
    match role_of(info.rank, true) {
        RankRole::Client => {
            bind(opts.bind, &info).map_err(environment)?;
            let (mut client, _) = connect_client(&opts, handle.as_ref()).map_err(environment)?;
            wait_for_workers(&mut client, &opts.worker_names(info.size), opts.death_timeout).map_err(environment)?;
            Ok(MpiClient { client: Some(client), info, _mpi: handle })
        }
        _ => {
            let code = match run(&opts, &info, handle.as_ref(), Some(&[]), registry) {
                Ok(c) => c,
                Err(e) => {
                    log_at!(0, "mpi", "rank {}: {e}", info.rank);
                    e.exit_code() as i32
                }
            };
            // Finalises MPI in the build with the `mpi` feature (a no-op without).
            #[allow(clippy::drop_non_drop)]
            drop(handle);
            std::process::exit(code)
        }
    }
}
