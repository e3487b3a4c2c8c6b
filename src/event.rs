//! The normalized event: one shape for every vendor record, with OCSF-aligned names.
//!
//! Every decoder produces [`NormalizedEvent`]s; every later stage (identity,
//! detectors, sinks) reads only this type, never a vendor record.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Which of the three log families a record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Single sign-on / identity provider (Okta, Entra ID).
    Sso,
    /// API or egress gateway (Kong, Envoy/Istio, Squid).
    Gateway,
    /// Secrets manager or cloud control plane (CloudTrail, Vault, Azure Key Vault).
    Secrets,
}

/// The vendor product that wrote the record; also the name of its decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Product {
    Okta,
    Entra,
    Cloudtrail,
    Vault,
    Kong,
    Envoy,
    Squid,
    Generic,
    AzureKeyvault,
}

impl Product {
    pub const ALL: [Product; 9] = [
        Product::Okta,
        Product::Entra,
        Product::Cloudtrail,
        Product::Vault,
        Product::Kong,
        Product::Envoy,
        Product::Squid,
        Product::Generic,
        Product::AzureKeyvault,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Product::Okta => "okta",
            Product::Entra => "entra",
            Product::Cloudtrail => "cloudtrail",
            Product::Vault => "vault",
            Product::Kong => "kong",
            Product::Envoy => "envoy",
            Product::Squid => "squid",
            Product::Generic => "generic",
            Product::AzureKeyvault => "azure_keyvault",
        }
    }

    /// The log family of a product. Generic records say their own kind.
    pub fn default_source_kind(self) -> SourceKind {
        match self {
            Product::Okta | Product::Entra => SourceKind::Sso,
            Product::Cloudtrail | Product::Vault | Product::AzureKeyvault => SourceKind::Secrets,
            Product::Kong | Product::Envoy | Product::Squid | Product::Generic => {
                SourceKind::Gateway
            }
        }
    }
}

/// What an event is, in the terms the detectors care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// A sign-in or authentication attempt (OCSF Authentication 3002).
    Authentication,
    /// A credential was issued: OAuth token grant, STS keys, Vault login.
    TokenIssuance,
    /// Any other API call against a control plane or service (OCSF API Activity 6003).
    ApiCall,
    /// A secret's value was read.
    SecretRead,
    /// Secrets were listed (enumeration).
    SecretList,
    /// An identity, role, key or app registration was created or changed.
    IdentityAdmin,
    /// A request through a gateway or egress proxy (OCSF HTTP Activity 4002).
    EgressRequest,
}

impl Category {
    pub const ALL: [Category; 7] = [
        Category::Authentication,
        Category::TokenIssuance,
        Category::ApiCall,
        Category::SecretRead,
        Category::SecretList,
        Category::IdentityAdmin,
        Category::EgressRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Authentication => "authentication",
            Category::TokenIssuance => "token_issuance",
            Category::ApiCall => "api_call",
            Category::SecretRead => "secret_read",
            Category::SecretList => "secret_list",
            Category::IdentityAdmin => "identity_admin",
            Category::EgressRequest => "egress_request",
        }
    }

    pub fn parse(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The OCSF class this category maps to.
    pub fn ocsf_class_uid(self) -> u32 {
        match self {
            Category::Authentication | Category::TokenIssuance => 3002,
            Category::EgressRequest => 4002,
            Category::ApiCall
            | Category::SecretRead
            | Category::SecretList
            | Category::IdentityAdmin => 6003,
        }
    }
}

/// Whether the action succeeded (OCSF `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    #[default]
    Unknown,
}

/// The form a principal takes in a vendor record; the registry maps each form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// OAuth / OIDC client id (Okta app, Entra application id).
    OauthClient,
    /// A human or service user name (login, UPN).
    User,
    /// A cloud role ARN (IAM role, or the role behind an assumed-role session).
    RoleArn,
    /// A cloud access key id (static AKIA… or STS-issued ASIA…).
    AccessKey,
    /// A Vault role (AppRole, Kubernetes, JWT role name).
    VaultRole,
    /// A Vault identity entity id.
    VaultEntity,
    /// A Vault token display name.
    VaultDisplayName,
    /// A Vault token accessor.
    VaultAccessor,
    /// An API-gateway consumer (Kong consumer, mesh workload, proxy user).
    GatewayConsumer,
    /// A network address, when nothing better is known.
    SourceIp,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::OauthClient => "oauth_client",
            PrincipalKind::User => "user",
            PrincipalKind::RoleArn => "role_arn",
            PrincipalKind::AccessKey => "access_key",
            PrincipalKind::VaultRole => "vault_role",
            PrincipalKind::VaultEntity => "vault_entity",
            PrincipalKind::VaultDisplayName => "vault_display_name",
            PrincipalKind::VaultAccessor => "vault_accessor",
            PrincipalKind::GatewayConsumer => "gateway_consumer",
            PrincipalKind::SourceIp => "source_ip",
        }
    }
}

/// One form of the actor's identity as found in the record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PrincipalRef {
    pub kind: PrincipalKind,
    pub value: String,
}

