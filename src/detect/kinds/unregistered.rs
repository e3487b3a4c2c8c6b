//! `unregistered`: identities acting without a registry entry, identity-admin
//! changes made outside the onboarding flow, and registered apps acting after
//! their registration lapsed.
//!
//! Three findings (variants), each suppressed per identity by the engine:
//!
//! - `acting`: an event of an unregistered identity whose primary principal
//!   kind is not in `ignore_principal_kinds`, that is not an onboarding
//!   principal, and that is not a person (unless `report_people`). Raised one level when the event reads a secret or issues a
//!   token. Identity-admin events are judged by `outside_onboarding` instead,
//!   so one event never gives both.
//! - `outside_onboarding`: a successful (or undetermined) `identity_admin`
//!   event whose actor has none of the `onboarding_principals` among its forms.
//!   Raised one level for credential operations (`credential_activity_markers`).
//! - `lapsed`: a registered app acting after `renewed_on` (else
//!   `registered_on`) + `renewal_days`.
//!
//! `acting` and `lapsed` fire on many events of the same identity, so the kind
//! emits them at most once per `suppression_secs` of event time (what the
//! engine would keep anyway). Within that span an `acting` finding is emitted
//! once more for the identity's first secret read or token issuance, since it
//! is raised (the engine, which suppresses per identity and variant, decides
//! whether it becomes an alert). `outside_onboarding` is emitted for every
//! event; the engine suppresses repeats.
//!
//! Findings cover the event alone: the window is `[event time, + 1 ms)` so the
//! half-open investigation query returns it.
//!
//! State per identity has a fixed size (first seen, event count, bit sets of
//! products and categories, when `acting` / `lapsed` last fired): nothing in it
//! grows with traffic, so no cap parameter is needed beyond `max_identities`.

use chrono::{DateTime, Days, Duration, NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::json;

use crate::detect::alert::{EventRef, Evidence, Finding, sql_str};
use crate::detect::spec::{DetectorSpec, SpecError};
use crate::detect::{Context, Detector, IdentityMap, StateStore};
use crate::event::{
    ActorType, Category, IdentityStatus, NormalizedEvent, Outcome, PrincipalKind, Product,
    ResolvedIdentity,
};

/// Parameters of the kind (`[params]` of the detector file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Principal kinds never reported as `acting` when they are the actor's
    /// primary form. Default `["source_ip"]`: a proxy client known only by its
    /// address is not a service identity.
    #[serde(default = "default_ignore_principal_kinds")]
    ignore_principal_kinds: Vec<PrincipalKind>,
    /// Whether people (actors of type `person`: employees signing in, IAM users)
    /// missing from the registry are reported as `acting`. Default false: the
    /// registry lists micro-apps, and people are context, not findings. Their
    /// identity-admin changes outside onboarding alert either way.
    #[serde(default)]
    report_people: bool,
    /// Raw principal values of the onboarding flow (IaC role ARN, provisioning
    /// client id), compared exactly with every form of the actor. Their
    /// identity-admin changes are expected and they are not reported as
    /// `acting`. Default empty: every identity-admin change alerts.
    #[serde(default)]
    onboarding_principals: Vec<String>,
    /// Days a registration stays valid after `renewed_on` (else `registered_on`).
    #[serde(default = "default_renewal_days")]
    renewal_days: u32,
    /// Substrings of `activity` (compared without case) marking an
    /// identity-admin event as a credential operation.
    #[serde(default = "default_credential_activity_markers")]
    credential_activity_markers: Vec<String>,
}

fn default_ignore_principal_kinds() -> Vec<PrincipalKind> {
    vec![PrincipalKind::SourceIp]
}

fn default_renewal_days() -> u32 {
    90
}

fn default_credential_activity_markers() -> Vec<String> {
    ["AccessKey", "Token", "Secret", "Credential", "LoginProfile"]
        .map(String::from)
        .to_vec()
}

impl Params {
    fn validate(&self, spec: &DetectorSpec) -> Result<(), SpecError> {
        if !(1..=3650).contains(&self.renewal_days) {
            return Err(spec.error(
                "params.renewal_days",
                format!("is {}; must be 1 to 3650 days", self.renewal_days),
            ));
        }
        if let Some(bad) = self
            .onboarding_principals
            .iter()
            .find(|p| p.trim().is_empty() || p.trim() != p.as_str())
        {
            return Err(spec.error(
                "params.onboarding_principals",
                format!("`{bad}`: values must be non-empty, without surrounding spaces"),
            ));
        }
        if self.credential_activity_markers.is_empty()
            || self
                .credential_activity_markers
                .iter()
                .any(|m| m.trim().is_empty())
        {
            return Err(spec.error(
                "params.credential_activity_markers",
                "must list at least one non-empty substring",
            ));
        }
        Ok(())
    }
}

