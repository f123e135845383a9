//! Load profiles: a list of stages (the classic stepped soak) or a linear ramp of users,
//! followed by the supervisor over time. A profile is only a schedule of load patches.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::clock;
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::load::{LoadError, LoadPatch, MAX_SPAN, check_duration};

/// How far from now a profile's `start_at` may be.
pub const MAX_START_OFFSET: Duration = Duration::from_secs(24 * 3600);
/// Most stages one profile may have.
pub const MAX_STAGES: usize = 1000;
/// How often a ramp updates the user count.
const RAMP_STEP: Duration = Duration::from_secs(1);

/// `PUT /api/v1/profile`: either `stages` or `ramp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Stage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<Ramp>,
    /// When the profile starts, wall clock (RFC 3339), within a day of now; default: at once.
    /// Instances given the same `start_at` run the same stage at the same time, whenever each
    /// got the request; the same profile with the same `start_at` again changes nothing.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "2026-11-23T14:00:00Z")]
    pub start_at: Option<SystemTime>,
}

/// One stage: the load to apply (any field of `PATCH /api/v1/load`) and how long to hold it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "RawStage")]
pub struct Stage {
    /// How long the stage lasts: 1ms..30 days.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "15m")]
    pub duration: Duration,
    /// The load of this stage; fields not given keep their value.
    #[serde(flatten)]
    pub load: LoadPatch,
}

/// A stage as written: serde cannot refuse unknown fields through `flatten`, so the load
/// part is collected and read as a [`LoadPatch`], which does.
#[derive(Deserialize)]
struct RawStage {
    #[serde(with = "humantime_serde")]
    duration: Duration,
    #[serde(flatten)]
    load: serde_json::Map<String, serde_json::Value>,
}

impl TryFrom<RawStage> for Stage {
    type Error = String;

    fn try_from(raw: RawStage) -> Result<Self, Self::Error> {
        let load = LoadPatch::deserialize(serde_json::Value::Object(raw.load))
            .map_err(|err| err.to_string())?;
        Ok(Stage {
            duration: raw.duration,
            load,
        })
    }
}

/// Users going linearly from `from` to `to` over `over`, updated every second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ramp {
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub from: u32,
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub to: u32,
    /// 1ms..30 days.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "10m")]
    pub over: Duration,
}

impl ProfileSpec {
    /// Checks the shape and the durations; the load values are checked, up front, by the
    /// supervisor against the current load and caps.
    pub fn validate(&self) -> Result<(), LoadError> {
        let err = |field: &str, problem: &str| Err(LoadError::new(field, problem));
        match (&self.ramp, self.stages.is_empty()) {
            (Some(_), false) => return err("stages", "give either `stages` or `ramp`, not both"),
            (None, true) => {
                return err(
                    "stages",
                    "a profile needs `stages` (a non-empty list) or `ramp`",
                );
            }
            _ => {}
        }
        if self.stages.len() > MAX_STAGES {
            return err("stages", &format!("at most {MAX_STAGES} stages"));
        }
        let span = |field: &str, value| {
            check_duration(field, value, Duration::from_millis(1), MAX_SPAN, None)
        };
        for (i, stage) in self.stages.iter().enumerate() {
            span(&format!("stages[{i}].duration"), stage.duration)?;
        }
        if let Some(ramp) = &self.ramp {
            span("ramp.over", ramp.over)?;
        }
        if let Some(start_at) = self.start_at {
            let now = SystemTime::now();
            let off = start_at
                .duration_since(now)
                .unwrap_or_else(|past| past.duration());
            if off > MAX_START_OFFSET {
                return err(
                    "start_at",
                    &format!(
                        "must be within a day of now ({}), got {}",
                        humantime::format_rfc3339_seconds(now),
                        humantime::format_rfc3339_seconds(start_at)
                    ),
                );
            }
        }
        Ok(())
    }

    /// Every patch the profile may apply, for checking up front.
    pub fn patches(&self) -> Vec<LoadPatch> {
        match &self.ramp {
            Some(ramp) => [ramp.from, ramp.to]
                .map(|users| LoadPatch {
                    users: Some(users),
                    ..LoadPatch::default()
                })
                .to_vec(),
            None => self.stages.iter().map(|s| s.load.clone()).collect(),
        }
    }

    fn stage_count(&self) -> usize {
        if self.ramp.is_some() {
            1
        } else {
            self.stages.len()
        }
    }

