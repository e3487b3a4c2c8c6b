//! Squid native access-log lines (`logformat squid`) into egress-request events.
//!
//! A line is whitespace-separated (spaces or tabs, any number):
//! `time elapsed remotehost code/status bytes method URL [rfc931 [peerstatus/peerhost [type]]]`,
//! e.g. `1700000000.123  30012 10.1.2.3 TCP_TUNNEL/200 5120 CONNECT api.openai.com:443 alice HIER_DIRECT/104.18.7.192 -`.
//! The first seven fields are required. A payload holding several lines yields one
//! event per non-blank line, each with its own line as `raw_data`; if any line
//! fails, the whole payload fails.
//!
//! | event field | from |
//! |---|---|
//! | `time` | `time` (epoch seconds with a fraction, read exactly to the millisecond) |
//! | `activity` | `method` as written (`CONNECT`, `GET`, `NONE`, `-`) |
//! | `http_method` | `method`, unless `NONE` or `-` |
//! | `actor` | `rfc931` user (gateway consumer) when not `-`, then `remotehost` (source IP) |
//! | `src_ip` | `remotehost` |
//! | `dst_host`, `dst_port` | CONNECT: the `host:port` URL; otherwise the host and port of an absolute URL; none for `error:…` URLs |
//! | `resource` | the path of an absolute URL, without query string (none for CONNECT) |
//! | `status_code` | the HTTP status after `/` in `code/status` (`"403"`, `"0"`) |
//! | `outcome` | failure when the status is 0 or ≥ 400, or the code contains `DENIED`; else success |
//! | `bytes_out` | `bytes` (reply size sent to the client) |
//!
//! A `code/status` field without `/`, or whose status is not a number, makes the
//! line `wrong_shape` (it is not a native-format line); a non-numeric `bytes` is
//! left out rather than rejected.

use chrono::{DateTime, TimeDelta, Utc};

use super::layout::{Field, Values};
use super::{DecodeError, Format, epoch_time_int};
use crate::event::{
    Category, NormalizedEvent, Outcome, PrincipalKind, Product, split_host_port, url_host_port,
};

const FORMAT: Format = Format::Squid;

fn shape(detail: &'static str) -> DecodeError {
    DecodeError::shape(FORMAT, detail)
}

/// `seconds[.fraction]` read exactly (a float would turn `.123` into `.122999…`).
fn line_time(text: &str) -> Result<DateTime<Utc>, DecodeError> {
    let bad = || DecodeError::BadTime {
        format: FORMAT,
        detail: format!("`{}` is not epoch seconds", super::truncate(text, 64)),
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let seconds: i64 = whole.parse().map_err(|_| bad())?;
    if seconds >= 100_000_000_000 {
        // epoch_time_int would read this as milliseconds; Squid writes seconds.
        return Err(bad());
    }
    let mut nanos: i64 = 0;
    let mut scale: i64 = 100_000_000;
    for digit in fraction.bytes().take(9) {
        nanos += i64::from(digit - b'0') * scale;
        scale /= 10;
    }
    epoch_time_int(FORMAT, seconds)?
        .checked_add_signed(TimeDelta::nanoseconds(nanos))
        .ok_or_else(bad)
}

/// The path of an absolute URL, without query or fragment.
fn url_path(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let start = rest.find('/')?;
    rest.get(start..)?.split(['?', '#']).next()
}

/// The values of one access-log line that the event is built from.
struct Line<'a> {
    time: DateTime<Utc>,
    client: Option<&'a str>,
    /// Squid result code (`TCP_MISS`, `TCP_DENIED`); empty when the layout has none.
    code: &'a str,
    status: Option<u16>,
    bytes: Option<&'a str>,
    method: &'a str,
    url: Option<&'a str>,
    user: Option<&'a str>,
    /// First address of `X-Forwarded-For`, from custom layouts.
    forwarded_for: Option<&'a str>,
}

fn decode_line(line: &str) -> Result<NormalizedEvent, DecodeError> {
    let mut fields = line.split_ascii_whitespace();
    let (
        Some(time),
        Some(_elapsed),
        Some(client),
        Some(result),
        Some(bytes),
        Some(method),
        Some(url),
    ) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    )
    else {
        return Err(shape("expected at least 7 whitespace-separated fields"));
    };
    let user = fields.next();

    let time = line_time(time)?;
    let (code, status) = result
        .split_once('/')
        .ok_or_else(|| shape("code/status field has no `/`"))?;
    let status: u16 = status
        .parse()
        .map_err(|_| shape("status in code/status is not a number"))?;
    Ok(event(&Line {
        time,
        client: Some(client),
        code,
        status: Some(status),
        bytes: Some(bytes),
        method,
        url: Some(url),
        user,
        forwarded_for: None,
    }))
}

