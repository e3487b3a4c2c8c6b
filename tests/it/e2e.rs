//! End to end against real peers: tansu (a Kafka-compatible broker) as a
//! process, `appwarden run` as a process, a real HTTP receiver for the webhook
//! and aiosmtpd for email. Then the faults a user would live through: the
//! daemon killed with -9, the broker stopped and restarted, both sinks down.
//!
//! These tests start their own broker from the binary in `APPWARDEN_TANSU`
//! (scripts/test.sh installs tansu into a cache and sets it) and are marked
//! `#[ignore]` so that a bare `cargo test` reports them as ignored rather than
//! failing; scripts/test.sh runs them with `--include-ignored`. Each prints an
//! `E2E` line with what was sent, what arrived, duplicates and recovery time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use appwarden::generator::{Family, GeneratedRecord, IncidentKind, World, WorldConfig};

use crate::delivery::{Receiver, free_port};
use crate::email_sink::SmtpServer;

/// One end-to-end test at a time: each runs a broker, the daemon and its peers
/// on a 2-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PARTITIONS: i32 = 3;

fn tansu_binary() -> PathBuf {
    let path = std::env::var_os("APPWARDEN_TANSU").map(PathBuf::from);
    match path {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "the end-to-end tests need the tansu broker: run scripts/test.sh (it installs tansu \
             into $HOME/.cache/appwarden/tansu and sets APPWARDEN_TANSU), or set APPWARDEN_TANSU \
             to a tansu 0.6 binary"
        ),
    }
}

/// A tansu broker on loopback whose data (topics, offsets, groups) lives in a
/// SQLite file, so that it survives the broker's own restart.
struct Broker {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    starts: u32,
}

