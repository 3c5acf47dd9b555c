//! The cases of one run and how each is measured.
//!
//! Every case gets a fresh Kafka topic and the same messages. The process
//! under test is started and ready (subscribed at the broker, connected to
//! Kafka) before the first message is published; the clock runs from the
//! first publish to the last new sequence number read back from Kafka (for
//! the broker ceiling: to the exit of `mosquitto_sub -C N`).

use std::io::IsTerminal as _;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use sluice_tests::{
    create_topic, delete_topic, find_on_path, parse_url, plugin_dir, sluice_bin, temp_dir,
    wait_for, workspace_root, ChildProcess, Mosquitto, Sluice, StreamPublisher, Tansu,
};

use crate::consumer::{Verified, Verifier};
use crate::payload::{telemetry, FILTER};
use crate::procstat::{Reading, Sampler};
use crate::report::{self, CaseResult, Latency, LatencySplit};
use crate::RunArgs;

/// How long a child process gets after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long a process under test may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// With brokers we did not start we cannot see the broker's log, so we
/// give a new subscription this long to settle before publishing.
const EXTERNAL_SETTLE: Duration = Duration::from_secs(1);

/// What runs between MQTT and Kafka in a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `mosquitto_sub -q 1 -C N > /dev/null`: no Kafka at all.
    Ceiling,
    /// `mosquitto_sub -q 1 -v | sluice-bench produce`.
    PipeBridge,
    /// `bench/bridge.py` (paho-mqtt + confluent-kafka).
    PythonBridge,
    /// `sluice run` on a generated pipeline.
    Sluice(Delivery, Chain),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    AtMostOnce,
    AtLeastOnce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chain {
    /// No transform.
    Empty,
    /// json-map, the same mapping as bench/bridge.py.
    Map,
    /// json-map -> json-filter -> json-map.
    Three,
}

/// One case of the comparison.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// a, b1, b2, c, ...
    pub letter: &'static str,
    /// Stable id, also the Kafka topic's stem.
    pub id: &'static str,
    /// One line on what runs.
    pub what: &'static str,
    kind: Kind,
}

/// Every case, in the order they run.
pub const CASES: &[Case] = &[
    Case {
        letter: "a",
        id: "a-broker-ceiling",
        what: "mosquitto_sub -q 1 -C N > /dev/null (no Kafka)",
        kind: Kind::Ceiling,
    },
    Case {
        letter: "b1",
        id: "b1-pipe-bridge",
        what: "mosquitto_sub -q 1 -v | sluice-bench produce (rdkafka, no guarantees)",
        kind: Kind::PipeBridge,
    },
    Case {
        letter: "b2",
        id: "b2-python-bridge",
        what: "bench/bridge.py: paho-mqtt + confluent-kafka, JSON mapping in Python",
        kind: Kind::PythonBridge,
    },
    Case {
        letter: "c",
        id: "c-sluice-at-most-once",
        what: "sluice, at-most-once, no transform",
        kind: Kind::Sluice(Delivery::AtMostOnce, Chain::Empty),
    },
    Case {
        letter: "d",
        id: "d-sluice-at-least-once",
        what: "sluice, at-least-once, no transform",
        kind: Kind::Sluice(Delivery::AtLeastOnce, Chain::Empty),
    },
    Case {
        letter: "e",
        id: "e-sluice-json-map",
        what: "sluice, at-least-once, json-map (Wasm)",
        kind: Kind::Sluice(Delivery::AtLeastOnce, Chain::Map),
    },
    Case {
        letter: "f",
        id: "f-sluice-chain3",
        what: "sluice, at-least-once, json-map -> json-filter -> json-map (Wasm)",
        kind: Kind::Sluice(Delivery::AtLeastOnce, Chain::Three),
    },
];

/// The cases named by `--cases` (letters or ids, comma-separated, or `all`).
pub fn select(spec: &str) -> anyhow::Result<Vec<Case>> {
    if spec.trim() == "all" {
        return Ok(CASES.to_vec());
    }
    let mut wanted = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let case = CASES
            .iter()
            .find(|c| c.letter == name || c.id == name)
            .ok_or_else(|| {
                let known: Vec<&str> = CASES.iter().map(|c| c.letter).collect();
                anyhow!(
                    "unknown case `{name}` (expected one of {} or an id, or `all`)",
                    known.join(", ")
                )
            })?;
        wanted.push(case.letter);
    }
    // Always in the canonical order, each once.
    Ok(CASES
        .iter()
        .filter(|c| wanted.contains(&c.letter))
        .copied()
        .collect())
}

