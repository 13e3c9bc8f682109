//! What the batch systems print, read: the job id in a submission's
//! output, job states from the state query (and which of them hold a job
//! back), HTCondor's job ids and status letters. Pure functions, tested
//! against the tools' documented formats (`tests.rs`).

use super::System;
use std::collections::HashMap;

/// "CLUSTER.PROC" from a job ClassAd's text (`ClusterId = 12` lines).
pub fn condor_job_id(ad: &str) -> Option<String> {
    let attr = |name: &str| {
        ad.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_string()).filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
        })
    };
    Some(format!("{}.{}", attr("ClusterId")?, attr("ProcId")?))
}

/// The job id in a submission command's output, skipping site banners and
/// other lines.
pub fn parse_job_id(system: System, output: &str) -> Result<String, String> {
    let lines = || output.lines().map(str::trim).filter(|l| !l.is_empty());
    let found = match system {
        // `sbatch --parsable`: "ID" or "ID;CLUSTER"; plain sbatch: "Submitted batch job ID".
        System::Slurm => lines().rev().find_map(|l| {
            if let Some(rest) = l.strip_prefix("Submitted batch job ") {
                return rest.split_whitespace().next().filter(|id| id.chars().all(|c| c.is_ascii_digit())).map(str::to_string);
            }
            let id = l.split(';').next().unwrap_or("");
            (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit())).then(|| id.to_string())
        }),
        // "1234.server-name" (the suffix is part of the id), or "1234[].server" for arrays.
        System::Pbs | System::Torque => lines().rev().find_map(|l| {
            let first = l.split_whitespace().next().unwrap_or("");
            let digits = first.chars().take_while(|c| c.is_ascii_digit()).count();
            let rest = &first[digits..];
            let ok = digits > 0
                && l.split_whitespace().count() == 1
                && (rest.is_empty() || rest.starts_with('.') || rest.starts_with("[]"))
                && rest.chars().all(|c| c.is_ascii_alphanumeric() || "._-[]".contains(c));
            ok.then(|| first.to_string())
        }),
        // "Job <1234> is submitted to queue <normal>."
        System::Lsf => lines().find_map(|l| {
            let rest = l.strip_prefix("Job <")?;
            let (id, tail) = rest.split_once('>')?;
            (tail.contains("is submitted") && id.chars().all(|c| c.is_ascii_digit()) && !id.is_empty()).then(|| id.to_string())
        }),
        // 'Your job 1234 ("name") has been submitted'; with -terse just "1234".
        System::Sge => lines().find_map(|l| {
            if let Some(rest) = l.strip_prefix("Your job ") {
                let id = rest.split(|c: char| !c.is_ascii_digit()).next().unwrap_or("");
                return (!id.is_empty()).then(|| id.to_string());
            }
            (l.chars().all(|c| c.is_ascii_digit())).then(|| l.to_string())
        }),
        // "1 job(s) submitted to cluster 1234." (the job is 1234.0); with
        // -terse "1234.0 - 1234.0".
        System::Condor => lines().find_map(|l| {
            if let Some((_, rest)) = l.split_once("submitted to cluster ") {
                let id = rest.trim_end_matches('.');
                return (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit())).then(|| format!("{id}.0"));
            }
            let first = l.split_whitespace().next()?;
            let (c, p) = first.split_once('.')?;
            (l.split_whitespace().nth(1) == Some("-") && !c.is_empty() && !p.is_empty() && (c.to_string() + p).chars().all(|ch| ch.is_ascii_digit())).then(|| first.to_string())
        }),
    };
    found.ok_or_else(|| format!("cannot find a job id in {}'s output: {}", system.submit_command(), output.trim()))
}

/// A job's state as taskfarm cares about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Queued, held or otherwise not started yet (raw state code kept).
    Pending(String),
    Running(String),
    /// Finished, failed, cancelled, or no longer known to the batch system.
    Gone(String),
}

impl JobState {
    pub fn code(&self) -> &str {
        match self {
            JobState::Pending(s) | JobState::Running(s) | JobState::Gone(s) => s,
        }
    }
    pub fn is_gone(&self) -> bool {
        matches!(self, JobState::Gone(_))
    }
}

