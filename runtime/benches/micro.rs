//! Micro-benchmarks of the runtime's hot and start-up paths (criterion):
//!
//! - `json_map/wasm/N`: one call of the json-map example transform (built
//!   for wasm32-wasip2 from plugins/) on a batch of N ~160-byte JSON
//!   messages, through the host's [`Instance::process`]: the per-message
//!   cost is the time divided by N (criterion's `thrpt` line gives
//!   messages per second).
//! - `json_map/native/N` (with `--features bench-native`): the same
//!   transform, the same SDK, compiled natively into this benchmark, with
//!   the same copies of each message in and out that the host makes.
//! - `config/...`: parsing and checking configs/sensors.yaml, without and
//!   with the plugin checks (compiled plugins cached on disk, as at a
//!   restart).
//! - `template/...`: rendering Kafka topic and key templates.
//! - `engine/{none,json_map}`: the whole engine between a source and a
//!   sink, without brokers: messages already queued at an in-memory source,
//!   batched, run through the transform thread (none, or json-map), handed
//!   to a sink that reports every record delivered at once, settled and
//!   acked, in an at-least-once pipeline with a window of 1000. Per message:
//!   the host's own cost, which end-to-end runs on a shared VM cannot
//!   resolve below about 10 %.
//!
//! ```sh
//! (cd plugins && cargo build --release)
//! cargo bench -p sluice --features bench-native --bench micro
//! ```
//!
//! At the end it prints the per-message figures of the transform benchmarks
//! with the Wasm/native ratio: from criterion's mean, and from its fastest
//! sample, which a shared machine's noise moves far less. With
//! `bench-native`, `json_map/alternating` calls Wasm and native in turn at
//! batch 256, so that each of its samples has both sides at one speed of
//! the machine, and the end prints the median and quartiles of the
//! samples' Wasm/native ratios (`-- alternating` runs it alone). The
//! tables show only what the run measured.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use sluice::config::{Limits, Pos, TransformConfig};
use sluice::message::{Message, Qos};
use sluice::template::Template;
use sluice::wasm::cache::PluginCache;
use sluice::wasm::{Instance, WasmHost};

/// Batch sizes of the transform benchmarks.
const BATCHES: [usize; 3] = [1, 16, 256];

/// The json-map configuration of sluice-bench's cases e and f.
const JSON_MAP_CONFIG: &str = r#"{"from_topic":{"device_id":1},"rename":{"temperature_f":"temperature_c"},"convert":{"temperature_c":"f_to_c"},"round":2,"drop":["firmware"],"key_field":"device_id"}"#;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Where the tests look for the example plugins too.
fn plugin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SLUICE_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("plugins/target/wasm32-wasip2/release"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first with `(cd plugins && cargo build --release)`",
        path.display()
    );
    path
}

/// `n` telemetry messages of about 160 bytes each.
fn batch(n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let payload = format!(
                r#"{{"seq":{i},"temperature_f":{:.1},"humidity":{:.1},"battery_mv":{},"firmware":"1.4.2","status":"ok","site":"plant-{:02}/line-{}","ts":{}}}"#,
                50.0 + (i % 500) as f64 / 10.0,
                30.0 + (i % 400) as f64 / 10.0,
                3300 + i % 900,
                i % 17,
                i % 5,
                1_764_000_000_000_u64 + i as u64,
            );
            Message {
                topic: format!("sensors/dev-{:04}/telemetry", i % 1000),
                payload: Bytes::from(payload),
                timestamp_ms: 1_764_000_000_000,
                qos: Qos::AtLeastOnce,
                ..Message::default()
            }
        })
        .collect()
}

/// An instance of the json-map plugin with the configuration of cases e
/// and f.
fn json_map_instance(host: &WasmHost) -> Instance {
    let t = TransformConfig {
        name: "normalise".into(),
        plugin: plugin("json_map"),
        config_json: JSON_MAP_CONFIG.into(),
        limits: Limits::default(),
        capabilities: Vec::new(),
        env: Vec::new(),
        plugin_pos: Pos { line: 1, col: 1 },
        config_pos: Pos { line: 1, col: 1 },
    };
    let plugin = host.load(&t).expect("json_map plugin");
    Instance::new(&plugin, "bench", &t).expect("json_map init")
}

/// Batch size of `json_map/alternating`.
const ALTERNATING: usize = 256;

