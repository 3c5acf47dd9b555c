//! # json-filter: keep or drop JSON messages by a test on one field
//!
//! ```yaml
//! transforms:
//!   - name: hot-only
//!     plugin: ../plugins/target/wasm32-wasip2/release/json_filter.wasm
//!     config:
//!       field: reading.temp   # dotted path into nested objects; `readings.0.temp` indexes arrays
//!       op: gt                # eq ne gt gte lt lte exists missing in contains
//!       value: 30             # a list for `in`; none for `exists` and `missing`
//!       action: keep          # keep (default): keep matching messages, drop the rest
//!                             # drop: drop matching messages, keep the rest
//! ```
//!
//! | op | matches when the field ... |
//! | --- | --- |
//! | `eq`, `ne` | equals / differs from `value` (numbers compare as numbers: `30` equals `30.0`) |
//! | `gt`, `gte`, `lt`, `lte` | compares so with `value`: numbers with numbers, strings with strings (lexicographically, e.g. ISO-8601 times) |
//! | `exists`, `missing` | is present (even as `null`) / is absent |
//! | `in` | equals one of the elements of `value`, a list |
//! | `contains` | is a string containing `value` (a string), or a list with an element equal to `value` |
//!
//! Guarantees: messages that pass are unchanged (payload bytes, key,
//! headers, topic). A missing field never matches, except for `missing`; a field of
//! another type than `value` (the string `"31"` against `30`) does not match
//! either. A payload that is not JSON is sent to the dead-letter topic. Of
//! an object payload, only the value of the top-level field the path
//! starts in is built (as a `serde_json::Value`), so three things that
//! serde_json refuses, though the JSON grammar allows them, are
//! dead-lettered only inside that value and pass untouched elsewhere: a
//! number beyond `f64` (`1e400`), nesting deeper than 128, and an escaped
//! lone surrogate (`"\ud800"`). Every
//! config mistake (unknown op or key, missing `value`) stops the pipeline at
//! start with a message naming it.

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use sluice_sdk::{log, Config, JsonFields, Message, Transform};
use std::cmp::Ordering;

/// The transform's `config:` map.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Dotted path of the field to test.
    field: String,
    /// The test to apply.
    op: Op,
    /// What to compare with; `Some(Null)` when the config says `value: null`.
    #[serde(default, deserialize_with = "present")]
    value: Option<Value>,
    /// Whether matching messages are kept or dropped.
    #[serde(default)]
    action: Action,
}

/// Tells `value: null` (compare with null) apart from no `value` at all.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    Exists,
    Missing,
    In,
    Contains,
}

#[derive(Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Action {
    #[default]
    Keep,
    Drop,
}

/// Keeps or drops messages by a test on one JSON field.
pub struct JsonFilter {
    /// `field`'s first part (`reading.temp`: `reading`).
    first: String,
    /// The JSON pointer of the other parts in the first part's value
    /// (`/temp`; empty for a field of one part).
    rest: String,
    /// The JSON pointer of the whole field (`/reading/temp`).
    pointer: String,
    op: Op,
    value: Value,
    keep_matching: bool,
}

impl Transform for JsonFilter {
    fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let pointer = json_pointer(&settings.field)?;
        let (first, rest) = match settings.field.split_once('.') {
            Some((first, rest)) => (first.to_owned(), json_pointer(rest)?),
            None => (settings.field.clone(), String::new()),
        };
        let value = check_value(settings.op, settings.value)?;
        let keep_matching = settings.action == Action::Keep;
        log::info(format!(
            "{} messages where `{}` {} {value}",
            if keep_matching { "keeping" } else { "dropping" },
            settings.field,
            op_name(settings.op),
        ));
        Ok(Self {
            first,
            rest,
            pointer,
            op: settings.op,
            value,
            keep_matching,
        })
    }

    fn process(&mut self, msg: Message) -> Result<Vec<Message>, String> {
        if self.matched(&msg)? == self.keep_matching {
            Ok(vec![msg])
        } else {
            Ok(vec![])
        }
    }
}

sluice_sdk::export_transform!(JsonFilter);

