//! Traffic generator: a seeded, deterministic world of micro-apps and the vendor
//! records they leave, with incidents of the five kinds injected at known times.
//!
//! Used by `demo`, by the integration tests and by the benches. Records are
//! written in the vendors' own formats (see `records.rs`), so they go through
//! the same decoders as production traffic.

mod records;
mod rng;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc, Weekday};
use serde::Serialize;

use crate::identity::registry::{App, AppIdentities, RegistryFile, RiskFactors, RiskTier};
pub use records::RecordWriter;
pub use rng::Rng;

/// Which topic family a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Sso,
    Gateway,
    Secrets,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Sso, Family::Gateway, Family::Secrets];

    /// The family's position in [`Family::ALL`] (one topic per family, in that order).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Sso => "sso",
            Family::Gateway => "gateway",
            Family::Secrets => "secrets",
        }
    }
}

/// One generated vendor record.
#[derive(Debug, Clone)]
pub struct GeneratedRecord {
    pub family: Family,
    /// Event time of the record.
    pub time: DateTime<Utc>,
    /// Kafka key (the actor, so one identity stays on one partition).
    pub key: String,
    pub payload: Vec<u8>,
    /// Deliberately malformed (to exercise dead-lettering).
    pub malformed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SsoVendor {
    Okta,
    Entra,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretsVendor {
    Cloudtrail,
    Vault,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayVendor {
    Kong,
    Envoy,
    Squid,
}

/// A simulated micro-app and the identities it uses.
#[derive(Debug, Clone, Serialize)]
pub struct SimApp {
    pub id: String,
    pub sso: SsoVendor,
    pub secrets: SecretsVendor,
    pub gateway: GatewayVendor,
    pub client_id: String,
    pub role_arn: String,
    pub account: String,
    pub region: String,
    pub vault_role: String,
    pub consumer: String,
    pub ip: String,
    pub country: String,
    pub secret_names: Vec<String>,
    pub domains: Vec<String>,
    /// Mean API calls per hour at the daily peak.
    pub peak_calls_per_hour: f64,
}

/// The incident kinds, named as the detectors that should catch them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    CallSpike,
    MassSecretRead,
    UnregisteredIdentity,
    NewEgressDomain,
    OffRegionToken,
    PersonalCredentialAutomation,
}

impl IncidentKind {
    pub const ALL: [IncidentKind; 6] = [
        IncidentKind::CallSpike,
        IncidentKind::MassSecretRead,
        IncidentKind::UnregisteredIdentity,
        IncidentKind::NewEgressDomain,
        IncidentKind::OffRegionToken,
        IncidentKind::PersonalCredentialAutomation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::CallSpike => "call_spike",
            IncidentKind::MassSecretRead => "mass_secret_read",
            IncidentKind::UnregisteredIdentity => "unregistered_identity",
            IncidentKind::NewEgressDomain => "new_egress_domain",
            IncidentKind::OffRegionToken => "off_region_token",
            IncidentKind::PersonalCredentialAutomation => "personal_credential_automation",
        }
    }
}

/// An injected incident: the ground truth a detector should find.
#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    pub kind: IncidentKind,
    /// The identity key the alert should name (`app:<id>` or `<kind>:<raw>`).
    pub identity: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub description: String,
    /// The period of a recurring incident (a script on a cron), in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_secs: Option<u64>,
}

/// Parameters of a generated world.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub seed: u64,
    /// Registered apps.
    pub apps: usize,
    /// Simulated span.
    pub start: DateTime<Utc>,
    pub hours: u32,
    /// Multiplies every app's call rate.
    pub rate_scale: f64,
    /// Share of records deliberately malformed.
    pub malformed_ratio: f64,
    /// Whether to inject the incidents: the five of the apps, and with employees
    /// and rounds of at least 30 hours a script on an employee's personal key.
    pub incidents: bool,
    /// How many times the incidents are injected (each round on other apps).
    pub incident_rounds: u32,
    /// Employees signing in to SSO apps during office hours (people, not apps).
    pub employees: usize,
    /// The benign habits of a real organisation (with at least 24 apps): a nightly
    /// secret-rotation job reading other apps' secrets, a nightly batch burst, a
    /// weekly report, an app running in two allowed regions at once, and an app
    /// that starts calling a new subdomain of a domain it uses; with employees,
    /// an engineer on call every night of the second week and at work until
    /// late, and an engineer using the AWS CLI with a personal key all day.
    pub habits: bool,
    /// Organic growth: every app's rate grows by this fraction per simulated day.
    pub growth_per_day: f64,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            seed: 7,
            apps: 36,
            start: Utc
                .with_ymd_and_hms(2026, 11, 23, 0, 0, 0)
                .single()
                .unwrap_or_default(),
            hours: 24,
            rate_scale: 1.0,
            malformed_ratio: 0.001,
            incidents: true,
            incident_rounds: 1,
            employees: 0,
            habits: false,
            growth_per_day: 0.0,
        }
    }
}

