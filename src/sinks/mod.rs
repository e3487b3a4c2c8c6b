//! Sinks: where enriched events, alerts and dead letters go (Kafka topics, NDJSON files, history).
//!
//! [`Outputs`] groups the configured sinks. Sources call [`Outputs::commit`]
//! (or [`Outputs::seal`], then await [`Unconfirmed::confirmed`]) before they
//! store input offsets: it returns only once every record written since the
//! last seal is durable (acknowledged by the broker, or flushed).
//! The Parquet history buffers longer: sources also wait for its flush
//! ([`Outputs::flush_history`], or [`Outputs::start_history_flush`] and then
//! [`PendingFlush::written`]) before they store the offsets of its rows.

pub mod enriched;
pub mod kafka;
pub mod ndjson;

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::DeliveryFuture;

use std::sync::Arc;

use crate::detect::{Alert, Flag};
use crate::event::NormalizedEvent;
use crate::history::{FlushReport, HistoryError, HistoryWriter, PendingFlush};
use crate::identity::Registry;
use crate::pipeline::DeadLetter;
pub use enriched::EnrichedEvent;
pub use kafka::KafkaTopicWriter;
pub use ndjson::NdjsonWriter;

/// A sink failure. All are worth retrying from the last stored offset, which a
/// restart does: the source stops without storing the batch's offsets.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing {target}: {source}")]
    Io {
        target: String,
        source: std::io::Error,
    },
    #[error("producing to Kafka topic {topic}: {source}")]
    Kafka { topic: String, source: KafkaError },
    #[error(transparent)]
    History(#[from] HistoryError),
}

impl SinkError {
    pub fn io(target: &str, source: std::io::Error) -> Self {
        SinkError::Io {
            target: target.to_string(),
            source,
        }
    }

    pub fn kafka(topic: &str, source: KafkaError) -> Self {
        SinkError::Kafka {
            topic: topic.to_string(),
            source,
        }
    }
}

/// Kafka records written by one [`Outputs::seal`] and not yet acknowledged.
#[must_use = "a batch is durable only once `confirmed` returns Ok"]
pub struct Unconfirmed {
    topics: Vec<(String, Vec<DeliveryFuture>)>,
}

impl Unconfirmed {
    /// Returns once every record is acknowledged; a failed delivery fails the whole batch.
    pub async fn confirmed(self) -> Result<(), SinkError> {
        for (topic, deliveries) in self.topics {
            kafka::confirm(&topic, deliveries).await?;
        }
        Ok(())
    }
}

/// The configured outputs for events and dead letters.
#[derive(Default)]
pub struct Outputs {
    pub events_topic: Option<KafkaTopicWriter>,
    pub events_file: Option<NdjsonWriter>,
    pub dead_letter_topic: Option<KafkaTopicWriter>,
    pub dead_letter_file: Option<NdjsonWriter>,
    pub alerts_topic: Option<KafkaTopicWriter>,
    pub alerts_file: Option<NdjsonWriter>,
    pub history: Option<HistoryWriter>,
    pending_events: Vec<DeliveryFuture>,
    pending_alerts: Vec<DeliveryFuture>,
    pending_dead_letters: Vec<DeliveryFuture>,
    buffer: Vec<u8>,
}

impl Outputs {
    /// Whether dead letters have somewhere to go (they must never be dropped).
    pub fn has_dead_letter_sink(&self) -> bool {
        self.dead_letter_topic.is_some() || self.dead_letter_file.is_some()
    }

    /// Writes a processed batch's events, enriched with their app and the
    /// findings the engine reported for them (`flags`, by index in `events`).
    pub async fn events(
        &mut self,
        events: &[Arc<NormalizedEvent>],
        flags: &[(usize, Flag)],
        registry: &Registry,
    ) -> Result<(), SinkError> {
        if self.events_file.is_some() || self.events_topic.is_some() {
            // `flags` is sorted by event index: walk it alongside the events.
            let mut next_flag = 0;
            for (index, event) in events.iter().enumerate() {
                let start = next_flag;
                while flags.get(next_flag).is_some_and(|(i, _)| *i == index) {
                    next_flag += 1;
                }
                let own: Vec<Flag> = flags[start..next_flag]
                    .iter()
                    .map(|(_, f)| f.clone())
                    .collect();
                let app = event
                    .identity
                    .as_ref()
                    .and_then(|i| i.app_id.as_deref())
                    .and_then(|id| registry.app(id))
                    .map(|a| a.as_ref());
                let record = EnrichedEvent::new(event, app, &own);
                if let Some(file) = &mut self.events_file {
                    file.write(&record)?;
                }
                if let Some(topic) = &self.events_topic {
                    self.buffer.clear();
                    serde_json::to_writer(&mut self.buffer, &record)
                        .map_err(|e| SinkError::io(topic.topic(), std::io::Error::other(e)))?;
                    let delivery = topic.send(EnrichedEvent::key(event), &self.buffer).await?;
                    self.pending_events.push(delivery);
                }
            }
        }
        if let Some(history) = &mut self.history {
            history.events(crate::history::event_rows(events, flags))?;
        }
        Ok(())
    }

