//! Every connection is encrypted and integrity-protected after its
//! handshake: AES-256-GCM (ring) records of at most [`RECORD`] bytes, each
//! `[u32 LE length][ciphertext][16-byte tag]`, with a key per direction
//! derived from the shared secret and both handshake nonces, and the
//! record counter as nonce. A record that fails its tag (tampering,
//! corruption, a replayed or reordered record) ends the connection.
//!
//! `--insecure-plaintext` on the scheduler turns this off for a trusted
//! fabric (it is written in the scheduler file, so every worker and client
//! of that cluster follows, and bound into the handshake, so the two sides
//! cannot disagree).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};

/// Plaintext bytes per record.
pub const RECORD: usize = 64 << 10;
const TAG: usize = 16;

static PLAINTEXT: AtomicBool = AtomicBool::new(false);

/// Connections of this process are made without encryption (the cluster
/// runs with `--insecure-plaintext`), or with it (the default).
pub fn set_plaintext(on: bool) {
    PLAINTEXT.store(on, Ordering::SeqCst);
}

pub fn plaintext() -> bool {
    PLAINTEXT.load(Ordering::SeqCst)
}

/// The two keys of one connection, as one side sees them.
#[derive(Clone)]
pub struct Keys {
    pub send: [u8; 32],
    pub recv: [u8; 32],
}

/// An authenticated connection: the socket and, unless the cluster runs in
/// plaintext, its keys. Dereferences to the socket for its options and
/// addresses; read and write it through [`Link::reader`] / [`Link::writer`].
pub struct Link {
    stream: TcpStream,
    keys: Option<Keys>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)") // never print keys
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Link({:?}, {})", self.stream.peer_addr().ok(), if self.keys.is_some() { "sealed" } else { "plaintext" })
    }
}

impl std::ops::Deref for Link {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

impl Link {
    pub fn new(stream: TcpStream, keys: Option<Keys>) -> Link {
        Link { stream, keys }
    }

    pub fn is_sealed(&self) -> bool {
        self.keys.is_some()
    }

    /// The reading half (a handle of its own on the socket).
    pub fn reader(&self) -> io::Result<LinkReader> {
        let s = self.stream.try_clone()?;
        Ok(match &self.keys {
            None => LinkReader::Plain(s),
            Some(k) => LinkReader::Sealed(Box::new(SealedReader { stream: s, opener: Opener::new(k), buf: Vec::new(), pos: 0, end: 0 })),
        })
    }

    /// The writing half (a handle of its own on the socket).
    pub fn writer(&self) -> io::Result<LinkWriter> {
        let s = self.stream.try_clone()?;
        Ok(match &self.keys {
            None => LinkWriter::Plain(s),
            Some(k) => LinkWriter::Sealed(Box::new(SealedWriter { stream: s, sealer: Sealer::new(k), buf: header_only() })),
        })
    }

    /// The socket itself (e.g. to keep for shutting it down).
    pub fn stream(&self) -> io::Result<TcpStream> {
        self.stream.try_clone()
    }
}

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES-256 key"))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn header_only() -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + RECORD + TAG);
    b.extend_from_slice(&[0; 4]);
    b
}

pub enum LinkReader {
    Plain(TcpStream),
    Sealed(Box<SealedReader>),
}

pub enum LinkWriter {
    Plain(TcpStream),
    Sealed(Box<SealedWriter>),
}

impl Read for LinkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            LinkReader::Plain(s) => s.read(out),
            LinkReader::Sealed(r) => r.read(out),
        }
    }
}

impl LinkWriter {
    /// Shut the socket down both ways (the reader then sees it closed).
    pub fn shutdown(&self) -> io::Result<()> {
        match self {
            LinkWriter::Plain(s) => s.shutdown(std::net::Shutdown::Both),
            LinkWriter::Sealed(w) => w.stream.shutdown(std::net::Shutdown::Both),
        }
    }
}

impl Write for LinkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            LinkWriter::Plain(s) => s.write(data),
            LinkWriter::Sealed(w) => w.write(data),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            LinkWriter::Plain(s) => s.flush(),
            LinkWriter::Sealed(w) => w.flush(),
        }
    }
}

/// The sending direction's cipher state, without IO (for event loops that
/// own their buffers; [`SealedWriter`] wraps it for blocking sockets).
pub struct Sealer {
    key: LessSafeKey,
    counter: u64,
}