const WORDS_A: [&str; 12] = [
    "invoice",
    "hr",
    "sales",
    "support",
    "legal",
    "finance",
    "ops",
    "marketing",
    "data",
    "it",
    "travel",
    "payroll",
];
const WORDS_B: [&str; 9] = [
    "bot", "agent", "sync", "digest", "helper", "copilot", "triage", "export", "notifier",
];
const DOMAINS: [&str; 14] = [
    "api.openai.com",
    "api.anthropic.com",
    "hooks.slack.com",
    "api.hubspot.com",
    "graph.microsoft.com",
    "sheets.googleapis.com",
    "api.notion.com",
    "api.stripe.com",
    "api.zendesk.com",
    "api.github.com",
    "api.atlassian.com",
    "login.salesforce.com",
    "api.airtable.com",
    "api.twilio.com",
];
const HOME_REGIONS: [(&str, &str, &str); 3] = [
    ("us-east-1", "US", "Virginia"),
    ("eu-west-1", "IE", "Leinster"),
    ("eu-central-1", "DE", "Hesse"),
];

/// Which apps carry the benign habits (chosen clear of every incident round's apps).
pub const ROTATION_APP: usize = 1;
pub const NIGHTLY_BATCH_APP: usize = 2;
pub const WEEKLY_REPORT_APP: usize = 7;
pub const TWO_REGION_APP: usize = 10;
pub const NEW_SUBDOMAIN_APP: usize = 19;
/// Which employees carry the people's habits.
pub const ON_CALL_EMPLOYEE: usize = 3;
pub const CLI_EMPLOYEE: usize = 5;

/// The IAM user of employee `i` (a person's long-lived access key).
pub fn employee_iam_user(i: usize) -> String {
    format!("arn:aws:iam::111122220000:user/employee{i:03}")
}

/// A generated world: apps, the registry that describes them, and incidents.
#[derive(Debug, Clone)]
pub struct World {
    pub config: WorldConfig,
    pub apps: Vec<SimApp>,
    pub incidents: Vec<Incident>,
}

impl World {
    pub fn new(config: WorldConfig) -> World {
        let mut rng = Rng::new(config.seed);
        let mut apps = Vec::with_capacity(config.apps);
        for i in 0..config.apps {
            let id = format!(
                "{}-{}-{:02}",
                WORDS_A[i % WORDS_A.len()],
                WORDS_B[(i / WORDS_A.len() + i) % WORDS_B.len()],
                i
            );
            let (region, country, _) = HOME_REGIONS[rng.below(HOME_REGIONS.len() as u64) as usize];
            let account = format!("{:012}", 111_122_220_000u64 + (i as u64 % 3));
            let mut domains: Vec<String> = Vec::new();
            while domains.len() < 2 + rng.below(3) as usize {
                let d = DOMAINS[rng.below(DOMAINS.len() as u64) as usize].to_string();
                if !domains.contains(&d) {
                    domains.push(d);
                }
            }
            apps.push(SimApp {
                sso: if i % 3 == 2 {
                    SsoVendor::Entra
                } else {
                    SsoVendor::Okta
                },
                secrets: if i % 2 == 0 {
                    SecretsVendor::Cloudtrail
                } else {
                    SecretsVendor::Vault
                },
                gateway: match i % 3 {
                    0 => GatewayVendor::Kong,
                    1 => GatewayVendor::Envoy,
                    _ => GatewayVendor::Squid,
                },
                client_id: format!("0oa{}{:04}", &rng.hex(10), i),
                role_arn: format!("arn:aws:iam::{account}:role/{id}"),
                account,
                region: region.to_string(),
                vault_role: id.clone(),
                consumer: id.clone(),
                ip: format!("10.{}.{}.{}", 20 + i / 200, (i * 7) % 250, 10 + i % 200),
                country: country.to_string(),
                secret_names: (0..3 + rng.below(6))
                    .map(|k| format!("{id}/secret-{k}"))
                    .collect(),
                domains,
                peak_calls_per_hour: (20.0 + rng.f64() * 180.0) * config.rate_scale,
                id,
            });
        }
        let mut world = World {
            config,
            apps,
            incidents: Vec::new(),
        };
        if world.config.incidents && world.apps.len() >= 12 {
            world.incidents = world.plan_incidents();
        }
        world
    }

