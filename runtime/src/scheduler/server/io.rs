//! The scheduler's connections on one event loop (epoll through mio): one
//! thread accepts, authenticates, decrypts and decodes what every worker and
//! client sends, and encodes, encrypts and writes what the core thread
//! queues for them, whatever the number of connections. A connection costs
//! one descriptor and, while idle, a few hundred bytes: buffers exist only
//! while bytes are in flight.
//!
//! Each connection goes through the phases of the handshake
//! ([`ServerHandshake`], the same steps as the blocking version), then its
//! registration (the first batch), then carries batches until it closes.
//! Nothing here decides anything about tasks: batches go to the core as
//! [`Event`]s, and the core's batches come back through [`Io::send`].

use super::{ConnId, Event};
use crate::gate::Admission;
use crate::log_at;
use crate::protocol::{encode_control, ControlDecoder, Role, ServerHandshake, ToClient, ToScheduler, ToWorker, HANDSHAKE_TIMEOUT, HELLO_LEN, PROOF_LEN, STATUS_AUTH, STATUS_OK};
use crate::scheduler::state::WorkerInfo;
use crate::seal::{Opened, Opener, Sealer};
use crossbeam_channel::{unbounded, Receiver, Sender};
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// A peer that takes none of what is queued for it for this long is closed
/// (it stopped reading, or is gone without the connection saying so).
const WRITE_STALL: Duration = Duration::from_secs(60);
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 256 << 10;
/// Reads from one connection per turn of the loop: a client sending a big
/// graph does not hold up everyone else until its last byte.
const READS_PER_TURN: usize = 16;
/// Deadlines are checked this often.
const TICK: Duration = Duration::from_millis(250);
/// Connections not authenticated yet that the loop keeps at once, in all
/// and per peer address (see [`crate::gate`]). Far above a threaded
/// listener's caps: here one costs a descriptor and a few hundred bytes, no
/// thread, and the ranks of a whole node (up to a few hundred) connect in
/// the same instant from one address.
const MAX_PENDING: usize = 4096;
const MAX_PENDING_PER_IP: usize = 512;
/// The listening socket's queue of connections not accepted yet (the
/// kernel caps it at `net.core.somaxconn`, 4,096 by default): with Rust's
/// default of 128, a burst of thousands of workers overflows it and their
/// connection attempts wait a second or more to be retried.
const BACKLOG: i32 = 8192;

/// What the core sends one connection.
pub(super) enum Out {
    Worker(Vec<ToWorker>),
    Client(Vec<ToClient>),
    /// Close it (a worker the scheduler gave up on).
    Close,
}

enum Cmd {
    Send(ConnId, Out),
    /// Write what is queued (for at most this long), then close everything and end.
    Shutdown(Duration),
}

/// The core's handle on the event loop. Sends are queued; [`Io::commit`]
/// wakes the loop once for all queued since.
pub(super) struct Io {
    tx: Sender<Cmd>,
    waker: Arc<Waker>,
    dirty: Cell<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Io {
    pub(super) fn send(&self, conn: ConnId, out: Out) {
        if self.tx.send(Cmd::Send(conn, out)).is_ok() {
            self.dirty.set(true);
        }
    }

    /// Wake the loop if anything was sent since the last commit.
    pub(super) fn commit(&self) {
        if self.dirty.replace(false) {
            let _ = self.waker.wake();
        }
    }

    /// Write what is queued for at most `grace`, close every connection and
    /// wait for the loop to end.
    pub(super) fn shutdown(&mut self, grace: Duration) {
        if let Some(t) = self.thread.take() {
            let _ = self.tx.send(Cmd::Shutdown(grace));
            let _ = self.waker.wake();
            let _ = t.join();
        }
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

/// Serve `listener` on a new thread; events go to `events`.
pub(super) fn start(listener: TcpListener, secret: Vec<u8>, events: Sender<Event>) -> io::Result<Io> {
    listener.set_nonblocking(true)?;
    // SAFETY: listen(2) on a socket this function owns; called again on a
    // listening socket, it only changes the queue's length.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        log_at!(1, "scheduler", "cannot lengthen the queue of the listening socket: {}", io::Error::last_os_error());
    }
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    poll.registry().register(&mut SourceFd(&listener.as_raw_fd()), LISTENER, Interest::READABLE)?;
    let (tx, cmds) = unbounded();
    let mut lp = Loop {
        poll,
        listener: Some(listener),
        secret,
        events,
        cmds,
        conns: Vec::new(),
        free: Vec::new(),
        next_gen: 1,
        admission: Admission::new(MAX_PENDING, MAX_PENDING_PER_IP).with_min_age(Duration::from_secs(1)),
        tickets: Default::default(),
        reserve: crate::gate::open_reserve(),
        accept_pause: Duration::ZERO,
        accept_at: None,
        scratch: vec![0; READ_CHUNK],
        plain: Vec::new(),
        to_flush: Vec::new(),
        to_read: Vec::new(),
        closing: None,
    };
    let thread = std::thread::Builder::new().name("tf-io".into()).spawn(move || {
        // A scheduler without its connections is of no use: a bug here
        // stops it (with the reason in its log) rather than leaving it deaf.
        let events = lp.events.clone();
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lp.run())).is_err() {
            let _ = events.send(Event::Stop { reason: "the connection event loop failed (a bug: see the panic above)".into() });
        }
    })?;
    Ok(Io { tx, waker, dirty: Cell::new(false), thread: Some(thread) })
}

