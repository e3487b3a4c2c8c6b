//! The per-record pipeline shared by `run` and `replay`: size check → decode → identity.
//!
//! It is synchronous and CPU-only; sources feed it records with their origin,
//! and it hands back resolved events or a dead letter that says why not.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::decode::{self, DecodeError, DecodeOptions, Format};
use crate::event::{NormalizedEvent, Origin};
use crate::identity::{RegistryHandle, Resolver};
use crate::telemetry::{RateLimitedLog, Stats};

/// A record that could not be decoded, with everything needed to replay it later.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Fixed reason label (`bad_json`, `oversized`, `wrong_shape`, …, `event_too_large`).
    pub reason: &'static str,
    /// The full error message.
    pub error: String,
    /// The format the record was decoded as.
    pub format: Format,
    pub origin: Origin,
    pub observed_time: DateTime<Utc>,
    pub payload_bytes: usize,
    /// The record, when it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The record in base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// Set when only the first `dead_letter.max_payload_bytes` of the record are kept
    /// (the whole record stays at its coordinates); `payload_sha256` identifies it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub payload_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_sha256: Option<String>,
}

impl DeadLetter {
    fn new(
        error: &DecodeError,
        format: Format,
        origin: Origin,
        record: &[u8],
        max_payload: usize,
    ) -> Self {
        Self::with_reason(
            error.reason(),
            error.to_string(),
            format,
            origin,
            record,
            max_payload,
        )
    }

    /// A dead letter for a reason of its own (one of
    /// [`crate::telemetry::DEAD_LETTER_REASONS`]), keeping at most `max_payload`
    /// bytes of `record`.
    pub fn with_reason(
        reason: &'static str,
        error: String,
        format: Format,
        origin: Origin,
        record: &[u8],
        max_payload: usize,
    ) -> Self {
        let max_payload = max_payload.max(64);
        // A dead letter must always fit its topic: an oversized record keeps a prefix
        // and its hash, so it can neither be lost silently nor block the pipeline.
        let truncated = record.len() > max_payload;
        let mut payload = &record[..record.len().min(max_payload)];
        if truncated && let Err(e) = std::str::from_utf8(payload) {
            payload = &payload[..e.valid_up_to()];
        }
        let sha256 = truncated.then(|| {
            use sha2::Digest;
            sha2::Sha256::digest(record)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        });
        // Text with control characters would grow up to six-fold when JSON-escaped;
        // base64 keeps every dead letter within a third of its record's size.
        let printable = |text: &str| {
            !text
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
        };
        let (text, b64) = match std::str::from_utf8(payload) {
            Ok(text) if printable(text) => (Some(text.to_string()), None),
            _ => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            ),
        };
        DeadLetter {
            reason,
            error,
            format,
            origin,
            observed_time: Utc::now(),
            payload_bytes: record.len(),
            payload: text,
            payload_base64: b64,
            payload_truncated: truncated,
            payload_sha256: sha256,
        }
    }

    /// The key of a dead letter on Kafka: the topic (or file) it came from.
    pub fn key(&self) -> &str {
        match &self.origin {
            Origin::Kafka { topic, .. } => topic,
            Origin::File { path, .. } => path,
        }
    }
}

/// Decodes records and resolves their identities.
pub struct Pipeline {
    max_record_bytes: usize,
    registry: RegistryHandle,
    resolver: Resolver,
    stats: Arc<Stats>,
    warn: RateLimitedLog,
    max_future: chrono::Duration,
    max_dead_letter_payload: usize,
}

impl Pipeline {
    /// Events dated further ahead of the clock than `max_future_secs` are dead-lettered
    /// (`bad_time`), as are events dated before 1970: one bad clock must not drag the
    /// detectors' event time into the future, nor to the edge of what dates can hold.
    pub fn with_max_future(mut self, max_future_secs: u64) -> Self {
        self.max_future =
            chrono::Duration::seconds(max_future_secs.min(i64::MAX as u64 / 2000) as i64);
        self
    }

    /// Dead letters keep at most this many bytes of their record (the rest is named by hash).
    pub fn with_max_dead_letter_payload(mut self, bytes: usize) -> Self {
        self.max_dead_letter_payload = bytes.max(64);
        self
    }

