//! `taskfarm jobqueue script|submit|list|cancel`.

use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use taskfarm::{schedfile, util, Client};
use crate::*;
use crate::args::*;

#[derive(Subcommand)]
pub(crate) enum JobqueueCommand {
    /// Print the worker job script that `submit` would submit (nothing is submitted).
    Script(JobScriptArgs),
    /// Submit worker jobs that join the scheduler named by --scheduler-file.
    Submit(JobSubmitArgs),
    /// List the worker jobs submitted for this scheduler (by `submit` or by `scheduler --adapt`), with their states.
    List(JobListArgs),
    /// Cancel the worker jobs submitted for this scheduler (all, or those given with --job).
    Cancel(JobCancelArgs),
}

#[derive(Args)]
pub(crate) struct JobScriptArgs {
    /// Batch system: slurm, pbs (PBS Pro/OpenPBS), torque, lsf, sge or condor (HTCondor).
    #[arg(long, value_name = "SYSTEM")]
    pub(crate) system: taskfarm::jobqueue::System,
    #[command(flatten)]
    pub(crate) file: SchedulerFileArg,
    /// Network interface the workers listen on and advertise, e.g. ib0.
    #[arg(long, value_name = "NAME")]
    pub(crate) interface: Option<String>,
    #[command(flatten)]
    pub(crate) job: JobArgs,
}

#[derive(Args)]
pub(crate) struct JobSubmitArgs {
    #[command(flatten)]
    pub(crate) script: JobScriptArgs,
    /// Number of jobs to submit.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) jobs: u32,
}

#[derive(Args)]
pub(crate) struct JobListArgs {
    #[command(flatten)]
    pub(crate) file: SchedulerFileArg,
    /// Also show jobs that have ended (kept for a day).
    #[arg(long)]
    pub(crate) all: bool,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct JobCancelArgs {
    #[command(flatten)]
    pub(crate) file: SchedulerFileArg,
    /// Cancel only this job (repeatable) [default: every job of this scheduler that has not ended].
    #[arg(long = "job", value_name = "ID")]
    pub(crate) jobs: Vec<String>,
    /// First retire the jobs' workers gracefully (their unique results move to other workers) for up to this long,
    /// if the scheduler answers; then cancel the jobs. 0 cancels at once.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) retire_timeout: std::time::Duration,
}

pub(crate) fn cmd_jobqueue(c: JobqueueCommand) -> Result<u8, Fail> {
    use taskfarm::jobqueue::{self, adapt, record::Record};
    match c {
        JobqueueCommand::Script(a) => {
            let path = schedfile::resolve_path(a.file.scheduler_file.as_deref());
            let opts = a.job.options(a.system, &path, a.interface.clone())?;
            out!("{}", opts.render());
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
            opts.create_log_directory().map_err(Fail::env)?;
            adapt::write_script(&script, &opts.render()).map_err(Fail::env)?;
            let record = Record::for_scheduler_file(&opts.scheduler_file);
            let mut ids = Vec::new();
            for i in 0..a.jobs {
                match jobqueue::submit_recorded(s.system, &script, &record, "submit", opts.processes) {
                    Ok(id) => {
                        outln!("{id}");
                        ids.push(id);
                    }
                    Err(e @ jobqueue::SubmitError::Record { .. }) => return Err(Fail::env(e.to_string())),
                    Err(jobqueue::SubmitError::Submit(e)) => {
                        let done = if i == 0 { String::new() } else { format!(" ({i} of {} submitted: {})", a.jobs, ids.join(" ")) };
                        return Err(Fail(EXIT_TASK_FAILED, format!("{e}{done}; job script: {}", script.display())));
                    }
                }
            }
            note!("taskfarm: submitted {} {} job(s) (script {}; record {})", ids.len(), s.system, script.display(), record.path().display());
            Ok(0)
        }
        JobqueueCommand::List(a) => {
            let (path, record) = job_record(&a.file)?;
            refresh_states(&record)?;
            let jobs: Vec<_> = record.load().map_err(Fail::env)?.into_iter().filter(|j| a.all || j.ended.is_none()).collect();
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
                outln!("{}", serde_json::to_string_pretty(&list).expect("serialisable"));
                return Ok(0);
            }
            if jobs.is_empty() {
                note!("taskfarm: no {}jobs recorded in {}", if a.all { "" } else { "live " }, record.path().display());
                return Ok(0);
            }
            outln!("{:<16} {:<7} {:<11} {:>8} {:<7} WORKERS", "JOB", "SYSTEM", "STATE", "AGE", "BY");
            for j in &jobs {
                outln!("{:<16} {:<7} {:<11} {:>8} {:<7} {}/{}", j.id, j.system, j.state, format_age(now - j.submitted), j.by, joined.get(&j.id).copied().unwrap_or(0), j.workers);
            }
            Ok(0)
        }
        JobqueueCommand::Cancel(a) => {
            let (path, record) = job_record(&a.file)?;
            // Jobs that ended meanwhile are not cancelled (nor said to be).
            refresh_states(&record)?;
            let jobs = record.load().map_err(Fail::env)?;
            if let Some(unknown) = a.jobs.iter().find(|id| !jobs.iter().any(|j| &j.id == *id)) {
                return Err(Fail(EXIT_USAGE, format!("job {unknown} is not in {} (see taskfarm jobqueue list --all)", record.path().display())));
            }
            let chosen: Vec<_> = jobs.into_iter().filter(|j| j.ended.is_none() && (a.jobs.is_empty() || a.jobs.contains(&j.id))).collect();
            if chosen.is_empty() {
                note!("taskfarm: no live jobs to cancel");
                return Ok(0);
            }
            let ids: Vec<String> = chosen.iter().map(|j| j.id.clone()).collect();
            retire_job_workers(&path, &ids, a.retire_timeout);
            for (system, ids) in by_system(&chosen)? {
                jobqueue::cancel(system, &ids).map_err(|e| Fail(EXIT_TASK_FAILED, e))?;
                let states = ids.iter().map(|id| (id.clone(), jobqueue::JobState::Gone("cancelled".into()))).collect();
                record.set_states(&states).map_err(Fail::env)?;
                note!("taskfarm: cancelled {} job(s): {}", ids.len(), ids.join(" "));
            }
            Ok(0)
        }
    }
}

