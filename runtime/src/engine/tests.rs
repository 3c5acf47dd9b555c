//! Engine behaviour on in-process fakes: ack order, the window, retries,
//! dead letters, draining. (The real-broker suite is in `tests/`.)

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, watch};

use super::*;
use crate::connectors::{
    AckToken, Acker, DeliveryError, Failure, Inbound, Sink, SourceHandle, WindowSlot,
};
use crate::message::Message;
use crate::metrics::Metrics;

fn pipeline(max_in_flight: usize) -> Pipeline {
    pipeline_with(max_in_flight, "{ dead_letter_topic: dlq }")
}

fn pipeline_with(max_in_flight: usize, errors: &str) -> Pipeline {
    let yaml = format!(
        "apiVersion: sluice/v1\nname: fake\nmax_in_flight: {max_in_flight}\nbatch: {{ max_messages: 8, max_wait_ms: 1 }}\n\
         source:\n  mqtt:\n    url: mqtt://127.0.0.1:1\n    client_id: c\n    topics: [{{ filter: a/+, qos: 1 }}]\n\
         sink:\n  kafka: {{ brokers: 127.0.0.1:1, topic: t }}\nerrors: {errors}\n"
    );
    crate::config::load_str(Path::new("fake.yaml"), &yaml, |_| None).expect("valid test pipeline")
}

/// Headers of one dead-letter record.
type Headers = Vec<(String, String)>;

#[derive(Default)]
struct Acks(Mutex<Vec<AckToken>>);

impl Acker for Acks {
    fn ack(&self, acks: Vec<(AckToken, WindowSlot)>) {
        self.0
            .lock()
            .unwrap()
            .extend(acks.into_iter().map(|(token, _slot)| token));
    }
}

/// A sink whose behaviour is chosen by payload: `perm` fails permanently,
/// `flaky` fails transiently twice, `hold` waits for the gate; anything else
/// succeeds after a delay derived from the payload (to reorder completions).
struct FakeSink {
    gate: watch::Receiver<bool>,
    delivered: Arc<Mutex<Vec<String>>>,
    dead: Arc<Mutex<Vec<(String, String)>>>,
    dead_headers: Arc<Mutex<Vec<Headers>>>,
    started: Arc<AtomicUsize>,
    flaky_failures: Arc<AtomicUsize>,
    connected: watch::Receiver<bool>,
}

impl Sink for FakeSink {
    fn deliver(&self, msg: &Message) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let payload = String::from_utf8_lossy(&msg.payload).into_owned();
        let mut gate = self.gate.clone();
        let delivered = self.delivered.clone();
        let flaky = self.flaky_failures.clone();
        self.started.fetch_add(1, Ordering::SeqCst);
        // Like Kafka's producer, the delivery starts at the call (see
        // `Sink::deliver`); the returned future only waits for its result.
        let delivery = tokio::spawn(async move {
            if payload == "perm" || payload == "huge" {
                return Err(DeliveryError {
                    permanent: true,
                    message: "too large".into(),
                });
            }
            if payload == "flaky" && flaky.fetch_add(1, Ordering::SeqCst) < 2 {
                return Err(DeliveryError {
                    permanent: false,
                    message: "broker down".into(),
                });
            }
            if payload.starts_with("hold") {
                let _ = gate.wait_for(|open| *open).await;
            }
            let delay = payload.bytes().map(u64::from).sum::<u64>() % 7;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            delivered.lock().unwrap().push(payload);
            Ok(())
        });
        async move {
            delivery.await.unwrap_or_else(|e| {
                Err(DeliveryError {
                    permanent: false,
                    message: e.to_string(),
                })
            })
        }
        .boxed()
    }

    fn dead_letter(
        &self,
        msg: &Message,
        failure: &Failure,
    ) -> BoxFuture<'static, Result<bool, DeliveryError>> {
        if &msg.payload[..] == b"huge" {
            // Too large for the dead-letter topic as well.
            return async {
                Err(DeliveryError {
                    permanent: true,
                    message: "too large".into(),
                })
            }
            .boxed();
        }
        self.dead.lock().unwrap().push((
            String::from_utf8_lossy(&msg.payload).into_owned(),
            failure.reason.clone(),
        ));
        self.dead_headers.lock().unwrap().push(msg.headers.clone());
        async { Ok(true) }.boxed()
    }

    fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    fn flush(&self, _timeout: Duration) -> BoxFuture<'static, ()> {
        async {}.boxed()
    }
}

