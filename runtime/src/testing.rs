//! `sluice test`: run a pipeline's transform chain on fixture messages, no
//! brokers, and compare the outcome with expected output.
//!
//! Input lines (JSONL): `{"topic": "...", "payload": <string or JSON>,
//! "key": "...", "headers": {"name": "value"}, "qos": 1, "retain": false,
//! "content_type": "..."}`; only `topic` and `payload` are required. A JSON
//! string payload is taken as its text; any other JSON value as its
//! serialisation.
//!
//! Output lines: `{"input": N, "topic": T, "key": K, "payload": P,
//! "headers": [[name, value], ...]}` per record that would reach Kafka (topic
//! and key rendered as the sink would), and `{"input": N, "dead_letter":
//! {"transform": NAME, "error": TEXT}}` per failed input.

use std::path::Path;

use serde_json::{json, Value};

use crate::config::{Pipeline, SinkConfig};
use crate::connectors::kafka::Routing;
use crate::message::{now_ms, Message, Qos};
use crate::wasm::chain::{Chain, Outcome};
use crate::wasm::WasmHost;

/// Errors of `sluice test`.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// A fixture file cannot be read.
    #[error("cannot read `{0}`: {1}")]
    Read(String, std::io::Error),
    /// A fixture line is not a valid message.
    #[error("{file}:{line}: {message}")]
    Fixture {
        /// File.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The chain failed to start.
    #[error("{0}")]
    Chain(String),
}

/// Parses a JSONL fixture file into messages.
pub fn read_inputs(path: &Path) -> Result<Vec<Message>, TestError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TestError::Read(path.display().to_string(), e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| TestError::Fixture {
            file: path.display().to_string(),
            line: i + 1,
            message,
        };
        let v: Value = serde_json::from_str(line).map_err(|e| err(format!("not JSON: {e}")))?;
        let topic = v
            .get("topic")
            .and_then(Value::as_str)
            .ok_or_else(|| err("missing string field `topic`".into()))?;
        let payload = match v.get("payload") {
            Some(Value::String(s)) => s.clone().into_bytes(),
            Some(other) => other.to_string().into_bytes(),
            None => return Err(err("missing field `payload`".into())),
        };
        let headers = match v.get("headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect(),
            Some(_) => return Err(err("`headers` must be an object of strings".into())),
        };
        let qos = v.get("qos").and_then(Value::as_u64).unwrap_or(1);
        out.push(Message {
            topic: topic.to_string(),
            kafka_topic: None,
            key: v
                .get("key")
                .and_then(Value::as_str)
                .map(|k| k.as_bytes().to_vec().into()),
            payload: payload.into(),
            headers,
            timestamp_ms: v
                .get("timestamp_ms")
                .and_then(Value::as_u64)
                .unwrap_or_else(now_ms),
            qos: Qos::from_level(qos as u8)
                .ok_or_else(|| err(format!("qos must be 0, 1 or 2, got {qos}")))?,
            retain: v.get("retain").and_then(Value::as_bool).unwrap_or(false),
            content_type: v
                .get("content_type")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
    }
    Ok(out)
}

fn text_or_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string())),
        Err(_) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
    }
}

/// Runs the chain of `p` over `inputs`, in batches of
/// `batch.max_messages`, and returns one JSON value per output record or
/// dead letter, in input order.
pub fn run_chain(
    p: &Pipeline,
    host: &WasmHost,
    inputs: &[Message],
) -> Result<Vec<Value>, TestError> {
    let mut chain = Chain::new(host, &p.name, &p.transforms, Vec::new())
        .map_err(|(i, e)| TestError::Chain(format!("transform `{}`: {e}", p.transforms[i].name)))?;
    let SinkConfig::Kafka(k) = &p.sink;
    let routing = Routing::new(k).map_err(|e| TestError::Chain(e.to_string()))?;
    let mut out = Vec::new();
    // Batches of `batch.max_messages`, as the runtime hands them over: a
    // plugin sees the same batch sizes (and needs the same memory) as in
    // production, however long the input file is.
    let batches = inputs.chunks(p.batch.max_messages.max(1));
    let outcomes = batches.flat_map(|batch| chain.run(batch).into_iter().zip(batch));
    for (i, (outcome, input)) in outcomes.enumerate() {
        match outcome {
            Outcome::Failed(f) => out.push(json!({
                "input": i,
                "dead_letter": { "transform": f.transform, "error": f.reason },
            })),
            delivered => {
                for m in delivered.outputs(input).unwrap_or_default() {
                    let topic = match routing.topic(m, &p.name) {
                        Ok(t) => Value::String(t),
                        Err(e) => json!({ "error": e.to_string() }),
                    };
                    let key = match routing.key(m, &p.name) {
                        Ok(Some(k)) => Value::String(String::from_utf8_lossy(&k).into_owned()),
                        Ok(None) | Err(_) => Value::Null,
                    };
                    out.push(json!({
                        "input": i,
                        "topic": topic,
                        "key": key,
                        "payload": text_or_json(&m.payload),
                        "headers": m.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
                    }));
                }
            }
        }
    }
    Ok(out)
}

/// Compares actual against expected records; returns a readable diff, or
/// `None` when they match.
pub fn diff(actual: &[Value], expected: &[Value]) -> Option<String> {
    if actual == expected {
        return None;
    }
    let mut s = String::new();
    for i in 0..actual.len().max(expected.len()) {
        match (actual.get(i), expected.get(i)) {
            (Some(a), Some(e)) if a == e => {}
            (Some(a), Some(e)) => s.push_str(&format!(
                "record {i}:\n  - expected {e}\n  + actual   {a}\n"
            )),
            (Some(a), None) => s.push_str(&format!("record {i}: unexpected\n  + actual   {a}\n")),
            (None, Some(e)) => s.push_str(&format!("record {i}: missing\n  - expected {e}\n")),
            (None, None) => {}
        }
    }
    Some(s)
}

/// Reads an expectation file (JSONL).
pub fn read_expected(path: &Path) -> Result<Vec<Value>, TestError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TestError::Read(path.display().to_string(), e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TestError::Fixture {
                file: path.display().to_string(),
                line: i + 1,
                message: format!("not JSON: {e}"),
            })
        })
        .collect()
}
