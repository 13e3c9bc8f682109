//! Task state transitions: results, errors, missing data, waiting and
//! releasing, recomputation from lineage, forgetting.

use super::*;

impl SchedulerState {

    // ---- results from workers ----------------------------------------------

    pub fn task_finished(&mut self, w: WorkerId, t: TaskId, nbytes: u64, duration: f64, now: f64) {
        self.task_finished_with(w, t, nbytes, duration, None, now);
    }

    /// A task finished on `w`; `value` is its result when it came inline
    /// (small, and asked for because a client waits for it): it is passed on
    /// to those clients, not kept.
    pub fn task_finished_with(&mut self, w: WorkerId, t: TaskId, nbytes: u64, duration: f64, value: Option<Payload>, now: f64) {
        self.touch(w, now);
        if !self.workers.contains_key(&w) {
            return;
        }
        let Some(task) = self.tasks.get(t as usize) else {
            self.logs.push(format!("worker {w} reported unknown task id {t}; ignored"));
            return;
        };
        match task.state {
            TaskState::Processing => {}
            TaskState::Memory => {
                // A second copy (e.g. the task was also run elsewhere): keep it.
                if !task.who_has.contains(&w) {
                    self.tasks[t as usize].who_has.push(w);
                    self.workers.get_mut(&w).expect("checked").has_what.insert(t);
                }
                return;
            }
            _ => {
                self.frees.entry(w).or_default().push(t);
                return;
            }
        }
        self.avg_duration = if self.stats.tasks_finished == 0 { duration } else { 0.9 * self.avg_duration + 0.1 * duration };
        self.stats.tasks_finished += 1;
        if let Some(p) = self.tasks[t as usize].take_on() {
            if let Some(pw) = self.workers.get_mut(&p) {
                pw.processing.remove(&t);
            }
        }
        let task = &mut self.tasks[t as usize];
        task.nbytes = nbytes;
        task.who_has.push(w);
        self.workers.get_mut(&w).expect("checked").has_what.insert(t);
        self.set_state(t, TaskState::Memory);
        self.value_arrived(t, value);
        self.replicate_if_churning(t, w);
        self.check.push(t);
        self.settle();
        self.fill_worker(w);
        // Work stealing after a finish frees threads, at most every
        // BALANCE_INTERVAL: its cost grows with the workers and their queues,
        // and the server also runs it on its periodic tick.
        if now - self.last_balance >= BALANCE_INTERVAL && self.workers.get(&w).is_some_and(|x| x.processing.len() < x.info.nthreads as usize) {
            self.last_balance = now;
            self.balance();
        }
    }

    pub fn task_erred(&mut self, w: WorkerId, t: TaskId, error: String, now: f64) {
        self.touch(w, now);
        let Some(task) = self.tasks.get_mut(t as usize) else { return };
        if task.state != TaskState::Processing || task.on() != Some(w) {
            return;
        }
        task.set_on(None);
        if let Some(pw) = self.workers.get_mut(&w) {
            pw.processing.remove(&t);
        }
        let task = &mut self.tasks[t as usize];
        if task.retries_left > 0 {
            task.retries_left -= 1;
            self.stats.retries += 1;
            self.logs.push(format!("task '{}' failed, retrying ({} retries left): {error}", key_at(&self.key_bytes, task.key), task.retries_left));
            self.back_to_waiting(t);
        } else {
            self.stats.tasks_erred += 1;
            self.mark_erred(t, error);
        }
        self.settle();
        self.fill_worker(w);
    }

    /// Worker `w` could not fetch dependency `dep` of task `t` from the
    /// holders it tried.
    pub fn missing_data(&mut self, w: WorkerId, t: TaskId, dep: TaskId, tried: &[String], now: f64) {
        self.touch(w, now);
        let (Some(task), Some(_)) = (self.tasks.get(t as usize), self.tasks.get(dep as usize)) else { return };
        if task.state != TaskState::Processing || task.on() != Some(w) {
            return;
        }
        let stale: Vec<WorkerId> = self.tasks[dep as usize]
            .who_has
            .iter()
            .copied()
            .filter(|h| self.workers.get(h).is_some_and(|hw| tried.contains(&hw.info.address)))
            .collect();
        for h in stale {
            self.tasks[dep as usize].who_has.retain(|&x| x != h);
            if let Some(hw) = self.workers.get_mut(&h) {
                hw.has_what.remove(&dep);
            }
        }
        self.tasks[t as usize].set_on(None);
        self.workers.get_mut(&w).expect("checked").processing.remove(&t);
        if self.tasks[dep as usize].state == TaskState::Memory && self.tasks[dep as usize].who_has.is_empty() {
            self.logs.push(format!("value of '{}' is gone from every holder; recomputing it", self.key(dep)));
            self.lose_value(dep);
            self.stats.tasks_recomputed += 1;
        }
        self.back_to_waiting(t);
        self.settle();
        self.fill_worker(w);
    }

