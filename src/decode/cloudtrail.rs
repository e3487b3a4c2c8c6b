//! AWS CloudTrail: one record, or a `{"Records":[...]}` envelope, into one event per record.
//!
//! Mapping (one record → one [`NormalizedEvent`]):
//!
//! | event field | CloudTrail |
//! |---|---|
//! | `time` | `eventTime` (else a shipper's `@timestamp`, as Logstash writes it) |
//! | `activity` | `eventName` |
//! | `vendor_event_id` | `eventID` |
//! | `cloud_region` | `awsRegion`, as written (some samples carry scrambled regions) |
//! | `cloud_account` | `recipientAccountId`, else `userIdentity.accountId` |
//! | `src_ip` | `sourceIPAddress` when it is an IP address (services write `ec2.amazonaws.com`) |
//! | `outcome` | `Failure` when `errorCode` is present (`status_code` = `errorCode`), or for a sign-in whose `responseElements` says `"Failure"`; else `Success` |
//! | `token_id` | `userIdentity.accessKeyId` |
//! | `actor` | by `userIdentity.type`: AssumedRole/FederatedUser → session issuer ARN, session ARN, access key; IAMUser/Root → ARN, access key; AWSService → `invokedBy`; WebIdentityUser/SAMLUser → `userName`, `principalId`; then the source IP |
//!
//! Categories: Secrets Manager `GetSecretValue`/`BatchGetSecretValue` → secret read
//! (`resource`/`resources` = the secret ids, or the filters' text), `ListSecrets` →
//! secret list; STS `AssumeRole*`, `GetSessionToken`, `GetFederationToken` (and IAM
//! Identity Center `CreateToken`) → token issuance (`issued_token_id` = the new access
//! key, `target_principal` = `roleArn`); `signin.amazonaws.com` events (and Identity
//! Center `Authenticate`) → authentication; mutating calls of IAM, Identity Center and
//! Identity Store (`Create…`, `Delete…`, `Attach…`, `Put…`, `Update…`, …) → identity
//! admin (`target_principal` = the user, role or group named, else the calling IAM
//! user for its own credentials; `CreateAccessKey` also sets `issued_token_id`);
//! everything else → API call (`resource` = `bucketName[/key]` where given).
//!
//! `requestParameters` and `responseElements` differ per API, so they are kept raw and
//! only the fields an event needs are parsed from them; a field of the wrong type there
//! is treated as absent rather than failing the record. Key names that Panther lowercased
//! (`eventname`, `useridentity`, `accesskeyid`, …) are accepted as aliases.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::fields::opt_str;
use super::{DecodeError, Format, parse_time, truncate};
use crate::event::{ActorType, Category, NormalizedEvent, Outcome, PrincipalKind, Product};

const FORMAT: Format = Format::Cloudtrail;

/// One CloudTrail record, or the envelope CloudTrail writes to S3 (`Records`).
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow, rename = "Records")]
    records: Option<Vec<&'a RawValue>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "eventTime",
        alias = "eventtime"
    )]
    event_time: Option<Cow<'a, str>>,
    /// The time a Logstash/Elastic shipper stored when it renamed `eventTime`.
    #[serde(borrow, default, deserialize_with = "opt_str", rename = "@timestamp")]
    shipper_time: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "eventName",
        alias = "eventname"
    )]
    event_name: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "eventSource",
        alias = "eventsource"
    )]
    event_source: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "eventID",
        alias = "eventid"
    )]
    event_id: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "awsRegion",
        alias = "awsregion"
    )]
    aws_region: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "recipientAccountId",
        alias = "recipientaccountid"
    )]
    recipient_account_id: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "sourceIPAddress",
        alias = "sourceipaddress"
    )]
    source_ip_address: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "errorCode",
        alias = "errorcode"
    )]
    error_code: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "errorMessage",
        alias = "errormessage"
    )]
    error_message: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "userIdentity", alias = "useridentity")]
    user_identity: Option<UserIdentity<'a>>,
    #[serde(borrow, rename = "requestParameters", alias = "requestparameters")]
    request_parameters: Option<&'a RawValue>,
    #[serde(borrow, rename = "responseElements", alias = "responseelements")]
    response_elements: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct UserIdentity<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str", rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    arn: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "accountId",
        alias = "accountid"
    )]
    account_id: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "accessKeyId",
        alias = "accesskeyid"
    )]
    access_key_id: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "principalId",
        alias = "principalid"
    )]
    principal_id: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "userName",
        alias = "username"
    )]
    user_name: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "invokedBy",
        alias = "invokedby"
    )]
    invoked_by: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "sessionContext", alias = "sessioncontext")]
    session_context: Option<SessionContext<'a>>,
}

