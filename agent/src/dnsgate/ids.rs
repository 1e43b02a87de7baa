//! Fresh transaction ids for forwarded queries: random (a keyed hash of a
//! counter), never one still waiting for its answer. An answer is taken
//! only with an id we chose, so an off-path forger must guess it.

use std::{
    collections::{HashMap, hash_map::RandomState},
    hash::BuildHasher as _,
};

#[derive(Default)]
pub(crate) struct FreshIds {
    key: RandomState,
    n: u64,
}

impl FreshIds {
    /// An id not in `taken` (the caller keeps `taken` below 65,536).
    pub(crate) fn next<V>(&mut self, taken: &HashMap<u16, V>) -> u16 {
        loop {
            self.n += 1;
            let id = self.key.hash_one(self.n) as u16;
            if !taken.contains_key(&id) {
                return id;
            }
        }
    }
}
