//! Prometheus metrics. Every label set is resolved once per pipeline (or per
//! transform) at start, so counting a message is an atomic add.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `kind` label values of `sluice_plugin_traps_total`.
pub const TRAP_KINDS: [&str; 5] = ["trap", "timeout", "memory", "stack", "invalid"];

/// All metric families of the process.
pub struct Metrics {
    registry: Registry,
    received: IntCounterVec,
    delivered: IntCounterVec,
    dropped: IntCounterVec,
    dead_lettered: IntCounterVec,
    failed: IntCounterVec,
    in_flight: IntGaugeVec,
    transform_duration: HistogramVec,
    e2e: HistogramVec,
    traps: IntCounterVec,
    mqtt_connected: IntGaugeVec,
    mqtt_reconnects: IntCounterVec,
    produce_errors: IntCounterVec,
}

/// Handles for one transform of one pipeline.
#[derive(Clone)]
pub struct TransformMetrics {
    /// Per-batch call duration.
    pub duration: Histogram,
    /// Messages the transform dropped on purpose.
    pub dropped: IntCounter,
    /// Traps by kind.
    traps: IntCounterVec,
    pipeline: String,
    transform: String,
}

impl TransformMetrics {
    /// The transform's name.
    pub fn name(&self) -> &str {
        &self.transform
    }

    /// Counts one trap of `kind` (`trap`, `timeout`, `memory`, `stack`,
    /// `invalid`).
    pub fn trap(&self, kind: &str) {
        self.traps_by(kind, 1);
    }

    /// Counts `n` traps of `kind`.
    pub fn traps_by(&self, kind: &str, n: u64) {
        self.traps
            .with_label_values(&[&self.pipeline, &self.transform, kind])
            .inc_by(n);
    }
}

/// Handles for one pipeline.
pub struct PipelineMetrics {
    /// Messages read from the source.
    pub received: IntCounter,
    /// Messages written to the sink (outputs, after splits).
    pub delivered: IntCounter,
    /// Failed in a transform, written to the dead-letter topic.
    pub dead_lettered_transform: IntCounter,
    /// Failed in the sink stage, written to the dead-letter topic.
    pub dead_lettered_sink: IntCounter,
    /// Failed in a transform (any policy).
    pub failed_transform: IntCounter,
    /// Failed in the sink stage (any policy).
    pub failed_sink: IntCounter,
    /// Un-acked messages.
    pub in_flight: IntGauge,
    /// Receipt to Kafka ack.
    pub e2e: Histogram,
    /// MQTT connection state.
    pub mqtt_connected: IntGauge,
    /// MQTT reconnects.
    pub mqtt_reconnects: IntCounter,
    /// Failed produce attempts.
    pub produce_errors: IntCounter,
    /// Per transform of the chain in force, in chain order.
    transforms: std::sync::Mutex<Vec<TransformMetrics>>,
    families: TransformFamilies,
}

/// The per-transform families, to resolve the label sets of a new chain
/// (after a reload) without the registry.
struct TransformFamilies {
    pipeline: String,
    duration: HistogramVec,
    dropped: IntCounterVec,
    traps: IntCounterVec,
}

