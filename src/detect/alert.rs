//! Alerts: the OCSF Detection Finding–aligned record a detector emits, with its evidence.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{NormalizedEvent, Origin};
use crate::identity::App;
use crate::identity::registry::{RiskTier, RiskVerdict};

/// Alert severity, lowest first (OCSF severity names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// One or more levels up, capped at critical.
    pub fn raised(self, levels: u8) -> Severity {
        let all = [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ];
        let index = all.iter().position(|s| *s == self).unwrap_or(0) + levels as usize;
        all[index.min(all.len() - 1)]
    }

    /// The detector's severity raised by the app's risk: restricted/regulated
    /// tiers and a risk score needing review each add a level; a blocked score adds two.
    pub fn for_app(self, app: Option<&App>) -> Severity {
        let Some(app) = app else { return self };
        let mut levels = 0;
        if app.risk_tier >= RiskTier::Restricted {
            levels += 1;
        }
        levels += match app.risk.verdict() {
            RiskVerdict::Ok => 0,
            RiskVerdict::Review => 1,
            RiskVerdict::Blocked => 2,
        };
        self.raised(levels)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Registry data carried by an alert so it is actionable on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertApp {
    pub id: String,
    pub name: String,
    pub owner: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    pub risk_tier: RiskTier,
    pub risk_score: u8,
}

impl AlertApp {
    pub fn from_app(app: &App) -> Self {
        AlertApp {
            id: app.id.clone(),
            name: app.name.clone(),
            owner: app.owner.clone(),
            escalation: app.escalation.clone(),
            team: app.team.clone(),
            risk_tier: app.risk_tier,
            risk_score: app.risk.score(),
        }
    }
}

/// A reference to an event behind an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRef {
    pub time: DateTime<Utc>,
    pub activity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

impl EventRef {
    /// Sample order: by time, then vendor id and activity, so that which samples
    /// a bucket keeps does not depend on the order its events arrived in.
    pub fn not_after(&self, other: &EventRef) -> bool {
        (
            self.time,
            self.vendor_event_id.as_deref(),
            self.activity.as_str(),
        ) <= (
            other.time,
            other.vendor_event_id.as_deref(),
            other.activity.as_str(),
        )
    }

    pub fn of(event: &NormalizedEvent) -> Self {
        EventRef {
            time: event.time,
            activity: event.activity.clone(),
            vendor_event_id: event.vendor_event_id.clone(),
            origin: event.origin.clone(),
        }
    }
}

/// Why the alert fired: what was observed against what was expected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Evidence {
    /// The observed value (calls in the window, distinct secrets, the new domain…).
    pub observed: serde_json::Value,
    /// The baseline or limit it was compared with.
    pub baseline: serde_json::Value,
    /// Free-form facts specific to the detector kind.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty", default)]
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Up to a few events behind the alert.
    pub samples: Vec<EventRef>,
}

/// One alert. Field names are stable: sinks and SIEM rules rely on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic id: the same detector, identity and window always give the same id.
    pub id: String,
    /// The detector's name (its file in `detectors/`).
    pub detector: String,
    /// The detector kind.
    pub kind: String,
    /// The identity key (`app:<id>` or `<kind>:<raw>`).
    pub identity: String,
    /// Registry data of the app, when the identity is a registered app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<AlertApp>,
    pub severity: Severity,
    /// 0–100: how far past its threshold the observation is.
    pub score: f64,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub summary: String,
    pub evidence: Evidence,
    /// A query over the history tables (`events`) that lists the events behind the alert.
    pub sql: String,
    /// OCSF class: Detection Finding.
    pub class_uid: u32,
    /// Response actions taken for the alert (the kill switch), recorded by the router.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<AlertAction>,
    /// Set by the router on a repeat within the grouping window: the id of the open
    /// alert it belongs to and how many alerts the group holds now. Repeats are
    /// recorded (alerts file and topic) but do not page again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<AlertGroup>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertGroup {
    /// The id of the first alert of the group (the one that paged).
    pub id: String,
    /// Alerts in the group so far, this one included.
    pub count: u32,
}

/// A response action taken (or, in dry-run, only described) for an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertAction {
    /// `kill_switch`.
    pub kind: String,
    /// `dry_run` or `live`.
    pub mode: String,
    /// The sink that carries it out.
    pub sink: String,
    /// What would be / is disabled: the app id, else the identity.
    pub target: String,
}

