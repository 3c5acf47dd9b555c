//! The pipeline YAML model, its loading and the checks that need no broker.
//!
//! [`load`] reads a file, expands `${VAR}` references, parses the YAML and
//! checks types, unknown keys, templates and the delivery promise, returning
//! every error it finds as a [`Diagnostic`] (`FILE:LINE:COL: message`).
//! Plugin checks (compiles, exports the world, `init` accepts the config) are
//! done by [`crate::wasm`] using the positions kept here.

pub mod env;
pub mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::template::Template;
pub use yaml::Pos;

/// The only `apiVersion` this runtime reads.
pub const API_VERSION: &str = "sluice/v1";

/// One error in one file, printed as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as named on the command line.
    pub file: PathBuf,
    /// Where in the file.
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.pos.line.max(1),
            self.pos.col.max(1),
            self.message
        )
    }
}

/// A list of diagnostics, as an error type.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// A string that never shows up in logs, errors or API output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl Secret {
    /// The secret value, for handing to a client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Delivery guarantee of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Ack MQTT only once Kafka (or the dead-letter topic) has the message.
    #[default]
    AtLeastOnce,
    /// Ack MQTT on receipt; faster, may lose messages on a crash.
    AtMostOnce,
}

/// Batching between the source and the transform chain.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most messages handed to a transform call.
    pub max_messages: usize,
    /// Longest a partial batch waits for more messages, in milliseconds.
    pub max_wait_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_messages: 256,
            max_wait_ms: 5,
        }
    }
}

/// A pipeline file, as typed data.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// The file it came from.
    pub file: PathBuf,
    /// Unique name in the process.
    pub name: String,
    /// Delivery guarantee.
    pub delivery: Delivery,
    /// Most un-acked messages in flight.
    pub max_in_flight: usize,
    /// Batching.
    pub batch: BatchConfig,
    /// Where messages come from.
    pub source: SourceConfig,
    /// Transforms, in order.
    pub transforms: Vec<TransformConfig>,
    /// Where messages go.
    pub sink: SinkConfig,
    /// What happens to messages that fail.
    pub errors: ErrorsConfig,
}

/// Top-level keys, deserialised one section at a time so that errors in
/// several sections are all reported.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TopLevel {
    #[serde(rename = "apiVersion")]
    api_version: serde_yaml::Value,
    name: serde_yaml::Value,
    #[serde(default)]
    delivery: serde_yaml::Value,
    #[serde(default)]
    max_in_flight: serde_yaml::Value,
    #[serde(default)]
    batch: serde_yaml::Value,
    source: serde_yaml::Value,
    #[serde(default)]
    transforms: serde_yaml::Value,
    sink: serde_yaml::Value,
    #[serde(default)]
    errors: serde_yaml::Value,
}

/// The source section: exactly one connector.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// MQTT subscriber.
    Mqtt(crate::connectors::mqtt::MqttConfig),
}

/// The sink section: exactly one connector.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkConfig {
    /// Kafka producer.
    Kafka(crate::connectors::kafka::KafkaConfig),
}

/// `source:` as written: one key per connector kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSection {
    mqtt: Option<crate::connectors::mqtt::MqttConfig>,
}

/// `sink:` as written: one key per connector kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkSection {
    kafka: Option<crate::connectors::kafka::KafkaConfig>,
}

/// Per-instance limits of a transform (`limits:`). Every key is optional;
/// the defaults are safe for the example transforms.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory cap per instance (all its memories together), in MiB.
    pub memory_mb: u64,
    /// Time budget for one `process` call (one batch), in milliseconds.
    pub timeout_ms: u64,
    /// WebAssembly stack per call, in KiB (deeper recursion traps).
    pub stack_kb: u64,
    /// Most output messages for one input message.
    pub max_outputs: u64,
    /// Most output bytes for one input message: payloads, keys, topics,
    /// content types and header names and values of all its outputs.
    pub max_output_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 64,
            timeout_ms: 1000,
            stack_kb: 512,
            max_outputs: 1000,
            max_output_bytes: 4 << 20,
        }
    }
}

/// One `limits:` key: its name, its value, its accepted range and unit.
type LimitRange = (&'static str, fn(&Limits) -> u64, u64, u64, &'static str);

