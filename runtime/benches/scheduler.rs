//! Scheduler-only throughput: the pure state machine driven by simulated
//! workers that finish every task the moment it is sent to them. No sockets,
//! threads or processes: what is measured is the scheduler's own cost per
//! task (accepting the graph, deciding, building the messages, bookkeeping
//! the results and forgetting them), with 1 to 10,000 workers.
//!
//!   cargo bench -p taskfarm --bench scheduler            # every scenario, 5 repetitions
//!   cargo bench -p taskfarm --bench scheduler -- --quick # tiny sizes (CI smoke)
//!   cargo bench -p taskfarm --bench scheduler -- tree    # scenarios whose name contains "tree"
//!
//! Prints, per scenario, the median tasks/s over the repetitions and the
//! scheduler's memory per task with the graph submitted and waiting (the
//! size of its live allocations, see `Counting`; RSS is measured end to end
//! by bench/memory.sh). docs/benchmarks.md and
//! docs/scaling.md record the results.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;
use taskfarm::alloc::TaskfarmAlloc;
use taskfarm::graph::{Graph, TaskDef};
use taskfarm::protocol::{ToClient, ToWorker};
use taskfarm::scheduler::state::WorkerInfo;
use taskfarm::scheduler::{SchedulerConfig, SchedulerState};

