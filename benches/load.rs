//! Load harness: the whole daemon against a bare librdkafka consumer on the
//! same topics, in one run, on librdkafka's in-process mock cluster.
//!
//! Run: `cargo bench --bench load`. Environment: `LOAD_RECORDS` (default
//! 200 000) generated vendor records, a realistic mix of all seven formats;
//! `LOAD_BATCH_MAX_RECORDS` overrides `kafka.batch_max_records`,
//! `LOAD_BATCH_LINGER_MS` `kafka.batch_linger_ms`,
//! `LOAD_PRODUCER_COMPRESSION` the producers' `compression.type`, and
//! `LOAD_HISTORY_FLUSH_EVENTS` `history.flush_max_events` (to compare);
//! `LOAD_SHOW_SLOW` prints each alert slower than 45 ms (to find a tail's cause).
//! Printed:
//! - bare: a librdkafka consumer reading the three input topics to the end
//!   (assign, poll, nothing else), records/s;
//! - full: `Daemon` with the default detectors, the enriched topic, the Parquet
//!   history and state snapshots over the same records, records/s; and the ratio;
//! - latency at half of the full rate: event → alert emitted (the alert's
//!   Kafka timestamp against the moment its newest evidence record was sent),
//!   for the detectors that alert on an event (windowed ones wait for their
//!   window by design), and record received → processed (the daemon's own summary).
//!
//! Rates count from the first record seen, so that group joins and topic
//! creation are left out of both; the bare consumer's end at its last record, the
//! daemon's once it has stopped with every output durable (the history's last
//! Parquet files included).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use appwarden::daemon::Daemon;
use appwarden::decode::Format;
use appwarden::detect::Alert;
use appwarden::event::Origin;
use appwarden::generator::{Family, GeneratedRecord, World, WorldConfig};
use appwarden::settings::{Settings, TopicSettings};
use appwarden::telemetry::Stats;

/// Partitions per topic. librdkafka's mock cluster keeps at most about 5 MB per
/// partition and drops older records beyond that, so the records are spread thin.
const PARTITIONS: i32 = 32;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A world big enough for `n` records, cut to `n`, with the five incidents
/// injected `incident_rounds` times.
fn generate(seed: u64, n: usize, incident_rounds: u32) -> (World, Vec<GeneratedRecord>) {
    let mut scale = 1.0;
    loop {
        let world = World::new(WorldConfig {
            seed,
            apps: 120,
            hours: 72,
            rate_scale: scale,
            malformed_ratio: 0.001,
            incident_rounds,
            ..WorldConfig::default()
        });
        let mut records = world.records();
        if records.len() >= n {
            records.truncate(n);
            return (world, records);
        }
        scale *= 1.2 * n as f64 / records.len().max(1) as f64;
    }
}

struct Topics {
    inputs: Vec<String>,
    enriched: String,
    alerts: String,
}

fn topics(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    run: &str,
) -> Topics {
    let inputs: Vec<String> = Family::ALL
        .iter()
        .map(|f| format!("{run}.{}", f.as_str()))
        .collect();
    let t = Topics {
        inputs,
        enriched: format!("{run}.enriched"),
        alerts: format!("{run}.alerts"),
    };
    for name in t.inputs.iter().chain([&t.enriched, &t.alerts]) {
        cluster
            .create_topic(name, PARTITIONS, 1)
            .expect("topic created");
    }
    t
}

fn topic_of<'a>(topics: &'a Topics, record: &GeneratedRecord) -> &'a str {
    &topics.inputs[record.family.index()]
}

/// A partition for a record, spreading records evenly (by a hash of the payload).
fn spread(record: &GeneratedRecord) -> i32 {
    let hash = record
        .payload
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
    (hash % PARTITIONS as u64) as i32
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer")
}

