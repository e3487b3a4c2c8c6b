//! The detection engine: routes events by identity to shard threads, keeps the
//! event-time watermark, applies suppression, and returns alerts in a stable order.
//!
//! Determinism: every event travels with the watermark as it stood when the
//! router saw it, and a shard advances its detectors to that watermark before
//! observing the event. A shard therefore closes windows at the same points of
//! its own event sequence however the input was cut into batches, and replaying
//! the same input gives the same alerts.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::alert::Alert;
use super::spec::{DetectorSpec, SpecError, load_dir};
use super::{Context, Detector, kinds};
use crate::event::{NormalizedEvent, Origin};
use crate::identity::Registry;

/// Engine settings (the `[detect]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// Folder of detector files (`*.toml`).
    pub detectors_dir: PathBuf,
    /// Worker threads; identities are spread over them by a hash of their key.
    pub shards: usize,
    /// How far behind the newest event time an event may arrive and still count in its window.
    pub allowed_lateness_secs: u64,
    /// Identities unseen for this long (event time) are forgotten.
    pub idle_eviction_secs: u64,
    /// Most identities one detector tracks in one shard.
    pub max_identities_per_shard: usize,
    /// The watermark follows the slowest input partition (as Kafka Streams and Flink
    /// do), so a partition read ahead of the others makes nobody's events late. A
    /// partition whose newest event is this far behind the newest of all counts as
    /// idle and no longer holds the watermark back.
    #[serde(default = "default_max_source_skew_secs")]
    pub max_source_skew_secs: u64,
}

fn default_max_source_skew_secs() -> u64 {
    3600
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("detect: no detector files in {0}")]
    NoDetectors(String),
    #[error("detect: a shard thread stopped")]
    ShardGone,
    #[error("detect: cannot start a shard thread: {0}")]
    Spawn(std::io::Error),
    #[error("detect: snapshot: {0}")]
    Snapshot(String),
}

/// A duration of `n` seconds, saturating instead of panicking past what chrono holds.
fn secs(n: u64) -> Duration {
    Duration::try_seconds(i64::try_from(n).unwrap_or(i64::MAX)).unwrap_or(Duration::MAX)
}

