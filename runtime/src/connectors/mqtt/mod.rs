//! MQTT source (rumqttc): v5 (default) or 3.1.1, manual acks, persistent
//! session, reconnect with capped jittered backoff.
//!
//! Acks: every message carries a token `(connection generation, QoS, packet
//! id)`. After a reconnect the broker redelivers whatever was not acked, so
//! acks for messages of an earlier connection are dropped rather than sent
//! (a stale packet id could otherwise ack a different, newer message).

mod probe;
mod session;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use rand::RngExt;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use super::{AckToken, Acker, ConnectorError, Context, Inbound, SourceHandle, WindowSlot};
use crate::config::{Delivery, FieldError, Secret};
use session::{handshake, write_loop, Ack, Codec, ConnectSpec, In, Out};

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
#[derive(Debug, Clone, Deserialize, PartialEq)]
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
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
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
#[derive(Debug, Clone, Deserialize, PartialEq)]
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
#[derive(Debug, Clone, Deserialize, PartialEq)]
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
    /// At start of an at-least-once pipeline, read the broker's version
    /// from `$SYS` on a separate connection and warn if its default queue
    /// for offline sessions drops messages.
    #[serde(default = "super::default_true")]
    pub probe_broker: bool,
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

/// The current connection's generation and writer queue, if connected.
type CurrentWriter = Arc<Mutex<Option<(u64, mpsc::UnboundedSender<Out>)>>>;

/// Hands acks to the current connection's writer, in release order. Acks
/// of an earlier connection are dropped: the broker redelivers those
/// messages, and their packet ids may already name other messages.
struct MqttAcker {
    writer: CurrentWriter,
    manual: bool,
}

impl Acker for MqttAcker {
    fn is_current(&self, token: AckToken) -> bool {
        if !self.manual {
            return true;
        }
        match self.writer.lock() {
            Ok(w) => w
                .as_ref()
                .is_some_and(|(gen, _)| *gen == token >> GEN_SHIFT),
            Err(_) => true,
        }
    }

    fn ack(&self, acks: Vec<(AckToken, WindowSlot)>) {
        if !self.manual {
            return;
        }
        let Ok(w) = self.writer.lock() else { return };
        let Some((gen, tx)) = w.as_ref() else { return };
        // Acks of an earlier connection cannot be sent: the broker
        // redelivers those messages. Their slots are dropped here.
        let acks: Vec<Ack> = acks
            .into_iter()
            .filter_map(|(token, slot)| {
                let qos = (token >> QOS_SHIFT) & 0xff;
                (qos > 0 && *gen == token >> GEN_SHIFT).then(|| Ack {
                    pkid: token as u16,
                    qos2: qos == 2,
                    slot,
                })
            })
            .collect();
        if !acks.is_empty() {
            let _ = tx.send(Out::Acks(acks));
        }
    }
}

/// Shared between the connection task and the handle.
struct Shared {
    /// Stop handing out new messages.
    draining: AtomicBool,
    /// Disconnect and end.
    closing: watch::Sender<bool>,
    writer: CurrentWriter,
}

