//! One MQTT connection, built on rumqttc's packet codecs (v3.1.1 and v5)
//! with the reading and writing halves decoupled:
//!
//! - the **reader** forwards publishes into a bounded channel and simply
//!   stops reading when that channel is full, so TCP backpressure reaches
//!   the broker whatever its own flow control does (mosquitto 2.0.11 refills
//!   its whole send quota on every PUBACK, for example);
//! - the **writer** sends acks the moment the engine releases them, plus
//!   pings, and is never held up by reading.
//!
//! rumqttc's own event loop serves both halves from one `poll()`; under a
//! flood of incoming publishes it sends about one ack per batch read, which
//! lets un-acked messages pile up far past the in-flight window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{Protocol, TopicConfig};
use crate::message::{now_ms, Message, Qos};

/// A byte stream to the broker (TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What the session needs to connect.
#[derive(Clone)]
pub struct ConnectSpec {
    /// Protocol version.
    pub protocol: Protocol,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS client configuration (for `mqtts://`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Client id.
    pub client_id: String,
    /// Clean start / clean session.
    pub clean_start: bool,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// v5 session expiry.
    pub session_expiry: u32,
    /// v5 receive maximum.
    pub receive_maximum: u16,
    /// Largest packet accepted.
    pub max_packet_size: u32,
    /// Credentials.
    pub login: Option<(String, String)>,
}

/// A decoded packet from the broker, protocol-neutral.
pub enum In {
    /// CONNACK.
    ConnAck {
        /// Broker kept our session.
        session_present: bool,
        /// `None` when accepted, else why not.
        refused: Option<String>,
    },
    /// PUBLISH.
    Publish {
        /// The message.
        msg: Message,
        /// 0, 1 or 2.
        qos: u8,
        /// Packet id.
        pkid: u16,
    },
    /// PUBREL (QoS 2, after our PUBREC).
    PubRel(u16),
    /// SUBACK: the filters the broker refused, by index.
    SubAck(Vec<usize>),
    /// DISCONNECT from the broker.
    Disconnect(String),
    /// Anything else (PINGRESP, ...).
    Other,
}

/// The ack of one settled message.
#[derive(Debug)]
pub struct Ack {
    /// Packet id.
    pub pkid: u16,
    /// QoS 2: send PUBREC.
    pub qos2: bool,
    /// The message's slot of the in-flight window, released once the ack is
    /// written.
    pub slot: crate::connectors::WindowSlot,
}

/// A packet to send, protocol-neutral.
#[derive(Debug)]
pub enum Out {
    /// PUBACKs (QoS 1) or PUBRECs (QoS 2) of settled messages, in order.
    Acks(Vec<Ack>),
    /// Last ack of a QoS 2 publish.
    PubComp(u16),
    /// Subscribe to these filters.
    Subscribe(Vec<TopicConfig>),
    /// Keep-alive ping.
    PingReq,
    /// Clean disconnect.
    Disconnect,
}

fn qos_v4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos_v5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Encodes packets of one protocol version.
pub struct Codec {
    protocol: Protocol,
    max_packet: u32,
}

impl Codec {
    /// A codec for `protocol` accepting packets up to `max_packet` bytes.
    pub fn new(protocol: Protocol, max_packet: u32) -> Self {
        Codec {
            protocol,
            max_packet,
        }
    }

