//! Worker jobs on batch systems (SLURM, PBS Pro, Torque, LSF, Grid Engine,
//! HTCondor):
//! render a job script, submit it, parse the job id, query states, cancel;
//! the record of submitted jobs kept next to the scheduler file
//! ([`record`]); adaptive scaling ([`adapt`]).
//!
//! Everything that parses a tool's output is a pure function tested against
//! the tools' documented formats; only [`submit`], [`query`] and [`cancel`]
//! run commands.

pub mod adapt;
mod parse;
mod reason;
pub mod record;

pub use parse::{condor_job_id, condor_status_letter, is_held, parse_job_id, parse_states, JobState};

pub use reason::end_reason;
#[cfg(test)]
use reason::{reason_from_bjobs_l, reason_from_columns, reason_from_fields, reason_from_sacct};

use std::time::Duration;
use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

/// The default job script template (jobscripts/templates/worker-job.sh).
pub const DEFAULT_TEMPLATE: &str = include_str!("../../../jobscripts/templates/worker-job.sh");

/// A batch system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum System {
    Slurm,
    /// PBS Pro / OpenPBS (`-l select=...`).
    Pbs,
    /// Torque (`-l nodes=1:ppn=...`).
    Torque,
    Lsf,
    /// (Son of / Univa / Altair) Grid Engine.
    Sge,
    /// HTCondor: the job script carries its submit commands on `#CONDOR`
    /// lines, from which [`submit`] writes the submit description.
    Condor,
}

impl System {
    pub const ALL: [System; 6] = [System::Slurm, System::Pbs, System::Torque, System::Lsf, System::Sge, System::Condor];

    pub fn name(self) -> &'static str {
        match self {
            System::Slurm => "slurm",
            System::Pbs => "pbs",
            System::Torque => "torque",
            System::Lsf => "lsf",
            System::Sge => "sge",
            System::Condor => "condor",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            System::Slurm => "#SBATCH",
            System::Pbs | System::Torque => "#PBS",
            System::Lsf => "#BSUB",
            System::Sge => "#$",
            System::Condor => "#CONDOR",
        }
    }

    /// The environment variable holding the job id inside a job.
    pub fn job_id_var(self) -> &'static str {
        match self {
            System::Slurm => "SLURM_JOB_ID",
            System::Pbs | System::Torque => "PBS_JOBID",
            System::Lsf => "LSB_JOBID",
            System::Sge => "JOB_ID",
            // Set by the job script from the job ad (HTCondor names the job
            // only there: $_CONDOR_JOB_AD).
            System::Condor => "CONDOR_JOB_ID",
        }
    }

    fn submit_command(self) -> &'static str {
        match self {
            System::Slurm => "sbatch",
            System::Pbs | System::Torque | System::Sge => "qsub",
            System::Lsf => "bsub",
            System::Condor => "condor_submit",
        }
    }

    fn cancel_command(self) -> &'static str {
        match self {
            System::Slurm => "scancel",
            System::Pbs | System::Torque | System::Sge => "qdel",
            System::Lsf => "bkill",
            System::Condor => "condor_rm",
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for System {
    type Err = String;
    fn from_str(s: &str) -> Result<System, String> {
        match s.to_ascii_lowercase().as_str() {
            "slurm" => Ok(System::Slurm),
            "pbs" | "pbspro" | "openpbs" => Ok(System::Pbs),
            "torque" => Ok(System::Torque),
            "lsf" => Ok(System::Lsf),
            "sge" | "gridengine" | "uge" | "oge" => Ok(System::Sge),
            "condor" | "htcondor" => Ok(System::Condor),
            _ => Err(format!("unknown batch system '{s}'; use slurm, pbs (PBS Pro/OpenPBS), torque, lsf, sge or condor (HTCondor)")),
        }
    }
}

use crate::schedfile::beside;

/// The job's id and system when this process runs inside a batch job.
pub fn detect_job() -> Option<(System, String)> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(id) = var("SLURM_JOB_ID") {
        return Some((System::Slurm, id));
    }
    if let Some(id) = var("PBS_JOBID") {
        // Torque sets PBS_WALLTIME and PBS_NUM_PPN; PBS Pro does not.
        let sys = if var("PBS_NUM_PPN").is_some() || var("PBS_WALLTIME").is_some() { System::Torque } else { System::Pbs };
        return Some((sys, id));
    }
    if let Some(id) = var("LSB_JOBID") {
        return Some((System::Lsf, id));
    }
    // JOB_ID alone is too generic; Grid Engine also sets SGE_TASK_ID.
    if let (Some(id), Some(_)) = (var("JOB_ID"), var("SGE_TASK_ID")) {
        return Some((System::Sge, id));
    }
    // HTCondor writes the job's ClassAd to a file and names it here.
    if let Some(ad) = var("_CONDOR_JOB_AD") {
        return std::fs::read_to_string(ad).ok().and_then(|t| condor_job_id(&t)).map(|id| (System::Condor, id));
    }
    None
}


