//! Observing the daemon: Prometheus metrics, health and readiness, and SQL over HTTP.
//!
//! Every stage keeps its own counters (telemetry, engine, source, delivery);
//! [`Observed`] holds shared handles to them, and the HTTP listener
//! ([`http`]) renders them on request ([`metrics`]). Nothing here is on the
//! hot path: a scrape reads atomics and takes a few short locks.

pub mod http;
pub mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::deliver::outbox::Outbox;
use crate::deliver::worker::DeliveryStats;
use crate::detect::engine::EngineStats;
use crate::identity::RegistryHandle;
use crate::source::kafka::SourceProgress;
use crate::telemetry::Stats;

/// `[http]` settings: the daemon's own listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of `/metrics`, `/healthz`, `/readyz` and `POST /v1/query`, as
    /// `host:port`. Loopback by default; an empty value turns the listener off.
    /// Port 0 picks a free port (logged at start).
    pub listen: String,
}

impl HttpSettings {
    /// The address to bind, or `None` when the listener is off.
    pub fn address(&self) -> Result<Option<SocketAddr>, String> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        listen
            .parse::<SocketAddr>()
            .map(Some)
            .map_err(|e| format!("`{listen}` is not host:port with an IP address: {e}"))
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        self.address()
            .map(|_| ())
            .map_err(|m| ("http.listen".to_string(), m))
    }
}

/// How stale librdkafka's statistics may be before the broker counts as unknown.
const CLIENT_VIEW_MAX_AGE: Duration = Duration::from_secs(15);

/// Shared handles to the counters of every stage, for `/metrics` and `/readyz`.
pub struct Observed {
    pub stats: Arc<Stats>,
    pub engine: Arc<EngineStats>,
    pub source: Arc<SourceProgress>,
    pub registry: RegistryHandle,
    /// Set once the sink workers have started.
    delivery: OnceLock<(Arc<DeliveryStats>, Option<Outbox>)>,
    /// The outbox folder, probed for writability; `None` when no sink is configured.
    outbox_dir: Option<PathBuf>,
    /// The HTTP listener's own counters.
    pub http: Arc<http::HttpStats>,
    /// The history writer's counters, once it has started.
    history: OnceLock<Arc<crate::history::HistoryStats>>,
}

/// One readiness check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// The file or folder checked; `/readyz` shows it only to the query token's holder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Observed {
    pub fn new(
        stats: Arc<Stats>,
        engine: Arc<EngineStats>,
        source: Arc<SourceProgress>,
        registry: RegistryHandle,
        outbox_dir: Option<PathBuf>,
    ) -> Self {
        Observed {
            stats,
            engine,
            source,
            registry,
            delivery: OnceLock::new(),
            outbox_dir,
            http: Arc::default(),
            history: OnceLock::new(),
        }
    }

    /// Called once the sink workers run.
    pub fn set_delivery(&self, stats: Arc<DeliveryStats>, outbox: Option<Outbox>) {
        let _ = self.delivery.set((stats, outbox));
    }

    pub fn delivery(&self) -> Option<&(Arc<DeliveryStats>, Option<Outbox>)> {
        self.delivery.get()
    }

    pub fn set_history(&self, stats: Arc<crate::history::HistoryStats>) {
        let _ = self.history.set(stats);
    }

    pub fn history(&self) -> Option<&Arc<crate::history::HistoryStats>> {
        self.history.get()
    }

    /// What `/readyz` checks: partitions assigned, a broker connected, the
    /// registry loaded, the outbox writable.
    pub fn readiness(&self) -> Vec<Check> {
        use std::sync::atomic::Ordering;
        let mut checks = Vec::new();
        let assigned = self.source.assigned_partitions.load(Ordering::Relaxed);
        checks.push(Check {
            name: "consumer",
            ok: assigned > 0,
            detail: if assigned > 0 {
                format!("{assigned} partitions assigned")
            } else {
                "no partitions assigned (joining the group, or the broker is unreachable)".into()
            },
            path: None,
        });
        let view = self.source.client_view();
        let fresh = view
            .updated
            .is_some_and(|t| t.elapsed() <= CLIENT_VIEW_MAX_AGE);
        checks.push(Check {
            name: "broker",
            ok: fresh && view.brokers_up > 0,
            detail: match view.updated {
                None => "no statistics from librdkafka yet".into(),
                Some(_) if !fresh => "librdkafka statistics are stale".into(),
                Some(_) => format!("{} of {} brokers up", view.brokers_up, view.brokers_known),
            },
            path: None,
        });
        let apps = self.registry.snapshot().apps().len();
        checks.push(Check {
            name: "registry",
            ok: true,
            detail: format!("{apps} apps loaded"),
            path: None,
        });
        checks.push(match &self.outbox_dir {
            None => Check {
                name: "outbox",
                ok: true,
                detail: "no sinks configured".into(),
                path: None,
            },
            Some(dir) => match probe_writable(dir) {
                Ok(()) => Check {
                    name: "outbox",
                    ok: true,
                    detail: "writable".into(),
                    path: Some(dir.display().to_string()),
                },
                Err(error) => Check {
                    name: "outbox",
                    ok: false,
                    detail: format!("not writable: {error}"),
                    path: Some(dir.display().to_string()),
                },
            },
        });
        checks
    }
}

/// Creates and removes a small file, as an append to the outbox would need.
/// Each probe has a file of its own: with one shared name, a concurrent
/// `/readyz` and `/metrics` removed each other's file and reported the
/// outbox unwritable.
fn probe_writable(dir: &std::path::Path) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let n = PROBES.fetch_add(1, Ordering::Relaxed);
    let probe = dir.join(format!(".ready-probe.{}.{n}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    let written = std::io::Write::write_all(&mut file, b"ok");
    drop(file);
    let removed = std::fs::remove_file(&probe);
    written.and(removed)
}
