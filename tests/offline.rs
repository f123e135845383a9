//! Offline and back: users going away on a schedule to a server that keeps history, coming
//! back with a sync by cursor, and the books proving by sequence what arrived — with the
//! reference target's three sync bugs each caught and counted exactly.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::path::PathBuf;

use helpers::*;
use serde_json::json;
use wsfleet::metrics::MessageCounts;

/// The reference target keeping history, with `faults` in force.
async fn history_target(
    idle_timeout: Option<std::time::Duration>,
    faults: serde_json::Value,
) -> Target {
    let target = Target::start_with(wsfleet::target::TargetOptions {
        history: Some(wsfleet::target::store::HistoryLimits {
            messages: 100_000,
            age: std::time::Duration::from_secs(600),
        }),
        idle_timeout,
        ..Default::default()
    })
    .await;
    target.faults(faults).await;
    target
}

/// `examples/offline-sync.yaml` itself, aimed at `target`, with a quicker load and schedule.
fn config(target: &Target, offline: &str) -> wsfleet::config::Config {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/offline-sync.yaml");
    let overrides: serde_norway::Mapping = serde_norway::from_str(&format!(
        "target: {}\nusers: 20\nconnect_rate: 1000\nmessage_interval: 100ms\nloss_grace: 1s\n\
         ack_timeout: 5s\nheartbeat: {{interval: 500ms, timeout: 5s}}\noffline: {offline}\n",
        target.ws_url()
    ))
    .unwrap();
    wsfleet::config::Config::read(Some(&example), overrides)
        .unwrap()
        .config
}

/// Runs until `returns` users came back and synced something, drains, and gives the
/// fleet's counts after the drain (the books settled) and the target's.
async fn cycle(target: &Target, offline: &str, returns: f64) -> (MessageCounts, Scrape, Scrape) {
    let config = config(target, offline);
    let sla = config.sla.clone();
    let daemon = start_daemon_with(config).await;
    let api = daemon.addr();
    wait_for("users back from offline, synced", 60, || async {
        let m = scrape(api).await;
        let t = target.metrics().await;
        m.get(r#"wsfleet_disconnects_total{reason="offline"}"#) >= returns
            && t.get("wsfleet_target_synced_total") >= returns
    })
    .await;
    let metrics = std::sync::Arc::clone(daemon.metrics());
    let finished = daemon.finish().await.unwrap();
    let drain = finished.drain.expect("the fleet drained");
    assert!(drain.settled, "the books settled: {drain:?}");
    let text = metrics.encode();
    let summary =
        wsfleet::summary::Summary::collect(&metrics, 20, &sla, finished.run_time, drain.active)
            .render();
    let offline = metrics.message_counts().offline;
    let told = format!(
        "{} returns caught up  {} offline deliveries",
        offline.catchups, offline.deliveries
    );
    assert!(
        summary.contains(&told),
        "the summary tells the sync path: {summary}"
    );
    (
        metrics.message_counts(),
        Scrape::parse(&text),
        target.metrics().await,
    )
}

/// Users cycling offline under message load: nothing lost, nothing twice, what they missed
/// counted as offline deliveries, and every return caught up (one catch-up time each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_cycling_offline_lose_nothing_and_every_return_catches_up() {
    let target = history_target(None, json!({})).await;
    let (counts, m, t) = cycle(
        &target,
        "{every: {uniform: {min: 500ms, max: 1500ms}}, for: {uniform: {min: 300ms, max: 1s}}}",
        30.0,
    )
    .await;
    assert_eq!((counts.lost, counts.duplicated), (0, 0), "{counts:?}");
    assert!(counts.offline.deliveries > 0, "{counts:?}");
    assert!(
        counts.offline.deliveries >= t.get("wsfleet_target_synced_total") as u64,
        "what came through the sync is offline (and so is what was sent during a login): {counts:?}"
    );
    let returns = m.get(r#"wsfleet_disconnects_total{reason="offline"}"#);
    assert_eq!(
        counts.offline.catchups as f64, returns,
        "every return caught up"
    );
    assert!(m.get("wsfleet_offline_delivery_latency_seconds_count") > 0.0);
    assert_eq!(counts.frames_unmatched, 0, "{counts:?}");
}

/// A vanished user's server still thinks it connected until its idle timeout, and what it
/// writes to the dead socket meanwhile never arrives live: the sync by cursor brings it, so
/// nothing is lost — and none of it went through a close frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_vanished_user_missed_comes_back_through_the_sync() {
    let idle = Some(std::time::Duration::from_millis(1500));
    let target = history_target(idle, json!({})).await;
    let (counts, _, t) = cycle(
        &target,
        "{every: {uniform: {min: 500ms, max: 1s}}, for: 2s, how: vanish}",
        20.0,
    )
    .await;
    assert!(
        t.get("wsfleet_target_idle_timeouts_total") >= 1.0,
        "the server timed them out"
    );
    assert_eq!((counts.lost, counts.duplicated), (0, 0), "{counts:?}");
    assert!(counts.offline.deliveries > 0, "{counts:?}");
}

