//! The plan of a settlement: what settling a conflict (or the app's resolution of a
//! manual one) does to the record, its queue and the log.
//!
//! Deciding is kept apart from writing so that every choice a settlement makes (which
//! server state it goes on top of, which stamp the result keeps, whether it is forced)
//! is a pure function, tested here without a database. `sync::settle` loads the
//! record, asks for the plan and applies it in one transaction.

use super::{Conflict, Decision, Resolution, Side, Winner, decide};
use crate::clock::Hlc;
use crate::config::ConflictStrategy;
use crate::crdt::{self, Crdt, CrdtError};
use crate::protocol::{Change, JsonObject, OpKind, validate_record};

/// The device's side of a conflict, as stored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalSide<'a> {
    /// The live data; `None` when deleted locally.
    pub data: Option<&'a JsonObject>,
    /// The stamp of the last local edit.
    pub hlc: &'a str,
    /// The last synced base, for three-way merges.
    pub base: Option<&'a JsonObject>,
}

/// What happens to the record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Its queued edits go and it becomes the server's state.
    TakeRemote,
    /// Its queued edits are replaced by one new op carrying `result` (`None`: a
    /// delete), made on top of the server state. `force` only where the local side
    /// must win outright (client_wins): a merge or an app's resolution goes unforced,
    /// so that if the server moved again meanwhile it conflicts again instead of
    /// overwriting an edit nobody saw. `stamp` keeps the winning edit's HLC; `None`
    /// makes the result a new edit.
    Requeue {
        result: Option<JsonObject>,
        force: bool,
        stamp: Option<String>,
    },
    /// The app decides: the record is conflicted and later edits wait behind it.
    Manual,
}

/// A planned settlement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settlement {
    /// The server state settled against (`None`: the record is missing there).
    pub remote: Option<Change>,
    /// For the log: the base and the local version that lost or merged.
    pub base: Option<JsonObject>,
    pub local: Option<JsonObject>,
    /// `local`, `remote`, `merged`, or `manual` for the app; `resolved_*` after
    /// the app's resolution.
    pub outcome: &'static str,
    pub action: Action,
}

impl Settlement {
    /// The server's live data, for the log.
    pub(crate) fn remote_data(&self) -> Option<&JsonObject> {
        self.remote
            .as_ref()
            .filter(|c| !c.deleted)
            .and_then(|c| c.data.as_ref())
    }

    pub(crate) fn remote_version(&self) -> i64 {
        self.remote.as_ref().map_or(0, |c| c.version)
    }
}

/// The lowest possible stamp, for a side with no usable HLC.
fn min_hlc() -> Hlc {
    Hlc::new(0, 0, "")
}

/// Settles the conflict the server answered for a sent entry, by `strategy`.
///
/// `answered` is the record's state in the answer, `stash` the newest state a pull
/// kept aside; a replayed answer can carry an old state, so the newer of the two is
/// the one settled against. `entry_hlc` stands in for the local stamp when the record
/// row has none.
pub(crate) fn plan_settlement(
    strategy: ConflictStrategy,
    local: Option<LocalSide<'_>>,
    entry_hlc: &str,
    answered: Option<&Change>,
    stash: Option<&Change>,
) -> Settlement {
    let newer = stash.filter(|s| answered.is_none_or(|c| s.version > c.version));
    let remote = newer.or(answered).cloned();
    let local_data = local.and_then(|l| l.data);
    let base = local.and_then(|l| l.base);
    let local_hlc = local
        .and_then(|l| l.hlc.parse::<Hlc>().ok())
        .unwrap_or_else(|| entry_hlc.parse().unwrap_or_else(|_| min_hlc()));
    let remote_live = remote
        .as_ref()
        .filter(|c| !c.deleted)
        .and_then(|c| c.data.as_ref());
    let remote_hlc = remote
        .as_ref()
        .and_then(|c| c.hlc.parse::<Hlc>().ok())
        .unwrap_or_else(min_hlc);
    let decided = decide(
        strategy,
        base,
        Side {
            data: local_data,
            hlc: &local_hlc,
        },
        Side {
            data: remote_live,
            hlc: &remote_hlc,
        },
    );
    // A CRDT type clash cannot be merged automatically: let the app decide.
    let (decision, winner) = match decided {
        Ok(o) => (o.decision, o.winner),
        Err(_) => {
            // Not the error's text: a malformed CRDT's message quotes its elements.
            tracing::warn!("conflict needs the app: CRDT fields clash");
            (Decision::Manual, Winner::Remote)
        }
    };
    let outcome = match (&decision, winner) {
        (Decision::Manual, _) => "manual",
        (_, Winner::Local) => "local",
        (_, Winner::Remote) => "remote",
        (_, Winner::Merged) => "merged",
    };
    let action = match decision {
        Decision::TakeRemote => Action::TakeRemote,
        Decision::Manual => Action::Manual,
        Decision::Push(result) => {
            let stamp = match winner {
                Winner::Local => local_hlc,
                Winner::Remote => remote_hlc,
                Winner::Merged => local_hlc.max(remote_hlc),
            };
            // A stamp with no replica (a remote state without a usable HLC) is no
            // stamp to keep: the result becomes a new edit.
            let stamp = (!stamp.replica.is_empty()).then(|| stamp.to_string());
            Action::Requeue {
                result,
                force: strategy == ConflictStrategy::ClientWins,
                stamp,
            }
        }
    };
    Settlement {
        remote,
        base: base.cloned(),
        local: local_data.cloned(),
        outcome,
        action,
    }
}

