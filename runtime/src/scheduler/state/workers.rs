//! Workers joining, reporting and leaving: registration, heartbeats, timeouts,
//! the loss of a worker (rescheduling, recomputation, suspicion), start reports.

use super::*;

impl SchedulerState {

    // ---- workers ---------------------------------------------------------

    pub fn add_worker(&mut self, info: WorkerInfo, now: f64) -> WorkerId {
        let id = self.next_worker;
        self.next_worker += 1;
        self.logs.push(format!("worker '{}' joined from {} with {} threads", info.name, info.address, info.nthreads));
        self.workers.insert(
            id,
            Worker {
                info,
                processing: IdSet::default(),
                has_what: IdSet::default(),
                last_seen: now,
                metrics: WorkerMetrics::default(),
                retiring: false,
                retired: false,
            },
        );
        self.to_worker.push((id, ToWorker::Welcome { worker_id: id }));
        self.plugins_for_new_worker(id);
        // Tasks no worker could run may fit the newcomer.
        let stuck = std::mem::take(&mut self.no_worker);
        for t in stuck {
            if self.tasks[t as usize].state == TaskState::NoWorker {
                self.make_ready(t);
            }
        }
        self.settle();
        self.fill_worker(id);
        id
    }

    pub fn heartbeat(&mut self, w: WorkerId, metrics: WorkerMetrics, now: f64) {
        let Some(worker) = self.workers.get_mut(&w) else { return };
        worker.last_seen = now;
        let resumed = worker.metrics.paused && !metrics.paused;
        if metrics.paused && !worker.metrics.paused {
            self.logs.push(format!("worker '{}' paused: over its memory pause threshold; sending it no new tasks", worker.info.name));
        }
        let newly_full = metrics.paused && metrics.storage_error.is_some() && !(worker.metrics.paused && worker.metrics.storage_error.is_some());
        worker.metrics = metrics;
        if newly_full {
            let err = worker.metrics.storage_error.clone().unwrap_or_default();
            self.logs.push(format!("worker '{}' is paused and cannot spill to disk: {err}", worker.info.name));
        }
        if resumed {
            self.logs.push(format!("worker '{}' resumed", self.workers[&w].info.name));
            self.fill_worker(w);
        }
        self.fail_queued_on_full_worker(w);
    }

    /// A worker paused over its memory threshold that cannot spill either
    /// (its disk is full) will not start its queued tasks: each of them that
    /// no other worker taking work may run fails, naming the worker and the
    /// disk (the others are moved by work stealing as usual).
    fn fail_queued_on_full_worker(&mut self, w: WorkerId) {
        let Some(worker) = self.workers.get(&w) else { return };
        let (true, Some(err)) = (worker.metrics.paused, worker.metrics.storage_error.clone()) else { return };
        let name = worker.info.name.clone();
        let queued: Vec<TaskId> = worker.processing.iter().copied().filter(|&t| !self.tasks[t as usize].started).collect();
        let mut failed = 0;
        for t in queued {
            let elsewhere = self.workers.iter().any(|(&id, o)| id != w && o.accepts_work() && self.eligible(t, o));
            if elsewhere {
                continue;
            }
            self.stats.tasks_erred += 1;
            self.mark_erred(
                t,
                format!("worker '{name}' is over its memory pause threshold and cannot spill to disk ({err}); free space in its --local-directory or give it a larger --memory-limit"),
            );
            failed += 1;
        }
        // When every worker is full, the tasks queued here (root tasks
        // waiting for any worker) would wait forever too.
        let all_full = self.workers.values().all(|o| o.metrics.paused && o.metrics.storage_error.is_some());
        if all_full {
            while let Some((_, t)) = self.queued.pop() {
                if self.tasks[t as usize].state == TaskState::Queued {
                    self.stats.tasks_erred += 1;
                    self.mark_erred(
                        t,
                        format!("every worker is over its memory pause threshold and cannot spill to disk (worker '{name}': {err}); free space in their --local-directory or give them a larger --memory-limit"),
                    );
                    failed += 1;
                }
            }
        }
        if failed > 0 {
            self.logs.push(format!("failed {failed} task(s) that only full workers (memory and disk) could run, worker '{name}' among them"));
            self.settle();
        }
    }

