//! # json-map: reshape JSON object payloads field by field
//!
//! ```yaml
//! transforms:
//!   - name: normalise
//!     plugin: ../plugins/target/wasm32-wasip2/release/json_map.wasm
//!     config:                       # every key is optional
//!       from_topic: { device_id: 1 }          # 1. set fields from MQTT topic levels (0-based)
//!       add: { source: mqtt, schema: 2 }      # 2. set constant fields (any JSON value)
//!       rename: { temp: temperature }         # 3. rename fields (all at once: {a: b, b: a} swaps)
//!       convert: { temperature: f_to_c }      # 4. convert units of numeric fields
//!       round: 2                              #    decimals kept by `convert` (default: all)
//!       drop: [debug, rssi]                   # 5. remove fields
//!       key_field: device_id                  # 6. Kafka key = this field's value
//!       kafka_topic: telemetry.normalised     # send to this Kafka topic instead of the sink's
//! ```
//!
//! The steps run in the numbered order above, so a field from `from_topic`
//! can be renamed, `convert` uses the new names, and `key_field` sees the
//! fields that survived `drop`. Fields are top-level fields of the payload;
//! the payload's field order is kept and new fields go at the end. The
//! output is compact JSON; values no step touches keep their exact text
//! (see `sluice_sdk::JsonFields`).
//!
//! Units for `convert`: `f_to_c`, `c_to_f`, `kelvin_to_c`, `c_to_kelvin`
//! (temperature); `ms_to_s`, `s_to_ms` (durations and timestamps);
//! `pa_to_hpa`, `hpa_to_pa` (pressure); `mv_to_v` (battery voltage).
//!
//! Sent to the dead-letter topic: a payload that is not a JSON object, a
//! topic without the level `from_topic` asks for, a `convert` field that is
//! not a number, a `key_field` that is missing or null. Fields named by
//! `rename`, `convert` or `drop` that a message lacks are skipped.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_sdk::{json_type_name, Config, FieldValue, JsonFields, Message, Transform};

/// The transform's `config:` map.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Field name -> MQTT topic level (0-based) whose text becomes its value.
    #[serde(default)]
    from_topic: BTreeMap<String, usize>,
    /// Field name -> constant value.
    #[serde(default)]
    add: Map<String, Value>,
    /// Old field name -> new field name.
    #[serde(default)]
    rename: BTreeMap<String, String>,
    /// Field name -> unit conversion.
    #[serde(default)]
    convert: BTreeMap<String, Unit>,
    /// Decimals to round converted values to.
    round: Option<u32>,
    /// Fields to remove.
    #[serde(default)]
    drop: Vec<String>,
    /// Field whose value becomes the Kafka key.
    key_field: Option<String>,
    /// Kafka topic for every message.
    kafka_topic: Option<String>,
}

/// A unit conversion, named `from_to_to`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Unit {
    FToC,
    CToF,
    KelvinToC,
    CToKelvin,
    MsToS,
    SToMs,
    PaToHpa,
    HpaToPa,
    MvToV,
}

impl Unit {
    fn apply(self, x: f64) -> f64 {
        match self {
            Unit::FToC => (x - 32.0) * 5.0 / 9.0,
            Unit::CToF => x * 9.0 / 5.0 + 32.0,
            Unit::KelvinToC => x - 273.15,
            Unit::CToKelvin => x + 273.15,
            Unit::MsToS | Unit::MvToV => x / 1000.0,
            Unit::SToMs => x * 1000.0,
            Unit::PaToHpa => x / 100.0,
            Unit::HpaToPa => x * 100.0,
        }
    }
}

/// Reshapes JSON object payloads: see the crate documentation.
pub struct JsonMap {
    settings: Settings,
    /// `10^round`, the factor `convert` rounds with.
    scale: Option<f64>,
}