const CYCLING: &str =
    "{every: {uniform: {min: 500ms, max: 1500ms}}, for: {uniform: {min: 300ms, max: 1s}}}";

/// A sync that sends only the first message of each backlog: every message it cut is lost
/// on the sync path — exactly as many as the target cut — and nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_backlog_is_lost_exactly_on_the_sync_path() {
    let target = history_target(None, json!({"sync_truncate": 1})).await;
    let (counts, m, t) = cycle(&target, CYCLING, 20.0).await;
    let truncated = t.get("wsfleet_target_sync_truncated_total") as u64;
    assert!(truncated > 0, "the fault cut backlogs");
    assert_eq!(counts.offline.lost, truncated, "{counts:?}");
    assert_eq!(counts.lost, truncated, "nothing lost live: {counts:?}");
    assert_eq!(
        m.get(r#"wsfleet_messages_lost_total{path="sync"}"#) as u64,
        truncated
    );
    assert_eq!(counts.duplicated, 0, "{counts:?}");
}

/// A sync that sends each backlog twice: every second copy is a duplicate of the sync path,
/// exactly as many as the target wrote — the copies still on their way when a user leaves
/// or the drain ends are read before the server answers the close — and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_sent_twice_is_duplicated_exactly_on_the_sync_path() {
    let target = history_target(None, json!({"sync_twice": true})).await;
    let (counts, _, t) = cycle(&target, CYCLING, 20.0).await;
    let repeated = t.get("wsfleet_target_sync_duplicated_total") as u64;
    assert!(repeated > 0, "the fault repeated backlogs");
    assert_eq!(counts.offline.duplicated, repeated, "{counts:?}");
    assert_eq!(
        counts.duplicated, counts.offline.duplicated,
        "all on the sync path"
    );
    assert_eq!(counts.lost, 0, "{counts:?}");
}