fn classify(system: System, code: &str) -> JobState {
    let c = code.to_string();
    match system {
        System::Slurm => match code {
            "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" | "SUSPENDED" => JobState::Pending(c),
            "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" | "RESIZING" => JobState::Running(c),
            _ => JobState::Gone(c),
        },
        System::Pbs | System::Torque => match code {
            "Q" | "H" | "W" | "T" | "S" | "U" | "M" => JobState::Pending(c),
            "R" | "E" | "B" => JobState::Running(c),
            _ => JobState::Gone(c),
        },
        System::Lsf => match code {
            "PEND" | "PSUSP" | "WAIT" | "PROV" => JobState::Pending(c),
            "RUN" | "USUSP" | "SSUSP" => JobState::Running(c),
            _ => JobState::Gone(c),
        },
        // condor_q's letters (see condor_status_letter): Idle, Running,
        // removed (X), Completed, Held, > transferring output, Suspended.
        // A held job never starts by itself (adaptive scaling removes it).
        System::Condor => match code {
            "I" | "S" => JobState::Pending(c),
            "R" | ">" => JobState::Running(c),
            _ => JobState::Gone(c),
        },
        System::Sge => {
            if code.contains('E') || code.contains('d') {
                // Error states (Eqw) never start by themselves; deleting ones are ending.
                JobState::Gone(c)
            } else if code.contains('r') || code.contains('t') {
                JobState::Running(c)
            } else {
                JobState::Pending(c)
            }
        }
    }
}

/// A job the batch system keeps in its queue but will not start by itself
/// (HTCondor's held state, Grid Engine's error states such as Eqw).
pub fn is_held(system: System, state: &JobState) -> bool {
    match system {
        System::Condor => state.code() == "H",
        System::Sge => state.code().contains('E'),
        _ => false,
    }
}

/// condor_q's one-letter state for a JobStatus number.
pub fn condor_status_letter(status: &str) -> &'static str {
    match status {
        "1" => "I",
        "2" => "R",
        "3" => "X",
        "4" => "C",
        "5" => "H",
        "6" => ">",
        "7" => "S",
        _ => "?",
    }
}

/// States of `ids` from the state query's output. Ids not listed are gone.
pub fn parse_states(system: System, ids: &[String], output: &str) -> HashMap<String, JobState> {
    let mut seen: HashMap<String, JobState> = HashMap::new();
    for line in output.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (id, code) = match system {
            // "%i %T": "123 RUNNING"
            System::Slurm if cols.len() >= 2 => (cols[0], cols[1]),
            // Job id / Name / User / Time Use / S / Queue
            System::Pbs | System::Torque if cols.len() >= 6 => (cols[0], cols[4]),
            // JOBID USER STAT QUEUE ...
            System::Lsf if cols.len() >= 3 => (cols[0], cols[2]),
            // job-ID prior name user state ...
            System::Sge if cols.len() >= 5 => (cols[0], cols[4]),
            // "1234.0 2"
            System::Condor if cols.len() >= 2 => (cols[0], condor_status_letter(cols[1])),
            _ => continue,
        };
        if let Some(wanted) = ids.iter().find(|w| same_job(system, w, id)) {
            seen.insert(wanted.clone(), classify(system, code));
        }
    }
    ids.iter().map(|id| (id.clone(), seen.remove(id).unwrap_or_else(|| JobState::Gone("gone".into())))).collect()
}

/// PBS's default `qstat` truncates the id column ("1234.pbs-serv*" or
/// "1234.pbs-ser"), so compare the number and as much of the suffix as shown.
fn same_job(system: System, wanted: &str, shown: &str) -> bool {
    match system {
        System::Pbs | System::Torque => {
            let shown = shown.trim_end_matches('*');
            let num = |s: &str| s.split('.').next().unwrap_or("").to_string();
            num(wanted) == num(shown) && (wanted.starts_with(shown) || !shown.contains('.') || !wanted.contains('.'))
        }
        _ => wanted == shown,
    }
}
