//! Where history files live: a local folder, or an S3-compatible bucket through `object_store`.
//!
//! Both give readers whole files only: a local file is written under
//! `.staging/`, synced, then renamed into its partition folder; an object
//! store PUT is atomic by itself. Every folder a local write creates is
//! synced into its parent, so a file renamed into a new partition folder is
//! still there after a power loss; a temporary file a crash left in
//! `.staging/` is removed when the next history writer starts (readers leave
//! `.staging/` alone).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, NaiveDate, Utc};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::HistoryError;

/// The history root.
#[derive(Clone)]
pub enum Store {
    Local(PathBuf),
    /// A bucket and the key prefix of the root (no leading or trailing `/`).
    Remote {
        store: Arc<dyn ObjectStore>,
        url: String,
        prefix: String,
    },
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

/// Settings of an S3-compatible store; credentials come from the standard
/// `AWS_*` environment variables (never from the config file).
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub endpoint: String,
    pub region: String,
    pub allow_http: bool,
}

impl Store {
    /// `s3://bucket/prefix` or a local path (created if missing).
    pub fn open(location: &str, s3: &S3Options) -> Result<Store, HistoryError> {
        let location = location.trim();
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(HistoryError::Config(format!(
                    "`{location}` names no bucket (expected s3://bucket/prefix)"
                )));
            }
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_allow_http(s3.allow_http);
            if !s3.endpoint.is_empty() {
                builder = builder.with_endpoint(&s3.endpoint);
            }
            if !s3.region.is_empty() {
                builder = builder.with_region(&s3.region);
            }
            let store = builder
                .build()
                .map_err(|e| HistoryError::Config(format!("{location}: {e}")))?;
            return Ok(Store::Remote {
                store: Arc::new(store),
                url: format!("s3://{bucket}"),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(HistoryError::Config(format!(
                "`{location}`: only local paths and s3:// URLs are supported"
            )));
        }
        let path = PathBuf::from(location.trim_start_matches("file://"));
        std::fs::create_dir_all(&path).map_err(|e| HistoryError::io(&path, e))?;
        let path = path
            .canonicalize()
            .map_err(|e| HistoryError::io(&path, e))?;
        Ok(Store::Local(path))
    }

    /// Removes what a crashed writer left in a local root's `.staging/` (the
    /// history writer calls it once as it starts, before writing anything).
    pub fn remove_stale_staging(&self) {
        if let Store::Local(root) = self {
            remove_stale_staging(&root.join(".staging"), SystemTime::now());
        }
    }

    /// The URL of a table folder, for DataFusion (`file:///…/events/` or `s3://bucket/prefix/events/`).
    pub fn table_url(&self, table: &str) -> String {
        match self {
            Store::Local(root) => format!("file://{}/{table}/", root.display()),
            Store::Remote { url, prefix, .. } if prefix.is_empty() => format!("{url}/{table}/"),
            Store::Remote { url, prefix, .. } => format!("{url}/{prefix}/{table}/"),
        }
    }

    pub fn url(&self) -> String {
        match self {
            Store::Local(root) => root.display().to_string(),
            Store::Remote { url, prefix, .. } => format!("{url}/{prefix}"),
        }
    }

    /// The object store and its URL, for registering with DataFusion (remote only).
    pub fn object_store(&self) -> Option<(String, Arc<dyn ObjectStore>)> {
        match self {
            Store::Local(_) => None,
            Store::Remote { store, url, .. } => Some((url.clone(), store.clone())),
        }
    }

    fn key(prefix: &str, relative: &str) -> ObjectPath {
        if prefix.is_empty() {
            ObjectPath::from(relative)
        } else {
            ObjectPath::from(format!("{prefix}/{relative}"))
        }
    }

