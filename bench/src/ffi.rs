//! Figure 8: what crossing the FFI costs, for `get` and `put`.
//!
//! The Rust baseline calls the very functions the bindings export (`outpost_ffi::Outpost`
//! with JSON text in and out), so the difference to the Python and Kotlin timings is the
//! generated marshalling plus the foreign runtime's call overhead, not the store. The
//! foreign scripts load the library of the same profile as this binary, with bindings
//! generated from it by `uniffi-bindgen` exactly as scripts/bindings-test.sh does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use outpost_ffi::{
    CollectionSpec, ConflictStrategy, Durability, Outpost, OutpostConfig, OutpostError,
};

use crate::util::{Latency, Result, fail};
use outpost_testkit::{cargo_build, profile_dir};

/// Per-call timings of one language.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct CallTimes {
    pub n: u64,
    pub put_p50_us: f64,
    pub put_mean_us: f64,
    pub get_p50_us: f64,
    pub get_mean_us: f64,
}

#[derive(Debug)]
struct NoToken;

#[async_trait::async_trait]
impl outpost_ffi::TokenProvider for NoToken {
    async fn token(&self, _refresh: bool) -> std::result::Result<Option<String>, OutpostError> {
        Ok(Some(String::new()))
    }
}

/// The data every language writes: the same ~300-byte JSON text.
pub fn data_json(i: u64) -> String {
    crate::util::payload(i).to_string()
}

/// The Rust side: `n` puts then `n` gets of distinct records, `Durability::Normal` so a
/// disk flush does not drown the call cost.
pub fn rust(dir: &Path, n: u64) -> Result<CallTimes> {
    let config = OutpostConfig {
        path: dir.join("f8-rust.db").display().to_string(),
        server_url: "http://127.0.0.1:9/".to_owned(),
        collections: vec![CollectionSpec {
            name: "answers".to_owned(),
            strategy: ConflictStrategy::LastWriteWins,
            indexes: Vec::new(),
            search: Vec::new(),
            eager_attachments: false,
        }],
        durability: Durability::Normal,
        encryption_key: None,
        auto_sync: false,
        backoff_initial_ms: None,
        backoff_max_ms: None,
        network_debounce_ms: None,
        user_id: None,
        attachment_cache_bytes: None,
        attachment_grace_ms: None,
    };
    let db = Outpost::open(config, Box::new(NoToken))?;
    let mut puts = Vec::with_capacity(n as usize);
    let mut gets = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (c, id, data) = ("answers".to_owned(), format!("r-{i:08}"), data_json(i));
        let t = Instant::now();
        db.put(c, Some(id), data)?;
        puts.push(t.elapsed());
    }
    for i in 0..n {
        let (c, id) = ("answers".to_owned(), format!("r-{i:08}"));
        let t = Instant::now();
        let r = db.get(c, id)?;
        gets.push(t.elapsed());
        if r.is_none() {
            return Err(fail("rust ffi: a written record is missing"));
        }
    }
    db.close()?;
    Ok(times(n, &puts, &gets))
}

fn times(n: u64, puts: &[Duration], gets: &[Duration]) -> CallTimes {
    let (p, g) = (Latency::of(puts), Latency::of(gets));
    CallTimes {
        n,
        put_p50_us: p.p50_us,
        put_mean_us: p.mean_us,
        get_p50_us: g.p50_us,
        get_mean_us: g.mean_us,
    }
}

/// Builds the FFI library and `uniffi-bindgen` of this profile and generates the
/// bindings of `language` into `out`. Returns the library's path.
pub fn generate(language: &str, out: &Path) -> Result<PathBuf> {
    cargo_build(&[
        "-p",
        "outpost-ffi",
        "--features",
        "cli",
        "--lib",
        "--bin",
        "uniffi-bindgen",
    ])?;
    let target = profile_dir()?;
    let lib = target.join(format!(
        "{}outpost_ffi{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let bindgen = target.join(format!("uniffi-bindgen{}", std::env::consts::EXE_SUFFIX));
    let status = Command::new(&bindgen)
        .arg("generate")
        .arg(&lib)
        .args(["--language", language, "--no-format", "--out-dir"])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        return Err(fail(format!("uniffi-bindgen generate {language} failed")));
    }
    Ok(lib)
}

fn parse_times(stdout: &[u8]) -> Result<CallTimes> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| fail(format!("no JSON result in output: {text}")))?;
    Ok(serde_json::from_str(line)?)
}

/// The Python side: bench/python/ffi_bench.py over freshly generated bindings.
pub fn python(dir: &Path, n: u64) -> Result<CallTimes> {
    let out_dir = dir.join("py");
    std::fs::create_dir_all(&out_dir)?;
    let lib = generate("python", &out_dir)?;
    if let Some(name) = lib.file_name() {
        std::fs::copy(&lib, out_dir.join(name))?;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/ffi_bench.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("--bindings")
        .arg(&out_dir)
        .arg("--db")
        .arg(dir.join("f8-python.db"))
        .arg("--n")
        .arg(n.to_string())
        .output()
        .map_err(|e| fail(format!("python3: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "python ffi bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse_times(&out.stdout)
}

/// The Kotlin side: bench/kotlin, a tiny Maven project compiling the generated Kotlin
/// bindings with a `main`, run on the JVM through JNA (offline Maven).
pub fn kotlin(dir: &Path, n: u64) -> Result<CallTimes> {
    let out_dir = dir.join("kt");
    std::fs::create_dir_all(&out_dir)?;
    let lib = generate("kotlin", &out_dir)?;
    let libdir = lib
        .parent()
        .ok_or_else(|| fail("library has no directory"))?;
    let project = concat!(env!("CARGO_MANIFEST_DIR"), "/kotlin");
    let build = dir.join("kt-build");
    let out = Command::new("mvn")
        .current_dir(project)
        .args(["-o", "-q", "-B", "-Dstyle.color=never", "test"])
        .arg(format!("-Dgen.dir={}", out_dir.display()))
        .arg(format!("-Dbuild.dir={}", build.display()))
        .arg(format!("-Dnative.dir={}", libdir.display()))
        .arg(format!("-Dbench.db={}", dir.join("f8-kotlin.db").display()))
        .arg(format!("-Dbench.n={n}"))
        .arg(format!("-Dbench.out={}", dir.join("kotlin.json").display()))
        .output()
        .map_err(|e| fail(format!("mvn: {e}")))?;
    if !out.status.success() {
        let mut msg = String::from_utf8_lossy(&out.stdout).into_owned();
        msg.push_str(&String::from_utf8_lossy(&out.stderr));
        let tail: String = msg.lines().rev().take(30).collect::<Vec<_>>().join("\n");
        return Err(fail(format!("kotlin ffi bench failed: {tail}")));
    }
    let text = std::fs::read(dir.join("kotlin.json"))?;
    parse_times(&text)
}
