//! The daemon against librdkafka's mock cluster: real vendor records of every
//! format in, identity-resolved events and dead letters out, offsets committed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use appwarden::daemon::Daemon;
use appwarden::decode::{FieldMapping, Format};
use appwarden::event::{Category, IdentityStatus, Origin, PrincipalKind, Product};
use appwarden::settings::{Settings, TopicSettings};
use appwarden::telemetry::Stats;

use crate::support::{Enriched, enriched, raw_sample, unique, wait_until, wrapped_sample};

const REGISTRY: &str = r#"
apps:
  - id: reports-bot
    name: Reports bot
    owner: reports-owner@example.com
    escalation: soc@example.com
    team: finance
    risk_tier: restricted
    risk: { data_class: 3, permission_breadth: 2, external_connectivity: 1, known_vulnerabilities: 0 }
    identities:
      oauth_client_ids: ["c7e2a4f1-5d3b-48e9-9f06-1a2b3c4d5e6f", "0oa-generic-exporter"]
      users: ["casey.hill@hey.com"]
      role_arns: ["arn:aws:iam::123123123123:role/AWSReservedSSO_DevAdmin_635426549a280cc6"]
      vault_display_names: ["root"]
      gateway_consumers: ["reports-bot", "spiffe://cluster.local/ns/reports/sa/report-builder", "alice"]
    egress_allowlist: [api.openai.com]
    allowed_regions: [us-west-2]
    registered_on: 2026-09-01
"#;

/// One record to produce: topic suffix, payload, and the product it must decode as
/// (`None` for a record that must be dead-lettered).
pub(crate) struct Input {
    pub topic: &'static str,
    pub payload: Vec<u8>,
    pub expect: Option<Product>,
}

pub(crate) fn inputs() -> Vec<Input> {
    let okta = wrapped_sample("okta_systemlog/panther_rule_tests.ndjson", |l| {
        l["eventType"] == "user.session.start" && l["actor"]["alternateId"] == "casey.hill@hey.com"
    });
    let entra = wrapped_sample("azure_signin/documented_service_principal.ndjson", |_| true);
    let cloudtrail = wrapped_sample("aws_cloudtrail/panther_rule_tests.ndjson", |l| {
        l["eventName"] == "GetSecretValue" && l["userIdentity"]["type"] == "AssumedRole"
    });
    let vault = raw_sample(
        "vault_audit/hashicorp-education_learn-vault-monitoring_vault-audit.ndjson",
        |l| l.contains("\"type\":\"response\""),
    );
    let kong = raw_sample("kong/documented.ndjson", |l| {
        l.contains("\"username\":\"reports-bot\"")
    });
    let envoy = raw_sample("envoy/documented.ndjson", |l| l.contains("report-builder"));
    let squid = raw_sample("squid/documented.log", |l| l.contains(" alice "));
    let generic =
        br#"{"ts":1763816400123,"who":{"client":"0oa-generic-exporter"},"op":"export"}"#.to_vec();
    let input = |topic, payload: Vec<u8>, expect| Input {
        topic,
        payload,
        expect,
    };
    vec![
        input("sso", okta, Some(Product::Okta)),
        input("sso", b"{\"published\": \"2026-11-2".to_vec(), None),
        input("sso", entra, Some(Product::Entra)),
        input("secrets", cloudtrail, Some(Product::Cloudtrail)),
        input("secrets", vault, Some(Product::Vault)),
        input("secrets", vec![0xff, 0x00, 0x13], None),
        input("gateway", kong, Some(Product::Kong)),
        input("gateway", envoy, Some(Product::Envoy)),
        input("squid", squid, Some(Product::Squid)),
        input("squid", b"this is not a squid line".to_vec(), None),
        input("generic", generic, Some(Product::Generic)),
    ]
}

pub(crate) struct Harness {
    pub dir: tempfile::TempDir,
    pub settings: Settings,
    pub events_path: std::path::PathBuf,
    pub dead_path: std::path::PathBuf,
    pub topic_names: HashMap<&'static str, String>,
}

