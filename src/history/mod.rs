//! History: events and alerts as Parquet files (zstd), partitioned hive-style, for SQL.
//!
//! Layout under the root (a folder or `s3://bucket/prefix`):
//! `events/source=<product>/day=YYYY-MM-DD/hour=HH/part-….parquet` and
//! `alerts/day=YYYY-MM-DD/hour=HH/part-….parquet` (by event time and by
//! alert window end). Athena, Trino, Spark and DuckDB read this layout as is.
//!
//! The [`HistoryWriter`] buffers rows and encodes them on its own thread, so
//! Parquet encoding never runs on the async runtime. A flush writes one file
//! per open partition (several when its text passes `history.flush_max_mib`),
//! each whole or not at all; the Kafka source stores
//! input offsets only after the flush that made their rows durable. Retention
//! and the compaction of closed hours into few files run on a thread of their
//! own ([`upkeep`]), so that neither holds up a flush.

pub mod compact;
pub mod schema;
pub mod store;
pub mod upkeep;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, Timelike, Utc};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::detect::{Alert, Flag};
use crate::event::{NormalizedEvent, Product};
pub use schema::EventRow;
pub use store::{S3Options, Store};

/// `[history]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySettings {
    /// Root of the history: a folder (created if missing) or `s3://bucket/prefix`
    /// (credentials from the `AWS_*` environment variables). Empty: no history.
    #[serde(default)]
    pub path: String,
    /// S3-compatible endpoint URL (MinIO, Ceph…); empty for AWS.
    #[serde(default)]
    pub s3_endpoint: String,
    /// S3 region; empty: `AWS_REGION` or the SDK default.
    #[serde(default)]
    pub s3_region: String,
    /// Allow plain-HTTP endpoints (local MinIO only).
    #[serde(default)]
    pub s3_allow_http: bool,
    /// Files are closed (and input offsets stored) at least this often.
    pub flush_interval_secs: u64,
    /// …or as soon as this many events are buffered.
    pub flush_max_events: usize,
    /// …or as soon as their text (strings, `raw_data` when kept) reaches this many
    /// MiB; a flush also cuts each partition into files of at most this much text,
    /// since one Arrow string column of one batch holds at most 2 GiB (1–1024).
    #[serde(default = "default_flush_max_mib")]
    pub flush_max_mib: u64,
    /// The daemon deletes partitions whose hour ended more than this many days before
    /// the wall clock; 0 keeps all. `replay` applies only its own `--retention-days`.
    pub retention_days: u64,
    /// An hour partition's files are merged into few this many seconds after the
    /// hour ends (events arriving later add a file, merged at a later pass);
    /// 0: never. At most 2592000 (30 days).
    #[serde(default = "default_compact_after_secs")]
    pub compact_after_secs: u64,
    /// Keep the vendor record of each event in the `raw_data` column (about 4× the size on disk).
    #[serde(default)]
    pub raw_data: bool,
    /// zstd level for Parquet pages (1–22).
    pub zstd_level: i32,
}

fn default_flush_max_mib() -> u64 {
    256
}

fn default_compact_after_secs() -> u64 {
    3600
}

impl HistorySettings {
    pub fn enabled(&self) -> bool {
        !self.path.trim().is_empty()
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.flush_interval_secs == 0 || self.flush_interval_secs > 3600 {
            return Err((
                "history.flush_interval_secs".into(),
                "must be between 1 and 3600".into(),
            ));
        }
        if self.flush_max_events == 0 {
            return Err((
                "history.flush_max_events".into(),
                "must be at least 1".into(),
            ));
        }
        if !(1..=1024).contains(&self.flush_max_mib) {
            return Err((
                "history.flush_max_mib".into(),
                format!(
                    "must be between 1 and 1024 (MiB), not {}",
                    self.flush_max_mib
                ),
            ));
        }
        crate::settings::at_most(
            "history.retention_days",
            self.retention_days,
            36_500,
            "days (100 years)",
        )?;
        crate::settings::at_most(
            "history.compact_after_secs",
            self.compact_after_secs,
            30 * 86_400,
            "seconds (30 days)",
        )?;
        if !(1..=22).contains(&self.zstd_level) {
            return Err((
                "history.zstd_level".into(),
                "must be between 1 and 22".into(),
            ));
        }
        let path = self.path.trim();
        if path.contains("://") && !path.starts_with("s3://") && !path.starts_with("file://") {
            return Err((
                "history.path".into(),
                format!("`{path}`: use a local folder or an s3://bucket/prefix URL"),
            ));
        }
        Ok(())
    }

