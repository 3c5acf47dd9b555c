//! The admin API while a sequence-numbered stream flows (real mosquitto,
//! real tansu, the `sluice` binary): pause stops deliveries while the
//! backlog waits at the broker, resume and restart lose nothing and
//! duplicate nothing, mutations need the bearer token, and a reload swaps
//! the transform chain in place five times with 0 missing and 0 duplicates.
//!
//! Each test prints one line in the fault suite's format:
//! `SCENARIO: sent N, delivered N, missing M, duplicates D[, figures]`.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sluice_tests::*;

const TOKEN: &str = "s3cret-admin-token";
/// Messages per stream.
const N: usize = 20_000;
/// Publisher pace: slow enough that each action happens mid-stream.
const RATE: u32 = 2_000;
const TIMEOUT: Duration = Duration::from_secs(120);
const QUIET: Duration = Duration::from_secs(3);

/// One stream at a time: they compete for the same two cores.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn start(name: &'static str) -> Rig {
    Rig::start_with(name, "", &[("SLUICE_API_TOKEN", TOKEN)], &[])
}

/// `POST /api/v1/pipelines/{name}/{action}` with the token; asserts 202.
fn act(rig: &Rig, action: &str) -> serde_json::Value {
    let r = rig.sluice.post(
        &format!("/api/v1/pipelines/{}/{action}", rig.name),
        Some(TOKEN),
    );
    assert_eq!(
        r.status,
        202,
        "{action}: {r:?}\n{}",
        rig.sluice.output_tail(30)
    );
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{action}: {e}: {}", r.body))
}

/// The pipeline's `/api/v1/pipelines/{name}` entry.
fn api(rig: &Rig) -> serde_json::Value {
    let r = rig.sluice.get(&format!("/api/v1/pipelines/{}", rig.name));
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

fn wait_state(rig: &Rig, state: &str) -> Duration {
    let t = Instant::now();
    let reached = wait_until(deadline(TIMEOUT), || api(rig)["state"] == state);
    assert!(
        reached,
        "never {state}: {}\n{}",
        api(rig),
        rig.sluice.output_tail(30)
    );
    t.elapsed()
}

#[test]
fn mutations_need_the_bearer_token() {
    let _serial = serial();
    let rig = start("auth");
    let path = "/api/v1/pipelines/auth/pause";
    for token in [None, Some("wrong"), Some("s3cret-admin-tokeN")] {
        let r = rig.sluice.post(path, token);
        assert_eq!(r.status, 401, "token {token:?}: {r:?}");
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| k == "www-authenticate" && v == "Bearer"),
            "{r:?}"
        );
    }
    assert_eq!(api(&rig)["state"], "running", "a refused pause acted");
    let r = rig.sluice.post("/api/v1/pipelines/nope/pause", Some(TOKEN));
    assert_eq!(r.status, 404, "{r:?}");
    let r = rig
        .sluice
        .post("/api/v1/pipelines/auth/explode", Some(TOKEN));
    assert_eq!(r.status, 404, "{r:?}");
    // Reads stay open.
    assert_eq!(rig.sluice.get("/api/v1/pipelines").status, 200);
}

#[test]
fn the_admin_api_is_refused_on_a_non_loopback_address_without_a_token() {
    let dir = temp_dir("sluice-admin-");
    let file = dir.path().join("open.yaml");
    std::fs::write(
        &file,
        "apiVersion: sluice/v1\nname: open\n\
         source: { mqtt: { url: mqtt://127.0.0.1:1, client_id: open, topics: [{ filter: a/#, qos: 1 }] } }\n\
         sink: { kafka: { brokers: 127.0.0.1:1, topic: out } }\n",
    )
    .expect("write pipeline");
    let out = sluice_command()
        .arg("run")
        .arg(&file)
        .args(["--listen", "0.0.0.0:0"])
        .env_remove("SLUICE_API_TOKEN")
        .output()
        .expect("run sluice");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("refusing to serve the admin API on 0.0.0.0:0 without a token"),
        "{stderr}"
    );
}

#[test]
fn watch_reloads_on_a_file_change_and_keeps_the_old_version_on_a_bad_one() {
    let _serial = serial();
    let rig = Rig::start_with("watch", "", &[], &["--watch"]);
    let n = N / 4;
    let publisher = StreamPublisher::start(&rig.mqtt.url(), n, Some(RATE / 2), telemetry);
    let mut verifier = rig.verifier(n);
    rig.progress(&mut verifier, n / 4, TIMEOUT);
    // Broken: reported, the running version stays.
    rig.write_transform_config("{ round: -1 }");
    let refused = wait_until(deadline(TIMEOUT), || {
        rig.sluice
            .stderr()
            .contains("reload after a file change failed")
    });
    assert!(refused, "{}", rig.sluice.output_tail(30));
    assert_eq!(api(&rig)["state"], "running");
    rig.write_transform_config("{ from_topic: { device_id: 1 }, add: { version: 1 } }");
    let t = Instant::now();
    let swapped = wait_until(deadline(TIMEOUT), || api(&rig)["reloads"] == 1);
    assert!(swapped, "{}\n{}", api(&rig), rig.sluice.output_tail(30));
    let took = t.elapsed();
    let report = publisher.join();
    let tally = verifier.read_all(deadline(TIMEOUT), QUIET, record_seq);
    let new_version = verifier
        .records(0)
        .iter()
        .filter(|r| r.json()["version"] == 1)
        .count();
    println!(
        "watch: {tally}, reloaded {:.1} s after the write, {new_version} records by the new version",
        took.as_secs_f64()
    );
    assert_eq!(report.sent, n, "{report:?}");
    rig.assert_complete(&verifier);
    rig.assert_no_duplicates(&verifier);
    assert!(new_version > 0, "the new version never ran");
}

