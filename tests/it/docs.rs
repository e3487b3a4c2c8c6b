//! The README's examples are real: its vendor records decode as the formats they
//! claim, and its registry example loads.

use appwarden::decode::{self, DecodeOptions, Format};
use appwarden::identity::Registry;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README")
}

/// The lines of the first fenced block after `marker`.
fn block_after(text: &str, marker: &str) -> Vec<String> {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("README lacks {marker:?}"));
    text[start..]
        .lines()
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .map(str::to_string)
        .collect()
}

#[test]
fn format_examples_decode_as_their_format() {
    let lines = block_after(&readme(), "One example of each");
    let mut products = Vec::new();
    for line in &lines {
        let mut out = Vec::new();
        decode::decode(
            Format::Auto,
            line.as_bytes(),
            &DecodeOptions::default(),
            &mut out,
        )
        .unwrap_or_else(|e| panic!("README example does not decode: {e}\n{line}"));
        assert_eq!(out.len(), 1);
        products.push(out[0].product.as_str());
    }
    assert_eq!(
        products,
        [
            "okta",
            "entra",
            "cloudtrail",
            "vault",
            "azure_keyvault",
            "kong",
            "envoy",
            "envoy",
            "squid",
            "generic"
        ]
    );
}

#[test]
fn layout_example_loads_and_reads_its_lines() {
    let toml = block_after(&readme(), "### Line layouts").join("\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("user.toml");
    std::fs::write(&path, &toml).expect("write");
    let (settings, _) = appwarden::settings::Settings::load_with_env(Some(&path), Vec::new())
        .expect("README layout example is valid settings");
    let topic = settings.topic("proxy.access").expect("the example's topic");
    assert_eq!(topic.format, Format::Squid);
    let options = topic.decode_options().expect("layout parses");
    let line = "1795857187.123     95 10.20.7.17 TCP_MISS/200 5120 GET http://pypi.org/simple/ - HIER_DIRECT/151.101.0.223 text/html \"pip/24.0\" 203.0.113.9";
    let mut out = Vec::new();
    decode::decode(Format::Squid, line.as_bytes(), &options, &mut out).expect("decodes");
    assert_eq!(out[0].dst_host.as_deref(), Some("pypi.org"));
    assert_eq!(out[0].actor.refs[1].value, "203.0.113.9");
}

#[test]
fn registry_example_loads() {
    let yaml = block_after(&readme(), "## The registry").join("\n");
    let registry = Registry::parse(&yaml, "README").expect("README registry example is valid");
    assert_eq!(registry.apps()[0].risk.score(), 6);
    let shipped = Registry::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/registry.yaml"
    )))
    .expect("config/registry.yaml is valid");
    assert!(shipped.app("invoice-bot").is_some());
}

#[test]
fn metrics_table_lists_exactly_the_exported_families() {
    let text = readme();
    let start = text
        .find("Metrics (labels are fixed")
        .expect("README has the metrics table");
    let documented: std::collections::BTreeSet<&str> = text[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('`').nth(1))
        .collect();
    let exported: std::collections::BTreeSet<&str> = appwarden::observe::metrics::FAMILIES
        .iter()
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(documented, exported);
}