impl Transform for JsonMap {
    fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.round.is_some_and(|r| r > 12) {
            return Err("invalid config: `round` must be at most 12 decimals".into());
        }
        let mut targets = BTreeSet::new();
        for new in settings.rename.values() {
            if !targets.insert(new) {
                return Err(format!(
                    "invalid config: `rename` maps two fields to `{new}`"
                ));
            }
        }
        if let Some(key) = &settings.key_field {
            if settings.drop.contains(key) {
                return Err(format!(
                    "invalid config: `key_field` `{key}` is also in `drop`, which runs first"
                ));
            }
        }
        if settings.kafka_topic.as_deref() == Some("") {
            return Err("invalid config: `kafka_topic` is empty".into());
        }
        let scale = settings.round.map(|r| 10f64.powi(r as i32));
        Ok(Self { settings, scale })
    }

    fn process(&mut self, mut msg: Message) -> Result<Vec<Message>, String> {
        let s = &self.settings;
        // Values the steps below do not touch stay payload text: nothing
        // builds the whole document.
        let mut fields = JsonFields::parse(&msg.payload)?;

        // 1. from_topic
        for (field, &level) in &s.from_topic {
            let text = msg.topic_level(level).ok_or_else(|| {
                format!(
                    "topic `{}` has no level {level} for field `{field}`",
                    msg.topic
                )
            })?;
            fields.insert(field.as_str(), Value::from(text));
        }
        // 2. add
        for (field, value) in &s.add {
            fields.insert(field.as_str(), value.clone());
        }
        // 3. rename: take every old field out first, so that renames do not
        // see each other's results (one rename needs no list).
        if s.rename.len() == 1 {
            for (old, new) in &s.rename {
                if let Some(value) = fields.remove(old) {
                    fields.insert(new.as_str(), value);
                }
            }
        } else {
            let moved: Vec<(&String, FieldValue)> = s
                .rename
                .iter()
                .filter_map(|(old, new)| fields.remove(old).map(|value| (new, value)))
                .collect();
            for (new, value) in moved {
                fields.insert(new.as_str(), value);
            }
        }
        // 4. convert
        for (field, &unit) in &s.convert {
            if let Some(value) = fields.get(field) {
                let converted = convert(field, value, unit, self.scale)?;
                fields.insert(field.as_str(), converted);
            }
        }
        // 5. drop
        for field in &s.drop {
            fields.remove(field);
        }
        // 6. key_field
        if let Some(field) = &s.key_field {
            msg.key = Some(key_bytes(field, fields.value(field)?)?);
        }
        if let Some(topic) = &s.kafka_topic {
            msg.kafka_topic = Some(topic.clone());
        }
        msg.payload = fields.to_vec();
        Ok(vec![msg])
    }
}

sluice_sdk::export_transform!(JsonMap);

fn convert(
    field: &str,
    value: &FieldValue,
    unit: Unit,
    scale: Option<f64>,
) -> Result<Value, String> {
    let x = match value.as_f64() {
        Some(x) => x,
        None => {
            return Err(format!(
                "field `{field}` is {}, expected a number to convert",
                json_type_name(&value.to_value()?)
            ))
        }
    };
    let mut y = unit.apply(x);
    if let Some(scale) = scale {
        y = (y * scale).round() / scale;
    }
    serde_json::Number::from_f64(y)
        .map(Value::Number)
        .ok_or_else(|| format!("field `{field}`: {x} does not convert to a finite number"))
}

