//! Secrets never reach the logs: `appwarden run` as a process, configured with
//! known secret values (a SASL password, a webhook signing key, an SMTP
//! password, the query token), runs with debug logging, delivers alerts, answers
//! queries with the right and a wrong token; then its log, its metrics and
//! `check-config` are searched for every secret value.

use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

use appwarden::generator::{Family, World, WorldConfig};

use crate::delivery::{Receiver, free_port};
use crate::support::{unique, wait_until};

const SASL_PASSWORD: &str = "sasl-Secret-3141592";
const SIGNING_KEY: &str = "hook-Secret-2718281";
const SMTP_PASSWORD: &str = "smtp-Secret-1618033";
const QUERY_TOKEN: &str = "query-Secret-1414213";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_logs_metrics_and_check_config() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let base = unique("secrets");
    let topics: Vec<String> = Family::ALL
        .iter()
        .map(|f| format!("{base}.{}", f.as_str()))
        .collect();
    for topic in &topics {
        cluster.create_topic(topic, 1, 1).expect("topic");
    }
    let world = World::new(WorldConfig {
        apps: 12,
        hours: 48,
        rate_scale: 0.3,
        malformed_ratio: 0.01,
        ..WorldConfig::default()
    });
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let records = world.records();
    let mut pending = Vec::new();
    for record in &records {
        pending.push(
            producer
                .send_result(
                    FutureRecord::to(&topics[record.family.index()])
                        .key(&record.key)
                        .payload(&record.payload),
                )
                .map_err(|(e, _)| e)
                .expect("enqueued"),
        );
    }
    for delivery in pending {
        delivery.await.expect("not cancelled").expect("produced");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("registry.yaml"), world.registry_yaml()).expect("registry");
    std::fs::write(path("hook.key"), format!("{SIGNING_KEY}\n")).expect("key");
    let (http_port, hook_port, smtp_port) = (free_port(), free_port(), free_port());
    let topic_list: Vec<String> = topics
        .iter()
        .map(|t| format!("{{ name = \"{t}\" }}"))
        .collect();
    let config = path("appwarden.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "{base}-group"
topics = [{topics}]
batch_linger_ms = 5
[kafka.secret_properties]
"sasl.password" = {{ env = "IT_SASL_PASSWORD" }}
[input]
max_future_secs = 3153600000
[registry]
path = "{registry}"
[dead_letter]
topic = ""
file = "{dead}"
[output]
events_topic = ""
[alerts]
topic = ""
file = "{alerts}"
[state]
snapshot_path = "{state}"
[detect]
detectors_dir = ""
allowed_lateness_secs = 600
max_source_skew_secs = 21600
[history]
path = "{history}"
flush_interval_secs = 1
retention_days = 0
[query]
token = {{ env = "IT_QUERY_TOKEN" }}
[http]
listen = "127.0.0.1:{http_port}"
[deliver]
outbox_dir = "{outbox}"
retry_initial_ms = 200
retry_max_ms = 500
[[deliver.sinks]]
name = "hook"
kind = "webhook"
min_severity = "low"
url = "http://127.0.0.1:{hook_port}/hook"
signing_key = {{ file = "{key}" }}
[[deliver.sinks]]
name = "mail"
kind = "email"
min_severity = "low"
host = "127.0.0.1"
port = {smtp_port}
security = "none"
username = "appwarden"
password = {{ env = "IT_SMTP_PASSWORD" }}
from = "appwarden@corp.example"
soc = ["soc@corp.example"]
[log]
format = "json"
level = "debug"
"#,
            topics = topic_list.join(", "),
            registry = path("registry.yaml").display(),
            dead = path("dead.ndjson").display(),
            alerts = path("alerts.ndjson").display(),
            state = path("state.json").display(),
            history = path("history").display(),
            outbox = path("outbox").display(),
            key = path("hook.key").display(),
        ),
    )
    .expect("config");
    let secrets_env = [
        ("IT_SASL_PASSWORD", SASL_PASSWORD),
        ("IT_SMTP_PASSWORD", SMTP_PASSWORD),
        ("IT_QUERY_TOKEN", QUERY_TOKEN),
    ];

    let check = Command::new(env!("CARGO_BIN_EXE_appwarden"))
        .args(["check-config", "--config"])
        .arg(&config)
        .envs(secrets_env)
        .output()
        .expect("check-config runs");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let receiver = Receiver::start(hook_port);
    let log_path = path("daemon.log");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_appwarden"))
        .args(["run", "--config"])
        .arg(&config)
        .envs(secrets_env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(&log_path).expect("log file"),
        ))
        .spawn()
        .expect("appwarden starts");
    // Alerts reach the webhook (signed with the key); the SMTP server is down, so the
    // email sink fails and retries, logging each failure.
    let delivered = wait_until(Duration::from_secs(120), || !receiver.counts().is_empty()).await;
    let client = reqwest::Client::new();
    let query = |token: &'static str| {
        client
            .post(format!("http://127.0.0.1:{http_port}/v1/query"))
            .header("authorization", format!("Bearer {token}"))
            .body(r#"{"sql": "SELECT count(*) AS n FROM events"}"#)
            .send()
    };
    let right = query(QUERY_TOKEN).await.expect("query answered").status();
    let wrong = query("not-the-token")
        .await
        .expect("query answered")
        .status();
    let metrics = client
        .get(format!("http://127.0.0.1:{http_port}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status();
    let _ = daemon.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        delivered,
        "alerts reached the webhook ({} alerts written); log tail:\n{}",
        std::fs::read_to_string(path("alerts.ndjson"))
            .unwrap_or_default()
            .lines()
            .count(),
        log.lines()
            .filter(|l| l.contains("appwarden"))
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(right.as_u16(), 200);
    assert_eq!(wrong.as_u16(), 401);
    // The run logged plenty, including the failing email deliveries.
    assert!(log.lines().count() > 20, "a debug log was written");
    assert!(
        log.contains("delivery failed; will retry"),
        "email failures were logged"
    );

    let outputs = [
        ("daemon log", log),
        ("metrics", metrics),
        (
            "check-config",
            String::from_utf8_lossy(&check.stdout).into_owned()
                + &String::from_utf8_lossy(&check.stderr),
        ),
    ];
    for (name, text) in &outputs {
        for secret in [SASL_PASSWORD, SIGNING_KEY, SMTP_PASSWORD, QUERY_TOKEN] {
            assert!(
                !text.contains(secret),
                "{name} contains the secret {secret}"
            );
        }
    }
}