pub(crate) fn harness(
    brokers: &str,
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("registry.yaml");
    std::fs::write(&registry, REGISTRY).expect("registry written");
    let base = unique("it");
    let topic_names: HashMap<&'static str, String> = [
        "sso", "secrets", "gateway", "squid", "generic", "events", "dead", "alerts",
    ]
    .into_iter()
    .map(|s| (s, format!("{base}.{s}")))
    .collect();
    for (suffix, name) in &topic_names {
        let partitions = if matches!(*suffix, "dead" | "alerts") {
            1
        } else {
            2
        };
        cluster
            .create_topic(name, partitions, 1)
            .expect("topic created");
    }
    let (mut settings, _) = Settings::load_with_env(None, Vec::new()).expect("defaults load");
    settings.kafka.brokers = brokers.to_string();
    settings.kafka.group_id = unique("it-group");
    settings.kafka.batch_linger_ms = 5;
    settings.http.listen = "127.0.0.1:0".into();
    // The mock cluster lets a departed member's session expire before the next join completes.
    settings
        .kafka
        .consumer_properties
        .insert("session.timeout.ms".into(), "6000".into());
    settings
        .kafka
        .consumer_properties
        .insert("heartbeat.interval.ms".into(), "500".into());
    let topic = |suffix: &str, format| TopicSettings {
        name: topic_names[suffix].clone(),
        format,
        mapping: None,
        layout: None,
    };
    let mut generic = topic("generic", Format::Generic);
    generic.mapping = Some(FieldMapping {
        time: Some("/ts".into()),
        principal: Some("/who/client".into()),
        activity: Some("/op".into()),
        category_value: Some(Category::ApiCall),
        principal_kind_value: Some(PrincipalKind::OauthClient),
        ..FieldMapping::default()
    });
    // The squid topic names its layout (Squid's native one, as a preset): the topic's
    // layout reaches the decoder and reads the line as the native decoder would.
    let mut squid = topic("squid", Format::Squid);
    squid.layout = Some("squid".into());
    settings.kafka.topics = vec![
        topic("sso", Format::Auto),
        topic("secrets", Format::Auto),
        topic("gateway", Format::Auto),
        squid,
        generic,
    ];
    let events_path = dir.path().join("out/events.ndjson");
    let dead_path = dir.path().join("out/dead.ndjson");
    settings.registry.path = registry;
    settings.output.events_topic = topic_names["events"].clone();
    settings.output.events_file = events_path.display().to_string();
    settings.dead_letter.topic = topic_names["dead"].clone();
    settings.dead_letter.file = dead_path.display().to_string();
    settings.alerts.file = dir.path().join("out/alerts.ndjson").display().to_string();
    settings.alerts.topic = String::new();
    settings.state.snapshot_path = dir.path().join("state/snapshot.json").display().to_string();
    settings.history.path = dir.path().join("history").display().to_string();
    // The vendor samples are years old: retention by event time would expire them at once.
    settings.history.retention_days = 0;
    settings.validate().expect("test settings valid");
    Harness {
        dir,
        settings,
        events_path,
        dead_path,
        topic_names,
    }
}

/// Produces [`inputs`] to their harness topics; returns them with the coordinates of each.
pub(crate) async fn produce_inputs(
    brokers: &str,
    h: &Harness,
) -> (Vec<Input>, Vec<(String, i32, i64)>) {
    let inputs = inputs();
    let records: Vec<(String, Vec<u8>)> = inputs
        .iter()
        .map(|i| (h.topic_names[i.topic].clone(), i.payload.clone()))
        .collect();
    let coordinates = produce(brokers, &records).await;
    (inputs, coordinates)
}

/// Produces records (batched, in order per partition); returns (topic, partition, offset) of each.
pub(crate) async fn produce(
    brokers: &str,
    records: &[(String, Vec<u8>)],
) -> Vec<(String, i32, i64)> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        // Records up to the daemon's default input limit (1 MiB) and past it.
        .set("message.max.bytes", "4194304")
        // A whole generated backlog may be in flight at once.
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .create()
        .expect("producer");
    let mut deliveries = Vec::with_capacity(records.len());
    for (i, (topic, payload)) in records.iter().enumerate() {
        // Sixteen keys, or as many as there are records for a long backlog (the mock
        // cluster keeps about 5 MB a partition: the keys must spread over all of them).
        let key = if records.len() > 100_000 {
            format!("k{i}")
        } else {
            format!("k{}", i % 16)
        };
        let delivery = producer
            .send_result(FutureRecord::to(topic).key(&key).payload(payload))
            .map_err(|(e, _)| e)
            .expect("enqueued");
        deliveries.push((topic.clone(), delivery));
    }
    let mut coordinates = Vec::with_capacity(records.len());
    for (topic, delivery) in deliveries {
        let delivered = delivery.await.expect("not cancelled").expect("produced");
        coordinates.push((topic, delivered.partition, delivered.offset));
    }
    coordinates
}

