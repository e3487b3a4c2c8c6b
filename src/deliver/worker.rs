//! Sink workers and the delivery front door: one task per sink delivers from
//! the outbox with bounded in-flight requests and capped exponential backoff,
//! so a sink that is down delays only itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::email::EmailSink;
use super::http::HttpSink;
use super::outbox::{Outbox, OutboxError};
use super::router::Router;
use super::{DeliveryError, SinkKind, SinkSettings};
use crate::detect::Alert;

/// The `[deliver]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverSettings {
    /// Folder of the durable outbox (alert log and one cursor per sink).
    pub outbox_dir: String,
    /// Repeats for the same detector and identity within this many seconds (event
    /// time) update the open alert's count instead of paging again.
    pub group_window_secs: u64,
    /// First retry delay after a failed delivery; doubles per failure.
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    pub retry_max_ms: u64,
    /// Failed attempts after which a sink gives up on an alert (counted in
    /// `appwarden_sink_given_up_total`), so that one alert it cannot take does
    /// not hold up the ones behind it. A sink down for longer than these
    /// attempts take gives up on its oldest alerts.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// At shutdown, how long the sinks may keep delivering what is pending.
    #[serde(default = "default_drain_secs")]
    pub drain_on_shutdown_secs: u64,
    /// The sinks. None: alerts go only to `alerts.file` / `alerts.topic`.
    #[serde(default)]
    pub sinks: Vec<SinkSettings>,
}

fn default_drain_secs() -> u64 {
    5
}
fn default_max_attempts() -> u32 {
    50
}

impl DeliverSettings {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let mut names = std::collections::HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let key = format!("deliver.sinks[{i}].name");
            if sink.name.is_empty()
                || !sink
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err((key, "use letters, digits, `-` and `_` only".into()));
            }
            if !names.insert(sink.name.as_str()) {
                return Err((key, format!("`{}` is used by two sinks", sink.name)));
            }
            if sink.timeout_secs == 0 || sink.timeout_secs > 3600 {
                return Err((
                    format!("deliver.sinks[{i}].timeout_secs"),
                    "must be between 1 and 3600".into(),
                ));
            }
            if sink.max_in_flight == 0 || sink.max_in_flight > 64 {
                return Err((
                    format!("deliver.sinks[{i}].max_in_flight"),
                    "must be between 1 and 64".into(),
                ));
            }
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return Err((
                "deliver.retry_max_ms".into(),
                "retry_initial_ms must be at least 1 and at most retry_max_ms".into(),
            ));
        }
        if self.max_attempts == 0 {
            return Err(("deliver.max_attempts".into(), "must be at least 1".into()));
        }
        use crate::settings::{MAX_DURATION_SECS, at_most};
        at_most(
            "deliver.group_window_secs",
            self.group_window_secs,
            MAX_DURATION_SECS,
            "seconds (ten years)",
        )?;
        at_most(
            "deliver.retry_max_ms",
            self.retry_max_ms,
            86_400_000,
            "ms (one day)",
        )?;
        at_most(
            "deliver.drain_on_shutdown_secs",
            self.drain_on_shutdown_secs,
            3600,
            "seconds",
        )?;
        if !self.sinks.is_empty() && self.outbox_dir.trim().is_empty() {
            return Err((
                "deliver.outbox_dir".into(),
                "sinks need an outbox folder".into(),
            ));
        }
        Ok(())
    }
}

/// One sink, whatever its kind.
pub enum Sink {
    Http(Box<HttpSink>),
    Email(Box<EmailSink>),
}

impl Sink {
    pub fn new(settings: &SinkSettings) -> Result<Sink, String> {
        match settings.kind {
            SinkKind::Email { .. } => EmailSink::new(settings).map(|s| Sink::Email(Box::new(s))),
            _ => HttpSink::new(settings).map(|s| Sink::Http(Box::new(s))),
        }
    }

    pub async fn deliver(&self, alert: &Alert) -> Result<(), DeliveryError> {
        match self {
            Sink::Http(sink) => sink.deliver(alert).await,
            Sink::Email(sink) => sink.deliver(alert).await,
        }
    }
}

