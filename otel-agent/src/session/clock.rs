//! Converts the probe's timestamps (`bpf_ktime_get_ns`: `CLOCK_MONOTONIC`, time since boot
//! without suspend) into wall-clock time. The offset between the two clocks is sampled
//! again for every batch of sessions, so that NTP steps and slews are followed.

use std::time::{Duration, SystemTime};

/// Maps monotonic nanoseconds to wall-clock time using one sampled offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC` in ns.
    offset_ns: i128,
}

impl WallClock {
    /// Samples both clocks now. The realtime read is bracketed by two monotonic reads and the
    /// tightest of three tries is kept, so the error is a fraction of a microsecond.
    pub fn sample() -> Self {
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..3 {
            let before = read_ns(libc::CLOCK_MONOTONIC);
            let realtime = read_ns(libc::CLOCK_REALTIME);
            let after = read_ns(libc::CLOCK_MONOTONIC);
            let gap = after - before;
            let offset = realtime - (before + gap / 2);
            if best.is_none_or(|(best_gap, _)| gap < best_gap) {
                best = Some((gap, offset));
            }
        }
        let (_, offset_ns) = best.unwrap_or_default();
        Self { offset_ns }
    }

    /// A clock with a fixed offset, for tests.
    pub fn with_offset_ns(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// The wall-clock time of a monotonic timestamp.
    pub fn to_system_time(self, monotonic_ns: u64) -> SystemTime {
        let since_epoch = i128::from(monotonic_ns) + self.offset_ns;
        let since_epoch = u64::try_from(since_epoch.max(0)).unwrap_or(u64::MAX);
        SystemTime::UNIX_EPOCH + Duration::from_nanos(since_epoch)
    }
}

/// Reads `clock` in ns. `CLOCK_MONOTONIC` and `CLOCK_REALTIME` always exist on Linux, so the
/// call cannot fail with a valid pointer.
pub fn read_ns(clock: libc::clockid_t) -> i128 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec.
    unsafe { libc::clock_gettime(clock, &raw mut time) };
    i128::from(time.tv_sec) * 1_000_000_000 + i128::from(time.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_offset_with_nanosecond_precision() {
        let clock = WallClock::with_offset_ns(1_700_000_000_000_000_000);
        assert_eq!(
            clock.to_system_time(123_456_789),
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789)
        );
    }

    #[test]
    fn a_sampled_clock_maps_monotonic_now_to_system_now() {
        let clock = WallClock::sample();
        let monotonic_now = u64::try_from(read_ns(libc::CLOCK_MONOTONIC)).unwrap();
        let converted = clock.to_system_time(monotonic_now);
        let error = SystemTime::now()
            .duration_since(converted)
            .unwrap_or_else(|e| e.duration());
        assert!(
            error < Duration::from_millis(5),
            "conversion is off by {error:?}"
        );
    }

    #[test]
    fn times_before_the_epoch_clamp_to_the_epoch() {
        let clock = WallClock::with_offset_ns(-10);
        assert_eq!(clock.to_system_time(5), SystemTime::UNIX_EPOCH);
    }
}
