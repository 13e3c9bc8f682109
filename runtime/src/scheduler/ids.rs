//! A compact list of ids (tasks, workers or clients) for the scheduler's
//! per-task fields: most such lists hold zero or one id (a task's holders,
//! the clients wanting it, its dependents), so one id is kept inline and only
//! longer lists allocate. 16 bytes instead of a `Vec`'s 24 plus its
//! allocation; derefs to a slice.

use std::ops::Deref;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Ids {
    #[default]
    Empty,
    One(u32),
    Many(Box<Vec<u32>>),
}

impl Ids {
    pub fn push(&mut self, id: u32) {
        match self {
            Ids::Empty => *self = Ids::One(id),
            Ids::One(a) => *self = Ids::Many(Box::new(vec![*a, id])),
            Ids::Many(v) => v.push(id),
        }
    }

    /// Keep the ids for which `keep` holds, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&u32) -> bool) {
        match self {
            Ids::Empty => {}
            Ids::One(a) => {
                if !keep(a) {
                    *self = Ids::Empty;
                }
            }
            Ids::Many(v) => {
                v.retain(|x| keep(x));
                match v.len() {
                    0 => *self = Ids::Empty,
                    1 => *self = Ids::One(v[0]),
                    _ => {}
                }
            }
        }
    }
}

impl Deref for Ids {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        match self {
            Ids::Empty => &[],
            Ids::One(a) => std::slice::from_ref(a),
            Ids::Many(v) => v,
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
    fn into_iter(self) -> IntoIter {
        match self {
            Ids::Empty => IntoIter::One(None),
            Ids::One(a) => IntoIter::One(Some(a)),
            Ids::Many(v) => IntoIter::Many(v.into_iter()),
        }
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
            0 => Ids::Empty,
            1 => Ids::One(v[0]),
            _ => Ids::Many(Box::new(v)),
        }
    }
}

/// Task ids by key, the key itself stored only once, in the task: a hash
/// table of ids whose hashing and comparing look the key up in the tasks.
/// Keys come from clients, so the hash is randomly seeded.
#[derive(Default)]
pub struct KeyIndex {
    table: hashbrown::HashTable<u32>,
    seed: hashbrown::DefaultHashBuilder,
}

/// The hash of an indexed id, for the table to rehash when it grows.
fn rehash<'a, 's, K: Fn(u32) -> &'a str + 's>(seed: &'s hashbrown::DefaultHashBuilder, key_of: K) -> impl Fn(&u32) -> u64 + 's {
    use std::hash::BuildHasher;
    move |&id| seed.hash_one(key_of(id))
}

impl KeyIndex {
    fn hash(&self, key: &str) -> u64 {
        use std::hash::BuildHasher;
        self.seed.hash_one(key)
    }

    /// The id of `key`; `key_of` gives the key of an id.
    pub fn get<'a>(&self, key: &str, key_of: impl Fn(u32) -> &'a str) -> Option<u32> {
        self.table.find(self.hash(key), |&id| key_of(id) == key).copied()
    }

    /// Index `id` under `key` (not indexed yet).
    pub fn insert<'a>(&mut self, key: &str, id: u32, key_of: impl Fn(u32) -> &'a str) {
        let h = self.hash(key);
        self.table.insert_unique(h, id, rehash(&self.seed, key_of));
    }

    /// Forget `key` if it is indexed as `id`.
    pub fn remove(&mut self, key: &str, id: u32) {
        if let Ok(e) = self.table.find_entry(self.hash(key), |&x| x == id) {
            e.remove();
        }
    }

    /// Room for `n` more keys without rehashing.
    pub fn reserve<'a>(&mut self, n: usize, key_of: impl Fn(u32) -> &'a str) {
        self.table.reserve(n, rehash(&self.seed, key_of));
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_vec() {
        assert_eq!(std::mem::size_of::<Ids>(), 16);
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
        assert_eq!(ids, Ids::One(9));
        ids.retain(|_| false);
        assert_eq!(ids, Ids::Empty);
        assert_eq!(Ids::from(vec![1, 2]).len(), 2);
        assert_eq!(Ids::from(vec![3]), Ids::One(3));
        assert_eq!(Ids::from(vec![4, 5]).into_iter().collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(Ids::One(6).into_iter().collect::<Vec<_>>(), vec![6]);
        assert_eq!((&Ids::One(6)).into_iter().count(), 1);
    }
}
