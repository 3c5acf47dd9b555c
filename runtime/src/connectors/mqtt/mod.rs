//! MQTT source (rumqttc): v5 (default) or 3.1.1, manual acks, persistent
//! session, reconnect with capped jittered backoff.
//!
//! Acks: every message carries a token `(connection generation, QoS, packet
//! id)`. After a reconnect the broker redelivers whatever was not acked, so
//! acks for messages of an earlier connection are dropped rather than sent
//! (a stale packet id could otherwise ack a different, newer message).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use rand::RngExt;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::{AckToken, Acker, ConnectorError, Context, Inbound, SourceHandle};
use crate::config::{Delivery, FieldError, Secret};
use crate::message::{now_ms, Message, Qos};

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Protocol {
    /// MQTT 5.
    #[default]
    #[serde(rename = "v5", alias = "5")]
    V5,
    /// MQTT 3.1.1.
    #[serde(rename = "v3.1.1", alias = "3.1.1", alias = "v311")]
    V311,
}

/// One subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Topic filter, wildcards allowed; `$share/GROUP/filter` for shared
    /// subscriptions.
    pub filter: String,
    /// Subscription QoS: 0, 1 or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
}

fn default_qos() -> u8 {
    1
}

/// TLS settings for `mqtts://` URLs.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) to trust; default: the system bundle.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate, for mutual TLS.
    pub client_cert_file: Option<std::path::PathBuf>,
    /// PEM client key, for mutual TLS.
    pub client_key_file: Option<std::path::PathBuf>,
}

/// Reconnect backoff.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// First wait after a failure, ms.
    pub initial_backoff_ms: u64,
    /// Cap of the exponential backoff, ms.
    pub max_backoff_ms: u64,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 30_000,
        }
    }
}

/// `source.mqtt` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Client id, stable across restarts so the broker keeps the session.
    pub client_id: String,
    /// Protocol version.
    #[serde(default)]
    pub protocol: Protocol,
    /// Subscriptions.
    pub topics: Vec<TopicConfig>,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Keep-alive interval, seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// v5 session expiry, seconds (how long the broker keeps our session and
    /// queued messages while we are away).
    #[serde(default = "default_session_expiry")]
    pub session_expiry_secs: u32,
    /// Start a clean session (drops anything the broker kept for us).
    #[serde(default)]
    pub clean_start: bool,
    /// Largest packet accepted, bytes.
    #[serde(default = "default_max_packet")]
    pub max_packet_size: u32,
    /// TLS settings (for `mqtts://`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Reconnect backoff.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
}

fn default_keep_alive() -> u64 {
    30
}
fn default_session_expiry() -> u32 {
    3600
}
fn default_max_packet() -> u32 {
    1024 * 1024
}

struct Endpoint {
    host: String,
    port: u16,
    tls: bool,
}

fn parse_url(url: &str) -> Result<Endpoint, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(format!(
            "invalid MQTT url `{url}`: expected mqtt://HOST:PORT or mqtts://HOST:PORT"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("invalid port `{p}` in MQTT url `{url}`"))?,
        ),
        _ if !rest.is_empty() && !rest.contains(':') => (rest, if tls { 8883 } else { 1883 }),
        _ => return Err(format!("invalid MQTT url `{url}`: missing host")),
    };
    Ok(Endpoint {
        host: host.trim_matches(['[', ']']).to_string(),
        port,
        tls,
    })
}

