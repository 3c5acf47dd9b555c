//! The verifier: reads a case's Kafka topic from the beginning on its own
//! thread, counts sequence numbers (missing, duplicates) and records each
//! record's end-to-end latency, from the publish time stamped in the payload
//! to the moment this consumer has the record, and that latency split at
//! the record's Kafka time stamp.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_tests::{kafka_client_config, SeqCounter, Tally};

use crate::payload::{now_us, Stamp};

/// How long the verifier keeps reading after the last number arrived, for
/// late duplicates.
const GRACE: Duration = Duration::from_millis(500);

/// What the verifier saw.
pub struct Verified {
    /// Missing and duplicate numbers.
    pub tally: Tally,
    /// End-to-end latency of every record, µs.
    pub latency_us: Histogram<u64>,
    /// From the publish to the record's Kafka time stamp (CreateTime, set
    /// by the producer: Sluice stamps its MQTT receipt), µs; millisecond
    /// resolution.
    pub to_record_us: Histogram<u64>,
    /// From the record's Kafka time stamp to the read, µs.
    pub from_record_us: Histogram<u64>,
    /// When the last not-yet-seen number arrived.
    pub last_new: Option<Instant>,
    /// Records without a readable `seq`/`ts_us`.
    pub unreadable: usize,
    /// The last consumer error, if any.
    pub last_error: Option<String>,
}

/// A verifier running on its own thread.
pub struct Verifier {
    delivered: Arc<AtomicUsize>,
    warmed_up: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<Verified>>>,
}

impl Verifier {
    /// Starts reading `topic` for numbers `0..expected`; numbers
    /// `expected..expected + warmup` are warm-up messages, only counted
    /// ([`Verifier::warmed_up`]). A fetch waits up to `fetch_wait` for
    /// data. Returns once the consumer has its partitions assigned.
    pub fn start(
        brokers: &str,
        topic: &str,
        expected: usize,
        warmup: usize,
        fetch_wait: Duration,
    ) -> anyhow::Result<Verifier> {
        let consumer: BaseConsumer = kafka_client_config(brokers)
            .set(
                "group.id",
                format!("sluice-bench-verifier-{}", std::process::id()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
            .set("fetch.error.backoff.ms", "20")
            .create()
            .context("rdkafka consumer")?;
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("metadata of topic {topic}"))?;
        let mut assignment = TopicPartitionList::new();
        for t in metadata.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                assignment.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            }
        }
        anyhow::ensure!(
            assignment.count() > 0,
            "topic {topic} has no partitions in the broker's metadata"
        );
        consumer.assign(&assignment)?;
        let delivered = Arc::new(AtomicUsize::new(0));
        let warmed_up = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let progress = Progress {
                delivered: Arc::clone(&delivered),
                warmed_up: Arc::clone(&warmed_up),
                warmup: expected..expected + warmup,
            };
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("verifier".into())
                .spawn(move || Ok(read(&consumer, expected, &progress, &stop)))?
        };
        Ok(Verifier {
            delivered,
            warmed_up,
            stop,
            thread: Some(thread),
        })
    }

    /// Distinct numbers seen so far.
    pub fn delivered(&self) -> usize {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Warm-up records seen so far.
    pub fn warmed_up(&self) -> usize {
        self.warmed_up.load(Ordering::Relaxed)
    }

    /// True once every number arrived and the grace period passed.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops reading (if not finished) and returns what was seen.
    pub fn finish(mut self) -> anyhow::Result<Verified> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().context("verifier already finished")?;
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("verifier thread panicked"))?
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Counters shared with the reading thread.
struct Progress {
    delivered: Arc<AtomicUsize>,
    warmed_up: Arc<AtomicUsize>,
    warmup: std::ops::Range<usize>,
}

fn read(
    consumer: &BaseConsumer,
    expected: usize,
    progress: &Progress,
    stop: &AtomicBool,
) -> Verified {
    let mut counter = SeqCounter::new(expected);
    // 1 µs .. 1 h, 3 significant digits.
    let histogram =
        || Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
    let (mut latency_us, mut to_record_us, mut from_record_us) =
        (histogram(), histogram(), histogram());
    let mut last_new = None;
    let mut complete_at: Option<Instant> = None;
    let mut unreadable = 0;
    let mut last_error = None;
    while !stop.load(Ordering::Relaxed) && complete_at.is_none_or(|t| t.elapsed() < GRACE) {
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(message)) => {
                let now = now_us();
                let Some(stamp) = message.payload().and_then(Stamp::parse) else {
                    unreadable += 1;
                    continue;
                };
                if usize::try_from(stamp.seq).is_ok_and(|s| progress.warmup.contains(&s)) {
                    progress.warmed_up.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                latency_us.saturating_record(now.saturating_sub(stamp.ts_us).max(1));
                let record_ms = message.timestamp().to_millis();
                if let Some(record_us) = record_ms.and_then(|ms| u64::try_from(ms).ok()) {
                    let record_us = record_us.saturating_mul(1000);
                    to_record_us.saturating_record(record_us.saturating_sub(stamp.ts_us).max(1));
                    from_record_us.saturating_record(now.saturating_sub(record_us).max(1));
                }
                let before = counter.tally().delivered;
                counter.add(stamp.seq);
                let tally = counter.tally();
                if tally.delivered > before {
                    last_new = Some(Instant::now());
                    progress.delivered.store(tally.delivered, Ordering::Relaxed);
                    if tally.delivered == expected {
                        complete_at = Some(Instant::now());
                    }
                }
            }
            Some(Err(err)) => last_error = Some(err.to_string()),
            None => {}
        }
    }
    Verified {
        tally: counter.tally(),
        latency_us,
        to_record_us,
        from_record_us,
        last_new,
        unreadable,
        last_error,
    }
}
