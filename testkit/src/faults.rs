//! A fault-injecting [`Transport`] decorator: the faults of a field network between a
//! sync engine and any transport, and counts of what went over it.
//!
//! The counterexamples of a sync protocol hide in requests that fail before the server
//! saw them, answers lost after it committed, retries and outages. One layer injects
//! them for every user: end-to-end tests script faults over HTTP, the simulation draws
//! them from its seed over an in-process transport, the demo loses a seeded share of
//! each device's requests, and the benchmark only reads the timings and byte counts.
//! Seeded faults are deterministic as long as one link's requests are sequential, as
//! one device's are.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use outpost_core::protocol::{
    AttachmentStatus, HealthResponse, PullResponse, PushRequest, PushResponse,
};
use outpost_core::transport::{BoxFuture, FileSlice, PullParams, WireStats};
use outpost_core::{HttpTimeouts, HttpTransport, Transport, TransportError, Uploaded};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The requests of protocol v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Health,
    Push,
    Pull,
    /// An attachment's status, upload or download.
    File,
}

/// Code run by [`Fault::DropResponseThen`], told which request it interrupted.
#[derive(Clone)]
pub struct Hook(Arc<dyn Fn(RequestKind) + Send + Sync>);

impl Hook {
    pub fn new(f: impl Fn(RequestKind) + Send + Sync + 'static) -> Hook {
        Hook(Arc::new(f))
    }
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// The same hook, not merely an equal one.
impl PartialEq for Hook {
    fn eq(&self, other: &Hook) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Hook {}

/// One injected fault, applied to the next request it fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The request never reaches the server.
    DropRequest,
    /// The server handles the request, then the answer is lost.
    DropResponse,
    /// As [`Fault::DropResponse`], then the hook runs: where a simulation makes the
    /// device die mid-request.
    DropResponseThen(Hook),
    /// The request reaches the server twice (a retrying proxy); the second answer
    /// comes back.
    Duplicate,
    /// The server answers 500 without handling it.
    ServerError,
    /// The server refuses the whole request as invalid (400) without handling it, as
    /// it does a push with one op it cannot read.
    Refused,
    /// The server answers 429 with `Retry-After`.
    RateLimited(Duration),
    /// The server answers 401 without handling it.
    Unauthorized,
    /// As [`Fault::Unauthorized`], this much later: a token that expired while other
    /// requests were already on their way.
    UnauthorizedAfter(Duration),
    /// The request hangs for this long before going through.
    Delay(Duration),
    /// The server handles the request; the answer arrives this much later.
    DelayAfter(Duration),
}

/// Seeded random faults: while switched on, each request fails with probability
/// `rate`; a failure loses the answer after the server committed with probability
/// `after_commit`, and otherwise loses the request before it reached the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomFaults {
    pub seed: u64,
    pub rate: f64,
    pub after_commit: f64,
}

/// Requests of one kind through a link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Every request made, refused and failed ones included.
    pub calls: u64,
    /// Time inside those requests, injected delays included.
    pub time: Duration,
    /// Bytes on the wire, as the inner transport's [`WireStats`] count them (gzip
    /// bodies where it compressed); zero without wire stats.
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// What a link carried and lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub health: Traffic,
    pub push: Traffic,
    pub pull: Traffic,
    pub files: Traffic,
    /// Lost on the way to the server: it never saw them.
    pub lost_requests: u64,
    /// Handled by the server, then the answer was lost.
    pub lost_answers: u64,
    /// Ops pushed again with an op_id this link had already carried; counted only
    /// with [`FaultyTransport::with_op_tracking`].
    pub resent_ops: u64,
    /// When the first pull started (the engine pushes before it pulls).
    pub first_pull_at: Option<Instant>,
    /// Most push requests in flight at once.
    pub max_pushes_in_flight: u64,
    /// Push requests that went out while another one in flight held an op of the same
    /// record: a device must never send them, since the server may apply the two in
    /// either order.
    pub pushes_sharing_a_record: u64,
}