    /// Whether the habits are generated (they need the apps they are assigned to).
    pub fn has_habits(&self) -> bool {
        self.config.habits && self.apps.len() >= 24
    }

    /// The two-region app's other home.
    fn second_region(&self, app: &SimApp) -> (&'static str, &'static str, &'static str) {
        HOME_REGIONS
            .iter()
            .copied()
            .find(|(region, _, _)| *region != app.region)
            .unwrap_or(HOME_REGIONS[0])
    }

    /// The employees' e-mail addresses and countries.
    pub fn employees(&self) -> Vec<(String, &'static str)> {
        (0..self.config.employees)
            .map(|i| {
                let country = ["US", "IE", "DE"][i % 3];
                (format!("employee{i:03}@example.com"), country)
            })
            .collect()
    }

    /// The habits' records for the minute starting at `t0`.
    fn habit_records(
        &self,
        t0: DateTime<Utc>,
        rng: &mut Rng,
        w: &mut RecordWriter,
        out: &mut Vec<GeneratedRecord>,
    ) {
        use chrono::{Datelike, Timelike};
        let (hour, minute) = (t0.hour(), t0.minute());
        let day = (t0 - self.config.start).num_days();
        let jitter = |rng: &mut Rng| Duration::milliseconds(rng.below(60_000) as i64);
        // 02:00-02:04 every night: the rotation job reads 50 secrets of other apps.
        if hour == 2 && minute < 5 {
            let app = &self.apps[ROTATION_APP];
            let others: Vec<&String> = self
                .apps
                .iter()
                .filter(|a| a.id != app.id)
                .flat_map(|a| a.secret_names.iter())
                .take(50)
                .collect();
            for secret in others.iter().skip(minute as usize * 10).take(10) {
                out.push(w.secret_read(app, t0 + jitter(rng), secret, &app.region, &app.ip));
            }
        }
        // 01:30-01:34 every night: a batch job pushes 150 calls through the gateway.
        if hour == 1 && (30..35).contains(&minute) {
            let app = &self.apps[NIGHTLY_BATCH_APP];
            for _ in 0..30 {
                let domain = &app.domains[rng.below(app.domains.len() as u64) as usize];
                out.push(w.gateway_call(app, t0 + jitter(rng), domain, &app.consumer, &app.ip));
            }
        }
        // Mondays 07:00-07:09: the weekly report, 200 calls.
        if t0.weekday() == chrono::Weekday::Mon && hour == 7 && minute < 10 {
            let app = &self.apps[WEEKLY_REPORT_APP];
            for _ in 0..20 {
                let domain = &app.domains[rng.below(app.domains.len() as u64) as usize];
                out.push(w.gateway_call(app, t0 + jitter(rng), domain, &app.consumer, &app.ip));
            }
        }
        // The two-region app reads its secrets from its second region too, all day.
        if rng.below(6) == 0 {
            let app = &self.apps[TWO_REGION_APP];
            let (region, _, _) = self.second_region(app);
            let secret = &app.secret_names[rng.below(app.secret_names.len() as u64) as usize];
            let ip = format!("10.99.{}.{}", TWO_REGION_APP, 10 + rng.below(200));
            out.push(w.secret_read(app, t0 + jitter(rng), secret, region, &ip));
        }
        // From the second week, an app calls a new subdomain of a domain it uses.
        if day >= 7 && rng.below(10) == 0 {
            let app = &self.apps[NEW_SUBDOMAIN_APP];
            let domain = format!("eu.{}", app.domains[0]);
            out.push(w.gateway_call(app, t0 + jitter(rng), &domain, &app.consumer, &app.ip));
        }
        if self.config.employees > CLI_EMPLOYEE.max(ON_CALL_EMPLOYEE) {
            let home = ["US", "IE", "DE"];
            // The second week, on call: paged two or three times a night (00:00-07:00)
            // and at work until 22:00.
            let on_call = format!("employee{ON_CALL_EMPLOYEE:03}@example.com");
            let paged = hour < 7 && rng.below(160) == 0;
            let late = (18..22).contains(&hour) && rng.below(20) == 0;
            if day >= 7 && (paged || late) {
                let ip = format!("198.51.100.{}", 1 + rng.below(250));
                let country = home[ON_CALL_EMPLOYEE % 3];
                out.push(w.person_sign_in(&on_call, t0 + jitter(rng), &ip, country));
            }
            // Weekdays 07:00-20:00: the AWS CLI with a personal access key, a few calls an hour.
            let weekday = !matches!(t0.weekday(), chrono::Weekday::Sat | chrono::Weekday::Sun);
            if weekday && (7..20).contains(&hour) && rng.below(15) == 0 {
                let user = employee_iam_user(CLI_EMPLOYEE);
                let ip = format!("198.51.100.{}", 1 + rng.below(250));
                out.push(w.personal_key_call(&user, t0 + jitter(rng), &ip, "aws-cli/2.17.0"));
            }
        }
    }

