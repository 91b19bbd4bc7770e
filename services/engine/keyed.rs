//! Per-key in-process state that disappears when idle (C15).
//!
//! A slot exists only while someone holds a [`SlotRef`] to it: the last
//! holder to let go removes it from the map, under the map's shard lock, so
//! a million distinct keys touched once leave nothing behind, and a key that
//! is busy can never lose its slot to eviction.

use std::{fmt, hash::Hash, ops::Deref, sync::Arc};

use dashmap::DashMap;

/// A map of per-key slots that evicts a slot when its last user drops it.
pub struct KeyedSlots<K: Eq + Hash + Clone, V> {
    slots: Arc<DashMap<K, Arc<V>>>,
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
            .field("len", &self.slots.len())
            .finish()
    }
}

impl<K: Eq + Hash + Clone, V> Default for KeyedSlots<K, V> {
    fn default() -> Self {
        Self {
            slots: Arc::new(DashMap::new()),
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
        let slot = self.slots.get(key)?.clone();
        Some(SlotRef {
            key: key.clone(),
            slot: Some(slot),
            slots: self.slots.clone(),
        })
    }

    /// The keys that have a slot now.
    pub fn keys(&self) -> Vec<K> {
        self.slots.iter().map(|entry| entry.key().clone()).collect()
    }

    /// How many keys have a slot now.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no key has a slot.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// A handle on one key's slot; the slot lives while any handle does.
pub struct SlotRef<K: Eq + Hash + Clone, V> {
    key: K,
    slot: Option<Arc<V>>,
    slots: Arc<DashMap<K, Arc<V>>>,
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
        self.slots
            .remove_if(&self.key, |_, slot| Arc::strong_count(slot) == 1);
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
