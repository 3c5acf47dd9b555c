//! Checks the harness itself against the real brokers, independently of the
//! `sluice` binary: brokers start and stop, Kafka round-trips, MQTT
//! round-trips in both protocol versions.

use std::time::{Duration, Instant};

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_tests::*;

#[test]
fn mosquitto_round_trips_messages_and_is_stopped_on_drop() {
    let started = Instant::now();
    let mut mqtt = Mosquitto::start();
    let (pid, port) = (mqtt.pid(), mqtt.port());
    assert!(port_is_open(port));
    println!("mosquitto up on {} in {:?}", mqtt.url(), started.elapsed());

    for (protocol, qos) in [(Protocol::V311, 1), (Protocol::V5, 2), (Protocol::V5, 0)] {
        let subscriber = MqttSubscriber::start(&mqtt.url(), protocol, "selftest/#", 2);
        let messages: Vec<_> = (0..5)
            .map(|i| {
                MqttMessage::new(format!("selftest/{protocol:?}/{i}"), format!("m{i}"))
                    .with_property("origin", "selftest")
            })
            .collect();
        let report = publish(&mqtt.url(), protocol, qos, &messages);
        assert_eq!(report.sent, 5);
        let received = subscriber.wait_for(5, Duration::from_secs(10));
        assert_eq!(received.len(), 5, "{protocol:?} QoS {qos}: {received:?}");
        assert_eq!(received[3].payload, b"m3");
        if protocol == Protocol::V5 {
            assert_eq!(
                received[0].user_properties,
                vec![("origin".to_owned(), "selftest".to_owned())]
            );
        }
    }

    // A restart keeps the port.
    mqtt.restart();
    assert_eq!(mqtt.port(), port);
    assert_ne!(mqtt.pid(), pid);
    let subscriber = MqttSubscriber::start(&mqtt.url(), Protocol::V5, "again", 1);
    publish(
        &mqtt.url(),
        Protocol::V5,
        1,
        &[MqttMessage::new("again", "x")],
    );
    assert_eq!(subscriber.wait_for(1, Duration::from_secs(10)).len(), 1);
    drop(subscriber);

    let pid = mqtt.pid();
    drop(mqtt);
    assert!(
        !pid_is_alive(pid),
        "mosquitto pid {pid} still alive after drop"
    );
    assert!(!port_is_open(port), "port {port} still open after drop");
}

#[test]
fn bulk_publish_delivers_every_message_at_qos_1() {
    let mqtt = Mosquitto::start();
    let subscriber = MqttSubscriber::start(&mqtt.url(), Protocol::V311, "bulk/#", 1);
    let count = 5_000;
    let report = publish_bulk(&mqtt.url(), Protocol::V311, 1, count, |i| {
        MqttMessage::new(format!("bulk/{}", i % 50), format!("{{\"seq\":{i}}}"))
    });
    println!("published {} in {:?}", report.sent, report.elapsed);
    let received = subscriber.wait_for(count, Duration::from_secs(30));
    assert_eq!(received.len(), count);
}

#[test]
fn tansu_round_trips_records_with_keys_and_headers_and_is_stopped_on_drop() {
    let started = Instant::now();
    let kafka = Tansu::start();
    println!("tansu up on {} in {:?}", kafka.brokers(), started.elapsed());
    let (pid, port) = (kafka.pid(), kafka.port());

    kafka.create_topic("selftest", 3);
    kafka.create_topic("selftest", 3); // idempotent

    let messages: Vec<KafkaMessage> = (0..30)
        .map(|i| KafkaMessage {
            key: Some(format!("k{}", i % 4).into_bytes()),
            payload: format!("{{\"seq\":{i}}}").into_bytes(),
            headers: vec![("h".to_owned(), b"v".to_vec())],
        })
        .collect();
    let offsets = produce(&kafka.brokers(), "selftest", &messages);
    assert_eq!(offsets.len(), 30);

    let read_started = Instant::now();
    let records = consume(&kafka.brokers(), "selftest", 30, Duration::from_secs(30));
    println!(
        "read back {} records in {:?}",
        records.len(),
        read_started.elapsed()
    );
    assert_eq!(records.len(), 30, "{records:?}");
    let partitions = count_by(&records, |record| record.partition);
    assert!(
        partitions.len() > 1,
        "keys spread over partitions: {partitions:?}"
    );
    let mut seqs: Vec<i64> = records
        .iter()
        .map(|record| record.json()["seq"].as_i64().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..30).collect::<Vec<_>>());
    let record = &records[0];
    assert_eq!(record.header_str("h").as_deref(), Some("v"));
    assert!(record.key_str().unwrap().starts_with('k'));
    assert!(record.timestamp.is_some());
    // Same key, same partition.
    for key in ["k0", "k1", "k2", "k3"] {
        let keyed = count_by(
            &records
                .iter()
                .filter(|r| r.key_str().as_deref() == Some(key))
                .cloned()
                .collect::<Vec<_>>(),
            |r| r.partition,
        );
        assert_eq!(keyed.len(), 1, "{key} on one partition: {keyed:?}");
    }

    // A topic that does not exist (yet) reads as empty, without error.
    let none = consume_with_grace(
        &kafka.brokers(),
        "does-not-exist",
        1,
        Duration::from_secs(2),
        Duration::ZERO,
    );
    assert!(none.is_empty());

    drop(kafka);
    assert!(!pid_is_alive(pid), "tansu pid {pid} still alive after drop");
    assert!(!port_is_open(port), "port {port} still open after drop");
}

