//! `appwarden replay --layout`: text access logs in Envoy's and Istio's formats
//! and in a custom Squid `logformat`.

use serde_json::Value;

use super::appwarden;
use crate::support::fixture;

/// Replays `inputs` with `args`; returns the enriched events and the dead letters.
fn replay(args: &[&str], inputs: &[&std::path::Path]) -> (Vec<Value>, Vec<Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.ndjson");
    let dead = dir.path().join("dead.ndjson");
    let output = appwarden()
        .arg("replay")
        .args(args)
        .arg("--events-out")
        .arg(&events)
        .arg("--alerts-out")
        .arg(dir.path().join("alerts.ndjson"))
        .arg("--dead-letter-out")
        .arg(&dead)
        .args(inputs)
        .output()
        .expect("appwarden runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read = |path: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect()
    };
    (read(&events), read(&dead))
}

fn hosts(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| e["dst_endpoint"]["hostname"].as_str())
        .collect()
}

#[test]
fn replay_reads_envoy_text_and_a_custom_squid_logformat() {
    // Envoy's default text format, recognised by `auto` (one line in a Docker wrapper).
    let envoy = fixture("envoy/documented_text.log");
    let (events, dead) = replay(&[], &[envoy.as_path()]);
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(events.len(), 8);
    assert!(
        events
            .iter()
            .all(|e| e["unmapped"]["appwarden"]["product"] == "envoy")
    );
    assert!(hosts(&events).contains(&"api.github.com"));

    // Istio's default text format, named as a layout.
    let dir = tempfile::tempdir().expect("tempdir");
    let istio = dir.path().join("istio.log");
    std::fs::write(
        &istio,
        concat!(
            r#"[2026-03-02T09:17:00.409Z] "GET /status/418 HTTP/1.1" 418 - via_upstream - "-" 0 135 4 4 "-" "curl/8.5.0" "84961386-6d84-929d-98bd-c5aee93b5c88" "httpbin:8000" "10.44.1.27:80" outbound|8000||httpbin.foo.svc.cluster.local 10.44.1.23:37652 10.0.45.184:8000 10.44.1.23:46520 - default"#,
            "\n",
            r#"[2026-03-02T09:17:01.000Z] "POST /v1/messages HTTP/2" 200 - via_upstream - "-" 912 4096 1500 1498 "-" "anthropic-sdk/0.40" "a1b2c3d4-0000-4000-8000-000000000001" "api.anthropic.com" "160.79.104.10:443" outbound|443||api.anthropic.com 10.44.1.23:40000 160.79.104.10:443 10.44.1.23:46522 api.anthropic.com default"#,
            "\n"
        ),
    )
    .expect("write");
    let (events, dead) = replay(
        &["--format", "envoy_text", "--layout", "istio"],
        &[istio.as_path()],
    );
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(hosts(&events), ["httpbin", "api.anthropic.com"]);
    assert_eq!(events[0]["src_endpoint"]["ip"], "10.44.1.23");

    // A Squid `logformat` with the user agent and X-Forwarded-For, as squid.conf writes it.
    let squid = dir.path().join("access.log");
    std::fs::write(
        &squid,
        concat!(
            "1772442927.481    187 10.1.2.3 TCP_MISS/200 4312 GET http://pypi.org/simple/requests/ - HIER_DIRECT/151.101.0.223 text/html \"pip/24.0 CPython/3.12\" 203.0.113.9\n",
            "1772442930.123  30012 10.1.2.3 TCP_TUNNEL/200 5120 CONNECT api.openai.com:443 alice HIER_DIRECT/104.18.7.192 - \"python-httpx/0.27\" -\n",
            "1772442941.560      0 10.1.2.44 TCP_DENIED/403 3974 CONNECT pastebin.com:443 - HIER_NONE/- text/html \"curl/8.5.0\" -\n",
        ),
    )
    .expect("write");
    let layout = "%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt \"%{User-Agent}>h\" %{X-Forwarded-For}>h";
    let (events, dead) = replay(
        &["--format", "squid", "--layout", layout],
        &[squid.as_path()],
    );
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(
        hosts(&events),
        ["pypi.org", "api.openai.com", "pastebin.com"]
    );
    assert!(
        events
            .iter()
            .all(|e| e["unmapped"]["appwarden"]["product"] == "squid")
    );
    // A `combined` line is not native: dead-lettered without its layout, read with it.
    let combined = dir.path().join("combined.log");
    std::fs::write(
        &combined,
        "10.1.2.3 - alice [02/Mar/2026:09:15:27 +0000] \"GET http://pypi.org/simple/ HTTP/1.1\" 200 4312 \"-\" \"pip/24.0\" TCP_MISS:HIER_DIRECT\n",
    )
    .expect("write");
    let (events, dead) = replay(&["--format", "squid"], &[combined.as_path()]);
    assert!(events.is_empty());
    assert_eq!(dead.len(), 1);
    let (events, dead) = replay(
        &["--format", "squid", "--layout", "combined"],
        &[combined.as_path()],
    );
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(hosts(&events), ["pypi.org"]);
    assert_eq!(events[0]["time"], 1_772_442_927_000_i64);
}

#[test]
fn replay_refuses_a_bad_layout_naming_it() {
    let output = appwarden()
        .args(["replay", "--format", "squid", "--layout", "%ts %zz", "-"])
        .output()
        .expect("appwarden runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--layout") && stderr.contains("`%zz` is not a Squid logformat code"),
        "{stderr}"
    );
    let output = appwarden()
        .args(["replay", "--format", "okta", "--layout", "squid", "-"])
        .output()
        .expect("appwarden runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--layout needs --format"), "{stderr}");
}