impl LinkStats {
    /// Requests of any kind.
    pub fn requests(&self) -> u64 {
        self.health.calls + self.push.calls + self.pull.calls + self.files.calls
    }

    pub fn bytes_sent(&self) -> u64 {
        self.health.bytes_sent + self.push.bytes_sent + self.pull.bytes_sent + self.files.bytes_sent
    }

    pub fn bytes_received(&self) -> u64 {
        self.health.bytes_received
            + self.push.bytes_received
            + self.pull.bytes_received
            + self.files.bytes_received
    }

    fn of(&mut self, kind: RequestKind) -> &mut Traffic {
        match kind {
            RequestKind::Health => &mut self.health,
            RequestKind::Push => &mut self.push,
            RequestKind::Pull => &mut self.pull,
            RequestKind::File => &mut self.files,
        }
    }
}

/// Which requests a scripted fault may hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Push,
    Pull,
    Any,
}

impl Target {
    fn fits(self, kind: RequestKind) -> bool {
        match self {
            Target::Push => kind == RequestKind::Push,
            Target::Pull => kind == RequestKind::Pull,
            Target::Any => true,
        }
    }
}

#[derive(Debug)]
struct Random {
    rng: StdRng,
    rate: f64,
    after_commit: f64,
}

/// Wraps any transport; scripted faults queue up and each hits the next request it
/// fits, seeded random faults apply while switched on, and offline fails everything.
#[derive(Debug)]
pub struct FaultyTransport {
    inner: Arc<dyn Transport>,
    wire: Option<Arc<WireStats>>,
    script: Mutex<VecDeque<(Target, Fault)>>,
    random: Mutex<Option<Random>>,
    random_on: AtomicBool,
    offline: AtomicBool,
    /// Op ids carried so far, when resent ops are counted.
    seen_ops: Option<Mutex<HashSet<String>>>,
    /// How many ops each push carried, in order.
    push_sizes: Mutex<Vec<usize>>,
    /// The records of each push in flight, by the push's number.
    in_flight: Mutex<Vec<(u64, Records)>>,
    stats: Mutex<LinkStats>,
    /// The wire counters when the last request ended: what they moved by since belongs
    /// to the request that ends next, so two requests in flight are not both given the
    /// other's bytes.
    wire_seen: Mutex<(u64, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FaultyTransport {
    /// No faults until some are scripted or switched on.
    pub fn new(inner: Arc<dyn Transport>) -> FaultyTransport {
        FaultyTransport {
            inner,
            wire: None,
            script: Mutex::new(VecDeque::new()),
            random: Mutex::new(None),
            random_on: AtomicBool::new(false),
            offline: AtomicBool::new(false),
            push_sizes: Mutex::new(Vec::new()),
            in_flight: Mutex::new(Vec::new()),
            seen_ops: None,
            stats: Mutex::new(LinkStats::default()),
            wire_seen: Mutex::new((0, 0)),
        }
    }

    /// Over a new [`HttpTransport`] to `base_url` (default timeouts), counting its
    /// bytes.
    pub fn http(base_url: &str) -> Result<FaultyTransport, TransportError> {
        let http = HttpTransport::new(base_url, HttpTimeouts::default())?;
        let wire = http.stats();
        Ok(FaultyTransport::new(Arc::new(http)).with_wire_stats(wire))
    }

    /// Counts bytes per request from the inner transport's own counters.
    pub fn with_wire_stats(mut self, wire: Arc<WireStats>) -> FaultyTransport {
        self.wire = Some(wire);
        *lock(&self.wire_seen) = self.wire();
        self
    }

    /// Installs seeded random faults, off until [`FaultyTransport::set_random_faults`].
    pub fn with_random_faults(self, faults: RandomFaults) -> FaultyTransport {
        *lock(&self.random) = Some(Random {
            rng: StdRng::seed_from_u64(faults.seed),
            rate: faults.rate,
            after_commit: faults.after_commit,
        });
        self
    }

    /// Counts [`LinkStats::resent_ops`] (it keeps every op id pushed).
    pub fn with_op_tracking(mut self) -> FaultyTransport {
        self.seen_ops = Some(Mutex::new(HashSet::new()));
        self
    }

    pub fn fail_next_push(&self, f: Fault) {
        lock(&self.script).push_back((Target::Push, f));
    }

    pub fn fail_next_pull(&self, f: Fault) {
        lock(&self.script).push_back((Target::Pull, f));
    }

    /// The next request of any kind, `/health` included.
    pub fn fail_next_request(&self, f: Fault) {
        lock(&self.script).push_back((Target::Any, f));
    }

    /// Forgets every scripted fault not yet applied.
    pub fn clear_faults(&self) {
        lock(&self.script).clear();
    }

    /// Switches the installed random faults on or off; the generator keeps its place.
    pub fn set_random_faults(&self, on: bool) {
        self.random_on.store(on, Ordering::SeqCst);
    }

    /// Offline, every request fails at once as if the radio were off.
    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
    }

    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> LinkStats {
        *lock(&self.stats)
    }

    /// How many ops each push request carried, in order, faulted ones included (not
    /// those made while the link was offline).
    pub fn push_sizes(&self) -> Vec<usize> {
        lock(&self.push_sizes).clone()
    }

    /// Requests of any kind so far.
    pub fn requests(&self) -> u64 {
        self.stats().requests()
    }

    /// The scripted fault for this request, else a random one.
    fn next_fault(&self, kind: RequestKind) -> Option<Fault> {
        {
            let mut script = lock(&self.script);
            if let Some(i) = script.iter().position(|(t, _)| t.fits(kind)) {
                return script.remove(i).map(|(_, f)| f);
            }
        }
        if !self.random_on.load(Ordering::SeqCst) {
            return None;
        }
        let mut random = lock(&self.random);
        let r = random.as_mut()?;
        if !r.rng.random_bool(r.rate) {
            return None;
        }
        // Drawn second, so a seed's failures fall on the same requests at any share.
        if r.rng.random_bool(r.after_commit) {
            Some(Fault::DropResponse)
        } else {
            Some(Fault::DropRequest)
        }
    }

    fn count_resent(&self, request: &PushRequest) {
        if let Some(seen) = &self.seen_ops {
            let mut seen = lock(seen);
            let resent = request
                .ops
                .iter()
                .filter(|op| !seen.insert(op.op_id.clone()))
                .count();
            lock(&self.stats).resent_ops += resent as u64;
        }
    }

    fn wire(&self) -> (u64, u64) {
        self.wire.as_ref().map_or((0, 0), |w| {
            (
                w.bytes_sent.load(Ordering::Relaxed),
                w.bytes_received.load(Ordering::Relaxed),
            )
        })
    }

    /// One call of the inner transport, its bytes added to `kind`'s traffic.
    async fn forward<'a, T>(
        &'a self,
        kind: RequestKind,
        call: &impl Fn() -> BoxFuture<'a, Result<T, TransportError>>,
    ) -> Result<T, TransportError> {
        let out = call().await;
        let (sent, received) = self.wire();
        let (sent0, received0) = std::mem::replace(&mut *lock(&self.wire_seen), (sent, received));
        let mut stats = lock(&self.stats);
        let t = stats.of(kind);
        t.bytes_sent += sent.saturating_sub(sent0);
        t.bytes_received += received.saturating_sub(received0);
        out
    }

