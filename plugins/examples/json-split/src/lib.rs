//! # json-split: one message per element of a JSON array
//!
//! Gateways often batch readings: `{"device_id": "gw-1", "readings": [{...}, {...}]}`.
//! This transform turns such a message into one message per reading.
//!
//! ```yaml
//! transforms:
//!   - name: one-per-reading
//!     plugin: ../plugins/target/wasm32-wasip2/release/json_split.wasm
//!     config:                        # every key is optional
//!       field: readings              # split the array in this field of an object payload;
//!                                    # without it the payload itself must be an array
//!       inherit: [device_id, ts]     # copy these fields of the parent object into each
//!                                    # element that is an object (needs `field`)
//!       key_field: sensor            # Kafka key of each output = this element field
//! ```
//!
//! Each output keeps the input's topic, headers, key, timestamp and other
//! metadata; only the payload (the element, as compact JSON) differs.
//! Inherited fields come first in each element, and an element's own field
//! wins over an inherited one of the same name. An empty array drops the
//! message. Sent to the dead-letter topic: a payload that is not JSON, not
//! an array (or without an array in `field`), or an element without the
//! `key_field`.

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_sdk::{json_type_name, Config, Message, Transform};

/// The transform's `config:` map.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Top-level field of an object payload holding the array.
    field: Option<String>,
    /// Top-level fields of the parent object copied into each element.
    #[serde(default)]
    inherit: Vec<String>,
    /// Element field whose value becomes each output's Kafka key.
    key_field: Option<String>,
}

/// Splits a JSON array into one message per element.
pub struct JsonSplit {
    settings: Settings,
}

impl Transform for JsonSplit {
    fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if !settings.inherit.is_empty() && settings.field.is_none() {
            return Err("invalid config: `inherit` needs `field`: \
                        without it the payload is a bare array with no fields to inherit"
                .into());
        }
        Ok(Self { settings })
    }

    fn process(&mut self, msg: Message) -> Result<Vec<Message>, String> {
        let (elements, parent) = self.split(msg.json_value()?)?;
        let mut out = Vec::with_capacity(elements.len());
        for (index, element) in elements.into_iter().enumerate() {
            let element = self.inherit(element, &parent);
            let mut part = msg.child(element.to_string());
            if let Some(field) = &self.settings.key_field {
                part.key = Some(key_bytes(field, index, &element)?);
            }
            out.push(part);
        }
        Ok(out)
    }
}

sluice_sdk::export_transform!(JsonSplit);

impl JsonSplit {
    /// The array to split, and the rest of the parent object.
    fn split(&self, payload: Value) -> Result<(Vec<Value>, Map<String, Value>), String> {
        match (&self.settings.field, payload) {
            (None, Value::Array(elements)) => Ok((elements, Map::new())),
            (None, other) => Err(format!(
                "payload is JSON {}, expected an array",
                json_type_name(&other)
            )),
            (Some(field), Value::Object(mut parent)) => match parent.shift_remove(field) {
                Some(Value::Array(elements)) => Ok((elements, parent)),
                Some(other) => Err(format!(
                    "field `{field}` is {}, expected an array",
                    json_type_name(&other)
                )),
                None => Err(format!("payload has no field `{field}` to split")),
            },
            (Some(field), other) => Err(format!(
                "payload is JSON {}, expected an object with an array in `{field}`",
                json_type_name(&other)
            )),
        }
    }

    /// The element with the inherited parent fields in front of its own.
    fn inherit(&self, element: Value, parent: &Map<String, Value>) -> Value {
        let Value::Object(own) = element else {
            return element;
        };
        let mut merged: Map<String, Value> = self
            .settings
            .inherit
            .iter()
            .filter_map(|name| Some((name.clone(), parent.get(name)?.clone())))
            .collect();
        merged.extend(own);
        Value::Object(merged)
    }
}

