//! The live one-line summary per pipeline that `sluice run` (on a terminal)
//! and `sluice demo` print.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::engine::Status;

/// Totals of one pipeline at one instant.
#[derive(Clone, Copy, Default)]
struct Sample {
    received: u64,
    delivered: u64,
    latency_sum: f64,
    latency_count: u64,
}

impl Sample {
    fn of(s: &Status) -> Self {
        let m = &s.metrics;
        Sample {
            received: m.received.get(),
            delivered: m.delivered.get(),
            latency_sum: m.e2e.get_sample_sum(),
            latency_count: m.e2e.get_sample_count(),
        }
    }
}

/// One summary line for `s`, with rates since `prev` (taken `dt` ago).
fn line(s: &Status, now: Sample, prev: Sample, dt: Duration) -> String {
    let secs = dt.as_secs_f64().max(1e-3);
    let m = &s.metrics;
    let dropped: u64 = m.transforms().iter().map(|t| t.dropped.get()).sum();
    let dead = m.dead_lettered_transform.get() + m.dead_lettered_sink.get();
    let acked = now.latency_count.saturating_sub(prev.latency_count);
    let latency = if acked > 0 {
        format!(
            "{:.1} ms",
            (now.latency_sum - prev.latency_sum) / acked as f64 * 1000.0
        )
    } else {
        "-".into()
    };
    let state = s.shown_state(s.state().0);
    let state = state.as_str().unwrap_or("?");
    format!(
        "[{}] {state} | in {:.0}/s out {:.0}/s | received {} delivered {} dropped {dropped} dead-lettered {dead} in-flight {} | mean e2e {latency}",
        s.name,
        now.received.saturating_sub(prev.received) as f64 / secs,
        now.delivered.saturating_sub(prev.delivered) as f64 / secs,
        now.received,
        now.delivered,
        m.in_flight.get(),
    )
}

/// Prints one line per pipeline every `every` to `out` until `stop`.
pub async fn run(
    statuses: Vec<Arc<Status>>,
    every: Duration,
    mut out: impl FnMut(&str) + Send,
    mut stop: watch::Receiver<bool>,
) {
    let mut prev: Vec<Sample> = statuses.iter().map(|s| Sample::of(s)).collect();
    let mut at = Instant::now();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        for (s, p) in statuses.iter().zip(prev.iter_mut()) {
            let sample = Sample::of(s);
            out(&line(s, sample, *p, now.duration_since(at)));
            *p = sample;
        }
        at = now;
    }
}
