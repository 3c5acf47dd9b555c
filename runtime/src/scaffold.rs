//! `sluice plugin new NAME`: a ready-to-build Rust transform crate with the
//! SDK and the WIT world vendored in, a native unit test, an example
//! pipeline and fixtures for `sluice test`.

use std::path::{Path, PathBuf};

/// Why the scaffold was not written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// Not a usable crate name.
    #[error("invalid plugin name `{0}`: use lowercase letters, digits, `-` and `_`, starting with a letter")]
    BadName(String),
    /// Refusing to overwrite.
    #[error("{0} already exists")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The SDK's sources, vendored into each new crate so that it builds
/// anywhere (the SDK is not on crates.io).
const SDK_FILES: [(&str, &str); 7] = [
    ("lib.rs", include_str!("../../plugins/sdk/src/lib.rs")),
    ("alloc.rs", include_str!("../../plugins/sdk/src/alloc.rs")),
    ("config.rs", include_str!("../../plugins/sdk/src/config.rs")),
    ("fields.rs", include_str!("../../plugins/sdk/src/fields.rs")),
    ("log.rs", include_str!("../../plugins/sdk/src/log.rs")),
    (
        "message.rs",
        include_str!("../../plugins/sdk/src/message.rs"),
    ),
    ("runner.rs", include_str!("../../plugins/sdk/src/runner.rs")),
];
const WIT: &str = include_str!("../../wit/transform.wit");

const CARGO_TOML: &str = r#"[package]
name = "@NAME@"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# cdylib: the .wasm component; rlib: so the unit tests run natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
sluice-sdk = { path = "sluice-sdk" }
serde = { version = "1", features = ["derive"] }
serde_json = { version = "1", features = ["preserve_order", "raw_value"] }

# Its own workspace: builds wherever you put it.
[workspace]

# Fast per message; the host compiles the plugin once and caches it.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = true
"#;

const SDK_CARGO_TOML: &str = r#"[package]
name = "sluice-sdk"
version = "0.1.0"
edition = "2021"
publish = false
description = "Vendored copy of the Sluice transform SDK (from `sluice plugin new`)."

[lib]
name = "sluice_sdk"

[features]
default = ["small-blocks"]
# Free lists of small blocks in front of dlmalloc as the guest's global
# allocator (see `SmallBlocks`). Turn off to use another allocator.
small-blocks = []

[dependencies]
serde = { version = "1", features = ["derive"] }
serde_json = { version = "1", features = ["preserve_order", "raw_value"] }
wit-bindgen = "0.63"
"#;

const CARGO_CONFIG: &str = r#"# Transforms are WebAssembly components: build for WASI preview 2 by default.
# Run the unit tests natively: cargo test --target x86_64-unknown-linux-gnu
[build]
target = "wasm32-wasip2"

# More inlining than LLVM's default: fewer calls in the guest, so fewer of
# the epoch checks the host puts on every function entry (about 4 % off
# json-map's time per message).
[target.wasm32-wasip2]
rustflags = ["-C", "llvm-args=-inline-threshold=1000"]
"#;

const LIB_RS: &str = r##"//! @NAME@: a Sluice transform.
//!
//! ```yaml
//! transforms:
//!   - name: @NAME@
//!     plugin: target/wasm32-wasip2/release/@FILE@.wasm
//!     config: { field: site, value: plant-1 }   # sets `site` on every JSON object
//! ```

use serde::Deserialize;
use serde_json::Value;
use sluice_sdk::{Config, Message, Transform};

/// Sets one field of every JSON object payload to a fixed value; drops
/// messages whose payload is an empty object; dead-letters anything that
/// is not a JSON object.
pub struct Tag {
    field: String,
    value: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The field to set.
    field: String,
    /// Its value (any JSON).
    value: Value,
}

impl Transform for Tag {
    fn new(config: Config) -> Result<Self, String> {
        // An error here stops the pipeline from starting; `sluice validate` shows it.
        let Settings { field, value } = config.parse()?;
        if field.is_empty() {
            return Err("invalid config: `field` is empty".into());
        }
        Ok(Tag { field, value })
    }

    // Ok(vec![]) drops, Ok(vec![m]) maps, Ok(vec![m1, m2]) splits, Err(reason) dead-letters.
    fn process(&mut self, mut msg: Message) -> Result<Vec<Message>, String> {
        let mut fields = msg.json_object()?;
        if fields.is_empty() {
            return Ok(vec![]);
        }
        fields.insert(self.field.clone(), self.value.clone());
        msg.set_json(&fields)?;
        Ok(vec![msg])
    }
}

