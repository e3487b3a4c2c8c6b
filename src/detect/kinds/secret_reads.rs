//! `secret_reads`: secret reads and distinct secrets per identity per bucket,
//! secret enumeration, and secrets read by identities missing from the registry.
//!
//! Each identity's `secret_read` and `secret_list` events are gathered in
//! tumbling buckets aligned to the Unix epoch (`bucket_secs`, default 10
//! minutes): the number of reads, the set of distinct secrets read (`resource`
//! and every entry of `resources`, so batch reads count each secret; the set is
//! capped at `max_secrets_per_bucket`), and whether secrets were listed. When
//! the watermark passes the bucket's end it yields at most one finding per
//! variant:
//!
//! - `absolute`: ≥ `max_distinct` distinct secrets the identity never read in
//!   an earlier bucket (its known set, the last `max_known_secrets` it read),
//!   learning or not: a first-ever mass read alerts at once, a nightly job
//!   reading its usual set again does not;
//! - `baseline`: after the learning period and `min_history_buckets` buckets,
//!   secrets never read before ≥ `min_distinct` and ≥ `baseline_factor` × the
//!   identity's EWMA of distinct secrets per bucket, and distinct secrets more
//!   than the most it read in any earlier bucket (so a periodic job reading its
//!   usual set is learned). Not
//!   emitted when `absolute` is;
//! - `enumeration`: a listing, then ≥ `enumeration_min_reads` secrets, never read
//!   by the identity before, first read at or after it in the same bucket.
//!
//! `unregistered_reader` is emitted as soon as an identity whose status is
//! unregistered, and that is not a person, reads a secret (once per bucket; the engine suppresses repeats),
//! raised one severity level.
//!
//! Every closed bucket updates the baseline (empty buckets between two active
//! ones count as zeros, at most a week of them). A bucket that raised a finding
//! adds at most the old baseline × `baseline_factor` to the EWMA and never
//! raises the "most seen" guard, so an incident does not become the new normal.
//!
//! Several buckets of one identity may be open at once (see [`buckets`]): the
//! watermark follows the slowest partition, so events arrive in any order
//! within it. Each is gathered in its own bucket, and a bucket's findings are
//! worked out when it closes (which secrets were read after its first listing
//! from each secret's first read time), so the same records give the same
//! findings in whatever order they are read.
//!
//! [`buckets`]: super::buckets

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::buckets::{Bucket, OpenBuckets, keep_earliest};
use crate::detect::alert::{EventRef, Evidence, Finding, sql_str};
use crate::detect::spec::{DetectorSpec, SpecError};
use crate::detect::{Context, Detector, IdentityMap, StateStore};
use crate::event::{ActorType, Category, IdentityStatus, NormalizedEvent};

/// Events kept as samples per bucket.
const MAX_SAMPLES: usize = 5;
/// Seconds in a week: the longest run of empty buckets replayed into the baseline.
const WEEK_SECS: i64 = 7 * 86_400;

/// Parameters of a `secret_reads` detector (`[params]` of its file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Length of a bucket, in seconds (60–86400), aligned to the Unix epoch.
    #[serde(default = "default_bucket_secs")]
    pub bucket_secs: u64,
    /// Distinct secrets in one bucket that always alert (`absolute`), even while learning.
    #[serde(default = "default_max_distinct")]
    pub max_distinct: u32,
    /// Fewest distinct secrets in one bucket that may alert against the baseline.
    #[serde(default = "default_min_distinct")]
    pub min_distinct: u32,
    /// Multiple of the identity's usual distinct secrets per bucket that alerts (`baseline`).
    #[serde(default = "default_baseline_factor")]
    pub baseline_factor: f64,
    /// Distinct secrets first read after a listing, in the same bucket, that alert (`enumeration`).
    #[serde(default = "default_enumeration_min_reads")]
    pub enumeration_min_reads: u32,
    /// Most distinct secret names remembered per identity per bucket (memory bound).
    #[serde(default = "default_max_secrets_per_bucket")]
    pub max_secrets_per_bucket: u32,
    /// Weight (0–1] of a new bucket in the EWMA of distinct secrets per bucket.
    #[serde(default = "default_baseline_alpha")]
    pub baseline_alpha: f64,
    /// Buckets an identity must have seen before its baseline may alert.
    #[serde(default = "default_min_history_buckets")]
    pub min_history_buckets: u32,
    /// Secrets remembered per identity as ones it has read before (oldest forgotten
    /// first). `absolute` and `enumeration` count only secrets outside this set, so
    /// a job reading its usual set again is not a mass read; 0 turns this off.
    #[serde(default = "default_max_known_secrets")]
    pub max_known_secrets: u32,
}

fn default_max_known_secrets() -> u32 {
    512
}

fn default_bucket_secs() -> u64 {
    600
}
fn default_max_distinct() -> u32 {
    40
}
fn default_min_distinct() -> u32 {
    10
}
fn default_baseline_factor() -> f64 {
    5.0
}
fn default_enumeration_min_reads() -> u32 {
    10
}
fn default_max_secrets_per_bucket() -> u32 {
    1000
}
fn default_baseline_alpha() -> f64 {
    0.05
}
fn default_min_history_buckets() -> u32 {
    144
}

