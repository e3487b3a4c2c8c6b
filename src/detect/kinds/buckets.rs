//! The tumbling buckets one identity still has open, for the windowed kinds
//! (`rate_spike`, `secret_reads`).
//!
//! The engine's watermark follows the slowest input partition, so an
//! identity's events arrive in any order within it: a Kafka backlog read one
//! partition ahead of another, or one export file per source. A bucket is
//! therefore closed only when the watermark passes its end, never because a
//! newer event arrived, and an event lands in its own bucket whatever the
//! order; the same events give the same buckets. At most [`MAX_OPEN`] buckets
//! stay open per identity (a day of 5-minute buckets: one partition read a day
//! ahead of another). Past that the oldest is closed early, and a later event
//! of a bucket already closed is dropped, not counted in another bucket: an
//! undercount may miss a spike, an event moved into a newer bucket would
//! make one up.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most buckets one identity keeps open (a day of 5-minute buckets).
pub(crate) const MAX_OPEN: usize = 288;

/// A bucket of a windowed kind: knows its start (epoch seconds).
pub(crate) trait Bucket {
    fn starting(start: i64) -> Self;
    fn start(&self) -> i64;
}

/// Open buckets in start order.
#[derive(Debug, Clone)]
pub(crate) struct OpenBuckets<B>(Vec<B>);

impl<B> Default for OpenBuckets<B> {
    fn default() -> Self {
        OpenBuckets(Vec::new())
    }
}

impl<B: Bucket> OpenBuckets<B> {
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn first(&self) -> Option<&B> {
        self.0.first()
    }

    /// The start of the earliest open bucket.
    pub(crate) fn earliest_start(&self) -> Option<i64> {
        self.0.first().map(Bucket::start)
    }

    /// Before an event of the bucket at `start` is counted: when that bucket is
    /// not open yet and [`MAX_OPEN`] are, the oldest must close now; returns it.
    pub(crate) fn make_room(&mut self, start: i64) -> Option<B> {
        if self.0.len() < MAX_OPEN || self.position(start).is_ok() {
            return None;
        }
        Some(self.0.remove(0))
    }

    /// The bucket an event at `start` is counted in, opened if needed, and
    /// whether it was just opened; `None` when that bucket was already closed
    /// (`last_closed` at or after it).
    pub(crate) fn bucket_for(
        &mut self,
        start: i64,
        last_closed: Option<i64>,
    ) -> Option<(&mut B, bool)> {
        if last_closed.is_some_and(|last| start <= last) {
            return None;
        }
        match self.position(start) {
            Ok(i) => Some((&mut self.0[i], false)),
            Err(i) => {
                self.0.insert(i, B::starting(start));
                Some((&mut self.0[i], true))
            }
        }
    }

    /// Removes and returns the earliest bucket if it ends at or before `watermark`.
    pub(crate) fn pop_due(&mut self, watermark: i64, bucket_secs: i64) -> Option<B> {
        let first = self.0.first()?;
        if first.start().saturating_add(bucket_secs) <= watermark {
            Some(self.0.remove(0))
        } else {
            None
        }
    }

    fn position(&self, start: i64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&start, Bucket::start)
    }
}

impl<B: Serialize> Serialize for OpenBuckets<B> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// Snapshots written before several buckets could be open hold one bucket or
/// `null` under the same key; both still load.
impl<'de, B: Deserialize<'de> + Bucket> Deserialize<'de> for OpenBuckets<B> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored<B> {
            Many(Vec<B>),
            One(Option<B>),
        }
        let mut buckets = match Stored::deserialize(deserializer)? {
            Stored::Many(buckets) => buckets,
            Stored::One(one) => one.into_iter().collect(),
        };
        buckets.sort_by_key(Bucket::start);
        buckets.dedup_by_key(|b: &mut B| b.start());
        Ok(OpenBuckets(buckets))
    }
}

/// Keeps the `max` earliest samples in the order `not_after`, whatever order they arrive in.
pub(crate) fn keep_earliest<T>(
    samples: &mut Vec<T>,
    sample: T,
    max: usize,
    not_after: impl Fn(&T, &T) -> bool,
) {
    let at = samples.partition_point(|s| not_after(s, &sample));
    if at >= max {
        return;
    }
    samples.insert(at, sample);
    samples.truncate(max);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Count {
        start: i64,
        n: u32,
    }

    impl Bucket for Count {
        fn starting(start: i64) -> Self {
            Count { start, n: 0 }
        }
        fn start(&self) -> i64 {
            self.start
        }
    }

    #[test]
    fn events_in_any_order_land_in_their_own_buckets_and_close_in_order() {
        let mut open = OpenBuckets::<Count>::default();
        for start in [600, 0, 300, 0, 600] {
            let (bucket, _) = open.bucket_for(start, None).expect("open");
            bucket.n += 1;
        }
        assert_eq!(open.earliest_start(), Some(0));
        assert_eq!(open.pop_due(299, 300), None);
        assert_eq!(open.pop_due(300, 300), Some(Count { start: 0, n: 2 }));
        assert_eq!(open.pop_due(10_000, 300), Some(Count { start: 300, n: 1 }));
        assert_eq!(open.pop_due(10_000, 300), Some(Count { start: 600, n: 2 }));
        assert!(open.is_empty());
    }

    #[test]
    fn past_the_cap_the_oldest_closes_and_its_late_events_are_dropped() {
        let mut open = OpenBuckets::<Count>::default();
        for k in 0..MAX_OPEN as i64 {
            assert!(open.make_room(k * 300).is_none());
            open.bucket_for(k * 300, None).expect("open");
        }
        assert!(open.make_room(0).is_none(), "an open bucket needs no room");
        let early = open
            .make_room(MAX_OPEN as i64 * 300)
            .expect("closes the oldest");
        assert_eq!(early.start, 0);
        assert!(
            open.bucket_for(0, Some(0)).is_none(),
            "its bucket is closed"
        );
        let (bucket, opened) = open.bucket_for(300, Some(0)).expect("still open");
        assert!(!opened);
        assert_eq!(bucket.start, 300);
    }

    #[test]
    fn a_snapshot_with_one_bucket_or_none_still_loads() {
        let one: OpenBuckets<Count> = serde_json::from_str(r#"{"start":300,"n":4}"#).expect("one");
        assert_eq!(one.0, [Count { start: 300, n: 4 }]);
        let none: OpenBuckets<Count> = serde_json::from_str("null").expect("none");
        assert!(none.is_empty());
        let many: OpenBuckets<Count> =
            serde_json::from_str(r#"[{"start":600,"n":1},{"start":300,"n":2}]"#).expect("many");
        assert_eq!(many.earliest_start(), Some(300));
        assert_eq!(
            serde_json::to_string(&many).expect("json"),
            r#"[{"start":300,"n":2},{"start":600,"n":1}]"#
        );
    }

    #[test]
    fn the_earliest_samples_are_kept_whatever_the_arrival_order() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for s in [5, 3, 9, 1, 7] {
            keep_earliest(&mut a, s, 3, |x, y| x <= y);
        }
        for s in [9, 7, 5, 3, 1] {
            keep_earliest(&mut b, s, 3, |x, y| x <= y);
        }
        assert_eq!(a, [1, 3, 5]);
        assert_eq!(a, b);
    }
}
