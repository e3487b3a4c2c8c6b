//! Kafka source: one consumer group over the input topics, at-least-once, in order per partition.
//!
//! Records are processed in batches. A batch's input offsets are stored only
//! after every output of the batch is durable: files are flushed and alerts
//! synced when the batch is sealed ([`Outputs::seal`]); its Kafka records are
//! acknowledged while the next batches are read and processed, and the batches
//! settle strictly in order: a settled batch's offsets are stored, or, with a
//! Parquet history, wait for the history flush that writes its rows. librdkafka then commits
//! stored offsets periodically, on partition revocation (see [`GroupContext`])
//! and at shutdown. Snapshots wait until every batch in flight has settled, so
//! restored state always matches the offsets it resumes from.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio_util::sync::CancellationToken;

use std::path::PathBuf;
use std::time::Instant;

use rdkafka::{Offset, TopicPartitionList};

use super::align::{Alignment, Backlog};
use crate::decode::{DecodeOptions, Format};
use crate::deliver::worker::{DeliverError, Delivery};
use crate::detect::Engine;
use crate::detect::engine::EngineError;
use crate::event::{NormalizedEvent, Origin};
use crate::history::FlushReport;
use crate::pipeline::Pipeline;
use crate::settings::{KafkaSettings, SecretError};
use crate::sinks::{Outputs, SinkError, Unconfirmed};
use crate::state::{self, SNAPSHOT_VERSION, Snapshot, SnapshotOrigin, StateError};
use crate::telemetry::RateLimitedLog;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("kafka.secret_properties.\"{property}\": {source}")]
    Secret {
        property: String,
        source: SecretError,
    },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    /// A topic's layout did not parse (settings validation refuses it first).
    #[error("kafka.topics[].layout: {0}")]
    Layout(#[from] crate::decode::LayoutError),
}

/// Where and how often detector state is snapshotted.
#[derive(Debug, Clone)]
pub struct SnapshotPolicy {
    pub path: PathBuf,
    pub interval: Duration,
}

/// The librdkafka configuration shared by the consumer and AppWarden's producers:
/// brokers, pass-through properties and secret properties (resolved here, never logged).
pub fn client_config(settings: &KafkaSettings) -> Result<ClientConfig, SourceError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    for (key, value) in &settings.properties {
        config.set(key, value);
    }
    for (key, secret) in &settings.secret_properties {
        let value = secret.resolve().map_err(|source| SourceError::Secret {
            property: key.clone(),
            source,
        })?;
        config.set(key, value);
    }
    Ok(config)
}

/// The consumer's librdkafka configuration, as `run` builds it (`check-config`
/// has librdkafka check it too).
pub fn consumer_config(settings: &KafkaSettings) -> Result<ClientConfig, SourceError> {
    let mut config = client_config(settings)?;
    config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A new group must see the records already waiting, not only new ones.
        .set("auto.offset.reset", "earliest")
        // Lag and broker state for /metrics and /readyz; a user setting wins.
        .set("statistics.interval.ms", "1000");
    for (key, value) in &settings.consumer_properties {
        config.set(key, value);
    }
    Ok(config)
}

/// Has librdkafka check every property of `config` without creating a client
/// (nothing connects); a refusal is [`redacted`].
pub fn check_config(config: &ClientConfig) -> Result<(), KafkaError> {
    config
        .create_native_config()
        .map(drop)
        .map_err(|error| redacted(error, config))
}

/// What librdkafka says of a configuration it refuses, without secrets: its
/// `ClientConfig` error carries the rejected property's value (a misspelled
/// `secret_properties` key is refused with the resolved secret), so a value is
/// never shown, and the values of secret properties are cut from any message.
pub fn redacted(error: KafkaError, config: &ClientConfig) -> KafkaError {
    const REDACTED: &str = "[redacted]";
    let secrets: Vec<&str> = config
        .config_map()
        .into_iter()
        .filter(|(key, value)| crate::settings::is_secret_property(key) && !value.is_empty())
        .map(|(_, value)| value)
        .collect();
    let scrub = |text: &str, extra: &str| {
        let mut text = text.to_string();
        for secret in secrets
            .iter()
            .copied()
            .chain(Some(extra).filter(|v| !v.is_empty()))
        {
            text = text.replace(secret, REDACTED);
        }
        text
    };
    match error {
        KafkaError::ClientConfig(code, description, key, value) => {
            let shown = if value.is_empty() {
                value.clone()
            } else {
                REDACTED.into()
            };
            KafkaError::ClientConfig(code, scrub(&description, &value), key, shown)
        }
        KafkaError::ClientCreation(message) => KafkaError::ClientCreation(scrub(&message, "")),
        other => other,
    }
}

/// What the consumer is doing, for summaries, metrics and readiness.
#[derive(Debug, Default)]
pub struct SourceProgress {
    /// Partitions currently assigned to this process.
    pub assigned_partitions: AtomicI64,
    /// Set once the group has assigned partitions at least once.
    pub ever_assigned: AtomicBool,
    /// Times this process left and rejoined its group after an empty assignment.
    pub rejoins: AtomicU64,
    /// Batches whose outputs were acknowledged (offsets stored, or waiting for the history flush).
    pub batches_committed: AtomicI64,
    /// Partitions paused by watermark alignment (ahead of the slowest with a backlog).
    pub paused_partitions: AtomicI64,
    /// Records read per input topic, with the topic's configured format.
    pub consumed: Vec<TopicCounter>,
    /// From librdkafka's statistics (every `statistics.interval.ms`).
    pub client: std::sync::Mutex<ClientView>,
}

/// Records read from one input topic.
#[derive(Debug)]
pub struct TopicCounter {
    pub topic: String,
    pub format: &'static str,
    pub records: std::sync::atomic::AtomicU64,
}

