//! Pacing on a bad link: how big the next request may be, and whether a request that
//! failed on the link is tried again within the same sync.
//!
//! A 2G link at a village's edge carries a few kilobytes and then drops the
//! connection. A fixed page size either never gets through there or wastes round trips
//! everywhere else, so sizes adapt ([`Size`]): halved when a request fails on the link,
//! doubled when one succeeds, up to a ceiling that the last failure lowered and that
//! rises again only after a run of successes, so a size that just failed is not tried
//! again at once. Only a request that used its whole size counts towards growing: an
//! empty page says nothing about the link. And a sync that has seen the link carry answers does not give up at
//! its first failure ([`Retries`]): it tries again, smaller, until the link fails several
//! times in a row or the deadline ends it.

use std::time::Duration;

use super::SyncConfig;
use crate::transport::TransportError;

/// The smallest pull page asked for, in bytes of change JSON as the server measures it
/// (a page always holds at least one change, however small its budget).
const MIN_PULL_BYTES: usize = 4 * 1024;
/// The largest: the server's own default budget.
const MAX_PULL_BYTES: usize = 4 * 1024 * 1024;

/// The sizes the engine adapts, kept from one sync to the next (the link is the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizes {
    /// Byte budget of the next pull page.
    pub pull_bytes: Size,
    /// Ops of the next push.
    pub push_ops: Size,
}

impl Sizes {
    pub fn new(config: &SyncConfig) -> Sizes {
        Sizes {
            pull_bytes: Size::new(config.pull_page_bytes, MIN_PULL_BYTES, MAX_PULL_BYTES),
            push_ops: Size::new(config.batch.max_ops, 1, config.batch.max_ops),
        }
    }
}

/// Successes in a row at the ceiling before it is raised.
const RAISE_AFTER: u32 = 4;

/// An adaptive request size (bytes of a pull page, ops of a push).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size {
    now: usize,
    min: usize,
    max: usize,
    ceiling: usize,
    wins: u32,
    /// A request of the current size has got through.
    worked: bool,
    /// The last request failed.
    failed_last: bool,
}

impl Size {
    pub fn new(start: usize, min: usize, max: usize) -> Size {
        let min = min.max(1);
        let max = max.max(min);
        Size {
            now: start.clamp(min, max),
            min,
            max,
            ceiling: max,
            wins: 0,
            worked: false,
            failed_last: false,
        }
    }

    pub fn get(&self) -> usize {
        self.now
    }

    /// A request got its answer; `filled` when it used its whole size (a page cut at
    /// its budget, a full batch). One that did not says nothing about a larger one.
    pub fn succeeded(&mut self, filled: bool) {
        self.failed_last = false;
        if !filled {
            return;
        }
        self.worked = true;
        self.wins = self.wins.saturating_add(1);
        if self.now >= self.ceiling && self.wins >= RAISE_AFTER {
            self.ceiling = self.ceiling.saturating_mul(2).min(self.max);
            self.wins = 0;
        }
        let grown = self.now.saturating_mul(2).min(self.ceiling);
        if grown != self.now {
            self.now = grown;
            self.worked = false;
        }
    }

    /// A request of this size failed on the link. Once, at a size that has got
    /// through, it is more likely the connection than the size (links that drop every
    /// connection after so many bytes cut whatever request crosses that mark), so the
    /// size stays; a size not yet proven, or a second failure in a row, halves it.
    pub fn failed(&mut self) {
        self.wins = 0;
        let blame_connection = self.worked && !self.failed_last;
        self.failed_last = true;
        if blame_connection {
            return;
        }
        self.now = (self.now / 2).max(self.min);
        self.ceiling = self.now;
        self.worked = false;
    }
}

/// Link failures in a row after which a sync stops and backs off.
pub(crate) const MAX_FAILURES_IN_A_ROW: u32 = 4;

/// Whether a request that failed is tried again within this sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Retries {
    /// The link has carried something in this sync: an answer, or part of one.
    carried: bool,
    failures_in_a_row: u32,
}

impl Retries {
    pub fn succeeded(&mut self) {
        self.carried = true;
        self.failures_in_a_row = 0;
    }

