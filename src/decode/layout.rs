//! Line layouts: a Squid `logformat` or an Envoy access-log format string, parsed
//! into the fields a text access-log line carries, and the built-in presets.
//!
//! A layout is named in the settings (`kafka.topics[].layout`, `replay --layout`):
//!
//! | preset | layout |
//! |---|---|
//! | `squid` | Squid native: `%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt` |
//! | `common` | Squid's `common`: `%>a %[ui %[un [%tl] "%rm %ru HTTP/%rv" %>Hs %<st %Ss:%Sh` |
//! | `combined` | Squid's `combined`: `common` plus `"%{Referer}>h" "%{User-Agent}>h"` before `%Ss:%Sh` |
//! | `envoy` | Envoy's default text format (see [`ENVOY_DEFAULT`]) |
//! | `istio` | Istio's default proxy text format (see [`ISTIO_DEFAULT`]) |
//!
//! Any other value is a format string: an Envoy one when its first `%` starts an
//! Envoy command (`%START_TIME%`, `%REQ(:METHOD)%`), else a Squid `logformat`.
//! Codes this module does not map (`%tr`, `%Sh`, `%DURATION%`, …) are read and
//! skipped; codes neither program knows are refused when the layout is loaded.
//!
//! Reading a line: a space in the layout matches any run of spaces and tabs
//! (Squid pads `%6tr`); a value runs to the first character of the text that
//! follows it in the layout (or to a space); `-` means absent; a line that ends
//! early leaves the remaining fields absent (Squid omits trailing fields).
//! Lines may come inside a Docker / Kubernetes JSON wrapper
//! (`{"log":"<line>\n","stream":"stdout","time":"…"}`).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;

use super::fields::opt_str;
use super::{DecodeError, Format, envoy_text, squid};
use crate::event::NormalizedEvent;

/// Envoy's default access-log format (Envoy docs, "Default format string").
pub const ENVOY_DEFAULT: &str = concat!(
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" ",
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" ",
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\\n"
);

/// Istio's default proxy access-log format (`meshConfig.accessLogFormat` unset, TEXT encoding).
pub const ISTIO_DEFAULT: &str = concat!(
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" ",
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ",
    "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" ",
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% ",
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% ",
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\\n"
);

/// Squid's built-in `logformat squid`.
pub const SQUID_NATIVE: &str = "%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt";
/// Squid's built-in `logformat common`.
pub const SQUID_COMMON: &str = "%>a %[ui %[un [%tl] \"%rm %ru HTTP/%rv\" %>Hs %<st %Ss:%Sh";
/// Squid's built-in `logformat combined`.
pub const SQUID_COMBINED: &str = "%>a %[ui %[un [%tl] \"%rm %ru HTTP/%rv\" %>Hs %<st \"%{Referer}>h\" \"%{User-Agent}>h\" %Ss:%Sh";

/// The built-in layouts, by name.
pub const PRESETS: [(&str, &str); 5] = [
    ("squid", SQUID_NATIVE),
    ("common", SQUID_COMMON),
    ("combined", SQUID_COMBINED),
    ("envoy", ENVOY_DEFAULT),
    ("istio", ISTIO_DEFAULT),
];

/// Whose format language a layout is written in; decides how its fields are normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Squid,
    Envoy,
}

impl Family {
    fn format(self) -> Format {
        match self {
            Family::Squid => Format::Squid,
            Family::Envoy => Format::EnvoyText,
        }
    }
}

