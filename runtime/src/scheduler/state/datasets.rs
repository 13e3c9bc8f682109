//! What the scheduler keeps for clients beyond their graphs: worker plugins
//! (Dask's `register_plugin`), and published datasets (Dask's `publish_dataset`): named sets of keys that
//! the scheduler keeps on behalf of no client until they are unpublished,
//! so another client (a later job step, a second script) finds them by name.
//! A dataset also carries an opaque blob (for the Python client: the
//! published object pickled with its futures as keys); the scheduler never
//! looks into it.

use super::*;

/// The pseudo-client that wants the keys of published datasets: no real
/// client has this id (they start at 1), and it never leaves.
pub const DATASETS: ClientId = 0;

#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub keys: Vec<String>,
    pub data: Vec<u8>,
}

impl SchedulerState {
    /// Register a worker plugin: sent to every worker now, and to each
    /// worker that joins later (a plugin of the same name is replaced).
    pub fn register_plugin(&mut self, name: &str, data: Vec<u8>) {
        self.plugins.retain(|(n, _)| n != name);
        self.plugins.push((name.to_string(), data.clone()));
        for (&w, worker) in &self.workers {
            if !worker.retired {
                self.to_worker.push((w, ToWorker::PythonPlugin { name: name.to_string(), data: data.clone() }));
            }
        }
    }

    /// The plugins, for a worker that just joined.
    pub(super) fn plugins_for_new_worker(&mut self, w: WorkerId) {
        for (name, data) in &self.plugins {
            self.to_worker.push((w, ToWorker::PythonPlugin { name: name.clone(), data: data.clone() }));
        }
    }

    /// Publish `keys` under `name` (`replace`: a dataset of that name is
    /// replaced; else publishing an existing name is an error). Every key
    /// must be known (submitted and not forgotten).
    pub fn publish_dataset(&mut self, name: &str, keys: Vec<String>, data: Vec<u8>, replace: bool) -> Result<(), String> {
        if name.is_empty() {
            return Err("a dataset needs a name".into());
        }
        if !replace && self.datasets.contains_key(name) {
            return Err(format!("a dataset named '{name}' is already published: unpublish it first, or publish with override=True"));
        }
        let mut ids = Vec::with_capacity(keys.len());
        for k in &keys {
            match self.task_id(k) {
                Some(t) if self.tasks[t as usize].state != TaskState::Forgotten => ids.push(t),
                _ => return Err(format!("cannot publish '{name}': key '{k}' is not on the scheduler (submit it first, and keep its future until it is published)")),
            }
        }
        let old = self.datasets.insert(name.to_string(), Dataset { keys, data });
        for t in ids {
            let task = &mut self.tasks[t as usize];
            if !task.wanted_by.contains(&DATASETS) {
                task.wanted_by.push(DATASETS);
            }
            if !matches!(task.state, TaskState::Memory | TaskState::Erred) {
                self.ensure_computing(t);
            }
        }
        if let Some(old) = old {
            self.unwant_dataset_keys(&old.keys);
        }
        self.settle();
        Ok(())
    }

    /// Forget the dataset `name` (its keys stay while a client wants them);
    /// false if there is none.
    pub fn unpublish_dataset(&mut self, name: &str) -> bool {
        let Some(old) = self.datasets.remove(name) else { return false };
        self.unwant_dataset_keys(&old.keys);
        self.settle();
        true
    }

    pub fn dataset(&self, name: &str) -> Option<&Dataset> {
        self.datasets.get(name)
    }

    pub fn dataset_names(&self) -> Vec<String> {
        self.datasets.keys().cloned().collect()
    }

    /// `keys` left a dataset: those in no other dataset are no longer
    /// wanted on the datasets' behalf.
    fn unwant_dataset_keys(&mut self, keys: &[String]) {
        for k in keys {
            if self.datasets.values().any(|d| d.keys.iter().any(|x| x == k)) {
                continue;
            }
            if let Some(t) = self.task_id(k) {
                self.tasks[t as usize].wanted_by.retain(|&c| c != DATASETS);
                self.check.push(t);
            }
        }
    }

    /// Invariant: every key of a dataset is known and wanted by [`DATASETS`].
    pub(super) fn check_datasets(&self) -> Result<(), String> {
        for (name, d) in &self.datasets {
            for k in &d.keys {
                let Some(t) = self.task_id(k) else { return Err(format!("dataset '{name}' key '{k}' is unknown")) };
                if !self.tasks[t as usize].wanted_by.contains(&DATASETS) {
                    return Err(format!("dataset '{name}' key '{k}' is not kept"));
                }
            }
        }
        Ok(())
    }
}