    pub fn new(
        max_record_bytes: usize,
        registry: RegistryHandle,
        issued_credentials_max: usize,
        stats: Arc<Stats>,
    ) -> Self {
        Pipeline {
            max_record_bytes,
            registry,
            resolver: Resolver::new(issued_credentials_max),
            stats,
            warn: RateLimitedLog::new(Duration::from_secs(10)),
            max_future: chrono::Duration::days(1),
            max_dead_letter_payload: 256 * 1024,
        }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The registry in use now (for the detectors of a batch).
    pub fn registry(&self) -> Arc<crate::identity::Registry> {
        self.registry.snapshot()
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    pub fn resolver_mut(&mut self) -> &mut Resolver {
        &mut self.resolver
    }

    /// Processes one record; appends its events to `out` (returning how many),
    /// or returns the dead letter for it. Never panics on input.
    pub fn process(
        &mut self,
        format: Format,
        options: &DecodeOptions,
        payload: &[u8],
        origin: Origin,
        out: &mut Vec<NormalizedEvent>,
    ) -> Result<usize, Box<DeadLetter>> {
        let start = out.len();
        let added = self.decode(format, options, payload, origin, out)?;
        self.resolve(&mut out[start..]);
        Ok(added)
    }

    /// Resolves the identities of decoded events, in the order given: identity
    /// resolution learns issued credentials, so it must see events in stream order.
    pub fn resolve(&mut self, events: &mut [NormalizedEvent]) {
        if events.is_empty() {
            return;
        }
        let registry = self.registry.snapshot();
        for event in events {
            self.resolver.resolve(&registry, event);
            self.stats.event(event);
        }
    }

    /// The first half of [`Pipeline::process`]: decodes one record into `out`
    /// (stamped with the read time and origin, identities not yet resolved), or
    /// returns its dead letter. `replay` decodes ahead and resolves in event-time order.
    pub fn decode(
        &mut self,
        format: Format,
        options: &DecodeOptions,
        payload: &[u8],
        origin: Origin,
        out: &mut Vec<NormalizedEvent>,
    ) -> Result<usize, Box<DeadLetter>> {
        self.stats.record();
        let start = out.len();
        let decoded = if payload.len() > self.max_record_bytes {
            Err(DecodeError::Oversized {
                size: payload.len(),
                limit: self.max_record_bytes,
            })
        } else {
            decode::decode(format, payload, options, out)
        };
        let observed = Utc::now();
        let latest = observed
            .checked_add_signed(self.max_future)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let decoded = decoded.and_then(|()| {
            let detail = out[start..].iter().find_map(|e| {
                if e.time > latest {
                    Some(format!(
                        "event time {} is more than {} s ahead of the clock ({observed})",
                        e.time,
                        self.max_future.num_seconds()
                    ))
                } else if e.time < DateTime::<Utc>::UNIX_EPOCH {
                    // Vendor logs start after 1970 (epoch forms cannot say less); a
                    // signed year such as -262143 is a broken clock or a crafted record.
                    Some(format!("event time {} is before 1970-01-01", e.time))
                } else {
                    None
                }
            });
            match detail {
                Some(detail) => {
                    out.truncate(start);
                    Err(DecodeError::BadTime { format, detail })
                }
                None => Ok(()),
            }
        });
        if let Err(error) = decoded {
            self.stats.decode_error(&error);
            self.stats.dead_letter(error.reason());
            if let Some(suppressed) = self.warn.admit(error.reason()) {
                tracing::warn!(
                    reason = error.reason(),
                    %error,
                    origin = ?origin,
                    suppressed_since_last = suppressed,
                    "record cannot be decoded; dead-lettered"
                );
            }
            return Err(Box::new(DeadLetter::new(
                &error,
                format,
                origin,
                payload,
                self.max_dead_letter_payload,
            )));
        }

        let added = out.len() - start;
        if added == 0 {
            self.stats.record_without_events();
            return Ok(0);
        }
        NormalizedEvent::keep_raw(&mut out[start..], payload);
        for event in &mut out[start..] {
            event.observed_time = observed;
            event.origin = Some(origin.clone());
        }
        Ok(added)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::IdentityStatus;
    use crate::identity::Registry;

    fn pipeline(max: usize) -> Pipeline {
        let registry = Registry::parse(
            "apps:\n  - {id: bot, name: Bot, owner: o@x, risk_tier: internal, registered_on: 2026-01-01, identities: {gateway_consumers: [bot-consumer]}}\n",
            "test",
        )
        .unwrap();
        Pipeline::new(
            max,
            RegistryHandle::new(registry),
            100,
            Arc::new(Stats::default()),
        )
    }

    fn origin(line: u64) -> Origin {
        Origin::File {
            path: "t".into(),
            line,
        }
    }

    #[test]
    fn good_record_is_resolved_and_bad_ones_are_dead_lettered() {
        let mut p = pipeline(4096);
        let opts = DecodeOptions::default();
        let mut out = Vec::new();
        let good = br#"{"time":"2026-11-22T13:00:00Z","category":"api_call","principal":"bot-consumer","principal_kind":"gateway_consumer"}"#;
        assert_eq!(
            p.process(Format::Generic, &opts, good, origin(1), &mut out),
            Ok(1)
        );
        let id = out[0].identity.as_ref().unwrap();
        assert_eq!(id.status, IdentityStatus::Registered);
        assert_eq!(out[0].origin, Some(origin(1)));

        let dl = p
            .process(Format::Generic, &opts, b"{not json", origin(2), &mut out)
            .unwrap_err();
        assert_eq!(dl.reason, "bad_json");
        assert_eq!(dl.payload.as_deref(), Some("{not json"));
        assert_eq!(dl.key(), "t");

        let dl = p
            .process(
                Format::Generic,
                &opts,
                &[0xff, 0xfe, b'{'],
                origin(3),
                &mut out,
            )
            .unwrap_err();
        assert_eq!(dl.payload_base64.as_deref(), Some("//57"));
        assert_eq!(out.len(), 1);
        let snap = p.stats().snapshot();
        assert_eq!((snap.records, snap.events, snap.dead_letters), (3, 1, 2));
    }

    #[test]
    fn far_future_events_and_control_characters() {
        let mut p = pipeline(4096).with_max_future(3600);
        let opts = DecodeOptions::default();
        let mut out = Vec::new();
        let future =
            br#"{"time":"2999-01-01T00:00:00Z","category":"api_call","principal":"bot-consumer"}"#;
        let dl = p
            .process(Format::Generic, &opts, future, origin(1), &mut out)
            .unwrap_err();
        assert_eq!(dl.reason, "bad_time");
        assert!(dl.error.contains("ahead of the clock"), "{}", dl.error);
        assert!(out.is_empty());
        // Valid UTF-8 full of control characters is kept as base64, not escaped six-fold.
        let controls = vec![0u8; 100];
        let dl = p
            .process(Format::Auto, &opts, &controls, origin(2), &mut out)
            .unwrap_err();
        assert!(dl.payload.is_none() && dl.payload_base64.is_some());
    }

    #[test]
    fn a_first_event_in_year_minus_262143_is_dead_lettered_not_a_panic() {
        let mut p = pipeline(4096);
        let opts = DecodeOptions::default();
        let mut out = Vec::new();
        for (line, time) in [
            "-262143-01-01T00:00:00",
            "0001-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
        ]
        .into_iter()
        .enumerate()
        {
            let record =
                format!(r#"{{"time":"{time}","category":"api_call","principal":"bot-consumer"}}"#);
            let dl = p
                .process(
                    Format::Generic,
                    &opts,
                    record.as_bytes(),
                    origin(line as u64),
                    &mut out,
                )
                .unwrap_err();
            assert_eq!(dl.reason, "bad_time", "{time}: {}", dl.error);
            assert!(dl.error.contains("before"), "{}", dl.error);
        }
        assert!(out.is_empty());
    }

    #[test]
    fn large_dead_letters_keep_a_prefix_and_a_hash() {
        let mut p = pipeline(1 << 20).with_max_dead_letter_payload(100);
        let big = "é".repeat(200).into_bytes();
        let dl = p
            .process(
                Format::Generic,
                &DecodeOptions::default(),
                &big,
                origin(1),
                &mut Vec::new(),
            )
            .unwrap_err();
        assert!(dl.payload_truncated);
        assert_eq!(dl.payload_bytes, 400);
        let kept = dl.payload.as_deref().unwrap();
        assert!(
            kept.len() <= 100 && !kept.is_empty(),
            "cut on a character boundary"
        );
        assert_eq!(dl.payload_sha256.as_deref().map(str::len), Some(64));
    }

    #[test]
    fn each_line_of_a_multi_line_squid_record_keeps_only_its_own_line_as_raw_data() {
        let mut p = pipeline(4096);
        let lines = [
            "1700000000.123  30012 10.1.2.3 TCP_TUNNEL/200 5120 CONNECT api.openai.com:443 alice HIER_DIRECT/104.18.7.192 -",
            "1700000001.000     12 10.1.2.4 TCP_MISS/200 734 GET http://example.com/a?b=c bob HIER_DIRECT/93.184.216.34 text/html",
            "1700000002.500      0 10.1.2.5 TCP_DENIED/403 3900 CONNECT evil.example:443 - HIER_NONE/- text/html",
        ];
        let record = format!("{}\r\n\n{}\n{}\n", lines[0], lines[1], lines[2]);
        let mut out = Vec::new();
        let added = p
            .process(
                Format::Squid,
                &DecodeOptions::default(),
                record.as_bytes(),
                origin(1),
                &mut out,
            )
            .expect("decoded");
        assert_eq!(added, 3);
        let raw: Vec<&str> = out
            .iter()
            .map(|e| e.raw_data.as_deref().expect("raw_data kept"))
            .collect();
        assert_eq!(
            raw, lines,
            "each event carries its own line, not the record"
        );
        // A single line (with its line break) still keeps the line as it was written.
        let mut one = Vec::new();
        p.process(
            Format::Squid,
            &DecodeOptions::default(),
            format!("{}\n", lines[0]).as_bytes(),
            origin(2),
            &mut one,
        )
        .expect("decoded");
        assert_eq!(one[0].raw_data.as_deref(), Some(lines[0]));
    }

    #[test]
    fn oversized_records_are_not_parsed() {
        let mut p = pipeline(64);
        let big = vec![b' '; 65];
        let dl = p
            .process(
                Format::Auto,
                &DecodeOptions::default(),
                &big,
                origin(1),
                &mut Vec::new(),
            )
            .unwrap_err();
        assert_eq!(dl.reason, "oversized");
        assert!(dl.error.contains("65 bytes"));
    }
}
