//! Detector files: one TOML file per detector in `detectors/`, naming a kind and its settings.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::alert::Severity;
use crate::event::{ActorType, Category, IdentityStatus, NormalizedEvent, Product, SourceKind};
use crate::settings::MAX_DURATION_SECS;

/// The detector kinds the engine implements; a file picks one and sets its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Events per bucket against a rolling, seasonal per-identity baseline.
    RateSpike,
    /// Secret reads and distinct secrets per window; enumeration; unregistered readers.
    SecretReads,
    /// Identities missing from the registry, admin actions outside onboarding, lapsed registrations.
    Unregistered,
    /// A value (registrable egress domain) first seen for an identity after its learning period.
    NewDomain,
    /// Tokens used from another region than issued, or outside the app's allowed regions.
    TokenRegion,
    RoundTheClock,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RateSpike => "rate_spike",
            Kind::SecretReads => "secret_reads",
            Kind::Unregistered => "unregistered",
            Kind::NewDomain => "new_domain",
            Kind::TokenRegion => "token_region",
            Kind::RoundTheClock => "round_the_clock",
        }
    }
}

/// Which events a detector sees. An empty list means "any".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default)]
    pub categories: Vec<Category>,
    /// Identity statuses: registered, unregistered, anonymous.
    #[serde(default)]
    pub statuses: Vec<IdentityStatus>,
    #[serde(default)]
    pub products: Vec<Product>,
    #[serde(default)]
    pub sources: Vec<SourceKind>,
    /// Actor types: person, service, unknown.
    #[serde(default)]
    pub actor_types: Vec<ActorType>,
}

impl Filter {
    pub fn matches(&self, event: &NormalizedEvent) -> bool {
        let status = event
            .identity
            .as_ref()
            .map_or(IdentityStatus::Anonymous, |i| i.status);
        (self.categories.is_empty() || self.categories.contains(&event.category))
            && (self.statuses.is_empty() || self.statuses.contains(&status))
            && (self.products.is_empty() || self.products.contains(&event.product))
            && (self.sources.is_empty() || self.sources.contains(&event.source_kind))
            && (self.actor_types.is_empty() || self.actor_types.contains(&event.actor.actor_type))
    }
}

/// One detector, as written in its file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSpec {
    /// Unique name; alerts carry it as `detector`.
    pub name: String,
    pub kind: Kind,
    /// What the detector looks for, for people reading alerts and files.
    pub description: String,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    /// Base severity, raised by the app's risk tier and score.
    pub severity: Severity,
    /// Repeats for the same identity within this many seconds (event time) are suppressed.
    pub suppression_secs: u64,
    /// An identity's own baseline may alert only after it has been seen this long.
    #[serde(default)]
    pub learning_period_secs: u64,
    #[serde(default)]
    pub filter: Filter,
    /// Parameters of the kind (see each kind's documentation in `detectors/README.md`).
    #[serde(default)]
    pub params: toml::Table,
    /// The file it came from (set when loaded).
    #[serde(skip)]
    pub path: PathBuf,
}

fn enabled_default() -> bool {
    true
}

/// A detector file that cannot be used, naming the file and the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("detector file {path}: {key}: {message}")]
pub struct SpecError {
    pub path: String,
    pub key: String,
    pub message: String,
}

