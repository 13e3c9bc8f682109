//! Adaptive scaling: the scheduler submits worker jobs when queued work
//! exceeds what its workers finish within a target duration, and retires
//! idle jobs after several consecutive checks — always a whole job.
//!
//! [`Adaptor`] is a pure state machine (observations in, actions out,
//! tested without IO); [`spawn`] drives it with the scheduler's
//! [`Controller`] and the batch system's commands.

use super::record::Record;
use super::{JobOptions, JobState, System};
use crate::log_at;
use crate::scheduler::Controller;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct AdaptConfig {
    pub minimum_jobs: u32,
    pub maximum_jobs: u32,
    /// How often to check.
    pub interval: Duration,
    /// Submit jobs until the queued work takes at most this long (seconds)
    /// on the workers (Dask's default: 5 s).
    pub target_duration: f64,
    /// A job is retired after being idle at this many consecutive checks.
    pub wait_count: u32,
    /// Threads of one job (all its workers).
    pub threads_per_job: u32,
    /// How long a job's workers live (walltime minus margin), seconds; jobs
    /// near their end are replaced ahead of time.
    pub lifetime: Option<f64>,
    /// First and longest pause after a failed submission or a job that
    /// ended without any worker joining.
    pub backoff_min: f64,
    pub backoff_max: f64,
}

impl AdaptConfig {
    pub fn new(minimum_jobs: u32, maximum_jobs: u32, threads_per_job: u32) -> AdaptConfig {
        AdaptConfig {
            minimum_jobs,
            maximum_jobs,
            interval: Duration::from_secs(1),
            target_duration: 5.0,
            wait_count: 3,
            threads_per_job: threads_per_job.max(1),
            lifetime: None,
            backoff_min: 10.0,
            backoff_max: 300.0,
        }
    }
}

/// A worker as the adaptor sees it.
#[derive(Clone, Debug)]
pub struct WorkerView {
    pub name: String,
    pub job: String,
    pub processing: u32,
    pub in_memory: u64,
}

/// One check's view of the world.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// Seconds (any monotonic origin).
    pub now: f64,
    /// Tasks not finished yet (waiting, queued, no-worker, processing).
    pub remaining_tasks: u64,
    /// Mean task duration so far, seconds (0: none finished yet).
    pub mean_task: f64,
    pub workers: Vec<WorkerView>,
    /// The batch system's states of our jobs; `None` if the query failed.
    pub states: Option<HashMap<String, JobState>>,
    /// The batch system's account of why jobs ended (see
    /// [`Adaptor::ended_early`]), by job id.
    pub reasons: HashMap<String, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Submit this many jobs.
    Submit(u32),
    /// Retire every worker of this job.
    Retire { job: String, workers: Vec<String> },
    /// Cancel these jobs (pending ones no longer needed, or retired ones).
    Cancel(Vec<String>),
}

#[derive(Debug)]
struct Job {
    id: String,
    submitted: f64,
    first_worker: Option<f64>,
    idle_checks: u32,
    retiring_since: Option<f64>,
    cancelled: bool,
    state: Option<JobState>,
    warned_pending: bool,
}

/// Assumed task duration before any task has finished (Dask uses 0.5 s).
const UNKNOWN_TASK_SECONDS: f64 = 0.5;
/// A retired job still running after this long is cancelled.
const RETIRE_GRACE: f64 = 180.0;
/// Pending this long: say so once.
const PENDING_WARNING: f64 = 300.0;

pub struct Adaptor {
    cfg: AdaptConfig,
    jobs: Vec<Job>,
    backoff: f64,
    backoff_until: f64,
    /// Mean seconds from submission to the first worker joining.
    start_latency: Option<f64>,
    logs: Vec<(u8, String)>,
}

impl Adaptor {
    pub fn new(cfg: AdaptConfig) -> Adaptor {
        Adaptor { cfg, jobs: Vec::new(), backoff: 0.0, backoff_until: f64::NEG_INFINITY, start_latency: None, logs: Vec::new() }
    }

    /// Jobs not known to be gone.
    pub fn live_jobs(&self) -> Vec<String> {
        self.jobs.iter().map(|j| j.id.clone()).collect()
    }

    /// Jobs that `states` shows gone although none of their workers ever
    /// joined and taskfarm did not cancel them: the batch system's reason
    /// is worth asking for (into [`Observation::reasons`]).
    pub fn ended_early(&self, states: &HashMap<String, JobState>) -> Vec<String> {
        self.jobs.iter().filter(|j| j.first_worker.is_none() && !j.cancelled && states.get(&j.id).is_some_and(JobState::is_gone)).map(|j| j.id.clone()).collect()
    }

    /// Log lines (level, text) since the last call.
    pub fn take_logs(&mut self) -> Vec<(u8, String)> {
        std::mem::take(&mut self.logs)
    }