impl JsonFilter {
    /// Whether the message matches, or why its payload is not JSON.
    fn matched(&self, msg: &Message) -> Result<bool, String> {
        // An object (the usual payload): its top level is checked and
        // split into fields, and only the value of the field the path
        // starts in is built, not the whole document.
        let fields = if msg.payload.trim_ascii_start().starts_with(b"{") {
            JsonFields::parse(&msg.payload).ok()
        } else {
            None
        };
        if let Some(fields) = fields {
            let Some(first) = fields.get(&self.first) else {
                return Ok(self.matches(None));
            };
            if let Ok(value) = first.to_value() {
                return Ok(self.matches(value.pointer(&self.rest)));
            }
        }
        // Not an object, not JSON, or a value in the field that serde_json
        // refuses: the whole payload, which says what is wrong with it.
        let payload = msg.json_value()?;
        Ok(self.matches(payload.pointer(&self.pointer)))
    }

    fn matches(&self, found: Option<&Value>) -> bool {
        let Some(found) = found else {
            return self.op == Op::Missing;
        };
        let order = || compare(found, &self.value);
        match self.op {
            Op::Exists => true,
            Op::Missing => false,
            Op::Eq => equal(found, &self.value),
            Op::Ne => !equal(found, &self.value),
            Op::Gt => order() == Some(Ordering::Greater),
            Op::Gte => matches!(order(), Some(Ordering::Greater | Ordering::Equal)),
            Op::Lt => order() == Some(Ordering::Less),
            Op::Lte => matches!(order(), Some(Ordering::Less | Ordering::Equal)),
            Op::In => self
                .value
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| equal(found, v)),
            Op::Contains => match found {
                Value::String(text) => self.value.as_str().is_some_and(|s| text.contains(s)),
                Value::Array(items) => items.iter().any(|v| equal(v, &self.value)),
                _ => false,
            },
        }
    }
}

/// JSON equality, except that numbers compare as f64 (`30 == 30.0`).
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Numbers as f64, strings lexicographically; other pairs do not compare.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Checks that `op` got the `value` it needs; returns the value to compare with.
fn check_value(op: Op, value: Option<Value>) -> Result<Value, String> {
    let name = op_name(op);
    match (op, value) {
        (Op::Exists | Op::Missing, None) => Ok(Value::Null),
        (Op::Exists | Op::Missing, Some(_)) => {
            Err(format!("invalid config: op `{name}` takes no `value`"))
        }
        (Op::Eq | Op::Ne | Op::Contains, Some(value)) => Ok(value),
        (
            Op::Gt | Op::Gte | Op::Lt | Op::Lte,
            Some(value @ (Value::Number(_) | Value::String(_))),
        ) => Ok(value),
        (Op::In, Some(value @ Value::Array(_))) => Ok(value),
        (Op::Eq | Op::Ne | Op::Contains, None) => {
            Err(format!("invalid config: op `{name}` needs a `value`"))
        }
        (Op::Gt | Op::Gte | Op::Lt | Op::Lte, _) => Err(format!(
            "invalid config: op `{name}` needs a `value` that is a number or a string"
        )),
        (Op::In, _) => Err("invalid config: op `in` needs a `value` that is a list".into()),
    }
}

/// The op as written in the config: `gt`.
fn op_name(op: Op) -> String {
    format!("{op:?}").to_lowercase()
}

