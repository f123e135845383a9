//! Reading a config: the file (or the empty default), the flags set over it, and every rule
//! checked once, each error naming the field as the file spells it.

use std::path::Path;
use std::time::Duration;

use url::Url;

use super::{Config, ConfigError, MAX_FDS_SETTING, MESSAGE_SIZE_BOUNDS, Plan};
use crate::failures::one_line;
use crate::load::{LoadError, MAX_SPAN, MAX_TIMEOUT, check_duration};
use crate::scenario::Scenario;

impl Config {
    /// Reads and validates a YAML file, which must be a regular file (what a reload reads:
    /// a FIFO put in its place must not block the reader).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Config::plan_file(path).map(|plan| plan.config)
    }

    /// [`Config::from_file`], compiled into its plan.
    pub fn plan_file(path: &Path) -> Result<Plan, ConfigError> {
        let text =
            crate::files::read_text(path, crate::files::MAX_CONFIG_BYTES).map_err(|source| {
                ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                }
            })?;
        Config::from_text(Some(path), &text, serde_norway::Mapping::new())
    }

    /// The config file named at start (any readable file: a pipe too), or the empty,
    /// all-defaults config, with `overrides` (from flags) set over its top-level fields,
    /// validated once: no way in can skip a rule. What validation compiled is kept: the
    /// returned plan is what the daemon runs, built once.
    pub fn read(
        path: Option<&Path>,
        overrides: serde_norway::Mapping,
    ) -> Result<Plan, ConfigError> {
        let text = match path {
            Some(path) => crate::files::read_text_at_start(path, crate::files::MAX_CONFIG_BYTES)
                .map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?,
            None => String::new(),
        };
        Config::from_text(path, &text, overrides)
    }

    fn from_text(
        path: Option<&Path>,
        text: &str,
        overrides: serde_norway::Mapping,
    ) -> Result<Plan, ConfigError> {
        let base_dir = path.and_then(Path::parent).unwrap_or(Path::new("."));
        let mut raw = parse_raw(text)?;
        let flags: Vec<String> = overrides
            .keys()
            .filter_map(|key| key.as_str().map(str::to_string))
            .collect();
        if !overrides.is_empty() {
            let serde_norway::Value::Mapping(fields) = &mut raw else {
                return Err(ConfigError::Syntax {
                    field: "(top level)".into(),
                    message: "expected a mapping of fields".into(),
                });
            };
            fields.extend(overrides);
        }
        let mut plan = Config::from_raw(raw, base_dir).map_err(|err| {
            // A flag's value breaking a rule: say so, the file may not even mention the field.
            match err
                .field()
                .and_then(|f| flags.iter().find(|flag| f.starts_with(flag.as_str())))
            {
                Some(flag) => ConfigError::Flag {
                    flag: flag.clone(),
                    source: Box::new(err),
                },
                None => err,
            }
        })?;
        plan.config.source = path.map(Path::to_path_buf);
        Ok(plan)
    }

    /// Parses and validates YAML text; an empty document is the all-defaults config.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_in(text, Path::new("."))
    }

    /// Parses, validates and compiles YAML text (relative paths from the working directory).
    #[cfg(test)]
    pub(crate) fn read_text(text: &str) -> Result<Plan, ConfigError> {
        Config::from_raw(parse_raw(text)?, Path::new("."))
    }

    /// [`Config::parse`] with relative paths resolved from `base_dir`.
    pub fn parse_in(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        Config::from_raw(parse_raw(text)?, base_dir).map(|plan| plan.config)
    }

    pub(super) fn from_raw(raw: serde_norway::Value, base_dir: &Path) -> Result<Plan, ConfigError> {
        let interval_given = raw.get("message_interval").is_some();
        let mut config: Config = serde_path_to_error::deserialize(raw).map_err(|err| {
            let field = err.path().to_string();
            ConfigError::Syntax {
                field: if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                message: one_line(&err.into_inner().to_string()),
            }
        })?;
        // A schedule with times of its own (uniform, lognormal) says what the mean gap is.
        if let Some(mean) = config.schedule.gaps.mean() {
            let apart = config.message_interval.abs_diff(mean);
            if interval_given && apart > Duration::from_millis(1) {
                return Err(ConfigError::Invalid {
                    field: "message_interval",
                    problem: format!(
                        "{} contradicts the schedule, whose mean gap is {}: leave message_interval out (it follows the schedule)",
                        humantime::format_duration(config.message_interval),
                        humantime::format_duration(mean)
                    ),
                });
            }
            config.message_interval = mean;
        }
        let config = Config {
            base_dir: base_dir.to_path_buf(),
            limits: config.limits.clone().or_host_default(config.shard.count),
            ..config
        };
        config.validate()
    }

    /// The built-in configuration: a small fleet against the in-process reference target.
    pub fn embedded_default() -> Config {
        Config::parse("").expect("the empty config is valid")
    }
}

