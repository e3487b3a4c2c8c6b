//! Email sink: alerts as text + HTML mail over SMTP (lettre).
//!
//! The SOC mailboxes get every alert the sink wants; with `notify_owners` the
//! app's owner and escalation contact are copied in. One message per alert, a
//! `Message-ID` derived from the alert id so a retried delivery threads with
//! (or is deduplicated against) the first one.

use std::collections::HashSet;
use std::fmt::{self, Write as _};

use chrono::{DateTime, SecondsFormat, Utc};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{DeliveryError, SinkKind, SinkSettings, SmtpSecurity};
use crate::detect::Alert;
use crate::event::Origin;
use crate::identity::registry::RiskTier;

const ALERT_ID_HEADER: &str = "X-AppWarden-Alert-Id";

/// Sends alerts as mail through one SMTP server.
pub struct EmailSink {
    settings: SinkSettings,
    from: Mailbox,
    /// Right-hand side of generated `Message-ID`s: the sender's domain.
    id_domain: String,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    endpoint: String,
}

/// Names the server, never the credentials the transport holds.
impl fmt::Debug for EmailSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailSink")
            .field("name", &self.settings.name)
            .field("endpoint", &self.endpoint)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl EmailSink {
    /// Builds the sink: checks the addresses, resolves the password secret once
    /// and prepares the transport (connections are opened per delivery).
    pub fn new(settings: &SinkSettings) -> Result<EmailSink, String> {
        let name = &settings.name;
        let SinkKind::Email {
            host,
            port,
            security,
            username,
            password,
            from,
            soc,
            ..
        } = &settings.kind
        else {
            return Err(format!("sink {name}: not an email sink"));
        };
        let from: Mailbox = from
            .trim()
            .parse()
            .map_err(|e| format!("sink {name}: from = {from:?} is not a mail address: {e}"))?;
        for (index, address) in soc.iter().enumerate() {
            parse_mailbox(address).ok_or_else(|| {
                format!("sink {name}: soc[{index}] = {address:?} is not a mail address")
            })?;
        }
        let credentials = match (username, password) {
            (Some(user), Some(secret)) => {
                // SecretError names the variable or file, never the value.
                let password = secret
                    .resolve()
                    .map_err(|e| format!("sink {name}: password: {e}"))?;
                Some(Credentials::new(user.clone(), password))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(format!("sink {name}: username is set but password is not"));
            }
            (None, Some(_)) => {
                return Err(format!("sink {name}: password is set but username is not"));
            }
        };
        let builder = match security {
            SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
            SmtpSecurity::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                host.as_str(),
            )),
        }
        .map_err(|e| format!("sink {name}: host = {host:?}: cannot set up TLS: {e}"))?;
        let mut builder = builder.port(*port).timeout(Some(settings.timeout()));
        if let Some(credentials) = credentials {
            builder = builder.credentials(credentials);
        }
        Ok(EmailSink {
            id_domain: from.email.domain().to_string(),
            from,
            transport: builder.build(),
            endpoint: format!("{host}:{port}"),
            settings: settings.clone(),
        })
    }

    /// Sends one alert. No recipients (no SOC list and no usable owner
    /// address) is a success: there is nobody to tell.
    pub async fn deliver(&self, alert: &Alert) -> Result<(), DeliveryError> {
        let (to, cc) = recipient_groups(&self.settings, alert);
        if to.is_empty() && cc.is_empty() {
            tracing::debug!(
                sink = %self.settings.name,
                alert = %alert.id,
                "no email recipients for alert; nothing sent"
            );
            return Ok(());
        }
        let message = self.message(alert, to, cc)?;
        let limit = self.settings.timeout();
        // lettre's timeout bounds each SMTP command; this bounds the whole attempt.
        match tokio::time::timeout(limit, self.transport.send(message)).await {
            Ok(Ok(_)) => {
                tracing::debug!(sink = %self.settings.name, alert = %alert.id, "alert mailed");
                Ok(())
            }
            Ok(Err(error)) => Err(classify(&self.endpoint, &error)),
            Err(_) => Err(DeliveryError::Retry(format!(
                "SMTP {}: no answer within {}s",
                self.endpoint,
                limit.as_secs()
            ))),
        }
    }

    fn message(
        &self,
        alert: &Alert,
        to: Vec<Mailbox>,
        cc: Vec<Mailbox>,
    ) -> Result<Message, DeliveryError> {
        let (subject, text, html) = render(alert);
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(format!(
                "<{}.alert@{}>",
                id_token(&alert.id),
                self.id_domain
            )))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(ALERT_ID_HEADER),
                alert.id.clone(),
            ));
        for mailbox in to {
            builder = builder.to(mailbox);
        }
        for mailbox in cc {
            builder = builder.cc(mailbox);
        }
        builder
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| DeliveryError::Fatal(format!("cannot build the alert mail: {e}")))
    }
}

