//! User groups end to end against the reference target: several kinds of users in one fleet,
//! each held, paced, measured and steered on its own, compared room by room with what the
//! target says it saw.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use helpers::*;
use serde_json::{Value, json};

/// 60 lurkers (a share of 100) in rooms of 20 who never speak, 30 chatters in rooms of 5,
/// 10 bots in rooms of 2; nobody sends until told.
fn three_groups(target: &Target) -> String {
    format!(
        "target: {}\nusers: 100\nconnect_rate: 1000\nloss_grace: 500ms\nstatus_window: 1s\n\
         heartbeat: {{interval: 1s, timeout: 5s}}\nmessage_interval: 0s\n\
         groups:\n\
         \x20 - {{name: lurkers, share: 60%, scenario: {{extends: im, room_size: 20}}}}\n\
         \x20 - {{name: chatters, users: 30, scenario: {{extends: im, room_size: 5}}}}\n\
         \x20 - {{name: bots, users: 10, scenario: {{extends: im, room_size: 2}}}}\n",
        target.ws_url()
    )
}

/// The groups of a status, by name.
fn groups(status: &Value) -> BTreeMap<String, Value> {
    status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["name"].as_str().unwrap().to_string(), g.clone()))
        .collect()
}

async fn rooms(target: &Target) -> BTreeMap<String, Value> {
    let rooms = get_json(&format!("http://{}/admin/rooms", target.addr)).await;
    serde_json::from_value(rooms["rooms"].clone()).unwrap()
}

/// Waits until every group holds its desired users.
async fn wait_groups_held(api: std::net::SocketAddr, want: &[(&str, i64)]) {
    wait_for("every group to hold its users", 60, || async {
        let groups = groups(&status(api).await);
        want.iter().all(|(name, users)| {
            groups[*name]["active"] == *users && groups[*name]["desired"] == *users
        })
    })
    .await;
}

