//! The target's fault injection, for rehearsing incidents: delay or stall deliveries, drop or
//! duplicate a fraction of them, refuse new connections. Set over `PATCH /admin/faults`.

use std::sync::Mutex;
use std::time::Duration;

use rand::RngExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The faults in force; cheap to read on every delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Faults {
    /// Added to every room delivery.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// A server that slows down steadily: every delivery waits this much more for each minute
    /// since it was set (a leak, a growing queue) — for drift SLOs.
    #[serde(with = "humantime_serde")]
    pub creep: Duration,
    #[serde(skip)]
    pub creep_since: Option<Instant>,
    /// A slow tail: a share of deliveries waits longer, each apart (the rest overtake it, as
    /// a slow shard or a retry path does) — for distributions with a p99 or a second mode.
    pub tail: Vec<TailBand>,
    /// Fraction of deliveries silently dropped (0..=1).
    pub drop: f64,
    /// Fraction of deliveries sent twice (0..=1).
    pub duplicate: f64,
    /// When set, `drop` and `duplicate` apply only to deliveries in this room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only_room: Option<String>,
    /// New WebSocket upgrades are refused with `refuse_status`.
    pub refuse: bool,
    /// The status of a refused upgrade (400..=599; default 503).
    pub refuse_status: u16,
    /// A `Retry-After` (whole seconds) on refused upgrades.
    #[serde(with = "humantime_serde")]
    pub retry_after: Option<Duration>,
    /// A server that slows down with load: every delivery waits `knee_delay` for each open
    /// connection above `knee` (0 = off).
    pub knee: u64,
    #[serde(with = "humantime_serde")]
    pub knee_delay: Duration,
    /// Until when every outgoing frame (acks, deliveries, pongs) is held back.
    #[serde(skip)]
    pub stall_until: Option<Instant>,
    /// The sync bugs (with `--history`): a sync sends at most this many of the backlog,
    /// the rest never (0 = off) ...
    pub sync_truncate: usize,
    /// ... sends the backlog twice ...
    pub sync_twice: bool,
    /// ... or drops every live delivery to the client for this long after its sync request.
    #[serde(with = "humantime_serde")]
    pub sync_drop_live: Duration,
}

/// One band of the slow tail: `share` of all deliveries wait `delay` more.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailBand {
    pub share: f64,
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
}

/// Most bands a tail may have.
const MAX_TAIL_BANDS: usize = 16;

/// Longest delay, stall or `Retry-After` a fault may ask for: beyond it, a rehearsal is an
/// outage (and before this bound, `{"delay": "500000000000y"}` overflowed the clock, panicking
/// every sender's task).
pub const MAX_FAULT_SPAN: Duration = Duration::from_secs(3600);

/// `PATCH /admin/faults`: every field optional; `stall` holds all output for that long, now.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsPatch {
    #[serde(default, with = "humantime_serde")]
    pub delay: Option<Duration>,
    /// Added delay per minute from now on (`0s` for none).
    #[serde(default, with = "humantime_serde")]
    pub creep: Option<Duration>,
    /// The slow tail's bands (`[]` for none); shares add up to at most 1.
    pub tail: Option<Vec<TailBand>>,
    pub drop: Option<f64>,
    pub duplicate: Option<f64>,
    /// The one room `drop` and `duplicate` apply to; `""` for every room again.
    pub only_room: Option<String>,
    pub refuse: Option<bool>,
    pub refuse_status: Option<u16>,
    #[serde(default, with = "humantime_serde")]
    pub retry_after: Option<Duration>,
    pub knee: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub knee_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub stall: Option<Duration>,
    pub sync_truncate: Option<usize>,
    pub sync_twice: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub sync_drop_live: Option<Duration>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            delay: Duration::ZERO,
            creep: Duration::ZERO,
            creep_since: None,
            tail: Vec::new(),
            drop: 0.0,
            duplicate: 0.0,
            only_room: None,
            refuse: false,
            refuse_status: 503,
            retry_after: None,
            knee: 0,
            knee_delay: Duration::ZERO,
            stall_until: None,
            sync_truncate: 0,
            sync_twice: false,
            sync_drop_live: Duration::ZERO,
        }
    }
}

/// Why a tail cannot be: too many bands, a share outside 0..=1 or shares above 1 in all, a
/// delay beyond [`MAX_FAULT_SPAN`].
fn check_tail(tail: &[TailBand]) -> Result<(), String> {
    if tail.len() > MAX_TAIL_BANDS {
        return Err(format!(
            "`tail` may have at most {MAX_TAIL_BANDS} bands, got {}",
            tail.len()
        ));
    }
    for (i, band) in tail.iter().enumerate() {
        if !(0.0..=1.0).contains(&band.share) {
            return Err(format!(
                "`tail[{i}].share` must be a fraction between 0 and 1, got {}",
                band.share
            ));
        }
        if band.delay > MAX_FAULT_SPAN {
            return Err(format!(
                "`tail[{i}].delay` must be at most {}, got {}",
                humantime::format_duration(MAX_FAULT_SPAN),
                humantime::format_duration(band.delay)
            ));
        }
    }
    let total: f64 = tail.iter().map(|b| b.share).sum();
    if total > 1.0 + 1e-9 {
        return Err(format!(
            "`tail` shares add up to {total}: they may add up to 1 at most"
        ));
    }
    Ok(())
}

/// Shared fault state, and a bell rung when it changes: a connection holding frames back
/// until a stall's end hears that the stall was shortened or lifted.
#[derive(Debug, Default)]
pub struct FaultSwitch(Mutex<Faults>, Notify);

