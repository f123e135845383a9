//! The `wsfleet` binary: parses arguments, sets up logging and signals, runs a subcommand and
//! maps its outcome to an exit code: 0 ok, 1 runtime failure, 2 invalid input, 3 SLA breached.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use wsfleet::cli::{Cli, Command, CtlArgs, FleetArgs, RunArgs, TargetArgs};
use wsfleet::config::Plan;
use wsfleet::ctl::CtlError;
use wsfleet::daemon::Daemon;
use wsfleet::output::Output;
use wsfleet::summary::Summary;
use wsfleet::target;

/// jemalloc: its heap profile and statistics are served (`wsfleet::heap`), and it holds idle
/// connections in no more memory than glibc's malloc (README "Benchmarks"). The feature
/// `system-allocator` leaves the system's malloc in place, so valgrind's DHAT sees every
/// allocation (`bench/dhat.sh`); jemalloc's figures then read zero.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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

    let fleet_args = match &cli.command {
        Command::Run(args) => Some(&args.fleet),
        Command::Check(args) => Some(args),
        Command::Target(_) | Command::Ctl(_) | Command::Compare(_) | Command::Record(_) => None,
    };
    let plan = match fleet_args.map(FleetArgs::resolve).transpose() {
        Ok(plan) => plan,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
    };
    if let (Command::Check(_), Some(plan)) = (&cli.command, &plan) {
        print!("{}", plan.config.to_yaml());
        print!("{}", plan.describe_groups());
        return ExitCode::SUCCESS;
    }

    if let Command::Compare(args) = &cli.command {
        return run_compare(args);
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match (cli.command, plan) {
            (Command::Ctl(args), _) => Ok(run_ctl(&args).await),
            (Command::Record(args), _) => Ok(run_record(&args).await),
            (Command::Target(args), _) => {
                run_target(
                    args,
                    signal_token(Some("the reference target has no config")),
                )
                .await
            }
            (Command::Run(args), Some(plan)) => {
                // With a file, SIGHUP is the reloader's; without one it must not kill us.
                let hangup = plan
                    .config
                    .source
                    .is_none()
                    .then_some("started without -c, there is no config file to reload");
                run_daemon(args, plan, signal_token(hangup)).await
            }
            _ => unreachable!("run and check always resolve a config"),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `wsfleet compare BASE.json RUN.json`: the table, and exit 3 on a regression (2 when a file
/// is not a summary).
fn run_compare(args: &wsfleet::cli::CompareArgs) -> ExitCode {
    let read = |path: &std::path::Path| wsfleet::compare::read_summary(path);
    let (base, run) = match (read(&args.base), read(&args.run)) {
        (Ok(base), Ok(run)) => (base, run),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
    };
    let comparison = wsfleet::compare::compare(
        &args.base.display().to_string(),
        &base,
        &run,
        &args.limits.max_regression,
    );
    print!("{}", comparison.render());
    if comparison.regressed() {
        ExitCode::from(wsfleet::compare::EXIT_REGRESSED)
    } else {
        ExitCode::SUCCESS
    }
}

/// `wsfleet record FILE`: the scenario to the output, what was inferred and the secrets'
/// variables to standard error; with `--check`, the replay's report and exit 1 unless all
/// matched (2 when the capture cannot be read).
async fn run_record(args: &wsfleet::cli::RecordArgs) -> ExitCode {
    let text = match std::fs::read_to_string(&args.file) {
        Ok(text) => text,
        Err(err) => {
            eprintln!("error: cannot read {}: {err}", args.file.display());
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
    };
    // A scenario already written (and edited: its secrets filled) is checked as it is.
    let yaml = if wsfleet::record::is_scenario_file(&args.file) {
        if !args.check {
            eprintln!(
                "error: {} is a scenario already: pass --check to replay it, or give a capture (HAR or JSON lines) to record",
                args.file.display()
            );
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
        text
    } else {
        match write_recording(args, &text) {
            Ok(yaml) => yaml,
            Err(code) => return code,
        }
    };
    if !args.check {
        return ExitCode::SUCCESS;
    }
    match wsfleet::record::check(&yaml, args.check_for).await {
        Ok(report) => {
            eprint!("{}", report.render());
            if report.passed() {
                eprintln!("check: every part matched");
                ExitCode::SUCCESS
            } else {
                eprintln!("check: some parts did not match (see above)");
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("error: the check could not run: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Records the capture `text` and writes its scenario (saying what was inferred, what not,
/// and which secrets to fill): the scenario, or the exit code of why not.
fn write_recording(args: &wsfleet::cli::RecordArgs, text: &str) -> Result<String, ExitCode> {
    let source = args.file.display().to_string();
    let recording = args
        .record_options()
        .and_then(|options| wsfleet::record::record(text, &source, &options))
        .map_err(|err| {
            eprintln!("error: {}: {err}", args.file.display());
            ExitCode::from(EXIT_INVALID_INPUT)
        })?;
    for line in &recording.found {
        eprintln!("inferred: {line}");
    }
    for line in &recording.missing {
        eprintln!("not inferred: {line}");
    }
    for (var, place) in &recording.secrets {
        eprintln!("secret: {{{{{var}}}}} stands for what was in {place}: fill `vars.{var}`");
    }
    match &args.output {
        Some(path) => {
            std::fs::write(path, &recording.yaml).map_err(|err| {
                eprintln!("error: cannot write {}: {err}", path.display());
                ExitCode::FAILURE
            })?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{}", recording.yaml),
    }
    Ok(recording.yaml)
}

/// A token cancelled by the first SIGINT or SIGTERM. With `ignore_hangup` (why), SIGHUP is
/// logged and ignored: its default action would end the process with no drain and no summary.
fn signal_token(ignore_hangup: Option<&'static str>) -> CancellationToken {
    let shutdown = CancellationToken::new();
    if let Some(why) = ignore_hangup {
        ignore_hangups(why);
    }
    tokio::spawn(watch_signals(shutdown.clone()));
    shutdown
}

/// Takes SIGHUP over (at once, so no later moment of start-up dies of it) and logs each one.
fn ignore_hangups(why: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hangup) => {
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!("SIGHUP received and ignored: {why}");
                }
            });
        }
        Err(err) => {
            tracing::warn!(%err, "cannot install a SIGHUP handler; SIGHUP will end the process")
        }
    }
}

/// Runs the daemon until a signal or the end of `--duration`. For a verdict (`--duration` or
/// `--summary-out`) it then drains the fleet, so the books are settled, and prints the summary
/// and exits with the SLA verdict; otherwise it just shuts down.
async fn run_daemon(
    args: RunArgs,
    plan: Plan,
    signal: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let config = &plan.config;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (`listen`)", config.listen))?;
    let config_json = wsfleet::report::config_json(config);
    let search = match (&config.capacity, args.find_capacity) {
        (Some(spec), true) => Some(spec.clone()),
        (None, true) => {
            eprintln!("error: --find-capacity needs a `capacity:` section in the config");
            return Ok(ExitCode::from(EXIT_INVALID_INPUT));
        }
        _ => None,
    };
    let outputs = [
        args.summary_out
            .as_deref()
            .map(|path| Output::new("--summary-out", path)),
        args.report
            .as_deref()
            .map(|path| Output::new("--report", path)),
        args.junit
            .as_deref()
            .map(|path| Output::new("--junit", path)),
    ];
    for output in outputs.iter().flatten() {
        if let Err(err) = output.check() {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(EXIT_INVALID_INPUT));
        }
    }
    let [summary_out, report_out, junit_out] = outputs;
    let archive = match args
        .report_dir
        .as_deref()
        .map(wsfleet::archive::Archive::open)
    {
        Some(Err(err)) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(EXIT_INVALID_INPUT));
        }
        opened => opened.and_then(Result::ok),
    };
    // Read now: a baseline that is not a summary fails before hours of load, not after.
    let baseline = match &args.baseline {
        Some(path) => match wsfleet::compare::read_summary(path) {
            Ok(base) => Some((path.display().to_string(), base)),
            Err(err) => {
                eprintln!("error: --baseline: {err}");
                return Ok(ExitCode::from(EXIT_INVALID_INPUT));
            }
        },
        None => None,
    };
    let daemon = Daemon::run(plan, listener, CancellationToken::new()).await?;
    let stopping = daemon.stopping();
    let duration = args.duration.unwrap_or(Duration::MAX);
    let searching = search.map(|spec| {
        wsfleet::capacity::run(
            spec,
            daemon.fleet().clone(),
            Arc::clone(daemon.metrics()),
            daemon.sla(),
            Default::default(),
            signal.clone(),
        )
    });
    let mut capacity = None;
    tokio::select! {
        _ = tokio::time::sleep(duration), if args.duration.is_some() => {
            tracing::info!("--duration reached");
        }
        outcome = async { searching.expect("checked").await }, if searching.is_some() => {
            capacity = Some(outcome);
        }
        _ = signal.cancelled() => {}
        // A core task failed: the daemon stopped by itself; wait() says why.
        _ = stopping.cancelled() => {}
    }
    if stopping.is_cancelled()
        || (capacity.is_none()
            && args.duration.is_none()
            && summary_out.is_none()
            && report_out.is_none()
            && junit_out.is_none()
            && baseline.is_none()
            && archive.is_none())
    {
        daemon.shutdown().await?;
        return Ok(ExitCode::SUCCESS);
    }
    let desired = daemon.fleet().local_users_by_group();
    let metrics = Arc::clone(daemon.metrics());
    let history = Arc::clone(daemon.history());
    let profile = daemon.fleet().profile().await.unwrap_or(None);
    let target = daemon.target().clone();
    let in_force = daemon.sla();
    let provenance = daemon.provenance().clone();
    let finished = daemon.finish().await?;
    // Judged by the SLA in force at the end: a reload during the run changed it for everyone.
    let sla = in_force.borrow().clone();
    let active = finished.drain.as_ref().map_or_else(
        || metrics.users_active.iter().map(|g| g.get()).collect(),
        |d| d.active_by_group.clone(),
    );
    let trends = history.trends();
    let mut summary = Summary::judge(
        &metrics,
        &desired,
        &sla,
        finished.run_time,
        &active,
        Some(&trends),
    );
    summary.capacity = capacity;
    summary.provenance = Some(provenance.ended());
    if let Some((name, base)) = &baseline {
        let run = serde_json::to_value(&summary).context("encoding the summary")?;
        summary.comparison = Some(wsfleet::compare::compare(
            name,
            base,
            &run,
            &args.limits.max_regression,
        ));
    }
    print!("{}", summary.render());
    // Each output is written whatever became of the others.
    let mut unwritten = false;
    let mut failed = |err: &dyn std::fmt::Display| {
        eprintln!("error: {err}");
        unwritten = true;
    };
    let json = serde_json::to_string_pretty(&summary).context("encoding the summary")? + "\n";
    if let Some(output) = &summary_out
        && let Err(err) = output.write(json.as_bytes())
    {
        failed(&err);
    }
    if report_out.is_some() || archive.is_some() {
        let report = wsfleet::report::Report::new(
            &summary,
            history.run(),
            profile,
            &sla,
            &target,
            config_json,
        )
        .render();
        if let Some(output) = &report_out
            && let Err(err) = output.write(report.as_bytes())
        {
            failed(&err);
        }
        if let (Some(archive), Some(provenance)) = (&archive, &summary.provenance) {
            match archive.keep(&provenance.stem(), &report, &json) {
                Ok(kept) => tracing::info!(report = %kept.display(), "report kept"),
                Err(err) => failed(&err),
            }
        }
    }
    if let Some(output) = &junit_out
        && let Err(err) = output.write(wsfleet::junit::render(&summary).as_bytes())
    {
        failed(&err);
    }
    for slo in summary.breaches() {
        eprintln!(
            "SLA breached: {} observed {} against threshold {}",
            slo.slo, slo.observed, slo.threshold
        );
    }
    if unwritten {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::from(summary.exit_code()))
}

async fn run_target(args: TargetArgs, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            match target::mutual_server_config(cert, key, args.tls_client_ca.as_deref()) {
                Ok(config) => Some(config),
                Err(err) => {
                    eprintln!("error: {err}");
                    return Ok(ExitCode::from(EXIT_INVALID_INPUT));
                }
            }
        }
        _ => None,
    };
    let listener = target::bind(args.listen)
        .with_context(|| format!("cannot listen on {} (`--listen`)", args.listen))?;
    if args.lean {
        tracing::info!(
            "lean reference target: WebSocket at ws://{}/ws{}",
            listener.local_addr()?,
            args.admin_listen
                .map(|a| format!(", /metrics and the admin API on http://{a}"))
                .unwrap_or_default()
        );
    } else {
        tracing::info!(
            "reference target listening on http://{} (WebSocket at /ws)",
            listener.local_addr()?
        );
    }
    if let Some(tcp) = args.tcp_listen {
        tracing::info!("reference target serving length-prefixed TCP on {tcp}");
    }
    let options = target::TargetOptions {
        token: args.token,
        tls,
        tcp: args.tcp_listen,
        admin_token: args.admin_token.filter(|t| !t.is_empty()),
        idle_timeout: args.idle_timeout,
        history: args.history.map(|messages| target::store::HistoryLimits {
            messages: messages as usize,
            age: args.history_age,
        }),
        lean: args.lean,
        admin_listen: args.admin_listen,
    };
    target::serve_with(listener, options, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

async fn run_ctl(args: &CtlArgs) -> ExitCode {
    match wsfleet::ctl::run(args).await {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            match err {
                CtlError::Usage(_) => ExitCode::from(EXIT_INVALID_INPUT),
                CtlError::Failed(_) => ExitCode::FAILURE,
            }
        }
    }
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