    /// Any message from a worker proves it alive.
    pub fn touch(&mut self, w: WorkerId, now: f64) {
        if let Some(worker) = self.workers.get_mut(&w) {
            worker.last_seen = now;
        }
    }

    /// Workers lost within [`CHURN_WINDOW`] of each other, [`CHURN_LOSSES`]
    /// or more: new results that other tasks still need get a second copy
    /// (a lost worker then costs no recomputation); quiet again after a
    /// window without losses.
    pub(super) fn update_churn(&mut self) {
        while self.losses.front().is_some_and(|&t| self.now - t > CHURN_WINDOW) {
            self.losses.pop_front();
        }
        let churn = self.losses.len() >= CHURN_LOSSES;
        if churn != self.churn {
            self.churn = churn;
            self.logs.push(if churn {
                format!("workers are being lost often ({} in {CHURN_WINDOW:.0} s): keeping a second copy of new results that other tasks still need", self.losses.len())
            } else {
                format!("no worker lost for {CHURN_WINDOW:.0} s: one copy of each result again")
            });
        }
    }

    /// A second copy of `t` (just finished on `w`) while workers are being
    /// lost often, if other tasks still need it: on the worker holding the
    /// least, not retiring.
    pub(super) fn replicate_if_churning(&mut self, t: TaskId, w: WorkerId) {
        if !self.churn || self.replicating.contains_key(&t) || self.tasks[t as usize].who_has.len() != 1 || self.tasks[t as usize].waiters == 0 {
            return;
        }
        let target = self.workers.iter().filter(|(&id, o)| id != w && !o.retiring).min_by_key(|(_, o)| o.has_what.len()).map(|(&id, _)| id);
        if let Some(target) = target {
            self.replicating.insert(t, target);
            let holders = vec![self.workers[&w].info.address.clone()];
            self.to_worker.push((target, ToWorker::Replicate { id: t, holders }));
        }
    }

    /// Every 10 s: when results lost with workers and run again outnumber
    /// the tasks finished for the first time, the graph is going backwards:
    /// say so.
    fn check_progress(&mut self, now: f64) {
        const WINDOW: f64 = 10.0;
        let (t0, finished0, recomputed0, lost0) = self.progress_mark;
        if now - t0 < WINDOW {
            return;
        }
        let s = &self.stats;
        let (finished, recomputed, lost) = (s.tasks_finished - finished0, s.tasks_recomputed - recomputed0, s.workers_lost - lost0);
        if lost > 0 && recomputed > 0 && 2 * recomputed >= finished {
            self.logs.push(format!(
                "going backwards: in the last {:.0} s {lost} worker(s) were lost and {recomputed} results had to be computed again, while {finished} tasks finished; \
                 workers die faster than the work progresses (more workers, or fewer losses, would help)",
                now - t0
            ));
        }
        self.progress_mark = (now, s.tasks_finished, s.tasks_recomputed, s.workers_lost);
    }

    /// Remove workers that have been silent for longer than the timeout.
    /// Returns the ids removed.
    pub fn check_timeouts(&mut self, now: f64) -> Vec<WorkerId> {
        self.now = now;
        self.update_churn();
        self.check_progress(now);
        let timeout = self.config.worker_timeout;
        let silent: Vec<WorkerId> = self.workers.iter().filter(|(_, w)| now - w.last_seen > timeout).map(|(&id, _)| id).collect();
        for &w in &silent {
            self.remove_worker(w, &format!("no message for {timeout:.0} s"));
        }
        silent
    }