/// The brokers every case shares.
struct Env {
    args: RunArgs,
    mqtt_url: String,
    brokers: String,
    mosquitto: Option<Mosquitto>,
    tansu: Option<Tansu>,
    python: PathBuf,
    run_id: String,
    /// The round running (from 1).
    round: u32,
}

impl Env {
    /// Starts the verifier on `topic`. At a fixed rate its fetches wait at
    /// most 2 ms for data (its delay is part of every latency figure: 10 ms
    /// added 4-6 ms to the p99 at 12k msg/s); flat out 10 ms, as there is
    /// always data and shorter waits cost the broker CPU.
    fn verifier(&self, topic: &str) -> anyhow::Result<Verifier> {
        let fetch_wait = Duration::from_millis(if self.args.rate > 0 { 2 } else { 10 });
        Verifier::start(
            &self.brokers,
            topic,
            self.args.messages,
            self.args.warmup,
            fetch_wait,
        )
    }

    /// Pids of the brokers we started (their CPU time is reported too).
    fn broker_pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.mosquitto.as_ref().map(Mosquitto::pid),
            self.tansu.as_ref().map(Tansu::pid),
        )
    }

    /// Waits until the broker has the subscription of `client_id` (from its
    /// log, `log_type subscribe`), or for [`EXTERNAL_SETTLE`] with a broker
    /// we did not start. Fails early if `gone()` reports the subscriber
    /// exited.
    fn wait_subscribed(
        &self,
        client_id: &str,
        mut gone: impl FnMut() -> Option<String>,
    ) -> anyhow::Result<()> {
        let Some(mosquitto) = &self.mosquitto else {
            std::thread::sleep(EXTERNAL_SETTLE);
            return Ok(());
        };
        let log = mosquitto.log_path();
        let needle = format!(": {client_id} ");
        let found = wait_for(Instant::now() + READY_TIMEOUT, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text
                .lines()
                .any(|l| l.contains(&needle) && l.ends_with(&format!(" {FILTER}")))
            {
                return Some(Ok(()));
            }
            gone().map(Err)
        });
        match found {
            Some(Ok(())) => Ok(()),
            Some(Err(why)) => bail!("{client_id} went away before subscribing: {why}"),
            None => bail!("{client_id} did not subscribe to {FILTER} within {READY_TIMEOUT:?}"),
        }
    }

    /// The case's Kafka topic in this round.
    fn topic(&self, case: &Case) -> String {
        format!(
            "bench.{}.{}{}",
            case.id,
            self.run_id,
            self.round_suffix(".")
        )
    }

    /// The MQTT client id of the case's subscriber in this round. Each
    /// round has its own ids and topics: a subscription of an earlier
    /// round in the broker's log must not pass for this round's, nor its
    /// records for this round's.
    fn client_id(&self, case: &Case) -> String {
        format!(
            "sluice-bench-{}-{}{}",
            case.letter,
            std::process::id(),
            self.round_suffix("-")
        )
    }

    /// Nothing in the first round (names as before rounds existed), else
    /// `{sep}r{round}`.
    fn round_suffix(&self, sep: &str) -> String {
        match self.round {
            0 | 1 => String::new(),
            n => format!("{sep}r{n}"),
        }
    }
}

