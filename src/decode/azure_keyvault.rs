//! Azure Key Vault and Managed HSM resource logs (category `AuditEvent`) into
//! secret-read, listing and API-call events.
//!
//! One record per line, or an Azure Monitor export `{"records": [...]}` (Event Hubs,
//! storage account), or a JSON array of records. The record
//! (learn.microsoft.com, "Azure Key Vault logging" and "Managed HSM logging"):
//! `{"time", "resourceId", "operationName", "operationVersion", "category": "AuditEvent",
//! "resultType", "resultSignature", "resultDescription", "durationMs", "callerIpAddress",
//! "correlationId", "identity": {"claim": {…}}, "properties": {"id", "requestUri",
//! "httpStatusCode", "clientInfo", …}}`. Managed HSM writes `identity` as a JSON
//! string, with claim names whose `.` and `/` became `_`, and `requestUri` at the
//! top level; both layouts are read.
//!
//! | event field | from |
//! |---|---|
//! | `time` | `time` |
//! | `activity` | `operationName` (`SecretGet`, `KeyList`, `VaultGet`, …) |
//! | `category` | `SecretGet`, `KeyGet`, `CertificateGet`, `*Backup`, `KeyRelease`: secret_read; `Secret*List*`, `Key*List*`, `Certificate*List*`: secret_list; `RoleAssignment{Create,Delete}`, `RoleDefinition{Create,Delete}`, `VaultAccessPolicy*`: identity_admin; `Authentication`: authentication; anything else (`VaultGet`, `SecretSet`, `KeySign`, …): api_call |
//! | `actor` | a user (`upn`, `unique_name` or `name` claim; or `idtyp` = `user`): the user name (person), then `appid` (OAuth client); otherwise an application or managed identity (service): `appid`, then the object id `oid` (both OAuth client, as Entra's application and service-principal ids); then `callerIpAddress` (source IP) |
//! | `src_ip` | `callerIpAddress` |
//! | `resource` | the object id without its version (`https://v.vault.azure.net/secrets/db-password`), from `properties.id`, else `requestUri` without the query; for vault-level operations the vault's URL |
//! | `status_code`, `outcome` | `properties.httpStatusCode` (below 400 success); else `resultSignature` (`OK`, `Forbidden`, or a number); else `resultType` (`Success`/`Failure`) |
//! | `cloud_account` | the `tid` claim, else `tenantId` |
//! | `token_id` | the `uti` claim (the token's id, as Entra's `uniqueTokenIdentifier`) |
//! | `session_id` | `correlationId` |
//!
//! The vault's own region (`location`) is not the caller's and is not used:
//! `callerIpAddress` locates the caller (`cidr_regions`, GeoIP).

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::fields::{Flex, opt_str, present};
use super::{DecodeError, Format, parse_time};
use crate::event::{ActorType, Category, NormalizedEvent, Outcome, PrincipalKind, Product};

const FORMAT: Format = Format::AzureKeyvault;

/// Whether the top-level keys of a record say Key Vault (for `auto`).
pub(crate) fn is_key_vault(
    category: Option<&str>,
    resource_id: Option<&str>,
    has_identity: bool,
) -> bool {
    let audit = category.is_some_and(|c| c.trim().eq_ignore_ascii_case("AuditEvent"));
    let vault_resource = resource_id.is_some_and(|id| {
        id.to_ascii_lowercase()
            .contains("/providers/microsoft.keyvault/")
    });
    audit && (vault_resource || (resource_id.is_none() && has_identity))
}

