//! HashiCorp Vault file audit device: one JSON line per request or response, into events.
//!
//! Vault audits every operation twice: a `"type":"request"` line, then a
//! `"type":"response"` line with the same `request.id` that also carries the outcome
//! (`error`) and any token issued (`response.auth`). Only response lines become events;
//! a request line is checked for shape and decodes successfully into **zero** events,
//! so it is neither dead-lettered nor counted twice.
//!
//! Mapping of a response line:
//!
//! | event field | Vault |
//! |---|---|
//! | `time` | `time` |
//! | `vendor_event_id` | `request.id` |
//! | `src_ip` | `request.remote_address` |
//! | `activity` | `request.operation` + " " + `request.path` |
//! | `resource` | `request.path` |
//! | `outcome` | `Failure` when `error` is a non-empty string (`status_code` = its first 200 bytes) or `response.data` is only an `error`; else `Success` |
//! | `token_id` | `auth.accessor`, else `request.client_token_accessor` |
//! | `actor` | from `auth`: `metadata.role_name` (Vault role), `metadata.username` (user), `entity_id` (Vault entity), `display_name`, `accessor`; then the source IP |
//!
//! Categories: a response carrying `response.auth` (a login at `auth/*/login*`, or
//! `auth/token/create*`) → token issuance, `issued_token_id` = `response.auth.accessor`,
//! actor from `response.auth` (the identity that received the token); a login path
//! without `response.auth` (a refused login) → authentication; `read` of a secret
//! (`mount_type` kv, a path with `/data/`, under `secret/`, or `*/creds/*`) → secret
//! read; `list` → secret list; `create`/`update`/`delete` of auth roles and users,
//! `identity/*`, policies or auth mounts → identity admin (`target_principal` = the
//! role, user or policy named); everything else → API call.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::fields::opt_str;
use super::{DecodeError, Format, parse_time, truncate};
use crate::event::{ActorType, Category, NormalizedEvent, Outcome, PrincipalKind, Product};

const FORMAT: Format = Format::Vault;

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    time: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str", rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    auth: Option<Auth<'a>>,
    #[serde(borrow)]
    request: Option<Request<'a>>,
    #[serde(borrow)]
    response: Option<Response<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    error: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Auth<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    accessor: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    display_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    entity_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    metadata: Option<Metadata<'a>>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    role_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    username: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    operation: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    path: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    remote_address: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    client_token_accessor: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    mount_type: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow)]
    auth: Option<Auth<'a>>,
    /// Kept raw: its fields are whatever the backend returned.
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// `response.data` of a backend's error response (`logical.ErrorResponse`): only an
/// `error` key. Data with other keys is a real answer (a KV v1 secret may well hold a
/// key named `error`), so it does not parse as this.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DataError<'a> {
    #[serde(borrow)]
    error: Cow<'a, str>,
}

/// A non-empty, trimmed string.
fn text<'s>(value: &'s Option<Cow<'_, str>>) -> Option<&'s str> {
    value.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn owned(value: &Option<Cow<'_, str>>) -> Option<String> {
    text(value).map(str::to_string)
}

/// Decodes one audit line: a response line into one event, a request line into none.
pub fn decode(payload: &[u8], out: &mut Vec<NormalizedEvent>) -> Result<(), DecodeError> {
    let line: Line<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::from_json(FORMAT, e))?;
    match line.kind.as_deref() {
        // The response line of the same request carries everything, and the outcome.
        Some("request") => return Ok(()),
        Some("response") => {}
        Some(other) => {
            return Err(DecodeError::shape(
                FORMAT,
                format!("unknown audit line type `{}`", truncate(other, 40)),
            ));
        }
        None => return Err(DecodeError::shape(FORMAT, "no `type` field")),
    }
    let time_text = text(&line.time).ok_or_else(|| DecodeError::BadTime {
        format: FORMAT,
        detail: "no time".into(),
    })?;
    let time = parse_time(FORMAT, time_text)?;
    let request = line
        .request
        .as_ref()
        .ok_or_else(|| DecodeError::shape(FORMAT, "no `request` object"))?;
    let operation = text(&request.operation).unwrap_or("");
    let path = text(&request.path).unwrap_or("");
    let issued = line
        .response
        .as_ref()
        .and_then(|r| r.auth.as_ref())
        .filter(|a| text(&a.accessor).is_some() || text(&a.display_name).is_some());

    let category = match issued {
        Some(_) => Category::TokenIssuance,
        None => category(operation, path, text(&request.mount_type)),
    };
    let activity = match (operation, path) {
        ("", p) => p.to_string(),
        (op, "") => op.to_string(),
        (op, p) => format!("{op} {p}"),
    };
    let mut event = NormalizedEvent::new(time, Product::Vault, category, activity);
    event.vendor_event_id = owned(&request.id);
    event.src_ip = owned(&request.remote_address);
    event.resource = (!path.is_empty()).then(|| path.to_string());
    event.token_id = line
        .auth
        .as_ref()
        .and_then(|a| owned(&a.accessor))
        .or_else(|| owned(&request.client_token_accessor));

    match issued {
        Some(new_token) => {
            event.issued_token_id = owned(&new_token.accessor);
            push_actor(&mut event, new_token, false);
        }
        None => {
            if let Some(auth) = &line.auth {
                push_actor(&mut event, auth, true);
            }
        }
    }
    if let Some(ip) = event.src_ip.clone() {
        event.actor.push(PrincipalKind::SourceIp, &ip);
    }
    if category == Category::IdentityAdmin {
        event.target_principal = admin_target(path);
    }

    let data_error = || {
        let raw = line.response.as_ref()?.data?;
        let data: DataError<'_> = serde_json::from_str(raw.get()).ok()?;
        let error = data.error.trim();
        (!error.is_empty()).then(|| error.to_string())
    };
    if let Some(error) = text(&line.error) {
        event.outcome = Outcome::Failure;
        event.status_code = Some(truncate(error, 200).to_string());
    } else if let Some(error) = data_error() {
        event.outcome = Outcome::Failure;
        event.status_code = Some(truncate(&error, 200).to_string());
    } else {
        event.outcome = Outcome::Success;
    }
    out.push(event);
    Ok(())
}