    pub fn submitted(&mut self, id: String, now: f64) {
        self.jobs.push(Job { id, submitted: now, first_worker: None, idle_checks: 0, retiring_since: None, cancelled: false, state: None, warned_pending: false });
    }

    pub fn submit_failed(&mut self, error: &str, now: f64) {
        self.back_off(now);
        self.logs.push((1, format!("cannot submit a worker job: {error}; next attempt in {:.0} s", self.backoff)));
    }

    fn back_off(&mut self, now: f64) {
        self.backoff = (self.backoff * 2.0).clamp(self.cfg.backoff_min, self.cfg.backoff_max);
        self.backoff_until = now + self.backoff;
    }

    /// How many jobs the work calls for.
    pub fn target(&self, obs: &Observation) -> u32 {
        let (min, max) = (self.cfg.minimum_jobs, self.cfg.maximum_jobs.max(self.cfg.minimum_jobs));
        if obs.remaining_tasks == 0 {
            return min;
        }
        let per_task = if obs.mean_task > 0.0 { obs.mean_task } else { UNKNOWN_TASK_SECONDS };
        let work = obs.remaining_tasks as f64 * per_task;
        // Threads to finish the work within the target duration, but never
        // more threads than there are tasks.
        let threads = (work / self.cfg.target_duration).ceil().min(obs.remaining_tasks as f64).max(1.0);
        let jobs = (threads / self.cfg.threads_per_job as f64).ceil() as u32;
        jobs.clamp(min.max(1), max)
    }

    /// Seconds before a job's end at which it stops counting and a
    /// replacement is submitted.
    fn lead(&self) -> f64 {
        let lead = (2.0 * self.start_latency.unwrap_or(5.0)).max(2.0 * self.cfg.interval.as_secs_f64()).max(10.0);
        match self.cfg.lifetime {
            Some(l) => lead.min(l / 2.0),
            None => lead,
        }
    }

    pub fn step(&mut self, obs: &Observation) -> Vec<Action> {
        let mut per_job: PerJob = HashMap::new();
        for w in &obs.workers {
            if !w.job.is_empty() {
                per_job.entry(w.job.as_str()).or_default().push(w);
            }
        }
        self.refresh_jobs(obs, &per_job);
        let mut to_cancel = self.finished_retirements(obs.now, &per_job);
        let mut actions = self.match_target(obs, &per_job, &mut to_cancel);
        if !to_cancel.is_empty() {
            actions.push(Action::Cancel(to_cancel));
        }
        actions
    }

    /// Step 1: bring each job up to date; drop the ones that are gone.
    fn refresh_jobs(&mut self, obs: &Observation, per_job: &PerJob) {
        let now = obs.now;
        let mut gone_early = Vec::new();
        let mut latency_samples = Vec::new();
        for j in &mut self.jobs {
            if let Some(states) = &obs.states {
                j.state = states.get(&j.id).cloned().or(j.state.take());
            }
            let workers = per_job.get(j.id.as_str()).map(|v| v.as_slice()).unwrap_or(&[]);
            if !workers.is_empty() && j.first_worker.is_none() {
                j.first_worker = Some(now);
                latency_samples.push(now - j.submitted);
            }
            let idle = !workers.is_empty() && workers.iter().all(|w| w.processing == 0);
            j.idle_checks = if idle { j.idle_checks + 1 } else { 0 };
            if j.first_worker.is_none() && !j.cancelled && !j.warned_pending && now - j.submitted >= PENDING_WARNING {
                j.warned_pending = true;
                self.logs.push((1, format!("worker job {} has been pending for {:.0} min; ask the batch system why (e.g. squeue -j {} -o %R)", j.id, (now - j.submitted) / 60.0, j.id)));
            }
            if matches!(j.state, Some(JobState::Gone(_))) && j.first_worker.is_none() && !j.cancelled {
                gone_early.push((j.id.clone(), j.state.as_ref().map(|s| s.code().to_string()).unwrap_or_default()));
            }
        }
        for s in latency_samples {
            self.start_latency = Some(match self.start_latency {
                Some(l) => 0.7 * l + 0.3 * s,
                None => s,
            });
            self.backoff = 0.0;
        }
        for (id, state) in &gone_early {
            let reason = obs.reasons.get(id).map(|r| format!(" ({r})")).unwrap_or_default();
            self.logs.push((1, format!("worker job {id} ended ({state}) before any of its workers joined{reason}; check its output file and the job script")));
        }
        if !gone_early.is_empty() {
            self.back_off(now);
            self.logs.push((1, format!("no new worker jobs for {:.0} s", self.backoff)));
        }
        self.jobs.retain(|j| !matches!(j.state, Some(JobState::Gone(_))));

    }

