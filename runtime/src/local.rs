//! The embedded default: a scheduler and workers in this process, on
//! loopback, with a fresh secret. What `taskfarm run` uses.

use crate::client::{Client, ClientError};
use crate::functions::Registry;
use crate::scheduler::{self, Scheduler, SchedulerConfig, ServerConfig};
use crate::schedfile;
use crate::protocol::Role;
use crate::worker::{self, PythonSettings, WorkerConfig};
use std::sync::Arc;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::thread::JoinHandle;

pub struct LocalCluster {
    scheduler: Option<Scheduler>,
    workers: Vec<JoinHandle<()>>,
    pub address: String,
    /// The dashboard's URL with its token, if one was asked for.
    pub dashboard_url: Option<String>,
    secret: Vec<u8>,
}

impl LocalCluster {
    /// Start a scheduler and `n_workers` workers of `nthreads` threads each.
    pub fn start(n_workers: u32, nthreads: u32, local_directory: PathBuf, registry: Registry) -> std::io::Result<LocalCluster> {
        LocalCluster::start_with(n_workers, nthreads, local_directory, registry, Arc::new(PythonSettings::default()))
    }

    /// [`LocalCluster::start`], with Python executors started as `python` says.
    pub fn start_with(n_workers: u32, nthreads: u32, local_directory: PathBuf, registry: Registry, python: Arc<PythonSettings>) -> std::io::Result<LocalCluster> {
        LocalCluster::start_observed(n_workers, nthreads, local_directory, registry, python, None, None)
    }

    /// [`LocalCluster::start_with`], serving the dashboard where `dashboard`
    /// says, with the result cache `cache`.
    pub fn start_observed(
        n_workers: u32,
        nthreads: u32,
        local_directory: PathBuf,
        registry: Registry,
        python: Arc<PythonSettings>,
        dashboard: Option<crate::dashboard::DashboardSpec>,
        cache: Option<crate::cache::Cache>,
    ) -> std::io::Result<LocalCluster> {
        let secret = crate::util::random_bytes(32);
        let sched = scheduler::start(ServerConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            contact: None,
            secret: secret.clone(),
            scheduler_file: None,
            job: None,
            idle_timeout: None,
            state: SchedulerConfig::default(),
            dashboard,
            cache,
            journal: None,
            reattach_timeout: std::time::Duration::ZERO,
        })?;
        let mut workers = Vec::new();
        for i in 0..n_workers {
            let stream = schedfile::connect(&sched.address, &secret, Role::Worker).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
            let cfg = WorkerConfig {
                local_directory: local_directory.clone(),
                registry: registry.clone(),
                job: String::new(),
                python: python.clone(),
                ..WorkerConfig::new(format!("local-{i}"), nthreads, secret.clone())
            };
            workers.push(std::thread::Builder::new().name(format!("tf-worker-{i}")).spawn(move || {
                if let Err(e) = worker::run(cfg, stream) {
                    crate::log_at!(0, "local", "worker failed: {e}");
                }
            })?);
        }
        let address = sched.address.clone();
        let dashboard_url = sched.dashboard_url.clone();
        Ok(LocalCluster { scheduler: Some(sched), workers, address, dashboard_url, secret })
    }

    /// A client; tasks no worker here can run fail instead of waiting,
    /// since no other worker can ever join.
    pub fn client(&self) -> Result<Client, ClientError> {
        let mut c = Client::connect(&self.address, &self.secret)?;
        c.fail_when_stuck = true;
        Ok(c)
    }

    /// The secret clients and workers authenticate with.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Stop the scheduler and wait for every worker to exit.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(s) = self.scheduler.take() {
            s.stop("local cluster finished");
            s.join();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
