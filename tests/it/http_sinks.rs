//! HTTP alert sinks against a real HTTP/1.1 receiver on 127.0.0.1: signatures, status handling, payloads, kill switch.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use appwarden::deliver::http::{
    HttpSink, pagerduty_payload, revocation_payload, slack_payload, verify,
};
use appwarden::deliver::{DeliveryError, SinkKind, SinkSettings};
use appwarden::detect::alert::{AlertAction, AlertApp, EventRef, Evidence, investigation_sql};
use appwarden::detect::{Alert, Severity};
use appwarden::event::Origin;
use appwarden::identity::registry::RiskTier;
use appwarden::settings::SecretRef;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    /// Lowercased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// What the receiver answers to one request.
struct Reply {
    status: u16,
    body: String,
    delay: Duration,
}

impl Reply {
    fn status(status: u16) -> Reply {
        Reply {
            status,
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
}

/// A real HTTP server on an ephemeral port that records every request and
/// answers with what the test's `reply` returns for the request's index.
struct Receiver {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Received>>>,
    accept: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(reply: impl Fn(usize) -> Reply + Send + 'static) -> Receiver {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1:0"));
        let addr = server.server_addr().to_ip().expect("an IP address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let accept = std::thread::spawn({
            let server = server.clone();
            let requests = requests.clone();
            move || {
                for mut request in server.incoming_requests() {
                    let mut body = Vec::new();
                    request
                        .as_reader()
                        .read_to_end(&mut body)
                        .expect("read request body");
                    let received = Received {
                        method: request.method().to_string(),
                        path: request.url().to_string(),
                        headers: request
                            .headers()
                            .iter()
                            .map(|h| {
                                (
                                    h.field.as_str().as_str().to_ascii_lowercase(),
                                    h.value.as_str().to_string(),
                                )
                            })
                            .collect(),
                        body,
                    };
                    // Recorded before answering: once the client has its response, the request is here.
                    let index = {
                        let mut requests = requests.lock().unwrap();
                        requests.push(received);
                        requests.len() - 1
                    };
                    let answer = reply(index);
                    // Answer on a thread of its own so a slow answer does not hold up the others.
                    std::thread::spawn(move || {
                        std::thread::sleep(answer.delay);
                        let response = tiny_http::Response::from_string(answer.body)
                            .with_status_code(answer.status);
                        let _ = request.respond(response);
                    });
                }
            }
        });
        Receiver {
            server,
            addr,
            requests,
            accept: Some(accept),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// A secret in a temp file (no process-wide environment to race on).
fn secret_file(dir: &tempfile::TempDir, name: &str, value: &str) -> SecretRef {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    SecretRef {
        env: None,
        file: Some(path),
    }
}

fn settings(name: &str, timeout_secs: u64, kind: SinkKind) -> SinkSettings {
    SinkSettings {
        name: name.into(),
        min_severity: Severity::Medium,
        timeout_secs,
        max_in_flight: 1,
        kind,
    }
}

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

/// A secret-reads burst of a regulated payroll app, every field filled in.
fn alert() -> Alert {
    let start = time("2026-11-23T10:00:00Z");
    let end = time("2026-11-23T10:15:00Z");
    let mut details = serde_json::Map::new();
    details.insert("distinct_secrets".into(), json!(42));
    details.insert("expected".into(), json!(5.0));
    details.insert("mount".into(), json!("kv/payroll"));
    Alert {
        id: "9f3c2a1b7d4e5f60".into(),
        detector: "secret-reads-burst".into(),
        kind: "secret_reads".into(),
        identity: "app:payroll-sync".into(),
        app: Some(AlertApp {
            id: "payroll-sync".into(),
            name: "Payroll sync".into(),
            owner: "maria.lopez@example.com".into(),
            escalation: Some("payroll-oncall@example.com".into()),
            team: Some("finance-eng".into()),
            risk_tier: RiskTier::Regulated,
            risk_score: 11,
        }),
        severity: Severity::Critical,
        score: 87.5,
        window_start: start,
        window_end: end,
        summary: "app:payroll-sync (Payroll sync) read 42 distinct secrets in the 15 minutes from \
                  2026-11-23 10:00 UTC, 8.4x the 5.0 expected for Mon 10:00 (z = 9.3)."
            .into(),
        evidence: Evidence {
            observed: json!(42),
            baseline: json!(5.0),
            details,
            samples: vec![EventRef {
                time: time("2026-11-23T10:03:12Z"),
                activity: "secret.read".into(),
                vendor_event_id: Some("hmac-sha256:5b1f0c9e".into()),
                origin: Some(Origin::Kafka {
                    topic: "vault-audit".into(),
                    partition: 3,
                    offset: 184_467,
                }),
            }],
        },
        sql: investigation_sql("app:payroll-sync", start, end, "category = 'secret_read'"),
        class_uid: 2004,
        actions: vec![AlertAction {
            kind: "kill_switch".into(),
            mode: "dry_run".into(),
            sink: "kill-switch".into(),
            target: "payroll-sync".into(),
        }],
        group: None,
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn webhook_is_signed_and_the_receiver_verifies_it() {
    let receiver = Receiver::start(|_| Reply::status(200));
    let dir = tempfile::tempdir().unwrap();
    let key = "whsec-3f9a7c1e-soc";
    let sink = HttpSink::new(&settings(
        "webhook-soc",
        5,
        SinkKind::Webhook {
            url: receiver.url("/hooks/appwarden"),
            signing_key: secret_file(&dir, "signing_key", key),
        },
    ))
    .unwrap();
    let alert = alert();

    sink.deliver(&alert).await.unwrap();

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/appwarden");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.header("x-appwarden-alert-id"),
        Some(alert.id.as_str())
    );
    let decoded: Alert = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(decoded, alert);

    // What a receiver does: the timestamp header, the raw body, its own clock.
    let timestamp: i64 = request
        .header("x-appwarden-timestamp")
        .expect("timestamp header")
        .parse()
        .expect("unix seconds");
    let signature = request.header("x-appwarden-signature").expect("signature");
    let now = Utc::now().timestamp();
    assert!((now - timestamp).abs() <= 60, "{timestamp} vs {now}");
    assert!(verify(
        key.as_bytes(),
        timestamp,
        &request.body,
        signature,
        now,
        300
    ));

    let mut tampered = request.body.clone();
    let at = tampered.iter().position(|b| *b == b'4').unwrap();
    tampered[at] = b'9';
    assert!(!verify(
        key.as_bytes(),
        timestamp,
        &tampered,
        signature,
        now,
        300
    ));
    assert!(!verify(
        b"another key",
        timestamp,
        &request.body,
        signature,
        now,
        300
    ));
    // Replayed ten minutes later.
    assert!(!verify(
        key.as_bytes(),
        timestamp,
        &request.body,
        signature,
        timestamp + 600,
        300
    ));
}

#[tokio::test]
async fn statuses_decide_between_retry_and_fatal() {
    let statuses = [500, 429, 400, 200, 503];
    let receiver = Receiver::start(move |n| Reply {
        status: statuses[n.min(statuses.len() - 1)],
        body: "z".repeat(1000),
        delay: Duration::ZERO,
    });
    let dir = tempfile::tempdir().unwrap();
    let sink = HttpSink::new(&settings(
        "status-sink",
        5,
        SinkKind::Webhook {
            url: receiver.url("/h"),
            signing_key: secret_file(&dir, "k", "key"),
        },
    ))
    .unwrap();
    let alert = alert();

    let outcomes = [
        sink.deliver(&alert).await,
        sink.deliver(&alert).await,
        sink.deliver(&alert).await,
        sink.deliver(&alert).await,
        sink.deliver(&alert).await,
    ];

    assert!(
        matches!(&outcomes[0], Err(DeliveryError::Retry(m)) if m.contains("500")),
        "{:?}",
        outcomes[0]
    );
    assert!(
        matches!(&outcomes[1], Err(DeliveryError::Retry(m)) if m.contains("429")),
        "{:?}",
        outcomes[1]
    );
    assert!(
        matches!(&outcomes[2], Err(DeliveryError::Fatal(m)) if m.contains("400")),
        "{:?}",
        outcomes[2]
    );
    assert_eq!(outcomes[3], Ok(()));
    // The error carries the status and at most 200 bytes of the body.
    let Err(DeliveryError::Retry(message)) = &outcomes[4] else {
        panic!("{:?}", outcomes[4]);
    };
    assert!(message.contains("503"), "{message}");
    assert_eq!(message.matches('z').count(), 200, "{message}");
    assert_eq!(receiver.requests().len(), 5);
}

#[tokio::test]
async fn a_closed_port_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let sink = HttpSink::new(&settings(
        "closed",
        2,
        SinkKind::Webhook {
            url: format!("http://127.0.0.1:{}/h", closed_port()),
            signing_key: secret_file(&dir, "k", "key"),
        },
    ))
    .unwrap();

    let outcome = sink.deliver(&alert()).await;

    assert!(
        matches!(&outcome, Err(DeliveryError::Retry(_))),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_is_retried() {
    let receiver = Receiver::start(|_| Reply {
        status: 200,
        body: String::new(),
        delay: Duration::from_secs(5),
    });
    let dir = tempfile::tempdir().unwrap();
    let sink = HttpSink::new(&settings(
        "slow",
        1,
        SinkKind::Webhook {
            url: receiver.url("/h"),
            signing_key: secret_file(&dir, "k", "key"),
        },
    ))
    .unwrap();

    let started = Instant::now();
    let outcome = sink.deliver(&alert()).await;

    assert!(
        matches!(&outcome, Err(DeliveryError::Retry(m)) if m.contains("timed out")),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(receiver.requests().len(), 1);
}

/// Every string under a `text` key, anywhere in the payload.
fn texts(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match value {
                    Value::String(text) if key == "text" => out.push(text.clone()),
                    other => texts(other, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| texts(item, out)),
        _ => {}
    }
}

#[test]
fn slack_payload_is_readable_and_within_limits() {
    let alert = alert();
    let payload = slack_payload(&alert);

    assert!(
        payload["text"]
            .as_str()
            .unwrap()
            .contains("secret-reads-burst")
    );
    let blocks = payload["blocks"].as_array().expect("blocks");
    let header = blocks
        .iter()
        .find(|b| b["type"] == "header")
        .expect("a header block");
    let header = header["text"]["text"].as_str().unwrap();
    assert!(header.contains("CRITICAL"), "{header}");
    assert!(header.contains("Payroll sync"), "{header}");
    assert!(header.contains("secret-reads-burst"), "{header}");
    let fields: Vec<&str> = blocks
        .iter()
        .filter_map(|b| b["fields"].as_array())
        .flatten()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    for label in ["App", "Owner", "Detector", "Severity", "Window", "Score"] {
        assert!(
            fields.iter().any(|f| f.starts_with(&format!("*{label}*"))),
            "{label} in {fields:?}"
        );
    }
    assert!(
        fields.iter().any(|f| f.contains("maria.lopez@example.com")),
        "{fields:?}"
    );
    let all = serde_json::to_string(&payload).unwrap();
    assert!(all.contains("*Observed:* `42`"), "{all}");
    assert!(all.contains(&alert.id), "{all}");
    // The SQL's `<` is escaped for mrkdwn.
    assert!(all.contains("time &lt; TIMESTAMP"), "{all}");

    // A huge summary and query stay within Slack's 3000 characters per text.
    let mut huge = alert.clone();
    huge.summary = "<b>&".repeat(5000);
    huge.sql = "SELECT ".to_string() + &"x, ".repeat(4000);
    huge.evidence.observed = json!("y".repeat(5000));
    let mut all_texts = Vec::new();
    texts(&slack_payload(&huge), &mut all_texts);
    assert!(all_texts.len() >= 10, "{}", all_texts.len());
    let longest = all_texts.iter().map(|t| t.chars().count()).max().unwrap();
    assert!(longest <= 3000, "a text of {longest} characters");
    assert!(
        all_texts.iter().any(|t| t.chars().count() > 2900),
        "the summary is cut near the limit, not dropped"
    );
}

#[test]
fn pagerduty_payload_has_the_required_fields() {
    let alert = alert();
    let payload = pagerduty_payload(&alert, "R0UT1NGK3Y");

    assert_eq!(payload["routing_key"], "R0UT1NGK3Y");
    assert_eq!(payload["event_action"], "trigger");
    assert_eq!(payload["dedup_key"], "secret-reads-burst:app:payroll-sync");
    let body = &payload["payload"];
    assert_eq!(body["summary"], alert.summary.as_str());
    assert_eq!(body["source"], "appwarden:app:payroll-sync");
    assert_eq!(body["severity"], "critical");
    assert_eq!(
        body["timestamp"].as_str().map(time),
        Some(alert.window_end),
        "{body}"
    );
    assert_eq!(body["component"], "payroll-sync");
    assert_eq!(body["group"], "secret-reads-burst");
    assert_eq!(body["class"], "secret_reads");
    assert_eq!(body["custom_details"]["alert_id"], alert.id.as_str());
    assert_eq!(body["custom_details"]["sql"], alert.sql.as_str());
    assert_eq!(
        body["custom_details"]["app"]["owner"],
        "maria.lopez@example.com"
    );
    assert_eq!(body["custom_details"]["evidence"]["observed"], 42);

    for severity in [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ] {
        let mut a = alert.clone();
        a.severity = severity;
        let mapped = pagerduty_payload(&a, "k")["payload"]["severity"].clone();
        assert!(
            ["critical", "error", "warning", "info"].contains(&mapped.as_str().unwrap()),
            "{severity}: {mapped}"
        );
    }

    // The next window of the same detector and identity updates the same incident.
    let mut later = alert.clone();
    later.id = "0a1b2c3d4e5f6071".into();
    later.window_start = time("2026-11-23T10:15:00Z");
    later.window_end = time("2026-11-23T10:30:00Z");
    assert_eq!(
        pagerduty_payload(&later, "k")["dedup_key"],
        payload["dedup_key"]
    );
    let mut other = alert.clone();
    other.identity = "app:ledger-export".into();
    assert_ne!(
        pagerduty_payload(&other, "k")["dedup_key"],
        payload["dedup_key"]
    );

    let mut huge = alert.clone();
    huge.summary = "é".repeat(5000);
    let summary = pagerduty_payload(&huge, "k")["payload"]["summary"].clone();
    let length = summary.as_str().unwrap().chars().count();
    assert!((1000..=1024).contains(&length), "{length}");
}

#[tokio::test]
async fn slack_and_pagerduty_post_their_payloads() {
    let receiver = Receiver::start(|n| Reply::status(if n == 0 { 200 } else { 202 }));
    let dir = tempfile::tempdir().unwrap();
    let alert = alert();
    let slack = HttpSink::new(&settings(
        "slack-soc",
        5,
        SinkKind::Slack {
            webhook_url: secret_file(&dir, "slack", &receiver.url("/services/T0/B0/abc")),
        },
    ))
    .unwrap();
    let pagerduty = HttpSink::new(&settings(
        "pd",
        5,
        SinkKind::Pagerduty {
            routing_key: secret_file(&dir, "pd", "R0UT1NGK3Y"),
            url: receiver.url("/v2/enqueue"),
        },
    ))
    .unwrap();

    slack.deliver(&alert).await.unwrap();
    pagerduty.deliver(&alert).await.unwrap();

    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].path, "/services/T0/B0/abc");
    assert_eq!(requests[0].json(), slack_payload(&alert));
    assert_eq!(requests[1].path, "/v2/enqueue");
    assert_eq!(requests[1].json(), pagerduty_payload(&alert, "R0UT1NGK3Y"));
    assert_eq!(requests[1].header("content-type"), Some("application/json"));
}

/// Log lines written by `tracing` while the guard is held (current thread only).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Delivers `alert` with `tracing` writing into a buffer (on this thread:
/// the tests run on a current-thread runtime); returns the outcome and the log.
async fn deliver_logged(sink: &HttpSink, alert: &Alert) -> (Result<(), DeliveryError>, String) {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let outcome = sink.deliver(alert).await;
    drop(guard);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    (outcome, text)
}

#[tokio::test]
async fn revocation_dry_run_calls_nothing_and_says_what_it_would_revoke() {
    let receiver = Receiver::start(|_| Reply::status(200));
    let dir = tempfile::tempdir().unwrap();
    let sink = HttpSink::new(&settings(
        "kill-switch",
        5,
        SinkKind::Revocation {
            url: receiver.url("/v1/apps/revoke"),
            token: secret_file(&dir, "token", "tok-live-7d2e"),
            live: false,
        },
    ))
    .unwrap();
    let (outcome, logs) = deliver_logged(&sink, &alert()).await;

    assert_eq!(outcome, Ok(()));
    // A call would have been recorded before `deliver` got its answer.
    assert_eq!(receiver.requests().len(), 0);
    assert!(logs.contains("WARN"), "{logs}");
    assert!(logs.contains("would revoke payroll-sync"), "{logs}");
    assert!(logs.contains("9f3c2a1b7d4e5f60"), "{logs}");
    assert!(!logs.contains("tok-live-7d2e"), "{logs}");
}

#[tokio::test]
async fn revocation_dry_run_log_hides_the_credentials_in_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let sink = HttpSink::new(&settings(
        "kill-switch",
        5,
        SinkKind::Revocation {
            url: "https://ops:pw-in-userinfo-51d2@revoke.example.com:8443/v1/apps/revoke?token=tok-in-query-8a3f&team=blue-77q".into(),
            token: secret_file(&dir, "token", "tok-live-7d2e"),
            live: false,
        },
    ))
    .unwrap();
    let (outcome, logs) = deliver_logged(&sink, &alert()).await;

    assert_eq!(outcome, Ok(()));
    assert!(logs.contains("would revoke payroll-sync"), "{logs}");
    for secret in [
        "pw-in-userinfo-51d2",
        "tok-in-query-8a3f",
        "ops:",
        "blue-77q",
        "tok-live-7d2e",
    ] {
        assert!(!logs.contains(secret), "{secret} in the log: {logs}");
    }
    assert!(
        logs.contains("revoke.example.com:8443/v1/apps/revoke?token=[redacted]&team=[redacted]"),
        "{logs}"
    );
}

#[tokio::test]
async fn revocation_live_sends_the_bearer_token_and_the_app() {
    let receiver = Receiver::start(|_| Reply::status(200));
    let dir = tempfile::tempdir().unwrap();
    let sink = HttpSink::new(&settings(
        "kill-switch",
        5,
        SinkKind::Revocation {
            url: receiver.url("/v1/apps/revoke"),
            token: secret_file(&dir, "token", "tok-live-7d2e"),
            live: true,
        },
    ))
    .unwrap();
    let alert = alert();

    sink.deliver(&alert).await.unwrap();

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/apps/revoke");
    assert_eq!(
        request.header("authorization"),
        Some("Bearer tok-live-7d2e")
    );
    let body = request.json();
    assert_eq!(body, revocation_payload(&alert));
    assert_eq!(body["app_id"], "payroll-sync");
    assert_eq!(body["identity"], "app:payroll-sync");
    assert_eq!(body["alert_id"], alert.id.as_str());
    assert_eq!(body["severity"], "critical");
    assert_eq!(body["reason"], alert.summary.as_str());
}

#[tokio::test]
async fn an_email_sink_is_not_delivered_over_http() {
    let sink = HttpSink::new(&settings(
        "mail",
        5,
        SinkKind::Email {
            host: "smtp.example.com".into(),
            port: 587,
            security: appwarden::deliver::SmtpSecurity::Starttls,
            username: None,
            password: None,
            from: "appwarden@example.com".into(),
            soc: vec!["soc@example.com".into()],
            soc_min_severity: None,
            notify_owners: false,
        },
    ))
    .unwrap();

    let outcome = sink.deliver(&alert()).await;

    assert!(
        matches!(&outcome, Err(DeliveryError::Fatal(m)) if m.contains("email")),
        "{outcome:?}"
    );
}