/// What the kind remembers of one identity (fixed size; see the module docs).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct State {
    /// Event time of the first event seen (unregistered identities only).
    #[serde(skip_serializing_if = "Option::is_none")]
    first_seen: Option<DateTime<Utc>>,
    /// Events seen (unregistered identities only).
    #[serde(skip_serializing_if = "is_zero")]
    events: u64,
    /// Products seen, one bit per [`Product::ALL`] entry; saved as names.
    #[serde(
        skip_serializing_if = "is_zero_u16",
        serialize_with = "ser_products",
        deserialize_with = "de_products"
    )]
    products: u16,
    /// Categories seen, one bit per [`Category::ALL`] entry; saved as names.
    #[serde(
        skip_serializing_if = "is_zero_u16",
        serialize_with = "ser_categories",
        deserialize_with = "de_categories"
    )]
    categories: u16,
    /// Event time of the last `acting` finding.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_acting: Option<DateTime<Utc>>,
    /// Whether an `acting` finding since `last_acting` was raised (secret read / token).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    acting_raised: bool,
    /// Event time of the last `lapsed` finding.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_lapsed: Option<DateTime<Utc>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u16(n: &u16) -> bool {
    *n == 0
}

// One bit per entry of an `ALL` list; more than 16 products or categories need a wider mask.
const _: () = assert!(Product::ALL.len() <= 16 && Category::ALL.len() <= 16);

fn bit_of<T: PartialEq>(all: &[T], value: &T) -> u16 {
    all.iter().position(|x| x == value).map_or(0, |i| 1u16 << i)
}

fn members<T: Copy>(all: &[T], bits: u16) -> impl Iterator<Item = T> + '_ {
    all.iter()
        .enumerate()
        .filter(move |(i, _)| bits & (1u16 << i) != 0)
        .map(|(_, x)| *x)
}

fn ser_products<S: Serializer>(bits: &u16, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(members(&Product::ALL, *bits))
}

fn de_products<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let list = Vec::<Product>::deserialize(d)?;
    Ok(list.iter().fold(0, |b, p| b | bit_of(&Product::ALL, p)))
}

fn ser_categories<S: Serializer>(bits: &u16, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(members(&Category::ALL, *bits))
}

fn de_categories<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let list = Vec::<Category>::deserialize(d)?;
    Ok(list.iter().fold(0, |b, c| b | bit_of(&Category::ALL, c)))
}

/// A principal kind in words, for summaries.
pub(super) fn kind_label(kind: PrincipalKind) -> &'static str {
    match kind {
        PrincipalKind::OauthClient => "OAuth client",
        PrincipalKind::User => "user",
        PrincipalKind::RoleArn => "cloud principal",
        PrincipalKind::AccessKey => "access key",
        PrincipalKind::VaultRole => "Vault role",
        PrincipalKind::VaultEntity => "Vault entity",
        PrincipalKind::VaultDisplayName => "Vault token",
        PrincipalKind::VaultAccessor => "Vault accessor",
        PrincipalKind::GatewayConsumer => "gateway consumer",
        PrincipalKind::SourceIp => "client address",
    }
}

/// Who acted, in words: `app Invoice bot (invoice-bot, owner a@x)` or
/// `unregistered OAuth client 0oa…`.
pub(super) fn describe_actor(
    event: &NormalizedEvent,
    identity: &ResolvedIdentity,
    cx: &Context<'_>,
) -> String {
    if let Some(app_id) = identity.app_id.as_deref() {
        return match cx.registry.app(app_id) {
            Some(app) => format!("app {} ({}, owner {})", app.name, app.id, app.owner),
            None => format!("app {app_id}"),
        };
    }
    match event.actor.refs.first() {
        Some(primary) => format!(
            "unregistered {} {}",
            kind_label(primary.kind),
            primary.value
        ),
        None => format!("unregistered identity {}", identity.key),
    }
}

/// Half-open window `[t, t + 1 ms)` holding exactly the event at `t`, so the
/// investigation query (`time >= start AND time < end`) returns it.
pub(super) fn point_window(t: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    (t, t + Duration::milliseconds(1))
}

/// Whether a finding last emitted at `last` may be emitted again at `now`.
fn due(last: Option<DateTime<Utc>>, now: DateTime<Utc>, suppression_secs: u64) -> bool {
    let secs = i64::try_from(suppression_secs).unwrap_or(i64::MAX);
    let span = Duration::try_seconds(secs).unwrap_or(Duration::MAX);
    last.is_none_or(|last| now - last >= span)
}

struct Unregistered {
    params: Params,
    /// `credential_activity_markers`, lower case.
    markers: Vec<String>,
    state: IdentityMap<State>,
}