impl MqttConfig {
    /// Checks that need no broker. `delivery` decides whether settings that
    /// would break the at-least-once promise are errors.
    pub fn check(&self, delivery: Delivery) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Err(e) = parse_url(&self.url) {
            errs.push(FieldError::new("url", e));
        }
        if self.client_id.is_empty() {
            errs.push(FieldError::new(
                "client_id",
                "client_id must not be empty: the broker keeps un-acked messages per client id",
            ));
        }
        if self.topics.is_empty() {
            errs.push(FieldError::new(
                "topics",
                "at least one topic filter is required",
            ));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if let Err(e) = check_filter(&t.filter) {
                errs.push(FieldError::new(format!("topics[{i}].filter"), e));
            }
            if t.qos > 2 {
                errs.push(FieldError::new(
                    format!("topics[{i}].qos"),
                    format!("qos must be 0, 1 or 2, got {}", t.qos),
                ));
            } else if t.qos == 0 && delivery == Delivery::AtLeastOnce {
                errs.push(FieldError::new(
                    format!("topics[{i}].qos"),
                    "qos 0 cannot be acknowledged, so at-least-once delivery is impossible: use qos 1 or 2, or set `delivery: at-most-once`",
                ));
            }
        }
        if delivery == Delivery::AtLeastOnce {
            if self.protocol == Protocol::V5 && self.session_expiry_secs == 0 {
                errs.push(FieldError::new(
                    "session_expiry_secs",
                    "session_expiry_secs 0 ends the session at disconnect and loses un-acked messages: set it above 0, or set `delivery: at-most-once`",
                ));
            }
            if self.clean_start {
                errs.push(FieldError::new(
                    "clean_start",
                    "clean_start: true discards messages the broker kept for this client: remove it, or set `delivery: at-most-once`",
                ));
            }
        }
        if self.keep_alive_secs < 5 || self.keep_alive_secs > 65_535 {
            errs.push(FieldError::new(
                "keep_alive_secs",
                "keep_alive_secs must be between 5 and 65535",
            ));
        }
        if self.username.is_none() && self.password.is_some() {
            errs.push(FieldError::new(
                "password",
                "password given without username",
            ));
        }
        if let Some(tls) = &self.tls {
            for (field, file) in [
                ("tls.ca_file", &tls.ca_file),
                ("tls.client_cert_file", &tls.client_cert_file),
                ("tls.client_key_file", &tls.client_key_file),
            ] {
                if let Some(f) = file {
                    if !f.is_file() {
                        errs.push(FieldError::new(
                            field,
                            format!("file `{}` not found", f.display()),
                        ));
                    }
                }
            }
            if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
                errs.push(FieldError::new(
                    "tls",
                    "client_cert_file and client_key_file must be given together",
                ));
            }
        }
        errs
    }
}

fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("topic filter must not be empty".into());
    }
    let body = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, f)) if !group.is_empty() && !f.is_empty() => f,
            _ => {
                return Err(format!(
                    "invalid shared subscription `{filter}`: expected $share/GROUP/FILTER"
                ))
            }
        },
        None => filter,
    };
    let levels: Vec<&str> = body.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i != levels.len() - 1) {
            return Err(format!(
                "invalid topic filter `{filter}`: `#` must be a whole last level"
            ));
        }
        if l.contains('+') && *l != "+" {
            return Err(format!(
                "invalid topic filter `{filter}`: `+` must be a whole level"
            ));
        }
    }
    Ok(())
}

const QOS_SHIFT: u64 = 16;
const GEN_SHIFT: u64 = 32;

fn token(generation: u64, qos: u8, pkid: u16) -> AckToken {
    (generation << GEN_SHIFT) | ((qos as u64) << QOS_SHIFT) | pkid as u64
}

/// The two rumqttc clients behind one face.
#[derive(Clone)]
enum Client {
    V5(rumqttc::v5::AsyncClient),
    V3(rumqttc::AsyncClient),
}

impl Client {
    fn try_ack(&self, qos: u8, pkid: u16) -> Result<(), String> {
        match self {
            Client::V5(c) => {
                use rumqttc::v5::mqttbytes::{v5::Publish, QoS};
                let q = if qos == 2 {
                    QoS::ExactlyOnce
                } else {
                    QoS::AtLeastOnce
                };
                let mut p = Publish::new("", q, Bytes::new(), None);
                p.pkid = pkid;
                c.try_ack(&p).map_err(|e| e.to_string())
            }
            Client::V3(c) => {
                use rumqttc::{Publish, QoS};
                let q = if qos == 2 {
                    QoS::ExactlyOnce
                } else {
                    QoS::AtLeastOnce
                };
                let mut p = Publish::new("", q, Vec::new());
                p.pkid = pkid;
                c.try_ack(&p).map_err(|e| e.to_string())
            }
        }
    }

