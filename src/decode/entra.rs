//! Microsoft Entra ID sign-in logs (Azure Monitor export or Graph `signIn`) into normalized events.
//!
//! Two layouts are accepted:
//! - the Azure Monitor diagnostic-settings record: `{"time", "operationName":
//!   "Sign-in activity", "category": "SignInLogs" | "NonInteractiveUserSignInLogs" |
//!   "ServicePrincipalSignInLogs" | "ManagedIdentitySignInLogs", "resultType",
//!   "callerIpAddress", "tenantId", "correlationId", "location", "properties": {signIn}}`;
//! - the Microsoft Graph `signIn` resource alone (`createdDateTime` at the top level).
//!
//! Other Azure Monitor categories (`AuditLogs`, …) are `wrong_shape`.
//!
//! Mapping:
//! - service-principal and managed-identity sign-ins → token issuance (a client
//!   credentials sign-in issues a token), `issued_token_id` = `uniqueTokenIdentifier`;
//!   actor `appId` (OAuth client), `servicePrincipalId` (OAuth client),
//!   `servicePrincipalName` (user);
//! - user sign-ins → authentication; actor `userPrincipalName` (user), `appId` (OAuth client);
//! - `activity` = the category (`ServicePrincipalSignInLogs`…), or `signIn` for Graph records;
//! - `time` = top-level `time`, else `createdDateTime` (neither is `bad_time`);
//! - `src_ip` = `ipAddress`, else `callerIpAddress` (also pushed as a source-IP form);
//!   `src_country` = `location.countryOrRegion`, else the top-level `location`;
//!   `src_region` = `location.state`;
//! - `cloud_account` = `tenantId`, else `homeTenantId`, else `resourceTenantId` (the
//!   only tenant a Graph service-principal record names); `session_id` = `sessionId`,
//!   else `correlationId`; `vendor_event_id` = `id`; `resource` = `resourceDisplayName`;
//! - outcome from `status.errorCode` (0 succeeded; any other code failed, kept as
//!   `status_code`), else from `resultType` (`0`, or `Success`/`Failure`).
//!
//! Records exported by Panther may carry lower-cased envelope keys
//! (`operationname`, `calleripaddress`, `tenantid`, …); those are accepted as aliases.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;

use super::fields::opt_str;
use super::{DecodeError, Format, parse_time};
use crate::event::{ActorType, Category, NormalizedEvent, Outcome, PrincipalKind, Product};

const FORMAT: Format = Format::Entra;

/// The Azure Monitor envelope. `properties` is kept raw until the category
/// says it is a sign-in, so other categories are rejected for what they are.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    time: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str", alias = "operationname")]
    operation_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    category: Option<Cow<'a, str>>,
    #[serde(borrow, alias = "resulttype")]
    result_type: Option<Code<'a>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        alias = "calleripaddress"
    )]
    caller_ip_address: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str", alias = "tenantid")]
    tenant_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str", alias = "correlationid")]
    correlation_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    location: Option<Location<'a>>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
}

/// The `signIn` resource: Azure Monitor's `properties`, or a Graph record.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SignIn<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    created_date_time: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    user_principal_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    app_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    service_principal_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    service_principal_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    sign_in_event_types: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    ip_address: Option<Cow<'a, str>>,
    #[serde(borrow)]
    location: Option<Location<'a>>,
    #[serde(borrow)]
    status: Option<Status<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    tenant_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    home_tenant_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    resource_tenant_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    correlation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    resource_display_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    unique_token_identifier: Option<Cow<'a, str>>,
}

/// `location`: a country code at the envelope's top level, an object in `signIn`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Location<'a> {
    Name(#[serde(borrow)] Cow<'a, str>),
    Detail(#[serde(borrow)] SignInLocation<'a>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignInLocation<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    country_or_region: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    state: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    #[serde(borrow)]
    error_code: Option<Code<'a>>,
}

/// A result or error code, which exports write as a number or as a string.
enum Code<'a> {
    Number(i64),
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Code<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CodeVisitor;
        impl<'de> Visitor<'de> for CodeVisitor {
            type Value = Code<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a result code (number or string)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Code::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(match i64::try_from(v) {
                    Ok(n) => Code::Number(n),
                    Err(_) => Code::Text(Cow::Owned(v.to_string())),
                })
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Code::Text(Cow::Owned(v.to_string())))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Code::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Code::Text(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_any(CodeVisitor)
    }
}