impl Config {
    /// Every rule, and the plan built on the way (what the rules about the scenario, TLS and
    /// token check is that it can be built).
    fn validate(&self) -> Result<Plan, ConfigError> {
        let plan = self.plan()?;
        if let Some(capacity) = &self.capacity {
            capacity
                .validate(&self.sla)
                .map_err(|problem| ConfigError::Invalid {
                    field: "capacity",
                    problem,
                })?;
        }
        if let Some(target) = &self.target {
            validate_target(target)?;
            // Each group of several checks its own target, as a config of its own.
            if self.groups.is_empty() {
                self.check_stream_target(target, &plan.groups[0].scenario)?;
            }
        }
        if let Some(offline) = &self.offline {
            let zero = [("every", offline.every), ("for", offline.away)]
                .into_iter()
                .find(|(_, spread)| spread.mean.is_zero());
            if let Some((name, _)) = zero {
                return Err(ConfigError::Invalid {
                    field: "offline",
                    problem: format!("`{name}` must be longer than 0s"),
                });
            }
        }
        if let Some(compression) = &self.compression {
            let plain_stream = self.groups.is_empty()
                && self
                    .target
                    .as_ref()
                    .is_some_and(|t| !crate::session::is_websocket(t));
            let problem = compression.deflate().problem().or_else(|| {
                plain_stream.then(|| {
                    "permessage-deflate is a WebSocket extension: a target that is not ws:// or wss:// has no upgrade to offer it in".to_string()
                })
            });
            if let Some(problem) = problem {
                return Err(ConfigError::Invalid {
                    field: "compression",
                    problem,
                });
            }
        }
        self.limits.validate()?;
        if !MESSAGE_SIZE_BOUNDS.contains(&self.max_message_size) {
            return Err(ConfigError::Invalid {
                field: "max_message_size",
                problem: format!(
                    "must be between {} and {} bytes, got {}",
                    MESSAGE_SIZE_BOUNDS.start(),
                    MESSAGE_SIZE_BOUNDS.end(),
                    self.max_message_size
                ),
            });
        }
        self.load().validate().map_err(in_file)?;
        plan.load.check(&self.limits).map_err(in_file)?;
        self.check_rooms_fit(&plan)?;
        let invalid = |field, problem: String| Err(ConfigError::Invalid { field, problem });
        let ms = Duration::from_millis(1);
        let zero = Duration::ZERO;
        for (field, value, min, max) in [
            ("connect_timeout", self.connect_timeout, ms, MAX_TIMEOUT),
            ("reconnect.initial", self.reconnect.initial, ms, MAX_TIMEOUT),
            (
                "reconnect.max",
                self.reconnect.max,
                self.reconnect.initial,
                MAX_TIMEOUT,
            ),
            ("ack_timeout", self.ack_timeout, ms, MAX_TIMEOUT),
            ("loss_grace", self.loss_grace, ms, MAX_TIMEOUT),
            ("status_window", self.status_window, ms, MAX_TIMEOUT),
            ("shutdown_timeout", self.shutdown_timeout, zero, MAX_TIMEOUT),
            ("drain_timeout", self.drain_timeout(), zero, MAX_TIMEOUT),
            (
                "self_health.max_loop_lag",
                self.self_health.max_loop_lag,
                ms,
                MAX_TIMEOUT,
            ),
        ] {
            check_duration(field, value, min, max, None)?;
        }
        check_duration(
            "progress_interval",
            self.progress_interval,
            Duration::from_secs(1),
            MAX_TIMEOUT,
            Some("off"),
        )?;
        if !self.heartbeat.interval.is_zero() {
            check_duration(
                "heartbeat.timeout",
                self.heartbeat.timeout,
                ms,
                MAX_TIMEOUT,
                None,
            )?;
        }
        if let Some((field, problem)) = self.sla.problem() {
            return Err(ConfigError::Invalid { field, problem });
        }
        self.check_schedule()?;
        if let Some(lifetime) = &self.lifetime {
            check_duration("lifetime.min", lifetime.min, ms, MAX_SPAN, None)?;
            check_duration("lifetime.max", lifetime.max, lifetime.min, MAX_SPAN, None)?;
        }
        if self.self_health.min_fds_available > MAX_FDS_SETTING {
            return invalid(
                "self_health.min_fds_available",
                format!(
                    "must be at most {MAX_FDS_SETTING}, got {}",
                    self.self_health.min_fds_available
                ),
            );
        }
        for (i, address) in self.source_addresses.iter().enumerate() {
            // Binding to port 0 allocates nothing lasting; it fails for a foreign address.
            if let Err(err) = std::net::TcpListener::bind((*address, 0)) {
                return Err(ConfigError::Listed {
                    field: format!("source_addresses[{i}]"),
                    problem: format!("{address} is not an address of this host ({err})"),
                });
            }
        }
        if self.threads.is_some_and(|t| t == 0 || t > 1024) {
            return invalid("threads", "must be between 1 and 1024".into());
        }
        if !(0.0..=1.0).contains(&self.reconnect.jitter) {
            return invalid(
                "reconnect.jitter",
                format!("must be between 0.0 and 1.0, got {}", self.reconnect.jitter),
            );
        }
        Ok(plan)
    }
}

