//! Worker jobs through real batch systems: the single-machine SLURM cluster
//! started by tests/infra/slurm-up.sh (4 virtual nodes) and the Son of Grid
//! Engine cell started by tests/infra/sge-up.sh. tests/run-all.sh starts
//! both; without them these tests fail and say how to start them.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn require(system: &str) {
    let (cmd, args, script): (&str, &[&str], &str) = match system {
        "slurm" => ("sinfo", &["-h"], "tests/infra/slurm-up.sh"),
        _ => ("qstat", &["-f"], "tests/infra/sge-up.sh"),
    };
    let ok = Command::new(cmd).args(args).envs(sge_env()).output().is_ok_and(|o| o.status.success());
    assert!(ok, "no {system} cluster answers `{cmd}`: start it with `sudo bash {script}` (tests/run-all.sh does)");
}

fn sge_env() -> [(&'static str, &'static str); 2] {
    [("SGE_ROOT", "/var/lib/gridengine"), ("SGE_CELL", "default")]
}

/// Cancels whatever jobs the test submitted, even when it fails.
struct JobGuard<'a>(&'a Path);

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        let _ = Command::new(bin()).args(["jobqueue", "cancel", "--scheduler-file", self.0.to_str().unwrap()]).envs(sge_env()).output();
    }
}

fn jq(args: &[&str]) -> std::process::Output {
    Command::new(bin()).arg("jobqueue").args(args).envs(sge_env()).output().unwrap()
}

