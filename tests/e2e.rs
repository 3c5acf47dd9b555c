//! End-to-end tests: real mosquitto -> the `sluice` binary (real Wasm
//! plugins) -> real Kafka-protocol broker (tansu). Each test starts its own
//! brokers and its own sluice, and everything is stopped when the test ends.
//!
//! Pipeline YAML in these tests is written with placeholders that
//! [`render`] fills in: `@MQTT@` (broker URL), `@KAFKA@` (bootstrap
//! servers) and `@json_map@`, `@json_filter@`, `@json_split@` (absolute
//! plugin paths).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_tests::*;

/// How long a small test waits for its records to show up in Kafka.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a test keeps reading after the expected records arrived, to see
/// that nothing else comes.
const QUIET_PERIOD: Duration = Duration::from_secs(3);

/// Fills in the placeholders of a pipeline template.
fn render(template: &str, mqtt: &Mosquitto, kafka: &Tansu) -> String {
    let mut yaml = template
        .replace("@MQTT@", &mqtt.url())
        .replace("@KAFKA@", &kafka.brokers());
    for name in ["json_map", "json_filter", "json_split"] {
        let placeholder = format!("@{name}@");
        if yaml.contains(&placeholder) {
            yaml = yaml.replace(&placeholder, &plugin(name).display().to_string());
        }
    }
    yaml
}

