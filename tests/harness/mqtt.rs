//! Publishing to (and subscribing at) an MQTT broker with rumqttc, in MQTT
//! 3.1.1 or 5. Each call drives its own event loop on a private
//! single-threaded runtime, so tests stay plain `#[test]` functions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::wait::{deadline, wait_until};

/// How long one [`publish`] or [`publish_bulk`] call may take in total.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(300);
/// Un-acked QoS 1/2 publishes a publisher keeps in flight.
const INFLIGHT: u16 = 500;
/// Requests queued between the publishing task and the event loop.
const REQUEST_CHANNEL: usize = 1000;
const MAX_PACKET: usize = 1024 * 1024;

/// The MQTT protocol version a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 5.
    V5,
    /// MQTT 3.1.1.
    V311,
}

/// One MQTT application message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MqttMessage {
    /// Topic name.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// MQTT 5 user properties (ignored, and never received, in 3.1.1).
    pub user_properties: Vec<(String, String)>,
}

impl MqttMessage {
    /// A message without user properties.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> MqttMessage {
        MqttMessage {
            topic: topic.into(),
            payload: payload.into(),
            user_properties: Vec::new(),
        }
    }

    /// Adds an MQTT 5 user property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.user_properties.push((key.into(), value.into()));
        self
    }
}

/// What a publish call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishReport {
    /// Messages published and acknowledged (QoS 1: PUBACK, QoS 2: PUBCOMP;
    /// QoS 0: written to the socket before a clean DISCONNECT).
    pub sent: usize,
    /// Wall-clock time from connect to disconnect.
    pub elapsed: Duration,
}

/// Splits `mqtt://host:port` (or `tcp://`, or bare `host:port`) into parts.
pub fn parse_url(url: &str) -> (String, u16) {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .unwrap_or(url);
    let rest = rest.split('/').next().unwrap_or(rest);
    match rest.rsplit_once(':') {
        Some((host, port)) => (
            host.to_owned(),
            port.parse()
                .unwrap_or_else(|_| panic!("bad port in MQTT url {url}")),
        ),
        None => (rest.to_owned(), 1883),
    }
}

pub(crate) fn client_id(role: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "sluice-test-{role}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime for an MQTT client")
}

/// Publishes `messages` in order at `qos` (0, 1 or 2) and returns once every
/// one is acknowledged (QoS 1: PUBACK, QoS 2: PUBCOMP) or, for QoS 0, written
/// before a clean disconnect. Panics on a connection error or after
/// [`PUBLISH_TIMEOUT`].
pub fn publish(url: &str, protocol: Protocol, qos: u8, messages: &[MqttMessage]) -> PublishReport {
    publish_bulk(url, protocol, qos, messages.len(), |i| messages[i].clone())
}

/// Publishes `count` messages made on demand by `make(index)` (so 100,000
/// messages never sit in memory at once), keeping the event loop driven,
/// with up to a few hundred QoS 1/2 messages in flight. Same completion
/// rules as [`publish`].
pub fn publish_bulk(
    url: &str,
    protocol: Protocol,
    qos: u8,
    count: usize,
    make: impl FnMut(usize) -> MqttMessage,
) -> PublishReport {
    assert!(qos <= 2, "QoS must be 0, 1 or 2, not {qos}");
    let (host, port) = parse_url(url);
    let started = Instant::now();
    let result = runtime().block_on(async {
        let run = async {
            match protocol {
                Protocol::V311 => v311::publish(&host, port, qos, count, make).await,
                Protocol::V5 => v5::publish(&host, port, qos, count, make).await,
            }
        };
        tokio::time::timeout(PUBLISH_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| Err(format!("not done after {PUBLISH_TIMEOUT:?}")))
    });
    if let Err(err) = result {
        panic!("publish {count} messages at QoS {qos} ({protocol:?}) to {url}: {err}");
    }
    PublishReport {
        sent: count,
        elapsed: started.elapsed(),
    }
}

