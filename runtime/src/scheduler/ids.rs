//! A compact list of ids (tasks, workers or clients) for the scheduler's
//! per-task fields: most such lists hold zero or one id (a task's holders,
//! the clients wanting it, its dependents), so one id is kept inline and only
//! longer lists allocate. 8 bytes (one tagged word) instead of a `Vec`'s 24
//! plus its allocation; derefs to a slice.

use std::ops::Deref;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("the scheduler's compact id lists assume 64-bit pointers");

/// One word: null is the empty list; an odd value holds one id in its upper
/// 32 bits (no provenance, never dereferenced); any other value is a
/// pointer obtained from `Box<Vec<u32>>` (aligned, so even) owning the ids.
pub struct Ids(*mut Vec<u32>);

// SAFETY: an `Ids` owns its boxed vector exclusively, like a `Box<Vec<u32>>`.
unsafe impl Send for Ids {}
// SAFETY: shared access only reads, like `&Box<Vec<u32>>`.
unsafe impl Sync for Ids {}

enum View<'a> {
    Empty,
    One(u32),
    Many(&'a mut Vec<u32>),
}

impl Ids {
    pub const EMPTY: Ids = Ids(std::ptr::null_mut());

    fn one(id: u32) -> Ids {
        Ids(std::ptr::without_provenance_mut(((id as usize) << 32) | 1))
    }

    fn many(v: Vec<u32>) -> Ids {
        Ids(Box::into_raw(Box::new(v)))
    }

    fn view(&mut self) -> View<'_> {
        let bits = self.0.addr();
        if bits == 0 {
            View::Empty
        } else if bits & 1 == 1 {
            View::One((bits >> 32) as u32)
        } else {
            // SAFETY: an even non-null word is the pointer from `many`,
            // owned by `self`, which is borrowed mutably here.
            View::Many(unsafe { &mut *self.0 })
        }
    }

    pub fn push(&mut self, id: u32) {
        match self.view() {
            View::Empty => *self = Ids::one(id),
            View::One(a) => *self = Ids::many(vec![a, id]),
            View::Many(v) => v.push(id),
        }
    }

    /// Keep the ids for which `keep` holds, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&u32) -> bool) {
        match self.view() {
            View::Empty => {}
            View::One(a) => {
                if !keep(&a) {
                    *self = Ids::EMPTY;
                }
            }
            View::Many(v) => {
                v.retain(|x| keep(x));
                match v.len() {
                    0 => *self = Ids::EMPTY,
                    1 => *self = Ids::one(v[0]),
                    _ => {}
                }
            }
        }
    }
}

impl Default for Ids {
    fn default() -> Ids {
        Ids::EMPTY
    }
}

impl Drop for Ids {
    fn drop(&mut self) {
        if let View::Many(v) = self.view() {
            // SAFETY: the pointer came from `Box::into_raw` and is dropped once.
            drop(unsafe { Box::from_raw(v as *mut Vec<u32>) });
        }
    }
}

impl Clone for Ids {
    fn clone(&self) -> Ids {
        match self.len() {
            0 => Ids::EMPTY,
            1 => Ids::one(self[0]),
            _ => Ids::many(self.to_vec()),
        }
    }
}

impl PartialEq for Ids {
    fn eq(&self, other: &Ids) -> bool {
        **self == **other
    }
}

impl Eq for Ids {}

impl std::fmt::Debug for Ids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Deref for Ids {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        let bits = self.0.addr();
        if bits == 0 {
            &[]
        } else if bits & 1 == 1 {
            // The id is the upper half of the word stored in `self`.
            let half = if cfg!(target_endian = "little") { 1 } else { 0 };
            // SAFETY: `self.0` is 8 readable bytes for as long as `self` is
            // borrowed; its upper 32 bits are the id (a plain integer).
            unsafe { std::slice::from_raw_parts((&self.0 as *const *mut Vec<u32> as *const u32).add(half), 1) }
        } else {
            // SAFETY: the pointer from `many`, owned by `self`.
            unsafe { &*self.0 }
        }
    }
}

impl<'a> IntoIterator for &'a Ids {
    type Item = &'a u32;
    type IntoIter = std::slice::Iter<'a, u32>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl IntoIterator for Ids {
    type Item = u32;
    type IntoIter = IntoIter;
    fn into_iter(mut self) -> IntoIter {
        let it = match self.view() {
            View::Empty => IntoIter::One(None),
            View::One(a) => IntoIter::One(Some(a)),
            View::Many(v) => IntoIter::Many(std::mem::take(v).into_iter()),
        };
        // `self` is dropped here: an emptied vector's box is freed.
        it
    }
}