    /// Whether the history has rows waiting to be written, and when they fall due by time.
    pub fn history_deadline(&self) -> Option<std::time::Instant> {
        self.history.as_ref().and_then(HistoryWriter::deadline)
    }

    /// Whether the history's buffered rows are due (by count or age).
    pub fn history_due(&self) -> bool {
        self.history.as_ref().is_some_and(HistoryWriter::due)
    }

    /// Whether twice the rows that make a flush due are buffered (the writer is behind).
    pub fn history_overdue(&self) -> bool {
        self.history.as_ref().is_some_and(HistoryWriter::overdue)
    }

    /// Whether the history holds rows not yet handed to a flush.
    pub fn history_buffered(&self) -> bool {
        self.history.as_ref().is_some_and(HistoryWriter::pending)
    }

    /// Hands the history's buffered rows to its writer thread; `None` without a history.
    pub fn start_history_flush(&mut self) -> Result<Option<PendingFlush>, SinkError> {
        match &mut self.history {
            Some(history) => Ok(Some(history.start_flush()?)),
            None => Ok(None),
        }
    }

    /// Writes the history's buffered rows as files; returns once they are durable.
    pub async fn flush_history(&mut self) -> Result<FlushReport, SinkError> {
        match &mut self.history {
            Some(history) => Ok(history.flush().await?),
            None => Ok(FlushReport::default()),
        }
    }

    pub async fn dead_letter(&mut self, letter: &DeadLetter) -> Result<(), SinkError> {
        if let Some(file) = &mut self.dead_letter_file {
            file.write(letter)?;
        }
        if let Some(topic) = &self.dead_letter_topic {
            self.buffer.clear();
            serde_json::to_writer(&mut self.buffer, letter)
                .map_err(|e| SinkError::io(topic.topic(), std::io::Error::other(e)))?;
            let delivery = topic.send(letter.key(), &self.buffer).await?;
            self.pending_dead_letters.push(delivery);
        }
        Ok(())
    }

    pub async fn alert(&mut self, alert: &Alert) -> Result<(), SinkError> {
        if let Some(file) = &mut self.alerts_file {
            file.write(alert)?;
        }
        if let Some(history) = &mut self.history {
            history.alerts(std::slice::from_ref(alert))?;
        }
        if let Some(topic) = &self.alerts_topic {
            self.buffer.clear();
            serde_json::to_writer(&mut self.buffer, alert)
                .map_err(|e| SinkError::io(topic.topic(), std::io::Error::other(e)))?;
            let delivery = topic.send(&alert.identity, &self.buffer).await?;
            self.pending_alerts.push(delivery);
        }
        Ok(())
    }

    /// Makes everything written so far durable.
    pub async fn commit(&mut self) -> Result<(), SinkError> {
        self.seal()?.confirmed().await
    }

    /// Flushes the files and hands over the Kafka deliveries still in flight, so
    /// the caller can go on with the next batch while they are acknowledged.
    pub fn seal(&mut self) -> Result<Unconfirmed, SinkError> {
        for file in [
            &mut self.events_file,
            &mut self.dead_letter_file,
            &mut self.alerts_file,
        ]
        .into_iter()
        .flatten()
        {
            file.flush()?;
        }
        let mut topics = Vec::new();
        for (topic, pending) in [
            (&self.alerts_topic, &mut self.pending_alerts),
            (&self.events_topic, &mut self.pending_events),
            (&self.dead_letter_topic, &mut self.pending_dead_letters),
        ] {
            if let Some(topic) = topic
                && !pending.is_empty()
            {
                topics.push((topic.topic().to_string(), std::mem::take(pending)));
            }
        }
        Ok(Unconfirmed { topics })
    }

    /// Flushes producer queues at shutdown.
    pub fn close(&mut self, timeout: Duration) {
        let topics = [
            &self.events_topic,
            &self.dead_letter_topic,
            &self.alerts_topic,
        ];
        for topic in topics.into_iter().flatten() {
            if let Err(error) = topic.flush(timeout) {
                tracing::warn!(%error, "flushing producer at shutdown");
            }
        }
    }
}
