//! HTTP sinks: signed generic webhook, Slack, PagerDuty Events v2, and the kill-switch revocation call.
//!
//! One [`HttpSink`] per configured sink: its secrets are resolved once when it
//! is built, and it owns one `reqwest::Client` with the sink's timeout. Every
//! response status is checked (2xx is delivered; 408, 429 and 5xx are worth
//! retrying; any other status is final), and network errors and timeouts are
//! retried. Error messages never carry a URL (a Slack webhook URL is a secret)
//! nor a secret value.
//!
//! # Webhook signatures
//!
//! The generic webhook POSTs the alert as JSON (the [`Alert`] fields, stable)
//! with these headers:
//!
//! - `X-AppWarden-Timestamp`: the time of sending, in Unix seconds;
//! - `X-AppWarden-Signature`: `sha256=` followed by the lowercase hex
//!   HMAC-SHA256, keyed with the sink's `signing_key`, of the bytes
//!   `<timestamp>.<body>` — the decimal timestamp exactly as sent in the
//!   header, one `.`, then the raw request body as received (before any JSON
//!   parsing or re-encoding);
//! - `X-AppWarden-Alert-Id`: the alert id. Delivery is at-least-once, so the
//!   same alert may arrive more than once; receivers deduplicate on this id.
//!
//! A receiver recomputes the HMAC over the raw body, compares it in constant
//! time, and rejects timestamps further than a few minutes from its own clock,
//! so a captured request cannot be replayed later. [`verify`] does all of that:
//!
//! ```
//! use appwarden::deliver::http::{sign, verify};
//!
//! let key = b"shared signing key";
//! let body = br#"{"id":"0123456789abcdef"}"#;
//! let signature = sign(key, 1_767_225_600, body);
//! assert!(signature.starts_with("sha256="));
//! assert!(verify(key, 1_767_225_600, body, &signature, 1_767_225_630, 300));
//! // Ten minutes later the same request is refused as a replay.
//! assert!(!verify(key, 1_767_225_600, body, &signature, 1_767_226_200, 300));
//! ```

use std::fmt;

use chrono::SecondsFormat;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Client, StatusCode, Url};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{DeliveryError, SinkKind, SinkSettings, dedup_key};
use crate::detect::{Alert, Severity};
use crate::settings::SecretRef;

/// Header carrying the Unix time (seconds) the webhook request was signed at.
pub const TIMESTAMP_HEADER: &str = "x-appwarden-timestamp";
/// Header carrying `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-appwarden-signature";
/// Header carrying the alert id (the receiver's deduplication key).
pub const ALERT_ID_HEADER: &str = "x-appwarden-alert-id";

/// Slack's limit for the text of a section or context element.
const SLACK_TEXT_MAX: usize = 3000;
/// Slack's limit for the text of a section field.
const SLACK_FIELD_MAX: usize = 2000;
/// Slack's limit for a header block's plain text.
const SLACK_HEADER_MAX: usize = 150;
/// PagerDuty's limit for `payload.summary`.
const PAGERDUTY_SUMMARY_MAX: usize = 1024;
/// How much of an error response's body goes into the delivery error.
const ERROR_BODY_MAX: usize = 200;

type HmacSha256 = Hmac<Sha256>;

/// One HTTP alert sink, ready to deliver: secrets resolved, client built.
pub struct HttpSink {
    name: String,
    client: Client,
    target: Target,
}

/// What a sink sends where, with its secrets already resolved.
enum Target {
    Webhook {
        url: Url,
        signing_key: Vec<u8>,
    },
    Slack {
        url: Url,
    },
    Pagerduty {
        url: Url,
        routing_key: String,
    },
    Revocation {
        url: Url,
        token: String,
        live: bool,
    },
    /// A kind this module does not deliver (email); every delivery is `Fatal`.
    Other(&'static str),
}

impl Target {
    fn kind(&self) -> &'static str {
        match self {
            Target::Webhook { .. } => "webhook",
            Target::Slack { .. } => "slack",
            Target::Pagerduty { .. } => "pagerduty",
            Target::Revocation { .. } => "revocation",
            Target::Other(kind) => kind,
        }
    }
}

