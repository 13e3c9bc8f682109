//! Framing: batches of messages as control frames, each followed by the
//! payload frames it announces; blocking reader and writer, and the
//! encoder and decoder without IO that the scheduler's event loop uses.

use super::{MAX_CONTROL_FRAME, MAX_PAYLOAD_FRAME, Payload};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{self, BufReader, BufWriter, Read, Write};

const KIND_CONTROL: u8 = 0;
const KIND_PAYLOAD: u8 = 1;
/// Read `len` bytes into `buf` (cleared first), growing it as the bytes
/// arrive rather than from the length a peer announced: a header promising
/// 512 MiB followed by silence costs nothing.
fn read_growing<R: Read>(r: &mut R, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    buf.clear();
    let mut step = 1 << 20;
    while buf.len() < len {
        let n = step.min(len - buf.len());
        let have = buf.len();
        buf.resize(have + n, 0);
        r.read_exact(&mut buf[have..])?;
        step = (step * 2).min(64 << 20);
    }
    Ok(())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads batches of messages (and their payloads) from a stream.
pub struct FrameReader<R: Read> {
    inner: BufReader<R>,
    /// A control frame's bytes, kept from batch to batch (up to
    /// `KEEP_BODY_MAX`): a new buffer of a few hundred KiB per batch costs
    /// a mapping and its page faults each time in a worker (see
    /// `util::release_large_frees`).
    body: Vec<u8>,
}

/// A payload's pages are mapped this much at a time, as its bytes arrive.
const PAYLOAD_CHUNK: u64 = 16 << 20;

/// Largest control-frame buffer a reader keeps for the next batch.
const KEEP_BODY_MAX: usize = 4 << 20;

impl<R: Read> FrameReader<R> {
    pub fn new(r: R) -> Self {
        FrameReader { inner: BufReader::with_capacity(256 << 10, r), body: Vec::new() }
    }

    fn header(&mut self) -> io::Result<Option<(u64, u8)>> {
        let mut h = [0u8; 9];
        let mut got = 0;
        while got < h.len() {
            match self.inner.read(&mut h[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a frame header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some((u64::from_le_bytes(h[..8].try_into().unwrap()), h[8])))
    }

    /// The next batch with its payloads (tag byte, body), or `None` when the
    /// peer closed cleanly between frames.
    pub fn read_batch<T: DeserializeOwned>(&mut self) -> io::Result<Option<(Vec<T>, Vec<Payload>)>> {
        let Some((len, kind)) = self.header()? else { return Ok(None) };
        if kind != KIND_CONTROL {
            return Err(invalid(format!("expected a control frame, got frame kind {kind}")));
        }
        if !(4..=MAX_CONTROL_FRAME).contains(&len) {
            return Err(invalid(format!("control frame of {len} bytes is outside the allowed 4..={MAX_CONTROL_FRAME}")));
        }
        let mut body = std::mem::take(&mut self.body);
        read_growing(&mut self.inner, &mut body, len as usize)?;
        let npayloads = u32::from_le_bytes(body[..4].try_into().unwrap());
        let msgs: Vec<T> = bincode::deserialize(&body[4..]).map_err(|e| invalid(format!("undecodable message batch: {e}")))?;
        if body.capacity() <= KEEP_BODY_MAX {
            self.body = body;
        }
        let mut payloads = Vec::with_capacity(npayloads.min(1 << 16) as usize);
        for _ in 0..npayloads {
            let (plen, pkind) = self.header()?.ok_or_else(|| invalid("connection closed before a promised payload frame"))?;
            if pkind != KIND_PAYLOAD {
                return Err(invalid(format!("expected a payload frame, got frame kind {pkind}")));
            }
            if plen > MAX_PAYLOAD_FRAME || plen == 0 {
                return Err(invalid(format!("payload frame of {plen} bytes is outside the allowed 1..={MAX_PAYLOAD_FRAME}")));
            }
            let mut tag = [0u8; 1];
            self.inner.read_exact(&mut tag)?;
            let blen = plen - 1;
            // Address space for the whole value at once (one mapping, no
            // copies while it grows), but its pages are mapped only as the
            // bytes arrive, a chunk at a time.
            let mut body = crate::bufpool::take_lazy(blen as usize).ok_or_else(|| invalid(format!("cannot allocate {blen} bytes for a payload")))?;
            while (body.len() as u64) < blen {
                let have = body.len();
                let chunk = (blen - have as u64).min(PAYLOAD_CHUNK);
                crate::bufpool::prefault_range(&mut body, have, have + chunk as usize);
                (&mut self.inner).take(chunk).read_to_end(&mut body)?;
                if body.len() == have {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a payload frame"));
                }
            }
            payloads.push((tag[0], body));
        }
        Ok(Some((msgs, payloads)))
    }
}

/// Append a control frame holding `msgs` (announcing `npayloads` payload
/// frames after it) to `out`.
pub fn encode_control<T: Serialize>(out: &mut Vec<u8>, msgs: &[T], npayloads: u32) -> io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; 9]);
    out[start + 8] = KIND_CONTROL;
    out.extend_from_slice(&npayloads.to_le_bytes());
    bincode::serialize_into(&mut *out, msgs).map_err(|e| {
        out.truncate(start);
        invalid(format!("cannot encode messages: {e}"))
    })?;
    let len = (out.len() - start - 9) as u64;
    out[start..start + 8].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Control frames from bytes as they arrive, without IO (for an event
/// loop): [`ControlDecoder::push`] what came in, then take batches with
/// [`ControlDecoder::next_batch`]. For connections that carry no payload frames
/// (the scheduler's): a frame announcing payloads is an error. Its buffer
/// grows only with the bytes that came, whatever length a header claims.
#[derive(Default)]
pub struct ControlDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already decoded.
    pos: usize,
}

impl ControlDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Whether bytes of an unfinished frame are held.
    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// The next whole batch, if one has arrived.
    pub fn next_batch<T: DeserializeOwned>(&mut self) -> io::Result<Option<Vec<T>>> {
        let rest = &self.buf[self.pos..];
        if rest.len() < 9 {
            self.compact();
            return Ok(None);
        }
        let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
        if rest[8] != KIND_CONTROL {
            return Err(invalid(format!("expected a control frame, got frame kind {}", rest[8])));
        }
        if !(4..=MAX_CONTROL_FRAME).contains(&len) {
            return Err(invalid(format!("control frame of {len} bytes is outside the allowed 4..={MAX_CONTROL_FRAME}")));
        }
        let len = len as usize;
        if rest.len() < 9 + len {
            self.compact();
            return Ok(None);
        }
        let body = &rest[9..9 + len];
        let npayloads = u32::from_le_bytes(body[..4].try_into().expect("4 bytes"));
        if npayloads != 0 {
            return Err(invalid(format!("a batch announced {npayloads} payload frames; this connection takes none")));
        }
        let msgs: Vec<T> = bincode::deserialize(&body[4..]).map_err(|e| invalid(format!("undecodable message batch: {e}")))?;
        self.pos += 9 + len;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            // Thousands of idle connections keep no large buffers.
            if self.buf.capacity() > 64 << 10 {
                self.buf = Vec::new();
            }
        }
        Ok(Some(msgs))
    }

    /// Move an unfinished frame to the front (once the decoded bytes
    /// before it are worth the copy), so the buffer holds one frame at most.
    fn compact(&mut self) {
        if self.pos > 0 && self.pos >= self.buf.len() - self.pos {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

/// Writes batches of messages; large payloads go straight to the socket.
pub struct FrameWriter<W: Write> {
    inner: BufWriter<W>,
    scratch: Vec<u8>,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(w: W) -> Self {
        FrameWriter { inner: BufWriter::with_capacity(256 << 10, w), scratch: Vec::new() }
    }

    /// Queue one batch (not flushed) with its payloads (tag byte, body).
    pub fn write_batch<T: Serialize>(&mut self, msgs: &[T], payloads: &[(u8, &[u8])]) -> io::Result<()> {
        self.scratch.clear();
        encode_control(&mut self.scratch, msgs, payloads.len() as u32)?;
        self.inner.write_all(&self.scratch)?;
        for (tag, body) in payloads {
            self.inner.write_all(&(body.len() as u64 + 1).to_le_bytes())?;
            self.inner.write_all(&[KIND_PAYLOAD, *tag])?;
            self.inner.write_all(body)?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    /// The writer underneath (e.g. to shut its socket down).
    pub fn get_ref(&self) -> &W {
        self.inner.get_ref()
    }

    pub fn send<T: Serialize>(&mut self, msgs: &[T], payloads: &[(u8, &[u8])]) -> io::Result<()> {
        self.write_batch(msgs, payloads)?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ToWorker;

    #[test]
    fn frames_roundtrip_with_payloads() {
        let mut buf = Vec::new();
        {
            let mut w = FrameWriter::new(&mut buf);
            w.write_batch(&[ToWorker::Free { ids: vec![1, 2] }, ToWorker::Welcome { worker_id: 7 }], &[(b'B', b"abc"), (b'J', b"")]).unwrap();
            w.write_batch::<ToWorker>(&[], &[]).unwrap();
            w.flush().unwrap();
        }
        let mut r = FrameReader::new(&buf[..]);
        let (m, p) = r.read_batch::<ToWorker>().unwrap().unwrap();
        assert_eq!(m, vec![ToWorker::Free { ids: vec![1, 2] }, ToWorker::Welcome { worker_id: 7 }]);
        assert_eq!(p, vec![(b'B', b"abc".to_vec()), (b'J', vec![])]);
        let (m, p) = r.read_batch::<ToWorker>().unwrap().unwrap();
        assert!(m.is_empty() && p.is_empty());
        assert!(r.read_batch::<ToWorker>().unwrap().is_none());
    }

    #[test]
    fn the_decoder_takes_frames_in_pieces_of_any_size_and_keeps_no_big_buffer() {
        let batches = vec![vec![ToWorker::Free { ids: vec![1, 2] }], vec![], vec![ToWorker::Welcome { worker_id: 7 }, ToWorker::Ping]];
        let mut wire = Vec::new();
        for b in &batches {
            encode_control(&mut wire, b, 0).unwrap();
        }
        // The blocking reader reads what encode_control wrote.
        let mut r = FrameReader::new(&wire[..]);
        for b in &batches {
            assert_eq!(&r.read_batch::<ToWorker>().unwrap().unwrap().0, b);
        }
        for piece in [1, 2, 7, 9, 64, wire.len()] {
            let mut d = ControlDecoder::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(piece) {
                d.push(chunk);
                while let Some(b) = d.next_batch::<ToWorker>().unwrap() {
                    got.push(b);
                }
            }
            assert_eq!(got, batches, "pieces of {piece} bytes");
            assert!(d.is_empty());
        }
        // A batch that announces payloads is refused; so is a payload frame.
        let mut with_payload = Vec::new();
        encode_control(&mut with_payload, &[ToWorker::Ping], 1).unwrap();
        let mut d = ControlDecoder::default();
        d.push(&with_payload);
        assert!(d.next_batch::<ToWorker>().unwrap_err().to_string().contains("announced 1 payload"));
        let mut d = ControlDecoder::default();
        d.push(&[5, 0, 0, 0, 0, 0, 0, 0, KIND_PAYLOAD]);
        assert!(d.next_batch::<ToWorker>().unwrap_err().to_string().contains("expected a control frame"));
        // A header promising 512 MiB holds only the bytes that came.
        let mut d = ControlDecoder::default();
        let mut huge = MAX_CONTROL_FRAME.to_le_bytes().to_vec();
        huge.push(KIND_CONTROL);
        huge.extend_from_slice(&[0; 100]);
        d.push(&huge);
        assert!(d.next_batch::<ToWorker>().unwrap().is_none());
        assert!(d.buf.capacity() < 4096, "{}", d.buf.capacity());
        let mut over = (MAX_CONTROL_FRAME + 1).to_le_bytes().to_vec();
        over.push(KIND_CONTROL);
        let mut d = ControlDecoder::default();
        d.push(&over);
        assert!(d.next_batch::<ToWorker>().unwrap_err().to_string().contains("outside the allowed"));
    }

    #[test]
    fn oversized_garbage_and_truncated_frames_are_errors() {
        let mut big = (MAX_CONTROL_FRAME + 1).to_le_bytes().to_vec();
        big.push(0);
        let e = FrameReader::new(&big[..]).read_batch::<ToWorker>().unwrap_err();
        assert!(e.to_string().contains("outside the allowed"), "{e}");

        let mut garbage = 12u64.to_le_bytes().to_vec();
        garbage.push(0);
        garbage.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let e = FrameReader::new(&garbage[..]).read_batch::<ToWorker>().unwrap_err();
        assert!(e.to_string().contains("undecodable"), "{e}");

        let e = FrameReader::new(&[5u8, 0, 0][..]).read_batch::<ToWorker>().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);

        let mut kind = 4u64.to_le_bytes().to_vec();
        kind.push(9);
        assert!(FrameReader::new(&kind[..]).read_batch::<ToWorker>().is_err());
    }

}