/// An export envelope: `{"records": [...]}`.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    records: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    time: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str", alias = "resourceid")]
    resource_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str", alias = "operationname")]
    operation_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    category: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str", alias = "resulttype")]
    result_type: Option<Cow<'a, str>>,
    #[serde(borrow, alias = "resultsignature")]
    result_signature: Option<Flex<'a>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        alias = "calleripaddress"
    )]
    caller_ip_address: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str", alias = "correlationid")]
    correlation_id: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        alias = "TenantId",
        alias = "tenantid"
    )]
    tenant_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str", alias = "requesturi")]
    request_uri: Option<Cow<'a, str>>,
    #[serde(borrow, alias = "httpstatuscode")]
    http_status_code: Option<Flex<'a>>,
    #[serde(borrow)]
    identity: Option<&'a RawValue>,
    #[serde(borrow, default)]
    properties: Option<Properties<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Properties<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    request_uri: Option<Cow<'a, str>>,
    #[serde(borrow)]
    http_status_code: Option<Flex<'a>>,
}

/// `identity`: `{"claim": {name: value}}`, as an object or a JSON string.
#[derive(Deserialize, Default)]
struct Identity {
    #[serde(default)]
    claim: HashMap<String, serde_json::Value>,
}

/// The token claims that name the caller, under whichever name the record uses.
#[derive(Default)]
struct Claims {
    app_id: Option<String>,
    object_id: Option<String>,
    user: Option<String>,
    tenant: Option<String>,
    token_type: Option<String>,
    token_id: Option<String>,
}

impl Claims {
    fn from_identity(identity: Option<&RawValue>) -> Result<Claims, DecodeError> {
        let Some(raw) = identity else {
            return Ok(Claims::default());
        };
        let parsed: Identity = match raw.get().trim_start().as_bytes().first() {
            // Managed HSM: the identity object serialized into a string.
            Some(b'"') => {
                let text: String =
                    serde_json::from_str(raw.get()).map_err(|e| DecodeError::shape(FORMAT, e))?;
                if text.trim().is_empty() {
                    Identity::default()
                } else {
                    serde_json::from_str(&text).map_err(|e| DecodeError::shape(FORMAT, e))?
                }
            }
            Some(b'n') => Identity::default(),
            _ => serde_json::from_str(raw.get()).map_err(|e| DecodeError::shape(FORMAT, e))?,
        };
        let mut claims = Claims::default();
        for (name, value) in parsed.claim {
            let Some(value) = value.as_str().map(str::trim).filter(|v| !v.is_empty()) else {
                continue;
            };
            let slot = match short_claim_name(&name).as_str() {
                "appid" | "azp" => &mut claims.app_id,
                "oid" | "objectidentifier" => &mut claims.object_id,
                "upn" | "unique_name" | "name" => &mut claims.user,
                "tid" | "tenantid" => &mut claims.tenant,
                "idtyp" => &mut claims.token_type,
                "uti" => &mut claims.token_id,
                _ => continue,
            };
            // `upn` wins over `unique_name` / `name`, whatever the key order.
            if slot.is_none() || short_claim_name(&name) == "upn" {
                *slot = Some(value.to_string());
            }
        }
        Ok(claims)
    }

    fn is_user(&self) -> bool {
        match self.token_type.as_deref() {
            Some(t) if t.eq_ignore_ascii_case("app") => false,
            Some(t) if t.eq_ignore_ascii_case("user") => true,
            _ => self.user.is_some(),
        }
    }
}

/// `http://schemas.microsoft.com/identity/claims/objectidentifier` and Managed HSM's
/// `http_schemas_microsoft_com_identity_claims_objectidentifier` → `objectidentifier`.
fn short_claim_name(name: &str) -> String {
    let name = name.trim();
    let short = if let Some(i) = name.rfind("/claims/") {
        &name[i + "/claims/".len()..]
    } else if let Some(i) = name.rfind("_claims_") {
        &name[i + "_claims_".len()..]
    } else {
        name
    };
    short.to_ascii_lowercase()
}

/// What an operation is, in detector terms (see the module table).
fn category(operation: &str) -> Category {
    let op = operation.trim().to_ascii_lowercase();
    let object = ["secret", "key", "certificate"]
        .iter()
        .any(|kind| op.starts_with(kind));
    match op.as_str() {
        "authentication" => Category::Authentication,
        "secretget" | "keyget" | "certificateget" | "secretbackup" | "keybackup"
        | "certificatebackup" | "keyrelease" => Category::SecretRead,
        _ if object && op.contains("list") => Category::SecretList,
        "roleassignmentcreate"
        | "roleassignmentdelete"
        | "roledefinitioncreate"
        | "roledefinitiondelete" => Category::IdentityAdmin,
        _ if op.starts_with("vaultaccesspolicy") => Category::IdentityAdmin,
        _ => Category::ApiCall,
    }
}