/// Shows the sink's name and kind, never its secrets.
impl fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSink")
            .field("name", &self.name)
            .field("kind", &self.target.kind())
            .finish_non_exhaustive()
    }
}

impl HttpSink {
    /// Resolves the sink's secrets and builds its client. Errors name the
    /// settings key (`deliver.sinks[<name>].<key>`), never a secret value.
    ///
    /// The revocation token is resolved in dry-run too, so that turning
    /// `live` on cannot fail on a missing secret.
    pub fn new(settings: &SinkSettings) -> Result<HttpSink, String> {
        let name = settings.name.clone();
        let key = |field: &str| format!("deliver.sinks[{name}].{field}");
        let secret = |field: &str, secret: &SecretRef| {
            secret.resolve().map_err(|e| format!("{}: {e}", key(field)))
        };
        let target = match &settings.kind {
            SinkKind::Webhook { url, signing_key } => Target::Webhook {
                url: parse_url(url)
                    .map_err(|e| format!("{}: {e}: {}", key("url"), shown_url(url)))?,
                signing_key: secret("signing_key", signing_key)?.into_bytes(),
            },
            SinkKind::Slack { webhook_url } => {
                let url = secret("webhook_url", webhook_url)?;
                // The URL is the secret: say what is wrong with it, not what it is.
                Target::Slack {
                    url: parse_url(&url).map_err(|e| format!("{}: {e}", key("webhook_url")))?,
                }
            }
            SinkKind::Pagerduty { routing_key, url } => Target::Pagerduty {
                url: parse_url(url)
                    .map_err(|e| format!("{}: {e}: {}", key("url"), shown_url(url)))?,
                routing_key: secret("routing_key", routing_key)?,
            },
            SinkKind::Revocation { url, token, live } => Target::Revocation {
                url: parse_url(url)
                    .map_err(|e| format!("{}: {e}: {}", key("url"), shown_url(url)))?,
                token: secret("token", token)?,
                live: *live,
            },
            SinkKind::Email { .. } => Target::Other("email"),
        };
        let client = Client::builder()
            .timeout(settings.timeout())
            .user_agent(concat!("appwarden/", env!("CARGO_PKG_VERSION")))
            // A redirect means a misconfigured URL; following it would resend
            // the alert and its credentials somewhere nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("deliver.sinks[{name}]: cannot build the HTTP client: {e}"))?;
        Ok(HttpSink {
            name,
            client,
            target,
        })
    }

    /// The sink's name from the settings.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one alert. Whether the sink takes the alert at all
    /// ([`SinkSettings::wants`]) is the caller's decision.
    pub async fn deliver(&self, alert: &Alert) -> Result<(), DeliveryError> {
        match &self.target {
            Target::Webhook { url, signing_key } => {
                let body = serde_json::to_vec(alert).map_err(|e| {
                    DeliveryError::Fatal(format!(
                        "sink {}: cannot encode alert {}: {e}",
                        self.name, alert.id
                    ))
                })?;
                let timestamp = chrono::Utc::now().timestamp();
                let mut headers = HeaderMap::new();
                headers.insert(TIMESTAMP_HEADER, HeaderValue::from(timestamp));
                headers.insert(
                    SIGNATURE_HEADER,
                    header_value(&sign(signing_key, timestamp, &body)),
                );
                headers.insert(ALERT_ID_HEADER, header_value(&alert.id));
                self.post(url, headers, body).await
            }
            Target::Slack { url } => {
                self.post(url, HeaderMap::new(), encode(&slack_payload(alert)))
                    .await
            }
            Target::Pagerduty { url, routing_key } => {
                let payload = pagerduty_payload(alert, routing_key);
                self.post(url, HeaderMap::new(), encode(&payload)).await
            }
            Target::Revocation { url, token, live } => {
                if !live {
                    tracing::warn!(
                        sink = %self.name,
                        url = %redacted_url(url),
                        target = %revocation_target(alert),
                        identity = %alert.identity,
                        alert_id = %alert.id,
                        detector = %alert.detector,
                        severity = %alert.severity,
                        "kill switch dry run (live = false): would revoke {}; nothing was called",
                        revocation_target(alert),
                    );
                    return Ok(());
                }
                let mut headers = HeaderMap::new();
                let mut bearer = header_value(&format!("Bearer {token}"));
                bearer.set_sensitive(true);
                headers.insert(AUTHORIZATION, bearer);
                self.post(url, headers, encode(&revocation_payload(alert)))
                    .await
            }
            Target::Other(kind) => Err(DeliveryError::Fatal(format!(
                "sink {}: kind {kind} is not an HTTP sink",
                self.name
            ))),
        }
    }

