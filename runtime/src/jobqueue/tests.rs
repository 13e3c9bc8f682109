//! Job scripts against golden files, and parsing against output in the
//! formats the batch systems document (PBS and LSF have no server here).
//! `TASKFARM_BLESS=1 cargo test -p taskfarm jobqueue` rewrites the golden files.

use super::*;
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/jobqueue")
}

/// The options every golden script is rendered with: all of them set.
fn full_options(system: System) -> JobOptions {
    let mut o = JobOptions::new(system, PathBuf::from("/shared/alice/sched.json"));
    o.cores = 8;
    o.memory = Some(16_000_000_000); // 16GB = 15258 MiB
    o.processes = 2;
    o.queue = Some("batch".into());
    o.account = Some("proj42".into());
    o.walltime = Some(3600);
    o.extra_directives = vec!["--exclusive-or-site-flag".into()];
    o.prologue = vec!["module load gcc".into(), "source $HOME/env.sh".into()];
    o.log_directory = Some(PathBuf::from("/shared/alice/logs"));
    o.interface = Some("ib0".into());
    o.local_directory = Some("$TMPDIR".into());
    o.taskfarm = "/opt/taskfarm/bin/taskfarm".into();
    o
}

#[test]
fn rendered_scripts_match_the_golden_files() {
    let bless = std::env::var_os("TASKFARM_BLESS").is_some();
    let mut mismatched = Vec::new();
    for system in System::ALL {
        let text = full_options(system).render();
        let path = golden_dir().join(format!("{system}.sh"));
        if bless {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run with TASKFARM_BLESS=1 to create it)", path.display()));
        if want != text {
            mismatched.push(format!("{}:\n--- golden\n{want}\n--- rendered\n{text}", path.display()));
        }
    }
    assert!(mismatched.is_empty(), "rendered job scripts differ from the golden files (TASKFARM_BLESS=1 to accept):\n{}", mismatched.join("\n"));
}

#[test]
fn directives_come_first_and_every_system_uses_its_prefix() {
    for system in System::ALL {
        let text = full_options(system).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#!/usr/bin/env bash");
        // Batch systems stop reading directives at the first command line.
        let first_command = lines.iter().position(|l| !l.starts_with('#')).unwrap();
        let directives: Vec<&&str> = lines.iter().filter(|l| l.starts_with(system.prefix())).collect();
        assert!(directives.len() >= 4, "{system}: {directives:?}");
        assert!(lines.iter().position(|l| l.starts_with(system.prefix())).unwrap() < first_command);
        assert!(lines[..first_command].iter().any(|l| l.ends_with("--exclusive-or-site-flag")), "{system}: extra directive missing");
        assert!(text.contains("module load gcc\nsource $HOME/env.sh\n"), "{system}: prologue");
        // Two workers, each with half the cores and half the memory request (15258 MiB).
        assert_eq!(text.matches(" worker --scheduler-file /shared/alice/sched.json --nthreads 4 --memory-limit 7999586304 ").count(), 2, "{system}:\n{text}");
        assert!(text.contains(&format!("--name \"${{{}}}-1\"", system.job_id_var())));
        assert!(text.contains("--walltime 01:00:00 --walltime-margin 300s --interface ib0 --local-directory \"$TMPDIR\""), "{system}:\n{text}");
    }
}

#[test]
fn skip_directive_drops_matching_lines_only() {
    let mut o = full_options(System::Slurm);
    o.skip_directives = vec!["--mem".into()];
    let text = o.render();
    assert!(!text.contains("#SBATCH --mem"));
    assert!(text.contains("#SBATCH --cpus-per-task=8"));
    // The worker still gets its memory limit: the job still has that much.
    assert!(text.contains("--memory-limit 7999586304"));
}

#[test]
fn one_process_execs_the_worker_so_it_gets_the_signals() {
    let mut o = JobOptions::new(System::Slurm, PathBuf::from("/s.json"));
    o.cores = 4;
    let text = o.render();
    assert!(text.contains("\nexec taskfarm worker --scheduler-file /s.json --nthreads 4 --name \"${SLURM_JOB_ID}-0\""), "{text}");
    assert!(!text.contains("trap"));
    assert!(!text.contains("--mem"), "no memory request unless asked");
}