/// The JSON field `seq` of every record, sorted.
fn seqs(records: &[Record]) -> Vec<i64> {
    let mut seqs: Vec<i64> = records
        .iter()
        .map(|record| {
            record.json()["seq"]
                .as_i64()
                .unwrap_or_else(|| panic!("no integer seq in {}", record.payload_str()))
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

fn assert_close(actual: &Value, expected: f64, what: &str) {
    let actual = actual
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: expected a number, got {actual}"));
    assert!(
        (actual - expected).abs() < 0.01,
        "{what}: expected {expected}, got {actual}"
    );
}

#[test]
fn messages_on_several_topics_arrive_in_kafka_mapped_with_templated_topic_key_and_headers() {
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("sensors.telemetry", 2);
    kafka.create_topic("sensors.diagnostics", 1);
    kafka.create_topic("map.dlq", 1);
    let _sluice = Sluice::start(&[render(
        r#"
apiVersion: sluice/v1
name: map
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-map
    protocol: v5
    session_expiry_secs: 3600
    topics:
      - filter: sensors/+/+
        qos: 1
transforms:
  - name: normalise
    plugin: @json_map@
    config:
      from_topic: { device_id: 1 }
      convert: { temperature: f_to_c }
      round: 2
sink:
  kafka:
    brokers: @KAFKA@
    topic: "sensors.{{topic.2}}"
    key: "{{topic.1}}"
errors:
  dead_letter_topic: map.dlq
"#,
        &mqtt,
        &kafka,
    )]);

    // (topic, temperature in °F, expected °C)
    let readings = [
        ("sensors/dev-1/telemetry", 212.0, 100.0),
        ("sensors/dev-2/telemetry", 32.0, 0.0),
        ("sensors/dev-3/diagnostics", 98.6, 37.0),
    ];
    let messages: Vec<MqttMessage> = readings
        .iter()
        .enumerate()
        .map(|(seq, (topic, fahrenheit, _))| {
            MqttMessage::new(
                *topic,
                json!({ "seq": seq, "temperature": fahrenheit }).to_string(),
            )
            .with_property("site", "plant-7")
        })
        .collect();
    publish(&mqtt.url(), Protocol::V5, 1, &messages);

    let mut records = consume(&kafka.brokers(), "sensors.telemetry", 2, DELIVERY_TIMEOUT);
    records.extend(consume(
        &kafka.brokers(),
        "sensors.diagnostics",
        1,
        DELIVERY_TIMEOUT,
    ));
    assert_eq!(records.len(), 3, "records: {records:#?}");
    for (seq, (mqtt_topic, _, celsius)) in readings.iter().enumerate() {
        let record = records
            .iter()
            .find(|record| record.json()["seq"] == json!(seq))
            .unwrap_or_else(|| panic!("no record for {mqtt_topic} in {records:#?}"));
        let device = mqtt_topic.split('/').nth(1).unwrap();
        let kind = mqtt_topic.split('/').nth(2).unwrap();
        let payload = record.json();
        assert_eq!(record.topic, format!("sensors.{kind}"));
        assert_eq!(
            record.key_str().as_deref(),
            Some(device),
            "key of {record:?}"
        );
        assert_eq!(payload["device_id"], json!(device), "payload {payload}");
        assert_close(&payload["temperature"], *celsius, mqtt_topic);
        assert_eq!(record.header_str("site").as_deref(), Some("plant-7"));
        assert_eq!(
            record.header_str("mqtt.topic").as_deref(),
            Some(*mqtt_topic)
        );
        assert_eq!(record.header_str("mqtt.qos").as_deref(), Some("1"));
        assert_eq!(record.header_str("mqtt.retain").as_deref(), Some("false"));
    }
    let dead = consume(&kafka.brokers(), "map.dlq", 0, Duration::ZERO);
    assert!(
        dead.is_empty(),
        "nothing should be dead-lettered: {dead:#?}"
    );
}

#[test]
fn a_json_filter_keeps_only_the_matching_messages() {
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("hot", 1);
    let sluice = Sluice::start(&[render(
        r#"
apiVersion: sluice/v1
name: filter
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-filter
    topics:
      - filter: sensors/+/telemetry
        qos: 1
transforms:
  - name: only-hot
    plugin: @json_filter@
    config: { field: temperature, op: gt, value: 30 }
sink:
  kafka:
    brokers: @KAFKA@
    topic: hot
errors:
  dead_letter_topic: filter.dlq
"#,
        &mqtt,
        &kafka,
    )]);

    // Temperatures 25..=34: 31, 32, 33 and 34 are hot (seq 6..=9).
    let messages: Vec<MqttMessage> = (0..10)
        .map(|seq| {
            MqttMessage::new(
                format!("sensors/dev-{seq}/telemetry"),
                json!({ "seq": seq, "temperature": 25 + seq }).to_string(),
            )
        })
        .collect();
    publish(&mqtt.url(), Protocol::V5, 1, &messages);

    let records = consume_with_grace(&kafka.brokers(), "hot", 4, DELIVERY_TIMEOUT, QUIET_PERIOD);
    assert_eq!(seqs(&records), vec![6, 7, 8, 9], "records: {records:#?}");
    let dropped = wait_for(deadline(Duration::from_secs(10)), || {
        sluice
            .metric(
                "sluice_messages_dropped_total",
                &[("pipeline", "filter"), ("transform", "only-hot")],
            )
            .filter(|&dropped| dropped >= 6.0)
    });
    assert_eq!(
        dropped,
        Some(6.0),
        "sluice_messages_dropped_total in:\n{}",
        sluice.metrics()
    );
}

#[test]
fn every_contract_metric_shows_the_right_counts_for_a_known_message_mix() {
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("mix", 1);
    kafka.create_topic("mix.dlq", 1);
    let sluice = Sluice::start(&[render(
        r#"
apiVersion: sluice/v1
name: mix
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-mix
    topics:
      - filter: sensors/+/telemetry
        qos: 1
transforms:
  - name: shape
    plugin: @json_map@
    config: { from_topic: { device_id: 1 } }
  - name: only-hot
    plugin: @json_filter@
    config: { field: temperature, op: gt, value: 30 }
sink:
  kafka:
    brokers: @KAFKA@
    topic: mix
errors:
  dead_letter_topic: mix.dlq
"#,
        &mqtt,
        &kafka,
    )]);
    // 20 messages: 4 not JSON (dead-lettered by `shape`), 6 cold (dropped
    // by `only-hot`), 10 hot (delivered).
    let messages: Vec<MqttMessage> = (0..20)
        .map(|seq| {
            let payload = match seq % 5 {
                0 => "not json".to_string(),
                1..=3 if seq < 10 => json!({ "seq": seq, "temperature": 20 }).to_string(),
                _ => json!({ "seq": seq, "temperature": 40 }).to_string(),
            };
            MqttMessage::new(format!("sensors/dev-{seq}/telemetry"), payload)
        })
        .collect();
    publish(&mqtt.url(), Protocol::V5, 1, &messages);
    consume_with_grace(&kafka.brokers(), "mix", 10, DELIVERY_TIMEOUT, QUIET_PERIOD);
    let settled = wait_until(deadline(DELIVERY_TIMEOUT), || {
        sluice.metric("sluice_in_flight_messages", &[("pipeline", "mix")]) == Some(0.0)
            && sluice.metric("sluice_messages_received_total", &[("pipeline", "mix")]) == Some(20.0)
    });
    assert!(settled, "{}", sluice.metrics());
    let text = sluice.metrics();
    let expect = |name: &str, labels: &[(&str, &str)], value: f64| {
        let mut all = vec![("pipeline", "mix")];
        all.extend_from_slice(labels);
        assert_eq!(
            metric_value(&text, name, &all),
            Some(value),
            "{name}{labels:?} in:\n{text}"
        );
    };
    // (metric, labels besides the pipeline, value)
    type Count<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);
    let counts: [Count; 9] = [
        ("sluice_messages_received_total", &[], 20.0),
        ("sluice_messages_delivered_total", &[], 10.0),
        (
            "sluice_messages_dropped_total",
            &[("transform", "only-hot")],
            6.0,
        ),
        (
            "sluice_messages_dropped_total",
            &[("transform", "shape")],
            0.0,
        ),
        (
            "sluice_messages_dead_lettered_total",
            &[("stage", "transform")],
            4.0,
        ),
        (
            "sluice_messages_dead_lettered_total",
            &[("stage", "sink")],
            0.0,
        ),
        (
            "sluice_messages_failed_total",
            &[("stage", "transform")],
            4.0,
        ),
        ("sluice_in_flight_messages", &[], 0.0),
        // Every input's ack was released: one latency sample each.
        ("sluice_end_to_end_latency_seconds_count", &[], 20.0),
    ];
    for (name, labels, value) in counts {
        expect(name, labels, value);
    }
    for transform in ["shape", "only-hot"] {
        let calls = metric_value(
            &text,
            "sluice_transform_duration_seconds_count",
            &[("pipeline", "mix"), ("transform", transform)],
        );
        assert!(calls.is_some_and(|c| c >= 1.0), "{transform}: {calls:?}");
        for kind in ["trap", "timeout", "memory", "stack", "invalid"] {
            expect(
                "sluice_plugin_traps_total",
                &[("transform", transform), ("kind", kind)],
                0.0,
            );
        }
    }
    for (name, value) in [
        ("sluice_mqtt_connected", 1.0),
        ("sluice_mqtt_reconnects_total", 0.0),
        ("sluice_kafka_produce_errors_total", 0.0),
    ] {
        expect(name, &[], value);
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("sluice_build_info{version=")),
        "{text}"
    );
    for process in ["process_resident_memory_bytes", "process_open_fds"] {
        assert!(
            metric_value(&text, process, &[]).is_some_and(|v| v > 0.0),
            "{process} in:\n{text}"
        );
    }
    assert!(metric_value(&text, "process_cpu_seconds_total", &[]).is_some());
    // Buckets resolve sub-millisecond transform calls and 1 ms - 10 s latency.
    for (histogram, le) in [
        ("sluice_transform_duration_seconds_bucket", "0.00001"),
        ("sluice_end_to_end_latency_seconds_bucket", "0.001"),
        ("sluice_end_to_end_latency_seconds_bucket", "10"),
    ] {
        assert!(
            metric_value(&text, histogram, &[("le", le)]).is_some(),
            "no {histogram} le={le} in:\n{text}"
        );
    }
}

#[test]
fn a_mosquitto_broker_gets_a_warning_about_its_offline_queue_unless_silenced() {
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("probe", 1);
    let pipeline = |name: &str, extra: &str| {
        render(
            &format!(
                r#"
apiVersion: sluice/v1
name: {name}
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-{name}
    topics:
      - filter: probe/#
        qos: 1
{extra}
sink:
  kafka:
    brokers: @KAFKA@
    topic: probe
"#
            ),
            &mqtt,
            &kafka,
        )
    };
    let sluice = Sluice::start(&[
        pipeline("probed", ""),
        pipeline("silenced", "    probe_broker: false"),
    ]);
    let warned = wait_until(deadline(Duration::from_secs(20)), || {
        sluice.stderr().contains("max_queued_messages 0")
    });
    let stderr = sluice.stderr();
    assert!(warned, "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("max_queued_messages 0"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("probed"), "{}", warnings[0]);
    assert!(stderr.contains("mosquitto version"), "{stderr}");
    // The probe does not disturb the pipelines: each delivers the message.
    publish(
        &mqtt.url(),
        Protocol::V5,
        1,
        &[MqttMessage::new("probe/a", "x")],
    );
    let records = consume_with_grace(&kafka.brokers(), "probe", 2, DELIVERY_TIMEOUT, QUIET_PERIOD);
    assert_eq!(records.len(), 2);
}

#[test]
fn json_split_turns_one_message_into_one_record_per_element() {
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("readings", 2);
    let _sluice = Sluice::start(&[render(
        r#"
apiVersion: sluice/v1
name: split
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-split
    topics:
      - filter: gateways/+/batch
        qos: 1
transforms:
  - name: one-per-reading
    plugin: @json_split@
    config: { field: readings, inherit: [gateway, ts], key_field: sensor }
sink:
  kafka:
    brokers: @KAFKA@
    topic: readings
errors:
  dead_letter_topic: split.dlq
"#,
        &mqtt,
        &kafka,
    )]);

    let sensors = ["t1", "t2", "t3", "h1", "h2"];
    let readings: Vec<Value> = sensors
        .iter()
        .enumerate()
        .map(|(i, sensor)| json!({ "sensor": sensor, "value": i }))
        .collect();
    let batch = json!({ "gateway": "gw-1", "ts": 1_700_000_000_000_u64, "readings": readings });
    publish(
        &mqtt.url(),
        Protocol::V5,
        1,
        &[MqttMessage::new("gateways/gw-1/batch", batch.to_string())],
    );

    let records = consume_with_grace(
        &kafka.brokers(),
        "readings",
        sensors.len(),
        DELIVERY_TIMEOUT,
        QUIET_PERIOD,
    );
    assert_eq!(records.len(), sensors.len(), "records: {records:#?}");
    let by_sensor: BTreeMap<String, Value> = records
        .iter()
        .map(|record| (record.key_str().unwrap_or_default(), record.json()))
        .collect();
    assert_eq!(
        by_sensor
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        sensors.iter().copied().collect::<BTreeSet<_>>(),
        "one record per element, keyed by sensor"
    );
    for (i, sensor) in sensors.iter().enumerate() {
        let payload = &by_sensor[*sensor];
        assert_eq!(
            payload,
            &json!({ "gateway": "gw-1", "ts": 1_700_000_000_000_u64, "sensor": sensor, "value": i })
        );
    }
    for record in &records {
        assert_eq!(
            record.header_str("mqtt.topic").as_deref(),
            Some("gateways/gw-1/batch")
        );
    }
}

#[test]
fn two_pipelines_in_one_process_each_deliver_to_their_own_topic() {
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("out-a", 1);
    kafka.create_topic("out-b", 1);
    let pipeline_a = render(
        r#"
apiVersion: sluice/v1
name: site-a
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-site-a
    topics:
      - filter: site-a/#
        qos: 1
transforms:
  - name: tag
    plugin: @json_map@
    config: { add: { pipeline: a } }
sink:
  kafka:
    brokers: @KAFKA@
    topic: out-a
errors:
  dead_letter_topic: site-a.dlq
"#,
        &mqtt,
        &kafka,
    );
    let pipeline_b = render(
        r#"
apiVersion: sluice/v1
name: site-b
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-site-b
    topics:
      - filter: site-b/#
        qos: 1
transforms: []
sink:
  kafka:
    brokers: @KAFKA@
    topic: out-b
errors:
  dead_letter_topic: site-b.dlq
"#,
        &mqtt,
        &kafka,
    );
    let _sluice = Sluice::start(&[pipeline_a, pipeline_b]);

    let mut messages = Vec::new();
    for seq in 0..5 {
        messages.push(MqttMessage::new(
            format!("site-a/dev-{seq}/telemetry"),
            json!({ "seq": seq }).to_string(),
        ));
    }
    for seq in 0..7 {
        messages.push(MqttMessage::new(
            format!("site-b/dev-{seq}/telemetry"),
            json!({ "seq": seq }).to_string(),
        ));
    }
    publish(&mqtt.url(), Protocol::V5, 1, &messages);

    let a = consume_with_grace(&kafka.brokers(), "out-a", 5, DELIVERY_TIMEOUT, QUIET_PERIOD);
    let b = consume_with_grace(&kafka.brokers(), "out-b", 7, DELIVERY_TIMEOUT, QUIET_PERIOD);
    assert_eq!(seqs(&a), (0..5).collect::<Vec<_>>(), "out-a: {a:#?}");
    assert_eq!(seqs(&b), (0..7).collect::<Vec<_>>(), "out-b: {b:#?}");
    for record in &a {
        assert_eq!(record.json()["pipeline"], json!("a"));
        assert!(record
            .header_str("mqtt.topic")
            .unwrap()
            .starts_with("site-a/"));
    }
    for record in &b {
        assert_eq!(record.json().get("pipeline"), None, "b has no transform");
        assert!(record
            .header_str("mqtt.topic")
            .unwrap()
            .starts_with("site-b/"));
    }
}

#[test]
fn mqtt_v3_1_1_and_v5_sources_both_deliver() {
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("from-v311", 1);
    kafka.create_topic("from-v5", 1);
    let v311 = render(
        r#"
apiVersion: sluice/v1
name: proto-v311
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-proto-v311
    protocol: v3.1.1
    keep_alive_secs: 30
    topics:
      - filter: v311/#
        qos: 1
sink:
  kafka:
    brokers: @KAFKA@
    topic: from-v311
"#,
        &mqtt,
        &kafka,
    );
    let v5 = render(
        r#"
apiVersion: sluice/v1
name: proto-v5
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-proto-v5
    protocol: v5
    session_expiry_secs: 3600
    keep_alive_secs: 30
    topics:
      - filter: v5/#
        qos: 1
sink:
  kafka:
    brokers: @KAFKA@
    topic: from-v5
"#,
        &mqtt,
        &kafka,
    );
    let _sluice = Sluice::start(&[v311, v5]);

    let old: Vec<MqttMessage> = (0..3)
        .map(|seq| MqttMessage::new(format!("v311/dev-{seq}"), json!({ "seq": seq }).to_string()))
        .collect();
    publish(&mqtt.url(), Protocol::V311, 1, &old);
    let new: Vec<MqttMessage> = (0..3)
        .map(|seq| {
            MqttMessage::new(format!("v5/dev-{seq}"), json!({ "seq": seq }).to_string())
                .with_property("firmware", "2.1")
        })
        .collect();
    publish(&mqtt.url(), Protocol::V5, 1, &new);

    let from_v311 = consume_with_grace(
        &kafka.brokers(),
        "from-v311",
        3,
        DELIVERY_TIMEOUT,
        QUIET_PERIOD,
    );
    let from_v5 = consume_with_grace(
        &kafka.brokers(),
        "from-v5",
        3,
        DELIVERY_TIMEOUT,
        QUIET_PERIOD,
    );
    assert_eq!(seqs(&from_v311), vec![0, 1, 2], "{from_v311:#?}");
    assert_eq!(seqs(&from_v5), vec![0, 1, 2], "{from_v5:#?}");
    for record in from_v311.iter().chain(&from_v5) {
        let topic = record.header_str("mqtt.topic").expect("mqtt.topic header");
        let seq = record.json()["seq"].as_i64().unwrap();
        assert!(topic.ends_with(&format!("/dev-{seq}")), "{record:?}");
    }
    for record in &from_v5 {
        assert_eq!(record.header_str("firmware").as_deref(), Some("2.1"));
    }
}

#[test]
fn qos_0_1_and_2_subscriptions_all_deliver() {
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("by-qos", 1);
    // QoS 0 cannot be acked, so it runs in an at-most-once pipeline; QoS 1
    // and 2 in the default at-least-once one.
    let acked = render(
        r#"
apiVersion: sluice/v1
name: qos-acked
delivery: at-least-once
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-qos-acked
    topics:
      - filter: q1/#
        qos: 1
      - filter: q2/#
        qos: 2
sink:
  kafka:
    brokers: @KAFKA@
    topic: by-qos
    key: "{{topic.0}}"
"#,
        &mqtt,
        &kafka,
    );
    let fire_and_forget = render(
        r#"
apiVersion: sluice/v1
name: qos-zero
delivery: at-most-once
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-qos-zero
    topics:
      - filter: q0/#
        qos: 0
sink:
  kafka:
    brokers: @KAFKA@
    topic: by-qos
    key: "{{topic.0}}"
"#,
        &mqtt,
        &kafka,
    );
    let _sluice = Sluice::start(&[acked, fire_and_forget]);

    for qos in 0..=2u8 {
        let messages: Vec<MqttMessage> = (0..5)
            .map(|i| {
                MqttMessage::new(
                    format!("q{qos}/dev-{i}"),
                    json!({ "seq": i, "qos": qos }).to_string(),
                )
            })
            .collect();
        publish(&mqtt.url(), Protocol::V5, qos, &messages);
    }

    let records = consume_with_grace(
        &kafka.brokers(),
        "by-qos",
        15,
        DELIVERY_TIMEOUT,
        QUIET_PERIOD,
    );
    assert_eq!(records.len(), 15, "records: {records:#?}");
    for qos in 0..=2u8 {
        let at_qos: Vec<Record> = records
            .iter()
            .filter(|record| record.key_str() == Some(format!("q{qos}")))
            .cloned()
            .collect();
        assert_eq!(seqs(&at_qos), vec![0, 1, 2, 3, 4], "QoS {qos}: {at_qos:#?}");
        for record in &at_qos {
            assert_eq!(record.json()["qos"], json!(qos));
            assert_eq!(
                record.header_str("mqtt.qos"),
                Some(qos.to_string()),
                "{record:?}"
            );
        }
    }
}

#[test]
fn at_most_once_acks_qos_1_and_2_on_receipt_so_more_than_the_window_flows() {
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("amo", 1);
    let _sluice = Sluice::start(&[render(
        r#"
apiVersion: sluice/v1
name: amo
delivery: at-most-once
max_in_flight: 20
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-amo
    topics:
      - filter: q1/#
        qos: 1
      - filter: q2/#
        qos: 2
sink:
  kafka:
    brokers: @KAFKA@
    topic: amo
"#,
        &mqtt,
        &kafka,
    )]);
    // 10 windows' worth at each QoS: the broker only goes on sending if
    // every message is acked.
    for qos in 1..=2u8 {
        let messages: Vec<MqttMessage> = (0..200)
            .map(|i| MqttMessage::new(format!("q{qos}/d"), json!({ "seq": i }).to_string()))
            .collect();
        publish(&mqtt.url(), Protocol::V5, qos, &messages);
    }
    let records = consume_with_grace(&kafka.brokers(), "amo", 400, DELIVERY_TIMEOUT, QUIET_PERIOD);
    assert_eq!(records.len(), 400);
}

#[test]
fn a_transform_error_goes_to_the_dead_letter_topic_while_good_messages_continue() {
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("clean", 1);
    kafka.create_topic("dlq.test", 1);
    let sluice = Sluice::start(&[render(
        r#"
apiVersion: sluice/v1
name: dlq
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-dlq
    topics:
      - filter: sensors/+/telemetry
        qos: 1
transforms:
  - name: positive-only
    plugin: @json_filter@
    config: { field: temperature, op: gt, value: 0 }
sink:
  kafka:
    brokers: @KAFKA@
    topic: clean
errors:
  dead_letter_topic: dlq.test
"#,
        &mqtt,
        &kafka,
    )]);

    let bad_1 = b"this is not json".to_vec();
    let bad_2 = br#"{"seq": 3, "temperature": 2"#.to_vec();
    let messages = vec![
        MqttMessage::new("sensors/dev-0/telemetry", r#"{"seq":0,"temperature":21}"#),
        MqttMessage::new("sensors/dev-1/telemetry", bad_1.clone()).with_property("trace", "b1"),
        MqttMessage::new("sensors/dev-2/telemetry", r#"{"seq":2,"temperature":22}"#),
        MqttMessage::new("sensors/dev-3/telemetry", bad_2.clone()).with_property("trace", "b2"),
        MqttMessage::new("sensors/dev-4/telemetry", r#"{"seq":4,"temperature":23}"#),
        MqttMessage::new("sensors/dev-5/telemetry", r#"{"seq":5,"temperature":24}"#),
    ];
    publish(&mqtt.url(), Protocol::V5, 1, &messages);

    let good = consume_with_grace(&kafka.brokers(), "clean", 4, DELIVERY_TIMEOUT, QUIET_PERIOD);
    assert_eq!(seqs(&good), vec![0, 2, 4, 5], "good records: {good:#?}");
    let mut dead = consume_with_grace(
        &kafka.brokers(),
        "dlq.test",
        2,
        DELIVERY_TIMEOUT,
        QUIET_PERIOD,
    );
    assert_eq!(dead.len(), 2, "dead letters: {dead:#?}");
    dead.sort_by_key(|record| record.header_str("sluice.error.mqtt_topic"));
    for (record, (topic, payload, trace)) in dead.iter().zip([
        ("sensors/dev-1/telemetry", &bad_1, "b1"),
        ("sensors/dev-3/telemetry", &bad_2, "b2"),
    ]) {
        assert_eq!(&record.payload, payload, "original payload kept");
        assert_eq!(
            record.header_str("sluice.error.stage").as_deref(),
            Some("transform")
        );
        assert_eq!(
            record.header_str("sluice.error.transform").as_deref(),
            Some("positive-only")
        );
        assert_eq!(
            record.header_str("sluice.error.mqtt_topic").as_deref(),
            Some(topic)
        );
        let message = record
            .header_str("sluice.error.message")
            .unwrap_or_default();
        assert!(
            message.to_ascii_lowercase().contains("json"),
            "error message names the problem: {message:?}"
        );
        assert_eq!(record.header_str("trace").as_deref(), Some(trace));
    }
    let dead_lettered = wait_for(deadline(Duration::from_secs(10)), || {
        sluice
            .metric(
                "sluice_messages_dead_lettered_total",
                &[("pipeline", "dlq"), ("stage", "transform")],
            )
            .filter(|&n| n >= 2.0)
    });
    assert_eq!(
        dead_lettered,
        Some(2.0),
        "sluice_messages_dead_lettered_total in:\n{}",
        sluice.metrics()
    );
}

#[test]
fn sigterm_drains_in_flight_messages_and_exits_zero() {
    const SENT: usize = 2_000;
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("drained", 1);
    let mut sluice = Sluice::start(&[render(
        r#"
apiVersion: sluice/v1
name: drain
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-drain
    protocol: v5
    session_expiry_secs: 3600
    topics:
      - filter: drain/#
        qos: 1
sink:
  kafka:
    brokers: @KAFKA@
    topic: drained
"#,
        &mqtt,
        &kafka,
    )]);
    publish_bulk(&mqtt.url(), Protocol::V5, 1, SENT, |seq| {
        MqttMessage::new("drain/x", json!({ "seq": seq }).to_string())
    });
    // Stop while sluice is (most likely) still working through them.
    let status = sluice.stop();
    assert!(
        status.success(),
        "sluice exited with {status} on SIGTERM\n{}",
        sluice.output_tail(40)
    );
    // Whatever was not taken before the stop is still queued at the broker
    // for the persistent session: a restart gets it. A clean drain acked
    // everything it delivered, so nothing is delivered twice.
    sluice.restart();
    let records = consume_with_grace(
        &kafka.brokers(),
        "drained",
        SENT,
        DELIVERY_TIMEOUT,
        QUIET_PERIOD,
    );
    let mut counter = SeqCounter::new(SENT);
    for seq in seqs(&records) {
        counter.add(seq);
    }
    let tally = counter.tally();
    println!("{tally}");
    assert_eq!(tally.missing, 0, "{tally}");
    assert_eq!(
        tally.duplicates, 0,
        "{tally}: a drain acks what it delivered"
    );
}

#[test]
fn one_hundred_thousand_messages_all_arrive_transformed() {
    const SENT: usize = 100_000;
    let started = Instant::now();
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("fleet", 4);
    kafka.create_topic("fleet.dlq", 1);
    let sluice = Sluice::start(&[render(
        r#"
apiVersion: sluice/v1
name: fleet
max_in_flight: 2000
batch: { max_messages: 256, max_wait_ms: 5 }
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-fleet
    topics:
      - filter: fleet/+/telemetry
        qos: 1
transforms:
  - name: normalise
    plugin: @json_map@
    config:
      from_topic: { device_id: 1 }
      rename: { temperature_f: temperature_c }
      convert: { temperature_c: f_to_c }
      round: 2
  - name: keep-all
    plugin: @json_filter@
    config: { field: seq, op: exists }
sink:
  kafka:
    brokers: @KAFKA@
    topic: fleet
    key: "{{topic.1}}"
errors:
  dead_letter_topic: fleet.dlq
"#,
        &mqtt,
        &kafka,
    )]);
    let ready_after = started.elapsed();

    let url = mqtt.url();
    let publisher =
        std::thread::spawn(move || publish_bulk(&url, Protocol::V311, 1, SENT, telemetry));
    let mut verifier = SeqVerifier::new(&kafka.brokers(), &["fleet"], SENT);
    let mut checked = 0usize;
    let check = |record: &Record| -> i64 {
        let payload = record.json();
        let seq = payload["seq"].as_i64().expect("seq");
        let device = format!("dev-{:04}", seq as usize % 1000);
        assert_eq!(payload["device_id"], json!(device), "{payload}");
        assert_eq!(record.key_str().as_deref(), Some(device.as_str()));
        assert!(payload.get("temperature_f").is_none(), "{payload}");
        let fahrenheit = 50.0 + (seq as usize % 500) as f64 / 10.0;
        assert_close(
            &payload["temperature_c"],
            ((fahrenheit - 32.0) * 5.0 / 9.0 * 100.0).round() / 100.0,
            "temperature_c",
        );
        seq
    };
    let until = started + Duration::from_secs(240);
    let tally = verifier.read_all(until, QUIET_PERIOD, |record| {
        checked += 1;
        check(record)
    });
    let report = publisher.join().expect("publisher thread");
    let elapsed = started.elapsed();
    println!(
        "{tally} (published in {:?}, sluice ready after {ready_after:?}, all in Kafka after {elapsed:?}, {:.0} msg/s end to end)",
        report.elapsed,
        SENT as f64 / (elapsed - ready_after).as_secs_f64()
    );
    let dead = consume(&kafka.brokers(), "fleet.dlq", 0, Duration::ZERO);
    assert!(
        tally.missing == 0 && tally.unexpected == 0,
        "{tally}; first missing: {:?}; {verifier:?}; dead letters: {}\n{}",
        verifier.counter().first_missing(10),
        dead.len(),
        sluice.output_tail(30)
    );
    assert_eq!(
        tally.duplicates, 0,
        "{tally}: no duplicates without a fault"
    );
    assert_eq!(checked, tally.delivered + tally.duplicates);
    assert!(dead.is_empty(), "{} dead letters", dead.len());
}

#[test]
fn messages_in_flight_when_sluice_is_killed_are_delivered_after_restart() {
    const SENT: usize = 20_000;
    const MAX_IN_FLIGHT: usize = 500;
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("crash", 2);
    let mut sluice = Sluice::start(&[render(
        &format!(
            r#"
apiVersion: sluice/v1
name: crash
delivery: at-least-once
max_in_flight: {MAX_IN_FLIGHT}
source:
  mqtt:
    url: @MQTT@
    client_id: e2e-crash
    protocol: v5
    session_expiry_secs: 3600
    topics:
      - filter: fleet/+/telemetry
        qos: 1
transforms:
  - name: normalise
    plugin: @json_map@
    config: {{ from_topic: {{ device_id: 1 }} }}
sink:
  kafka:
    brokers: @KAFKA@
    topic: crash
    key: "{{{{topic.1}}}}"
"#
        ),
        &mqtt,
        &kafka,
    )]);

    let url = mqtt.url();
    let publisher =
        std::thread::spawn(move || publish_bulk(&url, Protocol::V5, 1, SENT, telemetry));
    let mut verifier = SeqVerifier::new(&kafka.brokers(), &["crash"], SENT);
    let started = Instant::now();
    assert!(
        verifier.read_until(deadline(Duration::from_secs(120)), record_seq, |tally| {
            tally.delivered >= SENT / 10
        }),
        "only {} records after 120 s\n{}",
        verifier.records(0).len(),
        sluice.output_tail(30)
    );
    let in_flight = sluice.metric("sluice_in_flight_messages", &[("pipeline", "crash")]);
    let pid = sluice.pid();
    sluice.kill();
    let delivered_at_kill = verifier.records(0).len();
    assert!(!pid_is_alive(pid));
    assert!(
        delivered_at_kill < SENT,
        "sluice delivered all {SENT} before the kill: raise SENT so the kill hits work in flight"
    );
    println!(
        "killed sluice after {:?} with {delivered_at_kill} records in Kafka (in flight: {in_flight:?})",
        started.elapsed()
    );

    sluice.restart();
    let until = deadline(Duration::from_secs(180));
    let tally = verifier.read_all(until, QUIET_PERIOD, record_seq);
    publisher.join().expect("publisher thread");
    println!("{tally}");
    assert!(
        tally.missing == 0 && tally.unexpected == 0,
        "{tally}; first missing: {:?}\n{}",
        verifier.counter().first_missing(10),
        sluice.output_tail(30)
    );
    // Duplicates: the messages in the window (delivered, ack not yet sent)
    // plus acks already written that the broker had not read when the
    // process died; a SIGKILL'd socket with unread input ends in a RST, and
    // the broker drops what it had not read. Debian's mosquitto 2.0.11 also
    // refills its whole send quota on each PUBACK, so it does not hold the
    // second part down by itself: it is bounded only by how far the broker
    // lags in reading, which on this machine stays well under a window.
    assert!(
        tally.duplicates <= 2 * MAX_IN_FLIGHT,
        "{tally}: duplicates must be bounded by the in-flight window plus acks in \
         transit (2 x {MAX_IN_FLIGHT}); duplicated seqs: {:?}",
        verifier.counter().duplicate_ranges(20)
    );
}

// ---- TLS and authentication ------------------------------------------------
//
// The secured brokers keep their plain, anonymous listener (`mqtt.url()`)
// for the test's publisher; sluice alone uses the secured one
// (`mqtt.secure_url()`).

/// The user the password brokers admit.
const MQTT_USER: &str = "sluice-e2e";

/// Five messages `{"seq": 0..5}` on `topic/dev-N`.
fn five_messages(topic: &str) -> Vec<MqttMessage> {
    (0..5)
        .map(|seq| {
            MqttMessage::new(
                format!("{topic}/dev-{seq}"),
                json!({ "seq": seq }).to_string(),
            )
        })
        .collect()
}

/// A pipeline `name` from `url` (`topic/#`) to the Kafka topic `name`,
/// logging in with `password` (as `MQTT_USER`), retrying every 50-500 ms.
fn password_pipeline(name: &str, url: &str, password: &str, kafka: &Tansu) -> String {
    format!(
        r#"
apiVersion: sluice/v1
name: {name}
source:
  mqtt:
    url: {url}
    client_id: e2e-{name}
    username: {MQTT_USER}
    password: "{password}"
    reconnect: {{ initial_backoff_ms: 50, max_backoff_ms: 500 }}
    topics:
      - filter: {name}/#
        qos: 1
sink:
  kafka:
    brokers: {brokers}
    topic: {name}
"#,
        brokers = kafka.brokers(),
    )
}

/// The `/api/v1/pipelines` entry of pipeline `name`.
fn pipeline_status(sluice: &Sluice, name: &str) -> Value {
    let body = sluice.get("/api/v1/pipelines").body;
    let all: Value = serde_json::from_str(&body)
        .unwrap_or_else(|err| panic!("/api/v1/pipelines is not JSON ({err}): {body}"));
    all["pipelines"]
        .as_array()
        .and_then(|pipelines| pipelines.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no pipeline {name} in /api/v1/pipelines: {body}"))
}

/// A pipeline `name` from the TLS listener of `mqtt` (`topic/#`) to the
/// Kafka topic `name`, trusting the broker's CA, with the client
/// certificate or without.
fn tls_pipeline(name: &str, mqtt: &Mosquitto, kafka: &Tansu, client_cert: bool) -> String {
    let files = mqtt.tls_files();
    let mut tls = format!("{{ ca_file: {}", files.ca_file.display());
    if client_cert {
        tls += &format!(
            ", client_cert_file: {}, client_key_file: {}",
            files.client_cert_file.display(),
            files.client_key_file.display()
        );
    }
    tls += " }";
    format!(
        r#"
apiVersion: sluice/v1
name: {name}
source:
  mqtt:
    url: {url}
    client_id: e2e-{name}
    tls: {tls}
    reconnect: {{ initial_backoff_ms: 50, max_backoff_ms: 500 }}
    topics:
      - filter: {name}/#
        qos: 1
sink:
  kafka:
    brokers: {brokers}
    topic: {name}
"#,
        url = mqtt.secure_url(),
        brokers = kafka.brokers(),
    )
}

#[test]
fn an_mqtts_source_with_a_private_ca_delivers() {
    let mqtt = Mosquitto::start_tls(TlsOptions {
        require_certificate: true,
    });
    let kafka = Tansu::start();
    kafka.create_topic("tls", 1);
    let _sluice = Sluice::start(&[tls_pipeline("tls", &mqtt, &kafka, true)]);

    publish(&mqtt.url(), Protocol::V5, 1, &five_messages("tls"));
    let records = consume_with_grace(&kafka.brokers(), "tls", 5, DELIVERY_TIMEOUT, QUIET_PERIOD);
    assert_eq!(seqs(&records), vec![0, 1, 2, 3, 4], "records: {records:#?}");
}

/// The counterpart of the test above: the broker really demands the client
/// certificate, so that test's success means mutual TLS works.
#[test]
fn an_mqtts_source_without_the_required_client_certificate_is_refused() {
    let mqtt = Mosquitto::start_tls(TlsOptions {
        require_certificate: true,
    });
    let kafka = Tansu::start();
    let mut sluice = Sluice::spawn(&[tls_pipeline("nocert", &mqtt, &kafka, false)]);
    sluice.wait_listening(READY_TIMEOUT);
    let retried = wait_until(deadline(Duration::from_secs(30)), || {
        sluice
            .metric("sluice_mqtt_reconnects_total", &[("pipeline", "nocert")])
            .is_some_and(|failures| failures >= 2.0)
    });
    assert!(
        retried,
        "sluice did not fail to connect twice\n{}",
        sluice.output_tail(20)
    );
    assert_eq!(sluice.get("/readyz").status, 503);
    assert_eq!(
        pipeline_status(&sluice, "nocert")["source_connected"],
        false
    );
    // rustls's words for the broker's alert.
    assert!(
        sluice.stderr().contains("CertificateRequired"),
        "the missing certificate is not in sluice's log:\n{}",
        sluice.output_tail(20)
    );
}

#[test]
fn a_username_and_password_source_delivers() {
    let mqtt = Mosquitto::start_with_password(MQTT_USER, "correct-horse-battery");
    let kafka = Tansu::start();
    kafka.create_topic("authed", 1);
    let _sluice = Sluice::start(&[password_pipeline(
        "authed",
        &mqtt.secure_url(),
        "correct-horse-battery",
        &kafka,
    )]);

    publish(&mqtt.url(), Protocol::V5, 1, &five_messages("authed"));
    let records = consume_with_grace(
        &kafka.brokers(),
        "authed",
        5,
        DELIVERY_TIMEOUT,
        QUIET_PERIOD,
    );
    assert_eq!(seqs(&records), vec![0, 1, 2, 3, 4], "records: {records:#?}");
}

#[test]
fn a_wrong_password_is_reported_and_retried_without_crashing() {
    let mqtt = Mosquitto::start_with_password(MQTT_USER, "correct-horse-battery");
    let kafka = Tansu::start();
    kafka.create_topic("refused", 1);
    let mut sluice = Sluice::spawn(&[password_pipeline(
        "refused",
        &mqtt.secure_url(),
        "not-the-password",
        &kafka,
    )]);
    sluice.wait_listening(READY_TIMEOUT);

    // Refused, logged, and tried again (and again).
    let retried = wait_until(deadline(Duration::from_secs(30)), || {
        sluice
            .metric("sluice_mqtt_reconnects_total", &[("pipeline", "refused")])
            .is_some_and(|failures| failures >= 3.0)
    });
    assert!(
        retried,
        "fewer than 3 failed connection attempts; metrics:\n{}\n{}",
        sluice.metrics(),
        sluice.output_tail(20)
    );
    let stderr = sluice.stderr();
    assert!(
        stderr.contains("MQTT connection failed")
            && stderr.contains("broker refused the connection"),
        "the refusal is not in sluice's log:\n{}",
        sluice.output_tail(20)
    );

    // Still up, and honest about it.
    assert!(pid_is_alive(sluice.pid()), "sluice exited");
    assert_eq!(sluice.get("/healthz").status, 200);
    let readyz = sluice.get("/readyz");
    assert_eq!(readyz.status, 503, "/readyz: {}", readyz.body);
    let status = pipeline_status(&sluice, "refused");
    assert_eq!(status["source_connected"], false, "{status}");
    assert_eq!(
        sluice.metric("sluice_mqtt_connected", &[("pipeline", "refused")]),
        Some(0.0)
    );
}

#[test]
fn the_password_never_appears_in_logs_or_the_api() {
    const RIGHT: &str = "Right-Pa55word-8c1f";
    const WRONG: &str = "Wrong-Pa55word-4e7a";
    let mqtt = Mosquitto::start_with_password(MQTT_USER, RIGHT);
    let kafka = Tansu::start();
    kafka.create_topic("trusted", 1);
    // One pipeline logs in, one is refused; everything is logged.
    let mut sluice = Sluice::spawn_with_env(
        &[
            password_pipeline("trusted", &mqtt.secure_url(), RIGHT, &kafka),
            password_pipeline("refused", &mqtt.secure_url(), WRONG, &kafka),
        ],
        &[("SLUICE_LOG", "trace")],
    );
    sluice.wait_listening(READY_TIMEOUT);
    let trusted_ready = || pipeline_status(&sluice, "trusted")["ready"] == true;
    assert!(
        wait_until(deadline(READY_TIMEOUT), trusted_ready),
        "pipeline `trusted` not ready\n{}",
        sluice.output_tail(20)
    );
    publish(&mqtt.url(), Protocol::V5, 1, &five_messages("trusted"));
    let records = consume(&kafka.brokers(), "trusted", 5, DELIVERY_TIMEOUT);
    assert_eq!(seqs(&records), vec![0, 1, 2, 3, 4]);
    assert!(
        wait_until(deadline(Duration::from_secs(30)), || sluice
            .metric("sluice_mqtt_reconnects_total", &[("pipeline", "refused")])
            .is_some_and(|failures| failures >= 2.0)),
        "pipeline `refused` was not refused twice\n{}",
        sluice.output_tail(20)
    );

    let mut seen = Vec::new();
    for path in [
        "/api/v1/pipelines",
        "/api/v1/pipelines/trusted",
        "/api/v1/pipelines/refused",
        "/metrics",
        "/readyz",
    ] {
        seen.push((format!("GET {path}"), sluice.get(path).body));
    }
    // The drain and shutdown log too.
    let status = sluice.stop();
    assert!(status.success(), "sluice exited with {status}");
    for entry in std::fs::read_dir(sluice.dir()).expect("sluice's folder") {
        let path = entry.expect("sluice's folder").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("sluice-") && (name.ends_with(".stderr") || name.ends_with(".stdout")) {
            let text = std::fs::read_to_string(&path).expect("sluice's output");
            seen.push((path.display().to_string(), text));
        }
    }
    // The check means something only if the log is at its most verbose and
    // has the failed logins in it.
    let log = sluice.stderr();
    assert!(
        log.contains("TRACE") && log.contains("broker refused the connection"),
        "expected trace lines and the refusal in sluice's log:\n{log}"
    );
    for (place, text) in &seen {
        for secret in [RIGHT, WRONG] {
            assert!(
                !text.contains(secret),
                "the password {secret:?} appears in {place}:\n{text}"
            );
        }
    }
}
