//! The pull phase: each collection pages from its cursor to the end of the server's
//! change sequence.
//!
//! While one page is written to the database the next is already on its way
//! (pipelining), since both take similar time. Pages are asked for in the dense form,
//! sized in bytes by the pacing of `pace` (a page the link cuts off is asked for again,
//! smaller), and without the device's own changes that it holds already (`own`). A
//! `cursor_expired` answer restarts the collection once from the beginning, as a full
//! re-pull that drops the synced records the server no longer returns; that re-pull
//! names no own changes, since every record it does not bring back is dropped.

use super::Inner;
use super::own::SeqRanges;
use super::progress::Left;
use super::report::{Stop, tally};
use super::run::Pass;
use crate::db::lock;
use crate::protocol::PullResponse;
use crate::transport::{PullParams, TransportError};

/// A page with the bytes received for it, or the server saying the cursor expired.
enum Fetched {
    Page(PullResponse, u64),
    Expired,
}

impl Inner {
    pub(super) async fn pull_all(&self, pass: &Pass) -> Result<(), Stop> {
        for collection in self.store.collections() {
            self.pull_collection(&collection, pass).await?;
        }
        Ok(())
    }

    async fn pull_collection(&self, collection: &str, pass: &Pass) -> Result<(), Stop> {
        let mut restarted = false;
        'restart: loop {
            let resync = self.store.resync_generation(collection)?;
            let own = match resync {
                Some(_) => SeqRanges::default(),
                None => lock(&self.own).get(collection).cloned().unwrap_or_default(),
            };
            let since = self.store.cursor(collection)?;
            let mut left = Left::default();
            let first = self.fetch_page(collection, since, &own, left.ask(), pass);
            let (mut page, mut bytes) = match first.await? {
                Fetched::Page(p, b) => (p, b),
                Fetched::Expired => {
                    self.restart_pull(collection, &mut restarted, pass)?;
                    continue 'restart;
                }
            };
            loop {
                let finish = (!page.has_more).then_some(resync).flatten();
                let store = self.store.clone();
                let name = collection.to_owned();
                let changes = std::mem::take(&mut page.changes);
                let cursor = page.cursor.clone();
                let count = changes.len() as u64;
                let remaining = Some(left.after(count, page.has_more, page.remaining));
                let apply = tokio::task::spawn_blocking(move || {
                    store.apply_pull_page(&name, &changes, &cursor, finish)
                });
                if !page.has_more {
                    apply.await??;
                    self.page_applied(collection, count, bytes, remaining, pass);
                    // Every own change named is behind the cursor now.
                    if let Some(mine) = lock(&self.own).get_mut(collection) {
                        mine.forget(&own);
                    }
                    return Ok(());
                }
                let since = Some(page.cursor.clone());
                let next = self.fetch_page(collection, since, &own, left.ask(), pass);
                let (applied, fetched) = tokio::join!(apply, next);
                applied??;
                self.page_applied(collection, count, bytes, remaining, pass);
                (page, bytes) = match fetched? {
                    Fetched::Page(p, b) => (p, b),
                    Fetched::Expired => {
                        self.restart_pull(collection, &mut restarted, pass)?;
                        continue 'restart;
                    }
                };
            }
        }
    }

    /// A page is in the database: the report, the progress and the UI hear of it.
    fn page_applied(
        &self,
        collection: &str,
        changes: u64,
        bytes: u64,
        remaining: Option<u64>,
        pass: &Pass,
    ) {
        tally(&pass.report).pulled += changes;
        lock(&self.progress).page(collection, changes, bytes, remaining);
        self.publish_status();
    }

    /// The cursor expired: start over from the beginning, once per sync. A second
    /// expiry in the same sync is an error to report, not a loop.
    fn restart_pull(
        &self,
        collection: &str,
        restarted: &mut bool,
        pass: &Pass,
    ) -> Result<(), Stop> {
        if std::mem::replace(restarted, true) {
            return Err(TransportError::CursorExpired.into());
        }
        self.store.begin_resync(collection)?;
        tally(&pass.report).repulls += 1;
        Ok(())
    }

    /// One page, asked for again (smaller, after a pause) while the link cuts it off
    /// and `pace` allows; with a count of what remains after it when `count`.
    async fn fetch_page(
        &self,
        collection: &str,
        since: Option<String>,
        own: &SeqRanges,
        count: bool,
        pass: &Pass,
    ) -> Result<Fetched, Stop> {
        loop {
            tally(&pass.report).requests += 1;
            let params = PullParams {
                since: since.clone(),
                limit: self.config.pull_limit,
                collections: vec![collection.to_owned()],
                max_bytes: Some(lock(&self.sizes).pull_bytes.get()),
                columns: true,
                own: own.ranges().to_vec(),
                skip_remaining: !count,
            };
            let before = self.wire_bytes().1;
            let answer = self
                .authorized(|token| {
                    let params = &params;
                    async move { self.transport.pull(&token, params).await }
                })
                .await;
            let bytes = self.wire_bytes().1.saturating_sub(before);
            let e = match answer {
                Ok(page) => {
                    lock(&self.sizes).pull_bytes.succeeded(page.has_more);
                    lock(&pass.retries).succeeded();
                    return match page.changes.iter().find(|c| c.collection != collection) {
                        // The server did not answer what was asked; applying or skipping
                        // the change would both be guesses.
                        Some(c) => Err(Stop::Fatal(format!(
                            "the server answered a pull of {collection:?} with a change of {:?}",
                            c.collection
                        ))),
                        None => Ok(Fetched::Page(page, bytes)),
                    };
                }
                Err(TransportError::CursorExpired) => return Ok(Fetched::Expired),
                Err(e) => e,
            };
            let pause = lock(&pass.retries).after_failure(&e, |n| self.backoff(n));
            let Some(pause) = pause.filter(|_| self.online()) else {
                return Err(e.into());
            };
            tracing::debug!(
                error = e.for_log(),
                ?pause,
                "pull page failed on the link; asking again, smaller"
            );
            lock(&self.sizes).pull_bytes.failed();
            tokio::time::sleep(pause).await;
        }
    }
}
