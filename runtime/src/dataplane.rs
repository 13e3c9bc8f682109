//! The peer data plane: a worker's data server, which hands its values to
//! other workers and to clients, and the fetchers that ask peers for values.
//! Used by the worker (both halves) and the client (fetching results).

use crate::log_at;
use crate::protocol::{
    server_handshake_verified, FrameReader, FrameWriter, PeerReply, PeerRequest, Role, TaskId,
};
use crate::store::{Store, Value};
use crossbeam_channel::unbounded;
use std::collections::{BTreeSet, HashSet};
use std::io;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Transfer counters of one worker, for its heartbeat.
#[derive(Default)]
pub struct Counters {
    pub fetched: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub served: AtomicU64,
    pub served_bytes: AtomicU64,
    pub fetch_us: AtomicU64,
    /// Addresses that connected to the data server (at most 64 kept).
    pub connections_from: Mutex<BTreeSet<IpAddr>>,
}

impl Counters {
    /// Fetched and served values so far (a change means traffic to report).
    pub fn transfers(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed) + self.served.load(Ordering::Relaxed)
    }
}

/// What a fetcher reports for the values it was asked for.
pub enum FetchOutcome {
    Got {
        id: TaskId,
        from: String,
        value: Arc<Value>,
        /// The request that brought it (shared by the values fetched together).
        started_us: u64,
        took: std::time::Duration,
    },
    Failed {
        ids: Vec<TaskId>,
        from: String,
        error: String,
    },
}

/// One thread per peer: keeps a connection, batches the requests queued on
/// the returned channel, and answers every requested id exactly once
/// through `report` (false: nobody listens any more, the thread ends). The
/// thread also ends when the returned sender is dropped.
pub fn spawn_fetcher(
    addr: String,
    secret: Vec<u8>,
    counters: Arc<Counters>,
    report: impl Fn(FetchOutcome) -> bool + Send + 'static,
) -> crossbeam_channel::Sender<Vec<TaskId>> {
    let (req_tx, req_rx) = unbounded::<Vec<TaskId>>();
    let _ = std::thread::Builder::new()
        .name("tf-fetch".into())
        .spawn(move || {
            let mut conn: Option<(FrameReader<crate::seal::LinkReader>, FrameWriter<crate::seal::LinkWriter>)> = None;
            while let Ok(mut ids) = req_rx.recv() {
                while let Ok(more) = req_rx.try_recv() {
                    ids.extend(more);
                }
                let started = Instant::now();
                let started_us = crate::util::unix_micros();
                let result = (|| -> io::Result<Vec<(TaskId, Arc<Value>)>> {
                    if conn.is_none() {
                        let s =
                            crate::schedfile::connect(&addr, &secret, Role::Peer).map_err(|e| {
                                match e {
                                    crate::schedfile::ConnectError::Unreachable(e) => e,
                                    crate::schedfile::ConnectError::Fatal(m) => io::Error::other(m),
                                }
                            })?;
                        conn = Some((FrameReader::new(s.reader()?), FrameWriter::new(s.writer()?)));
                    }
                    let (r, w) = conn.as_mut().expect("just set");
                    fetch_values(r, w, &ids)
                })();
                counters
                    .fetch_us
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                let took = started.elapsed();
                match result {
                    Ok(values) => {
                        let mut got = HashSet::new();
                        for (id, v) in values {
                            counters.fetched.fetch_add(1, Ordering::Relaxed);
                            counters
                                .fetched_bytes
                                .fetch_add(v.wire().1.len() as u64 + 1, Ordering::Relaxed);
                            got.insert(id);
                            if !report(FetchOutcome::Got {
                                id,
                                from: addr.clone(),
                                value: v,
                                started_us,
                                took,
                            }) {
                                return;
                            }
                        }
                        let missing: Vec<TaskId> =
                            ids.into_iter().filter(|i| !got.contains(i)).collect();
                        if !missing.is_empty()
                            && !report(FetchOutcome::Failed {
                                ids: missing,
                                from: addr.clone(),
                                error: "the peer does not hold these values".into(),
                            })
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        // Report and keep serving the queue: every request sent
                        // here gets an answer (a dead peer fails fast on
                        // reconnect), so none is lost.
                        conn = None;
                        if !report(FetchOutcome::Failed {
                            ids,
                            from: addr.clone(),
                            error: e.to_string(),
                        }) {
                            return;
                        }
                    }
                }
            }
        });
    req_tx
}

