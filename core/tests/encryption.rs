#![cfg(feature = "encryption")]
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Encryption at rest: the file holds no plaintext, and a wrong key is a typed error
//! that leaves the file intact. Sealed data is encrypted with the rest of the file.

use outpost_core::{ConflictStrategy, Error, SignOut, Store, StoreConfig};
use serde_json::json;

fn config(key: Option<Vec<u8>>) -> StoreConfig {
    StoreConfig {
        encryption_key: key,
        ..StoreConfig::default()
    }
    .with_collection("patients", ConflictStrategy::Manual)
}

#[test]
fn encrypted_file_holds_no_plaintext_and_refuses_a_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.db");
    let key = vec![7u8; 32];
    let store = Store::open(&path, config(Some(key.clone()))).unwrap();
    for i in 0..50 {
        store
            .put(
                "patients",
                Some(&format!("p{i}")),
                json!({"name": "Amina Diallo", "hiv_status": "negative"}),
            )
            .unwrap();
    }
    store.close();
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 4096);
    for needle in [
        &b"Amina Diallo"[..],
        b"hiv_status",
        b"SQLite format 3",
        b"patients",
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "plaintext {:?} found in the file",
            String::from_utf8_lossy(needle)
        );
    }

    assert_eq!(
        Store::open(&path, config(Some(vec![8u8; 32]))).err(),
        Some(Error::WrongKey)
    );
    assert_eq!(
        Store::open(&path, config(None)).err(),
        Some(Error::WrongKey)
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "a failed open changed the file"
    );

    let store = Store::open(&path, config(Some(key))).unwrap();
    assert_eq!(
        store.get("patients", "p3").unwrap().unwrap().data["name"],
        json!("Amina Diallo")
    );
}

#[test]
fn a_plain_database_is_not_opened_with_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.db");
    Store::open(&path, config(None)).unwrap().close();
    assert_eq!(
        Store::open(&path, config(Some(vec![1u8; 32]))).err(),
        Some(Error::WrongKey)
    );
}

#[test]
fn data_sealed_at_sign_out_is_encrypted_with_the_file_and_comes_back_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.db");
    let key = vec![7u8; 32];
    let as_user = |user: &str| config(Some(key.clone())).for_user(user);
    let store = Store::open(&path, as_user("amina")).unwrap();
    store
        .put("patients", Some("p1"), json!({"name": "Amina Diallo"}))
        .unwrap();
    store.sign_out(SignOut::KeepUnsynced).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(!bytes.windows(12).any(|w| w == b"Amina Diallo"));
    assert_eq!(
        Store::open(&path, config(Some(vec![8u8; 32])).for_user("amina")).err(),
        Some(Error::WrongKey)
    );
    let ben = Store::open(&path, as_user("ben")).unwrap();
    assert_eq!(ben.get("patients", "p1").unwrap(), None);
    ben.sign_out(SignOut::KeepUnsynced).unwrap();
    let amina = Store::open(&path, as_user("amina")).unwrap();
    assert_eq!(
        amina.get("patients", "p1").unwrap().unwrap().data["name"],
        json!("Amina Diallo")
    );
}