/// Parse a walltime: `HH:MM:SS`, `MM:SS`, `D-HH:MM:SS`, `D-HH` (SLURM's
/// forms), or a duration with a unit (`90m`, `2h`). Returns seconds.
pub fn parse_walltime(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.contains(':') || t.contains('-') {
        return parse_clock(t).ok_or_else(|| format!("'{s}' is not a walltime; use HH:MM:SS, D-HH:MM:SS or a duration such as 90m"));
    }
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("walltime '{s}' has no unit (batch systems disagree: SLURM reads minutes, others seconds); write {s}m, {s}s or HH:MM:SS"));
    }
    crate::util::parse_duration(t).map(|d| d.as_secs_f64().ceil() as u64)
}

/// SLURM's time format as squeue prints it (`%L`, `%l`) and as `--time`
/// takes it with colons: `[D-]HH:MM:SS`, `[D-]HH:MM` (only with a day),
/// `MM:SS`, `D-HH`.
pub fn parse_clock(t: &str) -> Option<u64> {
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, t),
    };
    let parts: Vec<u64> = rest.split(':').map(|p| p.parse::<u64>().ok()).collect::<Option<_>>()?;
    let has_day = t.contains('-');
    let secs = match (parts.as_slice(), has_day) {
        ([h], true) => h * 3600,
        ([h, m], true) => h * 3600 + m * 60,
        ([m, s], false) => m * 60 + s,
        ([h, m, s], _) => h * 3600 + m * 60 + s,
        _ => return None,
    };
    Some(days * 86400 + secs)
}