    pub fn s3(&self) -> S3Options {
        S3Options {
            endpoint: self.s3_endpoint.trim().to_string(),
            region: self.s3_region.trim().to_string(),
            allow_http: self.s3_allow_http,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history settings: {0}")]
    Config(String),
    #[error("history file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("history object store: {0}")]
    Remote(String),
    #[error("encoding Parquet: {0}")]
    Encode(String),
    #[error("history compaction: {0}")]
    Compaction(String),
    #[error("the history writer thread is gone")]
    Gone,
}

impl HistoryError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        HistoryError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Counters of the writer, for metrics and the demo summary.
#[derive(Debug, Default)]
pub struct HistoryStats {
    pub events_written: AtomicU64,
    pub alerts_written: AtomicU64,
    pub files_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub files_expired: AtomicU64,
    /// Files compaction merged away…
    pub files_merged: AtomicU64,
    /// …and the files it wrote in their place.
    pub compacted_files_written: AtomicU64,
    /// Retention or compaction steps that failed (each logged, retried later).
    pub upkeep_failures: AtomicU64,
    /// Start of the oldest hour partition an event was written to (for `replay`'s
    /// note on how its history will age under retention).
    pub oldest_event_hour: std::sync::Mutex<Option<DateTime<Utc>>>,
}

/// The wall clock that retention and compaction are measured against. Only they
/// read it (partitions are by event time); tests pass a clock of their own.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The machine's clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// What one flush wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlushReport {
    pub files: usize,
    pub events: usize,
    pub alerts: usize,
    pub bytes: usize,
}

enum Msg {
    Events(Vec<EventRow>),
    Alerts(Vec<Alert>),
    Flush(oneshot::Sender<Result<FlushReport, HistoryError>>),
}

/// A flush handed to the writer thread (see [`HistoryWriter::start_flush`]).
#[must_use = "the rows are durable only once `written` returns Ok"]
pub struct PendingFlush(oneshot::Receiver<Result<FlushReport, HistoryError>>);

impl PendingFlush {
    /// Waits until the flush's files are written.
    pub async fn written(self) -> Result<FlushReport, HistoryError> {
        self.0.await.map_err(|_| HistoryError::Gone)?
    }
}

/// Handle to the writer thread. Dropping it flushes what is buffered and stops the thread.
pub struct HistoryWriter {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
    buffered: usize,
    /// Text bytes of the buffered rows (see [`EventRow::text_bytes`]).
    buffered_bytes: usize,
    since: Option<Instant>,
    interval: Duration,
    max_events: usize,
    max_bytes: usize,
    raw_data: bool,
    stats: Arc<HistoryStats>,
    store: Store,
    upkeep: Option<upkeep::UpkeepHandle>,
}

impl HistoryWriter {
    /// Starts the writer; retention (if set) is measured against the system clock.
    pub fn start(settings: &HistorySettings) -> Result<HistoryWriter, HistoryError> {
        Self::start_with_clock(settings, system_clock())
    }

    /// Starts the writer with retention measured against `clock`.
    pub fn start_with_clock(
        settings: &HistorySettings,
        clock: Clock,
    ) -> Result<HistoryWriter, HistoryError> {
        let store = Store::open(&settings.path, &settings.s3())?;
        store.remove_stale_staging();
        let level = ZstdLevel::try_new(settings.zstd_level)
            .map_err(|e| HistoryError::Config(format!("history.zstd_level: {e}")))?;
        let stats = Arc::new(HistoryStats::default());
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(256 * 1024))
            .build();
        let upkeep = upkeep::UpkeepHandle::start(upkeep::Upkeep::new(
            upkeep::Plan {
                retention: (settings.retention_days > 0)
                    .then(|| chrono::Duration::days(settings.retention_days as i64)),
                compact_after: (settings.compact_after_secs > 0)
                    .then(|| chrono::Duration::seconds(settings.compact_after_secs as i64)),
                clock,
            },
            compact::Compactor::new(store.clone(), properties.clone(), max_bytes(settings)),
            object_store_runtime(&store)?,
            stats.clone(),
        ))?;
        let (tx, rx) = mpsc::channel();
        let mut thread = WriterThread {
            store: store.clone(),
            events: BTreeMap::new(),
            alerts: BTreeMap::new(),
            properties,
            raw_data: settings.raw_data,
            max_bytes: max_bytes(settings),
            upkeep: upkeep.sender(),
            sequence: 0,
            stats: stats.clone(),
            runtime: object_store_runtime(&store)?,
        };
        let handle = std::thread::Builder::new()
            .name("history".into())
            .spawn(move || thread.run(rx))
            .map_err(|e| HistoryError::io(Path::new("history thread"), e))?;
        Ok(HistoryWriter {
            tx: Some(tx),
            thread: Some(handle),
            buffered: 0,
            buffered_bytes: 0,
            since: None,
            interval: Duration::from_secs(settings.flush_interval_secs),
            max_events: settings.flush_max_events,
            max_bytes: max_bytes(settings),
            raw_data: settings.raw_data,
            stats,
            store,
            upkeep: Some(upkeep),
        })
    }

