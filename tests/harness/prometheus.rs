//! A real Prometheus server (Debian package `prometheus`) on a free loopback
//! port, scraping given targets every second into a throwaway TSDB, and its
//! HTTP query API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::http::http_get;
use crate::process::{find_on_path, free_port, tail, temp_dir, ChildProcess};
use crate::wait::{deadline, wait_for};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// The prometheus binary: `$SLUICE_PROMETHEUS_BIN`, else `prometheus` on
/// PATH, else `/usr/bin/prometheus` (Debian's place).
pub fn prometheus_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_PROMETHEUS_BIN") {
        return PathBuf::from(path);
    }
    find_on_path("prometheus").unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"))
}

/// The `promtool` binary next to [`prometheus_bin`], else on PATH; `None`
/// when neither exists (Debian's `prometheus` package ships both).
pub fn promtool_bin() -> Option<PathBuf> {
    let beside = prometheus_bin().with_file_name("promtool");
    if beside.is_file() {
        return Some(beside);
    }
    find_on_path("promtool")
}

/// `text` percent-encoded for a URL query component (RFC 3986 unreserved
/// characters kept as they are).
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A Prometheus server on `127.0.0.1:<port>` that scrapes its targets'
/// `/metrics` every [`Prometheus::SCRAPE_INTERVAL`] as job `sluice`, with
/// its TSDB in its own temporary folder. Stopped on drop.
#[derive(Debug)]
pub struct Prometheus {
    process: Option<ChildProcess>,
    port: u16,
    dir: TempDir,
}

impl Prometheus {
    /// How often it scrapes (and evaluates).
    pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
    /// The job name of the scraped targets (the `job` label).
    pub const JOB: &'static str = "sluice";

    /// Starts a server scraping `targets` (host:port of a `/metrics`
    /// endpoint) and waits until `/-/ready` answers 200. Panics with its
    /// output if it does not come up.
    pub fn start(targets: &[SocketAddr]) -> Prometheus {
        let mut errors = Vec::new();
        // The port can be taken between free_port() and the bind.
        for _attempt in 0..3 {
            let mut server = Prometheus {
                process: None,
                port: free_port(),
                dir: temp_dir("sluice-prometheus-"),
            };
            match server.launch(targets) {
                Ok(()) => return server,
                Err(err) => errors.push(err),
            }
        }
        panic!("prometheus did not start:\n{}", errors.join("\n"));
    }

    fn write_config(&self, targets: &[SocketAddr]) -> PathBuf {
        let interval = format!("{}s", Self::SCRAPE_INTERVAL.as_secs());
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  \
             evaluation_interval: {interval}\n\
             scrape_configs:\n  - job_name: {job}\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [{targets}]\n",
            job = Self::JOB,
            targets = targets.join(", "),
        );
        let path = self.dir.path().join("prometheus.yml");
        std::fs::write(&path, config).expect("write prometheus.yml");
        path
    }

    fn launch(&mut self, targets: &[SocketAddr]) -> Result<(), String> {
        let config = self.write_config(targets);
        let data = self.dir.path().join("data");
        let mut command = Command::new(prometheus_bin());
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .current_dir(self.dir.path());
        let mut process = ChildProcess::spawn("prometheus", command, self.dir.path(), STOP_GRACE)
            .map_err(|err| {
            format!(
                "{err} (install Debian's `prometheus`, e.g. `bash scripts/setup.sh`, \
                     or set SLUICE_PROMETHEUS_BIN)"
            )
        })?;
        let addr = self.addr();
        let ready = wait_for(deadline(START_TIMEOUT), || {
            match http_get(addr, "/-/ready", HTTP_TIMEOUT) {
                Ok(response) if response.status == 200 => Some(Ok(())),
                _ => process.exit_status().map(Err),
            }
        });
        let failure = match ready {
            Some(Ok(())) => {
                self.process = Some(process);
                return Ok(());
            }
            Some(Err(status)) => format!("prometheus exited ({status}) before it was ready"),
            None => format!("prometheus on {addr} not ready after {START_TIMEOUT:?}"),
        };
        process.kill();
        Err(format!("{failure}\n{}", process.output_tail(30)))
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The folder with its config, TSDB and output files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An instant query (`GET /api/v1/query`): the `data` object of a
    /// `success` answer (`resultType`, `result`), else the error Prometheus
    /// gave (`errorType: error`) or the transport error.
    pub fn query(&self, expr: &str) -> Result<Value, String> {
        let path = format!("/api/v1/query?query={}", url_encode(expr));
        let response = http_get(self.addr(), &path, HTTP_TIMEOUT)
            .map_err(|err| format!("GET {path} on prometheus: {err}"))?;
        let body: Value = serde_json::from_str(&response.body).map_err(|err| {
            format!(
                "prometheus answered {} with no JSON ({err}): {}",
                response.status, response.body
            )
        })?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!(
                "{}: {} (HTTP {}) for `{expr}`",
                body["errorType"].as_str().unwrap_or("error"),
                body["error"].as_str().unwrap_or_default(),
                response.status
            ))
        }
    }

    /// The samples of an instant vector query: (labels, value) pairs; an
    /// error for a query that fails or is not a vector.
    pub fn query_vector(&self, expr: &str) -> Result<Vec<(Value, f64)>, String> {
        let data = self.query(expr)?;
        if data["resultType"] != "vector" {
            return Err(format!(
                "`{expr}` is a {}, not a vector",
                data["resultType"]
            ));
        }
        data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|sample| {
                let value = sample["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| format!("bad sample {sample} for `{expr}`"))?;
                Ok((sample["metric"].clone(), value))
            })
            .collect()
    }

    /// The sum of the sample values of a vector query, `None` when it has
    /// no samples (yet).
    pub fn query_sum(&self, expr: &str) -> Result<Option<f64>, String> {
        let samples = self.query_vector(expr)?;
        Ok((!samples.is_empty()).then(|| samples.iter().map(|(_, v)| v).sum()))
    }

    /// The last lines of its output.
    pub fn output_tail(&self, lines: usize) -> String {
        match &self.process {
            Some(process) => process.output_tail(lines),
            None => tail(&self.dir.path().join("prometheus.stderr"), lines),
        }
    }

    /// Stops it (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::url_encode;

    #[test]
    fn encodes_a_promql_query_for_a_url() {
        assert_eq!(
            url_encode(r#"sum(rate(m{p="a b"}[1m]))"#),
            "sum%28rate%28m%7Bp%3D%22a%20b%22%7D%5B1m%5D%29%29"
        );
    }
}