/// `HH:MM:SS` (hours may exceed 24).
pub fn format_hms(secs: u64) -> String {
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The margin a worker leaves before its job's walltime by default: 10% of
/// it, at least 5 s and at most 5 minutes.
pub fn default_margin(walltime: u64) -> u64 {
    (walltime / 10).clamp(5, 300).min(walltime / 2)
}

/// How much earlier than `walltime - margin`, at most, a worker leaves by
/// default (a random share of it, so workers started together do not all
/// leave at once): half the margin. The one rule for workers (which pick
/// their moment with it) and adaptive scaling (which must replace them
/// before the earliest of those moments).
pub fn default_stagger(margin: Duration) -> Duration {
    margin / 2
}

/// What one worker job asks for and how its workers start.
#[derive(Clone, Debug)]
pub struct JobOptions {
    pub system: System,
    /// Cores per job; the job's workers share them.
    pub cores: u32,
    /// Memory per job, bytes.
    pub memory: Option<u64>,
    /// Worker processes per job.
    pub processes: u32,
    pub queue: Option<String>,
    /// Account (SLURM, PBS) or project (LSF, SGE).
    pub account: Option<String>,
    /// Seconds.
    pub walltime: Option<u64>,
    pub job_name: String,
    /// Extra directive lines (the prefix is added if missing).
    pub extra_directives: Vec<String>,
    /// Generated directive lines containing any of these are left out.
    pub skip_directives: Vec<String>,
    /// Shell lines run before the workers start.
    pub prologue: Vec<String>,
    pub log_directory: Option<PathBuf>,
    pub interface: Option<String>,
    pub local_directory: Option<String>,
    /// The taskfarm executable the job runs.
    pub taskfarm: String,
    pub scheduler_file: PathBuf,
    /// Seconds a worker leaves before the walltime [default: `default_margin`].
    pub walltime_margin: Option<u64>,
    /// Extra arguments for `taskfarm worker`.
    pub worker_args: Vec<String>,
    /// Job script template text [default: DEFAULT_TEMPLATE].
    pub template: Option<String>,
}

impl JobOptions {
    pub fn new(system: System, scheduler_file: PathBuf) -> JobOptions {
        JobOptions {
            system,
            cores: 1,
            memory: None,
            processes: 1,
            queue: None,
            account: None,
            walltime: None,
            job_name: "taskfarm-worker".into(),
            extra_directives: Vec::new(),
            skip_directives: Vec::new(),
            prologue: Vec::new(),
            log_directory: None,
            interface: None,
            local_directory: None,
            taskfarm: "taskfarm".into(),
            scheduler_file,
            walltime_margin: None,
            worker_args: Vec::new(),
            template: None,
        }
    }

    /// Check what cannot work before anything is submitted.
    /// Create `--log-directory` (mode 0700, parents too) unless it exists:
    /// a batch system cannot write a job's output into a missing directory,
    /// and the job then fails before it starts (SLURM: JobLaunchFailure).
    pub fn create_log_directory(&self) -> Result<(), String> {
        let Some(dir) = &self.log_directory else { return Ok(()) };
        if dir.is_dir() {
            return Ok(());
        }
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| format!("cannot create --log-directory {}: {e}", dir.display()))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.cores == 0 {
            return Err("--cores must be at least 1".into());
        }
        if self.processes == 0 || self.processes > self.cores {
            return Err(format!("--processes {} must be between 1 and --cores ({})", self.processes, self.cores));
        }
        if self.memory == Some(0) {
            return Err("--memory must be positive (or left out)".into());
        }
        if let Some(m) = self.memory {
            if m / self.processes as u64 / MIB == 0 {
                return Err("--memory leaves less than 1 MiB per worker".into());
            }
        }
        if self.walltime == Some(0) {
            return Err("--walltime must be positive".into());
        }
        if self.system == System::Condor && self.queue.is_some() {
            return Err("HTCondor has no queues: leave out --queue and select machines with e.g. --extra-directive 'requirements = (OpSysAndVer == \"AlmaLinux9\")'".into());
        }
        if self.job_name.is_empty() || self.job_name.chars().any(|c| c.is_whitespace() || c == '\'' || c == '"') {
            return Err(format!("--job-name '{}' must be one word without quotes", self.job_name));
        }
        if let Some(t) = &self.template {
            if !t.contains("{{command}}") {
                return Err("the job script template has no {{command}} placeholder".into());
            }
        }
        Ok(())
    }

    /// Threads per worker.
    pub fn threads_per_worker(&self) -> u32 {
        (self.cores / self.processes.max(1)).max(1)
    }

    /// The memory the job requests, rounded down to whole MiB (the unit
    /// every directive below uses).
    fn memory_mib(&self) -> Option<u64> {
        self.memory.map(|m| (m / MIB).max(1))
    }

    /// Memory limit of each worker: its share of the job's request.
    pub fn worker_memory_limit(&self) -> Option<u64> {
        self.memory_mib().map(|mib| mib * MIB / self.processes.max(1) as u64)
    }

    /// The directive lines for this system, before --skip-directive: name
    /// and resources, then queue and account, then output files.
    fn generated_directives(&self) -> Vec<String> {
        let mut d: Vec<String> = Vec::new();
        let mib = self.memory_mib();
        let c = self.cores;
        match self.system {
            System::Slurm => {
                d.push(format!("--job-name={}", self.job_name));
                d.push("--nodes=1".into());
                d.push("--ntasks=1".into());
                d.push(format!("--cpus-per-task={c}"));
                d.extend(mib.map(|m| format!("--mem={m}M")));
                d.extend(self.walltime.map(|w| format!("--time={}", format_hms(w))));
            }
            System::Pbs | System::Torque => {
                d.push(format!("-N {}", self.job_name));
                if self.system == System::Pbs {
                    let mem = mib.map(|m| format!(":mem={m}mb")).unwrap_or_default();
                    d.push(format!("-l select=1:ncpus={c}{mem}"));
                } else {
                    d.push(format!("-l nodes=1:ppn={c}"));
                    d.extend(mib.map(|m| format!("-l mem={m}mb")));
                }
                d.extend(self.walltime.map(|w| format!("-l walltime={}", format_hms(w))));
            }
            System::Lsf => {
                d.push(format!("-J {}", self.job_name));
                d.push(format!("-n {c}"));
                d.push("-R \"span[hosts=1]\"".into());
                if let Some(m) = mib {
                    d.push(format!("-M {m}MB"));
                    d.push(format!("-R \"rusage[mem={m}MB]\""));
                }
                // LSF's -W is [hours:]minutes; round up to whole minutes.
                d.extend(self.walltime.map(|w| w.div_ceil(60)).map(|mins| format!("-W {}:{:02}", mins / 60, mins % 60)));
            }
            System::Sge => {
                d.push(format!("-N {}", self.job_name));
                d.push("-S /bin/bash".into());
                d.push("-cwd".into());
                if c > 1 {
                    d.push(format!("-pe smp {c}"));
                }
                d.extend(mib.map(|m| format!("-l mem_free={m}M")));
                if let (Some(w), Some(life)) = (self.walltime, self.worker_lifetime()) {
                    // h_rt kills with SIGKILL; s_rt sends SIGUSR1 first, which
                    // makes the workers retire.
                    d.push(format!("-l h_rt={}", format_hms(w)));
                    d.push(format!("-l s_rt={}", format_hms(life.max(1))));
                }
            }
            System::Condor => {
                d.push("universe = vanilla".into());
                d.push(format!("batch_name = {}", self.job_name));
                d.push(format!("request_cpus = {c}"));
                d.extend(mib.map(|m| format!("request_memory = {m}MB")));
                // HTCondor has no walltime: the job is held once it has run
                // this long (its workers retire before, on their own clock).
                d.extend(self.walltime.map(|w| format!("allowed_job_duration = {w}")));
            }
        }
        let (queue_flag, account_flag) = match self.system {
            System::Slurm => ("--partition=", "--account="),
            System::Pbs | System::Torque => ("-q ", "-A "),
            System::Lsf | System::Sge => ("-q ", "-P "),
            // No queues (validate refuses --queue); accounting groups instead of accounts.
            System::Condor => ("", "accounting_group = "),
        };
        d.extend(self.queue.as_ref().filter(|_| self.system != System::Condor).map(|q| format!("{queue_flag}{q}")));
        d.extend(self.account.as_ref().map(|a| format!("{account_flag}{a}")));
        let log = self.log_directory.as_ref().map(|p| p.display().to_string());
        match self.system {
            System::Slurm => d.extend(log.map(|l| format!("--output={l}/%x-%j.out"))),
            System::Pbs | System::Torque => {
                d.push("-j oe".into());
                d.extend(log.map(|l| format!("-o {l}/")));
            }
            System::Lsf => {
                if let Some(l) = log {
                    d.push(format!("-o {l}/%J.out"));
                    d.push(format!("-e {l}/%J.err"));
                }
            }
            System::Sge => {
                d.push("-j y".into());
                d.extend(log.map(|l| format!("-o {l}")));
            }
            System::Condor => {
                // Without output and error HTCondor discards both.
                let dir = log.map(|l| format!("{l}/")).unwrap_or_default();
                let base = format!("{dir}{}-$(ClusterId).$(ProcId)", self.job_name);
                d.push(format!("output = {base}.out"));
                d.push(format!("error = {base}.err"));
                d.push(format!("log = {base}.log"));
            }
        }
        d.into_iter().map(|x| format!("{} {x}", self.system.prefix())).collect()
    }

    /// Seconds a worker of this job stays before retiring at the latest:
    /// the walltime minus the margin (None without a walltime).
    pub fn worker_lifetime(&self) -> Option<u64> {
        self.walltime.map(|w| w.saturating_sub(self.margin(w)))
    }

    /// Seconds after which a worker of this job may already be leaving: the
    /// latest moment minus the default stagger ([`default_stagger`]), which
    /// the job's workers use. Adaptive scaling plans replacements before it.
    pub fn earliest_worker_leave(&self) -> Option<u64> {
        self.walltime.map(|w| {
            let margin = self.margin(w);
            w.saturating_sub(margin).saturating_sub(default_stagger(Duration::from_secs(margin)).as_secs())
        })
    }

    fn margin(&self, walltime: u64) -> u64 {
        self.walltime_margin.unwrap_or_else(|| default_margin(walltime))
    }

    fn directives(&self) -> Vec<String> {
        let prefix = self.system.prefix();
        let mut d: Vec<String> = self.generated_directives().into_iter().filter(|l| !self.skip_directives.iter().any(|s| l.contains(s.as_str()))).collect();
        for extra in &self.extra_directives {
            let e = extra.trim();
            d.push(if e.starts_with(prefix) { e.to_string() } else { format!("{prefix} {e}") });
        }
        d
    }

    /// The `taskfarm worker` command line for worker `index` of the job.
    fn worker_command(&self, index: u32) -> String {
        let mut args: Vec<String> = vec![shell_quote(&self.taskfarm), "worker".into()];
        args.push("--scheduler-file".into());
        args.push(shell_quote(&self.scheduler_file.display().to_string()));
        args.push(format!("--nthreads {}", self.threads_per_worker()));
        if let Some(m) = self.worker_memory_limit() {
            args.push(format!("--memory-limit {m}"));
        }
        args.push(format!("--name \"${{{}}}-{index}\"", self.system.job_id_var()));
        if let Some(w) = self.walltime {
            args.push(format!("--walltime {}", format_hms(w)));
            let margin = self.margin(w);
            args.push(format!("--walltime-margin {margin}s"));
        }
        if let Some(i) = &self.interface {
            args.push(format!("--interface {}", shell_quote(i)));
        }
        if let Some(l) = &self.local_directory {
            // Double quotes, so that e.g. $TMPDIR expands in the job.
            args.push(format!("--local-directory \"{}\"", l.replace('\\', "\\\\").replace('"', "\\\"")));
        }
        args.extend(self.worker_args.iter().map(|a| shell_quote(a)));
        args.join(" ")
    }

    fn command_lines(&self) -> String {
        let mut s = String::new();
        if self.system == System::Condor {
            s.push_str(
                "# HTCondor names the job only in its job ad.\n\
                 CONDOR_JOB_ID=$(awk -F' *= *' '$1 == \"ClusterId\" { c = $2 } $1 == \"ProcId\" { p = $2 } END { print c \".\" p }' \"$_CONDOR_JOB_AD\")\n",
            );
        }
        if self.processes == 1 {
            // exec: the worker itself gets the batch system's signals.
            s.push_str(&format!("exec {}", self.worker_command(0)));
            return s;
        }
        s.push_str(
            "# Pass SIGTERM/SIGUSR1/SIGUSR2 on to every worker (they retire gracefully),\n\
             # then keep waiting until each has finished handing over its results.\n\
             pids=()\n\
             trap 'kill -TERM \"${pids[@]}\" 2>/dev/null' TERM USR1 USR2\n",
        );
        for i in 0..self.processes {
            s.push_str(&format!("{} &\npids+=($!)\n", self.worker_command(i)));
        }
        s.push_str(
            "rc=0\n\
             for p in \"${pids[@]}\"; do\n\
             \x20 while :; do wait \"$p\"; s=$?; kill -0 \"$p\" 2>/dev/null || break; done\n\
             \x20 [ \"$s\" = 0 ] || rc=$s\n\
             done\n\
             exit $rc",
        );
        s
    }

    /// The complete job script.
    pub fn render(&self) -> String {
        let template = self.template.as_deref().unwrap_or(DEFAULT_TEMPLATE);
        template
            .replace("{{directives}}", &self.directives().join("\n"))
            .replace("{{prologue}}", &self.prologue.join("\n"))
            .replace("{{system}}", self.system.name())
            .replace("{{command}}", &self.command_lines())
    }
}

