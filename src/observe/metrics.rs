//! Prometheus text exposition (format 0.0.4) of the daemon's counters.
//!
//! Labels are fixed and low-cardinality: topic, format, product, category,
//! reason, detector, severity, risk tier, sink, output, action. Never an identity.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Observed;
use crate::telemetry::LatencySnapshot;

/// Every metric family the daemon exports, with its type. The dashboards test
/// checks each query against this list.
pub const FAMILIES: &[(&str, &str)] = &[
    ("appwarden_build_info", "gauge"),
    ("appwarden_ready", "gauge"),
    ("process_resident_memory_bytes", "gauge"),
    ("appwarden_records_consumed_total", "counter"),
    ("appwarden_records_processed_total", "counter"),
    ("appwarden_events_total", "counter"),
    ("appwarden_events_by_product_total", "counter"),
    ("appwarden_events_by_identity_total", "counter"),
    ("appwarden_decode_errors_total", "counter"),
    ("appwarden_dead_letters_total", "counter"),
    ("appwarden_oversized_outputs_total", "counter"),
    ("appwarden_kafka_assigned_partitions", "gauge"),
    ("appwarden_kafka_paused_partitions", "gauge"),
    ("appwarden_kafka_group_rejoins_total", "counter"),
    ("appwarden_kafka_brokers_up", "gauge"),
    ("appwarden_kafka_batches_committed_total", "counter"),
    ("appwarden_kafka_consumer_lag", "gauge"),
    ("appwarden_detect_events_total", "counter"),
    ("appwarden_detect_late_events_total", "counter"),
    ("appwarden_detect_suppressed_total", "counter"),
    ("appwarden_detect_evicted_identities_total", "counter"),
    ("appwarden_detect_tracked_identities", "gauge"),
    ("appwarden_detect_state_bytes", "gauge"),
    ("appwarden_alerts_total", "counter"),
    ("appwarden_alert_latency_seconds", "summary"),
    ("appwarden_processing_latency_seconds", "summary"),
    ("appwarden_sink_delivered_total", "counter"),
    ("appwarden_sink_retries_total", "counter"),
    ("appwarden_sink_given_up_total", "counter"),
    ("appwarden_sink_backlog", "gauge"),
    ("appwarden_outbox_depth", "gauge"),
    ("appwarden_history_files_total", "counter"),
    ("appwarden_history_upkeep_failures_total", "counter"),
    ("appwarden_http_connections", "gauge"),
    ("appwarden_http_bearer_failures_total", "counter"),
    ("appwarden_http_bearer_throttled_total", "counter"),
];

