//! Files in an S3-compatible bucket, for several server processes over one PostgreSQL
//! database: every process sees every part and file.
//!
//! Plain HTTP requests signed with AWS Signature Version 4 (HMAC-SHA256 from the
//! crypto library the server already links), path-style, so any S3-compatible store
//! works: AWS, MinIO, Ceph, Garage. An upload's parts are objects
//! `<prefix>uploads/<upload id>/<offset>`; `finish` reads them back in order, checks
//! the hash and writes `<prefix>files/<sha256>` in one PUT (files are at most
//! `max_attachment_mib`, so one request and one buffer of that size).

use std::time::Duration;

use aws_lc_rs::{digest, hmac};
use axum::body::{Body, Bytes};
use sha2::{Digest, Sha256};

use super::blobs::{BlobError, BlobStore, Finished, blob_err};
use crate::config::S3Settings;
use crate::storage::BoxFuture;

/// One part per this many bytes of an upload request.
const PART_BYTES: usize = 1024 * 1024;

/// An S3-compatible bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    base: url::Url,
    bucket: String,
    region: String,
    access_key_id: String,
    secret: Vec<u8>,
    prefix: String,
    client: reqwest::Client,
}

/// Hex of a SHA-256.
fn sha_hex(b: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, b))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// RFC 3986 unreserved characters stay; everything else is %XX (SigV4's rule).
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A request to sign: everything SigV4 covers.
#[derive(Debug)]
pub(crate) struct ToSign<'a> {
    pub method: &'a str,
    /// `host` or `host:port`, as the Host header carries it.
    pub host: &'a str,
    /// The path, not yet encoded.
    pub path: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    /// Extra headers to sign (lowercase names), besides host and the x-amz ones.
    pub headers: &'a [(&'a str, &'a str)],
    pub payload_sha256: &'a str,
    /// `YYYYMMDD'T'HHMMSS'Z'`.
    pub amz_date: &'a str,
}

/// The `Authorization` header of a request, by AWS Signature Version 4.
pub(crate) fn authorization(r: &ToSign<'_>, region: &str, key_id: &str, secret: &[u8]) -> String {
    let mut query: Vec<(String, String)> = r
        .query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), r.host.to_owned()),
        ("x-amz-content-sha256".into(), r.payload_sha256.to_owned()),
        ("x-amz-date".into(), r.amz_date.to_owned()),
    ];
    headers.extend(
        r.headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned())),
    );
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        r.method,
        uri_encode(r.path, true),
        canonical_query,
        canonical_headers,
        signed,
        r.payload_sha256
    );
    let date = r.amz_date.get(..8).unwrap_or_default();
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        r.amz_date,
        sha_hex(canonical.as_bytes())
    );
    let mut k = hmac_sha256(&[b"AWS4".as_slice(), secret].concat(), date.as_bytes());
    for part in [region.as_bytes(), b"s3", b"aws4_request"] {
        k = hmac_sha256(&k, part);
    }
    let signature = hex::encode(hmac_sha256(&k, to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
}

fn amz_now() -> String {
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::now_utc()
        .format(f)
        .unwrap_or_default()
}

/// The text of every `<tag>…</tag>` in an XML answer (our keys need no unescaping).
fn xml_values<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(&rest[..j]);
        rest = &rest[j + close.len()..];
    }
    out
}

impl S3Store {
    pub fn new(s: &S3Settings) -> Result<S3Store, BlobError> {
        let base = url::Url::parse(&s.endpoint).map_err(blob_err)?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(blob_err)?;
        Ok(S3Store {
            base,
            bucket: s.bucket.clone(),
            region: s.region.clone(),
            access_key_id: s.access_key_id.clone(),
            secret: s.secret_access_key.expose().to_vec(),
            prefix: s.prefix.clone(),
            client,
        })
    }

    fn host(&self) -> String {
        match (self.base.host_str(), self.base.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => String::new(),
        }
    }

