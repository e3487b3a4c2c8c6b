//! History upkeep on a thread of its own: retention and the compaction of
//! closed hours, so that neither ever holds up a flush (an S3 listing or a
//! rewrite of an hour can take long; the Kafka source waits for flushes).
//!
//! The writer thread tells upkeep which partition folders it wrote to. Every
//! [`PASS_INTERVAL`], upkeep compacts those whose hour ended at least
//! `history.compact_after_secs` before the clock, and finishes or undoes
//! compactions a stopped process left; once an hour it expires what retention
//! no longer keeps. When it starts it also looks for partitions a previous
//! process left with several flush files. When the writer stops, the pass
//! under way ends after its current partition, and one last pass expires and
//! compacts the closed hours this writer wrote to (a `replay` of old exports
//! ends with few files per hour).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::compact::{self, Compactor, Outcome};
use super::store::{Runtime, Store, partition_end};
use super::{Clock, HistoryError, HistoryStats};

/// How often upkeep looks for closed hours to compact.
pub const PASS_INTERVAL: Duration = Duration::from_secs(300);

/// Retention runs at most this often.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(3600);

/// A compaction journal this old belongs to a process that stopped midway (a
/// compaction takes seconds): it is finished or undone. Should a live
/// compaction take longer, it finds its journal taken and undoes itself.
const STALE_JOURNAL: chrono::Duration = chrono::Duration::minutes(15);

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpkeepReport {
    /// Files deleted by retention.
    pub expired_files: usize,
    /// Partitions compacted.
    pub compacted_partitions: usize,
    /// Files merged away by compaction…
    pub merged_files: usize,
    /// …and the files written in their place.
    pub compacted_files: usize,
    /// Interrupted compactions finished or undone.
    pub recovered: usize,
    /// Steps that failed (each logged; retried at a later pass).
    pub failures: usize,
}

pub(super) enum Request {
    /// The writer wrote a file into this partition folder.
    Written(String),
    /// Run a pass now, retention included, and say what it did.
    Now(oneshot::Sender<UpkeepReport>),
}

/// What upkeep does, from the settings.
pub(super) struct Plan {
    pub retention: Option<chrono::Duration>,
    /// How long after its hour ends a partition is compacted; none: never.
    pub compact_after: Option<chrono::Duration>,
    pub clock: Clock,
}

pub(super) struct Upkeep {
    plan: Plan,
    compactor: Compactor,
    runtime: Option<Runtime>,
    stats: Arc<HistoryStats>,
    /// Partitions the writer wrote to since they were last compacted…
    written: BTreeSet<String>,
    /// …and those a previous process left with several flush files.
    found: BTreeSet<String>,
    last_expiry: Option<Instant>,
    /// Set when the writer stops: the pass under way ends early.
    stop: Arc<AtomicBool>,
}