/// What a sink worker needs of its sink: [`Sink`] in the daemon, an in-process one in tests.
trait Deliver: Send + Sync + 'static {
    fn deliver(&self, alert: &Alert) -> impl Future<Output = Result<(), DeliveryError>> + Send;
}

impl Deliver for Sink {
    fn deliver(&self, alert: &Alert) -> impl Future<Output = Result<(), DeliveryError>> + Send {
        Sink::deliver(self, alert)
    }
}

/// How a worker retries failed deliveries.
#[derive(Debug, Clone, Copy)]
struct Retry {
    initial: Duration,
    max: Duration,
    max_attempts: u32,
}

/// Delivery counters, per configured sink (sinks are few, so a fine label).
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub sinks: Vec<Arc<SinkCounters>>,
}

/// What one sink did.
#[derive(Debug)]
pub struct SinkCounters {
    pub name: String,
    /// `webhook`, `slack`, `pagerduty`, `email` or `revocation`.
    pub kind: &'static str,
    pub delivered: AtomicU64,
    /// Failed attempts that will be retried (timeouts, 5xx, refused connections).
    pub retries: AtomicU64,
    /// Alerts the sink refused for good (4xx, bad address) or that failed
    /// `deliver.max_attempts` times; not retried.
    pub given_up: AtomicU64,
}

impl DeliveryStats {
    fn for_sinks(sinks: &[SinkSettings]) -> Self {
        DeliveryStats {
            sinks: sinks
                .iter()
                .map(|s| {
                    Arc::new(SinkCounters {
                        name: s.name.clone(),
                        kind: s.kind.as_str(),
                        delivered: AtomicU64::new(0),
                        retries: AtomicU64::new(0),
                        given_up: AtomicU64::new(0),
                    })
                })
                .collect(),
        }
    }

    /// Failed attempts to be retried, over all sinks.
    pub fn retries(&self) -> u64 {
        self.sinks
            .iter()
            .map(|c| c.retries.load(Ordering::Relaxed))
            .sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("deliver.sinks[{sink}]: {message}")]
    Sink { sink: String, message: String },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// The delivery path of the daemon: router, outbox, and one worker per sink.
pub struct Delivery {
    router: Router,
    outbox: Option<Outbox>,
    wake: Arc<Notify>,
    workers: Vec<JoinHandle<()>>,
    stats: Arc<DeliveryStats>,
    shutdown: CancellationToken,
}

impl Delivery {
    /// Opens the outbox and starts the sink workers (inside a tokio runtime).
    /// The workers run until [`Delivery::stop`].
    pub fn start(settings: &DeliverSettings) -> Result<Delivery, DeliverError> {
        let shutdown = CancellationToken::new();
        let router = Router::new(settings.group_window_secs, &settings.sinks);
        let stats = Arc::new(DeliveryStats::for_sinks(&settings.sinks));
        let wake = Arc::new(Notify::new());
        if settings.sinks.is_empty() {
            return Ok(Delivery {
                router,
                outbox: None,
                wake,
                workers: Vec::new(),
                stats,
                shutdown,
            });
        }
        let names: Vec<String> = settings.sinks.iter().map(|s| s.name.clone()).collect();
        let outbox = Outbox::open(std::path::Path::new(settings.outbox_dir.trim()), &names)?;
        let retry = Retry {
            initial: Duration::from_millis(settings.retry_initial_ms),
            max: Duration::from_millis(settings.retry_max_ms),
            max_attempts: settings.max_attempts,
        };
        let mut workers = Vec::new();
        for (sink_settings, counters) in settings.sinks.iter().zip(&stats.sinks) {
            let sink = Sink::new(sink_settings).map_err(|message| DeliverError::Sink {
                sink: sink_settings.name.clone(),
                message,
            })?;
            workers.push(tokio::spawn(run_sink(
                Arc::new(sink),
                sink_settings.clone(),
                outbox.clone(),
                retry,
                wake.clone(),
                counters.clone(),
                shutdown.clone(),
            )));
        }
        Ok(Delivery {
            router,
            outbox: Some(outbox),
            wake,
            workers,
            stats,
            shutdown,
        })
    }

