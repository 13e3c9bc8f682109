//! Many simulated workers on one scheduler, over real sockets (issue 16's
//! harness; bench/many_workers.sh drives it).
//!
//! Each simulated worker is a real protocol peer: it connects to the
//! scheduler of a scheduler file, authenticates with the secret (and
//! encrypts, as real workers do), registers, sends heartbeats, and finishes
//! every task it is sent the moment it arrives (a no-op: `null`, given back
//! inline when a client waits for it). It serves no data, so graphs with
//! dependencies between tasks on different workers cannot run on it.
//!
//!     cargo run --release -p taskfarm --example many_workers -- \
//!         --scheduler-file s.json --workers 1000 [--threads 2]
//!
//! Prints `registered N workers in S s` once the scheduler has welcomed
//! them all, then runs until its standard input closes (or it gets
//! SIGTERM/SIGINT), and prints the tasks it finished.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taskfarm::protocol::{FrameReader, FrameWriter, Role, ToScheduler, ToWorker, WorkerMetrics};
use taskfarm::seal::LinkWriter;
use taskfarm::Data;

struct Args {
    scheduler_file: PathBuf,
    workers: u32,
    threads: u32,
}

fn args() -> Result<Args, String> {
    let mut a = Args { scheduler_file: PathBuf::new(), workers: 100, threads: 1 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--scheduler-file" => a.scheduler_file = PathBuf::from(value()?),
            "--workers" => a.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?,
            "--threads" => a.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "-h" | "--help" => {
                return Err("usage: many_workers --scheduler-file FILE [--workers N (100)] [--threads T (1)]".into());
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if a.scheduler_file.as_os_str().is_empty() {
        return Err("--scheduler-file FILE is required (see --help)".into());
    }
    Ok(a)
}

/// Each simulated worker's connection to the scheduler, for heartbeats.
type Writers = Mutex<Vec<Arc<Mutex<FrameWriter<LinkWriter>>>>>;

/// What every simulated worker adds to.
#[derive(Default)]
struct Totals {
    welcomed: AtomicU64,
    finished: AtomicU64,
    failed: AtomicU64,
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("many_workers: {e}");
            std::process::exit(2);
        }
    };
    let file = match taskfarm::schedfile::SchedulerFile::read(&a.scheduler_file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("many_workers: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = file.adopt_encryption() {
        eprintln!("many_workers: {e}");
        std::process::exit(2);
    }
    let secret = file.secret_bytes().unwrap_or_else(|e| {
        eprintln!("many_workers: {e}");
        std::process::exit(2);
    });
    let limit = taskfarm::gate::raise_fd_limit();
    if limit < u64::from(a.workers) + 64 {
        eprintln!("many_workers: {} workers need as many open files, and the limit is {limit}: raise `ulimit -n`", a.workers);
        std::process::exit(2);
    }
    let totals = Arc::new(Totals::default());
    let writers: Arc<Writers> = Arc::default();
    let start = Instant::now();
    for i in 0..a.workers {
        let (address, secret, totals, writers) = (file.address.clone(), secret.clone(), totals.clone(), writers.clone());
        let threads = a.threads;
        // small stacks: thousands of these threads
        let spawned = std::thread::Builder::new().stack_size(256 << 10).spawn(move || {
            if let Err(e) = simulate(i, &address, &secret, threads, &totals, &writers) {
                totals.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("many_workers: worker {i}: {e}");
            }
        });
        if let Err(e) = spawned {
            eprintln!("many_workers: cannot start simulated worker {i}: {e}");
            std::process::exit(1);
        }
    }
    // Heartbeats, as real workers send them, from one thread for all.
    {
        let writers = writers.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(2));
            let all = writers.lock().expect("writers").clone();
            for w in all {
                let _ = w.lock().expect("writer").send(&[ToScheduler::Heartbeat(WorkerMetrics::default())], &[]);
            }
        });
    }
    loop {
        let (welcomed, failed) = (totals.welcomed.load(Ordering::Relaxed), totals.failed.load(Ordering::Relaxed));
        if welcomed + failed >= u64::from(a.workers) {
            println!("registered {welcomed} workers in {:.3} s ({failed} failed)", start.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Until stdin closes (the bench script holds it open) or a signal.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
            stop.store(true, Ordering::Relaxed);
        });
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("finished {} tasks", totals.finished.load(Ordering::Relaxed));
}

fn simulate(
    i: u32,
    address: &str,
    secret: &[u8],
    threads: u32,
    totals: &Totals,
    writers: &Writers,
) -> Result<(), String> {
    // as real workers: a connection the scheduler's gate closed (too many
    // handshakes at once from one address) is tried again
    let link = taskfarm::schedfile::connect_with_retry(address, secret, Role::Worker, Duration::from_secs(120)).map_err(|e| e.to_string())?;
    let writer = Arc::new(Mutex::new(FrameWriter::new(link.writer().map_err(|e| e.to_string())?)));
    let mut reader = FrameReader::new(link.reader().map_err(|e| e.to_string())?);
    writer
        .lock()
        .expect("writer")
        .send(
            &[ToScheduler::RegisterWorker {
                name: format!("sim-{}-{i}", std::process::id()),
                // serves no data: never asked, as no task has dependencies
                data_address: "tcp://127.0.0.1:9".into(),
                nthreads: threads,
                resources: Vec::new(),
                host: "simulated".into(),
                pid: std::process::id(),
                local_directory: String::new(),
                job: String::new(),
                functions: Vec::new(),
                held: Vec::new(),
                run: 0,
            }],
            &[],
        )
        .map_err(|e| e.to_string())?;
    writers.lock().expect("writers").push(writer.clone());
    let null = Data::null();
    let (tag, body) = null.to_wire();
    let mut out = Vec::new();
    let mut welcomed = false;
    loop {
        let Some((msgs, _payloads)) = reader.read_batch::<ToWorker>().map_err(|e| e.to_string())? else {
            // (counted as failed: the harness waits for every worker's fate)
            return if welcomed { Ok(()) } else { Err("the scheduler closed the connection before welcoming it".into()) };
        };
        for m in msgs {
            match m {
                ToWorker::Welcome { .. } => {
                    welcomed = true;
                    totals.welcomed.fetch_add(1, Ordering::Relaxed);
                }
                ToWorker::Compute(t) => {
                    out.push(ToScheduler::TaskFinished {
                        id: t.id,
                        nbytes: null.nbytes(),
                        duration_us: 0,
                        start_us: 0,
                        thread: 0,
                        value: t.inline_result.then(|| (tag, body.to_vec())),
                    });
                }
                ToWorker::Steal { ids } => out.push(ToScheduler::Stolen { ids: Vec::new(), kept: ids }),
                ToWorker::Shutdown { .. } => return Ok(()),
                _ => {}
            }
        }
        if !out.is_empty() {
            totals.finished.fetch_add(out.iter().filter(|m| matches!(m, ToScheduler::TaskFinished { .. })).count() as u64, Ordering::Relaxed);
            writer.lock().expect("writer").send(&out, &[]).map_err(|e| e.to_string())?;
            out.clear();
        }
    }
}
