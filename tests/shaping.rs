//! Weak networks inside the generator (`network:`), end to end against the reference
//! target: a group's latency shows in its round trips and no other group's, a bandwidth
//! cap in a big message's time, a stall past the server's idle timeout ends in a resync,
//! a handover comes back from another source address with nothing lost, and a group's link
//! changes while it runs (`PATCH`, profile stages).

#![allow(clippy::unwrap_used)]

mod helpers;

use std::time::Duration;

use helpers::*;
use serde_json::{Value, json};

fn group<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap()
}

/// Twenty `im` users chatting every 100 ms in two groups of ten: `phones` behind `network`,
/// `desks` on loopback as it is.
fn two_groups(target: &Target, status_window: &str, network: &str) -> String {
    format!(
        "target: {}\nusers: 20\nconnect_rate: 1000\nmessage_interval: 100ms\n\
         status_window: {status_window}\ngroups:\n\
         \x20 - {{name: phones, users: 10, scenario: {{extends: im, room_size: 10}}, network: {network}}}\n\
         \x20 - {{name: desks, users: 10, scenario: {{extends: im, room_size: 10}}}}\n",
        target.ws_url()
    )
}

/// One group behind 50 ms each way, one on loopback as it is: the first's round trip p50
/// is 100 ms above the second's (± 3 ms), and the second's stays a loopback one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_latency_shows_in_its_round_trips_and_no_one_elses() {
    let target = Target::start().await;
    let daemon = start_daemon(&two_groups(&target, "3s", "{latency: 50ms}")).await;
    let api = daemon.addr();
    wait_for("both groups connected", 30, || async {
        scrape(api).await.sum("wsfleet_users_active") == 20.0
    })
    .await;
    wait_for("300 round trips in each group", 30, || async {
        let m = scrape(api).await;
        ["phones", "desks"].iter().all(|g| {
            m.get(&format!(
                r#"wsfleet_message_rtt_seconds_count{{group="{g}"}}"#
            )) >= 300.0
        })
    })
    .await;
    let s = status(api).await;
    let p50 = |g: &str| {
        group(&s, g)["latency"]["message_rtt"]["p50"]
            .as_f64()
            .unwrap()
    };
    let (shaped, plain) = (p50("phones"), p50("desks"));
    let added = shaped - plain;
    eprintln!(
        "rtt p50: shaped {:.1} ms, plain {:.1} ms",
        shaped * 1e3,
        plain * 1e3
    );
    assert!(
        (0.097..=0.103).contains(&added),
        "50 ms each way adds 100 ms: {:.1} ms",
        added * 1e3
    );
    assert!(plain < 0.05, "the plain group is not shaped: {plain}");
    let m = scrape(api).await;
    assert!(m.get(r#"wsfleet_network_delay_seconds_count{group="phones"}"#) > 0.0);
    assert_eq!(
        m.get(r#"wsfleet_network_delay_seconds_count{group="desks"}"#),
        0.0
    );
    daemon.shutdown().await.unwrap();
}

/// The status once a whole status window (1 s here) has passed since now, so its quantiles
/// are of round trips that began after whatever was just changed.
async fn window_after_now(api: std::net::SocketAddr) -> Value {
    let uptime = |s: &Value| s["uptime_seconds"].as_f64().unwrap();
    let changed = uptime(&status(api).await);
    wait_for("a status window wholly after the change", 30, || async {
        uptime(&status(api).await) >= changed + 2.5
    })
    .await;
    status(api).await
}

/// A group given `network: none` is shaped, so its link can change while it runs: a `PATCH`
/// puts its users' connections behind 50 ms each way (their round trips rise by 100 ms,
/// the other group's do not move), a profile stage takes the link away again, and a group
/// without `network:` is refused a link, naming why, with nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_link_changes_while_it_runs() {
    let target = Target::start().await;
    let daemon = start_daemon(&two_groups(&target, "1s", "none")).await;
    let api = daemon.addr();
    wait_for("both groups connected", 30, || async {
        scrape(api).await.sum("wsfleet_users_active") == 20.0
    })
    .await;
    assert_eq!(status(api).await["network"], json!({"phones": "none"}));
    let rtt_p50 = |s: &Value, g: &str| {
        group(s, g)["latency"]["message_rtt"]["p50"]
            .as_f64()
            .unwrap()
    };

    let refused = patch_load(api, json!({"groups": {"desks": {"network": "3g"}}})).await;
    assert_eq!(refused.status(), 422);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["field"], "groups.desks.network", "{body}");
    assert_eq!(status(api).await["network"], json!({"phones": "none"}));

    let slowed = patch_load(
        api,
        json!({"groups": {"phones": {"network": {"latency": "50ms"}}}}),
    )
    .await;
    assert_eq!(slowed.status(), 200);
    assert_eq!(status(api).await["network"], json!({"phones": "50ms"}));
    // The connections already open take the new link: no one reconnects for it.
    let s = window_after_now(api).await;
    let added = rtt_p50(&s, "phones") - rtt_p50(&s, "desks");
    eprintln!(
        "rtt p50: phones {:.1} ms, desks {:.1} ms",
        rtt_p50(&s, "phones") * 1e3,
        rtt_p50(&s, "desks") * 1e3
    );
    // The link cannot deliver early (the shaper wakes at most half a 1 ms tick before a
    // byte's time in each direction), so the lower bound is tight. The upper bound only tells
    // "50 ms each way" from a link applied twice: this test shares two cores with the other
    // shaping tests, and a late timer wake-up on a busy runner adds milliseconds per
    // direction (a CI run measured 103.9 ms). The ± 3 ms figure is the first test's.
    assert!(
        (0.099..=0.130).contains(&added),
        "50 ms each way adds 100 ms: {:.1} ms",
        added * 1e3
    );
    assert!(rtt_p50(&s, "desks") < 0.05, "desks are not shaped: {s}");
    let m = scrape(api).await;
    assert_eq!(
        m.sum("wsfleet_disconnects_total"),
        0.0,
        "nobody reconnected for the change"
    );

    let profile = http()
        .put(format!("http://{api}/api/v1/profile"))
        .json(&json!({"stages": [{"duration": "1h", "groups": {"phones": {"network": "none"}}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), 200, "{}", profile.text().await.unwrap());
    assert_eq!(status(api).await["network"], json!({"phones": "none"}));
    let s = window_after_now(api).await;
    assert!(rtt_p50(&s, "phones") < 0.05, "back on loopback: {s}");
    daemon.shutdown().await.unwrap();
}

/// `down: 1mbit`: a 100 KB echo comes back in 0.8 s (± 10%); the time throttled is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kb_message_takes_0_8_s_down_a_1_mbit_link() {
    let target = Target::start().await;
    let daemon = start_daemon(&format!(
        "target: {}\nusers: 1\nscenario: echo\npayload_size: 100000\nmessage_interval: 1500ms\n\
         ack_timeout: 10s\nnetwork: {{down: 1mbit}}\n",
        target.ws_url()
    ))
    .await;
    let api = daemon.addr();
    wait_for("three round trips", 30, || async {
        scrape(api).await.get("wsfleet_message_rtt_seconds_count") >= 3.0
    })
    .await;
    let s = status(api).await;
    let p50 = s["latency"]["message_rtt"]["p50"].as_f64().unwrap();
    assert!((0.72..=0.88).contains(&p50), "100 KB at 1 Mbit/s: {p50} s");
    let m = scrape(api).await;
    assert!(
        m.get("wsfleet_network_throttle_seconds_sum") >= 1.5,
        "throttled time counted"
    );
    daemon.shutdown().await.unwrap();
}

/// A stall longer than the server's idle timeout: the server drops the user, which learns it
/// when the stall ends, reconnects and syncs what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_past_the_servers_timeout_ends_in_a_reconnect_and_a_resync() {
    let target = Target::start_with(wsfleet::target::TargetOptions {
        history: Some(wsfleet::target::store::HistoryLimits {
            messages: 10_000,
            age: Duration::from_secs(600),
        }),
        idle_timeout: Some(Duration::from_millis(800)),
        ..Default::default()
    })
    .await;
    let example =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/offline-sync.yaml");
    let overrides: serde_norway::Mapping = serde_norway::from_str(&format!(
        "target: {}\nusers: 4\nconnect_rate: 100\nmessage_interval: 200ms\nloss_grace: 1s\n\
         heartbeat: {{interval: 300ms, timeout: 10s}}\n\
         network: {{stall: {{every: 1s, for: 2s}}}}\n",
        target.ws_url()
    ))
    .unwrap();
    let mut config = wsfleet::config::Config::read(Some(&example), overrides)
        .unwrap()
        .config;
    config.offline = None;
    let daemon = start_daemon_with(config).await;
    let api = daemon.addr();
    wait_for(
        "a stall, the server's timeout, and the users back",
        30,
        || async {
            let m = scrape(api).await;
            let t = target.metrics().await;
            t.get("wsfleet_target_idle_timeouts_total") >= 1.0
                && m.get(r#"wsfleet_disconnects_total{reason="server_close"}"#) >= 1.0
                && t.get("wsfleet_target_sync_requests_total") >= 5.0
                && m.get("wsfleet_users_active") == 4.0
        },
    )
    .await;
    let m = scrape(api).await;
    assert!(m.get("wsfleet_network_stalls_total") >= 1.0);
    assert_eq!(
        m.get(r#"wsfleet_disconnects_total{reason="heartbeat_timeout"}"#),
        0.0,
        "the server's timeout, not ours"
    );
    daemon.shutdown().await.unwrap();
}

/// Handovers with two source addresses: the connection vanishes, the user is back after the
/// gap from the other address, and its books across the gap lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_comes_back_from_another_address_with_nothing_lost() {
    let target = Target::start_with(wsfleet::target::TargetOptions {
        history: Some(wsfleet::target::store::HistoryLimits {
            messages: 10_000,
            age: Duration::from_secs(600),
        }),
        idle_timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    })
    .await;
    target.faults(json!({})).await;
    let example =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/offline-sync.yaml");
    let overrides: serde_norway::Mapping = serde_norway::from_str(&format!(
        "target: {}\nusers: 6\nconnect_rate: 100\nmessage_interval: 100ms\nloss_grace: 1s\n\
         heartbeat: {{interval: 200ms, timeout: 5s}}\nsource_addresses: [127.0.0.2, 127.0.0.3]\n\
         network: {{handover: {{every: {{uniform: {{min: 500ms, max: 1500ms}}}}, gap: 300ms}}}}\n",
        target.ws_url()
    ))
    .unwrap();
    let mut config = wsfleet::config::Config::read(Some(&example), overrides)
        .unwrap()
        .config;
    config.offline = None;
    let daemon = start_daemon_with(config).await;
    let api = daemon.addr();
    wait_active(api, 6.0, 30).await;
    wait_for("handovers", 30, || async {
        scrape(api)
            .await
            .get(r#"wsfleet_disconnects_total{reason="handover"}"#)
            >= 12.0
    })
    .await;
    let metrics = std::sync::Arc::clone(daemon.metrics());
    let drain = daemon.finish().await.unwrap().drain.expect("drained");
    assert!(drain.settled, "{drain:?}");
    let counts = metrics.message_counts();
    assert_eq!((counts.lost, counts.duplicated), (0, 0), "{counts:?}");
    assert!(
        counts.offline.deliveries > 0,
        "what was missed came through the sync: {counts:?}"
    );
}

/// Two users on two source addresses, one each; a handed over user comes back from the
/// other address, never the one it left from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_user_comes_back_from_the_other_address() {
    let target = Target::start().await;
    let daemon = start_daemon(&format!(
        "target: {}\nusers: 2\nconnect_rate: 100\nscenario: idle\n\
         source_addresses: [127.0.0.2, 127.0.0.3]\n\
         network: {{handover: {{every: {{uniform: {{min: 1s, max: 4s}}}}, gap: 100ms}}}}\n",
        target.ws_url()
    ))
    .await;
    let api = daemon.addr();
    wait_active(api, 2.0, 30).await;
    let port = target.addr.port();
    assert_eq!(
        peers_of(port).len(),
        2,
        "one on each address: {:?}",
        peers_of(port)
    );
    // Each handover moves one user to the other address: after an odd number both share
    // one, after an even number they are apart again (round-robin alone keeps no such
    // rule). Read when four polls in a row (150 ms: the counters flush every 100 ms) saw
    // the same handovers and the same addresses, both users connected.
    let last = std::sync::Mutex::new((None, 0));
    let seen = std::sync::Mutex::new(None);
    wait_for("a settled state after a handover", 30, || async {
        let m = scrape(api).await;
        let handovers = m.get(r#"wsfleet_disconnects_total{reason="handover"}"#) as u64;
        let peers = peers_of(port);
        let state = (handovers, peers.clone());
        let mut last = last.lock().unwrap();
        let same = if last.0.as_ref() == Some(&state) {
            last.1 + 1
        } else {
            0
        };
        *last = (Some(state.clone()), same);
        let settled = handovers >= 1
            && m.get("wsfleet_users_active") == 2.0
            && peers.values().sum::<usize>() == 2
            && same >= 3;
        if settled {
            *seen.lock().unwrap() = Some(state);
        }
        settled
    })
    .await;
    let (handovers, peers) = seen.into_inner().unwrap().unwrap();
    let together = if handovers % 2 == 1 { 1 } else { 2 };
    assert_eq!(
        peers.len(),
        together,
        "after {handovers} handovers: {peers:?}"
    );
    daemon.shutdown().await.unwrap();
}
