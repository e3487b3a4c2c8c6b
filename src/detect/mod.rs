//! Detect: per-identity rolling baselines, the detector kinds, and the sharded engine.
//!
//! A detector is a file in `detectors/` ([`spec::DetectorSpec`]) that picks a
//! [`spec::Kind`] (engine code in [`kinds`]) and sets its thresholds. The
//! [`engine::Engine`] routes each event by identity to one of its shards (a
//! worker thread owning that identity's state), drives every detector with
//! event time and a bounded-lateness watermark, applies suppression, and turns
//! findings into [`alert::Alert`]s.

pub mod alert;
pub mod engine;
pub mod kinds;
pub mod spec;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::event::NormalizedEvent;
use crate::identity::Registry;
pub use alert::{Alert, Finding, Severity};
pub use engine::{Engine, EngineSettings, Flag, Processed};
pub use spec::{DetectorSpec, Kind, SpecError};

/// What a detector may look at besides the event.
pub struct Context<'a> {
    pub registry: &'a Registry,
    /// Event time up to which windows are complete (max event time − allowed lateness).
    pub watermark: DateTime<Utc>,
    pub spec: &'a DetectorSpec,
}

impl Context<'_> {
    /// Whether an identity first seen at `first_seen` is still learning at `now`.
    pub fn learning(&self, first_seen: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        (now - first_seen).num_seconds() < self.spec.learning_period_secs as i64
    }
}

