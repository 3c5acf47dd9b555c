//! The fault-injection suite (issue 3, "The fault suite"): real mosquitto,
//! real tansu, the `sluice` binary, and faults injected while a
//! sequence-numbered stream flows through. The publisher stamps `seq` in
//! every message; the verifier reads the Kafka topics back and reports the
//! missing and duplicate numbers. Each scenario prints one line:
//!
//! ```text
//! SCENARIO: sent N, delivered N, missing M, duplicates D[, scenario figures]
//! ```
//!
//! "delivered" counts distinct numbers found in Kafka, in the main topic or
//! (for the scenarios that make failing messages) the dead-letter topic:
//! both mean the message's fate was settled.
//!
//! Sizes: by default (what `cargo test` and CI run) a short version;
//! `SLUICE_FAULTS=full` selects the issue's sizes (100k messages, 10 kills,
//! a 30 s Kafka stop, 5,000 messages while offline). `bash scripts/faults.sh`
//! runs the full version and prints a summary.
//!
//! The scenarios run one at a time even under the default parallel test
//! runner (a lock): they measure memory and react to progress, and two of
//! them competing for the same cores would measure each other.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sluice_tests::*;

/// `max_in_flight` of every pipeline here.
const WINDOW: usize = RIG_WINDOW;
/// How long the verifier keeps reading after the last number arrived, to
/// catch late duplicates.
const QUIET: Duration = Duration::from_secs(3);
/// Every `POISON_EVERY`-th message is poison in the poison scenario.
const POISON_EVERY: usize = 1_000;
/// The size of an over-large message, and the Kafka limit it exceeds.
const LARGE_BYTES: usize = 50_000;
const KAFKA_MAX_BYTES: usize = 20_000;

/// Message counts, fault counts and durations of one run of the suite.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Messages in the main stream of most scenarios.
    messages: usize,
    /// `kill -9`s in the kill scenario.
    kills: usize,
    /// How long Kafka is frozen.
    kafka_stop: Duration,
    /// Messages published while sluice is offline.
    offline: usize,
    /// Normal messages in the too-large scenario, and how many over-large
    /// ones are mixed in.
    large_stream: usize,
    large: usize,
    /// Pace of the publisher (messages per second) where the publisher
    /// must still be publishing when the fault comes (the broker restart)
    /// and while it lasts (the Kafka stop).
    rate: u32,
    /// The Kafka stop's pace, higher: the backlog that builds up at the
    /// broker meanwhile should dwarf the memory bound.
    stop_rate: u32,
    /// How long progress towards a fault point may take, and reading the
    /// whole stream back.
    progress_timeout: Duration,
    final_timeout: Duration,
}

impl Sizes {
    fn get() -> Sizes {
        match std::env::var("SLUICE_FAULTS").as_deref() {
            Ok("full") => Sizes {
                messages: 100_000,
                kills: 10,
                kafka_stop: Duration::from_secs(30),
                offline: 5_000,
                large_stream: 20_000,
                large: 10,
                rate: 5_000,
                stop_rate: 5_000,
                progress_timeout: Duration::from_secs(300),
                final_timeout: Duration::from_secs(600),
            },
            Ok("short") | Ok("") | Err(_) => Sizes {
                messages: 20_000,
                kills: 3,
                // More than the runtime's Kafka probe takes to notice a
                // frozen broker (5 s between probes + 3 s timeout), so that
                // `/readyz` is seen to drop.
                kafka_stop: Duration::from_secs(12),
                offline: 5_000,
                large_stream: 5_000,
                large: 5,
                rate: 5_000,
                stop_rate: 8_000,
                progress_timeout: Duration::from_secs(120),
                final_timeout: Duration::from_secs(180),
            },
            Ok(other) => panic!("SLUICE_FAULTS={other}: expected `full` or `short`"),
        }
    }
}

/// One scenario at a time (see the module comment).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---- 1. kill -9 ------------------------------------------------------------

