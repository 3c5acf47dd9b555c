//! Running the `sluice` binary on pipeline files written to a temp dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use tempfile::TempDir;

use crate::http::{http_get, http_request, HttpResponse};
use crate::paths::sluice_bin;
use crate::process::{temp_dir, ChildProcess};
use crate::wait::{deadline, wait_for};

/// How long `sluice run` may take to print its listen address and report
/// ready (it compiles the Wasm plugins at start).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long SIGTERM gets (drain: finish in-flight, flush, ack) before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(20);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A `Command` for the `sluice` binary (see [`sluice_bin`]).
pub fn sluice_command() -> Command {
    let mut command = Command::new(sluice_bin());
    command.env("RUST_BACKTRACE", "1");
    command
}

/// The `name:` of a pipeline YAML text, if it has a top-level one.
fn pipeline_name(yaml: &str) -> Option<String> {
    yaml.lines()
        .find_map(|line| line.strip_prefix("name:"))
        .map(|rest| {
            rest.split('#')
                .next()
                .unwrap_or_default()
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_owned()
        })
        .filter(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        })
}

/// Parses the address out of a `sluice: listening on http://ADDR` line.
pub fn parse_listen_line(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on http://")?;
    let addr = rest
        .split(|c: char| c.is_whitespace() || c == '/')
        .next()
        .unwrap_or_default();
    addr.parse().ok()
}

/// A running `sluice run FILE.yaml... --listen 127.0.0.1:0`. Stdout and
/// stderr of each run go to `sluice-N.stdout` / `sluice-N.stderr` in its
/// temp dir. Dropping it sends SIGTERM, then SIGKILL after [`STOP_GRACE`].
#[derive(Debug)]
pub struct Sluice {
    process: Option<ChildProcess>,
    addr: Option<SocketAddr>,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    runs: usize,
    dir: TempDir,
}

impl Sluice {
    /// Writes each pipeline YAML text to a file (`<name>.yaml`), starts
    /// sluice on them and waits until `/readyz` answers 200. Panics with
    /// sluice's output if that does not happen within [`READY_TIMEOUT`].
    pub fn start<S: AsRef<str>>(pipelines: &[S]) -> Sluice {
        let mut sluice = Sluice::spawn(pipelines);
        sluice.wait_ready(READY_TIMEOUT);
        sluice
    }

    /// Like [`Sluice::start`] but returns right after spawning.
    pub fn spawn<S: AsRef<str>>(pipelines: &[S]) -> Sluice {
        Sluice::spawn_with_env(pipelines, &[])
    }

    /// Like [`Sluice::spawn`], with extra environment variables for sluice
    /// (e.g. `("SLUICE_LOG", "debug")`), also on every restart.
    pub fn spawn_with_env<S: AsRef<str>>(pipelines: &[S], env: &[(&str, &str)]) -> Sluice {
        Sluice::spawn_with(pipelines, env, &[])
    }

    /// Like [`Sluice::spawn_with_env`], with extra `sluice run` arguments
    /// (e.g. `--watch`), also on every restart.
    pub fn spawn_with<S: AsRef<str>>(
        pipelines: &[S],
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Sluice {
        assert!(!pipelines.is_empty(), "sluice needs at least one pipeline");
        let dir = temp_dir("sluice-run-");
        let files = pipelines
            .iter()
            .enumerate()
            .map(|(index, yaml)| {
                let yaml = yaml.as_ref();
                let stem = pipeline_name(yaml).unwrap_or_else(|| format!("pipeline-{}", index + 1));
                let mut path = dir.path().join(format!("{stem}.yaml"));
                if path.exists() {
                    path = dir.path().join(format!("{stem}-{}.yaml", index + 1));
                }
                std::fs::write(&path, yaml).expect("write pipeline YAML");
                path
            })
            .collect();
        let mut sluice = Sluice {
            process: None,
            addr: None,
            files,
            env: env
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            runs: 0,
            dir,
        };
        sluice.launch();
        sluice
    }

    fn launch(&mut self) {
        assert!(self.process.is_none(), "sluice is already running");
        self.runs += 1;
        self.addr = None;
        let mut command = sluice_command();
        command
            .arg("run")
            .args(&self.files)
            .args(["--listen", "127.0.0.1:0"])
            .args(&self.args)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .current_dir(self.dir.path());
        let name = format!("sluice-{}", self.runs);
        let process = ChildProcess::spawn(&name, command, self.dir.path(), STOP_GRACE)
            .unwrap_or_else(|err| panic!("{err}"));
        self.process = Some(process);
    }

    fn process_mut(&mut self) -> &mut ChildProcess {
        self.process.as_mut().expect("sluice is not running")
    }

    /// Waits for the `sluice: listening on http://ADDR` line on stderr and
    /// returns ADDR. Panics with sluice's output if it exits or `timeout`
    /// passes first.
    pub fn wait_listening(&mut self, timeout: Duration) -> SocketAddr {
        if let Some(addr) = self.addr {
            return addr;
        }
        let process = self.process.as_mut().expect("sluice is not running");
        let stderr = process.stderr_path().to_path_buf();
        let found = wait_for(deadline(timeout), || {
            let text = std::fs::read_to_string(&stderr).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(parse_listen_line) {
                return Some(Ok(addr));
            }
            process.exit_status().map(Err)
        });
        match found {
            Some(Ok(addr)) => {
                self.addr = Some(addr);
                addr
            }
            Some(Err(status)) => panic!(
                "sluice exited ({status}) before printing `sluice: listening on http://ADDR`\n{}",
                self.output_tail(60)
            ),
            None => panic!(
                "sluice printed no `sluice: listening on http://ADDR` line within {timeout:?}\n{}",
                self.output_tail(60)
            ),
        }
    }

    /// Waits until `GET /readyz` answers 200 (every pipeline connected to
    /// both ends). Panics with sluice's output and the last answer otherwise.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let until = deadline(timeout);
        let addr = self.wait_listening(timeout);
        let mut last = String::from("no answer");
        let process = self.process_mut();
        let ready = wait_for(until, || match http_get(addr, "/readyz", HTTP_TIMEOUT) {
            Ok(response) if response.status == 200 => Some(Ok(())),
            Ok(response) => {
                last = format!("{} {}", response.status, response.body.trim());
                process.exit_status().map(Err)
            }
            Err(err) => {
                last = err.to_string();
                process.exit_status().map(Err)
            }
        });
        match ready {
            Some(Ok(())) => {}
            Some(Err(status)) => panic!(
                "sluice exited ({status}) before it was ready (last /readyz: {last})\n{}",
                self.output_tail(60)
            ),
            None => panic!(
                "sluice not ready within {timeout:?} (last /readyz: {last})\n{}",
                self.output_tail(60)
            ),
        }
    }

