//! The work budget of one push: how much a single request may make the server do.
//!
//! One push holds the writer (SQLite's one write transaction; on PostgreSQL a pool
//! connection and its records' locks) for as long as its ops take, and its answer sits
//! in memory until sent. Without a bound, 1,000 small ops that each conflict with a
//! 1 MiB record made a 1 GB answer, and a few CRDT merges into a huge counter held
//! every other team's push for 40 s. So a push stops processing once it has used its
//! time, its record bytes or its answer bytes, and answers the rest `deferred`: no
//! effect, nothing stored, sent again by the client. The first op is always processed,
//! so every push makes progress however small the budget.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::logic::RecordKey;

/// The bounds of one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushLimits {
    /// Time the push may spend on its ops; checked before each op.
    pub time: Duration,
    /// Bytes of record JSON the push may read and write.
    pub work_bytes: usize,
    /// Bytes of answer (the records that conflicts carry, mostly).
    pub answer_bytes: usize,
    /// Ops on one record in one push. A real device sends one at a time per record.
    pub ops_per_record: usize,
}

impl PushLimits {
    /// The defaults: half a second, 16 MiB of records, an 8 MiB answer (the protocol's
    /// body limit), 16 ops per record.
    pub const DEFAULT: PushLimits = PushLimits {
        time: Duration::from_millis(500),
        work_bytes: 16 * 1024 * 1024,
        answer_bytes: outpost_core::protocol::MAX_BODY_BYTES,
        ops_per_record: 16,
    };
}

impl Default for PushLimits {
    fn default() -> Self {
        PushLimits::DEFAULT
    }
}

/// What one push has used so far.
#[derive(Debug)]
pub(crate) struct Budget {
    limits: PushLimits,
    started: Instant,
    /// When the op in progress started, and the longest any op took so far: an op
    /// starts only if one as slow would still end within the time.
    op_started: Instant,
    slowest: Duration,
    work: usize,
    answer: usize,
    /// Ops answered (not deferred) so far.
    answered: usize,
    per_record: HashMap<RecordKey, usize>,
}

impl Budget {
    pub fn new(limits: PushLimits) -> Budget {
        let now = Instant::now();
        Budget {
            limits,
            started: now,
            op_started: now,
            slowest: Duration::ZERO,
            work: 0,
            answer: 0,
            answered: 0,
            per_record: HashMap::new(),
        }
    }

    /// May the next op start? Always the first; a later one if an op as slow as the
    /// slowest so far would still end within the time, and record bytes are left.
    pub fn may_start(&mut self) -> bool {
        let now = Instant::now();
        self.slowest = self.slowest.max(now - self.op_started);
        self.op_started = now;
        self.answered == 0
            || (now + self.slowest < self.started + self.limits.time
                && self.work < self.limits.work_bytes)
    }

    /// Counts one more op on `key`; false when the record has had its share.
    pub fn admit(&mut self, key: &RecordKey) -> bool {
        let n = self.per_record.entry(key.clone()).or_insert(0);
        if *n >= self.limits.ops_per_record && self.answered > 0 {
            return false;
        }
        *n += 1;
        true
    }

    /// Record bytes read or written.
    pub fn charge_work(&mut self, bytes: usize) {
        self.work = self.work.saturating_add(bytes);
    }

    /// Takes `bytes` more of answer for an op that is answered; false (and nothing
    /// taken) when they would not fit, unless it is the first answer.
    pub fn answer(&mut self, bytes: usize) -> bool {
        let total = self.answer.saturating_add(bytes);
        if self.answered > 0 && total > self.limits.answer_bytes {
            return false;
        }
        self.answer = total;
        self.answered += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> RecordKey {
        RecordKey {
            collection: "c".into(),
            scope: "t:x".into(),
            record_id: id.into(),
        }
    }

    fn limits() -> PushLimits {
        PushLimits {
            time: Duration::from_secs(3600),
            work_bytes: 100,
            answer_bytes: 50,
            ops_per_record: 2,
        }
    }

    #[test]
    fn the_first_op_always_goes_through() {
        let mut b = Budget::new(PushLimits {
            time: Duration::ZERO,
            work_bytes: 0,
            answer_bytes: 0,
            ops_per_record: 0,
        });
        assert!(b.may_start());
        assert!(b.admit(&key("a")));
        b.charge_work(1_000_000);
        assert!(b.answer(1_000_000));
        assert!(!b.may_start(), "no time left after the first");
        assert!(!b.answer(1));
    }

    #[test]
    fn work_answer_and_per_record_shares_run_out() {
        let mut b = Budget::new(limits());
        assert!(b.admit(&key("a")) && b.answer(30));
        assert!(b.admit(&key("a")) && b.answer(10));
        assert!(!b.admit(&key("a")), "two ops per record");
        assert!(b.admit(&key("b")));
        assert!(!b.answer(11), "over 50 bytes of answer");
        assert!(b.answer(10));
        assert!(b.may_start());
        b.charge_work(100);
        assert!(!b.may_start(), "100 bytes of work used");
    }

    #[test]
    fn time_runs_out() {
        let mut b = Budget::new(PushLimits {
            time: Duration::from_millis(20),
            ..limits()
        });
        assert!(b.answer(1));
        assert!(b.may_start());
        std::thread::sleep(Duration::from_millis(30));
        assert!(!b.may_start());
    }

    #[test]
    fn an_op_does_not_start_if_one_as_slow_would_overrun() {
        let mut b = Budget::new(PushLimits {
            time: Duration::from_millis(300),
            ..limits()
        });
        assert!(b.may_start());
        assert!(b.answer(1));
        // The first op took 200 ms: another as slow would end past 300 ms.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!b.may_start());
    }
}
