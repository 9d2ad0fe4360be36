//! The push phase: the outbox goes out in batches, two requests in flight at a time
//! (`SyncConfig::push_requests_in_flight`).
//!
//! While the server applies one batch the next is already on its way, and the device
//! records an answer (and takes and marks the batch after) while the other request is
//! on the wire: neither side waits on the other's disk. Two batches never hold entries
//! of the same record: a record's next entry becomes eligible only once the answer for
//! its previous one is recorded, so the server may apply the two in either order. The
//! first request of a sync goes alone, as does the first after a failure; the batch
//! after the ones in flight is always taken and marked beforehand, so it goes out the
//! moment an answer lands, one request at a time included.
//! A batch whose answer the link loses, once the link has shown it carries answers,
//! goes out again at once with fewer ops (`pace`); otherwise its entries back off.

use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::Inner;
use super::report::{Stop, Tally, error_code, tally};
use super::run::Pass;
use crate::conflict::Conflict;
use crate::db::lock;
use crate::error::Error;
use crate::outbox::{BatchLimits, OutboxEntry, PushOutcome};
use crate::protocol::{Change, ErrorBody, ErrorCode, OpResult, PushRequest, PushResponse};
use crate::transport::TransportError;

/// A batch marked in flight, with its request.
type Batch = (Vec<OutboxEntry>, PushRequest);

/// Entries the server answered with a conflict, with the record's server state.
type Conflicts<'b> = Vec<(&'b OutboxEntry, Option<Change>)>;

/// Longest `Retry-After` waited out within the sync when a request sent beside another
/// is refused as one too many; a longer one is a rate limit, and the sync stops.
const SOLO_PAUSE_MAX: Duration = Duration::from_secs(2);

/// What a push request came back with.
type Answer = Result<PushResponse, TransportError>;

/// A batch on the wire, and its answer once it came.
struct Flight<'a> {
    batch: Vec<OutboxEntry>,
    /// Sent while another request was in flight.
    beside: bool,
    request: Pin<Box<dyn Future<Output = Answer> + Send + 'a>>,
    answer: Option<Answer>,
}

/// A request's batch and answer, and whether it flew beside another.
type Landed = (Vec<OutboxEntry>, Answer, bool);

impl<'a> Flight<'a> {
    fn new(
        inner: &'a Inner,
        batch: Vec<OutboxEntry>,
        req: PushRequest,
        beside: bool,
    ) -> Flight<'a> {
        Flight {
            batch,
            beside,
            request: Box::pin(async move { inner.push_request(&req).await }),
            answer: None,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) {
        if self.answer.is_none()
            && let Poll::Ready(a) = self.request.as_mut().poll(cx)
        {
            self.answer = Some(a);
        }
    }
}

/// Runs `work` while every request in flight goes on; an answer that comes meanwhile
/// waits in its flight.
async fn along<T>(flying: &mut VecDeque<Flight<'_>>, work: impl Future<Output = T>) -> T {
    let mut work = pin!(work);
    poll_fn(|cx| {
        flying.iter_mut().for_each(|f| f.poll(cx));
        work.as_mut().poll(cx)
    })
    .await
}

/// The oldest request in flight, once answered, with its batch; `None` when nothing
/// is in flight. The others go on meanwhile.
async fn land(flying: &mut VecDeque<Flight<'_>>) -> Option<Landed> {
    poll_fn(|cx| {
        flying.iter_mut().for_each(|f| f.poll(cx));
        match flying.front_mut() {
            None => Poll::Ready(None),
            Some(f) => match f.answer.take() {
                Some(a) => Poll::Ready(flying.pop_front().map(|f| (f.batch, a, f.beside))),
                None => Poll::Pending,
            },
        }
    })
    .await
}

/// How often a push on a fast link recounts what is due and publishes the status.
const SHOW_EVERY: Duration = Duration::from_millis(200);

/// How many ops the next request may carry. A request refused as a whole (400, 413)
/// is retried one op at a time to find the culprit, so other records still sync; once
/// the ops of that request have each been tried alone, batches are full again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sizer {
    full: BatchLimits,
    /// Single-op requests still to make.
    isolating: usize,
}

impl Sizer {
    fn new(full: BatchLimits) -> Sizer {
        Sizer { full, isolating: 0 }
    }

