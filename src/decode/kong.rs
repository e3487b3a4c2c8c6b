//! Kong Gateway log plugins' JSON (http-log, file-log, tcp-log, … serializer output) into egress-request events.
//!
//! One JSON object per record, as Kong's log serializer writes it. Older Kong
//! versions write `request.size`/`response.size` as strings; both forms are accepted.
//!
//! | event field | from |
//! |---|---|
//! | `time` | `started_at` (epoch milliseconds) |
//! | `activity`, `http_method` | `request.method` (`UNKNOWN` when absent) |
//! | `actor` | `consumer.username`, `consumer.custom_id`, `consumer.id`, `authenticated_entity.id` (gateway consumer), then `client_ip` (source IP) |
//! | `token_id` | `authenticated_entity.id` (the credential the consumer authenticated with) |
//! | `src_ip` | `client_ip` |
//! | `dst_host`, `dst_port` | `service.host`, `service.port`; else host and port of `request.url` |
//! | `resource` | `request.uri` (else the path of `request.url`) without the query string |
//! | `status_code`, `outcome` | `response.status`; success below 400, failure from 400, unknown without a status |
//! | `bytes_in`, `bytes_out` | `request.size`, `response.size` |
//! | `vendor_event_id` | Kong's own request id: `request.id` (Kong ≥ 3.5) or the `x-kong-request-id` response header; else the request headers `kong-request-id` (correlation-id plugin) or `x-request-id` |

use std::borrow::Cow;

use serde::Deserialize;

use super::fields::{Flex, opt_str, present, reject_array};
use super::{DecodeError, Format};
use crate::event::{Category, NormalizedEvent, Outcome, PrincipalKind, Product, url_host_port};

const FORMAT: Format = Format::Kong;

/// The parts of Kong's log object this decoder reads; everything else is skipped.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    started_at: Option<Flex<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    client_ip: Option<Cow<'a, str>>,
    #[serde(borrow)]
    request: Option<Request<'a>>,
    #[serde(borrow)]
    response: Option<Response<'a>>,
    #[serde(borrow)]
    service: Option<Service<'a>>,
    #[serde(borrow)]
    consumer: Option<Consumer<'a>>,
    #[serde(borrow)]
    authenticated_entity: Option<Entity<'a>>,
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    uri: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    size: Option<Flex<'a>>,
    #[serde(borrow)]
    headers: Option<Headers<'a>>,
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow)]
    status: Option<Flex<'a>>,
    #[serde(borrow)]
    size: Option<Flex<'a>>,
    #[serde(borrow)]
    headers: Option<Headers<'a>>,
}

/// The request-id headers; Kong logs header names in lower case.
#[derive(Deserialize)]
struct Headers<'a> {
    #[serde(rename = "x-kong-request-id", borrow)]
    x_kong_request_id: Option<Header<'a>>,
    #[serde(rename = "kong-request-id", borrow)]
    kong_request_id: Option<Header<'a>>,
    #[serde(rename = "x-request-id", borrow)]
    x_request_id: Option<Header<'a>>,
}

/// A header value: Kong writes a repeated header as an array of its values.
#[derive(Deserialize)]
#[serde(untagged)]
enum Header<'a> {
    One(#[serde(borrow)] Cow<'a, str>),
    Many(#[serde(borrow)] Vec<Cow<'a, str>>),
}

impl Header<'_> {
    /// The first value, unless empty or `-`.
    fn first(&self) -> Option<&str> {
        let value = match self {
            Header::One(v) => v.as_ref(),
            Header::Many(vs) => vs.first()?.as_ref(),
        }
        .trim();
        (!value.is_empty() && value != "-").then_some(value)
    }
}

#[derive(Deserialize)]
struct Service<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    host: Option<Cow<'a, str>>,
    #[serde(borrow)]
    port: Option<Flex<'a>>,
}

#[derive(Deserialize)]
struct Consumer<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    username: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    custom_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Entity<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    id: Option<Cow<'a, str>>,
}

/// The path of an absolute URL, without query or fragment.
fn url_path(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let start = rest.find('/')?;
    rest.get(start..)?.split(['?', '#']).next()
}