const MIB: u64 = 1 << 20;

/// Quote for a POSIX shell unless the word is plainly safe.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The arguments of the state query for `ids`.
fn query_args(system: System, ids: &[String], user: &str) -> (String, Vec<String>) {
    match system {
        // All of the user's jobs: asking for one unknown id makes squeue fail.
        System::Slurm => ("squeue".into(), vec!["-h".into(), "-t".into(), "all".into(), "-u".into(), user.into(), "-o".into(), "%i %T".into()]),
        System::Pbs | System::Torque => ("qstat".into(), ids.to_vec()),
        System::Lsf => ("bjobs".into(), ids.to_vec()),
        System::Sge => ("qstat".into(), vec!["-u".into(), user.into()]),
        // "-af:j": the job id, then JobStatus's number; jobs that left the
        // queue (completed, removed) are not listed.
        System::Condor => ("condor_q".into(), ids.iter().cloned().chain(["-af:j".into(), "JobStatus".into()]).collect()),
    }
}

/// Output of a finished command, or an error naming it.
fn run(program: &str, args: &[String], stdin: Option<&str>) -> Result<(i32, String, String), String> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {program}: {e} (is the batch system's client installed and on PATH?)"))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| format!("{program}: {e}"))?;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

fn describe_failure(program: &str, code: i32, stdout: &str, stderr: &str) -> String {
    let msg = [stderr.trim(), stdout.trim()].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(" / ");
    format!("{program} exited with status {code}: {}", if msg.is_empty() { "no output" } else { &msg })
}

/// Submit the job script at `script`; returns the job id.
/// Why [`submit_recorded`] failed.
#[derive(Debug, PartialEq)]
pub enum SubmitError {
    /// The batch system refused the job.
    Submit(String),
    /// The job `id` was submitted but could not be recorded.
    Record { id: String, error: String },
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::Submit(e) => f.write_str(e),
            SubmitError::Record { id, error } => write!(f, "job {id} was submitted but not recorded: {error}"),
        }
    }
}

