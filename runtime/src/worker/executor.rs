//! The executors: a pool of threads that evaluate tasks (built-in and
//! registered functions, commands; Python calls through each thread's own
//! Python process, see [`super::python`]), one task at a time each. The worker's
//! loop hands them [`Job`]s and hears back through [`Report`]s. This is the
//! one interface an executor of another kind (e.g. Python processes)
//! implements: take jobs, report starts and results.

use super::python::{PyJob, Python, PythonSettings};
use crate::functions::{evaluate, Registry, TaskContext};
use crate::graph::Expr;
use crate::protocol::TaskId;
use crate::store::Value;
use crate::value::Data;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A task ready to run, with its dependencies' values loaded.
pub struct Job {
    pub id: TaskId,
    pub key: String,
    pub expr: Expr,
    pub args: Vec<Arc<Value>>,
    pub timeout: Option<f64>,
    /// Store the value in the result cache here (`--cache`).
    pub cache: Option<PathBuf>,
}

/// What executors tell the worker's loop.
pub enum Report {
    /// Executor `exec` is about to run task `id`; a non-zero `ticket` means
    /// it waits until the scheduler has been told (see [`Pool::acknowledge`]).
    Started {
        id: TaskId,
        exec: usize,
        ticket: u64,
    },
    Done {
        id: TaskId,
        result: Result<Data, String>,
        duration: Duration,
        /// The executor thread that ran it.
        exec: usize,
    },
}

/// Before running a command, an executor waits (up to this long) until the
/// worker has sent its start to the scheduler, together with the results of
/// the tasks it ran before: if the command kills the worker, the scheduler
/// suspects that command, not a task that had just finished without the
/// worker getting to report it. Commands take milliseconds to start anyway;
/// functions do not wait.
const START_ACK_WAIT: Duration = Duration::from_millis(200);

/// Where executors learn that the scheduler was told a task started.
struct StartAcks {
    /// Per executor: the last ticket whose start was sent.
    acked: Vec<AtomicU64>,
    lock: Mutex<()>,
    cv: Condvar,
    /// The worker is gone (its pool dropped): start nothing more. Without
    /// it a thread waiting for an acknowledgement that will never come ran
    /// one more queued command after the worker lost its scheduler.
    closed: std::sync::atomic::AtomicBool,
}

/// The thread pool.
pub struct Pool {
    jobs: Sender<Job>,
    acks: Arc<StartAcks>,
    cancels: Arc<Cancels>,
}

/// A cancelled task's error (the worker drops it: nobody wants the task).
pub const CANCELLED: &str = "cancelled: no client wants this task any more (its process was stopped)";

/// Tasks running in processes that can be stopped (commands, Python
/// executors), and tasks asked to stop. A process is killed only while it
/// is registered, i.e. not yet reaped, so a pid is never killed after reuse.
pub struct Cancels {
    inner: Mutex<CancelState>,
    /// This worker's token: its commands and executors carry it in
    /// `TASKFARM_WORKER_TOKEN`, and its reaper kills what carries it.
    token: String,
    /// Kills the commands still running if this worker dies, even by
    /// SIGKILL (started with the first command).
    reaper: std::sync::OnceLock<Option<Reaper>>,
}

impl Default for Cancels {
    fn default() -> Cancels {
        Cancels { inner: Mutex::default(), token: crate::util::hex(&crate::util::random_bytes(16)), reaper: std::sync::OnceLock::new() }
    }
}

/// A small process outside the worker (`/bin/sh` waiting on a pipe, in a
/// process group of its own): when the pipe closes — the worker exited or
/// was killed, even by SIGKILL — it kills every process that carries this
/// worker's token ([`Cancels::token`]) in its environment (not the
/// process's: one process may hold several workers, as `Client()` clusters
/// do, and one ending must not kill the others' commands):
/// the commands still running and what they started. Nothing is done per
/// command (posix_spawn stays; PR_SET_PDEATHSIG would need a pre_exec hook,
/// which forces fork+exec: 70 % slower on the 5k-command benchmark).
pub struct Reaper {
    _pipe: std::io::PipeWriter,
    _child: std::process::Child,
}

