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

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::ParquetMetaDataReader;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};

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
                    let parent = target.parent().unwrap_or(root);
                    // Retention on the upkeep thread may remove the partition's
                    // (expired) folder between its creation and the rename.
                    let mut attempts = 0;
                    loop {
                        create_dir_all_durably(root, parent)?;
                        match std::fs::rename(&temp, &target) {
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => {
                                attempts += 1;
                            }
                            result => break result?,
                        }
                    }
                    // The rename is durable once the folder is synced.
                    std::fs::File::open(parent)?.sync_all()?;
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

    fn runtime(rt: Option<&Runtime>) -> Result<&Runtime, HistoryError> {
        rt.ok_or_else(|| HistoryError::Remote("no runtime for object-store calls".into()))
    }

    /// The files directly in `folder` (relative to the root), by name, with their
    /// size and time; none when the folder does not exist.
    pub fn list_files(
        &self,
        folder: &str,
        rt: Option<&Runtime>,
    ) -> Result<Vec<Listed>, HistoryError> {
        match self {
            Store::Local(root) => {
                let dir = root.join(folder);
                let mut files = Vec::new();
                for entry in read_dir_or_none(&dir)? {
                    let entry = entry.map_err(|e| HistoryError::io(&dir, e))?;
                    let meta = entry.metadata().map_err(|e| HistoryError::io(&dir, e))?;
                    if meta.is_file() {
                        files.push(Listed {
                            name: entry.file_name().to_string_lossy().into_owned(),
                            size: meta.len(),
                            modified: meta.modified().ok().map(DateTime::<Utc>::from),
                        });
                    }
                }
                files.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(files)
            }
            Store::Remote { store, prefix, .. } => {
                let base = Self::key(prefix, folder);
                let listed = Self::runtime(rt)?
                    .block_on(store.list_with_delimiter(Some(&base)))
                    .map_err(|e| HistoryError::Remote(format!("{base}: {e}")))?;
                let mut files: Vec<Listed> = listed
                    .objects
                    .into_iter()
                    .filter_map(|meta| {
                        Some(Listed {
                            name: meta.location.filename()?.to_string(),
                            size: meta.size,
                            modified: Some(meta.last_modified),
                        })
                    })
                    .collect();
                files.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(files)
            }
        }
    }

    /// The names of the folders directly in `folder` (hidden ones left out).
    pub fn list_folders(
        &self,
        folder: &str,
        rt: Option<&Runtime>,
    ) -> Result<Vec<String>, HistoryError> {
        let mut names = match self {
            Store::Local(root) => {
                let dir = root.join(folder);
                let mut names = Vec::new();
                for entry in read_dir_or_none(&dir)? {
                    let entry = entry.map_err(|e| HistoryError::io(&dir, e))?;
                    if entry.path().is_dir() {
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
                names
            }
            Store::Remote { store, prefix, .. } => {
                let base = Self::key(prefix, folder);
                let listed = Self::runtime(rt)?
                    .block_on(store.list_with_delimiter(Some(&base)))
                    .map_err(|e| HistoryError::Remote(format!("{base}: {e}")))?;
                listed
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.filename().map(str::to_string))
                    .collect()
            }
        };
        names.retain(|n| !n.starts_with('.'));
        names.sort();
        Ok(names)
    }

    /// The whole content of the file at `relative`.
    pub fn get(&self, relative: &str, rt: Option<&Runtime>) -> Result<Bytes, HistoryError> {
        match self {
            Store::Local(root) => {
                let path = root.join(relative);
                std::fs::read(&path)
                    .map(Bytes::from)
                    .map_err(|e| HistoryError::io(&path, e))
            }
            Store::Remote { store, prefix, .. } => {
                let key = Self::key(prefix, relative);
                Self::runtime(rt)?
                    .block_on(async { store.get(&key).await?.bytes().await })
                    .map_err(|e| HistoryError::Remote(format!("{key}: {e}")))
            }
        }
    }

    /// The Arrow schema of the Parquet file at `relative` (`size` bytes long),
    /// from its footer only.
    pub fn parquet_schema(
        &self,
        relative: &str,
        size: u64,
        rt: Option<&Runtime>,
    ) -> Result<SchemaRef, HistoryError> {
        let encode = |e: ParquetError| HistoryError::Encode(format!("{relative}: {e}"));
        match self {
            Store::Local(root) => {
                let path = root.join(relative);
                let file = std::fs::File::open(&path).map_err(|e| HistoryError::io(&path, e))?;
                Ok(ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(encode)?
                    .schema()
                    .clone())
            }
            Store::Remote { store, prefix, .. } => {
                let key = Self::key(prefix, relative);
                let rt = Self::runtime(rt)?;
                let tail = |n: u64| {
                    rt.block_on(store.get_range(&key, size.saturating_sub(n)..size))
                        .map_err(|e| HistoryError::Remote(format!("{key}: {e}")))
                };
                // A footer of ours takes a few KiB: one read mostly does.
                let mut reader = ParquetMetaDataReader::new();
                match reader.try_parse_sized(&tail(size.min(64 * 1024))?, size) {
                    Ok(()) => {}
                    Err(ParquetError::NeedMoreData(needed)) => reader
                        .try_parse_sized(&tail(needed as u64)?, size)
                        .map_err(encode)?,
                    Err(e) => return Err(encode(e)),
                }
                let metadata = reader.finish().map_err(encode)?;
                Ok(
                    ArrowReaderMetadata::try_new(Arc::new(metadata), ArrowReaderOptions::default())
                        .map_err(encode)?
                        .schema()
                        .clone(),
                )
            }
        }
    }

    /// Hands each record batch of the Parquet file at `relative` to `each`, in
    /// order (a remote file is fetched whole first).
    pub fn read_parquet(
        &self,
        relative: &str,
        rt: Option<&Runtime>,
        mut each: impl FnMut(RecordBatch) -> Result<(), HistoryError>,
    ) -> Result<(), HistoryError> {
        let encode = |e: ParquetError| HistoryError::Encode(format!("{relative}: {e}"));
        let batches = match self {
            Store::Local(root) => {
                let path = root.join(relative);
                let file = std::fs::File::open(&path).map_err(|e| HistoryError::io(&path, e))?;
                ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|b| b.build())
                    .map_err(encode)?
            }
            Store::Remote { .. } => {
                let bytes = self.get(relative, rt)?;
                ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .and_then(|b| b.build())
                    .map_err(encode)?
            }
        };
        for batch in batches {
            each(batch.map_err(|e| HistoryError::Encode(format!("{relative}: {e}")))?)?;
        }
        Ok(())
    }

    /// Writes a whole file at `relative` unless one is there already: `None`
    /// when it is (the call then changes nothing), else what was written, for
    /// [`Store::replace_if_unchanged`].
    pub fn create_new(
        &self,
        relative: &str,
        bytes: Vec<u8>,
        rt: Option<&Runtime>,
    ) -> Result<Option<Version>, HistoryError> {
        match self {
            Store::Local(root) => {
                let target = root.join(relative);
                let create = || -> std::io::Result<Option<Version>> {
                    if let Some(parent) = target.parent() {
                        create_dir_all_durably(root, parent)?;
                    }
                    let mut file = match std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&target)
                    {
                        Ok(file) => file,
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                            return Ok(None);
                        }
                        Err(e) => return Err(e),
                    };
                    file.write_all(&bytes)?;
                    file.sync_all()?;
                    if let Some(parent) = target.parent() {
                        std::fs::File::open(parent)?.sync_all()?;
                    }
                    Ok(Some(Version::Content(bytes.clone())))
                };
                create().map_err(|e| HistoryError::io(&target, e))
            }
            Store::Remote { store, prefix, .. } => {
                let key = Self::key(prefix, relative);
                let options = PutOptions::from(PutMode::Create);
                match Self::runtime(rt)?.block_on(store.put_opts(&key, bytes.into(), options)) {
                    Ok(put) => Ok(Some(Version::Object(UpdateVersion::from(put)))),
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(None),
                    Err(e) => Err(HistoryError::Remote(format!("{key}: {e}"))),
                }
            }
        }
    }

    /// Replaces the file at `relative` with `bytes` if it is still the one
    /// written as `expected` (a conditional PUT on an object store; locally, a
    /// comparison of contents just before the atomic rename): `None` when it
    /// is gone or changed (nothing is written), else the new version.
    pub fn replace_if_unchanged(
        &self,
        relative: &str,
        bytes: Vec<u8>,
        expected: &Version,
        rt: Option<&Runtime>,
    ) -> Result<Option<Version>, HistoryError> {
        match (self, expected) {
            (Store::Local(root), Version::Content(content)) => {
                let path = root.join(relative);
                match std::fs::read(&path) {
                    Ok(now) if now == *content => {}
                    Ok(_) => return Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(HistoryError::io(&path, e)),
                }
                self.put(relative, bytes.clone(), rt)?;
                Ok(Some(Version::Content(bytes)))
            }
            (Store::Remote { store, prefix, .. }, Version::Object(version)) => {
                let key = Self::key(prefix, relative);
                let options = PutOptions::from(PutMode::Update(version.clone()));
                match Self::runtime(rt)?.block_on(store.put_opts(&key, bytes.into(), options)) {
                    Ok(put) => Ok(Some(Version::Object(UpdateVersion::from(put)))),
                    Err(
                        object_store::Error::Precondition { .. }
                        | object_store::Error::NotFound { .. },
                    ) => Ok(None),
                    Err(e) => Err(HistoryError::Remote(format!("{key}: {e}"))),
                }
            }
            _ => Err(HistoryError::Config(
                "a version from another kind of store".into(),
            )),
        }
    }

    /// Deletes the file at `relative`; one that is not there is no error.
    pub fn delete(&self, relative: &str, rt: Option<&Runtime>) -> Result<(), HistoryError> {
        match self {
            Store::Local(root) => {
                let path = root.join(relative);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(HistoryError::io(&path, e)),
                }
                // The unlink is durable once the folder is synced.
                if let Some(parent) = path.parent() {
                    std::fs::File::open(parent)
                        .and_then(|f| f.sync_all())
                        .map_err(|e| HistoryError::io(parent, e))?;
                }
                Ok(())
            }
            Store::Remote { store, prefix, .. } => {
                let key = Self::key(prefix, relative);
                match Self::runtime(rt)?.block_on(store.delete(&key)) {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(HistoryError::Remote(format!("{key}: {e}"))),
                }
            }
        }
    }

    /// Deletes `folder` and everything in it; returns the files removed.
    fn delete_folder(&self, folder: &str, rt: Option<&Runtime>) -> Result<usize, HistoryError> {
        match self {
            Store::Local(root) => {
                let path = root.join(folder);
                let files = count_files(&path);
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => Ok(files),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
                    Err(e) => Err(HistoryError::io(&path, e)),
                }
            }
            Store::Remote { store, prefix, .. } => {
                use futures::TryStreamExt;
                let base = Self::key(prefix, folder);
                let rt = Self::runtime(rt)?;
                let listed: Vec<_> = rt
                    .block_on(store.list(Some(&base)).try_collect())
                    .map_err(|e| HistoryError::Remote(format!("{base}: {e}")))?;
                for meta in &listed {
                    match rt.block_on(store.delete(&meta.location)) {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => {
                            return Err(HistoryError::Remote(format!("{}: {e}", meta.location)));
                        }
                    }
                }
                Ok(listed.len())
            }
        }
    }

    /// Deletes the hour partitions of `table` that end before `cutoff`; returns
    /// the files removed. It walks the folders down from the table and lists
    /// files only inside what it deletes: folder names say each partition's
    /// time, so days wholly inside retention are never opened (on S3 a few
    /// delimiter listings instead of one LIST of every object).
    pub fn expire(
        &self,
        table: &str,
        cutoff: DateTime<Utc>,
        rt: Option<&Runtime>,
    ) -> Result<usize, HistoryError> {
        let mut removed = 0;
        let mut stack = vec![table.to_string()];
        while let Some(folder) = stack.pop() {
            let mut kept = 0;
            for name in self.list_folders(&folder, rt)? {
                let path = format!("{folder}/{name}");
                match folder_span(&path) {
                    Some((_, end)) if end <= cutoff => removed += self.delete_folder(&path, rt)?,
                    // A day the cutoff falls in: look at its hours.
                    Some((start, _)) if start < cutoff && !name.starts_with("hour=") => {
                        stack.push(path);
                        kept += 1;
                    }
                    Some(_) => kept += 1,
                    // Above the day (source=…): look inside.
                    None if !name.starts_with("day=") && !name.starts_with("hour=") => {
                        stack.push(path);
                        kept += 1;
                    }
                    None => kept += 1,
                }
            }
            // Day and source folders left empty go too (local only: an object
            // store has no folders).
            if kept == 0
                && folder != table
                && let Store::Local(root) = self
            {
                let dir = root.join(&folder);
                if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_none()) {
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        Ok(removed)
    }
}

/// What [`Store::create_new`] or [`Store::replace_if_unchanged`] wrote, to
/// tell later whether the file is still that one.
#[derive(Debug, Clone, PartialEq)]
pub enum Version {
    /// A local file's content (small files only: journals).
    Content(Vec<u8>),
    /// An object's e-tag and version.
    Object(UpdateVersion),
}

/// A file of the history, as a listing gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    /// When it was last written, when the store says.
    pub modified: Option<DateTime<Utc>>,
}