    /// Groups the alert, records actions on it, and queues it for the sinks when it pages.
    pub fn submit(&mut self, alert: &mut Alert) -> Result<(), DeliverError> {
        let page = self.router.route(alert);
        if page && let Some(outbox) = &self.outbox {
            outbox.append(alert)?;
        }
        Ok(())
    }

    /// Makes queued alerts durable, then wakes the sink workers.
    pub fn sync(&self) -> Result<(), DeliverError> {
        if let Some(outbox) = &self.outbox {
            outbox.sync()?;
            self.wake.notify_waiters();
        }
        Ok(())
    }

    pub fn outbox(&self) -> Option<&Outbox> {
        self.outbox.as_ref()
    }

    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.stats.clone()
    }

    /// Gives the sinks up to `grace` to deliver what is pending, then stops the
    /// workers; whatever is still pending stays in the outbox for the next start.
    pub async fn stop(self, grace: Duration) {
        if let Some(outbox) = &self.outbox {
            let deadline = tokio::time::Instant::now() + grace;
            while outbox.depth() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let left = outbox.depth();
            if left > 0 {
                tracing::warn!(
                    pending = left,
                    "stopping with undelivered alerts; they stay in the outbox"
                );
            }
        }
        self.shutdown.cancel();
        for worker in self.workers {
            let _ = worker.await;
        }
    }
}

