//! The fleet supervisor: an actor that owns every user and holds their number at the desired
//! count. Handlers talk to it through a [`FleetHandle`]; nobody else touches the fleet.
//!
//! Ramp-up spawns users at once and lets the shared [`Pacer`](crate::pacer::Pacer) space out
//! their connects; ramp-down closes the newest users at the same rate. Users are numbered
//! densely from 0, so a change of the desired count touches only the users above the new count.
//! It also follows load profiles, and holds still (no connects, no closes) while paused.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::load::{Desired, Limits, Load, LoadError, LoadPatch};
use crate::metrics::Source;
use crate::profile::{ProfileSpec, ProfileStatus, Running};
use crate::session::{Context, User};
use crate::shards::Shards;

/// Shortest pause between two ramp-down steps: closes are batched at high rates.
const RAMP_DOWN_TICK: Duration = Duration::from_millis(10);

/// Who asked for a change: the metric label, and a person-readable "who" for the log.
#[derive(Debug, Clone)]
pub struct Origin {
    pub source: Source,
    pub who: String,
}

impl Origin {
    pub fn new(source: Source, who: impl Into<String>) -> Self {
        Self {
            source,
            who: who.into(),
        }
    }
}

/// The result of a load update.
#[derive(Debug, Clone)]
pub struct Updated {
    pub load: Load,
    /// The profile this update cancelled, if one was running.
    pub profile_cancelled: Option<ProfileStatus>,
}

enum Command {
    Update {
        patch: LoadPatch,
        origin: Origin,
        reply: oneshot::Sender<Result<Updated, LoadError>>,
    },
    Pause {
        paused: bool,
        origin: Origin,
        reply: oneshot::Sender<Desired>,
    },
    StartProfile {
        spec: ProfileSpec,
        origin: Origin,
        reply: oneshot::Sender<Result<ProfileStatus, LoadError>>,
    },
    StopProfile {
        origin: Origin,
        reply: oneshot::Sender<Option<ProfileStatus>>,
    },
    Profile {
        reply: oneshot::Sender<Option<ProfileStatus>>,
    },
}

/// Why a request to the supervisor did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Invalid(#[from] LoadError),
    #[error("the fleet is shutting down")]
    ShuttingDown,
}

/// The way to ask the supervisor for things; cheap to clone.
#[derive(Clone)]
pub struct FleetHandle {
    commands: mpsc::Sender<Command>,
    desired: watch::Receiver<Desired>,
    limits: Limits,
}

impl FleetHandle {
    /// The desired state right now.
    pub fn desired(&self) -> Desired {
        self.desired.borrow().clone()
    }

    /// The caps every change is checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, FleetError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| FleetError::ShuttingDown)?;
        answer.await.map_err(|_| FleetError::ShuttingDown)
    }

    /// Applies a partial update (cancelling a running profile); nothing changes if any field
    /// is invalid or over a cap.
    pub async fn update(&self, patch: LoadPatch, origin: Origin) -> Result<Updated, FleetError> {
        Ok(self
            .ask(|reply| Command::Update {
                patch,
                origin,
                reply,
            })
            .await??)
    }

    pub async fn set_paused(&self, paused: bool, origin: Origin) -> Result<Desired, FleetError> {
        self.ask(|reply| Command::Pause {
            paused,
            origin,
            reply,
        })
        .await
    }

    /// Starts following a profile (replacing any running one).
    pub async fn start_profile(
        &self,
        spec: ProfileSpec,
        origin: Origin,
    ) -> Result<ProfileStatus, FleetError> {
        Ok(self
            .ask(|reply| Command::StartProfile {
                spec,
                origin,
                reply,
            })
            .await??)
    }

    /// Cancels the running profile; returns it, if there was one.
    pub async fn stop_profile(&self, origin: Origin) -> Result<Option<ProfileStatus>, FleetError> {
        self.ask(|reply| Command::StopProfile { origin, reply })
            .await
    }

    /// The running profile, or the last one that ended.
    pub async fn profile(&self) -> Result<Option<ProfileStatus>, FleetError> {
        self.ask(|reply| Command::Profile { reply }).await
    }
}

/// The supervisor's state; runs as one task until shutdown.
pub struct Fleet {
    ctx: Arc<Context>,
    desired: watch::Sender<Desired>,
    limits: Limits,
    shards: Arc<Shards>,
    users: Vec<CancellationToken>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
    /// Users the ramp-down may still close in the current step (fractional at low rates).
    close_allowance: f64,
    last_close: Instant,
    profile: Option<Running>,
    /// The last profile that ended, for the status API.
    last_profile: Option<ProfileStatus>,
}

