//! Sluice scraped by a real Prometheus server: real mosquitto -> the
//! `sluice` binary (a real Wasm transform) -> real tansu, with Prometheus
//! (Debian package `prometheus`) scraping sluice's `/metrics` every second.
//! What Prometheus stores must match what went through, and every query of
//! the Grafana dashboard must run on it.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::*;

/// How long the records may take to reach Kafka.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long Prometheus may take to scrape and show a value (scrapes are 1 s apart).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);
/// What the dashboard's `$__rate_interval` becomes here (several scrapes).
const RATE_INTERVAL: &str = "30s";

/// Polls `expr` on `prometheus` until its value (the sum of its samples)
/// is `expected`; panics with the last answer after [`SCRAPE_TIMEOUT`].
fn wait_for_value(prometheus: &Prometheus, sluice: &Sluice, expr: &str, expected: f64) {
    let mut last = Ok(None);
    let reached = wait_until(deadline(SCRAPE_TIMEOUT), || {
        last = prometheus.query_sum(expr);
        matches!(last, Ok(Some(value)) if value == expected)
    });
    assert!(
        reached,
        "Prometheus did not show {expr} = {expected} within {SCRAPE_TIMEOUT:?}; \
         last answer: {last:?}\nsluice's own /metrics says {:?}\n{}",
        sluice.metric(
            expr.split('{').next().unwrap_or(expr),
            &[("pipeline", "scraped")]
        ),
        prometheus.output_tail(20)
    );
}

#[test]
fn prometheus_scrapes_the_delivered_count_and_runs_every_dashboard_query() {
    const SENT: usize = 40;
    let mqtt = Mosquitto::start();
    let kafka = Tansu::start();
    kafka.create_topic("scraped", 1);
    let sluice = Sluice::start(&[format!(
        r#"
apiVersion: sluice/v1
name: scraped
source:
  mqtt:
    url: {mqtt}
    client_id: prometheus-scraped
    topics:
      - filter: devices/+/telemetry
        qos: 1
transforms:
  - name: normalise
    plugin: {plugin}
    config: {{ from_topic: {{ device_id: 1 }} }}
sink:
  kafka:
    brokers: {kafka}
    topic: scraped
"#,
        mqtt = mqtt.url(),
        kafka = kafka.brokers(),
        plugin = plugin("json_map").display(),
    )]);
    let prometheus = Prometheus::start(&[sluice.addr()]);
    let instance = sluice.addr().to_string();
    wait_for_value(
        &prometheus,
        &sluice,
        &format!(r#"up{{job="sluice",instance="{instance}"}}"#),
        1.0,
    );

    let messages: Vec<MqttMessage> = (0..SENT)
        .map(|seq| {
            MqttMessage::new(
                format!("devices/dev-{}/telemetry", seq % 4),
                json!({ "seq": seq }).to_string(),
            )
        })
        .collect();
    publish(&mqtt.url(), Protocol::V5, 1, &messages);
    let records = consume(&kafka.brokers(), "scraped", SENT, DELIVERY_TIMEOUT);
    assert_eq!(records.len(), SENT, "{}", sluice.output_tail(20));

    for metric in [
        "sluice_messages_delivered_total",
        "sluice_messages_received_total",
    ] {
        wait_for_value(
            &prometheus,
            &sluice,
            &format!(r#"{metric}{{pipeline="scraped"}}"#),
            SENT as f64,
        );
    }
    wait_for_value(
        &prometheus,
        &sluice,
        r#"sluice_end_to_end_latency_seconds_count{pipeline="scraped"}"#,
        SENT as f64,
    );

    // The dashboard's variables find this sluice and its pipeline.
    let dashboard = load_dashboard();
    let variables: Vec<&Value> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let values = [
        ("datasource", "unused"),
        ("instance", instance.as_str()),
        ("pipeline", "scraped"),
        ("__rate_interval", RATE_INTERVAL),
        ("__interval", "1s"),
        ("__range", "5m"),
    ];
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .unwrap_or_default();
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: {query:?}", variable["name"]));
        let (selector, label) = inner.rsplit_once(',').expect("label_values(METRIC, LABEL)");
        let label = label.trim();
        let expr = expand_variables(&format!("count by ({label}) ({selector})"), &values)
            .unwrap_or_else(|err| panic!("variable {}: {err}", variable["name"]));
        let samples = prometheus
            .query_vector(&expr)
            .unwrap_or_else(|err| panic!("variable {}: {err}", variable["name"]));
        let found: Vec<&str> = samples
            .iter()
            .filter_map(|(labels, _)| labels[label].as_str())
            .collect();
        let expected = values
            .iter()
            .find(|(name, _)| variable["name"] == *name)
            .map(|(_, value)| *value)
            .unwrap_or_else(|| panic!("no test value for variable {}", variable["name"]));
        assert_eq!(found, [expected], "variable {}: `{expr}`", variable["name"]);
    }

    // Every panel query is valid PromQL and, but for plugin traps (none
    // happened), has data.
    let queries = dashboard_queries(&dashboard);
    assert!(!queries.is_empty());
    let mut pending: Vec<(String, String)> = Vec::new();
    for query in &queries {
        let what = format!("panel {:?} {}", query.panel, query.ref_id);
        let expr =
            expand_variables(&query.expr, &values).unwrap_or_else(|err| panic!("{what}: {err}"));
        if let Err(err) = prometheus.query(&expr) {
            panic!("{what}: Prometheus refuses `{expr}`: {err}");
        }
        if !expr.contains("sluice_plugin_traps_total") {
            pending.push((what, expr));
        }
    }
    let all_have_data = wait_until(deadline(SCRAPE_TIMEOUT), || {
        pending.retain(|(_, expr)| {
            !matches!(prometheus.query_vector(expr), Ok(samples) if !samples.is_empty())
        });
        pending.is_empty()
    });
    assert!(
        all_have_data,
        "no data within {SCRAPE_TIMEOUT:?} for:\n  {}",
        pending
            .iter()
            .map(|(what, expr)| format!("{what}: {expr}"))
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}
