//! Commands that need no broker: `sluice test` on fixture messages, and the
//! compiled-plugin cache behind `validate` and `run`.

use std::process::Command;

use sluice_tests::{sluice_command, workspace_root};

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
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .expect("cache dir was created")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
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
