//! Secret references: settings name where a secret is, never the secret itself.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Where a secret comes from: exactly one of an environment variable or a file
/// (the file's content, trailing newline removed).
///
/// Deserialized by hand: serde's derived error for a plain string here would
/// be `invalid type: string "…"`, quoting the secret that was written in clear.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct SecretRef {
    /// Name of the environment variable that holds the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Path of a file that holds the secret (e.g. a mounted Kubernetes secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    #[error("cannot read secret file {path}: {message}")]
    File { path: String, message: String },
    #[error("secret is empty")]
    Empty,
}

impl SecretRef {
    pub fn validate(&self) -> Result<(), String> {
        match (&self.env, &self.file) {
            (Some(e), None) if !e.is_empty() => Ok(()),
            (None, Some(f)) if !f.as_os_str().is_empty() => Ok(()),
            _ => Err("set exactly one of env = \"VAR\" or file = \"PATH\"".into()),
        }
    }

    /// Reads the secret. The value is never logged or displayed.
    pub fn resolve(&self) -> Result<String, SecretError> {
        let value = if let Some(var) = &self.env {
            std::env::var(var).map_err(|_| SecretError::EnvUnset(var.clone()))?
        } else if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path).map_err(|e| SecretError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            text.trim_end_matches(['\r', '\n']).to_string()
        } else {
            return Err(SecretError::Empty);
        };
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(value)
    }
}

/// What a config error says when a value stands where a reference belongs.
const IN_CLEAR: &str = "a secret is written in clear where a reference belongs (the value is not shown); \
     write { env = \"VAR\" } or { file = \"PATH\" }";

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecretRefVisitor)
    }
}

struct SecretRefVisitor;

/// Every scalar is refused without being quoted; only a table is read.
impl<'de> Visitor<'de> for SecretRefVisitor {
    type Value = SecretRef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{ env = \"VAR\" } or { file = \"PATH\" }")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretRef, A::Error> {
        let mut secret = SecretRef {
            env: None,
            file: None,
        };
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "env" if secret.env.is_none() => secret.env = Some(map.next_value()?),
                "file" if secret.file.is_none() => secret.file = Some(map.next_value()?),
                "env" | "file" => return Err(de::Error::duplicate_field("env or file")),
                // A key's name is shown; its value is never read.
                other => return Err(de::Error::unknown_field(other, &["env", "file"])),
            }
        }
        Ok(secret)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<SecretRef, E> {
        Err(E::custom(IN_CLEAR))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<SecretRef, E> {
        Err(E::custom(IN_CLEAR))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<SecretRef, E> {
        Err(E::custom(IN_CLEAR))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<SecretRef, E> {
        Err(E::custom(IN_CLEAR))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<SecretRef, E> {
        Err(E::custom(IN_CLEAR))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<SecretRef, E> {
        Err(E::custom(IN_CLEAR))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<SecretRef, E> {
        Err(E::custom(IN_CLEAR))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<SecretRef, E> {
        Err(E::custom(IN_CLEAR))
    }

    fn visit_char<E: de::Error>(self, _: char) -> Result<SecretRef, E> {
        Err(E::custom(IN_CLEAR))
    }
}

/// Shows where the secret is, never what it is.
impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.env, &self.file) {
            (Some(var), _) => write!(f, "SecretRef(env {var})"),
            (None, Some(path)) => write!(f, "SecretRef(file {})", path.display()),
            (None, None) => f.write_str("SecretRef(unset)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_secret_is_trimmed_and_debug_hides_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let r = SecretRef {
            env: None,
            file: Some(path),
        };
        r.validate().unwrap();
        assert_eq!(r.resolve().unwrap(), "s3cret");
        assert!(!format!("{r:?}").contains("s3cret"));
    }

    #[test]
    fn exactly_one_source() {
        let both = SecretRef {
            env: Some("A".into()),
            file: Some("b".into()),
        };
        assert!(both.validate().is_err());
        let unset = SecretRef {
            env: Some("APPWARDEN_TEST_SURELY_UNSET_VAR".into()),
            file: None,
        };
        assert_eq!(
            unset.resolve().unwrap_err(),
            SecretError::EnvUnset("APPWARDEN_TEST_SURELY_UNSET_VAR".into())
        );
    }
}