enum Phase {
    /// Waiting for the peer's hello.
    Hello { deadline: Instant },
    /// Waiting for the peer's proof of the secret.
    Proof { hs: ServerHandshake, deadline: Instant },
    /// Authenticated; waiting for the batch that registers it.
    Register { role: Role, deadline: Instant },
    /// A worker or client of the core.
    Open,
    /// Turned away during the handshake (told why, being closed).
    Rejected,
}

struct Conn {
    id: ConnId,
    stream: TcpStream,
    peer: String,
    phase: Phase,
    /// Received bytes not used yet (an unfinished record or handshake step).
    raw: Vec<u8>,
    frames: ControlDecoder,
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    /// Bytes to write, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// Since when what is queued has not moved.
    stalled: Option<Instant>,
    /// Its ticket at the gate until it has proven the secret.
    pending: Option<u64>,
    /// Its ticket once it has proven the secret, for the loop to give back.
    verified: Option<u64>,
}

/// Why a connection ends: logged (before registration, unless quiet: the
/// gate counts those) or told to the core.
struct Closing(String, bool);

impl Closing {
    fn new(why: impl Into<String>) -> Closing {
        Closing(why.into(), false)
    }
    fn quiet(why: impl Into<String>) -> Closing {
        Closing(why.into(), true)
    }
}

impl From<io::Error> for Closing {
    fn from(e: io::Error) -> Closing {
        Closing::new(format!("connection error: {e}"))
    }
}

struct Loop {
    poll: Poll,
    listener: Option<TcpListener>,
    secret: Vec<u8>,
    events: Sender<Event>,
    cmds: Receiver<Cmd>,
    /// Connections by token (the low 32 bits of their id); `free` are holes.
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    next_gen: u64,
    /// Connections not authenticated yet (the gate), and theirs by ticket.
    admission: Admission,
    tickets: std::collections::HashMap<u64, ConnId>,
    reserve: Option<std::fs::File>,
    accept_pause: Duration,
    /// Accept again at this time (after an error that was not the peer's).
    accept_at: Option<Instant>,
    scratch: Vec<u8>,
    /// A batch being encoded.
    plain: Vec<u8>,
    /// Connections that were queued bytes since the last flush.
    to_flush: Vec<usize>,
    /// Connections with bytes left to read after their turn.
    to_read: Vec<usize>,
    /// Shutting down: write what is queued until then.
    closing: Option<Instant>,
}

fn slot(conn: ConnId) -> usize {
    (conn & 0xffff_ffff) as usize
}

