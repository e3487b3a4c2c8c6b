//! Helpers shared by the detector kinds' tests: a registry and a clock to build
//! events with, identities resolved the way the engine resolves them, and
//! drivers that feed a detector as the engine does.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::build;
use crate::detect::{Context, Detector, DetectorSpec, Finding};
use crate::event::{IdentityStatus, NormalizedEvent, Principal, ResolvedIdentity};
use crate::identity::Registry;

/// The detector file `detectors/<name>` as shipped.
pub(crate) fn spec(name: &str) -> DetectorSpec {
    let path = format!("detectors/{name}");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(&path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    DetectorSpec::parse(&text, Path::new(&path)).unwrap()
}

/// The registry a test describes in YAML.
pub(crate) fn registry(yaml: &str) -> Registry {
    Registry::parse(yaml, "test.yaml").unwrap()
}

/// Monday 2026-11-23 00:00 UTC.
pub(crate) fn monday() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap()
}

/// `secs` seconds after [`monday`].
pub(crate) fn at(secs: i64) -> DateTime<Utc> {
    monday() + Duration::seconds(secs)
}

/// The identity of registered app `app`, without the form that matched.
pub(crate) fn registered(app: &str) -> ResolvedIdentity {
    ResolvedIdentity {
        status: IdentityStatus::Registered,
        app_id: Some(app.to_string()),
        key: format!("app:{app}"),
        matched: None,
        assumed_by: None,
    }
}

/// The identity of `actor`: the app of its first form the registry knows,
/// else its first form (unregistered), else anonymous.
pub(crate) fn resolve(actor: &Principal, registry: &Registry) -> ResolvedIdentity {
    let matched = actor.refs.iter().find_map(|r| {
        registry
            .lookup(r.kind, &r.value)
            .map(|a| (a.id.clone(), r.clone()))
    });
    match (matched, actor.refs.first()) {
        (Some((app_id, r)), _) => ResolvedIdentity {
            status: IdentityStatus::Registered,
            key: format!("app:{app_id}"),
            app_id: Some(app_id),
            matched: Some(r),
            assumed_by: None,
        },
        (None, Some(primary)) => ResolvedIdentity {
            status: IdentityStatus::Unregistered,
            app_id: None,
            key: format!("{}:{}", primary.kind.as_str(), primary.value),
            matched: None,
            assumed_by: None,
        },
        (None, None) => ResolvedIdentity {
            status: IdentityStatus::Anonymous,
            app_id: None,
            key: "anonymous".into(),
            matched: None,
            assumed_by: None,
        },
    }
}

/// Drives a detector as the engine does: filter, then `observe` with a
/// watermark of the latest event time − 60 s.
pub(crate) fn drive(
    detector: &mut dyn Detector,
    spec: &DetectorSpec,
    registry: &Registry,
    events: &[NormalizedEvent],
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut latest = DateTime::<Utc>::MIN_UTC;
    for e in events {
        latest = latest.max(e.time);
        if !spec.filter.matches(e) {
            continue;
        }
        let cx = Context {
            registry,
            watermark: latest - Duration::seconds(60),
            spec,
        };
        detector.observe(e, &cx, &mut out);
    }
    out
}

/// Drives a windowed detector as the engine does: filter, watermark = newest time − 60 s,
/// `advance` when it moves, late events dropped, suppression applied to [`Driver::alerts`].
pub(crate) struct Driver {
    spec: DetectorSpec,
    registry: Registry,
    detector: Box<dyn Detector>,
    max_time: Option<DateTime<Utc>>,
    watermark: Option<DateTime<Utc>>,
    pub(crate) findings: Vec<Finding>,
}

impl Driver {
    pub(crate) fn new(spec: DetectorSpec, registry: Registry) -> Self {
        let detector = build(&spec, 10_000).unwrap();
        Driver {
            spec,
            registry,
            detector,
            max_time: None,
            watermark: None,
            findings: Vec::new(),
        }
    }

    fn advance_to(&mut self, watermark: DateTime<Utc>) {
        if self.watermark.is_some_and(|w| w >= watermark) {
            return;
        }
        self.watermark = Some(watermark);
        let cx = Context {
            registry: &self.registry,
            watermark,
            spec: &self.spec,
        };
        self.detector.advance(&cx, &mut self.findings);
    }

    pub(crate) fn feed(&mut self, event: &NormalizedEvent) {
        if self.max_time.is_none_or(|m| event.time > m) {
            self.max_time = Some(event.time);
        }
        let watermark = self.max_time.unwrap() - Duration::seconds(60);
        self.advance_to(watermark);
        if !self.spec.filter.matches(event) || event.time < watermark {
            return;
        }
        let cx = Context {
            registry: &self.registry,
            watermark,
            spec: &self.spec,
        };
        self.detector.observe(event, &cx, &mut self.findings);
    }

