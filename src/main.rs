//! The `wsfleet` binary: parses arguments, sets up logging and signals, runs a subcommand and
//! maps its outcome to an exit code (2 for invalid input, 1 for runtime failures).

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use wsfleet::cli::{Cli, Command};
use wsfleet::daemon::Daemon;
use wsfleet::target;

const EXIT_INVALID_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();

    let config = match &cli.command {
        Command::Run(args) | Command::Check(args) => match args.resolve() {
            Ok(config) => Some(config),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(EXIT_INVALID_INPUT);
            }
        },
        Command::Target(_) => None,
    };
    if let (Command::Check(_), Some(config)) = (&cli.command, &config) {
        print!("{}", config.to_yaml());
        return ExitCode::SUCCESS;
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        match (cli.command, config) {
            (Command::Target(args), _) => run_target(args, shutdown).await,
            (_, Some(config)) => run_daemon(config, shutdown).await,
            (_, None) => unreachable!("run and check always resolve a config"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_daemon(
    config: wsfleet::config::Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (`listen`)", config.listen))?;
    Daemon::start(config, listener, shutdown)
        .await?
        .wait()
        .await
}

async fn run_target(
    args: wsfleet::cli::TargetArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listen = args.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (`--listen`)"))?;
    tracing::info!(
        "reference target listening on http://{} (WebSocket at /ws)",
        listener.local_addr()?
    );
    let options = target::TargetOptions { token: args.token };
    target::serve_with(listener, options, shutdown).await?;
    Ok(())
}

/// First SIGINT or SIGTERM: graceful shutdown. A second one: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    for round in 0..2 {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        if round == 0 {
            tracing::info!("signal received: shutting down (send it again to exit at once)");
            shutdown.cancel();
        }
    }
    tracing::warn!("second signal: exiting without waiting");
    std::process::exit(130);
}
