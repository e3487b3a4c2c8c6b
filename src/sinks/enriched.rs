//! The enriched event: a normalized event with its micro-app and findings, as OCSF-aligned JSON.
//!
//! This is the record SIEM pipelines consume from the enriched topic (and the
//! events file). Top-level names follow OCSF 1.3 for the event's class
//! (Authentication 3002, HTTP Activity 4002, API Activity 6003); the registry
//! data of the app is an OCSF `enrichments` entry; what OCSF has no name for
//! (our category, the identity resolution, detector findings, Kafka
//! coordinates) is under `unmapped.appwarden`; the vendor record is `raw_data`
//! (cut to a prefix, with `raw_data_truncated` and `raw_data_bytes`, when the
//! whole would not fit the topic: see [`super::fit`]).
//! Fields are borrowed from the event, so serializing allocates nothing but the output.

use serde::Serialize;

use crate::detect::{Flag, Severity};
use crate::event::{Category, NormalizedEvent, Origin, Outcome, Product, ResolvedIdentity};
use crate::identity::App;
use crate::identity::registry::RiskTier;

/// The OCSF schema version the record follows.
pub const OCSF_VERSION: &str = "1.3.0";

/// One enriched event, ready to serialize.
#[derive(Serialize)]
pub struct EnrichedEvent<'a> {
    class_uid: u32,
    class_name: &'static str,
    category_uid: u32,
    category_name: &'static str,
    activity_id: u32,
    activity_name: &'a str,
    type_uid: u32,
    /// OCSF `severity_id`: 1 informational, raised to the highest new finding's severity.
    severity_id: u32,
    /// Event time, milliseconds since the epoch (OCSF timestamp).
    time: i64,
    status: &'static str,
    status_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<&'a str>,
    metadata: Metadata<'a>,
    actor: Actor<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_endpoint: Option<SrcEndpoint<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_endpoint: Option<DstEndpoint<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cloud: Option<Cloud<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api: Option<Api<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_request: Option<HttpRequest<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    resources: Vec<Resource<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traffic: Option<Traffic>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    enrichments: Vec<Enrichment<'a>>,
    unmapped: Unmapped<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_data: Option<&'a str>,
    /// Set when `raw_data` is only a prefix of the vendor record: the whole event
    /// would not fit the topic (the record stays whole at its Kafka coordinates).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    raw_data_truncated: bool,
    /// The length in bytes of the whole vendor record, when `raw_data` is cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_data_bytes: Option<usize>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    version: &'static str,
    product: ProductInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
    /// When AppWarden read the record, ms since the epoch.
    logged_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_name: Option<&'a str>,
}

#[derive(Serialize)]
struct ProductInfo {
    name: &'static str,
    vendor_name: &'static str,
}

#[derive(Serialize)]
struct Actor<'a> {
    user: User<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<Uid<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_name: Option<&'a str>,
}

#[derive(Serialize)]
struct User<'a> {
    name: &'a str,
    /// The principal form that matched the registry, else the raw actor.
    uid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    type_name: Option<&'static str>,
}

#[derive(Serialize)]
struct Uid<'a> {
    uid: &'a str,
}

#[derive(Serialize)]
struct SrcEndpoint<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<Location<'a>>,
}

#[derive(Serialize)]
struct Location<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<&'a str>,
}

#[derive(Serialize)]
struct DstEndpoint<'a> {
    hostname: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

#[derive(Serialize)]
struct Cloud<'a> {
    provider: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<Uid<'a>>,
}

#[derive(Serialize)]
struct Api<'a> {
    operation: &'a str,
}

#[derive(Serialize)]
struct HttpRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    http_method: Option<&'a str>,
    url: Url<'a>,
}

#[derive(Serialize)]
struct Url<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
}

#[derive(Serialize)]
struct Resource<'a> {
    uid: &'a str,
}

#[derive(Serialize)]
struct Traffic {
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_out: Option<u64>,
}

/// OCSF enrichment: the registry entry of the app behind the event.
#[derive(Serialize)]
struct Enrichment<'a> {
    name: &'static str,
    value: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    data: AppData<'a>,
}

#[derive(Serialize)]
struct AppData<'a> {
    id: &'a str,
    name: &'a str,
    owner: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    escalation: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    team: Option<&'a str>,
    risk_tier: RiskTier,
    risk_score: u8,
    data_classes: &'a [String],
}

#[derive(Serialize)]
struct Unmapped<'a> {
    appwarden: Ours<'a>,
}