impl Params {
    fn validate(&self, spec: &DetectorSpec) -> Result<(), SpecError> {
        if !(60..=86_400).contains(&self.bucket_secs) {
            return Err(spec.error("params.bucket_secs", "must be between 60 and 86400"));
        }
        for (key, value) in [
            ("params.max_distinct", self.max_distinct),
            ("params.min_distinct", self.min_distinct),
            ("params.enumeration_min_reads", self.enumeration_min_reads),
            ("params.min_history_buckets", self.min_history_buckets),
        ] {
            if value == 0 {
                return Err(spec.error(key, "must be at least 1"));
            }
        }
        if !self.baseline_factor.is_finite() || self.baseline_factor <= 1.0 {
            return Err(spec.error("params.baseline_factor", "must be a number above 1"));
        }
        let needed = self
            .max_distinct
            .max(self.min_distinct)
            .max(self.enumeration_min_reads);
        if self.max_secrets_per_bucket < needed || self.max_secrets_per_bucket > 100_000 {
            return Err(spec.error(
                "params.max_secrets_per_bucket",
                format!(
                    "must be between {needed} (the largest of max_distinct, min_distinct and \
                     enumeration_min_reads, or they could never be reached) and 100000"
                ),
            ));
        }
        if !(self.baseline_alpha > 0.0 && self.baseline_alpha <= 1.0) {
            return Err(spec.error("params.baseline_alpha", "must be above 0 and at most 1"));
        }
        if self.max_known_secrets > 100_000 {
            return Err(spec.error("params.max_known_secrets", "must be at most 100000"));
        }
        Ok(())
    }
}

/// Builds a `secret_reads` detector from its file.
pub fn build(spec: &DetectorSpec, max_identities: usize) -> Result<Box<dyn Detector>, SpecError> {
    Ok(Box::new(SecretReads::new(spec, max_identities)?))
}

/// The bucket being gathered for one identity.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct OpenBucket {
    /// Bucket start, epoch seconds.
    start: i64,
    /// Secret reads (a batch read counts each secret it names).
    reads: u32,
    /// Distinct secrets read, at most `max_secrets_per_bucket`, each with its
    /// first read time in the bucket.
    #[serde(deserialize_with = "secrets_with_first_read")]
    secrets: BTreeMap<String, DateTime<Utc>>,
    /// Whether more distinct secrets were read than the set keeps.
    capped: bool,
    /// Listing events.
    lists: u32,
    /// Time of the first listing.
    listed_at: Option<DateTime<Utc>>,
    /// Whether `unregistered_reader` was emitted for this bucket.
    unregistered_reported: bool,
    /// The earliest events that listed or read a secret new to the bucket.
    samples: Vec<EventRef>,
}

impl Bucket for OpenBucket {
    fn starting(start: i64) -> Self {
        OpenBucket {
            start,
            ..OpenBucket::default()
        }
    }

    fn start(&self) -> i64 {
        self.start
    }
}

/// The secrets of an open bucket; snapshots from before first read times were
/// kept hold the names only, which load as read before any listing.
fn secrets_with_first_read<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, DateTime<Utc>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        WithTimes(BTreeMap<String, DateTime<Utc>>),
        Names(Vec<String>),
    }
    Ok(match Stored::deserialize(deserializer)? {
        Stored::WithTimes(secrets) => secrets,
        Stored::Names(names) => names
            .into_iter()
            .map(|name| (name, DateTime::<Utc>::MIN_UTC))
            .collect(),
    })
}

/// One identity's baseline and open buckets (about 0.1 KiB when idle).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    /// First event time, epoch seconds (for the learning period).
    first_seen: Option<i64>,
    app_id: Option<String>,
    /// EWMA of distinct secrets per bucket.
    ewma_distinct: f32,
    /// Buckets in the EWMA (saturating).
    history_buckets: u32,
    /// Most distinct secrets in one bucket that raised no finding.
    max_distinct_seen: u32,
    /// Start of the last evaluated bucket, epoch seconds.
    last_closed: Option<i64>,
    /// Buckets not closed yet, in start order (one `null` or object in older snapshots).
    #[serde(default)]
    open: OpenBuckets<OpenBucket>,
    /// Hashes of the secrets read in earlier buckets, oldest first.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    known: VecDeque<u64>,
}

/// FNV-1a of a secret name: what the known set keeps (8 bytes a secret).
fn secret_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// EWMA step whose weight starts at 1/(n+1) (a plain mean) until it reaches `alpha`.
fn ewma_step(ewma: f32, n: u32, alpha: f64, value: f64) -> f32 {
    let weight = alpha.max(1.0 / (n as f64 + 1.0));
    (ewma as f64 + weight * (value - ewma as f64)) as f32
}

/// Whether `name` is among the `known` secret hashes.
fn knows(known: &VecDeque<u64>, name: &str) -> bool {
    !known.is_empty() && known.contains(&secret_hash(name))
}

