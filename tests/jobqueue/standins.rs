//! The job-queue tests that run on real SLURM, run on the stand-ins for PBS
//! Pro, Torque, LSF and HTCondor (tests/infra/batch-standin.py, installed by
//! tests/infra/standins-up.sh): worker jobs that run a graph and are
//! cancelled, the batch system's own cancel mid-graph, `--adapt` up and
//! down, and walltime retirement with nothing recomputed. The stand-ins run
//! each job as local processes with the system's environment, limits and
//! signals, so these go through taskfarm's real job scripts, submission,
//! state queries and cancellation.

use super::*;

fn standin_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/batch-standins")
}

/// PATH with the stand-in's commands first.
fn path_for(system: &str) -> String {
    let bin = standin_root().join(system).join("bin");
    assert!(
        bin.join(if system == "lsf" { "bsub" } else if system == "condor" { "condor_submit" } else { "qsub" }).exists(),
        "the {system} stand-in is not installed: run `bash tests/infra/standins-up.sh` (tests/run-all.sh does)"
    );
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

fn jq_on(system: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin()).arg("jobqueue").args(args).env("PATH", path_for(system)).output().unwrap()
}

/// Cancels whatever jobs the test submitted, even when it fails.
struct Guard<'a>(&'a str, &'a Path);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let _ = jq_on(self.0, &["cancel", "--retire-timeout", "0", "--scheduler-file", self.1.to_str().unwrap()]);
    }
}

fn scheduler_on(system: &str, dir: &TempDir, extra: &[&str]) -> (Proc, std::path::PathBuf) {
    let file = dir.join("sched.json");
    let mut args = vec!["scheduler", "--scheduler-file", file.to_str().unwrap(), "--host", "127.0.0.1"];
    args.extend_from_slice(extra);
    let path = path_for(system);
    let p = Proc::spawn_env(&args, dir.join("scheduler.log"), &[("PATH", &path)]);
    wait_for("the scheduler", Duration::from_secs(20), || status(&file).is_some());
    (p, file)
}

fn submit_on(system: &str, dir: &TempDir, file: &Path, n: u32, options: &[&str]) -> Vec<String> {
    let n_arg = n.to_string();
    let mut args = vec!["submit", "--system", system, "--jobs", &n_arg, "--scheduler-file", file.to_str().unwrap(), "--log-directory", dir.path().to_str().unwrap()];
    args.extend_from_slice(options);
    let o = jq_on(system, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(ids.len(), n as usize, "one job id per line: {}", stdout(&o));
    ids
}

/// The batch system's own view of a job: the state letter or word its
/// status command prints, or None once it no longer lists the job.
fn native_state(system: &str, id: &str) -> Option<String> {
    let (cmd, args): (&str, Vec<&str>) = match system {
        "lsf" => ("bjobs", vec![id]),
        "condor" => ("condor_q", vec![id, "-af", "JobStatus"]),
        _ => ("qstat", vec![id]),
    };
    let o = Command::new(cmd).args(&args).env("PATH", path_for(system)).output().unwrap();
    let text = stdout(&o);
    match system {
        "condor" => text.split_whitespace().next().map(str::to_string),
        "lsf" => text.lines().find(|l| l.starts_with(id)).and_then(|l| l.split_whitespace().nth(2)).map(str::to_string).filter(|s| s != "DONE" && s != "EXIT"),
        _ => text.lines().find(|l| l.starts_with(id.split('.').next().unwrap())).and_then(|l| l.split_whitespace().nth(4)).map(str::to_string).filter(|s| s != "C" && s != "F"),
    }
}

fn running_code(system: &str) -> &'static str {
    match system {
        "lsf" => "RUN",
        _ => "R",
    }
}