/// One sample of `json_map/alternating`: `iters` Wasm calls and as many
/// native calls, in turn, and the time each side took.
struct Pair {
    iters: u64,
    wasm: Duration,
    native: Duration,
}

/// The json-map benchmarks; returns the samples of `json_map/alternating`.
fn transforms(c: &mut Criterion) -> Vec<Pair> {
    let host = WasmHost::new(None).expect("wasm engine");
    let mut wasm = json_map_instance(&host);
    #[cfg(feature = "bench-native")]
    let mut native = native::JsonMap::new(JSON_MAP_CONFIG);

    // Both produce the same records.
    let sample = batch(4);
    let out = wasm.process(&sample).expect("wasm call").results;
    #[cfg(feature = "bench-native")]
    assert_eq!(out, native.process(&sample), "wasm and native disagree");
    let first = out[0].as_ref().expect("mapped");
    assert_eq!(first[0].key.as_deref(), Some(&b"dev-0000"[..]));

    let mut group = c.benchmark_group("json_map");
    for n in BATCHES {
        let input = batch(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("wasm", n), &input, |b, input| {
            b.iter(|| wasm.process(input).expect("wasm call"))
        });
        #[cfg(feature = "bench-native")]
        group.bench_with_input(BenchmarkId::new("native", n), &input, |b, input| {
            b.iter(|| native.process(input))
        });
    }
    #[cfg(feature = "bench-native")]
    let pairs = alternating(&mut group, &mut wasm, &mut native);
    #[cfg(not(feature = "bench-native"))]
    let pairs = Vec::new();
    group.finish();
    pairs
}

/// `json_map/alternating`: Wasm and native in turn, call by call, the
/// order swapped every call. Criterion measures `json_map/wasm/256` for
/// seconds and then `json_map/native/256`, and a shared VM changes speed
/// between the two; each sample here has both sides at one speed.
/// Criterion reports the Wasm side's time; the samples are returned for
/// [`alternating_summary`].
#[cfg(feature = "bench-native")]
fn alternating(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    wasm: &mut Instance,
    native: &mut native::JsonMap,
) -> Vec<Pair> {
    let input = batch(ALTERNATING);
    let mut call_wasm = || {
        std::hint::black_box(wasm.process(&input).expect("wasm call"));
    };
    let mut call_native = || {
        std::hint::black_box(native.process(&input));
    };
    let timed = |f: &mut dyn FnMut()| {
        let start = std::time::Instant::now();
        f();
        start.elapsed()
    };
    let mut pairs = Vec::new();
    group.throughput(Throughput::Elements(ALTERNATING as u64));
    group.bench_function("alternating", |b| {
        b.iter_custom(|iters| {
            let (mut w, mut n) = (Duration::ZERO, Duration::ZERO);
            for i in 0..iters {
                if i % 2 == 0 {
                    w += timed(&mut call_wasm);
                    n += timed(&mut call_native);
                } else {
                    n += timed(&mut call_native);
                    w += timed(&mut call_wasm);
                }
            }
            pairs.push(Pair {
                iters,
                wasm: w,
                native: n,
            });
            w
        })
    });
    pairs
}

fn config(c: &mut Criterion) {
    let file = repo_root().join("configs/sensors.yaml");
    let text = std::fs::read_to_string(&file).expect("configs/sensors.yaml");
    let env = |_: &str| None::<String>;
    sluice::config::load_str(&file, &text, env).expect("sensors.yaml is valid");
    let cache = tempfile::tempdir().expect("temp dir");
    let host = WasmHost::new(Some(PluginCache::new(
        cache.path().to_path_buf(),
        sluice::wasm::cache::DEFAULT_MAX_BYTES,
    )))
    .expect("wasm engine");
    // The first validation compiles the plugins into the cache.
    sluice::runner::validate(std::slice::from_ref(&file), &host).expect("sensors.yaml validates");

    let mut group = c.benchmark_group("config");
    group.bench_function("parse_and_check/sensors.yaml", |b| {
        b.iter(|| sluice::config::load_str(&file, &text, env).expect("valid"))
    });
    group.bench_function("validate_with_plugins/sensors.yaml", |b| {
        b.iter(|| sluice::runner::validate(std::slice::from_ref(&file), &host).expect("valid"))
    });
    group.finish();
}

