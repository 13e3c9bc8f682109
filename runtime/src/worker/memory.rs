//! The memory policy as Dask has it (`distributed.worker.memory.*`): spill
//! least recently used values to get below the target (values held) and the
//! spill threshold (process memory), pause above the pause threshold, leave
//! above the terminate threshold. The decisions are pure ([`check`] against
//! a [`Probe`]); the worker's IO supplies the real probe.

/// What a worker does as its memory fills up; fractions of `limit`, as in
/// Dask. `None` disables a step.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPolicy {
    /// Bytes the worker process may use; `None`: no limit, no management.
    pub limit: Option<u64>,
    /// Spill least recently used values to disk when the values held in
    /// memory exceed this fraction.
    pub target: Option<f64>,
    /// Spill when the process's memory (RSS) exceeds this fraction.
    pub spill: Option<f64>,
    /// Start no new tasks (and take none from the scheduler) above this.
    pub pause: Option<f64>,
    /// Exit above this; the scheduler reschedules the work elsewhere.
    pub terminate: Option<f64>,
}

impl Default for MemoryPolicy {
    fn default() -> Self {
        MemoryPolicy {
            limit: None,
            target: Some(0.60),
            spill: Some(0.70),
            pause: Some(0.80),
            terminate: Some(0.95),
        }
    }
}

impl MemoryPolicy {
    pub fn with_limit(limit: Option<u64>) -> MemoryPolicy {
        MemoryPolicy {
            limit,
            ..Default::default()
        }
    }
}

/// What the policy reads and acts on.
pub trait Probe {
    /// Bytes of values held in memory.
    fn held(&self) -> u64;
    /// The process's resident memory.
    fn rss(&mut self) -> u64;
    /// Spill least recently used values until at most `target` bytes are held.
    fn spill_until(&mut self, target: u64);
    /// Give back pooled buffers; returns how many there were.
    fn release_pool(&mut self) -> usize;
}

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Carry on; `paused`: start no new tasks.
    Run { paused: bool, rss: u64 },
    /// Over the terminate threshold: leave.
    Terminate { rss: u64 },
}

/// Spill to the target without reading the process's memory (cheap: after
/// every new value).
pub fn spill_to_target(policy: &MemoryPolicy, probe: &mut dyn Probe) {
    let (Some(limit), Some(target)) = (policy.limit, policy.target) else {
        return;
    };
    let goal = (target * limit as f64) as u64;
    if probe.held() > goal {
        probe.spill_until(goal);
    }
}

/// The full check: target, then process memory (pooled buffers are the
/// first to go, then values), then terminate and pause. `None` without a limit.
pub fn check(policy: &MemoryPolicy, probe: &mut dyn Probe) -> Option<Verdict> {
    let limit = policy.limit? as f64;
    spill_to_target(policy, probe);
    let mut rss = probe.rss() as f64;
    let over_any = policy
        .spill
        .or(policy.pause)
        .or(policy.terminate)
        .is_some_and(|f| rss > f * limit);
    if over_any && probe.release_pool() > 0 {
        rss = probe.rss() as f64;
    }
    if let Some(spill) = policy.spill {
        if rss > spill * limit {
            let held = probe.held() as f64;
            let excess = rss - policy.target.unwrap_or(spill) * limit;
            probe.spill_until((held - excess).max(0.0) as u64);
            rss = probe.rss() as f64;
        }
    }
    if policy.terminate.is_some_and(|t| rss > t * limit) {
        return Some(Verdict::Terminate { rss: rss as u64 });
    }
    Some(Verdict::Run {
        paused: policy.pause.is_some_and(|p| rss > p * limit),
        rss: rss as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process whose memory is its values plus `base`; spilling frees them.
    struct Fake {
        base: u64,
        held: u64,
        pool: u64,
        spills: Vec<u64>,
    }

    impl Probe for Fake {
        fn held(&self) -> u64 {
            self.held
        }
        fn rss(&mut self) -> u64 {
            self.base + self.held + self.pool
        }
        fn spill_until(&mut self, target: u64) {
            self.spills.push(target);
            self.held = self.held.min(target);
        }
        fn release_pool(&mut self) -> usize {
            let had = (self.pool > 0) as usize;
            self.pool = 0;
            had
        }
    }

    /// A process of `base` other memory holding `held` bytes of values and `pool` pooled.
    fn fake(base: u64, held: u64, pool: u64) -> Fake {
        Fake { base, held, pool, spills: vec![] }
    }

    fn run(paused: bool, rss: u64) -> Option<Verdict> {
        Some(Verdict::Run { paused, rss })
    }

    fn policy(limit: u64) -> MemoryPolicy {
        MemoryPolicy::with_limit(Some(limit))
    }

    #[test]
    fn no_limit_no_management() {
        let mut f = fake(10, 1 << 40, 0);
        assert_eq!(check(&MemoryPolicy::default(), &mut f), None);
        assert!(f.spills.is_empty());
    }

    #[test]
    fn values_over_the_target_are_spilled_to_it() {
        let mut f = fake(0, 700, 0);
        assert_eq!(
            check(&policy(1000), &mut f),
            run(false, 600)
        );
        assert_eq!(f.spills, [600]);
    }

    #[test]
    fn process_memory_over_spill_threshold_spills_the_excess_and_pool_goes_first() {
        // 500 of other memory + 250 held = 750 > 70 %: spill down to 60 % of
        // the process, i.e. hold 100.
        let mut f = fake(500, 250, 0);
        assert_eq!(
            check(&policy(1000), &mut f),
            run(false, 600)
        );
        assert_eq!(f.spills, [100]);
        // Pooled buffers that bring it back under every threshold: no spill.
        let mut f = fake(500, 100, 200);
        assert_eq!(
            check(&policy(1000), &mut f),
            run(false, 600)
        );
        assert!(f.spills.is_empty() && f.pool == 0);
    }

    #[test]
    fn pause_and_terminate_thresholds() {
        let mut f = fake(850, 0, 0);
        assert_eq!(
            check(&policy(1000), &mut f),
            run(true, 850)
        );
        let mut f = fake(960, 0, 0);
        assert_eq!(
            check(&policy(1000), &mut f),
            Some(Verdict::Terminate { rss: 960 })
        );
        let off = MemoryPolicy {
            terminate: None,
            pause: None,
            ..policy(1000)
        };
        assert_eq!(
            check(&off, &mut f),
            run(false, 960)
        );
    }
}
