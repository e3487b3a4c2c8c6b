//! The `appwarden` command line: run, replay, demo, check-config.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use appwarden::daemon::{Daemon, build_outputs};
use appwarden::decode::{DecodeOptions, Format, Layout};
use appwarden::demo::{self, DemoOptions};
use appwarden::detect::Engine;
use appwarden::identity::{Registry, RegistryHandle, RegistryReloader};
use appwarden::pipeline::Pipeline;
use appwarden::query::{OutputFormat, QueryEngine, write_answer};
use appwarden::settings::{LogFormat, Settings, SettingsSources, ValueOrigin};
use appwarden::sinks::NdjsonWriter;
use appwarden::source::file;
use appwarden::telemetry::Stats;

/// AppWarden watches the identities of micro-apps (small apps, bots and AI
/// agents) in SSO, API-gateway and secrets-manager logs read from Kafka, and
/// ties every event to the registered app behind it.
#[derive(Parser)]
#[command(
    name = "appwarden",
    version,
    about,
    long_about = None,
    after_help = "Examples:\n  appwarden demo                                  # generated traffic on an embedded Kafka, with a report\n  appwarden replay okta.ndjson cloudtrail.json.gz # alerts of past exports, as NDJSON on stdout\n  appwarden run --config /etc/appwarden.toml      # the daemon on your Kafka\n  appwarden check-config --config /etc/appwarden.toml\n  appwarden query \"SELECT app_id, count(*) FROM alerts GROUP BY app_id\"\n\nSettings: built-in defaults < --config FILE < APPWARDEN__SECTION__KEY variables."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon on the configured Kafka topics: detect, alert, write events and history.
    ///
    /// Consumes the input topics, decodes, resolves identities, runs the detectors,
    /// delivers alerts and writes enriched events, dead letters and history. Stops
    /// cleanly on SIGINT/SIGTERM; SIGHUP reloads the registry.
    #[command(
        after_help = "Example:\n  APPWARDEN__KAFKA__BROKERS=kafka:9092 appwarden run --config /etc/appwarden.toml"
    )]
    Run {
        /// User settings file (TOML) over the built-in defaults; APPWARDEN__SECTION__KEY variables override both.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Replay log files through the same pipeline and detectors; write alerts as NDJSON.
    ///
    /// Inputs may be NDJSON, JSON arrays, CloudTrail files ({"Records":[...]}, also .gz)
    /// or Squid access logs; `-` reads standard input. The same input and settings
    /// always give the same alerts, byte for byte.
    #[command(
        after_help = "Example:\n  appwarden replay --alerts-out alerts.ndjson okta.ndjson cloudtrail.json.gz vault.ndjson access.log"
    )]
    Replay(ReplayArgs),
    /// Show AppWarden at work: generated traffic with incidents on an embedded Kafka, then a report.
    ///
    /// Runs the whole pipeline on an embedded Kafka (librdkafka's mock cluster) with
    /// generated micro-app traffic and injected incidents, then prints a summary.
    #[command(after_help = "Example:\n  appwarden demo --duration 60 --out /tmp/appwarden-demo")]
    Demo {
        /// Wall-clock seconds to run.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Simulated hours of traffic played in that time (the first day is the detectors' learning period).
        #[arg(long, default_value_t = 72)]
        hours: u32,
        /// Registered micro-apps in the generated world.
        #[arg(long, default_value_t = 36)]
        apps: usize,
        /// Generator seed (same seed, same traffic).
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Folder for the demo's outputs (registry, events, dead letters, incidents).
        #[arg(long, default_value = "appwarden-demo")]
        out: PathBuf,
        /// Also POST every alert to this webhook (HMAC-signed with the key in OUT/webhook.key).
        #[arg(long)]
        webhook_url: Option<String>,
        /// Also email every alert through this SMTP relay, `host:port` (plain SMTP: a local relay).
        #[arg(long)]
        smtp: Option<String>,
        /// Recipient of the demo's email.
        #[arg(long, default_value = "soc@example.com")]
        email_to: String,
    },
    /// Run one read-only SQL query over the Parquet history (tables `events` and `alerts`).
    ///
    /// Filters on the partition columns (`day`, `hour`, and `source` for events) skip
    /// whole folders. Only SELECT/WITH/VALUES run; anything that writes is refused.
    #[command(
        after_help = "Example:\n  appwarden query --history history \"SELECT source, count(*) FROM events WHERE day = '2026-11-24' GROUP BY source\""
    )]
    Query {
        /// User settings file (TOML) over the built-in defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// History root (folder or s3://bucket/prefix); default: history.path from the settings.
        #[arg(long)]
        history: Option<String>,
        /// Output: an aligned table, CSV, or one JSON object per row.
        #[arg(long, short, value_enum, default_value = "table")]
        format: OutputFormat,
        /// Return at most this many rows (default: query.max_rows from the settings).
        #[arg(long)]
        max_rows: Option<usize>,
        /// The SQL query.
        sql: String,
    },
    /// Check the settings, registry, detectors and sinks; print each setting and where it came from.
    ///
    /// Prints the effective settings (secrets shown only as references), each key
    /// followed by its origin (default, file or environment), and exits non-zero
    /// with the offending key on error.
    #[command(after_help = "Example:\n  appwarden check-config --config /etc/appwarden.toml")]
    CheckConfig {
        /// User settings file (TOML) over the built-in defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// User settings file (TOML) over the built-in defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Record format of every input (auto recognises each record).
    #[arg(long, short, default_value = "auto")]
    format: Format,
    /// Line layout of text inputs (with --format squid, envoy_text or auto): a preset
    /// (squid, common, combined, envoy, istio), a Squid logformat string or an Envoy
    /// format string. Default: Squid native and Envoy's default format.
    #[arg(long, value_parser = |s: &str| Layout::parse(s).map_err(|e| e.to_string()))]
    layout: Option<Layout>,
    /// Where alerts go (`-` for standard output).
    #[arg(long, default_value = "-")]
    alerts_out: PathBuf,
    /// Also write the enriched events (OCSF JSON, one per line) here.
    #[arg(long)]
    events_out: Option<PathBuf>,
    /// Also write events and alerts to the Parquet history at this root (a folder or
    /// s3://bucket/prefix), for `appwarden query`. Off unless given, so that replaying
    /// the same files twice never doubles the history by accident.
    #[arg(long)]
    history: Option<String>,
    /// Delete history partitions older than this many days (by the wall clock) after
    /// writing. Default: none, so a replay of old logs keeps everything it writes;
    /// `history.retention_days` applies to the daemon only. At most 36500.
    #[arg(long, requires = "history", value_parser = clap::value_parser!(u64).range(..=36_500))]
    retention_days: Option<u64>,
    /// Where records that cannot be decoded go (default: dead_letter.file from the
    /// settings, else appwarden-deadletter.ndjson).
    #[arg(long)]
    dead_letter_out: Option<PathBuf>,
    /// Events each input holds in its reorder buffer. The inputs are merged by event
    /// time, so one export per source gives the alerts of one time-ordered file; an
    /// event further out of place than this within its own file arrives late.
    #[arg(long, default_value_t = file::DEFAULT_REORDER_EVENTS)]
    reorder_events: usize,
    /// Write the detectors' baselines at the end of the input to this snapshot file,
    /// for `appwarden run` to start from (point `state.snapshot_path` at it): a new
    /// deployment starts from baselines learned from past exports.
    #[arg(long)]
    state_out: Option<PathBuf>,
    /// Input files (one per source is fine: they are merged by event time).
    #[arg(required = true)]
    inputs: Vec<String>,
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The settings, and the notes to log once logging is set up (a default detectors
/// folder that is not here falls back to the built-in detectors).
fn load_settings(
    config: Option<&Path>,
) -> anyhow::Result<(Settings, SettingsSources, Vec<String>)> {
    let (mut settings, sources) = Settings::load(config)?;
    let notes = settings
        .fall_back_to_builtin_detectors(&sources)
        .into_iter()
        .collect();
    Ok((settings, sources, notes))
}

fn log_notes(notes: &[String]) {
    for note in notes {
        tracing::info!("{note}");
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    token.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        token.cancel();
    });
}

async fn run(config: Option<&Path>) -> anyhow::Result<()> {
    let (settings, _, notes) = load_settings(config)?;
    init_logging(settings.log.format, &settings.log.level);
    log_notes(&notes);
    let stats = Arc::new(Stats::default());
    let daemon = Daemon::build(&settings, stats)?;
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    tracing::info!(brokers = %settings.kafka.brokers, group = %settings.kafka.group_id, "appwarden running");
    daemon.run(shutdown).await?;
    Ok(())
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    if args.layout.is_some()
        && !matches!(
            args.format,
            Format::Auto | Format::Squid | Format::EnvoyText
        )
    {
        bail!(
            "--layout needs --format squid, envoy_text or auto, not {}",
            args.format
        );
    }
    let (mut settings, sources, notes) = load_settings(args.config.as_deref())?;
    settings.history.path = args.history.clone().unwrap_or_default();
    // The daemon's retention is by wall clock; a replay of old exports would delete
    // what it just wrote. A replay expires only when asked to.
    let daemon_retention_days = settings.history.retention_days;
    settings.history.retention_days = args.retention_days.unwrap_or(0);
    init_logging(settings.log.format, &settings.log.level);
    log_notes(&notes);
    let dead_letters = match args.dead_letter_out.as_deref() {
        Some(path) => path.to_path_buf(),
        None if !settings.dead_letter.file.is_empty() => PathBuf::from(&settings.dead_letter.file),
        None => PathBuf::from("appwarden-deadletter.ndjson"),
    };
    settings.dead_letter.file = String::new();
    settings.output.events_file = String::new();
    settings.alerts.file = String::new();
    let mut engine = Engine::start(&settings.detect)?;
    let registry = replay_registry(&settings, &sources)?;
    let stats = Arc::new(Stats::default());
    let mut pipeline = Pipeline::new(
        settings.input.max_record_bytes,
        registry,
        settings.registry.issued_credentials_max,
        stats.clone(),
    )
    .with_max_future(settings.input.max_future_secs)
    .with_max_dead_letter_payload(settings.dead_letter.max_payload_bytes);
    let mut outputs = build_outputs(&settings, false, stats.clone())?;
    if let Some(path) = args.events_out.as_deref() {
        outputs.events_file = Some(NdjsonWriter::open(path)?);
    }
    outputs.alerts_file = Some(NdjsonWriter::open(&args.alerts_out)?);
    let history_stats = outputs.history.as_ref().map(|h| h.stats());
    outputs.dead_letter_file = Some(NdjsonWriter::open(&dead_letters)?);
    let replay_options = file::ReplayOptions {
        format: args.format,
        decode: DecodeOptions {
            layout: args.layout.clone().map(Arc::new),
            ..DecodeOptions::default()
        },
        reorder_events: args.reorder_events,
        state_out: args.state_out.clone(),
    };
    file::replay(
        &args.inputs,
        &replay_options,
        &mut pipeline,
        &mut engine,
        &mut outputs,
    )
    .await?;
    // Stopping the history writer compacts the closed hours it wrote to.
    drop(outputs.history.take());
    let s = stats.snapshot();
    eprintln!(
        "replayed {} records: {} events ({} registered, {} unregistered, {} anonymous), {} alerts, {} dead-lettered{}",
        s.records,
        s.events,
        s.registered,
        s.unregistered,
        s.anonymous,
        s.alerts,
        s.dead_letters,
        if s.dead_letters > 0 {
            format!(" to {}", dead_letters.display())
        } else {
            String::new()
        }
    );
    if let Some(stats) = history_stats {
        print_history_aging(&settings, &stats, daemon_retention_days);
    }
    Ok(())
}

/// The registry a replay resolves identities with. Run outside the repository with
/// the default `registry.path` not there, a replay goes on with an empty registry
/// (every service identity then counts as unregistered) and says so; a configured
/// registry that is missing or broken stays an error.
fn replay_registry(
    settings: &Settings,
    sources: &SettingsSources,
) -> anyhow::Result<RegistryHandle> {
    let path = &settings.registry.path;
    if !path.exists() && sources.origin("registry.path") == ValueOrigin::Default {
        tracing::warn!(
            "registry.path: the default `{}` is not in the working directory; replaying with an empty registry, \
             so every service identity counts as unregistered (set registry.path to your registry)",
            path.display()
        );
        return Ok(RegistryHandle::new(Registry::default()));
    }
    let (_reloader, registry) = RegistryReloader::start(path)?;
    Ok(registry)
}

/// After a `replay --history`: what was written, and how retention will treat it.
fn print_history_aging(
    settings: &Settings,
    stats: &appwarden::history::HistoryStats,
    daemon_retention_days: u64,
) {
    use std::sync::atomic::Ordering;
    let written = stats.events_written.load(Ordering::Relaxed);
    let files = stats.files_written.load(Ordering::Relaxed);
    let merged = stats.files_merged.load(Ordering::Relaxed);
    let compacted = stats.compacted_files_written.load(Ordering::Relaxed);
    let expired = stats.files_expired.load(Ordering::Relaxed);
    let failures = stats.upkeep_failures.load(Ordering::Relaxed);
    eprintln!(
        "history: {written} events written to {} in {files} files{}{}{}",
        settings.history.path,
        if merged > 0 {
            format!(", {merged} files of closed hours merged into {compacted}")
        } else {
            String::new()
        },
        if expired > 0 {
            format!(", {expired} files older than --retention-days deleted")
        } else {
            String::new()
        },
        if failures > 0 {
            format!(", {failures} upkeep steps failed (see the log)")
        } else {
            String::new()
        }
    );
    let oldest = stats.oldest_event_hour.lock().ok().and_then(|o| *o);
    if let Some(oldest) = oldest
        && daemon_retention_days > 0
        && settings.history.retention_days == 0
    {
        let cutoff = chrono::Utc::now() - chrono::Duration::days(daemon_retention_days as i64);
        if oldest < cutoff {
            eprintln!(
                "history: events from {} on are older than history.retention_days = {daemon_retention_days}; \
                 a daemon with this history root deletes hour partitions that ended before {} when it starts",
                oldest.format("%Y-%m-%d %H:00 UTC"),
                cutoff.format("%Y-%m-%d %H:%M UTC"),
            );
        } else {
            eprintln!(
                "history: a daemon with this history root deletes each hour partition {daemon_retention_days} days \
                 after it ends (history.retention_days), the oldest one written here on {}",
                (oldest
                    + chrono::Duration::hours(1)
                    + chrono::Duration::days(daemon_retention_days as i64))
                .format("%Y-%m-%d"),
            );
        }
    }
}

async fn query(
    config: Option<&Path>,
    history: Option<String>,
    format: OutputFormat,
    max_rows: Option<usize>,
    sql: &str,
) -> anyhow::Result<()> {
    let (mut settings, _, _) = load_settings(config)?;
    init_logging(settings.log.format, "warn");
    if let Some(history) = history {
        settings.history.path = history;
    }
    if let Some(max_rows) = max_rows {
        settings.query.max_rows = max_rows.max(1);
    }
    let engine = QueryEngine::open(&settings.history, &settings.query)?;
    let answer = engine.run(sql).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    write_answer(&answer, format, &mut out)?;
    if answer.truncated {
        eprintln!(
            "note: output cut at {} rows (--max-rows, query.max_rows or query.max_result_mib)",
            answer.rows
        );
    }
    Ok(())
}

fn check_config(config: Option<&Path>) -> anyhow::Result<()> {
    let (settings, sources, notes) = load_settings(config)?;
    println!("# effective settings from {sources}; after each key, where its value comes from");
    print!("{}", sources.annotate(&settings.to_toml()));
    for note in &notes {
        println!("# {note}");
    }
    for (key, secret) in &settings.kafka.secret_properties {
        match secret.resolve() {
            Ok(_) => println!("# kafka.secret_properties.\"{key}\": resolves ({secret:?})"),
            Err(e) => bail!("kafka.secret_properties.\"{key}\": {e}"),
        }
    }
    if let Some(token) = &settings.query.token {
        match token.resolve() {
            Ok(_) => println!("# query.token: resolves ({token:?})"),
            Err(e) => bail!("query.token: {e}"),
        }
    }
    match settings.http.address() {
        Ok(Some(address)) => println!("# http.listen: {address}"),
        Ok(None) => println!("# http.listen: off"),
        Err(e) => bail!("http.listen: {e}"),
    }
    // The consumer's and producers' librdkafka properties, built as `run` builds them.
    appwarden::daemon::check_kafka_config(&settings)?;
    println!("# kafka: librdkafka accepts the consumer and producer properties");
    let registry = appwarden::identity::Registry::load(&settings.registry.path)
        .with_context(|| "registry.path".to_string())?;
    let engine =
        Engine::start(&settings.detect).with_context(|| "detect.detectors_dir".to_string())?;
    let names: Vec<&str> = engine.specs().iter().map(|s| s.name.as_str()).collect();
    println!(
        "# detectors from {}: {}",
        if settings.detect.detectors_dir.as_os_str().is_empty() {
            "(built-in defaults)".to_string()
        } else {
            settings.detect.detectors_dir.display().to_string()
        },
        names.join(", ")
    );
    println!(
        "# registry {}: {} apps",
        settings.registry.path.display(),
        registry.apps().len()
    );
    for sink in &settings.deliver.sinks {
        // Builds the sink as `run` would: secrets resolve, addresses and URLs parse.
        appwarden::deliver::worker::Sink::new(sink)
            .map_err(|e| anyhow::anyhow!("deliver.sinks[{}]: {e}", sink.name))?;
        println!("# sink {}: ok", sink.name);
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(config.as_deref()).await,
            Command::Replay(args) => replay(args).await,
            Command::Query {
                config,
                history,
                format,
                max_rows,
                sql,
            } => query(config.as_deref(), history, format, max_rows, &sql).await,
            Command::Demo {
                duration,
                hours,
                apps,
                seed,
                out,
                webhook_url,
                smtp,
                email_to,
            } => {
                // Dead letters are expected in the demo (it injects bad records) and reported in its summary.
                init_logging(LogFormat::Pretty, "warn,appwarden::pipeline=error");
                demo::run(DemoOptions {
                    webhook_url,
                    smtp,
                    email_to,
                    duration_secs: duration,
                    hours,
                    apps,
                    seed,
                    out,
                })
                .await
                .map_err(anyhow::Error::from)
            }
            Command::CheckConfig { config } => check_config(config.as_deref()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
