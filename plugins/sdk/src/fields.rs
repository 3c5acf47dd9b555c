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
    #[inline]
    fn new(name: Cow<'a, str>, value: FieldValue<'a>) -> Self {
        let plain = plain(&name);
        Field { name, plain, value }
    }
}

/// One field's value in [`JsonFields`]: the payload's own text, or a value
/// the transform set.
#[derive(Clone, Debug)]
pub enum FieldValue<'a> {
    /// The JSON text of the value as it was in the payload (valid JSON,
    /// without the whitespace around it).
    Raw(&'a str),
    /// A value set by the transform.
    Value(Value),
}

impl FieldValue<'_> {
    /// The value as a [`serde_json::Value`] (parsed from the payload's text
    /// when it is raw).
    pub fn to_value(&self) -> Result<Value, String> {
        match self {
            FieldValue::Raw(raw) => {
                serde_json::from_str(raw).map_err(|e| format!("payload is not JSON: {e}"))
            }
            FieldValue::Value(value) => Ok(value.clone()),
        }
    }

    /// The value as a number, `None` when it is not one (like
    /// [`Value::as_f64`], without building a `Value`).
    #[inline]
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            FieldValue::Raw(raw) => serde_json::from_str(raw).ok(),
            FieldValue::Value(value) => value.as_f64(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            FieldValue::Raw(raw) => put(out, raw.as_bytes()),
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
        let parsed = match utf8(payload) {
            Some(text) => match Scanner::object(text) {
                Some(fields) => Ok(JsonFields { fields }),
                None => serde_json::from_str::<JsonFields<'a>>(text),
            },
            None => serde_json::from_slice::<JsonFields<'a>>(payload),
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
    #[inline]
    pub fn get(&self, name: &str) -> Option<&FieldValue<'a>> {
        self.position(name).map(|i| &self.fields[i].value)
    }

    /// The value of field `name` parsed into a [`serde_json::Value`];
    /// `Ok(None)` when there is no such field.
    #[inline]
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
    #[inline]
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
                        FieldValue::Raw(raw) => raw.len(),
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
                put(&mut out, f.name.as_bytes());
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

    #[inline]
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

/// Appends `bytes` to `out`. Runs of up to 16 bytes (most field names and
/// values) are copied as two overlapping fixed-size pieces: in WebAssembly
/// a copy of unknown length is a `memory.copy`, which wasmtime runs as a
/// call out to the host, and `to_vec` makes two per field.
#[inline(always)]
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    match bytes.len() {
        8..=16 => put_overlapping::<8>(out, bytes),
        4..=7 => put_overlapping::<4>(out, bytes),
        n @ 1..=3 => {
            out.push(bytes[0]);
            if n > 1 {
                out.push(bytes[1]);
            }
            if n > 2 {
                out.push(bytes[2]);
            }
        }
        0 => {}
        _ => out.extend_from_slice(bytes),
    }
}

/// Appends `bytes` (`N` to `2 * N` of them) as its first and its last `N`
/// bytes, the second piece written over the end of the first.
#[inline(always)]
fn put_overlapping<const N: usize>(out: &mut Vec<u8>, bytes: &[u8]) {
    let (mut head, mut tail) = ([0; N], [0; N]);
    head.copy_from_slice(&bytes[..N]);
    tail.copy_from_slice(&bytes[bytes.len() - N..]);
    let end = out.len() + bytes.len();
    out.extend_from_slice(&head);
    out.truncate(end - N);
    out.extend_from_slice(&tail);
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
                        value: FieldValue::Raw(raw.get()),
                    });
                }
                Ok(JsonFields { fields })
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

/// Whether `b` can stand in a JSON string as it is: not a quote, a
/// backslash or a control character (what serde_json escapes).
fn plain_byte(b: u8) -> bool {
    b >= 0x20 && b != b'"' && b != b'\\'
}

/// Whether every byte of `text` is a [`plain_byte`], eight at a time.
fn plain(text: &str) -> bool {
    let mut rest = text.as_bytes();
    while let Some((word, tail)) = rest.split_first_chunk::<8>() {
        if special_bytes(u64::from_le_bytes(*word)) != 0 {
            return false;
        }
        rest = tail;
    }
    rest.iter().all(|&b| plain_byte(b))
}

/// The high bit set in each byte of a little-endian word that is not a
/// [`plain_byte`], exactly up to the first one.
#[inline(always)]
fn special_bytes(word: u64) -> u64 {
    zero_bytes(word ^ (ONES * u64::from(b'"')))
        | zero_bytes(word ^ (ONES * u64::from(b'\\')))
        | (word.wrapping_sub(ONES * 0x20) & !word & HIGH)
}

