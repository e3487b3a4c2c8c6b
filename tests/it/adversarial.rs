//! Adversarial input: a generated corpus of malformed, truncated, deeply nested,
//! huge and wrongly-typed records, built from the real vendor samples, through
//! every decoder and the pipeline. Nothing may panic; every rejected record
//! becomes a dead letter with a known reason; good records around bad ones
//! still come through.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use appwarden::decode::{DecodeError, DecodeOptions, Format};
use appwarden::event::Origin;
use appwarden::identity::{Registry, RegistryHandle};
use appwarden::pipeline::Pipeline;
use appwarden::telemetry::Stats;

use crate::support::fixture;

/// SplitMix64: a seeded generator, so a failure names the seed that reproduces it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Every record of every vendor sample, with the format it is.
fn samples() -> Vec<(Format, Vec<u8>)> {
    let files = [
        (
            Format::Cloudtrail,
            "aws_cloudtrail/panther_rule_tests.ndjson",
        ),
        (
            Format::Cloudtrail,
            "aws_cloudtrail/documented_batch_get_secret_value.ndjson",
        ),
        (Format::Entra, "azure_signin/panther_rule_tests.ndjson"),
        (
            Format::Entra,
            "azure_signin/documented_service_principal.ndjson",
        ),
        (Format::Okta, "okta_systemlog/panther_rule_tests.ndjson"),
        (Format::Kong, "kong/documented.ndjson"),
        (Format::Envoy, "envoy/documented.ndjson"),
        (Format::Squid, "squid/documented.log"),
        (Format::AzureKeyvault, "azure_keyvault/documented.ndjson"),
        (Format::EnvoyText, "envoy/documented_text.log"),
    ];
    let mut out = Vec::new();
    for (format, path) in files {
        let text = std::fs::read(fixture(path)).expect("fixture");
        for line in text.split(|b| *b == b'\n') {
            if !line.iter().all(u8::is_ascii_whitespace) {
                out.push((format, line.to_vec()));
            }
        }
    }
    let vault = std::fs::read_dir(fixture("vault_audit")).expect("vault fixtures");
    for entry in vault.flatten() {
        let text = std::fs::read(entry.path()).expect("fixture");
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            out.push((Format::Vault, line.to_vec()));
        }
    }
    out
}

/// Replaces the value at a random place in a JSON document with one of the wrong type.
fn wrong_type(value: &mut serde_json::Value, rng: &mut Rng) {
    let replacements = [
        serde_json::json!(null),
        serde_json::json!(12345),
        serde_json::json!(-1.5e300),
        serde_json::json!(true),
        serde_json::json!("x"),
        serde_json::json!([1, "two", null]),
        serde_json::json!({"nested": {"deeper": []}}),
        serde_json::json!("\u{0}\u{1b}[31m\u{202e}"),
        serde_json::json!("9999-99-99T99:99:99Z"),
    ];
    let mut node = value;
    loop {
        let children = match node {
            serde_json::Value::Object(map) if !map.is_empty() => map.len(),
            serde_json::Value::Array(items) if !items.is_empty() => items.len(),
            _ => 0,
        };
        if children == 0 || rng.below(3) == 0 {
            *node = replacements[rng.below(replacements.len())].clone();
            return;
        }
        let pick = rng.below(children);
        node = match node {
            serde_json::Value::Object(map) => map.values_mut().nth(pick).expect("child"),
            serde_json::Value::Array(items) => &mut items[pick],
            _ => return,
        };
    }
}

/// One mutation of a sample.
fn mutate(sample: &[u8], rng: &mut Rng) -> Vec<u8> {
    match rng.below(8) {
        // Truncated anywhere.
        0 => sample[..rng.below(sample.len())].to_vec(),
        // Bytes flipped.
        1 => {
            let mut out = sample.to_vec();
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            out
        }
        // A value of the wrong type somewhere.
        2 | 3 => match serde_json::from_slice::<serde_json::Value>(sample) {
            Ok(mut value) => {
                wrong_type(&mut value, rng);
                serde_json::to_vec(&value).expect("serialize")
            }
            Err(_) => sample.iter().rev().copied().collect(),
        },
        // Deeply nested.
        4 => {
            let depth = 100 + rng.below(5000);
            let mut out = Vec::with_capacity(depth * 7 + sample.len());
            for _ in 0..depth {
                out.extend_from_slice(if rng.below(2) == 0 { b"[" } else { b"{\"a\":" });
            }
            out.extend_from_slice(sample);
            out
        }
        // Huge: a field padded past the record limit.
        5 => {
            let mut out = b"{\"pad\":\"".to_vec();
            out.resize(out.len() + (1 << 20) + rng.below(1000), b'A');
            out.extend_from_slice(b"\",\"rest\":");
            out.extend_from_slice(sample);
            out.push(b'}');
            out
        }
        // Invalid UTF-8 and control bytes spliced in.
        6 => {
            let mut out = sample.to_vec();
            let at = rng.below(out.len());
            out.splice(at..at, [0xff, 0xfe, 0x00, 0xc3, 0x28]);
            out
        }
        // Envelopes of garbage, and empty containers.
        _ => [
            b"{\"Records\":[{},{\"eventTime\":[]}]}".to_vec(),
            b"[[],[{}],[[1]]]".to_vec(),
            b"{\"records\":\"nope\"}".to_vec(),
            b"\"just a string\"".to_vec(),
            b"1e99999".to_vec(),
            Vec::new(),
        ][rng.below(6)]
        .clone(),
    }
}

