//! Results: the JSON file, the Markdown table and the SVG chart.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use crate::cases::Case;
use crate::RunArgs;

/// One whole run, as written to results.json.
#[derive(Debug, Serialize)]
pub struct Run {
    /// UTC start time, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started_at: String,
    /// Wall-clock seconds of the whole run.
    pub duration_s: f64,
    /// The command line.
    pub command: String,
    /// Where it ran.
    pub machine: Machine,
    /// The flags in force.
    pub settings: RunArgs,
    /// Which brokers.
    pub brokers: Brokers,
    /// One entry per case, in order: with several rounds, each case's
    /// median round (see [`medians`]).
    pub cases: Vec<CaseResult>,
    /// With `--rounds` above 1, every round's results, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<Vec<CaseResult>>,
}

/// The brokers the cases shared.
#[derive(Debug, Serialize)]
pub struct Brokers {
    /// MQTT broker.
    pub mqtt: String,
    /// Kafka broker.
    pub kafka: String,
}

/// The machine, from /proc.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Logical CPUs available to this process.
    pub cpus: usize,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// 1-minute load average when the run started (other work on the machine).
    pub load_average_at_start: String,
}

impl Machine {
    /// Reads the machine's description.
    pub fn probe() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, name)| name.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory_gib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .map(|kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0)
            .unwrap_or(0.0);
        Machine {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            load_average_at_start: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    /// From a histogram of microseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// The end-to-end latency split at the record's Kafka time stamp
/// (CreateTime, millisecond resolution). Sluice stamps a record with the
/// time it received the message over MQTT; the bridges stamp it when
/// their producer takes it.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySplit {
    /// Publish to the time stamp: publisher, MQTT broker, and the bridge's
    /// reading (for Sluice, up to its MQTT receipt).
    pub to_record: Latency,
    /// The time stamp to the read: for Sluice, batching, transforms, the
    /// producer, Kafka and the verifier's fetch.
    pub from_record: Latency,
}

/// One case's figures. `None` where the case cannot tell (the broker
/// ceiling has no latency) or did not get that far.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// a, b1, ...
    pub letter: String,
    /// Case id.
    pub id: String,
    /// What runs.
    pub what: String,
    /// ok, incomplete (missing messages), failed, skipped.
    pub status: String,
    /// Why it is not ok, and other remarks.
    pub note: Option<String>,
    /// Messages published (acknowledged by the broker at QoS 1).
    pub sent: usize,
    /// Distinct sequence numbers that reached Kafka.
    pub delivered: Option<usize>,
    /// Sequence numbers that never did.
    pub missing: Option<usize>,
    /// Records beyond the first per number.
    pub duplicates: Option<usize>,
    /// First publish to last new number in Kafka, seconds.
    pub elapsed_s: Option<f64>,
    /// Delivered messages per second.
    pub msgs_per_s: Option<f64>,
    /// Published MQTT payload megabytes (10^6) per second.
    pub mb_per_s: Option<f64>,
    /// End-to-end latency, publish to read back from Kafka.
    pub latency_ms: Option<Latency>,
    /// That latency split at the record's Kafka time stamp.
    pub latency_split_ms: Option<LatencySplit>,
    /// CPU seconds of the process(es) under test during the run.
    pub cpu_s: Option<f64>,
    /// Peak RSS (VmHWM) of the process(es) under test, MiB (summed).
    pub peak_rss_mib: Option<f64>,
    /// CPU seconds of the MQTT broker during the run.
    pub mosquitto_cpu_s: Option<f64>,
    /// CPU seconds of the Kafka broker during the run.
    pub tansu_cpu_s: Option<f64>,
    /// Throughput relative to case a (broker ceiling).
    pub vs_a: Option<f64>,
    /// Throughput relative to case b1 (pipe bridge).
    pub vs_b1: Option<f64>,
    /// Throughput relative to case b2 (Python bridge).
    pub vs_b2: Option<f64>,
}

