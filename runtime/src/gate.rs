//! What stands between a listening socket and the handshake, so that peers
//! without the secret cannot starve the ones with it:
//!
//! * at most [`MAX_PENDING`] connections per listener, and
//!   [`MAX_PENDING_PER_IP`] per peer address, may be unauthenticated at
//!   once; a newcomer over a cap closes the oldest pending one (a handshake
//!   of a real peer takes milliseconds, a stalling one waits for its
//!   deadline, so the stallers are the ones that go);
//! * accept errors back off (10 ms doubling to 1 s) instead of spinning,
//!   and when the process is out of file descriptors (EMFILE, ENFILE) one
//!   descriptor kept in reserve is freed to accept and close the waiting
//!   connection, so peers see a closed connection rather than a hang;
//! * the whole handshake has a deadline ([`crate::protocol::HANDSHAKE_TIMEOUT`]).

use crate::log_at;
use std::collections::VecDeque;
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Unauthenticated connections a listener keeps at once.
pub const MAX_PENDING: usize = 64;
/// Unauthenticated connections from one address at once.
pub const MAX_PENDING_PER_IP: usize = 16;

/// Who is waiting to authenticate at one listener, without IO: each
/// newcomer gets a ticket, and may push out the oldest pending one from its
/// address (or of all) when a cap is reached; the caller closes that one.
/// [`Gate`] is this for threaded listeners; the scheduler's event loop
/// uses it directly.
pub struct Admission {
    next: u64,
    /// Oldest first: (ticket, peer address, since when).
    pending: VecDeque<(u64, IpAddr, Instant)>,
    max_total: usize,
    max_per_ip: usize,
    /// A pending connection younger than this is not pushed out (see
    /// [`Admission::with_min_age`]).
    min_age: Duration,
    evicted: u64,
}