/// Adds the forms of a token's identity, most specific first.
fn push_actor(event: &mut NormalizedEvent, auth: &Auth<'_>, with_accessor: bool) {
    let actor = &mut event.actor;
    if let Some(metadata) = &auth.metadata {
        // A role (AppRole, Kubernetes, JWT) is a workload; a user name comes from a
        // person's login method (userpass, LDAP, OIDC).
        if let Some(role) = text(&metadata.role_name) {
            actor.push(PrincipalKind::VaultRole, role);
            actor.actor_type = ActorType::Service;
        }
        if let Some(user) = text(&metadata.username) {
            actor.push(PrincipalKind::User, user);
            if actor.actor_type == ActorType::Unknown {
                actor.actor_type = ActorType::Person;
            }
        }
    }
    if let Some(entity) = text(&auth.entity_id) {
        actor.push(PrincipalKind::VaultEntity, entity);
    }
    if let Some(name) = text(&auth.display_name) {
        actor.push(PrincipalKind::VaultDisplayName, name);
    }
    if with_accessor && let Some(accessor) = text(&auth.accessor) {
        actor.push(PrincipalKind::VaultAccessor, accessor);
    }
}

/// The category of a line that issued no token.
fn category(operation: &str, path: &str, mount_type: Option<&str>) -> Category {
    let segments: Vec<&str> = path.split('/').collect();
    let auth_sub = |prefix: &str| {
        segments.first() == Some(&"auth") && segments.get(2).is_some_and(|s| s.starts_with(prefix))
    };
    if auth_sub("login") {
        return Category::Authentication;
    }
    match operation {
        "read" if is_secret_path(path, mount_type) => Category::SecretRead,
        "list" => Category::SecretList,
        "create" | "update" | "delete"
            if auth_sub("role")
                || auth_sub("users")
                || path.starts_with("identity/")
                || path.starts_with("sys/policy")
                || path.starts_with("sys/policies/")
                || path.starts_with("sys/auth") =>
        {
            Category::IdentityAdmin
        }
        _ => Category::ApiCall,
    }
}

/// Whether a path holds secret values (KV data, or dynamic credentials).
fn is_secret_path(path: &str, mount_type: Option<&str>) -> bool {
    matches!(mount_type, Some("kv" | "generic"))
        || path.contains("/data/")
        || path.starts_with("secret/")
        || path.contains("/creds/")
}

