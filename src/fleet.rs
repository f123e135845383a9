//! The fleet supervisor: an actor that owns every user and holds their number at the desired
//! count. HTTP handlers talk to it through a [`FleetHandle`]; nobody else touches the fleet.
//!
//! Ramp-up spawns users at once and lets the shared [`Pacer`](crate::pacer::Pacer) space out
//! their connects; ramp-down closes the newest users at the same rate. Users are numbered
//! densely from 0, so a change of the desired count touches only the users above the new count.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::load::{Load, LoadError, LoadPatch};
use crate::session::{Context, User};

/// Shortest pause between two ramp-down steps: closes are batched at high rates.
const RAMP_DOWN_TICK: Duration = Duration::from_millis(10);

enum Command {
    Update {
        patch: LoadPatch,
        reply: oneshot::Sender<Result<Load, LoadError>>,
    },
}

/// Why a load update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Invalid(#[from] LoadError),
    #[error("the fleet is shutting down")]
    ShuttingDown,
}

/// The way to ask the supervisor for things; cheap to clone.
#[derive(Clone)]
pub struct FleetHandle {
    commands: mpsc::Sender<Command>,
    load: watch::Receiver<Load>,
}

impl FleetHandle {
    /// The desired load right now.
    pub fn load(&self) -> Load {
        self.load.borrow().clone()
    }

    /// Applies a partial update; nothing changes if any field is invalid.
    pub async fn update(&self, patch: LoadPatch) -> Result<Load, UpdateError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Update { patch, reply })
            .await
            .map_err(|_| UpdateError::ShuttingDown)?;
        Ok(answer.await.map_err(|_| UpdateError::ShuttingDown)??)
    }
}

/// The supervisor's state; runs as one task until shutdown.
pub struct Fleet {
    ctx: Arc<Context>,
    load: watch::Sender<Load>,
    users: Vec<CancellationToken>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
    /// Users the ramp-down may still close in the current step (fractional at low rates).
    close_allowance: f64,
    last_close: Instant,
}

impl Fleet {
    /// Starts the supervisor; it runs until `shutdown` is cancelled, then closes every user
    /// (waiting at most `shutdown_timeout`) and ends.
    pub fn spawn(
        ctx: Arc<Context>,
        load: Load,
        shutdown: CancellationToken,
        shutdown_timeout: Duration,
    ) -> (FleetHandle, tokio::task::JoinHandle<()>) {
        let (load_tx, load_rx) = watch::channel(load);
        let (commands, inbox) = mpsc::channel(64);
        let fleet = Fleet {
            ctx,
            load: load_tx,
            users: Vec::new(),
            tracker: TaskTracker::new(),
            shutdown,
            shutdown_timeout,
            close_allowance: 0.0,
            last_close: Instant::now(),
        };
        let task = tokio::spawn(fleet.run(inbox));
        (
            FleetHandle {
                commands,
                load: load_rx,
            },
            task,
        )
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        self.reconcile();
        let mut ramp_down = tokio::time::interval(RAMP_DOWN_TICK);
        ramp_down.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let excess = self.users.len() > self.desired();
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                command = inbox.recv() => match command {
                    Some(Command::Update { patch, reply }) => {
                        let _ = reply.send(self.update(&patch));
                    }
                    None => break,
                },
                _ = ramp_down.tick(), if excess => self.close_some(),
            }
        }
        self.stop().await;
    }

    fn desired(&self) -> usize {
        self.load.borrow().users as usize
    }

    fn update(&mut self, patch: &LoadPatch) -> Result<Load, LoadError> {
        let current = self.load.borrow().clone();
        let next = current.apply(patch)?;
        if next.connect_rate != current.connect_rate {
            self.ctx.pacer.set_rate(next.connect_rate);
        }
        tracing::info!(old = ?current, new = ?next, "load changed");
        // Sessions only wake for this if something they use changed.
        self.load.send_if_modified(|load| {
            let wakes_sessions = load.message_interval != next.message_interval;
            *load = next.clone();
            wakes_sessions
        });
        self.reconcile();
        Ok(next)
    }

    /// Spawns the missing users at once (the pacer spaces their connects); the surplus is
    /// closed by the ramp-down ticks.
    fn reconcile(&mut self) {
        let desired = self.desired();
        self.ctx.metrics.users_target.set(desired as i64);
        if self.users.len() > desired {
            // A ramp-down starts by closing one user at once, then follows the rate.
            self.close_allowance = 1.0;
            self.last_close = Instant::now();
            return;
        }
        while self.users.len() < desired {
            let cancel = self.shutdown.child_token();
            let user = User::new(
                self.users.len() as u32,
                Arc::clone(&self.ctx),
                self.load.subscribe(),
                cancel.clone(),
            );
            self.tracker.spawn(user.run());
            self.users.push(cancel);
        }
    }

    /// One ramp-down step: closes the newest users, at most `connect_rate` per second.
    fn close_some(&mut self) {
        let now = Instant::now();
        let rate = self.load.borrow().connect_rate;
        let elapsed = now.duration_since(self.last_close).min(RAMP_DOWN_TICK * 10);
        self.last_close = now;
        self.close_allowance += rate * elapsed.as_secs_f64();
        let excess = self.users.len() - self.desired();
        let closing = (self.close_allowance.floor() as usize).min(excess);
        for cancel in self.users.drain(self.users.len() - closing..) {
            cancel.cancel();
        }
        self.close_allowance -= closing as f64;
    }

    /// Closes every user, waiting at most the shutdown timeout for their close handshakes.
    async fn stop(self) {
        for cancel in &self.users {
            cancel.cancel();
        }
        self.tracker.close();
        let users = self.users.len();
        if tokio::time::timeout(self.shutdown_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                users,
                left = self.tracker.len(),
                "shutdown timeout: some users did not finish closing"
            );
        }
        self.ctx.metrics.users_target.set(0);
    }
}
