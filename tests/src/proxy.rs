//! A TCP proxy on loopback that plays a bad mobile link for HTTP/1.1: it cuts every
//! connection once it has carried a number of bytes, can throttle, can damage one
//! byte of the next attachment upload's body, and can refuse large bodies with `413`
//! as a reverse proxy with a body limit does. It counts the bytes it carried each way
//! and reads the request lines going through, so a test can see what the device sent
//! (offsets, ranges) and how much, as the radio would.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the link behaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkShape {
    /// Bytes a connection carries towards the server before it is cut; `None`: never.
    pub cut_up_after: Option<u64>,
    /// The same towards the device.
    pub cut_down_after: Option<u64>,
    /// Bytes per second each way; `None`: as fast as loopback.
    pub rate: Option<u64>,
    /// A request announcing a longer body is answered `413` by the proxy (an HTML
    /// page, as nginx's `client_max_body_size` gives) and never reaches the server.
    pub max_body: Option<u64>,
}

#[derive(Debug, Default)]
struct Shared {
    up: AtomicU64,
    down: AtomicU64,
    cuts: AtomicU64,
    refused: AtomicU64,
    corrupt_next_upload: AtomicBool,
    /// Request line and `Range` header of each request, in order.
    requests: Mutex<Vec<(String, Option<String>)>>,
}

/// A running proxy; it stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on a loopback port and forwards to `target` (`host:port`).
    pub async fn start(target: &str, shape: LinkShape) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let s = Arc::clone(&s);
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        relay(client, server, shape, s).await;
                    }
                });
            }
        });
        Proxy { addr, shared, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Bytes carried towards the server, and towards the device.
    pub fn bytes_up(&self) -> u64 {
        self.shared.up.load(Ordering::SeqCst)
    }

    pub fn bytes_down(&self) -> u64 {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Requests refused for a body over [`LinkShape::max_body`].
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Flips one byte in the body of the next attachment upload that goes through.
    pub fn corrupt_next_upload(&self) {
        self.shared
            .corrupt_next_upload
            .store(true, Ordering::SeqCst);
    }

    /// Request lines seen (`POST /v1/attachments/…?size=…&offset=… HTTP/1.1`), each
    /// with its `Range` header.
    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Reads the requests going up one connection: their heads, and how long each body is,
/// to find the next head and the bytes of upload bodies.
#[derive(Debug, Default)]
struct Requests {
    head: Vec<u8>,
    /// Body bytes of the current request still to pass.
    body_left: u64,
    /// The current request is an upload whose body is to be damaged at this offset.
    damage_at: Option<u64>,
    body_seen: u64,
    max_body: Option<u64>,
}

impl Requests {
    /// Looks at bytes going up, damaging one if asked; true when a request's body is
    /// over the limit: nothing more goes to the server.
    fn pass(&mut self, data: &mut [u8], shared: &Shared) -> bool {
        let mut i = 0;
        while i < data.len() {
            if self.body_left > 0 {
                let n = (self.body_left as usize).min(data.len() - i);
                if let Some(at) = self.damage_at
                    && at >= self.body_seen
                    && at < self.body_seen + n as u64
                {
                    data[i + (at - self.body_seen) as usize] ^= 0x5a;
                    self.damage_at = None;
                }
                self.body_seen += n as u64;
                self.body_left -= n as u64;
                i += n;
                continue;
            }
            self.head.push(data[i]);
            i += 1;
            if self.head.ends_with(b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&self.head).into_owned();
                self.head.clear();
                let mut lines = text.split("\r\n");
                let line = lines.next().unwrap_or_default().to_owned();
                let mut range = None;
                for l in lines {
                    if let Some((k, v)) = l.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            self.body_left = v.trim().parse().unwrap_or(0);
                        } else if k.eq_ignore_ascii_case("range") {
                            range = Some(v.trim().to_owned());
                        }
                    }
                }
                self.body_seen = 0;
                if self.max_body.is_some_and(|m| self.body_left > m) {
                    shared.refused.fetch_add(1, Ordering::SeqCst);
                    return true;
                }
                if line.starts_with("POST /v1/attachments/")
                    && self.body_left > 0
                    && shared.corrupt_next_upload.swap(false, Ordering::SeqCst)
                {
                    self.damage_at = Some(self.body_left / 2);
                }
                shared
                    .requests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((line, range));
            }
        }
        false
    }
}

/// What nginx answers a body over its limit.
const TOO_LARGE: &str = "<html><head><title>413 Request Entity Too Large</title></head>\
<body><center><h1>413 Request Entity Too Large</h1></center></body></html>";

async fn relay(client: TcpStream, server: TcpStream, shape: LinkShape, shared: Arc<Shared>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut reqs = Requests {
        max_body: shape.max_body,
        ..Requests::default()
    };
    let up_shared = Arc::clone(&shared);
    let up = pump(
        &mut cr,
        &mut sw,
        shape.cut_up_after,
        shape.rate,
        &shared.up,
        &shared.cuts,
        |d| reqs.pass(d, &up_shared),
    );
    let down = pump(
        &mut sr,
        &mut cw,
        shape.cut_down_after,
        shape.rate,
        &shared.down,
        &shared.cuts,
        |_| false,
    );
    // A cut either way ends the connection both ways, as a dropped radio link does.
    let refused = tokio::select! {
        r = up => r,
        _ = down => false,
    };
    if refused {
        let answer = format!(
            "HTTP/1.1 413 Request Entity Too Large\r\ncontent-type: text/html\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{TOO_LARGE}",
            TOO_LARGE.len()
        );
        let _ = cw.write_all(answer.as_bytes()).await;
        let _ = cw.shutdown().await;
        // Read on and drop what the device still sends for a while, as nginx does:
        // closing with bytes unread would reset the connection and lose the answer.
        let mut sink = vec![0u8; 64 * 1024];
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while matches!(cr.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// Carries bytes one way until the end, an error, the cut, or `look` refusing what it
/// sees (then true, and those bytes are not carried).
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    cut_after: Option<u64>,
    rate: Option<u64>,
    count: &AtomicU64,
    cuts: &AtomicU64,
    mut look: impl FnMut(&mut [u8]) -> bool,
) -> bool {
    let mut carried = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    let mut refused = false;
    loop {
        let room = cut_after
            .map_or(buf.len() as u64, |l| l.saturating_sub(carried))
            .min(buf.len() as u64) as usize;
        if room == 0 {
            cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
        let n = match from.read(&mut buf[..room]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if look(&mut buf[..n]) {
            refused = true;
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        carried += n as u64;
        count.fetch_add(n as u64, Ordering::SeqCst);
        throttle(rate, n).await;
    }
    let _ = to.shutdown().await;
    refused
}

async fn throttle(rate: Option<u64>, n: usize) {
    if let Some(r) = rate.filter(|r| *r > 0) {
        tokio::time::sleep(Duration::from_micros(n as u64 * 1_000_000 / r)).await;
    }
}