/// Starts the MQTT source task.
pub fn start(cfg: &MqttConfig, ctx: &Context) -> Result<SourceHandle, ConnectorError> {
    let ep = parse_url(&cfg.url).map_err(ConnectorError)?;
    let tls = if ep.tls {
        Some(tls_config(cfg.tls.as_ref())?)
    } else {
        None
    };
    let spec = ConnectSpec {
        protocol: cfg.protocol,
        host: ep.host,
        port: ep.port,
        tls,
        client_id: cfg.client_id.clone(),
        clean_start: cfg.clean_start,
        keep_alive: Duration::from_secs(cfg.keep_alive_secs),
        session_expiry: cfg.session_expiry_secs,
        receive_maximum: ctx.max_in_flight.clamp(1, 65_535) as u16,
        max_packet_size: cfg.max_packet_size,
        login: cfg.username.as_ref().map(|u| {
            (
                u.clone(),
                cfg.password
                    .as_ref()
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default(),
            )
        }),
    };
    // Small on purpose: when the engine is behind, the reader waits here and
    // stops reading the socket, whatever the broker's flow control does.
    let (tx, rx) = mpsc::channel(ctx.max_in_flight.clamp(16, 1024));
    let (connected_tx, connected_rx) = watch::channel(false);
    let writer = Arc::new(Mutex::new(None));
    let shared = Arc::new(Shared {
        draining: AtomicBool::new(false),
        closing: watch::channel(false).0,
        writer: writer.clone(),
    });
    if ctx.at_least_once && cfg.probe_broker {
        tokio::spawn(probe::check(
            ctx.pipeline.clone(),
            cfg.url.clone(),
            spec.clone(),
        ));
    }
    let task = tokio::spawn(run_loop(LoopState {
        spec,
        topics: cfg.topics.clone(),
        tx,
        connected: connected_tx,
        shared: shared.clone(),
        ctx: ctx.clone(),
        reconnect: cfg.reconnect.clone(),
        url: cfg.url.clone(),
    }));
    let acker = Arc::new(MqttAcker {
        writer,
        manual: ctx.at_least_once,
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
                // Acks already queued go out before the DISCONNECT.
                if let Ok(w) = shared.writer.lock() {
                    if let Some((_, tx)) = w.as_ref() {
                        let _ = tx.send(Out::Disconnect);
                    }
                }
                shared.closing.send_replace(true);
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            }
            .boxed()
        }),
    })
}