    /// After a request failed with `e`: the pause before trying again within this
    /// sync, or `None` to stop. Only failures of the link itself are retried, and only
    /// once the link has shown in this sync that it carries something: an answer, or
    /// part of one. A server that answers with an error, or a link that
    /// never answered, ends the sync as before (backoff, or the server's Retry-After).
    /// `backoff` gives the pause after `n` failures in a row.
    pub fn after_failure(
        &mut self,
        e: &TransportError,
        backoff: impl Fn(u32) -> Duration,
    ) -> Option<Duration> {
        self.carried |= matches!(e, TransportError::Cut(_));
        if !e.is_link_failure() || !self.carried {
            return None;
        }
        self.failures_in_a_row += 1;
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW {
            return None;
        }
        // The first failure after an answer is a cut or a blip: again at once.
        Some(match self.failures_in_a_row {
            1 => Duration::ZERO,
            n => backoff(n - 1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_halve_on_failure_and_grow_back_past_the_last_failure_only_slowly() {
        let mut s = Size::new(64, 4, 1024);
        s.succeeded(false);
        assert_eq!(s.get(), 64, "a request that was not full says nothing");
        s.succeeded(true);
        s.succeeded(true);
        assert_eq!(s.get(), 256);
        // 256 has not got through yet: its failure halves it.
        s.failed();
        assert_eq!(s.get(), 128);
        // Not past the size that works until it has worked a few times.
        for _ in 0..RAISE_AFTER - 1 {
            s.succeeded(true);
            assert_eq!(s.get(), 128);
        }
        s.succeeded(true);
        assert_eq!(s.get(), 256);
        s.succeeded(true);
        // A size that has got through fails once: the connection is blamed first.
        s.failed();
        assert_eq!(s.get(), 256);
        s.failed();
        assert_eq!(s.get(), 128, "twice in a row is the size");
        for _ in 0..20 {
            s.failed();
        }
        assert_eq!(s.get(), 4, "never below the floor");
        for _ in 0..100 {
            s.succeeded(true);
        }
        assert_eq!(s.get(), 1024, "never above the top");
    }

    /// A link that closes every connection past `cut` units: the sizes settle under it
    /// and most requests get through.
    #[test]
    fn on_a_link_that_cuts_long_transfers_most_requests_get_through() {
        let mut s = Size::new(256, 1, 4096);
        let cut = 100;
        let (mut ok, mut moved) = (0, 0);
        for _ in 0..200 {
            if s.get() <= cut {
                ok += 1;
                moved += s.get();
                s.succeeded(true);
            } else {
                s.failed();
            }
        }
        assert!(ok > 150, "{ok} of 200 got through");
        assert!(moved > 150 * 40, "moved {moved}");
    }

    /// A link that closes every connection once `allowance` units went down it, in
    /// requests of a size plus a fixed overhead: the sizes settle where most of each
    /// connection's allowance carries answers.
    #[test]
    fn on_a_link_that_drops_each_connection_after_some_bytes_little_is_wasted() {
        let (allowance, overhead, requests) = (6000, 300, 400);
        let mut s = Size::new(16_000, 500, 64_000);
        let (mut used, mut useful, mut carried) = (0, 0, 0);
        for _ in 0..requests {
            let cost = s.get() + overhead;
            if used + cost <= allowance {
                used += cost;
                carried += cost;
                useful += s.get();
                s.succeeded(true);
            } else {
                carried += allowance - used;
                used = 0;
                s.failed();
            }
        }
        let share = useful as f64 / carried as f64;
        assert!(share > 0.6, "{share:.2} of the bytes carried were answers");
        // Not by shrinking to tiny requests, each paying its round trip and overhead.
        let per_request = useful / requests;
        assert!(per_request > allowance / 4, "{per_request} per request");
    }

    #[test]
    fn only_a_link_that_has_carried_something_is_tried_again() {
        let backoff = |n: u32| Duration::from_secs(u64::from(n));
        let network = TransportError::Network("reset".into());
        let cut = TransportError::Cut("closed".into());
        // The first request of a sync fails outright: stop, as a dead link would.
        assert_eq!(Retries::default().after_failure(&network, backoff), None);
        // Cut part way: the link works; again at once, then with backoff.
        let mut r = Retries::default();
        assert_eq!(r.after_failure(&cut, backoff), Some(Duration::ZERO));
        assert_eq!(r.after_failure(&cut, backoff), Some(Duration::from_secs(1)));
        assert_eq!(
            r.after_failure(&network, backoff),
            Some(Duration::from_secs(2))
        );
        assert_eq!(r.after_failure(&cut, backoff), None, "four in a row");
        // After an answer, any failure of the link is tried again; a server's is not.
        let mut r = Retries::default();
        r.succeeded();
        assert_eq!(
            r.after_failure(&TransportError::Timeout, backoff),
            Some(Duration::ZERO)
        );
        r.succeeded();
        assert_eq!(r.after_failure(&network, backoff), Some(Duration::ZERO));
        let server = TransportError::Http {
            status: 503,
            code: String::new(),
            message: String::new(),
        };
        assert_eq!(r.after_failure(&server, backoff), None);
        assert_eq!(
            r.after_failure(&TransportError::RateLimited { retry_after: None }, backoff),
            None
        );
    }
}
