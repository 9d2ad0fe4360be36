//! Black-box tests of JWT authentication against the real binary, with tokens minted
//! here by a JWT library: RS256 and ES256 keys from a JWKS file and from a JWKS served
//! on loopback (with key rotation and bounded refetching), HS256 from a shared secret,
//! every rejection answered with the same 401, access rules taken from the claims, the
//! device session in the audit, and a JWKS endpoint that hangs or is down not stalling
//! tokens whose key is cached.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use outpost_testkit::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISSUER: &str = "https://id.example.org/realms/health";
const AUDIENCE: &str = "outpost";
const SECRET: &str = "a-test-only-hs256-secret-of-40-bytes-....";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key made for this test run, with its public JWK.
struct TestKey {
    kid: String,
    alg: Algorithm,
    signing: EncodingKey,
    jwk: Value,
    /// The public key's DER, for the algorithm-confusion attack.
    public_der: Vec<u8>,
}

/// The content of the DER element at the start of `der`, and what follows it.
fn der_element(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let (len, head) = if der[1] < 0x80 {
        (usize::from(der[1]), 2)
    } else {
        let n = usize::from(der[1] & 0x7f);
        let len = der[2..2 + n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | usize::from(*b));
        (len, 2 + n)
    };
    (der[0], &der[head..head + len], &der[head + len..])
}

/// The PKCS#1 RSAPrivateKey inside a PKCS#8 PrivateKeyInfo (version, algorithm, key).
fn pkcs1_of_pkcs8(der: &[u8]) -> Vec<u8> {
    let (_, info, _) = der_element(der);
    let (_, _version, rest) = der_element(info);
    let (_, _algorithm, rest) = der_element(rest);
    let (tag, key, _) = der_element(rest);
    assert_eq!(tag, 0x04, "an OCTET STRING");
    key.to_vec()
}

fn rsa_key(kid: &str) -> TestKey {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let pkcs8: Pkcs8V1Der<'_> = pair.as_der().unwrap();
    let public = pair.public_key();
    TestKey {
        kid: kid.into(),
        alg: Algorithm::RS256,
        signing: EncodingKey::from_rsa_der(&pkcs1_of_pkcs8(pkcs8.as_ref())),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero())}),
        public_der: public.as_ref().to_vec(),
    }
}

fn ec_key(kid: &str) -> TestKey {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let pkcs8 = pair.to_pkcs8v1().unwrap();
    let point = pair.public_key().as_ref().to_vec();
    assert_eq!(
        (point.len(), point[0]),
        (65, 4),
        "an uncompressed P-256 point"
    );
    TestKey {
        kid: kid.into(),
        alg: Algorithm::ES256,
        signing: EncodingKey::from_ec_der(pkcs8.as_ref()),
        // No "alg" or "use": the key type decides, as with some providers.
        jwk: json!({"kty": "EC", "kid": kid, "crv": "P-256",
                    "x": b64(&point[1..33]), "y": b64(&point[33..])}),
        public_der: point,
    }
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
}

/// Claims of a valid token for `user` in `team`, valid for 5 minutes.
fn claims(user: &str, team: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "iat": now(),
           "sub": user, "team": team})
}

fn mint(key: &TestKey, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.signing).unwrap()
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn jwt_section(keys: &str) -> String {
    format!("[jwt]\nissuer = {ISSUER:?}\naudience = {AUDIENCE:?}\n{keys}\n")
}

/// A JWKS file in `dir` and the `[jwt]` section naming it, with the HS256 secret too.
fn file_config(dir: &std::path::Path, keys: &[&TestKey]) -> String {
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks(keys)).unwrap();
    jwt_section(&format!(
        "jwks_file = {:?}\nhs256_secret = {SECRET:?}",
        path.display().to_string()
    ))
}

/// The status of a pull with `token`.
async fn pull_status(s: &TestServer, token: &str) -> u16 {
    s.pull_raw(token, "").await.0
}