/// Builds the event of a line in a configured layout (`logformat`), with the
/// same mapping as a native line. `%ts[.%tu]`, `%tl` or `%tg` gives the time;
/// `X-Forwarded-For` (`%{X-Forwarded-For}>h`) adds the original client as a
/// second source-IP form.
pub(super) fn from_values(values: &Values<'_>) -> Result<NormalizedEvent, DecodeError> {
    let time = match (values.get(Field::EpochSeconds), values.get(Field::ClfTime)) {
        (Some(seconds), _) => match values.get(Field::Millis) {
            Some(millis) => line_time(&format!("{seconds}.{millis:0>3}"))?,
            None => line_time(seconds)?,
        },
        (None, Some(text)) => clf_time(text, values.time_pattern)?,
        (None, None) => {
            return Err(DecodeError::BadTime {
                format: FORMAT,
                detail: "the line has no time value".into(),
            });
        }
    };
    let status = match values.get(Field::Status) {
        Some(s) => Some(
            s.parse::<u16>()
                .map_err(|_| shape("HTTP status is not a number"))?,
        ),
        None => None,
    };
    Ok(event(&Line {
        time,
        client: values.get(Field::Client),
        code: values.get(Field::SquidCode).unwrap_or(""),
        status,
        bytes: values.get(Field::BytesOut),
        method: values.get(Field::Method).unwrap_or("-"),
        url: values.get(Field::Url),
        user: values.get(Field::User),
        forwarded_for: values
            .get(Field::ForwardedFor)
            .and_then(|xff| xff.split(',').next())
            .map(str::trim)
            .filter(|ip| !ip.is_empty() && *ip != "-"),
    }))
}

/// `%tl` / `%tg` time: `02/Mar/2026:09:15:27 +0000` unless the layout gave a pattern.
fn clf_time(text: &str, pattern: Option<&str>) -> Result<DateTime<Utc>, DecodeError> {
    let pattern = pattern.unwrap_or("%d/%b/%Y:%H:%M:%S %z");
    if let Ok(t) = DateTime::parse_from_str(text, pattern) {
        return Ok(t.with_timezone(&Utc));
    }
    // A pattern without a zone (`%tg` is GMT).
    chrono::NaiveDateTime::parse_from_str(text, pattern)
        .map(|t| t.and_utc())
        .map_err(|_| DecodeError::BadTime {
            format: FORMAT,
            detail: format!("`{}` does not match `{pattern}`", super::truncate(text, 64)),
        })
}

fn event(line: &Line<'_>) -> NormalizedEvent {
    let method = line.method;
    let mut event =
        NormalizedEvent::new(line.time, Product::Squid, Category::EgressRequest, method);
    if method != "NONE" && method != "-" {
        event.http_method = Some(method.to_string());
    }
    if let Some(user) = line.user {
        event.actor.push(PrincipalKind::GatewayConsumer, user);
    }
    if let Some(client) = line.client {
        event.actor.push(PrincipalKind::SourceIp, client);
        if client != "-" {
            event.src_ip = Some(client.to_string());
        }
    }
    if let Some(ip) = line.forwarded_for {
        event.actor.push(PrincipalKind::SourceIp, ip);
        if event.src_ip.is_none() {
            event.src_ip = Some(ip.to_string());
        }
    }

    if let Some(url) = line.url.filter(|u| !u.starts_with("error:") && *u != "-") {
        if method.eq_ignore_ascii_case("CONNECT") {
            let (host, port) = split_host_port(url);
            event.dst_host = Some(host);
            event.dst_port = port;
        } else if url.contains("://") {
            if let Some((host, port)) = url_host_port(url) {
                event.dst_host = Some(host);
                event.dst_port = port;
            }
            event.resource = url_path(url).filter(|p| !p.is_empty()).map(str::to_string);
        }
    }

    event.status_code = line.status.map(|s| s.to_string());
    let denied = line.code.contains("DENIED");
    event.outcome = match line.status {
        Some(status) if status == 0 || status >= 400 || denied => Outcome::Failure,
        Some(_) => Outcome::Success,
        None if denied => Outcome::Failure,
        None => Outcome::Unknown,
    };
    event.bytes_out = line.bytes.and_then(|b| b.parse().ok());
    event
}

