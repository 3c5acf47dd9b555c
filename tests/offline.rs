//! Commands that need no broker: `sluice test` on fixture messages, and the
//! compiled-plugin cache behind `validate` and `run`.

use std::process::Command;

mod common;

use common::transform;
use sluice_tests::{plugin, sluice_command, workspace_root};

fn sluice(args: &[&str], cache: &std::path::Path) -> std::process::Output {
    let mut cmd: Command = sluice_command();
    cmd.current_dir(workspace_root())
        .env("SLUICE_CACHE_DIR", cache)
        .args(args);
    cmd.output().expect("run sluice")
}

#[test]
fn sluice_test_matches_the_expected_records_and_dead_letters() {
    let cache = tempfile::tempdir().expect("temp dir");
    let out = sluice(
        &[
            "test",
            "configs/sensors.yaml",
            "--input",
            "tests/fixtures/sensors.in.jsonl",
            "--expect",
            "tests/fixtures/sensors.out.jsonl",
        ],
        cache.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sluice test failed:\n{stderr}");
    assert!(stderr.contains("3 record(s) match"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(r#""dead_letter""#), "{stdout}");
}

#[test]
fn sluice_test_exits_1_with_a_readable_diff_on_a_mismatch() {
    let cache = tempfile::tempdir().expect("temp dir");
    let expected =
        std::fs::read_to_string(workspace_root().join("tests/fixtures/sensors.out.jsonl"))
            .expect("fixture");
    let wrong = cache.path().join("wrong.jsonl");
    std::fs::write(&wrong, expected.replace("100.0", "99.0")).expect("write");
    let out = sluice(
        &[
            "test",
            "configs/sensors.yaml",
            "--input",
            "tests/fixtures/sensors.in.jsonl",
            "--expect",
            wrong.to_str().expect("utf-8 path"),
        ],
        cache.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("record 0:"), "{stderr}");
    assert!(
        stderr.contains("- expected") && stderr.contains("+ actual"),
        "{stderr}"
    );
}

#[test]
fn compiled_plugins_are_cached_and_a_corrupt_cache_entry_is_ignored() {
    let cache = tempfile::tempdir().expect("temp dir");
    let validate = || sluice(&["validate", "configs/sensors.yaml"], cache.path());
    let first = validate();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let entries = cache_entries(cache.path());
    // configs/sensors.yaml uses two distinct plugins.
    assert_eq!(entries.len(), 2, "{entries:?}");
    for e in &entries {
        std::fs::write(e, b"not a compiled component").expect("corrupt the cache");
    }
    let again = validate();
    assert!(
        again.status.success(),
        "a corrupt cache entry must be recompiled, not fatal: {}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// The `.cwasm` entries in `cache`, by file name.
fn cache_entries(cache: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(cache)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    v.sort();
    v
}

/// A loaded plugin holds on to its cache entry: at a bound of 0, writing
/// other entries keeps it while the plugin is loaded, and deletes it once
/// the plugin is dropped (with no keep window here; `sluice` keeps it 10
/// minutes more), as when `run --watch` moves to a rebuilt plugin.
#[test]
fn a_loaded_plugin_keeps_its_cache_entry_until_it_is_dropped() {
    use sluice::wasm::{cache::PluginCache, WasmHost};
    let dir = tempfile::tempdir().expect("temp dir");
    let cache =
        PluginCache::new(dir.path().to_path_buf(), 0).keep_after_use(std::time::Duration::ZERO);
    let host = WasmHost::new(Some(cache)).expect("wasm engine");
    let load = |name: &str| {
        host.load(&transform(plugin(name), "{}"))
            .expect("the plugin loads")
    };
    let map = load("json_map");
    let map_entry = cache_entries(dir.path());
    let split = load("json_split");
    assert_eq!(
        cache_entries(dir.path()).len(),
        2,
        "both plugins are loaded: both entries stay at a bound of 0"
    );
    drop(map);
    let filter = load("json_filter");
    let left = cache_entries(dir.path());
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        !left.contains(&map_entry[0]),
        "the dropped plugin's entry goes: {left:?}"
    );
    drop((split, filter));
}

#[test]
fn the_cache_keeps_the_recently_used_plugins_within_sluice_cache_max_mb() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    // Something else in the same folder, which pruning must not touch.
    std::fs::create_dir_all(cache.join("npm")).expect("mkdir");
    std::fs::write(cache.join("notes.txt"), "keep me").expect("write");
    let config = |plugin: &str| {
        let file = dir.path().join(format!("{plugin}.yaml"));
        std::fs::write(&file, pipeline(plugin, 8, plugin, "config: {}")).expect("write config");
        file
    };
    let (map, split) = (config("json_map"), config("json_split"));
    let validate_in = |cache: &std::path::Path, file: &std::path::Path, max_mb: Option<&str>| {
        let mut cmd = sluice_command();
        cmd.current_dir(workspace_root())
            .env("SLUICE_CACHE_DIR", cache)
            .env("SLUICE_LOG", "info")
            .arg("validate")
            .arg(file);
        if let Some(mb) = max_mb {
            cmd.env("SLUICE_CACHE_MAX_MB", mb);
        }
        let out = cmd.output().expect("run sluice");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let validate = |file: &std::path::Path, max_mb: Option<&str>| validate_in(&cache, file, max_mb);

    validate(&map, None);
    let entries = cache_entries(&cache);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let map_entry = entries[0].clone();
    // A hit marks the entry as used now.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&map_entry)
        .and_then(|f| f.set_modified(hour_ago))
        .expect("age the entry");
    validate(&map, None);
    let used = std::fs::metadata(&map_entry)
        .and_then(|m| m.modified())
        .expect("mtime");
    assert!(
        used > hour_ago + std::time::Duration::from_secs(3000),
        "a cache hit must mark its entry as used"
    );
    assert_eq!(
        cache_entries(&cache),
        vec![map_entry.clone()],
        "a hit writes nothing"
    );

    // Over the bound, the entry used longest ago goes; the new one stays.
    let log = validate(&split, Some("0"));
    let entries = cache_entries(&cache);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_ne!(entries[0], map_entry);
    assert!(
        log.contains("deleted the least recently used compiled plugins")
            && log.contains("deleted=1"),
        "{log}"
    );
    assert!(cache.join("npm").is_dir() && cache.join("notes.txt").is_file());

    // Within the bound, both stay.
    validate(&map, None);
    assert_eq!(cache_entries(&cache).len(), 2);

    // The plugins one process uses stay even over the bound: else the two
    // of configs/sensors.yaml would evict each other and compile again at
    // every start.
    let shared = dir.path().join("shared");
    let sensors = std::path::Path::new("configs/sensors.yaml");
    let log = validate_in(&shared, sensors, Some("0"));
    assert_eq!(cache_entries(&shared).len(), 2, "{log}");
    assert!(
        log.contains("the compiled plugins this process uses (or used in the last 10 minutes) are over the cache's bound"),
        "{log}"
    );
    let before = cache_entries(&shared);
    let log = validate_in(&shared, sensors, Some("0"));
    assert_eq!(cache_entries(&shared), before, "{log}");
    assert!(
        !log.contains("deleted"),
        "two hits write and delete nothing: {log}"
    );

    // A bound that is not a number is an error that names it.
    let out = sluice_command()
        .env("SLUICE_CACHE_DIR", &cache)
        .env("SLUICE_CACHE_MAX_MB", "1GB")
        .arg("validate")
        .arg(&map)
        .output()
        .expect("run sluice");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SLUICE_CACHE_MAX_MB must be a whole number of MiB, got `1GB`"),
        "{stderr}"
    );
}

#[test]
fn sluice_test_keeps_each_inputs_outputs_together_and_in_order_through_a_chain() {
    // json-split makes several messages of one input; json-filter, the last
    // stage, drops some of them: every record must still name its input,
    // in input order, with an input's records in element order.
    let config = format!(
        r#"
apiVersion: sluice/v1
name: chain
source:
  mqtt:
    url: mqtt://127.0.0.1:1883
    client_id: offline-chain
    topics:
      - filter: gateways/#
transforms:
  - name: split
    plugin: {split}
    config: {{ field: readings, inherit: [gateway] }}
  - name: keep
    plugin: {filter}
    config: {{ field: value, op: exists }}
sink:
  kafka:
    brokers: 127.0.0.1:9092
    topic: readings
errors:
  dead_letter_topic: chain.dlq
"#,
        split = sluice_tests::plugin("json_split").display(),
        filter = sluice_tests::plugin("json_filter").display(),
    );
    let inputs = [
        r#"{"topic": "gateways/g1", "payload": {"gateway": "g1", "readings": [{"value": 1}, {"x": 0}, {"value": 2}]}}"#,
        r#"{"topic": "gateways/g2", "payload": {"gateway": "g2", "readings": []}}"#,
        r#"{"topic": "gateways/g3", "payload": "not json"}"#,
        r#"{"topic": "gateways/g4", "payload": {"gateway": "g4", "readings": [{"value": 3}]}}"#,
        r#"{"topic": "gateways/g5", "payload": {"gateway": "g5", "readings": [{"x": 0}]}}"#,
        r#"{"topic": "gateways/g6", "payload": {"gateway": "g6", "readings": [{"value": 4}, {"value": 5}]}}"#,
    ];
    let records = sluice_test_records(&config, &inputs);
    let seen: Vec<(u64, String)> = records
        .iter()
        .map(|r| {
            let what = match r.get("dead_letter") {
                Some(d) => format!("dead letter from {}", d["transform"]),
                None => format!("{} {}", r["payload"]["gateway"], r["payload"]["value"]),
            };
            (r["input"].as_u64().expect("input index"), what)
        })
        .collect();
    let expected: Vec<(u64, String)> = [
        (0, r#""g1" 1"#),
        (0, r#""g1" 2"#),
        (2, r#"dead letter from "split""#),
        (3, r#""g4" 3"#),
        (5, r#""g6" 4"#),
        (5, r#""g6" 5"#),
    ]
    .into_iter()
    .map(|(input, what)| (input, what.to_owned()))
    .collect();
    assert_eq!(seen, expected, "{records:#?}");
}

#[test]
fn sluice_test_without_transforms_gives_every_input_unchanged() {
    let config = r#"
apiVersion: sluice/v1
name: plain
source:
  mqtt:
    url: mqtt://127.0.0.1:1883
    client_id: offline-plain
    topics:
      - filter: sensors/#
sink:
  kafka:
    brokers: 127.0.0.1:9092
    topic: "{{topic.1}}"
"#;
    let inputs = [
        r#"{"topic": "sensors/a", "payload": {"t": 1}}"#,
        r#"{"topic": "sensors/b", "payload": "not json"}"#,
    ];
    let records = sluice_test_records(config, &inputs);
    let seen: Vec<(u64, String, String)> = records
        .iter()
        .map(|r| {
            (
                r["input"].as_u64().expect("input index"),
                r["topic"].as_str().unwrap_or_default().to_owned(),
                r["payload"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (0, "a".to_owned(), r#"{"t":1}"#.to_owned()),
            (1, "b".to_owned(), r#""not json""#.to_owned()),
        ],
        "{records:#?}"
    );
}

#[test]
fn sluice_test_hands_the_plugin_batches_of_batch_max_messages() {
    // 40,000 inputs are about 5 MB in one call, more than the plugin's
    // 4 MiB; in batches of 100, as `sluice run` hands them over, they fit.
    let config = pipeline(
        "batches",
        100,
        "json_map",
        "config: { from_topic: { device_id: 1 } }\n    limits: { memory_mb: 4 }",
    );
    let n = 40_000;
    let inputs: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"topic": "sensors/dev-{:04}/telemetry", "payload": {{"seq": {i}, "site": "plant-12/line-0"}}}}"#,
                i % 1000
            )
        })
        .collect();
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let records = sluice_test_records(&config, &inputs);
    assert_eq!(records.len(), n, "first: {:?}", records.first());
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["input"], i, "{r}");
        assert_eq!(r["payload"]["seq"], i, "{r}");
        assert_eq!(
            r["payload"]["device_id"],
            format!("dev-{:04}", i % 1000),
            "{r}"
        );
    }
}

/// A plugin that traps on some messages of a batch (tests/plugins.rs runs
/// each hostile case with batches of one): the batch's call fails, the
/// host tries each of its messages alone on a fresh instance, and only
/// the messages that fail alone go to the error path, with their own
/// reason; their neighbours come out as if nothing had happened.
#[test]
fn a_trap_fails_only_the_messages_that_trap_alone_not_their_whole_batch() {
    let config = pipeline("isolate", 10, "hostile", "config: { mode: panic }");
    // Batches 0-9, 10-19, 20-24: two attacks in the first, one in the
    // second, none in the third.
    let attacks = [3, 7, 12];
    let inputs: Vec<String> = (0..25)
        .map(|i| {
            let payload = if attacks.contains(&i) {
                "attack".to_string()
            } else {
                format!("m{i}")
            };
            format!(r#"{{"topic": "sensors/dev-{i}", "payload": "{payload}"}}"#)
        })
        .collect();
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let (records, log) = sluice_test_output(&config, &inputs);
    assert_eq!(records.len(), 25, "{records:?}");
    // The two batches with attacks failed whole first.
    assert_eq!(
        log.matches("tried the messages of the batch alone").count(),
        2,
        "{log}"
    );
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["input"], i, "{r}");
        if attacks.contains(&i) {
            let error = r["dead_letter"]["error"].as_str().unwrap_or_default();
            assert!(error.starts_with("plugin trapped"), "{r}");
        } else {
            assert_eq!(r["payload"], format!("m{i}"), "{r}");
        }
    }
}

/// A batch too large for the plugin's memory together (8 messages of 1 MiB
/// against `memory_mb: 4`) fails its call as `memory`; each message alone
/// fits, so all of them go through.
#[test]
fn a_batch_too_large_for_the_plugins_memory_goes_through_one_message_at_a_time() {
    let config = pipeline(
        "large",
        8,
        "hostile",
        "config: { mode: panic }\n    limits: { memory_mb: 4 }",
    );
    let inputs: Vec<String> = (0..8)
        .map(|i| {
            let payload = format!("{i}").repeat(1 << 20);
            format!(r#"{{"topic": "sensors/dev-{i}", "payload": "{payload}"}}"#)
        })
        .collect();
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let (records, log) = sluice_test_output(&config, &inputs);
    assert!(
        log.contains("each of its messages went through alone")
            && log.contains("plugin exceeded its memory limit of 4 MiB"),
        "{log}"
    );
    assert_eq!(records.len(), 8);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["dead_letter"], serde_json::Value::Null, "input {i}");
        let payload = r["payload"].as_str().unwrap_or_default();
        assert_eq!(payload.len(), 1 << 20, "input {i}");
        assert!(payload.starts_with(&i.to_string()), "input {i}");
    }
}

/// A plugin that spins on every message: the batch's call overruns its
/// time budget, the first messages tried alone overrun theirs, and once
/// those have taken more than twice the budget the rest of the batch fails
/// untried, with the batch's reason and why it was not tried alone.
#[test]
fn a_plugin_that_spins_on_every_message_costs_a_few_time_budgets_a_batch() {
    let config = pipeline(
        "spin",
        20,
        "hostile",
        "config: { mode: spin }\n    limits: { timeout_ms: 200 }",
    );
    let inputs: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"topic": "sensors/dev-{i}", "payload": "attack"}}"#))
        .collect();
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let (records, log) = sluice_test_output(&config, &inputs);
    let took = started.elapsed();
    assert_eq!(records.len(), 20);
    let errors: Vec<&str> = records
        .iter()
        .map(|r| r["dead_letter"]["error"].as_str().expect("dead-lettered"))
        .collect();
    let untried = errors
        .iter()
        .filter(|e| e.contains("the rest were not tried alone"))
        .count();
    println!("{untried} of 20 untried, in {took:?}");
    assert!(
        errors
            .iter()
            .all(|e| e.starts_with("plugin exceeded its time budget of 200 ms")),
        "{errors:?}"
    );
    // The batch, then one to three messages alone: each takes at least
    // 200 ms, and more than 400 ms of them ends the tries.
    assert!((15..=19).contains(&untried), "{errors:?}\n{log}");
}

#[test]
fn sluice_test_ends_quietly_when_its_reader_stops_early() {
    // `sluice test ... | head -1`: after the first line nobody reads, and
    // the records (far more than a pipe holds) meet a closed pipe.
    let dir = tempfile::tempdir().expect("temp dir");
    let inputs_file = dir.path().join("in.jsonl");
    let inputs: Vec<String> = (0..20_000)
        .map(|i| {
            format!(
                r#"{{"topic": "sensors/dev-{i}/telemetry", "payload": {{"temperature": {i}}}}}"#
            )
        })
        .collect();
    std::fs::write(&inputs_file, inputs.join("\n")).expect("write inputs");
    let mut child = sluice_command()
        .current_dir(workspace_root())
        .env("SLUICE_CACHE_DIR", dir.path())
        .args(["test", "configs/sensors.yaml", "--input"])
        .arg(&inputs_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sluice");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first)
        .expect("read the first record");
    // The reader (and with it the pipe's only read end) is gone here.
    let out = child.wait_with_output().expect("wait for sluice");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let record: serde_json::Value = serde_json::from_str(&first).expect("a JSON line");
    assert_eq!(record["input"], 0, "{first}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn sluice_wasm_perfmap_writes_a_perf_map_of_the_plugin_functions() {
    let cache = tempfile::tempdir().expect("temp dir");
    let mut cmd = sluice_command();
    cmd.current_dir(workspace_root())
        .env("SLUICE_CACHE_DIR", cache.path())
        .env("SLUICE_WASM_PERFMAP", "1")
        .args([
            "test",
            "configs/sensors.yaml",
            "--input",
            "tests/fixtures/sensors.in.jsonl",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("run sluice");
    let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", child.id()));
    let out = child.wait_with_output().expect("wait for sluice");
    let text = std::fs::read_to_string(&map);
    let _ = std::fs::remove_file(&map);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = text.unwrap_or_else(|e| panic!("{}: {e}", map.display()));
    // One line per function: `0xSTART SIZE NAME`, both numbers in hex; a
    // stripped plugin's functions are named by index (`wasm[0]::function[21]`).
    let plugin_functions = text
        .lines()
        .filter(|l| {
            let mut parts = l.splitn(3, ' ');
            let hex = |p: Option<&str>| p.is_some_and(|p| u64::from_str_radix(p, 16).is_ok());
            hex(parts.next().and_then(|p| p.strip_prefix("0x")))
                && hex(parts.next())
                && parts.next().is_some_and(|n| n.starts_with("wasm["))
        })
        .count();
    assert!(plugin_functions > 10, "{text}");
}

/// A pipeline for `sluice test` named `name`, in batches of `batch`, with
/// the one transform `plugin` (a built plugin's name) and its YAML
/// `settings` (`config:`, `limits:`), and a dead-letter topic.
fn pipeline(name: &str, batch: usize, plugin: &str, settings: &str) -> String {
    format!(
        r#"
apiVersion: sluice/v1
name: {name}
batch: {{ max_messages: {batch} }}
source:
  mqtt:
    url: mqtt://127.0.0.1:1883
    client_id: offline-{name}
    topics:
      - filter: sensors/#
transforms:
  - name: {plugin}
    plugin: {path}
    {settings}
sink:
  kafka:
    brokers: 127.0.0.1:9092
    topic: readings
errors:
  dead_letter_topic: {name}.dlq
"#,
        path = sluice_tests::plugin(plugin).display(),
    )
}

/// Writes `config` and the input lines to a temporary folder, runs `sluice
/// test` on them, which must succeed, and returns its records (one JSON
/// value per stdout line).
fn sluice_test_records(config: &str, inputs: &[&str]) -> Vec<serde_json::Value> {
    sluice_test_output(config, inputs).0
}

/// [`sluice_test_records`], and what `sluice test` logged.
fn sluice_test_output(config: &str, inputs: &[&str]) -> (Vec<serde_json::Value>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_file = dir.path().join("pipeline.yaml");
    let inputs_file = dir.path().join("in.jsonl");
    std::fs::write(&config_file, config).expect("write config");
    std::fs::write(&inputs_file, inputs.join("\n")).expect("write inputs");
    // The folder doubles as the compiled-plugin cache.
    let out = sluice(
        &[
            "test",
            config_file.to_str().expect("utf-8 path"),
            "--input",
            inputs_file.to_str().expect("utf-8 path"),
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "sluice test failed:\n{stderr}");
    let records = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    (records, stderr)
}

/// Every field of a message, with and without each optional one, reaches a
/// plugin and comes back intact: json-filter keeps a matching message
/// unchanged, so what the host lowered into the guest (`wasm/abi.rs`) is
/// what the guest hands back. In one batch and one message at a time.
#[test]
fn every_field_of_every_kind_of_message_crosses_into_a_plugin_and_back() {
    use bytes::Bytes;
    use sluice::message::{Message, Qos};
    use sluice::wasm::{Instance, WasmHost};

    let host = WasmHost::new(None).expect("wasm engine");
    let t = transform(plugin("json_filter"), r#"{"field": "k", "op": "exists"}"#);
    let loaded = host.load(&t).expect("json_filter plugin");
    let mut instance = Instance::new(&loaded, "abi", &t).expect("json_filter init");

    let plain = Message {
        topic: "sensors/dev-1/telemetry".into(),
        payload: Bytes::from_static(br#"{"k":1}"#),
        timestamp_ms: 1_764_000_000_000,
        qos: Qos::AtLeastOnce,
        ..Message::default()
    };
    let everything = Message {
        topic: "sensors/capteur-é/télémétrie".into(),
        kafka_topic: Some("telemetry.v2".into()),
        key: Some(Bytes::from_static(b"dev-\x00\xff")),
        payload: Bytes::from(format!(r#"{{"k":"{}","t":"°C ✓"}}"#, "x".repeat(300))),
        headers: vec![
            ("site".into(), "plant-12".into()),
            ("site".into(), String::new()),
            (String::new(), "ünïcode ✓".into()),
        ],
        timestamp_ms: u64::MAX,
        qos: Qos::ExactlyOnce,
        retain: true,
        content_type: Some("application/json".into()),
    };
    let mut batch = vec![plain.clone(), everything.clone()];
    for (i, qos) in [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        batch.push(Message {
            topic: String::new(),
            key: Some(Bytes::new()),
            headers: vec![("n".into(), i.to_string())],
            qos,
            retain: i % 2 == 0,
            ..plain.clone()
        });
        batch.push(Message {
            kafka_topic: Some(String::new()),
            content_type: Some(String::new()),
            timestamp_ms: i as u64,
            qos,
            ..everything.clone()
        });
    }
    // Enough messages that the guest's memory grows during the lowering.
    batch.extend((0..300).map(|i| Message {
        headers: vec![("i".into(), i.to_string()); i % 4],
        ..if i % 2 == 0 {
            plain.clone()
        } else {
            everything.clone()
        }
    }));

    let check = |inputs: &[Message], results: Vec<Result<_, String>>| {
        assert_eq!(results.len(), inputs.len());
        for (i, (input, result)) in inputs.iter().zip(results).enumerate() {
            let outputs: sluice::wasm::chain::Outputs = result.expect("kept");
            assert_eq!(
                outputs.as_slice(),
                std::slice::from_ref(input),
                "message {i}"
            );
        }
    };
    let processed = instance.process(&batch).expect("one call for the batch");
    check(&batch, processed.results);
    for m in &batch[..8] {
        let processed = instance.process(std::slice::from_ref(m)).expect("one call");
        check(std::slice::from_ref(m), processed.results);
    }
}

/// A plugin whose results break the canonical ABI (plugins/fixtures/
/// malformed: a topic outside its memory, a topic that is not UTF-8, a
/// payload longer than its memory) fails its call as `invalid` with the
/// reason, the host neither panics nor trusts the lengths, and a fresh
/// instance of the same plugin works.
#[test]
fn malformed_results_fail_the_call_and_a_fresh_instance_works() {
    use bytes::Bytes;
    use sluice::message::Message;
    use sluice::wasm::{Instance, WasmHost};

    let host = WasmHost::new(None).expect("wasm engine");
    let message = |payload: &'static str| Message {
        topic: "a/dev-1".into(),
        payload: Bytes::from_static(payload.as_bytes()),
        ..Message::default()
    };
    let batch = [message("ok-0"), message("attack"), message("ok-1")];
    for (mode, reason) in [
        (
            "out-of-bounds",
            "string pointer/length out of bounds of memory",
        ),
        ("bad-utf8", "invalid utf-8"),
        (
            "huge-payload",
            "list pointer/length out of bounds of memory",
        ),
    ] {
        let t = transform(plugin("malformed"), &format!(r#"{{"mode": "{mode}"}}"#));
        let loaded = host.load(&t).expect("malformed plugin");
        let mut instance = Instance::new(&loaded, "abi", &t).expect("init");
        let err = match instance.process(&batch) {
            Ok(processed) => panic!("{mode}: the call succeeded: {:?}", processed.results),
            Err(err) => err,
        };
        println!("{mode}: {} ({})", err.reason, err.kind);
        assert_eq!(err.kind, "invalid", "{mode}");
        let expected = format!("plugin returned malformed results: {reason}");
        assert!(err.reason.starts_with(&expected), "{mode}: {}", err.reason);

        let mut fresh = Instance::new(&loaded, "abi", &t).expect("init again");
        let processed = fresh.process(&[message("ok-2")]).expect("a clean batch");
        let outputs = processed.results[0].as_ref().expect("passed through");
        assert_eq!(outputs.as_slice(), [message("ok-2")], "{mode}");
    }
}
