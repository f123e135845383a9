//! What releasing tungstenite's buffers while idle costs per message: CPU per WebSocket round
//! trip with the buffers kept (upstream tungstenite) and released whenever a socket has
//! nothing to move (`release_idle_buffers`, the option our vendored copy adds and the fleet
//! turns on). One thread runs both ends of USERS loopback connections, each echoing a 64-byte
//! text message per round; after every frame each end polls once more, as a user's loop does,
//! so a releasing end really gives its buffer back and takes it again every time. Three
//! settings: both ends keep their buffers; the client end releases them (what the fleet does
//! against a server that keeps its own); both ends release. Trials alternate between the
//! settings in one process; the thread's own CPU time (/proc/thread-self/schedstat: user and
//! kernel) is divided by the round trips.
//!   cargo bench --bench idle-buffers        TRIALS=15 USERS=100 ROUNDS=200 by default
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

type Socket = WebSocketStream<TcpStream>;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Nanoseconds this thread has run, in user space and in the kernel.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("/proc/thread-self/schedstat (Linux)")
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .expect("schedstat's first field: nanoseconds on the CPU")
}

/// The fleet's own socket settings (`session::ws_config`), with the buffers kept or released.
fn config(release: bool) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(128)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .release_idle_buffers(release)
}

async fn connected_pair(
    listener: &TcpListener,
    client_releases: bool,
    server_releases: bool,
) -> (Socket, Socket) {
    let address = listener.local_addr().expect("bound");
    let (client, server) = tokio::join!(TcpStream::connect(address), listener.accept());
    let client = client.expect("connects");
    let (server, _) = server.expect("accepts");
    (
        WebSocketStream::from_raw_socket(client, Role::Client, Some(config(client_releases))).await,
        WebSocketStream::from_raw_socket(server, Role::Server, Some(config(server_releases))).await,
    )
}

/// Receives one message, then polls once more (the socket would block: a released buffer
/// goes back to the allocator).
async fn receive(socket: &mut Socket) -> Message {
    let message = socket.next().await.expect("open").expect("a valid frame");
    assert!(
        socket.next().now_or_never().is_none(),
        "one message per round"
    );
    message
}

/// CPU nanoseconds per round trip over `pairs`, `rounds` round trips each.
async fn trial(pairs: &mut [(Socket, Socket)], rounds: usize) -> f64 {
    let text = "x".repeat(64);
    let start = thread_cpu_ns();
    for _ in 0..rounds {
        for (client, _) in pairs.iter_mut() {
            client
                .send(Message::text(text.as_str()))
                .await
                .expect("sent");
        }
        for (_, server) in pairs.iter_mut() {
            let message = receive(server).await;
            server.send(message).await.expect("echoed");
        }
        for (client, _) in pairs.iter_mut() {
            receive(client).await;
        }
    }
    (thread_cpu_ns() - start) as f64 / (rounds * pairs.len()) as f64
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let (trials, users, rounds) = (
        setting("TRIALS", 15),
        setting("USERS", 100),
        setting("ROUNDS", 200),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        const SETTINGS: [(&str, bool, bool); 3] = [
            ("both ends keep their buffers", false, false),
            ("the client end releases", true, false),
            ("both ends release", true, true),
        ];
        let mut sides = Vec::new();
        for (_, client_releases, server_releases) in SETTINGS {
            let mut pairs = Vec::new();
            for _ in 0..users {
                pairs.push(connected_pair(&listener, client_releases, server_releases).await);
            }
            trial(&mut pairs, rounds / 10 + 1).await; // warm-up
            sides.push(pairs);
        }
        let mut figures = vec![Vec::new(); SETTINGS.len()];
        let mut ratios = vec![Vec::new(); SETTINGS.len()];
        for round in 0..trials {
            // Rotate which setting goes first, so a drift in the machine's speed cancels out.
            let mut this_round = [0.0; SETTINGS.len()];
            for step in 0..SETTINGS.len() {
                let side = (round + step) % SETTINGS.len();
                this_round[side] = trial(&mut sides[side], rounds).await;
            }
            for side in 0..SETTINGS.len() {
                figures[side].push(this_round[side]);
                ratios[side].push(this_round[side] / this_round[0]);
            }
        }
        println!(
            "idle-buffers -- {users} connections x {rounds} round trips per trial, {trials} trials each, one thread; CPU per round trip (64-byte text, both ends)"
        );
        for (side, (name, _, _)) in SETTINGS.iter().enumerate() {
            println!(
                "{name:30} {:6.2} us   median ratio to both keeping {:.3}",
                median(figures[side].clone()) / 1000.0,
                median(ratios[side].clone())
            );
        }
    });
}