/// Decodes one Kong log-plugin JSON record.
pub fn decode(payload: &[u8], out: &mut Vec<NormalizedEvent>) -> Result<(), DecodeError> {
    reject_array(FORMAT, payload)?;
    let r: Record<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::from_json(FORMAT, e))?;

    let time = match &r.started_at {
        Some(t) => t.to_time(FORMAT)?,
        None => {
            return Err(DecodeError::BadTime {
                format: FORMAT,
                detail: "no started_at".into(),
            });
        }
    };
    let request = r
        .request
        .as_ref()
        .ok_or_else(|| DecodeError::shape(FORMAT, "no `request` object"))?;

    let method = present(&request.method);
    let mut event = NormalizedEvent::new(
        time,
        Product::Kong,
        Category::EgressRequest,
        method.unwrap_or("UNKNOWN"),
    );
    event.http_method = method.map(str::to_string);

    if let Some(c) = &r.consumer {
        for form in [present(&c.username), present(&c.custom_id), present(&c.id)]
            .into_iter()
            .flatten()
        {
            event.actor.push(PrincipalKind::GatewayConsumer, form);
        }
    }
    let credential = r.authenticated_entity.as_ref().and_then(|e| present(&e.id));
    if let Some(id) = credential {
        event.actor.push(PrincipalKind::GatewayConsumer, id);
        event.token_id = Some(id.to_string());
    }
    let client_ip = present(&r.client_ip);
    if let Some(ip) = client_ip {
        event.actor.push(PrincipalKind::SourceIp, ip);
    }
    event.src_ip = client_ip.map(str::to_string);

    let url = present(&request.url);
    let service_host = r.service.as_ref().and_then(|s| present(&s.host));
    if let Some(host) = service_host {
        event.dst_host = Some(host.to_ascii_lowercase());
        event.dst_port = r
            .service
            .as_ref()
            .and_then(|s| s.port.as_ref())
            .and_then(Flex::as_u64)
            .and_then(|p| u16::try_from(p).ok());
    } else if let Some((host, port)) = url.and_then(url_host_port) {
        event.dst_host = Some(host);
        event.dst_port = port;
    }

    event.resource = present(&request.uri)
        .and_then(|uri| uri.split(['?', '#']).next())
        .or_else(|| url.and_then(url_path))
        .filter(|p| !p.is_empty())
        .map(str::to_string);

    let status = r
        .response
        .as_ref()
        .and_then(|resp| resp.status.as_ref())
        .and_then(Flex::as_u64);
    event.outcome = match status {
        Some(s) if s < 400 => Outcome::Success,
        Some(_) => Outcome::Failure,
        None => Outcome::Unknown,
    };
    event.status_code = status.map(|s| s.to_string());
    event.bytes_in = request.size.as_ref().and_then(Flex::as_u64);
    event.bytes_out = r
        .response
        .as_ref()
        .and_then(|resp| resp.size.as_ref())
        .and_then(Flex::as_u64);

    let request_headers = request.headers.as_ref();
    let response_headers = r.response.as_ref().and_then(|resp| resp.headers.as_ref());
    event.vendor_event_id = present(&request.id)
        .or_else(|| response_headers?.x_kong_request_id.as_ref()?.first())
        .or_else(|| request_headers?.kong_request_id.as_ref()?.first())
        .or_else(|| request_headers?.x_request_id.as_ref()?.first())
        .map(str::to_string);
    out.push(event);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testing::{self, Documented};

    const FIXTURE: Documented = Documented {
        name: "kong/documented.ndjson",
        decode,
    };

    fn reason(input: &[u8]) -> &'static str {
        testing::reason(decode, input)
    }

    #[test]
    fn every_documented_record_decodes() {
        let events = FIXTURE.events();
        assert!((8..=15).contains(&events.len()), "{} records", events.len());
        for (line, e) in &events {
            assert_eq!(e.product, Product::Kong);
            assert_eq!(e.category, Category::EgressRequest);
            assert_eq!(e.class_uid, 4002);
            assert!(e.http_method.is_some(), "{line}");
            assert!(e.src_ip.is_some(), "{line}");
            assert!(e.dst_host.is_some(), "{line}");
            assert!(e.status_code.is_some(), "{line}");
            assert!(e.vendor_event_id.is_some(), "{line}");
        }
    }

    #[test]
    fn auto_detects_every_documented_record() {
        FIXTURE.assert_auto_detects(Product::Kong);
    }

    #[test]
    fn authenticated_consumer() {
        let e = FIXTURE.event_for("8d3f0c6a9b2e4f1a8c7d6e5f4a3b2c01");
        assert_eq!(e.time.timestamp_millis(), 1_772_442_927_481);
        assert_eq!(e.activity, "GET");
        assert_eq!(e.http_method.as_deref(), Some("GET"));
        assert_eq!(e.actor.raw, "reports-bot");
        let forms: Vec<(PrincipalKind, &str)> = e
            .actor
            .refs
            .iter()
            .map(|r| (r.kind, r.value.as_str()))
            .collect();
        assert_eq!(
            forms,
            [
                (PrincipalKind::GatewayConsumer, "reports-bot"),
                (PrincipalKind::GatewayConsumer, "app-0042"),
                (
                    PrincipalKind::GatewayConsumer,
                    "5b0e8a3c-2f4d-4c71-9e1a-0d6b7c8e9f01"
                ),
                (
                    PrincipalKind::GatewayConsumer,
                    "a7c1e2d3-4b5f-4a60-8e9d-1c2b3a4f5e61"
                ),
                (PrincipalKind::SourceIp, "10.20.4.17"),
            ]
        );
        assert_eq!(
            e.token_id.as_deref(),
            Some("a7c1e2d3-4b5f-4a60-8e9d-1c2b3a4f5e61")
        );
        assert_eq!(e.src_ip.as_deref(), Some("10.20.4.17"));
        assert_eq!(e.dst_host.as_deref(), Some("api.openai.com"));
        assert_eq!(e.dst_port, Some(443));
        assert_eq!(e.resource.as_deref(), Some("/openai/v1/models"));
        assert_eq!(e.status_code.as_deref(), Some("200"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.bytes_in, Some(412));
        assert_eq!(e.bytes_out, Some(5_120));
        assert_eq!(
            e.vendor_event_id.as_deref(),
            Some("8d3f0c6a9b2e4f1a8c7d6e5f4a3b2c01")
        );
    }

    #[test]
    fn anonymous_request_has_only_the_client_ip() {
        let e = FIXTURE.event_for("8d3f0c6a9b2e4f1a8c7d6e5f4a3b2c02");
        assert_eq!(e.actor.refs.len(), 1);
        assert_eq!(e.actor.refs[0].kind, PrincipalKind::SourceIp);
        assert_eq!(e.actor.raw, "192.168.65.1");
        assert_eq!(e.token_id, None);
        assert_eq!(e.dst_host.as_deref(), Some("httpbin.org"));
        assert_eq!(e.dst_port, Some(80));
        assert_eq!(e.outcome, Outcome::Success);

        let rejected = FIXTURE.event_for("8d3f0c6a9b2e4f1a8c7d6e5f4a3b2c05");
        assert_eq!(rejected.actor.refs.len(), 1);
        assert_eq!(rejected.status_code.as_deref(), Some("401"));
        assert_eq!(rejected.outcome, Outcome::Failure);
    }

    #[test]
    fn server_errors_are_failures() {
        let bad_gateway = FIXTURE.event_for("8d3f0c6a9b2e4f1a8c7d6e5f4a3b2c03");
        assert_eq!(bad_gateway.activity, "POST");
        assert_eq!(bad_gateway.status_code.as_deref(), Some("502"));
        assert_eq!(bad_gateway.outcome, Outcome::Failure);
        assert_eq!(bad_gateway.actor.raw, "billing-sync");
        assert_eq!(bad_gateway.dst_host.as_deref(), Some("api.stripe.com"));

        let unavailable = FIXTURE.event_for("8d3f0c6a9b2e4f1a8c7d6e5f4a3b2c10");
        assert_eq!(unavailable.status_code.as_deref(), Some("503"));
        assert_eq!(unavailable.outcome, Outcome::Failure);
        assert_eq!(unavailable.dst_host.as_deref(), Some("payments-upstream"));
    }

    #[test]
    fn query_string_is_stripped_and_custom_id_alone_is_the_actor() {
        let e = FIXTURE.event_for("8d3f0c6a9b2e4f1a8c7d6e5f4a3b2c04");
        assert_eq!(e.resource.as_deref(), Some("/search/v1/query"));
        assert_eq!(e.actor.raw, "app-0077");
        assert_eq!(e.actor.refs[0].kind, PrincipalKind::GatewayConsumer);
    }

    #[test]
    fn rate_limited_consumer() {
        let e = FIXTURE.event_for("8d3f0c6a9b2e4f1a8c7d6e5f4a3b2c07");
        assert_eq!(e.status_code.as_deref(), Some("429"));
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(e.actor.raw, "scraper-test");
    }

    #[test]
    fn older_record_with_string_sizes_and_no_service() {
        let e = FIXTURE.event_for("\"api\":{");
        assert_eq!(e.bytes_in, Some(75));
        assert_eq!(e.bytes_out, Some(434));
        // No service: the destination comes from request.url.
        assert_eq!(e.dst_host.as_deref(), Some("httpbin.org"));
        assert_eq!(e.dst_port, Some(8000));
        assert_eq!(e.resource.as_deref(), Some("/get"));
        assert_eq!(e.actor.raw, "legacy-batch");
        assert_eq!(
            e.vendor_event_id.as_deref(),
            Some("0e6b7f8a-1c2d-4e3f-9a8b-7c6d5e4f3a2b#17")
        );
    }

    #[test]
    fn ipv6_client_and_request_id_header() {
        let e = FIXTURE.event_for("2001:db8:85a3::8a2e:370:7334");
        assert_eq!(e.src_ip.as_deref(), Some("2001:db8:85a3::8a2e:370:7334"));
        assert_eq!(e.activity, "PUT");
        assert_eq!(e.status_code.as_deref(), Some("201"));
        assert_eq!(e.vendor_event_id.as_deref(), Some("req-7a1f3c9e5b"));
    }

    #[test]
    fn no_route_matched() {
        let e = FIXTURE.event_for("8d3f0c6a9b2e4f1a8c7d6e5f4a3b2c09");
        assert_eq!(e.status_code.as_deref(), Some("404"));
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(e.dst_host.as_deref(), Some("gateway.corp.example"));
        assert_eq!(e.dst_port, Some(8443));
    }

    #[test]
    fn header_values_may_repeat() {
        let line = br#"{"started_at":1772442927481,"client_ip":"10.0.0.1",
            "request":{"method":"GET","uri":"/a","headers":{"x-request-id":["first","second"]}},
            "response":{"status":200}}"#;
        let mut out = Vec::new();
        decode(line, &mut out).unwrap();
        assert_eq!(out[0].vendor_event_id.as_deref(), Some("first"));
    }

    #[test]
    fn malformed_records_say_why() {
        assert_eq!(
            reason(br#"{"started_at":1772442927481,"request":{"method":"GET""#),
            "bad_json"
        );
        assert_eq!(
            reason(br#"{"started_at":"x","request":{"method":"GET"},"response":{"status":200}}"#),
            "bad_time"
        );
        assert_eq!(
            reason(br#"{"started_at":1772442927481,"request":5,"response":{"status":200}}"#),
            "wrong_shape"
        );
        assert_eq!(
            reason(br#"{"request":{"method":"GET"},"response":{"status":200}}"#),
            "bad_time"
        );
        assert_eq!(
            reason(br#"{"started_at":-5,"request":{"method":"GET"},"response":{"status":200}}"#),
            "bad_time"
        );
        assert_eq!(
            reason(br#"{"started_at":1772442927481,"response":{"status":200}}"#),
            "wrong_shape"
        );
        assert_eq!(
            reason(br#"{"started_at":1772442927481,"request":{"method":"GET"},"consumer":"bob"}"#),
            "wrong_shape"
        );
        assert_eq!(reason(br#"[{"started_at":1772442927481}]"#), "wrong_shape");
    }

    #[test]
    fn url_paths() {
        assert_eq!(url_path("http://h:8000/get?x=1"), Some("/get"));
        assert_eq!(url_path("https://h"), None);
        assert_eq!(url_path("/rel#frag"), Some("/rel"));
    }
}