    async fn request<'a, T>(
        &'a self,
        kind: RequestKind,
        push: Option<&'a PushRequest>,
        call: impl Fn() -> BoxFuture<'a, Result<T, TransportError>>,
    ) -> Result<T, TransportError> {
        let started = Instant::now();
        {
            let mut stats = lock(&self.stats);
            stats.of(kind).calls += 1;
            if kind == RequestKind::Pull {
                stats.first_pull_at.get_or_insert(started);
            }
        }
        let _flight = push.map(|request| Flight {
            link: self,
            n: self.take_off(request),
        });
        let out = self.faulted(kind, push, &call).await;
        lock(&self.stats).of(kind).time += started.elapsed();
        out
    }

    /// Notes a push going out, with its records; returns its number.
    fn take_off(&self, request: &PushRequest) -> u64 {
        let records: Records = request
            .ops
            .iter()
            .map(|op| (op.collection.clone(), op.record_id.clone()))
            .collect();
        let mut in_flight = lock(&self.in_flight);
        let mut stats = lock(&self.stats);
        let n = stats.push.calls;
        if in_flight
            .iter()
            .any(|(_, other)| !other.is_disjoint(&records))
        {
            stats.pushes_sharing_a_record += 1;
        }
        in_flight.push((n, records));
        stats.max_pushes_in_flight = stats.max_pushes_in_flight.max(in_flight.len() as u64);
        n
    }

    async fn faulted<'a, T>(
        &'a self,
        kind: RequestKind,
        push: Option<&'a PushRequest>,
        call: &impl Fn() -> BoxFuture<'a, Result<T, TransportError>>,
    ) -> Result<T, TransportError> {
        if self.is_offline() {
            return Err(TransportError::Network("injected: offline".into()));
        }
        if let Some(request) = push {
            lock(&self.push_sizes).push(request.ops.len());
            self.count_resent(request);
        }
        let lost_answer = || {
            lock(&self.stats).lost_answers += 1;
            Err(TransportError::Network(
                "injected: answer lost after the server handled it".into(),
            ))
        };
        match self.next_fault(kind) {
            None => self.forward(kind, call).await,
            Some(Fault::DropRequest) => {
                lock(&self.stats).lost_requests += 1;
                Err(TransportError::Network("injected: request lost".into()))
            }
            Some(Fault::DropResponse) => {
                let _ = self.forward(kind, call).await;
                lost_answer()
            }
            Some(Fault::DropResponseThen(hook)) => {
                let _ = self.forward(kind, call).await;
                (hook.0)(kind);
                lost_answer()
            }
            Some(Fault::Duplicate) => {
                let _ = self.forward(kind, call).await;
                self.forward(kind, call).await
            }
            Some(Fault::ServerError) => Err(TransportError::Http {
                status: 500,
                code: "internal".into(),
                message: "injected".into(),
            }),
            Some(Fault::Refused) => Err(TransportError::Http {
                status: 400,
                code: "invalid_request".into(),
                message: "injected: the request as a whole".into(),
            }),
            Some(Fault::RateLimited(d)) => Err(TransportError::RateLimited {
                retry_after: Some(d),
            }),
            Some(Fault::Unauthorized) => Err(TransportError::Unauthorized("injected".into())),
            Some(Fault::UnauthorizedAfter(d)) => {
                tokio::time::sleep(d).await;
                Err(TransportError::Unauthorized("injected".into()))
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                self.forward(kind, call).await
            }
            Some(Fault::DelayAfter(d)) => {
                let answer = self.forward(kind, call).await;
                tokio::time::sleep(d).await;
                answer
            }
        }
    }
}

