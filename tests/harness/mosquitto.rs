//! A real mosquitto broker on a free loopback port, optionally with a second,
//! secured listener (TLS with a throwaway CA, or a password file) for the
//! client under test.

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

/// The `mosquitto_passwd` tool: next to [`mosquitto_bin`], else on PATH,
/// else `/usr/bin/mosquitto_passwd` (Debian's `mosquitto` package ships both).
pub fn mosquitto_passwd_bin() -> PathBuf {
    let beside = mosquitto_bin().with_file_name("mosquitto_passwd");
    if beside.is_file() {
        return beside;
    }
    find_on_path("mosquitto_passwd").unwrap_or_else(|| PathBuf::from("/usr/bin/mosquitto_passwd"))
}

/// How [`Mosquitto::start_tls`] secures its TLS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlsOptions {
    /// Mutual TLS: the broker refuses clients that do not present a
    /// certificate signed by the test CA (`require_certificate true`).
    pub require_certificate: bool,
}

/// The throwaway PKI of a TLS broker: PEM files in the broker's temp dir,
/// made with the `openssl` CLI when it starts (P-256 keys, valid two days).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate that signed the server and client certificates:
    /// what a client must trust (`tls.ca_file`).
    pub ca_file: PathBuf,
    /// The broker's certificate, for `IP:127.0.0.1` and `DNS:localhost`.
    pub server_cert_file: PathBuf,
    /// A client certificate signed by the CA (`CN=sluice-test-client`).
    pub client_cert_file: PathBuf,
    /// The client certificate's private key (PKCS#8).
    pub client_key_file: PathBuf,
}

/// What guards the secured listener.
#[derive(Debug, Clone)]
enum Guard {
    Tls(TlsOptions),
    Password { username: String, password: String },
}

/// The second listener of a secured broker.
#[derive(Debug)]
struct SecureListener {
    port: u16,
    guard: Guard,
    tls_files: Option<TlsFiles>,
}