    /// Step 2: retired jobs whose workers have all left (or that overstay) are
    /// cancelled: their ids.
    fn finished_retirements(&mut self, now: f64, per_job: &PerJob) -> Vec<String> {
        let mut to_cancel = Vec::new();
        for j in &mut self.jobs {
            if j.cancelled {
                continue;
            }
            let nworkers = per_job.get(j.id.as_str()).map_or(0, |v| v.len());
            if let Some(since) = j.retiring_since {
                if nworkers == 0 || now - since >= RETIRE_GRACE {
                    j.cancelled = true;
                    to_cancel.push(j.id.clone());
                }
            }
        }

        to_cancel
    }

    /// Step 3: compare what is there with what the work needs: submit, or cancel
    /// pending jobs and retire idle ones.
    fn match_target(&mut self, obs: &Observation, per_job: &PerJob, to_cancel: &mut Vec<String>) -> Vec<Action> {
        let now = obs.now;
        let mut actions = Vec::new();
        let lead = self.lead();
        let lifetime = self.cfg.lifetime;
        let counts = |j: &Job| -> bool {
            if j.cancelled || j.retiring_since.is_some() {
                return false;
            }
            let nworkers = per_job.get(j.id.as_str()).map_or(0, |v| v.len());
            match j.first_worker {
                None => true,                       // pending (or starting)
                Some(_) if nworkers == 0 => false, // its workers left: ending
                Some(t) => lifetime.is_none_or(|l| now < t + l - lead),
            }
        };
        let active: Vec<usize> = (0..self.jobs.len()).filter(|&i| counts(&self.jobs[i])).collect();
        let target = self.target(obs) as usize;
        if active.len() < target && now >= self.backoff_until {
            actions.push(Action::Submit((target - active.len()) as u32));
        } else if active.len() > target {
            let mut surplus = active.len() - target;
            // Pending jobs first, newest first.
            for &i in active.iter().rev() {
                if surplus == 0 {
                    break;
                }
                let j = &mut self.jobs[i];
                if j.first_worker.is_none() {
                    j.cancelled = true;
                    to_cancel.push(j.id.clone());
                    surplus -= 1;
                }
            }
            // Then jobs idle long enough, longest idle first. A job holding
            // results retires only if another job's workers stay to take them.
            let mut idle: Vec<usize> = active.iter().copied().filter(|&i| self.jobs[i].first_worker.is_some() && self.jobs[i].idle_checks >= self.cfg.wait_count).collect();
            idle.sort_by_key(|&i| std::cmp::Reverse(self.jobs[i].idle_checks));
            let mut staying: Vec<usize> = active.iter().copied().filter(|&i| self.jobs[i].first_worker.is_some()).collect();
            for i in idle {
                if surplus == 0 {
                    break;
                }
                let workers = per_job.get(self.jobs[i].id.as_str()).cloned().unwrap_or_default();
                let holds = workers.iter().any(|w| w.in_memory > 0);
                let others = staying.iter().any(|&k| k != i);
                if holds && !others {
                    continue;
                }
                staying.retain(|&k| k != i);
                let j = &mut self.jobs[i];
                j.retiring_since = Some(now);
                surplus -= 1;
                self.logs.push((2, format!("retiring worker job {} (idle at {} checks)", j.id, j.idle_checks)));
                actions.push(Action::Retire { job: j.id.clone(), workers: workers.iter().map(|w| w.name.clone()).collect() });
            }
        }
        actions
    }
}

/// The workers of each batch job, by job id.
type PerJob<'a> = HashMap<&'a str, Vec<&'a WorkerView>>;

