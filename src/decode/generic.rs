//! Generic JSON: AppWarden's documented form, or any JSON record through a per-topic field mapping.
//!
//! The documented form uses the normalized field names at the top level:
//!
//! ```json
//! {"time": "2026-11-22T13:00:00Z", "category": "secret_read", "principal": "svc-reports",
//!  "principal_kind": "gateway_consumer", "activity": "read", "resource": "prod/db",
//!  "src_ip": "10.1.2.3", "outcome": "success"}
//! ```
//!
//! A [`FieldMapping`] points each normalized field at a JSON pointer in the
//! user's own records instead (`time = "/ts"`, `principal = "/user/id"`), and
//! can fix the category or principal kind for a whole topic.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{DecodeError, Format, epoch_time, epoch_time_int, parse_time};
use crate::event::{Category, NormalizedEvent, Outcome, PrincipalKind, Product, SourceKind};

const FORMAT: Format = Format::Generic;

/// Where each normalized field is found in a topic's records: JSON pointers
/// (RFC 6901, e.g. `/actor/id`). A field left out is read from its documented
/// generic name (`/time`, `/principal`, …).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// Event time: an RFC 3339 string, or epoch seconds or milliseconds. Default `/time`.
    pub time: Option<String>,
    /// Category name (`authentication`, `token_issuance`, `api_call`, `secret_read`,
    /// `secret_list`, `identity_admin`, `egress_request`). Default `/category`.
    pub category: Option<String>,
    /// A fixed category for every record of the topic (overrides `category`).
    pub category_value: Option<Category>,
    /// The actor. Default `/principal`.
    pub principal: Option<String>,
    /// The actor's kind (see the registry's identity forms). Default `/principal_kind`,
    /// and `user` when the record has none.
    pub principal_kind: Option<String>,
    /// A fixed principal kind for every record of the topic (overrides `principal_kind`).
    pub principal_kind_value: Option<PrincipalKind>,
    /// A fixed log family (`sso`, `gateway`, `secrets`); default from `/source_kind`, else `gateway`.
    pub source_kind_value: Option<SourceKind>,
    /// The vendor's name of the action. Default `/activity`.
    pub activity: Option<String>,
    /// Default `/src_ip`.
    pub src_ip: Option<String>,
    /// Default `/src_country`.
    pub src_country: Option<String>,
    /// Default `/cloud_region`.
    pub cloud_region: Option<String>,
    /// Default `/cloud_account`.
    pub cloud_account: Option<String>,
    /// Destination host or URL. Default `/dst_host`.
    pub dst_host: Option<String>,
    /// Default `/resource`.
    pub resource: Option<String>,
    /// `success`/`failure`, a boolean, or an HTTP status (< 400 is success). Default `/outcome`.
    pub outcome: Option<String>,
    /// Default `/status_code`.
    pub status_code: Option<String>,
    /// Default `/token_id`.
    pub token_id: Option<String>,
    /// Default `/issued_token_id`.
    pub issued_token_id: Option<String>,
    /// Default `/session_id`.
    pub session_id: Option<String>,
    /// Default `/bytes_in`.
    pub bytes_in: Option<String>,
    /// Default `/bytes_out`.
    pub bytes_out: Option<String>,
    /// The record's own id. Default `/id`.
    pub id: Option<String>,
}

impl FieldMapping {
    /// Checks that every pointer is a JSON pointer; names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let pointers = [
            ("time", &self.time),
            ("category", &self.category),
            ("principal", &self.principal),
            ("principal_kind", &self.principal_kind),
            ("activity", &self.activity),
            ("src_ip", &self.src_ip),
            ("src_country", &self.src_country),
            ("cloud_region", &self.cloud_region),
            ("cloud_account", &self.cloud_account),
            ("dst_host", &self.dst_host),
            ("resource", &self.resource),
            ("outcome", &self.outcome),
            ("status_code", &self.status_code),
            ("token_id", &self.token_id),
            ("issued_token_id", &self.issued_token_id),
            ("session_id", &self.session_id),
            ("bytes_in", &self.bytes_in),
            ("bytes_out", &self.bytes_out),
            ("id", &self.id),
        ];
        for (field, pointer) in pointers {
            if let Some(p) = pointer
                && !p.is_empty()
                && !p.starts_with('/')
            {
                return Err(format!(
                    "{field} = \"{p}\" is not a JSON pointer (it must start with `/`, e.g. \"/{p}\")"
                ));
            }
        }
        Ok(())
    }
}