    /// A worker left or was lost: reschedule what it was running, recompute
    /// what only it held and is still needed.
    pub fn remove_worker(&mut self, w: WorkerId, reason: &str) {
        let Some(worker) = self.workers.remove(&w) else { return };
        let name = worker.info.name.clone();
        if worker.retiring && !worker.retired {
            self.retiring_count -= 1;
        }
        if worker.retired {
            self.stats.workers_retired += 1;
            self.logs.push(format!("worker '{name}' ({}) retired", worker.info.address));
        } else {
            self.stats.workers_lost += 1;
            self.logs.push(format!("worker '{name}' ({}) removed: {reason}", worker.info.address));
            self.losses.push_back(self.now);
            self.update_churn();
        }
        // Copies this worker was making are retried elsewhere.
        self.replicating.retain(|_, target| *target != w);
        self.stealing.retain(|_, (victim, thief)| *victim != w && *thief != w);
        self.frees.remove(&w);
        self.to_worker.retain(|(id, _)| *id != w);

        let mut held: Vec<TaskId> = worker.has_what.into_iter().collect();
        held.sort_unstable();
        let mut lost = Vec::new();
        let mut one_copy_left = Vec::new();
        for t in held {
            let task = &mut self.tasks[t as usize];
            task.who_has.retain(|&h| h != w);
            if task.who_has.is_empty() && task.state == TaskState::Memory {
                self.lose_value(t);
                lost.push(t);
            } else if task.who_has.len() == 1 && task.state == TaskState::Memory {
                one_copy_left.push((t, task.who_has[0]));
            }
        }
        // While workers keep dying, a value down to one copy gets a second
        // again (else copies die out one loss at a time).
        for (t, holder) in one_copy_left {
            self.replicate_if_churning(t, holder);
        }
        let mut processing: Vec<TaskId> = worker.processing.into_iter().collect();
        processing.sort_unstable();
        // Suspect the tasks it had begun running, not those queued behind
        // them; if it reported none (it died before it could say), all.
        let any_started = processing.iter().any(|&t| self.tasks[t as usize].started);
        let mut suspected = Vec::new();
        for t in processing {
            let task = &mut self.tasks[t as usize];
            task.set_on(None);
            if task.started || !any_started {
                task.suspicious += 1;
                suspected.push(key_at(&self.key_bytes, task.key).to_string());
                if task.suspicious == 1 {
                    self.first_suspicion.insert(t, self.stats.workers_lost);
                }
            }
            let task = &self.tasks[t as usize];
            // Blamed only if it was running in most of the deaths since its
            // first one: where workers die anyway (preemption, a bad node,
            // an admin's kill -9), an innocent task also meets a few.
            let deaths_since = self.stats.workers_lost + 1 - self.first_suspicion.get(&t).copied().unwrap_or(self.stats.workers_lost);
            let blamed = task.suspicious > self.config.allowed_failures && 2 * u64::from(task.suspicious) > deaths_since;
            if task.suspicious > self.config.allowed_failures && !blamed && task.suspicious == self.config.allowed_failures + 1 {
                self.logs.push(format!(
                    "task '{}' was running on {} workers that died, but {deaths_since} workers died meanwhile: workers are being lost for other reasons; not blaming it",
                    key_at(&self.key_bytes, task.key),
                    task.suspicious
                ));
            }
            if blamed {
                let msg = format!(
                    "task was running on {} workers that died (last: '{name}'); it may be crashing its worker (allowed failures: {})",
                    task.suspicious, self.config.allowed_failures
                );
                self.logs.push(format!("task '{}' marked erred: {msg}", key_at(&self.key_bytes, task.key)));
                self.mark_erred(t, msg);
            } else {
                self.stats.tasks_rescheduled += 1;
                self.back_to_waiting(t);
            }
        }

        if !suspected.is_empty() {
            self.debug_logs.push(format!("tasks running on '{name}' when it was lost: {}", suspected.join(", ")));
        }
        let mut recomputed = Vec::new();
        for t in lost {
            if self.is_needed(t) {
                recomputed.push(self.key(t).to_string());
                self.stats.tasks_recomputed += 1;
                self.ensure_computing(t);
            } else {
                self.check.push(t);
            }
        }
        if !recomputed.is_empty() {
            let shown: Vec<&str> = recomputed.iter().take(20).map(String::as_str).collect();
            let more = if recomputed.len() > 20 { format!(" and {} more", recomputed.len() - 20) } else { String::new() };
            self.logs.push(format!("recomputing {} lost keys held only by '{name}': {}{more}", recomputed.len(), shown.join(", ")));
            if recomputed.len() > 20 {
                self.debug_logs.push(format!("all lost keys recomputed after '{name}' left: {}", recomputed.join(", ")));
            }
        }
        self.settle();
        self.fill_all();
        self.progress_retirements();
    }

    /// Worker `w` began running `ids`.
    pub fn started(&mut self, w: WorkerId, ids: &[TaskId], now: f64) {
        self.touch(w, now);
        for &t in ids {
            if let Some(task) = self.tasks.get_mut(t as usize) {
                if task.state == TaskState::Processing && task.on() == Some(w) {
                    task.started = true;
                }
            }
        }
    }
}
