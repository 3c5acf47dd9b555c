//! Transforms written in Python (componentize-py) and JavaScript
//! (componentize-js): `plugins/examples/{python,js}-json-map`, the Rust
//! `json-map` example ported. `scripts/build-guests.sh` builds them (it
//! installs its tools from PyPI and npm when missing, and rebuilds a
//! component only when its inputs changed); then each one runs
//!
//! - through `sluice test` on the Rust example's fixtures, with the same
//!   records and dead letters as a result;
//! - through a real pipeline, mosquitto -> sluice -> tansu, with
//!   `configs/sensors-{python,js}.yaml` as shipped.
//!
//! The tests print what plugins/README.md quotes: component sizes, the time
//! `sluice validate` takes with an empty compiled-plugin cache and with a
//! warm one, and the per-message cost in the pipeline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_tests::*;

/// How long the pipeline test waits for its records in Kafka.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// Readings the pipeline test publishes (besides three bad messages).
const READINGS: usize = 1000;

/// One guest language's example.
struct Guest {
    /// `python` or `js`: the argument of build-guests.sh, the config suffix.
    lang: &'static str,
    /// The component's file name in plugins/target/guests/.
    file: &'static str,
}

const PYTHON: Guest = Guest {
    lang: "python",
    file: "python_json_map.wasm",
};
const JS: Guest = Guest {
    lang: "js",
    file: "js_json_map.wasm",
};

impl Guest {
    fn plugin(&self) -> PathBuf {
        guests_built().join(self.file)
    }

    /// `configs/sensors-LANG.yaml`, relative to the repository root.
    fn config(&self) -> String {
        format!("configs/sensors-{}.yaml", self.lang)
    }
}

/// The compiled-plugin cache every sluice in these tests uses. It is emptied
/// once per run, so the first compile of each guest is measured cold.
fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guests-cwasm-cache")
}

/// Runs `bash scripts/build-guests.sh` once per test run and returns the
/// folder with the components. Then compiles each guest's config into an
/// empty cache with `sluice validate` (cold) and validates again (warm),
/// one guest at a time, and prints the figures.
fn guests_built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = workspace_root();
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(root.join("scripts/build-guests.sh"))
            .current_dir(&root)
            .output()
            .expect("run bash scripts/build-guests.sh");
        assert!(
            out.status.success(),
            "scripts/build-guests.sh failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "guests: build-guests.sh took {:.1} s:\n{}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
        let dir = root.join("plugins/target/guests");

        let cache = cache_dir();
        let _ = std::fs::remove_dir_all(&cache);
        for guest in [&PYTHON, &JS] {
            let size = std::fs::metadata(dir.join(guest.file))
                .unwrap_or_else(|e| panic!("{}: {e}", guest.file))
                .len();
            let cold = timed_validate(&guest.config());
            let cached = newest_cache_entry(&cache);
            let warm = timed_validate(&guest.config());
            println!(
                "guests: {}: component {:.1} MB; sluice validate {}: {:.2} s with an empty cache \
                 (compiles; .cwasm {:.1} MB), {:.3} s with it",
                guest.lang,
                size as f64 / 1e6,
                guest.config(),
                cold.as_secs_f64(),
                cached as f64 / 1e6,
                warm.as_secs_f64(),
            );
        }
        dir
    })
}