pub(crate) fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).expect("output line is JSON"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Runs the daemon until it has processed `expected` records in total, then stops it.
async fn run_daemon_until(settings: &Settings, expected: u64) -> Arc<Stats> {
    run_daemon_until_within(settings, expected, Duration::from_secs(90)).await
}

/// [`run_daemon_until`], waiting at most `limit`.
pub(crate) async fn run_daemon_until_within(
    settings: &Settings,
    expected: u64,
    limit: Duration,
) -> Arc<Stats> {
    let stats = Arc::new(Stats::default());
    let daemon = Daemon::build(settings, stats.clone()).expect("daemon builds");
    let progress = daemon.progress();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    let done = wait_until(limit, || {
        task.is_finished()
            || stats.snapshot().records >= expected
                && progress
                    .ever_assigned
                    .load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    if task.is_finished() {
        let result = task.await.expect("daemon task");
        panic!("daemon stopped early: {result:?}");
    }
    assert!(
        done,
        "daemon processed {} of {expected} records",
        stats.snapshot().records
    );
    shutdown.cancel();
    task.await
        .expect("daemon task")
        .expect("daemon ran cleanly");
    stats
}

fn committed(settings: &Settings, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("group.id", &settings.kafka.group_id)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let offsets = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .expect("committed offsets");
    (0..partitions)
        .map(
            |p| match offsets.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            },
        )
        .collect()
}

/// The input topics of [`harness`], each with two partitions.
pub(crate) const INPUT_TOPICS: [&str; 5] = ["sso", "secrets", "gateway", "squid", "generic"];

/// Per input topic: its name, committed offsets and high watermarks.
fn input_offsets(h: &Harness) -> Vec<(String, Vec<i64>, Vec<i64>)> {
    INPUT_TOPICS
        .iter()
        .map(|suffix| {
            let topic = &h.topic_names[*suffix];
            (
                topic.clone(),
                committed(&h.settings, topic, 2),
                high_watermarks(&h.settings, topic, 2),
            )
        })
        .collect()
}

fn high_watermarks(settings: &Settings, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .expect("watermarks")
                .1
        })
        .collect()
}

/// Reads every record of an output topic: (key, value).
fn read_topic<T: serde::de::DeserializeOwned>(
    settings: &Settings,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<(String, T)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while out.len() < expected && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            let event =
                serde_json::from_slice(message.payload().unwrap_or_default()).expect("event JSON");
            out.push((key, event));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_is_decoded_resolved_and_committed() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let h = harness(&brokers, &cluster);
    let (inputs, coordinates) = produce_inputs(&brokers, &h).await;

    let stats = run_daemon_until(&h.settings, inputs.len() as u64).await;
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.records, inputs.len() as u64);
    assert_eq!(snapshot.dead_letters, 3);

    // Every good record became an event of its product, resolved to the registered app.
    let records: Vec<serde_json::Value> = read_lines(&h.events_path);
    let events: Vec<Enriched> = records.iter().map(enriched).collect();
    for (input, (topic, partition, offset)) in inputs.iter().zip(&coordinates) {
        let Some(product) = input.expect else {
            continue;
        };
        let origin = Origin::Kafka {
            topic: topic.clone(),
            partition: *partition,
            offset: *offset,
        };
        let event = events
            .iter()
            .find(|e| e.origin.as_ref() == Some(&origin))
            .unwrap_or_else(|| panic!("no event for the {product:?} record at {origin:?}"));
        assert_eq!(event.product, product);
        let identity = event.identity.as_ref().expect("identity resolved");
        assert_eq!(
            (identity.status, identity.app_id.as_deref()),
            (IdentityStatus::Registered, Some("reports-bot")),
            "{product:?} event {event:?}"
        );
    }
    assert_eq!(events.len(), 8, "one event per good record");

    // Bad records are dead-lettered with their reason and coordinates; neighbours were processed.
    let dead: Vec<serde_json::Value> = read_lines(&h.dead_path);
    assert_eq!(dead.len(), 3);
    let bad: Vec<_> = inputs
        .iter()
        .zip(&coordinates)
        .filter(|(i, _)| i.expect.is_none())
        .collect();
    for (input, (topic, partition, offset)) in &bad {
        let letter = dead
            .iter()
            .find(|d| {
                d["origin"]["topic"] == topic.as_str()
                    && d["origin"]["partition"] == *partition
                    && d["origin"]["offset"] == *offset
            })
            .unwrap_or_else(|| panic!("no dead letter for {topic}/{partition}/{offset}"));
        assert!(!letter["error"].as_str().unwrap_or_default().is_empty());
        assert_eq!(letter["payload_bytes"], input.payload.len());
        let expected_reason = match input.topic {
            "sso" => "bad_json",
            "secrets" => "unknown_format",
            _ => "wrong_shape",
        };
        assert_eq!(letter["reason"], expected_reason, "{letter}");
    }

    // The events topic carries the same events, keyed by identity.
    let published: Vec<(String, serde_json::Value)> =
        read_topic(&h.settings, &h.topic_names["events"], 2, events.len());
    assert_eq!(published.len(), events.len());
    assert!(published.iter().all(|(key, e)| key == "app:reports-bot"
        && enriched(e).identity.map(|i| i.key).as_deref() == Some("app:reports-bot")));
    // …each as its OCSF class, with the vendor record as raw data.
    for (_, record) in &published {
        let view = enriched(record);
        assert_eq!(
            record["class_uid"],
            view.category.ocsf_class_uid(),
            "{record}"
        );
        assert!(record["raw_data"].as_str().is_some_and(|r| !r.is_empty()));
    }

    // The history has the same events, written before the offsets were committed.
    let engine = appwarden::query::QueryEngine::open(&h.settings.history, &h.settings.query)
        .expect("history opens");
    let answer = engine
        .run("SELECT count(*) AS n FROM events WHERE app_id = 'reports-bot'")
        .await
        .expect("query runs");
    let counted = answer.batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .expect("count column")
        .value(0);
    assert_eq!(counted, events.len() as i64);

    // Input offsets are committed up to the end of every partition.
    for (topic, committed, end) in input_offsets(&h) {
        assert_eq!(committed, end, "committed offsets of {topic}");
    }

    // A restart of the same group resumes after the committed offsets: only the new record is processed.
    let extra = raw_sample("kong/documented.ndjson", |l| {
        l.contains("\"username\":\"reports-bot\"")
    });
    produce(&brokers, &[(h.topic_names["gateway"].clone(), extra)]).await;
    let again = run_daemon_until(&h.settings, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        again.snapshot().records,
        1,
        "restart re-read committed records"
    );
    let events_after: Vec<serde_json::Value> = read_lines(&h.events_path);
    assert_eq!(events_after.len(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_traffic_resolves_to_registered_apps() {
    use appwarden::generator::{World, WorldConfig};
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let mut h = harness(&brokers, &cluster);
    let world = World::new(WorldConfig {
        apps: 12,
        hours: 2,
        malformed_ratio: 0.0,
        incidents: false,
        start: chrono::DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z")
            .expect("time")
            .to_utc(),
        ..WorldConfig::default()
    });
    std::fs::write(&h.settings.registry.path, world.registry_yaml()).expect("registry");
    h.settings.output.events_topic = String::new();
    let records: Vec<(String, Vec<u8>)> = world
        .records()
        .into_iter()
        .map(|r| (h.topic_names[r.family.as_str()].clone(), r.payload))
        .collect();
    assert!(records.len() > 500, "a realistic amount of traffic");
    produce(&brokers, &records).await;
    let stats = run_daemon_until(&h.settings, records.len() as u64).await;
    let s = stats.snapshot();
    assert_eq!(s.dead_letters, 0);
    assert_eq!(
        s.unregistered + s.anonymous,
        0,
        "every generated app is registered"
    );
    assert_eq!(s.registered, s.events);
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
            appwarden::telemetry::StatsSnapshot::get(&s.events_by_product, product) > 0,
            "no {product} events"
        );
    }
}

