//! Watermark alignment across the partitions one consumer reads.
//!
//! A cold start or a backlog hands librdkafka whole fetches of one partition
//! after another, each hours or days of event time when the partitions are
//! small. Read as they come, the first partitions would push the watermark past
//! the records of the others, and the windowed detectors would skip those as
//! late. So the consumer (1) tells the engine which partitions have a backlog:
//! those hold the watermark back, before their first record too; and (2) pauses
//! a partition with a backlog that runs more than the allowed lead ahead of the
//! slowest partition with a backlog, until the others catch up, as Flink's and
//! Kafka Streams' watermark alignment do. librdkafka fetches a resumed
//! partition again from the last record the application read, so pausing loses
//! nothing and reads nothing twice.
//!
//! This module only decides; the consumer applies its decisions.

use std::collections::HashMap;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};

/// A partition with a backlog that delivers nothing for this long (its leader
/// unreachable, say) stops holding the others back.
pub const STALL: StdDuration = StdDuration::from_secs(30);

/// The least a pause lasts. librdkafka applies a pause asynchronously and a
/// resume only to a partition already paused: a resume right after a pause
/// would be lost, and the partition would stay paused for good.
pub const MIN_PAUSE: StdDuration = StdDuration::from_secs(1);

/// What librdkafka last said of a partition's backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// Not known yet (no fetch answered since the assignment).
    Unknown,
    /// Records wait unread.
    Behind,
    /// Read up to the partition's end.
    CaughtUp,
}

/// A pause or resume to apply to the consumer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub pause: Vec<(String, i32)>,
    pub resume: Vec<(String, i32)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.pause.is_empty() && self.resume.is_empty()
    }
}

#[derive(Debug)]
struct Partition {
    /// The event times of the last three records, oldest first: their median is
    /// the partition's time, so one record with a bad clock cannot pause it.
    recent: Vec<DateTime<Utc>>,
    first: Option<DateTime<Utc>>,
    backlog: Backlog,
    paused: bool,
    paused_at: Instant,
    /// The last record, resume or assignment.
    progress: Instant,
}

impl Partition {
    fn new(now: Instant) -> Self {
        Partition {
            recent: Vec::with_capacity(3),
            first: None,
            backlog: Backlog::Unknown,
            paused: false,
            paused_at: now,
            progress: now,
        }
    }

    fn time(&self) -> Option<DateTime<Utc>> {
        let mut sorted = self.recent.clone();
        sorted.sort();
        match sorted.len() {
            0 => None,
            3 => Some(sorted[1]),
            _ => Some(sorted[0]),
        }
    }

    /// Whether it holds the watermark (and the others' pace) back.
    fn holds(&self, now: Instant) -> bool {
        self.backlog != Backlog::CaughtUp
            && (self.paused || now.duration_since(self.progress) < STALL)
    }
}

/// The partitions this consumer reads, with their event-time progress.
#[derive(Debug)]
pub struct Alignment {
    /// `None`: alignment off (partitions are never paused).
    lead: Option<Duration>,
    partitions: HashMap<String, HashMap<i32, Partition>>,
    /// The slowest partition with a backlog, as the last [`Alignment::plan`] found it.
    reference: Option<DateTime<Utc>>,
}

impl Alignment {
    /// `lead_secs` 0 turns pausing off; the backlog is still reported.
    pub fn new(lead_secs: u64) -> Self {
        Alignment {
            lead: (lead_secs > 0).then(|| Duration::seconds(lead_secs.min(i64::MAX as u64) as i64)),
            partitions: HashMap::new(),
            reference: None,
        }
    }

    /// A partition assigned to this consumer: its backlog is unknown until librdkafka says.
    pub fn assign(&mut self, topic: &str, partition: i32, now: Instant) {
        self.partitions
            .entry(topic.to_string())
            .or_default()
            .insert(partition, Partition::new(now));
    }

    pub fn revoke(&mut self, topic: &str, partition: i32) {
        if let Some(partitions) = self.partitions.get_mut(topic) {
            partitions.remove(&partition);
        }
    }

