//! The `appwarden` binary as a user runs it: replay and check-config.

use std::process::Command;

use crate::support::fixture;

mod layouts;

fn appwarden() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_appwarden"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd.env("APPWARDEN__LOG__FORMAT", "json");
    cmd
}

#[test]
fn replay_writes_events_and_dead_letters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("events.ndjson");
    let alerts = dir.path().join("alerts.ndjson");
    let dead = dir.path().join("dead.ndjson");
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(&bad, "{\"eventVersion\": \"1.08\", \"eventTime\": 5, \"eventSource\": \"sts.amazonaws.com\"}\nnot json at all\n")
        .expect("write");
    let output = appwarden()
        .arg("replay")
        .arg("--events-out")
        .arg(&out)
        .arg("--alerts-out")
        .arg(&alerts)
        .arg("--dead-letter-out")
        .arg(&dead)
        .arg(fixture("squid/documented.log"))
        .arg(fixture("kong/documented.ndjson"))
        .arg(&bad)
        .output()
        .expect("appwarden runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let events = std::fs::read_to_string(&out).expect("events written");
    let squid_lines = std::fs::read_to_string(fixture("squid/documented.log"))
        .expect("fixture")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!(
        events.lines().count(),
        squid_lines + 10,
        "one event per squid line and kong record"
    );
    let letters: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .expect("dead letters written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["origin"]["line"], 1);
    assert_eq!(letters[1]["origin"]["line"], 2);
    assert!(stderr.contains("2 dead-lettered"), "{stderr}");
}

#[test]
fn replay_reads_a_cloudtrail_envelope_from_stdin() {
    use std::io::Write;
    let envelope = br#"{"Records": [
      {"eventVersion": "1.08", "eventTime": "2026-11-23T10:00:00Z", "eventSource": "secretsmanager.amazonaws.com",
       "eventName": "ListSecrets", "awsRegion": "eu-west-1", "sourceIPAddress": "10.0.0.1",
       "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::123456789012:user/ci", "accessKeyId": "AKIAEXAMPLE"}},
      {"eventVersion": "1.08", "eventTime": "2026-11-23T10:00:01Z", "eventSource": "secretsmanager.amazonaws.com",
       "eventName": "GetSecretValue", "awsRegion": "eu-west-1", "sourceIPAddress": "10.0.0.1",
       "requestParameters": {"secretId": "prod/db"},
       "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::123456789012:user/ci", "accessKeyId": "AKIAEXAMPLE"}}
    ]}"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.ndjson");
    let mut child = appwarden()
        .args(["replay", "--format", "cloudtrail", "--events-out"])
        .arg(&events)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(envelope)
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .expect("events written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let categories: Vec<&str> = events
        .iter()
        .filter_map(|e| e["unmapped"]["appwarden"]["category"].as_str())
        .collect();
    assert_eq!(categories, ["secret_list", "secret_read"]);
    assert_eq!(
        events[1]["unmapped"]["appwarden"]["identity"]["status"],
        "unregistered"
    );
    // OCSF API Activity, with each record of the envelope as its raw data.
    assert_eq!(events[1]["class_uid"], 6003);
    assert_eq!(events[1]["api"]["operation"], "GetSecretValue");
    let raw = events[1]["raw_data"].as_str().expect("raw_data");
    assert!(
        raw.contains("prod/db") && !raw.contains("ListSecrets"),
        "{raw}"
    );
}

#[test]
fn check_config_prints_settings_or_names_the_bad_key() {
    let output = appwarden().arg("check-config").output().expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("[kafka]") && stdout.contains("# registry"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[input]\nmax_record_bytes = 1\n").expect("write");
    let output = appwarden()
        .arg("check-config")
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("input.max_record_bytes"), "{stderr}");

    let output = appwarden()
        .arg("check-config")
        .env("APPWARDEN__KAFKA__BROKERZ", "x:9092")
        .output()
        .expect("runs");
    assert!(
        !output.status.success(),
        "an unknown env key must be refused"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("brokerz"));
}

#[test]
fn replay_twice_gives_byte_identical_alerts() {
    use appwarden::generator::{World, WorldConfig};
    let dir = tempfile::tempdir().expect("tempdir");
    let world = World::new(WorldConfig {
        apps: 12,
        hours: 48,
        ..WorldConfig::default()
    });
    let registry = dir.path().join("registry.yaml");
    std::fs::write(&registry, world.registry_yaml()).expect("registry");
    let traffic = dir.path().join("traffic.log");
    let mut text = Vec::new();
    for record in world.records() {
        text.extend_from_slice(&record.payload);
        text.push(b'\n');
    }
    std::fs::write(&traffic, text).expect("traffic");
    let replay = |name: &str| {
        let alerts = dir.path().join(name);
        let output = appwarden()
            .env("APPWARDEN__REGISTRY__PATH", &registry)
            .arg("replay")
            .arg("--alerts-out")
            .arg(&alerts)
            .arg("--dead-letter-out")
            .arg(dir.path().join(format!("{name}.dead")))
            .arg(&traffic)
            .output()
            .expect("appwarden runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::read(&alerts).expect("alerts written")
    };
    let first = replay("a.ndjson");
    let second = replay("b.ndjson");
    assert!(!first.is_empty(), "the injected incidents raise alerts");
    assert_eq!(first, second, "replays differ");
    let detectors: std::collections::BTreeSet<String> = String::from_utf8_lossy(&first)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|a| a["detector"].as_str().map(str::to_string))
        .collect();
    for kind in [
        "call_spike",
        "mass_secret_read",
        "unregistered_identity",
        "new_egress_domain",
        "off_region_token",
    ] {
        assert!(detectors.contains(kind), "no {kind} alert in {detectors:?}");
    }
}