impl Limits {
    /// The accepted range of each key, with its unit, in YAML order.
    /// `stack_kb` stays well below the 2 MiB native stack of the threads
    /// that run plugins (the host's own frames need the rest).
    const RANGES: [LimitRange; 5] = [
        ("memory_mb", |l| l.memory_mb, 1, 4096, "MiB"),
        ("timeout_ms", |l| l.timeout_ms, 1, 60_000, "ms"),
        ("stack_kb", |l| l.stack_kb, 64, 1024, "KiB"),
        ("max_outputs", |l| l.max_outputs, 1, 100_000, "messages"),
        (
            "max_output_bytes",
            |l| l.max_output_bytes,
            1,
            1 << 30,
            "bytes",
        ),
    ];

    /// Every key outside its range: `(key, message)`.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        Self::RANGES
            .iter()
            .filter(|(_, value, lo, hi, _)| !(*lo..=*hi).contains(&value(self)))
            .map(|(key, value, lo, hi, unit)| {
                (
                    *key,
                    format!(
                        "limits.{key} must be between {lo} and {hi} ({unit}), got {}",
                        value(self)
                    ),
                )
            })
            .collect()
    }
}

/// Host capabilities a plugin may be granted (`capabilities:`). None by
/// default: a plugin whose component imports an interface that needs a
/// capability it was not granted is rejected when it is loaded.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Real wall and monotonic clocks: `wasi:clocks/wall-clock` and
    /// `wasi:clocks/monotonic-clock`.
    Clock,
    /// Real randomness: `wasi:random/random` and `wasi:random/insecure`
    /// (and a random `wasi:random/insecure-seed`, else a fixed one).
    Random,
    /// Guest stdout and stderr go to the host's stdout and stderr
    /// (otherwise discarded).
    Stdio,
}

impl Capability {
    /// The name under `capabilities:` in the YAML.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Clock => "clock",
            Capability::Random => "random",
            Capability::Stdio => "stdio",
        }
    }
}

/// Whether `name` can be an environment variable name in an `env:` grant.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransform {
    name: String,
    plugin: PathBuf,
    #[serde(default)]
    config: Option<serde_yaml::Value>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    capabilities: Vec<Capability>,
    #[serde(default)]
    env: Vec<String>,
}

/// One transform in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformConfig {
    /// Name, unique in the pipeline; label value in metrics.
    pub name: String,
    /// The plugin file, resolved against the pipeline file's folder.
    pub plugin: PathBuf,
    /// The `config:` map as JSON text, handed to `init`.
    pub config_json: String,
    /// Limits.
    pub limits: Limits,
    /// Granted capabilities.
    pub capabilities: Vec<Capability>,
    /// Environment variables the plugin may read, by name; their values
    /// are read from sluice's environment when an instance is created.
    pub env: Vec<String>,
    /// Position of the `plugin:` value, for plugin errors.
    pub plugin_pos: Pos,
    /// Position of the `config:` key (or the item), for `init` errors.
    pub config_pos: Pos,
}

/// What happens to a message that fails (transform error or trap,
/// permanent sink rejection, unrenderable template).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// Write it to `dead_letter_topic` with error headers, then ack it.
    DeadLetter,
    /// Log it, count it and ack it: the message is gone.
    Drop,
    /// Stop the pipeline without acking it; the pipeline restarts with
    /// backoff and meets the message again (redelivered by the broker).
    Fail,
}

/// Failure handling.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    /// Kafka topic that failed messages go to, with error headers.
    pub dead_letter_topic: Option<String>,
    /// Policy; default `dead-letter` when a dead-letter topic is set, else
    /// `fail` (nothing is ever discarded unless the YAML says `drop`).
    #[serde(default)]
    pub policy: Option<ErrorPolicy>,
}

impl ErrorsConfig {
    /// The policy in force.
    pub fn policy(&self) -> ErrorPolicy {
        match (self.policy, &self.dead_letter_topic) {
            (Some(p), _) => p,
            (None, Some(_)) => ErrorPolicy::DeadLetter,
            (None, None) => ErrorPolicy::Fail,
        }
    }
}

impl Pipeline {
    /// Names of all the pipeline's transforms, in order.
    pub fn transform_names(&self) -> Vec<String> {
        self.transforms.iter().map(|t| t.name.clone()).collect()
    }
}