/// Stop the daemon after a day and a half of traffic, restart it from its
/// snapshot, and feed the rest: the restored baselines still know every app's
/// usual domains (no first-seen flood) and are past learning (the one new
/// domain alerts at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_baselines_without_a_first_seen_flood() {
    use appwarden::generator::{RecordWriter, World, WorldConfig};
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let mut h = harness(&brokers, &cluster);
    // Small enough that no partition outgrows the mock cluster's log retention.
    let world = World::new(WorldConfig {
        apps: 8,
        hours: 48,
        rate_scale: 0.5,
        malformed_ratio: 0.0,
        incidents: false,
        ..WorldConfig::default()
    });
    std::fs::write(&h.settings.registry.path, world.registry_yaml()).expect("registry");
    h.settings.output.events_topic = String::new();
    h.settings.alerts.topic = h.topic_names["alerts"].clone();
    let records = world.records();
    let cut = records
        .iter()
        .position(|r| r.time >= world.config.start + chrono::Duration::hours(36))
        .expect("cut point");
    let to_kafka = |slice: &[appwarden::generator::GeneratedRecord]| -> Vec<(String, Vec<u8>)> {
        slice
            .iter()
            .map(|r| (h.topic_names[r.family.as_str()].clone(), r.payload.clone()))
            .collect()
    };
    produce(&brokers, &to_kafka(&records[..cut])).await;
    run_daemon_until(&h.settings, cut as u64).await;
    let snapshot = std::path::Path::new(&h.settings.state.snapshot_path);
    assert!(snapshot.is_file(), "a snapshot is written at shutdown");
    let alerts_before: Vec<serde_json::Value> = read_lines(Path::new(&h.settings.alerts.file));

    let app = &world.apps[5];
    let last = records.last().expect("records").time;
    let mut writer = RecordWriter::new(99);
    let mut rest = to_kafka(&records[cut..]);
    let exfil = writer.gateway_call(app, last, "paste.exfil-drop.net", &app.consumer, &app.ip);
    rest.push((h.topic_names["gateway"].clone(), exfil.payload));
    produce(&brokers, &rest).await;
    run_daemon_until(&h.settings, rest.len() as u64).await;

    let alerts: Vec<serde_json::Value> = read_lines(Path::new(&h.settings.alerts.file));
    let new: Vec<&serde_json::Value> = alerts[alerts_before.len()..].iter().collect();
    let summary: Vec<String> = new
        .iter()
        .map(|a| format!("{} {}", a["detector"], a["identity"]))
        .collect();
    assert_eq!(
        summary,
        [format!("\"new_egress_domain\" \"app:{}\"", app.id)],
        "after the restart only the new domain alerts"
    );
    // The alerts topic carries every alert of both runs, keyed by identity.
    let on_topic: Vec<(String, serde_json::Value)> =
        read_topic(&h.settings, &h.topic_names["alerts"], 1, alerts.len());
    assert_eq!(on_topic.len(), alerts.len());
    for ((key, alert), written) in on_topic.iter().zip(&alerts) {
        assert_eq!(alert["id"], written["id"]);
        assert_eq!(alert["identity"].as_str(), Some(key.as_str()));
    }
}

