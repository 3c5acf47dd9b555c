//! The source and sink going away and coming back, on real brokers: nothing
//! is lost, and while Kafka is unreachable nothing is acked, the window
//! holds and `/readyz` says so.

use std::time::Duration;

use serde_json::json;
use sluice_tests::*;

const TIMEOUT: Duration = Duration::from_secs(90);

fn pipeline(name: &str, mqtt: &Mosquitto, kafka: &Tansu, max_in_flight: usize) -> String {
    format!(
        r#"
apiVersion: sluice/v1
name: {name}
max_in_flight: {max_in_flight}
source:
  mqtt:
    url: {url}
    client_id: e2e-{name}
    protocol: v5
    keep_alive_secs: 5
    reconnect: {{ initial_backoff_ms: 50, max_backoff_ms: 500 }}
    topics:
      - filter: {name}/+
        qos: 1
sink:
  kafka:
    brokers: {brokers}
    topic: {name}
"#,
        url = mqtt.url(),
        brokers = kafka.brokers(),
    )
}

fn wave(url: &str, topic: &str, from: usize, count: usize) {
    let report = publish_bulk(url, Protocol::V5, 1, count, |i| {
        MqttMessage::new(
            format!("{topic}/d{}", i % 10),
            json!({ "seq": from + i }).to_string(),
        )
    });
    assert_eq!(report.sent, count, "publisher: {report:?}");
}

#[test]
fn a_restarted_mqtt_broker_is_reconnected_and_nothing_is_lost() {
    let mut mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("bounce", 1);
    let sluice = Sluice::start(&[pipeline("bounce", &mqtt, &kafka, 200)]);
    let mut verifier = SeqVerifier::new(&kafka.brokers(), &["bounce"], 6000);

    wave(&mqtt.url(), "bounce", 0, 3000);
    // Restart while sluice is (most likely) still working through the wave:
    // what it has not acked stays queued in the broker's persisted session.
    mqtt.restart();
    assert!(
        wait_until(deadline(TIMEOUT), || sluice
            .metric("sluice_mqtt_reconnects_total", &[("pipeline", "bounce")])
            .is_some_and(|v| v >= 1.0)
            && sluice.get("/readyz").status == 200),
        "sluice did not reconnect\n{}",
        sluice.output_tail(20)
    );
    wave(&mqtt.url(), "bounce", 3000, 3000);
    verifier.read_until(deadline(TIMEOUT), record_seq, |tally| tally.missing == 0);
    let tally = verifier.tally();
    println!("bounce: {tally}");
    assert!(
        tally.missing == 0 && tally.unexpected == 0,
        "{tally}; missing (first 10): {:?}\n{}",
        verifier.counter().first_missing(10),
        sluice.output_tail(20)
    );
}

#[test]
fn while_kafka_is_unreachable_nothing_is_acked_and_readiness_drops() {
    const WINDOW: usize = 100;
    const SENT: usize = 2000;
    let mqtt = Mosquitto::start();
    let mut kafka = Tansu::start();
    kafka.create_topic("outage", 1);
    let sluice = Sluice::start(&[pipeline("outage", &mqtt, &kafka, WINDOW)]);
    // SIGSTOP: the broker keeps its sockets but answers nothing.
    kafka.pause();
    let url = mqtt.url();
    let publisher = std::thread::spawn(move || wave(&url, "outage", 0, SENT));
    let window_full = wait_until(deadline(TIMEOUT), || {
        sluice.metric("sluice_in_flight_messages", &[("pipeline", "outage")]) == Some(WINDOW as f64)
    });
    let not_ready = wait_until(deadline(TIMEOUT), || sluice.get("/readyz").status == 503);
    let received = sluice.metric("sluice_messages_received_total", &[("pipeline", "outage")]);
    kafka.resume();
    assert!(
        window_full,
        "the window never filled\n{}",
        sluice.output_tail(20)
    );
    assert!(not_ready, "/readyz stayed 200 while Kafka was stopped");
    assert_eq!(
        received,
        Some(WINDOW as f64),
        "with Kafka stopped, sluice must not take more than the window from MQTT"
    );
    publisher.join().expect("publisher");
    let records = consume(&kafka.brokers(), "outage", SENT, TIMEOUT);
    let mut counter = SeqCounter::new(SENT);
    for record in &records {
        counter.add(record_seq(record));
    }
    let tally = counter.tally();
    println!("outage: {tally}");
    assert_eq!(tally.missing, 0, "{tally}\n{}", sluice.output_tail(20));
    assert!(
        wait_until(deadline(TIMEOUT), || sluice.get("/readyz").status == 200),
        "/readyz did not recover"
    );
}
