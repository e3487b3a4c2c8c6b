//! `rate_spike`: events per bucket per identity against a seasonal, per-identity baseline.
//!
//! Each identity's events are counted in tumbling buckets aligned to the Unix
//! epoch (`bucket_secs`, default 5 minutes). A bucket is evaluated once, when
//! the watermark passes its end, against the identity's baseline:
//!
//! - one EWMA of the bucket count per *slot*, a slot being the UTC hour of day
//!   × {weekday, weekend} (48 slots), so the daily curve and quiet weekends are
//!   expected rather than alerted on;
//! - an overall EWMA as a fallback while a slot has seen fewer than
//!   `min_slot_buckets` buckets. The fallback is the larger of the overall EWMA
//!   and the busiest mature slot, so a first Monday morning after a first
//!   (quiet) weekend is not compared with the weekend.
//!
//! A bucket alerts when all of: `count >= min_count`, `count >= min_ratio ×
//! expected`, the Poisson z-score `(count − expected) / √max(expected, 1)`
//! is at least `min_z`, and `count > peak_margin ×` the identity's own peak
//! around that hour — and the identity is past its learning period. The peak
//! is the busiest bucket the identity had in that UTC hour or the hours either
//! side, decayed by `peak_decay_per_day`: the hour's EWMA averages a
//! five-minute nightly burst away, its peak remembers it, so a job that runs
//! at the same time every day (or week) is normal once it has been seen. Every
//! closed bucket updates the baseline; buckets past the thresholds contribute
//! at most `min_ratio × max(expected, 1)`, so one spike does not become the new
//! normal. Empty buckets between two active ones count as zeros (at most one
//! week of them is replayed, which touches every slot).
//!
//! Several buckets of one identity may be open at once (see [`buckets`]): the
//! watermark follows the slowest partition, so events arrive in any order
//! within it and each is counted in its own bucket; the same records give the
//! same alerts however they are split into partitions or files and in whatever
//! order those are read.
//!
//! [`buckets`]: super::buckets

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::buckets::{Bucket, OpenBuckets, keep_earliest};
use crate::detect::alert::{EventRef, Evidence, Finding, categories_sql};
use crate::detect::spec::{DetectorSpec, SpecError};
use crate::detect::{Context, Detector, IdentityMap, StateStore};
use crate::event::NormalizedEvent;

/// Events kept as samples per bucket.
const MAX_SAMPLES: usize = 5;
/// Seconds in a week: the longest run of empty buckets replayed into the baseline.
const WEEK_SECS: i64 = 7 * 86_400;

/// Parameters of a `rate_spike` detector (`[params]` of its file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Length of a counting bucket, in seconds; buckets are aligned to the Unix
    /// epoch and must divide an hour (60–3600).
    #[serde(default = "default_bucket_secs")]
    pub bucket_secs: u64,
    /// Fewest events in one bucket that may alert (keeps low-volume identities quiet).
    #[serde(default = "default_min_count")]
    pub min_count: u32,
    /// Smallest ratio of observed to expected events per bucket that may alert.
    #[serde(default = "default_min_ratio")]
    pub min_ratio: f64,
    /// Smallest Poisson z-score, `(count − expected) / √max(expected, 1)`, that may alert.
    #[serde(default = "default_min_z")]
    pub min_z: f64,
    /// Weight (0–1] of a new bucket in its slot's EWMA; smaller remembers longer.
    #[serde(default = "default_slot_alpha")]
    pub slot_alpha: f64,
    /// Weight (0–1] of a new bucket in the identity's overall EWMA (the fallback).
    #[serde(default = "default_overall_alpha")]
    pub overall_alpha: f64,
    /// Buckets a slot must have seen before its own EWMA is the expectation.
    #[serde(default = "default_min_slot_buckets")]
    pub min_slot_buckets: u32,
    /// Buckets an identity must have seen before the overall fallback may be used.
    #[serde(default = "default_min_history_buckets")]
    pub min_history_buckets: u32,
    /// A bucket alerts only above this multiple of the identity's own peak bucket
    /// at that time of day (the busiest bucket it had in that UTC hour or the hours
    /// either side, decayed by `peak_decay_per_day`), so a job that bursts at the
    /// same time every day is normal once seen. 0 turns the peak check off.
    #[serde(default = "default_peak_margin")]
    pub peak_margin: f64,
    /// Factor a remembered peak keeps per day (0–1]: 0.95 halves it in about two
    /// weeks, so a weekly job's peak is still there a week later.
    #[serde(default = "default_peak_decay_per_day")]
    pub peak_decay_per_day: f64,
}

