//! The handshake: magic, protocol version and role, mutual proof of the
//! secret (HMAC-SHA256 over fresh nonces), the encryption mode, and the
//! session keys for [`crate::seal`].

use super::{Role, MAGIC, PROTOCOL_VERSION};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The whole handshake must be done within this (not per read: a peer
/// trickling a byte every few seconds would otherwise hold a connection
/// forever).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `read_exact` that fails with TimedOut once `deadline` has passed,
/// however slowly the bytes come.
fn read_exact_by(stream: &mut TcpStream, buf: &mut [u8], deadline: std::time::Instant) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("handshake not done within {} s", HANDSHAKE_TIMEOUT.as_secs())));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[got..]) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed during the handshake")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("handshake not done within {} s", HANDSHAKE_TIMEOUT.as_secs())))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Why a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    Io(io::Error),
    BadMagic,
    Version { ours: u16, theirs: u16 },
    BadRole(u8),
    AuthFailed,
    /// One side encrypts, the other runs with `--insecure-plaintext`.
    Mode { ours_plaintext: bool },
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "connection failed during the handshake: {e}"),
            HandshakeError::BadMagic => write!(f, "the peer is not a taskfarm process (bad magic bytes)"),
            HandshakeError::Version { ours, theirs } => {
                write!(f, "protocol version mismatch: this program speaks version {ours}, the peer version {theirs}; use the same taskfarm release everywhere")
            }
            HandshakeError::BadRole(r) => write!(f, "unknown role {r} in the handshake"),
            HandshakeError::AuthFailed => write!(
                f,
                "authentication failed: the peer does not share this secret (is the scheduler file stale or from another scheduler?)"
            ),
            HandshakeError::Mode { ours_plaintext } => write!(
                f,
                "the peer {} encryption and this process {}: every process of a cluster follows its scheduler file (a scheduler started with --insecure-plaintext writes \"encryption\": \"none\" there)",
                if *ours_plaintext { "uses" } else { "does not use" },
                if *ours_plaintext { "does not (--insecure-plaintext)" } else { "does" }
            ),
        }
    }
}

impl std::error::Error for HandshakeError {}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

impl From<HandshakeError> for io::Error {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::PermissionDenied, other.to_string()),
        }
    }
}

pub(super) fn proof(secret: &[u8], label: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(label);
    for p in parts {
        mac.update(p);
    }
    mac
}

pub const STATUS_OK: u8 = 0;
pub(super) const STATUS_VERSION: u8 = 1;
pub const STATUS_AUTH: u8 = 2;
/// The two sides disagree about encryption (`--insecure-plaintext`).
pub(super) const STATUS_MODE: u8 = 3;

/// This process's connection mode as the handshake carries it: 0 sealed
/// (encrypted), 1 plaintext.
pub(super) fn mode_byte() -> u8 {
    u8::from(crate::seal::plaintext())
}

/// The keys of a connection (per direction) from the secret and both
/// nonces; None in plaintext mode.
fn session_keys(secret: &[u8], cn: &[u8], sn: &[u8], mode: u8, connecting: bool) -> Option<crate::seal::Keys> {
    if mode != 0 {
        return None;
    }
    let derive = |label: &[u8]| -> [u8; 32] { proof(secret, label, &[cn, sn]).finalize().into_bytes().into() };
    let (c2s, s2c) = (derive(b"taskfarm-key-client-to-server"), derive(b"taskfarm-key-server-to-client"));
    Some(if connecting { crate::seal::Keys { send: c2s, recv: s2c } } else { crate::seal::Keys { send: s2c, recv: c2s } })
}

/// Connecting side. On success the stream is authenticated both ways;
/// returns its keys (None in plaintext mode).
pub fn client_handshake(stream: &mut TcpStream, secret: &[u8], role: Role) -> Result<Option<crate::seal::Keys>, HandshakeError> {
    let deadline = std::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let cn = crate::util::random_bytes(32);
    let mode = mode_byte();
    let mut hello = Vec::with_capacity(44);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    hello.push(role as u8);
    hello.push(mode);
    hello.extend_from_slice(&cn);
    stream.write_all(&hello)?;
    let mut reply = [0u8; 8 + 2 + 1 + 32 + 32];
    read_exact_by(stream, &mut reply, deadline)?;
    if &reply[..8] != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    let theirs = u16::from_le_bytes([reply[8], reply[9]]);
    if reply[10] == STATUS_VERSION || theirs != PROTOCOL_VERSION {
        return Err(HandshakeError::Version { ours: PROTOCOL_VERSION, theirs });
    }
    if reply[10] == STATUS_MODE {
        return Err(HandshakeError::Mode { ours_plaintext: mode != 0 });
    }
    let sn = &reply[11..43];
    proof(secret, b"taskfarm-server", &[&cn, sn, &[mode]]).verify_slice(&reply[43..75]).map_err(|_| HandshakeError::AuthFailed)?;
    let mine = proof(secret, b"taskfarm-client", &[&[role as u8, mode], &cn, sn]).finalize().into_bytes();
    stream.write_all(&mine)?;
    let mut status = [0u8; 1];
    read_exact_by(stream, &mut status, deadline)?;
    if status[0] != STATUS_OK {
        return Err(HandshakeError::AuthFailed);
    }
    stream.set_read_timeout(None)?;
    stream.set_nodelay(true)?;
    Ok(session_keys(secret, &cn, sn, mode, true))
}

