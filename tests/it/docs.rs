//! The docs are true to the code: the vendor records in `docs/formats.md` decode
//! as the formats they claim, the registry example loads, the metrics list and
//! the settings reference match what the binary has, every link between pages
//! resolves, and every `appwarden` flag the pages show is one the binary takes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use appwarden::decode::{self, DecodeOptions, Format};
use appwarden::identity::Registry;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A page of the docs, by its path from the repository root.
fn page(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// README.md and every page under docs/.
fn all_pages() -> Vec<(PathBuf, String)> {
    let mut paths = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs folder")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("page");
            (p, text)
        })
        .collect()
}

/// The lines of the first fenced block after `marker`.
fn block_after(text: &str, marker: &str) -> Vec<String> {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("the page lacks {marker:?}"));
    text[start..]
        .lines()
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .map(str::to_string)
        .collect()
}

/// The first column (between backticks) of the table that follows `marker`.
fn table_keys_after<'a>(text: &'a str, marker: &str) -> BTreeSet<&'a str> {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("the page lacks {marker:?}"));
    text[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('`').nth(1))
        .collect()
}

#[test]
fn format_examples_decode_as_their_format() {
    let lines = block_after(&page("docs/formats.md"), "One example of each");
    let mut products = Vec::new();
    for line in &lines {
        let mut out = Vec::new();
        decode::decode(
            Format::Auto,
            line.as_bytes(),
            &DecodeOptions::default(),
            &mut out,
        )
        .unwrap_or_else(|e| panic!("docs/formats.md example does not decode: {e}\n{line}"));
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
    let toml = block_after(&page("docs/formats.md"), "### Line layouts").join("\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("user.toml");
    std::fs::write(&path, &toml).expect("write");
    let (settings, _) = appwarden::settings::Settings::load_with_env(Some(&path), Vec::new())
        .expect("the docs' layout example is valid settings");
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
    let yaml = block_after(&page("docs/registry.md"), "# The registry").join("\n");
    let registry =
        Registry::parse(&yaml, "docs/registry.md").expect("the registry example is valid");
    assert_eq!(registry.apps()[0].risk.score(), 6);
    let shipped = Registry::load(&root().join("config/registry.yaml"))
        .expect("config/registry.yaml is valid");
    assert!(shipped.app("invoice-bot").is_some());
}

#[test]
fn metrics_table_lists_exactly_the_exported_families() {
    let text = page("docs/operating.md");
    let documented = table_keys_after(&text, "Metrics (labels are fixed");
    let exported: BTreeSet<&str> = appwarden::observe::metrics::FAMILIES
        .iter()
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(documented, exported);
}

/// The keys `config/appwarden.toml` documents: `section.key` for each key line
/// at the start of a line, commented out (`# key = …`) or not, each table
/// below a section (`[kafka.properties]`) and each commented-out array of
/// tables (`# [[deliver.sinks]]`, whose own keys are that entry's, not settings).
fn shipped_keys(toml: &str) -> BTreeSet<String> {
    let is_key = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    let mut in_example_table = false;
    for line in toml.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_example_table = false;
            if name.contains('.') {
                keys.insert(name.to_string());
            }
            section = name.split('.').next().unwrap_or_default().to_string();
            continue;
        }
        if let Some(name) = line.strip_prefix("# [[").and_then(|l| l.split("]]").next()) {
            keys.insert(name.to_string());
            in_example_table = true;
            continue;
        }
        let (commented, body) = match line.strip_prefix("# ") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let Some((name, _)) = body.split_once(" = ") else {
            continue;
        };
        if !is_key(name) || (commented && in_example_table) {
            continue;
        }
        keys.insert(format!("{section}.{name}"));
    }
    keys
}

#[test]
fn the_settings_reference_lists_exactly_the_keys_of_the_shipped_config() {
    let shipped = shipped_keys(&page("config/appwarden.toml"));
    let text = page("docs/configuration.md");
    let documented: BTreeSet<String> = table_keys_after(&text, "## Settings reference")
        .into_iter()
        .filter(|k| *k != "key")
        .map(str::to_string)
        .collect();
    assert!(shipped.len() > 50, "{shipped:?}");
    let missing: Vec<&String> = shipped.difference(&documented).collect();
    let stale: Vec<&String> = documented.difference(&shipped).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "in config/appwarden.toml but not in docs/configuration.md: {missing:?}; \
         in docs/configuration.md but not in config/appwarden.toml: {stale:?}"
    );
}

