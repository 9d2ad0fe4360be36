// The Swift face of Outpost: async/await and AsyncStreams over the generated bindings.
//
// Why a layer at all: the generated API is blocking calls and callback protocols, which
// an app should neither call on the main actor nor wire by hand into every view. This
// file only adapts them; all logic (outbox, retries, conflicts) stays in the Rust core,
// where it is tested once. `scripts/swift-test.sh` tests it against the real library.
import Foundation
@_exported import OutpostFFI

/// An open Outpost database with its sync engine. Open one per database for the app's
/// lifetime and share it. Errors are `OutpostError` cases (`.InvalidData`, `.Closed`, ...);
/// a call cancelled before it started throws `CancellationError` and changed nothing.
public final class OutpostStore: Sendable {
    /// The generated object, for anything this layer does not wrap. Its methods block:
    /// call them off the main actor.
    public let native: Outpost
    /// Whether the core syncs by itself (after writes, on reconnect). When it does not,
    /// `OutpostNetworkMonitor` starts a sync on reconnect.
    public let autoSync: Bool

    private init(native: Outpost, autoSync: Bool) {
        self.native = native
        self.autoSync = autoSync
    }

    /// Opens (or creates and migrates) the database for `config.userId`, off the caller's
    /// actor. `token` is called off the main thread, with `refresh == true` after the
    /// server answered 401: return the token, `nil` when no one is signed in (sync stops
    /// with `.signedOut` until there is a token again), or throw when the identity
    /// provider cannot be reached (the sync backs off and retries). A file that holds
    /// another user's data throws `OutpostError.WrongUser(holder:)`: sign that user out
    /// first, or `deleteDatabase`. `config.durability == .full` also asks for a full
    /// fsync, which a write needs on iOS to survive a power loss.
    public static func open(
        config: OutpostConfig,
        token: @escaping @Sendable (_ refresh: Bool) async throws -> String?
    ) async throws -> OutpostStore {
        let tokens = ClosureTokenProvider(token)
        let native = try await Blocking.run { try Outpost.open(config: config, tokens: tokens) }
        return OutpostStore(native: native, autoSync: config.autoSync)
    }

    /// Removes the database at `path` and the files beside it, sealed data included.
    /// One that is open in this process throws `OutpostError.StillOpen`.
    public static func deleteDatabase(path: String) async throws {
        try await Blocking.run { try OutpostFFI.deleteDatabase(path: path) }
    }

    @discardableResult
    public func put(_ collection: String, id: String? = nil, json: String) async throws -> Record {
        try await Blocking.run { try self.native.put(collection: collection, id: id, dataJson: json) }
    }

    @discardableResult
    public func patch(_ collection: String, id: String, fieldsJson: String) async throws -> Record {
        try await Blocking.run { try self.native.patch(collection: collection, id: id, fieldsJson: fieldsJson) }
    }

    public func delete(_ collection: String, id: String) async throws {
        try await Blocking.run { try self.native.delete(collection: collection, id: id) }
    }

    public func get(_ collection: String, id: String) async throws -> Record? {
        try await Blocking.run { try self.native.get(collection: collection, id: id) }
    }

    /// Records matching `query`, in its order.
    public func query(_ collection: String, _ query: Query = Query()) async throws -> [Record] {
        try await Blocking.run { try self.native.query(collection: collection, query: query.ffi) }
    }

    /// One page of `query` (its `limit` is the page size) and `next`, the cursor of the
    /// following page, or nil after the last. Set it as the query's `after`: unlike an
    /// offset, it never skips or repeats a record while records are written.
    public func queryPage(_ collection: String, _ query: Query) async throws -> Page {
        try await Blocking.run { try self.native.queryPage(collection: collection, query: query.ffi) }
    }

    /// How many records match `filter` (all of the collection's when nil).
    public func count(_ collection: String, where filter: Filter? = nil) async throws -> UInt64 {
        try await Blocking.run {
            if let filter {
                return try self.native.countWhere(collection: collection, filterJson: filter.json)
            }
            return try self.native.count(collection: collection, filters: [])
        }
    }

    /// All ops in one transaction: a whole screen of answers commits together or not at all.
    @discardableResult
    public func batch(_ ops: [WriteOp]) async throws -> [Record?] {
        try await Blocking.run { try self.native.batch(ops: ops) }
    }