#[test]
fn kill_9_during_the_stream_loses_nothing_and_duplicates_stay_bounded() {
    let _serial = serial();
    let sizes = Sizes::get();
    let (n, kills) = (sizes.messages, sizes.kills);
    let mut rig = Rig::start("kill-9", "");
    // Unpaced: the backlog waits at the broker and sluice works at full
    // speed with its window full, so every kill hits a full window.
    let publisher = StreamPublisher::start(&rig.mqtt.url(), n, None, telemetry);
    let mut verifier = rig.verifier(n);
    let mut in_flight_at_kills = Vec::new();
    for kill in 1..=kills {
        // Kills spaced by progress in Kafka: at 1/(K+1), 2/(K+1), ...
        rig.progress(
            &mut verifier,
            n * kill / (kills + 1),
            sizes.progress_timeout,
        );
        let in_flight = rig.metric("sluice_in_flight_messages", &[]);
        let pid = rig.sluice.pid();
        rig.sluice.kill();
        assert!(!pid_is_alive(pid), "sluice pid {pid} survived SIGKILL");
        let delivered = verifier.count_new(record_seq).delivered;
        assert!(
            delivered < n,
            "all {n} delivered before kill {kill}: raise the stream size"
        );
        in_flight_at_kills.push(in_flight as usize);
        rig.sluice.restart();
    }
    let report = publisher.join();
    let tally = verifier.read_all(deadline(sizes.final_timeout), QUIET, record_seq);
    // Per kill: the window (delivered, ack not yet sent) plus acks already
    // written that the broker had not read when the process died (see
    // tests/e2e.rs, messages_in_flight_when_sluice_is_killed_...).
    let bound = kills * 2 * WINDOW;
    println!(
        "kill-9: {tally}, kills {kills}, duplicate bound {bound} ({kills} x 2 x window {WINDOW}), \
         in flight at kills {in_flight_at_kills:?}"
    );
    assert_eq!(report.sent, n, "{report:?}");
    rig.assert_complete(&verifier);
    assert!(
        tally.duplicates <= bound,
        "{tally}: more duplicates than {bound}; duplicated: {:?}",
        verifier.counter().duplicate_ranges(20)
    );
    assert!(
        verifier.records(1).is_empty(),
        "dead letters without a fault"
    );
}

// ---- 2. SIGTERM ------------------------------------------------------------

#[test]
fn sigterm_during_the_stream_then_restart_loses_nothing_and_duplicates_nothing() {
    let _serial = serial();
    let sizes = Sizes::get();
    let n = sizes.messages;
    let mut rig = Rig::start("sigterm", "");
    // Unpaced, as for kill -9: the drain has a full window to finish.
    let publisher = StreamPublisher::start(&rig.mqtt.url(), n, None, telemetry);
    let mut verifier = rig.verifier(n);
    rig.progress(&mut verifier, n / 3, sizes.progress_timeout);
    let in_flight = rig.metric("sluice_in_flight_messages", &[]);
    let stopping = Instant::now();
    let status = rig.sluice.stop();
    let drain = stopping.elapsed();
    assert!(
        status.success(),
        "sluice exited with {status} on SIGTERM (drain took {drain:?})\n{}",
        rig.sluice.output_tail(40)
    );
    let delivered = verifier.count_new(record_seq).delivered;
    assert!(delivered < n, "all {n} delivered before SIGTERM");
    rig.sluice.restart();
    let report = publisher.join();
    let tally = verifier.read_all(deadline(sizes.final_timeout), QUIET, record_seq);
    println!(
        "sigterm: {tally}, drained {in_flight} in flight in {:.1} s, exit 0",
        drain.as_secs_f64()
    );
    assert_eq!(report.sent, n, "{report:?}");
    rig.assert_complete(&verifier);
    // A drain acks what it delivered.
    rig.assert_no_duplicates(&verifier);
}

