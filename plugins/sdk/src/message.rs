//! The message a transform receives and returns.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// MQTT quality of service the message was received with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Qos {
    /// QoS 0: fire and forget.
    AtMostOnce,
    /// QoS 1: acknowledged delivery, duplicates possible. The source's default.
    #[default]
    AtLeastOnce,
    /// QoS 2: exactly-once handshake between client and broker.
    ExactlyOnce,
}

/// A named header: an MQTT v5 user property on input, a Kafka record header
/// on output. Names may repeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Header {
    /// Header name (case-sensitive).
    pub name: String,
    /// Header value.
    pub value: String,
}

impl Header {
    /// A header with this name and value.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// One message travelling through the transform chain.
///
/// On input every field describes the MQTT message as received. A transform
/// may change any field: `kafka_topic` and `key` override the sink's
/// templates when set, and `headers` become the Kafka record headers.
///
/// ```
/// use sluice_sdk::Message;
///
/// let msg = Message::new("sensors/dev-42/telemetry", r#"{"temperature": 21.5}"#)
///     .with_header("site", "lab")
///     .with_key("dev-42");
/// assert_eq!(msg.topic_level(1), Some("dev-42"));
/// assert_eq!(msg.header("site"), Some("lab"));
/// assert_eq!(msg.json_value().unwrap()["temperature"], 21.5);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The MQTT topic the message was published on, e.g. `sensors/dev-42/telemetry`.
    pub topic: String,
    /// Kafka topic to write this message to; `None` uses the sink's `topic` template.
    pub kafka_topic: Option<String>,
    /// Kafka record key; `None` uses the sink's `key` template (if any).
    pub key: Option<Vec<u8>>,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// MQTT v5 user properties on input (in the order sent); Kafka headers on output.
    pub headers: Vec<Header>,
    /// Receive time at the runtime, milliseconds since the Unix epoch.
    /// Becomes the Kafka record timestamp.
    pub timestamp_ms: u64,
    /// QoS the message was received with.
    pub qos: Qos,
    /// Whether the broker delivered it as a retained message.
    pub retain: bool,
    /// MQTT v5 content type property, when the publisher set one.
    pub content_type: Option<String>,
}

impl Message {
    /// A message on `topic` with `payload`, no headers, timestamp 0 and QoS 1.
    /// Handy in tests; the host fills in every field for real messages.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// A new message with this one's metadata (topic, Kafka topic, key,
    /// headers, timestamp, QoS, retain flag, content type) and `payload`.
    /// What a splitting transform returns for each part.
    pub fn child(&self, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: self.topic.clone(),
            kafka_topic: self.kafka_topic.clone(),
            key: self.key.clone(),
            payload: payload.into(),
            headers: self.headers.clone(),
            timestamp_ms: self.timestamp_ms,
            qos: self.qos,
            retain: self.retain,
            content_type: self.content_type.clone(),
        }
    }

    /// Parses the payload as JSON into `T`.
    ///
    /// The error text is meant to be returned as is, as the dead-letter
    /// reason: `payload is not JSON: expected value at line 1 column 1`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.payload).map_err(|e| json_error(&e))
    }

    /// Parses the payload as any JSON value.
    pub fn json_value(&self) -> Result<serde_json::Value, String> {
        self.json()
    }

    /// Parses the payload as a JSON object (the usual shape of a telemetry
    /// message). Errors name the type found instead.
    pub fn json_object(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        match self.json_value()? {
            serde_json::Value::Object(map) => Ok(map),
            other => Err(not_an_object(&other)),
        }
    }

    /// The payload as UTF-8 text.
    pub fn payload_str(&self) -> Result<&str, String> {
        std::str::from_utf8(&self.payload).map_err(|e| format!("payload is not UTF-8: {e}"))
    }

    /// Replaces the payload with `value` serialised as compact JSON.
    /// Other fields (including `content_type`) are left as they are.
    pub fn set_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), String> {
        self.payload = serde_json::to_vec(value)
            .map_err(|e| format!("cannot serialise payload as JSON: {e}"))?;
        Ok(())
    }

    /// Builder form of [`set_json`](Self::set_json).
    pub fn with_json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self, String> {
        self.set_json(value)?;
        Ok(self)
    }

    /// Level `index` (0-based) of the MQTT topic: for `sensors/dev-42/telemetry`,
    /// level 1 is `dev-42`. `None` when the topic has fewer levels.
    #[inline]
    pub fn topic_level(&self, index: usize) -> Option<&str> {
        // One pass over the bytes: `split` calls `memchr` per level, which
        // in WebAssembly costs more than a topic level's few bytes.
        let (mut level, mut start) = (0, 0);
        for (i, b) in self.topic.bytes().enumerate() {
            if b == b'/' {
                if level == index {
                    return self.topic.get(start..i);
                }
                level += 1;
                start = i + 1;
            }
        }
        if level == index {
            self.topic.get(start..)
        } else {
            None
        }
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_str())
    }

    /// The values of every header named `name`, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .map(|h| h.value.as_str())
    }

    /// Appends a header (names may repeat).
    pub fn add_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.headers.push(Header::new(name, value));
    }

    /// Sets header `name` to `value`, replacing every header of that name.
    pub fn set_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        self.remove_header(&name);
        self.headers.push(Header::new(name, value));
    }

    /// Removes every header named `name`.
    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|h| h.name != name);
    }

    /// Builder: sets the MQTT topic.
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Builder: sends the message to this Kafka topic instead of the sink's.
    pub fn with_kafka_topic(mut self, topic: impl Into<String>) -> Self {
        self.kafka_topic = Some(topic.into());
        self
    }

    /// Builder: sets the Kafka record key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Builder: replaces the payload.
    pub fn with_payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Builder: appends a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.add_header(name, value);
        self
    }

    /// Builder: sets the timestamp (milliseconds since the Unix epoch).
    pub fn with_timestamp_ms(mut self, timestamp_ms: u64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// Builder: sets the QoS.
    pub fn with_qos(mut self, qos: Qos) -> Self {
        self.qos = qos;
        self
    }

    /// Builder: sets the retain flag.
    pub fn with_retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Builder: sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }
}

