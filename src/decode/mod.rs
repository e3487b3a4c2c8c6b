//! Decode: vendor records (bytes) into [`NormalizedEvent`]s.
//!
//! One file per vendor format; each exposes
//! `fn decode(payload: &[u8], out: &mut Vec<NormalizedEvent>) -> Result<(), DecodeError>`
//! and is registered once in [`decode`] and, for `auto`, in [`detect`].
//! A decoder may push several events (an envelope) or none (a record that
//! carries nothing to act on, such as a Vault request line whose response
//! line follows); it never panics on input.

pub mod azure_keyvault;
pub mod cloudtrail;
pub mod entra;
pub mod envoy;
pub mod envoy_text;
pub(crate) mod fields;
pub mod generic;
pub mod kong;
pub mod layout;
pub mod okta;
pub mod squid;
#[cfg(test)]
pub(crate) mod testing;
pub mod vault;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::{NormalizedEvent, Product};
pub use generic::FieldMapping;
pub use layout::{Layout, LayoutError};

/// The format of a topic or file: one vendor format, or `auto` to recognise it per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Auto,
    Okta,
    Entra,
    Cloudtrail,
    Vault,
    Kong,
    Envoy,
    Squid,
    Generic,
    AzureKeyvault,
    EnvoyText,
}

impl Format {
    /// Every format, `auto` first.
    pub const ALL: [Format; 11] = [
        Format::Auto,
        Format::Okta,
        Format::Entra,
        Format::Cloudtrail,
        Format::Vault,
        Format::Kong,
        Format::Envoy,
        Format::Squid,
        Format::Generic,
        Format::AzureKeyvault,
        Format::EnvoyText,
    ];

    pub const NAMES: &'static str = "auto, okta, entra, cloudtrail, vault, kong, envoy, squid, generic, azure_keyvault, envoy_text";

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Okta => "okta",
            Format::Entra => "entra",
            Format::Cloudtrail => "cloudtrail",
            Format::Vault => "vault",
            Format::Kong => "kong",
            Format::Envoy => "envoy",
            Format::Squid => "squid",
            Format::Generic => "generic",
            Format::AzureKeyvault => "azure_keyvault",
            Format::EnvoyText => "envoy_text",
        }
    }

    pub fn product(self) -> Option<Product> {
        match self {
            Format::Auto => None,
            Format::Okta => Some(Product::Okta),
            Format::Entra => Some(Product::Entra),
            Format::Cloudtrail => Some(Product::Cloudtrail),
            Format::Vault => Some(Product::Vault),
            Format::Kong => Some(Product::Kong),
            Format::Envoy => Some(Product::Envoy),
            Format::Squid => Some(Product::Squid),
            Format::Generic => Some(Product::Generic),
            Format::AzureKeyvault => Some(Product::AzureKeyvault),
            Format::EnvoyText => Some(Product::Envoy),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown format `{s}`; expected one of: {}", Format::NAMES))
    }
}

/// Why a record could not be decoded. Every variant has a fixed, low-cardinality
/// [`DecodeError::reason`] used as a metric label and in the dead-letter record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is empty")]
    Empty,
    #[error("record is {size} bytes, over the limit of {limit} bytes")]
    Oversized { size: usize, limit: usize },
    #[error("record is not valid UTF-8 text")]
    NotUtf8,
    #[error("record is not valid JSON: {0}")]
    BadJson(String),
    #[error("{format} record has the wrong shape: {detail}")]
    WrongShape { format: Format, detail: String },
    #[error("{format} record has a missing or invalid event time: {detail}")]
    BadTime { format: Format, detail: String },
    #[error("record matches none of the known formats ({})", Format::NAMES)]
    UnknownFormat,
    #[error("envelope nests more than {0} levels deep")]
    TooDeep(usize),
}

impl DecodeError {
    /// The fixed label for metrics and dead letters.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::NotUtf8 => "not_utf8",
            DecodeError::BadJson(_) => "bad_json",
            DecodeError::WrongShape { .. } => "wrong_shape",
            DecodeError::BadTime { .. } => "bad_time",
            DecodeError::UnknownFormat => "unknown_format",
            DecodeError::TooDeep(_) => "too_deep",
        }
    }

    pub const REASONS: [&'static str; 8] = [
        "empty",
        "oversized",
        "not_utf8",
        "bad_json",
        "wrong_shape",
        "bad_time",
        "unknown_format",
        "too_deep",
    ];

    /// A shape error for `format`, from a serde error.
    pub fn shape(format: Format, err: impl fmt::Display) -> Self {
        DecodeError::WrongShape {
            format,
            detail: err.to_string(),
        }
    }

    /// Sorts a serde_json error into bad JSON (syntax) or wrong shape (types, fields).
    pub fn from_json(format: Format, err: serde_json::Error) -> Self {
        use serde_json::error::Category as C;
        match err.classify() {
            C::Data => DecodeError::shape(format, err),
            C::Syntax | C::Eof | C::Io => DecodeError::BadJson(err.to_string()),
        }
    }
}

