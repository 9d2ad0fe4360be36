//! Simulated devices under load: many devices at once, each signed in as a user of its
//! own in a team of its own, speaking protocol v1 over real HTTP.
//!
//! Why not thousands of device engines: each would bring its own SQLite store, and
//! the run would measure the client machine, not the server. A simulated device keeps
//! only what the wire needs (the versions it was answered, its pull cursor) and does
//! what a field device does: push 20 answers, pull what changed, now and then lose a
//! conflict, resend what was deferred or failed with the same op_ids.
//!
//! The benchmark's load figure and the scale-out test of two server processes run
//! the same devices, so the exactly-once check covers the load the README reports.
//! [`DeviceScript`] is the part both the HTTP devices and the benchmark's baseline
//! (which writes the same rows straight into PostgreSQL) follow.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The collection simulated devices write: team-readable under the kit's config.
pub const LOAD_COLLECTION: &str = "answers";

/// Device `i`'s user name.
pub fn load_user(i: usize) -> String {
    format!("device-{i:06}")
}

/// Device `i`'s team: a team of its own, so its pulls see only its own records.
pub fn load_team(i: usize) -> String {
    format!("team-{i:06}")
}

/// Device `i`'s static token (longer than the server's minimum).
pub fn load_token(i: usize) -> String {
    format!("load-token-{i:06}-0123456789abcdef0123456789")
}

/// Server config for `n` devices: room for a connection each (`max_connections`),
/// then one `[[users]]` entry per device. Goes into [`crate::base_config`]'s `extra`.
pub fn load_config(n: usize) -> String {
    let mut toml = format!("max_connections = {}\n", n + 256);
    for i in 0..n {
        toml.push_str(&format!(
            "\n[[users]]\nname = \"{}\"\nteam = \"{}\"\ntoken = \"{}\"\n",
            load_user(i),
            load_team(i),
            load_token(i)
        ));
    }
    toml
}

/// How much each device does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadPlan {
    pub devices: usize,
    /// Rounds of push-then-pull per device.
    pub rounds: usize,
    /// Ops per push.
    pub ops_per_push: usize,
    /// Every this many rounds (offset by the device), one op of the push conflicts;
    /// 0 never.
    pub conflict_every: usize,
    /// Every this many rounds (offset by the device), a push is sent a second time to
    /// the next server after it was answered, as after a lost answer; its answer must
    /// be the same. 0 never.
    pub repeat_every: usize,
}

impl LoadPlan {
    /// Edits in each round after the first: a quarter of the ops, at most five. They
    /// take records the round before created (its ops from `edits()` on, which are
    /// creates since `2 * edits() < ops_per_push`).
    pub fn edits(&self) -> usize {
        (self.ops_per_push / 4).min(5)
    }
}

/// One op a device sends.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedOp {
    pub op_id: String,
    pub record_id: String,
    pub base: Option<i64>,
    pub data: Value,
}

impl PlannedOp {
    /// The op as protocol v1 JSON (`put` of a whole record).
    pub fn to_json(&self) -> Value {
        crate::put_with_id(
            &self.op_id,
            LOAD_COLLECTION,
            &self.record_id,
            self.base,
            self.data.clone(),
        )
    }
}

/// What one device sends in each round, from the versions it was answered.
///
/// Round 0 creates `ops_per_push` records. Each later round edits
/// [`LoadPlan::edits`] records the round before created, on the version it was told,
/// and creates the rest; on a conflict round
/// one of the creates is a record that exists already (as when two devices create the
/// same form), which the server answers `conflict`.
#[derive(Debug, Clone)]
pub struct DeviceScript {
    device: usize,
    plan: LoadPlan,
    versions: HashMap<String, i64>,
}

impl DeviceScript {
    pub fn new(device: usize, plan: LoadPlan) -> DeviceScript {
        DeviceScript {
            device,
            plan,
            versions: HashMap::new(),
        }
    }

    fn id(round: usize, k: usize) -> String {
        format!("r{round:04}-{k:03}")
    }

