//! Helpers shared by the decoders' tests: the fixture files under
//! `tests/fixtures/vendor`, the vendor records (`log`) of wrapped samples,
//! the one record carrying a marker, and the reasons records are refused for.

use std::path::PathBuf;

use serde_json::Value;

use super::{DecodeError, DecodeOptions, Format};
use crate::event::{NormalizedEvent, PrincipalKind, Product};

/// A vendor decoder: `fn decode(payload, out)`.
pub(crate) type Decoder = fn(&[u8], &mut Vec<NormalizedEvent>) -> Result<(), DecodeError>;

/// The path of `name` (a file or folder) under `tests/fixtures/vendor`.
pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vendor"
    ))
    .join(name)
}

/// The lines of fixture `name` that are not blank.
pub(crate) fn lines(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(fixture(name))
        .unwrap_or_else(|e| panic!("fixture {name} is readable: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// The vendor records (`log` of each wrapper line) of fixture `name`, as bytes.
pub(crate) fn samples(name: &str) -> Vec<Vec<u8>> {
    lines(name)
        .iter()
        .map(|line| {
            let wrapper: Value = serde_json::from_str(line).expect("fixture line is JSON");
            serde_json::to_vec(&wrapper["log"]).expect("re-serialize")
        })
        .collect()
}

/// `payload` decoded into exactly one event.
pub(crate) fn one(decode: Decoder, payload: &[u8]) -> NormalizedEvent {
    let mut out = Vec::new();
    decode(payload, &mut out)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(payload)));
    assert_eq!(out.len(), 1);
    out.pop().unwrap()
}

/// Why `decode` refuses `input`; it must leave nothing behind.
pub(crate) fn reason(decode: Decoder, input: &[u8]) -> &'static str {
    let mut out = Vec::new();
    let err = decode(input, &mut out).unwrap_err();
    assert!(out.is_empty());
    err.reason()
}

/// Asserts that `decode` refuses each input for its reason and leaves nothing behind.
pub(crate) fn assert_reasons<I: AsRef<[u8]>>(decode: Decoder, cases: &[(I, &str)]) {
    for (input, reason) in cases {
        let input = input.as_ref();
        let mut out = Vec::new();
        let err = decode(input, &mut out).unwrap_err();
        assert_eq!(
            err.reason(),
            *reason,
            "{}: {err}",
            String::from_utf8_lossy(input)
        );
        assert!(out.is_empty());
    }
}

/// The actor's forms, as `(kind, value)`.
pub(crate) fn refs(event: &NormalizedEvent) -> Vec<(PrincipalKind, &str)> {
    event
        .actor
        .refs
        .iter()
        .map(|r| (r.kind, r.value.as_str()))
        .collect()
}

/// A fixture of one vendor record a line, with the decoder for its format.
pub(crate) struct Documented {
    /// The file, under `tests/fixtures/vendor`.
    pub(crate) name: &'static str,
    pub(crate) decode: Decoder,
}

impl Documented {
    /// The records (the lines that are not blank).
    pub(crate) fn lines(&self) -> Vec<String> {
        lines(self.name)
    }

    /// Every record with the one event it decodes into.
    pub(crate) fn events(&self) -> Vec<(String, NormalizedEvent)> {
        self.lines()
            .into_iter()
            .map(|line| {
                let event = one(self.decode, line.as_bytes());
                (line, event)
            })
            .collect()
    }

    /// The one record that contains `marker`, decoded.
    pub(crate) fn event_for(&self, marker: &str) -> NormalizedEvent {
        let lines = self.lines();
        let hits: Vec<&String> = lines.iter().filter(|l| l.contains(marker)).collect();
        assert_eq!(
            hits.len(),
            1,
            "marker {marker} should match one record of {}",
            self.name
        );
        one(self.decode, hits[0].as_bytes())
    }

    /// Asserts that `auto` decodes each record into one event of `product`.
    pub(crate) fn assert_auto_detects(&self, product: Product) {
        let options = DecodeOptions::default();
        for line in self.lines() {
            let mut out = Vec::new();
            super::decode(Format::Auto, line.as_bytes(), &options, &mut out)
                .unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].product, product, "{line}");
        }
    }
}
