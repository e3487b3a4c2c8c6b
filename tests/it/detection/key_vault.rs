//! Azure Key Vault audit records through decode, identity and the detectors: a
//! `SecretGet` spree raises `mass_secret_read` for the registered app behind the
//! Entra application id, and a read from outside the app's regions (its caller
//! address placed by `cidr_regions`) raises `off_region_token`.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;

use appwarden::decode::{DecodeOptions, Format};
use appwarden::detect::{Alert, Engine};
use appwarden::event::{NormalizedEvent, Origin, Product};
use appwarden::identity::{Registry, RegistryHandle};
use appwarden::pipeline::Pipeline;
use appwarden::telemetry::Stats;

const APP_ID: &str = "7c3a1f52-5b1e-4f0e-9d5a-2b7e8c4d1a01";
const OBJECT_ID: &str = "e8a9b2c4-1d3f-4a5b-8c7d-9e0f1a2b3c01";
const HOME_IP: &str = "20.61.14.7";
const AWAY_IP: &str = "203.0.113.77";

const REGISTRY: &str = r#"
apps:
  - id: payments-bot
    name: Payments bot
    owner: carol@example.com
    team: payments
    justification: Reconciles card payments.
    data_classes: [financial]
    risk_tier: restricted
    risk: { data_class: 3, permission_breadth: 2, external_connectivity: 1, known_vulnerabilities: 0 }
    identities:
      oauth_client_ids: ["7c3a1f52-5b1e-4f0e-9d5a-2b7e8c4d1a01"]
    allowed_regions: [IE]
    registered_on: 2026-02-01
    renewed_on: 2026-02-01
"#;

/// A Key Vault `AuditEvent` record as Azure Monitor exports it.
fn record(time: DateTime<Utc>, operation: &str, secret: &str, ip: &str) -> Vec<u8> {
    let vault = "https://contoso-payments.vault.azure.net";
    serde_json::to_vec(&json!({
        "time": time.to_rfc3339(),
        "resourceId": "/SUBSCRIPTIONS/5D2C0A61-7F3B-4E8A-9C1D-2B4E6F8A0C11/RESOURCEGROUPS/PAYMENTS-RG/PROVIDERS/MICROSOFT.KEYVAULT/VAULTS/CONTOSO-PAYMENTS",
        "operationName": operation,
        "operationVersion": "7.5",
        "category": "AuditEvent",
        "resultType": "Success",
        "resultSignature": "OK",
        "durationMs": 9,
        "callerIpAddress": ip,
        "identity": {"claim": {
            "appid": APP_ID,
            "http://schemas.microsoft.com/identity/claims/objectidentifier": OBJECT_ID,
            "idtyp": "app"
        }},
        "properties": {
            "id": format!("{vault}/secrets/{secret}/0123456789abcdef0123456789abcdef"),
            "requestUri": format!("{vault}/secrets/{secret}/?api-version=7.5"),
            "httpStatusCode": 200
        }
    }))
    .expect("JSON")
}

/// The shipped detectors, with `cidr_regions` placing the two caller networks.
fn engine(dir: &std::path::Path) -> Engine {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/detectors");
    for entry in std::fs::read_dir(shipped).expect("detectors") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let mut text = std::fs::read_to_string(&path).expect("read");
            if path.file_stem().is_some_and(|s| s == "off_region_token") {
                text.push_str("\"20.61.0.0/16\" = \"IE\"\n\"203.0.113.0/24\" = \"BR\"\n");
            }
            std::fs::write(dir.join(path.file_name().expect("name")), text).expect("write");
        }
    }
    let mut settings = super::engine_settings(1);
    settings.detectors_dir = dir.to_path_buf();
    let specs = appwarden::detect::spec::load_dir(dir).expect("detector files");
    Engine::with_specs(&settings, specs).expect("engine")
}

/// Decodes `records` with `auto`, resolves them and runs the detectors to the end.
async fn run(records: &[Vec<u8>]) -> (Vec<Alert>, Vec<Arc<NormalizedEvent>>) {
    let registry = Registry::parse(REGISTRY, "test registry").expect("registry");
    let handle = RegistryHandle::new(registry);
    let snapshot = handle.snapshot();
    let mut pipeline = Pipeline::new(1 << 20, handle, 10_000, Arc::new(Stats::default()));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut engine = engine(dir.path());
    let mut events = Vec::new();
    let mut batch = Vec::new();
    for (i, payload) in records.iter().enumerate() {
        let origin = Origin::File {
            path: "keyvault.ndjson".into(),
            line: i as u64 + 1,
        };
        events.clear();
        pipeline
            .process(
                Format::Auto,
                &DecodeOptions::default(),
                payload,
                origin,
                &mut events,
            )
            .unwrap_or_else(|_| panic!("record {} decodes", i + 1));
        batch.extend(events.drain(..).map(Arc::new));
    }
    let mut alerts = engine.process(&batch, &snapshot).await.expect("engine");
    alerts.extend(engine.finish(&snapshot).await.expect("engine"));
    (alerts, batch)
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_get_spree_by_one_app_raises_mass_secret_read() {
    let records: Vec<Vec<u8>> = (0..45)
        .map(|i| {
            record(
                start() + Duration::seconds(4 * i),
                "SecretGet",
                &format!("tenant-{i:02}-db-password"),
                HOME_IP,
            )
        })
        .collect();
    let (alerts, events) = run(&records).await;
    assert!(events.iter().all(|e| e.product == Product::AzureKeyvault));
    assert!(
        events
            .iter()
            .all(|e| e.identity.as_ref().and_then(|i| i.app_id.as_deref()) == Some("payments-bot")),
        "every read resolves to the app through its Entra application id"
    );
    let mass: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.detector == "mass_secret_read")
        .collect();
    assert_eq!(mass.len(), 1, "{alerts:#?}");
    assert_eq!(mass[0].identity, "app:payments-bot");
    assert_eq!(
        mass[0].app.as_ref().map(|a| a.id.as_str()),
        Some("payments-bot")
    );
    assert!(
        mass[0].summary.contains("45") || mass[0].evidence.observed == json!(45),
        "{:#?}",
        mass[0]
    );
    assert!(
        !alerts.iter().any(|a| a.detector == "off_region_token"),
        "reads from the app's own region: {alerts:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_reads_raise_nothing_but_one_from_abroad_raises_off_region_token() {
    let mut records: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            record(
                start() + Duration::minutes(i),
                "SecretGet",
                "stripe-api-key",
                HOME_IP,
            )
        })
        .collect();
    let (alerts_home, _) = run(&records).await;
    assert!(alerts_home.is_empty(), "{alerts_home:#?}");

    records.push(record(
        start() + Duration::minutes(30),
        "SecretGet",
        "stripe-api-key",
        AWAY_IP,
    ));
    let (alerts, events) = run(&records).await;
    assert_eq!(events[3].src_ip.as_deref(), Some(AWAY_IP));
    let off: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.detector == "off_region_token")
        .collect();
    assert!(!off.is_empty(), "{alerts:#?}");
    assert!(off.iter().all(|a| a.identity == "app:payments-bot"));
    assert!(
        off.iter()
            .any(|a| a.summary.contains("outside its allowed regions")),
        "{off:#?}"
    );
    assert_eq!(off[0].evidence.details.get("src_ip"), Some(&json!(AWAY_IP)));
}
