//! A real mosquitto broker on a free loopback port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{find_on_path, free_port, port_is_open, tail, temp_dir, ChildProcess};
use crate::wait::{deadline, wait_for};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The mosquitto binary: `$SLUICE_MOSQUITTO_BIN`, else `mosquitto` on PATH,
/// else `/usr/sbin/mosquitto` (Debian's place, often not on a user's PATH).
pub fn mosquitto_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_MOSQUITTO_BIN") {
        return PathBuf::from(path);
    }
    find_on_path("mosquitto").unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
}

/// A mosquitto broker listening on `127.0.0.1:<port>`, anonymous access,
/// persistence in its own temporary folder, unlimited queues. Stopped on drop.
#[derive(Debug)]
pub struct Mosquitto {
    process: Option<ChildProcess>,
    port: u16,
    extra_config: String,
    dir: TempDir,
}

impl Mosquitto {
    /// Starts a broker on a free port and waits until it accepts TCP
    /// connections. Panics (with the broker's log) if it does not come up.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with_config("")
    }

    /// Like [`Mosquitto::start`], with `extra` appended to the generated
    /// mosquitto.conf (e.g. `"log_type all\n"`, or limits for a fault test).
    pub fn start_with_config(extra: &str) -> Mosquitto {
        let mut errors = Vec::new();
        // A port can be taken between free_port() and mosquitto's bind: try
        // a few fresh ports before giving up.
        for _attempt in 0..3 {
            let mut broker = Mosquitto {
                process: None,
                port: free_port(),
                extra_config: extra.to_owned(),
                dir: temp_dir("sluice-mosquitto-"),
            };
            match broker.launch() {
                Ok(()) => return broker,
                Err(err) => errors.push(err),
            }
        }
        panic!("mosquitto did not start:\n{}", errors.join("\n"));
    }

    /// Writes the config and starts the process; Ok once the port accepts.
    fn launch(&mut self) -> Result<(), String> {
        let conf = self.write_config();
        let mut command = Command::new(mosquitto_bin());
        command.arg("-c").arg(&conf);
        let mut process = ChildProcess::spawn("mosquitto", command, self.dir.path(), STOP_GRACE)
            .map_err(|err| {
                format!("{err} (install mosquitto, e.g. `bash scripts/setup.sh`, or set SLUICE_MOSQUITTO_BIN)")
            })?;
        let port = self.port;
        let ready = wait_for(deadline(START_TIMEOUT), || {
            if port_is_open(port) {
                Some(Ok(()))
            } else {
                process.exit_status().map(Err)
            }
        });
        match ready {
            Some(Ok(())) => {
                self.process = Some(process);
                Ok(())
            }
            Some(Err(status)) => Err(format!(
                "mosquitto exited ({status}) before listening on port {port}\n{}\n{}",
                process.output_tail(30),
                tail(&self.log_path(), 30)
            )),
            None => {
                process.kill();
                Err(format!(
                    "mosquitto not listening on port {port} after {START_TIMEOUT:?}\n{}\n{}",
                    process.output_tail(30),
                    tail(&self.log_path(), 30)
                ))
            }
        }
    }

    fn write_config(&self) -> PathBuf {
        let dir = self.dir.path();
        let persistence = dir.join("data");
        std::fs::create_dir_all(&persistence).expect("mosquitto persistence folder");
        let conf = dir.join("mosquitto.conf");
        let text = format!(
            "# written by the sluice test harness\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {persistence}/\n\
             log_dest file {log}\n\
             log_timestamp_format %Y-%m-%dT%H:%M:%S\n\
             user root\n\
             max_inflight_messages 1000\n\
             max_queued_messages 0\n\
             {extra}",
            extra = self.extra_config,
            port = self.port,
            persistence = persistence.display(),
            log = self.log_path().display(),
        );
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        conf
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's process id (panics if stopped).
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("mosquitto is running").pid()
    }

    /// The broker's own log file (`log_dest file`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// The folder holding the config, log and persistence database.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the broker cleanly (SIGTERM; it saves its persistence database).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Stops the broker uncleanly (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the broker again on the same port with the same persistence
    /// (stopping it cleanly first if it is running). Waits until it accepts
    /// connections; panics with its log otherwise.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(err) = self.launch() {
            panic!("mosquitto did not restart: {err}");
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if std::thread::panicking() && self.process.is_some() {
            eprintln!(
                "---- mosquitto log ({}) ----\n{}",
                self.log_path().display(),
                tail(&self.log_path(), 30)
            );
        }
        self.stop();
    }
}