/// What a value in a line means. Values of [`Field::Skip`] are read and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Epoch seconds (`%ts`), or seconds with a fraction (`%tS`).
    EpochSeconds,
    /// Milliseconds of `%ts` (`%tu`).
    Millis,
    /// `%tl` / `%tg`, by default `02/Mar/2026:09:15:27 +0000`.
    ClfTime,
    /// Envoy `%START_TIME%` (RFC 3339, or epoch seconds with a `%s` argument).
    StartTime,
    /// Client address, with or without a port (`%>a`, `%DOWNSTREAM_REMOTE_ADDRESS%`).
    Client,
    /// Authenticated user (`%un`, `%ul`, `%ue`, `%us`).
    User,
    /// Squid result code (`%Ss`: `TCP_MISS`, `TCP_DENIED`).
    SquidCode,
    /// HTTP status sent to the client (`%>Hs`, `%RESPONSE_CODE%`).
    Status,
    /// Envoy `%RESPONSE_FLAGS%`.
    Flags,
    /// Request size (`%>st`, `%BYTES_RECEIVED%`).
    BytesIn,
    /// Reply size (`%<st`, `%BYTES_SENT%`).
    BytesOut,
    /// Request method (`%rm`, `%REQ(:METHOD)%`).
    Method,
    /// Request URL (`%ru`).
    Url,
    /// Request path (`%rp`, `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`).
    Path,
    /// Protocol (`%rv`, `%PROTOCOL%`).
    Protocol,
    /// Request host (`%>rd`, `%{Host}>h`, `%REQ(:AUTHORITY)%`).
    Authority,
    /// `X-Forwarded-For` request header.
    ForwardedFor,
    /// `X-Request-Id` request header.
    RequestId,
    /// Upstream (server) address (`%<a`, `%UPSTREAM_HOST%`).
    UpstreamHost,
    /// Envoy `%UPSTREAM_CLUSTER%`.
    UpstreamCluster,
    /// TLS server name (`%ssl::>sni`, `%REQUESTED_SERVER_NAME%`).
    Sni,
    /// Envoy `%DOWNSTREAM_PEER_URI_SAN%` (SPIFFE id of the client workload).
    PeerUriSan,
    Skip,
}

/// Number of fields that carry a value (every [`Field`] but `Skip`).
const FIELDS: usize = Field::Skip as usize;

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    /// Text between fields; a run of whitespace is kept as one space.
    Literal(String),
    /// A field; `quoted` when the program itself wraps the value in `"` (Squid `%"…`).
    Field {
        field: Field,
        quoted: bool,
        /// A strftime pattern for `%{…}tl`.
        pattern: Option<String>,
    },
}

/// A parsed line layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The preset name or the format string, as configured.
    pub spec: String,
    pub family: Family,
    segments: Vec<Segment>,
}

/// Why a layout string was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("layout `{spec}`: {detail}")]
pub struct LayoutError {
    pub spec: String,
    pub detail: String,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Squid => "squid",
            Family::Envoy => "envoy",
        })
    }
}

/// The values of one line, by field.
#[derive(Debug, Default)]
pub struct Values<'a> {
    values: [Option<Cow<'a, str>>; FIELDS],
    /// `%{…}tl` pattern of the layout, when set.
    pub(super) time_pattern: Option<&'a str>,
}

impl<'a> Values<'a> {
    /// The value of `field`, unless absent, empty or `-`.
    pub fn get(&self, field: Field) -> Option<&str> {
        let v = self.values.get(field as usize)?.as_deref()?.trim();
        (!v.is_empty() && v != "-").then_some(v)
    }

    /// The raw slot, for decoders that keep a borrowed `Cow`.
    pub(super) fn take(&mut self, field: Field) -> Option<Cow<'a, str>> {
        let slot = self.values.get_mut(field as usize)?.take()?;
        let trimmed = slot.trim();
        if trimmed.is_empty() || trimmed == "-" {
            return None;
        }
        Some(match slot {
            Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
            Cow::Owned(o) => Cow::Owned(o.trim().to_string()),
        })
    }
}