impl PrincipalRef {
    pub fn new(kind: PrincipalKind, value: impl Into<String>) -> Self {
        PrincipalRef {
            kind,
            value: value.into(),
        }
    }
}

/// Whether a principal is a person or a service (an app, bot, agent, workload).
///
/// Micro-apps are services; people signing in are context for the detectors,
/// not unregistered apps. Decoders set it where the vendor says (Okta actor
/// type, Entra sign-in kind, CloudTrail identity type, Vault auth method);
/// otherwise the identity stage derives it from the principal's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ActorType {
    /// A human: an Okta `User`, an Entra user sign-in, an IAM user, an Identity
    /// Center or console session, a Vault userpass/LDAP/OIDC login.
    Person,
    /// An OAuth client, service principal, role session, AppRole, gateway consumer.
    Service,
    /// The record does not say (a bare address, a generic record without a type).
    #[default]
    Unknown,
}

impl ActorType {
    pub const ALL: [ActorType; 3] = [ActorType::Person, ActorType::Service, ActorType::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            ActorType::Person => "person",
            ActorType::Service => "service",
            ActorType::Unknown => "unknown",
        }
    }

    /// What a principal of this form is when the record says nothing more.
    pub fn of_kind(kind: PrincipalKind) -> ActorType {
        match kind {
            PrincipalKind::OauthClient
            | PrincipalKind::RoleArn
            | PrincipalKind::VaultRole
            | PrincipalKind::GatewayConsumer => ActorType::Service,
            PrincipalKind::User
            | PrincipalKind::AccessKey
            | PrincipalKind::VaultEntity
            | PrincipalKind::VaultDisplayName
            | PrincipalKind::VaultAccessor
            | PrincipalKind::SourceIp => ActorType::Unknown,
        }
    }
}

/// The actor of an event: the most specific form first, then the others the
/// record also carried (an assumed-role session has an ARN, a role and a key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Principal {
    /// The actor as the vendor wrote it (the primary form's value).
    pub raw: String,
    /// Every form found, most specific first; identity resolution tries them in order.
    pub refs: Vec<PrincipalRef>,
    /// Person or service (see [`ActorType`]).
    #[serde(default, rename = "type")]
    pub actor_type: ActorType,
}

impl Principal {
    /// Adds a form unless it is empty or `-`; the first one added becomes `raw`.
    pub fn push(&mut self, kind: PrincipalKind, value: &str) {
        let value = value.trim();
        if value.is_empty() || value == "-" {
            return;
        }
        if self.refs.iter().any(|r| r.kind == kind && r.value == value) {
            return;
        }
        if self.refs.is_empty() {
            self.raw = value.to_string();
        }
        self.refs.push(PrincipalRef::new(kind, value));
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// The actor's type: as the decoder set it, else what its primary form implies.
    pub fn classify(&mut self) {
        if self.actor_type == ActorType::Unknown
            && let Some(primary) = self.refs.first()
        {
            self.actor_type = ActorType::of_kind(primary.kind);
        }
    }
}

/// Whether an event's actor is a registered micro-app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityStatus {
    Registered,
    Unregistered,
    /// The record named no actor at all.
    Anonymous,
}

/// The micro-app an event was tied to (filled in by `identity`, not by decoders).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedIdentity {
    pub status: IdentityStatus,
    /// The registry id of the app, when registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// The stable key detectors group by: `app:<id>` or `<kind>:<raw value>`.
    pub key: String,
    /// Which principal form matched the registry, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<PrincipalRef>,
    /// For a role assumed by another registered app: that app's key (`app:<id>`).
    /// The event belongs to the app that received the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assumed_by: Option<String>,
}

/// Where a record was read from: Kafka coordinates, or a file and line for replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
    File {
        path: String,
        /// 1-based line (record number for JSON arrays).
        line: u64,
    },
}

/// One event in AppWarden's own terms. Field names follow OCSF where OCSF has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalizedEvent {
    /// Event time, as the vendor recorded it (OCSF `time`).
    pub time: DateTime<Utc>,
    /// When AppWarden read the record (OCSF `metadata.logged_time`); set by the pipeline.
    pub observed_time: DateTime<Utc>,
    pub source_kind: SourceKind,
    /// The vendor product (OCSF `metadata.product.name`).
    pub product: Product,
    pub category: Category,
    /// OCSF class: 3002 Authentication, 4002 HTTP Activity, 6003 API Activity.
    pub class_uid: u32,
    /// The vendor's name for the action (`eventName`, `eventType`, HTTP method…).
    pub activity: String,
    /// The actor (OCSF `actor`).
    pub actor: Principal,
    /// The resolved micro-app; `None` until the identity stage has run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<ResolvedIdentity>,
    /// Token id, key id or accessor used by the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Credential issued by this event (STS access key id, Vault accessor, token id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_id: Option<String>,
    /// Session id (OCSF `session.uid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Source IP (OCSF `src_endpoint.ip`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_ip: Option<String>,
    /// Source country, ISO 3166 alpha-2, where the vendor geolocated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_country: Option<String>,
    /// Source region or state, as the vendor wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_region: Option<String>,
    /// Cloud region of the call (OCSF `cloud.region`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_region: Option<String>,
    /// Cloud account / tenant (OCSF `cloud.account.uid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_account: Option<String>,
    /// Destination host name, lower case, without port (OCSF `dst_endpoint.hostname`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// The resource acted on: secret id, API path, URL path (OCSF `resources[].uid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Secrets named by a batch read (CloudTrail `BatchGetSecretValue`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub resources: Vec<String>,
    /// Identity created or changed by an identity-admin event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_method: Option<String>,
    pub outcome: Outcome,
    /// Vendor status or error code (HTTP status, `errorCode`, Okta result reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    /// The vendor's own event id (OCSF `metadata.uid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_event_id: Option<String>,
    /// Where the record came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// The vendor record this event was decoded from (one element of an envelope),
    /// kept for the enriched topic's OCSF `raw_data`. Not part of the normalized form.
    #[serde(skip)]
    pub raw_data: Option<Arc<str>>,
}