    /// Runs retention and compaction now, on the upkeep thread (they also run
    /// there by themselves), and waits for what they did.
    pub async fn upkeep_now(&self) -> Result<upkeep::UpkeepReport, HistoryError> {
        self.upkeep
            .as_ref()
            .ok_or(HistoryError::Gone)?
            .run_now()
            .await
    }

    pub fn stats(&self) -> Arc<HistoryStats> {
        self.stats.clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn send(&self, msg: Msg) -> Result<(), HistoryError> {
        self.tx
            .as_ref()
            .ok_or(HistoryError::Gone)?
            .send(msg)
            .map_err(|_| HistoryError::Gone)
    }

    /// Buffers events (with the findings each raised) for the next flush.
    pub fn events(&mut self, rows: Vec<EventRow>) -> Result<(), HistoryError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.buffered += rows.len();
        self.buffered_bytes = rows
            .iter()
            .map(|r| r.text_bytes(self.raw_data))
            .fold(self.buffered_bytes, usize::saturating_add);
        self.since.get_or_insert_with(Instant::now);
        self.send(Msg::Events(rows))
    }

    /// Buffers alerts for the next flush.
    pub fn alerts(&mut self, alerts: &[Alert]) -> Result<(), HistoryError> {
        if alerts.is_empty() {
            return Ok(());
        }
        self.buffered_bytes = alerts
            .iter()
            .map(schema::alert_text_bytes)
            .fold(self.buffered_bytes, usize::saturating_add);
        self.since.get_or_insert_with(Instant::now);
        self.send(Msg::Alerts(alerts.to_vec()))
    }

    /// Whether buffered rows are due to be written (too many, too much text, or
    /// waiting too long).
    pub fn due(&self) -> bool {
        self.buffered >= self.max_events
            || self.buffered_bytes >= self.max_bytes
            || self.since.is_some_and(|s| s.elapsed() >= self.interval)
    }

    /// Whether twice the event rows (or text) that make a flush due are buffered: the
    /// writer is behind, and the caller should wait for it rather than buffer more.
    pub fn overdue(&self) -> bool {
        self.buffered >= self.max_events.saturating_mul(2)
            || self.buffered_bytes >= self.max_bytes.saturating_mul(2)
    }

    /// Whether anything is buffered.
    pub fn pending(&self) -> bool {
        self.since.is_some()
    }

    /// When the buffered rows fall due by time, if any are buffered.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|s| s + self.interval)
    }

    /// Writes every buffered row; returns once the files are durable.
    pub async fn flush(&mut self) -> Result<FlushReport, HistoryError> {
        self.start_flush()?.written().await
    }

    /// Hands every buffered row to the writer thread and returns at once; the
    /// rows are durable when [`PendingFlush::written`] returns. Flushes finish in
    /// the order they were started. The writer is asked even with nothing new
    /// buffered: rows of a failed or unfinished earlier flush are only in its memory.
    pub fn start_flush(&mut self) -> Result<PendingFlush, HistoryError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Flush(reply))?;
        self.buffered = 0;
        self.buffered_bytes = 0;
        self.since = None;
        Ok(PendingFlush(rx))
    }

    /// The blocking form of [`HistoryWriter::flush`], for code outside the runtime.
    pub fn flush_blocking(&mut self) -> Result<FlushReport, HistoryError> {
        let pending = self.start_flush()?;
        pending.0.blocking_recv().map_err(|_| HistoryError::Gone)?
    }
}

impl Drop for HistoryWriter {
    fn drop(&mut self) {
        // Closing the channel makes the thread write what it holds and stop.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Then upkeep compacts the closed hours those last files went to.
        drop(self.upkeep.take());
    }
}

