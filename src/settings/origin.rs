//! Where each effective setting came from: the built-in defaults, the user
//! file, or an environment variable. `check-config` prints it per key, and a
//! default path that is not there may fall back to the built-ins only when the
//! user did not set it.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use super::{ENV_PREFIX, ENV_SEPARATOR, SettingsSources};

/// The layer a setting's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueOrigin {
    Default,
    File,
    Environment,
}

impl fmt::Display for ValueOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueOrigin::Default => "default",
            ValueOrigin::File => "file",
            ValueOrigin::Environment => "environment",
        })
    }
}

/// The dotted keys a TOML settings file sets: tables are walked, any other
/// value (arrays of tables included) is one key.
pub(super) fn file_keys(path: &Path) -> Result<BTreeSet<String>, String> {
    use config::{Config, File, FileFormat, Source, ValueKind};

    let table = Config::builder()
        .add_source(File::from(path).format(FileFormat::Toml))
        .build()
        .and_then(|c| Source::collect(&c))
        .map_err(|e| e.to_string())?;
    let mut keys = BTreeSet::new();
    let mut pending: Vec<(String, config::Value)> = table.into_iter().collect();
    while let Some((key, value)) = pending.pop() {
        match value.kind {
            ValueKind::Table(children) => {
                pending.extend(children.into_iter().map(|(k, v)| (format!("{key}.{k}"), v)))
            }
            _ => {
                keys.insert(key);
            }
        }
    }
    Ok(keys)
}

/// `APPWARDEN__KAFKA__BROKERS` → `kafka.brokers`.
fn env_to_dotted(variable: &str) -> Option<String> {
    let rest = variable.strip_prefix(&format!("{ENV_PREFIX}{ENV_SEPARATOR}"))?;
    Some(
        rest.split(ENV_SEPARATOR)
            .collect::<Vec<_>>()
            .join(".")
            .to_lowercase(),
    )
}

/// `key` is `set` or lies inside it (`kafka.topics.name` inside `kafka.topics`).
fn covers(set: &str, key: &str) -> bool {
    key == set
        || key
            .strip_prefix(set)
            .is_some_and(|rest| rest.starts_with('.'))
}

impl SettingsSources {
    /// The layer the effective value of a dotted key (`detect.detectors_dir`) comes from.
    pub fn origin(&self, key: &str) -> ValueOrigin {
        if self
            .env_keys
            .iter()
            .filter_map(|v| env_to_dotted(v))
            .any(|set| covers(&set, key) || covers(key, &set))
        {
            ValueOrigin::Environment
        } else if self.file_keys.iter().any(|set| covers(set, key)) {
            ValueOrigin::File
        } else {
            ValueOrigin::Default
        }
    }

    /// `toml` (as [`super::Settings::to_toml`] renders it) with a comment after
    /// each `key = value` line naming the value's origin. Still valid TOML.
    pub fn annotate(&self, toml: &str) -> String {
        let mut table = String::new();
        let mut out = String::with_capacity(toml.len() * 2);
        for line in toml.lines() {
            out.push_str(line);
            if let Some(header) = line.strip_prefix('[') {
                table = header.trim_matches(|c| c == '[' || c == ']').to_string();
            } else if let Some((key, _)) = line.split_once(" = ")
                && !key.is_empty()
                && !key.starts_with(char::is_whitespace)
            {
                let key = key.trim_matches('"');
                let dotted = if table.is_empty() {
                    key.to_string()
                } else {
                    format!("{table}.{key}")
                };
                out.push_str("  # ");
                out.push_str(&self.origin(&dotted).to_string());
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(file: &str, env: &[&str]) -> SettingsSources {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("user.toml");
        std::fs::write(&path, file).expect("write");
        SettingsSources {
            user_file: Some(path.clone()),
            env_keys: env.iter().map(|v| v.to_string()).collect(),
            file_keys: file_keys(&path).expect("parses"),
        }
    }

    #[test]
    fn each_key_names_the_layer_it_comes_from() {
        let s = sources(
            "[kafka]\nbrokers = \"k:9092\"\n[[kafka.topics]]\nname = \"sso\"\n[detect]\nshards = 4\n",
            &["APPWARDEN__DETECT__SHARDS", "APPWARDEN__LOG__LEVEL"],
        );
        assert_eq!(s.origin("kafka.brokers"), ValueOrigin::File);
        assert_eq!(s.origin("kafka.topics.name"), ValueOrigin::File);
        assert_eq!(s.origin("detect.shards"), ValueOrigin::Environment);
        assert_eq!(s.origin("log.level"), ValueOrigin::Environment);
        assert_eq!(s.origin("kafka.group_id"), ValueOrigin::Default);
        assert_eq!(s.origin("detect.detectors_dir"), ValueOrigin::Default);
        // A key that merely shares a prefix is not covered.
        assert_eq!(s.origin("kafka.brokers_extra"), ValueOrigin::Default);
    }

    #[test]
    fn annotated_settings_stay_valid_toml_with_an_origin_per_key() {
        let s = sources(
            "[kafka]\nbrokers = \"k:9092\"\n",
            &["APPWARDEN__LOG__LEVEL"],
        );
        let text = "[kafka]\nbrokers = \"k:9092\"\ngroup_id = \"g\"\nextra = [\n    \"a\",\n]\n\n[log]\nlevel = \"info\"\n";
        let annotated = s.annotate(text);
        assert!(
            annotated.contains("brokers = \"k:9092\"  # file\n"),
            "{annotated}"
        );
        assert!(
            annotated.contains("group_id = \"g\"  # default\n"),
            "{annotated}"
        );
        assert!(
            annotated.contains("level = \"info\"  # environment\n"),
            "{annotated}"
        );
        assert!(annotated.contains("    \"a\",\n"), "{annotated}");
        let parsed = config::Config::builder()
            .add_source(config::File::from_str(&annotated, config::FileFormat::Toml))
            .build();
        assert!(parsed.is_ok(), "{annotated}");
    }
}
