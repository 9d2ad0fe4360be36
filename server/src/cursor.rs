//! Pull cursors as clients hold them: sealed, so that a client can neither read one nor
//! make one.
//!
//! A cursor stands for a position in the deployment's one change sequence and the purge
//! mark it was issued under ([`Cursor`]). The first format (`c1.`) carried both in hex
//! with an unkeyed checksum: every user could read how many changes the whole
//! deployment had made, and could write a cursor by hand, for instance to skip a
//! `cursor_expired` it ought to get. Now the position is encrypted and authenticated
//! with a server key, and bound to the user, their team and the collection set it was
//! issued for.
//!
//! Text: `c2.`, 8 hex digits naming the key (a digest of it, which tells nothing about
//! it), then 96 hex digits: seq, purge mark and a digest of user, team and collection
//! set, sealed with AES-256-GCM-SIV. The seal is deterministic (a fixed nonce, which
//! GCM-SIV is built to allow): it reveals only whether two cursors are the same
//! position for the same user, team and set, so an empty page gives back the very
//! cursor it was given.
//!
//! What a cursor that cannot be used gets (see [`Opened`]):
//! - garbled, or under this key but not sealed by it (made or changed by hand): 400;
//! - sealed by this server for another user, team or collection set, sealed under
//!   another key (the key was changed), or in the unkeyed format of older servers:
//!   410 `cursor_expired`. These were issued honestly and have stopped applying; the
//!   client's right move is to pull from the beginning, and 410 is the answer every
//!   client already does that on. A 400 would stop a device's pulls for good (a
//!   client gives up on a 400), after an upgrade, a key change, or a phone handed to
//!   another user. A forger gains nothing from a 410: pulling from the beginning is
//!   open to it anyway.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

use crate::logic::Cursor;

/// Prefix of cursors sealed with a key.
const SEALED: &str = "c2.";
/// Prefix of the unkeyed cursors of older servers.
const LEGACY: &str = "c1.";
/// Bytes naming the key in a cursor.
const KEY_ID_LEN: usize = 4;
/// Bytes of the digest of user and collection set.
const SCOPE_LEN: usize = 16;
/// seq, purge mark, scope.
const PLAIN_LEN: usize = 8 + 8 + SCOPE_LEN;
/// GCM-SIV's tag.
const TAG_LEN: usize = 16;
/// Authenticated with every cursor, so a sealed value of any other use of the key (none
/// today) can never pass for a cursor.
const AAD: &[u8] = b"outpost pull cursor v2";

/// Bytes of a secret the server makes for itself.
pub const SECRET_LEN: usize = 32;

/// The key cursors are sealed with, derived from a secret (the config's, or one the
/// server made and keeps in its database).
pub struct CursorKey {
    key: LessSafeKey,
    id: [u8; KEY_ID_LEN],
}

// The id is a digest of the key and says nothing about it; the key is never shown.
impl fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CursorKey")
            .field("id", &hex::encode(self.id))
            .finish_non_exhaustive()
    }
}