/// The consumer as librdkafka last described it in its statistics.
#[derive(Debug, Default, Clone)]
pub struct ClientView {
    /// When the statistics arrived; `None` before the first.
    pub updated: Option<Instant>,
    /// Brokers with an open connection (state `UP`), bootstrap entries excluded.
    pub brokers_up: usize,
    /// Brokers known, bootstrap entries excluded.
    pub brokers_known: usize,
    /// Messages behind the high watermark, per assigned (topic, partition).
    pub lag: Vec<(String, i32, i64)>,
    /// Whether records wait unread past what the application has read, per
    /// partition: what watermark alignment needs (the lag above counts from the
    /// committed offset, which trails the records read).
    pub backlog: Vec<(String, i32, Backlog)>,
}

/// A partition's backlog from its statistics: the high watermark against the
/// next record the application reads (or, before its first, the next fetched).
fn partition_backlog(p: &rdkafka::statistics::Partition) -> Backlog {
    if p.hi_offset < 0 {
        return Backlog::Unknown;
    }
    let position = if p.app_offset >= 0 {
        p.app_offset
    } else if p.fetchq_cnt > 0 {
        return Backlog::Behind;
    } else if p.next_offset >= 0 {
        p.next_offset
    } else {
        return Backlog::Unknown;
    };
    if p.hi_offset > position {
        Backlog::Behind
    } else {
        Backlog::CaughtUp
    }
}

impl SourceProgress {
    fn count(&self, topic: &str) {
        if let Some(counter) = self.consumed.iter().find(|c| c.topic == topic) {
            counter.records.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The latest [`ClientView`].
    pub fn client_view(&self) -> ClientView {
        match self.client.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Logs rebalances and commits stored offsets before partitions are taken away,
/// so the next owner starts exactly after what this process finished.
pub struct GroupContext {
    progress: Arc<SourceProgress>,
    /// Where restored state ends, per partition: an assigned partition found here
    /// starts at this offset instead of the group's committed one.
    resume: std::sync::Mutex<HashMap<(String, i32), i64>>,
    /// Partitions taken away since the consume loop last looked.
    revoked: std::sync::Mutex<Vec<(String, i32)>>,
    /// Partitions handed to this process since the consume loop last looked.
    assigned: std::sync::Mutex<Vec<(String, i32)>>,
    /// Since when the group has given this process no partition at all.
    empty_since: std::sync::Mutex<Option<Instant>>,
}

fn take_all(list: &std::sync::Mutex<Vec<(String, i32)>>) -> Vec<(String, i32)> {
    match list.lock() {
        Ok(mut guard) => std::mem::take(&mut *guard),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    }
}

fn push_all(list: &std::sync::Mutex<Vec<(String, i32)>>, tpl: &TopicPartitionList) {
    let partitions: Vec<(String, i32)> = tpl
        .elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect();
    match list.lock() {
        Ok(mut guard) => guard.extend(partitions),
        Err(poisoned) => poisoned.into_inner().extend(partitions),
    }
}

impl GroupContext {
    fn new(progress: Arc<SourceProgress>) -> GroupContext {
        GroupContext {
            progress,
            resume: std::sync::Mutex::new(HashMap::new()),
            revoked: std::sync::Mutex::new(Vec::new()),
            assigned: std::sync::Mutex::new(Vec::new()),
            empty_since: std::sync::Mutex::new(None),
        }
    }

    fn take_revoked(&self) -> Vec<(String, i32)> {
        take_all(&self.revoked)
    }

    fn take_assigned(&self) -> Vec<(String, i32)> {
        take_all(&self.assigned)
    }

    fn set_empty_since(&self, since: Option<Instant>) {
        match self.empty_since.lock() {
            Ok(mut guard) => *guard = since,
            Err(poisoned) => *poisoned.into_inner() = since,
        }
    }

    fn empty_since(&self) -> Option<Instant> {
        match self.empty_since.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Counts what the consumer holds after a rebalance step. A cooperative
    /// rebalance hands over and takes away only the partitions that move, so the
    /// step's own list is not the assignment: only the consumer knows it.
    fn count_assignment(&self, consumer: &BaseConsumer<Self>) {
        let held = match consumer.assignment() {
            Ok(held) => held.count(),
            Err(error) => {
                tracing::warn!(%error, "reading the assignment after a rebalance");
                return;
            }
        };
        self.progress
            .assigned_partitions
            .store(held as i64, Ordering::Relaxed);
        // The empty-assignment clock starts when the last partition goes, and
        // keeps running through steps that leave this process with none.
        let since = self.empty_since();
        self.set_empty_since((held == 0).then(|| since.unwrap_or_else(Instant::now)));
    }
}

impl ClientContext for GroupContext {
    /// Keeps what readiness and `/metrics` need from librdkafka's statistics.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let brokers = statistics.brokers.values().filter(|b| b.nodeid >= 0);
        let (mut known, mut up) = (0, 0);
        for broker in brokers {
            known += 1;
            if broker.state == "UP" {
                up += 1;
            }
        }
        let (mut lag, mut backlog) = (Vec::new(), Vec::new());
        for (name, topic) in &statistics.topics {
            // Partition -1 is librdkafka's internal UA.
            for p in topic.partitions.values().filter(|p| p.partition >= 0) {
                // A lag of -1 is librdkafka's "unknown" (not consumed here).
                if p.consumer_lag >= 0 {
                    lag.push((name.clone(), p.partition, p.consumer_lag));
                }
                backlog.push((name.clone(), p.partition, partition_backlog(p)));
            }
        }
        lag.sort();
        let view = ClientView {
            updated: Some(Instant::now()),
            brokers_up: up,
            brokers_known: known,
            lag,
            backlog,
        };
        match self.progress.client.lock() {
            Ok(mut guard) => *guard = view,
            Err(poisoned) => *poisoned.into_inner() = view,
        }
    }
}

impl ConsumerContext for GroupContext {
    /// librdkafka's default rebalance, except that partitions covered by a
    /// restored snapshot start at the snapshot's offsets.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::consumer::RebalanceProtocol;
        use rdkafka::types::RDKafkaRespErr as E;
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            E::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Used once: a later rebalance resumes from the group's committed offsets.
                let mut resume = match self.resume.lock() {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
                let starts: Vec<(String, i32, i64)> = tpl
                    .elements()
                    .iter()
                    .filter_map(|e| {
                        resume
                            .remove(&(e.topic().to_string(), e.partition()))
                            .map(|o| (e.topic().to_string(), e.partition(), o))
                    })
                    .collect();
                // The snapshot speaks for the first real assignment only.
                if tpl.count() > 0 {
                    resume.clear();
                }
                drop(resume);
                let mut resumed = TopicPartitionList::new();
                for (topic, partition, offset) in &starts {
                    if let Err(error) =
                        resumed.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    {
                        tracing::warn!(%error, topic, partition, "snapshot offset");
                    }
                }
                for (topic, partition, offset) in starts {
                    if let Err(error) =
                        tpl.set_partition_offset(&topic, partition, Offset::Offset(offset))
                    {
                        tracing::warn!(%error, topic, partition, "cannot start at the snapshot offset");
                    }
                }
                self.pre_rebalance(consumer, &Rebalance::Assign(tpl));
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(error) = result {
                    tracing::error!(%error, "assigning partitions");
                } else {
                    push_all(&self.assigned, tpl);
                }
                if resumed.count() > 0 {
                    // Make the group's committed offsets match the restored state, so a
                    // rebalance before the first batch resumes from the same place.
                    if let Err(error) = consumer.commit(&resumed, CommitMode::Async) {
                        tracing::warn!(%error, "committing the snapshot offsets");
                    }
                }
                self.post_rebalance(consumer, &Rebalance::Assign(tpl));
            }
            E::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                push_all(&self.revoked, tpl);
                // librdkafka keeps a partition's pause across assignments: one paused
                // by alignment must not come back paused (resuming one that is not
                // paused does nothing).
                if let Err(error) = consumer.resume(tpl) {
                    tracing::warn!(%error, "resuming revoked partitions");
                }
                self.pre_rebalance(consumer, &Rebalance::Revoke(tpl));
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(error) = result {
                    tracing::error!(%error, "revoking partitions");
                }
                self.post_rebalance(consumer, &Rebalance::Revoke(tpl));
            }
            other => {
                // As librdkafka's own handler does: give up what this process holds,
                // committing what is finished first; the group assigns again.
                let error = KafkaError::Rebalance(other.into());
                tracing::warn!(%error, "rebalance error; giving up the assigned partitions");
                let held = consumer.assignment().unwrap_or_default();
                push_all(&self.revoked, &held);
                if let Err(error) = consumer.resume(&held) {
                    tracing::warn!(%error, "resuming the given-up partitions");
                }
                self.pre_rebalance(consumer, &Rebalance::Revoke(&held));
                let result = if cooperative {
                    consumer.incremental_unassign(&held)
                } else {
                    consumer.unassign()
                };
                if let Err(error) = result {
                    tracing::error!(%error, "giving up partitions after a rebalance error");
                }
                self.post_rebalance(consumer, &Rebalance::Error(error));
            }
        }
        self.count_assignment(consumer);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(
                partitions = partitions.count(),
                "partitions revoked; committing stored offsets"
            );
            if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing stored yet is the usual reason; the next owner re-reads from the last commit.
                tracing::debug!(%error, "commit on revoke");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = partitions.count(), "partitions assigned");
                self.progress.ever_assigned.store(true, Ordering::Relaxed);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }
}

