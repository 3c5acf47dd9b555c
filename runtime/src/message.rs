//! The message that travels from a source through the transforms to a sink.

use bytes::Bytes;

/// MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Qos {
    /// At most once.
    #[default]
    AtMostOnce,
    /// At least once.
    AtLeastOnce,
    /// Exactly once.
    ExactlyOnce,
}

impl Qos {
    /// 0, 1 or 2.
    pub fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }

    /// From 0, 1 or 2.
    pub fn from_level(level: u8) -> Option<Qos> {
        match level {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }
}

/// One message. Field meanings follow `wit/transform.wit`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Source topic (MQTT).
    pub topic: String,
    /// Kafka topic override set by a transform.
    pub kafka_topic: Option<String>,
    /// Kafka key override set by a transform.
    pub key: Option<Bytes>,
    /// Payload.
    pub payload: Bytes,
    /// MQTT v5 user properties in; Kafka headers out.
    pub headers: Vec<(String, String)>,
    /// Receive time, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// QoS it was received with.
    pub qos: Qos,
    /// Retained flag.
    pub retain: bool,
    /// MQTT v5 content type.
    pub content_type: Option<String>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