/// A secret that yields no key, or no randomness to make one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cursor key: {0}")]
pub struct KeyError(&'static str);

impl CursorKey {
    /// The key of a secret; any length works, and the same secret gives the same key on
    /// every server.
    pub fn from_secret(secret: &[u8]) -> Result<CursorKey, KeyError> {
        let derive = |label: &[u8]| {
            let mut h = Sha256::new();
            h.update(label);
            h.update(secret);
            h.finalize()
        };
        let key = derive(b"outpost cursor key\0");
        let digest = derive(b"outpost cursor key id\0");
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        let unbound =
            UnboundKey::new(&AES_256_GCM_SIV, &key).map_err(|_| KeyError("unusable key"))?;
        Ok(CursorKey {
            key: LessSafeKey::new(unbound),
            id,
        })
    }

    /// A fresh random secret, for a server that is given none.
    pub fn fresh_secret() -> Result<Vec<u8>, KeyError> {
        let mut s = vec![0u8; SECRET_LEN];
        aws_lc_rs::rand::fill(&mut s).map_err(|_| KeyError("no system randomness"))?;
        Ok(s)
    }
}

/// Who a cursor was issued to (user and team) and for which collections, as a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope([u8; SCOPE_LEN]);

impl Scope {
    /// `collections`: `None` for every collection, else the names as a sorted set. The
    /// team is bound too: a user whose team changes (a JWT's claim, a reloaded config)
    /// reads another team's records, so an old position in the sequence says nothing
    /// about what they have seen of those.
    pub fn new(user: &str, team: &str, collections: Option<&[String]>) -> Scope {
        Scope::digest(b"outpost cursor scope\0", user, team, collections)
    }

    fn digest(label: &[u8], user: &str, team: &str, collections: Option<&[String]>) -> Scope {
        let mut h = Sha256::new();
        h.update(label);
        for part in [user, team] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        match collections {
            // Collection names never hold `*` or `,`, so no list reads as another.
            None => h.update(b"*"),
            Some(names) => {
                for n in names {
                    h.update(b",");
                    h.update(n.as_bytes());
                }
            }
        }
        let mut out = [0u8; SCOPE_LEN];
        out.copy_from_slice(&h.finalize()[..SCOPE_LEN]);
        Scope(out)
    }
}

impl Scope {
    /// The scope of the change feed of every team (`/v1/admin/changes` and `export`):
    /// the same for every service account, since each reads the same changes, and
    /// never equal to a user's pull scope, so neither kind of cursor passes for the
    /// other.
    pub fn all_teams(collections: Option<&[String]>) -> Scope {
        Scope::digest(b"outpost feed scope\0", "", "", collections)
    }
}

/// The fixed nonce of the deterministic seal.
fn nonce() -> Nonce {
    Nonce::assume_unique_for_key([0u8; NONCE_LEN])
}

/// The text of a cursor for `scope`.
pub fn seal(key: &CursorKey, c: Cursor, scope: &Scope) -> Result<String, KeyError> {
    let mut buf = Vec::with_capacity(PLAIN_LEN + TAG_LEN);
    buf.extend_from_slice(&(c.seq.max(0) as u64).to_be_bytes());
    buf.extend_from_slice(&(c.purge_mark.max(0) as u64).to_be_bytes());
    buf.extend_from_slice(&scope.0);
    key.key
        .seal_in_place_append_tag(nonce(), Aad::from(AAD), &mut buf)
        .map_err(|_| KeyError("sealing failed"))?;
    Ok(format!(
        "{SEALED}{}{}",
        hex::encode(key.id),
        hex::encode(buf)
    ))
}

/// What a cursor text is worth for a pull by `scope`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Sealed by this key for this scope.
    Valid(Cursor),
    /// Honestly issued but no longer applies: 410 `cursor_expired`, with why.
    Stale(&'static str),
    /// Not a cursor this server issued: 400.
    Garbled,
}

/// Reads a cursor text given back by a client.
pub fn open(key: &CursorKey, text: &str, scope: &Scope) -> Opened {
    if let Some(rest) = text.strip_prefix(LEGACY) {
        return match legacy(rest) {
            Some(_) => Opened::Stale(
                "this cursor is from an older server version; pull again from the beginning",
            ),
            None => Opened::Garbled,
        };
    }
    let Some(bytes) = text
        .strip_prefix(SEALED)
        .filter(|h| h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|h| hex::decode(h).ok())
        .filter(|b| b.len() == KEY_ID_LEN + PLAIN_LEN + TAG_LEN)
    else {
        return Opened::Garbled;
    };
    let (id, sealed) = bytes.split_at(KEY_ID_LEN);
    if id != key.id {
        return Opened::Stale(
            "this cursor was issued under another server key; pull again from the beginning",
        );
    }
    let mut buf = sealed.to_vec();
    let Ok(plain) = key.key.open_in_place(nonce(), Aad::from(AAD), &mut buf) else {
        return Opened::Garbled;
    };
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&plain[i..i + 8]);
        i64::try_from(u64::from_be_bytes(w)).ok()
    };
    let (Some(seq), Some(purge_mark)) = (word(0), word(8)) else {
        return Opened::Garbled;
    };
    if plain[16..] != scope.0 {
        return Opened::Stale(
            "this cursor was issued for another user, team or set of collections; pull again from the beginning",
        );
    }
    Opened::Valid(Cursor { seq, purge_mark })
}

/// The position in an unkeyed cursor of an older server (`c1.` + 16 hex digits of seq,
/// 16 of the purge mark, 8 of checksum), if its checksum holds.
fn legacy(rest: &str) -> Option<Cursor> {
    if rest.len() != 40 || !rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let seq = u64::from_str_radix(&rest[..16], 16).ok()?;
    let mark = u64::from_str_radix(&rest[16..32], 16).ok()?;
    if legacy_check(seq, mark) != rest[32..] {
        return None;
    }
    Some(Cursor {
        seq: i64::try_from(seq).ok()?,
        purge_mark: i64::try_from(mark).ok()?,
    })
}

