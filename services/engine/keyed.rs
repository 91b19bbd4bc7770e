//! Per-key in-process state that disappears when idle (C15).
//!
//! A slot exists only while someone holds a [`SlotRef`] to it: the last
//! holder to let go removes it from the map, under the map's shard lock, so
//! a million distinct keys touched once leave nothing behind, and a key that
//! is busy can never lose its slot to eviction.
//!
//! The map's table also gives back what a crowd of keys made it grow: a
//! hash table keeps its capacity when entries leave, so after a million
//! resident keys are evicted it would still hold a million-entry table
//! (tens of MB). Every [`SHRINK_CHECK_EVERY`] evictions the map is shrunk
//! when it is at most a quarter full, so the work is amortised and the
//! table ends within a small factor of what is live.

use std::{
    fmt,
    hash::Hash,
    ops::Deref,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use dashmap::DashMap;

/// Evictions between two looks at the table's fill.
const SHRINK_CHECK_EVERY: usize = 1024;
/// Tables this small are left alone.
const SHRINK_ABOVE: usize = 4096;

struct Shared<K: Eq + Hash + Clone, V> {
    map: DashMap<K, Arc<V>>,
    evictions: AtomicUsize,
}

impl<K: Eq + Hash + Clone, V> Shared<K, V> {
    /// Called after an eviction: now and then, shrink a mostly empty table.
    fn evicted(&self) {
        let n = self.evictions.fetch_add(1, Ordering::Relaxed) + 1;
        if n % SHRINK_CHECK_EVERY != 0 {
            return;
        }
        let capacity = self.map.capacity();
        if capacity > SHRINK_ABOVE && self.map.len() * 4 < capacity {
            self.map.shrink_to_fit();
        }
    }
}

/// A map of per-key slots that evicts a slot when its last user drops it.
pub struct KeyedSlots<K: Eq + Hash + Clone, V> {
    slots: Arc<Shared<K, V>>,
}

impl<K: Eq + Hash + Clone, V> Clone for KeyedSlots<K, V> {
    fn clone(&self) -> Self {
        Self {
            slots: self.slots.clone(),
        }
    }
}

impl<K: Eq + Hash + Clone, V> fmt::Debug for KeyedSlots<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedSlots")
            .field("len", &self.slots.map.len())
            .finish()
    }
}

impl<K: Eq + Hash + Clone, V> Default for KeyedSlots<K, V> {
    fn default() -> Self {
        Self {
            slots: Arc::new(Shared {
                map: DashMap::new(),
                evictions: AtomicUsize::new(0),
            }),
        }
    }
}

impl<K: Eq + Hash + Clone, V> KeyedSlots<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The slot for `key`, created with `make` if absent.
    pub fn acquire(&self, key: &K, make: impl FnOnce() -> V) -> SlotRef<K, V> {
        let slot = self
            .slots
            .map
            .entry(key.clone())
            .or_insert_with(|| Arc::new(make()))
            .clone();
        SlotRef {
            key: key.clone(),
            slot: Some(slot),
            slots: self.slots.clone(),
        }
    }

    /// The slot for `key` if someone holds it now.
    pub fn get(&self, key: &K) -> Option<SlotRef<K, V>> {
        let slot = self.slots.map.get(key)?.clone();
        Some(SlotRef {
            key: key.clone(),
            slot: Some(slot),
            slots: self.slots.clone(),
        })
    }

    /// The keys that have a slot now.
    pub fn keys(&self) -> Vec<K> {
        self.slots
            .map
            .iter()
            .map(|entry| entry.key().clone())
            .collect()
    }

    /// How many keys have a slot now.
    pub fn len(&self) -> usize {
        self.slots.map.len()
    }

    /// True when no key has a slot.
    pub fn is_empty(&self) -> bool {
        self.slots.map.is_empty()
    }

    /// How many keys the map's table has room for without growing.
    pub fn capacity(&self) -> usize {
        self.slots.map.capacity()
    }
}

/// A handle on one key's slot; the slot lives while any handle does.
pub struct SlotRef<K: Eq + Hash + Clone, V> {
    key: K,
    slot: Option<Arc<V>>,
    slots: Arc<Shared<K, V>>,
}

impl<K: Eq + Hash + Clone, V> SlotRef<K, V> {
    /// The value itself, for a holder that needs it only while this
    /// reference keeps the key's slot (it does not keep the slot).
    pub(crate) fn shared(&self) -> Arc<V> {
        self.slot.clone().expect("slot present until drop")
    }
}

impl<K: Eq + Hash + Clone, V> Deref for SlotRef<K, V> {
    type Target = V;

    fn deref(&self) -> &V {
        self.slot.as_ref().expect("slot present until drop")
    }
}

impl<K: Eq + Hash + Clone, V> Drop for SlotRef<K, V> {
    fn drop(&mut self) {
        drop(self.slot.take());
        // Only the map's own reference left: nobody uses the slot. The check
        // and the removal happen under the shard lock, so a concurrent
        // `acquire` either sees the slot (and keeps it alive) or makes anew.
        let evicted = self
            .slots
            .map
            .remove_if(&self.key, |_, slot| Arc::strong_count(slot) == 1);
        if evicted.is_some() {
            // After the shard lock is released (and the slot dropped).
            drop(evicted);
            self.slots.evicted();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_slot_lives_while_held_and_goes_with_its_last_holder() {
        let slots: KeyedSlots<u32, AtomicUsize> = KeyedSlots::new();
        let a = slots.acquire(&1, || AtomicUsize::new(0));
        let b = slots.acquire(&1, || AtomicUsize::new(100));
        a.fetch_add(1, Ordering::SeqCst);
        assert_eq!(b.load(Ordering::SeqCst), 1, "both see one slot");
        drop(a);
        assert_eq!(slots.len(), 1);
        drop(b);
        assert!(slots.is_empty());
    }

    #[test]
    fn a_million_keys_touched_once_leave_nothing() {
        let slots: KeyedSlots<u64, ()> = KeyedSlots::new();
        for key in 0..1_000_000u64 {
            let _slot = slots.acquire(&key, || ());
        }
        assert!(slots.is_empty());
    }

    #[test]
    fn the_table_shrinks_after_a_crowd_of_keys_leaves() {
        let slots: KeyedSlots<u64, ()> = KeyedSlots::new();
        let held: Vec<_> = (0..200_000u64).map(|k| slots.acquire(&k, || ())).collect();
        let grown = slots.capacity();
        assert!(grown >= 200_000);
        drop(held);
        assert!(slots.is_empty());
        // Without shrinking the table would keep room for 200,000 keys.
        assert!(
            slots.capacity() < 20_000,
            "capacity {} after eviction (was {grown})",
            slots.capacity()
        );
    }

    #[test]
    fn concurrent_holders_never_lose_a_live_slot() {
        let slots: KeyedSlots<u8, AtomicUsize> = KeyedSlots::new();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        let held = slots.acquire(&7, || AtomicUsize::new(0));
                        held.fetch_add(1, Ordering::SeqCst);
                        // While held, the slot in the map is this one.
                        let again = slots.get(&7).expect("held slot is present");
                        assert!(std::ptr::eq(&*held, &*again));
                    }
                });
            }
        });
        assert!(slots.is_empty());
    }
}
