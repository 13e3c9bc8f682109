//! Placement: which worker runs a ready task (locality, occupancy,
//! restrictions), root-task queuing, filling free slots.

use super::*;

impl SchedulerState {

    /// All dependencies are in memory: queue it or send it to a worker.
    pub(super) fn make_ready(&mut self, t: TaskId) {
        let task = &self.tasks[t as usize];
        if task.deps.is_empty() && !task.restricted() {
            self.set_state(t, TaskState::Queued);
            let p = self.tasks[t as usize].priority;
            self.queued.push(p, t);
            return;
        }
        match self.decide_worker(t) {
            Some(w) => self.send_to_worker(t, w),
            None => {
                self.set_state(t, TaskState::NoWorker);
                self.no_worker.push(t);
                let reason = self.why_no_worker(t);
                let key = self.key(t).to_string();
                self.logs.push(format!("task '{key}' cannot run on any connected worker: {reason}; it waits for one that can"));
                for &c in self.clients.keys() {
                    self.to_client.push((c, ToClient::KeyStuck { key: key.clone(), reason: reason.clone() }));
                }
            }
        }
    }

    pub(super) fn eligible(&self, t: TaskId, w: &Worker) -> bool {
        match &self.tasks[t as usize].extra {
            None => true,
            Some(r) => {
                (r.workers.is_empty() || r.workers.iter().any(|n| *n == w.info.name || *n == w.info.address))
                    && r.functions.iter().all(|f| w.info.functions.contains(f))
                    && r.resources.iter().all(|(name, amount)| {
                        let have = if name == "cpus" {
                            w.info.nthreads as f64
                        } else {
                            w.info.resources.iter().find(|(n, _)| n == name).map(|(_, a)| *a).unwrap_or(0.0)
                        };
                        have >= *amount
                    })
            }
        }
    }

    /// Why no connected worker can run `t`: its restrictions against what
    /// the workers offer.
    pub(super) fn why_no_worker(&self, t: TaskId) -> String {
        let task = &self.tasks[t as usize];
        let Some(r) = task.extra.as_ref().filter(|_| task.restricted()) else { return "no worker is connected".into() };
        let mut needs = Vec::new();
        if !r.workers.is_empty() {
            needs.push(format!("one of the workers {}", r.workers.join(", ")));
        }
        if !r.resources.is_empty() {
            needs.push(r.resources.iter().map(|(n, a)| format!("{n}={a}")).collect::<Vec<_>>().join(" "));
        }
        if !r.functions.is_empty() {
            needs.push(format!("a worker that has the function(s) {} (workers announce the functions their program registers)", r.functions.join(", ")));
        }
        let offers: Vec<String> = self
            .workers
            .values()
            .map(|w| {
                let mut res = vec![format!("cpus={}", w.info.nthreads)];
                res.extend(w.info.resources.iter().map(|(n, a)| format!("{n}={a}")));
                format!("{} ({})", w.info.name, res.join(" "))
            })
            .collect();
        format!(
            "it needs {}; connected workers: {}",
            needs.join(" and "),
            if offers.is_empty() { "none".to_string() } else { offers.join(", ") }
        )
    }

    /// The worker where `t` would start soonest: data it must fetch plus the
    /// work queued there. With many workers, an unrestricted task with
    /// dependencies considers only the holders of its dependencies and a few
    /// others in turn (as Dask does), so placing it costs O(dependencies),
    /// not O(workers).
    pub(super) fn decide_worker(&mut self, t: TaskId) -> Option<WorkerId> {
        let task = &self.tasks[t as usize];
        if self.workers.len() <= SCAN_ALL_WORKERS || task.deps.is_empty() || task.restricted() {
            return self.best_worker(t, self.workers.keys().copied());
        }
        let mut candidates: Vec<WorkerId> = Vec::with_capacity(task.deps.len() + OTHER_CANDIDATES);
        for &d in task.deps.iter() {
            candidates.extend(self.tasks[d as usize].who_has.iter().copied());
        }
        let start = self.placement_cursor;
        candidates.extend(self.workers.range(start..).chain(self.workers.range(..start)).take(OTHER_CANDIDATES).map(|(&id, _)| id));
        self.placement_cursor = candidates.last().map_or(0, |&w| w + 1);
        candidates.sort_unstable();
        candidates.dedup();
        self.best_worker(t, candidates.into_iter())
    }

