//! Reading Kafka topics back (and producing to them) with rdkafka, without
//! consumer groups: the reader assigns every partition from the beginning.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::tansu::client_config;
use crate::wait::deadline;

/// How long [`consume`] keeps reading after reaching the expected count, to
/// catch extra records and duplicates.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(1500);

/// One Kafka record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Topic it was read from.
    pub topic: String,
    /// Partition it was read from.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// Key, if any.
    pub key: Option<Vec<u8>>,
    /// Payload (empty for a null payload).
    pub payload: Vec<u8>,
    /// Headers in order (a null header value reads as empty).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Create or log-append time in milliseconds since the epoch, if set.
    pub timestamp: Option<i64>,
}

impl Record {
    fn from_message(message: &BorrowedMessage<'_>) -> Record {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| {
                        (
                            header.key.to_owned(),
                            header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
            timestamp: message.timestamp().to_millis(),
        }
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_slice())
    }

    /// The value of the first header called `name`, as UTF-8 (lossy).
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }

    /// The key as UTF-8 (lossy).
    pub fn key_str(&self) -> Option<String> {
        self.key
            .as_deref()
            .map(|key| String::from_utf8_lossy(key).into_owned())
    }

    /// The payload as UTF-8 (lossy).
    pub fn payload_str(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The payload parsed as JSON; panics with the payload if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|err| {
            panic!(
                "record {}/{}@{} is not JSON ({err}): {:?}",
                self.topic,
                self.partition,
                self.offset,
                self.payload_str()
            )
        })
    }
}

/// Reads one topic from the beginning of every partition, incrementally.
/// The topic may not exist yet: the reader assigns its partitions as soon as
/// the broker's metadata shows them.
///
/// Every offset is read exactly once, in spite of a race in tansu: when two
/// producers write to one partition at once, tansu raises the high watermark
/// for a batch before it stores that batch, so a fetch in between skips the
/// batch's offsets. The reader notices the hole (a record above the next
/// expected offset), seeks back to it until it fills, and drops the offsets
/// it read twice. A topic with genuine holes (compaction, transaction
/// markers) makes the reader seek back until its deadline; no test has one.
pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    assigned: bool,
    records: Vec<Record>,
    progress: HashMap<i32, Progress>,
    last_error: Option<String>,
}

/// What a [`TopicReader`] has read of one partition.
#[derive(Debug)]
struct Progress {
    /// Every offset below this one has been read.
    next: i64,
    /// Offsets read above `next`: non-empty means a hole at `next`.
    ahead: BTreeSet<i64>,
    /// When the reader last sought back to `next`.
    sought: Option<Instant>,
    /// The highest offset read when it did, until the re-read from the
    /// hole reaches it again: the reader seeks back again only then, so a
    /// long tail after a hole is read to its end, not restarted.
    rereading_to: Option<i64>,
}

/// How often a [`TopicReader`] seeks back to a hole while it stays open.
const HOLE_RETRY: Duration = Duration::from_millis(20);
/// How long a re-read may take to come back to where it started before
/// the reader seeks back to the hole anyway.
const REREAD_LIMIT: Duration = Duration::from_secs(1);

impl Progress {
    fn new(next: i64) -> Progress {
        Progress {
            next,
            ahead: BTreeSet::new(),
            sought: None,
            rereading_to: None,
        }
    }

    /// Records that `offset` was read; false if it had been read before.
    fn read(&mut self, offset: i64) -> bool {
        if self.rereading_to.is_some_and(|to| offset >= to) {
            self.rereading_to = None;
        }
        if offset < self.next || !self.ahead.insert(offset) {
            return false;
        }
        while self.ahead.remove(&self.next) {
            self.next += 1;
        }
        true
    }

    /// The offset to seek back to, if there is a hole, the last re-read is
    /// done (or overdue) and the last seek is not recent.
    fn hole(&mut self, now: Instant) -> Option<i64> {
        let since = self.sought.map(|at| now - at);
        if self.ahead.is_empty()
            || since.is_some_and(|since| since < HOLE_RETRY)
            || (self.rereading_to.is_some() && since.is_some_and(|since| since < REREAD_LIMIT))
        {
            return None;
        }
        self.sought = Some(now);
        self.rereading_to = self.ahead.last().copied();
        Some(self.next)
    }
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader")
            .field("topic", &self.topic)
            .field("assigned", &self.assigned)
            .field("records", &self.records.len())
            .field("last_error", &self.last_error)
            .finish()
    }
}

