//! `sluice demo`: the embedded default. An in-process MQTT broker (rumqttd),
//! an in-process Kafka (librdkafka's mock cluster), simulated devices, the
//! pipeline in `configs/demo.yaml` with the example transforms, a live
//! summary and a few records as they land in Kafka.
//!
//! What it shows is real: the same engine, acks and metrics as `sluice run`.
//! What it is not: durable. Both brokers live in memory and vanish on exit.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;

use sluice::config::SinkConfig;
use sluice::http::AdminAccess;
use sluice::metrics::Metrics;
use sluice::wasm::cache::PluginCache;
use sluice::wasm::WasmHost;
use sluice::{runner, summary};

/// Demo settings from the command line.
pub struct Options {
    pub config: PathBuf,
    pub listen: SocketAddr,
    pub duration: Option<u64>,
    pub devices: usize,
    pub rate: u32,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_mqtt_broker(port: u16) -> anyhow::Result<()> {
    let server = serde_json::json!({
        "name": "demo",
        "listen": format!("127.0.0.1:{port}"),
        "next_connection_delay_ms": 1,
        "connections": {
            "connection_timeout_ms": 60000,
            "max_payload_size": 1048576,
            "max_inflight_count": 1000,
            "dynamic_filters": true
        }
    });
    let cfg = serde_json::json!({
        "id": 0,
        "router": {
            "max_connections": 1000,
            "max_outgoing_packet_count": 1000,
            "max_segment_size": 104857600,
            "max_segment_count": 10
        },
        "v4": { "1": server }
    });
    let cfg: rumqttd::Config = serde_json::from_value(cfg).context("rumqttd config")?;
    std::thread::Builder::new()
        .name("demo-mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(cfg);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "demo MQTT broker stopped");
            }
        })?;
    // Ready once it accepts connections.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(anyhow!("demo MQTT broker did not start on port {port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Runs the demo until Ctrl-C or `duration`.
pub async fn run(o: Options) -> anyhow::Result<()> {
    let mqtt_port = free_port()?;
    start_mqtt_broker(mqtt_port)?;
    let kafka = MockCluster::new(1).context("cannot start the in-process Kafka")?;
    let brokers = kafka.bootstrap_servers();
    // SAFETY-free env set-up: single-threaded at this point of start-up is
    // not guaranteed under tokio, so pass values through the config loader's
    // environment lookup instead of mutating the process environment.
    let env: HashMap<&str, String> = HashMap::from([
        ("SLUICE_MQTT_URL", format!("mqtt://127.0.0.1:{mqtt_port}")),
        ("SLUICE_KAFKA_BROKERS", brokers.clone()),
    ]);
    let text = std::fs::read_to_string(&o.config).with_context(|| {
        format!(
            "cannot read {} (run the demo from the repository root)",
            o.config.display()
        )
    })?;
    let pipeline = sluice::config::load_str(&o.config, &text, |k| {
        env.get(k).cloned().or_else(|| std::env::var(k).ok())
    })
    .map_err(|d| anyhow!("{d}"))?;
    let SinkConfig::Kafka(k) = &pipeline.sink;
    let topic = k.topic.clone();
    let mut topics = vec![topic.clone()];
    topics.extend(pipeline.errors.dead_letter_topic.clone());
    for t in &topics {
        kafka
            .create_topic(t, 3, 1)
            .with_context(|| format!("create topic {t}"))?;
    }
    let host = Arc::new(WasmHost::new(PluginCache::from_env()?)?);
    let pipelines = runner::validate_loaded(vec![pipeline], &host).map_err(|d| anyhow!("{d}"))?;
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = watch::channel(false);

    println!("sluice demo: MQTT broker mqtt://127.0.0.1:{mqtt_port}, Kafka {brokers} (in-process), {} devices x {}/s", o.devices, o.rate);
    println!(
        "             pipeline {} -> Kafka topic `{topic}`; Ctrl-C to stop",
        o.config.display()
    );

    let (listening, statuses) = tokio::sync::oneshot::channel();
    let runner_task = tokio::spawn(runner::run(
        pipelines,
        host,
        metrics.clone(),
        (o.listen, AdminAccess::Open),
        stop_rx.clone(),
        move |addr, statuses| {
            println!("             metrics: curl http://{addr}/metrics | grep sluice_");
            let _ = listening.send(statuses.to_vec());
        },
    ));
    let devices = tokio::spawn(simulate_devices(
        mqtt_port,
        o.devices,
        o.rate,
        stop_rx.clone(),
    ));
    let watcher = {
        let brokers = brokers.clone();
        let stop = stop_rx.clone();
        std::thread::spawn(move || watch_kafka(&brokers, &topic, stop))
    };
    let summary = {
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            if let Ok(statuses) = statuses.await {
                summary::run(statuses, Duration::from_secs(2), |l| println!("{l}"), stop).await;
            }
        })
    };

    let ctrl_c = tokio::signal::ctrl_c();
    match o.duration {
        Some(s) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(s)) => {}
                _ = ctrl_c => {}
            }
        }
        None => {
            let _ = ctrl_c.await;
        }
    }
    println!("\nsluice demo: stopping (draining in-flight messages)...");
    stop_tx.send_replace(true);
    let _ = devices.await;
    runner_task.await??;
    let _ = summary.await;
    let seen = watcher.join().unwrap_or(0);
    let text = metrics.render();
    let get = |name: &str| sum_metric(&text, name);
    println!(
        "sluice demo: received {}, delivered {}, dropped by transforms {}, dead-lettered {}; {} records read back from Kafka",
        get("sluice_messages_received_total"),
        get("sluice_messages_delivered_total"),
        get("sluice_messages_dropped_total"),
        get("sluice_messages_dead_lettered_total"),
        seen
    );
    drop(kafka);
    Ok(())
}

