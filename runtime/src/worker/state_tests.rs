//! Tests of the worker's state machine: scenarios, then a seeded random
//! walk with the invariants checked after every input. No IO: the store is
//! a model ([`Model`]), executors and peers are the test answering the
//! instructions.

use super::*;
use crate::worker::deps::drop_dataless_deps;
use crate::graph::CmdSpec;
use std::collections::HashSet;

/// What the store holds: size and whether in memory (false: spilled).
#[derive(Default)]
struct Model(HashMap<TaskId, (u64, bool)>);

impl Held for Model {
    fn contains(&self, id: TaskId) -> bool {
        self.0.contains_key(&id)
    }
    fn in_memory(&self, id: TaskId) -> bool {
        self.0.get(&id).is_some_and(|v| v.1)
    }
    fn nbytes(&self, id: TaskId) -> Option<u64> {
        self.0.get(&id).map(|v| v.0)
    }
}

/// The worker state with its instructions carried out against the model.
struct Sim {
    s: WorkerState,
    held: Model,
    now: Instant,
    sent: Vec<ToScheduler>,
    fetches: Vec<(String, TaskId)>,
    running: Vec<Execute>,
    dropped: Vec<TaskId>,
    cancelled: Vec<TaskId>,
    forgotten_peers: Vec<String>,
    exit: Option<WorkerExit>,
}

impl Sim {
    fn new(nthreads: u32, resources: &[(&str, f64)]) -> Sim {
        let shape = Shape {
            nthreads,
            resources: resources.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
            retire_at: None,
        };
        Sim {
            s: WorkerState::new(shape),
            held: Model::default(),
            now: Instant::now(),
            sent: Vec::new(),
            fetches: Vec::new(),
            running: Vec::new(),
            dropped: Vec::new(),
            cancelled: Vec::new(),
            forgotten_peers: Vec::new(),
            exit: None,
        }
    }

    /// A message from the scheduler, as the worker's IO gives it.
    fn message(&mut self, m: ToWorker) {
        self.s.message(m, &self.held);
        self.carry_out(Vec::new());
    }

    /// Apply an input as the worker's IO does, then check the invariants.
    fn input(&mut self, input: Input) {
        self.s.handle(input, self.now, &self.held);
        self.carry_out(Vec::new());
    }

    /// Carry out what the state produced, feeding back the inputs that
    /// causes, checking the invariants after each.
    fn carry_out(&mut self, mut pending: Vec<Input>) {
        loop {
            self.s.take_messages_into(&mut self.sent);
            let out: Vec<Instruction> = self.s.take_instructions().collect();
            for ins in out {
                match ins {
                    Instruction::Fetch { peer, dep } => self.fetches.push((peer, dep)),
                    Instruction::Execute(x) => {
                        match self.s.inputs(x.id).find(|d| !self.held.contains(**d)) {
                            Some(&dep) => pending.push(Input::ArgsMissing { id: x.id, dep }),
                            None => self.running.push(x),
                        }
                    }
                    Instruction::DropValue(id) => {
                        self.held.0.remove(&id);
                        self.dropped.push(id);
                    }
                    Instruction::ForgetPeer(p) => self.forgotten_peers.push(p),
                    Instruction::Cancel(id) => self.cancelled.push(id),
                    Instruction::Exit(e) => self.exit = Some(e),
                }
            }
            if let Err(e) = self.s.check_invariants() {
                panic!("invariant broken: {e}");
            }
            let Some(i) = pending.pop() else { return };
            self.s.handle(i, self.now, &self.held);
        }
    }

    fn compute(&mut self, ct: ComputeTask) {
        self.message(ToWorker::Compute(ct));
    }

    fn tick(&mut self) {
        self.input(Input::Tick);
    }