// ---- 3. Kafka frozen -------------------------------------------------------

#[test]
fn kafka_frozen_mid_stream_loses_nothing_holds_memory_flat_and_drops_readiness() {
    let _serial = serial();
    let sizes = Sizes::get();
    let stop = sizes.kafka_stop;
    // A paced stream lasting twice the stop: Kafka freezes a quarter of the
    // way in, and publishing goes on all through the stop.
    let rate = sizes.stop_rate;
    let n = (2.0 * stop.as_secs_f64() * f64::from(rate)) as usize;
    let mut rig = Rig::start("kafka-stop", "");
    let publisher = StreamPublisher::start(&rig.mqtt.url(), n, Some(rate), telemetry);
    let mut verifier = rig.verifier(n);
    // Paced by the publisher (not by Kafka), so that publishing surely goes
    // on through the stop even if sluice were slower than the pace.
    rig.published(&publisher, &mut verifier, n / 4, sizes.progress_timeout);

    let pid = rig.sluice.pid();
    let rss_before = rss_kib(pid).expect("sluice's VmRSS");
    let published_before = publisher.acked();
    rig.kafka.pause();
    let frozen = Instant::now();
    // Counted from after the freeze: from then on, at most the free part
    // of the window plus the deliveries Kafka had already answered can be
    // taken from MQTT, which is at most the window.
    let received_before = rig.metric("sluice_messages_received_total", &[]);
    let mut rss_max = rss_before;
    let mut first_503 = None;
    let mut back_to_200 = None;
    let mut in_flight_max = 0.0f64;
    let mut last_sample = None::<Instant>;
    // Sample memory, readiness and the window through the stop (the stop
    // lasts `stop`; nothing is waited for).
    wait_until(deadline(stop), || {
        if last_sample.is_some_and(|at| at.elapsed() < Duration::from_millis(250)) {
            return false;
        }
        last_sample = Some(Instant::now());
        rss_max = rss_max.max(rss_kib(pid).unwrap_or(0));
        in_flight_max = in_flight_max.max(rig.metric("sluice_in_flight_messages", &[]));
        match rig.sluice.get("/readyz").status {
            503 => {
                first_503.get_or_insert(frozen.elapsed());
            }
            _ if first_503.is_some() => {
                back_to_200.get_or_insert(frozen.elapsed());
            }
            _ => {}
        }
        false
    });
    let received_during = rig.metric("sluice_messages_received_total", &[]) - received_before;
    let published_during = publisher.acked() - published_before;
    let rss_during = rss_max.max(rss_kib(pid).unwrap_or(0));
    rig.kafka.resume();

    let report = publisher.join();
    let tally = verifier.read_all(deadline(sizes.final_timeout), QUIET, record_seq);
    let ready_again = wait_until(deadline(Duration::from_secs(30)), || {
        rig.sluice.get("/readyz").status == 200
    });
    let rss_after = rss_kib(pid).expect("sluice's VmRSS");
    // The memory bound: the window's worth of messages at a generous
    // 2 KiB each (a ~150 B payload as read from MQTT, the decoded message,
    // its copy in librdkafka's queue, the ack-tracker entry and the pending
    // delivery future), plus 8 MiB of slack for allocator and librdkafka
    // buffer noise (the catch-up after the stop runs at full speed). What
    // must not happen is growth with the backlog, which meanwhile grows at
    // the broker by `published_during` messages: at least their payload
    // bytes, more than the bound in either size of the suite.
    let bound_kib = (WINDOW * 2) as u64 + 8 * 1024;
    let backlog_kib = (published_during * telemetry(0).payload.len() / 1024) as u64;
    let growth_during = rss_during.saturating_sub(rss_before);
    let growth_after = rss_after.saturating_sub(rss_before);
    println!(
        "kafka-stop: {tally}, stopped {} s, /readyz 503 after {}, received while stopped {received_during} \
         (window {WINDOW}; {published_during} published meanwhile, {} of payload), RSS before {} / during max {} / \
         after {} (bound +{})",
        stop.as_secs(),
        first_503.map_or("never".into(), |t| format!("{:.1} s", t.as_secs_f64())),
        mib(backlog_kib),
        mib(rss_before),
        mib(rss_during),
        mib(rss_after),
        mib(bound_kib),
    );
    assert_eq!(report.sent, n, "{report:?}");
    rig.assert_complete(&verifier);
    assert!(
        first_503.is_some(),
        "/readyz never answered 503 during the {stop:?} stop"
    );
    assert_eq!(
        back_to_200, None,
        "/readyz went back to 200 while Kafka was still stopped"
    );
    assert!(ready_again, "/readyz not 200 again after Kafka came back");
    assert!(
        received_during <= WINDOW as f64 && in_flight_max <= WINDOW as f64,
        "while Kafka was stopped sluice took {received_during} messages from MQTT \
         (in flight at most {in_flight_max}): more than the window {WINDOW}"
    );
    assert!(
        published_during > WINDOW,
        "only {published_during} published during the stop: the backlog did not grow, \
         so the memory check proves nothing"
    );
    assert!(
        growth_during <= bound_kib && growth_after <= bound_kib,
        "RSS grew by {} during / {} after the stop: more than {}",
        mib(growth_during),
        mib(growth_after),
        mib(bound_kib)
    );
}

