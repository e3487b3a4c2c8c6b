//! Envoy / Istio JSON access logs (Istio's default JSON keys) into egress-request events.
//!
//! One JSON object per record, with Istio's default keys (`start_time`, `method`,
//! `path`, `response_code`, `response_flags`, `authority`, `upstream_cluster`, …).
//! Values may be JSON `null` or `-` (both mean absent), and numbers may be written
//! as strings (`"response_code": "200"`); both forms are accepted.
//!
//! | event field | from |
//! |---|---|
//! | `time` | `start_time` (RFC 3339; epoch seconds/ms also accepted) |
//! | `activity`, `http_method` | `method`; with no method, `TCP` when `protocol` is absent (TCP proxy), else `UNKNOWN` |
//! | `actor` | `downstream_peer_uri_san`, `source_principal` (SPIFFE ids, gateway consumer), then the IP of `downstream_remote_address`, then the first `x_forwarded_for` entry (source IP) |
//! | `src_ip` | IP of `downstream_remote_address`, else first `x_forwarded_for` entry |
//! | `dst_host`, `dst_port` | `authority`; else `requested_server_name` (Istio's `outbound_.PORT_.SUBSET_.HOST` form is unpacked); else the host of an `outbound\|PORT\|\|HOST` `upstream_cluster`; else, for `PassthroughCluster`, `upstream_host`. With no port in the authority, the cluster's port is used when the cluster names the same host |
//! | `resource` | `path` without its query string |
//! | `status_code` | `response_code`, followed by `response_flags` when not `-` (`"503 UF"`, `"0 UF"`); the flags alone when there is no code |
//! | `outcome` | code 0: success without flags (a clean TCP session), failure with flags; 1–399 success; ≥ 400 failure; no code: failure with flags, else unknown |
//! | `bytes_in`, `bytes_out` | `bytes_received`, `bytes_sent` |
//! | `vendor_event_id` | `request_id` |

use std::borrow::Cow;

use serde::Deserialize;

use super::fields::{Flex, opt_str, present, reject_array};
use super::{DecodeError, Format};
use crate::event::{Category, NormalizedEvent, Outcome, PrincipalKind, Product, split_host_port};

const FORMAT: Format = Format::Envoy;

/// The Istio access-log keys this decoder reads; everything else is skipped.
/// The text decoder ([`super::envoy_text`]) fills the same record from a line.
#[derive(Deserialize, Default)]
pub(super) struct Record<'a> {
    #[serde(borrow)]
    pub(super) start_time: Option<Flex<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub(super) method: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub(super) path: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub(super) protocol: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) response_code: Option<Flex<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub(super) response_flags: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) bytes_received: Option<Flex<'a>>,
    #[serde(borrow)]
    pub(super) bytes_sent: Option<Flex<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub(super) upstream_host: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub(super) upstream_cluster: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub(super) authority: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub(super) requested_server_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub(super) downstream_remote_address: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub(super) x_forwarded_for: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub(super) request_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub(super) downstream_peer_uri_san: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub(super) source_principal: Option<Cow<'a, str>>,
}

/// Port and host of an Istio cluster name `outbound|PORT|SUBSET|HOST`.
fn outbound_cluster(cluster: &str) -> Option<(Option<u16>, &str)> {
    let mut parts = cluster.splitn(4, '|');
    if parts.next()? != "outbound" {
        return None;
    }
    let port = parts.next()?.parse().ok();
    let _subset = parts.next()?;
    let host = parts.next()?;
    (!host.is_empty()).then_some((port, host))
}

/// Port and host of Istio's mTLS SNI `outbound_.PORT_.SUBSET_.HOST`.
fn outbound_sni(sni: &str) -> Option<(Option<u16>, &str)> {
    let mut parts = sni.splitn(4, "_.");
    if parts.next()? != "outbound" {
        return None;
    }
    let port = parts.next()?.parse().ok();
    let _subset = parts.next()?;
    let host = parts.next()?;
    (!host.is_empty()).then_some((port, host))
}

/// Decodes one Envoy/Istio JSON access-log record.
pub fn decode(payload: &[u8], out: &mut Vec<NormalizedEvent>) -> Result<(), DecodeError> {
    reject_array(FORMAT, payload)?;
    let r: Record<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::from_json(FORMAT, e))?;
    out.push(event(&r, FORMAT)?);
    Ok(())
}