    fn total(&self) -> Duration {
        match &self.ramp {
            Some(ramp) => ramp.over,
            None => self.stages.iter().map(|s| s.duration).sum(),
        }
    }
}

/// Whether a profile is being followed, ran to its end, or was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProfileState {
    Running,
    Completed,
    Cancelled,
}

/// Where a profile stands, as the status API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProfileStatus {
    pub state: ProfileState,
    /// Current stage, from 1 (a ramp has one stage); 0 once no longer running.
    pub stage: u32,
    pub stages: u32,
    pub elapsed_seconds: f64,
    pub total_seconds: f64,
    /// When the profile started (or starts), wall clock, RFC 3339.
    pub start_at: String,
    pub spec: ProfileSpec,
}

/// A profile being followed.
#[derive(Debug)]
pub struct Running {
    spec: ProfileSpec,
    started: Instant,
    /// `started` on the wall clock, for the status (and instances that join in step).
    started_at: SystemTime,
    /// Index of the stage in force; `None` before the first is applied.
    stage: Option<usize>,
    next_at: Instant,
    /// A ramp has applied its final value.
    done: bool,
}

/// What the supervisor should do now.
pub struct Step {
    pub patch: LoadPatch,
    /// 1-based stage number now in force.
    pub stage: u32,
}

impl Running {
    /// Starts following `spec` from its `start_at` (which may be a little in the past or the
    /// future), or from `now`.
    pub fn start(spec: ProfileSpec, now: Instant) -> Running {
        let wall_now = SystemTime::now();
        let (started, started_at) = match spec.start_at {
            Some(at) => match at.duration_since(wall_now) {
                Ok(ahead) => (clock::later(now, ahead), at),
                Err(behind) => (now.checked_sub(behind.duration()).unwrap_or(now), at),
            },
            None => (now, wall_now),
        };
        Running {
            spec,
            started,
            started_at,
            stage: None,
            next_at: started,
            done: false,
        }
    }

    /// The spec being followed.
    pub fn spec(&self) -> &ProfileSpec {
        &self.spec
    }

    /// When [`Running::advance`] must be called next.
    pub fn next_at(&self) -> Instant {
        self.next_at
    }

    /// The patch due at `now`; `None` means the profile has ended.
    pub fn advance(&mut self, now: Instant) -> Option<Step> {
        if let Some(ramp) = &self.spec.ramp {
            if self.done {
                return None;
            }
            let end = clock::later(self.started, ramp.over);
            let elapsed = now.saturating_duration_since(self.started);
            let fraction = (elapsed.as_secs_f64() / ramp.over.as_secs_f64()).min(1.0);
            let span = f64::from(ramp.to) - f64::from(ramp.from);
            let users = (f64::from(ramp.from) + span * fraction).round() as u32;
            self.stage = Some(0);
            // The step that reaches `to` is the last; the call after it reports the end.
            self.done = now >= end;
            self.next_at = if self.done {
                now
            } else {
                clock::later(now, RAMP_STEP).min(end)
            };
            return Some(Step {
                patch: LoadPatch {
                    users: Some(users),
                    ..LoadPatch::default()
                },
                stage: 1,
            });
        }
        let mut next = self.stage.map_or(0, |s| s + 1);
        let mut stage = self.spec.stages.get(next)?;
        let mut ends = clock::later(self.next_at.max(self.started), stage.duration);
        // Joined late (a start_at in the past): stages already over are skipped, not replayed.
        while ends <= now {
            next += 1;
            stage = self.spec.stages.get(next)?;
            ends = clock::later(ends, stage.duration);
        }
        self.stage = Some(next);
        self.next_at = ends;
        Some(Step {
            patch: stage.load.clone(),
            stage: next as u32 + 1,
        })
    }

