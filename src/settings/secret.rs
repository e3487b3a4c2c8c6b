//! Secret references: settings name where a secret is, never the secret itself.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a secret comes from: exactly one of an environment variable or a file
/// (the file's content, trailing newline removed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
