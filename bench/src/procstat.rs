//! CPU time and peak memory of processes, from /proc, sampled in the
//! background (so a process that exits on its own still has figures: those
//! of its last sample, at most [`PERIOD`] old).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the sampler reads /proc.
pub const PERIOD: Duration = Duration::from_millis(50);

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// User + system CPU time, seconds.
    pub cpu_s: f64,
    /// Peak resident set size (`VmHWM`), KiB; 0 once the process is a zombie.
    pub peak_rss_kib: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`; `None` if the process is
/// gone.
pub fn read(pid: u32) -> Option<Reading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses):
    // state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    // cmajflt utime stime ...
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let peak_rss_kib = sluice_tests::peak_rss_kib(pid).unwrap_or(0);
    Some(Reading {
        cpu_s: ticks as f64 / clock_ticks_per_second(),
        peak_rss_kib,
    })
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Samples a set of processes every [`PERIOD`] until stopped.
pub struct Sampler {
    first: HashMap<u32, Reading>,
    last: Arc<Mutex<HashMap<u32, Reading>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Takes a first reading of every pid now, then samples in the background.
    pub fn start(pids: &[u32]) -> Sampler {
        let first: HashMap<u32, Reading> = pids
            .iter()
            .filter_map(|&pid| read(pid).map(|r| (pid, r)))
            .collect();
        let last = Arc::new(Mutex::new(first.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (last, stop, pids) = (Arc::clone(&last), Arc::clone(&stop), pids.to_vec());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sample(&pids, &last);
                    std::thread::sleep(PERIOD);
                }
            })
        };
        Sampler {
            first,
            last,
            stop,
            thread: Some(thread),
        }
    }

    /// Takes a last reading (of the processes still there) and stops.
    /// Returns, per pid, the CPU time used since [`Sampler::start`] and the
    /// peak RSS.
    pub fn finish(mut self) -> HashMap<u32, Reading> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let pids: Vec<u32> = self.first.keys().copied().collect();
        sample(&pids, &self.last);
        let last = self.last.lock().map(|l| l.clone()).unwrap_or_default();
        last.into_iter()
            .map(|(pid, end)| {
                let start = self.first.get(&pid).copied().unwrap_or_default();
                (
                    pid,
                    Reading {
                        cpu_s: (end.cpu_s - start.cpu_s).max(0.0),
                        peak_rss_kib: end.peak_rss_kib,
                    },
                )
            })
            .collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sample(pids: &[u32], last: &Mutex<HashMap<u32, Reading>>) {
    for &pid in pids {
        if let Some(now) = read(pid) {
            if let Ok(mut last) = last.lock() {
                let entry = last.entry(pid).or_default();
                entry.cpu_s = entry.cpu_s.max(now.cpu_s);
                // A zombie has no memory figures: keep the last real one.
                entry.peak_rss_kib = entry.peak_rss_kib.max(now.peak_rss_kib);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let reading = read(std::process::id()).expect("own /proc entry");
        assert!(reading.peak_rss_kib > 0);
        assert!(reading.cpu_s >= 0.0);
        let sampler = Sampler::start(&[std::process::id()]);
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let out = sampler.finish();
        assert!(out.contains_key(&std::process::id()));
    }
}