/// Submit one worker job and record it next to the scheduler file (`by`:
/// who submitted it, "submit" or "adapt"; `workers`: worker processes per
/// job), so that `jobqueue list|cancel` and adaptive scaling know it.
pub fn submit_recorded(system: System, script: &Path, record: &record::Record, by: &str, workers: u32) -> Result<String, SubmitError> {
    let id = submit(system, script).map_err(SubmitError::Submit)?;
    record.add(system.name(), std::slice::from_ref(&id), by, workers).map_err(|error| SubmitError::Record { id: id.clone(), error })?;
    Ok(id)
}

pub fn submit(system: System, script: &Path) -> Result<String, String> {
    let program = system.submit_command();
    let path = script.display().to_string();
    let (code, out, err) = match system {
        System::Slurm => run(program, &["--parsable".into(), path], None)?,
        // bsub reads #BSUB directives only from a script on standard input.
        System::Lsf => {
            let text = std::fs::read_to_string(script).map_err(|e| format!("cannot read {path}: {e}"))?;
            run(program, &[], Some(&text))?
        }
        System::Condor => {
            let description = condor_description(script)?;
            run(program, &[description.display().to_string()], None)?
        }
        _ => run(program, &[path], None)?,
    };
    if code != 0 {
        return Err(describe_failure(program, code, &out, &err));
    }
    parse_job_id(system, &out)
}

