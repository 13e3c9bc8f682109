//! `taskfarm mpi` under real launchers: Open MPI's mpirun and MPICH's Hydra
//! (tests/run-all.sh installs both), and across network-namespace hosts.
//!
//! Built without the `mpi` feature, the binary finds its rank from the
//! launcher's environment and works under both. Built with it (linked to
//! Open MPI), it works under Open MPI and must refuse to run under MPICH.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SEED: &str = r#"{"x": 1, "y": ["inc", "x"], "z": ["add", "y", 10]}"#;
const LINKED_TO_MPI: bool = cfg!(feature = "mpi");

#[derive(Clone, Copy, Debug)]
enum Launcher {
    OpenMpi,
    Mpich,
}

fn launcher(l: Launcher, np: u32) -> Command {
    let (prog, extra): (&str, &[&str]) = match l {
        // root needs --allow-run-as-root; 2 cores need --oversubscribe for np > 2;
        // taskfarm does its own binding, so Open MPI's is switched off.
        Launcher::OpenMpi => ("mpirun", &["--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]),
        Launcher::Mpich => ("mpirun.mpich", &[]),
    };
    assert!(
        Command::new("sh").args(["-c", &format!("command -v {prog}")]).stdout(Stdio::null()).status().unwrap().success(),
        "{prog} is not installed: tests/run-all.sh installs openmpi-bin and mpich"
    );
    let mut c = Command::new(prog);
    c.args(extra).args(["-np", &np.to_string()]).env_remove("TASKFARM_SCHEDULER_FILE");
    c
}

fn spawn_logged(mut c: Command, log: std::path::PathBuf) -> Proc {
    let f = std::fs::File::create(&log).unwrap();
    let child = c.stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f).spawn().unwrap();
    Proc { child, log }
}

fn serve_mode(l: Launcher) {
    let d = TempDir::new("mpiserve");
    let file = d.join("s.json");
    let mut c = launcher(l, 4);
    c.args([bin(), "mpi", "--scheduler-file", file.to_str().unwrap(), "--local-directory", d.path().to_str().unwrap()]);
    let mut job = spawn_logged(c, d.join("mpirun.log"));
    wait_for("3 workers to register", Duration::from_secs(60), || {
        status(&file).is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(3))
    });
    let s = status(&file).unwrap();
    let mut names: Vec<String> = s["workers"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap().to_string()).collect();
    names.sort();
    assert_eq!(names, ["worker-1", "worker-2", "worker-3"]);
    let g = d.write("g.json", SEED);
    let o = taskfarm(&["submit", g.to_str().unwrap(), "--scheduler-file", file.to_str().unwrap()]);
    assert_eq!(stdout(&o), "{\"z\": 12}\n", "{}", stderr(&o));
    let o = taskfarm(&["shutdown", "--scheduler-file", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(job.wait_exit(Duration::from_secs(60)), Some(0), "{}", job.log_text());
    assert!(!file.exists(), "scheduler file removed");
}

fn batch_mode(l: Launcher) {
    let d = TempDir::new("mpibatch");
    let file = d.join("s.json");
    let g = d.write("g.json", SEED);
    let mut c = launcher(l, 4);
    // The command finds the scheduler through TASKFARM_SCHEDULER_FILE.
    c.args([bin(), "mpi", "--scheduler-file", file.to_str().unwrap(), "--", bin(), "submit", g.to_str().unwrap()]);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("{\"z\": 12}"), "{}", stdout(&o));
    assert!(!file.exists());

    // A failing command fails the job, quickly.
    let start = Instant::now();
    let mut c = launcher(l, 3);
    c.args([bin(), "mpi", "--scheduler-file", file.to_str().unwrap(), "--", "sh", "-c", "exit 7"]);
    let o = c.output().unwrap();
    assert!(!o.status.success(), "a failing command must fail the job");
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());
}

