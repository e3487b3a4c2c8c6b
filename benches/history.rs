//! History write throughput and a one-hour-window query over 10 million stored
//! events, with DuckDB on the same files measured in the same run as the reference.
//!
//! Run: `cargo bench --bench history` (DuckDB from `pip install duckdb`).
//! Environment: `HISTORY_BENCH_EVENTS` (default 10 000 000) events are stored
//! under `$CARGO_TARGET_DIR/bench-history` (reused by later runs when it holds
//! the same count). Figures printed:
//! - write: events/s through the history writer (Arrow batches, Parquet zstd,
//!   atomic files) against serde_json NDJSON of the same events to a file, as
//!   a criterion group (`history_write`) and as one timed pass with sizes;
//! - size on disk per million events;
//! - one-hour window aggregates, ours (DataFusion, `appwarden query` engine)
//!   against DuckDB reading the same files, each the median of 5 runs after a warm-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Duration as Span, TimeZone, Utc};

use appwarden::decode::{DecodeOptions, Format};
use appwarden::event::{NormalizedEvent, Origin};
use appwarden::generator::{World, WorldConfig};
use appwarden::history::{EventRow, HistorySettings, HistoryWriter};
use appwarden::identity::{Registry, RegistryHandle};
use appwarden::pipeline::Pipeline;
use appwarden::query::{QueryEngine, QuerySettings};
use appwarden::telemetry::Stats;

/// A day of generated traffic for 36 apps, decoded and resolved once.
fn day_of_events() -> Vec<NormalizedEvent> {
    let world = World::new(WorldConfig {
        seed: 3,
        apps: 36,
        hours: 24,
        malformed_ratio: 0.0,
        start: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        ..WorldConfig::default()
    });
    let registry = Registry::build(world.registry(), "bench").expect("registry");
    let mut pipeline = Pipeline::new(
        1 << 20,
        RegistryHandle::new(registry),
        100_000,
        Arc::new(Stats::default()),
    )
    .with_max_future(100 * 365 * 86_400);
    let mut out = Vec::new();
    for (i, record) in world.records().iter().enumerate() {
        let origin = Origin::Kafka {
            topic: "bench".into(),
            partition: (i % 6) as i32,
            offset: i as i64,
        };
        let _ = pipeline.process(
            Format::Auto,
            &DecodeOptions::default(),
            &record.payload,
            origin,
            &mut out,
        );
    }
    out
}

fn settings(path: &Path) -> HistorySettings {
    HistorySettings {
        path: path.display().to_string(),
        s3_endpoint: String::new(),
        s3_region: String::new(),
        s3_allow_http: false,
        flush_interval_secs: 3600,
        flush_max_events: usize::MAX,
        flush_max_mib: 1024,
        retention_days: 0,
        // The bench measures writing; compaction runs later, off this path.
        compact_after_secs: 0,
        raw_data: false,
        zstd_level: 3,
    }
}

/// The day's events shifted by `days`, as history rows.
fn shifted(day: &[NormalizedEvent], days: i64) -> Vec<EventRow> {
    day.iter()
        .map(|e| {
            let mut e = e.clone();
            e.time += Span::days(days);
            e.observed_time = e.time;
            EventRow {
                event: Arc::new(e),
                flags: Vec::new(),
            }
        })
        .collect()
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                total += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Write throughput: the history writer against NDJSON of the same events.
fn bench_write(day: &[NormalizedEvent], scratch: &Path) {
    let rows = shifted(day, 0);
    let n = rows.len();
    let json_path = scratch.join("events.ndjson");
    let start = Instant::now();
    {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&json_path).expect("file"));
        for row in &rows {
            serde_json::to_writer(&mut out, row.event.as_ref()).expect("json");
            out.write_all(b"\n").expect("write");
        }
        out.into_inner().expect("flush").sync_all().expect("sync");
    }
    let json = start.elapsed();
    let root = scratch.join("write");
    let _ = std::fs::remove_dir_all(&root);
    let mut writer = HistoryWriter::start(&settings(&root)).expect("writer");
    let start = Instant::now();
    writer.events(rows).expect("buffer");
    writer.flush_blocking().expect("flush");
    let parquet = start.elapsed();
    println!(
        "write {n} events: history (Parquet zstd) {:.0} ev/s, NDJSON (serde_json) {:.0} ev/s, ratio {:.2}; \
         bytes per event: Parquet {:.0}, NDJSON {:.0}",
        rate(n, parquet),
        rate(n, json),
        json.as_secs_f64() / parquet.as_secs_f64(),
        dir_bytes(&root) as f64 / n as f64,
        std::fs::metadata(&json_path).map(|m| m.len()).unwrap_or(0) as f64 / n as f64,
    );
}

/// Criterion: writing a day of events to Parquet (the history writer: Arrow
/// batches, zstd, atomic files) against serde_json NDJSON of the same events.
fn criterion_write(day: &[NormalizedEvent], scratch: &Path) {
    use criterion::{BatchSize, Criterion, Throughput};
    let mut criterion = Criterion::default()
        .output_directory(&scratch.join("criterion"))
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .sample_size(10)
        .configure_from_args();
    let mut group = criterion.benchmark_group("history_write");
    group.throughput(Throughput::Elements(day.len() as u64));
    let root = scratch.join("criterion-write");
    group.bench_function("parquet_zstd_day", |b| {
        b.iter_batched(
            || {
                let _ = std::fs::remove_dir_all(&root);
                (
                    HistoryWriter::start(&settings(&root)).expect("writer"),
                    shifted(day, 0),
                )
            },
            |(mut writer, rows)| {
                writer.events(rows).expect("buffer");
                writer.flush_blocking().expect("flush");
                writer
            },
            BatchSize::PerIteration,
        )
    });
    let json_path = scratch.join("criterion-write.ndjson");
    group.bench_function("ndjson_serde_json_day", |b| {
        b.iter(|| {
            use std::io::Write;
            let mut out = std::io::BufWriter::new(std::fs::File::create(&json_path).expect("file"));
            for event in day {
                serde_json::to_writer(&mut out, event).expect("json");
                out.write_all(b"\n").expect("write");
            }
            out.into_inner().expect("flush").sync_all().expect("sync");
        })
    });
    group.finish();
}