/// HTCondor's submit description for a job script: the script is the
/// executable, its `#CONDOR` lines (up to the first command) are the submit
/// commands, then `queue`. Written next to the script (`SCRIPT.sub`, 0600);
/// returns its path.
pub fn condor_description(script: &Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(script).map_err(|e| format!("cannot read {}: {e}", script.display()))?;
    let abs = std::path::absolute(script).map_err(|e| format!("{}: {e}", script.display()))?;
    let mut d = format!("# HTCondor submit description for {}, written by taskfarm\nexecutable = {}\n", abs.display(), abs.display());
    for line in text.lines().skip(1).take_while(|l| l.starts_with('#') || l.trim().is_empty()) {
        if let Some(cmd) = line.strip_prefix(System::Condor.prefix()) {
            d.push_str(cmd.trim());
            d.push('\n');
        }
    }
    d.push_str("queue 1\n");
    let mut name = abs.clone().into_os_string();
    name.push(".sub");
    let path = PathBuf::from(name);
    crate::util::write_file_atomic(&path, d.as_bytes(), 0o600).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Current states of `ids` (all of them gone when `ids` is empty).
pub fn query(system: System, ids: &[String]) -> Result<HashMap<String, JobState>, String> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let (program, args) = query_args(system, ids, &current_user());
    let (code, out, err) = run(&program, &args, None)?;
    // qstat/bjobs exit non-zero when some ids are unknown ("Unknown Job Id",
    // "is not found"): that means gone, and the others are still listed.
    let unknown_only = err.lines().filter(|l| !l.trim().is_empty()).all(|l| l.contains("Unknown Job Id") || l.contains("is not found") || l.contains("Job has finished"));
    if code != 0 && !(matches!(system, System::Pbs | System::Torque | System::Lsf) && unknown_only) {
        return Err(describe_failure(&program, code, &out, &err));
    }
    Ok(parse_states(system, ids, &out))
}

