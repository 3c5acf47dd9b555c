//! The `sluice` command line.

mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use sluice::metrics::Metrics;
use sluice::wasm::WasmHost;
use sluice::{runner, testing};

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { files } => {
            let host = WasmHost::new(WasmHost::default_cache_dir())?;
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
            let host = WasmHost::new(WasmHost::default_cache_dir())?;
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
            for v in &out {
                println!("{v}");
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
        Command::Run { files, listen } => {
            let host = Arc::new(WasmHost::new(WasmHost::default_cache_dir())?);
            let pipelines = match runner::validate(&files, &host) {
                Ok(p) => p,
                Err(d) => {
                    eprintln!("{d}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let (tx, rx) = watch::channel(false);
                tokio::spawn(wait_for_signal(tx));
                let metrics = Arc::new(Metrics::new());
                runner::run(pipelines, host, metrics, listen, rx, |addr, _| {
                    eprintln!("sluice: listening on http://{addr}");
                })
                .await
                .context("cannot start the HTTP listener")
            })?;
            tracing::info!("stopped");
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
