//! The fleet supervisor: an actor that owns every user and holds their number at the desired
//! count. Handlers talk to it through a [`FleetHandle`]; nobody else touches the fleet.
//!
//! Ramp-up admits new users through the shared [`Pacer`](crate::pacer::Pacer), which spaces
//! out every connect: a user is spawned only once it holds a permit, so a desired count of
//! millions costs nothing until users may connect (reconnects queue in the same pacer).
//! Ramp-down closes the newest connected users at the same rate, and ends the
//! users above the new count that hold no connection at once. Users are numbered densely from
//! 0, so a change of the desired count touches only the users above the new count. It also
//! follows load profiles, holds still (no connects, no closes) while paused, stops adding
//! users while the generator is saturated, and drains the fleet at the end of a run.
//!
//! It is the one owner of the live state: the load, pause, saturation and drain reach users
//! only through the [`Desired`] it publishes to each group. The groups of a fleet share its
//! pacer (one connect rate), its ramp-down allowance and its drain; each has its own users,
//! its own [`Context`] (target, scenario, settings) and its own part of the [`FleetLoad`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::arrivals::ArrivalClock;
use crate::clock;
use crate::groups::{FleetDesired, FleetLoad};
use crate::load::{Desired, Limits, LoadError, LoadPatch};
use crate::metrics::Source;
use crate::profile::{ProfileSpec, ProfileState, ProfileStatus, Running};
use crate::roster::Ticket;
use crate::runtimes::Runtimes;
use crate::session::{Context, User};
use crate::shard::Shard;
use crate::topology::Rooms;

/// Shortest pause between two ramp-down steps: closes are batched at high rates.
const RAMP_DOWN_TICK: Duration = Duration::from_millis(10);
/// Most new users admitted by one grant of the pacer.
const ADMIT_BATCH: usize = 4096;

/// The supervisor's wait for connect permits for new users: how many it got.
type Admission = std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send>>;

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
    pub load: FleetLoad,
    /// The profile this update cancelled, if one was running.
    pub profile_cancelled: Option<ProfileStatus>,
}

enum Command {
    Update {
        /// Boxed: a patch with its network profile is the largest command by far.
        patch: Box<LoadPatch>,
        origin: Origin,
        reply: oneshot::Sender<Result<Updated, LoadError>>,
    },
    Pause {
        paused: bool,
        origin: Origin,
        reply: oneshot::Sender<FleetDesired>,
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
    Drain {
        timeout: Duration,
        reply: oneshot::Sender<Result<DrainReport, FleetError>>,
    },
    Disrupt {
        storm: StormRequest,
        origin: Origin,
        reply: oneshot::Sender<Result<crate::load::Disruption, FleetError>>,
    },
}

/// A sync storm asked for: `share` of the connected users of `group` (every group when
/// `None`) drop at once and are back within `back_within`.
#[derive(Debug, Clone)]
pub struct StormRequest {
    pub share: f64,
    pub back_within: Duration,
    pub group: Option<String>,
}

/// How the drain at the end of a run went.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainReport {
    /// Every connected user had its acks and deliveries, or gave up on them after their
    /// timeouts; false when `drain_timeout` ended the wait first.
    pub settled: bool,
    /// Users whose books were still open when the drain ended.
    pub unsettled: usize,
    pub elapsed: Duration,
    /// Users connected when the drain ended.
    pub active: i64,
    /// Of those, each group's, in the fleet's order.
    pub active_by_group: Vec<i64>,
}

/// Why a request to the supervisor did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Invalid(#[from] LoadError),
    #[error("the fleet is draining for its final verdict; the load can no longer change")]
    Draining,
    #[error("the fleet is shutting down")]
    ShuttingDown,
}

/// The way to ask the supervisor for things; cheap to clone.
#[derive(Clone)]
pub struct FleetHandle {
    commands: mpsc::Sender<Command>,
    desired: watch::Receiver<FleetDesired>,
    limits: Limits,
    shard: Shard,
    /// Each group's rooms, for the blocks its users are dealt out in.
    rooms: Vec<Rooms>,
}

impl FleetHandle {
    /// The desired state right now.
    pub fn desired(&self) -> FleetDesired {
        self.desired.borrow().clone()
    }

    /// The desired state, to watch for changes.
    pub fn subscribe(&self) -> watch::Receiver<FleetDesired> {
        self.desired.clone()
    }

