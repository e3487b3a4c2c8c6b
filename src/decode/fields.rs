//! Field helpers shared by the JSON decoders: borrowed optional strings, numbers
//! written as strings, and absent-value conventions.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::{DecodeError, Format, epoch_time, epoch_time_int, parse_time};

/// A scalar a gateway may write as a JSON number or as a string (`200` or `"200"`).
///
/// Gateways write these both ways (older Kong versions write sizes as strings).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Flex<'a> {
    Int(i64),
    Float(f64),
    Text(Cow<'a, str>),
}

impl Flex<'_> {
    /// The value as a non-negative whole number, if it is one (`"-"` and `""` are not).
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            Flex::Int(i) => u64::try_from(*i).ok(),
            Flex::Float(f) => {
                (f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f < 1.8e19).then_some(*f as u64)
            }
            Flex::Text(s) => s.trim().parse().ok(),
        }
    }

    /// Event time from an RFC 3339 string, or from epoch seconds/milliseconds
    /// written as a number or as a string of digits.
    pub(crate) fn to_time(&self, format: Format) -> Result<DateTime<Utc>, DecodeError> {
        match self {
            Flex::Int(i) => epoch_time_int(format, *i),
            Flex::Float(f) => epoch_time(format, *f),
            Flex::Text(s) => {
                let s = s.trim().trim_start_matches('[').trim_end_matches(']');
                if let Ok(whole) = s.parse::<i64>() {
                    return epoch_time_int(format, whole);
                }
                if let Ok(value) = s.parse::<f64>() {
                    return epoch_time(format, value);
                }
                parse_time(format, s)
            }
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Flex<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FlexVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for FlexVisitor<'a> {
            type Value = Flex<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Flex<'a>, E> {
                Ok(Flex::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Flex<'a>, E> {
                Ok(i64::try_from(v).map_or(Flex::Float(v as f64), Flex::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Flex<'a>, E> {
                Ok(Flex::Float(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Flex<'a>, E> {
                Ok(Flex::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Flex<'a>, E> {
                Ok(Flex::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Flex<'a>, E> {
                Ok(Flex::Text(Cow::Owned(v)))
            }
        }

        deserializer.deserialize_any(FlexVisitor(PhantomData))
    }
}

/// Reads an optional string, borrowing it from the payload when it has no escapes.
///
/// `#[serde(borrow)]` alone borrows only a bare `Cow<str>`; through `Option` serde
/// copies every string, so optional string fields use this with `default`.
pub(crate) fn opt_str<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(deserializer)?.map(|b| b.0))
}

/// A string value unless it is absent, empty or `-`.
pub(crate) fn present<'s>(value: &'s Option<Cow<'_, str>>) -> Option<&'s str> {
    let v = value.as_deref()?.trim();
    (!v.is_empty() && v != "-").then_some(v)
}

/// Rejects a top-level JSON array before serde reads it positionally into a struct.
pub(crate) fn reject_array(format: Format, payload: &[u8]) -> Result<(), DecodeError> {
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => Err(DecodeError::shape(
            format,
            "expected a JSON object, found an array",
        )),
        _ => Ok(()),
    }
}