    fn at(&self, fraction: f64) -> DateTime<Utc> {
        let secs = (self.config.hours as f64 * 3600.0 * fraction) as i64;
        self.config.start + Duration::seconds(secs)
    }

    /// Incidents of the five kinds, `incident_rounds` times over the span, each
    /// round on other apps: round `r` covers the `r`-th slice of the span.
    fn plan_incidents(&self) -> Vec<Incident> {
        let n = self.apps.len();
        let rounds = self.config.incident_rounds.max(1) as usize;
        let minutes = |start: DateTime<Utc>, m: i64| start + Duration::minutes(m);
        let mut out = Vec::new();
        for r in 0..rounds {
            let at = |fraction: f64| self.at((r as f64 + fraction) / rounds as f64);
            let app = |i: usize| &self.apps[i % n];
            // Off-region needs an Okta + CloudTrail app: indexes that are multiples of 6.
            let travelling = app(6 + 6 * r);
            let (spike_app, mass_app, egress_app) =
                (app(3 + 5 * r), app(4 + 5 * r), app(11 + 5 * r));
            let shadow = if r == 0 {
                "shadow-gpt-agent".to_string()
            } else {
                format!("shadow-gpt-agent-{r}")
            };
            let (spike, mass, unregistered, egress, region) =
                (at(0.55), at(0.6), at(0.3), at(0.65), at(0.75));
            out.extend([
                Incident {
                    kind: IncidentKind::CallSpike,
                    identity: format!("app:{}", spike_app.id),
                    start: spike,
                    end: minutes(spike, 15),
                    description: format!(
                        "{} calls its APIs 25x its usual rate for 15 minutes (a loop)",
                        spike_app.id
                    ),
                    period_secs: None,
                },
                Incident {
                    kind: IncidentKind::MassSecretRead,
                    identity: format!("app:{}", mass_app.id),
                    start: mass,
                    end: minutes(mass, 5),
                    description: format!(
                        "{} lists secrets, then reads 150 distinct secrets in 5 minutes",
                        mass_app.id
                    ),
                    period_secs: None,
                },
                Incident {
                    kind: IncidentKind::UnregisteredIdentity,
                    identity: format!("oauth_client:0oa-{shadow}"),
                    start: unregistered,
                    end: minutes(unregistered, 120),
                    description: format!(
                        "OAuth client 0oa-{shadow}, missing from the registry, gets tokens and calls \
                         the gateway; an IAM user creates an access key outside onboarding"
                    ),
                    period_secs: None,
                },
                Incident {
                    kind: IncidentKind::NewEgressDomain,
                    identity: format!("app:{}", egress_app.id),
                    start: egress,
                    end: minutes(egress, 10),
                    description: format!(
                        "{} sends data to paste.exfil-drop.net, a domain it never called",
                        egress_app.id
                    ),
                    period_secs: None,
                },
                Incident {
                    kind: IncidentKind::OffRegionToken,
                    identity: format!("app:{}", travelling.id),
                    start: region,
                    end: minutes(region, 20),
                    description: format!(
                        "credentials of {} issued in its home region are used from ap-southeast-2 / AU",
                        travelling.id
                    ),
                    period_secs: None,
                },
            ]);
            // A script on an employee's personal access key: every 5, 15 or 30
            // minutes (blatant, moderate, subtle) for 26 hours.
            let round_hours = self.config.hours as usize / rounds;
            let employee = 40 + 17 * r;
            if self.config.employees > employee && round_hours >= 30 {
                let start = at(0.05);
                let every = [5, 15, 30][r % 3];
                out.push(Incident {
                    kind: IncidentKind::PersonalCredentialAutomation,
                    identity: format!("role_arn:{}", employee_iam_user(employee)),
                    start,
                    end: start + Duration::hours(26),
                    description: format!(
                        "a script runs on employee{employee:03}'s personal IAM access key, \
                         reading a secret about every {every} minutes around the clock"
                    ),
                    period_secs: Some(every * 60),
                });
            }
        }
        out
    }