/// What OCSF has no name for.
#[derive(Serialize)]
struct Ours<'a> {
    category: Category,
    source_kind: crate::event::SourceKind,
    product: Product,
    /// Whether the actor is a person or a service (micro-apps are services).
    actor_type: crate::event::ActorType,
    /// `None` only for events that never went through identity resolution.
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<&'a ResolvedIdentity>,
    /// Findings this event raised as it was seen (single-event detectors);
    /// windowed findings are alerts whose `sql` lists their events.
    findings: &'a [Flag],
    #[serde(skip_serializing_if = "Option::is_none")]
    token_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_token_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_principal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'a Origin>,
}

/// OCSF class and category names of a class uid.
fn class_names(class_uid: u32) -> (&'static str, u32, &'static str) {
    match class_uid {
        3002 => ("Authentication", 3, "Identity & Access Management"),
        4002 => ("HTTP Activity", 4, "Network Activity"),
        _ => ("API Activity", 6, "Application Activity"),
    }
}

/// OCSF `activity_id` of an event within its class.
fn activity_id(event: &NormalizedEvent) -> u32 {
    match event.category {
        // Authentication: 1 Logon, 3 Authentication Ticket.
        Category::Authentication => 1,
        Category::TokenIssuance => 3,
        // API Activity: 2 Read; 99 Other for calls whose verb we do not map.
        Category::SecretRead | Category::SecretList => 2,
        Category::ApiCall | Category::IdentityAdmin => 99,
        // HTTP Activity: by method.
        Category::EgressRequest => match event.http_method.as_deref() {
            Some(m) if m.eq_ignore_ascii_case("CONNECT") => 1,
            Some(m) if m.eq_ignore_ascii_case("DELETE") => 2,
            Some(m) if m.eq_ignore_ascii_case("GET") => 3,
            Some(m) if m.eq_ignore_ascii_case("HEAD") => 4,
            Some(m) if m.eq_ignore_ascii_case("OPTIONS") => 5,
            Some(m) if m.eq_ignore_ascii_case("POST") => 6,
            Some(m) if m.eq_ignore_ascii_case("PUT") => 7,
            Some(m) if m.eq_ignore_ascii_case("TRACE") => 8,
            Some(m) if m.eq_ignore_ascii_case("PATCH") => 9,
            _ => 99,
        },
    }
}

fn vendor_name(product: Product) -> &'static str {
    match product {
        Product::Okta => "Okta",
        Product::Entra => "Microsoft",
        Product::Cloudtrail => "AWS",
        Product::Vault => "HashiCorp",
        Product::Kong => "Kong",
        Product::Envoy => "Envoy Proxy",
        Product::Squid => "Squid",
        Product::Generic => "Unknown",
        Product::AzureKeyvault => "Microsoft",
    }
}

fn product_name(product: Product) -> &'static str {
    match product {
        Product::Okta => "Okta System Log",
        Product::Entra => "Microsoft Entra ID",
        Product::Cloudtrail => "AWS CloudTrail",
        Product::Vault => "Vault",
        Product::Kong => "Kong Gateway",
        Product::Envoy => "Envoy",
        Product::Squid => "Squid",
        Product::Generic => "generic",
        Product::AzureKeyvault => "Azure Key Vault",
    }
}