    /// Runs `body` in one write transaction: every write in it commits together, or none
    /// does when it throws (its error is rethrown). `body` runs on a thread of the core's
    /// and must not call this store's other methods (they throw `.InTransaction`); use `tx`.
    public func transaction<T: Sendable>(
        _ body: @escaping @Sendable (Transaction) throws -> T
    ) async throws -> T {
        try await Blocking.run {
            let run = TransactionRun(body)
            do {
                try self.native.transaction(body: run)
            } catch let error as OutpostError {
                // The body's own error, not the FFI's report of it.
                throw run.thrown ?? error
            }
            return try run.result()
        }
    }

    // MARK: CRDT fields: merged without conflict, whatever other devices did meanwhile.

    /// Adds `by` (may be negative) to the counter in `field`.
    @discardableResult
    public func increment(_ collection: String, id: String, field: String, by: Int64 = 1) async throws -> Record {
        try await Blocking.run { try self.native.increment(collection: collection, id: id, field: field, by: by) }
    }

    /// Adds `element` to the observed-remove set in `field`.
    @discardableResult
    public func setAdd(_ collection: String, id: String, field: String, element: String) async throws -> Record {
        try await Blocking.run { try self.native.setAdd(collection: collection, id: id, field: field, element: element) }
    }

    /// Removes `element` from the set in `field` (the adds this device has seen).
    @discardableResult
    public func setRemove(_ collection: String, id: String, field: String, element: String) async throws -> Record {
        try await Blocking.run {
            try self.native.setRemove(collection: collection, id: id, field: field, element: element)
        }
    }

    /// Sets the last-write-wins register in `field` to the JSON value `valueJson`.
    @discardableResult
    public func setRegister(_ collection: String, id: String, field: String, valueJson: String) async throws -> Record {
        try await Blocking.run {
            try self.native.setRegister(collection: collection, id: id, field: field, valueJson: valueJson)
        }
    }

    // MARK: Changes, observed queries and status

    /// Every change event, local or pulled, while iterated; it finishes when the store
    /// closes or signs out. Nothing is dropped: a slow consumer gets every event.
    public func changes() -> AsyncStream<ChangeEvent> {
        events(.unbounded) { send in try self.native.subscribe(listener: ClosureChangeListener(send)) }
    }

    /// A stream over a native subscription that cannot fail once open: it finishes at
    /// once if subscribing throws (the store is closed), and when the store closes or
    /// signs out; ending it closes the subscription.
    private func events<T: Sendable>(
        _ buffering: AsyncStream<T>.Continuation.BufferingPolicy,
        _ open: (@escaping @Sendable (T) -> Void) throws -> SubscriptionHandle
    ) -> AsyncStream<T> {
        AsyncStream(bufferingPolicy: buffering) { continuation in
            do {
                let handle = try open { continuation.yield($0) }
                let stop = Self.follow(handle) { continuation.finish() }
                continuation.onTermination = { _ in stop() }
            } catch {
                continuation.finish()
            }
        }
    }

    /// Calls `finish` when the subscription ends (the store closed or signed out; the
    /// end comes after its last callback). Returns what a stream's `onTermination` calls
    /// when it ends first: closing the subscription.
    private static func follow(
        _ handle: SubscriptionHandle,
        finish: @escaping @Sendable () -> Void
    ) -> @Sendable () -> Void {
        let ended = Task {
            await handle.closed()
            finish()
        }
        return {
            ended.cancel()
            handle.close()
        }
    }

    /// The query's result now, then each time a commit changes it (a commit that leaves
    /// it as it was yields nothing). The core runs the query for this subscription alone,
    /// so writes to other collections never displace its first result or a change; it
    /// re-runs at most every 50 ms, and a slow consumer gets the latest result. Bad input
    /// finishes the stream with `OutpostError.InvalidData`. Ending the iteration closes
    /// the subscription.
    public func observe(_ collection: String, _ query: Query = Query()) -> AsyncThrowingStream<[Record], Error> {
        subscription { send in
            try self.native.observe(collection: collection, query: query.ffi, listener: ClosureQueryListener(send))
        }
    }

    /// One record now (nil when absent), then each time a commit changes it.
    public func observeOne(_ collection: String, id: String) -> AsyncThrowingStream<Record?, Error> {
        subscription { send in
            try self.native.observeOne(collection: collection, id: id, listener: ClosureRecordListener(send))
        }
    }

