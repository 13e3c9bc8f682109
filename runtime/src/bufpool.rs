//! A small pool of large byte buffers, reused for values received from peers
//! and read back from disk.
//!
//! Receiving a large value into new memory costs one page fault per 4 KiB
//! page; on the machines measured that costs more than the copy out of the
//! socket (docs/benchmarks.md). A worker therefore keeps the buffers of large
//! bytes values it no longer needs and receives the next large value into
//! one of them. New buffers are faulted in with one system call
//! (`MADV_POPULATE_WRITE`) instead of page by page.
//!
//! The pool is bounded (a share of the worker's memory limit), emptied as
//! soon as the worker's memory goes over its spill threshold, and buffers
//! unused for a while are given back to the system.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buffers smaller than this are neither pooled nor prefaulted: the
/// allocator serves them well. Values from about half a megabyte up are:
/// otherwise each is a new mapping whose pages fault in as it arrives
/// (100 values of 1 MiB fetched from a peer: 0.34x raw loopback TCP with
/// pooling from 4 MiB, 0.6-0.75x from 512 KiB; bench/transfer.sh COUNT=100).
pub const MIN_POOLED: usize = 512 << 10;
/// Buffers the pool keeps at most, whatever their bytes (a take looks
/// through them all: with buffers from 512 KiB, a pool of a big node's
/// memory / 8 would otherwise hold tens of thousands).
pub const MAX_BUFFERS: usize = 1024;

struct Pool {
    /// (capacity, buffer, when it was given back)
    free: Vec<(Vec<u8>, Instant)>,
    held: usize,
    limit: usize,
    reused: u64,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { free: Vec::new(), held: 0, limit: 0, reused: 0 });

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes the pool may hold (0, the default, disables pooling).
pub fn set_limit(bytes: u64) {
    let mut p = pool();
    p.limit = bytes.min(usize::MAX as u64) as usize;
    let limit = p.limit;
    shrink_to(&mut p, limit);
}

/// An empty buffer with room for `len` bytes, whose pages are already mapped:
/// a pooled one when one fits (without wasting more than an eighth of it),
/// else a new one. `None` when the memory cannot be had.
pub fn take(len: usize) -> Option<Vec<u8>> {
    if len >= MIN_POOLED {
        if let Some(b) = take_pooled(len) {
            return Some(b);
        }
    }
    let mut b = Vec::new();
    b.try_reserve_exact(len).ok()?;
    prefault(&mut b);
    Some(b)
}

/// A pooled buffer that fits `len` without wasting more than an eighth.
fn take_pooled(len: usize) -> Option<Vec<u8>> {
    let mut p = pool();
    let best = p.free.iter().enumerate()
        .filter(|(_, (b, _))| b.capacity() >= len && b.capacity() - len <= b.capacity() / 8)
        .min_by_key(|(_, (b, _))| b.capacity())
        .map(|(i, _)| i)?;
    let (b, _) = p.free.remove(best);
    p.held -= b.capacity();
    p.reused += 1;
    Some(b)
}

/// Give a buffer that is no longer needed back for reuse. Small buffers, and
/// any that would take the pool over its limit, are freed (oldest first).
pub fn give(mut buf: Vec<u8>) {
    let cap = buf.capacity();
    if cap < MIN_POOLED {
        return;
    }
    let mut p = pool();
    if cap > p.limit {
        return;
    }
    let room = p.limit - cap;
    shrink_to(&mut p, room);
    if p.free.len() >= MAX_BUFFERS {
        let (b, _) = p.free.remove(0);
        p.held -= b.capacity();
    }
    buf.clear();
    p.held += cap;
    p.free.push((buf, Instant::now()));
}

/// Free every pooled buffer (the worker needs the memory).
pub fn clear() -> usize {
    let mut p = pool();
    let freed = p.held;
    shrink_to(&mut p, 0);
    freed
}

/// Free buffers that were not reused for `idle`.
pub fn trim(idle: Duration) {
    let mut p = pool();
    let before = p.free.len();
    p.free.retain(|(_, at)| at.elapsed() < idle);
    if p.free.len() != before {
        p.held = p.free.iter().map(|(b, _)| b.capacity()).sum();
    }
}