/// Builds one shard's instance of an `unregistered` detector.
pub fn build(spec: &DetectorSpec, max_identities: usize) -> Result<Box<dyn Detector>, SpecError> {
    let params: Params = spec.params()?;
    params.validate(spec)?;
    let markers = params
        .credential_activity_markers
        .iter()
        .map(|m| m.trim().to_ascii_lowercase())
        .collect();
    Ok(Box::new(Unregistered {
        params,
        markers,
        state: IdentityMap::new(max_identities),
    }))
}

impl Unregistered {
    fn is_onboarding(&self, event: &NormalizedEvent) -> bool {
        let listed = |v: &str| self.params.onboarding_principals.iter().any(|p| p == v);
        listed(&event.actor.raw) || event.actor.refs.iter().any(|r| listed(&r.value))
    }

    fn acting(
        &mut self,
        event: &NormalizedEvent,
        identity: &ResolvedIdentity,
        cx: &Context<'_>,
        out: &mut Vec<Finding>,
    ) {
        let Some(primary) = event.actor.refs.first() else {
            return;
        };
        if self.params.ignore_principal_kinds.contains(&primary.kind) || self.is_onboarding(event) {
            return;
        }
        if event.actor.actor_type == ActorType::Person && !self.params.report_people {
            return;
        }
        let t = event.time;
        let state = self.state.entry(&identity.key, t);
        state.first_seen = Some(state.first_seen.map_or(t, |f| f.min(t)));
        state.events += 1;
        state.products |= bit_of(&Product::ALL, &event.product);
        state.categories |= bit_of(&Category::ALL, &event.category);
        if event.category == Category::IdentityAdmin {
            return;
        }
        let sensitive = matches!(
            event.category,
            Category::SecretRead | Category::TokenIssuance
        );
        let fresh = due(state.last_acting, t, cx.spec.suppression_secs);
        // Within the window, only the first secret read / token issuance is emitted again.
        let escalates = sensitive && !state.acting_raised;
        if !fresh && !escalates {
            return;
        }
        state.last_acting = Some(state.last_acting.map_or(t, |l| l.max(t)));
        state.acting_raised = if fresh { sensitive } else { true };

        let what = match event.category {
            Category::SecretRead => format!(
                "read secret {}",
                event.resource.as_deref().unwrap_or("(unnamed)")
            ),
            Category::TokenIssuance => "was issued a token".to_string(),
            Category::SecretList => "listed secrets".to_string(),
            Category::Authentication => "signed in".to_string(),
            Category::EgressRequest => format!(
                "called {}",
                event.dst_host.as_deref().unwrap_or("an external host")
            ),
            _ => "made API calls".to_string(),
        };
        let summary = format!(
            "Unregistered {} {} {} ({} {}) — it is not in the micro-app registry, so it has no \
             owner, review or egress allowlist; register it or revoke its access.",
            kind_label(primary.kind),
            primary.value,
            what,
            event.product.as_str(),
            event.activity,
        );
        let products: Vec<&str> = members(&Product::ALL, state.products)
            .map(Product::as_str)
            .collect();
        let categories: Vec<&str> = members(&Category::ALL, state.categories)
            .map(Category::as_str)
            .collect();
        let forms: Vec<serde_json::Value> = event
            .actor
            .refs
            .iter()
            .take(5)
            .map(|r| json!({ "kind": r.kind.as_str(), "value": r.value }))
            .collect();
        let mut details = serde_json::Map::new();
        details.insert("products_seen".into(), json!(products));
        details.insert("categories_seen".into(), json!(categories));
        details.insert("first_seen".into(), json!(state.first_seen));
        details.insert("events_seen".into(), json!(state.events));
        details.insert("principal_forms".into(), json!(forms));
        details.insert("category".into(), json!(event.category.as_str()));
        if let Some(ip) = &event.src_ip {
            details.insert("src_ip".into(), json!(ip));
        }
        let (window_start, window_end) = point_window(t);
        out.push(Finding {
            identity: identity.key.clone(),
            app_id: None,
            score: if sensitive { 90.0 } else { 70.0 },
            window_start,
            window_end,
            summary,
            evidence: Evidence {
                observed: json!({
                    "principal": primary.value,
                    "principal_kind": primary.kind.as_str(),
                }),
                baseline: json!({ "registered": false }),
                details,
                samples: vec![EventRef::of(event)],
            },
            sql_filter: String::new(),
            raise: u8::from(sensitive),
            variant: "acting",
        });
    }