/// A small runtime for the object-store calls of one history thread (none for
/// a local folder).
fn object_store_runtime(store: &Store) -> Result<Option<store::Runtime>, HistoryError> {
    match store {
        Store::Local(_) => Ok(None),
        Store::Remote { .. } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(Some)
            .map_err(|e| HistoryError::io(Path::new("history runtime"), e)),
    }
}

/// `history.flush_max_mib` in bytes.
fn max_bytes(settings: &HistorySettings) -> usize {
    usize::try_from(settings.flush_max_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
}

/// Cuts `rows` into runs of at most `max_bytes` of text each (a row larger than
/// that alone makes a run), in order.
fn cut_by_bytes<T>(rows: Vec<T>, max_bytes: usize, bytes: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut size = 0usize;
    for row in rows {
        let len = bytes(&row);
        if !current.is_empty() && size.saturating_add(len) > max_bytes {
            runs.push(std::mem::take(&mut current));
            size = 0;
        }
        size = size.saturating_add(len);
        current.push(row);
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

/// What [`WriterThread::write_partitions`] wrote, and the rows it left buffered.
struct Written<K, T> {
    files: usize,
    rows: usize,
    bytes: usize,
    left: BTreeMap<K, Vec<T>>,
}

impl<K, T> Written<K, T> {
    fn nothing(left: BTreeMap<K, Vec<T>>) -> Self {
        Written {
            files: 0,
            rows: 0,
            bytes: 0,
            left,
        }
    }

    /// Adds the files and bytes to `report` and the rows to `rows_written`;
    /// returns the rows left buffered.
    fn count(self, report: &mut FlushReport, rows_written: &AtomicU64) -> BTreeMap<K, Vec<T>> {
        report.files += self.files;
        report.bytes += self.bytes;
        rows_written.fetch_add(self.rows as u64, Ordering::Relaxed);
        self.left
    }
}

/// The hour partition of an event: `(product, day, hour)`.
type EventPartition = (Product, chrono::NaiveDate, u32);
type AlertPartition = (chrono::NaiveDate, u32);

struct WriterThread {
    store: Store,
    events: BTreeMap<EventPartition, Vec<EventRow>>,
    alerts: BTreeMap<AlertPartition, Vec<Alert>>,
    properties: WriterProperties,
    raw_data: bool,
    /// Text bytes of one file at most (`history.flush_max_mib`).
    max_bytes: usize,
    /// Told of each partition written to, for compaction.
    upkeep: Option<mpsc::Sender<upkeep::Request>>,
    sequence: u64,
    stats: Arc<HistoryStats>,
    runtime: Option<store::Runtime>,
}

fn hour_of(time: DateTime<Utc>) -> (chrono::NaiveDate, u32) {
    (time.date_naive(), time.hour())
}

impl WriterThread {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Events(rows) => {
                    for row in rows {
                        let (day, hour) = hour_of(row.event.time);
                        self.events
                            .entry((row.event.product, day, hour))
                            .or_default()
                            .push(row);
                    }
                }
                Msg::Alerts(alerts) => {
                    for alert in alerts {
                        self.alerts
                            .entry(hour_of(alert.window_end))
                            .or_default()
                            .push(alert);
                    }
                }
                Msg::Flush(reply) => {
                    let _ = reply.send(self.flush());
                }
            }
        }
        // The handle is gone: write what is left rather than lose it.
        if let Err(error) = self.flush() {
            tracing::error!(%error, "history rows lost at shutdown");
        }
    }

    fn encode(&self, batch: &RecordBatch) -> Result<Vec<u8>, HistoryError> {
        let mut bytes = Vec::new();
        let mut writer =
            ArrowWriter::try_new(&mut bytes, batch.schema(), Some(self.properties.clone()))
                .map_err(|e| HistoryError::Encode(e.to_string()))?;
        writer
            .write(batch)
            .map_err(|e| HistoryError::Encode(e.to_string()))?;
        writer
            .close()
            .map_err(|e| HistoryError::Encode(e.to_string()))?;
        Ok(bytes)
    }

    fn file_name(&mut self) -> String {
        self.sequence += 1;
        format!(
            "part-{}-{}-{:05}.parquet",
            Utc::now().format("%Y%m%dT%H%M%S%3f"),
            std::process::id(),
            self.sequence
        )
    }

    fn write(&mut self, relative: String, batch: &RecordBatch) -> Result<usize, HistoryError> {
        let bytes = self.encode(batch)?;
        let size = bytes.len();
        self.store.put(&relative, bytes, self.runtime.as_ref())?;
        if let (Some(upkeep), Some((folder, _))) = (&self.upkeep, relative.rsplit_once('/')) {
            let _ = upkeep.send(upkeep::Request::Written(folder.to_string()));
        }
        self.stats.files_written.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_written
            .fetch_add(size as u64, Ordering::Relaxed);
        Ok(size)
    }

    /// Writes the buffered partitions, each as files of at most `max_bytes` of text.
    /// The rows of a file that failed, and of every file after it, stay buffered (and
    /// the error is returned) so that nothing is lost.
    fn flush(&mut self) -> Result<FlushReport, HistoryError> {
        let mut report = FlushReport::default();
        let events = std::mem::take(&mut self.events);
        if let Some((_, day, hour)) = events.keys().min_by_key(|(_, day, hour)| (*day, *hour))
            && let Some(start) = day.and_hms_opt(*hour, 0, 0).map(|t| t.and_utc())
            && let Ok(mut oldest) = self.stats.oldest_event_hour.lock()
        {
            *oldest = Some(oldest.map_or(start, |o| o.min(start)));
        }
        let raw_data = self.raw_data;
        let (events, mut failure) = self.write_partitions(
            events,
            |r| r.text_bytes(raw_data),
            |(product, day, hour), rows| {
                let relative = format!(
                    "events/source={}/day={}/hour={hour:02}",
                    product.as_str(),
                    day.format("%Y-%m-%d")
                );
                let batch = schema::events_batch(rows, raw_data);
                (relative, batch)
            },
        );
        report.events += events.rows;
        self.events = events.count(&mut report, &self.stats.events_written);
        let alerts = std::mem::take(&mut self.alerts);
        let alerts = if failure.is_some() {
            Written::nothing(alerts)
        } else {
            let (alerts, error) =
                self.write_partitions(alerts, schema::alert_text_bytes, |(day, hour), rows| {
                    let relative = format!("alerts/day={}/hour={hour:02}", day.format("%Y-%m-%d"));
                    (relative, schema::alerts_batch(rows))
                });
            failure = error;
            alerts
        };
        report.alerts += alerts.rows;
        self.alerts = alerts.count(&mut report, &self.stats.alerts_written);
        if let Some(error) = failure {
            return Err(error);
        }
        Ok(report)
    }

    /// Writes each partition as files of at most `max_bytes` of text (by `bytes`
    /// per row), each file's folder and batch from `batch`. At the first failure,
    /// the rows of that file and of every file after it are left, with the error.
    fn write_partitions<K: Ord + Copy, T>(
        &mut self,
        partitions: BTreeMap<K, Vec<T>>,
        bytes: impl Fn(&T) -> usize,
        batch: impl Fn(K, &[T]) -> (String, Result<RecordBatch, ArrowError>),
    ) -> (Written<K, T>, Option<HistoryError>) {
        let mut written = Written::nothing(BTreeMap::new());
        let mut failure = None;
        for (partition, rows) in partitions {
            if failure.is_some() {
                written.left.insert(partition, rows);
                continue;
            }
            let mut runs = cut_by_bytes(rows, self.max_bytes, &bytes).into_iter();
            while let Some(run) = runs.next() {
                let (folder, result) = batch(partition, &run);
                let result = result
                    .map_err(|e| HistoryError::Encode(e.to_string()))
                    .and_then(|batch| {
                        let name = self.file_name();
                        self.write(format!("{folder}/{name}"), &batch)
                    });
                match result {
                    Ok(size) => {
                        written.files += 1;
                        written.rows += run.len();
                        written.bytes += size;
                    }
                    Err(error) => {
                        // The files already written hold their rows; the rest stays buffered.
                        let left = written.left.entry(partition).or_default();
                        left.extend(run);
                        left.extend(runs.by_ref().flatten());
                        failure = Some(error);
                    }
                }
            }
        }
        (written, failure)
    }
}

