//! Settings: typed, documented configuration loaded with the `config` crate.
//!
//! Layers, later ones win: the defaults in `config/appwarden.toml` (compiled
//! into the binary), a user file (`--config FILE`), then environment
//! variables `APPWARDEN__SECTION__KEY` (e.g. `APPWARDEN__KAFKA__BROKERS`).
//! Secrets never live in these layers: a setting that needs one holds a
//! [`SecretRef`] naming an environment variable or a file.

mod origin;
mod secret;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decode::{DecodeOptions, FieldMapping, Format, Layout, LayoutError};
use crate::deliver::worker::DeliverSettings;
use crate::detect::EngineSettings;
use crate::history::HistorySettings;
use crate::observe::HttpSettings;
use crate::query::QuerySettings;
pub use origin::ValueOrigin;
pub use secret::{SecretError, SecretRef};

/// The defaults shipped with the binary; the same text as `config/appwarden.toml`.
pub const DEFAULTS_TOML: &str = include_str!("../../config/appwarden.toml");

/// Prefix of environment overrides: `APPWARDEN__KAFKA__BROKERS=host:9092`.
pub const ENV_PREFIX: &str = "APPWARDEN";
pub const ENV_SEPARATOR: &str = "__";

/// Everything `appwarden` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Kafka connection, consumer group and input topics.
    pub kafka: KafkaSettings,
    /// Limits on input records.
    pub input: InputSettings,
    /// The micro-app registry.
    pub registry: RegistrySettings,
    /// Where records that cannot be decoded go.
    pub dead_letter: DeadLetterSettings,
    /// Where normalized, identity-resolved events go.
    pub output: OutputSettings,
    /// Detection engine: detector files, shards, lateness, memory bounds.
    pub detect: EngineSettings,
    /// Where alerts go.
    pub alerts: AlertSettings,
    /// Snapshots of detector and identity state.
    pub state: StateSettings,
    /// Alert routing, the durable outbox and the sinks.
    pub deliver: DeliverSettings,
    /// Parquet history of events and alerts.
    pub history: HistorySettings,
    /// Limits of SQL over the history (`appwarden query`, `POST /v1/query`).
    pub query: QuerySettings,
    /// The daemon's HTTP listener (metrics, health, SQL).
    pub http: HttpSettings,
    /// Logging.
    pub log: LogSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// Kafka topic for alerts (JSON, keyed by identity). Empty: none.
    #[serde(default)]
    pub topic: String,
    /// NDJSON file for alerts (appended). Empty: none.
    #[serde(default)]
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSettings {
    /// Snapshot file of detector baselines, suppression and issued credentials,
    /// with the input offsets it is consistent with. Empty: no snapshots
    /// (a restart relearns every baseline).
    #[serde(default)]
    pub snapshot_path: String,
    /// Seconds between snapshots (taken after a batch's offsets are stored).
    pub snapshot_interval_secs: u64,
}

/// Kafka settings. Anything librdkafka understands can be passed through `properties`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma-separated `host:port` (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// Consumer group; several `appwarden run` processes in one group share the partitions.
    pub group_id: String,
    /// Input topics, each with the format of its records (`auto` recognises them per record).
    pub topics: Vec<TopicSettings>,
    /// Most records processed before outputs are flushed and offsets stored.
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// Longest a partial batch waits for more records before it is flushed.
    #[serde(default = "default_batch_linger_ms")]
    pub batch_linger_ms: u64,
    /// How far (event time) a partition with a backlog may run ahead of the slowest
    /// one before it is paused until the others catch up; 0 turns alignment off.
    #[serde(default = "default_max_partition_lead_secs")]
    pub max_partition_lead_secs: u64,
    /// Extra librdkafka properties, passed through as they are: `security.protocol`,
    /// `sasl.mechanisms`, `sasl.username`, `ssl.ca.location`, `auto.offset.reset`, …
    /// Secret values are refused here; put them in `secret_properties`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only (`auto.offset.reset`,
    /// `session.timeout.ms`, `max.poll.interval.ms`, …), over `properties`.
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for AppWarden's producers only (enriched events,
    /// alerts, dead letters), over `properties` and over the defaults
    /// `compression.type = lz4`, `linger.ms = 2`, `enable.idempotence = true`.
    #[serde(default)]
    pub producer_properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets (`sasl.password`,
    /// `ssl.key.password`, …), each read from `{ env = "VAR" }` or `{ file = "PATH" }`.
    #[serde(default)]
    pub secret_properties: BTreeMap<String, SecretRef>,
}

