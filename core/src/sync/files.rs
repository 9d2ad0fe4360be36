//! The sync's file phase: after records are pushed and pulled, files move (see
//! `crate::attachments`), once the unreferenced ones are collected. A file that fails
//! backs off on its own; only a refused token or a broken database stops the sync.

use std::time::Duration;

use super::Inner;
use super::report::{Stop, Tally, tally};
use crate::attachments::{self, FilesStop, Moved, Request, Session};
use crate::store::Store;
use crate::transport::{BoxFuture, Transport, TransportError};

/// The engine as the file phase sees it, adding what moved to the sync's report.
struct Files<'a> {
    inner: &'a Inner,
    report: &'a Tally,
}

impl Session for Files<'_> {
    fn store(&self) -> &Store {
        &self.inner.store
    }

    fn transport(&self) -> &dyn Transport {
        self.inner.transport.as_ref()
    }

    fn backoff(&self, attempts: u32) -> Duration {
        self.inner.backoff(attempts)
    }

    fn moved(&self, m: Moved) {
        let mut r = tally(self.report);
        r.files_uploaded += m.uploaded_files;
        r.files_downloaded += m.downloaded_files;
        r.file_bytes_sent += m.bytes_sent;
        r.file_bytes_received += m.bytes_received;
        r.requests += u64::from(m.bytes_sent > 0 || m.bytes_received > 0);
    }

    fn authorized<'a, T: Send + 'a>(
        &'a self,
        request: &'a Request<'a, T>,
    ) -> BoxFuture<'a, Result<T, TransportError>> {
        Box::pin(self.inner.authorized(request))
    }
}

impl Inner {
    /// Collects unreferenced files, uploads due ones, downloads wanted ones.
    pub(super) async fn sync_files(&self, report: &Tally) -> Result<(), Stop> {
        let files = Files {
            inner: self,
            report,
        };
        let stop = |e: FilesStop| match e {
            FilesStop::Auth(m) => Stop::Auth(m),
            FilesStop::Fatal(m) => Stop::Fatal(m),
        };
        // First, so no bandwidth goes on files nothing refers to any more.
        if let Err(e) = self.store.collect_attachments() {
            tracing::warn!(error = %e, "attachment collection failed");
            tally(report)
                .errors
                .push(format!("attachment collection: {e}"));
        }
        attachments::upload_due(&files).await.map_err(stop)?;
        attachments::download_due(&files).await.map_err(stop)?;
        self.publish_status();
        Ok(())
    }
}