    async fn subscribe(&self, topics: &[TopicConfig]) -> Result<(), String> {
        match self {
            Client::V5(c) => {
                use rumqttc::v5::mqttbytes::v5::Filter;
                let filters = topics
                    .iter()
                    .map(|t| Filter::new(t.filter.clone(), qos5(t.qos)));
                c.subscribe_many(filters).await.map_err(|e| e.to_string())
            }
            Client::V3(c) => {
                let filters = topics
                    .iter()
                    .map(|t| rumqttc::SubscribeFilter::new(t.filter.clone(), qos3(t.qos)));
                c.subscribe_many(filters).await.map_err(|e| e.to_string())
            }
        }
    }

    async fn disconnect(&self) {
        let _ = match self {
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V3(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn qos3(q: u8) -> rumqttc::QoS {
    use rumqttc::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

struct MqttAcker {
    client: Client,
    generation: Arc<AtomicU64>,
    manual: bool,
}

impl Acker for MqttAcker {
    fn ack(&self, token: AckToken) {
        if !self.manual {
            return;
        }
        let qos = ((token >> QOS_SHIFT) & 0xff) as u8;
        if qos == 0 {
            return;
        }
        if token >> GEN_SHIFT != self.generation.load(Ordering::Acquire) {
            // Redelivered by the broker on the new connection; acked then.
            return;
        }
        if let Err(e) = self.client.try_ack(qos, token as u16) {
            tracing::warn!(error = %e, "could not queue MQTT ack; the broker will redeliver");
        }
    }
}

/// Shared state between the event-loop task and the handle.
struct Shared {
    draining: AtomicBool,
}

/// Starts the MQTT source task.
pub fn start(cfg: &MqttConfig, ctx: &Context) -> Result<SourceHandle, ConnectorError> {
    let ep = parse_url(&cfg.url).map_err(ConnectorError)?;
    let manual = ctx.at_least_once;
    let transport = if ep.tls {
        Some(tls_transport(cfg.tls.as_ref())?)
    } else {
        None
    };
    // Request channel: acks must never block, and at most `max_in_flight`
    // can be outstanding.
    let cap = ctx.max_in_flight * 2 + 64;
    let keep_alive = Duration::from_secs(cfg.keep_alive_secs);
    let (client, events) = match cfg.protocol {
        Protocol::V5 => {
            let mut o =
                rumqttc::v5::MqttOptions::new(cfg.client_id.clone(), ep.host.clone(), ep.port);
            o.set_keep_alive(keep_alive)
                .set_clean_start(cfg.clean_start)
                .set_manual_acks(manual)
                .set_max_packet_size(Some(cfg.max_packet_size))
                .set_receive_maximum(Some(ctx.max_in_flight.min(65_535) as u16));
            if !cfg.clean_start || cfg.session_expiry_secs > 0 {
                o.set_session_expiry_interval(Some(cfg.session_expiry_secs));
            }
            if let Some(u) = &cfg.username {
                o.set_credentials(
                    u.clone(),
                    cfg.password.as_ref().map(|p| p.expose()).unwrap_or(""),
                );
            }
            if let Some(t) = transport.clone() {
                o.set_transport(t);
            }
            let (c, el) = rumqttc::v5::AsyncClient::new(o, cap);
            (Client::V5(c), EventSource::V5(Box::new(el)))
        }
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(cfg.client_id.clone(), ep.host.clone(), ep.port);
            o.set_keep_alive(keep_alive)
                .set_clean_session(cfg.clean_start)
                .set_manual_acks(manual)
                .set_max_packet_size(cfg.max_packet_size as usize, cfg.max_packet_size as usize);
            if let Some(u) = &cfg.username {
                o.set_credentials(
                    u.clone(),
                    cfg.password.as_ref().map(|p| p.expose()).unwrap_or(""),
                );
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, el) = rumqttc::AsyncClient::new(o, cap);
            (Client::V3(c), EventSource::V3(Box::new(el)))
        }
    };
    let generation = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel(ctx.max_in_flight + 16);
    let (connected_tx, connected_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        draining: AtomicBool::new(false),
    });
    let task = tokio::spawn(run_loop(LoopState {
        events,
        client: client.clone(),
        topics: cfg.topics.clone(),
        generation: generation.clone(),
        tx,
        connected: connected_tx,
        shared: shared.clone(),
        ctx: ctx.clone(),
        reconnect: cfg.reconnect.clone(),
        url: cfg.url.clone(),
    }));
    let acker = Arc::new(MqttAcker {
        client: client.clone(),
        generation,
        manual,
    });
    let stop_shared = shared.clone();
    Ok(SourceHandle {
        messages: rx,
        acker,
        connected: connected_rx,
        stop_intake: Box::new(move || stop_shared.draining.store(true, Ordering::Release)),
        close: Box::new(move || {
            async move {
                shared.draining.store(true, Ordering::Release);
                client.disconnect().await;
                // The loop ends once the disconnect went out (or failed).
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            }
            .boxed()
        }),
    })
}

fn tls_transport(tls: Option<&TlsConfig>) -> Result<rumqttc::Transport, ConnectorError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| ConnectorError(format!("cannot read `{}`: {e}", p.display())))
    };
    let default_ca = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt");
    let ca = match tls.and_then(|t| t.ca_file.as_deref()) {
        Some(p) => read(p)?,
        None if default_ca.is_file() => read(default_ca)?,
        None => {
            return Err(ConnectorError(
                "mqtts:// needs tls.ca_file (no system CA bundle found)".into(),
            ))
        }
    };
    let client_auth = match tls {
        Some(TlsConfig {
            client_cert_file: Some(c),
            client_key_file: Some(k),
            ..
        }) => Some((read(c)?, read(k)?)),
        _ => None,
    };
    Ok(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        },
    ))
}

