//! Why a batch job ended (or is stuck), in the batch system's own words:
//! the query per system ([`end_reason`]) and pure parsers of each tool's
//! output, tested in `tests.rs` against the documented formats.

use super::{run, System};

/// The batch system's own account of why job `id` ended (or is stuck):
/// SLURM's `scontrol show job` (or `sacct`) state, reason and exit code,
/// PBS's `qstat -f` comment and exit status, LSF's `bjobs -l` end lines,
/// Grid Engine's `qacct -j` failure and exit status, HTCondor's hold or
/// remove reason and exit code. None when the system no longer knows.
pub fn end_reason(system: System, id: &str) -> Option<String> {
    let ask = |program: &str, args: &[&str]| -> Option<String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        run(program, &args, None).ok().filter(|(code, _, _)| *code == 0).map(|(_, out, _)| out)
    };
    let found = match system {
        System::Slurm => ask("scontrol", &["show", "job", "-o", id])
            .and_then(|o| reason_from_fields(&o, &["JobState", "Reason", "ExitCode"], '='))
            .or_else(|| ask("sacct", &["-n", "-X", "-P", "-j", id, "-o", "State,Reason,ExitCode"]).and_then(|o| reason_from_sacct(&o))),
        System::Pbs | System::Torque => ask("qstat", &["-x", "-f", id]).or_else(|| ask("qstat", &["-f", id])).and_then(|o| reason_from_fields(&o, &["job_state", "comment", "Exit_status"], '=')),
        System::Lsf => ask("bjobs", &["-l", id]).and_then(|o| reason_from_bjobs_l(&o)),
        System::Sge => ask("qacct", &["-j", id]).and_then(|o| reason_from_columns(&o, &["failed", "exit_status"])),
        System::Condor => {
            let attrs = ["JobStatus", "HoldReason", "RemoveReason", "ExitCode"];
            let mut q = vec![id, "-af:ln"];
            q.extend(attrs);
            ask("condor_q", &q).and_then(|o| reason_from_fields(&o, &attrs, '=')).or_else(|| {
                let mut h = vec!["-limit", "1", id, "-af:ln"];
                h.extend(attrs);
                ask("condor_history", &h).and_then(|o| reason_from_fields(&o, &attrs, '='))
            })
        }
    };
    found.map(|r| format!("{system} says: {r}"))
}

/// `Key=value` (or `key = value`) fields named in `keys`, in that order,
/// from text holding them anywhere (one line or many); "undefined",
/// "None" and empty values are left out.
pub fn reason_from_fields(text: &str, keys: &[&str], sep: char) -> Option<String> {
    let mut parts = Vec::new();
    for key in keys {
        let value = text.lines().find_map(|line| {
            let line = line.trim();
            if sep == '=' && line.contains(" = ") {
                let (k, v) = line.split_once(" = ")?;
                return (k.trim() == *key).then(|| v.trim().trim_matches('"').to_string());
            }
            // One line of space-separated Key=Value fields (scontrol -o);
            // a value runs to the next " Key=".
            let start = line.find(&format!("{key}{sep}")).filter(|&i| i == 0 || line.as_bytes()[i - 1] == b' ')?;
            let rest = &line[start + key.len() + 1..];
            let end = rest.match_indices(' ').find(|(i, _)| rest[i + 1..].split_once(sep).is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'))).map_or(rest.len(), |(i, _)| i);
            Some(rest[..end].trim().to_string())
        });
        if let Some(v) = value.filter(|v| !v.is_empty() && v != "undefined" && v != "None" && v != "(null)") {
            parts.push(format!("{key}={v}"));
        }
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

pub(super) fn reason_from_sacct(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let f: Vec<&str> = line.split('|').collect();
    let names = ["State", "Reason", "ExitCode"];
    let parts: Vec<String> = names.iter().zip(&f).filter(|(_, v)| !v.is_empty() && **v != "None").map(|(k, v)| format!("{k}={v}")).collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// `qacct -j`: "name   value" columns.
pub(super) fn reason_from_columns(text: &str, keys: &[&str]) -> Option<String> {
    let parts: Vec<String> = keys
        .iter()
        .filter_map(|k| text.lines().find_map(|l| l.trim().strip_prefix(k).filter(|r| r.starts_with(' ')).map(|r| format!("{k}={}", r.trim()))))
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// `bjobs -l`: its lines wrap at 80 columns with continuation lines
/// indented; the end is told by "Exited ...", "Done successfully ..." and
/// "Completed <exit>; TERM_...: ..." events, a pending job's by its
/// PENDING REASONS.
pub(super) fn reason_from_bjobs_l(text: &str) -> Option<String> {
    let mut joined = String::new();
    for line in text.lines() {
        if line.starts_with("                     ") {
            joined.push_str(line.trim_start());
        } else {
            joined.push('\n');
            joined.push_str(line);
        }
    }
    let mut parts: Vec<String> = Vec::new();
    let mut pending = false;
    for line in joined.lines().map(str::trim) {
        if pending {
            if line.is_empty() {
                pending = false;
            } else {
                parts.push(format!("pending: {line}"));
            }
            continue;
        }
        if line.starts_with("PENDING REASONS:") {
            pending = true;
            continue;
        }
        // "Wed Dec  3 10:00:05: Exited with exit code 1. ..."
        let event = line.splitn(4, ':').nth(3).map(str::trim).unwrap_or("");
        if event.starts_with("Exited") || event.starts_with("Done successfully") || event.starts_with("Completed <") {
            parts.push(event.to_string());
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}