/// The jobs in the record, as `jobqueue list --all --json` shows them.
fn recorded(file: &Path) -> Vec<serde_json::Value> {
    let o = jq(&["list", "--all", "--json", "--scheduler-file", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).unwrap()
}

fn workers(file: &Path) -> Vec<serde_json::Value> {
    status(file).map(|s| s["workers"].as_array().unwrap().clone()).unwrap_or_default()
}

fn stat(file: &Path, name: &str) -> u64 {
    status(file).unwrap()["stats"][name].as_u64().unwrap()
}

/// n tasks that each sleep `secs` then produce i + 1, and their sum.
fn sleepy_graph(n: usize, secs: f64) -> (String, u64) {
    let mut g = serde_json::Map::new();
    let mut list = vec![serde_json::json!("list")];
    for i in 0..n {
        g.insert(format!("s{i}"), serde_json::json!(["sleep", secs]));
        g.insert(format!("v{i}"), serde_json::json!({"task": ["inc", i], "deps": [format!("s{i}")]}));
        list.push(serde_json::json!(format!("v{i}")));
    }
    g.insert("total".into(), serde_json::json!(["sum", list]));
    (serde_json::Value::Object(g).to_string(), (1..=n as u64).sum())
}

fn scheduler(dir: &TempDir, extra: &[&str]) -> (Proc, std::path::PathBuf) {
    let file = dir.join("sched.json");
    let mut args = vec!["scheduler", "--scheduler-file", file.to_str().unwrap(), "--host", "127.0.0.1"];
    args.extend_from_slice(extra);
    let p = Proc::spawn(&args, dir.join("scheduler.log"));
    wait_for("the scheduler", Duration::from_secs(20), || status(&file).is_some());
    (p, file)
}

fn submit(dir: &TempDir, file: &Path, graph: &str) -> std::thread::JoinHandle<std::process::Output> {
    let g = dir.write("g.json", graph);
    let f = file.to_path_buf();
    std::thread::spawn(move || taskfarm(&["submit", g.to_str().unwrap(), "--scheduler-file", f.to_str().unwrap(), "--keys", "total", "--timeout", "10m"]))
}

/// `jobqueue submit` of `n` jobs (logs in `dir`); their ids, one per line.
fn submit_jobs(dir: &TempDir, file: &Path, system: &str, n: u32, options: &[&str]) -> Vec<String> {
    let n_arg = n.to_string();
    let mut args = vec!["submit", "--system", system, "--jobs", &n_arg, "--scheduler-file", file.to_str().unwrap(), "--log-directory", dir.path().to_str().unwrap()];
    args.extend_from_slice(options);
    let o = jq(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(ids.len(), n as usize, "one job id per line: {}", stdout(&o));
    ids
}

/// Wait until exactly the workers of jobs `ids` are connected, one per job.
fn wait_for_job_workers(file: &Path, ids: &[String], timeout: Duration) {
    let mut want = ids.to_vec();
    want.sort();
    wait_for(&format!("workers from jobs {ids:?}"), timeout, || {
        let mut jobs: Vec<String> = workers(file).iter().map(|w| w["job"].as_str().unwrap().to_string()).collect();
        jobs.sort();
        jobs == want
    });
}

fn squeue_ids() -> Vec<String> {
    let o = Command::new("squeue").args(["-h", "-o", "%i"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_string).collect()
}

#[test]
#[ignore = "needs the SLURM cluster and Grid Engine cell that tests/run-all.sh starts"]
fn slurm_three_jobs_run_a_graph_then_cancel_removes_them() {
    require("slurm");
    let dir = TempDir::new("jq-slurm3");
    let (_sched, file) = scheduler(&dir, &[]);
    let _guard = JobGuard(&file);
    let f = file.to_str().unwrap();
    let ids = submit_jobs(&dir, &file, "slurm", 3, &["--cores", "2", "--memory", "1GiB", "--walltime", "10m"]);
    wait_for_job_workers(&file, &ids, Duration::from_secs(60));
    // Each worker got its share of the job: 2 threads, a limit inside 1 GiB
    // (reported with the first heartbeat).
    wait_for("heartbeats with the memory limit", Duration::from_secs(20), || workers(&file).iter().all(|w| w["memory_limit"] != 0));
    for w in workers(&file) {
        assert_eq!(w["nthreads"], 2);
        assert_eq!(w["memory_limit"], 1u64 << 30);
    }
    let list = stdout(&jq(&["list", "--scheduler-file", f]));
    for id in &ids {
        assert!(list.lines().any(|l| l.starts_with(id.as_str()) && l.contains("RUNNING") && l.ends_with("1/1")), "{list}");
    }
    let (graph, want) = sleepy_graph(150, 0.01);
    let out = submit(&dir, &file, &graph).join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("{{\"total\": {want}}}"));
    assert!(workers(&file).iter().all(|w| w["in_memory"].as_u64() == Some(0)), "results released after the client left");

    let o = jq(&["cancel", "--scheduler-file", f]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("cancelled 3 job(s)"), "{}", stderr(&o));
    wait_for("the cancelled jobs' workers to leave", Duration::from_secs(60), || workers(&file).is_empty());
    wait_for("the jobs to leave the queue", Duration::from_secs(60), || !squeue_ids().iter().any(|i| ids.contains(i)));
    assert!(recorded(&file).iter().all(|j| !j["ended"].is_null()), "the record marks them ended");
    // Cancelling again is not an error.
    let o = jq(&["cancel", "--scheduler-file", f, "--job", &ids[0]]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
#[ignore = "needs the SLURM cluster and Grid Engine cell that tests/run-all.sh starts"]
fn slurm_jobs_with_a_log_directory_that_does_not_exist_yet_start_and_write_there() {
    require("slurm");
    let dir = TempDir::new("jq-logdir");
    let (_sched, file) = scheduler(&dir, &[]);
    let _guard = JobGuard(&file);
    let logs = dir.join("logs/not/yet");
    let o = jq(&["submit", "--system", "slurm", "--scheduler-file", file.to_str().unwrap(), "--walltime", "10m", "--log-directory", logs.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    wait_for_job_workers(&file, &ids, Duration::from_secs(60));
    let out = logs.join(format!("taskfarm-worker-{}.out", ids[0]));
    wait_for("the job's output file in the new log directory", Duration::from_secs(30), || out.exists());
}

#[test]
#[ignore = "needs the SLURM cluster and Grid Engine cell that tests/run-all.sh starts"]
fn slurm_a_job_that_fails_to_launch_is_reported_with_slurms_reason() {
    require("slurm");
    let dir = TempDir::new("jq-launch-failure");
    // slurmd cannot open this output file: the job fails before it starts.
    let (sched, file) = scheduler(&dir, &["--adapt", "slurm", "--minimum-jobs", "1", "--maximum-jobs", "1", "--adapt-interval", "500ms", "--job-extra-directive=--output=/proc/no-such-dir/%j.out"]);
    let _guard = JobGuard(&file);
    wait_for("the failed job to be reported", Duration::from_secs(60), || sched.log_text().contains("before any of its workers joined"));
    let log = sched.log_text();
    let line = log.lines().find(|l| l.contains("before any of its workers joined")).unwrap();
    assert!(line.contains("ended (FAILED)") && line.contains("slurm says: JobState=FAILED Reason=JobLaunchFailure"), "{line}");
    assert!(log.contains("no new worker jobs for 10 s"), "it backs off: {log}");
}

#[test]
#[ignore = "needs the SLURM cluster and Grid Engine cell that tests/run-all.sh starts"]
fn slurm_adapt_grows_from_zero_for_a_backlog_and_removes_idle_jobs() {
    require("slurm");
    let dir = TempDir::new("jq-adapt");
    let logs = dir.path().to_str().unwrap().to_string();
    let (sched, file) = scheduler(&dir, &["--adapt", "slurm", "--minimum-jobs", "0", "--maximum-jobs", "3", "--cores", "1", "--adapt-interval", "500ms", "--log-directory", &logs]);
    let _guard = JobGuard(&file);
    // No work, no jobs: the first check decides on none.
    wait_for("the first adapt check", Duration::from_secs(10), || sched.log_text().contains("target 0 worker job(s) for 0 unfinished tasks"));
    assert!(recorded(&file).is_empty(), "no jobs before there is work");
    // 120 tasks x 0.25 s = 30 s of work for 1-core jobs: the maximum of 3.
    let (graph, want) = sleepy_graph(120, 0.25);
    let client = submit(&dir, &file, &graph);
    let out = client.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("{{\"total\": {want}}}"));
    let jobs = recorded(&file);
    assert_eq!(jobs.len(), 3, "grew to the maximum: {jobs:?}");
    assert!(jobs.iter().all(|j| j["by"] == "adapt"));
    // Idle: every job retires and leaves.
    wait_for("idle jobs to be removed", Duration::from_secs(60), || workers(&file).is_empty() && recorded(&file).iter().all(|j| !j["ended"].is_null()));
    let ids: Vec<String> = jobs.iter().map(|j| j["id"].as_str().unwrap().to_string()).collect();
    assert!(!squeue_ids().iter().any(|i| ids.contains(i)));
    assert_eq!(stat(&file, "tasks_recomputed"), 0);
    let log = sched.log_text();
    assert_eq!(log.matches("submitted worker job").count(), 3, "{log}");
}

#[test]
#[ignore = "needs the SLURM cluster and Grid Engine cell that tests/run-all.sh starts"]
fn slurm_one_minute_walltime_graph_outlives_its_jobs_without_losing_or_rerunning() {
    require("slurm");
    let dir = TempDir::new("jq-walltime");
    let logs = dir.path().to_str().unwrap().to_string();
    // Jobs of 2 cores with a 1-minute walltime (SLURM's shortest); the
    // workers retire 6 s (10%) before it, up to 3 s earlier at random.
    let (sched, file) = scheduler(&dir, &["--adapt", "slurm", "--maximum-jobs", "1", "--cores", "2", "--walltime", "1m", "--adapt-interval", "500ms", "--log-directory", &logs]);
    let _guard = JobGuard(&file);
    // 80 tasks x 2 s on 2 threads: about 80 s, longer than any one job.
    let n = 80;
    let (graph, want) = sleepy_graph(n, 2.0);
    let out = submit(&dir, &file, &graph).join().unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), sched.log_text());
    assert_eq!(stdout(&out).trim(), format!("{{\"total\": {want}}}"));
    let jobs = recorded(&file);
    assert!(jobs.len() >= 2, "a replacement job was submitted ahead of the walltime: {jobs:?}");
    // From the scheduler's record: every task finished exactly once (none
    // ran again after finishing), nothing was recomputed (no result lost).
    assert_eq!(stat(&file, "tasks_finished"), (2 * n + 1) as u64);
    assert_eq!(stat(&file, "tasks_recomputed"), 0);
    assert!(stat(&file, "workers_retired") >= 1);
    let log = sched.log_text();
    assert!(log.contains("retired"), "{log}");
}

#[test]
#[ignore = "needs the SLURM cluster and Grid Engine cell that tests/run-all.sh starts"]
fn slurm_scancel_of_a_worker_job_mid_graph_still_completes() {
    require("slurm");
    let dir = TempDir::new("jq-scancel");
    let (_sched, file) = scheduler(&dir, &[]);
    let _guard = JobGuard(&file);
    let ids = submit_jobs(&dir, &file, "slurm", 2, &["--cores", "1"]);
    wait_for_job_workers(&file, &ids, Duration::from_secs(60));
    let (graph, want) = sleepy_graph(60, 0.2);
    let client = submit(&dir, &file, &graph);
    wait_for("some tasks to finish", Duration::from_secs(60), || stat(&file, "tasks_finished") >= 20);
    let o = Command::new("scancel").arg(&ids[0]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = client.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("{{\"total\": {want}}}"));
    wait_for("the cancelled job's worker to leave", Duration::from_secs(60), || workers(&file).iter().all(|w| w["job"] != ids[0].as_str()));
    assert_eq!(workers(&file).len(), 1);
}

#[test]
#[ignore = "needs the SLURM cluster and Grid Engine cell that tests/run-all.sh starts"]
fn sge_worker_jobs_join_and_run_a_graph() {
    require("sge");
    // The cell starts jobs whatever the machine's load (CI is busy).
    let q = Command::new("qconf").args(["-sq", "all.q"]).envs(sge_env()).output().unwrap();
    assert!(stdout(&q).lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["load_thresholds", "NONE"]), "{}", stdout(&q));
    let dir = TempDir::new("jq-sge");
    let (_sched, file) = scheduler(&dir, &[]);
    let _guard = JobGuard(&file);
    let f = file.to_str().unwrap();
    let ids = submit_jobs(&dir, &file, "sge", 2, &["--cores", "1", "--walltime", "10m"]);
    wait_for_job_workers(&file, &ids, Duration::from_secs(90));
    let list = stdout(&jq(&["list", "--scheduler-file", f]));
    // Running is "r" (or "t" while Grid Engine is still transferring the job).
    assert_eq!(list.lines().filter(|l| l.contains(" sge ") && (l.contains(" r ") || l.contains(" t ")) && l.ends_with("1/1")).count(), 2, "{list}");
    let (graph, want) = sleepy_graph(100, 0.01);
    let out = submit(&dir, &file, &graph).join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("{{\"total\": {want}}}"));
    let o = jq(&["cancel", "--scheduler-file", f]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for("the workers to leave", Duration::from_secs(60), || workers(&file).is_empty());
    // They retired before their jobs were deleted: left gracefully, not lost.
    let stats = &status(&file).unwrap()["stats"];
    assert_eq!((stats["workers_retired"].as_u64(), stats["workers_lost"].as_u64()), (Some(2), Some(0)), "{}", stderr(&o));
}

fn repo_file(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel).to_str().unwrap().to_string()
}

/// PATH with this build's taskfarm first, as a job on a real site gets it from a module.
fn path_with_taskfarm() -> String {
    let bin_dir = Path::new(bin()).parent().unwrap().to_str().unwrap().to_string();
    format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default())
}