    fn single(&self) -> BatchLimits {
        BatchLimits {
            max_ops: 1,
            ..self.full
        }
    }

    /// For a batch taken now: every batch taken before it has gone out.
    fn now(&self) -> BatchLimits {
        if self.isolating > 0 {
            self.single()
        } else {
            self.full
        }
    }

    /// The current batch has gone out.
    fn sent(&mut self) {
        self.isolating = self.isolating.saturating_sub(1);
    }

    /// A request of `ops` ops was refused as a whole.
    fn refused(&mut self, ops: usize) {
        self.isolating = ops;
    }
}

impl Inner {
    /// The batch limits now: the config's, with as many ops as the link allows.
    fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            max_ops: lock(&self.sizes).push_ops.get(),
            ..self.config.batch
        }
    }

    /// Uploads due, per collection, into the progress's totals; returns the last entry
    /// id counted. From 0 the whole queue is counted and sets the totals; from the last
    /// id counted, the edits queued since (while the push runs) add to them.
    fn count_due(&self, after: i64) -> Result<i64, Stop> {
        let (due, last) = self.store.outbox_due_since(self.now_ms(), after)?;
        let mut progress = lock(&self.progress);
        for (collection, changes, bytes) in due {
            if after == 0 {
                progress.due(&collection, changes, bytes);
            } else {
                progress.more_due(&collection, changes, bytes);
            }
        }
        Ok(last)
    }

    pub(super) async fn push_all(&self, pass: &Pass) -> Result<(), Stop> {
        let report = &pass.report;
        let mut sizer = Sizer::new(self.batch_limits());
        // A sync cancelled while a batch was being taken can leave it marked in flight
        // after its release ran; nothing is in flight between syncs.
        self.store.release_in_flight()?;
        let mut counted = self.count_due(0)?;
        self.publish_status();
        let mut shown = Instant::now();
        // One request until the link has answered one, then as many as the config
        // allows; after a failure, one again until the next answer.
        let flights = self.config.push_requests_in_flight.max(1);
        let mut depth = 1;
        let mut solo = false;
        let mut flying: VecDeque<Flight<'_>> = VecDeque::new();
        let mut next = self.take_batch(Vec::new(), sizer.now()).await?;
        loop {
            while flying.len() < depth {
                let Some(taken) = next.take() else {
                    break;
                };
                self.fly(&mut flying, taken, report, &mut sizer);
                sizer.full = self.batch_limits();
                next = along(&mut flying, self.take_batch(Vec::new(), sizer.now())).await?;
            }
            // On an early return the batches in flight are still marked so; the run
            // returns whatever is left in flight to pending.
            let Some((batch, sent, beside)) = land(&mut flying).await else {
                return Ok(());
            };
            let e = match sent {
                Ok(resp) => {
                    self.answer_came(pass, &batch);
                    depth = if solo { 1 } else { flights };
                    // The batch taken meanwhile goes out before this answer is recorded.
                    if let Some(taken) = next.take() {
                        self.fly(&mut flying, taken, report, &mut sizer);
                    }
                    let (outcomes, conflicts) = self.read_answer(&batch, &resp, report);
                    // The answer and the next batch share one transaction, which runs
                    // while the other request is on the wire.
                    sizer.full = self.batch_limits();
                    next = along(&mut flying, self.take_batch(outcomes, sizer.now())).await?;
                    let settled = !conflicts.is_empty();
                    self.settle_conflicts(conflicts, report)?;
                    if settled && next.is_none() {
                        // A settled conflict may have queued its result: it goes out in
                        // this same sync.
                        next = along(&mut flying, self.take_batch(Vec::new(), sizer.now())).await?;
                    }
                    // Edits made since the count add to the totals, read by id range: a
                    // full count per batch would scan a 100,000-edit backlog 200 times.
                    // On a fast link the status goes out a few times a second rather
                    // than per batch; once the queue is drained, it is counted afresh.
                    let drained = next.is_none() && flying.is_empty();
                    if drained || shown.elapsed() >= SHOW_EVERY {
                        shown = Instant::now();
                        counted = self.count_due(if drained { 0 } else { counted })?;
                        self.publish_status();
                    }
                    continue;
                }
                Err(e) => e,
            };
            // A failure is handled with nothing else in the air, nor taken.
            depth = 1;
            self.release(next.take().as_ref().map(|b| b.0.as_slice()))?;
            self.land_rest(&mut flying, pass).await?;
            sizer.full = self.batch_limits();
            match e {
                TransportError::Unauthorized(m) => {
                    self.release(Some(&batch))?;
                    return Err(Stop::Auth(m));
                }
                TransportError::RateLimited {
                    retry_after: Some(pause),
                } if beside && pause <= SOLO_PAUSE_MAX => {
                    // The server takes only so many pushes of one login at once, and
                    // devices may share a login: this one goes on one at a time.
                    tracing::debug!(?pause, "second push refused as one too many; one at a time");
                    self.release(Some(&batch))?;
                    solo = true;
                    tokio::time::sleep(pause).await;
                    next = self.take_batch(Vec::new(), sizer.now()).await?;
                }
                e if e.is_transient() => {
                    let pause = lock(&pass.retries).after_failure(&e, |n| self.backoff(n));
                    let Some(pause) = pause.filter(|_| self.online()) else {
                        self.back_off(&batch, &e)?;
                        super::report::log_stop(&e);
                        return Err(Stop::Transient(e.to_string()));
                    };
                    // The link carries answers but lost this one: the same ops again
                    // (the server answers a repeat once), fewer of them, after the pause.
                    tracing::debug!(
                        error = e.for_log(),
                        ?pause,
                        "push failed on the link; sending again, smaller"
                    );
                    self.release(Some(&batch))?;
                    lock(&self.sizes).push_ops.failed();
                    sizer.full = self.batch_limits();
                    tokio::time::sleep(pause).await;
                    next = self.take_batch(Vec::new(), sizer.now()).await?;
                }
                e if batch.len() > 1 => {
                    tracing::warn!(
                        error = e.for_log(),
                        "push refused as a whole; isolating ops"
                    );
                    self.release(Some(&batch))?;
                    sizer.refused(batch.len());
                    next = self.take_batch(Vec::new(), sizer.now()).await?;
                }
                e => {
                    let error = ErrorBody {
                        code: error_code(&e),
                        message: e.to_string(),
                    };
                    tally(report).rejected += 1;
                    let failed = batch
                        .iter()
                        .map(|entry| {
                            (
                                entry.id,
                                PushOutcome::Failed {
                                    error: error.clone(),
                                },
                            )
                        })
                        .collect();
                    next = self.take_batch(failed, sizer.now()).await?;
                }
            }
        }
    }

    /// Sends a taken batch.
    fn fly<'a>(
        &'a self,
        flying: &mut VecDeque<Flight<'a>>,
        (batch, req): Batch,
        report: &Tally,
        sizer: &mut Sizer,
    ) {
        {
            let mut r = tally(report);
            r.pushed += batch.len() as u64;
            r.requests += 1;
        }
        sizer.sent();
        let beside = !flying.is_empty();
        flying.push_back(Flight::new(self, batch, req, beside));
    }

    /// The link answered a request.
    fn answer_came(&self, pass: &Pass, batch: &[OutboxEntry]) {
        let mut sizes = lock(&self.sizes);
        let full = batch.len() >= sizes.push_ops.get();
        sizes.push_ops.succeeded(full);
        drop(sizes);
        lock(&pass.retries).succeeded();
    }

    /// Waits for every other request in flight, recording its answer or, when it got
    /// none, returning its entries to pending untouched.
    async fn land_rest(&self, flying: &mut VecDeque<Flight<'_>>, pass: &Pass) -> Result<(), Stop> {
        while let Some((batch, sent, _)) = land(flying).await {
            match sent {
                Ok(resp) => {
                    self.answer_came(pass, &batch);
                    let (outcomes, conflicts) = self.read_answer(&batch, &resp, &pass.report);
                    self.store.outbox_apply_results(&outcomes)?;
                    self.settle_conflicts(conflicts, &pass.report)?;
                }
                Err(_) => self.release(Some(&batch))?,
            }
        }
        Ok(())
    }

    async fn push_request(&self, req: &PushRequest) -> Result<PushResponse, TransportError> {
        self.authorized(|token| async move { self.transport.push(&token, req).await })
            .await
    }

    /// Records `outcomes`, then takes and marks the next batch, in one transaction.
    /// On a blocking thread, as pull pages are applied: the disk work then overlaps the
    /// request on the wire and its encoding, rather than taking turns with them.
    async fn take_batch(
        &self,
        outcomes: Vec<(i64, PushOutcome)>,
        limits: BatchLimits,
    ) -> Result<Option<Batch>, Stop> {
        let store = self.store.clone();
        let now = self.now_ms();
        let taken = tokio::task::spawn_blocking(move || -> Result<_, Error> {
            let batch = store.outbox_settle_and_take(&outcomes, limits, now)?;
            if batch.is_empty() {
                return Ok(None);
            }
            let req = PushRequest {
                client_id: store.client_id().to_owned(),
                ops: batch.iter().map(OutboxEntry::to_op).collect(),
            };
            Ok(Some((batch, req)))
        });
        Ok(taken.await??)
    }

    /// Entries that were marked but got no answer go back, untouched.
    fn release(&self, batch: Option<&[OutboxEntry]>) -> Result<(), Stop> {
        let released: Vec<_> = batch
            .unwrap_or_default()
            .iter()
            .map(|e| (e.id, PushOutcome::Released))
            .collect();
        if released.is_empty() {
            return Ok(());
        }
        Ok(self.store.outbox_apply_results(&released)?)
    }

    /// The request failed transiently: each entry waits out its own backoff (at least
    /// the server's `Retry-After`), keeping its op_id.
    fn back_off(&self, batch: &[OutboxEntry], e: &TransportError) -> Result<(), Stop> {
        let retry_after = match e {
            TransportError::RateLimited { retry_after } => *retry_after,
            _ => None,
        };
        let error = ErrorBody {
            code: error_code(e),
            message: e.to_string(),
        };
        let now = self.now_ms();
        let outcomes: Vec<_> = batch
            .iter()
            .map(|entry| {
                let delay = self
                    .backoff(entry.attempts + 1)
                    .max(retry_after.unwrap_or_default());
                let retry = PushOutcome::Retry {
                    error: error.clone(),
                    next_attempt_at_ms: now + delay.as_millis() as i64,
                };
                (entry.id, retry)
            })
            .collect();
        Ok(self.store.outbox_apply_results(&outcomes)?)
    }

    /// What the server said about each entry of a batch: outcomes to record, and the
    /// conflicts to settle by strategy.
    fn read_answer<'b>(
        &self,
        batch: &'b [OutboxEntry],
        resp: &PushResponse,
        report: &Tally,
    ) -> (Vec<(i64, PushOutcome)>, Conflicts<'b>) {
        let by_op: HashMap<&str, &OpResult> = resp.results.iter().map(|r| (r.op_id(), r)).collect();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut conflicts = Vec::new();
        let now = self.now_ms();
        // A deferred op goes out again at once; only an answer that processed nothing
        // at all waits a little, so a server that keeps deferring is not hammered.
        let stalled = batch
            .iter()
            .all(|e| matches!(by_op.get(e.op_id.as_str()), Some(OpResult::Deferred { .. })));
        let deferred = PushOutcome::Deferred {
            not_before_ms: stalled.then(|| now + self.config.backoff_initial.as_millis() as i64),
        };
        let mut progress = lock(&self.progress);
        let mut own = lock(&self.own);
        for entry in batch {
            let result = by_op.get(entry.op_id.as_str());
            if matches!(
                result,
                Some(
                    OpResult::Applied { .. }
                        | OpResult::Conflict { .. }
                        | OpResult::Rejected { .. }
                )
            ) {
                progress.answered(&entry.collection, entry.bytes as u64);
            }
            match result {
                Some(OpResult::Applied { version, seq, .. }) => {
                    outcomes.push((entry.id, PushOutcome::Applied { version: *version }));
                    own.entry(entry.collection.clone()).or_default().add(*seq);
                    tally(report).applied += 1;
                }
                Some(OpResult::Rejected { error, .. }) => {
                    let transient = matches!(
                        ErrorCode::parse(&error.code),
                        Some(ErrorCode::Internal | ErrorCode::RateLimited)
                    );
                    let outcome = if transient {
                        let delay = self.backoff(entry.attempts + 1);
                        PushOutcome::Retry {
                            error: error.clone(),
                            next_attempt_at_ms: now + delay.as_millis() as i64,
                        }
                    } else {
                        tally(report).rejected += 1;
                        PushOutcome::Failed {
                            error: error.clone(),
                        }
                    };
                    outcomes.push((entry.id, outcome));
                }
                Some(OpResult::Conflict {
                    current,
                    current_ref,
                    ..
                }) => match conflict_state(&by_op, current.as_ref(), current_ref.as_deref()) {
                    Some(state) => conflicts.push((entry, state.cloned())),
                    // A reference to nothing: ask again rather than settle on a guess.
                    None => outcomes.push((entry.id, deferred.clone())),
                },
                Some(OpResult::Deferred { .. }) => outcomes.push((entry.id, deferred.clone())),
                // The server skipped it: send it again, same op_id.
                None => outcomes.push((entry.id, PushOutcome::Released)),
            }
        }
        (outcomes, conflicts)
    }

    fn settle_conflicts(&self, conflicts: Conflicts<'_>, report: &Tally) -> Result<(), Stop> {
        for (entry, current) in conflicts {
            let settled = self.store.settle_conflict(entry, current.as_ref())?;
            tally(report).conflicts += 1;
            if settled.manual {
                self.notify_conflict(settled.conflict);
            }
        }
        Ok(())
    }

    fn notify_conflict(&self, conflict: Conflict) {
        let Some(listener) = lock(&self.conflict_listener).clone() else {
            return;
        };
        // Off the sync path and outside every lock; a failing listener is only logged.
        self.runtime.spawn_blocking(move || {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                listener.on_conflict(&conflict)
            })) {
                Ok(Ok(())) => {}
                // The app's own error text may quote data; it stays out of the log.
                Ok(Err(_)) => tracing::warn!("the conflict listener returned an error"),
                Err(_) => tracing::warn!("conflict listener panicked"),
            }
        });
    }
}

