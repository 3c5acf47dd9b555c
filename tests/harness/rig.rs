//! A ready-made rig for delivery proofs: mosquitto, tansu and a sluice
//! running one sequence-numbered pipeline, with helpers to wait for
//! progress and to check that nothing is missing.

use std::time::Duration;

use crate::*;

/// `max_in_flight` of the rig's pipeline.
pub const RIG_WINDOW: usize = 500;

/// Brokers and a sluice running the scenario's pipeline: MQTT
/// `fleet/+/telemetry` at QoS 1 -> json_map (adds `device_id`) -> Kafka topic
/// `<name>` (2 partitions, keyed by device), dead letters to `<name>.dlq`.
pub struct Rig {
    /// Pipeline name, Kafka topic (and `<name>.dlq`).
    pub name: &'static str,
    // Dropped in this order: sluice first, then the brokers.
    /// The runtime.
    pub sluice: Sluice,
    /// The Kafka-protocol broker.
    pub kafka: Tansu,
    /// The MQTT broker.
    pub mqtt: Mosquitto,
    /// The pipeline YAML as started.
    yaml: String,
}

/// The json_map transform's `config:` value in the rig's pipeline.
const TRANSFORM_CONFIG: &str = "{ from_topic: { device_id: 1 } }";

impl Rig {
    /// `sink_extra` is appended to the `sink.kafka` mapping (4-space indent).
    pub fn start(name: &'static str, sink_extra: &str) -> Rig {
        Rig::start_with(name, sink_extra, &[], &[])
    }

    /// [`Rig::start`] with extra environment variables and `sluice run`
    /// arguments.
    pub fn start_with(
        name: &'static str,
        sink_extra: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Rig {
        let mqtt = Mosquitto::start();
        let kafka = Tansu::start();
        kafka.create_topic(name, 2);
        kafka.create_topic(&format!("{name}.dlq"), 1);
        let yaml = format!(
            r#"apiVersion: sluice/v1
name: {name}
delivery: at-least-once
max_in_flight: {RIG_WINDOW}
source:
  mqtt:
    url: {url}
    client_id: faults-{name}
    protocol: v5
    session_expiry_secs: 3600
    keep_alive_secs: 5
    reconnect: {{ initial_backoff_ms: 50, max_backoff_ms: 500 }}
    topics:
      - filter: fleet/+/telemetry
        qos: 1
transforms:
  - name: normalise
    plugin: {json_map}
    config: {TRANSFORM_CONFIG}
sink:
  kafka:
    brokers: {brokers}
    topic: {name}
    key: "{{{{topic.1}}}}"
{sink_extra}
errors:
  dead_letter_topic: {name}.dlq
"#,
            url = mqtt.url(),
            brokers = kafka.brokers(),
            json_map = plugin("json_map").display(),
        );
        let mut sluice = Sluice::spawn_with(&[&yaml], env, args);
        sluice.wait_ready(READY_TIMEOUT);
        Rig {
            name,
            mqtt,
            kafka,
            sluice,
            yaml,
        }
    }

    /// Rewrites the pipeline file (for reloads) with the json_map
    /// transform's `config:` set to `config`, a YAML flow mapping; the rest
    /// of the file stays as started.
    pub fn write_transform_config(&self, config: &str) {
        let file = &self.sluice.pipeline_files()[0];
        let text = self.yaml.replace(
            &format!("config: {TRANSFORM_CONFIG}"),
            &format!("config: {config}"),
        );
        std::fs::write(file, text).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    }

    /// Fails the test if any number arrived twice.
    pub fn assert_no_duplicates(&self, verifier: &SeqVerifier) {
        let tally = verifier.tally();
        assert_eq!(
            tally.duplicates,
            0,
            "{}: {tally}; duplicated: {:?}",
            self.name,
            verifier.counter().duplicate_ranges(20)
        );
    }

    /// A verifier of the main topic (index 0) and the DLQ (index 1).
    pub fn verifier(&self, sent: usize) -> SeqVerifier {
        let dlq = format!("{}.dlq", self.name);
        SeqVerifier::new(&self.kafka.brokers(), &[self.name, &dlq], sent)
    }

    /// A metric of this pipeline, 0 when absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut all = vec![("pipeline", self.name)];
        all.extend_from_slice(labels);
        self.sluice.metric(name, &all).unwrap_or(0.0)
    }

    /// Reads until `target` distinct numbers arrived; panics with context
    /// otherwise.
    pub fn progress(&self, verifier: &mut SeqVerifier, target: usize, timeout: Duration) {
        let reached = verifier.read_until(deadline(timeout), record_seq, |tally| {
            tally.delivered >= target
        });
        assert!(
            reached,
            "{}: only {} of {target} delivered within {timeout:?}\n{}",
            self.name,
            verifier.tally(),
            self.sluice.output_tail(30)
        );
    }

    /// Waits until the publisher has `target` acknowledged and sluice has
    /// delivered something; panics with context otherwise.
    pub fn published(
        &self,
        publisher: &StreamPublisher,
        verifier: &mut SeqVerifier,
        target: usize,
        timeout: Duration,
    ) {
        assert!(
            publisher.wait_acked(target, timeout),
            "{}: only {} of {target} published within {timeout:?}",
            self.name,
            publisher.acked()
        );
        self.progress(verifier, 1, timeout);
    }

    /// Fails the test unless nothing is missing and nothing outside the
    /// stream arrived.
    pub fn assert_complete(&self, verifier: &SeqVerifier) {
        let tally = verifier.tally();
        assert!(
            tally.missing == 0 && tally.unexpected == 0,
            "{}: {tally}; missing: {:?}; {verifier:?}\n{}",
            self.name,
            verifier.counter().missing_ranges(20),
            self.sluice.output_tail(40)
        );
    }
}