impl PipelineMetrics {
    /// The handles of the chain in force, in chain order.
    pub fn transforms(&self) -> Vec<TransformMetrics> {
        self.transforms
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    /// Resolves the handles of a chain of `names` (not yet in force). The
    /// trap series of every kind show at zero from the start.
    pub fn resolve_transforms(&self, names: &[String]) -> Vec<TransformMetrics> {
        let f = &self.families;
        names
            .iter()
            .inspect(|t| {
                for kind in TRAP_KINDS {
                    f.traps
                        .with_label_values(&[f.pipeline.as_str(), t.as_str(), kind]);
                }
            })
            .map(|t| TransformMetrics {
                duration: f.duration.with_label_values(&[&f.pipeline, t]),
                dropped: f.dropped.with_label_values(&[&f.pipeline, t]),
                traps: f.traps.clone(),
                pipeline: f.pipeline.clone(),
                transform: t.clone(),
            })
            .collect()
    }

    /// Makes `transforms` the chain in force (what the API reports).
    pub fn set_transforms(&self, transforms: Vec<TransformMetrics>) {
        if let Ok(mut t) = self.transforms.lock() {
            *t = transforms;
        }
    }
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("static metric definition")
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            received: counter(
                "sluice_messages_received_total",
                "Messages read from the source.",
                &["pipeline"],
            ),
            delivered: counter(
                "sluice_messages_delivered_total",
                "Messages acknowledged by the sink (after splits).",
                &["pipeline"],
            ),
            dropped: counter(
                "sluice_messages_dropped_total",
                "Messages a transform dropped on purpose.",
                &["pipeline", "transform"],
            ),
            dead_lettered: counter(
                "sluice_messages_dead_lettered_total",
                "Failed messages written to the dead-letter topic, by stage.",
                &["pipeline", "stage"],
            ),
            failed: counter(
                "sluice_messages_failed_total",
                "Messages that failed, by stage, whatever the error policy did with them.",
                &["pipeline", "stage"],
            ),
            in_flight: gauge(
                "sluice_in_flight_messages",
                "Messages received and not yet acknowledged to the source.",
                &["pipeline"],
            ),
            transform_duration: histogram(
                "sluice_transform_duration_seconds",
                "Time of one transform on one batch: one call, or more when a failed batch's messages are tried alone.",
                &["pipeline", "transform"],
                vec![
                    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                    0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ],
            ),
            e2e: histogram(
                "sluice_end_to_end_latency_seconds",
                "Time from MQTT receipt to the sink's acknowledgement.",
                &["pipeline"],
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            traps: counter(
                "sluice_plugin_traps_total",
                "Plugin failures by kind: trap, timeout, memory, stack, invalid (wrong result count, malformed results, too many or too large outputs); one per failed call (a batch's, then each of its messages that fails again alone) or per input over an output limit.",
                &["pipeline", "transform", "kind"],
            ),
            mqtt_connected: gauge(
                "sluice_mqtt_connected",
                "1 while the MQTT source is connected.",
                &["pipeline"],
            ),
            mqtt_reconnects: counter(
                "sluice_mqtt_reconnects_total",
                "MQTT connection failures followed by a reconnect attempt.",
                &["pipeline"],
            ),
            produce_errors: counter(
                "sluice_kafka_produce_errors_total",
                "Failed Kafka produce attempts (each retried or dead-lettered).",
                &["pipeline"],
            ),
            registry,
        };
        let build = gauge("sluice_build_info", "Build information.", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let families: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.received.clone()),
            Box::new(m.delivered.clone()),
            Box::new(m.dropped.clone()),
            Box::new(m.dead_lettered.clone()),
            Box::new(m.failed.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.transform_duration.clone()),
            Box::new(m.e2e.clone()),
            Box::new(m.traps.clone()),
            Box::new(m.mqtt_connected.clone()),
            Box::new(m.mqtt_reconnects.clone()),
            Box::new(m.produce_errors.clone()),
            Box::new(build),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for f in families {
            m.registry.register(f).expect("metric names are unique");
        }
        m
    }

    /// Resolves the label sets of one pipeline.
    pub fn pipeline(&self, name: &str, transforms: &[String]) -> PipelineMetrics {
        let l = &[name];
        // Make the error-path series visible at zero from the start.
        for stage in ["transform", "sink"] {
            self.dead_lettered.with_label_values(&[name, stage]);
            self.failed.with_label_values(&[name, stage]);
        }
        let m = PipelineMetrics {
            received: self.received.with_label_values(l),
            delivered: self.delivered.with_label_values(l),
            dead_lettered_transform: self.dead_lettered.with_label_values(&[name, "transform"]),
            dead_lettered_sink: self.dead_lettered.with_label_values(&[name, "sink"]),
            failed_transform: self.failed.with_label_values(&[name, "transform"]),
            failed_sink: self.failed.with_label_values(&[name, "sink"]),
            in_flight: self.in_flight.with_label_values(l),
            e2e: self.e2e.with_label_values(l),
            mqtt_connected: self.mqtt_connected.with_label_values(l),
            mqtt_reconnects: self.mqtt_reconnects.with_label_values(l),
            produce_errors: self.produce_errors.with_label_values(l),
            transforms: Default::default(),
            families: TransformFamilies {
                pipeline: name.to_string(),
                duration: self.transform_duration.clone(),
                dropped: self.dropped.clone(),
                traps: self.traps.clone(),
            },
        };
        m.set_transforms(m.resolve_transforms(transforms));
        m
    }

    /// Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