    /// Finish the running task `id` as the IO does: the value goes into the
    /// store only if the state still runs the task.
    fn finish(&mut self, id: TaskId, nbytes: u64, duration: Duration) {
        let pos = self
            .running
            .iter()
            .position(|x| x.id == id)
            .expect("running");
        self.running.remove(pos);
        if self.s.wants_inline(id).is_some() {
            self.held.0.insert(id, (nbytes, true));
            self.input(Input::Finished {
                id,
                nbytes,
                inline: None,
                duration,
                start_us: 7,
                thread: 1,
            });
        }
    }

    fn fetched(&mut self, dep: TaskId, nbytes: u64) {
        let pos = self
            .fetches
            .iter()
            .position(|f| f.1 == dep)
            .expect("fetch under way");
        self.fetches.remove(pos);
        self.held.0.insert(dep, (nbytes, true));
        self.input(Input::Fetched { dep, nbytes, transfer: None });
    }

    fn fetch_failed(&mut self, dep: TaskId) {
        let pos = self
            .fetches
            .iter()
            .position(|f| f.1 == dep)
            .expect("fetch under way");
        let (from, _) = self.fetches.remove(pos);
        self.input(Input::FetchFailed { deps: vec![dep], from });
    }

    fn take_sent(&mut self) -> Vec<ToScheduler> {
        std::mem::take(&mut self.sent)
    }
}

/// A task `id` whose expression is a list of its dependencies' values.
fn task(id: TaskId, deps: &[(TaskId, &[&str])]) -> ComputeTask {
    let expr = Expr::List((0..deps.len() as u32).map(Expr::Ref).collect());
    ComputeTask {
        id,
        key: format!("t-{id}"),
        spec: bincode::serialize(&expr).unwrap(),
        deps: deps
            .iter()
            .map(|(d, h)| (*d, h.iter().map(|s| s.to_string()).collect()))
            .collect(),
        dep_nbytes: deps.iter().map(|_| 8).collect(),
        priority: (0, 0, id),
        timeout: None,
        resources: Vec::new(),
        inline_result: false,
    }
}

fn ids_running(sim: &Sim) -> Vec<TaskId> {
    let mut v: Vec<TaskId> = sim.running.iter().map(|x| x.id).collect();
    v.sort();
    v
}