mod v311 {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

    use super::{client_id, MqttMessage, INFLIGHT, MAX_PACKET, REQUEST_CHANNEL};

    pub(super) fn qos(qos: u8) -> QoS {
        match qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }

    pub(super) fn options(role: &str, host: &str, port: u16) -> MqttOptions {
        let mut options = MqttOptions::new(client_id(role), host, port);
        options
            .set_keep_alive(std::time::Duration::from_secs(30))
            .set_clean_session(true)
            .set_inflight(INFLIGHT)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_request_channel_capacity(REQUEST_CHANNEL);
        options
    }

    pub(super) async fn publish(
        host: &str,
        port: u16,
        level: u8,
        count: usize,
        mut make: impl FnMut(usize) -> MqttMessage,
    ) -> Result<(), String> {
        let (client, mut eventloop) = AsyncClient::new(options("pub", host, port), REQUEST_CHANNEL);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(err) => return Err(format!("connect: {err}")),
            }
        }
        let publisher = async {
            for index in 0..count {
                let message = make(index);
                client
                    .publish(message.topic, qos(level), false, message.payload)
                    .await
                    .map_err(|err| format!("queue message {index}: {err}"))?;
            }
            Ok::<(), String>(())
        };
        let driver = async {
            let mut done = 0;
            while done < count {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) if level == 1 => done += 1,
                    Ok(Event::Incoming(Packet::PubComp(_))) if level == 2 => done += 1,
                    Ok(Event::Outgoing(Outgoing::Publish(_))) if level == 0 => done += 1,
                    Ok(_) => {}
                    Err(err) => return Err(format!("after {done} acknowledged: {err}")),
                }
            }
            Ok(())
        };
        tokio::try_join!(publisher, driver)?;
        client
            .disconnect()
            .await
            .map_err(|err| format!("disconnect: {err}"))?;
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
    }
}

mod v5 {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use rumqttc::Outgoing;

    use super::{client_id, MqttMessage, INFLIGHT, MAX_PACKET, REQUEST_CHANNEL};

    pub(super) fn qos(qos: u8) -> QoS {
        match qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }

    pub(super) fn options(role: &str, host: &str, port: u16) -> MqttOptions {
        let mut options = MqttOptions::new(client_id(role), host, port);
        options
            .set_keep_alive(std::time::Duration::from_secs(30))
            .set_clean_start(true)
            .set_outgoing_inflight_upper_limit(INFLIGHT)
            .set_max_packet_size(Some(MAX_PACKET as u32))
            .set_request_channel_capacity(REQUEST_CHANNEL);
        options
    }

    pub(super) async fn publish(
        host: &str,
        port: u16,
        level: u8,
        count: usize,
        mut make: impl FnMut(usize) -> MqttMessage,
    ) -> Result<(), String> {
        let (client, mut eventloop) = AsyncClient::new(options("pub", host, port), REQUEST_CHANNEL);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(err) => return Err(format!("connect: {err}")),
            }
        }
        let publisher = async {
            for index in 0..count {
                let message = make(index);
                let properties = PublishProperties {
                    user_properties: message.user_properties,
                    ..PublishProperties::default()
                };
                client
                    .publish_with_properties(
                        message.topic,
                        qos(level),
                        false,
                        message.payload,
                        properties,
                    )
                    .await
                    .map_err(|err| format!("queue message {index}: {err}"))?;
            }
            Ok::<(), String>(())
        };
        let driver = async {
            let mut done = 0;
            while done < count {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) if level == 1 => done += 1,
                    Ok(Event::Incoming(Packet::PubComp(_))) if level == 2 => done += 1,
                    Ok(Event::Outgoing(Outgoing::Publish(_))) if level == 0 => done += 1,
                    Ok(_) => {}
                    Err(err) => return Err(format!("after {done} acknowledged: {err}")),
                }
            }
            Ok(())
        };
        tokio::try_join!(publisher, driver)?;
        client
            .disconnect()
            .await
            .map_err(|err| format!("disconnect: {err}"))?;
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
    }
}

