//! wsfleet: a long-running load daemon for WebSocket / instant-messaging servers.
//!
//! # Layout
//!
//! Data flows one way: config / API -> desired [`load::Load`] (a `watch` channel) -> the
//! [`fleet`] supervisor -> one [`session`] task per simulated user -> [`metrics`] ->
//! `GET /metrics`.
//!
//! - [`config`]: the YAML schema, defaults and validation; errors name the field. [`files`]:
//!   the files it names, read without blocking and up to a cap.
//! - [`load`]: the part of the config that can change while the daemon runs, and its patches.
//! - [`fleet`]: the supervisor actor that holds the number of users at the desired count.
//! - [`session`]: one simulated user: connect, log in, heartbeat, send, receive, reconnect.
//! - [`scenario`]: what users say and expect, as data: templates, matchers, sequence tracking.
//! - [`codec`]: what the bytes of a frame mean (text, MQTT, ...) and how byte streams are cut
//!   into frames.
//! - [`pacer`] and [`backoff`]: the connect-rate limiter shared by all users, and reconnect delays.
//! - [`metrics`]: the typed Prometheus registry and HdrHistogram windows; [`heap`]: the
//!   allocator's own figures and heap profile.
//! - [`api`]: the HTTP control API (tokens checked by [`bearer`]), `/metrics` and the live page; [`history`] and [`report`]:
//!   what the page and the run report show; [`output`]: the files a run writes, whole.
//! - [`capacity`]: the search for the most load the server holds within its SLA.
//! - [`health`]: the generator judging its own numbers; [`host`]: what the process may use of
//!   its machine (files, memory), for the default caps.
//! - [`daemon`]: wires the parts together and runs them until shutdown.
//! - [`target`]: the reference IM server (with fault injection) for demos, tests and benchmarks.
//! - [`cli`]: command-line parsing, shared by `main` and the tests.

pub mod api;
pub mod backoff;
pub mod bearer;
pub mod capacity;
pub mod cli;
pub mod clock;
pub mod codec;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod failures;
pub mod files;
pub mod fleet;
pub mod health;
pub mod heap;
pub mod history;
pub mod host;
pub mod load;
pub mod metrics;
pub mod output;
pub mod pacer;
pub mod profile;
pub mod progress;
pub mod reload;
pub mod report;
pub mod roster;
pub mod runtimes;
pub mod scenario;
pub mod session;
pub mod shard;
pub mod summary;
pub mod target;
