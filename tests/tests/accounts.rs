#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A shared tablet against the real server: signing out under each policy with edits
//! still pending, the next user on the same file, the first user coming back, screens
//! observing through a sign-out, and token providers that say "signed out" apart from
//! "unreachable", with static tokens and with JWTs the server verifies.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use outpost_core::{
    ChangeEvent, EntryState, Error, Query, Record, SignOut, StatusListener, SyncActivity,
    SyncConfig, SyncOutcome, SyncStatus, TokenError, TokenFuture, TokenProvider,
};
use outpost_testkit::{AMINA, BEN, Backend, Fault, TestServer};
use outpost_tests::{Device, sync_config};
use serde_json::json;

fn tablet(dir: &std::path::Path, user: &str, token: &str, server: &TestServer) -> Device {
    let tokens = Arc::new(outpost_core::StaticToken(token.to_owned()));
    Device::open_as(dir, "tablet", Some(user), server, tokens, sync_config()).unwrap()
}

fn sync_first(secs: u64) -> SignOut {
    SignOut::SyncFirst {
        deadline: Duration::from_secs(secs),
    }
}

/// The ids of `collection`'s changes a user can pull from the server.
async fn on_server(server: &TestServer, token: &str, collection: &str) -> Vec<String> {
    let (changes, _) = server
        .pull_all(token, &format!("&collections={collection}"))
        .await;
    let mut ids: Vec<String> = changes
        .iter()
        .filter(|c| c["deleted"] == json!(false))
        .map(|c| c["record_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn ids(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_after_a_sync_sends_every_edit_and_leaves_nothing_of_hers() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let a = tablet(dir.path(), "amina", AMINA, &server);
    a.link.set_offline(true);
    for i in 0..3 {
        a.store
            .put("drafts", Some(&format!("d{i}")), json!({"note": i}))
            .unwrap();
    }
    a.store.put("answers", Some("q1"), json!({"a": 1})).unwrap();
    // No link: syncing first cannot empty the queue, so nothing is removed.
    let refused = a.engine.sign_out(sync_first(2)).await;
    assert_eq!(
        refused,
        Err(Error::UnsyncedEdits {
            pending: 4,
            failed: 0,
            conflicts: 0
        })
    );
    assert!(!a.store.is_closed());
    assert_eq!(a.store.query("drafts", &Query::new()).unwrap().len(), 3);
    a.link.set_offline(false);
    a.engine.sign_out(sync_first(30)).await.unwrap();
    assert!(a.store.is_closed());
    assert_eq!(a.store.get("drafts", "d0"), Err(Error::Closed));
    assert_eq!(
        on_server(&server, AMINA, "drafts").await,
        ["d0", "d1", "d2"]
    );

    // Ben on the same tablet: none of her records, not even the ones his team shares,
    // until he pulls what the server lets him read (not her private drafts).
    let b = tablet(dir.path(), "ben", BEN, &server);
    assert!(b.store.query("answers", &Query::new()).unwrap().is_empty());
    assert!(b.store.query("drafts", &Query::new()).unwrap().is_empty());
    assert_eq!(b.sync_until_quiet().await.outcome, SyncOutcome::Completed);
    assert_eq!(
        ids(&b.store.query("answers", &Query::new()).unwrap()),
        ["q1"]
    );
    assert!(b.store.query("drafts", &Query::new()).unwrap().is_empty());
    b.engine.sign_out(sync_first(30)).await.unwrap();

    // Amina back: her data comes from the server again.
    let a = tablet(dir.path(), "amina", AMINA, &server);
    assert!(a.store.query("drafts", &Query::new()).unwrap().is_empty());
    assert_eq!(a.sync_until_quiet().await.outcome, SyncOutcome::Completed);
    assert_eq!(a.store.query("drafts", &Query::new()).unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_kept_at_sign_out_stay_hers_and_go_out_once_when_she_is_back() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let a = tablet(dir.path(), "amina", AMINA, &server);
    a.store.put("drafts", Some("d1"), json!({"v": 1})).unwrap();
    assert_eq!(a.sync_until_quiet().await.outcome, SyncOutcome::Completed);
    // An edit the server applies but whose answer is lost: it stays queued, sent.
    a.store
        .put("drafts", Some("lost"), json!({"v": 1}))
        .unwrap();
    a.link.fail_next_push(Fault::DropResponse);
    assert_eq!(
        a.engine.sync_now(None).await.outcome,
        SyncOutcome::BackingOff
    );
    // Then the link goes, and she keeps editing.
    a.link.set_offline(true);
    a.store.patch("drafts", "d1", json!({"v": 2})).unwrap();
    a.store.put("drafts", Some("d2"), json!({"v": 1})).unwrap();
    let queued = a.store.outbox_entries().unwrap();
    assert_eq!(queued.len(), 3);
    a.engine.sign_out(SignOut::KeepUnsynced).await.unwrap();
    assert!(a.store.is_closed());

    let b = tablet(dir.path(), "ben", BEN, &server);
    for id in ["d1", "d2", "lost"] {
        assert_eq!(b.store.get("drafts", id).unwrap(), None, "{id}");
    }
    assert!(b.store.outbox_entries().unwrap().is_empty());
    assert_eq!(b.sync_until_quiet().await.outcome, SyncOutcome::Completed);
    assert!(b.store.query("drafts", &Query::new()).unwrap().is_empty());
    b.store.put("answers", Some("b1"), json!({})).unwrap();
    // While Ben holds the tablet, a store for Amina is refused.
    let refused = Device::open_as(
        dir.path(),
        "tablet",
        Some("amina"),
        &server,
        Arc::new(outpost_core::StaticToken(AMINA.into())),
        sync_config(),
    );
    assert_eq!(
        refused.unwrap_err(),
        Error::WrongUser {
            holder: Some("ben".into())
        }
    );
    b.engine.sign_out(sync_first(30)).await.unwrap();

    let a = tablet(dir.path(), "amina", AMINA, &server);
    let back = a.store.outbox_entries().unwrap();
    let op_ids = |es: &[outpost_core::OutboxEntry]| -> Vec<String> {
        es.iter().map(|e| e.op_id.clone()).collect()
    };
    assert_eq!(op_ids(&back), op_ids(&queued));
    assert!(back.iter().all(|e| e.state == EntryState::Pending));
    assert_eq!(a.sync_until_quiet().await.outcome, SyncOutcome::Completed);
    assert_eq!(
        on_server(&server, AMINA, "drafts").await,
        ["d1", "d2", "lost"]
    );
    for op in op_ids(&back) {
        assert_eq!(server.audit_rows(&op), 1, "op {op} applied once");
    }
    let d1 = a.store.get("drafts", "d1").unwrap().unwrap();
    assert_eq!(d1.data["v"], json!(2));
    assert_eq!(on_server(&server, BEN, "answers").await, ["b1"]);
}

/// Counts a listener's calls; one that starts once `done` is set is late.
#[derive(Default)]
struct Calls {
    calls: AtomicUsize,
    running: AtomicUsize,
    late: AtomicUsize,
    done: AtomicBool,
}

impl Calls {
    fn call(&self) {
        if self.done.load(Ordering::SeqCst) {
            self.late.fetch_add(1, Ordering::SeqCst);
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(10));
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Statuses(Arc<Calls>);

impl StatusListener for Statuses {
    fn on_status(&self, _: &SyncStatus) -> Result<(), String> {
        self.0.call();
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screens_observing_through_a_sign_out_end_and_hear_nothing_after() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let config = SyncConfig {
        auto_sync: true,
        write_debounce: Duration::from_millis(20),
        ..sync_config()
    };
    let tokens = Arc::new(outpost_core::StaticToken(AMINA.into()));
    let a = Device::open_as(dir.path(), "tablet", Some("amina"), &server, tokens, config).unwrap();
    let b = Device::open(dir.path(), "other", &server, BEN);
    let calls = Arc::new(Calls::default());
    let c = Arc::clone(&calls);
    let query = a
        .store
        .observe(
            "answers",
            &Query::new(),
            Arc::new(move |_: &[Record]| c.call()),
        )
        .unwrap();
    let c = Arc::clone(&calls);
    let one = a
        .store
        .observe_one(
            "answers",
            "b3",
            Arc::new(move |_: Option<&Record>| c.call()),
        )
        .unwrap();
    let c = Arc::clone(&calls);
    let feed = a
        .store
        .subscribe(Arc::new(move |_: &ChangeEvent| c.call()))
        .unwrap();
    let status = a
        .engine
        .subscribe_status(Arc::new(Statuses(Arc::clone(&calls))));
    // Ben's edits keep arriving: Amina's tablet pulls them while she works.
    let stop = Arc::new(AtomicBool::new(false));
    let other = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                b.store
                    .put("answers", Some(&format!("b{i}")), json!({"i": i}))
                    .unwrap();
                b.engine.sync_now(None).await;
                i += 1;
            }
        }
    });
    let started = Instant::now();
    for i in 0.. {
        a.store
            .put("answers", Some(&format!("a{i}")), json!({}))
            .unwrap();
        a.engine.sync_now(None).await;
        let pulled = a.store.query("answers", &Query::new()).unwrap();
        if pulled.iter().filter(|r| r.id.starts_with('b')).count() >= 5 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing pulled"
        );
    }
    // Sync first while both sides keep going: her last edits go out, then she is out.
    a.engine.sign_out(sync_first(30)).await.unwrap();
    calls.done.store(true, Ordering::SeqCst);
    assert_eq!(
        calls.running.load(Ordering::SeqCst),
        0,
        "a callback outlived sign-out"
    );
    for sub in [&query, &one, &feed, &status] {
        assert!(sub.is_closed());
        tokio::time::timeout(Duration::from_secs(5), sub.closed())
            .await
            .expect("the subscription reports its end");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    other.await.unwrap();
    assert!(calls.calls.load(Ordering::SeqCst) > 10);
    assert_eq!(
        calls.late.load(Ordering::SeqCst),
        0,
        "a callback after sign-out"
    );
    assert_eq!(
        a.engine.sync_now(None).await.outcome,
        SyncOutcome::Failed,
        "the engine of a signed-out store does nothing"
    );
}

/// A session that may end: a token while signed in, "signed out" after.
struct Session {
    signed_in: AtomicBool,
    asked: AtomicU32,
}

impl TokenProvider for Session {
    fn fetch(self: Arc<Self>, _refresh: bool) -> TokenFuture {
        Box::pin(async move {
            self.asked.fetch_add(1, Ordering::SeqCst);
            if self.signed_in.load(Ordering::SeqCst) {
                Ok(AMINA.to_owned())
            } else {
                Err(TokenError::SignedOut)
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_with_no_one_signed_in_stops_sync_without_retrying_on_a_timer() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let session = Arc::new(Session {
        signed_in: AtomicBool::new(false),
        asked: AtomicU32::new(0),
    });
    let config = SyncConfig {
        auto_sync: true,
        ..sync_config()
    };
    let a = Device::open_with(dir.path(), "a", &server, session.clone(), config);
    a.store.put("answers", Some("x"), json!({})).unwrap();
    let r = a.engine.sync_now(None).await;
    assert_eq!(r.outcome, SyncOutcome::SignedOut, "{r:?}");
    assert!(!r.should_retry());
    let s = a.engine.status();
    assert_eq!((s.activity, s.pending), (SyncActivity::SignedOut, 1));
    assert_eq!(s.next_retry_at_ms, None);
    // Auto mode does not keep asking: once the syncs that starting and the write woke
    // are over, the provider is not asked again, well past several backoffs, and
    // nothing was sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = session.asked.load(Ordering::SeqCst);
    assert!(asked <= 3, "{asked}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(session.asked.load(Ordering::SeqCst), asked);
    assert_eq!(a.link.requests(), 0, "no request without a token");
    let e = a.store.outbox_entries().unwrap();
    assert_eq!((e[0].state, e[0].attempts), (EntryState::Pending, 0));
    // Signed in again: the next sync sends what waited.
    session.signed_in.store(true, Ordering::SeqCst);
    let r = a.engine.sync_now(None).await;
    assert_eq!(r.outcome, SyncOutcome::Completed, "{r:?}");
    assert_eq!(r.applied, 1);
    assert_eq!(a.engine.status().activity, SyncActivity::Idle);
}

/// An identity provider that cannot be reached for its first `failures` calls.
struct Flaky {
    failures: u32,
    asked: AtomicU32,
}

impl TokenProvider for Flaky {
    fn token(&self, _refresh: bool) -> Result<String, String> {
        if self.asked.fetch_add(1, Ordering::SeqCst) < self.failures {
            Err("identity provider unreachable".into())
        } else {
            Ok(AMINA.to_owned())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_is_retried_with_backoff_until_it_answers() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let flaky = Arc::new(Flaky {
        failures: 2,
        asked: AtomicU32::new(0),
    });
    let a = Device::open_with(dir.path(), "a", &server, flaky.clone(), sync_config());
    a.store.put("answers", Some("x"), json!({})).unwrap();
    let r = a.engine.sync_now(None).await;
    assert_eq!(r.outcome, SyncOutcome::BackingOff, "{r:?}");
    assert!(r.should_retry());
    assert!(
        r.errors[0].contains("identity provider unreachable"),
        "{r:?}"
    );
    let s = a.engine.status();
    assert_eq!(s.activity, SyncActivity::BackingOff);
    assert!(s.next_retry_at_ms.is_some());
    assert_eq!(a.link.requests(), 0);
    let e = a.store.outbox_entries().unwrap();
    assert_eq!(e[0].attempts, 0, "the edit is not blamed for the provider");
    // Auto mode retries by itself when the backoff ends, until the provider answers.
    a.engine.start_auto_sync();
    let give_up = Instant::now() + Duration::from_secs(20);
    while !a.store.unsynced().unwrap().is_empty() {
        assert!(
            Instant::now() < give_up,
            "never retried: {:?}",
            a.engine.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(flaky.asked.load(Ordering::SeqCst), 3);
    assert_eq!(on_server(&server, AMINA, "answers").await, ["x"]);
    a.engine.shutdown();
}

const ISSUER: &str = "https://id.example.org/realms/health";
const SECRET: &str = "a-test-only-hs256-secret-of-40-bytes-....";

fn jwt(user: &str, expires_in: i64) -> String {
    let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap();
    let claims = json!({"iss": ISSUER, "aud": "outpost", "sub": user, "team": "north",
                        "iat": now, "exp": now + expires_in});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// An identity provider's session: the cached token has expired; a refresh gets a new
/// one, or finds the session ended.
struct Idp {
    session_ended: bool,
    asked: Mutex<Vec<bool>>,
}

impl TokenProvider for Idp {
    fn fetch(self: Arc<Self>, refresh: bool) -> TokenFuture {
        Box::pin(async move {
            self.asked.lock().unwrap().push(refresh);
            match (refresh, self.session_ended) {
                (false, _) => Ok(jwt("nurse-a", -3_600)),
                (true, false) => Ok(jwt("nurse-a", 300)),
                (true, true) => Err(TokenError::SignedOut),
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_jwts_an_expired_token_is_refreshed_and_an_ended_session_signs_out() {
    let extra =
        format!("[jwt]\nissuer = {ISSUER:?}\naudience = \"outpost\"\nhs256_secret = {SECRET:?}\n");
    let server = TestServer::start_with(&Backend::Sqlite, &extra);
    let dir = tempfile::tempdir().unwrap();
    for ended in [false, true] {
        let idp = Arc::new(Idp {
            session_ended: ended,
            asked: Mutex::new(Vec::new()),
        });
        let name = format!("ended-{ended}");
        let d = Device::open_with(dir.path(), &name, &server, idp.clone(), sync_config());
        d.store.put("answers", Some(&name), json!({})).unwrap();
        let r = d.engine.sync_now(None).await;
        assert_eq!(*idp.asked.lock().unwrap(), [false, true], "{r:?}");
        if ended {
            assert_eq!(r.outcome, SyncOutcome::SignedOut, "{r:?}");
            assert_eq!(d.engine.status().activity, SyncActivity::SignedOut);
            assert_eq!(d.store.outbox_counts().unwrap().pending, 1, "kept");
        } else {
            assert_eq!(r.outcome, SyncOutcome::Completed, "{r:?}");
        }
    }
    let token = jwt("nurse-b", 300);
    assert_eq!(on_server(&server, &token, "answers").await, ["ended-false"]);
}

#[test]
fn a_user_id_is_checked_before_anything_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let config = outpost_tests::store_config().for_user("");
    assert!(matches!(
        outpost_core::Store::open(&path, config),
        Err(Error::InvalidConfig(_))
    ));
    assert!(!path.exists());
}

/// A patient's photo is hers: synced, it leaves the tablet with her; unsent and kept,
/// it stays on disk for her alone, out of the next user's reach and collection, and
/// goes up once she is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patients_photo_leaves_the_tablet_with_her_or_waits_sealed_for_her() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("tablet.db.attachments");
    let a = tablet(dir.path(), "amina", AMINA, &server);
    a.link.set_offline(true);
    let photo = a
        .store
        .attach_bytes(&[1u8; 50_000], "image/jpeg", None)
        .unwrap();
    a.store
        .put("answers", Some("q1"), json!({"photo": photo.to_json()}))
        .unwrap();
    assert!(folder.join(&photo.sha256).exists());
    // An unsent photo is an unsynced edit: syncing first refuses, and keeps it.
    let refused = a.engine.sign_out(sync_first(2)).await;
    assert_eq!(
        refused,
        Err(Error::UnsyncedEdits {
            pending: 2,
            failed: 0,
            conflicts: 0
        })
    );
    a.link.set_offline(false);
    a.engine.sign_out(sync_first(30)).await.unwrap();
    assert!(
        !folder.join(&photo.sha256).exists(),
        "her photo left with her"
    );
    drop(a);

    let a = tablet(dir.path(), "amina", AMINA, &server);
    a.link.set_offline(true);
    let unsent = a
        .store
        .attach_bytes(&[2u8; 40_000], "image/jpeg", None)
        .unwrap();
    a.store
        .put("answers", Some("q2"), json!({"photo": unsent.to_json()}))
        .unwrap();
    a.engine.sign_out(SignOut::KeepUnsynced).await.unwrap();
    drop(a);
    let kept = folder.join(&unsent.sha256);
    assert_eq!(std::fs::read(&kept).unwrap(), vec![2u8; 40_000]);

    // Ben sees no file of hers, and his collection leaves it even when it looks old.
    let b = tablet(dir.path(), "ben", BEN, &server);
    assert_eq!(b.store.attachment_counts().unwrap().uploads, 0);
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&kept)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    b.store.collect_attachments().unwrap();
    assert!(kept.exists(), "a sealed photo is not an orphan");
    b.engine.sign_out(sync_first(30)).await.unwrap();
    assert!(kept.exists(), "Ben's sign-out leaves her sealed photo");
    drop(b);

    let a = tablet(dir.path(), "amina", AMINA, &server);
    assert_eq!(a.store.attachment_counts().unwrap().uploads, 1);
    assert_eq!(a.sync_until_quiet().await.outcome, SyncOutcome::Completed);
    assert_eq!(a.store.attachment_counts().unwrap().uploads, 0);
    let r = server
        .client()
        .get(server.url(&format!("/v1/attachments/{}", unsent.sha256)))
        .bearer_auth(AMINA)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), vec![2u8; 40_000]);

    // Deleting the database takes its folder with it.
    a.engine.shutdown();
    a.store.close();
    drop(a);
    outpost_core::delete_database(dir.path().join("tablet.db")).unwrap();
    assert!(!folder.exists());
}