impl Config {
    /// A room never spans two instances: rooms are dealt out in blocks (of `room_size ×
    /// rooms_per_user` users), and a block bigger than an instance may hold is refused.
    fn check_rooms_fit(&self, plan: &Plan) -> Result<(), ConfigError> {
        let Some(max) = self.limits.max_users else {
            return Ok(());
        };
        let per_instance = max / self.shard.count.max(1);
        for (group, load) in plan.groups.iter().zip(plan.load.loads()) {
            let topology = group.scenario.topology(load.room_size);
            let block = topology.block();
            if block > per_instance && load.users >= block {
                let field = if self.groups.is_empty() {
                    "scenario.room_size".to_string()
                } else {
                    format!("groups.{}.scenario.room_size", group.name)
                };
                let of = if topology.rooms_per_user() > 1 {
                    format!(
                        "a block of {block} users (rooms of {} per user, laid out together)",
                        topology.describe()
                    )
                } else {
                    format!("a room of {block} users")
                };
                return Err(ConfigError::Listed {
                    field,
                    problem: format!(
                        "{of} does not fit one instance, which may hold {per_instance} (limits.max_users {max} over {} shard(s)); rooms never span instances: make rooms smaller or raise the cap",
                        self.shard.count
                    ),
                });
            }
        }
        Ok(())
    }

