//! Wires config, fleet, API and (for the embedded default) the reference target together, and
//! runs them until shutdown: stop connecting, close every user, then stop serving.
//!
//! Its core tasks — the supervisor, the API server, the health probe, the reloader, the
//! progress reporter — run until shutdown. One that ends before is a fault nobody can steer
//! around (a fleet without its supervisor runs on with nobody in charge): the daemon logs why,
//! stops, and [`Daemon::wait`] fails, so the process exits non-zero and its supervisor
//! (systemd, Kubernetes) restarts it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use tokio::net::TcpListener;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::api::{self, ApiState};
use crate::config::{Config, Plan};
use crate::fleet::{DrainReport, Fleet, FleetHandle};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::runtimes::Runtimes;
use crate::session::{Context, GroupSetup, Shared};
use crate::target;
use crate::telemetry::Telemetry;

/// A started daemon. Dropping it does not stop it: call [`Daemon::shutdown`] (or
/// [`Daemon::finish`] for a verdict), or cancel the token it was started with.
pub struct Daemon {
    addr: SocketAddr,
    target: Url,
    fleet: FleetHandle,
    metrics: Arc<Metrics>,
    history: Arc<crate::history::History>,
    sla: tokio::sync::watch::Receiver<crate::sla::Slas>,
    started: Instant,
    provenance: Arc<crate::provenance::Provenance>,
    drain_timeout: Duration,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// How a run ended, for its verdict.
#[derive(Debug, Clone)]
pub struct Finished {
    /// From start to the beginning of the drain: the time the load ran.
    pub run_time: Duration,
    /// The drain, unless the fleet was already stopping.
    pub drain: Option<DrainReport>,
}

impl Daemon {
    /// [`Daemon::run`] of `config`'s plan.
    pub async fn start(
        config: Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Daemon> {
        Daemon::run(config.plan()?, listener, shutdown).await
    }

    /// Starts the fleet of `plan` and serves the API on `listener`. With no target in the
    /// config, it first starts the reference target in-process on a free loopback port.
    pub async fn run(
        plan: Plan,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Daemon> {
        let slas = plan.slas();
        let Plan {
            config,
            groups,
            load,
            shard,
            api_token: token,
        } = plan;
        let addr = listener.local_addr().context("reading the API address")?;
        let mut core = CoreTasks::default();
        let target_shutdown = CancellationToken::new();
        let target = match config.target.clone() {
            Some(url) => url,
            None => {
                let (url, task) = start_embedded_target(target_shutdown.clone()).await?;
                core.add("embedded target", task);
                url
            }
        };
        let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
        let telemetry = Telemetry::new(config.status_window, &names);
        let metrics = Arc::clone(&telemetry.metrics);
        metrics.set_sla_thresholds(&slas);
        // The one set of SLAs: the gauge, the status, the report, capacity and the verdict
        // read it.
        let (sla_tx, sla) = tokio::sync::watch::channel(slas);
        let runtimes =
            Arc::new(Runtimes::start_for(config.threads).context("starting the user runtimes")?);
        // Per-message measurements are buffered per user thread, flushed by metrics' own tick.
        metrics.buffer_on(&runtimes, &shutdown).await;
        let (saturated, health, health_task) = crate::health::spawn(
            config.self_health.clone(),
            Arc::clone(&metrics),
            &runtimes,
            shutdown.clone(),
        );
        core.add("health probe", health_task);
        let shared = Shared::new(config.connect_rate, shard);
        let of = groups.len();
        let contexts = groups
            .into_iter()
            .enumerate()
            .map(|(index, group)| {
                let setup = GroupSetup {
                    index,
                    of,
                    // A group without a target of its own uses the fleet's (or the embedded one).
                    target: group
                        .config
                        .target
                        .clone()
                        .unwrap_or_else(|| target.clone()),
                    name: group.name,
                    scenario: group.scenario,
                    settings: group.session,
                    tls: group.tls,
                };
                Arc::new(Context::new(setup, shard, &telemetry, &shared))
            })
            .collect();
        let (fleet, fleet_task) = Fleet::spawn(
            contexts,
            load.clone(),
            config.limits.clone(),
            Arc::clone(&runtimes),
            saturated,
            shutdown.child_token(),
            config.shutdown_timeout,
        );
        core.add(FLEET_TASK, fleet_task);
        let reloader = match config.source.clone() {
            Some(path) => {
                let reloader = Arc::new(Reloader::new(
                    path,
                    (config.clone(), load.clone()),
                    fleet.clone(),
                    Arc::clone(&metrics),
                    sla_tx,
                ));
                core.add(
                    "config reloader",
                    Arc::clone(&reloader).watch(shutdown.clone())?,
                );
                Some(reloader)
            }
            None => None,
        };
        core.add(
            "history sampler",
            spawn_history(
                telemetry.clone(),
                fleet.clone(),
                Arc::clone(&health),
                shutdown.clone(),
            ),
        );
        if !config.progress_interval.is_zero() {
            core.add(
                "progress reporter",
                crate::progress::spawn(
                    config.progress_interval,
                    Arc::clone(&metrics),
                    fleet.clone(),
                    shutdown.clone(),
                ),
            );
        }
        let started = Instant::now();
        let provenance = Arc::new(crate::provenance::Provenance::new(
            &config,
            &target,
            std::time::SystemTime::now(),
        ));
        let state = ApiState {
            fleet: fleet.clone(),
            metrics: Arc::clone(&metrics),
            failures: Arc::clone(&telemetry.failures),
            history: Arc::clone(&telemetry.history),
            target: target.clone(),
            started,
            sla: sla.clone(),
            config: Arc::new(crate::report::config_json(&config)),
            provenance: Arc::clone(&provenance),
            searches: Arc::default(),
            health,
            token: token.map(Into::into),
            reload: reloader,
            allowed: api::Allowed {
                hosts: config.api.allowed_hosts.clone(),
                origins: config.api.allowed_origins.clone(),
            },
        };
        tracing::info!(
            target = %crate::failures::redact(target.as_str()),
            users = config.users,
            "fleet started"
        );
        tracing::info!("control API listening on http://{addr}");
        let api_shutdown = CancellationToken::new();
        let server = api::serve(listener, api::router(state), api_shutdown.clone());
        core.add("API server", tokio::spawn(server));
        let stopping = shutdown.clone();
        let final_metrics = Arc::clone(&metrics);
        let task = tokio::spawn(async move {
            let fault = tokio::select! {
                // First: once shutdown is asked for, tasks ending is what is meant to happen.
                biased;
                _ = stopping.cancelled() => None,
                fault = core.first_ended() => Some(fault),
            };
            if let Some(fault) = &fault {
                tracing::error!("{fault:#}; stopping, so that whoever runs wsfleet restarts it");
                stopping.cancel();
            }
            tracing::info!("shutting down: closing every user");
            let fleet_stopped = core.join(FLEET_TASK).await;
            // What the users measured last is still in their threads' buffers. Bounded: a
            // user thread that never yields again must not hold the shutdown forever.
            let flushing = Arc::clone(&final_metrics);
            let flushed = runtimes.on_each(move || flushing.flush_thread());
            if tokio::time::timeout(Duration::from_secs(5), flushed)
                .await
                .is_err()
            {
                tracing::warn!("a user thread did not flush its measurements within 5 s");
            }
            drop(runtimes);
            // Users are closed; only now stop the API (so /metrics shows the end) and the target
            // (so it answered the users' close frames).
            api_shutdown.cancel();
            target_shutdown.cancel();
            let rest = core.join_all().await;
            match fault {
                Some(fault) => Err(fault),
                None => {
                    fleet_stopped.and(rest)?;
                    tracing::info!("shutdown complete");
                    Ok(())
                }
            }
        });
        Ok(Daemon {
            addr,
            target,
            fleet,
            history: Arc::clone(&telemetry.history),
            metrics,
            sla,
            started,
            provenance,
            drain_timeout: config.drain_timeout(),
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

    /// The run's history: what the live page and the report chart.
    pub fn history(&self) -> &Arc<crate::history::History> {
        &self.history
    }

    /// What this run is and what runs it, as of its start (the config it started with).
    pub fn provenance(&self) -> &crate::provenance::Provenance {
        &self.provenance
    }

    /// The SLA in force, as reloads change it.
    pub fn sla(&self) -> tokio::sync::watch::Receiver<crate::sla::Slas> {
        self.sla.clone()
    }

    /// Time since the daemon started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Cancelled when the daemon stops, on request or because a core task failed.
    pub fn stopping(&self) -> CancellationToken {
        self.shutdown.clone()
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

    /// Ends a run so that its books are settled: drains the fleet (no more messages or
    /// connects; what connected users still await arrives or times out, within
    /// `drain_timeout`), then shuts down, which counts whatever is still open. The metrics
    /// are final when this returns.
    pub async fn finish(self) -> anyhow::Result<Finished> {
        let run_time = self.uptime();
        let drain = match self.fleet.drain(self.drain_timeout).await {
            Ok(report) => Some(report),
            Err(err) => {
                tracing::warn!(%err, "no drain before the verdict");
                None
            }
        };
        self.shutdown().await?;
        Ok(Finished { run_time, drain })
    }
}

const FLEET_TASK: &str = "fleet supervisor";

type CoreFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// The daemon's long-lived tasks, by name; each is meant to run until shutdown.
#[derive(Default)]
struct CoreTasks {
    tasks: Vec<(&'static str, CoreFuture)>,
}

/// What a core task's handle can yield: nothing, or a result of its own.
trait Outcome: Send + 'static {
    fn into_result(self) -> anyhow::Result<()>;
}

impl Outcome for () {
    fn into_result(self) -> anyhow::Result<()> {
        Ok(())
    }
}

impl<E: Into<anyhow::Error> + Send + 'static> Outcome for Result<(), E> {
    fn into_result(self) -> anyhow::Result<()> {
        self.map_err(Into::into)
    }
}

impl CoreTasks {
    fn add<T: Outcome>(&mut self, name: &'static str, handle: JoinHandle<T>) {
        let outcome = async move {
            match handle.await {
                Ok(outcome) => outcome.into_result(),
                Err(err) => Err(join_failure(err)),
            }
        };
        self.tasks.push((name, Box::pin(outcome)));
    }

    /// Waits until any task ends and says which and why; never returns if there is none.
    async fn first_ended(&mut self) -> anyhow::Error {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        let (outcome, index, _) =
            futures_util::future::select_all(self.tasks.iter_mut().map(|(_, task)| task)).await;
        let (name, _) = self.tasks.remove(index);
        match outcome {
            Ok(()) => anyhow!("core task `{name}` ended unexpectedly"),
            Err(err) => err.context(format!("core task `{name}` failed")),
        }
    }

    /// Waits for the task `name` to end (if it is still held).
    async fn join(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self.tasks.iter().position(|(n, _)| *n == name);
        match index {
            Some(index) => {
                let (name, task) = self.tasks.remove(index);
                task.await.with_context(|| format!("{name} failed"))
            }
            None => Ok(()),
        }
    }

    /// Waits for every task still held; the first failure is the result.
    async fn join_all(self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for (name, task) in self.tasks {
            let outcome = task.await.with_context(|| format!("{name} failed"));
            result = result.and(outcome);
        }
        result
    }
}

fn join_failure(err: JoinError) -> anyhow::Error {
    if !err.is_panic() {
        return anyhow!("it was cancelled");
    }
    let panic = err.into_panic();
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    anyhow!("it panicked: {message}")
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

/// Samples the run's history once a second (for the live page and the report) until
/// `shutdown`.
fn spawn_history(
    telemetry: Telemetry,
    fleet: FleetHandle,
    health: Arc<std::sync::Mutex<crate::health::Health>>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let health = health.lock().unwrap_or_else(|e| e.into_inner()).clone();
            telemetry
                .history
                .sample(&telemetry.metrics, fleet.local_users(), &health);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_core_task_that_panics_or_ends_is_named_with_its_cause() {
        let mut core = CoreTasks::default();
        core.add("steady", tokio::spawn(std::future::pending::<()>()));
        core.add(
            "fragile",
            tokio::spawn(async {
                let overflowed = tokio::time::Instant::now().checked_add(Duration::MAX);
                overflowed.expect("Instant overflow");
            }),
        );
        let err = format!("{:#}", core.first_ended().await);
        assert!(
            err.contains("`fragile` failed") && err.contains("Instant overflow"),
            "{err}"
        );
        core.add("quitter", tokio::spawn(async {}));
        let err = format!("{:#}", core.first_ended().await);
        assert!(err.contains("`quitter` ended unexpectedly"), "{err}");
        assert_eq!(core.tasks.len(), 1, "the steady one is still held");
    }
}
