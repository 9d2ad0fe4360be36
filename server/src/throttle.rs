//! Throttling of failed authentication per client address, and which address that is.
//!
//! Tokens are long enough not to be guessed, but a client that fails again and again
//! is either broken or guessing; after `auth_failures_per_minute` failures in a minute
//! its address gets 429 `rate_limited` with `Retry-After` on every authenticated route
//! until the minute ends, right token or not (else a guess that hits would still show).
//! Only failures count, so devices behind one clinic NAT are throttled only when they
//! fail that often together. IPv6 clients are counted per /64, which one host can
//! hold whole.
//!
//! Behind a reverse proxy every connection comes from the proxy; the proxies listed in
//! `trusted_proxies` are believed about the client they forward for
//! (`X-Forwarded-For`, read from the right, past the trusted hops), no one else is.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use outpost_core::protocol::ErrorCode;

use crate::error::ApiError;
use crate::http::AppState;

/// The address a request comes from, after trusted proxies; in request extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The client's address: the peer, unless the peer is a trusted proxy, then the
/// right-most address of `X-Forwarded-For` that is not a trusted proxy.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(s) = v.to_str() else {
            return peer;
        };
        for part in s.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                // A garbled list cannot be trusted past this point.
                Err(_) => return peer,
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer)
}

/// The unit failures are counted in: an IPv4 address, or an IPv6 /64.
fn key_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Addresses tracked at most; past it, windows that ended are dropped first.
const MAX_TRACKED: usize = 100_000;
const WINDOW: Duration = Duration::from_secs(60);

/// Failed authentications per address, in fixed one-minute windows.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthThrottle {
    /// How long `ip` must wait, if it has used up its failures.
    pub fn blocked_for(&self, ip: IpAddr, limit: u32, now: Instant) -> Option<Duration> {
        let map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let (start, failures) = *map.get(&key_of(ip))?;
        let left = WINDOW.checked_sub(now.saturating_duration_since(start))?;
        (failures >= limit && !left.is_zero()).then_some(left)
    }

    /// Counts a failure of `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (start, _)| now.saturating_duration_since(*start) < WINDOW);
            if map.len() >= MAX_TRACKED {
                tracing::warn!("too many addresses failing to authenticate; forgetting them");
                map.clear();
            }
        }
        let e = map.entry(key_of(ip)).or_insert((now, 0));
        if now.saturating_duration_since(e.0) >= WINDOW {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

/// Whether a route asks for a token (and so can fail authentication).
fn authenticated_route(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/metrics"
}

/// Middleware: records the client address, refuses throttled addresses on
/// authenticated routes, and counts each 401 against its address.
pub async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(peer) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        // Served by something other than our listener (a test harness): no address.
        return next.run(req).await;
    };
    let policy = state.policy();
    let ip = client_addr(peer, req.headers(), &policy.trusted_proxies);
    req.extensions_mut().insert(ClientAddr(ip));
    let limit = policy
        .auth_failures_per_minute
        .filter(|_| authenticated_route(req.uri().path()));
    drop(policy);
    let Some(limit) = limit else {
        return next.run(req).await;
    };
    let throttle = state.auth_throttle();
    if let Some(wait) = throttle.blocked_for(ip, limit, Instant::now()) {
        state.metrics().auth_throttled();
        let mut e = ApiError::new(
            ErrorCode::RateLimited,
            "too many failed authentications from this address; retry later",
        );
        e.retry_after = Some(wait.as_secs().max(1));
        return e.into_response();
    }
    let resp = next.run(req).await;
    if resp.status() == StatusCode::UNAUTHORIZED {
        state.metrics().auth_failed();
        throttle.failed(ip, Instant::now());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        let proxy = ip("10.0.0.1");
        // Not a trusted peer: the header is ignored.
        assert_eq!(client_addr(proxy, &h, &[]), proxy);
        // Trusted: the right-most untrusted hop.
        assert_eq!(
            client_addr(proxy, &h, &[proxy, ip("10.0.0.2")]),
            ip("203.0.113.9")
        );
        assert_eq!(client_addr(proxy, &h, &[proxy]), ip("10.0.0.2"));
        // A garbled header is not believed.
        h.insert("x-forwarded-for", "203.0.113.9, nonsense".parse().unwrap());
        assert_eq!(client_addr(proxy, &h, &[proxy]), proxy);
        assert_eq!(client_addr(proxy, &HeaderMap::new(), &[proxy]), proxy);
    }

    #[test]
    fn an_address_is_blocked_after_its_failures_until_the_window_ends() {
        let t = AuthThrottle::default();
        let a = ip("192.0.2.1");
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.blocked_for(a, 3, now), None);
            t.failed(a, now);
        }
        let wait = t.blocked_for(a, 3, now + Duration::from_secs(10)).unwrap();
        assert_eq!(wait, Duration::from_secs(50));
        assert_eq!(t.blocked_for(ip("192.0.2.2"), 3, now), None);
        assert_eq!(t.blocked_for(a, 3, now + WINDOW), None);
        t.failed(a, now + WINDOW);
        assert_eq!(t.blocked_for(a, 3, now + WINDOW), None, "a new window");
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        t.failed(ip("2001:db8:1:2::1"), now);
        t.failed(ip("2001:db8:1:2::ffff"), now);
        assert!(t.blocked_for(ip("2001:db8:1:2::7"), 2, now).is_some());
        assert!(t.blocked_for(ip("2001:db8:1:3::1"), 2, now).is_none());
        assert_eq!(key_of(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