fn default_peak_margin() -> f64 {
    1.5
}
fn default_peak_decay_per_day() -> f64 {
    0.95
}

fn default_bucket_secs() -> u64 {
    300
}
fn default_min_count() -> u32 {
    30
}
fn default_min_ratio() -> f64 {
    4.0
}
fn default_min_z() -> f64 {
    6.0
}
fn default_slot_alpha() -> f64 {
    0.05
}
fn default_overall_alpha() -> f64 {
    0.01
}
fn default_min_slot_buckets() -> u32 {
    12
}
fn default_min_history_buckets() -> u32 {
    288
}

impl Params {
    fn validate(&self, spec: &DetectorSpec) -> Result<(), SpecError> {
        if !(60..=3600).contains(&self.bucket_secs) || 3600 % self.bucket_secs != 0 {
            return Err(spec.error(
                "params.bucket_secs",
                "must be between 60 and 3600 and divide 3600 (a bucket lies within one hour-of-day slot)",
            ));
        }
        if self.min_count == 0 {
            return Err(spec.error("params.min_count", "must be at least 1"));
        }
        if !self.min_ratio.is_finite() || self.min_ratio <= 1.0 {
            return Err(spec.error("params.min_ratio", "must be a number above 1"));
        }
        if !self.min_z.is_finite() || self.min_z <= 0.0 {
            return Err(spec.error("params.min_z", "must be a number above 0"));
        }
        for (key, alpha) in [
            ("params.slot_alpha", self.slot_alpha),
            ("params.overall_alpha", self.overall_alpha),
        ] {
            if !(alpha > 0.0 && alpha <= 1.0) {
                return Err(spec.error(key, "must be above 0 and at most 1"));
            }
        }
        if self.min_slot_buckets == 0 || self.min_slot_buckets > u16::MAX as u32 {
            return Err(spec.error("params.min_slot_buckets", "must be between 1 and 65535"));
        }
        if self.min_history_buckets == 0 {
            return Err(spec.error("params.min_history_buckets", "must be at least 1"));
        }
        if !self.peak_margin.is_finite() || self.peak_margin < 0.0 {
            return Err(spec.error("params.peak_margin", "must be a number, 0 or more"));
        }
        if !(self.peak_decay_per_day > 0.0 && self.peak_decay_per_day <= 1.0) {
            return Err(spec.error("params.peak_decay_per_day", "must be above 0 and at most 1"));
        }
        Ok(())
    }
}

/// Builds a `rate_spike` detector from its file.
pub fn build(spec: &DetectorSpec, max_identities: usize) -> Result<Box<dyn Detector>, SpecError> {
    Ok(Box::new(RateSpike::new(spec, max_identities)?))
}

/// A bucket being counted for one identity.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct OpenBucket {
    /// Bucket start, epoch seconds.
    start: i64,
    count: u32,
    /// The earliest events of the bucket (by [`EventRef::not_after`]).
    samples: Vec<EventRef>,
}

impl Bucket for OpenBucket {
    fn starting(start: i64) -> Self {
        OpenBucket {
            start,
            count: 0,
            samples: Vec::new(),
        }
    }

    fn start(&self) -> i64 {
        self.start
    }
}

/// One identity's baseline and open buckets (about 0.5 KiB when idle).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    /// First event time, epoch seconds (for the learning period).
    first_seen: Option<i64>,
    app_id: Option<String>,
    /// EWMA of the bucket count per slot: `[weekday, weekend][UTC hour]`.
    slot_ewma: [[f32; 24]; 2],
    /// Buckets seen per slot (saturating).
    slot_buckets: [[u16; 24]; 2],
    /// EWMA of the bucket count over all slots (fallback).
    overall_ewma: f32,
    overall_buckets: u32,
    /// Start of the last evaluated bucket, epoch seconds.
    last_closed: Option<i64>,
    /// Buckets not closed yet, in start order (one `null` or object in older snapshots).
    #[serde(default)]
    open: OpenBuckets<OpenBucket>,
    /// Busiest bucket per UTC hour of day, decayed per bucket learned in that hour.
    #[serde(default)]
    hour_peak: [f32; 24],
}

/// Weekday (0) or weekend (1), and UTC hour, of an epoch second.
fn slot_of(epoch_secs: i64) -> (usize, usize) {
    let days = epoch_secs.div_euclid(86_400);
    let hour = (epoch_secs.rem_euclid(86_400) / 3600) as usize;
    // 1970-01-01 was a Thursday: (days + 3) % 7 is 0 on Monday, 5 Saturday, 6 Sunday.
    let weekday = (days + 3).rem_euclid(7);
    (usize::from(weekday >= 5), hour)
}