/// Cancel `ids`; a job that is already gone is not an error.
pub fn cancel(system: System, ids: &[String]) -> Result<(), String> {
    if ids.is_empty() {
        return Ok(());
    }
    let program = system.cancel_command();
    let (code, out, err) = run(program, ids, None)?;
    if code == 0 {
        return Ok(());
    }
    let gone = |l: &str| {
        ["does not exist", "Unknown Job Id", "Invalid job id", "already finished", "No matching job", "Job has finished", "not found", "has already"].iter().any(|p| l.contains(p))
    };
    let fine = |l: &str| gone(l) || l.contains("registered the job") || l.contains("marked for removal") || l.contains("is being terminated");
    let bad: Vec<&str> = err.lines().chain(out.lines()).map(str::trim).filter(|l| !l.is_empty() && !fine(l)).collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(describe_failure(program, code, &out, &err))
    }
}

/// The login name of this process's user.
pub fn current_user() -> String {
    if let Ok(u) = std::env::var("USER") {
        if !u.is_empty() {
            return u;
        }
    }
    // SAFETY: getpwuid returns a pointer into static storage or null.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if !pw.is_null() {
            if let Ok(s) = std::ffi::CStr::from_ptr((*pw).pw_name).to_str() {
                return s.to_string();
            }
        }
        libc::getuid().to_string()
    }
}

/// Seconds left in this job, from the batch system, when it can tell:
/// SLURM (`squeue -o %L`), Torque (`$PBS_WALLTIME`, the whole walltime).
pub fn walltime_left() -> Option<(System, u64)> {
    let (system, id) = detect_job()?;
    match system {
        System::Slurm => {
            let (code, out, _) = run("squeue", &["-h".into(), "-j".into(), id, "-o".into(), "%L".into()], None).ok()?;
            if code != 0 {
                return None;
            }
            parse_clock(out.trim()).map(|s| (system, s))
        }
        System::Torque => std::env::var("PBS_WALLTIME").ok()?.trim().parse().ok().map(|s| (system, s)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
