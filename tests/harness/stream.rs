//! A long-running MQTT 5 QoS 1 publisher that survives broker restarts:
//! it reconnects and resends every message the broker had not acknowledged,
//! as QoS 1 requires of a publisher. Only what the broker acknowledged
//! (PUBACK) counts as sent. It also publishes at QoS 0, for benchmarks
//! ([`StreamPublisher::start_with_qos`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::Outgoing;

use crate::mqtt::{client_id, parse_url, MqttMessage, PUBLISH_TIMEOUT};
use crate::wait::{deadline, wait_until};

/// Messages handed to the client and not yet acknowledged, at most.
const WINDOW: usize = 500;
/// Pause between two connection attempts while the broker is away.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// How long one event-loop poll may block, so that paced publishing and
/// the stop flag are looked at often enough.
const POLL_SLICE: Duration = Duration::from_millis(20);

/// What a [`StreamPublisher`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamReport {
    /// Distinct messages the broker acknowledged (PUBACK), i.e. sent.
    pub sent: usize,
    /// Messages published again on a new connection because the old one
    /// broke before their PUBACK arrived (the broker may have had some of
    /// them already: QoS 1 allows duplicates).
    pub resent: usize,
    /// Connections made (1 when the broker never went away).
    pub connections: usize,
    /// From start to the last PUBACK.
    pub elapsed: Duration,
}

/// Progress shared with the publishing thread.
#[derive(Debug, Default)]
struct Shared {
    acked: AtomicUsize,
    connections: AtomicUsize,
    stop: AtomicBool,
}

/// Publishes `count` messages `make(0..count)` at QoS 1 over MQTT 5 on a
/// background thread, optionally paced, with up to 500 un-acknowledged at a
/// time. When the connection breaks (e.g. the broker restarts) it connects
/// again, with a clean session, and resends every message not yet
/// acknowledged, until all are acknowledged or [`PUBLISH_TIMEOUT`] passes.
///
/// `make` must return the same message for the same index: it is called
/// again for a resend.
///
/// Dropping it stops publishing (and joins the thread).
#[derive(Debug)]
pub struct StreamPublisher {
    shared: Arc<Shared>,
    count: usize,
    thread: Option<JoinHandle<Result<StreamReport, String>>>,
}

impl StreamPublisher {
    /// Starts publishing to `url` (`mqtt://host:port`). With
    /// `rate: Some(r)`, new messages go out at about `r` per second (resends
    /// are not paced); with `None`, as fast as the broker acknowledges.
    pub fn start(
        url: &str,
        count: usize,
        rate: Option<u32>,
        make: impl FnMut(usize) -> MqttMessage + Send + 'static,
    ) -> StreamPublisher {
        StreamPublisher::start_with_qos(url, count, rate, 1, make)
    }

    /// Like [`StreamPublisher::start`], at QoS `qos` (0 or 1). At QoS 0 a
    /// message counts as sent (and as "acknowledged") once the client wrote
    /// it to the socket; after a broken connection, only messages not yet
    /// written are sent again, so QoS 0 messages can be lost.
    pub fn start_with_qos(
        url: &str,
        count: usize,
        rate: Option<u32>,
        qos: u8,
        make: impl FnMut(usize) -> MqttMessage + Send + 'static,
    ) -> StreamPublisher {
        assert!(
            qos <= 1,
            "StreamPublisher publishes at QoS 0 or 1, not {qos}"
        );
        let qos = if qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let (host, port) = parse_url(url);
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime for the stream publisher")
                    .block_on(run(&host, port, count, rate, qos, make, &shared))
            })
        };
        StreamPublisher {
            shared,
            count,
            thread: Some(thread),
        }
    }

    /// Distinct messages acknowledged by the broker so far.
    pub fn acked(&self) -> usize {
        self.shared.acked.load(Ordering::Relaxed)
    }

    /// Connections made so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` messages are acknowledged (true) or
    /// `timeout` passes, or the publisher gave up (false).
    pub fn wait_acked(&self, n: usize, timeout: Duration) -> bool {
        let thread = self.thread.as_ref().expect("publisher thread");
        wait_until(deadline(timeout), || {
            self.acked() >= n.min(self.count) || thread.is_finished()
        }) && self.acked() >= n.min(self.count)
    }

    /// Waits until every message is acknowledged and returns the report.
    /// Panics if the publisher failed (e.g. [`PUBLISH_TIMEOUT`] passed).
    pub fn join(mut self) -> StreamReport {
        let thread = self.thread.take().expect("publisher thread");
        match thread.join() {
            Ok(Ok(report)) => report,
            Ok(Err(err)) => panic!("stream publisher ({} messages): {err}", self.count),
            Err(_) => panic!("stream publisher thread panicked"),
        }
    }
}

