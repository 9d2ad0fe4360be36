#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Attachments on the device, with no server: attaching (durable copies under their
//! hash), asking for files, the counts the status shows, and garbage collection that
//! removes unreferenced files and never a referenced one.

use std::time::Duration;

use outpost_core::{AttachmentState, ConflictStrategy, Error, Store, StoreConfig};
use serde_json::json;

fn config(grace: Duration) -> StoreConfig {
    StoreConfig {
        attachment_grace: grace,
        ..StoreConfig::default()
    }
    .with_collection("surveys", ConflictStrategy::LastWriteWins)
}

fn folder(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("device.db.attachments")
}

#[test]
fn attached_files_are_kept_under_their_hash_and_queued() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("device.db"), config(Duration::ZERO)).unwrap();
    let photo = vec![7u8; 100_000];
    let src = dir.path().join("photo.jpg");
    std::fs::write(&src, &photo).unwrap();
    let r = store
        .attach_file(&src, "image/jpeg", Some("photo.jpg"))
        .unwrap();
    assert_eq!(r.size, 100_000);
    assert_eq!(r.to_json()["$attachment"], r.sha256.as_str());
    assert_eq!(r.to_json()["name"], "photo.jpg");
    // The source can go: the store has its own copy.
    std::fs::remove_file(&src).unwrap();
    match store.attachment(&r.sha256).unwrap() {
        AttachmentState::Ready { path, size } => {
            assert_eq!(size, 100_000);
            assert!(path.starts_with(folder(&dir)));
            assert_eq!(std::fs::read(path).unwrap(), photo);
        }
        other => panic!("{other:?}"),
    }
    let again = store.attach_bytes(&photo, "image/jpeg", None).unwrap();
    assert_eq!(again.sha256, r.sha256);
    let c = store.attachment_counts().unwrap();
    assert_eq!((c.uploads, c.upload_bytes), (1, 100_000));

    // A file this device does not have is pending, and queued for download.
    let other = "ab".repeat(32);
    assert_eq!(
        store.attachment(&other).unwrap(),
        AttachmentState::Pending {
            size: 0,
            received: 0
        }
    );
    assert_eq!(store.attachment_counts().unwrap().downloads, 1);

    // Bad input is a typed error and changes nothing.
    for bad in [
        store.attach_bytes(b"x", "nope", None),
        store.attach_bytes(b"x", "a/b", Some("../etc")),
        store.attach_file(dir.path().join("missing"), "a/b", None),
    ] {
        assert!(
            matches!(bad, Err(Error::InvalidData(_) | Error::File(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        store.attachment("XYZ"),
        Err(Error::InvalidData(_))
    ));
    assert_eq!(store.attachment_counts().unwrap().uploads, 1);
    store.close();
    assert_eq!(store.attach_bytes(b"x", "a/b", None), Err(Error::Closed));
}

#[test]
fn collection_removes_unreferenced_files_and_never_a_referenced_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("device.db"), config(Duration::ZERO)).unwrap();
    let kept = store.attach_bytes(b"signature", "image/png", None).unwrap();
    let queued = store
        .attach_bytes(b"queued edit", "image/png", None)
        .unwrap();
    let loose = store.attach_bytes(b"abandoned", "image/png", None).unwrap();
    store
        .put("surveys", Some("s1"), json!({"sig": kept.to_json()}))
        .unwrap();
    store
        .put(
            "surveys",
            Some("s2"),
            json!({"list": [{"f": queued.to_json()}]}),
        )
        .unwrap();
    let got = store.collect_attachments().unwrap();
    assert_eq!(got.removed, 1, "{got:?}");
    let path = |sha: &str| folder(&dir).join(sha);
    assert!(path(&kept.sha256).exists());
    assert!(path(&queued.sha256).exists());
    assert!(!path(&loose.sha256).exists());
    assert_eq!(store.attachment_counts().unwrap().uploads, 2);

    // The record lets go of the file: it goes too.
    store
        .put("surveys", Some("s1"), json!({"sig": null}))
        .unwrap();
    // Its edits were coalesced into one (unsent) put without the reference.
    store.collect_attachments().unwrap();
    assert!(!path(&kept.sha256).exists());
    assert!(path(&queued.sha256).exists());
}

#[test]
fn the_grace_period_protects_a_file_between_attach_and_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path().join("device.db"),
        config(Duration::from_secs(3600)),
    )
    .unwrap();
    let f = store
        .attach_bytes(b"just attached", "image/png", None)
        .unwrap();
    assert_eq!(store.collect_attachments().unwrap().removed, 0);
    assert!(folder(&dir).join(&f.sha256).exists());
}

#[test]
fn collection_removes_downloads_no_one_waits_for() {
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(3600);
    let store = Store::open(dir.path().join("device.db"), config(grace)).unwrap();
    let wanted = "ab".repeat(32);
    let _ = store.attachment(&wanted).unwrap();
    let partial = folder(&dir).join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for sha in [wanted.clone(), "cd".repeat(32)] {
        std::fs::write(partial.join(&sha), b"half a photo").unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(partial.join(&sha));
        f.unwrap().set_modified(long_ago).unwrap();
    }
    store.collect_attachments().unwrap();
    assert!(
        partial.join(&wanted).exists(),
        "a download still wanted stays"
    );
    assert!(!partial.join("cd".repeat(32)).exists());
}