impl Layout {
    /// A preset by name, or a Squid / Envoy format string.
    pub fn parse(spec: &str) -> Result<Layout, LayoutError> {
        let text = PRESETS
            .iter()
            .find(|(name, _)| *name == spec.trim())
            .map_or(spec, |(_, text)| *text);
        let err = |detail: String| LayoutError {
            spec: super::truncate(spec, 120).to_string(),
            detail,
        };
        // Envoy format strings end with a newline, often written as `\n` in config.
        let text = text.trim_end_matches(['\n', '\r']);
        let text = text.strip_suffix("\\n").unwrap_or(text);
        if text.trim().is_empty() {
            return Err(err("is empty; name a preset (squid, common, combined, envoy, istio) or give a format string".into()));
        }
        let family = match text.find('%') {
            Some(i) if envoy_command(&text[i..]).is_some() => Family::Envoy,
            Some(_) => Family::Squid,
            None => return Err(err("has no %-codes".into())),
        };
        let segments = match family {
            Family::Envoy => parse_envoy(text),
            Family::Squid => parse_squid(text),
        }
        .map_err(err)?;
        let mut previous_field = false;
        for segment in &segments {
            let is_field = matches!(segment, Segment::Field { .. });
            if is_field && previous_field {
                return Err(err(
                    "two codes follow each other with no text between them; a line could not be split"
                        .into(),
                ));
            }
            previous_field = is_field;
        }
        if !segments
            .iter()
            .any(|s| matches!(s, Segment::Field { field, .. } if is_time(*field)))
        {
            return Err(err(
                "has no time code (%ts, %tl, %tg or %START_TIME%); events need their time".into(),
            ));
        }
        Ok(Layout {
            spec: spec.to_string(),
            family,
            segments,
        })
    }

    /// Splits one line into its values. Fails only when literal text of the layout
    /// is not where the line should have it.
    pub fn split<'a>(&'a self, line: &'a str) -> Result<Values<'a>, DecodeError> {
        let shape = |detail: String| DecodeError::shape(self.family.format(), detail);
        let mut values = Values::default();
        let mut rest = line.trim_end_matches(['\n', '\r']);
        for (i, segment) in self.segments.iter().enumerate() {
            if rest.is_empty() {
                // Squid leaves trailing fields out; the decoder checks what it needs.
                break;
            }
            match segment {
                Segment::Literal(text) => {
                    rest = match_literal(rest, text).ok_or_else(|| {
                        shape(format!(
                            "expected `{}` at `{}`",
                            super::truncate(text, 32),
                            super::truncate(rest, 32)
                        ))
                    })?;
                }
                Segment::Field {
                    field,
                    quoted,
                    pattern,
                } => {
                    let next = match self.segments.get(i + 1) {
                        Some(Segment::Literal(t)) => t.chars().next(),
                        _ => None,
                    };
                    let (value, tail) = if *quoted {
                        read_quoted(rest)
                            .ok_or_else(|| shape("a quoted value is not closed".into()))?
                    } else {
                        let (value, tail) = read_until(rest, next);
                        // A value the layout closes with `"` must not run off the line.
                        if next == Some('"') && tail.is_empty() {
                            return Err(shape("the line ends inside a quoted value".into()));
                        }
                        (value, tail)
                    };
                    if *field != Field::Skip && values.values[*field as usize].is_none() {
                        values.values[*field as usize] = Some(value);
                    }
                    if let Some(p) = pattern {
                        values.time_pattern = Some(p);
                    }
                    rest = tail;
                }
            }
        }
        Ok(values)
    }
}

fn is_time(field: Field) -> bool {
    matches!(
        field,
        Field::EpochSeconds | Field::ClfTime | Field::StartTime
    )
}

/// Matches `literal` at the start of `line`; a space matches any run of blanks
/// (at least one, or none where the line's value was already padded away).
fn match_literal<'a>(line: &'a str, literal: &str) -> Option<&'a str> {
    let mut rest = line;
    for ch in literal.chars() {
        if ch == ' ' {
            let trimmed = rest.trim_start_matches([' ', '\t']);
            if trimmed.len() == rest.len() && !rest.is_empty() {
                return None;
            }
            rest = trimmed;
        } else {
            rest = rest.strip_prefix(ch)?;
        }
    }
    Some(rest)
}

/// A value that runs to `stop`, or to a blank when `stop` is a space or absent.
/// Only a closing quote or bracket lets a value hold blanks (`"%{User-Agent}>h"`,
/// `[%tl]`); elsewhere a blank ends it, and the layout's text must follow.
fn read_until(line: &str, stop: Option<char>) -> (Cow<'_, str>, &str) {
    // Squid pads numbers on the left (`%6tr`).
    let line = line.trim_start_matches([' ', '\t']);
    let end = match stop {
        Some(c @ ('"' | ']' | '\'' | ')')) => line.find(c),
        Some(' ') | None => line.find([' ', '\t']),
        Some(c) => line.find([c, ' ', '\t']),
    }
    .unwrap_or(line.len());
    (Cow::Borrowed(&line[..end]), &line[end..])
}

