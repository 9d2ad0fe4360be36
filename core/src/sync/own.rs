//! A device's own changes, so that its pulls do not bring them back.
//!
//! Every op the server applies gets a seq, which its answer carries; the pull that
//! follows would send the same record straight back. The engine keeps those seqs per
//! collection and names them in its next pull (`own`), and the server leaves out each
//! one whose stored record is exactly what this device holds. The list lives in memory
//! only: after a restart the first pull brings the changes back, as before, and a copy
//! of the database restored on another phone has no list to claim them with.

use std::collections::HashMap;

/// Most ranges sent in one pull: the server takes up to 64.
const MAX_RANGES: usize = 64;

/// Seqs as sorted, disjoint inclusive ranges; at most [`MAX_RANGES`], the lowest
/// dropped first (their changes then come back in a pull, which is only bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SeqRanges(Vec<(i64, i64)>);

impl SeqRanges {
    pub fn add(&mut self, seq: i64) {
        if seq <= 0 {
            return;
        }
        let r = &mut self.0;
        let i = r.partition_point(|&(_, hi)| hi < seq);
        if r.get(i).is_some_and(|&(lo, _)| lo <= seq) {
            return;
        }
        let joins_left = i > 0 && r[i - 1].1 + 1 == seq;
        let joins_right = r.get(i).is_some_and(|&(lo, _)| lo == seq + 1);
        match (joins_left, joins_right) {
            (true, true) => {
                r[i - 1].1 = r[i].1;
                r.remove(i);
            }
            (true, false) => r[i - 1].1 = seq,
            (false, true) => r[i].0 = seq,
            (false, false) => r.insert(i, (seq, seq)),
        }
        if r.len() > MAX_RANGES {
            r.remove(0);
        }
    }

    pub fn ranges(&self) -> &[(i64, i64)] {
        &self.0
    }

    /// Forgets the seqs in `done`, which a completed pull has gone past.
    pub fn forget(&mut self, done: &SeqRanges) {
        self.0.retain(|r| !done.0.contains(r));
    }
}

/// The own seqs of each collection.
pub(crate) type OwnSeqs = HashMap<String, SeqRanges>;

#[cfg(test)]
mod tests {
    use super::*;

    fn of(seqs: &[i64]) -> SeqRanges {
        let mut r = SeqRanges::default();
        for s in seqs {
            r.add(*s);
        }
        r
    }

    #[test]
    fn seqs_merge_into_ranges() {
        assert_eq!(
            of(&[5, 3, 4, 9, 1, 10, 4]).ranges(),
            [(1, 1), (3, 5), (9, 10)]
        );
        assert_eq!(of(&[2, 4, 3]).ranges(), [(2, 4)]);
        assert!(of(&[0, -3]).ranges().is_empty());
    }

    #[test]
    fn the_lowest_go_first_past_the_cap() {
        let seqs: Vec<i64> = (0..100).map(|i| i * 10 + 1).collect();
        let r = of(&seqs);
        assert_eq!(r.ranges().len(), MAX_RANGES);
        assert_eq!(r.ranges()[0], (361, 361));
        assert_eq!(r.ranges().last(), Some(&(991, 991)));
    }

    #[test]
    fn a_completed_pull_forgets_what_it_went_past() {
        let mut r = of(&[1, 2, 3, 7]);
        let seen = r.clone();
        r.add(9);
        r.forget(&seen);
        assert_eq!(r.ranges(), [(9, 9)]);
    }
}