/// The (collection, record id) pairs of a push.
type Records = HashSet<(String, String)>;

/// A push in flight; it lands when this is dropped, answered or abandoned.
struct Flight<'a> {
    link: &'a FaultyTransport,
    n: u64,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        lock(&self.link.in_flight).retain(|(m, _)| *m != self.n);
    }
}

impl Transport for FaultyTransport {
    fn health(&self) -> BoxFuture<'_, Result<HealthResponse, TransportError>> {
        Box::pin(self.request(RequestKind::Health, None, || self.inner.health()))
    }

    fn push<'a>(
        &'a self,
        token: &'a str,
        request: &'a PushRequest,
    ) -> BoxFuture<'a, Result<PushResponse, TransportError>> {
        Box::pin(self.request(RequestKind::Push, Some(request), || {
            self.inner.push(token, request)
        }))
    }

    fn pull<'a>(
        &'a self,
        token: &'a str,
        params: &'a PullParams,
    ) -> BoxFuture<'a, Result<PullResponse, TransportError>> {
        Box::pin(self.request(RequestKind::Pull, None, || self.inner.pull(token, params)))
    }

    fn wire_stats(&self) -> Option<Arc<WireStats>> {
        self.wire.clone()
    }

    fn attachment_status<'a>(
        &'a self,
        token: &'a str,
        sha256: &'a str,
    ) -> BoxFuture<'a, Result<Option<AttachmentStatus>, TransportError>> {
        Box::pin(self.request(RequestKind::File, None, || {
            self.inner.attachment_status(token, sha256)
        }))
    }

    fn upload_attachment<'a>(
        &'a self,
        token: &'a str,
        sha256: &'a str,
        size: u64,
        offset: u64,
        body: FileSlice,
    ) -> BoxFuture<'a, Result<Uploaded, TransportError>> {
        Box::pin(self.request(RequestKind::File, None, move || {
            self.inner
                .upload_attachment(token, sha256, size, offset, body.clone())
        }))
    }

    fn download_attachment<'a>(
        &'a self,
        token: &'a str,
        sha256: &'a str,
        from: u64,
        to: u64,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, TransportError>> {
        Box::pin(self.request(RequestKind::File, None, move || {
            self.inner.download_attachment(token, sha256, from, to)
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use outpost_core::protocol::Op;

    use super::*;

    /// Answers every request and counts what reached it.
    #[derive(Debug, Default)]
    struct Counting {
        reached: AtomicU64,
    }

    impl Counting {
        fn reached(&self) -> u64 {
            self.reached.load(Ordering::SeqCst)
        }
    }

    impl Transport for Counting {
        fn health(&self) -> BoxFuture<'_, Result<HealthResponse, TransportError>> {
            self.reached.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                Ok(HealthResponse {
                    status: "ok".into(),
                    protocol: 1,
                })
            })
        }

        fn push<'a>(
            &'a self,
            _token: &'a str,
            _request: &'a PushRequest,
        ) -> BoxFuture<'a, Result<PushResponse, TransportError>> {
            self.reached.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                Ok(PushResponse {
                    results: Vec::new(),
                })
            })
        }

        fn pull<'a>(
            &'a self,
            _token: &'a str,
            _params: &'a PullParams,
        ) -> BoxFuture<'a, Result<PullResponse, TransportError>> {
            self.reached.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                Ok(PullResponse {
                    changes: Vec::new(),
                    cursor: String::new(),
                    has_more: false,
                    remaining: None,
                    remaining_capped: false,
                })
            })
        }
    }

    fn link() -> (Arc<Counting>, FaultyTransport) {
        let inner = Arc::new(Counting::default());
        (inner.clone(), FaultyTransport::new(inner))
    }

    fn push_of(op_ids: &[&str]) -> PushRequest {
        PushRequest {
            client_id: "c".into(),
            ops: op_ids
                .iter()
                .map(|id| Op {
                    op_id: (*id).to_owned(),
                    collection: "notes".into(),
                    record_id: "n1".into(),
                    kind: outpost_core::protocol::OpKind::Delete,
                    base_version: None,
                    data: None,
                    hlc: String::new(),
                    force: false,
                })
                .collect(),
        }
    }

    fn pull_params() -> PullParams {
        PullParams {
            since: None,
            limit: 10,
            collections: Vec::new(),
            ..PullParams::default()
        }
    }

    #[tokio::test]
    async fn faults_say_whether_the_server_saw_the_request() {
        let (inner, link) = link();
        let req = push_of(&["a"]);
        link.fail_next_push(Fault::DropRequest);
        link.fail_next_push(Fault::DropResponse);
        link.fail_next_push(Fault::Duplicate);
        link.fail_next_push(Fault::ServerError);
        assert!(link.push("t", &req).await.is_err());
        assert_eq!(inner.reached(), 0);
        assert!(link.push("t", &req).await.is_err());
        assert_eq!(inner.reached(), 1);
        assert!(link.push("t", &req).await.is_ok());
        assert_eq!(inner.reached(), 3);
        let err = link.push("t", &req).await.expect_err("server error");
        assert!(err.is_transient());
        assert_eq!(inner.reached(), 3);
        assert!(link.push("t", &req).await.is_ok());
        let s = link.stats();
        assert_eq!((s.push.calls, s.lost_requests, s.lost_answers), (5, 1, 1));
    }

    #[tokio::test]
    async fn scripted_faults_wait_for_a_request_they_fit() {
        let (inner, link) = link();
        link.fail_next_pull(Fault::Unauthorized);
        link.fail_next_push(Fault::RateLimited(Duration::from_secs(5)));
        assert!(link.health().await.is_ok());
        assert_eq!(
            link.push("t", &push_of(&[])).await.expect_err("429"),
            TransportError::RateLimited {
                retry_after: Some(Duration::from_secs(5))
            }
        );
        assert!(matches!(
            link.pull("t", &pull_params()).await,
            Err(TransportError::Unauthorized(_))
        ));
        link.fail_next_request(Fault::DropRequest);
        assert!(link.health().await.is_err());
        link.fail_next_request(Fault::DropRequest);
        link.clear_faults();
        assert!(link.health().await.is_ok());
        assert_eq!(inner.reached(), 2);
    }

    #[tokio::test]
    async fn offline_fails_everything_and_keeps_the_script() {
        let (inner, link) = link();
        link.fail_next_push(Fault::DropRequest);
        link.set_offline(true);
        assert!(link.is_offline());
        assert!(link.health().await.is_err());
        assert!(link.push("t", &push_of(&[])).await.is_err());
        link.set_offline(false);
        assert!(link.push("t", &push_of(&[])).await.is_err());
        assert!(link.push("t", &push_of(&[])).await.is_ok());
        assert_eq!(inner.reached(), 1);
        assert_eq!(link.requests(), 4);
    }

    #[tokio::test]
    async fn the_hook_runs_after_the_server_handled_the_request() {
        let (inner, link) = link();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, i) = (seen.clone(), inner.clone());
        link.fail_next_request(Fault::DropResponseThen(Hook::new(move |kind| {
            lock(&s).push((kind, i.reached()));
        })));
        assert!(link.pull("t", &pull_params()).await.is_err());
        assert_eq!(*lock(&seen), vec![(RequestKind::Pull, 1)]);
    }

    /// The fault of each of `n` requests, as `r` (request lost), `a` (answer lost), `.`.
    async fn random_run(seed: u64, n: usize) -> String {
        let (_, link) = link();
        let link = link.with_random_faults(RandomFaults {
            seed,
            rate: 0.3,
            after_commit: 0.5,
        });
        let mut out = String::new();
        for i in 0..n {
            link.set_random_faults(i >= 5);
            let before = link.stats();
            let _ = link.health().await;
            let after = link.stats();
            out.push(if after.lost_requests > before.lost_requests {
                'r'
            } else if after.lost_answers > before.lost_answers {
                'a'
            } else {
                '.'
            });
        }
        out
    }

    #[tokio::test]
    async fn random_faults_follow_the_seed_only_while_on() {
        let a = random_run(7, 60).await;
        assert_eq!(a, random_run(7, 60).await);
        assert_ne!(a, random_run(8, 60).await);
        assert!(a.starts_with("....."), "{a}");
        assert!(a.contains('r') && a.contains('a'), "{a}");
    }

    #[tokio::test]
    async fn resent_ops_are_counted_when_tracked() {
        let (_, link) = link();
        let link = link.with_op_tracking();
        link.fail_next_push(Fault::DropRequest);
        let _ = link.push("t", &push_of(&["a", "b"])).await;
        let _ = link.push("t", &push_of(&["a", "b", "c"])).await;
        assert_eq!(link.stats().resent_ops, 2);
        let (_, untracked) = self::link();
        let _ = untracked.push("t", &push_of(&["a"])).await;
        let _ = untracked.push("t", &push_of(&["a"])).await;
        assert_eq!(untracked.stats().resent_ops, 0);
    }
}