/// Shows the payload and key as text when they are UTF-8, which makes test
/// failures readable.
impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Bytes<'a>(&'a [u8]);
        impl fmt::Debug for Bytes<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match std::str::from_utf8(self.0) {
                    Ok(text) => fmt::Debug::fmt(text, f),
                    Err(_) => write!(f, "<{} bytes>", self.0.len()),
                }
            }
        }
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("kafka_topic", &self.kafka_topic)
            .field("key", &self.key.as_deref().map(Bytes))
            .field("payload", &Bytes(&self.payload))
            .field("headers", &self.headers)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("content_type", &self.content_type)
            .finish()
    }
}

/// The dead-letter reason for a payload that does not parse as JSON (or,
/// for a data error, not into the expected type).
pub(crate) fn json_error(e: &serde_json::Error) -> String {
    if e.is_data() {
        format!("payload JSON does not have the expected shape: {e}")
    } else {
        format!("payload is not JSON: {e}")
    }
}

fn not_an_object(value: &serde_json::Value) -> String {
    format!(
        "payload is JSON {}, expected a JSON object",
        json_type_name(value)
    )
}

/// Why `payload` is not a JSON object, as [`Message::json_object`] says it;
/// `None` when it is one.
pub(crate) fn object_error(payload: &[u8]) -> Option<String> {
    match serde_json::from_slice(payload) {
        Err(e) => Some(json_error(&e)),
        Ok(serde_json::Value::Object(_)) => None,
        Ok(other) => Some(not_an_object(&other)),
    }
}

/// `"a string"`, `"a number"`, … for error messages about JSON values.
pub fn json_type_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

// Conversions to and from the WIT types. These only move the strings and
// buffers; nothing is copied.
mod wit {
    use super::{Header, Message, Qos};
    use crate::bindings::sluice::transform::types as wit;

    impl From<wit::Qos> for Qos {
        fn from(qos: wit::Qos) -> Self {
            match qos {
                wit::Qos::AtMostOnce => Qos::AtMostOnce,
                wit::Qos::AtLeastOnce => Qos::AtLeastOnce,
                wit::Qos::ExactlyOnce => Qos::ExactlyOnce,
            }
        }
    }

    impl From<Qos> for wit::Qos {
        fn from(qos: Qos) -> Self {
            match qos {
                Qos::AtMostOnce => wit::Qos::AtMostOnce,
                Qos::AtLeastOnce => wit::Qos::AtLeastOnce,
                Qos::ExactlyOnce => wit::Qos::ExactlyOnce,
            }
        }
    }

    impl From<wit::Message> for Message {
        fn from(m: wit::Message) -> Self {
            Self {
                topic: m.topic,
                kafka_topic: m.kafka_topic,
                key: m.key,
                payload: m.payload,
                headers: m
                    .headers
                    .into_iter()
                    .map(|h| Header {
                        name: h.name,
                        value: h.value,
                    })
                    .collect(),
                timestamp_ms: m.timestamp_ms,
                qos: m.qos.into(),
                retain: m.retain,
                content_type: m.content_type,
            }
        }
    }