/// As [`take`], but a new buffer's pages are not mapped yet: the caller
/// maps them with [`prefault_range`] as it fills them.
pub fn take_lazy(len: usize) -> Option<Vec<u8>> {
    if len >= MIN_POOLED {
        if let Some(b) = take_pooled(len) {
            return Some(b);
        }
    }
    let mut v = Vec::new();
    v.try_reserve_exact(len).ok()?;
    Some(v)
}

/// Map the pages of `buf`'s spare capacity between `from` and `to` (byte
/// offsets) in one system call, before data is copied there.
pub fn prefault_range(buf: &mut Vec<u8>, from: usize, to: usize) {
    #[cfg(target_os = "linux")]
    if buf.capacity() >= MIN_POOLED {
        const PAGE: usize = 4096;
        let to = to.min(buf.capacity());
        let start = buf.as_mut_ptr() as usize;
        let first = (start + from).div_ceil(PAGE) * PAGE;
        let last = (start + to) / PAGE * PAGE;
        if last > first {
            // SAFETY: the range lies inside the vector's own allocation, which
            // is private writable memory; populating it changes no contents.
            unsafe { libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_POPULATE_WRITE) };
        }
    }
}

/// Bytes held in the pool, and how many buffers were reused so far.
#[cfg(test)]
pub fn stats() -> (u64, u64) {
    let p = pool();
    (p.held as u64, p.reused)
}

fn shrink_to(p: &mut Pool, bytes: usize) {
    // `free` is in the order buffers were given back: oldest first.
    while p.held > bytes {
        let (b, _) = p.free.remove(0);
        p.held -= b.capacity();
    }
}

/// Map the pages of a large new buffer in one system call instead of one
/// page fault per page while data is copied in. Best effort: before Linux
/// 5.14 the call fails and pages fault in as usual.
fn prefault(buf: &mut Vec<u8>) {
    let cap = buf.capacity();
    prefault_range(buf, 0, cap);
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the pool is process-wide.
    #[test]
    fn reuses_within_limit_and_frees_on_demand() {
        let m = 2 * MIN_POOLED;
        set_limit(3 * m as u64);
        let a = take(m).unwrap();
        assert!(a.capacity() >= m && a.is_empty());
        let ptr = a.as_ptr();
        give(a);
        assert_eq!(stats().0, m as u64);
        // reusing that buffer would waste half of it: a new one
        let small = take(m / 2).unwrap();
        assert_ne!(small.as_ptr(), ptr);
        // a fitting request gets the pooled buffer
        let again = take(m - 100).unwrap();
        assert_eq!(again.as_ptr(), ptr);
        assert_eq!(stats(), (0, 1));
        // requests below the pooled size are never served from the pool
        give(again);
        let below = take(MIN_POOLED - 1).unwrap();
        assert_ne!(below.as_ptr(), ptr);
        drop(below);
        let again = take(m).unwrap();
        assert_eq!(again.as_ptr(), ptr);
        // small buffers are not pooled; the limit evicts the oldest
        give(Vec::with_capacity(MIN_POOLED - 1));
        assert_eq!(stats().0, 0);
        drop(small);
        give(again);
        give(Vec::with_capacity(m));
        give(Vec::with_capacity(m));
        assert_eq!(stats().0, 3 * m as u64);
        give(Vec::with_capacity(m));
        assert_eq!(stats().0, 3 * m as u64);
        let newest = take(m).unwrap();
        assert!(newest.as_ptr() != ptr, "the oldest buffer was the one evicted");
        drop(newest);
        assert_eq!(clear(), 2 * m);
        give(Vec::with_capacity(m));
        trim(Duration::ZERO);
        assert_eq!(stats().0, 0);
        // larger than the whole pool: freed
        give(Vec::with_capacity(4 * m));
        assert_eq!(stats().0, 0);
        // at most MAX_BUFFERS, however much room is left (capacity only:
        // these pages are never touched)
        set_limit(1 << 40);
        for _ in 0..MAX_BUFFERS + 3 {
            give(Vec::with_capacity(MIN_POOLED));
        }
        assert_eq!(stats().0, (MAX_BUFFERS * MIN_POOLED) as u64);
        assert_eq!(clear(), MAX_BUFFERS * MIN_POOLED);
        set_limit(0);
    }
}
