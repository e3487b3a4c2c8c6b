//! Helpers shared by the deliver tests.

use std::path::Path;

use chrono::{TimeZone, Utc};

use super::outbox::Outbox;
use crate::detect::alert::{Evidence, Finding};
use crate::detect::{Alert, Severity};

/// A high alert for identity `app:a<n>`, with summary `alert <n>`.
pub fn alert(n: u32) -> Alert {
    let t = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
    Finding {
        identity: format!("app:a{n}"),
        app_id: None,
        score: 50.0,
        window_start: t,
        window_end: t,
        summary: format!("alert {n}"),
        evidence: Evidence::default(),
        sql_filter: String::new(),
        raise: 0,
        variant: "v",
    }
    .into_alert("d", "k", Severity::High, None)
}

/// Opens the outbox and appends (and syncs) alerts 0 to `count - 1`.
pub fn open_with_alerts(dir: &Path, sinks: &[String], count: u32) -> Outbox {
    let outbox = Outbox::open(dir, sinks).unwrap();
    for n in 0..count {
        outbox.append(&alert(n)).unwrap();
    }
    outbox.sync().unwrap();
    outbox
}

/// The summaries of what the sink takes.
pub fn take_summaries(outbox: &Outbox, sink: &str) -> Vec<String> {
    outbox
        .take(sink, 10)
        .iter()
        .map(|(_, a)| a.summary.clone())
        .collect()
}
