//! Turning a push body into ops: gzip decoding and strict JSON parsing, within bounds
//! on size, on the values built, and on how many large bodies are parsed at once.
//!
//! A few kilobytes of gzip inflate to 8 MiB of JSON, and 8 MiB of small JSON values
//! parse into a tree many times that size, so each of those steps is bounded where it
//! happens: inflating stops one byte past 8 MiB, parsing stops past
//! [`MAX_JSON_VALUES`]. That bounds one request; a semaphore bounds how many large ones
//! are decoded and parsed together, so N concurrent bombs cost what the permits allow,
//! not N times it. Small bodies, which are most pushes, never wait for a permit.
//!
//! Large bodies are parsed on a few threads of their own rather than on tokio's
//! blocking pool: the allocator keeps freed memory per thread arena, so parses spread
//! over many pool threads would each leave a tree's worth behind, and memory would grow
//! with the number of threads that ever parsed, not with the permits.

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};

use outpost_core::protocol::{MAX_BODY_BYTES, MAX_JSON_DEPTH};
use tokio::sync::{Semaphore, oneshot};

use crate::error::ApiError;
use crate::json::{JsonError, MAX_JSON_VALUES, parse_bounded};
use crate::logic::{self, BadPush, PushBatch};

/// A body at most this long, raw and decoded, is parsed without a permit: its tree is
/// a few MiB at most.
const SMALL_BODY: usize = 64 * 1024;

/// Decodes and parses push bodies, a bounded number of large ones at a time.
#[derive(Debug, Clone)]
pub struct BodyParser {
    large: Arc<Semaphore>,
    /// The threads that parse large bodies, one per permit; they end when the last
    /// clone of this is dropped.
    workers: mpsc::Sender<Job>,
    max_values: usize,
}

type Job = Box<dyn FnOnce() + Send>;

impl Default for BodyParser {
    /// One large parse per core, up to four: the work is CPU-bound, so more at once
    /// would only hold more memory.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        BodyParser::new(cores.clamp(1, 4), MAX_JSON_VALUES)
    }
}

impl BodyParser {
    pub fn new(large_at_once: usize, max_values: usize) -> BodyParser {
        let n = large_at_once.max(1);
        let (workers, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..n {
            let jobs = Arc::clone(&jobs);
            let spawned = std::thread::Builder::new()
                .name(format!("outpost-parse-{i}"))
                .spawn(move || {
                    loop {
                        let job = match jobs.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        // A panic fails its request (its answer channel drops), not
                        // the thread.
                        let _ = catch_unwind(AssertUnwindSafe(job));
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a parser thread");
            }
        }
        BodyParser {
            large: Arc::new(Semaphore::new(n)),
            workers,
            max_values,
        }
    }

    /// Runs `f` on a parser thread; the caller holds a permit.
    async fn on_worker<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.workers
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| ApiError::internal())?;
        rx.await.map_err(|_| ApiError::internal())?
    }

    /// The ops of a push body as read from the wire (`gzip`: Content-Encoding gzip).
    pub async fn push_batch(&self, raw: Vec<u8>, gzip: bool) -> Result<PushBatch, ApiError> {
        let raw = Arc::new(raw);
        let max_values = self.max_values;
        if raw.len() <= SMALL_BODY {
            let small = Arc::clone(&raw);
            let done = blocking(move || match decode(&small, gzip, SMALL_BODY)? {
                Decoded::Whole(bytes) => parse_push(&bytes, max_values).map(Some),
                Decoded::Longer => Ok(None),
            })
            .await?;
            if let Some(batch) = done {
                return Ok(batch);
            }
        }
        // Waiting here holds no thread; only the raw body, which is already bounded.
        let _permit = self
            .large
            .acquire()
            .await
            .map_err(|_| ApiError::internal())?;
        self.on_worker(move || match decode(&raw, gzip, MAX_BODY_BYTES)? {
            Decoded::Whole(bytes) => parse_push(&bytes, max_values),
            Decoded::Longer => Err(ApiError::too_large()),
        })
        .await
    }
}

/// Runs CPU work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::internal())?
}

enum Decoded {
    Whole(Vec<u8>),
    /// More than the limit asked for.
    Longer,
}

/// The body's bytes, if they are at most `limit` once decoded. Inflating stops one
/// byte past the limit, so a bomb costs at most that much memory.
fn decode(raw: &[u8], gzip: bool, limit: usize) -> Result<Decoded, ApiError> {
    if !gzip {
        return Ok(if raw.len() > limit {
            Decoded::Longer
        } else {
            Decoded::Whole(raw.to_vec())
        });
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(raw)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| ApiError::bad_request("the body is not valid gzip"))?;
    Ok(if out.len() > limit {
        Decoded::Longer
    } else {
        Decoded::Whole(out)
    })
}

fn parse_push(bytes: &[u8], max_values: usize) -> Result<PushBatch, ApiError> {
    let value = parse_bounded(bytes, MAX_JSON_DEPTH, max_values).map_err(|e| match e {
        // Like a body over 8 MiB, this is about how much is sent at once, not about
        // what it says: the answer tells the client to send less per request.
        JsonError::TooMany(_) => ApiError::new(
            outpost_core::protocol::ErrorCode::PayloadTooLarge,
            e.to_string(),
        ),
        JsonError::Utf8 | JsonError::TooDeep(_) | JsonError::Malformed(_) => {
            ApiError::bad_request(e.to_string())
        }
    })?;
    logic::read_push(value).map_err(|BadPush(m)| ApiError::bad_request(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn code(r: Result<PushBatch, ApiError>) -> String {
        r.map(|_| "ok".to_owned())
            .unwrap_or_else(|e| e.code.as_str().to_owned())
    }

    #[tokio::test]
    async fn bodies_small_and_large_raw_and_gzipped() {
        let p = BodyParser::new(1, 1000);
        let ok = br#"{"client_id":"c","ops":[]}"#.to_vec();
        assert_eq!(code(p.push_batch(ok.clone(), false).await), "ok");
        assert_eq!(code(p.push_batch(gzip(&ok), true).await), "ok");
        // Large once decoded, small on the wire: goes the permit's way, still fine.
        let padded = format!(r#"{{"client_id":"c","ops":[]{}}}"#, " ".repeat(200_000));
        assert_eq!(
            code(p.push_batch(gzip(padded.as_bytes()), true).await),
            "ok"
        );
        assert_eq!(
            code(p.push_batch(padded.clone().into_bytes(), false).await),
            "ok"
        );
        // Too many values: 413, whichever way it came.
        let bomb = format!(r#"{{"client_id":"c","ops":[{}[]]}}"#, "[],".repeat(2000));
        assert_eq!(
            code(p.push_batch(bomb.clone().into_bytes(), false).await),
            "payload_too_large"
        );
        assert_eq!(
            code(p.push_batch(gzip(bomb.as_bytes()), true).await),
            "payload_too_large"
        );
        // Over 8 MiB once inflated: 413; not gzip at all: 400.
        let huge = gzip(&vec![b' '; MAX_BODY_BYTES + 1]);
        assert!(huge.len() < SMALL_BODY);
        assert_eq!(code(p.push_batch(huge, true).await), "payload_too_large");
        assert_eq!(
            code(p.push_batch(b"nope".to_vec(), true).await),
            "invalid_request"
        );
        assert_eq!(
            code(p.push_batch(b"[1,".to_vec(), false).await),
            "invalid_request"
        );
    }
}