impl Code<'_> {
    /// The outcome a code stands for, and the code to keep (numeric codes only).
    fn outcome(&self) -> (Outcome, Option<String>) {
        let number = match self {
            Code::Number(n) => Some(*n),
            Code::Text(t) => t.trim().parse::<i64>().ok(),
        };
        match (number, self) {
            (Some(0), _) => (Outcome::Success, Some("0".into())),
            (Some(n), _) => (Outcome::Failure, Some(n.to_string())),
            (None, Code::Text(t)) if t.trim().eq_ignore_ascii_case("success") => {
                (Outcome::Success, None)
            }
            (None, Code::Text(t)) if t.trim().eq_ignore_ascii_case("failure") => {
                (Outcome::Failure, None)
            }
            _ => (Outcome::Unknown, None),
        }
    }
}

/// A present, non-blank value.
fn value<'s>(v: &'s Option<Cow<'_, str>>) -> Option<&'s str> {
    let v = v.as_deref()?.trim();
    (!v.is_empty()).then_some(v)
}

/// Who signed in: a user, or an application signing in as itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    User,
    ServicePrincipal,
}

/// The sign-in kind an Azure Monitor category names; `None` if it is no sign-in log.
fn category_kind(category: &str) -> Option<Kind> {
    let c = category.trim().to_ascii_lowercase();
    if !c.ends_with("signinlogs") {
        return None;
    }
    if c.contains("serviceprincipal") || c.contains("managedidentity") {
        Some(Kind::ServicePrincipal)
    } else {
        Some(Kind::User)
    }
}

/// The sign-in kind a `signIn` record shows by itself (Graph form, or no category).
fn record_kind(s: &SignIn<'_>) -> Kind {
    let typed_sp = s.sign_in_event_types.iter().flatten().any(|t| {
        t.eq_ignore_ascii_case("servicePrincipal") || t.eq_ignore_ascii_case("managedIdentity")
    });
    if typed_sp
        || (value(&s.user_principal_name).is_none() && value(&s.service_principal_id).is_some())
    {
        Kind::ServicePrincipal
    } else {
        Kind::User
    }
}

fn bad_time(detail: &str) -> DecodeError {
    DecodeError::BadTime {
        format: FORMAT,
        detail: detail.into(),
    }
}