    /// The registry that describes the world's apps (the unregistered identities are, of course, absent).
    pub fn registry(&self) -> RegistryFile {
        let day0 = NaiveDate::from_ymd_opt(2026, 9, 1).unwrap_or_default();
        let apps = self
            .apps
            .iter()
            .enumerate()
            .map(|(i, a)| App {
                id: a.id.clone(),
                name: a.id.replace('-', " "),
                owner: format!("owner{:02}@example.com", i),
                escalation: Some("soc-oncall@example.com".into()),
                team: Some(WORDS_A[i % WORDS_A.len()].to_string()),
                justification: Some("generated demo app".into()),
                data_classes: vec![["internal", "pii", "financial"][i % 3].to_string()],
                risk_tier: [RiskTier::Internal, RiskTier::Restricted, RiskTier::Public][i % 3],
                risk: RiskFactors {
                    data_class: [1, 3, 0][i % 3],
                    permission_breadth: [0, 2, 2][i % 3],
                    external_connectivity: 1,
                    known_vulnerabilities: 0,
                },
                identities: AppIdentities {
                    oauth_client_ids: vec![a.client_id.clone()],
                    role_arns: vec![a.role_arn.clone()],
                    vault_roles: vec![a.vault_role.clone()],
                    gateway_consumers: vec![
                        a.consumer.clone(),
                        format!("spiffe://cluster.local/ns/apps/sa/{}", a.id),
                    ],
                    ..AppIdentities::default()
                },
                // Many micro-apps are registered without an allowlist; the app
                // with the new-subdomain habit is one, so its domains are learned.
                egress_allowlist: if self.has_habits() && i == NEW_SUBDOMAIN_APP {
                    Vec::new()
                } else {
                    a.domains.clone()
                },
                allowed_regions: if self.has_habits() && i == TWO_REGION_APP {
                    let (region, country, _) = self.second_region(a);
                    vec![
                        a.region.clone(),
                        a.country.clone(),
                        region.into(),
                        country.into(),
                    ]
                } else {
                    vec![a.region.clone(), a.country.clone()]
                },
                registered_on: day0,
                renewed_on: Some(day0 + chrono::Days::new(60)),
            })
            .collect();
        RegistryFile { apps }
    }

    pub fn registry_yaml(&self) -> String {
        let header = "# Generated by appwarden's traffic generator (seeded, deterministic).\n";
        match serde_yaml::to_string(&self.registry()) {
            Ok(yaml) => format!("{header}{yaml}"),
            Err(e) => format!("{header}# cannot render registry: {e}\n"),
        }
    }