    /// A stream over a native subscription that keeps the latest value: `open` subscribes
    /// with a listener that yields. It finishes with the error if subscribing throws,
    /// finishes when the store closes or signs out, and closes the subscription when it
    /// terminates.
    private func subscription<T: Sendable>(
        _ open: (@escaping @Sendable (T) -> Void) throws -> SubscriptionHandle
    ) -> AsyncThrowingStream<T, Error> {
        AsyncThrowingStream(bufferingPolicy: .bufferingNewest(1)) { continuation in
            do {
                let handle = try open { continuation.yield($0) }
                let stop = Self.follow(handle) { continuation.finish() }
                continuation.onTermination = { _ in stop() }
            } catch {
                continuation.finish(throwing: error)
            }
        }
    }

    /// The current sync status, without waiting on a sync.
    public func status() async throws -> SyncStatus {
        try await Blocking.run { try self.native.status() }
    }

    /// Returns once a first sync has completed on this device (at once if one has), for
    /// a "Setting up…" screen; `progress` in `statusUpdates()` says how far it has got.
    /// It starts no sync: `syncNow`, auto sync or the BGTask does.
    public func awaitFirstSync() async -> SyncStatus? {
        for await status in statusUpdates() where status.hasSynced {
            return status
        }
        return nil
    }

    /// The current sync status, then every change (finishing when the store closes or
    /// signs out). While a sync runs, `progress` says how far it has got (changes and
    /// bytes done of the total known so far, up and down, per collection); `hasSynced`
    /// is false until a first sync has completed.
    public func statusUpdates() -> AsyncStream<SyncStatus> {
        events(.bufferingNewest(1)) { send in try self.native.subscribeStatus(listener: ClosureStatusListener(send)) }
    }

    // MARK: Conflicts and rejected edits

    /// Manual conflicts as sync finds them (one consumer at a time). `openConflicts()`
    /// lists every conflict still waiting.
    public func conflicts() -> AsyncStream<Conflict> {
        AsyncStream { continuation in
            let listener = ClosureConflictListener { continuation.yield($0) }
            do {
                try native.setConflictListener(listener: listener)
                continuation.onTermination = { [native] _ in try? native.setConflictListener(listener: nil) }
            } catch {
                continuation.finish()
            }
        }
    }

    /// Conflicts waiting for the user's decision.
    public func openConflicts() async throws -> [Conflict] {
        try await Blocking.run { try self.native.conflicts() }
    }

    /// Every conflict sync has met, resolved ones included, newest first: what was
    /// decided and how, for an audit screen.
    public func conflictLog() async throws -> [Conflict] {
        try await Blocking.run { try self.native.conflictLog() }
    }

    public func resolve(conflictId: Int64, _ resolution: Resolution) async throws {
        try await Blocking.run { try self.native.resolve(conflictId: conflictId, resolution: resolution) }
    }

    /// Puts edits the server rejected back in the queue; returns how many.
    @discardableResult
    public func retryFailed() async throws -> UInt64 {
        try await Blocking.run { try self.native.retryFailed() }
    }

    /// Edits the server rejected for good, oldest first; each keeps its data.
    public func failedEdits() async throws -> [FailedEdit] {
        try await Blocking.run { try self.native.failedEdits() }
    }

    /// Gives up one rejected edit (the user's decision); the record returns to its last
    /// synced state.
    public func discardFailed(entryId: Int64) async throws {
        try await Blocking.run { try self.native.discardFailed(entryId: entryId) }
    }

    // MARK: Sync

    /// Pushes, then pulls, within `deadline` seconds. Cancelling the calling task cancels
    /// the sync (the report's outcome is `.cancelled`): in-flight edits go back to the
    /// queue, never lost or doubled.
    public func syncNow(deadline: TimeInterval? = nil) async throws -> SyncReport {
        let ms = deadline.map { UInt64(max(0, $0) * 1000) }
        return try await withTaskCancellationHandler {
            try await native.syncNow(deadlineMs: ms)
        } onCancel: { [native] in
            try? native.cancelSync()
        }
    }

    /// The platform's view of the network (see `OutpostNetworkMonitor`). The core trusts
    /// "up" only after its own debounce and health probe.
    public func setNetworkAvailable(_ available: Bool) {
        try? native.setNetworkAvailable(available: available)
    }

    // MARK: Attachments

    /// Copies the file at `url` into the store's own folder (durable when this returns)
    /// and queues its upload; put the returned reference's `json` in a record field.
    public func attach(fileAt url: URL, contentType: String, name: String? = nil) async throws -> AttachmentRef {
        let name = name ?? url.lastPathComponent
        return try await Blocking.run {
            try self.native.attachFile(path: url.path, contentType: contentType, name: name)
        }
    }

