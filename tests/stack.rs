//! The shipped monitoring stack, checked as far as this machine allows without Docker or
//! Grafana: the compose file parses strictly and every path it mounts exists; the Dockerfile
//! is multi-stage and runs as non-root; the dashboard is well-formed Grafana JSON whose
//! variables and datasource are all defined. (Prometheus, promtool and Alertmanager are run
//! for real by scripts/stack-e2e.)

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

#[test]
fn the_compose_file_is_valid_and_everything_it_mounts_exists() {
    let text = read("docker-compose.yml");
    let compose: compose_spec::Compose =
        serde_norway::from_str(&text).unwrap_or_else(|err| panic!("docker-compose.yml: {err}"));
    compose
        .validate_all()
        .unwrap_or_else(|err| panic!("docker-compose.yml: {err}"));
    let names: HashSet<String> = compose.services.keys().map(|k| k.to_string()).collect();
    for wanted in ["target", "wsfleet", "prometheus", "alertmanager", "grafana"] {
        assert!(names.contains(wanted), "service {wanted} missing");
    }
    // Bind mounts: every host path must exist in the repository.
    let raw: Value = serde_norway::from_str(&text).unwrap();
    let mut mounts = 0;
    for (name, service) in raw["services"].as_object().unwrap() {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            assert!(
                host.starts_with("./"),
                "{name}: mount {host} is not relative to the repo"
            );
            assert!(
                repo(host).exists(),
                "{name}: mounted path {host} does not exist"
            );
            mounts += 1;
        }
        if service.get("build").is_some() {
            assert!(
                repo("Dockerfile").is_file(),
                "{name} builds from a Dockerfile that is missing"
            );
        }
        for port in service["ports"].as_array().into_iter().flatten() {
            assert!(
                port.as_str().unwrap().starts_with("127.0.0.1:"),
                "{name}: publish on loopback only"
            );
        }
    }
    assert!(mounts >= 5, "found {mounts} mounts");
}

#[test]
fn the_dockerfile_is_multi_stage_and_runs_as_non_root() {
    let text = read("Dockerfile");
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage build: {froms} FROM lines");
    let user = text
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && !user.ends_with(" 0"), "{user}");
    // Everything `cargo build` reads, including the patched crate and the build script.
    let copied: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            // COPY SOURCE... DESTINATION
            let words: Vec<&str> = l.split_whitespace().collect();
            words
                .split_last()
                .map(|(_, sources)| sources.to_vec())
                .unwrap_or_default()
        })
        .collect();
    for input in [
        ".cargo",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "src",
        "vendor",
    ] {
        assert!(
            copied.contains(&input),
            "the Dockerfile copies {input}: {copied:?}"
        );
        assert!(repo(input).exists(), "{input} exists");
    }
}

/// Every panel, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// `$name` and `${name}` references in an expression.
fn variables(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name: String = rest
            .trim_start_matches('{')
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.push(name);
        }
    }
    found
}

#[test]
fn the_dashboard_is_well_formed_grafana_json() {
    let dashboard: Value = serde_json::from_str(&read("dashboards/wsfleet-overview.json")).unwrap();
    assert!(
        dashboard["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u.len() <= 40)
    );
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap() >= 39,
        "Grafana 11 schema"
    );
    let provisioned = read("dashboards/provisioning/datasources/prometheus.yml");
    let datasource_uid = provisioned
        .lines()
        .find_map(|l| l.trim().strip_prefix("uid: "))
        .expect("the datasource has a uid")
        .to_string();
    let defined: HashSet<String> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert!(defined.contains("job") && defined.contains("instance"));
    let builtins = ["__rate_interval", "__interval", "__range"];

    let mut ids = HashSet::new();
    let mut cells = HashSet::new();
    let mut queries = 0;
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate id in {title}"
        );
        let grid = &panel["gridPos"];
        let (x, y, w, h) = ["x", "y", "w", "h"]
            .map(|k| grid[k].as_u64().unwrap())
            .into();
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {grid}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "{title} overlaps another panel at ({cx}, {cy})"
                );
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"],
            datasource_uid.as_str(),
            "{title}"
        );
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert!(!expr.is_empty(), "{title}: empty expression");
            for var in variables(expr) {
                assert!(
                    defined.contains(&var) || builtins.contains(&var.as_str()),
                    "{title}: ${var} is not defined"
                );
            }
            queries += 1;
        }
    }
    assert!(queries >= 30, "{queries} queries");
    for annotation in dashboard["annotations"]["list"].as_array().unwrap() {
        if let Some(expr) = annotation["expr"].as_str() {
            assert_eq!(annotation["datasource"]["uid"], datasource_uid.as_str());
            assert!(
                variables(expr).iter().all(|v| defined.contains(v)),
                "{expr}"
            );
        }
    }
}
