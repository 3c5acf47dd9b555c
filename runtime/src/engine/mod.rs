//! The pipeline engine: source → batches → transform chain → sink, with
//! in-order acks and a bounded in-flight window. It names no connector.
//!
//! Flow: the intake task takes a window permit, registers each message with
//! the ack [`ack::Tracker`] and forms batches; a dedicated thread runs the
//! Wasm chain; the sink task delivers outputs (retrying transient errors
//! forever with capped backoff, never acking meanwhile) and settles each
//! input once its fate is known; settled prefixes are acked in order.

pub mod ack;
mod control;
pub use control::{ControlError, Reloaded};
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::config::{Delivery, ErrorPolicy, Pipeline};
use crate::connectors::{self, Context, DeliveryError, Failure, Inbound, Sink};
use crate::message::Message;
use crate::metrics::PipelineMetrics;
use crate::wasm::chain::{Chain, Outcome};
use crate::wasm::WasmHost;

/// Life-cycle state of a pipeline, as shown by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Loading plugins, connecting.
    Starting,
    /// Moving messages.
    Running,
    /// Start failed; retrying after a backoff.
    Restarting,
    /// Paused by the admin API: disconnected from both brokers on purpose,
    /// nothing consumed or acked; the broker keeps the backlog.
    Paused,
    /// Draining after a shutdown request.
    Stopping,
    /// Done.
    Stopped,
}

/// Live status of one pipeline, shared with the HTTP API.
pub struct Status {
    /// Pipeline name.
    pub name: String,
    state: Mutex<(State, Option<String>)>,
    mqtt: Mutex<Option<watch::Receiver<bool>>>,
    kafka: Mutex<Option<watch::Receiver<bool>>>,
    problems: connectors::Problems,
    /// Metrics handles.
    pub metrics: Arc<PipelineMetrics>,
    control: watch::Sender<control::Control>,
    /// The configuration in force.
    config: Mutex<Option<Pipeline>>,
    /// A configuration to start with at the next restart (after a reload).
    pending: Mutex<Option<Pipeline>>,
    /// Hands a new chain to the running transform thread.
    swap: Mutex<Option<std::sync::mpsc::Sender<Chain>>>,
}

impl Status {
    /// A status in `Starting`.
    pub fn new(name: &str, metrics: Arc<PipelineMetrics>) -> Self {
        Status {
            name: name.to_string(),
            state: Mutex::new((State::Starting, None)),
            mqtt: Mutex::new(None),
            kafka: Mutex::new(None),
            problems: Arc::default(),
            metrics,
            control: watch::Sender::new(control::Control::default()),
            config: Mutex::new(None),
            pending: Mutex::new(None),
            swap: Mutex::new(None),
        }
    }

    fn set(&self, s: State, err: Option<String>) {
        if let Ok(mut g) = self.state.lock() {
            if g.0 != s {
                tracing::info!(pipeline = %self.name, state = ?s, "pipeline state");
            }
            *g = (s, err.or_else(|| g.1.take()));
        }
    }

    /// Current state and last error.
    pub fn state(&self) -> (State, Option<String>) {
        self.state
            .lock()
            .map(|g| g.clone())
            .unwrap_or((State::Starting, None))
    }

    fn flag(w: &Mutex<Option<watch::Receiver<bool>>>) -> bool {
        w.lock()
            .ok()
            .and_then(|g| g.as_ref().map(|r| *r.borrow()))
            .unwrap_or(false)
    }

    /// Source connected, and subscribed when the session is new (the
    /// broker routes its topics to it).
    pub fn source_connected(&self) -> bool {
        Self::flag(&self.mqtt)
    }

    /// Sink connected.
    pub fn sink_connected(&self) -> bool {
        Self::flag(&self.kafka)
    }

    /// Running and connected at both ends, or paused on purpose.
    pub fn ready(&self) -> bool {
        match self.state().0 {
            State::Running => self.source_connected() && self.sink_connected(),
            State::Paused => true,
            _ => false,
        }
    }

