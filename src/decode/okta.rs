//! Okta System Log events (one JSON event per record) into normalized events.
//!
//! Mapping:
//! - `published` → `time` (a record without a usable one is `bad_time`);
//!   `eventType` → `activity`; `uuid` → `vendor_event_id`.
//! - category from `eventType`: OAuth token grants (`app.oauth2.*token.grant*`,
//!   implicit-flow authorizations) → token issuance, with `issued_token_id` from an
//!   access/id/refresh-token target or `debugContext.debugData`; identity admin
//!   (create / grant / add, lifecycle, privilege, API tokens, OAuth clients) →
//!   identity admin, with `target_principal` from the first target; `user.session.*`
//!   and `user.authentication.*` → authentication; everything else → API call.
//! - actor: a `User` by `alternateId` then `id`; client/app actors as OAuth clients
//!   by `id`; an `IP address` actor as a source IP; then the OAuth client of the
//!   request (`client.id`, `debugData.clientId`), then the source IP.
//! - `client.ipAddress` → `src_ip`; `client.geographicalContext.country` / `.state`
//!   → `src_country` / `src_region` (Okta's own names, e.g. "United States");
//!   `authenticationContext.externalSessionId` → `session_id`; `outcome.result` →
//!   outcome (SUCCESS/ALLOW, FAILURE/DENY, else unknown); `outcome.reason` → `status_code`.
//!
//! Okta writes the value `unknown` where it has no id; such values are skipped.
//! Records exported by Panther may carry lower-cased key names (`eventtype`,
//! `debugcontext`, …); those are accepted as aliases.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::fields::opt_str;
use super::{DecodeError, Format, parse_time};
use crate::event::{ActorType, Category, NormalizedEvent, Outcome, PrincipalKind, Product};

const FORMAT: Format = Format::Okta;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    published: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str", alias = "eventtype")]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    uuid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    actor: Option<Actor<'a>>,
    #[serde(borrow)]
    client: Option<Client<'a>>,
    #[serde(borrow)]
    outcome: Option<EventOutcome<'a>>,
    #[serde(borrow)]
    target: Option<Vec<Target<'a>>>,
    #[serde(borrow, alias = "authenticationcontext")]
    authentication_context: Option<AuthenticationContext<'a>>,
    #[serde(borrow, alias = "debugcontext")]
    debug_context: Option<DebugContext<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Actor<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str", rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    alternate_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Client<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    ip_address: Option<Cow<'a, str>>,
    #[serde(borrow)]
    geographical_context: Option<GeographicalContext<'a>>,
}

#[derive(Deserialize)]
struct GeographicalContext<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    country: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    state: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct EventOutcome<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    result: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str", rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    alternate_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthenticationContext<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    external_session_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DebugContext<'a> {
    #[serde(borrow)]
    debug_data: Option<ObjectOr<DebugData<'a>>>,
}