    // ---- transitions -----------------------------------------------------------

    pub(super) fn set_state(&mut self, t: TaskId, new: TaskState) {
        let old = self.tasks[t as usize].state;
        if old == new {
            return;
        }
        self.counts[old as usize] -= 1;
        self.counts[new as usize] += 1;
        self.tasks[t as usize].state = new;
        match (old.is_active(), new.is_active()) {
            (false, true) => {
                for i in 0..self.tasks[t as usize].deps.len() {
                    let d = self.tasks[t as usize].deps[i];
                    self.tasks[d as usize].waiters += 1;
                }
            }
            (true, false) => {
                for i in 0..self.tasks[t as usize].deps.len() {
                    let d = self.tasks[t as usize].deps[i];
                    self.tasks[d as usize].waiters -= 1;
                    if self.tasks[d as usize].waiters == 0 {
                        self.check.push(d);
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) fn is_needed(&self, t: TaskId) -> bool {
        let task = &self.tasks[t as usize];
        !task.wanted_by.is_empty() || task.waiters > 0
    }

    /// Make sure a needed task will (again) have a value: start it and,
    /// recursively, whatever it waits for.
    pub(super) fn ensure_computing(&mut self, root: TaskId) {
        let mut stack = vec![root];
        while let Some(t) = stack.pop() {
            if self.tasks[t as usize].state == TaskState::Released {
                self.wait_for_dependencies(t, &mut stack);
            }
        }
    }

    /// Put an active task back to waiting for whatever of its dependencies
    /// is not in memory (after a lost worker, a retry or missing data).
    pub(super) fn back_to_waiting(&mut self, t: TaskId) {
        if self.tasks[t as usize].state == TaskState::Erred {
            return;
        }
        let mut released = Vec::new();
        self.wait_for_dependencies(t, &mut released);
        for d in released {
            self.ensure_computing(d);
        }
    }

    /// Make `t` wait for its dependencies not in memory: released ones are
    /// pushed on `released` for the caller to start; an erred one errs `t`;
    /// none missing makes `t` ready.
    pub(super) fn wait_for_dependencies(&mut self, t: TaskId, released: &mut Vec<TaskId>) {
        self.set_state(t, TaskState::Waiting);
        let mut missing = 0;
        for i in 0..self.tasks[t as usize].deps.len() {
            let d = self.tasks[t as usize].deps[i];
            match self.tasks[d as usize].state {
                TaskState::Memory => {}
                TaskState::Released => {
                    missing += 1;
                    released.push(d);
                }
                TaskState::Erred => {
                    let dep = &self.tasks[d as usize];
                    let err = dependency_error(key_at(&self.key_bytes, dep.key), dep.error().unwrap_or("failed"));
                    self.tasks[t as usize].waiting_on = 0;
                    self.mark_erred(t, err);
                    return;
                }
                _ => missing += 1,
            }
        }
        self.tasks[t as usize].waiting_on = missing;
        if missing == 0 {
            self.make_ready(t);
        }
    }

    /// A value held nowhere any more: back to released, and dependents that
    /// were counting on it wait again.
    pub(super) fn lose_value(&mut self, t: TaskId) {
        self.set_state(t, TaskState::Released);
        for i in 0..self.tasks[t as usize].dependents.len() {
            let d = self.tasks[t as usize].dependents[i];
            match self.tasks[d as usize].state {
                TaskState::Waiting => self.tasks[d as usize].waiting_on += 1,
                TaskState::NoWorker => {
                    self.set_state(d, TaskState::Waiting);
                    self.tasks[d as usize].waiting_on = 1;
                }
                _ => {}
            }
        }
    }

    /// A task's value is now in memory: wake dependents, tell clients.
    pub(super) fn value_arrived(&mut self, t: TaskId, value: Option<Payload>) {
        for i in 0..self.tasks[t as usize].dependents.len() {
            let d = self.tasks[t as usize].dependents[i];
            let dt = &mut self.tasks[d as usize];
            if dt.state == TaskState::Waiting {
                dt.waiting_on -= 1;
                if dt.waiting_on == 0 {
                    self.make_ready(d);
                }
            }
        }
        let n = self.tasks[t as usize].wanted_by.len();
        if n > 0 {
            let mut msg = Some(self.key_in_memory_msg(t, value));
            for i in 0..n {
                let c = self.tasks[t as usize].wanted_by[i];
                let m = if i + 1 == n { msg.take() } else { msg.clone() };
                self.to_client.push((c, m.expect("taken by the last client only")));
            }
        }
    }

    pub(super) fn key_in_memory_msg(&self, t: TaskId, value: Option<Payload>) -> ToClient {
        let task = &self.tasks[t as usize];
        ToClient::KeyInMemory {
            key: self.key(t).to_string(),
            id: t,
            // With the value inline the client needs no holder.
            holders: if value.is_some() { Vec::new() } else { task.who_has.iter().filter_map(|w| self.workers.get(w)).map(|w| w.info.address.clone()).collect() },
            value,
        }
    }

    pub(super) fn mark_erred(&mut self, root: TaskId, error: String) {
        let mut stack = vec![(root, error)];
        while let Some((t, err)) = stack.pop() {
            let task = &self.tasks[t as usize];
            if matches!(task.state, TaskState::Erred | TaskState::Memory | TaskState::Forgotten) {
                continue;
            }
            if let Some(p) = task.on() {
                if let Some(pw) = self.workers.get_mut(&p) {
                    pw.processing.remove(&t);
                }
                self.frees.entry(p).or_default().push(t);
            }
            let key = self.key(t).to_string();
            let task = &mut self.tasks[t as usize];
            task.set_on(None);
            task.set_error(Some(err.clone().into_boxed_str()));
            let wanted = task.wanted_by.clone();
            self.set_state(t, TaskState::Erred);
            for c in wanted {
                self.to_client.push((c, ToClient::KeyErred { key: key.clone(), error: err.clone() }));
            }
            let dep_err = dependency_error(&key, &err);
            for i in 0..self.tasks[t as usize].dependents.len() {
                let d = self.tasks[t as usize].dependents[i];
                if self.tasks[d as usize].state.is_active() {
                    stack.push((d, dep_err.clone()));
                }
            }
            self.check.push(t);
        }
    }

    /// Release values nobody needs and forget tasks nobody will ever need.
    pub(super) fn settle(&mut self) {
        while let Some(t) = self.check.pop() {
            let task = &self.tasks[t as usize];
            if task.state == TaskState::Forgotten || !task.wanted_by.is_empty() || task.waiters > 0 {
                continue;
            }
            match task.state {
                TaskState::Memory => {
                    let holders = std::mem::take(&mut self.tasks[t as usize].who_has);
                    for h in holders {
                        if let Some(hw) = self.workers.get_mut(&h) {
                            hw.has_what.remove(&t);
                        }
                        self.frees.entry(h).or_default().push(t);
                    }
                    self.set_state(t, TaskState::Released);
                }
                TaskState::Waiting | TaskState::Queued | TaskState::NoWorker => self.set_state(t, TaskState::Released),
                TaskState::Processing => {
                    if let Some(p) = self.tasks[t as usize].take_on() {
                        if let Some(pw) = self.workers.get_mut(&p) {
                            pw.processing.remove(&t);
                        }
                        self.frees.entry(p).or_default().push(t);
                    }
                    self.set_state(t, TaskState::Released);
                }
                _ => {}
            }
            let task = &self.tasks[t as usize];
            if task.live_dependents == 0 && matches!(task.state, TaskState::Released | TaskState::Erred) {
                self.forget(t);
            }
        }
        if self.retiring_count > 0 {
            self.progress_retirements();
        }
    }

    pub(super) fn forget(&mut self, t: TaskId) {
        self.set_state(t, TaskState::Forgotten);
        self.first_suspicion.remove(&t);
        let task = &mut self.tasks[t as usize];
        self.keys.remove(key_at(&self.key_bytes, task.key), t);
        task.spec = self.empty_spec.clone();
        task.extra = None;
        let deps = std::mem::take(&mut task.deps);
        task.dependents = Ids::EMPTY;
        for &d in deps.iter() {
            let dt = &mut self.tasks[d as usize];
            dt.live_dependents -= 1;
            if dt.live_dependents == 0 {
                self.check.push(d);
            }
        }
    }
}

fn dependency_error(key: &str, err: &str) -> String {
    if err.starts_with("dependency '") {
        err.to_string()
    } else {
        format!("dependency '{key}' failed: {err}")
    }
}