    /// POSTs a JSON body and sorts the outcome into ok, retry and fatal.
    async fn post(
        &self,
        url: &Url,
        mut headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<(), DeliveryError> {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let response = self
            .client
            .post(url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = error_body(response).await;
        Err(classify(&self.name, status, &body))
    }

    /// Network errors and timeouts are worth retrying; a request that could
    /// not even be built is not. The URL is dropped from the message.
    fn transport_error(&self, error: reqwest::Error) -> DeliveryError {
        let error = error.without_url();
        let mut message = format!("sink {}: ", self.name);
        if error.is_timeout() {
            message.push_str("timed out: ");
        }
        message.push_str(&error.to_string());
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        if error.is_builder() {
            DeliveryError::Fatal(message)
        } else {
            DeliveryError::Retry(message)
        }
    }
}

/// Sorts a non-2xx status: 408, 429 and 5xx are retried, anything else
/// (other 4xx, and 3xx since redirects are not followed) is final.
fn classify(sink: &str, status: StatusCode, body: &str) -> DeliveryError {
    let message = if body.is_empty() {
        format!("sink {sink}: HTTP {status}")
    } else {
        format!("sink {sink}: HTTP {status}: {body}")
    };
    let retry = status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error();
    if retry {
        DeliveryError::Retry(message)
    } else {
        DeliveryError::Fatal(message)
    }
}

/// At most [`ERROR_BODY_MAX`] bytes of the response body, on one line.
/// Reads no more than that from the network.
async fn error_body(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < ERROR_BODY_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(ERROR_BODY_MAX);
    let text: String = String::from_utf8_lossy(&bytes)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut end = text.len().min(ERROR_BODY_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim().to_string()
}

/// A URL fit for logs: its userinfo and query values are replaced, its scheme,
/// host, port, path and query keys kept, its fragment dropped. Tokens ride in
/// userinfo (`https://user:token@…`) and in queries (`?token=…`).
pub fn redacted_url(url: &Url) -> String {
    const REDACTED: &str = "[redacted]";
    let mut shown = format!("{}://", url.scheme());
    if !url.username().is_empty() || url.password().is_some() {
        shown.push_str(REDACTED);
        shown.push('@');
    }
    shown.push_str(url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    if let Some(query) = url.query() {
        let pairs: Vec<String> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}={REDACTED}"),
                // A bare `?abc123` may be the token itself.
                None => REDACTED.to_string(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

/// A configured URL for an error message: redacted when it parses, else not shown.
fn shown_url(text: &str) -> String {
    Url::parse(text).map_or_else(|_| "(not shown)".to_string(), |url| redacted_url(&url))
}

fn parse_url(text: &str) -> Result<Url, &'static str> {
    match Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(url),
        _ => Err("not an http(s) URL"),
    }
}

fn header_value(text: &str) -> HeaderValue {
    // Alert ids are hex and signatures ASCII; anything else is dropped rather than fail.
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn encode(value: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// `sha256=<lowercase hex HMAC-SHA256(key, "<timestamp>.<body>")>`: the value
/// of `X-AppWarden-Signature` (see the module documentation).
pub fn sign(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex(&signed_mac(key, timestamp, body).finalize().into_bytes())
    )
}

/// Checks an `X-AppWarden-Signature` value against the raw body and the
/// `X-AppWarden-Timestamp` header, for receivers. The comparison is in
/// constant time; a timestamp more than `max_age_secs` away from `now` (both
/// Unix seconds) is refused, in either direction, so old requests cannot be
/// replayed.
pub fn verify(
    key: &[u8],
    timestamp: i64,
    body: &[u8],
    signature: &str,
    now: i64,
    max_age_secs: u64,
) -> bool {
    if now.abs_diff(timestamp) > max_age_secs {
        return false;
    }
    let Some(expected) = signature.strip_prefix("sha256=").and_then(unhex) else {
        return false;
    };
    signed_mac(key, timestamp, body)
        .verify_slice(&expected)
        .is_ok()
}

fn signed_mac(key: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 0x0f) as usize] as char);
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// The Slack incoming-webhook message for an alert: a `text` fallback (for
/// notifications) and blocks — header, summary, fields (App, Owner, Detector,
/// Severity, Window, Score), observed vs baseline, and a context line with the
/// alert id and the investigation SQL. Texts are escaped for mrkdwn and cut to
/// Slack's limits (150 for the header, 2000 per field, 3000 per text).
pub fn slack_payload(alert: &Alert) -> Value {
    let severity = alert.severity.as_str().to_uppercase();
    let subject = alert
        .app
        .as_ref()
        .map_or(alert.identity.as_str(), |app| app.name.as_str());
    let (app, owner) = match &alert.app {
        Some(app) => {
            let mut owner = app.owner.clone();
            if let Some(escalation) = &app.escalation {
                owner.push_str(&format!(" (escalation: {escalation})"));
            }
            (format!("{} ({})", app.name, app.id), owner)
        }
        None => (
            format!("{} (not in the registry)", alert.identity),
            "unknown".to_string(),
        ),
    };
    let window = format!(
        "{} → {}",
        alert.window_start.format("%Y-%m-%d %H:%M:%S UTC"),
        alert.window_end.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let field = |label: &str, value: &str| {
        let label = format!("*{label}*\n");
        let budget = SLACK_FIELD_MAX - label.chars().count();
        json!({"type": "mrkdwn", "text": label + &mrkdwn(value, budget)})
    };
    let fields = vec![
        field("App", &app),
        field("Owner", &owner),
        field("Detector", &format!("{} ({})", alert.detector, alert.kind)),
        field("Severity", &severity),
        field("Window", &window),
        field("Score", &format!("{:.1} / 100", alert.score)),
    ];
    let observed = format!(
        "*Observed:* {}\n*Baseline:* {}",
        code_span(&show(&alert.evidence.observed), SLACK_TEXT_MAX / 2 - 20),
        code_span(&show(&alert.evidence.baseline), SLACK_TEXT_MAX / 2 - 20),
    );
    let id = format!("Alert {}", code_span(&alert.id, SLACK_TEXT_MAX - 10));
    json!({
        "text": mrkdwn(
            &format!("[{severity}] {subject} — {}: {}", alert.detector, alert.summary),
            SLACK_TEXT_MAX,
        ),
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": truncate(
                        &format!("{severity} · {subject} · {}", alert.detector),
                        SLACK_HEADER_MAX,
                    ),
                },
            },
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": mrkdwn(&alert.summary, SLACK_TEXT_MAX)},
            },
            {"type": "section", "fields": fields},
            {"type": "section", "text": {"type": "mrkdwn", "text": observed}},
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": id},
                    {"type": "mrkdwn", "text": code_span(&alert.sql, SLACK_TEXT_MAX)},
                ],
            },
        ],
    })
}