impl Upkeep {
    pub fn new(
        plan: Plan,
        compactor: Compactor,
        runtime: Option<Runtime>,
        stats: Arc<HistoryStats>,
    ) -> Self {
        Upkeep {
            plan,
            compactor,
            runtime,
            stats,
            written: BTreeSet::new(),
            found: BTreeSet::new(),
            last_expiry: None,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn store(&self) -> &Store {
        &self.compactor.store
    }

    pub fn run(&mut self, rx: mpsc::Receiver<Request>) {
        let mut report = UpkeepReport::default();
        self.recover(&mut report);
        self.expire(&mut report);
        self.find_partitions_left_uncompacted(&mut report);
        self.count(&report);
        let mut next = Instant::now() + PASS_INTERVAL;
        loop {
            match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(Request::Written(partition)) => {
                    self.written.insert(partition);
                }
                Ok(Request::Now(reply)) => {
                    let mut report = UpkeepReport::default();
                    self.last_expiry = None;
                    self.recover(&mut report);
                    self.expire(&mut report);
                    self.compact_closed(&mut report, false);
                    self.count(&report);
                    let _ = reply.send(report);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let mut report = UpkeepReport::default();
                    self.recover(&mut report);
                    self.expire(&mut report);
                    self.compact_closed(&mut report, false);
                    self.count(&report);
                    next = Instant::now() + PASS_INTERVAL;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        // The writer is gone, its last files written: expire (a `replay
        // --retention-days` wrote old hours since the pass at start) and
        // compact the closed hours.
        let mut report = UpkeepReport::default();
        self.last_expiry = None;
        self.expire(&mut report);
        self.compact_closed(&mut report, true);
        self.count(&report);
    }

    fn count(&self, report: &UpkeepReport) {
        let add = |counter: &std::sync::atomic::AtomicU64, n: usize| {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        };
        add(&self.stats.files_expired, report.expired_files);
        add(&self.stats.files_merged, report.merged_files);
        add(&self.stats.compacted_files_written, report.compacted_files);
        add(&self.stats.upkeep_failures, report.failures);
    }

    /// Settles this process's unfinished compactions and the stale journals
    /// of stopped ones.
    fn recover(&mut self, report: &mut UpkeepReport) {
        let rt = self.runtime.as_ref();
        self.compactor.settle_unfinished(rt);
        let now = (self.plan.clock)();
        match self.compactor.recover(now - STALE_JOURNAL, rt) {
            Ok(n) => report.recovered += n,
            Err(error) => {
                report.failures += 1;
                tracing::warn!(%error, "history compaction recovery");
            }
        }
    }

    /// Deletes what retention no longer keeps, at most once an hour.
    fn expire(&mut self, report: &mut UpkeepReport) {
        let Some(retention) = self.plan.retention else {
            return;
        };
        if self
            .last_expiry
            .is_some_and(|t| t.elapsed() < EXPIRY_INTERVAL)
        {
            return;
        }
        self.last_expiry = Some(Instant::now());
        let rt = self.runtime.as_ref();
        let cutoff = (self.plan.clock)() - retention;
        for table in ["events", "alerts"] {
            match self.store().expire(table, cutoff, rt) {
                Ok(n) => {
                    report.expired_files += n;
                    if n > 0 {
                        tracing::info!(table, files = n, %cutoff, "expired history partitions");
                    }
                }
                Err(error) => {
                    report.failures += 1;
                    tracing::warn!(%error, table, "history retention");
                }
            }
        }
    }

    /// Compacts the partitions whose hour is closed: at the last pass only
    /// those this writer wrote to, all of them however long it takes;
    /// otherwise found ones too, until the writer stops.
    fn compact_closed(&mut self, report: &mut UpkeepReport, last: bool) {
        let Some(after) = self.plan.compact_after else {
            self.written.clear();
            self.found.clear();
            return;
        };
        let now = (self.plan.clock)();
        let closed = |p: &&String| partition_end(p).is_some_and(|end| end + after <= now);
        let mut due: BTreeSet<String> = self.written.iter().filter(closed).cloned().collect();
        if !last {
            due.extend(self.found.iter().filter(closed).cloned());
        }
        for partition in due {
            if !last && self.stop.load(Ordering::Relaxed) {
                break;
            }
            match self.compactor.compact(&partition, self.runtime.as_ref()) {
                Ok(Outcome::Done(done)) => {
                    report.compacted_partitions += 1;
                    report.merged_files += done.inputs;
                    report.compacted_files += done.outputs;
                    tracing::debug!(
                        partition,
                        inputs = done.inputs,
                        outputs = done.outputs,
                        "compacted a history partition"
                    );
                    self.written.remove(&partition);
                    self.found.remove(&partition);
                }
                Ok(Outcome::Nothing) => {
                    self.written.remove(&partition);
                    self.found.remove(&partition);
                }
                // Another process is at it, or left it for recovery: later.
                Ok(Outcome::Busy) => {}
                Err(error) => {
                    report.failures += 1;
                    tracing::warn!(%error, partition, "history compaction failed; retried at the next pass");
                }
            }
        }
    }

    /// Marks every hour partition holding several small files (a previous
    /// process stopped before compacting it) as written. This lists the whole
    /// history once, at start.
    fn find_partitions_left_uncompacted(&mut self, report: &mut UpkeepReport) {
        if self.plan.compact_after.is_none() {
            return;
        }
        let rt = self.runtime.as_ref();
        let mut stack = vec!["events".to_string(), "alerts".to_string()];
        while let Some(folder) = stack.pop() {
            let names = match self.store().list_folders(&folder, rt) {
                Ok(names) => names,
                Err(error) => {
                    report.failures += 1;
                    tracing::warn!(%error, folder, "listing the history for compaction");
                    continue;
                }
            };
            for name in names {
                let path = format!("{folder}/{name}");
                if !name.starts_with("hour=") {
                    stack.push(path);
                    continue;
                }
                let flushed = self.store().list_files(&path, rt).map(|files| {
                    files
                        .iter()
                        .filter(|f| {
                            f.name.ends_with(".parquet")
                                && f.size < compact::LARGE_FILE_BYTES
                                && !compact::is_compaction_output(&f.name)
                        })
                        .count()
                });
                if flushed.is_ok_and(|n| n >= 2) {
                    self.found.insert(path);
                }
            }
        }
    }
}

/// The handle the history writer keeps: dropping it runs the last pass and
/// waits for it.
pub(super) struct UpkeepHandle {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl UpkeepHandle {
    pub fn start(mut upkeep: Upkeep) -> Result<UpkeepHandle, HistoryError> {
        let stop = upkeep.stop.clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("history-upkeep".into())
            .spawn(move || upkeep.run(rx))
            .map_err(|e| HistoryError::io(std::path::Path::new("history upkeep thread"), e))?;
        Ok(UpkeepHandle {
            tx: Some(tx),
            thread: Some(thread),
            stop,
        })
    }

    /// A sender for the writer thread's notes of what it wrote.
    pub fn sender(&self) -> Option<mpsc::Sender<Request>> {
        self.tx.clone()
    }

    /// Runs a pass now (retention included) and waits for what it did.
    pub async fn run_now(&self) -> Result<UpkeepReport, HistoryError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or(HistoryError::Gone)?
            .send(Request::Now(reply))
            .map_err(|_| HistoryError::Gone)?;
        rx.await.map_err(|_| HistoryError::Gone)
    }
}

impl Drop for UpkeepHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