/// Sends `records` as fast as the producer takes them; returns when all are acknowledged.
async fn produce_all(brokers: &str, topics: &Topics, records: &[GeneratedRecord]) {
    let producer = producer(brokers);
    for chunk in records.chunks(20_000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for record in chunk {
            pending.push(
                producer
                    // Spread evenly, not by key: the mock cluster keeps at most 5 MB per
                    // partition. The daemon does not use the key (it resolves identities
                    // from the records and shards its state by identity).
                    .send_result(
                        FutureRecord::<(), _>::to(topic_of(topics, record))
                            .partition(spread(record))
                            .payload(&record.payload),
                    )
                    .map_err(|(e, _)| e)
                    .expect("enqueued"),
            );
        }
        for delivery in pending {
            delivery.await.expect("not cancelled").expect("produced");
        }
    }
}

/// Fails when the mock cluster dropped records (its per-partition size cap).
fn assert_retained(brokers: &str, topics: &Topics, n: usize) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    let mut held = 0;
    for topic in &topics.inputs {
        for p in 0..PARTITIONS {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            assert_eq!(
                low, 0,
                "the mock cluster dropped the start of {topic}/{p}: lower LOAD_RECORDS"
            );
            held += high;
        }
    }
    assert_eq!(held as usize, n, "every record is in the topics");
}

/// A bare consumer reads every partition from the start until it has `n` records.
fn bare_consumer(brokers: &str, topics: &Topics, n: usize) -> Duration {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "load-bare")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for topic in &topics.inputs {
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut seen = 0usize;
    let mut bytes = 0usize;
    let mut first = None;
    let mut last_message = Instant::now();
    while seen < n && last_message.elapsed() < Duration::from_secs(10) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            last_message = Instant::now();
            bytes += message.payload().map_or(0, <[u8]>::len);
            seen += 1;
        }
    }
    assert_eq!(seen, n, "the bare consumer read every record");
    std::hint::black_box(bytes);
    first.map_or(Duration::ZERO, |t| t.elapsed())
}

/// A number from the environment, when set and valid.
fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn daemon_settings(
    brokers: &str,
    topics: &Topics,
    scratch: &std::path::Path,
    world: &World,
    run: &str,
) -> Settings {
    let (mut settings, _) = Settings::load_with_env(None, Vec::new()).expect("defaults");
    let registry = scratch.join(format!("{run}-registry.yaml"));
    std::fs::write(&registry, world.registry_yaml()).expect("registry");
    settings.kafka.brokers = brokers.to_string();
    settings.kafka.group_id = format!("{run}-group");
    settings.kafka.topics = topics
        .inputs
        .iter()
        .map(|name| TopicSettings {
            name: name.clone(),
            format: Format::Auto,
            mapping: None,
            layout: None,
        })
        .collect();
    if let Some(batch) = env_number("LOAD_BATCH_MAX_RECORDS") {
        settings.kafka.batch_max_records = batch;
    }
    if let Some(ms) = env_number("LOAD_BATCH_LINGER_MS") {
        settings.kafka.batch_linger_ms = ms;
    }
    if let Some(events) = env_number("LOAD_HISTORY_FLUSH_EVENTS") {
        settings.history.flush_max_events = events;
    }
    if let Ok(codec) = std::env::var("LOAD_PRODUCER_COMPRESSION") {
        settings
            .kafka
            .producer_properties
            .insert("compression.type".into(), codec);
    }
    settings.input.max_future_secs = 100 * 365 * 86_400;
    settings.registry.path = registry;
    settings.detect.detectors_dir = PathBuf::new();
    settings.detect.allowed_lateness_secs = 600;
    settings.detect.max_source_skew_secs = 6 * 3600;
    settings.output.events_topic = topics.enriched.clone();
    settings.output.events_file = String::new();
    settings.alerts.topic = topics.alerts.clone();
    settings.alerts.file = String::new();
    settings.dead_letter.topic = String::new();
    settings.dead_letter.file = scratch
        .join(format!("{run}-dead.ndjson"))
        .display()
        .to_string();
    settings.state.snapshot_path = scratch
        .join(format!("{run}-state.json"))
        .display()
        .to_string();
    settings.history.path = scratch.join(format!("{run}-history")).display().to_string();
    settings.history.retention_days = 0;
    settings.deliver.outbox_dir = scratch.join(format!("{run}-outbox")).display().to_string();
    settings.http.listen = String::new();
    settings.validate().expect("settings");
    settings
}