/// One detector instance in one shard. It keeps state only for the identities
/// routed to its shard, bounded by [`IdentityMap`].
pub trait Detector: Send {
    /// An event that passed the detector's filter. Late events of windowed detectors are not passed.
    fn observe(&mut self, event: &NormalizedEvent, cx: &Context<'_>, out: &mut Vec<Finding>);

    /// The watermark moved: close windows that ended at or before it.
    fn advance(&mut self, _cx: &Context<'_>, _out: &mut Vec<Finding>) {}

    /// Whether the detector aggregates over windows (late events are then dropped and counted).
    fn windowed(&self) -> bool {
        false
    }

    /// The detector's per-identity state.
    fn store(&self) -> &dyn StateStore;

    fn store_mut(&mut self) -> &mut dyn StateStore;

    /// Identities tracked now.
    fn tracked(&self) -> usize {
        self.store().tracked()
    }

    /// Forgets identities not seen since `before`; returns how many.
    fn evict_idle(&mut self, before: DateTime<Utc>) -> usize {
        self.store_mut().evict_idle(before)
    }

    /// State per identity, for snapshots.
    fn save(&self) -> Vec<(String, serde_json::Value)> {
        self.store().save()
    }

    /// Restores one identity's state from a snapshot.
    fn load(&mut self, key: String, state: serde_json::Value) -> Result<(), String> {
        self.store_mut().load(key, state)
    }
}

/// Per-identity state as the engine handles it: counted, evicted, saved, restored.
pub trait StateStore {
    fn tracked(&self) -> usize;
    /// Estimated bytes of the table: its slots and keys, without the heap parts
    /// inside each state (window buffers), so a lower bound. O(1).
    fn approx_bytes(&self) -> usize;
    fn evict_idle(&mut self, before: DateTime<Utc>) -> usize;
    fn save(&self) -> Vec<(String, serde_json::Value)>;
    fn load(&mut self, key: String, state: serde_json::Value) -> Result<(), String>;
}

impl<S: Default + Serialize + DeserializeOwned> StateStore for IdentityMap<S> {
    fn tracked(&self) -> usize {
        self.len()
    }

    fn approx_bytes(&self) -> usize {
        // A key is an identity such as `app:crm-sync-bot` or an email: ~32 bytes on the heap.
        const KEY_HEAP: usize = 32;
        let slot = std::mem::size_of::<(String, (S, DateTime<Utc>))>() + 1;
        self.entries.capacity() * slot + self.entries.len() * KEY_HEAP
    }

    fn evict_idle(&mut self, before: DateTime<Utc>) -> usize {
        IdentityMap::evict_idle(self, before)
    }

    fn save(&self) -> Vec<(String, serde_json::Value)> {
        IdentityMap::save(self)
    }

    fn load(&mut self, key: String, state: serde_json::Value) -> Result<(), String> {
        IdentityMap::load(self, key, state)
    }
}

/// Per-identity state with a hard cap: when full, the least recently seen
/// identities are evicted first. `last_seen` is event time.
#[derive(Debug)]
pub struct IdentityMap<S> {
    entries: HashMap<String, (S, DateTime<Utc>)>,
    max: usize,
    evicted: u64,
}

impl<S: Default + Serialize + DeserializeOwned> IdentityMap<S> {
    pub fn new(max: usize) -> Self {
        IdentityMap {
            entries: HashMap::new(),
            max: max.max(1),
            evicted: 0,
        }
    }

    /// The state of `key`, created if new; marks it seen at `now`.
    pub fn entry(&mut self, key: &str, now: DateTime<Utc>) -> &mut S {
        if !self.entries.contains_key(key) {
            if self.entries.len() >= self.max {
                self.evict_oldest();
            }
            self.entries.insert(key.to_string(), (S::default(), now));
        }
        let (state, seen) = self
            .entries
            .get_mut(key)
            .unwrap_or_else(|| unreachable!("inserted above"));
        if now > *seen {
            *seen = now;
        }
        state
    }

    pub fn get(&self, key: &str) -> Option<&S> {
        self.entries.get(key).map(|(s, _)| s)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut S)> {
        self.entries.iter_mut().map(|(k, (s, _))| (k, s))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Identities evicted to stay under the cap.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Evicts the least recently seen tenth (at least one) to make room.
    fn evict_oldest(&mut self) {
        let n = (self.entries.len() / 10).max(1);
        let mut seen: Vec<(DateTime<Utc>, String)> = self
            .entries
            .iter()
            .map(|(k, (_, t))| (*t, k.clone()))
            .collect();
        seen.sort();
        for (_, key) in seen.into_iter().take(n) {
            self.entries.remove(&key);
            self.evicted += 1;
        }
    }

    pub fn evict_idle(&mut self, before: DateTime<Utc>) -> usize {
        let start = self.entries.len();
        self.entries.retain(|_, (_, seen)| *seen >= before);
        start - self.entries.len()
    }

    pub fn save(&self) -> Vec<(String, serde_json::Value)> {
        let mut out: Vec<(String, serde_json::Value)> = self
            .entries
            .iter()
            .map(|(k, (s, seen))| (k.clone(), serde_json::json!({ "seen": seen, "state": s })))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn load(&mut self, key: String, value: serde_json::Value) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct Saved<S> {
            seen: DateTime<Utc>,
            state: S,
        }
        let saved: Saved<S> = serde_json::from_value(value).map_err(|e| e.to_string())?;
        self.entries.insert(key, (saved.state, saved.seen));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn identity_map_is_bounded_and_evicts_least_recent() {
        let t = |s: i64| Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap();
        let mut map: IdentityMap<u32> = IdentityMap::new(3);
        *map.entry("a", t(1)) += 1;
        *map.entry("b", t(2)) += 1;
        *map.entry("c", t(3)) += 1;
        *map.entry("a", t(4)) += 1;
        *map.entry("d", t(5)) += 1;
        assert_eq!(map.len(), 3);
        assert!(map.get("b").is_none(), "b was the least recently seen");
        assert_eq!(map.get("a"), Some(&2));
        assert_eq!(map.evict_idle(t(5)), 2);
        let saved = map.save();
        let mut other: IdentityMap<u32> = IdentityMap::new(3);
        for (k, v) in saved {
            other.load(k, v).unwrap();
        }
        assert_eq!(other.get("d"), Some(&1));
    }
}