impl NormalizedEvent {
    /// A new event with only the required fields; decoders fill in the rest.
    pub fn new(
        time: DateTime<Utc>,
        product: Product,
        category: Category,
        activity: impl Into<String>,
    ) -> Self {
        NormalizedEvent {
            time,
            // The pipeline stamps the read time once per record; decoders need no clock.
            observed_time: time,
            source_kind: product.default_source_kind(),
            product,
            category,
            class_uid: category.ocsf_class_uid(),
            activity: activity.into(),
            actor: Principal::default(),
            identity: None,
            token_id: None,
            issued_token_id: None,
            session_id: None,
            src_ip: None,
            src_country: None,
            src_region: None,
            cloud_region: None,
            cloud_account: None,
            dst_host: None,
            dst_port: None,
            resource: None,
            resources: Vec::new(),
            target_principal: None,
            http_method: None,
            outcome: Outcome::Unknown,
            status_code: None,
            bytes_in: None,
            bytes_out: None,
            vendor_event_id: None,
            origin: None,
            raw_data: None,
        }
    }

    /// Sets `raw_data` on every event of `events` that has none yet; the text is shared.
    pub fn keep_raw(events: &mut [NormalizedEvent], raw: &[u8]) {
        let mut shared: Option<Arc<str>> = None;
        for event in events.iter_mut().filter(|e| e.raw_data.is_none()) {
            let text = shared.get_or_insert_with(|| {
                let raw = raw.trim_ascii_end();
                // `from_utf8` checks a word at a time; the lossy form walks chunk by
                // chunk and cost a tenth of a replay's instructions (callgrind).
                match std::str::from_utf8(raw) {
                    Ok(text) => Arc::from(text),
                    Err(_) => Arc::from(String::from_utf8_lossy(raw).as_ref()),
                }
            });
            event.raw_data = Some(text.clone());
        }
    }

    /// Changes the category and keeps the OCSF class in step with it.
    pub fn set_category(&mut self, category: Category) {
        self.category = category;
        self.class_uid = category.ocsf_class_uid();
    }
}

/// Splits `host[:port]` (or `[v6]:port`) into a lower-case host and a port.
pub fn split_host_port(authority: &str) -> (String, Option<u16>) {
    let authority = authority.trim();
    if let Some(rest) = authority.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return (host.to_ascii_lowercase(), port);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host.to_ascii_lowercase(), Some(p)),
            Err(_) => (authority.to_ascii_lowercase(), None),
        },
        _ => (authority.to_ascii_lowercase(), None),
    }
}

/// Host and port of a URL such as `https://api.example.com:8443/path`.
pub fn url_host_port(url: &str) -> Option<(String, Option<u16>)> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    if authority.is_empty() {
        return None;
    }
    let (host, port) = split_host_port(authority);
    let port = port.or(match scheme {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    });
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("API.Example.com:443"),
            ("api.example.com".into(), Some(443))
        );
        assert_eq!(split_host_port("example.com"), ("example.com".into(), None));
        assert_eq!(split_host_port("[::1]:8080"), ("::1".into(), Some(8080)));
        assert_eq!(
            split_host_port("host:notaport"),
            ("host:notaport".into(), None)
        );
    }

    #[test]
    fn url_forms() {
        assert_eq!(
            url_host_port("https://user@files.example.org/a?b"),
            Some(("files.example.org".into(), Some(443)))
        );
        assert_eq!(
            url_host_port("http://10.0.0.1:8080/"),
            Some(("10.0.0.1".into(), Some(8080)))
        );
        assert_eq!(url_host_port("https:///x"), None);
    }

    #[test]
    fn principal_keeps_first_as_raw_and_skips_dashes() {
        let mut p = Principal::default();
        p.push(PrincipalKind::User, "-");
        p.push(PrincipalKind::OauthClient, "0oa1");
        p.push(PrincipalKind::SourceIp, "10.0.0.1");
        p.push(PrincipalKind::OauthClient, "0oa1");
        assert_eq!(p.raw, "0oa1");
        assert_eq!(p.refs.len(), 2);
    }
}