#[test]
fn pause_resume_and_restart_during_a_stream_lose_and_duplicate_nothing() {
    let _serial = serial();
    let rig = start("pause");
    let publisher = StreamPublisher::start(&rig.mqtt.url(), N, Some(RATE), telemetry);
    let mut verifier = rig.verifier(N);
    rig.progress(&mut verifier, N / 5, TIMEOUT);

    act(&rig, "pause");
    let to_pause = wait_state(&rig, "paused");
    assert_eq!(api(&rig)["source_connected"], false);
    assert_eq!(
        rig.sluice.get("/readyz").status,
        200,
        "paused on purpose is ready"
    );
    // Paused: the publisher goes on, the broker queues, nothing arrives.
    let before = verifier.count_new(record_seq).delivered;
    let acked = publisher.acked();
    assert!(
        publisher.wait_acked(acked + 2 * RATE as usize, TIMEOUT),
        "publisher stalled"
    );
    let during = verifier.count_new(record_seq).delivered;
    let delivered_metric = rig.metric("sluice_messages_delivered_total", &[]);
    assert_eq!(
        during,
        before,
        "deliveries while paused (publisher acked {acked} -> {})",
        publisher.acked()
    );
    assert_eq!(api(&rig)["state"], "paused");

    act(&rig, "resume");
    wait_state(&rig, "running");
    rig.progress(&mut verifier, N * 3 / 5, TIMEOUT);
    assert!(rig.metric("sluice_messages_delivered_total", &[]) > delivered_metric);

    act(&rig, "restart");
    rig.progress(&mut verifier, N * 4 / 5, TIMEOUT);
    assert_eq!(api(&rig)["restarts_requested"], 1);

    let report = publisher.join();
    let tally = verifier.read_all(deadline(TIMEOUT), QUIET, record_seq);
    println!(
        "pause-resume-restart: {tally}, paused in {:.2} s, backlog while paused >= {}",
        to_pause.as_secs_f64(),
        2 * RATE
    );
    assert_eq!(report.sent, N, "{report:?}");
    rig.assert_complete(&verifier);
    // Pause and restart drain: nothing delivered is redelivered.
    rig.assert_no_duplicates(&verifier);
}

#[test]
fn five_hot_swaps_during_a_stream_lose_and_duplicate_nothing() {
    let _serial = serial();
    let rig = start("swap");
    let publisher = StreamPublisher::start(&rig.mqtt.url(), N, Some(RATE), telemetry);
    let mut verifier = rig.verifier(N);

    // A version that cannot start is refused; the running one stays.
    rig.write_transform_config("{ convert: { x: no_such_unit } }");
    let r = rig
        .sluice
        .post("/api/v1/pipelines/swap/reload", Some(TOKEN));
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body.contains("no_such_unit"), "{}", r.body);

    let swaps = 5;
    let mut took = Vec::new();
    for version in 1..=swaps {
        rig.progress(&mut verifier, N * version / (swaps + 1), TIMEOUT);
        rig.write_transform_config(&format!(
            "{{ from_topic: {{ device_id: 1 }}, add: {{ version: {version} }} }}"
        ));
        let t = Instant::now();
        let body = act(&rig, "reload");
        took.push(t.elapsed().as_millis());
        assert_eq!(body["result"], "swapped", "{body}");
    }
    assert_eq!(api(&rig)["reloads"], swaps);

    let report = publisher.join();
    let tally = verifier.read_all(deadline(TIMEOUT), QUIET, record_seq);
    let versions: std::collections::BTreeSet<i64> = verifier
        .records(0)
        .iter()
        .map(|r| r.json()["version"].as_i64().unwrap_or(0))
        .collect();
    let last = verifier
        .records(0)
        .iter()
        .filter(|r| record_seq(r) >= (N - 100) as i64)
        .map(|r| r.json()["version"].as_i64().unwrap_or(0))
        .collect::<std::collections::BTreeSet<_>>();
    println!("hot-swap: {tally}, {swaps} swaps, reload calls took {took:?} ms, versions seen {versions:?}");
    assert_eq!(report.sent, N, "{report:?}");
    rig.assert_complete(&verifier);
    rig.assert_no_duplicates(&verifier);
    assert_eq!(versions, (0..=swaps as i64).collect(), "every version ran");
    assert_eq!(last, [swaps as i64].into(), "the last version is in force");
    assert!(verifier.records(1).is_empty(), "dead letters across swaps");
}
