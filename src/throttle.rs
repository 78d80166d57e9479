//! A log throttle: a flood of identical problems (bad records, slow clients) must not become a
//! flood of log lines. Metrics still count every occurrence.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Throttle {
    per_window: u32,
    window: Duration,
    /// Start of the current window and occurrences in it; `None` before the first one.
    state: Mutex<Option<(Instant, u32)>>,
}

/// What the caller should do with one occurrence.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it.
    Log,
    /// Log it, and say how many were suppressed in the previous window.
    LogAfterSuppressing(u32),
    /// Stay quiet.
    Suppress,
}

impl Throttle {
    pub const fn new(per_window: u32, window: Duration) -> Self {
        Self { per_window, window, state: Mutex::new(None) }
    }

    pub fn check(&self) -> Verdict {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Verdict {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *state {
            Some((start, count)) if now.saturating_duration_since(*start) < self.window => {
                *count += 1;
                if *count <= self.per_window { Verdict::Log } else { Verdict::Suppress }
            }
            previous => {
                let suppressed = previous.map_or(0, |(_, count)| count.saturating_sub(self.per_window));
                *previous = Some((now, 1));
                if suppressed > 0 { Verdict::LogAfterSuppressing(suppressed) } else { Verdict::Log }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_few_through_per_window_then_reports_the_rest() {
        let t = Throttle::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.check_at(t0), Verdict::Log);
        assert_eq!(t.check_at(t0), Verdict::Log);
        assert_eq!(t.check_at(t0), Verdict::Suppress);
        assert_eq!(t.check_at(t0 + Duration::from_secs(1)), Verdict::Suppress);
        assert_eq!(t.check_at(t0 + Duration::from_secs(11)), Verdict::LogAfterSuppressing(2));
        assert_eq!(t.check_at(t0 + Duration::from_secs(30)), Verdict::Log);
    }
}
