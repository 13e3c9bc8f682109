//! Use taskfarm from Rust: register your own function, run a graph on the
//! embedded cluster, read the results.
//!
//!     cargo run -p taskfarm --example local_cluster

use serde_json::json;
use taskfarm::local::LocalCluster;
use taskfarm::{Data, Graph, Registry};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut registry = Registry::with_builtins();
    registry.register("square", |args, _ctx| match args {
        [Data::Json(x)] => x.as_f64().map(|v| Data::Json(json!(v * v))).ok_or_else(|| format!("square: expected a number, got {x}")),
        _ => Err(format!("square: expected 1 argument, got {}", args.len())),
    });

    let text = r#"{"a": 3, "b": ["square", "a"], "c": ["add", "b", ["square", 4]]}"#;
    let graph = Graph::from_json(text, &|f| registry.contains(f))?;

    let cluster = LocalCluster::start(2, 1, std::env::temp_dir(), registry)?;
    let mut client = cluster.client()?;
    let keys = graph.output_keys();
    let results = client.compute(graph, &keys)?;
    for (key, value) in &results.values {
        println!("{key} = {}", value.to_json());
    }
    for (key, error) in &results.errors {
        eprintln!("{key} failed: {error}");
    }
    assert_eq!(results.get("c"), Some(&Data::Json(json!(25.0))));
    drop(client);
    cluster.shutdown();
    Ok(())
}
