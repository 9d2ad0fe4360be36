//! Hybrid logical clocks: an order for edits that survives bad device clocks.
//!
//! Field devices have wrong clocks, and their clocks jump. Last-write-wins must never
//! compare raw wall-clock times, so every edit is stamped with an HLC: the wall time in
//! milliseconds, a counter that breaks ties and carries the clock forward when the wall
//! clock stalls or goes back, and the replica id that makes every stamp unique. The
//! textual form is zero-padded so that string order is clock order.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest millisecond value that fits the 13-digit field.
pub const MAX_MILLIS: u64 = 9_999_999_999_999;
/// Largest counter that fits the 5-digit field.
pub const MAX_COUNTER: u32 = 99_999;
/// A remote stamp further ahead of our wall clock than this is not trusted for
/// `observe`: one device with a clock set to 2099 must not drag every replica along.
pub const MAX_DRIFT_MS: u64 = 24 * 60 * 60 * 1000;

/// One HLC stamp. Ordering is by time, then counter, then replica id, which is
/// also the order of the textual form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hlc {
    pub millis: u64,
    pub counter: u32,
    pub replica: String,
}

impl Hlc {
    pub fn new(millis: u64, counter: u32, replica: impl Into<String>) -> Hlc {
        Hlc {
            millis,
            counter,
            replica: replica.into(),
        }
    }
}

impl Ord for Hlc {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.millis, self.counter, self.replica.as_str()).cmp(&(
            other.millis,
            other.counter,
            other.replica.as_str(),
        ))
    }
}

impl PartialOrd for Hlc {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:013}-{:05}-{}",
            self.millis, self.counter, self.replica
        )
    }
}

/// A string that is not a valid HLC stamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid HLC stamp {0:?}: expected <13 digits>-<5 digits>-<replica id>")]
pub struct HlcParseError(pub String);

impl FromStr for Hlc {
    type Err = HlcParseError;

    fn from_str(s: &str) -> Result<Hlc, HlcParseError> {
        let err = || HlcParseError(s.chars().take(80).collect());
        let mut parts = s.splitn(3, '-');
        let (Some(ms), Some(counter), Some(replica)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        let digits = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms, 13) || !digits(counter, 5) || replica.is_empty() || replica.len() > 128 {
            return Err(err());
        }
        if replica.chars().any(char::is_control) {
            return Err(err());
        }
        Ok(Hlc {
            millis: ms.parse().map_err(|_| err())?,
            counter: counter.parse().map_err(|_| err())?,
            replica: replica.to_owned(),
        })
    }
}

/// Where wall-clock time comes from. Tests inject a fake one.
pub trait WallClock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A settable clock for tests and simulations.
#[derive(Debug, Default)]
pub struct FakeClock(std::sync::atomic::AtomicU64);