/// Parses a vendor timestamp: RFC 3339 (`2026-11-22T13:00:00.123Z`, any offset),
/// or the same without a zone (`2023-07-27 13:59:53.6916803`, taken as UTC).
pub fn parse_time(format: Format, text: &str) -> Result<DateTime<Utc>, DecodeError> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    for pattern in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, pattern) {
            return Ok(t.and_utc());
        }
    }
    Err(DecodeError::BadTime {
        format,
        detail: format!("`{}` is not an RFC 3339 time", truncate(text, 64)),
    })
}

/// Event time from epoch seconds (fractional allowed) or, above 1e11, milliseconds.
pub fn epoch_time(format: Format, value: f64) -> Result<DateTime<Utc>, DecodeError> {
    let secs = if value.abs() >= 1e11 {
        value / 1000.0
    } else {
        value
    };
    if !secs.is_finite() || !(0.0..=253_402_300_799.0).contains(&secs) {
        return Err(DecodeError::BadTime {
            format,
            detail: format!("epoch value {value} is out of range"),
        });
    }
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9).round().min(999_999_999.0) as u32;
    DateTime::from_timestamp(whole as i64, nanos).ok_or_else(|| DecodeError::BadTime {
        format,
        detail: format!("epoch value {value} is out of range"),
    })
}

/// Event time from whole epoch seconds or, above 1e11, milliseconds (exact, no float rounding).
pub fn epoch_time_int(format: Format, value: i64) -> Result<DateTime<Utc>, DecodeError> {
    let time = if value.unsigned_abs() >= 100_000_000_000 {
        DateTime::from_timestamp_millis(value)
    } else {
        DateTime::from_timestamp(value, 0)
    };
    // Same range as `epoch_time`: 1970 to the end of year 9999.
    time.filter(|t| (0..=253_402_300_799).contains(&t.timestamp()))
        .ok_or_else(|| DecodeError::BadTime {
            format,
            detail: format!("epoch value {value} is out of range"),
        })
}

/// At most `max` bytes of `text`, cut on a character boundary (for error messages).
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Decodes text with one record per non-blank line: one event per line, whose
/// `raw_data` is that line alone (the whole payload in each event of a record of
/// many lines would make the outputs grow with lines × bytes); one bad line
/// fails the whole payload and leaves nothing behind.
pub(crate) fn each_line(
    payload: &[u8],
    out: &mut Vec<NormalizedEvent>,
    mut decode_line: impl FnMut(&str) -> Result<NormalizedEvent, DecodeError>,
) -> Result<(), DecodeError> {
    let text = std::str::from_utf8(payload).map_err(|_| DecodeError::NotUtf8)?;
    let start = out.len();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match decode_line(line) {
            Ok(mut event) => {
                event.raw_data = Some(std::sync::Arc::from(line.trim_end()));
                out.push(event);
            }
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
    if out.len() == start {
        return Err(DecodeError::Empty);
    }
    Ok(())
}

/// Per-topic decoding settings.
#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// Field mapping for `generic` records; `None` means the documented generic form.
    pub mapping: Option<FieldMapping>,
    /// Line layout of text records (`squid`, `envoy_text`, and text lines under
    /// `auto`); `None` means each format's own default layout.
    pub layout: Option<std::sync::Arc<Layout>>,
}

/// How deep `auto` follows envelopes (`{"records":[...]}`, arrays) before giving up.
const MAX_ENVELOPE_DEPTH: usize = 2;