/// A string key is its text; numbers and booleans their JSON text.
fn key_bytes(field: &str, index: usize, element: &Value) -> Result<Vec<u8>, String> {
    match element.get(field) {
        Some(Value::String(text)) => Ok(text.clone().into_bytes()),
        Some(Value::Null) | None => Err(format!(
            "element {index} ({}) has no key_field `{field}`",
            json_type_name(element)
        )),
        Some(other) => Ok(other.to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn split(config: Value) -> JsonSplit {
        JsonSplit::new(Config::from(config)).unwrap()
    }

    fn payloads(out: &[Message]) -> Vec<Value> {
        out.iter().map(|m| m.json_value().unwrap()).collect()
    }

    fn input(payload: Value) -> Message {
        Message::new("gateways/gw-1/batch", payload.to_string())
            .with_header("site", "lab")
            .with_key("gw-1")
            .with_timestamp_ms(1_700_000_000_000)
    }

    #[test]
    fn a_bare_array_becomes_one_message_per_element() {
        let mut s = split(json!({}));
        let out = s.process(input(json!([{"t": 1}, 2, "three"]))).unwrap();
        assert_eq!(payloads(&out), [json!({"t": 1}), json!(2), json!("three")]);
    }

    #[test]
    fn outputs_keep_the_input_metadata() {
        let mut s = split(json!({}));
        let msg = input(json!([1, 2])).with_kafka_topic("readings");
        for part in s.process(msg.clone()).unwrap() {
            assert_eq!(part.with_payload(msg.payload.clone()), msg);
        }
    }

    #[test]
    fn field_splits_the_array_inside_an_object() {
        let mut s = split(json!({"field": "readings"}));
        let out = s
            .process(input(
                json!({"device_id": "gw-1", "readings": [{"t": 1}, {"t": 2}]}),
            ))
            .unwrap();
        assert_eq!(payloads(&out), [json!({"t": 1}), json!({"t": 2})]);
    }

    #[test]
    fn inherit_copies_parent_fields_into_object_elements() {
        let mut s = split(json!({"field": "readings", "inherit": ["device_id", "ts", "absent"]}));
        let out = s
            .process(input(json!({
                "device_id": "gw-1",
                "ts": 99,
                "fw": "1.2",
                "readings": [{"sensor": "a", "t": 1}, {"sensor": "b", "ts": 100}, 7]
            })))
            .unwrap();
        let texts: Vec<&str> = out.iter().map(|m| m.payload_str().unwrap()).collect();
        assert_eq!(
            texts,
            [
                r#"{"device_id":"gw-1","ts":99,"sensor":"a","t":1}"#,
                r#"{"device_id":"gw-1","ts":100,"sensor":"b"}"#,
                "7",
            ]
        );
    }

    #[test]
    fn key_field_keys_each_output_from_its_element() {
        let mut s = split(json!({"field": "readings", "inherit": ["gw"], "key_field": "sensor"}));
        let out = s
            .process(input(
                json!({"gw": "g", "readings": [{"sensor": "a"}, {"sensor": 7}]}),
            ))
            .unwrap();
        let keys: Vec<&[u8]> = out.iter().map(|m| m.key.as_deref().unwrap()).collect();
        assert_eq!(keys, [&b"a"[..], &b"7"[..]]);

        // An inherited field can be the key.
        let mut s = split(json!({"field": "readings", "inherit": ["gw"], "key_field": "gw"}));
        let out = s
            .process(input(json!({"gw": "g", "readings": [{}]})))
            .unwrap();
        assert_eq!(out[0].key.as_deref(), Some(&b"g"[..]));
    }

    #[test]
    fn an_element_without_the_key_field_dead_letters_the_input() {
        let mut s = split(json!({"key_field": "sensor"}));
        assert_eq!(
            s.process(input(json!([{"sensor": "a"}, {"t": 1}])))
                .unwrap_err(),
            "element 1 (an object) has no key_field `sensor`"
        );
        assert_eq!(
            s.process(input(json!([3]))).unwrap_err(),
            "element 0 (a number) has no key_field `sensor`"
        );
    }

    #[test]
    fn an_empty_array_drops_the_message() {
        let mut s = split(json!({}));
        assert!(s.process(input(json!([]))).unwrap().is_empty());
        let mut s = split(json!({"field": "readings"}));
        assert!(s
            .process(input(json!({"readings": []})))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn payloads_without_an_array_are_dead_lettered() {
        let mut s = split(json!({}));
        assert_eq!(
            s.process(input(json!({"a": 1}))).unwrap_err(),
            "payload is JSON an object, expected an array"
        );
        let err = s.process(Message::new("t", "[1, 2")).unwrap_err();
        assert!(err.starts_with("payload is not JSON: "), "{err}");

        let mut s = split(json!({"field": "readings"}));
        assert_eq!(
            s.process(input(json!({"readings": {"t": 1}}))).unwrap_err(),
            "field `readings` is an object, expected an array"
        );
        assert_eq!(
            s.process(input(json!({"reading": []}))).unwrap_err(),
            "payload has no field `readings` to split"
        );
        assert_eq!(
            s.process(input(json!([1]))).unwrap_err(),
            "payload is JSON an array, expected an object with an array in `readings`"
        );
    }

    #[test]
    fn config_mistakes_are_named() {
        let err = |config| match JsonSplit::new(Config::from(config)) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e,
        };
        assert!(
            err(json!({"inherit": ["id"]})).starts_with("invalid config: `inherit` needs `field`")
        );
        let e = err(json!({"fields": "readings"}));
        assert!(
            e.starts_with("invalid config: unknown field `fields`"),
            "{e}"
        );
        let e = err(json!({"inherit": "device_id", "field": "r"}));
        assert!(
            e.starts_with(
                "invalid config: invalid type: string \"device_id\", expected a sequence"
            ),
            "{e}"
        );
    }
}