/// A string key is its text; numbers and booleans their JSON text.
fn key_bytes(field: &str, value: Option<Value>) -> Result<Vec<u8>, String> {
    match value {
        Some(Value::String(text)) => Ok(text.into_bytes()),
        Some(Value::Null) | None => Err(format!("key_field `{field}` is missing or null")),
        Some(other) => Ok(other.to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOPIC: &str = "sensors/dev-42/telemetry";

    fn map(config: Value) -> JsonMap {
        JsonMap::new(Config::from(config)).unwrap()
    }

    fn config_error(config: Value) -> String {
        match JsonMap::new(Config::from(config)) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e,
        }
    }

    fn run(map: &mut JsonMap, payload: Value) -> Result<Message, String> {
        let mut out = map.process(Message::new(TOPIC, payload.to_string()))?;
        assert_eq!(out.len(), 1, "json-map maps one message to one");
        Ok(out.remove(0))
    }

    /// The output payload as text, which shows the field order.
    fn text(msg: &Message) -> &str {
        msg.payload_str().unwrap()
    }

    #[test]
    fn an_empty_config_passes_objects_through() {
        let mut m = map(json!({}));
        let out = run(&mut m, json!({"b": 1, "a": [true]})).unwrap();
        assert_eq!(text(&out), r#"{"b":1,"a":[true]}"#);
        assert_eq!(out.key, None);
        assert_eq!(out.kafka_topic, None);
    }

    #[test]
    fn from_topic_adds_topic_levels_as_fields() {
        let mut m = map(json!({"from_topic": {"device_id": 1, "kind": 2}}));
        let out = run(&mut m, json!({"t": 1})).unwrap();
        assert_eq!(
            out.json_value().unwrap(),
            json!({"t": 1, "device_id": "dev-42", "kind": "telemetry"})
        );
    }

    #[test]
    fn a_topic_without_the_level_is_dead_lettered() {
        let mut m = map(json!({"from_topic": {"device_id": 3}}));
        assert_eq!(
            run(&mut m, json!({})).unwrap_err(),
            "topic `sensors/dev-42/telemetry` has no level 3 for field `device_id`"
        );
    }

    #[test]
    fn add_sets_constant_fields_in_config_order() {
        let mut m = map(json!({"add": {"source": "mqtt", "schema": 2, "t": null}}));
        let out = run(&mut m, json!({"t": 1})).unwrap();
        assert_eq!(text(&out), r#"{"t":null,"source":"mqtt","schema":2}"#);
    }

    #[test]
    fn rename_moves_fields_at_once() {
        let mut m = map(json!({"rename": {"temp": "temperature", "missing": "x"}}));
        let out = run(&mut m, json!({"temp": 21, "hum": 40})).unwrap();
        assert_eq!(text(&out), r#"{"hum":40,"temperature":21}"#);

        let mut swap = map(json!({"rename": {"a": "b", "b": "a"}}));
        let out = run(&mut swap, json!({"a": 1, "b": 2})).unwrap();
        assert_eq!(out.json_value().unwrap(), json!({"a": 2, "b": 1}));
    }

    #[test]
    fn convert_changes_units_and_rounds() {
        let mut m = map(json!({
            "convert": {"temp": "f_to_c", "ts": "ms_to_s", "p": "pa_to_hpa", "k": "kelvin_to_c"},
            "round": 2
        }));
        let out = run(
            &mut m,
            json!({"temp": 70.3, "ts": 1_700_000_000_123_u64, "p": 101_325, "k": 300}),
        )
        .unwrap();
        assert_eq!(
            out.json_value().unwrap(),
            json!({"temp": 21.28, "ts": 1_700_000_000.12, "p": 1013.25, "k": 26.85})
        );
    }

    #[test]
    fn every_unit_converts_as_named() {
        let cases = [
            ("f_to_c", 212.0, 100.0),
            ("c_to_f", 100.0, 212.0),
            ("kelvin_to_c", 273.15, 0.0),
            ("c_to_kelvin", 0.0, 273.15),
            ("ms_to_s", 1500.0, 1.5),
            ("s_to_ms", 1.5, 1500.0),
            ("pa_to_hpa", 101_325.0, 1013.25),
            ("hpa_to_pa", 1013.25, 101_325.0),
            ("mv_to_v", 3300.0, 3.3),
        ];
        for (unit, from, to) in cases {
            let mut m = map(json!({"convert": {"x": unit}, "round": 6}));
            let out = run(&mut m, json!({"x": from})).unwrap();
            assert_eq!(out.json_value().unwrap()["x"], json!(to), "{unit}");
        }
    }

    #[test]
    fn converting_a_non_number_is_dead_lettered() {
        let mut m = map(json!({"convert": {"temp": "c_to_f"}}));
        assert_eq!(
            run(&mut m, json!({"temp": "hot"})).unwrap_err(),
            "field `temp` is a string, expected a number to convert"
        );
        // A missing field is skipped.
        assert_eq!(
            run(&mut m, json!({"h": 1})).unwrap().json_value().unwrap(),
            json!({"h": 1})
        );
    }

    #[test]
    fn drop_removes_fields_and_keeps_the_order_of_the_rest() {
        let mut m = map(json!({"drop": ["rssi", "nope"]}));
        let out = run(&mut m, json!({"c": 1, "rssi": -70, "b": 2, "a": 3})).unwrap();
        assert_eq!(text(&out), r#"{"c":1,"b":2,"a":3}"#);
    }

    #[test]
    fn key_field_sets_the_kafka_key_from_a_field() {
        let mut m = map(json!({"key_field": "id"}));
        let key = |m: &mut JsonMap, p| run(m, p).map(|out| out.key.unwrap());
        assert_eq!(key(&mut m, json!({"id": "dev-1"})).unwrap(), b"dev-1");
        assert_eq!(key(&mut m, json!({"id": 42})).unwrap(), b"42");
        assert_eq!(
            key(&mut m, json!({"id": null})).unwrap_err(),
            "key_field `id` is missing or null"
        );
        assert_eq!(
            key(&mut m, json!({})).unwrap_err(),
            "key_field `id` is missing or null"
        );
    }

    #[test]
    fn kafka_topic_overrides_the_sink_topic() {
        let mut m = map(json!({"kafka_topic": "alerts"}));
        let out = run(&mut m, json!({})).unwrap();
        assert_eq!(out.kafka_topic.as_deref(), Some("alerts"));
    }

    #[test]
    fn steps_run_in_the_documented_order() {
        let mut m = map(json!({
            "from_topic": {"dev": 1},
            "add": {"unit": "C"},
            "rename": {"dev": "device_id", "t_f": "temp"},
            "convert": {"temp": "f_to_c"},
            "drop": ["debug"],
            "key_field": "device_id",
        }));
        let input = Message::new(TOPIC, r#"{"t_f": 212, "debug": true}"#)
            .with_header("site", "lab")
            .with_timestamp_ms(5);
        let out = m.process(input.clone()).unwrap().remove(0);
        assert_eq!(
            text(&out),
            r#"{"unit":"C","device_id":"dev-42","temp":100.0}"#
        );
        assert_eq!(out.key.as_deref(), Some(&b"dev-42"[..]));
        assert_eq!(out.headers, input.headers);
        assert_eq!(out.timestamp_ms, 5);
    }

    #[test]
    fn payloads_that_are_not_objects_are_dead_lettered() {
        let mut m = map(json!({}));
        let err = m.process(Message::new(TOPIC, "21.5 C")).unwrap_err();
        assert!(err.starts_with("payload is not JSON: "), "{err}");
        assert_eq!(
            run(&mut m, json!([1])).unwrap_err(),
            "payload is JSON an array, expected a JSON object"
        );
    }

    #[test]
    fn config_mistakes_are_named() {
        let e = config_error(json!({"convert": {"t": "f_to_k"}}));
        assert!(
            e.starts_with("invalid config: unknown variant `f_to_k`, expected one of `f_to_c`"),
            "{e}"
        );
        let e = config_error(json!({"renam": {}}));
        assert!(
            e.starts_with("invalid config: unknown field `renam`"),
            "{e}"
        );
        let e = config_error(json!({"from_topic": {"d": -1}}));
        assert!(
            e.starts_with("invalid config: invalid value: integer `-1`"),
            "{e}"
        );
        assert_eq!(
            config_error(json!({"rename": {"a": "x", "b": "x"}})),
            "invalid config: `rename` maps two fields to `x`"
        );
        assert_eq!(
            config_error(json!({"round": 13})),
            "invalid config: `round` must be at most 12 decimals"
        );
        assert_eq!(
            config_error(json!({"key_field": "id", "drop": ["id"]})),
            "invalid config: `key_field` `id` is also in `drop`, which runs first"
        );
        assert_eq!(
            config_error(json!({"kafka_topic": ""})),
            "invalid config: `kafka_topic` is empty"
        );
    }
}