/// Retire the workers of jobs `ids` through the scheduler and wait (up to
/// `timeout`) for them to leave, so that cancelling loses nothing; without a
/// scheduler that answers, the jobs are cancelled as they are.
fn retire_job_workers(scheduler_file: &std::path::Path, ids: &[String], timeout: std::time::Duration) {
    if timeout.is_zero() {
        return;
    }
    let Ok(mut client) = taskfarm::Client::from_scheduler_file(scheduler_file, std::time::Duration::from_secs(5)) else {
        note!("taskfarm: the scheduler does not answer; cancelling without retiring the workers first");
        return;
    };
    let names: Vec<String> = match client.status() {
        Ok(s) => s.workers.into_iter().filter(|w| ids.contains(&w.job)).map(|w| w.name).collect(),
        Err(_) => return,
    };
    if names.is_empty() {
        return;
    }
    match client.retire_and_wait(&names, false, timeout, |n| note!("taskfarm: retiring {} before cancelling", n.join(", "))) {
        Ok(n) => note!("taskfarm: retired {}", n.join(", ")),
        Err(e) => note!("taskfarm: warning: {e}; cancelling anyway"),
    }
}

/// The absolute scheduler file path and the job record beside it.
pub(crate) fn job_record(file: &SchedulerFileArg) -> Result<(PathBuf, taskfarm::jobqueue::record::Record), Fail> {
    let path = std::path::absolute(schedfile::resolve_path(file.scheduler_file.as_deref())).map_err(|e| Fail(EXIT_USAGE, format!("--scheduler-file: {e}")))?;
    let record = taskfarm::jobqueue::record::Record::for_scheduler_file(&path);
    Ok((path, record))
}

/// Recorded jobs' ids grouped by batch system, in the record's order.
pub(crate) fn by_system(jobs: &[taskfarm::jobqueue::record::JobRecord]) -> Result<Vec<(taskfarm::jobqueue::System, Vec<String>)>, Fail> {
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
pub(crate) fn refresh_states(record: &taskfarm::jobqueue::record::Record) -> Result<(), Fail> {
    let live: Vec<_> = record.load().map_err(Fail::env)?.into_iter().filter(|j| j.ended.is_none()).collect();
    for (system, ids) in by_system(&live)? {
        match taskfarm::jobqueue::query(system, &ids) {
            Ok(states) => record.set_states(&states).map_err(Fail::env)?,
            Err(e) => note!("taskfarm: warning: cannot query {system} job states: {e}"),
        }
    }
    Ok(())
}

pub(crate) fn format_age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}
