//! The adaptor's decisions, without IO.

use super::*;

fn cfg(min: u32, max: u32, threads_per_job: u32) -> AdaptConfig {
    AdaptConfig::new(min, max, threads_per_job)
}

fn worker(name: &str, job: &str, processing: u32, in_memory: u64) -> WorkerView {
    WorkerView { name: name.into(), job: job.into(), processing, in_memory }
}

fn states(v: &[(&str, JobState)]) -> Option<HashMap<String, JobState>> {
    Some(v.iter().map(|(id, s)| (id.to_string(), s.clone())).collect())
}

fn running() -> JobState {
    JobState::Running("RUNNING".into())
}

fn pending() -> JobState {
    JobState::Pending("PENDING".into())
}

#[test]
fn target_follows_queued_work_within_bounds() {
    let a = Adaptor::new(cfg(0, 10, 4));
    let obs = |remaining, mean| Observation { now: 0.0, remaining_tasks: remaining, mean_task: mean, ..Default::default() };
    assert_eq!(a.target(&obs(0, 1.0)), 0, "no work: the minimum");
    // 100 tasks x 1 s within 5 s: 20 threads = 5 jobs of 4.
    assert_eq!(a.target(&obs(100, 1.0)), 5);
    // Unknown durations count 0.5 s each: 100 -> 10 threads -> 3 jobs.
    assert_eq!(a.target(&obs(100, 0.0)), 3);
    // Never more threads than tasks: 3 long tasks need one job of 4 threads.
    assert_eq!(a.target(&obs(3, 100.0)), 1);
    assert_eq!(a.target(&obs(1_000_000, 1.0)), 10, "capped at the maximum");
    let b = Adaptor::new(cfg(2, 10, 4));
    assert_eq!(b.target(&obs(0, 1.0)), 2);
}

#[test]
fn grows_from_zero_counting_pending_jobs_then_shrinks_a_whole_job_at_a_time() {
    let mut a = Adaptor::new(cfg(0, 3, 2));
    let mut obs = Observation { now: 0.0, remaining_tasks: 200, mean_task: 0.3, workers: vec![], states: states(&[]), ..Default::default() };
    assert_eq!(a.step(&obs), vec![Action::Submit(3)]);
    for (i, id) in ["1", "2", "3"].iter().enumerate() {
        a.submitted(id.to_string(), i as f64 * 0.01);
    }
    // Pending jobs count toward the target: nothing more is submitted.
    obs.now = 1.0;
    obs.states = states(&[("1", pending()), ("2", pending()), ("3", pending())]);
    assert_eq!(a.step(&obs), vec![]);
    // Jobs start; job 3 runs two workers (one job of --processes 2).
    obs.now = 2.0;
    obs.states = states(&[("1", running()), ("2", running()), ("3", running())]);
    obs.workers = vec![worker("1-0", "1", 2, 0), worker("2-0", "2", 2, 0), worker("3-0", "3", 1, 0), worker("3-1", "3", 1, 0)];
    assert_eq!(a.step(&obs), vec![]);
    // Work done: idle jobs retire only after wait_count (3) idle checks.
    obs.remaining_tasks = 0;
    for w in &mut obs.workers {
        w.processing = 0;
    }
    obs.workers[0].in_memory = 5; // job 1 holds results: it goes last
    for t in 3..5 {
        obs.now = t as f64;
        assert_eq!(a.step(&obs), vec![], "idle for {} checks", t - 2);
    }
    obs.now = 5.0;
    let actions = a.step(&obs);
    let retired: Vec<&Action> = actions.iter().filter(|x| matches!(x, Action::Retire { .. })).collect();
    assert_eq!(retired.len(), 3, "{actions:?}");
    // Every worker of job 3 is retired together, never just one of them.
    assert!(actions.contains(&Action::Retire { job: "3".into(), workers: vec!["3-0".into(), "3-1".into()] }));
    // Once a retired job's workers are gone it is cancelled (harmless if it already ended).
    obs.now = 6.0;
    obs.workers.retain(|w| w.job != "3");
    assert_eq!(a.step(&obs), vec![Action::Cancel(vec!["3".into()])]);
}

#[test]
fn last_job_holding_results_is_kept() {
    let mut a = Adaptor::new(cfg(0, 2, 1));
    a.submitted("7".into(), 0.0);
    let mut obs = Observation { now: 1.0, remaining_tasks: 0, mean_task: 1.0, workers: vec![worker("7-0", "7", 0, 3)], states: states(&[("7", running())]), ..Default::default() };
    for t in 1..10 {
        obs.now = t as f64;
        assert_eq!(a.step(&obs), vec![], "its results have nowhere to go");
    }
    obs.workers[0].in_memory = 0; // the client took them (released)
    obs.now = 10.0;
    assert!(matches!(a.step(&obs).as_slice(), [Action::Retire { .. }]));
}