#[test]
#[ignore = "needs the SLURM cluster and Grid Engine cell that tests/run-all.sh starts"]
fn slurm_example_scheduler_job_adapts_from_inside_a_job() {
    require("slurm");
    let dir = TempDir::new("jq-example");
    let (graph, want) = sleepy_graph(40, 0.05);
    dir.write("graph.json", &graph);
    let sched = dir.join("sched.json");
    // The script's knobs, scaled to the test cluster's 4-CPU, 4 GB nodes.
    let export = format!(
        "ALL,PATH={},TASKFARM_SCHEDULER_FILE={},IFACE=lo,CORES=1,MEMORY=500MB,WALLTIME=10m,JOBS_MAX=2",
        path_with_taskfarm(),
        sched.display()
    );
    let _guard = JobGuard(&sched);
    let o = Command::new("sbatch")
        .args(["--wait", "--chdir", dir.path().to_str().unwrap(), "--export", &export, &repo_file("jobscripts/slurm-scheduler.sh"), "graph.json"])
        .output()
        .unwrap();
    let out_files: String = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".out"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(o.status.success(), "the scheduler job failed: {}\n{out_files}", stderr(&o));
    let results = std::fs::read_to_string(dir.join("results.json")).unwrap();
    assert_eq!(results.trim(), format!("{{\"total\": {want}}}"));
    let jobs = recorded(&sched);
    assert!(!jobs.is_empty() && jobs.len() <= 2, "worker jobs submitted from inside the scheduler's job: {jobs:?}");
    assert!(out_files.contains("submitted worker job"), "{out_files}");
}

