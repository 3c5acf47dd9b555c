//! Editing the top-level fields of a JSON object payload without building
//! the whole document.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::message::json_error;

/// The top-level fields of a JSON object payload, in order, for transforms
/// that add, rename, change or remove a few fields of each message.
///
/// Parsing checks the whole payload but builds no value: each field's value
/// stays a slice of the payload's text until the transform replaces it, and
/// [`to_vec`](Self::to_vec) writes untouched values back byte for byte.
/// That makes it several times faster than going through
/// [`serde_json::Value`] ([`Message::json_object`](crate::Message::json_object)
/// and [`set_json`](crate::Message::set_json)) for the usual telemetry
/// reshaping. The output is compact between the top-level fields; inside an
/// untouched value, the original text (spacing, number spelling, escapes)
/// is kept.
///
/// A key that appears twice keeps its first position and its last value,
/// as [`serde_json::Map`] does.
///
/// ```
/// use sluice_sdk::{JsonFields, Message};
/// use sluice_sdk::serde_json::json;
///
/// let mut msg = Message::new("sensors/dev-42/telemetry", r#"{"t": 21.50, "debug": [1, 2]}"#);
/// let mut fields = JsonFields::parse(&msg.payload)?;
/// let t = fields.value("t")?.and_then(|t| t.as_f64()).ok_or("no number `t`")?;
/// fields.insert("t_f", json!(t * 9.0 / 5.0 + 32.0));
/// fields.remove("debug");
/// fields.insert("device", json!(msg.topic_level(1)));
/// msg.payload = fields.to_vec();
/// assert_eq!(msg.payload_str()?, r#"{"t":21.50,"t_f":70.7,"device":"dev-42"}"#);
/// # Ok::<(), String>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct JsonFields<'a> {
    fields: Vec<Field<'a>>,
}

/// One field of [`JsonFields`].
#[derive(Clone, Debug)]
struct Field<'a> {
    name: Cow<'a, str>,
    /// Whether `name` needs no escape in JSON: known for the names parsed
    /// from the payload without escapes, checked once for the others.
    plain: bool,
    value: FieldValue<'a>,
}

impl<'a> Field<'a> {
    fn new(name: Cow<'a, str>, value: FieldValue<'a>) -> Self {
        let plain = name.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
        Field { name, plain, value }
    }
}

/// One field's value in [`JsonFields`]: the payload's own text, or a value
/// the transform set.
#[derive(Clone, Debug)]
pub enum FieldValue<'a> {
    /// The JSON text of the value as it was in the payload.
    Raw(&'a RawValue),
    /// A value set by the transform.
    Value(Value),
}

impl FieldValue<'_> {
    /// The value as a [`serde_json::Value`] (parsed from the payload's text
    /// when it is raw).
    pub fn to_value(&self) -> Result<Value, String> {
        match self {
            FieldValue::Raw(raw) => {
                serde_json::from_str(raw.get()).map_err(|e| format!("payload is not JSON: {e}"))
            }
            FieldValue::Value(value) => Ok(value.clone()),
        }
    }

    /// The value as a number, `None` when it is not one (like
    /// [`Value::as_f64`], without building a `Value`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            FieldValue::Raw(raw) => serde_json::from_str(raw.get()).ok(),
            FieldValue::Value(value) => value.as_f64(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            FieldValue::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
            FieldValue::Value(value) => write_json(out, value),
        }
    }
}

impl From<Value> for FieldValue<'_> {
    fn from(value: Value) -> Self {
        FieldValue::Value(value)
    }
}

impl<'a> JsonFields<'a> {
    /// Parses `payload`, which must be a JSON object. The errors are the
    /// ones of [`Message::json_object`](crate::Message::json_object), meant
    /// as dead-letter reasons: `payload is not JSON: ...` or
    /// `payload is JSON an array, expected a JSON object`.
    pub fn parse(payload: &'a [u8]) -> Result<Self, String> {
        // One UTF-8 check of the whole payload, so that the parser need not
        // check each string and raw value again.
        let parsed = match std::str::from_utf8(payload) {
            Ok(text) => serde_json::from_str::<JsonFields<'a>>(text),
            Err(_) => serde_json::from_slice::<JsonFields<'a>>(payload),
        };
        match parsed {
            Ok(mut fields) => {
                fields.merge_duplicates();
                Ok(fields)
            }
            // The slow path builds the value only to name what was found.
            Err(e) => Err(crate::message::object_error(payload).unwrap_or_else(|| json_error(&e))),
        }
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the object has no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The field names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.fields.iter().map(|f| f.name.as_ref())
    }

