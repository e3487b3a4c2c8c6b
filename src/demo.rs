//! `appwarden demo`: the whole daemon on librdkafka's in-process mock cluster,
//! fed by the traffic generator, with a live summary and a final report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::daemon::{Daemon, DaemonError};
use crate::detect::Alert;
use crate::generator::{Family, GeneratedRecord, IncidentKind, World, WorldConfig};
use crate::query::{OutputFormat, QueryEngine, write_answer};
use crate::settings::{Settings, SettingsError};
use crate::telemetry::Stats;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Deliver alerts to this webhook too (signed with the key in `<out>/webhook.key`).
    pub webhook_url: Option<String>,
    /// Deliver alerts by email through this SMTP server (`host:port`, no TLS: a local relay).
    pub smtp: Option<String>,
    /// The SOC address for demo email.
    pub email_to: String,
    pub duration_secs: u64,
    pub hours: u32,
    pub apps: usize,
    pub seed: u64,
    pub out: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo output folder {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("embedded Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("demo options: {0}")]
    Options(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub fn topic_of(family: Family) -> &'static str {
    match family {
        Family::Sso => "appwarden.sso",
        Family::Gateway => "appwarden.gateway",
        Family::Secrets => "appwarden.secrets",
    }
}

/// Produces the generated records in event-time order, paced over `span`.
async fn produce(
    producer: FutureProducer,
    records: Vec<GeneratedRecord>,
    span: Duration,
    produced: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Result<(), KafkaError> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok(());
    };
    let (t0, t1) = (first.time, last.time);
    let sim_ms = (t1 - t0).num_milliseconds().max(1) as f64;
    let started = Instant::now();
    let mut pending: Vec<DeliveryFuture> = Vec::new();
    for (i, record) in records.iter().enumerate() {
        if i % 64 == 0 {
            if stop.is_cancelled() {
                break;
            }
            let due = span.mul_f64((record.time - t0).num_milliseconds() as f64 / sim_ms);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        loop {
            let r = FutureRecord::to(topic_of(record.family))
                .key(&record.key)
                .payload(&record.payload)
                .timestamp(record.time.timestamp_millis());
            match producer.send_result(r) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
        if pending.len() >= 256 {
            for delivery in pending.drain(..) {
                if let Ok(Err((error, _))) = delivery.await {
                    return Err(error);
                }
                produced.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    for delivery in pending {
        if let Ok(Err((error, _))) = delivery.await {
            return Err(error);
        }
        produced.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn live_line(elapsed: Duration, produced: u64, stats: &Stats) -> String {
    let s = stats.snapshot();
    let families: Vec<String> = s
        .events_by_source
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    let resolved = if s.events > 0 {
        100.0 * s.registered as f64 / s.events as f64
    } else {
        0.0
    };
    format!(
        "[{:>3}s] produced {produced:>6} | processed {:>6} | events: {} | resolved to apps {resolved:.1}% | unregistered {} | dead letters {} | alerts {}",
        elapsed.as_secs(),
        s.records,
        families.join(", "),
        s.unregistered,
        s.dead_letters,
        s.alerts
    )
}

/// The sinks the demo was pointed at: a signed webhook and/or an SMTP relay.
fn demo_sinks(
    options: &DemoOptions,
    out: &Path,
) -> Result<Vec<crate::deliver::SinkSettings>, DemoError> {
    use crate::deliver::{SinkKind, SinkSettings, SmtpSecurity};
    use crate::detect::Severity;
    use crate::settings::SecretRef;
    let mut sinks = Vec::new();
    if let Some(url) = &options.webhook_url {
        let key_path = out.join("webhook.key");
        if !key_path.exists() {
            std::fs::write(&key_path, "appwarden-demo-signing-key\n").map_err(io_err(&key_path))?;
        }
        println!(
            "alerts will be POSTed to {url}, signed with the key in {}",
            key_path.display()
        );
        sinks.push(SinkSettings {
            name: "demo-webhook".into(),
            min_severity: Severity::Low,
            timeout_secs: 5,
            max_in_flight: 4,
            kind: SinkKind::Webhook {
                url: url.clone(),
                signing_key: SecretRef {
                    env: None,
                    file: Some(key_path),
                },
            },
        });
    }
    if let Some(smtp) = &options.smtp {
        let (host, port) = smtp
            .rsplit_once(':')
            .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_string(), p)))
            .ok_or_else(|| DemoError::Options(format!("--smtp {smtp}: expected host:port")))?;
        println!(
            "alerts will be mailed to {} through {host}:{port}",
            options.email_to
        );
        sinks.push(SinkSettings {
            name: "demo-email".into(),
            min_severity: Severity::Low,
            timeout_secs: 10,
            max_in_flight: 2,
            kind: SinkKind::Email {
                host,
                port,
                security: SmtpSecurity::None,
                username: None,
                password: None,
                from: "appwarden-demo@localhost".into(),
                soc: vec![options.email_to.clone()],
                soc_min_severity: None,
                notify_owners: false,
            },
        });
    }
    Ok(sinks)
}

pub async fn run(options: DemoOptions) -> Result<(), DemoError> {
    if options.duration_secs == 0 || options.hours == 0 || options.apps < 12 {
        return Err(DemoError::Options(
            "duration and hours must be positive and apps at least 12".into(),
        ));
    }
    let out = &options.out;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let registry_path = out.join("registry.yaml");
    let events_path = out.join("events.ndjson");
    let dead_path = out.join("deadletter.ndjson");
    let incidents_path = out.join("incidents.json");
    let alerts_path = out.join("alerts.ndjson");
    let state_path = out.join("state.json");
    let outbox_path = out.join("outbox");
    let history_path = out.join("history");
    for stale in [&outbox_path, &history_path] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).map_err(io_err(stale))?;
        }
    }
    for stale in [&events_path, &dead_path, &alerts_path, &state_path] {
        if stale.exists() {
            std::fs::remove_file(stale).map_err(io_err(stale))?;
        }
    }

    let world = World::new(WorldConfig {
        seed: options.seed,
        apps: options.apps,
        hours: options.hours,
        ..WorldConfig::default()
    });
    std::fs::write(&registry_path, world.registry_yaml()).map_err(io_err(&registry_path))?;
    let incidents = serde_json::to_string_pretty(&world.incidents).unwrap_or_default();
    std::fs::write(&incidents_path, incidents).map_err(io_err(&incidents_path))?;
    let records = world.records();
    let total = records.len() as u64;
    let malformed = records.iter().filter(|r| r.malformed).count();

    let cluster = MockCluster::new(3)?;
    let brokers = cluster.bootstrap_servers();
    for family in Family::ALL {
        cluster.create_topic(topic_of(family), 3, 1)?;
    }
    cluster.create_topic("appwarden.events", 3, 1)?;
    cluster.create_topic("appwarden.deadletter", 1, 1)?;
    cluster.create_topic("appwarden.alerts", 1, 1)?;

    let (mut settings, _) = Settings::load_with_env(None, Vec::new())?;
    settings.kafka.brokers = brokers.clone();
    settings.kafka.group_id = "appwarden-demo".into();
    settings.registry.path = registry_path.clone();
    settings.registry.reload_interval_secs = 2;
    settings.output.events_file = events_path.display().to_string();
    settings.dead_letter.file = dead_path.display().to_string();
    settings.alerts.file = alerts_path.display().to_string();
    settings.state.snapshot_path = state_path.display().to_string();
    settings.state.snapshot_interval_secs = 5;
    // The demo runs on the detectors built into the binary, wherever it is started.
    settings.detect.detectors_dir = PathBuf::new();
    // Simulated time runs thousands of times faster than the clock here, so a few
    // milliseconds of skew between partitions are minutes of event time.
    settings.detect.allowed_lateness_secs = 600;
    // The generated days are fixed dates; they may lie ahead of the machine's clock.
    settings.input.max_future_secs = 100 * 365 * 86_400;
    settings.detect.max_source_skew_secs = 6 * 3600;
    // Small fetches interleave the partitions finely, as a live stream would.
    settings
        .kafka
        .consumer_properties
        .insert("max.partition.fetch.bytes".into(), "65536".into());
    settings.deliver.outbox_dir = outbox_path.display().to_string();
    settings.history.path = history_path.display().to_string();
    // Files every few seconds, so the compressed days land in many hour partitions.
    settings.history.flush_interval_secs = 5;
    // The generated days are fixed dates: retention by the wall clock would delete
    // them once they are a month old, and the report's SQL would come back empty.
    settings.history.retention_days = 0;
    settings.deliver.sinks = demo_sinks(&options, out)?;
    // A free port: the demo must not collide with a daemon running on the default one.
    settings.http.listen = "127.0.0.1:0".into();
    settings
        .validate()
        .map_err(|(key, message)| DemoError::Options(format!("{key}: {message}")))?;

    println!(
        "AppWarden demo: {} apps, {} simulated hours from {}, {total} vendor records ({malformed} deliberately malformed)",
        world.apps.len(),
        options.hours,
        world.config.start.format("%Y-%m-%d %H:%M UTC"),
    );
    println!(
        "embedded Kafka (librdkafka mock cluster) at {brokers}; topics appwarden.sso, appwarden.gateway, appwarden.secrets"
    );

    let stats = Arc::new(Stats::default());
    let daemon = Daemon::build(&settings, stats.clone())?;
    let engine_stats = daemon.engine_stats();
    if let Some(address) = daemon.http_address() {
        println!("metrics at http://{address}/metrics, readiness at http://{address}/readyz");
    }
    let shutdown = CancellationToken::new();
    let daemon_task = tokio::spawn(daemon.run(shutdown.clone()));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()?;
    let produced = Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs(options.duration_secs);
    let produce_span = duration.mul_f64(0.8);
    let producer_task = tokio::spawn(produce(
        producer,
        records,
        produce_span,
        produced.clone(),
        shutdown.child_token(),
    ));

    let started = Instant::now();
    let deadline = duration + Duration::from_secs(15);
    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let done_producing = producer_task.is_finished();
        let processed = stats.snapshot().records;
        println!(
            "{}",
            live_line(started.elapsed(), produced.load(Ordering::Relaxed), &stats)
        );
        if done_producing && processed >= produced.load(Ordering::Relaxed) {
            break;
        }
        if started.elapsed() >= deadline {
            println!("time is up before every record was processed; stopping");
            break;
        }
        if daemon_task.is_finished() {
            break;
        }
    }
    shutdown.cancel();
    match producer_task.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "demo producer failed"),
        Err(error) => tracing::warn!(%error, "demo producer task failed"),
    }
    match daemon_task.await {
        Ok(result) => result?,
        Err(error) => tracing::warn!(%error, "daemon task failed"),
    }
    drop(cluster);

    print_report(&stats, &settings).await?;
    println!(
        "detectors: {} events, {} late (skipped by windowed detectors), {} alerts, {} suppressed repeats",
        engine_stats.events.load(Ordering::Relaxed),
        engine_stats.late_events.load(Ordering::Relaxed),
        engine_stats.alerts.load(Ordering::Relaxed),
        engine_stats.suppressed.load(Ordering::Relaxed),
    );
    print_alerts(&world, &alerts_path);
    if options.webhook_url.is_none() && options.smtp.is_none() {
        println!(
            "\nno --webhook-url or --smtp given: alerts were written to the local file sink {} only",
            alerts_path.display()
        );
    }
    println!("\noutputs in {}:", out.display());
    for (path, what) in [
        (&registry_path, "the generated micro-app registry"),
        (
            &events_path,
            "enriched events (OCSF JSON lines, as on the enriched topic)",
        ),
        (
            &history_path,
            "Parquet history: events/ and alerts/ (appwarden query --history …)",
        ),
        (&dead_path, "dead-lettered records with their reasons"),
        (&incidents_path, "the incidents injected, with their times"),
        (
            &alerts_path,
            "alerts (NDJSON, OCSF Detection Finding fields)",
        ),
        (&state_path, "the detector state snapshot"),
    ] {
        println!("  {:<45} {what}", path.display());
    }
    Ok(())
}

