//! Hash sets and maps keyed by task id, with a fast fixed hash.

use crate::protocol::TaskId;
use std::collections::{HashMap, HashSet};

/// Sets and maps keyed by task id. Ids are handed out by the scheduler
/// itself (no one else chooses them), so a fast fixed hash is safe here;
/// keys chosen by clients keep the randomly seeded default hasher.
pub(crate) type IdSet = HashSet<TaskId, IdHash>;
pub(crate) type IdMap<V> = HashMap<TaskId, V, IdHash>;

/// Multiplicative (Fibonacci) hashing of a 32-bit id.
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

#[derive(Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
