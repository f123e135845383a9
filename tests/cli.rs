//! The `wsfleet` binary as a user runs it: invalid input, the embedded default, signals.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::process::Command;

use helpers::*;

/// Runs `wsfleet <args>` to completion and returns (exit code, stdout, stderr).
fn wsfleet(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_configs_exit_2_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("unknown field", "users: 5\nuserz: 3\n", "userz"),
        ("wrong type", "users: lots\n", "users"),
        ("negative rate", "connect_rate: -10\n", "connect_rate"),
        ("bad URL", "target: not a url\n", "target"),
        ("wrong scheme", "target: http://127.0.0.1/\n", "target"),
        (
            "bad duration",
            "heartbeat:\n  interval: often\n",
            "heartbeat.interval",
        ),
        (
            "nested unknown",
            "reconnect:\n  initial: 1s\n  maximum: 2s\n",
            "maximum",
        ),
    ];
    for (what, yaml, field) in cases {
        let path = dir.path().join("fleet.yaml");
        std::fs::write(&path, yaml).unwrap();
        for command in ["check", "run"] {
            let (code, _, stderr) = wsfleet(&[command, "-c", path.to_str().unwrap()]);
            assert_eq!(code, Some(2), "{what} ({command}): {stderr}");
            assert_eq!(
                stderr.trim_end().lines().count(),
                1,
                "{what}: one line: {stderr}"
            );
            assert!(stderr.contains(field), "{what}: names `{field}`: {stderr}");
            assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        }
    }

    let (code, _, stderr) = wsfleet(&["check", "-c", "/nonexistent/fleet.yaml"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("/nonexistent/fleet.yaml"), "{stderr}");

    let (code, _, stderr) = wsfleet(&["run", "--target", "http://127.0.0.1:1/"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("target"), "{stderr}");
}

#[test]
fn check_prints_the_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.yaml");
    std::fs::write(
        &path,
        "target: ws://127.0.0.1:9001/ws\nmessage_interval: 250ms\n",
    )
    .unwrap();
    let (code, stdout, stderr) = wsfleet(&["check", "-c", path.to_str().unwrap(), "--users", "42"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("users: 42"), "{stdout}");
    assert!(stdout.contains("message_interval: 250ms"), "{stdout}");
    assert!(
        stdout.contains("connect_rate: 100"),
        "defaults are shown: {stdout}"
    );
}

#[test]
fn check_summarises_each_groups_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.yaml");
    std::fs::write(
        &path,
        "target: ws://127.0.0.1:9001/ws\nusers: 100\n\
         groups:\n\
         \x20 - {name: people, share: 60%, scenario: {extends: im, rooms: [{size: 2, per_user: 2}, {size: 30}]}}\n\
         \x20 - {name: teams, share: 40%, scenario: {extends: im, room_size: 5, rooms_per_user: 3}}\n",
    )
    .unwrap();
    let (code, stdout, stderr) = wsfleet(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    // 60 people in blocks of 60 (lcm of 4 and 30): 30 + 30 rooms of 2, 2 of 30.
    let summary = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with("#") && l.contains(name))
            .unwrap()
    };
    let people = summary("people");
    assert!(
        people.contains("62 rooms") && people.contains("2×2 + 30"),
        "{stdout}"
    );
    // 40 teams users in 3 rooms of 5: two full blocks of 15 (9 rooms each) and a short one.
    let teams = summary("teams");
    assert!(
        teams.contains("26 rooms") && teams.contains("3×5"),
        "{stdout}"
    );

    std::fs::write(
        &path,
        "target: ws://127.0.0.1:9001/ws\nscenario: {extends: im, rooms_per_user: 2, rooms: [{size: 2}]}\n",
    )
    .unwrap();
    let (code, _, stderr) = wsfleet(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("rooms_per_user") && stderr.contains("per_user"),
        "{stderr}"
    );
}

/// The README's first command: `wsfleet run` with nothing else, here on a free API port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_shows_live_numbers_and_stops_on_sigterm() {
    let mut daemon = DaemonProcess::start(&["run", "--listen", "127.0.0.1:0"]).await;
    let api = daemon.api;
    wait_active(api, 10.0, 30).await;
    wait_for("message round trips", 30, || async {
        scrape(api).await.get("wsfleet_message_rtt_seconds_count") > 0.0
    })
    .await;
    // Exit status 0 only comes after every user closed and the servers stopped.
    assert_eq!(daemon.stop(), Some(0));
}

#[test]
fn every_example_config_is_valid() {
    let mut checked = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (code, _, stderr) = wsfleet(&["check", "-c", path.to_str().unwrap()]);
            assert_eq!(code, Some(0), "{}: {stderr}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 4, "examples found: {checked}");
}

#[test]
fn unknown_scenario_names_are_rejected() {
    let (code, _, stderr) = wsfleet(&["check", "--scenario", "chat"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("--scenario") && stderr.contains("im, echo, idle"),
        "{stderr}"
    );
}

/// Flags go through the same rules as the file: a flag cannot exceed a cap.
#[test]
fn a_flag_over_a_cap_is_rejected_naming_the_cap_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.yaml");
    std::fs::write(&path, "limits: {max_users: 20000}\n").unwrap();
    let file = path.to_str().unwrap();
    // Bounded even if the cap were skipped: the run would stop by itself after a second.
    let run = [
        "run",
        "-c",
        file,
        "--users",
        "50000",
        "--listen",
        "127.0.0.1:0",
        "--duration",
        "1s",
    ];
    for args in [&["check", "-c", file, "--users", "50000"][..], &run[..]] {
        let (code, _, stderr) = wsfleet(args);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("limits.max_users") && stderr.contains("--users"),
            "{stderr}"
        );
    }
    let (code, _, stderr) = wsfleet(&["run", "--duration", "500000000000y"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("30days"), "{stderr}");
}