#[test]
fn surplus_pending_jobs_are_cancelled_newest_first() {
    let mut a = Adaptor::new(cfg(0, 4, 1));
    for id in ["1", "2", "3"] {
        a.submitted(id.into(), 0.0);
    }
    let obs = Observation { now: 1.0, remaining_tasks: 0, states: states(&[("1", pending()), ("2", pending()), ("3", pending())]), ..Default::default() };
    assert_eq!(a.step(&obs), vec![Action::Cancel(vec!["3".into(), "2".into(), "1".into()])]);
}

#[test]
fn failed_submissions_and_jobs_that_die_before_joining_back_off() {
    let mut a = Adaptor::new(cfg(0, 2, 1));
    let mut obs = Observation { now: 0.0, remaining_tasks: 100, mean_task: 1.0, states: states(&[]), ..Default::default() };
    assert_eq!(a.step(&obs), vec![Action::Submit(2)]);
    a.submit_failed("sbatch: error: invalid partition specified: nosuch", 0.0);
    let logs = a.take_logs();
    assert!(logs.iter().any(|(_, l)| l.contains("invalid partition") && l.contains("next attempt in 10 s")), "{logs:?}");
    obs.now = 5.0;
    assert_eq!(a.step(&obs), vec![], "backing off: no tight retry loop");
    obs.now = 10.0;
    assert_eq!(a.step(&obs), vec![Action::Submit(2)]);
    a.submit_failed("again", 10.0);
    obs.now = 25.0;
    assert_eq!(a.step(&obs), vec![], "the pause doubles (20 s)");
    obs.now = 30.0;
    assert_eq!(a.step(&obs), vec![Action::Submit(2)]);
    // Submitted, but the job ends without a worker joining (bad prologue, ...).
    a.submitted("9".into(), 30.0);
    a.submitted("10".into(), 30.0);
    obs.now = 31.0;
    obs.states = states(&[("9", JobState::Gone("FAILED".into())), ("10", pending())]);
    // The batch system's reason is asked for that job only, and told.
    assert_eq!(a.ended_early(obs.states.as_ref().unwrap()), vec!["9".to_string()]);
    obs.reasons.insert("9".into(), "slurm says: JobState=FAILED Reason=JobLaunchFailure".into());
    assert_eq!(a.step(&obs), vec![]);
    let logs = a.take_logs();
    assert!(logs.iter().any(|(_, l)| l.contains("job 9 ended (FAILED) before any of its workers joined (slurm says: JobState=FAILED Reason=JobLaunchFailure)")), "{logs:?}");
    assert_eq!(a.live_jobs(), vec!["10".to_string()]);
    obs.now = 60.0;
    assert_eq!(a.step(&obs), vec![], "40 s pause after the failed job");
    obs.now = 71.0;
    assert_eq!(a.step(&obs), vec![Action::Submit(1)]);
}

#[test]
fn jobs_near_their_walltime_are_replaced_ahead_of_time() {
    let mut c = cfg(0, 1, 2);
    c.lifetime = Some(54.0);
    let mut a = Adaptor::new(c);
    let mut obs = Observation { now: 0.0, remaining_tasks: 500, mean_task: 2.0, states: states(&[]), ..Default::default() };
    assert_eq!(a.step(&obs), vec![Action::Submit(1)]);
    a.submitted("1".into(), 0.0);
    obs.now = 1.0;
    obs.workers = vec![worker("1-0", "1", 2, 10)];
    obs.states = states(&[("1", running())]);
    assert_eq!(a.step(&obs), vec![]);
    // Lead: max(2 x 1 s start latency, 2 x interval, 10 s) = 10 s before 1 + 54.
    obs.now = 44.0;
    assert_eq!(a.step(&obs), vec![]);
    obs.now = 45.5;
    assert_eq!(a.step(&obs), vec![Action::Submit(1)], "one job may briefly exceed the maximum while its replacement starts");
    a.submitted("2".into(), 45.5);
    obs.now = 47.0;
    obs.states = states(&[("1", running()), ("2", pending())]);
    assert_eq!(a.step(&obs), vec![], "the replacement is pending: no more");
}

#[test]
fn a_job_whose_workers_left_is_not_counted() {
    let mut a = Adaptor::new(cfg(1, 2, 1));
    a.submitted("1".into(), 0.0);
    let mut obs = Observation { now: 1.0, remaining_tasks: 1, mean_task: 1.0, workers: vec![worker("1-0", "1", 1, 0)], states: states(&[("1", running())]), ..Default::default() };
    assert_eq!(a.step(&obs), vec![]);
    obs.now = 2.0;
    obs.workers.clear(); // e.g. the worker hit its memory limit; the job is ending
    assert_eq!(a.step(&obs), vec![Action::Submit(1)]);
}