sluice_sdk::export_transform!(Tag);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_sdk::Runner;

    fn tag() -> Tag {
        Tag::new(Config::from(json!({"field": "site", "value": "plant-1"}))).unwrap()
    }

    #[test]
    fn sets_the_field_on_json_objects() {
        let out = tag()
            .process(Message::new("sensors/dev-1/telemetry", r#"{"t": 21}"#))
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].json_value().unwrap(), json!({"t": 21, "site": "plant-1"}));
    }

    #[test]
    fn drops_empty_objects_and_rejects_the_rest() {
        assert!(tag().process(Message::new("s/1", "{}")).unwrap().is_empty());
        assert!(tag().process(Message::new("s/1", "[1, 2]")).is_err());
        assert!(tag().process(Message::new("s/1", "not json")).is_err());
    }

    #[test]
    fn bad_config_is_refused_at_init() {
        let mut runner = Runner::<Tag>::new();
        assert!(runner.init(r#"{"feild": "site", "value": 1}"#).is_err());
        assert!(runner.init(r#"{"field": "", "value": 1}"#).is_err());
    }
}
"##;

const PIPELINE: &str = r#"# Try the transform on fixtures, no broker needed:
#   sluice test pipeline.yaml --input fixtures/in.jsonl --expect fixtures/out.jsonl
# Run it for real:
#   MQTT_URL=mqtt://127.0.0.1:1883 KAFKA_BROKERS=127.0.0.1:9092 sluice run pipeline.yaml
apiVersion: sluice/v1
name: @NAME@
source:
  mqtt:
    url: ${MQTT_URL:-mqtt://127.0.0.1:1883}
    client_id: sluice-@NAME@
    topics:
      - filter: sensors/+/telemetry
        qos: 1
transforms:
  - name: @NAME@
    plugin: target/wasm32-wasip2/release/@FILE@.wasm
    config: { field: site, value: plant-1 }
sink:
  kafka:
    brokers: ${KAFKA_BROKERS:-127.0.0.1:9092}
    topic: telemetry
    key: "{{topic.1}}"
errors:
  dead_letter_topic: telemetry.dlq
"#;

const FIXTURE_IN: &str = r#"{"topic": "sensors/dev-1/telemetry", "payload": {"temperature": 21.5}}
{"topic": "sensors/dev-2/telemetry", "payload": {}}
{"topic": "sensors/dev-3/telemetry", "payload": "not json"}
"#;

const FIXTURE_OUT: &str = r#"{"headers":[],"input":0,"key":"dev-1","payload":{"site":"plant-1","temperature":21.5},"topic":"telemetry"}
{"dead_letter":{"error":"payload is not JSON: expected ident at line 1 column 2","transform":"@NAME@"},"input":2}
"#;

const README: &str = r#"# @NAME@

A Sluice transform, made by `sluice plugin new @NAME@`.

    rustup target add wasm32-wasip2                  # once
    cargo test --target x86_64-unknown-linux-gnu     # unit tests, natively
    cargo build --release                            # -> target/wasm32-wasip2/release/@FILE@.wasm
    sluice validate pipeline.yaml
    sluice test pipeline.yaml --input fixtures/in.jsonl --expect fixtures/out.jsonl

Edit `src/lib.rs` (one struct, one `process` function), then the fixtures.
`sluice-sdk/` is a copy of the SDK, with the WIT world in `sluice-sdk/wit/`.
Its guide is `plugins/README.md` in the Sluice repository.
"#;

fn valid_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Writes the crate `NAME` under `parent`. Returns the crate's folder.
pub fn new_plugin(parent: &Path, name: &str) -> Result<PathBuf, ScaffoldError> {
    if !valid_name(name) {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    let root = parent.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let fill = |t: &str| {
        t.replace("@NAME@", name)
            .replace("@FILE@", &name.replace('-', "_"))
    };
    let mut files: Vec<(PathBuf, String)> = vec![
        ("Cargo.toml".into(), fill(CARGO_TOML)),
        (".cargo/config.toml".into(), CARGO_CONFIG.into()),
        ("src/lib.rs".into(), fill(LIB_RS)),
        ("pipeline.yaml".into(), fill(PIPELINE)),
        ("fixtures/in.jsonl".into(), FIXTURE_IN.into()),
        ("fixtures/out.jsonl".into(), fill(FIXTURE_OUT)),
        ("README.md".into(), fill(README)),
        (".gitignore".into(), "/target\n".into()),
        ("sluice-sdk/Cargo.toml".into(), SDK_CARGO_TOML.into()),
        ("sluice-sdk/wit/transform.wit".into(), WIT.into()),
    ];
    // The SDK finds the WIT world beside it (`sluice-sdk/wit`), not two
    // folders up as in this repository.
    files.extend(SDK_FILES.iter().map(|(f, text)| {
        let text = text.replace(r#"path: "../../wit""#, r#"path: "wit""#);
        (Path::new("sluice-sdk/src").join(f), text)
    }));
    for (rel, text) in files {
        let path = root.join(rel);
        let io = |source| ScaffoldError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(&path, text).map_err(io)?;
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_crate_and_refuses_bad_names_and_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let root = new_plugin(dir.path(), "add-site").unwrap();
        let lib = std::fs::read_to_string(root.join("sluice-sdk/src/lib.rs")).unwrap();
        assert!(lib.contains(r#"path: "wit""#), "WIT path not rewritten");
        let pipeline = std::fs::read_to_string(root.join("pipeline.yaml")).unwrap();
        assert!(pipeline.contains("release/add_site.wasm"));
        assert!(matches!(
            new_plugin(dir.path(), "add-site"),
            Err(ScaffoldError::Exists(_))
        ));
        for bad in ["", "Caps", "1st", "a/b", "a b"] {
            assert!(matches!(
                new_plugin(dir.path(), bad),
                Err(ScaffoldError::BadName(_))
            ));
        }
    }

    #[test]
    fn every_sdk_source_file_is_vendored() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk/src");
        let mut on_disk: Vec<String> = std::fs::read_dir(&src)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut vendored: Vec<&str> = SDK_FILES.iter().map(|(name, _)| *name).collect();
        vendored.sort();
        assert_eq!(
            vendored, on_disk,
            "SDK_FILES must list every file of {src:?}"
        );
    }
}
