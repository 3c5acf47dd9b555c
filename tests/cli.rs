//! `sluice validate` against the example configs and the golden error
//! fixtures. Run from the repository root with paths as given on the command
//! line, as a user would: `sluice validate configs/invalid/NAME.yaml`.
//!
//! Golden fixtures: every `configs/invalid/NAME.yaml` has a
//! `configs/invalid/NAME.expected` with the exact stderr of that command
//! (which must exit 1). `SLUICE_BLESS=1 cargo test -p sluice-tests --test cli`
//! rewrites the `.expected` files from the current output.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sluice_tests::{sluice_command, workspace_root};

/// The `*.yaml` files directly in `dir` (relative to the repository root),
/// sorted.
fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let root = workspace_root();
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("read configs folder").path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "yaml"))
        .map(|path| {
            path.strip_prefix(&root)
                .expect("inside the repository")
                .to_path_buf()
        })
        .collect();
    files.sort();
    files
}

/// The `${NAME}` and `${NAME:-default}` references in a YAML text:
/// `(name, has_default)`.
fn env_references(text: &str) -> BTreeSet<(String, bool)> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find('}') else { break };
        let inner = &rest[..end];
        let (name, has_default) = match inner.split_once(":-") {
            Some((name, _)) => (name, true),
            None => (inner, false),
        };
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            found.insert((name.to_owned(), has_default));
        }
        rest = &rest[end..];
    }
    found
}

/// A plausible stand-in value for an environment variable a config needs.
fn placeholder(name: &str) -> &'static str {
    let upper = name.to_ascii_uppercase();
    if upper.contains("MQTT") && upper.contains("URL") {
        "mqtt://127.0.0.1:1883"
    } else if upper.contains("BROKERS") || upper.contains("KAFKA") {
        "127.0.0.1:9092"
    } else if upper.contains("PORT") {
        "1883"
    } else {
        "sluice-test"
    }
}

/// `sluice validate FILE` run from the repository root.
fn validate(file: &Path, env: impl FnOnce(&mut Command)) -> Output {
    let mut command = sluice_command();
    command
        .arg("validate")
        .arg(file)
        .current_dir(workspace_root());
    env(&mut command);
    command
        .output()
        .unwrap_or_else(|err| panic!("run sluice validate {}: {err}", file.display()))
}

/// A line diff of `expected` against `actual` (longest common subsequence),
/// `-` for expected lines missing, `+` for unexpected lines.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("   {}\n", a[i]);
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out += &format!(" + {}\n", b[j]);
            j += 1;
        } else {
            out += &format!(" - {}\n", a[i]);
            i += 1;
        }
    }
    if expected.ends_with('\n') != actual.ends_with('\n') {
        out += &format!(
            " (expected {} with a newline, actual {})\n",
            if expected.ends_with('\n') {
                "ends"
            } else {
                "does not end"
            },
            if actual.ends_with('\n') {
                "does"
            } else {
                "does not"
            },
        );
    }
    out
}

