//! Telemetry: counters of what the pipeline did, and rate-limited logging of bad input.
//!
//! Labels are fixed and low-cardinality (format, category, reason), never an identity.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::decode::DecodeError;
use crate::detect::Alert;
use crate::event::{Category, IdentityStatus, NormalizedEvent, Product, SourceKind};

const SOURCES: [SourceKind; 3] = [SourceKind::Sso, SourceKind::Gateway, SourceKind::Secrets];

/// Why a record is dead-lettered: every decode error's reason, and an enriched
/// event too large for its topic even without its vendor record.
pub const DEAD_LETTER_REASONS: [&str; DecodeError::REASONS.len() + 1] = {
    let mut all = [EVENT_TOO_LARGE; DecodeError::REASONS.len() + 1];
    let mut i = 0;
    while i < DecodeError::REASONS.len() {
        all[i] = DecodeError::REASONS[i];
        i += 1;
    }
    all
};

/// The dead-letter reason of an enriched event that cannot fit its topic.
pub const EVENT_TOO_LARGE: &str = "event_too_large";

/// Outputs too large for their Kafka topic, as (output, action): `truncated` (cut
/// to fit and marked), `dead_lettered` (an event that cannot fit), `dropped` (an
/// alert that cannot fit: it still goes to its other sinks), `key_hashed` (a key
/// over 1 KiB sent as its SHA-256).
pub const OVERSIZED_OUTPUTS: [(&str, &str); 6] = [
    ("events", "truncated"),
    ("events", "dead_lettered"),
    ("events", "key_hashed"),
    ("alerts", "truncated"),
    ("alerts", "dropped"),
    ("alerts", "key_hashed"),
];

fn index_of<T: PartialEq>(all: &[T], item: &T) -> usize {
    all.iter().position(|x| x == item).unwrap_or(0)
}

/// Counters shared by every stage; cheap relaxed atomics.
#[derive(Debug, Default)]
pub struct Stats {
    records: AtomicU64,
    records_without_events: AtomicU64,
    events_by_product: [AtomicU64; Product::ALL.len()],
    events_by_category: [AtomicU64; Category::ALL.len()],
    events_by_source: [AtomicU64; SOURCES.len()],
    events_by_status: [AtomicU64; 3],
    decode_errors: [AtomicU64; DecodeError::REASONS.len()],
    dead_letters: [AtomicU64; DEAD_LETTER_REASONS.len()],
    oversized_outputs: [AtomicU64; OVERSIZED_OUTPUTS.len()],
    alerts: AtomicU64,
    /// Alerts by (detector, severity, app risk tier); detectors are configured, so few.
    alerts_by_label: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
    /// Event time of an alert's newest evidence → the alert emitted.
    pub alert_latency: Latency,
    /// Record received from the source → its batch processed and durable.
    pub processing_latency: Latency,
}

