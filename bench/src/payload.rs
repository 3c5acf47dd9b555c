//! The benchmark's messages: ~185 bytes of JSON device telemetry with a
//! sequence number and the publish time, on `sensors/dev-NNNN/telemetry`.

use std::time::{SystemTime, UNIX_EPOCH};

use sluice_tests::MqttMessage;

/// The MQTT topic filter every subscriber of the benchmark uses.
pub const FILTER: &str = "sensors/+/telemetry";

/// Microseconds since the Unix epoch, now. Publisher and verifier run in the
/// same process, so they read the same clock.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Message number `seq` of device `seq % devices`, stamped with the time it
/// is made (the publisher makes it just before handing it to the MQTT
/// client).
pub fn telemetry(seq: usize, devices: usize) -> MqttMessage {
    let device = seq % devices.max(1);
    let payload = format!(
        r#"{{"seq":{seq},"ts_us":{ts},"temperature_f":{t:.1},"humidity":{h:.1},"pressure_hpa":{p:.1},"battery_mv":{b},"rssi":{r},"firmware":"1.4.2","status":"ok","site":"plant-{site:02}/line-{line}"}}"#,
        ts = now_us(),
        t = 50.0 + (seq % 500) as f64 / 10.0,
        h = 30.0 + (seq % 400) as f64 / 10.0,
        p = 990.0 + (seq % 500) as f64 / 10.0,
        b = 3300 + seq % 900,
        r = -40 - (seq % 50) as i64,
        site = device % 17,
        line = device % 5,
    );
    MqttMessage::new(format!("sensors/dev-{device:04}/telemetry"), payload)
}

/// What the verifier reads back from a Kafka record: every case keeps the
/// fields `seq` and `ts_us` (the transforms and bridges leave them alone).
#[derive(Debug, serde::Deserialize)]
pub struct Stamp {
    /// Sequence number.
    pub seq: i64,
    /// Publish time, µs since the Unix epoch.
    pub ts_us: u64,
}

impl Stamp {
    /// Parses a record payload; `None` if it is not JSON with both fields.
    pub fn parse(payload: &[u8]) -> Option<Stamp> {
        serde_json::from_slice(payload).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_is_realistic_json_with_the_stamp() {
        let msg = telemetry(123_456, 1000);
        assert_eq!(msg.topic, "sensors/dev-0456/telemetry");
        let len = msg.payload.len();
        assert!((150..=200).contains(&len), "{len} bytes");
        let stamp = Stamp::parse(&msg.payload).expect("stamp");
        assert_eq!(stamp.seq, 123_456);
        assert!(stamp.ts_us > 1_600_000_000_000_000);
    }
}