    impl From<Message> for wit::Message {
        fn from(m: Message) -> Self {
            Self {
                topic: m.topic,
                kafka_topic: m.kafka_topic,
                key: m.key,
                payload: m.payload,
                headers: m
                    .headers
                    .into_iter()
                    .map(|h| wit::Header {
                        name: h.name,
                        value: h.value,
                    })
                    .collect(),
                timestamp_ms: m.timestamp_ms,
                qos: m.qos.into(),
                retain: m.retain,
                content_type: m.content_type,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[test]
    fn topic_levels_are_zero_based_and_missing_levels_are_none() {
        let msg = Message::new("sensors/dev-42/telemetry", "");
        assert_eq!(msg.topic_level(0), Some("sensors"));
        assert_eq!(msg.topic_level(2), Some("telemetry"));
        assert_eq!(msg.topic_level(3), None);
        for topic in ["", "/", "a//b", "a/", "/a", "plain"] {
            let msg = Message::new(topic, "");
            for i in 0..5 {
                assert_eq!(msg.topic_level(i), topic.split('/').nth(i), "{topic:?} {i}");
            }
        }
    }

    #[test]
    fn json_parses_typed_payloads() {
        #[derive(Deserialize)]
        struct Reading {
            temperature: f64,
        }
        let msg = Message::new("t", r#"{"temperature": 21.5}"#);
        assert_eq!(msg.json::<Reading>().unwrap().temperature, 21.5);
    }

    #[test]
    fn json_error_says_the_payload_is_not_json() {
        let err = Message::new("t", "hello").json_value().unwrap_err();
        assert!(err.starts_with("payload is not JSON: "), "{err}");
        let err = Message::new("t", "").json_value().unwrap_err();
        assert!(err.starts_with("payload is not JSON: "), "{err}");
    }

    #[test]
    fn json_error_distinguishes_wrong_shape_from_not_json() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Reading {
            temperature: f64,
        }
        let err = Message::new("t", r#"{"temperature": "hot"}"#)
            .json::<Reading>()
            .unwrap_err();
        assert!(
            err.starts_with("payload JSON does not have the expected shape: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn json_object_rejects_other_json_types() {
        let err = Message::new("t", "[1,2]").json_object().unwrap_err();
        assert_eq!(err, "payload is JSON an array, expected a JSON object");
        assert_eq!(
            Message::new("t", r#"{"a":1}"#).json_object().unwrap()["a"],
            1
        );
    }

    #[test]
    fn set_json_replaces_the_payload_and_keeps_field_order() {
        let mut msg = Message::new("t", "old").with_content_type("application/json");
        msg.set_json(&json!({"z": 1, "a": 2})).unwrap();
        assert_eq!(msg.payload_str().unwrap(), r#"{"z":1,"a":2}"#);
        assert_eq!(msg.content_type.as_deref(), Some("application/json"));
    }

    #[test]
    fn headers_can_repeat_and_be_replaced() {
        let mut msg = Message::new("t", "")
            .with_header("a", "1")
            .with_header("b", "2")
            .with_header("a", "3");
        assert_eq!(msg.header("a"), Some("1"));
        assert_eq!(msg.header_values("a").collect::<Vec<_>>(), ["1", "3"]);
        assert_eq!(msg.header("missing"), None);
        msg.set_header("a", "4");
        assert_eq!(msg.header_values("a").collect::<Vec<_>>(), ["4"]);
        msg.remove_header("b");
        assert_eq!(msg.headers, [Header::new("a", "4")]);
    }

    #[test]
    fn child_copies_metadata_with_a_new_payload() {
        let parent = Message::new("a/b", "parent")
            .with_kafka_topic("k")
            .with_key("key")
            .with_header("h", "v")
            .with_timestamp_ms(7)
            .with_qos(Qos::ExactlyOnce)
            .with_retain(true)
            .with_content_type("application/json");
        let child = parent.child("child");
        assert_eq!(child.payload, b"child");
        assert_eq!(child.clone().with_payload("parent"), parent);
    }

    #[test]
    fn debug_shows_utf8_payloads_as_text() {
        let text = format!("{:?}", Message::new("t", "{\"a\":1}"));
        assert!(text.contains(r#"payload: "{\"a\":1}""#), "{text}");
        let binary = format!("{:?}", Message::new("t", vec![0xff, 0xfe]));
        assert!(binary.contains("payload: <2 bytes>"), "{binary}");
    }

    #[test]
    fn converting_to_wit_and_back_keeps_every_field() {
        use crate::bindings::sluice::transform::types as wit;
        let msg = Message::new("a/b", "payload")
            .with_kafka_topic("k")
            .with_key(vec![0, 1])
            .with_header("h", "v")
            .with_timestamp_ms(1_700_000_000_000)
            .with_qos(Qos::AtMostOnce)
            .with_retain(true)
            .with_content_type("text/plain");
        let there: wit::Message = msg.clone().into();
        assert_eq!(Message::from(there), msg);
    }
}
