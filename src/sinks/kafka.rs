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

/// Bytes librdkafka adds to key and value when it checks a message against
/// `message.max.bytes` (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`, 36), with a margin.
const WIRE_OVERHEAD: usize = 64;

/// Produces to one topic; the caller awaits the returned deliveries.
pub struct KafkaTopicWriter {
    producer: FutureProducer,
    topic: String,
    /// The producer's `message.max.bytes`, overrides included.
    max_message_bytes: usize,
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
        // librdkafka has accepted the value, so it is a number.
        let max_message_bytes = config
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(max_message_bytes + 64 * 1024);
        Ok(KafkaTopicWriter {
            producer,
            topic: topic.to_string(),
            max_message_bytes,
        })
    }

    /// The largest payload that can be sent with `key`.
    pub fn max_payload(&self, key: &str) -> usize {
        self.max_message_bytes
            .saturating_sub(key.len() + WIRE_OVERHEAD)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Enqueues one record; waits (without blocking the runtime) while the local queue is full.
    /// A record larger than [`KafkaTopicWriter::max_payload`] is refused before it
    /// reaches the producer (callers fit their records first: see [`super::fit`]).
    pub async fn send(&self, key: &str, payload: &[u8]) -> Result<DeliveryFuture, SinkError> {
        let limit = self.max_payload(key);
        if payload.len() > limit {
            return Err(SinkError::TooLarge {
                topic: self.topic.clone(),
                bytes: payload.len(),
                limit,
            });
        }
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

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;

    use super::*;

    #[tokio::test]
    async fn a_payload_that_fits_is_produced_and_a_larger_one_refused_before_sending() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("fit", 1, 1).expect("topic");
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", cluster.bootstrap_servers());
        let writer =
            KafkaTopicWriter::new(&config, &BTreeMap::new(), "fit", 4096).expect("producer");
        let limit = writer.max_payload("k");
        assert_eq!(limit, 4096 + 64 * 1024 - 1 - WIRE_OVERHEAD);

        let fits = vec![b'x'; limit];
        let delivery = writer.send("k", &fits).await.expect("enqueued");
        let delivered = delivery
            .await
            .expect("not cancelled")
            .expect("a payload at the limit is produced");
        assert_eq!((delivered.partition, delivered.offset), (0, 0));

        // One byte more is refused here, before librdkafka (whose own check
        // allows a little more) could fail the batch after the fact.
        let larger = vec![b'x'; limit + 1];
        match writer.send("k", &larger).await {
            Err(SinkError::TooLarge {
                bytes, limit: l, ..
            }) => {
                assert_eq!((bytes, l), (limit + 1, limit));
            }
            Err(other) => panic!("refused by the producer, not before it: {other}"),
            Ok(_) => panic!("a payload over the limit was sent"),
        }
        // The producer's own limit follows `producer_properties`.
        let overrides = BTreeMap::from([("message.max.bytes".to_string(), "2000".to_string())]);
        let small = KafkaTopicWriter::new(&config, &overrides, "fit", 4096).expect("producer");
        assert_eq!(small.max_payload(""), 2000 - WIRE_OVERHEAD);
    }
}