/// Runs the selected cases and writes the results.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.messages > 0, "--messages must be at least 1");
    anyhow::ensure!(
        (1..=args.messages).contains(&args.publishers),
        "--publishers must be between 1 and --messages"
    );
    let cases = select(&args.cases)?;
    let out = args.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let skips = preflight(&args, &cases);
    let machine = report::Machine::probe();
    let started_at = report::utc_now();
    let wall = Instant::now();

    eprintln!(
        "sluice-bench: {} messages per case, {}, publisher QoS {}, {} publisher(s), {} device topics",
        args.messages,
        match args.rate {
            0 => "flat out".to_string(),
            r => format!("{r} msg/s"),
        },
        args.qos,
        args.publishers,
        args.devices
    );
    let mut env = start_env(args)?;
    eprintln!(
        "sluice-bench: MQTT {} ({}), Kafka {} ({})",
        env.mqtt_url,
        if env.mosquitto.is_some() {
            "mosquitto, started here"
        } else {
            "given"
        },
        env.brokers,
        if env.tansu.is_some() {
            "tansu, started here"
        } else {
            "given"
        }
    );

    let mut rounds = Vec::new();
    for round in 1..=env.args.rounds {
        env.round = round;
        if env.args.rounds > 1 {
            eprintln!("==== round {round} of {}", env.args.rounds);
        }
        // Round r starts r - 1 cases further on (a, b1, ... then b1, b2,
        // ..., a), so that no case always runs first or right after the
        // same one; the results stay in the cases' order.
        let n = cases.len();
        let mut results: Vec<Option<CaseResult>> = vec![None; n];
        for i in (0..n).map(|i| (i + round as usize - 1) % n) {
            results[i] = Some(run_or_skip(&env, &cases[i], &skips));
        }
        let mut results: Vec<CaseResult> = results.into_iter().flatten().collect();
        report::add_ratios(&mut results);
        rounds.push(results);
    }
    let results = report::medians(&rounds);
    let run = report::Run {
        started_at,
        duration_s: wall.elapsed().as_secs_f64(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        settings: env.args.clone(),
        brokers: report::Brokers {
            mqtt: if env.mosquitto.is_some() {
                format!("mosquitto {} (started by sluice-bench)", env.mqtt_url)
            } else {
                env.mqtt_url.clone()
            },
            kafka: if env.tansu.is_some() {
                format!(
                    "tansu {} (started by sluice-bench, memory storage)",
                    env.brokers
                )
            } else {
                env.brokers.clone()
            },
        },
        cases: results,
        rounds: if rounds.len() > 1 { rounds } else { Vec::new() },
    };
    let files = report::write(&run, &out)?;
    println!("{}", report::markdown(&run));
    for file in files {
        eprintln!("sluice-bench: wrote {}", file.display());
    }
    Ok(())
}

/// Runs `case`, unless `skips` names it; a failure or a panic is its
/// result, not the end of the run.
fn run_or_skip(env: &Env, case: &Case, skips: &[(&'static str, String)]) -> CaseResult {
    if let Some((_, why)) = skips.iter().find(|(letter, _)| *letter == case.letter) {
        eprintln!("== ({}) {}: skipped: {why}", case.letter, case.id);
        return CaseResult::skipped(case, why);
    }
    eprintln!("== ({}) {}: {}", case.letter, case.id, case.what);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run_case(env, case)));
    let result = match outcome {
        Ok(Ok(result)) => result,
        Ok(Err(err)) => CaseResult::failed(case, &format!("{err:#}")),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "panicked".into());
            CaseResult::failed(case, &why)
        }
    };
    eprintln!("   {}", result.summary());
    // tansu keeps topics in memory: the case's records would weigh on
    // every later case and round. A broker we did not start keeps them.
    if env.tansu.is_some() && !matches!(case.kind, Kind::Ceiling) {
        if let Err(err) = delete_topic(&env.brokers, &env.topic(case)) {
            eprintln!("   warning: {err}");
        }
    }
    result
}

/// Cases that cannot run here, and why (missing tools), found before any
/// broker starts.
fn preflight(args: &RunArgs, cases: &[Case]) -> Vec<(&'static str, String)> {
    let mut skips = Vec::new();
    let sluice = std::panic::catch_unwind(sluice_bin).ok();
    for case in cases {
        let why = match case.kind {
            Kind::Ceiling | Kind::PipeBridge => (!mosquitto_sub_bin().exists())
                .then(|| "mosquitto_sub not found (Debian package mosquitto-clients)".to_string()),
            Kind::PythonBridge => python_check(&python_bin(args)).err(),
            Kind::Sluice(_, chain) => {
                if sluice.is_none() {
                    Some("the sluice binary is missing: cargo build --release -p sluice, or set SLUICE_BIN".into())
                } else {
                    let needed: &[&str] = match chain {
                        Chain::Empty => &[],
                        Chain::Map => &["json_map"],
                        Chain::Three => &["json_map", "json_filter"],
                    };
                    needed
                        .iter()
                        .map(|name| plugin_dir().join(format!("{name}.wasm")))
                        .find(|path| !path.exists())
                        .map(|path| {
                            format!(
                                "plugin {} is missing: (cd plugins && cargo build --release)",
                                path.display()
                            )
                        })
                }
            }
        };
        if let Some(why) = why {
            skips.push((case.letter, why));
        }
    }
    skips
}

