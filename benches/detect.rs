//! Detector throughput (events/s through the sharded engine with the default
//! detectors) and memory per tracked identity, measured in one run.
//!
//! Run: `cargo bench --bench detect`. The memory figures are the growth of the
//! process's resident set while 100 000 and then 1 000 000 idle identities are
//! added, divided by the number of identities.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput};

use appwarden::decode::{DecodeOptions, Format};
use appwarden::detect::{Engine, EngineSettings};
use appwarden::event::{
    Category, IdentityStatus, NormalizedEvent, Origin, Product, ResolvedIdentity,
};
use appwarden::generator::{World, WorldConfig};
use appwarden::identity::{Registry, RegistryHandle};
use appwarden::pipeline::Pipeline;
use appwarden::telemetry::Stats;

fn settings(shards: usize) -> EngineSettings {
    EngineSettings {
        detectors_dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/detectors")),
        shards,
        allowed_lateness_secs: 120,
        idle_eviction_secs: 14 * 86_400,
        max_identities_per_shard: 1_000_000,
        max_source_skew_secs: 3600,
    }
}

/// A day of generated traffic for 36 apps, decoded and resolved once.
fn events(world: &World) -> Vec<Arc<NormalizedEvent>> {
    let registry = Registry::build(world.registry(), "bench").expect("registry");
    let mut pipeline = Pipeline::new(
        1 << 20,
        RegistryHandle::new(registry),
        100_000,
        Arc::new(Stats::default()),
    );
    let mut out = Vec::new();
    for (i, record) in world.records().iter().enumerate() {
        let origin = Origin::File {
            path: "bench".into(),
            line: i as u64,
        };
        let _ = pipeline.process(
            Format::Auto,
            &DecodeOptions::default(),
            &record.payload,
            origin,
            &mut out,
        );
    }
    out.into_iter().map(Arc::new).collect()
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let world = World::new(WorldConfig {
        hours: 24,
        ..WorldConfig::default()
    });
    let registry = Arc::new(Registry::build(world.registry(), "bench").expect("registry"));
    let events = events(&world);

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .configure_from_args();
    let mut group = criterion.benchmark_group("detect");
    group.throughput(Throughput::Elements(events.len() as u64));
    for shards in [1, 2] {
        group.bench_function(format!("engine_{shards}_shards_day_of_36_apps"), |b| {
            b.iter_batched(
                || Engine::start(&settings(shards)).expect("engine"),
                |mut engine| {
                    runtime.block_on(async {
                        for chunk in events.chunks(1000) {
                            black_box(engine.process(chunk, &registry).await.expect("process"));
                        }
                    });
                    engine
                },
                criterion::BatchSize::PerIteration,
            )
        });
    }
    group.finish();
    criterion.final_summary();

    // Memory per idle identity: 100 000, then 1 000 000 distinct unregistered
    // identities, one event each, seen by every default detector that keeps
    // per-identity state. Each count gets a fresh engine; the earlier ones stay
    // alive, so that freed memory cannot hide the growth.
    let t0 = Utc
        .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .expect("time");
    let mut engines = Vec::new();
    for identities in [100_000usize, 1_000_000] {
        let mut engine = Engine::start(&settings(2)).expect("engine");
        let event = |i: usize| {
            let mut e = NormalizedEvent::new(t0, Product::Kong, Category::EgressRequest, "POST");
            e.dst_host = Some("api.openai.com".into());
            e.identity = Some(ResolvedIdentity {
                status: IdentityStatus::Unregistered,
                app_id: None,
                key: format!("gateway_consumer:bot-{identities}-{i:07}"),
                matched: None,
                assumed_by: None,
            });
            Arc::new(e)
        };
        // Events are made and dropped chunk by chunk so that they barely count in the growth.
        let before = resident_bytes();
        runtime.block_on(async {
            for start in (0..identities).step_by(5000) {
                let chunk: Vec<Arc<NormalizedEvent>> = (start..start + 5000).map(event).collect();
                engine.process(&chunk, &registry).await.expect("process");
            }
        });
        let after = resident_bytes();
        let tracked = runtime.block_on(engine.tracked()).expect("tracked");
        if let (Some(before), Some(after)) = (before, after) {
            let growth = after.saturating_sub(before) as f64;
            println!(
                "memory, {identities} idle identities: {tracked} tracked over all detectors; resident growth {:.1} MiB = {:.0} bytes per tracked (detector, identity) pair, {:.0} bytes per identity (target < 2048)",
                growth / (1 << 20) as f64,
                growth / tracked.max(1) as f64,
                growth / identities as f64,
            );
        }
        engines.push(engine);
    }
}
