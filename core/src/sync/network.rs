//! The network as the platform reports it, and as the engine trusts it.
//!
//! Phones report connectivity that is not there: a captive portal, a link that flaps
//! at a village's edge, a network that has not finished coming up. Down is believed at
//! once (nothing is sent, the running sync is cancelled); up only after it has held for
//! the debounce and the server's `/health` answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Inner;

impl Inner {
    pub(super) fn online(&self) -> bool {
        self.online.load(Ordering::SeqCst)
    }

    pub(super) fn network_changed(self: &Arc<Self>, available: bool) {
        let generation = self.network_generation.fetch_add(1, Ordering::SeqCst) + 1;
        if !available {
            let was = self.online.swap(false, Ordering::SeqCst);
            self.publish_status();
            if was {
                self.cancel();
            }
            return;
        }
        if self.online() {
            return;
        }
        let weak = Arc::downgrade(self);
        let debounce = self.config.network_debounce;
        self.runtime.spawn(async move {
            tokio::time::sleep(debounce).await;
            let mut attempt = 0u32;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                if inner.network_generation.load(Ordering::SeqCst) != generation {
                    return; // flapped: a newer report decides
                }
                if inner.transport.health().await.is_ok() {
                    if inner.network_generation.load(Ordering::SeqCst) == generation {
                        inner.online.store(true, Ordering::SeqCst);
                        inner.publish_status();
                        inner.auto_wake.notify_one();
                    }
                    return;
                }
                attempt = attempt.saturating_add(1);
                let delay = inner.backoff(attempt);
                drop(inner);
                tokio::time::sleep(delay).await;
            }
        });
    }
}
