//! Work stealing: moving tasks a busy worker has not started to an idle one.

use super::*;

/// Busy workers whose queues one call of `balance` looks through.
const MAX_VICTIMS_PER_BALANCE: usize = 64;

impl SchedulerState {

    // ---- work stealing -----------------------------------------------------

    /// Move tasks waiting on busy workers to workers with idle threads, when
    /// nothing is queued at the scheduler. A task moves only if fetching its
    /// inputs on the idle worker costs less than twice a typical task's run
    /// time. The busy worker is asked to give up tasks it has not started
    /// (those it would run last); see `stolen`.
    pub fn balance(&mut self) {
        if self.count(TaskState::Queued) > 0 {
            return;
        }
        let mut idle: Vec<(WorkerId, usize)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.accepts_work() && w.processing.len() < w.info.nthreads as usize)
            .map(|(&id, w)| (id, w.info.nthreads as usize - w.processing.len()))
            .collect();
        if idle.is_empty() {
            return;
        }
        let mut busy: Vec<(usize, WorkerId)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.processing.len() > w.info.nthreads as usize)
            .map(|(&id, w)| (w.processing.len() - w.info.nthreads as usize, id))
            .collect();
        busy.sort_unstable_by(|a, b| b.cmp(a));
        let budget = 2.0 * self.avg_duration.max(1e-3);
        // The most loaded victims first, and only so many per call: with
        // thousands of busy workers whose queued tasks are already asked
        // for (steals under way), looking through all their queues every
        // 5 ms took the whole core and starved the rest.
        for (excess, victim) in busy.into_iter().take(MAX_VICTIMS_PER_BALANCE) {
            if idle.is_empty() {
                break;
            }
            let mut candidates: Vec<(Priority, TaskId)> = self.workers[&victim]
                .processing
                .iter()
                .filter(|t| !self.stealing.contains_key(t))
                .map(|&t| (self.tasks[t as usize].priority, t))
                .collect();
            // The tasks it would run last first.
            candidates.sort_unstable_by(|a, b| b.cmp(a));
            let mut requests = Vec::new();
            let mut quota = excess.div_ceil(2);
            for (_, t) in candidates {
                if quota == 0 || idle.is_empty() {
                    break;
                }
                let task = &self.tasks[t as usize];
                let thief = idle.iter().position(|(thief, _)| {
                    let w = &self.workers[thief];
                    let missing: u64 = task.deps.iter().map(|&d| &self.tasks[d as usize]).filter(|d| !d.who_has.contains(thief)).map(|d| d.nbytes).sum();
                    self.eligible(t, w) && (missing as f64 / self.config.bandwidth) < budget
                });
                let Some(i) = thief else { continue };
                requests.push((t, idle[i].0));
                quota -= 1;
                idle[i].1 -= 1;
                if idle[i].1 == 0 {
                    idle.remove(i);
                }
            }
            if requests.is_empty() {
                continue;
            }
            for &(t, thief) in &requests {
                self.stealing.insert(t, (victim, thief));
            }
            self.to_worker.push((victim, ToWorker::Steal { ids: requests.into_iter().map(|(t, _)| t).collect() }));
        }
    }

    /// Worker `victim` gave up `ids` (they had not started) and kept `kept`
    /// (they had): hand each given-up task to the thief chosen for it (or
    /// place it afresh if that one is gone). Only these requests are
    /// settled: others to the same worker may still be under way.
    pub fn stolen(&mut self, victim: WorkerId, ids: &[TaskId], kept: &[TaskId], now: f64) {
        self.touch(victim, now);
        for t in kept {
            if self.stealing.get(t).is_some_and(|(v, _)| *v == victim) {
                self.stealing.remove(t);
            }
        }
        for &t in ids {
            let thief = match self.stealing.get(&t) {
                Some(&(v, thief)) if v == victim => {
                    self.stealing.remove(&t);
                    Some(thief)
                }
                _ => None,
            };
            let Some(task) = self.tasks.get_mut(t as usize) else { continue };
            // The victim no longer has the task, even when the request is
            // no longer on record (the thief left meanwhile): place it again,
            // else it would stay "processing" there for ever.
            if task.state != TaskState::Processing || task.on() != Some(victim) {
                continue;
            }
            task.set_on(None);
            if let Some(w) = self.workers.get_mut(&victim) {
                w.processing.remove(&t);
            }
            self.stats.tasks_stolen += 1;
            let deps_ready = self.tasks[t as usize].deps.iter().all(|&d| self.tasks[d as usize].state == TaskState::Memory);
            match thief.filter(|th| self.workers.get(th).is_some_and(|w| w.accepts_work())) {
                Some(thief) if deps_ready => self.send_to_worker(t, thief),
                _ => self.back_to_waiting(t),
            }
        }
        self.settle();
        self.fill_all();
    }
}