/// Accepting side. Returns the authenticated peer's role and the
/// connection's keys (None in plaintext mode).
pub fn server_handshake(stream: &mut TcpStream, secret: &[u8]) -> Result<(Role, Option<crate::seal::Keys>), HandshakeError> {
    server_handshake_verified(stream, secret, || {})
}

/// [`server_handshake`], calling `verified` once the peer has proven it
/// holds the secret and before it is told so: a connection counted as
/// unauthenticated (see [`crate::gate`]) must stop counting before the peer
/// can believe it is in, or the gate may close it under a peer that has
/// already sent its first message.
pub fn server_handshake_verified(stream: &mut TcpStream, secret: &[u8], verified: impl FnOnce()) -> Result<(Role, Option<crate::seal::Keys>), HandshakeError> {
    let deadline = std::time::Instant::now() + HANDSHAKE_TIMEOUT;
    // Writes too: a peer that never reads must not hold the thread.
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut hello = [0u8; HELLO_LEN];
    read_exact_by(stream, &mut hello, deadline)?;
    let hs = match ServerHandshake::hello(&hello, secret) {
        Ok((hs, reply)) => {
            stream.write_all(&reply)?;
            hs
        }
        Err((reply, e)) => {
            if let Some(reply) = reply {
                let _ = stream.write_all(&reply);
            }
            return Err(e);
        }
    };
    let mut theirs_proof = [0u8; PROOF_LEN];
    read_exact_by(stream, &mut theirs_proof, deadline)?;
    let done = hs.proof(&theirs_proof, secret);
    if done.is_err() {
        let _ = stream.write_all(&[STATUS_AUTH]);
    } else {
        verified();
        stream.write_all(&[STATUS_OK])?;
    }
    let done = done?;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    stream.set_nodelay(true)?;
    Ok(done)
}

/// A hello turned away: the reply that tells the peer why (if any), and why.
pub type Refusal = (Option<Vec<u8>>, HandshakeError);

/// Bytes of a connecting peer's hello, and of its proof.
pub const HELLO_LEN: usize = 44;
pub const PROOF_LEN: usize = 32;

/// The accepting side of the handshake without IO (for an event loop):
/// [`ServerHandshake::hello`] takes the peer's [`HELLO_LEN`] bytes and gives
/// the reply to send; [`ServerHandshake::proof`] takes its [`PROOF_LEN`]
/// bytes; then the peer is told one status byte: [`STATUS_OK`] when the
/// proof held, [`STATUS_AUTH`] when not.
pub struct ServerHandshake {
    role: Role,
    mode: u8,
    cn: [u8; 32],
    sn: Vec<u8>,
}

impl ServerHandshake {
    /// The reply to a hello, or the error and the reply (if any) that tells
    /// the peer why it is turned away.
    pub fn hello(hello: &[u8; HELLO_LEN], secret: &[u8]) -> Result<(ServerHandshake, Vec<u8>), Refusal> {
        if &hello[..8] != MAGIC {
            return Err((None, HandshakeError::BadMagic));
        }
        let theirs = u16::from_le_bytes([hello[8], hello[9]]);
        let sn = crate::util::random_bytes(32);
        let mode = mode_byte();
        let cn: [u8; 32] = hello[12..44].try_into().expect("32 bytes");
        let mut reply = Vec::with_capacity(75);
        reply.extend_from_slice(MAGIC);
        reply.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        let refuse = |mut reply: Vec<u8>, status: u8| {
            reply.push(status);
            reply.resize(75, 0);
            Some(reply)
        };
        if theirs != PROTOCOL_VERSION {
            return Err((refuse(reply, STATUS_VERSION), HandshakeError::Version { ours: PROTOCOL_VERSION, theirs }));
        }
        let role = Role::from_u8(hello[10]).ok_or((None, HandshakeError::BadRole(hello[10])))?;
        if hello[11] != mode {
            return Err((refuse(reply, STATUS_MODE), HandshakeError::Mode { ours_plaintext: mode != 0 }));
        }
        reply.push(STATUS_OK);
        reply.extend_from_slice(&sn);
        reply.extend_from_slice(&proof(secret, b"taskfarm-server", &[&cn, &sn, &[mode]]).finalize().into_bytes());
        Ok((ServerHandshake { role, mode, cn, sn }, reply))
    }

    /// Check the peer's proof: its role and the connection's keys (None
    /// in plaintext mode).
    pub fn proof(self, theirs: &[u8; PROOF_LEN], secret: &[u8]) -> Result<(Role, Option<crate::seal::Keys>), HandshakeError> {
        let ServerHandshake { role, mode, cn, sn } = self;
        proof(secret, b"taskfarm-client", &[&[role as u8, mode], &cn, &sn]).verify_slice(theirs).map_err(|_| HandshakeError::AuthFailed)?;
        Ok((role, session_keys(secret, &cn, &sn, mode, false)))
    }
}