fn pipeline() -> Pipeline {
    let registry = Registry::parse("apps: []\n", "test").expect("registry");
    Pipeline::new(
        1 << 20,
        RegistryHandle::new(registry),
        1000,
        Arc::new(Stats::default()),
    )
}

#[test]
fn thousands_of_mutated_records_never_panic_and_every_rejection_has_a_reason() {
    let samples = samples();
    assert!(samples.len() > 400, "{} samples", samples.len());
    let formats = Format::ALL;
    let options = DecodeOptions::default();
    let mut rejected = 0usize;
    let mut accepted = 0usize;
    for seed in 0..6_000u64 {
        let mut rng = Rng(seed);
        let (own, sample) = &samples[rng.below(samples.len())];
        let record = mutate(sample, &mut rng);
        // Each record through the auto decoder, its own format and one other.
        for format in [Format::Auto, *own, formats[rng.below(formats.len())]] {
            let mut pipeline = pipeline();
            let mut out = Vec::new();
            let result = catch_unwind(AssertUnwindSafe(|| {
                pipeline.process(
                    format,
                    &options,
                    &record,
                    Origin::File {
                        path: "fuzz".into(),
                        line: seed,
                    },
                    &mut out,
                )
            }));
            match result {
                Err(_) => panic!(
                    "seed {seed}: {format} decoder panicked on {:?}",
                    String::from_utf8_lossy(&record[..record.len().min(300)])
                ),
                Ok(Ok(_)) => accepted += 1,
                Ok(Err(letter)) => {
                    rejected += 1;
                    assert!(
                        DecodeError::REASONS.contains(&letter.reason),
                        "seed {seed}: unknown reason {}",
                        letter.reason
                    );
                    assert!(!letter.error.is_empty(), "seed {seed}: empty error");
                    assert!(out.is_empty(), "seed {seed}: a rejected record left events");
                    // The dead letter keeps the record (or its prefix and hash).
                    assert_eq!(letter.payload_bytes, record.len());
                }
            }
        }
    }
    assert!(rejected > 5_000, "most mutations are rejected: {rejected}");
    assert!(accepted > 100, "some mutations stay valid: {accepted}");
}

#[test]
fn good_records_around_bad_ones_come_through_replay() {
    // Interleave every good sample with records that can never decode.
    let bad: [&[u8]; 5] = [
        b"{\"eventVersion\": \"1.08\", \"eventTime\": ",
        b"\xff\xfe not text",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        b"{\"published\": 42, \"eventType\": [\"user.session.start\"]}",
        b"{}",
    ];
    let kong = std::fs::read(fixture("kong/documented.ndjson")).expect("fixture");
    let good: Vec<&[u8]> = kong
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut text = Vec::new();
    for (i, record) in good.iter().enumerate() {
        text.extend_from_slice(bad[i % bad.len()]);
        text.push(b'\n');
        text.extend_from_slice(record);
        text.push(b'\n');
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("mixed.log");
    std::fs::write(&input, &text).expect("input");
    let events = dir.path().join("events.ndjson");
    let dead = dir.path().join("dead.ndjson");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_appwarden"))
        .env("APPWARDEN__LOG__FORMAT", "json")
        .args(["replay", "--alerts-out"])
        .arg(dir.path().join("alerts.ndjson"))
        .arg("--events-out")
        .arg(&events)
        .arg("--dead-letter-out")
        .arg(&dead)
        .arg(&input)
        .output()
        .expect("replay runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let count = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    assert_eq!(count(&events), good.len(), "every good record is an event");
    assert_eq!(
        count(&dead),
        good.len(),
        "every bad record is a dead letter"
    );
    let letters: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .expect("dead letters")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    for (i, letter) in letters.iter().enumerate() {
        assert_eq!(letter["origin"]["line"], (2 * i + 1) as u64, "{letter}");
        assert!(letter["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
}