    /// The state as the API and the live summary name it: `reconnecting`
    /// while running but cut off from a broker (the connectors retry).
    pub fn shown_state(&self, state: State) -> serde_json::Value {
        match state {
            State::Running if !self.source_connected() || !self.sink_connected() => {
                serde_json::json!("reconnecting")
            }
            s => serde_json::json!(s),
        }
    }

    /// JSON view for `/api/v1/pipelines`.
    pub fn json(&self) -> serde_json::Value {
        let (state, last_error) = self.state();
        let problems: Vec<String> = self
            .problems
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        let last_error = if problems.is_empty() {
            last_error
        } else {
            Some(problems.join("; "))
        };
        let m = &self.metrics;
        let control = *self.control.borrow();
        let state = self.shown_state(state);
        serde_json::json!({
            "name": self.name,
            "state": state,
            "last_error": last_error,
            "source_connected": self.source_connected(),
            "sink_connected": self.sink_connected(),
            "ready": self.ready(),
            "paused": control.paused,
            "restarts_requested": control.restarts,
            "reloads": control.reloads,
            "counters": {
                "received": m.received.get(),
                "delivered": m.delivered.get(),
                "in_flight": m.in_flight.get(),
                "dead_lettered_sink": m.dead_lettered_sink.get(),
                "dropped": m.transforms().iter().map(|t| (t.name(), t.dropped.get())).collect::<HashMap<_, _>>(),
            }
        })
    }
}