/// What the identity provider's JWKS endpoint does.
enum Mode {
    Serve(String),
    /// Accepts connections and never answers.
    Hang,
}

/// A tiny HTTP server on loopback playing the provider's JWKS endpoint, counting the
/// requests it gets.
struct JwksEndpoint {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn answer_one(
    mut sock: tokio::net::TcpStream,
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let body = match &*mode.lock().unwrap() {
        Mode::Serve(b) => Some(b.clone()),
        Mode::Hang => None,
    };
    match body {
        Some(b) => {
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{b}",
                b.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
        None => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(sock);
        }
    }
}

impl JwksEndpoint {
    /// Runs on a thread and runtime of its own, so it answers while the test blocks
    /// (starting the server waits for its first line, after the first fetch).
    async fn start(body: String) -> JwksEndpoint {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(Mode::Serve(body)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (m, h) = (Arc::clone(&mode), Arc::clone(&hits));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((sock, _)) = listener.accept().await else {
                            return;
                        };
                        tokio::spawn(answer_one(sock, Arc::clone(&m), Arc::clone(&h)));
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime closes the listener and every held connection.
        });
        JwksEndpoint {
            addr,
            mode,
            hits,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!(
            "http://{}/realms/health/protocol/openid-connect/certs",
            self.addr
        )
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Closes the port: connections are refused from now on.
    fn shut_down(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for JwksEndpoint {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn url_config(endpoint: &JwksEndpoint) -> String {
    jwt_section(&format!("jwks_url = {:?}", endpoint.url()))
}

#[tokio::test]
async fn rs256_es256_from_a_file_and_hs256_are_accepted_beside_static_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, ec) = (rsa_key("rsa-1"), ec_key("ec-1"));
    let s = TestServer::start_with(&Backend::Sqlite, &file_config(dir.path(), &[&rsa, &ec]));
    for token in [
        mint(&rsa, &claims("nurse-a", "north")),
        mint(&ec, &claims("nurse-b", "north")),
        hs256(&claims("nurse-c", "north")),
        // A list audience that contains ours, and a not-before just passed.
        mint(&rsa, &{
            let mut c = claims("nurse-a", "north");
            c["aud"] = json!(["account", AUDIENCE]);
            c["nbf"] = json!(now() - 5);
            c
        }),
        // Expired, but within the 60 s clock skew.
        hs256(&{
            let mut c = claims("nurse-c", "north");
            c["exp"] = json!(now() - 20);
            c
        }),
        AMINA.to_owned(),
    ] {
        let (st, body) = s.pull_raw(&token, "").await;
        assert_eq!(st, 200, "{body}");
    }
}

#[tokio::test]
async fn every_rejection_is_the_same_401() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, ec, stranger) = (rsa_key("rsa-1"), ec_key("ec-1"), rsa_key("rsa-9"));
    // Dozens of refused tokens from one address: throttling off, so each is checked.
    let s = TestServer::builder(&Backend::Sqlite)
        .extra(&format!(
            "auth_failures_per_minute = 0\n{}",
            file_config(dir.path(), &[&rsa, &ec])
        ))
        .env("RUST_LOG", "outpost_server=debug")
        .start();
    let (st, wrong_static) = s.pull_raw("no-such-static-token-0123456789", "").await;
    assert_eq!(st, 401);

    let with = |key: &str, v: Value| {
        let mut c = claims("nurse-a", "north");
        if v.is_null() {
            c.as_object_mut().unwrap().remove(key);
        } else {
            c[key] = v;
        }
        c
    };
    let valid = mint(&rsa, &claims("nurse-a", "north"));
    let payload = |c: &Value| b64(c.to_string().as_bytes());
    let head = |h: Value| b64(h.to_string().as_bytes());
    let signature = valid.rsplit('.').next().unwrap().to_owned();