struct Harness {
    tx: mpsc::Sender<Inbound>,
    acks: Arc<Acks>,
    delivered: Arc<Mutex<Vec<String>>>,
    dead: Arc<Mutex<Vec<(String, String)>>>,
    dead_headers: Arc<Mutex<Vec<Headers>>>,
    started: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
    status: Arc<Status>,
    task: tokio::task::JoinHandle<Result<(), String>>,
    _connected: watch::Sender<bool>,
}

fn start(max_in_flight: usize) -> Harness {
    start_with(pipeline(max_in_flight))
}

fn start_with(p: Pipeline) -> Harness {
    let host = Arc::new(WasmHost::new(None).expect("engine"));
    let metrics = Metrics::new();
    let status = Arc::new(Status::new("fake", Arc::new(metrics.pipeline("fake", &[]))));
    let (tx, rx) = mpsc::channel(10_000);
    let acks = Arc::new(Acks::default());
    let (gate, gate_rx) = watch::channel(false);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (connected, connected_rx) = watch::channel(true);
    let sink = FakeSink {
        gate: gate_rx,
        delivered: Arc::default(),
        dead: Arc::default(),
        dead_headers: Arc::default(),
        started: Arc::default(),
        flaky_failures: Arc::default(),
        connected: connected_rx.clone(),
    };
    let (delivered, dead, started) = (
        sink.delivered.clone(),
        sink.dead.clone(),
        sink.started.clone(),
    );
    let dead_headers = sink.dead_headers.clone();
    let acker: Arc<dyn Acker> = acks.clone();
    let source = SourceHandle {
        messages: rx,
        acker,
        connected: connected_rx,
        stop_intake: Box::new(|| {}),
        close: Box::new(|| async {}.boxed()),
    };
    let st = status.clone();
    let task = tokio::spawn(async move {
        let sink: Arc<dyn Sink> = Arc::new(sink);
        run_with(&p, &host, &st, shutdown_rx, move |_| Ok((sink, source))).await
    });
    Harness {
        tx,
        acks,
        delivered,
        dead,
        dead_headers,
        started,
        gate,
        shutdown,
        status,
        task,
        _connected: connected,
    }
}