fn start_env(args: RunArgs) -> anyhow::Result<Env> {
    let mosquitto = match &args.mqtt_url {
        Some(_) => None,
        None => Some(
            std::panic::catch_unwind(|| {
                // Subscriptions in the log tell when a subscriber is ready.
                Mosquitto::start_with_config(
                    "log_type error\nlog_type warning\nlog_type notice\n\
                     log_type information\nlog_type subscribe\n",
                )
            })
            .map_err(|_| anyhow!("mosquitto did not start (see above)"))?,
        ),
    };
    let tansu = match &args.kafka_brokers {
        Some(_) => None,
        None => Some(
            std::panic::catch_unwind(Tansu::start)
                .map_err(|_| anyhow!("tansu did not start (see above)"))?,
        ),
    };
    let mqtt_url = args
        .mqtt_url
        .clone()
        .or_else(|| mosquitto.as_ref().map(Mosquitto::url))
        .context("no MQTT broker")?;
    let brokers = args
        .kafka_brokers
        .clone()
        .or_else(|| tansu.as_ref().map(Tansu::brokers))
        .context("no Kafka broker")?;
    let python = python_bin(&args);
    Ok(Env {
        round: 1,
        run_id: format!(
            "{}-{}",
            std::process::id(),
            crate::payload::now_us() / 1_000_000
        ),
        args,
        mqtt_url,
        brokers,
        mosquitto,
        tansu,
        python,
    })
}

fn run_case(env: &Env, case: &Case) -> anyhow::Result<CaseResult> {
    match case.kind {
        Kind::Ceiling => run_ceiling(env, case),
        Kind::PipeBridge => run_pipe_bridge(env, case),
        Kind::PythonBridge => run_python_bridge(env, case),
        Kind::Sluice(delivery, chain) => run_sluice(env, case, delivery, chain),
    }
}

/// `mosquitto_sub`: beside mosquitto, else on PATH, else Debian's place.
fn mosquitto_sub_bin() -> PathBuf {
    let beside = sluice_tests::mosquitto_bin().with_file_name("mosquitto_sub");
    if beside.is_file() {
        return beside;
    }
    find_on_path("mosquitto_sub").unwrap_or_else(|| PathBuf::from("/usr/bin/mosquitto_sub"))
}

/// mosquitto_sub's connection and subscription arguments (MQTT 5, like
/// every other client here).
fn mosquitto_sub(env: &Env, client_id: &str) -> Command {
    let (host, port) = parse_url(&env.mqtt_url);
    let mut command = Command::new(mosquitto_sub_bin());
    command
        .args(["-h", &host, "-p", &port.to_string(), "-V", "mqttv5"])
        .args(["-i", client_id, "-t", FILTER])
        .args(["-q", &env.args.sub_qos.to_string()]);
    command
}

fn run_ceiling(env: &Env, case: &Case) -> anyhow::Result<CaseResult> {
    let dir = temp_dir("sluice-bench-ceiling-");
    let id = env.client_id(case);
    let mut command = mosquitto_sub(env, &id);
    command.args(["-C", &env.args.messages.to_string()]);
    let mut sub = ChildProcess::spawn_with_stdio(
        "mosquitto_sub",
        command,
        dir.path(),
        STOP_GRACE,
        Stdio::null(),
        Stdio::null(),
    )?;
    env.wait_subscribed(&id, || exited(&mut sub))?;
    let pid = sub.pid();
    let measured = drive(env, case, &[pid], Watch::Exit(&mut sub))?;
    Ok(measured.into_result(env, case, &[pid]))
}

fn run_pipe_bridge(env: &Env, case: &Case) -> anyhow::Result<CaseResult> {
    let topic = env.topic(case);
    create_topic(&env.brokers, &topic, env.args.partitions).map_err(|e| anyhow!(e))?;
    let dir = temp_dir("sluice-bench-pipe-");
    let id = env.client_id(case);
    let mut command = mosquitto_sub(env, &id);
    command.arg("-v");
    let mut sub = ChildProcess::spawn_with_stdio(
        "mosquitto_sub",
        command,
        dir.path(),
        STOP_GRACE,
        Stdio::null(),
        Stdio::piped(),
    )?;
    let pipe = sub.take_stdout().context("mosquitto_sub's stdout")?;
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["produce", "--brokers", &env.brokers, "--topic", &topic]);
    let mut producer = ChildProcess::spawn_with_stdio(
        "produce",
        command,
        dir.path(),
        STOP_GRACE,
        Stdio::from(pipe),
        Stdio::null(),
    )?;
    let log = producer.stderr_path().to_path_buf();
    wait_for_line(&log, "produce: ready", || exited(&mut producer))?;
    env.wait_subscribed(&id, || exited(&mut sub))?;
    let pids = [sub.pid(), producer.pid()];
    let verifier = env.verifier(&topic)?;
    let measured = drive(env, case, &pids, Watch::Kafka(verifier))?;
    // mosquitto_sub exits on SIGTERM; the producer then reads EOF, flushes
    // and exits by itself.
    sub.stop();
    if wait_for(Instant::now() + STOP_GRACE, || producer.exit_status()).is_none() {
        producer.stop();
    }
    Ok(measured.into_result(env, case, &pids))
}