    pub fn status(&self, state: ProfileState, now: Instant) -> ProfileStatus {
        ProfileStatus {
            state,
            stage: if state == ProfileState::Running {
                self.stage.map_or(0, |s| s as u32 + 1)
            } else {
                0
            },
            stages: self.spec.stage_count() as u32,
            elapsed_seconds: now.saturating_duration_since(self.started).as_secs_f64(),
            start_at: humantime::format_rfc3339_millis(self.started_at).to_string(),
            total_seconds: self.spec.total().as_secs_f64(),
            spec: self.spec.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(users: &[u32]) -> ProfileSpec {
        ProfileSpec {
            stages: users
                .iter()
                .map(|&u| Stage {
                    duration: Duration::from_secs(10),
                    load: LoadPatch {
                        users: Some(u),
                        ..LoadPatch::default()
                    },
                })
                .collect(),
            ramp: None,
            start_at: None,
        }
    }

    #[test]
    fn stages_follow_each_other_on_time() {
        let start = Instant::now();
        let mut p = Running::start(stages(&[1, 5, 10]), start);
        let mut seen = Vec::new();
        while let Some(step) = p.advance(p.next_at()) {
            seen.push((step.stage, step.patch.users, p.next_at() - start));
        }
        let s = Duration::from_secs;
        assert_eq!(
            seen,
            [
                (1, Some(1), s(10)),
                (2, Some(5), s(20)),
                (3, Some(10), s(30))
            ]
        );
    }

    #[test]
    fn a_late_start_joins_the_stage_in_force() {
        let now = Instant::now();
        let mut spec = stages(&[1, 5, 10]);
        // Started 15 s ago elsewhere: stage 2 (10..20 s) is in force, 5 s are left of it.
        spec.start_at = Some(SystemTime::now() - Duration::from_secs(15));
        let mut p = Running::start(spec, now);
        let step = p.advance(now).expect("a stage");
        assert_eq!((step.stage, step.patch.users), (2, Some(5)));
        let left = p.next_at() - now;
        assert!(
            left <= Duration::from_secs(5) && left > Duration::from_millis(4900),
            "{left:?}"
        );
        let mut ahead = stages(&[1]);
        ahead.start_at = Some(SystemTime::now() + Duration::from_secs(3));
        let p = Running::start(ahead, now);
        assert!(
            p.next_at() - now > Duration::from_millis(2900),
            "waits for its start"
        );
        let mut far = stages(&[1]);
        far.start_at = Some(SystemTime::now() + Duration::from_secs(2 * 24 * 3600));
        assert_eq!(far.validate().expect_err("too far").field, "start_at");
    }

    #[test]
    fn a_ramp_moves_users_linearly() {
        let start = Instant::now();
        let spec = ProfileSpec {
            stages: vec![],
            ramp: Some(Ramp {
                from: 100,
                to: 200,
                over: Duration::from_secs(10),
            }),
            start_at: None,
        };
        let mut p = Running::start(spec, start);
        let users = |step: Option<Step>| step.and_then(|s| s.patch.users);
        assert_eq!(users(p.advance(start)), Some(100));
        assert_eq!(users(p.advance(start + Duration::from_secs(5))), Some(150));
        assert_eq!(users(p.advance(start + Duration::from_secs(10))), Some(200));
        assert!(p.advance(p.next_at()).is_none(), "the ramp ends");
    }

    #[test]
    fn stages_take_every_load_field_and_refuse_unknown_ones() {
        let stage: Stage = serde_json::from_str(
            r#"{"duration": "1m", "users": 5, "heartbeat_interval": "2s", "room_size": 4}"#,
        )
        .expect("every live field");
        assert_eq!(stage.load.room_size, Some(4));
        assert_eq!(stage.load.heartbeat_interval, Some(Duration::from_secs(2)));
        let err = serde_json::from_str::<Stage>(r#"{"duration": "1m", "userz": 5}"#)
            .expect_err("unknown field");
        assert!(err.to_string().contains("userz"), "{err}");
    }

    #[test]
    fn shapes_are_validated() {
        assert!(
            ProfileSpec {
                stages: vec![],
                ramp: None,
                start_at: None,
            }
            .validate()
            .is_err()
        );
        let mut both = stages(&[1]);
        both.ramp = Some(Ramp {
            from: 1,
            to: 2,
            over: Duration::from_secs(1),
        });
        assert_eq!(both.validate().expect_err("both").field, "stages");
        let mut zero = stages(&[1]);
        zero.stages[0].duration = Duration::ZERO;
        assert_eq!(
            zero.validate().expect_err("zero").field,
            "stages[0].duration"
        );
        let mut endless = stages(&[1]);
        endless.ramp = None;
        endless.stages[0].duration = Duration::from_secs(u64::MAX / 2);
        assert_eq!(
            endless.validate().expect_err("too long").field,
            "stages[0].duration"
        );
    }
}