    /// Appends the CONNECT packet for `spec` to `buf`.
    pub fn connect(&self, spec: &ConnectSpec, buf: &mut BytesMut) -> Result<(), String> {
        let keep_alive = spec.keep_alive.as_secs().min(u16::MAX as u64) as u16;
        match self.protocol {
            Protocol::V311 => {
                let mut c = rumqttc::Connect::new(spec.client_id.clone());
                c.keep_alive = keep_alive;
                c.clean_session = spec.clean_start;
                c.login = spec
                    .login
                    .as_ref()
                    .map(|(u, p)| rumqttc::Login::new(u.clone(), p.clone()));
                rumqttc::Packet::Connect(c)
                    .write(buf, usize::MAX)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Protocol::V5 => {
                use rumqttc::v5::mqttbytes::v5::{Connect, ConnectProperties, Login, Packet};
                let mut props = ConnectProperties::new();
                props.session_expiry_interval = Some(spec.session_expiry);
                props.receive_maximum = Some(spec.receive_maximum);
                props.max_packet_size = Some(spec.max_packet_size);
                let c = Connect {
                    keep_alive,
                    client_id: spec.client_id.clone(),
                    clean_start: spec.clean_start,
                    properties: Some(props),
                };
                let login = spec.login.as_ref().map(|(u, p)| Login {
                    username: u.clone(),
                    password: p.clone(),
                });
                Packet::Connect(c, None, login)
                    .write(buf, None)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Appends `out` (with packet id `pkid` where one is needed) to `buf`.
    pub fn encode(&self, out: &Out, pkid: u16, buf: &mut BytesMut) -> Result<(), String> {
        match self.protocol {
            Protocol::V311 => {
                use rumqttc::{PubAck, PubComp, PubRec, Subscribe, SubscribeFilter};
                let p = match out {
                    Out::Acks(acks) => {
                        for ack in acks {
                            let p = if ack.qos2 {
                                rumqttc::Packet::PubRec(PubRec::new(ack.pkid))
                            } else {
                                rumqttc::Packet::PubAck(PubAck::new(ack.pkid))
                            };
                            p.write(buf, usize::MAX).map_err(|e| e.to_string())?;
                        }
                        return Ok(());
                    }
                    Out::PubComp(id) => rumqttc::Packet::PubComp(PubComp::new(*id)),
                    Out::Subscribe(topics) => {
                        let mut s = Subscribe::new_many(
                            topics
                                .iter()
                                .map(|t| SubscribeFilter::new(t.filter.clone(), qos_v4(t.qos))),
                        );
                        s.pkid = pkid;
                        rumqttc::Packet::Subscribe(s)
                    }
                    Out::PingReq => rumqttc::Packet::PingReq,
                    Out::Disconnect => rumqttc::Packet::Disconnect,
                };
                p.write(buf, usize::MAX)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Protocol::V5 => {
                use rumqttc::v5::mqttbytes::v5::{
                    Disconnect, DisconnectReasonCode, Filter, Packet, PingReq, PubAck, PubComp,
                    PubRec, Subscribe,
                };
                let p = match out {
                    Out::Acks(acks) => {
                        for ack in acks {
                            let p = if ack.qos2 {
                                Packet::PubRec(PubRec::new(ack.pkid, None))
                            } else {
                                Packet::PubAck(PubAck::new(ack.pkid, None))
                            };
                            p.write(buf, None).map_err(|e| e.to_string())?;
                        }
                        return Ok(());
                    }
                    Out::PubComp(id) => Packet::PubComp(PubComp::new(*id, None)),
                    Out::Subscribe(topics) => {
                        let mut s = Subscribe::new_many(
                            topics
                                .iter()
                                .map(|t| Filter::new(t.filter.clone(), qos_v5(t.qos))),
                            None,
                        );
                        s.pkid = pkid;
                        Packet::Subscribe(s)
                    }
                    Out::PingReq => Packet::PingReq(PingReq),
                    Out::Disconnect => Packet::Disconnect(Disconnect::new(
                        DisconnectReasonCode::NormalDisconnection,
                    )),
                };
                p.write(buf, None).map(|_| ()).map_err(|e| e.to_string())
            }
        }
    }

    /// Decodes one packet from the front of `buf`; `Ok(None)` when more
    /// bytes are needed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<In>, String> {
        match self.protocol {
            Protocol::V311 => {
                use rumqttc::mqttbytes::Error;
                use rumqttc::{ConnectReturnCode, Packet, SubscribeReasonCode};
                let p = match Packet::read(buf, self.max_packet as usize) {
                    Ok(p) => p,
                    Err(Error::InsufficientBytes(_)) => return Ok(None),
                    Err(e) => return Err(format!("malformed packet from broker: {e}")),
                };
                Ok(Some(match p {
                    Packet::ConnAck(c) => In::ConnAck {
                        session_present: c.session_present,
                        refused: (c.code != ConnectReturnCode::Success)
                            .then(|| format!("{:?}", c.code)),
                    },
                    Packet::Publish(p) => {
                        let qos = p.qos as u8;
                        In::Publish {
                            msg: Message {
                                topic: p.topic,
                                payload: p.payload,
                                timestamp_ms: now_ms(),
                                qos: Qos::from_level(qos).unwrap_or_default(),
                                retain: p.retain,
                                ..Message::default()
                            },
                            qos,
                            pkid: p.pkid,
                        }
                    }
                    Packet::PubRel(r) => In::PubRel(r.pkid),
                    Packet::SubAck(s) => In::SubAck(
                        s.return_codes
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| matches!(c, SubscribeReasonCode::Failure))
                            .map(|(i, _)| i)
                            .collect(),
                    ),
                    Packet::Disconnect => In::Disconnect("broker closed the session".into()),
                    _ => In::Other,
                }))
            }
            Protocol::V5 => {
                use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, SubscribeReasonCode};
                use rumqttc::v5::mqttbytes::Error;
                let p = match Packet::read(buf, Some(self.max_packet)) {
                    Ok(p) => p,
                    Err(Error::InsufficientBytes(_)) => return Ok(None),
                    Err(e) => return Err(format!("malformed packet from broker: {e}")),
                };
                Ok(Some(match p {
                    Packet::ConnAck(c) => In::ConnAck {
                        session_present: c.session_present,
                        refused: (c.code != ConnectReturnCode::Success)
                            .then(|| format!("{:?}", c.code)),
                    },
                    Packet::Publish(p) => {
                        let qos = p.qos as u8;
                        let props = p.properties.unwrap_or_default();
                        In::Publish {
                            msg: Message {
                                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                                kafka_topic: None,
                                key: None,
                                payload: p.payload,
                                headers: props.user_properties,
                                timestamp_ms: now_ms(),
                                qos: Qos::from_level(qos).unwrap_or_default(),
                                retain: p.retain,
                                content_type: props.content_type,
                            },
                            qos,
                            pkid: p.pkid,
                        }
                    }
                    Packet::PubRel(r) => In::PubRel(r.pkid),
                    Packet::SubAck(s) => In::SubAck(
                        s.return_codes
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| !matches!(c, SubscribeReasonCode::Success(_)))
                            .map(|(i, _)| i)
                            .collect(),
                    ),
                    Packet::Disconnect(d) => In::Disconnect(format!("{:?}", d.reason_code)),
                    _ => In::Other,
                }))
            }
        }
    }
}

/// Asks our kernel to acknowledge received TCP data at once while the
/// stream from the broker is slow, and leaves it to delay them again when
/// the stream is busy.
///
/// A broker's socket usually runs Nagle's algorithm (mosquitto's does
/// unless `set_tcp_nodelay` is on): it holds a small PUBLISH until the
/// previous one is acknowledged at the TCP level, and our kernel delays
/// that acknowledgement for an answer to ride on. At-least-once our MQTT
/// acks only leave once Kafka has the messages, so at 9,000 msg/s on
/// loopback the publishes waited up to 11 ms (p99) at the broker for a
/// TCP ACK. Quick ACKs on a busy stream cost the other way: every PUBLISH
/// then comes in a segment and a wake-up of its own (Sluice's CPU per
/// message doubled flat out), hence the switch on the byte rate.
pub struct QuickAcks {
    /// A second handle on the TCP socket (closed with this value).
    socket: Option<socket2::Socket>,
    on: bool,
    window_start: Instant,
    window_bytes: usize,
    last_set: Instant,
}

/// Over how long the byte rate is taken.
const QUICK_ACK_WINDOW: Duration = Duration::from_millis(10);
/// Quick ACKs start below this many bytes a second...
const QUICK_ACK_BELOW: f64 = 4e6;
/// ... and stop from this many.
const QUICK_ACK_UNTIL: f64 = 6e6;
/// How often quick-ACK mode is asked for again (Linux ends it by itself).
const QUICK_ACK_EVERY: Duration = Duration::from_millis(1);

impl QuickAcks {
    fn new(socket: Option<socket2::Socket>) -> Self {
        let now = Instant::now();
        QuickAcks {
            socket,
            on: false,
            window_start: now,
            window_bytes: 0,
            last_set: now,
        }
    }