impl TopicReader {
    /// A reader of `topic` on `brokers` (`host:port,...`).
    pub fn new(brokers: &str, topic: &str) -> TopicReader {
        // librdkafka's assign() needs a group.id, though the reader never
        // joins the group nor commits: a unique one per reader.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let group = format!(
            "sluice-test-reader-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let consumer: BaseConsumer = client_config(brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "100")
            .set("fetch.error.backoff.ms", "50")
            .create()
            .expect("rdkafka consumer");
        TopicReader {
            consumer,
            topic: topic.to_owned(),
            assigned: false,
            records: Vec::new(),
            progress: HashMap::new(),
            last_error: None,
        }
    }

    fn try_assign(&mut self) -> bool {
        if self.assigned {
            return true;
        }
        let metadata = match self
            .consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(2))
        {
            Ok(metadata) => metadata,
            Err(err) => {
                self.last_error = Some(format!("metadata: {err}"));
                return false;
            }
        };
        let Some(topic) = metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == self.topic)
        else {
            return false;
        };
        if topic.error().is_some() || topic.partitions().is_empty() {
            return false;
        }
        let mut assignment = TopicPartitionList::new();
        let mut progress = HashMap::new();
        for partition in topic.partitions() {
            let (low, _high) = match self.consumer.fetch_watermarks(
                &self.topic,
                partition.id(),
                Duration::from_secs(2),
            ) {
                Ok(watermarks) => watermarks,
                Err(err) => {
                    self.last_error = Some(format!("watermarks: {err}"));
                    return false;
                }
            };
            // -1: the broker does not know; librdkafka would read that as
            // the end of the partition.
            let low = low.max(0);
            progress.insert(partition.id(), Progress::new(low));
            assignment
                .add_partition_offset(&self.topic, partition.id(), Offset::Offset(low))
                .expect("add partition to assignment");
        }
        self.consumer
            .assign(&assignment)
            .expect("assign partitions");
        self.progress = progress;
        self.assigned = true;
        true
    }

    /// Keeps `record` unless its offset was read before.
    fn accept(&mut self, record: Record) {
        let partition = record.partition;
        let Some(progress) = self.progress.get_mut(&partition) else {
            self.last_error = Some(format!("a record of unassigned partition {partition}"));
            return;
        };
        if progress.read(record.offset) {
            self.records.push(record);
        }
    }

    /// Seeks every partition with a hole back to it (see the type's doc).
    fn seek_holes(&mut self) {
        let now = Instant::now();
        for (&partition, progress) in &mut self.progress {
            if let Some(offset) = progress.hole(now) {
                if let Err(err) = self.consumer.seek(
                    &self.topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(1),
                ) {
                    self.last_error = Some(format!("seek to hole {partition}@{offset}: {err}"));
                }
            }
        }
    }

    /// Reads whatever arrives during `duration`; returns how many records
    /// were added.
    pub fn poll_for(&mut self, duration: Duration) -> usize {
        let until = deadline(duration);
        let before = self.records.len();
        self.read_while(until, |_| true);
        self.records.len() - before
    }

    /// Reads until at least `count` records have been read (true) or
    /// `deadline` passes (false).
    pub fn read_until(&mut self, count: usize, deadline: Instant) -> bool {
        self.read_until_with(deadline, |records| records.len() >= count)
    }

    /// Reads until `done(records so far)` is true (true) or `deadline`
    /// passes (false).
    pub fn read_until_with(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> bool {
        if done(&self.records) {
            return true;
        }
        self.read_while(deadline, |records| !done(records));
        done(&self.records)
    }

    fn read_while(&mut self, deadline: Instant, mut go_on: impl FnMut(&[Record]) -> bool) {
        loop {
            let now = Instant::now();
            if now >= deadline || !go_on(&self.records) {
                return;
            }
            let slice = (deadline - now).min(Duration::from_millis(100));
            if !self.try_assign() {
                std::thread::sleep(slice.min(Duration::from_millis(50)));
                continue;
            }
            let polled = self
                .consumer
                .poll(slice)
                .map(|polled| polled.map(|message| Record::from_message(&message)));
            match polled {
                Some(Ok(record)) => self.accept(record),
                Some(Err(err)) => self.last_error = Some(err.to_string()),
                None => {}
            }
            self.seek_holes();
        }
    }

    /// Everything read so far, in the order read: records of a hole that
    /// filled late come after higher offsets of their partition.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Everything read so far.
    pub fn into_records(self) -> Vec<Record> {
        self.records
    }

    /// The last error the consumer reported, if any (for diagnostics).
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

/// Reads `topic` from the beginning until `expected` records arrived, then
/// for [`DEFAULT_GRACE`] more (to catch extras and duplicates), or until
/// `timeout` passes. Returns everything read.
pub fn consume(brokers: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<Record> {
    consume_with_grace(brokers, topic, expected, timeout, DEFAULT_GRACE)
}

/// [`consume`] with an explicit grace window.
pub fn consume_with_grace(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
    grace: Duration,
) -> Vec<Record> {
    let mut reader = TopicReader::new(brokers, topic);
    if reader.read_until(expected, deadline(timeout)) {
        reader.poll_for(grace);
    }
    reader.into_records()
}

/// One record to [`produce`].
#[derive(Debug, Clone, Default)]
pub struct KafkaMessage {
    /// Key, if any.
    pub key: Option<Vec<u8>>,
    /// Payload.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Produces `messages` to `topic` (idempotent producer, acks=all) and waits
/// for every delivery report; returns `(partition, offset)` per message.
/// Panics on any delivery error.
pub fn produce(brokers: &str, topic: &str, messages: &[KafkaMessage]) -> Vec<(i32, i64)> {
    let producer: FutureProducer = client_config(brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("rdkafka producer");
    let mut pending = Vec::with_capacity(messages.len());
    for message in messages {
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (key, value) in &message.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .payload(message.payload.as_slice())
            .headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_slice());
        }
        let delivery = producer
            .send_result(record)
            .unwrap_or_else(|(err, _)| panic!("enqueue to {topic}: {err}"));
        pending.push(delivery);
    }
    pending
        .into_iter()
        .map(|delivery| match futures::executor::block_on(delivery) {
            Ok(Ok(delivery)) => (delivery.partition, delivery.offset),
            Ok(Err((err, _))) => panic!("produce to {topic}: {err}"),
            Err(_) => panic!("produce to {topic}: delivery report lost"),
        })
        .collect()
}

/// Counts how often each value of `key(record)` occurs.
pub fn count_by<K: std::hash::Hash + Eq>(
    records: &[Record],
    mut key: impl FnMut(&Record) -> K,
) -> HashMap<K, usize> {
    let mut counts = HashMap::new();
    for record in records {
        *counts.entry(key(record)).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hole_is_sought_back_to_until_it_fills_and_offsets_read_twice_are_dropped() {
        let mut read = Progress::new(0);
        let start = Instant::now();
        assert!(read.read(0));
        assert_eq!(read.hole(start), None);
        // Offsets 1 and 2 are not there yet when 3 and 4 arrive.
        assert!(read.read(3));
        assert!(read.read(4));
        assert_eq!(read.hole(start), Some(1));
        assert_eq!(read.hole(start), None, "not again within {HOLE_RETRY:?}");
        // Not again before the re-read has come back to offset 4 ...
        assert_eq!(read.hole(start + HOLE_RETRY), None);
        assert!(!read.read(3));
        assert!(!read.read(4));
        // ... unless it takes longer than REREAD_LIMIT.
        assert_eq!(read.hole(start + HOLE_RETRY * 2), Some(1));
        assert_eq!(read.hole(start + HOLE_RETRY * 3), None);
        assert_eq!(read.hole(start + HOLE_RETRY * 2 + REREAD_LIMIT), Some(1));
        // The re-read brings the hole and the offsets after it again.
        assert!(read.read(1));
        assert!(read.read(2));
        assert!(!read.read(3));
        assert!(!read.read(4));
        assert!(!read.read(0));
        assert_eq!(read.next, 5);
        assert_eq!(read.hole(start + REREAD_LIMIT * 3), None, "no hole left");
        assert!(read.read(5));
    }
}