    let mut cases: Vec<(&str, String)> = vec![
        ("expired", mint(&rsa, &with("exp", json!(now() - 120)))),
        ("no exp", mint(&rsa, &with("exp", Value::Null))),
        ("not yet valid", mint(&ec, &with("nbf", json!(now() + 120)))),
        (
            "wrong iss",
            mint(&rsa, &with("iss", json!("https://evil.example"))),
        ),
        ("iss as a list", mint(&rsa, &with("iss", json!([ISSUER])))),
        ("wrong aud", mint(&rsa, &with("aud", json!("account")))),
        ("no aud", hs256(&with("aud", Value::Null))),
        ("no team", mint(&rsa, &with("team", Value::Null))),
        ("team not a string", hs256(&with("team", json!(["north"])))),
        ("no user", mint(&ec, &with("sub", Value::Null))),
        ("unknown kid", {
            let mut k = rsa_key("rsa-1");
            k.kid = "rsa-2".into();
            mint(&k, &claims("nurse-a", "north"))
        }),
        ("bad signature: another key under a known kid", {
            let mut k = stranger;
            k.kid = "rsa-1".into();
            mint(&k, &claims("nurse-a", "north"))
        }),
        ("bad signature: claims changed after signing", {
            let forged = payload(&claims("nurse-a", "south"));
            let mut parts = valid.split('.');
            format!("{}.{forged}.{signature}", parts.next().unwrap())
        }),
        ("bad signature: wrong hs256 secret", {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims("nurse-a", "north"),
                &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!").unwrap(),
            )
            .unwrap()
        }),
        ("ES256 header on an RS256 kid", {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some("rsa-1".into());
            jsonwebtoken::encode(&h, &claims("nurse-a", "north"), &ec.signing).unwrap()
        }),
        ("RS384 on an RS256 key", {
            let mut h = Header::new(Algorithm::RS384);
            h.kid = Some("rsa-1".into());
            jsonwebtoken::encode(&h, &claims("nurse-a", "north"), &rsa.signing).unwrap()
        }),
        ("an RS256 token without kid", {
            jsonwebtoken::encode(
                &Header::new(Algorithm::RS256),
                &claims("nurse-a", "north"),
                &rsa.signing,
            )
            .unwrap()
        }),
        ("garbage", "eyJhbGciOiJSUzI1NiJ9.bm9wZQ.c2ln".into()),
    ];
    // RS/HS confusion: HS256 tokens keyed with the public key, as published (DER, and
    // the JWK's modulus), under the RSA key's kid and under none.
    for (what, secret) in [
        ("DER", rsa.public_der.clone()),
        (
            "modulus",
            rsa.jwk["n"].as_str().unwrap().as_bytes().to_vec(),
        ),
        ("EC point", ec.public_der.clone()),
    ] {
        for kid in [Some("rsa-1"), Some("ec-1"), None] {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = kid.map(str::to_owned);
            let t = jsonwebtoken::encode(
                &h,
                &claims("nurse-a", "north"),
                &EncodingKey::from_secret(&secret).unwrap(),
            )
            .unwrap();
            cases.push((
                if what == "DER" {
                    "RS/HS confusion"
                } else {
                    what
                },
                t,
            ));
        }
    }
    // alg "none", in the spellings attacks use, with the kid of a real key.
    for alg in ["none", "None", "NONE", "nOnE"] {
        for sig in ["", signature.as_str()] {
            let h = head(json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"}));
            cases.push((
                "alg none",
                format!("{h}.{}.{sig}", payload(&claims("nurse-a", "north"))),
            ));
        }
    }

    for (what, token) in &cases {
        let r = s
            .client()
            .get(s.url("/v1/pull"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["www-authenticate"], "Bearer", "{what}");
        let (st, body) = answer(r).await;
        assert_eq!((st, &body), (401, &wrong_static), "{what}");
        // Pushes too.
        let (st, body) = s
            .push_raw(token, &json!({"client_id": "c", "ops": []}))
            .await;
        assert_eq!((st, &body), (401, &wrong_static), "{what}");
    }
    // The valid token still works, so the refusals above were the checks, not the keys.
    assert_eq!(pull_status(&s, &valid).await, 200);

    // The reasons are in the debug log; the tokens never are.
    let log = s.stderr();
    for reason in [
        "expired",
        "not yet valid",
        "wrong issuer",
        "wrong audience",
        "unknown kid",
        "bad signature",
        "missing or malformed claim",
        "the key of this kid is for another algorithm",
        "malformed token",
    ] {
        assert!(log.contains(reason), "no {reason:?} in the log:\n{log}");
    }
    for (what, token) in &cases {
        let sig = token.rsplit('.').next().unwrap();
        assert!(
            !log.contains(token.as_str()) && (sig.len() < 16 || !log.contains(sig)),
            "{what}: token in the log"
        );
    }
}

#[tokio::test]
async fn jwks_url_keys_rotate_on_first_sight_and_garbage_kids_do_not_refetch() {
    let (k1, k2, ec) = (rsa_key("2024-a"), rsa_key("2024-b"), ec_key("ec-a"));
    let endpoint = JwksEndpoint::start(jwks(&[&k1, &ec])).await;
    let s = TestServer::start_with(&Backend::Sqlite, &url_config(&endpoint));
    // Fetched once at start, before the server said it listens.
    assert_eq!(endpoint.hits(), 1);
    for t in [
        mint(&k1, &claims("nurse-a", "north")),
        mint(&ec, &claims("nurse-b", "north")),
    ] {
        assert_eq!(pull_status(&s, &t).await, 200);
    }
    assert_eq!(endpoint.hits(), 1, "cached keys need no fetch");

    // The provider rotates: k2 replaces k1.
    endpoint.set(Mode::Serve(jwks(&[&k2, &ec])));
    let (st, body) = s
        .pull_raw(&mint(&k2, &claims("nurse-a", "north")), "")
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        endpoint.hits(),
        2,
        "one fetch on first sight of the new kid"
    );
    // The retired key is gone with the old set.
    assert_eq!(
        pull_status(&s, &mint(&k1, &claims("nurse-a", "north"))).await,
        401
    );
    // Unknown kids within the minute: refused without another fetch.
    for i in 0..20 {
        let mut k = rsa_key("x");
        k.kid = format!("garbage-{i}");
        k.signing = k2.signing.clone();
        assert_eq!(
            pull_status(&s, &mint(&k, &claims("nurse-a", "north"))).await,
            401
        );
    }
    assert_eq!(endpoint.hits(), 2, "at most one refetch a minute");
    assert_eq!(
        pull_status(&s, &mint(&k2, &claims("nurse-a", "north"))).await,
        200
    );
    endpoint.shut_down();
}

/// Pulls with a cached kid while an unknown kid's fetch is stuck: each must answer
/// in under a second.
async fn cached_kids_stay_fast(s: &TestServer, token: &str) {
    for _ in 0..5 {
        let start = Instant::now();
        let (st, body) = s.pull_raw(token, "").await;
        assert_eq!(st, 200, "{body}");
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "a cached kid waited {took:?}"
        );
    }
}

