//! Child processes that are always stopped: on drop, and so also when a test
//! panics.

use std::fs::File;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::wait::{deadline, wait_for};

/// A free TCP port on 127.0.0.1 (bound once by the OS, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("no free loopback port")
        .port()
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_is_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// True when a process with this pid exists (a zombie counts as gone once
/// it has been waited for).
pub fn pid_is_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The resident set size of process `pid` in KiB (`VmRSS` in
/// `/proc/PID/status`); `None` if the process is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// The peak resident set size of process `pid` in KiB (`VmHWM`); `None` if
/// the process is gone.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// A `kB` line of `/proc/PID/status`, such as `VmRSS:`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// The last `lines` lines of a text file (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A spawned child process whose stdout and stderr go to files. Dropping it
/// sends SIGTERM, waits up to its grace period, then SIGKILLs and reaps it.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    grace: Duration,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Spawns `command` with stdin closed, stdout to `<dir>/<name>.stdout`
    /// and stderr to `<dir>/<name>.stderr` (appended to, so a restarted
    /// process keeps the earlier lines). `grace` is how long a SIGTERM gets
    /// before SIGKILL.
    pub fn spawn(
        name: &str,
        command: Command,
        dir: &Path,
        grace: Duration,
    ) -> io::Result<ChildProcess> {
        let stdout = dir.join(format!("{name}.stdout"));
        let file = File::options().create(true).append(true).open(&stdout)?;
        ChildProcess::spawn_with_stdio(name, command, dir, grace, Stdio::null(), file.into())
    }

    /// Like [`ChildProcess::spawn`], with the given stdin and stdout (e.g.
    /// `Stdio::piped()` to connect two processes with a pipe, see
    /// [`ChildProcess::take_stdout`], or `Stdio::null()`); stderr still
    /// goes to `<dir>/<name>.stderr`.
    pub fn spawn_with_stdio(
        name: &str,
        mut command: Command,
        dir: &Path,
        grace: Duration,
        stdin: Stdio,
        stdout_to: Stdio,
    ) -> io::Result<ChildProcess> {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let open = |path: &Path| File::options().create(true).append(true).open(path);
        command
            .stdin(stdin)
            .stdout(stdout_to)
            .stderr(open(&stderr)?);
        let child = command.spawn().map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot start {name} ({:?}): {err}", command.get_program()),
            )
        })?;
        Ok(ChildProcess {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            grace,
            status: None,
        })
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The read end of the child's stdout, once, when it was spawned with
    /// `Stdio::piped()` as stdout ([`ChildProcess::spawn_with_stdio`]).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The file that receives the child's stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// The file that receives the child's stdout (when spawned with
    /// [`ChildProcess::spawn`]).
    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// `Some(status)` once the child has exited (reaping it), else `None`.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) unless the child already exited.
    pub fn signal(&mut self, signal: i32) {
        if self.exit_status().is_none() {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is
            // our own child and has not been reaped (exit_status is None).
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, signal);
            }
        }
    }

    /// SIGKILL now (no clean-up in the child, like a crash), and reap.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait()
    }

    /// SIGTERM, then SIGKILL if the child is still running after `grace`.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let grace = self.grace;
        if let Some(status) = wait_for(deadline(grace), || self.exit_status()) {
            return status;
        }
        eprintln!(
            "harness: {} (pid {}) still running {grace:?} after SIGTERM: SIGKILL",
            self.name,
            self.pid()
        );
        self.kill()
    }

    /// Blocks until the child exits.
    pub fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let status = self.child.wait().expect("wait for child process");
        self.status = Some(status);
        status
    }

    /// The last `lines` lines of the child's stdout and stderr, labelled.
    pub fn output_tail(&self, lines: usize) -> String {
        format!(
            "---- {name} stdout ({stdout}) ----\n{out}\n---- {name} stderr ({stderr}) ----\n{err}\n----",
            name = self.name,
            stdout = self.stdout.display(),
            stderr = self.stderr.display(),
            out = tail(&self.stdout, lines),
            err = tail(&self.stderr, lines),
        )
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let running = self.exit_status().is_none();
        if running {
            self.stop();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.output_tail(40));
        }
    }
}

/// The first executable file called `name` in a folder of `$PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// A fresh temporary folder named `<prefix>XXXXXX`. With `SLUICE_KEEP_TMP=1`
/// it is kept after the test (for post-mortems of logs and configs).
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|err| panic!("temp dir {prefix}*: {err}"));
    if std::env::var_os("SLUICE_KEEP_TMP").is_some_and(|v| v == "1") {
        dir.disable_cleanup(true);
        eprintln!("harness: keeping {}", dir.path().display());
    }
    dir
}