/// One input topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// Topic name.
    pub name: String,
    /// Record format: auto, okta, entra, cloudtrail, vault, kong, envoy, squid, generic,
    /// azure_keyvault, envoy_text.
    #[serde(default = "default_format")]
    pub format: Format,
    /// Field mapping for `generic` topics whose records are not in the documented generic form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<FieldMapping>,
    /// Line layout of text records, for `squid`, `envoy_text` and `auto` topics: a
    /// preset (`squid`, `common`, `combined`, `envoy`, `istio`), a Squid `logformat`
    /// string or an Envoy format string. Unset: Squid native and Envoy's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
}

impl TopicSettings {
    /// The decode options of this topic; the layout was checked by [`Settings::validate`].
    pub fn decode_options(&self) -> Result<DecodeOptions, LayoutError> {
        Ok(DecodeOptions {
            mapping: self.mapping.clone(),
            layout: self
                .layout
                .as_deref()
                .map(Layout::parse)
                .transpose()?
                .map(std::sync::Arc::new),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSettings {
    /// Records larger than this are dead-lettered as `oversized` without being parsed.
    pub max_record_bytes: usize,
    /// Events dated further than this ahead of the clock are dead-lettered (`bad_time`),
    /// so one bad clock cannot drag the detectors' event time into the future; at most
    /// 100 years. Events dated before 1970 are dead-lettered (`bad_time`) too.
    #[serde(default = "default_max_future_secs")]
    pub max_future_secs: u64,
}

fn default_max_future_secs() -> u64 {
    86_400
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// The registry file (YAML). Relative paths are relative to the working directory.
    pub path: PathBuf,
    /// How often the file is checked for changes (SIGHUP also reloads it at once).
    pub reload_interval_secs: u64,
    /// Most credentials (STS keys, Vault accessors) remembered as issued to an app.
    pub issued_credentials_max: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterSettings {
    /// Kafka topic for dead letters (keyed by the source topic). Empty: none.
    #[serde(default)]
    pub topic: String,
    /// NDJSON file for dead letters (appended). Empty: none. At least one of the two is required.
    #[serde(default)]
    pub file: String,
    /// Bytes of a bad record kept in its dead letter; larger records keep this prefix
    /// and their SHA-256 (the whole record stays at its Kafka coordinates), so a dead
    /// letter always fits the dead-letter topic.
    #[serde(default = "default_dead_letter_payload")]
    pub max_payload_bytes: usize,
}

fn default_dead_letter_payload() -> usize {
    256 * 1024
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSettings {
    /// Kafka topic for enriched events (OCSF JSON, keyed by identity). Empty: none.
    #[serde(default)]
    pub events_topic: String,
    /// NDJSON file for enriched events (appended). Empty: none.
    #[serde(default)]
    pub events_file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `pretty` (human), `json` (one object per line), or `auto`: pretty on a terminal, else JSON.
    pub format: LogFormat,
    /// Level filter in `tracing` syntax (`info`, `appwarden=debug,rdkafka=warn`); `RUST_LOG` wins.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Auto,
    Pretty,
    Json,
}

fn default_format() -> Format {
    Format::Auto
}
fn default_batch_max_records() -> usize {
    500
}
fn default_batch_linger_ms() -> u64 {
    5
}
fn default_max_partition_lead_secs() -> u64 {
    21_600
}

/// librdkafka properties whose values are secrets and may not be written in clear
/// (with any other whose name speaks of a secret: [`is_secret_property`]).
const SECRET_PROPERTIES: [&str; 8] = [
    "sasl.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.truststore.password",
];

/// Whether a librdkafka property's value is a secret: one of the known names
/// in any case, or any name with `password`, `passphrase` or `secret` in it.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    SECRET_PROPERTIES.contains(&key.as_str())
        || ["password", "passphrase", "secret"]
            .iter()
            .any(|word| key.contains(word))
}

/// The longest duration any setting or detector file may give: ten years. Longer
/// ones are typos, and near 1e16 s chrono durations overflow (they are i64
/// milliseconds), which would panic on the first event or tick.
pub const MAX_DURATION_SECS: u64 = 10 * 365 * 86_400;

/// The longest `input.max_future_secs`: a hundred years (for replays of generated
/// data dated ahead), far inside the year 262143 where chrono's dates end.
pub const MAX_FUTURE_SECS: u64 = 100 * 365 * 86_400;

/// Checks `value <= max` for a duration setting; the error names `key` and the unit.
pub fn at_most(key: &str, value: u64, max: u64, unit: &str) -> Result<(), (String, String)> {
    if value > max {
        return Err((key.to_string(), format!("must be at most {max} {unit}")));
    }
    Ok(())
}

/// A settings error: the key it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings ({sources}): {message}")]
    Load { sources: String, message: String },
    #[error("{key}: {message} (settings from {sources})")]
    Invalid {
        key: String,
        message: String,
        sources: String,
    },
}

/// Where the effective settings came from: for error messages, for
/// `check-config`'s per-key origins, and for defaults that fall back to the
/// built-ins when their relative path is not there.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SettingsSources {
    pub user_file: Option<PathBuf>,
    /// The `APPWARDEN__…` variables that were set, as given.
    pub env_keys: Vec<String>,
    /// Dotted keys the user file sets (tables are walked; an array is one key).
    pub file_keys: std::collections::BTreeSet<String>,
}

impl fmt::Display for SettingsSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("built-in defaults (config/appwarden.toml)")?;
        if let Some(path) = &self.user_file {
            write!(f, ", {}", path.display())?;
        }
        if !self.env_keys.is_empty() {
            write!(f, ", environment {}", self.env_keys.join(" "))?;
        }
        Ok(())
    }
}

/// A load error as text. A TOML syntax error gives its line and column and what
/// is wrong, never the offending line: that line may hold a secret in clear.
fn load_error(error: &config::ConfigError) -> String {
    if let config::ConfigError::FileParse { uri, cause } = error
        && let Some(syntax) = cause.downcast_ref::<toml::de::Error>()
    {
        // toml's first line is "TOML parse error at line L, column C"; the
        // lines after it quote the file.
        let shown = syntax.to_string();
        let at = shown
            .lines()
            .next()
            .filter(|l| l.starts_with("TOML parse error at line"))
            .unwrap_or("TOML parse error");
        let what = syntax.message().lines().next().unwrap_or("invalid TOML");
        let file = uri.as_deref().unwrap_or("the built-in defaults");
        return format!("{at} in {file}: {what}");
    }
    error.to_string()
}

impl Settings {
    /// Loads the layers and validates the result.
    pub fn load(user_file: Option<&Path>) -> Result<(Settings, SettingsSources), SettingsError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(user_file, env)
    }