impl Broker {
    async fn start(dir: &Path) -> Broker {
        let mut broker = Broker {
            child: None,
            port: free_port(),
            dir: dir.to_path_buf(),
            starts: 0,
        };
        broker.spawn().await;
        broker
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tansu.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Starts the broker and waits until it answers a metadata request.
    async fn spawn(&mut self) {
        self.starts += 1;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .expect("broker log");
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // tansu reads the path after sqlite:// as relative to its working directory.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .stderr(Stdio::from(log))
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.address())
            .create()
            .expect("metadata client");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("tansu exited with {status}:\n{}", self.log());
            }
            if consumer
                .fetch_metadata(None, Duration::from_secs(1))
                .is_ok_and(|m| !m.brokers().is_empty())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not answer within 60 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 10 s).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10));
        }
    }

    async fn create_topics(&self, names: &[String]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.address())
            .create()
            .expect("admin client");
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| NewTopic::new(n, PARTITIONS, TopicReplication::Fixed(1)))
            .collect();
        let results = admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("create topics");
        for result in results {
            result.unwrap_or_else(|(topic, e)| panic!("creating {topic}: {e}"));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM, then SIGKILL if the process is still there after `grace`.
fn terminate(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The generated world of a test: apps, incidents, and their vendor records in
/// every format (Okta, Entra, CloudTrail, Vault, Kong, Envoy, Squid).
fn world() -> World {
    World::new(WorldConfig {
        seed: 11,
        // Incidents are injected from 12 apps on.
        apps: 12,
        hours: 48,
        rate_scale: 0.25,
        malformed_ratio: 0.002,
        ..WorldConfig::default()
    })
}

/// Everything one test's daemon needs on disk.
struct Setup {
    dir: tempfile::TempDir,
    topics: Vec<String>,
    group: String,
    enriched_topic: String,
    config: PathBuf,
    http_port: u16,
    webhook_port: u16,
    smtp_port: u16,
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn new(broker: &Broker, world: &World, name: &str) -> Setup {
        let dir = tempfile::Builder::new()
            .prefix(&format!("e2e-{name}-"))
            .tempdir()
            .expect("tempdir");
        let topics: Vec<String> = Family::ALL
            .iter()
            .map(|f| format!("{name}.{}", f.as_str()))
            .collect();
        let enriched_topic = format!("{name}.enriched");
        let mut all = topics.clone();
        all.push(enriched_topic.clone());
        broker.create_topics(&all).await;
        let setup = Setup {
            dir,
            topics,
            group: format!("{name}-group"),
            enriched_topic,
            config: PathBuf::new(),
            http_port: free_port(),
            webhook_port: free_port(),
            smtp_port: free_port(),
        };
        let registry = setup.path("registry.yaml");
        std::fs::write(&registry, world.registry_yaml()).expect("registry");
        let key = setup.path("webhook.key");
        std::fs::write(&key, "e2e-signing-key").expect("key");
        let topic_list: Vec<String> = setup
            .topics
            .iter()
            .map(|t| format!("{{ name = \"{t}\" }}"))
            .collect();
        let config = format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = [{topics}]
batch_linger_ms = 5
[kafka.consumer_properties]
"session.timeout.ms" = "10000"
"heartbeat.interval.ms" = "1000"
[input]
max_future_secs = 3153600000
[registry]
path = "{registry}"
[dead_letter]
topic = ""
file = "{dead}"
[output]
events_topic = "{enriched}"
events_file = "{events}"
[alerts]
topic = ""
file = "{alerts}"
[state]
snapshot_path = "{state}"
snapshot_interval_secs = 1
[detect]
detectors_dir = ""
allowed_lateness_secs = 600
max_source_skew_secs = 21600
[history]
path = "{history}"
flush_interval_secs = 2
retention_days = 0
[http]
listen = "127.0.0.1:{http_port}"
[deliver]
outbox_dir = "{outbox}"
retry_initial_ms = 200
retry_max_ms = 1000
drain_on_shutdown_secs = 5
[[deliver.sinks]]
name = "soc-hook"
kind = "webhook"
min_severity = "low"
url = "http://127.0.0.1:{webhook_port}/hook"
signing_key = {{ file = "{key}" }}
[[deliver.sinks]]
name = "soc-mail"
kind = "email"
min_severity = "low"
host = "127.0.0.1"
port = {smtp_port}
security = "none"
from = "AppWarden <appwarden@corp.example>"
soc = ["soc@corp.example"]
[log]
format = "json"
level = "info"
"#,
            brokers = broker.address(),
            group = setup.group,
            topics = topic_list.join(", "),
            registry = registry.display(),
            dead = setup.path("dead.ndjson").display(),
            enriched = setup.enriched_topic,
            events = setup.path("events.ndjson").display(),
            alerts = setup.path("alerts.ndjson").display(),
            state = setup.path("state.json").display(),
            history = setup.path("history").display(),
            http_port = setup.http_port,
            outbox = setup.path("outbox").display(),
            webhook_port = setup.webhook_port,
            smtp_port = setup.smtp_port,
            key = key.display(),
        );
        let path = setup.path("appwarden.toml");
        std::fs::write(&path, config).expect("config");
        Setup {
            config: path,
            ..setup
        }
    }

    /// `appwarden run` as a child process, logging (JSON) to `daemon-N.log`.
    fn spawn_daemon(&self, life: u32) -> Child {
        let log = std::fs::File::create(self.path(&format!("daemon-{life}.log"))).expect("log");
        Command::new(env!("CARGO_BIN_EXE_appwarden"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("appwarden starts")
    }

    fn daemon_log(&self, life: u32) -> String {
        std::fs::read_to_string(self.path(&format!("daemon-{life}.log")))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn lines(&self, name: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Alerts that page (a repeat folded into an open group does not).
    fn paging_alerts(&self) -> Vec<serde_json::Value> {
        self.lines("alerts.ndjson")
            .into_iter()
            .filter(|a| a.get("group").is_none())
            .collect()
    }

    fn topic_of(&self, record: &GeneratedRecord) -> &str {
        &self.topics[record.family.index()]
    }

    /// The consumer group's committed offsets summed over the input topics.
    fn committed(&self, broker: &Broker) -> i64 {
        let Ok(consumer) = ClientConfig::new()
            .set("bootstrap.servers", broker.address())
            .set("group.id", &self.group)
            .create::<BaseConsumer>()
        else {
            return 0;
        };
        let mut tpl = TopicPartitionList::new();
        for topic in &self.topics {
            for p in 0..PARTITIONS {
                tpl.add_partition(topic, p);
            }
        }
        consumer
            .committed_offsets(tpl, Duration::from_secs(5))
            .map(|c| {
                c.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Records the broker holds in the input topics, per partition (low and high watermarks).
    fn stored(&self, broker: &Broker) -> Vec<(String, i32, i64, i64)> {
        let Ok(consumer) = ClientConfig::new()
            .set("bootstrap.servers", broker.address())
            .create::<BaseConsumer>()
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for topic in &self.topics {
            for p in 0..PARTITIONS {
                if let Ok((low, high)) = consumer.fetch_watermarks(topic, p, Duration::from_secs(5))
                {
                    out.push((topic.clone(), p, low, high));
                }
            }
        }
        out
    }

    /// Where the broker holds a record with this payload, read with a fresh consumer.
    fn locate(&self, broker: &Broker, payload: &str) -> Option<(String, i32, i64)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.address())
            .set("group.id", "e2e-locate")
            .create()
            .ok()?;
        let mut tpl = TopicPartitionList::new();
        for topic in &self.topics {
            for p in 0..PARTITIONS {
                tpl.add_partition_offset(topic, p, Offset::Beginning).ok()?;
            }
        }
        consumer.assign(&tpl).ok()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200))
                && m.payload()
                    .is_some_and(|p| String::from_utf8_lossy(p).trim() == payload)
            {
                return Some((m.topic().to_string(), m.partition(), m.offset()));
            }
        }
        None
    }

    /// The sum of a metric's samples in the daemon's `/metrics` (0 when unreachable).
    async fn metric(&self, client: &reqwest::Client, name: &str) -> f64 {
        let text = match client.get(self.url("/metrics")).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        text.lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }
}

/// A test's broker (its data in the returned folder), world, records and daemon setup.
async fn scenario(
    name: &str,
) -> (
    tempfile::TempDir,
    Broker,
    World,
    Vec<GeneratedRecord>,
    Setup,
) {
    let data = tempfile::tempdir().expect("broker dir");
    let broker = Broker::start(data.path()).await;
    let world = world();
    let records = world.records();
    let setup = Setup::new(&broker, &world, name).await;
    (data, broker, world, records, setup)
}

/// Produces `records` to their topics, keyed by the record's actor; waits for every ack.
async fn produce(broker: &Broker, setup: &Setup, records: &[GeneratedRecord]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("linger.ms", "20")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    for chunk in records.chunks(2000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for record in chunk {
            let delivery = producer
                .send_result(
                    FutureRecord::to(setup.topic_of(record))
                        .key(&record.key)
                        .payload(&record.payload),
                )
                .map_err(|(e, _)| e)
                .expect("enqueued");
            pending.push(delivery);
        }
        for delivery in pending {
            delivery
                .await
                .expect("not cancelled")
                .unwrap_or_else(|(e, _)| panic!("produce to tansu: {e}"));
        }
    }
}

async fn http_status(client: &reqwest::Client, url: &str) -> Option<u16> {
    client
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Polls until `done` holds or `limit` passes; returns the time it took, if it held.
async fn within(limit: Duration, mut done: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Alert ids in a delivered email (the `X-AppWarden-Alert-Id` header).
fn mailed_ids(smtp: &SmtpServer) -> HashMap<String, u32> {
    let mut ids = HashMap::new();
    for message in smtp.delivered() {
        let text = String::from_utf8_lossy(&message);
        if let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("X-AppWarden-Alert-Id: "))
        {
            *ids.entry(id.trim().to_string()).or_insert(0) += 1;
        }
    }
    ids
}

/// What became of the good records: event lines written, distinct (topic,
/// partition, offset) behind them, and the good records that no event carries
/// (compared by the vendor record itself, kept in each event's `raw_data`).
struct Outcome {
    lines: usize,
    distinct_origins: usize,
    missing: Vec<String>,
}

fn outcome(setup: &Setup, records: &[GeneratedRecord]) -> Outcome {
    let events = setup.lines("events.ndjson");
    let origins: BTreeSet<(String, i64, i64)> = events
        .iter()
        .filter_map(|e| {
            let o = &e["unmapped"]["appwarden"]["origin"];
            Some((
                o["topic"].as_str()?.to_string(),
                o["partition"].as_i64()?,
                o["offset"].as_i64()?,
            ))
        })
        .collect();
    let carried: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["raw_data"].as_str().map(str::trim))
        .collect();
    let missing = records
        .iter()
        .filter(|r| !r.malformed)
        .map(|r| String::from_utf8_lossy(&r.payload).trim().to_string())
        .filter(|p| !carried.contains(p.as_str()))
        .collect();
    Outcome {
        lines: events.len(),
        distinct_origins: origins.len(),
        missing,
    }
}

fn summary(name: &str, fields: &[(&str, String)]) {
    let text: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!("E2E {name}: {}", text.join(" "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the tansu broker; scripts/test.sh runs it"]
async fn every_format_through_a_real_broker_to_webhook_email_and_enriched_topic() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_data, broker, world, records, setup) = scenario("e2e-all").await;
    let receiver = Receiver::start(setup.webhook_port);
    let smtp = SmtpServer::mailbox_at(setup.smtp_port).await;
    let mut daemon = setup.spawn_daemon(1);
    produce(&broker, &setup, &records).await;
    let total = records.len() as i64;
    let malformed = records.iter().filter(|r| r.malformed).count();

    let client = reqwest::Client::new();
    let done = within(Duration::from_secs(120), async || {
        let paging = setup.paging_alerts();
        let hooks = receiver.counts();
        let mails = mailed_ids(&smtp);
        setup.committed(&broker) >= total
            && !paging.is_empty()
            && paging.iter().all(|a| {
                let id = a["id"].as_str().unwrap_or_default();
                hooks.contains_key(id) && mails.contains_key(id)
            })
    })
    .await;
    let ready = http_status(&client, &setup.url("/readyz")).await;
    let metrics = client
        .get(setup.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let status = terminate(&mut daemon, Duration::from_secs(30));
    assert!(
        done.is_some(),
        "not everything arrived: committed {} of {total}, {} alerts ({} paging), webhook got {}, email got {}; daemon log:\n{}",
        setup.committed(&broker),
        setup.lines("alerts.ndjson").len(),
        setup.paging_alerts().len(),
        receiver.counts().len(),
        mailed_ids(&smtp).len(),
        setup.daemon_log(1)
    );
    assert_eq!(ready, Some(200), "ready while running");
    assert!(status.is_some_and(|s| s.success()), "clean exit on SIGTERM");
    assert!(metrics.contains("appwarden_records_consumed_total{"));

    // Every format arrived and decoded; every malformed record was dead-lettered.
    let events = setup.lines("events.ndjson");
    let products: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["unmapped"]["appwarden"]["product"].as_str())
        .collect();
    for product in [
        "okta",
        "entra",
        "cloudtrail",
        "vault",
        "kong",
        "envoy",
        "squid",
    ] {
        assert!(
            products.contains(product),
            "no {product} event: {products:?}"
        );
    }
    let dead = setup.lines("dead.ndjson");
    assert_eq!(dead.len(), malformed, "malformed records dead-lettered");
    assert!(dead.iter().all(|d| d["reason"].as_str().is_some()));

    // The enriched topic carries one record per event, keyed by identity, with an OCSF class.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("group.id", "e2e-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("reader");
    consumer
        .subscribe(&[setup.enriched_topic.as_str()])
        .expect("subscribe");
    let mut enriched = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while enriched.len() < events.len() && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            let value: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap_or_default()).expect("JSON");
            enriched.push((key, value));
        }
    }
    assert_eq!(
        enriched.len(),
        events.len(),
        "one enriched record per event"
    );
    for (key, value) in &enriched {
        assert!(
            matches!(value["class_uid"].as_u64(), Some(3002 | 6003 | 4002)),
            "class of {value}"
        );
        let identity = value["unmapped"]["appwarden"]["identity"]["key"]
            .as_str()
            .unwrap_or("anonymous");
        assert_eq!(key, identity, "record keyed by its identity");
    }

    // Every alert that pages went out once through each sink; the injected incidents were caught.
    let paging = setup.paging_alerts();
    let hooks = receiver.counts();
    let mails = mailed_ids(&smtp);
    for alert in &paging {
        let id = alert["id"].as_str().unwrap_or_default();
        assert_eq!(hooks.get(id), Some(&1), "webhook deliveries of {id}");
        assert_eq!(mails.get(id), Some(&1), "emails of {id}");
    }
    let caught: BTreeSet<(String, String)> = paging
        .iter()
        .filter_map(|a| {
            Some((
                a["detector"].as_str()?.to_string(),
                a["identity"].as_str()?.to_string(),
            ))
        })
        .collect();
    for incident in &world.incidents {
        if matches!(
            incident.kind,
            IncidentKind::UnregisteredIdentity
                | IncidentKind::NewEgressDomain
                | IncidentKind::OffRegionToken
        ) {
            assert!(
                caught.contains(&(
                    incident.kind.as_str().to_string(),
                    incident.identity.clone()
                )),
                "incident {:?} on {} not alerted: {caught:?}",
                incident.kind,
                incident.identity
            );
        }
    }
    summary(
        "all-formats",
        &[
            ("records", total.to_string()),
            ("malformed", malformed.to_string()),
            ("events", events.len().to_string()),
            ("enriched", enriched.len().to_string()),
            ("paging_alerts", paging.len().to_string()),
            ("webhook", hooks.values().sum::<u32>().to_string()),
            ("email", mails.values().sum::<u32>().to_string()),
            (
                "seconds",
                format!("{:.1}", done.unwrap_or_default().as_secs_f64()),
            ),
        ],
    );
}

/// Counts per alert id of both sinks, and the worst duplicate count.
fn duplicates(counts: &HashMap<String, u32>) -> usize {
    counts.values().filter(|n| **n > 1).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the tansu broker; scripts/test.sh runs it"]
async fn daemon_killed_mid_stream_restarts_without_loss_or_duplicate_flood() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_data, broker, _world, records, setup) = scenario("e2e-kill").await;
    let total = records.len() as i64;
    let receiver = Receiver::start(setup.webhook_port);
    let smtp = SmtpServer::mailbox_at(setup.smtp_port).await;
    let client = reqwest::Client::new();

    // Everything is waiting; the daemon is killed with -9 once it has processed 40 %.
    produce(&broker, &setup, &records).await;
    let mut first = setup.spawn_daemon(1);
    let read_some = within(Duration::from_secs(180), async || {
        setup
            .metric(&client, "appwarden_records_processed_total")
            .await
            >= 0.4 * total as f64
    })
    .await;
    first.kill().expect("kill -9");
    let _ = first.wait();
    assert!(
        read_some.is_some(),
        "the first life read 40 %; log:\n{}",
        setup.daemon_log(1)
    );
    let processed_at_kill = std::fs::read_to_string(setup.path("events.ndjson"))
        .unwrap_or_default()
        .lines()
        .count();
    assert!(
        (processed_at_kill as i64) < total,
        "killed mid-stream, not after the end"
    );
    let committed_at_kill = setup.committed(&broker);
    let alerts_at_kill: BTreeSet<String> = setup
        .paging_alerts()
        .iter()
        .filter_map(|a| a["id"].as_str().map(str::to_string))
        .collect();

    let restarted = Instant::now();
    let mut second = setup.spawn_daemon(2);
    let ready_after = within(Duration::from_secs(300), async || {
        http_status(&client, &setup.url("/readyz")).await == Some(200)
    })
    .await;
    let done = within(Duration::from_secs(300), async || {
        let paging = setup.paging_alerts();
        let hooks = receiver.counts();
        let mails = mailed_ids(&smtp);
        setup.committed(&broker) >= total
            && paging.iter().all(|a| {
                let id = a["id"].as_str().unwrap_or_default();
                hooks.contains_key(id) && mails.contains_key(id)
            })
    })
    .await;
    let caught_up = restarted.elapsed();
    terminate(&mut second, Duration::from_secs(30));
    assert!(
        ready_after.is_some(),
        "ready again after the restart; log:\n{}",
        setup.daemon_log(2)
    );
    assert!(
        done.is_some(),
        "committed {} of {total}; log:\n{}",
        setup.committed(&broker),
        setup.daemon_log(2)
    );
    let restored = std::fs::read_to_string(setup.path("daemon-2.log"))
        .unwrap_or_default()
        .contains("state restored from snapshot");
    assert!(restored, "the second life restored the detectors' state");

    // Nothing lost: every good record became an event (re-reads after the kill may repeat some).
    let good = records.iter().filter(|r| !r.malformed).count();
    let got = outcome(&setup, &records);
    assert!(
        got.missing.is_empty(),
        "{} of {good} good records became no event, e.g. {:?}",
        got.missing.len(),
        got.missing.first()
    );

    // Every paging alert delivered; at most one duplicate per alert, and only for
    // alerts raised before the kill (their input was read again).
    let paging = setup.paging_alerts();
    let hooks = receiver.counts();
    let mails = mailed_ids(&smtp);
    for alert in &paging {
        let id = alert["id"].as_str().unwrap_or_default();
        for (sink, counts) in [("webhook", &hooks), ("email", &mails)] {
            let n = counts.get(id).copied().unwrap_or(0);
            assert!((1..=2).contains(&n), "{sink} got alert {id} {n} times");
            if n == 2 {
                assert!(
                    alerts_at_kill.contains(id),
                    "{sink}: alert {id} doubled without a re-read behind it"
                );
            }
        }
    }
    // Baselines restored: a first-seen detector does not fire again for identities it
    // already reported (a lost state would raise a second, different alert for each).
    let mut first_seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for alert in &paging {
        if alert["detector"] == "unregistered_identity" {
            first_seen
                .entry(alert["identity"].as_str().unwrap_or_default().to_string())
                .or_default()
                .insert(alert["id"].as_str().unwrap_or_default().to_string());
        }
    }
    assert!(
        !first_seen.is_empty(),
        "the unregistered identity was reported"
    );
    for (identity, ids) in &first_seen {
        assert_eq!(
            ids.len(),
            1,
            "{identity} reported as new more than once: {ids:?}"
        );
    }
    summary(
        "kill-9",
        &[
            ("records_sent", total.to_string()),
            ("events_written_at_kill", processed_at_kill.to_string()),
            ("committed_at_kill", committed_at_kill.to_string()),
            ("good_records", good.to_string()),
            ("event_lines", got.lines.to_string()),
            (
                "distinct_offsets_as_events",
                got.distinct_origins.to_string(),
            ),
            ("lost", got.missing.len().to_string()),
            ("paging_alert_lines", paging.len().to_string()),
            (
                "distinct_paging_alerts",
                paging
                    .iter()
                    .filter_map(|a| a["id"].as_str())
                    .collect::<BTreeSet<_>>()
                    .len()
                    .to_string(),
            ),
            ("webhook_received", hooks.values().sum::<u32>().to_string()),
            ("webhook_duplicates", duplicates(&hooks).to_string()),
            ("email_received", mails.values().sum::<u32>().to_string()),
            ("email_duplicates", duplicates(&mails).to_string()),
            (
                "ready_after_restart_s",
                format!("{:.1}", ready_after.unwrap_or_default().as_secs_f64()),
            ),
            (
                "caught_up_after_restart_s",
                format!("{:.1}", caught_up.as_secs_f64()),
            ),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the tansu broker; scripts/test.sh runs it"]
async fn broker_restart_mid_stream_turns_not_ready_then_recovers_without_loss() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_data, mut broker, _world, records, setup) = scenario("e2e-broker").await;
    let total = records.len() as i64;
    let receiver = Receiver::start(setup.webhook_port);
    let _smtp = SmtpServer::mailbox_at(setup.smtp_port).await;
    let client = reqwest::Client::new();

    let half = records.len() / 2;
    produce(&broker, &setup, &records[..half]).await;
    let mut daemon = setup.spawn_daemon(1);
    let first_half = within(Duration::from_secs(180), async || {
        setup.committed(&broker) >= half as i64
            && http_status(&client, &setup.url("/readyz")).await == Some(200)
    })
    .await;
    assert!(
        first_half.is_some(),
        "first half read; log:\n{}",
        setup.daemon_log(1)
    );

    let before_stop = setup.stored(&broker);
    broker.stop();
    let stopped = Instant::now();
    let not_ready = within(Duration::from_secs(60), async || {
        http_status(&client, &setup.url("/readyz")).await == Some(503)
    })
    .await;
    // Down for a while: the daemon must neither exit nor lose its place.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let alive = matches!(daemon.try_wait(), Ok(None));
    let downtime = stopped.elapsed();
    broker.spawn().await;
    let broker_back = Instant::now();
    let ready_again = within(Duration::from_secs(120), async || {
        http_status(&client, &setup.url("/readyz")).await == Some(200)
    })
    .await;
    produce(&broker, &setup, &records[half..]).await;
    let done = within(Duration::from_secs(300), async || {
        let paging = setup.paging_alerts();
        let hooks = receiver.counts();
        setup.committed(&broker) >= total
            && paging
                .iter()
                .all(|a| hooks.contains_key(a["id"].as_str().unwrap_or_default()))
    })
    .await;
    let recovered = broker_back.elapsed();
    terminate(&mut daemon, Duration::from_secs(30));
    assert!(
        not_ready.is_some(),
        "readyz turned 503 with the broker down; log:\n{}",
        setup.daemon_log(1)
    );
    assert!(alive, "the daemon kept running while the broker was down");
    assert!(
        ready_again.is_some(),
        "ready again once the broker was back"
    );
    assert!(
        done.is_some(),
        "committed {} of {total}; log:\n{}",
        setup.committed(&broker),
        setup.daemon_log(1)
    );
    let good = records.iter().filter(|r| !r.malformed).count();
    let got = outcome(&setup, &records);
    assert!(
        got.missing.is_empty(),
        "{} of {good} good records became no event (distinct offsets {}; the broker held {:?} before its stop and holds {:?}); missing at {:?}",
        got.missing.len(),
        got.distinct_origins,
        before_stop,
        setup.stored(&broker),
        got.missing
            .iter()
            .map(|m| setup.locate(&broker, m))
            .collect::<Vec<_>>()
    );
    let hooks = receiver.counts();
    summary(
        "broker-restart",
        &[
            ("records_sent", total.to_string()),
            ("good_records", good.to_string()),
            ("event_lines", got.lines.to_string()),
            (
                "distinct_offsets_as_events",
                got.distinct_origins.to_string(),
            ),
            ("lost", got.missing.len().to_string()),
            ("paging_alerts", setup.paging_alerts().len().to_string()),
            ("webhook_received", hooks.values().sum::<u32>().to_string()),
            ("webhook_duplicates", duplicates(&hooks).to_string()),
            (
                "not_ready_after_s",
                format!("{:.1}", not_ready.unwrap_or_default().as_secs_f64()),
            ),
            ("broker_down_s", format!("{:.1}", downtime.as_secs_f64())),
            (
                "ready_after_broker_back_s",
                format!("{:.1}", ready_again.unwrap_or_default().as_secs_f64()),
            ),
            (
                "all_done_after_broker_back_s",
                format!("{:.1}", recovered.as_secs_f64()),
            ),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the tansu broker; scripts/test.sh runs it"]
async fn webhook_and_smtp_outage_delays_but_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_data, broker, _world, records, setup) = scenario("e2e-sinks").await;
    let total = records.len() as i64;
    let client = reqwest::Client::new();
    let metric = async |name: &str| setup.metric(&client, name).await;

    // Both sinks are down: nothing listens on their ports yet.
    let mut daemon = setup.spawn_daemon(1);
    produce(&broker, &setup, &records).await;
    let backed_up = within(Duration::from_secs(300), async || {
        setup.committed(&broker) >= total
            && metric("appwarden_outbox_depth").await > 0.0
            && metric("appwarden_sink_retries_total").await > 0.0
    })
    .await;
    assert!(
        backed_up.is_some(),
        "alerts waited in the outbox while the sinks were down; log:\n{}",
        setup.daemon_log(1)
    );
    let queued = metric("appwarden_outbox_depth").await;
    let retries_during_outage = metric("appwarden_sink_retries_total").await;

    // The sinks come back.
    let back = Instant::now();
    let receiver = Receiver::start(setup.webhook_port);
    let smtp = SmtpServer::mailbox_at(setup.smtp_port).await;
    let delivered = within(Duration::from_secs(180), async || {
        let paging = setup.paging_alerts();
        let hooks = receiver.counts();
        let mails = mailed_ids(&smtp);
        paging.iter().all(|a| {
            let id = a["id"].as_str().unwrap_or_default();
            hooks.contains_key(id) && mails.contains_key(id)
        }) && metric("appwarden_outbox_depth").await == 0.0
    })
    .await;
    let recovery = back.elapsed();
    terminate(&mut daemon, Duration::from_secs(30));
    assert!(
        delivered.is_some(),
        "everything delivered after the outage; log:\n{}",
        setup.daemon_log(1)
    );
    let paging = setup.paging_alerts();
    let hooks = receiver.counts();
    let mails = mailed_ids(&smtp);
    assert!(!paging.is_empty());
    for alert in &paging {
        let id = alert["id"].as_str().unwrap_or_default();
        assert_eq!(hooks.get(id), Some(&1), "webhook deliveries of {id}");
        assert_eq!(mails.get(id), Some(&1), "emails of {id}");
    }
    summary(
        "sink-outage",
        &[
            ("records_sent", total.to_string()),
            ("paging_alerts", paging.len().to_string()),
            ("queued_in_outbox", queued.to_string()),
            ("retries_during_outage", retries_during_outage.to_string()),
            ("webhook_received", hooks.values().sum::<u32>().to_string()),
            ("webhook_duplicates", duplicates(&hooks).to_string()),
            ("email_received", mails.values().sum::<u32>().to_string()),
            ("email_duplicates", duplicates(&mails).to_string()),
            (
                "all_delivered_after_sinks_back_s",
                format!("{:.1}", recovery.as_secs_f64()),
            ),
        ],
    );
}
