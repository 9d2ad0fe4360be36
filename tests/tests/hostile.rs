#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hostile input against the real server binary over loopback.
//!
//! A server on a field network is reachable by anything: broken clients, old app
//! versions, and people poking at it. A seeded generator sends
//! `OUTPOST_HOSTILE_REQUESTS` (default 10,000) malformed or hostile requests, 8 at a
//! time: random JSON, wrong types at every position of a push and pull, huge numbers,
//! deep nesting around the limit of 64, odd Unicode, duplicate keys, invalid UTF-8,
//! gzip bombs and bad gzip, oversized bodies, wrong methods, paths and headers, bad and
//! other users' tokens, other users' record ids, forged owner and team fields, malformed
//! CRDT values, and garbage cursors and limits.
//!
//! It asserts: no status >= 500, every non-2xx body is the protocol's JSON error
//! object, no panic in the server's stderr, the process still alive, nothing of the
//! victim user's leaked into another user's answer, and afterwards `/health`, a valid
//! push and a valid pull answer correctly and the victim's records are unchanged.
//! `OUTPOST_HOSTILE_SEED` changes the seed; a failure names the request index, and
//! `OUTPOST_HOSTILE_ONLY=<i>` replays just that request.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use outpost_testkit::{AMINA, BEN, Backend, CHIOMA, TestServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// The victim: alone in team `east`; no hostile request carries this token.
const DANA: &str = "token-dana-0123456789abcdef0123456789";
const DANA_MARK: &str = "dana-secret-marker";
const AMINA_MARK: &str = "amina-private-marker";
const VICTIM_IDS: &[(&str, &str)] = &[
    ("patients", "d-1"),
    ("patients", "d-2"),
    ("patients", "shared-id"),
    ("drafts", "dd-1"),
    ("drafts", "dd-2"),
    ("answers", "d-ans"),
];

/// The kit's config plus the victim and a shared collection. (The kit keeps the
/// server's stderr in a file, where the test looks for panics.) Throttling of failed
/// authentication is off: from one address, the run's wrong tokens would otherwise
/// turn most requests into 429 before they reach the handlers under test.
fn extra_config() -> String {
    format!(
        "auth_failures_per_minute = 0\n\n[[users]]\nname = \"dana\"\nteam = \"east\"\ntoken = \"{DANA}\"\n\n\
         [collections.notices]\naccess = \"shared\"\n"
    )
}

/// The server's SQLite file.
fn server_db(server: &TestServer) -> PathBuf {
    server.dir().join("server.db")
}

/// One generated request.
#[derive(Debug, Clone)]
struct Req {
    kind: &'static str,
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// The token's owner, for the leak check (`None`: no valid token).
    user: Option<&'static str>,
}

impl Req {
    fn push(kind: &'static str, body: Vec<u8>, rng: &mut StdRng) -> Req {
        let (user, token) = attacker(rng);
        Req {
            kind,
            method: "POST".into(),
            path: "/v1/push".into(),
            headers: vec![
                (
                    "authorization".into(),
                    format!("Bearer {token}").into_bytes(),
                ),
                ("content-type".into(), b"application/json".to_vec()),
            ],
            body,
            user: Some(user),
        }
    }

    fn pull(kind: &'static str, query: String, rng: &mut StdRng) -> Req {
        let (user, token) = attacker(rng);
        Req {
            kind,
            method: "GET".into(),
            path: format!("/v1/pull{query}"),
            headers: vec![(
                "authorization".into(),
                format!("Bearer {token}").into_bytes(),
            )],
            body: Vec::new(),
            user: Some(user),
        }
    }
}

fn attacker(rng: &mut StdRng) -> (&'static str, &'static str) {
    [("amina", AMINA), ("ben", BEN), ("chioma", CHIOMA)][rng.random_range(0..3)]
}

fn pick<'a, T>(rng: &mut StdRng, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}

/// Strings that break naive handling: control characters, bidi overrides, combining
/// marks, emoji, noncharacters, the limits of 64 and 128 characters.
fn odd_string(rng: &mut StdRng) -> String {
    let parts = [
        "",
        "a",
        "p",
        "d-1",
        "dd-1",
        "patients",
        "drafts",
        "notices",
        "Drafts",
        "drafts ",
        " ",
        "\0",
        "a\0b",
        "\u{202e}evil",
        "e\u{301}\u{301}\u{301}",
        "😀",
        "👩‍👩‍👧",
        "\u{fffe}",
        "\u{feff}",
        "\u{7f}",
        "\t",
        "\n",
        "../",
        "%00",
        "\\",
        "\"",
        "a_b",
        "ä",
        "日本",
        "\u{10ffff}",
        "\u{1b}[31m",
        "null",
        "$crdt",
        "__proto__",
    ];
    match rng.random_range(0..8) {
        0 => "a".repeat(*pick(rng, &[63, 64, 65, 127, 128, 129, 1000])),
        1 => "😀".repeat(*pick(rng, &[64, 128, 129])),
        2 => "e\u{301}".repeat(*pick(rng, &[64, 65, 128])),
        _ => {
            let n = rng.random_range(1..4);
            (0..n).map(|_| *pick(rng, &parts)).collect()
        }
    }
}

fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    let leaf = depth == 0 || rng.random_range(0..3) == 0;
    match rng.random_range(0..if leaf { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(*pick(
            rng,
            &[
                0i64,
                -1,
                1,
                i64::MAX,
                i64::MIN,
                4_294_967_296,
                -9_007_199_254_740_993
            ]
        )),
        3 => json!(*pick(rng, &[u64::MAX, 1u64 << 63, 1u64 << 53])),
        4 => json!(*pick(rng, &[0.5f64, -0.0, 1e308, -1e308, 5e-324, 1.0])),
        5 => json!(odd_string(rng)),
        6 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.random_range(0..4))
                .map(|_| (odd_string(rng), random_json(rng, depth - 1)))
                .collect(),
        ),
    }
}

fn valid_op(rng: &mut StdRng, i: u64) -> Value {
    json!({
        "op_id": format!("h-{}-{i}", rng.random::<u32>()),
        "collection": *pick(rng, &["patients", "drafts", "notices", "answers"]),
        "record_id": format!("h-{}", rng.random_range(0..20)),
        "kind": *pick(rng, &["put", "patch", "delete"]),
        "base_version": if rng.random() { Value::Null } else { json!(rng.random_range(0..4)) },
        "data": {"x": rng.random_range(0..100), "note": "hostile"},
        "hlc": format!("{:013}-{:05}-hostile", 1_700_000_000_000u64 + rng.random_range(0..1000), 0),
        "force": rng.random::<bool>(),
    })
}

fn valid_push(rng: &mut StdRng, i: u64) -> Value {
    let n = rng.random_range(1..4);
    json!({"client_id": "hostile-client", "ops": (0..n).map(|k| valid_op(rng, i * 10 + k)).collect::<Vec<_>>()})
}

/// Literals that are not quite JSON, or are JSON a parser may mishandle.
const RAW_LITERALS: &[&str] = &[
    "\"\\ud800\"",
    "\"\\udfff\"",
    "\"\\ud800\\u0041\"",
    "\"\\udbff\\udfff\"",
    "\"a\\u0000b\"",
    "\"\\u12\"",
    "\"\\x41\"",
    "\"unterminated",
    "NaN",
    "Infinity",
    "-Infinity",
    "-0",
    "1e999",
    "-1e999",
    "1e-999",
    "0x10",
    "01",
    "+1",
    "1.",
    ".5",
    "tru",
    "nul",
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890123456789012345678901234567890",
    "1E400",
    "{}",
    "[]",
    "\"\"",
    "{\"a\":}",
    "[1,]",
    "{,}",
    "\"\u{202e}\"",
];

fn push_with_raw(rng: &mut StdRng, i: u64) -> Vec<u8> {
    // Replace one value of a valid push with a raw literal, at text level.
    let lit = *pick(rng, RAW_LITERALS);
    let slot = *pick(
        rng,
        &[
            "client_id",
            "op_id",
            "collection",
            "record_id",
            "kind",
            "base_version",
            "data",
            "hlc",
            "force",
            "x",
            "ops",
        ],
    );
    let op = valid_op(rng, i);
    let mut o = op.as_object().unwrap().clone();
    o.insert(slot.into(), json!("@@RAW@@"));
    let body = json!({"client_id": "hostile-client", "ops": [Value::Object(o)]});
    let text = body.to_string();
    let text = if slot == "client_id" || slot == "ops" {
        json!({"client_id": if slot == "client_id" { json!("@@RAW@@") } else { json!("c") },
               "ops": if slot == "ops" { json!("@@RAW@@") } else { json!([op]) }})
        .to_string()
    } else if slot == "x" {
        text.replace("\"x\":", "\"x\":\"@@RAW@@\",\"y\":")
    } else {
        text
    };
    text.replacen("\"@@RAW@@\"", lit, 1).into_bytes()
}

