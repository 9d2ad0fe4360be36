//! The server's log filter: `RUST_LOG` for our own code, a fixed cap for everyone
//! else's.
//!
//! Libraries log what they handle at their debug and trace levels: `tokio_postgres`
//! prints every statement's parameters (record JSON), hyper and h2 print headers
//! (bearer tokens) and bodies. An operator who sets `RUST_LOG=trace` to chase a bug
//! must not thereby copy patient data into the logs, so events from any target
//! outside this project are dropped above `info` whatever `RUST_LOG` says, by a filter
//! that sits beside `RUST_LOG`'s and that no directive can widen. Our own events never
//! carry a token, a cursor or record data at any level.

use tracing::Level;
use tracing::Metadata;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterExt, FilterFn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

/// The most a target outside this project may log.
const DEPENDENCY_CAP: Level = Level::INFO;

/// Whether an event or span may pass whatever `RUST_LOG` says.
pub fn allowed(meta: &Metadata<'_>) -> bool {
    is_ours(meta.target()) || *meta.level() <= DEPENDENCY_CAP
}

/// Targets of this project's crates (`outpost_server`, `outpost_core`, …).
fn is_ours(target: &str) -> bool {
    target.starts_with("outpost_") || target == "outpost"
}

/// Logs to stderr with `RUST_LOG` (default `default`) under the dependency cap. Does
/// nothing if a subscriber is already installed.
pub fn init(default: &str) {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let filter = env.and(FilterFn::new(allowed));
    let _ = tracing_subscriber::registry()
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_targets_pass_above_info() {
        assert!(is_ours("outpost_server::http"));
        assert!(is_ours("outpost_core"));
        assert!(!is_ours("tokio_postgres::query"));
        assert!(!is_ours("outpostish"));
        assert!(!is_ours("hyper::proto::h1"));
    }
}