/// Delivers one sink's backlog until shutdown.
async fn run_sink<S: Deliver>(
    sink: Arc<S>,
    settings: SinkSettings,
    outbox: Outbox,
    Retry {
        initial,
        max,
        max_attempts,
    }: Retry,
    wake: Arc<Notify>,
    stats: Arc<SinkCounters>,
    shutdown: CancellationToken,
) {
    let name = settings.name.clone();
    let mut failures: u32 = 0;
    // Failed attempts per alert still being retried (since this start).
    let mut failed_attempts: HashMap<u64, u32> = HashMap::new();
    loop {
        let batch = outbox.take(&name, settings.max_in_flight);
        if batch.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => continue,
                // Also look again now and then, in case a wake-up came between take and wait.
                _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
            }
        }
        let mut attempts = JoinSet::new();
        // The alert behind each attempt, by task: a panicked attempt still gives its slot back.
        let mut flying = HashMap::new();
        for (seq, alert) in batch {
            if !settings.wants(&alert) {
                if let Err(error) = outbox.finish(&name, seq) {
                    tracing::error!(sink = %name, %error, "cannot record a skipped alert");
                }
                continue;
            }
            let sink = sink.clone();
            let timeout = settings.timeout();
            let attempt = alert.clone();
            let task = attempts.spawn(async move {
                match tokio::time::timeout(timeout, sink.deliver(&attempt)).await {
                    Ok(result) => result,
                    Err(_) => Err(DeliveryError::Retry(format!(
                        "no answer within {timeout:?}"
                    ))),
                }
            });
            flying.insert(task.id(), (seq, alert));
        }
        let mut retry = false;
        loop {
            let joined = tokio::select! {
                _ = shutdown.cancelled() => return,
                joined = attempts.join_next_with_id() => joined,
            };
            let Some(joined) = joined else { break };
            let (task, result) = match joined {
                Ok((task, result)) => (task, result),
                // A panic fails the attempt like an error (a repeatable one ends in a give-up).
                Err(error) => (
                    error.id(),
                    Err(DeliveryError::Retry(format!("the attempt failed: {error}"))),
                ),
            };
            let Some((seq, alert)) = flying.remove(&task) else {
                continue;
            };
            let result = match result {
                Err(DeliveryError::Retry(message)) => {
                    let failed = failed_attempts.entry(seq).or_default();
                    *failed += 1;
                    if *failed >= max_attempts {
                        Err(DeliveryError::Fatal(format!(
                            "{message}; failed {failed} times (deliver.max_attempts)"
                        )))
                    } else {
                        Err(DeliveryError::Retry(message))
                    }
                }
                other => other,
            };
            match result {
                Ok(()) => {
                    failed_attempts.remove(&seq);
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Err(error) = outbox.finish(&name, seq) {
                        tracing::error!(sink = %name, %error, "cannot record a delivery");
                    }
                }
                Err(DeliveryError::Fatal(message)) => {
                    failed_attempts.remove(&seq);
                    stats.given_up.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(sink = %name, alert = %alert.id, %message, "giving up on the alert for this sink");
                    if let Err(error) = outbox.finish(&name, seq) {
                        tracing::error!(sink = %name, %error, "cannot record a given-up alert");
                    }
                }
                Err(DeliveryError::Retry(message)) => {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(sink = %name, alert = %alert.id, %message, "delivery failed; will retry");
                    outbox.release(&name, seq);
                    retry = true;
                }
            }
        }
        if retry {
            failures = failures.saturating_add(1);
            let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
            let delay = initial.saturating_mul(factor).min(max);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        } else {
            failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::test_support::{open_with_alerts, take_summaries};
    use crate::detect::Severity;
    use crate::settings::SecretRef;
    use tokio::sync::mpsc;

    /// An in-process sink that reports every attempt and cannot take one alert:
    /// it answers a retryable error for it, or panics.
    struct Refusing {
        summary: &'static str,
        panics: bool,
        attempts: mpsc::UnboundedSender<String>,
    }

    impl Deliver for Refusing {
        async fn deliver(&self, alert: &Alert) -> Result<(), DeliveryError> {
            let _ = self.attempts.send(alert.summary.clone());
            if alert.summary != self.summary {
                return Ok(());
            }
            if self.panics {
                panic!("the sink cannot format {}", alert.summary);
            }
            Err(DeliveryError::Retry("HTTP 500".into()))
        }
    }

    /// Alert 0 cannot be delivered, alert 1 can, through a sink with one slot:
    /// alert 0 is given up after `max_attempts`, for good, and alert 1 goes out.
    async fn one_bad_alert_does_not_hold_up_the_next(panics: bool) {
        let dir = tempfile::tempdir().unwrap();
        let sinks = vec!["s".to_string()];
        let outbox = open_with_alerts(dir.path(), &sinks, 2);
        let (attempts, mut seen) = mpsc::unbounded_channel();
        let sink = Refusing {
            summary: "alert 0",
            panics,
            attempts,
        };
        let settings = SinkSettings {
            name: "s".into(),
            min_severity: Severity::Low,
            timeout_secs: 5,
            max_in_flight: 1,
            kind: SinkKind::Webhook {
                url: "http://127.0.0.1:9/hook".into(),
                signing_key: SecretRef {
                    env: Some("UNUSED".into()),
                    file: None,
                },
            },
        };
        let retry = Retry {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(1),
            max_attempts: 3,
        };
        let stats = DeliveryStats::for_sinks(std::slice::from_ref(&settings)).sinks[0].clone();
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(run_sink(
            Arc::new(sink),
            settings,
            outbox.clone(),
            retry,
            Arc::new(Notify::new()),
            stats.clone(),
            shutdown.clone(),
        ));
        let mut tried = Vec::new();
        let next_one = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(summary) = seen.recv().await {
                tried.push(summary);
                if tried.last().is_some_and(|s| s == "alert 1") {
                    break;
                }
            }
        })
        .await;
        assert!(
            next_one.is_ok(),
            "alert 1 never tried; alert 0 tried {} times",
            tried.len()
        );
        assert_eq!(tried, ["alert 0", "alert 0", "alert 0", "alert 1"]);
        assert_eq!(stats.given_up.load(Ordering::Relaxed), 1);
        shutdown.cancel();
        worker.await.unwrap();
        drop(outbox);
        let outbox = Outbox::open(dir.path(), &sinks).unwrap();
        assert!(
            !take_summaries(&outbox, "s").contains(&"alert 0".to_string()),
            "given up for good, not retried after a restart"
        );
    }

    #[tokio::test]
    async fn an_alert_that_always_fails_is_given_up_after_max_attempts() {
        one_bad_alert_does_not_hold_up_the_next(false).await;
    }

    #[tokio::test]
    async fn an_attempt_that_panics_gives_its_slot_back() {
        one_bad_alert_does_not_hold_up_the_next(true).await;
    }
}