fn wrong_types(rng: &mut StdRng, i: u64) -> Vec<u8> {
    let mut body = valid_push(rng, i);
    let bad = random_json(rng, 2);
    match rng.random_range(0..5) {
        0 => body = bad,
        1 => {
            let key = *pick(rng, &["client_id", "ops", "extra"]);
            body[key] = bad;
        }
        2 => body["ops"][0] = bad,
        _ => {
            let key = *pick(
                rng,
                &[
                    "op_id",
                    "collection",
                    "record_id",
                    "kind",
                    "base_version",
                    "data",
                    "hlc",
                    "force",
                    "owner",
                ],
            );
            if rng.random_range(0..4) == 0 {
                body["ops"][0].as_object_mut().unwrap().remove(key);
            } else {
                body["ops"][0][key] = bad;
            }
        }
    }
    body.to_string().into_bytes()
}

fn duplicate_keys(rng: &mut StdRng, i: u64) -> Vec<u8> {
    let text = valid_push(rng, i).to_string();
    let key = *pick(
        rng,
        &[
            "\"client_id\":",
            "\"ops\":",
            "\"op_id\":",
            "\"collection\":",
            "\"record_id\":",
            "\"kind\":",
            "\"x\":",
            "\"force\":",
        ],
    );
    let dup = match key {
        "\"ops\":" => "\"ops\":[],".to_owned(),
        "\"force\":" => "\"force\":true,".to_owned(),
        "\"x\":" => "\"x\":{\"a\":1,\"a\":2},".to_owned(),
        k => format!("{k}\"drafts\","),
    };
    text.replacen(key, &format!("{dup}{key}"), 1).into_bytes()
}

fn invalid_utf8(rng: &mut StdRng, i: u64) -> Vec<u8> {
    let mut bytes = valid_push(rng, i).to_string().into_bytes();
    let bad: &[&[u8]] = &[
        b"\xff",
        b"\xc0\x80",
        b"\x80",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xe2\x82",
    ];
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(0..bytes.len());
        let b = *pick(rng, bad);
        bytes.splice(at..at, b.iter().copied());
    }
    bytes
}