async fn sent_by_group(api: std::net::SocketAddr) -> BTreeMap<String, f64> {
    groups(&status(api).await)
        .into_iter()
        .map(|(name, g)| (name, g["messages"]["sent"].as_f64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_groups_are_held_paced_and_judged_apart_and_match_the_targets_rooms() {
    let target = Target::start().await;
    let daemon = start_daemon(&three_groups(&target)).await;
    let api = daemon.addr();
    wait_groups_held(api, &[("lurkers", 60), ("chatters", 30), ("bots", 10)]).await;

    // Room by room, the target holds what the groups' topology says.
    let rooms_now = rooms(&target).await;
    let mut expected = BTreeMap::new();
    for (group, users, size) in [("lurkers", 60, 20), ("chatters", 30, 5), ("bots", 10, 2)] {
        for room in 0..users / size {
            expected.insert(format!("{group}-room-{room}"), size);
        }
    }
    let seen: BTreeMap<String, i64> = rooms_now
        .iter()
        .map(|(name, room)| (name.clone(), room["members"].as_i64().unwrap()))
        .collect();
    assert_eq!(seen, expected, "rooms as the target reports them");

    // One group's change moves that group alone.
    let status_before = groups(&status(api).await);
    let response = patch_load(api, json!({"groups": {"bots": {"users": 4}}})).await;
    assert_eq!(response.status(), 200);
    wait_groups_held(api, &[("lurkers", 60), ("chatters", 30), ("bots", 4)]).await;
    let scrape_now = scrape(api).await;
    assert_eq!(
        scrape_now.get(r#"wsfleet_disconnects_total{group="bots",reason="client_close"}"#),
        6.0
    );
    // An unknown group is refused and changes nothing.
    let unknown = patch_load(api, json!({"groups": {"trolls": {"users": 5}}})).await;
    assert_eq!(unknown.status(), 422);
    let body: Value = unknown.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("groups.trolls"),
        "{body}"
    );
    assert_eq!(
        groups(&status(api).await)["chatters"]["desired"],
        status_before["chatters"]["desired"]
    );

    // Each group's own pace: the chatters every 200 ms, the bots every 50 ms.
    let response = patch_load(
        api,
        json!({"groups": {"chatters": {"message_interval": "200ms"}, "bots": {"message_interval": "50ms"}}}),
    )
    .await;
    assert_eq!(response.status(), 200);
    // Once every sender is under way, count ten seconds of it.
    wait_for("every sending group under way", 30, || async {
        let sent = sent_by_group(api).await;
        sent["chatters"] >= 150.0 && sent["bots"] >= 80.0
    })
    .await;
    let (before, from) = (sent_by_group(api).await, Instant::now());
    wait_for("ten seconds of messages", 30, || async {
        from.elapsed() >= Duration::from_secs(10)
    })
    .await;
    let (after, span) = (sent_by_group(api).await, from.elapsed().as_secs_f64());
    for (group, scheduled) in [("lurkers", 0.0), ("chatters", 150.0), ("bots", 80.0)] {
        let rate = (after[group] - before[group]) / span;
        assert!(
            (rate - scheduled).abs() <= scheduled * 0.05,
            "{group}: {rate:.1} messages/s, scheduled {scheduled}"
        );
    }

    // The target drops half of one chatters room's deliveries, nothing elsewhere.
    target
        .faults(json!({"drop": 0.5, "only_room": "chatters-room-1"}))
        .await;
    wait_for("drops in that room", 30, || async {
        rooms(&target).await["chatters-room-1"]["dropped"]
            .as_u64()
            .unwrap()
            >= 100
    })
    .await;

    // Stop the faults, settle the books: lost is exactly what the target dropped, and only
    // in the chatters' books.
    target.faults(json!({"drop": 0.0, "only_room": ""})).await;
    // Nobody but the six bots ramped down ever left.
    let disconnects: f64 = scrape(api)
        .await
        .0
        .iter()
        .filter(|(series, _)| series.starts_with("wsfleet_disconnects_total{"))
        .map(|(_, value)| value)
        .sum();
    assert_eq!(disconnects, 6.0);
    let metrics = std::sync::Arc::clone(daemon.metrics());
    let finished = daemon.finish().await.unwrap();
    assert!(finished.drain.expect("drained").settled);
    let rooms_end = rooms(&target).await;
    let dropped: u64 = rooms_end
        .values()
        .map(|room| room["dropped"].as_u64().unwrap())
        .sum();
    assert_eq!(
        rooms_end["chatters-room-1"]["dropped"].as_u64().unwrap(),
        dropped,
        "only that room dropped"
    );
    let names = metrics.groups().to_vec();
    let target_delivered: u64 = rooms_end
        .iter()
        .filter(|(name, _)| name.starts_with("chatters-"))
        .map(|(_, room)| room["deliveries"].as_u64().unwrap())
        .sum();
    let target_messages: u64 = rooms_end
        .iter()
        .filter(|(name, _)| name.starts_with("chatters-"))
        .map(|(_, room)| room["messages"].as_u64().unwrap())
        .sum();
    let chatters = metrics.message_counts_in(Some(1));
    assert_eq!(
        (chatters.sent, chatters.deliveries_received),
        (target_messages, target_delivered),
        "the chatters' books are the target's"
    );
    let lost: BTreeMap<&str, u64> = names
        .iter()
        .enumerate()
        .map(|(g, name)| (name.as_str(), metrics.messages_lost.of(g).get()))
        .collect();
    assert_eq!(
        lost,
        BTreeMap::from([("lurkers", 0), ("chatters", dropped), ("bots", 0)])
    );
    for (g, name) in names.iter().enumerate() {
        let counts = metrics.message_counts_in(Some(g));
        assert_eq!(
            counts.deliveries_received + counts.lost,
            counts.deliveries_expected,
            "{name}: every expected delivery arrived or is counted lost"
        );
        assert_eq!(counts.duplicated, 0, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_arrivals_settle_at_rate_times_mean_stay() {
    let target = Target::start().await;
    // 100 arrivals a second staying ~1.79 s on average (median 1.5 s, p99 6 s): ~179 there.
    let yaml = format!(
        "target: {}\nusers: 1000\nconnect_rate: 2000\nmessage_interval: 0s\nstatus_window: 1s\n\
         arrivals: {{rate: 100, stay: {{lognormal: {{median: 1500ms, p99: 6s}}}}}}\n",
        target.ws_url()
    );
    let sigma = 4f64.ln() / 2.326_347_874;
    let expected = 100.0 * 1.5 * (sigma * sigma / 2.0).exp();
    let daemon = start_daemon(&yaml).await;
    let api = daemon.addr();
    // Past a few stays (the tail included), the population is in its steady state.
    wait_for("ten seconds of arrivals", 60, || async {
        scrape(api).await.get("wsfleet_arrivals_total") >= 1000.0
    })
    .await;
    let mut samples = Vec::new();
    let from = Instant::now();
    while from.elapsed() < Duration::from_secs(8) {
        samples.push(scrape(api).await.get("wsfleet_users_active"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let concurrency = samples.iter().sum::<f64>() / samples.len() as f64;
    assert!(
        (concurrency - expected).abs() <= expected * 0.15,
        "{concurrency:.1} users on average, expected {expected:.1}"
    );
    let m = scrape(api).await;
    let (arrived, left) = (
        m.get("wsfleet_arrivals_total"),
        m.get("wsfleet_departures_total"),
    );
    assert!(
        left > 0.0 && arrived > left,
        "{arrived} arrived, {left} left"
    );
    assert_eq!(m.get("wsfleet_arrivals_turned_away_total"), 0.0);
    // The target for such a group is what should be there, not the cap.
    assert_eq!(m.get("wsfleet_users_target"), expected.round());
    // Every departure of a connected user is a polite close (one still connecting just ends).
    let closes = m.get(r#"wsfleet_disconnects_total{reason="client_close"}"#);
    assert!(
        closes <= left && closes >= left * 0.95,
        "{closes} closes, {left} left"
    );
    let failures: f64 =
        m.0.iter()
            .filter(|(series, _)| series.starts_with("wsfleet_disconnects_total{"))
            .map(|(_, v)| v)
            .sum::<f64>()
            - closes;
    assert_eq!(failures, 0.0, "no other disconnects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_stage_moves_one_group() {
    let target = Target::start().await;
    let daemon = start_daemon(&format!(
        "target: {}\nconnect_rate: 500\nmessage_interval: 0s\ngroups:\n\
         \x20 - {{name: chatters, users: 6}}\n\x20 - {{name: bots, users: 2}}\n",
        target.ws_url()
    ))
    .await;
    let api = daemon.addr();
    wait_groups_held(api, &[("chatters", 6), ("bots", 2)]).await;
    let response = http()
        .put(format!("http://{api}/api/v1/profile"))
        .json(&json!({"stages": [
            {"duration": "1m", "groups": {"bots": {"users": 5}}},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    wait_groups_held(api, &[("chatters", 6), ("bots", 5)]).await;
    // A stage naming a group the fleet does not have is refused up front, naming it.
    let response = http()
        .put(format!("http://{api}/api/v1/profile"))
        .json(&json!({"stages": [{"duration": "1m", "groups": {"trolls": {"users": 5}}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("stages[0].groups.trolls"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_file_moves_the_groups_it_changes() {
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.yaml");
    let yaml = |bots: u32, interval: &str| {
        format!(
            "target: {}\nconnect_rate: 500\nmessage_interval: 0s\ngroups:\n\
             \x20 - {{name: chatters, users: 6, message_interval: {interval}}}\n\
             \x20 - {{name: bots, users: {bots}, sla: {{p99_rtt: 1s}}}}\n",
            target.ws_url()
        )
    };
    let daemon = start_daemon_from_file(&path, &yaml(2, "0s")).await;
    let api = daemon.addr();
    wait_groups_held(api, &[("chatters", 6), ("bots", 2)]).await;
    std::fs::write(&path, yaml(4, "250ms")).unwrap();
    let response = http()
        .post(format!("http://{api}/api/v1/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    wait_groups_held(api, &[("chatters", 6), ("bots", 4)]).await;
    let load = get_json(&format!("http://{api}/api/v1/load")).await;
    let interval: Vec<_> = load["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["message_interval"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(interval, ["250ms", "0s"], "{load}");
    assert_eq!(load["users_total"], 10);
    // The groups' SLAs are the file's: the bots' threshold is exported with its group.
    assert_eq!(
        scrape(api).await.get(
            r#"wsfleet_sla_threshold{group="bots",slo="p99_rtt_seconds",slo_quantile="0.99"}"#
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_fleet_splits_every_group_over_the_shards_and_sums_them() {
    let target = Target::start().await;
    let yaml = |index: u32| {
        format!(
            "target: {}\nconnect_rate: 500\nmessage_interval: 0s\nshard: {{index: {index}, count: 2}}\n\
             groups:\n\x20 - {{name: chatters, users: 20, scenario: {{extends: im, room_size: 10}}}}\n\
             \x20 - {{name: bots, users: 4, scenario: {{extends: im, room_size: 2}}}}\n",
            target.ws_url()
        )
    };
    let (a, b) = (start_daemon(&yaml(0)).await, start_daemon(&yaml(1)).await);
    for api in [a.addr(), b.addr()] {
        // Each shard holds whole rooms of each group: half of each here.
        wait_groups_held(api, &[("chatters", 10), ("bots", 2)]).await;
    }
    let fleet = format!("{},{}", a.addr(), b.addr());
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["ctl", "--fleet", &fleet])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ctl(&["set", "bots.users=8"]);
    for api in [a.addr(), b.addr()] {
        wait_groups_held(api, &[("chatters", 10), ("bots", 4)]).await;
    }
    let out = ctl(&["status"]);
    assert!(
        out.contains("group chatters: users 20 active of 20")
            && out.contains("group bots: users 8 active of 8"),
        "{out}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// 40 users in 3 rooms of 5 each (two full blocks of 15 and a short one of 10), sending every
/// `interval`.
fn three_rooms_each(target: &Target, interval: &str) -> String {
    format!(
        "target: {}\nusers: 40\nconnect_rate: 1000\nloss_grace: 500ms\nstatus_window: 1s\n\
         heartbeat: {{interval: 1s, timeout: 5s}}\nmessage_interval: {interval}\n\
         scenario: {{extends: im, room_size: 5, rooms_per_user: 3}}\n",
        target.ws_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_in_several_rooms_are_expected_room_by_room_and_exact_after_the_drain() {
    let target = Target::start().await;
    let daemon = start_daemon(&three_rooms_each(&target, "0s")).await;
    let api = daemon.addr();
    wait_active(api, 40.0, 60).await;

    // Every user joined three rooms; no room holds more than five, and the full blocks' rooms
    // are full.
    let joined = rooms(&target).await;
    let members: Vec<i64> = joined
        .values()
        .map(|room| room["members"].as_i64().unwrap())
        .collect();
    assert_eq!(members.iter().sum::<i64>(), 40 * 3, "{joined:?}");
    assert!(members.iter().all(|&m| (1..=5).contains(&m)), "{members:?}");
    assert!(
        members.iter().filter(|&&m| m == 5).count() >= 2 * 9,
        "{members:?}"
    );

    // Messages go to every room of their sender in turn.
    assert_eq!(
        patch_load(api, json!({"message_interval": "100ms"}))
            .await
            .status(),
        200
    );
    wait_for("messages in every room", 30, || async {
        rooms(&target)
            .await
            .values()
            .all(|room| room["messages"].as_u64().unwrap() >= 10)
    })
    .await;
    // One room of the second layer drops half its deliveries.
    target
        .faults(json!({"drop": 0.5, "only_room": "room-3"}))
        .await;
    wait_for("drops in that room", 30, || async {
        rooms(&target).await["room-3"]["dropped"].as_u64().unwrap() >= 50
    })
    .await;
    target.faults(json!({"drop": 0.0, "only_room": ""})).await;

    let metrics = std::sync::Arc::clone(daemon.metrics());
    let finished = daemon.finish().await.unwrap();
    assert!(finished.drain.expect("drained").settled);
    let rooms_end = rooms(&target).await;
    let total = |field: &str| -> u64 {
        rooms_end
            .values()
            .map(|room| room[field].as_u64().unwrap())
            .sum()
    };
    let counts = metrics.message_counts();
    assert_eq!(
        counts.sent,
        total("messages"),
        "every message reached one room"
    );
    assert_eq!(
        counts.deliveries_received,
        total("deliveries"),
        "{counts:?}"
    );
    assert_eq!(
        counts.lost,
        rooms_end["room-3"]["dropped"].as_u64().unwrap(),
        "lost is what that room dropped"
    );
    assert_eq!(counts.lost, total("dropped"), "and no other room dropped");
    assert_eq!(
        counts.deliveries_received + counts.lost,
        counts.deliveries_expected
    );
    assert_eq!((counts.duplicated, counts.reordered), (0, 0));
    assert_eq!(
        counts.deliveries_foreign, 0,
        "every delivery was of a shared room"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_table_puts_each_user_in_rooms_of_every_size_as_the_target_sees_them() {
    let target = Target::start().await;
    // Each user in two DMs and one room of 6: blocks of 12 (lcm of 2 × 2 and 6), two here.
    let config = format!(
        "target: {}\nusers: 24\nconnect_rate: 1000\nloss_grace: 500ms\nstatus_window: 1s\n\
         heartbeat: {{interval: 1s, timeout: 5s}}\nmessage_interval: 0s\n\
         scenario: {{extends: im, rooms: [{{size: 2, per_user: 2}}, {{size: 6}}]}}\n",
        target.ws_url()
    );
    let daemon = start_daemon(&config).await;
    let api = daemon.addr();
    wait_active(api, 24.0, 60).await;
    let joined = rooms(&target).await;
    let mut sizes: BTreeMap<i64, usize> = BTreeMap::new();
    for room in joined.values() {
        *sizes.entry(room["members"].as_i64().unwrap()).or_default() += 1;
    }
    assert_eq!(
        sizes,
        BTreeMap::from([(2, 24), (6, 4)]),
        "per block: 6 + 6 DMs and 2 rooms of 6"
    );

    // The table is fixed: room_size does not apply, and saying so changes nothing.
    let refused = patch_load(api, json!({"room_size": 4})).await;
    assert_eq!(refused.status(), 422);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("rooms"), "{body}");

    // Everyone is in: now they talk.
    let talk = patch_load(api, json!({"message_interval": "100ms"})).await;
    assert_eq!(talk.status(), 200);

    wait_for("messages in every room", 30, || async {
        rooms(&target)
            .await
            .values()
            .all(|room| room["messages"].as_u64().unwrap() >= 5)
    })
    .await;
    let metrics = std::sync::Arc::clone(daemon.metrics());
    let finished = daemon.finish().await.unwrap();
    assert!(finished.drain.expect("drained").settled);
    let rooms_end = rooms(&target).await;
    let counts = metrics.message_counts();
    let total = |field: &str| -> u64 {
        rooms_end
            .values()
            .map(|room| room[field].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        (counts.sent, counts.deliveries_received),
        (total("messages"), total("deliveries")),
        "{counts:?}"
    );
    assert_eq!(
        (counts.lost, counts.duplicated, counts.deliveries_foreign),
        (0, 0, 0)
    );
    assert_eq!(counts.deliveries_received, counts.deliveries_expected);
    // Round robin over a user's three rooms: its DMs carry two thirds of its messages.
    let in_dms: u64 = rooms_end
        .iter()
        .filter(|(name, _)| joined[*name]["members"].as_i64() == Some(2))
        .map(|(_, room)| room["messages"].as_u64().unwrap())
        .sum();
    assert!(
        in_dms.abs_diff(counts.sent * 2 / 3) <= 24,
        "{in_dms} of {} messages in DMs",
        counts.sent
    );
}

/// Five users join a short block while its rooms talk: the members already there are told of
/// the new count and expect the newcomers' messages (none is foreign), nothing is lost, and
/// what reached a newcomer before its books opened is counted apart (untracked), so our books
/// and the target's agree delivery for delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_block_expects_its_newcomers() {
    let target = Target::start().await;
    let daemon = start_daemon(&three_rooms_each(&target, "100ms")).await;
    let api = daemon.addr();
    wait_active(api, 40.0, 60).await;
    assert_eq!(patch_load(api, json!({"users": 45})).await.status(), 200);
    wait_active(api, 45.0, 60).await;
    let grown = scrape(api).await.get("wsfleet_deliveries_received_total");
    wait_for("deliveries after the growth", 30, || async {
        scrape(api).await.get("wsfleet_deliveries_received_total") >= grown + 1000.0
    })
    .await;
    let metrics = std::sync::Arc::clone(daemon.metrics());
    let finished = daemon.finish().await.unwrap();
    assert!(finished.drain.expect("drained").settled);
    let counts = metrics.message_counts();
    assert_eq!(
        (counts.deliveries_foreign, counts.lost, counts.duplicated),
        (0, 0, 0),
        "the old members expected the newcomers: {counts:?}"
    );
    let delivered: u64 = rooms(&target)
        .await
        .values()
        .map(|room| room["deliveries"].as_u64().unwrap())
        .sum();
    assert_eq!(
        counts.deliveries_received + counts.deliveries_untracked,
        delivered,
        "{counts:?}"
    );
}