impl Drop for StreamPublisher {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shared.stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

fn options(host: &str, port: u16) -> MqttOptions {
    let mut options = MqttOptions::new(client_id("stream"), host, port);
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_clean_start(true)
        .set_outgoing_inflight_upper_limit(WINDOW as u16)
        .set_max_packet_size(Some(1024 * 1024))
        .set_request_channel_capacity(2 * WINDOW);
    // Each publish is written at once, not held back by Nagle's algorithm
    // (the message's time stamp is taken before it is queued).
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    options
}

/// The publishing loop: one connection per iteration of the outer loop.
async fn run(
    host: &str,
    port: u16,
    count: usize,
    rate: Option<u32>,
    qos: QoS,
    mut make: impl FnMut(usize) -> MqttMessage,
    shared: &Shared,
) -> Result<StreamReport, String> {
    let started = Instant::now();
    let give_up = started + PUBLISH_TIMEOUT;
    let mut acked = vec![false; count];
    let mut n_acked = 0usize;
    let mut next = 0usize; // the next index never handed out
    let mut resend: VecDeque<usize> = VecDeque::new();
    let mut resent = 0usize;
    let mut connections = 0usize;
    let mut last_error = String::from("none");
    while n_acked < count {
        if shared.stop.load(Ordering::Relaxed) {
            return Err(format!("stopped after {n_acked} acknowledged"));
        }
        if Instant::now() >= give_up {
            return Err(format!(
                "{n_acked} of {count} acknowledged after {PUBLISH_TIMEOUT:?} \
                 ({connections} connections, last error: {last_error})"
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(options(host, port), 2 * WINDOW);
        // Connect.
        let connected = loop {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break true,
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    last_error = format!("connect: {err}");
                    break false;
                }
                Err(_) => {
                    last_error = "connect: no CONNACK within 10 s".into();
                    break false;
                }
            }
        };
        if !connected {
            tokio::time::sleep(RECONNECT_BACKOFF).await;
            continue;
        }
        connections += 1;
        shared.connections.store(connections, Ordering::Relaxed);
        // Handed to the client, not yet written (no packet id yet), in order.
        let mut queued: VecDeque<usize> = VecDeque::new();
        // Written, waiting for the PUBACK: packet id -> index.
        let mut in_flight: HashMap<u16, usize> = HashMap::new();
        let broken = loop {
            if shared.stop.load(Ordering::Relaxed) {
                break None;
            }
            // Feed the client up to the window: resends first, then new
            // messages as the pace allows.
            let allowed = match rate {
                Some(rate) => {
                    ((started.elapsed().as_secs_f64() * f64::from(rate)) as usize).clamp(1, count)
                }
                None => count,
            };
            while queued.len() + in_flight.len() < WINDOW {
                let index = match resend.pop_front() {
                    Some(index) => index,
                    None if next < allowed => {
                        next += 1;
                        next - 1
                    }
                    None => break,
                };
                let message = make(index);
                let properties = PublishProperties {
                    user_properties: message.user_properties,
                    ..PublishProperties::default()
                };
                match client.try_publish_with_properties(
                    message.topic,
                    qos,
                    false,
                    message.payload,
                    properties,
                ) {
                    Ok(()) => queued.push_back(index),
                    Err(err) => {
                        resend.push_front(index);
                        last_error = format!("queue message {index}: {err}");
                        break;
                    }
                }
            }
            if n_acked == count {
                break None;
            }
            match tokio::time::timeout(POLL_SLICE, eventloop.poll()).await {
                Err(_) => {}
                Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    let index = queued
                        .pop_front()
                        .ok_or_else(|| format!("a publish (packet id {pkid}) we did not queue"))?;
                    if qos == QoS::AtMostOnce {
                        // Written: all that QoS 0 promises.
                        if !acked[index] {
                            acked[index] = true;
                            n_acked += 1;
                            shared.acked.store(n_acked, Ordering::Relaxed);
                        }
                    } else {
                        in_flight.insert(pkid, index);
                    }
                }
                Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                    let Some(index) = in_flight.remove(&ack.pkid) else {
                        return Err(format!("PUBACK for unknown packet id {}", ack.pkid));
                    };
                    match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                            if !acked[index] {
                                acked[index] = true;
                                n_acked += 1;
                                shared.acked.store(n_acked, Ordering::Relaxed);
                            }
                        }
                        reason => {
                            return Err(format!("the broker refused message {index}: {reason:?}"))
                        }
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(err)) => break Some(err.to_string()),
            }
        };
        match broken {
            Some(err) => {
                // Everything not acknowledged goes out again, in order.
                let mut again: Vec<usize> = in_flight.into_values().chain(queued).collect();
                again.sort_unstable();
                resent += again.len();
                for index in again.into_iter().rev() {
                    resend.push_front(index);
                }
                last_error = format!("connection {connections}: {err}");
                tokio::time::sleep(RECONNECT_BACKOFF).await;
            }
            None => {
                let _ = client.disconnect().await;
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    loop {
                        match eventloop.poll().await {
                            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
            }
        }
    }
    Ok(StreamReport {
        sent: n_acked,
        resent,
        connections,
        elapsed: started.elapsed(),
    })
}