/// The object a request names, without query and without an object version:
/// `https://v.vault.azure.net/secrets/name/0123…` → `https://v.vault.azure.net/secrets/name`.
fn object_id(uri: &str) -> Option<String> {
    let uri = uri.split(['?', '#']).next()?.trim().trim_end_matches('/');
    if uri.is_empty() {
        return None;
    }
    let (scheme, rest) = uri.split_once("://").unwrap_or(("", uri));
    let mut parts: Vec<&str> = rest.split('/').collect();
    // host / collection / name / version
    if parts.len() == 4
        && matches!(
            parts[1].to_ascii_lowercase().as_str(),
            "secrets" | "keys" | "certificates" | "deletedsecrets" | "deletedkeys"
        )
    {
        parts.truncate(3);
    }
    let path = parts.join("/");
    Some(if scheme.is_empty() {
        path
    } else {
        format!("{scheme}://{path}")
    })
}

/// Decodes one Key Vault record, or every record of a `{"records":[...]}` export
/// or JSON array (all of them or none).
pub fn decode(payload: &[u8], out: &mut Vec<NormalizedEvent>) -> Result<(), DecodeError> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    let items: Vec<&RawValue> = match first {
        Some(b'[') => {
            serde_json::from_slice(payload).map_err(|e| DecodeError::from_json(FORMAT, e))?
        }
        _ => {
            let envelope: Envelope<'_> =
                serde_json::from_slice(payload).map_err(|e| DecodeError::from_json(FORMAT, e))?;
            match envelope.records {
                Some(items) => items,
                None => {
                    out.push(record(payload)?);
                    return Ok(());
                }
            }
        }
    };
    if items.is_empty() {
        return Err(DecodeError::shape(FORMAT, "the export holds no records"));
    }
    let start = out.len();
    for item in items {
        match record(item.get().as_bytes()) {
            Ok(event) => {
                let at = out.len();
                out.push(event);
                NormalizedEvent::keep_raw(&mut out[at..], item.get().as_bytes());
            }
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
    Ok(())
}

fn record(payload: &[u8]) -> Result<NormalizedEvent, DecodeError> {
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(DecodeError::shape(FORMAT, "a record is not a JSON object"));
    }
    let r: Record<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::from_json(FORMAT, e))?;
    if let Some(c) = present(&r.category)
        && !c.eq_ignore_ascii_case("AuditEvent")
    {
        return Err(DecodeError::shape(
            FORMAT,
            format!(
                "category `{}` is not a Key Vault AuditEvent",
                super::truncate(c, 64)
            ),
        ));
    }
    let operation = present(&r.operation_name)
        .ok_or_else(|| DecodeError::shape(FORMAT, "record has no operationName"))?;
    let time = match present(&r.time) {
        Some(t) => parse_time(FORMAT, t)?,
        None => {
            return Err(DecodeError::BadTime {
                format: FORMAT,
                detail: "no time".into(),
            });
        }
    };
    let claims = Claims::from_identity(r.identity)?;
    let properties = r.properties.unwrap_or_default();

    let mut e = NormalizedEvent::new(time, Product::AzureKeyvault, category(operation), operation);
    if claims.is_user() {
        e.actor.actor_type = ActorType::Person;
        if let Some(user) = &claims.user {
            e.actor.push(PrincipalKind::User, user);
        }
        if let Some(app) = &claims.app_id {
            e.actor.push(PrincipalKind::OauthClient, app);
        }
    } else {
        if let Some(app) = &claims.app_id {
            e.actor.push(PrincipalKind::OauthClient, app);
        }
        if let Some(oid) = &claims.object_id {
            e.actor.push(PrincipalKind::OauthClient, oid);
        }
        if !e.actor.is_empty() {
            e.actor.actor_type = ActorType::Service;
        }
    }
    if let Some(ip) = present(&r.caller_ip_address) {
        e.src_ip = Some(ip.to_string());
        e.actor.push(PrincipalKind::SourceIp, ip);
    }

    e.resource = present(&properties.id)
        .or(present(&properties.request_uri))
        .or(present(&r.request_uri))
        .and_then(object_id);
    e.cloud_account = claims
        .tenant
        .clone()
        .or_else(|| present(&r.tenant_id).map(str::to_string));
    e.token_id = claims.token_id;
    e.session_id = present(&r.correlation_id).map(str::to_string);

    let http = properties
        .http_status_code
        .as_ref()
        .or(r.http_status_code.as_ref())
        .and_then(Flex::as_u64);
    (e.outcome, e.status_code) = match (http, r.result_signature.as_ref()) {
        (Some(code), _) => (outcome_of(code), Some(code.to_string())),
        (None, Some(signature)) => signature_outcome(signature),
        (None, None) => (Outcome::Unknown, None),
    };
    if e.outcome == Outcome::Unknown
        && let Some(result) = present(&r.result_type)
    {
        e.outcome = if result.eq_ignore_ascii_case("success") {
            Outcome::Success
        } else if result.eq_ignore_ascii_case("failure") || result.eq_ignore_ascii_case("failed") {
            Outcome::Failure
        } else {
            Outcome::Unknown
        };
    }
    // The vault's resource id names the vault even when the request had no object id.
    if e.resource.is_none() {
        e.resource = present(&r.resource_id).map(str::to_string);
    }
    Ok(e)
}