    /// After a read of `n` bytes from the socket.
    pub fn after_read(&mut self, n: usize) {
        let Some(socket) = &self.socket else { return };
        let now = Instant::now();
        self.window_bytes += n;
        let elapsed = now.duration_since(self.window_start);
        if elapsed >= QUICK_ACK_WINDOW {
            let on = quick_acks_wanted(self.on, self.window_bytes as f64 / elapsed.as_secs_f64());
            if self.on && !on {
                // Back to delayed ACKs.
                let _ = socket.set_tcp_quickack(false);
            }
            self.on = on;
            self.window_start = now;
            self.window_bytes = 0;
        }
        if self.on && now.duration_since(self.last_set) >= QUICK_ACK_EVERY {
            let _ = socket.set_tcp_quickack(true);
            self.last_set = now;
        }
    }
}

/// Whether quick ACKs should be on at `rate` bytes a second, given whether
/// they are (the two thresholds keep a rate near one of them from
/// switching at every window).
fn quick_acks_wanted(on: bool, rate: f64) -> bool {
    rate < if on { QUICK_ACK_UNTIL } else { QUICK_ACK_BELOW }
}

/// Opens the byte stream (TCP, then TLS for `mqtts://`).
pub async fn open(spec: &ConnectSpec) -> Result<(Box<dyn Io>, QuickAcks), String> {
    let tcp = TcpStream::connect((spec.host.as_str(), spec.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", spec.host, spec.port))?;
    let _ = tcp.set_nodelay(true);
    let quick_acks = QuickAcks::new({
        use std::os::fd::AsFd;
        tcp.as_fd()
            .try_clone_to_owned()
            .ok()
            .map(socket2::Socket::from)
    });
    let io: Box<dyn Io> = match &spec.tls {
        None => Box::new(tcp),
        Some(cfg) => {
            use rustls::pki_types::ServerName;
            let name = ServerName::try_from(spec.host.clone())
                .map_err(|e| format!("invalid TLS server name `{}`: {e}", spec.host))?;
            let tls = rumqttc::tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {} failed: {e}", spec.host))?;
            Box::new(tls)
        }
    };
    Ok((io, quick_acks))
}

/// Sends CONNECT and waits for CONNACK; returns the stream, any bytes read
/// past the CONNACK, whether the broker kept our session, and the
/// socket's [`QuickAcks`].
pub async fn handshake(
    spec: &ConnectSpec,
    codec: &Codec,
) -> Result<(Box<dyn Io>, BytesMut, bool, QuickAcks), String> {
    let (mut io, quick_acks) = open(spec).await?;
    let mut buf = BytesMut::new();
    codec.connect(spec, &mut buf)?;
    io.write_all(&buf).await.map_err(|e| e.to_string())?;
    io.flush().await.map_err(|e| e.to_string())?;
    let mut rd = BytesMut::with_capacity(64 * 1024);
    loop {
        if let Some(p) = codec.decode(&mut rd)? {
            return match p {
                In::ConnAck {
                    session_present,
                    refused: None,
                } => Ok((io, rd, session_present, quick_acks)),
                In::ConnAck {
                    refused: Some(why), ..
                } => Err(format!("broker refused the connection: {why}")),
                _ => Err("broker sent another packet before CONNACK".into()),
            };
        }
        if io.read_buf(&mut rd).await.map_err(|e| e.to_string())? == 0 {
            return Err("broker closed the connection during CONNECT".into());
        }
    }
}

/// Writes queued packets as they come, batching whatever is queued, and
/// pings every keep-alive. Ends on `Out::Disconnect`, a write error or when
/// every sender is gone.
pub async fn write_loop(
    mut w: tokio::io::WriteHalf<Box<dyn Io>>,
    codec: Codec,
    mut rx: mpsc::UnboundedReceiver<Out>,
    keep_alive: Duration,
) -> Result<(), String> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut slots = Vec::new();
    let mut pkid: u16 = 0;
    let mut ping = tokio::time::interval(keep_alive.max(Duration::from_secs(1)));
    ping.tick().await;
    loop {
        let first = tokio::select! {
            o = rx.recv() => match o { Some(o) => o, None => return Ok(()) },
            _ = ping.tick() => Out::PingReq,
        };
        let mut done = false;
        let mut next = Some(first);
        while let Some(o) = next.take() {
            if matches!(o, Out::Subscribe(_)) {
                pkid = pkid.wrapping_add(1).max(1);
            }
            codec.encode(&o, pkid, &mut buf)?;
            let disconnect = matches!(o, Out::Disconnect);
            if let Out::Acks(acks) = o {
                slots.extend(acks.into_iter().map(|ack| ack.slot));
            }
            if disconnect {
                done = true;
                break;
            }
            if buf.len() < 64 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        w.write_all(&buf).await.map_err(|e| e.to_string())?;
        w.flush().await.map_err(|e| e.to_string())?;
        buf.clear();
        // The acks are on the wire: their window slots are free.
        slots.clear();
        if done {
            let _ = w.shutdown().await;
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(protocol: Protocol) -> ConnectSpec {
        ConnectSpec {
            protocol,
            host: "127.0.0.1".into(),
            port: 1883,
            tls: None,
            client_id: "c".into(),
            clean_start: false,
            keep_alive: Duration::from_secs(30),
            session_expiry: 3600,
            receive_maximum: 100,
            max_packet_size: 1 << 20,
            login: Some(("u".into(), "p".into())),
        }
    }

    #[test]
    fn quick_acks_are_wanted_for_slow_streams_only_with_hysteresis() {
        assert!(quick_acks_wanted(false, 2e6));
        assert!(!quick_acks_wanted(false, 5e6));
        assert!(quick_acks_wanted(true, 5e6));
        assert!(!quick_acks_wanted(true, 9e6));
    }

    #[test]
    fn packets_round_trip_through_both_codecs() {
        for protocol in [Protocol::V311, Protocol::V5] {
            let codec = Codec::new(protocol, 1 << 20);
            let mut buf = BytesMut::new();
            codec.connect(&spec(protocol), &mut buf).unwrap();
            assert!(!buf.is_empty());
            let ack = |pkid, qos2| Ack {
                pkid,
                qos2,
                slot: crate::connectors::WindowSlot::new(None),
            };
            // A batch of acks encodes as its acks one after the other:
            // PUBACK for QoS 1, PUBREC for QoS 2.
            let mut both = BytesMut::new();
            codec
                .encode(&Out::Acks(vec![ack(7, false), ack(8, true)]), 1, &mut both)
                .unwrap();
            let mut apart = BytesMut::new();
            for one in [ack(7, false), ack(8, true)] {
                codec.encode(&Out::Acks(vec![one]), 1, &mut apart).unwrap();
            }
            assert_eq!(both, apart);
            let second = 2 + usize::from(both[1]);
            assert_eq!((both[0], both[2], both[3]), (0x40, 0, 7), "{both:?}");
            assert_eq!((both[second], both[second + 3]), (0x50, 8), "{both:?}");
            for out in [Out::PubComp(9), Out::PingReq, Out::Disconnect] {
                let mut b = BytesMut::new();
                codec.encode(&out, 1, &mut b).unwrap();
                assert!(b.len() >= 2, "{out:?}");
            }
            // A publish as a broker would send it decodes into a message.
            let mut b = BytesMut::new();
            match protocol {
                Protocol::V311 => {
                    let mut p =
                        rumqttc::Publish::new("a/b", rumqttc::QoS::AtLeastOnce, b"x".to_vec());
                    p.pkid = 5;
                    rumqttc::Packet::Publish(p)
                        .write(&mut b, usize::MAX)
                        .unwrap();
                }
                Protocol::V5 => {
                    use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
                    let props = PublishProperties {
                        user_properties: vec![("k".into(), "v".into())],
                        content_type: Some("application/json".into()),
                        ..Default::default()
                    };
                    let mut p = Publish::new("a/b", qos_v5(1), b"x".to_vec(), Some(props));
                    p.pkid = 5;
                    Packet::Publish(p).write(&mut b, None).unwrap();
                }
            }
            let half = b.split_to(b.len() / 2);
            let mut partial = half.clone();
            assert!(
                codec.decode(&mut partial).unwrap().is_none(),
                "needs more bytes"
            );
            let mut whole = half;
            whole.unsplit(b);
            match codec.decode(&mut whole).unwrap() {
                Some(In::Publish { msg, qos, pkid }) => {
                    assert_eq!(
                        (msg.topic.as_str(), &msg.payload[..], qos, pkid),
                        ("a/b", &b"x"[..], 1, 5)
                    );
                    if protocol == Protocol::V5 {
                        assert_eq!(msg.headers, vec![("k".to_string(), "v".to_string())]);
                        assert_eq!(msg.content_type.as_deref(), Some("application/json"));
                    }
                }
                _ => panic!("expected a publish"),
            }
        }
    }
}
