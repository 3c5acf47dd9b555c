//! `sluice-bench`: the end-to-end benchmark of Sluice against what a user
//! would otherwise run, on the same brokers and the same messages.
//!
//! `sluice-bench run` starts mosquitto and tansu on free loopback ports (or
//! uses the ones given with `--mqtt-url` / `--kafka-brokers`), then runs each
//! case in turn: it publishes sequence-numbered JSON telemetry stamped with
//! the publish time over MQTT, reads the Kafka topic back, and reports
//! throughput, end-to-end latency, missing and duplicate messages, and the
//! CPU time and peak memory of the process under test. Results go to a JSON
//! file, a Markdown table and an SVG chart (see `docs/benchmarks.md`).
//!
//! `sluice-bench produce` is the "minimal native producer" of the
//! hand-written bridge case: it reads `mosquitto_sub -v` lines from stdin and
//! produces each payload to Kafka, with no delivery guarantee.

mod cases;
mod consumer;
mod payload;
mod procstat;
mod produce;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "End-to-end benchmark: MQTT -> (sluice | baselines) -> Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the comparison and write results.json, results.md and results.svg.
    Run(RunArgs),
    /// Read `TOPIC PAYLOAD` lines (mosquitto_sub -v) from stdin and produce
    /// each payload to Kafka (the hand-written bridge's producer).
    Produce(produce::ProduceArgs),
}

/// Settings of one benchmark run.
#[derive(Args, Clone, Debug, serde::Serialize)]
pub struct RunArgs {
    /// Messages published per case.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    pub messages: usize,
    /// Rounds of all the cases, one after another, each starting one case
    /// further on (a, b1, ..., f, then b1, ..., f, a, ...); with more than
    /// one, each case's row is its median round and its ratios the medians
    /// of the ratios within each round, which the noise of a shared machine
    /// moves less than one round.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Messages published and read back before each case's clock starts
    /// (numbered after the measured ones, not counted); 0: no warm-up.
    #[arg(long, default_value_t = 1000)]
    pub warmup: usize,
    /// Publish rate in messages per second over all publishers; 0 publishes
    /// as fast as the broker acknowledges.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// QoS of the publishers (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// QoS of every subscription (the baselines' and sluice's).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub sub_qos: u8,
    /// Device topics (`sensors/dev-NNNN/telemetry`), round robin.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Concurrent MQTT publisher connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Partitions of each case's Kafka topic.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// sluice's `max_in_flight` (un-acked MQTT messages per pipeline).
    #[arg(long, default_value_t = 1000)]
    pub max_in_flight: usize,
    /// Cases to run, comma-separated, by letter or id (a, b1, b2, c, d, e,
    /// f, or e.g. `e-sluice-json-map`), or `all`.
    #[arg(long, default_value = "all")]
    pub cases: String,
    /// Folder for results.json, results.md and results.svg.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Use this MQTT broker instead of starting mosquitto.
    #[arg(long)]
    pub mqtt_url: Option<String>,
    /// Use this Kafka broker instead of starting tansu.
    #[arg(long)]
    pub kafka_brokers: Option<String>,
    /// Python with paho-mqtt and confluent-kafka for the Python bridge
    /// (default: $SLUICE_VENV/bin/python3, else ~/.cache/sluice/venv/bin/python3,
    /// else python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Longest one case may run, in seconds.
    #[arg(long, default_value_t = 180)]
    pub case_timeout: u64,
    /// A case ends early when nothing new reached Kafka for this many
    /// seconds after the last message was published.
    #[arg(long, default_value_t = 15)]
    pub idle_timeout: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cases::run(args),
        Command::Produce(args) => produce::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sluice-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
