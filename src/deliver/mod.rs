//! Deliver: alerts from the durable outbox to the places people read them —
//! signed webhooks, Slack, PagerDuty, email, and the optional kill switch.
//!
//! Each sink is one file; [`Sink`] dispatches to them. A sink's delivery either
//! succeeds, fails in a way worth retrying (network, timeouts, 429, 5xx), or
//! fails for good (a 4xx that retrying cannot fix) — see [`DeliveryError`].

pub mod email;
pub mod http;
pub mod outbox;
pub mod router;
#[cfg(test)]
mod test_support;
pub mod worker;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::detect::{Alert, Severity};
use crate::settings::SecretRef;

/// Why a delivery failed, and whether to try again.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeliveryError {
    /// Network errors, timeouts, HTTP 429 and 5xx, SMTP transient errors.
    #[error("{0} (will retry)")]
    Retry(String),
    /// Rejected for good (HTTP 4xx, SMTP permanent errors, a bad address).
    #[error("{0} (not retried)")]
    Fatal(String),
}

/// One configured sink (`[[deliver.sinks]]`). Unknown keys are refused by the
/// kind's own settings (serde cannot deny them on a struct that flattens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkSettings {
    /// Unique name (used for the sink's cursor in the outbox and in logs).
    pub name: String,
    /// Alerts below this severity are not sent to this sink.
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Seconds a single delivery attempt may take.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Deliveries in flight at once for this sink.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(flatten)]
    pub kind: SinkKind,
}

/// The sink kinds and their own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkKind {
    /// Generic JSON webhook: the alert as the body, signed with HMAC-SHA256.
    Webhook {
        /// Where to POST.
        url: String,
        /// Key for the `X-AppWarden-Signature` HMAC (from env or file).
        signing_key: SecretRef,
    },
    /// Slack incoming webhook (readable blocks).
    Slack {
        /// The incoming-webhook URL is itself a secret.
        webhook_url: SecretRef,
    },
    /// PagerDuty Events API v2 (trigger, dedup_key per detector and identity).
    Pagerduty {
        /// Integration (routing) key.
        routing_key: SecretRef,
        /// Events API endpoint.
        #[serde(default = "default_pagerduty_url")]
        url: String,
    },
    /// Email over SMTP.
    Email {
        /// SMTP server host.
        host: String,
        /// SMTP port (587 STARTTLS, 465 TLS, 25 plain).
        port: u16,
        /// `starttls`, `tls` or `none` (none only for a local relay).
        security: SmtpSecurity,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<SecretRef>,
        /// Sender address.
        from: String,
        /// SOC mailbox: gets every alert at or above `soc_min_severity`.
        soc: Vec<String>,
        /// The SOC's threshold, when it differs from the sink's `min_severity`
        /// (which then applies to owners): e.g. owners get `low` and up, the SOC `high` and up.
        #[serde(default)]
        soc_min_severity: Option<Severity>,
        /// Also send each app's alerts to its owner and escalation contact.
        #[serde(default)]
        notify_owners: bool,
    },
    /// Kill switch: the platform's "disable app / revoke credentials" API,
    /// called for alerts at or above `min_severity`. Dry-run unless `live`.
    Revocation {
        url: String,
        /// Bearer token for the revocation API.
        token: SecretRef,
        /// false: log and record what would be revoked, call nothing.
        #[serde(default)]
        live: bool,
    },
}

impl SinkKind {
    /// The kind's name, as written in the settings (`kind = "webhook"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            SinkKind::Webhook { .. } => "webhook",
            SinkKind::Slack { .. } => "slack",
            SinkKind::Pagerduty { .. } => "pagerduty",
            SinkKind::Email { .. } => "email",
            SinkKind::Revocation { .. } => "revocation",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    Starttls,
    Tls,
    None,
}

fn default_min_severity() -> Severity {
    Severity::Medium
}
fn default_timeout_secs() -> u64 {
    10
}
fn default_max_in_flight() -> usize {
    4
}
fn default_pagerduty_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".into()
}

impl SinkSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }

    /// Whether this sink takes the alert at all.
    pub fn wants(&self, alert: &Alert) -> bool {
        alert.severity >= self.min_severity
    }
}

/// The PagerDuty / router grouping key: one incident per detector and identity.
pub fn dedup_key(alert: &Alert) -> String {
    format!("{}:{}", alert.detector, alert.identity)
}
