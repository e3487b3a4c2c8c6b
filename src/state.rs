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
    /// The cluster and group the offsets belong to; none for a replay's snapshot
    /// (no offsets) and for snapshots written before it was recorded.
    #[serde(default)]
    pub kafka: Option<SnapshotOrigin>,
}

/// Where a daemon's snapshot was taken: its offsets mean nothing in another
/// cluster, and in another group they would rewind partitions that group's
/// members have moved on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotOrigin {
    /// The Kafka cluster id, when the brokers told it.
    pub cluster_id: Option<String>,
    pub group_id: String,
}

impl SnapshotOrigin {
    /// Why a snapshot taken at `self` is not for a daemon at `here`, if it is not.
    /// An unknown cluster id on either side is no evidence of another cluster.
    pub fn differs_from(&self, here: &SnapshotOrigin) -> Option<String> {
        if self.group_id != here.group_id {
            return Some(format!(
                "it was taken for group {:?}, this daemon is in group {:?}",
                self.group_id, here.group_id
            ));
        }
        match (&self.cluster_id, &here.cluster_id) {
            (Some(then), Some(now)) if then != now => Some(format!(
                "it was taken on Kafka cluster {then:?}, the brokers now are cluster {now:?}"
            )),
            _ => None,
        }
    }
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
    fn a_snapshot_of_another_group_or_cluster_is_told_apart() {
        let here = SnapshotOrigin {
            cluster_id: Some("c-1".into()),
            group_id: "appwarden".into(),
        };
        assert_eq!(here.differs_from(&here), None);
        let unknown_cluster = SnapshotOrigin {
            cluster_id: None,
            ..here.clone()
        };
        assert_eq!(unknown_cluster.differs_from(&here), None);
        assert_eq!(here.differs_from(&unknown_cluster), None);
        let other_cluster = SnapshotOrigin {
            cluster_id: Some("c-2".into()),
            ..here.clone()
        };
        assert!(
            other_cluster
                .differs_from(&here)
                .is_some_and(|w| w.contains("c-2"))
        );
        let other_group = SnapshotOrigin {
            group_id: "staging".into(),
            ..here.clone()
        };
        assert!(
            other_group
                .differs_from(&here)
                .is_some_and(|w| w.contains("staging"))
        );
    }

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
        assert_eq!(read(&path).unwrap(), Some(snapshot.clone()));
        // Written before the origin was recorded: read as of no known origin.
        let mut old = serde_json::to_value(&snapshot).unwrap();
        old.as_object_mut().unwrap().remove("kafka");
        std::fs::write(&path, old.to_string()).unwrap();
        assert_eq!(read(&path).unwrap().and_then(|s| s.kafka), None);
        std::fs::write(&path, b"{\"version\": 1, \"offsets\": [").unwrap();
        assert!(matches!(read(&path), Err(StateError::Corrupt { .. })));
    }
}