    /// `attach(fileAt:)` for bytes the app holds, such as a signature drawn on screen.
    public func attach(data: Data, contentType: String, name: String? = nil) async throws -> AttachmentRef {
        try await Blocking.run { try self.native.attachBytes(bytes: data, contentType: contentType, name: name) }
    }

    /// The file a reference names, or nil while it is on its way (asking queues the
    /// download; `attachmentState` gives its progress).
    public func attachment(_ sha256: String) async throws -> URL? {
        switch try await attachmentState(sha256) {
        case let .ready(path, _): return URL(fileURLWithPath: path)
        case .pending: return nil
        }
    }

    /// Ready with a path, or pending with the bytes received so far.
    public func attachmentState(_ sha256: String) async throws -> Attachment {
        try await Blocking.run { try self.native.attachment(sha256: sha256) }
    }

    // MARK: Lifecycle

    /// Signs the user out of this device, then closes it as `close()` does: every stream
    /// finishes, and later calls throw `.Closed`. `.syncFirst(deadlineMs:)` syncs first and
    /// throws `OutpostError.UnsyncedEdits` if edits are still not on the server by then,
    /// changing nothing (ask the user). `.keepUnsynced` needs no network: the unsynced
    /// edits are sealed in the file for this user alone, and sent once they sign in again.
    public func signOut(_ policy: SignOutPolicy) async throws {
        try await native.signOut(policy: policy)
    }

    /// Stops sync and listeners and closes the database, without blocking the caller:
    /// it returns once closed. Later calls throw `.Closed`; every stream finishes; no
    /// listener is called once it returns. Closing twice is harmless.
    public func close() async {
        guard let closing = try? native.closeInBackground() else { return }
        await closing.closed()
    }
}

final class ClosureTokenProvider: TokenProvider {
    let fetch: @Sendable (Bool) async throws -> String?
    init(_ fetch: @escaping @Sendable (Bool) async throws -> String?) { self.fetch = fetch }
    func token(refresh: Bool) async throws -> String? { try await fetch(refresh) }
}

final class ClosureChangeListener: ChangeListener {
    let handle: @Sendable (ChangeEvent) -> Void
    init(_ handle: @escaping @Sendable (ChangeEvent) -> Void) { self.handle = handle }
    func onChange(event: ChangeEvent) throws { handle(event) }
}

final class ClosureQueryListener: QueryListener {
    let handle: @Sendable ([Record]) -> Void
    init(_ handle: @escaping @Sendable ([Record]) -> Void) { self.handle = handle }
    func onResult(records: [Record]) throws { handle(records) }
}

final class ClosureRecordListener: RecordListener {
    let handle: @Sendable (Record?) -> Void
    init(_ handle: @escaping @Sendable (Record?) -> Void) { self.handle = handle }
    func onRecord(record: Record?) throws { handle(record) }
}

final class ClosureStatusListener: StatusListener {
    let handle: @Sendable (SyncStatus) -> Void
    init(_ handle: @escaping @Sendable (SyncStatus) -> Void) { self.handle = handle }
    func onStatus(status: SyncStatus) throws { handle(status) }
}

final class ClosureConflictListener: ConflictListener {
    let handle: @Sendable (Conflict) -> Void
    init(_ handle: @escaping @Sendable (Conflict) -> Void) { self.handle = handle }
    func onConflict(conflict: Conflict) throws { handle(conflict) }
}

/// A transaction body: runs the closure on the core's thread and keeps what it returned
/// or threw, for the caller once the transaction has ended.
final class TransactionRun<T: Sendable>: TransactionBody, @unchecked Sendable {
    private let body: @Sendable (Transaction) throws -> T
    private let lock = NSLock()
    private var value: T?
    private var error: Error?

    init(_ body: @escaping @Sendable (Transaction) throws -> T) { self.body = body }

    func run(tx: Transaction) throws {
        do {
            let value = try body(tx)
            lock.lock()
            self.value = value
            lock.unlock()
        } catch {
            lock.lock()
            self.error = error
            lock.unlock()
            throw error
        }
    }

    /// What the body threw, if it did.
    var thrown: Error? {
        lock.lock()
        defer { lock.unlock() }
        return error
    }

    func result() throws -> T {
        lock.lock()
        defer { lock.unlock() }
        if let error { throw error }
        guard let value else { throw OutpostError.Internal(detail: "the transaction body did not run") }
        return value
    }
}
