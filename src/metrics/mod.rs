//! Everything the fleet measures: one typed struct over an owned Prometheus registry, plus
//! HdrHistogram windows that give exact recent quantiles to the status API.
//!
//! Label values come from closed enums ([`ConnectResult`], [`DisconnectReason`]); their series
//! are created up front so every one of them exists (at 0) from the first scrape.

mod local;

pub use local::Latency;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram as Hdr;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use serde::{Deserialize, Serialize};

use crate::label::label_enum;
use crate::sla::{Errors, Sla};

/// Latency buckets from 100 µs to 30 s on a 1-2-5 scale, so SLA thresholds such as 200 ms or
/// 1 s fall on a bucket boundary.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
    10.0, 20.0, 30.0,
];

/// Length of the HdrHistogram window behind the status API's quantiles.
pub const WINDOW: Duration = Duration::from_secs(10);

label_enum! {
    /// Outcome of one connection attempt (`wsfleet_connects_total{result}`).
    ConnectResult {
        Ok => "ok",
        Refused => "refused",
        Timeout => "timeout",
        Dns => "dns",
        Tls => "tls",
        HttpStatus => "http_status",
        Protocol => "protocol",
        Io => "io",
        Login => "login",
        PortsExhausted => "ports_exhausted",
        FdsExhausted => "fds_exhausted",
        SourceAddress => "source_address",
    }
}

label_enum! {
    /// Why a connected user stopped being connected (`wsfleet_disconnects_total{reason}`).
    DisconnectReason {
        ClientClose => "client_close",
        ServerClose => "server_close",
        HeartbeatTimeout => "heartbeat_timeout",
        SendTimeout => "send_timeout",
        Reset => "reset",
        Protocol => "protocol",
        Churn => "churn",
        RoomChange => "room_change",
    }
}

impl DisconnectReason {
    /// Whether the fleet did not choose this end (ramp-down, shutdown, churn and room
    /// changes are its own choices).
    pub fn is_failure(self) -> bool {
        !matches!(
            self,
            DisconnectReason::ClientClose | DisconnectReason::Churn | DisconnectReason::RoomChange
        )
    }
}

label_enum! {
    /// Who changed the desired load (`wsfleet_load_changes_total{source}`).
    Source {
        Api => "api",
        K6 => "k6",
        Reload => "reload",
        Profile => "profile",
        Capacity => "capacity",
    }
}

/// Declares the counters touched per message once: each a [`Count`] and the shared collector
/// (a field of [`Metrics`]) its per-thread buffer ([`local`]) flushes into.
macro_rules! per_message_counters {
    ($($variant:ident => $field:ident),+ $(,)?) => {
        /// A counter touched per message, recorded with [`Metrics::add`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Count {
            $($variant),+
        }

        impl Count {
            pub const ALL: &[Count] = &[$(Count::$variant),+];
        }

        impl Metrics {
            /// The shared collector of a per-message counter.
            fn counter(&self, count: Count) -> &IntCounter {
                match count {
                    $(Count::$variant => &self.$field),+
                }
            }
        }
    };
}

per_message_counters! {
    Sent => messages_sent,
    Received => messages_received,
    BytesSent => bytes_sent,
    BytesReceived => bytes_received,
    DeliveriesExpected => deliveries_expected,
    DeliveriesReceived => deliveries_received,
    Lost => messages_lost,
    Duplicated => messages_duplicated,
    Reordered => messages_reordered,
    AckTimeouts => message_timeouts,
    FramesInvalid => frames_invalid,
    FramesUnmatched => frames_unmatched,
    Replies => replies,
    Resent => resent,
    DeliveriesForeign => deliveries_foreign,
}