enum EventSource {
    V5(Box<rumqttc::v5::EventLoop>),
    V3(Box<rumqttc::EventLoop>),
}

/// What one poll of the event loop produced, protocol-neutral.
enum Polled {
    ConnAck { session_present: bool },
    Publish { msg: Message, qos: u8, pkid: u16 },
    Disconnected,
    Other,
}

impl EventSource {
    async fn poll(&mut self) -> Result<Polled, String> {
        match self {
            EventSource::V5(el) => {
                use rumqttc::v5::mqttbytes::v5::Packet;
                use rumqttc::v5::Event;
                match el.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet::ConnAck(c)) => Ok(Polled::ConnAck {
                        session_present: c.session_present,
                    }),
                    Event::Incoming(Packet::Publish(p)) => {
                        let qos = p.qos as u8;
                        let pkid = p.pkid;
                        let props = p.properties.unwrap_or_default();
                        let msg = Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            kafka_topic: None,
                            key: None,
                            payload: p.payload,
                            headers: props.user_properties,
                            timestamp_ms: now_ms(),
                            qos: Qos::from_level(qos).unwrap_or_default(),
                            retain: p.retain,
                            content_type: props.content_type,
                        };
                        Ok(Polled::Publish { msg, qos, pkid })
                    }
                    Event::Incoming(Packet::Disconnect(_)) => Ok(Polled::Disconnected),
                    Event::Outgoing(rumqttc::Outgoing::Disconnect) => Ok(Polled::Disconnected),
                    _ => Ok(Polled::Other),
                }
            }
            EventSource::V3(el) => {
                use rumqttc::{Event, Packet};
                match el.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet::ConnAck(c)) => Ok(Polled::ConnAck {
                        session_present: c.session_present,
                    }),
                    Event::Incoming(Packet::Publish(p)) => {
                        let qos = p.qos as u8;
                        let msg = Message {
                            topic: p.topic,
                            payload: p.payload,
                            timestamp_ms: now_ms(),
                            qos: Qos::from_level(qos).unwrap_or_default(),
                            retain: p.retain,
                            ..Message::default()
                        };
                        Ok(Polled::Publish {
                            msg,
                            qos,
                            pkid: p.pkid,
                        })
                    }
                    Event::Incoming(Packet::Disconnect) => Ok(Polled::Disconnected),
                    Event::Outgoing(rumqttc::Outgoing::Disconnect) => Ok(Polled::Disconnected),
                    _ => Ok(Polled::Other),
                }
            }
        }
    }
}