/// GitHub's anchor of a heading: lower case, spaces to `-`, punctuation gone.
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings (outside fenced blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(anchor_of(line.trim_start_matches('#')));
        }
    }
    out
}

/// The targets of the Markdown links `](target)` of a page.
fn link_targets(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_link_between_pages_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for (path, text) in all_pages() {
        let dir = path.parent().expect("a page is in a folder");
        for target in link_targets(&text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let linked = if file.is_empty() {
                path.clone()
            } else {
                dir.join(file)
            };
            checked += 1;
            if !linked.exists() {
                broken.push(format!("{}: {target} (no such file)", path.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                let linked_text = std::fs::read_to_string(&linked).unwrap_or_default();
                if !anchors(&linked_text).contains(anchor) {
                    broken.push(format!("{}: {target} (no such heading)", path.display()));
                }
            }
        }
    }
    assert!(checked > 30, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// `(subcommand, flags)` of every `appwarden SUB …` or `cargo run … -- SUB …`
/// line in the pages' `sh` blocks.
fn documented_invocations() -> Vec<(String, String, Vec<String>)> {
    let subcommands = ["run", "replay", "query", "demo", "check-config"];
    let mut out = Vec::new();
    for (path, text) in all_pages() {
        let mut in_sh = false;
        for line in text.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("```") {
                in_sh = trimmed == "```sh";
                continue;
            }
            if !in_sh {
                continue;
            }
            let words: Vec<&str> = trimmed.split_whitespace().collect();
            let Some(at) = words
                .iter()
                .position(|w| *w == "appwarden" || w.ends_with("/appwarden") || *w == "--")
            else {
                continue;
            };
            let Some(sub) = words.get(at + 1).filter(|s| subcommands.contains(s)) else {
                continue;
            };
            let flags = words[at + 2..]
                .iter()
                .take_while(|w| !["|", ">", "&", ";", "&&", "#"].contains(w))
                .filter(|w| w.starts_with("--"))
                .map(|w| w.split('=').next().unwrap_or(w).to_string())
                .collect();
            let page = path
                .strip_prefix(root())
                .unwrap_or(&path)
                .display()
                .to_string();
            out.push((page, sub.to_string(), flags));
        }
    }
    out
}

#[test]
fn every_flag_the_pages_show_is_one_the_binary_takes() {
    let invocations = documented_invocations();
    assert!(
        invocations.iter().any(|(_, sub, _)| sub == "replay")
            && invocations.iter().any(|(_, sub, _)| sub == "query")
            && invocations.iter().any(|(_, sub, _)| sub == "demo"),
        "{invocations:?}"
    );
    let mut unknown = Vec::new();
    let mut helps = std::collections::HashMap::new();
    for (page, sub, flags) in &invocations {
        let help = helps.entry(sub.clone()).or_insert_with(|| {
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_appwarden"))
                .args([sub.as_str(), "--help"])
                .output()
                .expect("run appwarden");
            assert!(output.status.success(), "appwarden {sub} --help failed");
            String::from_utf8_lossy(&output.stdout).into_owned()
        });
        for flag in flags {
            let known = help
                .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
                .any(|w| {
                    w == flag
                        || w.starts_with(&format!("{flag}="))
                        || w.starts_with(&format!("{flag}<"))
                });
            if !known {
                unknown.push(format!("{page}: appwarden {sub} {flag}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "flags `--help` does not know:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn the_readme_production_config_passes_check_config() {
    let toml = block_after(&page("README.md"), "## A minimal production config").join("\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("appwarden.toml");
    std::fs::write(&file, &toml).expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_appwarden"))
        .args(["check-config", "--config"])
        .arg(&file)
        .current_dir(dir.path())
        // The example's registry lives under /etc; the shipped example stands in.
        .env(
            "APPWARDEN__REGISTRY__PATH",
            root().join("config/registry.yaml"),
        )
        .env("APPWARDEN_KAFKA_PASSWORD", "not-a-real-password")
        .env("APPWARDEN_WEBHOOK_KEY", "0123456789abcdef0123456789abcdef")
        .output()
        .expect("run check-config");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(r#"brokers = "kafka-1:9093,kafka-2:9093"  # file"#),
        "{stdout}"
    );
    assert!(stdout.contains("# sink soc-webhook: ok"), "{stdout}");
    assert!(!stdout.contains("not-a-real-password"), "{stdout}");
}