/// Runs a pipeline until `shutdown` turns true, restarting it with capped
/// backoff when it cannot start.
///
/// The admin API steers it through `status`: pause stops the pipeline (a
/// drain, as on SIGTERM) until resume; restart drains and starts again;
/// a reload that changes more than the transforms restarts with the new
/// configuration.
pub async fn supervise(
    pipeline: Pipeline,
    host: Arc<WasmHost>,
    status: Arc<Status>,
    mut shutdown: watch::Receiver<bool>,
) {
    status.set_config(pipeline);
    let mut control = status.control.subscribe();
    let mut backoff = Duration::from_millis(500);
    loop {
        if *shutdown.borrow() {
            break;
        }
        if control.borrow_and_update().paused {
            status.set(State::Paused, None);
            tokio::select! {
                _ = control.wait_for(|c| !c.paused) => continue,
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        if let Some(p) = status.pending.lock().ok().and_then(|mut p| p.take()) {
            status.set_config(p);
        }
        let Some(pipeline) = status.config() else {
            break;
        };
        let generation = *control.borrow();
        status.set(State::Starting, None);
        let stop = control::stop_signal(shutdown.clone(), control.clone(), generation);
        match run(&pipeline, &host, &status, stop).await {
            Ok(()) => backoff = Duration::from_millis(500),
            Err(e) => {
                tracing::error!(pipeline = %pipeline.name, error = %e, retry_in_s = backoff.as_secs_f32(), "pipeline failed");
                status.set(State::Restarting, Some(e.clone()));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    // An admin request (restart, pause, reload) acts now.
                    _ = control.changed() => backoff = Duration::from_millis(250),
                    _ = shutdown.wait_for(|s| *s) => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    status.set(State::Stopped, None);
}

/// Messages on their way to the transform thread, and back with what
/// became of each. Kept as columns: a message is moved in once and out
/// once, not unzipped into the chain's slice and zipped back.
struct Batch {
    /// The tracker's sequence number of each message.
    seqs: Vec<u64>,
    /// The messages, in arrival order.
    msgs: Vec<Message>,
    /// One per message once the chain ran; empty before.
    outcomes: Vec<Outcome>,
}

impl Batch {
    fn with_capacity(n: usize) -> Batch {
        Batch {
            seqs: Vec::with_capacity(n),
            msgs: Vec::with_capacity(n),
            outcomes: Vec::new(),
        }
    }
}

/// Runs one pipeline until shutdown; returns an error if it cannot start.
pub async fn run(
    p: &Pipeline,
    host: &Arc<WasmHost>,
    status: &Arc<Status>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    run_with(p, host, status, shutdown, |ctx| {
        let sink = connectors::build_sink(&p.sink, &p.errors, ctx).map_err(|e| e.to_string())?;
        let source = connectors::build_source(&p.source, ctx).map_err(|e| e.to_string())?;
        Ok((sink, source))
    })
    .await
}

/// [`run`] with the connectors made by `connect` (tests pass fakes here).
pub async fn run_with(
    p: &Pipeline,
    host: &Arc<WasmHost>,
    status: &Arc<Status>,
    shutdown: watch::Receiver<bool>,
    connect: impl FnOnce(&Context) -> Result<(Arc<dyn Sink>, connectors::SourceHandle), String>,
) -> Result<(), String> {
    let metrics = status.metrics.clone();
    let at_least_once = p.delivery == Delivery::AtLeastOnce;
    let ctx = Context {
        pipeline: p.name.clone(),
        max_in_flight: p.max_in_flight,
        at_least_once,
        metrics: metrics.clone(),
        problems: status.problems.clone(),
    };

    // Transform thread: owns the Wasm instances (sync wasmtime calls).
    let (batch_tx, mut batch_rx) = mpsc::channel::<Batch>(2);
    let (done_tx, mut done_rx) = mpsc::channel::<Batch>(2);
    let (mut chain, chain_metrics) = control::build_chain(host, p, &metrics).await?;
    metrics.set_transforms(chain_metrics);
    let (swap_tx, swap_rx) = std::sync::mpsc::channel::<Chain>();
    let worker = std::thread::Builder::new()
        .name(format!("sluice-{}", p.name))
        // Room for the largest wasm stack (`limits.stack_kb`) whatever
        // RUST_MIN_STACK says.
        .stack_size(8 << 20)
        .spawn(move || {
            while let Some(mut batch) = batch_rx.blocking_recv() {
                // A reload swaps the chain between two batches: every
                // message runs through exactly one version of it.
                while let Ok(next) = swap_rx.try_recv() {
                    chain = next;
                }
                batch.outcomes = chain.run(&batch.msgs);
                if done_tx.blocking_send(batch).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| format!("cannot start transform thread: {e}"))?;

    let (sink, source) = connect(&ctx)?;
    if let Ok(mut s) = status.swap.lock() {
        *s = Some(swap_tx);
    }
    *status.kafka.lock().map_err(|e| e.to_string())? = Some(sink.connected());
    *status.mqtt.lock().map_err(|e| e.to_string())? = Some(source.connected.clone());
    status.set(State::Running, None);

    let tracker = Arc::new(Mutex::new(ack::Tracker::default()));
    let window = Arc::new(Semaphore::new(p.max_in_flight));
    let acker = source.acker.clone();
    let mut messages = source.messages;

    // Intake: window permit, tracker registration, batching.
    // The pipeline stops on the process's shutdown or on a fatal error
    // (`errors.policy: fail`).
    let (stop_tx, stop_rx) = watch::channel(false);
    let (fatal_tx, fatal_rx) = watch::channel(None::<String>);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        let mut external = shutdown.clone();
        tokio::spawn(async move {
            let _ = external.wait_for(|s| *s).await;
            stop_tx.send_replace(true);
        });
    }
    let policy = p.errors.policy();
    let intake = {
        let shutdown = stop_rx.clone();
        let tracker = tracker.clone();
        let intake_acker = acker.clone();
        let metrics = metrics.clone();
        let max = p.batch.max_messages;
        let wait = Duration::from_millis(p.batch.max_wait_ms);
        let mut shutdown = shutdown;
        tokio::spawn(async move {
            let mut stopping = false;
            // One timer for the whole intake, reset when a batch starts:
            // not one per message.
            let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
            while !stopping {
                let mut batch = Batch::with_capacity(max);
                while batch.msgs.len() < max {
                    let permit = match window.clone().try_acquire_owned() {
                        Ok(p) => p,
                        // Window full: send what we hold rather than sit on it.
                        Err(_) if !batch.msgs.is_empty() => break,
                        Err(_) => tokio::select! {
                            biased;
                            _ = shutdown.wait_for(|s| *s) => { stopping = true; break }
                            p = window.clone().acquire_owned() => match p {
                                Ok(p) => p,
                                Err(_) => { stopping = true; break }
                            },
                        },
                    };
                    // Messages already queued are taken without setting up
                    // the wait below.
                    let queued = if *shutdown.borrow() {
                        stopping = true;
                        break;
                    } else {
                        messages.try_recv()
                    };
                    let next = match queued {
                        Ok(m) => Some(m),
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                        Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                            biased;
                            _ = shutdown.wait_for(|s| *s) => { stopping = true; break }
                            m = messages.recv() => m,
                            _ = &mut timer, if !batch.msgs.is_empty() => break,
                        },
                    };
                    let Some(Inbound { msg, token }) = next else {
                        stopping = true;
                        break;
                    };
                    if !intake_acker.is_current(token) {
                        // The broker redelivers it on the new connection.
                        drop(permit);
                        continue;
                    }
                    metrics.received.inc();
                    metrics.in_flight.inc();
                    let Ok(seq) = tracker.lock().map(|mut t| t.push(token, Some(permit))) else {
                        stopping = true;
                        break;
                    };
                    if batch.msgs.is_empty() {
                        timer.as_mut().reset(tokio::time::Instant::now() + wait);
                    }
                    batch.seqs.push(seq);
                    batch.msgs.push(msg);
                }
                // Messages taken from the source are always processed, also
                // when stopping: they are in the tracker, awaiting acks.
                if !batch.msgs.is_empty() && batch_tx.send(batch).await.is_err() {
                    break;
                }
            }
            // Dropping `batch_tx` lets the chain and the sink drain.
        })
    };

    // Sink: deliver outcomes, settle, release acks in order.
    let sink_task = {
        let sink = sink.clone();
        let metrics = metrics.clone();
        let tracker = tracker.clone();
        let pipeline = Arc::new(PipelineLog::new(&p.name));
        tokio::spawn(async move {
            let mut pending = FuturesUnordered::new();
            let mut released = Vec::new();
            let mut open = true;
            loop {
                tokio::select! {
                    d = done_rx.recv(), if open => match d {
                        Some(batch) => pending.push(settle_batch(sink.clone(), metrics.clone(), pipeline.clone(), policy, batch)),
                        None => open = false,
                    },
                    Some(settled) = pending.next() => {
                        if let Ok(mut t) = tracker.lock() {
                            for s in settled {
                                if let Some(reason) = s.fatal {
                                    // Never settled: nothing from here on is
                                    // acked, and the broker redelivers it
                                    // after the restart.
                                    if fatal_tx.send_replace(Some(reason)).is_none() {
                                        stop_tx.send_replace(true);
                                    }
                                    continue;
                                }
                                t.settle(s.seq, &mut released);
                            }
                        }
                        if !released.is_empty() {
                            let now = Instant::now();
                            metrics.in_flight.sub(released.len() as i64);
                            let acks = released
                                .drain(..)
                                .map(|r| {
                                    metrics
                                        .e2e
                                        .observe(now.saturating_duration_since(r.received).as_secs_f64());
                                    (r.token, connectors::WindowSlot::new(r.permit))
                                })
                                .collect();
                            acker.ack(acks);
                        }
                    },
                    else => break,
                }
            }
        })
    };

    let mut stop = stop_rx.clone();
    let _ = stop.wait_for(|s| *s).await;
    status.set(State::Stopping, None);
    if let Ok(mut s) = status.swap.lock() {
        *s = None;
    }
    (source.stop_intake)();
    let _ = intake.await;
    let drained = tokio::time::timeout(Duration::from_secs(60), sink_task).await;
    if drained.is_err() {
        let left = tracker.lock().map(|t| t.len()).unwrap_or(0);
        tracing::warn!(pipeline = %p.name, un_acked = left, "drain timed out; un-acked messages will be redelivered by the broker");
    }
    sink.flush(Duration::from_secs(10)).await;
    (source.close)().await;
    let _ = worker.join();
    let fatal = fatal_rx.borrow().clone();
    match fatal {
        Some(reason) => Err(reason),
        None => Ok(()),
    }
}

/// What became of one input.
struct Settled {
    seq: u64,
    /// Set under `errors.policy: fail`: the pipeline must stop without
    /// acking this message.
    fatal: Option<String>,
}

/// Delivers one batch's outputs and settles each input: one task per
/// batch, not per message.
///
/// Every output of the batch is handed to the sink in one
/// [`Sink::deliver_all`], in input order (the sink enqueues when called),
/// and their results come back together. A transient error is retried
/// forever for that output; a
/// permanent one fails its input, which goes through the error policy
/// (the input's other outputs were already handed over). Inputs the chain
/// failed go through the error policy too.
async fn settle_batch(
    sink: Arc<dyn Sink>,
    metrics: Arc<PipelineMetrics>,
    pipeline: Arc<PipelineLog>,
    policy: ErrorPolicy,
    batch: Batch,
) -> Vec<Settled> {
    let Batch {
        seqs,
        msgs,
        outcomes,
    } = batch;
    let outputs: Vec<&Message> = msgs
        .iter()
        .zip(&outcomes)
        .flat_map(|(input, outcome)| outcome.outputs(input).unwrap_or_default())
        .collect();
    let mut results = sink.deliver_all(&outputs).await.into_iter();
    let mut settled = Vec::with_capacity(seqs.len());
    let mut delivered = 0;
    for ((seq, input), outcome) in seqs.into_iter().zip(&msgs).zip(outcomes) {
        let failure = match outcome {
            Outcome::Failed(f) => Some(f),
            ref outcome => {
                let mut failure = None;
                for out in outcome.outputs(input).unwrap_or_default() {
                    let first = results.next().unwrap_or_else(|| {
                        Err(DeliveryError {
                            permanent: false,
                            message: "the sink returned too few results".into(),
                        })
                    });
                    match deliver_retrying(&*sink, &metrics, &pipeline, out, first).await {
                        Ok(()) => delivered += 1,
                        Err(reason) => {
                            failure.get_or_insert(Failure {
                                stage: "sink",
                                transform: None,
                                reason,
                            });
                        }
                    }
                }
                failure
            }
        };
        settled.push(Settled {
            seq,
            fatal: match failure {
                None => None,
                Some(f) => apply_policy(&*sink, &metrics, &pipeline, policy, input, f).await,
            },
        });
    }
    metrics.delivered.inc_by(delivered);
    settled
}

/// Applies the error policy to an input whose transform or delivery
/// failed; `Some(reason)` when the pipeline must stop (`errors.policy:
/// fail`) without acking it.
async fn apply_policy(
    sink: &dyn Sink,
    metrics: &PipelineMetrics,
    pipeline: &PipelineLog,
    policy: ErrorPolicy,
    input: &Message,
    f: Failure,
) -> Option<String> {
    let sink_stage = f.stage == "sink";
    if sink_stage {
        metrics.failed_sink.inc();
    } else {
        metrics.failed_transform.inc();
    }
    match policy {
        ErrorPolicy::DeadLetter => {
            if dead_letter_retrying(sink, metrics, pipeline, input, &f).await {
                if sink_stage {
                    metrics.dead_lettered_sink.inc();
                } else {
                    metrics.dead_lettered_transform.inc();
                }
            }
            None
        }
        ErrorPolicy::Drop => {
            if let Some(suppressed) = pipeline.admit() {
                tracing::warn!(pipeline = %pipeline.name, suppressed, stage = f.stage, transform = ?f.transform, error = %f.reason, mqtt_topic = %input.topic, "message failed and errors.policy is drop: discarded");
            }
            None
        }
        ErrorPolicy::Fail => Some(format!(
            "errors.policy fail: {} failed{}: {} (MQTT topic {})",
            f.stage,
            f.transform
                .as_deref()
                .map(|t| format!(" in transform `{t}`"))
                .unwrap_or_default(),
            f.reason,
            input.topic
        )),
    }
}

/// A pipeline's name for per-message log lines, which are rate-limited:
/// at most [`PipelineLog::BURST`] per [`PipelineLog::WINDOW`], then a count
/// of what was suppressed on the next line that gets through.
struct PipelineLog {
    name: Arc<str>,
    budget: Mutex<(std::time::Instant, u32, u64)>,
}

impl PipelineLog {
    const BURST: u32 = 10;
    const WINDOW: Duration = Duration::from_secs(10);

    fn new(name: &str) -> Self {
        PipelineLog {
            name: name.into(),
            budget: Mutex::new((std::time::Instant::now(), 0, 0)),
        }
    }

    /// `Some(lines suppressed since the last one logged)` if this line may
    /// be logged.
    fn admit(&self) -> Option<u64> {
        let mut b = self.budget.lock().ok()?;
        if b.0.elapsed() >= Self::WINDOW {
            b.0 = std::time::Instant::now();
            b.1 = 0;
        }
        if b.1 >= Self::BURST {
            b.2 += 1;
            return None;
        }
        b.1 += 1;
        Some(std::mem::take(&mut b.2))
    }
}

fn backoff(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << attempt.min(8)).min(10_000);
    let jitter = rand::random_range(0.5..1.0);
    Duration::from_millis(ms).mul_f64(jitter)
}

/// Takes `first`, the result of handing `m` to the sink, and hands it over
/// again after a transient error, with backoff, until it is delivered or
/// fails for good.
async fn deliver_retrying(
    sink: &dyn Sink,
    metrics: &PipelineMetrics,
    pipeline: &PipelineLog,
    m: &Message,
    first: Result<(), DeliveryError>,
) -> Result<(), String> {
    let mut attempt = 0;
    let mut result = first;
    loop {
        match result {
            Ok(()) => return Ok(()),
            Err(e) => {
                metrics.produce_errors.inc();
                if e.permanent {
                    return Err(e.message);
                }
                if let Some(suppressed) = pipeline.admit() {
                    tracing::warn!(pipeline = %pipeline.name, suppressed, error = %e, attempt, "delivery failed, retrying");
                }
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                result = sink.deliver(m).await;
            }
        }
    }
}

/// Writes a failed message to the dead-letter topic, retrying transient
/// errors. If the record itself is rejected for good (e.g. too large), it is
/// written once more without its payload, with `sluice.error.payload_omitted`
/// saying why. Returns whether a dead-letter record was written.
async fn dead_letter_retrying(
    sink: &dyn Sink,
    metrics: &PipelineMetrics,
    pipeline: &PipelineLog,
    m: &Message,
    f: &Failure,
) -> bool {
    let mut attempt = 0;
    let mut record = std::borrow::Cow::Borrowed(m);
    loop {
        match sink.dead_letter(&record, f).await {
            Ok(true) => return true,
            Ok(false) => {
                if let Some(suppressed) = pipeline.admit() {
                    tracing::error!(pipeline = %pipeline.name, suppressed, stage = f.stage, transform = ?f.transform, error = %f.reason, mqtt_topic = %m.topic, "message failed and no dead_letter_topic is configured: discarded");
                }
                return false;
            }
            Err(e) => {
                metrics.produce_errors.inc();
                if e.permanent {
                    if !record.payload.is_empty() {
                        let mut slim = m.clone();
                        slim.payload = bytes::Bytes::new();
                        slim.headers.push((
                            "sluice.error.payload_omitted".into(),
                            format!("{} bytes: {}", m.payload.len(), e.message),
                        ));
                        record = std::borrow::Cow::Owned(slim);
                        continue;
                    }
                    if let Some(suppressed) = pipeline.admit() {
                        tracing::error!(pipeline = %pipeline.name, suppressed, error = %e, reason = %f.reason, "dead-letter write rejected permanently: message discarded");
                    }
                    return false;
                }
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}