fn severity_id(severity: Severity) -> u32 {
    match severity {
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

impl<'a> EnrichedEvent<'a> {
    /// Builds the record of `event`, with the app it resolved to and the findings it raised.
    pub fn new(event: &'a NormalizedEvent, app: Option<&'a App>, findings: &'a [Flag]) -> Self {
        let (class_name, category_uid, category_name) = class_names(event.class_uid);
        let activity_id = activity_id(event);
        let (status, status_id) = match event.outcome {
            Outcome::Success => ("Success", 1),
            Outcome::Failure => ("Failure", 2),
            Outcome::Unknown => ("Unknown", 0),
        };
        let identity = event.identity.as_ref();
        let matched = identity.and_then(|i| i.matched.as_ref());
        let severity_id = findings
            .iter()
            .filter(|f| !f.suppressed)
            .map(|f| severity_id(f.severity))
            .max()
            .unwrap_or(1);
        let log_name = match &event.origin {
            Some(Origin::Kafka { topic, .. }) => Some(topic.as_str()),
            Some(Origin::File { path, .. }) => Some(path.as_str()),
            None => None,
        };
        let location =
            (event.src_country.is_some() || event.src_region.is_some()).then_some(Location {
                country: event.src_country.as_deref(),
                region: event.src_region.as_deref(),
            });
        let src_endpoint = (event.src_ip.is_some() || location.is_some()).then_some(SrcEndpoint {
            ip: event.src_ip.as_deref(),
            location,
        });
        let cloud =
            (event.cloud_region.is_some() || event.cloud_account.is_some()).then(|| Cloud {
                provider: match event.product {
                    Product::Cloudtrail => "AWS",
                    Product::Entra | Product::AzureKeyvault => "Azure",
                    _ => "unknown",
                },
                region: event.cloud_region.as_deref(),
                account: event.cloud_account.as_deref().map(|uid| Uid { uid }),
            });
        let mut resources: Vec<Resource<'a>> = Vec::new();
        if event.class_uid != 4002 {
            resources.extend(event.resource.as_deref().map(|uid| Resource { uid }));
        }
        resources.extend(event.resources.iter().map(|uid| Resource { uid }));
        let traffic = (event.bytes_in.is_some() || event.bytes_out.is_some()).then_some(Traffic {
            bytes_in: event.bytes_in,
            bytes_out: event.bytes_out,
        });
        let enrichments = app
            .map(|app| Enrichment {
                name: "micro_app",
                value: &app.id,
                kind: "appwarden.registry",
                data: AppData {
                    id: &app.id,
                    name: &app.name,
                    owner: &app.owner,
                    escalation: app.escalation.as_deref(),
                    team: app.team.as_deref(),
                    risk_tier: app.risk_tier,
                    risk_score: app.risk.score(),
                    data_classes: &app.data_classes,
                },
            })
            .into_iter()
            .collect();
        EnrichedEvent {
            class_uid: event.class_uid,
            class_name,
            category_uid,
            category_name,
            activity_id,
            activity_name: &event.activity,
            type_uid: event.class_uid * 100 + activity_id,
            severity_id,
            time: event.time.timestamp_millis(),
            status,
            status_id,
            status_code: event.status_code.as_deref(),
            metadata: Metadata {
                version: OCSF_VERSION,
                product: ProductInfo {
                    name: product_name(event.product),
                    vendor_name: vendor_name(event.product),
                },
                uid: event.vendor_event_id.as_deref(),
                logged_time: event.observed_time.timestamp_millis(),
                log_name,
            },
            actor: Actor {
                user: User {
                    name: &event.actor.raw,
                    uid: matched.map_or(event.actor.raw.as_str(), |m| m.value.as_str()),
                    type_name: matched
                        .or(event.actor.refs.first())
                        .map(|r| r.kind.as_str()),
                },
                session: event.session_id.as_deref().map(|uid| Uid { uid }),
                app_uid: app.map(|a| a.id.as_str()),
                app_name: app.map(|a| a.name.as_str()),
            },
            src_endpoint,
            dst_endpoint: event.dst_host.as_deref().map(|hostname| DstEndpoint {
                hostname,
                port: event.dst_port,
            }),
            cloud,
            api: (event.class_uid == 6003).then_some(Api {
                operation: &event.activity,
            }),
            http_request: (event.class_uid == 4002).then_some(HttpRequest {
                http_method: event.http_method.as_deref(),
                url: Url {
                    hostname: event.dst_host.as_deref(),
                    port: event.dst_port,
                    path: event.resource.as_deref(),
                },
            }),
            resources,
            traffic,
            enrichments,
            unmapped: Unmapped {
                appwarden: Ours {
                    category: event.category,
                    source_kind: event.source_kind,
                    product: event.product,
                    actor_type: event.actor.actor_type,
                    identity,
                    findings,
                    token_id: event.token_id.as_deref(),
                    issued_token_id: event.issued_token_id.as_deref(),
                    target_principal: event.target_principal.as_deref(),
                    origin: event.origin.as_ref(),
                },
            },
            raw_data: event.raw_data.as_deref(),
            raw_data_truncated: false,
            raw_data_bytes: None,
        }
    }

    /// The vendor record as the record holds it now.
    pub fn raw_data(&self) -> Option<&'a str> {
        self.raw_data
    }

    /// Keeps only `prefix` of the vendor record, marked as cut, with the whole length.
    pub fn cut_raw_data(&mut self, prefix: &'a str) {
        if !self.raw_data_truncated {
            self.raw_data_bytes = self.raw_data.map(str::len);
        }
        self.raw_data = Some(prefix);
        self.raw_data_truncated = true;
    }

    /// The Kafka key: the identity key, so one identity's events stay in order on one partition.
    pub fn key(event: &NormalizedEvent) -> &str {
        event
            .identity
            .as_ref()
            .map_or("anonymous", |i| i.key.as_str())
    }
}
