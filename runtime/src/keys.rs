//! An index of keys (task names) to ids that stores no key of its own: the
//! keys stay where they are (the scheduler's key buffer, a parsed graph's
//! tasks) and are looked up through a function. Used by the graph parser and
//! the scheduler alike.

/// Task ids by key, the key itself stored only once, in the task: a hash
/// table of ids whose hashing and comparing look the key up in the tasks.
/// Keys come from clients, so the hash is randomly seeded. Also the key
/// index of a parsed graph (ids are positions in its task list).
#[derive(Clone, Debug, Default)]
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