/// A point-in-time copy of [`Stats`], for summaries and tests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatsSnapshot {
    pub records: u64,
    pub records_without_events: u64,
    pub events: u64,
    pub events_by_product: Vec<(&'static str, u64)>,
    pub events_by_category: Vec<(&'static str, u64)>,
    pub events_by_source: Vec<(&'static str, u64)>,
    pub registered: u64,
    pub unregistered: u64,
    pub anonymous: u64,
    pub decode_errors: Vec<(&'static str, u64)>,
    pub dead_letters: u64,
    pub dead_letters_by_reason: Vec<(&'static str, u64)>,
    /// Outputs cut, dead-lettered, dropped or re-keyed to fit their topic (see [`OVERSIZED_OUTPUTS`]).
    pub oversized_outputs: Vec<((&'static str, &'static str), u64)>,
    pub alerts: u64,
    /// Alerts by detector, severity and app risk tier (`none` for unregistered identities).
    pub alerts_by_label: Vec<((String, &'static str, &'static str), u64)>,
}

impl StatsSnapshot {
    pub fn get(list: &[(&'static str, u64)], name: &str) -> u64 {
        list.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .unwrap_or(0)
    }
}

impl Stats {
    pub fn record(&self) {
        self.records.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_without_events(&self) {
        self.records_without_events.fetch_add(1, Ordering::Relaxed);
    }

    pub fn event(&self, event: &NormalizedEvent) {
        self.events_by_product[index_of(&Product::ALL, &event.product)]
            .fetch_add(1, Ordering::Relaxed);
        self.events_by_category[index_of(&Category::ALL, &event.category)]
            .fetch_add(1, Ordering::Relaxed);
        self.events_by_source[index_of(&SOURCES, &event.source_kind)]
            .fetch_add(1, Ordering::Relaxed);
        let status = match event.identity.as_ref().map(|i| i.status) {
            Some(IdentityStatus::Registered) => 0,
            Some(IdentityStatus::Unregistered) => 1,
            Some(IdentityStatus::Anonymous) | None => 2,
        };
        self.events_by_status[status].fetch_add(1, Ordering::Relaxed);
    }

    pub fn decode_error(&self, error: &DecodeError) {
        let i = index_of(&DecodeError::REASONS, &error.reason());
        self.decode_errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an emitted alert by its labels and records its event → alert latency.
    pub fn alert(&self, alert: &Alert) {
        self.alerts.fetch_add(1, Ordering::Relaxed);
        let tier = alert.app.as_ref().map_or("none", |a| a.risk_tier.as_str());
        let key = (alert.detector.clone(), alert.severity.as_str(), tier);
        *lock(&self.alerts_by_label).entry(key).or_insert(0) += 1;
        let behind = chrono::Utc::now() - alert.window_end;
        self.alert_latency
            .record(behind.to_std().unwrap_or(Duration::ZERO));
    }

    /// Counts a dead-lettered record by its reason (one of [`DEAD_LETTER_REASONS`]).
    pub fn dead_letter(&self, reason: &str) {
        let i = index_of(&DEAD_LETTER_REASONS, &reason);
        self.dead_letters[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an output fitted to its topic (a pair of [`OVERSIZED_OUTPUTS`]).
    pub fn oversized_output(&self, output: &'static str, action: &'static str) {
        let i = index_of(&OVERSIZED_OUTPUTS, &(output, action));
        self.oversized_outputs[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let dead_letters_by_reason: Vec<(&'static str, u64)> = DEAD_LETTER_REASONS
            .iter()
            .zip(&self.dead_letters)
            .map(|(r, a)| (*r, load(a)))
            .collect();
        let events_by_product: Vec<_> = Product::ALL
            .iter()
            .zip(&self.events_by_product)
            .map(|(p, a)| (p.as_str(), load(a)))
            .collect();
        StatsSnapshot {
            records: load(&self.records),
            records_without_events: load(&self.records_without_events),
            events: events_by_product.iter().map(|(_, v)| v).sum(),
            events_by_product,
            events_by_category: Category::ALL
                .iter()
                .zip(&self.events_by_category)
                .map(|(c, a)| (c.as_str(), load(a)))
                .collect(),
            events_by_source: ["sso", "gateway", "secrets"]
                .into_iter()
                .zip(&self.events_by_source)
                .map(|(s, a)| (s, load(a)))
                .collect(),
            registered: load(&self.events_by_status[0]),
            unregistered: load(&self.events_by_status[1]),
            anonymous: load(&self.events_by_status[2]),
            decode_errors: DecodeError::REASONS
                .iter()
                .zip(&self.decode_errors)
                .map(|(r, a)| (*r, load(a)))
                .collect(),
            dead_letters: dead_letters_by_reason.iter().map(|(_, v)| v).sum(),
            dead_letters_by_reason,
            oversized_outputs: OVERSIZED_OUTPUTS
                .iter()
                .zip(&self.oversized_outputs)
                .map(|(pair, a)| (*pair, load(a)))
                .collect(),
            alerts: load(&self.alerts),
            alerts_by_label: lock(&self.alerts_by_label)
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A latency distribution (hdrhistogram, microseconds, 1 µs to 1 day at 3
/// significant digits), exported as a Prometheus summary.
#[derive(Debug)]
pub struct Latency {
    histogram: Mutex<Histogram<u64>>,
    sum_micros: AtomicU64,
}

/// Quantiles of a [`Latency`], in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    pub count: u64,
    pub sum_secs: f64,
    /// (quantile, seconds) for 0.5, 0.9, 0.99 and 0.999.
    pub quantiles: Vec<(f64, f64)>,
}

const MAX_LATENCY_MICROS: u64 = 86_400_000_000;

impl Default for Latency {
    fn default() -> Self {
        let histogram = Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
            .unwrap_or_else(|_| unreachable!("constant bounds are valid"));
        Latency {
            histogram: Mutex::new(histogram),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Latency {
    pub fn record(&self, latency: Duration) {
        self.record_all(std::iter::once(latency));
    }

    /// Records many values under one lock (a batch's records).
    pub fn record_all(&self, latencies: impl IntoIterator<Item = Duration>) {
        let mut histogram = lock(&self.histogram);
        let mut sum = 0u64;
        for latency in latencies {
            let micros = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_MICROS);
            histogram.saturating_record(micros);
            sum = sum.saturating_add(micros);
        }
        self.sum_micros.fetch_add(sum, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let histogram = lock(&self.histogram);
        LatencySnapshot {
            count: histogram.len(),
            sum_secs: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            quantiles: [0.5, 0.9, 0.99, 0.999]
                .into_iter()
                .map(|q| (q, histogram.value_at_quantile(q) as f64 / 1e6))
                .collect(),
        }
    }
}

/// Logs a warning of each kind at most once per interval, saying how many
/// were suppressed in between, so a flood of bad records cannot flood the log.
#[derive(Debug)]
pub struct RateLimitedLog {
    interval: Duration,
    last: Mutex<Vec<(&'static str, Instant, u64)>>,
}

impl RateLimitedLog {
    pub fn new(interval: Duration) -> Self {
        RateLimitedLog {
            interval,
            last: Mutex::new(Vec::new()),
        }
    }

    /// Returns `Some(suppressed)` when a message of `kind` should be logged now.
    pub fn admit(&self, kind: &'static str) -> Option<u64> {
        self.admit_at(kind, Instant::now())
    }

    fn admit_at(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut last = lock(&self.last);
        match last.iter_mut().find(|(k, _, _)| *k == kind) {
            None => {
                last.push((kind, now, 0));
                Some(0)
            }
            Some(entry) if now.duration_since(entry.1) >= self.interval => {
                let suppressed = entry.2;
                entry.1 = now;
                entry.2 = 0;
                Some(suppressed)
            }
            Some(entry) => {
                entry.2 += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_logs_first_then_counts() {
        let log = RateLimitedLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.admit_at("bad_json", t0), Some(0));
        assert_eq!(log.admit_at("bad_json", t0 + Duration::from_secs(1)), None);
        assert_eq!(log.admit_at("bad_json", t0 + Duration::from_secs(2)), None);
        assert_eq!(
            log.admit_at("oversized", t0 + Duration::from_secs(2)),
            Some(0)
        );
        assert_eq!(
            log.admit_at("bad_json", t0 + Duration::from_secs(11)),
            Some(2)
        );
    }

    #[test]
    fn snapshot_counts_by_label() {
        let stats = Stats::default();
        stats.record();
        stats.decode_error(&DecodeError::UnknownFormat);
        let snap = stats.snapshot();
        assert_eq!(snap.records, 1);
        assert_eq!(StatsSnapshot::get(&snap.decode_errors, "unknown_format"), 1);
        assert_eq!(snap.events, 0);
    }
}
