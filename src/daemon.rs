//! The daemon: wires settings into registry, pipeline, sinks and the Kafka source, and runs them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::deliver::worker::{DeliverError, DeliverSettings, Delivery};
use crate::detect::Engine;
use crate::detect::engine::EngineError;
use crate::history::HistoryWriter;
use crate::identity::{RegistryError, RegistryHandle, RegistryReloader};
use crate::pipeline::Pipeline;
use crate::settings::Settings;
use crate::sinks::{KafkaTopicWriter, NdjsonWriter, Outputs, SinkError};
use crate::source::kafka::{
    KafkaSource, SnapshotPolicy, SourceError, SourceProgress, client_config,
};
use crate::telemetry::Stats;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Deliver(#[from] DeliverError),
}

/// Builds the outputs the settings ask for. `kafka` is false for `replay`, which never produces.
pub fn build_outputs(settings: &Settings, kafka: bool) -> Result<Outputs, DaemonError> {
    let mut outputs = Outputs::default();
    let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    if let Some(file) = non_empty(&settings.output.events_file) {
        outputs.events_file = Some(NdjsonWriter::open(Path::new(&file))?);
    }
    if let Some(file) = non_empty(&settings.dead_letter.file) {
        outputs.dead_letter_file = Some(NdjsonWriter::open(Path::new(&file))?);
    }
    if let Some(file) = non_empty(&settings.alerts.file) {
        outputs.alerts_file = Some(NdjsonWriter::open(Path::new(&file))?);
    }
    if settings.history.enabled() {
        outputs.history = Some(HistoryWriter::start(&settings.history).map_err(SinkError::from)?);
    }
    if kafka {
        let config = client_config(&settings.kafka)?;
        let max = settings.input.max_record_bytes;
        if let Some(topic) = non_empty(&settings.output.events_topic) {
            outputs.events_topic = Some(KafkaTopicWriter::new(&config, &topic, max)?);
        }
        if let Some(topic) = non_empty(&settings.alerts.topic) {
            outputs.alerts_topic = Some(KafkaTopicWriter::new(&config, &topic, max)?);
        }
        if let Some(topic) = non_empty(&settings.dead_letter.topic) {
            // A dead letter carries the whole bad record plus its metadata.
            outputs.dead_letter_topic = Some(KafkaTopicWriter::new(&config, &topic, max * 2)?);
        }
    }
    Ok(outputs)
}

/// A daemon ready to run: the registry is loaded and the consumer subscribed.
pub struct Daemon {
    reloader: RegistryReloader,
    registry: RegistryHandle,
    reload_interval: Duration,
    pipeline: Pipeline,
    outputs: Outputs,
    source: KafkaSource,
    engine: Engine,
    snapshots: Option<SnapshotPolicy>,
    deliver: DeliverSettings,
}

impl Daemon {
    pub fn build(settings: &Settings, stats: Arc<Stats>) -> Result<Daemon, DaemonError> {
        let (reloader, registry) = RegistryReloader::start(&settings.registry.path)?;
        let pipeline = Pipeline::new(
            settings.input.max_record_bytes,
            registry.clone(),
            settings.registry.issued_credentials_max,
            stats,
        )
        .with_max_future(settings.input.max_future_secs)
        .with_max_dead_letter_payload(settings.dead_letter.max_payload_bytes);
        let outputs = build_outputs(settings, true)?;
        let source = KafkaSource::new(&settings.kafka)?;
        let engine = Engine::start(&settings.detect)?;
        let snapshots = (!settings.state.snapshot_path.trim().is_empty()).then(|| SnapshotPolicy {
            path: settings.state.snapshot_path.trim().into(),
            interval: Duration::from_secs(settings.state.snapshot_interval_secs),
        });
        Ok(Daemon {
            deliver: settings.deliver.clone(),
            engine,
            snapshots,
            reloader,
            registry,
            reload_interval: Duration::from_secs(settings.registry.reload_interval_secs),
            pipeline,
            outputs,
            source,
        })
    }

    pub fn progress(&self) -> Arc<SourceProgress> {
        self.source.progress()
    }

    /// Counters of the detection engine.
    pub fn engine_stats(&self) -> Arc<crate::detect::engine::EngineStats> {
        self.engine.stats().clone()
    }

    pub fn registry(&self) -> RegistryHandle {
        self.registry.clone()
    }

    /// Runs until `shutdown` is cancelled: stop reading, finish the batch, flush, commit.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DaemonError> {
        let Daemon {
            reloader,
            reload_interval,
            mut pipeline,
            mut outputs,
            source,
            mut engine,
            snapshots,
            deliver,
            ..
        } = self;
        let reload = tokio::spawn(reloader.run(reload_interval, shutdown.child_token()));
        let mut delivery = match Delivery::start(&deliver) {
            Ok(delivery) => delivery,
            Err(error) => {
                shutdown.cancel();
                return Err(DaemonError::Deliver(error));
            }
        };
        let result = source
            .run(
                &mut pipeline,
                &mut outputs,
                &mut engine,
                &mut delivery,
                snapshots,
                shutdown.clone(),
            )
            .await;
        // A source that failed must not leave the reloader running.
        shutdown.cancel();
        outputs.close(Duration::from_secs(10));
        // Sink workers stop with the daemon; what they have not delivered stays in the outbox.
        delivery
            .stop(Duration::from_secs(deliver.drain_on_shutdown_secs))
            .await;
        if let Err(error) = reload.await {
            tracing::warn!(%error, "registry reloader ended abnormally");
        }
        result.map_err(DaemonError::from)
    }
}