/// A `"…"` value with `\"` and `\\` escapes.
fn read_quoted(line: &str) -> Option<(Cow<'_, str>, &str)> {
    let body = line.trim_start_matches([' ', '\t']).strip_prefix('"')?;
    let mut owned: Option<String> = None;
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let value = match owned {
                    Some(s) => Cow::Owned(s),
                    None => Cow::Borrowed(&body[..i]),
                };
                return Some((value, &body[i + 1..]));
            }
            '\\' => {
                let s = owned.get_or_insert_with(|| body[..i].to_string());
                if let Some((_, escaped)) = chars.next() {
                    s.push(escaped);
                }
            }
            _ => {
                if let Some(s) = owned.as_mut() {
                    s.push(c);
                }
            }
        }
    }
    None
}

/// Pushes literal text, folding runs of whitespace into one space.
fn push_literal(segments: &mut Vec<Segment>, text: &str) {
    if text.is_empty() {
        return;
    }
    let mut folded = String::with_capacity(text.len());
    for ch in text.chars() {
        if ch.is_whitespace() {
            if !folded.ends_with(' ') {
                folded.push(' ');
            }
        } else {
            folded.push(ch);
        }
    }
    match segments.last_mut() {
        Some(Segment::Literal(previous)) => {
            previous.push_str(&folded);
            if previous.contains("  ") {
                *previous = previous.replace("  ", " ");
            }
        }
        _ => segments.push(Segment::Literal(folded)),
    }
}

/// An Envoy command at the start of `text` (`%NAME%`, `%NAME(ARG)%`, `%NAME(ARG):N%`):
/// its name, argument and length in bytes.
fn envoy_command(text: &str) -> Option<(&str, Option<&str>, usize)> {
    let body = text.strip_prefix('%')?;
    let name_len = body
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(body.len());
    let name = &body[..name_len];
    if name.len() < 2 || !name.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    let mut rest = &body[name_len..];
    let mut arg = None;
    if let Some(inner) = rest.strip_prefix('(') {
        let close = inner.find(')')?;
        arg = Some(&inner[..close]);
        rest = &inner[close + 1..];
    }
    if let Some(len) = rest.strip_prefix(':') {
        let digits = len.find(|c: char| !c.is_ascii_digit()).unwrap_or(len.len());
        if digits == 0 {
            return None;
        }
        rest = &len[digits..];
    }
    rest.strip_prefix('%')?;
    Some((name, arg, text.len() - rest.len() + 1))
}

fn envoy_field(name: &str, arg: Option<&str>) -> Field {
    let header = arg.map(str::to_ascii_uppercase);
    match (name, header.as_deref()) {
        ("START_TIME", _) => Field::StartTime,
        ("REQ", Some(":METHOD")) => Field::Method,
        ("REQ", Some(h)) if h.ends_with(":PATH") || h == "X-ENVOY-ORIGINAL-PATH" => Field::Path,
        ("REQ", Some(":AUTHORITY" | "HOST")) => Field::Authority,
        ("REQ", Some("X-FORWARDED-FOR")) => Field::ForwardedFor,
        ("REQ", Some("X-REQUEST-ID")) => Field::RequestId,
        ("PROTOCOL", _) => Field::Protocol,
        ("RESPONSE_CODE", _) => Field::Status,
        ("RESPONSE_FLAGS", _) => Field::Flags,
        ("BYTES_RECEIVED", _) => Field::BytesIn,
        ("BYTES_SENT", _) => Field::BytesOut,
        ("UPSTREAM_HOST", _) => Field::UpstreamHost,
        ("UPSTREAM_CLUSTER", _) => Field::UpstreamCluster,
        ("DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", _) => {
            Field::Client
        }
        ("REQUESTED_SERVER_NAME", _) => Field::Sni,
        ("DOWNSTREAM_PEER_URI_SAN", _) => Field::PeerUriSan,
        _ => Field::Skip,
    }
}