    /// The caps every change is checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// This instance's part of the fleet.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// This instance's share of the desired users, every group's.
    pub fn local_users(&self) -> u32 {
        self.local_users_by_group().iter().sum()
    }

    /// This instance's share of each group's desired users, in the fleet's order.
    pub fn local_users_by_group(&self) -> Vec<u32> {
        let desired = self.desired.borrow();
        desired
            .load
            .loads()
            .iter()
            .zip(&self.rooms)
            .map(|(load, rooms)| {
                rooms
                    .topology(load.room_size)
                    .local_users(&self.shard, load.users)
            })
            .collect()
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
                patch: Box::new(patch),
                origin,
                reply,
            })
            .await??)
    }

    pub async fn set_paused(
        &self,
        paused: bool,
        origin: Origin,
    ) -> Result<FleetDesired, FleetError> {
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

    /// Ends the run's load and settles the books: no more messages or connects; connected
    /// users stay until every ack and delivery they await has arrived or timed out (at most
    /// `timeout`). The fleet stays drained until it shuts down.
    pub async fn drain(&self, timeout: Duration) -> Result<DrainReport, FleetError> {
        self.ask(|reply| Command::Drain { timeout, reply }).await?
    }

    /// Starts a sync storm; the answer says which one (its number) and what it asked.
    pub async fn disrupt(
        &self,
        storm: StormRequest,
        origin: Origin,
    ) -> Result<crate::load::Disruption, FleetError> {
        self.ask(|reply| Command::Disrupt {
            storm,
            origin,
            reply,
        })
        .await?
    }
}

/// One spawned user, as the supervisor holds it: the ticket its task runs under.
type Member = Ticket;

/// One group of users, as the supervisor holds it.
struct Group {
    ctx: Arc<Context>,
    /// What this group's users are told: their part of the fleet's desired state.
    desired: watch::Sender<Desired>,
    users: Vec<Member>,
    /// A group of open arrivals: its users come and go on this clock, up to its desired
    /// count, instead of being held at it.
    arrivals: Option<Visits>,
}

/// The users of an open-arrival group: who is present, whose number is free again.
struct Visits {
    clock: ArrivalClock,
    present: usize,
    /// Numbers of users who left, oldest first: the next arrivals take them.
    vacant: std::collections::VecDeque<u32>,
}

impl Group {
    fn new(ctx: Arc<Context>, desired: Desired) -> Group {
        let arrivals = ctx.settings.arrivals.map(|spec| Visits {
            clock: ArrivalClock::new(spec, ctx.shard.rate(spec.rate), Instant::now()),
            present: 0,
            vacant: std::collections::VecDeque::new(),
        });
        Group {
            ctx,
            desired: watch::Sender::new(desired),
            users: Vec::new(),
            arrivals,
        }
    }

    /// This instance's share of the group's desired users (of an open-arrival group: the
    /// most that may be present at once).
    fn desired_users(&self) -> usize {
        self.ctx.local_users(&self.desired.borrow().load) as usize
    }

    /// Users still to be spawned: below the desired count while users may connect (users of
    /// open arrivals come on their own clock).
    fn unspawned(&self) -> usize {
        if self.desired.borrow().may_connect() && self.arrivals.is_none() {
            self.desired_users().saturating_sub(self.users.len())
        } else {
            0
        }
    }

    /// Held users above the desired count (present users of open arrivals above it leave in
    /// their own time: no one arrives until they have).
    fn has_excess(&self) -> bool {
        self.arrivals.is_none() && self.users.len() > self.desired_users()
    }

    /// Users above the desired count that hold no connection (waiting for a permit, in
    /// backoff, mid-handshake) end now: a ramp-down must not wait for them, nor let them
    /// connect first.
    fn end_unconnected_surplus(&mut self) {
        if self.arrivals.is_some() {
            return;
        }
        let desired = self.desired_users();
        for member in &self.users[desired.min(self.users.len())..] {
            if !member.slot().connected() {
                member.stop();
            }
        }
        while self.users.len() > desired && self.users.last().is_some_and(|m| m.is_stopped()) {
            self.users.pop();
        }
    }
}

/// A drain under way.
struct Drain {
    started: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<DrainReport, FleetError>>,
}