fn slot_label(day: usize, hour: usize) -> String {
    let kind = if day == 1 { "weekend" } else { "weekday" };
    format!("{kind} {hour:02}:00-{:02}:00 UTC", (hour + 1) % 24)
}

/// "5 minutes", "1 hour", "90 seconds".
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

/// EWMA step whose weight starts at 1/(n+1) (a plain mean) until it reaches `alpha`.
fn ewma_step(ewma: f32, n: u32, alpha: f64, value: f64) -> f32 {
    let weight = alpha.max(1.0 / (n as f64 + 1.0));
    (ewma as f64 + weight * (value - ewma as f64)) as f32
}

impl State {
    /// Expected count for a slot and where it came from, once the baseline is mature enough.
    fn expected(&self, p: &Params, day: usize, hour: usize) -> Option<(f64, &'static str)> {
        if self.slot_buckets[day][hour] as u32 >= p.min_slot_buckets {
            return Some((self.slot_ewma[day][hour] as f64, "slot"));
        }
        if self.overall_buckets >= p.min_history_buckets {
            let mut busiest = self.overall_ewma;
            for d in 0..2 {
                for h in 0..24 {
                    if self.slot_buckets[d][h] as u32 >= p.min_slot_buckets {
                        busiest = busiest.max(self.slot_ewma[d][h]);
                    }
                }
            }
            return Some((busiest as f64, "overall"));
        }
        None
    }

    /// The identity's own peak around `hour`: that hour and the ones either side,
    /// so a job that starts a few minutes earlier or later is still recognised.
    fn peak_near(&self, hour: usize) -> f64 {
        [(hour + 23) % 24, hour, (hour + 1) % 24]
            .iter()
            .map(|h| self.hour_peak[*h] as f64)
            .fold(0.0, f64::max)
    }

    /// Remembers a closed bucket's full count as the peak of its hour (decayed first).
    fn learn_peak(&mut self, p: &Params, start: i64, count: f64) {
        let (_, hour) = slot_of(start);
        let buckets_per_day_in_hour = (3600 / p.bucket_secs).max(1) as f64;
        let decay = p.peak_decay_per_day.powf(1.0 / buckets_per_day_in_hour);
        let peak = &mut self.hour_peak[hour];
        *peak = ((*peak as f64 * decay).max(count)) as f32;
    }

    /// Adds one closed bucket's count to the baseline.
    fn learn(&mut self, p: &Params, start: i64, value: f64) {
        let (day, hour) = slot_of(start);
        let n = &mut self.slot_buckets[day][hour];
        self.slot_ewma[day][hour] =
            ewma_step(self.slot_ewma[day][hour], *n as u32, p.slot_alpha, value);
        *n = n.saturating_add(1);
        self.overall_ewma = ewma_step(
            self.overall_ewma,
            self.overall_buckets,
            p.overall_alpha,
            value,
        );
        self.overall_buckets = self.overall_buckets.saturating_add(1);
    }

    /// Counts the empty buckets between the last closed one and `next_start` as zeros.
    fn learn_gap(&mut self, p: &Params, next_start: i64) {
        let Some(last) = self.last_closed else { return };
        let bucket = p.bucket_secs as i64;
        let first = (last + bucket).max(next_start - WEEK_SECS);
        let mut start = first - first.rem_euclid(bucket);
        while start < next_start {
            self.learn(p, start, 0.0);
            self.learn_peak(p, start, 0.0);
            start += bucket;
        }
    }
}

/// One shard's `rate_spike` detector.
pub struct RateSpike {
    p: Params,
    /// Investigation filter: the detector's categories.
    sql_filter: String,
    map: IdentityMap<State>,
    /// No open bucket ends before this (epoch seconds); `advance` does nothing until then.
    next_due: i64,
}

impl RateSpike {
    pub fn new(spec: &DetectorSpec, max_identities: usize) -> Result<Self, SpecError> {
        let p: Params = spec.params()?;
        p.validate(spec)?;
        let sql_filter = categories_sql(&spec.filter.categories);
        Ok(RateSpike {
            p,
            sql_filter,
            map: IdentityMap::new(max_identities),
            next_due: i64::MAX,
        })
    }
}