#[test]
fn custom_template_and_quoting() {
    let mut o = JobOptions::new(System::Lsf, PathBuf::from("/data/my runs/s.json"));
    o.template = Some("#!/bin/sh\n{{directives}}\n# site header for {{system}}\n{{command}}\n".into());
    let text = o.render();
    assert!(text.starts_with("#!/bin/sh\n#BSUB -J taskfarm-worker\n"));
    assert!(text.contains("# site header for lsf"));
    assert!(text.contains("--scheduler-file '/data/my runs/s.json'"), "{text}");
    o.template = Some("#!/bin/sh\n{{directives}}\n".into());
    assert!(o.validate().unwrap_err().contains("{{command}}"));
}

#[test]
fn validation_names_the_problem() {
    let mut o = JobOptions::new(System::Slurm, PathBuf::from("/s.json"));
    o.processes = 3;
    o.cores = 2;
    assert!(o.validate().unwrap_err().contains("--processes 3"));
    o.processes = 1;
    o.cores = 0;
    assert!(o.validate().unwrap_err().contains("--cores"));
    o.cores = 1;
    o.job_name = "two words".into();
    assert!(o.validate().unwrap_err().contains("--job-name"));
}

#[test]
fn walltime_units_and_rounding() {
    assert_eq!(parse_walltime("01:30:00"), Ok(5400));
    assert_eq!(parse_walltime("1-00:00:00"), Ok(86400));
    assert_eq!(parse_walltime("1-02"), Ok(93600));
    assert_eq!(parse_walltime("10:30"), Ok(630)); // MM:SS
    assert_eq!(parse_walltime("90m"), Ok(5400));
    assert_eq!(parse_walltime("2h"), Ok(7200));
    assert!(parse_walltime("30").unwrap_err().contains("no unit"));
    assert!(parse_walltime("1:2:3:4").is_err());
    assert_eq!(format_hms(90061), "25:01:01");
    // squeue %L forms
    assert_eq!(parse_clock("59"), None);
    assert_eq!(parse_clock("1:59"), Some(119));
    assert_eq!(parse_clock("2-03:04:05"), Some(2 * 86400 + 3 * 3600 + 4 * 60 + 5));
    // LSF's -W is minutes: 61 s rounds up to 2 minutes.
    let mut o = JobOptions::new(System::Lsf, PathBuf::from("/s.json"));
    o.walltime = Some(61);
    assert!(o.render().contains("#BSUB -W 0:02\n"));
    assert_eq!(default_margin(60), 6);
    assert_eq!(default_margin(10), 5);
    assert_eq!(default_margin(86400), 300);
}