/// Decodes Squid native access-log text: one event per non-blank line, whose
/// `raw_data` is that line alone (the whole payload in each event of a record of
/// many lines would make the outputs grow with lines × bytes).
pub fn decode(payload: &[u8], out: &mut Vec<NormalizedEvent>) -> Result<(), DecodeError> {
    super::each_line(payload, out, decode_line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testing::{self, Documented};

    const FIXTURE: Documented = Documented {
        name: "squid/documented.log",
        decode,
    };

    fn reason(input: &[u8]) -> &'static str {
        testing::reason(decode, input)
    }

    #[test]
    fn every_documented_line_decodes() {
        let events = FIXTURE.events();
        assert!((8..=15).contains(&events.len()), "{} lines", events.len());
        for (line, e) in &events {
            assert_eq!(e.product, Product::Squid);
            assert_eq!(e.category, Category::EgressRequest);
            assert_eq!(e.class_uid, 4002);
            assert!(e.src_ip.is_some(), "{line}");
            assert!(e.status_code.is_some(), "{line}");
            assert!(e.bytes_out.is_some(), "{line}");
        }
        // The whole file as one payload: one event per line.
        let whole = std::fs::read(testing::fixture(FIXTURE.name)).unwrap();
        let mut out = Vec::new();
        decode(&whole, &mut out).unwrap();
        assert_eq!(out.len(), events.len());
    }

    #[test]
    fn auto_detects_every_documented_line() {
        FIXTURE.assert_auto_detects(Product::Squid);
    }

    #[test]
    fn plain_get() {
        let e = FIXTURE.event_for("http://pypi.org/simple/requests/");
        assert_eq!(e.time.timestamp_millis(), 1_772_442_927_481);
        assert_eq!(e.activity, "GET");
        assert_eq!(e.http_method.as_deref(), Some("GET"));
        assert_eq!(e.dst_host.as_deref(), Some("pypi.org"));
        assert_eq!(e.dst_port, Some(80));
        assert_eq!(e.resource.as_deref(), Some("/simple/requests/"));
        assert_eq!(e.status_code.as_deref(), Some("200"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.bytes_out, Some(4_312));
        assert_eq!(e.bytes_in, None);
        assert_eq!(e.src_ip.as_deref(), Some("10.1.2.3"));
        assert_eq!(e.actor.refs.len(), 1);
        assert_eq!(e.actor.refs[0].kind, PrincipalKind::SourceIp);
    }

    #[test]
    fn connect_tunnel_with_authenticated_user() {
        let e = FIXTURE.event_for("CONNECT api.openai.com:443");
        assert_eq!(e.time.timestamp_millis(), 1_772_442_930_123);
        assert_eq!(e.activity, "CONNECT");
        assert_eq!(e.dst_host.as_deref(), Some("api.openai.com"));
        assert_eq!(e.dst_port, Some(443));
        assert_eq!(e.resource, None);
        assert_eq!(e.status_code.as_deref(), Some("200"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.bytes_out, Some(5_120));
        assert_eq!(e.actor.raw, "alice");
        assert_eq!(e.actor.refs[0].kind, PrincipalKind::GatewayConsumer);
        assert_eq!(e.actor.refs[1].kind, PrincipalKind::SourceIp);
        assert_eq!(e.actor.refs[1].value, "10.1.2.3");
    }

    #[test]
    fn denied_requests_are_failures() {
        let e = FIXTURE.event_for("CONNECT pastebin.com:443");
        assert_eq!(e.status_code.as_deref(), Some("403"));
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(e.dst_host.as_deref(), Some("pastebin.com"));

        let auth = FIXTURE.event_for("TCP_DENIED/407");
        assert_eq!(auth.status_code.as_deref(), Some("407"));
        assert_eq!(auth.outcome, Outcome::Failure);
        assert_eq!(auth.actor.refs.len(), 1);
    }

    #[test]
    fn bumped_https_request_with_user_and_query() {
        let e = FIXTURE.event_for("POST https://api.github.com");
        assert_eq!(e.activity, "POST");
        assert_eq!(e.dst_host.as_deref(), Some("api.github.com"));
        assert_eq!(e.dst_port, Some(443));
        assert_eq!(e.resource.as_deref(), Some("/repos/acme/app/issues"));
        assert_eq!(e.status_code.as_deref(), Some("201"));
        assert_eq!(e.actor.raw, "svc-ci");
    }

    #[test]
    fn ipv6_client() {
        let e = FIXTURE.event_for("2001:db8:10::25");
        assert_eq!(e.src_ip.as_deref(), Some("2001:db8:10::25"));
        assert_eq!(e.actor.raw, "2001:db8:10::25");
        assert_eq!(e.dst_host.as_deref(), Some("objects.example.net"));
        assert_eq!(e.dst_port, Some(443));
    }

    #[test]
    fn tabs_and_runs_of_spaces() {
        let e = FIXTURE.event_for("\t");
        assert_eq!(e.activity, "GET");
        assert_eq!(e.dst_host.as_deref(), Some("deb.debian.org"));
        assert_eq!(e.status_code.as_deref(), Some("304"));
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.time.timestamp_millis(), 1_772_443_001_007);
    }

    #[test]
    fn error_urls_still_decode_without_destination() {
        let none = FIXTURE.event_for("error:invalid-request");
        assert_eq!(none.activity, "NONE");
        assert_eq!(none.http_method, None);
        assert_eq!(none.dst_host, None);
        assert_eq!(none.resource, None);
        assert_eq!(none.status_code.as_deref(), Some("400"));
        assert_eq!(none.outcome, Outcome::Failure);

        let dash = FIXTURE.event_for("error:transaction-end-before-headers");
        assert_eq!(dash.activity, "-");
        assert_eq!(dash.http_method, None);
        assert_eq!(dash.dst_host, None);
        assert_eq!(dash.status_code.as_deref(), Some("0"));
        assert_eq!(dash.outcome, Outcome::Failure);
    }

    #[test]
    fn upstream_failure() {
        let e = FIXTURE.event_for("TCP_MISS/503");
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(e.dst_host.as_deref(), Some("files.vendor.example"));
        assert_eq!(e.dst_port, Some(8080));
    }

    #[test]
    fn seven_fields_are_enough() {
        let mut out = Vec::new();
        decode(
            b"1700000000.5 12 10.0.0.1 TCP_MISS/200 99 GET http://a.example/x",
            &mut out,
        )
        .unwrap();
        assert_eq!(out[0].time.timestamp_millis(), 1_700_000_000_500);
        assert!(
            out[0]
                .actor
                .refs
                .iter()
                .all(|r| r.kind == PrincipalKind::SourceIp)
        );
        assert_eq!(out[0].resource.as_deref(), Some("/x"));
    }

    #[test]
    fn malformed_lines_say_why() {
        assert_eq!(
            reason(b"1700000000.123 30 10.1.2.3 TCP_MISS/200 5120 GET"),
            "wrong_shape"
        );
        assert_eq!(
            reason(b"abc 30 10.1.2.3 TCP_MISS/200 5120 GET http://a/ - HIER_NONE/- -"),
            "bad_time"
        );
        assert_eq!(
            reason(b"17e8 30 10.1.2.3 TCP_MISS/200 5120 GET http://a/ - HIER_NONE/- -"),
            "bad_time"
        );
        assert_eq!(
            reason(b"1.2.3 30 10.1.2.3 TCP_MISS/200 5120 GET http://a/ - HIER_NONE/- -"),
            "bad_time"
        );
        assert_eq!(
            reason(b"170000000000000 30 10.1.2.3 TCP_MISS/200 5120 GET http://a/ - HIER_NONE/- -"),
            "bad_time"
        );
        assert_eq!(
            reason(b"1700000000.1 30 10.1.2.3 \xff\xfe/200 5 GET http://a/ - - -"),
            "not_utf8"
        );
        // A status that is not a number, or no status at all, is not a native-format line.
        assert_eq!(
            reason(b"1700000000.1 30 10.1.2.3 TCP_MISS/abc 5 GET http://a/ - - -"),
            "wrong_shape"
        );
        assert_eq!(
            reason(b"1700000000.1 30 10.1.2.3 TCP_MISS 5 GET http://a/ - - -"),
            "wrong_shape"
        );
        assert_eq!(reason(b" \n\t\n"), "empty");
        // One bad line fails the payload and leaves nothing behind.
        assert_eq!(
            reason(b"1700000000.1 30 10.1.2.3 TCP_MISS/200 5 GET http://a/ - - -\nbogus line\n"),
            "wrong_shape"
        );
    }

    fn with_layout(layout: &str, payload: &[u8]) -> Result<Vec<NormalizedEvent>, DecodeError> {
        let layout = super::super::Layout::parse(layout).unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        super::super::layout::decode(&layout, payload, &mut out).map(|()| out)
    }

    #[test]
    fn native_layout_reads_the_fixture_as_the_native_decoder() {
        for (line, native) in FIXTURE.events() {
            let laid_out = with_layout("squid", line.as_bytes()).unwrap();
            assert_eq!(laid_out, [native], "{line}");
        }
    }

    #[test]
    fn common_and_custom_logformats() {
        let common = with_layout(
            "common",
            b"10.1.2.3 - svc-ci [02/Mar/2026:10:15:27 +0100] \"CONNECT api.github.com:443 HTTP/1.1\" 200 5120 TCP_TUNNEL:HIER_DIRECT",
        )
        .unwrap();
        let e = &common[0];
        assert_eq!(e.time.to_rfc3339(), "2026-03-02T09:15:27+00:00");
        assert_eq!(e.dst_host.as_deref(), Some("api.github.com"));
        assert_eq!(e.dst_port, Some(443));
        assert_eq!(e.actor.raw, "svc-ci");
        assert_eq!(e.status_code.as_deref(), Some("200"));
        assert_eq!(e.bytes_out, Some(5120));

        let custom = with_layout(
            "%ts.%03tu %>a %Ss/%03>Hs %<st %rm %ru \"%{X-Forwarded-For}>h\"",
            b"1772442941.560 10.1.2.44 TCP_DENIED/403 3974 GET http://pastebin.com/raw/x \"203.0.113.9, 10.0.0.1\"",
        )
        .unwrap();
        let e = &custom[0];
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(e.src_ip.as_deref(), Some("10.1.2.44"));
        assert_eq!(e.actor.refs[1].value, "203.0.113.9");
        assert_eq!(e.resource.as_deref(), Some("/raw/x"));
    }

    #[test]
    fn lines_off_their_layout_are_refused() {
        let layout = "%ts.%03tu %>a %Ss/%03>Hs %<st %rm %ru";
        for (line, reason) in [
            (
                &b"1772442941.560 10.1.2.44 TCP_DENIED 3974 GET http://a/"[..],
                "wrong_shape",
            ),
            (
                b"1772442941.560 10.1.2.44 TCP_DENIED/abc 3974 GET http://a/",
                "wrong_shape",
            ),
            (
                b"yesterday.560 10.1.2.44 TCP_DENIED/403 3974 GET http://a/",
                "bad_time",
            ),
            (b"\xff 10.1.2.44", "not_utf8"),
            (b"  \n", "empty"),
        ] {
            let err = with_layout(layout, line).unwrap_err();
            assert_eq!(err.reason(), reason, "{}", String::from_utf8_lossy(line));
        }
        let err = with_layout(
            "common",
            b"10.1.2.3 - - [yesterday] \"GET http://a/ HTTP/1.1\" 200 1 X:Y",
        )
        .unwrap_err();
        assert_eq!(err.reason(), "bad_time");
    }

    #[test]
    fn huge_url_does_not_panic() {
        let mut line =
            b"1700000000.123 5 10.1.2.3 TCP_MISS/200 10 GET http://big.example/".to_vec();
        line.extend(std::iter::repeat_n(b'a', 100 * 1024));
        line.extend_from_slice("é?q=1 - HIER_DIRECT/1.2.3.4 text/html".as_bytes());
        let mut out = Vec::new();
        decode(&line, &mut out).unwrap();
        assert_eq!(out[0].dst_host.as_deref(), Some("big.example"));
        assert_eq!(
            out[0].resource.as_ref().map(String::len),
            Some(1 + 100 * 1024 + 2)
        );

        let mut connect = b"1700000000.123 5 10.1.2.3 TCP_TUNNEL/200 10 CONNECT ".to_vec();
        connect.extend(std::iter::repeat_n(b'h', 100 * 1024));
        connect.extend_from_slice(b":99999 - HIER_DIRECT/1.2.3.4 -");
        decode(&connect, &mut out).unwrap();
        assert_eq!(out[1].dst_port, None);
    }
}
