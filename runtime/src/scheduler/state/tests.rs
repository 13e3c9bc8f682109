//! State-machine tests: build state, feed events, check invariants after
//! every event. No sockets, threads or clocks.

use super::*;
use crate::graph::{Annotations, Graph};

fn graph(text: &str) -> Vec<TaskDef> {
    Graph::from_json(text, &|f: &str| ["inc", "add", "noop", "sum", "fail"].contains(&f)).unwrap().tasks
}

fn info(name: &str, nthreads: u32) -> WorkerInfo {
    WorkerInfo { name: name.into(), address: format!("tcp://{name}:1"), nthreads, resources: vec![], host: "h".into(), pid: 1, job: String::new(), functions: vec![] }
}

struct Sim {
    s: SchedulerState,
}

impl Sim {
    fn new() -> Sim {
        Sim { s: SchedulerState::new(SchedulerConfig::default()) }
    }
    fn ok(&self) {
        if let Err(e) = self.s.check_invariants() {
            panic!("invariant violated: {e}");
        }
    }
    /// Compute messages sent so far, per worker, in order.
    fn computes(&mut self) -> Vec<(WorkerId, TaskId, String)> {
        let (w, _) = self.s.take_outgoing();
        w.into_iter().filter_map(|(wid, m)| if let ToWorker::Compute(c) = m { Some((wid, c.id, c.key)) } else { None }).collect()
    }
    fn outgoing(&mut self) -> Outgoing {
        self.s.take_outgoing()
    }
    fn id(&self, k: &str) -> TaskId {
        self.s.task_id(k).unwrap()
    }
    fn finish(&mut self, w: WorkerId, k: &str) {
        let t = self.id(k);
        self.s.task_finished(w, t, 8, 0.001, 0.0);
        self.ok();
    }
    fn state(&self, k: &str) -> Option<TaskState> {
        self.s.state_of(k)
    }
}

/// `x` and `n` tasks `d0..` that each need it; the `d` keys are wanted.
fn fan_out(n: usize) -> (String, Vec<String>) {
    let mut text = String::from("{\"x\": 1");
    for i in 0..n {
        text.push_str(&format!(", \"d{i}\": [\"inc\", \"x\"]"));
    }
    text.push('}');
    (text, (0..n).map(|i| format!("d{i}")).collect())
}

