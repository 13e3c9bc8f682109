//! Large Python values in shared memory, as Ray's object store keeps them.
//!
//! A Python executor writes a large result (a framed pickle-5 with its
//! buffers, e.g. numpy arrays) into an anonymous memory file (`memfd`) and
//! tells its worker the descriptor number; the worker opens that file
//! through `/proc/<executor>/fd/<n>`, maps it read-only and keeps the
//! descriptor. The value then lives in the worker's store as that mapping
//! ([`Blob::Shared`]): it never crosses a pipe. An executor that needs it
//! opens `/proc/<worker>/fd/<n>` and maps it copy-on-write, so arrays
//! unpickled from it are views of the same physical pages (writable; a
//! write copies the page it touches, never changes the stored value).
//!
//! Only processes of the same user can open another's descriptors through
//! `/proc`, and a memory file has no name anywhere in the file system:
//! nothing is left behind when a worker is killed.
//! Spilling, transfers to peers and results to clients read the mapping
//! like any bytes.
//!
//! Memory files are recycled, as Ray's store reuses its memory: writing a
//! value into pages that are already allocated and mapped costs a third of
//! writing it into a new file (page allocation and faults dominate). When
//! the worker drops a value, the executor that wrote it is told (its
//! [`Recycler`]) and reuses the file for a later result. A file is given
//! back only when no executor maps it any more: an executor that maps a
//! value pins it (the worker keeps a reference) until it says its mapping
//! is gone, so an array a task kept never sees its bytes change.

use std::fs::File;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Results of at least this many bytes go through shared memory.
pub const MIN_SHARED: usize = 1 << 20;

/// Bytes of shared values alive in this process (mapped by the worker
/// whether or not its own pages were touched: counted against the
/// worker's memory limit).
static LIVE: AtomicU64 = AtomicU64::new(0);

/// Bytes of shared values this process holds now.
pub fn live_bytes() -> u64 {
    LIVE.load(Ordering::Relaxed)
}

/// A read-only shared mapping of a whole memory file, with the file kept
/// open so executors can map it too.
pub struct Shared {
    file: File,
    ptr: *const u8,
    len: usize,
    /// The executor that wrote the file and its descriptor number there:
    /// told when this value is dropped, so it can reuse the file.
    origin: Option<(Arc<Recycler>, u32)>,
}

/// The memory files of one executor process that the worker no longer
/// holds: given back to the executor (by descriptor number in that
/// process) with its next batch, or when its worker thread is idle.
#[derive(Default)]
pub struct Recycler {
    freed: std::sync::Mutex<Vec<u32>>,
    /// False once the executor is gone (its files went with it).
    open: std::sync::atomic::AtomicBool,
}

impl Recycler {
    pub fn new() -> Arc<Recycler> {
        Arc::new(Recycler { freed: Default::default(), open: std::sync::atomic::AtomicBool::new(true) })
    }

    /// The executor's file `fd` is free for reuse.
    pub fn free(&self, fd: u32) {
        if self.open.load(Ordering::Acquire) {
            self.freed.lock().unwrap_or_else(|p| p.into_inner()).push(fd);
        }
    }

    /// The files freed since the last call.
    pub fn take(&self) -> Vec<u32> {
        std::mem::take(&mut *self.freed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The executor is gone: nothing is given back any more.
    pub fn close(&self) {
        self.open.store(false, Ordering::Release);
        self.take();
    }
}

// SAFETY: the mapping is read-only for its whole life and unmapped only in
// Drop, so shared references from any thread are sound.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Map `len` bytes of descriptor `fd` of process `pid` (a memory file a
    /// child executor wrote). The file must be at least `len` bytes long.
    /// `recycler`: the executor's, told when this value is dropped.
    pub fn open_from(pid: u32, fd: u32, len: usize, recycler: Option<&Arc<Recycler>>) -> Result<Shared, String> {
        let path = format!("/proc/{pid}/fd/{fd}");
        let file = File::open(&path).map_err(|e| format!("cannot open the Python executor's shared value {path}: {e}"))?;
        let size = file.metadata().map_err(|e| format!("{path}: {e}"))?.len();
        if size < len as u64 {
            return Err(format!("the Python executor's shared value {path} holds {size} bytes, not the {len} announced"));
        }
        let origin = recycler.map(|r| (r.clone(), fd));
        Shared::map(file, len, origin).map_err(|e| format!("cannot map the Python executor's shared value {path} ({len} bytes): {e}"))
    }

    fn map(file: File, len: usize, origin: Option<(Arc<Recycler>, u32)>) -> std::io::Result<Shared> {
        if len == 0 {
            return Ok(Shared { file, ptr: std::ptr::NonNull::<u8>::dangling().as_ptr(), len, origin });
        }
        // SAFETY: a fresh read-only shared mapping of an open file; checked below.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        LIVE.fetch_add(len as u64, Ordering::Relaxed);
        Ok(Shared { file, ptr: ptr as *const u8, len, origin })
    }

    /// The descriptor number in this process (for `/proc/<pid>/fd/<n>`).
    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping made in `map`, unmapped once.
            unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
            LIVE.fetch_sub(self.len as u64, Ordering::Relaxed);
        }
        if let Some((recycler, fd)) = &self.origin {
            recycler.free(*fd);
        }
    }
}