#[derive(Deserialize)]
struct SessionContext<'a> {
    #[serde(borrow, rename = "sessionIssuer", alias = "sessionissuer")]
    session_issuer: Option<SessionIssuer<'a>>,
}

#[derive(Deserialize)]
struct SessionIssuer<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    arn: Option<Cow<'a, str>>,
}

/// `requestParameters` of Secrets Manager calls.
#[derive(Deserialize)]
struct SecretParams<'a> {
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "secretId",
        alias = "secretid"
    )]
    secret_id: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "secretIdList", alias = "secretidlist")]
    secret_id_list: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    filters: Option<Vec<SecretFilter<'a>>>,
}

#[derive(Deserialize)]
struct SecretFilter<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    values: Option<Vec<Cow<'a, str>>>,
}

/// `requestParameters.roleArn` of STS calls.
#[derive(Deserialize)]
struct RoleParams<'a> {
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "roleArn",
        alias = "rolearn"
    )]
    role_arn: Option<Cow<'a, str>>,
}

/// `responseElements` of STS calls (and of IAM `CreateAccessKey`).
#[derive(Deserialize)]
struct IssuedKey<'a> {
    #[serde(borrow)]
    credentials: Option<KeyId<'a>>,
    #[serde(borrow, rename = "accessKey", alias = "accesskey")]
    access_key: Option<KeyId<'a>>,
}

#[derive(Deserialize)]
struct KeyId<'a> {
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "accessKeyId",
        alias = "accesskeyid"
    )]
    access_key_id: Option<Cow<'a, str>>,
}

/// The names an identity-admin call can give its target, most specific first.
#[derive(Deserialize)]
struct IdentityParams<'a> {
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "userName",
        alias = "username"
    )]
    user_name: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "roleName",
        alias = "rolename"
    )]
    role_name: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "groupName",
        alias = "groupname"
    )]
    group_name: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "userId",
        alias = "userid"
    )]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    name: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        rename = "sAMLProviderArn",
        alias = "samlProviderArn",
        alias = "samlproviderarn"
    )]
    saml_provider_arn: Option<Cow<'a, str>>,
}

/// `responseElements` of IAM create calls that name the identity only in the answer
/// (`CreateServiceLinkedRole`).
#[derive(Deserialize)]
struct CreatedIdentity<'a> {
    #[serde(borrow)]
    user: Option<IdentityParams<'a>>,
    #[serde(borrow)]
    role: Option<IdentityParams<'a>>,
}

/// `requestParameters` of S3 object and bucket calls.
#[derive(Deserialize)]
struct BucketParams<'a> {
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_str",
        rename = "bucketName",
        alias = "bucketname"
    )]
    bucket_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    key: Option<Cow<'a, str>>,
}

/// Parses the fields one event needs out of `requestParameters`/`responseElements`;
/// a value of another shape counts as absent.
fn parse_part<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<T> {
    serde_json::from_str(raw?.get()).ok()
}

/// A non-empty, trimmed string.
fn text<'s>(value: &'s Option<Cow<'_, str>>) -> Option<&'s str> {
    value.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn owned(value: &Option<Cow<'_, str>>) -> Option<String> {
    text(value).map(str::to_string)
}

/// Decodes one CloudTrail record, or every record of a `{"Records":[...]}` envelope.
///
/// An envelope fails whole if any of its records is bad (the caller drops the events
/// already pushed).
pub fn decode(payload: &[u8], out: &mut Vec<NormalizedEvent>) -> Result<(), DecodeError> {
    let record: Record<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::from_json(FORMAT, e))?;
    match &record.records {
        Some(items) => {
            for item in items {
                let inner: Record<'_> = serde_json::from_str(item.get())
                    .map_err(|e| DecodeError::from_json(FORMAT, e))?;
                if inner.records.is_some() {
                    return Err(DecodeError::shape(
                        FORMAT,
                        "a record inside `Records` is itself an envelope",
                    ));
                }
                let mut decoded = event(&inner)?;
                NormalizedEvent::keep_raw(
                    std::slice::from_mut(&mut decoded),
                    item.get().as_bytes(),
                );
                out.push(decoded);
            }
            Ok(())
        }
        None => {
            out.push(event(&record)?);
            Ok(())
        }
    }
}