    /// Like [`Settings::load`], with the environment passed in (tests pass their own).
    pub fn load_with_env(
        user_file: Option<&Path>,
        env: Vec<(String, String)>,
    ) -> Result<(Settings, SettingsSources), SettingsError> {
        use config::{Config, Environment, File, FileFormat};

        let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
        let env: std::collections::HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect();
        let mut env_keys: Vec<String> = env.keys().cloned().collect();
        env_keys.sort();
        let mut sources = SettingsSources {
            user_file: user_file.map(Path::to_path_buf),
            env_keys,
            file_keys: Default::default(),
        };

        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULTS_TOML, FileFormat::Toml));
        if let Some(path) = user_file {
            if !path.is_file() {
                return Err(SettingsError::Load {
                    sources: sources.to_string(),
                    message: format!("config file {} does not exist", path.display()),
                });
            }
            sources.file_keys = origin::file_keys(path).map_err(|message| SettingsError::Load {
                sources: sources.to_string(),
                message,
            })?;
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .try_parsing(true)
                .source(Some(env)),
        );
        let settings: Settings =
            builder
                .build()
                .and_then(|c| c.try_deserialize())
                .map_err(|e| SettingsError::Load {
                    sources: sources.to_string(),
                    message: load_error(&e),
                })?;
        settings
            .validate()
            .map_err(|(key, message)| SettingsError::Invalid {
                key,
                message,
                sources: sources.to_string(),
            })?;
        Ok((settings, sources))
    }

    /// Checks invariants that types cannot; returns the key at fault and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, msg: String| Err((key.to_string(), msg));
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            return err(
                "kafka.brokers",
                "must name at least one broker (host:port)".into(),
            );
        }
        if k.group_id.trim().is_empty() {
            return err("kafka.group_id", "must not be empty".into());
        }
        if k.topics.is_empty() {
            return err("kafka.topics", "must list at least one input topic".into());
        }
        let mut names = HashSet::new();
        for (i, topic) in k.topics.iter().enumerate() {
            if topic.name.trim().is_empty() {
                return err(
                    &format!("kafka.topics[{i}].name"),
                    "must not be empty".into(),
                );
            }
            if !names.insert(topic.name.as_str()) {
                return err(
                    &format!("kafka.topics[{i}].name"),
                    format!("topic `{}` is listed twice", topic.name),
                );
            }
            if let Some(mapping) = &topic.mapping {
                if topic.format != Format::Generic {
                    return err(
                        &format!("kafka.topics[{i}].mapping"),
                        format!(
                            "a mapping needs format = \"generic\", not \"{}\"",
                            topic.format
                        ),
                    );
                }
                if let Err(msg) = mapping.validate() {
                    return err(&format!("kafka.topics[{i}].mapping"), msg);
                }
            }
            if let Some(layout) = &topic.layout {
                let key = format!("kafka.topics[{i}].layout");
                if !matches!(
                    topic.format,
                    Format::Auto | Format::Squid | Format::EnvoyText
                ) {
                    return err(
                        &key,
                        format!(
                            "a layout needs format = \"squid\", \"envoy_text\" or \"auto\", not \"{}\"",
                            topic.format
                        ),
                    );
                }
                if let Err(e) = Layout::parse(layout) {
                    return err(&key, e.to_string());
                }
            }
        }
        if k.batch_max_records == 0 || k.batch_max_records > 100_000 {
            return err(
                "kafka.batch_max_records",
                "must be between 1 and 100000".into(),
            );
        }
        if k.batch_linger_ms > 10_000 {
            return err("kafka.batch_linger_ms", "must be at most 10000".into());
        }
        // A windowed detector keeps a day of buckets open per identity.
        if k.max_partition_lead_secs > 43_200 {
            return err(
                "kafka.max_partition_lead_secs",
                "must be at most 43200 (12 hours; 0 turns alignment off)".into(),
            );
        }
        for key in k
            .properties
            .keys()
            .chain(k.consumer_properties.keys())
            .chain(k.producer_properties.keys())
        {
            if is_secret_property(key) {
                return err(
                    &format!("kafka.properties.\"{key}\" (or consumer_/producer_properties)"),
                    "holds a secret in clear; set it in kafka.secret_properties as { env = \"VAR\" } or { file = \"PATH\" }".into(),
                );
            }
            if matches!(
                key.as_str(),
                "bootstrap.servers" | "group.id" | "enable.auto.offset.store"
            ) {
                return err(
                    &format!("kafka.properties.\"{key}\" (or consumer_/producer_properties)"),
                    "is set by AppWarden itself (use kafka.brokers / kafka.group_id; offsets are stored only after processing)".into(),
                );
            }
        }
        for (key, value) in k.properties.iter().chain(&k.producer_properties) {
            // An acknowledgement must mean the record is durable: offsets move on it.
            let weak = match key.as_str() {
                "acks" | "request.required.acks" => value.trim() != "all" && value.trim() != "-1",
                "enable.idempotence" => value.trim() == "false",
                _ => false,
            };
            if weak {
                return err(
                    &format!("kafka.properties.\"{key}\" (or producer_properties)"),
                    format!(
                        "\"{value}\" would let input offsets move before outputs are durable; leave it unset"
                    ),
                );
            }
        }
        for (key, secret) in &k.secret_properties {
            if let Err(msg) = secret.validate() {
                return err(&format!("kafka.secret_properties.\"{key}\""), msg);
            }
        }
        if self.input.max_record_bytes < 64 || self.input.max_record_bytes > 64 * 1024 * 1024 {
            return err(
                "input.max_record_bytes",
                "must be between 64 and 67108864".into(),
            );
        }
        if self.dead_letter.max_payload_bytes == 0
            || self.dead_letter.max_payload_bytes > 64 * 1024 * 1024
        {
            return err(
                "dead_letter.max_payload_bytes",
                format!(
                    "must be between 1 and 67108864, not {}",
                    self.dead_letter.max_payload_bytes
                ),
            );
        }
        if self.registry.path.as_os_str().is_empty() {
            return err("registry.path", "must name the registry file".into());
        }
        at_most(
            "input.max_future_secs",
            self.input.max_future_secs,
            MAX_FUTURE_SECS,
            "(100 years)",
        )?;
        if self.registry.reload_interval_secs == 0 {
            return err("registry.reload_interval_secs", "must be at least 1".into());
        }
        if self.registry.issued_credentials_max == 0 {
            return err(
                "registry.issued_credentials_max",
                "must be at least 1".into(),
            );
        }
        if self.dead_letter.topic.trim().is_empty() && self.dead_letter.file.trim().is_empty() {
            return err(
                "dead_letter",
                "set dead_letter.topic or dead_letter.file: bad records are never dropped".into(),
            );
        }
        let d = &self.detect;
        if d.shards == 0 || d.shards > 64 {
            return err("detect.shards", "must be between 1 and 64".into());
        }
        if d.allowed_lateness_secs > 86_400 {
            return err(
                "detect.allowed_lateness_secs",
                "must be at most 86400 (one day)".into(),
            );
        }
        if d.idle_eviction_secs < 3600 {
            return err("detect.idle_eviction_secs", "must be at least 3600".into());
        }
        for (key, value) in [
            ("detect.idle_eviction_secs", d.idle_eviction_secs),
            ("detect.max_source_skew_secs", d.max_source_skew_secs),
            (
                "registry.reload_interval_secs",
                self.registry.reload_interval_secs,
            ),
            (
                "state.snapshot_interval_secs",
                self.state.snapshot_interval_secs,
            ),
        ] {
            at_most(key, value, MAX_DURATION_SECS, "seconds (ten years)")?;
        }
        if d.max_identities_per_shard == 0 {
            return err(
                "detect.max_identities_per_shard",
                "must be at least 1".into(),
            );
        }
        self.deliver.validate()?;
        self.history.validate()?;
        self.query.validate()?;
        self.http.validate()?;
        if self.state.snapshot_interval_secs == 0 {
            return err("state.snapshot_interval_secs", "must be at least 1".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return err(
                "log.level",
                format!("`{}` is not a valid filter: {e}", self.log.level),
            );
        }
        Ok(())
    }

    /// The binary run outside its repository finds no `detectors` folder: when
    /// `detect.detectors_dir` is the default and that folder is not there, the
    /// built-in detectors are used. Returns the note to log; an explicitly
    /// configured folder that is missing stays an error (at engine start).
    pub fn fall_back_to_builtin_detectors(&mut self, sources: &SettingsSources) -> Option<String> {
        let dir = &self.detect.detectors_dir;
        if dir.as_os_str().is_empty()
            || sources.origin("detect.detectors_dir") != ValueOrigin::Default
            || dir.exists()
        {
            return None;
        }
        let note = format!(
            "detect.detectors_dir: the default folder `{}` is not in the working directory; using the built-in detectors",
            dir.display()
        );
        self.detect.detectors_dir = PathBuf::new();
        Some(note)
    }

    /// The effective settings as TOML. Secret references show where a secret
    /// comes from, never its value.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }

    /// The format and decode options of each input topic.
    pub fn topic(&self, name: &str) -> Option<&TopicSettings> {
        self.kafka.topics.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(user: Option<&str>, env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user.toml");
        if let Some(text) = user {
            std::fs::write(&path, text).unwrap();
        }
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_with_env(user.map(|_| path.as_path()), env).map(|(s, _)| s)
    }

    #[test]
    fn defaults_are_valid() {
        let s = load(None, &[]).unwrap();
        assert!(!s.kafka.topics.is_empty());
        assert_eq!(s.kafka.batch_max_records, 500);
    }

    #[test]
    fn user_file_then_env_override() {
        let user = r#"
[kafka]
brokers = "file:9092"
group_id = "g1"
topics = [{ name = "okta-logs", format = "okta" }]
[kafka.properties]
"security.protocol" = "SASL_SSL"
"#;
        let s = load(
            Some(user),
            &[
                ("APPWARDEN__KAFKA__BROKERS", "env:9092"),
                ("APPWARDEN__INPUT__MAX_RECORD_BYTES", "2048"),
                ("APPWARDEN_UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(s.kafka.brokers, "env:9092");
        assert_eq!(s.kafka.group_id, "g1");
        assert_eq!(s.kafka.topics[0].format, Format::Okta);
        assert_eq!(s.input.max_record_bytes, 2048);
        assert_eq!(
            s.kafka
                .properties
                .get("security.protocol")
                .map(String::as_str),
            Some("SASL_SSL")
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let e = load(Some("[kafka]\nbrokerz = \"x\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("brokerz"), "{e}");
        let e = load(None, &[("APPWARDEN__KAFKA__NOPE", "1")]).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn a_secret_written_where_a_reference_belongs_is_not_quoted() {
        let secret = "hunter2-Clear-6626";
        for user in [
            format!("[kafka.secret_properties]\n\"sasl.password\" = \"{secret}\"\n"),
            format!("[query]\ntoken = \"{secret}\"\n"),
            "[kafka.secret_properties]\n\"sasl.password\" = 66260701\n".to_string(),
            format!(
                "[[deliver.sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/h\"\nsigning_key = \"{secret}\"\n"
            ),
        ] {
            let e = load(Some(&user), &[]).unwrap_err().to_string();
            assert!(!e.contains(secret) && !e.contains("66260701"), "{e}");
            assert!(e.contains("written in clear"), "{e}");
        }
        // A reference still loads, and a stray key is named, not its value.
        let ok = "[kafka.secret_properties]\n\"sasl.password\" = { env = \"KAFKA_PW\" }\n";
        assert!(load(Some(ok), &[]).is_ok());
        let stray = format!("[query]\ntoken = {{ value = \"{secret}\" }}\n");
        let e = load(Some(&stray), &[]).unwrap_err().to_string();
        assert!(e.contains("value") && !e.contains(secret), "{e}");
    }

    #[test]
    fn a_toml_syntax_error_gives_its_place_not_its_text() {
        let secret = "hunter2-Clear-6626";
        for user in [
            format!("[kafka.properties]\n\"sasl.username\" = {secret}\n"),
            format!("[query]\ntoken = \"{secret}\n"),
            format!("[query]\ntoken = {{ env = {secret} }}\n"),
            format!("[kafka]\n{secret}\n"),
        ] {
            let e = load(Some(&user), &[]).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("line 2, column"), "{e}");
        }
    }

    #[test]
    fn secret_property_names_are_caught_in_any_case() {
        for key in [
            "SASL.PASSWORD",
            "Sasl.Password",
            " ssl.key.password",
            "SSL.KEY.PEM",
            "sasl.oauthbearer.client.SECRET",
            "ssl.keystore.passphrase",
            "some.future.password.property",
        ] {
            let user = format!("[kafka.properties]\n\"{key}\" = \"hunter2\"\n");
            let e = load(Some(&user), &[]).unwrap_err().to_string();
            assert!(e.contains("holds a secret in clear"), "{key}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
            let user = format!("[kafka.consumer_properties]\n\"{key}\" = \"hunter2\"\n");
            assert!(
                load(Some(&user), &[]).is_err(),
                "{key} in consumer_properties"
            );
        }
        assert!(!is_secret_property("sasl.username"));
        assert!(!is_secret_property("security.protocol"));
    }

    #[test]
    fn invalid_values_name_the_key() {
        let e = load(
            Some("[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n"),
            &[],
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("kafka.properties.\"sasl.password\""),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let e = load(
            Some("[kafka.producer_properties]\n\"ssl.key.password\" = \"hunter2\"\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("\"ssl.key.password\"") && !e.contains("hunter2"),
            "{e}"
        );
        for weak in ["acks = \"1\"", "\"enable.idempotence\" = \"false\""] {
            let e = load(Some(&format!("[kafka.producer_properties]\n{weak}\n")), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains("durable"), "{e}");
        }
        load(Some("[kafka.properties]\nacks = \"all\"\n"), &[]).expect("acks=all is fine");
        let e = load(
            Some("[kafka]\ntopics = [{ name = \"a\", format = \"okta\", mapping = { time = \"/t\" } }]\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("kafka.topics[0].mapping"), "{e}");
        let e = load(Some("[dead_letter]\ntopic = \"\"\nfile = \"\"\n"), &[]).unwrap_err();
        assert!(e.to_string().starts_with("dead_letter:"), "{e}");
        let e = load(
            Some("[kafka]\ntopics = [{ name = \"a\", format = \"syslog\" }]\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("syslog"), "{e}");
    }

    #[test]
    fn topic_layouts_are_checked_at_load() {
        let s = load(
            Some(concat!(
                "[kafka]\ntopics = [\n",
                "  { name = \"proxy\", format = \"squid\", layout = \"combined\" },\n",
                "  { name = \"mesh\", format = \"envoy_text\", layout = \"[%START_TIME%] %REQ(:METHOD)% %RESPONSE_CODE%\" },\n",
                "  { name = \"any\", layout = \"%ts %>a %rm %ru %{User-Agent}>h\" },\n",
                "  { name = \"plain\", format = \"squid\" },\n",
                "]\n"
            )),
            &[],
        )
        .unwrap();
        assert_eq!(s.kafka.topics[0].layout.as_deref(), Some("combined"));
        let mesh = s.kafka.topics[1].decode_options().unwrap();
        assert_eq!(
            mesh.layout.map(|l| l.family),
            Some(crate::decode::layout::Family::Envoy)
        );
        assert_eq!(s.kafka.topics[2].format, Format::Auto);
        assert!(s.kafka.topics[3].decode_options().unwrap().layout.is_none());

        for (topic, needles) in [
            (
                r#"{ name = "p", format = "squid", layout = "%ts %zz" }"#,
                [
                    "kafka.topics[0].layout",
                    "`%zz` is not a Squid logformat code",
                ],
            ),
            (
                r#"{ name = "a", format = "okta", layout = "squid" }"#,
                ["kafka.topics[0].layout", "not \"okta\""],
            ),
            (
                r#"{ name = "a", format = "squid", layout = "" }"#,
                ["kafka.topics[0].layout", "preset"],
            ),
            (
                r#"{ name = "a", format = "squid", layuot = "squid" }"#,
                ["layuot", "layuot"],
            ),
        ] {
            let e = load(Some(&format!("[kafka]\ntopics = [{topic}]\n")), &[])
                .unwrap_err()
                .to_string();
            assert!(needles.iter().all(|n| e.contains(n)), "{topic}: {e}");
        }
    }

    #[test]
    fn a_dead_letter_payload_bound_outside_1_to_64_mib_is_refused() {
        for bad in ["0", "67108865", "18446744073709551615"] {
            let e = load(None, &[("APPWARDEN__DEAD_LETTER__MAX_PAYLOAD_BYTES", bad)])
                .expect_err(bad)
                .to_string();
            assert!(
                e.starts_with("dead_letter.max_payload_bytes: must be between 1 and 67108864"),
                "{bad}: {e}"
            );
        }
        load(
            None,
            &[("APPWARDEN__DEAD_LETTER__MAX_PAYLOAD_BYTES", "67108864")],
        )
        .expect("64 MiB is allowed");
    }

    #[test]
    fn absurd_durations_are_refused_naming_the_key() {
        // 1e16 s is past what chrono durations hold (i64 milliseconds); 1e13 s of
        // max_future is past the year 262143 chrono dates end at.
        let huge = "10000000000000000";
        for (env, key, value) in [
            (
                "INPUT__MAX_FUTURE_SECS",
                "input.max_future_secs",
                "10000000000000",
            ),
            (
                "DETECT__IDLE_EVICTION_SECS",
                "detect.idle_eviction_secs",
                huge,
            ),
            (
                "DETECT__MAX_SOURCE_SKEW_SECS",
                "detect.max_source_skew_secs",
                huge,
            ),
            (
                "REGISTRY__RELOAD_INTERVAL_SECS",
                "registry.reload_interval_secs",
                huge,
            ),
            (
                "STATE__SNAPSHOT_INTERVAL_SECS",
                "state.snapshot_interval_secs",
                huge,
            ),
            (
                "DELIVER__GROUP_WINDOW_SECS",
                "deliver.group_window_secs",
                huge,
            ),
            ("DELIVER__RETRY_MAX_MS", "deliver.retry_max_ms", huge),
            (
                "DELIVER__DRAIN_ON_SHUTDOWN_SECS",
                "deliver.drain_on_shutdown_secs",
                huge,
            ),
            ("HISTORY__RETENTION_DAYS", "history.retention_days", huge),
        ] {
            let env = format!("APPWARDEN__{env}");
            let e = load(None, &[(env.as_str(), value)])
                .expect_err(key)
                .to_string();
            assert!(e.starts_with(&format!("{key}: must be")), "{key}: {e}");
        }
        let sink = format!(
            "[[deliver.sinks]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"https://x.example\"\n\
             signing_key = {{ env = \"K\" }}\ntimeout_secs = {huge}\n"
        );
        let e = load(Some(&sink), &[]).unwrap_err().to_string();
        assert!(
            e.starts_with("deliver.sinks[0].timeout_secs: must be"),
            "{e}"
        );
    }

    #[test]
    fn rendering_shows_secret_refs_not_values() {
        let user = "[kafka.secret_properties]\n\"sasl.password\" = { env = \"KAFKA_PW\" }\n";
        let s = load(Some(user), &[("KAFKA_PW", "hunter2")]).unwrap();
        let text = s.to_toml();
        assert!(text.contains("KAFKA_PW"), "{text}");
        assert!(!text.contains("hunter2"));
    }
}
