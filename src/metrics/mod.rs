//! Everything the fleet measures: one typed struct over an owned Prometheus registry, plus
//! HdrHistogram windows that give exact recent quantiles to the status API.
//!
//! Label values come from closed enums ([`ConnectResult`], [`DisconnectReason`]); their series
//! are created up front so every one of them exists (at 0) from the first scrape.

mod grouped;
mod local;

pub use grouped::PerGroup;
pub use local::{Latency, Meter};

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram as Hdr;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use serde::{Deserialize, Serialize};

use crate::label::label_enum;
use crate::sla::{Measure, Observed, Slas, Tally};

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
        Offline => "offline",
        Handover => "handover",
    }
}

impl DisconnectReason {
    /// Whether the fleet did not choose this end (ramp-down, shutdown, churn, room changes
    /// going offline and a
    /// shaped link's handovers are its own choices).
    pub fn is_failure(self) -> bool {
        !matches!(
            self,
            DisconnectReason::ClientClose
                | DisconnectReason::Churn
                | DisconnectReason::RoomChange
                | DisconnectReason::Offline
                | DisconnectReason::Handover
        )
    }

    /// Whether the user is away for a while and then back, its books kept where the server
    /// syncs: gone offline, or handed over to another network.
    pub fn is_away(self) -> bool {
        matches!(self, DisconnectReason::Offline | DisconnectReason::Handover)
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
            /// The shared collectors of a per-message counter, one per group.
            fn counter(&self, count: Count) -> &PerGroup<IntCounter> {
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
    LostSync => messages_lost_sync,
    Duplicated => messages_duplicated,
    DuplicatedSync => messages_duplicated_sync,
    OfflineDeliveries => offline_deliveries,
    Reordered => messages_reordered,
    AckTimeouts => message_timeouts,
    FramesInvalid => frames_invalid,
    FramesUnmatched => frames_unmatched,
    Replies => replies,
    Resent => resent,
    DeliveriesForeign => deliveries_foreign,
    OwnEchoes => own_echoes,
    FramesIgnored => frames_ignored,
    DeliveriesUntracked => deliveries_untracked,
    TokenRefreshes => token_refreshes,
    TokenRefreshFailures => token_refresh_failures,
    DeflateNegotiated => deflate_negotiated,
    DeflateDeclined => deflate_declined,
    DeflateBytesSent => deflate_bytes_sent,
    DeflateWireBytesSent => deflate_wire_bytes_sent,
    DeflateBytesReceived => deflate_bytes_received,
    DeflateWireBytesReceived => deflate_wire_bytes_received,
    PublishRefused => publish_refused,
    NetworkStalls => network_stalls,
}

/// The fleet's measurements. The series people read per group of users are [`PerGroup`]s
/// (labelled `group` when the fleet has several groups).
pub struct Metrics {
    registry: Registry,
    /// The group names, in the fleet's order.
    groups: Vec<String>,
    pub users_target: PerGroup<IntGauge>,
    pub fleet_users_target: IntGauge,
    pub shard_index: IntGauge,
    pub shards: IntGauge,
    pub users_active: PerGroup<IntGauge>,
    pub users_offline: PerGroup<IntGauge>,
    connects: Vec<PerGroup<IntCounter>>,
    pub connect_duration: PerGroup<Histogram>,
    disconnects: Vec<PerGroup<IntCounter>>,
    pub messages_sent: PerGroup<IntCounter>,
    pub messages_received: PerGroup<IntCounter>,
    pub message_rtt: PerGroup<Histogram>,
    pub heartbeat_rtt: PerGroup<Histogram>,
    pub send_lag: PerGroup<Histogram>,
    pub bytes_sent: PerGroup<IntCounter>,
    pub bytes_received: PerGroup<IntCounter>,
    pub frames_invalid: PerGroup<IntCounter>,
    pub frames_unmatched: PerGroup<IntCounter>,
    pub own_echoes: PerGroup<IntCounter>,
    pub frames_ignored: PerGroup<IntCounter>,
    pub deliveries_untracked: PerGroup<IntCounter>,
    pub token_refreshes: PerGroup<IntCounter>,
    pub token_refresh_failures: PerGroup<IntCounter>,
    pub deflate_negotiated: PerGroup<IntCounter>,
    pub deflate_declined: PerGroup<IntCounter>,
    pub deflate_bytes_sent: PerGroup<IntCounter>,
    pub deflate_wire_bytes_sent: PerGroup<IntCounter>,
    pub deflate_bytes_received: PerGroup<IntCounter>,
    pub deflate_wire_bytes_received: PerGroup<IntCounter>,
    pub publish_refused: PerGroup<IntCounter>,
    /// Shaped users' links (`network:`): a chunk's time in the link, the part the bandwidth
    /// took, and the stalls (handovers are disconnects with reason `handover`).
    pub network_delay: PerGroup<Histogram>,
    pub network_throttle: PerGroup<Histogram>,
    pub network_stalls: PerGroup<IntCounter>,
    pub replies: PerGroup<IntCounter>,
    pub resent: PerGroup<IntCounter>,
    pub generator_saturations: IntCounter,
    connect_phases: Vec<Histogram>,
    /// Where a capacity search stands (`wsfleet_capacity_*`).
    pub capacity: CapacityGauges,
    connect_http_status: IntCounterVec,
    pub login_duration: PerGroup<Histogram>,
    pub delivery_latency: PerGroup<Histogram>,
    pub message_timeouts: PerGroup<IntCounter>,
    /// Lost and duplicated deliveries by path: `live`, or `sync` (what a receiver missed
    /// while away, expected through the server's sync).
    pub messages_lost: PerGroup<IntCounter>,
    pub messages_lost_sync: PerGroup<IntCounter>,
    pub messages_duplicated: PerGroup<IntCounter>,
    pub messages_duplicated_sync: PerGroup<IntCounter>,
    pub offline_deliveries: PerGroup<IntCounter>,
    pub offline_delivery_latency: PerGroup<Histogram>,
    pub offline_catchup: PerGroup<Histogram>,
    pub messages_reordered: PerGroup<IntCounter>,
    pub deliveries_expected: PerGroup<IntCounter>,
    pub deliveries_received: PerGroup<IntCounter>,
    pub deliveries_foreign: PerGroup<IntCounter>,
    pub arrivals: PerGroup<IntCounter>,
    pub arrivals_turned_away: PerGroup<IntCounter>,
    pub departures: PerGroup<IntCounter>,
    pub rtt_window: PerGroup<LatencyWindow>,
    pub connect_window: PerGroup<LatencyWindow>,
    pub delivery_window: PerGroup<LatencyWindow>,
    pub login_window: PerGroup<LatencyWindow>,
    pub catchup_window: PerGroup<LatencyWindow>,
    load_changes: Vec<IntCounter>,
    pub message_rate_target: PerGroup<Gauge>,
    pub paused: IntGauge,
    pub profile_stage: IntGauge,
    pub config_reloads: IntCounterVec,
    pub sla_threshold: GaugeVec,
    pub event_loop_lag: Histogram,
    pub fds_available: IntGauge,
    pub generator_saturated: IntGauge,
}

impl Metrics {
    /// The metrics of a fleet of one group, with status windows of [`WINDOW`].
    pub fn new() -> Metrics {
        Metrics::with_window(WINDOW, &[crate::label::DEFAULT_GROUP.to_string()])
    }

    /// Metrics of a fleet of `groups` (their names, in order) whose status-API quantiles
    /// cover windows of `window`.
    pub fn with_window(window: Duration, groups: &[String]) -> Metrics {
        let registry = Registry::new();
        let reg = Registrar {
            registry: &registry,
            groups: if groups.len() > 1 { groups } else { &[] },
            count: groups.len().max(1),
        };
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
        let by_path = |name: &str, help: &str| {
            let mut paths = reg
                .grouped_counter_vec(name, help, "path", &["live", "sync"])
                .into_iter();
            let live = paths.next().expect("two paths");
            (live, paths.next().expect("two paths"))
        };
        let (messages_lost, messages_lost_sync) = by_path(
            "wsfleet_messages_lost_total",
            "Room deliveries missing, by path: live (after a later one from the same sender arrived and the grace period passed, or at session end) or sync (missed while the receiver was away and never delivered by the server's sync).",
        );
        let (messages_duplicated, messages_duplicated_sync) = by_path(
            "wsfleet_messages_duplicated_total",
            "Room deliveries received more than once, by path: live, or sync (a message missed while away, received twice through the sync or live and again in it).",
        );
        let metrics = Metrics {
            messages_lost,
            messages_lost_sync,
            messages_duplicated,
            messages_duplicated_sync,
            offline_deliveries: reg.grouped_counter(
                "wsfleet_offline_deliveries_total",
                "Room messages sent while their receiver was away (offline:) and delivered when it came back, through the server's sync.",
            ),
            offline_delivery_latency: reg.grouped_histogram(
                "wsfleet_offline_delivery_latency_seconds",
                "Latency of offline deliveries, from the sender's scheduled send time: it includes the receiver's time away.",
            ),
            offline_catchup: reg.grouped_histogram(
                "wsfleet_offline_catchup_seconds",
                "Time from a receiver's return (its login done) to the last message it had missed while away.",
            ),
            network_delay: reg.grouped_histogram(
                "wsfleet_network_delay_seconds",
                "Time a chunk of bytes spent in a shaped user's link (network:), either way: latency, jitter, bandwidth and stalls.",
            ),
            network_throttle: reg.grouped_histogram(
                "wsfleet_network_throttle_seconds",
                "The part of a chunk's time in a shaped link spent waiting for the link's bandwidth (its own transmission included).",
            ),
            network_stalls: reg.grouped_counter(
                "wsfleet_network_stalls_total",
                "Stalls of shaped users' links (network: {stall}): nothing moved either way for a while.",
            ),

            users_target: reg.grouped_gauge(
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
            users_active: reg.grouped_gauge(
                "wsfleet_users_active",
                "Users connected right now (handshake done).",
            ),
            users_offline: reg.grouped_gauge(
                "wsfleet_users_offline",
                "Users away on purpose (`offline:`): desired, not connected, coming back.",
            ),
            connects: reg.grouped_counter_vec(
                "wsfleet_connects_total",
                "Connection attempts by result: ok or the failure reason.",
                "result",
                &ConnectResult::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            ),
            connect_duration: reg.grouped_histogram(
                "wsfleet_connect_duration_seconds",
                "Handshake time of successful connects: TCP connect, TLS and HTTP upgrade.",
            ),
            disconnects: reg.grouped_counter_vec(
                "wsfleet_disconnects_total",
                "Connected users that lost their connection, by reason.",
                "reason",
                &DisconnectReason::ALL
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>(),
            ),
            messages_sent: reg.grouped_counter("wsfleet_messages_sent_total", "Messages sent by users."),
            messages_received: reg.grouped_counter(
                "wsfleet_messages_received_total",
                "Messages received by users (pongs excluded).",
            ),
            message_rtt: reg.grouped_histogram(
                "wsfleet_message_rtt_seconds",
                "Round trip of a message, from the time it was scheduled to be sent.",
            ),
            heartbeat_rtt: reg.grouped_histogram(
                "wsfleet_heartbeat_rtt_seconds",
                "Time from a WebSocket ping to its pong.",
            ),
            send_lag: reg.grouped_histogram(
                "wsfleet_send_lag_seconds",
                "How late messages left compared to their schedule (generator or socket lag).",
            ),
            bytes_sent: reg.grouped_counter(
                "wsfleet_bytes_sent_total",
                "Payload bytes of data frames sent.",
            ),
            bytes_received: reg.grouped_counter(
                "wsfleet_bytes_received_total",
                "Payload bytes of data frames received.",
            ),
            frames_invalid: reg.grouped_counter(
                "wsfleet_frames_invalid_total",
                "Server frames that matched an ack or delivery but lacked a readable id, sender, sequence or timestamp, or carried a sequence its sender never sent or a timestamp in the future.",
            ),
            frames_unmatched: reg.grouped_counter(
                "wsfleet_frames_unmatched_total",
                "Server frames that matched nothing the scenario expects (presence, banners, ...).",
            ),
            own_echoes: reg.grouped_counter(
                "wsfleet_frames_own_echo_total",
                "Deliveries of a user's own message, echoed back to it by the server (not deliveries).",
            ),
            frames_ignored: reg.grouped_counter(
                "wsfleet_frames_ignored_total",
                "Server frames the scenario's `ignore` rules expect and that carry nothing to measure.",
            ),
            deliveries_untracked: reg.grouped_counter(
                "wsfleet_deliveries_untracked_total",
                "Deliveries of messages sent before the receiver's books opened (it was still joining): received, not judged.",
            ),
            token_refreshes: reg.grouped_counter(
                "wsfleet_token_refreshes_total",
                "Fresh tokens sent (the scenario's `refresh`).",
            ),
            token_refresh_failures: reg.grouped_counter(
                "wsfleet_token_refresh_failures_total",
                "Token refreshes the server did not answer within refresh.timeout.",
            ),
            deflate_negotiated: reg.grouped_counter(
                "wsfleet_deflate_negotiated_total",
                "Connections that offered permessage-deflate (`compression: deflate`) and got it.",
            ),
            deflate_declined: reg.grouped_counter(
                "wsfleet_deflate_declined_total",
                "Connections that offered permessage-deflate and were answered without it (uncompressed).",
            ),
            deflate_bytes_sent: reg.grouped_counter(
                "wsfleet_deflate_bytes_sent_total",
                "Payload bytes of the messages sent compressed, before compression.",
            ),
            deflate_wire_bytes_sent: reg.grouped_counter(
                "wsfleet_deflate_wire_bytes_sent_total",
                "Payload bytes of the messages sent compressed, as they went on the wire.",
            ),
            deflate_bytes_received: reg.grouped_counter(
                "wsfleet_deflate_bytes_received_total",
                "Payload bytes of the compressed messages received, once inflated.",
            ),
            deflate_wire_bytes_received: reg.grouped_counter(
                "wsfleet_deflate_wire_bytes_received_total",
                "Payload bytes of the compressed messages received, as they came off the wire.",
            ),
            publish_refused: reg.grouped_counter(
                "wsfleet_publish_refused_total",
                "Frames an SSE target's publish endpoint answered with an error status (their acks never come).",
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
            resent: reg.grouped_counter(
                "wsfleet_messages_resent_total",
                "Messages sent again after a reconnect because they were never acknowledged (resend_unacked).",
            ),
            replies: reg.grouped_counter(
                "wsfleet_replies_total",
                "Frames sent to answer the server's own frames (the scenario's `replies`, e.g. Socket.IO's pong).",
            ),
            login_duration: reg.grouped_histogram(
                "wsfleet_login_duration_seconds",
                "Time from the upgrade to the last login step's expected reply.",
            ),
            delivery_latency: reg.grouped_histogram(
                "wsfleet_delivery_latency_seconds",
                "End-to-end latency of room messages, from the sender's scheduled send time to each receiver.",
            ),
            message_timeouts: reg.grouped_counter(
                "wsfleet_message_timeouts_total",
                "Messages whose acknowledgement did not arrive within ack_timeout (or before the server ended the connection).",
            ),
            messages_reordered: reg.grouped_counter(
                "wsfleet_messages_reordered_total",
                "Room deliveries that arrived after a later one from the same sender.",
            ),
            deliveries_expected: reg.grouped_counter(
                "wsfleet_deliveries_expected_total",
                "Room deliveries the fleet's senders expected: other members of the room per message sent.",
            ),
            deliveries_received: reg.grouped_counter(
                "wsfleet_deliveries_received_total",
                "Distinct room deliveries received.",
            ),
            deliveries_foreign: reg.grouped_counter(
                "wsfleet_deliveries_foreign_total",
                "Deliveries from senders that are not users of this process (real users in the room, another fleet): not tracked, not latency samples.",
            ),
            load_changes: Source::ALL
                .iter()
                .map(|s| load_changes_vec.with_label_values(&[s.as_str()]))
                .collect(),
            message_rate_target: reg.grouped_float_gauge(
                "wsfleet_message_rate_target",
                "Messages per second the fleet should send (users / message_interval, 0 when paused).",
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
                    &reg.group_labels(&["slo", "slo_quantile"]),
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
            arrivals: reg.grouped_counter(
                "wsfleet_arrivals_total",
                "Users of open-arrival groups who arrived and were let in.",
            ),
            arrivals_turned_away: reg.grouped_counter(
                "wsfleet_arrivals_turned_away_total",
                "Arrivals turned away: the group already held its `users`, or the generator could not connect (saturated).",
            ),
            departures: reg.grouped_counter(
                "wsfleet_departures_total",
                "Users of open-arrival groups whose stay ended.",
            ),
            rtt_window: reg.windows(window),
            connect_window: reg.windows(window),
            delivery_window: reg.windows(window),
            login_window: reg.windows(window),
            catchup_window: reg.windows(window),
            groups: groups.to_vec(),
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

    pub fn connect_result(&self, result: ConnectResult) -> &PerGroup<IntCounter> {
        &self.connects[result as usize]
    }

    pub fn load_changes(&self, source: Source) -> &IntCounter {
        &self.load_changes[source as usize]
    }

    pub fn disconnect(&self, reason: DisconnectReason) -> &PerGroup<IntCounter> {
        &self.disconnects[reason as usize]
    }

    /// The group names, in the fleet's order.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    fn histogram(&self, latency: Latency) -> &PerGroup<Histogram> {
        match latency {
            Latency::Rtt => &self.message_rtt,
            Latency::Delivery => &self.delivery_latency,
            Latency::Connect => &self.connect_duration,
            Latency::Login => &self.login_duration,
            Latency::Heartbeat => &self.heartbeat_rtt,
            Latency::SendLag => &self.send_lag,
            Latency::OfflineDelivery => &self.offline_delivery_latency,
            Latency::Catchup => &self.offline_catchup,
            Latency::NetworkDelay => &self.network_delay,
            Latency::NetworkThrottle => &self.network_throttle,
        }
    }

    fn window(&self, latency: Latency) -> Option<&PerGroup<LatencyWindow>> {
        match latency {
            Latency::Rtt => Some(&self.rtt_window),
            Latency::Delivery => Some(&self.delivery_window),
            Latency::Connect => Some(&self.connect_window),
            Latency::Login => Some(&self.login_window),
            Latency::Catchup => Some(&self.catchup_window),
            Latency::Heartbeat
            | Latency::SendLag
            | Latency::OfflineDelivery
            | Latency::NetworkDelay
            | Latency::NetworkThrottle => None,
        }
    }

    /// The message counters, as the status API and the run summary show them.
    pub fn message_counts(&self) -> MessageCounts {
        self.message_counts_in(None)
    }

    /// The message counters of the fleet (`None`) or of one group.
    pub fn message_counts_in(&self, group: Option<usize>) -> MessageCounts {
        MessageCounts {
            sent: self.messages_sent.get_in(group),
            received: self.messages_received.get_in(group),
            ack_timeouts: self.message_timeouts.get_in(group),
            lost: self.messages_lost.get_in(group) + self.messages_lost_sync.get_in(group),
            duplicated: self.messages_duplicated.get_in(group)
                + self.messages_duplicated_sync.get_in(group),
            offline: Offline {
                deliveries: self.offline_deliveries.get_in(group),
                lost: self.messages_lost_sync.get_in(group),
                duplicated: self.messages_duplicated_sync.get_in(group),
                catchups: match group {
                    Some(g) => self.offline_catchup.of(g).get_sample_count(),
                    None => self.offline_catchup.get_sample_count(),
                },
            },
            reordered: self.messages_reordered.get_in(group),
            deliveries_expected: self.deliveries_expected.get_in(group),
            deliveries_received: self.deliveries_received.get_in(group),
            deliveries_foreign: self.deliveries_foreign.get_in(group),
            frames_invalid: self.frames_invalid.get_in(group),
            frames_unmatched: self.frames_unmatched.get_in(group),
            own_echoes: self.own_echoes.get_in(group),
            frames_ignored: self.frames_ignored.get_in(group),
            deliveries_untracked: self.deliveries_untracked.get_in(group),
            token_refreshes: self.token_refreshes.get_in(group),
            token_refresh_failures: self.token_refresh_failures.get_in(group),
            compression: Compressed {
                negotiated: self.deflate_negotiated.get_in(group),
                declined: self.deflate_declined.get_in(group),
                bytes_sent: self.deflate_bytes_sent.get_in(group),
                wire_bytes_sent: self.deflate_wire_bytes_sent.get_in(group),
                bytes_received: self.deflate_bytes_received.get_in(group),
                wire_bytes_received: self.deflate_wire_bytes_received.get_in(group),
            },
            heartbeats: match group {
                Some(g) => self.heartbeat_rtt.of(g).get_sample_count(),
                None => self.heartbeat_rtt.get_sample_count(),
            },
            replies: self.replies.get_in(group),
            resent: self.resent.get_in(group),
        }
    }

    /// Exports the SLAs' thresholds (only those they set) as
    /// `wsfleet_sla_threshold{slo, slo_quantile}` (`slo_quantile` empty for a rate): the fleet's, or
    /// in a fleet of several groups each group's, labelled `group`.
    pub fn set_sla_thresholds(&self, slas: &Slas) {
        self.sla_threshold.reset();
        let fleet = [(None, &slas.fleet)];
        let groups = slas
            .groups
            .iter()
            .map(|(name, sla)| (Some(name.as_str()), sla));
        let all: Vec<_> = if slas.groups.is_empty() {
            fleet.into_iter().collect()
        } else {
            groups.collect()
        };
        for (group, sla) in all {
            for (slo, threshold) in sla.thresholds() {
                let (name, quantile) = (slo.name(), slo.quantile().map(|q| q.label()));
                let mut labels: Vec<&str> = group.into_iter().collect();
                labels.extend([name.as_str(), quantile.as_deref().unwrap_or("")]);
                self.sla_threshold.with_label_values(&labels).set(threshold);
            }
        }
    }

    /// The exact-quantile window of an SLA's measure.
    pub fn window_of(&self, measure: Measure) -> &PerGroup<LatencyWindow> {
        match measure {
            Measure::Rtt => &self.rtt_window,
            Measure::Delivery => &self.delivery_window,
            Measure::Connect => &self.connect_window,
            Measure::Login => &self.login_window,
            Measure::Catchup => &self.catchup_window,
        }
    }

    /// What the fleet (`None`) or one group showed since `mark` (since start without one),
    /// in the SLOs' terms, `connected_ratio` being the ratio at the end of that span.
    pub fn observed(
        &self,
        group: Option<usize>,
        mark: Option<&Mark>,
        connected_ratio: f64,
    ) -> Observed {
        let snapshot = |measure: Measure| {
            let window = self.window_of(measure);
            group.map_or_else(|| window.snapshot(), |g| window.of(g).snapshot())
        };
        let mut latencies: Vec<_> = Measure::ALL.iter().map(|&m| snapshot(m)).collect();
        let mut tally = self.tally_in(group);
        if let Some(mark) = mark {
            for (now, then) in latencies.iter_mut().zip(&mark.latencies) {
                // `then` is a prefix of the same totals: subtracting cannot underflow a bucket.
                let _ = now.subtract(then);
            }
            tally = tally.since(&mark.tally);
        }
        Observed {
            latencies,
            tally,
            connected_ratio,
        }
    }

    /// [`Metrics::observed`] as things stand now: each latency's last complete status window,
    /// the rates since start.
    pub fn observed_now(&self, group: Option<usize>, connected_ratio: f64) -> Observed {
        Observed {
            latencies: Measure::ALL
                .iter()
                .map(|&m| {
                    let window = self.window_of(m);
                    group.map_or_else(|| window.latest(), |g| window.of(g).latest())
                })
                .collect(),
            tally: self.tally_in(group),
            connected_ratio,
        }
    }

    /// The start of a span to judge by [`Metrics::observed`] (the fleet's).
    pub fn mark(&self) -> Mark {
        Mark {
            latencies: Measure::ALL
                .iter()
                .map(|&m| self.window_of(m).snapshot())
                .collect(),
            tally: self.tally(),
        }
    }

    /// Connection attempts so far, successful or not.
    pub fn connect_attempts(&self) -> u64 {
        self.connect_attempts_in(None)
    }

    /// Connection attempts of the fleet (`None`) or of one group.
    pub fn connect_attempts_in(&self, group: Option<usize>) -> u64 {
        self.connects.iter().map(|c| c.get_in(group)).sum()
    }

    /// Failed connection attempts so far, by result (every result but `ok`).
    pub fn connect_failures(&self) -> impl Iterator<Item = (ConnectResult, u64)> + '_ {
        self.connect_failures_in(None)
    }

    /// [`Metrics::connect_failures`] of the fleet (`None`) or of one group.
    pub fn connect_failures_in(
        &self,
        group: Option<usize>,
    ) -> impl Iterator<Item = (ConnectResult, u64)> + '_ {
        ConnectResult::ALL
            .iter()
            .filter(|&&r| r != ConnectResult::Ok)
            .map(move |&r| (r, self.connect_result(r).get_in(group)))
    }

    /// The counts of the SLA's rates so far ([`Tally`]).
    pub fn tally(&self) -> Tally {
        self.tally_in(None)
    }

    /// The counts of the SLA's rates of the fleet (`None`) or of one group.
    pub fn tally_in(&self, group: Option<usize>) -> Tally {
        let counts = self.message_counts_in(group);
        let unplanned = [
            DisconnectReason::ServerClose,
            DisconnectReason::HeartbeatTimeout,
            DisconnectReason::SendTimeout,
            DisconnectReason::Reset,
            DisconnectReason::Protocol,
        ];
        Tally {
            connect_attempts: self.connect_attempts_in(group),
            connect_failures: self.connect_failures_in(group).map(|(_, n)| n).sum(),
            sent: counts.sent,
            ack_timeouts: counts.ack_timeouts,
            deliveries_expected: counts.deliveries_expected,
            deliveries_received: counts.deliveries_received,
            lost: counts.lost,
            duplicated: counts.duplicated,
            unplanned_disconnects: unplanned
                .iter()
                .map(|&r| self.disconnect(r).get_in(group))
                .sum(),
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
struct Registrar<'a> {
    registry: &'a Registry,
    /// The `group` label's values; empty in a fleet of one group (no label).
    groups: &'a [String],
    /// Groups in the fleet.
    count: usize,
}

impl Registrar<'_> {
    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }

    /// The label names of a per-group family with `own` labels of its own.
    fn group_labels<'b>(&self, own: &[&'b str]) -> Vec<&'b str> {
        let group: &[&str] = if self.groups.is_empty() {
            &[]
        } else {
            &["group"]
        };
        group.iter().chain(own).copied().collect()
    }

    /// Each group's label values followed by `own`.
    fn values_of<'b>(&'b self, group: usize, own: &[&'b str]) -> Vec<&'b str> {
        let name = self.groups.get(group).map(String::as_str);
        name.into_iter().chain(own.iter().copied()).collect()
    }

    fn per_group<T>(&self, child: impl Fn(&[&str]) -> T) -> PerGroup<T> {
        PerGroup::new(
            (0..self.count)
                .map(|g| child(&self.values_of(g, &[])))
                .collect(),
        )
    }

    fn grouped_counter(&self, name: &str, help: &str) -> PerGroup<IntCounter> {
        let family = self.register(
            IntCounterVec::new(Opts::new(name, help), &self.group_labels(&[]))
                .expect("valid metric"),
        );
        self.per_group(|values| family.with_label_values(values))
    }

    /// A per-group counter for each value of `label` (in `values`' order).
    fn grouped_counter_vec(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: &[&str],
    ) -> Vec<PerGroup<IntCounter>> {
        let family = self.register(
            IntCounterVec::new(Opts::new(name, help), &self.group_labels(&[label]))
                .expect("valid metric"),
        );
        values
            .iter()
            .map(|value| {
                PerGroup::new(
                    (0..self.count)
                        .map(|g| family.with_label_values(&self.values_of(g, &[value])))
                        .collect(),
                )
            })
            .collect()
    }

    fn grouped_gauge(&self, name: &str, help: &str) -> PerGroup<IntGauge> {
        let family = self.register(
            prometheus::IntGaugeVec::new(Opts::new(name, help), &self.group_labels(&[]))
                .expect("valid metric"),
        );
        self.per_group(|values| family.with_label_values(values))
    }

    fn grouped_float_gauge(&self, name: &str, help: &str) -> PerGroup<Gauge> {
        let family = self.register(
            GaugeVec::new(Opts::new(name, help), &self.group_labels(&[])).expect("valid metric"),
        );
        self.per_group(|values| family.with_label_values(values))
    }

    fn grouped_histogram(&self, name: &str, help: &str) -> PerGroup<Histogram> {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        let family = self.register(
            prometheus::HistogramVec::new(opts, &self.group_labels(&[])).expect("valid metric"),
        );
        self.per_group(|values| family.with_label_values(values))
    }

    fn windows(&self, length: Duration) -> PerGroup<LatencyWindow> {
        self.per_group(|_| LatencyWindow::new(length))
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
    /// Deliveries of a user's own messages the server echoed back to it.
    pub own_echoes: u64,
    /// Frames the scenario's `ignore` rules matched.
    pub frames_ignored: u64,
    /// Deliveries of messages sent before the receiver's books opened: not judged.
    pub deliveries_untracked: u64,
    pub token_refreshes: u64,
    pub token_refresh_failures: u64,
    /// Heartbeats answered (round trips measured).
    pub heartbeats: u64,
    pub replies: u64,
    pub resent: u64,
    /// permessage-deflate, where it was offered.
    #[serde(default)]
    pub compression: Compressed,
    /// What users missed while away (`offline:`) and got back through the server's sync;
    /// `lost` and `duplicated` above include these.
    #[serde(default)]
    pub offline: Offline,
}

/// The sync path's books: messages sent while their receivers were away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Offline {
    /// First arrivals through the sync.
    pub deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Returns whose every missed message arrived (catch-up times measured).
    pub catchups: u64,
}

/// What permessage-deflate did: connections that got it or not, and the payload bytes of
/// compressed messages before and after compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Compressed {
    pub negotiated: u64,
    pub declined: u64,
    pub bytes_sent: u64,
    pub wire_bytes_sent: u64,
    pub bytes_received: u64,
    pub wire_bytes_received: u64,
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

/// The start of a span the SLA judges ([`Metrics::mark`]): every measure's totals and the
/// rates' counts.
pub struct Mark {
    latencies: Vec<Hdr<u64>>,
    tally: Tally,
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

    /// The last complete window, or the current one before the first ends.
    pub fn latest(&self) -> Hdr<u64> {
        let state = self.lock_rotated();
        state.previous.as_ref().unwrap_or(&state.current).clone()
    }

    /// Everything recorded since start (microseconds), HdrHistogram's V2 encoding in base64:
    /// what another process needs to merge this instance's samples exactly with its own.
    pub fn total_encoded(&self) -> String {
        LatencyWindow::encode(&self.snapshot())
    }

    /// `samples` in HdrHistogram's V2 encoding, base64.
    pub fn encode(samples: &Hdr<u64>) -> String {
        use base64::Engine as _;
        use hdrhistogram::serialization::Serializer as _;
        let mut bytes = Vec::new();
        // Writing into a Vec cannot fail; an empty string would read as "no samples".
        let _ = hdrhistogram::serialization::V2Serializer::new().serialize(samples, &mut bytes);
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
    fn several_groups_label_their_series_and_sum_to_the_fleet() {
        let names = ["chatters".to_string(), "bots".to_string()];
        let metrics = Metrics::with_window(WINDOW, &names);
        metrics.group(1).add(Count::Sent, 3);
        metrics.group(0).add(Count::Sent, 2);
        metrics
            .group(1)
            .observe(Latency::Rtt, Duration::from_millis(10));
        metrics
            .group(0)
            .observe(Latency::Rtt, Duration::from_millis(30));
        metrics.group(1).connect_result(ConnectResult::Ok).inc();
        let text = metrics.encode();
        assert!(
            text.contains("wsfleet_messages_sent_total{group=\"bots\"} 3"),
            "{text}"
        );
        assert!(text.contains("wsfleet_messages_sent_total{group=\"chatters\"} 2"));
        assert!(text.contains("wsfleet_connects_total{group=\"bots\",result=\"ok\"} 1"));
        assert!(text.contains("wsfleet_connects_total{group=\"chatters\",result=\"ok\"} 0"));
        assert_eq!(metrics.total(Count::Sent), 5);
        assert_eq!(metrics.messages_sent.of(1).get(), 3);
        let both = metrics.rtt_window.quantiles();
        assert_eq!(both.count, 2);
        assert!((both.max - 0.03).abs() < 0.001, "{both:?}");
        assert_eq!(metrics.rtt_window.of(1).quantiles().count, 1);
        // One group: no label at all, the series as they always were.
        let single = Metrics::new().encode();
        assert!(single.contains("wsfleet_messages_sent_total 0"));
        assert!(!single.contains("group="));
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