/// The supervisor's state; runs as one task until shutdown.
pub struct Fleet {
    groups: Vec<Group>,
    desired: watch::Sender<FleetDesired>,
    limits: Limits,
    runtimes: Arc<Runtimes>,
    /// Whether the generator is saturated, from the health probe.
    saturated: watch::Receiver<bool>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
    /// Users the ramp-down may still close in the current step (fractional at low rates).
    close_allowance: f64,
    last_close: Instant,
    /// The group the next closed or admitted user comes from, so groups take turns.
    turn: usize,
    profile: Option<Running>,
    /// The last profile that ended, for the status API.
    last_profile: Option<ProfileStatus>,
    drain: Option<Drain>,
    /// Waiting in the pacer for the users still to be spawned, while there are any.
    admission: Option<Admission>,
}

impl Fleet {
    /// Starts the supervisor of the groups whose users share `contexts` (one per group of
    /// `load`, in its order); it runs until `shutdown` is cancelled, then closes every user
    /// (waiting at most `shutdown_timeout`) and ends.
    pub fn spawn(
        contexts: Vec<Arc<Context>>,
        load: FleetLoad,
        limits: Limits,
        runtimes: Arc<Runtimes>,
        saturated: watch::Receiver<bool>,
        shutdown: CancellationToken,
        shutdown_timeout: Duration,
    ) -> (FleetHandle, tokio::task::JoinHandle<()>) {
        let desired = FleetDesired {
            saturated: *saturated.borrow(),
            ..FleetDesired::new(load)
        };
        let groups: Vec<Group> = contexts
            .into_iter()
            .enumerate()
            .map(|(index, ctx)| Group::new(ctx, desired.group(index)))
            .collect();
        let (desired_tx, desired_rx) = watch::channel(desired);
        let (commands, inbox) = mpsc::channel(64);
        let shard = groups[0].ctx.shard;
        let rooms = groups
            .iter()
            .map(|group| group.ctx.scenario.rooms)
            .collect();
        let metrics = &groups[0].ctx.metrics;
        metrics.shard_index.set(i64::from(shard.index));
        metrics.shards.set(i64::from(shard.count));
        let fleet = Fleet {
            groups,
            desired: desired_tx,
            limits: limits.clone(),
            runtimes,
            saturated,
            tracker: TaskTracker::new(),
            shutdown,
            shutdown_timeout,
            close_allowance: 0.0,
            last_close: Instant::now(),
            turn: 0,
            profile: None,
            last_profile: None,
            drain: None,
            admission: None,
        };
        let task = tokio::spawn(fleet.run(inbox));
        (
            FleetHandle {
                commands,
                desired: desired_rx,
                limits,
                shard,
                rooms,
            },
            task,
        )
    }