#[test]
#[ignore = "needs the SLURM cluster and Grid Engine cell that tests/run-all.sh starts"]
fn slurm_example_worker_job_joins_and_retires_on_scancel() {
    require("slurm");
    let dir = TempDir::new("jq-example-worker");
    let (_sched, file) = scheduler(&dir, &[]);
    let export = format!("ALL,PATH={},TASKFARM_SCHEDULER_FILE={},IFACE=lo", path_with_taskfarm(), file.display());
    // Command-line options override the script's #SBATCH sizes for the small test nodes.
    let o = Command::new("sbatch")
        .args(["--parsable", "--cpus-per-task=1", "--mem=500M", "--time=5", "--chdir", dir.path().to_str().unwrap(), "--export", &export, &repo_file("jobscripts/slurm-worker.sh")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    wait_for("the example worker job's worker", Duration::from_secs(60), || workers(&file).iter().any(|w| w["job"] == id.as_str()));
    let out = dir.join(&format!("taskfarm-worker-{id}.out"));
    // It asked SLURM for the time left (5 minutes, a second or so gone): a 10% margin.
    wait_for("the worker's walltime line", Duration::from_secs(20), || std::fs::read_to_string(&out).unwrap_or_default().contains("walltime"));
    let log = std::fs::read_to_string(&out).unwrap();
    assert!(log.contains("from the time left in this slurm job") && (log.contains("retiring 29 s before") || log.contains("retiring 30 s before")), "{log}");
    assert!(Command::new("scancel").arg(&id).status().unwrap().success());
    wait_for("the worker to retire", Duration::from_secs(60), || workers(&file).is_empty());
    wait_for("the job's output to show a graceful exit", Duration::from_secs(30), || std::fs::read_to_string(&out).unwrap_or_default().contains("retiring gracefully"));
}

#[test]
#[ignore = "needs the SLURM cluster and Grid Engine cell that tests/run-all.sh starts"]
fn site_rejections_and_bad_options_are_clear() {
    require("slurm");
    let dir = TempDir::new("jq-errors");
    let f = dir.join("sched.json");
    let f = f.to_str().unwrap();
    // The batch system's own message, and where the script is.
    let o = jq(&["submit", "--system", "slurm", "--queue", "nosuch", "--scheduler-file", f]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("invalid partition") && stderr(&o).contains("sched.json.submit.sh"), "{}", stderr(&o));
    assert!(recorded(&dir.join("sched.json")).is_empty(), "nothing recorded");
    for (args, want) in [
        (vec!["--walltime", "30"], "has no unit"),
        (vec!["--memory", "16"], "give a size with a unit"),
        (vec!["--cores", "2", "--processes", "3"], "--processes 3 must be between 1 and --cores (2)"),
        (vec!["--walltime", "10m", "--walltime-margin", "20m"], "must be shorter than --walltime"),
    ] {
        let mut a = vec!["script", "--system", "slurm", "--scheduler-file", f];
        a.extend(args);
        let o = jq(&a);
        assert_eq!(o.status.code(), Some(2), "{a:?}");
        assert!(stderr(&o).contains(want), "{a:?}: {}", stderr(&o));
    }
    let o = jq(&["cancel", "--scheduler-file", f, "--job", "12345"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("job 12345 is not in"), "{}", stderr(&o));
    let o = jq(&["script", "--system", "nosuch"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown batch system 'nosuch'"), "{}", stderr(&o));
    let o = jq(&["script", "--system", "condor", "--queue", "long"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("HTCondor has no queues"), "{}", stderr(&o));
}

/// A campaign of about 2.5 allocations of work, run as a chain of SLURM
/// jobs of 1 minute (SLURM's shortest walltime) with
/// jobscripts/slurm-campaign.sh: each job runs the same graph against one
/// result cache. The chain finishes with the right result, and the tasks
/// executed are the graph's plus at most two per thread and stopped job
/// (every task logs its runs).
#[test]
#[ignore = "needs the SLURM cluster and Grid Engine cell that tests/run-all.sh starts"]
fn slurm_campaign_of_one_minute_jobs_finishes_through_the_cache() {
    require("slurm");
    let dir = TempDir::new("jq-campaign");
    let runs = dir.join("runs.log");
    let n = 300;
    let mut g = serde_json::Map::new();
    let mut parts = vec![serde_json::json!("concat")];
    for i in 0..n {
        let script = format!("echo {i} >> {}; sleep 1; echo {i}", runs.display());
        g.insert(format!("t{i}"), serde_json::json!({"cmd": ["sh", "-c", script], "cache": true}));
        parts.push(serde_json::json!(format!("t{i}")));
    }
    g.insert("total".into(), serde_json::json!(parts));
    dir.write("graph.json", &serde_json::Value::Object(g).to_string());
    let want: String = (0..n).map(|i| format!("{i}\n")).collect();
    let export = format!(
        "ALL,PATH={},TASKFARM_CACHE={},TASKFARM_SCHEDULER_FILE={},IFACE=lo,TASKFARM_MPI_OPTIONS=--nthreads 2",
        path_with_taskfarm(),
        dir.join("cache").display(),
        dir.join("sched.json").display()
    );
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..5 {
        let mut args = vec!["--parsable".to_string(), "--time=1".into(), "--nodes=3".into(), "--ntasks=3".into(), "--ntasks-per-node=1".into()];
        args.extend(["--chdir".into(), dir.path().to_str().unwrap().to_string(), "--export".into(), export.clone()]);
        if let Some(prev) = ids.last() {
            args.push(format!("--dependency=afterany:{prev}"));
        }
        args.extend([repo_file("jobscripts/slurm-campaign.sh"), "graph.json".into()]);
        let o = Command::new("sbatch").args(&args).output().unwrap();
        assert!(o.status.success(), "sbatch: {}", stderr(&o));
        ids.push(stdout(&o).trim().split(';').next().unwrap().to_string());
    }
    struct Cancel(Vec<String>);
    impl Drop for Cancel {
        fn drop(&mut self) {
            let _ = Command::new("scancel").args(&self.0).output();
        }
    }
    let _cancel = Cancel(ids.clone());
    let results = dir.join("results.json");
    wait_for("the campaign's results", Duration::from_secs(600), || results.exists());
    let outputs: String = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".out"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    let got: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert_eq!(got["total"], want.as_str(), "{outputs}");
    let finisher = ids.iter().position(|id| outputs.contains(&format!("campaign finished in job {id}"))).expect("a job finished it");
    assert!(finisher >= 1, "the work needs more than one 1-minute job: finished by the first");
    let executed = std::fs::read_to_string(&runs).unwrap().lines().count();
    // Every task ran; beyond that, per stopped job and thread, the task it
    // was running when SLURM signalled the job (the signal kills that
    // command too) and at most one more: a worker retiring on SIGTERM still
    // starts its next queued task while its scheduler shuts down
    // (docs/campaigns.md says so). 2 threads.
    assert!(executed >= n && executed <= n + 2 * 2 * finisher, "{executed} executions of {n} tasks over {} jobs", finisher + 1);
}

/// `taskfarm mpi` under srun across 3 virtual nodes: ranks from SLURM's
/// environment (no mpirun), rank 1 runs the client.
#[test]
#[ignore = "needs the SLURM cluster and Grid Engine cell that tests/run-all.sh starts"]
fn slurm_srun_launches_taskfarm_mpi_in_batch_mode() {
    require("slurm");
    let dir = TempDir::new("jq-srun");
    let sched = dir.join("sched.json");
    let seed = repo_file("examples/seed.json");
    let o = Command::new("srun")
        .args(["-n", "3", "-N", "3", "--chdir", dir.path().to_str().unwrap(), bin(), "mpi", "--scheduler-file", sched.to_str().unwrap(), "--interface", "lo", "--", bin(), "submit", &seed])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "{\"z\": 12}");
    let log = stderr(&o);
    assert!(log.contains("worker 'worker-2' serving data"), "rank 2 became the worker: {log}");
    assert!(log.contains("batch command exited with status 0"), "{log}");
}

#[path = "jobqueue/standins.rs"]
mod standins;