fn tls_config(tls: Option<&TlsConfig>) -> Result<Arc<rustls::ClientConfig>, ConnectorError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| ConnectorError(format!("cannot read `{}`: {e}", p.display())))
    };
    let default_ca = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt");
    let ca_path = match tls.and_then(|t| t.ca_file.as_deref()) {
        Some(p) => p,
        None if default_ca.is_file() => default_ca,
        None => {
            return Err(ConnectorError(
                "mqtts:// needs tls.ca_file (no system CA bundle found)".into(),
            ))
        }
    };
    let ca = read(ca_path)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| {
            ConnectorError(format!("bad certificate in `{}`: {e}", ca_path.display()))
        })?;
        roots.add(cert).map_err(|e| {
            ConnectorError(format!(
                "bad CA certificate in `{}`: {e}",
                ca_path.display()
            ))
        })?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let cfg = match tls {
        Some(TlsConfig {
            client_cert_file: Some(c),
            client_key_file: Some(k),
            ..
        }) => {
            let certs = CertificateDer::pem_slice_iter(&read(c)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    ConnectorError(format!("bad client certificate `{}`: {e}", c.display()))
                })?;
            let key = PrivateKeyDer::from_pem_slice(&read(k)?)
                .map_err(|e| ConnectorError(format!("bad client key `{}`: {e}", k.display())))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ConnectorError(format!("client certificate rejected: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

struct LoopState {
    spec: ConnectSpec,
    topics: Vec<TopicConfig>,
    tx: mpsc::Sender<Inbound>,
    connected: watch::Sender<bool>,
    shared: Arc<Shared>,
    ctx: Context,
    reconnect: ReconnectConfig,
    url: String,
}

async fn run_loop(s: LoopState) {
    let pipeline = s.ctx.pipeline.clone();
    let initial = Duration::from_millis(s.reconnect.initial_backoff_ms.max(1));
    let max_backoff = Duration::from_millis(s.reconnect.max_backoff_ms.max(1));
    let mut backoff = initial;
    let mut closing = s.shared.closing.subscribe();
    let mut generation: u64 = 0;
    let mut first_connect = true;
    loop {
        if *closing.borrow() {
            break;
        }
        let codec = Codec::new(s.spec.protocol, s.spec.max_packet_size);
        let attempt = tokio::time::timeout(Duration::from_secs(10), handshake(&s.spec, &codec))
            .await
            .unwrap_or_else(|_| Err("no CONNACK within 10 s".into()));
        let failure = match attempt {
            Ok((io, rest, session_present, quick_acks)) => {
                generation += 1;
                tracing::info!(pipeline = %pipeline, url = %s.url, session_present, generation, "MQTT connected");
                // Ready once the broker routes our topics to us: at the
                // SUBACK when we subscribe (see `read_phase`), now when the
                // broker kept the session and its subscriptions. A message
                // published between CONNACK and SUBACK does not reach a
                // new session, so "connected" before that would let a
                // publisher gated on /readyz lose its first messages.
                let subscribe = !session_present || first_connect;
                if !subscribe {
                    s.connected.send_replace(true);
                }
                s.ctx.metrics.mqtt_connected.set(1);
                s.ctx.report("source", None);
                backoff = initial;
                let (rd, wr) = tokio::io::split(io);
                let (out_tx, out_rx) = mpsc::unbounded_channel();
                if let Ok(mut w) = s.shared.writer.lock() {
                    *w = Some((generation, out_tx.clone()));
                }
                if subscribe {
                    let _ = out_tx.send(Out::Subscribe(s.topics.clone()));
                }
                first_connect = false;
                // How the writer ended: `Ok` after our DISCONNECT, `Err` on
                // a write error.
                let (dead_tx, dead_rx) = watch::channel(None::<Result<(), String>>);
                let keep_alive = s.spec.keep_alive;
                let wcodec = Codec::new(s.spec.protocol, s.spec.max_packet_size);
                let writer = tokio::spawn(async move {
                    let r = write_loop(wr, wcodec, out_rx, keep_alive).await;
                    dead_tx.send_replace(Some(r));
                });
                let res = read_phase(
                    &s,
                    &codec,
                    (rd, quick_acks),
                    rest,
                    generation,
                    &out_tx,
                    dead_rx,
                )
                .await;
                if let Ok(mut w) = s.shared.writer.lock() {
                    *w = None;
                }
                drop(out_tx);
                // Let a queued DISCONNECT (and acks) reach the socket.
                let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
                s.connected.send_replace(false);
                s.ctx.metrics.mqtt_connected.set(0);
                match res {
                    Ok(()) => break,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if *closing.borrow() {
            break;
        }
        s.ctx.metrics.mqtt_reconnects.inc();
        s.ctx
            .report("source", Some(format!("MQTT {}: {failure}", s.url)));
        let wait = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
        tracing::warn!(pipeline = %pipeline, url = %s.url, error = %failure, retry_in_ms = wait.as_millis() as u64, "MQTT connection failed");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = closing.wait_for(|c| *c) => break,
        }
        backoff = (backoff * 2).min(max_backoff);
    }
    s.connected.send_replace(false);
    s.ctx.metrics.mqtt_connected.set(0);
}

/// Marks "stop reading, we are closing" where a byte count is expected.
const CLOSING: usize = usize::MAX;

/// After our DISCONNECT: read and discard until the broker closes the
/// connection. Closing a socket with unread input makes the kernel send a
/// reset, and the broker would then drop the acks it had not read yet.
async fn drain_to_eof(rd: &mut tokio::io::ReadHalf<Box<dyn session::Io>>) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut scratch)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Ok(()),
            Ok(Ok(_)) => {}
        }
    }
}

/// How long an at-most-once ack may wait to be written with others.
const RECEIPT_ACK_DELAY: Duration = Duration::from_millis(1);

/// At-most-once acks gathered on receipt, written together: once `max` are
/// gathered at the end of a socket read, once the oldest has waited
/// [`RECEIPT_ACK_DELAY`], before the reader waits for the engine, and when
/// dropped.
///
/// Written one socket read at a time, they cost a loopback write (with the
/// broker's side of it) for every few messages: Sluice spent twice the CPU
/// per message at-most-once as at-least-once, whose acks leave per batch.
struct ReceiptAcks<'a> {
    acks: Vec<Ack>,
    out: &'a mpsc::UnboundedSender<Out>,
    max: usize,
}

