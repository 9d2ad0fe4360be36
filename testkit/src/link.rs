//! A field network on loopback: a TCP proxy in front of a server that gives every
//! connection through it the bandwidth, round trip and failures of a slow mobile link.
//!
//! Sync code that is only ever tested at loopback speed hides what users on EDGE-class
//! links live with: answers that take seconds to arrive, round trips that dominate small
//! requests, and links that drop a connection after a few kilobytes. [`SlowLink`]
//! models a link as one radio shared by all its connections: per direction a bandwidth
//! (bytes leave one after another, never faster than the rate), half the round trip as
//! the time each byte takes to cross, one round trip to open a connection, and two
//! failures applied per connection after a number of bytes downstream: closing it (like
//! toxiproxy's `limit_data`) or stalling it (nothing more arrives, nothing is closed).
//! It counts what crossed, so a test can compare bytes on the wire with what the data
//! needs. Timing follows the tokio clock, so runs are repeatable to within scheduling.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// How a link behaves. The default is a perfect link: no limit, no delay, no failure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkShape {
    /// Bytes per second from the server to the device; `None`: unlimited.
    pub down_bytes_per_s: Option<u64>,
    /// Bytes per second from the device to the server; `None`: unlimited.
    pub up_bytes_per_s: Option<u64>,
    /// Round trip: each byte takes half of it to cross, and opening a connection
    /// takes all of it.
    pub rtt: Duration,
    /// Close each connection (both ways) once this many bytes went down it.
    pub cut_after_down: Option<u64>,
    /// Stop delivering anything more down a connection once this many bytes went down
    /// it, leaving it open: the device waits for bytes that never come.
    pub stall_after_down: Option<u64>,
}

impl LinkShape {
    /// An EDGE-class link: `down` and `up` in bytes per second, and the round trip.
    pub fn edge(down: u64, up: u64, rtt: Duration) -> LinkShape {
        LinkShape {
            down_bytes_per_s: Some(down),
            up_bytes_per_s: Some(up),
            rtt,
            ..LinkShape::default()
        }
    }
}

/// What crossed a link so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounts {
    /// Bytes delivered to the server (TCP payload: requests with their headers).
    pub up: u64,
    /// Bytes delivered to the device.
    pub down: u64,
    /// Connections the device opened.
    pub connections: u64,
    /// Connections the link closed by [`LinkShape::cut_after_down`].
    pub cuts: u64,
    /// Connections the link stalled by [`LinkShape::stall_after_down`].
    pub stalls: u64,
}

/// One direction of the radio: bytes queue behind each other at its rate.
#[derive(Debug)]
struct Lane {
    /// When the last byte queued so far has left.
    free_at: Mutex<Instant>,
    delivered: AtomicU64,
}

impl Lane {
    fn new() -> Lane {
        Lane {
            free_at: Mutex::new(Instant::now()),
            delivered: AtomicU64::new(0),
        }
    }

    /// When `n` bytes read now arrive at the other end: after the bytes queued before
    /// them have left, their own time on the air, and the crossing.
    fn schedule(
        &self,
        n: usize,
        rate: Option<u64>,
        crossing: Duration,
        not_before: Instant,
    ) -> Instant {
        let now = Instant::now();
        let on_air = rate.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(n as f64 / r.max(1) as f64)
        });
        let mut free = lock(&self.free_at);
        let start = (*free).max(now);
        *free = start + on_air;
        (*free + crossing).max(not_before)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    shape: Mutex<LinkShape>,
    up: Lane,
    down: Lane,
    connections: AtomicU64,
    cuts: AtomicU64,
    stalls: AtomicU64,
}

/// A running link: a loopback port that forwards to the target through the shape.
/// Dropping it stops accepting and closes every connection through it.
#[derive(Debug)]
pub struct SlowLink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Largest piece read at once: small enough that pacing is smooth at a few KB/s.
const CHUNK: usize = 1024;
/// Pieces read ahead of delivery per direction of a connection, like a socket buffer.
const QUEUED_CHUNKS: usize = 16;

impl SlowLink {
    /// Listens on a free loopback port and forwards each connection to `target`.
    /// Needs a tokio runtime.
    pub async fn start(target: SocketAddr, shape: LinkShape) -> io::Result<SlowLink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            shape: Mutex::new(shape),
            up: Lane::new(),
            down: Lane::new(),
            connections: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
        });
        let accepting = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                accepting.connections.fetch_add(1, Ordering::SeqCst);
                conns.spawn(serve(client, Arc::clone(&accepting)));
                // Reap finished connections so the set does not grow.
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(SlowLink { addr, shared, task })
    }

    /// The address devices connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>/`, for a transport.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Changes the shape for bytes read from now on (and connections opened later).
    pub fn set_shape(&self, shape: LinkShape) {
        *lock(&self.shared.shape) = shape;
    }

    pub fn counts(&self) -> LinkCounts {
        let s = &self.shared;
        LinkCounts {
            up: s.up.delivered.load(Ordering::SeqCst),
            down: s.down.delivered.load(Ordering::SeqCst),
            connections: s.connections.load(Ordering::SeqCst),
            cuts: s.cuts.load(Ordering::SeqCst),
            stalls: s.stalls.load(Ordering::SeqCst),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Up,
    Down,
}

/// What a connection's down side does once its byte allowance is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spent {
    Cut,
    Stall,
}

/// A piece on its way, and whether it is the last the connection may carry.
struct Piece {
    at: Instant,
    bytes: Vec<u8>,
    last: Option<Spent>,
}