impl Sealer {
    pub fn new(keys: &Keys) -> Sealer {
        Sealer { key: key(&keys.send), counter: 0 }
    }

    /// Seal `out[start + 4..]` (plaintext of at most [`RECORD`] bytes that
    /// follows a 4-byte slot at `start`) into one record in place.
    fn seal_at(&mut self, out: &mut Vec<u8>, start: usize) -> io::Result<()> {
        let tag = self.key.seal_in_place_separate_tag(nonce(self.counter), Aad::empty(), &mut out[start + 4..]).map_err(|_| io::Error::other("cannot encrypt a record"))?;
        self.counter += 1;
        out.extend_from_slice(tag.as_ref());
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }

    /// Append `plain` to `out` as records.
    pub fn seal_into(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        for chunk in plain.chunks(RECORD) {
            let start = out.len();
            out.reserve(4 + chunk.len() + TAG);
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(chunk);
            self.seal_at(out, start)?;
        }
        Ok(())
    }
}

/// The receiving direction's cipher state, without IO.
pub struct Opener {
    key: LessSafeKey,
    counter: u64,
}

/// What [`Opener::next_record`] found at the front of a buffer.
pub enum Opened {
    /// A whole record: its plaintext is `buf[range]`; `consumed` bytes of the buffer were its.
    Record { range: std::ops::Range<usize>, consumed: usize },
    /// Not a whole record yet.
    Partial,
}

impl Opener {
    pub fn new(keys: &Keys) -> Opener {
        Opener { key: key(&keys.recv), counter: 0 }
    }

    fn check_len(len: usize) -> io::Result<()> {
        if !(TAG + 1..=RECORD + TAG).contains(&len) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("encrypted record of {len} bytes is outside 17..={}", RECORD + TAG)));
        }
        Ok(())
    }

    fn open<'a>(&mut self, sealed: &'a mut [u8]) -> io::Result<&'a mut [u8]> {
        let plain = self.key.open_in_place(nonce(self.counter), Aad::empty(), sealed).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "a record failed its integrity check: the connection was tampered with or corrupted (or the peer does not share this cluster's keys)")
        })?;
        self.counter += 1;
        Ok(plain)
    }

    /// Open the record at the front of `buf` in place, if it is all there.
    pub fn next_record(&mut self, buf: &mut [u8]) -> io::Result<Opened> {
        if buf.len() < 4 {
            return Ok(Opened::Partial);
        }
        let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        Self::check_len(len)?;
        if buf.len() < 4 + len {
            return Ok(Opened::Partial);
        }
        let n = self.open(&mut buf[4..4 + len])?.len();
        Ok(Opened::Record { range: 4..4 + n, consumed: 4 + len })
    }
}

pub struct SealedWriter {
    stream: TcpStream,
    sealer: Sealer,
    /// A 4-byte length slot, then the plaintext of the record being filled.
    buf: Vec<u8>,
}

impl SealedWriter {
    fn seal_record(&mut self) -> io::Result<()> {
        if self.buf.len() == 4 {
            return Ok(());
        }
        self.sealer.seal_at(&mut self.buf, 0)?;
        let r = self.stream.write_all(&self.buf);
        self.buf.truncate(4);
        r
    }
}

impl Write for SealedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = 4 + RECORD - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == 4 + RECORD {
            self.seal_record()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.seal_record()?;
        self.stream.flush()
    }
}

pub struct SealedReader {
    stream: TcpStream,
    opener: Opener,
    buf: Vec<u8>,
    /// The plaintext of the current record is `buf[pos..end]`.
    pos: usize,
    end: usize,
}