    /// Sends one signed request; a non-2xx answer is an error, except the statuses in
    /// `ok`.
    async fn send(
        &self,
        method: reqwest::Method,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Option<Bytes>,
        ok: &[u16],
    ) -> Result<reqwest::Response, BlobError> {
        let path = if key.is_empty() {
            format!("/{}", self.bucket)
        } else {
            format!("/{}/{}{key}", self.bucket, self.prefix)
        };
        let payload = body.as_deref().map_or_else(|| sha_hex(b""), sha_hex);
        let date = amz_now();
        let host = self.host();
        let auth = authorization(
            &ToSign {
                method: method.as_str(),
                host: &host,
                path: &path,
                query,
                headers,
                payload_sha256: &payload,
                amz_date: &date,
            },
            &self.region,
            &self.access_key_id,
            &self.secret,
        );
        let mut url = self.base.clone();
        url.set_path(&uri_encode(&path, true));
        if !query.is_empty() {
            let q: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
                .collect();
            url.set_query(Some(&q.join("&")));
        }
        let mut req = self
            .client
            .request(method, url)
            .header("x-amz-date", &date)
            .header("x-amz-content-sha256", &payload)
            .header("authorization", auth);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.map_err(blob_err)?;
        let status = resp.status().as_u16();
        if resp.status().is_success() || ok.contains(&status) {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        Err(BlobError(format!(
            "S3 answered {status}: {}",
            text.chars().take(300).collect::<String>()
        )))
    }

    /// The keys under `prefix` (without the store's own prefix), in key order.
    async fn list(&self, under: &str) -> Result<Vec<String>, BlobError> {
        let full = format!("{}{under}", self.prefix);
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![("list-type", "2"), ("prefix", full.as_str())];
            if let Some(t) = &token {
                q.push(("continuation-token", t.as_str()));
            }
            let xml = self
                .send(reqwest::Method::GET, "", &q, &[], None, &[])
                .await?
                .text()
                .await
                .map_err(blob_err)?;
            for k in xml_values(&xml, "Key") {
                if let Some(k) = k.strip_prefix(&self.prefix) {
                    keys.push(k.to_owned());
                }
            }
            token = xml_values(&xml, "NextContinuationToken")
                .first()
                .map(|s| (*s).to_owned());
            if token.is_none() || xml_values(&xml, "IsTruncated").first() != Some(&"true") {
                break;
            }
        }
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.send(reqwest::Method::DELETE, key, &[], &[], None, &[404])
            .await
            .map(|_| ())
    }

    async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        self.send(reqwest::Method::GET, key, &[], &[], None, &[])
            .await?
            .bytes()
            .await
            .map_err(blob_err)
    }

    /// Creates the bucket when it does not exist yet (for a fresh deployment or test).
    pub async fn ensure_bucket(&self) -> Result<(), BlobError> {
        self.send(reqwest::Method::PUT, "", &[], &[], None, &[409])
            .await
            .map(|_| ())
    }

    fn parts_of(upload: &str) -> String {
        format!("uploads/{upload}/")
    }
}

impl BlobStore for S3Store {
    fn part_bytes(&self) -> usize {
        PART_BYTES
    }

