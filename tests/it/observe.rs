//! The daemon's HTTP listener against the mock cluster: `/metrics` counts what
//! was sent, `/readyz` follows the broker down and up, `POST /v1/query` is
//! authenticated and read-only, and the dashboards query only exported metrics.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use appwarden::daemon::Daemon;
use appwarden::deliver::SinkSettings;
use appwarden::settings::SecretRef;
use appwarden::telemetry::Stats;

use crate::kafka_pipeline::{INPUT_TOPICS, harness, produce_inputs};
use crate::support::wait_until;

/// The value of the sample `name{labels...}` in a Prometheus exposition, if present.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let found: Vec<(&str, &str)> = label_text
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once("=\"")?;
                    Some((k, v.trim_end_matches('"')))
                })
                .collect();
            labels
                .iter()
                .all(|l| found.contains(l))
                .then(|| value.parse().ok())
                .flatten()
        })
}

/// Metric names queried in a dashboard: every identifier right before a `{` in an `expr`.
fn dashboard_metrics(dashboard: &serde_json::Value, out: &mut BTreeSet<String>) {
    match dashboard {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if key == "expr"
                    && let Some(expr) = value.as_str()
                {
                    let bytes = expr.as_bytes();
                    for (i, b) in bytes.iter().enumerate() {
                        if *b != b'{' {
                            continue;
                        }
                        let start = bytes[..i]
                            .iter()
                            .rposition(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b':'))
                            .map_or(0, |p| p + 1);
                        if start < i {
                            out.insert(expr[start..i].to_string());
                        }
                    }
                } else {
                    dashboard_metrics(value, out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_metrics(v, out)),
        _ => {}
    }
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client.get(url).send().await.expect("GET answered");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

async fn query(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    sql: &str,
) -> (u16, serde_json::Value) {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::json!({ "sql": sql }).to_string());
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.expect("POST answered");
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("JSON answer ({e}): {body}"));
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_readiness_and_sql_over_http() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let mut h = harness(&brokers, &cluster);
    let token = "it-query-token-7f3a";
    let token_file = h.dir.path().join("query.token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let key_file = h.dir.path().join("hook.key");
    std::fs::write(&key_file, "hook-signing-key").expect("key file");
    h.settings.query.token = Some(SecretRef {
        env: None,
        file: Some(token_file),
    });
    h.settings.history.flush_interval_secs = 1;
    h.settings.deliver.outbox_dir = h.dir.path().join("outbox").display().to_string();
    // A sink so that the sink metrics have samples; nothing here pages, so it is never called.
    let sink: SinkSettings = toml::from_str(&format!(
        "name = \"soc-hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\nsigning_key = {{ file = \"{}\" }}\n",
        key_file.display()
    ))
    .expect("sink settings");
    h.settings.deliver.sinks = vec![sink];

    let stats = Arc::new(Stats::default());
    let daemon = Daemon::build(&h.settings, stats.clone()).expect("daemon builds");
    let address = daemon.http_address().expect("listener bound");
    assert!(address.ip().is_loopback());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    let base = format!("http://{address}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");

    assert_eq!(get(&client, &format!("{base}/healthz")).await.0, 200);
    assert_eq!(get(&client, &format!("{base}/nowhere")).await.0, 404);

    let (inputs, _) = produce_inputs(&brokers, &h).await;
    let expected = inputs.len() as u64;
    // Processed, and settled: the latency of a record is recorded once its batch's
    // outputs are acknowledged, which under load comes a little after processing.
    let processed = wait_until(Duration::from_secs(60), || {
        stats.snapshot().records >= expected
            && stats.processing_latency.snapshot().count >= expected
    })
    .await;
    assert!(
        processed,
        "processed {} of {expected}",
        stats.snapshot().records
    );

    // Ready once partitions are assigned and librdkafka reports the broker up.
    let mut ready = (0, String::new());
    for _ in 0..100 {
        ready = get(&client, &format!("{base}/readyz")).await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ready.0, 200, "readyz: {}", ready.1);
    let checks: serde_json::Value = serde_json::from_str(&ready.1).expect("readyz JSON");
    assert_eq!(checks["ready"], true);
    assert_eq!(checks["checks"].as_array().map(Vec::len), Some(4));

    let (status, metrics) = get(&client, &format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    for suffix in INPUT_TOPICS {
        let sent = inputs.iter().filter(|i| i.topic == suffix).count() as f64;
        assert_eq!(
            sample(
                &metrics,
                "appwarden_records_consumed_total",
                &[("topic", h.topic_names[suffix].as_str())]
            ),
            Some(sent),
            "records consumed from {suffix}"
        );
    }
    let dead: f64 = ["bad_json", "not_utf8", "wrong_shape", "unknown_format"]
        .iter()
        .filter_map(|r| sample(&metrics, "appwarden_dead_letters_total", &[("reason", r)]))
        .sum();
    assert_eq!(dead, 3.0, "three bad records dead-lettered:\n{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "appwarden_events_by_product_total",
            &[("product", "okta")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "appwarden_processing_latency_seconds_count", &[]),
        Some(expected as f64)
    );
    assert!(sample(&metrics, "appwarden_kafka_assigned_partitions", &[]).unwrap_or(0.0) > 0.0);
    assert_eq!(sample(&metrics, "appwarden_ready", &[]), Some(1.0));
    assert_eq!(
        sample(
            &metrics,
            "appwarden_sink_delivered_total",
            &[("sink", "soc-hook"), ("kind", "webhook")]
        ),
        Some(0.0)
    );
    assert!(
        !metrics.contains("reports-bot") && !metrics.contains("casey.hill"),
        "no identity may be a label"
    );
    // Lag per partition comes from librdkafka's statistics and drops to zero once read.
    let mut lag_seen = false;
    for _ in 0..50 {
        let (_, text) = get(&client, &format!("{base}/metrics")).await;
        if sample(
            &text,
            "appwarden_kafka_consumer_lag",
            &[("topic", h.topic_names["sso"].as_str())],
        ) == Some(0.0)
        {
            lag_seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(lag_seen, "consumer lag of the sso topic reported as 0");

    // The scrape declares every family of the documented list, with its type.
    for (name, kind) in appwarden::observe::metrics::FAMILIES {
        assert!(
            metrics.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} ({kind}) missing from the scrape"
        );
    }

    // Every metric the dashboards query is one the daemon exports.
    let mut queried = BTreeSet::new();
    for name in ["overview.json", "detection.json"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("dashboards")
            .join(name);
        let text = std::fs::read_to_string(&path).expect("dashboard readable");
        let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
        assert!(
            dashboard["panels"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
        );
        dashboard_metrics(&dashboard, &mut queried);
    }
    assert!(queried.len() >= 20, "dashboards query {queried:?}");
    for metric in &queried {
        assert!(
            metrics.contains(&format!("# TYPE {metric} ")),
            "dashboard metric {metric} is not exported"
        );
    }

    // SQL: authenticated, read-only, and answering from the history.
    let url = format!("{base}/v1/query");
    let (status, _) = query(&client, &url, None, "SELECT 1").await;
    assert_eq!(status, 401);
    let (status, _) = query(&client, &url, Some("wrong-token"), "SELECT 1").await;
    assert_eq!(status, 401);
    // A 30 000-term sum would overflow the stack of whatever walks its tree.
    let deep = format!("SELECT 1{}", "+1".repeat(30_000));
    for forbidden in [
        "DROP TABLE events",
        "INSERT INTO alerts VALUES (1)",
        "COPY events TO '/tmp/x.parquet'",
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc'",
        "SELECT * FROM read_parquet('/etc/passwd')",
        deep.as_str(),
    ] {
        let (status, body) = query(&client, &url, Some(token), forbidden).await;
        assert_eq!(status, 400, "{forbidden}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{forbidden}: {body}"
        );
    }
    let good = inputs.iter().filter(|i| i.expect.is_some()).count() as u64;
    let mut answer = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, body) = query(
            &client,
            &url,
            Some(token),
            "SELECT count(*) AS n FROM events",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        answer = body;
        if answer["rows"][0]["n"].as_u64() == Some(good) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(answer["rows"][0]["n"].as_u64(), Some(good), "{answer}");
    assert_eq!(answer["columns"], serde_json::json!(["n"]));
    assert_eq!(answer["truncated"], false);

    // Broker down: not ready within the statistics' staleness; back up: ready again by itself.
    cluster.broker_down(1).expect("broker down");
    let went_down = wait_for_status(&client, &format!("{base}/readyz"), 503, 60).await;
    assert!(went_down, "readyz turns 503 while the broker is down");
    cluster.broker_up(1).expect("broker up");
    let came_back = wait_for_status(&client, &format!("{base}/readyz"), 200, 60).await;
    assert!(came_back, "readyz turns 200 after the broker is back");

    shutdown.cancel();
    task.await
        .expect("daemon task")
        .expect("daemon ran cleanly");
}

/// Polls `url` until it answers `status`, for at most `limit_secs`.
async fn wait_for_status(
    client: &reqwest::Client,
    url: &str,
    status: u16,
    limit_secs: u64,
) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(limit_secs);
    while std::time::Instant::now() < deadline {
        if get(client, url).await.0 == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}
