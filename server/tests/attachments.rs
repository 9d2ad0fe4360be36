//! Attachments against the real binary, on SQLite and PostgreSQL: resumable uploads by
//! offset, the hash check, ranged downloads, access that follows the records referring
//! to a file (cross-team `404`), the size limit and the quota (`413`), and the purge of
//! uploads that never finish.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use outpost_testkit::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Deterministic bytes that do not repeat in any short period.
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32 ^ u32::from(seed);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn upload(
    s: &TestServer,
    token: &str,
    sha: &str,
    size: usize,
    offset: usize,
    body: &[u8],
) -> (u16, Value) {
    let r = s
        .client()
        .post(s.url(&format!(
            "/v1/attachments/{sha}?size={size}&offset={offset}"
        )))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    if r.status() == 409 {
        // The one error answer with a member besides `error`: where the upload stands.
        let b: Value = r.json().await.unwrap();
        assert_error_shape(&json!({"error": b["error"]}));
        return (409, b);
    }
    answer(r).await
}

async fn status(s: &TestServer, token: &str, sha: &str) -> (u16, Value) {
    let r = s
        .client()
        .get(s.url(&format!("/v1/attachments/{sha}/status")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    answer(r).await
}

/// Status, headers and bytes of a download.
async fn download(
    s: &TestServer,
    token: &str,
    sha: &str,
    range: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = s
        .client()
        .get(s.url(&format!("/v1/attachments/{sha}")))
        .bearer_auth(token);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let r = req.send().await.unwrap();
    let st = r.status().as_u16();
    let h = r.headers().clone();
    (st, h, r.bytes().await.unwrap().to_vec())
}

fn reference(sha: &str, size: usize) -> Value {
    json!({"$attachment": sha, "size": size, "type": "image/jpeg", "name": "wound.jpg"})
}

async fn uploads_resume_by_offset_and_downloads_honour_range(backend: Backend) {
    let s = TestServer::start(&backend);
    let data = bytes(300_000, 1);
    let h = sha(&data);
    // Nothing yet: not found, for the uploader too.
    assert_eq!(status(&s, AMINA, &h).await.0, 404);
    let (st, b) = upload(&s, AMINA, &h, data.len(), 0, &data[..100_000]).await;
    assert_eq!(
        (st, &b["received"], &b["complete"]),
        (200, &json!(100_000), &json!(false)),
        "{b}"
    );
    // A gap is refused with where the upload stands.
    let (st, b) = upload(&s, AMINA, &h, data.len(), 150_000, &data[150_000..]).await;
    assert_eq!(
        (st, &b["error"]["code"], &b["received"]),
        (409, &json!("offset_mismatch"), &json!(100_000))
    );
    // A repeated chunk that overlaps what is held is harmless: the rest is taken.
    let (st, b) = upload(&s, AMINA, &h, data.len(), 50_000, &data[50_000..200_000]).await;
    assert_eq!((st, &b["received"]), (200, &json!(200_000)), "{b}");
    let (st, b) = status(&s, AMINA, &h).await;
    assert_eq!(
        b,
        json!({"sha256": h, "size": 300_000, "received": 200_000, "complete": false}),
        "{st}"
    );
    // Another size for the same upload is refused.
    assert_eq!(upload(&s, AMINA, &h, 5, 0, b"").await.0, 400);
    let (st, b) = upload(&s, AMINA, &h, data.len(), 200_000, &data[200_000..]).await;
    assert_eq!(
        (st, &b["complete"], &b["received"]),
        (200, &json!(true), &json!(300_000)),
        "{b}"
    );
    // Done is done: a repeat answers complete and changes nothing.
    let (st, b) = upload(&s, AMINA, &h, data.len(), 0, &data[..10]).await;
    assert_eq!((st, &b["complete"]), (200, &json!(true)));

    let (st, headers, got) = download(&s, AMINA, &h, None).await;
    assert_eq!(st, 200);
    assert!(got == data, "the whole file, byte for byte");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert!(headers.get("content-encoding").is_none());
    let (st, headers, got) = download(&s, AMINA, &h, Some("bytes=123456-")).await;
    assert_eq!(st, 206);
    assert!(got == data[123_456..]);
    assert_eq!(headers["content-range"], "bytes 123456-299999/300000");
    let (st, _, got) = download(&s, AMINA, &h, Some("bytes=10-19")).await;
    assert_eq!((st, &got[..]), (206, &data[10..20]));
    let (st, headers, got) = download(&s, AMINA, &h, Some("bytes=300000-")).await;
    assert_eq!(st, 416);
    assert_eq!(headers["content-range"], "bytes */300000");
    assert_error_shape(&serde_json::from_slice(&got).unwrap());

    // Bad names and parameters are 400s, never 500s.
    let (st, b) = upload(&s, AMINA, "ABC", 1, 0, b"x").await;
    assert_eq!(st, 400);
    assert_error_shape(&b);
    let (st, _) = status(&s, AMINA, &"A".repeat(64)).await;
    assert_eq!(st, 400);
    let r = s
        .client()
        .post(s.url(&format!("/v1/attachments/{h}?size=x&offset=0")))
        .bearer_auth(AMINA)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(status(&s, "wrong-token", &h).await.0, 401);
    // More bytes than the size: refused, nothing past the size kept.
    let small = bytes(10, 2);
    let (st, _) = upload(&s, AMINA, &sha(&small), 10, 0, &bytes(20, 2)).await;
    assert_eq!(st, 400);
}

/// One request of many megabytes is counted every few as it arrives, while the next
/// bytes keep coming: cut short, it keeps every byte that got through, and the upload
/// goes on from there to a file that matches its hash.
async fn a_long_request_cut_short_keeps_what_arrived(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start(&backend);
    let mib = 1024 * 1024;
    let data = bytes(20 * mib, 11);
    let h = sha(&data);
    let sent = 18 * mib;
    let mut conn = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    let head = format!(
        "POST /v1/attachments/{h}?size={}&offset=0 HTTP/1.1\r\nhost: {}\r\n\
         authorization: Bearer {AMINA}\r\ncontent-type: application/octet-stream\r\n\
         content-length: {}\r\n\r\n",
        data.len(),
        s.addr(),
        data.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&data[..sent]).await.unwrap();
    // The body ends two megabytes short of what it announced.
    conn.shutdown().await.unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), conn.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Every count of that request landed before it answered: the first status shows
    // every byte that arrived.
    let (st, b) = status(&s, AMINA, &h).await;
    assert_eq!((st, &b["received"]), (200, &json!(sent)), "{b}");
    let (st, b) = upload(&s, AMINA, &h, data.len(), sent, &data[sent..]).await;
    assert_eq!((st, &b["complete"]), (200, &json!(true)), "{b}");
    assert!(download(&s, AMINA, &h, None).await.2 == data);
}

async fn a_corrupted_upload_is_rejected_and_can_be_sent_again(backend: Backend) {
    let s = TestServer::start(&backend);
    let data = bytes(70_000, 3);
    let h = sha(&data);
    let mut bad = data.clone();
    bad[65_000] ^= 0x40;
    let (st, b) = upload(&s, BEN, &h, data.len(), 0, &bad[..40_000]).await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = upload(&s, BEN, &h, data.len(), 40_000, &bad[40_000..]).await;
    assert_eq!(
        (st, &b["error"]["code"]),
        (400, &json!("invalid_request")),
        "{b}"
    );
    // Discarded: no upload, no file.
    assert_eq!(status(&s, BEN, &h).await.0, 404);
    assert_eq!(download(&s, BEN, &h, None).await.0, 404);
    let (st, b) = upload(&s, BEN, &h, data.len(), 0, &data).await;
    assert_eq!((st, &b["complete"]), (200, &json!(true)), "{b}");
    assert!(download(&s, BEN, &h, None).await.2 == data);
}

async fn access_follows_the_records_that_refer_to_a_file(backend: Backend) {
    let s = TestServer::start(&backend);
    let data = bytes(5_000, 4);
    let h = sha(&data);
    assert_eq!(upload(&s, AMINA, &h, data.len(), 0, &data).await.0, 200);
    // Ben (same team) and Chioma (other team) know nothing of it yet.
    for t in [BEN, CHIOMA] {
        assert_eq!(status(&s, t, &h).await.0, 404);
        assert_eq!(download(&s, t, &h, None).await.0, 404);
    }
    // A team record refers to it: Ben may read it, Chioma still not.
    let r = s
        .push(
            AMINA,
            vec![put(
                "surveys",
                "s1",
                None,
                json!({"photo": reference(&h, data.len())}),
            )],
        )
        .await;
    assert_eq!(r[0]["status"], "applied");
    let (st, b) = status(&s, BEN, &h).await;
    assert_eq!((st, &b["complete"]), (200, &json!(true)));
    assert!(download(&s, BEN, &h, None).await.2 == data);
    assert_eq!(status(&s, CHIOMA, &h).await.0, 404);
    assert_eq!(download(&s, CHIOMA, &h, None).await.0, 404);
    // An upload by Chioma does not reveal Amina's: she must send every byte herself.
    let (st, b) = upload(&s, CHIOMA, &h, data.len(), 0, &data[..100]).await;
    assert_eq!(
        (st, &b["received"], &b["complete"]),
        (200, &json!(100), &json!(false))
    );
    let (st, b) = upload(&s, CHIOMA, &h, data.len(), 100, &data[100..]).await;
    assert_eq!((st, &b["complete"]), (200, &json!(true)));
    assert!(download(&s, CHIOMA, &h, None).await.2 == data);

    // A file referred to only from a private record is Amina's alone.
    let other = bytes(800, 5);
    let ho = sha(&other);
    assert_eq!(upload(&s, AMINA, &ho, other.len(), 0, &other).await.0, 200);
    s.push(
        AMINA,
        vec![put(
            "drafts",
            "d1",
            None,
            json!({"sig": reference(&ho, other.len())}),
        )],
    )
    .await;
    assert_eq!(status(&s, BEN, &ho).await.0, 404);
    // From a shared one, everyone's.
    s.push(
        AMINA,
        vec![put(
            "forms",
            "f1",
            None,
            json!({"x": [{"sig": reference(&ho, other.len())}]}),
        )],
    )
    .await;
    assert_eq!(status(&s, CHIOMA, &ho).await.0, 200);
    // A referenced file not yet uploaded shows as pending to a reader.
    let later = sha(b"not uploaded yet");
    s.push(
        AMINA,
        vec![put(
            "surveys",
            "s2",
            None,
            json!({"photo": reference(&later, 16)}),
        )],
    )
    .await;
    let (st, b) = status(&s, BEN, &later).await;
    assert_eq!(
        b,
        json!({"sha256": later, "size": 16, "received": 0, "complete": false}),
        "{st}"
    );
    assert_eq!(download(&s, BEN, &later, None).await.0, 404);

    // The record changes to another file, then goes: Ben's access goes with it.
    s.push(
        AMINA,
        vec![patch("surveys", "s1", Some(1), json!({"photo": null}))],
    )
    .await;
    assert_eq!(status(&s, BEN, &h).await.0, 404);
    s.push(
        AMINA,
        vec![put(
            "surveys",
            "s3",
            None,
            json!({"p": reference(&h, data.len())}),
        )],
    )
    .await;
    assert_eq!(status(&s, BEN, &h).await.0, 200);
    s.push(AMINA, vec![delete("surveys", "s3", Some(1))]).await;
    assert_eq!(status(&s, BEN, &h).await.0, 404);
    // The uploader keeps hers.
    assert_eq!(status(&s, AMINA, &h).await.0, 200);
}

async fn the_size_limit_and_the_quota_give_413(backend: Backend) {
    let s = TestServer::start_with(
        &backend,
        "max_attachment_mib = 1\nattachment_quota_mib = 1.5",
    );
    let big = 1024 * 1024 + 1;
    let (st, b) = upload(&s, AMINA, &sha(b"big"), big, 0, b"").await;
    assert_eq!(
        (st, &b["error"]["code"]),
        (413, &json!("payload_too_large")),
        "{b}"
    );
    let one = bytes(1024 * 1024, 6);
    let (st, b) = upload(&s, AMINA, &sha(&one), one.len(), 0, &one).await;
    assert_eq!((st, &b["complete"]), (200, &json!(true)), "{b}");
    // The quota counts what is stored and what is under way.
    let two = bytes(600 * 1024, 7);
    let (st, b) = upload(&s, AMINA, &sha(&two), two.len(), 0, &two[..10]).await;
    assert_eq!(
        (st, &b["error"]["code"]),
        (413, &json!("payload_too_large")),
        "{b}"
    );
    // Another user has a quota of their own.
    let (st, _) = upload(&s, BEN, &sha(&two), two.len(), 0, &two).await;
    assert_eq!(st, 200);
}

async fn unfinished_uploads_are_purged(backend: Backend) {
    let s = TestServer::start_with(
        &backend,
        "incomplete_upload_hours = 0\npurge_interval_secs = 0.2",
    );
    let data = bytes(10_000, 8);
    let h = sha(&data);
    // With no grace at all, the purge may take the upload while its first request is
    // still under way (a `400`: start again); it takes a later one no less.
    let mut tries = 0;
    loop {
        let (st, b) = upload(&s, AMINA, &h, data.len(), 0, &data[..5_000]).await;
        if st == 200 {
            break;
        }
        tries += 1;
        assert!(st == 400 && tries < 20, "{st} {b}");
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(&s, AMINA, &h).await.0 != 404 {
        assert!(
            Instant::now() < deadline,
            "the unfinished upload was never purged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if backend == Backend::Sqlite {
        let left = std::fs::read_dir(s.dir().join("attachments/uploads"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "its bytes went too");
    }
    // It starts again from zero.
    let (st, b) = upload(&s, AMINA, &h, data.len(), 0, &data).await;
    assert_eq!((st, &b["complete"]), (200, &json!(true)));
}

outpost_testkit::backend_tests!(
    "attachments":
    uploads_resume_by_offset_and_downloads_honour_range,
    a_long_request_cut_short_keeps_what_arrived,
    a_corrupted_upload_is_rejected_and_can_be_sent_again,
    access_follows_the_records_that_refer_to_a_file,
    the_size_limit_and_the_quota_give_413,
    unfinished_uploads_are_purged,
);

/// The S3-compatible server of `OUTPOST_TEST_S3_URL` (`scripts/s3.sh` starts one), or a
/// printed skip.
fn s3_or_skip(test: &str) -> Option<String> {
    match std::env::var("OUTPOST_TEST_S3_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("SKIPPED s3: {test} (set OUTPOST_TEST_S3_URL; scripts/s3.sh starts one)");
            None
        }
    }
}

/// Several server processes over one PostgreSQL database and one bucket: an upload
/// started on one goes on at another, a corrupted one is refused there, and every
/// process serves the file.
#[tokio::test]
async fn scale_out_over_one_bucket() {
    let Some(url) = s3_or_skip("attachments::scale_out_over_one_bucket") else {
        return;
    };
    let Some(backend) = Backend::postgres_or_skip("attachments::scale_out_over_one_bucket") else {
        return;
    };
    let bucket = format!("outpost-test-{}", uuid_like());
    let settings = format!(
        "[attachments_s3]\nendpoint = {url:?}\nbucket = {bucket:?}\nregion = \"us-east-1\"\n\
         access_key_id = \"testing\"\nsecret_access_key = \"testing\"\nprefix = \"t/\"\n"
    );
    let config = outpost_server::Config::parse(
        &base_config("postgres://unused@127.0.0.1/x", &settings),
        std::path::Path::new("."),
    )
    .unwrap();
    let store =
        outpost_server::attachments::s3::S3Store::new(config.attachments.s3.as_ref().unwrap())
            .unwrap();
    store.ensure_bucket().await.unwrap();

    let a = TestServer::start_with(&backend, &settings);
    let b = a.another();
    let data = bytes(2_500_000, 9);
    let h = sha(&data);
    let (st, r) = upload(&a, AMINA, &h, data.len(), 0, &data[..1_300_000]).await;
    assert_eq!((st, &r["received"]), (200, &json!(1_300_000)), "{r}");
    let (st, r) = status(&b, AMINA, &h).await;
    assert_eq!((st, &r["received"]), (200, &json!(1_300_000)));
    let (st, r) = upload(&b, AMINA, &h, data.len(), 1_300_000, &data[1_300_000..]).await;
    assert_eq!((st, &r["complete"]), (200, &json!(true)), "{r}");
    for s in [&a, &b] {
        assert!(download(s, AMINA, &h, None).await.2 == data);
        let (st, _, got) = download(s, AMINA, &h, Some("bytes=2000000-")).await;
        assert_eq!(st, 206);
        assert!(got == data[2_000_000..]);
    }
    // A corrupted upload is refused and leaves no file.
    let other = bytes(40_000, 10);
    let ho = sha(&other);
    let mut bad = other.clone();
    bad[7] ^= 1;
    assert_eq!(
        upload(&a, BEN, &ho, other.len(), 0, &bad[..20_000]).await.0,
        200
    );
    assert_eq!(
        upload(&b, BEN, &ho, other.len(), 20_000, &bad[20_000..])
            .await
            .0,
        400
    );
    assert_eq!(download(&a, BEN, &ho, None).await.0, 404);
    assert_eq!(upload(&b, BEN, &ho, other.len(), 0, &other).await.0, 200);
    assert!(download(&a, BEN, &ho, None).await.2 == other);
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