/// A JSON value as people read it: strings without quotes, the rest compact.
fn show(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Text escaped for Slack mrkdwn (`&`, `<`, `>`), cut to `limit` characters
/// with an ellipsis, never in the middle of an escape.
fn mrkdwn(text: &str, limit: usize) -> String {
    let escape = |c: char| match c {
        '&' => "&amp;".to_string(),
        '<' => "&lt;".to_string(),
        '>' => "&gt;".to_string(),
        other => other.to_string(),
    };
    let escaped: String = text.chars().map(escape).collect();
    if escaped.chars().count() <= limit {
        return escaped;
    }
    let mut out = String::new();
    let mut used = 0;
    for piece in text.chars().map(escape) {
        let len = piece.chars().count();
        if used + len > limit.saturating_sub(1) {
            break;
        }
        out.push_str(&piece);
        used += len;
    }
    out.push('…');
    out
}

/// An inline code span of at most `limit` characters (backticks would end it early).
fn code_span(text: &str, limit: usize) -> String {
    format!(
        "`{}`",
        mrkdwn(&text.replace('`', "'"), limit.saturating_sub(2))
    )
}

/// `text` cut to `limit` characters, the last being an ellipsis when cut.
fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let mut out: String = text.chars().take(limit.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// PagerDuty's severity for an alert severity.
fn pagerduty_severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "info",
    }
}

