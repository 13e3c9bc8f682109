//! Clients and their graphs: submissions (validation, interning, priorities),
//! released keys, clients leaving.

use super::*;

impl SchedulerState {

    // ---- clients ---------------------------------------------------------

    pub fn add_client(&mut self, name: String) -> ClientId {
        let id = self.next_client;
        self.next_client += 1;
        self.clients.insert(id, name);
        self.to_client.push((id, ToClient::Welcome { client_id: id }));
        id
    }

    /// A client left: everything only it wanted is released.
    pub fn remove_client(&mut self, c: ClientId) {
        if self.clients.remove(&c).is_none() {
            return;
        }
        let wanted: Vec<TaskId> =
            self.tasks.iter().enumerate().filter(|(_, t)| t.wanted_by.contains(&c)).map(|(i, _)| i as TaskId).collect();
        for t in wanted {
            self.tasks[t as usize].wanted_by.retain(|&x| x != c);
            self.check.push(t);
        }
        self.settle();
    }

    pub fn release_keys(&mut self, c: ClientId, keys: &[String]) {
        for k in keys {
            if let Some(t) = self.task_id(k) {
                self.tasks[t as usize].wanted_by.retain(|&x| x != c);
                self.check.push(t);
            }
        }
        self.settle();
    }

    /// Add tasks and mark `wanted` keys as wanted by client `c`. The whole
    /// update is rejected (nothing changes) if it refers to unknown keys or
    /// contains a cycle. Keys that already exist keep their existing task.
    pub fn update_graph(&mut self, c: ClientId, defs: Vec<TaskDef>, wanted: &[String]) -> Result<(), String> {
        self.update_graph_holding(c, defs, wanted, &[])
    }

    /// [`SchedulerState::update_graph`], where some of the new tasks'
    /// values are already held by workers (`(key, worker, nbytes)`: workers
    /// that came back to a scheduler restarted from its journal): those
    /// tasks start in memory on their holders instead of running. Held keys
    /// of tasks that already existed, or of unknown workers, are ignored.
    pub fn update_graph_holding(&mut self, c: ClientId, defs: Vec<TaskDef>, wanted: &[String], held: &[(String, WorkerId, u64)]) -> Result<(), String> {
        if !self.clients.contains_key(&c) {
            return Err("unknown client".into());
        }
        let plan = self.plan_update(&defs, wanted)?;
        if self.key_bytes.len() + plan.new_key_bytes > u32::MAX as usize {
            return Err("the scheduler has stored 4 GiB of task keys since it started and cannot take more; restart it".into());
        }
        let (def_id, added) = self.add_tasks(defs, &plan);
        let resolve = |l: Loc| match l {
            Loc::New(j) => def_id[j as usize],
            Loc::Old(t) => t,
        };
        for &(id, i) in &added {
            let dep_ids: Vec<TaskId> = plan.deps_of(i).iter().map(|&l| resolve(l)).collect();
            for &d in &dep_ids {
                let dt = &mut self.tasks[d as usize];
                dt.dependents.push(id);
                dt.live_dependents += 1;
            }
            self.tasks[id as usize].deps = dep_ids.into();
        }
        // New tasks are released and inactive, as are their dependents:
        // nothing waits on them yet, so one can start in memory.
        let new: hashbrown::HashSet<TaskId> = if held.is_empty() { Default::default() } else { added.iter().map(|&(id, _)| id).collect() };
        for (key, w, nbytes) in held {
            let Some(t) = self.task_id(key) else { continue };
            if !new.contains(&t) || !self.workers.contains_key(w) || self.tasks[t as usize].who_has.contains(w) {
                continue;
            }
            let task = &mut self.tasks[t as usize];
            task.nbytes = *nbytes;
            task.who_has.push(*w);
            self.workers.get_mut(w).expect("checked").has_what.insert(t);
            self.set_state(t, TaskState::Memory);
            self.stats.values_adopted += 1;
        }
        for (k, &loc) in wanted.iter().zip(&plan.wanted_locs) {
            self.want(c, k, resolve(loc));
        }
        // New tasks nobody needs are culled right away.
        for (id, _) in added {
            self.check.push(id);
        }
        self.to_client.push((c, ToClient::GraphAccepted { total: wanted.len() as u64 }));
        self.settle();
        self.fill_all();
        Ok(())
    }

    /// Check an update without changing anything. Every key is looked up
    /// once: as a position among `defs` (a new task) or as an existing task.
    fn plan_update(&self, defs: &[TaskDef], wanted: &[String]) -> Result<Plan, String> {
        let mut new_index: hashbrown::HashMap<&str, usize> = hashbrown::HashMap::with_capacity(defs.len());
        let mut existing: Vec<Option<TaskId>> = Vec::with_capacity(defs.len());
        for (i, d) in defs.iter().enumerate() {
            let e = self.task_id(&d.key);
            if e.is_none() && new_index.insert(d.key.as_str(), i).is_some() {
                return Err(format!("task '{}' is defined twice", d.key));
            }
            existing.push(e);
        }
        let locate = |k: &str| new_index.get(k).map(|&j| Loc::New(j as u32)).or_else(|| self.task_id(k).map(Loc::Old));
        let mut dep_locs: Vec<Loc> = Vec::new();
        let mut dep_start: Vec<u32> = Vec::with_capacity(defs.len() + 1);
        for (d, e) in defs.iter().zip(&existing) {
            dep_start.push(dep_locs.len() as u32);
            if e.is_some() {
                continue;
            }
            for dep in &d.deps {
                let Some(loc) = locate(dep) else {
                    return Err(format!("task '{}' depends on '{dep}', which is neither in the graph nor known to the scheduler", d.key));
                };
                dep_locs.push(loc);
            }
        }
        dep_start.push(dep_locs.len() as u32);
        let mut wanted_locs = Vec::with_capacity(wanted.len());
        for k in wanted {
            let Some(loc) = locate(k) else {
                return Err(format!("requested key '{k}' is not in the graph"));
            };
            wanted_locs.push(loc);
        }
        if let Some(cycle) = find_cycle(defs, &dep_start, &dep_locs) {
            return Err(format!("the graph has a cycle: {}", cycle.join(" -> ")));
        }
        let new_key_bytes = defs.iter().zip(&existing).filter(|(_, e)| e.is_none()).map(|(d, _)| d.key.len()).sum();
        Ok(Plan { n_new: new_index.len(), existing, dep_locs, dep_start, wanted_locs, new_key_bytes })
    }