    /// Notes a record's event time; true when the partition must be paused now
    /// (it has run past the lead), which it is then taken to be.
    pub fn note(&mut self, topic: &str, partition: i32, time: DateTime<Utc>, now: Instant) -> bool {
        let state = match self.partitions.get_mut(topic) {
            Some(partitions) => partitions
                .entry(partition)
                .or_insert_with(|| Partition::new(now)),
            None => self
                .partitions
                .entry(topic.to_string())
                .or_default()
                .entry(partition)
                .or_insert_with(|| Partition::new(now)),
        };
        if state.recent.len() == 3 {
            state.recent.remove(0);
        }
        state.recent.push(time);
        state.first = Some(state.first.map_or(time, |f| f.min(time)));
        state.progress = now;
        let (Some(lead), Some(reference)) = (self.lead, self.reference.or(state.first)) else {
            return false;
        };
        let ahead = state
            .time()
            .is_some_and(|t| t > reference.checked_add_signed(lead).unwrap_or(t));
        if ahead && !state.paused && state.backlog != Backlog::CaughtUp {
            state.paused = true;
            state.paused_at = now;
            return true;
        }
        false
    }

    /// Takes librdkafka's word on a partition's backlog.
    pub fn set_backlog(&mut self, topic: &str, partition: i32, backlog: Backlog) {
        if let Some(state) = self
            .partitions
            .get_mut(topic)
            .and_then(|p| p.get_mut(&partition))
        {
            state.backlog = backlog;
        }
    }