/// What [`Admission::admit`] decided about a newcomer.
#[derive(Debug, PartialEq, Eq)]
pub struct Admitted {
    /// Its ticket; None: it is turned away (close it).
    pub ticket: Option<u64>,
    /// The pending connection to close to make room for it.
    pub evicted: Option<u64>,
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize) -> Admission {
        Admission { next: 0, pending: VecDeque::new(), max_total: max_total.max(1), max_per_ip: max_per_ip.max(1), min_age: Duration::ZERO, evicted: 0 }
    }

    /// Push out no pending connection younger than `age`: a real peer's
    /// handshake takes milliseconds, a staller's lasts until its deadline,
    /// so under a burst of real peers (the ranks of a node connecting at
    /// once) the newest do not push out the ones about to finish. Over the
    /// per-address cap with only young ones from that address, the newcomer
    /// is let in (up to the total cap); over the total cap with only young
    /// ones, it is turned away (and connects again).
    pub fn with_min_age(mut self, age: Duration) -> Admission {
        self.min_age = age;
        self
    }

    /// Let a connection from `ip` in (or not), making room if needed.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Admitted {
        let from_ip = self.pending.iter().filter(|(_, a, _)| *a == ip).count();
        let full = self.pending.len() >= self.max_total;
        let candidate = if from_ip >= self.max_per_ip {
            self.pending.iter().position(|(_, a, _)| *a == ip)
        } else if full {
            Some(0)
        } else {
            None
        };
        let old_enough = |i: usize| now.saturating_duration_since(self.pending[i].2) >= self.min_age;
        let evicted = match candidate {
            Some(i) if old_enough(i) => self.pending.remove(i).map(|(t, _, _)| t),
            Some(_) if full => return Admitted { ticket: None, evicted: None },
            _ => None,
        };
        if evicted.is_some() {
            self.evicted += 1;
            if self.evicted.is_power_of_two() {
                log_at!(1, "net", "too many connections that have not authenticated (latest from {ip}): closed the oldest ({} so far)", self.evicted);
            }
        }
        self.next += 1;
        self.pending.push_back((self.next, ip, now));
        Admitted { ticket: Some(self.next), evicted }
    }

    /// A connection is done with the handshake (either way) or closed.
    pub fn leave(&mut self, ticket: u64) {
        if let Some(i) = self.pending.iter().position(|(t, _, _)| *t == ticket) {
            self.pending.remove(i);
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// The connections of one threaded listener that have not authenticated
/// yet: [`Admission`] with a handle on each, to close it by.
pub struct Gate {
    state: Mutex<State>,
}

struct State {
    admission: Admission,
    handles: Vec<(u64, TcpStream)>,
}

/// A pending connection's place at the gate; dropping it (once the
/// handshake is over, either way) leaves.
pub struct Pending {
    gate: Arc<Gate>,
    id: u64,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        st.admission.leave(self.id);
        st.handles.retain(|(id, _)| *id != self.id);
    }
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Gate::with_limits(MAX_PENDING, MAX_PENDING_PER_IP)
    }

    pub fn with_limits(max_total: usize, max_per_ip: usize) -> Arc<Gate> {
        Arc::new(Gate { state: Mutex::new(State { admission: Admission::new(max_total, max_per_ip), handles: Vec::new() }) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Let `stream` in as pending, closing the oldest pending connection
    /// from its address (or of all) when a cap is reached.
    pub fn admit(self: &Arc<Self>, stream: &TcpStream) -> Pending {
        let ip = stream.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let mut st = self.lock();
        // (no minimum age here: a ticket always comes)
        let Admitted { ticket, evicted } = st.admission.admit(ip, Instant::now());
        let id = ticket.unwrap_or(0);
        if let Some(victim) = evicted {
            if let Some(i) = st.handles.iter().position(|(t, _)| *t == victim) {
                let (_, s) = st.handles.swap_remove(i);
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        if let Ok(handle) = stream.try_clone() {
            st.handles.push((id, handle));
        }
        Pending { gate: self.clone(), id }
    }

    /// Connections pending now.
    pub fn pending(&self) -> usize {
        self.lock().admission.pending()
    }
}

/// Accept connections until `stop()` says so (checked after each accept),
/// handing each to `handle`; errors back off instead of spinning.
pub fn accept_loop(listener: &TcpListener, what: &str, stop: &dyn Fn() -> bool, mut handle: impl FnMut(TcpStream)) {
    let mut reserve = open_reserve();
    let mut pause = Duration::ZERO;
    loop {
        let accepted = listener.accept();
        if stop() {
            return;
        }
        match accepted {
            Ok((stream, _)) => {
                pause = Duration::ZERO;
                if reserve.is_none() {
                    reserve = open_reserve();
                }
                handle(stream);
            }
            Err(e) => {
                if !accept_failed(listener, what, &e, &mut reserve, pause.is_zero()) {
                    continue;
                }
                pause = (pause * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                std::thread::sleep(pause);
            }
        }
    }
}

/// What to do about a failed accept: out of file descriptors, free the
/// reserve (`reserve`, from [`open_reserve`]) to take the waiting
/// connection off the queue and close it (it would be accepted again and
/// again otherwise), then take a new reserve. Returns whether the caller
/// should back off before accepting again (false: retry at once).
pub fn accept_failed(listener: &TcpListener, what: &str, e: &std::io::Error, reserve: &mut Option<std::fs::File>, log: bool) -> bool {
    let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE));
    if out_of_fds {
        drop(reserve.take());
        if let Ok((s, addr)) = listener.accept() {
            drop(s);
            log_at!(1, "net", "{what}: out of file descriptors ({e}); closed a new connection from {addr}");
        }
        *reserve = open_reserve();
    } else if matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::Interrupted) {
        return false;
    } else if log {
        log_at!(1, "net", "{what}: accept failed: {e}");
    }
    true
}

/// A descriptor kept in reserve for [`accept_failed`].
pub fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Raise this process's soft limit on open files to its hard limit (a
/// scheduler of many workers, or a worker with many peers, needs more than
/// the usual 1,024); returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_oldest_pending_connection_gives_way_over_a_cap() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let gate = Gate::with_limits(10, 3);
        let mut clients = Vec::new();
        let mut tickets = Vec::new();
        for _ in 0..4 {
            clients.push(TcpStream::connect(addr).unwrap());
            let (s, _) = l.accept().unwrap();
            tickets.push((gate.admit(&s), s));
        }
        // The fourth from 127.0.0.1 closed the first: its client reads EOF.
        assert_eq!(gate.pending(), 3);
        let mut buf = [0u8; 1];
        clients[0].set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(clients[0].read(&mut buf).unwrap(), 0);
        // A finished handshake leaves the gate.
        tickets.pop();
        assert_eq!(gate.pending(), 2);
    }

    #[test]
    fn young_pending_connections_are_not_pushed_out_when_a_minimum_age_is_set() {
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let t0 = Instant::now();
        let mut adm = Admission::new(3, 2).with_min_age(Duration::from_secs(1));
        let first = adm.admit(a, t0).ticket.unwrap();
        adm.admit(a, t0);
        // over the per-address cap, but both are young: let in over it
        assert_eq!(adm.admit(a, t0).evicted, None);
        assert_eq!(adm.pending(), 3);
        // over the total cap with only young ones: turned away
        assert_eq!(adm.admit(b, t0), Admitted { ticket: None, evicted: None });
        // a second later the oldest gives way
        let later = adm.admit(b, t0 + Duration::from_secs(2));
        assert_eq!(later.evicted, Some(first));
        assert!(later.ticket.is_some());
        assert_eq!(adm.pending(), 3);
        adm.leave(later.ticket.unwrap());
        assert_eq!(adm.pending(), 2);
        // without a minimum age the oldest from the address always goes
        let mut strict = Admission::new(10, 1);
        let one = strict.admit(a, t0).ticket;
        assert_eq!(strict.admit(a, t0).evicted, one);
    }

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit() {
        let now = raise_fd_limit();
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        assert_eq!((now, lim.rlim_cur), (lim.rlim_max, lim.rlim_max));
    }
}
