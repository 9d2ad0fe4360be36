//! Counters for the operators who run the server, served as Prometheus text at
//! `/metrics`.
//!
//! Labels are closed sets chosen here (route names, status codes, op results, timeout
//! kinds), never anything a client sends, so a client can neither grow the series
//! without bound nor see a path, a user, a record or a token in them. The endpoint is
//! off unless `metrics_token` is configured, and then asks for it as a bearer token.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use outpost_core::protocol::{ErrorCode, OpResult};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, error_response};
use crate::http::{AppState, same_digest};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The routes requests are counted under; anything else is `other`.
const ROUTES: [&str; 5] = ["health", "push", "pull", "metrics", "other"];

/// The route label of a request path.
pub fn route_of(path: &str) -> &'static str {
    match path {
        "/health" => "health",
        "/v1/push" => "push",
        "/v1/pull" => "pull",
        "/metrics" => "metrics",
        _ => "other",
    }
}

#[derive(Debug, Default)]
struct Histogram {
    /// Per bucket (not cumulative); the last slot is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// Every counter of one server process.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: [Histogram; ROUTES.len()],
    push_ops: Mutex<BTreeMap<&'static str, u64>>,
    pull_changes: AtomicU64,
    open_connections: AtomicI64,
    connections: AtomicU64,
    timeouts: Mutex<BTreeMap<&'static str, u64>>,
    evicted: AtomicU64,
    auth_failures: AtomicU64,
    auth_throttled: AtomicU64,
    reloads: Mutex<BTreeMap<&'static str, u64>>,
}

/// Counts a connection as open while it lives.
#[derive(Debug)]
pub struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K, n: u64) {
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    *m.entry(key).or_insert(0) += n;
}

