//! Identity: the micro-app registry, its hot reload, and resolution of actors to apps.

pub mod registry;
pub mod resolver;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

pub use registry::{App, Registry, RegistryError, RiskTier};
pub use resolver::Resolver;

/// The current registry, shared by the pipeline and the reloader. Readers take
/// a cheap `Arc` snapshot; a reload swaps the whole registry at once.
#[derive(Clone)]
pub struct RegistryHandle {
    current: Arc<RwLock<Arc<Registry>>>,
}

impl RegistryHandle {
    pub fn new(registry: Registry) -> Self {
        RegistryHandle {
            current: Arc::new(RwLock::new(Arc::new(registry))),
        }
    }

    pub fn snapshot(&self) -> Arc<Registry> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, registry: Registry) {
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(registry);
    }
}

/// The file's identity for change detection: modification time and length.
fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reloads the registry when its file changes (checked every `interval`) or on
/// SIGHUP. A file that fails to load keeps the last good registry and is
/// reported once per change.
pub struct RegistryReloader {
    path: PathBuf,
    handle: RegistryHandle,
    stamp: Option<(SystemTime, u64)>,
}

impl RegistryReloader {
    /// Loads the registry for the first time; a broken file here is fatal.
    pub fn start(path: &Path) -> Result<(RegistryReloader, RegistryHandle), RegistryError> {
        let stamp = file_stamp(path);
        let registry = Registry::load(path)?;
        tracing::info!(path = %path.display(), apps = registry.apps().len(), "registry loaded");
        let handle = RegistryHandle::new(registry);
        Ok((
            RegistryReloader {
                path: path.to_path_buf(),
                handle: handle.clone(),
                stamp,
            },
            handle,
        ))
    }

    /// Reloads if the file changed (or `force`); returns whether a new registry is in use.
    pub fn check(&mut self, force: bool) -> bool {
        let stamp = file_stamp(&self.path);
        if !force && stamp == self.stamp {
            return false;
        }
        self.stamp = stamp;
        match Registry::load(&self.path) {
            Ok(registry) => {
                tracing::info!(
                    path = %self.path.display(),
                    apps = registry.apps().len(),
                    "registry reloaded"
                );
                self.handle.replace(registry);
                true
            }
            Err(error) => {
                let kept = self.handle.snapshot().apps().len();
                tracing::warn!(
                    %error,
                    kept_apps = kept,
                    "registry file is broken; keeping the last good registry"
                );
                false
            }
        }
    }

    /// Runs until `shutdown`: polls the file and listens for SIGHUP.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let sighup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let sighup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => { self.check(false); }
                _ = sighup => {
                    tracing::info!("SIGHUP: reloading the registry");
                    self.check(true);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "apps:\n  - {id: a, name: A, owner: o@x, risk_tier: public, registered_on: 2026-01-01}\n";
    const TWO: &str = "apps:\n  - {id: a, name: A, owner: o@x, risk_tier: public, registered_on: 2026-01-01}\n  - {id: b, name: B, owner: o@x, risk_tier: public, registered_on: 2026-01-01}\n";

    #[test]
    fn reload_swaps_good_files_and_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.yaml");
        std::fs::write(&path, GOOD).unwrap();
        let (mut reloader, handle) = RegistryReloader::start(&path).unwrap();
        assert_eq!(handle.snapshot().apps().len(), 1);
        assert!(!reloader.check(false), "unchanged file must not reload");

        std::fs::write(&path, TWO).unwrap();
        assert!(reloader.check(true));
        assert_eq!(handle.snapshot().apps().len(), 2);

        std::fs::write(&path, "apps: [ {id: ").unwrap();
        assert!(!reloader.check(true));
        assert_eq!(
            handle.snapshot().apps().len(),
            2,
            "broken file keeps the last good registry"
        );
    }

    #[test]
    fn broken_file_at_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.yaml");
        std::fs::write(&path, "nonsense: true").unwrap();
        assert!(RegistryReloader::start(&path).is_err());
        assert!(RegistryReloader::start(&dir.path().join("missing.yaml")).is_err());
    }
}
