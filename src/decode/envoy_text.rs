//! Envoy's default text access-log format (what Envoy and Istio write unless told
//! to write JSON) into egress-request events, with the same mapping as [`super::envoy`].
//!
//! The default line ([`layout::ENVOY_DEFAULT`]):
//! `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
//! %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
//! "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"`,
//! e.g. `[2026-03-02T09:15:27.481Z] "GET /politics HTTP/1.1" 200 - 0 1048211 187 185 "10.244.1.12"
//! "curl/8.5.0" "6f1c…" "edition.cnn.com" "151.101.195.5:443"`. A line may come inside a
//! Docker / Kubernetes JSON wrapper (`{"log":"<line>\n","stream":"stdout","time":"…"}`).
//! Istio's default text format and custom Envoy format strings are layouts
//! (`kafka.topics[].layout = "istio"`, see [`layout`]).
//!
//! | event field | from |
//! |---|---|
//! | `time` | `START_TIME` |
//! | `activity`, `http_method` | `:METHOD`; `TCP` for a TCP proxy line (`"- - -"`) |
//! | `actor`, `src_ip` | `DOWNSTREAM_PEER_URI_SAN` (gateway consumer) and `DOWNSTREAM_REMOTE_ADDRESS` when the layout has them, else the first `X-FORWARDED-FOR` entry (source IP) |
//! | `dst_host`, `dst_port` | `:AUTHORITY`, else `REQUESTED_SERVER_NAME` / `UPSTREAM_CLUSTER` / `UPSTREAM_HOST` as for JSON records |
//! | `resource` | the path without its query string |
//! | `status_code`, `outcome` | `RESPONSE_CODE` and `RESPONSE_FLAGS`, as for JSON records |
//! | `bytes_in`, `bytes_out` | `BYTES_RECEIVED`, `BYTES_SENT` |
//! | `vendor_event_id` | `X-REQUEST-ID` |

use std::sync::OnceLock;

use super::envoy::{self, Record};
use super::fields::Flex;
use super::layout::{self, Field, Layout, Values};
use super::{DecodeError, Format};
use crate::event::NormalizedEvent;

const FORMAT: Format = Format::EnvoyText;

/// The default layout, parsed once.
fn default_layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| Layout::parse("envoy").expect("the built-in envoy layout parses"))
}

/// Whether `line` starts like an Envoy text line: `[<digit>…] "`.
pub(crate) fn looks_like_line(line: &[u8]) -> bool {
    let line = line.trim_ascii_start();
    if line.len() < 4 || line[0] != b'[' || !line[1].is_ascii_digit() {
        return false;
    }
    line.iter()
        .take(64)
        .position(|b| *b == b']')
        .is_some_and(|close| line.get(close + 1..close + 3) == Some(b" \""))
}

/// Decodes Envoy default-format text: one event per non-blank line.
pub fn decode(payload: &[u8], out: &mut Vec<NormalizedEvent>) -> Result<(), DecodeError> {
    layout::decode(default_layout(), payload, out)
}

