//! Wires config, fleet, API and (for the embedded default) the reference target together, and
//! runs them until shutdown: stop connecting, close every user, then stop serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::fleet::{Fleet, FleetHandle};
use crate::metrics::Metrics;
use crate::session::Context;
use crate::target;

/// A started daemon. Dropping it does not stop it: call [`Daemon::shutdown`] or cancel the
/// token it was started with.
pub struct Daemon {
    addr: SocketAddr,
    target: Url,
    fleet: FleetHandle,
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
        let metrics = Arc::new(Metrics::with_window(config.status_window));
        let ctx = Arc::new(Context::new(
            &config,
            target.clone(),
            scenario,
            Arc::clone(&metrics),
        ));
        let (fleet, fleet_task) = Fleet::spawn(
            ctx,
            config.load(),
            shutdown.child_token(),
            config.shutdown_timeout,
        );
        let state = ApiState {
            fleet: fleet.clone(),
            metrics,
            target: target.clone(),
            started: Instant::now(),
        };
        tracing::info!(%target, users = config.users, "fleet started");
        tracing::info!("control API listening on http://{addr}");
        let api_shutdown = CancellationToken::new();
        let server = axum::serve(listener, api::router(state))
            .with_graceful_shutdown(api_shutdown.clone().cancelled_owned());
        let server = tokio::spawn(async move { server.await });
        let stopping = shutdown.clone();
        let task = tokio::spawn(async move {
            stopping.cancelled().await;
            tracing::info!("shutting down: closing every user");
            fleet_task.await.context("fleet supervisor failed")?;
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

async fn start_embedded_target(
    shutdown: CancellationToken,
) -> anyhow::Result<(Url, JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the embedded reference target")?;
    let addr = listener.local_addr()?;
    let url = Url::parse(&format!("ws://{addr}/ws")).expect("a socket address makes a valid URL");
    tracing::info!(%url, "no target configured: started the embedded reference target");
    Ok((url, tokio::spawn(target::serve(listener, shutdown))))
}