// ---- 4. mosquitto restarted ------------------------------------------------

#[test]
fn mosquitto_restarted_mid_stream_loses_nothing() {
    let _serial = serial();
    let sizes = Sizes::get();
    let n = sizes.messages;
    let mut rig = Rig::start("mqtt-restart", "");
    let publisher = StreamPublisher::start(&rig.mqtt.url(), n, Some(sizes.rate), telemetry);
    let mut verifier = rig.verifier(n);
    rig.published(&publisher, &mut verifier, n / 3, sizes.progress_timeout);
    let published_at_restart = publisher.acked();
    assert!(
        published_at_restart < n,
        "everything was published before the restart: slow the publisher down"
    );
    // SIGTERM (mosquitto saves its persistence), then the same port again.
    rig.mqtt.restart();
    let report = publisher.join();
    let tally = verifier.read_all(deadline(sizes.final_timeout), QUIET, record_seq);
    let reconnects = rig.metric("sluice_mqtt_reconnects_total", &[]);
    println!(
        "mqtt-restart: {tally}, restarted at {published_at_restart} published, publisher \
         connections {} (resent {} un-acked), sluice reconnects {reconnects}",
        report.connections, report.resent
    );
    assert_eq!(report.sent, n, "{report:?}");
    assert!(
        report.connections >= 2,
        "the publisher never lost its connection: {report:?}"
    );
    assert!(reconnects >= 1.0, "sluice never reconnected");
    rig.assert_complete(&verifier);
    assert!(
        verifier.records(1).is_empty(),
        "dead letters without a fault"
    );
}

// ---- 5. poison messages ----------------------------------------------------

/// The standard message, except every [`POISON_EVERY`]-th: a payload that is
/// not JSON, which json_map rejects. It carries its number in a `seq` user
/// property.
fn poison_or_telemetry(seq: usize) -> MqttMessage {
    let message = telemetry(seq);
    if is_poison(seq) {
        MqttMessage::new(message.topic, format!("poison #{seq}: this is not JSON"))
            .with_property("seq", seq.to_string())
    } else {
        message
    }
}

fn is_poison(seq: usize) -> bool {
    seq % POISON_EVERY == POISON_EVERY - 1
}