/// Batches are acknowledged while later ones are processed, so a failed output must
/// still keep every offset from moving: the daemon stops, nothing is committed, and
/// a restart once the topic is writable again processes every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_enriched_topic_stops_the_daemon_before_any_offset_moves() {
    use rdkafka::types::RDKafkaRespErr;
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let h = harness(&brokers, &cluster);
    let (inputs, _) = produce_inputs(&brokers, &h).await;
    let events_topic = &h.topic_names["events"];
    cluster
        .topic_error(
            events_topic,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .expect("topic error set");

    let stats = Arc::new(Stats::default());
    let daemon = Daemon::build(&h.settings, stats.clone()).expect("daemon builds");
    let task = tokio::spawn(daemon.run(CancellationToken::new()));
    let stopped = wait_until(Duration::from_secs(60), || task.is_finished()).await;
    assert!(
        stopped,
        "the daemon kept running with its enriched topic refused"
    );
    let error = task
        .await
        .expect("daemon task")
        .expect_err("a refused output is an error");
    assert!(error.to_string().contains(events_topic.as_str()), "{error}");
    assert!(
        stats.snapshot().records > 0,
        "records were read before it stopped"
    );
    for (topic, committed, _) in input_offsets(&h) {
        assert_eq!(committed, vec![0, 0], "no offset of {topic} moved");
    }

    cluster
        .topic_error(events_topic, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .expect("topic error cleared");
    let again = run_daemon_until(&h.settings, inputs.len() as u64).await;
    assert_eq!(again.snapshot().records, inputs.len() as u64);
    for (topic, committed, end) in input_offsets(&h) {
        assert_eq!(
            committed, end,
            "committed offsets of {topic} after the restart"
        );
    }
    let published: Vec<(String, serde_json::Value)> = read_topic(&h.settings, events_topic, 2, 8);
    assert_eq!(
        published.len(),
        8,
        "every good record reached the enriched topic"
    );
}

/// A running daemon with nothing more to read still stores and commits every offset
/// once the history flush that follows has written the rows (no shutdown needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_daemon_commits_every_offset_after_its_history_flush() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let mut h = harness(&brokers, &cluster);
    commit_soon(&mut h);
    let (inputs, _) = produce_inputs(&brokers, &h).await;
    run_until_committed(&h, inputs.len() as u64, Duration::ZERO).await;
}

/// History flushed and offsets committed within a second of being processed.
fn commit_soon(h: &mut Harness) {
    h.settings.history.flush_interval_secs = 1;
    h.settings
        .kafka
        .consumer_properties
        .insert("auto.commit.interval.ms".into(), "200".into());
}

/// Runs the daemon until it has read `expected` records and committed every input
/// offset while idle, `linger` longer, then stops it.
async fn run_until_committed(h: &Harness, expected: u64, linger: Duration) -> Arc<Stats> {
    let stats = Arc::new(Stats::default());
    let daemon = Daemon::build(&h.settings, stats.clone()).expect("daemon builds");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    let all_committed = || input_offsets(h).iter().all(|(_, c, end)| c == end);
    let done = wait_until(Duration::from_secs(45), || {
        stats.snapshot().records >= expected && all_committed()
    })
    .await;
    assert!(!task.is_finished(), "the daemon is still running");
    assert!(
        done,
        "read {} of {expected}; offsets committed while idle (topic, committed, end): {:?}",
        stats.snapshot().records,
        input_offsets(h)
    );
    tokio::time::sleep(linger).await;
    shutdown.cancel();
    task.await
        .expect("daemon task")
        .expect("daemon ran cleanly");
    stats
}