/// The identity an admin call names: the role or user after `role(s)`/`users` in
/// `auth/<mount>/role/<name>/…`, else the last path segment.
fn admin_target(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.first() == Some(&"auth")
        && segments
            .get(2)
            .is_some_and(|kind| matches!(*kind, "role" | "roles" | "users"))
        && let Some(name) = segments.get(3)
    {
        return Some((*name).to_string());
    }
    segments.last().map(|s| (*s).to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::decode::DecodeOptions;
    use crate::decode::testing::{self, refs};

    const SAMPLE: &str =
        "vault_audit/hashicorp-education_learn-vault-monitoring_vault-audit.ndjson";

    fn lines() -> Vec<String> {
        testing::lines(SAMPLE)
    }

    /// The first sample line of `kind` ("request"/"response") containing every needle.
    fn line(kind: &str, needles: &[&str]) -> String {
        let kind = format!("\"type\":\"{kind}\"");
        lines()
            .into_iter()
            .find(|l| l.contains(&kind) && needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no {kind} line with {needles:?}"))
    }

    fn one(line: &str) -> NormalizedEvent {
        testing::one(decode, line.as_bytes())
    }

    #[test]
    fn every_sample_line_decodes() {
        let mut categories: BTreeMap<&str, usize> = BTreeMap::new();
        let (mut requests, mut responses) = (0, 0);
        for l in lines() {
            let mut out = Vec::new();
            decode(l.as_bytes(), &mut out).unwrap_or_else(|e| panic!("{e}: {l}"));
            if l.contains("\"type\":\"request\"") {
                requests += 1;
                assert!(out.is_empty(), "a request line gives no event: {l}");
            } else {
                responses += 1;
                assert_eq!(out.len(), 1, "{l}");
                assert_eq!(out[0].product, Product::Vault);
                *categories.entry(out[0].category.as_str()).or_default() += 1;
            }
        }
        println!("{requests} requests, {responses} responses: {categories:?}");
        assert_eq!((requests, responses), (698, 699));
        let expected: BTreeMap<&str, usize> = [
            ("api_call", 356),
            ("authentication", 2),
            ("identity_admin", 15),
            ("secret_list", 92),
            ("secret_read", 3),
            ("token_issuance", 231),
        ]
        .into_iter()
        .collect();
        assert_eq!(categories, expected);
    }

    #[test]
    fn login_response_issues_a_token() {
        let e = one(&line("response", &["86093ffd-00ec-4910-01de-0e24bb603551"]));
        assert_eq!(e.actor.actor_type, ActorType::Service, "an AppRole login");
        assert_eq!(e.category, Category::TokenIssuance);
        assert_eq!(e.class_uid, 3002);
        assert_eq!(e.activity, "update auth/approle/login");
        assert_eq!(e.resource.as_deref(), Some("auth/approle/login"));
        assert_eq!(
            e.issued_token_id.as_deref(),
            Some("hmac-sha256:019e7479fb6641f0ae74327b5178bc54e2eb8a2fb11de637aa254ff3ddb2230e")
        );
        assert_eq!(
            e.vendor_event_id.as_deref(),
            Some("86093ffd-00ec-4910-01de-0e24bb603551")
        );
        assert_eq!(e.time.to_rfc3339(), "2020-04-30T14:27:11.839817600+00:00");
        assert_eq!(e.src_ip.as_deref(), Some("10.10.42.222"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.actor.raw, "my-role");
        assert_eq!(
            refs(&e),
            [
                (PrincipalKind::VaultRole, "my-role"),
                (
                    PrincipalKind::VaultEntity,
                    "c116f480-fef9-1013-791e-76dbfcbb031a"
                ),
                (PrincipalKind::VaultDisplayName, "approle"),
                (PrincipalKind::SourceIp, "10.10.42.222"),
            ]
        );
    }

    #[test]
    fn userpass_login_names_the_user() {
        let e = one(&line("response", &["auth/userpass/login/lab-user-4"]));
        assert_eq!(e.actor.actor_type, ActorType::Person, "a userpass login");
        assert_eq!(e.category, Category::TokenIssuance);
        assert_eq!(refs(&e)[0], (PrincipalKind::User, "lab-user-4"));
        assert_eq!(
            refs(&e)[2],
            (PrincipalKind::VaultDisplayName, "userpass-lab-user-4")
        );
    }

    #[test]
    fn kv_read_is_a_secret_read() {
        let e = one(&line(
            "response",
            &["\"operation\":\"read\"", "kv-v2/data/lab/lab-credential-1"],
        ));
        assert_eq!(e.category, Category::SecretRead);
        assert_eq!(e.class_uid, 6003);
        assert_eq!(e.activity, "read kv-v2/data/lab/lab-credential-1");
        assert_eq!(
            e.resource.as_deref(),
            Some("kv-v2/data/lab/lab-credential-1")
        );
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.issued_token_id, None);
        let accessor =
            "hmac-sha256:cac54677e904c7f45a574ddbe4d0f4cc4415d277df9c1366c68c91f58c85e4db";
        assert_eq!(e.token_id.as_deref(), Some(accessor));
        assert_eq!(
            refs(&e),
            [
                (PrincipalKind::User, "lab-user-7"),
                (
                    PrincipalKind::VaultEntity,
                    "e734283e-0038-1307-3345-a700dcbc1846"
                ),
                (PrincipalKind::VaultDisplayName, "userpass-lab-user-7"),
                (PrincipalKind::VaultAccessor, accessor),
                (PrincipalKind::SourceIp, "10.10.42.222"),
            ]
        );
    }

    #[test]
    fn list_is_a_secret_list() {
        let e = one(&line("response", &["5d486508-d41c-0235-1697-3c9bad3b0469"]));
        assert_eq!(e.category, Category::SecretList);
        assert_eq!(e.activity, "list kv-v2/metadata/");
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.actor.raw, "root");
    }

    #[test]
    fn user_creation_is_identity_admin() {
        let e = one(&line(
            "response",
            &["\"path\":\"auth/userpass/users/lab-user-1\""],
        ));
        assert_eq!(e.category, Category::IdentityAdmin);
        assert_eq!(e.target_principal.as_deref(), Some("lab-user-1"));
        let e = one(&line(
            "response",
            &["\"path\":\"auth/approle/role/my-role/secret-id\""],
        ));
        assert_eq!(e.category, Category::IdentityAdmin);
        assert_eq!(e.target_principal.as_deref(), Some("my-role"));
        let e = one(&line("response", &["\"path\":\"sys/policies/acl/admins\""]));
        assert_eq!(e.category, Category::IdentityAdmin);
        assert_eq!(e.target_principal.as_deref(), Some("admins"));
    }

    #[test]
    fn request_line_gives_no_event() {
        let request = line("request", &["86093ffd-00ec-4910-01de-0e24bb603551"]);
        let mut out = Vec::new();
        decode(request.as_bytes(), &mut out).unwrap();
        assert!(out.is_empty());
        // Also through the dispatcher, with `auto`.
        crate::decode::decode(
            Format::Auto,
            request.as_bytes(),
            &DecodeOptions::default(),
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn error_responses_are_failures() {
        let e = one(&line("response", &["0b7cee96-5ac0-29bd-5397-0e715f2347a3"]));
        assert_eq!(e.category, Category::ApiCall);
        assert_eq!(e.activity, "read sys/mounts");
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(
            e.status_code.as_deref(),
            Some("1 error occurred:\n\t* permission denied")
        );
        assert_eq!(e.token_id, None);
        assert_eq!(refs(&e), [(PrincipalKind::SourceIp, "10.10.42.222")]);

        // A refused AppRole login: no audit `error`, only `response.data.error`.
        let e = one(&line("response", &["34e3b22a-2719-93ca-88cd-ce65d6856516"]));
        assert_eq!(e.category, Category::Authentication);
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(e.issued_token_id, None);

        // The error text is cut at 200 bytes.
        let long = "x".repeat(300);
        let e = one(&format!(
            r#"{{"time":"2020-04-30T14:27:11Z","type":"response","request":{{"operation":"read","path":"secret/a"}},"error":"{long}"}}"#
        ));
        assert_eq!(e.category, Category::SecretRead);
        assert_eq!(e.status_code.map(|s| s.len()), Some(200));
    }

    #[test]
    fn secret_data_with_an_error_key_is_not_a_failure() {
        let e = one(
            r#"{"time":"2020-04-30T14:27:11Z","type":"response","request":{"operation":"read","path":"kv/app","mount_type":"kv"},
                "response":{"data":{"error":"hmac-sha256:ab","user":"hmac-sha256:cd"}}}"#,
        );
        assert_eq!(e.category, Category::SecretRead);
        assert_eq!(e.outcome, Outcome::Success);
        let creds = one(
            r#"{"time":"2020-04-30T14:27:11Z","type":"response","request":{"operation":"read","path":"database/creds/readonly"}}"#,
        );
        assert_eq!(creds.category, Category::SecretRead);
    }

    #[test]
    fn auto_recognises_every_sample_as_vault() {
        let options = DecodeOptions::default();
        let mut events = 0;
        for l in lines() {
            let mut out = Vec::new();
            crate::decode::decode(Format::Auto, l.as_bytes(), &options, &mut out)
                .unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(out.iter().all(|e| e.product == Product::Vault));
            events += out.len();
        }
        assert_eq!(events, 699);
    }

    #[test]
    fn malformed_lines_say_why() {
        let cases: [(&str, &str); 7] = [
            (r#"{"time":"2020-04-30T14:27:11Z","type":"resp"#, "bad_json"),
            (r#"{"type":"response","request":{"id":"a"}}"#, "bad_time"),
            (
                r#"{"time":"soon","type":"response","request":{}}"#,
                "bad_time",
            ),
            (
                r#"{"time":5,"type":"response","request":{}}"#,
                "wrong_shape",
            ),
            (
                r#"{"time":"2020-04-30T14:27:11Z","type":"response"}"#,
                "wrong_shape",
            ),
            (
                r#"{"time":"2020-04-30T14:27:11Z","type":"audit","request":{}}"#,
                "wrong_shape",
            ),
            (
                r#"{"time":"2020-04-30T14:27:11Z","type":"response","request":"x"}"#,
                "wrong_shape",
            ),
        ];
        testing::assert_reasons(decode, &cases);
    }
}