/// FNV-1a, stable across releases and platforms (alert ids must not change).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Quotes a string for SQL.
pub fn sql_str(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The investigation query's condition for a detector's category filter (empty: any category).
pub fn categories_sql(categories: &[crate::event::Category]) -> String {
    if categories.is_empty() {
        return String::new();
    }
    let names: Vec<String> = categories.iter().map(|c| sql_str(c.as_str())).collect();
    format!("category IN ({})", names.join(","))
}

/// The history query behind an alert: the identity's events in the window, narrowed by `extra`.
/// The `day` bounds let the query skip every other day's partitions.
pub fn investigation_sql(
    identity: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    extra: &str,
) -> String {
    let last = if end > start {
        end - chrono::Duration::milliseconds(1)
    } else {
        start
    };
    let mut sql = format!(
        "SELECT time, product, category, activity, actor_raw, resource, dst_host, src_ip, cloud_region, outcome \
         FROM events WHERE day BETWEEN '{}' AND '{}' AND identity_key = {} AND time >= TIMESTAMP {} AND time < TIMESTAMP {}",
        start.format("%Y-%m-%d"),
        last.format("%Y-%m-%d"),
        sql_str(identity),
        sql_str(&start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        sql_str(&end.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    );
    if !extra.is_empty() {
        sql.push_str(" AND ");
        sql.push_str(extra);
    }
    sql.push_str(" ORDER BY time");
    sql
}

/// What a detector hands to the engine; the engine adds id, severity and app data.
#[derive(Debug, Clone)]
pub struct Finding {
    pub identity: String,
    pub app_id: Option<String>,
    pub score: f64,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub summary: String,
    pub evidence: Evidence,
    /// Extra SQL condition narrowing the investigation query (e.g. `category = 'secret_read'`).
    pub sql_filter: String,
    /// Severity levels to add for this finding (e.g. an unregistered identity reading secrets).
    pub raise: u8,
    /// A discriminator for findings of one detector that differ in nature (e.g. `lapsed` vs `acting`).
    pub variant: &'static str,
}

impl Finding {
    /// The deterministic alert id: the same detector, identity, variant and window give the same id.
    pub fn alert_id(&self, detector: &str) -> String {
        let start = self.window_start.to_rfc3339();
        let id = fnv1a(&[detector, &self.identity, self.variant, &start]);
        format!("{id:016x}")
    }

    /// The alert severity: the detector's, raised by the app's risk and by the finding.
    pub fn severity(&self, base: Severity, app: Option<&App>) -> Severity {
        base.for_app(app).raised(self.raise)
    }

    /// The score clamped to 0–100 with one decimal.
    pub fn rounded_score(&self) -> f64 {
        (self.score.clamp(0.0, 100.0) * 10.0).round() / 10.0
    }

    pub fn into_alert(
        self,
        detector: &str,
        kind: &str,
        base: Severity,
        app: Option<&App>,
    ) -> Alert {
        let id = self.alert_id(detector);
        let severity = self.severity(base, app);
        let score = self.rounded_score();
        let sql = investigation_sql(
            &self.identity,
            self.window_start,
            self.window_end,
            &self.sql_filter,
        );
        Alert {
            id,
            detector: detector.to_string(),
            kind: kind.to_string(),
            identity: self.identity,
            app: app.map(AlertApp::from_app),
            severity,
            score,
            window_start: self.window_start,
            window_end: self.window_end,
            summary: self.summary,
            evidence: self.evidence,
            sql,
            class_uid: 2004,
            actions: Vec::new(),
            group: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_is_raised_and_capped() {
        assert_eq!(Severity::Medium.raised(1), Severity::High);
        assert_eq!(Severity::High.raised(5), Severity::Critical);
    }

    #[test]
    fn ids_are_stable_and_sql_is_quoted() {
        assert_eq!(fnv1a(&["a", "b"]), fnv1a(&["a", "b"]));
        assert_ne!(fnv1a(&["ab", ""]), fnv1a(&["a", "b"]));
        let t = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .to_utc();
        let sql = investigation_sql("user:o'brien", t, t, "category = 'secret_read'");
        assert!(sql.contains("'user:o''brien'"), "{sql}");
        assert!(
            sql.contains("TIMESTAMP '2026-11-23T10:00:00.000Z'"),
            "{sql}"
        );
        assert!(
            sql.ends_with("AND category = 'secret_read' ORDER BY time"),
            "{sql}"
        );
    }
}
