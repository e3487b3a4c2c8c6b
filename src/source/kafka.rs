//! Kafka source: one consumer group over the input topics, at-least-once, in order per partition.
//!
//! Records are processed in batches. A batch's input offsets are stored only
//! after [`Outputs::commit`] has made every output of the batch durable;
//! librdkafka then commits stored offsets periodically, on partition
//! revocation (see [`GroupContext`]) and at shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio_util::sync::CancellationToken;

use crate::decode::{DecodeOptions, Format};
use crate::event::{NormalizedEvent, Origin};
use crate::pipeline::Pipeline;
use crate::settings::{KafkaSettings, SecretError};
use crate::sinks::{Outputs, SinkError};
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

/// What the consumer is doing, for summaries and readiness.
#[derive(Debug, Default)]
pub struct SourceProgress {
    /// Partitions currently assigned to this process.
    pub assigned_partitions: AtomicI64,
    /// Set once the group has assigned partitions at least once.
    pub ever_assigned: AtomicBool,
    /// Batches whose offsets were stored.
    pub batches_committed: AtomicI64,
}

/// Logs rebalances and commits stored offsets before partitions are taken away,
/// so the next owner starts exactly after what this process finished.
pub struct GroupContext {
    progress: Arc<SourceProgress>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
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
            self.progress
                .assigned_partitions
                .store(0, Ordering::Relaxed);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = partitions.count(), "partitions assigned");
                self.progress
                    .assigned_partitions
                    .store(partitions.count() as i64, Ordering::Relaxed);
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
        match self
            .partitions
            .iter_mut()
            .find(|(t, p, _)| *p == partition && t == topic)
        {
            Some(entry) => entry.2 = offset,
            None => self.partitions.push((topic.to_string(), partition, offset)),
        }
    }
}

pub struct KafkaSource {
    consumer: StreamConsumer<GroupContext>,
    topics: TopicFormats,
    batch_max_records: usize,
    batch_linger: Duration,
    progress: Arc<SourceProgress>,
}

impl KafkaSource {
    pub fn new(settings: &KafkaSettings) -> Result<Self, SourceError> {
        let mut config = client_config(settings)?;
        config
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // A new group must see the records already waiting, not only new ones.
            .set("auto.offset.reset", "earliest");
        for (key, value) in &settings.consumer_properties {
            config.set(key, value);
        }
        let progress = Arc::new(SourceProgress::default());
        let consumer: StreamConsumer<GroupContext> = config.create_with_context(GroupContext {
            progress: progress.clone(),
        })?;
        let names: Vec<&str> = settings.topics.iter().map(|t| t.name.as_str()).collect();
        consumer.subscribe(&names)?;
        let topics = TopicFormats(
            settings
                .topics
                .iter()
                .map(|t| {
                    let options = DecodeOptions {
                        mapping: t.mapping.clone(),
                    };
                    (t.name.clone(), (t.format, options))
                })
                .collect(),
        );
        Ok(KafkaSource {
            consumer,
            topics,
            batch_max_records: settings.batch_max_records,
            batch_linger: Duration::from_millis(settings.batch_linger_ms),
            progress,
        })
    }

    pub fn progress(&self) -> Arc<SourceProgress> {
        self.progress.clone()
    }

    /// Reads until `shutdown`, then finishes the batch in hand, stores and
    /// commits its offsets. A sink failure stops the source without storing the
    /// failed batch's offsets, so a restart re-reads it.
    pub async fn run(
        &self,
        pipeline: &mut Pipeline,
        outputs: &mut Outputs,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        let warn = RateLimitedLog::new(Duration::from_secs(10));
        let mut batch = BatchOffsets::default();
        let mut events: Vec<NormalizedEvent> = Vec::with_capacity(64);
        loop {
            let next = if batch.records == 0 {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => None,
                    m = self.consumer.recv() => Some(m),
                }
            } else {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => None,
                    m = self.consumer.recv() => Some(m),
                    _ = tokio::time::sleep(self.batch_linger) => {
                        self.commit_batch(outputs, &mut batch).await?;
                        continue;
                    }
                }
            };
            let message = match next {
                None => break,
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    if warn.admit("consumer_error").is_some() {
                        tracing::warn!(%error, "Kafka consumer error; librdkafka retries");
                    }
                    continue;
                }
            };
            let topic = message.topic();
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
                    for event in &events {
                        outputs.event(event).await?;
                    }
                }
                Err(letter) => outputs.dead_letter(&letter).await?,
            }
            batch.note(topic, message.partition(), message.offset());
            if batch.records >= self.batch_max_records {
                self.commit_batch(outputs, &mut batch).await?;
            }
        }
        self.commit_batch(outputs, &mut batch).await?;
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "final commit (nothing new to commit is fine)");
        }
        tracing::info!("Kafka source stopped; offsets committed");
        Ok(())
    }

    async fn commit_batch(
        &self,
        outputs: &mut Outputs,
        batch: &mut BatchOffsets,
    ) -> Result<(), SourceError> {
        if batch.records == 0 {
            return Ok(());
        }
        outputs.commit().await?;
        for (topic, partition, offset) in batch.partitions.drain(..) {
            // `store_offset` stores offset + 1, the next record to read.
            if let Err(error) = self.consumer.store_offset(&topic, partition, offset) {
                // The partition was revoked mid-batch: its next owner re-reads these records.
                tracing::debug!(%error, topic, partition, "offset not stored");
            }
        }
        batch.records = 0;
        self.progress
            .batches_committed
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