/// Builds the exposition text one family at a time.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, help: &str) {
        let kind = FAMILIES
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("untyped", |(_, k)| k);
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn one(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, help);
        self.sample(name, &[], value);
    }

    fn labelled<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        self.family(name, help);
        for (value_label, value) in values {
            self.sample(name, &[(label, value_label)], value as f64);
        }
    }

    fn summary(&mut self, name: &str, help: &str, latency: &LatencySnapshot) {
        self.family(name, help);
        for (q, seconds) in &latency.quantiles {
            self.sample(name, &[("quantile", &q.to_string())], *seconds);
        }
        self.sample(&format!("{name}_sum"), &[], latency.sum_secs);
        self.sample(&format!("{name}_count"), &[], latency.count as f64);
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn load(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

/// Resident set size from `/proc/self/statm` (Linux); `None` elsewhere.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Renders every metric of `observed`.
pub fn render(observed: &Observed) -> String {
    let mut x = Exposition { out: String::new() };
    let s = observed.stats.snapshot();

    x.family("appwarden_build_info", "Version of the running binary.");
    x.sample(
        "appwarden_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    let ready = observed.readiness().iter().all(|c| c.ok);
    x.one(
        "appwarden_ready",
        "1 when every readiness check passes (see /readyz).",
        if ready { 1.0 } else { 0.0 },
    );
    if let Some(bytes) = resident_bytes() {
        x.one(
            "process_resident_memory_bytes",
            "Resident memory of the process.",
            bytes as f64,
        );
    }

    x.family(
        "appwarden_records_consumed_total",
        "Records read from each input topic, with the topic's configured format.",
    );
    for counter in &observed.source.consumed {
        x.sample(
            "appwarden_records_consumed_total",
            &[("topic", &counter.topic), ("format", counter.format)],
            load(&counter.records),
        );
    }
    x.one(
        "appwarden_records_processed_total",
        "Records through decode and identity resolution (good and bad).",
        s.records as f64,
    );
    x.labelled(
        "appwarden_events_total",
        "Normalized events by category.",
        "category",
        s.events_by_category.iter().map(|(k, v)| (*k, *v)),
    );
    x.labelled(
        "appwarden_events_by_product_total",
        "Normalized events by vendor product.",
        "product",
        s.events_by_product.iter().map(|(k, v)| (*k, *v)),
    );
    x.labelled(
        "appwarden_events_by_identity_total",
        "Normalized events by how their actor resolved.",
        "status",
        [
            ("registered", s.registered),
            ("unregistered", s.unregistered),
            ("anonymous", s.anonymous),
        ],
    );
    x.labelled(
        "appwarden_decode_errors_total",
        "Records that could not be decoded, by reason.",
        "reason",
        s.decode_errors.iter().map(|(k, v)| (*k, *v)),
    );
    x.labelled(
        "appwarden_dead_letters_total",
        "Records written to the dead-letter topic or file, by reason.",
        "reason",
        s.dead_letters_by_reason.iter().map(|(k, v)| (*k, *v)),
    );
    x.family(
        "appwarden_oversized_outputs_total",
        "Outputs too large for their Kafka topic, by output and what was done (truncated, dead_lettered, dropped, key_hashed).",
    );
    for ((output, action), count) in &s.oversized_outputs {
        x.sample(
            "appwarden_oversized_outputs_total",
            &[("output", output), ("action", action)],
            *count as f64,
        );
    }

    let progress = &observed.source;
    x.one(
        "appwarden_kafka_assigned_partitions",
        "Input partitions assigned to this process.",
        progress.assigned_partitions.load(Ordering::Relaxed) as f64,
    );
    x.one(
        "appwarden_kafka_paused_partitions",
        "Input partitions paused by watermark alignment (ahead of the slowest with a backlog).",
        progress.paused_partitions.load(Ordering::Relaxed) as f64,
    );
    x.one(
        "appwarden_kafka_group_rejoins_total",
        "Times this process left and rejoined its consumer group after a minute with no partition.",
        progress.rejoins.load(Ordering::Relaxed) as f64,
    );
    let view = progress.client_view();
    x.one(
        "appwarden_kafka_brokers_up",
        "Brokers the consumer has an open connection to.",
        view.brokers_up as f64,
    );
    x.one(
        "appwarden_kafka_batches_committed_total",
        "Batches whose outputs were acknowledged (offsets stored, or waiting for the history flush).",
        progress.batches_committed.load(Ordering::Relaxed) as f64,
    );
    x.family(
        "appwarden_kafka_consumer_lag",
        "Records behind the high watermark per assigned partition (librdkafka statistics).",
    );
    for (topic, partition, lag) in &view.lag {
        x.sample(
            "appwarden_kafka_consumer_lag",
            &[("topic", topic), ("partition", &partition.to_string())],
            *lag as f64,
        );
    }

    let e = &observed.engine;
    x.one(
        "appwarden_detect_events_total",
        "Events seen by the detection engine.",
        load(&e.events),
    );
    x.one(
        "appwarden_detect_late_events_total",
        "Events older than the watermark (windowed detectors skip them).",
        load(&e.late_events),
    );
    x.one(
        "appwarden_detect_suppressed_total",
        "Findings suppressed as repeats of a recent alert.",
        load(&e.suppressed),
    );
    x.one(
        "appwarden_detect_evicted_identities_total",
        "Identities forgotten for idleness or to stay under the per-shard cap.",
        load(&e.evicted_identities),
    );
    x.one(
        "appwarden_detect_tracked_identities",
        "Identities with detector state (summed over detectors and shards).",
        e.tracked_identities() as f64,
    );
    x.one(
        "appwarden_detect_state_bytes",
        "Estimated bytes of detector state tables (a lower bound: window buffers excluded).",
        e.state_bytes() as f64,
    );

    x.family(
        "appwarden_alerts_total",
        "Alerts emitted, by detector, severity and the app's risk tier (none: unregistered).",
    );
    for ((detector, severity, tier), count) in &s.alerts_by_label {
        x.sample(
            "appwarden_alerts_total",
            &[
                ("detector", detector),
                ("severity", severity),
                ("risk_tier", tier),
            ],
            *count as f64,
        );
    }
    x.summary(
        "appwarden_alert_latency_seconds",
        "Event time of an alert's newest evidence to the alert emitted.",
        &observed.stats.alert_latency.snapshot(),
    );
    x.summary(
        "appwarden_processing_latency_seconds",
        "Record received from Kafka to its batch processed and durable.",
        &observed.stats.processing_latency.snapshot(),
    );

    let delivery = observed.delivery();
    let sinks = delivery
        .map(|(stats, _)| stats.sinks.as_slice())
        .unwrap_or(&[]);
    for (name, help, pick) in [
        (
            "appwarden_sink_delivered_total",
            "Alerts a sink delivered.",
            (|c| &c.delivered) as fn(&crate::deliver::worker::SinkCounters) -> &AtomicU64,
        ),
        (
            "appwarden_sink_retries_total",
            "Failed delivery attempts that will be retried.",
            |c| &c.retries,
        ),
        (
            "appwarden_sink_given_up_total",
            "Alerts a sink refused for good (not retried).",
            |c| &c.given_up,
        ),
    ] {
        x.family(name, help);
        for sink in sinks {
            x.sample(
                name,
                &[("sink", &sink.name), ("kind", sink.kind)],
                load(pick(sink)),
            );
        }
    }
    let outbox = delivery.and_then(|(_, outbox)| outbox.as_ref());
    x.family(
        "appwarden_sink_backlog",
        "Alerts in the outbox a sink has not delivered yet.",
    );
    if let Some(outbox) = outbox {
        for sink in sinks {
            x.sample(
                "appwarden_sink_backlog",
                &[("sink", &sink.name)],
                outbox.backlog(&sink.name) as f64,
            );
        }
    }
    x.one(
        "appwarden_outbox_depth",
        "Alerts in the outbox not yet delivered to every sink.",
        outbox.map_or(0, |o| o.depth()) as f64,
    );

    let history = observed.history();
    let count = |pick: fn(&crate::history::HistoryStats) -> &AtomicU64| {
        history.map_or(0, |h| pick(h).load(Ordering::Relaxed))
    };
    x.labelled(
        "appwarden_history_files_total",
        "History files written by flushes, merged away and written by compaction, and deleted by retention.",
        "change",
        [
            ("written", count(|h| &h.files_written)),
            ("merged", count(|h| &h.files_merged)),
            ("compacted", count(|h| &h.compacted_files_written)),
            ("expired", count(|h| &h.files_expired)),
        ],
    );
    x.one(
        "appwarden_history_upkeep_failures_total",
        "Retention or compaction steps that failed (logged; retried at a later pass).",
        count(|h| &h.upkeep_failures) as f64,
    );

    let http = &observed.http;
    for (name, help, value) in [
        (
            "appwarden_http_connections",
            "Connections the HTTP listener is serving (at most 64; more wait to be accepted).",
            &http.connections,
        ),
        (
            "appwarden_http_bearer_failures_total",
            "Requests with a wrong bearer token (answered 401).",
            &http.bearer_failures,
        ),
        (
            "appwarden_http_bearer_throttled_total",
            "Requests with a bearer token refused unchecked after too many wrong ones (answered 429).",
            &http.bearer_throttled,
        ),
    ] {
        x.one(name, help, load(value));
    }
    x.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn summary_lines_follow_the_format() {
        let mut x = Exposition { out: String::new() };
        let latency = crate::telemetry::Latency::default();
        latency.record(std::time::Duration::from_millis(20));
        x.summary(
            "appwarden_alert_latency_seconds",
            "help",
            &latency.snapshot(),
        );
        assert!(
            x.out
                .contains("# TYPE appwarden_alert_latency_seconds summary\n")
        );
        assert!(
            x.out
                .contains("appwarden_alert_latency_seconds{quantile=\"0.99\"} 0.02")
        );
        assert!(x.out.contains("appwarden_alert_latency_seconds_count 1\n"));
    }
}
