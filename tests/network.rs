//! Network faults, in a network namespace the test creates (root, iproute2 and nftables;
//! without them it says loudly that it skipped): added delay and jitter (a relay in the
//! namespace: this machine's kernel has no `tc netem`), 5% packet loss, a blackhole, half-open
//! peers. The timeline runs inside the namespace (`tests/network/faults.py`); this asserts on
//! what it observed.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::process::Command;

use helpers::*;

#[test]
fn delay_loss_blackholes_and_half_open_peers_are_survived() {
    if !root("a network namespace of its own")
        || tool("nft", "nftables (scripts/protocol-tools installs it)").is_none()
    {
        return;
    }
    let ns = format!("wsfleet-net-{}", std::process::id());
    let created = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap();
    if !created.success() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must allow network namespaces"
        );
        eprintln!("SKIPPED: this machine refuses to create a network namespace");
        return;
    }
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _cleanup = Cleanup(ns.clone());
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/network/faults.py");
    let out = Command::new("timeout")
        .args(["180", "ip", "netns", "exec", &ns, "python3", script, BIN])
        .arg(dir.path())
        .output()
        .unwrap();
    let seen = script_json(&out);
    let f = |key: &str| {
        seen[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {seen}"))
    };
    // Delay: 50 ms each way (+ up to 30 ms jitter) shows in the round trip: its median is at
    // least 100 ms (bucket bounds) where it was a few milliseconds.
    assert!(f("delayed_rtt_p50_ms") >= 100.0, "{seen}");
    assert!(f("delayed_rtt_p99_ms") > f("clean_rtt_p99_ms"), "{seen}");
    // Loss: retransmits show in the p99 (TCP's minimum RTO is 200 ms), nobody drops, nothing lost.
    assert!(f("lossy_rtt_p99_ms") >= 200.0, "{seen}");
    assert!(f("lossy_rtt_p99_ms") > f("clean_rtt_p99_ms"), "{seen}");
    assert_eq!(f("lossy_disconnects"), 0.0, "{seen}");
    assert_eq!(f("lossy_lost"), 0.0, "{seen}");
    // Blackhole: found by heartbeats within interval + timeout (1 s + 2 s) and some slack;
    // reconnects time out meanwhile; everyone is back after it.
    assert!(f("blackhole_detected_s") <= 6.0, "{seen}");
    assert!(f("blackhole_connect_timeouts") > 0.0, "{seen}");
    assert!(f("blackhole_recovered_s") > 0.0, "{seen}");
    // Half-open: found by heartbeats, not by a reset that never came.
    assert_eq!(f("half_open_reset_disconnects"), 0.0, "{seen}");
    assert_eq!(seen["recovered"], true);
}