/// Evaluates a closed bucket, emits a finding if it is a spike, and learns it
/// (after the empty buckets since the last closed one).
fn close(
    p: &Params,
    sql_filter: &str,
    key: &str,
    state: &mut State,
    open: OpenBucket,
    cx: &Context<'_>,
    out: &mut Vec<Finding>,
) {
    state.learn_gap(p, open.start);
    let count = open.count as f64;
    let (day, hour) = slot_of(open.start);
    let end = open.start + p.bucket_secs as i64;
    let mut value = count;
    let peak = state.peak_near(hour);
    if let Some((expected, source)) = state.expected(p, day, hour) {
        let z = (count - expected) / expected.max(1.0).sqrt();
        let spike = open.count >= p.min_count
            && count >= p.min_ratio * expected
            && z >= p.min_z
            && count > p.peak_margin * peak;
        if spike {
            value = count.min(p.min_ratio * expected.max(1.0));
            let first_seen = epoch(state.first_seen.unwrap_or(open.start));
            if !cx.learning(first_seen, epoch(end)) {
                out.push(finding(
                    p, sql_filter, key, state, &open, expected, source, z, cx,
                ));
            }
        }
    }
    state.learn(p, open.start, value);
    // The peak keeps what really happened: a burst seen at this hour before is the
    // identity's own habit the next time.
    state.learn_peak(p, open.start, count);
    state.last_closed = Some(open.start);
}