    /// Every record of the simulated span, in event-time order.
    pub fn records(&self) -> Vec<GeneratedRecord> {
        let mut rng = Rng::new(self.config.seed ^ 0x5eed_7ea1);
        let mut w = RecordWriter::new(self.config.seed);
        let mut out = Vec::new();
        let start = self.config.start;
        let minutes = self.config.hours as i64 * 60;
        let employees = self.employees();
        let habits = self.has_habits();
        for minute in 0..minutes {
            let t0 = start + Duration::minutes(minute);
            let growth = 1.0 + self.config.growth_per_day * (minute as f64 / 1440.0);
            let rate = diurnal(t0) * growth;
            if habits {
                self.habit_records(t0, &mut rng, &mut w, &mut out);
            }
            if !employees.is_empty() && office_hours(t0) {
                // About six sign-ins per employee per working day, office hours only.
                for _ in 0..rng.poisson(employees.len() as f64 * 6.0 / 600.0) {
                    let (email, country) = &employees[rng.below(employees.len() as u64) as usize];
                    let t = t0 + Duration::milliseconds(rng.below(60_000) as i64);
                    let ip = format!("198.51.100.{}", 1 + rng.below(250));
                    out.push(w.person_sign_in(email, t, &ip, country));
                }
            }
            for (i, app) in self.apps.iter().enumerate() {
                let mean = app.peak_calls_per_hour / 60.0 * rate;
                let calls = rng.poisson(mean);
                if minute % 60 == (i as i64 * 7) % 60 {
                    // Hourly credential refresh: SSO token and cloud/Vault credentials.
                    let t = t0 + Duration::seconds(rng.below(60) as i64);
                    out.push(w.sso_token(app, t, &app.ip, &app.country, false));
                    out.push(w.secrets_login(app, t + Duration::seconds(1), &app.region, &app.ip));
                }
                for _ in 0..calls {
                    let t = t0 + Duration::milliseconds(rng.below(60_000) as i64);
                    let roll = rng.f64();
                    let rec = if roll < 0.75 {
                        let domain = &app.domains[rng.below(app.domains.len() as u64) as usize];
                        w.gateway_call(app, t, domain, &app.consumer, &app.ip)
                    } else {
                        let secret =
                            &app.secret_names[rng.below(app.secret_names.len() as u64) as usize];
                        w.secret_read(app, t, secret, &app.region, &app.ip)
                    };
                    out.push(rec);
                }
            }
            if self.config.malformed_ratio > 0.0 {
                let expected = self.config.malformed_ratio * self.apps.len() as f64 * 2.0;
                for _ in 0..rng.poisson(expected) {
                    let t = t0 + Duration::milliseconds(rng.below(60_000) as i64);
                    out.push(w.malformed(&mut rng, t));
                }
            }
        }
        for incident in &self.incidents {
            self.inject(incident, &mut w, &mut rng, &mut out);
        }
        out.sort_by_key(|r| r.time);
        out
    }

    fn inject(
        &self,
        incident: &Incident,
        w: &mut RecordWriter,
        rng: &mut Rng,
        out: &mut Vec<GeneratedRecord>,
    ) {
        let app_of = |key: &str| self.apps.iter().find(|a| format!("app:{}", a.id) == key);
        let span_ms = (incident.end - incident.start).num_milliseconds().max(1) as u64;
        let at = |rng: &mut Rng| incident.start + Duration::milliseconds(rng.below(span_ms) as i64);
        match incident.kind {
            IncidentKind::CallSpike => {
                let Some(app) = app_of(&incident.identity) else {
                    return;
                };
                let calls = (app.peak_calls_per_hour / 4.0 * 25.0).max(300.0) as usize;
                for _ in 0..calls {
                    let t = at(rng);
                    out.push(w.gateway_call(app, t, &app.domains[0], &app.consumer, &app.ip));
                }
            }
            IncidentKind::MassSecretRead => {
                let Some(app) = app_of(&incident.identity) else {
                    return;
                };
                out.push(w.secret_list(app, incident.start, &app.region, &app.ip));
                for k in 0..150 {
                    let t = incident.start + Duration::milliseconds(1000 + (k as i64) * 1900);
                    let name = format!("prod/shared/secret-{k:03}");
                    out.push(w.secret_read(app, t, &name, &app.region, &app.ip));
                }
            }
            IncidentKind::UnregisteredIdentity => {
                let name = incident
                    .identity
                    .strip_prefix("oauth_client:0oa-")
                    .unwrap_or("shadow-gpt-agent")
                    .to_string();
                let shadow = SimApp {
                    id: name.clone(),
                    sso: SsoVendor::Okta,
                    secrets: SecretsVendor::Cloudtrail,
                    gateway: GatewayVendor::Kong,
                    client_id: format!("0oa-{name}"),
                    role_arn: format!("arn:aws:iam::111122220000:role/{name}"),
                    account: "111122220000".into(),
                    region: "us-east-1".into(),
                    vault_role: "shadow".into(),
                    consumer: name.clone(),
                    ip: "10.99.0.7".into(),
                    country: "US".into(),
                    secret_names: vec!["prod/crm/api-key".into()],
                    domains: vec!["api.openai.com".into()],
                    peak_calls_per_hour: 60.0,
                };
                for k in 0..4 {
                    let t = incident.start + Duration::minutes(k * 30);
                    out.push(w.sso_token(&shadow, t, &shadow.ip, "US", false));
                }
                for _ in 0..60 {
                    let t = at(rng);
                    out.push(w.gateway_call(
                        &shadow,
                        t,
                        "api.openai.com",
                        &shadow.consumer,
                        &shadow.ip,
                    ));
                }
                out.push(w.create_access_key(
                    incident.start + Duration::minutes(5),
                    "contractor-temp",
                    &name,
                ));
            }
            IncidentKind::NewEgressDomain => {
                let Some(app) = app_of(&incident.identity) else {
                    return;
                };
                for _ in 0..8 {
                    let t = at(rng);
                    out.push(w.gateway_call(
                        app,
                        t,
                        "paste.exfil-drop.net",
                        &app.consumer,
                        &app.ip,
                    ));
                }
            }
            IncidentKind::OffRegionToken => {
                let Some(app) = app_of(&incident.identity) else {
                    return;
                };
                out.push(w.sso_token(app, incident.start, "203.0.113.50", "AU", true));
                out.push(w.secrets_login(
                    app,
                    incident.start + Duration::seconds(2),
                    &app.region,
                    &app.ip,
                ));
                for k in 0..10 {
                    let t = incident.start + Duration::minutes(1 + k);
                    let secret = &app.secret_names[0];
                    out.push(w.secret_read(app, t, secret, "ap-southeast-2", "203.0.113.50"));
                }
            }
            IncidentKind::PersonalCredentialAutomation => {
                let Some(user) = incident.identity.strip_prefix("role_arn:") else {
                    return;
                };
                let every_secs = incident.period_secs.unwrap_or(300).max(3);
                let mut t = incident.start;
                while t < incident.end {
                    out.push(w.personal_key_call(user, t, "10.20.30.40", "Boto3/1.35.0"));
                    // ± a third of the period: a cron with jitter and retries.
                    let step = every_secs * 2 / 3 + rng.below(every_secs * 2 / 3);
                    t += Duration::seconds(step as i64);
                }
            }
        }
    }
}

