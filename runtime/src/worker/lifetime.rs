//! When a worker leaves: `--lifetime`, else the walltime (given, or asked of
//! the batch system) minus a margin, minus a random stagger so that workers
//! started together do not all leave at once. One policy for `taskfarm
//! worker` and the workers of `taskfarm mpi`.

use crate::jobqueue;
use std::time::Duration;

/// What the user asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LifetimeRequest {
    /// Retire this long after starting.
    pub lifetime: Option<Duration>,
    /// Leave up to this much earlier, at random [default: 0 with a lifetime,
    /// half the margin with a walltime].
    pub stagger: Option<Duration>,
    /// The job's walltime (HH:MM:SS, 90m, ...), counted from the worker's start.
    pub walltime: Option<String>,
    /// Retire this long before the walltime [default: 10 % of it, 5 s to 5 min].
    pub walltime_margin: Option<Duration>,
    /// Without a lifetime or walltime, ask the batch system for the time
    /// left in this job (`taskfarm worker`; not the ranks of `taskfarm mpi`,
    /// which all end together anyway).
    pub ask_batch_system: bool,
}

impl LifetimeRequest {
    /// Check the request without asking anything (before connecting).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(w) = &self.walltime {
            jobqueue::parse_walltime(w).map_err(|e| format!("--walltime: {e}"))?;
        }
        Ok(())
    }

    /// How long the worker stays (`None`: no limit).
    pub fn plan(&self) -> Result<Option<Duration>, String> {
        let walltime = match (&self.lifetime, &self.walltime) {
            (Some(_), _) => None,
            (None, Some(w)) => Some((jobqueue::parse_walltime(w).map_err(|e| format!("--walltime: {e}"))?, "--walltime".to_string())),
            (None, None) if self.ask_batch_system => jobqueue::walltime_left().map(|(sys, left)| (left, format!("the time left in this {sys} job"))),
            (None, None) => None,
        };
        let r = u64::from_le_bytes(crate::util::random_bytes(8).try_into().expect("8 bytes")) as f64 / u64::MAX as f64;
        self.plan_with(walltime, r)
    }

    /// The pure part: `walltime` is (seconds, where it came from); `r` in [0, 1].
    pub fn plan_with(&self, walltime: Option<(u64, String)>, r: f64) -> Result<Option<Duration>, String> {
        let (base, default_stagger) = match (self.lifetime, walltime) {
            (Some(l), _) => (l, Duration::ZERO),
            (None, Some((secs, source))) => {
                let margin = self.walltime_margin.unwrap_or_else(|| Duration::from_secs(jobqueue::default_margin(secs)));
                let total = Duration::from_secs(secs);
                if margin >= total {
                    return Err(format!("--walltime-margin ({:.0} s) leaves no time of the walltime ({secs} s)", margin.as_secs_f64()));
                }
                crate::log_at!(2, "worker", "walltime {secs} s (from {source}): retiring {:.0} s before the end", margin.as_secs_f64());
                (total - margin, jobqueue::default_stagger(margin))
            }
            (None, None) => return Ok(None),
        };
        let stagger = self.stagger.unwrap_or(default_stagger).min(base).as_secs_f64();
        Ok(Some(base - Duration::from_secs_f64(stagger * r.clamp(0.0, 1.0))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_walltime_margin_and_stagger() {
        let none = LifetimeRequest::default();
        assert_eq!(none.plan_with(None, 0.5), Ok(None));
        let l = LifetimeRequest { lifetime: Some(Duration::from_secs(100)), stagger: Some(Duration::from_secs(10)), ..Default::default() };
        assert_eq!(l.plan_with(Some((1000, "x".into())), 0.5), Ok(Some(Duration::from_secs(95))), "the lifetime wins over a walltime");
        // 1 h walltime: 10 % margin capped at 5 min, half of it as stagger.
        let w = LifetimeRequest::default();
        assert_eq!(w.plan_with(Some((3600, "x".into())), 0.0), Ok(Some(Duration::from_secs(3300))));
        assert_eq!(w.plan_with(Some((3600, "x".into())), 1.0), Ok(Some(Duration::from_secs(3150))));
        let bad = LifetimeRequest { walltime_margin: Some(Duration::from_secs(60)), ..Default::default() };
        assert!(bad.plan_with(Some((60, "x".into())), 0.0).unwrap_err().contains("leaves no time"));
        assert!(LifetimeRequest { walltime: Some("soon".into()), ..Default::default() }.validate().unwrap_err().starts_with("--walltime"));
    }
}