#[test]
fn every_example_config_validates() {
    let root = workspace_root();
    let configs = yaml_files("configs");
    if configs.is_empty() {
        println!("no configs/*.yaml yet");
    }
    let mut failures = Vec::new();
    for config in &configs {
        let text = std::fs::read_to_string(root.join(config)).expect("read config");
        let output = validate(config, |command| {
            for (name, has_default) in env_references(&text) {
                if !has_default && std::env::var_os(&name).is_none() {
                    command.env(&name, placeholder(&name));
                }
            }
        });
        if output.status.success() {
            println!("ok: {}", config.display());
        } else {
            failures.push(format!(
                "sluice validate {} exited with {}:\n{}",
                config.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} example configs do not validate (build the plugins first: \
         `bash scripts/test.sh`, or the Rust ones and `bash scripts/build-guests.sh`):\n\n{}",
        failures.len(),
        configs.len(),
        failures.join("\n")
    );
}

#[test]
fn invalid_configs_fail_with_exactly_their_expected_errors() {
    let root = workspace_root();
    let bless = std::env::var_os("SLUICE_BLESS").is_some_and(|v| v == "1");
    let fixtures = yaml_files("configs/invalid");
    let mut failures = Vec::new();

    // Every .expected belongs to a .yaml.
    if let Ok(entries) = std::fs::read_dir(root.join("configs/invalid")) {
        for entry in entries {
            let path = entry.expect("read configs/invalid").path();
            if path.extension().is_some_and(|ext| ext == "expected")
                && !path.with_extension("yaml").exists()
            {
                failures.push(format!(
                    "{} has no {}",
                    path.display(),
                    path.with_extension("yaml").display()
                ));
            }
        }
    }

    for fixture in &fixtures {
        let text = std::fs::read_to_string(root.join(fixture)).expect("read fixture");
        // The fixture's own `${VAR}` references are unset, so that the result
        // does not depend on the caller's environment.
        let output = validate(fixture, |command| {
            for (name, _) in env_references(&text) {
                command.env_remove(&name);
            }
        });
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let expected_path = root.join(fixture).with_extension("expected");
        if output.status.code() != Some(1) {
            failures.push(format!(
                "sluice validate {} exited with {} (expected exit code 1); stderr:\n{stderr}",
                fixture.display(),
                output.status
            ));
            continue;
        }
        if bless {
            std::fs::write(&expected_path, &stderr).expect("write .expected");
            println!("blessed {}", expected_path.display());
            continue;
        }
        let Ok(expected) = std::fs::read_to_string(&expected_path) else {
            failures.push(format!(
                "{} has no {} (write it, or run with SLUICE_BLESS=1); stderr was:\n{stderr}",
                fixture.display(),
                expected_path.display()
            ));
            continue;
        };
        if expected != stderr {
            failures.push(format!(
                "sluice validate {} printed other errors than {} \
                 (- expected, + actual; SLUICE_BLESS=1 accepts the actual):\n{}",
                fixture.display(),
                expected_path
                    .strip_prefix(&root)
                    .unwrap_or(&expected_path)
                    .display(),
                diff(&expected, &stderr)
            ));
        } else {
            println!("ok: {}", fixture.display());
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) with the {} golden fixtures in configs/invalid:\n\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_line_diff_marks_missing_and_extra_lines() {
    assert_eq!(diff("a\nb\nc\n", "a\nc\nd\n"), "   a\n - b\n   c\n + d\n");
    assert_eq!(diff("same\n", "same\n"), "   same\n");
}

#[test]
fn env_references_are_found_with_and_without_defaults() {
    let found = env_references("url: ${MQTT_URL}\nbrokers: ${KAFKA:-127.0.0.1:9092}\nx: $HOME ${}");
    assert_eq!(
        found,
        BTreeSet::from([("KAFKA".to_owned(), true), ("MQTT_URL".to_owned(), false)])
    );
}

/// Runs `command` in `dir`; panics with its output unless it succeeds.
fn run_ok(dir: &Path, mut command: Command) -> String {
    let shown = format!("{command:?}");
    let output = command
        .current_dir(dir)
        .output()
        .unwrap_or_else(|err| panic!("run {shown}: {err}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{shown} failed:\n{text}");
    text
}

/// The README's plugin walk-through as a new user runs it: scaffold, unit
/// tests natively, build the component, validate, `sluice test --expect`.
#[test]
fn plugin_new_makes_a_crate_that_tests_builds_and_passes_sluice_test() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut new = sluice_command();
    new.args(["plugin", "new", "add-site"]);
    let said = run_ok(dir.path(), new);
    assert!(said.contains("cargo build --release"), "{said}");
    let root = dir.path().join("add-site");
    // Reuse compiled dependencies across runs: point the crate's `target`
    // at a folder under the plugins' target dir.
    let shared = workspace_root().join("plugins/target/scaffold-test");
    std::fs::create_dir_all(&shared).expect("shared target dir");
    std::os::unix::fs::symlink(&shared, root.join("target")).expect("link target");
    let cargo = || {
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // The test runs under the workspace's cargo: keep its settings out.
        c.env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTFLAGS");
        c
    };
    let mut test = cargo();
    test.args(["test", "--target", "x86_64-unknown-linux-gnu"]);
    let tested = run_ok(&root, test);
    assert!(tested.contains("test result: ok. 3 passed"), "{tested}");
    let mut build = cargo();
    build.args(["build", "--release"]);
    run_ok(&root, build);
    assert!(root
        .join("target/wasm32-wasip2/release/add_site.wasm")
        .is_file());
    let mut validate = sluice_command();
    validate.args(["validate", "pipeline.yaml"]);
    run_ok(&root, validate);
    let mut check = sluice_command();
    check.args([
        "test",
        "pipeline.yaml",
        "--input",
        "fixtures/in.jsonl",
        "--expect",
        "fixtures/out.jsonl",
    ]);
    let checked = run_ok(&root, check);
    assert!(checked.contains("2 record(s) match"), "{checked}");
}