#[tokio::test]
async fn a_hanging_or_down_jwks_endpoint_does_not_stall_cached_kids() {
    let key = ec_key("ec-a");
    let endpoint = JwksEndpoint::start(jwks(&[&key])).await;
    let s = TestServer::start_with(&Backend::Sqlite, &url_config(&endpoint));
    let good = mint(&key, &claims("nurse-a", "north"));
    assert_eq!(pull_status(&s, &good).await, 200);

    // The endpoint now accepts and never answers; a new kid sends the server to it.
    endpoint.set(Mode::Hang);
    let unknown = {
        let mut k = ec_key("ec-new");
        k.signing = key.signing.clone();
        mint(&k, &claims("nurse-a", "north"))
    };
    let started = Instant::now();
    let stuck = {
        let (client, url, t) = (s.client().clone(), s.url("/v1/pull"), unknown.clone());
        tokio::spawn(async move {
            let r = client.get(url).bearer_auth(t).send().await.unwrap();
            (r.status().as_u16(), Instant::now())
        })
    };
    // Wait until the fetch has reached the endpoint, then check cached kids while it
    // hangs there.
    while endpoint.hits() < 2 {
        assert!(!stuck.is_finished(), "answered before fetching");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cached_kids_stay_fast(&s, &good).await;
    assert!(
        !stuck.is_finished(),
        "the fetch was still hanging throughout"
    );
    let (st, done) = stuck.await.unwrap();
    assert_eq!(st, 401);
    let waited = done - started;
    assert!(
        waited < Duration::from_secs(6),
        "the unknown kid's fetch is bounded: {waited:?}"
    );
    // Within the minute another unknown kid is refused at once, with no fetch.
    let start = Instant::now();
    assert_eq!(pull_status(&s, &unknown).await, 401);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(endpoint.hits(), 2);
    endpoint.shut_down();

    // A second server whose endpoint goes down (connections refused) after start.
    let endpoint = JwksEndpoint::start(jwks(&[&key])).await;
    let s2 = TestServer::start_with(&Backend::Sqlite, &url_config(&endpoint));
    assert_eq!(pull_status(&s2, &good).await, 200);
    endpoint.shut_down();
    let start = Instant::now();
    assert_eq!(pull_status(&s2, &unknown).await, 401);
    assert!(start.elapsed() < Duration::from_secs(4));
    cached_kids_stay_fast(&s2, &good).await;
}

#[tokio::test]
async fn a_server_starts_while_its_jwks_endpoint_hangs() {
    let key = rsa_key("r");
    let endpoint = JwksEndpoint::start(String::new()).await;
    endpoint.set(Mode::Hang);
    let started = Instant::now();
    let extra = format!("{}hs256_secret = {SECRET:?}\n", url_config(&endpoint));
    let s = TestServer::start_with(&Backend::Sqlite, &extra);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "start took {took:?}");
    // HS256 and static tokens work; the RS256 key was never fetched.
    assert_eq!(
        pull_status(&s, &hs256(&claims("nurse-a", "north"))).await,
        200
    );
    assert_eq!(pull_status(&s, AMINA).await, 200);
    assert_eq!(
        pull_status(&s, &mint(&key, &claims("nurse-a", "north"))).await,
        401
    );
    endpoint.shut_down();
}

