//! The taskfarm binary's memory allocator: in the scheduler and client
//! processes, mimalloc for small blocks; everywhere else, and for large
//! blocks, the system allocator (glibc).
//!
//! The scheduler makes and frees several small blocks per task (keys,
//! messages, id lists); with glibc's allocator that was about 40 % of its
//! time, and mimalloc halves the scheduler's cost per task
//! (docs/benchmarks.md). Workers keep glibc, whose behaviour their memory
//! limit relies on: with the mmap threshold a worker sets
//! (`util::release_large_frees`), each large value has its own mapping and
//! is given back to the system when freed, so the resident memory the
//! thresholds judge follows the values held. (mimalloc's arenas take
//! transparent huge pages where the system makes them the default, which
//! adds tens of MiB of resident memory to a worker; turning that off for the
//! process would turn it off for the tasks' commands too.)
//!
//! A process opts in once, early (`small_blocks_from_mimalloc`); from then
//! on a small block is freed by mimalloc if mimalloc's page map holds it,
//! by the system allocator otherwise (blocks made before the switch).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// Blocks larger than this always come from the system allocator.
pub const SMALL_MAX: usize = 256 << 10;

static MIMALLOC: AtomicBool = AtomicBool::new(false);

/// From now on, small blocks of this process come from mimalloc (for the
/// scheduler and clients; not for workers, see the module text). Cannot be
/// undone. No effect on blocks unless the binary's global allocator is
/// `TaskfarmAlloc`.
pub fn small_blocks_from_mimalloc() {
    // Make sure mimalloc (and its page map) is initialised before any block
    // is looked up in it.
    // SAFETY: a block of mimalloc's, freed by mimalloc.
    unsafe { libmimalloc_sys::mi_free(libmimalloc_sys::mi_malloc(8)) };
    MIMALLOC.store(true, Ordering::Release);
}

pub struct TaskfarmAlloc;

/// Whether a new block of `size` bytes comes from mimalloc.
fn new_from_mimalloc(size: usize) -> bool {
    size <= SMALL_MAX && MIMALLOC.load(Ordering::Relaxed)
}

/// Whether the existing block `p` of `size` bytes is mimalloc's.
fn owned_by_mimalloc(p: *mut u8, size: usize) -> bool {
    // SAFETY: mi_is_in_heap_region only looks the address up in mimalloc's
    // page map, initialised before MIMALLOC was set.
    size <= SMALL_MAX && MIMALLOC.load(Ordering::Acquire) && unsafe { libmimalloc_sys::mi_is_in_heap_region(p.cast()) }
}

// SAFETY: every block is made by one allocator and given back to the same
// one: mimalloc's blocks are recognised by its page map, all others are the
// system allocator's. A resize between the two moves the block (allocate,
// copy, free).
unsafe impl GlobalAlloc for TaskfarmAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if new_from_mimalloc(l.size()) { unsafe { mimalloc::MiMalloc.alloc(l) } } else { unsafe { System.alloc(l) } }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if new_from_mimalloc(l.size()) { unsafe { mimalloc::MiMalloc.alloc_zeroed(l) } } else { unsafe { System.alloc_zeroed(l) } }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if owned_by_mimalloc(p, l.size()) { unsafe { mimalloc::MiMalloc.dealloc(p, l) } } else { unsafe { System.dealloc(p, l) } }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        match (owned_by_mimalloc(p, l.size()), new_from_mimalloc(new_size)) {
            (true, true) => unsafe { mimalloc::MiMalloc.realloc(p, l, new_size) },
            (false, false) => unsafe { System.realloc(p, l, new_size) },
            _ => {
                // SAFETY: the caller guarantees `new_size`, rounded up to
                // `l.align()`, does not overflow isize (GlobalAlloc::realloc).
                let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, l.align()) };
                let q = unsafe { self.alloc(new_layout) };
                if !q.is_null() {
                    // SAFETY: both blocks are valid for the smaller size and
                    // distinct (q was just allocated).
                    unsafe {
                        std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
                        self.dealloc(p, l);
                    }
                }
                q
            }
        }
    }
}

/// Give freed memory back to the system now (after a large submission was
/// decoded and dropped): both allocators' free lists.
pub fn release_freed_memory() {
    // SAFETY: mi_collect only returns free memory of mimalloc's heaps; it is
    // harmless when mimalloc is not the global allocator (nothing to free).
    unsafe { libmimalloc_sys::mi_collect(true) };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocate, fill, resize through both allocators and back, check.
    unsafe fn roundtrip(a: &TaskfarmAlloc, align: usize) {
        let l = Layout::from_size_align(1000, align).unwrap();
        unsafe {
            let p = a.alloc(l);
            assert!(!p.is_null() && (p as usize).is_multiple_of(align));
            for i in 0..1000 {
                *p.add(i) = (i % 251) as u8;
            }
            let q = a.realloc(p, l, SMALL_MAX + 1);
            assert!(!q.is_null() && (q as usize).is_multiple_of(align));
            let l2 = Layout::from_size_align(SMALL_MAX + 1, align).unwrap();
            let r = a.realloc(q, l2, 4 * SMALL_MAX);
            let l3 = Layout::from_size_align(4 * SMALL_MAX, align).unwrap();
            let s = a.realloc(r, l3, 500);
            assert!((s as usize).is_multiple_of(align));
            for i in 0..500 {
                assert_eq!(*s.add(i), (i % 251) as u8, "byte {i} (align {align})");
            }
            a.dealloc(s, Layout::from_size_align(500, align).unwrap());
            let z = a.alloc_zeroed(l2);
            assert!((0..SMALL_MAX + 1).step_by(4093).all(|i| *z.add(i) == 0));
            a.dealloc(z, l2);
        }
    }

    #[test]
    fn blocks_go_back_to_the_allocator_that_made_them_across_the_switch() {
        let a = TaskfarmAlloc;
        let small = Layout::from_size_align(64, 8).unwrap();
        unsafe {
            // made by the system allocator before the switch
            let before = a.alloc(small);
            let grown_before = a.alloc(small);
            assert!(!libmimalloc_sys::mi_is_in_heap_region(before.cast()));
            for align in [1usize, 8, 64, 4096] {
                roundtrip(&a, align);
            }
            small_blocks_from_mimalloc();
            let after = a.alloc(small);
            assert!(libmimalloc_sys::mi_is_in_heap_region(after.cast()), "small blocks come from mimalloc after the switch");
            let large = Layout::from_size_align(SMALL_MAX + 1, 8).unwrap();
            let big = a.alloc(large);
            assert!(!libmimalloc_sys::mi_is_in_heap_region(big.cast()), "large blocks stay with the system allocator");
            for align in [1usize, 8, 64, 4096] {
                roundtrip(&a, align);
            }
            // a block from before the switch, resized and freed after it
            *grown_before = 7;
            let moved = a.realloc(grown_before, small, 128);
            assert_eq!(*moved, 7);
            assert!(libmimalloc_sys::mi_is_in_heap_region(moved.cast()), "moved into mimalloc when resized");
            a.dealloc(moved, Layout::from_size_align(128, 8).unwrap());
            a.dealloc(before, small);
            a.dealloc(after, small);
            a.dealloc(big, large);
        }
    }
}