fn templates(c: &mut Criterion) {
    let topic = "sensors/dev-0042/telemetry";
    let mut group = c.benchmark_group("template");
    for (name, text) in [
        ("render/{{topic.2}}", "{{topic.2}}"),
        (
            "render/{{pipeline}}.{{topic.1}}.v1",
            "{{pipeline}}.{{topic.1}}.v1",
        ),
        ("render/static", "telemetry"),
    ] {
        let template = Template::parse(text).expect("template");
        group.bench_function(name, |b| {
            b.iter(|| {
                template
                    .render(std::hint::black_box(topic), "sensors")
                    .expect("renders")
            })
        });
    }
    group.bench_function("parse/{{pipeline}}.{{topic.1}}.v1", |b| {
        b.iter(|| Template::parse(std::hint::black_box("{{pipeline}}.{{topic.1}}.v1")))
    });
    group.finish();
}

/// The transform figures per message: criterion's mean, and its fastest
/// sample (a sample's time divided by its iterations). On a shared VM the
/// mean moves by tens of per cent between runs of one binary; the fastest
/// sample, the run least disturbed by other guests, moves by a few.
fn per_message_summary(dir: &Path, since: std::time::SystemTime) {
    // Only what this run measured: criterion leaves earlier runs' files.
    let read = |kind: &str, n: usize, file: &str| -> Option<serde_json::Value> {
        let path = dir.join(format!("json_map/{kind}/{n}/new/{file}"));
        let written = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        if written < since {
            return None;
        }
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    };
    let mean_ns = |kind: &str, n: usize| -> Option<f64> {
        read(kind, n, "estimates.json")?["mean"]["point_estimate"].as_f64()
    };
    let fastest_ns = |kind: &str, n: usize| -> Option<f64> {
        let sample = read(kind, n, "sample.json")?;
        let numbers = |key: &str| -> Option<Vec<f64>> {
            sample[key].as_array()?.iter().map(|v| v.as_f64()).collect()
        };
        let (iters, times) = (numbers("iters")?, numbers("times")?);
        iters
            .iter()
            .zip(&times)
            .filter(|(i, _)| **i > 0.0)
            .map(|(i, t)| t / i)
            .min_by(f64::total_cmp)
    };
    let show = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"));
    let ratio = |w: Option<f64>, n: Option<f64>| {
        w.zip(n)
            .map_or_else(|| "-".to_string(), |(w, n)| format!("{:.2}x", w / n))
    };
    // (batch, wasm mean, native mean, wasm fastest, native fastest), per
    // message.
    let rows: Vec<_> = BATCHES
        .iter()
        .map(|&n| {
            let per_message = |t: Option<f64>| t.map(|t| t / n as f64);
            (
                n,
                per_message(mean_ns("wasm", n)),
                per_message(mean_ns("native", n)),
                per_message(fastest_ns("wasm", n)),
                per_message(fastest_ns("native", n)),
            )
        })
        .collect();
    if rows
        .iter()
        .all(|&(_, w, n, _, _)| w.is_none() && n.is_none())
    {
        return;
    }
    println!("\nper message (criterion's mean, and its fastest sample, / batch size):");
    println!("  batch   wasm ns/msg   native ns/msg   wasm/native   fastest: wasm   native   wasm/native");
    for (n, wasm, native, wasm_min, native_min) in rows {
        println!(
            "  {n:>5}   {:>11}   {:>13}   {:>11}   {:>13}   {:>6}   {:>11}",
            show(wasm),
            show(native),
            ratio(wasm, native),
            show(wasm_min),
            show(native_min),
            ratio(wasm_min, native_min),
        );
    }
}

fn main() {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("criterion");
    let mut c = Criterion::default()
        .output_directory(&dir)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let since = std::time::SystemTime::now();
    let pairs = transforms(&mut c);
    engine::engine(&mut c, &plugin("json_map"), JSON_MAP_CONFIG, batch);
    config(&mut c);
    templates(&mut c);
    c.final_summary();
    per_message_summary(&dir, since);
    alternating_summary(&pairs);
}