/// The fleet's measurements.
pub struct Metrics {
    registry: Registry,
    pub users_target: IntGauge,
    pub fleet_users_target: IntGauge,
    pub shard_index: IntGauge,
    pub shards: IntGauge,
    pub users_active: IntGauge,
    connects: Vec<IntCounter>,
    pub connect_duration: Histogram,
    disconnects: Vec<IntCounter>,
    pub messages_sent: IntCounter,
    pub messages_received: IntCounter,
    pub message_rtt: Histogram,
    pub heartbeat_rtt: Histogram,
    pub send_lag: Histogram,
    pub bytes_sent: IntCounter,
    pub bytes_received: IntCounter,
    pub frames_invalid: IntCounter,
    pub frames_unmatched: IntCounter,
    pub replies: IntCounter,
    pub resent: IntCounter,
    pub generator_saturations: IntCounter,
    connect_phases: Vec<Histogram>,
    /// Where a capacity search stands (`wsfleet_capacity_*`).
    pub capacity: CapacityGauges,
    connect_http_status: IntCounterVec,
    pub login_duration: Histogram,
    pub delivery_latency: Histogram,
    pub message_timeouts: IntCounter,
    pub messages_lost: IntCounter,
    pub messages_duplicated: IntCounter,
    pub messages_reordered: IntCounter,
    pub deliveries_expected: IntCounter,
    pub deliveries_received: IntCounter,
    pub deliveries_foreign: IntCounter,
    pub rtt_window: LatencyWindow,
    pub connect_window: LatencyWindow,
    pub delivery_window: LatencyWindow,
    load_changes: Vec<IntCounter>,
    pub message_rate_target: Gauge,
    pub paused: IntGauge,
    pub profile_stage: IntGauge,
    pub config_reloads: IntCounterVec,
    pub sla_threshold: GaugeVec,
    pub event_loop_lag: Histogram,
    pub fds_available: IntGauge,
    pub generator_saturated: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::with_window(WINDOW)
    }

    /// Metrics whose status-API quantiles cover windows of `window`.
    pub fn with_window(window: Duration) -> Metrics {
        let registry = Registry::new();
        let reg = Registrar(&registry);
        let connects_vec = reg.counter_vec(
            "wsfleet_connects_total",
            "Connection attempts by result: ok or the failure reason.",
            "result",
        );
        let disconnects_vec = reg.counter_vec(
            "wsfleet_disconnects_total",
            "Connected users that lost their connection, by reason.",
            "reason",
        );
        let load_changes_vec = reg.counter_vec(
            "wsfleet_load_changes_total",
            "Changes of the desired load (users, rates, pause), by who made them.",
            "source",
        );
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registers once");
        registry
            .register(Box::new(crate::heap::HeapCollector::new()))
            .expect("heap collector registers once");
        let metrics = Metrics {
            users_target: reg.gauge(
                "wsfleet_users_target",
                "Users this instance should hold (its shard's share of the fleet).",
            ),
            fleet_users_target: reg.gauge(
                "wsfleet_fleet_users_target",
                "Users the whole fleet (every shard) should hold.",
            ),
            shard_index: reg.gauge("wsfleet_shard_index", "This instance's shard, from 0."),
            shards: reg.gauge(
                "wsfleet_shards",
                "Instances (shards) the fleet is split into.",
            ),
            users_active: reg.gauge(
                "wsfleet_users_active",
                "Users connected right now (handshake done).",
            ),
            connects: ConnectResult::ALL
                .iter()
                .map(|r| connects_vec.with_label_values(&[r.as_str()]))
                .collect(),
            connect_duration: reg.histogram(
                "wsfleet_connect_duration_seconds",
                "Handshake time of successful connects: TCP connect, TLS and HTTP upgrade.",
            ),
            disconnects: DisconnectReason::ALL
                .iter()
                .map(|r| disconnects_vec.with_label_values(&[r.as_str()]))
                .collect(),
            messages_sent: reg.counter("wsfleet_messages_sent_total", "Messages sent by users."),
            messages_received: reg.counter(
                "wsfleet_messages_received_total",
                "Messages received by users (pongs excluded).",
            ),
            message_rtt: reg.histogram(
                "wsfleet_message_rtt_seconds",
                "Round trip of a message, from the time it was scheduled to be sent.",
            ),
            heartbeat_rtt: reg.histogram(
                "wsfleet_heartbeat_rtt_seconds",
                "Time from a WebSocket ping to its pong.",
            ),
            send_lag: reg.histogram(
                "wsfleet_send_lag_seconds",
                "How late messages left compared to their schedule (generator or socket lag).",
            ),
            bytes_sent: reg.counter(
                "wsfleet_bytes_sent_total",
                "Payload bytes of data frames sent.",
            ),
            bytes_received: reg.counter(
                "wsfleet_bytes_received_total",
                "Payload bytes of data frames received.",
            ),
            frames_invalid: reg.counter(
                "wsfleet_frames_invalid_total",
                "Server frames that matched an ack or delivery but lacked a readable id, sender, sequence or timestamp, or carried a sequence its sender never sent or a timestamp in the future.",
            ),
            frames_unmatched: reg.counter(
                "wsfleet_frames_unmatched_total",
                "Server frames that matched nothing the scenario expects (presence, banners, ...).",
            ),
            connect_http_status: reg.counter_vec(
                "wsfleet_connect_http_status_total",
                "Upgrades refused with an HTTP status, by status (401, 403, 404, 429, 500, 502, 503, 504, other).",
                "status",
            ),
            connect_phases: {
                let vec = reg.register(
                    prometheus::HistogramVec::new(
                        HistogramOpts::new(
                            "wsfleet_connect_phase_seconds",
                            "Handshake time by phase: dns, tcp (connect), tls, upgrade (HTTP); plain streams have no upgrade.",
                        )
                        .buckets(LATENCY_BUCKETS.to_vec()),
                        &["phase"],
                    )
                    .expect("valid metric"),
                );
                Phase::ALL
                    .iter()
                    .map(|p| vec.with_label_values(&[p.as_str()]))
                    .collect()
            },
            capacity: CapacityGauges {
                running: reg.gauge(
                    "wsfleet_capacity_search_running",
                    "1 while a capacity search runs.",
                ),
                steps: reg.gauge(
                    "wsfleet_capacity_steps",
                    "Steps the capacity search has judged.",
                ),
                step_value: reg.float_gauge(
                    "wsfleet_capacity_step_load",
                    "The load of the capacity search's current (or last) step, in its dimension's unit.",
                ),
                held: reg.float_gauge(
                    "wsfleet_capacity_held_load",
                    "The highest load that held the SLA so far (0 before one did).",
                ),
                broke: reg.float_gauge(
                    "wsfleet_capacity_broke_load",
                    "The first load that broke the SLA (0 before one did).",
                ),
            },
            generator_saturations: reg.counter(
                "wsfleet_generator_saturations_total",
                "Times the generator became saturated (its latency figures are suspect while it is).",
            ),
            resent: reg.counter(
                "wsfleet_messages_resent_total",
                "Messages sent again after a reconnect because they were never acknowledged (resend_unacked).",
            ),
            replies: reg.counter(
                "wsfleet_replies_total",
                "Frames sent to answer the server's own frames (the scenario's `replies`, e.g. Socket.IO's pong).",
            ),
            login_duration: reg.histogram(
                "wsfleet_login_duration_seconds",
                "Time from the upgrade to the last login step's expected reply.",
            ),
            delivery_latency: reg.histogram(
                "wsfleet_delivery_latency_seconds",
                "End-to-end latency of room messages, from the sender's scheduled send time to each receiver.",
            ),
            message_timeouts: reg.counter(
                "wsfleet_message_timeouts_total",
                "Messages whose acknowledgement did not arrive within ack_timeout (or before the server ended the connection).",
            ),
            messages_lost: reg.counter(
                "wsfleet_messages_lost_total",
                "Room deliveries missing after a later one from the same sender arrived and the grace period passed, or at session end.",
            ),
            messages_duplicated: reg.counter(
                "wsfleet_messages_duplicated_total",
                "Room deliveries received more than once.",
            ),
            messages_reordered: reg.counter(
                "wsfleet_messages_reordered_total",
                "Room deliveries that arrived after a later one from the same sender.",
            ),
            deliveries_expected: reg.counter(
                "wsfleet_deliveries_expected_total",
                "Room deliveries the fleet's senders expected: other members of the room per message sent.",
            ),
            deliveries_received: reg.counter(
                "wsfleet_deliveries_received_total",
                "Distinct room deliveries received.",
            ),
            deliveries_foreign: reg.counter(
                "wsfleet_deliveries_foreign_total",
                "Deliveries from senders that are not users of this process (real users in the room, another fleet): not tracked, not latency samples.",
            ),
            load_changes: Source::ALL
                .iter()
                .map(|s| load_changes_vec.with_label_values(&[s.as_str()]))
                .collect(),
            message_rate_target: reg.register(
                Gauge::new(
                    "wsfleet_message_rate_target",
                    "Messages per second the fleet should send (users / message_interval, 0 when paused).",
                )
                .expect("valid metric"),
            ),
            paused: reg.gauge("wsfleet_paused", "1 while the fleet is paused."),
            profile_stage: reg.gauge(
                "wsfleet_profile_stage",
                "Stage (from 1) of the load profile being followed; 0 when none runs.",
            ),
            config_reloads: reg.counter_vec(
                "wsfleet_config_reloads_total",
                "Config file reloads (SIGHUP or file change), by result: ok or rejected.",
                "result",
            ),
            sla_threshold: reg.register(
                GaugeVec::new(
                    Opts::new(
                        "wsfleet_sla_threshold",
                        "SLA thresholds from the config, for alert rules and dashboards (seconds or ratios).",
                    ),
                    &["slo"],
                )
                .expect("valid metric"),
            ),
            event_loop_lag: reg.histogram(
                "wsfleet_event_loop_lag_seconds",
                "How late the generator's 100 ms probe tick ran: high values mean its own latency numbers are inflated.",
            ),
            fds_available: reg.gauge(
                "wsfleet_fds_available",
                "File descriptors this process may still open.",
            ),
            generator_saturated: reg.gauge(
                "wsfleet_generator_saturated",
                "1 when the generator is overloaded (loop lag or file descriptors) and stops adding users.",
            ),
            rtt_window: LatencyWindow::new(window),
            connect_window: LatencyWindow::new(window),
            delivery_window: LatencyWindow::new(window),
            registry,
        };
        for result in ["ok", "rejected"] {
            metrics.config_reloads.with_label_values(&[result]);
        }
        for status in HTTP_STATUSES.iter().chain(&["other"]) {
            metrics.connect_http_status.with_label_values(&[status]);
        }
        metrics
    }

    /// The histogram of one handshake phase.
    pub fn connect_phase(&self, phase: Phase) -> &Histogram {
        &self.connect_phases[phase as usize]
    }

    /// The counter of refused upgrades with HTTP `status` (common codes by name, the rest as
    /// `other`, so a hostile server cannot grow the label set).
    pub fn http_status(&self, status: u16) -> IntCounter {
        let label = HTTP_STATUSES
            .iter()
            .find(|s| s.parse() == Ok(status))
            .copied()
            .unwrap_or("other");
        self.connect_http_status.with_label_values(&[label])
    }

    pub fn connect_result(&self, result: ConnectResult) -> &IntCounter {
        &self.connects[result as usize]
    }

    pub fn load_changes(&self, source: Source) -> &IntCounter {
        &self.load_changes[source as usize]
    }

    pub fn disconnect(&self, reason: DisconnectReason) -> &IntCounter {
        &self.disconnects[reason as usize]
    }

    fn histogram(&self, latency: Latency) -> &Histogram {
        match latency {
            Latency::Rtt => &self.message_rtt,
            Latency::Delivery => &self.delivery_latency,
            Latency::Connect => &self.connect_duration,
            Latency::Heartbeat => &self.heartbeat_rtt,
            Latency::SendLag => &self.send_lag,
        }
    }

    fn window(&self, latency: Latency) -> Option<&LatencyWindow> {
        match latency {
            Latency::Rtt => Some(&self.rtt_window),
            Latency::Delivery => Some(&self.delivery_window),
            Latency::Connect => Some(&self.connect_window),
            Latency::Heartbeat | Latency::SendLag => None,
        }
    }

    /// The message counters, as the status API and the run summary show them.
    pub fn message_counts(&self) -> MessageCounts {
        MessageCounts {
            sent: self.total(Count::Sent),
            received: self.messages_received.get(),
            ack_timeouts: self.message_timeouts.get(),
            lost: self.messages_lost.get(),
            duplicated: self.messages_duplicated.get(),
            reordered: self.messages_reordered.get(),
            deliveries_expected: self.deliveries_expected.get(),
            deliveries_received: self.deliveries_received.get(),
            deliveries_foreign: self.deliveries_foreign.get(),
            frames_invalid: self.frames_invalid.get(),
            frames_unmatched: self.frames_unmatched.get(),
            replies: self.replies.get(),
            resent: self.resent.get(),
        }
    }

    /// Exports the SLA's thresholds (only those it sets) as `wsfleet_sla_threshold{slo}`.
    pub fn set_sla_thresholds(&self, sla: &Sla) {
        self.sla_threshold.reset();
        for (slo, threshold) in sla.thresholds() {
            self.sla_threshold
                .with_label_values(&[slo.as_str()])
                .set(threshold);
        }
    }

    /// Connection attempts so far, successful or not.
    pub fn connect_attempts(&self) -> u64 {
        self.connects.iter().map(IntCounter::get).sum()
    }

    /// Failed connection attempts so far, by result (every result but `ok`).
    pub fn connect_failures(&self) -> impl Iterator<Item = (ConnectResult, u64)> + '_ {
        ConnectResult::ALL
            .iter()
            .filter(|&&r| r != ConnectResult::Ok)
            .map(|&r| (r, self.connect_result(r).get()))
    }

    /// The error rate's counts so far ([`Errors::rate`]).
    pub fn errors(&self) -> Errors {
        let counts = self.message_counts();
        Errors {
            connect_attempts: self.connect_attempts(),
            connect_failures: self.connect_failures().map(|(_, n)| n).sum(),
            sent: counts.sent,
            ack_timeouts: counts.ack_timeouts,
            deliveries_expected: counts.deliveries_expected,
            lost: counts.lost,
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|err| format!("# encoding metrics failed: {err}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Creates metrics and registers them; names and help are constants, so failure is a bug.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.0
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }
    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }
    fn float_gauge(&self, name: &str, help: &str) -> prometheus::Gauge {
        self.register(prometheus::Gauge::new(name, help).expect("valid metric"))
    }
    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid metric"))
    }
    fn counter_vec(&self, name: &str, help: &str, label: &str) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"))
    }
    fn histogram(&self, name: &str, help: &str) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.register(Histogram::with_opts(opts).expect("valid metric"))
    }
}

