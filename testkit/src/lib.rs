//! The project's test kit: one way to run the server and one fault-injecting
//! transport, for the server's black-box tests, the end-to-end tests, the simulation,
//! the bindings' tests, the demo and the benchmark.
//!
//! - [`TestServer`]: the server with a temporary config, on SQLite or a fresh
//!   PostgreSQL database ([`Backend`], [`backend_tests!`]), in one of three [`Mode`]s:
//!   the `outpost-server` binary on a loopback port (restart, kill, SIGTERM, a second
//!   process on the same database), the same app served in this process on a loopback
//!   port (the demo), or that app called with no socket through
//!   [`TestServer::transport`] (the deterministic simulation). Plus a small protocol
//!   client ([`TestServer::push_raw`], [`TestServer::pull_all`], op builders,
//!   [`assert_error_shape`]).
//! - [`FaultyTransport`]: wraps any [`outpost_core::Transport`] with scripted and
//!   seeded random faults, outages, and per-request counts and timings.
//! - [`SlowLink`]: a loopback TCP proxy with a field link's bandwidth, round trip,
//!   and connections cut or stalled after some bytes, counting what crossed; and
//!   realistic records ([`patient`]) to measure bytes on the wire with.
//! - [`run_load`]: many simulated devices at once, each its own user, over HTTP; and
//!   [`PAIR_ENV`], which runs every PostgreSQL test server as two processes behind a
//!   [`Balancer`] that alternates requests between them.

mod binary;
mod db;
mod faults;
mod in_process;
mod link;
mod load;
mod pair;
mod protocol;
mod records;
mod server;

pub use binary::{SERVER_BIN_ENV, built_server_binary, cargo_build, profile_dir, server_binary};
pub use db::{
    Backend, PG_ENV, TestDb, cleanup_failed, pg_count, pg_exec, pg_try_exec, with_dbname,
};
pub use faults::{Fault, FaultyTransport, Hook, LinkStats, RandomFaults, RequestKind, Traffic};
pub use link::{LinkCounts, LinkShape, SlowLink};
pub use load::{
    DeviceScript, LOAD_COLLECTION, LoadPlan, LoadReport, PlannedOp, SentOp, answer_data,
    load_client, load_config, load_team, load_token, load_user, run_load,
};
pub use pair::{Balancer, PAIR_ENV};
pub use protocol::{
    answer, assert_error_shape, delete, gcounter, hlc, op_id, orset, patch, put, put_with_id,
};
pub use records::{patient, patient_id};
pub use server::{
    AMINA, BEN, CHIOMA, Folder, LONG_PUSH_BUDGET, Mode, ServerBuilder, TestServer, USERS, User,
    base_config,
};
