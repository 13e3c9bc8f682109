//! Connections: the accept loop, each connection's handshake and
//! registration, its reader (batches into the core's channel) and writer
//! (batches out, coalesced).

use super::*;

pub(super) fn accept_loop(listener: TcpListener, secret: Vec<u8>, tx: Sender<Event>, stopping: Arc<AtomicBool>) {
    let mut next_conn: ConnId = 1;
    let gate = crate::gate::Gate::new();
    crate::gate::accept_loop(&listener, "scheduler", &|| stopping.load(Ordering::SeqCst), |stream| {
        let conn = next_conn;
        next_conn += 1;
        let tx = tx.clone();
        let secret = secret.clone();
        let pending = gate.admit(&stream);
        let _ = std::thread::Builder::new().name(format!("tf-conn-{conn}")).spawn(move || serve_connection(conn, stream, &secret, tx, pending));
    });
}

/// Handshake, registration, then read batches until the peer goes away.
fn serve_connection(conn: ConnId, mut stream: TcpStream, secret: &[u8], tx: Sender<Event>, pending: crate::gate::Pending) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let (role, keys) = match server_handshake_verified(&mut stream, secret, move || drop(pending)) {
        Ok(r) => r,
        Err(e) => {
            log_at!(1, "scheduler", "rejected connection from {peer}: {e}");
            return;
        }
    };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
    // Three descriptors per connection: the reader's, the writer's and the
    // core's (to shut it down); the handshake's own handle is closed here.
    let link = crate::seal::Link::new(stream, keys);
    let (Ok(read_half), Ok(write_half), Ok(stream)) = (link.reader(), link.writer(), link.stream()) else { return };
    drop(link);
    let mut reader = FrameReader::new(read_half);
    let first = match reader.read_batch::<ToScheduler>() {
        Ok(Some((msgs, _))) => msgs,
        Ok(None) => return,
        Err(e) => {
            log_at!(1, "scheduler", "closing connection from {peer}: {e}");
            return;
        }
    };
    let mut rest = first.into_iter();
    match (role, rest.next()) {
        (Role::Worker, Some(ToScheduler::RegisterWorker { name, data_address, nthreads, resources, host, pid, job, functions, held, run, .. })) => {
            let (wtx, wrx) = unbounded();
            spawn_writer(write_half, wrx, format!("worker '{name}'"));
            let info = WorkerInfo { name, address: data_address, nthreads: nthreads.max(1), resources, host, pid, job, functions };
            let _ = tx.send(Event::Worker { conn, info, tx: wtx, stream, held, run });
        }
        (Role::Client, Some(ToScheduler::RegisterClient { name })) => {
            let (ctx, crx) = unbounded();
            spawn_writer(write_half, crx, format!("client '{name}'"));
            let _ = tx.send(Event::Client { conn, name, tx: ctx, stream });
        }
        (role, first) => {
            log_at!(1, "scheduler", "closing connection from {peer}: a {role:?} must register first, got {first:?}");
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
    let leftover: Vec<ToScheduler> = rest.collect();
    if !leftover.is_empty() {
        let _ = tx.send(Event::Messages { conn, msgs: leftover });
    }
    let reason = loop {
        match reader.read_batch::<ToScheduler>() {
            Ok(Some((msgs, _))) => {
                if tx.send(Event::Messages { conn, msgs }).is_err() {
                    return;
                }
            }
            Ok(None) => break "connection closed".to_string(),
            Err(e) => break format!("connection error: {e}"),
        }
    };
    let _ = tx.send(Event::Closed { conn, reason });
}

/// Write batches as they come, coalescing whatever is already queued.
fn spawn_writer<T: Serialize + Send + 'static>(writer: crate::seal::LinkWriter, rx: Receiver<Vec<T>>, who: String) {
    let _ = std::thread::Builder::new().name("tf-writer".into()).spawn(move || {
        let mut w = FrameWriter::new(writer);
        while let Ok(mut batch) = rx.recv() {
            while let Ok(more) = rx.try_recv() {
                batch.extend(more);
                if batch.len() > 100_000 {
                    break;
                }
            }
            if let Err(e) = w.send(&batch, &[]) {
                // A peer that stopped reading (or is gone): close the
                // connection so its reader reports it and it is removed,
                // instead of queueing messages for it forever.
                log_at!(1, "scheduler", "cannot write to {who}: {e}; closing its connection");
                let _ = w.get_ref().shutdown();
                break;
            }
        }
    });
}