#[test]
fn poison_messages_land_in_the_dlq_with_headers_and_the_rest_in_the_main_topic() {
    let _serial = serial();
    let sizes = Sizes::get();
    let n = sizes.messages;
    let rig = Rig::start("poison", "");
    let publisher = StreamPublisher::start(&rig.mqtt.url(), n, None, poison_or_telemetry);
    let mut verifier = rig.verifier(n);
    let report = publisher.join();
    let tally = verifier.read_all(deadline(sizes.final_timeout), QUIET, record_seq);
    let poison = (0..n).filter(|&seq| is_poison(seq)).count();
    let dead = verifier.records(1);
    let dead_lettered = wait_for(deadline(Duration::from_secs(10)), || {
        let value = rig.metric(
            "sluice_messages_dead_lettered_total",
            &[("stage", "transform")],
        );
        (value >= poison as f64).then_some(value)
    })
    .unwrap_or_else(|| {
        rig.metric(
            "sluice_messages_dead_lettered_total",
            &[("stage", "transform")],
        )
    });
    println!(
        "poison: {tally}, dead-lettered {} (1 in {POISON_EVERY}, expected {poison}; metric {dead_lettered}), \
         in the main topic {}",
        dead.len(),
        verifier.records(0).len()
    );
    assert_eq!(report.sent, n, "{report:?}");
    rig.assert_complete(&verifier);
    assert_eq!(tally.duplicates, 0, "{tally}: duplicates without a fault");
    for record in verifier.records(0) {
        let seq = record_seq(record) as usize;
        assert!(!is_poison(seq), "poison #{seq} reached the main topic");
    }
    assert_eq!(dead.len(), poison, "dead letters");
    for record in dead {
        let seq = record_seq(record) as usize;
        assert!(
            is_poison(seq),
            "message {seq} was dead-lettered: {record:?}"
        );
        let original = poison_or_telemetry(seq);
        assert_eq!(record.payload, original.payload, "original payload kept");
        let header = |name: &str| record.header_str(name).unwrap_or_default();
        assert_eq!(header("sluice.error.stage"), "transform", "{record:?}");
        assert_eq!(header("sluice.error.transform"), "normalise", "{record:?}");
        assert_eq!(header("sluice.error.mqtt_topic"), original.topic);
        assert_eq!(header("sluice.error.pipeline"), "poison");
        assert!(
            header("sluice.error.message")
                .to_ascii_lowercase()
                .contains("json"),
            "the error names the problem: {record:?}"
        );
        assert!(
            header("sluice.error.timestamp").parse::<u64>().is_ok(),
            "{record:?}"
        );
    }
    assert_eq!(dead_lettered, poison as f64, "{}", rig.sluice.metrics());
}

// ---- 6. a permanently rejected (too large) message -------------------------

fn large_step(sizes: &Sizes) -> usize {
    sizes.large_stream / sizes.large
}

fn is_large(sizes: &Sizes, seq: usize) -> bool {
    seq % large_step(sizes) == large_step(sizes) / 2
}

/// The standard message, except a few over-large ones ([`LARGE_BYTES`] of
/// JSON) spread evenly, which carry their number in a `seq` user property
/// too (a dead letter may have to leave the payload out).
fn large_or_telemetry(sizes: Sizes) -> impl FnMut(usize) -> MqttMessage + Send + 'static {
    move |seq| {
        let message = telemetry(seq);
        if is_large(&sizes, seq) {
            let padding = "x".repeat(LARGE_BYTES);
            MqttMessage::new(
                message.topic,
                format!(r#"{{"seq":{seq},"padding":"{padding}"}}"#),
            )
            .with_property("seq", seq.to_string())
        } else {
            message
        }
    }
}

