//! Connectors: sources that produce messages with ack tokens and sinks that
//! deliver them. The engine only sees the traits here; each connector lives
//! in its own folder and is chosen by [`build_source`] / [`build_sink`].

pub mod kafka;
pub mod mqtt;

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};

use crate::config::{ErrorsConfig, SinkConfig, SourceConfig};
use crate::message::Message;
use crate::metrics::PipelineMetrics;

/// Opaque handle the source needs to acknowledge one message.
pub type AckToken = u64;

/// A message read by a source, with the token to ack it.
#[derive(Debug)]
pub struct Inbound {
    /// The message.
    pub msg: Message,
    /// Its ack token.
    pub token: AckToken,
}

/// One slot of a pipeline's in-flight window. The source drops it once the
/// ack is on its way to the broker (written to the socket), so the window
/// bounds what the broker has sent and not yet seen acked.
pub struct WindowSlot {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl WindowSlot {
    /// Wraps a window permit.
    pub fn new(permit: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        WindowSlot { _permit: permit }
    }
}

impl std::fmt::Debug for WindowSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WindowSlot")
    }
}

/// Acknowledges messages back to a source. Called in arrival order.
pub trait Acker: Send + Sync + 'static {
    /// Acknowledges these messages, in this order; each `slot` is released
    /// when its ack has left. One call per settled batch, not per message.
    fn ack(&self, acks: Vec<(AckToken, WindowSlot)>);

    /// False when the message can no longer be acked and the source will
    /// deliver it again (e.g. it came on a connection that has since been
    /// replaced). The engine skips such messages instead of delivering them
    /// twice.
    fn is_current(&self, _token: AckToken) -> bool {
        true
    }
}

/// A running source.
pub struct SourceHandle {
    /// Messages, in arrival order.
    pub messages: mpsc::Receiver<Inbound>,
    /// Where settled messages are acknowledged.
    pub acker: Arc<dyn Acker>,
    /// True while connected.
    pub connected: watch::Receiver<bool>,
    /// Stops handing out new messages (they stay un-acked at the broker and
    /// are redelivered later); acks keep flowing.
    pub stop_intake: Box<dyn Fn() + Send + Sync>,
    /// Sends the acks queued so far, disconnects and ends the source.
    pub close: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>,
}

/// Why a delivery failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// Retrying cannot help (e.g. message too large): send down the error path.
    pub permanent: bool,
    /// What went wrong.
    pub message: String,
}

/// Where and why a message failed, for the dead-letter record.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Stage: `transform`, `sink` or `source`.
    pub stage: &'static str,
    /// Transform name, when the stage is `transform`.
    pub transform: Option<String>,
    /// Error text.
    pub reason: String,
}

/// `#[serde(default = ...)]` for settings that are on unless turned off.
fn default_true() -> bool {
    true
}

/// A running sink.
pub trait Sink: Send + Sync + 'static {
    /// Sends one message; resolves once the destination acknowledged it.
    ///
    /// The message is handed over when `deliver` is called, not when the
    /// future is first polled. The engine hands over each batch with
    /// [`deliver_all`](Self::deliver_all) and uses `deliver` for retries.
    fn deliver(&self, msg: &Message) -> BoxFuture<'static, Result<(), DeliveryError>>;
    /// Sends several messages, handed over in order when called; resolves
    /// with one result per message, in order, once every one is settled.
    /// The default hands each to [`deliver`](Self::deliver); a sink that
    /// can wait for a whole batch at once overrides it.
    fn deliver_all(&self, msgs: &[&Message]) -> BoxFuture<'static, Vec<Result<(), DeliveryError>>> {
        let sent: Vec<_> = msgs.iter().map(|m| self.deliver(m)).collect();
        Box::pin(futures::future::join_all(sent))
    }
    /// Sends a failed input message to the dead-letter destination, if one
    /// is configured (`Ok(false)` when none is).
    fn dead_letter(
        &self,
        msg: &Message,
        failure: &Failure,
    ) -> BoxFuture<'static, Result<bool, DeliveryError>>;
    /// True while the destination is reachable.
    fn connected(&self) -> watch::Receiver<bool>;
    /// Waits until everything sent so far is acknowledged (or the timeout).
    fn flush(&self, timeout: std::time::Duration) -> BoxFuture<'static, ()>;
}

/// Connector start-up failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectorError(pub String);

/// What a connector needs from the pipeline it runs in.
#[derive(Clone)]
pub struct Context {
    /// Pipeline name.
    pub pipeline: String,
    /// Max un-acked messages.
    pub max_in_flight: usize,
    /// Whether acks wait for delivery.
    pub at_least_once: bool,
    /// The pipeline's metrics.
    pub metrics: Arc<PipelineMetrics>,
    /// Where connectors report their current connection problems, by
    /// connector (shown by the API).
    pub problems: Problems,
}

/// Current connection problems by connector (`source`, `sink`).
pub type Problems = Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, String>>>;

impl Context {
    /// Records (or with `None` clears) the current problem of `connector`.
    pub fn report(&self, connector: &'static str, problem: Option<String>) {
        if let Ok(mut e) = self.problems.lock() {
            match problem {
                Some(p) => e.insert(connector, p),
                None => e.remove(connector),
            };
        }
    }
}

/// Starts the configured source.
pub fn build_source(cfg: &SourceConfig, ctx: &Context) -> Result<SourceHandle, ConnectorError> {
    match cfg {
        SourceConfig::Mqtt(m) => mqtt::start(m, ctx),
    }
}

/// Starts the configured sink.
pub fn build_sink(
    cfg: &SinkConfig,
    errors: &ErrorsConfig,
    ctx: &Context,
) -> Result<Arc<dyn Sink>, ConnectorError> {
    match cfg {
        SinkConfig::Kafka(k) => Ok(Arc::new(kafka::KafkaSink::start(k, errors, ctx)?)),
    }
}