/// Decodes one record in `format` and appends its events to `out`.
///
/// On error nothing is appended: a record is decoded whole or not at all.
pub fn decode(
    format: Format,
    payload: &[u8],
    options: &DecodeOptions,
    out: &mut Vec<NormalizedEvent>,
) -> Result<(), DecodeError> {
    let start = out.len();
    let result = decode_at(format, payload, options, out, 0);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn decode_at(
    format: Format,
    payload: &[u8],
    options: &DecodeOptions,
    out: &mut Vec<NormalizedEvent>,
    depth: usize,
) -> Result<(), DecodeError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::Empty);
    }
    match format {
        Format::Auto => match detect(payload)? {
            // A topic's layout describes its text lines, whatever `auto` guessed from
            // their first character.
            Detected::Format(Format::Squid | Format::EnvoyText) | Detected::Text
                if options.layout.is_some() =>
            {
                decode_at(Format::Squid, payload, options, out, depth)
            }
            Detected::Text => Err(DecodeError::UnknownFormat),
            Detected::Format(f) => decode_at(f, payload, options, out, depth),
            Detected::Envelope(items) => {
                if depth >= MAX_ENVELOPE_DEPTH {
                    return Err(DecodeError::TooDeep(MAX_ENVELOPE_DEPTH));
                }
                for item in items {
                    let first = out.len();
                    decode_at(Format::Auto, item.get().as_bytes(), options, out, depth + 1)?;
                    NormalizedEvent::keep_raw(&mut out[first..], item.get().as_bytes());
                }
                Ok(())
            }
        },
        Format::Okta => okta::decode(payload, out),
        Format::Entra => entra::decode(payload, out),
        Format::Cloudtrail => cloudtrail::decode(payload, out),
        Format::Vault => vault::decode(payload, out),
        Format::Kong => kong::decode(payload, out),
        Format::Envoy => envoy::decode(payload, out),
        Format::Squid | Format::EnvoyText if options.layout.is_some() => {
            let layout = options.layout.as_deref().expect("checked above");
            layout::decode(layout, payload, out)
        }
        Format::Squid => squid::decode(payload, out),
        Format::EnvoyText => envoy_text::decode(payload, out),
        Format::Generic => generic::decode(payload, options.mapping.as_ref(), out),
        Format::AzureKeyvault => azure_keyvault::decode(payload, out),
    }
}

/// What `auto` found in a record.
enum Detected<'a> {
    Format(Format),
    /// A text line of no built-in layout: only a configured layout can read it.
    Text,
    /// A JSON array, or an Azure `{"records":[...]}` envelope, whose items are decoded one by one.
    Envelope(Vec<&'a RawValue>),
}

/// The top-level keys that tell the formats apart; values are not parsed.
#[derive(Deserialize)]
#[allow(non_snake_case)]
struct Probe<'a> {
    #[serde(borrow)]
    records: Option<Vec<&'a RawValue>>,
    Records: Option<IgnoredAny>,
    eventVersion: Option<IgnoredAny>,
    #[serde(alias = "eventsource")]
    eventSource: Option<IgnoredAny>,
    #[serde(alias = "eventname")]
    eventName: Option<IgnoredAny>,
    #[serde(alias = "eventtype")]
    eventType: Option<IgnoredAny>,
    published: Option<IgnoredAny>,
    #[serde(alias = "operationname")]
    operationName: Option<&'a str>,
    // Raw, so that a category or log of any JSON type still probes (Azure's REST
    // form writes `category` as an object); only strings are read.
    #[serde(borrow)]
    category: Option<&'a RawValue>,
    #[serde(borrow, alias = "resourceid", alias = "ResourceId")]
    resourceId: Option<&'a RawValue>,
    properties: Option<IgnoredAny>,
    identity: Option<IgnoredAny>,
    /// A Docker / Kubernetes JSON log line: `{"log": "<text line>", "stream": …}`.
    #[serde(borrow)]
    log: Option<&'a RawValue>,
    stream: Option<IgnoredAny>,
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    request: Option<IgnoredAny>,
    response: Option<IgnoredAny>,
    latencies: Option<IgnoredAny>,
    started_at: Option<IgnoredAny>,
    client_ip: Option<IgnoredAny>,
    start_time: Option<IgnoredAny>,
    response_code: Option<IgnoredAny>,
    authority: Option<IgnoredAny>,
    upstream_cluster: Option<IgnoredAny>,
    principal: Option<IgnoredAny>,
}

/// The text of a raw JSON string value; `None` for other values.
fn raw_str(raw: Option<&RawValue>) -> Option<std::borrow::Cow<'_, str>> {
    let raw = raw?.get();
    if !raw.starts_with('"') {
        return None;
    }
    serde_json::from_str(raw).ok()
}