/// Access rules from the claims, exactly as for `[[users]]`; the audit records the
/// token's device session.
async fn access_rules_and_audit_from_claims(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let rsa = rsa_key("rsa-1");
    let s = TestServer::start_with(&b, &file_config(dir.path(), &[&rsa]));
    let with_sid = |user: &str, team: &str, sid: &str| {
        let mut c = claims(user, team);
        c["sid"] = json!(sid);
        c
    };
    // Two nurses of north (one by RS256, one by HS256), one of south.
    let north_a = mint(&rsa, &with_sid("nurse-a", "north", "tablet-7"));
    let north_c = hs256(&claims("nurse-c", "north"));
    let south_b = mint(&rsa, &with_sid("nurse-b", "south", "phone-2"));

    let ops = vec![
        put("patients", "p-1", None, json!({"name": "Amina"})),
        put("drafts", "d-1", None, json!({"note": "mine"})),
        put("forms", "f-1", None, json!({"title": "intake"})),
    ];
    let ids: Vec<String> = ops
        .iter()
        .map(|o| o["op_id"].as_str().unwrap().to_owned())
        .collect();
    let r = s.push(&north_a, ops).await;
    assert!(r.iter().all(|x| x["status"] == "applied"), "{r:?}");

    let readable = |changes: Vec<Value>| -> Vec<String> {
        let mut ids: Vec<String> = changes
            .iter()
            .map(|c| {
                format!(
                    "{}/{}",
                    c["collection"].as_str().unwrap(),
                    c["record_id"].as_str().unwrap()
                )
            })
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        readable(s.pull_all(&north_a, "").await.0),
        ["drafts/d-1", "forms/f-1", "patients/p-1"]
    );
    // Same team, another user: the team record and the shared one, not the draft.
    assert_eq!(
        readable(s.pull_all(&north_c, "").await.0),
        ["forms/f-1", "patients/p-1"]
    );
    // A static user of the same team sees what a JWT user of that team sees.
    assert_eq!(
        readable(s.pull_all(AMINA, "").await.0),
        ["forms/f-1", "patients/p-1"]
    );
    // Another team: only the shared record. Its edits of the others' ids address its
    // own scope, where those ids were never used: a conflict with no record, exactly
    // as for any unused id (ids are scoped per team and owner).
    assert_eq!(readable(s.pull_all(&south_b, "").await.0), ["forms/f-1"]);
    let r = s
        .push(
            &south_b,
            vec![
                patch("patients", "p-1", Some(1), json!({"name": "x"})),
                patch("drafts", "d-1", Some(1), json!({"note": "x"})),
                patch("forms", "f-1", Some(1), json!({"title": "x"})),
            ],
        )
        .await;
    let statuses: Vec<&str> = r
        .iter()
        .map(|x| {
            x["error"]["code"]
                .as_str()
                .unwrap_or(x["status"].as_str().unwrap())
        })
        .collect();
    assert_eq!(statuses, ["conflict", "conflict", "applied"]);
    assert!(
        r[0]["current"].is_null() && r[1]["current"].is_null(),
        "{r:?}"
    );
    // The same user name with another team in the claim is that team for this request.
    let a_south = mint(&rsa, &claims("nurse-a", "south"));
    assert_eq!(
        readable(s.pull_all(&a_south, "").await.0),
        ["drafts/d-1", "forms/f-1"]
    );
    // A cursor of her north token does not carry over to the south one: what she has
    // seen of the sequence says nothing about the south team's records (410, pull again).
    let (_, north_cursor) = s.pull_all(&north_a, "").await;
    let (st, body) = s
        .pull_raw(&a_south, &format!("?since={north_cursor}"))
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (410, Some("cursor_expired"))
    );

    // The audit: the token's user and device beside the client id the request gave.
    for id in &ids {
        assert_eq!(s.audit_rows(id), 1);
    }
    assert_eq!(s.count("audit", "device", "tablet-7"), 3);
    assert_eq!(s.count("audit", "device", "phone-2"), 1);
    let user_column = match s.backend() {
        Backend::Sqlite => "user",
        _ => "user_name",
    };
    assert_eq!(s.count("audit", user_column, "nurse-a"), 3);
    // Idempotency is per user, as for static users: another user's op_id is their own.
    let again = s
        .push(
            &north_c,
            vec![json!({"op_id": ids[0], "collection": "patients",
            "record_id": "p-2", "kind": "put", "base_version": null,
            "data": {"name": "B"}, "hlc": hlc()})],
        )
        .await;
    assert_eq!(again[0]["status"], "applied");
}