/// Decodes one Entra ID sign-in record.
pub fn decode(payload: &[u8], out: &mut Vec<NormalizedEvent>) -> Result<(), DecodeError> {
    let envelope: Envelope<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::from_json(FORMAT, e))?;
    let is_envelope = envelope.properties.is_some()
        || envelope.category.is_some()
        || envelope.operation_name.is_some();

    if !is_envelope {
        // The Graph `signIn` resource: the sign-in fields at the top level.
        let sign_in: SignIn<'_> =
            serde_json::from_slice(payload).map_err(|e| DecodeError::from_json(FORMAT, e))?;
        let looks_like_sign_in = [
            &sign_in.created_date_time,
            &sign_in.user_principal_name,
            &sign_in.user_id,
            &sign_in.app_id,
            &sign_in.service_principal_id,
        ]
        .into_iter()
        .any(|f| value(f).is_some());
        if !looks_like_sign_in {
            return Err(DecodeError::shape(
                FORMAT,
                "neither an Azure Monitor sign-in record nor a Graph signIn resource",
            ));
        }
        let time = match value(&sign_in.created_date_time) {
            Some(t) => parse_time(FORMAT, t)?,
            None => return Err(bad_time("signIn has no createdDateTime")),
        };
        let kind = record_kind(&sign_in);
        out.push(event(time, kind, "signIn", &sign_in, None));
        return Ok(());
    }

    let kind = match value(&envelope.category) {
        Some(category) => Some(category_kind(category).ok_or_else(|| {
            DecodeError::shape(
                FORMAT,
                format!(
                    "category `{}` is not a sign-in log",
                    super::truncate(category, 64)
                ),
            )
        })?),
        None => match value(&envelope.operation_name) {
            Some(op) if op.eq_ignore_ascii_case("Sign-in activity") => None,
            Some(op) => {
                return Err(DecodeError::shape(
                    FORMAT,
                    format!("operation `{}` is not a sign-in", super::truncate(op, 64)),
                ));
            }
            None => return Err(DecodeError::shape(FORMAT, "record has no category")),
        },
    };
    let sign_in: SignIn<'_> = match envelope.properties {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| DecodeError::shape(FORMAT, e))?,
        None => SignIn::default(),
    };
    let time = match value(&envelope.time).or(value(&sign_in.created_date_time)) {
        Some(t) => parse_time(FORMAT, t)?,
        None => return Err(bad_time("neither time nor properties.createdDateTime")),
    };
    let kind = kind.unwrap_or_else(|| record_kind(&sign_in));
    let activity = value(&envelope.category).unwrap_or("signIn");
    let mut e = event(time, kind, activity, &sign_in, Some(&envelope));
    if e.outcome == Outcome::Unknown
        && let Some(code) = &envelope.result_type
    {
        (e.outcome, e.status_code) = code.outcome();
    }
    out.push(e);
    Ok(())
}