fn run_python_bridge(env: &Env, case: &Case) -> anyhow::Result<CaseResult> {
    let topic = env.topic(case);
    create_topic(&env.brokers, &topic, env.args.partitions).map_err(|e| anyhow!(e))?;
    let dir = temp_dir("sluice-bench-python-");
    let id = env.client_id(case);
    let (host, port) = parse_url(&env.mqtt_url);
    let mut command = Command::new(&env.python);
    command
        .arg(workspace_root().join("bench/bridge.py"))
        .args(["--mqtt-host", &host, "--mqtt-port", &port.to_string()])
        .args(["--client-id", &id, "--filter", FILTER])
        .args(["--qos", &env.args.sub_qos.to_string()])
        .args(["--brokers", &env.brokers, "--topic", &topic])
        .env("PYTHONUNBUFFERED", "1");
    let mut bridge = ChildProcess::spawn("bridge.py", command, dir.path(), STOP_GRACE)?;
    let log = bridge.stdout_path().to_path_buf();
    wait_for_line(&log, "ready", || exited(&mut bridge))?;
    env.wait_subscribed(&id, || exited(&mut bridge))?;
    let pid = bridge.pid();
    let verifier = env.verifier(&topic)?;
    let measured = drive(env, case, &[pid], Watch::Kafka(verifier))?;
    bridge.stop();
    Ok(measured.into_result(env, case, &[pid]))
}

fn run_sluice(
    env: &Env,
    case: &Case,
    delivery: Delivery,
    chain: Chain,
) -> anyhow::Result<CaseResult> {
    let topic = env.topic(case);
    create_topic(&env.brokers, &topic, env.args.partitions).map_err(|e| anyhow!(e))?;
    let id = env.client_id(case);
    let yaml = pipeline_yaml(env, case, delivery, chain, &topic, &id);
    // Declared before `sluice`, so dropped after it has stopped.
    let _session = ClearSession {
        url: &env.mqtt_url,
        id: &id,
    };
    let mut sluice = Sluice::start(&[yaml]);
    env.wait_subscribed(&id, || None)?;
    let pid = sluice.pid();
    let verifier = env.verifier(&topic)?;
    let measured = drive(env, case, &[pid], Watch::Kafka(verifier))?;
    sluice.stop();
    Ok(measured.into_result(env, case, &[pid]))
}

/// Clears the pipeline's persistent MQTT session `id` when dropped, on
/// every way out of a case (a failure or a panic too): else it would
/// queue every later case's and round's messages at the broker.
struct ClearSession<'a> {
    url: &'a str,
    id: &'a str,
}

impl Drop for ClearSession<'_> {
    fn drop(&mut self) {
        if let Err(err) = clear_session(self.url, self.id) {
            eprintln!("   warning: cannot clear MQTT session {}: {err:#}", self.id);
        }
    }
}

/// The json-map configuration of cases e and f; bench/bridge.py does the
/// same in Python.
const JSON_MAP_CONFIG: &str = concat!(
    "      from_topic: { device_id: 1 }\n",
    "      rename: { temperature_f: temperature_c }\n",
    "      convert: { temperature_c: f_to_c }\n",
    "      round: 2\n",
    "      drop: [firmware]\n",
    "      key_field: device_id\n",
);

