//! The Parquet history and SQL over it, through the real binary: `replay --history`
//! writes it, `appwarden query` reads it; DuckDB reads the same files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use chrono::{TimeZone, Utc};

use appwarden::generator::{World, WorldConfig};

use crate::support::enriched;

fn appwarden() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_appwarden"));
    cmd.env("APPWARDEN__LOG__FORMAT", "json");
    cmd
}

/// A replayed world with incidents: its history, enriched events and alerts.
struct Replayed {
    _dir: tempfile::TempDir,
    history: PathBuf,
    events: Vec<serde_json::Value>,
    alerts: Vec<serde_json::Value>,
}

/// Generates three days of traffic for a dozen apps (with the five incidents),
/// writes it as one NDJSON/text file and replays it into a history, once per test run.
fn replayed() -> &'static Replayed {
    static ONCE: OnceLock<Replayed> = OnceLock::new();
    ONCE.get_or_init(|| replay_world(Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap(), &[]).0)
}

/// Replays three days of a dozen apps' traffic from `start` into a fresh history
/// with the default settings (plus `extra` arguments); returns what it wrote and
/// the replay's standard error.
fn replay_world(start: chrono::DateTime<Utc>, extra: &[&str]) -> (Replayed, String) {
    replay_world_with(start, extra, &[])
}

/// [`replay_world`] with settings from `env` (`APPWARDEN__…` variables).
fn replay_world_with(
    start: chrono::DateTime<Utc>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Replayed, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = World::new(WorldConfig {
        seed: 5,
        apps: 12,
        hours: 72,
        rate_scale: 0.3,
        malformed_ratio: 0.002,
        start,
        ..WorldConfig::default()
    });
    let registry = dir.path().join("registry.yaml");
    std::fs::write(&registry, world.registry_yaml()).expect("registry");
    let input = dir.path().join("records.log");
    let mut text = Vec::new();
    for record in world.records() {
        text.extend_from_slice(&record.payload);
        text.push(b'\n');
    }
    std::fs::write(&input, text).expect("records");
    let history = dir.path().join("history");
    let events = dir.path().join("events.ndjson");
    let alerts = dir.path().join("alerts.ndjson");
    let output = appwarden()
        .env("APPWARDEN__REGISTRY__PATH", &registry)
        .envs(env.iter().copied())
        .arg("replay")
        .arg("--history")
        .arg(&history)
        .args(extra)
        .arg("--events-out")
        .arg(&events)
        .arg("--alerts-out")
        .arg(&alerts)
        .arg("--dead-letter-out")
        .arg(dir.path().join("dead.ndjson"))
        .arg(&input)
        .output()
        .expect("replay runs");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{stderr}");
    let lines = |path: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .expect("output file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    };
    let replayed = Replayed {
        history,
        events: lines(&events),
        alerts: lines(&alerts),
        _dir: dir,
    };
    (replayed, stderr)
}

/// Two years before today, at midnight: far older than the default retention (30 days).
fn two_years_ago() -> chrono::DateTime<Utc> {
    let day = (Utc::now() - chrono::Duration::days(730)).date_naive();
    day.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
}

#[test]
fn a_replay_of_logs_two_years_old_keeps_its_history_and_says_how_it_ages() {
    let (r, stderr) = replay_world(two_years_ago(), &[]);
    assert!(r.events.len() > 5_000, "{} events", r.events.len());
    let rows = query(&r.history, "SELECT count(*) AS n FROM events");
    assert_eq!(
        rows[0]["n"].as_u64(),
        Some(r.events.len() as u64),
        "{stderr}"
    );
    let alerts = query(&r.history, "SELECT count(*) AS n FROM alerts");
    assert_eq!(alerts[0]["n"].as_u64(), Some(r.alerts.len() as u64));
    assert!(!r.alerts.is_empty(), "the world's incidents alert");
    let first_day = two_years_ago().format("%Y-%m-%d").to_string();
    let day_rows = query(
        &r.history,
        &format!("SELECT count(*) AS n FROM events WHERE day = '{first_day}'"),
    );
    assert!(day_rows[0]["n"].as_u64().unwrap_or(0) > 0, "{day_rows:?}");
    assert!(
        stderr.contains("older than history.retention_days = 30")
            && stderr.contains(&format!("from {first_day} 00:00 UTC")),
        "the summary says how the history will age: {stderr}"
    );
}

#[test]
fn a_replay_expires_old_partitions_only_when_asked() {
    let (r, stderr) = replay_world(two_years_ago(), &["--retention-days", "30"]);
    assert!(r.events.len() > 5_000, "{} events", r.events.len());
    assert!(stderr.contains("deleted"), "{stderr}");
    let rows = query(&r.history, "SELECT count(*) AS n FROM events");
    assert_eq!(rows[0]["n"].as_u64(), Some(0), "{rows:?}");
}

/// The Parquet files of each hour folder under `history`, by folder.
fn files_per_hour(history: &Path) -> BTreeMap<PathBuf, usize> {
    let mut hours = BTreeMap::new();
    let mut stack = vec![history.join("events"), history.join("alerts")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                *hours.entry(dir.clone()).or_insert(0) += 1;
            }
        }
    }
    hours
}

