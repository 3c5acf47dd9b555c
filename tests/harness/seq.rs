//! Sequence-numbered streams and their verification, the way Kafka's own
//! system tests prove delivery (`test_bounce`): the publisher stamps a
//! sequence number `0..sent` in every message, and a verifier reads the
//! Kafka topics back and reports which numbers are missing and which arrived
//! more than once.
//!
//! - [`telemetry`] makes the standard message: ~150 bytes of JSON with a
//!   `seq` field, on one of 1,000 device topics (`fleet/dev-NNNN/telemetry`).
//! - [`record_seq`] reads the number back from a record: the JSON field
//!   `seq` of the payload, else a `seq` header (an MQTT v5 user property;
//!   for payloads that are not JSON, or dead letters without a payload).
//! - [`SeqCounter`] tallies numbers; [`SeqVerifier`] reads one or more
//!   topics incrementally into a counter (so a test can act on progress in
//!   Kafka, e.g. kill the runtime at 25 %, and later read the rest).

use std::time::{Duration, Instant};

use crate::kafka::{Record, TopicReader};
use crate::mqtt::MqttMessage;

/// How long [`SeqVerifier`] reads between two looks at its tally.
const READ_SLICE: Duration = Duration::from_millis(20);

/// ~150 bytes of JSON telemetry for sequence number `seq`, on topic
/// `fleet/dev-NNNN/telemetry` with `NNNN = seq % 1000`. The same `seq`
/// always gives the same message (publishers rely on that to resend).
pub fn telemetry(seq: usize) -> MqttMessage {
    let device = seq % 1000;
    let payload = format!(
        r#"{{"seq":{seq},"temperature_f":{:.1},"humidity":{:.1},"battery_mv":{},"firmware":"1.4.2","status":"ok","site":"plant-{:02}/line-{}","ts":{}}}"#,
        50.0 + (seq % 500) as f64 / 10.0,
        30.0 + (seq % 400) as f64 / 10.0,
        3300 + seq % 900,
        seq % 17,
        seq % 5,
        1_700_000_000_000_u64 + seq as u64,
    );
    MqttMessage::new(format!("fleet/dev-{device:04}/telemetry"), payload)
}

/// The sequence number of a record: the integer JSON field `seq` of its
/// payload, else its `seq` header parsed as an integer; `None` if neither.
pub fn try_record_seq(record: &Record) -> Option<i64> {
    serde_json::from_slice::<serde_json::Value>(&record.payload)
        .ok()
        .and_then(|value| value.get("seq").and_then(serde_json::Value::as_i64))
        .or_else(|| record.header_str("seq").and_then(|s| s.trim().parse().ok()))
}

/// [`try_record_seq`], panicking with the record if it has no number.
pub fn record_seq(record: &Record) -> i64 {
    try_record_seq(record).unwrap_or_else(|| {
        panic!(
            "record {}/{}@{} has no sequence number (JSON `seq` or `seq` header): {:?} {:?}",
            record.topic,
            record.partition,
            record.offset,
            record.payload_str().chars().take(200).collect::<String>(),
            record.headers
        )
    })
}

/// Delivery accounting for `sent` messages numbered `0..sent`. Displays as
/// `sent N, delivered N, missing M, duplicates D` (plus `, out of range U`
/// when records carried numbers outside `0..sent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Messages numbered `0..sent` that were published.
    pub sent: usize,
    /// Distinct numbers seen.
    pub delivered: usize,
    /// Numbers never seen (`sent - delivered`).
    pub missing: usize,
    /// Records beyond the first for a number.
    pub duplicates: usize,
    /// Records whose number is outside `0..sent`.
    pub unexpected: usize,
}

impl Tally {
    /// Nothing seen yet.
    pub fn new(sent: usize) -> Tally {
        Tally {
            sent,
            delivered: 0,
            missing: sent,
            duplicates: 0,
            unexpected: 0,
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, delivered {}, missing {}, duplicates {}",
            self.sent, self.delivered, self.missing, self.duplicates
        )?;
        if self.unexpected > 0 {
            write!(f, ", out of range {}", self.unexpected)?;
        }
        Ok(())
    }
}