#[test]
fn a_message_larger_than_kafka_accepts_is_dead_lettered_and_the_stream_goes_on() {
    let _serial = serial();
    let sizes = Sizes::get();
    let n = sizes.large_stream;
    let rig = Rig::start(
        "too-large",
        &format!("    properties: {{ message.max.bytes: \"{KAFKA_MAX_BYTES}\" }}"),
    );
    let publisher = StreamPublisher::start(&rig.mqtt.url(), n, None, large_or_telemetry(sizes));
    let mut verifier = rig.verifier(n);
    let report = publisher.join();
    let tally = verifier.read_all(deadline(sizes.final_timeout), QUIET, record_seq);
    let large: Vec<usize> = (0..n).filter(|&seq| is_large(&sizes, seq)).collect();
    let dead = verifier.records(1);
    let kept = dead
        .iter()
        .filter(|r| r.payload.len() >= LARGE_BYTES)
        .count();
    let omitted = dead
        .iter()
        .filter(|r| r.header("sluice.error.payload_omitted").is_some())
        .count();
    let dead_lettered = wait_for(deadline(Duration::from_secs(10)), || {
        let value = rig.metric("sluice_messages_dead_lettered_total", &[("stage", "sink")]);
        (value >= large.len() as f64).then_some(value)
    })
    .unwrap_or_else(|| rig.metric("sluice_messages_dead_lettered_total", &[("stage", "sink")]));
    println!(
        "too-large: {tally}, {} of {LARGE_BYTES} B over message.max.bytes {KAFKA_MAX_BYTES}: \
         dead-lettered {} (payload kept {kept}, omitted {omitted}; metric stage=sink {dead_lettered})",
        large.len(),
        dead.len(),
    );
    assert_eq!(report.sent, n, "{report:?}");
    rig.assert_complete(&verifier);
    assert_eq!(tally.duplicates, 0, "{tally}: duplicates without a fault");
    for record in verifier.records(0) {
        let seq = record_seq(record) as usize;
        assert!(
            !is_large(&sizes, seq),
            "over-large #{seq} reached the main topic"
        );
    }
    let mut dead_seqs: Vec<usize> = dead.iter().map(|r| record_seq(r) as usize).collect();
    dead_seqs.sort_unstable();
    assert_eq!(dead_seqs, large, "dead letters");
    for record in dead {
        let seq = record_seq(record) as usize;
        let original = large_or_telemetry(sizes)(seq);
        let header = |name: &str| record.header_str(name).unwrap_or_default();
        assert_eq!(header("sluice.error.stage"), "sink", "{:?}", record.headers);
        assert_eq!(header("sluice.error.transform"), "", "{:?}", record.headers);
        assert_eq!(header("sluice.error.mqtt_topic"), original.topic);
        assert!(
            !header("sluice.error.message").is_empty(),
            "{:?}",
            record.headers
        );
        assert!(
            record.payload == original.payload
                || record.header("sluice.error.payload_omitted").is_some(),
            "a dead letter carries the original payload or says it left it out: {} B, {:?}",
            record.payload.len(),
            record.headers
        );
    }
    assert_eq!(
        dead_lettered,
        large.len() as f64,
        "{}",
        rig.sluice.metrics()
    );
}

// ---- 7. runtime offline ----------------------------------------------------

#[test]
fn messages_published_while_the_runtime_is_offline_arrive_when_it_starts() {
    let _serial = serial();
    let sizes = Sizes::get();
    let n = sizes.offline;
    // The first start makes the persistent session (and its subscription).
    let mut rig = Rig::start("offline", "");
    let status = rig.sluice.stop();
    assert!(status.success(), "sluice exited with {status} on SIGTERM");
    let report = StreamPublisher::start(&rig.mqtt.url(), n, None, telemetry).join();
    let mut verifier = rig.verifier(n);
    rig.sluice.restart();
    let tally = verifier.read_all(deadline(sizes.final_timeout), QUIET, record_seq);
    println!(
        "offline: {tally}, published while offline in {:.1} s",
        report.elapsed.as_secs_f64()
    );
    assert_eq!(report.sent, n, "{report:?}");
    rig.assert_complete(&verifier);
    assert_eq!(
        tally.duplicates, 0,
        "{tally}: duplicates after a clean stop"
    );
}