fn wanted(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

#[test]
fn seed_graph_runs_in_order_and_client_is_told() {
    let mut sim = Sim::new();
    let w = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    sim.s.update_graph(c, graph(r#"{"x": 1, "y": ["inc", "x"], "z": ["add", "y", 10]}"#), &wanted(&["z"])).unwrap();
    sim.ok();
    assert_eq!(sim.computes().iter().map(|(_, _, k)| k.as_str()).collect::<Vec<_>>(), vec!["x"]);
    assert_eq!(sim.state("y"), Some(TaskState::Waiting));
    sim.finish(w, "x");
    assert_eq!(sim.computes().iter().map(|(_, _, k)| k.as_str()).collect::<Vec<_>>(), vec!["y"]);
    sim.finish(w, "y");
    // x is no longer needed by anyone: released and, having no live dependents left to recompute... kept for lineage until z is done.
    let (frees, _) = sim.outgoing();
    assert!(frees.iter().any(|(_, m)| matches!(m, ToWorker::Free { ids } if ids.contains(&0))), "x freed: {frees:?}");
    sim.finish(w, "z");
    let (_, to_client) = sim.outgoing();
    assert!(to_client.iter().any(|(cc, m)| *cc == c && matches!(m, ToClient::KeyInMemory { key, .. } if key == "z")));
    assert_eq!(sim.state("z"), Some(TaskState::Memory));
    // Releasing z forgets everything.
    sim.s.release_keys(c, &wanted(&["z"]));
    sim.ok();
    assert!(sim.state("z").is_none() && sim.state("x").is_none() && sim.state("y").is_none());
    assert!(sim.s.is_idle());
}

#[test]
fn unwanted_tasks_are_culled() {
    let mut sim = Sim::new();
    sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    sim.s.update_graph(c, graph(r#"{"a": 1, "b": ["inc", "a"], "c": 5}"#), &wanted(&["c"])).unwrap();
    sim.ok();
    assert!(sim.state("a").is_none() && sim.state("b").is_none());
    assert_eq!(sim.computes().len(), 1);
}

#[test]
fn update_rejected_whole_on_bad_reference_or_cycle() {
    let mut sim = Sim::new();
    let c = sim.s.add_client("c".into());
    let mut defs = graph(r#"{"a": 1, "b": ["inc", "a"]}"#);
    defs[1].deps = vec!["nope".into()];
    let e = sim.s.update_graph(c, defs, &wanted(&["b"])).unwrap_err();
    assert!(e.contains("'b' depends on 'nope'"), "{e}");
    let mut defs = graph(r#"{"a": 1, "b": ["inc", "a"]}"#);
    defs[0].deps = vec!["b".into()];
    let e = sim.s.update_graph(c, defs, &wanted(&["b"])).unwrap_err();
    assert!(e.contains("cycle"), "{e}");
    assert!(sim.state("a").is_none(), "nothing was added");
    let e = sim.s.update_graph(c, graph(r#"{"a": 1}"#), &wanted(&["zz"])).unwrap_err();
    assert!(e.contains("'zz'"));
    sim.ok();
}

#[test]
fn errors_propagate_to_dependents_only() {
    let mut sim = Sim::new();
    let w = sim.s.add_worker(info("a", 4), 0.0);
    let c = sim.s.add_client("c".into());
    sim.s.update_graph(c, graph(r#"{"bad": ["fail", "x"], "after": ["inc", "bad"], "good": 1}"#), &wanted(&["after", "good"])).unwrap();
    sim.ok();
    let bad = sim.id("bad");
    sim.s.task_erred(w, bad, "x".into(), 0.0);
    sim.ok();
    sim.finish(w, "good");
    let (_, msgs) = sim.outgoing();
    let erred: Vec<_> = msgs.iter().filter_map(|(_, m)| if let ToClient::KeyErred { key, error } = m { Some((key.clone(), error.clone())) } else { None }).collect();
    assert_eq!(erred, vec![("after".to_string(), "dependency 'bad' failed: x".to_string())]);
    assert!(msgs.iter().any(|(_, m)| matches!(m, ToClient::KeyInMemory { key, .. } if key == "good")));
}

#[test]
fn retries_rerun_then_succeed() {
    let mut sim = Sim::new();
    let w = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    let mut defs = graph(r#"{"t": ["noop"]}"#);
    defs[0].annotations = Annotations { retries: 2, ..Default::default() };
    sim.s.update_graph(c, defs, &wanted(&["t"])).unwrap();
    let t = sim.id("t");
    for _ in 0..2 {
        assert_eq!(sim.computes().len(), 1);
        sim.s.task_erred(w, t, "flaky".into(), 0.0);
        sim.ok();
    }
    assert_eq!(sim.computes().len(), 1);
    sim.finish(w, "t");
    assert_eq!(sim.state("t"), Some(TaskState::Memory));
    assert_eq!(sim.s.stats.retries, 2);
}

#[test]
fn placement_prefers_the_worker_holding_the_data() {
    let mut sim = Sim::new();
    let w1 = sim.s.add_worker(info("a", 1), 0.0);
    let w2 = sim.s.add_worker(info("b", 1), 0.0);
    let c = sim.s.add_client("c".into());
    let mut defs = graph(r#"{"big": 1, "use": ["inc", "big"]}"#);
    defs[0].annotations.workers = vec!["b".into()];
    sim.s.update_graph(c, defs, &wanted(&["use"])).unwrap();
    let sent = sim.computes();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, w2, "restriction honoured");
    sim.s.task_finished(w2, sim.id("big"), 1 << 30, 0.001, 0.0);
    sim.ok();
    let sent = sim.computes();
    assert_eq!(sent, vec![(w2, sim.id("use"), "use".into())], "dependent goes where the 1 GiB is, not to idle {w1}");
}

#[test]
fn copies_fetched_for_a_task_are_known_and_freed_with_the_value() {
    let mut sim = Sim::new();
    let w1 = sim.s.add_worker(info("a", 1), 0.0);
    let w2 = sim.s.add_worker(info("b", 1), 0.0);
    let c = sim.s.add_client("c".into());
    let mut defs = graph(r#"{"x": 1, "y": ["inc", "x"]}"#);
    defs[0].annotations.workers = vec!["a".into()];
    defs[1].annotations.workers = vec!["b".into()];
    sim.s.update_graph(c, defs, &wanted(&["y"])).unwrap();
    sim.computes();
    sim.finish(w1, "x");
    assert_eq!(sim.computes(), vec![(w2, sim.id("y"), "y".into())]);
    // b fetched x from a to run y: the copy is a holder, not a retirement copy
    sim.s.replicated(w2, sim.id("x"), 8, 0.0);
    sim.ok();
    assert_eq!(sim.s.who_has("x"), vec![w1, w2]);
    assert_eq!(sim.s.stats.values_replicated, 0);
    sim.finish(w2, "y");
    // x is released: both copies are freed, b's included
    let (out, _) = sim.outgoing();
    for w in [w1, w2] {
        assert!(out.iter().any(|(to, m)| *to == w && matches!(m, ToWorker::Free { ids } if ids.contains(&sim.id("x")))), "{w} frees x: {out:?}");
    }
    // a copy reported after the value was released is freed at once
    sim.s.replicated(w1, sim.id("y"), 8, 0.0);
    sim.ok();
    let (out, _) = sim.outgoing();
    assert!(out.iter().any(|(to, m)| *to == w1 && matches!(m, ToWorker::Free { .. })) || sim.s.who_has("y").contains(&w1));
}

#[test]
fn with_many_workers_placement_still_follows_the_data() {
    // Beyond SCAN_ALL_WORKERS, a task with dependencies looks only at their
    // holders and a few others; it must still go where its big input is.
    let mut sim = Sim::new();
    let ws: Vec<WorkerId> = (0..40).map(|i| sim.s.add_worker(info(&format!("w{i}"), 1), 0.0)).collect();
    let c = sim.s.add_client("c".into());
    let mut defs = graph(r#"{"big": 1, "use": ["inc", "big"], "other": ["inc", "big"]}"#);
    defs[0].annotations.workers = vec!["w37".into()];
    sim.s.update_graph(c, defs, &wanted(&["use", "other"])).unwrap();
    assert_eq!(sim.computes(), vec![(ws[37], sim.id("big"), "big".into())]);
    sim.s.task_finished(ws[37], sim.id("big"), 1 << 30, 0.001, 0.0);
    sim.ok();
    let sent = sim.computes();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|(w, _, _)| *w == ws[37]), "both go to the 1 GiB: {sent:?}");
    // a small input is not worth waiting for: work spreads to idle workers
    let mut defs = graph(r#"{"small": 1, "a": ["inc", "small"], "b": ["inc", "small"], "c2": ["inc", "small"]}"#);
    defs[0].annotations.workers = vec!["w5".into()];
    sim.s.update_graph(c, defs, &wanted(&["a", "b", "c2"])).unwrap();
    sim.computes();
    sim.finish(ws[5], "small");
    let sent = sim.computes();
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().any(|(w, _, _)| *w != ws[5]), "cheap input: not all queued behind w5: {sent:?}");
}

#[test]
fn a_late_copy_does_not_cancel_the_recomputation_on_the_same_worker() {
    // w2 fetched x from w1 just before w1 died; the scheduler, not yet told,
    // recomputes x on w2; then w2's copy is reported. Freeing that copy
    // would also cancel w2's queued recomputation of x (met while hunting
    // the kill -9 hang, whose cause was the steal race tested below).
    let mut sim = Sim::new();
    let w1 = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    sim.s.update_graph(c, graph(r#"{"x": 1, "y": ["inc", "x"]}"#), &wanted(&["y"])).unwrap();
    sim.computes();
    sim.finish(w1, "x");
    let w2 = sim.s.add_worker(info("b", 1), 0.0);
    sim.s.remove_worker(w1, "killed");
    sim.ok();
    assert_eq!(sim.s.processing_on("x"), Some(w2), "x recomputed on b");
    let _ = sim.outgoing();
    sim.s.replicated(w2, sim.id("x"), 8, 0.0);
    sim.ok();
    let (out, _) = sim.outgoing();
    assert!(!out.iter().any(|(_, m)| matches!(m, ToWorker::Free { ids } if ids.contains(&sim.id("x")))), "x not freed on b: {out:?}");
    assert_eq!(sim.s.processing_on("x"), Some(w2));
    sim.finish(w2, "x");
    sim.finish(w2, "y");
    assert_eq!(sim.state("y"), Some(TaskState::Memory));
}

#[test]
fn no_worker_until_a_matching_one_joins() {
    let mut sim = Sim::new();
    sim.s.add_worker(info("cpu", 2), 0.0);
    let c = sim.s.add_client("c".into());
    let mut defs = graph(r#"{"g": ["noop"]}"#);
    defs[0].annotations.resources = vec![("gpus".into(), 1.0)];
    sim.s.update_graph(c, defs, &wanted(&["g"])).unwrap();
    sim.ok();
    assert_eq!(sim.state("g"), Some(TaskState::NoWorker));
    let mut gi = info("gpu", 1);
    gi.resources = vec![("gpus".into(), 2.0)];
    let gw = sim.s.add_worker(gi, 0.0);
    sim.ok();
    assert_eq!(sim.computes().iter().map(|(w, _, _)| *w).collect::<Vec<_>>(), vec![gw]);
}

#[test]
fn root_tasks_are_queued_not_flooded_and_priorities_respected() {
    let mut sim = Sim::new();
    let c = sim.s.add_client("c".into());
    let mut text = String::from("{");
    for i in 0..100 {
        text.push_str(&format!("\"t{i}\": [\"noop\"], "));
    }
    text.push_str("\"urgent\": {\"task\": [\"noop\"], \"priority\": 10}}");
    let keys: Vec<String> = (0..100).map(|i| format!("t{i}")).chain(["urgent".to_string()]).collect();
    sim.s.update_graph(c, graph(&text), &keys).unwrap();
    assert_eq!(sim.s.count(TaskState::Queued), 101);
    let w = sim.s.add_worker(info("a", 2), 0.0);
    sim.ok();
    let sent = sim.computes();
    assert!(sent.len() < 10, "a worker gets a few slots' worth, not everything: {}", sent.len());
    assert_eq!(sent[0].2, "urgent");
    assert_eq!(sent[1].2, "t0");
    // Finishing tasks pulls more; short tasks deepen the pipeline.
    for (_, t, _) in sent {
        sim.s.task_finished(w, t, 8, 1e-5, 0.0);
        sim.ok();
    }
    assert!(sim.computes().len() > 4);
}

#[test]
fn lost_worker_reschedules_running_and_recomputes_lost_results() {
    let mut sim = Sim::new();
    let w1 = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    sim.s.update_graph(c, graph(r#"{"x": 1, "y": ["inc", "x"], "z": ["add", "y", 10]}"#), &wanted(&["z"])).unwrap();
    sim.computes();
    sim.finish(w1, "x");
    sim.finish(w1, "y");
    assert_eq!(sim.processing_key(w1), Some("z".to_string()));
    let w2 = sim.s.add_worker(info("b", 1), 0.0);
    sim.computes();
    sim.s.remove_worker(w1, "killed");
    sim.ok();
    // y (held only by w1) is recomputed, which needs x again, which is recomputed too.
    assert_eq!(sim.state("y"), Some(TaskState::Waiting));
    assert_eq!(sim.state("z"), Some(TaskState::Waiting));
    let sent = sim.computes();
    assert_eq!(sent.iter().map(|(w, _, k)| (*w, k.as_str())).collect::<Vec<_>>(), vec![(w2, "x")]);
    assert_eq!(sim.s.stats.tasks_rescheduled, 1);
    let logs = sim.s.take_logs();
    assert!(logs.iter().any(|l| l.contains("recomputing 1 lost keys held only by 'a': y")), "{logs:?}");
    sim.finish(w2, "x");
    sim.finish(w2, "y");
    sim.finish(w2, "z");
    assert_eq!(sim.state("z"), Some(TaskState::Memory));
}

impl Sim {
    fn processing_key(&self, w: WorkerId) -> Option<String> {
        ["x", "y", "z"].iter().find(|k| self.s.processing_on(k) == Some(w)).map(|k| k.to_string())
    }
}

#[test]
fn task_that_kills_workers_is_erred_after_allowed_failures() {
    let mut sim = Sim::new();
    let c = sim.s.add_client("c".into());
    sim.s.update_graph(c, graph(r#"{"boom": ["noop"], "ok": 1}"#), &wanted(&["boom", "ok"])).unwrap();
    for i in 0..4 {
        let w = sim.s.add_worker(info(&format!("w{i}"), 1), 0.0);
        sim.ok();
        // Finish whatever is not "boom"; keep "boom" running, then the worker dies.
        for (_, t, k) in sim.computes() {
            if k != "boom" {
                sim.s.task_finished(w, t, 8, 0.001, 0.0);
            }
        }
        sim.computes();
        sim.s.remove_worker(w, "crashed");
        sim.ok();
    }
    assert_eq!(sim.state("boom"), Some(TaskState::Erred));
    let (_, msgs) = sim.outgoing();
    assert!(msgs.iter().any(|(_, m)| matches!(m, ToClient::KeyErred { key, error } if key == "boom" && error.contains("4 workers that died"))));
}

/// Only the tasks a dying worker had begun running are suspected, not those
/// queued behind them on it (an innocent task queued twice on a worker that
/// a crashing task killed was erred).
#[test]
fn tasks_queued_behind_a_crashing_one_are_not_suspected() {
    let mut sim = Sim { s: SchedulerState::new(SchedulerConfig { allowed_failures: 1, ..Default::default() }) };
    let c = sim.s.add_client("c".into());
    sim.s.update_graph(c, graph(r#"{"boom": ["noop"], "ok": ["noop"]}"#), &wanted(&["boom", "ok"])).unwrap();
    for i in 0..2 {
        let w = sim.s.add_worker(info(&format!("w{i}"), 1), 0.0);
        let sent: Vec<String> = sim.computes().into_iter().map(|(_, _, k)| k).collect();
        assert!(sent.contains(&"boom".to_string()) && sent.contains(&"ok".to_string()), "both queued on the one worker: {sent:?}");
        sim.s.started(w, &[sim.id("boom")], 0.0);
        sim.s.remove_worker(w, "killed");
        sim.ok();
    }
    // boom ran on 2 dying workers (> 1 allowed): erred; ok only waited: not.
    assert_eq!(sim.state("boom"), Some(TaskState::Erred));
    assert_ne!(sim.state("ok"), Some(TaskState::Erred));
    let w = sim.s.add_worker(info("w9", 1), 0.0);
    sim.computes();
    sim.finish(w, "ok");
    assert_eq!(sim.state("ok"), Some(TaskState::Memory));
}

#[test]
fn stale_and_duplicate_reports_are_harmless() {
    let mut sim = Sim::new();
    let w1 = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    sim.s.update_graph(c, graph(r#"{"x": 1}"#), &wanted(&["x"])).unwrap();
    sim.finish(w1, "x");
    sim.finish(w1, "x"); // duplicate
    sim.s.task_finished(w1, 9999, 1, 0.0, 0.0); // unknown id
    sim.s.task_erred(w1, 0, "late".into(), 0.0); // not processing
    sim.s.task_finished(777, 0, 1, 0.0, 0.0); // unknown worker
    sim.ok();
    assert_eq!(sim.state("x"), Some(TaskState::Memory));
}

#[test]
fn missing_data_recomputes_the_dependency() {
    let mut sim = Sim::new();
    let w1 = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    let mut defs = graph(r#"{"x": 1, "y": ["inc", "x"]}"#);
    defs[0].annotations.workers = vec!["a".into()];
    defs[1].annotations.workers = vec!["b".into()];
    sim.s.update_graph(c, defs, &wanted(&["y"])).unwrap();
    let w2 = sim.s.add_worker(info("b", 1), 0.0);
    sim.finish(w1, "x");
    sim.computes();
    assert_eq!(sim.s.processing_on("y"), Some(w2));
    // w2 could not get x from w1 (e.g. freed there): x is recomputed on w1.
    sim.s.missing_data(w2, sim.id("y"), sim.id("x"), &["tcp://a:1".to_string()], 0.0);
    sim.ok();
    assert_eq!(sim.state("x"), Some(TaskState::Processing));
    assert_eq!(sim.state("y"), Some(TaskState::Waiting));
}

#[test]
fn client_leaving_releases_its_work_and_idle_timeout_sees_idle() {
    let mut sim = Sim::new();
    let w = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    sim.s.update_graph(c, graph(r#"{"a": 1, "b": ["inc", "a"]}"#), &wanted(&["b"])).unwrap();
    sim.computes();
    sim.s.remove_client(c);
    sim.ok();
    // a was processing; it is cancelled on the worker.
    let (to_w, _) = sim.outgoing();
    assert!(to_w.iter().any(|(ww, m)| *ww == w && matches!(m, ToWorker::Free { ids } if ids.contains(&0))));
    assert!(sim.s.is_idle());
    // The late result is answered with a free.
    sim.s.task_finished(w, 0, 8, 0.0, 0.0);
    sim.ok();
}

#[test]
fn heartbeat_timeout_removes_silent_workers() {
    let mut sim = Sim::new();
    let w = sim.s.add_worker(info("a", 1), 0.0);
    sim.s.heartbeat(w, WorkerMetrics::default(), 50.0);
    assert!(sim.s.check_timeouts(100.0).is_empty());
    assert_eq!(sim.s.check_timeouts(111.0), vec![w]);
    assert_eq!(sim.s.worker_count(), 0);
    sim.ok();
}

/// A deterministic xorshift generator for the random walks: `next(n)` is
/// in `0..n`.
fn xorshift(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut rng = seed.wrapping_mul(0x9E3779B97F4A7C15);
    move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n.max(1)
    }
}

/// A random DAG of 20 to 59 `add` tasks (graph JSON) and its output keys.
fn random_dag(next: &mut impl FnMut(u64) -> u64) -> (String, Vec<String>) {
    let n = 20 + next(40) as usize;
    let mut text = String::from("{");
    for i in 0..n {
        let deps: Vec<String> = (0..next(4)).filter(|_| i > 0).map(|_| format!("\"t{}\"", next(i as u64))).collect();
        let args = if deps.is_empty() { "1".to_string() } else { deps.join(", ") };
        text.push_str(&format!("\"t{i}\": [\"add\", {args}]{}", if i + 1 < n { ", " } else { "}" }));
    }
    let outputs = Graph::from_json(&text, &|_: &str| true).unwrap().output_keys();
    (text, outputs)
}

/// A deterministic random walk through events on a random DAG: after every
/// event the invariants hold, and at the end every wanted key is in memory.
#[test]
fn random_event_sequences_keep_invariants_and_finish() {
    for seed in 1..=300u64 {
        let mut next = xorshift(seed);
        let (text, outputs) = random_dag(&mut next);
        let defs = graph(&text);
        let mut sim = Sim { s: SchedulerState::new(SchedulerConfig { allowed_failures: 10_000, ..Default::default() }) };
        let c = sim.s.add_client("c".into());
        let mut workers: Vec<WorkerId> = vec![sim.s.add_worker(info("w0", 2), 0.0)];
        sim.s.update_graph(c, defs, &outputs).unwrap();
        sim.ok();
        let mut running: Vec<(WorkerId, TaskId)> = Vec::new();
        // Steal requests not answered yet: answers come later, so workers
        // (the thief among them) can come and go in between.
        let mut steals: Vec<(WorkerId, Vec<TaskId>)> = Vec::new();
        let mut steps = 0;
        loop {
            for (w, m) in sim.outgoing().0 {
                match m {
                    ToWorker::Compute(ct) => running.push((w, ct.id)),
                    ToWorker::Steal { ids } => steals.push((w, ids)),
                    _ => {}
                }
            }
            // The scheduler's view matches the workers': a task it believes
            // processing on a worker is there (else nothing would finish it).
            for (t, task) in sim.s.tasks.iter().enumerate() {
                if let (TaskState::Processing, Some(w)) = (task.state, task.on()) {
                    assert!(running.contains(&(w, t as TaskId)), "seed {seed} step {steps}: '{}' processing on {w}, which does not have it", sim.s.key(t as TaskId));
                }
            }
            running.retain(|(w, _)| workers.contains(w));
            let done = outputs.iter().all(|k| sim.state(k) == Some(TaskState::Memory));
            if done {
                break;
            }
            steps += 1;
            if steps >= 5000 {
                let stuck: Vec<String> = sim.s.tasks.iter().filter(|t| !matches!(t.state, TaskState::Memory | TaskState::Forgotten | TaskState::Released)).map(|t| format!("{}:{:?}:{:?}", key_at(&sim.s.key_bytes, t.key), t.state, t.on())).collect();
                panic!("seed {seed}: no progress; running {running:?}; workers {workers:?}; {stuck:?}");
            }
            match next(20) {
                0 if workers.len() < 4 => workers.push(sim.s.add_worker(info(&format!("w{steps}"), 1 + next(3) as u32), 0.0)),
                1 if workers.len() > 1 => {
                    let w = workers.remove(next(workers.len() as u64) as usize);
                    sim.s.remove_worker(w, "random loss");
                }
                3 => sim.s.balance(),
                4 | 5 if !steals.is_empty() => {
                    let (victim, ids) = steals.remove(next(steals.len() as u64) as usize);
                    if workers.contains(&victim) {
                        // As the worker does: give up a random part of what
                        // it still has queued; the rest started or is gone.
                        let (given, kept): (Vec<TaskId>, Vec<TaskId>) = ids.into_iter().partition(|t| running.contains(&(victim, *t)) && next(2) == 0);
                        running.retain(|(w, t)| !(*w == victim && given.contains(t)));
                        sim.s.stolen(victim, &given, &kept, 0.0);
                    }
                }
                2 if !running.is_empty() => {
                    let (w, t) = running.remove(next(running.len() as u64) as usize);
                    let dep = sim.s.tasks[t as usize].deps.first().copied();
                    match dep {
                        Some(d) => sim.s.missing_data(w, t, d, &[], 0.0),
                        None => sim.s.task_finished(w, t, 8, 0.001, 0.0),
                    }
                }
                _ if !running.is_empty() => {
                    let (w, t) = running.remove(next(running.len() as u64) as usize);
                    sim.s.task_finished(w, t, 8, 0.001, 0.0);
                }
                _ => {}
            }
            if let Err(e) = sim.s.check_invariants() {
                panic!("seed {seed} step {steps}: {e}");
            }
        }
        sim.s.remove_client(c);
        sim.ok();
        assert!(sim.s.is_idle(), "seed {seed}: idle after the client leaves");
        assert_eq!(sim.s.count(TaskState::Memory), 0);
    }
}

#[test]
fn recomputation_that_fails_errs_the_waiting_dependents() {
    let mut sim = Sim::new();
    let w1 = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    sim.s.update_graph(c, graph(r#"{"x": 1, "y": ["inc", "x"], "z": ["inc", "y"]}"#), &wanted(&["z"])).unwrap();
    sim.finish(w1, "x");
    sim.finish(w1, "y");
    assert_eq!(sim.state("x"), Some(TaskState::Released), "x freed once y had it");
    let w2 = sim.s.add_worker(info("b", 1), 0.0);
    sim.computes();
    sim.s.remove_worker(w1, "lost");
    sim.ok();
    // y and then x must be recomputed; x now fails (e.g. a flaky input).
    assert_eq!(sim.s.processing_on("x"), Some(w2));
    sim.s.task_erred(w2, sim.id("x"), "input vanished".into(), 0.0);
    sim.ok();
    assert_eq!(sim.state("z"), Some(TaskState::Erred));
    let (_, msgs) = sim.outgoing();
    assert!(msgs.iter().any(|(_, m)| matches!(m, ToClient::KeyErred { key, error } if key == "z" && error == "dependency 'x' failed: input vanished")), "{msgs:?}");
}

#[test]
fn idle_workers_steal_unstarted_tasks_when_inputs_are_cheap_to_move() {
    let mut sim = Sim::new();
    let w1 = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    // A small input on w1; eight slow dependents all land on w1 by locality.
    let (text, keys) = fan_out(8);
    sim.s.update_graph(c, graph(&text), &keys).unwrap();
    let x = sim.id("x");
    sim.s.task_finished(w1, x, 8, 1.0, 0.0);
    sim.ok();
    let w2 = sim.s.add_worker(info("b", 1), 0.0);
    sim.computes();
    sim.s.balance();
    sim.ok();
    let (to_w, _) = sim.outgoing();
    let asked: Vec<TaskId> = to_w.iter().filter_map(|(w, m)| if let (true, ToWorker::Steal { ids }) = (*w == w1, m) { Some(ids.clone()) } else { None }).flatten().collect();
    assert_eq!(asked.len(), 1, "w2 has one idle thread: {to_w:?}");
    // w1 gives it up; it goes to w2.
    sim.s.stolen(w1, &asked, &[], 0.0);
    sim.ok();
    assert_eq!(sim.s.processing_on(sim.s.key(asked[0])), Some(w2));
    assert_eq!(sim.s.stats.tasks_stolen, 1);
    // A task that already started is kept where it is.
    sim.s.balance();
    let (to_w, _) = sim.outgoing();
    let asked: Vec<TaskId> = to_w.iter().filter_map(|(_, m)| if let ToWorker::Steal { ids } = m { Some(ids.clone()) } else { None }).flatten().collect();
    assert!(asked.is_empty(), "w2 is busy now: {asked:?}");
    sim.s.stolen(w1, &[], &[], 0.0);
    sim.ok();
}

/// Eight slow tasks on w1 (they need its input x), and an idle w2 that
/// joined afterwards: the setting for work stealing.
fn busy_worker_and_idle_one() -> (Sim, WorkerId, WorkerId) {
    let mut sim = Sim::new();
    let w1 = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    let (text, keys) = fan_out(8);
    sim.s.update_graph(c, graph(&text), &keys).unwrap();
    sim.s.task_finished(w1, sim.id("x"), 8, 1.0, 0.0);
    let w2 = sim.s.add_worker(info("b", 1), 0.0);
    sim.computes();
    (sim, w1, w2)
}

/// The tasks asked for in this round's steal requests.
fn steal_ids(sim: &mut Sim) -> Vec<TaskId> {
    sim.outgoing().0.into_iter().filter_map(|(_, m)| if let ToWorker::Steal { ids } = m { Some(ids) } else { None }).flatten().collect()
}

/// Two steal requests to one worker answered one after the other: the
/// first answer must not cancel the second request (that lost tasks).
#[test]
fn overlapping_steal_requests_are_settled_separately() {
    let (mut sim, w1, w2) = busy_worker_and_idle_one();
    sim.s.balance();
    let first = steal_ids(&mut sim);
    let w3 = sim.s.add_worker(info("c", 1), 0.0);
    sim.computes();
    sim.s.balance();
    let second = steal_ids(&mut sim);
    // w2 (still idle: no answer yet) and w3 each get one more.
    assert_eq!((first.len(), second.len()), (1, 2));
    // First answer: kept (it had started). Second: given up.
    sim.s.stolen(w1, &[], &first, 0.0);
    sim.ok();
    sim.s.stolen(w1, &second, &[], 0.0);
    sim.ok();
    for t in &second {
        let key = sim.s.key(*t).to_string();
        let on = sim.s.processing_on(&key);
        assert!(on == Some(w2) || on == Some(w3), "the second request was honoured: {key} on {on:?}");
    }
    assert_eq!(sim.s.stats.tasks_stolen, 2);
}

#[test]
fn big_inputs_are_not_stolen() {
    let mut sim = Sim::new();
    let w1 = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    let (text, keys) = fan_out(4);
    sim.s.update_graph(c, graph(&text), &keys).unwrap();
    sim.s.task_finished(w1, sim.id("x"), 10 << 30, 0.01, 0.0);
    sim.s.add_worker(info("b", 1), 0.0);
    sim.computes();
    sim.s.balance();
    let (to_w, _) = sim.outgoing();
    assert!(!to_w.iter().any(|(_, m)| matches!(m, ToWorker::Steal { .. })), "moving 10 GiB costs more than the tasks");
}

#[test]
fn retirement_copies_unique_values_then_lets_the_worker_go() {
    let mut sim = Sim::new();
    let w1 = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    let (text, keys) = fan_out(3);
    sim.s.update_graph(c, graph(&text), &keys).unwrap();
    sim.computes();
    sim.finish(w1, "x");
    for k in &keys {
        sim.finish(w1, k);
    }
    let w2 = sim.s.add_worker(info("b", 1), 0.0);
    sim.outgoing();
    assert_eq!(sim.s.retire_workers(&["a".into()], false), vec!["a"]);
    sim.ok();
    let (to_w, _) = sim.outgoing();
    let copies: Vec<TaskId> = to_w.iter().filter_map(|(w, m)| if let (true, ToWorker::Replicate { id, .. }) = (*w == w2, m) { Some(*id) } else { None }).collect();
    assert_eq!(copies.len(), 3, "the three wanted values only w1 holds: {to_w:?}");
    for t in copies {
        sim.s.replicated(w2, t, 8, 0.0);
        sim.ok();
    }
    let (to_w, _) = sim.outgoing();
    assert!(to_w.iter().any(|(w, m)| *w == w1 && matches!(m, ToWorker::Shutdown { .. })), "{to_w:?}");
    sim.s.remove_worker(w1, "connection closed");
    sim.ok();
    assert_eq!((sim.s.stats.workers_retired, sim.s.stats.workers_lost, sim.s.stats.tasks_recomputed), (1, 0, 0));
    for k in &keys {
        assert_eq!(sim.s.who_has(k), vec![w2]);
    }
}

/// The thief leaves between the steal request and the victim's answer: the
/// task the victim gave up must be placed again, not left "processing" on
/// the victim (which no longer has it). This hung a lost-worker test.
#[test]
fn a_task_given_up_after_its_thief_left_is_placed_again() {
    let (mut sim, w1, w2) = busy_worker_and_idle_one();
    sim.s.balance();
    let asked = steal_ids(&mut sim);
    assert_eq!(asked.len(), 1);
    sim.s.remove_worker(w2, "killed");
    sim.ok();
    sim.s.stolen(w1, &asked, &[], 0.0);
    sim.ok();
    let key = sim.s.key(asked[0]).to_string();
    assert_eq!(sim.s.processing_on(&key), Some(w1), "sent back to the only worker left");
    let (to_w, _) = sim.outgoing();
    assert!(to_w.iter().any(|(w, m)| *w == w1 && matches!(m, ToWorker::Compute(ct) if ct.id == asked[0])), "{to_w:?}");
}

/// A task a client waits for is asked to send its (small) result back with
/// its completion, and the scheduler passes it on without keeping it; a
/// dependency nobody waits for is not asked.
#[test]
fn small_results_a_client_waits_for_travel_inline() {
    let mut sim = Sim::new();
    let w = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    sim.s.update_graph(c, graph(r#"{"x": 1, "y": ["inc", "x"]}"#), &wanted(&["y"])).unwrap();
    let asked = |sim: &mut Sim| -> Vec<(String, bool)> {
        sim.outgoing().0.into_iter().filter_map(|(_, m)| if let ToWorker::Compute(ct) = m { Some((ct.key, ct.inline_result)) } else { None }).collect()
    };
    assert_eq!(asked(&mut sim), vec![("x".to_string(), false)]);
    sim.finish(w, "x");
    assert_eq!(asked(&mut sim), vec![("y".to_string(), true)]);
    sim.s.task_finished_with(w, sim.id("y"), 8, 0.001, Some((b'j', b"3".to_vec())), 0.0);
    sim.ok();
    let (_, to_client) = sim.outgoing();
    let got: Vec<_> = to_client.iter().filter_map(|(cc, m)| if let ToClient::KeyInMemory { key, value, .. } = m { Some((*cc, key.clone(), value.clone())) } else { None }).collect();
    assert_eq!(got, vec![(c, "y".to_string(), Some((b'j', b"3".to_vec())))]);
    // Asked again later (the value is not kept): only where it is.
    let c2 = sim.s.add_client("c2".into());
    sim.s.update_graph(c2, Vec::new(), &wanted(&["y"])).unwrap();
    let (_, to_client) = sim.outgoing();
    assert!(to_client.iter().any(|(cc, m)| *cc == c2 && matches!(m, ToClient::KeyInMemory { value: None, holders, .. } if !holders.is_empty())), "{to_client:?}");
}

#[test]
fn priority_ranks_put_higher_user_priorities_first() {
    let ps = [i32::MIN, -1_000_000, -1, 0, 1, 7, i32::MAX];
    for w in ps.windows(2) {
        assert!(priority_rank(w[1]) < priority_rank(w[0]), "{} runs before {}", w[1], w[0]);
    }
}

/// The per-task record is what a million waiting tasks cost (docs/benchmarks.md:
/// ≤ 150 bytes per waiting task with the ready queue, key and key index).
#[test]
fn task_record_stays_small() {
    assert!(std::mem::size_of::<Task>() <= 104, "Task is {} bytes", std::mem::size_of::<Task>());
    assert_eq!(std::mem::size_of::<(Priority, TaskId)>(), 16, "ready-queue entry");
}

#[test]
fn a_published_dataset_outlives_its_client_until_unpublished() {
    let mut sim = Sim::new();
    let w = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("first".into());
    sim.s.update_graph(c, graph(r#"{"x": 1, "y": ["inc", "x"]}"#), &wanted(&["y"])).unwrap();
    sim.finish(w, "x");
    sim.finish(w, "y");
    // unknown keys and empty names are refused, nothing changes
    let e = sim.s.publish_dataset("d", wanted(&["y", "nope"]), b"blob".to_vec(), false).unwrap_err();
    assert!(e.contains("'nope'"), "{e}");
    assert!(sim.s.dataset("d").is_none());
    assert!(sim.s.publish_dataset("", wanted(&["y"]), vec![], false).is_err());
    sim.s.publish_dataset("d", wanted(&["y"]), b"blob".to_vec(), false).unwrap();
    sim.ok();
    let e = sim.s.publish_dataset("d", wanted(&["y"]), vec![], false).unwrap_err();
    assert!(e.contains("already published"), "{e}");
    // the client leaves: y stays in memory for the dataset
    sim.s.remove_client(c);
    sim.ok();
    assert_eq!(sim.state("y"), Some(TaskState::Memory));
    assert_eq!(sim.s.dataset_names(), vec!["d".to_string()]);
    assert_eq!(sim.s.dataset("d").map(|d| d.data.clone()), Some(b"blob".to_vec()));
    // a second client wants it and is told at once, with nothing recomputed
    let c2 = sim.s.add_client("second".into());
    sim.outgoing();
    sim.s.update_graph(c2, vec![], &wanted(&["y"])).unwrap();
    sim.ok();
    let (to_workers, to_client) = sim.outgoing();
    assert!(!to_workers.iter().any(|(_, m)| matches!(m, ToWorker::Compute(_))));
    assert!(to_client.iter().any(|(cc, m)| *cc == c2 && matches!(m, ToClient::KeyInMemory { key, .. } if key == "y")));
    // unpublished while c2 wants it: kept; then released by c2: forgotten
    assert!(sim.s.unpublish_dataset("d"));
    assert!(!sim.s.unpublish_dataset("d"));
    sim.ok();
    assert_eq!(sim.state("y"), Some(TaskState::Memory));
    sim.s.release_keys(c2, &wanted(&["y"]));
    sim.ok();
    assert!(sim.state("y").is_none());
}

#[test]
fn two_datasets_sharing_a_key_keep_it_until_both_are_gone() {
    let mut sim = Sim::new();
    let w = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    sim.s.update_graph(c, graph(r#"{"x": 1}"#), &wanted(&["x"])).unwrap();
    sim.finish(w, "x");
    sim.s.publish_dataset("one", wanted(&["x"]), vec![], false).unwrap();
    sim.s.publish_dataset("two", wanted(&["x"]), vec![], false).unwrap();
    sim.s.release_keys(c, &wanted(&["x"]));
    sim.s.unpublish_dataset("one");
    sim.ok();
    assert_eq!(sim.state("x"), Some(TaskState::Memory));
    // replacing "two" by a dataset without x lets x go
    sim.s.update_graph(c, graph(r#"{"z": 5}"#), &wanted(&["z"])).unwrap();
    sim.s.publish_dataset("two", wanted(&["z"]), vec![], true).unwrap();
    sim.ok();
    assert!(sim.state("x").is_none());
}

#[test]
fn worker_plugins_reach_current_and_later_workers_and_replace_by_name() {
    let mut sim = Sim::new();
    let a = sim.s.add_worker(info("a", 1), 0.0);
    sim.outgoing();
    sim.s.register_plugin("p", b"one".to_vec());
    sim.ok();
    let plugins = |out: &Outgoing, w: WorkerId| -> Vec<(String, Vec<u8>)> {
        out.0.iter().filter(|(x, _)| *x == w).filter_map(|(_, m)| if let ToWorker::PythonPlugin { name, data } = m { Some((name.clone(), data.clone())) } else { None }).collect()
    };
    let out = sim.outgoing();
    assert_eq!(plugins(&out, a), vec![("p".to_string(), b"one".to_vec())]);
    sim.s.register_plugin("q", b"two".to_vec());
    sim.s.register_plugin("p", b"three".to_vec());
    sim.outgoing();
    let b = sim.s.add_worker(info("b", 1), 1.0);
    let out = sim.outgoing();
    // the newcomer gets each plugin once, the replaced one in its new form
    assert_eq!(plugins(&out, b), vec![("q".to_string(), b"two".to_vec()), ("p".to_string(), b"three".to_vec())]);
    assert!(plugins(&out, a).is_empty());
}

#[test]
fn tasks_queued_on_a_worker_full_of_memory_and_disk_fail_unless_another_can_run_them() {
    let mut sim = Sim::new();
    let a = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    sim.s.update_graph(c, graph(r#"{"p": ["noop"], "q": ["noop"], "r": ["noop"]}"#), &wanted(&["p", "q", "r"])).unwrap();
    sim.ok();
    assert_eq!(sim.computes().len(), 2, "two go to the only worker, one waits in the scheduler's queue");
    let p = sim.id("p");
    sim.s.started(a, &[p], 0.5);
    let full = WorkerMetrics { paused: true, storage_error: Some("cannot spill to /scratch/x: No space left on device (os error 28)".into()), ..Default::default() };
    // Paused only (spilling works): nothing fails, the tasks wait.
    sim.s.heartbeat(a, WorkerMetrics { paused: true, ..Default::default() }, 1.0);
    sim.ok();
    assert_eq!(sim.state("q"), Some(TaskState::Processing));
    // Paused and the disk full, no one else: the queued ones fail with why; the running one runs on.
    sim.s.heartbeat(a, full.clone(), 2.0);
    sim.ok();
    assert_eq!((sim.state("p"), sim.state("q"), sim.state("r")), (Some(TaskState::Processing), Some(TaskState::Erred), Some(TaskState::Erred)));
    let (frees, to_client) = sim.outgoing();
    assert!(frees.iter().any(|(w, m)| *w == a && matches!(m, ToWorker::Free { ids } if ids.contains(&sim.id("q")))), "{frees:?}");
    let err = to_client.iter().find_map(|(_, m)| if let ToClient::KeyErred { key, error } = m { (key == "q").then(|| error.clone()) } else { None }).unwrap();
    assert!(err.contains("worker 'a'") && err.contains("No space left on device") && err.contains("--local-directory"), "{err}");
    // With a second worker that takes work, tasks queued on the full one are left to be moved.
    let mut sim = Sim::new();
    let a = sim.s.add_worker(info("a", 1), 0.0);
    let c = sim.s.add_client("c".into());
    sim.s.update_graph(c, graph(r#"{"p": ["noop"], "q": ["noop"]}"#), &wanted(&["p", "q"])).unwrap();
    sim.computes();
    sim.s.add_worker(info("b", 1), 0.5);
    sim.s.heartbeat(a, full, 1.0);
    sim.ok();
    assert!(![sim.state("p"), sim.state("q")].contains(&Some(TaskState::Erred)));
}

/// Where many workers die, a task that met a few of those deaths is not
/// blamed (it was erred after 4 under an admin's kill -9 every second); a
/// task that was running in most of the deaths still is.
#[test]
fn a_task_is_blamed_for_deaths_only_when_it_was_in_most_of_them() {
    let mut sim = Sim::new();
    let c = sim.s.add_client("c".into());
    let mut text = String::from(r#"{"unlucky": ["noop"], "boom": ["noop"]"#);
    for k in 0..20 {
        text.push_str(&format!(r#", "o{k}": ["noop"]"#));
    }
    text.push('}');
    let mut keys: Vec<String> = (0..20).map(|k| format!("o{k}")).collect();
    keys.extend(["unlucky".to_string(), "boom".to_string()]);
    sim.s.update_graph(c, graph(&text), &keys).unwrap();
    // 12 deaths: "unlucky" runs in every third, a different innocent task in the others.
    let mut innocent = 0;
    for i in 0..12 {
        let w = sim.s.add_worker(info(&format!("w{i}"), 64), 0.0);
        sim.computes();
        let victim = if i % 3 == 0 { "unlucky".to_string() } else { innocent += 1; format!("o{innocent}") };
        let t = sim.id(&victim);
        sim.s.started(w, &[t], 0.0);
        sim.s.remove_worker(w, "killed -9");
        sim.ok();
    }
    assert_ne!(sim.state("unlucky"), Some(TaskState::Erred), "4 of 12 deaths: not blamed");
    assert!(sim.s.take_logs().iter().any(|l| l.contains("'unlucky' was running on 4 workers that died, but 10 workers died meanwhile")));
    // A task that kills every worker it runs on is still blamed, churn or not.
    for i in 0..4 {
        let w = sim.s.add_worker(info(&format!("b{i}"), 64), 0.0);
        sim.computes();
        let t = sim.id("boom");
        sim.s.started(w, &[t], 0.0);
        sim.s.remove_worker(w, "crashed");
        sim.ok();
    }
    assert_eq!(sim.state("boom"), Some(TaskState::Erred));
}

#[test]
fn losing_results_faster_than_making_them_is_said_and_churn_keeps_second_copies() {
    let mut sim = Sim::new();
    let a = sim.s.add_worker(info("a", 1), 0.0);
    let b = sim.s.add_worker(info("b", 1), 0.0);
    let c = sim.s.add_client("c".into());
    sim.s.update_graph(c, graph(r#"{"x": ["noop"], "y": ["inc", "x"]}"#), &wanted(&["y"])).unwrap();
    sim.computes();
    // Two workers lost within 30 s: churn; a finished result still needed gets a copy.
    for i in 0..2 {
        let w = sim.s.add_worker(info(&format!("gone{i}"), 1), 1.0);
        sim.s.handle(Event::RemoveWorker { worker: w, reason: "killed".into() }, 1.0 + i as f64);
    }
    assert!(sim.s.take_logs().iter().any(|l| l.contains("workers are being lost often")));
    let x = sim.id("x");
    let on = if sim.s.state_of("x") == Some(TaskState::Processing) { [a, b].into_iter().find(|&w| sim.s.workers[&w].processing.contains(&x)).unwrap() } else { a };
    sim.s.task_finished(on, x, 8, 0.001, 2.0);
    sim.ok();
    let (to_workers, _) = sim.outgoing();
    let other = if on == a { b } else { a };
    assert!(to_workers.iter().any(|(w, m)| *w == other && matches!(m, ToWorker::Replicate { id, .. } if *id == x)), "{to_workers:?}");
    // The replica arrives; then the original holder dies: down to one copy,
    // the value gets a second again.
    sim.s.replicated(other, x, 8, 2.5);
    sim.ok();
    let third = sim.s.add_worker(info("third", 1), 2.6);
    sim.outgoing();
    sim.s.handle(Event::RemoveWorker { worker: on, reason: "killed".into() }, 3.0);
    sim.ok();
    let (to_workers, _) = sim.outgoing();
    assert!(to_workers.iter().any(|(w, m)| *w == third && matches!(m, ToWorker::Replicate { id, .. } if *id == x)), "{to_workers:?}");
    // Going backwards: more results recomputed than tasks finished in 10 s, with losses.
    sim.s.stats.tasks_recomputed += 50;
    sim.s.check_timeouts(11.0);
    assert!(sim.s.take_logs().iter().any(|l| l.contains("going backwards")));
    // Quiet for 30 s: back to one copy.
    sim.s.check_timeouts(40.0);
    assert!(sim.s.take_logs().iter().any(|l| l.contains("one copy of each result again")));
}

/// A task calling a function only some workers register goes to those, and
/// waits, saying why, while none of them is connected.
#[test]
fn tasks_calling_a_registered_function_go_to_workers_that_have_it() {
    let mut sim = Sim::new();
    let plain = sim.s.add_worker(info("plain", 4), 0.0);
    let c = sim.s.add_client("c".into());
    let defs = Graph::from_json(r#"{"x": ["double", 21], "y": ["inc", 1]}"#, &|f: &str| ["inc", "double"].contains(&f)).unwrap().tasks;
    assert_eq!(defs.iter().find(|d| d.key == "x").unwrap().annotations.functions, vec!["double".to_string()]);
    assert!(defs.iter().find(|d| d.key == "y").unwrap().annotations.functions.is_empty(), "built-ins need nothing");
    sim.s.update_graph(c, defs, &wanted(&["x", "y"])).unwrap();
    sim.ok();
    let (to_workers, msgs) = sim.outgoing();
    let sent: Vec<(WorkerId, String)> = to_workers.into_iter().filter_map(|(w, m)| if let ToWorker::Compute(c) = m { Some((w, c.key)) } else { None }).collect();
    assert_eq!(sent, vec![(plain, "y".to_string())], "only y may run on a worker without 'double'");
    assert_eq!(sim.state("x"), Some(TaskState::NoWorker));
    assert!(msgs.iter().any(|(_, m)| matches!(m, ToClient::KeyStuck { key, reason } if key == "x" && reason.contains("the function(s) double"))), "{msgs:?}");
    let mut with = info("custom", 1);
    with.functions = vec!["double".into()];
    let custom = sim.s.add_worker(with, 1.0);
    sim.ok();
    let sent: Vec<(WorkerId, String)> = sim.computes().into_iter().map(|(w, _, k)| (w, k)).collect();
    assert_eq!(sent, vec![(custom, "x".to_string())]);
}

#[test]
fn a_resumed_graph_takes_over_the_values_workers_still_hold() {
    let mut sim = Sim::new();
    let w1 = sim.s.add_worker(info("a", 1), 0.0);
    let w2 = sim.s.add_worker(info("b", 1), 0.0);
    let c = sim.s.add_client("journal".into());
    // x -> y -> z wanted, and p -> q wanted; y is held by w1 (so x is never
    // run), p by w2; a held key that is not in the graph is ignored.
    let defs = graph(r#"{"x": 1, "y": ["inc", "x"], "z": ["inc", "y"], "p": 5, "q": ["inc", "p"]}"#);
    let held = vec![("y".to_string(), w1, 8), ("p".to_string(), w2, 8), ("nope".to_string(), w2, 8), ("y".to_string(), 99, 8)];
    sim.s.handle(Event::Resume { client: c, tasks: defs, wanted: wanted(&["z", "q"]), held }, 0.0);
    sim.ok();
    assert_eq!(sim.s.stats.values_adopted, 2);
    assert_eq!(sim.state("y"), Some(TaskState::Memory));
    assert!(sim.s.held_by(sim.id("y"), w1) && !sim.s.held_by(sim.id("y"), w2));
    let mut ran: Vec<(WorkerId, String)> = sim.computes().into_iter().map(|(w, _, k)| (w, k)).collect();
    ran.sort();
    // z runs where y is, q where p is; x never runs.
    assert_eq!(ran, vec![(w1, "z".to_string()), (w2, "q".to_string())]);
    sim.finish(w1, "z");
    sim.finish(w2, "q");
    assert_eq!(sim.s.stats.tasks_finished, 2);
    assert_eq!((sim.state("z"), sim.state("q")), (Some(TaskState::Memory), Some(TaskState::Memory)));
    assert_eq!(sim.s.count(TaskState::Processing) + sim.s.count(TaskState::Waiting) + sim.s.count(TaskState::Queued), 0);
}

/// A random walk stopped at a random point, as a scheduler killed mid-graph:
/// a fresh state resumes the same graph with the values every worker still
/// holds (`Resume`), keeps its invariants, never computes a held key again,
/// and finishes.
#[test]
fn a_graph_resumed_at_a_random_point_computes_no_held_value_again_and_finishes() {
    let mut adopted = 0;
    for seed in 1..=200u64 {
        let mut next = xorshift(seed);
        let (text, outputs) = random_dag(&mut next);
        let n = graph(&text).len();
        // Before: two workers, a random number of tasks finished.
        let mut before = Sim::new();
        let c = before.s.add_client("c".into());
        let old = [before.s.add_worker(info("a", 2), 0.0), before.s.add_worker(info("b", 2), 0.0)];
        before.s.update_graph(c, graph(&text), &outputs).unwrap();
        let mut running: Vec<(WorkerId, TaskId)> = Vec::new();
        for _ in 0..next(2 * n as u64) {
            running.extend(before.computes().into_iter().map(|(w, t, _)| (w, t)));
            if running.is_empty() {
                break;
            }
            let (w, t) = running.remove(next(running.len() as u64) as usize);
            before.s.task_finished(w, t, 8, 0.001, 0.0);
            before.ok();
        }
        // What each worker holds when the scheduler goes.
        let mut held_keys: Vec<(String, usize)> = Vec::new();
        for t in 0..before.s.tasks.len() as TaskId {
            if before.s.tasks[t as usize].state != TaskState::Memory {
                continue;
            }
            for (i, &w) in old.iter().enumerate() {
                if before.s.held_by(t, w) {
                    held_keys.push((before.s.key(t).to_string(), i));
                }
            }
        }
        // After: the same workers come back, the graph is resumed.
        let mut after = Sim::new();
        let new = [after.s.add_worker(info("a", 2), 0.0), after.s.add_worker(info("b", 2), 0.0)];
        let jc = after.s.add_client("journal".into());
        let held: Vec<(String, WorkerId, u64)> = held_keys.iter().map(|(k, i)| (k.clone(), new[*i], 8)).collect();
        let Outcome::Graph(r) = after.s.handle(Event::Resume { client: jc, tasks: graph(&text), wanted: outputs.clone(), held }, 0.0) else { panic!("seed {seed}: no answer") };
        r.unwrap();
        after.ok();
        let held_set: std::collections::HashSet<&str> = held_keys.iter().map(|(k, _)| k.as_str()).collect();
        let mut running: Vec<(WorkerId, TaskId)> = Vec::new();
        let mut steps = 0;
        while !outputs.iter().all(|k| after.state(k) == Some(TaskState::Memory)) {
            for (w, t, k) in after.computes() {
                assert!(!held_set.contains(k.as_str()), "seed {seed}: '{k}' was held by a worker that came back, yet computed again");
                running.push((w, t));
            }
            steps += 1;
            assert!(steps < 5000 && !running.is_empty(), "seed {seed}: no progress after the resume");
            let (w, t) = running.remove(next(running.len() as u64) as usize);
            after.s.task_finished(w, t, 8, 0.001, 0.0);
            after.ok();
        }
        adopted += after.s.stats.values_adopted;
        after.s.remove_client(jc);
        after.ok();
    }
    assert!(adopted > 200, "the walks took over values ({adopted})");
}
