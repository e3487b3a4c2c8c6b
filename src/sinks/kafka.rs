//! Kafka topic sink: JSON records produced with librdkafka, delivery confirmed before offsets move.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::SinkError;

/// A producer's librdkafka configuration, as `run` builds it: `base` (the
/// connection and security properties shared with the consumer), the defaults
/// below, then `overrides` (`kafka.producer_properties`).
pub fn producer_config(
    base: &ClientConfig,
    overrides: &BTreeMap<String, String>,
    max_message_bytes: usize,
) -> ClientConfig {
    let mut config = base.clone();
    let defaults = [
        ("enable.idempotence", "true"),
        // lz4 costs a fraction of zstd's CPU per produce request (librdkafka
        // builds a fresh zstd context for each one); zstd stays one override away.
        ("compression.type", "lz4"),
        // A batch's input offsets move once its records are acknowledged; a short
        // linger keeps that wait short while later batches are already processed.
        ("linger.ms", "2"),
    ];
    for (key, value) in defaults {
        // `kafka.properties` may have set it already; `producer_properties` win below.
        if config.get(key).is_none() {
            config.set(key, value);
        }
    }
    config.set(
        "message.max.bytes",
        (max_message_bytes + 64 * 1024).to_string(),
    );
    for (key, value) in overrides {
        config.set(key, value);
    }
    config
}

/// Produces to one topic; the caller awaits the returned deliveries.
pub struct KafkaTopicWriter {
    producer: FutureProducer,
    topic: String,
}

impl KafkaTopicWriter {
    /// `config` carries the connection and security properties shared with the consumer;
    /// `overrides` (`kafka.producer_properties`) win over the defaults set here.
    pub fn new(
        config: &ClientConfig,
        overrides: &BTreeMap<String, String>,
        topic: &str,
        max_message_bytes: usize,
    ) -> Result<Self, SinkError> {
        let config = producer_config(config, overrides, max_message_bytes);
        let producer: FutureProducer = config
            .create()
            .map_err(|e| SinkError::kafka(topic, crate::source::kafka::redacted(e, &config)))?;
        Ok(KafkaTopicWriter {
            producer,
            topic: topic.to_string(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Enqueues one record; waits (without blocking the runtime) while the local queue is full.
    pub async fn send(&self, key: &str, payload: &[u8]) -> Result<DeliveryFuture, SinkError> {
        loop {
            let record = FutureRecord::to(&self.topic).key(key).payload(payload);
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(SinkError::kafka(&self.topic, error)),
            }
        }
    }

    /// Flushes librdkafka's queue (at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        self.producer
            .flush(timeout)
            .map_err(|e| SinkError::kafka(&self.topic, e))
    }
}

/// Waits for every delivery to `topic`; a failed one fails the batch (so its offsets are not stored).
pub async fn confirm(topic: &str, deliveries: Vec<DeliveryFuture>) -> Result<(), SinkError> {
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(SinkError::kafka(topic, error)),
            Err(_) => return Err(SinkError::kafka(topic, KafkaError::Canceled)),
        }
    }
    Ok(())
}
