//! A look at the broker at start: which broker it is (from `$SYS`) and, if
//! it is one whose default queue for offline sessions silently drops
//! messages, a warning naming the setting. MQTT has no standard way to read
//! a broker's limits, so this is the best a client can tell. It runs on its
//! own short-lived connection (client id `<client_id>-probe`, clean
//! session) so that a broker refusing `$SYS` cannot disturb the pipeline's
//! session; `probe_broker: false` turns it off.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::session::{handshake, Codec, ConnectSpec, In, Out};
use super::TopicConfig;

/// `$SYS` topics that name the broker and its version.
const VERSION_TOPICS: [&str; 2] = ["$SYS/broker/version", "$SYS/brokers/+/version"];

/// The advice for a broker whose default offline queue is small, by the
/// version text and the topic it came on (EMQX publishes a bare number on
/// `$SYS/brokers/NODE/version`).
fn advice(topic: &str, version: &str) -> Option<&'static str> {
    let v = version.to_ascii_lowercase();
    if v.starts_with("mosquitto") {
        Some("mosquitto keeps at most `max_queued_messages` (default 1000) messages for a disconnected session and silently drops the rest: for zero loss while sluice is down, paused or slow, set `max_queued_messages 0` (and check `max_queued_bytes`) and `persistence true` in mosquitto.conf")
    } else if v.starts_with("emqx") || topic.starts_with("$SYS/brokers/") {
        Some("EMQX keeps at most `mqtt.max_mqueue_len` (default 1000) messages for a disconnected session and drops the oldest beyond it: raise it for zero loss while sluice is down, paused or slow")
    } else {
        None
    }
}

/// Reads the broker's version (topic, text) from `$SYS`, or `None` if it
/// does not say within `wait` (no `$SYS`, not allowed, or another broker).
pub async fn broker_version(spec: &ConnectSpec, wait: Duration) -> Option<(String, String)> {
    let mut spec = spec.clone();
    spec.client_id = format!("{}-probe", spec.client_id);
    spec.clean_start = true;
    spec.session_expiry = 0;
    let codec = Codec::new(spec.protocol, spec.max_packet_size);
    let work = async {
        let (mut io, mut rd, _, _) = handshake(&spec, &codec).await.ok()?;
        let mut buf = BytesMut::new();
        let topics = VERSION_TOPICS
            .iter()
            .map(|f| TopicConfig {
                filter: (*f).to_string(),
                qos: 0,
            })
            .collect();
        codec.encode(&Out::Subscribe(topics), 1, &mut buf).ok()?;
        io.write_all(&buf).await.ok()?;
        let version = loop {
            match codec.decode(&mut rd).ok()? {
                Some(In::Publish { msg, .. }) => {
                    let text = String::from_utf8_lossy(&msg.payload).trim().to_string();
                    break Some((msg.topic.clone(), text));
                }
                Some(In::SubAck(refused)) if refused.len() == VERSION_TOPICS.len() => break None,
                Some(In::Disconnect(_)) => break None,
                Some(_) => continue,
                None => {}
            }
            if io.read_buf(&mut rd).await.ok()? == 0 {
                break None;
            }
        };
        buf.clear();
        if codec.encode(&Out::Disconnect, 0, &mut buf).is_ok() {
            let _ = io.write_all(&buf).await;
            let _ = io.shutdown().await;
        }
        version
    };
    tokio::time::timeout(wait, work).await.ok().flatten()
}

/// Probes each broker URL once per process (a pipeline restarted by a
/// pause, a restart or a reload does not probe again): logs the broker's
/// version and, for a broker with a small default offline queue, the
/// warning.
pub async fn check(pipeline: String, url: String, spec: ConnectSpec) {
    static PROBED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let first = PROBED
        .lock()
        .map(|mut p| p.insert(url.clone()))
        .unwrap_or(false);
    if !first {
        return;
    }
    let Some((topic, version)) = broker_version(&spec, Duration::from_secs(5)).await else {
        tracing::debug!(pipeline = %pipeline, url = %url, "broker version not available from $SYS");
        return;
    };
    tracing::info!(pipeline = %pipeline, url = %url, broker = %version, "MQTT broker");
    if let Some(advice) = advice(&topic, &version) {
        tracing::warn!(pipeline = %pipeline, url = %url, broker = %version, "{advice} (sluice cannot read the broker's settings; `probe_broker: false` silences this)");
    }
}

#[cfg(test)]
mod tests {
    use super::advice;

    #[test]
    fn advice_names_the_setting_of_known_brokers_only() {
        let a = advice("$SYS/broker/version", "mosquitto version 2.0.11");
        assert!(a.is_some_and(|a| a.contains("max_queued_messages 0")));
        let a = advice("$SYS/brokers/emqx@node1/version", "5.8.0");
        assert!(a.is_some_and(|a| a.contains("max_mqueue_len")));
        assert_eq!(advice("$SYS/broker/version", "VerneMQ 1.13"), None);
    }
}