/// The taskfarm binary's allocator, counting live bytes (to report memory
/// per task without the noise of RSS).
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { TaskfarmAlloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { TaskfarmAlloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { TaskfarmAlloc.realloc(p, l, new) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

struct Scenario {
    name: String,
    workers: u32,
    threads: u32,
    graph: String,
    tasks: usize,
}

fn independent(n: usize) -> String {
    let mut s = String::from("{");
    for i in 0..n {
        s.push_str(&format!("{}\"t{i}\": [\"noop\"]", if i > 0 { ", " } else { "" }));
    }
    s.push('}');
    s
}

/// Binary sum tree over `leaves` literal leaves: leaves - 1 `add` tasks plus
/// the leaves themselves (as tasks), like the end-to-end sum-tree benchmark.
fn sum_tree(leaves: usize) -> String {
    let mut s = String::from("{");
    let mut level: Vec<String> = (0..leaves).map(|i| format!("l{i}")).collect();
    for (i, k) in level.iter().enumerate() {
        s.push_str(&format!("{}\"{k}\": {i}", if i > 0 { ", " } else { "" }));
    }
    let mut depth = 0;
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        for (j, pair) in level.chunks(2).enumerate() {
            let k = format!("s{depth}_{j}");
            match pair {
                [a, b] => s.push_str(&format!(", \"{k}\": [\"add\", \"{a}\", \"{b}\"]")),
                [a] => s.push_str(&format!(", \"{k}\": [\"add\", \"{a}\", 0]")),
                _ => unreachable!(),
            }
            next.push(k);
        }
        level = next;
        depth += 1;
    }
    s.push('}');
    s
}

fn defs(text: &str) -> Vec<TaskDef> {
    let reg = taskfarm::functions::Registry::with_builtins();
    Graph::from_json(text, &|f| reg.contains(f)).expect("valid benchmark graph").tasks
}

/// Bytes the scheduler holds per task with `defs` submitted and waiting (no
/// worker, so none can run): allocations live after the submission minus
/// before it.
fn waiting_bytes(defs: &[TaskDef], wanted: &[String]) -> f64 {
    let mut s = SchedulerState::new(SchedulerConfig::default());
    let c = s.add_client("bench".into());
    let before = LIVE.load(Ordering::Relaxed);
    s.update_graph(c, defs.to_vec(), wanted).expect("graph accepted");
    let _ = s.take_outgoing();
    let held = LIVE.load(Ordering::Relaxed) - before;
    held as f64 / defs.len() as f64
}

/// Run one scenario once; returns seconds from submission to the last
/// result, forgetting the graph included.
fn run(sc: &Scenario, defs: Vec<TaskDef>, wanted: &[String]) -> f64 {
    let mut s = SchedulerState::new(SchedulerConfig::default());
    for i in 0..sc.workers {
        s.add_worker(WorkerInfo { nthreads: sc.threads, ..worker_info(i) }, 0.0);
    }
    let c = s.add_client("bench".into());
    let start = Instant::now();
    s.update_graph(c, defs, wanted).expect("graph accepted");
    let mut done = 0;
    let mut sent = Vec::new();
    while done < wanted.len() {
        let (to_w, to_c) = s.take_outgoing();
        done += to_c.iter().filter(|(_, m)| matches!(m, ToClient::KeyInMemory { .. })).count();
        for (w, m) in to_w {
            if let ToWorker::Compute(ct) = m {
                sent.push((w, ct.id));
            }
        }
        if sent.is_empty() && done < wanted.len() {
            panic!("{}: stalled with {done} of {} results", sc.name, wanted.len());
        }
        let now = start.elapsed().as_secs_f64();
        for (w, id) in sent.drain(..) {
            s.task_finished(w, id, 8, 1e-6, now);
        }
    }
    s.remove_client(c);
    let _ = s.take_outgoing();
    start.elapsed().as_secs_f64()
}

/// Bytes the scheduler holds per connected worker (its record, name,
/// address, host and empty task sets), from 10,000 simulated workers.
fn worker_bytes() -> f64 {
    let mut s = SchedulerState::new(SchedulerConfig::default());
    let before = LIVE.load(Ordering::Relaxed);
    for info in (0..10_000).map(worker_info) {
        s.add_worker(info, 0.0);
    }
    let _ = s.take_outgoing();
    (LIVE.load(Ordering::Relaxed) - before) as f64 / 10_000.0
}

fn worker_info(i: u32) -> WorkerInfo {
    WorkerInfo {
        name: format!("w{i}"),
        address: format!("tcp://10.0.{}.{}:4000", i / 250, i % 250),
        nthreads: 128,
        resources: vec![],
        host: format!("node{i}"),
        functions: vec![],
        pid: 1,
        job: String::new(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    taskfarm::alloc::small_blocks_from_mimalloc(); // as the scheduler process does
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let quick = args.iter().any(|a| a == "--quick");
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let (n, leaves, reps) = if quick { (2_000, 1_024, 1) } else { (std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000), 262_144, 5) };
    let mut scenarios = vec![];
    for (tasks, workers, threads) in [(n, 1, 2), (n, 100, 32), (n / 100, 1_000, 128), (n / 10, 1_000, 128), (n, 1_000, 128), (n, 10_000, 128)] {
        let w = if quick { workers.min(100) } else { workers };
        scenarios.push(Scenario { name: format!("independent {tasks} tasks, {w} workers x {threads} threads"), workers: w, threads, graph: independent(tasks), tasks });
    }
    let tree_tasks = 2 * leaves - 1;
    for (workers, threads) in [(1, 2), (1_000, 128)] {
        let w = if quick { workers.min(100) } else { workers };
        scenarios.push(Scenario { name: format!("sum tree {leaves} leaves ({tree_tasks} tasks), {w} workers x {threads} threads"), workers: w, threads, graph: sum_tree(leaves), tasks: tree_tasks });
    }
    println!("{:<72} {:>14} {:>12}", "scenario (scheduler state machine only)", "tasks/s", "bytes/task");
    for sc in scenarios {
        if !filter.is_empty() && !filter.iter().any(|f| sc.name.contains(f.as_str())) {
            continue;
        }
        let parsed = defs(&sc.graph);
        let wanted: Vec<String> = if sc.name.starts_with("sum tree") {
            vec![parsed.last().expect("non-empty").key.clone()]
        } else {
            parsed.iter().map(|d| d.key.clone()).collect()
        };
        let held = waiting_bytes(&parsed, &wanted);
        let secs = (0..reps).map(|_| run(&sc, parsed.clone(), &wanted)).collect();
        let t = median(secs);
        println!("{:<72} {:>14.0} {:>12.0}", sc.name, sc.tasks as f64 / t, held);
    }
    println!("scheduler memory per connected worker (10,000 workers): {:.0} bytes", worker_bytes());
}