fn jobs_run_a_graph_then_cancel_retires_and_removes_them(system: &str) {
    let dir = TempDir::new(&format!("jq-{system}-graph"));
    let (_sched, file) = scheduler_on(system, &dir, &[]);
    let _guard = Guard(system, &file);
    let f = file.to_str().unwrap();
    let ids = submit_on(system, &dir, &file, 2, &["--cores", "2", "--memory", "1GiB", "--walltime", "10m"]);
    // Each worker names its job from the system's environment (PBS_JOBID,
    // LSB_JOBID, HTCondor's job ad) and got its share of the job.
    wait_for_job_workers(&file, &ids, Duration::from_secs(60));
    wait_for("heartbeats with the memory limit", Duration::from_secs(20), || workers(&file).iter().all(|w| w["memory_limit"] != 0));
    for w in workers(&file) {
        assert_eq!(w["nthreads"], 2);
        assert_eq!(w["memory_limit"], 1u64 << 30);
    }
    let list = stdout(&jq_on(system, &["list", "--scheduler-file", f]));
    for id in &ids {
        assert!(list.lines().any(|l| l.starts_with(id.as_str()) && l.split_whitespace().nth(2) == Some(running_code(system)) && l.ends_with("1/1")), "{list}");
        assert_eq!(native_state(system, id).as_deref(), Some(if system == "condor" { "2" } else { running_code(system) }));
    }
    let (graph, want) = sleepy_graph(100, 0.01);
    let out = submit(&dir, &file, &graph).join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("{{\"total\": {want}}}"));

    let o = jq_on(system, &["cancel", "--scheduler-file", f]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("cancelled 2 job(s)"), "{}", stderr(&o));
    wait_for("the cancelled jobs' workers to leave", Duration::from_secs(60), || workers(&file).is_empty());
    let stats = &status(&file).unwrap()["stats"];
    assert_eq!((stats["workers_retired"].as_u64(), stats["workers_lost"].as_u64()), (Some(2), Some(0)), "retired before their jobs were cancelled: {}", stderr(&o));
    wait_for("the jobs to leave the batch system's queue", Duration::from_secs(60), || ids.iter().all(|id| native_state(system, id).is_none()));
    assert!(recorded(&file).iter().all(|j| !j["ended"].is_null()), "the record marks them ended");
    // Cancelling again is not an error.
    let o = jq_on(system, &["cancel", "--scheduler-file", f, "--job", &ids[0]]);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn the_systems_own_cancel_mid_graph_loses_nothing(system: &str) {
    let dir = TempDir::new(&format!("jq-{system}-native-cancel"));
    let (_sched, file) = scheduler_on(system, &dir, &[]);
    let _guard = Guard(system, &file);
    let ids = submit_on(system, &dir, &file, 2, &["--cores", "1"]);
    wait_for_job_workers(&file, &ids, Duration::from_secs(60));
    let (graph, want) = sleepy_graph(60, 0.2);
    let client = submit(&dir, &file, &graph);
    wait_for("some tasks to finish", Duration::from_secs(60), || stat(&file, "tasks_finished") >= 20);
    // qdel / bkill / condor_rm: SIGTERM (LSF: SIGINT and SIGTERM) first, so the worker retires.
    let cancel = match system {
        "lsf" => "bkill",
        "condor" => "condor_rm",
        _ => "qdel",
    };
    let o = Command::new(cancel).arg(&ids[0]).env("PATH", path_for(system)).output().unwrap();
    assert!(o.status.success(), "{cancel}: {}", stderr(&o));
    let out = client.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("{{\"total\": {want}}}"));
    wait_for("the cancelled job's worker to leave", Duration::from_secs(60), || workers(&file).iter().all(|w| w["job"] != ids[0].as_str()));
    assert_eq!(workers(&file).len(), 1);
    assert_eq!(stat(&file, "workers_lost"), 0, "it retired on the signal");
}