#[test]
fn check_config_names_the_detector_file_and_key_at_fault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/detectors/call_spike.toml");
    let text = std::fs::read_to_string(shipped).expect("default detector");
    std::fs::write(dir.path().join("call_spike.toml"), &text).expect("write");
    // A second instance of the same kind, with a parameter out of range.
    let tuned = text
        .replace("name = \"call_spike\"", "name = \"call_spike_strict\"")
        .replace("min_ratio = 4.0", "min_ratio = 0.5");
    std::fs::write(dir.path().join("strict.toml"), tuned).expect("write");
    let output = appwarden()
        .arg("check-config")
        .env("APPWARDEN__DETECT__DETECTORS_DIR", dir.path())
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("strict.toml") && stderr.contains("params.min_ratio"),
        "{stderr}"
    );

    std::fs::remove_file(dir.path().join("strict.toml")).expect("remove");
    let output = appwarden()
        .arg("check-config")
        .env("APPWARDEN__DETECT__DETECTORS_DIR", dir.path())
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("# detectors from"));
}

#[test]
fn check_config_builds_the_sinks_and_names_a_missing_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sinks.toml");
    std::fs::write(
        &config,
        r#"
[[deliver.sinks]]
name = "soc-webhook"
kind = "webhook"
url = "https://soc.example.com/hook"
signing_key = { env = "APPWARDEN_TEST_SURELY_UNSET_KEY" }
"#,
    )
    .expect("write");
    let output = appwarden()
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("soc-webhook") && stderr.contains("APPWARDEN_TEST_SURELY_UNSET_KEY"),
        "{stderr}"
    );
}

/// `check-config --config FILE` with `text` in FILE and `env` set: (success, stdout + stderr).
fn check_config_with(text: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("user.toml");
    std::fs::write(&config, text).expect("write");
    let mut cmd = appwarden();
    cmd.arg("check-config").arg("--config").arg(&config);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let output = cmd.output().expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn check_config_never_shows_a_secret_written_in_clear() {
    let secret = "clear-Secret-2236067";
    for text in [
        // Where a reference belongs.
        format!("[kafka.secret_properties]\n\"sasl.password\" = \"{secret}\"\n"),
        format!("[query]\ntoken = \"{secret}\"\n"),
        // Where a plain property belongs, under a name in another case.
        format!("[kafka.properties]\n\"SASL.Password\" = \"{secret}\"\n"),
        format!("[kafka.producer_properties]\n\"ssl.keystore.PASSWORD\" = \"{secret}\"\n"),
        // Unquoted: a TOML syntax error.
        format!("[kafka.properties]\n\"sasl.username\" = {secret}\n"),
    ] {
        let (ok, output) = check_config_with(&text, &[]);
        assert!(!ok, "accepted: {text}");
        assert!(!output.contains(secret), "{output}");
    }
}

#[test]
fn check_config_builds_the_kafka_config_and_redacts_secret_values() {
    let secret = "kafka-Secret-1732050";
    // A misspelled secret property: librdkafka refuses the name and its error
    // carries the (resolved) value.
    let (ok, output) = check_config_with(
        "[kafka.secret_properties]\n\"sasl.pasword\" = { env = \"APPWARDEN_TEST_KAFKA_PW\" }\n",
        &[("APPWARDEN_TEST_KAFKA_PW", secret)],
    );
    assert!(!ok, "{output}");
    assert!(output.contains("sasl.pasword"), "{output}");
    assert!(!output.contains(secret), "{output}");
    // A property librdkafka refuses is caught here, not only at `run`.
    let (ok, output) = check_config_with(
        "[kafka.consumer_properties]\n\"fetch.wait.max.ms\" = \"soon\"\n",
        &[],
    );
    assert!(!ok, "{output}");
    assert!(output.contains("fetch.wait.max.ms"), "{output}");
    let (ok, output) = check_config_with(
        "[output]\nevents_topic = \"enriched\"\n[kafka.producer_properties]\n\"linger.ms\" = \"later\"\n",
        &[],
    );
    assert!(!ok, "{output}");
    assert!(output.contains("linger.ms"), "{output}");
    let (ok, output) = check_config_with("", &[]);
    assert!(ok, "{output}");
    assert!(output.contains("# kafka: librdkafka accepts"), "{output}");
}

/// The vendor records (`log`) of every wrapped sample line of `path`, one per line.
fn unwrapped(path: &str) -> String {
    std::fs::read_to_string(fixture(path))
        .expect("fixture")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let wrapper: serde_json::Value = serde_json::from_str(l).expect("JSON");
            format!("{}\n", wrapper["log"])
        })
        .collect()
}