/// Builds the event of a line in an Envoy layout (the default or a configured one).
pub(super) fn from_values(mut values: Values<'_>) -> Result<NormalizedEvent, DecodeError> {
    let record = Record {
        start_time: values.take(Field::StartTime).map(Flex::Text),
        method: values.take(Field::Method),
        path: values.take(Field::Path),
        protocol: values.take(Field::Protocol),
        response_code: values.take(Field::Status).map(Flex::Text),
        response_flags: values.take(Field::Flags),
        bytes_received: values.take(Field::BytesIn).map(Flex::Text),
        bytes_sent: values.take(Field::BytesOut).map(Flex::Text),
        upstream_host: values.take(Field::UpstreamHost),
        upstream_cluster: values.take(Field::UpstreamCluster),
        authority: values.take(Field::Authority),
        requested_server_name: values.take(Field::Sni),
        downstream_remote_address: values.take(Field::Client),
        x_forwarded_for: values.take(Field::ForwardedFor),
        request_id: values.take(Field::RequestId),
        downstream_peer_uri_san: values.take(Field::PeerUriSan),
        source_principal: None,
    };
    if let Some(code) = &record.response_code
        && code.as_u64().is_none()
    {
        return Err(DecodeError::shape(FORMAT, "RESPONSE_CODE is not a number"));
    }
    envoy::event(&record, FORMAT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testing::{self, Documented, refs};
    use crate::decode::{DecodeOptions, decode as decode_any};
    use crate::event::{Category, Outcome, PrincipalKind, Product};

    const FIXTURE: Documented = Documented {
        name: "envoy/documented_text.log",
        decode,
    };

    #[test]
    fn every_documented_line_decodes() {
        let events = FIXTURE.events();
        assert!((6..=15).contains(&events.len()), "{} lines", events.len());
        for (line, e) in &events {
            assert_eq!(e.product, Product::Envoy, "{line}");
            assert_eq!(e.category, Category::EgressRequest);
            assert_eq!(e.class_uid, 4002);
            assert!(e.status_code.is_some(), "{line}");
        }
        let whole = std::fs::read(testing::fixture(FIXTURE.name)).unwrap();
        let mut out = Vec::new();
        decode(&whole, &mut out).unwrap();
        assert_eq!(out.len(), events.len());
    }

    #[test]
    fn auto_detects_every_documented_line() {
        FIXTURE.assert_auto_detects(Product::Envoy);
    }

    #[test]
    fn default_line_maps_like_the_json_record() {
        let e = FIXTURE.event_for("6f1c2f0e-8d7b-4c4a-9d0e-1b2a3c4d5e21");
        assert_eq!(e.time.to_rfc3339(), "2026-03-02T09:15:27.481+00:00");
        assert_eq!(e.activity, "GET");
        assert_eq!(e.http_method.as_deref(), Some("GET"));
        assert_eq!(e.dst_host.as_deref(), Some("edition.cnn.com"));
        assert_eq!(e.dst_port, None);
        assert_eq!(e.resource.as_deref(), Some("/politics"));
        assert_eq!(e.status_code.as_deref(), Some("200"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.bytes_in, Some(0));
        assert_eq!(e.bytes_out, Some(1_048_211));
        assert_eq!(e.src_ip.as_deref(), Some("10.244.1.12"));
        assert_eq!(refs(&e), [(PrincipalKind::SourceIp, "10.244.1.12")]);
        assert_eq!(
            e.vendor_event_id.as_deref(),
            Some("6f1c2f0e-8d7b-4c4a-9d0e-1b2a3c4d5e21")
        );
    }

    #[test]
    fn flags_query_strings_and_forwarded_chains() {
        let e = FIXTURE.event_for("6f1c2f0e-8d7b-4c4a-9d0e-1b2a3c4d5e22");
        assert_eq!(e.activity, "POST");
        assert_eq!(e.resource.as_deref(), Some("/v1/chat/completions"));
        assert_eq!(e.dst_host.as_deref(), Some("api.openai.com"));
        assert_eq!(e.src_ip.as_deref(), Some("203.0.113.50"));

        let failed = FIXTURE.event_for("6f1c2f0e-8d7b-4c4a-9d0e-1b2a3c4d5e23");
        assert_eq!(failed.status_code.as_deref(), Some("503 UF,URX"));
        assert_eq!(failed.outcome, Outcome::Failure);
        assert_eq!(failed.dst_host.as_deref(), Some("api.partner.example"));
        assert_eq!(failed.dst_port, Some(8443));
    }

    #[test]
    fn tcp_proxy_line_without_request() {
        let e = FIXTURE.event_for("\"- - -\" 0 UF");
        assert_eq!(e.activity, "TCP");
        assert_eq!(e.http_method, None);
        assert_eq!(e.status_code.as_deref(), Some("0 UF"));
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(e.resource, None);
        // No authority: PassthroughCluster is not in the default line, so no destination.
        assert_eq!(e.dst_host, None);
        assert!(e.actor.is_empty());
    }

    #[test]
    fn docker_json_wrapper() {
        let e = FIXTURE.event_for("\"stream\":\"stdout\"");
        assert_eq!(e.activity, "GET");
        assert_eq!(e.dst_host.as_deref(), Some("api.github.com"));
        assert_eq!(e.time.to_rfc3339(), "2026-03-02T09:16:02.001+00:00");
        assert_eq!(e.status_code.as_deref(), Some("404 NR"));
    }

    #[test]
    fn istio_default_text_layout() {
        let layout = std::sync::Arc::new(Layout::parse("istio").unwrap());
        let line = concat!(
            r#"[2026-03-02T09:17:00.409Z] "GET /status/418 HTTP/1.1" 418 - via_upstream - "-" "#,
            r#"0 135 4 4 "-" "curl/8.5.0" "84961386-6d84-929d-98bd-c5aee93b5c88" "httpbin:8000" "#,
            r#""10.44.1.27:80" outbound|8000||httpbin.foo.svc.cluster.local 10.44.1.23:37652 "#,
            r#"10.0.45.184:8000 10.44.1.23:46520 - default"#
        );
        let options = DecodeOptions {
            layout: Some(layout),
            ..DecodeOptions::default()
        };
        let mut out = Vec::new();
        decode_any(Format::EnvoyText, line.as_bytes(), &options, &mut out).unwrap();
        let e = &out[0];
        assert_eq!(e.product, Product::Envoy);
        assert_eq!(e.status_code.as_deref(), Some("418"));
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(e.dst_host.as_deref(), Some("httpbin"));
        assert_eq!(e.dst_port, Some(8000));
        assert_eq!(e.src_ip.as_deref(), Some("10.44.1.23"));
        assert_eq!(e.bytes_out, Some(135));
    }

    #[test]
    fn malformed_lines_are_refused() {
        testing::assert_reasons(
            decode,
            &[
                (&b"[2026-03-02T09:15:27.481Z] GET /x"[..], "wrong_shape"),
                (
                    &br#"[yesterday] "GET / HTTP/1.1" 200 - 0 1 2 3 "-" "-" "-" "a" "-""#[..],
                    "bad_time",
                ),
                (
                    &br#"[2026-03-02T09:15:27.481Z] "GET / HTTP/1.1" OK - 0 1 2 3 "-" "-" "-" "a" "-""#[..],
                    "wrong_shape",
                ),
                (
                    &br#"[2026-03-02T09:15:27.481Z] "GET / HTTP/1.1" 200 - 0 1 2 3 "-" "unclosed"#[..],
                    "wrong_shape",
                ),
                (&br#"{"log": 5, "stream": "stdout"}"#[..], "wrong_shape"),
                (&br#"{"log": "[2026"#[..], "bad_json"),
                (&b"\xff\xfe"[..], "not_utf8"),
                (&b" \n "[..], "empty"),
            ],
        );
    }

    #[test]
    fn recognises_only_envoy_like_lines() {
        assert!(looks_like_line(
            br#"[2016-04-15T20:17:00.310Z] "POST /api/v1/locations HTTP/2" 204 -"#
        ));
        assert!(!looks_like_line(b"[1, 2, 3]"));
        assert!(!looks_like_line(b"[{\"a\":1}]"));
        assert!(!looks_like_line(b"[2016"));
    }
}
