//! A clock for the self-fence that keeps counting while the machine is suspended.
//!
//! `std::time::Instant` reads CLOCK_MONOTONIC on Linux, which stops while a VM or host is
//! suspended; the group coordinator's clock does not. A consumer suspended for a minute would find
//! its batch only as old as its awake time and write windows for partitions that moved on long
//! ago. CLOCK_BOOTTIME is CLOCK_MONOTONIC plus the time spent suspended (read through rustix, so
//! this crate keeps `#![forbid(unsafe_code)]`). A SIGSTOP or a container freeze is counted by both.

use std::ops::Add;
use std::time::Duration;

use rustix::time::{ClockId, clock_gettime};

/// Linux: monotonic, counts suspend. Elsewhere (development only) the monotonic clock.
#[cfg(any(target_os = "linux", target_os = "android"))]
const CLOCK: ClockId = ClockId::Boottime;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const CLOCK: ClockId = ClockId::Monotonic;

/// A point in time on CLOCK_BOOTTIME.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BootInstant(Duration);

impl BootInstant {
    /// Now.
    pub fn now() -> BootInstant {
        let t = clock_gettime(CLOCK);
        // The kernel never returns negative or out-of-range fields for these clocks.
        BootInstant(Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        ))
    }

    /// Time since `self` (zero if `self` is in the future).
    pub fn elapsed(self) -> Duration {
        BootInstant::now().0.saturating_sub(self.0)
    }

    /// Time from now until `self` (zero if `self` has passed).
    pub fn remaining(self) -> Duration {
        self.0.saturating_sub(BootInstant::now().0)
    }
}

impl Add<Duration> for BootInstant {
    type Output = BootInstant;

    fn add(self, d: Duration) -> BootInstant {
        BootInstant(self.0 + d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_counts_at_least_what_the_thread_slept() {
        let boot = BootInstant::now();
        std::thread::sleep(Duration::from_millis(20));
        let later = BootInstant::now();
        assert!(later > boot);
        assert!(boot.elapsed() >= Duration::from_millis(20));
        assert!(boot + Duration::from_millis(20) <= later);
    }
}
