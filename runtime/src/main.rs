//! The `sluice` command line.

mod demo;

use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use sluice::http::AdminAccess;
use sluice::metrics::Metrics;
use sluice::wasm::cache::PluginCache;
use sluice::wasm::WasmHost;
use sluice::{runner, summary, testing};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "MQTT -> WebAssembly transforms -> Kafka, acknowledged end to end"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run pipelines until SIGINT/SIGTERM, then drain and exit 0.
    Run {
        /// Pipeline YAML files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// HTTP listener for /metrics, /healthz, /readyz and /api.
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: SocketAddr,
        /// File holding the bearer token the admin actions (pause, resume,
        /// restart, reload) require. Default: $SLUICE_API_TOKEN if set.
        /// Without a token the admin actions are served on loopback only.
        #[arg(long)]
        api_token_file: Option<PathBuf>,
        /// Serve no admin actions (read-only API), e.g. to listen on a
        /// non-loopback address without a token.
        #[arg(long)]
        no_admin_api: bool,
        /// Reload a pipeline when its file or one of its plugin files
        /// changes (checked every second).
        #[arg(long)]
        watch: bool,
        /// No periodic summary line (printed on stderr when it is a terminal).
        #[arg(long)]
        no_summary: bool,
        /// Seconds between summary lines.
        #[arg(long, default_value_t = 5)]
        summary_every: u64,
    },
    /// Check pipeline files without connecting to any broker.
    Validate {
        /// Pipeline YAML files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run only the transform chain on fixture messages.
    Test {
        /// Pipeline YAML file.
        file: PathBuf,
        /// JSONL input messages.
        #[arg(long)]
        input: PathBuf,
        /// JSONL expected output; exit 1 with a diff on mismatch.
        #[arg(long)]
        expect: Option<PathBuf>,
    },
    /// Plugin authoring tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// The embedded default: in-process MQTT broker and Kafka, simulated
    /// devices, the example transforms, a live summary.
    Demo {
        /// Pipeline file to run (default: configs/demo.yaml).
        #[arg(long, default_value = "configs/demo.yaml")]
        config: PathBuf,
        /// HTTP listener.
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: SocketAddr,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Simulated devices.
        #[arg(long, default_value_t = 20)]
        devices: usize,
        /// Messages per second per device.
        #[arg(long, default_value_t = 5)]
        rate: u32,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a Rust transform crate (SDK vendored, unit tests, example
    /// pipeline and fixtures) that builds with `cargo build --release`.
    New {
        /// Crate name: lowercase letters, digits, `-`, `_`.
        name: String,
        /// Folder to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

fn init_logs(format: LogFormat, quiet: bool) {
    // `validate` and `test` print their results: keep logs to warnings there
    // unless SLUICE_LOG says otherwise.
    let default = if quiet {
        "warn"
    } else {
        "info,rumqttd=off,librdkafka=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: not as escape codes in log files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Command::Validate { .. } | Command::Test { .. });
    init_logs(cli.log_format, quiet);
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `sluice test`'s records to stdout, one JSON value per line,
/// through one buffer (stdout alone flushes at every line).
fn print_records(records: &[serde_json::Value]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for r in records {
        writeln!(out, "{r}")?;
    }
    out.flush()
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { files } => {
            let host = WasmHost::new(PluginCache::from_env()?)?;
            match runner::validate(&files, &host) {
                Ok(_) => {
                    eprintln!("{} pipeline file(s) valid", files.len());
                    Ok(ExitCode::SUCCESS)
                }
                Err(d) => {
                    eprintln!("{d}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Test {
            file,
            input,
            expect,
        } => {
            let host = WasmHost::new(PluginCache::from_env()?)?;
            let pipelines = match runner::validate(std::slice::from_ref(&file), &host) {
                Ok(p) => p,
                Err(d) => {
                    eprintln!("{d}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let p = pipelines.into_iter().next().context("no pipeline")?;
            let inputs = testing::read_inputs(&input)?;
            let out = testing::run_chain(&p, &host, &inputs)?;
            match print_records(&out) {
                // A reader that stopped early (`| head`) ends the output,
                // not the command: an `--expect` comparison still runs.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                written => written.context("cannot write the records to stdout")?,
            }
            if let Some(exp) = expect {
                let expected = testing::read_expected(&exp)?;
                if let Some(d) = testing::diff(&out, &expected) {
                    eprintln!("output differs from {}:\n{d}", exp.display());
                    return Ok(ExitCode::FAILURE);
                }
                eprintln!("{} record(s) match {}", out.len(), exp.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            files,
            listen,
            api_token_file,
            no_admin_api,
            watch,
            no_summary,
            summary_every,
        } => {
            let admin = admin_access(no_admin_api, api_token_file)?;
            let host = Arc::new(WasmHost::new(PluginCache::from_env()?)?);
            let pipelines = match runner::validate(&files, &host) {
                Ok(p) => p,
                Err(d) => {
                    eprintln!("{d}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let rt = runtime_for(pipelines.len())?;
            rt.block_on(async move {
                let (tx, rx) = watch::channel(false);
                tokio::spawn(wait_for_signal(tx));
                let metrics = Arc::new(Metrics::new());
                let summary = !no_summary && std::io::stderr().is_terminal();
                let every = Duration::from_secs(summary_every.max(1));
                let (h, stop) = (host.clone(), rx.clone());
                runner::run(
                    pipelines,
                    host,
                    metrics,
                    (listen, admin),
                    rx,
                    move |addr, st| {
                        eprintln!("sluice: listening on http://{addr}");
                        if summary {
                            let stop = stop.clone();
                            tokio::spawn(summary::run(
                                st.to_vec(),
                                every,
                                |l| eprintln!("{l}"),
                                stop,
                            ));
                        }
                        if watch {
                            let every = Duration::from_secs(1);
                            tokio::spawn(runner::watch_files(st.to_vec(), h, every, stop));
                        }
                    },
                )
                .await
            })?;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command: PluginCommand::New { name, dir },
        } => {
            let root = sluice::scaffold::new_plugin(&dir, &name)?;
            let file = name.replace('-', "_");
            println!("created {}", root.display());
            println!("next:");
            println!("  cd {}", root.display());
            println!("  cargo test --target x86_64-unknown-linux-gnu   # unit tests, natively");
            println!("  cargo build --release                          # -> target/wasm32-wasip2/release/{file}.wasm");
            println!(
                "  sluice test pipeline.yaml --input fixtures/in.jsonl --expect fixtures/out.jsonl"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            config,
            listen,
            duration,
            devices,
            rate,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(demo::run(demo::Options {
                config,
                listen,
                duration,
                devices,
                rate,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The tokio runtime for `sluice run` with `pipelines` pipelines: one
/// worker thread per pipeline, at most one per core.
///
/// A pipeline's async work (its MQTT session, settling, acks, handing
/// records to librdkafka) is one chain of tasks that wake each other; its
/// transforms and librdkafka run on threads of their own. A second worker
/// for one pipeline only moves those tasks between threads, which costs a
/// futex wake-up and a context switch each time: measured with one
/// pipeline on 2 cores, one worker took 12 % less CPU at-most-once and
/// about 3 % less at-least-once (docs/benchmarks.md). `TOKIO_WORKER_THREADS`
/// still overrides the count.
fn runtime_for(pipelines: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        builder.worker_threads(pipelines.clamp(1, cores));
    }
    builder.enable_all().build()
}

/// Who may use the admin actions: `--no-admin-api`, else the token from
/// `--api-token-file` or `$SLUICE_API_TOKEN`, else open (loopback only).
fn admin_access(disabled: bool, token_file: Option<PathBuf>) -> anyhow::Result<AdminAccess> {
    if disabled {
        return Ok(AdminAccess::Disabled);
    }
    let token = match token_file {
        Some(f) => Some(
            std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read the API token file {}", f.display()))?,
        ),
        None => std::env::var("SLUICE_API_TOKEN").ok(),
    };
    match token.map(|t| t.trim().to_string()) {
        Some(t) if t.is_empty() => anyhow::bail!("the API token is empty"),
        Some(t) => Ok(AdminAccess::Token(t.into())),
        None => Ok(AdminAccess::Open),
    }
}

/// Turns SIGINT/SIGTERM into the shutdown signal. A second signal exits at once.
async fn wait_for_signal(tx: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    let Ok(mut int) = signal(SignalKind::interrupt()) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown requested: draining in-flight messages");
    tx.send_replace(true);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(130);
}