/// What an event is, from its service and name.
fn category(source: &str, name: &str) -> Category {
    let sso = source.starts_with("sso") && source.ends_with(".amazonaws.com");
    match (source, name) {
        ("secretsmanager.amazonaws.com", "GetSecretValue" | "BatchGetSecretValue") => {
            Category::SecretRead
        }
        ("secretsmanager.amazonaws.com", "ListSecrets") => Category::SecretList,
        (
            "sts.amazonaws.com",
            "AssumeRole"
            | "AssumeRoleWithWebIdentity"
            | "AssumeRoleWithSAML"
            | "GetSessionToken"
            | "GetFederationToken",
        ) => Category::TokenIssuance,
        ("signin.amazonaws.com", _) => Category::Authentication,
        (_, "CreateToken") if sso => Category::TokenIssuance,
        (_, "Authenticate") if sso => Category::Authentication,
        ("iam.amazonaws.com" | "identitystore.amazonaws.com", _) if is_admin_verb(name) => {
            Category::IdentityAdmin
        }
        (_, _) if sso && is_admin_verb(name) => Category::IdentityAdmin,
        _ => Category::ApiCall,
    }
}

/// Whether an IAM / Identity Center call name changes something (`CreateUser`,
/// `AttachRolePolicy`, `DeleteLoginProfile`, `ChangePassword`, …) rather than reads it.
fn is_admin_verb(name: &str) -> bool {
    const VERBS: [&str; 14] = [
        "Create",
        "Delete",
        "Attach",
        "Detach",
        "Put",
        "Update",
        "Add",
        "Remove",
        "Change",
        "Upload",
        "Enable",
        "Deactivate",
        "Set",
        "Reset",
    ];
    VERBS.iter().any(|verb| {
        name.strip_prefix(verb)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
    })
}

/// The secret id(s) a Secrets Manager read names: `(resource, resources)`.
fn secret_target(params: Option<&RawValue>) -> (Option<String>, Vec<String>) {
    let Some(p) = parse_part::<SecretParams<'_>>(params) else {
        return (None, Vec::new());
    };
    let list: Vec<String> = p
        .secret_id_list
        .iter()
        .flatten()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(first) = list.first() {
        return (Some(first.clone()), list);
    }
    if let Some(id) = owned(&p.secret_id) {
        return (Some(id), Vec::new());
    }
    // Filters only: `tag-key=StratusRedTeam; name=prod/,dev/`.
    let filters: Vec<String> = p
        .filters
        .iter()
        .flatten()
        .map(|f| {
            let values: Vec<&str> = f.values.iter().flatten().map(|v| v.as_ref()).collect();
            format!("{}={}", f.key.as_deref().unwrap_or(""), values.join(","))
        })
        .collect();
    let resource = (!filters.is_empty()).then(|| filters.join("; "));
    (resource, Vec::new())
}

/// The identity an identity-admin call creates or changes.
fn admin_target(record: &Record<'_>) -> Option<String> {
    let from = |p: &IdentityParams<'_>| {
        text(&p.user_name)
            .or(text(&p.role_name))
            .or(text(&p.group_name))
            .or(text(&p.user_id))
            .or(text(&p.name))
            .or(text(&p.saml_provider_arn))
            .map(str::to_string)
    };
    if let Some(target) = parse_part::<IdentityParams<'_>>(record.request_parameters)
        .as_ref()
        .and_then(from)
    {
        return Some(target);
    }
    if let Some(created) = parse_part::<CreatedIdentity<'_>>(record.response_elements) {
        if let Some(t) = created.user.as_ref().and_then(from) {
            return Some(t);
        }
        if let Some(t) = created.role.as_ref().and_then(from) {
            return Some(t);
        }
    }
    // IAM applies credential calls without `userName` (`CreateAccessKey`,
    // `ChangePassword`, …) to the calling user.
    let identity = record.user_identity.as_ref()?;
    let name = text(&record.event_name).unwrap_or("");
    let own_credential = [
        "AccessKey",
        "Password",
        "LoginProfile",
        "MFADevice",
        "SSHPublicKey",
        "SigningCertificate",
        "ServiceSpecificCredential",
    ]
    .iter()
    .any(|noun| name.contains(noun));
    if own_credential && identity.kind.as_deref() == Some("IAMUser") {
        return owned(&identity.user_name);
    }
    None
}

/// The access key id an STS call or `CreateAccessKey` returned.
fn issued_key(response: Option<&RawValue>) -> Option<String> {
    let issued = parse_part::<IssuedKey<'_>>(response)?;
    issued
        .credentials
        .as_ref()
        .and_then(|k| owned(&k.access_key_id))
        .or_else(|| {
            issued
                .access_key
                .as_ref()
                .and_then(|k| owned(&k.access_key_id))
        })
}

/// Whether a sign-in's `responseElements` reports a failure (`{"ConsoleLogin": "Failure"}`).
fn signin_failed(response: Option<&RawValue>) -> bool {
    parse_part::<HashMap<Cow<'_, str>, &RawValue>>(response)
        .is_some_and(|m| m.values().any(|v| v.get() == "\"Failure\""))
}

