//! The alert router: groups repeats by (detector, identity) within a window so
//! they update a count instead of paging again, and records the kill-switch
//! action on alerts severe enough for it.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};

use super::{SinkKind, SinkSettings};
use crate::detect::Alert;
use crate::detect::alert::{AlertAction, AlertGroup};

struct Open {
    id: String,
    count: u32,
    last: DateTime<Utc>,
}

/// Routes alerts; one instance per daemon, fed alerts in order.
pub struct Router {
    window: Duration,
    open: HashMap<(String, String), Open>,
    /// The open groups by their last alert's time, oldest first: expiry looks
    /// only at the groups it closes, so a storm of distinct identities costs a
    /// logarithm per alert, not a pass over every open group.
    by_last: BTreeSet<(DateTime<Utc>, (String, String))>,
    kill_switches: Vec<SinkSettings>,
}

impl Router {
    pub fn new(group_window_secs: u64, sinks: &[SinkSettings]) -> Self {
        Router {
            window: Duration::seconds(group_window_secs as i64),
            open: HashMap::new(),
            by_last: BTreeSet::new(),
            kill_switches: sinks
                .iter()
                .filter(|s| matches!(s.kind, SinkKind::Revocation { .. }))
                .cloned()
                .collect(),
        }
    }

    /// Groups the alert and records actions on it. Returns whether it should page
    /// (go to the outbox): the first alert of a group does, repeats do not.
    pub fn route(&mut self, alert: &mut Alert) -> bool {
        let now = alert.window_end;
        while let Some((last, _)) = self.by_last.first()
            && now - *last >= self.window
        {
            if let Some((_, key)) = self.by_last.pop_first() {
                self.open.remove(&key);
            }
        }
        let key = (alert.detector.clone(), alert.identity.clone());
        if let Some(group) = self.open.get_mut(&key) {
            group.count += 1;
            // Alerts come in order mostly; one that is older does not pull its group back.
            if now > group.last {
                self.by_last.remove(&(group.last, key.clone()));
                self.by_last.insert((now, key.clone()));
                group.last = now;
            }
            alert.group = Some(AlertGroup {
                id: group.id.clone(),
                count: group.count,
            });
            tracing::info!(
                alert = %alert.id,
                group = %group.id,
                count = group.count,
                detector = %alert.detector,
                "repeat grouped into an open alert; not paging again"
            );
            return false;
        }
        self.by_last.insert((now, key.clone()));
        self.open.insert(
            key,
            Open {
                id: alert.id.clone(),
                count: 1,
                last: now,
            },
        );
        for sink in &self.kill_switches {
            if !sink.wants(alert) {
                continue;
            }
            let live = matches!(sink.kind, SinkKind::Revocation { live: true, .. });
            let target = alert
                .app
                .as_ref()
                .map_or_else(|| alert.identity.clone(), |a| a.id.clone());
            alert.actions.push(AlertAction {
                kind: "kill_switch".into(),
                mode: if live { "live" } else { "dry_run" }.into(),
                sink: sink.name.clone(),
                target,
            });
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Severity;
    use crate::detect::alert::{Evidence, Finding};
    use crate::settings::SecretRef;
    use chrono::TimeZone;

    fn alert(detector: &str, identity: &str, minute: i64, severity: Severity) -> Alert {
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap() + Duration::minutes(minute);
        Finding {
            identity: identity.into(),
            app_id: None,
            score: 50.0,
            window_start: t,
            window_end: t,
            summary: "s".into(),
            evidence: Evidence::default(),
            sql_filter: String::new(),
            raise: 0,
            variant: "v",
        }
        .into_alert(detector, "k", severity, None)
    }

    #[test]
    fn each_group_closes_an_hour_after_its_own_last_alert() {
        let mut router = Router::new(3600, &[]);
        for i in 0..1000 {
            assert!(router.route(&mut alert(
                "call_spike",
                &format!("app:{i}"),
                0,
                Severity::High
            )));
        }
        // app:7 repeats at minute 50; an older alert after it does not shorten its group.
        assert!(!router.route(&mut alert("call_spike", "app:7", 50, Severity::High)));
        assert!(!router.route(&mut alert("call_spike", "app:7", 10, Severity::High)));
        // At minute 70 every other group has closed, app:7's has not.
        assert!(router.route(&mut alert("call_spike", "app:8", 70, Severity::High)));
        let mut repeat = alert("call_spike", "app:7", 70, Severity::High);
        assert!(!router.route(&mut repeat));
        assert_eq!(repeat.group.map(|g| g.count), Some(4));
        assert!(router.route(&mut alert("call_spike", "app:9", 71, Severity::High)));
        assert_eq!(router.open.len(), 3, "closed groups are dropped");
        assert_eq!(router.by_last.len(), 3);
        // Another detector on the same identity is another group.
        assert!(router.route(&mut alert("new_egress_domain", "app:7", 71, Severity::High)));
    }

    #[test]
    fn repeats_within_the_window_are_grouped_not_paged() {
        let mut router = Router::new(3600, &[]);
        let mut first = alert("call_spike", "app:a", 0, Severity::High);
        assert!(router.route(&mut first));
        let mut repeat = alert("call_spike", "app:a", 30, Severity::High);
        assert!(!router.route(&mut repeat));
        assert_eq!(
            repeat.group.as_ref().map(|g| (g.id.as_str(), g.count)),
            Some((first.id.as_str(), 2))
        );
        let mut other = alert("call_spike", "app:b", 31, Severity::High);
        assert!(
            router.route(&mut other),
            "another identity is another group"
        );
        let mut later = alert("call_spike", "app:a", 200, Severity::High);
        assert!(
            router.route(&mut later),
            "after the window a new group opens"
        );
    }

    #[test]
    fn kill_switch_is_recorded_for_severe_alerts_in_dry_run() {
        let sink = SinkSettings {
            name: "revoke".into(),
            min_severity: Severity::Critical,
            timeout_secs: 5,
            max_in_flight: 1,
            kind: SinkKind::Revocation {
                url: "http://127.0.0.1:9/revoke".into(),
                token: SecretRef {
                    env: Some("X".into()),
                    file: None,
                },
                live: false,
            },
        };
        let mut router = Router::new(3600, &[sink]);
        let mut high = alert("d", "app:a", 0, Severity::High);
        router.route(&mut high);
        assert!(high.actions.is_empty());
        let mut critical = alert("d", "app:b", 0, Severity::Critical);
        router.route(&mut critical);
        assert_eq!(critical.actions[0].mode, "dry_run");
        assert_eq!(critical.actions[0].target, "app:b");
    }
}