impl FakeClock {
    pub fn new(ms: u64) -> Arc<FakeClock> {
        Arc::new(FakeClock(ms.into()))
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl WallClock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The clock of one replica: issues stamps that never go backwards.
#[derive(Debug, Clone)]
pub struct HybridClock {
    last: Hlc,
}

impl HybridClock {
    /// Starts from the last stamp this replica issued or saw (persisted by the store).
    pub fn new(replica: impl Into<String>, last_millis: u64, last_counter: u32) -> HybridClock {
        HybridClock {
            last: Hlc::new(last_millis, last_counter, replica),
        }
    }

    pub fn replica(&self) -> &str {
        &self.last.replica
    }

    /// The highest stamp issued or observed so far (with this replica's id).
    pub fn last(&self) -> &Hlc {
        &self.last
    }

    /// A new stamp, strictly greater than every stamp issued or observed before.
    pub fn tick(&mut self, wall_ms: u64) -> Hlc {
        let wall = wall_ms.min(MAX_MILLIS);
        if wall > self.last.millis {
            self.last.millis = wall;
            self.last.counter = 0;
        } else {
            self.bump();
        }
        self.last.clone()
    }

    /// Takes in a stamp from another replica, so later local stamps sort after it.
    /// Stamps implausibly far ahead of the wall clock are ignored and reported.
    pub fn observe(&mut self, remote: &Hlc, wall_ms: u64) -> bool {
        if remote.millis > wall_ms.saturating_add(MAX_DRIFT_MS) {
            return false;
        }
        match (remote.millis, remote.counter).cmp(&(self.last.millis, self.last.counter)) {
            Ordering::Greater => {
                self.last.millis = remote.millis;
                self.last.counter = remote.counter;
            }
            Ordering::Equal | Ordering::Less => {}
        }
        true
    }

    fn bump(&mut self) {
        if self.last.counter < MAX_COUNTER {
            self.last.counter += 1;
        } else {
            // Counter exhausted within one millisecond: borrow from the future.
            self.last.millis = (self.last.millis + 1).min(MAX_MILLIS);
            self.last.counter = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn format_and_parse() {
        let h = Hlc::new(1_700_000_000_000, 7, "dev-a");
        assert_eq!(h.to_string(), "1700000000000-00007-dev-a");
        assert_eq!("1700000000000-00007-dev-a".parse::<Hlc>().unwrap(), h);
        for bad in [
            "",
            "1-2-3",
            "1700000000000-7-a",
            "1700000000000-00007-",
            "x",
        ] {
            assert!(bad.parse::<Hlc>().is_err(), "{bad}");
        }
    }

    #[test]
    fn survives_clock_going_backwards() {
        let mut c = HybridClock::new("a", 0, 0);
        let t1 = c.tick(1000);
        let t2 = c.tick(500);
        let t3 = c.tick(500);
        assert!(t1 < t2 && t2 < t3);
        assert_eq!(t3.millis, 1000);
    }

    #[test]
    fn counter_overflow_carries_into_millis() {
        let mut c = HybridClock::new("a", 10, MAX_COUNTER);
        let t = c.tick(5);
        assert_eq!((t.millis, t.counter), (11, 0));
    }

    #[test]
    fn observe_moves_forward_but_ignores_wild_clocks() {
        let mut c = HybridClock::new("a", 1000, 0);
        assert!(c.observe(&Hlc::new(2000, 3, "b"), 1000));
        assert!(c.tick(1000) > Hlc::new(2000, 3, "b"));
        assert!(!c.observe(&Hlc::new(1000 + MAX_DRIFT_MS * 2, 0, "b"), 1000));
    }

    proptest! {
        #[test]
        fn monotonic_under_any_wall_clock(
            steps in proptest::collection::vec((0u64..5_000, any::<bool>(), 0u64..5_000, 0u32..10), 1..200)
        ) {
            let mut c = HybridClock::new("a", 0, 0);
            let mut prev: Option<Hlc> = None;
            let mut seen_max: Option<Hlc> = None;
            for (wall, observe, rms, rc) in steps {
                if observe {
                    let r = Hlc::new(rms, rc, "b");
                    c.observe(&r, wall);
                    seen_max = seen_max.max(Some(r));
                } else {
                    let t = c.tick(wall);
                    if let Some(p) = &prev { prop_assert!(&t > p); }
                    if let Some(m) = &seen_max {
                        prop_assert!((t.millis, t.counter) > (m.millis, m.counter));
                    }
                    prev = Some(t);
                }
            }
        }

        #[test]
        fn string_order_is_clock_order(
            a in (0u64..=MAX_MILLIS, 0u32..=MAX_COUNTER, "[a-z0-9-]{1,12}"),
            b in (0u64..=MAX_MILLIS, 0u32..=MAX_COUNTER, "[a-z0-9-]{1,12}"),
        ) {
            let ha = Hlc::new(a.0, a.1, a.2);
            let hb = Hlc::new(b.0, b.1, b.2);
            prop_assert_eq!(ha.cmp(&hb), ha.to_string().cmp(&hb.to_string()));
            prop_assert_eq!(ha.to_string().parse::<Hlc>().unwrap(), ha);
        }
    }
}