impl State {
    /// Remembers the secrets of a closed bucket as known, within `max_known_secrets`.
    fn remember<'a>(&mut self, p: &Params, names: impl Iterator<Item = &'a String>) {
        let cap = p.max_known_secrets as usize;
        if cap == 0 {
            return;
        }
        for name in names {
            let h = secret_hash(name);
            if let Some(i) = self.known.iter().position(|k| *k == h) {
                // Read again: it moves to the young end.
                self.known.remove(i);
            }
            while self.known.len() >= cap {
                self.known.pop_front();
            }
            self.known.push_back(h);
        }
    }

    fn learn(&mut self, p: &Params, value: f64) {
        self.ewma_distinct = ewma_step(
            self.ewma_distinct,
            self.history_buckets,
            p.baseline_alpha,
            value,
        );
        self.history_buckets = self.history_buckets.saturating_add(1);
    }

    /// Counts the empty buckets between the last closed one and `next_start` as zeros.
    fn learn_gap(&mut self, p: &Params, next_start: i64) {
        let Some(last) = self.last_closed else { return };
        let bucket = p.bucket_secs as i64;
        // Both are bucket starts; at most a week of empty buckets is replayed.
        let skipped = ((next_start - last) / bucket - 1).clamp(0, WEEK_SECS / bucket);
        for _ in 0..skipped {
            self.learn(p, 0.0);
        }
    }
}