/// The year, month and day of `time` as the `day=` partition value.
pub fn day_value(time: DateTime<Utc>) -> String {
    format!("{:04}-{:02}-{:02}", time.year(), time.month(), time.day())
}

/// Rows for the history from a batch's events and the flags the engine returned for them.
pub fn event_rows(events: &[Arc<NormalizedEvent>], flags: &[(usize, Flag)]) -> Vec<EventRow> {
    let mut rows: Vec<EventRow> = events
        .iter()
        .map(|event| EventRow {
            event: event.clone(),
            flags: Vec::new(),
        })
        .collect();
    for (index, flag) in flags {
        if let Some(row) = rows.get_mut(*index) {
            row.flags.push(flag.clone());
        }
    }
    rows
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{Category, NormalizedEvent, Product};

    fn settings(path: &Path) -> HistorySettings {
        let (defaults, _) =
            crate::settings::Settings::load_with_env(None, Vec::new()).expect("defaults");
        HistorySettings {
            path: path.display().to_string(),
            ..defaults.history
        }
    }

    /// A Kong event of 2026-11-20 10:`minute`, with no findings.
    pub(crate) fn row(minute: u32) -> EventRow {
        let time = chrono::DateTime::parse_from_rfc3339(&format!("2026-11-20T10:{minute:02}:00Z"))
            .expect("time")
            .with_timezone(&Utc);
        EventRow {
            event: Arc::new(NormalizedEvent::new(
                time,
                Product::Kong,
                Category::ApiCall,
                "GET",
            )),
            flags: Vec::new(),
        }
    }

    fn clock_at(time: &str) -> Clock {
        let now = chrono::DateTime::parse_from_rfc3339(time)
            .expect("time")
            .with_timezone(&Utc);
        Arc::new(move || now)
    }

    fn event_files(root: &Path) -> usize {
        store::count_files(&root.join("events"))
    }

    #[tokio::test]
    async fn retention_is_measured_against_the_injected_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = settings(dir.path());
        settings.retention_days = 30;
        // The rows' hour (2026-11-20 10:00) ends 29 days and 23 hours before this clock.
        let writer_at =
            |now: &str| HistoryWriter::start_with_clock(&settings, clock_at(now)).expect("writer");
        let mut young = writer_at("2026-12-20T10:00:00Z");
        young.events(vec![row(1), row(2)]).expect("buffered");
        young.flush().await.expect("written");
        assert_eq!(event_files(dir.path()), 1, "inside the retention period");
        assert_eq!(
            *young.stats().oldest_event_hour.lock().expect("lock"),
            Some("2026-11-20T10:00:00Z".parse().expect("time"))
        );

        // A day later the hour is past retention: upkeep deletes it.
        let old = writer_at("2026-12-21T12:00:00Z");
        let report = old.upkeep_now().await.expect("upkeep runs");
        assert_eq!(event_files(dir.path()), 0, "expired by the later clock");
        assert_eq!(
            report.expired_files, 0,
            "the pass at start expired it already"
        );
        assert_eq!(old.stats().files_expired.load(Ordering::Relaxed), 1);
    }

    /// The files of each hour folder under `root`'s events, by folder.
    fn files_per_hour(root: &Path) -> BTreeMap<String, usize> {
        let mut hours = BTreeMap::new();
        let mut stack = vec![root.join("events")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(folder) = path.parent().and_then(|p| p.strip_prefix(root).ok()) {
                    *hours.entry(folder.display().to_string()).or_default() += 1;
                }
            }
        }
        hours
    }

    /// Every event row of the history at `root`, read back: (hour folder, minute).
    fn rows_read_back(root: &Path) -> Vec<(String, u32)> {
        let store = Store::open(&root.display().to_string(), &S3Options::default()).expect("store");
        let mut rows = Vec::new();
        for (folder, _) in files_per_hour(root) {
            for file in store.list_files(&folder, None).expect("list") {
                store
                    .read_parquet(&format!("{folder}/{}", file.name), None, |batch| {
                        let times = batch
                            .column_by_name("time")
                            .and_then(|c| {
                                c.as_any()
                                    .downcast_ref::<datafusion::arrow::array::TimestampMillisecondArray>()
                            })
                            .expect("a time column");
                        for time in times.iter().flatten() {
                            let time = DateTime::from_timestamp_millis(time).expect("time");
                            rows.push((folder.clone(), time.minute()));
                        }
                        Ok(())
                    })
                    .expect("readable");
            }
        }
        rows.sort();
        rows
    }

    /// An event of 2026-11-20 at `hour`:`minute`.
    fn row_at(hour: u32, minute: u32) -> EventRow {
        let mut row = row(minute);
        let mut event = (*row.event).clone();
        event.time += chrono::Duration::hours(i64::from(hour) - 10);
        row.event = Arc::new(event);
        row
    }

    #[tokio::test]
    async fn a_closed_hour_is_merged_into_one_file_holding_every_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = settings(dir.path());
        assert_eq!(settings.compact_after_secs, 3600, "the default");
        // 12:00: hour 10 ended an hour ago (closed), hour 11 a moment ago (open).
        let mut writer =
            HistoryWriter::start_with_clock(&settings, clock_at("2026-11-20T12:00:00Z"))
                .expect("writer");
        for flush in 0..5 {
            writer
                .events(vec![
                    row_at(10, flush * 2),
                    row_at(10, flush * 2 + 1),
                    row_at(11, flush),
                ])
                .expect("buffered");
            writer.flush().await.expect("written");
        }
        let before = rows_read_back(dir.path());
        let hour_10 = "events/source=kong/day=2026-11-20/hour=10".to_string();
        let hour_11 = "events/source=kong/day=2026-11-20/hour=11".to_string();
        assert_eq!(
            files_per_hour(dir.path()),
            BTreeMap::from([(hour_10.clone(), 5), (hour_11.clone(), 5)])
        );

        let report = writer.upkeep_now().await.expect("upkeep runs");
        assert_eq!(report.compacted_partitions, 1, "{report:?}");
        assert_eq!((report.merged_files, report.compacted_files), (5, 1));
        assert_eq!(
            files_per_hour(dir.path()),
            BTreeMap::from([(hour_10.clone(), 1), (hour_11.clone(), 5)]),
            "only the closed hour is merged"
        );
        assert_eq!(rows_read_back(dir.path()), before, "every row, once");
        assert!(
            std::fs::read_dir(dir.path().join(compact::JOURNALS))
                .expect("journal folder")
                .next()
                .is_none(),
            "no journal left"
        );

        // A late event adds a file to the closed hour; the next pass merges it in.
        writer.events(vec![row_at(10, 59)]).expect("buffered");
        writer.flush().await.expect("written");
        let report = writer.upkeep_now().await.expect("upkeep runs");
        assert_eq!((report.merged_files, report.compacted_files), (2, 1));
        assert_eq!(files_per_hour(dir.path())[&hour_10], 1);
        assert_eq!(rows_read_back(dir.path()).len(), before.len() + 1);
    }

    #[tokio::test]
    async fn what_a_previous_process_left_is_merged_and_a_stopping_writer_merges_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = settings(dir.path());
        settings.compact_after_secs = 0;
        let clock = || clock_at("2026-11-21T00:00:00Z");
        {
            let mut never = HistoryWriter::start_with_clock(&settings, clock()).expect("writer");
            for minute in 0..3 {
                never.events(vec![row_at(10, minute)]).expect("buffered");
                never.flush().await.expect("written");
            }
        }
        assert_eq!(
            files_per_hour(dir.path()).into_values().collect::<Vec<_>>(),
            [3],
            "compact_after_secs = 0 never merges"
        );

        settings.compact_after_secs = 600;
        {
            let mut later = HistoryWriter::start_with_clock(&settings, clock()).expect("writer");
            // Found by the look at start, then merged by the pass asked for.
            let report = later.upkeep_now().await.expect("upkeep runs");
            assert_eq!((report.merged_files, report.compacted_files), (3, 1));
            // Files of another closed hour, merged when the writer stops.
            for minute in 0..4 {
                later.events(vec![row_at(20, minute)]).expect("buffered");
                later.flush().await.expect("written");
            }
        }
        assert_eq!(
            files_per_hour(dir.path()).into_values().collect::<Vec<_>>(),
            [1, 1]
        );
        assert_eq!(rows_read_back(dir.path()).len(), 7);
    }

    /// A clock that blocks whoever reads it until `open` is set (20 s at most).
    fn gated_clock(open: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>) -> Clock {
        Arc::new(move || {
            let (lock, opened) = &*open;
            let guard = lock.lock().expect("gate");
            let _ = opened
                .wait_timeout_while(guard, Duration::from_secs(20), |open| !*open)
                .expect("gate");
            "2026-12-21T12:00:00Z".parse().expect("time")
        })
    }

    #[tokio::test]
    async fn a_flush_never_waits_for_retention_or_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = settings(dir.path());
        settings.retention_days = 30;
        let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let mut writer =
            HistoryWriter::start_with_clock(&settings, gated_clock(gate.clone())).expect("writer");
        // Upkeep is stuck reading the clock (as on a slow S3 listing); flushes go on.
        for minute in 0..3 {
            writer.events(vec![row(minute)]).expect("buffered");
            let flushed = tokio::time::timeout(Duration::from_secs(5), writer.flush()).await;
            assert!(
                matches!(flushed, Ok(Ok(_))),
                "flush {minute} waited for upkeep: {flushed:?}"
            );
        }
        assert_eq!(event_files(dir.path()), 3);
        {
            let (lock, opened) = &*gate;
            *lock.lock().expect("gate") = true;
            opened.notify_all();
        }
        let report = writer.upkeep_now().await.expect("upkeep runs");
        assert_eq!(report.failures, 0, "{report:?}");
        assert_eq!(
            event_files(dir.path()),
            0,
            "then retention deleted the old hour"
        );
    }

    #[tokio::test]
    async fn a_flush_is_due_and_cut_into_files_by_the_bytes_of_its_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = settings(dir.path());
        settings.flush_max_mib = 1;
        settings.flush_max_events = 1_000_000;
        settings.flush_interval_secs = 3600;
        settings.raw_data = true;
        let mut writer =
            HistoryWriter::start_with_clock(&settings, clock_at("2026-11-21T00:00:00Z"))
                .expect("writer");
        // Rows of one hour partition, each holding 300 KiB of vendor record.
        let big = |minute| {
            let mut row = row(minute);
            let mut event = (*row.event).clone();
            event.raw_data = Some(Arc::from("x".repeat(300 * 1024)));
            row.event = Arc::new(event);
            row
        };
        writer.events((0..3).map(big).collect()).expect("buffered");
        assert!(!writer.due(), "900 KiB of text is under the 1 MiB bound");
        writer.events(vec![big(3)]).expect("buffered");
        assert!(writer.due(), "1.2 MiB of text makes the flush due");
        writer.events((4..10).map(big).collect()).expect("buffered");
        assert!(writer.overdue(), "3 MiB of text is twice the bound");

        let report = writer.flush().await.expect("written");
        assert_eq!(report.events, 10);
        // Three 300 KiB records fit in 1 MiB, four do not: 10 rows make 4 files.
        assert_eq!(report.files, 4, "{report:?}");
        assert_eq!(event_files(dir.path()), 4);
        assert!(!writer.due(), "nothing is buffered after the flush");
    }

    #[test]
    fn compact_after_secs_past_30_days_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = settings(dir.path());
        settings.compact_after_secs = 30 * 86_400 + 1;
        let (key, message) = settings.validate().expect_err("refused");
        assert_eq!(key, "history.compact_after_secs");
        assert!(message.contains("at most 2592000"), "{message}");
        settings.compact_after_secs = 0;
        settings.validate().expect("0 means never");
    }

    #[test]
    fn flush_max_mib_outside_1_to_1024_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = settings(dir.path());
        assert_eq!(settings.flush_max_mib, 256, "the default");
        for bad in [0, 1025] {
            settings.flush_max_mib = bad;
            let (key, message) = settings.validate().expect_err("refused");
            assert_eq!(key, "history.flush_max_mib");
            assert!(message.contains("between 1 and 1024"), "{message}");
        }
        settings.flush_max_mib = 1024;
        settings.validate().expect("1024 MiB is allowed");
    }

    #[tokio::test]
    async fn rows_of_a_failed_flush_are_written_by_the_next_one_even_with_nothing_new() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = HistoryWriter::start_with_clock(
            &settings(dir.path()),
            clock_at("2026-11-21T00:00:00Z"),
        )
        .expect("writer");
        // A file where the events folder must go makes every events file fail.
        let blocker = dir.path().join("events");
        std::fs::write(&blocker, b"not a folder").expect("blocker");
        writer.events(vec![row(1), row(2)]).expect("buffered");
        let pending = writer.start_flush().expect("flush started");
        assert!(pending.written().await.is_err(), "the blocked flush fails");
        assert!(!writer.pending(), "nothing new is buffered");

        // Nothing new, yet the writer still holds two rows: the next flush must write them.
        std::fs::remove_file(&blocker).expect("unblocked");
        let report = writer.flush().await.expect("the retry writes");
        assert_eq!((report.events, report.files), (2, 1));
        let again = writer.flush().await.expect("an idle flush");
        assert_eq!(again.events, 0);
    }
}