    /// Sorts `events` by time and feeds them.
    pub(crate) fn feed_all(&mut self, events: &mut [NormalizedEvent]) {
        events.sort_by_key(|e| e.time);
        for e in events.iter() {
            self.feed(e);
        }
    }

    /// Moves the watermark a day past the newest event, closing every window.
    pub(crate) fn finish(&mut self) {
        if let Some(max) = self.max_time {
            self.advance_to(max + Duration::days(1));
        }
    }

    /// Feeds `events` and finishes, restoring the detector from its saved state
    /// just before event `restore_at`; the findings, printed.
    pub(crate) fn replay(
        mut self,
        events: &[NormalizedEvent],
        restore_at: Option<usize>,
    ) -> Vec<String> {
        for (i, e) in events.iter().enumerate() {
            if restore_at == Some(i) {
                self.restore();
            }
            self.feed(e);
        }
        self.finish();
        self.findings.iter().map(|f| format!("{f:?}")).collect()
    }

    /// Replaces the detector by a new one loaded from its saved state.
    fn restore(&mut self) {
        let saved = self.detector.save();
        let mut fresh = build(&self.spec, 10_000).unwrap();
        for (k, v) in saved {
            // Through text, as a snapshot file would.
            let v: serde_json::Value = serde_json::from_str(&v.to_string()).unwrap();
            fresh.load(k, v).unwrap();
        }
        self.detector = fresh;
    }

    /// The variants found for `identity`, in order.
    pub(crate) fn variants(&self, identity: &str) -> Vec<&'static str> {
        self.findings
            .iter()
            .filter(|f| f.identity == identity)
            .map(|f| f.variant)
            .collect()
    }

    /// Findings left after the engine's suppression (per identity and variant).
    pub(crate) fn alerts(&self) -> Vec<&Finding> {
        let mut last: HashMap<(String, &str), DateTime<Utc>> = Default::default();
        let suppression = Duration::seconds(self.spec.suppression_secs as i64);
        let mut out = Vec::new();
        for f in &self.findings {
            let k = (f.identity.clone(), f.variant);
            if last
                .get(&k)
                .is_some_and(|t| f.window_end < *t + suppression)
            {
                continue;
            }
            last.insert(k, f.window_end);
            out.push(f);
        }
        out
    }
}

/// Feeds a windowed detector the way the engine reads several partitions:
/// `chunk` of time at a time, each partition's events of that chunk in turn (so
/// partition 0 runs up to `chunk` ahead of the others), with the watermark at
/// the slowest partition's newest time − 60 s and events behind it dropped.
/// Returns the findings once every window has closed.
pub(crate) fn feed_by_partition(
    spec: &DetectorSpec,
    registry: &Registry,
    partitions: &[Vec<NormalizedEvent>],
    chunk: Duration,
) -> Vec<Finding> {
    let mut detector = build(spec, 10_000).unwrap();
    let mut newest: Vec<Option<DateTime<Utc>>> = vec![None; partitions.len()];
    let mut next = vec![0usize; partitions.len()];
    let mut watermark = DateTime::<Utc>::MIN_UTC;
    let mut out = Vec::new();
    let Some(first) = partitions
        .iter()
        .filter_map(|p| p.first())
        .map(|e| e.time)
        .min()
    else {
        return out;
    };
    let mut until = first;
    while next.iter().zip(partitions).any(|(i, p)| *i < p.len()) {
        until += chunk;
        for (p, events) in partitions.iter().enumerate() {
            while let Some(e) = events.get(next[p]).filter(|e| e.time < until) {
                next[p] += 1;
                newest[p] = newest[p].max(Some(e.time));
                if let Some(slowest) = newest.iter().copied().min().flatten() {
                    let moved = slowest - Duration::seconds(60);
                    if moved > watermark {
                        watermark = moved;
                        let cx = Context {
                            registry,
                            watermark,
                            spec,
                        };
                        detector.advance(&cx, &mut out);
                    }
                }
                if !spec.filter.matches(e) || e.time < watermark {
                    continue;
                }
                let cx = Context {
                    registry,
                    watermark,
                    spec,
                };
                detector.observe(e, &cx, &mut out);
            }
        }
    }
    let end = newest.iter().copied().max().flatten().unwrap_or(first) + Duration::days(1);
    let cx = Context {
        registry,
        watermark: end,
        spec,
    };
    detector.advance(&cx, &mut out);
    out
}