/// Prints the Wasm/native ratio of `json_map/alternating`: the median and
/// quartiles of its samples' ratios, each taken within one sample (none
/// when it did not run).
fn alternating_summary(pairs: &[Pair]) {
    if pairs.is_empty() {
        return;
    }
    let quantile = |mut v: Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    let per_message =
        |t: Duration, iters: u64| t.as_nanos() as f64 / (iters as f64 * ALTERNATING as f64);
    let ratios: Vec<f64> = pairs
        .iter()
        .map(|p| p.wasm.as_secs_f64() / p.native.as_secs_f64())
        .collect();
    let wasm: Vec<f64> = pairs.iter().map(|p| per_message(p.wasm, p.iters)).collect();
    let native: Vec<f64> = pairs
        .iter()
        .map(|p| per_message(p.native, p.iters))
        .collect();
    println!(
        "\njson_map/alternating, batch {ALTERNATING}, {} samples of Wasm and native calls in turn:\n  \
         wasm {:.0} ns/msg, native {:.0} ns/msg (medians); wasm/native: median {:.2}x, quartiles {:.2}x-{:.2}x",
        pairs.len(),
        quantile(wasm, 0.5),
        quantile(native, 0.5),
        quantile(ratios.clone(), 0.5),
        quantile(ratios.clone(), 0.25),
        quantile(ratios, 0.75),
    );
}

mod engine {
    //! The engine between an in-memory source and an instant sink.

    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use criterion::{Criterion, Throughput};
    use futures::future::BoxFuture;
    use futures::FutureExt;
    use sluice::connectors::{
        AckToken, Acker, DeliveryError, Failure, Inbound, Sink, SourceHandle, WindowSlot,
    };
    use sluice::engine::{run_with, Status};
    use sluice::message::Message;
    use sluice::metrics::Metrics;
    use sluice::wasm::WasmHost;
    use tokio::sync::{mpsc, watch, Notify};

    /// Messages per measured round.
    const ROUND: usize = 20_000;

    /// Reports every record delivered at once.
    struct InstantSink(watch::Receiver<bool>);

    impl Sink for InstantSink {
        fn deliver(&self, _msg: &Message) -> BoxFuture<'static, Result<(), DeliveryError>> {
            async { Ok(()) }.boxed()
        }

        fn deliver_all(
            &self,
            msgs: &[&Message],
        ) -> BoxFuture<'static, Vec<Result<(), DeliveryError>>> {
            let results = vec![Ok(()); msgs.len()];
            async move { results }.boxed()
        }

        fn dead_letter(
            &self,
            _msg: &Message,
            _failure: &Failure,
        ) -> BoxFuture<'static, Result<bool, DeliveryError>> {
            async { Ok(true) }.boxed()
        }

        fn connected(&self) -> watch::Receiver<bool> {
            self.0.clone()
        }

        fn flush(&self, _timeout: Duration) -> BoxFuture<'static, ()> {
            async {}.boxed()
        }
    }

    /// Counts acks and wakes the round when it has them all.
    #[derive(Default)]
    struct CountingAcker {
        acked: AtomicUsize,
        goal: AtomicUsize,
        done: Notify,
    }

    impl Acker for CountingAcker {
        fn ack(&self, acks: Vec<(AckToken, WindowSlot)>) {
            let acked = self.acked.fetch_add(acks.len(), Ordering::AcqRel) + acks.len();
            if acked >= self.goal.load(Ordering::Acquire) {
                self.done.notify_one();
            }
        }
    }

    fn pipeline(transforms: &str) -> sluice::config::Pipeline {
        let yaml = format!(
            "apiVersion: sluice/v1\n\
             name: bench\n\
             max_in_flight: 1000\n\
             batch: {{ max_messages: 256, max_wait_ms: 5 }}\n\
             source:\n  mqtt:\n    url: mqtt://127.0.0.1:1883\n    client_id: bench\n    topics:\n      - filter: sensors/#\n        qos: 1\n\
             {transforms}\
             sink:\n  kafka:\n    brokers: 127.0.0.1:9092\n    topic: telemetry\n    key: \"{{{{topic.1}}}}\"\n"
        );
        sluice::config::load_str(Path::new("bench.yaml"), &yaml, |_| None)
            .expect("the engine benchmark's pipeline is valid")
    }

    /// Runs `engine/none` and `engine/json_map`: each measured round pushes
    /// [`ROUND`] copies of `batch`'s messages and waits for all their acks.
    pub fn engine(
        c: &mut Criterion,
        json_map: &Path,
        json_map_config: &str,
        batch: fn(usize) -> Vec<Message>,
    ) {
        let messages = batch(1000);
        let map = format!(
            "transforms:\n  - name: normalise\n    plugin: \"{}\"\n    config: {json_map_config}\n",
            json_map.display()
        );
        let mut group = c.benchmark_group("engine");
        group.throughput(Throughput::Elements(ROUND as u64));
        group.sample_size(10);
        for (name, transforms) in [("none", String::new()), ("json_map", map)] {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let p = pipeline(&transforms);
            let host = Arc::new(WasmHost::new(None).expect("wasm engine"));
            let metrics = Metrics::new();
            let status = Arc::new(Status::new(
                "bench",
                Arc::new(metrics.pipeline("bench", &[])),
            ));
            let (tx, rx) = mpsc::channel(4096);
            let acker = Arc::new(CountingAcker::default());
            let (_connected_tx, connected) = watch::channel(true);
            let (shutdown, shutdown_rx) = watch::channel(false);
            let source = SourceHandle {
                messages: rx,
                acker: acker.clone(),
                connected: connected.clone(),
                stop_intake: Box::new(|| {}),
                close: Box::new(|| async {}.boxed()),
            };
            let sink: Arc<dyn Sink> = Arc::new(InstantSink(connected));
            let pipeline = runtime.spawn(async move {
                run_with(&p, &host, &status, shutdown_rx, move |_| Ok((sink, source))).await
            });
            let mut sent = 0usize;
            group.bench_function(name, |b| {
                b.iter_custom(|rounds| {
                    let started = Instant::now();
                    for _ in 0..rounds {
                        let goal = sent + ROUND;
                        acker.goal.store(goal, Ordering::Release);
                        runtime.block_on(async {
                            for i in 0..ROUND {
                                let msg = messages[i % messages.len()].clone();
                                let token = (sent + i) as AckToken;
                                tx.send(Inbound { msg, token })
                                    .await
                                    .expect("engine running");
                            }
                            while acker.acked.load(Ordering::Acquire) < goal {
                                acker.done.notified().await;
                            }
                        });
                        sent = goal;
                    }
                    started.elapsed()
                })
            });
            shutdown.send_replace(true);
            runtime
                .block_on(pipeline)
                .expect("pipeline task")
                .expect("pipeline ends cleanly");
        }
        group.finish();
    }
}