/// The input topics with their decoding settings.
struct TopicFormats(HashMap<String, (Format, DecodeOptions)>);

impl TopicFormats {
    fn get(&self, topic: &str) -> (Format, &DecodeOptions) {
        static DEFAULT: std::sync::OnceLock<DecodeOptions> = std::sync::OnceLock::new();
        match self.0.get(topic) {
            Some((format, options)) => (*format, options),
            None => (Format::Auto, DEFAULT.get_or_init(DecodeOptions::default)),
        }
    }
}

/// The last processed offset of each partition in the current batch.
#[derive(Default)]
struct BatchOffsets {
    partitions: Vec<(String, i32, i64)>,
    records: usize,
}

impl BatchOffsets {
    fn note(&mut self, topic: &str, partition: i32, offset: i64) {
        self.records += 1;
        note_offset(&mut self.partitions, topic, partition, offset);
    }
}

/// Keeps `offset` as the last one of its partition in `offsets`.
fn note_offset(offsets: &mut Vec<(String, i32, i64)>, topic: &str, partition: i32, offset: i64) {
    match offsets
        .iter_mut()
        .find(|(t, p, _)| *p == partition && t == topic)
    {
        Some(entry) => entry.2 = offset,
        None => offsets.push((topic.to_string(), partition, offset)),
    }
}

/// Sealed batches not yet acknowledged, at most (the open batch's records may be in
/// flight too); one more waits for the oldest. A few keep the consumer busy during
/// a produce round trip without holding much.
const MAX_UNSETTLED_BATCHES: usize = 4;

/// A sealed batch: what it stores once its Kafka outputs are acknowledged.
struct Sealed {
    offsets: Vec<(String, i32, i64)>,
    /// When each of its records was received.
    received: Vec<Instant>,
}

type Settling =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Sealed, SinkError>> + Send>>;

/// What a history flush wrote, and the offsets that waited for it.
type HistoryWritten = (FlushReport, Vec<(String, i32, i64)>);

type HistoryFlushing =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<HistoryWritten, SinkError>> + Send>>;

/// Resolves when the history flush in `slot` does; never when there is none.
async fn history_flushed(slot: &mut Option<HistoryFlushing>) -> Result<HistoryWritten, SinkError> {
    match slot {
        Some(flush) => flush.await,
        None => std::future::pending().await,
    }
}

fn settling(outputs: Unconfirmed, sealed: Sealed) -> Settling {
    Box::pin(async move {
        outputs.confirmed().await?;
        Ok(sealed)
    })
}