/// `payload` as text, if it is UTF-8. ASCII, the usual payload, is checked
/// sixteen bytes a step; the standard library's check only sees the rest
/// from the first word with a byte above 0x7f. (On `wasm32` its words are
/// `usize`, four bytes, and each step of a loop costs an interruption
/// check in WebAssembly.)
fn utf8(payload: &[u8]) -> Option<&str> {
    const HIGH_16: u128 = u128::from_ne_bytes([0x80; 16]);
    let mut rest = payload;
    while let Some((chunk, tail)) = rest.split_first_chunk::<16>() {
        if u128::from_ne_bytes(*chunk) & HIGH_16 != 0 {
            break;
        }
        rest = tail;
    }
    std::str::from_utf8(rest).ok()?;
    // SAFETY: the bytes before `rest` are ASCII and `rest` is UTF-8; an
    // ASCII byte never ends or starts inside a character, so the whole
    // payload is UTF-8.
    Some(unsafe { std::str::from_utf8_unchecked(payload) })
}

/// Deepest nesting of arrays and objects inside a field's value that
/// [`Scanner`] checks itself; deeper values go to serde_json.
const MAX_DEPTH: usize = 32;

/// `0x01` in every byte of a word.
const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
/// `0x80` in every byte of a word.
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);

/// The high bit set in each byte of `x` that is zero, exactly up to the
/// first one (a borrow can mark later bytes too).
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGH
}

/// The index of the first marked byte of a little-endian word of high-bit
/// marks (not zero).
fn first_byte(marks: u64) -> usize {
    (marks.trailing_zeros() / 8) as usize
}

