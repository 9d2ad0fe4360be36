// The Kotlin face of Outpost: coroutines and Flows over the generated UniFFI bindings.
//
// Why a layer at all: the generated API is blocking calls and callback interfaces, which
// an Android app should not call from the main thread or wire by hand into every screen.
// This file only adapts them (Dispatchers.IO, Flow, StateFlow, AutoCloseable); all logic
// stays in the Rust core, where it is tested once. It has no Android dependency, so it
// is compiled and tested on a plain JVM.
package org.outpost

import java.io.File
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.atomic.AtomicBoolean
import java.util.concurrent.atomic.AtomicInteger
import kotlin.time.Duration
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.NonCancellable
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.ProducerScope
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.MutableSharedFlow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.SharedFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asSharedFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.flow.flowOn
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import org.outpost.ffi.Attachment
import org.outpost.ffi.AttachmentRef
import org.outpost.ffi.ChangeEvent
import org.outpost.ffi.ChangeListener
import org.outpost.ffi.Conflict
import org.outpost.ffi.ConflictListener
import org.outpost.ffi.FailedEdit
import org.outpost.ffi.Filter
import org.outpost.ffi.OutpostConfig
import org.outpost.ffi.OutpostException
import org.outpost.ffi.Page
import org.outpost.ffi.Query
import org.outpost.ffi.QueryListener
import org.outpost.ffi.Record
import org.outpost.ffi.RecordListener
import org.outpost.ffi.Resolution
import org.outpost.ffi.SignOutPolicy
import org.outpost.ffi.StatusListener
import org.outpost.ffi.SubscriptionHandle
import org.outpost.ffi.SyncReport
import org.outpost.ffi.SyncStatus
import org.outpost.ffi.TokenProvider
import org.outpost.ffi.UniffiLib
import org.outpost.ffi.WriteOp
import org.outpost.ffi.Outpost as Native

/**
 * A [TokenProvider] from a suspending lambda; `refresh` is true after the server answered
 * 401. Return the token, or null when no one is signed in (sync stops with
 * `SyncOutcome.SIGNED_OUT` until a token is available again); throw when the identity
 * provider cannot be reached (the sync backs off and retries).
 */
fun tokenProvider(fetch: suspend (refresh: Boolean) -> String?): TokenProvider =
    object : TokenProvider {
        override suspend fun token(refresh: Boolean): String? = fetch(refresh)
    }

/**
 * An open Outpost database with its sync engine. Open one per database for the app's
 * lifetime (e.g. in the Application), share it, and [close] it when done.
 *
 * Every `suspend` function runs on [Dispatchers.IO]: writes are durable when they return
 * (an fsync with the default durability), which must never happen on the main thread.
 * Errors are [org.outpost.ffi.OutpostException] subclasses (`InvalidData`, `Closed`, ...).
 */