    fn write_part<'a>(
        &'a self,
        upload: &'a str,
        offset: u64,
        pieces: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            let bytes = match <[Bytes; 1]>::try_from(pieces) {
                Ok([one]) => one,
                Err(pieces) => Bytes::from(pieces.concat()),
            };
            // Zero-padded, so key order is offset order.
            let key = format!("{}{offset:020}", Self::parts_of(upload));
            self.send(reqwest::Method::PUT, &key, &[], &[], Some(bytes), &[])
                .await
                .map(|_| ())
        })
    }

    fn sync_parts<'a>(&'a self, _upload: &'a str) -> BoxFuture<'a, Result<(), BlobError>> {
        // A PUT the bucket answered is durable.
        Box::pin(async { Ok(()) })
    }

    fn finish<'a>(
        &'a self,
        upload: &'a str,
        size: u64,
        sha256: &'a str,
        hashed: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Finished, BlobError>> {
        Box::pin(async move {
            let file = format!("files/{sha256}");
            let keys = self.list(&Self::parts_of(upload)).await?;
            let exists = self
                .send(reqwest::Method::HEAD, &file, &[], &[], None, &[404])
                .await?
                .status()
                .is_success();
            let mut outcome = Finished::Stored;
            if !exists {
                // Parts in offset order; each adds what lies past the bytes so far.
                let mut whole = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                for key in &keys {
                    let Some(start) = key.rsplit('/').next().and_then(|o| o.parse::<u64>().ok())
                    else {
                        continue;
                    };
                    let have = whole.len() as u64;
                    if start > have || have >= size {
                        continue;
                    }
                    let bytes = self.get(key).await?;
                    let skip = usize::try_from(have - start).unwrap_or(usize::MAX);
                    if let Some(tail) = bytes.get(skip..) {
                        let room = usize::try_from(size - have).unwrap_or(usize::MAX);
                        whole.extend_from_slice(&tail[..tail.len().min(room)]);
                    }
                }
                let matches = || match hashed {
                    Some(h) => h == sha256,
                    None => hex::encode(Sha256::digest(&whole)) == sha256,
                };
                if whole.len() as u64 == size && matches() {
                    self.send(
                        reqwest::Method::PUT,
                        &file,
                        &[],
                        &[],
                        Some(Bytes::from(whole)),
                        &[],
                    )
                    .await?;
                } else {
                    outcome = Finished::Mismatch;
                }
            }
            for key in &keys {
                self.delete(key).await?;
            }
            Ok(outcome)
        })
    }

    fn discard<'a>(&'a self, upload: &'a str) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            for key in self.list(&Self::parts_of(upload)).await? {
                self.delete(&key).await?;
            }
            Ok(())
        })
    }

    fn read<'a>(
        &'a self,
        sha256: &'a str,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, Result<Body, BlobError>> {
        Box::pin(async move {
            if end <= start {
                return Ok(Body::empty());
            }
            let range = format!("bytes={start}-{}", end - 1);
            let resp = self
                .send(
                    reqwest::Method::GET,
                    &format!("files/{sha256}"),
                    &[],
                    &[("range", &range)],
                    None,
                    &[],
                )
                .await?;
            // Streamed on, chunk by chunk, as the bucket sends it.
            let stream = futures_util::stream::unfold(resp, |mut r| async move {
                match r.chunk().await {
                    Ok(Some(c)) => Some((Ok::<_, std::io::Error>(c), r)),
                    Ok(None) => None,
                    Err(e) => Some((Err(std::io::Error::other(e)), r)),
                }
            });
            Ok(Body::from_stream(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "GET Object" example of the SigV4 documentation for S3.
    #[test]
    fn signs_the_documented_example() {
        let auth = authorization(
            &ToSign {
                method: "GET",
                host: "examplebucket.s3.amazonaws.com",
                path: "/test.txt",
                query: &[],
                headers: &[("range", "bytes=0-9")],
                payload_sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                amz_date: "20130524T000000Z",
            },
            "us-east-1",
            "AKIAIOSFODNN7EXAMPLE",
            b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// The "GET Bucket (List Objects)" example: a signed query string.
    #[test]
    fn signs_a_query() {
        let auth = authorization(
            &ToSign {
                method: "GET",
                host: "examplebucket.s3.amazonaws.com",
                path: "/",
                query: &[("max-keys", "2"), ("prefix", "J")],
                headers: &[],
                payload_sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                amz_date: "20130524T000000Z",
            },
            "us-east-1",
            "AKIAIOSFODNN7EXAMPLE",
            b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        assert!(auth.ends_with(
            "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        ));
    }

    #[test]
    fn xml_values_are_found_in_order() {
        let xml = "<a><Key>x/1</Key><Key>x/2</Key><IsTruncated>false</IsTruncated></a>";
        assert_eq!(xml_values(xml, "Key"), ["x/1", "x/2"]);
        assert_eq!(xml_values(xml, "IsTruncated"), ["false"]);
        assert_eq!(uri_encode("a b/c~", true), "a%20b/c~");
    }
}
