//! Resuming from the journal (`--journal`): reading it at start, waiting
//! for the journal's workers to come back, submitting the resumed graphs
//! with the values they brought, and keeping the journal written and
//! compacted. The records themselves are `crate::journal`'s.

use super::*;

/// Lock the journal (one scheduler at a time) and read what to resume.
pub(super) fn open_journal(path: &std::path::Path) -> std::io::Result<(Option<Resume>, Option<std::fs::File>)> {
    let fail = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let lock = journal::lock(path).map_err(fail)?;
    let Some(loaded) = journal::load(path).map_err(fail)? else {
        log_at!(2, "scheduler", "journal {} is new: this scheduler's graphs and results are recorded there", path.display());
        return Ok((None, lock));
    };
    if let Some(dropped) = &loaded.dropped {
        log_at!(1, "scheduler", "journal {}: {dropped}", path.display());
    }
    let n = loaded.records.len();
    let resume = journal::resume(loaded.records);
    match &resume {
        Some(r) => log_at!(
            2,
            "scheduler",
            "resuming from journal {} ({n} records): {} graphs still wanted ({} tasks, {} keys waited for), {} values finished before, {} workers to wait for",
            path.display(),
            r.graphs,
            r.tasks.len(),
            r.wanted.len(),
            r.keys.len(),
            r.workers.len()
        ),
        None => log_at!(1, "scheduler", "journal {} holds nothing to resume; starting afresh", path.display()),
    }
    Ok((resume, lock))
}

/// A scheduler started from a journal, before it submits what it resumes.
pub(super) struct Resuming {
    pub(super) resume: Resume,
    /// Give up waiting for the workers at this time.
    pub(super) deadline: Instant,
    /// Workers the journal names that have not come back yet.
    pub(super) expected: HashSet<String>,
    /// Values the workers that came back offer (ids of the journal's run).
    pub(super) offered: Vec<(WorkerId, Vec<(TaskId, u64)>)>,
    /// Client requests about the graph, held until the resumed graphs are
    /// in (so they cannot start work the returning workers hold, and key
    /// states are those of the resumed graphs).
    pub(super) held_back: Vec<(ClientId, ToScheduler)>,
}

impl Core {
    /// Start journaling, or start resuming from what the journal held.
    pub(super) fn with_journal(mut self, resume: Option<Resume>) -> Core {
        let Some(path) = self.cfg.journal.clone() else { return self };
        match resume {
            Some(resume) => {
                let expected: HashSet<String> = resume.workers.iter().cloned().collect();
                if !expected.is_empty() {
                    log_at!(2, "scheduler", "waiting up to {:.0} s for the journal's {} workers to come back with their values", self.cfg.reattach_timeout.as_secs_f64(), expected.len());
                }
                self.resuming = Some(Resuming { resume, deadline: Instant::now() + self.cfg.reattach_timeout, expected, offered: Vec::new(), held_back: Vec::new() });
            }
            None => {
                let first = self.journal_head(&[]);
                match journal::Writer::create(&path, first) {
                    Ok(w) => self.journal = Some(w),
                    Err(e) => log_at!(0, "scheduler", "{e}; running without a journal"),
                }
            }
        }
        self
    }

    /// The records a fresh journal file starts with: this run, the workers
    /// connected now, and `extra`.
    pub(super) fn journal_head(&self, extra: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        journal::encode(&mut b, &RecordRef::Start { run: self.run, secret: &self.cfg.secret, started: self.started });
        for (id, conn) in &self.worker_conn {
            if let (Some(Peer::Worker { .. }), Some(name)) = (self.conns.get(conn), self.state.worker_name(*id)) {
                journal::encode(&mut b, &RecordRef::WorkerJoined { worker: *id, name });
            }
        }
        b.extend_from_slice(extra);
        b
    }

    pub(super) fn journal(&mut self, r: RecordRef<'_>) {
        if let Some(j) = &mut self.journal {
            j.record(&r);
        }
    }