/// The gauges of a capacity search.
pub struct CapacityGauges {
    pub running: IntGauge,
    pub steps: IntGauge,
    pub step_value: prometheus::Gauge,
    pub held: prometheus::Gauge,
    pub broke: prometheus::Gauge,
}

label_enum! {
    /// A phase of the handshake (`wsfleet_connect_phase_seconds{phase}`).
    Phase {
        Dns => "dns",
        Tcp => "tcp",
        Tls => "tls",
        Upgrade => "upgrade",
    }
}

/// HTTP statuses counted by name in `wsfleet_connect_http_status_total`.
const HTTP_STATUSES: &[&str] = &["401", "403", "404", "429", "500", "502", "503", "504"];

/// Message counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageCounts {
    pub sent: u64,
    pub received: u64,
    pub ack_timeouts: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    /// Deliveries from senders that are not users of this process (real users sharing a
    /// room, another fleet): counted, not tracked, not latency samples.
    pub deliveries_foreign: u64,
    pub frames_invalid: u64,
    pub frames_unmatched: u64,
    pub replies: u64,
    pub resent: u64,
}

/// Quantiles of one window, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quantiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// An HdrHistogram over a fixed window of time: exact quantiles of the latest window, which a
/// Prometheus histogram's buckets cannot give.
pub struct LatencyWindow {
    length: Duration,
    state: Mutex<WindowState>,
}

