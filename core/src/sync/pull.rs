//! The pull phase: each collection pages from its cursor to the end of the server's
//! change sequence.
//!
//! While one page is written to the database the next is already on its way
//! (pipelining), since both take similar time. A `cursor_expired` answer restarts the
//! collection once from the beginning, as a full re-pull that drops the synced records
//! the server no longer returns.

use super::Inner;
use super::report::{Stop, Tally, tally};
use crate::protocol::PullResponse;
use crate::transport::{PullParams, TransportError};

/// A page, or the server saying the cursor expired.
enum Fetched {
    Page(PullResponse),
    Expired,
}

impl Inner {
    pub(super) async fn pull_all(&self, report: &Tally) -> Result<(), Stop> {
        for collection in self.store.collections() {
            self.pull_collection(&collection, report).await?;
        }
        Ok(())
    }

    async fn pull_collection(&self, collection: &str, report: &Tally) -> Result<(), Stop> {
        let mut restarted = false;
        'restart: loop {
            let resync = self.store.resync_generation(collection)?;
            let since = self.store.cursor(collection)?;
            let mut page = match self.fetch_page(collection, since, report).await? {
                Fetched::Page(p) => p,
                Fetched::Expired => {
                    self.restart_pull(collection, &mut restarted, report)?;
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
                let apply = tokio::task::spawn_blocking(move || {
                    store.apply_pull_page(&name, &changes, &cursor, finish)
                });
                if !page.has_more {
                    apply.await??;
                    tally(report).pulled += count;
                    return Ok(());
                }
                let next = self.fetch_page(collection, Some(page.cursor.clone()), report);
                let (applied, fetched) = tokio::join!(apply, next);
                applied??;
                tally(report).pulled += count;
                page = match fetched? {
                    Fetched::Page(p) => p,
                    Fetched::Expired => {
                        self.restart_pull(collection, &mut restarted, report)?;
                        continue 'restart;
                    }
                };
            }
        }
    }

    /// The cursor expired: start over from the beginning, once per sync. A second
    /// expiry in the same sync is an error to report, not a loop.
    fn restart_pull(
        &self,
        collection: &str,
        restarted: &mut bool,
        report: &Tally,
    ) -> Result<(), Stop> {
        if std::mem::replace(restarted, true) {
            return Err(TransportError::CursorExpired.into());
        }
        self.store.begin_resync(collection)?;
        tally(report).repulls += 1;
        Ok(())
    }

    async fn fetch_page(
        &self,
        collection: &str,
        since: Option<String>,
        report: &Tally,
    ) -> Result<Fetched, Stop> {
        tally(report).requests += 1;
        let params = PullParams {
            since,
            limit: self.config.pull_limit,
            collections: vec![collection.to_owned()],
        };
        let answer = self
            .authorized(|token| {
                let params = &params;
                async move { self.transport.pull(&token, params).await }
            })
            .await;
        match answer {
            Ok(page) => match page.changes.iter().find(|c| c.collection != collection) {
                // The server did not answer what was asked; applying or skipping the
                // change would both be guesses.
                Some(c) => Err(Stop::Fatal(format!(
                    "the server answered a pull of {collection:?} with a change of {:?}",
                    c.collection
                ))),
                None => Ok(Fetched::Page(page)),
            },
            Err(TransportError::CursorExpired) => Ok(Fetched::Expired),
            Err(e) => Err(e.into()),
        }
    }
}