/// Looks a field up by its mapped pointer, or by its generic name.
fn field<'v>(record: &'v Value, mapped: &Option<String>, default: &str) -> Option<&'v Value> {
    let value = match mapped {
        Some(pointer) => record.pointer(pointer),
        None => record.get(default),
    }?;
    (!value.is_null()).then_some(value)
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn number(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn outcome(value: Option<&Value>) -> Outcome {
    match value {
        Some(Value::Bool(true)) => Outcome::Success,
        Some(Value::Bool(false)) => Outcome::Failure,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(code) if code < 400 => Outcome::Success,
            Some(_) => Outcome::Failure,
            None => Outcome::Unknown,
        },
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "success" | "succeeded" | "ok" | "allow" | "allowed" => Outcome::Success,
            "failure" | "failed" | "fail" | "error" | "deny" | "denied" => Outcome::Failure,
            _ => Outcome::Unknown,
        },
        _ => Outcome::Unknown,
    }
}

fn principal_kind(name: &str) -> Option<PrincipalKind> {
    let kinds = [
        PrincipalKind::OauthClient,
        PrincipalKind::User,
        PrincipalKind::RoleArn,
        PrincipalKind::AccessKey,
        PrincipalKind::VaultRole,
        PrincipalKind::VaultEntity,
        PrincipalKind::VaultDisplayName,
        PrincipalKind::VaultAccessor,
        PrincipalKind::GatewayConsumer,
        PrincipalKind::SourceIp,
    ];
    kinds.into_iter().find(|k| k.as_str() == name)
}

