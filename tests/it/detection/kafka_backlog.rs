//! The realistic organisation as a cold Kafka backlog: two weeks of records
//! already on three topics of different partition counts when the daemon starts.
//! librdkafka hands over whole fetches of one partition after another, days of
//! event time each; watermark alignment must still give the alerts of a
//! time-ordered replay, scored against the same targets.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use rdkafka::mocking::MockCluster;

use appwarden::decode::Format;
use appwarden::generator::Family;
use appwarden::settings::TopicSettings;

use crate::kafka_pipeline::{harness, produce, read_lines, run_daemon_until_within};
use crate::support::unique;

/// An alert as both paths write it, without its evidence (which names the file
/// line or the Kafka offset of its sample events). The windowed detectors must
/// agree exactly; the per-event ones fire on the first event of a finding as it
/// arrives, which within the allowed lateness may be another one of the same
/// incident, so for them the finding is the detector and the identity.
fn key(a: &serde_json::Value) -> String {
    if !matches!(
        a["detector"].as_str(),
        Some("call_spike" | "mass_secret_read")
    ) {
        return format!("{} {}", a["detector"], a["identity"]);
    }
    format!(
        "{} {} {} {} {} {} {}",
        a["id"],
        a["detector"],
        a["identity"],
        a["window_start"],
        a["window_end"],
        a["severity"],
        a["summary"]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_backlog_on_three_topics_gives_the_alerts_of_a_time_ordered_replay() {
    let days = super::REALISTIC_DAYS;
    let world = super::realistic_world();
    let records = world.records();
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let mut h = harness(&brokers, &cluster);
    std::fs::write(&h.settings.registry.path, world.registry_yaml()).expect("registry");

    // Each family on a topic of its own size: the mock cluster keeps about 5 MB
    // of a partition, so the bigger topics get more partitions, and the partition
    // counts differ from topic to topic.
    let base = unique("backlog");
    let mut topics = Vec::new();
    let mut batch = Vec::with_capacity(records.len());
    for family in Family::ALL {
        let name = format!("{base}.{}", family.as_str());
        let bytes: usize = records
            .iter()
            .filter(|r| r.family == family)
            .map(|r| r.payload.len() + 100)
            .sum();
        let partitions = (bytes / (3 << 20)) as i32 + 2 + family.index() as i32;
        cluster
            .create_topic(&name, partitions, 1)
            .expect("topic created");
        topics.push((name, partitions));
    }
    for r in &records {
        batch.push((topics[r.family.index()].0.clone(), r.payload.clone()));
    }
    h.settings.kafka.topics = topics
        .iter()
        .map(|(name, _)| TopicSettings {
            name: name.clone(),
            format: Format::Auto,
            mapping: None,
            layout: None,
        })
        .collect();
    // Only the alerts matter here: no enriched events to write.
    h.settings.output.events_topic = String::new();
    h.settings.output.events_file = String::new();
    h.settings.validate().expect("test settings valid");
    produce(&brokers, &batch).await;
    eprintln!("backlog of {} records produced to {topics:?}", batch.len());

    let stats =
        run_daemon_until_within(&h.settings, records.len() as u64, Duration::from_secs(600)).await;
    let alerts: Vec<serde_json::Value> = read_lines(Path::new(&h.settings.alerts.file));

    // The same records, time-ordered in one file, through `replay`.
    let merged = h.dir.path().join("merged.log");
    let mut text = Vec::new();
    let mut sorted: Vec<_> = records.iter().collect();
    sorted.sort_by_key(|r| r.time);
    for r in sorted {
        text.extend_from_slice(&r.payload);
        text.push(b'\n');
    }
    std::fs::write(&merged, text).expect("merged file");
    let (_, replayed) = super::replay_alerts(&h.settings.registry.path, &[merged]);

    // The daemon keeps the last windows open (no end of input on a topic); compare
    // the alerts whose windows closed an hour before the last record.
    let last = records.iter().map(|r| r.time).max().expect("records");
    let closed = |a: &&serde_json::Value| {
        a["window_end"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t < last - chrono::Duration::hours(1))
    };
    let from_kafka: BTreeSet<String> = alerts.iter().filter(closed).map(key).collect();
    let from_replay: BTreeSet<String> = replayed.iter().filter(closed).map(key).collect();
    let s = super::score(&world, &alerts, days as f64);
    eprintln!(
        "cold Kafka backlog: {} records ({} processed) on {:?} (topic, partitions); {} alerts {:?} \
         (detector: (alerts, false)); recall {:.2}, precision {:.3}, {} false alerts over {} \
         identity-days = {:.3} per 100; missed {:?}; {} alerts closed an hour before the end, \
         {} in the replay",
        records.len(),
        stats.snapshot().records,
        topics,
        s.alerts,
        s.by_detector,
        s.recall(),
        s.precision(),
        s.false_alerts.len(),
        s.identity_days,
        s.false_per_100_identity_days(),
        s.missed,
        from_kafka.len(),
        from_replay.len(),
    );
    for a in from_kafka.symmetric_difference(&from_replay) {
        eprintln!(
            "  only in {}: {a}",
            if from_kafka.contains(a) {
                "kafka"
            } else {
                "replay"
            }
        );
    }
    s.assert_targets();
    assert_eq!(
        from_kafka, from_replay,
        "the backlog gives the alerts of a time-ordered replay"
    );
}