fn parse_envoy(text: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('%') {
        push_literal(&mut segments, &rest[..i]);
        let (name, arg, len) = envoy_command(&rest[i..]).ok_or_else(|| {
            format!(
                "`{}` is not an Envoy command (%NAME%, %NAME(ARG)% or %NAME(ARG):LENGTH%)",
                super::truncate(&rest[i..], 40)
            )
        })?;
        segments.push(Segment::Field {
            field: envoy_field(name, arg),
            quoted: false,
            pattern: None,
        });
        rest = &rest[i + len..];
    }
    push_literal(&mut segments, rest);
    Ok(segments)
}

/// Squid `logformat` codes (squid.conf `logformat`), longest first where one is a
/// prefix of another, and the field each stands for.
const SQUID_CODES: &[(&str, Field)] = &[
    (">eui", Field::Skip),
    (">qos", Field::Skip),
    (">nfmark", Field::Skip),
    ("<qos", Field::Skip),
    ("<nfmark", Field::Skip),
    (">la", Field::Skip),
    (">lp", Field::Skip),
    ("<la", Field::Skip),
    ("<lp", Field::Skip),
    (">ha", Field::Skip),
    (">Hs", Field::Status),
    ("<Hs", Field::Skip),
    (">rm", Field::Method),
    ("<rm", Field::Skip),
    (">ru", Field::Url),
    ("<ru", Field::Skip),
    (">rs", Field::Skip),
    ("<rs", Field::Skip),
    (">rd", Field::Authority),
    ("<rd", Field::Skip),
    (">rP", Field::Skip),
    ("<rP", Field::Skip),
    (">rp", Field::Path),
    ("<rp", Field::Skip),
    (">rv", Field::Protocol),
    ("<rv", Field::Skip),
    (">st", Field::BytesIn),
    ("<st", Field::BytesOut),
    (">sh", Field::Skip),
    ("<sh", Field::Skip),
    (">bs", Field::Skip),
    ("<bs", Field::Skip),
    ("<pt", Field::Skip),
    ("<tt", Field::Skip),
    ("<tS", Field::Skip),
    (">a", Field::Client),
    (">A", Field::Skip),
    (">p", Field::Skip),
    ("<a", Field::UpstreamHost),
    ("<A", Field::Skip),
    ("<p", Field::Skip),
    (">h", Field::Skip),
    ("<h", Field::Skip),
    ("la", Field::Skip),
    ("lp", Field::Skip),
    ("tr", Field::Skip),
    ("dt", Field::Skip),
    ("tt", Field::Skip),
    ("ts", Field::EpochSeconds),
    ("tu", Field::Millis),
    ("tl", Field::ClfTime),
    ("tg", Field::ClfTime),
    ("tS", Field::EpochSeconds),
    ("busy_time", Field::Skip),
    ("un", Field::User),
    ("ul", Field::User),
    ("ue", Field::User),
    ("us", Field::User),
    ("ui", Field::Skip),
    ("ea", Field::Skip),
    ("et", Field::Skip),
    ("err_code", Field::Skip),
    ("err_detail", Field::Skip),
    ("Ss", Field::SquidCode),
    ("Sh", Field::Skip),
    ("mt", Field::Skip),
    ("rm", Field::Method),
    ("ru", Field::Url),
    ("rp", Field::Path),
    ("rv", Field::Protocol),
    ("Hs", Field::Status),
    ("st", Field::Skip),
    ("sn", Field::Skip),
    ("note", Field::Skip),
    ("credentials", Field::Skip),
    ("master_xaction", Field::Skip),
];

fn squid_header_field(header: &str) -> Field {
    match header.to_ascii_lowercase().as_str() {
        "x-forwarded-for" => Field::ForwardedFor,
        "x-request-id" => Field::RequestId,
        "host" => Field::Authority,
        _ => Field::Skip,
    }
}

