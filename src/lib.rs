//! wsfleet: a long-running load daemon for WebSocket / instant-messaging servers.
//!
//! # Layout
//!
//! Data flows one way: config / API -> desired [`load::Load`] (a `watch` channel) -> the
//! [`fleet`] supervisor -> one [`session`] task per simulated user -> [`metrics`] ->
//! `GET /metrics`. Imports follow the same direction: each module below imports only modules
//! listed before it (`scripts/module-cycles`, run by the tests, fails on a circle).
//!
//! - Leaves: [`clock`], [`files`] (files read without blocking, up to a cap), [`host`] (what
//!   the process may use of its machine), [`label`] (closed label sets), [`bearer`] (token
//!   checks), [`shard`], [`topology`] (who is in which room), [`roster`] (what each user publishes), [`runtimes`] (the user
//!   threads), [`heap`] (the allocator's figures), [`output`] (files a run writes, whole),
//!   [`codec`] (what the bytes of a frame mean, how streams are cut into frames).
//! - [`target`]: the reference IM server (with fault injection) for demos, tests and
//!   benchmarks; it uses only leaves.
//! - [`load`]: the part of the config that can change while the daemon runs, its patches and
//!   caps; [`groups`]: the fleet's groups of users and the live load of each; [`pacer`]: the connect-rate limiter; [`sla`]: the SLOs and the one judgement.
//! - Telemetry: [`metrics`] (the typed Prometheus registry and HdrHistogram windows),
//!   [`failures`] (the last failures, rate-limited logs), [`health`] (the generator judging its
//!   own numbers), [`history`] (what the page and report chart), held together by
//!   [`telemetry`].
//! - [`scenario`]: what users say and expect, as data: templates, matchers, sequence tracking.
//! - [`session`]: one simulated user — connect, log in, heartbeat, send, receive, reconnect —
//!   with the settings it owns ([`session::settings`]: heartbeat, reconnect, churn, TLS).
//! - [`profile`]: load shapes over time; [`arrivals`]: a group's open-arrival clock;
//!   [`fleet`]: the supervisor actor that holds the number
//!   of users at the desired count; [`capacity`]: the search for the most load the server
//!   holds within its SLA; [`progress`]: the periodic log line.
//! - [`config`]: the YAML schema gathered from the components' own settings types, defaults,
//!   validation (errors name the file's field) and the [`config::Plan`] a daemon runs.
//! - [`provenance`]: what a run was and what ran it; [`summary`] and [`report`]: the verdict
//!   and the HTML report, [`junit`]: the verdict as
//!   JUnit XML, [`compare`]: a run against a baseline, [`archive`]: reports kept for audit; [`reload`]: re-reading the
//!   config file; [`cli`]: command-line parsing.
//! - [`api`]: the HTTP control API, `/metrics` and the live page; [`ctl`]: the `wsfleet ctl`
//!   client, which reads the API's own typed [`api::Status`].
//! - [`daemon`]: the composition root: builds every task from a plan and runs them until
//!   shutdown.

/// Unit tests run on the binary's allocator (`main.rs`), so a test that counts heap bytes
/// reads jemalloc's own per-thread figures.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod api;
pub mod archive;
pub(crate) mod arrivals;
pub(crate) mod bearer;
pub mod capacity;
pub mod cli;
pub(crate) mod clock;
pub(crate) mod codec;
pub mod compare;
pub mod config;
pub mod ctl;
pub mod daemon;
pub(crate) mod failures;
pub(crate) mod files;
pub(crate) mod fleet;
pub(crate) mod groups;
pub(crate) mod health;
pub mod heap;
pub(crate) mod history;
pub(crate) mod host;
pub mod junit;
pub(crate) mod label;
pub(crate) mod load;
pub mod metrics;
pub mod output;
pub(crate) mod pacer;
pub(crate) mod profile;
pub(crate) mod progress;
pub mod provenance;
pub mod record;
pub(crate) mod reload;
pub mod report;
pub(crate) mod roster;
pub(crate) mod runtimes;
pub(crate) mod scenario;
pub(crate) mod session;
pub(crate) mod shard;
pub(crate) mod sla;
pub mod summary;
pub mod target;
pub(crate) mod telemetry;
pub(crate) mod topology;
