//! Email sink against a real SMTP server: aiosmtpd (Python) run as a child
//! process, storing what it receives in a Maildir that the tests read back.
//! `scripts/test.sh` installs aiosmtpd; without it these tests fail, on purpose.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mail_parser::MessageParser;
use serde_json::json;

use appwarden::deliver::email::EmailSink;
use appwarden::deliver::{DeliveryError, SinkKind, SinkSettings, SmtpSecurity};
use appwarden::detect::{Alert, Severity};

const SOC: &str = "soc@corp.example";
const OWNER: &str = "maria.lopez@corp.example";
const ESCALATION: &str = "payroll-oncall@corp.example";

/// aiosmtpd listening on loopback, killed on drop.
pub(crate) struct SmtpServer {
    child: Child,
    port: u16,
    maildir: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Stores every message in a Maildir.
    pub(crate) async fn mailbox() -> SmtpServer {
        SmtpServer::mailbox_at(free_port()).await
    }

    /// A Maildir server on `port` (a test that starts it late picks the port first).
    pub(crate) async fn mailbox_at(port: u16) -> SmtpServer {
        let dir = tempfile::tempdir().unwrap();
        // The Mailbox handler creates the Maildir itself and refuses an existing,
        // non-Maildir directory: name a path inside the tempdir, do not create it.
        let maildir = dir.path().join("maildir");
        let args = vec![
            "aiosmtpd.handlers.Mailbox".to_string(),
            maildir.display().to_string(),
        ];
        SmtpServer::start(dir, maildir, args, None, port).await
    }