class Outpost private constructor(
    /** The generated object, for anything this layer does not wrap. */
    val native: Native,
    internal val io: CoroutineDispatcher,
    private val path: String,
) : AutoCloseable {
    private val closed = AtomicBoolean(false)
    private val status = MutableStateFlow(native.status())
    private val conflictEvents = MutableSharedFlow<Conflict>(extraBufferCapacity = 64)

    // The listeners hold the flows, never this object: the native side keeps them alive,
    // and they must not keep an Outpost the app dropped from being cleaned up.
    private val statusHandle: SubscriptionHandle = native.subscribeStatus(statusInto(status))
    private val ending = Ending(native, statusHandle, path)

    // An Outpost the app dropped without close() still stops its sync, its listener
    // threads and its database (the generated cleaner picks the platform's mechanism).
    private val cleanable = UniffiLib.CLEANER.register(this, ending)

    // How many syncNow calls wait on the one sync the core runs: only the last one to be
    // cancelled may stop it (the others, the WorkManager worker among them, still want it).
    private val syncCallers = AtomicInteger(0)

    init {
        native.setConflictListener(conflictsInto(conflictEvents))
    }

    companion object {
        /**
         * Opens (or creates) the database described by [config] for `config.userId`. No
         * network call is made. A file that holds another user's data throws
         * `OutpostException.WrongUser` (its `holder`): sign that user out first (open for
         * them, then [signOut]) or [deleteDatabase].
         */
        suspend fun open(
            config: OutpostConfig,
            tokens: TokenProvider,
            io: CoroutineDispatcher = Dispatchers.IO,
        ): Outpost {
            awaitClosing(config.path)
            return withContext(io) { Outpost(Native.open(config, tokens), io, config.path) }
        }

        /**
         * Removes the database at [path] and the files beside it, sealed data included.
         * One that is open in this process throws `OutpostException.StillOpen`.
         */
        suspend fun deleteDatabase(
            path: String,
            io: CoroutineDispatcher = Dispatchers.IO,
        ) {
            awaitClosing(path)
            withContext(io) { org.outpost.ffi.deleteDatabase(path) }
        }

        /** Stores closing in the background, by path: opening or deleting the file again waits. */
        private val closing = ConcurrentHashMap<String, SubscriptionHandle>()

        private suspend fun awaitClosing(path: String) {
            closing[path]?.let { done ->
                done.closed()
                closing.remove(path, done)
            }
        }

        private fun statusInto(flow: MutableStateFlow<SyncStatus>) =
            object : StatusListener {
                override fun onStatus(status: SyncStatus) {
                    flow.value = status
                }
            }

        private fun conflictsInto(flow: MutableSharedFlow<Conflict>) =
            object : ConflictListener {
                override fun onConflict(conflict: Conflict) {
                    flow.tryEmit(conflict)
                }
            }
    }

    /**
     * Ends a store without blocking: the status listener stops, the core refuses new calls
     * at once and closes the database on its own thread. Shared by [close] and the cleaner,
     * so it must not refer to the Outpost.
     */
    private class Ending(
        private val native: Native,
        private val statusHandle: SubscriptionHandle,
        private val path: String,
    ) : Runnable {
        override fun run() {
            statusHandle.cancel()
            // Fails with Closed only when the store has closed already (signOut).
            runCatching { native.closeInBackground() }.onSuccess { closing[path] = it }
        }
    }

    /**
     * The sync status, for "Syncing…", "3 changes waiting" or "Last synced 2 min ago".
     * While a sync runs, `progress` says how far it has got (changes and bytes done of
     * the total known so far, up and down, per collection), updated after each page and
     * batch; `hasSynced` is false until a first sync has completed.
     */
    val syncStatus: StateFlow<SyncStatus> = status.asStateFlow()

    /**
     * Returns once a first sync has completed on this device (at once if one has): for a
     * "Setting up…" screen. It does not start a sync; [syncNow], auto sync or the
     * WorkManager job does.
     */
    suspend fun awaitFirstSync(): SyncStatus = syncStatus.first { it.hasSynced }

    /**
     * Manual conflicts as the sync engine finds them, while collected. [openConflicts]
     * lists every conflict still waiting, including ones found before collection began.
     */
    val conflicts: SharedFlow<Conflict> = conflictEvents.asSharedFlow()

    suspend fun put(collection: String, id: String? = null, json: String): Record =
        withContext(io) { native.put(collection, id, json) }

    suspend fun patch(collection: String, id: String, fieldsJson: String): Record =
        withContext(io) { native.patch(collection, id, fieldsJson) }

    suspend fun delete(collection: String, id: String) = withContext(io) { native.delete(collection, id) }

    suspend fun get(collection: String, id: String): Record? = withContext(io) { native.get(collection, id) }

    /** Records matching [query], in its order; build one with [org.outpost.query]. */
    suspend fun query(collection: String, query: Query = Query()): List<Record> =
        withContext(io) { native.query(collection, query) }

    /**
     * One page of [query] (its `limit` is the page size) and `next`, the cursor of the
     * following page, or null after the last. Pass it on with `query.copy(after = page.next)`:
     * unlike an offset, it never skips or repeats a record while records are written.
     */
    suspend fun queryPage(collection: String, query: Query): Page =
        withContext(io) { native.queryPage(collection, query) }

    suspend fun count(collection: String, filters: List<Filter> = emptyList()): Long =
        withContext(io) { native.count(collection, filters).toLong() }

    /** How many records match [where], e.g. `countWhere("patients", where { "village" eq "v042" })`. */
    suspend fun countWhere(collection: String, where: Where): Long =
        withContext(io) { native.countWhere(collection, where.toJson()).toLong() }

    /** All [ops] in one transaction: a whole screen of answers commits together or not at all. */
    suspend fun batch(ops: List<WriteOp>): List<Record?> = withContext(io) { native.batch(ops) }

    suspend fun increment(collection: String, id: String, field: String, by: Long = 1): Record =
        withContext(io) { native.increment(collection, id, field, by) }

    suspend fun setRegister(collection: String, id: String, field: String, valueJson: String): Record =
        withContext(io) { native.setRegister(collection, id, field, valueJson) }

    suspend fun setAdd(collection: String, id: String, field: String, element: String): Record =
        withContext(io) { native.setAdd(collection, id, field, element) }

    suspend fun setRemove(collection: String, id: String, field: String, element: String): Record =
        withContext(io) { native.setRemove(collection, id, field, element) }

    /**
     * The sync status now, then every change; unlike [syncStatus], it completes when the
     * store closes or signs out.
     */
    fun statusUpdates(): Flow<SyncStatus> =
        subscription<SyncStatus> {
            native.subscribeStatus(
                object : StatusListener {
                    override fun onStatus(status: SyncStatus) {
                        trySend(status)
                    }
                },
            )
        }.buffer(Channel.CONFLATED)

    /**
     * Every change event, local or pulled, while collected. None is dropped: a burst (a
     * first sync) waits in an unbounded buffer for a slow collector.
     */
    fun changes(): Flow<ChangeEvent> =
        subscription<ChangeEvent> {
            native.subscribe(
                object : ChangeListener {
                    override fun onChange(event: ChangeEvent) {
                        trySend(event)
                    }
                },
            )
        }.buffer(Channel.UNLIMITED)

    /**
     * The result of [query] on [collection]: emitted once now, then each time a commit
     * changes it (a commit that leaves it as it was emits nothing). The core re-runs the
     * query only when a commit could change it, at most every 50 ms; a slow collector
     * gets the latest result. Bad input throws `OutpostException.InvalidData` on
     * collection. Cancelling the collection closes the subscription.
     */
    fun observe(collection: String, query: Query = Query()): Flow<List<Record>> =
        subscription<List<Record>> {
            native.observe(
                collection,
                query,
                object : QueryListener {
                    override fun onResult(records: List<Record>) {
                        trySend(records)
                    }
                },
            )
        }.buffer(Channel.CONFLATED)

    /** One record: emitted now (null when absent), then each time a commit changes it. */
    fun observeOne(collection: String, id: String): Flow<Record?> =
        subscription<Record?> {
            native.observeOne(
                collection,
                id,
                object : RecordListener {
                    override fun onRecord(record: Record?) {
                        trySend(record)
                    }
                },
            )
        }.buffer(Channel.CONFLATED)

    /**
     * A Flow over a native subscription, opened on [io] and closed when collection ends.
     * It completes when the store closes or signs out: the subscription's end comes after
     * its last callback, so every value delivered is emitted first. Collected after that,
     * it completes at once, as a store that has ended has nothing more to deliver.
     */
    private fun <T> subscription(open: ProducerScope<T>.() -> SubscriptionHandle): Flow<T> =
        callbackFlow {
            val handle =
                try {
                    open()
                } catch (e: OutpostException.Closed) {
                    close()
                    return@callbackFlow
                }
            launch {
                handle.closed()
                close()
            }
            awaitClose {
                handle.cancel()
                handle.destroy()
            }
        }.flowOn(io)

    /**
     * Pushes local edits, then pulls. [deadline] bounds the run (WorkManager and
     * BGTaskScheduler give about 30 s). Cancelling the calling coroutine cancels the sync:
     * in-flight edits go back to the queue and are resent later, never lost or doubled.
     * A call while a sync runs joins it; cancelling one caller stops the sync only when no
     * other caller still waits for it.
     */
    suspend fun syncNow(deadline: Duration? = null): SyncReport =
        withContext(io) {
            syncCallers.incrementAndGet()
            var left = false
            try {
                native.syncNow(deadline?.inWholeMilliseconds?.coerceAtLeast(0)?.toULong())
            } catch (e: CancellationException) {
                left = true
                if (syncCallers.decrementAndGet() == 0) {
                    withContext(NonCancellable) { runCatching { native.cancelSync() } }
                }
                throw e
            } finally {
                if (!left) syncCallers.decrementAndGet()
            }
        }

    /**
     * Copies [file] into the store's own folder (durable when this returns) and queues
     * its upload, which resumes across drops and never holds a record back. Put the
     * returned reference's `json` in a record field.
     */
    suspend fun attach(file: File, contentType: String, name: String? = file.name): AttachmentRef =
        withContext(io) { native.attachFile(file.path, contentType, name) }

    /** [attach] for bytes the app holds, such as a signature drawn on screen. */
    suspend fun attach(bytes: ByteArray, contentType: String, name: String? = null): AttachmentRef =
        withContext(io) { native.attachBytes(bytes, contentType, name) }

    /**
     * The file a reference names, or null while it is on its way (asking queues the
     * download; [attachmentState] gives its progress).
     */
    suspend fun attachment(sha256: String): File? =
        when (val a = attachmentState(sha256)) {
            is Attachment.Ready -> File(a.path)
            is Attachment.Pending -> null
        }

    /** Ready with a path, or pending with the bytes received so far. */
    suspend fun attachmentState(sha256: String): Attachment = withContext(io) { native.attachment(sha256) }

    /** Stops a running sync; safe at any time. */
    fun cancelSync() = native.cancelSync()

    /** The platform's view of the network (see the ConnectivityManager bridge). */
    fun setNetworkAvailable(available: Boolean) = native.setNetworkAvailable(available)

    /** Manual conflicts waiting for [resolve], oldest first. */
    suspend fun openConflicts(): List<Conflict> = withContext(io) { native.conflicts() }

    /** Settles a manual conflict; the result is sent with the next sync. */
    suspend fun resolve(conflictId: Long, resolution: Resolution) =
        withContext(io) { native.resolve(conflictId, resolution) }

    /** Puts edits the server rejected back in the queue; returns how many. */
    suspend fun retryFailed(): Long = withContext(io) { native.retryFailed().toLong() }

    /** Edits the server rejected for good, oldest first; each keeps its data. */
    suspend fun failedEdits(): List<FailedEdit> = withContext(io) { native.failedEdits() }

    /**
     * Gives up one rejected edit (the user's decision); the record returns to its last
     * synced state. An entry that is not failed throws `OutpostException.NotFound`.
     */
    suspend fun discardFailed(entryId: Long) = withContext(io) { native.discardFailed(entryId) }

    /**
     * Signs the user out of this device, then closes it as [close] does: every Flow of
     * it completes, and later calls throw `OutpostException.Closed`.
     *
     * `SignOutPolicy.SyncFirst(deadlineMs)` syncs first and throws
     * `OutpostException.UnsyncedEdits` (pending, failed, conflicts) if edits are still not
     * on the server by then; nothing changes, so ask the user. `SignOutPolicy.KeepUnsynced`
     * needs no network: the user's unsynced edits are sealed in the file under their user
     * id, for them alone, and sent once they sign in again. Then open the database for the
     * next user, or [deleteDatabase].
     */
    suspend fun signOut(policy: SignOutPolicy) {
        withContext(io) { native.signOut(policy) }
        if (closed.compareAndSet(false, true)) cleanable.clean()
    }

    /**
     * Stops sync and listeners and closes the database without blocking the caller (it
     * may be the main thread): later calls throw `Closed` at once, and the database closes
     * on a background thread once a running write or listener is done; every Flow of it
     * then completes. [open] and [deleteDatabase] of the same file wait for that; so does
     * [closeAndWait].
     */
    override fun close() {
        if (!closed.compareAndSet(false, true)) return
        // The native handle itself is freed by its cleaner once unreachable, so a stray
        // later call gets OutpostException.Closed rather than a use-after-free error.
        cleanable.clean()
    }

    /** [close], then suspends until the database is closed and no listener runs. */
    suspend fun closeAndWait() {
        close()
        awaitClosing(path)
    }
}