    /// Each partition with whether it holds the watermark back now.
    pub fn holding(&self, now: Instant) -> Vec<(&str, i32, bool)> {
        let mut all: Vec<(&str, i32, bool)> = self
            .partitions
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .map(move |(p, state)| (topic.as_str(), *p, state.holds(now)))
            })
            .collect();
        all.sort();
        all
    }

    /// Partitions paused now.
    pub fn paused(&self) -> usize {
        self.partitions
            .values()
            .flat_map(|p| p.values())
            .filter(|s| s.paused)
            .count()
    }

    /// Whether anything may change with time alone (a backlog not known yet, or a
    /// pause), so the consumer should look again soon even without records.
    pub fn unsettled(&self) -> bool {
        self.partitions
            .values()
            .flat_map(|p| p.values())
            .any(|s| s.paused || s.backlog == Backlog::Unknown)
    }

    /// Finds the slowest partition with a backlog and says which partitions to
    /// pause (past the lead) and to resume (back within half of it). When no
    /// partition left reading has a backlog, every paused one is resumed: nothing
    /// else could move the watermark.
    pub fn plan(&mut self, now: Instant) -> Plan {
        let mut plan = Plan::default();
        let earliest_first = self
            .partitions
            .values()
            .flat_map(|p| p.values())
            .filter_map(|s| s.first)
            .min();
        // A partition with a backlog but no record yet is taken to start where the
        // earliest partition started: the others may not run ahead of it.
        self.reference = self
            .partitions
            .values()
            .flat_map(|p| p.values())
            .filter(|s| s.holds(now))
            .filter_map(|s| s.time().or(earliest_first))
            .min();
        let Some(lead) = self.lead else {
            return plan;
        };
        let reference = self.reference;
        let reading_behind = self
            .partitions
            .values()
            .flat_map(|p| p.values())
            .any(|s| !s.paused && s.holds(now));
        for (topic, partitions) in &mut self.partitions {
            for (partition, state) in partitions.iter_mut() {
                let time = state.time();
                let past = |span: Duration| match (time, reference) {
                    (Some(t), Some(r)) => r.checked_add_signed(span).is_some_and(|limit| t > limit),
                    _ => false,
                };
                if state.paused {
                    let settled = now.duration_since(state.paused_at) >= MIN_PAUSE;
                    if settled
                        && (!reading_behind
                            || state.backlog == Backlog::CaughtUp
                            || !past(lead / 2))
                    {
                        state.paused = false;
                        state.progress = now;
                        plan.resume.push((topic.clone(), *partition));
                    }
                } else if reading_behind && state.backlog != Backlog::CaughtUp && past(lead) {
                    state.paused = true;
                    state.paused_at = now;
                    plan.pause.push((topic.clone(), *partition));
                }
            }
        }
        plan.pause.sort();
        plan.resume.sort();
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(minute: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 10, 5, 0, 0, 0).unwrap() + Duration::minutes(minute)
    }

    fn feed(a: &mut Alignment, topic: &str, partition: i32, minutes: &[i64], now: Instant) -> bool {
        let mut paused = false;
        for m in minutes {
            paused |= a.note(topic, partition, at(*m), now);
        }
        paused
    }

    #[test]
    fn a_partition_running_past_the_lead_is_paused_and_resumed_once_the_others_catch_up() {
        let now = Instant::now();
        let mut a = Alignment::new(600);
        a.assign("sso", 0, now);
        a.assign("gateway", 0, now);
        a.set_backlog("sso", 0, Backlog::Behind);
        a.set_backlog("gateway", 0, Backlog::Behind);
        // sso is read first; gateway has no record yet, so it is taken to start
        // where sso started: sso is paused as soon as it is 10 minutes in.
        assert!(!feed(&mut a, "sso", 0, &[0, 1, 2, 5, 9], now));
        assert!(feed(&mut a, "sso", 0, &[11, 12, 13], now));
        assert_eq!(a.paused(), 1);
        assert!(a.plan(now).is_empty(), "gateway has not caught up");
        feed(&mut a, "gateway", 0, &[0, 1, 2, 3], now);
        assert!(a.plan(now).is_empty(), "sso is still past half the lead");
        feed(&mut a, "gateway", 0, &[7, 8, 9], now);
        assert!(a.plan(now).is_empty(), "a pause lasts at least MIN_PAUSE");
        assert_eq!(
            a.plan(now + MIN_PAUSE),
            Plan {
                pause: vec![],
                resume: vec![("sso".into(), 0)]
            }
        );
        assert_eq!(a.paused(), 0);
    }

    #[test]
    fn paused_partitions_resume_when_no_partition_left_reading_has_a_backlog() {
        let now = Instant::now();
        let mut a = Alignment::new(600);
        a.assign("sso", 0, now);
        a.assign("gateway", 0, now);
        a.set_backlog("sso", 0, Backlog::Behind);
        feed(&mut a, "gateway", 0, &[0, 0, 0], now);
        a.set_backlog("gateway", 0, Backlog::Behind);
        a.plan(now);
        assert!(feed(&mut a, "sso", 0, &[30, 31, 32], now));
        // gateway reaches its end at minute 0: nothing left would move the watermark.
        a.set_backlog("gateway", 0, Backlog::CaughtUp);
        assert_eq!(a.plan(now + MIN_PAUSE).resume, vec![("sso".to_string(), 0)]);
    }

    #[test]
    fn a_partition_that_delivers_nothing_stops_holding_the_others_after_the_stall() {
        let start = Instant::now();
        let mut a = Alignment::new(600);
        a.assign("sso", 0, start);
        a.assign("gateway", 0, start);
        assert_eq!(
            a.holding(start),
            vec![("gateway", 0, true), ("sso", 0, true)]
        );
        let later = start + STALL + StdDuration::from_secs(1);
        feed(&mut a, "sso", 0, &[0, 1, 2], later);
        assert_eq!(
            a.holding(later),
            vec![("gateway", 0, false), ("sso", 0, true)]
        );
        a.set_backlog("sso", 0, Backlog::CaughtUp);
        assert_eq!(
            a.holding(later),
            vec![("gateway", 0, false), ("sso", 0, false)]
        );
    }

    #[test]
    fn one_record_with_a_bad_clock_does_not_pause_its_partition() {
        let now = Instant::now();
        let mut a = Alignment::new(600);
        a.assign("sso", 0, now);
        a.assign("gateway", 0, now);
        feed(&mut a, "gateway", 0, &[0, 0, 0], now);
        a.plan(now);
        assert!(!feed(&mut a, "sso", 0, &[0, 1, 5000, 2, 3], now));
    }

    #[test]
    fn with_no_lead_nothing_is_paused() {
        let now = Instant::now();
        let mut a = Alignment::new(0);
        a.assign("sso", 0, now);
        a.assign("gateway", 0, now);
        assert!(!feed(&mut a, "sso", 0, &[0, 100, 200, 300], now));
        assert!(a.plan(now).is_empty());
    }
}
