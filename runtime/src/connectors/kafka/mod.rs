//! Kafka sink (rdkafka): idempotent producer with `acks=all`, topic and key
//! templates over MQTT metadata, MQTT metadata and user properties as
//! headers, dead-letter records with `sluice.error.*` headers.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use serde::Deserialize;
use tokio::sync::watch;

use super::{ConnectorError, Context, DeliveryError, Failure, Sink};
use crate::config::{template_field, ErrorsConfig, FieldError};
use crate::message::Message;
use crate::template::{RenderError, Template};

/// Compression codec for produced batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4 (default: cheap and effective on JSON).
    #[default]
    Lz4,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
        }
    }
}

/// `sink.kafka` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic template (see [`Template`]).
    pub topic: String,
    /// Key template; no key when absent.
    #[serde(default)]
    pub key: Option<String>,
    /// Compression codec.
    #[serde(default)]
    pub compression: Compression,
    /// How long the producer waits to fill a batch, ms.
    #[serde(default = "default_linger")]
    pub linger_ms: u64,
    /// Largest batch per partition, bytes.
    #[serde(default)]
    pub batch_size: Option<u32>,
    /// How long librdkafka retries one produce before reporting failure
    /// (the runtime then retries again; the message is never acked
    /// meanwhile), ms.
    #[serde(default = "default_message_timeout")]
    pub message_timeout_ms: u64,
    /// Add `mqtt.topic`, `mqtt.qos`, `mqtt.retain` (and `content-type`)
    /// headers.
    #[serde(default = "super::default_true")]
    pub mqtt_headers: bool,
    /// Extra librdkafka properties, from an allow-list.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_linger() -> u64 {
    5
}
fn default_message_timeout() -> u64 {
    30_000
}

/// librdkafka properties a pipeline may set. Anything that runs commands,
/// loads libraries or touches files is not here, nor what the delivery
/// promise depends on (`acks`, `enable.idempotence`).
pub const ALLOWED_PROPERTIES: &[&str] = &[
    "allow.auto.create.topics",
    "api.version.request",
    "batch.num.messages",
    "broker.address.family",
    "client.rack",
    "compression.level",
    "connections.max.idle.ms",
    "max.in.flight.requests.per.connection",
    "message.max.bytes",
    "metadata.max.age.ms",
    "partitioner",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "reconnect.backoff.max.ms",
    "reconnect.backoff.ms",
    "request.timeout.ms",
    "retry.backoff.max.ms",
    "retry.backoff.ms",
    "socket.keepalive.enable",
    "socket.receive.buffer.bytes",
    "socket.send.buffer.bytes",
    "socket.timeout.ms",
    "sticky.partitioning.linger.ms",
    "topic.metadata.refresh.interval.ms",
];

/// Checks a Kafka topic name (legal characters and length).
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 || name == "." || name == ".." {
        return Err(format!("invalid Kafka topic name `{name}`"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "invalid Kafka topic name `{name}`: character `{c}` is not allowed (use letters, digits, `.`, `_`, `-`)"
        ));
    }
    Ok(())
}

impl KafkaConfig {
    /// Checks that need no broker.
    pub fn check(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.brokers.trim().is_empty() {
            errs.push(FieldError::new("brokers", "brokers must not be empty"));
        }
        if let Some(t) = template_field("topic", &self.topic, &mut errs) {
            if let Some(s) = t.as_static() {
                if let Err(e) = check_topic_name(s) {
                    errs.push(FieldError::new("topic", e));
                }
            }
        }
        if let Some(k) = &self.key {
            template_field("key", k, &mut errs);
        }
        for name in self.properties.keys() {
            if !ALLOWED_PROPERTIES.contains(&name.as_str()) {
                let why = match name.as_str() {
                    "acks" | "enable.idempotence" => {
                        "is set by sluice to keep the at-least-once promise".to_string()
                    }
                    n if n.contains("cmd") || n.contains("library") || n.contains("plugin") => {
                        "could run commands or load code and is never allowed".to_string()
                    }
                    _ => format!(
                        "is not in the allow-list ({})",
                        ALLOWED_PROPERTIES.join(", ")
                    ),
                };
                errs.push(FieldError::new(
                    format!("properties.{name}"),
                    format!("librdkafka property `{name}` {why}"),
                ));
            }
        }
        errs
    }
}

/// Where a message goes in Kafka: its topic and key, from the plugin's
/// overrides when set, else from the sink's templates. `sluice test` uses
/// the same rules.
pub struct Routing {
    topic: Template,
    key: Option<Template>,
}

impl Routing {
    /// Parses the sink's templates.
    pub fn new(cfg: &KafkaConfig) -> Result<Self, crate::template::TemplateError> {
        Ok(Routing {
            topic: Template::parse(&cfg.topic)?,
            key: cfg.key.as_deref().map(Template::parse).transpose()?,
        })
    }