    /// The ops of `round`.
    pub fn push(&self, round: usize) -> Vec<PlannedOp> {
        let n = self.plan.ops_per_push;
        let edits = if round == 0 { 0 } else { self.plan.edits() };
        let conflict = round > 0
            && self.plan.conflict_every > 0
            && (self.device + round).is_multiple_of(self.plan.conflict_every);
        let mut ops = Vec::with_capacity(n);
        for k in 0..n {
            let (record_id, base) = if k < edits {
                let id = Self::id(round - 1, edits + k);
                let base = self.versions.get(&id).copied();
                (id, base)
            } else if conflict && k == n - 1 {
                (Self::id(0, n - 1), None)
            } else {
                (Self::id(round, k), None)
            };
            ops.push(PlannedOp {
                op_id: crate::op_id(),
                record_id,
                base,
                data: answer_data(self.device, round, k),
            });
        }
        ops
    }

    /// Takes the version an op was answered with.
    pub fn applied(&mut self, record_id: &str, version: i64) {
        self.versions.insert(record_id.to_owned(), version);
    }
}

/// A survey answer of about 250 bytes of JSON.
pub fn answer_data(device: usize, round: usize, k: usize) -> Value {
    json!({
        "form": "household-survey",
        "device": device,
        "round": round,
        "question": format!("q-{k:03}"),
        "answer": "Two adults, three children; water from the borehole; no fever this week.",
        "score": (device * 31 + round * 7 + k) % 97,
        "checked": k.is_multiple_of(2),
    })
}

/// One op's final answer, as the device was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentOp {
    pub user: String,
    pub op_id: String,
    /// `applied`, `conflict` or `rejected`.
    pub status: String,
}

/// What a load run did.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub devices: usize,
    /// Ops with a final answer (applied, conflict or rejected).
    pub ops: u64,
    pub applied: u64,
    pub conflicts: u64,
    pub rejected: u64,
    /// Ops answered `deferred` and sent again.
    pub deferred: u64,
    /// Requests sent again after a network error, a 429 or a 5xx.
    pub retries: u64,
    /// Pushes sent a second time on purpose, answered the same.
    pub repeats: u64,
    pub requests: u64,
    pub pulled: u64,
    pub push_latency: Vec<Duration>,
    pub pull_latency: Vec<Duration>,
    pub wall: Duration,
    /// Every op's final answer (when asked for).
    pub sent: Vec<SentOp>,
}

impl LoadReport {
    /// Adds one device's counts and samples (not its wall time).
    pub fn absorb(&mut self, d: LoadReport) {
        self.ops += d.ops;
        self.applied += d.applied;
        self.conflicts += d.conflicts;
        self.rejected += d.rejected;
        self.deferred += d.deferred;
        self.retries += d.retries;
        self.repeats += d.repeats;
        self.requests += d.requests;
        self.pulled += d.pulled;
        self.push_latency.extend(d.push_latency);
        self.pull_latency.extend(d.pull_latency);
        self.sent.extend(d.sent);
    }
}

/// An HTTP client for many devices at once: a connection per device in flight.
pub fn load_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// Runs `plan.devices` devices at once against `urls` (base URLs, `http://host:port`;
/// device `i` uses `urls[i % len]`, and a retry or a repeat goes to the next one).
/// `keep_ops` keeps every op's answer in [`LoadReport::sent`].
pub async fn run_load(
    urls: &[String],
    plan: LoadPlan,
    keep_ops: bool,
) -> Result<LoadReport, String> {
    if urls.is_empty() {
        return Err("no server".into());
    }
    let client = load_client();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(plan.devices + 1));
    let mut tasks = Vec::with_capacity(plan.devices);
    for i in 0..plan.devices {
        let (client, urls, start) = (client.clone(), urls.to_vec(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            device(&client, &urls, i, plan, keep_ops).await
        }));
    }
    start.wait().await;
    let t0 = Instant::now();
    let mut report = LoadReport {
        devices: plan.devices,
        ..LoadReport::default()
    };
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(d)) => report.absorb(d),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("a device panicked: {e}"));
            }
        }
    }
    report.wall = t0.elapsed();
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// Attempts of one request before the run fails.
const ATTEMPTS: u32 = 60;