fn pipeline_yaml(
    env: &Env,
    case: &Case,
    delivery: Delivery,
    chain: Chain,
    topic: &str,
    client_id: &str,
) -> String {
    let plugin = |name: &str| {
        plugin_dir()
            .join(format!("{name}.wasm"))
            .display()
            .to_string()
    };
    let map = format!(
        "  - name: normalise\n    plugin: \"{}\"\n    config:\n{JSON_MAP_CONFIG}",
        plugin("json_map")
    );
    let transforms = match chain {
        Chain::Empty => "transforms: []\n".to_string(),
        Chain::Map => format!("transforms:\n{map}"),
        Chain::Three => format!(
            "transforms:\n{map}\
             \x20 - name: plausible\n    plugin: \"{}\"\n    config: {{ field: temperature_c, op: gte, value: -273.15 }}\n\
             \x20 - name: enrich\n    plugin: \"{}\"\n    config: {{ add: {{ schema: 2, source: sluice-bench }} }}\n",
            plugin("json_filter"),
            plugin("json_map"),
        ),
    };
    let delivery = match delivery {
        Delivery::AtMostOnce => "at-most-once",
        Delivery::AtLeastOnce => "at-least-once",
    };
    format!(
        "# generated by sluice-bench, case {id}\n\
         apiVersion: sluice/v1\n\
         name: {id}\n\
         delivery: {delivery}\n\
         max_in_flight: {max_in_flight}\n\
         batch: {{ max_messages: 256, max_wait_ms: 5 }}\n\
         source:\n  mqtt:\n    url: {url}\n    client_id: {client_id}\n    protocol: v5\n    session_expiry_secs: 300\n    topics:\n      - filter: \"{FILTER}\"\n        qos: {qos}\n\
         {transforms}\
         sink:\n  kafka:\n    brokers: {brokers}\n    topic: {topic}\n    key: \"{{{{topic.1}}}}\"\n",
        id = case.id,
        max_in_flight = env.args.max_in_flight,
        url = env.mqtt_url,
        qos = env.args.sub_qos,
        brokers = env.brokers,
    )
}

/// Connects as `client_id` with a clean start and no session expiry, then
/// disconnects: the broker drops the session and its subscriptions.
fn clear_session(url: &str, client_id: &str) -> anyhow::Result<()> {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let (host, port) = parse_url(url);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut options = MqttOptions::new(client_id, host, port);
        options.set_clean_start(true);
        let (client, mut eventloop) = AsyncClient::new(options, 10);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(err)) => bail!("connect: {err}"),
                Err(_) => bail!("no CONNACK within 10 s"),
            }
        }
        client.disconnect().await?;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        Ok(())
    })
}

fn exited(process: &mut ChildProcess) -> Option<String> {
    process
        .exit_status()
        .map(|status| format!("exited ({status})\n{}", process.output_tail(20)))
}

/// Waits until a line of `file` starts with `prefix`.
fn wait_for_line(
    file: &Path,
    prefix: &str,
    mut gone: impl FnMut() -> Option<String>,
) -> anyhow::Result<()> {
    let found = wait_for(Instant::now() + READY_TIMEOUT, || {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.lines().any(|l| l.starts_with(prefix)) {
            return Some(Ok(()));
        }
        gone().map(Err)
    });
    match found {
        Some(Ok(())) => Ok(()),
        Some(Err(why)) => bail!("not ready: {why}"),
        None => bail!(
            "no `{prefix}` line in {} within {READY_TIMEOUT:?}",
            file.display()
        ),
    }
}

/// The python for bench/bridge.py: `--python`, else the venv that
/// `scripts/setup.sh bench` fills, else `python3`.
fn python_bin(args: &RunArgs) -> PathBuf {
    if let Some(python) = &args.python {
        return python.clone();
    }
    let venv = std::env::var_os("SLUICE_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("sluice/venv"))
        })
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sluice/venv")));
    venv.map(|v| v.join("bin/python3"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn python_check(python: &Path) -> Result<(), String> {
    let output = Command::new(python)
        .args(["-c", "import paho.mqtt.client, confluent_kafka"])
        .output()
        .map_err(|err| format!("cannot run {}: {err}", python.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} lacks paho-mqtt or confluent-kafka (`bash scripts/setup.sh bench` installs them into a venv)",
            python.display()
        ))
    }
}

/// How a case's end is seen.
enum Watch<'a> {
    /// The verifier has every number (or gives up).
    Kafka(Verifier),
    /// The process exits (`mosquitto_sub -C N`).
    Exit(&'a mut ChildProcess),
}

/// What one case measured.
struct Measured {
    sent: usize,
    payload_bytes: u64,
    elapsed: Option<Duration>,
    verified: Option<Verified>,
    exit_ok: Option<bool>,
    readings: std::collections::HashMap<u32, Reading>,
    note: Option<String>,
}