    pub(super) fn best_worker(&self, t: TaskId, candidates: impl Iterator<Item = WorkerId>) -> Option<WorkerId> {
        let task = &self.tasks[t as usize];
        let per_task = self.avg_duration.max(1e-6);
        let mut best: Option<(bool, f64, WorkerId)> = None;
        for id in candidates {
            let Some(w) = self.workers.get(&id) else { continue };
            if !self.eligible(t, w) {
                continue;
            }
            // A paused or retiring worker is chosen only if every eligible one is.
            let paused = !w.accepts_work();
            let missing: u64 = task
                .deps
                .iter()
                .map(|&d| &self.tasks[d as usize])
                .filter(|dt| !dt.who_has.contains(&id))
                .map(|dt| dt.nbytes.max(1))
                .sum();
            let occupancy = w.processing.len() as f64 / w.info.nthreads.max(1) as f64 * per_task;
            let cost = missing as f64 / self.config.bandwidth + occupancy;
            if best.is_none_or(|(p, c, _)| (paused, cost) < (p, c)) {
                best = Some((paused, cost, id));
            }
        }
        best.map(|(_, _, w)| w)
    }

    pub(super) fn send_to_worker(&mut self, t: TaskId, w: WorkerId) {
        self.set_state(t, TaskState::Processing);
        self.tasks[t as usize].started = false;
        self.tasks[t as usize].set_on(Some(w));
        self.workers.get_mut(&w).expect("chosen worker exists").processing.insert(t);
        let task = &self.tasks[t as usize];
        let deps = task
            .deps
            .iter()
            .map(|&d| {
                let holders = self.tasks[d as usize].who_has.iter().filter_map(|h| self.workers.get(h)).map(|h| h.info.address.clone()).collect();
                (d, holders)
            })
            .collect();
        let dep_nbytes = task.deps.iter().map(|&d| self.tasks[d as usize].nbytes).collect();
        let resources = task.extra.as_ref().map(|r| r.resources.clone()).unwrap_or_default();
        let msg = ComputeTask {
            id: t,
            key: self.key(t).to_string(),
            spec: task.spec.slice.to_vec(),
            deps,
            dep_nbytes,
            priority: task.priority,
            timeout: task.timeout(),
            resources,
            inline_result: !task.wanted_by.is_empty(),
        };
        self.to_worker.push((w, ToWorker::Compute(msg)));
    }

    /// How many tasks a worker may hold (running plus queued on it).
    pub(super) fn slots(&self, w: &Worker) -> usize {
        let n = w.info.nthreads.max(1) as f64;
        // Nothing measured yet: one queued per thread. Measured as 0 µs
        // (no-op tasks) is the shortest there is, not "unknown".
        let extra_per_thread = if self.stats.tasks_finished == 0 {
            1.0
        } else {
            (self.config.pipeline_seconds / self.avg_duration.max(1e-6)).clamp(1.0, self.config.max_pipeline_per_thread as f64)
        };
        (n + n * extra_per_thread) as usize
    }

    pub(super) fn fill_worker(&mut self, w: WorkerId) {
        let Some(worker) = self.workers.get(&w) else { return };
        if !worker.accepts_work() {
            return;
        }
        let slots = self.slots(worker);
        let mut free = slots.saturating_sub(worker.processing.len());
        while free > 0 {
            let Some((_, t)) = self.queued.pop() else { break };
            if self.tasks[t as usize].state != TaskState::Queued {
                continue; // stale heap entry
            }
            self.send_to_worker(t, w);
            free -= 1;
        }
    }

    pub(super) fn fill_all(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        // Least loaded first, so a burst spreads over the workers.
        let mut order: Vec<(usize, WorkerId)> =
            self.workers.iter().filter(|(_, w)| w.accepts_work()).map(|(&id, w)| (w.processing.len(), id)).collect();
        order.sort_unstable();
        // Hand out in rounds of one thread's worth so workers share the queue.
        loop {
            let before = self.queued.len();
            for &(_, w) in &order {
                let worker = &self.workers[&w];
                let free = self.slots(worker).saturating_sub(worker.processing.len());
                let step = free.min(worker.info.nthreads.max(1) as usize);
                for _ in 0..step {
                    let Some((_, t)) = self.queued.pop() else { break };
                    if self.tasks[t as usize].state == TaskState::Queued {
                        self.send_to_worker(t, w);
                    }
                }
            }
            if self.queued.is_empty() || self.queued.len() == before {
                break;
            }
        }
    }
}