async fn simulate_devices(port: u16, devices: usize, rate: u32, mut stop: watch::Receiver<bool>) {
    let mut opts = rumqttc::MqttOptions::new("sluice-demo-devices", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 1000);
    let poller = tokio::spawn(async move {
        loop {
            if let Err(e) = el.poll().await {
                tracing::debug!(error = %e, "demo devices connection");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let period = Duration::from_secs_f64(1.0 / (rate.max(1) as f64 * devices.max(1) as f64));
    let mut tick = tokio::time::interval(period);
    let mut seq: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        seq += 1;
        let dev = (seq as usize) % devices.max(1);
        let topic = format!("sensors/dev-{dev:03}/telemetry");
        // Mostly good telemetry, some heartbeats (filtered out) and a rare
        // corrupt payload (dead-lettered).
        let payload = if seq.is_multiple_of(97) {
            b"{\"temperature_f\": 71.3, \"humidity\": ".to_vec()
        } else if seq.is_multiple_of(10) {
            serde_json::json!({"kind": "heartbeat", "seq": seq, "battery": 87})
                .to_string()
                .into_bytes()
        } else {
            let t = 60.0 + ((seq * 7 + dev as u64 * 13) % 400) as f64 / 10.0;
            serde_json::json!({
                "kind": "reading",
                "seq": seq,
                "temperature_f": t,
                "humidity": 30 + (seq % 40),
                "battery": 100 - (seq % 50),
                "firmware": "1.4.2"
            })
            .to_string()
            .into_bytes()
        };
        if client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = client.disconnect().await;
    poller.abort();
}

/// Prints a few records as they land in Kafka; returns how many it read.
fn watch_kafka(brokers: &str, topic: &str, stop: watch::Receiver<bool>) -> usize {
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sluice-demo-watcher")
        .set("enable.auto.commit", "false")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo: cannot create Kafka consumer: {e}");
            return 0;
        }
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        let _ = tpl.add_partition_offset(topic, p, Offset::Beginning);
    }
    if let Err(e) = consumer.assign(&tpl) {
        eprintln!("demo: cannot assign Kafka partitions: {e}");
        return 0;
    }
    let mut seen = 0;
    let mut last_print = Instant::now() - Duration::from_secs(10);
    let mut idle_since_stop: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            let t = idle_since_stop.get_or_insert_with(Instant::now);
            if t.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                seen += 1;
                if last_print.elapsed() >= Duration::from_secs(2) {
                    last_print = Instant::now();
                    let key = m
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default();
                    let payload = m
                        .payload()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .unwrap_or_default();
                    println!(
                        "  kafka {}[{}]@{} key={key} {payload}",
                        m.topic(),
                        m.partition(),
                        m.offset()
                    );
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "demo consumer"),
            None => {}
        }
    }
    seen
}

/// Sum of every series of metric `name` in a Prometheus text exposition.
fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
