//! Figure 10: an attachment's upload through the sync engine and the real server,
//! against a raw HTTP upload of the same bytes.
//!
//! The engine's side is what an app gets: `attach` (untimed), then one `sync_now`
//! whose only work is the file: it asks the server's status, sends the file in
//! requests that grow with each success, and the server stores each part durably,
//! checks the SHA-256 and moves the file into place. The baseline is one `POST` of the
//! whole file to a minimal endpoint that streams it into a file and fsyncs it.
//!
//! Each round uploads different bytes: the server stores a file once, so the same
//! bytes again would cost the engine only a status request.

use std::path::Path;
use std::time::Instant;

use axum::body::Body;
use http_body_util::BodyExt;
use outpost_core::{ConflictStrategy, HttpTimeouts, HttpTransport, Store, StoreConfig};
use tokio::io::AsyncWriteExt;

use crate::net::{check, engine};
use crate::util::{Result, fail};

/// Bytes that do not compress, as a photo's; a round's own.
fn photo(n: usize, round: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ ((round as u64 + 1) << 32);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Seconds for the engine to upload round `round`'s `n` bytes to the real server at
/// `url`.
pub fn upload_real(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    url: &str,
    round: usize,
    n: usize,
) -> Result<f64> {
    let config = StoreConfig::default().with_collection("surveys", ConflictStrategy::LastWriteWins);
    let store = Store::open(dir.join(format!("f10-r{round}.db")), config)?;
    let http = HttpTransport::new(url, HttpTimeouts::default())?;
    let engine = engine(rt, &store, std::sync::Arc::new(http));
    // A first sync, so the timed one has no record work and a warm connection.
    check(&rt.block_on(engine.sync_now(None)), "warm-up sync")?;
    let bytes = photo(n, round);
    store.attach_bytes(&bytes, "image/jpeg", None)?;
    drop(bytes);
    let t0 = Instant::now();
    let report = rt.block_on(engine.sync_now(None));
    let el = t0.elapsed().as_secs_f64();
    check(&report, "upload sync")?;
    if report.files_uploaded != 1 || report.file_bytes_sent < n as u64 {
        return Err(fail(format!("the file did not upload in full: {report:?}")));
    }
    engine.shutdown();
    store.close();
    Ok(el)
}

/// A minimal upload endpoint: the body streamed into a file, fsynced, answered 200.
async fn mini_upload_server(dir: &Path) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let target = dir.to_path_buf();
    let app = axum::Router::new().route(
        "/upload/{name}",
        axum::routing::post(
            move |axum::extract::Path(name): axum::extract::Path<String>, body: Body| {
                let path = target.join(name);
                async move {
                    let write = async {
                        let mut f = tokio::fs::File::create(&path).await?;
                        let mut body = body;
                        while let Some(frame) = body.frame().await {
                            if let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() {
                                f.write_all(&data).await?;
                            }
                        }
                        f.sync_all().await?;
                        Ok::<_, std::io::Error>(())
                    };
                    match write.await {
                        Ok(()) => Ok("ok"),
                        Err(e) => {
                            Err((axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
                        }
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}/upload"), handle))
}

/// Seconds for one raw `POST` of round `round`'s `n` bytes to the minimal endpoint.
pub fn upload_baseline(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    round: usize,
    n: usize,
) -> Result<f64> {
    let (url, server) = rt.block_on(mini_upload_server(dir))?;
    let bytes = photo(n, round);
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    rt.block_on(async {
        http.post(format!("{url}/f10-raw-r{round}"))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await?
            .error_for_status()
    })?;
    let el = t0.elapsed().as_secs_f64();
    server.abort();
    Ok(el)
}
