//! `round_the_clock`: an identity active in nearly every hour of a day, as a
//! machine is and a person is not.
//!
//! Its shipped use is `personal_credential_automation`: a person's principal
//! (an Okta user, an IAM user's access key, a Vault userpass token) that acts
//! around the clock is a micro-app running on someone's personal credential.
//! People work in bursts and sleep; a script on a cron does neither.
//!
//! Each identity's events are counted in one-hour buckets aligned to the Unix
//! epoch. An hour is *active* when it has at least `min_events_per_hour`
//! events. When the watermark passes the end of an hour the identity had
//! events in, the day ending with that hour (`window_hours`, 24 by default) is
//! evaluated: the identity alerts when at least `min_active_hours` of its hours
//! were active. Like the other windowed kinds, an hour is closed only by the
//! watermark, never by a newer event, so the same events give the same
//! alerts in whatever order their partitions or files are read.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::buckets::{Bucket, OpenBuckets, keep_earliest};
use crate::detect::alert::{EventRef, Evidence, Finding, categories_sql};
use crate::detect::spec::{DetectorSpec, SpecError};
use crate::detect::{Context, Detector, IdentityMap, StateStore};
use crate::event::NormalizedEvent;

const HOUR: i64 = 3600;
/// Events kept as samples per hour.
const SAMPLES_PER_HOUR: usize = 1;
/// Samples an alert carries.
const MAX_SAMPLES: usize = 5;

/// Parameters of a `round_the_clock` detector (`[params]` of its file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Hours of the sliding window an identity is judged over (1–168).
    #[serde(default = "default_window_hours")]
    pub window_hours: u32,
    /// Fewest active hours in the window that alert (1 to `window_hours`).
    #[serde(default = "default_min_active_hours")]
    pub min_active_hours: u32,
    /// Fewest events that make an hour active (at least 1).
    #[serde(default = "default_min_events_per_hour")]
    pub min_events_per_hour: u32,
}

fn default_window_hours() -> u32 {
    24
}
fn default_min_active_hours() -> u32 {
    20
}
fn default_min_events_per_hour() -> u32 {
    1
}

impl Params {
    fn validate(&self, spec: &DetectorSpec) -> Result<(), SpecError> {
        if !(1..=168).contains(&self.window_hours) {
            return Err(spec.error("params.window_hours", "must be 1 to 168 (a week)"));
        }
        if self.min_active_hours == 0 || self.min_active_hours > self.window_hours {
            return Err(spec.error(
                "params.min_active_hours",
                format!("must be 1 to window_hours ({})", self.window_hours),
            ));
        }
        if self.min_events_per_hour == 0 {
            return Err(spec.error("params.min_events_per_hour", "must be at least 1"));
        }
        Ok(())
    }
}

/// Builds a `round_the_clock` detector from its file.
pub fn build(spec: &DetectorSpec, max_identities: usize) -> Result<Box<dyn Detector>, SpecError> {
    Ok(Box::new(RoundTheClock::new(spec, max_identities)?))
}

/// An hour being counted for one identity.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct OpenHour {
    /// Hour start, epoch seconds.
    start: i64,
    count: u32,
    samples: Vec<EventRef>,
}

impl Bucket for OpenHour {
    fn starting(start: i64) -> Self {
        OpenHour {
            start,
            count: 0,
            samples: Vec::new(),
        }
    }

    fn start(&self) -> i64 {
        self.start
    }
}

/// A closed, active hour still inside the window.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ActiveHour {
    start: i64,
    count: u32,
    sample: Option<EventRef>,
}

/// One identity's recent hours.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    /// First event time, epoch seconds (for the learning period).
    first_seen: Option<i64>,
    app_id: Option<String>,
    /// Start of the last closed hour, epoch seconds.
    last_closed: Option<i64>,
    open: OpenBuckets<OpenHour>,
    /// Active hours closed within the window before `last_closed`, oldest first.
    active: VecDeque<ActiveHour>,
}

pub struct RoundTheClock {
    p: Params,
    sql_filter: String,
    map: IdentityMap<State>,
    /// The earliest end of an open hour of any identity (epoch seconds).
    next_due: i64,
}

impl RoundTheClock {
    pub fn new(spec: &DetectorSpec, max_identities: usize) -> Result<Self, SpecError> {
        let p: Params = spec.params()?;
        p.validate(spec)?;
        let sql_filter = categories_sql(&spec.filter.categories);
        Ok(RoundTheClock {
            p,
            sql_filter,
            map: IdentityMap::new(max_identities),
            next_due: i64::MAX,
        })
    }
}