    /// Writes a whole file at `relative` (e.g. `events/source=okta/day=…/hour=13/part-….parquet`).
    pub fn put(
        &self,
        relative: &str,
        bytes: Vec<u8>,
        rt: Option<&Runtime>,
    ) -> Result<(), HistoryError> {
        match self {
            Store::Local(root) => {
                let staging = root.join(".staging");
                std::fs::create_dir_all(&staging).map_err(|e| HistoryError::io(&staging, e))?;
                let name = relative.replace('/', "_");
                let temp = staging.join(format!("{name}.tmp"));
                let target = root.join(relative);
                let write = || -> std::io::Result<()> {
                    let mut file = std::fs::File::create(&temp)?;
                    file.write_all(&bytes)?;
                    file.sync_all()?;
                    if let Some(parent) = target.parent() {
                        create_dir_all_durably(root, parent)?;
                    }
                    std::fs::rename(&temp, &target)?;
                    if let Some(parent) = target.parent() {
                        // The rename is durable once the folder is synced.
                        std::fs::File::open(parent)?.sync_all()?;
                    }
                    Ok(())
                };
                write().map_err(|e| HistoryError::io(&target, e))
            }
            Store::Remote { store, prefix, .. } => {
                let key = Self::key(prefix, relative);
                let rt = rt.ok_or_else(|| {
                    HistoryError::Remote("no runtime for object-store calls".into())
                })?;
                rt.block_on(store.put(&key, bytes.into()))
                    .map(|_| ())
                    .map_err(|e| HistoryError::Remote(format!("{key}: {e}")))
            }
        }
    }

    /// Deletes the hour partitions of `table` that end before `cutoff`; returns files removed.
    pub fn expire(
        &self,
        table: &str,
        cutoff: DateTime<Utc>,
        rt: Option<&Runtime>,
    ) -> Result<usize, HistoryError> {
        match self {
            Store::Local(root) => expire_local(&root.join(table), cutoff),
            Store::Remote { store, prefix, .. } => {
                use futures::TryStreamExt;
                let base = Self::key(prefix, table);
                let rt = rt.ok_or_else(|| {
                    HistoryError::Remote("no runtime for object-store calls".into())
                })?;
                let listed: Vec<_> = rt
                    .block_on(store.list(Some(&base)).try_collect())
                    .map_err(|e| HistoryError::Remote(format!("{base}: {e}")))?;
                let mut removed = 0;
                for meta in listed {
                    if partition_end(meta.location.as_ref()).is_some_and(|end| end <= cutoff) {
                        rt.block_on(store.delete(&meta.location))
                            .map_err(|e| HistoryError::Remote(format!("{}: {e}", meta.location)))?;
                        removed += 1;
                    }
                }
                Ok(removed)
            }
        }
    }
}

/// A small runtime for object-store calls from the writer thread (none for local folders).
pub type Runtime = tokio::runtime::Runtime;

/// The end of the hour partition a path sits in (`…/day=2026-11-22/hour=13/…` → 14:00).
/// A temporary file in `.staging/` older than this was left by a crash: a
/// write renames its file away within seconds.
const STALE_STAGING: Duration = Duration::from_secs(3600);

/// Removes what a crashed writer left in `staging`; failures are only logged.
fn remove_stale_staging(staging: &Path, now: SystemTime) {
    let Ok(entries) = std::fs::read_dir(staging) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| now.duration_since(modified).unwrap_or_default() > STALE_STAGING);
        if stale && path.extension().is_some_and(|e| e == "tmp") {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a temporary history file a crash left")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale temporary history file")
                }
            }
        }
    }
}

