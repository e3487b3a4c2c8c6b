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
pub mod fit;
pub mod kafka;
pub mod ndjson;

use std::borrow::Cow;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::DeliveryFuture;

use std::sync::Arc;

use crate::detect::{Alert, Flag};
use crate::event::NormalizedEvent;
use crate::history::{FlushReport, HistoryError, HistoryWriter, PendingFlush};
use crate::identity::Registry;
use crate::pipeline::DeadLetter;
use crate::telemetry::{EVENT_TOO_LARGE, RateLimitedLog, Stats};
pub use enriched::EnrichedEvent;
pub use kafka::KafkaTopicWriter;
pub use ndjson::NdjsonWriter;

/// A sink failure. All but `TooLarge` are worth retrying from the last stored
/// offset, which a restart does: the source stops without storing the batch's
/// offsets. `TooLarge` is a record that was not fitted to its topic first (a bug:
/// see [`fit`]).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing {target}: {source}")]
    Io {
        target: String,
        source: std::io::Error,
    },
    #[error("producing to Kafka topic {topic}: {source}")]
    Kafka { topic: String, source: KafkaError },
    /// A record over the topic's message size, refused before it was produced.
    #[error(
        "producing to Kafka topic {topic}: a record of {bytes} bytes is over the {limit} bytes it can hold"
    )]
    TooLarge {
        topic: String,
        bytes: usize,
        limit: usize,
    },
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
    /// Counts outputs fitted to their topic, and the dead letters of those that cannot fit.
    stats: Arc<Stats>,
    /// `dead_letter.max_payload_bytes`, for the dead letter of an event that cannot fit.
    max_dead_letter_payload: usize,
    warn: RateLimitedLog,
}

impl Default for Outputs {
    fn default() -> Self {
        Outputs::new(Arc::default(), 256 * 1024)
    }
}

impl Outputs {
    /// No outputs yet; `stats` counts what had to be fitted to a topic, and the
    /// dead letter of an event that cannot fit keeps `max_dead_letter_payload` bytes of its record.
    pub fn new(stats: Arc<Stats>, max_dead_letter_payload: usize) -> Self {
        Outputs {
            events_topic: None,
            events_file: None,
            dead_letter_topic: None,
            dead_letter_file: None,
            alerts_topic: None,
            alerts_file: None,
            history: None,
            pending_events: Vec::new(),
            pending_alerts: Vec::new(),
            pending_dead_letters: Vec::new(),
            buffer: Vec::new(),
            stats,
            max_dead_letter_payload,
            warn: RateLimitedLog::new(Duration::from_secs(10)),
        }
    }

    /// Counts (and logs, rate-limited) an output fitted to its topic.
    fn oversized(&self, output: &'static str, action: &'static str, topic: &str, bytes: usize) {
        self.stats.oversized_output(output, action);
        if let Some(suppressed) = self.warn.admit(action) {
            tracing::warn!(
                output,
                action,
                topic,
                bytes,
                suppressed_since_last = suppressed,
                "output too large for its Kafka topic"
            );
        }
    }

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
                let mut record = EnrichedEvent::new(event, app, &own);
                if let Some(file) = &mut self.events_file {
                    file.write(&record)?;
                }
                let mut too_large = None;
                if let Some(topic) = &self.events_topic {
                    let json = |e| SinkError::io(topic.topic(), std::io::Error::other(e));
                    let key = fit::key(EnrichedEvent::key(event));
                    if matches!(key, Cow::Owned(_)) {
                        self.oversized("events", "key_hashed", topic.topic(), key.len());
                    }
                    self.buffer.clear();
                    serde_json::to_writer(&mut self.buffer, &record).map_err(json)?;
                    let whole = self.buffer.len();
                    let limit = topic.max_payload(&key);
                    match fit::enriched(&mut record, &mut self.buffer, limit).map_err(json)? {
                        fit::Fitted::Whole => {}
                        fit::Fitted::Cut => {
                            self.oversized("events", "truncated", topic.topic(), whole);
                        }
                        fit::Fitted::TooLarge => {
                            self.oversized("events", "dead_lettered", topic.topic(), whole);
                            too_large = Some(format!(
                                "the enriched event is {whole} bytes, over the {limit} bytes \
                                 topic {} holds, even with its raw_data cut",
                                topic.topic()
                            ));
                        }
                    }
                    if too_large.is_none() {
                        let delivery = topic.send(&key, &self.buffer).await?;
                        self.pending_events.push(delivery);
                    }
                }
                if let Some(error) = too_large {
                    let letter = self.too_large_letter(event, error);
                    self.stats.dead_letter(EVENT_TOO_LARGE);
                    self.dead_letter(&letter).await?;
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
            let json = |e| SinkError::io(topic.topic(), std::io::Error::other(e));
            let key = fit::key(&alert.identity);
            if matches!(key, Cow::Owned(_)) {
                self.oversized("alerts", "key_hashed", topic.topic(), key.len());
            }
            self.buffer.clear();
            serde_json::to_writer(&mut self.buffer, alert).map_err(json)?;
            let whole = self.buffer.len();
            match fit::object(&mut self.buffer, topic.max_payload(&key)).map_err(json)? {
                fit::Fitted::Whole => {}
                fit::Fitted::Cut => self.oversized("alerts", "truncated", topic.topic(), whole),
                fit::Fitted::TooLarge => {
                    // The alert still reaches the outbox, its file and the history.
                    self.oversized("alerts", "dropped", topic.topic(), whole);
                    return Ok(());
                }
            }
            let delivery = topic.send(&key, &self.buffer).await?;
            self.pending_alerts.push(delivery);
        }
        Ok(())
    }

    /// The dead letter of an event too large for the enriched topic: its vendor
    /// record (a prefix and hash if long), at the coordinates it came from.
    fn too_large_letter(&self, event: &NormalizedEvent, error: String) -> DeadLetter {
        let format = crate::decode::Format::ALL
            .into_iter()
            .find(|f| f.product() == Some(event.product))
            .unwrap_or(crate::decode::Format::Auto);
        // Every event from a source has its origin; the fallback only names none.
        let origin = event.origin.clone().unwrap_or(crate::event::Origin::File {
            path: String::new(),
            line: 0,
        });
        let record = event.raw_data.as_deref().unwrap_or_default();
        DeadLetter::with_reason(
            EVENT_TOO_LARGE,
            error,
            format,
            origin,
            record.as_bytes(),
            self.max_dead_letter_payload,
        )
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