/// What the consume loop carries between batches.
struct RunState {
    batch: BatchOffsets,
    /// When each record of the open batch was received.
    received: Vec<Instant>,
    /// Events of the open batch, for the detectors.
    events: Vec<Arc<NormalizedEvent>>,
    /// Whether a Parquet history holds rows back (their offsets wait for its flushes).
    keeps_history: bool,
    /// Sealed batches waiting for their acknowledgements, oldest first.
    unsettled: futures::stream::FuturesOrdered<Settling>,
    /// Next offset to read per partition, as far as durable outputs go.
    position: HashMap<(String, i32), i64>,
    /// Last offset per partition of settled batches not yet handed to a history
    /// flush: stored once the flush that follows has written their rows.
    unflushed: Vec<(String, i32, i64)>,
    /// The history flush in flight, with the offsets it makes durable.
    history_flush: Option<HistoryFlushing>,
    last_snapshot: Instant,
    /// When the open batch must be flushed, however many records it has.
    batch_deadline: Option<tokio::time::Instant>,
    snapshots: Option<SnapshotPolicy>,
    /// The cluster and group this process's snapshots are written for.
    origin: SnapshotOrigin,
    /// Whether a batch was sealed since the last snapshot.
    unsaved: bool,
    /// Event-time progress per partition, for watermark alignment.
    alignment: Alignment,
    /// When the statistics alignment last took the backlog from were written.
    backlog_seen: Option<Instant>,
}

impl RunState {
    /// Forgets partitions taken away in a rebalance: their records of the open
    /// batch will be read again by the next owner (outputs already written stay,
    /// as at-least-once allows), so they must not also reach the detectors here.
    /// Their last durable position stays: eager rebalancing revokes everything and
    /// usually hands the same partitions back, and the snapshot must still cover them.
    fn drop_partitions(&mut self, revoked: &[(String, i32)], engine: &mut Engine) {
        let gone = |topic: &str, partition: i32| {
            revoked.iter().any(|(t, p)| t == topic && *p == partition)
        };
        let before = self.batch.partitions.len();
        self.batch.partitions.retain(|(t, p, _)| !gone(t, *p));
        if self.batch.partitions.len() != before || !self.events.is_empty() {
            self.events.retain(|e| match &e.origin {
                Some(Origin::Kafka {
                    topic, partition, ..
                }) => !gone(topic, *partition),
                _ => true,
            });
        }
        if self.batch.partitions.is_empty() {
            self.batch.records = 0;
            self.received.clear();
            self.batch_deadline = None;
        }
        for (topic, partition) in revoked {
            engine.forget_source(topic, *partition);
            self.alignment.revoke(topic, *partition);
        }
    }
}

/// How often an idle consumer looks again at alignment while a backlog is not
/// known yet or a partition is paused.
const ALIGN_TICK: Duration = Duration::from_millis(250);
/// How long this process may sit in its group with no partition before it
/// leaves and joins again. One process reads a group's partitions (see
/// docs/scaling.md), so an empty assignment that lasts is a rebalance that
/// went wrong: a broker that dropped a dead member without starting a new
/// generation leaves the live one holding nothing (seen with tansu after a
/// kill -9 and an immediate restart).
const EMPTY_ASSIGNMENT_REJOIN: Duration = Duration::from_secs(60);
/// How often the consume loop looks for an empty assignment: the rebalance
/// callback that hands one over runs inside `recv`, which returns only with a
/// record, and a process with no partition receives none.
const EMPTY_ASSIGNMENT_CHECK: Duration = Duration::from_secs(5);
/// How long a start with snapshots waits for the brokers to tell their cluster id
/// (a snapshot of another cluster is not restored).
const CLUSTER_ID_WAIT: Duration = Duration::from_secs(10);

pub struct KafkaSource {
    consumer: StreamConsumer<GroupContext>,
    topic_names: Vec<String>,
    topics: TopicFormats,
    batch_max_records: usize,
    batch_linger: Duration,
    max_partition_lead_secs: u64,
    group_id: String,
    progress: Arc<SourceProgress>,
}

impl KafkaSource {
    pub fn new(settings: &KafkaSettings) -> Result<Self, SourceError> {
        let config = consumer_config(settings)?;
        let progress = Arc::new(SourceProgress {
            consumed: settings
                .topics
                .iter()
                .map(|t| TopicCounter {
                    topic: t.name.clone(),
                    format: t.format.as_str(),
                    records: Default::default(),
                })
                .collect(),
            ..SourceProgress::default()
        });
        let consumer: StreamConsumer<GroupContext> = config
            .create_with_context(GroupContext::new(progress.clone()))
            .map_err(|error| redacted(error, &config))?;
        let topics = TopicFormats(
            settings
                .topics
                .iter()
                .map(|t| {
                    let options = t.decode_options()?;
                    Ok::<_, SourceError>((t.name.clone(), (t.format, options)))
                })
                .collect::<Result<_, SourceError>>()?,
        );
        Ok(KafkaSource {
            consumer,
            topic_names: settings.topics.iter().map(|t| t.name.clone()).collect(),
            topics,
            batch_max_records: settings.batch_max_records,
            batch_linger: Duration::from_millis(settings.batch_linger_ms),
            max_partition_lead_secs: settings.max_partition_lead_secs,
            group_id: settings.group_id.clone(),
            progress,
        })
    }

    pub fn progress(&self) -> Arc<SourceProgress> {
        self.progress.clone()
    }