/// The reaper's program: wait for the end of its input, then kill (three
/// passes, for processes forked meanwhile) every process whose environment
/// holds `TASKFARM_WORKER_TOKEN=$1`.
const REAPER_SCRIPT: &str = r#"while read -r _; do :; done
for pass in 1 2 3; do
  for f in $(grep -l -s -z -x "TASKFARM_WORKER_TOKEN=$1" /proc/[0-9]*/environ); do
    p=${f#/proc/}; kill -9 "${p%/environ}" 2>/dev/null
  done
done
exit 0"#;

impl Reaper {
    pub fn start(token: &str) -> Option<Reaper> {
        let (read, write) = match std::io::pipe() {
            Ok(p) => p,
            Err(e) => {
                crate::log_at!(1, "worker", "cannot create the pipe for the command reaper: {e}; commands may outlive a killed worker");
                return None;
            }
        };
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", REAPER_SCRIPT, "taskfarm-reaper", token])
            .env_remove(crate::functions::COMMAND_TOKEN_VAR)
            .stdin(read)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn();
        match child {
            Ok(c) => Some(Reaper { _pipe: write, _child: c }),
            Err(e) => {
                crate::log_at!(1, "worker", "cannot start the command reaper (/bin/sh): {e}; commands may outlive a killed worker");
                None
            }
        }
    }
}

#[derive(Default)]
struct CancelState {
    running: std::collections::HashMap<TaskId, u32>,
    cancelled: std::collections::HashSet<TaskId>,
    /// Processes a cancel killed and nobody has reaped yet: a Python
    /// executor may have held other tasks of a batch, which must run again
    /// rather than fail (see [`Cancels::take_killed`]).
    killed: std::collections::HashSet<u32>,
}

impl CancelState {
    /// Kill `pid` for a cancel, and remember that a cancel did.
    fn kill(&mut self, pid: u32) {
        kill(pid);
        self.killed.insert(pid);
    }
}

/// Kill a child this worker has not reaped yet, with everything it started:
/// its process group when it leads one (commands do), else the process.
pub fn kill(pid: u32) {
    // SAFETY: kill(2); while the child is not reaped, neither its pid nor
    // its process group id can have been reused.
    unsafe {
        if libc::kill(-(pid as libc::pid_t), libc::SIGKILL) != 0 {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

impl Cancels {
    /// This worker's token (see [`Reaper`]).
    pub fn token(&self) -> &str {
        &self.token
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CancelState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Task `id` runs in process `pid` now (killed at once if it was cancelled).
    pub fn running(&self, id: TaskId, pid: u32) {
        let mut st = self.lock();
        if st.cancelled.contains(&id) {
            st.kill(pid);
        }
        self.reaper.get_or_init(|| Reaper::start(&self.token));
        st.running.insert(id, pid);
    }

    /// These tasks' process is about to be reaped: never kill it again.
    pub fn stopped(&self, ids: impl IntoIterator<Item = TaskId>) {
        let mut st = self.lock();
        for id in ids {
            st.running.remove(&id);
        }
    }

    /// A command's process was reaped: forget it.
    fn reaped(&self, id: TaskId) {
        let mut st = self.lock();
        if let Some(pid) = st.running.remove(&id) {
            st.killed.remove(&pid);
        }
    }

    /// Did a cancel kill process `pid` (which died and is being reaped)?
    /// Forgets it either way: `pid` may be reused after this.
    pub fn take_killed(&self, pid: u32) -> bool {
        self.lock().killed.remove(&pid)
    }

    pub fn is_cancelled(&self, id: TaskId) -> bool {
        self.lock().cancelled.contains(&id)
    }

    /// Stop task `id`: kill its process if it has one now, and skip it if
    /// it has not started.
    pub fn cancel(&self, id: TaskId) {
        let mut st = self.lock();
        st.cancelled.insert(id);
        if let Some(&pid) = st.running.get(&id) {
            st.kill(pid);
        }
    }

    /// Stop every task running now (their processes are killed).
    fn cancel_all(&self) {
        let mut st = self.lock();
        let running: Vec<(TaskId, u32)> = st.running.iter().map(|(&id, &pid)| (id, pid)).collect();
        for (id, pid) in running {
            st.cancelled.insert(id);
            st.kill(pid);
        }
    }

    /// Task `id` was reported done: forget it.
    fn ended(&self, id: TaskId) {
        let mut st = self.lock();
        st.running.remove(&id);
        st.cancelled.remove(&id);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.acks.closed.store(true, Ordering::Release);
        let _guard = self.acks.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.acks.cv.notify_all();
    }
}

impl Pool {
    /// Start `nthreads` executors evaluating with `registry` in `dir`,
    /// Python calls with interpreters started as `python` says; `report`
    /// is called from the executor threads (false: the worker is gone).
    /// `memory_limit`: the worker's (0: none), which bounds the memory
    /// files Python executors keep for reuse.
    pub fn start(
        nthreads: u32,
        registry: Registry,
        dir: PathBuf,
        python: Arc<PythonSettings>,
        memory_limit: u64,
        report: impl Fn(Report) -> bool + Clone + Send + 'static,
    ) -> std::io::Result<Pool> {
        let n = nthreads.max(1);
        // Spare result files and kept mappings: each at most 1 GiB per
        // executor, and together at most a quarter of the worker's limit.
        let keep = if memory_limit > 0 { (memory_limit / (8 * n as u64)).min(1 << 30) } else { 1 << 30 };
        let (jobs, rx) = unbounded::<Job>();
        let cancels = Arc::new(Cancels::default());
        let acks = Arc::new(StartAcks {
            acked: (0..n).map(|_| AtomicU64::new(0)).collect(),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        for i in 0..n {
            let (rx, report, reg, dir, acks) = (
                rx.clone(),
                report.clone(),
                registry.clone(),
                dir.clone(),
                acks.clone(),
            );
            let python = Python::new(python.clone(), cancels.clone(), keep);
            let cancels = cancels.clone();
            std::thread::Builder::new()
                .name(format!("tf-exec-{i}"))
                .spawn(move || executor(i as usize, n as usize, rx, report, reg, dir, acks, python, cancels))?;
        }
        Ok(Pool { jobs, acks, cancels })
    }

    /// Queue a job; false if the executors are gone.
    /// (Dropping the pool stops the executors from starting queued jobs.)
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }

    /// Stop a running (or queued) task: see [`Cancels::cancel`].
    pub fn cancel(&self, id: TaskId) {
        self.cancels.cancel(id);
    }

    /// Stop every running task's process (the worker lost its scheduler;
    /// queued jobs never start once the pool is dropped).
    pub fn cancel_all(&self) {
        self.cancels.cancel_all();
    }

    /// These starts (and every result before them) have been sent to the
    /// scheduler: let the executors waiting on them run their tasks.
    pub fn acknowledge(&self, acks: impl IntoIterator<Item = (usize, u64)>) {
        for (exec, ticket) in acks {
            self.acks.acked[exec].store(ticket, Ordering::Release);
        }
        let _guard = self.acks.lock.lock().expect("ack lock");
        self.acks.cv.notify_all();
    }
}

/// After this long without a task (and every this long while idle), an
/// executor thread gives its Python executor the memory files the worker
/// dropped (and, after a longer while, lets it drop the ones it keeps for
/// reuse: `python::SPARE_IDLE`).
const IDLE: Duration = Duration::from_secs(2);

#[allow(clippy::too_many_arguments)]
fn executor(
    index: usize,
    nthreads: usize,
    rx: Receiver<Job>,
    report: impl Fn(Report) -> bool,
    reg: Registry,
    dir: PathBuf,
    acks: Arc<StartAcks>,
    mut python: Python,
    cancels: Arc<Cancels>,
) {
    // every result passes through here: a cancelled task is forgotten
    let report = |r: Report| {
        if let Report::Done { id, .. } = &r {
            cancels.ended(*id);
        }
        report(r)
    };
    let mut tickets = 0u64;
    let mut held_back: Option<Job> = None;
    loop {
        let job = match held_back.take() {
            Some(j) => j,
            None => match rx.recv_timeout(IDLE) {
                Ok(j) => j,
                Err(RecvTimeoutError::Timeout) => {
                    // (again every IDLE: values dropped meanwhile are given
                    // back and their memory freed)
                    python.idle();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            },
        };
        if cancels.is_cancelled(job.id) {
            let id = job.id;
            if !report(Report::Started { id, exec: index, ticket: 0 }) || !report(Report::Done { id, result: Err(CANCELLED.into()), duration: Duration::ZERO, exec: index }) {
                return;
            }
            continue;
        }
        if batchable(&job) {
            // Take a fair share of the Python calls queued behind it: one
            // round trip to the Python process runs them all.
            let share = (rx.len() / nthreads).min(MAX_BATCH - 1);
            let mut batch = vec![job];
            while batch.len() <= share {
                match rx.try_recv() {
                    Ok(j) if batchable(&j) => batch.push(j),
                    Ok(j) => {
                        held_back = Some(j);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !run_python_batch(index, &batch, &report, &mut python) {
                return;
            }
            continue;
        }
        let wait = matches!(job.expr, Expr::Cmd(_));
        let ticket = if wait {
            tickets += 1;
            tickets
        } else {
            0
        };
        if !report(Report::Started {
            id: job.id,
            exec: index,
            ticket,
        }) {
            return;
        }
        if wait {
            let guard = acks.lock.lock().expect("ack lock");
            let _ = acks.cv.wait_timeout_while(guard, START_ACK_WAIT, |_| {
                acks.acked[index].load(Ordering::Acquire) < ticket && !acks.closed.load(Ordering::Acquire)
            });
        }
        if acks.closed.load(Ordering::Acquire) {
            return;
        }
        let start = Instant::now();
        let result = run_job(&job, &reg, &dir, start, &mut python, &cancels);
        store_in_cache(&job, &result);
        if !report(Report::Done {
            id: job.id,
            result,
            duration: start.elapsed(),
            exec: index,
        }) {
            return;
        }
    }
}

/// Most Python calls one executor thread sends its process at once.
const MAX_BATCH: usize = 64;

/// A Python call without a timeout (a call with one runs alone, so its
/// deadline is its own).
fn batchable(job: &Job) -> bool {
    matches!(job.expr, Expr::Py(_)) && job.timeout.is_none()
}

/// Run Python jobs as one batch (see [`Python::run_batch`]); false if the
/// worker is gone.
fn run_python_batch(index: usize, batch: &[Job], report: &impl Fn(Report) -> bool, python: &mut Python) -> bool {
    for job in batch {
        if !report(Report::Started { id: job.id, exec: index, ticket: 0 }) {
            return false;
        }
    }
    let calls: Vec<PyJob<'_>> = batch
        .iter()
        .map(|job| match &job.expr {
            Expr::Py(call) => PyJob { id: job.id, call, deps: job.args.iter().map(|s| &s.data).collect() },
            _ => unreachable!("only Python calls are batched"),
        })
        .collect();
    let mut alive = true;
    let mut last = Instant::now();
    python.run_batch(&calls, None, &mut |i, result| {
        let now = Instant::now();
        let duration = now - last;
        last = now;
        store_in_cache(&batch[i], &result);
        alive = alive && report(Report::Done { id: batch[i].id, result, duration, exec: index });
    });
    alive
}

/// A finished cacheable task's value goes into the result cache (a failed
/// write is logged: the value is still good, only not cached).
fn store_in_cache(job: &Job, result: &Result<Data, String>) {
    if let (Some(path), Ok(data)) = (&job.cache, result) {
        if let Err(e) = crate::cache::store(path, data) {
            crate::log_at!(1, "worker", "cannot store the value of {} in the result cache at {}: {e}", job.key, path.display());
        }
    }
}

/// Evaluate one job; a panic in a function and a timeout are task errors.
fn run_job(
    job: &Job,
    reg: &Registry,
    dir: &std::path::Path,
    start: Instant,
    python: &mut Python,
    cancels: &Cancels,
) -> Result<Data, String> {
    let deadline = job.timeout.map(|t| start + Duration::from_secs_f64(t));
    let id = job.id;
    let spawned = |pid: Option<u32>| match pid {
        Some(pid) => cancels.running(id, pid),
        None => cancels.reaped(id),
    };
    let ctx = TaskContext {
        key: &job.key,
        local_directory: dir,
        deadline,
        spawned: Some(&spawned),
        token: cancels.token(),
    };
    let refs: Vec<&Data> = job.args.iter().map(|s| &s.data).collect();
    if let Expr::Py(call) = &job.expr {
        return python.run(id, call, &refs, deadline);
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        evaluate(&job.expr, &refs, reg, &ctx).map(|v| v.into_owned())
    }))
    .unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!("the task's function panicked: {msg}"))
    });
    match (result, deadline) {
        (Ok(_), Some(d)) if Instant::now() > d => Err(format!(
            "timed out: ran {:.1} s, longer than its timeout",
            start.elapsed().as_secs_f64()
        )),
        (r, _) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
    }

    #[test]
    fn the_reaper_kills_what_carries_the_workers_token_when_its_pipe_closes() {
        // Two "commands" with the token (each with a child), one process without.
        let tagged: Vec<std::process::Child> = (0..2)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "sleep 600 & wait"])
                    .env(crate::functions::COMMAND_TOKEN_VAR, crate::functions::command_token())
                    .process_group(0)
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut other = std::process::Command::new("sleep").arg("600").spawn().unwrap();
        let reaper = Reaper::start(crate::functions::command_token()).expect("the reaper starts");
        drop(reaper); // the worker is gone
        for mut g in tagged {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(g.wait().unwrap().signal(), Some(libc::SIGKILL), "a tagged process was killed");
        }
        assert!(alive(other.id()), "a process without the token is left alone");
        kill(other.id());
        other.wait().unwrap();
    }
}