/// Adds the forms of the actor's identity, most specific first.
fn push_actor(event: &mut NormalizedEvent, identity: &UserIdentity<'_>) {
    let actor = &mut event.actor;
    let kind = identity.kind.as_deref().unwrap_or("");
    let issuer_arn = identity
        .session_context
        .as_ref()
        .and_then(|c| c.session_issuer.as_ref())
        .and_then(|i| i.arn.as_deref());
    actor.actor_type = actor_type(kind, issuer_arn);
    let mut push = |kind: PrincipalKind, value: &Option<Cow<'_, str>>| {
        if let Some(v) = value.as_deref() {
            actor.push(kind, v);
        }
    };
    match kind {
        "AssumedRole" | "FederatedUser" => {
            if let Some(issuer) = identity
                .session_context
                .as_ref()
                .and_then(|c| c.session_issuer.as_ref())
            {
                push(PrincipalKind::RoleArn, &issuer.arn);
            }
            push(PrincipalKind::RoleArn, &identity.arn);
            push(PrincipalKind::AccessKey, &identity.access_key_id);
        }
        "IAMUser" | "Root" => {
            push(PrincipalKind::RoleArn, &identity.arn);
            if text(&identity.arn).is_none() {
                push(PrincipalKind::User, &identity.user_name);
            }
            push(PrincipalKind::AccessKey, &identity.access_key_id);
        }
        "AWSService" => push(PrincipalKind::User, &identity.invoked_by),
        "WebIdentityUser" | "SAMLUser" => {
            push(PrincipalKind::User, &identity.user_name);
            push(PrincipalKind::User, &identity.principal_id);
        }
        // AWSAccount, Unknown, IdentityCenterUser, …: whatever the record names.
        _ => {
            push(PrincipalKind::RoleArn, &identity.arn);
            push(PrincipalKind::User, &identity.user_name);
            push(PrincipalKind::User, &identity.principal_id);
            push(PrincipalKind::AccessKey, &identity.access_key_id);
        }
    }
}

/// Person or service, from `userIdentity.type`: IAM users, the root user, SAML and
/// Identity Center users are people; a role session is a workload unless its role
/// is one of the `AWSReservedSSO_…` roles IAM Identity Center gives people.
fn actor_type(kind: &str, issuer_arn: Option<&str>) -> ActorType {
    match kind {
        "IAMUser" | "Root" | "SAMLUser" | "IdentityCenterUser" => ActorType::Person,
        "AssumedRole" | "FederatedUser" => {
            if issuer_arn.is_some_and(|arn| {
                arn.contains(":role/aws-reserved/sso.amazonaws.com/")
                    || arn.contains("/AWSReservedSSO_")
            }) {
                ActorType::Person
            } else {
                ActorType::Service
            }
        }
        "AWSService" | "WebIdentityUser" => ActorType::Service,
        _ => ActorType::Unknown,
    }
}