/// `t + d`, saturating at the last representable time (event times come from input).
fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t - d`, saturating at the first representable time.
fn minus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_sub_signed(d).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A stable hash of an identity key (FNV-1a), so routing never changes between runs.
fn shard_of(key: &str, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

fn identity_key(event: &NormalizedEvent) -> &str {
    event
        .identity
        .as_ref()
        .map_or("anonymous", |i| i.key.as_str())
}

/// Counters of the engine (shared with the shard threads).
#[derive(Debug, Default)]
pub struct EngineStats {
    pub events: AtomicU64,
    /// Events older than the watermark; windowed detectors skip them.
    pub late_events: AtomicU64,
    pub alerts: AtomicU64,
    pub suppressed: AtomicU64,
    pub evicted_identities: AtomicU64,
    /// Identities tracked over all detectors, per shard (a gauge each shard updates after a batch).
    pub tracked_by_shard: Vec<AtomicU64>,
    /// Estimated bytes of detector state, per shard (see [`super::StateStore::approx_bytes`]).
    pub state_bytes_by_shard: Vec<AtomicU64>,
}

impl EngineStats {
    fn with_shards(shards: usize) -> Self {
        EngineStats {
            tracked_by_shard: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            state_bytes_by_shard: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            ..EngineStats::default()
        }
    }

    /// Identities tracked over all detectors and shards, as of each shard's last batch.
    pub fn tracked_identities(&self) -> u64 {
        self.tracked_by_shard
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }

    /// Estimated bytes of all detector state, as of each shard's last batch.
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes_by_shard
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }
}

/// Everything the engine knows, for snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    pub max_time: Option<DateTime<Utc>>,
    /// Newest event time per input source (topic/partition or file), as snapshots
    /// before source clocks wrote it; read only when `source_clocks` is empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<(String, DateTime<Utc>)>,
    /// The newest event times of each input source (see [`SourceClock`]).
    #[serde(default)]
    pub source_clocks: Vec<SourceClock>,
    /// The watermark when the state was saved.
    #[serde(default)]
    pub watermark: Option<DateTime<Utc>>,
    /// detector name → identity key → state.
    pub detectors: BTreeMap<String, Vec<(String, serde_json::Value)>>,
    /// (detector, identity, variant) → time of the last alert.
    pub suppression: Vec<(String, String, String, DateTime<Utc>)>,
}

/// One detector of one shard, with its suppression memory.
struct ShardDetector {
    spec: Arc<DetectorSpec>,
    detector: Box<dyn Detector>,
    last_alert: HashMap<(String, String), DateTime<Utc>>,
}

/// An event routed to a shard: its index in the batch, the event, and the watermark it saw.
type ShardItem = (u32, Arc<NormalizedEvent>, DateTime<Utc>);

/// What a shard hands back for a batch: alerts, and the findings each event raised as it was seen.
type ShardReply = (Vec<Alert>, Vec<(u32, Flag)>);

enum ShardMsg {
    Batch {
        registry: Arc<Registry>,
        items: Vec<ShardItem>,
        watermark: DateTime<Utc>,
        reply: oneshot::Sender<ShardReply>,
    },
    Save(oneshot::Sender<EngineState>),
    Load(EngineState, oneshot::Sender<Result<(), String>>),
    Tracked(oneshot::Sender<usize>),
}

struct Shard {
    detectors: Vec<ShardDetector>,
    watermark: Option<DateTime<Utc>>,
    last_eviction: Option<DateTime<Utc>>,
    idle: Duration,
    stats: Arc<EngineStats>,
    /// This shard's slot in the per-shard gauges of `stats`.
    index: usize,
}

impl Shard {
    /// Turns findings into alerts (or counts them as suppressed). `flags`, when
    /// given, receives a [`Flag`] per finding for the event being observed.
    fn emit(
        &mut self,
        index: usize,
        findings: &mut Vec<super::Finding>,
        registry: &Registry,
        out: &mut Vec<Alert>,
        mut flags: Option<(u32, &mut Vec<(u32, Flag)>)>,
    ) {
        let sd = &mut self.detectors[index];
        for finding in findings.drain(..) {
            let key = (finding.identity.clone(), finding.variant.to_string());
            let suppression = secs(sd.spec.suppression_secs);
            let suppressed = sd
                .last_alert
                .get(&key)
                .is_some_and(|last| finding.window_end < plus(*last, suppression));
            let app = finding
                .app_id
                .as_deref()
                .and_then(|id| registry.app(id))
                .map(|a| a.as_ref());
            if let Some((event, flags)) = flags.as_mut() {
                flags.push((
                    *event,
                    Flag {
                        detector: sd.spec.name.clone(),
                        kind: sd.spec.kind.as_str(),
                        alert_id: finding.alert_id(&sd.spec.name),
                        severity: finding.severity(sd.spec.severity, app),
                        score: finding.rounded_score(),
                        suppressed,
                    },
                ));
            }
            if suppressed {
                self.stats.suppressed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            sd.last_alert.insert(key, finding.window_end);
            out.push(finding.into_alert(
                &sd.spec.name,
                sd.spec.kind.as_str(),
                sd.spec.severity,
                app,
            ));
            self.stats.alerts.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn advance(&mut self, watermark: DateTime<Utc>, registry: &Registry, out: &mut Vec<Alert>) {
        // MIN_UTC stands for "no watermark yet": nothing closes.
        if watermark == DateTime::<Utc>::MIN_UTC {
            return;
        }
        if self.watermark.is_some_and(|w| w >= watermark) {
            return;
        }
        self.watermark = Some(watermark);
        let mut findings = Vec::new();
        for i in 0..self.detectors.len() {
            let sd = &mut self.detectors[i];
            let cx = Context {
                registry,
                watermark,
                spec: &sd.spec,
            };
            sd.detector.advance(&cx, &mut findings);
            self.emit(i, &mut findings, registry, out, None);
        }
        // Forget idle identities once per simulated hour, on event time, so replays agree.
        let due = self
            .last_eviction
            .is_none_or(|last| watermark - last >= Duration::hours(1));
        if due {
            self.last_eviction = Some(watermark);
            let before = minus(watermark, self.idle);
            for sd in &mut self.detectors {
                let n = sd.detector.evict_idle(before);
                self.stats
                    .evicted_identities
                    .fetch_add(n as u64, Ordering::Relaxed);
                let keep = secs(sd.spec.suppression_secs);
                sd.last_alert.retain(|_, t| plus(*t, keep) >= watermark);
            }
        }
    }

    fn batch(
        &mut self,
        registry: &Registry,
        items: Vec<ShardItem>,
        watermark: DateTime<Utc>,
    ) -> ShardReply {
        let mut out = Vec::new();
        let mut flags = Vec::new();
        let mut findings = Vec::new();
        for (index, event, mark) in items {
            self.advance(mark, registry, &mut out);
            let late = event.time < mark;
            for i in 0..self.detectors.len() {
                let sd = &mut self.detectors[i];
                if !sd.spec.filter.matches(&event) || (late && sd.detector.windowed()) {
                    continue;
                }
                let cx = Context {
                    registry,
                    watermark: mark,
                    spec: &sd.spec,
                };
                sd.detector.observe(&event, &cx, &mut findings);
                if !findings.is_empty() {
                    self.emit(
                        i,
                        &mut findings,
                        registry,
                        &mut out,
                        Some((index, &mut flags)),
                    );
                }
            }
        }
        self.advance(watermark, registry, &mut out);
        self.publish_gauges();
        (out, flags)
    }

    fn publish_gauges(&self) {
        let (tracked, bytes) = self.detectors.iter().fold((0, 0), |(t, b), sd| {
            let store = sd.detector.store();
            (t + store.tracked(), b + store.approx_bytes())
        });
        if let Some(slot) = self.stats.tracked_by_shard.get(self.index) {
            slot.store(tracked as u64, Ordering::Relaxed);
        }
        if let Some(slot) = self.stats.state_bytes_by_shard.get(self.index) {
            slot.store(bytes as u64, Ordering::Relaxed);
        }
    }

    fn save(&self) -> EngineState {
        let mut state = EngineState::default();
        for sd in &self.detectors {
            state
                .detectors
                .insert(sd.spec.name.clone(), sd.detector.save());
            for ((identity, variant), time) in &sd.last_alert {
                state.suppression.push((
                    sd.spec.name.clone(),
                    identity.clone(),
                    variant.clone(),
                    *time,
                ));
            }
        }
        state.max_time = self.watermark;
        state
    }

    fn load(&mut self, state: EngineState) -> Result<(), String> {
        for sd in &mut self.detectors {
            if let Some(entries) = state.detectors.get(&sd.spec.name) {
                for (key, value) in entries {
                    sd.detector
                        .load(key.clone(), value.clone())
                        .map_err(|e| format!("detector {} identity {key}: {e}", sd.spec.name))?;
                }
            }
        }
        for (detector, identity, variant, time) in state.suppression {
            if let Some(sd) = self.detectors.iter_mut().find(|d| d.spec.name == detector) {
                sd.last_alert.insert((identity, variant), time);
            }
        }
        self.watermark = state.max_time;
        Ok(())
    }

    fn run(mut self, inbox: mpsc::Receiver<ShardMsg>) {
        while let Ok(message) = inbox.recv() {
            match message {
                ShardMsg::Batch {
                    registry,
                    items,
                    watermark,
                    reply,
                } => {
                    let _ = reply.send(self.batch(&registry, items, watermark));
                }
                ShardMsg::Save(reply) => {
                    let _ = reply.send(self.save());
                }
                ShardMsg::Load(state, reply) => {
                    let _ = reply.send(self.load(state));
                    self.publish_gauges();
                }
                ShardMsg::Tracked(reply) => {
                    let _ = reply.send(self.detectors.iter().map(|d| d.detector.tracked()).sum());
                }
            }
        }
    }
}

/// A finding an event raised as it was seen, for the enriched event topic and history.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Flag {
    /// The detector's name.
    pub detector: String,
    pub kind: &'static str,
    /// The id of the alert this finding is (or, when suppressed, repeats).
    pub alert_id: String,
    pub severity: super::Severity,
    pub score: f64,
    /// A repeat within the detector's suppression window: no new alert was raised.
    pub suppressed: bool,
}

/// The outcome of a batch: alerts (sorted) and, per event index, the findings it raised.
#[derive(Debug, Default)]
pub struct Processed {
    pub alerts: Vec<Alert>,
    /// `(index of the event in the batch, flag)`, sorted by index.
    pub flags: Vec<(usize, Flag)>,
}

/// The detectors, run over shard threads.
pub struct Engine {
    specs: Vec<Arc<DetectorSpec>>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    threads: Vec<JoinHandle<()>>,
    lateness: Duration,
    max_source_skew: Duration,
    max_time: Option<DateTime<Utc>>,
    /// The clock of each input source; the watermark follows the slowest active one.
    sources: Vec<SourceClock>,
    /// Never moves back.
    watermark: Option<DateTime<Utc>>,
    /// Events read from files count as one source (a replay merges its inputs by
    /// event time before the engine sees them).
    files_as_one_stream: bool,
    stats: Arc<EngineStats>,
}

/// Records of one source that must agree before its clock jumps far ahead.
pub const CLOCK_QUORUM: usize = 3;

/// One input source's clock, robust to a few future-dated records (a bad clock, a
/// zone-less local time east of UTC): it keeps the source's [`CLOCK_QUORUM`]
/// newest event times and reads the newest of them that is within the skew limit
/// of the oldest. A lone record far ahead is thus ignored until enough records
/// agree with it, while ordinary progress moves the clock with every record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceClock {
    /// `topic/partition`, the file path, or empty.
    pub key: String,
    /// The newest event times seen, ascending, at most [`CLOCK_QUORUM`].
    pub newest: Vec<DateTime<Utc>>,
    /// The source says records wait there unread (a Kafka partition with lag): it
    /// holds the watermark back, before its first record too, and is never taken
    /// for idle however far behind the others it runs. Not saved: the source says
    /// it again at every assignment.
    #[serde(skip)]
    pub backlog: bool,
}

impl SourceClock {
    fn note(&mut self, time: DateTime<Utc>) {
        if self.newest.len() == CLOCK_QUORUM {
            if time <= self.newest[0] {
                return;
            }
            self.newest.remove(0);
        }
        let at = self.newest.partition_point(|t| *t <= time);
        self.newest.insert(at, time);
    }

    /// None until the source has [`CLOCK_QUORUM`] records (so its first record
    /// cannot set the clock alone; meanwhile its oldest record holds the watermark back).
    fn time(&self, max_skew: Duration) -> Option<DateTime<Utc>> {
        if self.newest.len() < CLOCK_QUORUM {
            return None;
        }
        let agreed = *self.newest.first()?;
        let limit = plus(agreed, max_skew);
        self.newest.iter().rev().find(|t| **t <= limit).copied()
    }
}

/// The input source of an event, written as `topic/partition` or the file path.
fn source_matches(key: &str, origin: Option<&Origin>) -> bool {
    match origin {
        Some(Origin::Kafka {
            topic, partition, ..
        }) => key
            .rsplit_once('/')
            .is_some_and(|(t, p)| t == topic && p.parse::<i32>().ok() == Some(*partition)),
        Some(Origin::File { path, .. }) => key == path,
        None => key.is_empty(),
    }
}

fn source_key(origin: Option<&Origin>) -> String {
    match origin {
        Some(Origin::Kafka {
            topic, partition, ..
        }) => format!("{topic}/{partition}"),
        Some(Origin::File { path, .. }) => path.clone(),
        None => String::new(),
    }
}

impl Engine {
    /// Loads the detector files (the built-in defaults when `detectors_dir` is empty)
    /// and starts the shard threads.
    pub fn start(settings: &EngineSettings) -> Result<Engine, EngineError> {
        let specs = if settings.detectors_dir.as_os_str().is_empty() {
            super::spec::builtin()?
        } else {
            load_dir(&settings.detectors_dir)?
        };
        Self::with_specs(settings, specs)
    }

    pub fn with_specs(
        settings: &EngineSettings,
        specs: Vec<DetectorSpec>,
    ) -> Result<Engine, EngineError> {
        let specs: Vec<Arc<DetectorSpec>> = specs
            .into_iter()
            .filter(|s| s.enabled)
            .map(Arc::new)
            .collect();
        if specs.is_empty() {
            return Err(EngineError::NoDetectors(
                settings.detectors_dir.display().to_string(),
            ));
        }
        let stats = Arc::new(EngineStats::with_shards(settings.shards.max(1)));
        let mut shards = Vec::new();
        let mut threads = Vec::new();
        for n in 0..settings.shards.max(1) {
            let mut detectors = Vec::new();
            for spec in &specs {
                detectors.push(ShardDetector {
                    detector: kinds::build(spec, settings.max_identities_per_shard)?,
                    spec: spec.clone(),
                    last_alert: HashMap::new(),
                });
            }
            let shard = Shard {
                detectors,
                watermark: None,
                last_eviction: None,
                idle: secs(settings.idle_eviction_secs),
                stats: stats.clone(),
                index: n,
            };
            let (tx, rx) = mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("detect-{n}"))
                .spawn(move || shard.run(rx))
                .map_err(EngineError::Spawn)?;
            shards.push(tx);
            threads.push(thread);
        }
        Ok(Engine {
            specs,
            shards,
            threads,
            lateness: secs(settings.allowed_lateness_secs),
            max_source_skew: secs(settings.max_source_skew_secs),
            max_time: None,
            sources: Vec::new(),
            watermark: None,
            files_as_one_stream: false,
            stats,
        })
    }

    pub fn specs(&self) -> &[Arc<DetectorSpec>] {
        &self.specs
    }

    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// The current watermark: the newest event time of the slowest active source,
    /// minus the allowed lateness.
    pub fn watermark(&self) -> Option<DateTime<Utc>> {
        self.watermark
    }

    /// Stops waiting for a partition this process no longer reads (taken away in a rebalance).
    pub fn forget_source(&mut self, topic: &str, partition: i32) {
        let origin = Origin::Kafka {
            topic: topic.to_string(),
            partition,
            offset: 0,
        };
        self.sources
            .retain(|clock| !source_matches(&clock.key, Some(&origin)));
    }

    /// Says whether records wait unread in a partition this process reads: while
    /// they do, the partition holds the watermark back (at no time at all until its
    /// first record arrives) and is never taken for idle, so a backlog read in any
    /// order across partitions gives no late events. A partition without a backlog
    /// follows the usual rules: a quiet one falls idle once it is far behind.
    pub fn set_backlog(&mut self, topic: &str, partition: i32, backlog: bool) {
        let origin = Origin::Kafka {
            topic: topic.to_string(),
            partition,
            offset: 0,
        };
        match self
            .sources
            .iter_mut()
            .find(|clock| source_matches(&clock.key, Some(&origin)))
        {
            Some(clock) if clock.backlog == backlog => return,
            Some(clock) => clock.backlog = backlog,
            None if !backlog => return,
            None => self.sources.push(SourceClock {
                key: source_key(Some(&origin)),
                newest: Vec::new(),
                backlog,
            }),
        }
        self.advance_watermark();
    }

    /// Counts every file as part of one source: the caller merges its files by
    /// event time, so the watermark follows the merged stream, not the slowest file.
    pub fn read_files_as_one_stream(&mut self) {
        self.files_as_one_stream = true;
    }

    /// Notes an event's time for its source and moves the watermark (never back).
    fn observe_time(&mut self, event: &NormalizedEvent) {
        if self.max_time.is_none_or(|m| event.time > m) {
            self.max_time = Some(event.time);
        }
        let origin = match event.origin.as_ref() {
            Some(Origin::File { .. }) if self.files_as_one_stream => None,
            origin => origin,
        };
        match self
            .sources
            .iter_mut()
            .find(|clock| source_matches(&clock.key, origin))
        {
            Some(clock) => clock.note(event.time),
            None => self.sources.push(SourceClock {
                key: source_key(origin),
                newest: vec![event.time],
                backlog: false,
            }),
        }
        self.advance_watermark();
    }

    /// Moves the watermark (never back) to the slowest active source's time, minus
    /// the allowed lateness.
    fn advance_watermark(&mut self) {
        // A backlog not read from yet: its times are unknown, and may be the oldest.
        if self
            .sources
            .iter()
            .any(|c| c.backlog && c.newest.is_empty())
        {
            return;
        }
        let mut clocks: Vec<DateTime<Utc>> = self
            .sources
            .iter()
            .filter_map(|c| c.time(self.max_source_skew))
            .collect();
        clocks.sort();
        // Idle means far behind the upper median, not the newest clock: with three
        // or more sources, one running ahead cannot make all the others idle.
        let Some(median) = clocks.get(clocks.len() / 2).copied() else {
            return;
        };
        let floor = minus(median, self.max_source_skew);
        // A source still short of a quorum holds the watermark back at its oldest
        // record, but cannot push it (nor the median) forward. A source with a
        // backlog holds it however far behind it is.
        let skew = self.max_source_skew;
        let slowest = self
            .sources
            .iter()
            .filter_map(|c| {
                let time = c.time(skew).or_else(|| c.newest.first().copied())?;
                (c.backlog || time >= floor).then_some(time)
            })
            .min()
            .unwrap_or(median);
        let mark = minus(slowest, self.lateness);
        if self.watermark.is_none_or(|w| mark > w) {
            self.watermark = Some(mark);
        }
    }

    /// Runs a batch of events through the detectors; alerts come back sorted by
    /// window end, detector and identity.
    pub async fn process(
        &mut self,
        events: &[Arc<NormalizedEvent>],
        registry: &Arc<Registry>,
    ) -> Result<Vec<Alert>, EngineError> {
        Ok(self
            .process_with_watermark(events, registry, None)
            .await?
            .alerts)
    }

    /// Like [`Engine::process`], and also says which findings each event raised as it was seen.
    pub async fn process_flagged(
        &mut self,
        events: &[Arc<NormalizedEvent>],
        registry: &Arc<Registry>,
    ) -> Result<Processed, EngineError> {
        self.process_with_watermark(events, registry, None).await
    }

    /// Closes every open window (end of a replay): the watermark jumps a day past the newest event.
    pub async fn finish(&mut self, registry: &Arc<Registry>) -> Result<Vec<Alert>, EngineError> {
        let Some(max) = self.max_time else {
            return Ok(Vec::new());
        };
        Ok(self
            .process_with_watermark(&[], registry, Some(plus(max, Duration::days(1))))
            .await?
            .alerts)
    }

    async fn process_with_watermark(
        &mut self,
        events: &[Arc<NormalizedEvent>],
        registry: &Arc<Registry>,
        final_watermark: Option<DateTime<Utc>>,
    ) -> Result<Processed, EngineError> {
        let n = self.shards.len();
        let mut per_shard: Vec<Vec<ShardItem>> = vec![Vec::new(); n];
        for (index, event) in events.iter().enumerate() {
            self.stats.events.fetch_add(1, Ordering::Relaxed);
            self.observe_time(event);
            // No watermark yet (nothing seen): windows stay open and nothing is late.
            let mark = self.watermark().unwrap_or(DateTime::<Utc>::MIN_UTC);
            if event.time < mark {
                self.stats.late_events.fetch_add(1, Ordering::Relaxed);
            }
            per_shard[shard_of(identity_key(event), n)].push((index as u32, event.clone(), mark));
        }
        if events.is_empty() && final_watermark.is_none() && self.watermark().is_none() {
            return Ok(Processed::default());
        }
        let watermark = final_watermark
            .or_else(|| self.watermark())
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut replies = Vec::with_capacity(n);
        for (shard, items) in self.shards.iter().zip(per_shard) {
            let (reply, rx) = oneshot::channel();
            shard
                .send(ShardMsg::Batch {
                    registry: registry.clone(),
                    items,
                    watermark,
                    reply,
                })
                .map_err(|_| EngineError::ShardGone)?;
            replies.push(rx);
        }
        let mut alerts = Vec::new();
        let mut flags = Vec::new();
        for rx in replies {
            let (shard_alerts, shard_flags) = rx.await.map_err(|_| EngineError::ShardGone)?;
            alerts.extend(shard_alerts);
            flags.extend(shard_flags.into_iter().map(|(i, f)| (i as usize, f)));
        }
        flags.sort_by_key(|(i, _)| *i);
        alerts.sort_by(|a, b| {
            (a.window_end, &a.detector, &a.identity, &a.id).cmp(&(
                b.window_end,
                &b.detector,
                &b.identity,
                &b.id,
            ))
        });
        Ok(Processed { alerts, flags })
    }

    /// Identities tracked over all detectors and shards.
    pub async fn tracked(&self) -> Result<usize, EngineError> {
        let mut total = 0;
        for shard in &self.shards {
            let (reply, rx) = oneshot::channel();
            shard
                .send(ShardMsg::Tracked(reply))
                .map_err(|_| EngineError::ShardGone)?;
            total += rx.await.map_err(|_| EngineError::ShardGone)?;
        }
        Ok(total)
    }

    /// The state of every shard, merged.
    pub async fn save(&self) -> Result<EngineState, EngineError> {
        let mut merged = EngineState {
            max_time: self.max_time,
            source_clocks: self.sources.clone(),
            watermark: self.watermark,
            ..EngineState::default()
        };
        for shard in &self.shards {
            let (reply, rx) = oneshot::channel();
            shard
                .send(ShardMsg::Save(reply))
                .map_err(|_| EngineError::ShardGone)?;
            let state = rx.await.map_err(|_| EngineError::ShardGone)?;
            for (name, entries) in state.detectors {
                merged.detectors.entry(name).or_default().extend(entries);
            }
            merged.suppression.extend(state.suppression);
        }
        for entries in merged.detectors.values_mut() {
            entries.sort_by(|a, b| a.0.cmp(&b.0));
        }
        merged
            .suppression
            .sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        Ok(merged)
    }

    /// Restores a saved state, re-sharding identities for this engine's shard count.
    pub async fn load(&mut self, state: EngineState) -> Result<(), EngineError> {
        let n = self.shards.len();
        self.sources = if state.source_clocks.is_empty() {
            // An older snapshot: its newest times count as agreed by a quorum.
            state
                .sources
                .iter()
                .map(|(key, t)| SourceClock {
                    key: key.clone(),
                    newest: vec![*t; CLOCK_QUORUM],
                    backlog: false,
                })
                .collect()
        } else {
            state.source_clocks.clone()
        };
        let watermark = state
            .watermark
            .or_else(|| state.max_time.map(|t| minus(t, self.lateness)));
        let mut per_shard: Vec<EngineState> = (0..n)
            .map(|_| EngineState {
                max_time: watermark,
                ..EngineState::default()
            })
            .collect();
        for (name, entries) in state.detectors {
            for (key, value) in entries {
                per_shard[shard_of(&key, n)]
                    .detectors
                    .entry(name.clone())
                    .or_default()
                    .push((key, value));
            }
        }
        for entry in state.suppression {
            per_shard[shard_of(&entry.1, n)].suppression.push(entry);
        }
        for (shard, part) in self.shards.iter().zip(per_shard) {
            let (reply, rx) = oneshot::channel();
            shard
                .send(ShardMsg::Load(part, reply))
                .map_err(|_| EngineError::ShardGone)?;
            rx.await
                .map_err(|_| EngineError::ShardGone)?
                .map_err(EngineError::Snapshot)?;
        }
        self.max_time = state.max_time;
        self.watermark = watermark;
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the channels ends the shard loops.
        self.shards.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::event::{Category, Product};
    use chrono::TimeZone;

    fn settings() -> EngineSettings {
        EngineSettings {
            detectors_dir: PathBuf::new(),
            shards: 2,
            allowed_lateness_secs: 60,
            idle_eviction_secs: 86_400,
            max_identities_per_shard: 1000,
            max_source_skew_secs: 3600,
        }
    }

    /// An event `secs` after 12:00 on 2026-11-23, read from `topic/partition`.
    fn read_from(
        secs: i64,
        (product, category, activity): (Product, Category, &str),
        topic: &str,
        partition: i32,
    ) -> NormalizedEvent {
        let t0 = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        let mut e = NormalizedEvent::new(t0 + Duration::seconds(secs), product, category, activity);
        e.origin = Some(Origin::Kafka {
            topic: topic.into(),
            partition,
            offset: secs,
        });
        e
    }

    fn event(minute: i64, topic: &str, partition: i32) -> Arc<NormalizedEvent> {
        let what = (Product::Kong, Category::EgressRequest, "GET");
        Arc::new(read_from(60 * minute, what, topic, partition))
    }

    #[tokio::test]
    async fn watermark_follows_the_slowest_partition_and_counts_late_events() {
        let registry = Arc::new(Registry::default());
        let mut engine = Engine::start(&settings()).unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        // Partition 0 runs 30 minutes ahead of partition 1: nobody is late. A
        // partition's clock starts once CLOCK_QUORUM of its records are in.
        engine
            .process(
                &[
                    event(0, "a", 0),
                    event(0, "a", 1),
                    event(0, "a", 0),
                    event(0, "a", 1),
                    event(30, "a", 0),
                    event(1, "a", 1),
                ],
                &registry,
            )
            .await
            .unwrap();
        assert_eq!(
            engine.watermark(),
            Some(t0 + Duration::minutes(1) - Duration::seconds(60))
        );
        assert_eq!(engine.stats().late_events.load(Ordering::Relaxed), 0);
        // Partition 1 falls more than max_source_skew behind: it no longer holds the
        // watermark (once partition 0's jump ahead is agreed by a quorum of records).
        engine
            .process(&[event(118, "a", 0), event(119, "a", 0)], &registry)
            .await
            .unwrap();
        assert_eq!(
            engine.watermark(),
            Some(t0 + Duration::minutes(1) - Duration::seconds(60))
        );
        engine
            .process(&[event(120, "a", 0)], &registry)
            .await
            .unwrap();
        assert_eq!(engine.watermark(), Some(t0 + Duration::minutes(119)));
        // An event older than the watermark is late, and counted.
        engine
            .process(&[event(2, "a", 1)], &registry)
            .await
            .unwrap();
        assert_eq!(engine.stats().late_events.load(Ordering::Relaxed), 1);
        // The watermark never moves back, and survives a save/load.
        let saved = engine.save().await.unwrap();
        let mut restored = Engine::start(&settings()).unwrap();
        restored.load(saved).await.unwrap();
        assert_eq!(restored.watermark(), engine.watermark());
    }

    #[tokio::test]
    async fn a_partition_with_a_backlog_holds_the_watermark_before_its_first_record_and_far_behind()
    {
        let registry = Arc::new(Registry::default());
        let mut engine = Engine::start(&settings()).unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        engine.set_backlog("a", 0, true);
        engine.set_backlog("a", 1, true);
        // Partition 0 is read first, hours of it: partition 1 has said nothing yet.
        let ahead: Vec<_> = (0..300).map(|m| event(m, "a", 0)).collect();
        engine.process(&ahead, &registry).await.unwrap();
        assert_eq!(engine.watermark(), None, "held by the unread partition 1");
        // Partition 1 starts at the beginning, 5 hours behind: with a backlog it is
        // not idle, so it holds the watermark and none of its records is late.
        let behind: Vec<_> = (0..3).map(|m| event(m, "a", 1)).collect();
        engine.process(&behind, &registry).await.unwrap();
        assert_eq!(
            engine.watermark(),
            Some(t0 + Duration::minutes(2) - Duration::seconds(60))
        );
        assert_eq!(engine.stats().late_events.load(Ordering::Relaxed), 0);
        // Caught up at its end, a quiet partition falls idle as before.
        engine.set_backlog("a", 1, false);
        assert_eq!(
            engine.watermark(),
            Some(t0 + Duration::minutes(299) - Duration::seconds(60))
        );
        // A partition without a backlog and no record holds nothing.
        engine.set_backlog("a", 2, false);
        assert_eq!(
            engine.watermark(),
            Some(t0 + Duration::minutes(299) - Duration::seconds(60))
        );
    }

    #[tokio::test]
    async fn a_first_event_in_year_minus_262143_does_not_panic_the_engine() {
        let registry = Arc::new(Registry::default());
        let mut engine = Engine::start(&settings()).unwrap();
        let mut first = NormalizedEvent::new(
            DateTime::<Utc>::MIN_UTC,
            Product::Kong,
            Category::EgressRequest,
            "GET",
        );
        first.origin = event(0, "a", 0).origin.clone();
        let mut last = (*event(0, "a", 0)).clone();
        last.time = DateTime::<Utc>::MAX_UTC;
        for e in [Arc::new(first), event(0, "a", 0), Arc::new(last)] {
            engine.process(&[e], &registry).await.unwrap();
        }
        engine.finish(&registry).await.unwrap();
        assert!(engine.watermark().is_some());
    }

    /// A secret read by `app` of `secret`, `secs` after 12:00, from partition `partition`.
    fn secret_read(secs: i64, app: &str, secret: &str, partition: i32) -> Arc<NormalizedEvent> {
        let what = (Product::Cloudtrail, Category::SecretRead, "GetSecretValue");
        let mut e = read_from(secs, what, "secrets", partition);
        e.identity = Some(crate::detect::kinds::testing::registered(app));
        e.resource = Some(secret.to_string());
        Arc::new(e)
    }

    #[tokio::test]
    async fn one_future_dated_record_then_a_burst_of_secret_reads_still_alerts() {
        // The future-dated record arrives on another partition, or on the burst's own.
        for outlier_partition in [1, 0] {
            let registry = Arc::new(Registry::default());
            let mut engine = Engine::start(&settings()).unwrap();
            let mut events: Vec<_> = (0..5)
                .flat_map(|i| {
                    [
                        secret_read(i, "crm-sync", "crm/db", 0),
                        secret_read(i, "crm-sync", "crm/db", 1),
                    ]
                })
                .collect();
            // A zone-less local time 20 hours east of UTC, on one record.
            events.push(secret_read(
                20 * 3600,
                "report-bot",
                "report/key",
                outlier_partition,
            ));
            // Then the exfiltration: 60 distinct secrets in two minutes, over both partitions.
            events.extend((0..60).map(|i| {
                secret_read(
                    60 + 2 * i,
                    "billing-agent",
                    &format!("prod/secret-{i}"),
                    (i % 2) as i32,
                )
            }));
            // Ordinary traffic goes on for half an hour on both partitions.
            events.extend((0..30).flat_map(|m| {
                [
                    secret_read(300 + 60 * m, "crm-sync", "crm/db", 0),
                    secret_read(300 + 60 * m, "crm-sync", "crm/db", 1),
                ]
            }));
            let mut alerts = Vec::new();
            for batch in events.chunks(7) {
                alerts.extend(engine.process(batch, &registry).await.unwrap());
            }
            assert!(
                alerts
                    .iter()
                    .any(|a| a.detector == "mass_secret_read" && a.identity == "app:billing-agent"),
                "outlier on partition {outlier_partition}: no mass_secret_read alert before the stream ends; \
                 late events {}, watermark {:?}",
                engine.stats().late_events.load(Ordering::Relaxed),
                engine.watermark()
            );
            assert_eq!(engine.stats().late_events.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn routing_is_stable() {
        assert_eq!(
            shard_of("app:invoice-bot", 4),
            shard_of("app:invoice-bot", 4)
        );
        let spread: std::collections::HashSet<usize> =
            (0..64).map(|i| shard_of(&format!("app:{i}"), 4)).collect();
        assert_eq!(spread.len(), 4);
    }
}
