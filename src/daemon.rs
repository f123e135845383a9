//! Wires config, fleet, API and (for the embedded default) the reference target together, and
//! runs them until shutdown: stop connecting, close every user, then stop serving. Also owns
//! hot reload: SIGHUP, a change of the config file, or `POST /api/v1/reload`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use notify::Watcher;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::fleet::{Fleet, FleetHandle, Origin};
use crate::load::{Load, LoadPatch};
use crate::metrics::{Metrics, Source};
use crate::session::Context;
use crate::shards::Shards;
use crate::target;

/// Quiet time after a file-change event before reloading: editors write in several steps.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);

/// A started daemon. Dropping it does not stop it: call [`Daemon::shutdown`] or cancel the
/// token it was started with.
pub struct Daemon {
    addr: SocketAddr,
    target: Url,
    fleet: FleetHandle,
    metrics: Arc<Metrics>,
    started: Instant,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    /// Starts the fleet and serves the API on `listener`. With no target in the config, it
    /// first starts the reference target in-process on a free loopback port.
    pub async fn start(
        config: Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Daemon> {
        let addr = listener.local_addr().context("reading the API address")?;
        let target_shutdown = CancellationToken::new();
        let (target, embedded) = match config.target.clone() {
            Some(url) => (url, None),
            None => {
                let (url, task) = start_embedded_target(target_shutdown.clone()).await?;
                (url, Some(task))
            }
        };
        let scenario = config
            .compile_scenario()
            .context("compiling the scenario")?;
        let token = config.api_token()?;
        let metrics = Arc::new(Metrics::with_window(config.status_window));
        set_sla_gauges(&metrics, &config);
        let shards =
            Arc::new(Shards::start_for(config.threads).context("starting the user runtimes")?);
        let (saturated, health) = crate::health::spawn(
            config.self_health.clone(),
            Arc::clone(&metrics),
            &shards,
            shutdown.clone(),
        );
        let ctx = Arc::new(Context::new(
            &config,
            target.clone(),
            scenario,
            Arc::clone(&metrics),
            saturated,
            config.tls_roots()?,
        ));
        let (fleet, fleet_task) = Fleet::spawn(
            ctx,
            config.load(),
            config.limits.clone(),
            Arc::clone(&shards),
            shutdown.child_token(),
            config.shutdown_timeout,
        );
        let reloader = config.source.clone().map(|path| {
            Arc::new(Reloader {
                path,
                running: std::sync::Mutex::new(config.clone()),
                fleet: fleet.clone(),
                metrics: Arc::clone(&metrics),
            })
        });
        if let Some(reloader) = &reloader {
            watch_for_reloads(Arc::clone(reloader), shutdown.clone())?;
        }
        let started = Instant::now();
        let state = ApiState {
            fleet: fleet.clone(),
            metrics: Arc::clone(&metrics),
            target: target.clone(),
            started,
            sla: config.sla.clone(),
            health,
            token: token.map(Into::into),
            reload: reloader,
        };
        tracing::info!(%target, users = config.users, "fleet started");
        tracing::info!("control API listening on http://{addr}");
        let api_shutdown = CancellationToken::new();
        let server = axum::serve(
            listener,
            api::router(state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(api_shutdown.clone().cancelled_owned());
        let server = tokio::spawn(async move { server.await });
        let stopping = shutdown.clone();
        let task = tokio::spawn(async move {
            stopping.cancelled().await;
            tracing::info!("shutting down: closing every user");
            fleet_task.await.context("fleet supervisor failed")?;
            drop(shards);
            // Users are closed; only now stop the API (so /metrics shows the end) and the target
            // (so it answered the users' close frames).
            api_shutdown.cancel();
            target_shutdown.cancel();
            server.await.context("API server task failed")??;
            if let Some(embedded) = embedded {
                embedded.await.context("target task failed")??;
            }
            tracing::info!("shutdown complete");
            Ok(())
        });
        Ok(Daemon {
            addr,
            target,
            fleet,
            metrics,
            started,
            shutdown,
            task,
        })
    }

    /// Where the control API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL the fleet connects to.
    pub fn target(&self) -> &Url {
        &self.target
    }

    pub fn fleet(&self) -> &FleetHandle {
        &self.fleet
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Time since the daemon started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until the daemon has shut down (after its token was cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("daemon task failed")?
    }

    /// Cancels the daemon's token and waits for a clean shutdown.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

fn set_sla_gauges(metrics: &Metrics, config: &Config) {
    metrics.sla_threshold.reset();
    for (slo, threshold) in config.sla.thresholds() {
        metrics
            .sla_threshold
            .with_label_values(&[slo])
            .set(threshold);
    }
}

/// Re-reads the config file and applies its live part like a PATCH; an invalid file changes
/// nothing. Counted in `wsfleet_config_reloads_total{result}`.
pub struct Reloader {
    path: PathBuf,
    /// The config as last applied, to tell which changes need a restart.
    running: std::sync::Mutex<Config>,
    fleet: FleetHandle,
    metrics: Arc<Metrics>,
}

impl Reloader {
    pub async fn reload(&self, who: &str) -> Result<Load, String> {
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

    async fn try_reload(&self, who: &str) -> Result<Load, String> {
        let next = Config::from_file(&self.path).map_err(|err| err.to_string())?;
        let load = next.load();
        let patch = LoadPatch {
            users: Some(load.users),
            connect_rate: Some(load.connect_rate),
            message_interval: Some(load.message_interval),
            payload_size: Some(load.payload_size),
            heartbeat_interval: Some(load.heartbeat_interval),
            room_size: Some(load.room_size),
        };
        let updated = self
            .fleet
            .update(patch, Origin::new(Source::Reload, who))
            .await
            .map_err(|err| format!("config field {err}"))?;
        set_sla_gauges(&self.metrics, &next);
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut unchanged = running.clone();
        unchanged.users = next.users;
        unchanged.connect_rate = next.connect_rate;
        unchanged.message_interval = next.message_interval;
        unchanged.payload_size = next.payload_size;
        unchanged.heartbeat.interval = next.heartbeat.interval;
        unchanged.sla = next.sla.clone();
        if unchanged.to_yaml() != next.to_yaml() {
            tracing::warn!(
                "the reloaded config changes fields that only take effect on restart (target, scenario, limits, timeouts, ...)"
            );
        }
        *running = next;
        Ok(updated.load)
    }
}

/// Reloads on SIGHUP and when the config file changes.
fn watch_for_reloads(reloader: Arc<Reloader>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (events_tx, mut events) = tokio::sync::mpsc::channel::<()>(1);
    let file_name = reloader.path.file_name().map(ToOwned::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let ours = event
            .paths
            .iter()
            .any(|p| p.file_name() == file_name.as_deref());
        if ours && (event.kind.is_modify() || event.kind.is_create()) {
            let _ = events_tx.try_send(());
        }
    })
    .context("starting the config file watcher")?;
    // Watch the directory: editors often replace the file rather than write into it.
    let dir = reloader
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        let _watcher = watcher; // lives as long as this task
        loop {
            let who = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hangup.recv() => "SIGHUP",
                Some(()) = events.recv() => {
                    // Let the writer finish; several events in a row make one reload.
                    tokio::time::sleep(RELOAD_DEBOUNCE).await;
                    while events.try_recv().is_ok() {}
                    "file change"
                }
            };
            let _ = reloader.reload(who).await;
        }
    });
    Ok(())
}

async fn start_embedded_target(
    shutdown: CancellationToken,
) -> anyhow::Result<(Url, JoinHandle<std::io::Result<()>>)> {
    let listener = target::bind(([127, 0, 0, 1], 0).into())
        .context("binding the embedded reference target")?;
    let addr = listener.local_addr()?;
    let url = Url::parse(&format!("ws://{addr}/ws")).expect("a socket address makes a valid URL");
    tracing::info!(%url, "no target configured: started the embedded reference target");
    Ok((url, tokio::spawn(target::serve(listener, shutdown))))
}