    /// The context every group shares the pacer, books, metrics and shard of.
    fn ctx(&self) -> &Context {
        &self.groups[0].ctx
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        self.publish_gauges();
        self.reconcile();
        let mut ramp_down = tokio::time::interval(RAMP_DOWN_TICK);
        ramp_down.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut health_open = true;
        let books = Arc::clone(&self.groups[0].ctx.books);
        loop {
            let (paused, draining) = {
                let desired = self.desired.borrow();
                (desired.paused, desired.draining)
            };
            let excess = self.groups.iter().any(Group::has_excess);
            let profile_at = self.profile.as_ref().map(Running::next_at);
            let visits_at = self.next_visit();
            let drain_deadline = self.drain.as_ref().map(|d| d.deadline);
            self.seek_admission();
            let admitting = self.admission.is_some();
            let admission = self.admission.as_mut();
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                granted = async { admission.expect("seeking").await }, if admitting => {
                    self.admission = None;
                    self.spawn_admitted(granted);
                }
                command = inbox.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                _ = ramp_down.tick(), if excess && !paused && !draining => self.close_some(),
                _ = sleep_until(profile_at.unwrap_or_else(Instant::now)), if profile_at.is_some() => {
                    self.follow_profile();
                }
                _ = sleep_until(visits_at.unwrap_or_else(Instant::now)), if visits_at.is_some() => {
                    self.follow_visits();
                }
                changed = self.saturated.changed(), if health_open => match changed {
                    Ok(()) => {
                        let saturated = *self.saturated.borrow_and_update();
                        let current = self.desired.borrow().clone();
                        self.publish(FleetDesired { saturated, ..current });
                    }
                    // The probe is gone; the daemon notices and stops. Nothing to follow here.
                    Err(_) => health_open = false,
                },
                _ = books.settled(), if self.drain.is_some() => self.end_drain(),
                _ = sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() => {
                    self.end_drain();
                }
            }
        }
        self.stop().await;
    }

    fn handle(&mut self, command: Command) {
        let draining = self.desired.borrow().draining;
        match command {
            Command::Update { reply, .. } if draining => {
                let _ = reply.send(Err(LoadError::draining()));
            }
            Command::Update {
                patch,
                origin,
                reply,
            } => {
                let result = self.apply(&patch, &origin).map(|load| Updated {
                    load,
                    profile_cancelled: self.end_profile(ProfileState::Cancelled, &origin),
                });
                let _ = reply.send(result);
            }
            Command::Pause {
                paused,
                origin,
                reply,
            } => {
                if !draining {
                    self.set_paused(paused, &origin);
                }
                let _ = reply.send(self.desired.borrow().clone());
            }
            Command::StartProfile { reply, .. } if draining => {
                let _ = reply.send(Err(LoadError::draining()));
            }
            Command::StartProfile {
                spec,
                origin,
                reply,
            } => {
                let _ = reply.send(self.start_profile(spec, &origin));
            }
            Command::StopProfile { origin, reply } => {
                let _ = reply.send(self.end_profile(ProfileState::Cancelled, &origin));
            }
            Command::Profile { reply } => {
                let now = Instant::now();
                let status = match &self.profile {
                    Some(running) => Some(running.status(ProfileState::Running, now)),
                    None => self.last_profile.clone(),
                };
                let _ = reply.send(status);
            }
            Command::Drain { reply, .. } if draining => {
                let _ = reply.send(Err(FleetError::Draining));
            }
            Command::Drain { timeout, reply } => self.start_drain(timeout, reply),
            Command::Disrupt { reply, .. } if draining => {
                let _ = reply.send(Err(FleetError::Draining));
            }
            Command::Disrupt {
                storm,
                origin,
                reply,
            } => {
                let _ = reply.send(self.disrupt(&storm, &origin).map_err(FleetError::from));
            }
        }
    }

    /// Checks a storm and tells the users of its group(s); nothing changes if it is wrong.
    fn disrupt(
        &mut self,
        storm: &StormRequest,
        origin: &Origin,
    ) -> Result<crate::load::Disruption, LoadError> {
        if !(storm.share > 0.0 && storm.share <= 1.0) {
            return Err(LoadError::new(
                "share",
                format!(
                    "must be a fraction above 0 and at most 1 (or 1%..100%), got {}",
                    storm.share
                ),
            ));
        }
        if storm.back_within > crate::load::MAX_TIMEOUT {
            return Err(LoadError::new(
                "back_within",
                format!(
                    "must be at most {}, got {}",
                    humantime::format_duration(crate::load::MAX_TIMEOUT),
                    humantime::format_duration(storm.back_within)
                ),
            ));
        }
        let names = self.ctx().metrics.groups().to_vec();
        let group = match &storm.group {
            None => None,
            Some(name) => Some(names.iter().position(|n| n == name).ok_or_else(|| {
                LoadError::new(
                    "group",
                    format!("no group `{name}`; groups: {}", names.join(", ")),
                )
            })?),
        };
        let current = self.desired.borrow().clone();
        let epoch = current.disruption.map_or(0, |(d, _)| d.epoch) + 1;
        let disruption = crate::load::Disruption {
            epoch,
            share: storm.share,
            back_within: storm.back_within,
        };
        tracing::info!(
            epoch,
            share = storm.share,
            back_within = %humantime::format_duration(storm.back_within),
            group = storm.group.as_deref().unwrap_or("(all)"),
            by = %origin.who,
            "sync storm: a share of the connected users drop now and come back within the window"
        );
        self.publish(FleetDesired {
            disruption: Some((disruption, group)),
            ..current
        });
        Ok(disruption)
    }

    /// Stops sending and connecting everywhere; connected users settle their books.
    fn start_drain(
        &mut self,
        timeout: Duration,
        reply: oneshot::Sender<Result<DrainReport, FleetError>>,
    ) {
        let origin = Origin::new(Source::Api, "drain");
        self.end_profile(ProfileState::Cancelled, &origin);
        let current = self.desired.borrow().clone();
        self.publish(FleetDesired {
            draining: true,
            ..current
        });
        // Users without a connection have nothing to settle, unless they are away with
        // their books kept: those come back for what they missed.
        for group in &self.groups {
            for (id, member) in (0u32..).zip(&group.users) {
                if !member.slot().connected() && !group.ctx.holds_books(id) {
                    member.stop();
                }
            }
        }
        let now = Instant::now();
        tracing::info!(
            users = self.ctx().metrics.users_active.get(),
            timeout = %humantime::format_duration(timeout),
            "draining: sending and connecting stopped; waiting for outstanding acks and deliveries"
        );
        self.drain = Some(Drain {
            started: now,
            deadline: clock::later(now, timeout),
            reply,
        });
    }

    /// Every spawned user of every group.
    fn members(&self) -> impl Iterator<Item = &Member> {
        self.groups.iter().flat_map(|g| &g.users)
    }

    fn end_drain(&mut self) {
        let Some(drain) = self.drain.take() else {
            return;
        };
        let unsettled = self.ctx().books.unsettled();
        let report = DrainReport {
            settled: unsettled == 0,
            unsettled,
            elapsed: drain.started.elapsed(),
            active: self.ctx().metrics.users_active.get(),
            active_by_group: self
                .ctx()
                .metrics
                .users_active
                .iter()
                .map(|g| g.get())
                .collect(),
        };
        if report.settled {
            tracing::info!(
                seconds = report.elapsed.as_secs_f64(),
                "drain complete: every book settled"
            );
        } else {
            tracing::warn!(
                unsettled,
                "drain_timeout reached: what these users still await counts as timed out or lost"
            );
        }
        let _ = drain.reply.send(Ok(report));
    }

    /// Validates and applies a patch, logging who changed what from what to what.
    fn apply(&mut self, patch: &LoadPatch, origin: &Origin) -> Result<FleetLoad, LoadError> {
        let current = self.desired.borrow().clone();
        let next = current.load.apply(patch)?;
        next.check(&self.limits)?;
        let ctx = self.ctx();
        if next.fleet.connect_rate != current.load.fleet.connect_rate {
            ctx.pacer.set_rate(ctx.shard.rate(next.fleet.connect_rate));
        }
        tracing::info!(
            source = origin.source.as_str(),
            who = %origin.who,
            old = ?current.load,
            new = ?next,
            "load changed"
        );
        ctx.metrics.load_changes(origin.source).inc();
        ctx.history.change(
            origin.source.as_str(),
            &origin.who,
            current.load.describe_change(&next),
        );
        self.publish(FleetDesired {
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
        self.ctx().metrics.load_changes(origin.source).inc();
        self.ctx().history.change(
            origin.source.as_str(),
            &origin.who,
            if paused { "paused" } else { "resumed" }.into(),
        );
        self.publish(FleetDesired { paused, ..current });
        // A ramp-down resumes from now, without a burst for the time spent paused; so do
        // arrivals.
        let now = Instant::now();
        self.last_close = now;
        for visits in self.groups.iter_mut().filter_map(|g| g.arrivals.as_mut()) {
            visits.clock.skip_to(now);
        }
    }

    /// Sends the new desired state; each group's users only wake if something they use
    /// changed.
    fn publish(&mut self, next: FleetDesired) {
        self.desired.send_replace(next);
        self.tell_groups();
        self.publish_gauges();
    }

    /// Gives each group its part of the desired state.
    fn tell_groups(&self) {
        let desired = self.desired.borrow();
        for (index, group) in self.groups.iter().enumerate() {
            let next = desired.group(index);
            let changed = group.desired.send_if_modified(|current| {
                let wakes_users = current.concerns_users(&next);
                *current = next;
                wakes_users
            });
            // Connected users listen on their slots, not on the channel.
            if changed {
                group.users.iter().for_each(|member| member.slot().ring());
            }
        }
    }

    fn publish_gauges(&self) {
        let desired = self.desired.borrow();
        let metrics = &self.ctx().metrics;
        for (index, group) in self.groups.iter().enumerate() {
            let load = group.desired.borrow().load.clone();
            let mut local = group.ctx.local_users(&load);
            // Open arrivals: as many as rate x mean stay are to be there, up to the cap.
            if let Some(arrivals) = group.ctx.settings.arrivals {
                let expected =
                    group.ctx.shard.rate(arrivals.rate) * arrivals.stay.mean.as_secs_f64();
                local = local.min(expected.round().min(f64::from(u32::MAX)) as u32);
            }
            metrics.users_target.of(index).set(i64::from(local));
            let rate = crate::load::Load {
                users: local,
                ..load
            }
            .message_rate()
                * group.ctx.settings.schedule.speaking();
            metrics
                .message_rate_target
                .of(index)
                .set(if desired.paused { 0.0 } else { rate });
        }
        metrics
            .fleet_users_target
            .set(i64::from(desired.load.total_users()));
        metrics.paused.set(i64::from(desired.paused));
    }

    fn start_profile(
        &mut self,
        spec: ProfileSpec,
        origin: &Origin,
    ) -> Result<ProfileStatus, LoadError> {
        spec.validate()?;
        // The same profile from the same start again (a retried fleet-wide call): as it is.
        if spec.start_at.is_some()
            && let Some(running) = &self.profile
            && running.spec() == &spec
        {
            return Ok(running.status(ProfileState::Running, Instant::now()));
        }
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
            load.check(&self.limits).map_err(|e| e.within(&prefix(i)))?;
        }
        self.end_profile(ProfileState::Cancelled, origin);
        tracing::info!(source = origin.source.as_str(), who = %origin.who, profile = ?spec, "profile started");
        self.profile = Some(Running::start(spec, Instant::now()));
        self.follow_profile();
        let now = Instant::now();
        Ok(self
            .profile
            .as_ref()
            .map(|p| p.status(ProfileState::Running, now))
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
                self.ctx().metrics.profile_stage.set(i64::from(step.stage));
                let origin = Origin::new(Source::Profile, format!("profile stage {}", step.stage));
                if let Err(err) = self.apply(&step.patch, &origin) {
                    // Checked up front; only a changed cap could get here.
                    tracing::error!(%err, "profile step rejected; profile cancelled");
                    self.end_profile(ProfileState::Cancelled, &origin);
                }
            }
            None => {
                tracing::info!("profile completed");
                self.end_profile(
                    ProfileState::Completed,
                    &Origin::new(Source::Profile, "profile"),
                );
            }
        }
    }

    fn end_profile(&mut self, state: ProfileState, origin: &Origin) -> Option<ProfileStatus> {
        let running = self.profile.take()?;
        let status = running.status(state, Instant::now());
        if state == ProfileState::Cancelled {
            tracing::info!(source = origin.source.as_str(), who = %origin.who, "profile cancelled");
        }
        self.ctx().metrics.profile_stage.set(0);
        self.last_profile = Some(status.clone());
        Some(status)
    }

    /// When an open-arrival group next has an arrival or a departure due, while users may
    /// come and go (not paused or draining).
    fn next_visit(&self) -> Option<Instant> {
        let desired = self.desired.borrow();
        if desired.paused || desired.draining {
            return None;
        }
        self.groups
            .iter()
            .filter_map(|g| g.arrivals.as_ref().map(|v| v.clock.next_event()))
            .min()
    }

    /// Ends the stays that are over and lets in the users who arrived, up to each group's
    /// desired count; arrivals while the generator may not connect are turned away (counted).
    fn follow_visits(&mut self) {
        let now = Instant::now();
        let may_connect = self.desired.borrow().may_connect();
        for index in 0..self.groups.len() {
            let cap = self.groups[index].desired_users();
            let meter = Arc::clone(&self.groups[index].ctx);
            let meter = meter.meter();
            let group = &mut self.groups[index];
            let Some(visits) = group.arrivals.as_mut() else {
                continue;
            };
            for id in visits.clock.departures_due(now) {
                if let Some(member) = group.users.get(id as usize) {
                    member.stop();
                }
                visits.present = visits.present.saturating_sub(1);
                visits.vacant.push_back(id);
                meter.departures().inc();
            }
            let mut admitted = Vec::new();
            let mut next_new = group.users.len() as u32;
            for _ in 0..visits.clock.arrivals_due(now) {
                if !may_connect || visits.present >= cap {
                    meter.arrivals_turned_away().inc();
                    continue;
                }
                // The oldest vacant number whose last user has finished, else a new one.
                let reusable = visits
                    .vacant
                    .front()
                    .copied()
                    .filter(|&id| !group.users[id as usize].slot().running());
                let id = match reusable {
                    Some(id) => {
                        visits.vacant.pop_front();
                        id
                    }
                    None => {
                        next_new += 1;
                        next_new - 1
                    }
                };
                visits.clock.arrived(id, now);
                visits.present += 1;
                meter.arrivals().inc();
                admitted.push(id);
            }
            for id in admitted {
                let member = self.spawn_user(index, id, false);
                let users = &mut self.groups[index].users;
                match users.get_mut(id as usize) {
                    Some(slot) => *slot = member,
                    None => users.push(member),
                }
            }
        }
    }

    /// Users still to be spawned, in every group.
    fn unspawned(&self) -> usize {
        self.groups.iter().map(Group::unspawned).sum()
    }

    /// Waits in the pacer while users are missing; gives the place up when none are (a
    /// pause, saturation, a drain or a ramp-down took the need away).
    fn seek_admission(&mut self) {
        let wanted = self.unspawned();
        if wanted == 0 {
            self.admission = None;
        } else if self.admission.is_none() {
            let ctx = Arc::clone(&self.groups[0].ctx);
            let batch = wanted.min(ADMIT_BATCH);
            self.admission = Some(Box::pin(
                async move { ctx.pacer.acquire_up_to(batch).await },
            ));
        }
    }

    /// The next group, in turn, for which `wants` holds.
    fn next_turn(&mut self, wants: impl Fn(&Group) -> bool) -> Option<usize> {
        let count = self.groups.len();
        let found = (0..count)
            .map(|step| (self.turn + step) % count)
            .find(|&i| wants(&self.groups[i]))?;
        self.turn = (found + 1) % count;
        Some(found)
    }

    /// Spawns up to `granted` new users, each already holding its first connect permit; the
    /// groups missing users take turns, so they ramp up together.
    fn spawn_admitted(&mut self, granted: usize) {
        for _ in 0..granted {
            let Some(index) = self.next_turn(|g| g.unspawned() > 0) else {
                break;
            };
            let id = self.groups[index].users.len() as u32;
            let user = self.spawn_user(index, id, true);
            self.groups[index].users.push(user);
        }
    }

    /// Brings back users ended while waiting by a ramp-down that was then undone (new users
    /// come through [`Fleet::seek_admission`]); above the desired count, users without a
    /// connection end at once and the connected surplus is closed by the ramp-down ticks.
    fn reconcile(&mut self) {
        if self.desired.borrow().draining {
            return;
        }
        let mut surplus = false;
        for index in 0..self.groups.len() {
            // Users of open arrivals who left are gone for good.
            if self.groups[index].arrivals.is_some() {
                continue;
            }
            let desired = self.groups[index].desired_users();
            // Users ended while waiting by a ramp-down that was then undone come back.
            for id in 0..self.groups[index].users.len().min(desired) {
                if self.groups[index].users[id].is_stopped() {
                    self.groups[index].users[id] = self.spawn_user(index, id as u32, false);
                }
            }
            if self.groups[index].has_excess() {
                self.groups[index].end_unconnected_surplus();
                surplus = true;
            }
        }
        if surplus && self.close_allowance <= 0.0 {
            // A ramp-down starts by closing one user at once, then follows the rate.
            self.close_allowance = 1.0;
            self.last_close = Instant::now();
        }
    }

    /// Spawns user `id` of group `group`; `admitted`: it holds a connect permit for its
    /// first attempt.
    fn spawn_user(&self, group: usize, id: u32, admitted: bool) -> Member {
        let group = &self.groups[group];
        let mut user = User::new(id, Arc::clone(&group.ctx), group.desired.subscribe());
        user.admitted = admitted;
        let member = user.ticket.clone();
        member.slot().set_running(true);
        self.tracker.spawn_on(user.run(), self.runtimes.next());
        member
    }

    /// One ramp-down step: closes the newest connected users, at most `connect_rate` per
    /// second over every group (which take turns); the unconnected ones go for free.
    fn close_some(&mut self) {
        let now = Instant::now();
        let ctx = self.ctx();
        let rate = ctx
            .shard
            .rate(self.desired.borrow().load.fleet.connect_rate);
        let elapsed = now.duration_since(self.last_close).min(RAMP_DOWN_TICK * 10);
        self.last_close = now;
        self.close_allowance += rate * elapsed.as_secs_f64();
        self.groups
            .iter_mut()
            .for_each(Group::end_unconnected_surplus);
        while self.close_allowance >= 1.0 {
            let Some(index) = self.next_turn(Group::has_excess) else {
                break;
            };
            let group = &mut self.groups[index];
            if let Some(member) = group.users.pop() {
                member.stop();
                self.close_allowance -= 1.0;
            }
            group.end_unconnected_surplus();
        }
        if !self.groups.iter().any(Group::has_excess) {
            self.close_allowance = 0.0;
        }
    }

    /// Closes every user, waiting at most the shutdown timeout for their close handshakes.
    async fn stop(self) {
        for member in self.members() {
            member.stop();
        }
        self.tracker.close();
        let users = self.members().count();
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
        self.ctx()
            .metrics
            .users_target
            .iter()
            .for_each(|g| g.set(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A supervisor holding `connected.len()` members (no tasks: their state is set by hand).
    fn fleet(connect_rate: f64, connected: &[bool]) -> Fleet {
        let ctx = crate::session::test_context(connect_rate);
        let load = FleetLoad::single(crate::load::Load {
            users: connected.len() as u32,
            connect_rate,
            ..Config::embedded_default().load()
        });
        let desired = FleetDesired::new(load);
        let (_, saturated) = watch::channel(false);
        let users = connected
            .iter()
            .enumerate()
            .map(|(id, &connected)| {
                let slot = ctx.roster.slot(id as u32);
                slot.set_connected(connected);
                slot.ticket()
            })
            .collect();
        Fleet {
            groups: vec![Group {
                users,
                ..Group::new(ctx, desired.group(0))
            }],
            desired: watch::Sender::new(desired),
            limits: Limits::default(),
            runtimes: Arc::new(Runtimes::start(1).expect("a runtime")),
            saturated,
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            shutdown_timeout: Duration::from_secs(1),
            close_allowance: 0.0,
            last_close: Instant::now(),
            turn: 0,
            profile: None,
            last_profile: None,
            drain: None,
            admission: None,
        }
    }

    fn cancelled(fleet: &Fleet, ids: std::ops::Range<usize>) -> Vec<bool> {
        ids.map(|id| fleet.groups[0].users.get(id).is_none_or(|m| m.is_stopped()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_ramp_down_ends_waiting_users_at_once_and_closes_connected_ones_at_the_rate() {
        //                 0     1     2     3     4     5      6      7     8      9
        let connected = [
            true, true, true, true, true, false, false, true, false, false,
        ];
        let mut fleet = fleet(1.0, &connected);
        let origin = Origin::new(Source::Api, "test");
        fleet
            .apply(
                &LoadPatch {
                    users: Some(3),
                    ..LoadPatch::default()
                },
                &origin,
            )
            .expect("valid");
        // Not connected (waiting for a permit, in backoff): gone at once, whatever the rate.
        assert_eq!(
            fleet.groups[0].users.len(),
            8,
            "9 and 8 are gone; 7 is connected"
        );
        assert!(cancelled(&fleet, 5..7).iter().all(|&c| c), "5 and 6 too");
        assert_eq!(cancelled(&fleet, 0..5), [false; 5]);
        assert!(!fleet.groups[0].users[7].is_stopped());
        // Connected: the newest first, one per second at connect_rate 1.
        fleet.close_some();
        assert_eq!(
            fleet.groups[0].users.len(),
            5,
            "7 closed; 6 and 5 were already ended"
        );
        let mut lengths = Vec::new();
        for _ in 0..300 {
            tokio::time::advance(RAMP_DOWN_TICK).await;
            fleet.close_some();
            lengths.push(fleet.groups[0].users.len());
        }
        // Ticks 1..=99 hold 5; the 100th (1 s) closes 4, the 200th closes 3; then it stays.
        assert_eq!(lengths[98], 5);
        assert_eq!(lengths[99], 4);
        assert_eq!(lengths[198], 4);
        assert_eq!(lengths[199], 3);
        assert_eq!(lengths[299], 3, "never below the desired count");
    }

    #[tokio::test(start_paused = true)]
    async fn an_undone_ramp_down_brings_ended_users_back() {
        let mut fleet = fleet(1.0, &[true, false, true, true]);
        let origin = Origin::new(Source::Api, "test");
        let users = |n| LoadPatch {
            users: Some(n),
            ..LoadPatch::default()
        };
        fleet.apply(&users(0), &origin).expect("valid");
        assert!(fleet.groups[0].users[1].is_stopped());
        fleet.apply(&users(4), &origin).expect("valid");
        assert_eq!(cancelled(&fleet, 0..4), [false; 4]);
        fleet.tracker.close();
        for member in &fleet.groups[0].users {
            member.stop();
        }
    }
}