#[test]
fn job_ids_are_found_among_banners() {
    // sbatch --parsable, with and without a cluster name, after a site banner.
    assert_eq!(parse_job_id(System::Slurm, "NOTICE: project quota at 91%\n4242\n").unwrap(), "4242");
    assert_eq!(parse_job_id(System::Slurm, "4243;cluster2\n").unwrap(), "4243");
    assert_eq!(parse_job_id(System::Slurm, "Submitted batch job 4244\n").unwrap(), "4244");
    // PBS: the server suffix is part of the id and must be kept for qstat/qdel.
    let pbs = "*** Welcome to Cluster X: scratch is purged after 30 days ***\n\n1234567.pbs01.hpc.example.org\n";
    assert_eq!(parse_job_id(System::Pbs, pbs).unwrap(), "1234567.pbs01.hpc.example.org");
    assert_eq!(parse_job_id(System::Torque, "88.head-node\n").unwrap(), "88.head-node");
    assert_eq!(parse_job_id(System::Pbs, "12[].pbs01\n").unwrap(), "12[].pbs01");
    // LSF
    let lsf = "Job <5150> is submitted to queue <normal>.\n";
    assert_eq!(parse_job_id(System::Lsf, &format!("Warning: default project used\n{lsf}")).unwrap(), "5150");
    // SGE
    assert_eq!(parse_job_id(System::Sge, "Your job 77 (\"taskfarm-worker\") has been submitted\n").unwrap(), "77");
    assert_eq!(parse_job_id(System::Sge, "78\n").unwrap(), "78");
    // Nothing that looks like an id: the error quotes the output.
    let e = parse_job_id(System::Pbs, "qsub: Job rejected by all possible destinations\n").unwrap_err();
    assert!(e.contains("rejected by all possible destinations"), "{e}");
    assert!(parse_job_id(System::Lsf, "Request aborted by esub. Job not submitted.\n").is_err());
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn pbs_states_from_default_qstat_output() {
    // PBS Pro's default qstat layout (the id column is truncated with '*').
    let out = "\
Job id            Name             User              Time Use S Queue
----------------  ---------------- ----------------  -------- - -----
1234.pbs01        taskfarm-worker  alice             00:00:01 R workq
1235.pbs01        taskfarm-worker  alice                    0 Q workq
1236.very-long-s* taskfarm-worker  alice             00:10:00 E workq
";
    let want = ids(&["1234.pbs01", "1235.pbs01", "1236.very-long-server.example.org", "1237.pbs01"]);
    let s = parse_states(System::Pbs, &want, out);
    assert_eq!(s["1234.pbs01"], JobState::Running("R".into()));
    assert_eq!(s["1235.pbs01"], JobState::Pending("Q".into()));
    assert_eq!(s["1236.very-long-server.example.org"], JobState::Running("E".into()));
    assert!(s["1237.pbs01"].is_gone(), "not listed: gone");
    // Torque keeps completed jobs as C for a while.
    let torque = "Job ID                    Name             User            Time Use S Queue\n\
                  ------------------------- ---------------- --------------- -------- - -----\n\
                  88.head-node              taskfarm-worker  alice           00:00:05 C batch\n";
    assert_eq!(parse_states(System::Torque, &ids(&["88.head-node"]), torque)["88.head-node"], JobState::Gone("C".into()));
    // A different job with the same number on another server is not ours.
    let other = "99.other-server   x  alice  0 R q\n";
    assert!(parse_states(System::Pbs, &ids(&["99.pbs01"]), other)["99.pbs01"].is_gone());
}

#[test]
fn lsf_states_from_bjobs_output() {
    let out = "\
JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME
5150    alice   RUN   normal     login1      4*node12    taskfarm-worker Nov 21 10:00
                                             4*node13
5151    alice   PEND  normal     login1                  taskfarm-worker Nov 21 10:01
5152    alice   DONE  normal     login1      node14      taskfarm-worker Nov 21 09:00
";
    let s = parse_states(System::Lsf, &ids(&["5150", "5151", "5152", "5153"]), out);
    assert_eq!(s["5150"], JobState::Running("RUN".into()));
    assert_eq!(s["5151"], JobState::Pending("PEND".into()));
    assert_eq!(s["5152"], JobState::Gone("DONE".into()));
    assert!(s["5153"].is_gone());
}

#[test]
fn sge_and_slurm_states() {
    // Son of Grid Engine 8.1.9's qstat, as seen on the test cluster.
    let out = "\
job-ID  prior   name       user         state submit/start at     queue                          slots ja-task-ID
-----------------------------------------------------------------------------------------------------------------
      2 0.50000 taskfarm-w root         r     11/21/2026 23:34:19 all.q@vm                           1
      3 0.00000 taskfarm-w root         qw    11/21/2026 23:34:20                                    1
      4 0.00000 taskfarm-w root         Eqw   11/21/2026 23:34:21                                    1
";
    let s = parse_states(System::Sge, &ids(&["2", "3", "4", "5"]), out);
    assert_eq!(s["2"], JobState::Running("r".into()));
    assert_eq!(s["3"], JobState::Pending("qw".into()));
    assert!(s["4"].is_gone(), "Eqw never starts by itself");
    assert!(s["5"].is_gone());
    let out = "12 RUNNING\n13 PENDING\n14 COMPLETED\n15 TIMEOUT\n";
    let s = parse_states(System::Slurm, &ids(&["12", "13", "14", "15", "16"]), out);
    assert_eq!(s["12"], JobState::Running("RUNNING".into()));
    assert_eq!(s["13"], JobState::Pending("PENDING".into()));
    assert_eq!(s["14"], JobState::Gone("COMPLETED".into()));
    assert_eq!(s["15"], JobState::Gone("TIMEOUT".into()));
    assert!(s["16"].is_gone());
}

#[test]
fn systems_parse_by_name() {
    for s in System::ALL {
        assert_eq!(s.name().parse::<System>(), Ok(s));
    }
    assert_eq!("OpenPBS".parse::<System>(), Ok(System::Pbs));
    assert_eq!("HTCondor".parse::<System>(), Ok(System::Condor));
    assert!("nosuch".parse::<System>().unwrap_err().contains("slurm, pbs"));
}

#[test]
fn a_missing_log_directory_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::temp_dir().join(format!("tf-logdir-{}", crate::util::hex(&crate::util::random_bytes(4))));
    let mut o = JobOptions::new(System::Slurm, base.join("s.json"));
    o.log_directory = Some(base.join("logs/nested"));
    o.create_log_directory().unwrap();
    let meta = std::fs::metadata(base.join("logs/nested")).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    o.create_log_directory().unwrap(); // exists: fine
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn adaptive_scaling_plans_for_the_earliest_moment_a_worker_leaves() {
    // 10 min walltime: 60 s margin, workers leave 30 s earlier at most.
    let mut o = JobOptions::new(System::Slurm, std::path::PathBuf::from("/s.json"));
    o.walltime = Some(600);
    assert_eq!(o.worker_lifetime(), Some(540));
    assert_eq!(o.earliest_worker_leave(), Some(510));
    // The workers of such a job (given --walltime 600 --walltime-margin 60)
    // never leave before that moment, whatever their random stagger.
    let req = crate::worker::lifetime::LifetimeRequest { walltime: Some("600".into()), walltime_margin: Some(std::time::Duration::from_secs(60)), ..Default::default() };
    for r in [0.0, 0.5, 1.0] {
        let at = req.plan_with(Some((600, "--walltime".into())), r).unwrap().unwrap().as_secs_f64();
        assert!((510.0..=540.0).contains(&at), "leaves at {at}");
    }
}

#[test]
fn condor_ids_states_and_job_ads() {
    // condor_submit, plain and -terse.
    assert_eq!(parse_job_id(System::Condor, "Submitting job(s).\n1 job(s) submitted to cluster 4711.\n").unwrap(), "4711.0");
    assert_eq!(parse_job_id(System::Condor, "4712.0 - 4712.0\n").unwrap(), "4712.0");
    assert!(parse_job_id(System::Condor, "ERROR: on Line 3 of submit file: Unknown command\n").is_err());
    // condor_q 4711.0 4712.0 4713.0 -af:j JobStatus: jobs that left the queue are not listed.
    let s = parse_states(System::Condor, &ids(&["4711.0", "4712.0", "4713.0", "4714.0"]), "4711.0 2\n4712.0 1\n4713.0 5\n");
    assert_eq!(s["4711.0"], JobState::Running("R".into()));
    assert_eq!(s["4712.0"], JobState::Pending("I".into()));
    assert_eq!(s["4713.0"], JobState::Gone("H".into()));
    assert!(is_held(System::Condor, &s["4713.0"]));
    assert!(s["4714.0"].is_gone());
    let (program, args) = query_args(System::Condor, &ids(&["4711.0"]), "alice");
    assert_eq!((program.as_str(), args), ("condor_q", ids(&["4711.0", "-af:j", "JobStatus"])));
    // The job id from the job ad HTCondor writes for every job.
    assert_eq!(condor_job_id("MyType = \"Job\"\nClusterId = 4711\nProcId = 0\nOwner = \"alice\"\n").as_deref(), Some("4711.0"));
    assert_eq!(condor_job_id("ClusterId = 4711\n"), None);
}

#[test]
fn condor_submit_description_comes_from_the_scripts_directives() {
    let dir = std::env::temp_dir().join(format!("tf-condor-{}", crate::util::hex(&crate::util::random_bytes(4))));
    std::fs::create_dir_all(&dir).unwrap();
    let mut o = JobOptions::new(System::Condor, dir.join("s.json"));
    o.cores = 2;
    o.walltime = Some(600);
    o.extra_directives = vec!["requirements = (Memory > 1024)".into()];
    let script = dir.join("s.json.submit.sh");
    std::fs::write(&script, o.render()).unwrap();
    let sub = condor_description(&script).unwrap();
    let text = std::fs::read_to_string(&sub).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines[0], format!("executable = {}", script.display()));
    for want in ["universe = vanilla", "request_cpus = 2", "allowed_job_duration = 600", "requirements = (Memory > 1024)", "output = taskfarm-worker-$(ClusterId).$(ProcId).out"] {
        assert!(lines.contains(&want), "{want} in {text}");
    }
    assert_eq!(*lines.last().unwrap(), "queue 1");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sub).unwrap().permissions().mode() & 0o777, 0o600);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn end_reasons_in_each_systems_words() {
    let scontrol = "JobId=41 JobName=taskfarm-worker UserId=alice(1000) GroupId=alice(1000) Priority=1 JobState=FAILED Reason=JobLaunchFailure Dependency=(null) Requeue=1 ExitCode=1:0 RunTime=00:00:00\n";
    assert_eq!(reason_from_fields(scontrol, &["JobState", "Reason", "ExitCode"], '=').as_deref(), Some("JobState=FAILED Reason=JobLaunchFailure ExitCode=1:0"));
    assert_eq!(reason_from_sacct("FAILED|None|1:0\n").as_deref(), Some("State=FAILED ExitCode=1:0"));
    let qstat = "Job Id: 1234.pbs01\n    Job_Name = taskfarm-worker\n    job_state = F\n    comment = Job run at Wed Dec 03 at 10:00 on (node1:ncpus=1) and failed\n    Exit_status = -1\n";
    assert_eq!(
        reason_from_fields(qstat, &["job_state", "comment", "Exit_status"], '=').as_deref(),
        Some("job_state=F comment=Job run at Wed Dec 03 at 10:00 on (node1:ncpus=1) and failed Exit_status=-1")
    );
    let bjobs = "\
Job <5150>, User <alice>, Project <default>, Status <EXIT>, Queue <normal>, Comm
                     and <#!/usr/bin/env bash>
Wed Dec  3 10:00:00: Submitted from host <login1>, CWD <$HOME>;
Wed Dec  3 10:00:01: Started 1 Task(s) on Host(s) <node1>, Allocated 1 Slot(s)
                     on Host(s) <node1>, Execution Home </home/alice>;
Wed Dec  3 10:00:05: Exited with exit code 127. The CPU time used is 0.1 second
                     s.
Wed Dec  3 10:00:05: Completed <exit>.
";
    assert_eq!(reason_from_bjobs_l(bjobs).as_deref(), Some("Exited with exit code 127. The CPU time used is 0.1 seconds.; Completed <exit>."));
    let pending = "Job <5151>, User <alice>, Status <PEND>\n\n PENDING REASONS:\n New job is waiting for scheduling: 1 host;\n\n SCHEDULING PARAMETERS:\n";
    assert_eq!(reason_from_bjobs_l(pending).as_deref(), Some("pending: New job is waiting for scheduling: 1 host;"));
    let qacct = "==============================================================\nqname        all.q\nfailed       26  : opening input/output file\nexit_status  1\n";
    assert_eq!(reason_from_columns(qacct, &["failed", "exit_status"]).as_deref(), Some("failed=26  : opening input/output file exit_status=1"));
    let condor = "JobStatus = 5\nHoldReason = The job exceeded allowed job duration of 60\nRemoveReason = undefined\nExitCode = undefined\n";
    assert_eq!(
        reason_from_fields(condor, &["JobStatus", "HoldReason", "RemoveReason", "ExitCode"], '=').as_deref(),
        Some("JobStatus=5 HoldReason=The job exceeded allowed job duration of 60")
    );
}