impl Deref for Shared {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `len` bytes mapped read-only at `ptr` for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shared({} bytes, fd {})", self.len, self.fd())
    }
}

/// The bytes of a pickled value: on the heap, or a shared mapping.
#[derive(Clone, Debug)]
pub enum Blob {
    Heap(Vec<u8>),
    Shared(Arc<Shared>),
}

impl Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Blob::Heap(v) => v,
            Blob::Shared(s) => s,
        }
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Blob) -> bool {
        self[..] == other[..]
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Blob {
        Blob::Heap(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A memory file of this process with `data` in it, as an executor makes one.
    fn memfd(data: &[u8]) -> File {
        // SAFETY: memfd_create with a valid C string; the descriptor is owned below.
        let fd = unsafe { libc::memfd_create(c"taskfarm-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nobody else owns.
        let mut f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.write_all(data).unwrap();
        f
    }

    #[test]
    fn a_memory_file_of_a_process_is_mapped_through_proc_and_counted_while_alive() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let f = memfd(&data);
        let before = live_bytes();
        let s = Shared::open_from(std::process::id(), f.as_raw_fd() as u32, data.len(), None).unwrap();
        drop(f); // the mapping and its own descriptor keep the file alive
        assert_eq!(&s[..], &data[..]);
        assert!(live_bytes() >= before + data.len() as u64);
        // another opener (an executor) sees the same bytes through the kept descriptor
        let again = Shared::open_from(std::process::id(), s.fd() as u32, data.len(), None).unwrap();
        assert_eq!(&again[..10], &data[..10]);
        let blob = Blob::Shared(Arc::new(s));
        assert_eq!(blob, Blob::Heap(data.clone()));
        let mid = live_bytes();
        drop(blob);
        drop(again);
        // (no other test of this binary maps shared values)
        assert_eq!(mid - live_bytes(), 2 * data.len() as u64);
    }

    #[test]
    fn a_dropped_value_is_given_back_to_the_executor_that_wrote_it_until_it_is_gone() {
        let f = memfd(&[7u8; 4096]);
        let r = Recycler::new();
        let fd = f.as_raw_fd() as u32;
        let s = Arc::new(Shared::open_from(std::process::id(), fd, 4096, Some(&r)).unwrap());
        let copy = s.clone();
        drop(s);
        assert!(r.take().is_empty(), "still held by a clone");
        drop(copy);
        assert_eq!(r.take(), vec![fd]);
        let s = Shared::open_from(std::process::id(), fd, 4096, Some(&r)).unwrap();
        r.close();
        drop(s);
        assert!(r.take().is_empty(), "an executor that is gone is told nothing");
    }

    #[test]
    fn a_short_file_or_a_missing_descriptor_is_refused_with_the_reason() {
        let f = memfd(b"abc");
        let e = Shared::open_from(std::process::id(), f.as_raw_fd() as u32, 10, None).unwrap_err();
        assert!(e.contains("holds 3 bytes, not the 10 announced"), "{e}");
        let e = Shared::open_from(std::process::id(), 987_654, 10, None).unwrap_err();
        assert!(e.contains("cannot open the Python executor's shared value"), "{e}");
    }
}