/// The demo's summary of what was ingested, asked of the Parquet history in SQL
/// (the same queries work with `appwarden query --history OUT/history`).
async fn print_report(stats: &Stats, settings: &Settings) -> Result<(), DemoError> {
    let s = stats.snapshot();
    println!(
        "\nprocessed {} records -> {} events, {} dead-lettered",
        s.records, s.events, s.dead_letters
    );
    let engine = QueryEngine::open(&settings.history, &settings.query)
        .map_err(|e| DemoError::Options(format!("history: {e}")))?;
    let queries = [
        (
            "events per family and format, and the share tied to a registered app",
            "SELECT source_kind AS family, source AS format, count(*) AS events, \
             round(100.0 * sum(CASE WHEN identity_status = 'registered' THEN 1 ELSE 0 END) / count(*), 1) AS resolved_pct \
             FROM events GROUP BY source_kind, source ORDER BY family, format",
        ),
        (
            "busiest apps",
            "SELECT identity_key, count(*) AS events FROM events WHERE identity_status = 'registered' \
             GROUP BY identity_key ORDER BY events DESC, identity_key LIMIT 5",
        ),
        (
            "identities not in the registry",
            "SELECT identity_key, count(*) AS events FROM events WHERE identity_status <> 'registered' \
             GROUP BY identity_key ORDER BY identity_key",
        ),
    ];
    for (what, sql) in queries {
        println!("\n{what}:\n  appwarden query \"{sql}\"");
        let answer = engine
            .run(sql)
            .await
            .map_err(|e| DemoError::Options(format!("query: {e}")))?;
        let mut out = Vec::new();
        write_answer(&answer, OutputFormat::Table, &mut out)
            .map_err(|e| DemoError::Options(format!("query: {e}")))?;
        print!("{}", String::from_utf8_lossy(&out));
    }
    let errors: Vec<String> = s
        .decode_errors
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    if !errors.is_empty() {
        println!("dead letters by reason: {}", errors.join(", "));
    }
    Ok(())
}