/// Running adaptive scaling; [`AdaptHandle::shutdown`] stops it and cancels
/// the jobs it submitted that are still there.
pub struct AdaptHandle {
    stop: crossbeam_channel::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdaptHandle {
    pub fn shutdown(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start adaptive scaling for the scheduler behind `controller`, submitting
/// jobs described by `opts` (its scheduler file names the record).
pub fn spawn(controller: Controller, opts: JobOptions, cfg: AdaptConfig) -> Result<AdaptHandle, String> {
    opts.validate()?;
    let record = Record::for_scheduler_file(&opts.scheduler_file);
    let script = script_path(&opts.scheduler_file, "adapt");
    opts.create_log_directory()?;
    write_script(&script, &opts.render())?;
    log_at!(
        2,
        "adapt",
        "adaptive scaling on {}: {}..{} jobs of {} cores; job script {}",
        opts.system,
        cfg.minimum_jobs,
        cfg.maximum_jobs,
        opts.cores,
        script.display()
    );
    let (stop, stopped) = crossbeam_channel::bounded(1);
    let system = opts.system;
    let workers_per_job = opts.processes;
    let thread = std::thread::Builder::new()
        .name("tf-adapt".into())
        .spawn(move || {
            let t0 = std::time::Instant::now();
            let mut adaptor = Adaptor::new(cfg.clone());
            let mut query_failing = false;
            let mut last_target = None;
            while let Some(status) = controller.status() {
                let now = t0.elapsed().as_secs_f64();
                let ids = adaptor.live_jobs();
                let states = match super::query(system, &ids) {
                    Ok(s) => {
                        query_failing = false;
                        let _ = record.set_states(&s);
                        Some(s)
                    }
                    Err(e) => {
                        if !query_failing {
                            log_at!(1, "adapt", "cannot query job states: {e}");
                        }
                        query_failing = true;
                        None
                    }
                };
                let mut obs = observe(&status, now, states);
                if let Some(states) = &obs.states {
                    for id in adaptor.ended_early(states) {
                        if let Some(r) = super::end_reason(system, &id) {
                            obs.reasons.insert(id, r);
                        }
                    }
                    // A held job (HTCondor, or Grid Engine's error states)
                    // never starts by itself: remove it from the queue.
                    let held: Vec<String> = states.iter().filter(|(_, s)| super::is_held(system, s)).map(|(id, _)| id.clone()).collect();
                    if !held.is_empty() {
                        log_at!(1, "adapt", "worker job(s) {} are held by {system}; removing them", held.join(" "));
                        cancel_logged(system, &held);
                    }
                }
                let target = adaptor.target(&obs);
                if last_target != Some(target) {
                    log_at!(2, "adapt", "target {target} worker job(s) for {} unfinished tasks ({} live)", obs.remaining_tasks, ids.len());
                    last_target = Some(target);
                }
                for action in adaptor.step(&obs) {
                    match action {
                        Action::Submit(n) => {
                            for _ in 0..n {
                                match super::submit_recorded(system, &script, &record, "adapt", workers_per_job) {
                                    Ok(id) => {
                                        log_at!(2, "adapt", "submitted worker job {id}");
                                        adaptor.submitted(id, now);
                                    }
                                    Err(super::SubmitError::Record { id, error }) => {
                                        log_at!(1, "adapt", "submitted worker job {id}, but could not record it: {error}");
                                        adaptor.submitted(id, now);
                                    }
                                    Err(super::SubmitError::Submit(e)) => {
                                        adaptor.submit_failed(&e, now);
                                        break;
                                    }
                                }
                            }
                        }
                        Action::Retire { job, workers } => {
                            let _ = controller.retire(workers);
                            log_at!(3, "adapt", "retire requested for the workers of job {job}");
                        }
                        Action::Cancel(ids) => cancel_logged(system, &ids),
                    }
                }
                for (level, line) in adaptor.take_logs() {
                    log_at!(level, "adapt", "{line}");
                }
                if stopped.recv_timeout(cfg.interval).is_ok() {
                    break;
                }
            }
            let left = adaptor.live_jobs();
            if !left.is_empty() {
                log_at!(2, "adapt", "scheduler stopping: cancelling worker jobs {}", left.join(" "));
                cancel_logged(system, &left);
            }
        })
        .map_err(|e| format!("cannot start the adaptive scaling thread: {e}"))?;
    Ok(AdaptHandle { stop, thread: Some(thread) })
}

fn cancel_logged(system: System, ids: &[String]) {
    match super::cancel(system, ids) {
        Ok(()) => log_at!(2, "adapt", "cancelled worker jobs {}", ids.join(" ")),
        Err(e) => log_at!(1, "adapt", "cannot cancel worker jobs {}: {e}", ids.join(" ")),
    }
}

/// What the adaptor needs from a status report.
pub fn observe(status: &crate::protocol::StatusReport, now: f64, states: Option<HashMap<String, JobState>>) -> Observation {
    let count = |name: &str| status.tasks.iter().find(|(s, _)| s == name).map_or(0, |(_, n)| *n);
    let stat = |name: &str| status.stats.iter().find(|(s, _)| s == name).map_or(0, |(_, n)| *n);
    Observation {
        now,
        remaining_tasks: count("waiting") + count("queued") + count("no-worker") + count("processing"),
        mean_task: stat("mean_task_us") as f64 * 1e-6,
        workers: status.workers.iter().map(|w| WorkerView { name: w.name.clone(), job: w.job.clone(), processing: w.processing, in_memory: w.in_memory }).collect(),
        states,
        reasons: HashMap::new(),
    }
}

/// Where a generated job script goes: next to the scheduler file.
pub fn script_path(scheduler_file: &std::path::Path, purpose: &str) -> PathBuf {
    super::beside(scheduler_file, &format!(".{purpose}.sh"))
}

/// Write a job script (mode 0700, private: it names the scheduler file).
pub fn write_script(path: &std::path::Path, text: &str) -> Result<(), String> {
    crate::util::write_file_atomic(path, text.as_bytes(), 0o700).map_err(|e| format!("cannot write job script {}: {e}", path.display()))
}

#[cfg(test)]
mod tests;