struct LoopState {
    events: EventSource,
    client: Client,
    topics: Vec<TopicConfig>,
    generation: Arc<AtomicU64>,
    tx: mpsc::Sender<Inbound>,
    connected: watch::Sender<bool>,
    shared: Arc<Shared>,
    ctx: Context,
    reconnect: ReconnectConfig,
    url: String,
}

async fn run_loop(mut s: LoopState) {
    let pipeline = s.ctx.pipeline.clone();
    let mut backoff = Duration::from_millis(s.reconnect.initial_backoff_ms.max(1));
    let max_backoff = Duration::from_millis(s.reconnect.max_backoff_ms.max(1));
    let mut first_connect = true;
    loop {
        match s.events.poll().await {
            Ok(Polled::ConnAck { session_present }) => {
                let gen = s.generation.fetch_add(1, Ordering::AcqRel) + 1;
                tracing::info!(pipeline = %pipeline, url = %s.url, session_present, generation = gen, "MQTT connected");
                s.connected.send_replace(true);
                s.ctx.metrics.mqtt_connected.set(1);
                backoff = Duration::from_millis(s.reconnect.initial_backoff_ms.max(1));
                if !session_present || first_connect {
                    // Queue the subscribe without awaiting the event loop we
                    // are running in; the request channel has room.
                    let client = s.client.clone();
                    let topics = s.topics.clone();
                    let p = pipeline.clone();
                    tokio::spawn(async move {
                        if let Err(e) = client.subscribe(&topics).await {
                            tracing::error!(pipeline = %p, error = %e, "MQTT subscribe failed");
                        }
                    });
                }
                first_connect = false;
            }
            Ok(Polled::Publish { msg, qos, pkid }) => {
                if s.shared.draining.load(Ordering::Acquire) {
                    // Not acked: the broker redelivers it to our next session.
                    continue;
                }
                let gen = s.generation.load(Ordering::Acquire);
                let inbound = Inbound {
                    msg,
                    token: token(gen, qos, pkid),
                };
                if s.tx.send(inbound).await.is_err() {
                    break;
                }
            }
            Ok(Polled::Disconnected) => {
                if s.shared.draining.load(Ordering::Acquire) {
                    break;
                }
            }
            Ok(Polled::Other) => {}
            Err(e) => {
                s.connected.send_replace(false);
                s.ctx.metrics.mqtt_connected.set(0);
                if s.shared.draining.load(Ordering::Acquire) {
                    break;
                }
                s.ctx.metrics.mqtt_reconnects.inc();
                let jitter = rand::rng().random_range(0.5..1.0);
                let wait = backoff.mul_f64(jitter);
                tracing::warn!(pipeline = %pipeline, url = %s.url, error = %e, retry_in_ms = wait.as_millis() as u64, "MQTT connection failed");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
    s.connected.send_replace(false);
    s.ctx.metrics.mqtt_connected.set(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let e = parse_url("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("127.0.0.1", 1884, false));
        let e = parse_url("mqtts://broker.example").unwrap();
        assert_eq!((e.port, e.tls), (8883, true));
        assert!(parse_url("tcp://x:1").is_err());
        assert!(parse_url("mqtt://x:notaport").is_err());
    }

    #[test]
    fn filters_are_checked() {
        assert!(check_filter("sensors/+/telemetry").is_ok());
        assert!(check_filter("sensors/#").is_ok());
        assert!(check_filter("$share/g/sensors/#").is_ok());
        assert!(check_filter("sensors/#/x").is_err());
        assert!(check_filter("sensors/a+").is_err());
        assert!(check_filter("$share/g").is_err());
    }

    #[test]
    fn tokens_round_trip() {
        let t = token(7, 2, 65_000);
        assert_eq!(t >> GEN_SHIFT, 7);
        assert_eq!((t >> QOS_SHIFT) & 0xff, 2);
        assert_eq!(t as u16, 65_000);
    }
}