#[test]
fn people_signing_in_are_not_unregistered_apps_but_their_admin_changes_alert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let okta = dir.path().join("okta.ndjson");
    let entra = dir.path().join("entra.ndjson");
    std::fs::write(&okta, unwrapped("okta_systemlog/panther_rule_tests.ndjson")).expect("write");
    std::fs::write(&entra, unwrapped("azure_signin/panther_rule_tests.ndjson")).expect("write");
    let output = appwarden()
        .arg("replay")
        .arg("--dead-letter-out")
        .arg(dir.path().join("dead.ndjson"))
        .arg(&okta)
        .arg(&entra)
        .output()
        .expect("appwarden runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let alerts: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("alert JSON"))
        .collect();
    let unregistered = |pick: &dyn Fn(&str, &str) -> bool| {
        alerts
            .iter()
            .filter(|a| a["detector"] == "unregistered_identity")
            .filter(|a| {
                pick(
                    a["identity"].as_str().unwrap_or(""),
                    a["summary"].as_str().unwrap_or(""),
                )
            })
            .count()
    };
    // `acting` says the identity is not in the registry; on people it is noise.
    let people_acting = unregistered(&|id, summary| {
        id.starts_with("user:") && summary.contains("not in the micro-app registry")
    });
    assert_eq!(people_acting, 0, "{alerts:#?}");
    let people_admin = unregistered(&|id, summary| {
        id.starts_with("user:") && summary.contains("outside the onboarding flow")
    });
    assert!(
        people_admin >= 1,
        "an employee granting privileges still alerts"
    );
    let services_acting = unregistered(&|id, summary| {
        id.starts_with("oauth_client:") && summary.contains("not in the micro-app registry")
    });
    assert!(
        services_acting >= 1,
        "unregistered OAuth clients still alert"
    );
}

/// The release binary run from any folder, with no config: the default detectors
/// folder and registry are not there, so the built-in detectors and an empty
/// registry are used, and both are said on stderr.
#[test]
fn replay_from_a_folder_without_config_uses_the_builtins_and_writes_alerts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("cloudtrail.ndjson");
    std::fs::write(
        &input,
        unwrapped("aws_cloudtrail/stratus_red_team_detonation_logs.ndjson"),
    )
    .expect("write");
    // `appwarden replay` in the temporary folder, with one setting from the environment.
    let replay_here = |variable: &str, value: &str| {
        Command::new(env!("CARGO_BIN_EXE_appwarden"))
            .current_dir(dir.path())
            .env(variable, value)
            .args([
                "replay",
                "--alerts-out",
                "alerts.ndjson",
                "cloudtrail.ndjson",
            ])
            .output()
            .expect("appwarden runs")
    };
    let output = replay_here("APPWARDEN__LOG__FORMAT", "json");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("using the built-in detectors"), "{stderr}");
    assert!(
        stderr.contains("replaying with an empty registry"),
        "{stderr}"
    );
    let alerts = std::fs::read_to_string(dir.path().join("alerts.ndjson")).expect("alerts");
    assert!(alerts.lines().count() > 0, "no alerts written; {stderr}");

    // An explicitly configured folder that is missing stays an error.
    let output = replay_here("APPWARDEN__DETECT__DETECTORS_DIR", "my-detectors");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("my-detectors"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_config_says_where_each_value_comes_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let user = dir.path().join("user.toml");
    std::fs::write(&user, "[kafka]\nbrokers = \"kafka-1:9092\"\n").expect("write");
    let output = appwarden()
        .arg("check-config")
        .arg("--config")
        .arg(&user)
        .env("APPWARDEN__DETECT__SHARDS", "3")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("brokers = \"kafka-1:9092\"  # file"),
        "{stdout}"
    );
    assert!(stdout.contains("shards = 3  # environment"), "{stdout}");
    assert!(
        stdout.contains("group_id = ") && stdout.contains("  # default"),
        "{stdout}"
    );
}

#[test]
fn every_subcommand_says_what_it_does_with_an_example() {
    let top = appwarden().arg("--help").output().expect("runs");
    let top = String::from_utf8_lossy(&top.stdout);
    for command in ["run", "replay", "demo", "query", "check-config"] {
        let line = top
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("--help lists no {command}: {top}"));
        assert!(line.len() > command.len() + 10, "{line}");
        assert!(
            top.contains(&format!("appwarden {command}")),
            "no example of {command}: {top}"
        );
        let help = appwarden()
            .args([command, "--help"])
            .output()
            .expect("runs");
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.contains("Example:"),
            "{command} --help has no example: {help}"
        );
    }
}