    /// Whether a field named `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    /// The value of field `name`, as it is now.
    pub fn get(&self, name: &str) -> Option<&FieldValue<'a>> {
        self.position(name).map(|i| &self.fields[i].value)
    }

    /// The value of field `name` parsed into a [`serde_json::Value`];
    /// `Ok(None)` when there is no such field.
    pub fn value(&self, name: &str) -> Result<Option<Value>, String> {
        self.get(name).map(FieldValue::to_value).transpose()
    }

    /// Sets field `name`: a field that exists keeps its position, a new one
    /// goes at the end.
    pub fn insert(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<FieldValue<'a>>) {
        let name = name.into();
        let value = value.into();
        match self.position(&name) {
            Some(i) => self.fields[i].value = value,
            None => self.fields.push(Field::new(name, value)),
        }
    }

    /// Removes field `name` and returns its value; the other fields keep
    /// their order.
    pub fn remove(&mut self, name: &str) -> Option<FieldValue<'a>> {
        self.position(name).map(|i| self.fields.remove(i).value)
    }

    /// The object as compact JSON text.
    pub fn to_vec(&self) -> Vec<u8> {
        let guess: usize = self
            .fields
            .iter()
            .map(|f| {
                f.name.len()
                    + 4
                    + match &f.value {
                        FieldValue::Raw(raw) => raw.get().len(),
                        FieldValue::Value(_) => 16,
                    }
            })
            .sum();
        let mut out = Vec::with_capacity(guess + 2);
        out.push(b'{');
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if f.plain {
                out.push(b'"');
                out.extend_from_slice(f.name.as_bytes());
                out.extend_from_slice(b"\":");
            } else {
                write_json(&mut out, &f.name);
                out.push(b':');
            }
            f.value.write(&mut out);
        }
        out.push(b'}');
        out
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| same_name(&f.name, name))
    }

    /// Folds repeated keys into their first position with their last value.
    fn merge_duplicates(&mut self) {
        let n = self.fields.len();
        let repeated = if n <= 16 {
            (1..n).any(|i| {
                let name = &self.fields[i].name;
                self.fields[..i].iter().any(|f| same_name(&f.name, name))
            })
        } else {
            let mut seen = HashSet::with_capacity(n);
            !self.fields.iter().all(|f| seen.insert(f.name.as_ref()))
        };
        if !repeated {
            return;
        }
        let mut merged: Vec<Field<'a>> = Vec::with_capacity(n);
        for field in std::mem::take(&mut self.fields) {
            match merged.iter_mut().find(|f| f.name == field.name) {
                Some(slot) => slot.value = field.value,
                None => merged.push(field),
            }
        }
        self.fields = merged;
    }
}

/// Whether two field names are equal. Field lookups compare a name with
/// every field: names of 4 to 16 bytes are compared as two overlapping
/// words, without a `memcmp` call (in WebAssembly a loop over bytes).
#[inline]
fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    match a.len() {
        8..=16 => {
            a.first_chunk::<8>() == b.first_chunk::<8>()
                && a.last_chunk::<8>() == b.last_chunk::<8>()
        }
        4..=7 => {
            a.first_chunk::<4>() == b.first_chunk::<4>()
                && a.last_chunk::<4>() == b.last_chunk::<4>()
        }
        _ => a.first() == b.first() && a == b,
    }
}

/// Writes any serialisable value as compact JSON. Serialising a `str` or a
/// `Value` into a `Vec` cannot fail.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(out, value);
}