/// The go-live path: `replay --state-out` learns baselines from past exports, and
/// `run` started from that snapshot goes on from them on live Kafka traffic, with
/// no learning period to wait through and no first-seen flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_starts_from_baselines_learned_by_a_replay_of_past_exports() {
    use appwarden::generator::{RecordWriter, World, WorldConfig};
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let mut h = harness(&brokers, &cluster);
    let world = World::new(WorldConfig {
        apps: 8,
        hours: 48,
        rate_scale: 0.5,
        malformed_ratio: 0.0,
        incidents: false,
        ..WorldConfig::default()
    });
    std::fs::write(&h.settings.registry.path, world.registry_yaml()).expect("registry");
    h.settings.output.events_topic = String::new();
    let records = world.records();
    let cut = records
        .iter()
        .position(|r| r.time >= world.config.start + chrono::Duration::hours(36))
        .expect("cut point");

    // The past: one export file per source, replayed into a snapshot.
    let mut exports = Vec::new();
    for family in appwarden::generator::Family::ALL {
        let path = h.dir.path().join(format!("{}.log", family.as_str()));
        let mut text = Vec::new();
        for r in records[..cut].iter().filter(|r| r.family == family) {
            text.extend_from_slice(&r.payload);
            text.push(b'\n');
        }
        std::fs::write(&path, text).expect("export");
        exports.push(path);
    }
    let snapshot = h.dir.path().join("golive-state.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_appwarden"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("APPWARDEN__REGISTRY__PATH", &h.settings.registry.path)
        .env("APPWARDEN__LOG__FORMAT", "json")
        .arg("replay")
        .arg("--state-out")
        .arg(&snapshot)
        .arg("--alerts-out")
        .arg(h.dir.path().join("past-alerts.ndjson"))
        .arg("--dead-letter-out")
        .arg(h.dir.path().join("past-dead.ndjson"))
        .args(&exports)
        .output()
        .expect("replay runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(snapshot.is_file(), "replay wrote the snapshot");

    // Live: the daemon starts from it and reads the rest, plus one new domain an
    // hour in, when a cold daemon would still be learning domains (12 h): checked
    // to fail with the snapshot path pointed elsewhere.
    h.settings.state.snapshot_path = snapshot.display().to_string();
    let app = &world.apps[5];
    let at = records[cut].time + chrono::Duration::hours(1);
    let mut writer = RecordWriter::new(99);
    let mut live: Vec<(String, Vec<u8>)> = records[cut..]
        .iter()
        .map(|r| (h.topic_names[r.family.as_str()].clone(), r.payload.clone()))
        .collect();
    let exfil = writer.gateway_call(app, at, "paste.exfil-drop.net", &app.consumer, &app.ip);
    live.push((h.topic_names["gateway"].clone(), exfil.payload));
    produce(&brokers, &live).await;
    run_daemon_until(&h.settings, live.len() as u64).await;

    let alerts: Vec<serde_json::Value> = read_lines(Path::new(&h.settings.alerts.file));
    let summary: Vec<String> = alerts
        .iter()
        .map(|a| format!("{} {}", a["detector"], a["identity"]))
        .collect();
    assert_eq!(
        summary,
        [format!("\"new_egress_domain\" \"app:{}\"", app.id)],
        "the daemon knows the apps' domains from the replay: only the new one alerts"
    );
}

/// A record within `input.max_record_bytes` can still make outputs over the topics'
/// message size: JSON writes each control byte as `\u0001`, six bytes. Such a record
/// must never stop ingestion (the restart would read it again and stop again): the
/// enriched event keeps a marked prefix of its `raw_data`, an event that still does
/// not fit is dead-lettered, an alert has its longest strings cut, and a long
/// identity is keyed by its hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_at_the_input_limit_whose_escaping_outgrows_the_topics_do_not_stop_ingestion() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let mut h = harness(&brokers, &cluster);
    h.settings.alerts.topic = h.topic_names["alerts"].clone();
    let max = h.settings.input.max_record_bytes;
    let squid = h.topic_names["squid"].clone();
    // Control bytes in a field Squid's decoder ignores: only raw_data grows.
    let mut raw_heavy = b"1700000000.123 12 10.9.9.9 TCP_MISS/200 100 GET http://example.com/ - HIER_DIRECT/1.2.3.4 "
        .to_vec();
    raw_heavy.resize(max - 16, 0x01);
    // Control bytes in the user: the actor, its identity and the alert grow too.
    let mut user_heavy =
        b"1700000001.000 12 10.9.9.8 TCP_MISS/200 100 GET http://example.com/ ".to_vec();
    user_heavy.extend(std::iter::repeat_n(0x01, 200_000));
    user_heavy.extend_from_slice(b" HIER_DIRECT/1.2.3.4 -");
    let plain = b"1700000002.000 12 10.9.9.7 TCP_MISS/200 100 GET http://example.com/ok alice HIER_DIRECT/1.2.3.4 -".to_vec();
    let records = vec![
        (squid.clone(), raw_heavy.clone()),
        (squid.clone(), user_heavy),
        (squid.clone(), plain),
    ];
    produce(&brokers, &records).await;

    // Before the fix the daemon stopped here with MessageSizeTooLarge.
    let stats = run_daemon_until(&h.settings, records.len() as u64).await;
    let committed = committed(&h.settings, &squid, 2);
    assert_eq!(
        committed,
        high_watermarks(&h.settings, &squid, 2),
        "every input offset committed"
    );

    let events: Vec<(String, serde_json::Value)> =
        read_topic(&h.settings, &h.topic_names["events"], 2, 2);
    assert_eq!(events.len(), 2, "the cut event and the plain one");
    let cut = events
        .iter()
        .map(|(_, e)| e)
        .find(|e| e["raw_data_truncated"] == true)
        .expect("an event with its raw_data cut");
    assert_eq!(cut["raw_data_bytes"], raw_heavy.len());
    let kept = cut["raw_data"].as_str().expect("raw_data kept");
    assert!(!kept.is_empty() && raw_heavy.starts_with(kept.as_bytes()));
    let plain_event = events
        .iter()
        .map(|(_, e)| e)
        .find(|e| e["raw_data_truncated"].is_null())
        .expect("the plain event, whole");
    assert!(plain_event["raw_data_bytes"].is_null());

    let dead: Vec<(String, serde_json::Value)> =
        read_topic(&h.settings, &h.topic_names["dead"], 1, 1);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].1["reason"], "event_too_large");
    assert_eq!(
        dead[0].1["origin"]["topic"],
        squid.as_str(),
        "{}",
        dead[0].1["origin"]
    );

    let alerts: Vec<(String, serde_json::Value)> =
        read_topic(&h.settings, &h.topic_names["alerts"], 1, 2);
    let huge = alerts
        .iter()
        .find(|(key, _)| key.starts_with("sha256:"))
        .unwrap_or_else(|| {
            panic!(
                "the long identity's alert, keyed by hash: {:?}",
                alerts.iter().map(|(k, _)| k).collect::<Vec<_>>()
            )
        });
    let fields = huge.1["truncated_fields"].as_array().expect("marked");
    assert!(
        fields.contains(&serde_json::json!("/identity")),
        "{fields:?}"
    );

    let s = stats.snapshot();
    let count = |output, action| {
        s.oversized_outputs
            .iter()
            .find(|(pair, _)| *pair == (output, action))
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(count("events", "truncated"), 1);
    assert_eq!(count("events", "dead_lettered"), 1);
    assert_eq!(count("events", "key_hashed"), 1);
    assert!(count("alerts", "truncated") >= 1);
    assert!(count("alerts", "key_hashed") >= 1);
    assert_eq!(
        appwarden::telemetry::StatsSnapshot::get(&s.dead_letters_by_reason, "event_too_large"),
        1
    );
}