    /// Submit what the journal held, with the values the workers that came
    /// back offered, then write the compacted journal.
    pub(super) fn finish_resuming(&mut self, now: f64) {
        let Some(r) = self.resuming.take() else { return };
        let Resuming { resume, offered, held_back, expected, .. } = r;
        if !expected.is_empty() {
            let mut missing: Vec<&String> = expected.iter().collect();
            missing.sort();
            log_at!(1, "scheduler", "resuming without {} of the journal's workers, which did not come back within {:.0} s (--reattach-timeout): {}", missing.len(), self.cfg.reattach_timeout.as_secs_f64(), missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "));
        }
        let Resume { tasks, wanted, keys, graphs, .. } = resume;
        let Outcome::Client(jc) = self.apply(StateEvent::AddClient { name: "journal".into() }, now) else { unreachable!("AddClient answers with the client") };
        let mut held = Vec::new();
        let mut offers: Vec<(WorkerId, TaskId, &str)> = Vec::new();
        for (w, values) in &offered {
            for (old, nbytes) in values {
                if let Some(k) = keys.get(old) {
                    held.push((k.clone(), *w, *nbytes));
                    offers.push((*w, *old, k.as_str()));
                }
            }
        }
        let original = tasks.clone();
        let mut tasks = tasks;
        let intake = self.prepare_graph(&mut tasks, &wanted);
        let n_tasks = tasks.len();
        let accepted = match self.apply(StateEvent::Resume { client: jc, tasks, wanted: wanted.clone(), held }, now) {
            Outcome::Graph(Err(e)) => {
                log_at!(0, "scheduler", "cannot resume the journal's graphs: {e}; starting afresh");
                false
            }
            _ => {
                self.graph_accepted(intake);
                true
            }
        };
        // The values taken over, under their new ids; whatever else the
        // workers offered they drop. Sent before the work the resumed
        // graphs give them (that waits in the state's outbox).
        let mut pairs: HashMap<WorkerId, Vec<(TaskId, TaskId)>> = offered.iter().map(|(w, _)| (*w, Vec::new())).collect();
        let mut adopted_records = Vec::new();
        for (w, old, key) in offers {
            if let Some(new) = self.state.task_id(key).filter(|&t| self.state.held_by(t, w)) {
                pairs.entry(w).or_default().push((old, new));
                journal::encode(&mut adopted_records, &RecordRef::Finished { worker: w, id: new, key });
            }
        }
        let adopted: usize = pairs.values().map(|p| p.len()).sum();
        for (w, pairs) in pairs {
            self.send_worker(w, ToWorker::Renumber { pairs });
        }
        let finished_before = keys.len();
        if accepted {
            self.journal_client = Some(jc);
            self.journal_wants = wanted.iter().cloned().collect();
        }
        log_at!(
            2,
            "scheduler",
            "resumed {graphs} graphs from the journal: {n_tasks} tasks, {} keys waited for; {adopted} values taken over from {} workers that came back; of the {finished_before} values finished before, the others are loaded from the cache or computed again if still needed",
            wanted.len(),
            offered.len()
        );
        if let Some(path) = self.cfg.journal.clone() {
            let mut body = Vec::new();
            if accepted {
                journal::encode(&mut body, &RecordRef::Graph { client: jc, tasks: &original, wanted: &wanted });
                body.extend_from_slice(&adopted_records);
            }
            let first = self.journal_head(&body);
            match journal::Writer::create(&path, first) {
                Ok(w) => self.journal = Some(w),
                Err(e) => log_at!(0, "scheduler", "{e}; running without a journal"),
            }
        }
        for (c, m) in held_back {
            if self.client_conn.contains_key(&c) {
                self.client_message(c, m, now);
            }
        }
    }

    pub(super) fn send_worker(&self, w: WorkerId, m: ToWorker) {
        if let Some(&conn) = self.worker_conn.get(&w) {
            self.io.send(conn, Out::Worker(vec![m]));
        }
    }

    /// Clients other than the journal's.
    pub(super) fn real_clients(&self) -> usize {
        self.state.client_count() - usize::from(self.journal_client.is_some())
    }

    /// Nothing left that anyone waits for: rewrite the journal with only
    /// this run and its workers.
    pub(super) fn compact_journal_if_done(&mut self) {
        let done = self.journal.as_ref().is_some_and(|j| j.appended > 0) && self.real_clients() == 0 && self.journal_wants.is_empty() && self.nothing_active();
        if done {
            let head = self.journal_head(&[]);
            if let Some(j) = &mut self.journal {
                j.compact(head);
                log_at!(3, "scheduler", "journal {} compacted: nothing is wanted any more", j.path().display());
            }
        }
    }

    pub(super) fn nothing_active(&self) -> bool {
        use crate::scheduler::state::TaskState as S;
        [S::Waiting, S::Queued, S::NoWorker, S::Processing].iter().all(|&s| self.state.count(s) == 0)
    }
}