fn legacy_check(seq: u64, mark: u64) -> String {
    let mut h = Sha256::new();
    h.update(b"outpost-cursor-v1");
    h.update(seq.to_be_bytes());
    h.update(mark.to_be_bytes());
    hex::encode(&h.finalize()[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> CursorKey {
        CursorKey::from_secret(s.as_bytes()).unwrap()
    }

    fn at(seq: i64, purge_mark: i64) -> Cursor {
        Cursor { seq, purge_mark }
    }

    #[test]
    fn cursors_round_trip_for_their_scope_only() {
        let k = key("a secret of any length");
        let amina = Scope::new("amina", "north", None);
        for c in [at(0, 0), at(1, 0), at(1051, 7), at(i64::MAX, i64::MAX / 2)] {
            let text = seal(&k, c, &amina).unwrap();
            assert!(text.starts_with("c2.") && text.len() == 3 + 2 * (4 + 32 + 16));
            assert_eq!(open(&k, &text, &amina), Opened::Valid(c));
            // Deterministic: the same position gives the same text.
            assert_eq!(seal(&k, c, &amina).unwrap(), text);
        }
        let text = seal(&k, at(5, 0), &amina).unwrap();
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        for other in [
            Scope::new("ben", "north", None),
            Scope::new("amina", "south", None),
            Scope::new("amina", "north", Some(&names(&["patients"]))),
            Scope::new("amina", "north", Some(&[])),
            Scope::all_teams(None),
            Scope::new("", "", None),
        ] {
            assert!(
                matches!(open(&k, &text, &other), Opened::Stale(m) if m.contains("another user"))
            );
        }
        // Lists that differ only in how they split never collide.
        assert_ne!(
            Scope::new("a", "north", Some(&names(&["ab"]))),
            Scope::new("a", "north", Some(&names(&["a", "b"])))
        );
        assert_ne!(
            Scope::new("a,b", "north", None),
            Scope::new("a", "north", Some(&names(&["b"])))
        );
    }

    #[test]
    fn made_or_changed_cursors_are_garbled_and_other_keys_stale() {
        let k = key("secret one");
        let s = Scope::new("amina", "north", None);
        let text = seal(&k, at(5, 0), &s).unwrap();
        // Any one hex digit changed after the key id, anywhere.
        for i in 11..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            let changed = String::from_utf8(b).unwrap();
            assert_eq!(open(&k, &changed, &s), Opened::Garbled, "digit {i}");
        }
        for bad in [
            "",
            "c2.",
            "5",
            "c3.00",
            &text[..text.len() - 2],
            &format!("{text}00"),
            &text.to_uppercase().replace("C2.", "c2."),
        ] {
            assert_eq!(open(&k, bad, &s), Opened::Garbled, "{bad:?}");
        }
        // Hand-made for this key: garbled.
        let forged = format!("c2.{}{}", hex::encode(k.id), "00".repeat(48));
        assert_eq!(open(&k, &forged, &s), Opened::Garbled);
        // Sealed under another key: stale, so a key change costs a re-pull, not a halt.
        let other = seal(&key("secret two"), at(5, 0), &s).unwrap();
        assert!(matches!(open(&k, &other, &s), Opened::Stale(m) if m.contains("key")));
    }

    #[test]
    fn the_position_cannot_be_read() {
        let k = key("secret");
        let a = seal(&k, at(0x1234_5678, 0), &Scope::new("amina", "north", None)).unwrap();
        let b = seal(&k, at(0x1234_5679, 0), &Scope::new("amina", "north", None)).unwrap();
        assert!(!a.contains("12345678"), "{a}");
        // Neighbouring positions share nothing past the key id but by chance.
        let same = a
            .bytes()
            .zip(b.bytes())
            .skip(11)
            .filter(|(x, y)| x == y)
            .count();
        assert!(same < 24, "{same} of 96 digits equal: {a} {b}");
    }

    #[test]
    fn unkeyed_cursors_of_older_servers_are_stale_unless_garbled() {
        let k = key("secret");
        let s = Scope::new("amina", "north", None);
        let (seq, mark) = (5u64, 0u64);
        let old = format!("c1.{seq:016x}{mark:016x}{}", legacy_check(seq, mark));
        assert_eq!(legacy(&old[3..]), Some(at(5, 0)));
        assert!(matches!(open(&k, &old, &s), Opened::Stale(m) if m.contains("older server")));
        let mut changed = old.into_bytes();
        changed[10] = b'9';
        assert_eq!(
            open(&k, std::str::from_utf8(&changed).unwrap(), &s),
            Opened::Garbled
        );
        assert_eq!(open(&k, "c1.zz", &s), Opened::Garbled);
    }
}