impl ReceiptAcks<'_> {
    fn flush(&mut self) {
        if !self.acks.is_empty() {
            let _ = self.out.send(Out::Acks(std::mem::take(&mut self.acks)));
        }
    }
}

impl Drop for ReceiptAcks<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// How many at-most-once acks [`ReceiptAcks`] gathers before writing them
/// at the end of a socket read. MQTT 5: a quarter of our Receive Maximum
/// (at most 256), so the broker never runs out of quota while they wait.
/// MQTT 3.1.1 has no Receive Maximum and a broker's own window may be
/// small (mosquitto's default is 20): every read's acks go out at its end.
fn receipt_ack_batch(protocol: Protocol, receive_maximum: u16) -> usize {
    match protocol {
        Protocol::V5 => usize::from(receive_maximum / 4).clamp(1, 256),
        Protocol::V311 => 1,
    }
}

/// Reads one connection until it fails (`Err`) or we are closing (`Ok`).
async fn read_phase(
    s: &LoopState,
    codec: &Codec,
    (mut rd, mut quick_acks): (
        tokio::io::ReadHalf<Box<dyn session::Io>>,
        session::QuickAcks,
    ),
    mut buf: bytes::BytesMut,
    generation: u64,
    out: &mpsc::UnboundedSender<Out>,
    mut writer_dead: watch::Receiver<Option<Result<(), String>>>,
) -> Result<(), String> {
    let mut closing = s.shared.closing.subscribe();
    let limit = s.spec.keep_alive * 2;
    // At-most-once acks of what was read, written together before the next
    // wait rather than one channel send and socket write each (and on
    // every way out: the messages are already the engine's).
    let mut on_receipt = ReceiptAcks {
        acks: Vec::new(),
        out,
        max: receipt_ack_batch(s.spec.protocol, s.spec.receive_maximum),
    };
    let mut acks_due = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    loop {
        while let Some(p) = codec.decode(&mut buf)? {
            match p {
                In::Publish { msg, qos, pkid } => {
                    if s.shared.draining.load(Ordering::Acquire) {
                        // Not acked: the broker redelivers it to our next session.
                        continue;
                    }
                    if !s.ctx.at_least_once && qos > 0 {
                        // at-most-once: acked on receipt.
                        if on_receipt.acks.is_empty() {
                            acks_due
                                .as_mut()
                                .reset(tokio::time::Instant::now() + RECEIPT_ACK_DELAY);
                        }
                        on_receipt.acks.push(Ack {
                            pkid,
                            qos2: qos == 2,
                            slot: WindowSlot::new(None),
                        });
                    }
                    let inbound = Inbound {
                        msg,
                        token: token(generation, qos, pkid),
                    };
                    // The usual case, without setting up the wait below.
                    let inbound = match s.tx.try_send(inbound) {
                        Ok(()) => continue,
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            s.shared.draining.store(true, Ordering::Release);
                            continue;
                        }
                        Err(mpsc::error::TrySendError::Full(inbound)) => inbound,
                    };
                    // Waiting here is the backpressure: the socket is not read.
                    on_receipt.flush();
                    let mut close_now = false;
                    tokio::select! {
                        r = s.tx.send(inbound) => if r.is_err() {
                            // The engine stopped taking messages (draining);
                            // the connection stays up for its acks until
                            // `close`.
                            s.shared.draining.store(true, Ordering::Release);
                        },
                        _ = closing.wait_for(|c| *c) => close_now = true,
                        d = writer_dead.wait_for(|d| d.is_some()) => {
                            // A clean end means our DISCONNECT went out: close.
                            match d.map(|d| d.clone()) {
                                Ok(Some(Err(e))) => return Err(e),
                                _ => close_now = true,
                            }
                        }
                    }
                    if close_now {
                        return drain_to_eof(&mut rd).await;
                    }
                }
                In::PubRel(pkid) => {
                    let _ = out.send(Out::PubComp(pkid));
                }
                In::SubAck(refused) => {
                    if !refused.is_empty() {
                        let names: Vec<&str> = refused
                            .iter()
                            .filter_map(|i| s.topics.get(*i).map(|t| t.filter.as_str()))
                            .collect();
                        tracing::error!(pipeline = %s.ctx.pipeline, filters = ?names, "broker refused subscriptions");
                    }
                    s.connected.send_replace(true);
                }
                In::Disconnect(reason) => return Err(format!("broker disconnected us: {reason}")),
                In::ConnAck { .. } => return Err("unexpected CONNACK".into()),
                _ => {}
            }
        }
        if on_receipt.acks.len() >= on_receipt.max {
            on_receipt.flush();
        }
        buf.reserve(64 * 1024);
        let n = tokio::select! {
            r = tokio::time::timeout(limit, rd.read_buf(&mut buf)) => r
                .map_err(|_| "no packet from the broker within twice the keep-alive".to_string())?
                .map_err(|e| e.to_string())?,
            // `read_buf` is cancel safe: nothing was read.
            _ = &mut acks_due, if !on_receipt.acks.is_empty() => {
                on_receipt.flush();
                continue;
            }
            _ = closing.wait_for(|c| *c) => CLOSING,
            d = writer_dead.wait_for(|d| d.is_some()) => match d.map(|d| d.clone()) {
                Ok(Some(Err(e))) => return Err(e),
                _ => CLOSING,
            },
        };
        if n == CLOSING {
            return drain_to_eof(&mut rd).await;
        }
        if n == 0 {
            return Err("broker closed the connection".into());
        }
        quick_acks.after_read(n);
    }
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
    fn receipt_acks_wait_for_a_quarter_of_the_receive_maximum_in_v5_only() {
        assert_eq!(receipt_ack_batch(Protocol::V5, 1000), 250);
        assert_eq!(receipt_ack_batch(Protocol::V5, 65_535), 256);
        assert_eq!(receipt_ack_batch(Protocol::V5, 3), 1);
        assert_eq!(receipt_ack_batch(Protocol::V311, 1000), 1);
    }

    /// A broker of our own (fault injection): it answers when the test
    /// says, so the test sees the source's state between CONNACK and SUBACK.
    mod broker {
        use bytes::BytesMut;
        use rumqttc::mqttbytes::v4::{
            ConnAck, ConnectReturnCode, Packet, SubAck, SubscribeReasonCode,
        };
        use rumqttc::mqttbytes::QoS;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpStream;

        pub struct Conn {
            stream: TcpStream,
            buf: BytesMut,
        }

        impl Conn {
            pub fn new(stream: TcpStream) -> Self {
                Conn {
                    stream,
                    buf: BytesMut::new(),
                }
            }

            /// The next packet from the client (PINGREQs skipped).
            pub async fn read(&mut self) -> Packet {
                loop {
                    match Packet::read(&mut self.buf, 1 << 20) {
                        Ok(Packet::PingReq) => continue,
                        Ok(p) => return p,
                        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                        Err(e) => panic!("client sent a malformed packet: {e:?}"),
                    }
                    let n = self.stream.read_buf(&mut self.buf).await.expect("read");
                    assert!(n > 0, "client closed the connection");
                }
            }

            pub async fn send(&mut self, p: Packet) {
                let mut out = BytesMut::new();
                p.write(&mut out, 1 << 20).expect("encode");
                self.stream.write_all(&out).await.expect("write");
            }

            pub async fn connack(&mut self, session_present: bool) {
                match self.read().await {
                    Packet::Connect(..) => {}
                    p => panic!("expected CONNECT, got {p:?}"),
                }
                let ack = ConnAck::new(ConnectReturnCode::Success, session_present);
                self.send(Packet::ConnAck(ack)).await;
            }

            /// Reads the SUBSCRIBE; returns its packet id and filters.
            pub async fn subscribe(&mut self) -> (u16, Vec<String>) {
                match self.read().await {
                    Packet::Subscribe(s) => {
                        (s.pkid, s.filters.into_iter().map(|f| f.path).collect())
                    }
                    p => panic!("expected SUBSCRIBE, got {p:?}"),
                }
            }

            pub async fn suback(&mut self, pkid: u16, n: usize) {
                let codes = vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); n];
                self.send(Packet::SubAck(SubAck::new(pkid, codes))).await;
            }
        }
    }

    /// Waits (5 s at most) until `connected` says `want`.
    async fn wait_for(connected: &mut watch::Receiver<bool>, want: bool, what: &str) {
        tokio::time::timeout(Duration::from_secs(5), connected.wait_for(|&c| c == want))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting until {what}"))
            .expect("the source ended");
    }

    /// Readiness (/readyz) follows `connected`: a new session is ready only
    /// once the broker acknowledged its subscriptions, because a message
    /// published between CONNACK and SUBACK does not reach it; a resumed
    /// session, whose subscriptions the broker kept, is ready at CONNACK.
    #[tokio::test]
    async fn a_new_session_is_ready_at_its_suback_and_a_resumed_one_at_its_connack() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("port").port();
        let cfg: MqttConfig = serde_yaml::from_str(&format!(
            "url: mqtt://127.0.0.1:{port}\n\
             client_id: ready\n\
             protocol: v3.1.1\n\
             topics: [{{filter: sensors/#, qos: 1}}, {{filter: alarms/#, qos: 1}}]\n\
             probe_broker: false\n\
             reconnect: {{initial_backoff_ms: 10, max_backoff_ms: 10}}\n"
        ))
        .expect("config");
        let metrics = Arc::new(crate::metrics::Metrics::new().pipeline("ready", &[]));
        let ctx = Context {
            pipeline: "ready".into(),
            max_in_flight: 10,
            at_least_once: true,
            metrics: metrics.clone(),
            problems: Default::default(),
        };
        let handle = start(&cfg, &ctx).expect("start");
        let mut connected = handle.connected.clone();

        // First connection, a new session: the CONNACK alone is not ready.
        let (stream, _) = listener.accept().await.expect("accept");
        let mut conn = broker::Conn::new(stream);
        conn.connack(false).await;
        let (pkid, filters) = conn.subscribe().await;
        assert_eq!(filters, ["sensors/#", "alarms/#"]);
        // The source sends its SUBSCRIBE after handling the CONNACK, so
        // it would have said ready by now if the CONNACK were enough.
        assert!(!*connected.borrow(), "ready before the SUBACK");
        assert_eq!(
            metrics.mqtt_connected.get(),
            1,
            "sluice_mqtt_connected follows the CONNACK"
        );
        conn.suback(pkid, filters.len()).await;
        wait_for(&mut connected, true, "ready after the SUBACK").await;

        // The broker drops the connection: not ready until it is back.
        drop(conn);
        wait_for(&mut connected, false, "not ready after the drop").await;

        // The reconnection resumes the session, subscriptions and all: ready
        // at the CONNACK, with no SUBACK (none will come).
        let (stream, _) = listener.accept().await.expect("accept again");
        let mut conn = broker::Conn::new(stream);
        conn.connack(true).await;
        wait_for(&mut connected, true, "ready at a resumed session's CONNACK").await;

        let closing = tokio::spawn((handle.close)());
        match conn.read().await {
            rumqttc::mqttbytes::v4::Packet::Disconnect => {}
            p => panic!("expected DISCONNECT, got {p:?}"),
        }
        drop(conn); // as a broker does after a DISCONNECT
        tokio::time::timeout(Duration::from_secs(4), closing)
            .await
            .expect("the source ends once the broker closed the connection")
            .expect("close");
    }

    #[test]
    fn tokens_round_trip() {
        let t = token(7, 2, 65_000);
        assert_eq!(t >> GEN_SHIFT, 7);
        assert_eq!((t >> QOS_SHIFT) & 0xff, 2);
        assert_eq!(t as u16, 65_000);
    }
}