/// Permanent replies (5xx) and client-side refusals (no STARTTLS, no usable
/// auth mechanism) will fail the same way again; everything else — 4xx
/// replies, refused or dropped connections, timeouts, TLS hiccups — may not.
fn classify(endpoint: &str, error: &lettre::transport::smtp::Error) -> DeliveryError {
    let message = format!("SMTP {endpoint}: {error}");
    if error.is_permanent() || error.is_client() {
        DeliveryError::Fatal(message)
    } else {
        DeliveryError::Retry(message)
    }
}

/// Who gets the alert: the `soc` list, then (with `notify_owners`) the app's
/// owner and escalation contact when they are mail addresses; deduplicated by
/// address, in that order.
pub fn recipients(settings: &SinkSettings, alert: &Alert) -> Vec<String> {
    let (to, cc) = recipient_groups(settings, alert);
    to.iter().chain(&cc).map(Mailbox::to_string).collect()
}

/// SOC mailboxes go in `To` and the app's contacts in `Cc`; without a SOC
/// list the contacts are the `To`.
fn recipient_groups(settings: &SinkSettings, alert: &Alert) -> (Vec<Mailbox>, Vec<Mailbox>) {
    let SinkKind::Email {
        soc,
        notify_owners,
        soc_min_severity,
        ..
    } = &settings.kind
    else {
        return (Vec::new(), Vec::new());
    };
    let soc_wants = soc_min_severity.is_none_or(|min| alert.severity >= min);
    let mut seen = HashSet::new();
    let mut unique = |candidates: &mut dyn Iterator<Item = &String>| -> Vec<Mailbox> {
        candidates
            .filter_map(|value| parse_mailbox(value))
            .filter(|mailbox| seen.insert(mailbox.email.to_string().to_ascii_lowercase()))
            .collect()
    };
    let to = if soc_wants {
        unique(&mut soc.iter())
    } else {
        Vec::new()
    };
    let contacts = match (&alert.app, notify_owners) {
        (Some(app), true) => unique(&mut std::iter::once(&app.owner).chain(&app.escalation)),
        _ => Vec::new(),
    };
    if to.is_empty() {
        (contacts, Vec::new())
    } else {
        (to, contacts)
    }
}

/// Owners are sometimes a name or a chat handle; only real addresses count.
fn parse_mailbox(value: &str) -> Option<Mailbox> {
    value.trim().parse().ok()
}

/// The alert id as a safe `Message-ID` left-hand side.
fn id_token(id: &str) -> String {
    let token: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if token.is_empty() {
        "unknown".into()
    } else {
        token
    }
}

/// Subject, plain-text body and HTML body of the alert mail.
pub fn render(alert: &Alert) -> (String, String, String) {
    let subject = subject(alert);
    (
        subject.clone(),
        render_text(alert),
        render_html(alert, &subject),
    )
}