/// `--journal` on rank 0: a batch job leaves its journal (0600) behind, and
/// a second launch with it resumes from it (with the journal's secret, which
/// its ranks then use) and runs its own command.
fn batch_mode_with_a_journal(l: Launcher) {
    let d = TempDir::new("mpijournal");
    let file = d.join("s.json");
    let journal = d.join("journal");
    let g = d.write("g.json", SEED);
    for round in 0..2 {
        let mut c = launcher(l, 3);
        c.args([bin(), "mpi", "--scheduler-file", file.to_str().unwrap(), "--journal", journal.to_str().unwrap(), "--", bin(), "submit", g.to_str().unwrap()]);
        let o = c.output().unwrap();
        let text = format!("{}{}", stdout(&o), stderr(&o));
        assert_eq!(o.status.code(), Some(0), "round {round}: {text}");
        assert!(stdout(&o).contains("{\"z\": 12}"), "{text}");
        assert_eq!(round == 1, text.contains("resuming from journal"), "round {round}: {text}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&journal).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn open_mpi_batch_mode_with_a_journal() {
    batch_mode_with_a_journal(Launcher::OpenMpi);
}

fn killed_worker_rank_ends_the_job(l: Launcher) {
    let d = TempDir::new("mpikill");
    let file = d.join("s.json");
    let mut text = String::from("{");
    for i in 0..40 {
        text.push_str(&format!("\"s{i}\": [\"sleep\", 0.5], "));
    }
    text.push_str("\"done\": {\"task\": 1, \"deps\": [");
    text.push_str(&(0..40).map(|i| format!("\"s{i}\"")).collect::<Vec<_>>().join(", "));
    text.push_str("]}}");
    let g = d.write("g.json", &text);
    let mut c = launcher(l, 4);
    c.args([bin(), "mpi", "--scheduler-file", file.to_str().unwrap(), "--", bin(), "submit", g.to_str().unwrap()]);
    let mut job = spawn_logged(c, d.join("mpirun.log"));
    let mut victim = 0u64;
    wait_for("a worker to be running tasks", Duration::from_secs(60), || {
        status(&file).is_some_and(|s| {
            s["workers"].as_array().unwrap().iter().find(|w| w["processing"].as_u64() > Some(0)).map(|w| victim = w["pid"].as_u64().unwrap()).is_some()
        })
    });
    let start = Instant::now();
    assert!(Command::new("kill").args(["-KILL", &victim.to_string()]).status().unwrap().success());
    let code = job.wait_exit(Duration::from_secs(90));
    assert!(code.is_some(), "the job must end, not hang, after a worker rank is killed: {}", job.log_text());
    assert!(start.elapsed() < Duration::from_secs(90));
}

fn worker_that_never_starts_fails_the_job_in_bounded_time(l: Launcher) {
    let d = TempDir::new("mpimissing");
    let file = d.join("s.json");
    // Rank 2's worker looks for the wrong scheduler file, so it never
    // registers (and gives up after its own --death-timeout); rank 1 waits
    // --death-timeout for it, then fails the job.
    let rank_var = match l {
        Launcher::OpenMpi => "OMPI_COMM_WORLD_RANK",
        Launcher::Mpich => "PMI_RANK",
    };
    let script = if LINKED_TO_MPI {
        // Linked to MPI, workers get the address by broadcast, not from the
        // file: the missing worker is a rank that never starts taskfarm.
        format!("if [ \"${rank_var}\" = 2 ]; then sleep 1; exit 0; fi; exec {} mpi --scheduler-file {} --death-timeout 2s -- true", bin(), file.display())
    } else {
        format!(
            // Rank 2 waits longer than rank 1, so rank 1's report comes first.
            "f={file}; t=2s; if [ \"${rank_var}\" = 2 ]; then f={file}.elsewhere; t=10s; fi; exec {bin} mpi --scheduler-file $f --death-timeout $t -- true",
            bin = bin(),
            file = file.display()
        )
    };
    let start = Instant::now();
    let mut c = launcher(l, 3);
    c.args(["sh", "-c", &script]);
    let o = c.output().unwrap();
    assert!(!o.status.success());
    let text = format!("{}{}", stdout(&o), stderr(&o));
    if !LINKED_TO_MPI {
        assert!(text.contains("only 0 of 1 workers registered within 2 s"), "{text}");
    }
    assert!(start.elapsed() < Duration::from_secs(45), "took {:?}", start.elapsed());
}

/// Two batch jobs on one scheduler-file path, the second started while the
/// first is starting (as job arrays and a fixed `$HOME/.taskfarm/s.json` do):
/// each job's workers join only its own scheduler, each gets its own result,
/// neither shuts the other down, and nothing is left running.
fn jobs_sharing_a_scheduler_file_path(l: Launcher, rounds: u32) {
    let d = TempDir::new("mpishare");
    let file = d.join("s.json");
    for round in 0..rounds {
        let mut jobs = Vec::new();
        for (tag, add) in [("a", 100), ("b", 200)] {
            // A 0.3 s task keeps both jobs alive together; the command then
            // lists the workers its scheduler has.
            let g = d.write(&format!("g-{tag}.json"), &format!(r#"{{"s": ["sleep", 0.3], "z": ["add", {add}, 1], "done": {{"task": ["add", "z", 0], "deps": ["s"]}}}}"#));
            let mut c = launcher(l, 4);
            let script = format!("{bin} submit {g} && {bin} status --json", bin = bin(), g = g.display());
            c.args([bin(), "mpi", "--scheduler-file", file.to_str().unwrap(), "--name", tag, "--death-timeout", "60s", "--", "sh", "-c", &script]);
            let child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            jobs.push((tag, add, child));
            if tag == "a" {
                // The second job starts once the first one's file is there (within 1 s of it).
                wait_for("job a's scheduler file", Duration::from_secs(60), || file.exists());
            }
        }
        for (tag, add, child) in jobs {
            let o = child.wait_with_output().unwrap();
            let (out, err) = (stdout(&o), stderr(&o));
            assert_eq!(o.status.code(), Some(0), "round {round}, job {tag}:\n{out}\n{err}");
            assert!(out.contains(&format!("{{\"done\": {}}}", add + 1)), "round {round}, job {tag}: {out}");
            let status_text = &out[out.find("{\n").unwrap_or_else(|| panic!("round {round}, job {tag}: no status in {out}"))..];
            let status: serde_json::Value = serde_json::from_str(status_text).unwrap_or_else(|e| panic!("{e}: {status_text}"));
            let mut names: Vec<&str> = status["workers"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
            names.sort();
            assert_eq!(names, [format!("{tag}-2"), format!("{tag}-3")], "round {round}: job {tag}'s scheduler had other workers");
        }
        let left = Command::new("pgrep").args(["-f", d.path().to_str().unwrap()]).output().unwrap();
        assert!(left.stdout.is_empty(), "round {round}: processes left running: {}", stdout(&left));
    }
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn open_mpi_jobs_sharing_a_scheduler_file_path_stay_apart() {
    jobs_sharing_a_scheduler_file_path(Launcher::OpenMpi, 10);
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn mpich_jobs_sharing_a_scheduler_file_path_stay_apart() {
    if !LINKED_TO_MPI {
        jobs_sharing_a_scheduler_file_path(Launcher::Mpich, 10);
    }
}

/// The workers of `taskfarm mpi` take `--resources` and `--lifetime` as
/// `taskfarm worker` does: a task needing a GPU runs on them, and they
/// retire gracefully when their lifetime ends (the scheduler stays).
fn worker_ranks_honour_resources_and_lifetime(l: Launcher) {
    let d = TempDir::new("mpileave");
    let file = d.join("s.json");
    let two_workers = || status(&file).is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(2));
    let mut c = launcher(l, 3);
    c.args([bin(), "mpi", "--scheduler-file", file.to_str().unwrap(), "--resources", "gpus=1"]);
    let mut job = spawn_logged(c, d.join("mpirun-resources.log"));
    wait_for("2 workers to register", Duration::from_secs(60), two_workers);
    let g = d.write("g.json", r#"{"g": {"task": ["inc", 1], "resources": {"gpus": 1}}}"#);
    let o = taskfarm(&["submit", g.to_str().unwrap(), "--scheduler-file", file.to_str().unwrap(), "--timeout", "30s"]);
    assert_eq!(stdout(&o), "{\"g\": 2}\n", "a task needing a GPU runs on the ranks that offer one: {}", stderr(&o));
    let o = taskfarm(&["shutdown", "--scheduler-file", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(job.wait_exit(Duration::from_secs(60)), Some(0), "{}", job.log_text());

    let mut c = launcher(l, 3);
    c.args([bin(), "mpi", "--scheduler-file", file.to_str().unwrap(), "--lifetime", "2s"]);
    let mut job = spawn_logged(c, d.join("mpirun-lifetime.log"));
    wait_for("both workers to retire at the end of their lifetime", Duration::from_secs(60), || {
        status(&file).is_some_and(|s| s["stats"]["workers_retired"].as_u64() == Some(2) && s["workers"].as_array().map(|w| w.len()) == Some(0))
    });
    assert_eq!(status(&file).unwrap()["stats"]["workers_lost"].as_u64(), Some(0), "retired, not lost");
    let o = taskfarm(&["shutdown", "--scheduler-file", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(job.wait_exit(Duration::from_secs(60)), Some(0), "{}", job.log_text());
    assert!(job.log_text().contains("reached its lifetime"), "{}", job.log_text());
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn open_mpi_worker_ranks_honour_resources_and_lifetime() {
    worker_ranks_honour_resources_and_lifetime(Launcher::OpenMpi);
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn mpich_worker_ranks_honour_resources_and_lifetime() {
    under_mpich(worker_ranks_honour_resources_and_lifetime);
}

/// A process that is gone (or a zombie nobody reaped yet).
fn gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// `kill -9` of the launcher: no rank may go on running; each notices its
/// parent is gone and exits within seconds.
fn killed_launcher_leaves_no_rank_running(l: Launcher) {
    let d = TempDir::new("mpilost");
    let file = d.join("s.json");
    let mut c = launcher(l, 3);
    c.args([bin(), "mpi", "--scheduler-file", file.to_str().unwrap()]);
    let mut job = spawn_logged(c, d.join("mpirun.log"));
    wait_for("2 workers to register", Duration::from_secs(60), || status(&file).is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(2)));
    let mut ranks: Vec<u64> = status(&file).unwrap()["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_u64().unwrap()).collect();
    ranks.push(taskfarm::schedfile::SchedulerFile::read(&file).unwrap().pid as u64);
    assert!(Command::new("kill").args(["-KILL", &job.child.id().to_string()]).status().unwrap().success());
    let _ = job.child.wait();
    wait_for("every rank to exit after its launcher was killed", Duration::from_secs(10), || ranks.iter().all(|&p| gone(p)));
    if matches!(l, Launcher::OpenMpi) {
        // Open MPI leaves the ranks alone: they noticed and cleaned up. (Hydra's
        // proxy kills its ranks itself when mpiexec goes.)
        assert!(!file.exists(), "rank 0 removed its scheduler file");
    }
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn open_mpi_killed_launcher_leaves_no_rank_running() {
    killed_launcher_leaves_no_rank_running(Launcher::OpenMpi);
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn mpich_killed_launcher_leaves_no_rank_running() {
    under_mpich(killed_launcher_leaves_no_rank_running);
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn open_mpi_serve_mode() {
    serve_mode(Launcher::OpenMpi);
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn open_mpi_batch_mode() {
    batch_mode(Launcher::OpenMpi);
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn open_mpi_killed_worker_rank_ends_the_job() {
    killed_worker_rank_ends_the_job(Launcher::OpenMpi);
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn open_mpi_missing_worker_fails_in_bounded_time() {
    worker_that_never_starts_fails_the_job_in_bounded_time(Launcher::OpenMpi);
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn mpich_serve_mode() {
    under_mpich(serve_mode);
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn mpich_batch_mode() {
    under_mpich(batch_mode);
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn mpich_killed_worker_rank_ends_the_job() {
    under_mpich(killed_worker_rank_ends_the_job);
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn mpich_missing_worker_fails_in_bounded_time() {
    under_mpich(worker_that_never_starts_fails_the_job_in_bounded_time);
}

/// Run `scenario` under MPICH's launcher; a binary linked to Open MPI
/// (`--features mpi`) cannot run there, so it must refuse instead.
fn under_mpich(scenario: fn(Launcher)) {
    if LINKED_TO_MPI {
        mpich_refuses_a_binary_linked_to_open_mpi();
    } else {
        scenario(Launcher::Mpich);
    }
}

/// Built with `--features mpi` against Open MPI and started by MPICH's
/// launcher, every process would be a singleton "rank 0 of 1": each must
/// notice the mismatch with the environment and stop.
fn mpich_refuses_a_binary_linked_to_open_mpi() {
    let d = TempDir::new("mismatch");
    let mut c = launcher(Launcher::Mpich, 3);
    c.args([bin(), "mpi", "--scheduler-file", d.join("s.json").to_str().unwrap()]);
    let o = c.output().unwrap();
    assert!(!o.status.success());
    let text = stderr(&o);
    assert!(text.contains("the MPI library says rank 0 of 1") && text.contains("different MPI"), "{text}");
    assert!(!d.join("s.json").exists(), "no rank may have become a scheduler");
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn plain_process_is_refused_and_sizes_are_checked() {
    let o = Command::new(bin()).args(["mpi", "--scheduler-file", "/nonexistent/s.json"]).env_remove("OMPI_COMM_WORLD_RANK").output().unwrap();
    if !LINKED_TO_MPI {
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("not started by an MPI launcher"), "{}", stderr(&o));
    } else {
        // A singleton MPI process: world size 1 is too small.
        assert!(stderr(&o).contains("not started by an MPI launcher") || stderr(&o).contains("at least 2 processes"), "{}", stderr(&o));
    }
    let mut c = launcher(Launcher::OpenMpi, 2);
    c.args([bin(), "mpi", "--scheduler-file", "/nonexistent/s.json", "--", "true"]);
    let o = c.output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs at least 3 processes"), "{}", stderr(&o));
}

/// Per-thread allowed CPUs of a process, from /proc.
fn thread_cpus(pid: u64) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        if let Some(l) = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")) {
            out.push(taskfarm::node::parse_cpu_list(l.trim()).unwrap());
        }
    }
    out
}

fn worker_pids(file: &std::path::Path) -> Vec<u64> {
    status(file).unwrap()["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_u64().unwrap()).collect()
}

/// Under `taskset -c 1` (an inherited mask, as a batch system's binding or a
/// cpuset gives it), every rank stays inside CPU 1, bound by default, and
/// starts; with `--bind cores` too.
fn ranks_stay_inside_an_inherited_cpu_mask(l: Launcher) {
    let online = taskfarm::node::parse_cpu_list(&std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap()).unwrap();
    assert!(online.contains(&1), "needs CPU 1");
    for bind in [None, Some("cores")] {
        let d = TempDir::new("taskset");
        let file = d.join("s.json");
        let inner = launcher(l, 3);
        let mut c = Command::new("taskset");
        c.args(["-c", "1"]).arg(inner.get_program()).args(inner.get_args()).env_remove("TASKFARM_SCHEDULER_FILE");
        c.args([bin(), "mpi", "--scheduler-file", file.to_str().unwrap()]);
        if let Some(b) = bind {
            c.args(["--bind", b]);
        }
        let mut job = spawn_logged(c, d.join("mpirun.log"));
        assert_ranks_on_cpu_1(&file, &job, &format!("{bind:?}"));
        assert!(!job.log_text().contains("cannot bind"), "{}", job.log_text());
        taskfarm(&["shutdown", "--scheduler-file", file.to_str().unwrap()]);
        assert_eq!(job.wait_exit(Duration::from_secs(60)), Some(0), "{}", job.log_text());
    }
}

/// Once both workers registered: every thread of every rank (the workers and
/// the scheduler) may run on CPU 1 only.
fn assert_ranks_on_cpu_1(file: &std::path::Path, job: &Proc, what: &str) {
    wait_for("2 workers", Duration::from_secs(60), || status(file).is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(2)));
    let mut pids = worker_pids(file);
    pids.push(taskfarm::schedfile::SchedulerFile::read(file).unwrap().pid as u64);
    for p in pids {
        for t in thread_cpus(p) {
            assert_eq!(t, vec![1], "{what}: rank {p} runs outside the allowed CPU 1: {}", job.log_text());
        }
    }
}

/// A cgroup-v1 cpuset holding CPU 1 only (removed when dropped).
struct Cpuset(std::path::PathBuf);

impl Cpuset {
    fn new(tag: &str) -> Cpuset {
        let root = std::path::Path::new("/sys/fs/cgroup/cpuset");
        assert!(root.join("cpuset.cpus").exists(), "no cgroup-v1 cpuset hierarchy at {} (tests/run-all.sh excludes this test there)", root.display());
        let dir = root.join(format!("tf-test-{tag}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cpuset.cpus"), "1").unwrap();
        std::fs::write(dir.join("cpuset.mems"), std::fs::read_to_string(root.join("cpuset.mems")).unwrap().trim()).unwrap();
        Cpuset(dir)
    }
}

impl Drop for Cpuset {
    fn drop(&mut self) {
        // The cgroup can go once its processes have (they are ended by now).
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Inside a cgroup-v1 cpuset of CPU 1 (a batch system's allocation), the
/// default build binds inside it instead of aborting with "Invalid argument".
#[test]
#[ignore = "needs root, Open MPI and a cgroup-v1 cpuset hierarchy: tests/run-all.sh runs it where there is one"]
fn open_mpi_ranks_stay_inside_a_cgroup_v1_cpuset() {
    let set = Cpuset::new("cpuset");
    let d = TempDir::new("cpuset");
    let file = d.join("s.json");
    let inner = launcher(Launcher::OpenMpi, 3);
    let mut line = format!("echo $$ > {}/tasks && exec {}", set.0.display(), inner.get_program().to_str().unwrap());
    for a in inner.get_args() {
        line.push(' ');
        line.push_str(a.to_str().unwrap());
    }
    line.push_str(&format!(" {} mpi --scheduler-file {}", bin(), file.display()));
    let mut c = Command::new("sh");
    c.args(["-c", &line]).env_remove("TASKFARM_SCHEDULER_FILE");
    let mut job = spawn_logged(c, d.join("mpirun.log"));
    assert_ranks_on_cpu_1(&file, &job, "cgroup-v1 cpuset");
    taskfarm(&["shutdown", "--scheduler-file", file.to_str().unwrap()]);
    assert_eq!(job.wait_exit(Duration::from_secs(60)), Some(0), "{}", job.log_text());
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn open_mpi_ranks_stay_inside_an_inherited_cpu_mask() {
    ranks_stay_inside_an_inherited_cpu_mask(Launcher::OpenMpi);
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn mpich_ranks_stay_inside_an_inherited_cpu_mask() {
    under_mpich(ranks_stay_inside_an_inherited_cpu_mask);
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn binding_gives_workers_disjoint_cpus_and_none_leaves_them() {
    let online = taskfarm::node::parse_cpu_list(&std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap()).unwrap();
    assert!(online.len() >= 2, "needs 2 CPUs");
    for (policy, expect_disjoint) in [("cores", true), ("none", false)] {
        let d = TempDir::new("bind");
        let file = d.join("s.json");
        let mut c = launcher(Launcher::OpenMpi, 3);
        c.args([bin(), "mpi", "--scheduler-file", file.to_str().unwrap(), "--bind", policy]);
        let mut job = spawn_logged(c, d.join("mpirun.log"));
        wait_for("2 workers", Duration::from_secs(60), || status(&file).is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(2)));
        let pids = worker_pids(&file);
        let sets: Vec<Vec<Vec<u32>>> = pids.iter().map(|&p| thread_cpus(p)).collect();
        for threads in &sets {
            assert!(threads.len() > 2, "worker threads seen: {threads:?}");
        }
        if expect_disjoint {
            let a: std::collections::BTreeSet<u32> = sets[0].iter().flatten().copied().collect();
            let b: std::collections::BTreeSet<u32> = sets[1].iter().flatten().copied().collect();
            assert!(a.is_disjoint(&b), "--bind cores: worker CPUs overlap: {a:?} vs {b:?}");
        } else {
            for threads in &sets {
                for t in threads {
                    assert_eq!(t, &online, "--bind none leaves the launcher's binding (none here)");
                }
            }
        }
        taskfarm(&["shutdown", "--scheduler-file", file.to_str().unwrap()]);
        assert_eq!(job.wait_exit(Duration::from_secs(60)), Some(0), "{}", job.log_text());
    }
}

#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn unknown_interface_lists_the_real_ones() {
    let d = TempDir::new("iface");
    let mut c = launcher(Launcher::OpenMpi, 2);
    c.args([bin(), "mpi", "--scheduler-file", d.join("s.json").to_str().unwrap(), "--interface", "ib9"]);
    let o = c.output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no network interface named 'ib9'") && stderr(&o).contains("lo (127.0.0.1"), "{}", stderr(&o));
    let o = taskfarm(&["worker", "--interface", "ib9", "--scheduler-file", d.join("s.json").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no network interface named 'ib9'"));
}

/// Three namespace "hosts", each with eth0 (10.10.0.i) and ib0 (10.20.0.i);
/// Open MPI starts ranks across them through a fake ssh.
#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn multi_host_over_ib0() {
    let infra = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/infra");
    let prefix = format!("tf{}", std::process::id() % 100000);
    let hosts = infra.join("netns-hosts.sh");
    let up = Command::new(&hosts).args(["up", "3"]).env("NETNS_PREFIX", &prefix).output().unwrap();
    assert!(up.status.success(), "netns setup (needs root and iproute2): {}", stderr(&up));
    struct Down(std::path::PathBuf, String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = Command::new(&self.0).args(["down", "3"]).env("NETNS_PREFIX", &self.1).status();
        }
    }
    let _down = Down(hosts.clone(), prefix.clone());
    let h = |i: u32| format!("{prefix}{i}");
    let d = TempDir::new("multihost");
    let file = d.join("s.json");
    let in_h1 = |args: &[&str]| -> std::process::Output {
        Command::new("ip").args(["netns", "exec", &h(1)]).arg(bin()).args(args).output().unwrap()
    };
    let mpirun = format!(
        "hostname {h1}; exec mpirun --allow-run-as-root --oversubscribe --bind-to none --mca plm_rsh_agent {rsh} \
         --host {h1}:2,{h2}:1,{h3}:1 -np 4 {bin} mpi --scheduler-file {file} --interface ib0",
        h1 = h(1),
        h2 = h(2),
        h3 = h(3),
        rsh = infra.join("netns-rsh.sh").display(),
        bin = bin(),
        file = file.display()
    );
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &h(1), "unshare", "--uts", "sh", "-c", &mpirun]);
    let mut job = spawn_logged(c, d.join("mpirun.log"));
    let status_h1 = || -> Option<serde_json::Value> {
        let o = in_h1(&["status", "--scheduler-file", file.to_str().unwrap(), "--json", "--timeout", "5s"]);
        serde_json::from_slice(&o.stdout).ok()
    };
    wait_for("3 workers across 3 hosts", Duration::from_secs(60), || status_h1().is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(3)));
    let s = status_h1().unwrap();
    let on_ib = |a: &str| a.starts_with("tcp://10.20.0.");
    assert!(on_ib(s["address"].as_str().unwrap()), "scheduler address {}", s["address"]);
    let mut worker_hosts = std::collections::BTreeSet::new();
    for w in s["workers"].as_array().unwrap() {
        let a = w["address"].as_str().unwrap();
        assert!(on_ib(a), "worker {} advertises {a}", w["name"]);
        worker_hosts.insert(a.split(':').nth(1).unwrap().to_string());
    }
    assert_eq!(worker_hosts.len(), 3, "workers on 3 different hosts: {worker_hosts:?}");
    // Data moves worker-2 -> worker-3 -> worker-1 (three hosts).
    let g = d.write(
        "g.json",
        r#"{"a": {"cmd": ["sh", "-c", "printf data"], "workers": "worker-2"},
            "b": {"cmd": ["cat"], "stdin": "a", "workers": "worker-3"},
            "c": {"cmd": ["cat"], "stdin": "b", "workers": "worker-1"}}"#,
    );
    let o = in_h1(&["submit", g.to_str().unwrap(), "--scheduler-file", file.to_str().unwrap()]);
    assert_eq!(stdout(&o), "{\"c\": \"data\"}\n", "{}", stderr(&o));
    // What the data servers saw: every peer connection came from an ib0 address.
    wait_for("peer connections on worker-2 and worker-3", Duration::from_secs(20), || {
        let s = status_h1().unwrap();
        let from = |n: &str| -> Vec<String> {
            s["workers"].as_array().unwrap().iter().find(|w| w["name"] == n).unwrap()["data_connections_from"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        !from("worker-2").is_empty() && !from("worker-3").is_empty()
    });
    let s = status_h1().unwrap();
    for w in s["workers"].as_array().unwrap() {
        for a in w["data_connections_from"].as_array().unwrap() {
            assert!(a.as_str().unwrap().starts_with("10.20.0."), "{} got a data connection from {a}, not over ib0", w["name"]);
        }
    }
    let w2 = s["workers"].as_array().unwrap().iter().find(|w| w["name"] == "worker-2").unwrap();
    let w3 = s["workers"].as_array().unwrap().iter().find(|w| w["name"] == "worker-3").unwrap();
    let w3_ip = w3["address"].as_str().unwrap().trim_start_matches("tcp://").split(':').next().unwrap().to_string();
    assert!(w2["data_connections_from"].as_array().unwrap().iter().any(|a| a.as_str() == Some(w3_ip.as_str())), "worker-3 fetched from worker-2 over ib0: {w2}");
    let o = in_h1(&["shutdown", "--scheduler-file", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(job.wait_exit(Duration::from_secs(60)), Some(0), "{}", job.log_text());
}

/// The SPMD example (runtime/examples/spmd.rs) under mpirun: rank 1 gets a
/// client, the workers run the program's own registered function.
#[test]
#[ignore = "needs Open MPI and MPICH launchers (and root for the namespace hosts): tests/run-all.sh installs them and runs this"]
fn spmd_example_under_mpirun() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.args(["build", "-q", "-p", "taskfarm", "--example", "spmd", "--manifest-path"]).arg(root.join("Cargo.toml"));
    if LINKED_TO_MPI {
        build.args(["--features", "taskfarm/mpi"]);
    }
    assert!(build.status().unwrap().success(), "building the spmd example");
    // The example lands next to the test binaries' profile directory.
    let exe = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("examples/spmd");
    assert!(exe.exists(), "{} missing", exe.display());
    let d = TempDir::new("spmd");
    let file = d.join("s.json");
    let mut c = launcher(Launcher::OpenMpi, 4);
    c.arg(&exe).arg(&file);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    // Sum of Collatz stopping times of 1..=30 is 441; 27 takes 111 steps.
    assert!(out.contains("total = 441") && out.contains("steps-27 = 111") && out.contains("workers: 2"), "{out}");
    assert!(!file.exists(), "dropping the client shut the job down cleanly");
}