/// Stores `total` events (days of the generated day, shifted) unless already there.
fn store(day: &[NormalizedEvent], root: &Path, total: usize) -> Duration {
    let marker = root.join(format!(".complete-{total}"));
    if marker.exists() {
        return Duration::ZERO;
    }
    let _ = std::fs::remove_dir_all(root);
    let mut writer = HistoryWriter::start(&settings(root)).expect("writer");
    let mut written = 0;
    let mut days = 0;
    let start = Instant::now();
    while written < total {
        let mut rows = shifted(day, days);
        rows.truncate(total - written);
        written += rows.len();
        days += 1;
        writer.events(rows).expect("buffer");
        writer.flush_blocking().expect("flush");
    }
    drop(writer);
    let took = start.elapsed();
    std::fs::write(&marker, b"").expect("marker");
    took
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn duckdb(root: &Path, sqls: &[String]) -> Option<Vec<(Duration, String)>> {
    let script = r#"
import json, sys, time, duckdb
root, sqls = sys.argv[1], json.loads(sys.argv[2])
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute("SET enable_progress_bar = false")
con.execute("CREATE VIEW events AS SELECT * FROM read_parquet('" + root + "/events/*/*/*/*.parquet', hive_partitioning = true)")
out = []
for sql in sqls:
    con.execute(sql).fetchall()
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        rows = con.execute(sql).fetchall()
        runs.append(time.perf_counter() - t)
    runs.sort()
    out.append([runs[2], str(rows[:3])])
print(json.dumps(out))
"#;
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(root)
        .arg(serde_json::to_string(sqls).ok()?)
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!("DuckDB: {}", String::from_utf8_lossy(&output.stderr));
        return None;
    }
    let runs: Vec<(f64, String)> = match serde_json::from_slice(&output.stdout) {
        Ok(runs) => runs,
        Err(error) => {
            eprintln!(
                "DuckDB output unreadable ({error}): {}",
                String::from_utf8_lossy(&output.stdout)
            );
            return None;
        }
    };
    Some(
        runs.into_iter()
            .map(|(s, r)| (Duration::from_secs_f64(s), r))
            .collect(),
    )
}

fn main() {
    let total: usize = std::env::var("HISTORY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")),
        PathBuf::from,
    );
    let scratch = target.join("bench-history");
    std::fs::create_dir_all(&scratch).expect("scratch");
    let day = day_of_events();
    println!("generated day: {} events", day.len());
    criterion_write(&day, &scratch);
    bench_write(&day, &scratch);

    let root = scratch.join(format!("store-{total}"));
    let took = store(&day, &root, total);
    if !took.is_zero() {
        println!(
            "stored {total} events in {:.1} s ({:.0} ev/s)",
            took.as_secs_f64(),
            rate(total, took)
        );
    }
    let bytes = dir_bytes(&root.join("events"));
    println!(
        "on disk: {:.1} MiB for {total} events, {:.1} MiB per million events",
        bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0 / (total as f64 / 1e6)
    );

    // The busiest hour of the tenth stored day.
    let day_label = (Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Span::days(9))
        .format("%Y-%m-%d")
        .to_string();
    let hour = 15;
    let from = format!("{day_label}T{hour:02}:00:00Z");
    let to = format!("{day_label}T{:02}:00:00Z", hour + 1);
    let sqls = vec![
        format!(
            "SELECT category, count(*) AS n, count(DISTINCT identity_key) AS identities \
             FROM events WHERE day = '{day_label}' AND hour = {hour} GROUP BY category ORDER BY category"
        ),
        format!(
            "SELECT identity_key, count(*) AS n FROM events \
             WHERE time >= TIMESTAMP '{from}' AND time < TIMESTAMP '{to}' \
             GROUP BY identity_key ORDER BY n DESC LIMIT 5"
        ),
    ];
    let engine = QueryEngine::over(
        &appwarden::history::Store::open(&root.display().to_string(), &Default::default())
            .expect("store"),
        &QuerySettings {
            token: None,
            timeout_secs: 600,
            max_rows: 1000,
            max_result_mib: 64,
            memory_limit_mib: 2048,
            threads: 2,
        },
    )
    .expect("engine");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let reference = duckdb(&root, &sqls);
    for (i, sql) in sqls.iter().enumerate() {
        let mut runs = Vec::new();
        let mut rows = 0;
        for _ in 0..6 {
            let start = Instant::now();
            let answer = runtime.block_on(engine.run(sql)).expect("query");
            runs.push(start.elapsed());
            rows = answer.rows;
        }
        runs.remove(0);
        let ours = median(runs);
        match reference.as_ref().and_then(|r| r.get(i)) {
            Some((theirs, sample)) => println!(
                "query {} ({rows} rows): ours {:.1} ms, DuckDB {:.1} ms, ratio {:.2} (DuckDB rows {sample})\n  {sql}",
                i + 1,
                ours.as_secs_f64() * 1e3,
                theirs.as_secs_f64() * 1e3,
                theirs.as_secs_f64() / ours.as_secs_f64(),
            ),
            None => println!(
                "query {} ({rows} rows): ours {:.1} ms, DuckDB not measured\n  {sql}",
                i + 1,
                ours.as_secs_f64() * 1e3
            ),
        }
    }
}