#[test]
fn replays_into_one_history_leave_one_file_per_hour() {
    // A flush after every batch: an hour a flush cuts through gets two files.
    let small_flushes = [("APPWARDEN__HISTORY__FLUSH_MAX_EVENTS", "20")];
    let (r, first) = replay_world_with(two_years_ago(), &[], &small_flushes);
    let hours = files_per_hour(&r.history).len();
    assert!(hours > 100, "{hours} hour folders");
    assert!(
        first.contains("files of closed hours merged into"),
        "{first}"
    );
    // The same export again, into the same history: every hour gets a second
    // file, and the second replay's last upkeep pass merges each pair.
    let again = appwarden()
        .env(
            "APPWARDEN__REGISTRY__PATH",
            r._dir.path().join("registry.yaml"),
        )
        .envs(small_flushes)
        .arg("replay")
        .arg("--history")
        .arg(&r.history)
        .arg("--alerts-out")
        .arg(r._dir.path().join("alerts-again.ndjson"))
        .arg("--dead-letter-out")
        .arg(r._dir.path().join("dead-again.ndjson"))
        .arg(r._dir.path().join("records.log"))
        .output()
        .expect("replay runs");
    let second = String::from_utf8_lossy(&again.stderr).to_string();
    assert!(again.status.success(), "{second}");
    let files = files_per_hour(&r.history);
    assert_eq!(files.len(), hours, "the same hours");
    let several: Vec<_> = files.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        several.is_empty(),
        "hours left with several files: {several:?}\n{second}"
    );
    // Every hour of the second replay was merged with the first's file.
    let merged: usize = second
        .split(" files of closed hours merged into")
        .next()
        .and_then(|head| head.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no merge count in the summary: {second}"));
    assert!(
        merged >= hours * 2,
        "{merged} files merged for {hours} hours: {second}"
    );
    let rows = query(&r.history, "SELECT count(*) AS n FROM events");
    assert_eq!(
        rows[0]["n"].as_u64(),
        Some(2 * r.events.len() as u64),
        "{second}"
    );
    let alerts = query(&r.history, "SELECT count(*) AS n FROM alerts");
    assert_eq!(alerts[0]["n"].as_u64(), Some(2 * r.alerts.len() as u64));
    let journals = r.history.join(".compaction");
    assert!(
        std::fs::read_dir(&journals).map_or(true, |mut d| d.next().is_none()),
        "no compaction journal is left"
    );
}