/// A key that borrows from the payload when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for JsonFields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = JsonFields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // serde_json gives no size hint; 16 holds a usual
                // telemetry object without growing.
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((Key(name), raw)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    // A name borrowed from the payload has no escapes, and
                    // the parser refuses control characters: it is plain.
                    let plain = matches!(name, Cow::Borrowed(_));
                    fields.push(Field {
                        name,
                        plain,
                        value: FieldValue::Raw(raw),
                    });
                }
                Ok(JsonFields { fields })
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;
    use serde_json::json;

    fn text(fields: &JsonFields<'_>) -> String {
        String::from_utf8(fields.to_vec()).unwrap()
    }

    #[test]
    fn untouched_objects_come_back_compact_with_values_verbatim() {
        let payload = br#" { "b" : 1.50 , "a" : [ true ,"\u00e9"], "c": {"x": null} } "#;
        let fields = JsonFields::parse(payload).unwrap();
        assert_eq!(fields.keys().collect::<Vec<_>>(), ["b", "a", "c"]);
        assert_eq!(
            text(&fields),
            r#"{"b":1.50,"a":[ true ,"\u00e9"],"c":{"x": null}}"#
        );
        assert_eq!(fields.value("a").unwrap(), Some(json!([true, "\u{e9}"])));
        assert_eq!(fields.value("zz").unwrap(), None);
        assert_eq!(fields.get("b").and_then(FieldValue::as_f64), Some(1.5));
        assert_eq!(fields.get("a").and_then(FieldValue::as_f64), None);
        assert_eq!(FieldValue::from(json!(2)).as_f64(), Some(2.0));
    }

    #[test]
    fn insert_replaces_in_place_or_appends_and_remove_keeps_the_order() {
        let mut fields = JsonFields::parse(br#"{"a":1,"b":2,"c":3}"#).unwrap();
        fields.insert("b", json!("two"));
        fields.insert("d", json!({"k": [1]}));
        assert!(matches!(fields.remove("a"), Some(FieldValue::Raw(r)) if r.get() == "1"));
        assert!(fields.remove("a").is_none());
        assert_eq!(text(&fields), r#"{"b":"two","c":3,"d":{"k":[1]}}"#);
        assert_eq!(fields.len(), 3);
        assert!(fields.contains("c") && !fields.contains("a"));
    }

    #[test]
    fn names_compare_equal_only_when_every_byte_is_equal() {
        let name: String = ('a'..='z').chain('A'..='Z').collect();
        for n in 0..=name.len() {
            let a = &name[..n];
            let copy = String::from(a);
            assert!(same_name(a, &copy), "{a}");
            for i in 0..n {
                let mut b = a.as_bytes().to_vec();
                b[i] = b'_';
                let b = String::from_utf8(b).unwrap();
                assert!(!same_name(a, &b), "{a} = {b}");
            }
            assert!(!same_name(a, &name[..n.saturating_sub(1)]) || n == 0);
        }
    }

    #[test]
    fn escaped_keys_are_unescaped_for_lookup_and_escaped_again_on_output() {
        let mut fields = JsonFields::parse(br#"{"t\u00e9mp":1,"q\"uote":2}"#).unwrap();
        assert!(fields.contains("t\u{e9}mp"));
        fields.insert("new\nline", json!(true));
        assert_eq!(
            text(&fields),
            "{\"t\u{e9}mp\":1,\"q\\\"uote\":2,\"new\\nline\":true}"
        );
    }

    #[test]
    fn repeated_keys_keep_the_first_position_and_the_last_value_like_serde_json() {
        for n in [3, 40] {
            let mut payload = String::from(r#"{"dup":1"#);
            for i in 0..n {
                payload.push_str(&format!(r#","f{i}":{i}"#));
            }
            payload.push_str(r#","dup":2}"#);
            let fields = JsonFields::parse(payload.as_bytes()).unwrap();
            let via_value: Value = serde_json::from_str(&payload).unwrap();
            assert_eq!(fields.len(), n + 1);
            assert_eq!(text(&fields), via_value.to_string(), "{n} fields");
        }
    }

    #[test]
    fn the_errors_are_those_of_json_object() {
        let bad_utf8 = &b"{\"a\":\"\xff\"}"[..];
        for payload in [
            &b"21.5 C"[..],
            b"[1]",
            b"\"s\"",
            b"{\"a\":",
            b"",
            b"{} x",
            bad_utf8,
        ] {
            let msg = Message::new("t", payload);
            let expected = msg.json_object().unwrap_err();
            assert_eq!(JsonFields::parse(payload).unwrap_err(), expected);
        }
    }

    #[test]
    fn output_matches_serde_json_for_canonical_input() {
        let value = json!({"seq": 7, "t": 70.5, "s": "a\"b", "n": null, "o": {"x": [1, 2.5]}});
        let payload = value.to_string();
        let fields = JsonFields::parse(payload.as_bytes()).unwrap();
        assert_eq!(text(&fields), payload);
    }
}