/// The server state a conflict answer stands for: its own `current`, or, when it
/// refers to an earlier result of the same answer (`current_ref`), that result's.
/// `None` when the reference names no conflict that carries a state in full.
fn conflict_state<'r>(
    by_op: &HashMap<&str, &'r OpResult>,
    current: Option<&'r Change>,
    current_ref: Option<&str>,
) -> Option<Option<&'r Change>> {
    let Some(r) = current_ref else {
        return Some(current);
    };
    match by_op.get(r) {
        Some(OpResult::Conflict {
            current: Some(c),
            current_ref: None,
            ..
        }) => Some(Some(c)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_reference_resolves_to_the_state_carried_before() {
        let change = Change {
            collection: "c".into(),
            record_id: "r".into(),
            version: 3,
            seq: 9,
            deleted: false,
            data: Some(serde_json::Map::new()),
            hlc: "0000000000001-00000-a".into(),
            updated_at: "1970-01-01T00:00:00.001Z".into(),
        };
        let first = OpResult::conflict("a".into(), Some(change.clone()));
        let missing = OpResult::conflict("m".into(), None);
        let applied = OpResult::Applied {
            op_id: "p".into(),
            version: 1,
            seq: 1,
        };
        let results = [first, missing, applied];
        let by_op: HashMap<&str, &OpResult> = results.iter().map(|r| (r.op_id(), r)).collect();
        assert_eq!(conflict_state(&by_op, None, Some("a")), Some(Some(&change)));
        assert_eq!(
            conflict_state(&by_op, Some(&change), None),
            Some(Some(&change))
        );
        assert_eq!(conflict_state(&by_op, None, None), Some(None));
        // A reference to nothing, to a result without a state, or to another kind of
        // result does not resolve.
        for r in ["zz", "m", "p"] {
            assert_eq!(conflict_state(&by_op, None, Some(r)), None, "{r}");
        }
    }

    #[test]
    fn after_isolating_a_refused_request_batches_are_full_again() {
        let full = BatchLimits {
            max_ops: 5,
            max_bytes: 1 << 20,
        };
        let mut s = Sizer::new(full);
        assert_eq!(s.now(), full);
        s.sent();
        // A request of 3 ops refused: the next 3 requests carry one op each.
        s.refused(3);
        let mut sizes = vec![s.now().max_ops];
        for _ in 0..5 {
            s.sent();
            sizes.push(s.now().max_ops);
        }
        assert_eq!(sizes, [1, 1, 1, 5, 5, 5]);
        assert_eq!(s.now(), full);
    }
}
