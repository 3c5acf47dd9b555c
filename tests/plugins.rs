//! Hostile plugins: each misbehaving guest (plugins/fixtures: `hostile` in
//! one of its modes, `wrong-count`, `malformed`, `ungranted`) runs in one
//! pipeline while a healthy pipeline in the same `sluice run` process keeps
//! delivering a sequence-numbered stream, through real mosquitto and tansu.
//!
//! For each one the test checks that the attack messages land in the
//! hostile pipeline's dead-letter topic with the reason in
//! `sluice.error.message`, that `sluice_plugin_traps_total{kind}` counts
//! them, that the messages around them still go through (the instance was
//! recreated, or kept), that the process stays up and the healthy pipeline
//! delivers everything. It prints how long sluice took to stop each attack
//! (from the message's receipt to its failure, by sluice's own clock: the
//! dead letter's timestamp and its `sluice.error.timestamp` header) and the
//! process's RSS before and after.
//!
//! A plugin that imports what it is not granted fails `sluice validate` and
//! `sluice run` before anything starts, naming each import.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use sluice_tests::*;

/// Messages in the healthy stream (at [`HEALTHY_RATE`] per second, so it
/// flows during the whole attack).
const HEALTHY: usize = 1_500;
const HEALTHY_RATE: u32 = 300;
/// How long a test waits for records in Kafka.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Attack messages per test (each its own batch).
const ATTACKS: usize = 2;
/// Most the process's RSS may grow over one test: less than one memory
/// bomb's 64 MiB, so an instance that is not freed shows.
const RSS_GROWTH_BOUND_KIB: u64 = 48 * 1024;

/// One hostile guest and what sluice must make of it.
struct Case {
    /// The pipeline name (and its topics' prefix).
    name: &'static str,
    /// The YAML of the transform, after `plugin:` (config, limits).
    plugin: &'static str,
    settings: &'static str,
    /// `sluice_plugin_traps_total` kind.
    kind: &'static str,
    /// Text the dead-letter reason must contain.
    reason: &'static str,
    /// Shortest time the stop may take (a time budget is used up first).
    at_least: Duration,
}

/// The healthy pipeline: telemetry through `json_map` into `healthy`.
fn healthy_pipeline(mqtt: &Mosquitto, kafka: &Tansu) -> String {
    format!(
        r#"
apiVersion: sluice/v1
name: healthy
source:
  mqtt:
    url: {}
    client_id: plugins-healthy
    topics:
      - filter: fleet/#
        qos: 1
transforms:
  - name: tag
    plugin: {}
    config: {{ add: {{ pipeline: healthy }} }}
sink:
  kafka:
    brokers: {}
    topic: healthy
errors:
  dead_letter_topic: healthy.dlq
"#,
        mqtt.url(),
        plugin("json_map").display(),
        kafka.brokers()
    )
}