/// The daemon over the topics until it has processed `n` records, the detectors
/// have seen every event and it has stopped with every output durable (history
/// files included); returns the time from its first record to the last one
/// processed, and to the end of that shutdown.
async fn full_pipeline(settings: &Settings, n: u64) -> (Duration, Duration, Arc<Stats>) {
    let stats = Arc::new(Stats::default());
    let daemon = Daemon::build(settings, stats.clone()).expect("daemon");
    let engine = daemon.engine_stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let s = stats.snapshot();
        if s.records > 0 {
            first.get_or_insert_with(Instant::now);
        }
        let detected = engine.events.load(std::sync::atomic::Ordering::Relaxed);
        if s.records >= n && detected >= s.events {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "daemon stalled at {} of {n}",
            s.records
        );
        assert!(!task.is_finished(), "daemon stopped early");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let processed = first.map_or(Duration::ZERO, |t| t.elapsed());
    // Done means durable: the shutdown writes the history rows still buffered,
    // waits for the last acknowledgements and stores the final offsets.
    shutdown.cancel();
    task.await.expect("daemon task").expect("daemon ran");
    let durable = first.map_or(Duration::ZERO, |t| t.elapsed());
    (processed, durable, stats)
}

/// Sends `records` at `rate` per second; returns the send time (ms) of each (topic, partition, offset).
async fn produce_paced(
    brokers: &str,
    topics: &Topics,
    records: &[GeneratedRecord],
    rate: f64,
) -> HashMap<(String, i32, i64), i64> {
    let producer = producer(brokers);
    let tick = Duration::from_millis(10);
    let per_tick = (rate * tick.as_secs_f64()).max(1.0);
    let mut sent = HashMap::with_capacity(records.len());
    let mut pending = Vec::new();
    let start = tokio::time::Instant::now();
    let mut due = 0.0f64;
    let mut next = 0usize;
    let mut ticks = 0u32;
    while next < records.len() {
        ticks += 1;
        tokio::time::sleep_until(start + tick * ticks).await;
        due += per_tick;
        while (next as f64) < due && next < records.len() {
            let record = &records[next];
            let topic = topic_of(topics, record);
            let at = now_ms();
            let delivery = producer
                .send_result(
                    FutureRecord::<(), _>::to(topic)
                        .partition(spread(record))
                        .payload(&record.payload),
                )
                .map_err(|(e, _)| e)
                .expect("enqueued");
            pending.push((topic.to_string(), at, delivery));
            next += 1;
        }
    }
    for (topic, at, delivery) in pending {
        let done = delivery.await.expect("not cancelled").expect("produced");
        sent.insert((topic, done.partition, done.offset), at);
    }
    sent
}

/// Event → alert latency (ms) of alerts raised by an event (not by a closing window).
fn alert_latencies(
    brokers: &str,
    topic: &str,
    sent: &HashMap<(String, i32, i64), i64>,
) -> Histogram<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "load-alerts")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("histogram");
    let mut quiet = 0;
    while quiet < 20 {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                quiet = 0;
                let Some(emitted) = message.timestamp().to_millis() else {
                    continue;
                };
                let Ok(alert) =
                    serde_json::from_slice::<Alert>(message.payload().unwrap_or_default())
                else {
                    continue;
                };
                if !matches!(
                    alert.kind.as_str(),
                    "unregistered" | "new_domain" | "token_region"
                ) {
                    continue;
                }
                let trigger = alert
                    .evidence
                    .samples
                    .iter()
                    .filter_map(|s| match &s.origin {
                        Some(Origin::Kafka {
                            topic,
                            partition,
                            offset,
                        }) => sent.get(&(topic.clone(), *partition, *offset)).copied(),
                        _ => None,
                    })
                    .max();
                if let Some(trigger) = trigger {
                    histogram.saturating_record((emitted - trigger).max(1) as u64);
                    if std::env::var_os("LOAD_SHOW_SLOW").is_some() && emitted - trigger > 45 {
                        println!(
                            "slow alert: {} ms {} {} at {}",
                            emitted - trigger,
                            alert.kind,
                            alert.identity,
                            trigger % 100_000
                        );
                    }
                }
            }
            _ => quiet += 1,
        }
    }
    histogram
}

