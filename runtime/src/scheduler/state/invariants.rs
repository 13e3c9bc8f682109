//! The state's invariants, checked after every event in the tests.

use super::*;

impl SchedulerState {

    // ---- invariants -------------------------------------------------------------

    /// Check every structural invariant; returns a description of the first
    /// violation. O(size of the state): for tests and debug builds.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut counts = [0u64; 8];
        for (i, task) in self.tasks.iter().enumerate() {
            let t = i as TaskId;
            counts[task.state as usize] += 1;
            let k = key_at(&self.key_bytes, task.key);
            if task.state == TaskState::Forgotten {
                if self.task_id(k) == Some(t) {
                    return Err(format!("forgotten task '{k}' still in the key map"));
                }
                continue;
            }
            self.check_task(t, task, k)?;
        }
        let live = self.tasks.len() as u64 - counts[TaskState::Forgotten as usize];
        if self.keys.len() as u64 != live {
            return Err(format!("{} keys indexed for {live} tasks not forgotten", self.keys.len()));
        }
        if counts != self.counts {
            return Err(format!("state counts {:?} but recount {:?}", self.counts, counts));
        }
        let queued_live = self.queued.ids().filter(|&t| self.tasks[t as usize].state == TaskState::Queued).count() as u64;
        if queued_live != self.count(TaskState::Queued) {
            return Err(format!("{queued_live} live heap entries but {} queued tasks", self.count(TaskState::Queued)));
        }
        let retiring = self.workers.values().filter(|w| w.retiring && !w.retired).count();
        if retiring != self.retiring_count {
            return Err(format!("retiring_count {} but {retiring} workers retiring", self.retiring_count));
        }
        self.check_datasets()?;
        self.check_workers()
    }

    /// The invariants of one task that is not forgotten.
    fn check_task(&self, t: TaskId, task: &Task, k: &str) -> Result<(), String> {
        if self.task_id(k) != Some(t) {
            return Err(format!("task '{k}' missing from the key map"));
        }
        let waiters = task.dependents.iter().filter(|&&d| self.tasks[d as usize].state.is_active()).count() as u32;
        if waiters != task.waiters {
            return Err(format!("task '{k}': waiters {} but {waiters} active dependents", task.waiters));
        }
        let live = task.dependents.iter().filter(|&&d| self.tasks[d as usize].state != TaskState::Forgotten).count() as u32;
        if live != task.live_dependents {
            return Err(format!("task '{k}': live_dependents {} but {live}", task.live_dependents));
        }
        for &d in &task.deps {
            if self.tasks[d as usize].state == TaskState::Forgotten {
                return Err(format!("task '{k}' depends on forgotten '{}'", self.key(d)));
            }
            if !self.tasks[d as usize].dependents.contains(&t) {
                return Err(format!("task '{k}' not among its dependency's dependents"));
            }
        }
        if (task.state == TaskState::Memory) == task.who_has.is_empty() {
            return Err(format!("task '{k}' in state {} with {} holders", task.state.name(), task.who_has.len()));
        }
        for h in &task.who_has {
            match self.workers.get(h) {
                Some(w) if w.has_what.contains(&t) => {}
                _ => return Err(format!("task '{k}' held by worker {h}, which does not know it")),
            }
        }
        if (task.state == TaskState::Processing) != task.on().is_some() {
            return Err(format!("task '{k}' in state {} with processing_on {:?}", task.state.name(), task.on()));
        }
        if let Some(p) = task.on() {
            match self.workers.get(&p) {
                Some(w) if w.processing.contains(&t) => {}
                _ => return Err(format!("task '{k}' processing on worker {p}, which does not know it")),
            }
        }
        let not_in_memory = task.deps.iter().filter(|&&d| self.tasks[d as usize].state != TaskState::Memory).count() as u32;
        match task.state {
            TaskState::Waiting => {
                if task.waiting_on != not_in_memory || not_in_memory == 0 {
                    return Err(format!("waiting task '{k}': waiting_on {} but {not_in_memory} deps not in memory", task.waiting_on));
                }
                for &d in &task.deps {
                    let ds = self.tasks[d as usize].state;
                    if !(ds == TaskState::Memory || ds.is_active()) {
                        return Err(format!("waiting task '{k}' waits on '{}' which is {}", self.key(d), ds.name()));
                    }
                }
            }
            TaskState::Queued | TaskState::NoWorker if not_in_memory != 0 => {
                return Err(format!("ready task '{k}' has {not_in_memory} deps not in memory"));
            }
            TaskState::Released | TaskState::Memory | TaskState::Erred if task.wanted_by.is_empty() && task.waiters == 0 && task.live_dependents == 0 => {
                return Err(format!("task '{k}' ({}) is needed by nothing but not forgotten", task.state.name()));
            }
            TaskState::Memory if task.wanted_by.is_empty() && task.waiters == 0 => {
                return Err(format!("task '{k}' held in memory though nothing needs it"));
            }
            TaskState::Released if !task.wanted_by.is_empty() => return Err(format!("wanted task '{k}' is released")),
            TaskState::Erred if task.error().is_none() => return Err(format!("erred task '{k}' has no error")),
            _ => {}
        }
        for c in &task.wanted_by {
            if *c != DATASETS && !self.clients.contains_key(c) {
                return Err(format!("task '{k}' wanted by gone client {c}"));
            }
        }
        Ok(())
    }

    /// Each worker's sets mirror the tasks' `processing_on` and `who_has`.
    fn check_workers(&self) -> Result<(), String> {
        for (id, w) in &self.workers {
            for &t in &w.processing {
                if self.tasks[t as usize].on() != Some(*id) {
                    return Err(format!("worker {id} thinks it processes '{}'", self.key(t)));
                }
            }
            for &t in &w.has_what {
                if !self.tasks[t as usize].who_has.contains(id) {
                    return Err(format!("worker {id} thinks it holds '{}'", self.key(t)));
                }
            }
        }
        Ok(())
    }
}