    fn outside_onboarding(
        &self,
        event: &NormalizedEvent,
        identity: &ResolvedIdentity,
        cx: &Context<'_>,
        out: &mut Vec<Finding>,
    ) {
        if event.outcome == Outcome::Failure || event.actor.is_empty() || self.is_onboarding(event)
        {
            return;
        }
        let activity = event.activity.to_ascii_lowercase();
        let credential = self.markers.iter().any(|m| activity.contains(m.as_str()));
        let target = event.target_principal.as_deref();
        let summary = format!(
            "{} {} {}{} outside the onboarding flow — {}.",
            capitalize(&describe_actor(event, identity, cx)),
            if credential {
                "created or changed a credential with"
            } else {
                "changed an identity with"
            },
            event.activity,
            target.map(|t| format!(" for {t}")).unwrap_or_default(),
            if credential {
                "a credential made outside onboarding is unknown to the registry and can be used by anyone holding it"
            } else {
                "identities made or changed outside onboarding escape registration and review"
            },
        );
        let mut details = serde_json::Map::new();
        details.insert("credential_operation".into(), json!(credential));
        details.insert("product".into(), json!(event.product.as_str()));
        details.insert(
            "identity_status".into(),
            json!(match identity.status {
                IdentityStatus::Registered => "registered",
                IdentityStatus::Unregistered => "unregistered",
                IdentityStatus::Anonymous => "anonymous",
            }),
        );
        if let Some(issued) = &event.issued_token_id {
            details.insert("issued_credential".into(), json!(issued));
        }
        if let Some(region) = &event.cloud_region {
            details.insert("cloud_region".into(), json!(region));
        }
        if let Some(ip) = &event.src_ip {
            details.insert("src_ip".into(), json!(ip));
        }
        let primary_kind = event.actor.refs.first().map(|r| r.kind.as_str());
        let (window_start, window_end) = point_window(event.time);
        out.push(Finding {
            identity: identity.key.clone(),
            app_id: identity.app_id.clone(),
            score: if credential { 90.0 } else { 70.0 },
            window_start,
            window_end,
            summary,
            evidence: Evidence {
                observed: json!({
                    "actor": event.actor.raw,
                    "actor_kind": primary_kind,
                    "activity": event.activity,
                    "target_principal": target,
                }),
                baseline: json!({ "onboarding_principals": self.params.onboarding_principals }),
                details,
                samples: vec![EventRef::of(event)],
            },
            sql_filter: format!("category = {}", sql_str(Category::IdentityAdmin.as_str())),
            raise: u8::from(credential),
            variant: "outside_onboarding",
        });
    }

    fn lapsed(
        &mut self,
        event: &NormalizedEvent,
        identity: &ResolvedIdentity,
        app_id: &str,
        cx: &Context<'_>,
        out: &mut Vec<Finding>,
    ) {
        let Some(app) = cx.registry.app(app_id) else {
            return;
        };
        let since: NaiveDate = app.renewed_on.unwrap_or(app.registered_on);
        let Some(due_on) = since.checked_add_days(Days::new(u64::from(self.params.renewal_days)))
        else {
            return;
        };
        let today = event.time.date_naive();
        if due_on >= today {
            return;
        }
        let t = event.time;
        let state = self.state.entry(&identity.key, t);
        if !due(state.last_lapsed, t, cx.spec.suppression_secs) {
            return;
        }
        state.last_lapsed = Some(state.last_lapsed.map_or(t, |l| l.max(t)));
        let overdue_days = (today - due_on).num_days();
        let renewed = if app.renewed_on.is_some() {
            "last renewed"
        } else {
            "registered"
        };
        let summary = format!(
            "App {} ({}, owner {}) is still acting ({} {}) although its registration lapsed \
             {overdue_days} day(s) ago ({renewed} {since}, renewal due every {} days); its \
             access and risk are no longer reviewed — renew or disable it.",
            app.name,
            app.id,
            app.owner,
            event.product.as_str(),
            event.activity,
            self.params.renewal_days,
        );
        let mut details = serde_json::Map::new();
        details.insert("category".into(), json!(event.category.as_str()));
        details.insert("product".into(), json!(event.product.as_str()));
        details.insert("owner".into(), json!(app.owner));
        if let Some(escalation) = &app.escalation {
            details.insert("escalation".into(), json!(escalation));
        }
        let (window_start, window_end) = point_window(t);
        out.push(Finding {
            identity: identity.key.clone(),
            app_id: Some(app.id.clone()),
            score: (50 + overdue_days).clamp(0, 100) as f64,
            window_start,
            window_end,
            summary,
            evidence: Evidence {
                observed: json!({ "event_date": today, "overdue_days": overdue_days }),
                baseline: json!({
                    "registered_on": app.registered_on,
                    "renewed_on": app.renewed_on,
                    "renewal_days": self.params.renewal_days,
                    "due_on": due_on,
                }),
                details,
                samples: vec![EventRef::of(event)],
            },
            sql_filter: String::new(),
            raise: 0,
            variant: "lapsed",
        });
    }
}