/// A subscriber running on its own thread, collecting every message it
/// receives (auto-acked). Stops and disconnects on drop.
#[derive(Debug)]
pub struct MqttSubscriber {
    received: Arc<Mutex<Vec<MqttMessage>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MqttSubscriber {
    /// Connects (clean session), subscribes to `filter` at `qos` and returns
    /// once the broker acknowledged the subscription. Panics if that does
    /// not happen within 10 s.
    pub fn start(url: &str, protocol: Protocol, filter: &str, qos: u8) -> MqttSubscriber {
        let (host, port) = parse_url(url);
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let thread = {
            let received = Arc::clone(&received);
            let stop = Arc::clone(&stop);
            let filter = filter.to_owned();
            std::thread::spawn(move || {
                let run = async {
                    match protocol {
                        Protocol::V311 => {
                            subscribe_v311(&host, port, &filter, qos, &received, &stop, ready_tx)
                                .await
                        }
                        Protocol::V5 => {
                            subscribe_v5(&host, port, &filter, qos, &received, &stop, ready_tx)
                                .await
                        }
                    }
                };
                runtime().block_on(run);
            })
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("subscribe to {filter} on {url}: {err}"),
            Err(_) => panic!("subscribe to {filter} on {url}: no SUBACK within 10 s"),
        }
        MqttSubscriber {
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until at least `count` messages arrived or `timeout` passed;
    /// returns everything received so far.
    pub fn wait_for(&self, count: usize, timeout: Duration) -> Vec<MqttMessage> {
        wait_until(deadline(timeout), || self.received().len() >= count);
        self.received()
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<MqttMessage> {
        self.received.lock().expect("subscriber lock").clone()
    }
}

impl Drop for MqttSubscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn subscribe_v311(
    host: &str,
    port: u16,
    filter: &str,
    level: u8,
    received: &Mutex<Vec<MqttMessage>>,
    stop: &std::sync::atomic::AtomicBool,
    ready: mpsc::Sender<Result<(), String>>,
) {
    use rumqttc::{AsyncClient, Event, Packet};
    let (client, mut eventloop) = AsyncClient::new(v311::options("sub", host, port), 100);
    if let Err(err) = client.subscribe(filter, v311::qos(level)).await {
        let _ = ready.send(Err(err.to_string()));
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(50), eventloop.poll()).await {
            Err(_) => {}
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                let _ = ready.send(Ok(()));
            }
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                received.lock().expect("subscriber lock").push(MqttMessage {
                    topic: publish.topic.clone(),
                    payload: publish.payload.to_vec(),
                    user_properties: Vec::new(),
                });
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                let _ = ready.send(Err(err.to_string()));
                return;
            }
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
}

async fn subscribe_v5(
    host: &str,
    port: u16,
    filter: &str,
    level: u8,
    received: &Mutex<Vec<MqttMessage>>,
    stop: &std::sync::atomic::AtomicBool,
    ready: mpsc::Sender<Result<(), String>>,
) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event};
    let (client, mut eventloop) = AsyncClient::new(v5::options("sub", host, port), 100);
    if let Err(err) = client.subscribe(filter, v5::qos(level)).await {
        let _ = ready.send(Err(err.to_string()));
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(50), eventloop.poll()).await {
            Err(_) => {}
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                let _ = ready.send(Ok(()));
            }
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                received.lock().expect("subscriber lock").push(MqttMessage {
                    topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                    payload: publish.payload.to_vec(),
                    user_properties: publish
                        .properties
                        .map(|properties| properties.user_properties)
                        .unwrap_or_default(),
                });
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                let _ = ready.send(Err(err.to_string()));
                return;
            }
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
}