struct WindowState {
    started: Instant,
    current: Hdr<u64>,
    previous: Option<Hdr<u64>>,
    /// Everything since start, for the end-of-run summary.
    total: Hdr<u64>,
}

fn quantiles_of(hdr: &Hdr<u64>) -> Quantiles {
    if hdr.is_empty() {
        return Quantiles::default();
    }
    let secs = |micros: u64| micros as f64 / 1e6;
    Quantiles {
        count: hdr.len(),
        p50: secs(hdr.value_at_quantile(0.5)),
        p90: secs(hdr.value_at_quantile(0.9)),
        p99: secs(hdr.value_at_quantile(0.99)),
        p999: secs(hdr.value_at_quantile(0.999)),
        max: secs(hdr.max()),
    }
}

/// A sample as the windows store it: microseconds, at least 1.
fn micros(value: Duration) -> u64 {
    u64::try_from(value.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Microsecond resolution up to one hour, three significant digits.
fn new_hdr() -> Hdr<u64> {
    Hdr::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

impl LatencyWindow {
    pub fn new(length: Duration) -> Self {
        Self {
            length,
            state: Mutex::new(WindowState {
                started: Instant::now(),
                current: new_hdr(),
                previous: None,
                total: new_hdr(),
            }),
        }
    }

    pub fn record(&self, value: Duration) {
        let micros = micros(value);
        let mut state = self.lock_rotated();
        state.current.saturating_record(micros);
        state.total.saturating_record(micros);
    }

    /// Adds a batch of samples recorded elsewhere (a user thread's buffer).
    pub fn merge(&self, samples: &Hdr<u64>) {
        let mut state = self.lock_rotated();
        // Same bounds on both sides: adding cannot fail; were it to, the batch is dropped.
        let _ = state.current.add(samples);
        let _ = state.total.add(samples);
    }

    /// Quantiles of the last complete window, or of the current one before the first ends.
    pub fn quantiles(&self) -> Quantiles {
        let state = self.lock_rotated();
        quantiles_of(state.previous.as_ref().unwrap_or(&state.current))
    }

    /// Quantiles of everything recorded since start.
    pub fn total(&self) -> Quantiles {
        quantiles_of(&self.lock_rotated().total)
    }

    /// Everything recorded since start, to compare with a later snapshot
    /// ([`LatencyWindow::quantiles_since`]).
    pub fn snapshot(&self) -> Hdr<u64> {
        self.lock_rotated().total.clone()
    }

    /// Exact quantiles of what was recorded since `earlier` (a [`LatencyWindow::snapshot`]).
    pub fn quantiles_since(&self, earlier: &Hdr<u64>) -> Quantiles {
        let mut since = self.snapshot();
        // `earlier` is a prefix of the same totals: subtracting cannot underflow a bucket.
        let _ = since.subtract(earlier);
        quantiles_of(&since)
    }

    /// Everything recorded since start (microseconds), HdrHistogram's V2 encoding in base64:
    /// what another process needs to merge this instance's samples exactly with its own.
    pub fn total_encoded(&self) -> String {
        use base64::Engine as _;
        use hdrhistogram::serialization::Serializer as _;
        let total = self.lock_rotated().total.clone();
        let mut bytes = Vec::new();
        // Writing into a Vec cannot fail; an empty string would read as "no samples".
        let _ = hdrhistogram::serialization::V2Serializer::new().serialize(&total, &mut bytes);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// Exact quantiles of the union of several instances' samples, from their
/// [`LatencyWindow::total_encoded`] histograms; `None` if one does not decode.
pub fn merged_quantiles<'a>(encoded: impl IntoIterator<Item = &'a str>) -> Option<Quantiles> {
    use base64::Engine as _;
    let mut union = new_hdr();
    for text in encoded {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        let one: Hdr<u64> = hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .ok()?;
        union.add(&one).ok()?;
    }
    Some(quantiles_of(&union))
}

impl LatencyWindow {
    fn lock_rotated(&self) -> std::sync::MutexGuard<'_, WindowState> {
        // A poisoned lock only means a panic elsewhere mid-record; the histogram is still usable.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = state.started.elapsed();
        if elapsed >= self.length {
            // Reuse the histograms (a few hundred KB each) rather than allocating new ones.
            let mut spare = state.previous.take().unwrap_or_else(new_hdr);
            spare.reset();
            let mut finished = std::mem::replace(&mut state.current, spare);
            // A window with nothing after it (idle for two lengths) leaves an empty previous.
            if elapsed >= 2 * self.length {
                finished.reset();
            }
            state.previous = Some(finished);
            state.started = Instant::now();
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_value_exists_from_the_start() {
        let text = Metrics::new().encode();
        for r in ConnectResult::ALL {
            assert!(text.contains(&format!(
                "wsfleet_connects_total{{result=\"{}\"}} 0",
                r.as_str()
            )));
        }
        for r in DisconnectReason::ALL {
            assert!(text.contains(&format!(
                "wsfleet_disconnects_total{{reason=\"{}\"}} 0",
                r.as_str()
            )));
        }
        assert!(text.contains("wsfleet_message_rtt_seconds_bucket{le=\"0.0001\"} 0"));
        assert!(text.contains("wsfleet_message_rtt_seconds_bucket{le=\"30\"} 0"));
    }

    #[test]
    fn window_quantiles_are_exact() {
        let window = LatencyWindow::new(Duration::from_secs(3600));
        for ms in 1..=1000 {
            window.record(Duration::from_millis(ms));
        }
        let q = window.quantiles();
        assert_eq!(q.count, 1000);
        assert!((q.p50 - 0.5).abs() < 0.001, "{q:?}");
        assert!((q.p99 - 0.99).abs() < 0.001, "{q:?}");
    }

    #[test]
    fn encoded_histograms_merge_into_the_exact_union() {
        let (a, b) = (
            LatencyWindow::new(Duration::from_secs(3600)),
            LatencyWindow::new(Duration::from_secs(3600)),
        );
        for ms in 1..=500 {
            a.record(Duration::from_millis(ms));
        }
        for ms in 501..=1000 {
            b.record(Duration::from_millis(ms));
        }
        let union = merged_quantiles([a.total_encoded().as_str(), b.total_encoded().as_str()])
            .expect("decodes");
        assert_eq!(union.count, 1000);
        assert!((union.p99 - 0.99).abs() < 0.001, "{union:?}");
        assert!(merged_quantiles(["not base64!"]).is_none());
    }

    #[test]
    fn a_finished_window_is_reported_until_the_next_one_ends() {
        let window = LatencyWindow::new(Duration::from_millis(50));
        window.record(Duration::from_millis(7));
        std::thread::sleep(Duration::from_millis(60));
        window.record(Duration::from_millis(100));
        let q = window.quantiles();
        assert_eq!(q.count, 1);
        assert!((q.p50 - 0.007).abs() < 0.0001, "{q:?}");
    }
}