pub(super) fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

impl Detector for Unregistered {
    fn store(&self) -> &dyn StateStore {
        &self.state
    }

    fn store_mut(&mut self) -> &mut dyn StateStore {
        &mut self.state
    }

    fn observe(&mut self, event: &NormalizedEvent, cx: &Context<'_>, out: &mut Vec<Finding>) {
        let Some(identity) = event.identity.as_ref() else {
            return;
        };
        match identity.status {
            IdentityStatus::Anonymous => return,
            IdentityStatus::Registered => {
                if let Some(app_id) = identity.app_id.as_deref() {
                    self.lapsed(event, identity, app_id, cx, out);
                }
            }
            IdentityStatus::Unregistered => self.acting(event, identity, cx, out),
        }
        if event.category == Category::IdentityAdmin {
            self.outside_onboarding(event, identity, cx, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::kinds::testing::{self, at, drive, resolve};
    use crate::identity::Registry;

    /// `invoice-bot` renewed 30 days before [`testing::monday`] (current); `old-bot`
    /// renewed 120 days before (lapsed).
    fn registry() -> Registry {
        let yaml = r#"
apps:
  - id: invoice-bot
    name: Invoice bot
    owner: alice@example.com
    risk_tier: restricted
    identities:
      oauth_client_ids: [0oa1invoicebot]
      gateway_consumers: [invoice-bot]
    egress_allowlist: [api.stripe.com]
    registered_on: 2026-06-01
    renewed_on: 2026-10-24
  - id: old-bot
    name: Old bot
    owner: bob@example.com
    escalation: soc@example.com
    risk_tier: internal
    identities:
      oauth_client_ids: [0oa1oldbot]
    registered_on: 2026-05-01
    renewed_on: 2026-07-26
"#;
        testing::registry(yaml)
    }

    fn spec() -> DetectorSpec {
        testing::spec("unregistered_identity.toml")
    }

    fn event(
        secs: i64,
        product: Product,
        category: Category,
        activity: &str,
        forms: &[(PrincipalKind, &str)],
        registry: &Registry,
    ) -> NormalizedEvent {
        let mut e = NormalizedEvent::new(at(secs), product, category, activity);
        for (kind, value) in forms {
            e.actor.push(*kind, value);
        }
        e.identity = Some(resolve(&e.actor, registry));
        e
    }

    fn shadow_token(secs: i64, r: &Registry) -> NormalizedEvent {
        let mut e = event(
            secs,
            Product::Okta,
            Category::TokenIssuance,
            "app.oauth2.as.token.grant.access_token",
            &[
                (PrincipalKind::OauthClient, "0oa-shadow-gpt-agent"),
                (PrincipalKind::SourceIp, "10.99.0.7"),
            ],
            r,
        );
        e.src_ip = Some("10.99.0.7".into());
        e
    }

    fn shadow_call(secs: i64, r: &Registry) -> NormalizedEvent {
        let mut e = event(
            secs,
            Product::Kong,
            Category::EgressRequest,
            "POST",
            &[
                (PrincipalKind::GatewayConsumer, "shadow-gpt-agent"),
                (PrincipalKind::SourceIp, "10.99.0.7"),
            ],
            r,
        );
        e.dst_host = Some("api.openai.com".into());
        e
    }

    fn create_access_key(secs: i64, r: &Registry) -> NormalizedEvent {
        let mut e = event(
            secs,
            Product::Cloudtrail,
            Category::IdentityAdmin,
            "CreateAccessKey",
            &[
                (
                    PrincipalKind::RoleArn,
                    "arn:aws:iam::1:user/contractor-temp",
                ),
                (PrincipalKind::AccessKey, "AKIAEXAMPLECONTRACT"),
                (PrincipalKind::SourceIp, "198.51.100.23"),
            ],
            r,
        );
        e.outcome = Outcome::Success;
        e.target_principal = Some("shadow-gpt-agent".into());
        e.issued_token_id = Some("AKIAEXAMPLESHADOW01".into());
        e
    }

    fn app_call(secs: i64, client: &str, r: &Registry) -> NormalizedEvent {
        event(
            secs,
            Product::Okta,
            Category::TokenIssuance,
            "app.oauth2.as.token.grant.access_token",
            &[(PrincipalKind::OauthClient, client)],
            r,
        )
    }

    fn variants(findings: &[Finding]) -> Vec<(&str, &str)> {
        findings
            .iter()
            .map(|f| (f.variant, f.identity.as_str()))
            .collect()
    }

    #[test]
    fn default_file_parses_and_builds() {
        let spec = spec();
        assert_eq!(spec.kind, crate::detect::Kind::Unregistered);
        assert!(
            spec.filter.categories.is_empty(),
            "no filter: the kind checks categories"
        );
        let params: Params = spec.params().unwrap();
        assert_eq!(params.ignore_principal_kinds, vec![PrincipalKind::SourceIp]);
        assert!(params.onboarding_principals.is_empty());
        assert_eq!(params.renewal_days, 90);
        let detector = build(&spec, 100).unwrap();
        assert!(!detector.windowed());
    }

    #[test]
    fn bad_params_name_their_key() {
        let mut s = spec();
        s.params
            .insert("renewal_days".into(), toml::Value::Integer(0));
        assert_eq!(build(&s, 10).err().unwrap().key, "params.renewal_days");
        let mut s = spec();
        s.params
            .insert("renwal_days".into(), toml::Value::Integer(9));
        let e = build(&s, 10).err().unwrap();
        assert_eq!(e.key, "params");
        assert!(e.message.contains("renwal_days"), "{e}");
        let mut s = spec();
        s.params.insert(
            "onboarding_principals".into(),
            toml::Value::Array(vec![toml::Value::String(" ".into())]),
        );
        assert_eq!(
            build(&s, 10).err().unwrap().key,
            "params.onboarding_principals"
        );
        let mut s = spec();
        s.params.insert(
            "ignore_principal_kinds".into(),
            toml::Value::Array(vec![toml::Value::String("robot".into())]),
        );
        assert_eq!(build(&s, 10).err().unwrap().key, "params");
    }

    #[test]
    fn unknown_oauth_client_is_acting_once_per_suppression_window() {
        let (r, spec) = (registry(), spec());
        let mut d = build(&spec, 100).unwrap();
        let supp = spec.suppression_secs as i64;
        let found = drive(
            d.as_mut(),
            &spec,
            &r,
            &[
                shadow_token(0, &r),
                shadow_token(60, &r),
                shadow_token(supp - 1, &r),
                shadow_token(supp, &r),
            ],
        );
        assert_eq!(
            variants(&found),
            vec![
                ("acting", "oauth_client:0oa-shadow-gpt-agent"),
                ("acting", "oauth_client:0oa-shadow-gpt-agent"),
            ]
        );
        let f = &found[0];
        assert_eq!(f.raise, 1, "token issuance raises");
        assert_eq!(f.app_id, None);
        assert_eq!(f.window_start, at(0));
        assert!(f.window_end > f.window_start);
        assert_eq!(f.evidence.observed["principal"], "0oa-shadow-gpt-agent");
        assert_eq!(f.evidence.observed["principal_kind"], "oauth_client");
        assert_eq!(f.evidence.details["products_seen"], json!(["okta"]));
        assert_eq!(
            f.evidence.details["categories_seen"],
            json!(["token_issuance"])
        );
        assert_eq!(f.evidence.samples.len(), 1);
        assert!(f.summary.contains("0oa-shadow-gpt-agent"), "{}", f.summary);
        assert!(
            f.summary.contains("not in the micro-app registry"),
            "{}",
            f.summary
        );
        assert_eq!(found[1].window_start, at(supp));
        assert_eq!(found[1].evidence.details["events_seen"], json!(4));
        assert_eq!(d.tracked(), 1);
    }

    #[test]
    fn gateway_consumer_acting_is_raised_on_its_first_secret_read() {
        let (r, spec) = (registry(), spec());
        let mut d = build(&spec, 100).unwrap();
        let read = event(
            120,
            Product::Vault,
            Category::SecretRead,
            "read kv/data/prod/crm/api-key",
            &[(PrincipalKind::GatewayConsumer, "shadow-gpt-agent")],
            &r,
        );
        let found = drive(
            d.as_mut(),
            &spec,
            &r,
            &[shadow_call(0, &r), shadow_call(60, &r), read.clone(), read],
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!((found[0].raise, found[1].raise), (0, 1));
        assert_eq!(found[0].identity, "gateway_consumer:shadow-gpt-agent");
        assert!(
            found[0].summary.contains("called api.openai.com"),
            "{}",
            found[0].summary
        );
        assert_eq!(
            found[1].evidence.details["categories_seen"],
            json!(["secret_read", "egress_request"])
        );
    }

    #[test]
    fn registered_app_and_address_only_principals_are_not_acting() {
        let (r, spec) = (registry(), spec());
        let mut d = build(&spec, 100).unwrap();
        let mut proxy = event(
            10,
            Product::Squid,
            Category::EgressRequest,
            "CONNECT",
            &[(PrincipalKind::SourceIp, "10.1.2.3")],
            &r,
        );
        proxy.dst_host = Some("example.org".into());
        let anonymous = event(20, Product::Envoy, Category::EgressRequest, "GET", &[], &r);
        let found = drive(
            d.as_mut(),
            &spec,
            &r,
            &[
                app_call(0, "0oa1invoicebot", &r),
                app_call(5, "0oa1invoicebot", &r),
                proxy,
                anonymous,
            ],
        );
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(
            d.tracked(),
            0,
            "no state for current apps nor ignored principals"
        );
    }

    #[test]
    fn access_key_created_outside_onboarding() {
        let (r, spec) = (registry(), spec());
        let mut d = build(&spec, 100).unwrap();
        let found = drive(d.as_mut(), &spec, &r, &[create_access_key(300, &r)]);
        assert_eq!(
            variants(&found),
            vec![(
                "outside_onboarding",
                "role_arn:arn:aws:iam::1:user/contractor-temp"
            )],
            "an admin event is judged by outside_onboarding only"
        );
        let f = &found[0];
        assert_eq!(f.raise, 1, "credential creation raises");
        assert_eq!(f.sql_filter, "category = 'identity_admin'");
        assert_eq!(f.evidence.observed["activity"], "CreateAccessKey");
        assert_eq!(f.evidence.observed["target_principal"], "shadow-gpt-agent");
        assert_eq!(
            f.evidence.details["issued_credential"],
            "AKIAEXAMPLESHADOW01"
        );
        assert!(f.summary.contains("contractor-temp"), "{}", f.summary);
        assert!(
            f.summary.contains("outside the onboarding flow"),
            "{}",
            f.summary
        );

        // A registered app changing an identity alerts too, unraised for a non-credential change.
        let mut attach = app_call(400, "0oa1invoicebot", &r);
        attach.set_category(Category::IdentityAdmin);
        attach.activity = "AttachRolePolicy".into();
        let found = drive(d.as_mut(), &spec, &r, &[attach]);
        assert_eq!(
            variants(&found),
            vec![("outside_onboarding", "app:invoice-bot")]
        );
        assert_eq!(found[0].raise, 0);
        assert_eq!(found[0].app_id.as_deref(), Some("invoice-bot"));
    }

    #[test]
    fn people_are_context_unless_asked_but_their_admin_changes_alert() {
        let r = registry();
        let person = |secs: i64, category: Category, activity: &str| {
            let mut e = event(
                secs,
                Product::Okta,
                category,
                activity,
                &[(PrincipalKind::User, "dana@example.com")],
                &r,
            );
            e.actor.actor_type = ActorType::Person;
            e.outcome = Outcome::Success;
            e
        };
        let sign_in = person(0, Category::Authentication, "user.session.start");
        let mut secret = person(60, Category::SecretRead, "GetSecretValue");
        secret.resource = Some("prod/db".into());
        let admin = person(120, Category::IdentityAdmin, "application.lifecycle.create");

        let spec = spec();
        let mut d = build(&spec, 100).unwrap();
        let found = drive(
            d.as_mut(),
            &spec,
            &r,
            &[sign_in.clone(), secret.clone(), admin.clone()],
        );
        assert_eq!(
            variants(&found),
            vec![("outside_onboarding", "user:dana@example.com")],
            "a person's sign-in and reads are not `acting`; the app they created outside onboarding is"
        );

        let mut spec = spec.clone();
        spec.params
            .insert("report_people".into(), toml::Value::Boolean(true));
        let mut d = build(&spec, 100).unwrap();
        let found = drive(d.as_mut(), &spec, &r, &[sign_in, secret, admin]);
        assert_eq!(
            variants(&found),
            vec![
                ("acting", "user:dana@example.com"),
                ("acting", "user:dana@example.com"),
                ("outside_onboarding", "user:dana@example.com"),
            ],
            "report_people reports them as before (the read escalates)"
        );
    }

    #[test]
    fn onboarding_principals_and_failures_do_not_alert() {
        let r = registry();
        let mut spec = spec();
        spec.params.insert(
            "onboarding_principals".into(),
            toml::Value::Array(vec![toml::Value::String(
                "arn:aws:iam::1:user/contractor-temp".into(),
            )]),
        );
        let mut d = build(&spec, 100).unwrap();
        let mut other_call = create_access_key(400, &r);
        other_call.set_category(Category::ApiCall);
        other_call.activity = "ListUsers".into();
        let found = drive(
            d.as_mut(),
            &spec,
            &r,
            &[create_access_key(300, &r), other_call],
        );
        assert!(found.is_empty(), "{found:?}");

        let spec = self::spec();
        let mut d = build(&spec, 100).unwrap();
        let mut denied = create_access_key(300, &r);
        denied.outcome = Outcome::Failure;
        assert!(drive(d.as_mut(), &spec, &r, &[denied]).is_empty());
    }

    #[test]
    fn lapsed_registration_alerts_once_per_window_and_current_one_does_not() {
        let (r, spec) = (registry(), spec());
        let mut d = build(&spec, 100).unwrap();
        let supp = spec.suppression_secs as i64;
        let found = drive(
            d.as_mut(),
            &spec,
            &r,
            &[
                app_call(0, "0oa1oldbot", &r),
                app_call(10, "0oa1invoicebot", &r),
                app_call(60, "0oa1oldbot", &r),
                app_call(supp + 1, "0oa1oldbot", &r),
            ],
        );
        assert_eq!(
            variants(&found),
            vec![("lapsed", "app:old-bot"), ("lapsed", "app:old-bot")]
        );
        let f = &found[0];
        assert_eq!(f.app_id.as_deref(), Some("old-bot"));
        assert_eq!(f.raise, 0);
        // Renewed 2026-07-26 + 90 days = due 2026-10-24; event on 2026-11-23.
        assert_eq!(f.evidence.observed["overdue_days"], json!(30));
        assert_eq!(f.evidence.baseline["due_on"], json!("2026-10-24"));
        assert!(f.summary.contains("lapsed 30 day(s) ago"), "{}", f.summary);
        assert!(f.summary.contains("bob@example.com"), "{}", f.summary);
    }

    #[test]
    fn lapse_uses_registered_on_without_renewal_and_renewal_days() {
        let yaml = "apps:\n  - {id: a, name: A, owner: o@x, risk_tier: public, registered_on: 2026-08-20, identities: {users: [svc-a]}}\n";
        let r = Registry::parse(yaml, "r.yaml").unwrap();
        let call = |secs| {
            event(
                secs,
                Product::Okta,
                Category::Authentication,
                "user.session.start",
                &[(PrincipalKind::User, "svc-a")],
                &r,
            )
        };
        // 2026-08-20 + 90 days = 2026-11-18 < 2026-11-23.
        let spec = spec();
        let mut d = build(&spec, 100).unwrap();
        assert_eq!(drive(d.as_mut(), &spec, &r, &[call(0)]).len(), 1);
        let mut spec = spec.clone();
        spec.params
            .insert("renewal_days".into(), toml::Value::Integer(100));
        let mut d = build(&spec, 100).unwrap();
        assert!(drive(d.as_mut(), &spec, &r, &[call(0)]).is_empty());
    }

    #[test]
    fn save_then_load_behaves_the_same() {
        let (r, spec) = (registry(), spec());
        let supp = spec.suppression_secs as i64;
        let before = [
            shadow_token(0, &r),
            shadow_call(30, &r),
            app_call(40, "0oa1oldbot", &r),
        ];
        let after = [
            shadow_token(600, &r),
            shadow_call(700, &r),
            app_call(800, "0oa1oldbot", &r),
            shadow_token(supp + 5, &r),
            app_call(supp + 50, "0oa1oldbot", &r),
        ];
        let mut a = build(&spec, 100).unwrap();
        assert_eq!(drive(a.as_mut(), &spec, &r, &before).len(), 3);
        let saved = a.save();
        assert_eq!(saved.len(), 3);
        let keys: Vec<&str> = saved.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "app:old-bot",
                "gateway_consumer:shadow-gpt-agent",
                "oauth_client:0oa-shadow-gpt-agent"
            ],
            "sorted"
        );
        for (_, v) in &saved {
            assert!(v.to_string().len() < 2048, "{v}");
        }
        let mut b = build(&spec, 100).unwrap();
        for (k, v) in saved.clone() {
            b.load(k, v).unwrap();
        }
        assert_eq!(b.save(), saved, "round trip is exact");
        let fa = drive(a.as_mut(), &spec, &r, &after);
        let fb = drive(b.as_mut(), &spec, &r, &after);
        assert_eq!(format!("{fa:?}"), format!("{fb:?}"));
        assert_eq!(
            variants(&fa),
            vec![
                ("acting", "oauth_client:0oa-shadow-gpt-agent"),
                ("lapsed", "app:old-bot")
            ]
        );
        assert!(b.load("x".into(), json!({"seen": "nope"})).is_err());
    }

    #[test]
    fn identities_are_capped_and_evicted_when_idle() {
        let (r, spec) = (registry(), spec());
        let mut d = build(&spec, 2).unwrap();
        let events: Vec<NormalizedEvent> = (0..5)
            .map(|i| {
                event(
                    i * 10,
                    Product::Okta,
                    Category::Authentication,
                    "user.session.start",
                    &[(PrincipalKind::OauthClient, &format!("0oa-unknown-{i}"))],
                    &r,
                )
            })
            .collect();
        assert_eq!(drive(d.as_mut(), &spec, &r, &events).len(), 5);
        assert!(d.tracked() <= 2, "{}", d.tracked());
        let tracked = d.tracked();
        assert_eq!(d.evict_idle(at(1000)), tracked);
        assert_eq!(d.tracked(), 0);
    }
}