fn outcome_of(code: u64) -> Outcome {
    if (100..400).contains(&code) {
        Outcome::Success
    } else {
        Outcome::Failure
    }
}

/// `resultSignature`: an HTTP status number or its reason phrase (`OK`, `Forbidden`).
fn signature_outcome(signature: &Flex<'_>) -> (Outcome, Option<String>) {
    if let Some(code) = signature.as_u64() {
        return (outcome_of(code), Some(code.to_string()));
    }
    let Flex::Text(text) = signature else {
        return (Outcome::Unknown, None);
    };
    let text = text.trim();
    if text.is_empty() {
        return (Outcome::Unknown, None);
    }
    let phrase = text.to_ascii_lowercase().replace([' ', '_'], "");
    let outcome = match phrase.as_str() {
        "ok" | "created" | "accepted" | "nocontent" | "success" => Outcome::Success,
        "unauthorized"
        | "forbidden"
        | "notfound"
        | "badrequest"
        | "conflict"
        | "toomanyrequests"
        | "internalservererror"
        | "serviceunavailable"
        | "failure" => Outcome::Failure,
        _ => Outcome::Unknown,
    };
    (outcome, Some(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testing::{self, Documented, refs};

    const FIXTURE: Documented = Documented {
        name: "azure_keyvault/documented.ndjson",
        decode,
    };
    const EXPORT: &str = "azure_keyvault/documented_export.json";

    #[test]
    fn every_documented_record_decodes() {
        let events = FIXTURE.events();
        assert!((8..=15).contains(&events.len()), "{} records", events.len());
        for (line, e) in &events {
            assert_eq!(e.product, Product::AzureKeyvault, "{line}");
            assert_eq!(e.class_uid, e.category.ocsf_class_uid());
            assert!(!e.actor.is_empty(), "{line}");
            assert!(e.src_ip.is_some(), "{line}");
            assert!(e.status_code.is_some(), "{line}");
            assert!(e.resource.is_some(), "{line}");
        }
    }

    #[test]
    fn auto_detects_every_documented_record() {
        FIXTURE.assert_auto_detects(Product::AzureKeyvault);
    }

    #[test]
    fn secret_get_by_a_service_principal() {
        let e = FIXTURE.event_for("\"operationName\":\"SecretGet\",\"operationVersion\":\"7.4\"");
        assert_eq!(e.category, Category::SecretRead);
        assert_eq!(e.class_uid, 6003);
        assert_eq!(e.activity, "SecretGet");
        assert_eq!(e.time.to_rfc3339(), "2026-03-02T09:15:27.269122600+00:00");
        assert_eq!(
            e.resource.as_deref(),
            Some("https://contoso-payments.vault.azure.net/secrets/stripe-api-key")
        );
        assert_eq!(e.actor.actor_type, ActorType::Service);
        assert_eq!(
            refs(&e),
            [
                (
                    PrincipalKind::OauthClient,
                    "7c3a1f52-5b1e-4f0e-9d5a-2b7e8c4d1a01"
                ),
                (
                    PrincipalKind::OauthClient,
                    "e8a9b2c4-1d3f-4a5b-8c7d-9e0f1a2b3c01"
                ),
                (PrincipalKind::SourceIp, "20.61.14.7"),
            ]
        );
        assert_eq!(e.src_ip.as_deref(), Some("20.61.14.7"));
        assert_eq!(e.status_code.as_deref(), Some("200"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(
            e.cloud_account.as_deref(),
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        );
        assert_eq!(
            e.session_id.as_deref(),
            Some("b3d6f7a2-0c1e-4d5f-9a8b-7c6d5e4f3a01")
        );
        assert_eq!(e.cloud_region, None);
    }

    #[test]
    fn listings_keys_and_certificates() {
        let list = FIXTURE.event_for("\"operationName\":\"SecretList\"");
        assert_eq!(list.category, Category::SecretList);
        assert_eq!(
            list.resource.as_deref(),
            Some("https://contoso-payments.vault.azure.net/secrets")
        );
        let key = FIXTURE.event_for("\"operationName\":\"KeyGet\"");
        assert_eq!(key.category, Category::SecretRead);
        assert_eq!(
            key.resource.as_deref(),
            Some("https://contoso-payments.vault.azure.net/keys/orders-signing")
        );
        let cert = FIXTURE.event_for("\"operationName\":\"CertificateGet\"");
        assert_eq!(cert.category, Category::SecretRead);
        let versions = FIXTURE.event_for("\"operationName\":\"KeyListVersions\"");
        assert_eq!(versions.category, Category::SecretList);
    }

    #[test]
    fn user_through_azure_cli_is_a_person() {
        let e = FIXTURE.event_for("\"operationName\":\"VaultGet\"");
        assert_eq!(e.category, Category::ApiCall);
        assert_eq!(e.actor.actor_type, ActorType::Person);
        assert_eq!(
            refs(&e)[..2],
            [
                (PrincipalKind::User, "dana.ops@contoso.example"),
                (
                    PrincipalKind::OauthClient,
                    "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
                ),
            ]
        );
        // The result signature is the reason phrase; durationMs is a string.
        assert_eq!(e.status_code.as_deref(), Some("200"));
        assert_eq!(
            e.resource.as_deref(),
            Some("https://contoso-payments.vault.azure.net")
        );
    }

    #[test]
    fn forbidden_read_is_a_failure() {
        let e = FIXTURE.event_for("\"httpStatusCode\":403");
        assert_eq!(e.category, Category::SecretRead);
        assert_eq!(e.status_code.as_deref(), Some("403"));
        assert_eq!(e.outcome, Outcome::Failure);
    }

    #[test]
    fn writes_and_policy_changes() {
        let set = FIXTURE.event_for("\"operationName\":\"SecretSet\"");
        assert_eq!(set.category, Category::ApiCall);
        let policy = FIXTURE.event_for("VaultAccessPolicyChangedEventGridNotification");
        assert_eq!(policy.category, Category::IdentityAdmin);
    }

    #[test]
    fn managed_hsm_string_identity_and_top_level_uri() {
        let e = FIXTURE.event_for("MANAGEDHSMS");
        assert_eq!(e.category, Category::SecretRead);
        assert_eq!(e.activity, "KeyGet");
        assert_eq!(
            refs(&e)[..2],
            [
                (
                    PrincipalKind::OauthClient,
                    "7c3a1f52-5b1e-4f0e-9d5a-2b7e8c4d1a02"
                ),
                (
                    PrincipalKind::OauthClient,
                    "e8a9b2c4-1d3f-4a5b-8c7d-9e0f1a2b3c02"
                ),
            ]
        );
        assert_eq!(
            e.resource.as_deref(),
            Some("https://contoso-hsm.managedhsm.azure.net/keys/tde-root")
        );
        // No httpStatusCode: the result signature decides.
        assert_eq!(e.status_code.as_deref(), Some("OK"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.token_id.as_deref(), Some("hsmTokenId001"));
    }

    #[test]
    fn export_envelope_decodes_every_record() {
        let payload = std::fs::read(testing::fixture(EXPORT)).unwrap();
        let mut out = Vec::new();
        decode(&payload, &mut out).unwrap();
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|e| e.raw_data.is_some()));
        let mut auto = Vec::new();
        crate::decode::decode(
            Format::Auto,
            &payload,
            &crate::decode::DecodeOptions::default(),
            &mut auto,
        )
        .unwrap();
        assert_eq!(auto.len(), 3);
        assert!(auto.iter().all(|e| e.product == Product::AzureKeyvault));
        // A JSON array of records, as in Microsoft's Managed HSM sample.
        let array = br#"[{"time":"2026-03-02T09:15:27Z","category":"AuditEvent","operationName":"KeyList","resultSignature":"OK","callerIpAddress":"20.61.14.7"}]"#;
        let mut out = Vec::new();
        decode(array, &mut out).unwrap();
        assert_eq!(out[0].category, Category::SecretList);
    }

    #[test]
    fn object_ids_lose_their_version_and_query() {
        assert_eq!(
            object_id("https://v.vault.azure.net/secrets/a/0123abcd?api-version=7.4").as_deref(),
            Some("https://v.vault.azure.net/secrets/a")
        );
        assert_eq!(
            object_id("https://v.vault.azure.net/secrets/a/").as_deref(),
            Some("https://v.vault.azure.net/secrets/a")
        );
        assert_eq!(
            object_id("https://v.vault.azure.net/").as_deref(),
            Some("https://v.vault.azure.net")
        );
        assert_eq!(object_id("?x=1"), None);
    }

    #[test]
    fn malformed_records_say_why() {
        testing::assert_reasons(
            decode,
            &[
                (&br#"{"time":"2026-03-02T09:15:27Z","category":"AuditEvent""#[..], "bad_json"),
                (
                    &br#"{"category":"AuditEvent","operationName":"SecretGet"}"#[..],
                    "bad_time",
                ),
                (
                    &br#"{"time":"soon","category":"AuditEvent","operationName":"SecretGet"}"#[..],
                    "bad_time",
                ),
                (
                    &br#"{"time":"2026-03-02T09:15:27Z","category":"AuditEvent"}"#[..],
                    "wrong_shape",
                ),
                (
                    &br#"{"time":"2026-03-02T09:15:27Z","category":"SignInLogs","operationName":"SecretGet"}"#[..],
                    "wrong_shape",
                ),
                (
                    &br#"{"time":"2026-03-02T09:15:27Z","operationName":"SecretGet","identity":{"claim":5}}"#[..],
                    "wrong_shape",
                ),
                (
                    &br#"{"time":"2026-03-02T09:15:27Z","operationName":"SecretGet","identity":"{not json"}"#[..],
                    "wrong_shape",
                ),
                (&br#"{"records":[]}"#[..], "wrong_shape"),
                (
                    &br#"{"records":[{"time":"2026-03-02T09:15:27Z","operationName":"SecretGet"},5]}"#[..],
                    "wrong_shape",
                ),
                (&b"[1,"[..], "bad_json"),
                (&b"SecretGet"[..], "bad_json"),
            ],
        );
    }
}