#[cfg(feature = "bench-native")]
mod native {
    //! The json-map example compiled natively, driven the way the guest SDK
    //! drives it inside the component.

    use bytes::Bytes;
    use sluice::message::{Message, Qos};
    use sluice::wasm::chain::Outputs;

    /// json-map without Wasm.
    pub struct JsonMap(sluice_sdk::Runner<json_map::JsonMap>);

    impl JsonMap {
        pub fn new(config: &str) -> Self {
            let mut runner = sluice_sdk::Runner::new();
            runner.init(config).expect("json_map init");
            JsonMap(runner)
        }

        /// Copies each message in (as the host copies it into the guest),
        /// runs the batch, and copies the results out.
        pub fn process(&mut self, batch: &[Message]) -> Vec<Result<Outputs, String>> {
            let input = batch.iter().map(to_sdk).collect();
            self.0
                .process(input)
                .into_iter()
                .map(|r| r.map(|out| out.into_iter().map(from_sdk).collect()))
                .collect()
        }
    }

    fn to_sdk(m: &Message) -> sluice_sdk::Message {
        sluice_sdk::Message {
            topic: m.topic.clone(),
            kafka_topic: m.kafka_topic.clone(),
            key: m.key.as_ref().map(|k| k.to_vec()),
            payload: m.payload.to_vec(),
            headers: m
                .headers
                .iter()
                .map(|(name, value)| sluice_sdk::Header::new(name.clone(), value.clone()))
                .collect(),
            timestamp_ms: m.timestamp_ms,
            qos: match m.qos {
                Qos::AtMostOnce => sluice_sdk::Qos::AtMostOnce,
                Qos::AtLeastOnce => sluice_sdk::Qos::AtLeastOnce,
                Qos::ExactlyOnce => sluice_sdk::Qos::ExactlyOnce,
            },
            retain: m.retain,
            content_type: m.content_type.clone(),
        }
    }

    fn from_sdk(m: sluice_sdk::Message) -> Message {
        Message {
            topic: m.topic,
            kafka_topic: m.kafka_topic,
            key: m.key.map(Bytes::from),
            payload: Bytes::from(m.payload),
            headers: m.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            timestamp_ms: m.timestamp_ms,
            qos: match m.qos {
                sluice_sdk::Qos::AtMostOnce => Qos::AtMostOnce,
                sluice_sdk::Qos::AtLeastOnce => Qos::AtLeastOnce,
                sluice_sdk::Qos::ExactlyOnce => Qos::ExactlyOnce,
            },
            retain: m.retain,
            content_type: m.content_type,
        }
    }
}