    /// The Kafka topic for `msg`.
    pub fn topic(&self, msg: &Message, pipeline: &str) -> Result<String, RenderError> {
        match &msg.kafka_topic {
            Some(t) => Ok(t.clone()),
            None => self.topic.render(&msg.topic, pipeline),
        }
    }

    /// The Kafka key for `msg`, if any.
    pub fn key<'m>(
        &self,
        msg: &'m Message,
        pipeline: &str,
    ) -> Result<Option<Cow<'m, [u8]>>, RenderError> {
        match (&msg.key, &self.key) {
            (Some(k), _) => Ok(Some(Cow::Borrowed(&k[..]))),
            (None, Some(t)) => t
                .render(&msg.topic, pipeline)
                .map(|k| Some(Cow::Owned(k.into_bytes()))),
            (None, None) => Ok(None),
        }
    }
}

/// The producer: librdkafka's delivery reports go, on its polling thread,
/// to the [`Reports`] of the call that sent each record.
type KafkaProducer = ThreadedProducer<ReportTo>;

/// The producer's context: hands each delivery report to its [`Slot`].
struct ReportTo;

impl ClientContext for ReportTo {}

impl ProducerContext for ReportTo {
    type DeliveryOpaque = Box<Slot>;

    fn delivery(&self, result: &DeliveryResult<'_>, mut slot: Box<Slot>) {
        slot.result = Some(match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(classify(e)),
        });
    }
}

/// The delivery results of one batch of records, filled in as librdkafka
/// reports them: one allocation and one wake-up per batch, instead of a
/// channel and a future per record.
struct Reports {
    state: Mutex<ReportState>,
}

struct ReportState {
    results: Vec<Option<Result<(), DeliveryError>>>,
    left: usize,
    waker: Option<Waker>,
}

impl Reports {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Reports {
            state: Mutex::new(ReportState {
                results: (0..n).map(|_| None).collect(),
                left: n,
                waker: None,
            }),
        })
    }

    fn set(&self, index: usize, result: Result<(), DeliveryError>) {
        let Ok(mut s) = self.state.lock() else { return };
        let Some(slot) = s.results.get_mut(index) else {
            return;
        };
        if slot.is_some() {
            return;
        }
        *slot = Some(result);
        s.left -= 1;
        let waker = if s.left == 0 { s.waker.take() } else { None };
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Resolves once every record has its result.
    fn wait(self: Arc<Self>) -> BoxFuture<'static, Vec<Result<(), DeliveryError>>> {
        futures::future::poll_fn(move |cx| {
            let Ok(mut s) = self.state.lock() else {
                return Poll::Ready(Vec::new());
            };
            if s.left > 0 {
                s.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let results = std::mem::take(&mut s.results);
            Poll::Ready(
                results
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| Err(dropped())))
                    .collect(),
            )
        })
        .boxed()
    }

    /// [`wait`](Self::wait) for a batch of one record.
    fn wait_one(self: Arc<Self>) -> BoxFuture<'static, Result<(), DeliveryError>> {
        self.wait()
            .map(|mut results| results.pop().unwrap_or_else(|| Err(dropped())))
            .boxed()
    }
}

/// One record's place in its [`Reports`]. Reports when dropped: the
/// delivery report's result (set by [`ReportTo::delivery`]), the refusal
/// when `send` hands the record back, or else an error saying that the
/// producer dropped it.
struct Slot {
    reports: Arc<Reports>,
    index: usize,
    result: Option<Result<(), DeliveryError>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let result = self.result.take().unwrap_or_else(|| Err(dropped()));
        self.reports.set(self.index, result);
    }
}

fn dropped() -> DeliveryError {
    DeliveryError {
        permanent: false,
        message: "producer dropped the delivery report".into(),
    }
}

/// The running Kafka sink.
pub struct KafkaSink {
    producer: KafkaProducer,
    routing: Routing,
    dead_letter_topic: Option<String>,
    mqtt_headers: bool,
    pipeline: Arc<str>,
    connected: watch::Receiver<bool>,
    probe: tokio::task::JoinHandle<()>,
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        self.probe.abort();
    }
}