/// A PagerDuty Events API v2 `trigger` event. The `dedup_key` is the
/// detector and identity, so repeated windows of one problem update one
/// incident instead of opening new ones.
pub fn pagerduty_payload(alert: &Alert, routing_key: &str) -> Value {
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(alert),
        "client": "AppWarden",
        "payload": {
            "summary": truncate(&alert.summary, PAGERDUTY_SUMMARY_MAX),
            "source": format!("appwarden:{}", alert.identity),
            "severity": pagerduty_severity(alert.severity),
            "timestamp": alert.window_end.to_rfc3339_opts(SecondsFormat::Millis, true),
            "component": revocation_target(alert),
            "group": alert.detector,
            "class": alert.kind,
            "custom_details": {
                "alert_id": alert.id,
                "identity": alert.identity,
                "app": alert.app,
                "score": alert.score,
                "window_start": alert.window_start.to_rfc3339_opts(SecondsFormat::Millis, true),
                "evidence": alert.evidence,
                "sql": alert.sql,
            },
        },
    })
}

/// The app id when the identity is a registered app, else the identity.
fn revocation_target(alert: &Alert) -> &str {
    alert
        .app
        .as_ref()
        .map_or(alert.identity.as_str(), |app| app.id.as_str())
}

/// The body of the kill-switch call: what to disable and why. `app_id` is
/// null for an identity that is not a registered app.
pub fn revocation_payload(alert: &Alert) -> Value {
    json!({
        "app_id": alert.app.as_ref().map(|app| app.id.as_str()),
        "identity": alert.identity,
        "alert_id": alert.id,
        "detector": alert.detector,
        "severity": alert.severity,
        "reason": alert.summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_keep_host_path_and_query_keys() {
        let url = |text: &str| redacted_url(&Url::parse(text).unwrap());
        assert_eq!(
            url(
                "https://ops:Tok3n-s3cret@revoke.example.com:8443/v1/apps/revoke?token=Tok3n-s3cret&dry=1#frag"
            ),
            "https://[redacted]@revoke.example.com:8443/v1/apps/revoke?token=[redacted]&dry=[redacted]"
        );
        assert_eq!(
            url("https://Tok3n-s3cret@revoke.example.com/v1?Tok3n-s3cret"),
            "https://[redacted]@revoke.example.com/v1?[redacted]"
        );
        assert_eq!(
            url("http://127.0.0.1:9000/revoke"),
            "http://127.0.0.1:9000/revoke"
        );
        assert_eq!(url("http://[::1]:9/r?a=b"), "http://[::1]:9/r?a=[redacted]");
        // A configured URL that is refused is named without its credentials.
        let e = shown_url("ftp://ops:Tok3n-s3cret@files.example.com/x");
        assert_eq!(e, "ftp://[redacted]@files.example.com/x");
        assert_eq!(shown_url("not a url Tok3n-s3cret"), "(not shown)");
    }

    #[test]
    fn hmac_and_hex_match_a_known_vector() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog").
        let mut mac = HmacSha256::new_from_slice(b"key").unwrap();
        mac.update(b"The quick brown fox jumps over the lazy dog");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        assert_eq!(unhex("00ff7a"), Some(vec![0x00, 0xff, 0x7a]));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }

    #[test]
    fn signature_covers_timestamp_and_body() {
        let sig = sign(b"k", 1_000, b"{}");
        // Same HMAC as over the documented string "<timestamp>.<body>".
        let mut mac = HmacSha256::new_from_slice(b"k").unwrap();
        mac.update(b"1000.{}");
        assert_eq!(sig, format!("sha256={}", hex(&mac.finalize().into_bytes())));
        assert!(verify(b"k", 1_000, b"{}", &sig, 1_000, 300));
        assert!(
            !verify(b"k", 1_001, b"{}", &sig, 1_001, 300),
            "other timestamp"
        );
        assert!(
            !verify(b"other", 1_000, b"{}", &sig, 1_000, 300),
            "other key"
        );
        assert!(
            !verify(b"k", 1_000, b"{}", &sig, 700, 299),
            "from the future"
        );
        assert!(
            !verify(b"k", 1_000, b"{}", &sig[7..], 1_000, 300),
            "no prefix"
        );
        assert!(
            !verify(b"k", 1_000, b"{}", "sha256=00", 1_000, 300),
            "short"
        );
    }

    #[test]
    fn statuses_are_sorted() {
        let retry = |code: u16| {
            matches!(
                classify("s", StatusCode::from_u16(code).unwrap(), ""),
                DeliveryError::Retry(_)
            )
        };
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(retry(code), "{code}");
        }
        for code in [301, 400, 401, 403, 404, 410, 413, 422] {
            assert!(!retry(code), "{code}");
        }
        assert_eq!(
            classify("s", StatusCode::BAD_GATEWAY, "upstream down"),
            DeliveryError::Retry("sink s: HTTP 502 Bad Gateway: upstream down".into())
        );
    }

    #[test]
    fn text_is_cut_and_escaped_for_slack() {
        assert_eq!(mrkdwn("a<b>&c", 100), "a&lt;b&gt;&amp;c");
        assert_eq!(mrkdwn("abcdef", 4), "abc…");
        // Never half an escape: "a&amp;" would be 6 characters, over the 5 allowed.
        assert_eq!(mrkdwn("a&bcdef", 5), "a…");
        assert_eq!(code_span("x`y", 10), "`x'y`");
        assert_eq!(truncate("ééééé", 3), "éé…");
        assert_eq!(truncate("abc", 3), "abc");
    }

    #[test]
    fn secret_errors_name_the_key_and_sink_is_debug_safe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "hunter2-signing-key\n").unwrap();
        let mut settings = SinkSettings {
            name: "webhook-soc".into(),
            min_severity: Severity::Medium,
            timeout_secs: 5,
            max_in_flight: 1,
            kind: SinkKind::Webhook {
                url: "https://siem.example.com/hook".into(),
                signing_key: SecretRef {
                    env: None,
                    file: Some(path),
                },
            },
        };
        let sink = HttpSink::new(&settings).unwrap();
        assert_eq!(
            format!("{sink:?}"),
            "HttpSink { name: \"webhook-soc\", kind: \"webhook\", .. }"
        );

        settings.kind = SinkKind::Webhook {
            url: "https://siem.example.com/hook".into(),
            signing_key: SecretRef {
                env: Some("APPWARDEN_TEST_HTTP_SURELY_UNSET".into()),
                file: None,
            },
        };
        assert_eq!(
            HttpSink::new(&settings).unwrap_err(),
            "deliver.sinks[webhook-soc].signing_key: \
             environment variable APPWARDEN_TEST_HTTP_SURELY_UNSET is not set"
        );

        let url_file = dir.path().join("slack");
        std::fs::write(&url_file, "hooks.slack.com/services/T0/B0/secretpart").unwrap();
        settings.kind = SinkKind::Slack {
            webhook_url: SecretRef {
                env: None,
                file: Some(url_file),
            },
        };
        let error = HttpSink::new(&settings).unwrap_err();
        assert_eq!(
            error,
            "deliver.sinks[webhook-soc].webhook_url: not an http(s) URL"
        );
    }
}