fn adapt_grows_from_zero_for_a_backlog_and_removes_idle_jobs(system: &str) {
    let dir = TempDir::new(&format!("jq-{system}-adapt"));
    let logs = dir.path().to_str().unwrap().to_string();
    let (sched, file) = scheduler_on(system, &dir, &["--adapt", system, "--minimum-jobs", "0", "--maximum-jobs", "3", "--cores", "1", "--adapt-interval", "500ms", "--log-directory", &logs]);
    let _guard = Guard(system, &file);
    wait_for("the first adapt check", Duration::from_secs(10), || sched.log_text().contains("target 0 worker job(s) for 0 unfinished tasks"));
    assert!(recorded(&file).is_empty(), "no jobs before there is work");
    let (graph, want) = sleepy_graph(120, 0.25);
    let out = submit(&dir, &file, &graph).join().unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), sched.log_text());
    assert_eq!(stdout(&out).trim(), format!("{{\"total\": {want}}}"));
    let jobs = recorded(&file);
    assert_eq!(jobs.len(), 3, "grew to the maximum: {jobs:?}");
    assert!(jobs.iter().all(|j| j["by"] == "adapt" && j["system"] == system));
    wait_for("idle jobs to be removed", Duration::from_secs(60), || workers(&file).is_empty() && recorded(&file).iter().all(|j| !j["ended"].is_null()));
    let ids: Vec<String> = jobs.iter().map(|j| j["id"].as_str().unwrap().to_string()).collect();
    wait_for("the jobs to leave the batch system's queue", Duration::from_secs(60), || ids.iter().all(|id| native_state(system, id).is_none()));
    assert_eq!(stat(&file, "tasks_recomputed"), 0);
    assert_eq!(sched.log_text().matches("submitted worker job").count(), 3, "{}", sched.log_text());
}

fn one_minute_walltime_graph_outlives_its_jobs_without_losing_or_rerunning(system: &str) {
    let dir = TempDir::new(&format!("jq-{system}-walltime"));
    let logs = dir.path().to_str().unwrap().to_string();
    // 1-minute jobs (LSF's -W counts whole minutes); workers retire 6 s
    // before the end, up to 3 s earlier at random, and the system enforces
    // the limit itself (PBS: SIGTERM then SIGKILL; LSF: SIGUSR2; HTCondor: hold).
    let (sched, file) = scheduler_on(system, &dir, &["--adapt", system, "--maximum-jobs", "1", "--cores", "2", "--walltime", "1m", "--adapt-interval", "500ms", "--log-directory", &logs]);
    let _guard = Guard(system, &file);
    let n = 80;
    let (graph, want) = sleepy_graph(n, 2.0);
    let out = submit(&dir, &file, &graph).join().unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), sched.log_text());
    assert_eq!(stdout(&out).trim(), format!("{{\"total\": {want}}}"));
    let jobs = recorded(&file);
    assert!(jobs.len() >= 2, "a replacement job was submitted ahead of the walltime: {jobs:?}");
    assert_eq!(stat(&file, "tasks_finished"), (2 * n + 1) as u64, "{}", sched.log_text());
    assert_eq!(stat(&file, "tasks_recomputed"), 0);
    assert!(stat(&file, "workers_retired") >= 1);
    assert_eq!(stat(&file, "workers_lost"), 0, "every worker left before its job's limit");
}

fn a_job_that_fails_before_its_workers_join_is_reported_with_the_systems_reason(system: &str) {
    let dir = TempDir::new(&format!("jq-{system}-fails"));
    let (sched, file) = scheduler_on(system, &dir, &["--adapt", system, "--minimum-jobs", "1", "--maximum-jobs", "1", "--adapt-interval", "500ms", "--prologue", "exit 3"]);
    let _guard = Guard(system, &file);
    wait_for("the failed job to be reported", Duration::from_secs(60), || sched.log_text().contains("before any of its workers joined"));
    let log = sched.log_text();
    let line = log.lines().find(|l| l.contains("before any of its workers joined")).unwrap();
    let want = match system {
        "lsf" => "lsf says: Exited with exit code 3.",
        "condor" => "condor says: JobStatus=4 ExitCode=3",
        _ => "says: job_state=",
    };
    assert!(line.contains(want), "{line}");
    if system == "pbs" || system == "torque" {
        assert!(line.contains("and failed Exit_status=3"), "{line}");
    }
}

