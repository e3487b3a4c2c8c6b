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
use crate::observe::Observed;
use crate::observe::http::{App, Limits, QueryEndpoint};
use crate::pipeline::Pipeline;
use crate::query::{QueryEngine, QueryError};
use crate::settings::{SecretError, Settings};
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
    #[error("http.listen: cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("query.token: {0}")]
    QueryToken(SecretError),
    #[error("the query endpoint: {0}")]
    Query(#[from] QueryError),
}

/// Builds the outputs the settings ask for. `kafka` is false for `replay`, which never produces.
pub fn build_outputs(
    settings: &Settings,
    kafka: bool,
    stats: Arc<Stats>,
) -> Result<Outputs, DaemonError> {
    let mut outputs = Outputs::new(stats, settings.dead_letter.max_payload_bytes);
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
        let producer = &settings.kafka.producer_properties;
        if let Some(topic) = non_empty(&settings.output.events_topic) {
            outputs.events_topic = Some(KafkaTopicWriter::new(&config, producer, &topic, max)?);
        }
        if let Some(topic) = non_empty(&settings.alerts.topic) {
            outputs.alerts_topic = Some(KafkaTopicWriter::new(&config, producer, &topic, max)?);
        }
        if let Some(topic) = non_empty(&settings.dead_letter.topic) {
            // A dead letter carries the whole bad record plus its metadata.
            outputs.dead_letter_topic =
                Some(KafkaTopicWriter::new(&config, producer, &topic, max * 2)?);
        }
    }
    Ok(outputs)
}

/// For `check-config`: builds the consumer's and (when a Kafka output is
/// configured) the producers' librdkafka configurations exactly as `run` does,
/// and has librdkafka check every property without connecting. A refused
/// property is named, its value never shown.
pub fn check_kafka_config(settings: &Settings) -> Result<(), DaemonError> {
    use crate::source::kafka::{check_config, consumer_config};
    let kafka = |e| DaemonError::Source(SourceError::Kafka(e));
    check_config(&consumer_config(&settings.kafka)?).map_err(kafka)?;
    let produces = [
        &settings.output.events_topic,
        &settings.alerts.topic,
        &settings.dead_letter.topic,
    ]
    .iter()
    .any(|topic| !topic.trim().is_empty());
    if produces {
        let producer = crate::sinks::kafka::producer_config(
            &client_config(&settings.kafka)?,
            &settings.kafka.producer_properties,
            settings.input.max_record_bytes,
        );
        check_config(&producer).map_err(kafka)?;
    }
    Ok(())
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
    observed: Arc<Observed>,
    /// The HTTP listener, bound at build so that a taken port fails early.
    http: Option<(std::net::TcpListener, Arc<App>)>,
}

impl Daemon {
    pub fn build(settings: &Settings, stats: Arc<Stats>) -> Result<Daemon, DaemonError> {
        let (reloader, registry) = RegistryReloader::start(&settings.registry.path)?;
        let pipeline = Pipeline::new(
            settings.input.max_record_bytes,
            registry.clone(),
            settings.registry.issued_credentials_max,
            stats.clone(),
        )
        .with_max_future(settings.input.max_future_secs)
        .with_max_dead_letter_payload(settings.dead_letter.max_payload_bytes);
        let outputs = build_outputs(settings, true, stats.clone())?;
        let source = KafkaSource::new(&settings.kafka)?;
        let engine = Engine::start(&settings.detect)?;
        let snapshots = (!settings.state.snapshot_path.trim().is_empty()).then(|| SnapshotPolicy {
            path: settings.state.snapshot_path.trim().into(),
            interval: Duration::from_secs(settings.state.snapshot_interval_secs),
        });
        let outbox_dir =
            (!settings.deliver.sinks.is_empty()).then(|| settings.deliver.outbox_dir.trim().into());
        let observed = Arc::new(Observed::new(
            stats,
            engine.stats().clone(),
            source.progress(),
            registry.clone(),
            outbox_dir,
        ));
        if let Some(history) = outputs.history.as_ref() {
            observed.set_history(history.stats());
        }
        let http = Self::bind_http(settings, &observed)?;
        Ok(Daemon {
            observed,
            http,
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

    /// Binds the HTTP listener and builds the query endpoint the settings ask for.
    fn bind_http(
        settings: &Settings,
        observed: &Arc<Observed>,
    ) -> Result<Option<(std::net::TcpListener, Arc<App>)>, DaemonError> {
        let address = match settings.http.address() {
            Ok(Some(address)) => address,
            // Validated with the settings; an empty value turns the listener off.
            Ok(None) | Err(_) => return Ok(None),
        };
        if !address.ip().is_loopback() {
            tracing::warn!(%address, "the HTTP listener is reachable from other hosts; /metrics and /readyz need no token");
        }
        let listener =
            crate::observe::http::bind(address).map_err(|source| DaemonError::Listen {
                address: address.to_string(),
                source,
            })?;
        let query = match &settings.query.token {
            Some(token) if settings.history.enabled() => {
                let token = token.resolve().map_err(DaemonError::QueryToken)?;
                let engine = QueryEngine::open(&settings.history, &settings.query)?;
                Some(QueryEndpoint::new(engine, &token))
            }
            Some(_) => {
                tracing::warn!(
                    "query.token is set but history.path is empty: POST /v1/query is off"
                );
                None
            }
            None => None,
        };
        let app = Arc::new(App::new(observed.clone(), query, Limits::default()));
        Ok(Some((listener, app)))
    }

    /// Where the HTTP listener is bound (the port chosen when `http.listen` ends in `:0`).
    pub fn http_address(&self) -> Option<std::net::SocketAddr> {
        self.http
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
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
            observed,
            http,
            ..
        } = self;
        let reload = tokio::spawn(reloader.run(reload_interval, shutdown.child_token()));
        let http_stop = shutdown.child_token();
        let server = match http {
            None => None,
            Some((listener, app)) => {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(source) => {
                        shutdown.cancel();
                        return Err(DaemonError::Listen {
                            address: "the bound socket".into(),
                            source,
                        });
                    }
                };
                if let Ok(address) = listener.local_addr() {
                    tracing::info!(%address, "HTTP listener: /metrics /healthz /readyz POST /v1/query");
                }
                Some(tokio::spawn(crate::observe::http::serve(
                    listener,
                    app,
                    http_stop.clone(),
                )))
            }
        };
        let mut delivery = match Delivery::start(&deliver) {
            Ok(delivery) => delivery,
            Err(error) => {
                shutdown.cancel();
                return Err(DaemonError::Deliver(error));
            }
        };
        observed.set_delivery(delivery.stats(), delivery.outbox().cloned());
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
        // Metrics stay up until the end, so a scrape sees the drain.
        http_stop.cancel();
        if let Some(server) = server {
            let _ = server.await;
        }
        result.map_err(DaemonError::from)
    }
}