fn read_snapshot(h: &Harness) -> serde_json::Value {
    let text = std::fs::read_to_string(&h.settings.state.snapshot_path).expect("snapshot written");
    serde_json::from_str(&text).expect("snapshot is JSON")
}

/// (topic, partition) of each offset in a snapshot.
fn snapshot_partitions(snapshot: &serde_json::Value) -> Vec<(String, i64)> {
    snapshot["offsets"]
        .as_array()
        .map(|offsets| {
            offsets
                .iter()
                .filter_map(|o| Some((o[0].as_str()?.to_string(), o[1].as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// A snapshot records the cluster and group its offsets belong to; one taken on
/// another cluster is not restored, so its offsets cannot rewind this group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_on_another_cluster_is_not_restored() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let h = harness(&brokers, &cluster);
    let (inputs, _) = produce_inputs(&brokers, &h).await;
    run_daemon_until(&h.settings, inputs.len() as u64).await;
    let mut snapshot = read_snapshot(&h);
    assert_eq!(
        snapshot["kafka"]["group_id"].as_str(),
        Some(h.settings.kafka.group_id.as_str())
    );
    assert!(
        snapshot["kafka"]["cluster_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "the mock cluster's id is recorded: {}",
        snapshot["kafka"]
    );
    assert!(!snapshot_partitions(&snapshot).is_empty());

    // The same group and topics, but offsets from elsewhere: all at 0.
    snapshot["kafka"]["cluster_id"] = "another-cluster".into();
    if let Some(offsets) = snapshot["offsets"].as_array_mut() {
        for offset in offsets {
            offset[2] = 0.into();
        }
    }
    std::fs::write(&h.settings.state.snapshot_path, snapshot.to_string()).expect("rewritten");

    let mut h = h;
    commit_soon(&mut h);
    let (again, _) = produce_inputs(&brokers, &h).await;
    // A rewind to 0 would read the first run's records once more in the 2 s after.
    let stats = run_until_committed(&h, again.len() as u64, Duration::from_secs(2)).await;
    assert_eq!(
        stats.snapshot().records,
        again.len() as u64,
        "only the new records are read"
    );
    let rewritten = read_snapshot(&h);
    assert_ne!(rewritten["kafka"]["cluster_id"], "another-cluster");
}

/// Partitions another member took are not this process's to snapshot: their old
/// positions would rewind that member's progress at this process's next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_holds_only_the_partitions_this_process_owns() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let mut h = harness(&brokers, &cluster);
    h.settings.state.snapshot_interval_secs = 1;
    let stats = Arc::new(Stats::default());
    let daemon = Daemon::build(&h.settings, stats.clone()).expect("daemon builds");
    let progress = daemon.progress();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    let (inputs, _) = produce_inputs(&brokers, &h).await;
    let read_all = wait_until(Duration::from_secs(45), || {
        stats.snapshot().records >= inputs.len() as u64
    })
    .await;
    assert!(
        read_all,
        "read {} of {}",
        stats.snapshot().records,
        inputs.len()
    );
    let everything = snapshot_partitions(
        &read_snapshot_when(&h, Duration::from_secs(20), |s| {
            snapshot_partitions(s).len() >= 2
        })
        .await,
    );

    // A second member joins the group and takes about half of every topic.
    let stop = Arc::new(AtomicBool::new(false));
    // Stops the member even when an assertion fails first.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_member = StopOnDrop(stop.clone());
    let taken: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let member = std::thread::spawn({
        let (stop, taken) = (stop.clone(), taken.clone());
        let brokers = brokers.clone();
        let group = h.settings.kafka.group_id.clone();
        let topics: Vec<String> = INPUT_TOPICS
            .iter()
            .map(|t| h.topic_names[*t].clone())
            .collect();
        move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "500")
                .create()
                .expect("member");
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            consumer.subscribe(&names).expect("subscribe");
            while !stop.load(Ordering::Relaxed) {
                // Its records stay unread: it never stores or commits an offset.
                let _ = consumer.poll(Duration::from_millis(100));
                if let Ok(held) = consumer.assignment()
                    && let Ok(mut taken) = taken.lock()
                {
                    *taken = held
                        .elements()
                        .iter()
                        .map(|e| (e.topic().to_string(), i64::from(e.partition())))
                        .collect();
                }
            }
        }
    });
    let taken_now = || taken.lock().map(|t| t.clone()).unwrap_or_default();
    let shared = wait_until(Duration::from_secs(60), || {
        let other = taken_now().len() as i64;
        other > 0
            && progress
                .assigned_partitions
                .load(std::sync::atomic::Ordering::Relaxed)
                == 2 * INPUT_TOPICS.len() as i64 - other
    })
    .await;
    assert!(shared, "the second member took {:?}", taken_now());
    let other = taken_now();
    assert!(
        everything.iter().any(|p| other.contains(p)),
        "the first snapshot {everything:?} covers a partition the member took ({other:?})"
    );

    // New records on this process's partitions make its state worth saving again.
    produce_inputs(&brokers, &h).await;
    let own_only = |s: &serde_json::Value| {
        let partitions = snapshot_partitions(s);
        !partitions.is_empty() && partitions.iter().all(|p| !other.contains(p))
    };
    let latest = read_snapshot_when(&h, Duration::from_secs(30), own_only).await;
    shutdown.cancel();
    task.await
        .expect("daemon task")
        .expect("daemon ran cleanly");
    stop.store(true, Ordering::Relaxed);
    member.join().expect("member thread");
    assert!(own_only(&latest), "{latest}");
    let last = read_snapshot(&h);
    assert!(
        own_only(&last),
        "the snapshot at shutdown holds {:?}, the member {other:?}",
        snapshot_partitions(&last)
    );
}

/// The snapshot once `ready` holds for it, or the last one read after `limit`.
async fn read_snapshot_when(
    h: &Harness,
    limit: Duration,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + limit;
    let mut last = serde_json::Value::Null;
    while std::time::Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&h.settings.state.snapshot_path)
            && let Ok(snapshot) = serde_json::from_str::<serde_json::Value>(&text)
        {
            if ready(&snapshot) {
                return snapshot;
            }
            last = snapshot;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}
