//! Graceful retirement: no new tasks, unique values copied away, then told to go.

use super::*;

impl SchedulerState {

    // ---- retirement --------------------------------------------------------

    /// Retire workers by name or address, or every idle one (`all_idle`,
    /// keeping the one holding the most values if all are idle and any
    /// value is held). Returns the names now retiring.
    pub fn retire_workers(&mut self, names: &[String], all_idle: bool) -> Vec<String> {
        let mut chosen: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.retiring)
            .filter(|(_, w)| names.iter().any(|n| *n == w.info.name || *n == w.info.address) || (all_idle && w.processing.is_empty()))
            .map(|(&id, _)| id)
            .collect();
        let staying = self.workers.values().filter(|w| !w.retiring).count() - chosen.len();
        if all_idle && staying == 0 && names.is_empty() && self.workers.values().any(|w| !w.has_what.is_empty()) {
            if let Some(keep) = chosen.iter().copied().max_by_key(|id| (self.workers[id].has_what.len(), std::cmp::Reverse(*id))) {
                chosen.retain(|&id| id != keep);
            }
        }
        let mut out = Vec::new();
        for id in chosen {
            let w = self.workers.get_mut(&id).expect("chosen from workers");
            w.retiring = true;
            self.retiring_count += 1;
            out.push(w.info.name.clone());
            let unique = w.has_what.iter().filter(|t| self.tasks[**t as usize].who_has.len() == 1).count();
            self.logs.push(format!("worker '{}' retiring: no new tasks; {unique} values only it holds will be copied to other workers", w.info.name));
        }
        self.progress_retirements();
        out
    }

    /// A worker asks to leave (e.g. it got SIGTERM).
    pub fn retire_me(&mut self, w: WorkerId, now: f64) {
        self.touch(w, now);
        if let Some(name) = self.workers.get(&w).map(|x| x.info.name.clone()) {
            self.retire_workers(&[name], false);
        }
    }

    /// Move retiring workers along: once one runs nothing, copy each value
    /// only it holds to a worker that stays; when none is left, tell it to go.
    pub(super) fn progress_retirements(&mut self) {
        let retiring: Vec<WorkerId> = self.workers.iter().filter(|(_, w)| w.retiring && !w.retired && w.processing.is_empty()).map(|(&id, _)| id).collect();
        for w in retiring {
            let mut unique: Vec<TaskId> = self.workers[&w].has_what.iter().copied().filter(|t| *self.tasks[*t as usize].who_has == [w]).collect();
            unique.sort_unstable();
            let targets: Vec<WorkerId> = self.workers.iter().filter(|(_, x)| !x.retiring).map(|(&id, _)| id).collect();
            if !unique.is_empty() && targets.is_empty() {
                self.logs.push(format!(
                    "worker '{}' retires with {} values no other worker can take; they will be recomputed if needed",
                    self.workers[&w].info.name,
                    unique.len()
                ));
                unique.clear();
            }
            let pending = unique.iter().filter(|t| self.replicating.contains_key(t)).count();
            // Spread copies: each goes to the staying worker holding the least.
            let mut load: Vec<(usize, WorkerId)> = targets.iter().map(|id| (self.workers[id].has_what.len(), *id)).collect();
            let to_copy: Vec<TaskId> = unique.iter().copied().filter(|t| !self.replicating.contains_key(t)).collect();
            for t in to_copy {
                let slot = load.iter_mut().min().expect("targets not empty");
                slot.0 += 1;
                let target = slot.1;
                self.replicating.insert(t, target);
                let holders = vec![self.workers[&w].info.address.clone()];
                self.to_worker.push((target, ToWorker::Replicate { id: t, holders }));
            }
            if unique.is_empty() && pending == 0 {
                let worker = self.workers.get_mut(&w).expect("retiring worker");
                worker.retired = true;
                self.retiring_count -= 1;
                self.to_worker.push((w, ToWorker::Shutdown { reason: "retired".into() }));
            }
        }
    }

    /// Worker `w` now holds a copy of `t`: one it was asked for (`Replicate`,
    /// retirement; counted) or one it fetched for its own tasks (workers
    /// report every fetch). Either way it is a holder, freed with the value.
    pub fn replicated(&mut self, w: WorkerId, t: TaskId, nbytes: u64, now: f64) {
        self.touch(w, now);
        let asked = self.replicating.get(&t) == Some(&w);
        if asked {
            self.replicating.remove(&t);
        }
        let alive = self.workers.contains_key(&w);
        match self.tasks.get(t as usize) {
            Some(task) if task.state == TaskState::Memory && alive
                && !task.who_has.contains(&w) => {
                    self.tasks[t as usize].who_has.push(w);
                    self.tasks[t as usize].nbytes = self.tasks[t as usize].nbytes.max(nbytes);
                    self.workers.get_mut(&w).expect("alive").has_what.insert(t);
                    if asked {
                        self.stats.values_replicated += 1;
                    }
                }
            _ if alive => self.frees.entry(w).or_default().push(t),
            _ => {}
        }
        self.progress_retirements();
    }

    pub fn replicate_failed(&mut self, w: WorkerId, t: TaskId, now: f64) {
        self.touch(w, now);
        if self.replicating.get(&t) == Some(&w) {
            self.replicating.remove(&t);
        }
        self.progress_retirements();
    }
}
