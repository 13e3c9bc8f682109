//! The record of worker jobs taskfarm submitted for one scheduler, kept
//! next to its scheduler file (`S.jobs.json`, mode 0600), so that
//! `taskfarm jobqueue list|cancel` work from any shell and the adaptive
//! scheduler and the CLI can share it. Updates hold an exclusive `flock` on
//! `S.jobs.lock` and replace the file atomically.

use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// One submitted job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub system: String,
    /// Unix time of submission.
    pub submitted: f64,
    /// "submit" (the jobqueue command) or "adapt" (the scheduler).
    pub by: String,
    /// Worker processes the job starts.
    pub workers: u32,
    /// Last state seen (the batch system's code), or "submitted".
    pub state: String,
    /// Unix time the job was first seen gone (finished, cancelled, failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<f64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RecordFile {
    version: u32,
    jobs: Vec<JobRecord>,
}

/// Finished jobs are dropped from the record after this long.
const KEEP_ENDED_SECS: f64 = 24.0 * 3600.0;

pub struct Record {
    path: PathBuf,
}

impl Record {
    /// The record that belongs to the scheduler file `scheduler_file`.
    pub fn for_scheduler_file(scheduler_file: &Path) -> Record {
        Record { path: super::beside(scheduler_file, ".jobs.json") }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All recorded jobs (none if there is no record yet).
    pub fn load(&self) -> Result<Vec<JobRecord>, String> {
        self.update(|jobs| jobs.clone())
    }

    fn read(&self) -> Result<Vec<JobRecord>, String> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str::<RecordFile>(&text)
                .map(|f| f.jobs)
                .map_err(|e| format!("job record {} is malformed ({e}); move it away to start a new one", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("cannot read job record {}: {e}", self.path.display())),
        }
    }

    /// Change the record under an exclusive lock.
    pub fn update<R>(&self, f: impl FnOnce(&mut Vec<JobRecord>) -> R) -> Result<R, String> {
        let lock_path = self.path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        // SAFETY: flock on an open descriptor; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!("cannot lock {}: {}", lock_path.display(), std::io::Error::last_os_error()));
        }
        let mut jobs = self.read()?;
        let before = jobs.clone();
        let result = f(&mut jobs);
        let now = crate::util::unix_time();
        jobs.retain(|j| j.ended.is_none_or(|t| now - t < KEEP_ENDED_SECS));
        if jobs != before {
            let mut text = serde_json::to_vec_pretty(&RecordFile { version: 1, jobs }).expect("serialisable");
            text.push(b'\n');
            crate::util::write_file_atomic(&self.path, &text, 0o600).map_err(|e| format!("cannot write job record {}: {e}", self.path.display()))?;
        }
        Ok(result)
    }

    /// Record newly submitted jobs.
    pub fn add(&self, system: &str, ids: &[String], by: &str, workers: u32) -> Result<(), String> {
        let now = crate::util::unix_time();
        self.update(|jobs| {
            for id in ids {
                jobs.push(JobRecord { id: id.clone(), system: system.to_string(), submitted: now, by: by.to_string(), workers, state: "submitted".into(), ended: None });
            }
        })
    }

    /// Store the states just seen; jobs seen gone get their end time.
    pub fn set_states(&self, states: &std::collections::HashMap<String, super::JobState>) -> Result<(), String> {
        let now = crate::util::unix_time();
        self.update(|jobs| {
            for j in jobs.iter_mut().filter(|j| j.ended.is_none()) {
                if let Some(s) = states.get(&j.id) {
                    j.state = s.code().to_string();
                    if s.is_gone() {
                        j.ended = Some(now);
                    }
                }
            }
        })
    }
}