impl SealedReader {
    /// The next record; false at a clean end of the stream.
    fn next_record(&mut self) -> io::Result<bool> {
        let mut h = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.stream.read(&mut h[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a record header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let len = u32::from_le_bytes(h) as usize;
        Opener::check_len(len)?;
        self.buf.resize(len, 0);
        self.stream.read_exact(&mut self.buf)?;
        self.end = self.opener.open(&mut self.buf)?.len();
        self.pos = 0;
        Ok(true)
    }
}

impl Read for SealedReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.end {
            if !self.next_record()? {
                return Ok(0);
            }
        }
        let n = (self.end - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair(keys: bool) -> (Link, Link, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let spy = b.try_clone().unwrap();
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let ka = keys.then_some(Keys { send: k1, recv: k2 });
        let kb = keys.then_some(Keys { send: k2, recv: k1 });
        (Link::new(a, ka), Link::new(b, kb), spy)
    }

    #[test]
    fn records_round_trip_in_both_directions_and_hide_the_plaintext() {
        let (a, b, _) = pair(true);
        let mut w = a.writer().unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        w.write_all(b"hello SECRET").unwrap();
        w.write_all(&big).unwrap();
        w.flush().unwrap();
        let mut r = b.reader().unwrap();
        let mut got = vec![0u8; 12 + big.len()];
        r.read_exact(&mut got).unwrap();
        assert_eq!(&got[..12], b"hello SECRET");
        assert_eq!(&got[12..], &big[..]);
        let mut back = b.writer().unwrap();
        back.write_all(b"reply").unwrap();
        back.flush().unwrap();
        let mut ra = a.reader().unwrap();
        let mut five = [0u8; 5];
        ra.read_exact(&mut five).unwrap();
        assert_eq!(&five, b"reply");
    }

    #[test]
    fn sealer_and_opener_agree_with_the_blocking_halves_in_pieces_of_any_size() {
        let (a, b, _) = pair(true);
        let keys_b = Keys { send: [2u8; 32], recv: [1u8; 32] };
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        // What a blocking writer sends, an Opener reads from pieces of the stream.
        let mut w = a.writer().unwrap();
        w.write_all(&big).unwrap();
        w.flush().unwrap();
        drop(w);
        let mut wire = vec![0u8; big.len() + 4 * (4 + TAG)];
        let mut got = 0;
        let mut raw = b.stream().unwrap();
        raw.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        while got < wire.len() {
            got += raw.read(&mut wire[got..]).unwrap();
        }
        let mut opener = Opener::new(&keys_b);
        let (mut plain, mut pending, mut pos) = (Vec::new(), Vec::new(), 0);
        for piece in wire.chunks(1000) {
            pending.extend_from_slice(piece);
            while let Opened::Record { range, consumed } = opener.next_record(&mut pending[pos..]).unwrap() {
                plain.extend_from_slice(&pending[pos + range.start..pos + range.end]);
                pos += consumed;
            }
        }
        assert_eq!(pos, pending.len());
        assert_eq!(plain, big);
        // What a Sealer makes, a blocking reader reads.
        let mut sealed = Vec::new();
        Sealer::new(&keys_b).seal_into(&big, &mut sealed).unwrap();
        assert!(!sealed.windows(64).any(|x| x == &big[1000..1064]), "no plaintext in records");
        let mut raw_b = b.stream().unwrap();
        raw_b.write_all(&sealed).unwrap();
        let mut back = vec![0u8; big.len()];
        a.reader().unwrap().read_exact(&mut back).unwrap();
        assert_eq!(back, big);
        // A record that fails its tag is refused.
        sealed[10] ^= 1;
        let e = Opener::new(&Keys { send: [1u8; 32], recv: [2u8; 32] }).next_record(&mut sealed).err().unwrap();
        assert!(e.to_string().contains("integrity check"), "{e}");
    }

    #[test]
    fn a_flipped_bit_or_a_wrong_key_ends_the_connection() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let mut w = Link::new(a, Some(Keys { send: [7; 32], recv: [8; 32] })).writer().unwrap();
        w.write_all(b"value").unwrap();
        w.flush().unwrap();
        // Read the record off the wire, flip one bit, and feed it to a reader.
        let mut raw = vec![0u8; 4 + 5 + TAG];
        (&b).read_exact(&mut raw).unwrap();
        assert!(!raw.windows(5).any(|x| x == b"value"), "no plaintext on the wire");
        raw[6] ^= 1;
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l2.local_addr().unwrap()).unwrap();
        let (d, _) = l2.accept().unwrap();
        c.write_all(&raw).unwrap();
        let mut r = Link::new(d, Some(Keys { send: [8; 32], recv: [7; 32] })).reader().unwrap();
        let e = r.read(&mut [0u8; 16]).unwrap_err();
        assert!(e.to_string().contains("integrity check"), "{e}");
    }
}