/// The hostile pipeline: one message per batch, so that each attack's time
/// to stop is its own (in a larger batch the batch's call fails first,
/// then the attack alone: tests/offline.rs checks that only it fails).
fn hostile_pipeline(case: &Case, mqtt: &Mosquitto, kafka: &Tansu) -> String {
    let name = case.name;
    format!(
        r#"
apiVersion: sluice/v1
name: {name}
batch: {{ max_messages: 1 }}
source:
  mqtt:
    url: {}
    client_id: plugins-{name}
    topics:
      - filter: {name}/#
        qos: 1
transforms:
  - name: hostile
    plugin: {}
{}
sink:
  kafka:
    brokers: {}
    topic: {name}
errors:
  dead_letter_topic: {name}.dlq
"#,
        mqtt.url(),
        plugin(case.plugin).display(),
        case.settings,
        kafka.brokers()
    )
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Runs `case` next to the healthy pipeline and checks everything.
fn survives(case: Case) {
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    let name = case.name;
    let (out, dlq) = (name.to_string(), format!("{name}.dlq"));
    for topic in ["healthy", "healthy.dlq", &out, &dlq] {
        kafka.create_topic(topic, 1);
    }
    let sluice = Sluice::start(&[
        healthy_pipeline(&mqtt, &kafka),
        hostile_pipeline(&case, &mqtt, &kafka),
    ]);
    let pid = sluice.pid();

    let mut healthy = SeqVerifier::new(&kafka.brokers(), &["healthy"], HEALTHY);
    let stream = StreamPublisher::start(&mqtt.url(), HEALTHY, Some(HEALTHY_RATE), telemetry);
    assert!(
        healthy.read_until(deadline(DELIVERY_TIMEOUT), record_seq, |t| t.delivered
            >= 100),
        "the healthy pipeline does not deliver before the attack: {}\n{}",
        healthy.tally(),
        sluice.output_tail(40)
    );
    let rss_before = rss_kib(pid).expect("sluice's VmRSS");

    // ok-0, attack-0, (its dead letter), ok-1, attack-1, ..., ok-N: each
    // message one batch, each attack alone in the plugin when it fails, so
    // that its time to stop is its own.
    let mut dead = TopicReader::new(&kafka.brokers(), &dlq);
    let mut seen_dead = Vec::new();
    for i in 0..=ATTACKS {
        let mut messages = vec![MqttMessage::new(
            format!("{name}/dev/{i}"),
            format!("ok-{i}"),
        )];
        if i < ATTACKS {
            messages.push(MqttMessage::new(format!("{name}/dev/attack-{i}"), "attack"));
        }
        let published = Instant::now();
        publish(&mqtt.url(), Protocol::V5, 1, &messages);
        if i == ATTACKS {
            break;
        }
        assert!(
            dead.read_until(i + 1, deadline(DELIVERY_TIMEOUT)),
            "{name}: {} of {} attacks in {dlq} (last error: {:?})\n{}",
            dead.records().len(),
            i + 1,
            dead.last_error(),
            sluice.output_tail(40)
        );
        seen_dead.push(published.elapsed());
    }
    let passed = consume(&kafka.brokers(), &out, ATTACKS + 1, DELIVERY_TIMEOUT);
    let mut payloads: Vec<String> = passed.iter().map(Record::payload_str).collect();
    payloads.sort();
    let expected: Vec<String> = (0..=ATTACKS).map(|i| format!("ok-{i}")).collect();
    assert_eq!(
        payloads, expected,
        "{name}: the messages around the attacks go through"
    );

    let mut stops = Vec::new();
    for record in dead.records() {
        let reason = record
            .header_str("sluice.error.message")
            .unwrap_or_default();
        assert!(
            reason.contains(case.reason),
            "{name}: dead-letter reason {reason:?} does not say {:?}",
            case.reason
        );
        assert_eq!(record.payload, b"attack", "{name}: the original payload");
        assert_eq!(
            record.header_str("sluice.error.transform").as_deref(),
            Some("hostile")
        );
        let failed_at: i64 = record
            .header_str("sluice.error.timestamp")
            .and_then(|t| t.parse().ok())
            .expect("sluice.error.timestamp header");
        let received_at = record.timestamp.expect("dead letter timestamp");
        let stop = Duration::from_millis(u64::try_from(failed_at - received_at).unwrap_or(0));
        assert!(
            stop >= case.at_least,
            "{name}: stopped after {stop:?}, before its budget of {:?}",
            case.at_least
        );
        stops.push(stop);
    }
    let traps = wait_for(deadline(Duration::from_secs(10)), || {
        sluice
            .metric(
                "sluice_plugin_traps_total",
                &[("pipeline", name), ("kind", case.kind)],
            )
            .filter(|&n| n >= ATTACKS as f64)
    });
    assert_eq!(
        traps,
        Some(ATTACKS as f64),
        "{name}: sluice_plugin_traps_total{{kind=\"{}\"}} in\n{}",
        case.kind,
        sluice.metrics()
    );

    stream.join();
    let tally = healthy.read_all(deadline(DELIVERY_TIMEOUT), DEFAULT_GRACE, record_seq);
    assert_eq!(
        tally.missing, 0,
        "{name}: the healthy pipeline lost messages: {tally}"
    );
    assert_eq!(
        sluice.metric("sluice_messages_failed_total", &[("pipeline", "healthy")]),
        Some(0.0),
        "{name}: nothing of the healthy pipeline failed"
    );
    assert!(pid_is_alive(pid), "{name}: sluice died");
    assert_eq!(sluice.get("/healthz").status, 200);
    let rss_after = rss_kib(pid).expect("sluice's VmRSS");
    let rss_peak = peak_rss_kib(pid).expect("sluice's VmHWM");
    let stops: Vec<String> = stops.into_iter().map(ms).collect();
    let seen_dead: Vec<String> = seen_dead.into_iter().map(ms).collect();
    println!(
        "{name}: kind {}, stopped in [{}] (receipt to failure), publish to dead letter read [{}]; \
         RSS before {rss_before} KiB, after {rss_after} KiB (peak {rss_peak} KiB); healthy {tally}",
        case.kind,
        stops.join(", "),
        seen_dead.join(", "),
    );
    assert!(
        rss_after < rss_before + RSS_GROWTH_BOUND_KIB,
        "{name}: RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[test]
fn an_endless_loop_is_stopped_by_its_time_budget() {
    survives(Case {
        name: "spin",
        plugin: "hostile",
        settings: "    config: { mode: spin }\n    limits: { timeout_ms: 250 }",
        kind: "timeout",
        reason: "time budget of 250 ms",
        at_least: Duration::from_millis(250),
    });
}

#[test]
fn a_memory_bomb_is_stopped_by_its_memory_cap() {
    survives(Case {
        name: "bomb",
        plugin: "hostile",
        settings: "    config: { mode: grow-memory }",
        kind: "memory",
        reason: "memory limit of 64 MiB",
        at_least: Duration::ZERO,
    });
}

#[test]
fn unbounded_recursion_is_stopped_by_its_stack_limit_even_at_the_largest_stack() {
    survives(Case {
        name: "recursion",
        plugin: "hostile",
        settings: "    config: { mode: recurse }\n    limits: { stack_kb: 1024 }",
        kind: "stack",
        reason: "stack of 1024 KiB",
        at_least: Duration::ZERO,
    });
}

#[test]
fn a_panicking_plugin_traps() {
    survives(Case {
        name: "panic",
        plugin: "hostile",
        settings: "    config: { mode: panic }",
        kind: "trap",
        reason: "`unreachable`",
        at_least: Duration::ZERO,
    });
}

#[test]
fn a_plugin_calling_exit_ends_only_its_call() {
    survives(Case {
        name: "exit",
        plugin: "hostile",
        settings: "    config: { mode: exit }",
        kind: "trap",
        reason: "plugin called exit",
        at_least: Duration::ZERO,
    });
}

#[test]
fn a_wrong_number_of_results_is_invalid() {
    survives(Case {
        name: "wrong-count",
        plugin: "wrong_count",
        settings: "",
        kind: "invalid",
        reason: "returned 0 results for a batch of 1 messages",
        at_least: Duration::ZERO,
    });
}

#[test]
fn results_that_break_the_canonical_abi_fail_their_batch() {
    survives(Case {
        name: "malformed",
        plugin: "malformed",
        settings: "    config: { mode: out-of-bounds }",
        kind: "invalid",
        reason: "plugin returned malformed results: string pointer/length out of bounds of memory",
        at_least: Duration::ZERO,
    });
}

#[test]
fn too_many_outputs_for_one_input_are_invalid() {
    survives(Case {
        name: "fan-out",
        plugin: "hostile",
        settings: "    config: { mode: amplify, copies: 5000, bytes: 8 }",
        kind: "invalid",
        reason: "5000 messages for one input, more than limits.max_outputs (1000)",
        at_least: Duration::ZERO,
    });
}

#[test]
fn too_many_output_bytes_for_one_input_are_invalid() {
    survives(Case {
        name: "blow-up",
        plugin: "hostile",
        settings: "    config: { mode: amplify, copies: 3, bytes: 1000000 }\n    \
                   limits: { max_output_bytes: 2000000 }",
        kind: "invalid",
        reason: "more than limits.max_output_bytes (2000000)",
        at_least: Duration::ZERO,
    });
}

/// A pipeline file with one transform on `plugin` and `extra` lines under
/// it, in a temp dir (no broker is ever contacted).
fn offline_pipeline(dir: &Path, plugin_name: &str, extra: &str) -> std::path::PathBuf {
    let file = dir.join("p.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: sluice/v1\nname: p\nsource:\n  mqtt:\n    url: mqtt://127.0.0.1:9\n    \
             client_id: p\n    topics: [{{ filter: a/#, qos: 1 }}]\ntransforms:\n  - name: t\n    \
             plugin: {}\n{extra}sink:\n  kafka: {{ brokers: 127.0.0.1:9, topic: out }}\n",
            plugin(plugin_name).display()
        ),
    )
    .expect("write pipeline");
    file
}

fn sluice_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    sluice_command()
        .args(args)
        .envs(env.iter().copied())
        .env("SLUICE_CACHE_DIR", dir.join("cache"))
        .current_dir(dir)
        .output()
        .expect("run sluice")
}

#[test]
fn a_plugin_importing_files_sockets_or_clocks_without_a_grant_fails_validate_and_run() {
    let dir = temp_dir("sluice-ungranted-");
    let file = offline_pipeline(dir.path(), "ungranted", "");
    let file_arg = file.to_str().expect("utf-8 path");
    for command in ["validate", "run"] {
        let out = sluice_in(dir.path(), &[command, file_arg], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "sluice {command}: {stderr}");
        // Line 10, column 13: the `plugin:` value.
        let prefix = format!("{file_arg}:10:13: transform `t`: plugin `");
        assert!(stderr.contains(&prefix), "sluice {command}: {stderr}");
        for named in [
            "`wasi:filesystem/preopens@0.2.6`",
            "`wasi:sockets/tcp@0.2.6`",
            "`wasi:clocks/wall-clock@0.2.6`",
            "(plugins get no file system access)",
            "(plugins get no network access)",
            "(add `clock` to the transform's capabilities)",
        ] {
            assert!(
                stderr.contains(named),
                "sluice {command} says {named}: {stderr}"
            );
        }
        println!("sluice {command}: {}", stderr.trim());
    }

    // Granting `clock` removes only that complaint.
    let file = offline_pipeline(dir.path(), "ungranted", "    capabilities: [clock]\n");
    let out = sluice_in(dir.path(), &["validate", file.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("wasi:clocks"), "{stderr}");
    assert!(stderr.contains("wasi:filesystem/types"), "{stderr}");
}

#[test]
fn a_plugin_sees_only_the_environment_variables_it_is_granted() {
    let dir = temp_dir("sluice-env-");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"topic\": \"a/1\", \"payload\": \"attack\"}\n").expect("write input");
    let input = input.to_str().expect("utf-8 path");
    let env = [
        ("SLUICE_TEST_GRANTED", "visible"),
        ("SLUICE_TEST_SECRET", "hunter2"),
    ];
    let payload = |var: &str, grant: &str| {
        let file = offline_pipeline(
            dir.path(),
            "hostile",
            &format!("    config: {{ mode: env, var: {var} }}\n{grant}"),
        );
        let out = sluice_in(
            dir.path(),
            &["test", file.to_str().unwrap(), "--input", input],
            &env,
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "sluice test: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
        line["payload"].as_str().unwrap_or_default().to_owned()
    };
    let grant = "    env: [SLUICE_TEST_GRANTED]\n";
    assert_eq!(payload("SLUICE_TEST_GRANTED", grant), "visible");
    assert_eq!(payload("SLUICE_TEST_SECRET", grant), "<unset>");
    assert_eq!(payload("SLUICE_TEST_GRANTED", ""), "<unset>");
}