impl KafkaSink {
    /// Creates the producer and starts the connectivity probe.
    pub fn start(
        cfg: &KafkaConfig,
        errors: &ErrorsConfig,
        ctx: &Context,
    ) -> Result<Self, ConnectorError> {
        let mut cc = ClientConfig::new();
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("client.id", format!("sluice-{}", ctx.pipeline))
            .set("compression.type", cfg.compression.as_str())
            .set("linger.ms", cfg.linger_ms.to_string())
            .set("message.timeout.ms", cfg.message_timeout_ms.to_string());
        if ctx.at_least_once {
            cc.set("enable.idempotence", "true").set("acks", "all");
        } else {
            cc.set("acks", "1");
        }
        if let Some(b) = cfg.batch_size {
            cc.set("batch.size", b.to_string());
        }
        let producer = KafkaProducer::from_config_and_context(&cc, ReportTo)
            .map_err(|e| ConnectorError(format!("cannot create Kafka producer: {e}")))?;
        let routing = Routing::new(cfg).map_err(|e| ConnectorError(e.to_string()))?;
        let (tx, rx) = watch::channel(false);
        let probe = tokio::spawn(probe(
            producer.clone(),
            tx,
            ctx.clone(),
            cfg.brokers.clone(),
        ));
        Ok(KafkaSink {
            producer,
            routing,
            dead_letter_topic: errors.dead_letter_topic.clone(),
            mqtt_headers: cfg.mqtt_headers,
            pipeline: ctx.pipeline.as_str().into(),
            connected: rx,
            probe,
        })
    }

    /// Hands `msg`'s payload and time stamp to librdkafka as a record for
    /// `topic`; its result goes to `reports` at `index` (at once when
    /// librdkafka refuses it).
    fn send(
        &self,
        (reports, index): (&Arc<Reports>, usize),
        topic: &str,
        key: Option<&[u8]>,
        msg: &Message,
        headers: OwnedHeaders,
    ) {
        let slot = Box::new(Slot {
            reports: reports.clone(),
            index,
            result: None,
        });
        let mut rec: BaseRecord<'_, [u8], [u8], Box<Slot>> =
            BaseRecord::with_opaque_to(topic, slot)
                .payload(&msg.payload[..])
                .headers(headers)
                .timestamp(msg.timestamp_ms as i64);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Err((e, mut rec)) = self.producer.send(rec) {
            rec.delivery_opaque.result = Some(Err(classify(&e)));
        }
    }

    /// Hands one message to librdkafka for the sink's topic and key, with
    /// its headers; its result goes to `reports` at `index`.
    fn send_message(&self, reports: &Arc<Reports>, index: usize, msg: &Message) {
        let (topic, key) = match (
            self.routing.topic(msg, &self.pipeline),
            self.routing.key(msg, &self.pipeline),
        ) {
            (Ok(t), Ok(k)) => (t, k),
            (Err(e), _) | (_, Err(e)) => {
                reports.set(
                    index,
                    Err(DeliveryError {
                        permanent: true,
                        message: e.to_string(),
                    }),
                );
                return;
            }
        };
        let qos = [b'0' + msg.qos.level()];
        let mut extra: Vec<(&str, &[u8])> = Vec::new();
        if self.mqtt_headers {
            extra.push(("mqtt.topic", msg.topic.as_bytes()));
            extra.push(("mqtt.qos", &qos));
            extra.push(("mqtt.retain", if msg.retain { b"true" } else { b"false" }));
            if let Some(ct) = &msg.content_type {
                extra.push(("content-type", ct.as_bytes()));
            }
        }
        let headers = header_list(&msg.headers, &extra);
        self.send((reports, index), &topic, key.as_deref(), msg, headers);
    }
}

fn classify(e: &KafkaError) -> DeliveryError {
    use RDKafkaErrorCode as C;
    // A NUL byte in a topic, key or header name (a plugin's
    // `kafka-topic`, say) never goes through.
    let permanent = matches!(e, KafkaError::Nul(_))
        || matches!(
            e.rdkafka_error_code(),
            Some(
                C::MessageSizeTooLarge
                    | C::InvalidMessageSize
                    | C::InvalidMessage
                    | C::InvalidRecord
                    | C::MessageBatchTooLarge
                    | C::TopicAuthorizationFailed
                    | C::InvalidTopic
                    | C::UnsupportedForMessageFormat
            )
        );
    DeliveryError {
        permanent,
        message: e.to_string(),
    }
}