impl CaseResult {
    fn empty(case: &Case, sent: usize, status: &str, note: &str) -> CaseResult {
        // Panic messages from the harness carry whole log tails: keep the
        // first lines.
        let note: String = note.lines().take(6).collect::<Vec<_>>().join(" | ");
        CaseResult {
            letter: case.letter.to_string(),
            id: case.id.to_string(),
            what: case.what.to_string(),
            status: status.to_string(),
            note: Some(note.chars().take(600).collect()),
            sent,
            delivered: None,
            missing: None,
            duplicates: None,
            elapsed_s: None,
            msgs_per_s: None,
            mb_per_s: None,
            latency_ms: None,
            latency_split_ms: None,
            cpu_s: None,
            peak_rss_mib: None,
            mosquitto_cpu_s: None,
            tansu_cpu_s: None,
            vs_a: None,
            vs_b1: None,
            vs_b2: None,
        }
    }

    /// A case that could not run here.
    pub fn skipped(case: &Case, why: &str) -> CaseResult {
        CaseResult::empty(case, 0, "skipped", why)
    }

    /// A case that broke down.
    pub fn failed(case: &Case, why: &str) -> CaseResult {
        CaseResult::empty(case, 0, "failed", why)
    }

    /// One line for the console.
    pub fn summary(&self) -> String {
        let mut line = format!("{}: ", self.status);
        if let Some(rate) = self.msgs_per_s {
            line += &format!("{} msg/s", thousands(rate));
        }
        if let Some(l) = self.latency_ms {
            line += &format!(", p50 {:.1} ms, p99 {:.1} ms", l.p50, l.p99);
        }
        if let (Some(m), Some(d)) = (self.missing, self.duplicates) {
            line += &format!(", missing {m}, duplicates {d}");
        }
        if let Some(cpu) = self.cpu_s {
            line += &format!(", CPU {cpu:.1} s");
        }
        if let Some(rss) = self.peak_rss_mib {
            line += &format!(", peak RSS {rss:.0} MiB");
        }
        if let Some(note) = &self.note {
            line += &format!(" ({note})");
        }
        line
    }
}

/// Fills in each case's throughput relative to a, b1 and b2.
pub fn add_ratios(results: &mut [CaseResult]) {
    let rate_of = |letter: &str, results: &[CaseResult]| {
        results
            .iter()
            .find(|r| r.letter == letter && r.status == "ok")
            .and_then(|r| r.msgs_per_s)
    };
    let (a, b1, b2) = (
        rate_of("a", results),
        rate_of("b1", results),
        rate_of("b2", results),
    );
    for r in results.iter_mut() {
        let ratio = |base: Option<f64>| r.msgs_per_s.zip(base).map(|(x, b)| x / b);
        (r.vs_a, r.vs_b1, r.vs_b2) = (ratio(a), ratio(b1), ratio(b2));
    }
}

/// One row per case from several rounds of all the cases: the case's
/// median round by msg/s among its `ok` rounds (the lower middle one for
/// an even number), with `vs_a`, `vs_b1` and `vs_b2` replaced by the
/// medians of the ratios measured within each round (the baselines ran
/// minutes apart from a case in other rounds, so cross-round ratios would
/// mix the machine's slow and fast spells). A case with no `ok` round
/// keeps its first round. One round is returned as it is.
pub fn medians(rounds: &[Vec<CaseResult>]) -> Vec<CaseResult> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    if rounds.len() == 1 {
        return first.clone();
    }
    (0..first.len())
        .map(|i| {
            let runs: Vec<&CaseResult> = rounds.iter().filter_map(|r| r.get(i)).collect();
            let mut ok: Vec<&CaseResult> = runs
                .iter()
                .copied()
                .filter(|r| r.status == "ok" && r.msgs_per_s.is_some())
                .collect();
            ok.sort_by(|a, b| {
                a.msgs_per_s
                    .unwrap_or(0.0)
                    .total_cmp(&b.msgs_per_s.unwrap_or(0.0))
            });
            let Some(mid) = ok.get(ok.len().saturating_sub(1) / 2) else {
                return runs[0].clone();
            };
            let mut row = (*mid).clone();
            let median_of =
                |f: fn(&CaseResult) -> Option<f64>| lower_median(ok.iter().filter_map(|r| f(r)));
            row.vs_a = median_of(|r| r.vs_a);
            row.vs_b1 = median_of(|r| r.vs_b1);
            row.vs_b2 = median_of(|r| r.vs_b2);
            if ok.len() < runs.len() {
                // Why the other rounds were not ok, as their notes say.
                let mut notes = vec![format!(
                    "{} of {} rounds not ok",
                    runs.len() - ok.len(),
                    runs.len()
                )];
                for (n, r) in runs.iter().enumerate().filter(|(_, r)| r.status != "ok") {
                    let why = r.note.as_deref().unwrap_or("no note");
                    notes.push(format!("round {}: {}: {why}", n + 1, r.status));
                }
                notes.extend(row.note.take());
                row.note = Some(notes.join("; "));
                // Most rounds not ok: the row does not pass for a steady case.
                if ok.len() * 2 <= runs.len() {
                    row.status = "unsteady".into();
                }
            }
            row
        })
        .collect()
}