fn msg(payload: &str) -> Message {
    Message {
        topic: "a/b".into(),
        payload: payload.as_bytes().to_vec().into(),
        ..Message::default()
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

impl Harness {
    async fn send(&self, token: u64, payload: &str) {
        self.tx
            .send(Inbound {
                msg: msg(payload),
                token,
            })
            .await
            .unwrap();
    }
    fn acks(&self) -> Vec<u64> {
        self.acks.0.lock().unwrap().clone()
    }
    async fn stop(self) {
        self.shutdown.send_replace(true);
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn acks_leave_in_arrival_order_although_deliveries_finish_out_of_order() {
    let h = start(1000);
    for i in 0..300 {
        h.send(i, &format!("m{i}")).await;
    }
    eventually("all acked", || h.acks().len() == 300).await;
    assert_eq!(h.acks(), (0..300).collect::<Vec<_>>());
    let delivered = h.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 300);
    assert_ne!(
        delivered,
        (0..300).map(|i| format!("m{i}")).collect::<Vec<_>>(),
        "the fake sink should reorder"
    );
    assert_eq!(h.status.metrics.in_flight.get(), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_held_delivery_holds_back_every_later_ack() {
    let h = start(1000);
    h.send(0, "hold-0").await;
    for i in 1..20 {
        h.send(i, &format!("m{i}")).await;
    }
    eventually("later messages delivered", || {
        h.delivered.lock().unwrap().len() == 19
    })
    .await;
    assert!(
        h.acks().is_empty(),
        "nothing may be acked before message 0 is in Kafka"
    );
    h.gate.send_replace(true);
    eventually("all acked", || h.acks().len() == 20).await;
    assert_eq!(h.acks(), (0..20).collect::<Vec<_>>());
    h.stop().await;
}

#[tokio::test]
async fn the_window_bounds_unacked_messages() {
    let h = start(10);
    for i in 0..50 {
        h.send(i, &format!("hold-{i}")).await;
    }
    eventually("window full", || h.status.metrics.in_flight.get() == 10).await;
    eventually("ten deliveries started", || {
        h.started.load(Ordering::SeqCst) == 10
    })
    .await;
    // The window is full: no further message is taken from the source.
    assert_eq!(h.status.metrics.received.get(), 10);
    assert_eq!(h.started.load(Ordering::SeqCst), 10);
    h.gate.send_replace(true);
    eventually("all acked", || h.acks().len() == 50).await;
    assert_eq!(h.acks(), (0..50).collect::<Vec<_>>());
    h.stop().await;
}

#[tokio::test]
async fn transient_failures_are_retried_and_acked_only_after_success() {
    let h = start(100);
    h.send(0, "flaky").await;
    h.send(1, "ok").await;
    eventually("acked", || h.acks().len() == 2).await;
    assert_eq!(
        h.delivered
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == "flaky")
            .count(),
        1
    );
    assert_eq!(h.status.metrics.produce_errors.get(), 2);
    assert!(h.dead.lock().unwrap().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_and_then_acked() {
    let h = start(100);
    h.send(0, "perm").await;
    h.send(1, "ok").await;
    eventually("acked", || h.acks().len() == 2).await;
    assert_eq!(
        *h.dead.lock().unwrap(),
        vec![("perm".to_string(), "too large".to_string())]
    );
    assert_eq!(h.status.metrics.dead_lettered_sink.get(), 1);
    assert_eq!(h.status.metrics.delivered.get(), 1);
    h.stop().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_messages_before_returning() {
    let h = start(100);
    for i in 0..5 {
        h.send(i, &format!("hold-{i}")).await;
    }
    eventually("in flight", || h.status.metrics.in_flight.get() == 5).await;
    h.shutdown.send_replace(true);
    h.gate.send_replace(true);
    let acks = h.acks.clone();
    h.task.await.unwrap().unwrap();
    assert_eq!(*acks.0.lock().unwrap(), (0..5).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_dead_letter_too_large_for_kafka_is_written_without_its_payload() {
    let h = start(100);
    h.send(0, "huge").await;
    h.send(1, "ok").await;
    eventually("acked", || h.acks().len() == 2).await;
    assert_eq!(h.dead.lock().unwrap()[0].0, "", "payload omitted");
    let headers = h.dead_headers.lock().unwrap()[0].clone();
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "sluice.error.payload_omitted" && v.starts_with("4 bytes")),
        "{headers:?}"
    );
    assert_eq!(h.status.metrics.dead_lettered_sink.get(), 1);
    h.stop().await;
}

#[tokio::test]
async fn the_drop_policy_acks_and_counts_a_failed_message() {
    let h = start_with(pipeline_with(100, "{ policy: drop }"));
    h.send(0, "perm").await;
    h.send(1, "ok").await;
    eventually("acked", || h.acks().len() == 2).await;
    assert!(h.dead.lock().unwrap().is_empty());
    assert_eq!(h.status.metrics.failed_sink.get(), 1);
    assert_eq!(h.status.metrics.dead_lettered_sink.get(), 0);
    h.stop().await;
}

#[tokio::test]
async fn the_fail_policy_stops_the_pipeline_without_acking_the_failed_message() {
    let h = start_with(pipeline_with(100, "{ policy: fail }"));
    h.send(0, "ok").await;
    h.send(1, "perm").await;
    h.send(2, "ok").await;
    let acks = h.acks.clone();
    let result = tokio::time::timeout(Duration::from_secs(10), h.task)
        .await
        .expect("the pipeline stops by itself")
        .unwrap();
    let err = result.expect_err("a fatal error");
    assert!(
        err.contains("errors.policy fail") && err.contains("too large"),
        "{err}"
    );
    // Message 0 may be acked; 1 (failed) and 2 (after it) never are.
    let acked = acks.0.lock().unwrap().clone();
    assert!(acked.iter().all(|t| *t == 0), "{acked:?}");
}

#[tokio::test]
async fn the_default_policy_without_a_dead_letter_topic_is_fail() {
    let p = pipeline_with(100, "{}");
    assert_eq!(p.errors.policy(), crate::config::ErrorPolicy::Fail);
    assert_eq!(
        pipeline(100).errors.policy(),
        crate::config::ErrorPolicy::DeadLetter
    );
}

#[test]
fn per_message_log_lines_are_rate_limited_and_count_what_was_suppressed() {
    let log = PipelineLog::new("p");
    let admitted: Vec<Option<u64>> = (0..PipelineLog::BURST + 5).map(|_| log.admit()).collect();
    assert!(admitted[..PipelineLog::BURST as usize]
        .iter()
        .all(|a| *a == Some(0)));
    assert!(admitted[PipelineLog::BURST as usize..]
        .iter()
        .all(|a| a.is_none()));
    // A new window: the first line reports the 5 suppressed.
    if let Ok(mut b) = log.budget.lock() {
        b.0 -= PipelineLog::WINDOW;
    }
    assert_eq!(log.admit(), Some(5));
    assert_eq!(log.admit(), Some(0));
}