    /// The HTTP listen address (panics if not yet known: see
    /// [`Sluice::wait_listening`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
            .expect("sluice's listen address is not known yet (call wait_listening)")
    }

    /// `GET path` on sluice's HTTP listener.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr(), path, HTTP_TIMEOUT)
            .unwrap_or_else(|err| panic!("GET {path} on sluice at {}: {err}", self.addr()))
    }

    /// `POST path` (no body) on sluice's HTTP listener, with `token` as
    /// the bearer token if given.
    pub fn post(&self, path: &str, token: Option<&str>) -> HttpResponse {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        http_request(self.addr(), "POST", path, &headers, HTTP_TIMEOUT)
            .unwrap_or_else(|err| panic!("POST {path} on sluice at {}: {err}", self.addr()))
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        self.get("/metrics").body
    }

    /// The sum of every sample of metric `name` whose labels include all
    /// `labels`, from `/metrics`; `None` if there is no such sample.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }

    /// The process id of the current run (panics if not running).
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("sluice is not running").pid()
    }

    /// SIGKILL: a crash, nothing drained, flushed or acked.
    pub fn kill(&mut self) -> ExitStatus {
        let status = self.process_mut().kill();
        self.process = None;
        status
    }

    /// SIGTERM and wait for the drain (SIGKILL after [`STOP_GRACE`]).
    pub fn stop(&mut self) -> ExitStatus {
        let status = self.process_mut().stop();
        self.process = None;
        status
    }

    /// Starts sluice again on the same pipeline files (so the same MQTT
    /// client ids) and waits until ready. Stops the running one first
    /// (SIGTERM) if there is one.
    pub fn restart(&mut self) {
        if self.process.is_some() {
            self.stop();
        }
        self.launch();
        self.wait_ready(READY_TIMEOUT);
    }

    /// The pipeline files, in the order given to `sluice run`.
    pub fn pipeline_files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The temp dir with the pipeline files and the output of every run.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The stderr of the current (or last) run.
    pub fn stderr(&self) -> String {
        let path = self.dir.path().join(format!("sluice-{}.stderr", self.runs));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// The last `lines` lines of the current (or last) run's output.
    pub fn output_tail(&self, lines: usize) -> String {
        match &self.process {
            Some(process) => process.output_tail(lines),
            None => crate::process::tail(
                &self.dir.path().join(format!("sluice-{}.stderr", self.runs)),
                lines,
            ),
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        // ChildProcess's own drop stops it and, during a panic, prints its
        // output; nothing else to do here.
        self.process.take();
    }
}

/// The sum of every sample of metric `name` in Prometheus text `metrics`
/// whose labels include all `labels`; `None` if there is no such sample.
pub fn metric_value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in metrics.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(rest) = rest.strip_prefix('{') {
            match rest.split_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue; // a longer metric name with this prefix
        };
        let matches = labels
            .iter()
            .all(|(key, value)| label_text.contains(&format!("{key}=\"{value}\"")));
        if !matches {
            continue;
        }
        if let Some(value) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::{metric_value, parse_listen_line, pipeline_name};

    #[test]
    fn finds_the_listen_address_in_a_log_line() {
        assert_eq!(
            parse_listen_line("sluice: listening on http://127.0.0.1:40123"),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(
            parse_listen_line(
                "2026-11-24T10:00:00Z INFO sluice: listening on http://127.0.0.1:9/ ok"
            ),
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(parse_listen_line("sluice: starting"), None);
    }

    #[test]
    fn reads_the_pipeline_name_for_the_file_name() {
        assert_eq!(
            pipeline_name("apiVersion: sluice/v1\nname: \"sensors\" # x\n").as_deref(),
            Some("sensors")
        );
        assert_eq!(pipeline_name("apiVersion: sluice/v1\n"), None);
        assert_eq!(pipeline_name("name: ../evil\n"), None);
    }

    #[test]
    fn sums_matching_metric_samples() {
        let text = "# TYPE sluice_messages_delivered_total counter\n\
                    sluice_messages_delivered_total{pipeline=\"a\"} 3\n\
                    sluice_messages_delivered_total{pipeline=\"b\"} 4\n\
                    sluice_messages_delivered_total_other 9\n";
        let name = "sluice_messages_delivered_total";
        assert_eq!(metric_value(text, name, &[("pipeline", "a")]), Some(3.0));
        assert_eq!(metric_value(text, name, &[]), Some(7.0));
        assert_eq!(metric_value(text, name, &[("pipeline", "c")]), None);
    }
}