    /// Answers every RCPT TO with `code`: a server that refuses mail.
    async fn rejecting(code: u16) -> SmtpServer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rejecting.py"),
            "class Reject:\n\
             \x20   def __init__(self, code):\n\
             \x20       self.code = code\n\
             \x20   @classmethod\n\
             \x20   def from_cli(cls, parser, code):\n\
             \x20       return cls(code)\n\
             \x20   async def handle_RCPT(self, server, session, envelope, address, options):\n\
             \x20       return f'{self.code} rejected by the test server'\n",
        )
        .unwrap();
        let maildir = dir.path().join("unused");
        let python_path = dir.path().to_path_buf();
        let args = vec!["rejecting.Reject".to_string(), code.to_string()];
        SmtpServer::start(dir, maildir, args, Some(python_path), free_port()).await
    }

    async fn start(
        dir: tempfile::TempDir,
        maildir: PathBuf,
        handler: Vec<String>,
        python_path: Option<PathBuf>,
        port: u16,
    ) -> SmtpServer {
        require_aiosmtpd();
        let log = dir.path().join("aiosmtpd.log");
        let mut command = Command::new("python3");
        command
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
            ])
            .args(&handler)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(path) = python_path {
            command.env("PYTHONPATH", path);
        }
        let child = command.spawn().expect("start python3 -m aiosmtpd");
        let mut server = SmtpServer {
            child,
            port,
            maildir,
            log,
            _dir: dir,
        };
        server.wait_until_listening().await;
        server
    }

    /// Bounded poll until the port accepts connections (or the server died).
    async fn wait_until_listening(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("aiosmtpd exited with {status}: {}", self.log_text());
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "aiosmtpd did not listen on {addr} within 20s: {}",
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Raw messages delivered so far.
    pub(crate) fn delivered(&self) -> Vec<Vec<u8>> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
            .collect()
    }

    /// Bounded poll for exactly one delivered message.
    async fn one_message(&self) -> Vec<u8> {
        let start = Instant::now();
        loop {
            let mut messages = self.delivered();
            if !messages.is_empty() || start.elapsed() > Duration::from_secs(10) {
                assert_eq!(messages.len(), 1, "log: {}", self.log_text());
                return messages.remove(0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails (never skips) when the SMTP server is not installed.
fn require_aiosmtpd() {
    let importable = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        importable,
        "the email sink tests need the Python SMTP server aiosmtpd, which `python3` cannot import: \
         run scripts/test.sh (it installs aiosmtpd) or `python3 -m pip install --user aiosmtpd`"
    );
}

/// A port nothing listens on (once released).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn settings(port: u16, notify_owners: bool) -> SinkSettings {
    SinkSettings {
        name: "soc-mail".into(),
        min_severity: Severity::Medium,
        timeout_secs: 10,
        max_in_flight: 1,
        kind: SinkKind::Email {
            host: "127.0.0.1".into(),
            port,
            security: SmtpSecurity::None,
            username: None,
            password: None,
            from: "AppWarden <appwarden@corp.example>".into(),
            soc: vec![SOC.into()],
            soc_min_severity: None,
            notify_owners,
        },
    }
}

/// A secret-reads burst of a registered payroll app, with HTML in its summary.
fn registered_alert() -> Alert {
    serde_json::from_value(json!({
        "id": "9f3c2a1b7d4e5f60",
        "detector": "mass_secret_read",
        "kind": "secret_reads",
        "identity": "app:payroll-sync",
        "app": {
            "id": "payroll-sync",
            "name": "Payroll sync",
            "owner": OWNER,
            "escalation": ESCALATION,
            "team": "finance-eng",
            "risk_tier": "regulated",
            "risk_score": 11
        },
        "severity": "high",
        "score": 87.5,
        "window_start": "2026-11-23T10:00:00Z",
        "window_end": "2026-11-23T10:15:00Z",
        "summary": "Payroll sync read 42 distinct secrets <script>alert(1)</script> in 15 minutes",
        "evidence": {
            "observed": 42,
            "baseline": 5.5,
            "details": {"mount": "kv/payroll"},
            "samples": [{
                "time": "2026-11-23T10:03:12Z",
                "activity": "secret.read",
                "vendor_event_id": "hmac-sha256:5b1f0c9e",
                "origin": {"kind": "kafka", "topic": "vault-audit", "partition": 3, "offset": 184467}
            }]
        },
        "sql": "SELECT time, activity FROM events WHERE identity_key = 'app:payroll-sync' \
                AND time >= TIMESTAMP '2026-11-23T10:00:00.000Z' \
                AND time < TIMESTAMP '2026-11-23T10:15:00.000Z' ORDER BY time",
        "class_uid": 2004
    }))
    .expect("alert JSON matches the Alert schema")
}

fn unregistered_alert() -> Alert {
    let mut alert = registered_alert();
    alert.id = "0a1b2c3d4e5f6071".into();
    alert.detector = "unregistered_identity".into();
    alert.kind = "unregistered".into();
    alert.identity = "oauth_client:0oa9x8y7z6".into();
    alert.app = None;
    alert.summary = "Unknown OAuth client 0oa9x8y7z6 called the payroll API".into();
    alert
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The addresses of a To or Cc header, lowercased, in order.
fn addresses(header: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    header
        .into_iter()
        .flat_map(|address| address.iter())
        .filter_map(|addr| addr.address())
        .map(str::to_ascii_lowercase)
        .collect()
}

fn envelope_recipients(message: &mail_parser::Message<'_>) -> String {
    // aiosmtpd's Mailbox handler records the RCPT TO addresses in X-RcptTo.
    message
        .header_raw("X-RcptTo")
        .expect("X-RcptTo header")
        .to_ascii_lowercase()
}

#[tokio::test]
async fn registered_app_alert_reaches_soc_owner_and_escalation() {
    let server = SmtpServer::mailbox().await;
    let sink = EmailSink::new(&settings(server.port, true)).unwrap();
    let alert = registered_alert();

    sink.deliver(&alert).await.unwrap();

    let raw = server.one_message().await;
    let message = MessageParser::default()
        .parse(&raw)
        .expect("parseable mail");
    // The SOC is the addressee; the app's contacts are copied in.
    assert_eq!(addresses(message.to()), vec![SOC]);
    assert_eq!(addresses(message.cc()), vec![OWNER, ESCALATION]);
    let envelope = envelope_recipients(&message);
    for address in [SOC, OWNER, ESCALATION] {
        assert!(envelope.contains(address), "{envelope}");
    }
    assert_eq!(
        message.subject(),
        Some("[HIGH] Payroll sync — mass_secret_read")
    );
    assert_eq!(
        message.message_id(),
        Some("9f3c2a1b7d4e5f60.alert@corp.example")
    );
    assert_eq!(
        message.header_raw("X-AppWarden-Alert-Id").map(str::trim),
        Some("9f3c2a1b7d4e5f60")
    );
    assert_eq!(message.text_body_count(), 1);
    assert_eq!(message.html_body_count(), 1);

    let text = message.body_text(0).expect("text part");
    for needle in [
        alert.summary.as_str(),
        OWNER,
        ESCALATION,
        "finance-eng",
        "regulated tier, risk score 11",
        "Observed:   42",
        "Baseline:   5.5",
        "Kafka vault-audit partition 3 offset 184467",
        alert.sql.as_str(),
    ] {
        assert!(text.contains(needle), "text part lacks {needle:?}:\n{text}");
    }

    let html = message.body_html(0).expect("HTML part");
    assert!(
        !html.contains("<script>"),
        "HTML part is not escaped:\n{html}"
    );
    for needle in [
        html_escape(&alert.summary),
        OWNER.to_string(),
        "<th align=\"left\">Observed</th><td>42</td>".to_string(),
        "<th align=\"left\">Baseline</th><td>5.5</td>".to_string(),
        html_escape(&alert.sql),
    ] {
        assert!(
            html.contains(&needle),
            "HTML part lacks {needle:?}:\n{html}"
        );
    }
}

#[tokio::test]
async fn unregistered_identity_alert_goes_to_the_soc_only() {
    let server = SmtpServer::mailbox().await;
    let sink = EmailSink::new(&settings(server.port, true)).unwrap();
    let alert = unregistered_alert();

    sink.deliver(&alert).await.unwrap();

    let raw = server.one_message().await;
    let message = MessageParser::default()
        .parse(&raw)
        .expect("parseable mail");
    assert_eq!(addresses(message.to()), vec![SOC]);
    assert!(message.cc().is_none());
    assert_eq!(envelope_recipients(&message).trim(), SOC);
    assert_eq!(
        message.subject(),
        Some("[HIGH] oauth_client:0oa9x8y7z6 — unregistered_identity")
    );
    let text = message.body_text(0).expect("text part");
    assert!(text.contains("not registered"), "{text}");
}

#[tokio::test]
async fn smtp_server_down_is_retried() {
    let sink = EmailSink::new(&settings(free_port(), true)).unwrap();

    let error = sink.deliver(&registered_alert()).await.unwrap_err();

    assert!(matches!(error, DeliveryError::Retry(_)), "{error:?}");
}

#[tokio::test]
async fn permanent_rejection_is_fatal_and_transient_is_retried() {
    let permanent = SmtpServer::rejecting(550).await;
    let sink = EmailSink::new(&settings(permanent.port, false)).unwrap();
    let error = sink.deliver(&registered_alert()).await.unwrap_err();
    assert!(matches!(error, DeliveryError::Fatal(_)), "{error:?}");
    assert!(error.to_string().contains("550"), "{error}");

    let transient = SmtpServer::rejecting(451).await;
    let sink = EmailSink::new(&settings(transient.port, false)).unwrap();
    let error = sink.deliver(&registered_alert()).await.unwrap_err();
    assert!(matches!(error, DeliveryError::Retry(_)), "{error:?}");
}

#[tokio::test]
async fn no_recipients_sends_nothing_and_succeeds() {
    // Nothing listens: a connection attempt would fail with Retry.
    let mut settings = settings(free_port(), true);
    if let SinkKind::Email { soc, .. } = &mut settings.kind {
        soc.clear();
    }
    let sink = EmailSink::new(&settings).unwrap();

    sink.deliver(&unregistered_alert()).await.unwrap();
}