#[test]
fn the_reader_reads_every_record_once_while_two_producers_write_one_partition() {
    // tansu raises a partition's high watermark before it stores the batch,
    // so with two producers at once a fetch can skip a batch that is not
    // stored yet. The reader must go back for it. One record per request
    // makes many requests, and many chances for the race.
    const EACH: usize = 3000;
    let kafka = Tansu::start();
    kafka.create_topic("contended", 1);
    let writers: Vec<_> = (0..2)
        .map(|writer| {
            let brokers = kafka.brokers();
            std::thread::spawn(move || {
                let producer: BaseProducer = kafka_client_config(&brokers)
                    .set("linger.ms", "0")
                    .set("batch.num.messages", "1")
                    .create()
                    .expect("rdkafka producer");
                for i in 0..EACH {
                    let payload = format!("{writer}-{i}");
                    let mut record = BaseRecord::<(), _>::to("contended").payload(&payload);
                    while let Err((err, unsent)) = producer.send(record) {
                        assert!(
                            matches!(err.rdkafka_error_code(), Some(RDKafkaErrorCode::QueueFull)),
                            "{err}"
                        );
                        record = unsent;
                        producer.poll(Duration::from_millis(10));
                    }
                    producer.poll(Duration::ZERO);
                }
                producer.flush(Duration::from_secs(30)).expect("flush");
            })
        })
        .collect();
    let total = 2 * EACH;
    let mut reader = TopicReader::new(&kafka.brokers(), "contended");
    let complete = reader.read_until(total, deadline(Duration::from_secs(60)));
    for writer in writers {
        writer.join().expect("producer thread");
    }
    reader.poll_for(Duration::from_millis(500));
    let records = reader.into_records();
    assert!(complete, "read {} of {total}", records.len());
    let mut offsets: Vec<i64> = records.iter().map(|record| record.offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..total as i64).collect::<Vec<_>>());
    let mut payloads: Vec<String> = records.iter().map(Record::payload_str).collect();
    payloads.sort_unstable();
    let mut expected: Vec<String> = (0..2)
        .flat_map(|writer| (0..EACH).map(move |i| format!("{writer}-{i}")))
        .collect();
    expected.sort_unstable();
    assert_eq!(payloads, expected);
}

#[test]
fn brokers_are_stopped_when_a_test_panics() {
    let pids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&pids);
    let result = std::thread::spawn(move || {
        let mqtt = Mosquitto::start();
        let kafka = Tansu::start();
        seen.lock()
            .unwrap()
            .extend([(mqtt.pid(), mqtt.port()), (kafka.pid(), kafka.port())]);
        panic!("deliberate panic with brokers running");
    })
    .join();
    assert!(result.is_err());
    for (pid, port) in pids.lock().unwrap().iter() {
        assert!(!pid_is_alive(*pid), "pid {pid} survived the panic");
        assert!(
            !port_is_open(*port),
            "port {port} still open after the panic"
        );
    }
}

#[test]
fn wait_until_polls_until_the_deadline() {
    let started = Instant::now();
    let mut calls = 0;
    assert!(!wait_until(deadline(Duration::from_millis(100)), || {
        calls += 1;
        false
    }));
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(calls > 1);
    let mut n = 0;
    assert_eq!(
        wait_for(deadline(Duration::from_secs(5)), || {
            n += 1;
            (n == 3).then_some(n)
        }),
        Some(3)
    );
}

#[test]
fn secured_mosquitto_brokers_keep_an_open_listener_and_are_stopped_on_drop() {
    let tls = Mosquitto::start_tls(TlsOptions {
        require_certificate: true,
    });
    assert!(tls.secure_url().starts_with("mqtts://127.0.0.1:"));
    let files = tls.tls_files().clone();
    // The server and client certificates chain to the broker's own CA.
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&files.ca_file)
        .arg(&files.server_cert_file)
        .arg(&files.client_cert_file)
        .output()
        .expect("run openssl verify");
    assert!(
        verify.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(files.client_key_file.is_file());

    let password = Mosquitto::start_with_password("user", "pass");
    assert!(password.secure_url().starts_with("mqtt://127.0.0.1:"));

    for broker in [&tls, &password] {
        // The plain listener stays open to the harness's clients.
        let subscriber = MqttSubscriber::start(&broker.url(), Protocol::V5, "open/#", 1);
        publish(
            &broker.url(),
            Protocol::V5,
            1,
            &[MqttMessage::new("open/a", "x")],
        );
        assert_eq!(subscriber.wait_for(1, Duration::from_secs(10)).len(), 1);
    }
    // The password listener admits no anonymous client.
    let anonymous = std::panic::catch_unwind(|| {
        publish(
            &password.secure_url(),
            Protocol::V5,
            1,
            &[MqttMessage::new("closed/a", "x")],
        )
    });
    assert!(anonymous.is_err(), "an anonymous client got in");

    let ports = [
        tls.port(),
        tls.secure_port(),
        password.port(),
        password.secure_port(),
    ];
    drop(tls);
    drop(password);
    for port in ports {
        assert!(!port_is_open(port), "port {port} still open after drop");
    }
}
