//! Outpost core: an offline-first sync core for field apps.
//!
//! The local database is the UI's source of truth; every write commits together with
//! its outbox entry, so what a user typed survives app kills and power loss, and is
//! uploaded exactly once when the network allows. See `DESIGN.md` for the principles
//! and wire protocol v1.

pub mod clock;
pub mod crdt;
pub mod protocol;