/// An object that some exports write as a string instead (`"debugData": ""`):
/// an object is decoded as `T`, any other value is skipped. Unlike an untagged
/// enum this does not buffer the value, so strings stay borrowed.
enum ObjectOr<T> {
    Object(T),
    Other,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOr<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOrVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOrVisitor<T> {
            type Value = ObjectOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(ObjectOr::Object)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ObjectOr::Other)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other)
            }
        }
        deserializer.deserialize_any(ObjectOrVisitor(PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DebugData<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str", alias = "client_id")]
    client_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str", alias = "accessTokenId")]
    token_id: Option<Cow<'a, str>>,
}

/// A value Okta actually knows: not empty, not its `unknown` placeholder.
fn known<'s>(value: &'s Option<Cow<'_, str>>) -> Option<&'s str> {
    let v = value.as_deref()?.trim();
    (!v.is_empty() && !v.eq_ignore_ascii_case("unknown")).then_some(v)
}

/// Sorts an Okta `eventType` into a category. Order matters: a token grant
/// ends in `grant` too, and an impersonation grant is also a `user.session.*` event.
fn category(event_type: &str) -> Category {
    let t = event_type.to_ascii_lowercase();
    if t.starts_with("app.oauth2.")
        && (t.contains("token.grant") || t.contains("authorize.implicit."))
    {
        return Category::TokenIssuance;
    }
    let last = t.rsplit('.').next().unwrap_or_default();
    let admin = matches!(last, "create" | "grant" | "add")
        || t.split('.').any(|s| s == "lifecycle" || s == "privilege")
        || t.starts_with("system.api_token.")
        || t.starts_with("app.oauth2.client");
    if admin {
        Category::IdentityAdmin
    } else if t.starts_with("user.session.") || t.starts_with("user.authentication.") {
        Category::Authentication
    } else {
        Category::ApiCall
    }
}

fn outcome(result: Option<&str>) -> Outcome {
    match result.map(str::to_ascii_uppercase).as_deref() {
        Some("SUCCESS" | "ALLOW") => Outcome::Success,
        Some("FAILURE" | "DENY") => Outcome::Failure,
        _ => Outcome::Unknown,
    }
}

/// Whether an actor type names an application rather than a person.
fn is_client_type(kind: &str) -> bool {
    let k = kind.to_ascii_lowercase();
    k.contains("client") || k.contains("app") || k == "workloadidentityprincipal"
}

/// The id of the token a grant issued: an access token first, then id and refresh tokens.
fn issued_token<'s>(
    targets: &'s [Target<'_>],
    debug: Option<&'s DebugData<'_>>,
) -> Option<&'s str> {
    for wanted in ["access_token", "id_token", "refresh_token"] {
        let found = targets.iter().find(|t| {
            t.kind
                .as_deref()
                .is_some_and(|k| k.eq_ignore_ascii_case(wanted))
        });
        if let Some(id) = found.and_then(|t| known(&t.id)) {
            return Some(id);
        }
    }
    debug.and_then(|d| known(&d.token_id))
}

