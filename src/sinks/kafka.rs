//! Kafka topic sink: JSON records produced with librdkafka, delivery confirmed before offsets move.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::SinkError;

/// Produces to one topic; the caller awaits the returned deliveries.
pub struct KafkaTopicWriter {
    producer: FutureProducer,
    topic: String,
}

impl KafkaTopicWriter {
    /// `config` carries the connection and security properties shared with the consumer.
    pub fn new(
        config: &ClientConfig,
        topic: &str,
        max_message_bytes: usize,
    ) -> Result<Self, SinkError> {
        let mut config = config.clone();
        config
            .set("enable.idempotence", "true")
            .set("compression.type", "zstd")
            // Each batch waits for its records' acknowledgements before its input
            // offsets move, so time spent lingering is time the whole pipeline waits.
            .set("linger.ms", "1")
            .set(
                "message.max.bytes",
                (max_message_bytes + 64 * 1024).to_string(),
            );
        let producer: FutureProducer = config.create().map_err(|e| SinkError::kafka(topic, e))?;
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

    /// Waits for every delivery; a failed one fails the batch (so its offsets are not stored).
    pub async fn confirm(&self, deliveries: Vec<DeliveryFuture>) -> Result<(), SinkError> {
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(SinkError::kafka(&self.topic, error)),
                Err(_) => {
                    return Err(SinkError::kafka(&self.topic, KafkaError::Canceled));
                }
            }
        }
        Ok(())
    }

    /// Flushes librdkafka's queue (at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        self.producer
            .flush(timeout)
            .map_err(|e| SinkError::kafka(&self.topic, e))
    }
}