/// `sluice validate CONFIG` with the shared cache; panics unless it passes.
fn timed_validate(config: &str) -> Duration {
    let started = Instant::now();
    let out = sluice(&["validate", config]);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "sluice validate {config} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// The size of the largest `.cwasm` in `cache` (the guest just compiled).
fn newest_cache_entry(cache: &Path) -> u64 {
    std::fs::read_dir(cache)
        .expect("sluice created its compiled-plugin cache")
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .map(|meta| meta.len())
        .max()
        .unwrap_or(0)
}

/// Runs sluice from the repository root with the shared cache.
fn sluice(args: &[&str]) -> Output {
    sluice_command()
        .current_dir(workspace_root())
        .env("SLUICE_CACHE_DIR", cache_dir())
        .args(args)
        .output()
        .expect("run sluice")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `sluice test` of a pipeline that sends every message through one
/// transform, `map` (PLUGIN, CONFIG); returns the output lines as JSON.
fn run_map(dir: &Path, plugin: &Path, config: &str, inputs: &Path) -> Vec<Value> {
    let yaml = format!(
        "apiVersion: sluice/v1\n\
         name: map-check\n\
         source: {{ mqtt: {{ url: 'mqtt://127.0.0.1:1883', client_id: map-check, topics: [{{ filter: '#', qos: 1 }}] }} }}\n\
         transforms:\n  - name: map\n    plugin: {}\n    config: {config}\n\
         sink: {{ kafka: {{ brokers: '127.0.0.1:9092', topic: '{{{{topic.2}}}}' }} }}\n\
         errors: {{ dead_letter_topic: map-check.dlq }}\n",
        plugin.display()
    );
    let file = dir.join(format!(
        "{}.yaml",
        plugin.file_stem().unwrap().to_string_lossy()
    ));
    std::fs::write(&file, yaml).expect("write pipeline");
    let out = sluice(&[
        "test",
        file.to_str().unwrap(),
        "--input",
        inputs.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "sluice test with {} failed:\n{}",
        plugin.display(),
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("sluice test prints JSON lines"))
        .collect()
}

/// The text after `payload is not JSON: ` is the JSON parser's own (serde,
/// CPython or SpiderMonkey): replaced by `…` for comparing languages.
fn without_parser_wording(mut records: Vec<Value>) -> Vec<Value> {
    for record in &mut records {
        if let Some(Value::String(error)) = record.pointer_mut("/dead_letter/error") {
            if let Some(at) = error.find("payload is not JSON: ") {
                error.truncate(at + "payload is not JSON: ".len());
                error.push('…');
            }
        }
    }
    records
}

fn sensors_fixtures_pass(guest: &Guest) {
    guests_built();
    let config = guest.config();
    let out = sluice(&[
        "test",
        &config,
        "--input",
        "tests/fixtures/sensors.in.jsonl",
        "--expect",
        "tests/fixtures/sensors.out.jsonl",
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "sluice test {config}:\n{stderr}");
    assert!(stderr.contains("3 record(s) match"), "{stderr}");
}

#[test]
fn python_json_map_gives_the_records_of_the_rust_sensors_fixtures() {
    sensors_fixtures_pass(&PYTHON);
}

#[test]
fn js_json_map_gives_the_records_of_the_rust_sensors_fixtures() {
    sensors_fixtures_pass(&JS);
}

/// Every json-map step and error, in the three languages: the Rust
/// example's output is the fixture, and the guests must match it.
#[test]
fn python_and_js_json_map_map_and_dead_letter_exactly_like_the_rust_example() {
    guests_built();
    let root = workspace_root();
    let dir = temp_dir("sluice-guests-");
    let config = "{ from_topic: { device_id: 1 }, add: { source: mqtt, schema: 2 }, \
                  rename: { t_f: temperature, temperature: previous }, \
                  convert: { temperature: f_to_c, ts: ms_to_s }, round: 2, drop: [debug], \
                  key_field: serial, kafka_topic: telemetry.normalised }";
    let inputs = root.join("tests/fixtures/json-map.in.jsonl");
    let expected: Vec<Value> =
        std::fs::read_to_string(root.join("tests/fixtures/json-map.out.jsonl"))
            .expect("fixture")
            .lines()
            .map(|line| serde_json::from_str(line).expect("JSON line"))
            .collect();

    let rust = run_map(dir.path(), &plugin("json_map"), config, &inputs);
    assert_eq!(
        rust, expected,
        "the Rust json-map changed: update the fixture"
    );
    let expected = without_parser_wording(expected);
    for guest in [&PYTHON, &JS] {
        let actual = without_parser_wording(run_map(dir.path(), &guest.plugin(), config, &inputs));
        for (index, (a, e)) in actual.iter().zip(&expected).enumerate() {
            assert_eq!(
                a, e,
                "{}: line {index} differs from the Rust example",
                guest.lang
            );
        }
        assert_eq!(actual.len(), expected.len(), "{}: {actual:#?}", guest.lang);
    }
}

/// `require` (the key only the guests have) drops messages; a config
/// mistake fails `init`, which `sluice validate` reports.
#[test]
fn guests_drop_by_require_and_report_config_mistakes_from_init() {
    guests_built();
    let dir = temp_dir("sluice-guests-");
    let inputs = dir.path().join("in.jsonl");
    std::fs::write(
        &inputs,
        [
            json!({"topic": "s/d1/t", "payload": {"temperature": 100}}),
            json!({"topic": "s/d2/t", "payload": {"humidity": 40}}),
            json!({"topic": "s/d3/t", "payload": "oops"}),
            json!({"topic": "s/d4/t", "payload": {"temperature": 0, "humidity": 1}}),
        ]
        .iter()
        .map(|line| format!("{line}\n"))
        .collect::<String>(),
    )
    .expect("write inputs");
    for guest in [&PYTHON, &JS] {
        let config = "{ require: [temperature], convert: { temperature: c_to_f } }";
        let records = without_parser_wording(run_map(dir.path(), &guest.plugin(), config, &inputs));
        let summary: Vec<(i64, Value)> = records
            .iter()
            .map(|r| {
                let input = r["input"].as_i64().unwrap();
                match r.get("payload") {
                    Some(payload) => (input, payload.clone()),
                    None => (input, r["dead_letter"]["error"].clone()),
                }
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, json!({"temperature": 212.0})),
                (2, json!("payload is not JSON: …")),
                (3, json!({"temperature": 32.0, "humidity": 1})),
            ],
            "{}: {records:#?}",
            guest.lang
        );

        let bad = dir.path().join(format!("bad-{}.yaml", guest.lang));
        let yaml = std::fs::read_to_string(workspace_root().join(guest.config()))
            .expect("read config")
            .replace(
                "../plugins/",
                &format!("{}/plugins/", workspace_root().display()),
            )
            .replace("round: 2", "rounding: 2");
        std::fs::write(&bad, yaml).expect("write config");
        let out = sluice(&["validate", bad.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", guest.lang);
        assert!(
            stderr.contains("transform `to-celsius`: plugin init failed: invalid config: unknown field `rounding`, expected one of `from_topic`"),
            "{}: {stderr}",
            guest.lang
        );
    }
}

/// The readings' °F values and °C as the Rust example writes them.
fn reading(seq: usize) -> (f64, String) {
    let fahrenheit = 32.0 + (seq % 200) as f64 * 0.9;
    let celsius = ((fahrenheit - 32.0) * 5.0 / 9.0 * 100.0).round() / 100.0;
    (fahrenheit, format!("{celsius:?}"))
}

fn pipeline_delivers_every_reading(guest: &Guest) {
    guests_built();
    // One pipeline test at a time: their per-message figures would
    // otherwise include each other's load.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let root = workspace_root();
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("telemetry", 2);
    kafka.create_topic("sluice.dlq", 1);
    let yaml = std::fs::read_to_string(root.join(guest.config()))
        .expect("read config")
        .replace("../plugins/", &format!("{}/plugins/", root.display()));
    let cache = cache_dir();
    let mut sluice = Sluice::spawn_with_env(
        &[yaml],
        &[
            ("MQTT_URL", &mqtt.url()),
            ("KAFKA_BROKERS", &kafka.brokers()),
            ("SLUICE_CACHE_DIR", cache.to_str().unwrap()),
        ],
    );
    sluice.wait_ready(READY_TIMEOUT);
    let pipeline = format!("sensors-{}", guest.lang);

    // READINGS good readings, then one message for each other fate: not
    // JSON (the Rust filter dead-letters it), no temperature (the filter
    // drops it), a temperature that is not a number (the guest dead-letters it).
    let report = publish_bulk(&mqtt.url(), Protocol::V5, 1, READINGS + 3, |seq| {
        let topic = format!("sensors/dev-{}/telemetry", seq % 20);
        let payload = match seq.checked_sub(READINGS) {
            None => json!({"seq": seq, "temperature": reading(seq).0}).to_string(),
            Some(0) => "not json".to_owned(),
            Some(1) => json!({"seq": seq, "humidity": 40}).to_string(),
            Some(_) => json!({"seq": seq, "temperature": "hot"}).to_string(),
        };
        MqttMessage::new(topic, payload).with_property("site", "lab")
    });
    assert_eq!(report.sent, READINGS + 3);

    let records = consume(&kafka.brokers(), "telemetry", READINGS, DELIVERY_TIMEOUT);
    let mut seen = vec![false; READINGS];
    for record in &records {
        let seq = record.json()["seq"].as_u64().expect("seq") as usize;
        assert!(
            seq < READINGS && !seen[seq],
            "unexpected or repeated {record:?}"
        );
        seen[seq] = true;
        let device = format!("dev-{}", seq % 20);
        // The exact text, field order and number format of the Rust example.
        let payload = format!(
            r#"{{"seq":{seq},"temperature":{},"device_id":"{device}"}}"#,
            reading(seq).1
        );
        assert_eq!(record.payload_str(), payload, "{record:?}");
        assert_eq!(record.key_str().as_deref(), Some(device.as_str()));
        assert_eq!(record.header_str("site").as_deref(), Some("lab"));
    }
    assert_eq!(
        records.len(),
        READINGS,
        "{} records missing",
        READINGS - records.len()
    );

    let dead = consume(&kafka.brokers(), "sluice.dlq", 2, DELIVERY_TIMEOUT);
    let mut fates: Vec<(String, String)> = dead
        .iter()
        .map(|r| {
            (
                r.header_str("sluice.error.transform").unwrap_or_default(),
                r.header_str("sluice.error.message").unwrap_or_default(),
            )
        })
        .collect();
    fates.sort();
    assert_eq!(
        fates,
        vec![
            (
                "to-celsius".to_owned(),
                "field `temperature` is a string, expected a number to convert".to_owned()
            ),
            (
                "valid-readings".to_owned(),
                "payload is not JSON: expected ident at line 1 column 2".to_owned()
            ),
        ]
    );
    let dropped = wait_for(deadline(Duration::from_secs(10)), || {
        sluice
            .metric(
                "sluice_messages_dropped_total",
                &[("pipeline", &pipeline), ("transform", "valid-readings")],
            )
            .filter(|&n| n >= 1.0)
    });
    assert_eq!(dropped, Some(1.0), "{}", sluice.metrics());

    // The cost per message, from the per-batch histogram.
    let per_message = |transform: &str, messages: usize| {
        let labels = [("pipeline", pipeline.as_str()), ("transform", transform)];
        let seconds = sluice
            .metric("sluice_transform_duration_seconds_sum", &labels)
            .unwrap_or_else(|| panic!("no duration for {transform}: {}", sluice.metrics()));
        let batches = sluice
            .metric("sluice_transform_duration_seconds_count", &labels)
            .unwrap_or_default();
        (seconds * 1e6 / messages as f64, batches)
    };
    let (guest_us, batches) = per_message("to-celsius", READINGS + 1);
    let (rust_us, _) = per_message("valid-readings", READINGS + 3);
    println!(
        "guests: {}: pipeline delivered {READINGS} readings; to-celsius ({}) took {guest_us:.1} µs \
         per message in {batches} batches (valid-readings, Rust: {rust_us:.1} µs per message)",
        guest.lang, guest.lang
    );
}

#[test]
fn python_json_map_runs_in_a_pipeline_from_mosquitto_to_kafka() {
    pipeline_delivers_every_reading(&PYTHON);
}

#[test]
fn js_json_map_runs_in_a_pipeline_from_mosquitto_to_kafka() {
    pipeline_delivers_every_reading(&JS);
}