/// Sends one request until it gets a 2xx: a network error, 429 or 5xx is retried on
/// the next server after a short pause. The answer's JSON and the time of the
/// successful attempt.
async fn send(
    client: &reqwest::Client,
    urls: &[String],
    mut at: usize,
    token: &str,
    push: Option<&Value>,
    query: &str,
    report: &mut LoadReport,
) -> Result<(Value, Duration), String> {
    for attempt in 0..ATTEMPTS {
        let base = &urls[at % urls.len()];
        let req = match push {
            Some(body) => client.post(format!("{base}/v1/push")).json(body),
            None => client.get(format!("{base}/v1/pull{query}")),
        };
        report.requests += 1;
        let t = Instant::now();
        let outcome = req.bearer_auth(token).send().await;
        let status = match outcome {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.bytes().await;
                let took = t.elapsed();
                match (status, body) {
                    (200..=299, Ok(b)) => {
                        let v: Value = serde_json::from_slice(&b)
                            .map_err(|e| format!("answer is not JSON: {e}"))?;
                        return Ok((v, took));
                    }
                    (s, Ok(b)) if s != 429 && s < 500 => {
                        return Err(format!("HTTP {s}: {}", String::from_utf8_lossy(&b)));
                    }
                    (s, _) => s.to_string(),
                }
            }
            Err(e) => e.to_string(),
        };
        report.retries += 1;
        if attempt + 1 == ATTEMPTS {
            return Err(format!("gave up after {ATTEMPTS} attempts: {status}"));
        }
        at += 1;
        tokio::time::sleep(Duration::from_millis(20 + 10 * u64::from(attempt.min(20)))).await;
    }
    Err("unreachable".into())
}

async fn device(
    client: &reqwest::Client,
    urls: &[String],
    i: usize,
    plan: LoadPlan,
    keep_ops: bool,
) -> Result<LoadReport, String> {
    let token = load_token(i);
    let user = load_user(i);
    let client_id = format!("load-{i:06}");
    let mut script = DeviceScript::new(i, plan);
    let mut r = LoadReport::default();
    let mut cursor: Option<String> = None;
    for round in 0..plan.rounds {
        let mut pending: Vec<Value> = script.push(round).iter().map(PlannedOp::to_json).collect();
        let repeat = plan.repeat_every > 0 && (i + round).is_multiple_of(plan.repeat_every);
        while !pending.is_empty() {
            let body = json!({"client_id": client_id, "ops": pending});
            let (answer, took) = send(client, urls, i, &token, Some(&body), "", &mut r).await?;
            r.push_latency.push(took);
            if repeat {
                let (again, _) = send(client, urls, i + 1, &token, Some(&body), "", &mut r).await?;
                // A deferred op had no effect, so the repeat may apply it; every op
                // answered in both must be answered the same.
                let (a, b) = (&answer["results"], &again["results"]);
                for k in 0..a.as_array().map_or(0, Vec::len) {
                    let final_in_both =
                        a[k]["status"] != "deferred" && b[k]["status"] != "deferred";
                    if final_in_both && a[k] != b[k] {
                        return Err(format!(
                            "{user}: a repeated op was answered differently: {} then {}",
                            a[k], b[k]
                        ));
                    }
                }
                r.repeats += 1;
            }
            let results = answer["results"]
                .as_array()
                .ok_or_else(|| format!("no results: {answer}"))?;
            if results.len() != pending.len() {
                return Err(format!(
                    "{} results for {} ops",
                    results.len(),
                    pending.len()
                ));
            }
            let mut again = Vec::new();
            for (op, res) in pending.into_iter().zip(results) {
                let status = res["status"].as_str().unwrap_or_default();
                match status {
                    "deferred" => {
                        r.deferred += 1;
                        again.push(op);
                        continue;
                    }
                    "applied" => {
                        r.applied += 1;
                        let id = op["record_id"].as_str().unwrap_or_default();
                        script.applied(id, res["version"].as_i64().unwrap_or(0));
                    }
                    "conflict" => r.conflicts += 1,
                    "rejected" => r.rejected += 1,
                    other => return Err(format!("unknown status {other:?}: {res}")),
                }
                r.ops += 1;
                if keep_ops {
                    r.sent.push(SentOp {
                        user: user.clone(),
                        op_id: op["op_id"].as_str().unwrap_or_default().to_owned(),
                        status: status.to_owned(),
                    });
                }
            }
            pending = again;
        }
        loop {
            let query = match &cursor {
                Some(c) => format!("?since={c}&limit=500&collections={LOAD_COLLECTION}"),
                None => format!("?limit=500&collections={LOAD_COLLECTION}"),
            };
            let (page, took) = send(client, urls, i, &token, None, &query, &mut r).await?;
            r.pull_latency.push(took);
            r.pulled += page["changes"].as_array().map_or(0, |c| c.len() as u64);
            cursor = page["cursor"].as_str().map(str::to_owned);
            if page["has_more"] != true {
                break;
            }
        }
    }
    Ok(r)
}
