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
//!         --scheduler-file s.json --workers 1000 [--threads 2] [--processes P]
//!
//! Each simulated worker is a thread with two descriptors, so beyond a few
//! thousand they are spread over several processes (`--processes`; by
//! default one per 3,000 workers) to stay under the limit of open files;
//! the first process starts the others and sums what they report.
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
    processes: u32,
}

fn args() -> Result<Args, String> {
    let mut a = Args { scheduler_file: PathBuf::new(), workers: 100, threads: 1, processes: 0 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--scheduler-file" => a.scheduler_file = PathBuf::from(value()?),
            "--workers" => a.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?,
            "--threads" => a.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--processes" => a.processes = value()?.parse().map_err(|e| format!("--processes: {e}"))?,
            "-h" | "--help" => {
                return Err("usage: many_workers --scheduler-file FILE [--workers N (100)] [--threads T (1)] [--processes P (one per 3,000 workers)]".into());
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if a.scheduler_file.as_os_str().is_empty() {
        return Err("--scheduler-file FILE is required (see --help)".into());
    }
    if a.processes == 0 {
        a.processes = a.workers.div_ceil(3000).max(1);
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
    if a.processes > 1 {
        return spread(&a);
    }
    let limit = taskfarm::gate::raise_fd_limit();
    if limit < 2 * u64::from(a.workers) + 64 {
        eprintln!("many_workers: {} workers need twice as many open files, and the limit is {limit}: raise `ulimit -n` or give more --processes", a.workers);
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

/// `--processes P`: start P copies of this program with a share of the
/// workers each, and report their sums as one.
fn spread(a: &Args) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().expect("this program's path");
    let mut children = Vec::new();
    for p in 0..a.processes {
        let share = a.workers / a.processes + u32::from(p < a.workers % a.processes);
        let child = Command::new(&exe)
            .arg("--scheduler-file")
            .arg(&a.scheduler_file)
            .args(["--workers", &share.to_string(), "--threads", &a.threads.to_string(), "--processes", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                eprintln!("many_workers: cannot start process {p}: {e}");
                std::process::exit(1);
            });
        children.push(child);
    }
    let mut outs: Vec<_> = children.iter_mut().map(|c| std::io::BufReader::new(c.stdout.take().expect("piped"))).collect();
    let line = |out: &mut std::io::BufReader<std::process::ChildStdout>| {
        let mut l = String::new();
        let _ = out.read_line(&mut l);
        l
    };
    let (mut welcomed, mut failed, mut slowest) = (0u64, 0u64, 0f64);
    for (p, out) in outs.iter_mut().enumerate() {
        // "registered N workers in S s (F failed)"
        let l = line(out);
        let w: Vec<&str> = l.split_whitespace().collect();
        match (w.get(1).and_then(|x| x.parse::<u64>().ok()), w.get(4).and_then(|x| x.parse::<f64>().ok()), w.get(6).and_then(|x| x.trim_start_matches('(').parse::<u64>().ok())) {
            (Some(n), Some(secs), Some(f)) => {
                welcomed += n;
                slowest = slowest.max(secs);
                failed += f;
            }
            _ => {
                eprintln!("many_workers: process {p} said {l:?}, not how many workers it registered");
                std::process::exit(1);
            }
        }
    }
    println!("registered {welcomed} workers in {slowest:.3} s ({failed} failed)");
    let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
    let mut finished = 0u64;
    for (c, out) in children.iter_mut().zip(outs.iter_mut()) {
        drop(c.stdin.take());
        finished += line(out).split_whitespace().nth(1).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        let _ = c.wait();
    }
    println!("finished {finished} tasks");
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
    drop(link); // two descriptors per worker, not three
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