/// The middle value (the lower middle one of an even number), if any.
fn lower_median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len().checked_sub(1)? / 2).copied()
}

/// Writes results.json, results.md and results.svg into `dir`.
pub fn write(run: &Run, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let json = dir.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(run)? + "\n")
        .with_context(|| format!("write {}", json.display()))?;
    let md = dir.join("results.md");
    std::fs::write(&md, markdown(run)).with_context(|| format!("write {}", md.display()))?;
    let svg = dir.join("results.svg");
    chart(run, &svg).with_context(|| format!("write {}", svg.display()))?;
    Ok(vec![json, md, svg])
}

fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What a table shows where there is no figure.
fn dash() -> String {
    "–".to_string()
}

/// A ratio as a table shows it: `1.23×`.
fn ratio(x: Option<f64>) -> String {
    x.map_or_else(dash, |v| format!("{v:.2}×"))
}

/// The results as a Markdown table, with the run's conditions.
pub fn markdown(run: &Run) -> String {
    let s = &run.settings;
    let m = &run.machine;
    let num = |x: Option<f64>, decimals: usize| x.map_or_else(dash, |v| format!("{v:.decimals$}"));
    let mut out = format!(
        "Run {} ({:.0} s): {} messages per case, {}, publisher QoS {}, subscriptions QoS {}, \
         {} publisher(s), {} device topics, {} partitions, sluice max_in_flight {}.\n\
         Machine: {} ({} CPUs), {} GiB, Linux {}, load average at start {}.\n\
         MQTT: {}. Kafka: {}.\n\n",
        run.started_at,
        run.duration_s,
        s.messages,
        match s.rate {
            0 => "published flat out".to_string(),
            r => format!("published at {r} msg/s"),
        },
        s.qos,
        s.sub_qos,
        s.publishers,
        s.devices,
        s.partitions,
        s.max_in_flight,
        m.cpu,
        m.cpus,
        m.memory_gib,
        m.kernel,
        m.load_average_at_start,
        run.brokers.mqtt,
        run.brokers.kafka,
    );
    if !run.rounds.is_empty() {
        out += &format!(
            "{} rounds of all the cases, one after another. Each row is the case's median \
             round by msg/s (its latency, CPU and RSS are that round's); its ratios are the \
             medians of the ratios within each round, not this row's msg/s over another \
             row's. Every round is listed below.\n\n",
            run.rounds.len()
        );
    }
    out += "| case | what | msg/s | MB/s | p50 ms | p90 ms | p99 ms | max ms | missing | dup | CPU s | peak RSS MiB | vs a | vs b1 | vs b2 |\n";
    out += "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for r in &run.cases {
        let lat = |f: fn(&Latency) -> f64| num(r.latency_ms.as_ref().map(f), 1);
        let status = if r.status == "ok" {
            String::new()
        } else {
            format!(" **{}**", r.status)
        };
        out += &format!(
            "| ({}) {}{status} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.letter,
            r.id,
            r.what.replace('|', "\\|"),
            r.msgs_per_s.map_or_else(dash, thousands),
            num(r.mb_per_s, 2),
            lat(|l| l.p50),
            lat(|l| l.p90),
            lat(|l| l.p99),
            lat(|l| l.max),
            r.missing.map_or_else(dash, |v| v.to_string()),
            r.duplicates.map_or_else(dash, |v| v.to_string()),
            num(r.cpu_s, 1),
            num(r.peak_rss_mib, 0),
            ratio(r.vs_a),
            ratio(r.vs_b1),
            ratio(r.vs_b2),
        );
    }
    let splits: Vec<(&CaseResult, &LatencySplit)> = run
        .cases
        .iter()
        .filter_map(|r| r.latency_split_ms.as_ref().map(|s| (r, s)))
        .collect();
    if !splits.is_empty() {
        out += "\nLatency split at the Kafka record's time stamp (Sluice: its MQTT receipt; \
                the bridges: their producer), ms:\n\n\
                | case | publish → time stamp p50 | p99 | time stamp → read p50 | p99 |\n\
                | --- | ---: | ---: | ---: | ---: |\n";
        for (r, split) in splits {
            out += &format!(
                "| ({}) {} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                r.letter,
                r.id,
                split.to_record.p50,
                split.to_record.p99,
                split.from_record.p50,
                split.from_record.p99,
            );
        }
    }
    if !run.rounds.is_empty() {
        out += &rounds_table(&run.rounds);
    }
    let notes: Vec<String> = run
        .cases
        .iter()
        .filter_map(|r| r.note.as_ref().map(|n| format!("- ({}) {}", r.letter, n)))
        .collect();
    if !notes.is_empty() {
        out += "\nNotes:\n";
        out += &notes.join("\n");
        out += "\n";
    }
    out
}