/// Builds the event from the sign-in fields, with the envelope's as fallbacks.
fn event(
    time: chrono::DateTime<chrono::Utc>,
    kind: Kind,
    activity: &str,
    s: &SignIn<'_>,
    envelope: Option<&Envelope<'_>>,
) -> NormalizedEvent {
    let category = match kind {
        Kind::ServicePrincipal => Category::TokenIssuance,
        Kind::User => Category::Authentication,
    };
    let mut e = NormalizedEvent::new(time, Product::Entra, category, activity);
    match kind {
        Kind::ServicePrincipal => {
            e.actor.actor_type = ActorType::Service;
            if let Some(v) = value(&s.app_id) {
                e.actor.push(PrincipalKind::OauthClient, v);
            }
            if let Some(v) = value(&s.service_principal_id) {
                e.actor.push(PrincipalKind::OauthClient, v);
            }
            if let Some(v) = value(&s.service_principal_name) {
                e.actor.push(PrincipalKind::User, v);
            }
            e.issued_token_id = value(&s.unique_token_identifier).map(str::to_string);
        }
        Kind::User => {
            e.actor.actor_type = ActorType::Person;
            if let Some(v) = value(&s.user_principal_name) {
                e.actor.push(PrincipalKind::User, v);
            }
            if let Some(v) = value(&s.app_id) {
                e.actor.push(PrincipalKind::OauthClient, v);
            }
        }
    }

    let ip = value(&s.ip_address).or(envelope.and_then(|env| value(&env.caller_ip_address)));
    if let Some(ip) = ip {
        e.src_ip = Some(ip.to_string());
        e.actor.push(PrincipalKind::SourceIp, ip);
    }
    let detail = match &s.location {
        Some(Location::Detail(d)) => Some(d),
        _ => None,
    };
    let top_country = match envelope.and_then(|env| env.location.as_ref()) {
        Some(Location::Name(name)) => Some(name.trim()).filter(|n| !n.is_empty()),
        _ => None,
    };
    e.src_country = detail
        .and_then(|d| value(&d.country_or_region))
        .or(top_country)
        .map(str::to_string);
    e.src_region = detail.and_then(|d| value(&d.state)).map(str::to_string);

    e.cloud_account = envelope
        .and_then(|env| value(&env.tenant_id))
        .or(value(&s.tenant_id))
        .or(value(&s.home_tenant_id))
        .or(value(&s.resource_tenant_id))
        .map(str::to_string);
    e.session_id = value(&s.session_id)
        .or(envelope.and_then(|env| value(&env.correlation_id)))
        .or(value(&s.correlation_id))
        .map(str::to_string);
    e.vendor_event_id = value(&s.id).map(str::to_string);
    e.resource = value(&s.resource_display_name).map(str::to_string);
    if let Some(code) = s.status.as_ref().and_then(|st| st.error_code.as_ref()) {
        (e.outcome, e.status_code) = code.outcome();
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::DecodeOptions;
    use crate::decode::testing::{self, refs, samples};
    use crate::event::PrincipalRef;
    use serde_json::Value;

    const SIGN_INS: &str = "azure_signin/panther_rule_tests.ndjson";
    const DOCUMENTED_SP: &str = "azure_signin/documented_service_principal.ndjson";
    const AUDIT_OTHER: &str = "azure_audit_other/panther_rule_tests.ndjson";

    fn one(payload: &[u8]) -> NormalizedEvent {
        testing::one(decode, payload)
    }

    #[test]
    fn every_sign_in_sample_decodes() {
        let mut by_category = std::collections::BTreeMap::new();
        for (i, payload) in samples(SIGN_INS).iter().enumerate() {
            let mut out = Vec::new();
            decode(payload, &mut out).unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].product, Product::Entra);
            assert!(!out[0].actor.is_empty(), "line {} has no actor", i + 1);
            *by_category.entry(out[0].category.as_str()).or_insert(0) += 1;
        }
        assert_eq!(by_category.get("authentication"), Some(&18));
        assert_eq!(by_category.get("token_issuance"), Some(&8));
        assert_eq!(by_category.values().sum::<i32>(), 26);
    }

    #[test]
    fn user_sign_in_fields() {
        let records = samples(SIGN_INS);
        // Line 2: an interactive sign-in to Microsoft Graph through a custom app.
        let e = one(&records[1]);
        assert_eq!(e.actor.actor_type, ActorType::Person);
        assert_eq!(e.category, Category::Authentication);
        assert_eq!(e.class_uid, 3002);
        assert_eq!(e.activity, "SignInLogs");
        assert_eq!(e.time.to_rfc3339(), "2025-01-15T09:35:20.456+00:00");
        assert_eq!(
            refs(&e),
            [
                (PrincipalKind::User, "gandalf@lotr.com"),
                (PrincipalKind::OauthClient, "app-custom-789"),
                (PrincipalKind::SourceIp, "5.5.5.5"),
            ]
        );
        assert_eq!(e.src_ip.as_deref(), Some("5.5.5.5"));
        assert_eq!(e.session_id.as_deref(), Some("session-abc-123"));
        assert_eq!(e.cloud_account.as_deref(), Some("tenant-123"));
        assert_eq!(e.resource.as_deref(), Some("Microsoft Graph"));
        // No status block: the envelope's `resultType: "Success"` decides.
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.status_code, None);
        assert_eq!(e.src_country, None);
        assert_eq!(e.issued_token_id, None);
        assert_eq!(e.dst_host, None);

        // Line 7: a locked-out account; no appId, no sessionId.
        let e = one(&records[6]);
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(e.status_code.as_deref(), Some("50053"));
        assert_eq!(
            refs(&e),
            [
                (PrincipalKind::User, "boromir@lotr.com"),
                (PrincipalKind::SourceIp, "4.4.4.4"),
            ]
        );
        assert_eq!(e.src_country.as_deref(), Some("RU"));
        assert_eq!(e.session_id.as_deref(), Some("lockout-attack-001"));

        // Line 25: legacy-auth sign-in with lower-cased envelope keys; the
        // sign-in IP (12.12.12.12) wins over the caller IP (1.2.3.4).
        let e = one(&records[24]);
        assert_eq!(e.category, Category::Authentication);
        assert_eq!(e.src_ip.as_deref(), Some("12.12.12.12"));
        assert_eq!(e.src_region.as_deref(), Some("Virginia"));
        assert_eq!(
            e.cloud_account.as_deref(),
            Some("c5fd010a-2972-4be2-9c67-986ceca2a042")
        );
        assert_eq!(
            e.vendor_event_id.as_deref(),
            Some("d9ae0e20-c959-42a3-ba74-00f59ac9f6c6")
        );
        assert_eq!(e.outcome, Outcome::Success);
        // A user sign-in does not report the token as issued.
        assert_eq!(e.issued_token_id, None);
    }

    #[test]
    fn service_principal_sign_in_fields() {
        let records = samples(SIGN_INS);
        // Line 1: client-credentials sign-in, lower-cased envelope keys.
        let e = one(&records[0]);
        assert_eq!(e.actor.actor_type, ActorType::Service);
        assert_eq!(e.category, Category::TokenIssuance);
        assert_eq!(e.class_uid, 3002);
        assert_eq!(e.activity, "ServicePrincipalSignInLogs");
        // Top-level `time`, not `properties.createdDateTime` (13:59:53).
        assert_eq!(e.time.to_rfc3339(), "2023-07-27T14:00:41.848+00:00");
        assert_eq!(
            refs(&e),
            [
                (
                    PrincipalKind::OauthClient,
                    "3b245ca3-dcce-4a54-a070-49ad8de02963"
                ),
                (
                    PrincipalKind::OauthClient,
                    "4b6986ec-c49c-40c0-89ce-b2ac51213e39"
                ),
                (PrincipalKind::User, "very-normal-service-principal"),
                (PrincipalKind::SourceIp, "12.12.12.12"),
            ]
        );
        assert_eq!(e.actor.raw, "3b245ca3-dcce-4a54-a070-49ad8de02963");
        assert_eq!(e.issued_token_id.as_deref(), Some("CXXXXXXXXXXXXXXXXXXXXX"));
        assert_eq!(e.src_country.as_deref(), Some("US"));
        assert_eq!(e.src_region.as_deref(), Some("Oregon"));
        assert_eq!(
            e.cloud_account.as_deref(),
            Some("85e54ec3-85ee-4b03-9e3b-863075eb9b62")
        );
        assert_eq!(
            e.session_id.as_deref(),
            Some("bf12205b-eea0-43dd-ad6d-b9030dc62a7a")
        );
        assert_eq!(
            e.vendor_event_id.as_deref(),
            Some("55270060-d8fe-435e-9bf2-219a1d456b60")
        );
        assert_eq!(e.resource.as_deref(), Some("Office 365 Management APIs"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.status_code.as_deref(), Some("0"));

        // Line 14: a bad client secret (AADSTS7000215), resultType written as a number.
        let e = one(&records[13]);
        assert_eq!(e.category, Category::TokenIssuance);
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(e.status_code.as_deref(), Some("7000215"));
        assert_eq!(
            e.actor.refs[2],
            PrincipalRef::new(PrincipalKind::User, "some-service-principal")
        );
    }

    #[test]
    fn documented_service_principal_sign_in() {
        let records = samples(DOCUMENTED_SP);
        assert_eq!(records.len(), 1);
        let e = one(&records[0]);
        assert_eq!(e.category, Category::TokenIssuance);
        assert_eq!(e.activity, "ServicePrincipalSignInLogs");
        assert_eq!(e.time.to_rfc3339(), "2026-03-04T09:15:27.441+00:00");
        assert_eq!(
            refs(&e),
            [
                (
                    PrincipalKind::OauthClient,
                    "c7e2a4f1-5d3b-48e9-9f06-1a2b3c4d5e6f"
                ),
                (
                    PrincipalKind::OauthClient,
                    "f0d9c8b7-a6e5-4d3c-2b1a-0f9e8d7c6b5a"
                ),
                (PrincipalKind::User, "billing-export-worker"),
                (PrincipalKind::SourceIp, "203.0.113.24"),
            ]
        );
        assert_eq!(e.issued_token_id.as_deref(), Some("q2Vx8mTnR0aZk1bW3cYdEA"));
        assert_eq!(e.src_country.as_deref(), Some("NL"));
        assert_eq!(e.src_region.as_deref(), Some("Noord-Holland"));
        assert_eq!(
            e.cloud_account.as_deref(),
            Some("5b1f7c52-0d4e-4a8e-9c1e-2f3a4b5c6d7e")
        );
        assert_eq!(
            e.session_id.as_deref(),
            Some("e1b6a0d3-7c2f-4f19-a8d4-3b9e5c7f1a22")
        );
        assert_eq!(e.resource.as_deref(), Some("Microsoft Graph"));
        assert_eq!(e.outcome, Outcome::Success);

        // The same sign-in as a Graph `signIn` resource: the properties alone.
        let record: Value = serde_json::from_slice(&records[0]).unwrap();
        let mut graph = record["properties"].clone();
        graph["signInEventTypes"] = serde_json::json!(["servicePrincipal"]);
        let g = one(&serde_json::to_vec(&graph).unwrap());
        assert_eq!(g.activity, "signIn");
        assert_eq!(g.category, Category::TokenIssuance);
        assert_eq!(g.time.to_rfc3339(), "2026-03-04T09:14:58.123+00:00");
        assert_eq!(g.actor.refs, e.actor.refs);
        assert_eq!(g.issued_token_id, e.issued_token_id);
        assert_eq!(
            g.cloud_account.as_deref(),
            Some("5b1f7c52-0d4e-4a8e-9c1e-2f3a4b5c6d7e")
        );
    }

    #[test]
    fn graph_user_sign_in() {
        let line = br#"{"id":"66ea54eb-6301-4ee5-be62-ff5a759b8100","createdDateTime":"2026-01-20T07:45:12Z",
            "userPrincipalName":"adele@contoso.example","userId":"d7cc485d-2c1b-422c-98fd-5ce52859a4a3",
            "appId":"de8bc8b5-d9f9-48b1-a8ad-b748da725064","ipAddress":"2001:db8::7",
            "signInEventTypes":["interactiveUser"],"homeTenantId":"0b3f2c1d-9a8e-4f7d-8c6b-5a4e3d2c1b0a",
            "status":{"errorCode":50126,"failureReason":"Invalid username or password."},
            "location":{"city":"Oslo","state":"Oslo","countryOrRegion":"NO"}}"#;
        let e = one(line);
        assert_eq!(e.activity, "signIn");
        assert_eq!(e.category, Category::Authentication);
        assert_eq!(e.actor.raw, "adele@contoso.example");
        assert_eq!(e.src_ip.as_deref(), Some("2001:db8::7"));
        assert_eq!(
            e.cloud_account.as_deref(),
            Some("0b3f2c1d-9a8e-4f7d-8c6b-5a4e3d2c1b0a")
        );
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(e.status_code.as_deref(), Some("50126"));
        assert_eq!(e.src_country.as_deref(), Some("NO"));
    }

    #[test]
    fn other_azure_records_are_wrong_shape() {
        let records = samples(AUDIT_OTHER);
        assert_eq!(records.len(), 39);
        let opts = DecodeOptions::default();
        let mut routed_to_entra = 0;
        for (i, payload) in records.iter().enumerate() {
            let mut out = Vec::new();
            let err = decode(payload, &mut out).unwrap_err();
            assert_eq!(err.reason(), "wrong_shape", "line {}: {err}", i + 1);
            assert!(out.is_empty());

            // `auto` sends the Azure Monitor audit records (category + properties)
            // here, and they are refused; the rest never become Entra events.
            match crate::decode::decode(Format::Auto, payload, &opts, &mut out) {
                Err(DecodeError::WrongShape {
                    format: Format::Entra,
                    detail,
                }) => {
                    assert!(detail.contains("is not a sign-in log"), "{detail}");
                    routed_to_entra += 1;
                }
                Err(_) => {}
                Ok(()) => assert!(out.iter().all(|e| e.product != Product::Entra)),
            }
        }
        // Lines 19-39: AuditLogs, ApplicationManagement, DirectoryManagement, Policy.
        assert_eq!(routed_to_entra, 21);
        let audit = one_err(&records[18]);
        assert!(
            audit
                .to_string()
                .contains("category `AuditLogs` is not a sign-in log")
        );
    }

    fn one_err(payload: &[u8]) -> DecodeError {
        let mut out = Vec::new();
        decode(payload, &mut out).unwrap_err()
    }

    #[test]
    fn auto_recognises_entra_samples() {
        let opts = DecodeOptions::default();
        let mut all = samples(SIGN_INS);
        all.extend(samples(DOCUMENTED_SP));
        for (i, payload) in all.iter().enumerate() {
            let mut out = Vec::new();
            crate::decode::decode(Format::Auto, payload, &opts, &mut out)
                .unwrap_or_else(|e| panic!("record {}: {e}", i + 1));
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].product, Product::Entra);
        }
        assert_eq!(all.len(), 27);
    }

    #[test]
    fn malformed_records_say_why() {
        let cases: [(&[u8], &str); 12] = [
            (br#"{"category":"SignInLogs","time":"2025-01-"#, "bad_json"),
            (br#"{"category":"SignInLogs","time":5}"#, "wrong_shape"),
            (br#"{"category":"SignInLogs","time":"2025-01-01T00:00:00Z","properties":"x"}"#, "wrong_shape"),
            (
                br#"{"category":"SignInLogs","time":"2025-01-01T00:00:00Z","properties":{"status":{"errorCode":[0]}}}"#,
                "wrong_shape",
            ),
            (br#"{"category":"SignInLogs","resultType":{"a":1}}"#, "wrong_shape"),
            (br#"{"category":"SignInLogs","properties":{"userPrincipalName":"a@b.c"}}"#, "bad_time"),
            (br#"{"category":"SignInLogs","time":"soon","properties":{}}"#, "bad_time"),
            (br#"{"operationName":"Delete user","properties":{}}"#, "wrong_shape"),
            (br#"{"createdDateTime":"2025-01-01T00:00:00Z","userPrincipalName":7}"#, "wrong_shape"),
            (br#"{"userPrincipalName":"a@b.c","ipAddress":"192.0.2.1"}"#, "bad_time"),
            (br#"{"hello":"world"}"#, "wrong_shape"),
            (br#"[1]"#, "wrong_shape"),
        ];
        testing::assert_reasons(decode, &cases);
    }

    #[test]
    fn deep_and_huge_values_do_not_panic() {
        let deep = format!(
            r#"{{"category":"SignInLogs","time":"2025-01-01T00:00:00Z","properties":{{"x":{}1{}}}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        // serde_json skips unknown values without recursing: the event still decodes.
        assert_eq!(one(deep.as_bytes()).activity, "SignInLogs");
        // In a field that is read, depth is bounded by serde_json's recursion limit.
        let deep_known = format!(
            r#"{{"category":"SignInLogs","time":"2025-01-01T00:00:00Z","properties":{{"location":{}{}}}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let mut out = Vec::new();
        assert_eq!(
            decode(deep_known.as_bytes(), &mut out)
                .unwrap_err()
                .reason(),
            "wrong_shape"
        );
        assert!(out.is_empty());

        let huge = "\u{1F600}".repeat(1 << 18);
        let line = format!(
            r#"{{"category":"{huge}SignInLogs","time":"2025-01-01T00:00:00Z","properties":{{"userPrincipalName":"{huge}\t","appId":"{huge}"}}}}"#
        );
        let e = one(line.as_bytes());
        assert_eq!(e.category, Category::Authentication);
        assert_eq!(e.actor.raw.len(), huge.len());

        let refused = format!(r#"{{"category":"{huge}","properties":{{}}}}"#);
        let err = one_err(refused.as_bytes());
        assert!(err.to_string().len() < 200);
    }
}