/// Share of the daily peak rate at time `t`: low at night, highest mid-afternoon, quieter at weekends.
pub fn diurnal(t: DateTime<Utc>) -> f64 {
    let hour = t.hour() as f64 + t.minute() as f64 / 60.0;
    let day = (std::f64::consts::PI * (hour - 7.0) / 12.0).sin().max(0.0);
    let weekday = match t.weekday() {
        Weekday::Sat | Weekday::Sun => 0.35,
        _ => 1.0,
    };
    (0.08 + 0.92 * day) * weekday
}

/// Weekdays 08:00-18:00 UTC: when the generated employees sign in.
pub fn office_hours(t: DateTime<Utc>) -> bool {
    !matches!(t.weekday(), Weekday::Sat | Weekday::Sun) && (8..18).contains(&t.hour())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> World {
        World::new(WorldConfig {
            apps: 12,
            hours: 3,
            start: Utc.with_ymd_and_hms(2026, 11, 23, 11, 0, 0).unwrap(),
            ..WorldConfig::default()
        })
    }

    #[test]
    fn same_seed_same_records() {
        let a = small().records();
        let b = small().records();
        assert_eq!(a.len(), b.len());
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| x.payload == y.payload && x.time == y.time)
        );
        let other = World::new(WorldConfig {
            seed: 8,
            ..small().config
        })
        .records();
        assert_ne!(a.len(), other.len());
    }

    #[test]
    fn all_families_and_incidents_present() {
        let world = small();
        let records = world.records();
        for family in Family::ALL {
            assert!(records.iter().any(|r| r.family == family), "{family:?}");
        }
        // Three hours leave no room for a day-long script on a personal key.
        assert_eq!(world.incidents.len(), 5);
        assert!(records.windows(2).all(|w| w[0].time <= w[1].time));
        crate::identity::Registry::build(world.registry(), "generated").unwrap();
    }

    #[test]
    fn diurnal_shape() {
        let day = |h| Utc.with_ymd_and_hms(2026, 11, 25, h, 0, 0).unwrap();
        assert!(diurnal(day(13)) > 0.95);
        assert!(diurnal(day(3)) < 0.1);
        let saturday = Utc.with_ymd_and_hms(2026, 11, 28, 13, 0, 0).unwrap();
        assert!(diurnal(saturday) < 0.4);
    }
}