/// Every round's msg/s and ratios, one row per case and round.
fn rounds_table(rounds: &[Vec<CaseResult>]) -> String {
    let mut out = "\nEvery round:\n\n\
                   | round | case | status | msg/s | p99 ms | missing | dup | CPU s | vs a | vs b1 | vs b2 |\n\
                   | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        .to_string();
    for (n, round) in rounds.iter().enumerate() {
        for r in round {
            out += &format!(
                "| {} | ({}) | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                n + 1,
                r.letter,
                r.status,
                r.msgs_per_s.map_or_else(dash, thousands),
                r.latency_ms.map_or_else(dash, |l| format!("{:.1}", l.p99)),
                r.missing.map_or_else(dash, |v| v.to_string()),
                r.duplicates.map_or_else(dash, |v| v.to_string()),
                r.cpu_s.map_or_else(dash, |v| format!("{v:.1}")),
                ratio(r.vs_a),
                ratio(r.vs_b1),
                ratio(r.vs_b2),
            );
        }
    }
    out
}

/// Two bar charts side by side: throughput and p99 latency per case.
fn chart(run: &Run, path: &Path) -> anyhow::Result<()> {
    let labels: Vec<String> = run.cases.iter().map(|r| r.letter.clone()).collect();
    let rates: Vec<Option<f64>> = run.cases.iter().map(|r| r.msgs_per_s).collect();
    let p99s: Vec<Option<f64>> = run
        .cases
        .iter()
        .map(|r| r.latency_ms.map(|l| l.p99))
        .collect();
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (title, rest) = root.split_vertically(40);
    let (body, footer) = rest.split_vertically(410);
    let legend: Vec<String> = run
        .cases
        .iter()
        .map(|r| {
            let name = r.id.split_once('-').map_or(r.id.as_str(), |(_, n)| n);
            format!("{} {}", r.letter, name.trim_start_matches("sluice-"))
        })
        .collect();
    footer
        .titled(&legend.join("  ·  "), ("sans-serif", 13))
        .map_err(plot_error)?;
    title
        .titled(
            &format!(
                "sluice-bench {}: {} messages per case ({}), {} CPUs{}",
                run.started_at,
                run.settings.messages,
                match run.settings.rate {
                    0 => "flat out".to_string(),
                    r => format!("{r} msg/s"),
                },
                run.machine.cpus,
                match run.rounds.len() {
                    0 | 1 => String::new(),
                    n => format!(", each case's median round of {n}"),
                }
            ),
            ("sans-serif", 18),
        )
        .map_err(plot_error)?;
    let (left, right) = body.split_horizontally(550);
    bars(
        &left,
        "throughput (msg/s)",
        &labels,
        &rates,
        RGBColor(52, 101, 164),
    )?;
    bars(
        &right,
        "p99 end-to-end latency (ms)",
        &labels,
        &p99s,
        RGBColor(204, 102, 0),
    )?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn bars(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    labels: &[String],
    values: &[Option<f64>],
    color: RGBColor,
) -> anyhow::Result<()> {
    let top = values
        .iter()
        .flatten()
        .copied()
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.15;
    let n = labels.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        // `a..b` segmented has a segment per value of a..=b.
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..top)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .x_labels(n)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|y| {
            if top >= 10_000.0 {
                format!("{:.0}k", y / 1000.0)
            } else {
                format!("{y:.1}")
            }
        })
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(values.iter().enumerate().map(|(i, v)| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), v.unwrap_or(0.0)),
                ],
                color.filled(),
            );
            bar.set_margin(0, 0, 8, 8);
            bar
        }))
        .map_err(plot_error)?;
    let style =
        TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart
        .draw_series(values.iter().enumerate().map(|(i, v)| {
            let text = match v {
                None => "n/a".to_string(),
                Some(v) if top >= 10_000.0 => thousands(*v),
                Some(v) => format!("{v:.1}"),
            };
            let y = v.unwrap_or(0.0) + top * 0.02;
            Text::new(text, (SegmentValue::CenterOf(i), y), style.clone())
        }))
        .map_err(plot_error)?;
    Ok(())
}