fn header_list(h: &[(String, String)], extra: &[(&str, &[u8])]) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(h.len() + extra.len());
    for (k, v) in h {
        out = out.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    for (k, v) in extra {
        out = out.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    out
}

impl Sink for KafkaSink {
    fn deliver(&self, msg: &Message) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let reports = Reports::new(1);
        self.send_message(&reports, 0, msg);
        reports.wait_one()
    }

    fn deliver_all(&self, msgs: &[&Message]) -> BoxFuture<'static, Vec<Result<(), DeliveryError>>> {
        let reports = Reports::new(msgs.len());
        for (i, msg) in msgs.iter().enumerate() {
            self.send_message(&reports, i, msg);
        }
        reports.wait()
    }

    fn dead_letter(
        &self,
        msg: &Message,
        failure: &Failure,
    ) -> BoxFuture<'static, Result<bool, DeliveryError>> {
        let Some(topic) = self.dead_letter_topic.clone() else {
            return async { Ok(false) }.boxed();
        };
        let ts = crate::message::now_ms().to_string();
        let qos = [b'0' + msg.qos.level()];
        let extra: Vec<(&str, &[u8])> = vec![
            ("sluice.error.pipeline", self.pipeline.as_bytes()),
            ("sluice.error.stage", failure.stage.as_bytes()),
            (
                "sluice.error.transform",
                failure.transform.as_deref().unwrap_or("").as_bytes(),
            ),
            ("sluice.error.message", failure.reason.as_bytes()),
            ("sluice.error.mqtt_topic", msg.topic.as_bytes()),
            ("sluice.error.timestamp", ts.as_bytes()),
            ("mqtt.qos", &qos),
        ];
        let headers = header_list(&msg.headers, &extra);
        let reports = Reports::new(1);
        self.send((&reports, 0), &topic, msg.key.as_deref(), msg, headers);
        reports.wait_one().map(|r| r.map(|()| true)).boxed()
    }

    fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'static, ()> {
        let p = self.producer.clone();
        async move {
            let _ = tokio::task::spawn_blocking(move || p.flush(timeout)).await;
        }
        .boxed()
    }
}

/// Marks the sink connected while broker metadata can be fetched.
async fn probe(producer: KafkaProducer, tx: watch::Sender<bool>, ctx: Context, brokers: String) {
    let pipeline = ctx.pipeline.clone();
    let mut was = None;
    loop {
        let p = producer.clone();
        let ok = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(None, Duration::from_secs(3))
                .map(|m| !m.brokers().is_empty())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if was != Some(ok) {
            if ok {
                tracing::info!(pipeline = %pipeline, "Kafka connected");
                ctx.report("sink", None);
            } else {
                tracing::warn!(pipeline = %pipeline, brokers = %brokers, "Kafka unreachable");
                ctx.report(
                    "sink",
                    Some(format!(
                        "Kafka {brokers}: no broker answers a metadata request"
                    )),
                );
            }
            was = Some(ok);
        }
        tx.send_replace(ok);
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(if ok { 5 } else { 1 })).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(props: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "telemetry".into(),
            key: Some("{{topic.1}}".into()),
            compression: Compression::default(),
            linger_ms: 5,
            batch_size: None,
            message_timeout_ms: 30_000,
            mqtt_headers: true,
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn dangerous_properties_are_rejected() {
        assert!(cfg(&[("linger.ms", "1")]).check()[0]
            .message
            .contains("allow-list"));
        let e = cfg(&[("sasl.kerberos.kinit.cmd", "rm -rf /")]).check();
        assert!(e[0].message.contains("never allowed"), "{e:?}");
        let e = cfg(&[("plugin.library.paths", "x")]).check();
        assert!(e[0].message.contains("never allowed"), "{e:?}");
        assert!(cfg(&[("acks", "0")]).check()[0]
            .message
            .contains("at-least-once"));
        assert!(cfg(&[("message.max.bytes", "2000000")]).check().is_empty());
    }

    #[tokio::test]
    async fn a_batch_resolves_once_every_record_reported_in_send_order() {
        let reports = Reports::new(3);
        let slot = |index| Slot {
            reports: reports.clone(),
            index,
            result: None,
        };
        let (a, mut b, c) = (slot(0), slot(1), slot(2));
        let mut wait = reports.clone().wait();
        // Reports arrive out of order; the batch waits for the last one.
        b.result = Some(Err(DeliveryError {
            permanent: true,
            message: "too large".into(),
        }));
        drop(b);
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        drop(c); // never reported: librdkafka dropped it
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        let mut a = a;
        a.result = Some(Ok(()));
        drop(a);
        let results = wait.await;
        assert!(results[0].is_ok());
        assert!(results[1]
            .as_ref()
            .is_err_and(|e| e.permanent && e.message == "too large"));
        assert!(results[2]
            .as_ref()
            .is_err_and(|e| !e.permanent && e.message.contains("dropped")));
    }

    #[test]
    fn a_nul_byte_in_a_record_fails_it_for_good() {
        let nul = std::ffi::CString::new("bad\0topic").unwrap_err();
        assert!(classify(&KafkaError::Nul(nul)).permanent);
        let full = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
        assert!(!classify(&full).permanent);
    }

    #[test]
    fn topic_names_are_checked() {
        assert!(check_topic_name("sluice.dlq").is_ok());
        assert!(check_topic_name("a/b").is_err());
        assert!(check_topic_name("").is_err());
        let mut c = cfg(&[]);
        c.topic = "bad topic".into();
        assert_eq!(c.check().len(), 1);
    }
}