impl Loop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut last_tick = Instant::now();
        loop {
            // Connections with more to read come back without waiting.
            let wait = if self.to_read.is_empty() { TICK } else { Duration::ZERO };
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log_at!(0, "scheduler", "the connection event loop failed: {e}");
                    let _ = self.events.send(Event::Stop { reason: format!("the connection event loop failed: {e}") });
                    return;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(i) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.on_readable(i);
                        }
                        if ev.is_writable() {
                            self.write(i);
                        }
                    }
                }
            }
            for i in std::mem::take(&mut self.to_read) {
                self.on_readable(i);
            }
            self.commands();
            self.flush();
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.tick();
            }
            if let Some(deadline) = self.closing {
                if Instant::now() >= deadline || self.conns.iter().flatten().all(|c| c.out_pos == c.out.len()) {
                    self.close_all();
                    return;
                }
            }
        }
    }

    /// Take the core's commands.
    fn commands(&mut self) {
        while let Ok(cmd) = self.cmds.try_recv() {
            match cmd {
                Cmd::Send(conn, out) => self.queue(conn, out),
                Cmd::Shutdown(grace) => {
                    if let Some(l) = self.listener.take() {
                        let _ = self.poll.registry().deregister(&mut SourceFd(&l.as_raw_fd()));
                    }
                    self.closing = Some(Instant::now() + grace);
                }
            }
        }
    }

    fn conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(slot(id)).and_then(|c| c.as_mut()).filter(|c| c.id == id)
    }

    fn queue(&mut self, id: ConnId, out: Out) {
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        let encoded = match &out {
            Out::Worker(b) => encode_control(&mut plain, b, 0),
            Out::Client(b) => encode_control(&mut plain, b, 0),
            Out::Close => {
                self.close(slot(id), Some(id), Closing::new("closed by the scheduler"));
                self.plain = plain;
                return;
            }
        };
        if let Err(e) = encoded {
            log_at!(0, "scheduler", "cannot encode a batch for connection {id}: {e}");
        } else if let Some(c) = self.conn(id) {
            c.compact_out();
            let queued = match &mut c.sealer {
                Some(s) => s.seal_into(&plain, &mut c.out),
                None => {
                    c.out.extend_from_slice(&plain);
                    Ok(())
                }
            };
            if queued.is_ok() {
                self.to_flush.push(slot(id));
            }
        }
        // A batch of a big graph's results leaves no big buffer behind.
        if plain.capacity() > 1 << 20 {
            plain = Vec::new();
        }
        self.plain = plain;
    }

    fn flush(&mut self) {
        let mut list = std::mem::take(&mut self.to_flush);
        list.sort_unstable();
        list.dedup();
        for i in list.drain(..) {
            self.write(i);
        }
        self.to_flush = list;
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((stream, addr)) => {
                    self.accept_pause = Duration::ZERO;
                    if self.reserve.is_none() {
                        self.reserve = crate::gate::open_reserve();
                    }
                    let admitted = self.admission.admit(addr.ip(), Instant::now());
                    if let Some(victim) = admitted.evicted.and_then(|t| self.tickets.remove(&t)) {
                        self.close(slot(victim), Some(victim), Closing::quiet("too many connections that have not authenticated: the oldest is closed"));
                    }
                    // Turned away: closed at once, and it connects again.
                    let Some(ticket) = admitted.ticket else { continue };
                    match self.add(stream, addr.to_string(), ticket) {
                        Ok(id) => {
                            self.tickets.insert(ticket, id);
                        }
                        Err(e) => {
                            self.admission.leave(ticket);
                            log_at!(1, "scheduler", "cannot take the connection from {addr}: {e}");
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    let listener = self.listener.as_ref().expect("listening");
                    if crate::gate::accept_failed(listener, "scheduler", &e, &mut self.reserve, self.accept_pause.is_zero()) {
                        self.accept_pause = (self.accept_pause * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                        self.accept_at = Some(Instant::now() + self.accept_pause);
                        return;
                    }
                }
            }
        }
    }

    fn add(&mut self, stream: std::net::TcpStream, peer: String, ticket: u64) -> io::Result<ConnId> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let mut stream = TcpStream::from_std(stream);
        let i = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let id = (self.next_gen << 32) | i as u64;
        self.next_gen += 1;
        if let Err(e) = self.poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE) {
            self.free.push(i);
            return Err(e);
        }
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        self.conns[i] = Some(Conn {
            id,
            stream,
            peer,
            phase: Phase::Hello { deadline },
            raw: Vec::new(),
            frames: ControlDecoder::default(),
            sealer: None,
            opener: None,
            out: Vec::new(),
            out_pos: 0,
            stalled: None,
            pending: Some(ticket),
            verified: None,
        });
        Ok(id)
    }

    fn on_readable(&mut self, i: usize) {
        for turn in 0.. {
            if turn == READS_PER_TURN {
                // (edge-triggered: no new event comes for what is left)
                self.to_read.push(i);
                return;
            }
            let Some(Some(c)) = self.conns.get_mut(i) else { return };
            let n = match c.stream.read(&mut self.scratch) {
                Ok(0) => return self.close(i, None, Closing::new("connection closed")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.close(i, None, e.into()),
            };
            let r = if c.raw.is_empty() {
                c.take(&mut self.scratch[..n], &self.secret, &self.events).map(|used| c.raw.extend_from_slice(&self.scratch[used..n]))
            } else {
                c.raw.extend_from_slice(&self.scratch[..n]);
                let mut raw = std::mem::take(&mut c.raw);
                let r = c.take(&mut raw, &self.secret, &self.events).map(|used| {
                    raw.drain(..used);
                });
                c.raw = raw;
                r
            };
            if c.raw.is_empty() && c.raw.capacity() > 64 << 10 {
                c.raw = Vec::new();
            }
            if let Some(t) = c.verified.take() {
                self.admission.leave(t);
                self.tickets.remove(&t);
            }
            if c.out_pos < c.out.len() {
                self.to_flush.push(i);
            }
            if let Err(why) = r {
                // What it was told (why it is turned away) goes out first.
                self.write(i);
                return self.close(i, None, why);
            }
        }
    }

    /// Write what is queued for connection `i` until the socket is full.
    fn write(&mut self, i: usize) {
        let Some(Some(c)) = self.conns.get_mut(i) else { return };
        while c.out_pos < c.out.len() {
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(0) => return self.close(i, None, Closing::new("connection closed while writing")),
                Ok(n) => {
                    c.out_pos += n;
                    c.stalled = None;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.stalled.get_or_insert_with(Instant::now);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close(i, None, Closing::new(format!("cannot write: {e}"))),
            }
        }
        c.out.clear();
        c.out_pos = 0;
        if c.out.capacity() > 256 << 10 {
            c.out = Vec::new();
        }
    }

    /// Close connection `i` (if it is still `id`, when given), telling the
    /// core if it had registered.
    fn close(&mut self, i: usize, id: Option<ConnId>, why: Closing) {
        let Some(Some(c)) = self.conns.get(i) else { return };
        if id.is_some_and(|id| id != c.id) {
            return;
        }
        let mut c = self.conns[i].take().expect("checked above");
        self.free.push(i);
        if let Some(t) = c.pending.or(c.verified) {
            self.admission.leave(t);
            self.tickets.remove(&t);
        }
        let _ = self.poll.registry().deregister(&mut c.stream);
        match c.phase {
            Phase::Open => {
                let _ = self.events.send(Event::Closed { conn: c.id, reason: why.0 });
            }
            _ if why.1 => {}
            _ => log_at!(1, "scheduler", "closing connection from {}: {}", c.peer, why.0),
        }
    }

    /// Deadlines: handshakes and registrations that take too long, peers
    /// that stopped reading, accepting again after an error.
    fn tick(&mut self) {
        let now = Instant::now();
        let mut late = Vec::new();
        for (i, c) in self.conns.iter().enumerate() {
            let Some(c) = c else { continue };
            match &c.phase {
                Phase::Hello { deadline } | Phase::Proof { deadline, .. } if now >= *deadline => {
                    late.push((i, format!("handshake not done within {} s", HANDSHAKE_TIMEOUT.as_secs())));
                }
                Phase::Register { deadline, .. } if now >= *deadline => {
                    late.push((i, format!("authenticated but did not register within {} s", HANDSHAKE_TIMEOUT.as_secs())));
                }
                _ => {}
            }
            if c.stalled.is_some_and(|t| now.duration_since(t) >= WRITE_STALL) {
                let who = if matches!(c.phase, Phase::Open) { "it" } else { "the peer" };
                late.push((i, format!("cannot write to {}: {who} took nothing of what is queued for {} s", c.peer, WRITE_STALL.as_secs())));
            }
        }
        for (i, why) in late {
            if let Some(Some(c)) = self.conns.get(i) {
                if matches!(c.phase, Phase::Open) {
                    log_at!(1, "scheduler", "{why}; closing its connection");
                }
            }
            self.close(i, None, Closing::new(why));
        }
        if self.accept_at.is_some_and(|t| now >= t) {
            self.accept_at = None;
            self.accept();
        }
    }

    /// Shutting down: what the peers have not read yet is dropped, so that
    /// closing sends an orderly end (not a reset that could lose the
    /// goodbye they were sent).
    fn close_all(&mut self) {
        for c in self.conns.iter_mut().flatten() {
            let mut sink = [0u8; 4096];
            while matches!(c.stream.read(&mut sink), Ok(n) if n > 0) {}
            let _ = c.stream.shutdown(Shutdown::Write);
        }
        self.conns.clear();
    }
}