/// Publishes the case's messages and watches for its end, with a progress
/// bar on a terminal.
fn drive(env: &Env, case: &Case, pids: &[u32], mut watch: Watch<'_>) -> anyhow::Result<Measured> {
    let args = &env.args;
    let (mosquitto_pid, tansu_pid) = env.broker_pids();
    let mut sampled: Vec<u32> = pids.to_vec();
    sampled.extend(mosquitto_pid);
    sampled.extend(tansu_pid);
    let mut note = None;
    if let Watch::Kafka(verifier) = &watch {
        note = warm_up(env, verifier);
    }
    let sampler = Sampler::start(&sampled);
    let bytes = Arc::new(AtomicU64::new(0));
    let progress = progress_bar(case, args.messages);

    let started = Instant::now();
    let publishers = start_publishers(env, &bytes);
    let until = started + Duration::from_secs(args.case_timeout);
    let idle_timeout = Duration::from_secs(args.idle_timeout);
    let mut last_change = (0usize, Instant::now());
    let mut end: Option<Instant> = None;
    let mut exit_ok = None;
    loop {
        let sent: usize = publishers.iter().map(|(p, _)| p.acked()).sum();
        let published_all = sent >= args.messages;
        let position = match &mut watch {
            Watch::Kafka(verifier) => {
                if verifier.is_finished() {
                    break;
                }
                verifier.delivered()
            }
            Watch::Exit(process) => {
                if let Some(status) = process.exit_status() {
                    end = Some(Instant::now());
                    exit_ok = Some(status.success());
                    break;
                }
                sent
            }
        };
        progress.set_position(position as u64);
        let secs = started.elapsed().as_secs_f64();
        if secs > 0.0 {
            progress.set_message(format!("{:.0} msg/s", position as f64 / secs));
        }
        let now = Instant::now();
        if position != last_change.0 {
            last_change = (position, now);
        } else if published_all && now - last_change.1 > idle_timeout {
            note = Some(format!(
                "nothing new for {idle_timeout:?} after the last publish: stopped waiting"
            ));
            break;
        }
        if now > until {
            note = Some(format!(
                "not done within --case-timeout {}s",
                args.case_timeout
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(match watch {
            Watch::Exit(_) => 2,
            Watch::Kafka(_) => 20,
        }));
    }
    progress.finish_and_clear();
    let readings = sampler.finish();
    // The ceiling's subscriber may exit before the last PUBACKs reached the
    // publisher: give those a moment before counting.
    let mut sent = 0;
    for (publisher, count) in publishers {
        if publisher.wait_acked(count, Duration::from_secs(10)) {
            sent += publisher.join().sent;
        } else {
            sent += publisher.acked();
            // Dropping it stops it.
        }
    }
    let verified = match watch {
        Watch::Kafka(verifier) => Some(verifier.finish()?),
        Watch::Exit(_) => None,
    };
    if let Some(v) = &verified {
        end = v.last_new;
    }
    Ok(Measured {
        sent,
        payload_bytes: bytes.load(Ordering::Relaxed),
        elapsed: end.map(|e| e.saturating_duration_since(started)),
        verified,
        exit_ok,
        readings,
        note,
    })
}

/// Publishes `--warmup` messages numbered after the measured ones and waits
/// until they are all in Kafka, so that connection set-up, topic metadata
/// and producer ids are not part of the figures. Returns a note if the
/// warm-up did not complete.
fn warm_up(env: &Env, verifier: &Verifier) -> Option<String> {
    let (count, first, devices) = (env.args.warmup, env.args.messages, env.args.devices);
    if count == 0 {
        return None;
    }
    let publisher =
        StreamPublisher::start_with_qos(&env.mqtt_url, count, None, env.args.qos, move |index| {
            telemetry(first + index, devices)
        });
    let done = wait_for(Instant::now() + READY_TIMEOUT, || {
        (verifier.warmed_up() >= count).then_some(())
    });
    if publisher.acked() >= count {
        publisher.join();
    }
    match done {
        Some(()) => None,
        None => Some(format!(
            "warm-up: {} of {count} in Kafka after {READY_TIMEOUT:?}",
            verifier.warmed_up()
        )),
    }
}

/// Starts `--publishers` publishers, each with its own contiguous range of
/// sequence numbers; returns each with its message count.
fn start_publishers(env: &Env, bytes: &Arc<AtomicU64>) -> Vec<(StreamPublisher, usize)> {
    let args = &env.args;
    let k = args.publishers;
    let rate = match args.rate {
        0 => None,
        r => Some((r / k as u32).max(1)),
    };
    let mut offset = 0;
    (0..k)
        .map(|i| {
            let count = args.messages / k + usize::from(i < args.messages % k);
            let (first, devices, bytes) = (offset, args.devices, Arc::clone(bytes));
            offset += count;
            let publisher = StreamPublisher::start_with_qos(
                &env.mqtt_url,
                count,
                rate,
                args.qos,
                move |index| {
                    let message = telemetry(first + index, devices);
                    bytes.fetch_add(message.payload.len() as u64, Ordering::Relaxed);
                    message
                },
            );
            (publisher, count)
        })
        .collect()
}

fn progress_bar(case: &Case, len: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "   {prefix:<26} [{bar:30}] {pos:>8}/{len} {msg:>12} elapsed {elapsed}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(case.id);
    bar
}

impl Measured {
    fn into_result(self, env: &Env, case: &Case, pids: &[u32]) -> CaseResult {
        let n = env.args.messages;
        let (mosquitto_pid, tansu_pid) = env.broker_pids();
        let reading = |pid: Option<u32>| pid.and_then(|p| self.readings.get(&p)).copied();
        let sut: Vec<Reading> = pids
            .iter()
            .filter_map(|p| self.readings.get(p).copied())
            .collect();
        let (delivered, missing, duplicates, latency) = match &self.verified {
            Some(v) => (
                Some(v.tally.delivered),
                Some(v.tally.missing),
                Some(v.tally.duplicates),
                (!v.latency_us.is_empty()).then(|| Latency::from_histogram(&v.latency_us)),
            ),
            // mosquitto_sub -C N exits 0 once it has N messages.
            None => match self.exit_ok {
                Some(true) => (Some(n), Some(0), None, None),
                _ => (None, None, None, None),
            },
        };
        let mut notes: Vec<String> = self.note.into_iter().collect();
        if let Some(v) = &self.verified {
            if v.unreadable > 0 {
                notes.push(format!("{} records without seq/ts_us", v.unreadable));
            }
            if v.tally.missing > 0 {
                if let Some(err) = &v.last_error {
                    notes.push(format!("last consumer error: {err}"));
                }
            }
        }
        if self.sent < n {
            notes.push(format!("published {} of {n}", self.sent));
        }
        let elapsed_s = self.elapsed.map(|d| d.as_secs_f64()).filter(|s| *s > 0.0);
        let status = match (delivered, elapsed_s) {
            (Some(d), Some(_)) if d == n => "ok",
            (Some(_), Some(_)) => "incomplete",
            _ => "failed",
        };
        CaseResult {
            letter: case.letter.to_string(),
            id: case.id.to_string(),
            what: case.what.to_string(),
            status: status.to_string(),
            note: (!notes.is_empty()).then(|| notes.join("; ")),
            sent: self.sent,
            delivered,
            missing,
            duplicates,
            elapsed_s,
            msgs_per_s: elapsed_s.zip(delivered).map(|(s, d)| d as f64 / s),
            // Mean published payload size times the messages delivered.
            mb_per_s: elapsed_s.zip(delivered).map(|(s, d)| {
                self.payload_bytes as f64 / self.sent.max(1) as f64 * d as f64 / 1e6 / s
            }),
            latency_ms: latency,
            latency_split_ms: self.verified.as_ref().and_then(|v| {
                (!v.to_record_us.is_empty()).then(|| LatencySplit {
                    to_record: Latency::from_histogram(&v.to_record_us),
                    from_record: Latency::from_histogram(&v.from_record_us),
                })
            }),
            cpu_s: (!sut.is_empty()).then(|| sut.iter().map(|r| r.cpu_s).sum()),
            peak_rss_mib: (!sut.is_empty())
                .then(|| sut.iter().map(|r| r.peak_rss_kib as f64 / 1024.0).sum()),
            mosquitto_cpu_s: reading(mosquitto_pid).map(|r| r.cpu_s),
            tansu_cpu_s: reading(tansu_pid).map(|r| r.cpu_s),
            vs_a: None,
            vs_b1: None,
            vs_b2: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_selected_by_letter_or_id_in_canonical_order() {
        let picked = select("e, a-broker-ceiling,b1").unwrap();
        let letters: Vec<&str> = picked.iter().map(|c| c.letter).collect();
        assert_eq!(letters, ["a", "b1", "e"]);
        assert_eq!(select("all").unwrap().len(), CASES.len());
        assert!(select("z")
            .unwrap_err()
            .to_string()
            .contains("unknown case `z`"));
    }
}