/// Checks an app's edited merge before anything is written.
pub(crate) fn validate_resolution(resolution: &Resolution) -> crate::Result<()> {
    if let Resolution::Merged(data) = resolution {
        validate_record(data)?;
        for v in data.values().filter(|v| Crdt::is_crdt(v)) {
            Crdt::from_json(v)?;
        }
    }
    Ok(())
}

/// The app's resolution of an open manual conflict, with the device's current live
/// data (edits made since the conflict included). The result goes on top of the
/// server version the app was shown, so an edit that reached the server since makes
/// it conflict again rather than being overwritten unseen.
pub(crate) fn plan_resolution(
    conflict: &Conflict,
    local: Option<&JsonObject>,
    resolution: Resolution,
) -> Result<Settlement, CrdtError> {
    let shown = Change {
        collection: conflict.collection.clone(),
        record_id: conflict.record_id.clone(),
        version: conflict.remote_version,
        seq: 0,
        deleted: conflict.remote.is_none(),
        data: conflict.remote.clone(),
        hlc: String::new(),
        updated_at: String::new(),
    };
    // A record the server never had is created, not based on a version.
    let remote = (conflict.remote_version > 0).then_some(shown);
    let requeue = |result| Action::Requeue {
        result,
        force: false,
        stamp: None,
    };
    let (outcome, action) = match resolution {
        Resolution::KeepLocal => ("resolved_local", requeue(local.cloned())),
        Resolution::KeepRemote => ("resolved_remote", Action::TakeRemote),
        Resolution::Merged(data) => {
            let merged = crdt::apply_write(local, &data, OpKind::Put)?;
            ("resolved_merged", requeue(Some(merged)))
        }
    };
    Ok(Settlement {
        remote,
        base: conflict.base.clone(),
        local: local.cloned(),
        outcome,
        action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: serde_json::Value) -> JsonObject {
        v.as_object().cloned().unwrap()
    }

    fn change(version: i64, data: Option<serde_json::Value>, hlc: &str) -> Change {
        Change {
            collection: "c".into(),
            record_id: "r".into(),
            version,
            seq: version,
            deleted: data.is_none(),
            data: data.map(obj),
            hlc: hlc.into(),
            updated_at: String::new(),
        }
    }

    const OLD: &str = "0000000001000-00000-aaaa";
    const NEW: &str = "0000000002000-00000-bbbb";

    fn local<'a>(data: &'a JsonObject, hlc: &'a str, base: &'a JsonObject) -> LocalSide<'a> {
        LocalSide {
            data: Some(data),
            hlc,
            base: Some(base),
        }
    }

    #[test]
    fn the_newer_of_the_answer_and_the_stash_is_settled_against() {
        let (mine, base) = (obj(json!({"v": "mine"})), obj(json!({"v": 0})));
        let answered = change(2, Some(json!({"v": "old"})), NEW);
        let stash = change(5, Some(json!({"v": "newest"})), NEW);
        let s = plan_settlement(
            ConflictStrategy::ServerWins,
            Some(local(&mine, OLD, &base)),
            OLD,
            Some(&answered),
            Some(&stash),
        );
        assert_eq!(s.remote_version(), 5);
        assert_eq!(s.action, Action::TakeRemote);
        assert_eq!((s.outcome, s.local.as_ref()), ("remote", Some(&mine)));
        // An older stash loses to the answer.
        let stale = change(1, Some(json!({"v": "stale"})), OLD);
        let s = plan_settlement(
            ConflictStrategy::ServerWins,
            Some(local(&mine, OLD, &base)),
            OLD,
            Some(&answered),
            Some(&stale),
        );
        assert_eq!(s.remote_version(), 2);
    }

    #[test]
    fn client_wins_is_forced_and_keeps_the_local_stamp() {
        let (mine, base) = (obj(json!({"v": "mine"})), obj(json!({"v": 0})));
        let theirs = change(3, Some(json!({"v": "theirs"})), NEW);
        let s = plan_settlement(
            ConflictStrategy::ClientWins,
            Some(local(&mine, OLD, &base)),
            OLD,
            Some(&theirs),
            None,
        );
        assert_eq!(
            s.action,
            Action::Requeue {
                result: Some(mine),
                force: true,
                stamp: Some(OLD.into())
            }
        );
        assert_eq!(s.outcome, "local");
    }

    #[test]
    fn a_merge_goes_unforced_with_the_larger_stamp() {
        let base = obj(json!({"a": 0, "b": 0}));
        let mine = obj(json!({"a": 1, "b": 0}));
        let theirs = change(4, Some(json!({"a": 0, "b": 2})), NEW);
        let s = plan_settlement(
            ConflictStrategy::FieldMerge,
            Some(local(&mine, OLD, &base)),
            OLD,
            Some(&theirs),
            None,
        );
        assert_eq!(
            s.action,
            Action::Requeue {
                result: Some(obj(json!({"a": 1, "b": 2}))),
                force: false,
                stamp: Some(NEW.into())
            }
        );
        assert_eq!((s.outcome, s.base.as_ref()), ("merged", Some(&base)));
    }

    #[test]
    fn a_remote_state_without_a_stamp_makes_the_result_a_new_edit() {
        let base = obj(json!({}));
        let mine = obj(json!({"a": 1}));
        let theirs = change(2, Some(json!({"b": 2})), "garbled");
        let s = plan_settlement(
            ConflictStrategy::FieldMerge,
            Some(local(&mine, "also garbled", &base)),
            "garbled too",
            Some(&theirs),
            None,
        );
        // Neither side has a usable stamp, so the merge has none to keep.
        assert_eq!(
            s.action,
            Action::Requeue {
                result: Some(obj(json!({"a": 1, "b": 2}))),
                force: false,
                stamp: None
            }
        );
    }

    #[test]
    fn a_crdt_clash_goes_to_the_app() {
        let base = obj(json!({}));
        let mine = obj(json!({"n": {"$crdt": "gcounter", "p": {"a": 1}}}));
        let theirs = change(
            2,
            Some(json!({"n": {"$crdt": "orset", "adds": {}, "removes": {}}})),
            NEW,
        );
        let s = plan_settlement(
            ConflictStrategy::FieldMerge,
            Some(local(&mine, OLD, &base)),
            OLD,
            Some(&theirs),
            None,
        );
        assert_eq!((s.action, s.outcome), (Action::Manual, "manual"));
    }

    fn open_conflict(remote_version: i64, remote: Option<serde_json::Value>) -> Conflict {
        Conflict {
            id: 1,
            collection: "c".into(),
            record_id: "r".into(),
            strategy: ConflictStrategy::Manual,
            base: None,
            local: None,
            remote: remote.map(obj),
            remote_version,
            outcome: "manual".into(),
            resolved: false,
            created_at_ms: 0,
        }
    }

    #[test]
    fn a_resolution_goes_unforced_on_the_version_the_app_was_shown() {
        let c = open_conflict(7, Some(json!({"v": "theirs"})));
        let mine = obj(json!({"v": "mine", "later": 1}));
        let s = plan_resolution(&c, Some(&mine), Resolution::KeepLocal).unwrap();
        assert_eq!(s.remote_version(), 7);
        assert_eq!(
            s.action,
            Action::Requeue {
                result: Some(mine.clone()),
                force: false,
                stamp: None
            }
        );
        let s = plan_resolution(&c, Some(&mine), Resolution::KeepRemote).unwrap();
        assert_eq!(
            (s.action, s.outcome),
            (Action::TakeRemote, "resolved_remote")
        );
        // A record the server never had is created, not based on version 0.
        let new = open_conflict(0, None);
        let edited = obj(json!({"v": "edited"}));
        let s = plan_resolution(&new, Some(&mine), Resolution::Merged(edited.clone())).unwrap();
        assert_eq!((s.remote, s.outcome), (None, "resolved_merged"));
        assert!(matches!(s.action, Action::Requeue { result: Some(r), .. } if r == edited));
    }

    #[test]
    fn an_unusable_merge_is_refused_before_anything_is_written() {
        let bad = obj(json!({"n": {"$crdt": "gcounter", "p": {"a": -1}}}));
        assert!(matches!(
            validate_resolution(&Resolution::Merged(bad)),
            Err(crate::Error::Crdt(_))
        ));
        assert!(validate_resolution(&Resolution::KeepLocal).is_ok());
    }
}