/// `reading.temp` -> `/reading/temp` (escaped per RFC 6901).
fn json_pointer(field: &str) -> Result<String, String> {
    if field.split('.').any(str::is_empty) {
        return Err(format!(
            "invalid config: `field` must be a dotted path like `reading.temp`, found `{field}`"
        ));
    }
    Ok(field
        .split('.')
        .map(|part| format!("/{}", part.replace('~', "~0").replace('/', "~1")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_sdk::Runner;

    fn filter(config: Value) -> JsonFilter {
        JsonFilter::new(Config::from(config)).unwrap()
    }

    fn config_error(config: Value) -> String {
        match JsonFilter::new(Config::from(config)) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e,
        }
    }

    /// Whether `filter` keeps a message with this payload.
    fn keeps(filter: &mut JsonFilter, payload: Value) -> bool {
        let msg = Message::new("sensors/dev-1/telemetry", payload.to_string());
        match filter.process(msg.clone()).unwrap().as_slice() {
            [] => false,
            [out] => {
                assert_eq!(out, &msg, "a kept message passes on unchanged");
                true
            }
            many => panic!("filter split a message: {many:?}"),
        }
    }

    #[test]
    fn gt_keeps_hotter_readings_and_drops_the_rest() {
        let mut f = filter(json!({"field": "temperature", "op": "gt", "value": 30}));
        assert!(keeps(&mut f, json!({"temperature": 31.5})));
        assert!(!keeps(&mut f, json!({"temperature": 30})));
        assert!(!keeps(&mut f, json!({"temperature": 12})));
    }

    #[test]
    fn ordering_ops_include_or_exclude_the_bound() {
        let reading = json!({"t": 30.0});
        for (op, kept) in [("gt", false), ("gte", true), ("lt", false), ("lte", true)] {
            let mut f = filter(json!({"field": "t", "op": op, "value": 30}));
            assert_eq!(keeps(&mut f, reading.clone()), kept, "op {op}");
        }
    }

    #[test]
    fn strings_compare_lexicographically() {
        let mut f = filter(json!({"field": "ts", "op": "gte", "value": "2026-01-01"}));
        assert!(keeps(&mut f, json!({"ts": "2026-03-04T10:00:00Z"})));
        assert!(!keeps(&mut f, json!({"ts": "2025-12-31T23:59:59Z"})));
    }

    #[test]
    fn values_of_another_type_do_not_match() {
        let mut f = filter(json!({"field": "t", "op": "gt", "value": 30}));
        assert!(!keeps(&mut f, json!({"t": "31"})));
        assert!(!keeps(&mut f, json!({"t": null})));
        let mut f = filter(json!({"field": "t", "op": "lt", "value": 30}));
        assert!(!keeps(&mut f, json!({"t": [1]})));
    }

    #[test]
    fn eq_and_ne_compare_numbers_by_value_and_strings_exactly() {
        let mut f = filter(json!({"field": "t", "op": "eq", "value": 30}));
        assert!(keeps(&mut f, json!({"t": 30.0})));
        assert!(!keeps(&mut f, json!({"t": "30"})));
        let mut f = filter(json!({"field": "status", "op": "ne", "value": "ok"}));
        assert!(keeps(&mut f, json!({"status": "fault"})));
        assert!(!keeps(&mut f, json!({"status": "ok"})));
        let mut f = filter(json!({"field": "status", "op": "eq", "value": null}));
        assert!(keeps(&mut f, json!({"status": null})));
        assert!(!keeps(&mut f, json!({"status": "ok"})));
    }

    #[test]
    fn nested_fields_and_array_elements_are_reached_by_dotted_paths() {
        let mut f = filter(json!({"field": "reading.temp", "op": "lt", "value": 0}));
        assert!(keeps(&mut f, json!({"reading": {"temp": -4}})));
        assert!(!keeps(&mut f, json!({"reading": {"temp": 4}})));
        assert!(!keeps(&mut f, json!({"reading": 5})));
        let mut f = filter(json!({"field": "readings.1.ok", "op": "eq", "value": true}));
        assert!(keeps(
            &mut f,
            json!({"readings": [{"ok": false}, {"ok": true}]})
        ));
        assert!(!keeps(&mut f, json!({"readings": [{"ok": true}]})));
    }

    #[test]
    fn missing_fields_match_only_missing() {
        for op in ["eq", "ne", "gt", "in", "contains"] {
            let value = if op == "in" { json!([1]) } else { json!(1) };
            let mut f = filter(json!({"field": "t", "op": op, "value": value}));
            assert!(!keeps(&mut f, json!({"other": 1})), "op {op}");
        }
        let mut f = filter(json!({"field": "battery", "op": "missing"}));
        assert!(keeps(&mut f, json!({"t": 1})));
        assert!(!keeps(&mut f, json!({"battery": null})));
        let mut f = filter(json!({"field": "battery", "op": "exists"}));
        assert!(keeps(&mut f, json!({"battery": null})));
        assert!(!keeps(&mut f, json!({"t": 1})));
    }

    #[test]
    fn in_matches_any_element_of_the_list() {
        let mut f = filter(json!({"field": "site", "op": "in", "value": ["lab", "roof", 3]}));
        assert!(keeps(&mut f, json!({"site": "roof"})));
        assert!(keeps(&mut f, json!({"site": 3.0})));
        assert!(!keeps(&mut f, json!({"site": "cellar"})));
    }

    #[test]
    fn contains_looks_into_strings_and_lists() {
        let mut f = filter(json!({"field": "msg", "op": "contains", "value": "ERR"}));
        assert!(keeps(&mut f, json!({"msg": "E42 ERR overheat"})));
        assert!(!keeps(&mut f, json!({"msg": "all good"})));
        assert!(keeps(&mut f, json!({"msg": ["WARN", "ERR"]})));
        assert!(!keeps(&mut f, json!({"msg": 7})));
    }

    #[test]
    fn action_drop_inverts_the_filter() {
        let mut f = filter(json!({"field": "test", "op": "eq", "value": true, "action": "drop"}));
        assert!(!keeps(&mut f, json!({"test": true})));
        assert!(keeps(&mut f, json!({"test": false})));
        assert!(keeps(&mut f, json!({})));
    }

    #[test]
    fn a_payload_that_is_not_json_is_dead_lettered() {
        let mut f = filter(json!({"field": "t", "op": "exists"}));
        let err = f.process(Message::new("t", "t=21.5")).unwrap_err();
        assert!(err.starts_with("payload is not JSON: "), "{err}");
        // JSON that is not an object has no fields: it is simply not matching.
        assert!(!keeps(&mut f, json!([1, 2])));
    }

    #[test]
    fn a_batch_gets_one_result_per_message_in_order() {
        let mut runner = Runner::<JsonFilter>::new();
        runner
            .init(r#"{"field": "t", "op": "gte", "value": 10}"#)
            .unwrap();
        let results = runner.process(vec![
            Message::new("a", r#"{"t": 5}"#),
            Message::new("b", "oops"),
            Message::new("c", r#"{"t": 15}"#),
        ]);
        assert_eq!(results.len(), 3);
        assert!(results[0].as_ref().unwrap().is_empty());
        assert!(results[1].is_err());
        assert_eq!(results[2].as_ref().unwrap()[0].topic, "c");
    }

    #[test]
    fn config_mistakes_are_named() {
        let e = config_error(json!({"field": "t", "op": "greater", "value": 1}));
        assert!(
            e.starts_with("invalid config: unknown variant `greater`, expected one of `eq`"),
            "{e}"
        );
        assert_eq!(
            config_error(json!({"field": "t", "op": "gt"})),
            "invalid config: op `gt` needs a `value` that is a number or a string"
        );
        assert_eq!(
            config_error(json!({"field": "t", "op": "lte", "value": [1]})),
            "invalid config: op `lte` needs a `value` that is a number or a string"
        );
        assert_eq!(
            config_error(json!({"field": "t", "op": "in", "value": "lab"})),
            "invalid config: op `in` needs a `value` that is a list"
        );
        assert_eq!(
            config_error(json!({"field": "t", "op": "eq"})),
            "invalid config: op `eq` needs a `value`"
        );
        assert_eq!(
            config_error(json!({"field": "t", "op": "exists", "value": 1})),
            "invalid config: op `exists` takes no `value`"
        );
        assert_eq!(
            config_error(json!({"field": "a..b", "op": "exists"})),
            "invalid config: `field` must be a dotted path like `reading.temp`, found `a..b`"
        );
        assert_eq!(
            config_error(json!({"op": "exists"})),
            "invalid config: missing field `field`"
        );
        let e = config_error(json!({"field": "t", "op": "exists", "acton": "drop"}));
        assert!(
            e.starts_with("invalid config: unknown field `acton`"),
            "{e}"
        );
        let e = config_error(json!({"field": "t", "op": "exists", "action": "skip"}));
        assert!(
            e.starts_with("invalid config: unknown variant `skip`"),
            "{e}"
        );
    }

    #[test]
    fn field_names_with_pointer_characters_are_escaped() {
        assert_eq!(json_pointer("a/b.c~d").unwrap(), "/a~1b/c~0d");
    }

    #[test]
    fn field_names_with_pointer_characters_are_taken_literally() {
        let mut f = filter(json!({"field": "rate/s", "op": "gt", "value": 1}));
        assert!(keeps(&mut f, json!({"rate/s": 2})));
        let mut f = filter(json!({"field": "a/b.c~1d", "op": "eq", "value": 3}));
        assert!(keeps(&mut f, json!({"a/b": {"c~1d": 3}})));
        assert!(!keeps(&mut f, json!({"a/b": {"c/d": 3}})));
    }

    #[test]
    fn array_indexes_follow_json_pointer_rules() {
        let mut f = filter(json!({"field": "r.1", "op": "exists"}));
        assert!(keeps(&mut f, json!({"r": [0, 1]})));
        assert!(!keeps(&mut f, json!({"r": [0]})));
        for part in ["01", "+1", "-1", "1.0", "x"] {
            let mut f = filter(json!({"field": format!("r.{part}"), "op": "exists"}));
            assert!(!keeps(&mut f, json!({"r": [0, 1, 2]})), "{part}");
        }
        // Objects take any part as a key, digits included.
        let mut f = filter(json!({"field": "r.01", "op": "exists"}));
        assert!(keeps(&mut f, json!({"r": {"01": true}})));
    }

    #[test]
    fn payloads_that_are_not_objects_are_looked_into_too() {
        let mut f = filter(json!({"field": "1.t", "op": "gt", "value": 0}));
        assert!(keeps(&mut f, json!([{"t": 0}, {"t": 1}])));
        assert!(!keeps(&mut f, json!([{"t": 0}])));
        let mut f = filter(json!({"field": "t", "op": "exists"}));
        assert!(!keeps(&mut f, json!(5)));
        assert!(!keeps(&mut f, json!("t")));
    }

    #[test]
    fn duplicate_keys_take_their_last_value_as_serde_json_does() {
        let mut f = filter(json!({"field": "t", "op": "eq", "value": 2}));
        let msg = Message::new("t", r#"{"t": 1, "u": 0, "t": 2}"#);
        assert_eq!(f.process(msg.clone()).unwrap(), vec![msg]);
        // Escaped names (parsed by serde_json, not the SDK's scanner).
        let mut f = filter(json!({"field": "temp", "op": "eq", "value": -1}));
        let msg = Message::new("t", r#"{"temp": 1, "t\u0065mp": -1}"#);
        assert_eq!(f.process(msg.clone()).unwrap(), vec![msg]);
        let mut f = filter(json!({"field": "a\\b", "op": "eq", "value": 1}));
        let msg = Message::new("t", r#"{"a\\b": 1}"#);
        assert_eq!(f.process(msg.clone()).unwrap(), vec![msg]);
    }

    #[test]
    fn what_serde_json_refuses_is_dead_lettered_only_in_the_tested_field() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let mut f = filter(json!({"field": "t.x", "op": "exists"}));
        for (inside, outside) in [
            (
                format!(r#"{{"t": {{"x": {deep}}}}}"#),
                format!(r#"{{"t": {{"x": 1}}, "d": {deep}}}"#),
            ),
            (
                r#"{"t": {"x": "\ud800"}}"#.into(),
                r#"{"t": {"x": 1}, "s": "\ud800"}"#.into(),
            ),
            (
                r#"{"t": {"x": 1e400}}"#.into(),
                r#"{"t": {"x": 1}, "n": 1e400}"#.into(),
            ),
        ] {
            let err = f.process(Message::new("t", inside.clone())).unwrap_err();
            let whole = Message::new("t", inside.clone()).json_value().unwrap_err();
            assert_eq!(err, whole, "{inside}");
            let msg = Message::new("t", outside.clone());
            assert_eq!(f.process(msg.clone()).unwrap(), vec![msg], "{outside}");
        }
    }
}