#[test]
#[ignore = "needs the batch stand-ins that tests/run-all.sh installs"]
fn condor_example_worker_job_joins_and_retires_on_condor_rm() {
    let dir = TempDir::new("jq-condor-example");
    // The example names $ENV(HOME)/.taskfarm/sched.json: give it a home of its own.
    let home = dir.path().to_str().unwrap().to_string();
    std::fs::create_dir_all(dir.join(".taskfarm")).unwrap();
    let file = dir.join(".taskfarm/sched.json");
    let _sched = Proc::spawn(&["scheduler", "--scheduler-file", file.to_str().unwrap(), "--host", "127.0.0.1"], dir.join("scheduler.log"));
    wait_for("the scheduler", Duration::from_secs(20), || status(&file).is_some());
    let path = format!("{}:{}", Path::new(bin()).parent().unwrap().display(), path_for("condor"));
    let o = Command::new("condor_submit").arg(repo_file("jobscripts/condor-worker.sub")).current_dir(dir.path()).env("HOME", &home).env("PATH", &path).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let id = parse_condor_id(&stdout(&o));
    let _cleanup = CondorJob(id.clone());
    wait_for("the example worker job's worker", Duration::from_secs(60), || workers(&file).iter().any(|w| w["job"] == id.as_str() && w["name"] == id.as_str()));
    assert_eq!(workers(&file)[0]["nthreads"], 8);
    let o = Command::new("condor_rm").arg(&id).env("PATH", &path).output().unwrap();
    assert!(stdout(&o).contains(&format!("Job {id} marked for removal")), "{}", stdout(&o));
    wait_for("the worker to retire", Duration::from_secs(60), || workers(&file).is_empty());
    assert_eq!(stat(&file, "workers_retired"), 1);
    let out = dir.join(&format!("taskfarm-worker-{id}.err"));
    wait_for("the job's error file to show a graceful exit", Duration::from_secs(30), || std::fs::read_to_string(&out).unwrap_or_default().contains("retiring gracefully"));
}

fn parse_condor_id(out: &str) -> String {
    let cluster = out.lines().find_map(|l| l.strip_prefix("1 job(s) submitted to cluster ")).unwrap_or_else(|| panic!("{out}"));
    format!("{}.0", cluster.trim_end_matches('.'))
}

struct CondorJob(String);

impl Drop for CondorJob {
    fn drop(&mut self) {
        let _ = Command::new("condor_rm").arg(&self.0).env("PATH", path_for("condor")).output();
    }
}

macro_rules! on_each_standin {
    ($($name:ident),*) => {
        mod pbs { $( #[test] #[ignore = "needs the batch stand-ins that tests/run-all.sh installs"] fn $name() { super::$name("pbs") } )* }
        mod torque { $( #[test] #[ignore = "needs the batch stand-ins that tests/run-all.sh installs"] fn $name() { super::$name("torque") } )* }
        mod lsf { $( #[test] #[ignore = "needs the batch stand-ins that tests/run-all.sh installs"] fn $name() { super::$name("lsf") } )* }
        mod condor { $( #[test] #[ignore = "needs the batch stand-ins that tests/run-all.sh installs"] fn $name() { super::$name("condor") } )* }
    };
}

on_each_standin!(
    jobs_run_a_graph_then_cancel_retires_and_removes_them,
    the_systems_own_cancel_mid_graph_loses_nothing,
    adapt_grows_from_zero_for_a_backlog_and_removes_idle_jobs,
    one_minute_walltime_graph_outlives_its_jobs_without_losing_or_rerunning,
    a_job_that_fails_before_its_workers_join_is_reported_with_the_systems_reason
);
