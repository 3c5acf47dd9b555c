//! Polling with a deadline: the only way tests wait for a condition.

use std::time::{Duration, Instant};

/// How long [`wait_until`] and [`wait_for`] sleep between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The instant `timeout` from now.
pub fn deadline(timeout: Duration) -> Instant {
    Instant::now() + timeout
}

/// Polls `cond` until it returns true (then returns true) or `deadline`
/// passes (then returns false). `cond` is always called at least once.
pub fn wait_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    wait_for(deadline, || cond().then_some(())).is_some()
}

/// Polls `probe` until it returns `Some` (returned) or `deadline` passes
/// (`None`). `probe` is always called at least once.
pub fn wait_for<T>(deadline: Instant, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}