/// Recognises the format of one record, for `auto` topics.
fn detect(payload: &[u8]) -> Result<Detected<'_>, DecodeError> {
    let first = payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .copied()
        .ok_or(DecodeError::Empty)?;
    match first {
        b'{' => {}
        b'[' if envoy_text::looks_like_line(payload) => {
            return Ok(Detected::Format(Format::EnvoyText));
        }
        b'[' => {
            let items: Vec<&RawValue> = serde_json::from_slice(payload)
                .map_err(|e| DecodeError::from_json(Format::Auto, e))?;
            return Ok(Detected::Envelope(items));
        }
        b'0'..=b'9' => return Ok(Detected::Format(Format::Squid)),
        _ => return Ok(Detected::Text),
    }
    let probe: Probe<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::from_json(Format::Auto, e))?;
    let format = if probe.Records.is_some()
        || (probe.eventSource.is_some()
            && (probe.eventVersion.is_some() || probe.eventName.is_some()))
    {
        Format::Cloudtrail
    } else if let Some(items) = probe.records {
        return Ok(Detected::Envelope(items));
    } else if azure_keyvault::is_key_vault(
        raw_str(probe.category).as_deref(),
        raw_str(probe.resourceId).as_deref(),
        probe.identity.is_some(),
    ) {
        Format::AzureKeyvault
    } else if probe.stream.is_some()
        && raw_str(probe.log).is_some_and(|line| envoy_text::looks_like_line(line.as_bytes()))
    {
        Format::EnvoyText
    } else if probe.eventType.is_some() && probe.published.is_some() {
        Format::Okta
    } else if probe
        .operationName
        .is_some_and(|op| op.eq_ignore_ascii_case("Sign-in activity"))
        || (probe.category.is_some() && probe.properties.is_some())
    {
        Format::Entra
    } else if matches!(probe.kind, Some("request" | "response")) && probe.request.is_some() {
        Format::Vault
    } else if probe.request.is_some()
        && probe.response.is_some()
        && (probe.latencies.is_some() || probe.started_at.is_some() || probe.client_ip.is_some())
    {
        Format::Kong
    } else if probe.start_time.is_some()
        && (probe.response_code.is_some()
            || probe.authority.is_some()
            || probe.upstream_cluster.is_some())
    {
        Format::Envoy
    } else if probe.principal.is_some() && probe.category.is_some() {
        Format::Generic
    } else {
        return Err(DecodeError::UnknownFormat);
    };
    Ok(Detected::Format(format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_classified_not_panicked() {
        let opts = DecodeOptions::default();
        let mut out = Vec::new();
        let cases: [(&[u8], &str); 6] = [
            (b"", "empty"),
            (b"   \n", "empty"),
            (b"{\"a\":", "bad_json"),
            (b"{\"a\":1}", "unknown_format"),
            (b"hello", "unknown_format"),
            (b"[[[[1]]]]", "too_deep"),
        ];
        for (input, reason) in cases {
            let err = decode(Format::Auto, input, &opts, &mut out).unwrap_err();
            assert_eq!(
                err.reason(),
                reason,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert!(out.is_empty());
    }

    #[test]
    fn times_in_vendor_forms() {
        let f = Format::Auto;
        let a = parse_time(f, "2026-11-22T13:00:00.5Z").unwrap();
        assert_eq!(a.to_rfc3339(), "2026-11-22T13:00:00.500+00:00");
        let b = parse_time(f, "2026-11-22T14:00:00.5+01:00").unwrap();
        assert_eq!(a, b);
        let c = parse_time(f, "2023-07-27 13:59:53.691680300").unwrap();
        assert_eq!(c.timestamp(), 1_690_466_393);
        assert_eq!(parse_time(f, "yesterday").unwrap_err().reason(), "bad_time");
        assert_eq!(
            epoch_time(f, 1_690_466_393.25).unwrap().timestamp_millis(),
            1_690_466_393_250
        );
        assert_eq!(
            epoch_time(f, 1_690_466_393_250.0)
                .unwrap()
                .timestamp_millis(),
            1_690_466_393_250
        );
        assert!(epoch_time(f, f64::NAN).is_err());
        assert!(epoch_time(f, -5.0).is_err());
    }

    #[test]
    fn format_names_round_trip() {
        for name in Format::NAMES.split(", ") {
            assert_eq!(name.parse::<Format>().unwrap().as_str(), name);
        }
        assert!(
            "syslog"
                .parse::<Format>()
                .unwrap_err()
                .contains("expected one of")
        );
    }
}