/// "10 minutes", "1 hour", "90 seconds".
fn span_text(secs: u64) -> String {
    let (n, unit) = if secs.is_multiple_of(3600) {
        (secs / 3600, "hour")
    } else if secs.is_multiple_of(60) {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

fn epoch(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// 0–100: how far `observed` is past `threshold` (1 at the threshold, 50 at twice it).
fn score(observed: f64, threshold: f64) -> f64 {
    (100.0 * (1.0 - threshold / observed.max(1.0))).clamp(1.0, 100.0)
}

fn object(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// The identity as an analyst reads it: the key, and the app's name when registered.
fn who(key: &str, app_id: Option<&str>, cx: &Context<'_>) -> String {
    match app_id.and_then(|id| cx.registry.app(id)) {
        Some(app) => format!("{key} ({})", app.name),
        None => key.to_string(),
    }
}

/// One shard's `secret_reads` detector.
pub struct SecretReads {
    p: Params,
    map: IdentityMap<State>,
    /// No open bucket ends before this (epoch seconds); `advance` does nothing until then.
    next_due: i64,
}

impl SecretReads {
    pub fn new(spec: &DetectorSpec, max_identities: usize) -> Result<Self, SpecError> {
        let p: Params = spec.params()?;
        p.validate(spec)?;
        Ok(SecretReads {
            p,
            map: IdentityMap::new(max_identities),
            next_due: i64::MAX,
        })
    }
}

/// Evaluates a closed bucket, emits its findings, and learns it (after the
/// empty buckets since the last closed one).
fn close(
    p: &Params,
    key: &str,
    state: &mut State,
    open: OpenBucket,
    cx: &Context<'_>,
    out: &mut Vec<Finding>,
) {
    state.learn_gap(p, open.start);
    let distinct = open.secrets.len() as u32;
    // Secrets the identity never read in an earlier bucket: a thief reads other
    // apps' secrets, a rotation job reads the same set every night.
    // One pass over the known set per secret: the first reads of the new ones.
    let never_read: Vec<DateTime<Utc>> = open
        .secrets
        .iter()
        .filter(|(s, _)| !knows(&state.known, s))
        .map(|(_, first_read)| *first_read)
        .collect();
    let new_distinct = never_read.len() as u32;
    // Of those, the ones first read at or after the bucket's first listing.
    let read_after_list = open.listed_at.map_or(0, |listed_at| {
        never_read.iter().filter(|t| **t >= listed_at).count() as u32
    });
    let start = epoch(open.start);
    let end = epoch(open.start + p.bucket_secs as i64);
    let first_seen = epoch(state.first_seen.unwrap_or(open.start));
    let mature = !cx.learning(first_seen, end) && state.history_buckets >= p.min_history_buckets;
    let usual = state.ewma_distinct as f64;
    let who = who(key, state.app_id.as_deref(), cx);
    let span = span_text(p.bucket_secs);
    let when = start.format("%Y-%m-%d %H:%M UTC");
    let more = if open.capped { " at least" } else { "" };
    let facts = serde_json::json!({
        "bucket_secs": p.bucket_secs,
        "reads": open.reads,
        "distinct": distinct,
        "never_read_before": new_distinct,
        "distinct_capped": open.capped,
        "listings": open.lists,
        "read_after_listing": read_after_list,
        "usual_distinct": round2(usual),
        "max_distinct_seen": state.max_distinct_seen,
        "history_buckets": state.history_buckets,
    });
    let finding = |variant: &'static str,
                   summary: String,
                   observed: u32,
                   baseline: serde_json::Value,
                   score: f64,
                   sql_filter: String,
                   extra: serde_json::Value| {
        let mut details = object(facts.clone());
        details.extend(object(extra));
        Finding {
            identity: key.to_string(),
            app_id: state.app_id.clone(),
            score,
            window_start: start,
            window_end: end,
            summary,
            evidence: Evidence {
                observed: serde_json::json!(observed),
                baseline,
                details,
                samples: open.samples.clone(),
            },
            sql_filter,
            raise: 0,
            variant,
        }
    };
    // The samples include the window's listings when it had any, so its query must too.
    let reads_only = if open.lists > 0 {
        format!(
            "category IN ({},{})",
            sql_str(Category::SecretList.as_str()),
            sql_str(Category::SecretRead.as_str())
        )
    } else {
        format!("category = {}", sql_str(Category::SecretRead.as_str()))
    };
    let mut emitted = false;
    let absolute = new_distinct >= p.max_distinct;
    if absolute {
        out.push(finding(
            "absolute",
            format!(
                "{who} read{more} {distinct} distinct secrets ({} reads, {new_distinct} never read by it \
                 before) in the {span} from {when}; the limit is {} new secrets per {span} (its usual is \
                 {usual:.1}).",
                open.reads, p.max_distinct
            ),
            new_distinct,
            serde_json::json!(p.max_distinct),
            score(distinct as f64, p.max_distinct as f64),
            reads_only.clone(),
            serde_json::json!({ "max_distinct": p.max_distinct }),
        ));
        emitted = true;
    }
    let threshold = (p.baseline_factor * usual).max(p.min_distinct as f64);
    if !absolute && mature && new_distinct as f64 >= threshold && distinct > state.max_distinct_seen
    {
        out.push(finding(
            "baseline",
            format!(
                "{who} read{more} {distinct} distinct secrets ({new_distinct} never read by it before) in \
                 the {span} from {when}, against a usual {usual:.1} per {span} and at most {} in any \
                 earlier {span}.",
                state.max_distinct_seen
            ),
            new_distinct,
            serde_json::json!(round2(usual)),
            score(distinct as f64, threshold.max(state.max_distinct_seen as f64 + 1.0)),
            reads_only.clone(),
            serde_json::json!({
                "baseline_factor": p.baseline_factor,
                "min_distinct": p.min_distinct,
                "threshold": round2(threshold),
            }),
        ));
        emitted = true;
    }
    if open.lists > 0 && read_after_list >= p.enumeration_min_reads {
        let listed_at = open.listed_at.unwrap_or(start);
        out.push(finding(
            "enumeration",
            format!(
                "{who} listed secrets at {} and then read{more} {} distinct secrets in the same {span}; \
                 {} or more after a listing is treated as enumeration.",
                listed_at.format("%Y-%m-%d %H:%M:%S UTC"),
                read_after_list,
                p.enumeration_min_reads
            ),
            read_after_list,
            serde_json::json!(p.enumeration_min_reads),
            score(read_after_list as f64, p.enumeration_min_reads as f64),
            format!(
                "category IN ({},{})",
                sql_str(Category::SecretList.as_str()),
                sql_str(Category::SecretRead.as_str())
            ),
            serde_json::json!({
                "enumeration_min_reads": p.enumeration_min_reads,
                "listed_at": listed_at,
            }),
        ));
        emitted = true;
    }
    if emitted {
        let cap = (p.baseline_factor * usual).max(state.max_distinct_seen as f64);
        state.learn(p, (distinct as f64).min(cap));
    } else {
        state.learn(p, distinct as f64);
        state.max_distinct_seen = state.max_distinct_seen.max(distinct);
    }
    state.remember(p, open.secrets.keys());
    state.last_closed = Some(open.start);
}

/// The `unregistered_reader` finding for one read.
fn unregistered_reader(
    p: &Params,
    key: &str,
    start: i64,
    event: &NormalizedEvent,
    names: &[&str],
) -> Finding {
    let secrets = if names.is_empty() {
        "a secret".to_string()
    } else if names.len() == 1 {
        format!("secret {}", names[0])
    } else {
        format!("{} secrets ({}, …)", names.len(), names[0])
    };
    Finding {
        identity: key.to_string(),
        app_id: None,
        score: 50.0,
        window_start: epoch(start),
        window_end: epoch(start + p.bucket_secs as i64),
        summary: format!(
            "{key}, an identity missing from the micro-app registry, read {secrets} at {} ({}); \
             only registered apps are expected to read secrets.",
            event.time.format("%Y-%m-%d %H:%M:%S UTC"),
            event.activity
        ),
        evidence: Evidence {
            observed: serde_json::json!(names),
            baseline: serde_json::json!("registered identities only"),
            details: object(serde_json::json!({
                "status": "unregistered",
                "activity": event.activity,
                "product": event.product.as_str(),
                "actor": event.actor.raw,
                "bucket_secs": p.bucket_secs,
            })),
            samples: vec![EventRef::of(event)],
        },
        sql_filter: format!("category = {}", sql_str(Category::SecretRead.as_str())),
        raise: 1,
        variant: "unregistered_reader",
    }
}

impl Detector for SecretReads {
    fn store(&self) -> &dyn StateStore {
        &self.map
    }

    fn store_mut(&mut self) -> &mut dyn StateStore {
        &mut self.map
    }

    fn observe(&mut self, event: &NormalizedEvent, cx: &Context<'_>, out: &mut Vec<Finding>) {
        let listing = match event.category {
            Category::SecretRead => false,
            Category::SecretList => true,
            _ => return,
        };
        let key = event
            .identity
            .as_ref()
            .map_or("anonymous", |i| i.key.as_str());
        let app_id = event.identity.as_ref().and_then(|i| i.app_id.as_deref());
        // People are not micro-apps: an employee reading a secret is not an
        // unregistered app; their mass reads still count as anyone's.
        let unregistered = event.actor.actor_type != ActorType::Person
            && event
                .identity
                .as_ref()
                .is_some_and(|i| i.status == IdentityStatus::Unregistered);
        let t = event.time.timestamp();
        let bucket = self.p.bucket_secs as i64;
        let start = t - t.rem_euclid(bucket);
        let state = self.map.entry(key, event.time);
        // The earliest event, whatever order they arrive in.
        state.first_seen = Some(state.first_seen.map_or(t, |first| first.min(t)));
        if state.app_id.as_deref() != app_id {
            state.app_id = app_id.map(str::to_string);
        }
        if let Some(oldest) = state.open.make_room(start) {
            close(&self.p, key, state, oldest, cx, out);
        }
        // None: its bucket is already closed and none is open (the engine drops
        // such late events before they get here).
        let Some((open, opened)) = state.open.bucket_for(start, state.last_closed) else {
            return;
        };
        if opened {
            self.next_due = self.next_due.min(start + bucket);
        }
        if listing {
            open.lists = open.lists.saturating_add(1);
            if open.listed_at.is_none_or(|l| event.time < l) {
                open.listed_at = Some(event.time);
            }
            keep_earliest(
                &mut open.samples,
                EventRef::of(event),
                MAX_SAMPLES,
                EventRef::not_after,
            );
            return;
        }
        let mut names: Vec<&str> = Vec::with_capacity(1 + event.resources.len());
        for name in event.resource.iter().chain(event.resources.iter()) {
            if !name.is_empty() && !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        open.reads = open.reads.saturating_add(names.len().max(1) as u32);
        let mut new = false;
        for name in &names {
            if let Some(first_read) = open.secrets.get_mut(*name) {
                *first_read = (*first_read).min(event.time);
                continue;
            }
            if open.secrets.len() < self.p.max_secrets_per_bucket as usize {
                open.secrets.insert(name.to_string(), event.time);
                new = true;
            } else {
                open.capped = true;
            }
        }
        if new {
            keep_earliest(
                &mut open.samples,
                EventRef::of(event),
                MAX_SAMPLES,
                EventRef::not_after,
            );
        }
        if unregistered && !open.unregistered_reported {
            open.unregistered_reported = true;
            out.push(unregistered_reader(&self.p, key, open.start, event, &names));
        }
    }

    fn advance(&mut self, cx: &Context<'_>, out: &mut Vec<Finding>) {
        let watermark = cx.watermark.timestamp();
        if watermark < self.next_due {
            return;
        }
        let bucket = self.p.bucket_secs as i64;
        let mut next_due = i64::MAX;
        let mut found = Vec::new();
        for (key, state) in self.map.iter_mut() {
            while let Some(open) = state.open.pop_due(watermark, bucket) {
                close(&self.p, key, state, open, cx, &mut found);
            }
            if let Some(start) = state.open.earliest_start() {
                next_due = next_due.min(start + bucket);
            }
        }
        self.next_due = next_due;
        found.sort_by(|a, b| {
            (a.window_start, &a.identity, a.variant).cmp(&(b.window_start, &b.identity, b.variant))
        });
        out.extend(found);
    }

    fn windowed(&self) -> bool {
        true
    }

    fn load(&mut self, key: String, state: serde_json::Value) -> Result<(), String> {
        self.map.load(key.clone(), state)?;
        if let Some(start) = self.map.get(&key).and_then(|s| s.open.earliest_start()) {
            self.next_due = self.next_due.min(start + self.p.bucket_secs as i64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::kinds::testing::{self, Driver, monday, registered};
    use crate::event::{Product, ResolvedIdentity};
    use crate::generator::Rng;
    use crate::identity::Registry;
    use chrono::Duration;

    const REGISTRY: &str = r#"
apps:
  - id: billing-agent
    name: Billing agent
    owner: alice@example.com
    risk_tier: restricted
    identities:
      role_arns: ["arn:aws:iam::111122223333:role/billing-agent"]
    registered_on: 2026-09-01
  - id: crm-sync
    name: CRM sync
    owner: bob@example.com
    risk_tier: internal
    registered_on: 2026-09-01
"#;

    fn spec() -> DetectorSpec {
        testing::spec("mass_secret_read.toml")
    }

    fn registry() -> Registry {
        testing::registry(REGISTRY)
    }

    fn identity(app: &str) -> ResolvedIdentity {
        if let Some(unregistered) = app.strip_prefix('!') {
            ResolvedIdentity {
                status: IdentityStatus::Unregistered,
                app_id: None,
                key: format!("oauth_client:{unregistered}"),
                matched: None,
                assumed_by: None,
            }
        } else {
            registered(app)
        }
    }

    /// A read of `secret` by `app` (`!name` for an unregistered OAuth client).
    fn read(t: DateTime<Utc>, app: &str, secret: &str) -> NormalizedEvent {
        let mut e = NormalizedEvent::new(
            t,
            Product::Cloudtrail,
            Category::SecretRead,
            "GetSecretValue",
        );
        e.identity = Some(identity(app));
        e.resource = Some(secret.to_string());
        e
    }

    fn list(t: DateTime<Utc>, app: &str) -> NormalizedEvent {
        let mut e =
            NormalizedEvent::new(t, Product::Cloudtrail, Category::SecretList, "ListSecrets");
        e.identity = Some(identity(app));
        e
    }

    /// Days of ordinary use: about `per_hour` reads an hour of `secrets` usual secrets.
    fn usual(
        app: &str,
        from: DateTime<Utc>,
        hours: i64,
        per_hour: f64,
        secrets: u64,
        seed: u64,
    ) -> Vec<NormalizedEvent> {
        let mut rng = Rng::new(seed);
        let mut out = Vec::new();
        for minute in 0..hours * 60 {
            let t0 = from + Duration::minutes(minute);
            for _ in 0..rng.poisson(per_hour / 60.0) {
                let t = t0 + Duration::milliseconds(rng.below(60_000) as i64);
                out.push(read(
                    t,
                    app,
                    &format!("{app}/secret-{}", rng.below(secrets)),
                ));
            }
        }
        out
    }

    /// The generator's MassSecretRead: a listing, then 150 distinct secrets 1.9 s apart.
    fn mass_read(app: &str, start: DateTime<Utc>, with_listing: bool) -> Vec<NormalizedEvent> {
        let mut out = Vec::new();
        if with_listing {
            out.push(list(start, app));
        }
        for k in 0..150 {
            let t = start + Duration::milliseconds(1000 + k * 1900);
            out.push(read(t, app, &format!("prod/shared/secret-{k:03}")));
        }
        out
    }

    /// The findings of `partitions` fed `chunk` at a time, partition 0 first, in a stable order.
    fn partitioned(partitions: &[Vec<NormalizedEvent>], chunk: Duration) -> Vec<String> {
        let mut found: Vec<String> =
            testing::feed_by_partition(&spec(), &registry(), partitions, chunk)
                .iter()
                .map(|f| format!("{f:?}"))
                .collect();
        found.sort();
        found
    }

    #[test]
    fn the_same_reads_give_the_same_findings_when_one_partition_runs_hours_ahead() {
        let incident = monday() + Duration::days(4) + Duration::hours(14) + Duration::minutes(24);
        let mut events = usual("billing-agent", monday(), 5 * 24, 20.0, 5, 1);
        events.extend(usual("crm-sync", monday(), 5 * 24, 30.0, 8, 2));
        events.extend(mass_read("billing-agent", incident, true));
        events.sort_by_key(|e| e.time);
        // Reads alternate between two partitions; the listing is on partition 1,
        // which is read after partition 0's reads that follow it.
        let mut partitions = vec![Vec::new(), Vec::new()];
        for (i, e) in events.into_iter().enumerate() {
            let p = usize::from(e.category == Category::SecretList || i % 2 == 1);
            partitions[p].push(e);
        }
        let in_step = partitioned(&partitions, Duration::minutes(1));
        let hours_ahead = partitioned(&partitions, Duration::hours(6));
        assert!(
            in_step
                .iter()
                .any(|f| f.contains("variant: \"enumeration\"")),
            "{in_step:#?}"
        );
        assert!(
            in_step.iter().any(|f| f.contains("variant: \"absolute\"")),
            "{in_step:#?}"
        );
        assert_eq!(in_step, hours_ahead);
    }

    #[test]
    fn a_nightly_rotation_of_the_same_secrets_alerts_once_and_new_secrets_still_do() {
        let mut driver = Driver::new(spec(), registry());
        let mut events = Vec::new();
        // Every night at 03:00 the rotation job reads the same 50 secrets of other apps.
        for day in 0..10 {
            let night = monday() + Duration::days(day) + Duration::hours(3);
            for k in 0..50 {
                let t = night + Duration::seconds(5 * k);
                events.push(read(t, "crm-sync", &format!("apps/app-{k:02}/api-key")));
            }
        }
        // On day 8 at noon, 45 secrets it never read before.
        let theft = monday() + Duration::days(8) + Duration::hours(12);
        for k in 0..45 {
            let t = theft + Duration::seconds(3 * k);
            events.push(read(t, "crm-sync", &format!("payroll/secret-{k:02}")));
        }
        events.sort_by_key(|e| e.time);
        driver.feed_all(&mut events);
        driver.finish();
        let absolute: Vec<DateTime<Utc>> = driver
            .findings
            .iter()
            .filter(|f| f.variant == "absolute")
            .map(|f| f.window_start)
            .collect();
        let first_night = monday() + Duration::hours(3);
        assert_eq!(
            absolute,
            [first_night, theft],
            "the first-ever mass read and the read of new secrets; not the same set again"
        );
        assert!(
            driver.findings.iter().all(|f| f.variant == "absolute"),
            "{:?}",
            driver
                .findings
                .iter()
                .map(|f| f.variant)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn secret_reads_mass_read_is_absolute_and_enumeration() {
        let mut driver = Driver::new(spec(), registry());
        let incident = monday() + Duration::days(4) + Duration::hours(14) + Duration::minutes(24);
        let mut events = usual("billing-agent", monday(), 5 * 24, 20.0, 5, 1);
        events.extend(mass_read("billing-agent", incident, true));
        // A brand-new identity (still learning) without a listing: absolute only.
        events.extend(mass_read("crm-sync", incident, false));
        driver.feed_all(&mut events);
        driver.finish();
        assert_eq!(
            driver.variants("app:billing-agent"),
            ["absolute", "enumeration"]
        );
        assert_eq!(driver.variants("app:crm-sync"), ["absolute"]);
        let bucket = monday() + Duration::days(4) + Duration::hours(14) + Duration::minutes(20);
        for f in &driver.findings {
            assert_eq!(f.window_start, bucket, "{}", f.summary);
            assert_eq!(f.window_end, bucket + Duration::minutes(10));
            assert!(f.evidence.samples.len() <= 5 && !f.evidence.samples.is_empty());
        }
        let absolute = &driver.findings[0];
        // 150 plus the few usual secrets it read in the same bucket.
        let observed = absolute.evidence.observed.as_u64().unwrap();
        assert!((150..=155).contains(&observed), "{observed}");
        assert_eq!(absolute.evidence.baseline, 40);
        assert!(absolute.evidence.details["reads"].as_u64().unwrap() >= 150);
        assert_eq!(absolute.app_id.as_deref(), Some("billing-agent"));
        let distinct = absolute.evidence.details["distinct"].as_u64().unwrap();
        assert!(
            distinct >= observed,
            "{distinct} distinct, {observed} of them new"
        );
        let start = format!("app:billing-agent (Billing agent) read {distinct} distinct secrets");
        assert!(absolute.summary.starts_with(&start), "{}", absolute.summary);
        // The window also listed secrets (a sample): its query shows the listing too.
        assert_eq!(
            absolute.sql_filter,
            "category IN ('secret_list','secret_read')"
        );
        assert!(absolute.score > 50.0, "{}", absolute.score);
        let enumeration = &driver.findings[1];
        let after = enumeration.evidence.observed.as_u64().unwrap();
        assert!((150..=observed).contains(&after), "{after}");
        assert_eq!(enumeration.evidence.samples[0].activity, "ListSecrets");
        assert_eq!(
            enumeration.sql_filter,
            "category IN ('secret_list','secret_read')"
        );
    }

    #[test]
    fn secret_reads_many_reads_of_usual_secrets_are_quiet() {
        // 200 reads per 10 minutes of the same 3 secrets for 5 days, with listings.
        let mut driver = Driver::new(spec(), registry());
        let mut events = usual("billing-agent", monday(), 5 * 24, 1200.0, 3, 2);
        for h in 0..5 * 24 {
            events.push(list(
                monday() + Duration::hours(h) + Duration::seconds(7),
                "billing-agent",
            ));
        }
        driver.feed_all(&mut events);
        driver.finish();
        assert!(driver.findings.is_empty(), "{:?}", driver.findings);
    }

    /// `usual` history for `hours`, then 12 distinct secrets in one bucket; the
    /// history minimum is lowered so that only the learning period holds findings back.
    fn twelve_after(hours: i64, earlier_twelve: bool) -> Vec<&'static str> {
        let mut spec = spec();
        spec.params
            .insert("min_history_buckets".into(), toml::Value::Integer(1));
        let mut driver = Driver::new(spec, registry());
        let mut events = usual("billing-agent", monday(), hours, 6.0, 3, 3);
        let at = monday() + Duration::hours(hours) + Duration::minutes(5);
        for k in 0..12 {
            events.push(read(
                at + Duration::seconds(k),
                "billing-agent",
                &format!("other/{k}"),
            ));
            if earlier_twelve {
                let early = monday() + Duration::hours(6) + Duration::seconds(k);
                events.push(read(early, "billing-agent", &format!("x/{k}")));
            }
        }
        driver.feed_all(&mut events);
        driver.finish();
        driver.variants("app:billing-agent")
    }

    #[test]
    fn secret_reads_baseline_waits_for_learning() {
        // 20 hours in (learning lasts a day): nothing.
        assert!(twelve_after(20, false).is_empty());
        // The control: two days in, the same reads are a baseline finding.
        assert_eq!(twelve_after(48, false), ["baseline"]);
        // ... unless it read that many once before (the "most seen" guard).
        assert!(twelve_after(48, true).is_empty());
    }

    #[test]
    fn secret_reads_baseline_finding_names_the_numbers() {
        let mut driver = Driver::new(spec(), registry());
        let mut events = usual("billing-agent", monday(), 4 * 24, 6.0, 3, 3);
        let at = monday() + Duration::days(4) + Duration::hours(2);
        for k in 0..12 {
            events.push(read(
                at + Duration::seconds(k),
                "billing-agent",
                &format!("other/{k}"),
            ));
        }
        driver.feed_all(&mut events);
        driver.finish();
        let f = &driver.findings[0];
        assert_eq!(f.variant, "baseline");
        let observed = f.evidence.observed.as_u64().unwrap();
        assert!((12..=14).contains(&observed), "{observed}");
        assert!(
            f.evidence.baseline.as_f64().unwrap() < 2.0,
            "{:?}",
            f.evidence.baseline
        );
        assert!(f.evidence.details["max_distinct_seen"].as_u64().unwrap() <= 3);
        assert!(
            f.summary
                .contains(&format!("read {observed} distinct secrets")),
            "{}",
            f.summary
        );
    }

    #[test]
    fn secret_reads_unregistered_reader_at_once() {
        let mut driver = Driver::new(spec(), registry());
        let t = monday() + Duration::hours(9);
        driver.feed(&read(t, "!0oa-shadow", "prod/crm/api-key"));
        // Emitted on observe, before any bucket closes.
        assert_eq!(driver.findings.len(), 1);
        let f = &driver.findings[0];
        assert_eq!(f.variant, "unregistered_reader");
        assert_eq!(f.raise, 1);
        assert_eq!(f.identity, "oauth_client:0oa-shadow");
        assert_eq!(f.app_id, None);
        assert!(f.summary.contains("prod/crm/api-key"), "{}", f.summary);
        assert_eq!(f.window_start, t);
        assert_eq!(f.evidence.samples.len(), 1);
        // Once per bucket; the next bucket reports again (the engine suppresses repeats).
        driver.feed(&read(
            t + Duration::minutes(1),
            "!0oa-shadow",
            "prod/crm/other",
        ));
        assert_eq!(driver.findings.len(), 1);
        driver.feed(&read(
            t + Duration::minutes(11),
            "!0oa-shadow",
            "prod/crm/api-key",
        ));
        driver.finish();
        assert_eq!(
            driver.variants("oauth_client:0oa-shadow"),
            ["unregistered_reader", "unregistered_reader"]
        );
        // A registered app reading the same secret raises nothing.
        let mut driver = Driver::new(spec(), registry());
        driver.feed(&read(t, "crm-sync", "prod/crm/api-key"));
        driver.finish();
        assert!(driver.findings.is_empty());
    }

    #[test]
    fn secret_reads_batch_reads_count_every_secret() {
        let mut driver = Driver::new(spec(), registry());
        let t = monday() + Duration::hours(9);
        let mut batch = read(t, "crm-sync", "");
        batch.resource = None;
        batch.activity = "BatchGetSecretValue".into();
        batch.resources = (0..45).map(|k| format!("prod/app-{k}/db")).collect();
        driver.feed(&batch);
        driver.feed(&read(t + Duration::seconds(5), "crm-sync", "prod/app-0/db"));
        driver.finish();
        assert_eq!(driver.variants("app:crm-sync"), ["absolute"]);
        let f = &driver.findings[0];
        assert_eq!(f.evidence.observed, 45);
        assert_eq!(f.evidence.details["reads"], 46);
    }

    #[test]
    fn secret_reads_state_round_trip() {
        let spec = spec();
        let incident = monday() + Duration::days(3) + Duration::hours(14) + Duration::minutes(24);
        let mut events = usual("billing-agent", monday(), 4 * 24, 30.0, 6, 4);
        events.extend(usual("crm-sync", monday(), 4 * 24, 10.0, 4, 5));
        events.extend(mass_read("billing-agent", incident, true));
        for k in 0..12 {
            events.push(read(
                incident + Duration::hours(3) + Duration::seconds(k),
                "crm-sync",
                &format!("o/{k}"),
            ));
        }
        events.push(read(
            incident + Duration::hours(5),
            "!0oa-shadow",
            "prod/crm/api-key",
        ));
        events.sort_by_key(|e| e.time);
        // Restore in the middle of the incident's bucket (listing seen, reads ongoing).
        let split = events.partition_point(|e| e.time < incident + Duration::minutes(2));
        let run = |restore_at: Option<usize>| {
            Driver::new(spec.clone(), registry()).replay(&events, restore_at)
        };
        let uninterrupted = run(None);
        assert_eq!(uninterrupted.len(), 4, "{uninterrupted:#?}");
        assert_eq!(uninterrupted, run(Some(split)));
    }

    #[test]
    fn secret_reads_bounds_identities_and_distinct_secrets() {
        let spec = spec();
        let registry = registry();
        let t = monday();
        let cx = Context {
            registry: &registry,
            watermark: t,
            spec: &spec,
        };
        let mut detector = SecretReads::new(&spec, 40).unwrap();
        let mut out = Vec::new();
        for i in 0..400 {
            detector.observe(
                &read(t + Duration::seconds(i), &format!("app-{i}"), "s"),
                &cx,
                &mut out,
            );
            assert!(detector.tracked() <= 40);
        }
        // 3000 distinct secrets in one bucket: the set keeps 1000 and says so.
        let mut detector = SecretReads::new(&spec, 40).unwrap();
        for k in 0..3000 {
            detector.observe(
                &read(
                    t + Duration::milliseconds(k * 100),
                    "crm-sync",
                    &format!("s/{k}"),
                ),
                &cx,
                &mut out,
            );
        }
        let open = detector
            .map
            .get("app:crm-sync")
            .unwrap()
            .open
            .first()
            .unwrap();
        assert_eq!(open.secrets.len(), 1000);
        assert!(open.capped);
        assert_eq!(open.reads, 3000);
        let later = Context {
            registry: &registry,
            watermark: t + Duration::hours(1),
            spec: &spec,
        };
        detector.advance(&later, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence.observed, 1000);
        assert_eq!(out[0].evidence.details["distinct_capped"], true);
        assert!(
            out[0].summary.contains("read at least 1000 distinct"),
            "{}",
            out[0].summary
        );
        // Closed, the identity keeps only its small baseline and its known set,
        // which max_known_secrets bounds (a hash each).
        let saved = detector.save();
        let known = detector.map.get("app:crm-sync").unwrap().known.len();
        assert_eq!(known, 512, "the known set is capped at max_known_secrets");
        assert!(
            saved[0].1.to_string().len() < 2048 + 21 * known,
            "{}",
            saved[0].1
        );
        assert!(detector.map.get("app:crm-sync").unwrap().open.is_empty());
    }

    #[test]
    fn secret_reads_refuses_bad_params() {
        let mut bad = spec();
        bad.params
            .insert("min_distinct".into(), toml::Value::Integer(0));
        assert_eq!(build(&bad, 10).err().unwrap().key, "params.min_distinct");
        let mut bad = spec();
        bad.params
            .insert("max_secrets_per_bucket".into(), toml::Value::Integer(20));
        assert_eq!(
            build(&bad, 10).err().unwrap().key,
            "params.max_secrets_per_bucket"
        );
        let mut bad = spec();
        bad.params
            .insert("max_distnct".into(), toml::Value::Integer(20));
        let e = build(&bad, 10).err().unwrap();
        assert!(e.to_string().contains("max_distnct"), "{e}");
    }
}