fn main() {
    let n: usize = env_number("LOAD_RECORDS").unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let scratch = tempfile::tempdir().expect("scratch");
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();

    let (world, records) = generate(7, n, 8);
    let formats: std::collections::BTreeSet<String> = world
        .apps
        .iter()
        .flat_map(|a| {
            [
                format!("{:?}", a.sso),
                format!("{:?}", a.secrets),
                format!("{:?}", a.gateway),
            ]
        })
        .map(|s| s.to_lowercase())
        .collect();
    let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
    println!(
        "load: {} records ({:.0} bytes on average) from {} apps in {} formats ({})",
        records.len(),
        bytes as f64 / records.len() as f64,
        world.apps.len(),
        formats.len(),
        formats.into_iter().collect::<Vec<_>>().join(", ")
    );

    let throughput = topics(&cluster, "load");
    runtime.block_on(produce_all(&brokers, &throughput, &records));
    assert_retained(&brokers, &throughput, records.len());
    let bare = bare_consumer(&brokers, &throughput, records.len());
    let bare_rate = records.len() as f64 / bare.as_secs_f64();
    let settings = daemon_settings(&brokers, &throughput, scratch.path(), &world, "load");
    let (processed, full, stats) = runtime.block_on(full_pipeline(&settings, records.len() as u64));
    let full_rate = records.len() as f64 / full.as_secs_f64();
    let s = stats.snapshot();
    println!(
        "throughput: bare librdkafka consumer {bare_rate:.0} records/s; full pipeline {full_rate:.0} records/s \
         to durable ({:.0} records/s to processed, shutdown {:.2} s) ({} events, {} alerts, {} dead letters); \
         ratio {:.2} (target >= 0.80)",
        records.len() as f64 / processed.as_secs_f64(),
        (full - processed).as_secs_f64(),
        s.events,
        s.alerts,
        s.dead_letters,
        full_rate / bare_rate
    );

    // Latency at half of the measured maximum: fresh topics, a second world.
    // More incident rounds than the throughput world: each alert is one latency sample.
    let (world, records) = generate(8, n.min(200_000), 60);
    let latency = topics(&cluster, "latency");
    let mut settings = daemon_settings(&brokers, &latency, scratch.path(), &world, "latency");
    // librdkafka's mock broker answers an empty fetch only when its MaxWait
    // (fetch.wait.max.ms, 500 ms by default) runs out, not when new records arrive as
    // a real broker does (rdkafka_mock_handlers.c says so); a short wait stands in.
    settings
        .kafka
        .consumer_properties
        .insert("fetch.wait.max.ms".into(), "10".into());
    let rate = full_rate / 2.0;
    let (sent, stats) = runtime.block_on(async {
        let stats = Arc::new(Stats::default());
        let daemon = Daemon::build(&settings, stats.clone()).expect("daemon");
        let progress = daemon.progress();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(daemon.run(shutdown.clone()));
        // Start sending once the group has its partitions, so nothing queues up at the start.
        let deadline = Instant::now() + Duration::from_secs(60);
        while progress
            .assigned_partitions
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // ...and has had time to look up its offsets and start fetching: records sent
        // before that would measure the start-up, not the pipeline.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sent = produce_paced(&brokers, &latency, &records, rate).await;
        let deadline = Instant::now() + Duration::from_secs(120);
        while stats.snapshot().records < records.len() as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        task.await.expect("daemon task").expect("daemon ran");
        (sent, stats)
    });
    let histogram = alert_latencies(&brokers, &latency.alerts, &sent);
    let processing = stats.processing_latency.snapshot();
    let q = |p: f64| {
        processing
            .quantiles
            .iter()
            .find(|(x, _)| *x == p)
            .map_or(0.0, |(_, s)| s * 1000.0)
    };
    println!(
        "latency at {rate:.0} records/s (half the full rate), {} records: event -> alert emitted over {} alerts: \
         p50 {} ms, p90 {} ms, p99 {} ms, max {} ms (target p99 < 50 ms); record received -> processed: \
         p50 {:.1} ms, p99 {:.1} ms",
        records.len(),
        histogram.len(),
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.9),
        histogram.value_at_quantile(0.99),
        histogram.max(),
        q(0.5),
        q(0.99),
    );
}