async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let opened = Instant::now();
    let Ok(upstream) = TcpStream::connect(shared.target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let shape = *lock(&shared.shape);
    // Opening a connection costs a round trip before the request can leave, then it
    // crosses like any byte.
    let ready = opened + shape.rtt + shape.rtt / 2;
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let cut = Notify::new();
    let up = pump(cr, uw, Way::Up, &shared, ready, &cut);
    let down = pump(ur, cw, Way::Down, &shared, opened, &cut);
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        // Returning drops all four halves: both sockets close.
        _ = cut.notified() => {}
    }
}

/// Carries one direction of a connection: reads pieces as they come, delivers each at
/// the time the lane gives it.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    way: Way,
    shared: &Shared,
    not_before: Instant,
    cut: &Notify,
) {
    let lane = match way {
        Way::Up => &shared.up,
        Way::Down => &shared.down,
    };
    let (tx, mut rx) = mpsc::channel::<Piece>(QUEUED_CHUNKS);
    let reading = async {
        let mut buf = vec![0u8; CHUNK];
        let mut carried: u64 = 0;
        let mut spent = None;
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let shape = *lock(&shared.shape);
            let (rate, allowance) = match way {
                Way::Up => (shape.up_bytes_per_s, None),
                Way::Down => (shape.down_bytes_per_s, allowance(&shape)),
            };
            let mut take = n;
            if let Some((limit, how)) = allowance {
                let left = limit.saturating_sub(carried);
                if n as u64 >= left {
                    take = usize::try_from(left).unwrap_or(n);
                    spent = Some(how);
                }
            }
            carried += take as u64;
            let piece = Piece {
                at: lane.schedule(take, rate, shape.rtt / 2, not_before),
                bytes: buf[..take].to_vec(),
                last: spent,
            };
            if tx.send(piece).await.is_err() || spent.is_some() {
                break;
            }
        }
        drop(tx);
        // A stalled connection keeps draining the server, as a real one would fill
        // socket buffers along the way, so the server is not what notices.
        if spent == Some(Spent::Stall) {
            while matches!(from.read(&mut buf).await, Ok(n) if n > 0) {}
        }
    };
    let writing = async {
        while let Some(p) = rx.recv().await {
            tokio::time::sleep_until(p.at).await;
            if !p.bytes.is_empty() {
                if to.write_all(&p.bytes).await.is_err() {
                    return;
                }
                lane.delivered
                    .fetch_add(p.bytes.len() as u64, Ordering::SeqCst);
            }
            match p.last {
                Some(Spent::Cut) => {
                    shared.cuts.fetch_add(1, Ordering::SeqCst);
                    let _ = to.flush().await;
                    cut.notify_one();
                    return;
                }
                Some(Spent::Stall) => {
                    shared.stalls.fetch_add(1, Ordering::SeqCst);
                    // Nothing more arrives, and nothing is closed: the connection
                    // ends when the device gives up on it and the server follows.
                    while rx.recv().await.is_some() {}
                    return;
                }
                None => {}
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reading, writing);
}

/// The bytes a connection may carry down, and what happens once they are spent.
fn allowance(shape: &LinkShape) -> Option<(u64, Spent)> {
    match (shape.cut_after_down, shape.stall_after_down) {
        (Some(c), _) => Some((c, Spent::Cut)),
        (None, Some(s)) => Some((s, Spent::Stall)),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A server that answers each line it reads with `size` bytes.
    async fn server(size: usize) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&vec![7u8; size]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn ask(link: &SlowLink) -> (Vec<u8>, Duration) {
        let started = Instant::now();
        let mut s = TcpStream::connect(link.addr()).await.unwrap();
        s.write_all(b"go\n").await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
            if got.len() >= 8000 {
                break;
            }
        }
        (got, started.elapsed())
    }

    #[tokio::test]
    async fn bandwidth_and_round_trip_set_the_time() {
        let target = server(8000).await;
        let shape = LinkShape::edge(16_000, 16_000, Duration::from_millis(200));
        let link = SlowLink::start(target, shape).await.unwrap();
        let (got, took) = ask(&link).await;
        assert_eq!(got.len(), 8000);
        // Connect (one round trip), request and answer (one more), 8000 bytes at
        // 16 kB/s (0.5 s): 0.9 s.
        let t = took.as_secs_f64();
        assert!((0.85..1.2).contains(&t), "took {t:.3} s");
        let c = link.counts();
        assert_eq!((c.up, c.down, c.connections), (3, 8000, 1));
    }

    #[tokio::test]
    async fn a_cut_link_closes_after_its_allowance_and_a_stalled_one_stays_silent() {
        let target = server(8000).await;
        let link = SlowLink::start(
            target,
            LinkShape {
                cut_after_down: Some(3000),
                ..LinkShape::default()
            },
        )
        .await
        .unwrap();
        let (got, took) = ask(&link).await;
        assert_eq!(got.len(), 3000, "exactly the allowance, then closed");
        assert!(took < Duration::from_millis(1000), "closed, not timed out");
        assert_eq!(link.counts().cuts, 1);

        link.set_shape(LinkShape {
            stall_after_down: Some(2000),
            ..LinkShape::default()
        });
        let (got, took) = ask(&link).await;
        assert_eq!(got.len(), 2000);
        assert!(
            took >= Duration::from_millis(1500),
            "stalled until the reader gave up"
        );
        assert_eq!(link.counts().stalls, 1);
    }
}