/// Reads and checks one pipeline file. `display` is how the file is named in
/// diagnostics (as given on the command line).
pub fn load(path: &Path) -> Result<Pipeline, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: path.to_path_buf(),
            pos: Pos { line: 1, col: 1 },
            message: format!("cannot read file: {e}"),
        }])
    })?;
    load_str(path, &text, |k| std::env::var(k).ok())
}

/// Checks one transform's plugin (compiles, links, `init` accepts the
/// config); returns the position and text of each problem.
pub type PluginCheck<'a> = &'a mut dyn FnMut(&TransformConfig) -> Vec<(Pos, String)>;

/// Like [`load`] with the text and environment given.
pub fn load_str(
    path: &Path,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Pipeline, Diagnostics> {
    load_checked(path, text, env, &mut |_| Vec::new())
}

/// Like [`load_str`], also running `check` on every transform whose plugin
/// file exists, so plugin problems are reported together with the rest.
pub fn load_checked(
    path: &Path,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
    check: PluginCheck<'_>,
) -> Result<Pipeline, Diagnostics> {
    let diag = |pos: Pos, message: String| Diagnostic {
        file: path.to_path_buf(),
        pos,
        message,
    };
    let expanded = env::expand(text, env)
        .map_err(|errs| Diagnostics(errs.into_iter().map(|e| diag(e.pos, e.message)).collect()))?;
    let doc =
        yaml::Document::parse(&expanded).map_err(|e| Diagnostics(vec![diag(e.pos, e.message)]))?;
    let mut errors = Vec::new();
    let mut err = |e: yaml::YamlError| errors.push(diag(e.pos, e.message));

    if !doc.value.is_mapping() {
        err(yaml::YamlError {
            pos: doc.value_pos(""),
            message: "expected a mapping with apiVersion, name, source and sink".into(),
        });
        return Err(Diagnostics(errors));
    }
    if let Err(e) = doc.typed::<TopLevel>("") {
        // Missing keys are reported below, one by one.
        if !e.message.starts_with("missing field") {
            err(e);
        }
    }
    for key in ["apiVersion", "name", "source", "sink"] {
        if doc.node(key).is_none() {
            err(yaml::YamlError {
                pos: Pos { line: 1, col: 1 },
                message: format!("missing required key `{key}`"),
            });
        }
    }
    let present = |k: &str| doc.node(k).is_some();
    let api: Option<String> = if present("apiVersion") {
        doc.typed("apiVersion").map_err(&mut err).ok()
    } else {
        None
    };
    if let Some(v) = &api {
        if v != API_VERSION {
            err(yaml::YamlError {
                pos: doc.value_pos("apiVersion"),
                message: format!("unsupported apiVersion `{v}`: expected `{API_VERSION}`"),
            });
        }
    }
    let name: Option<String> = if present("name") {
        doc.typed("name").map_err(&mut err).ok()
    } else {
        None
    };
    if let Some(n) = &name {
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            err(yaml::YamlError {
                pos: doc.value_pos("name"),
                message: format!(
                    "invalid pipeline name `{n}`: use letters, digits, `-`, `_` and `.`"
                ),
            });
        }
    }
    let delivery: Delivery = opt(&doc, "delivery")
        .map_err(&mut err)
        .ok()
        .unwrap_or_default();
    let max_in_flight: usize = opt(&doc, "max_in_flight")
        .map_err(&mut err)
        .ok()
        .flatten()
        .unwrap_or(1000);
    if max_in_flight == 0 || max_in_flight > 65_535 {
        err(yaml::YamlError {
            pos: doc.value_pos("max_in_flight"),
            message: format!("max_in_flight must be between 1 and 65535, got {max_in_flight}"),
        });
    }
    let batch: BatchConfig = opt(&doc, "batch")
        .map_err(&mut err)
        .ok()
        .unwrap_or_default();
    if batch.max_messages == 0 {
        err(yaml::YamlError {
            pos: doc.value_pos("batch.max_messages"),
            message: "batch.max_messages must be at least 1".into(),
        });
    }
    let source_section = if present("source") {
        let (v, es) = doc.typed_all::<SourceSection>("source");
        es.into_iter().for_each(&mut err);
        v
    } else {
        None
    };
    let mut source = match source_section {
        Some(SourceSection { mqtt: Some(m) }) => Some(SourceConfig::Mqtt(m)),
        Some(SourceSection { mqtt: None }) => {
            err(yaml::YamlError {
                pos: doc.value_pos("source"),
                message: "source needs a connector: `mqtt`".into(),
            });
            None
        }
        None => None,
    };
    let sink_section = if present("sink") {
        let (v, es) = doc.typed_all::<SinkSection>("sink");
        es.into_iter().for_each(&mut err);
        v
    } else {
        None
    };
    let sink = match sink_section {
        Some(SinkSection { kafka: Some(k) }) => Some(SinkConfig::Kafka(k)),
        Some(SinkSection { kafka: None }) => {
            err(yaml::YamlError {
                pos: doc.value_pos("sink"),
                message: "sink needs a connector: `kafka`".into(),
            });
            None
        }
        None => None,
    };
    let errors_cfg: ErrorsConfig = opt(&doc, "errors")
        .map_err(&mut err)
        .ok()
        .unwrap_or_default();

    let base = path.parent().unwrap_or(Path::new("."));
    let mut transforms = Vec::new();
    let n_transforms = match doc.node("transforms") {
        None | Some(serde_yaml::Value::Null) => 0,
        Some(serde_yaml::Value::Sequence(s)) => s.len(),
        Some(_) => {
            err(yaml::YamlError {
                pos: doc.value_pos("transforms"),
                message: "transforms must be a list".into(),
            });
            0
        }
    };
    for i in 0..n_transforms {
        let p = format!("transforms[{i}]");
        let (raw, es) = doc.typed_all::<RawTransform>(&p);
        es.into_iter().for_each(&mut err);
        let Some(raw) = raw else {
            continue;
        };
        if transforms
            .iter()
            .any(|t: &TransformConfig| t.name == raw.name)
        {
            err(yaml::YamlError {
                pos: doc.value_pos(&format!("{p}.name")),
                message: format!("duplicate transform name `{}`", raw.name),
            });
        }
        let config_json = match &raw.config {
            None | Some(serde_yaml::Value::Null) => "{}".to_string(),
            Some(v) if v.is_mapping() => match serde_json::to_string(v) {
                Ok(j) => j,
                Err(e) => {
                    err(yaml::YamlError {
                        pos: doc.value_pos(&format!("{p}.config")),
                        message: format!("config cannot be passed to the plugin as JSON: {e}"),
                    });
                    continue;
                }
            },
            Some(_) => {
                err(yaml::YamlError {
                    pos: doc.value_pos(&format!("{p}.config")),
                    message: "config must be a mapping".into(),
                });
                continue;
            }
        };
        let limit_errors = raw.limits.check();
        let limits_ok = limit_errors.is_empty();
        for (key, message) in limit_errors {
            err(yaml::YamlError {
                pos: doc.value_pos(&format!("{p}.limits.{key}")),
                message,
            });
        }
        for (j, name) in raw.env.iter().enumerate() {
            let message = if !is_env_name(name) {
                format!("invalid environment variable name `{name}` in env: use letters, digits and `_`, not starting with a digit")
            } else if raw.env[..j].contains(name) {
                format!("environment variable `{name}` is listed twice in env")
            } else {
                continue;
            };
            err(yaml::YamlError {
                pos: doc.value_pos(&format!("{p}.env[{j}]")),
                message,
            });
        }
        let plugin_pos = doc.value_pos(&format!("{p}.plugin"));
        let plugin = base.join(&raw.plugin);
        if !plugin.is_file() {
            err(yaml::YamlError {
                pos: plugin_pos,
                message: format!("plugin file `{}` not found", plugin.display()),
            });
        }
        let t = TransformConfig {
            name: raw.name,
            plugin,
            config_json,
            limits: raw.limits,
            capabilities: raw.capabilities,
            env: raw.env,
            plugin_pos,
            config_pos: doc.key_pos(&format!("{p}.config")),
        };
        // The plugin checks instantiate with the limits: only valid ones.
        if t.plugin.is_file() && limits_ok {
            for (pos, message) in check(&t) {
                err(yaml::YamlError { pos, message });
            }
        }
        transforms.push(t);
    }

    if let Some(SourceConfig::Mqtt(m)) = &mut source {
        // Like plugin paths, TLS files are relative to the pipeline file.
        if let Some(tls) = &mut m.tls {
            for f in [
                &mut tls.ca_file,
                &mut tls.client_cert_file,
                &mut tls.client_key_file,
            ]
            .into_iter()
            .flatten()
            {
                *f = base.join(&*f);
            }
        }
    }
    if let Some(SourceConfig::Mqtt(m)) = &source {
        for e in m.check(delivery) {
            err(yaml::YamlError {
                pos: doc.value_pos(&yaml::join("source.mqtt", &e.path)),
                message: e.message,
            });
        }
    }
    if let Some(SinkConfig::Kafka(k)) = &sink {
        for e in k.check() {
            err(yaml::YamlError {
                pos: doc.value_pos(&yaml::join("sink.kafka", &e.path)),
                message: e.message,
            });
        }
    }
    if errors_cfg.policy == Some(ErrorPolicy::DeadLetter) && errors_cfg.dead_letter_topic.is_none()
    {
        err(yaml::YamlError {
            pos: doc.value_pos("errors.policy"),
            message: "errors.policy dead-letter needs errors.dead_letter_topic".into(),
        });
    }
    if let Some(dlq) = &errors_cfg.dead_letter_topic {
        if let Err(e) = crate::connectors::kafka::check_topic_name(dlq) {
            err(yaml::YamlError {
                pos: doc.value_pos("errors.dead_letter_topic"),
                message: e,
            });
        }
    }

    match (name, source, sink) {
        (Some(name), Some(source), Some(sink)) if errors.is_empty() => Ok(Pipeline {
            file: path.to_path_buf(),
            name,
            delivery,
            max_in_flight,
            batch,
            source,
            transforms,
            sink,
            errors: errors_cfg,
        }),
        _ => {
            errors.sort_by_key(|d| (d.pos.line, d.pos.col));
            errors.dedup();
            Err(Diagnostics(errors))
        }
    }
}