impl FaultSwitch {
    pub fn get(&self) -> Faults {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies a patch, or names the field that is wrong and changes nothing.
    pub fn apply(&self, patch: &FaultsPatch) -> Result<Faults, String> {
        for (name, value) in [
            ("delay", patch.delay),
            ("creep", patch.creep),
            ("knee_delay", patch.knee_delay),
            ("retry_after", patch.retry_after),
            ("stall", patch.stall),
            ("sync_drop_live", patch.sync_drop_live),
        ] {
            if let Some(span) = value
                && span > MAX_FAULT_SPAN
            {
                return Err(format!(
                    "`{name}` must be at most {}, got {}",
                    humantime::format_duration(MAX_FAULT_SPAN),
                    humantime::format_duration(span)
                ));
            }
        }
        for (name, value) in [("drop", patch.drop), ("duplicate", patch.duplicate)] {
            if let Some(v) = value
                && !(0.0..=1.0).contains(&v)
            {
                return Err(format!(
                    "`{name}` must be a fraction between 0 and 1, got {v}"
                ));
            }
        }
        if let Some(tail) = &patch.tail {
            check_tail(tail)?;
        }
        if let Some(status) = patch.refuse_status
            && !(400..=599).contains(&status)
        {
            return Err(format!(
                "`refuse_status` must be an HTTP error status (400-599), got {status}"
            ));
        }
        let mut faults = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(status) = patch.refuse_status {
            faults.refuse_status = status;
        }
        if let Some(knee) = patch.knee {
            faults.knee = knee;
        }
        if let Some(delay) = patch.knee_delay {
            faults.knee_delay = delay.min(Duration::from_secs(1));
        }
        if let Some(wait) = patch.retry_after {
            faults.retry_after = (!wait.is_zero()).then_some(wait);
        }
        if let Some(delay) = patch.delay {
            faults.delay = delay;
        }
        if let Some(tail) = &patch.tail {
            faults.tail = tail.clone();
        }
        if let Some(creep) = patch.creep {
            faults.creep = creep;
            faults.creep_since = (!creep.is_zero()).then(Instant::now);
        }
        if let Some(drop) = patch.drop {
            faults.drop = drop;
        }
        if let Some(duplicate) = patch.duplicate {
            faults.duplicate = duplicate;
        }
        if let Some(room) = &patch.only_room {
            if room.len() > 256 {
                return Err(format!(
                    "`only_room` must be a room name of at most 256 bytes, got {}",
                    room.len()
                ));
            }
            faults.only_room = (!room.is_empty()).then(|| room.clone());
        }
        if let Some(refuse) = patch.refuse {
            faults.refuse = refuse;
        }
        if let Some(truncate) = patch.sync_truncate {
            faults.sync_truncate = truncate;
        }
        if let Some(twice) = patch.sync_twice {
            faults.sync_twice = twice;
        }
        if let Some(window) = patch.sync_drop_live {
            faults.sync_drop_live = window;
        }
        if let Some(stall) = patch.stall {
            faults.stall_until = Some(crate::clock::later(Instant::now(), stall));
        }
        let applied = faults.clone();
        drop(faults);
        self.1.notify_waiters();
        Ok(applied)
    }

    /// Resolves at the next change of the faults (those waiting when it is made).
    pub async fn changed(&self) {
        self.1.notified().await;
    }

    /// How to treat one delivery in `room` with `connections` open: how many copies to send
    /// (0 = dropped) and when.
    pub fn delivery(&self, connections: i64, room: &str) -> (u8, Instant) {
        let faults = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut rng = rand::rng();
        let faulty = faults.only_room.as_deref().is_none_or(|only| only == room);
        let copies = if faulty && faults.drop > 0.0 && rng.random::<f64>() < faults.drop {
            0
        } else if faulty && faults.duplicate > 0.0 && rng.random::<f64>() < faults.duplicate {
            2
        } else {
            1
        };
        let tail = if faults.tail.is_empty() {
            Duration::ZERO
        } else {
            let (draw, mut below) = (rng.random::<f64>(), 0.0);
            faults
                .tail
                .iter()
                .find(|band| {
                    below += band.share;
                    draw < below
                })
                .map_or(Duration::ZERO, |band| band.delay)
        };
        let creep = faults.creep_since.map_or(Duration::ZERO, |since| {
            let minutes = since.elapsed().as_secs_f64() / 60.0;
            Duration::try_from_secs_f64(faults.creep.as_secs_f64() * minutes)
                .unwrap_or(MAX_FAULT_SPAN)
        });
        let above = u64::try_from(connections)
            .unwrap_or(0)
            .saturating_sub(faults.knee);
        let knee_delay = if faults.knee > 0 {
            faults
                .knee_delay
                .saturating_mul(u32::try_from(above).unwrap_or(u32::MAX))
        } else {
            Duration::ZERO
        };
        (
            copies,
            crate::clock::later(
                Instant::now(),
                faults.delay + tail + (knee_delay + creep).min(Duration::from_secs(60)),
            ),
        )
    }

    /// The earliest time a frame due at `at` may leave (later if a stall is on).
    pub fn release_time(&self, at: Instant) -> Instant {
        let faults = self.0.lock().unwrap_or_else(|e| e.into_inner());
        faults.stall_until.map_or(at, |stall| stall.max(at))
    }

    /// The status and `Retry-After` to refuse an upgrade with, while refusing.
    pub fn refusing(&self) -> Option<(u16, Option<Duration>)> {
        let faults = self.0.lock().unwrap_or_else(|e| e.into_inner());
        faults
            .refuse
            .then_some((faults.refuse_status, faults.retry_after))
    }
}