/// The fast path of [`JsonFields::parse`]: checks a JSON object's text in
/// one pass and cuts it into fields, without serde_json's calls per token.
/// It accepts only what serde_json accepts and cuts it the same way; it
/// leaves to serde_json (by returning `None`) whatever it does not
/// handle: invalid JSON (so that serde_json words the error), a backslash
/// anywhere, values nested deeper than [`MAX_DEPTH`].
struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    /// The fields of `text` when it is a JSON object this scanner handles.
    fn object(text: &'a str) -> Option<Vec<Field<'a>>> {
        let mut s = Scanner { text, at: 0 };
        s.space();
        s.eat(b'{')?;
        s.space();
        // serde_json gives no size hint either: 16 holds a usual telemetry
        // object without growing.
        let mut fields = Vec::with_capacity(16);
        if s.eat(b'}').is_none() {
            loop {
                s.eat(b'"')?;
                let name = s.string()?;
                s.space();
                s.eat(b':')?;
                s.space();
                let start = s.at;
                s.value(MAX_DEPTH)?;
                fields.push(Field {
                    name: Cow::Borrowed(name),
                    // No backslash, and `string` refuses control characters.
                    plain: true,
                    value: FieldValue::Raw(text.get(start..s.at)?),
                });
                s.space();
                match s.next()? {
                    b',' => s.space(),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        s.space();
        (s.at == text.len()).then_some(fields)
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.at += 1)
    }

    fn space(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    /// After an opening quote: the string's text, up to the closing quote
    /// (consumed). `None` at a backslash or a control character.
    fn string(&mut self) -> Option<&'a str> {
        let start = self.at;
        // Eight bytes at a time, straight to the first quote, backslash or
        // control character (one step per byte costs an interruption check
        // per byte in WebAssembly).
        while let Some(word) = self.word() {
            let special = special_bytes(word);
            if special != 0 {
                self.at += first_byte(special);
                return self.string_end(start);
            }
            self.at += 8;
        }
        while self.peek().is_some_and(plain_byte) {
            self.at += 1;
        }
        self.string_end(start)
    }

    /// At the byte that ends a string: its text if it is the closing quote
    /// (consumed), `None` if it is a backslash or a control character.
    fn string_end(&mut self, start: usize) -> Option<&'a str> {
        self.eat(b'"')?;
        self.text.get(start..self.at - 1)
    }

    /// The next eight bytes as a little-endian word, if there are eight.
    fn word(&self) -> Option<u64> {
        let bytes = self.text.as_bytes().get(self.at..)?.first_chunk::<8>()?;
        Some(u64::from_le_bytes(*bytes))
    }

    /// One or more ASCII digits.
    fn digits(&mut self) -> Option<()> {
        self.peek()?.is_ascii_digit().then_some(())?;
        // Eight bytes at a time, straight to the first non-digit. A byte is
        // a digit when it is below 10 after `^ b'0'`; adding 0x76 sets the
        // high bit of the others (their carry only reaches later bytes).
        while let Some(word) = self.word() {
            let y = word ^ (ONES * u64::from(b'0'));
            let other = (y.wrapping_add(ONES * 0x76) | y) & HIGH;
            if other != 0 {
                self.at += first_byte(other);
                return Some(());
            }
            self.at += 8;
        }
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        Some(())
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        if self.eat(b'0').is_none() {
            self.digits()?;
        }
        if self.eat(b'.').is_some() {
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.digits()?;
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.text.as_bytes().get(self.at..end)? == word).then(|| self.at = end)
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.string().map(drop)
            }
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            open @ (b'[' | b'{') => {
                let depth = depth.checked_sub(1)?;
                let close = if open == b'[' { b']' } else { b'}' };
                self.at += 1;
                self.space();
                if self.eat(close).is_some() {
                    return Some(());
                }
                loop {
                    if open == b'{' {
                        self.eat(b'"')?;
                        self.string()?;
                        self.space();
                        self.eat(b':')?;
                        self.space();
                    }
                    self.value(depth)?;
                    self.space();
                    match self.next()? {
                        b',' => self.space(),
                        b if b == close => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
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
        assert!(matches!(fields.remove("a"), Some(FieldValue::Raw("1"))));
        assert!(fields.remove("a").is_none());
        assert_eq!(text(&fields), r#"{"b":"two","c":3,"d":{"k":[1]}}"#);
        assert_eq!(fields.len(), 3);
        assert!(fields.contains("c") && !fields.contains("a"));
    }

    /// The fields serde_json cuts `text` into, as (name, raw value) pairs.
    fn serde_fields(text: &str) -> Option<Vec<(String, String)>> {
        let fields: JsonFields<'_> = serde_json::from_str(text).ok()?;
        Some(
            fields
                .fields
                .iter()
                .map(|f| match &f.value {
                    FieldValue::Raw(raw) => (f.name.to_string(), raw.to_string()),
                    FieldValue::Value(_) => unreachable!("parsed values are raw"),
                })
                .collect(),
        )
    }

    /// What the scanner makes of `text`, in the same shape.
    fn scanned_fields(text: &str) -> Option<Vec<(String, String)>> {
        Some(
            Scanner::object(text)?
                .iter()
                .map(|f| match &f.value {
                    FieldValue::Raw(raw) => (f.name.to_string(), raw.to_string()),
                    FieldValue::Value(_) => unreachable!("scanned values are raw"),
                })
                .collect(),
        )
    }

    /// The scanner accepts only what serde_json accepts, and cuts it the
    /// same way.
    fn agrees(text: &str) {
        if let Some(scanned) = scanned_fields(text) {
            assert_eq!(Some(scanned), serde_fields(text), "{text:?}");
        }
    }

    #[test]
    fn the_scanner_cuts_objects_as_serde_json_does() {
        for text in [
            r#"{}"#,
            " \t\r\n{ } \n",
            r#"{"a":1}"#,
            r#" { "a" : -0.5e+10 , "b":[1,[2,{"c":null}]],"d":{"e":"f"} , "g":true,"h":false}"#,
            "{\"s\":\"plant-03/line-2 \u{e9}\",\"n\":3300,\"f\":-12.25E-3,\"z\":0}",
            r#"{"long string of more than eight bytes":"and a value of more than eight too"}"#,
            r#"{"a":[],"b":{},"c":[ ],"d":{ }}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"":""}"#,
        ] {
            assert!(scanned_fields(text).is_some(), "{text:?}");
            agrees(text);
        }
    }

    #[test]
    fn the_scanner_leaves_invalid_and_unusual_text_to_serde_json() {
        for text in [
            "",
            "[]",
            r#"{"a":1,}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":-}"#,
            r#"{"a":+1}"#,
            r#"{"a":1e}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":{"b"}}"#,
            r#"{"a":1}x"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            "{\"a\":\"tab\tinside\"}",
            r#"{"a\"b":1}"#,
            r#"{"a":"\n"}"#,
            r#"{"a":1"#,
            r#"{"a":"unterminated}"#,
            "{\"a\":\"0123456789\u{1}abcdef\"}",
            "{\"a\":\"01234567\u{1f}\"}",
            r#"{"a":"0123456789abcdef\"}"#,
        ] {
            assert!(scanned_fields(text).is_none(), "{text:?}");
        }
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(40), "]".repeat(40));
        assert!(scanned_fields(&deep).is_none());
        assert_eq!(
            JsonFields::parse(deep.as_bytes())
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[test]
    fn the_scanner_agrees_with_serde_json_on_random_text() {
        // Random texts over JSON's alphabet (xorshift, fixed seed): most are
        // invalid, many valid; the scanner must never accept what
        // serde_json refuses, nor cut it otherwise.
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\"",
            "\"k\"",
            "\"key\":",
            "1",
            "0",
            "-",
            ".",
            "e",
            "+",
            "true",
            "null",
            "fals",
            "\"v\\\"",
            "\\",
            "12.5",
            "\t",
            "\"long value here\"",
            "\u{e9}",
            "\"0123456789abcdef\"",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut accepted = 0;
        for _ in 0..200_000 {
            let mut text = String::from("{");
            let n = (x % 12) as usize;
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                text.push_str(pieces[(x % pieces.len() as u64) as usize]);
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(2) {
                text.push('}');
            }
            agrees(&text);
            accepted += usize::from(scanned_fields(&text).is_some());
        }
        assert!(accepted > 1000, "only {accepted} random texts were valid");
    }

    #[test]
    fn the_scanner_finds_the_byte_that_ends_a_string_or_number_at_any_offset() {
        // The scanner reads strings and digits eight bytes at a time: the
        // byte that ends one must be found at every offset in a word, and
        // in the tail of fewer than eight bytes.
        for n in 0..20 {
            let body = "a\u{e9}0123456789xyz"
                .chars()
                .cycle()
                .take(n)
                .collect::<String>();
            let digits = "1234567890".repeat(3)[..n + 1].to_string();
            for pad in ["", " ", "       "] {
                let ok = format!(r#"{{"{body}":{digits}{pad},"k{body}":"{body}"{pad}}}"#);
                let fields = scanned_fields(&ok).unwrap_or_else(|| panic!("{ok:?}"));
                assert_eq!(fields[0], (body.clone(), digits.clone()), "{ok:?}");
                assert_eq!(fields[1], (format!("k{body}"), format!("\"{body}\"")));
                agrees(&ok);
                for bad in ["\\n", "\u{1}", "\u{1f}", "\t"] {
                    let text = format!(r#"{{"k":"{body}{bad}{pad}"}}"#);
                    assert!(scanned_fields(&text).is_none(), "{text:?}");
                }
                for end in ["x", ".", ".5", "e3", "-", ":", "/"] {
                    agrees(&format!(r#"{{"k":{digits}{end}{pad}}}"#));
                }
            }
        }
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
    fn plain_finds_a_byte_to_escape_at_any_offset_of_any_length() {
        for n in 0..=40 {
            let name: String = "abcdefghij\u{e9}klmnopqrstuvwxyz0123456789"
                .chars()
                .take(n)
                .collect();
            assert!(plain(&name), "{name:?}");
            let chars: Vec<char> = name.chars().collect();
            for i in 0..chars.len() {
                for bad in ['"', '\\', '\n', '\u{0}', '\u{1f}'] {
                    let mut with = chars.clone();
                    with[i] = bad;
                    let with: String = with.into_iter().collect();
                    assert!(!plain(&with), "{with:?}");
                    assert!(!with.bytes().all(plain_byte));
                }
            }
        }
    }

    #[test]
    fn utf8_agrees_with_the_standard_library_at_any_offset() {
        for n in 0..=40 {
            let ascii: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            assert_eq!(utf8(&ascii), std::str::from_utf8(&ascii).ok());
            for i in 0..=n {
                for insert in [
                    &b"\xc3\xa9"[..],
                    b"\xe2\x82\xac",
                    b"\xf0\x9f\x98\x80",
                    b"\xff",
                    b"\xc3",
                    b"\x80",
                    b"\xed\xa0\x80",
                    b"\xf0\x9f\x98",
                ] {
                    let mut text = ascii.clone();
                    text.splice(i..i, insert.iter().copied());
                    assert_eq!(utf8(&text), std::str::from_utf8(&text).ok(), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn put_appends_runs_of_every_length() {
        let source: Vec<u8> = (0..40).collect();
        for n in 0..=source.len() {
            let mut out = b"ab".to_vec();
            put(&mut out, &source[..n]);
            let mut expected = b"ab".to_vec();
            expected.extend_from_slice(&source[..n]);
            assert_eq!(out, expected, "{n} bytes");
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