    /// Create the tasks of the new definitions (released, no links yet).
    /// Returns the task id of every definition, new or existing, and the
    /// new tasks as (id, position among the definitions).
    fn add_tasks(&mut self, defs: Vec<TaskDef>, plan: &Plan) -> (Vec<TaskId>, Vec<(TaskId, usize)>) {
        self.generation += 1;
        let generation = self.generation;
        let mut def_id: Vec<TaskId> = Vec::with_capacity(defs.len());
        let mut added = Vec::with_capacity(plan.n_new);
        self.tasks.reserve(plan.n_new);
        {
            let (tasks, bytes) = (&self.tasks, &self.key_bytes);
            self.keys.reserve(plan.n_new, |x| key_at(bytes, tasks[x as usize].key));
        }
        self.key_bytes.reserve(plan.new_key_bytes);
        for (i, (d, e)) in defs.into_iter().zip(&plan.existing).enumerate() {
            if let Some(t) = *e {
                def_id.push(t);
                continue;
            }
            let id = self.tasks.len() as TaskId;
            def_id.push(id);
            let a = d.annotations;
            let extra = if a.workers.is_empty() && a.resources.is_empty() && a.functions.is_empty() && a.timeout.is_none() {
                None
            } else {
                Some(Box::new(Extra { workers: a.workers, resources: a.resources, functions: a.functions, timeout: a.timeout, error: None }))
            };
            let spec = self.intern_spec(d.spec);
            let key = KeyRef { off: self.key_bytes.len() as u32, len: d.key.len() as u32 };
            self.key_bytes.push_str(&d.key);
            self.tasks.push(Task {
                key,
                state: TaskState::Released,
                spec,
                deps: Ids::EMPTY,
                dependents: Ids::EMPTY,
                waiting_on: 0,
                waiters: 0,
                live_dependents: 0,
                who_has: Ids::EMPTY,
                processing_on: 0,
                wanted_by: Ids::EMPTY,
                priority: (priority_rank(a.priority), generation, d.order),
                retries_left: a.retries,
                suspicious: 0,
                started: false,
                nbytes: 0,
                extra,
            });
            let (tasks, bytes) = (&self.tasks, &self.key_bytes);
            self.keys.insert(key_at(bytes, key), id, |x| key_at(bytes, tasks[x as usize].key));
            self.counts[TaskState::Released as usize] += 1;
            added.push((id, i));
        }
        (def_id, added)
    }

    /// Client `c` wants task `t` (key `k`): tell it at once if the value is
    /// there or the task failed, else make sure it gets computed.
    fn want(&mut self, c: ClientId, k: &str, t: TaskId) {
        let task = &mut self.tasks[t as usize];
        if !task.wanted_by.contains(&c) {
            task.wanted_by.push(c);
        }
        match task.state {
            TaskState::Memory => {
                let msg = self.key_in_memory_msg(t, None);
                self.to_client.push((c, msg));
            }
            TaskState::Erred => {
                let error = task.error().unwrap_or("failed").to_string();
                self.to_client.push((c, ToClient::KeyErred { key: k.to_string(), error }));
            }
            _ => self.ensure_computing(t),
        }
    }
}

/// An update checked against the state, before anything changes.
struct Plan {
    /// Per definition: the existing task with its key, if any.
    existing: Vec<Option<TaskId>>,
    /// The dependencies of new tasks, flat: those of definition `i` are
    /// `dep_locs[dep_start[i]..dep_start[i + 1]]` (none for existing keys).
    dep_locs: Vec<Loc>,
    dep_start: Vec<u32>,
    wanted_locs: Vec<Loc>,
    n_new: usize,
    new_key_bytes: usize,
}

impl Plan {
    fn deps_of(&self, i: usize) -> &[Loc] {
        &self.dep_locs[self.dep_start[i] as usize..self.dep_start[i + 1] as usize]
    }
}

/// Where a key of an update is: a new task (position among the update's
/// definitions) or a task the scheduler already has.
#[derive(Clone, Copy)]
enum Loc {
    New(u32),
    Old(TaskId),
}

/// A cycle among the new tasks of an update (existing tasks cannot depend
/// on new ones), as keys; the dependencies of `defs[i]` are
/// `dep_locs[dep_start[i]..dep_start[i + 1]]`.
fn find_cycle(defs: &[TaskDef], dep_start: &[u32], dep_locs: &[Loc]) -> Option<Vec<String>> {
    let cycle = crate::dag::find_cycle(defs.len(), |i, k| {
        dep_locs[dep_start[i] as usize..dep_start[i + 1] as usize].get(k).map(|l| match l {
            Loc::New(d) => Some(*d as usize),
            Loc::Old(_) => None,
        })
    })?;

    Some(cycle.into_iter().map(|x| defs[x].key.clone()).collect())
}