/// An optional section: absent or null gives the type's default.
fn opt<T: serde::de::DeserializeOwned + Default>(
    doc: &yaml::Document,
    path: &str,
) -> Result<T, yaml::YamlError> {
    match doc.node(path) {
        None | Some(serde_yaml::Value::Null) => Ok(T::default()),
        Some(_) => doc.typed(path),
    }
}

/// A problem found by a connector's own checks, at a path relative to its
/// section.
#[derive(Debug, Clone)]
pub struct FieldError {
    /// Path below the connector's section, e.g. `topics[0].qos`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Parses a template, turning failure into a field error at `path`.
pub fn template_field(path: &str, value: &str, errors: &mut Vec<FieldError>) -> Option<Template> {
    match Template::parse(value) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(FieldError::new(path, e.to_string()));
            None
        }
    }
}

/// Checks that pipeline names are unique across the files of one process.
pub fn check_unique_names(pipelines: &[Pipeline]) -> Result<(), Diagnostics> {
    let mut errors = Vec::new();
    for (i, p) in pipelines.iter().enumerate() {
        if let Some(first) = pipelines[..i].iter().find(|q| q.name == p.name) {
            errors.push(Diagnostic {
                file: p.file.clone(),
                pos: Pos { line: 1, col: 1 },
                message: format!(
                    "pipeline name `{}` is already used by {}",
                    p.name,
                    first.file.display()
                ),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: sluice/v1
name: sensors
source:
  mqtt:
    url: mqtt://${HOST:-127.0.0.1}:1883
    client_id: sluice-sensors
    topics:
      - filter: sensors/+/telemetry
        qos: 1
sink:
  kafka:
    brokers: 127.0.0.1:9092
    topic: "{{topic.2}}"
    key: "{{topic.1}}"
errors:
  dead_letter_topic: sluice.dlq
"#;

    fn load_text(text: &str) -> Result<Pipeline, Diagnostics> {
        load_str(Path::new("p.yaml"), text, |_| None)
    }

    #[test]
    fn a_minimal_pipeline_loads_with_defaults() {
        let p = load_text(GOOD).unwrap();
        assert_eq!(p.name, "sensors");
        assert_eq!(p.delivery, Delivery::AtLeastOnce);
        assert_eq!(p.max_in_flight, 1000);
        assert!(p.transforms.is_empty());
        let SourceConfig::Mqtt(m) = &p.source;
        assert_eq!(m.url, "mqtt://127.0.0.1:1883");
    }

    #[test]
    fn errors_in_several_sections_are_all_reported() {
        let bad = GOOD
            .replace("apiVersion: sluice/v1", "apiVersion: sluice/v1\nbogus: 1")
            .replace("qos: 1", "qos: 7")
            .replace("{{topic.1}}", "{{device}}");
        let errs = load_text(&bad).unwrap_err().0;
        let text: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
        assert_eq!(errs.len(), 3, "{text:#?}");
        assert!(
            text[0].starts_with("p.yaml:3:1: unknown field `bogus`"),
            "{text:#?}"
        );
        assert!(text[1].contains(":11:14: "), "{text:#?}");
        assert!(
            text[2].contains("unknown template variable `device`"),
            "{text:#?}"
        );
    }

    #[test]
    fn an_unset_variable_names_the_variable() {
        let errs = load_str(Path::new("p.yaml"), "name: ${NOPE}\n", |_| None).unwrap_err();
        assert_eq!(
            errs.to_string(),
            "p.yaml:1:7: environment variable `NOPE` is not set (use `${NOPE:-default}` to give a default)"
        );
    }

    /// GOOD with one transform whose plugin is this very file (it exists;
    /// no plugin checks run here) and `extra` lines under it.
    fn with_transform(extra: &str) -> String {
        GOOD.replace(
            "sink:\n",
            &format!("transforms:\n  - name: t\n    plugin: p.yaml\n{extra}sink:\n"),
        )
    }

    fn load_here(text: &str) -> Result<Pipeline, Diagnostics> {
        // `plugin: p.yaml` resolves next to the pipeline file: use a real
        // file for the existence check.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, text).unwrap();
        load_str(&file, text, |_| None).map_err(|Diagnostics(d)| {
            Diagnostics(
                d.into_iter()
                    .map(|mut d| {
                        d.file = PathBuf::from("p.yaml");
                        d
                    })
                    .collect(),
            )
        })
    }

    #[test]
    fn transform_limits_default_to_safe_values_and_env_to_nothing() {
        let p = load_here(&with_transform("")).unwrap();
        let t = &p.transforms[0];
        assert_eq!(
            t.limits,
            Limits {
                memory_mb: 64,
                timeout_ms: 1000,
                stack_kb: 512,
                max_outputs: 1000,
                max_output_bytes: 4 << 20,
            }
        );
        assert!(t.capabilities.is_empty());
        assert!(t.env.is_empty());
    }

    #[test]
    fn every_limit_out_of_range_is_reported_at_its_value() {
        let text = with_transform(
            "    limits:\n      memory_mb: 0\n      timeout_ms: 600000\n      stack_kb: 8\n      max_outputs: 0\n      max_output_bytes: 2147483648\n",
        );
        let errs: Vec<String> = load_here(&text)
            .unwrap_err()
            .0
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            errs,
            [
                "p.yaml:15:18: limits.memory_mb must be between 1 and 4096 (MiB), got 0",
                "p.yaml:16:19: limits.timeout_ms must be between 1 and 60000 (ms), got 600000",
                "p.yaml:17:17: limits.stack_kb must be between 64 and 1024 (KiB), got 8",
                "p.yaml:18:20: limits.max_outputs must be between 1 and 100000 (messages), got 0",
                "p.yaml:19:25: limits.max_output_bytes must be between 1 and 1073741824 (bytes), got 2147483648",
            ]
        );
    }

    #[test]
    fn env_grants_take_valid_distinct_names() {
        let p = load_here(&with_transform("    env: [TZ, SITE_ID]\n")).unwrap();
        assert_eq!(p.transforms[0].env, ["TZ", "SITE_ID"]);
        let errs = load_here(&with_transform("    env: [TZ, 1X, TZ]\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            errs,
            "p.yaml:14:15: invalid environment variable name `1X` in env: use letters, digits and `_`, not starting with a digit\n\
             p.yaml:14:19: environment variable `TZ` is listed twice in env"
        );
    }

    #[test]
    fn an_unknown_capability_is_an_error() {
        let errs = load_here(&with_transform("    capabilities: [clock, network]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            errs.starts_with("p.yaml:14:27: unknown variant `network`"),
            "{errs}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let p = load_text(&GOOD.replace(
            "client_id: sluice-sensors",
            "client_id: sluice-sensors\n    username: u\n    password: hunter2",
        ))
        .unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