/// Decodes one Okta System Log event.
pub fn decode(payload: &[u8], out: &mut Vec<NormalizedEvent>) -> Result<(), DecodeError> {
    let event: Event<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::from_json(FORMAT, e))?;
    let event_type = event
        .event_type
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| DecodeError::shape(FORMAT, "no eventType"))?;
    let time = match event.published.as_deref() {
        Some(text) => parse_time(FORMAT, text)?,
        None => {
            return Err(DecodeError::BadTime {
                format: FORMAT,
                detail: "no published time".into(),
            });
        }
    };

    let category = category(event_type);
    let mut e = NormalizedEvent::new(time, Product::Okta, category, event_type);
    e.vendor_event_id = known(&event.uuid).map(str::to_string);

    if let Some(actor) = &event.actor {
        let kind = actor.kind.as_deref().unwrap_or_default();
        if kind.eq_ignore_ascii_case("ip address") {
            if let Some(ip) = known(&actor.id) {
                e.actor.push(PrincipalKind::SourceIp, ip);
            }
        } else if is_client_type(kind) {
            e.actor.actor_type = ActorType::Service;
            if let Some(id) = known(&actor.id) {
                e.actor.push(PrincipalKind::OauthClient, id);
            }
        } else {
            // Okta's `User` actors are people; a system principal says so in its type.
            e.actor.actor_type = if kind.eq_ignore_ascii_case("user") {
                ActorType::Person
            } else {
                ActorType::Unknown
            };
            for value in [known(&actor.alternate_id), known(&actor.id)]
                .into_iter()
                .flatten()
            {
                e.actor.push(PrincipalKind::User, value);
            }
        }
    }
    let debug = event
        .debug_context
        .as_ref()
        .and_then(|d| match &d.debug_data {
            Some(ObjectOr::Object(data)) => Some(data),
            _ => None,
        });
    let client = event.client.as_ref();
    let client_ids = [
        client.and_then(|c| known(&c.id)),
        debug.and_then(|d| known(&d.client_id)),
    ];
    for id in client_ids.into_iter().flatten() {
        e.actor.push(PrincipalKind::OauthClient, id);
    }
    if let Some(client) = client {
        if let Some(ip) = known(&client.ip_address) {
            e.src_ip = Some(ip.to_string());
            e.actor.push(PrincipalKind::SourceIp, ip);
        }
        if let Some(geo) = &client.geographical_context {
            e.src_country = known(&geo.country).map(str::to_string);
            e.src_region = known(&geo.state).map(str::to_string);
        }
    }

    e.session_id = event
        .authentication_context
        .as_ref()
        .and_then(|a| known(&a.external_session_id))
        .map(str::to_string);
    if let Some(o) = &event.outcome {
        e.outcome = outcome(o.result.as_deref());
        e.status_code = known(&o.reason).map(str::to_string);
    }

    let targets = event.target.as_deref().unwrap_or_default();
    match category {
        Category::TokenIssuance => {
            e.issued_token_id = issued_token(targets, debug).map(str::to_string);
        }
        Category::IdentityAdmin => {
            e.target_principal = targets
                .first()
                .and_then(|t| known(&t.alternate_id).or_else(|| known(&t.id)))
                .map(str::to_string);
        }
        _ => {}
    }
    out.push(e);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::DecodeOptions;
    use crate::decode::testing::{self, refs, samples};
    use serde_json::Value;

    const RULE_TESTS: &str = "okta_systemlog/panther_rule_tests.ndjson";
    const SCENARIOS: &str = "okta_systemlog/panther_test_scenarios.ndjson";

    fn one(payload: &[u8]) -> NormalizedEvent {
        testing::one(decode, payload)
    }

    #[test]
    fn every_sample_decodes_or_says_why() {
        let mut decoded = 0;
        let mut bad_time = Vec::new();
        for (file, path) in [("rule_tests", RULE_TESTS), ("scenarios", SCENARIOS)] {
            for (i, payload) in samples(path).iter().enumerate() {
                let mut out = Vec::new();
                match decode(payload, &mut out) {
                    Ok(()) => {
                        assert_eq!(out.len(), 1);
                        assert_eq!(out[0].product, Product::Okta);
                        decoded += 1;
                    }
                    Err(err) => {
                        assert_eq!(err.reason(), "bad_time", "{file} line {}: {err}", i + 1);
                        assert!(out.is_empty());
                        bad_time.push((file, i + 1));
                    }
                }
            }
        }
        // Panther's test records: three have `published` redacted to "redacted",
        // five have no `published` at all.
        assert_eq!(decoded, 78);
        assert_eq!(
            bad_time,
            [
                ("rule_tests", 24),
                ("rule_tests", 25),
                ("rule_tests", 26),
                ("rule_tests", 34),
                ("rule_tests", 37),
                ("rule_tests", 60),
                ("rule_tests", 61),
                ("rule_tests", 62),
            ]
        );
    }

    #[test]
    fn user_sign_in_fields() {
        // rule_tests line 2: an interactive sign-in to the Okta dashboard.
        let e = one(&samples(RULE_TESTS)[1]);
        assert_eq!(e.actor.actor_type, ActorType::Person, "an Okta User actor");
        assert_eq!(e.category, Category::Authentication);
        assert_eq!(e.class_uid, 3002);
        assert_eq!(e.activity, "user.session.start");
        assert_eq!(e.time.to_rfc3339(), "2024-04-02T19:17:37.621+00:00");
        assert_eq!(
            refs(&e),
            [
                (PrincipalKind::User, "casey.hill@hey.com"),
                (PrincipalKind::User, "00ubewfku1EX0WCFk697"),
                (PrincipalKind::SourceIp, "99.108.5.25"),
            ]
        );
        assert_eq!(e.actor.raw, "casey.hill@hey.com");
        assert_eq!(e.src_ip.as_deref(), Some("99.108.5.25"));
        assert_eq!(e.src_country.as_deref(), Some("United States"));
        assert_eq!(e.src_region.as_deref(), Some("Georgia"));
        assert_eq!(e.session_id.as_deref(), Some("idxvF50v_5sT2-GOA7_K0Amyw"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.status_code, None);
        assert_eq!(
            e.vendor_event_id.as_deref(),
            Some("aac560bd-f125-11ee-9caa-cd5d09945def")
        );
        assert_eq!(e.target_principal, None);

        // Its failed twin on line 3 gives no reason.
        let failed = one(&samples(RULE_TESTS)[2]);
        assert_eq!(failed.outcome, Outcome::Failure);
        assert_eq!(failed.status_code, None);

        // Line 50: a failed sign-in with a reason, lower-cased keys.
        let e = one(&samples(RULE_TESTS)[49]);
        assert_eq!(e.category, Category::Authentication);
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(e.status_code.as_deref(), Some("INVALID_CREDENTIALS"));
        assert_eq!(e.session_id.as_deref(), Some("100-abc-9999"));
        assert_eq!(e.src_region.as_deref(), Some("Ohio"));
        assert_eq!(e.time.to_rfc3339(), "2022-06-22T18:18:29.015+00:00");
    }

    #[test]
    fn oauth_client_actor_with_lowercased_keys() {
        // rule_tests line 31: a public OAuth client asks for an authorization code;
        // Panther lower-cased `eventType`, `authenticationContext`, `debugContext`.
        let e = one(&samples(RULE_TESTS)[30]);
        assert_eq!(e.actor.actor_type, ActorType::Service, "a client actor");
        assert_eq!(e.activity, "app.oauth2.authorize.code");
        // An authorization code is not a token: plain API activity.
        assert_eq!(e.category, Category::ApiCall);
        assert_eq!(
            refs(&e),
            [
                (PrincipalKind::OauthClient, "okta.1234."),
                (PrincipalKind::OauthClient, "okta.1234"),
                (PrincipalKind::SourceIp, "1.2.3.4"),
            ]
        );
        assert_eq!(e.session_id.as_deref(), Some("123456789"));
        assert_eq!(e.src_region.as_deref(), Some("New York"));
        assert_eq!(e.outcome, Outcome::Success);
    }

    #[test]
    fn admin_events_name_their_target() {
        let rules = samples(RULE_TESTS);
        // Line 12: an admin grants Organization administrator to alice.
        let e = one(&rules[11]);
        assert_eq!(e.activity, "user.account.privilege.grant");
        assert_eq!(e.category, Category::IdentityAdmin);
        assert_eq!(e.class_uid, 6003);
        assert_eq!(e.target_principal.as_deref(), Some("alice@acme.io"));
        assert_eq!(e.actor.raw, "jack@acme.io");
        assert_eq!(e.src_ip.as_deref(), Some("136.24.229.58"));
        assert_eq!(e.src_country.as_deref(), Some("United States"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.session_id, None);

        // Line 22: an API token is created; its target alternateId is "unknown",
        // so the token's id names it. The record has no client block at all.
        let e = one(&rules[21]);
        assert_eq!(e.category, Category::IdentityAdmin);
        assert_eq!(e.target_principal.as_deref(), Some("00Tpki36zlWjhjQ1u2p4"));
        assert_eq!(e.src_ip, None);
        assert_eq!(e.actor.refs.len(), 2);

        // Line 18: impersonation grant is admin, not a session event; no target, no uuid.
        let e = one(&rules[17]);
        assert_eq!(e.category, Category::IdentityAdmin);
        assert_eq!(e.target_principal, None);
        assert_eq!(e.vendor_event_id, None);
        assert_eq!(e.outcome, Outcome::Unknown);

        // Scenario line 20: a user is created.
        let e = one(&samples(SCENARIOS)[19]);
        assert_eq!(e.activity, "user.lifecycle.create");
        assert_eq!(e.category, Category::IdentityAdmin);
        assert!(e.target_principal.is_some());
    }

    #[test]
    fn actor_placeholders_and_ip_actors() {
        let rules = samples(RULE_TESTS);
        // Line 35: ThreatInsight names an IP address as the actor and denies it.
        let e = one(&rules[34]);
        assert_eq!(e.activity, "security.threat.detected");
        assert_eq!(e.category, Category::ApiCall);
        assert_eq!(refs(&e)[0], (PrincipalKind::SourceIp, "1.2.3.4"));
        assert_eq!(e.outcome, Outcome::Failure);
        // Line 19: `debugData` is an empty string, not an object; it is skipped.
        let e = one(&rules[18]);
        assert_eq!(e.activity, "application.user_membership.show_password");
        assert_eq!(e.session_id.as_deref(), Some("XXXXXXXXXXXXXXXXX"));
        // Line 30: the actor's alternateId is "unknown"; only its id is kept.
        let e = one(&rules[29]);
        assert_eq!(e.actor.raw, "00abc456");
        assert!(e.actor.refs.iter().all(|r| r.value != "unknown"));
    }

    #[test]
    fn categories_of_event_types() {
        let cases = [
            ("user.session.start", Category::Authentication),
            ("user.authentication.sso", Category::Authentication),
            ("user.session.impersonation.grant", Category::IdentityAdmin),
            (
                "app.oauth2.as.token.grant.access_token",
                Category::TokenIssuance,
            ),
            ("app.oauth2.token.grant", Category::TokenIssuance),
            (
                "app.oauth2.as.token.grant.id_token",
                Category::TokenIssuance,
            ),
            (
                "app.oauth2.authorize.implicit.access_token",
                Category::TokenIssuance,
            ),
            ("app.oauth2.token.detect_reuse", Category::ApiCall),
            ("system.api_token.create", Category::IdentityAdmin),
            ("system.api_token.revoke", Category::IdentityAdmin),
            ("user.lifecycle.create", Category::IdentityAdmin),
            ("application.lifecycle.update", Category::IdentityAdmin),
            ("group.user_membership.add", Category::IdentityAdmin),
            (
                "app.oauth2.client.lifecycle.create",
                Category::IdentityAdmin,
            ),
            ("app.oauth2.client_secret.create", Category::IdentityAdmin),
            ("group.privilege.grant", Category::IdentityAdmin),
            (
                "application.user_membership.show_password",
                Category::ApiCall,
            ),
            ("policy.evaluate_sign_on", Category::ApiCall),
            ("system.org.rate_limit.warning", Category::ApiCall),
        ];
        for (event_type, expected) in cases {
            assert_eq!(category(event_type), expected, "{event_type}");
        }
    }

    #[test]
    fn token_grant_names_the_issued_token() {
        // No token grant is among the samples; this one is written in the layout of
        // the System Log API (event type and target types as Okta documents them).
        let line = br#"{"uuid":"4f0c2a7e-8a41-11f0-9d5a-0b1c2d3e4f50","published":"2026-02-10T08:30:12.345Z",
            "eventType":"app.oauth2.as.token.grant.access_token","actor":{"id":"0oa7rptd3bQqZl0x95d7",
            "type":"PublicClientApp","alternateId":"reports-worker","displayName":"reports-worker"},
            "client":{"id":"0oa7rptd3bQqZl0x95d7","ipAddress":"198.51.100.7",
            "geographicalContext":{"country":"Germany","state":"Hesse"}},
            "outcome":{"result":"SUCCESS"},"debugContext":{"debugData":{"grantType":"client_credentials",
            "grantedScopes":"okta.users.read","clientId":"0oa7rptd3bQqZl0x95d7"}},
            "target":[{"id":"aus1a2b3c4d5e6f7g8h9","type":"AuthorizationServer"},
            {"id":"AT.q3Z9xYb0VwTnL2kHcR4sP1mJeA","type":"access_token","alternateId":"",
            "detailEntry":{"expires":"2026-02-10T09:30:12.000Z"}}]}"#;
        let e = one(line);
        assert_eq!(e.category, Category::TokenIssuance);
        assert_eq!(e.class_uid, 3002);
        assert_eq!(
            e.issued_token_id.as_deref(),
            Some("AT.q3Z9xYb0VwTnL2kHcR4sP1mJeA")
        );
        assert_eq!(
            refs(&e),
            [
                (PrincipalKind::OauthClient, "0oa7rptd3bQqZl0x95d7"),
                (PrincipalKind::SourceIp, "198.51.100.7"),
            ]
        );
        assert_eq!(e.src_country.as_deref(), Some("Germany"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.target_principal, None);

        // The client id may also only be in `debugData`, after a user actor.
        let line = br#"{"published":"2026-02-10T08:30:13Z","eventType":"app.oauth2.as.token.grant.id_token",
            "actor":{"id":"00u1f2e3d4c5b6a7z8y9","type":"User","alternateId":"dana@example.com"},
            "debugContext":{"debugData":{"clientId":"0oa9webportal000x1y2"}},
            "target":[{"id":"ID.Zk3mPq8sLw2vNx5cRt7y","type":"id_token"}]}"#;
        let e = one(line);
        assert_eq!(
            refs(&e),
            [
                (PrincipalKind::User, "dana@example.com"),
                (PrincipalKind::User, "00u1f2e3d4c5b6a7z8y9"),
                (PrincipalKind::OauthClient, "0oa9webportal000x1y2"),
            ]
        );
        assert_eq!(
            e.issued_token_id.as_deref(),
            Some("ID.Zk3mPq8sLw2vNx5cRt7y")
        );
    }

    #[test]
    fn auto_recognises_okta_samples() {
        let opts = DecodeOptions::default();
        let mut recognised = 0;
        for path in [RULE_TESTS, SCENARIOS] {
            for payload in samples(path) {
                let mut out = Vec::new();
                let result = crate::decode::decode(Format::Auto, &payload, &opts, &mut out);
                let has_time =
                    serde_json::from_slice::<Value>(&payload).unwrap()["published"].is_string();
                match result {
                    Ok(()) => {
                        assert_eq!(out[0].product, Product::Okta);
                        recognised += 1;
                    }
                    // "redacted" times reach this decoder; records without
                    // `published` do not look like Okta to `auto`.
                    Err(err) if has_time => assert_eq!(err.reason(), "bad_time"),
                    Err(err) => assert_eq!(err.reason(), "unknown_format"),
                }
            }
        }
        assert_eq!(recognised, 78);
    }

    #[test]
    fn malformed_records_say_why() {
        let cases: [(&[u8], &str); 9] = [
            (br#"{"eventType":"user.session.start","published":"2024-"#, "bad_json"),
            (br#"{"eventType":"user.session.start","published":5}"#, "wrong_shape"),
            (
                br#"{"eventType":"user.session.start","published":"2024-01-01T00:00:00Z","actor":"x"}"#,
                "wrong_shape",
            ),
            (
                br#"{"eventType":"user.session.start","published":"2024-01-01T00:00:00Z","target":{"id":1}}"#,
                "wrong_shape",
            ),
            (br#"{"eventType":"user.session.start","actor":{"type":"User"}}"#, "bad_time"),
            (br#"{"eventType":"user.session.start","published":"yesterday"}"#, "bad_time"),
            (br#"{"published":"2024-01-01T00:00:00Z"}"#, "wrong_shape"),
            (br#"[1,2]"#, "wrong_shape"),
            (b"\xff\xfe", "bad_json"),
        ];
        testing::assert_reasons(decode, &cases);
    }

    #[test]
    fn deep_and_huge_values_do_not_panic() {
        let deep = format!(
            r#"{{"eventType":"user.session.start","published":"2024-01-01T00:00:00Z","debugContext":{{"debugData":{{"x":{}1{}}}}}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        // serde_json skips unknown values without recursing: the event still decodes.
        assert_eq!(one(deep.as_bytes()).activity, "user.session.start");
        // In a field that is read, depth is bounded by serde_json's recursion limit.
        let deep_known = format!(
            r#"{{"eventType":"user.session.start","published":"2024-01-01T00:00:00Z","target":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let mut out = Vec::new();
        assert!(decode(deep_known.as_bytes(), &mut out).is_err());
        assert!(out.is_empty());

        let huge = "é".repeat(1 << 20);
        let line = format!(
            r#"{{"eventType":"{huge}","published":"2024-01-01T00:00:00Z","actor":{{"type":"User","alternateId":"{huge}\n"}},"outcome":{{"reason":"{huge}"}}}}"#
        );
        let e = one(line.as_bytes());
        assert_eq!(e.category, Category::ApiCall);
        assert_eq!(e.actor.raw.len(), huge.len());
    }
}