#[allow(clippy::too_many_arguments)]
fn finding(
    p: &Params,
    sql_filter: &str,
    key: &str,
    state: &State,
    open: &OpenBucket,
    expected: f64,
    source: &'static str,
    z: f64,
    cx: &Context<'_>,
) -> Finding {
    let (day, hour) = slot_of(open.start);
    let start = epoch(open.start);
    let end = epoch(open.start + p.bucket_secs as i64);
    let who = match state.app_id.as_deref().and_then(|id| cx.registry.app(id)) {
        Some(app) => format!("{key} ({})", app.name),
        None => key.to_string(),
    };
    let ratio = if expected > 0.0 {
        Some(open.count as f64 / expected)
    } else {
        None
    };
    let versus = match ratio {
        Some(r) => format!("{r:.1}x the {expected:.1} expected"),
        None => "where none are expected".to_string(),
    };
    let summary = format!(
        "{who} made {} calls in the {} from {}, {versus} for {} (z = {z:.1}).",
        open.count,
        span_text(p.bucket_secs),
        start.format("%Y-%m-%d %H:%M UTC"),
        slot_label(day, hour),
    );
    let details = serde_json::json!({
        "bucket_secs": p.bucket_secs,
        "count": open.count,
        "expected": round2(expected),
        "expected_source": source,
        "slot": slot_label(day, hour),
        "slot_buckets": state.slot_buckets[day][hour],
        "ratio": ratio.map(round2),
        "z": round2(z),
        "min_count": p.min_count,
        "min_ratio": p.min_ratio,
        "min_z": p.min_z,
        "own_peak_near_hour": round2(state.peak_near(hour)),
        "peak_margin": p.peak_margin,
    });
    Finding {
        identity: key.to_string(),
        app_id: state.app_id.clone(),
        score: (100.0 * (1.0 - p.min_z / z)).clamp(1.0, 100.0),
        window_start: start,
        window_end: end,
        summary,
        evidence: Evidence {
            observed: serde_json::json!(open.count),
            baseline: serde_json::json!(round2(expected)),
            details: match details {
                serde_json::Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
            samples: open.samples.clone(),
        },
        sql_filter: sql_filter.to_string(),
        raise: 0,
        variant: "spike",
    }
}

impl Detector for RateSpike {
    fn store(&self) -> &dyn StateStore {
        &self.map
    }

    fn store_mut(&mut self) -> &mut dyn StateStore {
        &mut self.map
    }

    fn observe(&mut self, event: &NormalizedEvent, cx: &Context<'_>, out: &mut Vec<Finding>) {
        let key = event
            .identity
            .as_ref()
            .map_or("anonymous", |i| i.key.as_str());
        let app_id = event.identity.as_ref().and_then(|i| i.app_id.as_deref());
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
            close(&self.p, &self.sql_filter, key, state, oldest, cx, out);
        }
        // None: its bucket is already closed and none is open (the engine drops
        // such late events before they get here).
        let Some((open, opened)) = state.open.bucket_for(start, state.last_closed) else {
            return;
        };
        open.count = open.count.saturating_add(1);
        keep_earliest(
            &mut open.samples,
            EventRef::of(event),
            MAX_SAMPLES,
            EventRef::not_after,
        );
        if opened {
            self.next_due = self.next_due.min(start + bucket);
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
                close(&self.p, &self.sql_filter, key, state, open, cx, &mut found);
            }
            if let Some(start) = state.open.earliest_start() {
                next_due = next_due.min(start + bucket);
            }
        }
        self.next_due = next_due;
        found.sort_by(|a, b| (a.window_start, &a.identity).cmp(&(b.window_start, &b.identity)));
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
    use crate::event::{Category, Product};
    use crate::generator::{Rng, diurnal};
    use crate::identity::Registry;
    use chrono::{Duration, TimeZone};

    const REGISTRY: &str = r#"
apps:
  - id: sales-bot
    name: Sales bot
    owner: alice@example.com
    risk_tier: internal
    identities:
      gateway_consumers: [sales-bot]
    registered_on: 2026-09-01
  - id: ops-sync
    name: Ops sync
    owner: bob@example.com
    risk_tier: internal
    registered_on: 2026-09-01
  - id: data-export
    name: Data export
    owner: carol@example.com
    risk_tier: restricted
    registered_on: 2026-09-01
  - id: hr-digest
    name: HR digest
    owner: dan@example.com
    risk_tier: internal
    registered_on: 2026-09-01
"#;

    fn spec() -> DetectorSpec {
        testing::spec("call_spike.toml")
    }

    fn registry() -> Registry {
        testing::registry(REGISTRY)
    }

    fn event(t: DateTime<Utc>, app: &str, category: Category) -> NormalizedEvent {
        let mut e = NormalizedEvent::new(t, Product::Kong, category, "GET");
        e.identity = Some(registered(app));
        e
    }

    /// A simulated app: id and mean calls per hour at the daily peak.
    struct Sim {
        app: &'static str,
        peak_per_hour: f64,
        /// Start of a 15-minute burst at 25x the usual rate (the generator's `CallSpike`).
        burst: Option<DateTime<Utc>>,
    }

    /// Per-minute Poisson traffic shaped by `diurnal`, fed in time order.
    fn simulate(
        driver: &mut Driver,
        sims: &[Sim],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let mut t0 = from;
        let mut minute = Vec::new();
        while t0 < to {
            let rate = diurnal(t0);
            for sim in sims {
                let mut calls = rng.poisson(sim.peak_per_hour / 60.0 * rate);
                if let Some(b) = sim.burst
                    && t0 >= b
                    && t0 < b + Duration::minutes(15)
                {
                    // The generator's CallSpike: max(peak / 4 × 25, 300) calls over 15 minutes.
                    calls += ((sim.peak_per_hour / 4.0 * 25.0).max(300.0) / 15.0).round() as u64;
                }
                for _ in 0..calls {
                    let t = t0 + Duration::milliseconds(rng.below(60_000) as i64);
                    let category = if rng.f64() < 0.75 {
                        Category::EgressRequest
                    } else {
                        Category::SecretRead
                    };
                    minute.push(event(t, sim.app, category));
                }
            }
            minute.sort_by_key(|e| e.time);
            for e in minute.drain(..) {
                driver.feed(&e);
            }
            t0 += Duration::minutes(1);
        }
    }

    /// Four apps from 20 to 3000 calls an hour at peak, `from` until 18:00 on the Monday
    /// a week after 2026-11-23; `burst_app` bursts that Monday at 14:00.
    fn traffic(
        driver: &mut Driver,
        from: DateTime<Utc>,
        burst_app: Option<&'static str>,
    ) -> DateTime<Utc> {
        let burst = monday() + Duration::days(7) + Duration::hours(14);
        let sims: Vec<Sim> = [
            ("sales-bot", 200.0),
            ("ops-sync", 20.0),
            ("data-export", 1000.0),
            ("hr-digest", 3000.0),
        ]
        .into_iter()
        .map(|(app, peak_per_hour)| Sim {
            app,
            peak_per_hour,
            burst: (burst_app == Some(app)).then_some(burst),
        })
        .collect();
        simulate(driver, &sims, from, burst + Duration::hours(4), 11);
        driver.finish();
        burst
    }

    /// Seven days from Monday, then the next Monday (after a quiet weekend) until 18:00.
    fn week_of(driver: &mut Driver, burst_app: Option<&'static str>) -> DateTime<Utc> {
        traffic(driver, monday(), burst_app)
    }

    #[test]
    fn a_nightly_job_is_normal_once_seen_and_a_burst_at_another_hour_still_alerts() {
        let mut driver = Driver::new(spec(), registry());
        let mut rng = Rng::new(3);
        let mut events = Vec::new();
        let days = 8;
        for minute in 0..days * 24 * 60 {
            let t0 = monday() + Duration::minutes(minute);
            for _ in 0..rng.poisson(40.0 / 60.0 * diurnal(t0)) {
                let t = t0 + Duration::milliseconds(rng.below(60_000) as i64);
                events.push(event(t, "ops-sync", Category::ApiCall));
            }
        }
        // The batch job: 120 calls within four minutes from 02:01 every night
        // (the first night falls in the learning period), a little later each night.
        for day in 0..days {
            let start =
                monday() + Duration::days(day) + Duration::hours(2) + Duration::minutes(1 + day);
            for k in 0..120 {
                events.push(event(
                    start + Duration::seconds(2 * k),
                    "ops-sync",
                    Category::ApiCall,
                ));
            }
        }
        // The same volume at 14:00 on day 6: never seen at that time.
        let odd = monday() + Duration::days(6) + Duration::hours(14);
        for k in 0..120 {
            events.push(event(
                odd + Duration::seconds(2 * k),
                "ops-sync",
                Category::ApiCall,
            ));
        }
        events.sort_by_key(|e| e.time);
        for e in &events {
            driver.feed(e);
        }
        driver.finish();
        let windows: Vec<DateTime<Utc>> = driver.findings.iter().map(|f| f.window_start).collect();
        assert_eq!(
            windows,
            [odd],
            "only the burst at an unusual hour: {windows:?}"
        );
        let f = &driver.findings[0];
        assert!(
            f.evidence.details["own_peak_near_hour"].as_f64().unwrap() < 40.0,
            "{:?}",
            f.evidence.details
        );
    }

    #[test]
    fn the_same_calls_give_the_same_alerts_when_one_partition_runs_hours_ahead() {
        let mut rng = Rng::new(5);
        let mut events = Vec::new();
        for minute in 0..9 * 24 * 60 {
            let t0 = monday() + Duration::minutes(minute);
            for (app, peak_per_hour) in [("sales-bot", 200.0), ("ops-sync", 40.0)] {
                for _ in 0..rng.poisson(peak_per_hour / 60.0 * diurnal(t0)) {
                    let t = t0 + Duration::milliseconds(rng.below(60_000) as i64);
                    events.push(event(t, app, Category::ApiCall));
                }
            }
        }
        // A 15-minute burst of ops-sync on the second Tuesday afternoon.
        let burst = monday() + Duration::days(8) + Duration::hours(14);
        for k in 0..600 {
            events.push(event(
                burst + Duration::milliseconds(k * 1500),
                "ops-sync",
                Category::ApiCall,
            ));
        }
        events.sort_by_key(|e| e.time);
        let mut partitions = vec![Vec::new(), Vec::new()];
        for (i, e) in events.into_iter().enumerate() {
            partitions[i % 2].push(e);
        }
        let run = |chunk: Duration| {
            let mut found: Vec<String> =
                testing::feed_by_partition(&spec(), &registry(), &partitions, chunk)
                    .iter()
                    .map(|f| format!("{f:?}"))
                    .collect();
            found.sort();
            found
        };
        let in_step = run(Duration::minutes(1));
        // Partition 0 read up to 9 hours ahead of partition 1, as after a restart
        // on a backlog: before buckets waited for the watermark, partition 1's
        // calls were counted in partition 0's newest bucket and made spikes.
        let hours_ahead = run(Duration::hours(9));
        assert!(
            !in_step.is_empty() && in_step.iter().all(|f| f.contains("app:ops-sync")),
            "{in_step:#?}"
        );
        assert_eq!(in_step, hours_ahead);
    }

    #[test]
    fn slots_follow_utc_hours_and_weekends() {
        assert_eq!(slot_of(monday().timestamp()), (0, 0));
        let saturday = Utc.with_ymd_and_hms(2026, 11, 28, 13, 30, 0).unwrap();
        assert_eq!(slot_of(saturday.timestamp()), (1, 13));
        let sunday = Utc.with_ymd_and_hms(2026, 11, 29, 23, 59, 59).unwrap();
        assert_eq!(slot_of(sunday.timestamp()), (1, 23));
        assert_eq!(slot_of((monday() + Duration::days(7)).timestamp()), (0, 0));
        assert_eq!(span_text(300), "5 minutes");
        assert_eq!(span_text(3600), "1 hour");
    }

    #[test]
    fn rate_spike_burst_after_a_week_gives_one_finding() {
        let mut driver = Driver::new(spec(), registry());
        let burst = week_of(&mut driver, Some("sales-bot"));
        assert!(!driver.findings.is_empty(), "the burst was not found");
        for f in &driver.findings {
            assert_eq!(f.identity, "app:sales-bot", "{}", f.summary);
            assert!(
                f.window_start >= burst && f.window_end <= burst + Duration::minutes(15),
                "{}",
                f.summary
            );
            assert_eq!(f.variant, "spike");
        }
        // At most one finding per bucket; the engine's suppression leaves exactly one alert.
        let mut starts: Vec<_> = driver.findings.iter().map(|f| f.window_start).collect();
        starts.dedup();
        assert_eq!(starts.len(), driver.findings.len());
        let alerts = driver.alerts();
        assert_eq!(alerts.len(), 1);
        let f = alerts[0];
        assert_eq!(f.window_start, burst);
        assert_eq!(f.window_end, burst + Duration::minutes(5));
        assert_eq!(f.app_id.as_deref(), Some("sales-bot"));
        let observed = f.evidence.observed.as_u64().unwrap();
        let expected = f.evidence.baseline.as_f64().unwrap();
        assert!(observed >= 400, "{observed}");
        assert!(expected > 5.0 && expected < 40.0, "{expected}");
        assert_eq!(f.evidence.details["expected_source"], "slot");
        assert!(f.evidence.details["z"].as_f64().unwrap() >= 6.0);
        assert!(f.score > 50.0 && f.score <= 100.0, "{}", f.score);
        assert!(!f.evidence.samples.is_empty() && f.evidence.samples.len() <= 5);
        assert!(
            f.summary.contains("app:sales-bot (Sales bot)"),
            "{}",
            f.summary
        );
        assert!(
            f.summary.contains("weekday 14:00-15:00 UTC"),
            "{}",
            f.summary
        );
        assert!(
            f.sql_filter.starts_with("category IN ('api_call'"),
            "{}",
            f.sql_filter
        );
    }

    #[test]
    fn rate_spike_quiet_on_a_normal_week_and_monday_morning() {
        let mut driver = Driver::new(spec(), registry());
        week_of(&mut driver, None);
        let summaries: Vec<&str> = driver.findings.iter().map(|f| f.summary.as_str()).collect();
        assert!(summaries.is_empty(), "{summaries:#?}");
        // Even a detector twice as sensitive on the ratio stays quiet: the margin is real.
        let mut tight = spec();
        tight
            .params
            .insert("min_ratio".into(), toml::Value::Float(2.0));
        let mut driver = Driver::new(tight, registry());
        week_of(&mut driver, None);
        let summaries: Vec<&str> = driver.findings.iter().map(|f| f.summary.as_str()).collect();
        assert!(summaries.is_empty(), "{summaries:#?}");
    }

    #[test]
    fn rate_spike_quiet_when_first_seen_on_a_weekend() {
        // Learning ends on Sunday; Monday's weekday hours were never seen, so the
        // fallback (the busiest hour seen, a weekend one) must not flag the workday.
        let mut driver = Driver::new(spec(), registry());
        let saturday = monday() + Duration::days(5);
        traffic(&mut driver, saturday, None);
        let summaries: Vec<&str> = driver.findings.iter().map(|f| f.summary.as_str()).collect();
        assert!(summaries.is_empty(), "{summaries:#?}");
    }

    #[test]
    fn rate_spike_quiet_while_learning() {
        let mut learning = spec();
        learning.learning_period_secs = 10 * 86_400;
        let mut driver = Driver::new(learning, registry());
        week_of(&mut driver, Some("sales-bot"));
        assert!(driver.findings.is_empty(), "{:?}", driver.findings);
    }

    /// Steady traffic of `per_bucket` calls per 5 minutes for a week, then one bucket of `then`.
    fn low_volume(then: u64) -> Vec<Finding> {
        let mut driver = Driver::new(spec(), registry());
        let mut rng = Rng::new(5);
        let spike = monday() + Duration::days(7) + Duration::hours(10);
        let mut t0 = monday();
        while t0 < spike + Duration::hours(1) {
            let calls = if t0 == spike { then } else { rng.poisson(3.0) };
            let mut times: Vec<i64> = (0..calls).map(|_| rng.below(300_000) as i64).collect();
            times.sort();
            for ms in times {
                driver.feed(&event(
                    t0 + Duration::milliseconds(ms),
                    "ops-sync",
                    Category::ApiCall,
                ));
            }
            t0 += Duration::minutes(5);
        }
        driver.finish();
        driver.findings
    }

    #[test]
    fn rate_spike_low_volume_needs_min_count() {
        assert!(low_volume(8).is_empty());
        // 25 calls is 8x the usual 3 and far past min_z, but under min_count.
        assert!(low_volume(25).is_empty());
        // The control: 40 calls pass every condition.
        let findings = low_volume(40);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(
            findings[0].summary.contains("made 40 calls"),
            "{}",
            findings[0].summary
        );
    }

    #[test]
    fn rate_spike_state_round_trip() {
        let spec = spec();
        let mut events = Vec::new();
        let mut rng = Rng::new(3);
        let start = monday();
        let burst = start + Duration::days(4) + Duration::hours(14);
        for minute in 0..(5 * 1440) {
            let t0 = start + Duration::minutes(minute);
            let mut n = rng.poisson(1000.0 / 60.0 * diurnal(t0));
            if t0 >= burst && t0 < burst + Duration::minutes(15) {
                n += 400;
            }
            for _ in 0..n {
                let t = t0 + Duration::milliseconds(rng.below(60_000) as i64);
                events.push(event(t, "data-export", Category::ApiCall));
            }
        }
        events.sort_by_key(|e| e.time);
        let split =
            events.partition_point(|e| e.time < start + Duration::days(3) + Duration::minutes(2));
        let run = |events: &[NormalizedEvent], restore_at: Option<usize>| {
            Driver::new(spec.clone(), registry()).replay(events, restore_at)
        };
        let uninterrupted = run(&events, None);
        let restored = run(&events, Some(split));
        assert!(!uninterrupted.is_empty());
        assert_eq!(uninterrupted, restored);
    }

    #[test]
    fn rate_spike_bounds_identities_and_state_size() {
        let spec = spec();
        let registry = registry();
        let mut detector = build(&spec, 50).unwrap();
        let t = monday();
        let cx = Context {
            registry: &registry,
            watermark: t,
            spec: &spec,
        };
        let mut out = Vec::new();
        for i in 0..500 {
            let mut e = event(t + Duration::seconds(i), "x", Category::ApiCall);
            e.identity.as_mut().unwrap().key = format!("user:u{i}");
            e.identity.as_mut().unwrap().app_id = None;
            detector.observe(&e, &cx, &mut out);
            assert!(detector.tracked() <= 50);
        }
        assert!(detector.tracked() > 0);
        // An idle identity with a full baseline stays well under 2 KiB.
        let mut state = State {
            first_seen: Some(t.timestamp()),
            app_id: Some("sales-bot".into()),
            ..State::default()
        };
        for s in 0..(14 * 288) {
            state.learn(
                &Params::default_for_test(),
                t.timestamp() + s * 300,
                123.456,
            );
        }
        state.last_closed = Some(t.timestamp());
        let bytes = serde_json::to_string(&state).unwrap().len();
        assert!(std::mem::size_of::<State>() < 1024);
        assert!(bytes < 2048, "{bytes}");
        // A gap of years is replayed as at most a week of empty buckets.
        let before = state.overall_buckets;
        state.learn_gap(
            &Params::default_for_test(),
            t.timestamp() + 5 * 365 * 86_400,
        );
        assert_eq!(state.overall_buckets - before, 2016);
        // Every slot decayed: weekday slots by 60 empty buckets, weekend slots by 24.
        assert!(state.slot_ewma.iter().flatten().all(|&x| x < 50.0));
        let tracked = detector.tracked();
        assert_eq!(detector.evict_idle(t + Duration::days(1)), tracked);
        assert_eq!(detector.tracked(), 0);
    }

    impl Params {
        fn default_for_test() -> Params {
            toml::Value::Table(toml::Table::new()).try_into().unwrap()
        }
    }

    #[test]
    fn rate_spike_refuses_bad_params() {
        let mut bad = spec();
        bad.params
            .insert("bucket_secs".into(), toml::Value::Integer(7));
        assert_eq!(build(&bad, 10).err().unwrap().key, "params.bucket_secs");
        let mut bad = spec();
        bad.params
            .insert("min_ratio".into(), toml::Value::Float(0.5));
        assert_eq!(build(&bad, 10).err().unwrap().key, "params.min_ratio");
        let mut bad = spec();
        bad.params
            .insert("bukcet_secs".into(), toml::Value::Integer(300));
        let e = build(&bad, 10).err().unwrap();
        assert!(e.to_string().contains("bukcet_secs"), "{e}");
    }
}