/// A server that drops what arrives for a user while its sync runs: every dropped delivery
/// is lost, exactly as many as the target dropped. Half the users drop once (a storm) and
/// stay after: a user leaving again would have the next sync bring back what was dropped.
/// The fault starts once every user has heard from its room-mates: a sender that joined the
/// room after its receiver is known from its first delivery on (README "Loss, duplicates,
/// reordering"), so what the first logins' syncs dropped would go unjudged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_messages_dropped_during_the_sync_are_lost_exactly() {
    let target = history_target(None, json!({})).await;
    let mut config = config(&target, "{every: 1h, for: 1s}");
    config.offline = None;
    let daemon = start_daemon_with(config).await;
    let api = daemon.addr();
    wait_active(api, 20.0, 30).await;
    wait_for("every sender heard (5 messages each)", 30, || async {
        scrape(api).await.get("wsfleet_deliveries_received_total") >= 20.0 * 9.0 * 5.0
    })
    .await;
    target.faults(json!({"sync_drop_live": "300ms"})).await;
    let storm = http()
        .post(format!("http://{api}/api/v1/disrupt"))
        .json(&json!({"share": "50%", "back_within": "1s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(storm.status(), 200);
    wait_for("the storm's users back and synced", 30, || async {
        let m = scrape(api).await;
        let away = m.get(r#"wsfleet_disconnects_total{reason="offline"}"#);
        // A return whose backlog lost a message to the fault never catches up: the
        // syncs asked for (after the 20 first logins') are the event to wait for.
        away >= 1.0
            && m.get("wsfleet_users_active") == 20.0
            && target
                .metrics()
                .await
                .get("wsfleet_target_sync_requests_total")
                >= 20.0 + away
    })
    .await;
    let metrics = std::sync::Arc::clone(daemon.metrics());
    let drain = daemon
        .finish()
        .await
        .unwrap()
        .drain
        .expect("the fleet drained");
    assert!(drain.settled, "the books settled: {drain:?}");
    let counts = metrics.message_counts();
    let dropped = target
        .metrics()
        .await
        .get("wsfleet_target_sync_dropped_total") as u64;
    assert!(dropped > 0, "the fault dropped deliveries");
    assert_eq!(counts.lost, dropped, "{counts:?}");
    assert_eq!(counts.duplicated, 0, "{counts:?}");
}

/// A sync storm (`POST /api/v1/disrupt`): 30% of 5,000 users drop at once and come back
/// within 3 s, with no `offline:` schedule (a scenario whose deliveries carry a cursor keeps
/// its books across the gap). About 1,500 drop; every one comes back through the connect
/// pacer (so it takes at least returns / connect_rate), syncs and catches up; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_storm_of_30_percent_of_5000_users_catches_up_at_the_connect_rate() {
    let target = history_target(None, json!({})).await;
    let mut config = config(&target, "{every: 1h, for: 1s}");
    config.users = 5000;
    config.connect_rate = 500.0;
    config.message_interval = std::time::Duration::from_secs(10);
    config.offline = None;
    let daemon = start_daemon_with(config).await;
    let api = daemon.addr();
    wait_active(api, 5000.0, 60).await;
    wait_for("deliveries flowing", 30, || async {
        scrape(api).await.get("wsfleet_deliveries_received_total") >= 5000.0
    })
    .await;
    let refused = http()
        .post(format!("http://{api}/api/v1/disrupt"))
        .json(&json!({"share": "130%"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422, "a share above 100% is refused");
    assert!(refused.text().await.unwrap().contains("share"));
    let started = std::time::Instant::now();
    let answer: serde_json::Value = http()
        .post(format!("http://{api}/api/v1/disrupt"))
        .json(&json!({"share": "30%", "back_within": "3s"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["storm"], 1, "{answer}");
    wait_for("the storm's users gone", 10, || async {
        scrape(api)
            .await
            .get(r#"wsfleet_disconnects_total{reason="offline"}"#)
            >= 1000.0
    })
    .await;
    wait_for("every one back and caught up", 60, || async {
        let m = scrape(api).await;
        m.get("wsfleet_users_active") == 5000.0
            && m.get("wsfleet_offline_catchup_seconds_count")
                == m.get(r#"wsfleet_disconnects_total{reason="offline"}"#)
    })
    .await;
    let back_after = started.elapsed().as_secs_f64();
    let m = scrape(api).await;
    let dropped = m.get(r#"wsfleet_disconnects_total{reason="offline"}"#);
    assert!(
        (1340.0..=1660.0).contains(&dropped),
        "about 30% of 5,000: {dropped}"
    );
    assert!(
        back_after >= dropped / 500.0 * 0.9,
        "{dropped} returns at 500/s took {back_after:.1} s: the pacer was honoured"
    );
    let p50 = histogram_quantile(&m, "wsfleet_offline_catchup_seconds", 0.5);
    let p99 = histogram_quantile(&m, "wsfleet_offline_catchup_seconds", 0.99);
    eprintln!(
        "sync storm: {dropped} of 5,000 dropped, all back and caught up {back_after:.1} s after \
         the storm ({:.0} returns/s); catch-up p50 {:.0} ms, p99 {:.0} ms",
        dropped / back_after,
        p50 * 1e3,
        p99 * 1e3
    );
    let metrics = std::sync::Arc::clone(daemon.metrics());
    daemon.finish().await.unwrap();
    let counts = metrics.message_counts();
    assert_eq!((counts.lost, counts.duplicated), (0, 0), "{counts:?}");
    assert!(counts.offline.deliveries > 0, "{counts:?}");
}