/// Runs `appwarden query --format json` and returns its rows.
fn query(history: &Path, sql: &str) -> Vec<serde_json::Value> {
    let output = appwarden()
        .arg("query")
        .arg("--history")
        .arg(history)
        .args(["--format", "json", "--max-rows", "100000"])
        .arg(sql)
        .output()
        .expect("query runs");
    assert!(
        output.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON row"))
        .collect()
}

fn count_by_product(events: &[serde_json::Value]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for e in events {
        *counts
            .entry(enriched(e).product.as_str().to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[test]
fn counts_per_source_match_what_was_replayed() {
    let r = replayed();
    assert!(r.events.len() > 5_000, "{} events", r.events.len());
    let expected = count_by_product(&r.events);
    assert_eq!(expected.len(), 7, "all seven vendor formats: {expected:?}");
    let rows = query(
        &r.history,
        "SELECT source, count(*) AS n FROM events GROUP BY source ORDER BY source",
    );
    let ours: BTreeMap<String, u64> = rows
        .iter()
        .map(|row| {
            (
                row["source"].as_str().expect("source").to_string(),
                row["n"].as_u64().expect("n"),
            )
        })
        .collect();
    assert_eq!(ours, expected);
    // The partition column and the stored product agree on every row.
    let mismatched = query(
        &r.history,
        "SELECT count(*) AS n FROM events WHERE source <> product",
    );
    assert_eq!(mismatched[0]["n"], 0);
}

#[test]
fn a_window_query_prunes_partitions_and_returns_exactly_the_hour() {
    let r = replayed();
    // Pick the busiest hour and count its events from the enriched stream.
    let mut per_hour: BTreeMap<(String, u32), u64> = BTreeMap::new();
    for e in &r.events {
        let millis = e["time"].as_i64().expect("time");
        let t = Utc.timestamp_millis_opt(millis).unwrap();
        let key = (t.format("%Y-%m-%d").to_string(), chrono::Timelike::hour(&t));
        *per_hour.entry(key).or_insert(0) += 1;
    }
    let ((day, hour), expected) = per_hour
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(k, n)| (k.clone(), *n))
        .expect("some hour");
    // A corrupt file in every other hour partition (of a copy: other tests read the
    // original): only a query that never opens them (pruned by day/hour) can succeed.
    let copy = tempfile::tempdir().expect("tempdir");
    for file in walk(&r.history) {
        let target = copy
            .path()
            .join(file.strip_prefix(&r.history).expect("under root"));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&file, &target).expect("copy");
    }
    let history = copy.path();
    let mut planted = 0;
    for source in std::fs::read_dir(history.join("events")).expect("events folder") {
        let source = source.expect("entry").path();
        for day_dir in std::fs::read_dir(&source).expect("source folder") {
            let day_dir = day_dir.expect("entry").path();
            for hour_dir in std::fs::read_dir(&day_dir).expect("day folder") {
                let hour_dir = hour_dir.expect("entry").path();
                let this = hour_dir.ends_with(format!("hour={hour:02}"))
                    && day_dir.ends_with(format!("day={day}"));
                if !this {
                    std::fs::write(hour_dir.join("zz-corrupt.parquet"), b"not parquet")
                        .expect("plant");
                    planted += 1;
                }
            }
        }
    }
    assert!(planted > 10, "planted {planted}");
    let pruned = query(
        history,
        &format!("SELECT count(*) AS n FROM events WHERE day = '{day}' AND hour = {hour}"),
    );
    let unpruned = appwarden()
        .arg("query")
        .arg("--history")
        .arg(history)
        .arg("SELECT count(*) FROM events")
        .output()
        .expect("query runs");
    assert_eq!(pruned[0]["n"].as_u64(), Some(expected));
    assert!(
        !unpruned.status.success(),
        "a query over every partition must open the corrupt files"
    );
}

/// A timestamp as Arrow's JSON writer prints it (with or without a zone suffix).
fn parse_time(text: &str) -> Option<chrono::DateTime<Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.to_utc())
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn every_alert_sql_runs_verbatim_and_returns_its_evidence() {
    let r = replayed();
    assert!(
        r.alerts.len() >= 5,
        "the five incidents raise alerts: {}",
        r.alerts.len()
    );
    let stored = query(&r.history, "SELECT id FROM alerts ORDER BY id");
    assert_eq!(
        stored.len(),
        r.alerts.len(),
        "every alert is in the alerts table"
    );
    for alert in &r.alerts {
        let sql = alert["sql"].as_str().expect("sql");
        let rows = query(&r.history, sql);
        assert!(!rows.is_empty(), "{sql} returned nothing");
        for sample in alert["evidence"]["samples"].as_array().expect("samples") {
            let time = chrono::DateTime::parse_from_rfc3339(sample["time"].as_str().expect("t"))
                .expect("time")
                .to_utc();
            // A token's issue sample names its category, not the vendor action:
            // detector state keeps only the issue time (memory per identity).
            let found = rows.iter().any(|row| {
                (row["activity"] == sample["activity"] || row["category"] == sample["activity"])
                    && row["time"].as_str().and_then(parse_time) == Some(time)
            });
            assert!(
                found,
                "{} evidence {sample} not in the rows of {sql}",
                alert["id"]
            );
        }
    }
}

#[test]
fn findings_of_single_event_detectors_are_on_the_event() {
    let r = replayed();
    let flagged: Vec<_> = r
        .events
        .iter()
        .filter(|e| !enriched(e).findings.is_empty())
        .collect();
    assert!(
        !flagged.is_empty(),
        "unregistered identities flag their events"
    );
    for e in &flagged {
        let finding = &enriched(e).findings[0];
        assert!(finding["detector"].is_string() && finding["alert_id"].is_string());
        if finding["suppressed"] == false {
            assert!(e["severity_id"].as_u64() > Some(1), "{e}");
        }
    }
    // The same findings are queryable.
    let rows = query(
        &r.history,
        "SELECT count(*) AS n FROM events WHERE findings IS NOT NULL",
    );
    assert_eq!(rows[0]["n"].as_u64(), Some(flagged.len() as u64));
    // Enriched records carry their OCSF class per category.
    for e in &r.events {
        let view = enriched(e);
        assert_eq!(e["class_uid"], view.category.ocsf_class_uid(), "{e}");
    }
}

#[test]
fn the_query_command_refuses_anything_that_writes() {
    let r = replayed();
    for (sql, expected) in [
        ("DROP TABLE events", "read-only"),
        ("INSERT INTO events SELECT * FROM events", "read-only"),
        ("COPY events TO '/tmp/appwarden-copy.parquet'", "COPY"),
        (
            "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/'",
            "CREATE EXTERNAL TABLE",
        ),
        ("SELECT * FROM read_parquet('/etc/passwd')", "not allowed"),
    ] {
        let output = appwarden()
            .arg("query")
            .arg("--history")
            .arg(&r.history)
            .arg(sql)
            .output()
            .expect("query runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{sql} ran");
        assert!(stderr.contains(expected), "{sql}: {stderr}");
    }
    assert!(!Path::new("/tmp/appwarden-copy.parquet").exists());
}

#[test]
fn duckdb_reads_our_files_and_agrees_on_counts() {
    let r = replayed();
    let script = r#"
import json, sys, duckdb
root = sys.argv[1]
con = duckdb.connect()
rows = con.execute(
    "SELECT source, count(*) FROM read_parquet(?, hive_partitioning = true) GROUP BY source ORDER BY source",
    [root + "/events/*/*/*/*.parquet"],
).fetchall()
alerts = con.execute(
    "SELECT count(*) FROM read_parquet(?, hive_partitioning = true)",
    [root + "/alerts/*/*/*.parquet"],
).fetchone()[0]
print(json.dumps({"events": {s: n for s, n in rows}, "alerts": alerts}))
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&r.history)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "DuckDB (pip install duckdb; scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&output.stdout).expect("DuckDB answer");
    let expected = count_by_product(&r.events);
    for (source, n) in &expected {
        assert_eq!(
            theirs["events"][source].as_u64(),
            Some(*n),
            "{source}: {theirs}"
        );
    }
    assert_eq!(theirs["alerts"].as_u64(), Some(r.alerts.len() as u64));
}

#[test]
fn the_row_limit_cuts_and_says_so_and_the_time_limit_cancels() {
    let r = replayed();
    let output = appwarden()
        .arg("query")
        .arg("--history")
        .arg(&r.history)
        .args(["--format", "csv", "--max-rows", "3"])
        .arg("SELECT time FROM events ORDER BY time")
        .output()
        .expect("query runs");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().count(), 4, "header and three rows: {stdout}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("cut at 3 rows"));

    // Trillions of joined rows: only the time limit ends this query.
    let started = std::time::Instant::now();
    let output = appwarden()
        .env("APPWARDEN__QUERY__TIMEOUT_SECS", "2")
        .arg("query")
        .arg("--history")
        .arg(&r.history)
        .arg("SELECT count(*) FROM events a, events b, events c WHERE a.time < b.time")
        .output()
        .expect("query runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("longer than 2 s"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