/// Counts how often each sequence number `0..sent` was seen.
#[derive(Debug, Clone)]
pub struct SeqCounter {
    counts: Vec<u32>,
    tally: Tally,
}

impl SeqCounter {
    /// A counter for numbers `0..sent`.
    pub fn new(sent: usize) -> SeqCounter {
        SeqCounter {
            counts: vec![0; sent],
            tally: Tally::new(sent),
        }
    }

    /// Counts one occurrence of `seq`.
    pub fn add(&mut self, seq: i64) {
        match usize::try_from(seq).ok().filter(|&s| s < self.counts.len()) {
            Some(seq) => {
                self.counts[seq] += 1;
                if self.counts[seq] == 1 {
                    self.tally.delivered += 1;
                    self.tally.missing -= 1;
                } else {
                    self.tally.duplicates += 1;
                }
            }
            None => self.tally.unexpected += 1,
        }
    }

    /// The tally so far.
    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// How often `seq` was seen (0 for a number outside `0..sent`).
    pub fn count(&self, seq: usize) -> u32 {
        self.counts.get(seq).copied().unwrap_or(0)
    }

    /// The first `n` numbers never seen.
    pub fn first_missing(&self, n: usize) -> Vec<usize> {
        (0..self.counts.len())
            .filter(|&seq| self.counts[seq] == 0)
            .take(n)
            .collect()
    }

    /// The first `n` runs of numbers never seen, as `first..=last`.
    pub fn missing_ranges(&self, n: usize) -> Vec<String> {
        ranges(&self.counts, |count| count == 0, n)
    }

    /// The first `n` runs of numbers seen more than once, as `first..=last`.
    pub fn duplicate_ranges(&self, n: usize) -> Vec<String> {
        ranges(&self.counts, |count| count > 1, n)
    }
}

/// The first `n` runs of indexes whose count satisfies `pick`, as
/// `first..=last` text.
fn ranges(counts: &[u32], pick: impl Fn(u32) -> bool, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = None;
    for (index, &count) in counts.iter().chain(std::iter::once(&0)).enumerate() {
        match (pick(count) && index < counts.len(), start) {
            (true, None) => start = Some(index),
            (false, Some(first)) => {
                out.push(format!("{first}..={}", index - 1));
                start = None;
                if out.len() == n {
                    break;
                }
            }
            _ => {}
        }
    }
    out
}

/// Reads one or more Kafka topics from the beginning, incrementally, and
/// counts every record's sequence number once into one [`SeqCounter`]
/// (so a message counts as delivered whichever of the topics it reached,
/// e.g. the main topic or the dead-letter topic).
///
/// Every reading method takes `seq_of`, which extracts the number from a
/// record ([`record_seq`] for the standard messages; a test may also check
/// each record there).
///
/// ```no_run
/// use sluice_tests::*;
/// use std::time::Duration;
///
/// let mut verifier = SeqVerifier::new("127.0.0.1:9092", &["out", "out.dlq"], 10_000);
/// // Act once a quarter has arrived ...
/// verifier.read_until(deadline(Duration::from_secs(60)), record_seq, |t| t.delivered >= 2_500);
/// // ... then read the rest, and a quiet period for late duplicates.
/// let tally = verifier.read_all(deadline(Duration::from_secs(120)), Duration::from_secs(3), record_seq);
/// assert_eq!(tally.missing, 0, "{tally}");
/// ```
pub struct SeqVerifier {
    readers: Vec<(TopicReader, usize)>,
    counter: SeqCounter,
}

impl std::fmt::Debug for SeqVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqVerifier")
            .field(
                "readers",
                &self.readers.iter().map(|(r, _)| r).collect::<Vec<_>>(),
            )
            .field("tally", &self.counter.tally)
            .finish()
    }
}