/// `read_dir`, with a missing folder read as empty.
fn read_dir_or_none(dir: &Path) -> Result<Vec<std::io::Result<std::fs::DirEntry>>, HistoryError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(HistoryError::io(dir, e)),
    }
}

/// The files under a local folder, at any depth.
pub(crate) fn count_files(dir: &Path) -> usize {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                count += 1;
            }
        }
    }
    count
}

/// A small runtime for object-store calls from the writer thread (none for local folders).
pub type Runtime = tokio::runtime::Runtime;

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

/// The end of the hour partition a path sits in (`…/day=2026-11-22/hour=13/…` → 14:00).
pub fn partition_end(path: &str) -> Option<DateTime<Utc>> {
    match folder_span(path)? {
        (start, end) if end - start == chrono::Duration::hours(1) => Some(end),
        _ => None,
    }
}

/// The span of time a path's hive folders name: an hour with `day=…/hour=…`, a
/// whole day with `day=…` alone; none above the day, or when a value is not a
/// day or an hour.
fn folder_span(path: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let mut day = None;
    let mut hour = None;
    for part in path.split('/') {
        if let Some(d) = part.strip_prefix("day=") {
            day = Some(NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()?);
        } else if let Some(h) = part.strip_prefix("hour=") {
            hour = Some(h.parse::<u32>().ok().filter(|h| *h < 24)?);
        }
    }
    let day = day?;
    match hour {
        Some(hour) => {
            let start = day.and_hms_opt(hour, 0, 0)?.and_utc();
            Some((start, start + chrono::Duration::hours(1)))
        }
        None => {
            let start = day.and_hms_opt(0, 0, 0)?.and_utc();
            Some((start, start + chrono::Duration::days(1)))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// A history root in an in-memory object store, and the runtime its calls need.
    pub(crate) fn memory_store() -> (Store, Runtime) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let store = Store::Remote {
            store: Arc::new(object_store::memory::InMemory::new()),
            url: "memory://bucket".to_string(),
            prefix: "history".to_string(),
        };
        (store, runtime)
    }

    #[test]
    fn an_object_store_expires_by_folder_names() {
        let (store, runtime) = memory_store();
        let rt = Some(&runtime);
        for file in [
            "events/source=okta/day=2026-11-20/hour=10/a.parquet",
            "events/source=okta/day=2026-11-20/hour=23/b.parquet",
            "events/source=okta/day=2026-11-21/hour=00/c.parquet",
            "events/source=okta/day=2026-11-21/hour=01/d.parquet",
            "events/source=kong/day=2026-11-19/hour=01/e.parquet",
            "events/source=kong/day=2026-11-19/hour=01/f.parquet",
            "events/source=kong/day=not-a-day/hour=01/g.parquet",
        ] {
            store.put(file, b"x".to_vec(), rt).expect("put");
        }
        let cutoff = "2026-11-21T01:00:00Z".parse().expect("time");
        assert_eq!(store.expire("events", cutoff, rt).expect("expire"), 5);
        assert_eq!(
            store.list_folders("events/source=okta", rt).expect("list"),
            ["day=2026-11-21"]
        );
        assert_eq!(
            store
                .list_folders("events/source=okta/day=2026-11-21", rt)
                .expect("list"),
            ["hour=01"]
        );
        assert_eq!(
            store.list_folders("events/source=kong", rt).expect("list"),
            ["day=not-a-day"],
            "a folder that names no day is left alone"
        );
        let files = store
            .list_files("events/source=okta/day=2026-11-21/hour=01", rt)
            .expect("list");
        assert_eq!(files.len(), 1);
        assert_eq!((files[0].name.as_str(), files[0].size), ("d.parquet", 1));
        assert!(files[0].modified.is_some());
    }
}
