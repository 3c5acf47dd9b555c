//! `sluice-bench produce`: the minimal native producer of the hand-written
//! bridge `mosquitto_sub -v | sluice-bench produce`.
//!
//! What it guarantees: nothing. It produces each line's payload and never
//! looks at delivery reports (acks=1, no idempotence, no retries beyond
//! librdkafka's own); a Kafka outage loses what was in its buffer. That is
//! what a quick shell bridge gives, and the baseline Sluice is measured
//! against. (Debian's kcat would be the natural tool, but its librdkafka
//! 2.0.2 cannot talk to tansu.)

use std::io::BufRead as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

/// Options of `sluice-bench produce`.
#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// Kafka bootstrap servers.
    #[arg(long)]
    brokers: String,
    /// Kafka topic to produce to.
    #[arg(long)]
    topic: String,
    /// MQTT topic level (0-based) that becomes the record key (like
    /// sluice's `key: "{{topic.1}}"`); a topic without it gives no key.
    #[arg(long, default_value_t = 1)]
    key_level: usize,
    /// Compression (none, gzip, snappy, lz4, zstd), as sluice's default.
    #[arg(long, default_value = "lz4")]
    compression: String,
    /// linger.ms, as sluice's default.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
}

/// Produces stdin's lines until EOF, then flushes.
pub fn run(args: &ProduceArgs) -> anyhow::Result<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("broker.address.family", "v4")
        .set("acks", "1")
        .set("enable.idempotence", "false")
        .set("compression.type", &args.compression)
        .set("linger.ms", args.linger_ms.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .set("log_level", "3")
        .create()
        .context("rdkafka producer")?;
    producer
        .client()
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .with_context(|| format!("metadata of {} on {}", args.topic, args.brokers))?;
    eprintln!("produce: ready");

    let stdin = std::io::stdin();
    let mut input = std::io::BufReader::with_capacity(1 << 16, stdin.lock());
    let mut line = Vec::with_capacity(1024);
    let (mut lines, mut errors) = (0u64, 0u64);
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        // `mosquitto_sub -v`: the topic, one space, the payload.
        let Some(space) = line.iter().position(|&b| b == b' ') else {
            continue;
        };
        let (topic, payload) = (&line[..space], &line[space + 1..]);
        let key = topic.split(|&b| b == b'/').nth(args.key_level);
        lines += 1;
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&args.topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((err, _)) => {
                    errors += 1;
                    if errors <= 5 {
                        eprintln!("produce: {err}");
                    }
                    break;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    let flushed = producer.flush(Duration::from_secs(30));
    eprintln!(
        "produce: {lines} lines, {errors} send errors, flush: {}",
        match flushed {
            Ok(()) => "ok".to_string(),
            Err(err) => err.to_string(),
        }
    );
    Ok(())
}