/// Ask a data server for values; returns those it had.
pub fn fetch_values(
    r: &mut FrameReader<crate::seal::LinkReader>,
    w: &mut FrameWriter<crate::seal::LinkWriter>,
    ids: &[TaskId],
) -> io::Result<Vec<(TaskId, Arc<Value>)>> {
    w.send(&[PeerRequest::GetData { ids: ids.to_vec() }], &[])?;
    let (msgs, payloads) = r.read_batch::<PeerReply>()?.ok_or_else(|| {
        io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed the connection")
    })?;
    let Some(PeerReply::Data { found }) = msgs.into_iter().next() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "peer sent no data reply",
        ));
    };
    let mut payloads = payloads.into_iter();
    let mut out = Vec::new();
    for (id, ok) in found {
        if ok {
            let (tag, body) = payloads.next().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "peer sent fewer payloads than promised",
                )
            })?;
            out.push((id, Arc::new(Value::from_wire(tag, body)?)));
        }
    }
    Ok(out)
}

/// Serve `store`'s values to authenticated peers, a thread per connection.
pub fn data_server(
    listener: TcpListener,
    secret: Vec<u8>,
    store: Arc<Store>,
    counters: Arc<Counters>,
) {
    let gate = crate::gate::Gate::new();
    crate::gate::accept_loop(&listener, "data server", &|| false, |stream| {
        let (store, counters, secret) = (store.clone(), counters.clone(), secret.clone());
        let pending = gate.admit(&stream);
        let _ = std::thread::Builder::new()
            .name("tf-data-conn".into())
            .spawn(move || serve_peer(stream, &secret, &store, &counters, pending));
    });
}

fn serve_peer(mut stream: TcpStream, secret: &[u8], store: &Store, counters: &Counters, pending: crate::gate::Pending) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let handshake = server_handshake_verified(&mut stream, secret, move || drop(pending));
    if handshake.is_ok() {
        // Who fetched from this worker (authenticated peers only).
        if let Ok(a) = stream.peer_addr() {
            let mut seen = counters.connections_from.lock().expect("lock");
            if seen.len() < 64 {
                seen.insert(a.ip());
            }
        }
    }
    let keys = match handshake {
        Ok((Role::Peer, keys)) => keys,
        Ok((role, _)) => {
            log_at!(
                1,
                "worker",
                "data server: {peer} connected as {role:?}, not as a peer; closed"
            );
            return;
        }
        Err(e) => {
            log_at!(
                1,
                "worker",
                "data server: rejected connection from {peer}: {e}"
            );
            return;
        }
    };
    let link = crate::seal::Link::new(stream, keys);
    let (Ok(read_half), Ok(write_half)) = (link.reader(), link.writer()) else {
        return;
    };
    let mut r = FrameReader::new(read_half);
    let mut w = FrameWriter::new(write_half);
    while let Ok(Some((reqs, _))) = r.read_batch::<PeerRequest>() {
        for PeerRequest::GetData { ids } in reqs {
            let values: Vec<(TaskId, Option<Arc<Value>>)> = ids
                .iter()
                .map(|id| (*id, store.get(*id).ok().flatten()))
                .collect();
            let found: Vec<(TaskId, bool)> =
                values.iter().map(|(id, v)| (*id, v.is_some())).collect();
            let payloads: Vec<(u8, &[u8])> = values
                .iter()
                .filter_map(|(_, v)| v.as_ref().map(|v| v.wire()))
                .collect();
            counters
                .served
                .fetch_add(payloads.len() as u64, Ordering::Relaxed);
            counters.served_bytes.fetch_add(
                payloads.iter().map(|(_, p)| p.len() as u64 + 1).sum(),
                Ordering::Relaxed,
            );
            if w.send(&[PeerReply::Data { found }], &payloads).is_err() {
                return;
            }
        }
    }
}