impl SeqVerifier {
    /// A verifier of `topics` on `brokers` for numbers `0..sent`. Topics that
    /// do not exist yet are read once they appear.
    pub fn new(brokers: &str, topics: &[&str], sent: usize) -> SeqVerifier {
        assert!(!topics.is_empty(), "a verifier needs at least one topic");
        SeqVerifier {
            readers: topics
                .iter()
                .map(|topic| (TopicReader::new(brokers, topic), 0))
                .collect(),
            counter: SeqCounter::new(sent),
        }
    }

    /// The counter (tally, missing and duplicate numbers).
    pub fn counter(&self) -> &SeqCounter {
        &self.counter
    }

    /// The tally so far (of the records already counted).
    pub fn tally(&self) -> Tally {
        self.counter.tally
    }

    /// Every record read so far from topic number `index` (in the order
    /// given to [`SeqVerifier::new`]).
    pub fn records(&self, index: usize) -> &[Record] {
        self.readers[index].0.records()
    }

    /// The reader of topic number `index`.
    pub fn reader(&self, index: usize) -> &TopicReader {
        &self.readers[index].0
    }

    /// Counts the records read but not yet counted.
    pub fn count_new(&mut self, mut seq_of: impl FnMut(&Record) -> i64) -> Tally {
        for (reader, counted) in &mut self.readers {
            for record in &reader.records()[*counted..] {
                self.counter.add(seq_of(record));
            }
            *counted = reader.records().len();
        }
        self.counter.tally
    }

    /// Reads and counts until `done(tally)` is true (true) or `until`
    /// passes (false).
    pub fn read_until(
        &mut self,
        until: Instant,
        mut seq_of: impl FnMut(&Record) -> i64,
        mut done: impl FnMut(&Tally) -> bool,
    ) -> bool {
        loop {
            let tally = self.count_new(&mut seq_of);
            if done(&tally) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            // Every reader reads whatever arrives during its share of
            // READ_SLICE; `done` is looked at after each round.
            let share = READ_SLICE / self.readers.len() as u32;
            for (reader, _) in &mut self.readers {
                reader.poll_for(share.min(until.saturating_duration_since(Instant::now())));
            }
        }
    }

    /// Reads until every number was seen or `until` passes, then for
    /// `quiet` more (to catch late duplicates), counting each record once.
    /// Returns the final tally.
    pub fn read_all(
        &mut self,
        until: Instant,
        quiet: Duration,
        mut seq_of: impl FnMut(&Record) -> i64,
    ) -> Tally {
        self.read_until(until, &mut seq_of, |tally| tally.missing == 0);
        let share = quiet / self.readers.len() as u32;
        for (reader, _) in &mut self.readers {
            reader.poll_for(share);
        }
        self.count_new(&mut seq_of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_missing_duplicates_and_out_of_range_numbers() {
        let mut counter = SeqCounter::new(10);
        for seq in [0, 1, 1, 2, 5, 5, 5, 6, 12, -1] {
            counter.add(seq);
        }
        let tally = counter.tally();
        assert_eq!(
            (
                tally.delivered,
                tally.missing,
                tally.duplicates,
                tally.unexpected
            ),
            (5, 5, 3, 2)
        );
        assert_eq!(
            tally.to_string(),
            "sent 10, delivered 5, missing 5, duplicates 3, out of range 2"
        );
        assert_eq!(counter.first_missing(2), vec![3, 4]);
        assert_eq!(counter.missing_ranges(5), vec!["3..=4", "7..=9"]);
        assert_eq!(counter.duplicate_ranges(5), vec!["1..=1", "5..=5"]);
        assert_eq!(counter.count(5), 3);
    }

    #[test]
    fn reads_the_number_from_json_or_from_the_seq_header() {
        let mut record = Record {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: None,
            payload: telemetry(1234).payload,
            headers: vec![],
            timestamp: None,
        };
        assert_eq!(try_record_seq(&record), Some(1234));
        assert!((140..=170).contains(&record.payload.len()));
        record.payload = b"not json".to_vec();
        assert_eq!(try_record_seq(&record), None);
        record.headers.push(("seq".into(), b"77".to_vec()));
        assert_eq!(record_seq(&record), 77);
    }
}