/// `create_dir_all`, syncing each folder it creates into its parent, from
/// `root` (which exists) down to `dir`.
fn create_dir_all_durably(root: &Path, dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let relative = dir.strip_prefix(root).unwrap_or(dir);
    let mut at = root.to_path_buf();
    for part in relative.components() {
        let parent = at.clone();
        at.push(part);
        if !at.is_dir() {
            match std::fs::create_dir(&at) {
                Ok(()) => std::fs::File::open(&parent)?.sync_all()?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn partition_end(path: &str) -> Option<DateTime<Utc>> {
    let mut day = None;
    let mut hour = None;
    for part in path.split('/') {
        if let Some(d) = part.strip_prefix("day=") {
            day = NaiveDate::parse_from_str(d, "%Y-%m-%d").ok();
        } else if let Some(h) = part.strip_prefix("hour=") {
            hour = h.parse::<u32>().ok().filter(|h| *h < 24);
        }
    }
    let start = day?.and_hms_opt(hour?, 0, 0)?.and_utc();
    Some(start + chrono::Duration::hours(1))
}

fn expire_local(table: &Path, cutoff: DateTime<Utc>) -> Result<usize, HistoryError> {
    let mut removed = 0;
    let mut stack = vec![table.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(HistoryError::io(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| HistoryError::io(&dir, e))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !path.is_dir() {
                continue;
            }
            if name.starts_with("hour=") {
                let relative = path.to_string_lossy();
                if partition_end(&relative).is_some_and(|end| end <= cutoff) {
                    let files = std::fs::read_dir(&path).map(|d| d.count()).unwrap_or(0);
                    std::fs::remove_dir_all(&path).map_err(|e| HistoryError::io(&path, e))?;
                    removed += files;
                }
            } else {
                stack.push(path);
            }
        }
        // Day and source folders left empty go too.
        if dir != table && std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_none()) {
            let _ = std::fs::remove_dir(&dir);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_end_reads_hive_folders() {
        let end = partition_end("events/source=okta/day=2026-11-22/hour=13/part-1.parquet");
        assert_eq!(
            end.map(|t| t.to_rfc3339()),
            Some("2026-11-22T14:00:00+00:00".to_string())
        );
        assert_eq!(
            partition_end("events/source=okta/day=2026-11-22/hour=24/x"),
            None
        );
        assert_eq!(partition_end("events/source=okta/x"), None);
    }

    #[test]
    fn a_temporary_file_a_crash_left_is_removed_and_a_fresh_one_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let staging = dir.path().join(".staging");
        std::fs::create_dir_all(&staging).expect("staging");
        let left = staging.join("left.parquet.tmp");
        std::fs::write(&left, b"half").expect("write");
        // Ages are measured from the file's own time, not the test's clock.
        let written = std::fs::metadata(&left)
            .and_then(|m| m.modified())
            .expect("mtime");
        remove_stale_staging(&staging, written + STALE_STAGING / 2);
        assert!(left.exists(), "a fresh one may be in use");
        remove_stale_staging(&staging, written + STALE_STAGING * 2);
        assert!(!left.exists(), "a stale one is removed");
        // Opening the root to read it leaves .staging alone.
        std::fs::write(&left, b"half").expect("write");
        Store::open(dir.path().to_str().expect("utf-8"), &S3Options::default()).expect("open");
        assert!(left.exists());
    }

    #[test]
    fn new_partition_folders_are_created_below_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("events/source=okta/day=2026-11-22/hour=12");
        create_dir_all_durably(dir.path(), &deep).expect("create");
        assert!(deep.is_dir());
        create_dir_all_durably(dir.path(), &deep).expect("again");
    }

    #[test]
    fn local_expiry_removes_old_hours_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::open(&dir.path().display().to_string(), &S3Options::default()).expect("store");
        for hour in ["10", "11", "12"] {
            let rel = format!("events/source=okta/day=2026-11-22/hour={hour}/part-1.parquet");
            store.put(&rel, b"x".to_vec(), None).expect("put");
        }
        let cutoff = "2026-11-22T12:00:00Z".parse().expect("time");
        assert_eq!(store.expire("events", cutoff, None).expect("expire"), 2);
        let left = dir.path().join("events/source=okta/day=2026-11-22");
        let names: Vec<_> = std::fs::read_dir(left)
            .expect("day folder stays")
            .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, ["hour=12"]);
        assert!(
            std::fs::read_dir(dir.path().join(".staging"))
                .expect("staging")
                .next()
                .is_none(),
            "no temp file left behind"
        );
    }
}