fn subject(alert: &Alert) -> String {
    let who = alert
        .app
        .as_ref()
        .map(|app| app.name.as_str())
        .unwrap_or(&alert.identity);
    let line = format!(
        "[{}] {} — {}",
        alert.severity.as_str().to_ascii_uppercase(),
        who,
        alert.detector
    );
    // Registry names are free text: keep the subject to one line.
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The facts both bodies show, as label/value rows.
fn facts(alert: &Alert) -> Vec<(&'static str, String)> {
    let mut rows = Vec::new();
    match &alert.app {
        Some(app) => {
            rows.push(("App", format!("{} ({})", app.name, app.id)));
            rows.push(("Identity", alert.identity.clone()));
            rows.push(("Owner", app.owner.clone()));
            if let Some(escalation) = &app.escalation {
                rows.push(("Escalation", escalation.clone()));
            }
            if let Some(team) = &app.team {
                rows.push(("Team", team.clone()));
            }
            rows.push((
                "Risk",
                format!(
                    "{} tier, risk score {}",
                    tier_name(app.risk_tier),
                    app.risk_score
                ),
            ));
        }
        None => {
            rows.push(("App", "not registered".into()));
            rows.push(("Identity", alert.identity.clone()));
        }
    }
    rows.push((
        "Detector",
        format!("{} (kind {})", alert.detector, alert.kind),
    ));
    rows.push(("Severity", alert.severity.as_str().into()));
    rows.push((
        "Window",
        format!(
            "{} to {}",
            time_text(alert.window_start),
            time_text(alert.window_end)
        ),
    ));
    rows.push(("Score", format!("{} / 100", alert.score)));
    rows.push(("Observed", value_text(&alert.evidence.observed)));
    rows.push(("Baseline", value_text(&alert.evidence.baseline)));
    if let Some(group) = &alert.group {
        rows.push((
            "Group",
            format!(
                "repeat of alert {} ({} alerts so far)",
                group.id, group.count
            ),
        ));
    }
    rows
}

fn render_text(alert: &Alert) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{}\n", alert.summary);
    for (label, value) in facts(alert) {
        let _ = writeln!(out, "{:<11} {value}", format!("{label}:"));
    }
    if !alert.evidence.details.is_empty() {
        out.push_str("\nEvidence details:\n");
        for (key, value) in &alert.evidence.details {
            let _ = writeln!(out, "  {key}: {}", value_text(value));
        }
    }
    if !alert.evidence.samples.is_empty() {
        out.push_str("\nSample events:\n");
        for sample in &alert.evidence.samples {
            let _ = write!(out, "  {}  {}", time_text(sample.time), sample.activity);
            if let Some(id) = &sample.vendor_event_id {
                let _ = write!(out, "  event {id}");
            }
            if let Some(origin) = &sample.origin {
                let _ = write!(out, "  from {}", origin_text(origin));
            }
            out.push('\n');
        }
    }
    if !alert.actions.is_empty() {
        out.push_str("\nResponse actions:\n");
        for action in &alert.actions {
            let _ = writeln!(
                out,
                "  {} ({}) on {} via sink {}",
                action.kind, action.mode, action.target, action.sink
            );
        }
    }
    let _ = writeln!(
        out,
        "\nInvestigate (history tables):\n  {}\n\nAlert id {}",
        alert.sql, alert.id
    );
    out
}

fn render_html(alert: &Alert, subject: &str) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>\
         <body style=\"font-family:sans-serif;font-size:14px\">\n",
    );
    let _ = writeln!(out, "<h2>{}</h2>", escape(subject));
    let _ = writeln!(out, "<p>{}</p>", escape(&alert.summary));
    out.push_str("<table cellpadding=\"3\">\n");
    for (label, value) in facts(alert) {
        let _ = writeln!(
            out,
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
            escape(label),
            escape(&value)
        );
    }
    out.push_str("</table>\n");
    if !alert.evidence.details.is_empty() {
        out.push_str("<h3>Evidence details</h3>\n<table cellpadding=\"3\">\n");
        for (key, value) in &alert.evidence.details {
            let _ = writeln!(
                out,
                "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
                escape(key),
                escape(&value_text(value))
            );
        }
        out.push_str("</table>\n");
    }
    if !alert.evidence.samples.is_empty() {
        out.push_str(
            "<h3>Sample events</h3>\n<table cellpadding=\"3\" border=\"1\" \
             style=\"border-collapse:collapse\">\n<tr><th>Time</th><th>Activity</th>\
             <th>Vendor event id</th><th>Origin</th></tr>\n",
        );
        for sample in &alert.evidence.samples {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&time_text(sample.time)),
                escape(&sample.activity),
                escape(sample.vendor_event_id.as_deref().unwrap_or("")),
                escape(&sample.origin.as_ref().map(origin_text).unwrap_or_default())
            );
        }
        out.push_str("</table>\n");
    }
    if !alert.actions.is_empty() {
        out.push_str("<h3>Response actions</h3>\n<ul>\n");
        for action in &alert.actions {
            let _ = writeln!(
                out,
                "<li>{} ({}) on {} via sink {}</li>",
                escape(&action.kind),
                escape(&action.mode),
                escape(&action.target),
                escape(&action.sink)
            );
        }
        out.push_str("</ul>\n");
    }
    let _ = writeln!(
        out,
        "<h3>Investigate</h3>\n<p>The events behind the alert, from the history tables:</p>\n\
         <pre style=\"white-space:pre-wrap\">{}</pre>\n\
         <p style=\"color:#666\">Alert id {}</p>\n</body></html>",
        escape(&alert.sql),
        escape(&alert.id)
    );
    out
}