impl DetectorSpec {
    pub fn parse(text: &str, path: &Path) -> Result<DetectorSpec, SpecError> {
        let mut spec: DetectorSpec = toml::from_str(text).map_err(|e| SpecError {
            path: path.display().to_string(),
            key: "(file)".into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        spec.path = path.to_path_buf();
        if spec.name.trim().is_empty() {
            return Err(spec.error("name", "must not be empty"));
        }
        if spec.suppression_secs == 0 {
            return Err(spec.error("suppression_secs", "must be at least 1"));
        }
        for (key, value) in [
            ("suppression_secs", spec.suppression_secs),
            ("learning_period_secs", spec.learning_period_secs),
        ] {
            spec.at_most_ten_years(key, value)?;
        }
        Ok(spec)
    }

    pub fn error(&self, key: &str, message: impl Into<String>) -> SpecError {
        SpecError {
            path: self.path.display().to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// Refuses a duration (seconds) past [`MAX_DURATION_SECS`], naming `key`.
    pub fn at_most_ten_years(&self, key: &str, value: u64) -> Result<(), SpecError> {
        crate::settings::at_most(key, value, MAX_DURATION_SECS, "seconds (ten years)")
            .map_err(|(key, message)| self.error(&key, message))
    }

    /// Parses `params` into a kind's parameter struct (which denies unknown fields).
    pub fn params<T: serde::de::DeserializeOwned>(&self) -> Result<T, SpecError> {
        toml::Value::Table(self.params.clone())
            .try_into()
            .map_err(|e: toml::de::Error| {
                self.error("params", e.to_string().trim().replace('\n', " "))
            })
    }
}

/// The default detectors, compiled in: the files of `detectors/` as shipped.
pub const BUILTIN: [(&str, &str); 6] = [
    (
        "call_spike.toml",
        include_str!("../../detectors/call_spike.toml"),
    ),
    (
        "mass_secret_read.toml",
        include_str!("../../detectors/mass_secret_read.toml"),
    ),
    (
        "new_egress_domain.toml",
        include_str!("../../detectors/new_egress_domain.toml"),
    ),
    (
        "off_region_token.toml",
        include_str!("../../detectors/off_region_token.toml"),
    ),
    (
        "personal_credential_automation.toml",
        include_str!("../../detectors/personal_credential_automation.toml"),
    ),
    (
        "unregistered_identity.toml",
        include_str!("../../detectors/unregistered_identity.toml"),
    ),
];

/// The built-in default detectors.
pub fn builtin() -> Result<Vec<DetectorSpec>, SpecError> {
    BUILTIN
        .iter()
        .map(|(name, text)| DetectorSpec::parse(text, Path::new(&format!("(built-in) {name}"))))
        .collect()
}

/// Loads every `*.toml` file of a folder, sorted by file name; names must be unique.
pub fn load_dir(dir: &Path) -> Result<Vec<DetectorSpec>, SpecError> {
    let dir_error = |message: String| SpecError {
        path: dir.display().to_string(),
        key: "(folder)".into(),
        message,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            dir_error(
                "the folder does not exist; set detect.detectors_dir to your detector files, \
                 or to \"\" for the built-in defaults"
                    .into(),
            )
        } else {
            dir_error(e.to_string())
        }
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut specs: Vec<DetectorSpec> = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| SpecError {
            path: path.display().to_string(),
            key: "(file)".into(),
            message: e.to_string(),
        })?;
        let spec = DetectorSpec::parse(&text, &path)?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(spec.error(
                "name",
                format!("`{}` is used by another detector file", spec.name),
            ));
        }
        specs.push(spec);
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_keys() {
        let text = r#"
name = "x"
kind = "rate_spike"
description = "d"
severity = "medium"
suppression_secs = 60
[filter]
categories = ["api_call"]
[params]
bucket_secs = 300
"#;
        let spec = DetectorSpec::parse(text, Path::new("x.toml")).unwrap();
        assert_eq!(spec.kind, Kind::RateSpike);
        assert!(spec.enabled);
        let e = DetectorSpec::parse(&text.replace("severity", "sevrity"), Path::new("x.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("sevrity"), "{e}");
        let e = DetectorSpec::parse(&text.replace("rate_spike", "magic"), Path::new("x.toml"))
            .unwrap_err();
        assert!(e.to_string().starts_with("detector file x.toml"), "{e}");
        let e = DetectorSpec::parse(&text.replace("= 60", "= 0"), Path::new("x.toml")).unwrap_err();
        assert_eq!(e.key, "suppression_secs");
    }

    #[test]
    fn absurd_detector_durations_are_refused_naming_the_key() {
        let huge = "10000000000000000";
        for (key, text) in [
            ("suppression_secs", format!("suppression_secs = {huge}\n")),
            (
                "learning_period_secs",
                format!("suppression_secs = 60\nlearning_period_secs = {huge}\n"),
            ),
        ] {
            let text = format!(
                "name = \"x\"\nkind = \"rate_spike\"\ndescription = \"d\"\nseverity = \"low\"\n{text}"
            );
            let e = DetectorSpec::parse(&text, Path::new("x.toml")).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
        let mut spec = builtin()
            .unwrap()
            .into_iter()
            .find(|s| s.kind == Kind::TokenRegion)
            .unwrap();
        spec.params.insert(
            "token_ttl_secs".into(),
            toml::Value::Integer(10_i64.pow(16)),
        );
        let e = crate::detect::kinds::build(&spec, 10)
            .err()
            .expect("refused");
        assert_eq!(e.key, "params.token_ttl_secs", "{e}");
    }
}