fn parse_squid(text: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('%') {
        push_literal(&mut segments, &rest[..i]);
        let mut code = &rest[i + 1..];
        if let Some(after) = code.strip_prefix('%') {
            push_literal(&mut segments, "%");
            rest = after;
            continue;
        }
        let start = code;
        let mut quoted = false;
        // Modifiers: quoting (`"`, `[`, `#`, `'`, `/`), left alignment, width and precision.
        while let Some(c) = code.chars().next() {
            match c {
                '"' => quoted = true,
                '[' | '#' | '\'' | '/' | '-' | '.' | '0'..='9' => {}
                _ => break,
            }
            code = &code[1..];
        }
        let mut arg = None;
        if let Some(inner) = code.strip_prefix('{') {
            let close = inner
                .find('}')
                .ok_or_else(|| format!("`%{}` has an unclosed `{{`", super::truncate(start, 20)))?;
            arg = Some(&inner[..close]);
            code = &inner[close + 1..];
        }
        let (mut field, name) = match squid_namespace(code) {
            Some(found) => found,
            None => SQUID_CODES
                .iter()
                .find(|(name, _)| code.starts_with(name))
                .map(|(name, field)| (*field, *name))
                .ok_or_else(|| {
                    format!(
                        "`%{}` is not a Squid logformat code",
                        super::truncate(start, 20)
                    )
                })?,
        };
        code = &code[name.len()..];
        // Old form: the argument after the code (`%>h{User-Agent}`).
        if arg.is_none()
            && let Some(inner) = code.strip_prefix('{')
            && let Some(close) = inner.find('}')
        {
            arg = Some(&inner[..close]);
            code = &inner[close + 1..];
        }
        if let (">h", Some(header)) = (name, arg) {
            field = squid_header_field(header);
        }
        let pattern = match field {
            Field::ClfTime => arg.map(str::to_string),
            _ => None,
        };
        segments.push(Segment::Field {
            field,
            quoted,
            pattern,
        });
        rest = code;
    }
    push_literal(&mut segments, rest);
    Ok(segments)
}

/// Namespaced codes (`ssl::>sni`, `adapt::<last_h`, `proxy_protocol::>h`): the
/// field and the code's text. The SNI is kept, the rest skipped.
fn squid_namespace(code: &str) -> Option<(Field, &str)> {
    let ns = code
        .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
        .unwrap_or(code.len());
    if ns == 0 || !code[ns..].starts_with("::") {
        return None;
    }
    let len = code
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '<' | '>')))
        .unwrap_or(code.len());
    let whole = &code[..len];
    let field = if whole == "ssl::>sni" {
        Field::Sni
    } else {
        Field::Skip
    };
    Some((field, whole))
}

/// The JSON line Docker's json-file driver and Kubernetes node logs write.
#[derive(Deserialize)]
struct Wrapper<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    log: Option<Cow<'a, str>>,
}

/// The text line inside a Docker / Kubernetes JSON wrapper, or the line itself.
pub(super) fn unwrap_line(line: &str, format: Format) -> Result<Cow<'_, str>, DecodeError> {
    if !line.trim_start().starts_with('{') {
        return Ok(Cow::Borrowed(line));
    }
    let wrapper: Wrapper<'_> =
        serde_json::from_str(line).map_err(|e| DecodeError::from_json(format, e))?;
    wrapper
        .log
        .ok_or_else(|| DecodeError::shape(format, "JSON line has no `log` text"))
}

