//! State snapshots: detector baselines, suppression and issued credentials, saved
//! together with the input offsets they are consistent with.
//!
//! A snapshot is taken only after a batch's outputs are durable and its offsets
//! stored, so the offsets in it are exactly where its state ends. On start the
//! daemon restores the state and commits those offsets for its group before
//! consuming: events after them are processed once more into the restored
//! state (duplicates downstream are possible, as with any at-least-once
//! restart; alert ids are deterministic so receivers can drop them), and no
//! event is counted twice into a baseline.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::detect::engine::EngineState;

pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// The next offset to read for each input partition: (topic, partition, offset).
    pub offsets: Vec<(String, i32, i64)>,
    pub engine: EngineState,
    /// Credentials issued to apps at run time: (token, app id), oldest first.
    pub issued_credentials: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("snapshot {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("snapshot {path} is not readable state: {message}")]
    Corrupt { path: String, message: String },
}

/// Writes a snapshot atomically and durably: a temporary file in the same
/// folder, synced, renamed, then the folder synced.
pub fn write(path: &Path, snapshot: &Snapshot) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    let bytes = serde_json::to_vec(snapshot).map_err(|e| io(std::io::Error::other(e)))?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    // The rename survives a power loss once the folder is synced.
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(folder)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    Ok(())
}

/// Reads a snapshot; `Ok(None)` when there is none yet.
pub fn read(path: &Path) -> Result<Option<Snapshot>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let snapshot: Snapshot = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if snapshot.version != SNAPSHOT_VERSION {
        return Err(StateError::Corrupt {
            path: path.display().to_string(),
            message: format!(
                "version {} (this build reads version {SNAPSHOT_VERSION})",
                snapshot.version
            ),
        });
    }
    Ok(Some(snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/state.json");
        assert!(read(&path).unwrap().is_none());
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            offsets: vec![("t".into(), 0, 42)],
            issued_credentials: vec![("ASIA1".into(), "bot".into())],
            ..Snapshot::default()
        };
        write(&path, &snapshot).unwrap();
        assert_eq!(read(&path).unwrap(), Some(snapshot));
        std::fs::write(&path, b"{\"version\": 1, \"offsets\": [").unwrap();
        assert!(matches!(read(&path), Err(StateError::Corrupt { .. })));
    }
}