impl Conn {
    /// Before appending to `out`: move what is unwritten to the front when
    /// the written part is the larger.
    fn compact_out(&mut self) {
        if self.out_pos > 0 && self.out_pos * 2 >= self.out.len() {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Use what arrived (`buf`, from the first byte not used yet): returns
    /// how many bytes were used; the rest waits for more.
    fn take(&mut self, buf: &mut [u8], secret: &[u8], events: &Sender<Event>) -> Result<usize, Closing> {
        let mut pos = 0;
        loop {
            let rest = buf.len() - pos;
            match &mut self.phase {
                Phase::Hello { deadline } => {
                    if rest < HELLO_LEN {
                        return Ok(pos);
                    }
                    let hello: &[u8; HELLO_LEN] = buf[pos..pos + HELLO_LEN].try_into().expect("length checked");
                    pos += HELLO_LEN;
                    match ServerHandshake::hello(hello, secret) {
                        Ok((hs, reply)) => {
                            self.out.extend_from_slice(&reply);
                            self.phase = Phase::Proof { hs, deadline: *deadline };
                        }
                        Err((reply, e)) => {
                            self.out.extend_from_slice(&reply.unwrap_or_default());
                            return Err(Closing::new(format!("rejected: {e}")));
                        }
                    }
                }
                Phase::Proof { .. } => {
                    if rest < PROOF_LEN {
                        return Ok(pos);
                    }
                    let theirs: &[u8; PROOF_LEN] = buf[pos..pos + PROOF_LEN].try_into().expect("length checked");
                    pos += PROOF_LEN;
                    let Phase::Proof { hs, .. } = std::mem::replace(&mut self.phase, Phase::Open) else { unreachable!("matched above") };
                    match hs.proof(theirs, secret) {
                        Ok((role, keys)) => {
                            // Out of the gate's reach before the peer is told it is in.
                            self.verified = self.pending.take();
                            self.out.push(STATUS_OK);
                            self.sealer = keys.as_ref().map(Sealer::new);
                            self.opener = keys.as_ref().map(Opener::new);
                            self.phase = Phase::Register { role, deadline: Instant::now() + HANDSHAKE_TIMEOUT };
                        }
                        Err(e) => {
                            self.out.push(STATUS_AUTH);
                            self.phase = Phase::Rejected;
                            return Err(Closing::new(format!("rejected: {e}")));
                        }
                    }
                }
                Phase::Rejected => return Ok(buf.len()),
                Phase::Register { .. } | Phase::Open => {
                    match &mut self.opener {
                        Some(opener) => match opener.next_record(&mut buf[pos..])? {
                            Opened::Record { range, consumed } => {
                                self.frames.push(&buf[pos + range.start..pos + range.end]);
                                pos += consumed;
                            }
                            Opened::Partial => return Ok(pos),
                        },
                        None => {
                            if rest == 0 {
                                return Ok(pos);
                            }
                            self.frames.push(&buf[pos..]);
                            pos = buf.len();
                        }
                    }
                    while let Some(batch) = self.frames.next_batch::<ToScheduler>()? {
                        self.batch(batch, events)?;
                    }
                }
            }
        }
    }

    /// A decoded batch: the registration first, then messages for the core.
    fn batch(&mut self, msgs: Vec<ToScheduler>, events: &Sender<Event>) -> Result<(), Closing> {
        let conn = self.id;
        let Phase::Register { role, .. } = self.phase else {
            let _ = events.send(Event::Messages { conn, msgs });
            return Ok(());
        };
        let mut rest = msgs.into_iter();
        let registered = match (role, rest.next()) {
            (Role::Worker, Some(ToScheduler::RegisterWorker { name, data_address, nthreads, resources, host, pid, job, functions, held, run, .. })) => {
                let info = WorkerInfo { name, address: data_address, nthreads: nthreads.max(1), resources, host, pid, job, functions };
                Event::Worker { conn, info, held, run }
            }
            (Role::Client, Some(ToScheduler::RegisterClient { name })) => Event::Client { conn, name },
            (role, first) => return Err(Closing::new(format!("a {role:?} must register first, got {}", first.map(|m| super::short(&m)).unwrap_or_else(|| "an empty batch".into())))),
        };
        self.phase = Phase::Open;
        let _ = events.send(registered);
        let leftover: Vec<ToScheduler> = rest.collect();
        if !leftover.is_empty() {
            let _ = events.send(Event::Messages { conn, msgs: leftover });
        }
        Ok(())
    }
}
