//! Decode + normalize throughput per vendor format, beside bare `serde_json`
//! validation (`IgnoredAny`) of the same bytes, measured in the same run.
//!
//! Run: `cargo bench --bench decode`. After criterion's own report, a table
//! gives events/s for both and their ratio (the design target is ≥ 0.5).
//! Squid lines are not JSON; their baseline is UTF-8 validation plus a
//! whitespace split of the same bytes.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use serde::de::IgnoredAny;

use appwarden::decode::{self, DecodeOptions, Format};
use appwarden::generator::{Family, World, WorldConfig};

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vendor")
        .join(path)
}

/// Vendor records of one format: the real samples that decode, or generated ones.
fn corpus(format: Format) -> Vec<Vec<u8>> {
    let wrapped = |path: &str| -> Vec<Vec<u8>> {
        std::fs::read_to_string(fixture(path))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| serde_json::to_vec(&v["log"]).ok())
            .collect()
    };
    let raw = |path: &str| -> Vec<Vec<u8>> {
        std::fs::read_to_string(fixture(path))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.as_bytes().to_vec())
            .collect()
    };
    let records = match format {
        Format::Okta => wrapped("okta_systemlog/panther_rule_tests.ndjson"),
        Format::Entra => wrapped("azure_signin/panther_rule_tests.ndjson"),
        Format::Cloudtrail => wrapped("aws_cloudtrail/stratus_red_team_detonation_logs.ndjson"),
        Format::Vault => {
            raw("vault_audit/hashicorp-education_learn-vault-monitoring_vault-audit.ndjson")
        }
        Format::Kong => raw("kong/documented.ndjson"),
        Format::Envoy => raw("envoy/documented.ndjson"),
        Format::Squid => raw("squid/documented.log"),
        Format::AzureKeyvault => raw("azure_keyvault/documented.ndjson"),
        Format::EnvoyText => raw("envoy/documented_text.log"),
        Format::Generic | Format::Auto => Vec::new(),
    };
    let options = DecodeOptions::default();
    let mut out = Vec::new();
    records
        .into_iter()
        .filter(|r| decode::decode(format, r, &options, &mut out).is_ok())
        .collect()
}

/// Generated traffic of all families: the mix `auto` sees in production.
fn generated_mix() -> Vec<Vec<u8>> {
    let world = World::new(WorldConfig {
        apps: 24,
        hours: 2,
        malformed_ratio: 0.0,
        ..WorldConfig::default()
    });
    world
        .records()
        .into_iter()
        .filter(|r| Family::ALL.contains(&r.family))
        .map(|r| r.payload)
        .collect()
}

fn baseline(format: Format, records: &[Vec<u8>]) -> usize {
    let mut ok = 0;
    for r in records {
        if format == Format::Squid {
            if let Ok(text) = std::str::from_utf8(r) {
                ok += black_box(text.split_ascii_whitespace().count()).min(1);
            }
        } else if serde_json::from_slice::<IgnoredAny>(r).is_ok() {
            ok += 1;
        }
    }
    ok
}

fn decode_all(
    format: Format,
    records: &[Vec<u8>],
    out: &mut Vec<appwarden::event::NormalizedEvent>,
) -> usize {
    let options = DecodeOptions::default();
    let mut ok = 0;
    for r in records {
        out.clear();
        if decode::decode(format, r, &options, out).is_ok() {
            ok += 1;
        }
        black_box(&out);
    }
    ok
}

fn criterion_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    PathBuf::from(target).join("criterion")
}

/// Mean nanoseconds per iteration from criterion's saved estimate.
fn mean_ns(group: &str, bench: &str) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(bench)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn main() {
    let mut criterion = Criterion::default()
        .output_directory(&criterion_dir())
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    // The vendor formats (auto and generic have no corpus of their own).
    let mut cases: Vec<(String, Format, Vec<Vec<u8>>)> = Format::ALL
        .iter()
        .copied()
        .filter(|f| !matches!(f, Format::Auto | Format::Generic))
        .map(|f| (f.as_str().to_string(), f, corpus(f)))
        .collect();
    cases.push(("auto-generated-mix".into(), Format::Auto, generated_mix()));

    for (name, format, records) in &cases {
        let bytes: usize = records.iter().map(Vec::len).sum();
        let mut group = criterion.benchmark_group(name.as_str());
        group.throughput(Throughput::Elements(records.len() as u64));
        group.bench_function("serde_json_ignored_any", |b| {
            b.iter(|| baseline(*format, records))
        });
        let mut out = Vec::new();
        group.bench_function("decode_normalize", |b| {
            b.iter(|| decode_all(*format, records, &mut out))
        });
        group.finish();
        eprintln!("{name}: {} records, {} bytes", records.len(), bytes);
    }
    criterion.final_summary();

    println!(
        "\n{:<20} {:>8} {:>16} {:>16} {:>7}",
        "format", "records", "baseline ev/s", "decode ev/s", "ratio"
    );
    for (name, _, records) in &cases {
        let (Some(base), Some(ours)) = (
            mean_ns(name, "serde_json_ignored_any"),
            mean_ns(name, "decode_normalize"),
        ) else {
            continue;
        };
        let n = records.len() as f64;
        println!(
            "{name:<20} {:>8} {:>16.0} {:>16.0} {:>7.2}",
            records.len(),
            n / (base / 1e9),
            n / (ours / 1e9),
            base / ours
        );
    }
}