/// A token whose role claim says `service` is a service account, with or without a
/// team: it writes into a team listed in `teams` and reads the feed of every team; a
/// person's token gets 403 there, and an unknown role 401 everywhere.
async fn a_role_claim_makes_a_service_account(b: Backend) {
    let s = TestServer::start_with(
        &b,
        &format!(
            "teams = [\"east\"]\n{}",
            jwt_section(&format!("hs256_secret = {SECRET:?}"))
        ),
    );
    let mut service = claims("warehouse", "ignored");
    service["outpost_role"] = json!("service");
    service.as_object_mut().unwrap().remove("team");
    let service = hs256(&service);
    let nurse = hs256(&claims("nurse-e", "east"));
    let mut op = put("patients", "p-1", None, json!({"from": "backend"}));
    op["team"] = json!("east");
    let (st, body) = s
        .push_raw(&service, &json!({"client_id": "etl", "ops": [op.clone()]}))
        .await;
    assert_eq!(
        (st, body["results"][0]["status"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    let (changes, _) = s.pull_all(&nurse, "").await;
    assert_eq!(changes[0]["data"]["from"], "backend");
    let (st, feed) = s.get_raw(&service, "/v1/admin/changes").await;
    assert_eq!(
        (st, feed["changes"][0]["team"].as_str()),
        (200, Some("east")),
        "{feed}"
    );
    assert_eq!(s.get_raw(&nurse, "/v1/admin/changes").await.0, 403);
    let (st, _) = s
        .push_raw(&nurse, &json!({"client_id": "tab", "ops": [op]}))
        .await;
    assert_eq!(st, 403);
    let mut admin = claims("nurse-e", "east");
    admin["outpost_role"] = json!("admin");
    assert_eq!(pull_status(&s, &hs256(&admin)).await, 401);
}

backend_tests!("jwt": access_rules_and_audit_from_claims, a_role_claim_makes_a_service_account);

/// Waits until a pull with `token` answers `want` (a reload is asynchronous).
async fn until_pull_status(s: &TestServer, token: &str, want: u16, what: &str) {
    let start = Instant::now();
    while pull_status(s, token).await != want {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGHUP rebuilds the JWT checker from the new `[jwt]`: a changed audience holds at
/// once, keys already fetched from an unchanged `jwks_url` stay (the provider is down
/// by then), and a config without `[jwt]` refuses JWTs while static tokens go on.
#[tokio::test]
async fn a_reload_rebuilds_the_jwt_checker_and_keeps_fetched_keys() {
    let rsa = rsa_key("rsa-1");
    let endpoint = JwksEndpoint::start(jwks(&[&rsa])).await;
    let extra = format!("{}hs256_secret = {SECRET:?}\n", url_config(&endpoint));
    let s = TestServer::start_with(&Backend::Sqlite, &extra);
    let for_audience = |aud: &str| {
        let mut c = claims("nurse-a", "north");
        c["aud"] = json!(aud);
        c
    };
    assert_eq!(
        pull_status(&s, &mint(&rsa, &for_audience(AUDIENCE))).await,
        200
    );
    endpoint.shut_down();

    let config = std::fs::read_to_string(s.config_path()).unwrap();
    let old_aud = format!("audience = {AUDIENCE:?}");
    assert!(config.contains(&old_aud));
    let renamed = config.replace(&old_aud, "audience = \"outpost-v2\"");
    std::fs::write(s.config_path(), &renamed).unwrap();
    s.signal("HUP");
    until_pull_status(
        &s,
        &hs256(&for_audience("outpost-v2")),
        200,
        "reload not applied",
    )
    .await;
    assert_eq!(pull_status(&s, &hs256(&for_audience(AUDIENCE))).await, 401);
    // The RSA key came from the provider before it went down: still held.
    assert_eq!(
        pull_status(&s, &mint(&rsa, &for_audience("outpost-v2"))).await,
        200
    );
    assert_eq!(
        pull_status(&s, &mint(&rsa, &for_audience(AUDIENCE))).await,
        401
    );

    // No [jwt] any more: JWTs are refused, static tokens still sign in.
    let start = renamed.find("[jwt]").unwrap();
    let end = start + renamed[start..].find("[[users]]").unwrap();
    let without = format!("{}{}", &renamed[..start], &renamed[end..]);
    std::fs::write(s.config_path(), &without).unwrap();
    s.signal("HUP");
    until_pull_status(
        &s,
        &hs256(&for_audience("outpost-v2")),
        401,
        "[jwt] not removed",
    )
    .await;
    assert_eq!(
        pull_status(&s, &mint(&rsa, &for_audience("outpost-v2"))).await,
        401
    );
    assert_eq!(pull_status(&s, AMINA).await, 200);
}

/// Mangled tokens (bytes changed, parts cut or swapped, hostile headers) are all 401:
/// never a 5xx, never accepted, and the server keeps answering.
#[tokio::test]
async fn mangled_tokens_are_all_refused() {
    let (rsa, ec) = (rsa_key("rsa-1"), ec_key("ec-1"));
    let endpoint = JwksEndpoint::start(jwks(&[&rsa, &ec])).await;
    // Hundreds of refused tokens from one address: throttling off, so each is checked.
    let extra = format!(
        "auth_failures_per_minute = 0\n{}hs256_secret = {SECRET:?}\n",
        url_config(&endpoint)
    );
    let s = TestServer::start_with(&Backend::Sqlite, &extra);
    let valid = [
        mint(&rsa, &claims("nurse-a", "north")),
        mint(&ec, &claims("nurse-a", "north")),
        hs256(&claims("nurse-a", "north")),
    ];
    let mut tokens: Vec<String> = Vec::new();
    // A deterministic walk over every kind of damage, over each valid token.
    let mut x: u64 = 0x5eed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/";
    for t in &valid {
        let parts: Vec<&str> = t.split('.').collect();
        for _ in 0..40 {
            let mut b = t.clone().into_bytes();
            let i = usize::try_from(next()).unwrap() % b.len();
            let c = ALPHABET[usize::try_from(next()).unwrap() % ALPHABET.len()];
            if b[i] == c {
                continue;
            }
            b[i] = c;
            tokens.push(String::from_utf8(b).unwrap());
        }
        for cut in [1, 10, t.len() / 2, t.len() - 1] {
            tokens.push(t[..cut].to_owned());
        }
        tokens.push(format!("{}.{}", parts[0], parts[1]));
        tokens.push(format!(
            "{}.{}.{}.{}",
            parts[0], parts[1], parts[2], parts[2]
        ));
        tokens.push(format!("{}.{}.{}", parts[1], parts[0], parts[2]));
    }
    let body = b64(claims("nurse-a", "north").to_string().as_bytes());
    for header in [
        json!({"alg": "RS256", "kid": "k".repeat(5000)}),
        json!({"alg": "RS256", "kid": 7}),
        json!({"alg": "RS256", "kid": null}),
        json!({"alg": "HS256", "crit": ["exp"]}),
        json!({"alg": "HS256", "b64": false, "crit": ["b64"]}),
        json!({"alg": "PS256", "kid": "rsa-1"}),
        json!({"alg": "EdDSA", "kid": "rsa-1"}),
        json!({"alg": ["RS256"], "kid": "rsa-1"}),
        json!({"alg": "RS256", "kid": "rsa-1", "jku": "http://127.0.0.1:1/keys"}),
        json!({"alg": "RS256", "kid": "ec-1", "jwk": rsa.jwk}),
        json!({}),
    ] {
        let h = b64(header.to_string().as_bytes());
        for sig in ["", "c2ln", valid[0].rsplit('.').next().unwrap()] {
            tokens.push(format!("{h}.{body}.{sig}"));
        }
    }
    tokens.push(format!(
        "{}.{}.",
        b64(b"{\"alg\":\"HS256\"}"),
        b64(&[0xff; 40])
    ));
    tokens.push(format!("{}.{body}.x", b64(&[b'{'; 2000])));
    for (i, t) in tokens.iter().enumerate() {
        if valid.contains(t) {
            continue;
        }
        let (st, body) = s.pull_raw(t, "").await;
        assert_eq!(st, 401, "token #{i} {t:.80}: {body}");
    }
    for t in &valid {
        assert_eq!(pull_status(&s, t).await, 200);
    }
    assert!(endpoint.hits() <= 2, "{} fetches", endpoint.hits());
}