/// Decodes text lines in `layout`: one event per non-blank line; one bad line fails
/// the whole payload.
pub fn decode(
    layout: &Layout,
    payload: &[u8],
    out: &mut Vec<NormalizedEvent>,
) -> Result<(), DecodeError> {
    let format = layout.family.format();
    super::each_line(payload, out, |line| {
        let line = unwrap_line(line, format)?;
        let values = layout.split(&line)?;
        match layout.family {
            Family::Squid => squid::from_values(&values),
            Family::Envoy => envoy_text::from_values(values),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(layout: &Layout) -> Vec<Field> {
        layout
            .segments
            .iter()
            .filter_map(|s| match s {
                Segment::Field { field, .. } => Some(*field),
                Segment::Literal(_) => None,
            })
            .collect()
    }

    #[test]
    fn presets_parse_into_their_family() {
        for (name, _) in PRESETS {
            let layout = Layout::parse(name).unwrap_or_else(|e| panic!("{e}"));
            let family = if matches!(name, "envoy" | "istio") {
                Family::Envoy
            } else {
                Family::Squid
            };
            assert_eq!(layout.family, family, "{name}");
            assert_eq!(layout.spec, name);
        }
        let native = Layout::parse("squid").unwrap();
        assert_eq!(
            fields(&native),
            [
                Field::EpochSeconds,
                Field::Millis,
                Field::Skip,
                Field::Client,
                Field::SquidCode,
                Field::Status,
                Field::BytesOut,
                Field::Method,
                Field::Url,
                Field::User,
                Field::Skip,
                Field::UpstreamHost,
                Field::Skip,
            ]
        );
        let istio = Layout::parse("istio").unwrap();
        assert!(fields(&istio).contains(&Field::UpstreamCluster));
        assert!(fields(&istio).contains(&Field::Sni));
    }

    #[test]
    fn custom_squid_format_with_headers() {
        let layout =
            Layout::parse("%ts.%03tu %>a %Ss/%03>Hs %<st %rm %ru %un \"%{User-Agent}>h\" %{X-Forwarded-For}>h %>h{X-Request-Id}")
                .unwrap();
        assert_eq!(layout.family, Family::Squid);
        let line = "1772442927.481 10.1.2.3 TCP_MISS/200 4312 GET http://pypi.org/simple/ svc-ci \"pip/24.0 (linux)\" 203.0.113.7 req-1";
        let v = layout.split(line).unwrap();
        assert_eq!(v.get(Field::EpochSeconds), Some("1772442927"));
        assert_eq!(v.get(Field::Millis), Some("481"));
        assert_eq!(v.get(Field::Status), Some("200"));
        assert_eq!(v.get(Field::User), Some("svc-ci"));
        assert_eq!(v.get(Field::ForwardedFor), Some("203.0.113.7"));
        assert_eq!(v.get(Field::RequestId), Some("req-1"));
    }

    #[test]
    fn padding_quotes_and_short_lines() {
        let native = Layout::parse("squid").unwrap();
        let v = native
            .split("1772442927.481    187 10.1.2.3 TCP_MISS/200 4312 GET http://a.example/x")
            .unwrap();
        assert_eq!(v.get(Field::Client), Some("10.1.2.3"));
        assert_eq!(v.get(Field::Url), Some("http://a.example/x"));
        assert_eq!(v.get(Field::User), None);

        let quoted = Layout::parse("%ts %\"rm %\"ru").unwrap();
        let v = quoted
            .split(r#"1772442927 "GET" "http://a.example/say \"hi\"""#)
            .unwrap();
        assert_eq!(v.get(Field::Url), Some(r#"http://a.example/say "hi""#));
        let err = quoted.split(r#"1772442927 "GET" "http://a.example/"#);
        assert_eq!(err.unwrap_err().reason(), "wrong_shape");
    }

    #[test]
    fn envoy_commands() {
        assert_eq!(
            envoy_command("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):64% x"),
            Some(("REQ", Some("X-ENVOY-ORIGINAL-PATH?:PATH"), 37))
        );
        assert_eq!(
            envoy_command("%START_TIME%"),
            Some(("START_TIME", None, 12))
        );
        assert_eq!(envoy_command("%Ss/%03>Hs"), None);
        assert_eq!(envoy_command("%REQ(:METHOD"), None);
    }

    #[test]
    fn bad_layouts_say_why() {
        for (spec, needle) in [
            ("", "is empty"),
            ("just text", "no %-codes"),
            ("%ts %zz", "not a Squid logformat code"),
            ("%ts%tu", "no text between"),
            ("%>a %rm %ru", "no time code"),
            ("[%START_TIME%] %REQ(:METHOD", "not an Envoy command"),
            ("%ts %{User-Agent>h", "unclosed"),
        ] {
            let e = Layout::parse(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn unknown_codes_in_namespaces_are_skipped() {
        let layout = Layout::parse("%ts %ssl::>sni %ssl::bump_mode %>a").unwrap();
        assert_eq!(
            fields(&layout),
            [Field::EpochSeconds, Field::Sni, Field::Skip, Field::Client]
        );
    }
}