/// The event of one access-log record; `format` names the decoder in errors.
pub(super) fn event(r: &Record<'_>, format: Format) -> Result<NormalizedEvent, DecodeError> {
    let time = match &r.start_time {
        Some(t) => t.to_time(format)?,
        None => {
            return Err(DecodeError::BadTime {
                format,
                detail: "no start_time".into(),
            });
        }
    };

    let method = present(&r.method);
    let activity = match (method, present(&r.protocol)) {
        (Some(m), _) => m,
        (None, None) => "TCP",
        (None, Some(_)) => "UNKNOWN",
    };
    let mut event = NormalizedEvent::new(time, Product::Envoy, Category::EgressRequest, activity);
    event.http_method = method.map(str::to_string);

    // Actor: workload identity first, then network addresses.
    for san in [
        present(&r.downstream_peer_uri_san),
        present(&r.source_principal),
    ]
    .into_iter()
    .flatten()
    {
        event.actor.push(PrincipalKind::GatewayConsumer, san);
    }
    let remote_ip = present(&r.downstream_remote_address)
        .map(|a| split_host_port(a).0)
        .filter(|ip| !ip.is_empty());
    let forwarded_ip = present(&r.x_forwarded_for)
        .and_then(|xff| xff.split(',').next())
        .map(str::trim)
        .filter(|ip| !ip.is_empty() && *ip != "-");
    if let Some(ip) = &remote_ip {
        event.actor.push(PrincipalKind::SourceIp, ip);
    }
    if let Some(ip) = forwarded_ip {
        event.actor.push(PrincipalKind::SourceIp, ip);
    }
    event.src_ip = remote_ip.or_else(|| forwarded_ip.map(str::to_string));

    // Destination: what the client asked for, most explicit first.
    let cluster_name = present(&r.upstream_cluster);
    let cluster = cluster_name.and_then(outbound_cluster);
    let destination = if let Some(authority) = present(&r.authority) {
        Some(split_host_port(authority))
    } else if let Some(sni) = present(&r.requested_server_name) {
        Some(match outbound_sni(sni) {
            Some((port, host)) => (host.to_ascii_lowercase(), port),
            None => (sni.to_ascii_lowercase(), None),
        })
    } else if let Some((port, host)) = cluster {
        Some((host.to_ascii_lowercase(), port))
    } else if cluster_name == Some("PassthroughCluster") {
        present(&r.upstream_host).map(split_host_port)
    } else {
        None
    };
    if let Some((host, port)) = destination.filter(|(host, _)| !host.is_empty()) {
        let cluster_port = cluster
            .filter(|(_, cluster_host)| cluster_host.eq_ignore_ascii_case(&host))
            .and_then(|(port, _)| port);
        event.dst_port = port.or(cluster_port);
        event.dst_host = Some(host);
    }

    event.resource = present(&r.path)
        .and_then(|p| p.split(['?', '#']).next())
        .filter(|p| !p.is_empty())
        .map(str::to_string);

    let code = r.response_code.as_ref().and_then(Flex::as_u64);
    let flags = present(&r.response_flags);
    event.outcome = match (code, flags) {
        (Some(0), None) => Outcome::Success,
        (Some(0), Some(_)) => Outcome::Failure,
        (Some(c), _) if c < 400 => Outcome::Success,
        (Some(_), _) => Outcome::Failure,
        (None, Some(_)) => Outcome::Failure,
        (None, None) => Outcome::Unknown,
    };
    event.status_code = match (code, flags) {
        (Some(c), Some(f)) => Some(format!("{c} {f}")),
        (Some(c), None) => Some(c.to_string()),
        (None, Some(f)) => Some(f.to_string()),
        (None, None) => None,
    };

    event.bytes_in = r.bytes_received.as_ref().and_then(Flex::as_u64);
    event.bytes_out = r.bytes_sent.as_ref().and_then(Flex::as_u64);
    event.vendor_event_id = present(&r.request_id).map(str::to_string);
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testing::{self, Documented};

    const FIXTURE: Documented = Documented {
        name: "envoy/documented.ndjson",
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
            assert_eq!(e.product, Product::Envoy);
            assert_eq!(e.category, Category::EgressRequest);
            assert_eq!(e.class_uid, 4002);
            assert!(e.src_ip.is_some(), "{line}");
            assert!(!e.actor.is_empty(), "{line}");
            assert!(e.dst_host.is_some(), "{line}");
            assert!(e.status_code.is_some(), "{line}");
        }
    }

    #[test]
    fn auto_detects_every_documented_record() {
        FIXTURE.assert_auto_detects(Product::Envoy);
    }

    #[test]
    fn http_through_egress_gateway_uses_authority() {
        let e = FIXTURE.event_for("6f1c2f0e-8d7b-4c4a-9d0e-1b2a3c4d5e01");
        assert_eq!(e.time.to_rfc3339(), "2026-03-02T09:15:27.481+00:00");
        assert_eq!(e.activity, "GET");
        assert_eq!(e.http_method.as_deref(), Some("GET"));
        assert_eq!(e.dst_host.as_deref(), Some("edition.cnn.com"));
        // No port in the authority; the cluster names the same host.
        assert_eq!(e.dst_port, Some(443));
        assert_eq!(e.resource.as_deref(), Some("/politics"));
        assert_eq!(e.status_code.as_deref(), Some("200"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.bytes_in, Some(0));
        assert_eq!(e.bytes_out, Some(1_048_211));
        assert_eq!(e.src_ip.as_deref(), Some("10.244.1.12"));
        assert_eq!(
            e.actor.raw,
            "spiffe://cluster.local/ns/reports/sa/report-builder"
        );
        assert_eq!(e.actor.refs.len(), 2);
        assert_eq!(e.actor.refs[0].kind, PrincipalKind::GatewayConsumer);
        assert_eq!(e.actor.refs[1].kind, PrincipalKind::SourceIp);
        assert_eq!(e.actor.refs[1].value, "10.244.1.12");
        assert_eq!(
            e.vendor_event_id.as_deref(),
            Some("6f1c2f0e-8d7b-4c4a-9d0e-1b2a3c4d5e01")
        );
    }

    #[test]
    fn sidecar_request_to_gateway_keeps_external_authority_and_strips_query() {
        let e = FIXTURE.event_for("6f1c2f0e-8d7b-4c4a-9d0e-1b2a3c4d5e02");
        assert_eq!(e.activity, "POST");
        assert_eq!(e.dst_host.as_deref(), Some("api.openai.com"));
        // The cluster is the egress gateway, not the authority: its port is not used.
        assert_eq!(e.dst_port, None);
        assert_eq!(e.resource.as_deref(), Some("/v1/chat/completions"));
        assert_eq!(e.bytes_in, Some(2_381));
        assert_eq!(e.actor.raw, "10.244.1.12");
        assert_eq!(e.actor.refs[0].kind, PrincipalKind::SourceIp);
    }

    #[test]
    fn tls_passthrough_uses_sni_and_cluster_port() {
        let e = FIXTURE.event_for("\"requested_server_name\":\"api.example.com\"");
        assert_eq!(e.activity, "TCP");
        assert_eq!(e.http_method, None);
        assert_eq!(e.dst_host.as_deref(), Some("api.example.com"));
        assert_eq!(e.dst_port, Some(443));
        assert_eq!(e.resource, None);
        assert_eq!(e.status_code.as_deref(), Some("0"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.bytes_in, Some(5_402));
        assert_eq!(e.bytes_out, Some(48_177));
        assert_eq!(e.vendor_event_id, None);
        assert_eq!(e.src_ip.as_deref(), Some("10.244.2.31"));
    }

    #[test]
    fn upstream_failure_keeps_flags_in_status() {
        let e = FIXTURE.event_for("6f1c2f0e-8d7b-4c4a-9d0e-1b2a3c4d5e04");
        assert_eq!(e.status_code.as_deref(), Some("503 UF"));
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(e.dst_host.as_deref(), Some("api.partner.example"));
        assert_eq!(e.dst_port, Some(8443));
    }

    #[test]
    fn tcp_sessions_with_code_zero() {
        let clean = FIXTURE.event_for("outbound|5432||db.external.example");
        assert_eq!(clean.activity, "TCP");
        assert_eq!(clean.status_code.as_deref(), Some("0"));
        assert_eq!(clean.outcome, Outcome::Success);
        assert_eq!(clean.dst_host.as_deref(), Some("db.external.example"));
        assert_eq!(clean.dst_port, Some(5432));

        let failed = FIXTURE.event_for("outbound|6379||cache.external.example");
        assert_eq!(failed.status_code.as_deref(), Some("0 UF"));
        assert_eq!(failed.outcome, Outcome::Failure);
        assert_eq!(failed.dst_port, Some(6379));
    }

    #[test]
    fn numbers_written_as_strings_and_forwarded_client() {
        let e = FIXTURE.event_for("6f1c2f0e-8d7b-4c4a-9d0e-1b2a3c4d5e08");
        assert_eq!(e.status_code.as_deref(), Some("200"));
        assert_eq!(e.bytes_in, Some(0));
        assert_eq!(e.bytes_out, Some(615));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.actor.refs[0].value, "10.244.3.9");
        assert_eq!(e.actor.refs[1].value, "203.0.113.50");
    }

    #[test]
    fn passthrough_cluster_and_blackhole() {
        let passthrough = FIXTURE.event_for("\"upstream_cluster\":\"PassthroughCluster\"");
        assert_eq!(passthrough.dst_host.as_deref(), Some("104.18.7.192"));
        assert_eq!(passthrough.dst_port, Some(443));

        let blocked = FIXTURE.event_for("BlackHoleCluster");
        assert_eq!(blocked.dst_host.as_deref(), Some("pastebin.com"));
        assert_eq!(blocked.status_code.as_deref(), Some("502"));
        assert_eq!(blocked.outcome, Outcome::Failure);
    }

    #[test]
    fn connect_from_ipv6_client() {
        let e = FIXTURE.event_for("\"method\":\"CONNECT\"");
        assert_eq!(e.activity, "CONNECT");
        assert_eq!(e.dst_host.as_deref(), Some("api.github.com"));
        assert_eq!(e.dst_port, Some(443));
        assert_eq!(e.src_ip.as_deref(), Some("2001:db8::17"));
        assert_eq!(e.resource, None);
    }

    #[test]
    fn no_route_is_failure_with_flag() {
        let e = FIXTURE.event_for("6f1c2f0e-8d7b-4c4a-9d0e-1b2a3c4d5e11");
        assert_eq!(e.status_code.as_deref(), Some("404 NR"));
        assert_eq!(e.outcome, Outcome::Failure);
    }

    #[test]
    fn istio_sni_and_cluster_forms() {
        assert_eq!(
            outbound_cluster("outbound|443||api.example.com"),
            Some((Some(443), "api.example.com"))
        );
        assert_eq!(
            outbound_cluster("outbound|8080|v2|svc.ns.svc.cluster.local"),
            Some((Some(8080), "svc.ns.svc.cluster.local"))
        );
        assert_eq!(outbound_cluster("inbound|8000||"), None);
        assert_eq!(outbound_cluster("outbound|443||"), None);
        assert_eq!(
            outbound_sni("outbound_.443_._.api.example.com"),
            Some((Some(443), "api.example.com"))
        );
        assert_eq!(outbound_sni("api.example.com"), None);
    }

    #[test]
    fn malformed_records_say_why() {
        assert_eq!(
            reason(br#"{"start_time":"2026-03-02T09:15:27.481Z","method":"#),
            "bad_json"
        );
        assert_eq!(
            reason(br#"{"method":"GET","response_code":200}"#),
            "bad_time"
        );
        assert_eq!(
            reason(br#"{"start_time":null,"response_code":200}"#),
            "bad_time"
        );
        assert_eq!(
            reason(br#"{"start_time":"yesterday","response_code":200}"#),
            "bad_time"
        );
        assert_eq!(
            reason(br#"{"start_time":{},"response_code":200}"#),
            "wrong_shape"
        );
        assert_eq!(
            reason(br#"{"start_time":"2026-03-02T09:15:27Z","response_code":[200]}"#),
            "wrong_shape"
        );
        assert_eq!(
            reason(br#"{"start_time":"2026-03-02T09:15:27Z","method":5}"#),
            "wrong_shape"
        );
        assert_eq!(reason(br#"["2026-03-02T09:15:27Z","GET"]"#), "wrong_shape");
        assert_eq!(reason(b"5"), "wrong_shape");
    }

    #[test]
    fn strings_are_borrowed_from_the_payload() {
        let line = br#"{"start_time":"2026-03-02T09:15:27Z","method":"GET","response_code":"200"}"#;
        let r: Record<'_> = serde_json::from_slice(line).unwrap();
        assert!(matches!(r.method, Some(Cow::Borrowed("GET"))));
        assert!(matches!(
            r.response_code,
            Some(Flex::Text(Cow::Borrowed("200")))
        ));
    }

    #[test]
    fn dashes_and_nulls_are_absent() {
        let line = br#"{"start_time":"2026-03-02T09:15:27Z","method":"-","path":null,"protocol":"-",
            "response_code":"-","response_flags":"-","authority":"-","requested_server_name":null,
            "upstream_cluster":"-","downstream_remote_address":"-","x_forwarded_for":"-","request_id":"-"}"#;
        let mut out = Vec::new();
        decode(line, &mut out).unwrap();
        let e = &out[0];
        assert_eq!(e.activity, "TCP");
        assert_eq!(e.http_method, None);
        assert_eq!(e.dst_host, None);
        assert_eq!(e.src_ip, None);
        assert!(e.actor.is_empty());
        assert_eq!(e.status_code, None);
        assert_eq!(e.outcome, Outcome::Unknown);
        assert_eq!(e.vendor_event_id, None);
    }
}