/// Escapes text for HTML element content and double- or single-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Strings bare, everything else as compact JSON.
fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "none".into(),
        other => other.to_string(),
    }
}

fn time_text(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn origin_text(origin: &Origin) -> String {
    match origin {
        Origin::Kafka {
            topic,
            partition,
            offset,
        } => format!("Kafka {topic} partition {partition} offset {offset}"),
        Origin::File { path, line } => format!("file {path} line {line}"),
    }
}

fn tier_name(tier: RiskTier) -> &'static str {
    match tier {
        RiskTier::Public => "public",
        RiskTier::Internal => "internal",
        RiskTier::Restricted => "restricted",
        RiskTier::Regulated => "regulated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Severity;
    use crate::detect::alert::{AlertApp, EventRef, Evidence};
    use crate::settings::SecretRef;

    fn settings(soc: &[&str], notify_owners: bool) -> SinkSettings {
        SinkSettings {
            name: "mail".into(),
            min_severity: Severity::Medium,
            timeout_secs: 5,
            max_in_flight: 1,
            kind: SinkKind::Email {
                host: "127.0.0.1".into(),
                port: 2525,
                security: SmtpSecurity::None,
                username: None,
                password: None,
                from: "AppWarden <appwarden@corp.example>".into(),
                soc: soc.iter().map(|s| s.to_string()).collect(),
                soc_min_severity: None,
                notify_owners,
            },
        }
    }

    fn time(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn alert(owner: &str, escalation: Option<&str>) -> Alert {
        let mut details = serde_json::Map::new();
        details.insert("distinct_secrets".into(), serde_json::json!(42));
        details.insert("mount".into(), serde_json::json!("kv/<prod>"));
        Alert {
            id: "00ab12cd34ef5678".into(),
            detector: "mass_secret_read".into(),
            kind: "secret_reads".into(),
            identity: "app:invoice-bot".into(),
            app: Some(AlertApp {
                id: "invoice-bot".into(),
                name: "Invoice bot".into(),
                owner: owner.into(),
                escalation: escalation.map(str::to_string),
                team: Some("Finance & Ops".into()),
                risk_tier: RiskTier::Restricted,
                risk_score: 9,
            }),
            severity: Severity::High,
            score: 87.5,
            window_start: time("2026-11-23T10:00:00Z"),
            window_end: time("2026-11-23T10:05:00Z"),
            summary: "Read 42 secrets <script>alert(1)</script> in 5 min".into(),
            evidence: Evidence {
                observed: serde_json::json!(42),
                baseline: serde_json::json!(3.5),
                details,
                samples: vec![EventRef {
                    time: time("2026-11-23T10:01:02Z"),
                    activity: "secret_read".into(),
                    vendor_event_id: Some("ev-1".into()),
                    origin: Some(Origin::Kafka {
                        topic: "vault-audit".into(),
                        partition: 3,
                        offset: 1234,
                    }),
                }],
            },
            sql: "SELECT * FROM events WHERE identity_key = 'app:invoice-bot' AND time < TIMESTAMP '2026-11-23T10:05:00.000Z'".into(),
            class_uid: 2004,
            actions: Vec::new(),
            group: None,
        }
    }

    #[test]
    fn recipients_are_soc_then_owner_and_escalation_deduplicated() {
        let s = settings(
            &[
                "soc@corp.example",
                "SOC@corp.example",
                "Oncall <oncall@corp.example>",
            ],
            true,
        );
        let a = alert("Alice <alice@corp.example>", Some("ONCALL@corp.example"));
        assert_eq!(
            recipients(&s, &a),
            vec![
                "soc@corp.example",
                "Oncall <oncall@corp.example>",
                "Alice <alice@corp.example>",
            ]
        );
    }

    #[test]
    fn owners_are_left_out_unless_asked_or_unparseable() {
        let a = alert("alice@corp.example", Some("bob@corp.example"));
        assert_eq!(
            recipients(&settings(&["soc@corp.example"], false), &a),
            vec!["soc@corp.example"]
        );
        let handle = alert("@alice in #finance", Some("bob@corp.example"));
        assert_eq!(
            recipients(&settings(&["soc@corp.example"], true), &handle),
            vec!["soc@corp.example", "bob@corp.example"]
        );
        let mut unregistered = alert("alice@corp.example", None);
        unregistered.app = None;
        assert!(recipients(&settings(&[], true), &unregistered).is_empty());
    }

    #[test]
    fn soc_threshold_applies_to_the_soc_only() {
        let mut s = settings(&["soc@corp.example"], true);
        if let SinkKind::Email {
            soc_min_severity, ..
        } = &mut s.kind
        {
            *soc_min_severity = Some(Severity::Critical);
        }
        let got = recipients(&s, &alert("owner@corp.example", None));
        assert!(!got.iter().any(|r| r.contains("soc@")), "{got:?}");
        assert!(!got.is_empty(), "the owner still gets it");
    }

    #[test]
    fn without_soc_the_owner_is_the_addressee() {
        let a = alert("alice@corp.example", None);
        let (to, cc) = recipient_groups(&settings(&[], true), &a);
        assert_eq!(to.len(), 1);
        assert!(cc.is_empty());
    }

    #[test]
    fn subject_names_severity_app_and_detector() {
        let mut a = alert("alice@corp.example", None);
        assert_eq!(render(&a).0, "[HIGH] Invoice bot — mass_secret_read");
        a.app = None;
        a.severity = Severity::Critical;
        assert_eq!(
            render(&a).0,
            "[CRITICAL] app:invoice-bot — mass_secret_read"
        );
    }

    #[test]
    fn bodies_carry_the_facts_and_html_is_escaped() {
        let a = alert("Alice <alice@corp.example>", Some("oncall@corp.example"));
        let (_, text, html) = render(&a);
        for needle in [
            "Read 42 secrets <script>alert(1)</script> in 5 min",
            "Alice <alice@corp.example>",
            "oncall@corp.example",
            "Finance & Ops",
            "restricted tier, risk score 9",
            "mass_secret_read (kind secret_reads)",
            "2026-11-23T10:00:00Z to 2026-11-23T10:05:00Z",
            "87.5 / 100",
            "Observed:   42",
            "Baseline:   3.5",
            "mount: kv/<prod>",
            "2026-11-23T10:01:02Z  secret_read  event ev-1  from Kafka vault-audit partition 3 offset 1234",
            &a.sql,
        ] {
            assert!(text.contains(needle), "text lacks {needle:?}:\n{text}");
        }
        assert!(!html.contains("<script>"), "{html}");
        for needle in [
            "Read 42 secrets &lt;script&gt;alert(1)&lt;/script&gt; in 5 min",
            "Alice &lt;alice@corp.example&gt;",
            "Finance &amp; Ops",
            "<td>42</td>",
            "<td>3.5</td>",
            "kv/&lt;prod&gt;",
            "Kafka vault-audit partition 3 offset 1234",
            "identity_key = &#39;app:invoice-bot&#39; AND time &lt; TIMESTAMP",
        ] {
            assert!(html.contains(needle), "html lacks {needle:?}:\n{html}");
        }
    }

    #[test]
    fn message_has_ids_and_both_parts() {
        let sink = EmailSink::new(&settings(&["soc@corp.example"], true)).unwrap();
        let a = alert("alice@corp.example", None);
        let (to, cc) = recipient_groups(&sink.settings, &a);
        let raw = String::from_utf8(sink.message(&a, to, cc).unwrap().formatted()).unwrap();
        assert!(
            raw.contains("Message-ID: <00ab12cd34ef5678.alert@corp.example>"),
            "{raw}"
        );
        assert!(
            raw.contains("X-AppWarden-Alert-Id: 00ab12cd34ef5678"),
            "{raw}"
        );
        assert!(raw.contains("To: soc@corp.example"), "{raw}");
        assert!(raw.contains("Cc: alice@corp.example"), "{raw}");
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("text/plain"), "{raw}");
        assert!(raw.contains("text/html"), "{raw}");
    }

    #[test]
    fn new_checks_addresses_and_names_the_secret_not_its_value() {
        let mut s = settings(&["not an address"], false);
        let err = EmailSink::new(&s).unwrap_err();
        assert!(err.contains("soc[0]"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("smtp-password");
        let SinkKind::Email {
            soc,
            username,
            password,
            ..
        } = &mut s.kind
        else {
            unreachable!()
        };
        *soc = vec!["soc@corp.example".into()];
        *username = Some("appwarden".into());
        *password = Some(SecretRef {
            env: None,
            file: Some(missing.clone()),
        });
        let err = EmailSink::new(&s).unwrap_err();
        assert!(err.contains("password"), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");

        std::fs::write(&missing, "hunter2-very-secret\n").unwrap();
        let sink = EmailSink::new(&s).unwrap();
        assert!(!format!("{sink:?}").contains("hunter2"));
    }
}