/// Prints the alerts and checks them against the injected incidents.
fn print_alerts(world: &World, alerts_path: &Path) {
    let alerts: Vec<Alert> = std::fs::read_to_string(alerts_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    println!("\nalerts ({}):", alerts.len());
    for alert in &alerts {
        println!(
            "  {} {:<8} {:<22} {:<40} {}",
            alert.window_end.format("%a %H:%M"),
            alert.severity.as_str(),
            alert.detector,
            alert.identity,
            alert.summary
        );
    }
    let matches = |kind: IncidentKind, identity: &str, a: &Alert| {
        a.detector == kind.as_str()
            && (a.identity == identity || kind == IncidentKind::UnregisteredIdentity)
    };
    println!("\nincidents injected (ground truth) and whether an alert caught them:");
    let mut incidents: Vec<_> = world.incidents.iter().collect();
    incidents.sort_by_key(|i| i.start);
    for incident in incidents {
        let caught = alerts
            .iter()
            .any(|a| matches(incident.kind, &incident.identity, a));
        println!(
            "  [{}] {:<22} {:<40} {}  {}",
            if caught { "caught" } else { "MISSED" },
            incident.kind.as_str(),
            incident.identity,
            incident.start.format("%a %H:%M"),
            incident.description
        );
    }
    let benign = alerts
        .iter()
        .filter(|a| {
            !world
                .incidents
                .iter()
                .any(|i| matches(i.kind, &i.identity, a) || a.identity == i.identity)
        })
        .count();
    println!("alerts on benign apps: {benign}");
}
