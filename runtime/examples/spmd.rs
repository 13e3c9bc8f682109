//! A Rust program run under mpirun, like `dask_mpi.initialize()`: rank 0
//! becomes the scheduler, ranks 2.. become workers that know this program's
//! own functions, and rank 1 continues through `main` as the client.
//!
//!     cargo build --release -p taskfarm --example spmd
//!     mpirun -np 4 target/release/examples/spmd $SCRATCH/sched.json

use serde_json::json;
use taskfarm::mpi::{initialize, MpiOptions};
use taskfarm::{Data, Graph, Registry};

fn main() {
    let scheduler_file = std::env::args().nth(1).unwrap_or_else(|| "taskfarm-scheduler.json".into());
    let mut registry = Registry::with_builtins();
    registry.register("collatz_steps", |args, _| {
        let Some(Data::Json(n)) = args.first() else { return Err("collatz_steps(n): one argument".into()) };
        let mut n = n.as_u64().ok_or("collatz_steps: n must be a positive integer")?;
        let mut steps = 0u64;
        while n > 1 {
            n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
            steps += 1;
        }
        Ok(Data::Json(json!(steps)))
    });
    let known = registry.clone();

    // Only rank 1 returns from here; the other ranks serve and then exit.
    let mut client = initialize(MpiOptions::new(scheduler_file.into()), registry).unwrap_or_else(|e| {
        eprintln!("spmd: {e}");
        std::process::exit(e.exit_code().into())
    });

    let mut graph = serde_json::Map::new();
    for n in 1..=30u64 {
        graph.insert(format!("steps-{n}"), json!(["collatz_steps", n]));
    }
    let mut all = vec![json!("list")];
    all.extend((1..=30).map(|n| json!(format!("steps-{n}"))));
    graph.insert("total".into(), json!(["sum", all]));
    let graph = Graph::from_value(serde_json::Value::Object(graph), &|f| known.contains(f)).expect("valid graph");
    let results = client.compute(graph, &["total".to_string(), "steps-27".to_string()]).expect("computed");
    for (k, v) in &results.values {
        println!("{k} = {}", v.to_json());
    }
    println!("workers: {}", client.status().map(|s| s.workers.len()).unwrap_or(0));
    // Dropping the client shuts the whole job down.
}