pub enum IntoIter {
    One(Option<u32>),
    Many(std::vec::IntoIter<u32>),
}

impl Iterator for IntoIter {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        match self {
            IntoIter::One(a) => a.take(),
            IntoIter::Many(i) => i.next(),
        }
    }
}

impl From<Vec<u32>> for Ids {
    fn from(v: Vec<u32>) -> Ids {
        match v.len() {
            0 => Ids::EMPTY,
            1 => Ids::one(v[0]),
            _ => Ids::many(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_vec() {
        assert_eq!(std::mem::size_of::<Ids>(), 8);
        let mut ids = Ids::default();
        assert!(ids.is_empty());
        ids.push(7);
        assert_eq!(&*ids, &[7]);
        ids.push(8);
        ids.push(9);
        assert_eq!(&*ids, &[7, 8, 9]);
        assert!(ids.contains(&8) && !ids.contains(&1));
        ids.retain(|&x| x != 8);
        assert_eq!(&*ids, &[7, 9]);
        ids.retain(|&x| x == 9);
        assert_eq!(ids, Ids::one(9));
        ids.retain(|_| false);
        assert_eq!(ids, Ids::EMPTY);
        assert_eq!(Ids::from(vec![1, 2]).len(), 2);
        assert_eq!(Ids::from(vec![3]), Ids::one(3));
        assert_eq!(Ids::from(vec![4, 5]).into_iter().collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(Ids::one(6).into_iter().collect::<Vec<_>>(), vec![6]);
        assert_eq!((&Ids::one(6)).into_iter().count(), 1);
        // Ids using all 32 bits, inline and boxed; clones are deep.
        let mut big = Ids::one(u32::MAX);
        assert_eq!(&*big, &[u32::MAX]);
        let single = big.clone();
        big.push(0);
        big.push(u32::MAX - 1);
        let copy = big.clone();
        big.retain(|&x| x != 0);
        assert_eq!((&*single, &*copy, &*big), (&[u32::MAX][..], &[u32::MAX, 0, u32::MAX - 1][..], &[u32::MAX, u32::MAX - 1][..]));
        assert_eq!(format!("{copy:?}"), "[4294967295, 0, 4294967294]");
    }
}

/// Tasks ready to run, smallest `(priority, id)` first. Tasks mostly become
/// ready in priority order (a submission is walked in graph order), so those
/// are appended to a sorted run and taken from its front in O(1); a task
/// that would break the order goes to a heap. `pop` takes the smaller of the
/// two fronts. A 100k-task burst then costs no heap sifting at all.
#[derive(Debug)]
pub struct ReadyQueue<P: Ord + Copy> {
    run: std::collections::VecDeque<(P, u32)>,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(P, u32)>>,
}

impl<P: Ord + Copy> Default for ReadyQueue<P> {
    fn default() -> Self {
        ReadyQueue { run: Default::default(), heap: Default::default() }
    }
}

impl<P: Ord + Copy> ReadyQueue<P> {
    pub fn push(&mut self, p: P, id: u32) {
        match self.run.back() {
            Some(&back) if (p, id) < back => self.heap.push(std::cmp::Reverse((p, id))),
            _ => self.run.push_back((p, id)),
        }
    }

    pub fn pop(&mut self) -> Option<(P, u32)> {
        match (self.run.front(), self.heap.peek()) {
            (Some(&a), Some(std::cmp::Reverse(b))) if *b < a => self.heap.pop().map(|r| r.0),
            (Some(_), _) => self.run.pop_front(),
            (None, _) => self.heap.pop().map(|r| r.0),
        }
    }

    pub fn len(&self) -> usize {
        self.run.len() + self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.run.is_empty() && self.heap.is_empty()
    }

    /// Every id queued, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.run.iter().map(|&(_, id)| id).chain(self.heap.iter().map(|r| r.0 .1))
    }
}

#[cfg(test)]
mod ready_tests {
    use super::ReadyQueue;

    #[test]
    fn pops_in_order_whatever_the_push_order() {
        let mut q = ReadyQueue::default();
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut all = Vec::new();
        for i in 0..2000u32 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Mostly increasing, with some out-of-order ones.
            let p = if rng.is_multiple_of(5) { (rng % 1000) as i64 } else { i as i64 };
            q.push(p, i);
            all.push((p, i));
            if rng.is_multiple_of(7) {
                let got = q.pop().unwrap();
                all.sort_unstable();
                assert_eq!(got, all.remove(0));
            }
        }
        all.sort_unstable();
        assert_eq!(q.len(), all.len());
        let mut out = Vec::new();
        while let Some(x) = q.pop() {
            out.push(x);
        }
        assert_eq!(out, all);
        assert!(q.is_empty());
    }
}