    /// Reads until `shutdown`, then seals the batch in hand, waits for every sealed
    /// batch to settle, flushes the history, and stores and commits the offsets. A
    /// sink failure stops the source without storing the failed batch's offsets or
    /// any later batch's, so a restart re-reads them.
    pub async fn run(
        &self,
        pipeline: &mut Pipeline,
        outputs: &mut Outputs,
        engine: &mut Engine,
        delivery: &mut Delivery,
        snapshots: Option<SnapshotPolicy>,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        let mut position: HashMap<(String, i32), i64> = HashMap::new();
        let mut origin = SnapshotOrigin {
            cluster_id: None,
            group_id: self.group_id.clone(),
        };
        if let Some(policy) = &snapshots {
            origin.cluster_id = self.cluster_id(CLUSTER_ID_WAIT);
            if let Some(snapshot) = state::read(&policy.path)? {
                self.restore(snapshot, &origin, pipeline, engine, &mut position)
                    .await?;
            }
        }
        self.subscribe()?;
        let mut run = RunState {
            batch: BatchOffsets::default(),
            received: Vec::new(),
            events: Vec::new(),
            keeps_history: outputs.history.is_some(),
            unsettled: Default::default(),
            position,
            unflushed: Vec::new(),
            history_flush: None,
            last_snapshot: Instant::now(),
            batch_deadline: None,
            snapshots: snapshots.clone(),
            origin,
            unsaved: false,
            alignment: Alignment::new(self.max_partition_lead_secs),
            backlog_seen: None,
        };
        let result = self
            .consume(pipeline, outputs, engine, delivery, &mut run, shutdown)
            .await;
        if result.is_ok()
            && let Some(policy) = &snapshots
        {
            let written = self
                .snapshot(policy, pipeline, outputs, engine, &mut run)
                .await?;
            if !written {
                tracing::warn!(
                    "stopped while no partition was held: the last snapshot stays, and a \
                     restart processes the records after its offsets again"
                );
            }
        }
        result
    }

    /// Tells the engine which partitions hold the watermark back (from librdkafka's
    /// latest word on their backlogs) and pauses or resumes partitions to keep
    /// those with a backlog within the lead of each other.
    fn align(&self, engine: &mut Engine, run: &mut RunState) {
        let now = Instant::now();
        let view = self.progress.client_view();
        if view.updated.is_some() && view.updated != run.backlog_seen {
            run.backlog_seen = view.updated;
            for (topic, partition, backlog) in &view.backlog {
                run.alignment.set_backlog(topic, *partition, *backlog);
            }
        }
        for (topic, partition, holds) in run.alignment.holding(now) {
            engine.set_backlog(topic, partition, holds);
        }
        let plan = run.alignment.plan(now);
        for (topic, partition) in &plan.pause {
            self.pause_or_resume(topic, *partition, true);
        }
        for (topic, partition) in &plan.resume {
            self.pause_or_resume(topic, *partition, false);
        }
        self.progress
            .paused_partitions
            .store(run.alignment.paused() as i64, Ordering::Relaxed);
    }