fn deep(rng: &mut StdRng) -> Vec<u8> {
    // The op's data sits at depth 4 ({ ops: [ { data: {...} } ] }); nest inside it so
    // the whole body is just under, at, or over 64, or far over.
    let total = *pick(rng, &[62usize, 63, 64, 65, 66, 128, 1000, 100_000]);
    let inner = total.saturating_sub(3);
    let (open, close) = if rng.random() {
        ("[", "]")
    } else {
        ("{\"a\":", "}")
    };
    let nested = format!(
        "{}1{}",
        open.repeat(inner.saturating_sub(1)),
        close.repeat(inner.saturating_sub(1))
    );
    match rng.random_range(0..3) {
        0 => format!("{}{}", open.repeat(total), close.repeat(total)).replace("[]", "[1]").replace(":}", ":1}").into_bytes(),
        1 => format!("{}", json!({"client_id": "c", "ops": [{"op_id": format!("deep-{}", rng.random::<u32>()), "collection": "notices", "record_id": "deep", "kind": "put", "base_version": null, "hlc": "1700000000000-00000-h", "data": {"v": "@@"}}]}))
            .replace("\"@@\"", &nested)
            .into_bytes(),
        _ => format!("{}{}", open.repeat(total), close.repeat(total / 2)).into_bytes(),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

struct Fixtures {
    /// 16 MiB of spaces, gzipped: a bomb.
    bomb: Vec<u8>,
    /// A valid 9 MiB push, gzipped.
    big_push_gz: Vec<u8>,
}

fn fixtures() -> Fixtures {
    let bomb = gzip(&vec![b' '; 16 << 20]);
    let big = json!({"client_id": "c", "ops": [{"op_id": "big", "collection": "notices", "record_id": "big",
        "kind": "put", "base_version": null, "hlc": "1700000000000-00000-h", "data": {"s": "x".repeat(9 << 20)}}]});
    Fixtures {
        bomb,
        big_push_gz: gzip(big.to_string().as_bytes()),
    }
}

fn gzip_case(rng: &mut StdRng, i: u64, fx: &Fixtures) -> Req {
    let valid = valid_push(rng, i).to_string().into_bytes();
    let (enc, body): (&str, Vec<u8>) = match rng.random_range(0..9) {
        0 => ("gzip", fx.bomb.clone()),
        1 => ("gzip", fx.big_push_gz.clone()),
        2 => (
            "gzip",
            (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect(),
        ),
        3 => {
            let g = gzip(&valid);
            let cut = rng.random_range(0..g.len());
            ("gzip", g[..cut].to_vec())
        }
        4 => {
            let mut g = gzip(&valid);
            let at = rng.random_range(10..g.len());
            g[at] ^= 0x5a;
            ("gzip", g)
        }
        5 => ("gzip", gzip(&gzip(&valid))),
        6 => (
            *pick(
                rng,
                &[
                    "br",
                    "deflate",
                    "zstd",
                    "gzip, gzip",
                    "identity",
                    "x-unknown",
                    "",
                ],
            ),
            gzip(&valid),
        ),
        7 => ("gzip", valid),
        _ => ("gzip", gzip(&valid)),
    };
    let mut r = Req::push("gzip", body, rng);
    r.headers
        .push(("content-encoding".into(), enc.as_bytes().to_vec()));
    r
}

fn hostile_crdt(rng: &mut StdRng) -> Value {
    let big = u64::MAX;
    pick(
        rng,
        &[
            json!({"$crdt": "gcounter", "p": {"r1": big, "r2": big}}),
            json!({"$crdt": "gcounter", "p": {"r1": -1}}),
            json!({"$crdt": "gcounter", "p": {"r1": 1.5}}),
            json!({"$crdt": "gcounter", "p": "x"}),
            json!({"$crdt": "gcounter"}),
            json!({"$crdt": "pncounter", "p": {"r1": big}, "n": {"r2": big}}),
            json!({"$crdt": "pncounter", "p": {"r1": 0}, "n": {"r1": big, "r2": big, "r3": big}}),
            json!({"$crdt": "pncounter", "p": {}, "n": null}),
            json!({"$crdt": "lww"}),
            json!({"$crdt": "lww", "v": 1, "t": 5}),
            json!({"$crdt": "lww", "v": 1, "t": ""}),
            json!({"$crdt": "lww", "v": {"$crdt": "lww", "v": 1, "t": "z"}, "t": "9999999999999-99999-z"}),
            json!({"$crdt": "orset", "adds": {"a": [1]}, "removes": {}}),
            json!({"$crdt": "orset", "adds": {"a": "r:1"}}),
            json!({"$crdt": "orset", "adds": {"a": ["r:1"]}, "removes": {"a": ["r:1", "r:2"]}}),
            json!({"$crdt": "orset", "adds": [], "removes": []}),
            json!({"$crdt": "unknown"}),
            json!({"$crdt": 5}),
            json!({"$crdt": null}),
            json!({"$crdt": "gcounter", "p": {"": 1}}),
            json!({"$crdt": "gcounter", "p": {"\u{0}": 1, "😀": 2}}),
        ],
    )
    .clone()
}

fn pull_query(rng: &mut StdRng) -> String {
    let since = [
        "",
        "0",
        "-1",
        "abc",
        "%00",
        "%ff%fe",
        "99999999999999999999999",
        "eyJzZXEiOjF9",
        "MTIz",
        "null",
        "%22%22",
        "1e10",
        "=",
        "&",
        "\u{202e}",
        "😀",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ];
    let limit = [
        "",
        "0",
        "-1",
        "1",
        "5000",
        "5001",
        "1e10",
        "abc",
        "99999999999999999999",
        "1.5",
        "+3",
        " 5",
        "0x10",
        "%00",
        "18446744073709551615",
    ];
    let colls = [
        "",
        "drafts",
        "patients",
        "notices",
        "answers",
        "drafts,drafts",
        ",",
        "a,,b",
        "Drafts",
        "%00",
        "drafts%2Cpatients",
        "😀",
        "a b",
        "../etc",
    ];
    let mut q = Vec::new();
    for _ in 0..rng.random_range(0..5) {
        let s = match rng.random_range(0..4) {
            0 => format!("since={}", pick(rng, &since)),
            1 => format!("limit={}", pick(rng, &limit)),
            2 => format!("collections={}", pick(rng, &colls)),
            _ => format!(
                "{}={}",
                pick(rng, &["x", "since[]", "limit[]", ""]),
                pick(rng, &since)
            ),
        };
        q.push(s);
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// The generator: one request per index, reproducible from (seed, index) alone.
fn generate(seed: u64, i: u64, fx: &Fixtures) -> Req {
    let mut rng = StdRng::seed_from_u64(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let rng = &mut rng;
    match rng.random_range(0..16) {
        0 => {
            let v = random_json(rng, 5);
            Req::push("random_json", v.to_string().into_bytes(), rng)
        }
        1 | 2 => Req::push("wrong_types", wrong_types(rng, i), rng),
        3 => Req::push("raw_literals", push_with_raw(rng, i), rng),
        4 => Req::push("duplicate_keys", duplicate_keys(rng, i), rng),
        5 => Req::push("invalid_utf8", invalid_utf8(rng, i), rng),
        6 => Req::push("deep_nesting", deep(rng), rng),
        7 => {
            let mut b = valid_push(rng, i);
            let field = *pick(
                rng,
                &[
                    "collection",
                    "record_id",
                    "op_id",
                    "client_id",
                    "datakey",
                    "hlc",
                    "kind",
                ],
            );
            let s = odd_string(rng);
            match field {
                "client_id" => b["client_id"] = json!(s),
                "datakey" => {
                    b["ops"][0]["data"] = json!({ s.clone(): s });
                }
                f => b["ops"][0][f] = json!(s),
            }
            Req::push("odd_unicode", b.to_string().into_bytes(), rng)
        }
        8 => {
            if i % 40 == 8 {
                gzip_case(rng, i, fx)
            } else {
                // Bad gzip is cheap; the bomb and big bodies are rarer.
                let mut r = gzip_case(rng, i, fx);
                if r.body.len() > 1 << 16 {
                    r.body = gzip(b"{\"client_id\":\"c\",\"ops\":[]}");
                }
                r
            }
        }
        9 => {
            if i % 200 == 9 {
                let body = format!(
                    "{{\"client_id\":\"c\",\"ops\":[],\"pad\":\"{}\"}}",
                    "x".repeat((8 << 20) + 1)
                );
                Req::push("oversized", body.into_bytes(), rng)
            } else {
                let mut r = Req::push("oversized", Vec::new(), rng);
                let n = *pick(rng, &[1001usize, 1000, 5000]);
                let ops: Vec<Value> = (0..n)
                    .map(|k| json!({"op_id": format!("many-{i}-{k}")}))
                    .collect();
                r.body = json!({"client_id": "c", "ops": ops})
                    .to_string()
                    .into_bytes();
                r
            }
        }
        10 => {
            let mut r = if rng.random() {
                Req::push(
                    "method_path_headers",
                    valid_push(rng, i).to_string().into_bytes(),
                    rng,
                )
            } else {
                Req::pull("method_path_headers", String::new(), rng)
            };
            match rng.random_range(0..5) {
                0 => {
                    r.method = pick(
                        rng,
                        &[
                            "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO",
                        ],
                    )
                    .to_string()
                }
                1 => {
                    r.path = pick(
                        rng,
                        &[
                            "/",
                            "/v1",
                            "/v1/",
                            "/v1/push/",
                            "/v2/push",
                            "/V1/PUSH",
                            "/v1//push",
                            "/v1/push/../pull",
                            "/%2e%2e/v1/push",
                            "/v1/pu%00sh",
                            "/health/x",
                            "/v1/pull?since=",
                            "/v1/pull#x",
                        ],
                    )
                    .to_string()
                }
                2 => r.headers.retain(|(k, _)| k != "content-type"),
                3 => {
                    r.headers.retain(|(k, _)| k != "content-type");
                    const TYPES: &[&[u8]] = &[
                        b"text/plain",
                        b"application/json; charset=latin1",
                        b"multipart/form-data",
                        b"\xff\xfe",
                        b"application/x-www-form-urlencoded",
                    ];
                    let ct = pick(rng, TYPES).to_vec();
                    r.headers.push(("content-type".into(), ct));
                }
                _ => {
                    let (k, v): (&str, &[u8]) = *pick(
                        rng,
                        &[
                            ("accept-encoding", b"gzip;q=0".as_slice()),
                            ("accept-encoding", b"\xff"),
                            ("x-forwarded-for", b"1.2.3.4"),
                            ("transfer-encoding", b"chunked"),
                            ("expect", b"100-continue"),
                            ("accept", b"text/html"),
                        ],
                    );
                    r.headers.push((k.into(), v.to_vec()));
                }
            }
            r
        }
        11 => {
            let mut r = if rng.random() {
                Req::push("tokens", valid_push(rng, i).to_string().into_bytes(), rng)
            } else {
                Req::pull("tokens", String::new(), rng)
            };
            r.headers.retain(|(k, _)| k != "authorization");
            r.user = None;
            let long = format!("Bearer {}", "t".repeat(8000));
            let variant = rng.random_range(0..12);
            // `1*SP` after the scheme (RFC 6750) and trailing whitespace (trimmed by
            // HTTP) still carry amina's token.
            if variant == 3 || variant == 9 {
                r.user = Some("amina");
            }
            let v: Vec<u8> = match variant {
                0 => Vec::new(),
                1 => b"Bearer".to_vec(),
                2 => b"Bearer ".to_vec(),
                3 => format!("Bearer  {AMINA}").into_bytes(),
                4 => format!("Basic {AMINA}").into_bytes(),
                5 => format!("bearer {AMINA}x").into_bytes(),
                6 => format!("Bearer {}", &AMINA[..AMINA.len() - 1]).into_bytes(),
                7 => long.into_bytes(),
                8 => b"Bearer \xff\xfe".to_vec(),
                9 => format!("Bearer {AMINA}\u{0}")
                    .into_bytes()
                    .into_iter()
                    .filter(|b| *b != 0)
                    .chain(*b"\t")
                    .collect(),
                10 => format!("Bearer {}", odd_string(rng))
                    .into_bytes()
                    .into_iter()
                    .filter(|b| !b.is_ascii_control())
                    .collect(),
                _ => b"Bearer token-dana-0123456788".to_vec(),
            };
            if rng.random_range(0..10) > 0 {
                r.headers.push(("authorization".into(), v));
            }
            r
        }
        12 => {
            // Other users' record ids, with every kind of write.
            let (c, id) = *pick(rng, VICTIM_IDS);
            let (c, id) = if rng.random_range(0..4) == 0 {
                ("drafts", "a-draft")
            } else {
                (c, id)
            };
            let mut op = valid_op(rng, i);
            op["collection"] = json!(c);
            op["record_id"] = json!(id);
            op["base_version"] = json!(*pick(rng, &[Value::Null, json!(1), json!(2), json!(0)]));
            if rng.random() {
                op["data"] = json!({"hits": hostile_crdt(rng)});
            }
            let mut r = Req::push(
                "other_users_records",
                json!({"client_id": "c", "ops": [op]})
                    .to_string()
                    .into_bytes(),
                rng,
            );
            if c == "drafts" && id == "a-draft" && r.user == Some("amina") {
                r.user = Some("ben");
                r.headers[0].1 = format!("Bearer {BEN}").into_bytes();
            }
            r
        }
        13 => {
            let mut op = valid_op(rng, i);
            let forged =
                json!({"owner": "dana", "team": "east", "user": "dana", "creator": "dana"});
            for (k, v) in forged.as_object().unwrap() {
                if rng.random() {
                    op[k] = v.clone();
                }
                if rng.random() {
                    op["data"][k] = v.clone();
                }
            }
            op["record_id"] = json!(format!("forged-{}", rng.random_range(0..50)));
            Req::push(
                "forged_owner",
                json!({"client_id": "c", "ops": [op]})
                    .to_string()
                    .into_bytes(),
                rng,
            )
        }
        14 => {
            let q = pull_query(rng);
            Req::pull("garbage_pull", q, rng)
        }
        _ => {
            let mut b = valid_push(rng, i);
            for op in b["ops"].as_array_mut().unwrap() {
                op["collection"] = json!("notices");
                op["record_id"] = json!(format!("crdt-{}", rng.random_range(0..5)));
                op["data"] = json!({"hits": hostile_crdt(rng), "n": *pick(rng, &[json!(u64::MAX), json!(i64::MIN), json!(1e308)])});
                if rng.random() {
                    op["base_version"] = json!(*pick(
                        rng,
                        &[
                            json!(u64::MAX),
                            json!(i64::MIN),
                            json!(-1),
                            json!(1e308),
                            json!(0.5)
                        ]
                    ));
                }
            }
            Req::push("crdt_and_numbers", b.to_string().into_bytes(), rng)
        }
    }
}

/// What one response showed.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    by_status: BTreeMap<u16, u64>,
    by_kind: BTreeMap<&'static str, u64>,
    server_errors: Vec<String>,
    non_json_errors: Vec<String>,
    leaks: Vec<String>,
    transport_errors: Vec<String>,
    /// Ops answered `rejected` with `forbidden` inside 200 answers.
    forbidden: u64,
}

fn is_error_object(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    v.as_object().is_some_and(|o| o.len() == 1)
        && v["error"]["code"].is_string()
        && v["error"]["message"].is_string()
}

async fn send(
    client: &reqwest::Client,
    server: &TestServer,
    r: &Req,
) -> Result<(u16, Vec<u8>), String> {
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut b = client.request(method, server.url(&r.path));
    for (k, v) in &r.headers {
        let v = reqwest::header::HeaderValue::from_bytes(v)
            .map_err(|e| format!("client refused header: {e}"))?;
        b = b.header(k.as_str(), v);
    }
    let resp = b
        .body(r.body.clone())
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| format!("{e:?}"))?.to_vec();
    Ok((status, body))
}

async fn get_json(client: &reqwest::Client, url: String, token: &str) -> (u16, Value) {
    let r = client.get(url).bearer_auth(token).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn post_json(
    client: &reqwest::Client,
    server: &TestServer,
    token: &str,
    body: Value,
) -> (u16, Value) {
    let r = client
        .post(server.url("/v1/push"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// The victim's rows in the server's database, every column that matters.
/// collection, record_id, data, version, deleted, hlc, owner, team
type Row = (
    String,
    String,
    Option<String>,
    i64,
    i64,
    String,
    String,
    String,
);

fn victim_rows(db: &Path) -> Vec<Row> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut stmt = c
        .prepare(
            "SELECT collection, record_id, data, version, deleted, hlc, owner, team FROM records \
             WHERE owner = 'dana' OR team = 'east' OR data LIKE '%dana-secret%' ORDER BY collection, record_id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_4xx_json_errors_and_change_nothing_they_may_not() {
    let started = Instant::now();
    let seed: u64 = std::env::var("OUTPOST_HOSTILE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let count: u64 = std::env::var("OUTPOST_HOSTILE_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let only: Option<u64> = std::env::var("OUTPOST_HOSTILE_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    let server = Arc::new(TestServer::start_with(&Backend::Sqlite, &extra_config()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    // The victim's records, and a private draft of amina's that ben and chioma must not see.
    let ops: Vec<Value> = VICTIM_IDS
        .iter()
        .enumerate()
        .map(|(k, (c, id))| json!({"op_id": format!("dana-{k}"), "collection": c, "record_id": id, "kind": "put",
            "base_version": null, "data": {"secret": DANA_MARK, "hits": {"$crdt": "gcounter", "p": {"dana": 3}}},
            "hlc": "1700000000000-00000-dana"}))
        .collect();
    let (s, v) = post_json(
        &client,
        &server,
        DANA,
        json!({"client_id": "dana", "ops": ops}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "applied"),
        "{v}"
    );
    let (s, v) = post_json(&client, &server, AMINA, json!({"client_id": "a", "ops": [{"op_id": "a-0", "collection": "drafts",
        "record_id": "a-draft", "kind": "put", "base_version": null, "data": {"secret": AMINA_MARK}, "hlc": "1700000000000-00000-a"}]})).await;
    assert_eq!(
        (s, v["results"][0]["status"].as_str()),
        (200, Some("applied"))
    );
    let victim_before = victim_rows(&server_db(&server));
    let (_, dana_pull_before) = get_json(&client, server.url("/v1/pull"), DANA).await;

    let fx = Arc::new(fixtures());
    let next = Arc::new(AtomicUsize::new(0));
    let indices: Arc<Vec<u64>> = Arc::new(match only {
        Some(i) => vec![i],
        None => (0..count).collect(),
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (server, client, fx, next, indices) = (
            server.clone(),
            client.clone(),
            fx.clone(),
            next.clone(),
            indices.clone(),
        );
        workers.spawn(async move {
            let mut t = Tally::default();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = indices.get(k) else { break };
                let r = generate(seed, i, &fx);
                *t.by_kind.entry(r.kind).or_default() += 1;
                let what = format!(
                    "request {i} ({} {} {}, {} body bytes)",
                    r.kind,
                    r.method,
                    r.path,
                    r.body.len()
                );
                match send(&client, &server, &r).await {
                    Err(e) if e.starts_with("client refused") => continue,
                    Err(e) => t.transport_errors.push(format!("{what}: {e}")),
                    Ok((status, body)) => {
                        t.sent += 1;
                        *t.by_status.entry(status).or_default() += 1;
                        let text = String::from_utf8_lossy(&body);
                        t.forbidden += text.matches("\"code\":\"forbidden\"").count() as u64;
                        if status >= 500 {
                            t.server_errors
                                .push(format!("{what}: {status} {}", &text[..text.len().min(300)]));
                        }
                        let head = r.method == "HEAD" && body.is_empty();
                        if !((200..300).contains(&status) || head || is_error_object(&body)) {
                            t.non_json_errors.push(format!(
                                "{what}: {status} {:?}",
                                &text[..text.len().min(300)]
                            ));
                        }
                        let leaked = text.contains(DANA_MARK)
                            || (r.user != Some("amina") && text.contains(AMINA_MARK));
                        if leaked {
                            t.leaks.push(format!(
                                "{what} as {:?} (headers {:?}): {}",
                                r.user,
                                r.headers
                                    .iter()
                                    .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
                                    .collect::<Vec<_>>(),
                                &text[..text.len().min(300)]
                            ));
                        }
                    }
                }
            }
            t
        });
    }
    let mut total = Tally::default();
    while let Some(t) = workers.join_next().await {
        let t = t.unwrap();
        total.sent += t.sent;
        total.forbidden += t.forbidden;
        for (k, v) in t.by_status {
            *total.by_status.entry(k).or_default() += v;
        }
        for (k, v) in t.by_kind {
            *total.by_kind.entry(k).or_default() += v;
        }
        total.server_errors.extend(t.server_errors);
        total.non_json_errors.extend(t.non_json_errors);
        total.leaks.extend(t.leaks);
        total.transport_errors.extend(t.transport_errors);
    }
    let stderr = server.stderr();
    let panics = stderr.matches("panicked").count();
    println!(
        "hostile requests: {}, 5xx: {}, panics: {panics}, non-JSON errors: {}, leaks: {}, no answer: {} in {:.1} s",
        total.sent,
        total.server_errors.len(),
        total.non_json_errors.len(),
        total.leaks.len(),
        total.transport_errors.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "  ops answered forbidden: {}\n  by status: {:?}\n  by kind: {:?}",
        total.forbidden, total.by_status, total.by_kind
    );
    for (name, list) in [
        ("5xx", &total.server_errors),
        ("non-JSON error", &total.non_json_errors),
        ("leak", &total.leaks),
        ("no answer", &total.transport_errors),
    ] {
        for e in list.iter().take(10) {
            println!("  {name}: {e}");
        }
    }
    if panics > 0 {
        println!("server stderr:\n{}", &stderr[..stderr.len().min(4000)]);
    }

    // Still alive, and still right.
    let alive = Arc::into_inner(server).map(|mut s| {
        assert!(s.is_running(), "the server process died");
        s
    });
    let server = alive.expect("workers done");
    let (s, v) = get_json(&client, server.url("/health"), "").await;
    assert_eq!((s, v), (200, json!({"status": "ok", "protocol": 1})));
    let (s, v) = post_json(
        &client,
        &server,
        AMINA,
        json!({"client_id": "after", "ops": [{"op_id": "after-1",
        "collection": "patients", "record_id": "after-1", "kind": "put", "base_version": null,
        "data": {"ok": true}, "hlc": "1800000000000-00000-after"}]}),
    )
    .await;
    assert_eq!(
        (
            s,
            v["results"][0]["status"].as_str(),
            v["results"][0]["version"].as_i64()
        ),
        (200, Some("applied"), Some(1)),
        "{v}"
    );
    let (s, v) = get_json(
        &client,
        server.url("/v1/pull?collections=patients&limit=5000"),
        BEN,
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["record_id"] == "after-1" && c["data"]["ok"] == true),
        "{v}"
    );
    assert_eq!(
        victim_rows(&server_db(&server)),
        victim_before,
        "the victim's records changed"
    );
    let (_, dana_pull_after) = get_json(&client, server.url("/v1/pull"), DANA).await;
    let dana_records = |v: &Value| -> Vec<Value> {
        v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["data"]["secret"] == DANA_MARK)
            .cloned()
            .collect()
    };
    assert_eq!(
        dana_records(&dana_pull_after),
        dana_records(&dana_pull_before)
    );
    // Forged owner fields never made dana the owner of anything new.
    assert!(
        victim_rows(&server_db(&server))
            .iter()
            .all(|r| VICTIM_IDS.contains(&(r.0.as_str(), r.1.as_str())))
    );

    assert!(
        total.sent >= count.min(indices.len() as u64) * 99 / 100,
        "too few requests sent: {}",
        total.sent
    );
    assert_eq!(panics, 0, "the server panicked");
    assert!(
        total.server_errors.is_empty(),
        "5xx answers: {:?}",
        &total.server_errors[..total.server_errors.len().min(5)]
    );
    assert!(
        total.non_json_errors.is_empty(),
        "non-JSON errors: {:?}",
        &total.non_json_errors[..total.non_json_errors.len().min(5)]
    );
    assert!(
        total.leaks.is_empty(),
        "leaks: {:?}",
        &total.leaks[..total.leaks.len().min(5)]
    );
    assert!(
        total.transport_errors.is_empty(),
        "no answer: {:?}",
        &total.transport_errors[..total.transport_errors.len().min(5)]
    );
}