/// A mosquitto broker listening on `127.0.0.1:<port>`, anonymous access,
/// persistence in its own temporary folder, unlimited queues. Stopped on drop.
///
/// A broker from [`Mosquitto::start_tls`] or [`Mosquitto::start_with_password`]
/// also has a secured listener at [`Mosquitto::secure_url`] for the client
/// under test; [`Mosquitto::url`] stays the plain, anonymous one, for the
/// harness's own publishers and subscribers (which speak neither TLS nor
/// passwords). Both listeners share one broker, so a message published at
/// one reaches subscribers at the other.
#[derive(Debug)]
pub struct Mosquitto {
    process: Option<ChildProcess>,
    port: u16,
    secure: Option<SecureListener>,
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
        Mosquitto::start_secured(extra, None)
    }

    /// Like [`Mosquitto::start`], plus a TLS listener at
    /// [`Mosquitto::secure_url`] (`mqtts://127.0.0.1:<port>`) whose server
    /// certificate is signed by a CA made for this broker alone; see
    /// [`Mosquitto::tls_files`]. Needs the `openssl` CLI.
    pub fn start_tls(options: TlsOptions) -> Mosquitto {
        Mosquitto::start_secured("", Some(Guard::Tls(options)))
    }

    /// Like [`Mosquitto::start`], plus a listener at
    /// [`Mosquitto::secure_url`] that admits only `username` with
    /// `password` (`allow_anonymous false`, a `mosquitto_passwd` file).
    pub fn start_with_password(username: &str, password: &str) -> Mosquitto {
        Mosquitto::start_secured(
            "",
            Some(Guard::Password {
                username: username.to_owned(),
                password: password.to_owned(),
            }),
        )
    }

    fn start_secured(extra: &str, guard: Option<Guard>) -> Mosquitto {
        let mut errors = Vec::new();
        // A port can be taken between free_port() and mosquitto's bind: try
        // a few fresh ports before giving up.
        for _attempt in 0..3 {
            let port = free_port();
            let secure = guard.clone().map(|guard| SecureListener {
                port: loop {
                    let other = free_port();
                    if other != port {
                        break other;
                    }
                },
                guard,
                tls_files: None,
            });
            let mut broker = Mosquitto {
                process: None,
                port,
                secure,
                extra_config: extra.to_owned(),
                dir: temp_dir("sluice-mosquitto-"),
            };
            match broker.prepare_secure().and_then(|()| broker.launch()) {
                Ok(()) => return broker,
                Err(err) => errors.push(err),
            }
        }
        panic!("mosquitto did not start:\n{}", errors.join("\n"));
    }

    /// Writes the secured listener's files (certificates or password file)
    /// into the broker's folder.
    fn prepare_secure(&mut self) -> Result<(), String> {
        let dir = self.dir.path().to_path_buf();
        let Some(secure) = self.secure.as_mut() else {
            return Ok(());
        };
        match &secure.guard {
            Guard::Tls(_) => secure.tls_files = Some(make_pki(&dir.join("tls"))?),
            Guard::Password { username, password } => {
                let file = dir.join("passwords");
                run(
                    Command::new(mosquitto_passwd_bin())
                        .args(["-c", "-b"])
                        .arg(&file)
                        .args([username, password]),
                    "mosquitto_passwd (Debian package `mosquitto`)",
                )?;
            }
        }
        Ok(())
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
        let secure_port = self.secure.as_ref().map(|secure| secure.port);
        let ready = wait_for(deadline(START_TIMEOUT), || {
            if port_is_open(port) && secure_port.is_none_or(port_is_open) {
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
        // With a password on the secured listener, `allow_anonymous` and
        // `password_file` must apply per listener, so that the plain one
        // stays open to the harness's clients.
        let per_listener = match self.secure {
            Some(SecureListener {
                guard: Guard::Password { .. },
                ..
            }) => "per_listener_settings true\n",
            _ => "",
        };
        let mut text = format!(
            "# written by the sluice test harness\n\
             {per_listener}\
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
        // Last, so that listener options in `extra` still apply to the
        // plain listener.
        if let Some(secure) = &self.secure {
            text += &format!(
                "\n# the secured listener\nlistener {} 127.0.0.1\n",
                secure.port
            );
            match &secure.guard {
                Guard::Tls(options) => {
                    let files = secure.tls_files.as_ref().expect("TLS files are made first");
                    let key = files.server_cert_file.with_extension("key");
                    text += &format!(
                        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                        files.ca_file.display(),
                        files.server_cert_file.display(),
                        key.display(),
                        options.require_certificate,
                    );
                }
                Guard::Password { .. } => {
                    text += &format!(
                        "allow_anonymous false\npassword_file {}\n",
                        dir.join("passwords").display()
                    );
                }
            }
        }
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

    /// The secured listener, for the client under test:
    /// `mqtts://127.0.0.1:<port>` ([`Mosquitto::start_tls`]) or
    /// `mqtt://127.0.0.1:<port>` ([`Mosquitto::start_with_password`]).
    /// Panics for a broker without one.
    pub fn secure_url(&self) -> String {
        let scheme = match self.secure {
            Some(SecureListener {
                guard: Guard::Tls(_),
                ..
            }) => "mqtts",
            _ => "mqtt",
        };
        format!("{scheme}://127.0.0.1:{}", self.secure_port())
    }

    /// The TCP port of the secured listener (panics for a broker without
    /// one).
    pub fn secure_port(&self) -> u16 {
        self.secure
            .as_ref()
            .expect("this broker has no secured listener: start it with start_tls or start_with_password")
            .port
    }

    /// The CA, server and client certificate files of a broker from
    /// [`Mosquitto::start_tls`]. Panics for any other broker.
    pub fn tls_files(&self) -> &TlsFiles {
        self.secure
            .as_ref()
            .and_then(|secure| secure.tls_files.as_ref())
            .expect("this broker has no TLS listener: start it with start_tls")
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

/// Runs a set-up tool to completion; `Err` with its output if it fails.
fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|err| format!("cannot run {what} ({:?}): {err}", command.get_program()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}): {:?}\n{}{}",
        output.status,
        command,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// The extensions of the three certificates; our own file, so the system's
/// `openssl.cnf` cannot add or clash with any.
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// Makes a CA and a server and a client certificate signed by it in `dir`
/// with the `openssl` CLI: `ca.pem`, `server.pem` + `server.key`,
/// `client.pem` + `client.key`.
fn make_pki(dir: &Path) -> Result<TlsFiles, String> {
    std::fs::create_dir_all(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    std::fs::write(dir.join("openssl.cnf"), OPENSSL_CNF)
        .map_err(|err| format!("write openssl.cnf: {err}"))?;
    let openssl = find_on_path("openssl").unwrap_or_else(|| PathBuf::from("openssl"));
    // One openssl command line, run in `dir` (no argument has a space).
    let step = |args: &str| {
        run(
            Command::new(&openssl)
                .args(args.split_whitespace())
                .current_dir(dir)
                .env_remove("OPENSSL_CONF"),
            "openssl (Debian package `openssl`; `bash scripts/setup.sh` installs it)",
        )
    };
    let new_key = |file: &str| {
        step(&format!(
            "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {file}"
        ))
    };
    new_key("ca.key")?;
    step(
        "req -x509 -new -key ca.key -out ca.pem -days 2 -subj /CN=sluice-test-ca \
         -config openssl.cnf -extensions ca",
    )?;
    for (name, common_name, serial) in [
        ("server", "localhost", 2),
        ("client", "sluice-test-client", 3),
    ] {
        new_key(&format!("{name}.key"))?;
        step(&format!(
            "req -new -key {name}.key -out {name}.csr -subj /CN={common_name} -config openssl.cnf"
        ))?;
        step(&format!(
            "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -set_serial {serial} -days 2 \
             -out {name}.pem -extfile openssl.cnf -extensions {name}"
        ))?;
    }
    Ok(TlsFiles {
        ca_file: dir.join("ca.pem"),
        server_cert_file: dir.join("server.pem"),
        client_cert_file: dir.join("client.pem"),
        client_key_file: dir.join("client.key"),
    })
}