impl Fleet {
    /// Starts the supervisor; it runs until `shutdown` is cancelled, then closes every user
    /// (waiting at most `shutdown_timeout`) and ends.
    pub fn spawn(
        ctx: Arc<Context>,
        load: Load,
        limits: Limits,
        shards: Arc<Shards>,
        shutdown: CancellationToken,
        shutdown_timeout: Duration,
    ) -> (FleetHandle, tokio::task::JoinHandle<()>) {
        let (desired_tx, desired_rx) = watch::channel(Desired {
            load,
            paused: false,
        });
        let (commands, inbox) = mpsc::channel(64);
        let fleet = Fleet {
            ctx,
            desired: desired_tx,
            limits: limits.clone(),
            shards,
            users: Vec::new(),
            tracker: TaskTracker::new(),
            shutdown,
            shutdown_timeout,
            close_allowance: 0.0,
            last_close: Instant::now(),
            profile: None,
            last_profile: None,
        };
        let task = tokio::spawn(fleet.run(inbox));
        (
            FleetHandle {
                commands,
                desired: desired_rx,
                limits,
            },
            task,
        )
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        self.publish_gauges();
        self.reconcile();
        let mut ramp_down = tokio::time::interval(RAMP_DOWN_TICK);
        ramp_down.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let paused = self.desired.borrow().paused;
            let excess = self.users.len() > self.desired_users();
            let profile_at = self.profile.as_ref().map(Running::next_at);
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                command = inbox.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                _ = ramp_down.tick(), if excess && !paused => self.close_some(),
                _ = sleep_until(profile_at.unwrap_or_else(Instant::now)), if profile_at.is_some() => {
                    self.follow_profile();
                }
            }
        }
        self.stop().await;
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Update {
                patch,
                origin,
                reply,
            } => {
                let result = self.apply(&patch, &origin).map(|load| Updated {
                    load,
                    profile_cancelled: self.end_profile("cancelled", &origin),
                });
                let _ = reply.send(result);
            }
            Command::Pause {
                paused,
                origin,
                reply,
            } => {
                self.set_paused(paused, &origin);
                let _ = reply.send(self.desired.borrow().clone());
            }
            Command::StartProfile {
                spec,
                origin,
                reply,
            } => {
                let _ = reply.send(self.start_profile(spec, &origin));
            }
            Command::StopProfile { origin, reply } => {
                let _ = reply.send(self.end_profile("cancelled", &origin));
            }
            Command::Profile { reply } => {
                let now = Instant::now();
                let status = match &self.profile {
                    Some(running) => Some(running.status("running", now)),
                    None => self.last_profile.clone(),
                };
                let _ = reply.send(status);
            }
        }
    }

    fn desired_users(&self) -> usize {
        self.desired.borrow().load.users as usize
    }

    /// Validates and applies a patch, logging who changed what from what to what.
    fn apply(&mut self, patch: &LoadPatch, origin: &Origin) -> Result<Load, LoadError> {
        let current = self.desired.borrow().clone();
        let next = current.load.apply(patch)?;
        self.limits.check(&next)?;
        if next.connect_rate != current.load.connect_rate {
            self.ctx.pacer.set_rate(next.connect_rate);
        }
        tracing::info!(
            source = origin.source.as_str(),
            who = %origin.who,
            old = ?current.load,
            new = ?next,
            "load changed"
        );
        self.ctx.metrics.load_changes(origin.source).inc();
        self.publish(Desired {
            load: next.clone(),
            ..current
        });
        self.reconcile();
        Ok(next)
    }

    fn set_paused(&mut self, paused: bool, origin: &Origin) {
        let current = self.desired.borrow().clone();
        if current.paused == paused {
            return;
        }
        tracing::info!(source = origin.source.as_str(), who = %origin.who, paused, "pause changed");
        self.ctx.metrics.load_changes(origin.source).inc();
        self.publish(Desired { paused, ..current });
        // A ramp-down resumes from now, without a burst for the time spent paused.
        self.last_close = Instant::now();
    }

    /// Sends the new desired state; users only wake if something they use changed.
    fn publish(&mut self, next: Desired) {
        self.desired.send_if_modified(|desired| {
            let wakes_users = desired.concerns_users(&next);
            *desired = next;
            wakes_users
        });
        self.publish_gauges();
    }

    fn publish_gauges(&self) {
        let desired = self.desired.borrow();
        let metrics = &self.ctx.metrics;
        metrics.users_target.set(i64::from(desired.load.users));
        metrics.paused.set(i64::from(desired.paused));
        metrics.message_rate_target.set(if desired.paused {
            0.0
        } else {
            desired.load.message_rate()
        });
    }

    fn start_profile(
        &mut self,
        spec: ProfileSpec,
        origin: &Origin,
    ) -> Result<ProfileStatus, LoadError> {
        spec.validate()
            .map_err(|(field, problem)| LoadError::new(field, problem))?;
        // Check every stage up front, so a profile cannot fail halfway through.
        let mut load = self.desired.borrow().load.clone();
        let prefix = |i: usize| {
            if spec.ramp.is_some() {
                "ramp.".to_string()
            } else {
                format!("stages[{i}].")
            }
        };
        for (i, patch) in spec.patches().iter().enumerate() {
            load = load.apply(patch).map_err(|e| e.within(&prefix(i)))?;
            self.limits.check(&load).map_err(|e| e.within(&prefix(i)))?;
        }
        self.end_profile("cancelled", origin);
        tracing::info!(source = origin.source.as_str(), who = %origin.who, profile = ?spec, "profile started");
        self.profile = Some(Running::start(spec, Instant::now()));
        self.follow_profile();
        let now = Instant::now();
        Ok(self
            .profile
            .as_ref()
            .map(|p| p.status("running", now))
            .or_else(|| self.last_profile.clone())
            .expect("a profile was just started"))
    }

    /// Applies the profile's step that is due, or ends the profile.
    fn follow_profile(&mut self) {
        let Some(running) = self.profile.as_mut() else {
            return;
        };
        match running.advance(Instant::now()) {
            Some(step) => {
                self.ctx.metrics.profile_stage.set(i64::from(step.stage));
                let origin = Origin::new(Source::Profile, format!("profile stage {}", step.stage));
                if let Err(err) = self.apply(&step.patch, &origin) {
                    // Checked up front; only a changed cap could get here.
                    tracing::error!(%err, "profile step rejected; profile cancelled");
                    self.end_profile("cancelled", &origin);
                }
            }
            None => {
                tracing::info!("profile completed");
                self.end_profile("completed", &Origin::new(Source::Profile, "profile"));
            }
        }
    }

    fn end_profile(&mut self, state: &str, origin: &Origin) -> Option<ProfileStatus> {
        let running = self.profile.take()?;
        let status = running.status(state, Instant::now());
        if state == "cancelled" {
            tracing::info!(source = origin.source.as_str(), who = %origin.who, "profile cancelled");
        }
        self.ctx.metrics.profile_stage.set(0);
        self.last_profile = Some(status.clone());
        Some(status)
    }

    /// Spawns the missing users at once (the pacer spaces their connects, and they wait while
    /// paused); the surplus is closed by the ramp-down ticks.
    fn reconcile(&mut self) {
        let desired = self.desired_users();
        if self.users.len() > desired {
            if self.close_allowance <= 0.0 {
                // A ramp-down starts by closing one user at once, then follows the rate.
                self.close_allowance = 1.0;
                self.last_close = Instant::now();
            }
            return;
        }
        while self.users.len() < desired {
            let cancel = self.shutdown.child_token();
            let user = User::new(
                self.users.len() as u32,
                Arc::clone(&self.ctx),
                self.desired.subscribe(),
                cancel.clone(),
            );
            self.tracker.spawn_on(user.run(), self.shards.next());
            self.users.push(cancel);
        }
    }

    /// One ramp-down step: closes the newest users, at most `connect_rate` per second.
    fn close_some(&mut self) {
        let now = Instant::now();
        let rate = self.desired.borrow().load.connect_rate;
        let elapsed = now.duration_since(self.last_close).min(RAMP_DOWN_TICK * 10);
        self.last_close = now;
        self.close_allowance += rate * elapsed.as_secs_f64();
        let excess = self.users.len() - self.desired_users();
        let closing = (self.close_allowance.floor() as usize).min(excess);
        for cancel in self.users.drain(self.users.len() - closing..) {
            cancel.cancel();
        }
        self.close_allowance -= closing as f64;
        if closing == excess {
            self.close_allowance = 0.0;
        }
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