fn snapshot<K: Ord + Clone>(map: &Mutex<BTreeMap<K, u64>>) -> Vec<(K, u64)> {
    let m = map.lock().unwrap_or_else(|p| p.into_inner());
    m.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

impl Metrics {
    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        bump(&self.requests, (route, status), 1);
        let i = ROUTES.iter().position(|r| *r == route).unwrap_or(4);
        self.latency[i].observe(took);
    }

    pub fn push_results(&self, results: &[OpResult]) {
        let (mut applied, mut conflict, mut rejected, mut deferred) = (0, 0, 0, 0);
        for r in results {
            match r {
                OpResult::Applied { .. } => applied += 1,
                OpResult::Conflict { .. } => conflict += 1,
                OpResult::Rejected { .. } => rejected += 1,
                OpResult::Deferred { .. } => deferred += 1,
            }
        }
        for (k, n) in [
            ("applied", applied),
            ("conflict", conflict),
            ("rejected", rejected),
            ("deferred", deferred),
        ] {
            if n > 0 {
                bump(&self.push_ops, k, n);
            }
        }
    }

    /// Counts a pull page's changes.
    pub fn pulled(&self, changes: usize) {
        self.pull_changes.fetch_add(
            u64::try_from(changes).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn connection_opened(&self) -> OpenConnection<'_> {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        self.connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }

    pub fn connection_timed_out(&self, kind: &'static str) {
        bump(&self.timeouts, kind, 1);
    }

    pub fn connection_evicted(&self) {
        self.evicted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn auth_failed(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn auth_throttled(&self) {
        self.auth_throttled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn config_reload(&self, ok: bool) {
        bump(&self.reloads, if ok { "ok" } else { "failed" }, 1);
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "outpost_http_requests_total",
            "counter",
            "HTTP requests answered, by route and status.",
        );
        for ((route, status), n) in snapshot(&self.requests) {
            let _ = writeln!(
                out,
                "outpost_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        head(
            &mut out,
            "outpost_http_request_duration_seconds",
            "histogram",
            "Time to answer a request, by route.",
        );
        for (route, h) in ROUTES.iter().zip(&self.latency) {
            let mut cumulative = 0;
            for (i, c) in h.counts.iter().enumerate() {
                cumulative += c.load(Ordering::Relaxed);
                let le = BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "outpost_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "outpost_http_request_duration_seconds_sum{{route=\"{route}\"}} {sum}\n\
                 outpost_http_request_duration_seconds_count{{route=\"{route}\"}} {cumulative}"
            );
        }
        head(
            &mut out,
            "outpost_push_ops_total",
            "counter",
            "Pushed operations, by result.",
        );
        for (result, n) in snapshot(&self.push_ops) {
            let _ = writeln!(out, "outpost_push_ops_total{{result=\"{result}\"}} {n}");
        }
        let counters = [
            (
                "outpost_pull_changes_total",
                "Changes sent in pull pages.",
                self.pull_changes.load(Ordering::Relaxed),
            ),
            (
                "outpost_connections_total",
                "Connections accepted.",
                self.connections.load(Ordering::Relaxed),
            ),
            (
                "outpost_connections_evicted_total",
                "Idle or slow connections closed to make room for new ones.",
                self.evicted.load(Ordering::Relaxed),
            ),
            (
                "outpost_auth_failures_total",
                "Requests refused for a missing or wrong token.",
                self.auth_failures.load(Ordering::Relaxed),
            ),
            (
                "outpost_auth_throttled_total",
                "Requests refused because their address failed to authenticate too often.",
                self.auth_throttled.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            head(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {v}");
        }
        head(
            &mut out,
            "outpost_open_connections",
            "gauge",
            "Connections open now.",
        );
        let _ = writeln!(
            out,
            "outpost_open_connections {}",
            self.open_connections.load(Ordering::Relaxed)
        );
        head(
            &mut out,
            "outpost_connection_timeouts_total",
            "counter",
            "Connections closed by a timeout, by kind.",
        );
        for (kind, n) in snapshot(&self.timeouts) {
            let kind = kind.replace(' ', "_");
            let _ = writeln!(
                out,
                "outpost_connection_timeouts_total{{kind=\"{kind}\"}} {n}"
            );
        }
        head(
            &mut out,
            "outpost_config_reloads_total",
            "counter",
            "Config reloads on SIGHUP, by result.",
        );
        for (result, n) in snapshot(&self.reloads) {
            let _ = writeln!(
                out,
                "outpost_config_reloads_total{{result=\"{result}\"}} {n}"
            );
        }
        out
    }
}

/// Middleware: counts every request by route and status, and times it.
pub async fn account(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = route_of(req.uri().path());
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    state
        .metrics()
        .request(route, resp.status().as_u16(), start.elapsed());
    resp
}

/// `GET /metrics`: the counters, to a holder of `metrics_token`; without one
/// configured the route does not exist.
pub async fn serve_metrics(State(state): State<AppState>, req: Request) -> Response {
    let Some(want) = state.policy().metrics_token_sha256 else {
        return error_response(ErrorCode::NotFound, "no such route");
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let ok = token.is_some_and(|t| same_digest(&Sha256::digest(t.as_bytes()), &want));
    if !ok {
        return ApiError::new(ErrorCode::Unauthorized, "the metrics token is required")
            .into_response();
    }
    let mut resp = state.metrics().render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request("push", 200, Duration::from_millis(7));
        m.request("push", 200, Duration::from_secs(40));
        m.request(route_of("/secret/path"), 404, Duration::from_millis(1));
        m.push_results(&[]);
        m.push_results(&[
            OpResult::Deferred { op_id: "a".into() },
            OpResult::Deferred { op_id: "b".into() },
        ]);
        m.pulled(3);
        let _c = m.connection_opened();
        m.connection_timed_out("header read");
        let text = m.render();
        for line in [
            "outpost_http_requests_total{route=\"push\",status=\"200\"} 2",
            "outpost_http_requests_total{route=\"other\",status=\"404\"} 1",
            "outpost_http_request_duration_seconds_bucket{route=\"push\",le=\"0.005\"} 0",
            "outpost_http_request_duration_seconds_bucket{route=\"push\",le=\"0.01\"} 1",
            "outpost_http_request_duration_seconds_bucket{route=\"push\",le=\"30\"} 1",
            "outpost_http_request_duration_seconds_bucket{route=\"push\",le=\"+Inf\"} 2",
            "outpost_http_request_duration_seconds_count{route=\"push\"} 2",
            "outpost_push_ops_total{result=\"deferred\"} 2",
            "outpost_pull_changes_total 3",
            "outpost_open_connections 1",
            "outpost_connection_timeouts_total{kind=\"header_read\"} 1",
            "# TYPE outpost_http_request_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("secret"));
        drop(_c);
        assert!(m.render().contains("outpost_open_connections 0\n"));
    }
}
