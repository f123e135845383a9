//! Hot reload: re-reads the config file (on SIGHUP, a change of the file, or
//! `POST /api/v1/reload`) and hands what changed in its live part to the supervisor like a
//! PATCH: a field the file did not change keeps whatever the API or a profile set since (a
//! file briefly unreadable, then restored as it was, changes nothing). An invalid file
//! changes nothing; fields that only take effect on restart are named in the log.
//!
//! The file is read on a blocking thread, within [`READ_TIMEOUT`]: the runtime that serves the
//! API never waits on a disk (or on whatever was put where the file was).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use notify::Watcher;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::fleet::{FleetError, FleetHandle, Origin};
use crate::groups::FleetLoad;
use crate::load::LoadPatch;
use crate::metrics::{Metrics, Source};
use crate::sla::Slas;

/// Quiet time after a file-change event before reloading: editors write in several steps.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest a reload may spend reading the file and what it names (credentials, token).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("config field {0}")]
    Fleet(#[from] FleetError),
    #[error("reading the config file took over {} s; nothing changed", READ_TIMEOUT.as_secs())]
    Slow,
}

/// Re-reads one config file; counted in `wsfleet_config_reloads_total{result}`.
pub struct Reloader {
    path: PathBuf,
    /// The config as last applied and its live load, to tell what changed and which changes
    /// need a restart.
    running: Mutex<(Config, FleetLoad)>,
    /// The file's text as last read, so a file event that changed nothing reloads nothing.
    last_text: Mutex<Option<String>>,
    fleet: FleetHandle,
    metrics: Arc<Metrics>,
    /// The one SLA every reader sees; a reload replaces it.
    sla: watch::Sender<Slas>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        running: (Config, FleetLoad),
        fleet: FleetHandle,
        metrics: Arc<Metrics>,
        sla: watch::Sender<Slas>,
    ) -> Self {
        Self {
            sla,
            last_text: Mutex::new(read_text(&path).ok()),
            path,
            running: Mutex::new(running),
            fleet,
            metrics,
        }
    }

    pub async fn reload(&self, who: &str) -> Result<FleetLoad, ReloadError> {
        // What is read now is what the watcher compares its next event with.
        self.file_changed().await;
        let result = self.try_reload(who).await;
        let label = if result.is_ok() { "ok" } else { "rejected" };
        self.metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(load) => tracing::info!(path = %self.path.display(), who, ?load, "config reloaded"),
            Err(err) => {
                tracing::warn!(path = %self.path.display(), who, error = %err, "config reload rejected; load unchanged")
            }
        }
        result
    }

    async fn try_reload(&self, who: &str) -> Result<FleetLoad, ReloadError> {
        let path = self.path.clone();
        let plan = off_the_runtime(move || Config::plan_file(&path)).await??;
        let slas = plan.slas();
        let (next, next_load) = (plan.config, plan.load);
        let last = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone();
        // Groups added, removed or renamed take a restart (restart_only_changes names them).
        let patch = if last.names() == next_load.names() {
            last.patch_to(&next_load)
        } else {
            LoadPatch::between(&last.fleet, &next_load.fleet)
        };
        let load = if patch.is_empty() {
            // Nothing live changed in the file: live changes made since stay, a profile runs on.
            self.fleet.desired().load
        } else {
            let origin = Origin::new(Source::Reload, who);
            self.fleet.update(patch, origin).await?.load
        };
        self.metrics.set_sla_thresholds(&slas);
        self.sla.send_replace(slas);
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let restart_only = running.0.restart_only_changes(&next);
        if !restart_only.is_empty() {
            tracing::warn!(
                fields = %restart_only.join(", "),
                "the reloaded config changes fields that only take effect on restart"
            );
        }
        *running = (next, next_load);
        Ok(load)
    }

    /// Whether the file's text differs from when it was last read (and remembers it).
    async fn file_changed(&self) -> bool {
        let path = self.path.clone();
        let text = off_the_runtime(move || read_text(&path))
            .await
            .ok()
            .and_then(Result::ok);
        let mut last = self.last_text.lock().unwrap_or_else(|e| e.into_inner());
        if *last == text {
            return false;
        }
        *last = text;
        true
    }

    /// Reloads on SIGHUP and whenever the config file changes, until `shutdown`.
    ///
    /// The directory is watched, not the file, and any event in it makes the file be read
    /// again (and reloaded if its text changed): editors replace files rather than write into
    /// them, and Kubernetes updates a mounted ConfigMap by swapping the `..data` symlink the
    /// file points through — an event that never names the file itself.
    pub fn watch(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<JoinHandle<()>> {
        let (events_tx, mut events) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if !event.kind.is_access() {
                    let _ = events_tx.try_send(());
                }
            })
            .context("starting the config file watcher")?;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", dir.display()))?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        Ok(tokio::spawn(async move {
            let _watcher = watcher; // lives as long as this task
            loop {
                let who = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = hangup.recv() => "SIGHUP",
                    Some(()) = events.recv() => {
                        // Let the writer finish; several events in a row make one reload.
                        tokio::time::sleep(RELOAD_DEBOUNCE).await;
                        while events.try_recv().is_ok() {}
                        if !self.file_changed().await {
                            continue;
                        }
                        "file change"
                    }
                };
                let _ = self.reload(who).await;
            }
        }))
    }
}

fn read_text(path: &Path) -> std::io::Result<String> {
    crate::files::read_text(path, crate::files::MAX_CONFIG_BYTES)
}

/// Runs `read` on a blocking thread, giving up on it after [`READ_TIMEOUT`].
async fn off_the_runtime<T: Send + 'static>(
    read: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReloadError> {
    match tokio::time::timeout(READ_TIMEOUT, tokio::task::spawn_blocking(read)).await {
        Ok(Ok(value)) => Ok(value),
        // A reading thread that panicked, or one still stuck: either way nothing was read.
        Ok(Err(_)) | Err(_) => Err(ReloadError::Slow),
    }
}