/// Closes one hour: keeps it when active, forgets hours that left the window,
/// and judges the window that ends with it.
fn close(
    p: &Params,
    sql_filter: &str,
    key: &str,
    state: &mut State,
    hour: OpenHour,
    cx: &Context<'_>,
    out: &mut Vec<Finding>,
) {
    state.last_closed = Some(hour.start);
    let window_start = hour.start - (p.window_hours as i64 - 1) * HOUR;
    while state.active.front().is_some_and(|h| h.start < window_start) {
        state.active.pop_front();
    }
    if hour.count < p.min_events_per_hour {
        return;
    }
    state.active.push_back(ActiveHour {
        start: hour.start,
        count: hour.count,
        sample: hour.samples.into_iter().next(),
    });
    let active = state.active.len() as u32;
    if active < p.min_active_hours {
        return;
    }
    let end = hour.start + HOUR;
    let learning = state
        .first_seen
        .is_some_and(|first| cx.learning(epoch(first), epoch(end)));
    if learning {
        return;
    }
    out.push(finding(p, sql_filter, key, state, window_start, end, cx));
}

fn epoch(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

fn finding(
    p: &Params,
    sql_filter: &str,
    key: &str,
    state: &State,
    start: i64,
    end: i64,
    cx: &Context<'_>,
) -> Finding {
    let active = state.active.len() as u32;
    let events: u64 = state.active.iter().map(|h| u64::from(h.count)).sum();
    // The longest run of hours without activity inside the window: a person's
    // night is several hours long.
    let mut longest_quiet = 0i64;
    let mut previous_end = start;
    for h in &state.active {
        longest_quiet = longest_quiet.max((h.start - previous_end) / HOUR);
        previous_end = h.start + HOUR;
    }
    longest_quiet = longest_quiet.max((end - previous_end) / HOUR);
    let who = match state.app_id.as_deref().and_then(|id| cx.registry.app(id)) {
        Some(app) => format!("{key} ({})", app.name),
        None => key.to_string(),
    };
    let summary = format!(
        "{who} acted in {active} of the {} hours to {} ({events} events, never more than \
         {longest_quiet} h quiet): a personal credential running like a machine.",
        p.window_hours,
        epoch(end).format("%Y-%m-%d %H:%M UTC"),
    );
    let mut samples: Vec<EventRef> = Vec::new();
    for sample in state.active.iter().filter_map(|h| h.sample.clone()) {
        keep_earliest(&mut samples, sample, MAX_SAMPLES, EventRef::not_after);
    }
    let details = serde_json::json!({
        "window_hours": p.window_hours,
        "active_hours": active,
        "events": events,
        "longest_quiet_hours": longest_quiet,
        "min_active_hours": p.min_active_hours,
        "min_events_per_hour": p.min_events_per_hour,
    });
    let span = (p.window_hours - p.min_active_hours + 1) as f64;
    Finding {
        identity: key.to_string(),
        app_id: state.app_id.clone(),
        score: (100.0 * (active - p.min_active_hours + 1) as f64 / span).clamp(1.0, 100.0),
        window_start: epoch(start),
        window_end: epoch(end),
        summary,
        evidence: Evidence {
            observed: serde_json::json!(active),
            baseline: serde_json::json!(p.min_active_hours),
            details: match details {
                serde_json::Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
            samples,
        },
        sql_filter: sql_filter.to_string(),
        raise: 0,
        variant: "round_the_clock",
    }
}

impl Detector for RoundTheClock {
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
        let start = t - t.rem_euclid(HOUR);
        let state = self.map.entry(key, event.time);
        state.first_seen = Some(state.first_seen.map_or(t, |first| first.min(t)));
        if state.app_id.as_deref() != app_id {
            state.app_id = app_id.map(str::to_string);
        }
        if let Some(oldest) = state.open.make_room(start) {
            close(&self.p, &self.sql_filter, key, state, oldest, cx, out);
        }
        let Some((open, opened)) = state.open.bucket_for(start, state.last_closed) else {
            return;
        };
        open.count = open.count.saturating_add(1);
        keep_earliest(
            &mut open.samples,
            EventRef::of(event),
            SAMPLES_PER_HOUR,
            EventRef::not_after,
        );
        if opened {
            self.next_due = self.next_due.min(start + HOUR);
        }
    }

    fn advance(&mut self, cx: &Context<'_>, out: &mut Vec<Finding>) {
        let watermark = cx.watermark.timestamp();
        if watermark < self.next_due {
            return;
        }
        let mut next_due = i64::MAX;
        let mut found = Vec::new();
        for (key, state) in self.map.iter_mut() {
            while let Some(open) = state.open.pop_due(watermark, HOUR) {
                close(&self.p, &self.sql_filter, key, state, open, cx, &mut found);
            }
            if let Some(start) = state.open.earliest_start() {
                next_due = next_due.min(start + HOUR);
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
            self.next_due = self.next_due.min(start + HOUR);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::kinds::testing::{self, Driver, at, registered};
    use crate::event::{ActorType, Category, PrincipalKind, Product};
    use crate::generator::Rng;
    use crate::identity::Registry;
    use chrono::Duration;

    const KEY_USER: &str = "arn:aws:iam::111122220000:user/employee042";

    fn registry() -> Registry {
        testing::registry(
            r#"
apps:
  - id: crm-sync-bot
    name: CRM sync bot
    owner: alice@example.com
    risk_tier: internal
    identities:
      oauth_client_ids: [0oacrm]
    registered_on: 2026-09-01
"#,
        )
    }

    fn spec() -> DetectorSpec {
        testing::spec("personal_credential_automation.toml")
    }

    /// A CloudTrail call by an IAM user (a person) at `secs` after Monday 00:00.
    fn personal_call(secs: i64, user: &str, r: &Registry) -> NormalizedEvent {
        let mut e = NormalizedEvent::new(
            at(secs),
            Product::Cloudtrail,
            Category::SecretRead,
            "GetSecretValue",
        );
        e.actor.push(PrincipalKind::RoleArn, user);
        e.actor
            .push(PrincipalKind::AccessKey, "AKIAEXAMPLEPERSONAL");
        e.actor.actor_type = ActorType::Person;
        e.identity = Some(testing::resolve(&e.actor, r));
        e
    }

    /// An Okta sign-in by a person.
    fn sign_in(secs: i64, email: &str, r: &Registry) -> NormalizedEvent {
        let mut e = NormalizedEvent::new(
            at(secs),
            Product::Okta,
            Category::Authentication,
            "user.authentication.sso",
        );
        e.actor.push(PrincipalKind::User, email);
        e.actor.actor_type = ActorType::Person;
        e.identity = Some(testing::resolve(&e.actor, r));
        e
    }

    /// A registered app's call: a service, not a person.
    fn app_call(secs: i64) -> NormalizedEvent {
        let mut e = NormalizedEvent::new(
            at(secs),
            Product::Okta,
            Category::TokenIssuance,
            "app.oauth2.as.token.grant.access_token",
        );
        e.actor.push(PrincipalKind::OauthClient, "0oacrm");
        e.actor.actor_type = ActorType::Service;
        e.identity = Some(registered("crm-sync-bot"));
        e
    }

    /// A script on a person's key: one call every `every` seconds (± a third) for `hours`.
    fn script(
        rng: &mut Rng,
        from: i64,
        hours: i64,
        every: i64,
        r: &Registry,
    ) -> Vec<NormalizedEvent> {
        let mut out = Vec::new();
        let mut t = from;
        while t < from + hours * HOUR {
            out.push(personal_call(t, KEY_USER, r));
            t += every * 2 / 3 + rng.below((every * 2 / 3) as u64) as i64;
        }
        out
    }

    /// 150 people over two weeks: sign-ins in office hours (weekdays 08–18 UTC),
    /// some evenings, one on-call person signing in every night of its week,
    /// and one person working a 17-hour release day.
    fn people(r: &Registry, rng: &mut Rng) -> Vec<NormalizedEvent> {
        let mut out = Vec::new();
        for day in 0..14i64 {
            let weekday = day % 7 < 5;
            for person in 0..150 {
                let email = format!("employee{person:03}@example.com");
                if weekday {
                    for _ in 0..rng.below(8) {
                        let secs = day * 86_400 + 8 * HOUR + rng.below(10 * 3600) as i64;
                        out.push(sign_in(secs, &email, r));
                    }
                }
                if rng.below(10) == 0 {
                    let secs = day * 86_400 + 19 * HOUR + rng.below(4 * 3600) as i64;
                    out.push(sign_in(secs, &email, r));
                }
            }
            if day >= 7 {
                // On call: woken two or three times a night, at work by day.
                for _ in 0..2 + rng.below(2) {
                    let secs = day * 86_400 + rng.below(7 * 3600) as i64;
                    out.push(sign_in(secs, "employee003@example.com", r));
                }
                for h in 8..22 {
                    out.push(sign_in(
                        day * 86_400 + h * HOUR + 600,
                        "employee003@example.com",
                        r,
                    ));
                }
            }
        }
        // A release day: 07:00 to midnight without a break.
        for h in 7..24 {
            out.push(personal_call(2 * 86_400 + h * HOUR + 900, KEY_USER, r));
        }
        out
    }

    #[test]
    fn the_shipped_file_builds_and_bad_params_are_named() {
        let spec = spec();
        assert!(build(&spec, 10).is_ok());
        assert_eq!(spec.filter.actor_types, vec![ActorType::Person]);
        for (params, key) in [
            ("window_hours = 0", "params.window_hours"),
            ("window_hours = 200", "params.window_hours"),
            ("min_active_hours = 25", "params.min_active_hours"),
            ("min_active_hours = 0", "params.min_active_hours"),
            ("min_events_per_hour = 0", "params.min_events_per_hour"),
        ] {
            let mut bad = spec.clone();
            bad.params = toml::from_str(params).unwrap();
            let error = build(&bad, 10).err().expect(params);
            assert_eq!(error.key, key, "{params}");
        }
    }

    #[test]
    fn a_script_on_a_persons_key_alerts_once_a_day_and_people_do_not() {
        let r = registry();
        let mut rng = Rng::new(5);
        let mut events = people(&r, &mut rng);
        // Thursday 10:00 onwards, every 5 minutes for 30 hours.
        events.extend(script(&mut rng, 3 * 86_400 + 10 * HOUR, 30, 300, &r));
        let mut driver = Driver::new(spec(), r);
        driver.feed_all(&mut events);
        driver.finish();
        let alerts = driver.alerts();
        let named: Vec<&str> = alerts.iter().map(|f| f.identity.as_str()).collect();
        let key = format!("role_arn:{KEY_USER}");
        assert_eq!(
            named,
            vec![key.as_str()],
            "only the script, once: {named:?}"
        );
        let first = alerts[0];
        // The first day to reach 20 active hours ends at 06:00 on Friday.
        assert_eq!(first.window_end, at(4 * 86_400 + 6 * HOUR));
        assert_eq!(first.window_start, first.window_end - Duration::hours(24));
        assert_eq!(first.evidence.observed, serde_json::json!(20));
        assert!(
            first.summary.contains("20 of the 24 hours"),
            "{}",
            first.summary
        );
        assert!(!first.evidence.samples.is_empty());
        assert!(first.evidence.samples.len() <= MAX_SAMPLES);
        // The busiest person (on call, 14 day hours and a few night ones) stays below.
        let on_call = driver
            .findings
            .iter()
            .filter(|f| f.identity.contains("employee003"))
            .count();
        assert_eq!(on_call, 0);
    }

    #[test]
    fn a_script_every_half_hour_still_alerts_and_services_are_not_looked_at() {
        let r = registry();
        let mut rng = Rng::new(9);
        let mut events = script(&mut rng, 0, 26, 1800, &r);
        for k in 0..26 * 12 {
            events.push(app_call(k * 300));
        }
        let mut driver = Driver::new(spec(), r);
        driver.feed_all(&mut events);
        driver.finish();
        let identities: Vec<&str> = driver
            .alerts()
            .iter()
            .map(|f| f.identity.as_str())
            .collect();
        assert_eq!(identities, vec![format!("role_arn:{KEY_USER}").as_str()]);
    }

    #[test]
    fn the_same_events_give_the_same_findings_in_any_partition_order_and_after_a_restore() {
        let r = registry();
        let mut rng = Rng::new(13);
        let mut events = people(&r, &mut rng);
        events.extend(script(&mut rng, 5 * 86_400, 40, 600, &r));
        events.sort_by_key(|e| e.time);
        let spec = spec();
        let ordered = {
            let mut driver = Driver::new(spec.clone(), registry());
            driver.feed_all(&mut events.clone());
            driver.finish();
            driver
                .findings
                .iter()
                .map(|f| format!("{f:?}"))
                .collect::<Vec<_>>()
        };
        assert!(!ordered.is_empty());
        // Two partitions, people on one and the script on the other, read a day apart.
        let (script_events, people_events): (Vec<_>, Vec<_>) = events
            .iter()
            .cloned()
            .partition(|e| e.activity == "GetSecretValue");
        for partitions in [
            vec![script_events.clone(), people_events.clone()],
            vec![people_events, script_events],
        ] {
            let mut got: Vec<String> =
                testing::feed_by_partition(&spec, &r, &partitions, Duration::hours(20))
                    .iter()
                    .map(|f| format!("{f:?}"))
                    .collect();
            let mut want = ordered.clone();
            got.sort();
            want.sort();
            assert_eq!(got, want);
        }
        let restored = Driver::new(spec, r).replay(&events, Some(events.len() / 2));
        assert_eq!(restored, ordered);
    }
}
