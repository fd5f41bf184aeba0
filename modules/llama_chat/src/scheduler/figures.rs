//! What the decode loop reports while it runs: busy slots, chats waiting,
//! and tokens generated per second over the last minute.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

/// What the loop reports while it runs.
pub(super) struct Figures {
    pub busy: AtomicU32,
    pub waiting: AtomicU32,
    /// Chats prepared and not yet handed to the loop (see `OnItsWay`).
    pub on_its_way: Arc<AtomicU32>,
    // parking_lot: one add or one sum, never held across a decode.
    pub throughput: Mutex<Throughput>,
}

impl Figures {
    pub fn new() -> Self {
        Self {
            busy: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            on_its_way: Arc::default(),
            throughput: Mutex::new(Throughput::new(Instant::now())),
        }
    }
}

/// Tokens generated per second over the last minute, in one-second buckets.
#[derive(Debug)]
pub(super) struct Throughput {
    start: Instant,
    buckets: [u32; 60],
    /// The second (since `start`) of the newest bucket.
    newest: u64,
}

impl Throughput {
    fn new(start: Instant) -> Self {
        Self {
            start,
            buckets: [0; 60],
            newest: 0,
        }
    }

    /// Moves the window to `now`'s second, zeroing the seconds it skips.
    fn advance(&mut self, now: Instant) -> u64 {
        let second = now.saturating_duration_since(self.start).as_secs();
        for s in (self.newest + 1..=second).take(60) {
            self.buckets[(s % 60) as usize] = 0;
        }
        self.newest = self.newest.max(second);
        second
    }

    pub fn add(&mut self, now: Instant, tokens: u32) {
        let second = self.advance(now);
        self.buckets[(second % 60) as usize] += tokens;
    }

    /// The mean over the last minute, or over the time since start when
    /// that is shorter.
    pub fn per_second(&mut self, now: Instant) -> f64 {
        self.advance(now);
        let total: u32 = self.buckets.iter().sum();
        let span = now
            .saturating_duration_since(self.start)
            .as_secs_f64()
            .clamp(1.0, 60.0);
        (f64::from(total) / span * 10.0).round() / 10.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn throughput_is_the_mean_of_the_last_minute() {
        let t0 = Instant::now();
        let mut t = Throughput::new(t0);
        t.add(t0, 30);
        t.add(t0 + Duration::from_millis(1500), 30);
        // Two seconds in: 60 tokens over 2 s.
        assert_eq!(t.per_second(t0 + Duration::from_secs(2)), 30.0);
        // A minute later the window holds the 60 tokens over 60 s.
        assert_eq!(t.per_second(t0 + Duration::from_secs(59)), 1.0);
        // Once the window has moved past them, nothing is left.
        assert_eq!(t.per_second(t0 + Duration::from_secs(200)), 0.0);
        t.add(t0 + Duration::from_secs(200), 120);
        assert_eq!(t.per_second(t0 + Duration::from_secs(200)), 2.0);
    }
}
