//! A record as the UI sees it, and where it stands with the server.
//!
//! These are the values the store hands out; the table that holds them is
//! `db::records`. A stored state this build does not know is a corrupt row, reported
//! as an error rather than read as some default, which could resend or hide an edit.

use crate::error::{Error, Result};
use crate::protocol::JsonObject;

/// Where a record stands with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncState {
    /// The server has exactly this data.
    Synced,
    /// Local edits wait in the outbox.
    Pending,
    /// A manual conflict waits for the app's `resolve`.
    Conflicted,
    /// The server rejected an edit; the data is kept locally.
    Failed,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "synced",
            SyncState::Pending => "pending",
            SyncState::Conflicted => "conflicted",
            SyncState::Failed => "failed",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<SyncState> {
        match s {
            "synced" => Ok(SyncState::Synced),
            "pending" => Ok(SyncState::Pending),
            "conflicted" => Ok(SyncState::Conflicted),
            "failed" => Ok(SyncState::Failed),
            other => Err(Error::corrupt("records", "sync_state", other)),
        }
    }
}

/// A live record as the UI sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub collection: String,
    pub id: String,
    pub data: JsonObject,
    /// The server version this record's synced base has; 0 while never synced.
    pub version: i64,
    /// HLC stamp of the last edit.
    pub hlc: String,
    pub sync_state: SyncState,
    /// Milliseconds since the epoch of the last local change.
    pub updated_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_unknown_ones_are_errors() {
        for s in [
            SyncState::Synced,
            SyncState::Pending,
            SyncState::Conflicted,
            SyncState::Failed,
        ] {
            assert_eq!(SyncState::parse(s.as_str()), Ok(s));
        }
        assert!(matches!(SyncState::parse("bogus"), Err(Error::Database(_))));
    }
}