fn plot_error(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("chart: {err}")
}

/// Now, in UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_thousands() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(12_345.0), "12,345");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }

    fn result(letter: &str, status: &str, rate: Option<f64>, vs_a: Option<f64>) -> CaseResult {
        let case = crate::cases::select(letter).expect("a case")[0];
        let mut r = CaseResult::empty(&case, 10, status, "");
        r.note = None;
        r.msgs_per_s = rate;
        r.vs_a = vs_a;
        r
    }

    #[test]
    fn several_rounds_give_each_case_its_median_round_and_median_ratios() {
        let rounds = vec![
            vec![
                result("a", "ok", Some(100.0), Some(1.0)),
                result("e", "ok", Some(90.0), Some(0.9)),
            ],
            vec![
                result("a", "ok", Some(50.0), Some(1.0)),
                result("e", "ok", Some(60.0), Some(1.2)),
            ],
            vec![
                result("a", "ok", Some(80.0), Some(1.0)),
                result("e", "ok", Some(70.0), Some(0.875)),
            ],
        ];
        let rows = medians(&rounds);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].msgs_per_s, Some(80.0));
        assert_eq!(rows[1].msgs_per_s, Some(70.0));
        // The median of 0.9, 1.2 and 0.875, not 70 / 80 from two rows.
        assert_eq!(rows[1].vs_a, Some(0.9));
        assert_eq!(rows[1].note, None);
        // One round is returned as it is.
        assert_eq!(medians(&rounds[..1])[1].msgs_per_s, Some(90.0));
        assert!(medians(&[]).is_empty());
    }

    #[test]
    fn rounds_that_failed_are_left_out_of_the_median_and_noted() {
        let rounds = vec![
            vec![result("e", "failed", None, None)],
            vec![result("e", "ok", Some(60.0), Some(1.2))],
            vec![result("e", "ok", Some(70.0), Some(0.8))],
            vec![result("e", "incomplete", Some(10.0), Some(0.1))],
        ];
        let row = &medians(&rounds)[0];
        // The lower middle of two.
        assert_eq!((row.msgs_per_s, row.vs_a), (Some(60.0), Some(0.8)));
        assert_eq!(
            row.note.as_deref(),
            Some("2 of 4 rounds not ok; round 1: failed: no note; round 4: incomplete: no note")
        );
        assert_eq!(row.status, "unsteady", "half the rounds are not ok");
        let mut once = rounds[1..].to_vec();
        once[2][0].note = Some("3 missing".into());
        let row = &medians(&once)[0];
        assert_eq!(row.status, "ok");
        assert_eq!(
            row.note.as_deref(),
            Some("1 of 3 rounds not ok; round 3: incomplete: 3 missing")
        );
        let all_failed = vec![vec![result("e", "failed", None, None)]; 2];
        assert_eq!(medians(&all_failed)[0].status, "failed");
    }

    #[test]
    fn utc_dates_look_right() {
        let now = utc_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20"), "{now}");
        assert!(now.ends_with('Z'));
    }
}