    fn pause_or_resume(&self, topic: &str, partition: i32, pause: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let result = if pause {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        match result {
            Ok(()) => tracing::debug!(topic, partition, pause, "watermark alignment"),
            // Revoked meanwhile: the next assignment starts it unpaused.
            Err(error) => tracing::debug!(%error, topic, partition, pause, "watermark alignment"),
        }
    }

    /// Stores offsets (the next owner or restart resumes after them) and notes the position.
    fn store_offsets(
        &self,
        offsets: impl IntoIterator<Item = (String, i32, i64)>,
        position: &mut HashMap<(String, i32), i64>,
    ) {
        for (topic, partition, offset) in offsets {
            // `store_offset` stores offset + 1, the next record to read.
            if let Err(error) = self.consumer.store_offset(&topic, partition, offset) {
                // The partition was revoked: its next owner re-reads these records.
                tracing::debug!(%error, topic, partition, "offset not stored");
            }
            position.insert((topic, partition), offset + 1);
        }
    }

    /// Hands the history's buffered rows to its writer thread without waiting; the
    /// offsets that waited for them are stored once the files are written
    /// ([`KafkaSource::history_written`]). One flush is in flight at a time.
    fn start_history_flush(
        &self,
        outputs: &mut Outputs,
        run: &mut RunState,
    ) -> Result<(), SourceError> {
        if run.history_flush.is_some() {
            return Ok(());
        }
        let Some(pending) = outputs.start_history_flush()? else {
            return Ok(());
        };
        // Every row of these settled batches went to the writer before this flush
        // (or before an earlier one, which the writer finished first).
        let offsets = std::mem::take(&mut run.unflushed);
        run.history_flush = Some(Box::pin(async move {
            let report = pending.written().await?;
            Ok((report, offsets))
        }));
        Ok(())
    }

    /// A history flush finished: the offsets that waited for it are stored.
    fn history_written(&self, written: HistoryWritten, run: &mut RunState) {
        let (report, offsets) = written;
        if report.files > 0 {
            tracing::debug!(
                files = report.files,
                events = report.events,
                alerts = report.alerts,
                bytes = report.bytes,
                "history files written"
            );
        }
        self.store_offsets(offsets, &mut run.position);
    }

    /// Writes every history row handed over so far and stores the offsets that
    /// waited for them; returns once they are durable.
    async fn flush_history(
        &self,
        outputs: &mut Outputs,
        run: &mut RunState,
    ) -> Result<(), SourceError> {
        // The flush in flight first, then one for whatever was buffered since.
        self.finish_history_flush(run).await?;
        self.start_history_flush(outputs, run)?;
        self.finish_history_flush(run).await
    }

    /// Waits for the history flush in flight, if any, and stores its offsets. The
    /// flush leaves its slot only once it is done, so none is forgotten half-way.
    async fn finish_history_flush(&self, run: &mut RunState) -> Result<(), SourceError> {
        if let Some(flush) = run.history_flush.as_mut() {
            let written = flush.await?;
            run.history_flush = None;
            self.history_written(written, run);
        }
        Ok(())
    }

    /// The Kafka cluster id, waiting at most `wait` for the brokers to tell it.
    fn cluster_id(&self, wait: Duration) -> Option<String> {
        let fetch = || self.consumer.client().fetch_cluster_id(wait);
        let id = if wait.is_zero() {
            fetch()
        } else {
            // librdkafka blocks for the metadata: keep the runtime's other tasks going.
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                    tokio::task::block_in_place(fetch)
                }
                _ => fetch(),
            }
        };
        if id.is_none() && !wait.is_zero() {
            tracing::warn!(
                wait_secs = wait.as_secs(),
                "the brokers did not tell their cluster id; a snapshot is checked against the group only"
            );
        }
        id
    }

    /// Restores detector and identity state and rewinds the group to the snapshot's
    /// offsets, unless the snapshot was taken for another cluster or group: then it
    /// is left alone (and replaced by this process's first snapshot).
    async fn restore(
        &self,
        snapshot: Snapshot,
        here: &SnapshotOrigin,
        pipeline: &mut Pipeline,
        engine: &mut Engine,
        position: &mut HashMap<(String, i32), i64>,
    ) -> Result<(), SourceError> {
        if let Some(reason) = snapshot
            .kafka
            .as_ref()
            .and_then(|taken| taken.differs_from(here))
        {
            tracing::warn!(
                %reason,
                "state snapshot ignored: its baselines and offsets are another deployment's; \
                 starting with empty state"
            );
            return Ok(());
        }
        let offsets = snapshot.offsets.len();
        engine.load(snapshot.engine).await?;
        pipeline
            .resolver_mut()
            .restore_issued(snapshot.issued_credentials);
        let mut resume = match self.consumer.context().resume.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        for (topic, partition, offset) in snapshot.offsets {
            if self.topic_names.contains(&topic) {
                // Assigned partitions resume exactly where the restored state ends.
                resume.insert((topic.clone(), partition), offset);
                position.insert((topic, partition), offset);
            }
        }
        tracing::info!(
            partitions = offsets,
            "state restored from snapshot; assigned partitions resume at its offsets"
        );
        Ok(())
    }

    /// Writes state consistent with the stored offsets: every sealed batch settles
    /// and the history is flushed first, so the engine has seen exactly the records
    /// before the snapshot's offsets and resuming there loses no history rows.
    ///
    /// Only partitions this process holds go in: a partition another member took
    /// has moved on there, and its old position would rewind it at this process's
    /// next start. In the middle of a rebalance (nothing held, positions known) no
    /// snapshot is written: one without those partitions would make a restart
    /// count their records since the group's last commit a second time. Returns
    /// whether it wrote one.
    async fn snapshot(
        &self,
        policy: &SnapshotPolicy,
        pipeline: &Pipeline,
        outputs: &mut Outputs,
        engine: &Engine,
        run: &mut RunState,
    ) -> Result<bool, SourceError> {
        self.settle_all(pipeline, run).await?;
        self.flush_history(outputs, run).await?;
        let held = self.consumer.assignment()?;
        let holds = |topic: &str, partition: i32| held.find_partition(topic, partition).is_some();
        if held.count() == 0 && !run.position.is_empty() {
            tracing::debug!("no partition held (rebalance under way): snapshot postponed");
            return Ok(false);
        }
        let mut offsets: Vec<(String, i32, i64)> = run
            .position
            .iter()
            .filter(|((t, p), _)| holds(t, *p))
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect();
        offsets.sort();
        if run.origin.cluster_id.is_none() {
            run.origin.cluster_id = self.cluster_id(Duration::ZERO);
        }
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            offsets,
            engine: engine.save().await?,
            issued_credentials: pipeline.resolver().issued(),
            kafka: Some(run.origin.clone()),
        };
        state::write(&policy.path, &snapshot)?;
        tracing::debug!(path = %policy.path.display(), "state snapshot written");
        Ok(true)
    }

    async fn consume(
        &self,
        pipeline: &mut Pipeline,
        outputs: &mut Outputs,
        engine: &mut Engine,
        delivery: &mut Delivery,
        run: &mut RunState,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        let warn = RateLimitedLog::new(Duration::from_secs(10));
        let mut events: Vec<NormalizedEvent> = Vec::with_capacity(64);
        loop {
            if run.history_flush.is_none() {
                // Settled offsets whose rows are all in finished flushes need an empty one.
                if outputs.history_due()
                    || (!run.unflushed.is_empty() && !outputs.history_buffered())
                {
                    self.start_history_flush(outputs, run)?;
                }
            } else if outputs.history_overdue() {
                // The writer is a whole flush behind: wait for it rather than buffer more.
                self.flush_history(outputs, run).await?;
            }
            let history_deadline = outputs
                .history_deadline()
                .filter(|_| run.batch.records == 0 && run.history_flush.is_none())
                .map(tokio::time::Instant::from_std);
            // While idle with unsaved state, a snapshot is taken when one falls due.
            let idle_snapshot = run
                .snapshots
                .as_ref()
                .filter(|_| run.unsaved && run.batch_deadline.is_none())
                .map(|p| p.interval.saturating_sub(run.last_snapshot.elapsed()));
            let batch_deadline = run.batch_deadline;
            let empty_since = self.consumer.context().empty_since();
            let rejoin_check = tokio::time::Instant::from_std(match empty_since {
                Some(since) => since + EMPTY_ASSIGNMENT_REJOIN,
                None => Instant::now() + EMPTY_ASSIGNMENT_CHECK,
            });
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => None,
                Some(sealed) = run.unsettled.next(), if !run.unsettled.is_empty() => {
                    self.settle(sealed?, pipeline, run);
                    continue;
                }
                written = history_flushed(&mut run.history_flush), if run.history_flush.is_some() => {
                    run.history_flush = None;
                    self.history_written(written?, run);
                    continue;
                }
                m = self.consumer.recv() => Some(m),
                // A partial batch is flushed when it has waited long enough.
                _ = tokio::time::sleep_until(batch_deadline.unwrap_or_else(tokio::time::Instant::now)), if batch_deadline.is_some() => {
                    self.seal_batch(pipeline, outputs, engine, delivery, run).await?;
                    continue;
                }
                _ = tokio::time::sleep(idle_snapshot.unwrap_or_default()), if idle_snapshot.is_some() => {
                    if let Some(policy) = run.snapshots.clone()
                        && self.snapshot(&policy, pipeline, outputs, engine, run).await?
                    {
                        run.unsaved = false;
                    }
                    // Postponed or written, the next try is an interval away.
                    run.last_snapshot = Instant::now();
                    continue;
                }
                _ = tokio::time::sleep(ALIGN_TICK), if run.alignment.unsettled() => {
                    self.align(engine, run);
                    continue;
                }
                _ = tokio::time::sleep_until(rejoin_check) => {
                    if self
                        .consumer
                        .context()
                        .empty_since()
                        .is_some_and(|since| since.elapsed() >= EMPTY_ASSIGNMENT_REJOIN)
                    {
                        self.rejoin()?;
                    }
                    continue;
                }
                // Idle with history rows buffered: write them when they fall due.
                _ = tokio::time::sleep_until(history_deadline.unwrap_or_else(tokio::time::Instant::now)), if history_deadline.is_some() => {
                    self.start_history_flush(outputs, run)?;
                    continue;
                }
            };
            // Rebalance callbacks run inside `recv`. A revocation seen now forgets the
            // open batch's records of the revoked partitions before the message just
            // received is noted: that message may already come from the new assignment
            // (the same partitions handed back), and dropping it would lose it, since the
            // consumer's position is past it.
            let revoked = self.consumer.context().take_revoked();
            if !revoked.is_empty() {
                run.drop_partitions(&revoked, engine);
            }
            let assigned = self.consumer.context().take_assigned();
            if !assigned.is_empty() {
                let now = Instant::now();
                for (topic, partition) in &assigned {
                    run.alignment.assign(topic, *partition, now);
                    // Held until librdkafka says whether records wait there.
                    engine.set_backlog(topic, *partition, true);
                }
            }
            let message = match next {
                None => break,
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    use rdkafka::types::RDKafkaErrorCode as C;
                    if matches!(
                        error.rdkafka_error_code(),
                        Some(
                            C::Fatal
                                | C::TopicAuthorizationFailed
                                | C::GroupAuthorizationFailed
                                | C::ClusterAuthorizationFailed
                                | C::SaslAuthenticationFailed
                        )
                    ) {
                        // Retrying cannot fix these: stop, so the operator sees it.
                        return Err(SourceError::Kafka(error));
                    }
                    if warn.admit("consumer_error").is_some() {
                        tracing::warn!(%error, "Kafka consumer error; librdkafka retries");
                    }
                    continue;
                }
            };
            let topic = message.topic();
            run.received.push(Instant::now());
            self.progress.count(topic);
            let (format, options) = self.topics.get(topic);
            let origin = Origin::Kafka {
                topic: topic.to_string(),
                partition: message.partition(),
                offset: message.offset(),
            };
            events.clear();
            match pipeline.process(
                format,
                options,
                message.payload().unwrap_or(&[]),
                origin,
                &mut events,
            ) {
                Ok(_) => {
                    let now = Instant::now();
                    for event in &events {
                        if run
                            .alignment
                            .note(topic, message.partition(), event.time, now)
                        {
                            self.pause_or_resume(topic, message.partition(), true);
                        }
                    }
                    run.events.extend(events.drain(..).map(Arc::new));
                }
                Err(letter) => outputs.dead_letter(&letter).await?,
            }
            if run.batch.records == 0 {
                run.batch_deadline = Some(tokio::time::Instant::now() + self.batch_linger);
            }
            run.batch.note(topic, message.partition(), message.offset());
            if run.batch.records >= self.batch_max_records {
                self.seal_batch(pipeline, outputs, engine, delivery, run)
                    .await?;
            }
        }
        self.seal_batch(pipeline, outputs, engine, delivery, run)
            .await?;
        self.settle_all(pipeline, run).await?;
        self.flush_history(outputs, run).await?;
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "final commit (nothing new to commit is fine)");
        }
        tracing::info!("Kafka source stopped; offsets committed");
        Ok(())
    }

    /// Joins the group on the input topics.
    fn subscribe(&self) -> Result<(), SourceError> {
        let names: Vec<&str> = self.topic_names.iter().map(String::as_str).collect();
        self.consumer.subscribe(&names)?;
        Ok(())
    }

    /// Leaves the group and joins it again, for a new generation and a new assignment.
    fn rejoin(&self) -> Result<(), SourceError> {
        tracing::warn!(
            after_secs = EMPTY_ASSIGNMENT_REJOIN.as_secs(),
            "the group has given this process no partition; leaving and joining it again"
        );
        self.consumer.context().set_empty_since(None);
        self.consumer.unsubscribe();
        self.subscribe()?;
        self.progress.rejoins.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A batch's outputs are acknowledged: its offsets are stored, or wait for the
    /// history flush that makes its rows durable. Its records' processing latency
    /// (`received → processed`) ends here, acknowledgements included.
    fn settle(&self, sealed: Sealed, pipeline: &Pipeline, run: &mut RunState) {
        pipeline
            .stats()
            .processing_latency
            .record_all(sealed.received.iter().map(|t| t.elapsed()));
        if run.keeps_history {
            for (topic, partition, offset) in &sealed.offsets {
                note_offset(&mut run.unflushed, topic, *partition, *offset);
            }
        } else {
            self.store_offsets(sealed.offsets, &mut run.position);
        }
        self.progress
            .batches_committed
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Waits for every sealed batch to settle, in order.
    async fn settle_all(&self, pipeline: &Pipeline, run: &mut RunState) -> Result<(), SourceError> {
        while let Some(sealed) = run.unsettled.next().await {
            self.settle(sealed?, pipeline, run);
        }
        Ok(())
    }

    /// Runs the batch's events through the detectors, writes every output and
    /// seals the batch (its offsets are stored when it settles), and snapshots
    /// state when one is due.
    async fn seal_batch(
        &self,
        pipeline: &Pipeline,
        outputs: &mut Outputs,
        engine: &mut Engine,
        delivery: &mut Delivery,
        run: &mut RunState,
    ) -> Result<(), SourceError> {
        if run.batch.records == 0 {
            return Ok(());
        }
        self.align(engine, run);
        let registry = pipeline.registry();
        let processed = engine.process_flagged(&run.events, &registry).await?;
        let mut alerts = processed.alerts;
        // Alerts reach the alerts topic and file before the batch's enriched events
        // are written (paging sinks still wait for the outbox sync below).
        for alert in &mut alerts {
            // The router groups repeats and records the kill-switch action before the
            // alert is written anywhere, so every copy says the same.
            delivery.submit(alert)?;
            outputs.alert(alert).await?;
            pipeline.stats().alert(alert);
        }
        outputs
            .events(&run.events, &processed.flags, &registry)
            .await?;
        run.events.clear();
        let unconfirmed = outputs.seal()?;
        // Alerts that page are durable in the outbox before their input offsets move.
        delivery.sync()?;
        let sealed = Sealed {
            offsets: run.batch.partitions.drain(..).collect(),
            received: std::mem::take(&mut run.received),
        };
        run.unsettled.push_back(settling(unconfirmed, sealed));
        run.batch.records = 0;
        run.batch_deadline = None;
        while run.unsettled.len() > MAX_UNSETTLED_BATCHES {
            if let Some(sealed) = run.unsettled.next().await {
                self.settle(sealed?, pipeline, run);
            }
        }
        run.unsaved = true;
        if let Some(policy) = run.snapshots.clone()
            && run.last_snapshot.elapsed() >= policy.interval
        {
            if self
                .snapshot(&policy, pipeline, outputs, engine, run)
                .await?
            {
                run.unsaved = false;
            }
            run.last_snapshot = Instant::now();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(secret_file: &std::path::Path, property: &str) -> KafkaSettings {
        let text = format!(
            "brokers = \"127.0.0.1:9\"\ngroup_id = \"g\"\ntopics = []\n\
             [secret_properties]\n\"{property}\" = {{ file = \"{}\" }}\n",
            secret_file.display()
        );
        toml::from_str(&text).expect("kafka settings")
    }

    #[test]
    fn a_refused_secret_property_is_redacted_from_the_error() {
        let secret = "Kafka-Secret-5772156";
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("pw");
        std::fs::write(&file, secret).expect("secret file");
        // A misspelled name (librdkafka names it and its value), and a value
        // librdkafka quotes in its own description.
        for property in ["sasl.pasword", "security.protocol"] {
            let settings = settings(&file, property);
            let config = consumer_config(&settings).expect("resolves");
            let checked = check_config(&config).expect_err("refused").to_string();
            assert!(checked.contains(property), "{checked}");
            assert!(!checked.contains(secret), "{checked}");
            let built = KafkaSource::new(&settings)
                .err()
                .expect("refused")
                .to_string();
            assert!(built.contains(property), "{built}");
            assert!(!built.contains(secret), "{built}");
            let producer = crate::sinks::KafkaTopicWriter::new(
                &client_config(&settings).expect("resolves"),
                &Default::default(),
                "t",
                1024,
            )
            .err()
            .expect("refused")
            .to_string();
            assert!(!producer.contains(secret), "{producer}");
        }
    }

    /// A consumer of `group` on `brokers` with this module's context.
    fn group_member(brokers: &str, group: &str, strategy: &str) -> BaseConsumer<GroupContext> {
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("partition.assignment.strategy", strategy)
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "200")
            .create_with_context(GroupContext::new(Arc::new(SourceProgress::default())))
            .expect("consumer")
    }

    fn held(consumer: &BaseConsumer<GroupContext>) -> usize {
        consumer.assignment().map(|a| a.count()).unwrap_or(0)
    }

    fn counted(consumer: &BaseConsumer<GroupContext>) -> i64 {
        consumer
            .context()
            .progress
            .assigned_partitions
            .load(Ordering::Relaxed)
    }

    #[test]
    fn a_rebalance_error_gives_up_every_partition_and_says_so() {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("in", 2, 1).expect("topic");
        let consumer = group_member(&cluster.bootstrap_servers(), "g-error", "range");
        let mut held_before = TopicPartitionList::new();
        held_before.add_partition("in", 0);
        held_before.add_partition("in", 1);
        consumer.assign(&held_before).expect("assign");
        consumer
            .context()
            .progress
            .assigned_partitions
            .store(2, Ordering::Relaxed);

        let mut concerned = TopicPartitionList::new();
        consumer.context().rebalance(
            &consumer,
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR__FAIL,
            &mut concerned,
        );
        assert_eq!(
            held(&consumer),
            0,
            "the consumer holds nothing after the error"
        );
        assert_eq!(counted(&consumer), 0, "and readiness sees no partition");
        let mut revoked = consumer.context().take_revoked();
        revoked.sort();
        assert_eq!(
            revoked,
            vec![("in".to_string(), 0), ("in".to_string(), 1)],
            "the consume loop forgets the open batch's records of both"
        );
        assert!(consumer.context().empty_since().is_some());
    }

    #[test]
    fn a_cooperative_rebalance_counts_the_partitions_each_member_keeps() {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("in", 4, 1).expect("topic");
        let brokers = cluster.bootstrap_servers();
        let first = group_member(&brokers, "g-coop", "cooperative-sticky");
        first.subscribe(&["in"]).expect("subscribe");
        let settle = |members: &[&BaseConsumer<GroupContext>], want: &dyn Fn(&[usize]) -> bool| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                for member in members {
                    let _ = member.poll(Duration::from_millis(50));
                }
                let holding: Vec<usize> = members.iter().map(|m| held(m)).collect();
                if want(&holding) {
                    return holding;
                }
            }
            panic!("the group did not settle in 30 s");
        };
        settle(&[&first], &|h| h == [4]);
        assert_eq!(counted(&first), 4);

        // A second member takes half: the first is revoked two and keeps two,
        // and no step of the cooperative protocol hands it its whole list again.
        let second = group_member(&brokers, "g-coop", "cooperative-sticky");
        second.subscribe(&["in"]).expect("subscribe");
        let holding = settle(&[&first, &second], &|h| {
            h[0] > 0 && h[1] > 0 && h[0] + h[1] == 4
        });
        // A few more polls: the counters follow the last step of the rebalance.
        for _ in 0..10 {
            let _ = first.poll(Duration::from_millis(20));
            let _ = second.poll(Duration::from_millis(20));
        }
        assert_eq!(
            counted(&first),
            held(&first) as i64,
            "first holds {holding:?}"
        );
        assert_eq!(
            counted(&second),
            held(&second) as i64,
            "second holds {holding:?}"
        );
        assert!(first.context().empty_since().is_none());
    }
}
