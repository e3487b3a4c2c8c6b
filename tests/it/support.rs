//! Shared helpers: real vendor samples, unique names, bounded waits.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vendor")
        .join(path)
}

/// The vendor record (`log`) of the first wrapped sample line that satisfies `pick`.
pub fn wrapped_sample(path: &str, pick: impl Fn(&serde_json::Value) -> bool) -> Vec<u8> {
    let text = std::fs::read_to_string(fixture(path)).expect("fixture readable");
    for line in text.lines() {
        let wrapper: serde_json::Value = serde_json::from_str(line).expect("fixture line is JSON");
        let log = &wrapper["log"];
        if pick(log) {
            return serde_json::to_vec(log).expect("serializable");
        }
    }
    panic!("no sample in {path} matches");
}

/// The first raw line of a fixture file that satisfies `pick`.
pub fn raw_sample(path: &str, pick: impl Fn(&str) -> bool) -> Vec<u8> {
    let text = std::fs::read_to_string(fixture(path)).expect("fixture readable");
    text.lines()
        .find(|l| pick(l))
        .map(|l| l.as_bytes().to_vec())
        .unwrap_or_else(|| panic!("no line in {path} matches"))
}

/// A name no other test run uses (topics, groups).
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Polls `done` until it holds or `limit` passes; returns whether it held.
pub async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

/// The AppWarden part of an enriched event record (`unmapped.appwarden`).
#[derive(Debug, serde::Deserialize)]
pub struct Enriched {
    pub product: appwarden::event::Product,
    pub category: appwarden::event::Category,
    pub identity: Option<appwarden::event::ResolvedIdentity>,
    pub origin: Option<appwarden::event::Origin>,
    pub findings: Vec<serde_json::Value>,
}

/// Reads `unmapped.appwarden` of an enriched event record.
pub fn enriched(record: &serde_json::Value) -> Enriched {
    serde_json::from_value(record["unmapped"]["appwarden"].clone())
        .unwrap_or_else(|e| panic!("enriched record without unmapped.appwarden ({e}): {record}"))
}