#[test]
fn a_task_whose_inputs_are_here_runs_at_the_next_tick_and_reports() {
    let mut sim = Sim::new(2, &[]);
    sim.held.0.insert(1, (8, true));
    sim.held.0.insert(2, (8, true));
    sim.compute(task(10, &[(1, &[]), (2, &[])]));
    assert!(sim.running.is_empty(), "nothing starts before the tick");
    sim.tick();
    assert_eq!(sim.running.len(), 1);
    assert_eq!(sim.s.inputs(10).copied().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(sim.s.executing(), 1);
    sim.finish(10, 100, Duration::from_millis(3));
    assert_eq!(
        sim.take_sent(),
        vec![ToScheduler::TaskFinished {
            id: 10,
            nbytes: 100,
            duration_us: 3000,
            start_us: 7,
            thread: 1,
            value: None
        }]
    );
    assert_eq!(sim.s.executing(), 0);
}

#[test]
fn a_missing_input_is_fetched_from_its_holder_then_the_task_runs() {
    let mut sim = Sim::new(1, &[]);
    sim.compute(task(10, &[(5, &["tcp://a:1"])]));
    assert_eq!(sim.fetches, vec![("tcp://a:1".to_string(), 5)]);
    sim.tick();
    assert!(sim.running.is_empty(), "waits for its input");
    sim.fetched(5, 8);
    assert_eq!(
        sim.take_sent(),
        vec![ToScheduler::Replicated { id: 5, nbytes: 8, transfer: None }],
        "every copy is reported"
    );
    sim.tick();
    assert_eq!(ids_running(&sim), vec![10]);
}

#[test]
fn a_failed_fetch_tries_the_next_holder_then_reports_the_missing_value() {
    let mut sim = Sim::new(1, &[]);
    sim.compute(task(10, &[(5, &["tcp://a:1", "tcp://b:1"])]));
    sim.fetch_failed(5);
    assert_eq!(sim.forgotten_peers, vec!["tcp://a:1".to_string()]);
    assert_eq!(sim.fetches, vec![("tcp://b:1".to_string(), 5)]);
    sim.fetch_failed(5);
    assert_eq!(
        sim.take_sent(),
        vec![ToScheduler::MissingData {
            id: 10,
            dep: 5,
            tried: vec!["tcp://a:1".into(), "tcp://b:1".into()]
        }]
    );
    // The scheduler sends the task again later: a new incarnation works.
    sim.held.0.insert(5, (8, true));
    sim.compute(task(10, &[(5, &["tcp://a:1"])]));
    sim.tick();
    assert_eq!(ids_running(&sim), vec![10]);
}

#[test]
fn steal_gives_up_only_what_has_not_started() {
    let mut sim = Sim::new(1, &[]);
    sim.compute(task(1, &[]));
    sim.compute(task(2, &[]));
    sim.tick();
    assert_eq!(ids_running(&sim), vec![1]);
    sim.message(ToWorker::Steal { ids: vec![1, 2, 3] });
    assert_eq!(
        sim.take_sent(),
        vec![ToScheduler::Stolen {
            ids: vec![2],
            kept: vec![1, 3]
        }]
    );
    sim.finish(1, 8, Duration::from_millis(1));
    sim.tick();
    assert!(sim.running.is_empty(), "the stolen task does not run here");
}

#[test]
fn a_task_sent_again_after_being_stolen_waits_for_its_new_inputs() {
    // A stale entry of the first incarnation in the ready heap must not
    // start the second one, which lacks an input.
    let mut sim = Sim::new(1, &[]);
    sim.compute(task(7, &[]));
    sim.message(ToWorker::Steal { ids: vec![7] });
    sim.compute(task(7, &[(5, &["tcp://a:1"])]));
    sim.tick();
    assert!(sim.running.is_empty());
    assert!(
        !sim.sent
            .iter()
            .any(|m| matches!(m, ToScheduler::MissingData { .. })),
        "{:?}",
        sim.sent
    );
}

#[test]
fn transfers_stay_within_the_count_and_byte_limits() {
    let mut sim = Sim::new(1, &[]);
    for i in 0..100 {
        let mut t = task(i, &[(1000 + i, &["tcp://a:1"])]);
        t.dep_nbytes = vec![10 << 20];
        sim.compute(t);
    }
    assert_eq!(
        sim.fetches.len(),
        51,
        "512 MiB in flight at most, 10 MiB each"
    );
    sim.fetched(1000, 10 << 20);
    assert_eq!(sim.fetches.len(), 51, "one done, the next one starts");
    let mut sim = Sim::new(1, &[]);
    for i in 0..100 {
        sim.compute(task(i, &[(1000 + i, &["tcp://a:1"])]));
    }
    assert_eq!(sim.fetches.len(), MAX_FETCHES_IN_FLIGHT);
    // One value larger than the byte limit goes alone.
    let mut sim = Sim::new(1, &[]);
    let mut big = task(1, &[(50, &["tcp://a:1"])]);
    big.dep_nbytes = vec![1 << 30];
    sim.compute(big);
    sim.compute(task(2, &[(51, &["tcp://a:1"])]));
    assert_eq!(sim.fetches.len(), 1);
}

#[test]
fn tasks_that_need_a_resource_run_one_at_a_time_when_there_is_one() {
    let mut sim = Sim::new(4, &[("gpu", 1.0)]);
    for id in 1..=2 {
        let mut t = task(id, &[]);
        t.resources = vec![("gpu".into(), 1.0)];
        sim.compute(t);
    }
    sim.compute(task(3, &[]));
    sim.tick();
    assert_eq!(ids_running(&sim), vec![1, 3]);
    sim.finish(1, 8, Duration::from_secs(1));
    sim.tick();
    assert_eq!(ids_running(&sim), vec![2, 3]);
}

#[test]
fn a_paused_worker_starts_nothing_until_it_resumes() {
    let mut sim = Sim::new(2, &[]);
    sim.input(Input::Paused(true));
    sim.compute(task(1, &[]));
    sim.tick();
    assert!(sim.running.is_empty());
    sim.input(Input::Paused(false));
    sim.tick();
    assert_eq!(ids_running(&sim), vec![1]);
}

#[test]
fn the_lifetime_starts_a_retirement_that_ends_in_bounded_time() {
    let mut sim = Sim::new(1, &[]);
    sim.s.shape.retire_at = Some(sim.now + Duration::from_secs(10));
    sim.tick();
    assert!(sim.take_sent().is_empty());
    sim.now += Duration::from_secs(10);
    sim.tick();
    assert_eq!(sim.take_sent(), vec![ToScheduler::RetireMe]);
    sim.input(Input::RetireRequested);
    assert!(sim.take_sent().is_empty(), "asked once");
    sim.now += RETIRE_TIMEOUT;
    sim.tick();
    assert!(
        matches!(sim.exit, Some(WorkerExit::SchedulerLost(ref m)) if m.contains("did not complete the retirement")),
        "{:?}",
        sim.exit
    );
}

#[test]
fn beyond_one_task_per_thread_only_tasks_with_inputs_in_memory_queue_ahead() {
    let mut sim = Sim::new(1, &[]);
    // Short tasks open the deeper window.
    sim.compute(task(1, &[]));
    sim.tick();
    sim.finish(1, 8, Duration::from_micros(10));
    sim.held.0.insert(100, (8, false)); // spilled
    sim.held.0.insert(101, (8, true));
    sim.compute(task(2, &[(101, &[])]));
    sim.compute(task(3, &[(100, &[])]));
    sim.compute(task(4, &[(101, &[])]));
    sim.tick();
    assert_eq!(
        ids_running(&sim),
        vec![2],
        "task 3's input is on disk: it waits, and so does everything behind it"
    );
    sim.held.0.insert(100, (8, true));
    sim.tick();
    assert_eq!(ids_running(&sim), vec![2, 3, 4]);
}

#[test]
fn an_input_that_vanished_before_the_start_is_reported_and_frees_the_thread() {
    let mut sim = Sim::new(1, &[("gpu", 1.0)]);
    sim.held.0.insert(5, (8, true));
    let mut t = task(1, &[(5, &[])]);
    t.resources = vec![("gpu".into(), 1.0)];
    sim.compute(t);
    sim.held.0.remove(&5); // e.g. its spill file could not be read back
    sim.tick();
    assert_eq!(
        sim.take_sent(),
        vec![ToScheduler::MissingData {
            id: 1,
            dep: 5,
            tried: vec![]
        }]
    );
    assert_eq!(sim.s.executing(), 0);
    assert!(sim.s.resources_in_use.values().all(|&v| v == 0.0));
}

#[test]
fn replication_reports_a_copy_or_its_failure() {
    let mut sim = Sim::new(1, &[]);
    sim.held.0.insert(5, (42, false));
    sim.message(ToWorker::Replicate {
        id: 5,
        holders: vec!["tcp://a:1".into()],
    });
    assert_eq!(
        sim.take_sent(),
        vec![ToScheduler::Replicated { id: 5, nbytes: 42, transfer: None }]
    );
    sim.message(ToWorker::Replicate {
        id: 6,
        holders: vec!["tcp://a:1".into()],
    });
    assert_eq!(sim.fetches, vec![("tcp://a:1".to_string(), 6)]);
    sim.fetch_failed(6);
    assert_eq!(
        sim.take_sent(),
        vec![ToScheduler::ReplicateFailed { id: 6 }]
    );
}

#[test]
fn freeing_drops_values_and_waiting_tasks_but_not_running_ones() {
    let mut sim = Sim::new(1, &[]);
    sim.compute(task(1, &[]));
    sim.compute(task(2, &[]));
    sim.tick();
    sim.message(ToWorker::Free { ids: vec![1, 2] });
    assert_eq!(sim.dropped, vec![1, 2]);
    // the running one is stopped (its process killed), the waiting one is not
    assert_eq!(sim.cancelled, vec![1]);
    sim.finish(1, 8, Duration::from_millis(1));
    assert!(matches!(
        sim.take_sent()[..],
        [ToScheduler::TaskFinished { id: 1, .. }]
    ));
    sim.tick();
    assert!(sim.running.is_empty(), "task 2 was forgotten");
}

#[test]
fn shutdown_exits() {
    let mut sim = Sim::new(1, &[]);
    sim.message(ToWorker::Shutdown {
        reason: "done".into(),
    });
    assert_eq!(sim.exit, Some(WorkerExit::Shutdown("done".into())));
}

#[test]
fn an_undecodable_spec_is_a_task_error() {
    let mut sim = Sim::new(1, &[]);
    let mut t = task(1, &[]);
    t.spec = vec![0xff; 3];
    sim.compute(t);
    assert!(
        matches!(&sim.take_sent()[..], [ToScheduler::TaskErred { id: 1, error, .. }] if error.contains("undecodable"))
    );
}

const PEERS: [&str; 3] = ["tcp://a:1", "tcp://b:1", "tcp://c:1"];

/// One seeded random walk over a worker state.
struct Walk {
    rng: u64,
    sim: Sim,
    /// Every task id the worker was given.
    given: HashSet<TaskId>,
    next_id: TaskId,
}

impl Walk {
    fn new(seed: u64) -> Walk {
        let mut w = Walk { rng: seed.wrapping_mul(0x9E3779B97F4A7C15), sim: Sim::new(1, &[]), given: HashSet::new(), next_id: 1 };
        let nthreads = 1 + w.next(3) as u32;
        w.sim = Sim::new(nthreads, &[("gpu", 1.0)]);
        w
    }

    fn next(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n.max(1)
    }

    /// A new task (sometimes an id seen before) with 0-3 inputs.
    fn new_task(&mut self) {
        let id = if self.next(5) == 0 && self.next_id > 1 {
            1 + self.next(self.next_id as u64 - 1) as TaskId
        } else {
            self.next_id
        };
        self.next_id = self.next_id.max(id + 1);
        let deps: Vec<(TaskId, Vec<&str>)> = (0..self.next(4))
            .map(|_| {
                let d = 10_000 + self.next(20) as TaskId;
                let holders = (0..self.next(3)).map(|_| PEERS[self.next(3) as usize]).collect();
                (d, holders)
            })
            .collect();
        let deps_ref: Vec<(TaskId, &[&str])> =
            deps.iter().map(|(d, h)| (*d, &h[..])).collect();
        let mut t = task(id, &deps_ref);
        t.dep_nbytes = deps.iter().map(|_| 1 + self.next(300 << 20)).collect();
        if self.next(4) == 0 {
            t.resources = vec![("gpu".into(), 1.0)];
        }
        if self.next(6) == 0 {
            t.spec = bincode::serialize(&Expr::Cmd(Box::new(CmdSpec {
                argv: vec![Expr::Lit("\"true\"".into())],
                cwd: None,
                env: vec![],
                stdin: None,
            })))
            .unwrap();
        }
        self.given.insert(id);
        self.sim.compute(t);
    }

    /// One random input.
    fn step(&mut self) {
        match self.next(14) {
            0..=3 => self.new_task(),
            4 if !self.sim.running.is_empty() => {
                let pick = self.next(self.sim.running.len() as u64) as usize;
                let x = self.sim.running.remove(pick);
                let duration = Duration::from_micros(self.next(3000));
                if self.next(4) == 0 {
                    self.sim.input(Input::Erred {
                        id: x.id,
                        error: "boom".into(),
                        duration,
                        start_us: 0,
                        thread: 0,
                    });
                } else {
                    self.sim.running.push(x);
                    let id = self.sim.running.last().unwrap().id;
                    let nbytes = self.next(1000);
                    self.sim.finish(id, nbytes, duration);
                }
            }
            5 if !self.sim.fetches.is_empty() => {
                let pick = self.next(self.sim.fetches.len() as u64) as usize;
                let dep = self.sim.fetches[pick].1;
                if self.next(3) == 0 {
                    self.sim.fetch_failed(dep);
                } else {
                    let nbytes = 1 + self.next(1000);
                    self.sim.fetched(dep, nbytes);
                }
            }
            6 => {
                let ids: Vec<TaskId> = (0..1 + self.next(3))
                    .map(|_| {
                        if self.next(2) == 0 {
                            1 + self.next(self.next_id as u64) as TaskId
                        } else {
                            10_000 + self.next(20) as TaskId
                        }
                    })
                    .collect();
                self.sim.message(ToWorker::Free { ids });
            }
            7 => {
                let ids: Vec<TaskId> = (0..1 + self.next(3))
                    .map(|_| 1 + self.next(self.next_id as u64) as TaskId)
                    .collect();
                self.sim.message(ToWorker::Steal { ids });
            }
            8 => {
                let id = 10_000 + self.next(20) as TaskId;
                let holder = PEERS[self.next(3) as usize];
                self.sim.message(ToWorker::Replicate { id, holders: vec![holder.into()] });
            }
            9 => {
                // The store spills a value, or reads one back.
                let pick = self.next(20) as usize;
                if let Some(v) = self.sim.held.0.values_mut().nth(pick) {
                    v.1 = !v.1;
                }
            }
            10 => {
                let paused = self.next(3) == 0;
                self.sim.input(Input::Paused(paused));
            }
            _ => {
                let ms = self.next(50);
                self.sim.now += Duration::from_millis(ms);
                self.sim.tick();
            }
        }
    }

    /// Answer every fetch and task until nothing is left to do.
    fn drain(&mut self) {
        self.sim.input(Input::Paused(false));
        for _ in 0..10_000 {
            self.sim.tick();
            if let Some(x) = self.sim.running.pop() {
                let id = x.id;
                self.sim.running.push(x);
                self.sim.finish(id, 8, Duration::from_millis(2));
            } else if let Some(&(_, dep)) = self.sim.fetches.first() {
                if self.next(2) == 0 {
                    self.sim.fetched(dep, 8);
                } else {
                    self.sim.fetch_failed(dep);
                }
            } else {
                break;
            }
        }
    }

    /// Every task given was finished, failed, reported missing inputs,
    /// stolen or freed: none vanished without a word. Counts the outcomes in `seen`.
    fn lost(&self, seen: &mut HashMap<&'static str, u64>) -> Vec<TaskId> {
        let mut told: HashSet<TaskId> = HashSet::new();
        for m in &self.sim.sent {
            let kind = match m {
                ToScheduler::TaskFinished { .. } => "finished",
                ToScheduler::TaskErred { .. } => "erred",
                ToScheduler::MissingData { tried, .. } if tried.is_empty() => "missing at start",
                ToScheduler::MissingData { .. } => "missing after fetches",
                ToScheduler::Stolen { ids, .. } if !ids.is_empty() => "stolen",
                ToScheduler::Replicated { .. } => "replicated",
                ToScheduler::ReplicateFailed { .. } => "replicate failed",
                _ => "other",
            };
            *seen.entry(kind).or_default() += 1;
            match m {
                ToScheduler::TaskFinished { id, .. }
                | ToScheduler::TaskErred { id, .. }
                | ToScheduler::MissingData { id, .. } => {
                    told.insert(*id);
                }
                ToScheduler::Stolen { ids, .. } => told.extend(ids),
                _ => {}
            }
        }
        told.extend(&self.sim.dropped);
        self.given.iter().filter(|id| !told.contains(id)).copied().collect()
    }
}

/// Random scheduler messages, results, fetch answers, spills, pauses and
/// ticks; invariants after every input. At the end, with everything
/// answered, every task the worker was given has been accounted for.
#[test]
fn random_walk_keeps_the_invariants_and_loses_no_task() {
    // How often each outcome happened over all seeds: the walk must reach them all.
    let mut seen: HashMap<&'static str, u64> = HashMap::new();
    for seed in 1..=300u64 {
        let mut walk = Walk::new(seed);
        for step in 0..400 {
            walk.step();
            assert!(walk.sim.exit.is_none(), "seed {seed} step {step}: unexpected exit {:?}", walk.sim.exit);
        }
        walk.drain();
        let sim = &walk.sim;
        assert!(sim.running.is_empty() && sim.fetches.is_empty(), "seed {seed}: still busy");
        assert!(sim.s.tasks.is_empty(), "seed {seed}: tasks left waiting for ever: {:?}", sim.s.tasks.keys().collect::<Vec<_>>());
        assert_eq!(sim.s.executing(), 0);
        let lost = walk.lost(&mut seen);
        assert!(lost.is_empty(), "seed {seed}: tasks never accounted for: {lost:?}");
    }
    for kind in ["finished", "erred", "missing at start", "missing after fetches", "stolen", "replicated", "replicate failed"] {
        assert!(seen.get(kind).copied().unwrap_or(0) >= 10, "the walk rarely reaches '{kind}': {seen:?}");
    }
}

#[test]
fn dependencies_that_pass_no_data_are_dropped_and_references_renumbered() {
    // refs to deps 1 and 3 (of 0..4) inside a call, a list and a command
    let mut expr = Expr::List(vec![
        Expr::Call("inc".into(), vec![Expr::Ref(3)]),
        Expr::Cmd(Box::new(CmdSpec {
            argv: vec![Expr::Lit("\"cat\"".into())],
            cwd: None,
            env: vec![("X".into(), Expr::Ref(1))],
            stdin: Some(Expr::Ref(3)),
        })),
    ]);
    let mut ct = task(
        99,
        &[
            (10, &["tcp://h:10"]),
            (11, &["tcp://h:11"]),
            (12, &["tcp://h:12"]),
            (13, &["tcp://h:13"]),
        ],
    );
    ct.dep_nbytes = vec![100, 110, 120, 130];
    drop_dataless_deps(&mut ct, &mut expr);
    assert_eq!(
        ct.deps.iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![11, 13]
    );
    assert_eq!(ct.dep_nbytes, vec![110, 130]);
    let mut refs = Vec::new();
    expr.for_each_ref(&mut |i| refs.push(*i));
    assert_eq!(
        refs,
        vec![1, 0, 1],
        "3 -> 1, 1 -> 0 in visiting order (call, env, stdin)"
    );
}

#[test]
fn a_task_using_every_dependency_is_unchanged() {
    let mut expr = Expr::Call("add".into(), vec![Expr::Ref(1), Expr::Ref(0)]);
    let before = expr.clone();
    let mut ct = task(99, &[(5, &[]), (6, &[])]);
    drop_dataless_deps(&mut ct, &mut expr);
    assert_eq!(expr, before);
    assert_eq!(ct.deps.len(), 2);
    let mut noop = Expr::Call("noop".into(), vec![]);
    let mut ct = task(99, &[(5, &[]), (6, &[])]);
    drop_dataless_deps(&mut ct, &mut noop);
    assert!(
        ct.deps.is_empty() && ct.dep_nbytes.is_empty(),
        "a gate needs none of its dependencies' values"
    );
}
