//! Sinks: where resolved events and dead letters go (Kafka topics, NDJSON files).
//!
//! [`Outputs`] groups the configured sinks. Sources call [`Outputs::commit`]
//! before they store input offsets: it returns only once every record written
//! since the last commit is durable (acknowledged by the broker, or flushed).

pub mod kafka;
pub mod ndjson;

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::DeliveryFuture;

use crate::detect::Alert;
use crate::event::NormalizedEvent;
use crate::pipeline::DeadLetter;
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

/// The configured outputs for events and dead letters.
#[derive(Default)]
pub struct Outputs {
    pub events_topic: Option<KafkaTopicWriter>,
    pub events_file: Option<NdjsonWriter>,
    pub dead_letter_topic: Option<KafkaTopicWriter>,
    pub dead_letter_file: Option<NdjsonWriter>,
    pub alerts_topic: Option<KafkaTopicWriter>,
    pub alerts_file: Option<NdjsonWriter>,
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

    pub async fn event(&mut self, event: &NormalizedEvent) -> Result<(), SinkError> {
        if let Some(file) = &mut self.events_file {
            file.write(event)?;
        }
        if let Some(topic) = &self.events_topic {
            self.buffer.clear();
            serde_json::to_writer(&mut self.buffer, event)
                .map_err(|e| SinkError::io(topic.topic(), std::io::Error::other(e)))?;
            let key = event
                .identity
                .as_ref()
                .map_or("anonymous", |i| i.key.as_str());
            let delivery = topic.send(key, &self.buffer).await?;
            self.pending_events.push(delivery);
        }
        Ok(())
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
        if let Some(file) = &mut self.events_file {
            file.flush()?;
        }
        if let Some(file) = &mut self.dead_letter_file {
            file.flush()?;
        }
        if let Some(file) = &mut self.alerts_file {
            file.flush()?;
        }
        if let Some(topic) = &self.alerts_topic {
            topic
                .confirm(std::mem::take(&mut self.pending_alerts))
                .await?;
        }
        if let Some(topic) = &self.events_topic {
            topic
                .confirm(std::mem::take(&mut self.pending_events))
                .await?;
        }
        if let Some(topic) = &self.dead_letter_topic {
            topic
                .confirm(std::mem::take(&mut self.pending_dead_letters))
                .await?;
        }
        Ok(())
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
