//! Shared test helpers: targets (in-process or as a real process), daemons, scraping and
//! waiting on conditions. Every wait is bounded; every process started is killed on drop.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub mod raw;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wsfleet::config::Config;
use wsfleet::daemon::Daemon;

pub const BIN: &str = env!("CARGO_BIN_EXE_wsfleet");

/// A reference target served in-process on a free loopback port.
pub struct Target {
    pub addr: SocketAddr,
    /// Where its /metrics and admin API are: `addr`, or a lean target's `--admin-listen`.
    pub admin: SocketAddr,
    shutdown: CancellationToken,
}

impl Target {
    pub async fn start() -> Target {
        Target::start_with(wsfleet::target::TargetOptions::default()).await
    }

    pub async fn start_with(options: wsfleet::target::TargetOptions) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = options.admin_listen.unwrap_or(addr);
        let shutdown = CancellationToken::new();
        tokio::spawn(wsfleet::target::serve_with(
            listener,
            options,
            shutdown.clone(),
        ));
        Target {
            addr,
            admin,
            shutdown,
        }
    }

    /// A `--lean` target, its admin API on a port of its own (up once this returns).
    pub async fn start_lean() -> Target {
        let target = Target::start_with(wsfleet::target::TargetOptions {
            lean: true,
            admin_listen: Some(free_addr()),
            ..Default::default()
        })
        .await;
        wait_for("the lean target's admin API", 20, || async {
            http()
                .get(format!("http://{}/healthz", target.admin))
                .send()
                .await
                .is_ok()
        })
        .await;
        target
    }

    /// `PATCH /admin/faults` on the target; panics unless it is accepted.
    pub async fn faults(&self, body: serde_json::Value) {
        let response = http()
            .patch(format!("http://{}/admin/faults", self.admin))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    /// `POST /admin/close-all`: every open connection closed (1001).
    pub async fn close_all(&self) {
        http()
            .post(format!("http://{}/admin/close-all", self.admin))
            .send()
            .await
            .unwrap();
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn metrics(&self) -> Scrape {
        scrape(self.admin).await
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A real third-party server a test started (mosquitto, nats-server, prosody), with the
/// directory of its config: killed and removed when dropped.
pub struct ServerProcess {
    child: Child,
    pub dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Runs `program` with `args` in `dir` (which holds its config) and waits until each of
    /// `listens` accepts TCP.
    pub async fn spawn(
        program: &std::path::Path,
        args: &[&str],
        dir: tempfile::TempDir,
        listens: &[SocketAddr],
    ) -> ServerProcess {
        let child = Command::new(program)
            .args(args)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("{}: {err}", program.display()));
        let server = ServerProcess { child, dir };
        for &addr in listens {
            wait_for(
                &format!("{} to listen on {addr}", program.display()),
                20,
                || async { tokio::net::TcpStream::connect(addr).await.is_ok() },
            )
            .await;
        }
        server
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reference target as a real `wsfleet target` process, so a test can kill it.
pub struct TargetProcess {
    pub addr: SocketAddr,
    child: Child,
}

impl TargetProcess {
    pub async fn start(addr: SocketAddr) -> TargetProcess {
        let child = Command::new(BIN)
            .args(["target", "--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let target = TargetProcess { addr, child };
        wait_for("the target process to serve /healthz", 30, || async {
            http()
                .get(format!("http://{addr}/healthz"))
                .send()
                .await
                .is_ok()
        })
        .await;
        target
    }

    /// SIGKILL: the kernel resets every connection, no close frames.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn metrics(&self) -> Scrape {
        scrape(self.addr).await
    }
}

impl Drop for TargetProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts a daemon in-process from YAML, its API on a free loopback port.
pub async fn start_daemon(yaml: &str) -> Daemon {
    let config = Config::parse(yaml).unwrap_or_else(|err| panic!("test config: {err}"));
    start_daemon_with(config).await
}

/// Writes `yaml` to `path` and starts a daemon from that file (so it can be reloaded, and
/// relative paths in it resolve next to it).
pub async fn start_daemon_from_file(path: &std::path::Path, yaml: &str) -> Daemon {
    std::fs::write(path, yaml).unwrap();
    let config = Config::from_file(path).unwrap_or_else(|err| panic!("test config: {err}"));
    start_daemon_with(config).await
}

/// Starts `config`'s daemon. Unless the test sets `self_health.max_loop_lag` itself, the
/// generator's loop-lag threshold is put out of reach: on a shared runner the suite's own load
/// makes the generator call itself saturated, which rightly stops it adding users — and a test
/// about ramps or reconnects would then wait for users that never come. Saturation has tests of
/// its own, which set the threshold.
pub async fn start_daemon_with(mut config: Config) -> Daemon {
    if config.self_health.max_loop_lag == Duration::from_millis(50) {
        config.self_health.max_loop_lag = Duration::from_secs(10);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Daemon::start(config, listener, CancellationToken::new())
        .await
        .unwrap()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// One scrape of a `/metrics` endpoint: series (`name{labels}`) to value.
#[derive(Debug, Default)]
pub struct Scrape(pub BTreeMap<String, f64>);

impl Scrape {
    /// The value of one series, 0 if absent.
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// The sum over every series of a metric name, whatever the labels.
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| series.split('{').next() == Some(name))
            .map(|(_, v)| v)
            .sum()
    }
}

/// A GET answered with text (any status).
pub async fn get_text(url: &str) -> String {
    http().get(url).send().await.unwrap().text().await.unwrap()
}

pub async fn scrape(addr: SocketAddr) -> Scrape {
    Scrape::parse(&get_text(&format!("http://{addr}/metrics")).await)
}

impl Scrape {
    /// The series of a Prometheus text exposition.
    pub fn parse(text: &str) -> Scrape {
        Scrape(
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| {
                    let (series, value) = line.rsplit_once(' ')?;
                    Some((series.to_string(), value.parse().ok()?))
                })
                .collect(),
        )
    }
}

/// Polls `condition` every 50 ms until it holds; panics after `seconds`.
pub async fn wait_for<F, Fut>(what: &str, seconds: u64, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {seconds} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `progress` reaches `goal`, for as long as it keeps moving: it fails only when
/// the figure has not grown for `stall` seconds (or after `bound` seconds in all). A load that
/// a debug build on a busy machine reaches slowly is still reached; one that stops is not.
pub async fn wait_progressing<F, Fut>(
    what: &str,
    goal: f64,
    stall: u64,
    bound: u64,
    mut progress: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = f64>,
{
    let start = tokio::time::Instant::now();
    let (mut best, mut moved) = (f64::NEG_INFINITY, start);
    loop {
        let now_at = progress().await;
        if now_at >= goal {
            return;
        }
        let now = tokio::time::Instant::now();
        if now_at > best {
            (best, moved) = (now_at, now);
        }
        assert!(
            now.duration_since(moved) < Duration::from_secs(stall),
            "{what}: stuck at {best} of {goal} for {stall} s"
        );
        assert!(
            now.duration_since(start) < Duration::from_secs(bound),
            "{what}: {best} of {goal} after {bound} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `series` counts at least `count`, then checks that `detail` is in the error
/// samples of the status API.
pub async fn counted_with_sample(api: SocketAddr, series: &str, count: f64, detail: &str) {
    wait_for(&format!("{count} of {series}"), 30, || async {
        scrape(api).await.get(series) >= count
    })
    .await;
    let errors = status(api).await["errors"].to_string();
    assert!(errors.contains(detail), "{errors}");
}

/// The Python of `.venv-test` with selenium, and Chromium's driver; `None` (saying loudly
/// that the test is skipped, or failing in CI) when either is missing.
pub fn selenium() -> Option<std::path::PathBuf> {
    let python = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/python");
    tool(
        "chromedriver",
        "Debian's chromium-driver (the README's test command installs it)",
    )?;
    if !python.is_file() {
        tool(
            "no-such-program-venv",
            "the .venv-test with selenium (scripts/test makes it)",
        );
        return None;
    }
    Some(python)
}

/// Runs `tests/browser/SCRIPT` with `args` under `python` (bounded to two minutes): what it
/// saw, as JSON.
pub async fn browse(python: &std::path::Path, script: &str, args: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new(python)
        .arg(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/browser")
                .join(script),
        )
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), out)
        .await
        .unwrap()
        .unwrap();
    script_json(&out)
}

/// Waits until the daemon reports exactly `users` active users.
pub async fn wait_active(api: SocketAddr, users: f64, seconds: u64) {
    wait_for(
        &format!("wsfleet_users_active == {users}"),
        seconds,
        || async { scrape(api).await.get("wsfleet_users_active") == users },
    )
    .await;
}

pub async fn patch_load(api: SocketAddr, body: serde_json::Value) -> reqwest::Response {
    http()
        .patch(format!("http://{api}/api/v1/load"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// `GET /api/v1/status` as JSON.
pub async fn status(api: SocketAddr) -> serde_json::Value {
    get_json(&format!("http://{api}/api/v1/status")).await
}

/// A GET answered with JSON.
pub async fn get_json(url: &str) -> serde_json::Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

/// The `q` quantile of a Prometheus histogram, as the upper bound of the bucket it falls in.
pub fn histogram_quantile(scrape: &Scrape, name: &str, q: f64) -> f64 {
    let mut buckets: Vec<(f64, f64)> = scrape
        .0
        .iter()
        .filter_map(|(series, count)| {
            let le = series
                .strip_prefix(&format!("{name}_bucket{{le=\""))?
                .strip_suffix("\"}")?;
            Some((le.parse().unwrap_or(f64::INFINITY), *count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map_or(f64::NAN, |b| b.0)
}

/// `wsfleet` run as a real process; its API address is read from its log, which is kept.
/// Killed on drop.
pub struct DaemonProcess {
    pub api: SocketAddr,
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl DaemonProcess {
    pub async fn start(args: &[&str]) -> DaemonProcess {
        let mut command = Command::new(BIN);
        command.args(args);
        DaemonProcess::spawn(command).await
    }

    /// [`DaemonProcess::start`] with at most `files` open files (`ulimit -n`).
    pub async fn start_with_file_limit(files: u64, args: &[&str]) -> DaemonProcess {
        let mut command = Command::new("sh");
        command
            .args([
                "-c",
                &format!("ulimit -n {files} && exec \"$0\" \"$@\""),
                BIN,
            ])
            .args(args);
        DaemonProcess::spawn(command).await
    }

    async fn spawn(mut command: Command) -> DaemonProcess {
        use std::io::{BufRead, BufReader};
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            // Keep draining so the child never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                if let Some(addr) = line.split("listening on http://").nth(1)
                    && let (Some(tx), Ok(addr)) = (
                        addr_tx.take(),
                        addr.split_whitespace()
                            .next()
                            .unwrap_or("")
                            .parse::<SocketAddr>(),
                    )
                {
                    let _ = tx.send(addr);
                }
            }
        });
        let api = tokio::time::timeout(Duration::from_secs(30), addr_rx)
            .await
            .expect("the daemon logs its API address within 30 s")
            .expect("the daemon exited before listening");
        DaemonProcess { api, child, log }
    }

    /// How many log lines so far contain every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .count()
    }

    /// Every log line so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (at most `seconds`) for a log line containing every one of `needles`; returns it.
    pub async fn wait_log(&self, needles: &[&str], seconds: u64) -> String {
        let find = || {
            self.log
                .lock()
                .unwrap()
                .iter()
                .find(|line| needles.iter().all(|n| line.contains(n)))
                .cloned()
        };
        wait_for(&format!("a log line with {needles:?}"), seconds, || async {
            find().is_some()
        })
        .await;
        find().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits (at most 20 s) for the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program` from PATH. Without it, a test fails in CI (`CI` set: CI installs everything) and
/// elsewhere says loudly that it is skipped.
pub fn tool(program: &str, what: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        missing(what);
    }
    found
}

/// Whether `path` (a file a package installs) exists; if not, see [`tool`].
pub fn installed(path: &str, what: &str) -> bool {
    let there = std::path::Path::new(path).exists();
    if !there {
        missing(what);
    }
    there
}

/// The test venv's Python (scripts/test makes `.venv-test`), if it imports `modules`
/// (`"jwt, websockets"`); if not, see [`tool`].
pub fn venv_python(modules: &str) -> Option<std::path::PathBuf> {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/python3");
    let ready = venv.is_file()
        && Command::new(&venv)
            .args(["-c", &format!("import {modules}")])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        missing(&format!(
            "the test venv with Python's {modules} (scripts/test makes .venv-test)"
        ));
    }
    ready.then_some(venv)
}

/// Whether this process runs as root (network namespaces, `tc`); if not, see [`tool`].
pub fn root(what: &str) -> bool {
    let uid0 = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !uid0 {
        missing(&format!("root ({what})"));
    }
    uid0
}

fn missing(what: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide {what}, and runs this test"
    );
    eprintln!("SKIPPED: this test needs {what}, which this machine lacks; CI runs it");
}

/// What a helper script printed as its one JSON object; panics with its output if it failed.
pub fn script_json(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("the script saw: {seen}");
    seen
}

/// Established TCP connections to `port` on 127.0.0.1, by the peer's IPv4 address, from the
/// kernel's table (what the target really sees).
pub fn peers_of(port: u16) -> std::collections::BTreeMap<String, usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let mut peers = std::collections::BTreeMap::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, state) = (fields[1], fields[2], fields[3]);
        if state != "01" || local != format!("0100007F:{port:04X}") {
            continue;
        }
        let ip = u32::from_str_radix(&remote[..8], 16).unwrap().to_le_bytes();
        let ip = std::net::Ipv4Addr::from(ip).to_string();
        *peers.entry(ip).or_default() += 1;
    }
    peers
}

/// node, and `.test-tools/node_modules` with `module` in it (`scripts/protocol-tools`).
pub fn node_modules(module: &str) -> Option<(PathBuf, PathBuf)> {
    let modules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".test-tools/node_modules");
    let node = tool("node", "Node.js (scripts/protocol-tools installs it)")?;
    if !modules.join(module).is_dir() {
        tool(
            &format!("no-such-program-{module}"),
            &format!("npm's {module} in .test-tools (scripts/protocol-tools installs it)"),
        );
        return None;
    }
    Some((node, modules))
}

/// A Node.js server from a script written by the test; it prints `listening` when ready.
/// `tests/servers/pages.js` is written beside it, for the scripts that `require("./pages")`.
/// Killed on drop.
pub struct NodeServer {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl NodeServer {
    pub fn start(module: &str, script: &str, env: &[(&str, &str)]) -> Option<NodeServer> {
        let (node, modules) = node_modules(module)?;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.js");
        std::fs::write(&path, script).unwrap();
        std::fs::write(
            dir.path().join("pages.js"),
            include_str!("../servers/pages.js"),
        )
        .unwrap();
        let addr = free_addr();
        let mut child = Command::new(node)
            .arg(&path)
            .arg(addr.port().to_string())
            .env("NODE_PATH", modules)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first).unwrap();
        assert_eq!(first.trim(), "listening", "the server did not start");
        Some(NodeServer {
            addr,
            child,
            _dir: dir,
        })
    }

    /// The server's own counters (`GET /stats`).
    pub async fn stats(&self) -> serde_json::Value {
        get_json(&format!("http://{}/stats", self.addr)).await
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