/// Decodes one generic JSON record.
pub fn decode(
    payload: &[u8],
    mapping: Option<&FieldMapping>,
    out: &mut Vec<NormalizedEvent>,
) -> Result<(), DecodeError> {
    let default_mapping = FieldMapping::default();
    let m = mapping.unwrap_or(&default_mapping);
    let record: Value =
        serde_json::from_slice(payload).map_err(|e| DecodeError::from_json(FORMAT, e))?;
    if !record.is_object() {
        return Err(DecodeError::shape(FORMAT, "expected a JSON object"));
    }

    let time = match field(&record, &m.time, "time") {
        Some(Value::String(s)) => parse_time(FORMAT, s)?,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(whole) => epoch_time_int(FORMAT, whole)?,
            None => epoch_time(FORMAT, n.as_f64().unwrap_or(f64::NAN))?,
        },
        Some(_) => {
            return Err(DecodeError::BadTime {
                format: FORMAT,
                detail: "time is neither a string nor a number".into(),
            });
        }
        None => {
            return Err(DecodeError::BadTime {
                format: FORMAT,
                detail: "no time field".into(),
            });
        }
    };

    let category = match m.category_value {
        Some(c) => c,
        None => {
            let name = text(field(&record, &m.category, "category"))
                .ok_or_else(|| DecodeError::shape(FORMAT, "no category field"))?;
            Category::parse(&name).ok_or_else(|| {
                DecodeError::shape(
                    FORMAT,
                    format!("unknown category `{}`", super::truncate(&name, 40)),
                )
            })?
        }
    };

    let principal = text(field(&record, &m.principal, "principal"))
        .ok_or_else(|| DecodeError::shape(FORMAT, "no principal field"))?;
    let kind = match m.principal_kind_value {
        Some(k) => k,
        None => match text(field(&record, &m.principal_kind, "principal_kind")) {
            Some(name) => principal_kind(&name).ok_or_else(|| {
                DecodeError::shape(
                    FORMAT,
                    format!("unknown principal_kind `{}`", super::truncate(&name, 40)),
                )
            })?,
            None => PrincipalKind::User,
        },
    };

    let activity = text(field(&record, &m.activity, "activity"))
        .unwrap_or_else(|| category.as_str().to_string());
    let mut event = NormalizedEvent::new(time, Product::Generic, category, activity);
    event.source_kind = match m.source_kind_value {
        Some(k) => k,
        None => match text(record.get("source_kind")).as_deref() {
            Some("sso") => SourceKind::Sso,
            Some("secrets") => SourceKind::Secrets,
            _ => SourceKind::Gateway,
        },
    };
    event.actor.push(kind, &principal);
    event.src_ip = text(field(&record, &m.src_ip, "src_ip"));
    if let Some(ip) = &event.src_ip {
        event.actor.push(PrincipalKind::SourceIp, &ip.clone());
    }
    event.src_country = text(field(&record, &m.src_country, "src_country"));
    event.cloud_region = text(field(&record, &m.cloud_region, "cloud_region"));
    event.cloud_account = text(field(&record, &m.cloud_account, "cloud_account"));
    if let Some(dst) = text(field(&record, &m.dst_host, "dst_host")) {
        let (host, port) = if dst.contains("://") {
            crate::event::url_host_port(&dst).unwrap_or((dst.to_ascii_lowercase(), None))
        } else {
            crate::event::split_host_port(&dst)
        };
        event.dst_host = Some(host);
        event.dst_port = port;
    }
    event.resource = text(field(&record, &m.resource, "resource"));
    let outcome_value = field(&record, &m.outcome, "outcome");
    event.outcome = outcome(outcome_value);
    event.status_code = text(field(&record, &m.status_code, "status_code"));
    event.token_id = text(field(&record, &m.token_id, "token_id"));
    event.issued_token_id = text(field(&record, &m.issued_token_id, "issued_token_id"));
    event.session_id = text(field(&record, &m.session_id, "session_id"));
    event.bytes_in = number(field(&record, &m.bytes_in, "bytes_in"));
    event.bytes_out = number(field(&record, &m.bytes_out, "bytes_out"));
    event.vendor_event_id = text(field(&record, &m.id, "id"));
    out.push(event);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_form() {
        let line = br#"{"time":"2026-11-22T13:00:00Z","category":"secret_read","principal":"svc-reports",
            "principal_kind":"gateway_consumer","activity":"read","resource":"prod/db","src_ip":"10.1.2.3",
            "outcome":"success","source_kind":"secrets","bytes_out":512,"dst_host":"https://Vault.internal:8200/v1"}"#;
        let mut out = Vec::new();
        decode(line, None, &mut out).unwrap();
        let e = &out[0];
        assert_eq!(e.category, Category::SecretRead);
        assert_eq!(e.class_uid, 6003);
        assert_eq!(e.source_kind, SourceKind::Secrets);
        assert_eq!(e.actor.raw, "svc-reports");
        assert_eq!(e.actor.refs[0].kind, PrincipalKind::GatewayConsumer);
        assert_eq!(e.resource.as_deref(), Some("prod/db"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.bytes_out, Some(512));
        assert_eq!(e.dst_host.as_deref(), Some("vault.internal"));
        assert_eq!(e.dst_port, Some(8200));
    }

    #[test]
    fn mapped_form_with_fixed_category() {
        let mapping = FieldMapping {
            time: Some("/ts".into()),
            principal: Some("/who/client".into()),
            category_value: Some(Category::ApiCall),
            principal_kind_value: Some(PrincipalKind::OauthClient),
            outcome: Some("/http/status".into()),
            ..FieldMapping::default()
        };
        mapping.validate().unwrap();
        let line = br#"{"ts":1763816400123,"who":{"client":"0oa-bot"},"http":{"status":503}}"#;
        let mut out = Vec::new();
        decode(line, Some(&mapping), &mut out).unwrap();
        let e = &out[0];
        assert_eq!(e.time.timestamp_millis(), 1_763_816_400_123);
        assert_eq!(e.actor.refs[0].kind, PrincipalKind::OauthClient);
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(e.activity, "api_call");
    }

    #[test]
    fn bad_records_say_why() {
        let mut out = Vec::new();
        let cases: [(&[u8], &str); 6] = [
            (br#"{"category":"api_call","principal":"x"}"#, "bad_time"),
            (
                br#"{"time":"soon","category":"api_call","principal":"x"}"#,
                "bad_time",
            ),
            (
                br#"{"time":"2026-01-01T00:00:00Z","category":"dance","principal":"x"}"#,
                "wrong_shape",
            ),
            (
                br#"{"time":"2026-01-01T00:00:00Z","category":"api_call"}"#,
                "wrong_shape",
            ),
            (br#"[1,2]"#, "wrong_shape"),
            (br#"{"time": "#, "bad_json"),
        ];
        for (input, reason) in cases {
            let err = decode(input, None, &mut out).unwrap_err();
            assert_eq!(err.reason(), reason, "{}", String::from_utf8_lossy(input));
        }
        assert!(out.is_empty());
        let bad = FieldMapping {
            time: Some("ts".into()),
            ..FieldMapping::default()
        };
        assert!(bad.validate().unwrap_err().contains("time = \"ts\""));
    }
}