    /// The schedule's times are ones a user can keep: gaps between 1 ms and an hour, bursts
    /// within a run's span, a skew with a finite mean.
    fn check_schedule(&self) -> Result<(), ConfigError> {
        use crate::load::{MAX_INTERVAL, MIN_MESSAGE_INTERVAL};
        use crate::session::settings::Gaps;
        let schedule = &self.schedule;
        let ordered = |field: &'static str, low: Duration, high: Duration, what: &str| {
            if low <= high {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    field,
                    problem: format!(
                        "{what} ({}) must not be below {} ",
                        humantime::format_duration(high),
                        humantime::format_duration(low)
                    )
                    .trim_end()
                    .to_string(),
                })
            }
        };
        match schedule.gaps {
            Gaps::Uniform { min, max } => {
                ordered("schedule.uniform.max", min, max, "max")?;
                check_duration(
                    "schedule.uniform.max",
                    max,
                    MIN_MESSAGE_INTERVAL,
                    MAX_INTERVAL,
                    None,
                )?;
            }
            Gaps::Lognormal { median, p99 } => {
                check_duration(
                    "schedule.lognormal.median",
                    median,
                    MIN_MESSAGE_INTERVAL,
                    MAX_INTERVAL,
                    None,
                )?;
                ordered("schedule.lognormal.p99", median, p99, "p99")?;
                check_duration("schedule.lognormal.p99", p99, median, MAX_SPAN, None)?;
            }
            Gaps::Fixed | Gaps::Exponential => {}
        }
        if let Some(arrivals) = &self.arrivals {
            if !(arrivals.rate.is_finite() && (0.001..=100_000.0).contains(&arrivals.rate)) {
                return Err(ConfigError::Invalid {
                    field: "arrivals.rate",
                    problem: format!(
                        "must be a number of arrivals per second between 0.001 and 100000, got {}",
                        arrivals.rate
                    ),
                });
            }
            check_duration(
                "arrivals.stay",
                arrivals.stay.mean,
                MIN_MESSAGE_INTERVAL,
                MAX_SPAN,
                None,
            )?;
        }
        if let Some(bursts) = schedule.bursts {
            check_duration(
                "schedule.bursts.on",
                bursts.on,
                MIN_MESSAGE_INTERVAL,
                MAX_SPAN,
                None,
            )?;
            check_duration(
                "schedule.bursts.off",
                bursts.off,
                Duration::ZERO,
                MAX_SPAN,
                None,
            )?;
        }
        if let Some(speakers) = schedule.speakers
            && !(speakers > 0.0 && speakers <= 1.0)
        {
            return Err(ConfigError::Invalid {
                field: "schedule.speakers",
                problem: format!(
                    "must be a fraction of the users above 0 and at most 1 (e.g. 1%), got {speakers}"
                ),
            });
        }
        if let Some(skew) = schedule.skew
            && !(skew.is_finite() && skew > 1.0 && skew <= 10.0)
        {
            return Err(ConfigError::Invalid {
                field: "schedule.skew",
                problem: format!(
                    "must be a Pareto shape above 1 (a finite mean) and at most 10, got {skew}; 1.16 gives the 80/20 split"
                ),
            });
        }
        Ok(())
    }
}

/// A load error with its field as the file spells it: the live fields the file nests
/// (`heartbeat.interval`, `scenario.room_size`) have flat names in [`Load`] and the API.
fn in_file(err: LoadError) -> LoadError {
    let field = match err.field.as_str() {
        "heartbeat_interval" => "heartbeat.interval",
        "room_size" => "scenario.room_size",
        _ => return err,
    };
    LoadError {
        field: field.into(),
        ..err
    }
}

/// Checks that a target URL is one a WebSocket client can connect to.
pub fn validate_target(target: &Url) -> Result<(), ConfigError> {
    let problem = if !matches!(
        target.scheme(),
        "ws" | "wss" | "tcp" | "tls" | "sse+http" | "sse+https"
    ) {
        format!(
            "scheme must be ws://, wss://, tcp://, tls://, sse+http:// or sse+https://, got `{}://` in {target}",
            target.scheme()
        )
    } else if target.host_str().is_none_or(str::is_empty) {
        format!("has no host: {target}")
    } else {
        return Ok(());
    };
    Err(ConfigError::Invalid {
        field: "target",
        problem,
    })
}

impl Config {
    /// A plain-stream target (`tcp://`, `tls://`) needs a framing, an SSE target a way to
    /// send (`scenario.publish`); neither has WebSocket pings to be the heartbeat.
    fn check_stream_target(&self, target: &Url, scenario: &Scenario) -> Result<(), ConfigError> {
        if crate::session::is_websocket(target) || scenario.url.is_some() {
            return Ok(());
        }
        let sse = crate::session::is_sse(target);
        let sends = scenario.message.is_some() || scenario.login.iter().any(|s| s.send.is_some());
        let problem = if sse && scenario.publish.is_none() && sends {
            format!(
                "{target} is an event stream: give the scenario a `publish` (the HTTP request each frame is sent in)"
            )
        } else if !sse && scenario.framing.is_none() {
            format!(
                "{target} is a plain stream: give the scenario a `framing` (newline or length_prefixed), or a codec that frames its packets (mqtt)"
            )
        } else if scenario.heartbeat.is_none() && !self.heartbeat.interval.is_zero() {
            format!(
                "{target} has no WebSocket pings: give the scenario an application heartbeat (scenario.heartbeat), or set heartbeat.interval: 0s"
            )
        } else {
            return Ok(());
        };
        Err(ConfigError::Invalid {
            field: "target",
            problem,
        })
    }
}

/// YAML text as a tree; an empty document is an empty mapping.
fn parse_raw(text: &str) -> Result<serde_norway::Value, ConfigError> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_norway::from_str(text).map_err(|err| ConfigError::Syntax {
        field: "(top level)".into(),
        message: one_line(&err.to_string()),
    })
}