/// Builds the event for one record.
fn event(record: &Record<'_>) -> Result<NormalizedEvent, DecodeError> {
    let time_text = text(&record.event_time)
        .or(text(&record.shipper_time))
        .ok_or_else(|| DecodeError::BadTime {
            format: FORMAT,
            detail: "no eventTime".into(),
        })?;
    let time = parse_time(FORMAT, time_text)?;
    let name =
        text(&record.event_name).ok_or_else(|| DecodeError::shape(FORMAT, "no eventName"))?;
    let source = text(&record.event_source).unwrap_or("");
    let category = category(source, name);

    let mut event = NormalizedEvent::new(time, Product::Cloudtrail, category, name);
    event.vendor_event_id = owned(&record.event_id);
    event.cloud_region = owned(&record.aws_region);
    let identity = record.user_identity.as_ref();
    event.cloud_account =
        owned(&record.recipient_account_id).or_else(|| identity.and_then(|i| owned(&i.account_id)));
    event.src_ip = text(&record.source_ip_address)
        .filter(|s| s.parse::<IpAddr>().is_ok())
        .map(str::to_string);
    if let Some(identity) = identity {
        push_actor(&mut event, identity);
        event.token_id = owned(&identity.access_key_id);
    }
    if let Some(ip) = event.src_ip.clone() {
        event.actor.push(PrincipalKind::SourceIp, &ip);
    }

    if let Some(code) = text(&record.error_code) {
        event.outcome = Outcome::Failure;
        event.status_code = Some(truncate(code, 200).to_string());
    } else if category == Category::Authentication && signin_failed(record.response_elements) {
        event.outcome = Outcome::Failure;
        let reason = text(&record.error_message).unwrap_or("Failure");
        event.status_code = Some(truncate(reason, 200).to_string());
    } else {
        event.outcome = Outcome::Success;
    }

    let params = record.request_parameters;
    match category {
        Category::SecretRead => {
            (event.resource, event.resources) = secret_target(params);
        }
        Category::TokenIssuance => {
            event.issued_token_id = issued_key(record.response_elements);
            event.target_principal =
                parse_part::<RoleParams<'_>>(params).and_then(|p| owned(&p.role_arn));
        }
        Category::IdentityAdmin => {
            event.target_principal = admin_target(record);
            if name == "CreateAccessKey" {
                event.issued_token_id = issued_key(record.response_elements);
            }
        }
        Category::ApiCall if source == "secretsmanager.amazonaws.com" => {
            event.resource = secret_target(params).0;
        }
        Category::ApiCall => {
            if let Some(p) = parse_part::<BucketParams<'_>>(params) {
                event.resource = text(&p.bucket_name).map(|bucket| match text(&p.key) {
                    Some(key) => format!("{bucket}/{key}"),
                    None => bucket.to_string(),
                });
            }
        }
        _ => {}
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::decode::DecodeOptions;
    use crate::decode::testing::{self, refs};

    const DIR: &str = "aws_cloudtrail";

    /// One sample line: where it came from, and the vendor record (`log`).
    #[derive(Deserialize)]
    struct Sample<'a> {
        #[serde(borrow)]
        source: Cow<'a, str>,
        #[serde(borrow)]
        log: &'a RawValue,
    }

    /// `(file, source, record)` for every line of every sample file.
    fn samples() -> Vec<(String, String, String)> {
        let mut paths: Vec<_> = std::fs::read_dir(testing::fixture(DIR))
            .expect("sample folder")
            .map(|entry| entry.expect("dir entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "ndjson"))
            .collect();
        paths.sort();
        let mut all = Vec::new();
        for path in paths {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            for line in testing::lines(&format!("{DIR}/{file}")) {
                let s: Sample<'_> = serde_json::from_str(&line).expect("wrapper line");
                all.push((file.clone(), s.source.into_owned(), s.log.get().to_string()));
            }
        }
        all
    }

    /// The first sample record that contains `needle` (an eventID, usually).
    fn record(needle: &str) -> String {
        samples()
            .into_iter()
            .map(|(_, _, r)| r)
            .find(|r| r.contains(needle))
            .unwrap_or_else(|| panic!("no sample contains {needle}"))
    }

    fn one(record: &str) -> NormalizedEvent {
        testing::one(decode, record.as_bytes())
    }

    #[test]
    fn every_sample_decodes_or_is_a_partial_rule_test() {
        let mut categories: BTreeMap<&str, usize> = BTreeMap::new();
        let mut failures: BTreeMap<&str, usize> = BTreeMap::new();
        let mut total = 0;
        for (file, source, record) in samples() {
            total += 1;
            let mut out = Vec::new();
            match decode(record.as_bytes(), &mut out) {
                Ok(()) => {
                    assert_eq!(out.len(), 1, "{file}: {record}");
                    assert_eq!(out[0].product, Product::Cloudtrail);
                    assert_ne!(out[0].outcome, Outcome::Unknown);
                    *categories.entry(out[0].category.as_str()).or_default() += 1;
                }
                Err(e) => {
                    // Only Panther rule-test snippets lack a usable eventTime
                    // (left out, `redacted`, or `...`).
                    assert_eq!(e.reason(), "bad_time", "{file}: {e}");
                    assert_eq!(file, "panther_rule_tests.ndjson", "{record}");
                    assert!(source.starts_with("panther-labs/"), "{source}");
                    *failures.entry(e.reason()).or_default() += 1;
                }
            }
        }
        println!("{total} records: {categories:?}, failures {failures:?}");
        assert_eq!(total, 876);
        let expected: BTreeMap<&str, usize> = [
            ("api_call", 698),
            ("authentication", 42),
            ("identity_admin", 65),
            ("secret_list", 1),
            ("secret_read", 27),
            ("token_issuance", 28),
        ]
        .into_iter()
        .collect();
        assert_eq!(categories, expected);
        assert_eq!(failures, BTreeMap::from([("bad_time", 15)]));
    }

    #[test]
    fn get_secret_value() {
        let e = one(&record("b9c3d881-1e77-426c-abd3-5ca20d903380"));
        assert_eq!(e.category, Category::SecretRead);
        assert_eq!(e.class_uid, 6003);
        assert_eq!(e.activity, "GetSecretValue");
        assert_eq!(e.time.to_rfc3339(), "2024-07-31T12:36:52+00:00");
        assert_eq!(
            e.resource.as_deref(),
            Some(
                "arn:aws:secretsmanager:cn-centraleast-1r:903144391865:secret:stratus-red-team-retrieve-secret-18-4Rzn83"
            )
        );
        assert!(e.resources.is_empty());
        assert_eq!(e.cloud_region.as_deref(), Some("cn-centraleast-1r"));
        assert_eq!(e.cloud_account.as_deref(), Some("903144391865"));
        assert_eq!(e.src_ip.as_deref(), Some("253.201.144.253"));
        assert_eq!(e.token_id.as_deref(), Some("AKIA1JMTHE9ZMZMWG0MG"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.status_code, None);
        assert_eq!(
            e.vendor_event_id.as_deref(),
            Some("b9c3d881-1e77-426c-abd3-5ca20d903380")
        );
        assert_eq!(e.actor.raw, "arn:aws:iam::903144391865:user/christophe");
        assert_eq!(
            refs(&e),
            [
                (
                    PrincipalKind::RoleArn,
                    "arn:aws:iam::903144391865:user/christophe"
                ),
                (PrincipalKind::AccessKey, "AKIA1JMTHE9ZMZMWG0MG"),
                (PrincipalKind::SourceIp, "253.201.144.253"),
            ]
        );
    }

    #[test]
    fn assume_role_issues_a_key() {
        let e = one(&record("d769ddfd-2cda-4cfa-b33f-05d3b886921d"));
        assert_eq!(e.category, Category::TokenIssuance);
        assert_eq!(e.class_uid, 3002);
        assert_eq!(e.activity, "AssumeRole");
        assert_eq!(e.issued_token_id.as_deref(), Some("ASIA7RQR64ZW9JXKWPUO"));
        assert_eq!(
            e.target_principal.as_deref(),
            Some("arn:aws:iam::457448411975:role/stratus-red-team-ec2-get-password-data-role")
        );
        assert_eq!(e.token_id.as_deref(), Some("AKIAWOGXN38MFN92ING5"));
        assert_eq!(e.cloud_region.as_deref(), Some("apiso-northsouth-3r"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.actor.raw, "arn:aws:iam::457448411975:user/christophe");
    }

    #[test]
    fn assume_role_by_a_service_names_the_service() {
        // OTRF capture: EC2 assuming an instance role; the time is Logstash's `@timestamp`.
        let e = one(&record("ASIA5FLZVX4OK6HMTKWY"));
        assert_eq!(e.actor.actor_type, ActorType::Service, "an AWS service");
        assert_eq!(e.category, Category::TokenIssuance);
        assert_eq!(e.issued_token_id.as_deref(), Some("ASIA5FLZVX4OK6HMTKWY"));
        assert_eq!(
            refs(&e),
            [(PrincipalKind::User, "ec2.amazonaws.com")],
            "the service is not an IP, so no source_ip ref"
        );
        assert_eq!(e.src_ip, None);
        assert_eq!(e.time.format("%Y").to_string(), "2020");
    }

    #[test]
    fn assumed_role_api_call_lists_principals_in_order() {
        let e = one(&record("394cf343-b9cf-48ce-8a94-e188656ae8ba"));
        assert_eq!(e.actor.actor_type, ActorType::Service, "a role session");
        assert_eq!(e.category, Category::ApiCall);
        assert_eq!(e.activity, "DescribeInstances");
        assert_eq!(e.resource, None);
        assert_eq!(
            refs(&e),
            [
                (
                    PrincipalKind::RoleArn,
                    "arn:aws:iam::017622104382:role/stratus-red-team-ec2-steal-credentials-role"
                ),
                (
                    PrincipalKind::RoleArn,
                    "arn:aws:sts::017622104382:assumed-role/stratus-red-team-ec2-steal-credentials-role/i-786a3A8B5C0d92eF4"
                ),
                (PrincipalKind::AccessKey, "ASIAP5CT9NN8EYVU1FXV"),
                (PrincipalKind::SourceIp, "18.236.253.47"),
            ]
        );
        assert_eq!(
            e.actor.raw,
            "arn:aws:iam::017622104382:role/stratus-red-team-ec2-steal-credentials-role"
        );
        assert_eq!(e.token_id.as_deref(), Some("ASIAP5CT9NN8EYVU1FXV"));
    }

    #[test]
    fn iam_create_user_and_access_key_are_identity_admin() {
        let user = one(&record("3346344c-5a3e-429e-8405-420f98f75d6e"));
        assert_eq!(user.category, Category::IdentityAdmin);
        assert_eq!(user.class_uid, 6003);
        assert_eq!(user.activity, "CreateUser");
        assert_eq!(user.target_principal.as_deref(), Some("malicious-iam-user"));
        assert_eq!(user.cloud_region.as_deref(), Some("ap-isob-central-3r"));
        // `075.050.255.67` is scrambled (leading zeros): not taken as an address.
        assert_eq!(user.src_ip, None);

        let key = one(&record("94faedcc-0fa4-46e6-9322-022e8e934f04"));
        assert_eq!(key.category, Category::IdentityAdmin);
        assert_eq!(key.target_principal.as_deref(), Some("malicious-iam-user"));
        assert_eq!(key.issued_token_id.as_deref(), Some("AKIAXAFZN8JEPF6L682H"));
        assert_eq!(key.token_id.as_deref(), Some("AKIAOZUDECYXYM4ONAN4"));
    }

    #[test]
    fn console_logins() {
        let ok = one(&record("865d9377-9c6b-4fd7-8aad-725e95f6a140"));
        assert_eq!(ok.category, Category::Authentication);
        assert_eq!(ok.class_uid, 3002);
        assert_eq!(ok.activity, "ConsoleLogin");
        assert_eq!(ok.actor.actor_type, ActorType::Person, "an IAM user");
        assert_eq!(ok.outcome, Outcome::Success);
        assert_eq!(
            ok.actor.raw,
            "arn:aws:iam::562283505220:user/stratus-red-team-nmfalu-jfzdtsvchl"
        );
        assert_eq!(ok.token_id, None);

        // A refused login has no errorCode, only `responseElements.ConsoleLogin`.
        let failed = one(&record("\"eventTime\": \"2020-10-30T23:25:32Z\""));
        assert_eq!(failed.category, Category::Authentication);
        assert_eq!(failed.outcome, Outcome::Failure);
        assert_eq!(failed.status_code.as_deref(), Some("Failure"));
        assert_eq!(
            refs(&failed),
            [
                (PrincipalKind::RoleArn, "arn:aws:iam::493859302102:root"),
                (PrincipalKind::SourceIp, "92.55.146.245"),
            ]
        );
    }

    #[test]
    fn error_record_is_a_failure() {
        let e = one(&record("450230d4-b39e-4a18-a6a0-d07a6e2105cb"));
        assert_eq!(e.category, Category::ApiCall);
        assert_eq!(e.activity, "GetPasswordData");
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(
            e.status_code.as_deref(),
            Some("Client.UnauthorizedOperation")
        );
        assert_eq!(e.cloud_account.as_deref(), Some("457448411975"));
        assert_eq!(e.src_ip.as_deref(), Some("200.249.253.51"));
        assert_eq!(refs(&e).len(), 4);
    }

    #[test]
    fn batch_get_secret_value_by_id_list() {
        let e = one(&record("e2b7c9d4-31f6-4a8e-b5d0-7c1f3a9e6b52"));
        assert_eq!(e.category, Category::SecretRead);
        assert_eq!(e.activity, "BatchGetSecretValue");
        assert_eq!(
            e.resources,
            [
                "prod/reports/db-password",
                "arn:aws:secretsmanager:eu-west-1:111122223333:secret:prod/reports/api-key-Xy12Ab"
            ]
        );
        assert_eq!(e.resource.as_deref(), Some("prod/reports/db-password"));
        assert_eq!(e.actor.raw, "arn:aws:iam::111122223333:role/reports-app");
        assert_eq!(e.token_id.as_deref(), Some("ASIA3EXAMPLEBATCH001"));
    }

    #[test]
    fn batch_get_secret_value_by_filters() {
        let e = one(&record("61619dbf-c10b-471e-9d78-8199a2f8233a"));
        assert_eq!(e.category, Category::SecretRead);
        assert_eq!(e.resource.as_deref(), Some("tag-key=StratusRedTeam"));
        assert!(e.resources.is_empty());
    }

    #[test]
    fn panther_lowercased_keys_are_accepted() {
        // Real sample: Panther lowercased the keys inside `userIdentity`.
        let e = one(&record("\"accesskeyid\": \"ASIASWJRT64Z7ZLFLJNI\""));
        assert_eq!(e.token_id.as_deref(), Some("ASIASWJRT64Z7ZLFLJNI"));
        assert_eq!(e.cloud_account.as_deref(), Some("112233445566"));
        assert_eq!(
            refs(&e)[1],
            (
                PrincipalKind::RoleArn,
                "arn:aws:sts::112233445566:assumed-role/TestAdmin/alan"
            )
        );
        // And at the top level.
        let e = one(
            r#"{"eventtime":"2024-01-02T03:04:05Z","eventsource":"secretsmanager.amazonaws.com",
                "eventname":"GetSecretValue","requestparameters":{"secretid":"prod/db"},
                "useridentity":{"type":"IAMUser","arn":"arn:aws:iam::1:user/x","accesskeyid":"AKIA1"}}"#,
        );
        assert_eq!(e.category, Category::SecretRead);
        assert_eq!(e.resource.as_deref(), Some("prod/db"));
        assert_eq!(e.token_id.as_deref(), Some("AKIA1"));
    }

    #[test]
    fn odd_request_parameters_do_not_fail_the_record() {
        let e = one(
            r#"{"eventTime":"2024-01-02T03:04:05Z","eventSource":"secretsmanager.amazonaws.com",
                "eventName":"GetSecretValue","requestParameters":{"secretId":5},
                "responseElements":"not an object","sourceIPAddress":"AWS Internal"}"#,
        );
        assert_eq!(e.category, Category::SecretRead);
        assert_eq!(e.resource, None);
        assert_eq!(e.src_ip, None);
        assert!(e.actor.is_empty());
    }

    #[test]
    fn envelope_gives_one_event_per_record() {
        let a = record("b9c3d881-1e77-426c-abd3-5ca20d903380");
        let b = record("d769ddfd-2cda-4cfa-b33f-05d3b886921d");
        let envelope = format!(r#"{{"Records":[{a},{b}]}}"#);
        let mut out = Vec::new();
        decode(envelope.as_bytes(), &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].category, Category::SecretRead);
        assert_eq!(out[1].category, Category::TokenIssuance);

        // Through `auto`, the same envelope is recognised as CloudTrail.
        let mut auto = Vec::new();
        crate::decode::decode(
            Format::Auto,
            envelope.as_bytes(),
            &DecodeOptions::default(),
            &mut auto,
        )
        .unwrap();
        assert_eq!(auto.len(), 2);
    }

    #[test]
    fn envelope_with_a_bad_record_fails_whole() {
        let a = record("b9c3d881-1e77-426c-abd3-5ca20d903380");
        let envelope = format!(r#"{{"Records":[{a},{{"eventName":"X","eventTime":5}}]}}"#);
        let mut out = Vec::new();
        let err = crate::decode::decode(
            Format::Cloudtrail,
            envelope.as_bytes(),
            &DecodeOptions::default(),
            &mut out,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "wrong_shape");
        assert!(out.is_empty(), "the good record's event is dropped too");

        let missing_time = format!(r#"{{"Records":[{a},{{"eventName":"X"}}]}}"#);
        let err = crate::decode::decode(
            Format::Cloudtrail,
            missing_time.as_bytes(),
            &DecodeOptions::default(),
            &mut out,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "bad_time");
        assert!(out.is_empty());
    }

    #[test]
    fn auto_recognises_every_sample_as_cloudtrail() {
        let options = DecodeOptions::default();
        let mut recognised = 0;
        for (file, _, record) in samples() {
            let mut direct = Vec::new();
            if decode(record.as_bytes(), &mut direct).is_err() {
                continue;
            }
            let mut out = Vec::new();
            crate::decode::decode(Format::Auto, record.as_bytes(), &options, &mut out)
                .unwrap_or_else(|e| panic!("{file}: {e}: {record}"));
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].product, Product::Cloudtrail, "{file}: {record}");
            recognised += 1;
        }
        assert_eq!(recognised, 861);
    }

    #[test]
    fn malformed_records_say_why() {
        let cases: [(&str, &str); 9] = [
            (
                r#"{"eventTime":"2024-01-02T03:04:05Z","eventName":"#,
                "bad_json",
            ),
            (
                r#"{"eventTime":5,"eventName":"GetSecretValue"}"#,
                "wrong_shape",
            ),
            (
                r#"{"eventTime":"2024-01-02T03:04:05Z","eventName":"X","userIdentity":"x"}"#,
                "wrong_shape",
            ),
            (
                r#"{"eventName":"GetSecretValue","eventSource":"x"}"#,
                "bad_time",
            ),
            (r#"{"eventTime":"yesterday","eventName":"X"}"#, "bad_time"),
            (r#"{"eventTime":"2024-01-02T03:04:05Z"}"#, "wrong_shape"),
            (r#"{"Records":{"a":1}}"#, "wrong_shape"),
            (r#"[1,2]"#, "wrong_shape"),
            (r#""text""#, "wrong_shape"),
        ];
        testing::assert_reasons(decode, &cases);
        let mut out = Vec::new();
        decode(br#"{"Records":[]}"#, &mut out).unwrap();
        assert!(out.is_empty());
    }
}
